"""Gemma 2 and Gemma 3 (text): pre-LN decoder layers with a second norm on each sub-block's
output ("sandwich" norms):

``x + post_attention_layernorm(self_attn(input_layernorm(x)))`` and then
``x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))``.

Bottleneck adapters run on what the layer adds to the residual stream, i.e. on the output of the
post-norm (``post_attention_layernorm`` / ``post_feedforward_layernorm``), as on a Llama
sub-block's output; they live in new ``attention_adapters`` / ``output_adapters`` children of
each layer. Projections and LoRA placement are Llama's.

Attention details stay the model's own: the wrapper backend passes Gemma's ``softcap``
(attention-logit soft-capping) and ``sliding_window`` keyword arguments through unchanged, and
backend ``eager`` is Gemma's own ``eager_attention_forward`` (Gemma 2 defaults to it: its
soft-capping is not available in ``sdpa``). Prefix keys are visible to every query, in sliding-
window layers too: the window limits how far back a token sees the *sequence*, while the prefix is
a learned context of the layer (Li & Liang), not a part of the sequence. Gemma 3's ``q_norm`` /
``k_norm`` act on the model's own keys before the wrapper, so prefix keys are learned as
already-normalised keys.
"""

from __future__ import annotations

from .spec import ArchitectureSpec, ResidualHook, register_architecture

__all__ = ["GEMMA"]

GEMMA = register_architecture(
    ArchitectureSpec(
        name="gemma",
        model_types=("gemma2", "gemma3_text"),
        layers="layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter",
                host="attention_adapters",
                create_host=True,
                residual_source="input_layernorm",
                sublayer="post_attention_layernorm",
            ),
            ResidualHook(
                "output_adapter",
                host="output_adapters",
                create_host=True,
                residual_source="pre_feedforward_layernorm",
                sublayer="post_feedforward_layernorm",
            ),
        ),
        attention="self_attn",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attn_output="self_attn.o_proj",
        ffn_in=("mlp.gate_proj", "mlp.up_proj"),
        ffn_out="mlp.down_proj",
        embeddings="embed_tokens",
        intermediate_lora=("mlp.down_proj",),
        output_lora=("mlp.up_proj",),
        pre_ln=True,
    )
)
