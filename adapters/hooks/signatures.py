"""The argument names of patched modules' forwards: positional arguments are named by the
signature of the class a module had before :func:`~adapters.hooks.patching.swap_class`, so hooks
that read an input by name find it however the caller passed it."""

from __future__ import annotations

import functools
import inspect

from torch import nn

__all__ = ["positional_names", "module_argument_names", "as_keyword_arguments"]


def positional_names(function) -> tuple[str, ...]:
    """The names of ``function``'s parameters that can be passed by position (``self`` left out).

    Example::

        >>> positional_names(nn.Linear.forward)
        ('input',)
    """
    params = inspect.signature(function).parameters
    return tuple(n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


@functools.lru_cache(maxsize=None)
def _forward_names(cls: type) -> tuple[str, ...]:
    return positional_names(cls.forward)


def module_argument_names(module: nn.Module) -> tuple[str, ...]:
    """The positional argument names of a class-swapped ``module``'s original forward.

    Example::

        >>> module_argument_names(bart.model.decoder)[:2]
        ('input_ids', 'attention_mask')
    """
    return _forward_names(module.__dict__.get("_adapters_original_class", type(module)))


def as_keyword_arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """A call of ``module`` with its positional arguments named (a new dict).

    Example::

        >>> as_keyword_arguments(bart.model.decoder, (ids,), {})
        {'input_ids': tensor(...)}
    """
    kwargs = dict(kwargs)
    for name, value in zip(module_argument_names(module), args):
        kwargs[name] = value
    return kwargs
