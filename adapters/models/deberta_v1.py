"""DeBERTa (He et al., 2021; ``model_type`` ``"deberta"``, the first version): BERT's post-LN
layers — the output blocks compute ``LayerNorm(dropout(dense(a)) + input_tensor)`` and own the
bottleneck adapters (``...attention.output.adapters.<name>``, ``...output.adapters.<name>``, as
AdapterHub) — around a disentangled self-attention with one fused projection:

* ``attention.self.in_proj`` (no bias; ``q_bias`` / ``v_bias`` are added after it) computes q, k
  and v together, its output rows *interleaved per head*: the attention views them as
  ``(heads, 3·head_dim)`` and splits each head's run into ``[q_h | k_h | v_h]``. LoRA with
  ``attn_matrices`` covers exactly the rows of the selected parts in every head
  (``fused_qkv_layout="interleaved_heads"``, as for GPT-NeoX).

  AdapterHub's LoRA on this projection treats the rows as ``[q | k | v]`` in three blocks, so its
  ``"q"`` update reaches the queries, keys and values of the first third of the heads. Its LoRA
  checkpoints load here (same shapes), each part's update on that part's rows of every head.
  (AdapterHub's ``adapters.init`` also changes DeBERTa v1's outputs before any adapter is added —
  its copy of the attention differs from transformers' — so none of its DeBERTa v1 outputs can be
  reproduced; tests/test_new_architectures.py pins that.)

Like DeBERTa-v2, the attention computes its scores itself instead of calling transformers'
attention interface; prefix tuning enters it through
:class:`~adapters.models.deberta.FusedDisentangledPrefixAttention` (a class swap, no attention code
copied) and Llama-Adapter is refused.
Prompt tuning joins the prompt to the word embeddings (the embedding module multiplies its
output by the attention mask itself); invertible adapters act on the ``embeddings`` output.
"""

from __future__ import annotations

import dataclasses

from .bert import BERT
from .deberta import FusedDisentangledPrefixAttention
from ..hooks.spec import register_architecture

__all__ = ["DEBERTA"]

DEBERTA = register_architecture(
    dataclasses.replace(
        BERT,
        name="deberta",
        model_types=("deberta",),
        stacks=(
            dataclasses.replace(
                BERT.stacks[0],
                query="attention.self.in_proj",
                key="attention.self.in_proj",
                value="attention.self.in_proj",
            ),
        ),
        embeddings="embeddings.word_embeddings",
        embedding_output="embeddings",
        fused_qkv_layout="interleaved_heads",
        attention_mixin=FusedDisentangledPrefixAttention,
        refused_methods=(
            ("adaption_prompt", "its gated prompt adjusts the output of transformers' attention interface, which "
             "DeBERTa's disentangled attention does not call"),
        ),
    )
)
