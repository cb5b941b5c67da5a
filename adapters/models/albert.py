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
Checkpoints with several layer groups (``num_hidden_groups > 1``, not used by the released
models) would make the layers a list of lists and are refused at :func:`adapters.init`.

LoRA places ``selfattn`` on ``attention.query`` / ``key`` / ``value`` (``"o"``: ``attention.dense``),
``intermediate_lora`` on ``ffn`` and ``output_lora`` on ``ffn_output`` (AdapterHub's placement).
Invertible adapters and prompt tuning act on the ``embeddings`` output, in ``embedding_size``, the
space the masked-LM head's ``predictions.decoder`` reads too (as for ELECTRA).
"""

from __future__ import annotations

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["ALBERT"]

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
        config_requirements=(
            (
                "num_hidden_groups",
                1,
                "adapters place modules in the layers of one shared layer group; a model with several groups "
                "(num_hidden_groups > 1) is not supported",
            ),
        ),
    )
)
