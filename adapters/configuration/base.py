"""Configuration base classes: frozen dataclasses with string ids, dict round-trips and loading.

Every method config derives from :class:`AdapterConfig`. A config is immutable; derive variants
with :meth:`~adapters.AdapterConfig.replace` or ``AdapterConfig.load(config, **overrides)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Union

__all__ = ["AdapterConfig", "ConfigUnion", "ADAPTER_CONFIG_MAP", "register_config", "config_class_for"]

# string id -> config instance, filled by the method modules (``register_config``)
ADAPTER_CONFIG_MAP: dict[str, "AdapterConfig"] = {}
# architecture name ("bottleneck", "lora", "union", ...) -> config class used by ``from_dict``
_ARCHITECTURE_CLASSES: dict[str, type] = {}


def register_config(name: str, config: "AdapterConfig") -> None:
    """Make ``config`` available under the string id ``name`` (e.g. ``"seq_bn"``).

    Example::

        >>> register_config("my_bn", SeqBnConfig(reduction_factor=4))
        >>> model.add_adapter("a", config="my_bn")
    """
    ADAPTER_CONFIG_MAP[name] = config


def config_class_for(architecture: str | None) -> type:
    """The config class that reads a dict with the given ``architecture`` key."""
    key = architecture or "bottleneck"
    if key not in _ARCHITECTURE_CLASSES:
        known = ", ".join(sorted(_ARCHITECTURE_CLASSES))
        raise ValueError(f"Unknown adapter architecture {architecture!r}; known architectures: {known}.")
    return _ARCHITECTURE_CLASSES[key]


def _to_jsonable(value):
    if isinstance(value, tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_jsonable(v) for k, v in value.items()}
    return value


_BRACKET_RE = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<args>.*)\]$")


def _parse_config_string(text: str) -> tuple[str, dict]:
    """``"seq_bn[reduction_factor=2, non_linearity=gelu]"`` -> ("seq_bn", {...})."""
    match = _BRACKET_RE.match(text.strip())
    if not match:
        return text.strip(), {}
    overrides = {}
    for part in filter(None, (p.strip() for p in match.group("args").split(","))):
        if "=" not in part:
            raise ValueError(f"Cannot parse {part!r} in config string {text!r}; write key=value.")
        key, raw = (s.strip() for s in part.split("=", 1))
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = {"True": True, "False": False, "None": None}.get(raw, raw)
    return match.group("name").strip(), overrides


@dataclasses.dataclass(frozen=True, eq=False)
class AdapterConfig:
    """Base class of all adapter method configs.

    Subclasses set the class attribute ``architecture`` (the method family, written to
    ``adapter_config.json``) and declare their knobs as dataclass fields.

    Example::

        >>> config = AdapterConfig.load("seq_bn", reduction_factor=8)
        >>> config.to_dict()["reduction_factor"]
        8
    """

    architecture: ClassVar[str | None] = None
    # bottleneck configs are written without an "architecture" key, as AdapterHub does
    _write_architecture: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("architecture") is not None and cls.architecture not in _ARCHITECTURE_CLASSES:
            _ARCHITECTURE_CLASSES[cls.architecture] = cls

    def __eq__(self, other) -> bool:
        # presets (SeqBnConfig, ...) equal the plain config with the same values, as after a JSON round trip
        return isinstance(other, AdapterConfig) and self.architecture == other.architecture and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def replace(self, **changes) -> "AdapterConfig":
        """A copy with some fields changed (validated again).

        Example::

            >>> SeqBnConfig().replace(reduction_factor=4).reduction_factor
            4
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}.")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict in AdapterHub's ``adapter_config.json`` layout.

        Example::

            >>> SeqBnConfig().to_dict()["original_ln_before"]
            True
        """
        data = {f.name: _to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if self.architecture is not None and self._write_architecture:
            data["architecture"] = self.architecture
        return dict(sorted(data.items()))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "AdapterConfig":
        """Build a config from a dict; the ``architecture`` key selects the class.

        Keys the class does not know are ignored (AdapterHub adds fields over time), so newer
        checkpoints load.

        Example::

            >>> AdapterConfig.from_dict({"architecture": "union", "configs": [...]})
        """
        data = dict(config)
        target = cls
        if cls is AdapterConfig or "architecture" in data:
            target = config_class_for(data.pop("architecture", None))
        else:
            data.pop("architecture", None)
        return target._from_fields(data)

    @classmethod
    def _from_fields(cls, data: dict) -> "AdapterConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, config: Union[str, Mapping, "AdapterConfig", None], **overrides) -> "AdapterConfig":
        """Resolve a config from an id (``"seq_bn"``, ``"seq_bn[reduction_factor=4]"``), a dict,
        a path to a JSON file (an ``adapter_config.json`` or a bare config), or an instance, then
        apply ``overrides``.

        Example::

            >>> AdapterConfig.load("par_bn", scaling="learned")
        """
        if config is None:
            raise ValueError("No adapter config given; pass a config id such as 'seq_bn' or a config object.")
        if isinstance(config, AdapterConfig):
            resolved = config
        elif isinstance(config, Mapping):
            data = config.get("config", config) if "config" in config and isinstance(config["config"], Mapping) else config
            resolved = AdapterConfig.from_dict(data)
        elif isinstance(config, str):
            name, string_overrides = _parse_config_string(config)
            if name in ADAPTER_CONFIG_MAP:
                resolved = ADAPTER_CONFIG_MAP[name]
            elif os.path.isfile(name):
                with open(name, encoding="utf-8") as f:
                    return cls.load(json.load(f), **string_overrides, **overrides)
            else:
                known = ", ".join(sorted(ADAPTER_CONFIG_MAP))
                raise ValueError(f"Unknown adapter config {name!r}. Known config ids: {known}; or pass a config object.")
            overrides = {**string_overrides, **overrides}
        else:
            raise TypeError(f"Cannot load an adapter config from {type(config).__name__}.")
        return resolved.replace(**overrides) if overrides else resolved

    def configs_by_architecture(self) -> list["AdapterConfig"]:
        """The single-method configs this config consists of (a union has several).

        Example::

            >>> [type(c).__name__ for c in MAMConfig().configs_by_architecture()]
            ['PrefixTuningConfig', 'ParBnConfig']
            >>> len(SeqBnConfig().configs_by_architecture())
            1
        """
        return [self]

    def get(self, key: str, default=None):
        """Dict-style access, for code written against AdapterHub's configs.

        Example::

            >>> SeqBnConfig().get("reduction_factor")
            16
            >>> SeqBnConfig().get("no_such_field", 0)
            0
        """
        return getattr(self, key, default)

    def __getitem__(self, key: str):
        return getattr(self, key)


@dataclasses.dataclass(frozen=True, init=False, eq=False)
class ConfigUnion(AdapterConfig):
    """Several methods under one adapter name (e.g. prefix tuning + a parallel bottleneck).

    Two parts may not configure the same place: two bottleneck configs must differ in both
    ``mh_adapter`` and ``output_adapter``; any other two parts must be different methods.

    Example::

        >>> config = ConfigUnion(SeqBnConfig(mh_adapter=True, output_adapter=False),
        ...                      ParBnConfig())
    """

    architecture: ClassVar[str] = "union"
    configs: tuple = ()

    def __init__(self, *configs: AdapterConfig, **kwargs):
        if "configs" in kwargs:
            configs = tuple(kwargs.pop("configs")) + configs
        if kwargs:
            raise TypeError(f"ConfigUnion got unexpected arguments {sorted(kwargs)}.")
        parsed = tuple(c if isinstance(c, AdapterConfig) else AdapterConfig.load(c) for c in configs)
        object.__setattr__(self, "configs", parsed)
        self.validate(parsed)

    @staticmethod
    def validate(configs) -> None:
        """Raise if two parts of a union would configure the same place.

        Example::

            >>> ConfigUnion.validate([SeqBnConfig(), SeqBnConfig()])
            Traceback (most recent call last):
            ValueError: SeqBnConfig and SeqBnConfig in a ConfigUnion both place bottleneck adapters at the same positions ...
        """
        if not configs:
            raise ValueError("ConfigUnion needs at least one config.")
        for config in configs:
            if isinstance(config, ConfigUnion):
                raise TypeError("ConfigUnion cannot contain another ConfigUnion; list its parts instead.")
        for i, a in enumerate(configs):
            for b in configs[:i]:
                if a.architecture != b.architecture:
                    continue
                if getattr(a, "leave_out", ()) or getattr(b, "leave_out", ()):
                    continue  # may configure disjoint layers; checked per layer when added
                if a.architecture == "bottleneck":
                    if a.mh_adapter != b.mh_adapter and a.output_adapter != b.output_adapter:
                        continue
                    raise ValueError(
                        f"{type(b).__name__} and {type(a).__name__} in a ConfigUnion both place bottleneck adapters at "
                        f"the same positions (mh_adapter={a.mh_adapter}, output_adapter={a.output_adapter}); "
                        f"give them different positions."
                    )
                raise ValueError(f"ConfigUnion has two {a.architecture} configs; a union can hold each method once.")

    def replace(self, **changes) -> "ConfigUnion":
        """Apply field changes to every part that has those fields.

        Example::

            >>> MAMConfig().replace(reduction_factor=4).configs[1].reduction_factor
            4
        """
        parts = []
        for config in self.configs:
            names = {f.name for f in dataclasses.fields(config)}
            parts.append(config.replace(**{k: v for k, v in changes.items() if k in names}))
        return ConfigUnion(*parts)

    def to_dict(self) -> dict[str, Any]:
        """``{"architecture": "union", "configs": [...]}``.

        Example::

            >>> d = MAMConfig().to_dict()
            >>> d["architecture"], d["configs"][0]["architecture"]
            ('union', 'prefix_tuning')
        """
        return {"architecture": "union", "configs": [c.to_dict() for c in self.configs]}

    @classmethod
    def _from_fields(cls, data: dict) -> "ConfigUnion":
        return cls(*[AdapterConfig.from_dict(c) for c in data.get("configs", [])])

    def configs_by_architecture(self) -> list[AdapterConfig]:
        """The parts of the union, in order.

        Example::

            >>> len(ConfigUnion(PrefixTuningConfig(), ParBnConfig()).configs_by_architecture())
            2
        """
        return list(self.configs)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.configs[key]
        return super().__getitem__(key)
