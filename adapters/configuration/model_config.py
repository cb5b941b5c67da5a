"""The per-model registry: which adapters and fusions a model has, and its active setup.

Its saved form is AdapterHub's ``config.adapters`` entry of a model's ``config.json`` (written by
``save_pretrained``, read back by ``from_pretrained`` / ``adapters.init``)::

    {"adapters": {name: key}, "config_map": {key: adapter config dict},
     "fusions": {fusion name: "dynamic" | "static" | key}, "fusion_config_map": {key: fusion config dict},
     "fusion_name_map": {fusion name: [adapter names]}, "active_setup": setup dict | null}

``key`` is a hash of the config dict, so adapters that share a config share one entry.
``"active_setup"`` (:meth:`~adapters.composition.AdapterCompositionBlock.to_dict`'s layout) is
this library's addition: AdapterHub ignores the key and restores no active setup.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Optional

from .. import logging
from ..errors import AdapterConfigError
from .base import ADAPTER_CONFIG_MAP, AdapterConfig, ConfigUnion, _parse_config_string, _split_top_level
from .fusion import ADAPTERFUSION_CONFIG_MAP, AdapterFusionConfig
from .validation import check_name, describe

logger = logging.get_logger(__name__)

__all__ = ["ModelAdaptersConfig"]

#: the keys of AdapterHub's ``config.adapters`` (and this library's ``active_setup``)
SAVED_KEYS = ("adapters", "config_map", "fusions", "fusion_config_map", "fusion_name_map", "active_setup")


def _config_key(data: dict) -> str:
    """The ``config_map`` key of a config dict: a short hash of its JSON (equal configs, one key)."""
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _saved_adapter_config(value, where: str) -> AdapterConfig:
    """An adapter config as ``config.adapters`` holds it: a config dict (read leniently, as a
    checkpoint is) or a config id string (``"seq_bn"``, ``"lora[r=4]|prefix_tuning"``), never a path."""
    if isinstance(value, str):
        ids = [_parse_config_string(part.strip())[0] for part in _split_top_level(value, "|")]
        unknown = [name for name in ids if name not in ADAPTER_CONFIG_MAP]
        if unknown:
            raise AdapterConfigError(
                f"{where} is {describe(value)}, which is not a config id; a saved adapter config is a config dict or an "
                f"id ({', '.join(sorted(ADAPTER_CONFIG_MAP))}), never a path."
            )
        return AdapterConfig.load(value)
    if isinstance(value, Mapping):
        return AdapterConfig.from_checkpoint_dict(dict(value), file=where)
    raise AdapterConfigError(f"{where} is {describe(value)}; a saved adapter config is a config dict or a config id such as 'seq_bn'.")


class ModelAdaptersConfig:
    """Registry of one model's adapters (name -> config), fusions (name -> config and adapter
    names) and active setup. Shared by the model with heads and its base model.

    Example::

        >>> model.adapters_config.adapters
        {'a': SeqBnConfig(...)}
    """

    def __init__(self, **kwargs):
        """An empty registry, or with AdapterHub's keyword arguments (the saved ``config.adapters``
        dict, see the module docstring: ``ModelAdaptersConfig(**config.adapters)``) one that lists
        those adapters and fusions; ``adapters.init(model, adapters_config=...)`` builds them.

        Raises:
            AdapterConfigError: a saved entry is invalid (the message names the entry, the bad
                value and the valid form).

        Example::

            >>> registry = ModelAdaptersConfig(**model.config.adapters)
            >>> sorted(registry.adapters)
            ['a', 'b']
        """
        self.adapters: dict[str, AdapterConfig] = {}
        self.fusions: dict[str, tuple[AdapterFusionConfig, tuple[str, ...]]] = {}
        self.active_setup = None
        self.skip_layers: Optional[frozenset] = None
        # bumped on every change: caches elsewhere (AdaLoRA's per-setup masks) compare it to see
        # whether they are still current
        self.version = 0
        # setups validated since the last change (changed() empties it)
        self._validated: dict = {}
        # the "active_setup" entry of a saved registry, as read (see _read_saved)
        self.saved_active_setup = None
        if kwargs:
            self._read_saved(kwargs, "ModelAdaptersConfig(**kwargs)")

    @classmethod
    def from_saved(cls, data, where: str = "config.adapters") -> "ModelAdaptersConfig":
        """The registry a saved ``config.adapters`` dict describes (AdapterHub's or ours);
        ``where`` names the source in error messages (e.g. the ``config.json`` it came from).

        Raises:
            AdapterConfigError: ``data`` is not that layout (the message names ``where``, the
                entry, the bad value and the valid form).

        Example::

            >>> ModelAdaptersConfig.from_saved(json.load(open("out/model/config.json"))["adapters"])
        """
        registry = cls()
        if not isinstance(data, Mapping):
            raise AdapterConfigError(
                f"{where} is {describe(data)}; it must be a dict with the keys {', '.join(SAVED_KEYS)} "
                f"(as save_pretrained writes it)."
            )
        registry._read_saved(data, where)
        return registry

    def _read_saved(self, data: Mapping, where: str) -> None:
        def table(key: str) -> dict:
            value = data.get(key) or {}
            if not isinstance(value, Mapping):
                raise AdapterConfigError(f"{where}[{key!r}] is {describe(value)}; it must be a dict (see ModelAdaptersConfig).")
            return dict(value)

        unknown = sorted(set(data) - set(SAVED_KEYS))
        if unknown:
            logger.warning(f"{where}: ignoring the key(s) {unknown}, which this version does not read (valid: {', '.join(SAVED_KEYS)}).")
        config_map, fusion_config_map, fusion_name_map = table("config_map"), table("fusion_config_map"), table("fusion_name_map")
        for name, key in table("adapters").items():
            entry = f"{where}['adapters'][{name!r}]"
            check_name(name, argument=f"in {where}['adapters']")
            if isinstance(key, (list, tuple)) and len(key) == 2:  # adapter-transformers 1.x: (type, config name)
                key = key[1] or key[0]
            if isinstance(key, str) and key in config_map:
                self.adapters[name] = _saved_adapter_config(config_map[key], f"{where}['config_map'][{key!r}]")
            else:
                self.adapters[name] = _saved_adapter_config(key, entry)
        for fusion_name, key in table("fusions").items():
            entry = f"{where}['fusions'][{fusion_name!r}]"
            check_name(fusion_name, kind="fusion", argument=f"in {where}['fusions']")
            if isinstance(key, str) and key in fusion_config_map:
                saved = fusion_config_map[key]
                config = AdapterFusionConfig.from_checkpoint_dict(saved, file=f"{where}['fusion_config_map'][{key!r}]")
            elif isinstance(key, str) and key in ADAPTERFUSION_CONFIG_MAP:
                config = ADAPTERFUSION_CONFIG_MAP[key]
            elif isinstance(key, Mapping):
                config = AdapterFusionConfig.from_checkpoint_dict(key, file=entry)
            else:
                raise AdapterConfigError(
                    f"{entry} is {describe(key)}; a fusion's config is 'dynamic', 'static' or a key of "
                    f"{where}['fusion_config_map']."
                )
            names = fusion_name_map.get(fusion_name, fusion_name.split(","))
            if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
                raise AdapterConfigError(
                    f"{where}['fusion_name_map'][{fusion_name!r}] is {describe(names)}; it must list the fused adapters, "
                    f"e.g. ['a', 'b']."
                )
            for adapter in names:
                check_name(adapter, argument=f"in {where}['fusion_name_map'][{fusion_name!r}]")
            missing = [adapter for adapter in names if adapter not in self.adapters]
            if missing:
                raise AdapterConfigError(
                    f"{entry} fuses {missing}, which {where}['adapters'] does not list; a fusion fuses saved adapters."
                )
            self.fusions[fusion_name] = (config, tuple(names))
        # the saved active setup stays data here (blocks live in a layer above the configuration);
        # adapters.init / from_pretrained check and activate it once the adapters exist
        self.saved_active_setup = data.get("active_setup")
        self.changed()

    def to_dict(self) -> dict:
        """The registry in the saved layout (see the module docstring), as ``save_pretrained``
        writes it to ``config.adapters``; :meth:`from_saved` reads it back.

        Example::

            >>> model.adapters_config.to_dict()["adapters"]
            {'a': '3f1c2e0b9d8a7c6e'}
        """
        adapters, config_map = {}, {}
        for name, config in self.adapters.items():
            data = config.to_dict()
            key = _config_key(data)
            config_map[key] = data
            adapters[name] = key
        fusions, fusion_config_map, fusion_name_map = {}, {}, {}
        for fusion_name, (config, names) in self.fusions.items():
            data = config.to_dict()
            preset = next((k for k, v in ADAPTERFUSION_CONFIG_MAP.items() if v.to_dict() == data), None)
            if preset is None:
                preset = _config_key(data)
                fusion_config_map[preset] = data
            fusions[fusion_name] = preset
            fusion_name_map[fusion_name] = list(names)
        setup = self.active_setup
        return {
            "adapters": adapters,
            "config_map": config_map,
            "fusions": fusions,
            "fusion_config_map": fusion_config_map,
            "fusion_name_map": fusion_name_map,
            "active_setup": setup.to_dict() if hasattr(setup, "to_dict") else None,
        }

    def add(self, adapter_name: str, config=None) -> None:
        """Register adapter ``adapter_name`` with ``config`` (an id, dict or config object;
        default ``"seq_bn"``, as AdapterHub's) without creating weights: a registry built this way
        is passed to ``adapters.init(model, adapters_config=...)``, which creates them. On a
        model, use ``model.add_adapter``.

        Raises:
            AdapterConfigError: the name is taken or invalid, or the config is invalid.

        Example::

            >>> registry = ModelAdaptersConfig()
            >>> registry.add("a", config="lora[r=4]")
            >>> adapters.init(model, adapters_config=registry)
        """
        check_name(adapter_name)
        if adapter_name in self.adapters:
            raise AdapterConfigError(f"An adapter named {adapter_name!r} is registered already; choose another name.")
        self.adapters[adapter_name] = AdapterConfig.load("seq_bn" if config is None else config)
        self.changed()

    def add_fusion(self, adapter_names, config=None, fusion_name: Optional[str] = None) -> None:
        """Register a fusion of ``adapter_names`` (a list, or ``"a,b"``) with ``config``
        (``"dynamic"`` by default, as AdapterHub's) under ``fusion_name`` (default: the names
        joined by commas), without creating weights (see :meth:`add`).

        Raises:
            AdapterConfigError: the name is taken, an adapter is not registered, or the config is
                invalid.

        Example::

            >>> registry.add_fusion(["a", "b"], "dynamic")
        """
        names = [n.strip() for n in adapter_names.split(",")] if isinstance(adapter_names, str) else list(adapter_names)
        missing = [name for name in names if name not in self.adapters]
        if not names or missing:
            raise AdapterConfigError(
                f"add_fusion: adapter_names={adapter_names!r} must name registered adapters "
                f"(registered: {', '.join(sorted(self.adapters)) or 'none'})."
            )
        fusion_name = check_name(fusion_name if fusion_name is not None else ",".join(names), kind="fusion", argument="fusion_name")
        if fusion_name in self.fusions:
            raise AdapterConfigError(f"A fusion named {fusion_name!r} is registered already; choose another fusion_name.")
        self.fusions[fusion_name] = (AdapterFusionConfig.load("dynamic" if config is None else config), tuple(names))
        self.changed()

    def match(self, adapter_name: str, config_type: type, layer_idx: Optional[int] = None, location_key: Optional[str] = None):
        """The part of adapter ``adapter_name``'s config that is a ``config_type``, that does not
        leave out layer ``layer_idx`` and, with ``location_key``, whose field of that name is
        true (``"mh_adapter"``, ``"output_adapter"``); None if none is.

        Raises:
            AdapterConfigError: several parts of a union match (one adapter, one part per place).

        Example::

            >>> model.adapters_config.match("mam", PrefixTuningConfig, layer_idx=0)
            PrefixTuningConfig(...)
        """
        config = self.adapters.get(adapter_name)
        if config is None:
            return None
        parts = config.configs if isinstance(config, ConfigUnion) else (config,)
        found = [
            part for part in parts
            if isinstance(part, config_type)
            and (layer_idx is None or layer_idx not in (part.get("leave_out") or ()))
            and (location_key is None or part.get(location_key, False))
        ]
        if len(found) > 1:
            raise AdapterConfigError(
                f"Adapter {adapter_name!r} has {len(found)} {config_type.__name__} parts at layer {layer_idx}; a union may "
                f"hold one part per place."
            )
        return found[0] if found else None

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

    @property
    def fusion_name_map(self) -> dict:
        """The adapters of each fusion added under a name of its own (``add_adapter_fusion(...,
        name=...)``), as AdapterHub's registry keeps them: ``{fusion name: [adapter names]}``. A
        fusion named by its adapters (``"a,b"``) needs no entry. A fresh dict: changing it changes
        nothing.

        Example::

            >>> model.add_adapter_fusion(["a", "b"], name="ab")
            >>> model.adapters_config.fusion_name_map
            {'ab': ['a', 'b']}
        """
        return {
            fusion_name: list(names)
            for fusion_name, (_, names) in self.fusions.items()
            if fusion_name != ",".join(names)
        }

    def __contains__(self, name: str) -> bool:
        return name in self.adapters

    def __iter__(self):
        """The adapter names (AdapterHub's registry is a collection of them)."""
        return iter(self.adapters)

    def __len__(self) -> int:
        return len(self.adapters)
