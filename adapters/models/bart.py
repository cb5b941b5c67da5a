"""BART family: an encoder and a decoder stack. BART's layers are post-LN
(``norm(x + sublayer(x))``), mBART's pre-LN (``x + sublayer(norm(x))``); otherwise the two
share module names: ``self_attn`` (and in the decoder ``encoder_attn``, the cross-attention) with
``q_proj``/``k_proj``/``v_proj``/``out_proj``, the FFN ``fc1``/``fc2`` and the norms
``self_attn_layer_norm``, ``encoder_attn_layer_norm``, ``final_layer_norm``.

Bottleneck adapters live in new children of each layer, ``attention_adapters``,
``cross_attention_adapters`` (decoder) and ``output_adapters`` (AdapterHub's keys); encoder
layers are numbered ``0 … E−1``, decoder layers ``E … E+D−1``. LoRA's ``selfattn`` covers the
projections of self- and cross-attention alike (AdapterHub's placement), ``intermediate_lora``
``fc1``, ``output_lora`` ``fc2``.
"""

from __future__ import annotations

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["BART", "MBART", "bart_like_spec"]

_HOSTS = {"mh_adapter": "attention_adapters", "cross_adapter": "cross_attention_adapters", "output_adapter": "output_adapters"}
# per position: the post-LN residual source and norm, the pre-LN norm and sublayer
_POST_LN = {
    "mh_adapter": ("self_attn", "self_attn_layer_norm"),
    "cross_adapter": ("encoder_attn", "encoder_attn_layer_norm"),
    "output_adapter": ("fc1", "final_layer_norm"),
}
_PRE_LN = {
    "mh_adapter": ("self_attn_layer_norm", "self_attn"),
    "cross_adapter": ("encoder_attn_layer_norm", "encoder_attn"),
    "output_adapter": ("final_layer_norm", "fc2"),
}


def _hook(location: str, pre_ln: bool) -> ResidualHook:
    if pre_ln:
        source, sublayer = _PRE_LN[location]
        return ResidualHook(location, host=_HOSTS[location], create_host=True, residual_source=source, sublayer=sublayer)
    source, norm = _POST_LN[location]
    kwarg = "input" if source == "fc1" else "hidden_states"
    return ResidualHook(location, host=_HOSTS[location], create_host=True, residual_source=source, residual_kwarg=kwarg, norm=norm)


def _attention(module: str, prefix: str = "") -> dict:
    return {
        f"{prefix}query": f"{module}.q_proj",
        f"{prefix}key": f"{module}.k_proj",
        f"{prefix}value": f"{module}.v_proj",
        f"{prefix}attn_output": f"{module}.out_proj",
    }


_FFN = dict(ffn_in=("fc1",), ffn_out="fc2", intermediate_lora=("fc1",), output_lora=("fc2",))


def bart_like_spec(name: str, model_types: tuple, pre_ln: bool, **kwargs) -> ArchitectureSpec:
    """The spec of a BART-like encoder-decoder (``encoder.layers`` / ``decoder.layers``).

    Example::

        >>> register_architecture(bart_like_spec("mbart", ("mbart",), pre_ln=True))
    """
    return ArchitectureSpec(
        name=name,
        model_types=model_types,
        stacks=(
            StackSpec(
                layers="encoder.layers",
                residual_hooks=(_hook("mh_adapter", pre_ln), _hook("output_adapter", pre_ln)),
                attention="self_attn",
                **_attention("self_attn"),
                **_FFN,
                role="encoder",
            ),
            StackSpec(
                layers="decoder.layers",
                residual_hooks=(
                    _hook("mh_adapter", pre_ln), _hook("cross_adapter", pre_ln), _hook("output_adapter", pre_ln)
                ),
                attention="self_attn",
                **_attention("self_attn"),
                **_FFN,
                cross_attention="encoder_attn",
                **_attention("encoder_attn", "cross_"),
                role="decoder",
                position_embeddings="decoder.embed_positions",
            ),
        ),
        pre_ln=pre_ln,
        encoder="encoder",
        decoder_module="decoder",
        **{"legacy_key_renames": INVERTIBLE_IN_ENCODER, "adapterhub_key_renames": INVERTIBLE_TO_ENCODER, **kwargs},
    )


#: AdapterHub keeps an encoder-decoder's invertible adapters in its encoder module
#: (``encoder.invertible_adapters.<name>``); this library keeps them on the base model
INVERTIBLE_IN_ENCODER = ((r"^encoder\.invertible_adapters\.", "invertible_adapters."),)
#: the inverse, for saving in AdapterHub's key names
INVERTIBLE_TO_ENCODER = ((r"^invertible_adapters\.", "encoder.invertible_adapters."),)


# invertible adapters act on the encoder's embedding output (after its layernorm_embedding), as in AdapterHub
BART = register_architecture(
    bart_like_spec("bart", ("bart",), pre_ln=False, embeddings="shared", embedding_output="encoder.layernorm_embedding")
)
MBART = register_architecture(
    bart_like_spec("mbart", ("mbart",), pre_ln=True, embeddings="shared", embedding_output="encoder.layernorm_embedding")
)
