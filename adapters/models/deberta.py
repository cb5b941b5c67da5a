"""DeBERTa-v2 (and v3, which shares its model type): BERT's post-LN layers — the output blocks
compute ``LayerNorm(dropout(dense(a)) + input_tensor)`` and own the adapters, with AdapterHub's
keys (``...attention.output.adapters.<name>``, ``...output.adapters.<name>``) — around a
*disentangled* self-attention whose projections are ``query_proj`` / ``key_proj`` /
``value_proj``.

Disentangled attention adds content-to-position and position-to-content scores computed from
relative-position embeddings, in the attention module's own code, which does not call
transformers' attention interface. Prefix tuning enters it through :class:`DisentangledPrefixAttention`
(swapped onto each ``DisentangledSelfAttention`` when prefix tuning is installed; no attention code
copied): the module's own head split ``transpose_for_scores`` puts the prefix keys/values in front
of the real ones, its ``disentangled_attention_bias`` scores the real keys only and gives the
prefix keys no relative-position score (they have no position; AdapterHub's choice as well), and
the mask gains one column per prefix position. Llama-Adapter (which adjusts an attention-interface
output) is refused; every other method works.

Prompt tuning joins the prompt to the ``embeddings`` output, as AdapterHub does (and as for BERT):
the text keeps its positions and the prompt enters the layers as it is. DeBERTa's embedding module
multiplies its output by the attention mask itself (its ``mask`` argument); it is handed the mask of
the text positions (``embedding_mask``), the layers the mask extended by the prompt's. Invertible
adapters act on the ``embeddings`` output, which layer 0 reads.
"""

from __future__ import annotations

import dataclasses

import torch

from .bert import BERT
from ..context import ForwardContext
from ..hooks.attention import contributed_keys_values
from ..hooks.spec import register_architecture

__all__ = ["DEBERTA_V2", "DisentangledPrefixAttention", "FusedDisentangledPrefixAttention"]


def _pending_prefix(module):
    """The prefix state ``[keys, values, calls so far]`` of ``module``'s running forward, or None.

    It lives in the pass's forward context (per pass and per thread), never on the module: two
    threads running one model at once each see only their own pass's prefix.
    """
    context = ForwardContext.get_context()
    return None if context is None else context.hook_values.get(("pending_prefix", id(module)))


class _PrefixPass:
    """What both DeBERTa prefix hooks do around the module's own forward: find this pass's prefix
    keys and values, and keep them as the pass's pending prefix while the forward runs."""

    def _prefix_of_this_pass(self, hidden_states):
        """The keys and values methods contribute to this module in this pass, or None."""
        context = ForwardContext.get_context()
        if context is None or not context.attention_extended:
            return None
        context.hook_values[("attention_input", id(self))] = hidden_states  # for prefix gates
        probe = hidden_states.new_empty(hidden_states.shape[0], self.num_attention_heads, 0, self.attention_head_size)
        return contributed_keys_values(self, probe, probe, probe)

    @staticmethod
    def _valid_prefix(extension, rows: int, device) -> torch.Tensor:
        """``(rows, P)``: which prefix positions each row attends to."""
        if extension.valid is not None:
            return extension.valid
        return torch.ones(rows, extension.keys.shape[2], dtype=torch.bool, device=device)

    def _forward_with_pending(self, extension, *args, **kwargs):
        """The module's own forward, with ``extension`` pending for ``transpose_for_scores`` and
        the position-score method of this pass (counted calls start at 0)."""
        hook_values = ForwardContext.get_context().hook_values
        key = ("pending_prefix", id(self))
        hook_values[key] = [extension.keys, extension.values, 0]
        try:
            return super().forward(*args, **kwargs)
        finally:
            hook_values.pop(key, None)


class DisentangledPrefixAttention(_PrefixPass):
    """Swapped onto DeBERTa's ``DisentangledSelfAttention``: attention over the keys and values
    methods contribute (prefix tuning's ``P`` positions) joined in front of the real ones.

    The module's forward splits its projections into heads with ``transpose_for_scores`` in the
    order query, key, value (then the relative-position projections); while a pass has a prefix for
    this module, the second and third of those calls get the prefix keys and values prepended
    (``(batch·heads, P + T, head_dim)``, the module's own layout). ``disentangled_attention_bias``
    runs on the real keys and its scores get ``P`` zero columns in front, and the mask one "attend"
    column per valid prefix position for every query.

    Example::

        >>> model.add_adapter("p", config="prefix_tuning", set_active=True)
        >>> isinstance(model.encoder.layer[0].attention.self, DisentangledPrefixAttention)
        True
    """

    def forward(self, hidden_states, attention_mask, *args, **kwargs):
        extension = self._prefix_of_this_pass(hidden_states)
        if extension is None:
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        n_extra = extension.keys.shape[2]
        rows, queries = hidden_states.shape[0], attention_mask.shape[-2]
        valid = self._valid_prefix(extension, rows, hidden_states.device)
        extra_mask = valid[:, None, None, :].expand(rows, 1, queries, n_extra).to(attention_mask.dtype)
        attention_mask = torch.cat([extra_mask, attention_mask.expand(rows, -1, -1, -1)], dim=-1)
        context_layer, probabilities = self._forward_with_pending(extension, hidden_states, attention_mask, *args, **kwargs)
        if probabilities is not None:
            probabilities = probabilities[..., n_extra:]  # the caller sees attention over its own tokens
        return context_layer, probabilities

    def transpose_for_scores(self, x, attention_heads):
        split = super().transpose_for_scores(x, attention_heads)
        pending = _pending_prefix(self)
        if pending is None:
            return split
        pending[2] += 1  # calls so far in this forward: 1 query, 2 key, 3 value, then positions
        if pending[2] not in (2, 3):
            return split
        extra = pending[pending[2] - 2]  # (batch, heads, P, head_dim) -> the module's (batch·heads, P, head_dim)
        return torch.cat([extra.reshape(-1, extra.shape[2], extra.shape[3]).to(split.dtype), split], dim=1)

    def disentangled_attention_bias(self, query_layer, key_layer, relative_pos, rel_embeddings, scale_factor):
        pending = _pending_prefix(self)
        if pending is None:
            return super().disentangled_attention_bias(query_layer, key_layer, relative_pos, rel_embeddings, scale_factor)
        n_extra = pending[0].shape[2]
        score = super().disentangled_attention_bias(query_layer, key_layer[:, n_extra:], relative_pos, rel_embeddings, scale_factor)
        if not isinstance(score, torch.Tensor):
            return score
        return torch.cat([score.new_zeros(*score.shape[:-1], n_extra), score], dim=-1)


class FusedDisentangledPrefixAttention(_PrefixPass):
    """The prefix hook of DeBERTa (v1)'s ``DisentangledSelfAttention``, whose one projection
    ``in_proj`` is split per head into ``[q_h | k_h | v_h]`` by a single ``transpose_for_scores``
    call (then ``q_bias`` / ``v_bias`` are added).

    Rows cannot be added to the keys alone there, so the ``P`` prefix positions enter as rows of
    that split: ``[0 | P^K | P^V − v_bias]`` (the value bias is added to every row afterwards, so
    the prefix values come out as they are). The ``P`` extra query rows this creates attend to
    everything and are cut off the output; the real queries see the prefix keys (with no
    relative-position score, as in DeBERTa-v2) and their own keys as before.

    Example::

        >>> model.add_adapter("p", config="prefix_tuning", set_active=True)
        >>> isinstance(deberta.encoder.layer[0].attention.self, FusedDisentangledPrefixAttention)
        True
    """

    def forward(self, hidden_states, attention_mask, *args, **kwargs):
        extension = self._prefix_of_this_pass(hidden_states)
        if extension is None:
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        if kwargs.get("query_states", args[1] if len(args) > 1 else None) is not None:
            raise RuntimeError(
                f"{type(self).__name__}: prefix tuning joins DeBERTa's fused q/k/v split, which a call with separate "
                f"query_states (config.z_steps > 1) does not make; deactivate the prefix or use z_steps <= 1."
            )
        rows, length, n_extra = hidden_states.shape[0], attention_mask.shape[-1], extension.keys.shape[2]
        device, dtype = attention_mask.device, attention_mask.dtype
        valid = self._valid_prefix(extension, rows, device)
        real_rows = torch.cat([valid[:, None, None, :].expand(rows, 1, length, n_extra).to(dtype),
                               attention_mask.expand(rows, -1, -1, -1)], dim=-1)
        extra_rows = torch.ones(rows, 1, n_extra, n_extra + length, dtype=dtype, device=device)  # cut off below
        attention_mask = torch.cat([extra_rows, real_rows], dim=2)
        context_layer, probabilities = self._forward_with_pending(extension, hidden_states, attention_mask, *args, **kwargs)
        if probabilities is not None:
            probabilities = probabilities[..., n_extra:, n_extra:]
        return context_layer[:, n_extra:], probabilities

    def transpose_for_scores(self, x):
        split = super().transpose_for_scores(x)
        pending = _pending_prefix(self)
        if pending is None:
            return split
        pending[2] += 1  # the first call splits in_proj's output: (batch, heads, T, 3·head_dim)
        if pending[2] != 1:
            return split
        keys, values = (t.to(split.dtype) for t in pending[:2])
        value_bias = self.v_bias.view(self.num_attention_heads, -1)[None, :, None, :].to(split.dtype)
        prefix_rows = torch.cat([torch.zeros_like(keys), keys, values - value_bias], dim=-1)
        return torch.cat([prefix_rows, split], dim=2)

    def disentangled_att_bias(self, query_layer, key_layer, relative_pos, rel_embeddings, scale_factor):
        pending = _pending_prefix(self)
        if pending is None:
            return super().disentangled_att_bias(query_layer, key_layer, relative_pos, rel_embeddings, scale_factor)
        n_extra = pending[0].shape[2]
        score = super().disentangled_att_bias(
            query_layer[:, :, n_extra:], key_layer[:, :, n_extra:], relative_pos, rel_embeddings, scale_factor
        )
        if not isinstance(score, torch.Tensor):
            return score
        return torch.nn.functional.pad(score, (n_extra, 0, n_extra, 0))  # no score for the prefix (rows cut off)


# BERT's layers with DeBERTa's projection names
DEBERTA_V2 = register_architecture(
    dataclasses.replace(
        BERT,
        name="deberta-v2",
        model_types=("deberta-v2",),
        stacks=(
            dataclasses.replace(
                BERT.stacks[0],
                query="attention.self.query_proj",
                key="attention.self.key_proj",
                value="attention.self.value_proj",
            ),
        ),
        embeddings="embeddings",
        embedding_mask="mask",
        attention_mixin=DisentangledPrefixAttention,
        refused_methods=(
            ("adaption_prompt", "its gated prompt adjusts the output of transformers' attention interface, which "
             "DeBERTa's disentangled attention does not call"),
        ),
    )
)
