"""Bottleneck adapter configs (Houlsby et al. 2019; Pfeiffer et al. 2020; He et al. 2021) and
Compacter (Mahabadi et al. 2021). The math is in :mod:`adapters.methods.bottleneck`."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import ClassVar, Optional, Union

from ..errors import AdapterConfigError
from .base import AdapterConfig, register_config
from .validation import (
    MAX_SIZE,
    MIN_REDUCTION_FACTOR,
    check_activation,
    check_bool,
    check_choice,
    check_int,
    check_layer_indices,
    check_number,
    check_probability,
    check_seed,
    config_error,
    did_you_mean,
)

__all__ = [
    "AdapterPlusConfig",
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
_BOOL_FIELDS = (
    "mh_adapter", "output_adapter", "original_ln_before", "original_ln_after", "ln_before", "ln_after", "is_parallel",
    "use_gating", "adapter_residual_before_ln", "cross_adapter", "phm_layer", "factorized_phm_W", "shared_W_phm",
    "shared_phm_rule", "factorized_phm_rule", "learn_phm", "phm_bias",
)


def _check_reduction_factor(owner: str, field: str, value, optional: bool = False, per_layer: bool = True):
    """A factor ``>= 1/16`` (the bottleneck is ``hidden_size // factor``, so at most 16x the hidden
    size), finite, not a bool; with ``per_layer`` also a dict from layer index (``"0"`` or ``0``,
    stored as ``"0"``) or ``"default"`` to such a factor."""
    if value is None and optional:
        return None
    valid = f"a finite number >= {MIN_REDUCTION_FACTOR:g} (the bottleneck is hidden size // factor, at most 16x the hidden size)"
    if per_layer:
        valid += ", or a dict from layer index or 'default' to one (e.g. {'0': 4, 'default': 16})"
    if isinstance(value, Mapping) and per_layer:
        factors = {}
        for key, factor in value.items():
            if isinstance(key, int) and not isinstance(key, bool) and 0 <= key <= MAX_SIZE:
                layer = str(key)
            elif isinstance(key, str) and key.isascii() and key.isdigit() and int(key) <= MAX_SIZE:
                layer = str(int(key))
            elif key == "default":
                layer = key
            else:
                raise config_error(
                    owner, field, value, valid, did_you_mean(key, ["default"]), detail=f" ({key!r} is neither a layer index nor 'default')"
                )
            factors[layer] = _check_reduction_factor(owner, f"{field}[{key!r}]", factor, per_layer=False)
        return factors
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < MIN_REDUCTION_FACTOR:
        raise config_error(owner, field, value, valid + (" or None" if optional else ""))
    return value


@dataclasses.dataclass(eq=False)
class BnConfig(AdapterConfig):
    """A bottleneck adapter: ``x + f(x W_down) W_up``, inserted after the attention block
    (``mh_adapter``) and/or the feed-forward block (``output_adapter``) of each layer.

    Args:
        mh_adapter: insert an adapter after the multi-head attention block.
        output_adapter: insert an adapter after the feed-forward block.
        reduction_factor: hidden size / bottleneck size (the bottleneck is ``hidden // factor``);
            a finite number >= 1/16 (so at most 16x the hidden size), or a dict mapping layer
            index (``"0"`` or ``0``, stored as ``"0"``) or ``"default"`` to one.
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
        leave_out: a list of layer indices that get no adapter (a single int is refused: write
            ``[1]``).
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
        """Every value check of the bottleneck family (and Compacter), in one place."""
        name = type(self).__name__
        for field in _BOOL_FIELDS:
            check_bool(name, field, getattr(self, field))
        object.__setattr__(self, "leave_out", check_layer_indices(name, "leave_out", self.leave_out))
        object.__setattr__(self, "reduction_factor", _check_reduction_factor(name, "reduction_factor", self.reduction_factor))
        check_activation(name, "non_linearity", self.non_linearity)
        check_choice(name, "init_weights", self.init_weights, _INIT_WEIGHTS)
        if isinstance(self.scaling, str):
            check_choice(name, "scaling", self.scaling, ("learned", "channel"))
        elif not isinstance(self.scaling, (int, float)) or isinstance(self.scaling, bool):
            raise config_error(name, "scaling", self.scaling, "a finite number, 'learned' or 'channel'")
        else:
            check_number(name, "scaling", self.scaling)
        check_choice(name, "residual_before_ln", self.residual_before_ln, (True, False, "post_add"))
        check_probability(name, "dropout", self.dropout)
        check_probability(name, "stochastic_depth", self.stochastic_depth)
        check_choice(name, "inv_adapter", self.inv_adapter, (None, "nice", "glow"))
        _check_reduction_factor(name, "inv_adapter_reduction_factor", self.inv_adapter_reduction_factor, optional=True, per_layer=False)
        check_int(name, "phm_dim", self.phm_dim, minimum=1)
        check_int(name, "phm_rank", self.phm_rank, minimum=1)
        check_number(name, "phm_init_range", self.phm_init_range, minimum=0, min_open=True)
        if self.phm_layer:  # read only by PHM layers (AdapterHub checks them there too)
            check_choice(name, "hypercomplex_nonlinearity", self.hypercomplex_nonlinearity, _PHM_W_INITS)
            check_choice(name, "phm_c_init", self.phm_c_init, ("normal", "uniform"))
        check_seed(name, "init_weights_seed", self.init_weights_seed)

    @classmethod
    def _upgrade_legacy(cls, data: dict) -> dict:
        """AdapterHub's v1 key ``invertible_adapter`` (``{"block_type": ..., "reduction_factor": ...}``)
        becomes ``inv_adapter`` / ``inv_adapter_reduction_factor``, as AdapterHub reads it."""
        if "invertible_adapter" not in data:
            return data
        data = dict(data)
        legacy = data.pop("invertible_adapter")
        if not legacy:
            return data
        if not isinstance(legacy, Mapping) or "block_type" not in legacy:
            raise config_error(
                cls.__name__, "invertible_adapter", legacy, "a dict {'block_type': 'nice' or 'glow', 'reduction_factor': ...} or None"
            )
        for ours, theirs in (("inv_adapter", "block_type"), ("inv_adapter_reduction_factor", "reduction_factor")):
            if data.get(ours) is not None and data[ours] != legacy.get(theirs):
                raise AdapterConfigError(
                    f"{cls.__name__}: the legacy invertible_adapter={legacy!r} contradicts {ours}={data[ours]!r}; keep one of them."
                )
            data[ours] = legacy.get(theirs)
        return data

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
            raise AdapterConfigError(
                f"reduction_factor={dict(factor)!r} has no entry for layer {layer_idx} and no 'default'; "
                f"add a default like {{'default': 16}}."
            )
        return factor


@dataclasses.dataclass(eq=False)
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


@dataclasses.dataclass(eq=False)
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


@dataclasses.dataclass(eq=False)
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


@dataclasses.dataclass(eq=False)
class CompacterPlusPlusConfig(SeqBnConfig):
    """Compacter++: a sequential bottleneck with PHM projections (Mahabadi et al., 2021).

    Example::

        >>> model.add_adapter("task", config="compacter++")
    """

    phm_layer: bool = True
    reduction_factor: Union[float, Mapping] = 32
    non_linearity: str = "gelu"


@dataclasses.dataclass(eq=False)
class CompacterConfig(DoubleSeqBnConfig):
    """Compacter: Houlsby-placed bottlenecks with PHM projections (Mahabadi et al., 2021).

    Example::

        >>> model.add_adapter("task", config="compacter")
    """

    phm_layer: bool = True
    reduction_factor: Union[float, Mapping] = 32
    non_linearity: str = "gelu"


@dataclasses.dataclass(eq=False)
class AdapterPlusConfig(BnConfig):
    """AdapterPlus (Steitz & Roth, 2024): one sequential bottleneck after the feed-forward block,
    placed after the layer's own residual and norm (``original_ln_before``) and not followed by the
    norm again (``original_ln_after=False``), with a learned per-channel scaling of its output
    (``scaling="channel"``), Houlsby initialisation (near-zero normal weights, zero biases), GELU,
    reduction factor 96 and stochastic depth 0.1 (the whole branch is dropped per sample in
    training). The string id is ``"adapterplus"`` (AdapterHub 1.3.0 has the class but no id).

    With ``original_ln_after=False`` the adapter output is the block output, so keep
    ``residual_before_ln=False`` (the residual is the normed stream) as the paper does.

    Example::

        >>> model.add_adapter("task", config="adapterplus")
        >>> model.add_adapter("small", config=AdapterPlusConfig(reduction_factor=16, stochastic_depth=0.0))
    """

    original_ln_after: bool = False
    original_ln_before: bool = True
    residual_before_ln: Union[bool, str] = False
    stochastic_depth: float = 0.1
    init_weights: str = "houlsby"
    scaling: Union[float, str] = "channel"
    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: Union[float, Mapping] = 96
    non_linearity: str = "gelu"


@dataclasses.dataclass(eq=False)
class SeqBnInvConfig(SeqBnConfig):
    """Pfeiffer adapter plus an invertible adapter on the embeddings (MAD-X language adapter).

    Example::

        >>> model.add_adapter("de", config="seq_bn_inv")
    """

    inv_adapter: Optional[str] = "nice"
    inv_adapter_reduction_factor: Optional[float] = 2


@dataclasses.dataclass(eq=False)
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
    (("adapterplus",), AdapterPlusConfig()),
]:
    for _id in _ids:
        register_config(_id, _config)
