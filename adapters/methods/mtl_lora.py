"""MTL-LoRA (Yang et al., 2024, "MTL-LoRA: Low-Rank Adaptation for Multi-Task Learning") on
linear layers: one adapter per task, with a low-rank update that tasks can partly share.

For task ``t`` on a linear layer ``y = x Wᵀ + b``::

    y   = x Wᵀ + b + s · dropout(x) Aᵀ Λ_t B̄_tᵀ,        B̄_t = Σ_k ω_{t,k} B_k,
    ω_t = softmax(w_t / τ),   i.e.  ω_{t,k} = exp(w_{t,k}/τ) / Σ_j exp(w_{t,j}/τ),
    ΔW_t = s · B̄_t Λ_tᵀ A,                               s = α/r   (α/√r with rsLoRA)

* ``A ∈ R^{r×d_in}`` projects the input down (``lora_A``);
* ``Λ_t ∈ R^{r×r}`` is the task's own transform of the low-rank space (``task_specific.values``):
  diagonal (``task_specific_matrix_type="singular_values"``, the paper's choice, ``r`` values) or
  full (``"linear"``); it starts as the identity;
* ``B_1 … B_n ∈ R^{d_out×r}`` are ``n = n_up_projection`` up projections (``lora_B``, stored
  ``(n, d_out, r)``), mixed by the task's weights ``w_t ∈ R^n`` (``weights``, ones at start)
  through a softmax of temperature ``τ = weights_sharpness``.

Mixing the up projections first and projecting once is the same function as AdapterHub's order
(project with every ``B_k``, then mix the outputs), by linearity, for a fraction of the work:
``x Aᵀ Λ_t`` is ``r``-wide, and ``B̄_t`` costs ``n·d_out·r`` per layer instead of ``n`` output-wide
projections per token. The softmax equals AdapterHub's ``exp(w/τ)/Σ exp(w/τ)`` and does not
overflow for small ``τ``. Parameter names and shapes are AdapterHub 1.3.0's, so its checkpoints
load and reproduce.

**Tasks and sharing.** The paper shares ``A`` and the ``B_k`` across tasks and keeps ``Λ_t`` and
``w_t`` per task. Here every task is an adapter of its own; :meth:`ParameterSharingMixin.share_parameters`
makes a group of them use one ``A`` and one set of ``B_k`` (AdapterHub's ``share_parameters``:
the reference adapter's values, copied once). A :class:`~adapters.MultiTask` block runs each
batch row with its task's adapter (the task ids come with the forward call).

**Composition.** An adapter alone is its task's update ``ΔW_t``, a fixed weight delta, so it
composes like LoRA (see :mod:`adapters.methods.weight_transform`): ``Stack`` adds deltas (with
LoRA and the weight transforms too), ``Average`` averages them, ``Parallel`` / ``BatchSplit`` /
``Split`` give each slice its child; ``Fuse`` is not defined. A single adapter merges
(``ΔW_t`` into the weight: its task's view); a ``MultiTask`` block, whose delta differs per row,
cannot be merged (merged adapters are allowed only alone or in a ``Stack``).

**Fused projections** (GPT-2's ``c_attn``, Phi-3's ``qkv_proj``): the adapter covers the chosen
parts' output columns together, with one rank-``r`` update over all of them (not one per part as
LoRA's; AdapterHub 1.3.0's MTL-LoRA cannot run on GPT-2 at all).
"""

from __future__ import annotations

import math
from typing import ClassVar, Optional, Union

import torch
from torch import nn

from ..composition import MultiTask
from ..configuration.mtl_lora import MTLLoRAConfig, MultiTaskConfig
from ..context import registry_lock
from ..errors import AdapterConfigError
from ..hooks.targeting import pattern_value
from .lora import LinearHost
from .registry import MethodFamily, register
from .saved_modules import check_saved_modules_in_setup
from .weight_transform import WeightTransform, add_weight_transform_modules

__all__ = ["MTLLoRA", "TaskSpecificMatrix", "ParameterSharingMixin", "build_mtl_lora"]


class TaskSpecificMatrix(nn.Module):
    """The task's ``r×r`` transform ``Λ_t`` of the low-rank space, kept in ``values``:
    ``"singular_values"`` — its diagonal (``r`` values, ``Λ_t = diag(values)``); ``"linear"`` —
    the whole matrix. Both start as the identity (AdapterHub 1.3.0 meant all-ones for "linear",
    but its module cannot be built; see the MTL-LoRA docs).

    Example::

        >>> torch.equal(TaskSpecificMatrix(4, "singular_values").matrix(), torch.eye(4))
        True
    """

    def __init__(self, r: int, kind: str):
        super().__init__()
        self.kind = kind
        self.values = nn.Parameter(torch.ones(r) if kind == "singular_values" else torch.eye(r))

    def matrix(self) -> torch.Tensor:
        """``Λ_t`` as an ``r×r`` matrix.

        Example::

            >>> TaskSpecificMatrix(4, "linear").matrix().shape
            torch.Size([4, 4])
        """
        return torch.diag(self.values) if self.kind == "singular_values" else self.values

    def right_multiply(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden Λ_t`` for ``hidden`` of any leading shape (a diagonal ``Λ_t`` scales columns).

        Example::

            >>> TaskSpecificMatrix(4, "singular_values").right_multiply(torch.ones(2, 4)).shape
            torch.Size([2, 4])
        """
        values = self.values.to(hidden.dtype)
        return hidden * values if self.kind == "singular_values" else hidden @ values

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class MTLLoRA(WeightTransform):
    """One MTL-LoRA adapter (one task) on one linear layer (see the module docstring).

    Args:
        in_features / out_features: the host layer's sizes.
        config: the adapter's :class:`~adapters.MTLLoRAConfig`.
        r, alpha: rank and alpha for this layer (after ``rank_pattern`` / ``alpha_pattern``).
        out_slices: the output columns covered (parts of a fused projection); None: all.

    Example::

        >>> adapter = MTLLoRA(64, 64, MTLLoRAConfig(r=4, n_up_projection=3), r=4, alpha=8)
        >>> adapter.lora_A.shape, adapter.lora_B.shape, adapter.weights.shape
        (torch.Size([4, 64]), torch.Size([3, 64, 4]), torch.Size([3]))
    """

    method = "mtl_lora"
    #: the parameters ``share_parameters`` makes a group of tasks use together (the paper's shared parts)
    sharable_parameters: ClassVar[tuple[str, ...]] = ("lora_A", "lora_B")

    def __init__(self, in_features: int, out_features: int, config: MTLLoRAConfig, r: int, alpha: float, out_slices=None):
        super().__init__(in_features, out_features, out_slices)
        self.r = r
        self.scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        self.weights_sharpness = config.weights_sharpness
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.empty(config.n_up_projection, self.rows, r))
        self.task_specific = TaskSpecificMatrix(r, config.task_specific_matrix_type)
        self.weights = nn.Parameter(torch.ones(config.n_up_projection))
        self._init_factors(config.init_weights)

    @torch.no_grad()
    def _init_factors(self, init: Union[str, bool]) -> None:
        if init == "bert":  # AdapterHub's: both N(0, 0.02), not the identity
            nn.init.normal_(self.lora_A, std=0.02)
            nn.init.normal_(self.lora_B, std=0.02)
            return
        if init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / self.r)
        else:  # "lora" and False: A as nn.Linear initialises its weight
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if init is False:  # random up projections too: not the identity
            for up in self.lora_B:
                nn.init.kaiming_uniform_(up, a=math.sqrt(5))
        else:  # B_k = 0: the adapter starts as the identity
            nn.init.zeros_(self.lora_B)

    @property
    def n_up_projection(self) -> int:
        """The number ``n`` of up projections ``B_k``.

        Example::

            >>> host.loras["task_a"].n_up_projection
            3
        """
        return self.lora_B.shape[0]

    def mixing_weights(self) -> torch.Tensor:
        """``ω_t = softmax(w_t / τ)``: how much each up projection contributes (sums to 1).

        Example::

            >>> adapter.mixing_weights().sum()
            tensor(1.0000, ...)
        """
        return torch.softmax(self.weights.float() / self.weights_sharpness, dim=0)

    def mixed_up_projection(self) -> torch.Tensor:
        """``B̄_t = Σ_k ω_{t,k} B_k``, ``(rows, r)``.

        Example::

            >>> adapter.mixed_up_projection().shape
            torch.Size([64, 4])
        """
        return torch.einsum("k,kor->or", self.mixing_weights().to(self.lora_B.dtype), self.lora_B)

    def delta_weight(self, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``ΔW_t = s · B̄_t Λ_tᵀ A`` over the covered rows, ``(rows, d_in)`` (``weight`` unused).

        Example::

            >>> adapter.delta_weight().shape
            torch.Size([64, 64])
        """
        return (self.mixed_up_projection() @ self.task_specific.matrix().t().to(self.lora_A.dtype) @ self.lora_A) * self.scaling

    def delta_output(self, x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``s · dropout(x) Aᵀ Λ_t B̄_tᵀ`` over the covered columns.

        Example::

            >>> adapter.delta_output(torch.randn(2, 5, 64)).shape
            torch.Size([2, 5, 64])
        """
        hidden = self.dropout(x) @ self.lora_A.t().to(x.dtype)
        hidden = self.task_specific.right_multiply(hidden)
        return (hidden @ self.mixed_up_projection().t().to(x.dtype)) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, n_up_projection={self.n_up_projection}, weights_sharpness={self.weights_sharpness}"


def build_mtl_lora(config: MTLLoRAConfig, in_features: int, out_features: int, target, path_prefix: str) -> MTLLoRA:
    """The MTL-LoRA module of ``config`` for one targeted layer (rank and alpha after the patterns).

    Example::

        >>> build_mtl_lora(MTLLoRAConfig(r=4), 64, 64, target, "bert.")
    """
    path = path_prefix + target.path
    r = pattern_value(config.rank_pattern, path, config.r)
    alpha = pattern_value(config.alpha_pattern, path, config.alpha)
    return MTLLoRA(in_features, out_features, config, r, alpha, target.out_slices)


# -- sharing parameters between the tasks ---------------------------------------------------------------


def _adapter_names(model, adapter_names, what: str) -> list[str]:
    """``adapter_names`` (a MultiTask block, a list or ``"a,b"``) as a list of existing adapters."""
    if isinstance(adapter_names, MultiTask):
        names = list(adapter_names.children)
    elif isinstance(adapter_names, str):
        names = [n.strip() for n in adapter_names.split(",")]
    elif isinstance(adapter_names, (list, tuple)):
        names = list(adapter_names)
    else:
        raise AdapterConfigError(
            f"{what}: adapter_names={adapter_names!r} is not a MultiTask block, a list of adapter names or 'a,b'."
        )
    valid = "a MultiTask block, a list of adapter names or 'a,b', each an adapter of this model, each once"
    if not names or any(not isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise AdapterConfigError(f"{what}: adapter_names={adapter_names!r} is invalid; give {valid}.")
    known = model.adapters_config.adapters
    for name in names:
        if name not in known:
            raise AdapterConfigError(
                f"{what}: adapter_names names {name!r}, which the model does not have (it has: "
                f"{', '.join(sorted(known)) or 'none'}); give {valid}."
            )
    return names


_GROUPS = "_adapters_parameter_sharing"


def _sharing_groups(model) -> dict[str, tuple[str, ...]]:
    """The model's parameter-sharing groups: group name -> member adapters (empty: none)."""
    return model.__dict__.get(_GROUPS, {})


class ParameterSharingMixin:
    """Model methods of the multi-task family (AdapterHub's names): share parameters between task
    adapters and take the sharing back. Added to every patched model through the registry.

    Example::

        >>> model.share_parameters(MultiTask("a", "b", "c"))
        >>> model.unshare_parameters(MultiTask("a", "b", "c"))
    """

    def share_parameters(
        self, adapter_names: Union[MultiTask, list, str], name: Optional[str] = None, reference_adapter_name: Optional[str] = None
    ) -> None:
        """Make the adapters ``adapter_names`` (of one multi-task config type) use one copy of
        their sharable parameters (MTL-LoRA: the down projection ``A`` and the up projections
        ``B_k``), at every layer they adapt. The shared values start as the reference adapter's
        (default: the first). The task-specific parameters stay each adapter's own.

        The adapters then hold the same parameter objects: training any of them trains the
        shared ones, and ``save_adapter`` writes each adapter with the shared values under its
        own keys (AdapterHub's layout). The sharing itself is not saved: after loading, call
        ``share_parameters`` again.

        Args:
            adapter_names: a :class:`~adapters.MultiTask` block, a list of names or ``"a,b"``.
            name: the sharing group's name (default: the names joined by commas).
            reference_adapter_name: the adapter whose values the shared parameters start from.

        Raises:
            AdapterConfigError: an unknown adapter, one that is not of a multi-task method
                (:class:`~adapters.MultiTaskConfig`), configs of different types, a reference
                outside ``adapter_names``, an adapter already in a group, a group name in use,
                adapters placed on different layers or with different shapes, or a merged one.
                Nothing is shared then.

        Example::

            >>> for task in ("a", "b", "c"):
            ...     model.add_adapter(task, config=MTLLoRAConfig(r=8, n_up_projection=3))
            >>> model.share_parameters(MultiTask("a", "b", "c"))
            >>> model.set_active_adapters(MultiTask("a", "b", "c"))
        """
        what = "share_parameters"
        names = _adapter_names(self, adapter_names, what)
        group = name if name is not None else ",".join(names)
        if not isinstance(group, str) or not group:
            raise AdapterConfigError(f"{what}: name={name!r} is not a non-empty string; give a group name or None.")
        reference = reference_adapter_name if reference_adapter_name is not None else names[0]
        if reference not in names:
            raise AdapterConfigError(
                f"{what}: reference_adapter_name={reference_adapter_name!r} is not one of adapter_names {names}; give one of "
                f"them or None (the first)."
            )
        configs = self.adapters_config.adapters
        for adapter in names:
            if not isinstance(configs[adapter], MultiTaskConfig):
                raise AdapterConfigError(
                    f"{what}: adapter {adapter!r} is a {type(configs[adapter]).__name__} ({configs[adapter].architecture}); "
                    f"only adapters of a multi-task method (MultiTaskConfig, e.g. MTLLoRAConfig) share parameters."
                )
        kinds = {type(configs[adapter]).__name__ for adapter in names}
        if len(kinds) > 1:
            raise AdapterConfigError(f"{what}: the adapters {names} have configs of different types ({sorted(kinds)}); share within one type.")
        groups = _sharing_groups(self)
        if group in groups:
            raise AdapterConfigError(f"{what}: a sharing group named {group!r} exists already; unshare it first or pass another name.")
        for other, members in groups.items():
            taken = sorted(set(members) & set(names))
            if taken:
                raise AdapterConfigError(
                    f"{what}: {taken} share parameters in group {other!r} already; call unshare_parameters({list(members)!r}, "
                    f"name={other!r}) first."
                )
        plan = self._sharing_plan(names, reference, what)
        with registry_lock(self.adapters_config).writing(f"share_parameters({group!r})"):
            for modules, reference_module in plan:
                for parameter_name in reference_module.sharable_parameters:
                    source = getattr(reference_module, parameter_name)
                    shared = nn.Parameter(source.detach().clone(), requires_grad=source.requires_grad)
                    for module in modules:
                        setattr(module, parameter_name, shared)
            self.__dict__.setdefault(_GROUPS, {})[group] = tuple(names)

    def _sharing_plan(self, names: list[str], reference: str, what: str) -> list:
        """``[(modules of the adapters, the reference's module)]`` per host, checked to fit."""
        plan = []
        for host in self._adapter_hosts:
            present = [n for n in names if n in host.adapters]
            if not present:
                continue
            path = next((p for p, m in self.named_modules() if m is host), type(host).__name__)
            if len(present) != len(names):
                raise AdapterConfigError(
                    f"{what}: at {path!r} only {present} of {names} have modules; adapters that share parameters must adapt "
                    f"the same layers (give them the same targeting: attn_matrices, target_modules, leave_out, ...)."
                )
            merged = sorted(set(getattr(host, "merged", ())) & set(names))
            if merged:
                raise AdapterConfigError(f"{what}: {merged} is merged into the weights at {path!r}; call model.reset_adapter() first.")
            modules = [host.adapters[n] for n in names]
            reference_module = host.adapters[reference]
            for n, module in zip(names, modules):
                shapes = {p: tuple(getattr(module, p).shape) for p in getattr(module, "sharable_parameters", ())}
                wanted = {p: tuple(getattr(reference_module, p).shape) for p in reference_module.sharable_parameters}
                if shapes != wanted:
                    raise AdapterConfigError(
                        f"{what}: at {path!r} adapter {n!r} has parameters of shapes {shapes}, the reference {reference!r} "
                        f"{wanted}; adapters that share parameters need the same r, n_up_projection and layers."
                    )
            plan.append((modules, reference_module))
        return plan

    def unshare_parameters(self, adapter_names: Union[MultiTask, list, str], name: Optional[str] = None) -> None:
        """End the sharing group ``name`` (default: the names joined by commas): each of its
        adapters gets its own copy of the values the shared parameters hold now.

        (AdapterHub 1.3.0 only forgets the group's name there; its adapters keep using the same
        parameter objects.)

        Raises:
            AdapterConfigError: no sharing group of that name, or ``adapter_names`` are not its members.

        Example::

            >>> model.unshare_parameters(MultiTask("a", "b", "c"))
            >>> model.get_adapter("a")[0]["selfattn_lora"]   # its own lora_A and lora_B again
        """
        what = "unshare_parameters"
        names = _adapter_names(self, adapter_names, what) if name is None else None
        group = name if name is not None else ",".join(names)
        groups = _sharing_groups(self)
        if group not in groups:
            raise AdapterConfigError(
                f"{what}: no sharing group named {group!r}; the model's groups: {sorted(groups) or 'none'}. Pass the "
                f"adapter_names (and name) given to share_parameters."
            )
        members = groups[group]
        with registry_lock(self.adapters_config).writing(f"unshare_parameters({group!r})"):
            for host in self._adapter_hosts:
                for member in members:
                    module = host.adapters[member] if member in host.adapters else None
                    for parameter_name in getattr(module, "sharable_parameters", ()):
                        current = getattr(module, parameter_name)
                        setattr(module, parameter_name, nn.Parameter(current.detach().clone(), requires_grad=current.requires_grad))
            del groups[group]
            if not groups:
                del self.__dict__[_GROUPS]


def _forget_deleted_members(model) -> None:
    """After an adapter was deleted (its modules are gone from every host): drop it from its
    sharing group, and groups left empty."""
    groups = _sharing_groups(model)
    if not groups:
        return
    placed = {name for host in model._adapter_hosts for name in host.adapters}
    for group, members in list(groups.items()):
        kept = tuple(m for m in members if m in placed)
        if kept:
            groups[group] = kept
        else:
            del groups[group]
    if not groups:
        del model.__dict__[_GROUPS]


register(MethodFamily(
    name="mtl_lora", title="MTL-LoRA", blocks=LinearHost.supported_blocks, add=add_weight_transform_modules,
    weight_delta=True, build_linear=build_mtl_lora, interface_method="lora",
    check_setup=check_saved_modules_in_setup, remove_unused=_forget_deleted_members, model_mixin=ParameterSharingMixin,
))
