"""BertGeneration (Rothe et al., 2020): BERT's post-LN encoder layers without token types or a
pooler, used as the encoder (``BertGenerationEncoder``) or, with a language-model head, as a
decoder (``BertGenerationDecoder``) of a sequence-to-sequence pair. Its layers are BERT's, so is
the placement: the output blocks ``LayerNorm(dropout(dense(a)) + input_tensor)`` own the
bottleneck adapters (``...attention.output.adapters.<name>``, ``...output.adapters.<name>``, as
AdapterHub), and LoRA places ``selfattn`` on ``attention.self.query`` / ``key`` / ``value``.

A decoder built with ``add_cross_attention=True`` runs a cross-attention block between
self-attention and the FFN; AdapterHub places no adapters there, and neither does this spec
(:mod:`adapters.models.encoder_decoder` adds the cross-attention position for a decoder inside
transformers' ``EncoderDecoderModel``).
"""

from __future__ import annotations

import dataclasses

from .bert import BERT
from ..hooks.spec import register_architecture

__all__ = ["BERT_GENERATION"]

BERT_GENERATION = register_architecture(dataclasses.replace(BERT, name="bert-generation", model_types=("bert-generation",)))
