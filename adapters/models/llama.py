"""Llama family (Llama, Mistral, Qwen2, Qwen3): pre-LN decoder layers computing
``x + self_attn(input_layernorm(x))`` and then ``x + mlp(post_attention_layernorm(x))``;
adapters live in new ``attention_adapters`` / ``output_adapters`` children of each layer
(AdapterHub's keys).

Qwen3 differs only inside attention (RMS norms ``q_norm`` / ``k_norm`` on each head of the
projected queries and keys, before rotary embeddings); prefix-tuning keys are prepended after
that, as learned, already normalised keys, like PEFT's past-key-value prefixes."""

from __future__ import annotations

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["LLAMA"]

LLAMA = register_architecture(
    ArchitectureSpec(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        stacks=(
            StackSpec(
                layers="layers",
                residual_hooks=(
                    ResidualHook(
                        "mh_adapter",
                        host="attention_adapters",
                        create_host=True,
                        residual_source="input_layernorm",
                        sublayer="self_attn",
                    ),
                    ResidualHook(
                        "output_adapter",
                        host="output_adapters",
                        create_host=True,
                        residual_source="post_attention_layernorm",
                        sublayer="mlp",
                    ),
                ),
                attention="self_attn",
                query="self_attn.q_proj",
                key="self_attn.k_proj",
                value="self_attn.v_proj",
                attn_output="self_attn.o_proj",
                ffn_in=("mlp.gate_proj", "mlp.up_proj"),
                ffn_out="mlp.down_proj",
                intermediate_lora=("mlp.down_proj",),
                output_lora=("mlp.up_proj",),
            ),
        ),
        embeddings="embed_tokens",
        pre_ln=True,
    )
)
