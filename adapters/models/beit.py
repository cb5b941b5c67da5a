"""BEiT (Bao et al., 2022): ViT's pre-LN encoder over image patches with *layer scale*: each
sub-block's output is scaled per channel before the layer adds it,

    y = x + drop_path(λ₁ · attention(layernorm_before(x)))
    z = y + drop_path(λ₂ · mlp(layernorm_after(y)))

(``λ = 1`` when ``layer_scale_init_value`` is 0; ``drop_path`` is the identity at inference).

AdapterHub runs the bottleneck adapters on the *scaled* output ``drop_path(λ · h)``, the exact
summand the layer adds to ``x``; so does this spec: the adapters hook the output of the layer's
``drop_path`` module, which the layer calls once per sub-block (after attention, then after the
FFN; each call serves the position whose residual source — ``layernorm_before``,
``layernorm_after`` — ran last). They live in new ``attention_adapters`` / ``output_adapters``
children of each layer (AdapterHub's keys).

LoRA places ``selfattn`` on ``attention.q_proj`` / ``k_proj`` / ``v_proj`` (``"o"``:
``attention.o_proj``), ``intermediate_lora`` on ``mlp.fc1`` and ``output_lora`` on ``mlp.fc2`` —
AdapterHub's ``attention.attention.query`` ..., ``intermediate.dense``, ``output.dense`` under
transformers 4's names, which transformers' checkpoint conversion (BEiT's is ViT's) renames when
an AdapterHub checkpoint loads. Invertible adapters act on the ``embeddings`` output ([CLS] and
patch embeddings); prefix tuning enters through transformers' attention interface, with the
relative position bias BEiT passes as the attention mask extended over the prefix. Prompt tuning
is refused: BEiT's relative position bias covers the image's patch grid, where prompt positions
have no place.
"""

from __future__ import annotations

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["BEIT"]

BEIT = register_architecture(
    ArchitectureSpec(
        name="beit",
        model_types=("beit",),
        stacks=(
            StackSpec(
                layers="layers",
                residual_hooks=(
                    ResidualHook(
                        "mh_adapter",
                        host="attention_adapters",
                        create_host=True,
                        residual_source="layernorm_before",
                        sublayer="drop_path",  # its first call per layer: drop_path(λ₁ · attention output)
                    ),
                    ResidualHook(
                        "output_adapter",
                        host="output_adapters",
                        create_host=True,
                        residual_source="layernorm_after",
                        sublayer="drop_path",  # its second call: drop_path(λ₂ · FFN output)
                    ),
                ),
                attention="attention",
                query="attention.q_proj",
                key="attention.k_proj",
                value="attention.v_proj",
                attn_output="attention.o_proj",
                ffn_in=("mlp.fc1",),
                ffn_out="mlp.fc2",
                intermediate_lora=("mlp.fc1",),
                output_lora=("mlp.fc2",),
            ),
        ),
        embeddings="embeddings",
        pre_ln=True,
        refused_methods=(
            (
                "prompt_tuning",
                "BEiT adds a relative position bias over the image's patch grid to every attention score, and a soft "
                "prompt's positions have no place in that grid",
            ),
        ),
    )
)
