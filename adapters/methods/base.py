"""What several method families share that is not part of the hook machinery."""

from __future__ import annotations

import torch

__all__ = ["init_bert_weights"]


def init_bert_weights(module: torch.nn.Module) -> None:
    """BERT's initialisation (weights N(0, 0.02), zero biases, unit LayerNorms); for ``Module.apply``."""
    if isinstance(module, torch.nn.Linear):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, torch.nn.LayerNorm):
        torch.nn.init.ones_(module.weight)
        torch.nn.init.zeros_(module.bias)
