"""AdapterHub's module path of the method configs (``adapters.configuration.adapter_config``): the
same classes as :mod:`adapters.configuration`, for code that imports them from there.

Example::

    >>> from adapters.configuration.adapter_config import LoRAConfig, MTLLoRAConfig
    >>> from adapters import LoRAConfig as Same
    >>> LoRAConfig is Same
    True
"""

from .adaption_prompt import AdaptionPromptConfig
from .base import ADAPTER_CONFIG_MAP, AdapterConfig, ConfigUnion
from .bottleneck import (
    AdapterPlusConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    ParBnConfig,
    SeqBnConfig,
    SeqBnInvConfig,
)
from .lora import DoRAConfig, IA3Config, LoftQConfig, LoRAConfig
from .mtl_lora import MTLLoRAConfig, MultiTaskConfig
from .prefix import MAMConfig, PrefixTuningConfig, PromptTuningConfig, UniPELTConfig
from .reft import DiReftConfig, LoReftConfig, NoReftConfig, ReftConfig
from .vera import DvoRAConfig, VeraConfig

__all__ = [
    "ADAPTER_CONFIG_MAP", "AdapterConfig", "AdaptionPromptConfig", "AdapterPlusConfig", "BnConfig", "CompacterConfig",
    "CompacterPlusPlusConfig", "ConfigUnion", "DiReftConfig", "DoRAConfig", "DoubleSeqBnConfig", "DoubleSeqBnInvConfig",
    "DvoRAConfig", "IA3Config", "LoftQConfig", "LoRAConfig", "LoReftConfig", "MAMConfig", "MTLLoRAConfig",
    "MultiTaskConfig", "NoReftConfig", "ParBnConfig", "PrefixTuningConfig", "PromptTuningConfig", "ReftConfig",
    "SeqBnConfig", "SeqBnInvConfig", "UniPELTConfig", "VeraConfig",
]
