"""LoHa (Hyeon-Woo et al., 2022, "FedPara: Low-Rank Hadamard Product for Communication-Efficient
Federated Learning"; LyCORIS) on linear layers.

The update of a linear layer ``y = x Wᵀ + b`` (``W ∈ R^{d_out×d_in}``) is the Hadamard
(element-wise) product of two rank-``r`` matrices::

    ΔW = (W1a W1b) ⊙ (W2a W2b) · α/r,     W1a, W2a ∈ R^{d_out×r},  W1b, W2b ∈ R^{r×d_in}
    y  = x (W + ΔW)ᵀ + b

so ``ΔW`` can reach rank ``r²`` with the parameters of two rank-``r`` LoRAs. Initialisation (PEFT's):
Kaiming-uniform ``W1a``, ``W1b``, ``W2a`` and ``W2b = 0``, so the adapter starts as the identity.

Regularisation in training: *rank dropout* multiplies each output row of ``ΔW`` by an
independent keep-mask ``m_o ~ Bernoulli(1 − p)``, rescaled by ``1/mean(m)``; *module dropout*
skips the whole adapter at a layer with probability ``p_module``.

Forward: alone, the layer runs one matmul with the folded weight ``x (W + ΔW)ᵀ + b`` (``ΔW`` has
no cheaper factored form: its rank is up to ``r²``); in a composition it adds ``x ΔWᵀ``.
Parameter names are PEFT's (``hada_w1_a`` …), under ``<layer>.loras.<name>``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..configuration.weight_transforms import LoHaConfig
from ..hooks.targeting import pattern_value
from .registry import PeftMapping
from .weight_transform import WeightTransform, lycoris_fields_from_peft, lycoris_fields_to_peft, register_weight_transform

__all__ = ["LoHa"]


class LoHa(WeightTransform):
    """One LoHa adapter on one linear layer (see the module docstring).

    Example::

        >>> loha = LoHa(64, 64, LoHaConfig(r=4), r=4, alpha=8)
        >>> loha.delta_weight().shape
        torch.Size([64, 64])
    """

    method = "loha"

    def __init__(self, in_features: int, out_features: int, config: LoHaConfig, r: int, alpha: float, out_slices=None):
        super().__init__(in_features, out_features, out_slices, config.module_dropout)
        self.r = r
        self.scaling = alpha / r
        self.rank_dropout = config.rank_dropout
        self.hada_w1_a = nn.Parameter(torch.empty(self.rows, r))
        self.hada_w1_b = nn.Parameter(torch.empty(r, in_features))
        self.hada_w2_a = nn.Parameter(torch.empty(self.rows, r))
        self.hada_w2_b = nn.Parameter(torch.empty(r, in_features))
        with torch.no_grad():
            for param in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b):
                nn.init.kaiming_uniform_(param, a=math.sqrt(5))
            if config.init_weights:
                nn.init.zeros_(self.hada_w2_b)  # one zero factor makes ΔW = 0

    def delta_weight(self, weight=None) -> torch.Tensor:
        """``(W1a W1b) ⊙ (W2a W2b) · α/r`` (with rank dropout in training)."""
        delta = (self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b) * self.scaling
        if self.training and self.rank_dropout > 0:
            delta = delta * self._row_dropout(self.rows, self.rank_dropout, True, delta).unsqueeze(1)
        return delta

    def delta_output(self, x: torch.Tensor, weight=None) -> torch.Tensor:
        return F.linear(x, self.delta_weight().to(x.dtype))

    def forward_single(self, host, x: torch.Tensor) -> torch.Tensor:
        if self.skipped():
            return host.base_forward(x)
        weight = host.weight_out_in
        return F.linear(x, weight + self.delta_weight().to(weight.dtype), host.bias)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}" + (f", out_slices={list(self.out_slices)}" if self.out_slices else "")


def build_loha(config: LoHaConfig, in_features: int, out_features: int, target, path_prefix: str) -> LoHa:
    """The LoHa module of ``config`` for one targeted layer (``rank_pattern`` / ``alpha_pattern`` applied).

    Example::

        >>> build_loha(LoHaConfig(r=4), 64, 64, target, "bert.")
    """
    r = pattern_value(config.rank_pattern, path_prefix + target.path, config.r)
    alpha = pattern_value(config.alpha_pattern, path_prefix + target.path, config.alpha)
    return LoHa(in_features, out_features, config, r, alpha, target.out_slices)


def _loha_from_peft(meta: dict, targeting: dict) -> LoHaConfig:
    return LoHaConfig(**lycoris_fields_from_peft(meta), **targeting)


def _loha_to_peft(config: LoHaConfig, hosts: list, name: str) -> dict:
    return lycoris_fields_to_peft(config)


register_weight_transform("loha", "LoHa", build_loha, PeftMapping(
    "LOHA", _loha_from_peft, _loha_to_peft, parameters=("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    # PEFT's LoHa has no "bias"; this library writes "none" for every weight transform
    fields={"LOHA": (
        ("r", "alpha", "rank_dropout", "module_dropout", "init_weights", "rank_pattern", "alpha_pattern", *PeftMapping.TARGETING_FIELDS),
        (), {"use_effective_conv2d": False, "bias": "none"},
    )},
))
