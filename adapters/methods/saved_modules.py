"""Modules to save: a whole module, fully trained, as part of an adapter (PEFT's ``modules_to_save``).

Some modules cannot stay frozen while an adapter trains: a classification head initialised for
the new task, or an embedding that must learn new tokens. ``modules_to_save=["classifier"]`` in a
weight-update config (LoRA, (IA)³, ...) gives adapter ``a`` its own trainable copy ``M_a`` of every
matching module ``M``; the copy is saved and loaded with the adapter, and the forward pass uses

    y = M_a(x)   when ``a`` is active,        y = M(x)   otherwise.

The original ``M`` keeps its parameters and names (the model still loads its checkpoint). Copies
live at ``<module>.modules_to_save.<adapter>``, the in-memory layout PEFT uses.

**Composition.** A copy replaces the module, so one batch row can use one copy only:

* a single adapter, or a ``Stack`` / ``Average`` / ``Fuse`` in which one adapter has a copy of this
  module: that copy;
* ``Parallel`` / ``BatchSplit``: each branch's rows go through that branch's copy (or the original
  module, for a branch without one) - different heads for different branches in one pass;
* two adapters with copies of the same module acting on the same rows (e.g. ``Stack("a", "b")``),
  or any copy inside a ``Split`` (which cuts the sequence, not the batch): an error when the setup
  is activated, see :func:`check_saved_module_setup`.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from ..composition import AdapterCompositionBlock, BatchSplit, Parallel, Split
from ..errors import AdapterConfigError, CompositionError
from ..hooks.engine import ComposableLayer, batch_branches, remove_host_mixin
from ..hooks.patching import swap_class
from ..hooks.targeting import OWN_MODULES, closest_names, first_layers, layer_of, matches_modules

__all__ = [
    "add_saved_modules", "saved_module_paths", "check_saved_modules_in_setup","SavedModuleHost", "plain_copy", "check_saved_module_setup"]

CONTAINER = "modules_to_save"


def plain_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` as its original transformers class, without adapter copies.

    Example::

        >>> head_copy = plain_copy(model.classifier)
    """
    from ..hooks.patching import restore_class

    copies = module._modules.pop(CONTAINER, None)
    try:
        clone = copy.deepcopy(module)
    finally:
        if copies is not None:
            module._modules[CONTAINER] = copies
    restore_class(clone)
    for key in ("layer_idx", "location", "_setup_cache"):
        clone.__dict__.pop(key, None)
    clone.__dict__.update(clone.__dict__.pop("_adapters_shadowed", {}))  # the module's own (an attention's layer_idx)
    return clone


class SavedModuleHost(ComposableLayer):
    """Mixin (swapped in by class) for a module that adapters keep trainable copies of.

    Example::

        >>> model.add_adapter("task", LoRAConfig(modules_to_save=["classifier"]))
        >>> model.classifier.modules_to_save["task"]
        Linear(in_features=32, out_features=2, bias=True)
    """

    method = CONTAINER
    keeps_module_copies = True
    removed_when_empty = True

    def init_adapter_layer(self, layer_idx: int, location: str) -> None:
        self._init_composable(layer_idx, location)
        self.modules_to_save = nn.ModuleDict()

    def adapter_names(self) -> set[str]:
        return set(self.modules_to_save.keys())

    @property
    def adapters(self) -> nn.ModuleDict:
        """The copies of this module, by adapter name (the common name used by the model API)."""
        return self.modules_to_save

    def add_copy(self, name: str) -> None:
        """Give adapter ``name`` a trainable copy of this module (its current weights)."""
        self.modules_to_save[name] = plain_copy(self)
        self._invalidate_setup_cache()

    def delete_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]
            self._invalidate_setup_cache()

    def is_empty(self) -> bool:
        """Whether no adapter keeps a copy of this module (then :meth:`uninstall` may run).

        Example::

            >>> model.classifier.is_empty()
            False
        """
        return not len(self.modules_to_save)

    def uninstall(self) -> None:
        """Make this module the plain module it was before adapters kept copies of it (remove the
        ``modules_to_save`` container and the class swap). Only for an empty host.

        Example::

            >>> model.delete_adapter("task")     # the last adapter with a copy: uninstalls it
            >>> type(model.classifier).__name__
            'Linear'
        """
        if not self.is_empty():
            raise RuntimeError(f"Cannot uninstall a module that adapters keep copies of: {sorted(self.modules_to_save)}.")
        remove_host_mixin(self, SavedModuleHost, containers=(CONTAINER,))

    def forward(self, *args, **kwargs):
        setup = self.active_setup()
        if setup is None:
            return super().forward(*args, **kwargs)
        if isinstance(setup, str):
            return self.modules_to_save[setup](*args, **kwargs)
        batch = _batch_size(args, kwargs)
        branches = batch_branches(setup, batch)
        if len(branches) == 1:
            return self._run(branches[0][1], args, kwargs)
        outputs, start = [], 0
        for size, name in branches:
            sliced_args, sliced_kwargs = _narrow((args, kwargs), batch, start, size)
            outputs.append(self._run(name, sliced_args, sliced_kwargs))
            start += size
        return _concat(outputs)

    def _run(self, name, args, kwargs):
        if name is None:
            return super().forward(*args, **kwargs)
        return self.modules_to_save[name](*args, **kwargs)


def _batch_size(args, kwargs) -> int:
    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("A module with per-branch copies got no tensor input to split by batch row.")


def _narrow(value, batch: int, start: int, size: int):
    if isinstance(value, torch.Tensor):
        return value.narrow(0, start, size) if value.dim() > 0 and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(_narrow(v, batch, start, size) for v in value)
    if isinstance(value, dict):
        return {k: _narrow(v, batch, start, size) for k, v in value.items()}
    return value


def _concat(outputs: list):
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs, dim=0)
    if isinstance(first, (tuple, list)):
        return type(first)(_concat(list(parts)) for parts in zip(*outputs))
    return first


def check_saved_module_setup(setup, copies_of: dict[str, set[str]]) -> None:
    """Raise if ``setup`` would send a batch row through two copies of one module, or cut a copy
    along the sequence. ``copies_of`` maps an adapter to the module paths it has copies of.

    Example::

        >>> check_saved_module_setup(Parallel("a", "b"), {"a": {"classifier"}, "b": {"classifier"}})  # fine
    """
    if not any(copies_of.values()):
        return
    for block in _blocks(setup):
        if isinstance(block, Split):
            owners = [n for n in block.names_in_order() if copies_of.get(n)]
            if owners:
                raise CompositionError(
                    f"{block} cuts the sequence, but adapter(s) {owners} replace whole modules "
                    f"(modules_to_save); use them outside the Split."
                )
    for row_adapters in _row_groups(setup):
        seen: dict[str, str] = {}
        for name in row_adapters:
            for path in copies_of.get(name, ()):
                if path in seen and seen[path] != name:
                    raise CompositionError(
                        f"In {setup}, adapters {seen[path]!r} and {name!r} both have a copy of module {path!r} "
                        f"(modules_to_save) and act on the same inputs, but a module can be replaced by one copy "
                        f"only. Put them in Parallel branches, or keep modules_to_save on one of them."
                    )
                seen[path] = name


def _blocks(setup):
    if isinstance(setup, AdapterCompositionBlock):
        yield setup
        for child in setup.children:
            yield from _blocks(child)


def _row_groups(setup) -> list[list[str]]:
    """The sets of adapters that act on the same batch rows: Parallel / BatchSplit branches are
    separate groups, every other block joins its children's groups."""
    if isinstance(setup, str):
        return [[setup]]
    child_groups = [_row_groups(child) for child in setup.children]
    if isinstance(setup, (Parallel, BatchSplit)):
        return [group for groups in child_groups for group in groups]
    return [sum(combo, []) for combo in itertools.product(*child_groups)]


def add_saved_modules(model, name: str, module_names) -> None:
    """Give adapter ``name`` its own trainable copy of every module ``module_names`` matches
    (PEFT's ``modules_to_save``; anywhere in the model, heads included). Checks every match
    before changing anything.

    Example::

        >>> add_saved_modules(model, "task", ["classifier"])
        >>> model.classifier.modules_to_save["task"]
        Linear(in_features=32, out_features=2, bias=True)
    """
    modules = {p: m for p, m in model.named_modules() if p and not OWN_MODULES.search(p)}
    found = [p for p in modules if matches_modules(p, module_names)]
    found = [p for p in found if not any(p.startswith(q + ".") for q in found)]  # outermost only
    if not found:
        raise AdapterConfigError(
            f"modules_to_save={list(module_names)!r} matches no module of this model. Closest module names: "
            f"{', '.join(closest_names(' '.join(module_names), modules))}."
        )
    _check_copyable(modules, found)
    prefix = "" if model.base_model is model else model.base_model_prefix + "."
    spec = model.__dict__["_adapters_spec"]
    for path in found:
        module = modules[path]
        if not isinstance(module, SavedModuleHost):
            swap_class(module, SavedModuleHost)
            inner = path[len(prefix):] if path.startswith(prefix) else path
            module.init_adapter_layer(layer_of(inner, spec, None, first_layers(model.base_model, spec))[0], path)
            model._adapter_hosts.append(module)
        module.add_copy(name)
        module.modules_to_save[name].train(model.training)


def _check_copyable(modules: dict, found: list) -> None:
    """Refuse copies of modules that host adapters or share a parameter with a module outside them."""
    inside = lambda path: any(path == f or path.startswith(f + ".") for f in found)  # noqa: E731
    outside = {id(p) for path, m in modules.items() if not inside(path) for p in m.parameters(recurse=False)}
    for path in found:
        module = modules[path]
        hosts = [sub for sub in module.modules() if isinstance(sub, ComposableLayer) and not isinstance(sub, SavedModuleHost)]
        if hosts:
            raise AdapterConfigError(
                f"modules_to_save: {path!r} already hosts adapters (e.g. {type(hosts[0]).__name__}); a copy "
                f"cannot carry them. Leave {path!r} out of target_modules, or out of modules_to_save."
            )
        tied = [n for n, p in module.named_parameters() if id(p) in outside]
        if tied:
            raise AdapterConfigError(
                f"modules_to_save: {path}.{tied[0]} is shared with another module (tied weights, e.g. tied "
                f"input embeddings and LM head); a separate copy would untie them. Train it with the base "
                f"model instead, or untie the weights first."
            )


def saved_module_paths(model) -> dict[str, set[str]]:
    """adapter -> the module paths it keeps copies of (``modules_to_save``).

    Example::

        >>> saved_module_paths(model)
        {'task': {'classifier'}}
    """
    paths: dict[str, set[str]] = {}
    for host in model._adapter_hosts:
        if isinstance(host, SavedModuleHost):
            for name in host.modules_to_save:
                paths.setdefault(name, set()).add(host.location)
    return paths


def check_saved_modules_in_setup(model, setup) -> None:
    """Refuse a setup that splits the rows of one module copy between adapters that keep
    different copies (see :func:`check_saved_module_setup`); for a family's ``check_setup``.

    Example::

        >>> check_saved_modules_in_setup(model, Parallel("a", "b"))
    """
    copies = saved_module_paths(model)
    if copies:
        check_saved_module_setup(setup, copies)
