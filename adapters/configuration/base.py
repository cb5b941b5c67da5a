"""Configuration base classes: immutable dataclasses with string ids, dict round-trips and loading.

Every method config derives from :class:`AdapterConfig`. A config is immutable (assigning to it
raises :class:`dataclasses.FrozenInstanceError`); derive variants with
:meth:`~adapters.AdapterConfig.replace` or ``AdapterConfig.load(config, **overrides)``.
Every value is checked when a config is built (see :mod:`adapters.configuration.validation`);
a bad value raises :class:`~adapters.errors.AdapterConfigError`.

A config class can be subclassed with extra fields as AdapterHub's are (``@dataclass(eq=False)``)
or as a frozen dataclass (``@dataclass(frozen=True, eq=False)``); see
:class:`~adapters.configuration.validation.Immutable`. The subclass works wherever its parent
does and ``to_dict`` (so ``adapter_config.json``) holds its extra fields. A dict holding them is
read as the subclass once an instance is registered (``register_config("my_bn", MyBnConfig())``);
otherwise a checkpoint's extra fields are dropped with a warning (AdapterHub drops them silently)
and a user's dict with them is refused.

Keys a config does not have are treated by where they come from:

- from the user (keyword arguments, a dict, ``AdapterConfig.load(..., **overrides)``,
  :meth:`~AdapterConfig.replace`): an error with a did-you-mean
  (``{"architecture": "lora", "rank": 4}``: "unknown field 'rank' for LoRAConfig; did you mean 'r'?");
- from a checkpoint's ``adapter_config.json`` (:meth:`AdapterConfig.from_checkpoint_dict`): a
  logged warning naming the file and the keys; the config is built without them, so a checkpoint
  written by a newer library version still loads.

On both paths a key that AdapterHub 1.3.0 defines and a class does not implement (a config's
``_foreign_defaults``) is accepted while it holds AdapterHub's default and refused otherwise,
and AdapterHub's legacy ``invertible_adapter`` dict is read as ``inv_adapter`` /
``inv_adapter_reduction_factor``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Optional, Union

from .. import logging
from ..errors import AdapterConfigError
from .validation import Immutable, closest, config_error, describe, did_you_mean, unknown_fields_error

__all__ = ["AdapterConfig", "ConfigUnion", "ADAPTER_CONFIG_MAP", "register_config", "config_class_for"]

# string id -> config instance, filled by the method modules (``register_config``)
ADAPTER_CONFIG_MAP: dict[str, "AdapterConfig"] = {}
# architecture name ("bottleneck", "lora", "union", ...) -> config class used by ``from_dict``
_ARCHITECTURE_CLASSES: dict[str, type] = {}
logger = logging.get_logger(__name__)


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
    if not isinstance(key, str) or key not in _ARCHITECTURE_CLASSES:
        known = ", ".join(sorted(_ARCHITECTURE_CLASSES))
        error = AdapterConfigError(
            f"Unknown adapter architecture {architecture!r}; known architectures: {known}."
            f"{did_you_mean(key, _ARCHITECTURE_CLASSES)}"
        )
        error.owner, error.field, error.value = "AdapterConfig", "architecture", architecture
        raise error
    return _ARCHITECTURE_CLASSES[key]


def _to_jsonable(value):
    if isinstance(value, tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_jsonable(v) for k, v in value.items()}
    return value


_BRACKET_RE = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<args>.*)\]$")


# activation names of unversioned (adapter-transformers 2) checkpoints -> today's
_LEGACY_ACTIVATIONS = {"gelu": "gelu_new", "gelu_orig": "gelu"}


def _split_top_level(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` where it is outside brackets and braces
    (``"a[x=[1, 2]], b"`` -> ``["a[x=[1, 2]]", " b"]``)."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _parse_config_string(text: str) -> tuple[str, dict]:
    """``"seq_bn[reduction_factor=2, non_linearity=gelu]"`` -> ("seq_bn", {...}); values are JSON
    (lists included: ``leave_out=[0, 1]``) or bare words."""
    match = _BRACKET_RE.match(text.strip())
    if not match:
        return text.strip(), {}
    overrides = {}
    for part in filter(None, (p.strip() for p in _split_top_level(match.group("args"), ","))):
        if "=" not in part:
            raise AdapterConfigError(f"Cannot parse {part!r} in config string {text!r}; write key=value.")
        key, raw = (s.strip() for s in part.split("=", 1))
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = {"True": True, "False": False, "None": None}.get(raw, raw)
    return match.group("name").strip(), overrides


def _is_default(value, default) -> bool:
    """Whether a value read from JSON is ``default`` (of the same type: ``0`` is not ``False``)."""
    if default is None or isinstance(default, bool):
        return value is default
    return type(value) is type(default) and value == default


@dataclasses.dataclass(eq=False)
class AdapterConfig(Immutable):
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
    # fields AdapterHub 1.3.0 defines for this class and this version does not implement, with
    # AdapterHub's default: accepted at that default (dropped), refused otherwise
    _foreign_defaults: ClassVar[dict] = {}

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
        names = [f.name for f in dataclasses.fields(self)]
        unknown = [key for key in changes if key not in names]
        if unknown:
            raise unknown_fields_error(type(self).__name__, unknown, names)
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
        """Build a config from a dict the user gives; the ``architecture`` key selects the class.

        A key the class does not have raises :class:`~adapters.errors.AdapterConfigError` with a
        did-you-mean (checkpoints are read with :meth:`from_checkpoint_dict`, which warns instead).

        Example::

            >>> AdapterConfig.from_dict({"architecture": "lora", "r": 4}).r
            4
            >>> AdapterConfig.from_dict({"architecture": "lora", "rank": 4})
            Traceback (most recent call last):
            adapters.errors.AdapterConfigError: unknown field 'rank' for LoRAConfig; did you mean 'r'? ...
        """
        return cls._read(config, None)

    @classmethod
    def from_checkpoint_dict(cls, data: Mapping[str, Any], file: Optional[str] = None) -> "AdapterConfig":
        """Build a config from a checkpoint's ``adapter_config.json`` (AdapterHub's layout): the
        whole file's dict (its ``"config"`` entry is read) or the bare config dict.

        Leniency, so that checkpoints from other versions load: a key the class does not have is
        dropped with a warning naming ``file`` (a newer version may have written it); a key
        AdapterHub 1.3.0 defines and this version does not implement is accepted at its default
        and refused otherwise. Values are checked as for any config. The ``"config"`` entry must
        be a dict or a config id (``"seq_bn"``, ``"lora[r=4]"``): it is never read as a path.

        Raises:
            AdapterConfigError: not a dict, a bad value, or a non-default value of a setting this
                version does not implement (the message names ``file``).

        Example::

            >>> with open("out/a/adapter_config.json") as f:
            ...     config = AdapterConfig.from_checkpoint_dict(json.load(f), file="out/a/adapter_config.json")
        """
        label = file or "the checkpoint's adapter_config.json"
        if not isinstance(data, Mapping):
            raise AdapterConfigError(f"{label} must hold a JSON object (a dict), not {describe(data)}.")
        config = data["config"] if "config" in data else data
        if "config" in data and "version" not in data and isinstance(config, Mapping):
            # written before AdapterHub's versioned files (adapter-transformers 2), whose activation
            # names AdapterHub renames on load: "gelu" meant today's "gelu_new", "gelu_orig" "gelu"
            renamed = _LEGACY_ACTIVATIONS.get(config.get("non_linearity"))
            if renamed is not None:
                config = {**config, "non_linearity": renamed}
        if isinstance(config, str):
            name, overrides = _parse_config_string(config)
            if name in ADAPTER_CONFIG_MAP:  # an id (with overrides: "lora[r=4]"), never a path
                resolved = ADAPTER_CONFIG_MAP[name]
                return resolved.replace(**overrides) if overrides else resolved
            raise AdapterConfigError(
                f"{label}: 'config' must be a JSON object holding the adapter config (or a config id such as "
                f"'seq_bn'), not {describe(config)}; a checkpoint's config is never read from another file."
            )
        if not isinstance(config, Mapping):
            raise AdapterConfigError(f"{label}: 'config' must be a JSON object holding the adapter config, not {describe(config)}.")
        try:
            return cls._read(config, label)
        except AdapterConfigError as error:
            if label in str(error):
                raise
            labelled = AdapterConfigError(f"{label}: {error}")
            labelled.owner, labelled.field, labelled.value = (getattr(error, a, None) for a in ("owner", "field", "value"))
            raise labelled from error

    @classmethod
    def _read(cls, config: Any, checkpoint: Optional[str]) -> "AdapterConfig":
        """``from_dict`` (``checkpoint`` None: strict) or ``from_checkpoint_dict`` (``checkpoint``:
        the file's label: lenient) of one config dict, union parts included."""
        if not isinstance(config, Mapping):
            raise AdapterConfigError(f"An adapter config must be a dict (or a config object or id), not {describe(config)}.")
        data = dict(config)
        target = cls
        if cls is AdapterConfig or "architecture" in data:
            target = config_class_for(data.pop("architecture", None))
        else:
            data.pop("architecture", None)
        return target._from_fields(target._upgrade_legacy(data), checkpoint)

    @classmethod
    def _upgrade_legacy(cls, data: dict) -> dict:
        """Rewrite keys older AdapterHub versions wrote into today's fields (per method family)."""
        return data

    @classmethod
    def _registered_subclass_for(cls, keys) -> Optional[type]:
        """The class to read a dict with ``keys`` that ``cls`` does not all have: a subclass of
        ``cls`` registered with :func:`register_config` (a user's config with extra fields) that
        has every one of them, the one with the fewest fields (the first registered among equals);
        None if no registered class fits."""
        fitting = []
        for config in ADAPTER_CONFIG_MAP.values():
            candidate = type(config)
            if candidate is cls or not issubclass(candidate, cls) or candidate in fitting:
                continue
            names = {f.name for f in dataclasses.fields(candidate) if f.init} | set(candidate._foreign_defaults)
            if set(keys) <= names:
                fitting.append(candidate)
        return min(fitting, key=lambda c: len(dataclasses.fields(c)), default=None)

    @classmethod
    def _from_fields(cls, data: dict, checkpoint: Optional[str] = None) -> "AdapterConfig":
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        if any(key not in names and key not in cls._foreign_defaults for key in data):
            # the extra fields of a user's subclass: read by that subclass when it is registered
            subclass = cls._registered_subclass_for(data)
            if subclass is not None:
                return subclass._from_fields(data, checkpoint)
        fields, unknown = {}, []
        for key, value in data.items():
            if key in names:
                fields[key] = value
            elif key in cls._foreign_defaults:
                default = cls._foreign_defaults[key]
                if not _is_default(value, default):
                    error = AdapterConfigError(
                        f"{cls.__name__}.{key}={value!r} is an AdapterHub setting this version does not implement; "
                        f"only its default ({default!r}) can be read. Use AdapterHub for this adapter, or drop the key."
                    )
                    error.owner, error.field, error.value = cls.__name__, key, value
                    raise error
            else:
                unknown.append(key)
        if unknown and checkpoint is None:
            raise unknown_fields_error(cls.__name__, unknown, names)
        if unknown:
            hints = "".join(f" ({key!r}: did you mean {closest(key, names)!r}?)" for key in unknown if closest(key, names))
            logger.warning(
                f"{checkpoint}: ignoring {', '.join(repr(k) for k in unknown)}, which {cls.__name__} does not have "
                f"(written by a newer library version, or by a subclass of {cls.__name__} with extra fields?); the adapter "
                f"is loaded without {'them' if len(unknown) > 1 else 'it'}.{hints} A config subclass is read back with its "
                f"fields once registered: adapters.configuration.register_config('my_config', MyConfig())."
            )
        return cls(**fields)

    @classmethod
    def load(cls, config: Union[str, Mapping, "AdapterConfig", None], **overrides) -> "AdapterConfig":
        """Resolve a config from an id (``"seq_bn"``, ``"seq_bn[reduction_factor=4]"``, a union
        ``"lora[r=4]|prefix_tuning"`` as AdapterHub writes it), a dict, a path to a JSON file (an
        ``adapter_config.json`` or a bare config), or an instance, then apply ``overrides``.

        Example::

            >>> AdapterConfig.load("par_bn", scaling="learned")
        """
        if config is None:
            raise AdapterConfigError("No adapter config given; pass a config id such as 'seq_bn' or a config object.")
        if isinstance(config, AdapterConfig):
            resolved = config
        elif isinstance(config, Mapping):
            data = config.get("config", config) if "config" in config and isinstance(config["config"], Mapping) else config
            resolved = AdapterConfig.from_dict(data)
        elif isinstance(config, str) and len(_split_top_level(config, "|")) > 1:
            # AdapterHub's union string: "lora[use_gating=True]|prefix_tuning[prefix_length=10]"
            parts = [part.strip() for part in _split_top_level(config, "|")]
            if not all(parts):
                raise AdapterConfigError(
                    f"Config string {config!r} has an empty part; write config ids joined by '|', e.g. "
                    f"'lora[r=4]|prefix_tuning[prefix_length=10]'."
                )
            resolved = ConfigUnion(*(cls.load(part) for part in parts))
        elif isinstance(config, str):
            name, string_overrides = _parse_config_string(config)
            if name in ADAPTER_CONFIG_MAP:
                resolved = ADAPTER_CONFIG_MAP[name]
            elif os.path.isfile(name):
                try:
                    with open(name, encoding="utf-8") as f:
                        data = json.load(f)
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise AdapterConfigError(f"Cannot read the adapter config file {name}: {error}.") from error
                if not isinstance(data, Mapping):  # never another path (a file naming itself would recurse)
                    raise AdapterConfigError(f"The adapter config file {name} must hold a JSON object, not {describe(data)}.")
                return cls.load(data, **string_overrides, **overrides)
            else:
                known = ", ".join(sorted(ADAPTER_CONFIG_MAP))
                raise AdapterConfigError(
                    f"Unknown adapter config {name!r}. Known config ids: {known}; or pass a config object."
                    f"{did_you_mean(name, ADAPTER_CONFIG_MAP)}"
                )
            overrides = {**string_overrides, **overrides}
        else:
            raise AdapterConfigError(
                f"Cannot load an adapter config from {describe(config)}; pass a config id such as 'seq_bn', a dict, "
                f"a path to a JSON file or a config object."
            )
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

    def replace_parts(self, change) -> "AdapterConfig":
        """The config with ``change(part)`` in place of each single-method part (a union keeps
        its other parts).

        Example::

            >>> PrefixTuningConfig().replace_parts(lambda part: part.replace(flat=True)).flat
            True
        """
        return change(self)

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


@dataclasses.dataclass(init=False, eq=False)
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
            given = kwargs.pop("configs")
            if not isinstance(given, (list, tuple)):
                raise config_error(type(self).__name__, "configs", given, "a list of configs")
            configs = tuple(given) + configs
        if kwargs:
            raise unknown_fields_error(type(self).__name__, list(kwargs), ["configs"])
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
            raise AdapterConfigError("ConfigUnion needs at least one config.")
        for config in configs:
            if isinstance(config, ConfigUnion):
                raise AdapterConfigError("ConfigUnion cannot contain another ConfigUnion; list its parts instead.")
            if not isinstance(config, AdapterConfig):
                raise config_error("ConfigUnion", "configs", config, "a list of AdapterConfig objects")
        for i, a in enumerate(configs):
            for b in configs[:i]:
                if a.architecture != b.architecture:
                    continue
                if getattr(a, "leave_out", ()) or getattr(b, "leave_out", ()):
                    continue  # may configure disjoint layers; checked per layer when added
                if a.architecture == "bottleneck":
                    if a.mh_adapter != b.mh_adapter and a.output_adapter != b.output_adapter:
                        continue
                    raise AdapterConfigError(
                        f"{type(b).__name__} and {type(a).__name__} in a ConfigUnion both place bottleneck adapters at "
                        f"the same positions (mh_adapter={a.mh_adapter}, output_adapter={a.output_adapter}); "
                        f"give them different positions."
                    )
                raise AdapterConfigError(f"ConfigUnion has two {a.architecture} configs; a union can hold each method once.")

    def replace(self, **changes) -> "ConfigUnion":
        """Apply field changes to every part that has those fields.

        Example::

            >>> MAMConfig().replace(reduction_factor=4).configs[1].reduction_factor
            4
        """
        parts, used = [], set()
        for config in self.configs:
            names = {f.name for f in dataclasses.fields(config)}
            used |= names & set(changes)
            parts.append(config.replace(**{k: v for k, v in changes.items() if k in names}))
        unknown = [key for key in changes if key not in used]
        if unknown:
            known = sorted({f.name for config in self.configs for f in dataclasses.fields(config)})
            raise unknown_fields_error(f"{type(self).__name__} (no part has it)", unknown, known)
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
    def _from_fields(cls, data: dict, checkpoint: Optional[str] = None) -> "ConfigUnion":
        unknown = [key for key in data if key != "configs"]
        if unknown and checkpoint is None:
            raise unknown_fields_error(cls.__name__, unknown, ["architecture", "configs"])
        if unknown:
            logger.warning(f"{checkpoint}: ignoring {', '.join(repr(k) for k in unknown)}, which a ConfigUnion does not have.")
        parts = data.get("configs")
        if not isinstance(parts, (list, tuple)):
            raise config_error(cls.__name__, "configs", parts, "a list of config dicts")
        return cls(*[AdapterConfig._read(c, checkpoint) for c in parts])

    def configs_by_architecture(self) -> list[AdapterConfig]:
        """The parts of the union, in order.

        Example::

            >>> len(ConfigUnion(PrefixTuningConfig(), ParBnConfig()).configs_by_architecture())
            2
        """
        return list(self.configs)

    def replace_parts(self, change) -> "ConfigUnion":
        """The union with ``change(part)`` in place of each part.

        Example::

            >>> MAMConfig().replace_parts(lambda p: p.replace(flat=True) if p.architecture == "prefix_tuning" else p)
        """
        return ConfigUnion(*(change(part) for part in self.configs))

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.configs[key]
        return super().__getitem__(key)
