"""GPT-2: pre-LN decoder blocks computing ``x + attn(ln_1(x))`` and then ``x + mlp(ln_2(x))``;
bottleneck adapters live in new ``attention_adapters`` / ``output_adapters`` children of each
block (AdapterHub's keys).

Every projection is a transformers ``Conv1D`` (weight stored ``(in, out)``; LoRA reads it through
an ``(out, in)`` view). Attention computes ``[q | k | v]`` with one fused ``attn.c_attn``: the spec
names it for query, key and value alike, so LoRA with ``attn_matrices=["q", "v"]`` covers the q
and v thirds of its output only, one rank-``r`` update per third (see
:mod:`adapters.methods.lora`). LoRA placement follows AdapterHub's GPT-2 support: ``selfattn`` on
``attn.c_attn``, ``intermediate_lora`` on ``mlp.c_fc``, ``output_lora`` on ``mlp.c_proj``; ``"o"``
(which AdapterHub did not offer) is ``attn.c_proj``.
"""

from __future__ import annotations

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["GPT2"]

GPT2 = register_architecture(
    ArchitectureSpec(
        name="gpt2",
        model_types=("gpt2",),
        stacks=(
            StackSpec(
                layers="h",
                residual_hooks=(
                    ResidualHook(
                        "mh_adapter",
                        host="attention_adapters",
                        create_host=True,
                        residual_source="ln_1",
                        sublayer="attn",
                    ),
                    ResidualHook(
                        "output_adapter",
                        host="output_adapters",
                        create_host=True,
                        residual_source="ln_2",
                        sublayer="mlp",
                    ),
                ),
                attention="attn",
                query="attn.c_attn",
                key="attn.c_attn",
                value="attn.c_attn",
                attn_output="attn.c_proj",
                ffn_in=("mlp.c_fc",),
                ffn_out="mlp.c_proj",
                intermediate_lora=("mlp.c_fc",),
                output_lora=("mlp.c_proj",),
            ),
        ),
        embeddings="wte",
        embedding_output="drop",  # token + position embeddings, after dropout
        pre_ln=True,
    )
)
