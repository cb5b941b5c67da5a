"""The transformers internals whose spelling changed between the 5.x releases we support, read in
one place.

transformers 5.24 renamed a model's KV-cache argument and output field from ``past_key_values``
to ``cache`` (``past_key_values`` stays accepted, with a deprecation warning, until 5.40). Code
that looked only for ``past_key_values`` saw no cache on 5.24 and later: it then treated every
decoding step as a first step (prompt tuning joined its prompt again at every generated token).
Everything here reads both spellings, so each release from 5.23 on behaves the same; the tests in
``tests/test_transformers_surface.py`` fail, naming the installed version, if a spelling changes
again.

Example::

    >>> from adapters.compat import CACHE_NAME, passed_cache
    >>> CACHE_NAME                                 # "past_key_values" on transformers 5.23
    'cache'
    >>> passed_cache({"past_key_values": cache}) is cache
    True
"""

from __future__ import annotations

import transformers
from transformers.utils import ModelOutput

__all__ = ["CACHE_NAME", "CACHE_NAMES", "TRANSFORMERS_VERSION", "passed_cache", "returned_cache"]

TRANSFORMERS_VERSION: str = transformers.__version__


def _cache_name() -> str:
    # 5.24 gave ModelOutput a read-only ``past_key_values`` property that forwards to ``cache``
    return "cache" if isinstance(getattr(ModelOutput, "past_key_values", None), property) else "past_key_values"


CACHE_NAME: str = _cache_name()
"""The name of the KV-cache argument of a model's ``forward`` and of its output field."""

CACHE_NAMES: tuple[str, ...] = ("cache", "past_key_values") if CACHE_NAME == "cache" else ("past_key_values",)
"""Every spelling of the KV-cache argument the installed transformers accepts (the newest first):
``past_key_values`` stays accepted, deprecated, from 5.24 on; 5.23 ignores a ``cache`` argument."""


def passed_cache(kwargs: dict):
    """The KV cache in a ``forward`` call's keyword arguments, under either spelling; None if none.

    Example::

        >>> passed_cache({"input_ids": ids, "cache": cache}) is cache
        True
        >>> passed_cache({"input_ids": ids}) is None
        True
    """
    for name in CACHE_NAMES:
        value = dict.get(kwargs, name)  # dict's own get: a ModelOutput's would rename and warn
        if value is not None:
            return value
    return None


def returned_cache(outputs):
    """The KV cache a model returned (``outputs.cache`` or ``outputs.past_key_values``); None if none.
    Reads the fields without the deprecation warning the old spelling gives on 5.24 and later.

    Example::

        >>> returned_cache(model(input_ids, use_cache=True)) is not None
        True
    """
    return passed_cache(outputs) if isinstance(outputs, dict) else None
