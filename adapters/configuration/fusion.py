"""AdapterFusion configs (Pfeiffer et al., 2021). The math is in :mod:`adapters.methods.fusion`."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Optional, Union

__all__ = [
    "AdapterFusionConfig",
    "DynamicFusionConfig",
    "StaticFusionConfig",
    "DynamicAdapterFusionConfig",
    "StaticAdapterFusionConfig",
    "ADAPTERFUSION_CONFIG_MAP",
]


@dataclasses.dataclass(frozen=True)
class AdapterFusionConfig:
    """How an AdapterFusion layer attends over its adapters' outputs.

    Args:
        key, query, value: learn a key, query or value projection (otherwise identity).
        query_before_ln: take the query before the layer's original residual + norm.
        regularization: add ``0.01 * ||I - W_value||²`` to the loss while training the fusion.
        residual_before: add the residual to the values before attention (else to the output).
        temperature: anneal the softmax temperature from 50 down to 1 during training.
        value_before_softmax: apply the value projection to each adapter output (else to the
            attended sum).
        value_initialized: initialise the value projection to the identity.
        dropout_prob: dropout on the attention scores (default: the model's attention dropout).

    Example::

        >>> model.add_adapter_fusion(Fuse("a", "b"), config=DynamicFusionConfig(temperature=True))
    """

    key: bool = True
    query: bool = True
    value: bool = True
    query_before_ln: bool = False
    regularization: bool = True
    residual_before: bool = False
    temperature: bool = False
    value_before_softmax: bool = True
    value_initialized: Union[bool, str] = False
    dropout_prob: Optional[float] = None

    def to_dict(self) -> dict:
        """JSON-serialisable dict in AdapterHub's ``adapter_fusion_config.json`` layout.

        Example::

            >>> DynamicFusionConfig().to_dict()["temperature"]
            False
        """
        return dict(sorted(dataclasses.asdict(self).items()))

    def replace(self, **changes) -> "AdapterFusionConfig":
        """A copy with some fields changed.

        Example::

            >>> StaticFusionConfig().replace(temperature=True).temperature
            True
        """
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, config: Union[str, Mapping, "AdapterFusionConfig"], **overrides) -> "AdapterFusionConfig":
        """Resolve ``"dynamic"``, ``"static"``, a dict, a JSON path or an instance, then apply overrides.

        Example::

            >>> AdapterFusionConfig.load("dynamic", temperature=True)
        """
        if isinstance(config, AdapterFusionConfig):
            resolved = config
        elif isinstance(config, Mapping):
            data = config["config"] if isinstance(config.get("config"), Mapping) else config
            names = {f.name for f in dataclasses.fields(AdapterFusionConfig)}
            resolved = AdapterFusionConfig(**{k: v for k, v in data.items() if k in names})
        elif isinstance(config, str) and config in ADAPTERFUSION_CONFIG_MAP:
            resolved = ADAPTERFUSION_CONFIG_MAP[config]
        elif isinstance(config, str) and os.path.isfile(config):
            with open(config, encoding="utf-8") as f:
                return cls.load(json.load(f), **overrides)
        else:
            raise ValueError(
                f"Unknown fusion config {config!r}; use 'dynamic', 'static', a dict or an AdapterFusionConfig."
            )
        return resolved.replace(**overrides) if overrides else resolved

    def __getitem__(self, key):
        return getattr(self, key)


@dataclasses.dataclass(frozen=True)
class DynamicFusionConfig(AdapterFusionConfig):
    """Learned query, key and value projections with value regularisation (the paper's setup).

    Example::

        >>> model.add_adapter_fusion(["a", "b"], config=DynamicFusionConfig())
    """


@dataclasses.dataclass(frozen=True)
class StaticFusionConfig(AdapterFusionConfig):
    """No projections: attention by dot product between the layer output and the adapter outputs.

    Example::

        >>> model.add_adapter_fusion(["a", "b"], config="static")
    """

    key: bool = False
    query: bool = False
    value: bool = False
    regularization: bool = False


# AdapterHub's names
DynamicAdapterFusionConfig = DynamicFusionConfig
StaticAdapterFusionConfig = StaticFusionConfig

ADAPTERFUSION_CONFIG_MAP = {"dynamic": DynamicFusionConfig(), "static": StaticFusionConfig()}
