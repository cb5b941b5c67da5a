"""AdaLoRA (Zhang et al., 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning")
on linear layers.

**The update** is parameterised like a singular value decomposition::

    ΔW = P Λ Q · s,     P ∈ R^{d_out×r₀} (lora_B),  Λ = diag(λ) (lora_E ∈ R^{r₀×1}),  Q ∈ R^{r₀×d_in} (lora_A)
    s  = α / (r₀ + 10⁻⁵)            (PEFT's scaling: α = lora_alpha, or r₀ when lora_alpha is 0)
    y  = x Wᵀ + b + s · (dropout(x) (Q ⊙ λ)ᵀ) Pᵀ

Initialisation: ``λ = 0``, ``P, Q ~ N(0, 0.02²)``, so the adapter starts as the identity.

**Orthogonality.** ``P`` and ``Q`` are kept near-orthogonal by a regulariser added to the
training loss, ``w · mean over matrices of (‖QQᵀ − I‖_F, ‖PᵀP − I‖_F)`` (``orth_reg_weight``).

**Rank allocation** (:class:`RankAllocator`). Triplet ``k`` (``P[:, k]``, ``λ_k``, ``Q[k]``) of a
layer gets an importance score from the sensitivity ``I(w) = |w · ∂L/∂w|`` of its entries,
smoothed (``Ī ← β₁ Ī + (1−β₁) I``) and with its uncertainty (``Ū ← β₂ Ū + (1−β₂)|I − Ī|``)::

    score(w) = Ī(w) Ū(w),   S_k = score(λ_k) + mean_j score(Q[k, j]) + mean_i score(P[i, k])

At step ``t`` the budget (the number of non-zero ``λ`` over all layers, initially
``b₀ = Σ r₀``, finally ``b_T = target_r · #layers``) follows a cubic schedule::

    b(t) = b₀                                                        t ≤ t_init
    b(t) = ⌊(b₀ − b_T)(1 − (t − t_init)/(T − t_final − t_init))³ + b_T⌋   t_init < t ≤ T − t_final
    b(t) = b_T                                                       t > T − t_final

Every ``ΔT`` steps within the schedule, and once at ``t = T − t_final``, the ``λ_k`` with the
``b₀ − b(t)`` smallest scores are set to 0; after that the final mask is re-applied every step.
Call :meth:`AdaLoRAModelMixin.update_and_allocate` after ``loss.backward()`` and before
``optimizer.zero_grad()`` (or let :class:`~adapters.trainer.AdaLoraCallback` do it in a ``Trainer``).
Parameter names are PEFT's (``lora_A``, ``lora_B``, ``lora_E``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration.weight_transforms import AdaLoRAConfig
from ..errors import AdapterConfigError
from .lora import PEFT_LORA_ANY_FIELDS, PEFT_LORA_UNIMPLEMENTED_FIELDS, accumulate_low_rank
from .registry import PeftMapping
from .weight_transform import WeightTransform, register_weight_transform

__all__ = ["AdaLoRA", "RankAllocator", "AdaLoRAModelMixin"]


class AdaLoRA(WeightTransform):
    """One AdaLoRA adapter on one linear layer (see the module docstring).

    Args:
        r: this layer's number of triplets (``init_r``, or fewer where a PEFT ``rank_pattern``
            pruned it); the scaling always uses ``init_r``.

    Example::

        >>> ada = AdaLoRA(64, 64, AdaLoRAConfig(init_r=6), r=6)
        >>> ada.lora_A.shape, ada.lora_E.shape, ada.lora_B.shape
        (torch.Size([6, 64]), torch.Size([6, 1]), torch.Size([64, 6]))
    """

    method = "adalora"

    def __init__(self, in_features: int, out_features: int, config: AdaLoRAConfig, r: int, out_slices=None):
        super().__init__(in_features, out_features, out_slices)
        self.r = r
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.randn(r, in_features))
        self.lora_E = nn.Parameter(torch.randn(r, 1))
        self.lora_B = nn.Parameter(torch.randn(self.rows, r))
        if config.init_lora_weights:
            with torch.no_grad():
                nn.init.zeros_(self.lora_E)
                nn.init.normal_(self.lora_A, std=0.02)
                nn.init.normal_(self.lora_B, std=0.02)

    def delta_weight(self, weight=None) -> torch.Tensor:
        """``P (Q ⊙ λ) · s``."""
        return self.lora_B @ (self.lora_A * self.lora_E) * self.scaling

    def delta_output(self, x: torch.Tensor, weight=None) -> torch.Tensor:
        hidden = self.dropout(x) @ (self.lora_A * self.lora_E).t().to(x.dtype)
        return (hidden @ self.lora_B.t().to(x.dtype)) * self.scaling

    def forward_single(self, host, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the update, the second product accumulated into it in one GEMM."""
        output = host.base_forward(x)
        if self.skipped():
            return output
        lora_A = (self.lora_A * self.lora_E).to(x.dtype)
        return accumulate_low_rank(output, self.dropout(x), lora_A, self.lora_B.to(x.dtype), self.scaling, in_place=True)

    def orthogonality(self) -> torch.Tensor:
        """``‖QQᵀ − I‖_F + ‖PᵀP − I‖_F`` (the two terms of the regulariser for this layer)."""
        a, b = self.lora_A, self.lora_B
        eye = torch.eye(self.r, device=a.device, dtype=a.dtype)
        return torch.linalg.norm(a @ a.t() - eye) + torch.linalg.norm(b.t() @ b - eye)

    @property
    def current_rank(self) -> int:
        """The number of triplets with a non-zero singular value."""
        return int((self.lora_E.detach() != 0).sum())

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}"


class RankAllocator:
    """AdaLoRA's importance-based budget allocation for one adapter (see the module docstring).

    Args:
        config: the adapter's :class:`~adapters.AdaLoRAConfig` (``total_step`` required).
        modules: the adapter's :class:`AdaLoRA` modules, one per layer.

    Example::

        >>> allocator = RankAllocator(config, modules)
        >>> allocator.budget_schedule(0)
        (72, False)
    """

    def __init__(self, config: AdaLoRAConfig, modules: list[AdaLoRA]):
        if config.total_step is None:
            raise AdapterConfigError(
                "AdaLoRA rank allocation needs total_step, the number of training steps, but the AdaLoRAConfig has "
                "total_step=None; set it (e.g. AdaLoRAConfig(total_step=1000, ...))."
            )
        self.config = config
        self.modules = list(modules)
        self.initial_budget = sum(m.r for m in self.modules)
        self.target_budget = config.target_r * len(self.modules)
        self.final_mask: list[torch.Tensor] | None = None
        self.reset_importance()

    def reset_importance(self) -> None:
        """Forget the smoothed sensitivities and uncertainties."""
        self.sensitivity: dict[int, torch.Tensor] = {}
        self.uncertainty: dict[int, torch.Tensor] = {}

    def budget_schedule(self, step: int) -> tuple[int, bool]:
        """``(budget, whether to re-allocate at this step)``: the cubic schedule."""
        c = self.config
        if step <= c.tinit:
            return self.initial_budget, False
        if step > c.total_step - c.tfinal:
            return self.target_budget, True
        progress = 1 - (step - c.tinit) / (c.total_step - c.tfinal - c.tinit)
        budget = int((self.initial_budget - self.target_budget) * progress**3 + self.target_budget)
        return budget, step % c.deltaT == 0

    @torch.no_grad()
    def update_importance(self) -> None:
        """Fold ``|w · ∂L/∂w|`` of every P, λ, Q entry into the EMAs (entries without a gradient count 0)."""
        b1, b2 = self.config.beta1, self.config.beta2
        for module in self.modules:
            for param in (module.lora_A, module.lora_E, module.lora_B):
                grad = param.grad if param.grad is not None else torch.zeros_like(param)
                importance = (param * grad).abs()
                key = id(param)
                smoothed = self.sensitivity.get(key, torch.zeros_like(param))
                spread = self.uncertainty.get(key, torch.zeros_like(param))
                smoothed = b1 * smoothed + (1 - b1) * importance
                self.uncertainty[key] = b2 * spread + (1 - b2) * (importance - smoothed).abs()
                self.sensitivity[key] = smoothed

    def _score(self, param) -> torch.Tensor:
        key = id(param)
        if key not in self.sensitivity:
            return torch.zeros_like(param)
        return self.sensitivity[key] * self.uncertainty[key]

    def triplet_scores(self) -> list[torch.Tensor]:
        """``S_k`` per layer, each ``(r,)``."""
        return [
            self._score(m.lora_E).view(-1) + self._score(m.lora_A).mean(dim=1) + self._score(m.lora_B).mean(dim=0)
            for m in self.modules
        ]

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> list[torch.Tensor]:
        """Zero the ``λ`` of the lowest-scoring triplets so that ``budget`` remain; returns the keep-masks."""
        scores = self.triplet_scores()
        pruned = self.initial_budget - budget
        if pruned <= 0:
            masks = [torch.ones_like(s, dtype=torch.bool) for s in scores]
        else:
            threshold = torch.kthvalue(torch.cat(scores).float().cpu(), pruned).values.item()
            masks = [s > threshold for s in scores]
        for module, keep in zip(self.modules, masks):
            module.lora_E.masked_fill_(~keep.view(-1, 1).to(module.lora_E.device), 0.0)
        return masks

    @torch.no_grad()
    def apply_final_mask(self) -> None:
        for module, keep in zip(self.modules, self.final_mask or []):
            module.lora_E.masked_fill_(~keep.view(-1, 1).to(module.lora_E.device), 0.0)

    def step(self, global_step: int) -> int:
        """One allocation step (see the module docstring); returns the budget in force."""
        c = self.config
        end = c.total_step - c.tfinal
        if global_step < end:
            self.update_importance()
            budget, reallocate = self.budget_schedule(global_step)
            if reallocate:
                self.mask_to_budget(budget)
            return budget
        if global_step == end:
            self.update_importance()
            self.final_mask = self.mask_to_budget(self.target_budget)
            self.reset_importance()
            return self.target_budget
        if self.final_mask is None:  # resumed after the schedule ended: allocate once from scratch
            self.final_mask = self.mask_to_budget(self.target_budget)
        self.apply_final_mask()
        return self.target_budget


class AdaLoRAModelMixin:
    """AdaLoRA's training API on the model (mixed into the model API).

    Example::

        >>> loss = model(**batch).loss            # includes the orthogonal regulariser in training
        >>> loss.backward()
        >>> optimizer.step()
        >>> model.update_and_allocate(step)
        >>> optimizer.zero_grad()
    """

    def _adalora_modules(self, name: str) -> list[AdaLoRA]:
        return [h.loras[name] for h in self._adalora_hosts(name)]

    def _adalora_hosts(self, name: str) -> list:
        hosts = [h for h in self._adapter_hosts if h.hosts_weight_deltas and name in h.loras]
        return [h for h in hosts if isinstance(h.loras[name], AdaLoRA)]

    def _adalora_names(self, setup=None) -> list[str]:
        registry = self.adapters_config
        names = setup.names_in_order() if setup is not None else list(registry.adapters)
        return [
            n for n in names
            if n in registry.adapters and any(p.architecture == "adalora" for p in registry.adapters[n].configs_by_architecture())
        ]

    def _adalora_config(self, name: str) -> AdaLoRAConfig:
        return next(p for p in self.adapters_config.adapters[name].configs_by_architecture() if p.architecture == "adalora")

    def update_and_allocate(self, global_step: int, adapter_name: str | None = None) -> None:
        """AdaLoRA's budget step: update the importance scores and prune singular values to the
        scheduled budget (PEFT's ``update_and_allocate``). Call it after ``loss.backward()`` and
        before ``optimizer.zero_grad()``.

        Args:
            global_step: the current training step (0-based).
            adapter_name: the AdaLoRA adapter; default: those of the active setup.

        Raises:
            AdapterConfigError: no AdaLoRA adapter is active / named, or its config lacks ``total_step``.

        Example::

            >>> model.update_and_allocate(step)
        """
        setup = self.adapters_config.active_setup
        names = [adapter_name] if adapter_name is not None else self._adalora_names(setup) if setup is not None else []
        if not names or any(n not in self._adalora_names() for n in names):
            raise AdapterConfigError(
                f"update_and_allocate needs an AdaLoRA adapter, got adapter_name={adapter_name!r} with the active setup "
                f"{setup} (this model's AdaLoRA adapters: {self._adalora_names()}): activate one "
                f"(train_adapter('name')) or pass adapter_name."
            )
        allocators = self.__dict__.setdefault("_adapters_adalora_allocators", {})
        for name in names:
            modules = self._adalora_modules(name)
            allocator = allocators.get(name)
            if allocator is None or [id(m) for m in allocator.modules] != [id(m) for m in modules]:
                allocator = allocators[name] = RankAllocator(self._adalora_config(name), modules)
            allocator.step(global_step)

    def adalora_ranks(self, adapter_name: str) -> dict[str, int]:
        """The current rank (non-zero singular values) of AdaLoRA adapter ``adapter_name`` per module path.

        Example::

            >>> sum(model.adalora_ranks("ada").values())      # the budget in use
        """
        paths = {id(m): p for p, m in self.base_model.named_modules()}
        return {paths[id(h)]: h.loras[adapter_name].current_rank for h in self._adalora_hosts(adapter_name)}

    def adalora_orthogonal_regularization(self, adapter_name: str | None = None) -> torch.Tensor:
        """``orth_reg_weight · mean over P and Q matrices of ‖·ᵀ· − I‖_F`` for the AdaLoRA adapters
        of the active setup (or ``adapter_name``); added to the loss automatically in training.

        Example::

            >>> loss = task_loss + model.adalora_orthogonal_regularization("ada")
        """
        setup = self.adapters_config.active_setup
        names = [adapter_name] if adapter_name is not None else self._adalora_names(setup) if setup is not None else []
        total = torch.zeros((), device=next(self.parameters()).device)
        for name in names:
            modules = self._adalora_modules(name)
            if modules:
                weight = self._adalora_config(name).orth_reg_weight
                total = total + weight * sum(m.orthogonality() for m in modules) / (2 * len(modules))
        return total

    def _add_adalora_regularization(self, output, setup):
        """Add the orthogonal regulariser to ``output.loss`` when training with AdaLoRA adapters active."""
        if not self.training or setup is None or getattr(output, "loss", None) is None:
            return output
        for name in _adalora_names_of(self, setup):
            output.loss = output.loss + self.adalora_orthogonal_regularization(name)
        return output


@torch._dynamo.assume_constant_result  # torch.compile: looked up while tracing (the setup's identity is guarded)
def _adalora_names_of(model, setup) -> tuple:
    """The AdaLoRA adapters of ``setup``, cached per setup until the adapters change."""
    registry = model.adapters_config
    cache = model.__dict__.setdefault("_adapters_adalora_setups", {})
    if cache.get("version") != registry.version:  # the adapters changed: recompute per setup
        cache.clear()
        cache["version"] = registry.version
    if setup not in cache:
        cache[setup] = tuple(model._adalora_names(setup))
    return cache[setup]


def build_adalora(config: AdaLoRAConfig, in_features: int, out_features: int, target, path_prefix: str) -> AdaLoRA:
    """The AdaLoRA module of ``config`` for one targeted layer: rank ``init_r``, or the number of
    triplets PEFT's saved allocation (``rank_pattern``) kept for this module.

    Example::

        >>> build_adalora(AdaLoRAConfig(init_r=6), 64, 64, target, "bert.")
    """
    r = config.init_r
    for key, mask in (config.rank_pattern or {}).items():
        module = key.replace(".default", "").removesuffix(".lora_E")
        if module in (target.path, path_prefix + target.path) or module.endswith("." + target.path):
            r = sum(bool(m) for m in mask)
    return AdaLoRA(in_features, out_features, config, r, target.out_slices)


def _adalora_from_peft(meta: dict, targeting: dict) -> AdaLoRAConfig:
    return AdaLoRAConfig(
        init_r=meta.get("init_r", 12), target_r=meta.get("target_r", 8), lora_alpha=meta.get("lora_alpha", 8),
        lora_dropout=meta.get("lora_dropout") or 0.0, init_lora_weights=bool(meta.get("init_lora_weights", True)),
        tinit=meta.get("tinit", 0), tfinal=meta.get("tfinal", 0), deltaT=meta.get("deltaT", 1),
        beta1=meta.get("beta1", 0.85), beta2=meta.get("beta2", 0.85), orth_reg_weight=meta.get("orth_reg_weight", 0.5),
        total_step=meta.get("total_step"), rank_pattern=meta.get("rank_pattern"), **targeting,
    )


def _adalora_to_peft(config: AdaLoRAConfig, hosts: list, name: str) -> dict:
    fields = {f: getattr(config, f) for f in (
        "init_r", "target_r", "lora_alpha", "lora_dropout", "init_lora_weights", "deltaT", "beta1", "beta2", "orth_reg_weight",
    )}
    fields["total_step"] = config.total_step or 1  # PEFT refuses None; only training uses it
    fields["tinit"], fields["tfinal"] = (config.tinit, config.tfinal) if config.total_step else (0, 0)
    fields["rank_pattern"] = None
    fields["fan_in_fan_out"] = any(h.fan_in_fan_out for h in hosts)
    return fields


def _add_regularization(model, context, output):
    return model._add_adalora_regularization(output, context.setup)


register_weight_transform(
    "adalora", "AdaLoRA", build_adalora,
    PeftMapping(
        "ADALORA", _adalora_from_peft, _adalora_to_peft, parameters=("lora_A", "lora_B", "lora_E"), linear_only=False,
        fields={"ADALORA": (
            ("init_r", "target_r", "lora_alpha", "lora_dropout", "init_lora_weights", "tinit", "tfinal", "deltaT", "beta1",
             "beta2", "orth_reg_weight", "total_step", "rank_pattern", "bias", *PeftMapping.TARGETING_FIELDS),
            (*PEFT_LORA_ANY_FIELDS, "r", "use_rslora", "alpha_pattern"),  # PEFT's AdaLoRA does not read these
            {**PEFT_LORA_UNIMPLEMENTED_FIELDS, "use_dora": False},
        )},
    ),
    after_forward=_add_regularization, model_mixin=AdaLoRAModelMixin,
)
