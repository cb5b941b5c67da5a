"""transformers' ``EncoderDecoderModel``: any encoder (``model.encoder``, e.g. ``BertModel``) and
any decoder with cross-attention (``model.decoder``, e.g. ``BertLMHeadModel`` built with
``is_decoder=True, add_cross_attention=True``) joined into a sequence-to-sequence model
("bert2bert", "roberta2bert", ...). ``config.model_type`` is ``"encoder-decoder"`` whatever the
pair, so the spec is built per model (:attr:`~adapters.hooks.spec.ArchitectureSpec.for_model`)
from the specs of its two parts:

* the **encoder stack** is the encoder's own stack (paths under ``encoder.``), numbered
  ``0 … E−1``; invertible adapters act on the encoder's embedding output, as AdapterHub's
  encoder-decoder mixin relays them to the encoder;
* the **decoder stack** is the decoder's own stack (paths under ``decoder.<base model>.``, e.g.
  ``decoder.bert.encoder.layer``), numbered ``E … E+D−1``, with its **cross-attention** block
  (``crossattention``: queries from the decoder, keys and values from the encoder output). In a
  BERT-family decoder that block has the self-attention block's layout (``crossattention.self``,
  ``crossattention.output`` with ``dense``, ``dropout``, ``LayerNorm``), and AdapterHub runs the
  same bottleneck position there as after self-attention — an ``mh_adapter`` position, keys
  ``...crossattention.output.adapters.<name>`` — so its checkpoints load. LoRA's ``selfattn``
  covers the q/k/v of self- and cross-attention alike; prefix tuning adds the ``cross`` prefix.

Prompt tuning is refused, as in AdapterHub (the decoder reads its own tokens; a prompt would only
lengthen the encoder output). Decoders outside the BERT family (whose cross-attention blocks have
another layout) are refused at :func:`adapters.init` with the supported model types.

**Layer numbering differs from AdapterHub's.** AdapterHub initialises encoder and decoder as two
models and numbers the decoder's layers from 0 again, so its ``leave_out=[0]`` leaves out the
first layer of both; here, as for T5 and BART, the decoder's layers follow the encoder's
(``leave_out=[E]`` is the decoder's first). Checkpoints without ``leave_out`` are unaffected.
"""

from __future__ import annotations

import dataclasses

from .bert import BERT
from ..errors import AdapterConfigError
from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture, spec_for_model

__all__ = ["ENCODER_DECODER", "encoder_decoder_spec"]

# decoder families whose layers hold a cross-attention block laid out like their self-attention block
# (``crossattention`` beside ``attention``)
_CROSS_LIKE_SELF = ("bert", "bert-generation")


def _under(prefix: str, path):
    return f"{prefix}.{path}" if path else path


def _as_cross(path: str) -> str:
    """A path inside the self-attention block (``attention....``), moved to the cross-attention block."""
    assert path.startswith("attention"), path
    return "cross" + path


def _cross_hook(self_hook: ResidualHook) -> ResidualHook:
    return dataclasses.replace(
        self_hook,
        host=_as_cross(self_hook.host),
        residual_source=_as_cross(self_hook.residual_source),
        norm=_as_cross(self_hook.norm) if self_hook.norm else None,
        sublayer_output=_as_cross(self_hook.sublayer_output) if self_hook.sublayer_output else None,
    )


def _decoder_stack(stack: StackSpec, layers: str) -> StackSpec:
    """The decoder's stack under ``layers``, with its cross-attention block (the self-attention
    block's hooks and projections, moved to ``crossattention``)."""
    self_hook = next(hook for hook in stack.residual_hooks if hook.location == "mh_adapter")
    return dataclasses.replace(
        stack,
        layers=layers,
        residual_hooks=stack.residual_hooks + (_cross_hook(self_hook),),  # AdapterHub: an mh_adapter position
        cross_attention=_as_cross(stack.attention),
        cross_query=_as_cross(stack.query),
        cross_key=_as_cross(stack.key),
        cross_value=_as_cross(stack.value),
        cross_attn_output=_as_cross(stack.attn_output),
        role="decoder",
        attention_location="self",
        sub_config="decoder",  # EncoderDecoderConfig.decoder sizes the decoder's layers
    )


# AdapterHub's file layout for an EncoderDecoderModel: encoder and decoder are models of their own, each
# with its prefix pool (the encoder's self-attention prefix is its "self_prefix"), saved under every
# path the pool is registered at (the model part and each attention layer); the encoder's invertible
# adapters are saved under the encoder, the decoder and the model. Here one pool and one set of
# invertible adapters belong to the model; the other paths are the same tensors (dropped on load).
_ADAPTERHUB_KEYS = (
    (r"^(?:encoder|decoder)(?:\.[^.]+)?\.invertible_adapters\.", "invertible_adapters."),
    (r"^encoder\.(?:.*\.)?prefix_tuning\.(?:pool\.)?prefix_tunings\.([^.]+)\.self_prefix\.", r"prefix_tuning.prefix_tunings.\1.encoder_prefix."),
    (r"^decoder\.(?:.*\.)?prefix_tuning\.(?:pool\.)?prefix_tunings\.([^.]+)\.(self|cross)_prefix\.", r"prefix_tuning.prefix_tunings.\1.\2_prefix."),
)


def _build(name: str, encoder: ArchitectureSpec, decoder: ArchitectureSpec, decoder_base: str, **fields) -> ArchitectureSpec:
    """The spec of an encoder-decoder pair: the encoder's stack under ``encoder.``, the decoder's
    under ``decoder_base`` with its cross-attention."""
    encoder_stack = dataclasses.replace(
        encoder.stacks[0], layers=_under("encoder", encoder.stacks[0].layers), role="encoder", attention_location="encoder",
        sub_config="encoder",
    )
    decoder_stack = _decoder_stack(decoder.stacks[0], _under(decoder_base, decoder.stacks[0].layers))
    refusals = dict(encoder.refused_methods)
    refusals.update(decoder.refused_methods)
    refusals["prompt_tuning"] = (
        "an EncoderDecoderModel's decoder reads its own tokens, and a prompt joined to the encoder input would only "
        "lengthen the encoder output (AdapterHub refuses it too)"
    )
    return ArchitectureSpec(
        name=name,
        model_types=("encoder-decoder",),
        stacks=(encoder_stack, decoder_stack),
        embeddings=_under("encoder", encoder.embeddings),
        embedding_output=_under("encoder", encoder.embedding_output or encoder.embeddings),
        pre_ln=encoder.pre_ln,
        fused_qkv_heads=encoder.fused_qkv_heads,
        fused_qkv_layout=encoder.fused_qkv_layout,
        refused_methods=tuple(refusals.items()),
        attention_interface=encoder.attention_interface and decoder.attention_interface,
        encoder="encoder",
        decoder_module="decoder",
        legacy_key_renames=_ADAPTERHUB_KEYS,
        **fields,
    )


def encoder_decoder_spec(model) -> ArchitectureSpec:
    """The spec of an ``EncoderDecoderModel``: its encoder's and decoder's specs joined (see the
    module docstring).

    Raises:
        AdapterConfigError: a part this library has no spec for, a multi-stack part, or a decoder
            without a BERT-family cross-attention block.

    Example::

        >>> spec = encoder_decoder_spec(bert2bert)
        >>> [stack.layers for stack in spec.stacks]
        ['encoder.encoder.layer', 'decoder.bert.encoder.layer']
    """
    encoder_spec, decoder_spec = spec_for_model(model.encoder), spec_for_model(model.decoder)
    for part, spec in (("encoder", encoder_spec), ("decoder", decoder_spec)):
        if spec.is_multi_stack:
            raise AdapterConfigError(
                f"EncoderDecoderModel: its {part} ({type(getattr(model, part)).__name__}) is itself a {spec.name} model of "
                f"several layer stacks; adapters join a single-stack encoder and a single-stack decoder."
            )
    decoder = model.decoder
    if decoder_spec.name not in _CROSS_LIKE_SELF or not getattr(decoder.config, "add_cross_attention", False):
        raise AdapterConfigError(
            f"EncoderDecoderModel: adapters need a decoder with a cross-attention block laid out like its self-attention "
            f"(model types {', '.join(m for s in _CROSS_LIKE_SELF for m in _model_types(s))}, built with "
            f"add_cross_attention=True); got {type(decoder).__name__} (model type {decoder.config.model_type!r}, "
            f"add_cross_attention={getattr(decoder.config, 'add_cross_attention', None)!r})."
        )
    decoder_base = "decoder" if decoder.base_model is decoder else f"decoder.{decoder.base_model_prefix}"
    return _build(f"encoder-decoder ({encoder_spec.name}, {decoder_spec.name})", encoder_spec, decoder_spec, decoder_base)


def _model_types(spec_name: str) -> tuple:
    from ..hooks.spec import _REGISTRY

    return next((spec.model_types for spec in _REGISTRY.values() if spec.name == spec_name), (spec_name,))


# registered for model_type "encoder-decoder": the layout of a BERT encoder with a BERT decoder
# ("bert2bert"); adapters.init builds the spec of each model from its own encoder and decoder
ENCODER_DECODER = register_architecture(
    _build("encoder-decoder", BERT, BERT, "decoder.bert", for_model=encoder_decoder_spec)
)
