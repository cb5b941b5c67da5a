"""Which linear layers a weight-update method (LoRA family) attaches to.

Two ways to say it, as users know them:

* AdapterHub's: ``selfattn_lora`` + ``attn_matrices`` (q, k, v, o), ``intermediate_lora``,
  ``output_lora``, resolved through the architecture spec; ``leave_out`` skips layers.
* PEFT's: ``target_modules`` (list: exact name or dotted suffix; string: regex over the full
  path; ``"all-linear"``), ``exclude_modules``, ``layers_to_transform`` / ``layers_pattern``.

Linear layers are ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2's, weight stored transposed).

**Fused projections.** Where a spec names one module for several of ``query`` / ``key`` /
``value`` (GPT-2's ``attn.c_attn``), that module's output is those projections concatenated in
q, k, v order, in equal parts (or in proportion to the head counts the spec names in
``fused_qkv_heads``: Phi-3's ``qkv_proj`` under grouped-query attention). AdapterHub-style placement then covers only the parts named in
``attn_matrices``: the :class:`Target` carries their output column ranges (``out_slices``), e.g.
``((0, d), (2d, 3d))`` for ``["q", "v"]``; where a spec interleaves the parts per head
(``fused_qkv_layout="interleaved_heads"``, GPT-NeoX), a part is a tuple of per-head ranges. PEFT-style ``target_modules`` name whole modules and
cover the whole output (``out_slices`` None), as PEFT does.
"""

from __future__ import annotations

import difflib
import re
from typing import NamedTuple, Optional

from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import AdapterConfigError
from .spec import ArchitectureSpec, StackSpec, layer_stacks

__all__ = [
    "Target", "resolve_targets", "pattern_value", "matches_modules", "fused_parts", "fused_part_ranges", "fused_part_rows",
    "layer_of",
    "locate", "Located", "first_layers",
    "closest_names",
]

# modules this library adds: never targets, and their biases are adapter weights, not the base model's
OWN_MODULES = re.compile(
    r"(^|\.)(adapters|loras|adapter_fusion_layer|shared_parameters|attention_adapters|output_adapters|modules_to_save"
    r"|prefix_tuning|prompt_tuning|invertible_adapters)(\.|$)"
)


class Target(NamedTuple):
    """A linear layer to attach to: its path in the base model, the module, its layer index (-1
    outside the layer list), its path inside the layer (the location key) and, for some parts of a
    fused projection, the output column ranges to cover (None: the whole output)."""

    path: str
    module: nn.Module
    layer_idx: int
    location: str
    out_slices: Optional[tuple[tuple[int, int], ...]] = None


class Located(NamedTuple):
    """Where a base-model path lies: its stack (None outside the layer lists), its layer index in
    AdapterHub's numbering over all stacks (-1 outside), its index inside its own stack, and its
    path inside the layer (the whole path outside).

    Example::

        >>> locate("encoder.block.1.layer.0.SelfAttention.q", T5).layer_idx
        1
    """

    stack: Optional[StackSpec]
    layer_idx: int
    local_idx: int
    location: str


def first_layers(base_model: nn.Module, spec: ArchitectureSpec) -> dict[str, int]:
    """``{stack layers path: index of its first layer}`` for :func:`layer_of` on ``base_model``.

    Example::

        >>> first_layers(t5, T5)
        {'encoder.block': 0, 'decoder.block': 2}
    """
    return {stack.layers: first for stack, first, _ in layer_stacks(base_model, spec)}


def locate(path: str, spec: ArchitectureSpec, firsts: Optional[dict] = None, layers_pattern: Optional[str] = None) -> Located:
    """Where ``path`` lies (see :class:`Located`); ``firsts`` from :func:`first_layers` numbers the
    decoder layers of an encoder-decoder after the encoder's. With ``layers_pattern`` (PEFT's) the
    layer index is the one in the path.

    Example::

        >>> locate("decoder.block.0.layer.1.EncDecAttention.q", T5, {"encoder.block": 0, "decoder.block": 2})
        Located(stack=StackSpec(role='decoder', ...), layer_idx=2, local_idx=0, location='layer.1.EncDecAttention.q')
    """
    if layers_pattern:
        match = re.search(rf"(^|\.){re.escape(layers_pattern)}\.(\d+)\.(.+)$", path)
        if match is None:
            return Located(None, -1, -1, path)
        return Located(None, int(match.group(2)), int(match.group(2)), match.group(3))
    for stack in spec.stacks:
        match = re.search(rf"(^|\.){re.escape(stack.layers)}\.(\d+)\.(.+)$", path)
        if match is not None:
            local = int(match.group(2))
            return Located(stack, (firsts or {}).get(stack.layers, 0) + local, local, match.group(3))
    return Located(None, -1, -1, path)


def layer_of(
    path: str, spec: ArchitectureSpec, layers_pattern: Optional[str] = None, firsts: Optional[dict] = None
) -> tuple[int, str]:
    """``(layer index, path inside the layer)`` of a base-model path; ``(-1, path)`` outside the
    layer lists. For encoder-decoder families pass ``firsts`` (:func:`first_layers`) so decoder
    layers are numbered after the encoder's.

    Example::

        >>> layer_of("encoder.layer.1.attention.self.query", BERT)
        (1, 'attention.self.query')
    """
    located = locate(path, spec, firsts, layers_pattern)
    return located.layer_idx, located.location


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
        if isinstance(module, (nn.Linear, Conv1D)) and not OWN_MODULES.search(path)
    }


def _out_features(module: nn.Module) -> int:
    # the layer's own size: a quantized weight's storage shape is not (out, in) (bitsandbytes packs
    # a 4-bit weight into an (n, 1) byte column)
    if isinstance(module, Conv1D):
        return module.nf
    size = getattr(module, "out_features", None)
    return module.weight.shape[0] if size is None else size


def fused_parts(spec: ArchitectureSpec, location: str) -> tuple[str, ...]:
    """The projections (``"q"``, ``"k"``, ``"v"``, in output order) that ``spec`` fuses into the
    module at ``location``; empty unless at least two share it.

    Example::

        >>> fused_parts(GPT2, "attn.c_attn")
        ('q', 'k', 'v')
    """
    parts = tuple(letter for letter, path in zip("qkv", (spec.query, spec.key, spec.value)) if path == location)
    return parts if len(parts) > 1 else ()


def _fused_part_sizes(spec: ArchitectureSpec, parts, out: int, location: str, config) -> list[int]:
    """The output sizes of the ``parts`` of the fused module at ``location``."""
    if spec.fused_qkv_heads:
        first = getattr(config, spec.fused_qkv_heads[0])
        heads = dict(zip("qkv", (getattr(config, name, None) or first for name in spec.fused_qkv_heads)))
        counts = [heads[letter] for letter in parts]
    else:
        counts = [1] * len(parts)
    if out % sum(counts):
        raise AdapterConfigError(
            f"{spec.name}: {location} fuses {', '.join(parts)} in proportions {counts} but its output size {out} "
            f"does not split that way; check the architecture spec."
        )
    return [out // sum(counts) * count for count in counts]


def fused_part_ranges(spec: ArchitectureSpec, location: str, module: nn.Module, config) -> dict[str, tuple[int, int]]:
    """``{letter: (first output row, size)}`` of each part of the fused projection at ``location``
    (empty unless ``spec`` fuses several of q, k, v there); for a concatenated layout only (see
    :func:`fused_part_rows` for any layout).

    Example::

        >>> fused_part_ranges(PHI3, "self_attn.qkv_proj", qkv_proj, config)   # 4 query, 2 kv heads of 8
        {'q': (0, 32), 'k': (32, 16), 'v': (48, 16)}
    """
    parts = fused_parts(spec, location)
    if not parts:
        return {}
    if spec.fused_qkv_layout != "concatenated":
        raise ValueError(f"{spec.name}: {location} interleaves its parts per head; use fused_part_rows.")
    sizes = _fused_part_sizes(spec, parts, _out_features(module), location, config)
    return {letter: (sum(sizes[:i]), size) for i, (letter, size) in enumerate(zip(parts, sizes))}


def fused_part_rows(spec: ArchitectureSpec, location: str, module: nn.Module, config) -> dict[str, tuple]:
    """``{letter: ((start, stop), ...)}``: the output row ranges of each part of the fused
    projection at ``location``, in the order the model reads them (empty unless ``spec`` fuses
    several of q, k, v there). One range per part for ``[q | k | v]``; one range per head for
    GPT-NeoX's per-head interleaved ``[q_1 k_1 v_1 | q_2 k_2 v_2 | ...]``.

    Example::

        >>> fused_part_rows(GPT_NEOX, "attention.query_key_value", qkv, config)   # 2 heads of 4
        {'q': ((0, 4), (12, 16)), 'k': ((4, 8), (16, 20)), 'v': ((8, 12), (20, 24))}
    """
    parts = fused_parts(spec, location)
    if not parts:
        return {}
    out = _out_features(module)
    if spec.fused_qkv_layout == "concatenated":
        return {letter: ((start, start + size),) for letter, (start, size) in fused_part_ranges(spec, location, module, config).items()}
    heads = config.num_attention_heads
    if out % (heads * len(parts)):
        raise AdapterConfigError(
            f"{spec.name}: {location} interleaves {', '.join(parts)} over {heads} heads but its output size {out} "
            f"does not split that way; check the architecture spec."
        )
    size = out // (heads * len(parts))
    stride = size * len(parts)
    return {
        letter: tuple((h * stride + i * size, h * stride + (i + 1) * size) for h in range(heads))
        for i, letter in enumerate(parts)
    }


def _fused_slices(spec: ArchitectureSpec, location: str, module: nn.Module, letters, config=None) -> Optional[tuple]:
    """The parts ``letters`` of the fused module at ``location`` as LoRA ``out_slices``: one entry
    per part, a ``(start, stop)`` range, or a tuple of ranges where the part is spread over the
    output (interleaved heads)."""
    rows = fused_part_rows(spec, location, module, config)
    if not rows:
        return None
    chosen = [(letter, ranges) for letter, ranges in rows.items() if letter in letters]
    sizes = {letter: sum(stop - start for start, stop in ranges) for letter, ranges in chosen}
    if len(set(sizes.values())) > 1:
        raise AdapterConfigError(
            f"{spec.name}: attn_matrices {sorted(letters)} select parts of the fused {location} of different sizes "
            f"({', '.join(f'{letter}: {size}' for letter, size in sizes.items())}; grouped-query attention), and one "
            f"LoRA update per part needs equal parts. Select parts of one size (e.g. ['k', 'v']), or adapt the whole "
            f"module with target_modules=[{location.rsplit('.', 1)[-1]!r}] (as PEFT does)."
        )
    return tuple(ranges[0] if len(ranges) == 1 else ranges for _, ranges in chosen)


def resolve_targets(base_model: nn.Module, spec: ArchitectureSpec, config, path_prefix: str = "") -> list[Target]:
    """The layers ``config`` places modules on, or an AdapterConfigError listing close module names.

    ``path_prefix`` is the base model's path in the model with a head (``"model."``): patterns
    may be written against either root, as PEFT writes them against the top model.
    """
    linears = _linear_modules(base_model)
    firsts = first_layers(base_model, spec)
    if config.target_modules is None:
        # per stack: location -> the attention matrices placed there (self- and cross-attention:
        # AdapterHub's "selfattn" LoRA covers every attention module of an encoder-decoder)
        letters_at: dict[str, dict[str, set]] = {}
        suffixes: dict[str, set] = {}
        for stack in spec.stacks:
            at = letters_at.setdefault(stack.layers, {})
            if config.selfattn_lora:
                matrices = stack.attention_matrices()
                for letter in config.attn_matrices:
                    for location in matrices[letter]:
                        at.setdefault(location, set()).add(letter)
            suffixes[stack.layers] = set(at)
            if config.intermediate_lora:
                suffixes[stack.layers].update(stack.intermediate_lora)
            if config.output_lora:
                suffixes[stack.layers].update(stack.output_lora)
        chosen = []
        for path, module in linears.items():
            stack, layer_idx, _, location = locate(path, spec, firsts)
            if stack is None or location not in suffixes[stack.layers] or layer_idx in config.leave_out:
                continue
            at = letters_at[stack.layers]
            slices = _fused_slices(spec, location, module, at[location], base_model.config) if location in at else None
            chosen.append(Target(path, module, layer_idx, location, slices))
        return chosen

    wanted = config.target_modules
    # PEFT's "all-linear" leaves out the output layer (T5's lm_head lies inside its base model, and
    # is tied to the input embeddings: merging into it would change them too)
    get_output = getattr(base_model, "get_output_embeddings", None)
    output_layer = get_output() if callable(get_output) else None
    targets = []
    for path, module in linears.items():
        if wanted == "all-linear" and module is output_layer:
            continue
        if wanted != "all-linear" and not matches_modules(path, wanted, path_prefix):
            continue
        if config.exclude_modules is not None and matches_modules(path, config.exclude_modules, path_prefix):
            continue
        located = locate(path, spec, firsts, config.layers_pattern)
        # layers_to_transform is PEFT's: the index in the path (per stack); leave_out AdapterHub's
        if config.layers_to_transform is not None and located.local_idx not in config.layers_to_transform:
            continue
        layer_idx = located.layer_idx
        if spec.is_multi_stack and config.layers_pattern:  # number over both stacks, as leave_out does
            layer_idx = layer_of(path, spec, None, firsts)[0]
        if layer_idx in config.leave_out:
            continue
        targets.append(Target(path, module, layer_idx, located.location))
    if not targets:
        probe = wanted if isinstance(wanted, str) else " ".join(wanted)
        raise AdapterConfigError(
            f"target_modules={wanted!r} matches no linear layer of this model (after exclude_modules / "
            f"layers_to_transform). Closest module names: {', '.join(closest_names(probe, linears))}."
        )
    return targets


def closest_names(probe: str, paths) -> list[str]:
    """Module names (last path parts or whole paths) most similar to ``probe``, for error messages.

    Example::

        >>> closest_names("qurey", ["encoder.layer.0.attention.self.query"])
        ['query']
    """
    short = {p.rsplit(".", 1)[-1] for p in paths}
    return difflib.get_close_matches(probe, sorted(short | set(paths)), n=5, cutoff=0.3) or sorted(short)[:8]


def pattern_value(patterns: dict, path: str, default):
    """The value of the first pattern in ``patterns`` that matches the end of ``path`` (PEFT's
    ``rank_pattern`` / ``alpha_pattern``), else ``default``."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?(?:{pattern})$", path):  # grouped: "a|b" must not split the anchors
            return value
    return default
