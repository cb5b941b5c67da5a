"""AdapterFusion configs (Pfeiffer et al., 2021). The math is in :mod:`adapters.methods.fusion`.

Values are checked when a config is built; keys a fusion config does not have are refused with a
did-you-mean when the user passes them and dropped with a warning when a checkpoint holds them
(:meth:`AdapterFusionConfig.from_checkpoint_dict`), as for adapter configs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, ClassVar, Optional, Union

from .. import logging
from ..errors import AdapterConfigError
from .validation import Immutable, check_bool, check_probability, closest, config_error, describe, did_you_mean, unknown_fields_error

__all__ = [
    "AdapterFusionConfig",
    "DynamicFusionConfig",
    "StaticFusionConfig",
    "DynamicAdapterFusionConfig",
    "StaticAdapterFusionConfig",
    "ADAPTERFUSION_CONFIG_MAP",
]

logger = logging.get_logger(__name__)
_BOOL_FIELDS = ("key", "query", "value", "query_before_ln", "regularization", "residual_before", "temperature", "value_before_softmax")


@dataclasses.dataclass(eq=False)
class AdapterFusionConfig(Immutable):
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

    # no method family: AdapterHub's AdapterConfig attribute, None for fusion configs as there
    architecture: ClassVar[Optional[str]] = None

    key: bool = True
    query: bool = True
    value: bool = True
    query_before_ln: bool = False
    regularization: bool = True
    residual_before: bool = False
    temperature: bool = False
    value_before_softmax: bool = True
    value_initialized: Union[bool, str] = True
    dropout_prob: Optional[float] = None

    def __post_init__(self):
        """Every value check of AdapterFusion, in one place."""
        name = type(self).__name__
        for field in _BOOL_FIELDS:
            check_bool(name, field, getattr(self, field))
        if not isinstance(self.value_initialized, (bool, str)):
            raise config_error(name, "value_initialized", self.value_initialized, "True or False")
        if self.dropout_prob is not None:
            check_probability(name, "dropout_prob", self.dropout_prob)

    def __eq__(self, other) -> bool:
        # by value, as AdapterHub compares configs (DynamicFusionConfig() equals the plain config with its values)
        return isinstance(other, AdapterFusionConfig) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

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
        names = [f.name for f in dataclasses.fields(self)]
        unknown = [key for key in changes if key not in names]
        if unknown:
            raise unknown_fields_error(type(self).__name__, unknown, names)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, config: Mapping) -> "AdapterFusionConfig":
        """Build a fusion config from a dict (a key it does not have raises an
        :class:`~adapters.errors.AdapterConfigError` with a did-you-mean).

        Example::

            >>> AdapterFusionConfig.from_dict({"temperature": True}).temperature
            True
        """
        return cls._read(config, None)

    @classmethod
    def _read(cls, data: Any, checkpoint: Optional[str]) -> "AdapterFusionConfig":
        if not isinstance(data, Mapping):
            raise AdapterConfigError(f"A fusion config must be a dict, not {describe(data)}.")
        names = [f.name for f in dataclasses.fields(AdapterFusionConfig)]
        unknown = [key for key in data if key not in names]
        if unknown and checkpoint is None:
            raise unknown_fields_error("AdapterFusionConfig", unknown, names)
        if unknown:
            hints = "".join(f" ({key!r}: did you mean {closest(key, names)!r}?)" for key in unknown if closest(key, names))
            logger.warning(
                f"{checkpoint}: ignoring {', '.join(repr(k) for k in unknown)}, which AdapterFusionConfig does not have "
                f"(written by a newer library version?).{hints}"
            )
        return AdapterFusionConfig(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_checkpoint_dict(cls, data: Mapping, file: Optional[str] = None) -> "AdapterFusionConfig":
        """Build a fusion config from a checkpoint's ``adapter_fusion_config.json``: the whole
        file's dict (its ``"config"`` entry is read) or the bare config. Keys a fusion config does
        not have are dropped with a warning naming ``file``; values are checked.

        Raises:
            AdapterConfigError: not a dict, or a bad value (the message names ``file``).

        Example::

            >>> AdapterFusionConfig.from_checkpoint_dict({"config": {"key": True, "new_knob": 1}}, file="f.json")
            AdapterFusionConfig(key=True, ...)          # and a warning about 'new_knob'
        """
        label = file or "the checkpoint's adapter_fusion_config.json"
        if not isinstance(data, Mapping):
            raise AdapterConfigError(f"{label} must hold a JSON object (a dict), not {describe(data)}.")
        config = data["config"] if "config" in data else data
        if isinstance(config, str) and config in ADAPTERFUSION_CONFIG_MAP:  # an id, never a path
            return ADAPTERFUSION_CONFIG_MAP[config]
        if not isinstance(config, Mapping):
            raise AdapterConfigError(f"{label}: 'config' must be a JSON object holding the fusion config, not {describe(config)}.")
        try:
            return cls._read(config, label)
        except AdapterConfigError as error:
            raise AdapterConfigError(f"{label}: {error}") from error

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
            resolved = cls._read(data, None)
        elif isinstance(config, str) and config in ADAPTERFUSION_CONFIG_MAP:
            resolved = ADAPTERFUSION_CONFIG_MAP[config]
        elif isinstance(config, str) and os.path.isfile(config):
            try:
                with open(config, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise AdapterConfigError(f"Cannot read the fusion config file {config}: {error}.") from error
            if not isinstance(data, Mapping):  # never another path
                raise AdapterConfigError(f"The fusion config file {config} must hold a JSON object, not {describe(data)}.")
            return cls.load(data, **overrides)
        else:
            raise AdapterConfigError(
                f"Unknown fusion config {config!r}; use 'dynamic', 'static', a dict or an AdapterFusionConfig."
                f"{did_you_mean(config, ADAPTERFUSION_CONFIG_MAP)}"
            )
        return resolved.replace(**overrides) if overrides else resolved

    def __getitem__(self, key):
        return getattr(self, key)


@dataclasses.dataclass(eq=False)
class DynamicFusionConfig(AdapterFusionConfig):
    """Learned query, key and value projections with value regularisation (the paper's setup).

    Example::

        >>> model.add_adapter_fusion(["a", "b"], config=DynamicFusionConfig())
    """


@dataclasses.dataclass(eq=False)
class StaticFusionConfig(AdapterFusionConfig):
    """Learned query and key projections, no value projection and no regularisation (AdapterHub's
    "static" fusion).

    Example::

        >>> model.add_adapter_fusion(["a", "b"], config="static")
    """

    value: bool = False
    regularization: bool = False
    value_initialized: Union[bool, str] = False


# AdapterHub's names
DynamicAdapterFusionConfig = DynamicFusionConfig
StaticAdapterFusionConfig = StaticFusionConfig

ADAPTERFUSION_CONFIG_MAP = {"dynamic": DynamicFusionConfig(), "static": StaticFusionConfig()}
