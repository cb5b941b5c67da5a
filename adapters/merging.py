"""Merging adapters into the base weights, unloading them, and combining adapters into new ones.

**Merging and unloading** (PEFT's names). A LoRA-family adapter on a linear layer ``y = x Wᵀ + b``
folds into its weight (see :mod:`adapters.methods.lora`)::

    LoRA:   W' = W + s·B A                     (s = α/r, or α/√r with rsLoRA)
    (IA)³:  W' = diag(s·l) W,  b' = s·l ⊙ b    (output scaling; input scaling: W' = W diag(s·l))

and a ``Stack`` of them folds in order (deltas add, scalings multiply). ``merge_and_unload``
merges, then removes every trace of this library: the model that comes back is the plain
transformers model, saved by ``save_pretrained`` and loaded by ``from_pretrained`` without
``adapters`` installed. ``unload`` removes everything without merging; ``unmerge_adapter``
takes merged adapters out of the weights again.

**Finite or refused.** Every merge and unmerge (``merge_adapter``, ``merge_and_unload``,
``reset_adapter`` / ``unmerge_adapter``, and deleting a merged adapter) is all or nothing
(:func:`apply_all_or_nothing`): it first runs on copies of each layer's weight and bias, one layer
at a time, checking every value it would write — finite; a floating-point weight (a quantized or
integer weight cannot hold the result); and, for a merge that ``reset_adapter`` may undo, that
the undo can restore it: (IA)³ and DoRA merges multiply the weight and their unmerge divides by
the same factors, so a factor of (nearly) 0 that turns a non-zero weight entry into 0 or a
subnormal number is refused (``merge_and_unload``, which is never undone, accepts it; PEFT
instead divides by ``l + 1e-8`` and silently loses those entries). Only when every layer passed
are the weights written. A refusal raises :class:`~adapters.errors.AdapterMergeError` naming the
adapter, the module and the parameter, with every weight as it was. The combinations below are
checked the same way: weights must be finite numbers, and a combination holding NaN/inf is not
added.

**Combining adapters** into a new adapter:

* :meth:`MergingMixin.average_adapter` (AdapterHub): a weighted average of adapters that share
  one config, parameter by parameter (any method) or LoRA-specific.
* :meth:`MergingMixin.add_weighted_adapter` (PEFT): weighted combinations of LoRA adapters,
  including the task-vector merges TIES, DARE and magnitude pruning, whose building blocks are
  the functions of this module (:func:`task_arithmetic`, :func:`magnitude_prune`, :func:`ties`,
  :func:`dare_linear`, :func:`dare_ties`), with PEFT's semantics.

Every combination writes a new adapter next to its inputs; the inputs are left as they were.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from . import logging
from .composition import Stack
from .context import registry_lock
from .errors import AdapterConfigError, AdapterMergeError
from .methods import WEIGHT_TRANSFORM_METHODS

__all__ = [
    "MergingMixin",
    "apply_all_or_nothing",
    "calculate_majority_sign_mask",
    "dare_linear",
    "dare_ties",
    "disjoint_merge",
    "magnitude_prune",
    "prune",
    "task_arithmetic",
    "ties",
]

logger = logging.get_logger(__name__)

WeightsLike = Sequence[float] | torch.Tensor

# -- task-vector merging (PEFT's merge utilities, same semantics) ----------------------------------


def _weighted(stacked: torch.Tensor, weights: WeightsLike) -> torch.Tensor:
    """``w_i · t_i`` for tensors stacked on dim 0."""
    weights = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device)
    return stacked * weights.view(-1, *([1] * (stacked.dim() - 1)))


def prune(tensor: torch.Tensor, density: float, method: str = "magnitude", rescale: bool = False) -> torch.Tensor:
    """Keep a fraction ``density`` of the entries of ``tensor``, zero the rest.

    ``method="magnitude"`` keeps the ``⌊density·n⌋`` entries of largest absolute value (``n`` the
    number of entries; ties broken by ``torch.topk``); ``method="random"`` keeps each entry
    independently with probability ``density`` (drawn from torch's global generator: seed it for
    reproducible results) and, with ``rescale``, divides the kept entries by ``density`` so the
    expectation is unchanged (DARE). ``density >= 1`` returns the tensor unchanged.

    Args:
        tensor: the tensor to prune.
        density: fraction of entries to keep, in [0, 1].
        method: "magnitude" or "random".
        rescale: "random" only: divide the kept entries by ``density``.

    Raises:
        AdapterConfigError: ``density < 0`` or an unknown method.

    Example::

        >>> prune(torch.tensor([3.0, -1.0, 0.5, -4.0]), 0.5)
        tensor([ 3., -0.,  0., -4.])
    """
    if density < 0:
        raise AdapterConfigError(f"density must be in [0, 1] (the fraction of entries to keep), got {density!r}.")
    if method not in ("magnitude", "random"):
        raise AdapterConfigError(f"Unknown pruning method={method!r}; use 'magnitude' or 'random'.")
    if density >= 1:
        return tensor
    if method == "magnitude":
        flat = tensor.reshape(-1)
        keep = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
        k = int(density * flat.numel())
        if k > 0:
            keep[flat.abs().topk(k).indices] = True
        return tensor * keep.view(tensor.shape)
    if density == 0:
        return torch.zeros_like(tensor)
    kept = tensor * torch.bernoulli(torch.full_like(tensor, density))
    return kept / density if rescale else kept


def calculate_majority_sign_mask(
    tensor: torch.Tensor, method: Literal["total", "frequency"] = "total"
) -> torch.Tensor:
    """Which entries of the task tensors stacked on dim 0 agree with the elected sign.

    The elected sign of an entry is the sign of ``Σ_i t_i`` (``"total"``: the sign with the larger
    total magnitude) or of ``Σ_i sign(t_i)`` (``"frequency"``: the more frequent sign); zero
    elects ``+``.

    Example::

        >>> calculate_majority_sign_mask(torch.tensor([[1.0, -2.0], [-3.0, 1.0]]))
        tensor([[False,  True],
                [ True, False]])
    """
    sign = tensor.sign()
    if method == "total":
        votes = tensor.sum(dim=0)
    elif method == "frequency":
        votes = sign.sum(dim=0)
    else:
        raise AdapterConfigError(f"majority_sign_method must be 'total' or 'frequency', got {method!r}.")
    elected = torch.where(votes >= 0, 1.0, -1.0).to(sign.dtype)
    return sign == elected


def disjoint_merge(task_tensors: torch.Tensor, majority_sign_mask: torch.Tensor) -> torch.Tensor:
    """The mean, per entry, over the task tensors (stacked on dim 0) that agree with the elected
    sign; 0 where none does.

    Example::

        >>> t = torch.tensor([[1.0, -2.0], [3.0, 1.0]])
        >>> disjoint_merge(t, calculate_majority_sign_mask(t))
        tensor([ 2., -2.])
    """
    total = (task_tensors * majority_sign_mask).sum(dim=0)
    return total / majority_sign_mask.sum(dim=0).clamp(min=1)


def task_arithmetic(task_tensors: list[torch.Tensor], weights: WeightsLike) -> torch.Tensor:
    """Task arithmetic: ``Σ_i w_i t_i``.

    Example::

        >>> task_arithmetic([torch.ones(2), torch.full((2,), 2.0)], [0.5, 0.25])
        tensor([1., 1.])
    """
    return _weighted(torch.stack(task_tensors), weights).sum(dim=0)


def magnitude_prune(task_tensors: list[torch.Tensor], weights: WeightsLike, density: float) -> torch.Tensor:
    """``Σ_i w_i prune(t_i, density)``: each task tensor keeps its ``⌊density·n⌋`` largest
    entries (by magnitude) before the weighted sum.

    Example::

        >>> magnitude_prune([torch.tensor([3.0, -1.0])], [2.0], 0.5)
        tensor([6., -0.])
    """
    return task_arithmetic([prune(t, density, "magnitude") for t in task_tensors], weights)


def ties(
    task_tensors: list[torch.Tensor],
    weights: WeightsLike,
    density: float,
    majority_sign_method: Literal["total", "frequency"] = "total",
) -> torch.Tensor:
    """TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint merge.

    Each task tensor keeps its ``⌊density·n⌋`` largest entries; per entry the sign is elected
    from the trimmed (unweighted) tensors (:func:`calculate_majority_sign_mask`); the result is
    the mean of ``w_i t_i`` over the tensors that agree with it (:func:`disjoint_merge`).

    Example::

        >>> ties([torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])], [1.0, 1.0], density=1.0)
        tensor([ 2., -2.])
    """
    pruned = torch.stack([prune(t, density, "magnitude") for t in task_tensors])
    return _elect_sign_and_merge(pruned, weights, majority_sign_method)


def dare_linear(task_tensors: list[torch.Tensor], weights: WeightsLike, density: float) -> torch.Tensor:
    """DARE (Yu et al., 2023) with a linear merge: ``Σ_i w_i · (m_i ⊙ t_i) / density`` with
    random keep-masks ``m_i ~ Bernoulli(density)`` (torch's global generator: seed it).

    Example::

        >>> torch.manual_seed(0)
        >>> dare_linear([torch.ones(4)], [1.0], density=0.5)  # kept entries become 2
    """
    return task_arithmetic([prune(t, density, "random", rescale=True) for t in task_tensors], weights)


def dare_ties(
    task_tensors: list[torch.Tensor],
    weights: WeightsLike,
    density: float,
    majority_sign_method: Literal["total", "frequency"] = "total",
) -> torch.Tensor:
    """DARE pruning (random keep-masks, rescaled by ``1/density``) followed by TIES' sign election
    and disjoint merge.

    Example::

        >>> torch.manual_seed(0)
        >>> merged = dare_ties([torch.randn(8), torch.randn(8)], [0.5, 0.5], density=0.5)
    """
    pruned = torch.stack([prune(t, density, "random", rescale=True) for t in task_tensors])
    return _elect_sign_and_merge(pruned, weights, majority_sign_method)


def _elect_sign_and_merge(pruned: torch.Tensor, weights: WeightsLike, majority_sign_method) -> torch.Tensor:
    """TIES' last two steps on already pruned task tensors: sign election, disjoint merge."""
    mask = calculate_majority_sign_mask(pruned, majority_sign_method)
    return disjoint_merge(_weighted(pruned, weights), mask)


_TASK_MERGES = {
    "linear": lambda ts, w, d, m: task_arithmetic(ts, w),
    "ties": lambda ts, w, d, m: ties(ts, w, d, m),
    "dare_linear": lambda ts, w, d, m: dare_linear(ts, w, d),
    "dare_ties": lambda ts, w, d, m: dare_ties(ts, w, d, m),
    "magnitude_prune": lambda ts, w, d, m: magnitude_prune(ts, w, d),
}
# combination types of add_weighted_adapter, by how they combine
_FACTOR_TYPES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")  # A and B separately
_SVD_TYPES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")  # ΔW, then SVD
_DENSITY_TYPES = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
_COMBINATION_TYPES = ("cat",) + _FACTOR_TYPES + _SVD_TYPES
_AVERAGE_STRATEGIES = ("linear", "lora_linear_only_negate_b", "lora_delta_w_svd")

# -- small helpers ---------------------------------------------------------------------------------


def _lora_hosts(model) -> list:
    return [host for host in model._adapter_hosts if host.method == "lora"]


def _module_paths(model) -> dict[int, str]:
    """``id(module) -> path`` relative to the base model (the paths ``target_modules`` matches)."""
    return {id(module): path for path, module in model.base_model.named_modules()}


def _require_adapters(model, names: Sequence[str]) -> None:
    known = model.adapters_config.adapters
    for name in names:
        if name not in known:
            raise AdapterConfigError(f"No adapter named {name!r}; the model has: {', '.join(sorted(known)) or 'none'}.")


def _as_names(adapter_names) -> list[str]:
    return [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)


def _truncated_svd(delta: torch.Tensor, rank: int, clamp=None, full_matrices=True, driver=None):
    """``(A, B)`` with ``B A`` the best rank-``rank`` approximation of ``delta``: ``A = Vh[:k]``,
    ``B = U[:, :k] diag(S[:k])``, ``k = min(rank, min(delta.shape))``. ``clamp`` (a quantile, as
    PEFT's ``svd_clamp``) clips the entries of both factors to ``±q``, ``q`` that quantile of them."""
    if not bool(torch.isfinite(delta).all()):
        raise AdapterMergeError("the combined delta ΔW holds NaN/inf (an input adapter holds NaN/inf, or the weights overflow)")
    U, S, Vh = torch.linalg.svd(delta, full_matrices=full_matrices, driver=driver)
    k = min(rank, S.numel())
    B, A = U[:, :k] * S[:k], Vh[:k, :]
    if clamp is not None:
        high = torch.quantile(torch.cat([B.flatten(), A.flatten()]), clamp)
        B, A = B.clamp(-high, high), A.clamp(-high, high)
    return A, B


@torch.no_grad()
def _write_lora(lora: nn.Module, A: torch.Tensor | None, B: torch.Tensor) -> None:
    """Set ``lora`` so that its delta is ``B A`` (or its scaling vector is ``B``), dividing by its
    own scaling; ranks below the module's are zero-padded (zero rows of A / columns of B add
    nothing)."""
    B = B / lora.scaling
    if A is None:
        lora.lora_B.copy_(B.reshape(lora.lora_B.shape))
        return
    lora.lora_A.zero_()
    lora.lora_B.zero_()
    lora.lora_A[: A.shape[0]].copy_(A)
    lora.lora_B[:, : B.shape[1]].copy_(B)


# -- merge_and_unload: which adapters, checks, and stripping the library off -------------------------


def _stack_names(setup) -> list[str]:
    """The adapters of a setup that folds into one weight per layer (names and Stacks), in order."""
    if isinstance(setup, str):
        return [setup]
    if isinstance(setup, Stack):
        return [name for child in setup.children for name in _stack_names(child)]
    hint = ""
    if type(setup).__name__ == "Average":
        hint = " (to merge a weighted mean, build one adapter with add_weighted_adapter first)"
    raise AdapterConfigError(
        f"Cannot merge the active setup: it contains the block {setup}, which has no single merged weight. "
        f"Merging folds adapters into one weight per layer, which is defined for a single adapter or a Stack of "
        f"LoRA-family adapters only{hint}. Activate such a setup, or pass adapter_names=[...] to choose the "
        f"adapters to merge."
    )


# config architectures whose adapters fold into the weights of linear layers
_MERGEABLE = ("lora", *WEIGHT_TRANSFORM_METHODS)


def _is_lora_family(config) -> bool:
    return all(part.architecture in _MERGEABLE for part in config.configs_by_architecture())


def _check_mergeable(model, name: str) -> None:
    config = model.adapters_config.adapters[name]
    others = sorted({p.architecture for p in config.configs_by_architecture() if p.architecture not in _MERGEABLE})
    if others:
        raise AdapterConfigError(
            f"Cannot merge adapter {name!r}: its {'/'.join(others)} part has no weight to fold into; only "
            f"weight-update adapters (LoRA, (IA)³, LoHa, LoKr, OFT, HRA, AdaLoRA) merge. Leave it out (deactivate "
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
        names = _as_names(adapter_names)
        _require_adapters(model, names)
    elif registry.active_setup is not None:
        names = _stack_names(registry.active_setup)
        skip_layers = registry.skip_layers or frozenset()
    else:
        names = [n for n, c in registry.adapters.items() if _is_lora_family(c)]
        if names:
            logger.warning(f"No adapter setup is active; merge_and_unload merges every LoRA-family adapter: {names}.")
    for name in names:
        _check_mergeable(model, name)
    plan = []
    for host in _lora_hosts(model):
        if host.layer_idx in skip_layers:
            continue
        todo = [n for n in names if n in host.loras and n not in host.merged]
        if todo:
            plan.append((host, todo))
    return plan, _copies_plan(model, names, skip_layers)


def _copies_plan(model, names, skip_layers) -> list[tuple[nn.Module, str]]:
    """The ``modules_to_save`` copies that replace their module in the merged model."""
    chosen = []
    for host in model._adapter_hosts:
        if host.method != "modules_to_save" or host.layer_idx in skip_layers:
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
    return {k: getattr(host, k) for k in ("weight", "bias") if getattr(host, k, None) is not None}


# per-adapter entries a merge keeps for its unmerge (see adapters.methods.lora.LoRALinear.merge)
_MERGE_ENTRIES = ("_merged_norm", "_merged_delta")


def _run_on_host(host, names, operation: str) -> None:
    """``operation`` ("merge": undoable by ``reset_adapter``, "merge_final": for
    ``merge_and_unload``, "unmerge") of ``names`` at one host, in order."""
    if operation == "unmerge":
        _unmerge_from_host(host, set(names))
        return
    for name in names:
        host.merge(name, undoable=operation == "merge")


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
    paths = _module_paths(model)
    for host, names in plan:
        params = _host_params(host)
        originals = {k: p.data for k, p in params.items()}
        merged_before = list(host.merged)
        entries = {n: {k: m.__dict__[k] for k in _MERGE_ENTRIES if k in m.__dict__} for n, m in host.loras.items()}
        try:
            for key, param in params.items():
                param.data = originals[key].clone()
            _run_on_host(host, names, operation)
        except AdapterMergeError as error:
            raise _located(error, paths.get(id(host), type(host).__name__)) from None
        finally:
            for key, param in params.items():
                param.data = originals[key]
            host.merged[:] = merged_before
            for name, module in host.loras.items():
                for key in _MERGE_ENTRIES:
                    module.__dict__.pop(key, None)
                module.__dict__.update(entries.get(name, {}))
            host._invalidate_setup_cache()
    for host, names in logging.tqdm(plan, disable=not progressbar, desc="Unloading and merging model"):
        try:
            _run_on_host(host, names, operation)
        except AdapterMergeError as error:  # the dry run passed: not expected
            raise _located(error, paths.get(id(host), type(host).__name__)) from None


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


def _strip_adapters(model) -> None:
    """Remove every module, attribute and class the library added; the model becomes the plain
    transformers model again (same classes, same state-dict keys)."""
    from .hooks.engine import ComposableLayer
    from .hooks.patching import restore_class

    _unwrap_checkpointing(model)
    base = model.base_model
    modules = list(model.modules())
    for module in modules:
        for child_name, child in list(module._modules.items()):
            # hosts and pools this library created (patched transformers modules keep their module name)
            if type(child).__module__.startswith(f"{__package__}."):
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
    from .interface import CONFIG_KEY

    # a plugin interface's record in the config: the plain model saves a plain config.json
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    from .hooks.attention import PREFIX, attention_configs

    for config in attention_configs(model):
        implementation = getattr(config, "_attn_implementation", None)
        if isinstance(implementation, str) and implementation.startswith(PREFIX):  # the attention wrapper's backend
            config._attn_implementation = implementation[len(PREFIX):]


def _unmerge_from_host(host, names: set) -> None:
    """Take ``names`` out of ``host``'s weight: unmerge from the most recent merge back to the
    oldest of them, then merge again the others that were undone (merges need not commute)."""
    undone = []
    while any(name in names for name in host.merged):
        last = host.merged[-1]
        host.unmerge(last)
        if last not in names:
            undone.append(last)
    for name in reversed(undone):
        host.merge(name)


# -- combinations ----------------------------------------------------------------------------------


def _config_signature(config) -> list[dict]:
    """The config without the knobs that do not change an adapter's parameters' meaning
    (dropout, initialisation), as AdapterHub compares configs before averaging."""
    parts = []
    for part in config.configs_by_architecture():
        data = part.to_dict()
        for key in ("dropout", "init_weights", "init_weights_seed"):
            data.pop(key, None)
        parts.append(data)
    return parts


def _lora_inputs(model, adapters: Sequence[str], what: str) -> list:
    """The LoRA configs of ``adapters``; refuses other methods, gated and DoRA adapters."""
    configs = []
    for name in adapters:
        parts = model.adapters_config.adapters[name].configs_by_architecture()
        if any(p.architecture != "lora" for p in parts):
            raise AdapterConfigError(f"{what} combines LoRA / (IA)³ adapters only; {name!r} is not (or not only) one.")
        (config,) = parts
        if config.use_gating:
            raise AdapterConfigError(
                f"{what} cannot combine the gated adapter {name!r}: a gate depends on the input, so its delta is "
                f"not a fixed weight."
            )
        modules = [h.loras[name] for h in _lora_hosts(model) if name in h.loras]
        if getattr(config, "use_dora", False) or any(hasattr(m, "lora_magnitude") for m in modules):
            raise AdapterConfigError(
                f"{what} cannot combine the DoRA adapter {name!r}: its update renormalises W + ΔW per row, so "
                f"weighted sums of its parameters or deltas do not give the weighted DoRA update."
            )
        configs.append(config)
    paths = _module_paths(model)
    for host in _lora_hosts(model):  # fused projections: combined part by part, so the parts must agree
        parts = {host.loras[n].out_slices for n in adapters if n in host.loras}
        if len(parts) > 1:
            raise AdapterConfigError(
                f"{what} cannot combine {list(adapters)}: at {paths.get(id(host), 'a fused projection')!r} they "
                f"adapt different parts of the fused projection (output columns {sorted(parts, key=str)}); "
                f"combine adapters with the same attn_matrices there."
            )
    modes = {c.composition_mode for c in configs}
    if len(modes) > 1:
        raise AdapterConfigError(f"{what} cannot combine LoRA ('add') and (IA)³ ('scale') adapters; {list(adapters)} mix them.")
    return configs


def _single_copy_owners(model, adapters: Sequence[str]) -> dict:
    """saved-module host -> the one adapter of ``adapters`` with a copy there (``modules_to_save``);
    raises where several have one, as the combination could keep only one (as PEFT)."""
    owners = {}
    for host in model._adapter_hosts:
        if host.method != "modules_to_save":
            continue
        present = [n for n in adapters if n in host.modules_to_save]
        if len(present) > 1:
            raise AdapterConfigError(
                f"Cannot combine {present}: each has its own copy of module {host.location!r} (modules_to_save), "
                f"and a weighted combination of replaced modules is not defined. Combine adapters of which at "
                f"most one keeps a copy of each module."
            )
        if present:
            owners[host] = present[0]
    return owners


def _union_placement(model, template, adapters: Sequence[str]):
    """``template`` placed on exactly the layers where any of ``adapters`` has a module."""
    hosts_by_adapter = [{id(h) for h in _lora_hosts(model) if name in h.loras} for name in adapters]
    if all(hosts == hosts_by_adapter[0] for hosts in hosts_by_adapter):
        return template  # same placement: keep the first config's (readable) targeting
    paths = _module_paths(model)
    union = [h for h in _lora_hosts(model) if any(name in h.loras for name in adapters)]
    partial = [h for h in union if any(n in h.loras and h.loras[n].out_slices for n in adapters)]
    if partial:
        raise AdapterConfigError(
            f"Cannot combine {list(adapters)}: they adapt different layers, and some of them only parts of the "
            f"fused projection {paths[id(partial[0])]!r}, which a placement by module path cannot express. "
            f"Combine adapters placed on the same layers."
        )

    def regex(hosts):
        return "|".join(sorted(re.escape(paths[id(h)]) for h in hosts)) or None

    changes = {"target_modules": regex(union), "exclude_modules": None, "layers_to_transform": None}
    changes.update(layers_pattern=None, leave_out=())
    if hasattr(template, "feedforward_modules"):  # (IA)³ input scaling: where any input scales the input
        scaled = [h for h in union if any(getattr(h.loras[n], "scale_input", False) for n in adapters if n in h.loras)]
        changes["feedforward_modules"] = regex(scaled)
    return template.replace(**changes)


def _add_combined_adapter(model, adapter_name: str, config, fill, what: str, inputs, replace: bool = False) -> None:
    """Add ``adapter_name`` with ``config`` and let ``fill(host)`` set its parameters at every
    host; then check that they are finite. All or nothing: on any error the new adapter is removed
    again, and with ``replace`` an existing adapter of that name is replaced only once the new one
    is complete (it is built beside it)."""
    registry = model.adapters_config
    with registry_lock(registry).writing(what):
        build = adapter_name
        if replace and adapter_name in registry.adapters:
            build = f"{adapter_name}~combining"
            while build in registry.adapters:
                build += "~"
        staging = model.__dict__.get("_adapters_staging_name")
        if build != adapter_name:
            model.__dict__["_adapters_staging_name"] = build  # add_adapter's name check lets the staging name pass
        try:
            with torch.random.fork_rng(devices=[]):  # its initialisation leaves the caller's generator as it was (DARE)
                model.add_adapter(build, config=config)
        finally:
            if staging is None:
                model.__dict__.pop("_adapters_staging_name", None)
            else:
                model.__dict__["_adapters_staging_name"] = staging
        try:
            paths = _module_paths(model)
            with torch.no_grad():
                for host in list(model._adapter_hosts):
                    if build in host.adapters:
                        try:
                            fill(host, build)
                        except AdapterMergeError as error:
                            raise AdapterMergeError(
                                f"{what}: cannot combine {list(inputs)} at module {paths.get(id(host), host.location)!r}: "
                                f"{error}. Nothing was added."
                            ) from None
                if build in model._shared_parameters:  # Compacter's shared parameters
                    fill(None, build)
            _check_combined_finite(model, build, adapter_name, what, inputs, paths)
        except BaseException:
            model.delete_adapter(build)
            raise
        if build != adapter_name:
            model.delete_adapter(adapter_name)
            model._rename_adapter(build, adapter_name)


def _check_combined_finite(model, build: str, adapter_name: str, what: str, inputs, paths) -> None:
    """Refuse a combination whose parameters are not finite (NaN/inf inputs, overflowing weights)."""
    modules = [(paths.get(id(h), h.location), h.adapters[build]) for h in model._adapter_hosts if build in h.adapters]
    if build in model._shared_parameters:
        modules.append(("shared_parameters", model._shared_parameters[build]))
    for module_path, module in modules:
        for name, param in module.named_parameters():
            if param.is_floating_point() and not bool(torch.isfinite(param).all()):
                raise AdapterMergeError(
                    f"{what}: the combination {adapter_name!r} of {list(inputs)} would hold NaN/inf in {name} at module "
                    f"{module_path!r} (an input holds NaN/inf there, or the weighted sum overflows). Nothing was added."
                )


def _weighted_state(modules: list[nn.Module], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """``Σ_i w_i Φ_i`` for every floating-point entry of the modules' state dicts (computed in
    float32); other entries come from the first module."""
    states = [m.state_dict() for m in modules]
    result = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            result[key] = sum(w * s[key].float() for w, s in zip(weights, states))
        else:
            result[key] = first
    return result


def _copy_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    for key, value in state.items():
        own[key].copy_(value)


def _checked_weights(weights, what: str) -> list[float]:
    """``weights`` as floats; refuses anything but finite real numbers (booleans too)."""
    import numbers

    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
        raise AdapterConfigError(f"{what}: weights={weights!r} is not a list; give one finite number per adapter.")
    values = list(weights.tolist() if isinstance(weights, torch.Tensor) else weights)
    bad = [w for w in values if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w)]
    if bad:
        raise AdapterConfigError(
            f"{what}: weights={values!r} holds {bad[0]!r}; every weight must be a finite number (not a bool, NaN or inf)."
        )
    return [float(w) for w in values]


def _average_weights(model, names, weights, normalize_weights) -> list[float]:
    if not names:
        raise AdapterConfigError(f"average_adapter: adapter_list={names!r} is empty; give at least one adapter name to average.")
    _require_adapters(model, names)
    if weights is None:
        return [1.0 / len(names)] * len(names)
    weights = _checked_weights(weights, "average_adapter")
    if len(weights) != len(names):
        raise AdapterConfigError(
            f"average_adapter: weights={weights!r} has {len(weights)} entries for the {len(names)} adapters {names}; give "
            f"one weight per adapter."
        )
    if normalize_weights:
        total = sum(weights)
        if total == 0:
            raise AdapterConfigError(f"average_adapter: weights={weights!r} sum to 0 and cannot be normalised; use normalize_weights=False.")
        weights = [w / total for w in weights]
    return weights


def _average_config(model, adapter_name, names, strategy, svd_rank, overwrite_ok):
    registry = model.adapters_config
    if strategy not in _AVERAGE_STRATEGIES:
        raise AdapterConfigError(f"Invalid combine_strategy={strategy!r}; use one of {list(_AVERAGE_STRATEGIES)}.")
    if adapter_name in names:
        raise AdapterConfigError(
            f"average_adapter: adapter_name={adapter_name!r} is one of the adapters it averages ({names}); give the "
            f"average a new name."
        )
    if adapter_name in registry.adapters and not overwrite_ok:
        raise AdapterConfigError(f"An adapter named {adapter_name!r} exists already (adapter_name); pass overwrite_ok=True or rename it.")
    config = registry.adapters[names[0]]
    for name in names[1:]:
        if _config_signature(registry.adapters[name]) != _config_signature(config):
            raise AdapterConfigError(
                f"Cannot average adapters with different configurations: {names[0]!r} and {name!r} differ "
                f"(beyond dropout and initialisation). Averaged adapters must share one config."
            )
    if strategy == "linear":
        if svd_rank is not None:
            raise AdapterConfigError(
                f"svd_rank={svd_rank!r} applies to combine_strategy='lora_delta_w_svd' only, not {strategy!r}; leave it None."
            )
        return config
    lora = _lora_inputs(model, names, f"combine_strategy={strategy!r}")[0]
    if lora.composition_mode != "add":
        raise AdapterConfigError(f"combine_strategy={strategy!r} needs LoRA ('add') adapters; use 'linear' for (IA)³.")
    if strategy == "lora_linear_only_negate_b":
        if svd_rank is not None:
            raise AdapterConfigError(
                f"svd_rank={svd_rank!r} applies to combine_strategy='lora_delta_w_svd' only, not {strategy!r}; leave it None."
            )
        return config
    if not isinstance(svd_rank, int) or svd_rank < 1:
        raise AdapterConfigError(f"combine_strategy='lora_delta_w_svd' needs svd_rank, a positive integer (got {svd_rank!r}).")
    return config.replace(r=svd_rank, rank_pattern={})


def _check_weighted(model, adapters, weights, adapter_name, combination_type, density, svd_rank) -> str:
    if not adapters:
        raise AdapterConfigError(f"add_weighted_adapter: adapters={adapters!r} is empty; give at least one adapter name.")
    _require_adapters(model, adapters)
    if len(weights) != len(adapters):
        raise AdapterConfigError(
            f"add_weighted_adapter: weights={weights!r} has {len(weights)} entries for the {len(adapters)} adapters "
            f"{adapters}; give one weight per adapter."
        )
    if adapter_name in model.adapters_config.adapters:
        raise AdapterConfigError(f"An adapter named {adapter_name!r} exists already (adapter_name); delete it or choose another name.")
    if combination_type not in _COMBINATION_TYPES:
        raise AdapterConfigError(f"Invalid combination_type={combination_type!r}; use one of {list(_COMBINATION_TYPES)}.")
    if len(adapters) == 1:
        combination_type = "linear" if weights[0] >= 0 else "cat"
    if combination_type in _FACTOR_TYPES and any(w < 0 for w in weights):
        raise AdapterConfigError(
            f"combination_type={combination_type!r} scales A and B by √(w·s), which needs non-negative weights "
            f"(got {weights}); use 'cat' or 'svd' for negative weights."
        )
    if combination_type.removesuffix("_svd") in _DENSITY_TYPES and (density is None or not 0 <= density <= 1):
        raise AdapterConfigError(
            f"combination_type={combination_type!r} needs density, the fraction of entries to keep, in [0, 1] "
            f"(got {density!r})."
        )
    if svd_rank is not None and (not isinstance(svd_rank, int) or svd_rank < 1):
        raise AdapterConfigError(f"svd_rank must be a positive integer, got {svd_rank!r}.")
    return combination_type


def _result_rank(hosts, adapters, combination_type, svd_rank) -> int:
    ranks = [[h.loras[n].r for n in adapters if n in h.loras] for h in hosts]
    if combination_type == "cat":
        return max(sum(r) for r in ranks)
    if combination_type in _SVD_TYPES:  # a rank beyond min(d_out, d_in) would only add zeros
        largest_useful = max(min(h.in_features, h.out_features) for h in hosts)
        return min(svd_rank or max(max(r) for r in ranks), largest_useful)
    unequal = [r for r in ranks if len(set(r)) > 1]
    if unequal:
        raise AdapterConfigError(
            f"combination_type={combination_type!r} combines A and B matrices directly and needs equal ranks "
            f"(got ranks {unequal[0]} at one layer); use 'cat' or 'svd'."
        )
    return max(r[0] for r in ranks)


class MergingMixin:
    """Merging, unloading and weighted combination of adapters (mixed into the model API).

    Example::

        >>> model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "ab", combination_type="cat")
        >>> model.set_active_adapters("ab")
        >>> plain = model.merge_and_unload()        # a plain transformers model
        >>> plain.save_pretrained("out/merged")
    """

    # -- merging into the weights ----------------------------------------------------------------
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
            hosts = _lora_hosts(self)
            if adapter_names is None:
                names = {name for host in hosts for name in host.merged}
            else:
                names = set(_as_names(adapter_names))
                _require_adapters(self, sorted(names))
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
        weight is not floating point (quantized, integer) is refused too. A zero (IA)³ entry is
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
            paths = _module_paths(self)
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

    # -- combinations ----------------------------------------------------------------------------
    def average_adapter(
        self,
        adapter_name: str,
        adapter_list: Sequence[str] | dict,
        weights: Sequence[float] | None = None,
        combine_strategy: str = "linear",
        normalize_weights: bool = True,
        overwrite_ok: bool = False,
        set_active: bool = False,
        svd_rank: int | None = None,
    ) -> None:
        """Add ``adapter_name`` as a weighted average of adapters that share one config (AdapterHub).

        Weights default to ``1/n``; given weights are divided by their sum with
        ``normalize_weights``. The strategies, with ``Φ`` any parameter, ``s`` the LoRA scaling::

            linear                     Φ = Σ_i w_i Φ_i            every parameter, any method
                                                                  (Compacter's shared ones too)
            lora_linear_only_negate_b  A = Σ_i |w_i| A_i,  B = Σ_i w_i B_i      (Zhang et al., 2023)
            lora_delta_w_svd           ΔW = Σ_i w_i s_i B_i A_i per layer; its truncated SVD
                                       U S Vᴴ gives A = Vᴴ[:k], B = U[:, :k] S[:k] / s_new

        ``lora_delta_w_svd`` creates a rank-``svd_rank`` adapter (``r = svd_rank``, same alpha) whose
        delta is the rank-``svd_rank`` truncation of ``ΔW``: unlike AdapterHub, the scalings of
        inputs and result are accounted for, so a full rank reproduces ``ΔW`` exactly.

        Args:
            adapter_name: the new adapter's name.
            adapter_list: the adapters to average, or a dict name -> weight.
            weights: one weight per adapter (ignored when ``adapter_list`` is a dict).
            combine_strategy: "linear", "lora_linear_only_negate_b" or "lora_delta_w_svd".
            normalize_weights: divide the weights by their sum.
            overwrite_ok: replace an existing adapter named ``adapter_name``.
            set_active: activate the new adapter.
            svd_rank: the rank for "lora_delta_w_svd" (required there, refused elsewhere).

        Raises:
            AdapterConfigError: unknown adapters or strategy, configs that differ (other than in dropout and
                initialisation), a LoRA strategy for non-LoRA, (IA)³, gated or DoRA adapters,
                weights that do not fit, a missing ``svd_rank``. The model is unchanged.

        Example::

            >>> model.average_adapter("avg", ["a", "b"], weights=[0.7, 0.3])
            >>> model.average_adapter("avg8", ["a", "b"], combine_strategy="lora_delta_w_svd", svd_rank=8)
        """
        if isinstance(adapter_list, dict):
            adapter_list, weights = list(adapter_list), list(adapter_list.values())
        names = _as_names(adapter_list)
        weights = _average_weights(self, names, weights, normalize_weights)
        config = _average_config(self, adapter_name, names, combine_strategy, svd_rank, overwrite_ok)
        logger.info(f"Creating adapter {adapter_name!r}: {combine_strategy} average of {names}, weights {weights}.")

        def fill(host, build):
            if host is None:  # Compacter's shared parameters
                shared = self._shared_parameters
                _copy_state(shared[build], _weighted_state([shared[n] for n in names], weights))
                return
            sources = [host.adapters[n] for n in names]
            target = host.adapters[build]
            if combine_strategy == "linear" or host.method == "modules_to_save":  # copies: always linear
                _copy_state(target, _weighted_state(sources, weights))
            elif combine_strategy == "lora_linear_only_negate_b":
                target.lora_A.copy_(sum(abs(w) * m.lora_A.float() for w, m in zip(weights, sources)))
                target.lora_B.copy_(sum(w * m.lora_B.float() for w, m in zip(weights, sources)))
            else:  # part by part on a fused projection (one part elsewhere)
                parts = zip(target.group_views(), *(m.group_views() for m in sources))
                for target_part, *source_parts in parts:
                    delta = sum(w * m.delta_weight().float() for w, m in zip(weights, source_parts))
                    _write_lora(target_part, *_truncated_svd(delta, target.r))

        _add_combined_adapter(self, adapter_name, config, fill, "average_adapter", names, replace=overwrite_ok)
        if set_active:
            self.set_active_adapters(adapter_name)

    def add_weighted_adapter(
        self,
        adapters: Sequence[str],
        weights: Sequence[float],
        adapter_name: str,
        combination_type: str = "svd",
        svd_rank: int | None = None,
        svd_clamp: float | None = None,
        svd_full_matrices: bool = True,
        svd_driver: str | None = None,
        density: float | None = None,
        majority_sign_method: Literal["total", "frequency"] = "total",
    ) -> None:
        """Add ``adapter_name`` as a weighted combination of LoRA adapters (PEFT's definitions).

        With ``s_i`` the scaling of adapter ``i`` at a layer and ``ΔW_i = s_i B_i A_i`` its delta::

            cat        A = [w_1 s_1 A_1; ...; w_n s_n A_n],  B = [B_1, ..., B_n]
                       rank Σ r_i; B A = Σ_i w_i ΔW_i exactly
            svd        ΔW = Σ_i w_i ΔW_i, truncated SVD U S Vᴴ -> A = Vᴴ[:k], B = U[:, :k] S[:k]
                       k = svd_rank (default: the largest input rank)
            linear     c_i = √(w_i s_i);  A = Σ_i c_i A_i,  B = Σ_i c_i B_i
                       (equal ranks; B A has cross terms c_i c_j B_i A_j unless n = 1)
            ties, dare_linear, dare_ties, magnitude_prune
                       the same on A and B separately, with ties / dare_* / magnitude_prune of
                       this module in place of the weighted sum (weights c_i, density)
            ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd
                       ties / dare_* / magnitude_prune of the deltas ΔW_i with weights w_i,
                       then the truncated SVD as for svd

        (IA)³ adapters combine with "linear" only: ``l = Σ_i w_i s_i l_i``. With one adapter every
        type is "linear" (as in PEFT; "cat" for a negative weight, whose square root would not be
        real). The new adapter has the inputs' method and options with ``r`` = the result rank
        (zero-padded where a layer needs less) and ``alpha = r``, so its scaling is 1 and the
        scalings live in the factors; it sits on every layer any input adapts. Where PEFT's
        ``*_svd`` types multiply ``ΔW_i`` (which includes ``s_i``) by ``s_i`` a second time, here
        ``w_i`` weights the actual delta (the same when ``alpha == r``). DARE draws from torch's
        global generator: seed it for reproducible results.

        Args:
            adapters: the LoRA-family adapters to combine.
            weights: one weight per adapter.
            adapter_name: the new adapter's name.
            combination_type: see above.
            svd_rank: the rank of the ``*_svd`` types and "svd" (default: the largest input rank).
            svd_clamp: ``*_svd`` types and "svd": clip the factors' entries to ± this quantile of them.
            svd_full_matrices: passed to ``torch.linalg.svd``.
            svd_driver: passed to ``torch.linalg.svd`` (CUDA only).
            density: fraction of entries kept by the pruning types, in [0, 1].
            majority_sign_method: "total" or "frequency" (TIES' sign election).

        Raises:
            AdapterConfigError: unknown adapters or type, an existing ``adapter_name``, non-LoRA, gated or
                DoRA inputs, LoRA mixed with (IA)³, unequal ranks for the "linear" family, a
                negative weight where its square root is taken, a missing ``density``. The model is
                unchanged.

        Example::

            >>> model.add_weighted_adapter(["a", "b"], [0.6, 0.4], "ab", combination_type="cat")
            >>> model.add_weighted_adapter(["a", "b"], [1.0, 1.0], "ties", combination_type="ties_svd",
            ...                            density=0.2, svd_rank=8)
        """
        adapters, weights = list(adapters), _checked_weights(weights, "add_weighted_adapter")
        combination_type = _check_weighted(self, adapters, weights, adapter_name, combination_type, density, svd_rank)
        configs = _lora_inputs(self, adapters, "add_weighted_adapter")
        if configs[0].composition_mode == "scale" and combination_type != "linear":
            raise AdapterConfigError(
                f"(IA)³ adapters combine with combination_type='linear' only (a weighted sum of their scaling "
                f"vectors), not {combination_type!r}."
            )
        hosts = [h for h in _lora_hosts(self) if any(n in h.loras for n in adapters)]
        rank = _result_rank(hosts, adapters, combination_type, svd_rank)
        config = configs[0].replace(r=rank, alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={})
        config = _union_placement(self, config, adapters)
        copy_owner = _single_copy_owners(self, adapters)
        config = config.replace(modules_to_save=sorted({h.location for h in copy_owner}) or None)
        svd_options = {"clamp": svd_clamp, "full_matrices": svd_full_matrices, "driver": svd_driver}

        def fill(host, build):
            if host.method == "modules_to_save":  # the one input's copy, as it is
                _copy_state(host.modules_to_save[build], host.modules_to_save[copy_owner[host]].state_dict())
                return
            present = [(host.loras[n], w) for n, w in zip(adapters, weights) if n in host.loras]
            target = host.loras[build]
            if host not in hosts:
                raise RuntimeError(f"Internal error: adapter {adapter_name!r} was placed where none of {adapters} is.")
            for i, target_part in enumerate(target.group_views()):  # part by part on a fused projection
                present_part = [(m.group_views()[i], w) for m, w in present]
                factors = _combine_loras(present_part, combination_type, target.r, density, majority_sign_method, svd_options)
                _write_lora(target_part, *factors)

        _add_combined_adapter(self, adapter_name, config, fill, "add_weighted_adapter", adapters)
        if any(adapter_name not in h.loras for h in hosts):
            self.delete_adapter(adapter_name)
            raise RuntimeError(f"Internal error: adapter {adapter_name!r} does not cover every layer of {adapters}.")


def _combine_loras(present, combination_type, rank, density, majority_sign_method, svd_options):
    """``(A, B)`` of the combined delta at one layer (``A`` None for (IA)³: ``B`` is the scaling
    vector); see :meth:`MergingMixin.add_weighted_adapter` for the definitions."""
    loras, weights = [m for m, _ in present], [w for _, w in present]
    if loras[0].composition_mode == "scale":
        return None, sum(w * m.delta_weight().float() for m, w in present)
    if combination_type == "cat":
        A = torch.cat([w * m.scaling * m.lora_A.float() for m, w in present])
        return A, torch.cat([m.lora_B.float() for m in loras], dim=1)
    if combination_type in _SVD_TYPES:
        merge = _TASK_MERGES["linear" if combination_type == "svd" else combination_type.removesuffix("_svd")]
        delta = merge([m.delta_weight().float() for m in loras], weights, density, majority_sign_method)
        return _truncated_svd(delta, rank, **svd_options)
    merge = _TASK_MERGES[combination_type]
    factors = [math.sqrt(w * m.scaling) for m, w in present]
    A = merge([m.lora_A.float() for m in loras], factors, density, majority_sign_method)
    B = merge([m.lora_B.float() for m in loras], factors, density, majority_sign_method)
    return A, B
