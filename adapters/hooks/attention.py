"""One attention wrapper for every architecture: methods that change attention itself (prefix
tuning, Llama-Adapter's gated adaption prompt) plug in here instead of copying any model's
attention code.

transformers 5 models call attention through
``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)``
and build masks through ``ALL_MASK_ATTENTION_FUNCTIONS[config._attn_implementation]``. For each
backend ``X`` (``sdpa``, ``eager``, ``flash_attention_2``, ...) this module registers
``adapters_X`` in both interfaces:

* the attention function calls the *contributors* attached to the calling module (an attention
  module tagged with its layer and location when the model is patched), which may prepend keys
  and values (:meth:`AttentionContributor.extend_keys_values`) and adjust the output
  (:meth:`AttentionContributor.adjust_output`), then runs backend ``X``. Keys and values arrive
  here *after* the model's KV-cache update, so the cache holds only real tokens; the extra keys
  are prepended on every call, prefill and decoding alike.
* the mask function is ``X``'s, except that while a forward pass has contributions it never
  skips a causal mask (``sdpa`` would otherwise use ``is_causal`` aligned at the top left, which
  is wrong once keys outnumber queries). The wrapper extends the materialised mask with one
  column per extra key — "attend" for valid ones, "masked" for padding between prefixes of
  different lengths — whatever its form: a 4D boolean mask (``sdpa``), a 4D additive float mask
  (``eager``), or a 2D padding mask (flash attention). A ``position_bias`` argument (T5's
  relative position bias, added to the scores by the backend) is recomputed over the joined keys
  with the model's own ``compute_bias``: the extra keys take key positions ``0 … n−1`` and the
  real keys ``n …``. The queries keep their positions (AdapterHub's numbering, so its T5
  prefixes reproduce), or, for an extension marked ``positioned`` (prefix tuning's
  ``shift_positions``: a prefix fed as past keys/values, PEFT's convention), move by ``n`` as
  well, which leaves the bias between real tokens as it was. Attention modules of a stack
  without a bias table (T5's cross-attention) give the extra keys zero bias.

Grouped-query attention needs nothing special: contributors produce ``num_key_value_heads``
heads, like the model's own keys. Backend ``eager`` means the calling model's own
``eager_attention_forward`` (looked up in the module that defines the attention class), so
model-specific eager details (GPT-2's scaling options) are kept.

Example::

    >>> tag_attention(model.model.layers[0].self_attn, layer_idx=0, location="self")
    >>> use_adapter_attention(model)          # config._attn_implementation: "sdpa" -> "adapters_sdpa"
"""

from __future__ import annotations

import sys
from typing import NamedTuple, Optional

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from ..context import ForwardContext
from ..errors import AdapterConfigError
from .joined_cache import join_with_cache

__all__ = [
    "PREFIX",
    "AttentionSite",
    "attend_with_contributions",
    "contributed_keys_values",
    "AttentionContributor",
    "KeyValueExtension",
    "tag_attention",
    "add_contributor",
    "set_position_bias_module",
    "use_adapter_attention",
    "attention_configs",
    "adapter_attention_name",
    "release_adapter_attention",
]

PREFIX = "adapters_"


class AttentionSite(NamedTuple):
    """Where a tagged attention module sits: its layer and ``"self"`` / ``"encoder"`` / ``"cross"``."""

    layer_idx: int
    location: str


class KeyValueExtension(NamedTuple):
    """Keys/values to prepend: ``(batch, kv_heads, n, head_dim)`` each, and ``valid``, a
    ``(batch, n)`` boolean mask of the positions that are real (None: all). ``positioned``: the
    keys take positions ``0 … n−1`` and the real tokens are numbered from ``n`` on (as if the keys
    were cached before them); where the model adds a relative position bias, they get the bias of
    those positions instead of none. ``kept``: the same tensor objects come back on every call
    while their values are unchanged (a decoding cache may then keep its join with them, see
    :mod:`adapters.hooks.joined_cache`)."""

    keys: torch.Tensor
    values: torch.Tensor
    valid: Optional[torch.Tensor] = None
    positioned: bool = False
    kept: bool = False


class AttentionContributor:
    """What a method attached to an attention module can do (override either or both).

    Example::

        >>> class MyContributor(AttentionContributor):
        ...     def extend_keys_values(self, module, site, query, key, value, context):
        ...         return KeyValueExtension(extra_keys, extra_values)
    """

    def extend_keys_values(self, module, site: AttentionSite, query, key, value, context) -> Optional[KeyValueExtension]:
        """Keys/values to attend to jointly with the real ones (one softmax), or None."""
        return None

    def adjust_output(self, module, site: AttentionSite, query, output, context) -> torch.Tensor:
        """The attention output ``(batch, seq, heads, head_dim)`` after any change (e.g. a separately
        normalised, gated attention over extra keys added to it)."""
        return output


def tag_attention(module: torch.nn.Module, layer_idx: int, location: str = "self") -> None:
    """Mark ``module`` as attention of layer ``layer_idx`` at ``location`` (idempotent).

    Example::

        >>> tag_attention(layer.attention.self, 0, "self")
    """
    module.__dict__["_adapters_attention_site"] = AttentionSite(layer_idx, location)
    module.__dict__.setdefault("_adapters_attention_contributors", [])
    module.__dict__.setdefault("_adapters_attention_adjusters", [])  # the contributors that override adjust_output


def add_contributor(module: torch.nn.Module, contributor: AttentionContributor) -> None:
    """Attach ``contributor`` to the tagged attention ``module``.

    Example::

        >>> add_contributor(layer.self_attn, layer.self_attn.prefix_tuning)
    """
    contributors = module.__dict__.get("_adapters_attention_contributors")
    if contributors is None:
        raise ValueError(f"{type(module).__name__} is not a tagged attention module; call tag_attention first.")
    if not any(c is contributor for c in contributors):
        contributors.append(contributor)
        if type(contributor).adjust_output is not AttentionContributor.adjust_output:
            module.__dict__["_adapters_attention_adjusters"].append(contributor)


# -- the registered backends ------------------------------------------------------------------------
_EAGER_BY_CLASS: dict[type, object] = {}


def _model_eager(module):
    """The ``eager_attention_forward`` of the modeling file that defines ``module``'s class."""
    cls = type(module)
    function = _EAGER_BY_CLASS.get(cls)
    if function is None:
        for klass in cls.__mro__:
            function = getattr(sys.modules.get(klass.__module__), "eager_attention_forward", None)
            if function is not None:
                break
        if function is None:
            from transformers.models.llama.modeling_llama import eager_attention_forward as function
        _EAGER_BY_CLASS[cls] = function
    return function


def _inner_attention(backend: str, module):
    if backend == "eager":
        return _model_eager(module)
    return ALL_ATTENTION_FUNCTIONS[backend]


def _extend_mask(mask, valid, n_extra: int, module, query, key_length: int):
    """The mask for ``n_extra`` keys prepended to ``key_length`` real ones."""
    q_length = query.shape[2]
    device = query.device
    if mask is None:
        causal = bool(getattr(module, "is_causal", False)) and q_length > 1
        if not causal and valid is None:
            return None  # attend to everything, the extra keys included
        mask = torch.ones(q_length, key_length, dtype=torch.bool, device=device)
        if causal:  # bottom-right aligned: query i sees keys up to i + (key_length - q_length)
            mask = mask.tril(key_length - q_length)
        mask = mask[None, None]
    if mask.dim() == 2:  # flash attention: a (batch, keys) padding mask
        extra = valid if valid is not None else torch.ones(mask.shape[0], n_extra, dtype=mask.dtype, device=mask.device)
        return torch.cat([extra.to(mask.dtype), mask], dim=-1)
    if valid is None:
        extra_bool = torch.ones(1, 1, 1, n_extra, dtype=torch.bool, device=mask.device)
    else:
        extra_bool = valid[:, None, None, :]
    rows = max(mask.shape[0], extra_bool.shape[0])
    if mask.dtype == torch.bool:
        extra = extra_bool.expand(rows, mask.shape[1], mask.shape[2], n_extra)
    else:  # additive float mask (or position bias): 0 where attended, the dtype's minimum elsewhere
        zero = torch.zeros((), dtype=mask.dtype, device=mask.device)
        extra = torch.where(extra_bool, zero, torch.finfo(mask.dtype).min).expand(rows, mask.shape[1], mask.shape[2], n_extra)
    return torch.cat([extra, mask.expand(rows, -1, -1, -1)], dim=-1)


def _padded_position_bias(
    bias: torch.Tensor, n_extra: int, module, key_length: int, positioned: bool, valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The position bias over ``n_extra`` extra keys followed by ``key_length`` real ones (T5's
    ``bias`` covers the real keys only), from the model's own ``compute_bias`` of the module that
    owns the stack's bias table (recorded by :func:`set_position_bias_module`).

    Each row numbers its valid extra keys ``0, 1, …`` in order and its real keys after them, as if
    it ran alone (``valid``: masked filler between prefixes of different lengths takes no
    position). The queries keep their positions ``past + i`` (AdapterHub's numbering: the real keys
    move away from the queries by the number of extra keys), or, ``positioned`` (keys fed as past
    keys/values), follow the row's extra keys too (the bias among real tokens is the model's own).
    Without a bias table (cross-attention) the extra keys get zero bias."""
    owner = module.__dict__.get("_adapters_position_bias_module")
    if owner is None:
        return torch.cat([bias.new_zeros(*bias.shape[:-1], n_extra), bias], dim=-1)
    queries, total = bias.shape[-2], n_extra + key_length
    past = key_length - queries  # real tokens before the queries (the KV cache)

    def numbered(offset: int) -> torch.Tensor:  # key column c at position c - offset
        return owner.compute_bias(queries, total, device=bias.device, past_seen_tokens=offset + past).to(bias.dtype)

    if valid is None:
        return numbered(n_extra if positioned else 0).expand(*bias.shape[:-1], total)
    columns = torch.cat([valid, valid.new_ones(valid.shape[0], key_length)], dim=1)
    position = columns.long().cumsum(dim=1) - 1  # each valid column's own position (masked ones: any)
    offset = torch.arange(total, device=valid.device) - position  # per row and column
    if positioned:
        offset = offset + valid.sum(dim=1, keepdim=True)
    joined = None
    for value in offset.unique().tolist():  # a few runs of columns, each at one offset
        part = numbered(value)
        chosen = (offset == value)[:, None, None, :]
        joined = torch.where(chosen, part, joined) if joined is not None else part.expand(offset.shape[0], -1, queries, -1)
    return joined


def _once_per_pass(context, kind: str, sources: tuple, params: tuple, build):
    """``build()``, kept for the rest of the forward pass: transformers builds the attention mask
    (and T5 its position bias) once and hands the same tensor to every layer, so their extended
    versions are built once per pass too. Keyed by the identity of the ``sources`` tensors (kept
    alive with the entry, so an identity cannot be reused) and the plain values ``params``."""
    key = (kind, tuple(id(s) for s in sources), params)
    entry = context.pass_cache.get(key)
    if entry is None:
        entry = context.pass_cache[key] = (sources, build())
    return entry[1]


def set_position_bias_module(module: torch.nn.Module, owner: torch.nn.Module) -> None:
    """Record ``owner`` (an attention module with ``compute_bias(queries, keys, device,
    past_seen_tokens)``, T5's first layer of a stack) as the source of position bias for
    positioned extra keys in the tagged attention ``module``.

    Example::

        >>> set_position_bias_module(t5.decoder.block[1].layer[0].SelfAttention, t5.decoder.block[0].layer[0].SelfAttention)
    """
    module.__dict__["_adapters_position_bias_module"] = owner


def _joined(extensions: list, key, value):
    """The extensions' keys, values, ``valid`` mask (None: all valid) and whether the result is
    kept from call to call (see :class:`KeyValueExtension`), joined in order."""
    if len(extensions) == 1:  # the common case: no copy before the join with the real keys
        extension = extensions[0]
        extra_keys, extra_values, valid = extension.keys, extension.values, extension.valid
        if extra_keys.dtype != key.dtype:
            extra_keys, extra_values = extra_keys.to(key.dtype), extra_values.to(value.dtype)
            return extra_keys, extra_values, valid, False
        return extra_keys, extra_values, valid, extension.kept
    extra_keys = torch.cat([e.keys for e in extensions], dim=2).to(key.dtype)
    extra_values = torch.cat([e.values for e in extensions], dim=2).to(value.dtype)
    valid = None
    if any(e.valid is not None for e in extensions):
        valid = torch.cat(
            [e.valid if e.valid is not None else e.keys.new_ones(e.keys.shape[0], e.keys.shape[2], dtype=torch.bool)
             for e in extensions],
            dim=1,
        )
    return extra_keys, extra_values, valid, False


def attend_with_contributions(module, query, key, value, attention_mask, inner, **kwargs):
    """``inner(module, query, key, value, attention_mask, **kwargs)`` with the contributions of
    the methods attached to ``module`` (see the module docstring): their keys and values joined
    in front of the real ones (after the KV-cache update), the mask and any ``position_bias``
    extended to match, the attention weights of the extra keys cut off again, and the output
    adjusted. The registered backends run every model's attention through it; an attention
    class that computes its scores in an inner method of its own instead of calling the
    interface (transformers 5.23's GPT-J ``_attn``) runs that method through it.

    Example::

        >>> output, weights = attend_with_contributions(module, q, k, v, mask, sdpa_attention_forward)
    """
    contributors = module.__dict__.get("_adapters_attention_contributors")
    context = ForwardContext.get_context() if contributors else None
    if context is None or not (context.attention_extended or context.attention_adjusted):
        return inner(module, query, key, value, attention_mask, **kwargs)
    site = module.__dict__["_adapters_attention_site"]
    extensions = []
    for contributor in contributors:
        extension = contributor.extend_keys_values(module, site, query, key, value, context)
        if extension is not None:
            extensions.append(extension)
    n_extra = 0
    if extensions:
        key_length = key.shape[2]
        extra_keys, extra_values, valid, kept = _joined(extensions, key, value)
        n_extra = extra_keys.shape[2]
        key, value = join_with_cache(context.kv_cache_layers, module, extra_keys, extra_values, key, value, kept)
        mask, causal = attention_mask, bool(getattr(module, "is_causal", False))
        if mask is not None or valid is not None or (causal and query.shape[2] > 1):
            attention_mask = _once_per_pass(
                context, "mask", (mask, valid), (n_extra, causal, tuple(query.shape[:3]), key_length),
                lambda: _extend_mask(mask, valid, n_extra, module, query, key_length),
            )  # else: no mask (a decoding step without padding) sees the extra keys as well
        position_bias = kwargs.get("position_bias")
        if position_bias is not None:
            positioned = all(e.positioned for e in extensions)
            kwargs["position_bias"] = _once_per_pass(
                context, "bias", (position_bias, valid), (n_extra, positioned, key_length),
                lambda: _padded_position_bias(position_bias, n_extra, module, key_length, positioned, valid),
            )
    output, weights = inner(module, query, key, value, attention_mask, **kwargs)
    if weights is not None and n_extra:
        weights = weights[..., n_extra:]  # the caller sees attention over its own tokens
    for contributor in module.__dict__["_adapters_attention_adjusters"]:
        output = contributor.adjust_output(module, site, query, output, context)
    return output, weights


def contributed_keys_values(module, query, key, value) -> Optional[KeyValueExtension]:
    """The keys and values (and ``valid`` mask) the methods attached to the tagged attention
    ``module`` join in front of its own for this forward pass, as one :class:`KeyValueExtension`
    (``(batch, kv_heads, n, head_dim)``), or None when they add none. ``query``/``key``/``value``
    are what the contributors see (``(batch, heads, length, head_dim)``; only their batch size and
    dtype matter to prefix tuning). For attention code that joins the keys itself (DeBERTa's
    disentangled attention), where :func:`attend_with_contributions` cannot wrap one call.

    Example::

        >>> extension = contributed_keys_values(attention, probe, probe, probe)
    """
    contributors = module.__dict__.get("_adapters_attention_contributors")
    context = ForwardContext.get_context() if contributors else None
    if context is None or not context.attention_extended:
        return None
    site = module.__dict__["_adapters_attention_site"]
    extensions = [e for c in contributors for e in [c.extend_keys_values(module, site, query, key, value, context)] if e is not None]
    if not extensions:
        return None
    extra_keys, extra_values, valid, kept = _joined(extensions, key, value)
    return KeyValueExtension(extra_keys, extra_values, valid, all(e.positioned for e in extensions), kept)


def _make_attention(backend: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        return attend_with_contributions(module, query, key, value, attention_mask, _inner_attention(backend, module), **kwargs)

    attention.__name__ = f"{PREFIX}{backend.replace('|', '_')}_attention"
    attention.__doc__ = f"Backend {backend!r} with the contributions of adapter methods (see adapters.hooks.attention)."
    return attention


def _make_mask(backend: str):
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS  # at first registration: keeps `import adapters` light

    def mask(*args, **kwargs):
        context = ForwardContext.get_context()
        q_length = kwargs.get("q_length", args[1] if len(args) > 1 else None)
        if context is not None and context.attention_extended and q_length != 1:
            # several queries: keep the mask, since sdpa's is_causal would align it top-left over the
            # longer keys; one query (a decoding step) sees every key, so skipping stays right
            kwargs["allow_is_causal_skip"] = False
        return ALL_MASK_ATTENTION_FUNCTIONS[backend](*args, **kwargs)

    mask.__name__ = f"{PREFIX}{backend}_mask"
    return mask


def adapter_attention_name(backend: str) -> str:
    """Register (once) and return the wrapper backend for ``backend`` (e.g. ``"adapters_sdpa"``).

    Raises:
        AdapterConfigError: ``backend`` is not a known attention implementation.

    Example::

        >>> adapter_attention_name("sdpa")
        'adapters_sdpa'
    """
    if backend.startswith(PREFIX):
        return backend
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface  # (masking_utils imports psutil)

    name = PREFIX + backend
    if name not in AttentionInterface._global_mapping:
        if backend != "eager" and backend not in ALL_ATTENTION_FUNCTIONS:
            raise AdapterConfigError(
                f"Unknown attention implementation {backend!r} (config._attn_implementation); cannot wrap it for prefix "
                f"tuning. Use 'eager' or one registered in transformers' AttentionInterface: "
                f"{', '.join(sorted(ALL_ATTENTION_FUNCTIONS))}."
            )
        AttentionInterface.register(name, _make_attention(backend))
        mask_backend = backend if backend in ALL_MASK_ATTENTION_FUNCTIONS else "sdpa"
        AttentionMaskInterface.register(name, _make_mask(mask_backend))
    return name


def attention_configs(model) -> list:
    """The configs whose ``_attn_implementation`` ``model``'s attention modules read: the model's
    own and any separate ones its parts keep (T5's encoder and decoder stacks hold copies of it).

    Example::

        >>> len(attention_configs(t5)) > 1
        True
    """
    configs = {id(model.config): model.config}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            configs.setdefault(id(config), config)
    return list(configs.values())


def use_adapter_attention(model) -> None:
    """Route ``model``'s attention through the wrapper of its current backend (idempotent).

    Called when a method that contributes to attention is added, and again before each forward
    pass with such a method active (so a later ``model.set_attn_implementation("eager")`` is
    wrapped too instead of silently dropping the prefixes).

    Example::

        >>> use_adapter_attention(model)
        >>> model.config._attn_implementation
        'adapters_sdpa'
    """
    configs = model.__dict__.get("_adapters_attention_configs")
    if configs is None:
        configs = model.__dict__["_adapters_attention_configs"] = attention_configs(model)
    for config in configs:
        current = config._attn_implementation or "eager"
        if not current.startswith(PREFIX):
            config._attn_implementation = adapter_attention_name(current)


def release_adapter_attention(model) -> None:
    """Undo :func:`use_adapter_attention`: every config ``model``'s attention reads goes back to the
    backend the wrapper wrapped (once no method adds to attention any more).

    Example::

        >>> release_adapter_attention(model)
        >>> model.config._attn_implementation
        'sdpa'
    """
    for config in attention_configs(model):
        implementation = getattr(config, "_attn_implementation", None)
        if isinstance(implementation, str) and implementation.startswith(PREFIX):
            config._attn_implementation = implementation[len(PREFIX):]
