"""The per-model registry: which adapters and fusions a model has, and its active setup."""

from __future__ import annotations

from typing import Optional

from .base import AdapterConfig
from .fusion import AdapterFusionConfig

__all__ = ["ModelAdaptersConfig"]


class ModelAdaptersConfig:
    """Registry of one model's adapters (name -> config), fusions (name -> config and adapter
    names) and active setup. Shared by the model with heads and its base model.

    Example::

        >>> model.adapters_config.adapters
        {'a': SeqBnConfig(...)}
    """

    def __init__(self):
        self.adapters: dict[str, AdapterConfig] = {}
        self.fusions: dict[str, tuple[AdapterFusionConfig, tuple[str, ...]]] = {}
        self.active_setup = None
        self.skip_layers: Optional[frozenset] = None
        # bumped on every change: caches elsewhere (AdaLoRA's per-setup masks) compare it to see
        # whether they are still current
        self.version = 0
        # setups validated since the last change (changed() empties it)
        self._validated: dict = {}

    def changed(self) -> None:
        """Record that adapters, fusions or the active setup changed: bumps ``version`` and drops
        the cached validations of setups (the model's methods call it after every change).

        Example::

            >>> registry = model.adapters_config
            >>> version = registry.version
            >>> registry.changed()
            >>> registry.version == version + 1
            True
        """
        self.version += 1
        self._validated.clear()

    def get(self, name: str) -> Optional[AdapterConfig]:
        """The config of adapter ``name`` or None.

        Example::

            >>> model.add_adapter("a", config="seq_bn")
            >>> model.adapters_config.get("a").reduction_factor
            16
        """
        return self.adapters.get(name)

    def get_fusion(self, name: str):
        """``(config, adapter_names)`` of fusion ``name`` or None.

        Example::

            >>> model.add_adapter_fusion(Fuse("a", "b"))
            >>> config, names = model.adapters_config.get_fusion("a,b")
            >>> names
            ('a', 'b')
        """
        return self.fusions.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.adapters
