"""Phi-3: Llama's pre-LN layer (``x + self_attn(input_layernorm(x))``, then
``x + mlp(post_attention_layernorm(x))``) with two fused projections:

* ``self_attn.qkv_proj`` computes ``[q | k | v]``; under grouped-query attention (Phi-3-medium)
  k and v have ``num_key_value_heads`` heads and q ``num_attention_heads``, so the parts differ
  in size (``fused_qkv_heads``). LoRA with ``attn_matrices`` covers only the selected parts, one
  rank-``r`` update per part; parts of different sizes cannot share that layout and are refused
  with an error that names the alternatives (``["k", "v"]``, or the whole module through
  ``target_modules``).
* ``mlp.gate_up_proj`` computes ``[gate | up]``; it is the FFN input projection as a whole.

LoRA placement (Phi-3 was never in AdapterHub): ``intermediate_lora`` on the FFN input
``mlp.gate_up_proj``, ``output_lora`` on the FFN output ``mlp.down_proj``, as for BERT and
GPT-2. Bottleneck adapters live in new ``attention_adapters`` / ``output_adapters`` children of
each layer and run on the sub-block outputs, before the model's residual dropout.
"""

from __future__ import annotations

import dataclasses

from .llama import LLAMA
from ..hooks.spec import register_architecture

__all__ = ["PHI3"]

# Llama's layer with fused [q | k | v] and [gate | up] projections
PHI3 = register_architecture(
    dataclasses.replace(
        LLAMA,
        name="phi3",
        model_types=("phi3",),
        for_model=None,  # (Llama's picks the FFN LoRA placement of Qwen 2 / 3)
        stacks=(
            dataclasses.replace(
                LLAMA.stacks[0],
                query="self_attn.qkv_proj",
                key="self_attn.qkv_proj",
                value="self_attn.qkv_proj",
                ffn_in=("mlp.gate_up_proj",),
                intermediate_lora=("mlp.gate_up_proj",),
                output_lora=("mlp.down_proj",),
            ),
        ),
        fused_qkv_heads=("num_attention_heads", "num_key_value_heads", "num_key_value_heads"),
    )
)
