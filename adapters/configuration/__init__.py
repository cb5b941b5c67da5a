"""Method configs, fusion configs and the per-model registry."""

from .adaption_prompt import AdaptionPromptConfig
from .base import ADAPTER_CONFIG_MAP, AdapterConfig, ConfigUnion, register_config
from .bottleneck import (
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    AdapterPlusConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    ParBnConfig,
    SeqBnConfig,
    SeqBnInvConfig,
)
from .fusion import (
    ADAPTERFUSION_CONFIG_MAP,
    AdapterFusionConfig,
    DynamicAdapterFusionConfig,
    DynamicFusionConfig,
    StaticAdapterFusionConfig,
    StaticFusionConfig,
)
from .lora import DoRAConfig, IA3Config, LoftQConfig, LoRAConfig
from .model_config import ModelAdaptersConfig
from .mtl_lora import MTLLoRAConfig, MultiTaskConfig
from .prefix import MAMConfig, PrefixTuningConfig, PromptTuningConfig, UniPELTConfig
from .reft import DiReftConfig, LoReftConfig, NoReftConfig, ReftConfig
from .vera import DvoRAConfig, VeraConfig

#: the config ``add_adapter`` uses when given none, and the fusion config of ``add_adapter_fusion``
#: (AdapterHub's names)
DEFAULT_ADAPTER_CONFIG = "seq_bn"
DEFAULT_ADAPTERFUSION_CONFIG = "dynamic"
from .weight_transforms import AdaLoRAConfig, LoHaConfig, LoKrConfig, OFTConfig, WeightTargetingConfig

__all__ = [
    "ADAPTER_CONFIG_MAP",
    "DEFAULT_ADAPTER_CONFIG",
    "DEFAULT_ADAPTERFUSION_CONFIG",
    "AdaLoRAConfig",
    "AdaptionPromptConfig",
    "LoHaConfig",
    "LoKrConfig",
    "OFTConfig",
    "WeightTargetingConfig",
    "ADAPTERFUSION_CONFIG_MAP",
    "AdapterConfig",
    "AdapterFusionConfig",
    "BnConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "ConfigUnion",
    "AdapterPlusConfig",
    "DoubleSeqBnConfig",
    "DoRAConfig",
    "DvoRAConfig",
    "VeraConfig",
    "DoubleSeqBnInvConfig",
    "DynamicAdapterFusionConfig",
    "DynamicFusionConfig",
    "IA3Config",
    "LoRAConfig",
    "LoftQConfig",
    "MAMConfig",
    "ModelAdaptersConfig",
    "MTLLoRAConfig",
    "MultiTaskConfig",
    "ParBnConfig",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "ReftConfig",
    "LoReftConfig",
    "NoReftConfig",
    "DiReftConfig",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "StaticAdapterFusionConfig",
    "StaticFusionConfig",
    "UniPELTConfig",
    "register_config",
]


def __getattr__(name: str):
    # a config that lives with its method (adapters/methods/<family>.py, e.g. HRAConfig) registers its
    # class when the method is imported (``import adapters`` imports every method); it is found here by
    # name, so ``adapters.configuration.HRAConfig`` keeps working without this layer importing methods
    from .base import _ARCHITECTURE_CLASSES

    for cls in _ARCHITECTURE_CLASSES.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
