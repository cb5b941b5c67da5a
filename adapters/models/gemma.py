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

import dataclasses

from .llama import LLAMA
from ..hooks.spec import register_architecture

__all__ = ["GEMMA"]

# Llama's layer and projections; the sub-block output a bottleneck reads is its post-norm's
GEMMA = register_architecture(
    dataclasses.replace(
        LLAMA,
        name="gemma",
        model_types=("gemma2", "gemma3_text"),
        stacks=(
            dataclasses.replace(
                LLAMA.stacks[0],
                residual_hooks=(
                    dataclasses.replace(LLAMA.stacks[0].residual_hooks[0], sublayer="post_attention_layernorm"),
                    dataclasses.replace(
                        LLAMA.stacks[0].residual_hooks[1],
                        residual_source="pre_feedforward_layernorm",
                        sublayer="post_feedforward_layernorm",
                    ),
                ),
            ),
        ),
    )
)
