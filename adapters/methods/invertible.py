"""Invertible adapters (Pfeiffer et al., 2020, "MAD-X", §2.3): an invertible map on the token
embeddings, so a language adapter can also adapt the (tied) output embeddings.

A language adapter's config with ``inv_adapter="nice"`` or ``"glow"`` adds one coupling block
``A`` at the model's embedding output, ``e ← A(e)``, and its inverse before the output embeddings
(the LM head), ``h ← A⁻¹(h)``: input and output vocabularies stay aligned through one
bijection. The embedding ``e ∈ R^d`` is split into ``e₁ = e[:⌊d/2⌋]`` and ``e₂ = e[⌊d/2⌋:]``; each
coupling network is ``Linear(n, n / f) → σ → Linear(n / f, m)`` (``f`` the
``inv_adapter_reduction_factor``, ``σ`` the config's ``non_linearity``).

NICE (additive coupling, Dinh et al., 2015)::

    forward:  y₁ = e₁ + F(e₂)            y₂ = e₂ + G(y₁)
    inverse:  e₂ = y₂ − G(y₁)            e₁ = y₁ − F(e₂)

GLOW (affine coupling, Kingma & Dhariwal, 2018), with ``[s, t]`` predicted by one network and the
scale softly clamped, ``σ_c(s) = exp(c · 0.636 · atan(s / c))``, ``c = 5``::

    forward:  [s₂, t₂] = S₂(e₂), y₁ = σ_c(s₂) ⊙ e₁ + t₂      [s₁, t₁] = S₁(y₁), y₂ = σ_c(s₁) ⊙ e₂ + t₁
    inverse:  [s₁, t₁] = S₁(y₁), e₂ = (y₂ − t₁) / σ_c(s₁)     [s₂, t₂] = S₂(e₂), e₁ = (y₁ − t₂) / σ_c(s₂)

Both are exact inverses (``A⁻¹(A(e)) = e`` up to rounding). AdapterHub 1.3.0's GLOW block skips
``S₂`` in its forward direction and slices ``[s, t]`` along the sequence axis, so it is not
invertible; this module keeps its parameter names (``s1``, ``s2``) and shapes, so such
checkpoints load, but computes the coupling above. Parameters start from BERT's initialisation
(AdapterHub's), so the block is near, not exactly, the identity at first.

**Which adapter runs.** The block of the first adapter of the active setup that has one (a
``Stack("lang", "task")`` uses ``lang``'s); under ``Parallel`` / ``BatchSplit`` each row uses the
first such adapter of its own setup (the setup with every Parallel / BatchSplit replaced by the
branch that owns the row: in ``Stack(Parallel("a", "de"), "sw")`` branch ``a``'s rows use ``sw``'s).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..composition import BatchSplit, Parallel, Stack
from ..hooks.engine import ComposableLayer, batch_branches, remove_host_mixin
from ..hooks.patching import restore_class, swap_class
from ..hooks.spec import stack_configs
from .base import in_dtype, init_bert_weights, parameter_dtype

__all__ = [
    "NICECoupling", "GLOWCoupling", "coupling_block", "EmbeddingOutputHost", "OutputEmbeddingInputHost",
    "uninstall_invertible", "add_invertible_adapter", "move_embedding_host", "invert_before",
    "InvertibleAdapterMethods", "InvertibleAdaptersMixin", "InvertibleAdaptersWrapperMixin",
]

CONTAINER = "invertible_adapters"


def _coupling_network(size_in: int, size_out: int, non_linearity: str, reduction_factor: float) -> nn.Sequential:
    hidden = max(1, int(size_in // reduction_factor))
    return nn.Sequential(nn.Linear(size_in, hidden), ACT2FN[non_linearity.lower()], nn.Linear(hidden, size_out))


class NICECoupling(nn.Module):
    """Additive coupling: ``y₁ = e₁ + F(e₂)``, ``y₂ = e₂ + G(y₁)`` (see the module docstring).

    Example::

        >>> block = NICECoupling(64, "relu", 2)
        >>> torch.allclose(block(block(e), rev=True), e, atol=1e-5)
        True
    """

    def __init__(self, size: int, non_linearity: str, reduction_factor: float):
        super().__init__()
        self.split = size // 2
        self.F = _coupling_network(size - self.split, self.split, non_linearity, reduction_factor)
        self.G = _coupling_network(self.split, size - self.split, non_linearity, reduction_factor)

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        x1, x2 = x[..., : self.split], x[..., self.split :]
        if not rev:
            y1 = x1 + self.F(x2)
            return torch.cat((y1, x2 + self.G(y1)), dim=-1)
        e2 = x2 - self.G(x1)
        return torch.cat((x1 - self.F(e2), e2), dim=-1)


class GLOWCoupling(nn.Module):
    """Affine coupling with soft-clamped scales (see the module docstring).

    Example::

        >>> block = GLOWCoupling(64, "relu", 2)
        >>> torch.allclose(block(block(e), rev=True), e, atol=1e-5)
        True
    """

    clamp = 5.0

    def __init__(self, size: int, non_linearity: str, reduction_factor: float):
        super().__init__()
        self.split = size // 2
        rest = size - self.split
        self.s1 = _coupling_network(self.split, 2 * rest, non_linearity, reduction_factor)
        self.s2 = _coupling_network(rest, 2 * self.split, non_linearity, reduction_factor)

    def _scale(self, s: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.clamp * 0.636 * torch.atan(s / self.clamp))

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        x1, x2 = x[..., : self.split], x[..., self.split :]
        rest = x2.shape[-1]
        if not rev:
            s2, t2 = self.s2(x2).split([self.split, self.split], dim=-1)
            y1 = self._scale(s2) * x1 + t2
            s1, t1 = self.s1(y1).split([rest, rest], dim=-1)
            return torch.cat((y1, self._scale(s1) * x2 + t1), dim=-1)
        s1, t1 = self.s1(x1).split([rest, rest], dim=-1)
        e2 = (x2 - t1) / self._scale(s1)
        s2, t2 = self.s2(e2).split([self.split, self.split], dim=-1)
        return torch.cat(((x1 - t2) / self._scale(s2), e2), dim=-1)


def coupling_block(config, size: int) -> nn.Module:
    """The invertible block a bottleneck config asks for (``inv_adapter``), BERT-initialised.

    Example::

        >>> coupling_block(SeqBnInvConfig(), 768)
        NICECoupling(...)
    """
    cls = {"nice": NICECoupling, "glow": GLOWCoupling}[config.inv_adapter]
    block = cls(size, config.non_linearity, config.inv_adapter_reduction_factor or 2)
    block.apply(init_bert_weights)
    return block


class _InvertibleHost(ComposableLayer):
    """Shared by both directions: which block runs on which rows."""

    method = "invertible"
    supported_blocks = (Stack, Parallel, BatchSplit)

    @property
    def blocks(self) -> nn.ModuleDict:
        return self.__dict__["_adapters_invertible_blocks"]

    def adapter_names(self) -> set[str]:
        return set(self.blocks.keys())

    def _apply(self, hidden: torch.Tensor, rev: bool) -> torch.Tensor:
        setup = self.active_setup()
        if setup is None:
            return hidden
        branches = batch_branches(setup, hidden.shape[0])
        if len(branches) == 1:
            name = branches[0][1]
            return hidden if name is None else self._run_block(name, hidden, rev)
        parts, start = [], 0
        for size, name in branches:
            rows = hidden.narrow(0, start, size)
            parts.append(rows if name is None else self._run_block(name, rows, rev))
            start += size
        return torch.cat(parts, dim=0)

    def _run_block(self, name: str, hidden: torch.Tensor, rev: bool) -> torch.Tensor:
        # a block in its own dtype (float32 on a bfloat16 model: autocast_adapter_dtype) computes
        # in it; the hidden states keep theirs
        block = self.blocks[name]
        return in_dtype(block(in_dtype(hidden, parameter_dtype(block)), rev=rev), hidden.dtype)


class EmbeddingOutputHost(_InvertibleHost):
    """Mixin for the module whose output is the embedding output (swapped in by class): applies
    the active invertible block to that output. Owns the blocks for the model API.

    Example::

        >>> model.add_adapter("de", config="seq_bn_inv")
        >>> type(model.bert.embeddings).__name__
        'BertEmbeddingsWithAdapters'
    """

    location = "invertible_adapter"

    @property
    def adapters(self) -> nn.ModuleDict:
        """The invertible blocks by adapter name (the common name used by the model API)."""
        return self.blocks

    def add_block(self, name: str, block: nn.Module) -> None:
        self.blocks[name] = block
        self._invalidate_setup_cache()

    def delete_adapter(self, name: str) -> None:
        if name in self.blocks:
            del self.blocks[name]
            self._invalidate_setup_cache()

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        scale_attribute = self.__dict__.get("_adapters_embedding_scale")
        if scale_attribute is None:
            return self._apply(output, rev=False)
        # the block acts on the embedding before the module's own factor (ArchitectureSpec.embedding_scale)
        scale = getattr(self, scale_attribute).to(output.dtype)
        return self._apply(output / scale, rev=False) * scale


class OutputEmbeddingInputHost(_InvertibleHost):
    """Mixin for the output embeddings (the LM head): applies the active block's inverse to its
    input. Reads the blocks of the :class:`EmbeddingOutputHost` and owns none for the model API.

    Example::

        >>> type(model.lm_head).__name__
        'LinearWithAdapters'
    """

    location = "invertible_adapter_inverse"

    @property
    def adapters(self) -> dict:
        return {}

    def delete_adapter(self, name: str) -> None:
        self._invalidate_setup_cache()

    def active_setup(self):
        return self.__dict__["_adapters_embedding_host"].active_setup()

    def forward(self, hidden_states, *args, **kwargs):
        return super().forward(self._apply(hidden_states, rev=True), *args, **kwargs)


def uninstall_invertible(model) -> None:
    """Take the invertible adapters' hooks out of ``model`` once it has no invertible block left:
    the class swaps of the embedding module and of the output embeddings, and the empty
    ``invertible_adapters`` container (the inverse of what adding the first one installed).

    Example::

        >>> model.delete_adapter("de")          # the last seq_bn_inv adapter
        >>> "invertible_adapters" in model.base_model._modules
        False
    """
    base = model.base_model
    blocks = base._modules.get(CONTAINER)
    if blocks is None or len(blocks):
        return
    hosts = model._adapter_hosts
    removed = [host for host in hosts if isinstance(host, _InvertibleHost)]
    for host in removed:
        for key in ("_adapters_invertible_blocks", "_adapters_embedding_host", "_adapters_embedding_scale"):
            host.__dict__.pop(key, None)
        mixin = EmbeddingOutputHost if isinstance(host, EmbeddingOutputHost) else OutputEmbeddingInputHost
        remove_host_mixin(host, mixin)
    hosts[:] = [host for host in hosts if not any(host is r for r in removed)]
    del base._modules[CONTAINER]


# -- the invertible adapters on a model: the block at the embedding output, its inverse before the
#    output embeddings ---------------------------------------------------------------------------------


def add_invertible_adapter(model, name: str, config, device, dtype) -> None:
    """The invertible block of ``config`` at the embedding output, and its inverse before the
    output embeddings; installs both hooks once.

    Example::

        >>> add_invertible_adapter(model, "de", SeqBnInvConfig(), "cpu", torch.float32)
    """
    base = model.base_model
    if CONTAINER not in base._modules:
        base.add_module(CONTAINER, nn.ModuleDict())
    spec = model.__dict__["_adapters_spec"]
    host = base.get_submodule(spec.embedding_output or spec.embeddings)
    if not isinstance(host, EmbeddingOutputHost):
        _install_embedding_host(model, host)
    for output in model._language_model_outputs():
        invert_before(model, output)
    first = stack_configs(base, spec)[0]  # the stack whose input embeddings the host reads (CLIP: text)
    size = getattr(first, "embedding_size", None) or first.hidden_size
    host.add_block(name, coupling_block(config, size).to(device=device, dtype=dtype).train(model.training))


def invert_before(model, output: nn.Module) -> None:
    """Run the active invertible block's inverse on ``output``'s input (once per module; also for
    an LM head added after the invertible adapters).

    Example::

        >>> invert_before(model, model.heads["lm"].get_output_embeddings())
    """
    if isinstance(output, OutputEmbeddingInputHost):
        return
    spec = model.__dict__["_adapters_spec"]
    swap_class(output, OutputEmbeddingInputHost)
    output.__dict__["_adapters_invertible_blocks"] = model.base_model._modules[CONTAINER]
    output.__dict__["_adapters_embedding_host"] = model.base_model.get_submodule(spec.embedding_output or spec.embeddings)
    output._init_composable(-1, OutputEmbeddingInputHost.location)
    model._adapter_hosts.append(output)


def _install_embedding_host(model, module: nn.Module) -> None:
    swap_class(module, EmbeddingOutputHost)
    module.__dict__["_adapters_invertible_blocks"] = model.base_model._modules[CONTAINER]
    module.__dict__["_adapters_embedding_scale"] = model.__dict__["_adapters_spec"].embedding_scale
    module._init_composable(-1, EmbeddingOutputHost.location)
    model._adapter_hosts.append(module)
    for host in model._adapter_hosts:
        if isinstance(host, OutputEmbeddingInputHost):
            host.__dict__["_adapters_embedding_host"] = module


def move_embedding_host(model, old: nn.Module, new: nn.Module) -> None:
    """Move the invertible adapters' hook when the embedding module itself is swapped out
    (``set_active_embeddings`` on models whose embedding output is the token embedding).

    Example::

        >>> move_embedding_host(model, old_embeddings, new_embeddings)
    """
    if isinstance(old, EmbeddingOutputHost) and old is not new:
        model._adapter_hosts.remove(old)
        for key in ("_adapters_invertible_blocks", "_adapters_embedding_scale", "layer_idx", "location", "_setup_cache"):
            old.__dict__.pop(key, None)
        restore_class(old)
        _install_embedding_host(model, new)


# -- AdapterHub's model methods and marker classes for invertible adapters ---------------------------------


def _invertible_config(config):
    """The bottleneck config of ``config`` (or of a member of its union) that asks for an
    invertible block, or None."""
    for member in getattr(config, "configs", None) or (config,):
        if getattr(member, "inv_adapter", None):
            return member
    return None


class InvertibleAdapterMethods:
    """AdapterHub's methods for the invertible blocks of a model's adapters (added to every
    patched model through the bottleneck family's ``model_mixin``). ``add_adapter`` with a config
    that has ``inv_adapter`` (``seq_bn_inv``, ``double_seq_bn_inv``, ...) adds the block already;
    these methods inspect it or add, remove and unfreeze it on its own.

    Example::

        >>> model.add_adapter("de", config="seq_bn_inv", set_active=True)
        >>> model.get_invertible_adapter()
        NICECoupling(...)
    """

    def _invertible_blocks(self) -> dict:
        blocks = self.base_model._modules.get(CONTAINER)
        return blocks if blocks is not None else {}

    def get_invertible_adapter(self):
        """The invertible block of the first adapter of the active setup (``Stack("de", "task")``:
        ``de``'s), or None when it has none (AdapterHub's method).

        Example::

            >>> model.set_active_adapters(Stack("de", "task"))
            >>> model.get_invertible_adapter() is model.base_model.invertible_adapters["de"]
            True
        """
        setup = self.adapters_config.active_setup
        if setup is None:
            return None
        first = setup if isinstance(setup, str) else setup.first()
        blocks = self._invertible_blocks()
        return blocks[first] if first in blocks else None

    def add_invertible_adapter(self, adapter_name: str) -> bool:
        """Add the invertible block adapter ``adapter_name``'s config asks for (``inv_adapter``);
        returns False (and adds nothing) when its config asks for none, as AdapterHub does.
        ``add_adapter`` adds the block already: this re-adds one removed with
        :meth:`delete_invertible_adapter` (freshly initialised).

        Raises:
            AdapterConfigError: no adapter of that name (AdapterHub returns False), or it has its
                invertible block already.

        Example::

            >>> model.delete_invertible_adapter("de")
            >>> model.add_invertible_adapter("de")
            True
        """
        from ..errors import AdapterConfigError

        config = self.adapters_config.adapters.get(adapter_name)
        if config is None:
            raise AdapterConfigError(
                f"add_invertible_adapter: no adapter named {adapter_name!r}; add it first (add_adapter); the model has: "
                f"{', '.join(sorted(self.adapters_config.adapters)) or 'none'}."
            )
        config = _invertible_config(config)
        if config is None:
            return False
        if adapter_name in self._invertible_blocks():
            raise AdapterConfigError(
                f"Adapter {adapter_name!r} has its invertible block already; delete_invertible_adapter({adapter_name!r}) first."
            )
        reference = self.get_input_embeddings().weight
        add_invertible_adapter(self, adapter_name, config, reference.device, reference.dtype)
        return True

    def delete_invertible_adapter(self, adapter_name: str) -> None:
        """Remove adapter ``adapter_name``'s invertible block (the adapter stays; nothing happens
        when it has none, as in AdapterHub).

        Example::

            >>> model.delete_invertible_adapter("de")
            >>> model.get_invertible_adapter() is None
            True
        """
        for host in self._adapter_hosts:
            if isinstance(host, _InvertibleHost):
                host.delete_adapter(adapter_name)

    def enable_invertible_adapters(self, adapter_names) -> None:
        """Make the invertible blocks of ``adapter_names`` trainable (``requires_grad``), as
        AdapterHub's method; names without a block are skipped.

        Example::

            >>> model.enable_invertible_adapters(["de"])
        """
        blocks = self._invertible_blocks()
        for name in [adapter_names] if isinstance(adapter_names, str) else adapter_names:
            if name in blocks:
                blocks[name].requires_grad_(True)


def _supports_invertible(model) -> bool:
    from ..errors import AdapterError

    supports = getattr(model, "supports_adapter", None)
    if not callable(supports):
        return False
    try:
        return supports("invertible")
    except (AdapterError, NotImplementedError):  # a model whose input embeddings cannot be found
        return False


class _SupportsInvertibleAdapters(type):
    """``isinstance(model, InvertibleAdaptersMixin)``: whether the patched model can hold invertible
    adapters (its architecture has input embeddings the blocks can act on)."""

    def __instancecheck__(cls, instance) -> bool:
        if cls.requires_head and getattr(instance, "base_model", instance) is instance:
            return False
        return _supports_invertible(instance)


class InvertibleAdaptersMixin(metaclass=_SupportsInvertibleAdapters):
    """AdapterHub's marker of models that hold invertible adapters: ``isinstance(model,
    InvertibleAdaptersMixin)`` is true for a patched model (base or head model) whose architecture
    takes them (an input embedding to act on: not ViT, CLIP's vision tower alone, Whisper's audio
    input, ...). Nothing derives from it: the methods are :class:`InvertibleAdapterMethods`, on
    every patched model.

    Example::

        >>> isinstance(adapters.init(BertModel(config)), adapters.InvertibleAdaptersMixin)
        True
    """

    requires_head = False


class InvertibleAdaptersWrapperMixin(metaclass=_SupportsInvertibleAdapters):
    """AdapterHub's marker of head models whose base model holds invertible adapters:
    ``isinstance(model, InvertibleAdaptersWrapperMixin)`` is true for a patched transformers head
    model (or AdapterModel) that takes them.

    Example::

        >>> isinstance(adapters.init(BertForMaskedLM(config)), adapters.InvertibleAdaptersWrapperMixin)
        True
    """

    requires_head = True
