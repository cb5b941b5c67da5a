"""ALBERT (Lan et al., 2020): BERT's post-LN layer with cross-layer parameter sharing. One
``AlbertLayer`` (the single layer of the single layer group, ``encoder.albert_layer_groups.0``)
is applied ``num_hidden_layers`` times; the token embeddings are ``embedding_size`` wide and
``encoder.embedding_hidden_mapping_in`` projects them up to ``hidden_size``.

The layer's two residual blocks are

* attention: ``attention.LayerNorm(x + dropout(attention.dense(a)))``, computed inside
  ``AlbertAttention``; the bottleneck adapters live in a new ``attention.attention_adapters``
  child, as in AdapterHub;
* FFN: ``full_layer_layer_norm(ffn_output(act(ffn(y))) + y)``, with ``y`` read from the input of
  ``ffn``; adapters in a new ``output_adapters`` child of the layer.

**Sharing.** Adapters belong to the shared layer, as the layer's own weights do (AdapterHub's
semantics): one adapter per position, the same at every depth. Layer indices therefore name the
*distinct* layers (``0 … inner_group_num − 1``), not the ``num_hidden_layers`` applications:
``leave_out=[0]`` removes an adapter from the whole stack, and larger indices are errors
(``leave_out`` names layers the model does not have). The same holds for prefix tuning (one prefix
per distinct layer, seen at every application), LoRA's ``layers_to_transform`` and Llama-Adapter.

**Several layer groups** (``num_hidden_groups = G > 1``: group ``g`` runs for the ``g``-th ``1/G``
of the depth) are numbered as AdapterHub numbers them, group after group: the layers of group
``g`` are ``g·I … g·I + I − 1`` (``I = inner_group_num``). The spec of such a model has one
layer stack per group (:attr:`~adapters.hooks.spec.ArchitectureSpec.for_model`), each with the
positions above; every group's adapters are shared by that group's applications only.

LoRA places ``selfattn`` on ``attention.query`` / ``key`` / ``value`` (``"o"``: ``attention.dense``),
``intermediate_lora`` on ``ffn`` and ``output_lora`` on ``ffn_output`` (AdapterHub's placement).
Invertible adapters and prompt tuning act on the ``embeddings`` output, in ``embedding_size``, the
space the masked-LM head's ``predictions.decoder`` reads too (as for ELECTRA).
"""

from __future__ import annotations

import dataclasses

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["ALBERT", "albert_spec_for_groups"]


def albert_spec_for_groups(model) -> ArchitectureSpec:
    """The spec of an ALBERT model: :data:`ALBERT` for one layer group, else one stack per group
    (roles ``layers``, ``layers.group1``, ...: stacks over the same positions), numbered group after
    group as AdapterHub numbers them.

    Example::

        >>> [s.layers for s in albert_spec_for_groups(model_with_two_groups).stacks]
        ['encoder.albert_layer_groups.0.albert_layers', 'encoder.albert_layer_groups.1.albert_layers']
    """
    groups = model.config.num_hidden_groups
    if groups == 1:
        return dataclasses.replace(ALBERT, for_model=None)
    layer = ALBERT.stacks[0]
    stacks = tuple(
        # every group reads the same positions: roles "layers", then "layers.group1", ... (one per stack)
        dataclasses.replace(
            layer, layers=f"encoder.albert_layer_groups.{group}.albert_layers",
            role="layers" if group == 0 else f"layers.group{group}",
        )
        for group in range(groups)
    )
    return dataclasses.replace(ALBERT, stacks=stacks, for_model=None)


ALBERT = register_architecture(
    ArchitectureSpec(
        name="albert",
        model_types=("albert",),
        stacks=(
            StackSpec(
                layers="encoder.albert_layer_groups.0.albert_layers",
                residual_hooks=(
                    ResidualHook(
                        "mh_adapter",
                        host="attention.attention_adapters",
                        create_host=True,
                        residual_source="attention",
                        residual_arg=0,
                        residual_kwarg="hidden_states",
                        norm="attention.LayerNorm",
                    ),
                    ResidualHook(
                        "output_adapter",
                        host="output_adapters",
                        create_host=True,
                        residual_source="ffn",
                        residual_arg=0,
                        residual_kwarg="input",
                        norm="full_layer_layer_norm",
                    ),
                ),
                attention="attention",
                query="attention.query",
                key="attention.key",
                value="attention.value",
                attn_output="attention.dense",
                ffn_in=("ffn",),
                ffn_out="ffn_output",
                intermediate_lora=("ffn",),
                output_lora=("ffn_output",),
            ),
        ),
        embeddings="embeddings",
        pre_ln=False,
        for_model=albert_spec_for_groups,
    )
)
