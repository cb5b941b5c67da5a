"""BERT family (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA): post-LN encoder layers.

The output blocks compute ``LayerNorm(dropout(dense(a)) + input_tensor)`` and own the adapters
(keys ``...attention.output.adapters.<name>`` and ``...output.adapters.<name>``, as AdapterHub).

ELECTRA has BERT's layers; only its embeddings may be narrower than the layers
(``embedding_size < hidden_size``, then ``embeddings_project`` maps them up). Invertible
adapters and prompt tuning act on the ``embeddings`` output, in ``embedding_size`` — the space
the masked-LM head's ``generator_lm_head`` reads too, so the inverse runs there.
"""

from __future__ import annotations

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["BERT"]

BERT = register_architecture(
    ArchitectureSpec(
        name="bert",
        model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra"),
        stacks=(
            StackSpec(
                layers="encoder.layer",
                residual_hooks=(
                    ResidualHook(
                        "mh_adapter",
                        host="attention.output",
                        residual_source="attention.output",
                        residual_arg=1,
                        residual_kwarg="input_tensor",
                        norm="attention.output.LayerNorm",
                        sublayer_output="attention.output.dropout",  # h itself, before the model adds x
                    ),
                    ResidualHook(
                        "output_adapter",
                        host="output",
                        residual_source="output",
                        residual_arg=1,
                        residual_kwarg="input_tensor",
                        norm="output.LayerNorm",
                        sublayer_output="output.dropout",  # h itself, before the model adds x
                    ),
                ),
                attention="attention.self",
                query="attention.self.query",
                key="attention.self.key",
                value="attention.self.value",
                attn_output="attention.output.dense",
                ffn_in=("intermediate.dense",),
                ffn_out="output.dense",
                intermediate_lora=("intermediate.dense",),
                output_lora=("output.dense",),
            ),
        ),
        embeddings="embeddings",
        pre_ln=False,
    )
)
