"""Adapter methods, one module per family; importing this package registers every family.

The model API reads the families through :mod:`adapters.methods.registry`; the tables below are
derived from it and kept for callers that read them.
"""

from .registry import families

# one import per family (its module ends with its registration); the order is the order in which a
# config union's parts are added and the families' forward hooks run
from .lora import IA3, LinearAdapter, LinearHost, LoRA, LoRALinear
from .loha import LoHa
from .lokr import LoKr
from .oft import OFT
from .hra import HRA
from .adalora import AdaLoRA
from .mtl_lora import MTLLoRA
from .vera import Vera
from .bottleneck import Adapter, BottleneckLayer, ParallelAdapter
from .prefix_tuning import PrefixTuningLayer, PrefixTuningPool
from .prompt_tuning import PROMPT_BLOCKS, PromptTuningPool
from .adaption_prompt import AdaptionPrompt, AdaptionPromptLayer
from .reft import ReftLayer
from .fusion import AdapterFusion
from .phm import PHMLayer

#: the weight-transform methods hosted next to LoRA on linear layers (config ``architecture``)
WEIGHT_TRANSFORM_METHODS = tuple(f.name for f in families() if f.build_linear is not None)

#: method (config ``architecture``) -> blocks its adapters may take part in
METHOD_BLOCKS: dict[str, tuple[type, ...]] = {f.name: f.blocks for f in families()}

__all__ = [
    "METHOD_BLOCKS",
    "WEIGHT_TRANSFORM_METHODS",
    "LoRA",
    "LoRALinear",
    "LinearHost",
    "LinearAdapter",
    "IA3",
    "LoHa",
    "LoKr",
    "OFT",
    "HRA",
    "AdaLoRA",
    "MTLLoRA",
    "Vera",
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
