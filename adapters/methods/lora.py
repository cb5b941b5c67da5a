"""LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") and (IA)³ (Liu et
al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning") on linear layers.

A linear layer ``y = x Wᵀ + b`` gets, per adapter, either a low-rank additive update or a learned
output scaling:

    add   (LoRA):   y = x Wᵀ + b + s · dropout(x) Aᵀ Bᵀ,   A ∈ R^{r×d_in}, B ∈ R^{d_out×r},  s = α/r
    scale ((IA)³):  y = (x Wᵀ + b) ⊙ (s · l),             l ∈ R^{d_out}

(``s = α/√r`` with rsLoRA; an optional gate ``g = mean_t σ(x_t W_g)`` multiplies the LoRA term.)
Both fold into the weight: ``W' = W + s·B A`` and ``W' = diag(s·l) W, b' = s·l ⊙ b``.

Composition on one layer, with ``o`` the output so far:

* ``Stack(a, b)``: apply in order: ``o + Δ_a(x) + Δ_b(x)`` — deltas add on the same weight,
  ``W + ΔW_a + ΔW_b`` (the predecessor fed a's delta into b instead); scalings multiply.
* ``Average(a, b, weights)``: ``o + Σ_i w_i (o_i − o)``: the weighted mean of the deltas (for
  (IA)³, of the scaling vectors).
* ``Parallel`` / ``BatchSplit`` / ``Split``: batch rows / sequence positions go to their child.
* ``Fuse``: not defined for weight updates (an error on activation).

The host is the ``nn.Linear`` itself, swapped to a subclass with a ``loras`` ModuleDict, so
state-dict keys read ``...attention.self.query.loras.<name>.lora_A`` as in AdapterHub.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..composition import Average, BatchSplit, Parallel, Split, Stack
from ..configuration.lora import LoRAConfig
from ..context import ForwardContext
from .base import ComposableLayer

__all__ = ["LoRA", "LoRALinear", "LoRAState"]


class LoRAState(NamedTuple):
    """``layer_input`` x, ``output`` o (the layer output with the adapters applied so far), and
    the last adapter applied."""

    layer_input: torch.Tensor
    output: torch.Tensor
    last: str | None = None


class LoRA(nn.Module):
    """The parameters of one LoRA / (IA)³ adapter on one linear layer (see the module docstring).

    Args:
        in_features / out_features: the linear layer's sizes.
        config: the :class:`~adapters.LoRAConfig`.
        r, alpha: rank and alpha for this layer (after ``rank_pattern`` / ``alpha_pattern``).

    Example::

        >>> lora = LoRA(64, 64, LoRAConfig(), r=8, alpha=16)
        >>> lora.delta_weight().shape
        torch.Size([64, 64])
    """

    def __init__(self, in_features: int, out_features: int, config: LoRAConfig, r: int, alpha: float):
        super().__init__()
        self.composition_mode = config.composition_mode
        self.r = r
        self.scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if self.composition_mode == "add":
            self.lora_A = nn.Parameter(torch.zeros(r, in_features))
            self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        else:
            self.lora_B = nn.Parameter(torch.zeros(out_features, 1))
        if config.use_gating:
            self.gate = nn.Linear(in_features, 1)
            nn.init.normal_(self.gate.weight, std=0.02)
            nn.init.zeros_(self.gate.bias)
        self._init_weights(config.init_weights)

    @torch.no_grad()
    def _init_weights(self, init) -> None:
        has_a = hasattr(self, "lora_A")
        if init == "lora" and has_a:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)
        elif init == "gaussian" and has_a:
            nn.init.normal_(self.lora_A, std=1.0 / self.r)
            nn.init.zeros_(self.lora_B)
        elif init == "bert":
            for param in self._parameters.values():
                nn.init.normal_(param, std=0.02)
        elif init == "ia3" or not has_a and init in ("lora", "gaussian"):
            for param in self._parameters.values():
                nn.init.ones_(param)
        else:  # False: random, not the identity
            if has_a:
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))

    def _gate(self, x: torch.Tensor):
        if not hasattr(self, "gate"):
            return None
        gate = torch.sigmoid(self.gate(x))
        return gate.mean(dim=1, keepdim=True) if gate.dim() == 3 else gate

    def apply_to(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The layer output ``output`` with this adapter applied, for layer input ``x``."""
        if self.composition_mode == "scale":
            factor = self.lora_B.view(-1) * self.scaling
            gate = self._gate(x)
            return output * (factor if gate is None else 1 + gate * (factor - 1))
        delta = (self.dropout(x) @ self.lora_A.t()) @ self.lora_B.t()
        gate = self._gate(x)
        delta = delta * self.scaling if gate is None else delta * (self.scaling * gate)
        return output + delta

    def delta_weight(self) -> torch.Tensor:
        """``s·B A`` (add) or the scaling vector ``s·l`` (scale)."""
        if self.composition_mode == "scale":
            return self.lora_B.view(-1) * self.scaling
        return (self.lora_B @ self.lora_A) * self.scaling


class LoRALinear(ComposableLayer):
    """Mixin for an ``nn.Linear`` that hosts LoRA / (IA)³ adapters (swapped in by class).

    Example::

        >>> query = model.encoder.layer[0].attention.self.query
        >>> query.loras["a"].lora_A.shape
        torch.Size([8, 32])
    """

    method = "lora"
    supported_blocks = (Stack, Parallel, Split, BatchSplit, Average)
    BATCH_FIELDS = ("layer_input", "output")
    SEQUENCE_FIELDS = ("layer_input", "output")

    def init_adapter_layer(self, layer_idx: int, location: str) -> None:
        self._init_composable(layer_idx, location)
        self.loras = nn.ModuleDict()
        self.__dict__["merged"] = []  # names merged into the weight, in order

    def adapter_names(self) -> set[str]:
        return set(self.loras.keys()) - set(self.merged)

    @property
    def adapters(self) -> nn.ModuleDict:
        """The adapters of this host (the common name used by the model API)."""
        return self.loras

    def add_lora(self, name: str, config: LoRAConfig, r: int, alpha: float) -> None:
        with torch.random.fork_rng(enabled=config.init_weights_seed is not None):
            if config.init_weights_seed is not None:
                torch.manual_seed(config.init_weights_seed)
            self.loras[name] = LoRA(self.in_features, self.out_features, config, r, alpha)
        self._invalidate_setup_cache()

    def delete_adapter(self, name: str) -> None:
        if name in self.merged:
            self.unmerge(name)
        if name in self.loras:
            del self.loras[name]
            self._invalidate_setup_cache()

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = super().forward(x)
        setup = self.active_setup()
        if setup is None:
            return output
        return self.compose(setup, LoRAState(x, output)).output

    def compose_single(self, name: str, state: LoRAState) -> LoRAState:
        lora = self.loras[name]
        output = lora.apply_to(state.layer_input, state.output)
        context = ForwardContext.get_context()
        if context is not None and context.output_adapter_gating_scores and hasattr(lora, "gate"):
            scores = context.adapter_gating_scores.setdefault(name, {}).setdefault(self.layer_idx, {})
            scores[self.location] = lora._gate(state.layer_input).detach()
        return state._replace(output=output, last=name)

    def mean(self, states, weights, start: LoRAState) -> LoRAState:
        output = start.output
        for state, weight in zip(states, weights):
            output = output + weight * (state.output - start.output)
        return states[-1]._replace(output=output)

    # -- merging ---------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, name: str) -> None:
        """Fold adapter ``name`` into the weight (and bias, for (IA)³)."""
        lora = self.loras[name]
        delta = lora.delta_weight().to(self.weight.dtype)
        if lora.composition_mode == "scale":
            self.weight.mul_(delta.unsqueeze(1))
            if self.bias is not None:
                self.bias.mul_(delta)
        else:
            self.weight.add_(delta)
        self.merged.append(name)
        self._invalidate_setup_cache()

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        """Take adapter ``name`` out of the weight again."""
        lora = self.loras[name]
        delta = lora.delta_weight().to(self.weight.dtype)
        if lora.composition_mode == "scale":
            self.weight.div_(delta.unsqueeze(1))
            if self.bias is not None:
                self.bias.div_(delta)
        else:
            self.weight.sub_(delta)
        self.merged.remove(name)
        self._invalidate_setup_cache()
