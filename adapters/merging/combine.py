"""Combining adapters into a new adapter: AdapterHub's ``average_adapter`` and PEFT's
``add_weighted_adapter`` (with the task-vector merges of :mod:`~adapters.merging.task_vectors`).

Every combination writes a new adapter next to its inputs, all or nothing: the new adapter is
added with a config derived from the inputs', its parameters are filled layer by layer, and it is
checked to be finite; on any error it is removed again and the inputs are left as they were. The
LoRA-specific combinations read the adapters through their modules (low-rank factors, or
(IA)³'s scaling vectors, whose merges multiply instead of add: ``additive`` is False), never
through method names.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .. import logging
from ..configuration.lora import LoRAConfig
from ..context import registry_lock
from ..errors import AdapterConfigError, AdapterMergeError
from ..methods.registry import families_of
from .common import as_names, module_paths, require_adapters, weight_delta_hosts
from .task_vectors import TASK_MERGES

__all__ = ["CombineMixin"]

logger = logging.get_logger(__name__)

# combination types of add_weighted_adapter, by how they combine
_FACTOR_TYPES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")  # A and B separately
_SVD_TYPES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")  # ΔW, then SVD
_DENSITY_TYPES = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
_COMBINATION_TYPES = ("cat",) + _FACTOR_TYPES + _SVD_TYPES
_AVERAGE_STRATEGIES = ("linear", "lora_linear_only_negate_b", "lora_delta_w_svd")


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
        if any(not isinstance(p, LoRAConfig) or p.architecture != LoRAConfig.architecture for p in parts):
            raise AdapterConfigError(
                f"{what} combines LoRA / (IA)³ adapters only; {name!r} is not (or not only) one (a VeRA adapter's "
                f"factors come from shared random projections: average VeRA adapters with combine_strategy='linear')."
            )
        (config,) = parts
        if config.use_gating:
            raise AdapterConfigError(
                f"{what} cannot combine the gated adapter {name!r}: a gate depends on the input, so its delta is "
                f"not a fixed weight."
            )
        modules = [h.adapters[name] for h in weight_delta_hosts(model) if name in h.adapters]
        if getattr(config, "use_dora", False) or any(hasattr(m, "lora_magnitude") for m in modules):
            raise AdapterConfigError(
                f"{what} cannot combine the DoRA adapter {name!r}: its update renormalises W + ΔW per row, so "
                f"weighted sums of its parameters or deltas do not give the weighted DoRA update."
            )
        configs.append(config)
    paths = module_paths(model)
    for host in weight_delta_hosts(model):  # fused projections: combined part by part, so the parts must agree
        parts = {host.adapters[n].out_slices for n in adapters if n in host.adapters}
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


def _scales(model, name: str) -> bool:
    """Whether LoRA-family adapter ``name`` is (IA)³: scaling vectors, whose merges multiply the
    weight (its modules are not ``additive``; DoRA, the other such kind, is refused as an input
    before this is asked)."""
    return any(not h.adapters[name].additive for h in weight_delta_hosts(model) if name in h.adapters)


def _single_copy_owners(model, adapters: Sequence[str]) -> dict:
    """saved-module host -> the one adapter of ``adapters`` with a copy there (``modules_to_save``);
    raises where several have one, as the combination could keep only one (as PEFT)."""
    owners = {}
    for host in model._adapter_hosts:
        if not host.keeps_module_copies:
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
    hosts_by_adapter = [{id(h) for h in weight_delta_hosts(model) if name in h.adapters} for name in adapters]
    if all(hosts == hosts_by_adapter[0] for hosts in hosts_by_adapter):
        return template  # same placement: keep the first config's (readable) targeting
    paths = module_paths(model)
    union = [h for h in weight_delta_hosts(model) if any(name in h.adapters for name in adapters)]
    partial = [h for h in union if any(n in h.adapters and h.adapters[n].out_slices for n in adapters)]
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
        scaled = [h for h in union if any(getattr(h.adapters[n], "scale_input", False) for n in adapters if n in h.adapters)]
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
            paths = module_paths(model)
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
    """``Σ_i w_i Φ_i`` for every floating-point parameter of the modules (computed in float32);
    other entries (buffers: fixed, never trained) come from the first module, and must be the same
    in every module (VeRA's random projections: the averaged vectors mean something only on the
    same projections)."""
    states = [m.state_dict() for m in modules]
    parameters = {name for name, _ in modules[0].named_parameters()}
    result = {}
    for key, first in states[0].items():
        if any(s[key].shape != first.shape for s in states[1:]):
            raise AdapterConfigError(
                f"The adapters' {key} have different shapes ({', '.join(str(tuple(s[key].shape)) for s in states)}; e.g. "
                f"VeRA scaling loaded as AdapterHub's dense matrices beside vectors), so they cannot be averaged."
            )
        if key in parameters and first.is_floating_point():
            result[key] = sum(w * s[key].float() for w, s in zip(weights, states))
            continue
        if any(not torch.equal(s[key], first) for s in states[1:]):
            raise AdapterConfigError(
                f"The adapters hold different fixed values in {key} (VeRA projections or LoReFT's orthogonal bases drawn "
                f"from different seeds), so their parameters cannot be averaged; combine adapters that share them "
                f"(created with the same init_weights_seed)."
            )
        result[key] = first
    return result


def _copy_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    for key, value in state.items():
        own[key].copy_(value)


def _checked_weights(weights, what: str) -> list[float]:
    """``weights`` as floats; refuses anything but finite real numbers (booleans too)."""
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
    require_adapters(model, names)
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
    for method_family, part in families_of(config):
        if method_family.check_average is not None:
            method_family.check_average(part)
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
    _lora_inputs(model, names, f"combine_strategy={strategy!r}")
    if _scales(model, names[0]):
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
    require_adapters(model, adapters)
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
    ranks = [[h.adapters[n].r for n in adapters if n in h.adapters] for h in hosts]
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


def _combine_loras(present, combination_type, rank, density, majority_sign_method, svd_options):
    """``(A, B)`` of the combined delta at one layer (``A`` None for (IA)³: ``B`` is the scaling
    vector); see :meth:`MergingMixin.add_weighted_adapter` for the definitions."""
    loras, weights = [m for m, _ in present], [w for _, w in present]
    if loras[0].lora_A is None:  # (IA)³: a scaling vector, no factors
        return None, sum(w * m.delta_weight().float() for m, w in present)
    if combination_type == "cat":
        A = torch.cat([w * m.scaling * m.lora_A.float() for m, w in present])
        return A, torch.cat([m.lora_B.float() for m in loras], dim=1)
    if combination_type in _SVD_TYPES:
        merge = TASK_MERGES["linear" if combination_type == "svd" else combination_type.removesuffix("_svd")]
        delta = merge([m.delta_weight().float() for m in loras], weights, density, majority_sign_method)
        return _truncated_svd(delta, rank, **svd_options)
    merge = TASK_MERGES[combination_type]
    factors = [math.sqrt(w * m.scaling) for m, w in present]
    A = merge([m.lora_A.float() for m in loras], factors, density, majority_sign_method)
    B = merge([m.lora_B.float() for m in loras], factors, density, majority_sign_method)
    return A, B


@dataclasses.dataclass
class _WeightedCombination:
    """How ``add_weighted_adapter`` fills its new adapter at each host (see :meth:`fill`)."""

    adapter_name: str
    adapters: list[str]
    weights: list[float]
    combination_type: str
    density: float | None
    majority_sign_method: str
    svd_options: dict
    #: the weight-delta hosts any input adapts
    hosts: list
    #: saved-module host -> the one input whose copy of the module the new adapter takes
    copy_owner: dict

    def fill(self, host, build: str) -> None:
        """Set adapter ``build``'s parameters at ``host`` to the combination of the inputs there."""
        if host.keeps_module_copies:  # the one input's copy, as it is
            _copy_state(host.modules_to_save[build], host.modules_to_save[self.copy_owner[host]].state_dict())
            return
        if host not in self.hosts:
            raise RuntimeError(f"Internal error: adapter {self.adapter_name!r} was placed where none of {self.adapters} is.")
        present = [(host.adapters[n], w) for n, w in zip(self.adapters, self.weights) if n in host.adapters]
        target = host.adapters[build]
        for i, target_part in enumerate(target.group_views()):  # part by part on a fused projection
            present_part = [(m.group_views()[i], w) for m, w in present]
            factors = _combine_loras(
                present_part, self.combination_type, target.r, self.density, self.majority_sign_method, self.svd_options
            )
            _write_lora(target_part, *factors)


def _weighted_combination(
    model, adapter_name, adapters, weights, combination_type, svd_rank, density, majority_sign_method, svd_options
) -> tuple:
    """``(config, combination)`` of ``add_weighted_adapter``'s new adapter: the inputs' method and
    options with ``r = alpha =`` the result rank, placed on every layer an input adapts, keeping
    the ``modules_to_save`` copy of the one input that has one; and how to fill it. Raises for
    inputs that cannot combine (before anything changes)."""
    configs = _lora_inputs(model, adapters, "add_weighted_adapter")
    if _scales(model, adapters[0]) and combination_type != "linear":
        raise AdapterConfigError(
            f"(IA)³ adapters combine with combination_type='linear' only (a weighted sum of their scaling "
            f"vectors), not {combination_type!r}."
        )
    hosts = [h for h in weight_delta_hosts(model) if any(n in h.adapters for n in adapters)]
    rank = _result_rank(hosts, adapters, combination_type, svd_rank)
    config = configs[0].replace(r=rank, alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={})
    config = _union_placement(model, config, adapters)
    copy_owner = _single_copy_owners(model, adapters)
    config = config.replace(modules_to_save=sorted({h.location for h in copy_owner}) or None)
    combination = _WeightedCombination(
        adapter_name, adapters, weights, combination_type, density, majority_sign_method, svd_options, hosts, copy_owner
    )
    return config, combination


class CombineMixin:
    """Weighted combinations of adapters into new adapters (mixed into the model API through
    :class:`~adapters.merging.MergingMixin`).

    Example::

        >>> model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "ab", combination_type="cat")
        >>> model.average_adapter("avg", ["a", "b"], weights=[0.7, 0.3])
    """

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
        names = as_names(adapter_list)
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
            if combine_strategy == "linear" or host.keeps_module_copies:  # copies: always linear
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
        config, combination = _weighted_combination(
            self, adapter_name, adapters, weights, combination_type, svd_rank, density, majority_sign_method,
            {"clamp": svd_clamp, "full_matrices": svd_full_matrices, "driver": svd_driver},
        )
        _add_combined_adapter(self, adapter_name, config, combination.fill, "add_weighted_adapter", adapters)
        if any(adapter_name not in h.adapters for h in combination.hosts):
            self.delete_adapter(adapter_name)
            raise RuntimeError(f"Internal error: adapter {adapter_name!r} does not cover every layer of {adapters}.")
