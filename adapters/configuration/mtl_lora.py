"""Configs of the multi-task methods: the :class:`MultiTaskConfig` marker and MTL-LoRA's
:class:`MTLLoRAConfig`. The math is in :mod:`adapters.methods.mtl_lora`.

Field names and defaults are AdapterHub 1.3.0's (``MTLLoRAConfig`` there derives from its
``LoRAConfig``), so its ``adapter_config.json`` files read as ours; the targeting knobs are the
ones every weight-update method shares (:class:`~adapters.configuration.weight_transforms.WeightTargetingConfig`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Union

from .base import AdapterConfig, register_config
from .validation import check_bool, check_choice, check_int, check_number, check_pattern_dict, check_probability
from .weight_transforms import WeightTargetingConfig

__all__ = ["MultiTaskConfig", "MTLLoRAConfig"]

#: the initialisations MTL-LoRA takes (LoRA's that make sense for a shared A and several B_k)
MTL_INITS = ("lora", "bert", "gaussian", False)
#: the forms of the task-specific ``r×r`` matrix Λ_t
TASK_SPECIFIC_MATRIX_TYPES = ("singular_values", "linear")


@dataclasses.dataclass(eq=False)
class MultiTaskConfig(AdapterConfig):
    """Marker base of the multi-task methods (AdapterHub's name): adapters of such a config are
    one task each of a multi-task model. They may share parameters
    (``model.share_parameters``) and take part in a :class:`~adapters.MultiTask` block, where each
    batch row runs the adapter its task id names.

    Example::

        >>> isinstance(MTLLoRAConfig(), MultiTaskConfig)
        True
    """


@dataclasses.dataclass(eq=False)
class MTLLoRAConfig(WeightTargetingConfig, MultiTaskConfig):
    """MTL-LoRA (Yang et al., 2024, "MTL-LoRA: Low-Rank Adaptation for Multi-Task Learning"):
    a LoRA whose update passes through a task-specific ``r×r`` matrix and a softmax-weighted mix
    of several up projections, ``ΔW_t = s · Σ_k softmax(w_t/τ)_k B_k Λ_tᵀ A``. One adapter is one
    task; ``model.share_parameters`` makes tasks share ``A`` and the ``B_k`` (the paper's setup).

    Args:
        r: rank of the shared down projection ``A`` (``r×d_in``); a positive integer.
        alpha: scaling numerator, a finite number > 0: ``s = alpha / r`` (``alpha / sqrt(r)`` with
            ``use_rslora``).
        dropout: dropout on the layer input of the adapter branch, in [0, 1).
        init_weights: "lora" (Kaiming ``A``, zero ``B_k``: starts as the identity), "gaussian"
            (``A ~ N(0, 1/r)``, zero ``B_k``), "bert" (``A`` and ``B_k`` ~ N(0, 0.02), AdapterHub's)
            or False (all random); ``Λ_t`` starts as the identity, the mixing weights ``w_t`` as ones.
        use_rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
        rank_pattern / alpha_pattern: regex (matched against the end of the module path) to r /
            alpha for the modules it matches.
        n_up_projection: the number ``n`` of up projections ``B_1 … B_n`` (each ``d_out×r``); >= 1.
        task_specific_matrix_type: "singular_values" (``Λ_t`` diagonal, ``r`` values) or "linear"
            (``Λ_t`` a full ``r×r`` matrix).
        weights_sharpness: the temperature ``τ > 0`` of the softmax over the mixing weights
            (small: the largest weight dominates).

    AdapterHub's fields that this version implements only at their default are read from its
    files at that value and refused otherwise: ``composition_mode`` ("add"), ``use_gating``,
    ``use_dora`` (False), ``dtype``, ``vera_d``, ``vera_b`` (None).

    Example::

        >>> config = MTLLoRAConfig(r=8, n_up_projection=3, task_specific_matrix_type="linear")
        >>> model.add_adapter("task_a", config=config)
    """

    architecture: ClassVar[str] = "mtl_lora"

    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    init_weights: Union[str, bool] = "lora"
    use_rslora: bool = False
    rank_pattern: dict = dataclasses.field(default_factory=dict)
    alpha_pattern: dict = dataclasses.field(default_factory=dict)
    n_up_projection: int = 1
    task_specific_matrix_type: str = "singular_values"
    weights_sharpness: float = 0.05

    _foreign_defaults: ClassVar[dict] = {
        "composition_mode": "add", "use_gating": False, "use_dora": False, "dtype": None, "vera_d": None, "vera_b": None,
    }

    def __post_init__(self):
        """Every value check of MTL-LoRA, in one place."""
        super().__post_init__()
        name = type(self).__name__
        check_int(name, "r", self.r, minimum=1)
        check_number(name, "alpha", self.alpha, minimum=0, min_open=True)
        check_probability(name, "dropout", self.dropout)
        check_choice(name, "init_weights", self.init_weights, MTL_INITS)
        check_bool(name, "use_rslora", self.use_rslora)
        object.__setattr__(self, "rank_pattern", check_pattern_dict(name, "rank_pattern", self.rank_pattern, integer=True))
        object.__setattr__(self, "alpha_pattern", check_pattern_dict(name, "alpha_pattern", self.alpha_pattern, integer=False))
        check_int(name, "n_up_projection", self.n_up_projection, minimum=1)
        check_choice(name, "task_specific_matrix_type", self.task_specific_matrix_type, TASK_SPECIFIC_MATRIX_TYPES)
        check_number(name, "weights_sharpness", self.weights_sharpness, minimum=0, min_open=True)


register_config("mtl_lora", MTLLoRAConfig())
