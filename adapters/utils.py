"""AdapterHub's ``adapters.utils`` names that user code and AdapterHub's tests import: the file
names of the checkpoint layout (the same files this library reads and writes), the config-string
parser and the config hash.

Example::

    >>> from adapters.utils import WEIGHTS_NAME, SAFE_WEIGHTS_NAME
    >>> SAFE_WEIGHTS_NAME
    'adapter.safetensors'
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from .configuration.base import AdapterConfig, _parse_config_string, _split_top_level
from .heads.checkpoints import HEAD_CONFIG_NAME, HEAD_SAFE_WEIGHTS_NAME, HEAD_WEIGHTS_NAME
from .interface import INTERFACE_CONFIG_NAME
from .loading import (
    CONFIG_NAME,
    FUSION_CONFIG_NAME,
    FUSION_SAFE_WEIGHTS_NAME,
    FUSION_WEIGHTS_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
)

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "SAFE_WEIGHTS_NAME", "HEAD_CONFIG_NAME", "HEAD_WEIGHTS_NAME", "SAFE_HEAD_WEIGHTS_NAME",
    "ADAPTERFUSION_CONFIG_NAME", "ADAPTERFUSION_WEIGHTS_NAME", "SAFE_ADAPTERFUSION_WEIGHTS_NAME", "EMBEDDING_FILE",
    "TOKENIZER_PATH", "SETUP_CONFIG_NAME", "INTERFACE_CONFIG_NAME", "parse_adapter_config_string",
    "resolve_adapter_config", "get_adapter_config_hash",
]

# AdapterHub's names for the files of its layout
SAFE_HEAD_WEIGHTS_NAME = HEAD_SAFE_WEIGHTS_NAME
ADAPTERFUSION_CONFIG_NAME = FUSION_CONFIG_NAME
ADAPTERFUSION_WEIGHTS_NAME = FUSION_WEIGHTS_NAME
SAFE_ADAPTERFUSION_WEIGHTS_NAME = FUSION_SAFE_WEIGHTS_NAME
#: the embedding and tokenizer a model saves with ``save_embeddings`` (AdapterHub's names)
EMBEDDING_FILE = "embedding.pt"
TOKENIZER_PATH = "tokenizer"
#: AdapterHub's file of a saved adapter setup (``save_adapter_setup``)
SETUP_CONFIG_NAME = "adapter_setup.json"


def parse_adapter_config_string(config_string: str) -> list[tuple[str, dict]]:
    """``[(config id, overrides)]`` of a config string: ids with bracket overrides, joined by ``|``
    for a union (AdapterHub's syntax; :meth:`adapters.AdapterConfig.load` reads it).

    Example::

        >>> parse_adapter_config_string("lora[r=4]|prefix_tuning[prefix_length=10]")
        [('lora', {'r': 4}), ('prefix_tuning', {'prefix_length': 10})]
    """
    return [_parse_config_string(part) for part in _split_top_level(config_string, "|")]


def resolve_adapter_config(config, local_map=None, **kwargs) -> AdapterConfig:
    """The config ``config`` names (an id, a config string, a dict, a JSON file or a config), with
    ``kwargs`` as overrides; ``local_map`` (id -> config) is looked up first.

    Example::

        >>> resolve_adapter_config("seq_bn", reduction_factor=4).reduction_factor
        4
    """
    if isinstance(config, str) and local_map and config in local_map:
        config = local_map[config]
    return AdapterConfig.load(config, **kwargs)


#: keys at these values are left out of the hash (they came in after AdapterHub's version 2, and
#: leaving them out keeps the hashes of older configs unchanged)
_HASH_IGNORED_DEFAULTS = {
    "phm_layer": True, "phm_dim": 4, "factorized_phm_W": True, "shared_W_phm": False, "shared_phm_rule": True,
    "factorized_phm_rule": False, "phm_c_init": "normal", "phm_init_range": 0.0001, "learn_phm": True,
    "hypercomplex_nonlinearity": "glorot-uniform", "phm_rank": 1, "phm_bias": True, "init_weights": "bert", "scaling": 1.0,
}


def _without_empty(value):
    """``value`` with every empty or false entry of its dicts removed, recursively."""
    if isinstance(value, Mapping):
        return {key: _without_empty(entry) for key, entry in value.items() if entry}
    return value


def get_adapter_config_hash(config, length: int = 16, ignore_params: list = []) -> str:  # noqa: B006 (AdapterHub's default; never changed)
    """AdapterHub's identifier of a config: the SHA-1 of its dict as sorted JSON, without empty or
    false entries, ``ignore_params`` and the post-version-2 keys at their defaults; its first
    ``length`` hex digits. The same dict gives the same hash as in AdapterHub.

    Example::

        >>> get_adapter_config_hash({"reduction_factor": 16, "non_linearity": "relu", "init_weights": "bert"})
        'b7d265cde0728407'
    """
    if isinstance(config, str):
        config = AdapterConfig.load(config)
    data = config.to_dict() if isinstance(config, AdapterConfig) else dict(config)
    ignored = set(ignore_params)
    minimized = _without_empty({key: value for key, value in data.items() if key not in ignored})
    for key, default in _HASH_IGNORED_DEFAULTS.items():
        if key in minimized and minimized[key] == default:
            del minimized[key]
    return hashlib.sha1(json.dumps(minimized, sort_keys=True).encode("utf-8")).hexdigest()[:length]
