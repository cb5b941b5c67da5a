"""Which linear layers a weight-update method (LoRA family) attaches to.

Two ways to say it, as users know them:

* AdapterHub's: ``selfattn_lora`` + ``attn_matrices`` (q, k, v, o), ``intermediate_lora``,
  ``output_lora``, resolved through the architecture spec; ``leave_out`` skips layers.
* PEFT's: ``target_modules`` (list: exact name or dotted suffix; string: regex over the full
  path; ``"all-linear"``), ``exclude_modules``, ``layers_to_transform`` / ``layers_pattern``.
"""

from __future__ import annotations

import difflib
import re
from typing import NamedTuple, Optional

from torch import nn

from .spec import ArchitectureSpec

__all__ = ["Target", "resolve_targets", "pattern_value", "matches_modules"]

# modules created by this library are never targets
_OWN_MODULES = re.compile(r"(^|\.)(adapters|loras|adapter_fusion_layer|shared_parameters)(\.|$)")


class Target(NamedTuple):
    """A linear layer to attach to: its path in the base model, the module, its layer index (-1
    outside the layer list) and its path inside the layer (the location key)."""

    path: str
    module: nn.Module
    layer_idx: int
    location: str


def _layer_of(path: str, spec: ArchitectureSpec, layers_pattern: Optional[str] = None) -> tuple[int, str]:
    prefix = re.escape(layers_pattern) if layers_pattern else re.escape(spec.layers)
    match = re.search(rf"(^|\.){prefix}\.(\d+)\.(.+)$", path)
    return (int(match.group(2)), match.group(3)) if match else (-1, path)


def matches_modules(path: str, spec, path_prefix: str = "") -> bool:
    """Whether ``path`` (or ``path_prefix + path``) matches a ``target_modules``-style spec: a
    regex string (full match) or a list of names (exact or dotted suffix)."""
    for candidate in {path, path_prefix + path}:
        if isinstance(spec, str):
            if re.fullmatch(spec, candidate) is not None:
                return True
        elif any(candidate == name or candidate.endswith("." + name) for name in spec):
            return True
    return False


def _linear_modules(base_model: nn.Module) -> dict[str, nn.Module]:
    return {
        path: module
        for path, module in base_model.named_modules()
        if isinstance(module, nn.Linear) and not _OWN_MODULES.search(path)
    }


def resolve_targets(base_model: nn.Module, spec: ArchitectureSpec, config, path_prefix: str = "") -> list[Target]:
    """The layers ``config`` places modules on, or a ValueError listing close module names.

    ``path_prefix`` is the base model's path in the model with a head (``"model."``): patterns
    may be written against either root, as PEFT writes them against the top model.
    """
    linears = _linear_modules(base_model)
    if config.target_modules is None:
        suffixes = []
        if config.selfattn_lora:
            by_letter = {"q": spec.query, "k": spec.key, "v": spec.value, "o": spec.attn_output}
            suffixes += [by_letter[m] for m in config.attn_matrices if by_letter[m]]
        if config.intermediate_lora:
            suffixes += list(spec.intermediate_lora)
        if config.output_lora:
            suffixes += list(spec.output_lora)
        chosen = {}
        for path, module in linears.items():
            layer_idx, location = _layer_of(path, spec)
            if layer_idx >= 0 and location in suffixes and layer_idx not in config.leave_out:
                chosen[path] = Target(path, module, layer_idx, location)
        return list(chosen.values())

    wanted = config.target_modules
    targets = []
    for path, module in linears.items():
        if wanted != "all-linear" and not matches_modules(path, wanted, path_prefix):
            continue
        if config.exclude_modules is not None and matches_modules(path, config.exclude_modules, path_prefix):
            continue
        layer_idx, location = _layer_of(path, spec, config.layers_pattern)
        if config.layers_to_transform is not None and layer_idx not in config.layers_to_transform:
            continue
        if layer_idx in config.leave_out:
            continue
        targets.append(Target(path, module, layer_idx, location))
    if not targets:
        names = sorted({p.rsplit(".", 1)[-1] for p in linears} | set(linears))
        probe = wanted if isinstance(wanted, str) else " ".join(wanted)
        close = difflib.get_close_matches(probe, names, n=5, cutoff=0.3) or sorted({p.rsplit(".", 1)[-1] for p in linears})[:8]
        raise ValueError(
            f"target_modules={wanted!r} matches no linear layer of this model (after exclude_modules / "
            f"layers_to_transform). Closest module names: {', '.join(close)}."
        )
    return targets


def pattern_value(patterns: dict, path: str, default):
    """The value of the first pattern in ``patterns`` that matches the end of ``path`` (PEFT's
    ``rank_pattern`` / ``alpha_pattern``), else ``default``."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?{pattern}$", path):
            return value
    return default
