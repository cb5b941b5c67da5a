"""The per-model registry: which adapters and fusions a model has, and its active setup."""

from __future__ import annotations

from typing import Optional

from ..errors import AdapterConfigError
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

    def get(self, adapter_name: str) -> Optional[AdapterConfig]:
        """The config of adapter ``adapter_name`` or None.

        Example::

            >>> model.add_adapter("a", config="seq_bn")
            >>> model.adapters_config.get("a").reduction_factor
            16
        """
        return self.adapters.get(adapter_name)

    def get_fusion(self, fusion_name: str):
        """``(config, adapter_names)`` of fusion ``fusion_name`` or None.

        Example::

            >>> model.add_adapter_fusion(Fuse("a", "b"))
            >>> config, names = model.adapters_config.get_fusion("a,b")
            >>> names
            ('a', 'b')
        """
        return self.fusions.get(fusion_name)

    def common_config_value(self, adapter_names, attribute: str):
        """The value of config field ``attribute`` that the adapters ``adapter_names`` share
        (None where their configs lack it).

        Raises:
            AdapterConfigError: an adapter is unknown, or the adapters' values differ (the message
                names them).

        Example::

            >>> model.adapters_config.common_config_value(["a", "b"], "reduction_factor")
            16
        """
        values = {}
        for name in adapter_names:
            config = self.adapters.get(name)
            if config is None:
                raise AdapterConfigError(f"No adapter named {name!r}; the model has: {', '.join(sorted(self.adapters)) or 'none'}.")
            values[name] = config.get(attribute)
        if len({repr(value) for value in values.values()}) > 1:
            raise AdapterConfigError(f"The adapters differ in {attribute}: {values}; they must share one value.")
        return next(iter(values.values()), None)

    def __contains__(self, name: str) -> bool:
        return name in self.adapters
