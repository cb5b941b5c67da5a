"""PEFT's checkpoint layout for the weight-transform methods (LoHa, LoKr, OFT, HRA, AdaLoRA), kept
as a module for callers of earlier versions.

The layout lives in :mod:`adapters.peft_format` (section "the weight transforms' shared layout"):
each weight-transform family's :class:`~adapters.methods.registry.PeftMapping` names its PEFT type,
its parameters and its config fields, and :mod:`adapters.peft_format` reads and writes them all
alike. This module re-exports its names.
"""

from __future__ import annotations

from .peft_format import PEFT_TYPES, config_from_peft_meta, convert_peft_key, peft_weight_transform_checkpoint, weight_transform_to_peft

__all__ = ["PEFT_TYPES", "config_from_peft_meta", "convert_peft_key", "weight_transform_to_peft", "peft_weight_transform_checkpoint"]
