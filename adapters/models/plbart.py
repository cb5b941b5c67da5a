"""PLBART (Ahmad et al., 2021): BART's post-LN encoder-decoder trained on code, with BART's
module names (``self_attn`` / ``encoder_attn`` with ``q_proj`` / ``k_proj`` / ``v_proj`` /
``out_proj``, the FFN ``fc1`` / ``fc2``, the norms ``self_attn_layer_norm``,
``encoder_attn_layer_norm``, ``final_layer_norm``) and BART's adapter placement, as AdapterHub
has it: bottleneck adapters in new ``attention_adapters`` / ``cross_attention_adapters`` /
``output_adapters`` children of each layer, encoder layers numbered ``0 … E−1`` and decoder
layers ``E … E+D−1``. Invertible adapters act on the encoder's embedding output (after its
``layernorm_embedding``).
"""

from __future__ import annotations

from .bart import bart_like_spec
from ..hooks.spec import register_architecture

__all__ = ["PLBART"]

PLBART = register_architecture(
    bart_like_spec("plbart", ("plbart",), pre_ln=False, embeddings="shared", embedding_output="encoder.layernorm_embedding")
)
