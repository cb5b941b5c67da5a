"""LoRA and (IA)³ configs. The math is in :mod:`adapters.methods.lora`."""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar, Optional, Union

from .base import AdapterConfig, register_config

__all__ = ["LoRAConfig", "IA3Config", "DoRAConfig", "LoftQConfig"]

_INITS = ("lora", "bert", "ia3", "gaussian", "loftq", False)


@dataclasses.dataclass(frozen=True)
class LoftQConfig:
    """How LoftQ quantises the base weights (see :mod:`adapters.methods.loftq`).

    Args:
        loftq_bits: bits per weight (4: NF4).
        loftq_iter: alternating quantisation / SVD steps.
        quantizer: "nf" (NormalFloat levels) or "uniform".

    Example::

        >>> LoRAConfig(init_weights="loftq", loftq_config=LoftQConfig(loftq_bits=4, loftq_iter=2))
    """

    loftq_bits: int = 4
    loftq_iter: int = 1
    quantizer: str = "nf"

    def __post_init__(self):
        if not 2 <= self.loftq_bits <= 8 or self.loftq_iter < 1 or self.quantizer not in ("nf", "uniform"):
            raise ValueError("LoftQConfig needs 2 <= loftq_bits <= 8, loftq_iter >= 1 and quantizer 'nf' or 'uniform'.")


@dataclasses.dataclass(frozen=True, eq=False)
class LoRAConfig(AdapterConfig):
    """Low-rank adaptation of linear layers: ``W' = W + (α/r)·B A`` (Hu et al., 2021).

    Placement, AdapterHub style: ``selfattn_lora`` with ``attn_matrices`` (any of "q", "k", "v",
    "o"), ``intermediate_lora`` and ``output_lora`` (the family's FFN projections). Placement,
    PEFT style (replaces the former when given): ``target_modules`` — a list of module names
    matched exactly or as a dotted suffix, a string regex matched against the full module path,
    or ``"all-linear"`` (every linear layer of the base model) — minus ``exclude_modules`` (same
    forms), restricted to ``layers_to_transform`` (indices, optionally with ``layers_pattern``,
    the name of the layer list).

    Args:
        r: rank; must be positive.
        alpha: scaling numerator; the delta is scaled by ``alpha / r`` (``alpha / sqrt(r)`` with
            ``use_rslora``).
        dropout: dropout on the layer input of the LoRA branch.
        composition_mode: "add" (LoRA: the delta is added to the output) or "scale" ((IA)³: the
            output is multiplied by a learned vector; needs ``r == 1``).
        init_weights: "lora" (Kaiming A, zero B: starts as the identity), "gaussian" (A ~
            N(0, 1/r), zero B), "bert" (both N(0, 0.02)), "ia3" (ones), "loftq" (see
            ``loftq_config``) or False (random A and B, not the identity).
        use_gating: a learned sigmoid gate on the delta.
        rank_pattern / alpha_pattern: regex (matched against the end of the module path) to r /
            alpha for the modules it matches.
        use_dora: DoRA (Liu et al., 2024): the LoRA-updated weight is renormalised per output
            row and rescaled by a learned magnitude vector.
        bias: which biases train with the adapter and are saved with it: "none", "all" (every
            bias of the base model) or "lora_only" (the biases of the layers it adapts). Saved
            biases overwrite the model's when the adapter is loaded.
        loftq_config: with ``init_weights="loftq"``: a :class:`LoftQConfig` (or its dict). LoftQ
            replaces each targeted weight by its quantised version and initialises A, B from the
            SVD of the quantisation residual, so the base model's weights change.
        feedforward_modules: with composition_mode "scale", the targeted modules (same forms as
            ``target_modules``) whose *input* is scaled instead of their output (PEFT's IA³).
        modules_to_save: names of whole modules (exact or dotted suffix, e.g. ``["classifier"]``)
            of which the adapter keeps its own fully trainable copy, saved and loaded with it (see
            :mod:`adapters.methods.saved_modules`); for heads and embeddings that must train.
        leave_out: layer indices that get no LoRA.

    Example::

        >>> model.add_adapter("lora", config=LoRAConfig(r=8, alpha=16, attn_matrices=["q", "v"]))
        >>> model.add_adapter("all", config=LoRAConfig(target_modules="all-linear"))
    """

    architecture: ClassVar[str] = "lora"

    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    leave_out: tuple = ()
    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    attn_matrices: tuple = ("q", "v")
    composition_mode: str = "add"
    init_weights: Union[str, bool] = "lora"
    use_gating: bool = False
    use_dora: bool = False
    dtype: Optional[str] = None
    init_weights_seed: Optional[int] = None
    target_modules: Optional[Union[tuple, str]] = None
    exclude_modules: Optional[Union[tuple, str]] = None
    layers_to_transform: Optional[Union[tuple, int]] = None
    layers_pattern: Optional[str] = None
    rank_pattern: dict = dataclasses.field(default_factory=dict)
    alpha_pattern: dict = dataclasses.field(default_factory=dict)
    use_rslora: bool = False
    feedforward_modules: Optional[Union[tuple, str]] = None
    loftq_config: Optional[dict] = None
    bias: str = "none"
    modules_to_save: Optional[tuple] = None

    def __post_init__(self):
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"bias must be 'none', 'all' or 'lora_only', got {self.bias!r}.")
        if isinstance(self.loftq_config, LoftQConfig):
            object.__setattr__(self, "loftq_config", dataclasses.asdict(self.loftq_config))
        if self.init_weights == "loftq":
            LoftQConfig(**(self.loftq_config or {}))  # validates
            if self.composition_mode != "add" or self.use_dora:
                raise ValueError("init_weights='loftq' initialises plain LoRA (composition_mode='add', no DoRA).")
        for name in ("leave_out", "attn_matrices"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.modules_to_save is not None:
            names = (self.modules_to_save,) if isinstance(self.modules_to_save, str) else tuple(self.modules_to_save)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"modules_to_save must be a list of module names, got {self.modules_to_save!r}.")
            object.__setattr__(self, "modules_to_save", names)
        for name in ("target_modules", "exclude_modules", "feedforward_modules"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.layers_to_transform, int):
            object.__setattr__(self, "layers_to_transform", (self.layers_to_transform,))
        elif self.layers_to_transform is not None:
            object.__setattr__(self, "layers_to_transform", tuple(self.layers_to_transform))
        object.__setattr__(self, "rank_pattern", dict(self.rank_pattern))
        object.__setattr__(self, "alpha_pattern", dict(self.alpha_pattern))
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}.")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha!r}.")
        for pattern, value in {**self.rank_pattern, **self.alpha_pattern}.items():
            re.compile(pattern)
            if value <= 0:
                raise ValueError(f"rank_pattern/alpha_pattern value for {pattern!r} must be positive, got {value!r}.")
        if self.composition_mode not in ("add", "scale"):
            raise ValueError(f"composition_mode must be 'add' or 'scale', got {self.composition_mode!r}.")
        if self.composition_mode == "scale" and self.r != 1:
            raise ValueError("composition_mode='scale' ((IA)³) learns one vector per layer and needs r=1.")
        if self.init_weights not in _INITS:
            raise ValueError(f"init_weights must be one of {_INITS}, got {self.init_weights!r}.")
        if not set(self.attn_matrices) <= {"q", "k", "v", "o"}:
            raise ValueError(f"attn_matrices may contain 'q', 'k', 'v' and 'o', got {list(self.attn_matrices)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1).")
        if self.use_dora and self.composition_mode != "add":
            raise ValueError("use_dora=True needs composition_mode='add' (DoRA decomposes a LoRA update).")


@dataclasses.dataclass(frozen=True, eq=False)
class IA3Config(LoRAConfig):
    """(IA)³ (Liu et al., 2022): the outputs of the key, value and FFN-intermediate projections
    are multiplied by learned vectors initialised to ones.

    Example::

        >>> model.add_adapter("ia3", config=IA3Config())
    """

    selfattn_lora: bool = True
    intermediate_lora: bool = True
    output_lora: bool = False
    r: int = 1
    alpha: float = 1
    attn_matrices: tuple = ("k", "v")
    composition_mode: str = "scale"
    init_weights: Union[str, bool] = "ia3"


@dataclasses.dataclass(frozen=True, eq=False)
class DoRAConfig(LoRAConfig):
    """DoRA (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"): LoRA whose updated
    weight is split into a direction (renormalised per output row) and a learned magnitude.

    Example::

        >>> model.add_adapter("dora", config=DoRAConfig(r=8, alpha=16))
    """

    use_dora: bool = True


register_config("lora", LoRAConfig())
register_config("ia3", IA3Config())
register_config("dora", DoRAConfig())
