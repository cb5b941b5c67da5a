"""Decoding with extra keys in front of the KV cache, without joining them anew every step.

The attention wrapper (:mod:`adapters.hooks.attention`) attends over ``[extra ; real]``: an
adapter's keys/values (a prefix) in front of the layer's real keys/values, which while decoding
come from the KV cache. The cache holds only the real tokens, so the wrapper joins on every call;
in a decoding step that join copies the whole prefix and cache, for keys and values, in every
layer — on a memory-bound CPU step it costs several times the attention over the prefix itself.

So a cache layer keeps the first join it is handed::

    storage  = [extra ; real]            one tensor (keys, and one for values)
    layer.keys = storage[:, :, n:]       a view: what the cache holds and reports is still
                                         exactly the real tokens

and its ``update`` appends new tokens to the storage (one copy per step, as the plain cache
makes). The next call of the wrapper with the same extra keys finds ``[extra ; real]`` ready.

Only a plain ``DynamicLayer`` is taken over, and only while no gradient is recorded (a kept
tensor must not carry one pass's graph into the next). Anything that replaces the layer's
tensors — ``crop``, beam-search reordering, ``reset``, offloading — ends the arrangement: the
layer sees its ``keys`` are no longer the view it made and updates like a plain layer again.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

__all__ = ["JoinedCacheLayer", "cache_layer_lists", "join_with_cache"]


class _Joined(NamedTuple):
    extra_keys: torch.Tensor  # the extra keys/values the storage starts with
    extra_values: torch.Tensor
    keys: torch.Tensor  # [extra ; real]
    values: torch.Tensor
    real_keys: torch.Tensor  # keys[:, :, n:], the layer's ``keys``
    real_values: torch.Tensor

    @classmethod
    def of(cls, extra_keys, extra_values, keys, values) -> "_Joined":
        n = extra_keys.shape[2]
        real = keys.shape[2] - n
        return cls(extra_keys, extra_values, keys, values, keys.narrow(2, n, real), values.narrow(2, n, real))

    def holds(self, keys, values) -> bool:
        """Whether ``keys``/``values`` are this storage's views of the real tokens."""
        return keys is self.real_keys and values is self.real_values


class JoinedCacheLayer(DynamicLayer):
    """A ``DynamicLayer`` whose real tokens are a view into ``[extra ; real]`` storage (see the
    module docstring); without such storage it is a plain ``DynamicLayer``.

    Example::

        >>> cache = DynamicCache()
        >>> model.generate(input_ids, past_key_values=cache, max_new_tokens=4)   # prefix active
        >>> type(cache.layers[0]).__name__, cache.get_seq_length()   # real tokens only
        ('JoinedCacheLayer', input_ids.shape[1] + 3)
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        joined = self.__dict__.get("_adapters_joined")
        if joined is None or not joined.holds(self.keys, self.values):
            self.__dict__.pop("_adapters_joined", None)  # the tensors were replaced: a plain layer again
            return super().update(key_states, value_states, *args, **kwargs)
        joined = self.__dict__["_adapters_joined"] = _Joined.of(
            joined.extra_keys,
            joined.extra_values,
            torch.cat((joined.keys, key_states), dim=-2),
            torch.cat((joined.values, value_states), dim=-2),
        )
        self.keys, self.values = joined.real_keys, joined.real_values
        return self.keys, self.values


def cache_layer_lists(cache) -> tuple:
    """The ``layers`` lists of a KV cache (a ``DynamicCache``, or both parts of an
    ``EncoderDecoderCache``) where :func:`join_with_cache` may keep joins; ``()`` for None or other
    caches. Read once per forward pass.

    Example::

        >>> cache_layer_lists(DynamicCache()) == ([],)
        True
    """
    parts = [cache] if isinstance(cache, DynamicCache) else []
    if isinstance(cache, EncoderDecoderCache):
        parts = [cache.self_attention_cache, cache.cross_attention_cache]
    return tuple(part.layers for part in parts if isinstance(part, DynamicCache))


def join_with_cache(layer_lists: tuple, module, extra_keys, extra_values, keys, values, keep: bool):
    """``([extra_keys ; keys], [extra_values ; values])`` along the sequence.

    Where ``keys``/``values`` are the tensors of a plain dynamic layer of the forward pass's KV
    cache (``layer_lists``: :func:`cache_layer_lists`), the join is kept by that layer when
    ``keep`` (the extra tensors stay the same objects from call to call) and no gradient is
    recorded; a later call with the same extra tensors then reuses it, grown by the layer's
    updates, instead of copying.

    Example::

        >>> keys, values = join_with_cache(context.kv_cache_layers, attention, prefix_keys, prefix_values, keys, values, keep=True)
    """
    layer = None
    layer_idx = module.__dict__.get("layer_idx")
    if layer_idx is not None:
        for layers in layer_lists:
            if layer_idx < len(layers):
                candidate = layers[layer_idx]
                if type(candidate) in _PLAIN_LAYERS and candidate.keys is keys and candidate.values is values:
                    layer = candidate
                    break
    if layer is not None:
        joined = layer.__dict__.get("_adapters_joined")
        if joined is not None and joined.extra_keys is extra_keys and joined.extra_values is extra_values and joined.holds(keys, values):
            return joined.keys, joined.values
    joined_keys = torch.cat((extra_keys, keys), dim=2)
    joined_values = torch.cat((extra_values, values), dim=2)
    if layer is not None and keep and not torch.is_grad_enabled():
        joined = _Joined.of(extra_keys, extra_values, joined_keys, joined_values)
        layer.__class__ = JoinedCacheLayer
        layer.__dict__["_adapters_joined"] = joined
        layer.keys, layer.values = joined.real_keys, joined.real_values
    return joined_keys, joined_values


_PLAIN_LAYERS = (DynamicLayer, JoinedCacheLayer)
