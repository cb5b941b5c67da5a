"""Whisper: a pre-LN encoder over audio features (two convolutions and positions in front of the
layers) and a pre-LN text decoder; the layers are mBART's (see :mod:`adapters.models.bart`):
``attention_adapters``, ``cross_attention_adapters`` and ``output_adapters`` in every layer,
encoder layers numbered ``0 … E−1``, decoder layers ``E … E+D−1``.

The encoder reads ``input_features``, not tokens: prompt tuning, which joins soft tokens to
token embeddings, is refused (prefix tuning's ``encoder_prefix`` reaches the encoder instead).
"""

from __future__ import annotations

from .bart import bart_like_spec
from ..hooks.spec import register_architecture

__all__ = ["WHISPER"]

WHISPER = register_architecture(
    bart_like_spec(
        "whisper", ("whisper",), pre_ln=True, embeddings="decoder.embed_tokens",
        refused_methods=(
            (
                "prompt_tuning",
                "its encoder reads audio features, not token embeddings a soft prompt could join; prefix tuning's "
                "encoder_prefix reaches the encoder",
            ),
        ),
    )
)
