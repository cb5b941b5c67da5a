"""HRA (Yuan et al., 2024, "Bridging The Gap between Low-rank and Orthogonal Adaptation via
Householder Reflection Adaptation") on linear layers.

The pretrained weight is multiplied on the input side by a chain of ``r`` Householder
reflections (PEFT's convention)::

    W' = W H,     H = H_1 H_2 ⋯ H_r,     H_i = I − 2 u_i u_iᵀ / ‖u_i‖²,     u_i ∈ R^{d_in}
    y  = x W'ᵀ + b = (x Hᵀ) Wᵀ + b

With ``apply_GS`` the vectors are orthonormalised first (Gram–Schmidt; here by a QR
decomposition, whose column signs do not matter), and the chain becomes the single reflection
across their span, ``H = I − 2 Q Qᵀ``. The parameters are the columns of ``hra_u ∈ R^{d_in×r}``
(PEFT's name). The default initialisation repeats each random column once (``u_{2j−1} = u_{2j}``),
so the reflections cancel in pairs and the adapter starts as the identity (``r`` must be even).

Compact WY form (Schreiber & Van Loan, 1989). With ``Y`` the normalised vectors, the product is
``H = I − Y T Yᵀ`` for the upper triangular ``T = (½ I + striu(YᵀY))⁻¹`` (``T = 2I`` with
``apply_GS``). Hence

* alone, the layer runs on the reflected input: ``x Hᵀ = x − ((x Y) Tᵀ) Yᵀ`` — ``O(d_in·r)`` per
  token, where forming ``W H`` costs ``O(d_out·d_in²)``;
* in a composition, the delta ``ΔW = W H − W = −(W Y) T Yᵀ`` has rank ``r`` and its output is
  ``−((x Y) Tᵀ)(W Y)ᵀ``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn

from .. import logging
from ..configuration.base import register_config
from ..configuration.validation import check_bool, check_int
from ..configuration.weight_transforms import WeightTargetingConfig
from .caching import reuse_while_unchanged
from .registry import PeftMapping
from .weight_transform import WeightTransform, register_weight_transform

logger = logging.get_logger(__name__)

__all__ = ["HRAConfig", "HRA", "build_hra"]


@dataclasses.dataclass(eq=False)
class HRAConfig(WeightTargetingConfig):
    """HRA (Yuan et al., 2024, "Bridging The Gap between Low-rank and Orthogonal Adaptation via
    Householder Reflection Adaptation"): the weight is multiplied by a chain of ``r`` Householder
    reflections, ``W' = W H_1 ⋯ H_r``, ``H_i = I − 2 u_i u_iᵀ / ‖u_i‖²``.

    Args:
        r: number of reflections; even for the default symmetric initialisation (reflections in
            equal pairs, so the chain starts as the identity).
        apply_GS: orthogonalise ``u_1 … u_r`` first (Gram–Schmidt); then ``W' = W (I − 2 U Uᵀ)``.
        init_weights: True: symmetric pairs (identity at start; odd ``r`` falls back to random
            with a warning); False: random.

    Example::

        >>> model.add_adapter("hra", config=HRAConfig(r=8), set_active=True)
    """

    architecture: ClassVar[str] = "hra"

    r: int = 8
    apply_GS: bool = False
    init_weights: bool = True

    def __post_init__(self):
        """Every value check of HRA, in one place."""
        super().__post_init__()
        name = type(self).__name__
        check_int(name, "r", self.r, minimum=1)  # the number of reflections
        check_bool(name, "apply_GS", self.apply_GS)
        check_bool(name, "init_weights", self.init_weights)



class HRA(WeightTransform):
    """One HRA adapter on one linear layer (see the module docstring).

    Example::

        >>> hra = HRA(64, 64, HRAConfig(r=4), r=4)
        >>> torch.allclose(hra.reflection_matrix(), torch.eye(64), atol=1e-6)   # pairs cancel
        True
    """

    method = "hra"
    needs_weight = True

    def __init__(self, in_features: int, out_features: int, config: HRAConfig, r: int, out_slices=None):
        super().__init__(in_features, out_features, out_slices)
        self.r = r
        self.apply_GS = config.apply_GS
        self.hra_u = nn.Parameter(torch.empty(in_features, r))
        with torch.no_grad():
            if config.init_weights and r % 2 == 0:
                half = torch.empty(in_features, r // 2)
                nn.init.kaiming_uniform_(half, a=math.sqrt(5))
                self.hra_u.copy_(half.repeat_interleave(2, dim=1))
            else:
                if config.init_weights:
                    logger.warning(f"HRA r={r} is odd: the symmetric (identity) initialisation needs an even r; using random.")
                nn.init.kaiming_uniform_(self.hra_u, a=math.sqrt(5))

    def wy_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Y, T)`` with ``H = I − Y T Yᵀ`` (see the module docstring); inference reuses them
        while ``hra_u`` is unchanged."""
        return reuse_while_unchanged(self.__dict__.setdefault("_kept", {}), "wy", [self.hra_u], self._compute_wy_factors)

    def _compute_wy_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.apply_GS:
            q, _ = torch.linalg.qr(self.hra_u)
            return q, 2 * torch.eye(self.r, device=q.device, dtype=q.dtype)
        y = self.hra_u / self.hra_u.norm(dim=0)
        eye = torch.eye(self.r, device=y.device, dtype=y.dtype)
        inverse = torch.triu(y.t() @ y, diagonal=1) + 0.5 * eye
        return y, torch.linalg.solve_triangular(inverse, eye, upper=True)

    def reflection_matrix(self) -> torch.Tensor:
        """``H = H_1 ⋯ H_r``, ``(d_in, d_in)``."""
        y, t = self.wy_factors()
        return torch.eye(self.in_features, device=y.device, dtype=y.dtype) - y @ t @ y.t()

    def reflect(self, x: torch.Tensor) -> torch.Tensor:
        """``x Hᵀ``."""
        y, t = self.wy_factors()
        y, t = y.to(x.dtype), t.to(x.dtype)
        return x - ((x @ y) @ t.t()) @ y.t()

    def delta_weight(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``W H − W = −(W Y) T Yᵀ`` for the covered rows ``weight``."""
        y, t = self.wy_factors()
        y, t = y.to(weight.dtype), t.to(weight.dtype)
        return -((weight @ y) @ t) @ y.t()

    def delta_output(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        y, t = self.wy_factors()
        y, t = y.to(x.dtype), t.to(x.dtype)
        return -(((x @ y) @ t.t()) @ (weight.to(x.dtype) @ y).t())

    def forward_single(self, host, x: torch.Tensor) -> torch.Tensor:
        return host.base_forward(self.reflect(x))

    def extra_repr(self) -> str:
        return f"r={self.r}, apply_GS={self.apply_GS}"


def build_hra(config: HRAConfig, in_features: int, out_features: int, target, path_prefix: str) -> HRA:
    """The HRA module of ``config`` for one targeted layer.

    Example::

        >>> build_hra(HRAConfig(r=4), 64, 64, target, "bert.")
    """
    return HRA(in_features, out_features, config, config.r, target.out_slices)


def _hra_from_peft(meta: dict, targeting: dict) -> HRAConfig:
    return HRAConfig(r=meta.get("r", 8), apply_GS=bool(meta.get("apply_GS")), init_weights=meta.get("init_weights", True), **targeting)


def _hra_to_peft(config: HRAConfig, hosts: list, name: str) -> dict:
    return {"r": config.r, "init_weights": config.init_weights, "apply_GS": config.apply_GS}


register_config("hra", HRAConfig())
register_weight_transform("hra", "HRA", build_hra, PeftMapping(
    "HRA", _hra_from_peft, _hra_to_peft, parameters=("hra_u",),
    fields={"HRA": (("r", "apply_GS", "init_weights", "bias", *PeftMapping.TARGETING_FIELDS), (), {})},
))
