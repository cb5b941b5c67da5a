"""The base model's bitsandbytes 4-bit layers, as training through them needs them.

On a CPU with AVX512-BF16, bitsandbytes (0.49 and later) repacks a ``Linear4bit`` weight, in
place, at the layer's first pass in eval mode without gradients, for a kernel of its own: the
kernel rounds the activations to bfloat16 and records no gradient for the layer's input, in
training passes too, and ``dequantize_4bit`` does not read the repacked layout. After a single
evaluation, a QLoRA step would then train only the adapters above the last 4-bit layer the
gradient meets (each frozen 4-bit layer cuts it), without an error. bitsandbytes itself puts the
weight back in its portable layout before saving it or moving it to CUDA / XPU; here that also
happens before a pass whose input needs a gradient, and before a weight is read or rewritten
(bitsandbytes repacks it at the next inference pass). The repacking rounds the block scales to
bfloat16 (about 0.4% of each scale), which stays.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

__all__ = ["portable_4bit_layout", "keep_input_gradient", "keep_gradients_through_4bit_layers"]


def portable_4bit_layout(module: nn.Module) -> None:
    """Put a bitsandbytes 4-bit layer's weight back in bitsandbytes' portable layout, in place
    (nothing if it is in it already).

    Example::

        >>> portable_4bit_layout(model.model.layers[0].mlp.down_proj)
    """
    weight = module.weight
    if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
        # the inverse rewrites the state object in place: data and state change together
        data, state = sys.modules["bitsandbytes"].functional._convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
        if not state.nested and state.absmax.dim() == 2:
            # the repacking stored the scales as a transposed (in / blocksize, out) bfloat16 table,
            # and the inverse restores them only for double quantization: put them back in block
            # order (their bfloat16 rounding stays: bitsandbytes keeps no other copy)
            state.absmax = state.absmax.t().reshape(-1).to(torch.float32)
        weight.data, weight.quant_state = data, state


def keep_input_gradient(module: nn.Module, x: torch.Tensor) -> None:
    """Before ``module`` runs on ``x``: if it is a bitsandbytes 4-bit layer with a repacked weight
    and a gradient must pass through ``x`` (an adapter below, OFT's rotated input), the portable
    layout, whose kernel records it (nothing for any other layer).

    Example::

        >>> keep_input_gradient(layer, hidden_states)
    """
    if x.requires_grad and torch.is_grad_enabled():
        portable_4bit_layout(module)


def _guard(module: nn.Module, args: tuple, kwargs: dict) -> None:
    x = args[0] if args else kwargs.get("x", kwargs.get("input"))  # Linear4bit.forward(self, x)
    if isinstance(x, torch.Tensor):
        keep_input_gradient(module, x)


def keep_gradients_through_4bit_layers(model: nn.Module) -> int:
    """Guard every bitsandbytes 4-bit layer of ``model`` (a forward pre-hook running
    :func:`keep_input_gradient`, once per layer); returns how many layers it newly guards.
    ``adapters.init`` calls it, so any method trains on a 4-bit base after an evaluation.

    Example::

        >>> keep_gradients_through_4bit_layers(model)
        14
    """
    bnb = sys.modules.get("bitsandbytes")  # a bitsandbytes layer exists only if it was imported
    if bnb is None:
        return 0
    guarded = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and not module.__dict__.get("_adapters_gradient_guard"):
            module.register_forward_pre_hook(_guard, with_kwargs=True)
            module.__dict__["_adapters_gradient_guard"] = True
            guarded += 1
    return guarded
