"""The declarative spec of every supported architecture family, and their registry."""

from __future__ import annotations

from . import albert, bart, bert, clip, deberta, distilbert, gemma, gpt2, gpt_neox, gptj, llama, modernbert, phi3, t5, vit, whisper  # noqa: F401  (registers the specs)
from . import beit, bert_generation, deberta_v1, phi, plbart, xmod  # noqa: F401  (issue 23's architectures)
from . import encoder_decoder  # noqa: F401  (after the specs of its parts)
from ..hooks.spec import SUPPORTED_MODEL_TYPES, ArchitectureSpec, ResidualHook, StackSpec, register_architecture, spec_for_model
from ..hooks.spec import supported_model_types

__all__ = ["ArchitectureSpec", "ResidualHook", "StackSpec", "register_architecture", "supported_model_types", "SUPPORTED_MODEL_TYPES"]
