"""What merging into weights (:mod:`~adapters.merging.unload`) and combining adapters
(:mod:`~adapters.merging.combine`) both ask of a model: its weight-delta hosts, module paths for
messages, and adapter names checked."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import AdapterConfigError

__all__ = ["weight_delta_hosts", "module_paths", "require_adapters", "as_names"]


def weight_delta_hosts(model) -> list:
    """The model's hosts whose adapters change their layer's weight (linear layers with LoRA-family
    adapters or weight transforms; the host flag ``hosts_weight_deltas``).

    Example::

        >>> [type(h).__name__ for h in weight_delta_hosts(model)][:1]
        ['LinearWithAdapters']
    """
    return [host for host in model._adapter_hosts if host.hosts_weight_deltas]


def module_paths(model) -> dict[int, str]:
    """``id(module) -> path`` relative to the base model (the paths ``target_modules`` matches).

    Example::

        >>> module_paths(model)[id(model.base_model.encoder.layer[0].attention.self.query)]
        'encoder.layer.0.attention.self.query'
    """
    return {id(module): path for path, module in model.base_model.named_modules()}


def require_adapters(model, names: Sequence[str]) -> None:
    """Raise :class:`~adapters.errors.AdapterConfigError` naming the first of ``names`` the model has no adapter of.

    Example::

        >>> require_adapters(model, ["a", "typo"])
        Traceback (most recent call last):
        adapters.errors.AdapterConfigError: No adapter named 'typo'; the model has: a.
    """
    known = model.adapters_config.adapters
    for name in names:
        if name not in known:
            raise AdapterConfigError(f"No adapter named {name!r}; the model has: {', '.join(sorted(known)) or 'none'}.")


def as_names(adapter_names) -> list[str]:
    """One adapter name or several, as a list.

    Example::

        >>> as_names("a"), as_names(("a", "b"))
        (['a'], ['a', 'b'])
    """
    return [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
