"""What several method families share that is not part of the hook machinery."""

from __future__ import annotations

import torch

from ..errors import AdapterLoadError

__all__ = ["init_bert_weights", "copy_saved_tensor"]


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
