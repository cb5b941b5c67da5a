"""GPT-J: pre-LN decoder blocks with a *parallel* residual: one norm feeds both sub-blocks,

``y = x + attn(ln_1(x)) + mlp(ln_1(x))``.

Both bottleneck positions therefore take ``x`` from the input of ``ln_1`` and run on their
sub-block's output (``attn``, ``mlp``) before the block sums them; as in AdapterHub, the FFN
position's residual stream is the one after the attention adapters (``x + attn'``,
``ResidualHook.residual_from``), so its adapters read ``mlp + x + attn'``; adapters live in new
``attention_adapters`` / ``output_adapters`` children of each block. Projections are separate
(``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``; FFN ``fc_in`` / ``fc_out``), and LoRA places
``intermediate_lora`` on ``mlp.fc_in`` and ``output_lora`` on ``mlp.fc_out``.

Prefix tuning enters through transformers' attention interface, which GPT-J's attention calls from
transformers 5.24 on. Earlier releases (5.23) compute the scores in the attention's own inner
method ``_attn(query, key, value, attention_mask)``, called after the rotary embedding and the
KV-cache update with keys/values shaped ``(batch, heads, keys, head_dim)``;
:class:`GPTJPrefixAttention` (swapped onto each attention module when prefix tuning is installed)
runs that method through :func:`~adapters.hooks.attention.attend_with_contributions`, so the prefix
joins there exactly as the interface would join it (no attention code copied). Llama-Adapter's
adaption prompt, which adjusts the output of a backend call in the interface's layout, is refused.
"""

from __future__ import annotations

import dataclasses

from .gpt2 import GPT2
from ..hooks.attention import attend_with_contributions
from ..hooks.spec import register_architecture

__all__ = ["GPTJ", "GPTJPrefixAttention"]


class GPTJPrefixAttention:
    """Swapped onto ``GPTJAttention``: its inner ``_attn`` (transformers 5.23) attends over the keys
    and values methods contribute (prefix tuning's) joined in front of its own, with the mask
    extended, as transformers' attention interface does from 5.24 on (where ``_attn`` is gone and
    this class changes nothing).

    Example::

        >>> type(gptj.h[0].attn).__mro__[1] is GPTJPrefixAttention      # after adding a prefix
        True
    """

    def _attn(self, query, key, value, attention_mask=None):
        own = super()._attn

        def inner(module, query, key, value, attention_mask, **kwargs):
            return own(query, key, value, attention_mask)

        return attend_with_contributions(self, query, key, value, attention_mask, inner)

# GPT-2's block layout with one norm for both sub-blocks and separate projections
GPTJ = register_architecture(
    dataclasses.replace(
        GPT2,
        name="gptj",
        model_types=("gptj",),
        stacks=(
            dataclasses.replace(
                GPT2.stacks[0],
                residual_hooks=(
                    GPT2.stacks[0].residual_hooks[0],
                    # AdapterHub runs the FFN adapters on the stream after the attention adapters
                    dataclasses.replace(GPT2.stacks[0].residual_hooks[1], residual_source="ln_1", residual_from="mh_adapter"),
                ),
                query="attn.q_proj",
                key="attn.k_proj",
                value="attn.v_proj",
                attn_output="attn.out_proj",
                ffn_in=("mlp.fc_in",),
                ffn_out="mlp.fc_out",
                intermediate_lora=("mlp.fc_in",),
                output_lora=("mlp.fc_out",),
            ),
        ),
        attention_mixin=GPTJPrefixAttention,
        refused_methods=(
            ("adaption_prompt", "its gated prompt adjusts the output of transformers' attention interface, which GPT-J's "
             "attention calls only from transformers 5.24 on"),
        ),
    )
)
