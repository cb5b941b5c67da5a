"""T5 family (T5, mT5): an encoder and a decoder stack of pre-LN blocks.

Each ``T5Block`` keeps its sub-blocks in ``layer``: self-attention ``layer.0``
(``x + SelfAttention(layer_norm(x))``), in the decoder cross-attention ``layer.1``
(``x + EncDecAttention(layer_norm(x), encoder output)``), and the feed-forward block last
(``layer.1`` in the encoder, ``layer.2`` in the decoder). As in AdapterHub, those sub-block
modules own the bottleneck adapters (keys ``...block.0.layer.0.adapters.<name>``), and encoder
blocks are numbered ``0 … E−1``, decoder blocks ``E … E+D−1``.

Attention adds T5's relative position bias to the scores; the attention wrapper gives prefix
keys zero bias. LoRA's ``selfattn`` covers ``q``/``k``/``v`` (and ``o``) of self- and
cross-attention alike (AdapterHub's placement), ``intermediate_lora`` the FFN input (``wi``, or
``wi_1`` in gated-GELU FFNs such as mT5's), ``output_lora`` its output ``wo``.
"""

from __future__ import annotations

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["T5"]


def _sublayer_hook(location: str, index: int, sublayer: str) -> ResidualHook:
    """The adapters of sub-block ``layer.<index>``, after its ``sublayer`` (pre-LN)."""
    return ResidualHook(
        location, host=f"layer.{index}", residual_source=f"layer.{index}.layer_norm", sublayer=f"layer.{index}.{sublayer}"
    )


def _ffn(index: int) -> dict:
    ffn = f"layer.{index}.DenseReluDense"
    return dict(
        ffn_in=(f"{ffn}.wi", f"{ffn}.wi_0", f"{ffn}.wi_1"),
        ffn_out=f"{ffn}.wo",
        intermediate_lora=(f"{ffn}.wi", f"{ffn}.wi_1"),  # AdapterHub: wi_1 where the FFN is gated
        output_lora=(f"{ffn}.wo",),
    )


_SELF = dict(
    attention="layer.0.SelfAttention",
    query="layer.0.SelfAttention.q",
    key="layer.0.SelfAttention.k",
    value="layer.0.SelfAttention.v",
    attn_output="layer.0.SelfAttention.o",
)

T5 = register_architecture(
    ArchitectureSpec(
        name="t5",
        model_types=("t5", "mt5"),
        stacks=(
            StackSpec(
                layers="encoder.block",
                residual_hooks=(
                    _sublayer_hook("mh_adapter", 0, "SelfAttention"),
                    _sublayer_hook("output_adapter", 1, "DenseReluDense"),
                ),
                **_SELF,
                **_ffn(1),
                role="encoder",
            ),
            StackSpec(
                layers="decoder.block",
                residual_hooks=(
                    _sublayer_hook("mh_adapter", 0, "SelfAttention"),
                    _sublayer_hook("cross_adapter", 1, "EncDecAttention"),
                    _sublayer_hook("output_adapter", 2, "DenseReluDense"),
                ),
                **_SELF,
                **_ffn(2),
                cross_attention="layer.1.EncDecAttention",
                cross_query="layer.1.EncDecAttention.q",
                cross_key="layer.1.EncDecAttention.k",
                cross_value="layer.1.EncDecAttention.v",
                cross_attn_output="layer.1.EncDecAttention.o",
                role="decoder",
            ),
        ),
        embeddings="shared",
        embedding_output="encoder.embed_tokens",  # invertible adapters act on the encoder's input, as in AdapterHub
        pre_ln=True,
        encoder="encoder",
        decoder_module="decoder",
        # AdapterHub keeps the invertible adapters in the encoder stack (encoder.invertible_adapters.<name>)
        legacy_key_renames=((r"^encoder\.invertible_adapters\.", "invertible_adapters."),),
        adapterhub_key_renames=((r"^invertible_adapters\.", "encoder.invertible_adapters."),),
    )
)
