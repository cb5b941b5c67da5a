"""GPT-J: pre-LN decoder blocks with a *parallel* residual: one norm feeds both sub-blocks,

``y = x + attn(ln_1(x)) + mlp(ln_1(x))``.

Both bottleneck positions therefore take ``x`` from the input of ``ln_1`` and run on their
sub-block's output (``attn``, ``mlp``) before the block sums them; adapters live in new
``attention_adapters`` / ``output_adapters`` children of each block. Projections are separate
(``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``; FFN ``fc_in`` / ``fc_out``), and LoRA places
``intermediate_lora`` on ``mlp.fc_in`` and ``output_lora`` on ``mlp.fc_out``.

GPT-J's attention computes its scores itself instead of calling transformers' attention interface,
so prefix tuning (which enters through that interface, never by copying attention code) is refused
for it with an error; every other method works.
"""

from __future__ import annotations

import dataclasses

from .gpt2 import GPT2
from ..hooks.spec import register_architecture

__all__ = ["GPTJ"]

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
                    dataclasses.replace(GPT2.stacks[0].residual_hooks[1], residual_source="ln_1"),
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
        attention_interface=False,
    )
)
