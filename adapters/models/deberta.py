"""DeBERTa-v2 (and v3, which shares its model type): BERT's post-LN layers — the output blocks
compute ``LayerNorm(dropout(dense(a)) + input_tensor)`` and own the adapters, with AdapterHub's
keys (``...attention.output.adapters.<name>``, ``...output.adapters.<name>``) — around a
*disentangled* self-attention whose projections are ``query_proj`` / ``key_proj`` /
``value_proj``.

Disentangled attention adds content-to-position and position-to-content scores computed from
relative-position embeddings, in the attention module's own code: it does not call transformers'
attention interface, so there is no place where prefix keys could join the softmax without copying
that code. Prefix tuning (and the configs containing it, ``mam`` and ``unipelt``) and Llama-Adapter
are therefore refused for DeBERTa with an error (``attention_interface=False``); bottleneck
adapters, Compacter, LoRA, (IA)³, the PEFT methods and prompt tuning all work.

Prompt tuning joins the prompt to the word embeddings (``embeddings.word_embeddings``), as PEFT
does: DeBERTa's embedding module multiplies its output by the attention mask itself, so the prompt
must enter before it (the module then normalises it with the tokens). Invertible adapters act on
the ``embeddings`` output, which layer 0 reads.
"""

from __future__ import annotations

import dataclasses

from .bert import BERT
from ..hooks.spec import register_architecture

__all__ = ["DEBERTA_V2"]

# BERT's layers with DeBERTa's projection names
DEBERTA_V2 = register_architecture(
    dataclasses.replace(
        BERT,
        name="deberta-v2",
        model_types=("deberta-v2",),
        stacks=(
            dataclasses.replace(
                BERT.stacks[0],
                query="attention.self.query_proj",
                key="attention.self.key_proj",
                value="attention.self.value_proj",
            ),
        ),
        embeddings="embeddings.word_embeddings",
        embedding_output="embeddings",
        attention_interface=False,
    )
)
