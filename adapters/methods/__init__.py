"""Adapter methods, one module per family, and which composition blocks each supports."""

from .adalora import AdaLoRA
from .adaption_prompt import AdaptionPrompt, AdaptionPromptLayer
from .bottleneck import Adapter, BottleneckLayer, ParallelAdapter
from .fusion import AdapterFusion
from .hra import HRA
from .loha import LoHa
from .lokr import LoKr
from .lora import LoRA, LoRALinear
from .oft import OFT
from .phm import PHMLayer
from .prefix_tuning import PrefixTuningLayer, PrefixTuningPool
from .prompt_tuning import PROMPT_BLOCKS, PromptTuningPool

#: the weight-transform methods hosted next to LoRA on linear layers (config ``architecture``)
WEIGHT_TRANSFORM_METHODS = ("loha", "lokr", "oft", "hra", "adalora")

# method (config ``architecture``) -> blocks its adapters may take part in
METHOD_BLOCKS: dict[str, tuple[type, ...]] = {
    "bottleneck": BottleneckLayer.supported_blocks,
    "lora": LoRALinear.supported_blocks,
    "prefix_tuning": PrefixTuningLayer.supported_blocks,
    "prompt_tuning": PROMPT_BLOCKS,
    "adaption_prompt": AdaptionPromptLayer.supported_blocks,
    **{method: LoRALinear.supported_blocks for method in WEIGHT_TRANSFORM_METHODS},
}

__all__ = [
    "METHOD_BLOCKS",
    "WEIGHT_TRANSFORM_METHODS",
    "LoRA",
    "LoRALinear",
    "LoHa",
    "LoKr",
    "OFT",
    "HRA",
    "AdaLoRA",
    "AdaptionPrompt",
    "AdaptionPromptLayer",
    "Adapter",
    "ParallelAdapter",
    "BottleneckLayer",
    "AdapterFusion",
    "PHMLayer",
    "PrefixTuningLayer",
    "PrefixTuningPool",
    "PromptTuningPool",
]
