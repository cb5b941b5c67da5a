"""CLIP's towers on their own: ``CLIPTextModel`` (model type ``clip_text_model``) and
``CLIPVisionModel`` (``clip_vision_model``), and the towers' ``...WithProjection`` variants.

Both towers stack the same pre-LN layer, ``x + self_attn(layer_norm1(x))`` then
``x + mlp(layer_norm2(x))``: bottleneck adapters run on each sub-block's output and live in new
``attention_adapters`` / ``output_adapters`` children of each layer (AdapterHub's keys). LoRA places
``selfattn`` on ``self_attn.q_proj`` / ``k_proj`` / ``v_proj`` (``"o"``: ``self_attn.out_proj``),
``intermediate_lora`` on ``mlp.fc1`` and ``output_lora`` on ``mlp.fc2``, as AdapterHub did. Prefix
tuning enters through transformers' attention interface (the text tower's causal mask included).

transformers 5 dropped the ``text_model.`` / ``vision_model.`` level of the single towers, and
renames old checkpoint keys with its conversion mapping; :func:`adapters.load_adapter` applies the
same renaming, so AdapterHub checkpoints of the towers load.

* Text: the pooled output is the final state at the end-of-text token, which the model finds in
  ``input_ids``; a soft prompt would shift that position, so **prompt tuning is refused** (as in
  AdapterHub). Invertible adapters act on the ``embeddings`` output (tokens plus positions).
* Vision: the soft prompt joins the ``embeddings`` output ([CLS] and patches with their
  positions), before ``pre_layrnorm``, which normalises it with them (with ``combine="prefix"``
  the pooled output reads the first prompt position; ``"prefix_after_bos"`` keeps [CLS] first).
  Invertible adapters act on the ``pre_layrnorm`` output, which layer 0 reads.

``CLIPModel`` (both towers in one model) needs two layer stacks and is not served by these specs.
"""

from __future__ import annotations

import dataclasses

from .spec import ArchitectureSpec, ResidualHook, register_architecture

__all__ = ["CLIP_TEXT", "CLIP_VISION"]

CLIP_TEXT = register_architecture(
    ArchitectureSpec(
        name="clip_text_model",
        model_types=("clip_text_model",),
        layers="encoder.layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter",
                host="attention_adapters",
                create_host=True,
                residual_source="layer_norm1",
                sublayer="self_attn",
            ),
            ResidualHook(
                "output_adapter",
                host="output_adapters",
                create_host=True,
                residual_source="layer_norm2",
                sublayer="mlp",
            ),
        ),
        attention="self_attn",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attn_output="self_attn.out_proj",
        ffn_in=("mlp.fc1",),
        ffn_out="mlp.fc2",
        embeddings="embeddings.token_embedding",
        embedding_output="embeddings",
        intermediate_lora=("mlp.fc1",),
        output_lora=("mlp.fc2",),
        refused_methods=(
            (
                "prompt_tuning",
                "the pooled output is taken at the end-of-text token found in input_ids, and a soft prompt "
                "would shift it to another position",
            ),
        ),
        pre_ln=True,
    )
)

CLIP_VISION = register_architecture(
    dataclasses.replace(
        CLIP_TEXT,
        name="clip_vision_model",
        model_types=("clip_vision_model",),
        embeddings="embeddings",
        embedding_output="pre_layrnorm",
        refused_methods=(),
    )
)
