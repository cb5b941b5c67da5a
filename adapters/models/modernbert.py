"""ModernBERT: a pre-LN encoder, ``x + attn(attn_norm(x))`` then ``x + mlp(mlp_norm(x))``
(layer 0's ``attn_norm`` is the identity, the embeddings already end in a norm).

Bottleneck adapters run on the sub-block outputs and live in new ``attention_adapters`` /
``output_adapters`` children of each layer. Where AdapterHub's checkpoints were trained (it runs
ModernBERT through its plug-in interface), the residual an adapter reads beside the sub-block's
output ``h`` is the sub-block's input, the *normalised* stream (``attn_norm(x)``, ``mlp_norm(x)``):
an adapter computes ``f(h + norm(x)) + h`` (its ``residual_before_ln`` form) and the layer adds ``x``. Attention computes ``[q | k | v]`` with one fused
``attn.Wqkv`` of three equal parts, so LoRA with ``attn_matrices`` covers only the selected parts,
one rank-``r`` update each (as for GPT-2's ``c_attn``); ``"o"`` is ``attn.Wo``. The FFN input
``mlp.Wi`` computes the GLU's ``[input | gate]`` in one layer; ``intermediate_lora`` adapts it as
a whole, ``output_lora`` adapts ``mlp.Wo``.

Prompt tuning joins the soft prompt to the token embeddings (``embeddings.tok_embeddings``),
as PEFT does for models with rotary positions: the model then normalises the joined sequence and
numbers its positions, prompt included. Invertible adapters act on the output of ``embeddings``
(the normalised embeddings layer 0 reads). Prefix tuning goes through the attention interface like
everywhere else; in local (sliding-window) layers the prefix is seen by every token.
"""

from __future__ import annotations

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["MODERNBERT"]

MODERNBERT = register_architecture(
    ArchitectureSpec(
        name="modernbert",
        model_types=("modernbert",),
        stacks=(
            StackSpec(
                layers="layers",
                residual_hooks=(
                    ResidualHook(
                        "mh_adapter",
                        host="attention_adapters",
                        create_host=True,
                        residual_source="attn",
                        sublayer="attn",
                    ),
                    ResidualHook(
                        "output_adapter",
                        host="output_adapters",
                        create_host=True,
                        residual_source="mlp",
                        sublayer="mlp",
                    ),
                ),
                attention="attn",
                query="attn.Wqkv",
                key="attn.Wqkv",
                value="attn.Wqkv",
                attn_output="attn.Wo",
                ffn_in=("mlp.Wi",),
                ffn_out="mlp.Wo",
                intermediate_lora=("mlp.Wi",),
                output_lora=("mlp.Wo",),
            ),
        ),
        embeddings="embeddings.tok_embeddings",
        embedding_output="embeddings",  # token embeddings after their norm: what layer 0 reads
        pre_ln=True,
    )
)
