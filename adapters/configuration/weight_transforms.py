"""Configs of the weight-transform methods beyond LoRA: LoHa, LoKr, OFT and AdaLoRA (HRA keeps its
config in :mod:`adapters.methods.hra`, the shape every new method takes).

The math is in :mod:`adapters.methods.loha`, :mod:`~adapters.methods.lokr`,
:mod:`~adapters.methods.oft` and :mod:`~adapters.methods.adalora`.
Field names and defaults are PEFT's (0.21), so a PEFT config reads as ours one to one; the
targeting knobs are shared by every weight-update config (:class:`WeightTargetingConfig`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Optional, Union

from ..errors import AdapterConfigError
from .base import AdapterConfig, register_config
from .lora import check_attn_matrices, check_layers_to_transform, check_modules_to_save
from .validation import (
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

__all__ = ["WeightTargetingConfig", "LoHaConfig", "LoKrConfig", "OFTConfig", "AdaLoRAConfig"]


@dataclasses.dataclass(eq=False)
class WeightTargetingConfig(AdapterConfig):
    """Where a weight-update adapter goes: the targeting knobs every weight-update method shares.

    Placement, PEFT style: ``target_modules`` — a list of module names matched exactly or as a
    dotted suffix, a string regex matched against the full module path, or ``"all-linear"`` —
    minus ``exclude_modules`` (same forms), restricted to ``layers_to_transform`` (indices,
    optionally with ``layers_pattern``, the name of the layer list). Placement, AdapterHub style
    (used when ``target_modules`` is None): ``selfattn_lora`` with ``attn_matrices`` (any of "q",
    "k", "v", "o"), ``intermediate_lora`` and ``output_lora``; the default targets the query and
    value projections, PEFT's default for BERT- and Llama-like models. ``leave_out`` skips layers.

    Args:
        modules_to_save: modules of the model (e.g. a classifier head) trained and saved with the
            adapter (PEFT's ``modules_to_save``).
        init_weights_seed: seed for the initialisation of the adapter's parameters (None: the
            global generator).

    Example::

        >>> LoHaConfig(target_modules=["q_proj", "v_proj"], layers_to_transform=[0, 1])
    """

    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    attn_matrices: tuple = ("q", "v")
    leave_out: tuple = ()
    target_modules: Optional[Union[tuple, str]] = None
    exclude_modules: Optional[Union[tuple, str]] = None
    layers_to_transform: Optional[Union[tuple, int]] = None
    layers_pattern: Optional[str] = None
    modules_to_save: Optional[tuple] = None
    init_weights_seed: Optional[int] = None

    def __post_init__(self):
        """The checks of the targeting knobs every weight-update method shares (each method's own
        ``__post_init__`` calls this, then checks its own fields)."""
        name = type(self).__name__
        for field in ("selfattn_lora", "intermediate_lora", "output_lora"):
            check_bool(name, field, getattr(self, field))
        object.__setattr__(self, "attn_matrices", check_attn_matrices(name, self.attn_matrices))
        object.__setattr__(self, "leave_out", check_layer_indices(name, "leave_out", self.leave_out))
        for field in ("target_modules", "exclude_modules"):
            object.__setattr__(self, field, check_module_names(name, field, getattr(self, field)))
        object.__setattr__(self, "modules_to_save", check_modules_to_save(name, self.modules_to_save))
        object.__setattr__(self, "layers_to_transform", check_layers_to_transform(name, self.layers_to_transform))
        if isinstance(self.layers_pattern, (list, tuple)):  # PEFT allows a list; one name is used
            object.__setattr__(self, "layers_pattern", self.layers_pattern[0] if self.layers_pattern else None)
        check_str(name, "layers_pattern", self.layers_pattern, optional=True)
        check_seed(name, "init_weights_seed", self.init_weights_seed)


def _check_lycoris(config, inits) -> None:
    """The checks LoHa and LoKr share: r, alpha, dropouts, patterns and the init choice."""
    name = type(config).__name__
    object.__setattr__(config, "rank_pattern", check_pattern_dict(name, "rank_pattern", config.rank_pattern, integer=True))
    object.__setattr__(config, "alpha_pattern", check_pattern_dict(name, "alpha_pattern", config.alpha_pattern, integer=False))
    check_int(name, "r", config.r, minimum=1)
    check_number(name, "alpha", config.alpha, minimum=0, min_open=True)
    check_probability(name, "rank_dropout", config.rank_dropout)
    check_probability(name, "module_dropout", config.module_dropout)
    check_choice(name, "init_weights", config.init_weights, inits)


@dataclasses.dataclass(eq=False)
class LoHaConfig(WeightTargetingConfig):
    """LoHa (Hyeon-Woo et al., 2022, "FedPara"): a Hadamard product of two rank-``r`` updates,
    ``ΔW = (W1a W1b) ⊙ (W2a W2b) · α/r`` (rank up to ``r²`` for the parameters of two rank-r LoRAs).

    Args:
        r: rank of each factor; positive.
        alpha: scaling numerator (``ΔW`` is scaled by ``alpha / r``).
        rank_dropout: in training, each output row of ``ΔW`` is dropped with this probability
            (the kept rows rescaled so that their mean factor is 1, as PEFT does).
        module_dropout: in training, the whole adapter is skipped at a layer with this probability.
        init_weights: True: ``W2b = 0`` (the adapter starts as the identity); False: all random.
        rank_pattern / alpha_pattern: regex (matched against the end of the module path) to r /
            alpha for the modules it matches.

    Example::

        >>> model.add_adapter("loha", config=LoHaConfig(r=4, alpha=8), set_active=True)
    """

    architecture: ClassVar[str] = "loha"

    r: int = 8
    alpha: float = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    init_weights: bool = True
    rank_pattern: dict = dataclasses.field(default_factory=dict)
    alpha_pattern: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        """Every value check of LoHa, in one place."""
        super().__post_init__()
        _check_lycoris(self, (True, False))

@dataclasses.dataclass(eq=False)
class LoKrConfig(WeightTargetingConfig):
    """LoKr (Edalati et al., 2022; LyCORIS): a Kronecker product ``ΔW = (W1 ⊗ W2) · α/r`` whose
    factor shapes split ``d_out`` and ``d_in`` into two factors each (see :mod:`adapters.methods.lokr`).

    Args:
        r: rank used where a factor is itself decomposed (``W2 = W2a W2b`` when
            ``r < max(W2's sides) / 2``; ``W1`` likewise with ``decompose_both``).
        alpha: scaling numerator (``ΔW`` is scaled by ``alpha / r``).
        decompose_both: also decompose ``W1`` into a rank-``r`` product where it is large enough.
        decompose_factor: the preferred size of the first factor of each dimension (-1: as close
            to the square root as the divisors allow).
        rank_dropout: in training, each output row of ``ΔW`` is dropped with this probability.
        rank_dropout_scale: rescale the kept rows so their mean factor is 1.
        module_dropout: in training, the whole adapter is skipped at a layer with this probability.
        init_weights: True: ``W1 = 0`` (identity at start); "lycoris": ``W2 = 0`` instead;
            False: all random.
        rank_pattern / alpha_pattern: regex to r / alpha for the modules it matches.

    Example::

        >>> model.add_adapter("lokr", config=LoKrConfig(r=4, decompose_both=True), set_active=True)
    """

    architecture: ClassVar[str] = "lokr"

    r: int = 8
    alpha: float = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    decompose_both: bool = False
    decompose_factor: int = -1
    rank_dropout_scale: bool = False
    init_weights: Union[bool, str] = True
    rank_pattern: dict = dataclasses.field(default_factory=dict)
    alpha_pattern: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        """Every value check of LoKr, in one place."""
        super().__post_init__()
        _check_lycoris(self, (True, False, "lycoris"))
        check_bool(type(self).__name__, "decompose_both", self.decompose_both)
        check_bool(type(self).__name__, "rank_dropout_scale", self.rank_dropout_scale)
        check_int(type(self).__name__, "decompose_factor", self.decompose_factor, minimum=-1)  # -1: near the square root


@dataclasses.dataclass(eq=False)
class OFTConfig(WeightTargetingConfig):
    """OFT (Qiu et al., 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning"):
    the input of the layer is rotated by a block-diagonal orthogonal matrix ``R`` built from
    skew-symmetric blocks by the Cayley transform, i.e. ``W' = W Rᵀ`` (PEFT's convention).

    Give either ``r`` (the number of blocks) or ``oft_block_size`` (their size), not both; the
    other follows from ``d_in = r · oft_block_size``. A size that does not divide ``d_in`` is
    moved to the nearest one that does (with a warning), as PEFT does.

    Args:
        r: number of blocks (0: derive from ``oft_block_size``).
        oft_block_size: block size (0: derive from ``r``).
        module_dropout: in training, this fraction of the blocks is replaced by the identity at
            each forward pass (multiplicative dropout).
        coft: constrained OFT: each skew-symmetric block is projected into a ball of radius
            ``eps`` (scaled by ``1/√blocks``) around zero before use, so ``R`` stays near ``I``.
        eps: COFT's radius.
        block_share: one block shared by all blocks of the layer.
        use_cayley_neumann: approximate the inverse in the Cayley transform by a truncated
            Neumann series of ``num_cayley_neumann_terms`` terms (PEFT's default) instead of solving.
        init_weights: True: zero blocks (``R = I``); False: random (std 0.1).

    Example::

        >>> model.add_adapter("oft", config=OFTConfig(oft_block_size=16), set_active=True)
    """

    architecture: ClassVar[str] = "oft"

    r: int = 0
    oft_block_size: int = 32
    module_dropout: float = 0.0
    coft: bool = False
    eps: float = 6e-5
    block_share: bool = False
    use_cayley_neumann: bool = True
    num_cayley_neumann_terms: int = 5
    init_weights: bool = True

    def __post_init__(self):
        """Every value check of OFT, in one place."""
        super().__post_init__()
        name = type(self).__name__
        check_int(name, "r", self.r, minimum=0)
        check_int(name, "oft_block_size", self.oft_block_size, minimum=0)
        if (self.r == 0) == (self.oft_block_size == 0):
            raise AdapterConfigError(
                f"OFT needs exactly one of r ({self.r}) and oft_block_size ({self.oft_block_size}) to be non-zero, "
                f"because r x oft_block_size = in_features; set the other to 0."
            )
        check_probability(name, "module_dropout", self.module_dropout)
        for field in ("coft", "block_share", "use_cayley_neumann", "init_weights"):
            check_bool(name, field, getattr(self, field))
        check_number(name, "eps", self.eps, minimum=0, min_open=True)
        check_int(name, "num_cayley_neumann_terms", self.num_cayley_neumann_terms, minimum=1, maximum=1000)


@dataclasses.dataclass(eq=False)
class AdaLoRAConfig(WeightTargetingConfig):
    """AdaLoRA (Zhang et al., 2023, "Adaptive Budget Allocation for Parameter-Efficient
    Fine-Tuning"): an SVD-shaped update ``ΔW = P Λ Q · α/(r₀ + 1e-5)`` whose singular values are
    pruned during training by importance, following a cubic budget schedule.

    Args:
        init_r: the rank every targeted layer starts with (``r₀``).
        target_r: the average rank per layer at the end of the schedule.
        lora_alpha: scaling numerator (0: use ``init_r``).
        lora_dropout: dropout on the layer input of the update.
        init_lora_weights: True: ``Λ = 0`` (identity at start), ``P``, ``Q`` ~ N(0, 0.02); False: random.
        tinit / tfinal: steps before the budget starts to shrink / after it reaches ``target_r``.
        deltaT: steps between two re-allocations.
        beta1 / beta2: EMA factors of the sensitivity and its uncertainty.
        orth_reg_weight: weight of ``‖PᵀP − I‖_F + ‖QQᵀ − I‖_F`` (averaged over matrices) added
            to the training loss.
        total_step: the number of training steps (needed by :meth:`update_and_allocate`).
        rank_pattern: the ranks PEFT saved after allocation (module path -> kept-triplet mask);
            set when a PEFT checkpoint is loaded.

    Example::

        >>> model.add_adapter("ada", config=AdaLoRAConfig(init_r=12, target_r=4, total_step=1000))
    """

    architecture: ClassVar[str] = "adalora"

    init_r: int = 12
    target_r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    init_lora_weights: bool = True
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: Optional[int] = None
    rank_pattern: Optional[dict] = None

    def __post_init__(self):
        """Every value check of AdaLoRA, in one place."""
        super().__post_init__()
        name = type(self).__name__
        if self.rank_pattern is not None:
            object.__setattr__(self, "rank_pattern", _check_adalora_masks(name, self.rank_pattern))
        check_int(name, "init_r", self.init_r, minimum=1)
        check_int(name, "target_r", self.target_r, minimum=0, maximum=self.init_r)
        check_number(name, "lora_alpha", self.lora_alpha, minimum=0)  # 0: use init_r
        check_probability(name, "lora_dropout", self.lora_dropout)
        check_bool(name, "init_lora_weights", self.init_lora_weights)
        for field in ("beta1", "beta2"):
            check_number(name, field, getattr(self, field), minimum=0, maximum=1, min_open=True, max_open=True)
        check_number(name, "orth_reg_weight", self.orth_reg_weight, minimum=0)
        check_int(name, "deltaT", self.deltaT, minimum=1, maximum=None)
        check_int(name, "tinit", self.tinit, minimum=0, maximum=None)
        check_int(name, "tfinal", self.tfinal, minimum=0, maximum=None)
        check_int(name, "total_step", self.total_step, minimum=1, maximum=None, optional=True)
        if self.total_step is not None:
            if self.tinit >= self.total_step - self.tfinal:
                raise AdapterConfigError(
                    f"AdaLoRA's schedule leaves no budgeting phase: tinit={self.tinit} >= total_step - tfinal = "
                    f"{self.total_step - self.tfinal}; decrease tinit/tfinal or increase total_step."
                )

    @property
    def scaling(self) -> float:
        """``α / (r₀ + 1e-5)``, PEFT's scaling of the update (``α = init_r`` when ``lora_alpha`` is 0).

        Example::

            >>> round(AdaLoRAConfig(init_r=8, lora_alpha=16).scaling, 4)
            2.0
        """
        alpha = self.lora_alpha if self.lora_alpha > 0 else float(self.init_r)
        return alpha / (self.init_r + 1e-5)


def _check_adalora_masks(owner: str, value) -> dict:
    """AdaLoRA's saved ``rank_pattern``: module path -> list of booleans (the kept triplets)."""
    valid = "None or a dict from module path to a list of booleans (the singular values kept)"
    if not isinstance(value, Mapping):
        raise config_error(owner, "rank_pattern", value, valid)
    masks = {}
    for key, mask in value.items():
        if not isinstance(key, str) or not isinstance(mask, (list, tuple)) or not all(
            isinstance(b, bool) or (isinstance(b, int) and b in (0, 1)) for b in mask
        ):
            raise config_error(owner, "rank_pattern", value, valid, detail=f" (entry {key!r} is not one)")
        masks[key] = [bool(b) for b in mask]
    return masks


register_config("loha", LoHaConfig())
register_config("lokr", LoKrConfig())
register_config("oft", OFTConfig())
register_config("adalora", AdaLoRAConfig())
