"""Adapter methods, one module per family, and which composition blocks each supports."""

from .bottleneck import Adapter, BottleneckLayer, ParallelAdapter
from .fusion import AdapterFusion
from .lora import LoRA, LoRALinear
from .phm import PHMLayer
from .prefix_tuning import PrefixTuningLayer, PrefixTuningPool
from .prompt_tuning import PROMPT_BLOCKS, PromptTuningPool

# method (config ``architecture``) -> blocks its adapters may take part in
METHOD_BLOCKS: dict[str, tuple[type, ...]] = {
    "bottleneck": BottleneckLayer.supported_blocks,
    "lora": LoRALinear.supported_blocks,
    "prefix_tuning": PrefixTuningLayer.supported_blocks,
    "prompt_tuning": PROMPT_BLOCKS,
}

__all__ = ["METHOD_BLOCKS", "LoRA", "LoRALinear", "Adapter", "ParallelAdapter", "BottleneckLayer", "AdapterFusion", "PHMLayer",
           "PrefixTuningLayer", "PrefixTuningPool", "PromptTuningPool"]
