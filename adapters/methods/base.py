"""What several method families share that is not part of the hook machinery."""

from __future__ import annotations

import torch

from ..errors import AdapterLoadError

__all__ = ["init_bert_weights", "copy_saved_tensor", "parameter_dtype", "in_dtype"]


def parameter_dtype(module: torch.nn.Module):
    """The dtype an adapter module computes in: its first floating parameter's (float32 for an
    adapter on a bfloat16 model unless ``autocast_adapter_dtype=False``); None without one.

    Example::

        >>> parameter_dtype(model.encoder.layer[0].attention.self.query.loras["a"])
        torch.float32
    """
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return None


def in_dtype(tensor, dtype):
    """``tensor`` in ``dtype`` (None, a non-tensor or a non-floating tensor: unchanged), for the
    casts around an adapter that computes in another dtype than the activations.

    Example::

        >>> in_dtype(hidden_bf16, torch.float32).dtype
        torch.float32
    """
    if dtype is None or not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor
    return tensor.to(dtype)


def init_bert_weights(module: torch.nn.Module) -> None:
    """BERT's initialisation (weights N(0, 0.02), zero biases, unit LayerNorms); for ``Module.apply``."""
    if isinstance(module, torch.nn.Linear):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, torch.nn.LayerNorm):
        torch.nn.init.ones_(module.weight)
        torch.nn.init.zeros_(module.bias)


def copy_saved_tensor(own: torch.Tensor, saved: torch.Tensor, path: str, key: str) -> None:
    """Copy a checkpoint's ``saved`` tensor into a fixed tensor of an adapter (a buffer the
    parameters do not cover: VeRA's projections, LoReFT's orthogonal base), after checking its shape.

    Raises:
        AdapterLoadError: another shape (the message names the file ``path`` and ``key``).

    Example::

        >>> copy_saved_tensor(projections.lora_A, state.pop(key), "out/a/adapter.safetensors", key)
    """
    if tuple(saved.shape) != tuple(own.shape):
        raise AdapterLoadError(
            f"{path}: {key} has shape {tuple(saved.shape)}, but the adapter needs {tuple(own.shape)}; was it saved for "
            f"another model or config?"
        )
    with torch.no_grad():
        own.copy_(saved.to(dtype=own.dtype))
