"""Gemma 2 and Gemma 3 (text): pre-LN decoder layers with a second norm on each sub-block's
output ("sandwich" norms):

``x + post_attention_layernorm(self_attn(input_layernorm(x)))`` and then
``x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))``.

Bottleneck adapters run where AdapterHub's plug-in interface (which runs Gemma 2 / 3) runs them,
so that its checkpoints compute what they were trained to: on the sub-block's output ``o``
(``self_attn`` / ``mlp``) *before* its post-norm ``N`` (``post_attention_layernorm`` /
``post_feedforward_layernorm``), with ``x`` the residual stream entering the sub-block
(:attr:`~adapters.hooks.spec.ResidualHook.sublayer_norm`). A sequential adapter with
``original_ln_before`` reads ``N(o + x)`` and returns ``a = f(N(o + x)) + o``; one without reads
``o``; a parallel one reads ``x`` and returns ``f(x) + o``; the model then adds ``x + N(a)``, its own
post step. ``N`` is each layer's own norm (AdapterHub's interface reads the last layer's norm in
every layer, a late-binding defect pinned in tests/test_fixtures_adapterhub_archs.py).
``original_ln_after=False`` (the adapter's output as the block output, past ``N``) has no place
here and is refused, as AdapterHub refuses it. The adapters live in new ``attention_adapters`` /
``output_adapters`` children of each layer. Projections are Llama's; the FFN's LoRA is placed as
AdapterHub's plug-in interface (which runs Gemma 2 / 3) places it: ``intermediate_lora`` on ``mlp.up_proj``, ``output_lora`` on
``mlp.down_proj`` (:func:`~adapters.models.llama.with_interface_ffn_lora`).

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

from .llama import LLAMA, with_interface_ffn_lora
from ..hooks.spec import register_architecture

__all__ = ["GEMMA", "gemma_spec_for_model"]


def gemma_spec_for_model(model):
    """:data:`GEMMA`, and for Gemma 2 with its ``embed_scale`` as the embedding's own factor
    (:attr:`~adapters.hooks.spec.ArchitectureSpec.embedding_scale`): transformers 5 moved Gemma 2's
    √hidden scaling into the embedding module, and AdapterHub's invertible adapters, trained on
    transformers 4, act before it. Gemma 3 scaled inside the module on both, so its adapters act
    after it.

    Example::

        >>> gemma_spec_for_model(gemma2_model).embedding_scale, gemma_spec_for_model(gemma3_model).embedding_scale
        ('embed_scale', None)
    """
    if model.config.model_type == "gemma2":
        return dataclasses.replace(GEMMA, embedding_scale="embed_scale", for_model=None)
    return dataclasses.replace(GEMMA, for_model=None)


# Llama's layer and projections; a bottleneck reads the sub-block's output before its post-norm
GEMMA = register_architecture(
    dataclasses.replace(with_interface_ffn_lora(dataclasses.replace(
        LLAMA,
        name="gemma",
        model_types=("gemma2", "gemma3_text"),
        stacks=(
            dataclasses.replace(
                LLAMA.stacks[0],
                residual_hooks=(
                    dataclasses.replace(LLAMA.stacks[0].residual_hooks[0], sublayer_norm="post_attention_layernorm"),
                    dataclasses.replace(
                        LLAMA.stacks[0].residual_hooks[1],
                        residual_source="pre_feedforward_layernorm",
                        sublayer_norm="post_feedforward_layernorm",
                    ),
                ),
            ),
        ),
    )), for_model=gemma_spec_for_model)
)
