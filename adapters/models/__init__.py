"""The declarative spec of every supported architecture family, and their registry."""

from __future__ import annotations

from . import albert, bart, bert, clip, deberta, distilbert, gemma, gpt2, gpt_neox, gptj, llama, modernbert, phi3, t5, vit, whisper  # noqa: F401  (registers the specs)
from ..hooks.spec import SUPPORTED_MODEL_TYPES, ArchitectureSpec, ResidualHook, register_architecture, spec_for_model

__all__ = ["ArchitectureSpec", "ResidualHook", "register_architecture", "SUPPORTED_MODEL_TYPES"]
