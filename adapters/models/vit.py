"""ViT (Dosovitskiy et al., 2021): a pre-LN encoder over image patches,
``x + attention(layernorm_before(x))`` then ``x + mlp(layernorm_after(x))``.

Bottleneck adapters run on each sub-block's output (``attention``, ``mlp``) before the layer adds
it, and live in new ``attention_adapters`` / ``output_adapters`` children of each layer. LoRA
places ``selfattn`` on ``attention.q_proj`` / ``k_proj`` / ``v_proj`` (``"o"``: ``attention.o_proj``),
``intermediate_lora`` on ``mlp.fc1`` and ``output_lora`` on ``mlp.fc2`` — AdapterHub's placement
(``intermediate.dense`` / ``output.dense`` in transformers 4).

**Checkpoints written against transformers 4.** transformers 5 renamed ViT's modules
(``encoder.layer.N`` → ``layers.N``, ``attention.attention.query`` → ``attention.q_proj``,
``attention.output.dense`` → ``attention.o_proj``, ``intermediate.dense`` → ``mlp.fc1``,
``output.dense`` → ``mlp.fc2``) and renames old checkpoint keys on load with its conversion
mapping. :func:`adapters.load_adapter` applies the same mapping to adapter keys, plus the one move
transformers has no base weight for: AdapterHub kept the FFN adapters inside the old ``ViTOutput``
block (``encoder.layer.N.output.output_adapters``), here a child of the layer
(``layers.N.output_adapters``) — :attr:`~adapters.hooks.spec.ArchitectureSpec.legacy_key_renames`.

Prompt tuning joins the soft prompt to the output of ``embeddings`` (the [CLS] token and patch
embeddings with their positions), as AdapterHub did: the prompt positions carry no position
embedding and the image keeps its own. Invertible adapters act on that output too. Prefix tuning
enters through transformers' attention interface, which ViT's attention calls.
"""

from __future__ import annotations

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["VIT"]

VIT = register_architecture(
    ArchitectureSpec(
        name="vit",
        model_types=("vit",),
        stacks=(
            StackSpec(
                layers="layers",
                residual_hooks=(
                    ResidualHook(
                        "mh_adapter",
                        host="attention_adapters",
                        create_host=True,
                        residual_source="layernorm_before",
                        sublayer="attention",
                    ),
                    ResidualHook(
                        "output_adapter",
                        host="output_adapters",
                        create_host=True,
                        residual_source="layernorm_after",
                        sublayer="mlp",
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
        legacy_key_renames=(
            (r"(^|\.)layers\.(\d+)\.output\.output_adapters\.", r"\1layers.\2.output_adapters."),
            # AdapterHub's prefix gates sat in ViTSelfAttention (attention.attention), merged into attention
            (r"(^|\.)layers\.(\d+)\.attention\.attention\.prefix_tuning\.", r"\1layers.\2.attention.prefix_tuning."),
        ),
        # the inverse, on transformers 4's paths, for saving in AdapterHub's key names
        adapterhub_key_renames=(
            (r"(^|\.)layer\.(\d+)\.output_adapters\.", r"\1layer.\2.output.output_adapters."),
            (r"(^|\.)layer\.(\d+)\.attention\.prefix_tuning\.", r"\1layer.\2.attention.attention.prefix_tuning."),
        ),
        pre_ln=True,
    )
)
