"""Adapter methods, one module per family, and which composition blocks each supports."""

from .bottleneck import Adapter, BottleneckLayer, ParallelAdapter
from .fusion import AdapterFusion
from .phm import PHMLayer

# method (config ``architecture``) -> blocks its adapters may take part in
METHOD_BLOCKS: dict[str, tuple[type, ...]] = {
    "bottleneck": BottleneckLayer.supported_blocks,
}

__all__ = ["METHOD_BLOCKS", "Adapter", "ParallelAdapter", "BottleneckLayer", "AdapterFusion", "PHMLayer"]
