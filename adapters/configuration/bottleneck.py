"""Bottleneck adapter configs (Houlsby et al. 2019; Pfeiffer et al. 2020; He et al. 2021) and
Compacter (Mahabadi et al. 2021). The math is in :mod:`adapters.methods.bottleneck`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Optional, Union

from .base import AdapterConfig, register_config

__all__ = [
    "BnConfig",
    "SeqBnConfig",
    "DoubleSeqBnConfig",
    "ParBnConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "SeqBnInvConfig",
    "DoubleSeqBnInvConfig",
]

_INIT_WEIGHTS = ("bert", "mam_adapter", "houlsby")
_PHM_W_INITS = ("glorot-normal", "glorot-uniform", "normal")


@dataclasses.dataclass(frozen=True, eq=False)
class BnConfig(AdapterConfig):
    """A bottleneck adapter: ``x + f(x W_down) W_up``, inserted after the attention block
    (``mh_adapter``) and/or the feed-forward block (``output_adapter``) of each layer.

    Args:
        mh_adapter: insert an adapter after the multi-head attention block.
        output_adapter: insert an adapter after the feed-forward block.
        reduction_factor: hidden size / bottleneck size; a float, or a dict mapping layer index
            (as a string) to a factor, with a ``"default"`` entry.
        non_linearity: activation between the projections (any name in transformers' ACT2FN).
        original_ln_before: apply the layer's own residual + norm before the adapter.
        original_ln_after: apply the layer's own residual + norm after the adapter.
        ln_before, ln_after: an extra LayerNorm inside the adapter, before / after it.
        residual_before_ln: take the adapter's residual before the original norm (True), after
            it (False), or after the original residual sum but before the norm ("post_add").
        adapter_residual_before_ln: add the residual before ``ln_after`` instead of after.
        init_weights: "bert" (N(0, 0.02)), "mam_adapter" (Kaiming down, zero up) or "houlsby"
            (truncated normal, std 1e-2).
        init_weights_seed: reseed before initialising each adapter module, so all get the same
            initial weights.
        is_parallel: parallel adapter: the adapter reads the block input and its output is added
            to the block output (He et al.), instead of transforming the block output.
        scaling: factor on the adapter output: a float, "learned" (one scalar) or "channel" (one
            per hidden unit).
        use_gating: a learned sigmoid gate on the adapter output.
        dropout: dropout on the adapter output.
        stochastic_depth: probability of dropping the whole adapter branch per sample in training.
        leave_out: layer indices that get no adapter.
        inv_adapter, inv_adapter_reduction_factor: invertible adapter on the embeddings ("nice"
            or "glow"; MAD-X).
        cross_adapter: also insert adapters after cross-attention (encoder-decoder models).
        phm_layer: use parameterised hypercomplex multiplication layers (Compacter) for the
            projections; ``phm_*``, ``shared_*``, ``factorized_*``, ``learn_phm`` and
            ``hypercomplex_nonlinearity`` configure them.

    Example::

        >>> config = BnConfig(mh_adapter=True, output_adapter=False, reduction_factor=8,
        ...                   non_linearity="gelu")
    """

    architecture: ClassVar[str] = "bottleneck"
    _write_architecture: ClassVar[bool] = False

    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: Union[float, Mapping] = 16
    non_linearity: str = "relu"
    original_ln_before: bool = False
    original_ln_after: bool = True
    ln_before: bool = False
    ln_after: bool = False
    init_weights: str = "bert"
    is_parallel: bool = False
    scaling: Union[float, str] = 1.0
    use_gating: bool = False
    residual_before_ln: Union[bool, str] = True
    adapter_residual_before_ln: bool = False
    inv_adapter: Optional[str] = None
    inv_adapter_reduction_factor: Optional[float] = None
    cross_adapter: bool = False
    leave_out: tuple = ()
    dropout: float = 0.0
    phm_layer: bool = False
    phm_dim: int = 4
    factorized_phm_W: bool = True
    shared_W_phm: bool = False
    shared_phm_rule: bool = True
    factorized_phm_rule: bool = False
    phm_c_init: str = "normal"
    phm_init_range: float = 0.0001
    learn_phm: bool = True
    hypercomplex_nonlinearity: str = "glorot-uniform"
    phm_rank: int = 1
    phm_bias: bool = True
    stochastic_depth: float = 0.0
    init_weights_seed: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "leave_out", tuple(int(i) for i in self.leave_out))
        if isinstance(self.reduction_factor, Mapping):
            object.__setattr__(self, "reduction_factor", dict(self.reduction_factor))
            factors = list(self.reduction_factor.values())
        else:
            factors = [self.reduction_factor]
        for factor in factors:
            if not isinstance(factor, (int, float)) or factor <= 0:
                raise ValueError(f"reduction_factor must be a positive number (or a dict of them), got {factor!r}.")
        if self.init_weights not in _INIT_WEIGHTS:
            raise ValueError(f"init_weights must be one of {_INIT_WEIGHTS}, got {self.init_weights!r}.")
        if isinstance(self.scaling, str) and self.scaling not in ("learned", "channel"):
            raise ValueError(f"scaling must be a number, 'learned' or 'channel', got {self.scaling!r}.")
        if self.residual_before_ln not in (True, False, "post_add"):
            raise ValueError(f"residual_before_ln must be True, False or 'post_add', got {self.residual_before_ln!r}.")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.stochastic_depth < 1.0:
            raise ValueError("dropout and stochastic_depth must be in [0, 1).")
        if self.phm_layer:
            if self.phm_dim < 1:
                raise ValueError(f"phm_dim must be >= 1, got {self.phm_dim}.")
            if self.hypercomplex_nonlinearity not in _PHM_W_INITS:
                raise ValueError(f"hypercomplex_nonlinearity must be one of {_PHM_W_INITS}.")
            if self.phm_c_init not in ("normal", "uniform"):
                raise ValueError("phm_c_init must be 'normal' or 'uniform'.")
        if self.inv_adapter not in (None, "nice", "glow"):
            raise ValueError(f"inv_adapter must be None, 'nice' or 'glow', got {self.inv_adapter!r}.")
        from transformers.activations import ACT2FN

        if self.non_linearity.lower() not in ACT2FN:
            raise ValueError(f"Unknown non_linearity {self.non_linearity!r}; use a name from transformers' ACT2FN.")

    def reduction_factor_for(self, layer_idx: int) -> float:
        """The reduction factor that applies to layer ``layer_idx``.

        Example::

            >>> config = SeqBnConfig(reduction_factor={"0": 4, "default": 16})
            >>> config.reduction_factor_for(0), config.reduction_factor_for(3)
            (4, 16)
        """
        factor = self.reduction_factor
        if isinstance(factor, Mapping):
            if str(layer_idx) in factor:
                return factor[str(layer_idx)]
            if "default" in factor:
                return factor["default"]
            raise KeyError(
                f"reduction_factor {factor} has no entry for layer {layer_idx} and no 'default'; "
                f"add a default like {{'default': 16}}."
            )
        return factor


@dataclasses.dataclass(frozen=True, eq=False)
class SeqBnConfig(BnConfig):
    """Sequential bottleneck after the feed-forward block only (Pfeiffer et al., 2020).

    Example::

        >>> model.add_adapter("task", config=SeqBnConfig(reduction_factor=8))
    """

    original_ln_before: bool = True
    residual_before_ln: Union[bool, str] = True
    mh_adapter: bool = False
    output_adapter: bool = True
    non_linearity: str = "relu"
    reduction_factor: Union[float, Mapping] = 16


@dataclasses.dataclass(frozen=True, eq=False)
class DoubleSeqBnConfig(BnConfig):
    """Sequential bottlenecks after attention and after the feed-forward block (Houlsby et al., 2019).

    Example::

        >>> model.add_adapter("task", config="double_seq_bn")
    """

    original_ln_before: bool = False
    residual_before_ln: Union[bool, str] = True
    mh_adapter: bool = True
    output_adapter: bool = True
    non_linearity: str = "swish"
    reduction_factor: Union[float, Mapping] = 16


@dataclasses.dataclass(frozen=True, eq=False)
class ParBnConfig(BnConfig):
    """Parallel bottleneck next to the feed-forward block, scaled by 4 (He et al., 2021).

    Example::

        >>> model.add_adapter("task", config=ParBnConfig(scaling="learned"))
    """

    original_ln_before: bool = False
    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: Union[float, Mapping] = 2
    non_linearity: str = "relu"
    init_weights: str = "mam_adapter"
    is_parallel: bool = True
    scaling: Union[float, str] = 4.0


@dataclasses.dataclass(frozen=True, eq=False)
class CompacterPlusPlusConfig(SeqBnConfig):
    """Compacter++: a sequential bottleneck with PHM projections (Mahabadi et al., 2021).

    Example::

        >>> model.add_adapter("task", config="compacter++")
    """

    phm_layer: bool = True
    reduction_factor: Union[float, Mapping] = 32
    non_linearity: str = "gelu"


@dataclasses.dataclass(frozen=True, eq=False)
class CompacterConfig(DoubleSeqBnConfig):
    """Compacter: Houlsby-placed bottlenecks with PHM projections (Mahabadi et al., 2021).

    Example::

        >>> model.add_adapter("task", config="compacter")
    """

    phm_layer: bool = True
    reduction_factor: Union[float, Mapping] = 32
    non_linearity: str = "gelu"


@dataclasses.dataclass(frozen=True, eq=False)
class SeqBnInvConfig(SeqBnConfig):
    """Pfeiffer adapter plus an invertible adapter on the embeddings (MAD-X language adapter).

    Example::

        >>> model.add_adapter("de", config="seq_bn_inv")
    """

    inv_adapter: Optional[str] = "nice"
    inv_adapter_reduction_factor: Optional[float] = 2


@dataclasses.dataclass(frozen=True, eq=False)
class DoubleSeqBnInvConfig(DoubleSeqBnConfig):
    """Houlsby adapter plus an invertible adapter on the embeddings.

    Example::

        >>> model.add_adapter("de", config="double_seq_bn_inv")
    """

    inv_adapter: Optional[str] = "nice"
    inv_adapter_reduction_factor: Optional[float] = 2


for _ids, _config in [
    (("seq_bn", "pfeiffer"), SeqBnConfig()),
    (("double_seq_bn", "houlsby"), DoubleSeqBnConfig()),
    (("par_bn", "parallel"), ParBnConfig()),
    (("scaled_par_bn", "scaled_parallel"), ParBnConfig(scaling="learned")),
    (("compacter",), CompacterConfig()),
    (("compacter++",), CompacterPlusPlusConfig()),
    (("seq_bn_inv", "pfeiffer+inv"), SeqBnInvConfig()),
    (("double_seq_bn_inv", "houlsby+inv"), DoubleSeqBnInvConfig()),
]:
    for _id in _ids:
        register_config(_id, _config)
