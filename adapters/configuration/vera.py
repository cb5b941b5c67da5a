"""VeRA and DVoRA configs (AdapterHub's ``VeraConfig`` / ``DvoRAConfig`` with PEFT's projection
knobs). The math is in :mod:`adapters.methods.vera`.

AdapterHub writes both as a LoRA config (``"architecture": "lora"``) whose ``vera_d`` / ``vera_b``
are set; :class:`~adapters.LoRAConfig` hands such a dict to these classes, and they write it the
same way, so checkpoints go both ways.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional, Union

from ..errors import AdapterConfigError
from .base import register_config
from .lora import LoRAConfig
from .validation import check_bool, check_choice, check_int, check_number, config_error

__all__ = ["VeraConfig", "DvoRAConfig"]

#: how the shared random projections are drawn (AdapterHub's ``init_weights`` values for VeRA)
VERA_INITS = ("vera", "lora", "bert", "ia3")


@dataclasses.dataclass(eq=False)
class VeraConfig(LoRAConfig):
    """VeRA (Kopiczko et al., 2023, "VeRA: Vector-based Random Matrix Adaptation"): one pair of
    frozen random projections ``A ∈ R^{r×d_in}``, ``B ∈ R^{d_out×r}`` shared by every adapted layer,
    and per layer two trainable scaling vectors ``d ∈ R^r``, ``b ∈ R^{d_out}``::

        ΔW = s · diag(b) B diag(d) A,     s = alpha / r

    Placement and the LoRA knobs (``selfattn_lora``, ``attn_matrices``, ``target_modules``,
    ``dropout``, ``use_gating``, ``bias``, ``leave_out``, ...) are :class:`~adapters.LoRAConfig`'s.

    Args:
        r: rank of the shared projections (a positive integer).
        vera_d: the initial value of every entry of ``d`` (AdapterHub's ``vera_d``; PEFT's
            ``d_initial``).
        vera_b: the initial value of every entry of ``b``; 0 (the default) makes the adapter start
            as the identity.
        init_weights: how the shared projections are drawn: "vera" (Kaiming-uniform ``A`` and
            ``B``, the paper's), "lora" (Kaiming ``A``, zero ``B``: the update stays 0), "bert"
            (both N(0, 0.02)) or "ia3" (ones).
        init_weights_seed: the seed the projections are drawn with (AdapterHub's knob); None:
            ``projection_prng_key``.
        projection_prng_key: the seed used when ``init_weights_seed`` is None (PEFT's knob), so
            the projections can always be rebuilt from the config.
        save_projection: also write the projections into checkpoints (once per adapter), so
            that they load exactly even where the random generator differs; False: rebuilt from
            the seed on load.
        use_dora: DVoRA: the updated weight is renormalised per output row and rescaled by a
            learned magnitude (see :class:`DvoRAConfig`).
        dtype: AdapterHub's field, read and written; the adapter is created in the adapted
            layer's dtype, as LoRA's is.

    Example::

        >>> model.add_adapter("vera", config=VeraConfig(r=16, init_weights_seed=0))
        >>> model.add_adapter("vera_all", config="vera[target_modules=all-linear]")
    """

    architecture: ClassVar[str] = "vera"

    r: int = 8
    init_weights: Union[str, bool] = "vera"
    vera_d: float = 0.1
    vera_b: float = 0.0
    projection_prng_key: int = 0
    save_projection: bool = True

    _foreign_defaults: ClassVar[dict] = {}

    def __post_init__(self):
        """LoRA's checks (with VeRA's projection inits), then VeRA's own."""
        name = type(self).__name__
        init = check_choice(name, "init_weights", self.init_weights, VERA_INITS)
        if self.composition_mode != "add":
            raise config_error(name, "composition_mode", self.composition_mode, "'add' (VeRA adds its update to the output)")
        object.__setattr__(self, "init_weights", "lora")  # LoRA's checks know LoRA's inits only
        try:
            super().__post_init__()
        finally:
            object.__setattr__(self, "init_weights", init)
        for field in ("vera_d", "vera_b"):
            check_number(name, field, getattr(self, field))
        check_int(name, "projection_prng_key", self.projection_prng_key, minimum=0, maximum=2**63 - 1)
        check_bool(name, "save_projection", self.save_projection)
        if self.rank_pattern:
            raise config_error(
                name, "rank_pattern", self.rank_pattern, "{} (every layer uses the same shared projections, of rank r)"
            )
        for field in ("feedforward_modules", "loftq_config"):
            if getattr(self, field) is not None:
                raise config_error(name, field, getattr(self, field), "None (a LoRA / (IA)³ option VeRA does not have)")

    @classmethod
    def _from_fields(cls, data: dict, checkpoint: Optional[str] = None) -> "VeraConfig":
        """A checkpoint AdapterHub wrote (no ``projection_prng_key``) holds no projections:
        AdapterHub draws them again on load, from ``init_weights_seed`` — or, when that is unset
        (or 0, which AdapterHub ignores), from the unseeded global generator, so that no library
        can rebuild the matrices its vectors were trained with. Such a checkpoint is refused."""
        written_by_adapterhub = checkpoint is not None and "projection_prng_key" not in data
        if written_by_adapterhub:
            if not data.get("init_weights_seed"):
                raise AdapterConfigError(
                    f"{checkpoint}: this VeRA adapter was saved by AdapterHub without init_weights_seed "
                    f"(init_weights_seed={data.get('init_weights_seed')!r}). AdapterHub does not save VeRA's shared "
                    f"random projections and drew them from the unseeded random generator, so the matrices its "
                    f"vectors were trained with cannot be rebuilt and the adapter would compute something else. "
                    f"Train with init_weights_seed set (a non-zero int) in AdapterHub, or with this library, which "
                    f"saves the projections (save_projection=True)."
                )
            data = {**data, "save_projection": False}
        if cls is VeraConfig and data.get("use_dora"):
            cls = DvoRAConfig
        return super(LoRAConfig, cls)._from_fields(data, checkpoint)

    def to_dict(self) -> dict[str, Any]:
        """AdapterHub's layout: a LoRA config with ``vera_d`` / ``vera_b`` set.

        Example::

            >>> VeraConfig().to_dict()["architecture"], VeraConfig().to_dict()["vera_d"]
            ('lora', 0.1)
        """
        return {**super().to_dict(), "architecture": LoRAConfig.architecture}


@dataclasses.dataclass(eq=False)
class DvoRAConfig(VeraConfig):
    """DVoRA: VeRA's update with DoRA's decomposition (Liu et al., 2024): the updated weight
    ``W + ΔW`` is renormalised per output row and rescaled by a learned magnitude ``m``,
    initialised to the row norms of ``W`` (so the adapter starts as the identity)::

        W' = m ⊙ (W + ΔW) / ‖W + ΔW‖_row,     ΔW = s · diag(b) B diag(d) A

    Example::

        >>> model.add_adapter("dvora", config=DvoRAConfig(r=8, init_weights_seed=0))
    """

    use_dora: bool = True


register_config("vera", VeraConfig())
register_config("dvora", DvoRAConfig())
