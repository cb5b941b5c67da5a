"""VeRA (Kopiczko et al., 2023, "VeRA: Vector-based Random Matrix Adaptation") and DVoRA (VeRA
with DoRA's decomposition) on linear layers.

LoRA trains two low-rank factors per layer. VeRA freezes them: one pair of random projections
``A ∈ R^{r×D_in}``, ``B ∈ R^{D_out×r}`` is drawn once per adapter from a seed and shared by every
layer it adapts (``D_in``, ``D_out``: the largest input and output sizes among those layers; a
layer of size ``d_out × d_in`` uses the top-left block ``A[:, :d_in]``, ``B[:d_out, :]``), and each
layer learns only two scaling vectors, ``d ∈ R^r`` and ``b ∈ R^{d_out}``::

    ΔW = s · diag(b) B diag(d) A,     s = α / r
    y  = x Wᵀ + b_W + s · ((dropout(x) Aᵀ) ⊙ d) Bᵀ ⊙ b

``b`` starts at ``vera_b`` (0: the adapter starts as the identity) and ``d`` at ``vera_d``. A layer
trains ``r + d_out`` numbers instead of LoRA's ``r · (d_in + d_out)``. The effective factors
``diag(d) A`` and ``diag(b) B`` are LoRA's ``A`` and ``B``, so :class:`Vera` is a
:class:`~adapters.methods.lora.LoRA` whose factors are computed, and everything LoRA does — the
one-matmul forward, composition (Stack adds deltas, Average weighs them, Parallel / BatchSplit /
Split give each slice its adapter), gating, merging, DoRA — holds for it unchanged.

**DVoRA** (``use_dora``) renormalises the updated weight per output row and rescales it by a
learned magnitude ``m`` (initialised to the row norms of ``W``)::

    W' = m ⊙ (W + ΔW) / ‖W + ΔW‖_row

**The projections** are frozen buffers in ``shared_parameters.<name>`` (``lora_A``, ``lora_B``),
saved once per adapter with ``save_projection`` and otherwise rebuilt from the seed
(``init_weights_seed``, else ``projection_prng_key``): a dedicated generator draws ``A`` then ``B``
(Kaiming-uniform for ``init_weights="vera"``), which gives the numbers AdapterHub draws after
seeding the global generator and those PEFT draws from ``projection_prng_key``.

**AdapterHub's checkpoints** keep ``d`` and ``b`` as full matrices ``vera_D = diag(d)`` (``r × r``)
and ``vera_B = diag(b)`` (``d_out × d_out``), and AdapterHub trains every entry of them, so a
trained AdapterHub adapter computes ``s · D_full B D_full' A`` with dense matrices. On load, a
diagonal pair becomes the two vectors (exactly); a dense pair turns that layer's adapter into the
*full* form, which computes AdapterHub's dense product and keeps training all its entries.
Saving writes the AdapterHub layout back (vectors as diagonal matrices, DVoRA's magnitude as
``m.weight``). AdapterHub draws one projection pair with the first adapted layer's shape, so it
fails where layers differ in size (grouped-query attention's key/value projections); the shared
block scheme above covers them.
"""

from __future__ import annotations

import math
import re
from typing import Optional

import torch
from torch import nn

from ..configuration.vera import VeraConfig
from ..errors import AdapterConfigError
from ..hooks.targeting import pattern_value
from .base import copy_saved_tensor
from .caching import reuse_while_unchanged
from .lora import LinearHost, LoRA, adapter_dtype_at, linear_hosts, lora_bias_parameters, magnitudes_from_adapterhub, magnitudes_to_adapterhub
from .registry import MethodFamily, PeftMapping, register
from .saved_modules import add_saved_modules, check_saved_modules_in_setup

__all__ = ["Vera", "VeraProjections", "draw_projections", "add_vera_modules"]


@torch.no_grad()
def draw_projections(init, r: int, in_features: int, out_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared projections ``(A, B)`` of shapes ``(r, in_features)``, ``(out_features, r)``,
    drawn with a generator seeded by ``seed``: ``A`` first, then ``B``.

    Example::

        >>> A, B = draw_projections("vera", 4, 64, 64, seed=0)
        >>> A.shape, B.shape
        (torch.Size([4, 64]), torch.Size([64, 4]))
    """
    generator = torch.Generator().manual_seed(seed)
    A, B = torch.empty(r, in_features), torch.empty(out_features, r)
    if init == "vera":
        nn.init.kaiming_uniform_(A, generator=generator)
        nn.init.kaiming_uniform_(B, generator=generator)
    elif init == "lora":  # LoRA's init: B = 0, so ΔW stays 0 whatever d and b learn
        nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(B)
    elif init == "bert":
        nn.init.normal_(A, std=0.02, generator=generator)
        nn.init.normal_(B, std=0.02, generator=generator)
    else:  # "ia3"
        nn.init.ones_(A)
        nn.init.ones_(B)
    return A, B


class VeraProjections(nn.Module):
    """The frozen projections one VeRA adapter shares across its layers: buffers ``lora_A``
    (``r × D_in``) and ``lora_B`` (``D_out × r``), never trained.

    Example::

        >>> shared = VeraProjections(VeraConfig(r=4), in_features=64, out_features=64)
        >>> shared.lora_A.requires_grad
        False
    """

    def __init__(self, config: VeraConfig, in_features: int, out_features: int):
        super().__init__()
        seed = config.init_weights_seed if config.init_weights_seed is not None else config.projection_prng_key
        A, B = draw_projections(config.init_weights, config.r, in_features, out_features, seed)
        self.register_buffer("lora_A", A)
        self.register_buffer("lora_B", B)

    def extra_repr(self) -> str:
        return f"A={tuple(self.lora_A.shape)}, B={tuple(self.lora_B.shape)}"


class Vera(LoRA):
    """One VeRA (or DVoRA) adapter on one linear layer: LoRA with the factors ``diag(d) A`` and
    ``diag(b) B`` (see the module docstring). ``vera_D`` (``d``) and ``vera_B`` (``b``) are vectors,
    or AdapterHub's dense matrices in the *full* form (:meth:`use_full_scaling`).

    On a fused projection (parts of the output, ``out_slices``) each part has its own ``d`` (so
    ``vera_D`` holds ``groups · r`` entries) and its rows of ``b``, and uses the same ``A``.

    Example::

        >>> shared = VeraProjections(VeraConfig(r=4), 64, 64)
        >>> vera = Vera(64, 64, VeraConfig(r=4, vera_b=0.5), r=4, alpha=8, projections=shared)
        >>> vera.delta_weight().shape
        torch.Size([64, 64])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: VeraConfig,
        r: int,
        alpha: float,
        projections: VeraProjections,
        base_weight: Optional[torch.Tensor] = None,
        out_slices: Optional[tuple] = None,
    ):
        super().__init__(in_features, out_features, config, r, alpha, base_weight, False, out_slices)
        # the shared module lives in the model's shared_parameters, not under every layer
        self.__dict__["projections"] = projections
        with torch.no_grad():
            self.vera_D.fill_(config.vera_d)
            self.vera_B.fill_(config.vera_b)

    def _create_factors(self) -> None:
        self.vera_D = nn.Parameter(torch.empty(self.groups * self.r))
        self.vera_B = nn.Parameter(torch.empty(self.rows))

    def _init_weights(self, init) -> None:
        """The vectors are set from ``vera_d`` / ``vera_b``; ``init`` draws the projections."""

    @property
    def full_scaling(self) -> bool:
        """Whether ``vera_D`` / ``vera_B`` are AdapterHub's dense matrices (not vectors).

        Example::

            >>> host.loras["vera"].full_scaling
            False
        """
        return self.vera_D.dim() == 2

    def use_full_scaling(self) -> None:
        """Switch to the full form: ``vera_D`` and ``vera_B`` become the dense matrices
        ``diag(d)`` and ``diag(b)`` (the same update), trained in every entry from now on, as
        AdapterHub does.

        Example::

            >>> vera.use_full_scaling(); vera.vera_D.shape
            torch.Size([4, 4])
        """
        if self.full_scaling:
            return
        if self.groups > 1:
            raise AdapterConfigError(
                "AdapterHub's dense VeRA scaling matrices exist for whole layers only; this adapter covers parts "
                f"of a fused projection ({self.groups} parts)."
            )
        with torch.no_grad():
            self.vera_D = nn.Parameter(torch.diag(self.vera_D), requires_grad=self.vera_D.requires_grad)
            self.vera_B = nn.Parameter(torch.diag(self.vera_B), requires_grad=self.vera_B.requires_grad)

    @property
    def lora_A(self) -> torch.Tensor:
        """``diag(d) A[:, :d_in]`` (one block per part of a fused projection), ``(groups·r, d_in)``."""
        A = self.projections.lora_A[:, : self.in_features].to(self.vera_D.dtype)
        if self.full_scaling:
            return self.vera_D @ A
        if self.groups > 1:
            A = A.repeat(self.groups, 1)
        return self.vera_D.unsqueeze(1) * A

    @property
    def lora_B(self) -> torch.Tensor:
        """``diag(b) B[:rows_part, :]`` per part, stacked, ``(rows, r)``."""
        B = self.projections.lora_B.to(self.vera_B.dtype)
        rows = self.rows // self.groups
        B = B[:rows] if self.groups == 1 else B[:rows].repeat(self.groups, 1)
        if self.full_scaling:
            return self.vera_B @ B
        return self.vera_B.unsqueeze(1) * B

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """``((dropout(x) Aᵀ) ⊙ d) Bᵀ ⊙ b`` (unscaled): with the vectors applied to the activations
        (PEFT's order), their gradients are sums over the tokens, where the factored form
        ``x (diag(d) A)ᵀ (diag(b) B)ᵀ`` would form ``r × d_in`` and ``d_out × r`` gradients of the
        effective factors first (two GEMMs over the tokens per layer in every backward pass).

        Example::

            >>> vera.lora_delta(x).shape[-1] == vera.rows
            True
        """
        if self.full_scaling or self.groups > 1:
            return super().lora_delta(x)
        A = self.projections.lora_A[:, : self.in_features].to(self.vera_D.dtype)
        B = self.projections.lora_B[: self.rows].to(self.vera_B.dtype)
        return (((self.dropout(x) @ A.t()) * self.vera_D) @ B.t()) * self.vera_B

    def add_delta(self, x: torch.Tensor, output: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """``output + s·`` :meth:`lora_delta` while gradients are recorded (training); LoRA's
        two-GEMM accumulation otherwise.

        Example::

            >>> vera.add_delta(x, x @ W.t()).shape == (x @ W.t()).shape
            True
        """
        if not torch.is_grad_enabled() or self.full_scaling or self.groups > 1:
            return super().add_delta(x, output, in_place)
        return output + self.lora_delta(x) * self.scaling

    def forward_alone(self, host, x: torch.Tensor) -> torch.Tensor | None:
        """In inference, the layer with its adapted weight ``W + ΔW`` (DVoRA: ``W'``) kept from
        the last pass while no parameter, projection or base weight has changed: one matmul, at
        the base layer's cost (the update has rank ``r``, often 256 for VeRA, so recomputing it
        every pass, or running the low-rank path, costs a large fraction of the layer). The layer
        keeps one such weight (one copy of its weight) for whichever VeRA adapter ran last; a
        pass that cannot use it frees it. In training, or in half precision (where ``W + ΔW``
        would round the update to the weight's precision), LoRA's paths run. A change is seen
        through the tensors' version counters: an edit through ``.data`` bypasses them, so
        after one call :meth:`forget_kept_weight`.

        Example::

            >>> with torch.no_grad():
            ...     vera.forward_alone(host, x).shape
            torch.Size([2, 5, 64])
        """
        # one kept weight per layer, whichever VeRA adapter it belongs to: switching adapters
        # replaces it, and a pass that cannot use it (training, another dtype) frees it
        kept = host.__dict__.setdefault("_adapters_kept_weight", {})
        dropout_active = isinstance(self.dropout, nn.Dropout) and self.dropout.training
        if (
            torch.is_grad_enabled() or host.merged or self.gated or self.out_index is not None or dropout_active
            or x.dtype not in (torch.float32, torch.float64)
            or host.__dict__["_adapters_original_class"].forward not in host._AFFINE_FORWARDS
            or host.quantized is not None  # torchao keeps nn.Linear's forward; W + ΔW would not be quantized
        ):
            kept.clear()
            return super().forward_alone(host, x)
        sources = [host.weight, self.vera_D, self.vera_B, self.projections.lora_A, self.projections.lora_B]
        if self.use_dora:
            sources.append(self.lora_magnitude)
        weight = reuse_while_unchanged(
            kept, "weight", sources, lambda: self.merge_into(host.weight_out_in.detach(), None, {})[0],
        )
        return nn.functional.linear(x, weight.to(x.dtype), host.bias)

    @staticmethod
    def forget_kept_weight(host) -> None:
        """Free the adapted weight ``host`` keeps for inference (it is rebuilt at the next pass);
        needed only after editing parameters through ``.data``, which no version counter sees.

        Example::

            >>> vera.vera_B.data.mul_(2); Vera.forget_kept_weight(host)
        """
        host.__dict__.pop("_adapters_kept_weight", None)

    def group_views(self):
        """VeRA's factors are computed from shared projections, so they cannot be written through
        part by part: the combinations that rewrite factors refuse VeRA adapters."""
        raise AdapterConfigError(
            "A VeRA adapter's low-rank factors are computed from its shared random projections and cannot be "
            "rewritten; combine VeRA adapters with combine_strategy='linear' (a weighted average of d and b)."
        )

    def extra_repr(self) -> str:
        form = "full" if self.full_scaling else "vectors"
        return f"r={self.r}, scaling={self.scaling:g}, {form}" + (f", out_slices={list(self.out_slices)}" if self.out_slices else "")


def _part_rows(target, host) -> int:
    """The output rows one part of the targeted layer has (all of them outside a fused projection)."""
    if not target.out_slices:
        return host.out_features
    first = target.out_slices[0]
    ranges = first if isinstance(first[0], tuple) else (first,)
    return sum(stop - start for start, stop in ranges)


def add_vera_modules(model, name: str, config: VeraConfig, device, dtype) -> bool:
    """Draw adapter ``name``'s shared projections (sized for the largest targeted layer) into
    ``shared_parameters.<name>`` and attach a :class:`Vera` module to every targeted linear layer.

    Example::

        >>> add_vera_modules(model, "vera", VeraConfig(r=4), device, dtype)
        True
    """
    pairs, prefix = linear_hosts(model, config)
    if pairs:
        in_size = max(host.in_features for _, host in pairs)
        out_size = max(_part_rows(target, host) for target, host in pairs)
        own_dtype = adapter_dtype_at(pairs[0][1], dtype)
        projections = VeraProjections(config, in_size, out_size).to(device=device, dtype=own_dtype)
        model._shared_parameters[name] = projections
        for target, host in pairs:
            alpha = pattern_value(config.alpha_pattern, prefix + target.path, config.alpha)
            module = Vera(
                host.in_features, host.out_features, config, config.r, alpha, projections, host.weight_out_in,
                target.out_slices,
            )
            host.add_adapter_module(name, module.to(device=device, dtype=adapter_dtype_at(host, dtype)).train(model.training))
    if config.modules_to_save:
        add_saved_modules(model, name, config.modules_to_save)
    return bool(pairs) or bool(config.modules_to_save)


def _vera_modules(model, name: str) -> dict[str, Vera]:
    """``{path of the host, relative to the base model: the adapter's module}``."""
    return {
        path: module.loras[name] for path, module in model.base_model.named_modules()
        if isinstance(module, LinearHost) and isinstance(module.loras[name] if name in module.loras else None, Vera)
    }


# -- AdapterHub's layout ----------------------------------------------------------------------------------


def to_adapterhub(model, name: str, config: VeraConfig, state: dict) -> dict:
    """The adapter's weights as AdapterHub stores them: ``vera_D`` / ``vera_B`` as (diagonal)
    matrices, DVoRA's magnitude as ``m.weight`` (``d_out × 1``), and the projections once under
    ``shared_parameters.<name>`` when ``save_projection``.

    Example::

        >>> to_adapterhub(model, "vera", config, {"...query.loras.vera.vera_D": d})["...query.loras.vera.vera_D"].shape
        torch.Size([8, 8])
    """
    state = dict(state)
    for path, module in _vera_modules(model, name).items():
        key = f"{path}.loras.{name}."
        if not module.full_scaling:
            for param in ("vera_D", "vera_B"):
                state[key + param] = torch.diag(state[key + param].detach())
    state = magnitudes_to_adapterhub(model, name, config, state)
    if config.save_projection and name in model._shared_parameters:
        for buffer, value in model._shared_parameters[name].named_buffers():
            state[f"shared_parameters.{name}.{buffer}"] = value
    return state


def from_adapterhub(model, name: str, config: VeraConfig, state: dict, path: str) -> dict:
    """AdapterHub's (or our) VeRA weights made to fit the adapter's modules: diagonal matrices
    become vectors exactly, a dense pair switches its layer to the full form, ``m.weight`` becomes
    the magnitude vector, and saved projections replace the drawn ones (shape-checked).

    Raises:
        AdapterLoadError: saved projections of another shape (the message names ``path``).

    Example::

        >>> state = from_adapterhub(model, "vera", config, state, "out/vera/adapter.safetensors")
    """
    state = dict(state)
    for module_path, module in _vera_modules(model, name).items():
        key = f"{module_path}.loras.{name}."
        D, B = state.get(key + "vera_D"), state.get(key + "vera_B")
        if D is not None and B is not None and D.dim() == 2 and B.dim() == 2:
            if _is_diagonal(D) and _is_diagonal(B) and not module.full_scaling:
                state[key + "vera_D"], state[key + "vera_B"] = torch.diagonal(D).clone(), torch.diagonal(B).clone()
            else:
                module.use_full_scaling()
    state = magnitudes_from_adapterhub(model, name, config, state)
    projections = model._shared_parameters[name] if name in model._shared_parameters else None
    for buffer in ("lora_A", "lora_B"):
        saved = state.pop(f"shared_parameters.{name}.{buffer}", None)
        if saved is not None and projections is not None:
            copy_saved_tensor(getattr(projections, buffer), saved, path, f"shared_parameters.{name}.{buffer}")
    return state


def _is_diagonal(matrix: torch.Tensor) -> bool:
    return matrix.shape[0] == matrix.shape[1] and torch.equal(matrix, torch.diag(torch.diagonal(matrix)))


# -- PEFT's layout: peft_type VERA -------------------------------------------------------------------------
# PEFT's keys: <module>.vera_lambda_d (d), <module>.vera_lambda_b (b) and, with save_projection,
# base_model.vera_A / base_model.vera_B (the shared projections, sized for the largest target).
# PEFT's VeRA has no alpha: ΔW = diag(b) B diag(d) A, i.e. ours with s = 1 (alpha = r on read;
# on write s is folded into b).

_PEFT_VERA_KEY = re.compile(r"^(?P<module>.+)\.vera_lambda_(?P<which>[bd])(\.default)?$")
_PEFT_PROJECTION_KEY = re.compile(r"^base_model\.vera_(?P<which>[AB])(\.default)?$")

_PEFT_VERA_FIELDS = {"VERA": (
    ("r", "projection_prng_key", "save_projection", "vera_dropout", "d_initial", "bias", *PeftMapping.TARGETING_FIELDS),
    ("init_weights", "fan_in_fan_out"),
    {},
)}


def vera_config_from_peft(meta: dict, targeting: dict) -> VeraConfig:
    """Our config for PEFT's VeRA config dict ``meta`` (``alpha = r``: PEFT does not scale).

    Example::

        >>> vera_config_from_peft({"r": 4, "projection_prng_key": 0}, {"target_modules": ("q_proj",)}).alpha
        4
    """
    r = meta.get("r", 256)
    return VeraConfig(
        r=r, alpha=r, vera_d=meta.get("d_initial", 0.1), vera_b=0.0, dropout=meta.get("vera_dropout") or 0.0,
        projection_prng_key=meta.get("projection_prng_key", 0), save_projection=meta.get("save_projection", True),
        bias=meta.get("bias", "none"), **targeting,
    )


def vera_key_from_peft(key: str, value: torch.Tensor, name: str):
    """One PEFT VeRA weight as ours: ``vera_lambda_d`` -> ``loras.<name>.vera_D``,
    ``vera_lambda_b`` -> ``vera_B``, ``base_model.vera_A`` -> ``shared_parameters.<name>.lora_A``;
    None for other keys.

    Example::

        >>> vera_key_from_peft("model.layers.0.self_attn.q_proj.vera_lambda_d", d, "a")[0]
        'model.layers.0.self_attn.q_proj.loras.a.vera_D'
    """
    match = _PEFT_PROJECTION_KEY.match(key)
    if match:
        return f"shared_parameters.{name}.lora_{match['which']}", value
    match = _PEFT_VERA_KEY.match(key)
    if match:
        return f"{match['module']}.loras.{name}.vera_{match['which'].upper()}", value
    return None


def vera_to_peft(model, name: str, config: VeraConfig) -> tuple[dict, dict]:
    """``(fields, weights)`` of VeRA adapter ``name`` in PEFT's ``VERA`` layout (``s`` folded into
    ``b``; the projections written once, when ``save_projection``).

    Raises:
        AdapterConfigError: what PEFT's VeRA cannot express: DVoRA, a gate, AdapterHub's dense
            scaling matrices, parts of a fused projection, per-layer alphas, or projections PEFT
            would draw differently (``init_weights`` other than "vera" without ``save_projection``).

    Example::

        >>> fields, weights = vera_to_peft(model, "vera", model.adapters_config.adapters["vera"])
    """
    def refuse(why: str) -> AdapterConfigError:
        return AdapterConfigError(f"Adapter {name!r} cannot be written in PEFT's format: {why}.")

    if config.use_dora:
        raise refuse("PEFT has no DVoRA (VeRA with use_dora=True)")
    if config.use_gating:
        raise refuse("PEFT's VeRA has no gate (use_gating=True)")
    seed = config.init_weights_seed if config.init_weights_seed is not None else config.projection_prng_key
    if not config.save_projection and (config.init_weights != "vera" or not 0 <= seed < 2**63):
        raise refuse(
            "PEFT would draw its projections again from projection_prng_key with init_weights='vera'; save them "
            "(save_projection=True)"
        )
    top_prefix = "" if model.base_model is model else model.base_model_prefix + "."
    modules = _vera_modules(model, name)
    weights, targets = {}, []
    for path, module in modules.items():
        if module.full_scaling:
            raise refuse(f"{path} holds AdapterHub's dense scaling matrices, which PEFT's vectors cannot express")
        if module.groups > 1:
            raise refuse(f"it covers parts of the fused projection {path}; target the whole module instead")
        targets.append(top_prefix + path)
        weights[f"{top_prefix}{path}.vera_lambda_d"] = module.vera_D.detach()
        weights[f"{top_prefix}{path}.vera_lambda_b"] = module.vera_B.detach() * module.scaling
    if config.save_projection:
        projections = model._shared_parameters[name]
        weights["base_model.vera_A"] = projections.lora_A
        weights["base_model.vera_B"] = projections.lora_B
    fan_in_fan_out = any(h.fan_in_fan_out for h in model._adapter_hosts if isinstance(h, LinearHost) and name in h.loras)
    fields = dict(
        r=config.r, projection_prng_key=seed, save_projection=config.save_projection, vera_dropout=config.dropout,
        d_initial=config.vera_d, bias=config.bias, fan_in_fan_out=fan_in_fan_out, init_weights=True,
        target_modules=targets,
    )
    for path, bias in lora_bias_parameters(model, name, config).items():
        weights[top_prefix + path] = bias.detach()
    return fields, weights


register(MethodFamily(
    name="vera", title="VeRA", blocks=LinearHost.supported_blocks, add=add_vera_modules, weight_delta=True,
    interface_method="lora", base_parameters=lora_bias_parameters, check_setup=check_saved_modules_in_setup,
    to_adapterhub=to_adapterhub, from_adapterhub=from_adapterhub,
    peft=PeftMapping(
        "VERA", vera_config_from_peft, fields=_PEFT_VERA_FIELDS, field_names={"dropout": "vera_dropout", "vera_d": "d_initial"},
        convert_key=vera_key_from_peft, write=vera_to_peft, model_level=("base_model.vera_A", "base_model.vera_B"),
    ),
))
