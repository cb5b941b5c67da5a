"""LoKr (Edalati et al., 2022, "KronA: Parameter Efficient Tuning with Kronecker Adapter"; LyCORIS)
on linear layers.

The update is a Kronecker product. Both sizes are split into two factors,
``d_out = a·b`` and ``d_in = c·d`` (:func:`factorize`: the divisor pair nearest the square root,
or the pair with first factor ``decompose_factor``)::

    ΔW = (W1 ⊗ W2) · α/r,     W1 ∈ R^{a×c},  W2 ∈ R^{b×d},   (W1 ⊗ W2)[(i,k),(j,l)] = W1[i,j] W2[k,l]

``W2`` is itself the rank-``r`` product ``W2a W2b`` (``W2a ∈ R^{b×r}``, ``W2b ∈ R^{r×d}``) when
``r < max(b, d)/2``; with ``decompose_both``, ``W1 = W1a W1b`` likewise when ``r < max(a, c)/2``.
Initialisation (PEFT's): ``W1 = 0`` (or ``W1a = 0``) and Kaiming-uniform ``W2`` (identity at
start); ``init_weights="lycoris"`` zeroes ``W2`` (``W2b``) instead.

Forward without forming ``ΔW``: with the input reshaped to ``X ∈ R^{c×d}`` per token,
``(W1 ⊗ W2) vec(X) = vec(W1 X W2ᵀ)``, which costs ``O(d_in·(a + b))`` per token instead of
``O(d_out·d_in)``. Rank dropout (training) multiplies each output row of ``ΔW`` by a keep-mask
(rescaled by ``1/mean`` with ``rank_dropout_scale``); module dropout skips the adapter.
Parameter names are PEFT's (``lokr_w1``, ``lokr_w2``, ``lokr_w1_a`` …).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..configuration.weight_transforms import LoKrConfig
from ..hooks.targeting import pattern_value
from .registry import PeftMapping
from .weight_transform import WeightTransform, lycoris_fields_from_peft, lycoris_fields_to_peft, register_weight_transform

__all__ = ["LoKr", "factorize"]


def factorize(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)`` with ``m · n = dimension`` (LyCORIS' rule, as in PEFT).

    With ``factor > 0`` dividing ``dimension``: ``(factor, dimension // factor)``. Otherwise ``m``
    is the largest divisor with ``m ≤ √dimension`` and ``m ≤ factor`` (any size for ``-1``).

    Example::

        >>> factorize(64), factorize(32), factorize(127), factorize(128, 4)
        ((8, 8), (4, 8), (1, 127), (4, 32))
    """
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    limit = dimension if factor == -1 else factor
    first = 1
    for candidate in range(2, math.isqrt(dimension) + 1):
        if candidate > limit:
            break
        if dimension % candidate == 0:
            first = candidate
    return first, dimension // first


class LoKr(WeightTransform):
    """One LoKr adapter on one linear layer (see the module docstring).

    Example::

        >>> lokr = LoKr(64, 32, LoKrConfig(r=4), r=4, alpha=8)
        >>> lokr.lokr_w1.shape, lokr.lokr_w2.shape        # 32 = 4·8, 64 = 8·8
        (torch.Size([4, 8]), torch.Size([8, 8]))
    """

    method = "lokr"

    def __init__(self, in_features: int, out_features: int, config: LoKrConfig, r: int, alpha: float, out_slices=None):
        super().__init__(in_features, out_features, out_slices, config.module_dropout)
        self.r = r
        self.scaling = alpha / r
        self.rank_dropout = config.rank_dropout
        self.rank_dropout_scale = config.rank_dropout_scale
        a, b = factorize(self.rows, config.decompose_factor)
        c, d = factorize(in_features, config.decompose_factor)
        self.shape = ((a, b), (c, d))
        if config.decompose_both and r < max(a, c) / 2:
            self.lokr_w1_a = nn.Parameter(torch.empty(a, r))
            self.lokr_w1_b = nn.Parameter(torch.empty(r, c))
        else:
            self.lokr_w1 = nn.Parameter(torch.empty(a, c))
        if r < max(b, d) / 2:
            self.lokr_w2_a = nn.Parameter(torch.empty(b, r))
            self.lokr_w2_b = nn.Parameter(torch.empty(r, d))
        else:
            self.lokr_w2 = nn.Parameter(torch.empty(b, d))
        self._init_weights(config.init_weights)

    @torch.no_grad()
    def _init_weights(self, init) -> None:
        for param in self.parameters():
            nn.init.kaiming_uniform_(param, a=math.sqrt(5))
        if init is True:  # W1 (its left factor) zero
            nn.init.zeros_(self._parameters.get("lokr_w1", self._parameters.get("lokr_w1_a")))
        elif init == "lycoris":  # W2 (its right factor) zero
            nn.init.zeros_(self._parameters.get("lokr_w2", self._parameters.get("lokr_w2_b")))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W1, W2)``, products formed where a factor is decomposed."""
        w1 = self.lokr_w1 if "lokr_w1" in self._parameters else self.lokr_w1_a @ self.lokr_w1_b
        w2 = self.lokr_w2 if "lokr_w2" in self._parameters else self.lokr_w2_a @ self.lokr_w2_b
        return w1, w2

    def _row_mask(self, reference: torch.Tensor):
        if self.training and self.rank_dropout > 0:
            return self._row_dropout(self.rows, self.rank_dropout, self.rank_dropout_scale, reference)
        return None

    def delta_weight(self, weight=None) -> torch.Tensor:
        """``(W1 ⊗ W2) · α/r`` (with rank dropout in training)."""
        w1, w2 = self.factors()
        delta = torch.kron(w1, w2) * self.scaling
        mask = self._row_mask(delta)
        return delta if mask is None else delta * mask.unsqueeze(1)

    def delta_output(self, x: torch.Tensor, weight=None) -> torch.Tensor:
        """``vec(W1 X W2ᵀ) · α/r`` per token, ``X`` the token's input as a ``c×d`` matrix, as two
        large GEMMs over all tokens (``X W2ᵀ``, then ``W1 ·``) rather than many tiny ones."""
        w1, w2 = self.factors()
        (a, b), (c, d) = self.shape
        tokens = x.reshape(-1, d)  # every token's c rows of d
        right = (tokens @ w2.t().to(x.dtype)).view(-1, c, b)  # X W2ᵀ per token
        both = right.transpose(1, 2).reshape(-1, c) @ w1.t().to(x.dtype)  # (W1 X W2ᵀ)ᵀ rows
        out = both.view(-1, b, a).transpose(1, 2).reshape(*x.shape[:-1], a * b) * self.scaling
        mask = self._row_mask(out)
        return out if mask is None else out * mask

    def extra_repr(self) -> str:
        return f"r={self.r}, shape={self.shape}, scaling={self.scaling:g}"


def build_lokr(config: LoKrConfig, in_features: int, out_features: int, target, path_prefix: str) -> LoKr:
    """The LoKr module of ``config`` for one targeted layer (``rank_pattern`` / ``alpha_pattern`` applied).

    Example::

        >>> build_lokr(LoKrConfig(r=4), 64, 64, target, "bert.")
    """
    r = pattern_value(config.rank_pattern, path_prefix + target.path, config.r)
    alpha = pattern_value(config.alpha_pattern, path_prefix + target.path, config.alpha)
    return LoKr(in_features, out_features, config, r, alpha, target.out_slices)


def _lokr_from_peft(meta: dict, targeting: dict) -> LoKrConfig:
    return LoKrConfig(
        **lycoris_fields_from_peft(meta), decompose_both=bool(meta.get("decompose_both")),
        decompose_factor=meta.get("decompose_factor", -1), rank_dropout_scale=bool(meta.get("rank_dropout_scale")), **targeting,
    )


def _lokr_to_peft(config: LoKrConfig, hosts: list, name: str) -> dict:
    fields = lycoris_fields_to_peft(config)
    fields.update(decompose_both=config.decompose_both, decompose_factor=config.decompose_factor, rank_dropout_scale=config.rank_dropout_scale)
    return fields


register_weight_transform("lokr", "LoKr", build_lokr, PeftMapping(
    "LOKR", _lokr_from_peft, _lokr_to_peft,
    parameters=("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
    # PEFT's LoKr has no "bias"; this library writes "none" for every weight transform
    fields={"LOKR": (
        ("r", "alpha", "rank_dropout", "module_dropout", "init_weights", "rank_pattern", "alpha_pattern", "decompose_both",
         "decompose_factor", "rank_dropout_scale", *PeftMapping.TARGETING_FIELDS),
        (), {"use_effective_conv2d": False, "bias": "none"},
    )},
))
