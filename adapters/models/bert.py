"""BERT family (BERT, RoBERTa, XLM-RoBERTa, CamemBERT): post-LN encoder layers.

The output blocks compute ``LayerNorm(dropout(dense(a)) + input_tensor)`` and own the adapters
(keys ``...attention.output.adapters.<name>`` and ``...output.adapters.<name>``, as AdapterHub).
"""

from __future__ import annotations

from .spec import ArchitectureSpec, ResidualHook, register_architecture

__all__ = ["BERT"]

BERT = register_architecture(
    ArchitectureSpec(
        name="bert",
        model_types=("bert", "roberta", "xlm-roberta", "camembert"),
        layers="encoder.layer",
        residual_hooks=(
            ResidualHook(
                "mh_adapter",
                host="attention.output",
                residual_source="attention.output",
                residual_arg=1,
                residual_kwarg="input_tensor",
                norm="attention.output.LayerNorm",
            ),
            ResidualHook(
                "output_adapter",
                host="output",
                residual_source="output",
                residual_arg=1,
                residual_kwarg="input_tensor",
                norm="output.LayerNorm",
            ),
        ),
        attention="attention.self",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        attn_output="attention.output.dense",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        embeddings="embeddings",
        intermediate_lora=("intermediate.dense",),
        output_lora=("output.dense",),
        pre_ln=False,
    )
)
