"""LoRA and (IA)³ configs. The math is in :mod:`adapters.methods.lora`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Optional, Union

from ..errors import AdapterConfigError
from .base import AdapterConfig, config_class_for, register_config
from .validation import (
    CheckedFields,
    check_bool,
    check_choice,
    check_int,
    check_layer_indices,
    check_module_names,
    check_number,
    check_pattern_dict,
    check_probability,
    check_seed,
    check_str,
    config_error,
)

__all__ = ["LoRAConfig", "IA3Config", "DoRAConfig", "LoftQConfig"]

_INITS = ("lora", "bert", "ia3", "gaussian", "loftq", False)
# torch dtype names AdapterHub's ``dtype`` field takes
_DTYPES = ("float32", "float", "float16", "half", "bfloat16", "float64", "double")


@dataclasses.dataclass(frozen=True)
class LoftQConfig(metaclass=CheckedFields):
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
        check_int("LoftQConfig", "loftq_bits", self.loftq_bits, minimum=2, maximum=8)
        check_int("LoftQConfig", "loftq_iter", self.loftq_iter, minimum=1, maximum=1000)
        check_choice("LoftQConfig", "quantizer", self.quantizer, ("nf", "uniform"))


@dataclasses.dataclass(eq=False)
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
        r: rank; a positive integer (at most 65536).
        alpha: scaling numerator, a finite number > 0; the delta is scaled by ``alpha / r``
            (``alpha / sqrt(r)`` with ``use_rslora``).
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
            SVD of the quantisation residual, so the base model's weights change; on a model loaded
            quantized, the quantized weights stay and A, B fit the residual to the float weights
            of the checkpoint folder it was loaded from.
        feedforward_modules: with composition_mode "scale", the targeted modules (same forms as
            ``target_modules``) whose *input* is scaled instead of their output (PEFT's IA³).
        modules_to_save: names of whole modules (exact or dotted suffix, e.g. ``["classifier"]``)
            of which the adapter keeps its own fully trainable copy, saved and loaded with it (see
            :mod:`adapters.methods.saved_modules`); for heads and embeddings that must train.
        leave_out: a list of layer indices that get no LoRA.

    A dict (or AdapterHub checkpoint) of ``"architecture": "lora"`` whose ``vera_d`` / ``vera_b``
    are set is AdapterHub's VeRA: it reads as a :class:`~adapters.VeraConfig`.

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

    # AdapterHub's VeRA fields at their LoRA default (None: not VeRA); set, the dict is a VeraConfig's
    _foreign_defaults: ClassVar[dict] = {"vera_d": None, "vera_b": None}

    @classmethod
    def _from_fields(cls, data: dict, checkpoint: Optional[str] = None) -> "AdapterConfig":
        """AdapterHub writes VeRA and DVoRA as LoRA configs with ``vera_d`` / ``vera_b`` set: such a
        dict is read by the VeRA config class."""
        if cls is LoRAConfig and any(data.get(key) is not None for key in ("vera_d", "vera_b")):
            return config_class_for("vera")._from_fields(data, checkpoint)
        return super()._from_fields(data, checkpoint)

    def __post_init__(self):
        """Every value check of the LoRA family (LoRA, DoRA, (IA)³), in one place."""
        name = type(self).__name__
        for field in ("selfattn_lora", "intermediate_lora", "output_lora", "use_gating", "use_dora", "use_rslora"):
            check_bool(name, field, getattr(self, field))
        object.__setattr__(self, "leave_out", check_layer_indices(name, "leave_out", self.leave_out))
        check_int(name, "r", self.r, minimum=1)
        check_number(name, "alpha", self.alpha, minimum=0, min_open=True)
        check_probability(name, "dropout", self.dropout)
        object.__setattr__(self, "attn_matrices", check_attn_matrices(name, self.attn_matrices))
        check_choice(name, "composition_mode", self.composition_mode, ("add", "scale"))
        check_choice(name, "init_weights", self.init_weights, _INITS)
        check_choice(name, "dtype", self.dtype, (None, *_DTYPES))
        check_seed(name, "init_weights_seed", self.init_weights_seed)
        for field in ("target_modules", "exclude_modules", "feedforward_modules"):
            object.__setattr__(self, field, check_module_names(name, field, getattr(self, field)))
        object.__setattr__(self, "modules_to_save", check_modules_to_save(name, self.modules_to_save))
        object.__setattr__(self, "layers_to_transform", check_layers_to_transform(name, self.layers_to_transform))
        if isinstance(self.layers_pattern, (list, tuple)):  # PEFT allows a list; one name is used
            object.__setattr__(self, "layers_pattern", self.layers_pattern[0] if self.layers_pattern else None)
        check_str(name, "layers_pattern", self.layers_pattern, optional=True)
        object.__setattr__(self, "rank_pattern", check_pattern_dict(name, "rank_pattern", self.rank_pattern, integer=True))
        object.__setattr__(self, "alpha_pattern", check_pattern_dict(name, "alpha_pattern", self.alpha_pattern, integer=False))
        check_choice(name, "bias", self.bias, ("none", "all", "lora_only"))
        if isinstance(self.loftq_config, LoftQConfig):
            object.__setattr__(self, "loftq_config", dataclasses.asdict(self.loftq_config))
        if self.loftq_config is not None:
            if not isinstance(self.loftq_config, Mapping):
                raise config_error(name, "loftq_config", self.loftq_config, "a LoftQConfig, a dict of its fields or None")
            object.__setattr__(self, "loftq_config", dict(self.loftq_config))
            LoftQConfig(**self.loftq_config)  # validates
        if self.init_weights == "loftq" and (self.composition_mode != "add" or self.use_dora):
            raise AdapterConfigError(f"{name}: init_weights='loftq' initialises plain LoRA (composition_mode='add', no DoRA).")
        if self.composition_mode == "scale" and self.r != 1:
            raise AdapterConfigError(f"{name}: composition_mode='scale' ((IA)³) learns one vector per layer and needs r=1, not r={self.r}.")
        if self.use_dora and self.composition_mode != "add":
            raise AdapterConfigError(f"{name}: use_dora=True needs composition_mode='add' (DoRA decomposes a LoRA update).")


@dataclasses.dataclass(eq=False)
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


@dataclasses.dataclass(eq=False)
class DoRAConfig(LoRAConfig):
    """DoRA (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"): LoRA whose updated
    weight is split into a direction (renormalised per output row) and a learned magnitude.

    Example::

        >>> model.add_adapter("dora", config=DoRAConfig(r=8, alpha=16))
    """

    use_dora: bool = True


def check_attn_matrices(owner: str, value) -> tuple:
    """``attn_matrices``: a list of ``"q"``, ``"k"``, ``"v"``, ``"o"`` (returned as a tuple).

    Example::

        >>> check_attn_matrices("LoRAConfig", ["q", "v"])
        ('q', 'v')
    """
    valid = "a list of 'q', 'k', 'v' and 'o' (e.g. ['q', 'v'])"
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise config_error(owner, "attn_matrices", value, valid)
    for item in value:
        if item not in ("q", "k", "v", "o") or not isinstance(item, str):
            raise config_error(owner, "attn_matrices", value, valid, detail=f" ({item!r} is none of them)")
    return tuple(value)


def check_modules_to_save(owner: str, value):
    """``modules_to_save``: None, or one or more module names (a single name or a non-empty list),
    as a tuple.

    Example::

        >>> check_modules_to_save("LoRAConfig", "classifier")
        ('classifier',)
    """
    if isinstance(value, str) and value:
        value = [value]
    names = check_module_names(owner, "modules_to_save", value, regex=False)
    if names == ():
        raise config_error(owner, "modules_to_save", value, "a list of module names (at least one) or None")
    return names


def check_layers_to_transform(owner: str, value):
    """``layers_to_transform``: None, one layer index or a list of them (PEFT's forms), as a tuple.

    Example::

        >>> check_layers_to_transform("LoRAConfig", 3)
        (3,)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    return check_layer_indices(owner, "layers_to_transform", value, optional=True)


register_config("lora", LoRAConfig())
register_config("ia3", IA3Config())
register_config("dora", DoRAConfig())
