"""Merging adapters into the base weights and unloading the library from a model.

``merge_adapter`` / ``unmerge_adapter`` (``reset_adapter``) fold weight-delta adapters into the
weights of the layers they adapt and take them out again, keeping the adapters;
``merge_and_unload`` merges and then removes every trace of this library, so the model that comes
back is the plain transformers model; ``unload`` removes everything without merging. Every merge
and unmerge is all or nothing (:func:`apply_all_or_nothing`; see :mod:`adapters.merging`).

The hosts do the arithmetic (``host.merge`` / ``host.unmerge``, see
:class:`~adapters.methods.lora.LinearHost`); this module decides which adapters merge where, runs
the trial on copies, and strips the library off. It knows the methods only through the
method-family registry and the hosts' capability flags.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from .. import logging
from ..composition import Average, Stack
from ..context import registry_lock
from ..errors import AdapterConfigError, AdapterMergeError
from ..hooks.attention import PREFIX, attention_configs
from ..hooks.engine import ComposableLayer
from ..hooks.patching import restore_class
from ..interface import CONFIG_KEY
from ..methods.registry import families
from .common import as_names, module_paths, require_adapters, weight_delta_hosts

__all__ = ["UnloadMixin", "apply_all_or_nothing"]

logger = logging.get_logger(__name__)


# -- merge_and_unload: which adapters, checks, and stripping the library off -------------------------


def _stack_names(setup) -> list[str]:
    """The adapters of a setup that folds into one weight per layer (names and Stacks), in order."""
    if isinstance(setup, str):
        return [setup]
    if isinstance(setup, Stack):
        return [name for child in setup.children for name in _stack_names(child)]
    hint = ""
    if isinstance(setup, Average):
        hint = " (to merge a weighted mean, build one adapter with add_weighted_adapter first)"
    raise AdapterConfigError(
        f"Cannot merge the active setup: it contains the block {setup}, which has no single merged weight. "
        f"Merging folds adapters into one weight per layer, which is defined for a single adapter or a Stack of "
        f"LoRA-family adapters only{hint}. Activate such a setup, or pass adapter_names=[...] to choose the "
        f"adapters to merge."
    )


def _weight_delta_methods() -> set[str]:
    """The config architectures whose adapters fold into the weights of linear layers (registry)."""
    return {f.name for f in families() if f.weight_delta}


def _weight_delta_titles() -> str:
    """The weight-delta methods as messages name them (``"LoRA, LoHa, ..."``; LoRA includes DoRA and (IA)³)."""
    return ", ".join(f.title for f in families() if f.weight_delta)


def _changes_weights_only(config) -> bool:
    mergeable = _weight_delta_methods()
    return all(part.architecture in mergeable for part in config.configs_by_architecture())


def _check_mergeable(model, name: str) -> None:
    config = model.adapters_config.adapters[name]
    mergeable = _weight_delta_methods()
    others = sorted({p.architecture for p in config.configs_by_architecture() if p.architecture not in mergeable})
    if others:
        raise AdapterConfigError(
            f"Cannot merge adapter {name!r}: its {'/'.join(others)} part has no weight to fold into; only "
            f"weight-update adapters ({_weight_delta_titles()}) merge. Leave it out (deactivate "
            f"it, or pass adapter_names without it), or use unload() to drop all adapters without merging."
        )
    if any(getattr(p, "use_gating", False) for p in config.configs_by_architecture()):
        raise AdapterConfigError(
            f"Cannot merge adapter {name!r}: it is gated, and a gate depends on the input, so there is no single "
            f"merged weight."
        )


def _merge_plan(model, adapter_names) -> tuple[list[tuple[nn.Module, list[str]]], list[tuple[nn.Module, str]]]:
    """``([(host, names to merge there, in order)], [(module, adapter whose copy replaces it)])``;
    raises before anything changes."""
    registry = model.adapters_config
    skip_layers = frozenset()
    if adapter_names is not None:
        names = as_names(adapter_names)
        require_adapters(model, names)
    elif registry.active_setup is not None:
        names = _stack_names(registry.active_setup)
        skip_layers = registry.skip_layers or frozenset()
    else:
        names = [n for n, c in registry.adapters.items() if _changes_weights_only(c)]
        if names:
            logger.warning(f"No adapter setup is active; merge_and_unload merges every LoRA-family adapter: {names}.")
    for name in names:
        _check_mergeable(model, name)
    plan = []
    for host in weight_delta_hosts(model):
        if host.layer_idx in skip_layers:
            continue
        todo = [n for n in names if n in host.adapters and n not in host.merged]
        if todo:
            plan.append((host, todo))
    return plan, _copies_plan(model, names, skip_layers)


def _copies_plan(model, names, skip_layers) -> list[tuple[nn.Module, str]]:
    """The ``modules_to_save`` copies that replace their module in the merged model."""
    chosen = []
    for host in model._adapter_hosts:
        if not host.keeps_module_copies or host.layer_idx in skip_layers:
            continue
        owners = [n for n in names if n in host.modules_to_save]
        if len(owners) > 1:
            raise AdapterConfigError(
                f"Cannot merge adapters {owners} together: each has its own copy of module {host.location!r} "
                f"(modules_to_save) and the merged model can keep only one. Merge one of them."
            )
        if owners:
            chosen.append((host, owners[0]))
    return chosen


@torch.no_grad()
def _adopt_copy(host, name: str) -> None:
    """Write adapter ``name``'s copy of ``host`` into ``host``'s own parameters and buffers."""
    own = {k: v for k, v in host.state_dict(keep_vars=True).items() if not k.startswith("modules_to_save.")}
    for key, value in host.modules_to_save[name].state_dict().items():
        own[key].copy_(value)


def _host_params(host) -> dict[str, nn.Parameter]:
    """The host's parameters a merge writes into (a quantized weight is replaced whole, never
    written into, and the host's ``merge_state`` keeps the old one)."""
    quantized = getattr(host, "quantized", None) is not None
    return {
        k: getattr(host, k) for k in ("weight", "bias")
        if getattr(host, k, None) is not None and not (quantized and k == "weight")
    }


def _run_on_host(host, names, operation: str) -> list:
    """``operation`` ("merge": undoable by ``reset_adapter``, "merge_final": for
    ``merge_and_unload``, "unmerge") of ``names`` at one host, in order; returns the
    ``(adapter, report)`` pairs of the steps that re-quantized a quantized weight."""
    if operation == "unmerge":
        return _unmerge_from_host(host, set(names))
    reports = [(name, host.merge(name, undoable=operation == "merge")) for name in names]
    return [(name, report) for name, report in reports if report is not None]


@torch.no_grad()
def apply_all_or_nothing(model, plan, operation: str, progressbar: bool = False) -> None:
    """Run ``operation`` (see :func:`_run_on_host`) for every ``(host, names)`` of ``plan``, all or
    nothing: first on copies of each host's weight and bias, one host at a time (the model's
    tensors are never written, the host's bookkeeping is put back), where every value the real run
    would write is checked (finite; for an undoable merge, that the unmerge can restore it; a
    floating-point weight); then, only if every host passed, for real. A refused step raises
    :class:`~adapters.errors.AdapterMergeError` naming the adapter, the module and the parameter,
    and no weight of the model has changed. ``progressbar`` shows one over the real run.

    Example::

        >>> apply_all_or_nothing(model, [(host, ["lora"]) for host in hosts], "merge")
    """
    paths = module_paths(model)
    for host, names in plan:
        params = _host_params(host)
        originals = {k: p.data for k, p in params.items()}
        bookkeeping = host.merge_state()
        try:
            for key, param in params.items():
                param.data = originals[key].clone()
            _run_on_host(host, names, operation)
        except AdapterMergeError as error:
            raise _located(error, paths.get(id(host), type(host).__name__)) from None
        finally:
            for key, param in params.items():
                param.data = originals[key]
            host.restore_merge_state(bookkeeping)
    requantized = []
    for host, names in logging.tqdm(plan, disable=not progressbar, desc="Unloading and merging model"):
        try:
            reports = _run_on_host(host, names, operation)
        except AdapterMergeError as error:  # the dry run passed: not expected
            raise _located(error, paths.get(id(host), type(host).__name__)) from None
        requantized += [(paths.get(id(host), type(host).__name__), name, report) for name, report in reports]
    if requantized:
        _warn_requantized(requantized, "unmerged from" if operation == "unmerge" else "merged into")


def _warn_requantized(requantized: list, action: str) -> None:
    """One warning for the adapters an operation folded into (or out of) quantized weights: the
    worst re-quantization error relative to its update, so a rounding that ate the update shows."""
    module, name, worst = max(requantized, key=lambda item: item[2].error / max(item[2].delta, 1e-30))
    largest = max(report.error for _, _, report in requantized)
    logger.warning(
        f"{len(requantized)} adapter weight update(s) {action} quantized weights were re-quantized, which rounds "
        f"them: worst relative to its update at module {module!r} (adapter {name!r}): {worst.describe()}; largest "
        f"error over all modules {largest:.3g}. To keep the update exact, keep the adapter unmerged or merge into "
        f"the float model."
    )


def _located(error: AdapterMergeError, module: str) -> AdapterMergeError:
    """``error`` of a host, with the module's path and what it means for the model."""
    detail = getattr(error, "detail", None)
    if detail is None:
        return AdapterMergeError(f"{error} (module {module!r}). No weight of the model was changed.")
    action, name = error.action, error.adapter
    where = "into" if action == "merge" else "out of"
    return AdapterMergeError(
        f"Cannot {action} adapter {name!r} {where} module {module!r}: {detail}. Nothing was "
        f"{'merged' if action == 'merge' else 'unmerged'}; every weight of the model is as it was."
    )


def _unwrap_checkpointing(model) -> None:
    """Give layers back the gradient-checkpointing function the library wrapped (see
    ``adapters.model_mixin._checkpoint_with_context``)."""
    for module in model.modules():
        func = module.__dict__.get("_gradient_checkpointing_func")
        if not getattr(func, "_adapters_context_aware", False):
            continue
        original = getattr(func, "__wrapped__", None)
        if original is None:  # the wrapper keeps the original in its closure
            original = inspect.getclosurevars(func).nonlocals.get("checkpoint_func")
        if original is None:
            raise RuntimeError("Cannot find the gradient-checkpointing function behind the adapters wrapper.")
        module._gradient_checkpointing_func = original


# instance-dict entries the library adds to the modules it patches (besides the "_adapters_*" /
# "_adapter_*" ones, all removed)
_ADDED_ENTRIES = ("_setup_cache", "merged", "_hidden_size", "_attention_dropout", "_shared_parameters", "model_frozen")
_ADDED_CHILDREN = ("loras", "adapters", "adapter_fusion_layer", "modules_to_save", "invertible_adapters")
_HOST_ENTRIES = ("layer_idx", "location")  # ComposableLayer hosts only
# the modules of this library ("adapters."): what it created, as opposed to patched transformers modules
_LIBRARY_PREFIX = __name__.split(".", 1)[0] + "."


def _strip_adapters(model) -> None:
    """Remove every module, attribute and class the library added; the model becomes the plain
    transformers model again (same classes, same state-dict keys)."""
    _unwrap_checkpointing(model)
    base = model.base_model
    modules = list(model.modules())
    for module in modules:
        for child_name, child in list(module._modules.items()):
            # hosts and pools this library created (patched transformers modules keep their module name)
            if type(child).__module__.startswith(_LIBRARY_PREFIX):
                del module._modules[child_name]
        for key in [k for k in module.__dict__ if k.startswith("_adapters_attention_") or k == "_adaption_prompt_sites"]:
            del module.__dict__[key]  # attention tags of modules that were not class-swapped
    for module in modules:
        if "_adapters_original_class" not in module.__dict__:
            continue
        for child_name in _ADDED_CHILDREN:
            module._modules.pop(child_name, None)
        entries = _ADDED_ENTRIES + (_HOST_ENTRIES if isinstance(module, ComposableLayer) else ())
        for key in list(module.__dict__):
            if key == "_adapters_original_class":
                continue  # restore_class needs it
            if key in entries or key.startswith(("_adapters_", "_adapter_")):
                del module.__dict__[key]
        restore_class(module)
    if isinstance(base._modules.get("shared_parameters"), nn.ModuleDict):
        del base._modules["shared_parameters"]
    # a plugin interface's record in the config: the plain model saves a plain config.json
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    for config in attention_configs(model):
        implementation = getattr(config, "_attn_implementation", None)
        if isinstance(implementation, str) and implementation.startswith(PREFIX):  # the attention wrapper's backend
            config._attn_implementation = implementation[len(PREFIX):]


def _unmerge_from_host(host, names: set) -> list:
    """Take ``names`` out of ``host``'s weight: unmerge from the most recent merge back to the
    oldest of them, then merge again the others that were undone (merges need not commute).
    Returns the ``(adapter, report)`` pairs of the steps that re-quantized a quantized weight."""
    undone, reports = [], []
    while any(name in names for name in host.merged):
        last = host.merged[-1]
        reports.append((last, host.unmerge(last)))
        if last not in names:
            undone.append(last)
    for name in reversed(undone):
        reports.append((name, host.merge(name)))
    return [(name, report) for name, report in reports if report is not None]


class UnloadMixin:
    """Merging adapters into the weights, unmerging them, and unloading the library (mixed into
    the model API through :class:`~adapters.merging.MergingMixin`).

    Example::

        >>> model.merge_adapter("lora")
        >>> model.unmerge_adapter()
        >>> plain = model.merge_and_unload()        # a plain transformers model
    """

    # -- merging into the weights ----------------------------------------------------------------
    def _weight_delta_hosts_of(self, name: str) -> list:
        """The linear-layer hosts adapter ``name`` changes the weight of; refused unless there is one."""
        self._require_adapter(name)
        hosts = [h for h in weight_delta_hosts(self) if name in h.adapters]
        if not hosts:
            mergeable = ", ".join(f.title for f in families() if f.build_linear is not None)
            raise AdapterConfigError(
                f"Adapter {name!r} changes no layer weights, so it cannot be merged into them: only the LoRA family "
                f"(LoRA, DoRA, (IA)³) and the weight transforms ({mergeable}) merge."
            )
        return hosts

    def merge_adapter(self, name: str) -> None:
        """Fold LoRA / (IA)³ adapter ``name`` into the weights of the layers it adapts.

        Afterwards the layers compute ``x (W + ΔW)ᵀ`` directly and the adapter no longer runs as
        a separate branch; :meth:`reset_adapter` takes it out again.

        All or nothing: every layer's merged weight and bias are computed (out of place, one layer
        at a time) and checked before any weight is written. Refused are non-finite results (a
        NaN/inf adapter, an overflow), a layer whose weight cannot hold the merged weight (torchao's
        quantized tensors and other integer weights; a bitsandbytes 4-bit / 8-bit weight is
        dequantized, merged and re-quantized, and a warning reports the re-quantization error
        ``max |ΔW_q − ΔW|`` next to ``max |ΔW|``), and a merge :meth:`reset_adapter` could not
        undo: (IA)³ and DoRA merges multiply the weight, and their unmerge divides by the same
        factors, so an (IA)³ vector (or DoRA magnitude) with an entry of (nearly) 0 — one that turns a
        non-zero weight entry into 0 or a subnormal number — is refused rather than merged into a
        weight that could never be restored (``merge_and_unload``, which needs no unmerge, takes it).

        Raises:
            AdapterMergeError: a check above failed; the message names the adapter, the module and
                the parameter. No weight was written.
            AdapterConfigError: the adapter is not a LoRA-family adapter, is gated (the gate depends on
                the input, so there is no single merged weight), or is merged already.

        Example::

            >>> model.merge_adapter("lora")
            >>> model.reset_adapter()
        """
        with registry_lock(self.adapters_config).writing(f"merge_adapter({name!r})"):
            config = self.adapters_config.adapters.get(name)
            hosts = self._weight_delta_hosts_of(name)
            if any(getattr(part, "use_gating", False) for part in config.configs_by_architecture()):
                raise AdapterConfigError(f"Adapter {name!r} is gated; a gate depends on the input, so it cannot be merged.")
            if any(name in host.merged for host in hosts):
                raise AdapterConfigError(f"Adapter {name!r} is merged already; call reset_adapter() first.")
            apply_all_or_nothing(self, [(host, [name]) for host in hosts], "merge")

    def reset_adapter(self) -> None:
        """Undo every :meth:`merge_adapter` (in reverse order).

        All or nothing, like :meth:`merge_adapter`: every restored weight is computed and checked
        to be finite before any is written.

        Raises:
            AdapterMergeError: a restored weight would not be finite (the adapter's parameters were
                changed to NaN/inf, or an (IA)³ entry to 0, after the merge); no weight was written.

        Example::

            >>> model.reset_adapter()
        """
        self.unmerge_adapter()

    def unmerge_adapter(self, adapter_names: str | Sequence[str] | None = None) -> None:
        """Take merged LoRA / (IA)³ adapters out of the weights again (PEFT's ``unmerge_adapter``).

        Merges need not commute (an (IA)³ scaling multiplies what was merged before it), so at each
        layer the merges are undone from the most recent back to the oldest named one, and the
        merges undone on the way that were not named are redone::

            W_merged = f_k(...f_1(W))  ->  the same chain without the named f_i

        Args:
            adapter_names: the adapters to unmerge; default: every merged adapter.

        All or nothing: every restored weight and bias is computed (out of place, one layer at a
        time) and checked to be finite before any weight is written.

        Raises:
            AdapterConfigError: an adapter name is unknown.
            AdapterMergeError: a restored weight would not be finite (the adapter's parameters were
                changed to NaN/inf, or an (IA)³ entry to 0, after the merge); the message names the
                adapter and the module, and no weight was written.

        Example::

            >>> model.merge_adapter("lora")
            >>> model.unmerge_adapter()          # or unmerge_adapter(["lora"])
        """
        with registry_lock(self.adapters_config).writing("unmerge_adapter"):
            hosts = weight_delta_hosts(self)
            if adapter_names is None:
                names = {name for host in hosts for name in host.merged}
            else:
                names = set(as_names(adapter_names))
                require_adapters(self, sorted(names))
                not_merged = sorted(n for n in names if not any(n in host.merged for host in hosts))
                if not_merged:
                    logger.warning(f"Adapter(s) {not_merged} are not merged; nothing to unmerge for them.")
            plan = [(host, sorted(names)) for host in hosts if names & set(host.merged)]
            apply_all_or_nothing(self, plan, "unmerge")

    def merge_and_unload(
        self,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: str | Sequence[str] | None = None,
    ) -> nn.Module:
        """Merge LoRA-family adapters into the base weights and return the plain transformers model.

        At every adapted linear layer the chosen adapters fold into the weight in order
        (``W' = W + s·B A`` for LoRA, ``W' = diag(s·l) W``, ``b' = s·l ⊙ b`` for (IA)³); then every
        adapter module, patched class, hook and attribute of this library is removed (the model
        object itself is returned, its class restored). ``save_pretrained`` then writes a checkpoint
        that ``from_pretrained`` loads without ``adapters``.

        Which adapters: ``adapter_names`` if given (other adapters are discarded, the active setup is
        not consulted); else the active setup, which must be a single adapter or a ``Stack`` of
        LoRA-family adapters (its ``skip_layers`` are respected, so the merged model computes what
        the model computes now); if no setup is active, every LoRA-family adapter, in the order they
        were added (a warning names them). Adapters merged already (``merge_adapter``) stay in the
        weights. A merged adapter's ``modules_to_save`` copies are written into their modules. Parameters keep their ``requires_grad`` flags (``train_adapter`` froze the base model).

        Every merged weight and bias (and every ``modules_to_save`` copy written into its module)
        is checked to be finite before any weight of the model is written: the merge runs on
        copies first, one layer at a time, then for real (see :meth:`merge_adapter`); a layer whose
        weight cannot hold the result is refused too (as in :meth:`merge_adapter`: bitsandbytes
        weights are re-quantized, with a warning that reports the rounding). A zero (IA)³ entry is
        fine here: the adapters are gone afterwards, nothing is ever unmerged.

        Args:
            progressbar: show a progress bar over the layers being merged.
            safe_merge: kept for PEFT compatibility; the check above always runs.
            adapter_names: the adapters to merge (see above).

        Returns:
            The model, now an instance of its original transformers class.

        Raises:
            AdapterConfigError: an adapter cannot merge (a bottleneck or other non-LoRA adapter, a gated
                LoRA), the active setup contains a Parallel, BatchSplit, Split, Average or Fuse
                block, an adapter name is unknown. The model is unchanged.
            AdapterMergeError: a merged weight would be NaN/inf, or a layer's weight cannot hold
                it (the message names the adapter, the module and the parameter). The model is
                unchanged.

        Example::

            >>> model.set_active_adapters("lora")
            >>> plain = model.merge_and_unload(safe_merge=True)
            >>> plain.save_pretrained("out/merged")    # loads with AutoModel.from_pretrained alone
        """
        with registry_lock(self.adapters_config).writing("merge_and_unload"):
            plan, copies = _merge_plan(self, adapter_names)
            paths = module_paths(self)
            for host, name in copies:
                bad = [n for n, p in host.modules_to_save[name].named_parameters() if not bool(torch.isfinite(p).all())]
                if bad:
                    raise AdapterMergeError(
                        f"Cannot merge adapter {name!r} into module {paths.get(id(host), host.location)!r}: its copy of "
                        f"the module (modules_to_save) holds NaN/inf in {bad[0]}. Nothing was merged; every weight of "
                        f"the model is as it was."
                    )
            apply_all_or_nothing(self, plan, "merge_final", progressbar=progressbar)
            for host, name in copies:
                _adopt_copy(host, name)
            _strip_adapters(self)
        return self

    def unload(self) -> nn.Module:
        """Remove every adapter without merging and return the plain base model.

        Adapters merged into the weights (``merge_adapter``) are unmerged first; all adapter
        modules, patched classes and attributes of this library are removed. Without merged
        adapters the returned model equals the original one bit for bit (with merged adapters, up
        to the rounding of the unmerge).

        Returns:
            The model, now an instance of its original transformers class.

        Example::

            >>> base = model.unload()
        """
        with registry_lock(self.adapters_config).writing("unload"):
            self.unmerge_adapter()
            _strip_adapters(self)
        return self

