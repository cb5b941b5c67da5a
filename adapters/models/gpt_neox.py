"""GPT-NeoX (Pythia, GPT-NeoX-20B): pre-LN decoder layers, by default with a *parallel* residual,

``y = x + attn(input_layernorm(x)) + mlp(post_attention_layernorm(x))``

(``use_parallel_residual=False``: ``h = x + attn(input_layernorm(x))``, then
``y = h + mlp(post_attention_layernorm(h))``). Either way the MLP branch's residual is the input of
``post_attention_layernorm``, so one spec serves both: bottleneck adapters run on each sub-block's
output (``attention``, ``mlp``) before the layer adds it, and live in new ``attention_adapters`` /
``output_adapters`` children of each layer.

Attention computes queries, keys and values with one fused ``attention.query_key_value`` whose
output is laid out *per head*, ``[q_1 k_1 v_1 | q_2 k_2 v_2 | ...]`` (``fused_qkv_layout=
"interleaved_heads"``), not ``[q | k | v]`` as GPT-2's ``c_attn``: LoRA with ``attn_matrices=["q"]``
covers the ``d_head`` query rows of every head and nothing else, one rank-``r`` update per part.
``"o"`` is ``attention.dense``; ``intermediate_lora`` adapts ``mlp.dense_h_to_4h`` and
``output_lora`` ``mlp.dense_4h_to_h`` (GPT-NeoX was never in AdapterHub; this is BERT's and
GPT-2's placement).

Rotary embeddings cover the first ``rotary_pct`` of each head's dimensions; they act on the
model's own queries and keys before transformers' attention interface, so prefix-tuning keys
join after them (learned, already rotated keys, like PEFT's past-key-value prefixes).
"""

from __future__ import annotations

import dataclasses

from .llama import LLAMA
from ..hooks.spec import register_architecture

__all__ = ["GPT_NEOX"]

GPT_NEOX = register_architecture(
    dataclasses.replace(
        LLAMA,
        name="gpt_neox",
        model_types=("gpt_neox",),
        for_model=None,  # (Llama's picks the FFN LoRA placement of Qwen 2 / 3)
        stacks=(
            dataclasses.replace(
                LLAMA.stacks[0],
                residual_hooks=(
                    dataclasses.replace(LLAMA.stacks[0].residual_hooks[0], sublayer="attention"),
                    LLAMA.stacks[0].residual_hooks[1],
                ),
                attention="attention",
                query="attention.query_key_value",
                key="attention.query_key_value",
                value="attention.query_key_value",
                attn_output="attention.dense",
                ffn_in=("mlp.dense_h_to_4h",),
                ffn_out="mlp.dense_4h_to_h",
                intermediate_lora=("mlp.dense_h_to_4h",),
                output_lora=("mlp.dense_4h_to_h",),
            ),
        ),
        fused_qkv_layout="interleaved_heads",
        embeddings="embed_in",
        embedding_output="emb_dropout",
    )
)
