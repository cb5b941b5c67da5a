"""DistilBERT: post-LN blocks that compute ``sa_layer_norm(attention(x) + x)`` and
``output_layer_norm(ffn(y) + y)`` themselves; adapters live in new ``attention_adapters`` /
``output_adapters`` children of each block (AdapterHub's keys)."""

from __future__ import annotations

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["DISTILBERT"]

DISTILBERT = register_architecture(
    ArchitectureSpec(
        name="distilbert",
        model_types=("distilbert",),
        stacks=(
            StackSpec(
                layers="transformer.layer",
                residual_hooks=(
                    ResidualHook(
                        "mh_adapter",
                        host="attention_adapters",
                        create_host=True,
                        residual_source="attention",
                        residual_arg=0,
                        residual_kwarg="hidden_states",
                        norm="sa_layer_norm",
                    ),
                    ResidualHook(
                        "output_adapter",
                        host="output_adapters",
                        create_host=True,
                        residual_source="ffn",
                        residual_arg=0,
                        residual_kwarg="input",
                        norm="output_layer_norm",
                    ),
                ),
                attention="attention",
                query="attention.q_lin",
                key="attention.k_lin",
                value="attention.v_lin",
                attn_output="attention.out_lin",
                ffn_in=("ffn.lin1",),
                ffn_out="ffn.lin2",
                intermediate_lora=("ffn.lin1",),
                output_lora=("ffn.lin2",),
            ),
        ),
        embeddings="embeddings",
        pre_ln=False,
        # AdapterHub files DistilBERT's prefixes under the location "self" (prefix_tunings.<name>.self),
        # where its other architectures (and this library) say "self_prefix"
        legacy_key_renames=((r"^prefix_tuning\.prefix_tunings\.([^.]+)\.self\.", r"prefix_tuning.prefix_tunings.\1.self_prefix."),),
        # (saved so, in the pool and in its copy under every attention's prefix_tuning.pool)
        adapterhub_key_renames=((r"(^|\.)prefix_tunings\.([^.]+)\.self_prefix\.", r"\1prefix_tunings.\2.self."),),
    )
)
