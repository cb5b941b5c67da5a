"""The errors this library raises for bad input, one class per kind of input.

Each names the argument or file, the bad value and the valid form, and is raised before anything
changes: the model is left as it was. They subclass ``ValueError`` (and ``TypeError`` where a
value can be of the wrong type), so code that caught those before keeps working.

Example::

    >>> from adapters.errors import AdapterConfigError
    >>> try:
    ...     LoRAConfig(r=True)
    ... except AdapterConfigError as error:        # also a ValueError and a TypeError
    ...     print(error)
    LoRAConfig.r must be a positive integer (at most 65536), not the bool True.
"""

from __future__ import annotations

__all__ = ["AdapterError", "AdapterConfigError", "CompositionError", "AdapterLoadError", "AdapterMergeError"]


class AdapterError(Exception):
    """Base class of the errors below.

    Example::

        >>> try:
        ...     model.set_active_adapters("missing")
        ... except AdapterError as error:
        ...     print(type(error).__name__)
        CompositionError
    """


class AdapterConfigError(AdapterError, ValueError, TypeError):
    """A value the caller passed does not fit: a config field (wrong type, not finite, out of range,
    unknown key), an adapter, fusion or head name, or an argument of an adapter method.

    Example::

        >>> model.add_adapter("../escape")      # names are never paths
        Traceback (most recent call last):
        adapters.errors.AdapterConfigError: Invalid adapter name '../escape' (adapter_name): it contains '.', '/'. ...
    """


class CompositionError(AdapterError, ValueError, TypeError):
    """A composition setup cannot run on this model: an unknown adapter or fusion, a block a
    method cannot take part in, sizes that cannot fit (checked when the setup is activated), or an
    input it cannot split (checked once at the start of the forward pass).

    Example::

        >>> model.set_active_adapters(Parallel("a", Split("a", splits=[2])))
        Traceback (most recent call last):
        adapters.errors.CompositionError: ...
    """


class AdapterLoadError(AdapterError, ValueError):
    """A checkpoint could not be loaded; the message names the file and the problem.

    A subclass of ``ValueError``; the model is left as it was.

    Example::

        >>> try:
        ...     model.load_adapter("./not_an_adapter")
        ... except AdapterLoadError as error:
        ...     print(error)         # which file is missing or wrong, and how to fix it
    """


class AdapterMergeError(AdapterError, ValueError):
    """Merging an adapter into the weights (or undoing it) cannot be done exactly: non-finite
    values, a division by (nearly) zero, a weight format that cannot hold the result. Nothing was
    written.

    Example::

        >>> model.merge_adapter("nan_lora")
        Traceback (most recent call last):
        adapters.errors.AdapterMergeError: ...
    """
