"""What the weight-transform methods (LoHa, LoKr, OFT, HRA, AdaLoRA) share on a linear layer.

Every adapter ``i`` of these methods defines an effective weight ``W_i`` from the layer's weight
``W`` (``(d_out, d_in)``): ``W + ΔW_i`` for the additive ones (LoHa, LoKr, AdaLoRA), ``W Rᵢᵀ``
for OFT and ``W H_i`` for HRA. Its *delta* is ``ΔW_i(W) = W_i − W``; for the rotations it depends
on ``W``. The adapters live in the same ``loras`` ModuleDict of the same host
(:class:`~adapters.methods.lora.LinearHost`) as LoRA / (IA)³ and implement the same protocol
(:class:`~adapters.methods.lora.LinearAdapter`), so one linear layer can carry adapters of several
methods at once, and they compose like LoRA adapters do:

* ``Stack(a, b, ...)``: ``W + Σ_i ΔW_i(W)`` — deltas add (for a single adapter this is exactly
  its own effective weight);
* ``Average(a, b, weights)``: ``W + Σ_i w_i ΔW_i(W)``;
* ``Parallel`` / ``BatchSplit`` / ``Split``: each slice of the batch / sequence uses its child.

``W`` here is the layer's *reference* weight: its stored weight minus the additive updates
merged into it (LoRA, LoHa, LoKr, AdaLoRA and the merged rotation deltas), so merging any of the
adapters of a Stack, in any order, gives the output the unmerged Stack computes. A rotation and a
multiplicative adapter ((IA)³, DoRA) on the same layer are never merged (each changes what the
other acts on; :meth:`~adapters.methods.lora.LinearHost.merge` refuses).

Efficient forward. An adapter active on its own computes the layer in one pass where it can:
LoHa folds ``ΔW`` into the weight of a single matmul, LoKr applies the Kronecker product to the
input (``(A ⊗ B) x = vec(A X Bᵀ)``, never forming ``ΔW``), OFT and HRA rotate the input and run
the layer on it (PEFT's way for OFT; HRA via the compact WY form of its reflections). In a
composition each adapter contributes its output delta ``x ΔW_iᵀ``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..hooks.slices import check_slices
from .lora import LinearAdapter, LoRALinear, linear_hosts
from .registry import MethodFamily, family, register
from .saved_modules import add_saved_modules, check_saved_modules_in_setup

__all__ = [
    "WeightTransform", "add_weight_transform_modules", "register_weight_transform", "lycoris_fields_from_peft",
    "lycoris_fields_to_peft",
]


class WeightTransform(LinearAdapter):
    """Base of one weight-transform adapter on one linear layer: the
    :class:`~adapters.methods.lora.LinearAdapter` protocol for an adapter that defines an effective
    weight ``W_i = W + ΔW_i(W)`` (see the module docstring).

    Subclasses implement :meth:`delta_weight` and :meth:`delta_output`, and may override
    :meth:`forward_single` (the whole layer with only this adapter) for speed.

    Args:
        in_features / out_features: the host's sizes.
        out_slices: output column ranges covered (the parts of a fused projection); None: all.
        module_dropout: in training, the adapter is skipped at this layer with this probability.

    Example::

        >>> adapter = model.encoder.layer[0].attention.self.query.loras["loha"]
        >>> adapter.delta_weight(weight).shape       # (d_out, d_in)
    """

    method: ClassVar[str] = ""

    def __init__(self, in_features: int, out_features: int, out_slices=None, module_dropout: float = 0.0):
        super().__init__(in_features, out_features, check_slices(out_slices, out_features))
        self.module_dropout = module_dropout

    def skipped(self) -> bool:
        """Module dropout: whether this forward pass leaves the adapter out (training only).

        Example::

            >>> adapter.eval().skipped()
            False
        """
        return self.training and self.module_dropout > 0 and bool(torch.rand(()) < self.module_dropout)

    def delta_weight(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``ΔW`` over the covered rows, ``(rows, d_in)``; ``weight`` is the layer's covered
        reference rows (used by the rotations).

        Example::

            >>> adapter.delta_weight(host.reference_covered(adapter)).shape
            torch.Size([64, 64])
        """
        raise NotImplementedError

    def delta_output(self, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """``x ΔWᵀ`` over the covered columns (without module dropout).

        Example::

            >>> adapter.delta_output(x, None).shape[-1] == adapter.rows
            True
        """
        raise NotImplementedError

    # -- the LinearAdapter protocol ------------------------------------------------------------------
    def apply_to(self, host, x: torch.Tensor, output: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        """The covered columns ``output`` with this adapter's delta ``x ΔW(W)ᵀ`` added, ``W`` the
        reference weight.

        Example::

            >>> adapter.apply_to(host, x, output, output)
        """
        weight = host.reference_covered(self) if self.needs_weight else None
        if self.skipped():
            return output
        return output + self.delta_output(x, weight)

    def forward_alone(self, host, x: torch.Tensor) -> torch.Tensor | None:
        """:meth:`forward_single` over the whole output with nothing merged into the host (then the
        stored weight is the reference weight); None otherwise.

        Example::

            >>> adapter.forward_alone(host, x).shape
            torch.Size([2, 5, 64])
        """
        if host.merged or self.out_index is not None:
            return None
        if host.quantized is not None and not self.needs_weight:
            # a method's one-pass form may fold ΔW into the weight (LoHa), which would bypass the
            # quantized layer's own kernel: run the quantized layer and add x ΔWᵀ
            return WeightTransform.forward_single(self, host, x)
        return self.forward_single(host, x)

    def forward_single(self, host, x: torch.Tensor) -> torch.Tensor:
        """The host's output with only this adapter active and nothing merged.

        Example::

            >>> adapter.forward_single(host, x).shape
            torch.Size([2, 5, 64])
        """
        result = host.base_forward(x)
        if self.skipped():
            return result
        return result + self.delta_output(x, host.weight_out_in if self.needs_weight else None)

    def merge_record(self, host) -> dict:
        """``ΔW`` on the reference weight, without dropout (a merged weight has none): the merge
        adds it, the unmerge subtracts it exactly, and while merged it is not part of the
        reference weight.

        Example::

            >>> adapter.merge_record(host)["delta"].shape
            torch.Size([64, 64])
        """
        reference = host.reference_covered(self) if self.needs_weight else None
        was_training = self.training
        self.eval()
        try:
            delta = self.delta_weight(reference)
        finally:
            self.train(was_training)
        return {"delta": delta.detach()}

    def merge_into(self, weight: torch.Tensor, bias: torch.Tensor | None, record: dict):
        """``W + ΔW`` (the bias unchanged).

        Example::

            >>> merged, _ = adapter.merge_into(weight, bias, adapter.merge_record(host))
        """
        return weight + record["delta"].to(weight.dtype), bias

    def unmerge_from(self, weight: torch.Tensor, bias: torch.Tensor | None, record: dict):
        """``W' − ΔW`` with the ``ΔW`` of the merge.

        Example::

            >>> weight, _ = adapter.unmerge_from(merged, bias, record)
        """
        return weight - record["delta"].to(weight.dtype), bias

    def delta_in_weight(self, record: dict) -> torch.Tensor:
        """The ``ΔW`` the merge added.

        Example::

            >>> adapter.delta_in_weight(record) is record["delta"]
            True
        """
        return record["delta"]

    @staticmethod
    def _row_dropout(rows: int, p: float, rescale: bool, reference: torch.Tensor) -> torch.Tensor:
        """A keep-mask over output rows (``1``: kept), divided by its mean with ``rescale``."""
        keep = (torch.rand(rows, device=reference.device) > p).to(reference.dtype)
        if rescale:
            keep = keep / keep.mean().clamp_min(1.0 / rows)
        return keep


def add_weight_transform_modules(model, name: str, config, device, dtype) -> bool:
    """Attach adapter ``name`` of a weight-transform ``config`` to every targeted linear layer of
    ``model``, making each a :class:`~adapters.methods.lora.LoRALinear` host first; the family's
    ``build_linear`` (see :mod:`adapters.methods.registry`) makes the module for each layer.

    Example::

        >>> add_weight_transform_modules(model, "loha", LoHaConfig(r=4), device, dtype)
        True
    """
    build = family(config.architecture).build_linear
    pairs, prefix = linear_hosts(model, config)
    for target, host in pairs:
        seed = config.init_weights_seed
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            adapter = build(config, host.in_features, host.out_features, target, prefix)
        host.add_adapter_module(name, adapter.to(device=device, dtype=dtype).train(model.training))
    if config.modules_to_save:
        add_saved_modules(model, name, config.modules_to_save)
    return bool(pairs) or bool(config.modules_to_save)


def register_weight_transform(name: str, title: str, build_linear, peft=None, **hooks):
    """Register a weight-transform family: hosted next to LoRA on linear layers, composing and
    merging like it (see the module docstring); ``hooks`` are further
    :class:`~adapters.methods.registry.MethodFamily` fields (``after_forward``, ``model_mixin``).
    Returns the family.

    Example::

        >>> register_weight_transform("hra", "HRA", HRA.build, peft=PeftMapping("HRA", ...))
    """
    return register(MethodFamily(
        name=name, title=title, blocks=LoRALinear.supported_blocks, add=add_weight_transform_modules,
        weight_delta=True, build_linear=build_linear, interface_method="lora", peft=peft,
        check_setup=check_saved_modules_in_setup, **hooks,
    ))


def lycoris_fields_from_peft(meta: dict) -> dict:
    """The fields LoHa and LoKr share (the LyCORIS family's), read from PEFT's config dict.

    Example::

        >>> lycoris_fields_from_peft({"r": 4, "alpha": 8})["alpha"]
        8
    """
    return dict(
        r=meta.get("r", 8), alpha=meta.get("alpha", 8), rank_dropout=meta.get("rank_dropout") or 0.0,
        module_dropout=meta.get("module_dropout") or 0.0, init_weights=meta.get("init_weights", True),
        rank_pattern=meta.get("rank_pattern") or {}, alpha_pattern=meta.get("alpha_pattern") or {},
    )


def lycoris_fields_to_peft(config) -> dict:
    """The fields LoHa and LoKr share, as PEFT's config writes them.

    Example::

        >>> lycoris_fields_to_peft(LoHaConfig(r=4))["r"]
        4
    """
    fields = {f: getattr(config, f) for f in ("r", "alpha", "rank_dropout", "module_dropout", "init_weights")}
    fields.update(rank_pattern=dict(config.rank_pattern), alpha_pattern=dict(config.alpha_pattern))
    return fields
