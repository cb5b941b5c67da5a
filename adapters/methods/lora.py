"""LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") and (IA)³ (Liu et
al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning") on linear layers.

A linear layer ``y = x Wᵀ + b`` gets, per adapter, either a low-rank additive update or a learned
output scaling:

    add   (LoRA):   y = x Wᵀ + b + s · dropout(x) Aᵀ Bᵀ,   A ∈ R^{r×d_in}, B ∈ R^{d_out×r},  s = α/r
    DoRA:           y = b + (m / ‖W + s·B A‖) ⊙ (x Wᵀ + s · dropout(x) Aᵀ Bᵀ),   m ∈ R^{d_out}
    scale ((IA)³):  y = (x Wᵀ + b) ⊙ (s · l),             l ∈ R^{d_out}
    input scale:    y = (x ⊙ s·l) Wᵀ + b,                 l ∈ R^{d_in}   (PEFT's feedforward_modules)

(``s = α/√r`` with rsLoRA; ``‖·‖`` is the norm of each output row, treated as a constant in the
backward pass as in the DoRA paper; an optional gate ``g = mean_t σ(x_t W_g)`` multiplies the LoRA
term.) All fold into the weight: ``W' = W + s·B A``, ``W' = (m/‖W + s·B A‖) ⊙ (W + s·B A)``,
``W' = diag(s·l) W, b' = s·l ⊙ b`` and ``W' = W diag(s·l)``.

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
    """``layer_input`` x, ``output`` o (the layer output with the adapters applied so far),
    ``base_output`` (the layer output without adapters) and the last adapter applied."""

    layer_input: torch.Tensor
    output: torch.Tensor
    base_output: torch.Tensor
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

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: LoRAConfig,
        r: int,
        alpha: float,
        base_weight: torch.Tensor | None = None,
        scale_input: bool = False,
    ):
        super().__init__()
        self.composition_mode = config.composition_mode
        self.r = r
        self.scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        self.scale_input = scale_input and self.composition_mode == "scale"
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if self.composition_mode == "add":
            self.lora_A = nn.Parameter(torch.zeros(r, in_features))
            self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        else:
            self.lora_B = nn.Parameter(torch.zeros(in_features if self.scale_input else out_features, 1))
        if config.use_gating:
            self.gate = nn.Linear(in_features, 1)
            nn.init.normal_(self.gate.weight, std=0.02)
            nn.init.zeros_(self.gate.bias)
        self._init_weights(config.init_weights)
        if config.use_dora:
            if base_weight is None:
                raise ValueError("DoRA needs the base weight to initialise its magnitude.")
            # m starts as the row norms of W, so the adapter starts as the identity
            self.lora_magnitude = nn.Parameter(torch.linalg.norm(base_weight.detach().float(), dim=1).to(base_weight.dtype))

    @property
    def use_dora(self) -> bool:
        return "lora_magnitude" in self._parameters

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
            for param in (self.lora_A, self.lora_B) if has_a else (self.lora_B,):
                nn.init.normal_(param, std=0.02)
        elif init == "ia3" or not has_a and init in ("lora", "gaussian"):
            nn.init.ones_(self.lora_B)
        else:  # False: random, not the identity
            if has_a:
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))

    def _gate(self, x: torch.Tensor):
        if not hasattr(self, "gate"):
            return None
        gate = torch.sigmoid(self.gate(x))
        return gate.mean(dim=1, keepdim=True) if gate.dim() == 3 else gate

    def apply_to(self, x: torch.Tensor, output: torch.Tensor, base_output: torch.Tensor, host) -> torch.Tensor:
        """The layer output ``output`` with this adapter applied, for layer input ``x``.

        ``base_output`` is the host's output without any adapter (DoRA rescales it).
        """
        gate = self._gate(x)
        if self.composition_mode == "scale":
            factor = self.lora_B.view(-1) * self.scaling
            if gate is not None:
                factor = 1 + gate * (factor - 1)
            if self.scale_input:  # (x ⊙ f) Wᵀ = x Wᵀ + (x ⊙ (f − 1)) Wᵀ
                return output + nn.functional.linear(x * (factor - 1), host.weight)
            return output * factor
        delta = (self.dropout(x) @ self.lora_A.t()) @ self.lora_B.t()
        delta = delta * self.scaling if gate is None else delta * (self.scaling * gate)
        if self.use_dora:
            magnitude_scale = self.lora_magnitude / self.weight_norm(host.weight)
            unbiased = base_output if host.bias is None else base_output - host.bias
            return output + (magnitude_scale - 1) * unbiased + magnitude_scale * delta
        return output + delta

    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """``‖W + s·B A‖`` per output row, detached (DoRA)."""
        with torch.no_grad():
            return torch.linalg.norm(weight + self.delta_weight().to(weight.dtype), dim=1)

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

    def add_lora(self, name: str, config: LoRAConfig, r: int, alpha: float, scale_input: bool = False) -> None:
        with torch.random.fork_rng(enabled=config.init_weights_seed is not None):
            if config.init_weights_seed is not None:
                torch.manual_seed(config.init_weights_seed)
            self.loras[name] = LoRA(self.in_features, self.out_features, config, r, alpha, self.weight, scale_input)
        self._invalidate_setup_cache()

    def delete_adapter(self, name: str) -> None:
        if name in self.merged:
            self.unmerge(name)
        if name in self.loras:
            del self.loras[name]
            self._invalidate_setup_cache()

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        setup = self.active_setup()
        if setup is None:
            return super().forward(x)
        if isinstance(setup, str) and self.loras[setup].scale_input:  # one input scaling: fold into x
            lora = self.loras[setup]
            gate = lora._gate(x)
            factor = lora.delta_weight() if gate is None else 1 + gate * (lora.delta_weight() - 1)
            return super().forward(x * factor)
        output = super().forward(x)
        return self.compose(setup, LoRAState(x, output, output)).output

    def compose_single(self, name: str, state: LoRAState) -> LoRAState:
        lora = self.loras[name]
        output = lora.apply_to(state.layer_input, state.output, state.base_output, self)
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
    def merged_weight(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W', b')``: the weight and bias with adapter ``name`` folded in (computed out of place)."""
        lora = self.loras[name]
        delta = lora.delta_weight().to(self.weight.dtype)
        if lora.composition_mode == "scale":
            if lora.scale_input:
                return self.weight * delta.unsqueeze(0), self.bias
            return self.weight * delta.unsqueeze(1), None if self.bias is None else self.bias * delta
        if lora.use_dora:
            combined = self.weight + delta
            return (lora.lora_magnitude / torch.linalg.norm(combined, dim=1)).unsqueeze(1) * combined, self.bias
        return self.weight + delta, self.bias

    @torch.no_grad()
    def merge(self, name: str) -> None:
        """Fold adapter ``name`` into the weight (and bias, for output-scaling (IA)³)."""
        lora = self.loras[name]
        if lora.use_dora:  # unmerging needs the norm the merge divided by
            lora.__dict__["_merged_norm"] = lora.weight_norm(self.weight)
        weight, bias = self.merged_weight(name)
        self.weight.copy_(weight)
        if bias is not None:
            self.bias.copy_(bias)
        self.merged.append(name)
        self._invalidate_setup_cache()

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        """Take adapter ``name`` out of the weight again."""
        lora = self.loras[name]
        delta = lora.delta_weight().to(self.weight.dtype)
        if lora.composition_mode == "scale":
            if lora.scale_input:
                self.weight.div_(delta.unsqueeze(0))
            else:
                self.weight.div_(delta.unsqueeze(1))
                if self.bias is not None:
                    self.bias.div_(delta)
        elif lora.use_dora:
            norm = lora.__dict__.pop("_merged_norm")
            self.weight.copy_(self.weight * (norm / lora.lora_magnitude).unsqueeze(1) - delta)
        else:
            self.weight.sub_(delta)
        self.merged.remove(name)
        self._invalidate_setup_cache()
