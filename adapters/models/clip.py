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

**CLIPModel** (model type ``clip``, both towers in one model) is a two-stack family: the text
tower's layers (``text_model.encoder.layers``) come first, the vision tower's
(``vision_model.encoder.layers``) second, numbered ``0 … T−1`` and ``T … T+V−1`` as AdapterHub's
``iter_layers`` numbered them, so ``leave_out=[T]`` leaves out the first vision layer. Each tower
sizes its adapters by its own config (``text_config`` / ``vision_config``: the towers usually
differ in width). Module paths and keys are transformers 4's (``text_model.encoder.layers.N...``),
so AdapterHub checkpoints load as they are; prefix tuning keeps AdapterHub's location per tower
(``prefix_tunings.<name>.clip_text_model_self_prefix`` / ``clip_vision_model_self_prefix``).
Invertible adapters act on the text embeddings (AdapterHub's ``invertible_adapters_base_name``).

* **Prompt tuning is refused** (as in AdapterHub): the text tower pools at the end-of-text token
  it finds in ``input_ids``; the vision tower alone could take a prompt, but one adapter that
  changes only the images while its name suggests both would be a trap.
* **Llama-Adapter is refused**: it is defined for decoder-only language models.
* ``get_text_features`` / ``get_image_features`` run one tower on its own; the tower opens the
  model's forward context itself (:class:`~adapters.model_mixin.StackEntryMixin`), so the active
  adapters run there exactly as in ``forward``.
* **Parallel** replicates the texts and the images (each their own batch) once per branch; branch
  ``i`` runs its adapter in both towers. ``text_embeds`` / ``image_embeds`` (and the features)
  have the branches' rows one after the other, and the similarities compare each branch's images
  with the same branch's texts only: ``logits_per_image`` is ``(branches·M, N)`` with branch
  ``i``'s ``M × N`` block in rows ``i·M … (i+1)·M − 1`` (``logits_per_text`` likewise
  ``(branches·N, M)``); the contrastive loss is the sum of the branches' losses
  (:func:`clip_parallel_similarities`).
* ``CLIPForImageClassification`` (the vision tower alone, model type ``clip``) numbers its vision
  layers from 0.
"""

from __future__ import annotations

import dataclasses

import torch

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["CLIP_TEXT", "CLIP_VISION", "CLIP", "clip_parallel_similarities"]

# the layer stack of one tower (the same pre-LN layer in both), under the single tower's base model
_TOWER_LAYERS = StackSpec(
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
    intermediate_lora=("mlp.fc1",),
    output_lora=("mlp.fc2",),
)

CLIP_TEXT = register_architecture(
    ArchitectureSpec(
        name="clip_text_model",
        model_types=("clip_text_model",),
        stacks=(_TOWER_LAYERS,),
        embeddings="embeddings.token_embedding",
        embedding_output="embeddings",
        pre_ln=True,
        # AdapterHub files a tower's prefix under its model type even when the tower is the whole model
        legacy_key_renames=((
            r"^prefix_tuning\.prefix_tunings\.([^.]+)\.clip_(?:text|vision)_model_self_prefix\.",
            r"prefix_tuning.prefix_tunings.\1.self_prefix.",
        ),),
        # saved so: the pool on the model itself (outside the tower, where undoing transformers'
        # prefix change puts it), its copies under the tower's attention modules
        adapterhub_key_renames=(
            (r"^(text|vision)_model\.(.+\.prefix_tuning\.pool\.prefix_tunings\.[^.]+)\.self_prefix\.",
             r"\1_model.\2.clip_\1_model_self_prefix."),
            (r"^(text|vision)_model\.prefix_tuning\.prefix_tunings\.([^.]+)\.self_prefix\.",
             r"prefix_tuning.prefix_tunings.\2.clip_\1_model_self_prefix."),
        ),
        refused_methods=(
            (
                "prompt_tuning",
                "the pooled output is taken at the end-of-text token found in input_ids, and a soft prompt "
                "would shift it to another position",
            ),
        ),
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


def clip_parallel_similarities(model, output, channels: int):
    """Per-branch image-text similarities of a ``CLIPModel`` pass under ``Parallel``.

    The towers ran on ``channels`` copies of the ``N`` texts and ``M`` images (branch ``i`` in
    rows ``i·N …`` / ``i·M …``); transformers' similarity matrix would compare every branch's
    images with every branch's texts. For branch ``i`` with normalised embeddings ``t_i``,
    ``v_i`` and ``s = exp(logit_scale)``::

        logits_per_text_i = s · t_i v_iᵀ  (N × M),    logits_per_image_i = logits_per_text_iᵀ

    stacked over the branches along the rows; the loss (when asked for) is the sum over branches of
    CLIP's symmetric contrastive loss of each block.

    Example::

        >>> clip.set_active_adapters(Parallel("a", "b"))
        >>> out = clip(input_ids=ids, pixel_values=images)    # N texts, M images
        >>> out.logits_per_image.shape                         # branch a's block, then b's
        torch.Size([2 * M, N])
    """
    text, image = getattr(output, "text_embeds", None), getattr(output, "image_embeds", None)
    if getattr(output, "logits_per_text", None) is None or text is None or image is None:
        return output
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss

    scale = model.base_model.logit_scale.exp().to(text.device)
    blocks = [t @ v.t().to(t.device) * scale for t, v in zip(text.chunk(channels), image.chunk(channels))]
    output.logits_per_text = torch.cat(blocks)
    output.logits_per_image = torch.cat([block.t() for block in blocks])
    if output.get("loss") is not None:
        output.loss = torch.stack([image_text_contrastive_loss(block) for block in blocks]).sum()
    return output


def _tower(prefix: str, **fields) -> StackSpec:
    """The layer stack of one CLIP tower inside ``CLIPModel`` (its layers under
    ``<prefix>.encoder.layers``), with ``fields`` set."""
    return dataclasses.replace(_TOWER_LAYERS, layers=f"{prefix}.{_TOWER_LAYERS.layers}", **fields)


CLIP = register_architecture(
    ArchitectureSpec(
        name="clip",
        model_types=("clip",),
        # each tower sized by its own sub-config; prefixes filed per tower as AdapterHub did (<model_type>_self_prefix)
        stacks=(
            _tower("text_model", role="text", sub_config="text_config", attention_location="clip_text_model_self"),
            _tower(
                "vision_model", role="vision", sub_config="vision_config", attention_location="clip_vision_model_self"
            ),
        ),
        embeddings="text_model.embeddings.token_embedding",
        embedding_output="text_model.embeddings",
        pre_ln=True,
        # AdapterHub keeps the invertible adapters in the text tower (text_model.invertible_adapters.<name>)
        legacy_key_renames=((r"^text_model\.invertible_adapters\.", "invertible_adapters."),),
        adapterhub_key_renames=((r"^invertible_adapters\.", "text_model.invertible_adapters."),),
        entry_modules=("text_model", "vision_model"),
        parallel_output=clip_parallel_similarities,
        refused_methods=(
            (
                "prompt_tuning",
                "the text tower pools at the end-of-text token found in input_ids, which a soft prompt would "
                "shift, and a prompt for the image tower alone is not offered (as in AdapterHub)",
            ),
            (
                "adaption_prompt",
                "Llama-Adapter is defined for decoder-only language models; CLIP's towers are encoders",
            ),
        ),
    )
)
