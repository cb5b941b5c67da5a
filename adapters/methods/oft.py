"""OFT (Qiu et al., 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning"; Liu et
al., 2024, "Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization" for the
block-diagonal form used by PEFT) on linear layers.

The layer's input is rotated by a block-diagonal orthogonal matrix before the pretrained weight
acts on it::

    y = (x R) Wᵀ + b = x (W Rᵀ)ᵀ + b,      R = diag(R_1, …, R_n),  R_k ∈ R^{s×s},  n·s = d_in

(PEFT's convention: ``x`` is rotated as a row vector, the merged weight is ``W Rᵀ``). Each block
comes from a skew-symmetric ``Q_k = U_k − U_kᵀ`` (``U_k`` strictly upper triangular; its
``s(s−1)/2`` entries, row by row, are the adapter's parameters ``oft_R[k]``) by the Cayley
transform. Exactly, as PEFT solves it: ``R_k = (I − Q_k)(I + Q_k)⁻¹``. With
``use_cayley_neumann`` (default) the inverse is replaced by PEFT's truncated Neumann series of
``t`` terms::

    R_k = I + 2 Σ_{i=1}^{m−1} Q_k^i + Q_k^m,   m = max(3, t−1)    (t ≥ 3;  t = 2: I + 2Q_k;  t = 1: I)

which is orthogonal up to ``O(‖Q_k‖^{t})``. It is evaluated in Horner form,
``R_k = I + 2 Q_k (I + Q_k (⋯ (I + Q_k/2)))`` with ``m − 1`` nested factors: one fused
``I + a·Q T`` product per power instead of a product, a scaling and a sum. ``block_share``: one ``Q`` for all blocks. COFT
(``coft``): before use, each ``Q_k`` is projected onto the Frobenius ball of radius
``eps/√n`` (written back into the parameter, as PEFT does), keeping ``R`` near the identity.
Module dropout (training): a random fraction ``p`` of the blocks is replaced by ``I``.

Zero parameters give ``R = I`` (the default initialisation). The merged weight is ``W Rᵀ``; its
delta ``ΔW = W (Rᵀ − I)`` enters compositions like any other (see
:mod:`adapters.methods.weight_transform`), with output delta ``(x R − x) Wᵀ``.
The parameter keeps PEFT's name, ``oft_R`` (PEFT's file key ``oft_R.weight``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import logging
from ..configuration.weight_transforms import OFTConfig
from .caching import reuse_while_unchanged
from ..errors import AdapterConfigError
from .registry import PeftMapping
from .weight_transform import WeightTransform, register_weight_transform

logger = logging.get_logger(__name__)

__all__ = ["OFT", "nearest_divisor"]


def nearest_divisor(dimension: int, wanted: int) -> int:
    """The divisor of ``dimension`` closest to ``wanted`` (ties: the smaller), ``dimension`` if
    ``wanted`` exceeds it — PEFT's adjustment of an OFT block size or block count that does not fit.

    Example::

        >>> nearest_divisor(120, 16), nearest_divisor(64, 100)
        (15, 64)
    """
    if wanted >= dimension:
        return dimension
    higher = wanted
    while higher <= dimension and dimension % higher:
        higher += 1
    lower = wanted
    while lower > 1 and dimension % lower:
        lower -= 1
    return lower if wanted - lower <= higher - wanted else higher


class OFT(WeightTransform):
    """One OFT adapter on one linear layer (see the module docstring).

    Example::

        >>> oft = OFT(64, 64, OFTConfig(oft_block_size=16))
        >>> oft.oft_R.shape            # 4 blocks of 16·15/2 parameters
        torch.Size([4, 120])
    """

    method = "oft"
    needs_weight = True

    def __init__(self, in_features: int, out_features: int, config: OFTConfig, out_slices=None):
        super().__init__(in_features, out_features, out_slices, config.module_dropout)
        if config.r:
            blocks = config.r
            if in_features % blocks:
                blocks = nearest_divisor(in_features, blocks)
                logger.warning(f"OFT r={config.r} does not divide in_features={in_features}; using r={blocks}.")
            size = in_features // blocks
        else:
            size = config.oft_block_size
            if in_features % size:
                size = nearest_divisor(in_features, size)
                logger.warning(
                    f"OFT oft_block_size={config.oft_block_size} does not divide in_features={in_features}; using {size}."
                )
            blocks = in_features // size
        self.r, self.block_size = blocks, size
        self.block_share = config.block_share
        self.coft, self.eps = config.coft, config.eps
        self.neumann_terms = config.num_cayley_neumann_terms if config.use_cayley_neumann else None
        self.oft_R = nn.Parameter(torch.zeros(1 if self.block_share else blocks, size * (size - 1) // 2))
        rows, cols = torch.triu_indices(size, size, 1)
        self.register_buffer("upper_rows", rows, persistent=False)
        self.register_buffer("upper_cols", cols, persistent=False)
        if not config.init_weights:
            with torch.no_grad():
                nn.init.normal_(self.oft_R, std=0.1)

    # -- the rotation --------------------------------------------------------------------------------
    def skew(self, params: torch.Tensor) -> torch.Tensor:
        """``Q = U − Uᵀ`` per block, ``U`` strictly upper triangular holding ``params`` row by row."""
        upper = params.new_zeros(params.shape[0], self.block_size, self.block_size)
        upper[:, self.upper_rows, self.upper_cols] = params
        return upper - upper.transpose(1, 2)

    @torch.no_grad()
    def _project_coft(self) -> None:
        """COFT: scale each block's ``Q`` into the Frobenius ball of radius ``eps/√blocks``."""
        radius = self.eps / math.sqrt(self.oft_R.shape[0])
        norms = math.sqrt(2.0) * self.oft_R.norm(dim=1, keepdim=True)  # ‖Q_k‖_F (each entry appears twice)
        factor = torch.where(norms <= radius, torch.ones_like(norms), radius / norms.clamp_min(1e-30))
        self.oft_R.mul_(factor)

    def blocks(self) -> torch.Tensor:
        """The orthogonal blocks ``R_k``, ``(n, s, s)`` (``n = 1`` with ``block_share``, before repetition)."""
        if self.coft:
            self._project_coft()
        q = self.skew(self.oft_R)
        eye = torch.eye(self.block_size, device=q.device, dtype=q.dtype).expand_as(q)
        terms = self.neumann_terms
        if terms is None:  # X (I + Q) = I − Q
            return torch.linalg.solve(eye + q, eye - q, left=False)
        if terms == 1:
            return eye.clone()
        rotation = eye + 2 * q
        if terms == 2:
            return rotation
        inner = torch.add(eye, q, alpha=0.5)  # I + Q/2, the innermost factor
        for _ in range(max(3, terms - 1) - 2):
            inner = torch.baddbmm(eye, q, inner)  # I + Q·inner
        return torch.baddbmm(eye, q, inner, alpha=2.0)

    def _all_blocks(self) -> torch.Tensor:
        # inference reuses the blocks while oft_R is unchanged (every decoding step would rebuild them)
        rotation = reuse_while_unchanged(self.__dict__.setdefault("_kept", {}), "blocks", [self.oft_R], self.blocks)
        if self.block_share:
            rotation = rotation.expand(self.r, -1, -1)
        if self.training and self.module_dropout > 0 and self.r > 1:  # multiplicative dropout
            dropped = torch.randperm(self.r, device=rotation.device)[: int(self.module_dropout * self.r)]
            keep = torch.ones(self.r, 1, 1, device=rotation.device, dtype=rotation.dtype)
            keep[dropped] = 0
            eye = torch.eye(self.block_size, device=rotation.device, dtype=rotation.dtype)
            rotation = keep * rotation + (1 - keep) * eye
        return rotation

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``x R``: each block of ``s`` input features times its ``R_k``."""
        rotation = self._all_blocks().to(x.dtype)
        blocks = x.reshape(*x.shape[:-1], self.r, self.block_size)
        return torch.einsum("...nk,nkc->...nc", blocks, rotation).reshape(x.shape)

    # -- the host's protocol -------------------------------------------------------------------------
    def skipped(self) -> bool:
        return False  # module dropout acts per block, inside the rotation

    def delta_weight(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``W Rᵀ − W`` for the covered rows ``weight``."""
        rotation = self._all_blocks().to(weight.dtype)
        blocks = weight.reshape(weight.shape[0], self.r, self.block_size)
        rotated = torch.einsum("onk,nck->onc", blocks, rotation).reshape(weight.shape)
        return rotated - weight

    def delta_output(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.rotate(x) - x, weight.to(x.dtype))

    def forward_single(self, host, x: torch.Tensor) -> torch.Tensor:
        return host.base_forward(self.rotate(x))

    def extra_repr(self) -> str:
        return f"blocks={self.r}, block_size={self.block_size}, block_share={self.block_share}, coft={self.coft}"


def build_oft(config: OFTConfig, in_features: int, out_features: int, target, path_prefix: str) -> OFT:
    """The OFT module of ``config`` for one targeted layer.

    Example::

        >>> build_oft(OFTConfig(oft_block_size=8), 64, 64, target, "bert.")
    """
    return OFT(in_features, out_features, config, target.out_slices)


def _oft_from_peft(meta: dict, targeting: dict) -> OFTConfig:
    if "oft_block_size" not in meta:
        raise AdapterConfigError("This OFT checkpoint predates PEFT 0.14 (no oft_block_size); retrain it with a newer PEFT.")
    return OFTConfig(
        r=meta.get("r", 0), oft_block_size=meta.get("oft_block_size", 32), module_dropout=meta.get("module_dropout") or 0.0,
        coft=bool(meta.get("coft")), eps=meta.get("eps", 6e-5), block_share=bool(meta.get("block_share")),
        use_cayley_neumann=meta.get("use_cayley_neumann", True), num_cayley_neumann_terms=meta.get("num_cayley_neumann_terms", 5),
        init_weights=meta.get("init_weights", True), **targeting,
    )


def _oft_to_peft(config: OFTConfig, hosts: list, name: str) -> dict:
    fields = {f: getattr(config, f) for f in (
        "r", "oft_block_size", "module_dropout", "coft", "eps", "block_share", "use_cayley_neumann",
        "num_cayley_neumann_terms", "init_weights",
    )}
    # PEFT wants exactly one of the two non-zero: write the sizes actually used
    blocks, sizes = {h.loras[name].r for h in hosts}, {h.loras[name].block_size for h in hosts}
    if len(sizes) == 1:
        fields.update(r=0, oft_block_size=sizes.pop())
    elif len(blocks) == 1:
        fields.update(r=blocks.pop(), oft_block_size=0)
    return fields


register_weight_transform("oft", "OFT", build_oft, PeftMapping(
    "OFT", _oft_from_peft, _oft_to_peft, parameters=("oft_R",), weight_suffixed=("oft_R",),
    fields={"OFT": (
        ("r", "oft_block_size", "module_dropout", "init_weights", "coft", "eps", "block_share", "use_cayley_neumann",
         "num_cayley_neumann_terms", "bias", *PeftMapping.TARGETING_FIELDS),
        ("fan_in_fan_out",), {},
    )},
))
