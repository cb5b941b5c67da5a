"""LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") and (IA)³ (Liu et
al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning") on linear layers.

A linear layer ``y = x Wᵀ + b`` gets, per adapter, either a low-rank additive update or a learned
output scaling:

    add   (LoRA):   y = x Wᵀ + b + s · dropout(x) Aᵀ Bᵀ,   A ∈ R^{r×d_in}, B ∈ R^{d_out×r},  s = α/r
    DoRA:           y = b + (m / ‖W + s·B A‖) ⊙ (x Wᵀ + s · dropout(x) Aᵀ Bᵀ),   m ∈ R^{d_out}
    scale ((IA)³):  y = (x Wᵀ + b) ⊙ (s · l),             l ∈ R^{d_out}
    input scale:    y = (x ⊙ s·l) Wᵀ + b,                 l ∈ R^{d_in}   (PEFT's feedforward_modules)

(``s = α/√r`` with rsLoRA; ``‖·‖`` is the norm of each output row, treated as a constant in the
backward pass as in the DoRA paper; an optional gate ``g = mean_t σ(x_t W_g)`` takes the place of
``s`` in the LoRA term, ``g·B A x`` (AdapterHub's UniPELT convention, so its checkpoints
reproduce); on (IA)³ it interpolates, ``1 + g·(s·l − 1)``.) All fold into the weight: ``W' = W + s·B A``, ``W' = (m/‖W + s·B A‖) ⊙ (W + s·B A)``,
``W' = diag(s·l) W, b' = s·l ⊙ b`` and ``W' = W diag(s·l)``. A merge computes ``W'`` out of place
and writes it only if it is finite and, when it is to be undone later, if the unmerge can restore
``W`` (no (IA)³ entry or DoRA magnitude of (nearly) 0 turning a weight entry into 0 or a subnormal
number); an unmerge writes only a finite result (see :meth:`LoRALinear.merge`).

**Host layouts.** The host is either an ``nn.Linear`` (weight stored ``(d_out, d_in)``) or
transformers' ``Conv1D`` (GPT-2; weight stored ``(d_in, d_out)``, forward ``x W + b``). All math
here uses the ``(d_out, d_in)`` view :attr:`LoRALinear.weight_out_in` (``Wᵀ`` for Conv1D, a view,
so merges write through it), and the adapter parameters have the same shapes on both hosts.

**Fused projections** (GPT-2's ``c_attn`` computes ``[q | k | v] = x W_qkv`` in one layer). An
adapter placed on some of the parts, e.g. AdapterHub's ``attn_matrices=["q", "v"]``, covers only
those output column ranges ``S_1 … S_g`` (``out_slices``, ``g`` groups of ``d`` columns each) and
learns one rank-``r`` update per part, as if the parts were separate projections::

    A = [A_1; …; A_g] ∈ R^{g·r×d_in},   B = [B_1; …; B_g] ∈ R^{g·d×r},   A_i ∈ R^{r×d_in}, B_i ∈ R^{d×r}
    y[..., S_i] = x W[S_i]ᵀ + b[S_i] + s · dropout(x) A_iᵀ B_iᵀ,   other columns unchanged

(AdapterHub's ``LoRAMergedLinear`` layout, so its GPT-2 checkpoints load as they are). ``B`` and
the DoRA magnitude have rows, (IA)³'s ``l`` has entries, only for the covered columns; the gate
has one output per group. Merging writes ``W[S_i] += s·B_i A_i`` into the covered rows only.
Without ``out_slices`` the adapter covers the whole output as one group (PEFT's semantics for a
fused module named in ``target_modules``).

A part need not be contiguous: GPT-NeoX's ``query_key_value`` interleaves the parts per head,
``[q_1 k_1 v_1 | q_2 k_2 v_2 | …]``, so its q part ``S_q`` is one run of ``d_head`` rows per head. Such
an entry of ``out_slices`` is a tuple of ranges; ``S_i`` is their union, in head order, and the
equations above hold as written.

Composition on one layer, with ``o`` the output so far:

* ``Stack(a, b)``: apply in order: ``o + Δ_a(x) + Δ_b(x)`` — deltas add on the same weight,
  ``W + ΔW_a + ΔW_b`` (the predecessor fed a's delta into b instead); scalings multiply.
* ``Average(a, b, weights)``: ``o + Σ_i w_i (o_i − o)``: the weighted mean of the deltas (for
  (IA)³, of the scaling vectors).
* ``Parallel`` / ``BatchSplit`` / ``Split``: batch rows / sequence positions go to their child.
* ``Fuse``: not defined for weight updates (an error on activation).

Adapters on different column ranges of one fused host compose the same way (each touches its own
columns; the engine does not care).

The host is the linear layer itself, swapped to a subclass with a ``loras`` ModuleDict, so
state-dict keys read ``...attention.self.query.loras.<name>.lora_A`` as in AdapterHub.

**Inference on many tokens.** A plain LoRA active alone, with no gradient recorded, may compute
``x (W + s·B A)ᵀ + b`` instead of ``x Wᵀ + b + s·(x Aᵀ) Bᵀ``: the same function, one matmul over
the tokens instead of three. Forming ``W + s·B A`` costs ``d_out·d_in·r`` multiply-adds and one
pass over the weight; the low-rank GEMMs cost ``tokens·(d_in + d_out)·r`` and passes over the input
and the output, and run at a fraction of BLAS speed (skinny shapes). The host folds when
``tokens·(d_in + d_out) ≥ 2.5·d_in·d_out`` (the host's ``_folds``); below that, and
always in training, it runs the low-rank path.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..composition import Average, BatchSplit, Parallel, Split, Stack
from ..configuration.lora import LoRAConfig
from ..context import ForwardContext
from ..errors import AdapterConfigError, AdapterMergeError
from ..hooks.engine import ComposableLayer, remove_host_mixin
from ..hooks.slices import check_slices, slices_index

__all__ = ["LoRA", "LoRAGroup", "LoRALinear", "LoRAState"]


class LoRAState(NamedTuple):
    """``layer_input`` x, ``output`` o (the layer output with the adapters applied so far),
    ``base_output`` (the layer output without adapters) and the last adapter applied."""

    layer_input: torch.Tensor
    output: torch.Tensor
    base_output: torch.Tensor
    last: str | None = None


class LoRA(nn.Module):
    """The parameters of one LoRA / (IA)³ adapter on one linear layer (see the module docstring).

    Args:
        in_features / out_features: the host layer's sizes (``out_features``: its whole output,
            also when the adapter covers only some columns).
        config: the :class:`~adapters.LoRAConfig`.
        r, alpha: rank and alpha for this layer (after ``rank_pattern`` / ``alpha_pattern``).
        base_weight: the host's weight in ``(out, in)`` layout (DoRA initialises its magnitude
            from the covered rows).
        scale_input: (IA)³ only: scale the layer input instead of its output.
        out_slices: ``((start, stop), ...)``: the output column ranges this adapter covers, one
            group of equal size each (a fused projection's parts); an entry may be a tuple of
            ranges (a part spread over the output, one range per head); None: the whole output.

    Example::

        >>> lora = LoRA(64, 64, LoRAConfig(), r=8, alpha=16)
        >>> lora.delta_weight().shape
        torch.Size([64, 64])
        >>> qv = LoRA(64, 192, LoRAConfig(), r=8, alpha=16, out_slices=((0, 64), (128, 192)))
        >>> qv.lora_A.shape, qv.lora_B.shape            # one rank-8 update per part
        (torch.Size([16, 64]), torch.Size([128, 8]))
    """

    #: LoRA runs as base output + delta (its single-adapter forward is the host's own)
    has_fast_path = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: LoRAConfig,
        r: int,
        alpha: float,
        base_weight: torch.Tensor | None = None,
        scale_input: bool = False,
        out_slices: tuple | None = None,
    ):
        super().__init__()
        self.composition_mode = config.composition_mode
        self.r = r
        self.scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        self.scale_input = scale_input and self.composition_mode == "scale"
        self.out_features = out_features
        self.out_slices = _check_slices(out_slices, out_features, self.scale_input)
        self.groups = len(self.out_slices) if self.out_slices else 1
        index = slices_index(self.out_slices)
        # the covered output columns (None: all); a buffer so it follows .to(device), never saved
        self.register_buffer("out_index", index, persistent=False)
        rows = out_features if index is None else len(index)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if self.composition_mode == "add":
            self.lora_A = nn.Parameter(torch.zeros(self.groups * r, in_features))
            self.lora_B = nn.Parameter(torch.zeros(rows, r))
        else:
            self.lora_B = nn.Parameter(torch.zeros(in_features if self.scale_input else rows, 1))
        if config.use_gating:
            self.gate = nn.Linear(in_features, self.groups)
            nn.init.normal_(self.gate.weight, std=0.02)
            nn.init.zeros_(self.gate.bias)
        self._init_weights(config.init_weights)
        if config.use_dora:
            if base_weight is None:
                raise ValueError("DoRA needs the base weight to initialise its magnitude.")
            covered = base_weight.detach() if index is None else base_weight.detach()[index.to(base_weight.device)]
            # m starts as the row norms of W, so the adapter starts as the identity
            self.lora_magnitude = nn.Parameter(torch.linalg.norm(covered.float(), dim=1).to(base_weight.dtype))

    @property
    def use_dora(self) -> bool:
        return "lora_magnitude" in self._parameters

    @property
    def needs_weight(self) -> bool:
        """Whether :meth:`apply_to` needs the host's weight (DoRA, input scaling)."""
        return self.use_dora or self.scale_input

    @torch.no_grad()
    def _init_weights(self, init) -> None:
        has_a = hasattr(self, "lora_A")
        if init == "lora" and has_a:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)
        elif init == "gaussian" and has_a:
            nn.init.normal_(self.lora_A, std=1.0 / self.r)
            nn.init.zeros_(self.lora_B)
        elif init == "bert":
            for param in (self.lora_A, self.lora_B) if has_a else (self.lora_B,):
                nn.init.normal_(param, std=0.02)
        elif init == "ia3" or not has_a and init in ("lora", "gaussian"):
            nn.init.ones_(self.lora_B)
        else:  # False: random, not the identity
            if has_a:
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))

    def _gate(self, x: torch.Tensor):
        """``mean_t σ(x_t W_g)``: one value per group (per sequence for 3-d inputs), or None."""
        if not hasattr(self, "gate"):
            return None
        gate = torch.sigmoid(self.gate(x))
        return gate.mean(dim=1, keepdim=True) if gate.dim() == 3 else gate

    def _per_column(self, gate: torch.Tensor) -> torch.Tensor:
        """A per-group gate repeated over the group's output columns."""
        if self.groups == 1:
            return gate
        return gate.repeat_interleave(self.lora_B.shape[0] // self.groups, dim=-1)

    @property
    def is_plain(self) -> bool:
        """A LoRA over the whole output without gate or DoRA: ``output + s·x Aᵀ Bᵀ`` and nothing else."""
        return (
            self.composition_mode == "add" and self.out_index is None and not self.use_dora and not hasattr(self, "gate")
        )

    def add_delta(self, x: torch.Tensor, output: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """``output + s·dropout(x) Aᵀ Bᵀ`` for a plain LoRA: two small GEMMs and no extra pass over
        ``output``, written into it when ``in_place`` (see :func:`accumulate_low_rank`)."""
        return accumulate_low_rank(output, self.dropout(x), self.lora_A, self.lora_B, self.scaling, in_place)

    def folded_into(self, weight: torch.Tensor) -> torch.Tensor:
        """``W + s·B A`` for a plain LoRA: ``weight`` (``(out, in)``) with this adapter's update
        added, in one ``addmm`` (a new tensor; ``weight`` is unchanged)."""
        dtype = weight.dtype
        return torch.addmm(weight, self.lora_B.to(dtype), self.lora_A.to(dtype), alpha=self.scaling)

    def scale_vector(self) -> torch.Tensor:
        """(IA)³'s ``s·l`` as a vector (``l`` itself when ``s = 1``, saving a multiplication)."""
        vector = self.lora_B.view(-1)
        return vector if self.scaling == 1 else vector * self.scaling

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """``dropout(x) A_iᵀ B_iᵀ`` for every group ``i``, concatenated (unscaled)."""
        hidden = self.dropout(x) @ self.lora_A.t()
        if self.groups == 1:
            return hidden @ self.lora_B.t()
        blocks = self.lora_B.unflatten(0, (self.groups, -1))  # (g, d, r)
        return torch.einsum("...gr,gdr->...gd", hidden.unflatten(-1, (self.groups, self.r)), blocks).flatten(-2)

    def apply_to(
        self,
        x: torch.Tensor,
        output: torch.Tensor,
        base_output: torch.Tensor,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The covered columns of the layer output, ``output``, with this adapter applied.

        ``base_output`` holds the same columns without any adapter (DoRA rescales them);
        ``weight`` (``(out, in)`` layout) and ``bias`` are the host's covered rows, needed only
        when :attr:`needs_weight`.
        """
        gate = self._gate(x)
        if gate is None and self.is_plain:
            return self.add_delta(x, output)
        if gate is not None:
            gate = self._per_column(gate)
        if self.composition_mode == "scale":
            factor = self.scale_vector()
            if gate is not None:
                factor = 1 + gate * (factor - 1)
            if self.scale_input:  # (x ⊙ f) Wᵀ = x Wᵀ + (x ⊙ (f − 1)) Wᵀ
                return output + nn.functional.linear(x * (factor - 1), weight)
            return output * factor
        delta = self.lora_delta(x)
        delta = delta * self.scaling if gate is None else delta * gate
        if self.use_dora:
            magnitude_scale = self.lora_magnitude / self.weight_norm(weight)
            unbiased = base_output if bias is None else base_output - bias
            return output + (magnitude_scale - 1) * unbiased + magnitude_scale * delta
        return output + delta

    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """``‖W + s·B A‖`` per covered output row (``weight``: the covered rows), detached (DoRA)."""
        with torch.no_grad():
            return torch.linalg.norm(weight + self.delta_weight().to(weight.dtype), dim=1)

    def delta_weight(self) -> torch.Tensor:
        """``s·B A`` for the covered rows, ``(rows, in)`` (per group: ``s·B_i A_i``, stacked), or
        the scaling vector ``s·l`` (scale)."""
        if self.composition_mode == "scale":
            return self.lora_B.view(-1) * self.scaling
        if self.groups == 1:
            return (self.lora_B @ self.lora_A) * self.scaling
        blocks_b = self.lora_B.unflatten(0, (self.groups, -1))  # (g, d, r)
        blocks_a = self.lora_A.unflatten(0, (self.groups, self.r))  # (g, r, in)
        return torch.bmm(blocks_b, blocks_a).flatten(0, 1) * self.scaling

    def dense_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B')`` of an equivalent plain LoRA over the host's whole output (add mode):
        ``s·B' A`` is this adapter's full ``(out, in)`` delta, with ``B' ∈ R^{out×g·r}`` holding
        ``B_i`` in the rows of part ``i`` and columns ``i·r … (i+1)·r``, zeros elsewhere.

        For writing a sliced adapter where only whole-module LoRAs exist (PEFT: rank ``g·r``).
        """
        if self.composition_mode != "add":
            raise ValueError("dense_factors is defined for LoRA ('add') adapters.")
        if self.out_index is None:
            return self.lora_A, self.lora_B
        dense = self.lora_B.new_zeros(self.out_features, self.groups * self.r)
        rows = self.lora_B.shape[0] // self.groups
        for i in range(self.groups):
            part = self.out_index[i * rows : (i + 1) * rows]
            dense[part, i * self.r : (i + 1) * self.r] = self.lora_B[i * rows : (i + 1) * rows]
        return self.lora_A, dense

    def group_views(self) -> list[LoRAGroup]:
        """Each group of this adapter as a plain LoRA: ``lora_A`` / ``lora_B`` are views of this
        adapter's rows for part ``i`` (``A_i``, ``B_i``; for (IA)³ ``A`` is None and ``B`` the part of
        ``l``), so code written for one-group LoRAs (combining, refitting) can run group by group
        and write through them.

        Example::

            >>> a, b = host.loras["a"].group_views(), host.loras["b"].group_views()
            >>> [pa.delta_weight() + pb.delta_weight() for pa, pb in zip(a, b)]  # per part of c_attn
        """
        lora_A = getattr(self, "lora_A", None)
        blocks_a = [None] * self.groups if lora_A is None else list(lora_A.unflatten(0, (self.groups, -1)))
        blocks_b = list(self.lora_B.unflatten(0, (self.groups, -1)))
        return [LoRAGroup(a, b, self.scaling, self.r, self.composition_mode) for a, b in zip(blocks_a, blocks_b)]

    def extra_repr(self) -> str:
        return f"out_slices={list(self.out_slices)}" if self.out_slices else ""


class LoRAGroup(NamedTuple):
    """One group of a :class:`LoRA` as a plain LoRA (views of its parameters)."""

    lora_A: torch.Tensor | None
    lora_B: torch.Tensor
    scaling: float
    r: int
    composition_mode: str

    def delta_weight(self) -> torch.Tensor:
        """``s·B_i A_i`` or the scaling vector ``s·l_i``."""
        if self.composition_mode == "scale":
            return self.lora_B.view(-1) * self.scaling
        return (self.lora_B @ self.lora_A) * self.scaling


def accumulate_low_rank(
    output: torch.Tensor, x: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float, in_place: bool = False
) -> torch.Tensor:
    """``output + scaling · x Aᵀ Bᵀ``; with ``in_place`` written into ``output``, which must then
    be a fresh tensor nothing else holds (the base layer's result in a single-adapter pass).

    Two GEMMs and no extra pass over ``output``: ``A xᵀ`` (``r × tokens``) first, because the
    tall-skinny ``x Aᵀ`` (``tokens × r``) runs at a fraction of the speed on CPU BLAS (measured:
    87 µs against 133 µs for 512 tokens, d = 384, r = 8), then ``addmm`` accumulates
    ``s · (A xᵀ)ᵀ Bᵀ`` onto ``output``, in place where allowed and no gradient is recorded.

    Example::

        >>> accumulate_low_rank(x @ W.t(), x, A, B, 2.0)   # == x Wᵀ + 2 x Aᵀ Bᵀ
    """
    hidden_t = torch.mm(lora_A, x.reshape(-1, x.shape[-1]).t())
    # recorded by autograd, an in-place update of the output's 2-D view makes the backward pass
    # copy the whole output through a CopySlices node (measured: the LoRA share of a train step
    # grows by half), so training takes the out-of-place form
    if not (in_place and output.is_contiguous() and not torch.is_grad_enabled()):
        flat = output.reshape(-1, output.shape[-1])
        return torch.addmm(flat, hidden_t.t(), lora_B.t(), alpha=scaling).view(output.shape)
    output.view(-1, output.shape[-1]).addmm_(hidden_t.t(), lora_B.t(), alpha=scaling)
    return output


def _check_slices(out_slices, out_features: int, scale_input: bool):
    """:func:`~adapters.hooks.slices.check_slices`, refusing (IA)³ input scaling on part of a layer."""
    if not out_slices:
        return None
    if scale_input:
        raise AdapterConfigError(
            f"(IA)³ input scaling (feedforward_modules) acts on the whole layer input, so it cannot cover only the "
            f"output columns {list(out_slices)} of a fused projection; leave that module out of feedforward_modules or "
            f"adapt the whole module."
        )
    return check_slices(out_slices, out_features)


class LoRALinear(ComposableLayer):
    """Mixin for a linear layer that hosts LoRA / (IA)³ adapters (swapped in by class): an
    ``nn.Linear`` or transformers' ``Conv1D``, whose weight is stored transposed; the mixin reads
    sizes and weight through the ``(out, in)`` view :attr:`weight_out_in` on both.

    Example::

        >>> query = model.encoder.layer[0].attention.self.query
        >>> query.loras["a"].lora_A.shape
        torch.Size([8, 32])
    """

    method = "lora"
    supported_blocks = (Stack, Parallel, Split, BatchSplit, Average)
    BATCH_FIELDS = ("layer_input", "output", "base_output")
    SEQUENCE_FIELDS = ("layer_input", "output", "base_output")

    def init_adapter_layer(self, layer_idx: int, location: str) -> None:
        self._init_composable(layer_idx, location)
        self.loras = nn.ModuleDict()
        self.__dict__["merged"] = []  # names merged into the weight, in order

    # -- the host's weight, whatever its storage layout -------------------------------------------
    @property
    def fan_in_fan_out(self) -> bool:
        """Whether the weight is stored ``(in, out)`` (transformers' ``Conv1D``)."""
        return isinstance(self, Conv1D)

    @property
    def weight_out_in(self) -> torch.Tensor:
        """The weight as ``(out, in)`` (a view: in-place writes reach the parameter)."""
        return self.weight.t() if self.fan_in_fan_out else self.weight

    @property
    def in_features(self) -> int:
        return self.weight_out_in.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight_out_in.shape[0]

    def _covered(self, lora: LoRA) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``(out, in)`` weight rows and bias entries ``lora`` covers (copies when sliced)."""
        weight, bias = self.weight_out_in, self.bias
        if lora.out_index is None:
            return weight, bias
        return weight[lora.out_index], None if bias is None else bias[lora.out_index]

    def _write_covered(self, lora: LoRA, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        target = self.weight_out_in
        if lora.out_index is None:
            target.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)
        else:
            target[lora.out_index] = weight
            if bias is not None:
                self.bias[lora.out_index] = bias

    # -- adapters ----------------------------------------------------------------------------------
    def adapter_names(self) -> set[str]:
        return set(self.loras.keys()) - set(self.merged)

    @property
    def adapters(self) -> nn.ModuleDict:
        """The adapters of this host (the common name used by the model API)."""
        return self.loras

    def add_lora(
        self, name: str, config: LoRAConfig, r: int, alpha: float, scale_input: bool = False, out_slices=None
    ) -> None:
        """Add adapter ``name``; ``out_slices`` restricts it to some output column ranges (the
        parts of a fused projection, see the module docstring)."""
        with torch.random.fork_rng(enabled=config.init_weights_seed is not None):
            if config.init_weights_seed is not None:
                torch.manual_seed(config.init_weights_seed)
            self.loras[name] = LoRA(
                self.in_features, self.out_features, config, r, alpha, self.weight_out_in, scale_input, out_slices
            )
        self._invalidate_setup_cache()

    def add_weight_transform(self, name: str, adapter: nn.Module) -> None:
        """Add a weight-transform adapter (LoHa, LoKr, OFT, HRA, AdaLoRA; see
        :mod:`adapters.methods.weight_transform`) next to any LoRA adapters of this layer."""
        self.loras[name] = adapter
        self._invalidate_setup_cache()

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's own forward, without adapters."""
        return super().forward(x)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged:
            self.unmerge(name)
        if name in self.loras:
            del self.loras[name]
            self._invalidate_setup_cache()

    def is_empty(self) -> bool:
        """Whether this layer hosts no adapter and has none merged (then :meth:`uninstall` may run).

        Example::

            >>> query.is_empty()
            False
        """
        return not len(self.loras) and not self.merged

    def uninstall(self) -> None:
        """Make this layer the plain linear layer it was before it hosted adapters: remove the
        ``loras`` container and the class swap (other swaps of the module stay). Only for an empty
        host (:meth:`is_empty`); the model removes it from its hosts.

        Example::

            >>> query.uninstall()
            >>> type(query).__name__
            'Linear'
        """
        if not self.is_empty():
            raise RuntimeError(f"Cannot uninstall a LoRA host that still has adapters: {sorted(self.loras)}.")
        self.__dict__.pop("merged", None)
        remove_host_mixin(self, LoRALinear, containers=("loras",))

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        setup = self.active_setup()
        if setup is None:
            return super().forward(x)
        if isinstance(setup, str):  # one adapter: the common case, without the composition engine
            lora = self.loras[setup]
            if lora.is_plain:
                if self._folds(x, lora):
                    return nn.functional.linear(x, lora.folded_into(self.weight_out_in), self.bias)
                return lora.add_delta(x, super().forward(x), in_place=True)  # a fresh output
            if lora.scale_input:  # one input scaling: fold into x
                gate = lora._gate(x)
                factor = lora.scale_vector() if gate is None else 1 + gate * (lora.scale_vector() - 1)
                return super().forward(x * factor)
            if lora.composition_mode == "scale" and not hasattr(lora, "gate") and lora.out_index is None:
                output = super().forward(x)  # a fresh tensor; scaled in place unless autograd needs it as it is
                return output.mul_(lora.scale_vector()) if not torch.is_grad_enabled() else output * lora.scale_vector()
            if lora.has_fast_path and not self.merged and lora.out_index is None:
                return lora.forward_single(self, x)  # a weight transform alone: one pass where it can
        output = super().forward(x)
        return self.compose(setup, LoRAState(x, output, output)).output

    _FOLD_RATIO = 2.5
    # the forwards that are the plain affine map, so a folded weight may stand in for them; a
    # subclass with its own forward (a quantised linear, say) always runs it
    _AFFINE_FORWARDS = (nn.Linear.forward, Conv1D.forward)

    def _folds(self, x: torch.Tensor, lora: LoRA) -> bool:
        """Whether the plain ``lora``, active alone, runs as one matmul with ``W + s·B A`` on ``x``
        (see the module docstring): no gradient recorded (training keeps the low-rank path, whose
        backward never forms ``d_out × d_in`` gradients), no active dropout, a float32/64 weight
        (in half precision ``W + s·B A`` would round the small update to the weight's precision),
        and ``tokens·(d_in + d_out) ≥ 2.5·d_in·d_out``. Measured on CPU, 2 threads, float32, over
        the base layer's ~1 ms: 512 tokens, 384×384 (ratio 2.67): folded within ±60 µs of the
        base, low-rank +76 to +180 µs; at a ratio of 2 (2048×2048, 2048 tokens) folding loses,
        +12 to +15 ms against +1.5 to +4.4 ms (the new weight no longer fits the caches)."""
        if torch.is_grad_enabled() or self.__dict__["_adapters_original_class"].forward not in self._AFFINE_FORWARDS:
            return False
        if x.dtype not in (torch.float32, torch.float64) or (isinstance(lora.dropout, nn.Dropout) and lora.dropout.training):
            return False
        d_out, d_in = self.weight_out_in.shape
        tokens = x.numel() // d_in
        return tokens * (d_in + d_out) >= self._FOLD_RATIO * d_in * d_out

    def compose_single(self, name: str, state: LoRAState) -> LoRAState:
        lora = self.loras[name]
        if lora.composition_mode == "transform":
            weight, bias = (self._reference_covered(lora), None) if lora.needs_weight else (None, None)
        else:
            weight, bias = self._covered(lora) if lora.needs_weight else (None, None)
        if lora.out_index is None:
            output = lora.apply_to(state.layer_input, state.output, state.base_output, weight, bias)
        else:  # a fused projection's parts: apply on the covered columns, leave the others
            dim, index = state.output.dim() - 1, lora.out_index
            covered = lora.apply_to(
                state.layer_input, state.output.index_select(dim, index), state.base_output.index_select(dim, index), weight, bias
            )
            output = state.output.index_copy(dim, index, covered)
        context = ForwardContext.get_context() if hasattr(lora, "gate") else None
        if context is not None and context.output_adapter_gating_scores:
            scores = context.adapter_gating_scores.setdefault(name, {}).setdefault(self.layer_idx, {})
            scores[self.location] = lora._gate(state.layer_input).detach()
        return state._replace(output=output, last=name)

    def mean(self, states, weights, start: LoRAState) -> LoRAState:
        output = start.output
        for state, weight in zip(states, weights):
            output = output + weight * (state.output - start.output)
        return states[-1]._replace(output=output)

    # -- merging ---------------------------------------------------------------------------------
    def _reference_covered(self, adapter) -> torch.Tensor:
        """The covered ``(out, in)`` rows of the *reference* weight the weight transforms act on:
        the stored weight minus the additive updates merged into it (see
        :mod:`adapters.methods.weight_transform`); the stored weight itself when nothing is merged."""
        weight = self.weight_out_in
        if self.merged:
            weight = weight.detach().clone()
            for name in self.merged:
                merged = self.loras[name]
                if merged.composition_mode == "transform":
                    delta = merged.__dict__["_merged_delta"]
                elif merged.composition_mode == "add" and not merged.use_dora:
                    delta = merged.delta_weight()
                else:
                    continue  # merged (IA)³ scalings and DoRA count as part of the reference weight
                if merged.out_index is None:
                    weight -= delta.to(weight.dtype)
                else:
                    weight[merged.out_index] -= delta.to(weight.dtype)
        return weight if adapter.out_index is None else weight[adapter.out_index]

    def _merged_covered(self, lora: LoRA) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The covered ``(out, in)`` rows and bias entries with ``lora`` folded in (out of place)."""
        if lora.composition_mode == "transform":
            weight, bias = self._covered(lora)
            delta = lora.__dict__.get("_merged_delta")
            if delta is None:
                delta = self._transform_delta(lora)
            return weight + delta.to(weight.dtype), bias
        weight, bias = self._covered(lora)
        delta = lora.delta_weight().to(weight.dtype)
        if lora.composition_mode == "scale":
            if lora.scale_input:
                return weight * delta.unsqueeze(0), bias
            return weight * delta.unsqueeze(1), None if bias is None else bias * delta
        if lora.use_dora:
            combined = weight + delta
            return (lora.lora_magnitude / torch.linalg.norm(combined, dim=1)).unsqueeze(1) * combined, bias
        return weight + delta, bias

    def _transform_delta(self, adapter) -> torch.Tensor:
        """A weight transform's ``ΔW`` on the reference weight, without dropout (a merged weight
        has none)."""
        reference = self._reference_covered(adapter) if adapter.needs_weight else None
        was_training = adapter.training
        adapter.eval()
        try:
            return adapter.delta_weight(reference)
        finally:
            adapter.train(was_training)

    @torch.no_grad()
    def merged_weight(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W', b')``: the weight and bias with adapter ``name`` folded in, computed out of place,
        ``W'`` in the host's own storage layout (``(in, out)`` for Conv1D), so that
        ``host.weight.copy_(W')`` merges."""
        lora = self.loras[name]
        weight, bias = self._merged_covered(lora)
        if lora.out_index is not None:
            weight = self.weight_out_in.index_copy(0, lora.out_index, weight)
            bias = None if bias is None else self.bias.index_copy(0, lora.out_index, bias)
        return (weight.t() if self.fan_in_fan_out else weight), bias

    def _check_float_weight(self, name: str, action: str) -> None:
        if not self.weight.is_floating_point():
            raise merge_error(
                name, action,
                f"the layer's weight is {self.weight.dtype} (quantized or integer), which cannot hold the merged "
                f"weight; keep the adapter unmerged, or dequantize the layer first",
            )

    @torch.no_grad()
    def merge(self, name: str, undoable: bool = True) -> None:
        """Fold adapter ``name`` into the weight (and bias, for output-scaling (IA)³).

        The merged weight and bias are computed out of place and checked before anything is written:
        they must be finite, and with ``undoable`` (``merge_adapter``, which :meth:`unmerge` undoes)
        a scaling merge ((IA)³, DoRA) must not turn a non-zero entry into 0 or a subnormal number,
        which the division of the unmerge could not give back (a scaling entry (nearly) 0). A merge
        that fails a check raises :class:`~adapters.errors.AdapterMergeError` and writes nothing.
        """
        lora = self.loras[name]
        self._check_float_weight(name, "merge")
        extras = {}
        if lora.use_dora:  # unmerging needs the norm the merge divided by
            extras["_merged_norm"] = lora.weight_norm(self._covered(lora)[0])
        if lora.composition_mode == "transform":  # kept for an exact unmerge and for the reference weight
            extras["_merged_delta"] = self._transform_delta(lora).detach()
        lora.__dict__.update(extras)
        try:
            old_weight, old_bias = self._covered(lora)
            weight, bias = self._merged_covered(lora)
            _check_finite(name, lora, "merge", weight, bias)
            if undoable and (lora.composition_mode == "scale" or lora.use_dora):
                _check_invertible(name, lora, old_weight, old_bias, weight, bias)
        except BaseException:
            for key in extras:
                lora.__dict__.pop(key, None)
            raise
        self._write_covered(lora, weight, bias)
        self.merged.append(name)
        self._invalidate_setup_cache()

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        """Take adapter ``name`` out of the weight again.

        The restored weight and bias are computed out of place and must be finite before they are
        written (:class:`~adapters.errors.AdapterMergeError` otherwise, nothing written: e.g. an
        adapter whose parameters were changed to NaN, or an (IA)³ entry set to 0, after the merge).
        """
        lora = self.loras[name]
        self._check_float_weight(name, "unmerge")
        weight, bias = self._covered(lora)
        if lora.composition_mode == "transform":
            weight = weight - lora.__dict__["_merged_delta"].to(weight.dtype)
        else:
            delta = lora.delta_weight().to(weight.dtype)
            if lora.composition_mode == "scale":
                if lora.scale_input:
                    weight = weight / delta.unsqueeze(0)
                else:
                    weight = weight / delta.unsqueeze(1)
                    bias = None if bias is None else bias / delta
            elif lora.use_dora:
                norm = lora.__dict__["_merged_norm"]
                weight = weight * (norm / lora.lora_magnitude).unsqueeze(1) - delta
            else:
                weight = weight - delta
        _check_finite(name, lora, "unmerge", weight, bias)
        self._write_covered(lora, weight, bias)
        lora.__dict__.pop("_merged_delta", None)
        lora.__dict__.pop("_merged_norm", None)
        self.merged.remove(name)
        self._invalidate_setup_cache()


def merge_error(name: str, action: str, detail: str) -> AdapterMergeError:
    """An :class:`AdapterMergeError` for adapter ``name`` (``action``: "merge" or "unmerge"); the model
    API adds the module's path (it keeps ``adapter``, ``action`` and ``detail`` as attributes).

    Example::

        >>> raise merge_error("a", "merge", "its weight would hold NaN/inf")
        Traceback (most recent call last):
        adapters.errors.AdapterMergeError: cannot merge adapter 'a': its weight would hold NaN/inf
    """
    error = AdapterMergeError(f"cannot {action} adapter {name!r}: {detail}")
    error.adapter, error.action, error.detail = name, action, detail
    return error


def _check_finite(name: str, adapter: nn.Module, action: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Raise :class:`AdapterMergeError` if the weight or bias a merge / unmerge would write is not finite."""
    for parameter, tensor in (("weight", weight), ("bias", bias)):
        if tensor is None or bool(torch.isfinite(tensor).all()):
            continue
        bad = [n for n, p in adapter.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
        if bad:
            cause = f"the adapter's {bad[0]} holds NaN/inf; train or load finite weights first"
        elif action == "unmerge":
            cause = "the adapter divides by a (nearly) zero scaling, or its parameters changed since it was merged"
        else:
            cause = f"the result overflows {tensor.dtype}"
        raise merge_error(name, action, f"its {parameter} would hold NaN/inf ({cause})")


def _check_invertible(name, adapter, old_weight, old_bias, weight, bias) -> None:
    """Raise :class:`AdapterMergeError` if a scaling merge turns a non-zero entry into 0 or a subnormal
    number: the unmerge divides by the scaling and could not restore it."""
    for parameter, old, new in (("weight", old_weight, weight), ("bias", old_bias, bias)):
        if old is None or new is None:
            continue
        lost = (old != 0) & (new.abs() < torch.finfo(new.dtype).tiny)
        count = int(lost.sum())
        if count:
            factor = "(IA)³ scaling vector" if adapter.composition_mode == "scale" else "DoRA magnitude"
            raise merge_error(
                name, "merge",
                f"{count} non-zero entr{'y' if count == 1 else 'ies'} of its {parameter} would become 0 (or too small "
                f"to divide back): the adapter's {factor} is (nearly) 0 there, so reset_adapter() could not restore "
                f"the weight. Use merge_and_unload(), which needs no unmerge, or run the adapter unmerged",
            )
