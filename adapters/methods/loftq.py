"""LoftQ initialisation (Li et al., 2023, "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large
Language Models").

When the backbone is quantised, ``Q(W)`` differs from ``W``; LoftQ picks the quantised weight
and the LoRA factors together so that the adapted layer starts close to the original one::

    R₀ = 0
    repeat T times:   Q = q(W − R)                 (quantise what the adapter does not cover)
                      U Σ Vᵀ = svd(W − Q)          (the quantisation residual)
                      R = U_r Σ_r V_rᵀ             (its best rank-r approximation)
    W ← Q,   s·B A = R   (B = U_r Σ_r^½ / √s,  A = Σ_r^½ V_rᵀ / √s)

so ``‖W − (Q + s·B A)‖ ≤ ‖W − Q‖``. ``q`` is a block-wise absmax quantiser written in torch:
NF4 (QLoRA's 4-bit NormalFloat levels) or a uniform grid, 64 weights per block. The model then
runs on the de-quantised ``Q`` (what a quantised backbone computes) plus the LoRA branch.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

from ..errors import AdapterConfigError

__all__ = ["NF4_LEVELS", "quantize_dequantize", "loftq_factors", "residual_factors", "checkpoint_weight"]

# QLoRA's NormalFloat4: quantiles of N(0, 1) normalised to [-1, 1], with an exact zero
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])


def _levels(bits: int, method: str) -> torch.Tensor:
    if method == "nf" and bits == 4:
        return NF4_LEVELS
    if method == "nf":  # normal quantiles for other widths, symmetric with an exact zero
        half = 2 ** (bits - 1)
        probs = torch.linspace(0.5, 0.9677, half + 1, dtype=torch.float64)[1:]
        positive = torch.special.ndtri(probs)
        positive = positive / positive[-1]
        return torch.cat([-positive.flip(0), torch.zeros(1, dtype=torch.float64), positive[:-1]]).float()
    return torch.linspace(-1.0, 1.0, 2**bits)


def quantize_dequantize(weight: torch.Tensor, bits: int = 4, method: str = "nf", block_size: int = 64) -> torch.Tensor:
    """``q(W)``: round each block of ``block_size`` weights to the nearest level times the block's
    absmax, and map back to floats.

    Example::

        >>> w = torch.randn(64, 64)
        >>> (quantize_dequantize(w) - w).abs().max() < w.abs().max()
        tensor(True)
    """
    flat = weight.detach().float().reshape(-1)
    pad = (-flat.numel()) % block_size
    blocks = torch.cat([flat, flat.new_zeros(pad)]).view(-1, block_size)
    scale = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    levels = _levels(bits, method).to(flat.device)
    index = (blocks / scale).unsqueeze(-1).sub(levels).abs().argmin(dim=-1)
    dequantized = levels[index] * scale
    return dequantized.view(-1)[: flat.numel()].view_as(weight).to(weight.dtype)


def loftq_factors(weight: torch.Tensor, rank: int, scaling: float, bits: int = 4, iterations: int = 1, method: str = "nf"):
    """``(Q, A, B)`` for a weight of shape (out, in): the de-quantised weight and LoRA factors
    with ``s·B A`` the rank-``rank`` approximation of ``W − Q`` (see the module docstring).

    Example::

        >>> q, a, b = loftq_factors(torch.randn(64, 64), rank=8, scaling=2.0)
    """
    original = weight.detach().float()
    low_rank = torch.zeros_like(original)
    for _ in range(max(1, iterations)):
        quantized = quantize_dequantize(original - low_rank, bits, method)
        a, b = residual_factors(original, quantized, rank, scaling)
        low_rank = scaling * (b @ a)
    return quantized.to(weight.dtype), a.to(weight.dtype), b.to(weight.dtype)


def residual_factors(weight: torch.Tensor, quantized: torch.Tensor, rank: int, scaling: float):
    """``(A, B)`` with ``s·B A`` the best rank-``rank`` approximation of ``W − Q`` (float32): one
    LoftQ step for a quantized weight ``Q`` that is given, not chosen (a base model loaded
    quantized already).

    Example::

        >>> w = torch.randn(64, 64); a, b = residual_factors(w, quantize_dequantize(w), rank=8, scaling=2.0)
    """
    u, s, vh = torch.linalg.svd(weight.float() - quantized.float(), full_matrices=False)
    root = s[:rank].sqrt()
    return root.unsqueeze(1) * vh[:rank] / scaling**0.5, u[:, :rank] * root / scaling**0.5


def checkpoint_weight(folder, key: str) -> Optional[torch.Tensor]:
    """The tensor ``key`` of the safetensors checkpoint in ``folder`` (one ``model.safetensors``
    or shards listed in ``model.safetensors.index.json``, inside the folder), or None where the
    folder, the file or the key is absent. Only that tensor is read; an unreadable index or file
    raises :class:`~adapters.errors.AdapterConfigError` naming it.

    Example::

        >>> checkpoint_weight("out/llama", "model.layers.0.self_attn.q_proj.weight").shape
        torch.Size([64, 64])
    """
    from safetensors import SafetensorError, safe_open

    if not folder or not os.path.isdir(folder):
        return None
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as handle:
                listing = json.load(handle)
        except (OSError, ValueError) as error:
            raise AdapterConfigError(f"{index}: not a readable checkpoint index ({error}).") from None
        weight_map = listing.get("weight_map") if isinstance(listing, dict) else None
        shard = weight_map.get(key) if isinstance(weight_map, dict) else None
        if not isinstance(shard, str) or os.path.basename(shard) != shard:  # a shard inside the folder only
            return None
        path = os.path.join(folder, shard)
    else:
        path = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt") as checkpoint:
            return checkpoint.get_tensor(key) if key in checkpoint.keys() else None
    except (OSError, SafetensorError) as error:
        raise AdapterConfigError(f"{path}: not a readable safetensors file ({error}).") from None
