"""What the weight-transform methods (LoHa, LoKr, OFT, HRA, AdaLoRA) share on a linear layer.

Every adapter ``i`` of these methods defines an effective weight ``W_i`` from the layer's weight
``W`` (``(d_out, d_in)``): ``W + ΔW_i`` for the additive ones (LoHa, LoKr, AdaLoRA), ``W Rᵢᵀ``
for OFT and ``W H_i`` for HRA. Its *delta* is ``ΔW_i(W) = W_i − W``; for the rotations it depends
on ``W``. The adapters live in the same ``loras`` ModuleDict of the same host
(:class:`~adapters.methods.lora.LoRALinear`) as LoRA / (IA)³, so one linear layer can carry
adapters of several methods at once, and they compose like LoRA adapters do:

* ``Stack(a, b, ...)``: ``W + Σ_i ΔW_i(W)`` — deltas add (for a single adapter this is exactly
  its own effective weight);
* ``Average(a, b, weights)``: ``W + Σ_i w_i ΔW_i(W)``;
* ``Parallel`` / ``BatchSplit`` / ``Split``: each slice of the batch / sequence uses its child.

``W`` here is the layer's *reference* weight: its stored weight minus the additive updates
merged into it (LoRA, LoHa, LoKr, AdaLoRA and the merged rotation deltas), so merging any of the
adapters of a Stack, in any order, gives the output the unmerged Stack computes. Merged (IA)³
scalings and DoRA count as part of the reference weight.

Efficient forward. An adapter active on its own computes the layer in one pass where it can:
LoHa folds ``ΔW`` into the weight of a single matmul, LoKr applies the Kronecker product to the
input (``(A ⊗ B) x = vec(A X Bᵀ)``, never forming ``ΔW``), OFT and HRA rotate the input and run
the layer on it (PEFT's way for OFT; HRA via the compact WY form of its reflections). In a
composition each adapter contributes its output delta ``x ΔW_iᵀ``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

__all__ = ["WeightTransform"]


class WeightTransform(nn.Module):
    """Base of one weight-transform adapter on one linear layer (the host calls the methods below).

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
    # the fields the host reads from every adapter in its ``loras`` dict
    composition_mode: ClassVar[str] = "transform"
    scale_input: ClassVar[bool] = False
    use_dora: ClassVar[bool] = False
    is_plain: ClassVar[bool] = False  # not a plain LoRA (the host's LoRA shortcut)
    #: whether the delta depends on the layer's weight (rotations)
    needs_weight: ClassVar[bool] = False
    #: whether :meth:`forward_single` computes the layer faster than base + delta
    has_fast_path: ClassVar[bool] = True

    def __init__(self, in_features: int, out_features: int, out_slices=None, module_dropout: float = 0.0):
        super().__init__()
        from ..hooks.slices import check_slices, slices_index

        self.in_features = in_features
        self.out_features = out_features
        self.out_slices = check_slices(out_slices, out_features)
        index = slices_index(self.out_slices)
        self.register_buffer("out_index", index, persistent=False)
        #: the number of output rows the adapter covers
        self.rows = out_features if index is None else len(index)
        self.module_dropout = module_dropout

    def skipped(self) -> bool:
        """Module dropout: whether this forward pass leaves the adapter out (training only)."""
        return self.training and self.module_dropout > 0 and bool(torch.rand(()) < self.module_dropout)

    def delta_weight(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``ΔW`` over the covered rows, ``(rows, d_in)``; ``weight`` is the layer's covered
        reference rows (used by the rotations)."""
        raise NotImplementedError

    def delta_output(self, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """``x ΔWᵀ`` over the covered columns (without module dropout)."""
        raise NotImplementedError

    def apply_to(self, x, output, base_output, weight=None, bias=None) -> torch.Tensor:
        """The covered columns ``output`` with this adapter's delta added (the host's protocol)."""
        if self.skipped():
            return output
        return output + self.delta_output(x, weight)

    def forward_single(self, host, x: torch.Tensor) -> torch.Tensor:
        """The host's output with only this adapter active and nothing merged."""
        result = host.base_forward(x)
        if self.skipped():
            return result
        return result + self.delta_output(x, host.weight_out_in if self.needs_weight else None)

    @staticmethod
    def _row_dropout(rows: int, p: float, rescale: bool, reference: torch.Tensor) -> torch.Tensor:
        """A keep-mask over output rows (``1``: kept), divided by its mean with ``rescale``."""
        keep = (torch.rand(rows, device=reference.device) > p).to(reference.dtype)
        if rescale:
            keep = keep / keep.mean().clamp_min(1.0 / rows)
        return keep


def _build(config, in_features: int, out_features: int, target, path_prefix: str):
    """The adapter module ``config`` places on ``target`` (a :class:`~adapters.hooks.targeting.Target`)."""
    from ..hooks.targeting import pattern_value
    from .adalora import AdaLoRA
    from .hra import HRA
    from .loha import LoHa
    from .lokr import LoKr
    from .oft import OFT

    method, slices = config.architecture, target.out_slices
    if method in ("loha", "lokr"):
        r = pattern_value(config.rank_pattern, path_prefix + target.path, config.r)
        alpha = pattern_value(config.alpha_pattern, path_prefix + target.path, config.alpha)
        return (LoHa if method == "loha" else LoKr)(in_features, out_features, config, r, alpha, slices)
    if method == "oft":
        return OFT(in_features, out_features, config, slices)
    if method == "hra":
        return HRA(in_features, out_features, config, config.r, slices)
    r = config.init_r
    for key, mask in (config.rank_pattern or {}).items():  # PEFT's saved allocation: the kept triplets
        module = key.replace(".default", "").removesuffix(".lora_E")
        if module in (target.path, path_prefix + target.path) or module.endswith("." + target.path):
            r = sum(bool(m) for m in mask)
    return AdaLoRA(in_features, out_features, config, r, slices)


def add_weight_transform_modules(model, name: str, config, device, dtype) -> None:
    """Attach adapter ``name`` of a weight-transform ``config`` to every targeted linear layer of
    ``model``, making each a :class:`~adapters.methods.lora.LoRALinear` host first.

    Example::

        >>> add_weight_transform_modules(model, "loha", LoHaConfig(r=4), device, dtype)
    """
    pairs, prefix = model._linear_hosts(config)
    for target, host in pairs:
        seed = config.init_weights_seed
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            adapter = _build(config, host.in_features, host.out_features, target, prefix)
        host.add_weight_transform(name, adapter.to(device=device, dtype=dtype).train(model.training))
