"""Phi (Phi-1, Phi-1.5, Phi-2): pre-LN decoder layers with a *parallel* residual — one norm feeds
attention and the FFN, and the layer adds both outputs to ``x``:

    y = x + resid_dropout(self_attn(input_layernorm(x))) + resid_dropout(mlp(input_layernorm(x)))

AdapterHub supports Phi through its plug-in interface, which hooks the attention output
projection ``self_attn.dense`` and the FFN output ``mlp.fc2``, and hands the attention position
the residual stream ``x`` (the input of ``input_layernorm``) but the FFN position none (the
interface names no module before the FFN). This spec places the adapters so AdapterHub's Phi
checkpoints load and compute the same:

* ``mh_adapter``: on the attention output ``h`` (``self_attn``'s output is ``dense``'s), with
  ``x`` from the input of ``input_layernorm``;
* ``output_adapter``: on the FFN output ``m`` alone (``x = 0``, :attr:`ResidualHook.no_residual`);

each in a new ``attention_adapters`` / ``output_adapters`` child of the layer (AdapterHub's keys),
returning what the layer adds in place of ``h`` / ``m``. LoRA places ``selfattn`` on
``self_attn.q_proj`` / ``k_proj`` / ``v_proj`` (``"o"``: ``self_attn.dense``),
``intermediate_lora`` on ``mlp.fc1`` and ``output_lora`` on ``mlp.fc2`` (the interface's
``layer_intermediate_proj`` / ``layer_output_proj``). Phi's attention calls transformers'
attention interface, so prefix tuning and Llama-Adapter work here (AdapterHub's interface offers
neither); prompt tuning joins the token embeddings ``embed_tokens``, as for Llama.
"""

from __future__ import annotations

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["PHI"]

PHI = register_architecture(
    ArchitectureSpec(
        name="phi",
        model_types=("phi",),
        stacks=(
            StackSpec(
                layers="layers",
                residual_hooks=(
                    ResidualHook(
                        "mh_adapter",
                        host="attention_adapters",
                        create_host=True,
                        residual_source="input_layernorm",
                        sublayer="self_attn",
                    ),
                    ResidualHook(
                        "output_adapter",
                        host="output_adapters",
                        create_host=True,
                        residual_source="mlp",  # opens the position's pass; the adapters see x = 0
                        sublayer="mlp",
                        no_residual=True,
                    ),
                ),
                attention="self_attn",
                query="self_attn.q_proj",
                key="self_attn.k_proj",
                value="self_attn.v_proj",
                attn_output="self_attn.dense",
                ffn_in=("mlp.fc1",),
                ffn_out="mlp.fc2",
                intermediate_lora=("mlp.fc1",),
                output_lora=("mlp.fc2",),
            ),
        ),
        embeddings="embed_tokens",
        pre_ln=True,
    )
)
