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
number); an unmerge writes only a finite result (see :meth:`LinearHost.merge`).

**Host layouts.** The host is either an ``nn.Linear`` (weight stored ``(d_out, d_in)``) or
transformers' ``Conv1D`` (GPT-2; weight stored ``(d_in, d_out)``, forward ``x W + b``). All math
here uses the ``(d_out, d_in)`` view :attr:`LinearHost.weight_out_in` (``Wᵀ`` for Conv1D, a view,
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

The host (:class:`LinearHost`) is the linear layer itself, swapped to a subclass with a ``loras``
ModuleDict, so state-dict keys read ``...attention.self.query.loras.<name>.lora_A`` as in
AdapterHub. It carries LoRA, (IA)³ and the weight transforms side by side and drives each through
one protocol, :class:`LinearAdapter` (apply to the output, run alone, merge into and out of the
weight); it never asks which method an adapter is.

**Inference on many tokens.** A plain LoRA active alone, with no gradient recorded, may compute
``x (W + s·B A)ᵀ + b`` instead of ``x Wᵀ + b + s·(x Aᵀ) Bᵀ``: the same function, one matmul over
the tokens instead of three. Forming ``W + s·B A`` costs ``d_out·d_in·r`` multiply-adds and one
pass over the weight; the low-rank GEMMs cost ``tokens·(d_in + d_out)·r`` and passes over the input
and the output, and run at a fraction of BLAS speed (skinny shapes). The host folds when
``tokens·(d_in + d_out) ≥ 2.5·d_in·d_out`` (:meth:`LinearHost.folds`); below that, and
always in training, it runs the low-rank path.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar, NamedTuple

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..composition import Average, BatchSplit, MultiTask, Parallel, Split, Stack
from ..configuration.lora import LoftQConfig, LoRAConfig
from ..context import ForwardContext
from ..errors import AdapterConfigError, AdapterMergeError
from ..hooks.engine import ComposableLayer, remove_host_mixin
from ..hooks.patching import swap_class
from ..hooks.slices import check_slices, slices_index
from ..hooks.targeting import OWN_MODULES, matches_modules, pattern_value, resolve_targets
from .. import logging
from .base import in_dtype, parameter_dtype
from ..hooks.quantized_layers import keep_input_gradient
from .loftq import checkpoint_weight, loftq_factors, residual_factors
from .quantized import QuantizedMerge, quantization_of
from .registry import MethodFamily, PeftMapping, register
from .saved_modules import SavedModuleHost, add_saved_modules, check_saved_modules_in_setup

logger = logging.get_logger(__name__)

__all__ = [
    "LinearAdapter", "LinearHost", "LoRALayer", "LoRA", "IA3", "LoRAGroup", "LoRALinear", "LoRAState", "lora_module_class",
    "linear_hosts", "add_lora_modules", "adapter_dtype_at", "lora_bias_parameters", "magnitudes_to_adapterhub", "magnitudes_from_adapterhub",
]


class LoRAState(NamedTuple):
    """``layer_input`` x, ``output`` o (the layer output with the adapters applied so far),
    ``base_output`` (the layer output without adapters) and the last adapter applied."""

    layer_input: torch.Tensor
    output: torch.Tensor
    base_output: torch.Tensor
    last: str | None = None


# -- the protocol of an adapter on a linear layer --------------------------------------------------


class LinearAdapter(nn.Module):
    """What every adapter on a linear layer provides to its :class:`LinearHost`: LoRA and (IA)³
    (this module) and the weight transforms (:class:`~adapters.methods.weight_transform.WeightTransform`:
    LoHa, LoKr, OFT, HRA, AdaLoRA) all implement it, so one host carries adapters of every one of
    these methods and never asks which method an adapter is.

    An adapter covers the output columns ``out_index`` of its layer (None: all of them; some parts
    of a fused projection otherwise, see the module docstring) and provides

    * :meth:`apply_to`: the covered columns of the layer output with the adapter applied (its step
      in a composition);
    * :meth:`forward_alone`: the whole layer with only this adapter active, where the adapter has
      a faster way than base output + :meth:`apply_to` (None otherwise);
    * :meth:`merge_record`, :meth:`merge_into`, :meth:`unmerge_from`: how it folds into the weight
      and out again; :meth:`delta_in_weight`: the additive change a merge left in the weight;
    * :attr:`merge_factor` / :attr:`additive`: whether a merge adds ``ΔW`` or multiplies the weight;
    * :attr:`gated` / :meth:`gate_value`: a gate computed from the input, reported when asked for.

    What an adapter may ask its host: ``host.covered(adapter)`` (the stored weight's covered rows
    and bias entries), ``host.reference_covered(adapter)`` (the covered rows of the reference
    weight, see :mod:`adapters.methods.weight_transform`), ``host.base_forward(x)``,
    ``host.weight_out_in``, ``host.bias``, ``host.merged``.

    Args:
        in_features / out_features: the host layer's sizes (``out_features``: its whole output,
            also when the adapter covers only some columns).
        out_slices: the covered output column ranges, already checked
            (:func:`~adapters.hooks.slices.check_slices`); None: the whole output.

    Example::

        >>> adapter = model.encoder.layer[0].attention.self.query.loras["a"]
        >>> adapter.additive, adapter.rows          # a LoRA: a merge adds s·B A to 64 rows
        (True, 64)
    """

    #: what a merge multiplies the weight by, as messages name it; None: a merge adds ``ΔW``
    merge_factor: ClassVar[str | None] = None
    #: whether a gate computed from the input scales the adapter's effect
    gated: ClassVar[bool] = False
    #: whether the adapter acts on the layer's weight (the rotations: see
    #: :mod:`adapters.methods.weight_transform`), so a merge must not change it under the adapter
    needs_weight: ClassVar[bool] = False

    def __init__(self, in_features: int, out_features: int, out_slices=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.out_slices = out_slices
        index = slices_index(out_slices)
        # the covered output columns (None: all); a buffer so it follows .to(device), never saved
        self.register_buffer("out_index", index, persistent=False)
        #: the number of output rows the adapter covers
        self.rows = out_features if index is None else len(index)

    @property
    def additive(self) -> bool:
        """Whether a merge adds ``ΔW`` to the weight (and an unmerge subtracts it); otherwise it
        multiplies the weight and an unmerge divides (see :attr:`merge_factor`).

        Example::

            >>> host.loras["ia3"].additive
            False
        """
        return self.merge_factor is None

    def apply_to(self, host, x: torch.Tensor, output: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        """The covered columns ``output`` of the layer output with this adapter applied;
        ``base_output`` holds the same columns without any adapter.

        Example::

            >>> adapter.apply_to(host, x, output, base_output).shape == output.shape
            True
        """
        raise NotImplementedError

    def forward_alone(self, host, x: torch.Tensor) -> torch.Tensor | None:
        """The host's output for ``x`` with only this adapter active, computed a faster way than
        base output + :meth:`apply_to`; None where the adapter has none (the host then runs the
        composition engine).

        Example::

            >>> output = adapter.forward_alone(host, x)      # None: no shortcut
        """
        return None

    def low_rank_factors(self, dtype: torch.dtype):
        """``(A, B, scaling)`` where this adapter adds exactly ``scaling · x Aᵀ Bᵀ`` to the whole
        output for inputs of ``dtype`` (what the batched per-row routing of
        :meth:`LinearHost.compose_routed` stacks); None where it does anything else.

        Example::

            >>> adapter.low_rank_factors(torch.float32) is None    # not a plain low-rank delta
            True
        """
        return None

    def merge_record(self, host) -> dict:
        """What :meth:`merge_into` and the later :meth:`unmerge_from` need besides the
        parameters, computed from the host before the merge (the host keeps it while merged).

        Example::

            >>> record = adapter.merge_record(host)
        """
        return {}

    def merge_into(self, weight: torch.Tensor, bias: torch.Tensor | None, record: dict):
        """``(W', b')``: the covered ``(rows, in)`` weight rows and bias entries with this adapter
        folded in, computed out of place (``weight`` and ``bias`` are left as they are).

        Example::

            >>> merged_weight, merged_bias = adapter.merge_into(*host.covered(adapter), adapter.merge_record(host))
        """
        raise NotImplementedError

    def unmerge_from(self, weight: torch.Tensor, bias: torch.Tensor | None, record: dict):
        """``(W, b)``: the covered weight rows and bias entries with this merged adapter taken out
        again, computed out of place; ``record`` is what :meth:`merge_record` gave at the merge.

        Example::

            >>> weight, bias = adapter.unmerge_from(*host.covered(adapter), record)
        """
        raise NotImplementedError

    def delta_in_weight(self, record: dict) -> torch.Tensor | None:
        """The ``(rows, in)`` change an additive merge of this adapter left in the weight; None
        for a multiplicative one, which counts as part of the reference weight the weight
        transforms act on.

        Example::

            >>> adapter.delta_in_weight(record).shape
            torch.Size([64, 64])
        """
        return None

    def gate_value(self, x: torch.Tensor) -> torch.Tensor | None:
        """The gate's value for the input ``x`` (only for a :attr:`gated` adapter), else None.

        Example::

            >>> lora.gate_value(x).shape           # (batch, 1, groups) for a 3-d input
            torch.Size([2, 1, 1])
        """
        return None


# -- LoRA and (IA)³ ---------------------------------------------------------------------------------


class LoRA(LinearAdapter):
    """The parameters of one LoRA adapter on one linear layer (see the module docstring); its
    subclass :class:`IA3` is the (IA)³ adapter (``composition_mode="scale"``) with the same
    parameter names (``lora_B`` holds the scaling vector), as in AdapterHub's checkpoints.

    Args:
        in_features / out_features: the host layer's sizes (``out_features``: its whole output,
            also when the adapter covers only some columns).
        config: the :class:`~adapters.LoRAConfig` (its ``composition_mode`` must be the class's:
            :func:`lora_module_class` picks the class).
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

    #: the config's ``composition_mode`` this class implements
    composition_mode: ClassVar[str] = "add"
    #: whether the adapter may scale the layer's input instead of its output ((IA)³)
    may_scale_input: ClassVar[bool] = False

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
        if config.composition_mode != self.composition_mode:
            raise AdapterConfigError(
                f"{type(self).__name__} implements composition_mode={self.composition_mode!r}, but the config has "
                f"composition_mode={config.composition_mode!r}; build the module with lora_module_class(config)."
            )
        scale_input = scale_input and self.may_scale_input
        super().__init__(in_features, out_features, _check_slices(out_slices, out_features, scale_input))
        self.r = r
        self.scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        self.scale_input = scale_input
        self.groups = len(self.out_slices) if self.out_slices else 1
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self._create_factors()
        if config.use_gating:
            self.gate = nn.Linear(in_features, self.groups)
            nn.init.normal_(self.gate.weight, std=0.02)
            nn.init.zeros_(self.gate.bias)
        self._init_weights(config.init_weights)
        if config.use_dora:
            if base_weight is None:
                raise ValueError("DoRA needs the base weight to initialise its magnitude.")
            index = self.out_index
            covered = base_weight.detach() if index is None else base_weight.detach()[index.to(base_weight.device)]
            # m starts as the row norms of W, so the adapter starts as the identity
            self.lora_magnitude = nn.Parameter(torch.linalg.norm(covered.float(), dim=1).to(base_weight.dtype))

    def _create_factors(self) -> None:
        """``A ∈ R^{g·r×d_in}``, ``B ∈ R^{rows×r}`` (zeros until :meth:`_init_weights`)."""
        self.lora_A = nn.Parameter(torch.zeros(self.groups * self.r, self.in_features))
        self.lora_B = nn.Parameter(torch.zeros(self.rows, self.r))

    @torch.no_grad()
    def _init_weights(self, init) -> None:
        if init == "lora":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)
        elif init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / self.r)
            nn.init.zeros_(self.lora_B)
        elif init == "bert":
            for param in (self.lora_A, self.lora_B):
                nn.init.normal_(param, std=0.02)
        elif init == "ia3":
            nn.init.ones_(self.lora_B)
        else:  # False: random, not the identity ("loftq": refitted afterwards)
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))

    @property
    def use_dora(self) -> bool:
        """Whether this is a DoRA adapter (it has a magnitude vector ``m``).

        Example::

            >>> host.loras["dora"].use_dora
            True
        """
        return "lora_magnitude" in self._parameters

    @property
    def gated(self) -> bool:
        """Whether a gate ``g = mean_t σ(x_t W_g)`` takes the place of the scaling.

        Example::

            >>> host.loras["gated"].gated
            True
        """
        return "gate" in self._modules

    @property
    def merge_factor(self) -> str | None:
        """DoRA's merge renormalises the rows of ``W + s·B A`` by its magnitude; a plain LoRA
        merge adds ``s·B A`` (None).

        Example::

            >>> host.loras["dora"].merge_factor
            'DoRA magnitude'
        """
        return "DoRA magnitude" if self.use_dora else None

    def gate_value(self, x: torch.Tensor) -> torch.Tensor | None:
        """``mean_t σ(x_t W_g)``: one value per group (per sequence for 3-d inputs), or None.

        Example::

            >>> host.loras["gated"].gate_value(x).shape
            torch.Size([2, 1, 1])
        """
        if not self.gated:
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
        """A LoRA over the whole output without gate or DoRA: ``output + s·x Aᵀ Bᵀ`` and nothing else.

        Example::

            >>> LoRA(64, 64, LoRAConfig(), r=8, alpha=16).is_plain
            True
        """
        return self.out_index is None and not self.use_dora and not self.gated

    def low_rank_factors(self, dtype: torch.dtype):
        """``(A, B, s)`` for a plain LoRA (see :attr:`is_plain`) of ``dtype`` whose dropout is off;
        None otherwise.

        Example::

            >>> A, B, s = LoRA(64, 64, LoRAConfig(), r=8, alpha=16).low_rank_factors(torch.float32)
            >>> A.shape, B.shape, s
            (torch.Size([8, 64]), torch.Size([64, 8]), 2.0)
        """
        training_dropout = isinstance(self.dropout, nn.Dropout) and self.dropout.training
        if not self.is_plain or training_dropout or self.lora_A.dtype != dtype:
            return None
        return self.lora_A, self.lora_B, float(self.scaling)

    def add_delta(self, x: torch.Tensor, output: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """``output + s·dropout(x) Aᵀ Bᵀ`` for a plain LoRA: two small GEMMs and no extra pass over
        ``output``, written into it when ``in_place`` (see :func:`accumulate_low_rank`).

        Example::

            >>> lora.add_delta(x, x @ W.t())           # == x Wᵀ + s·x Aᵀ Bᵀ
        """
        return accumulate_low_rank(output, self.dropout(x), self.lora_A, self.lora_B, self.scaling, in_place)

    def folded_into(self, weight: torch.Tensor) -> torch.Tensor:
        """``W + s·B A`` for a plain LoRA: ``weight`` (``(out, in)``) with this adapter's update
        added, in one ``addmm`` (a new tensor; ``weight`` is unchanged).

        Example::

            >>> lora.folded_into(host.weight_out_in).shape == host.weight_out_in.shape
            True
        """
        dtype = weight.dtype
        return torch.addmm(weight, self.lora_B.to(dtype), self.lora_A.to(dtype), alpha=self.scaling)

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """``dropout(x) A_iᵀ B_iᵀ`` for every group ``i``, concatenated (unscaled).

        Example::

            >>> qv.lora_delta(x).shape[-1]               # the covered columns of q and v
            128
        """
        hidden = self.dropout(x) @ self.lora_A.t()
        if self.groups == 1:
            return hidden @ self.lora_B.t()
        blocks = self.lora_B.unflatten(0, (self.groups, -1))  # (g, d, r)
        return torch.einsum("...gr,gdr->...gd", hidden.unflatten(-1, (self.groups, self.r)), blocks).flatten(-2)

    def apply_to(self, host, x: torch.Tensor, output: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        """``output + s·dropout(x) Aᵀ Bᵀ`` over the covered columns (the gate in place of ``s``);
        DoRA rescales: ``output + (m/‖W + s·B A‖ − 1)(base_output − b) + m/‖W + s·B A‖ · s·x Aᵀ Bᵀ``
        with ``W``, ``b`` the host's covered rows.

        Example::

            >>> lora.apply_to(host, x, output, output)     # == output + s·x Aᵀ Bᵀ
        """
        gate = self.gate_value(x)
        if gate is None and self.is_plain:
            return self.add_delta(x, output)
        delta = self.lora_delta(x)
        delta = delta * self.scaling if gate is None else delta * self._per_column(gate)
        if self.use_dora:
            weight, bias = host.covered(self)
            magnitude_scale = self.lora_magnitude / self.weight_norm(weight)
            unbiased = base_output if bias is None else base_output - bias
            return output + (magnitude_scale - 1) * unbiased + magnitude_scale * delta
        return output + delta

    def forward_alone(self, host, x: torch.Tensor) -> torch.Tensor | None:
        """A plain LoRA alone: ``x (W + s·B A)ᵀ + b`` in one matmul where the host folds (see the
        module docstring), else the base output with ``s·x Aᵀ Bᵀ`` accumulated into it.

        Example::

            >>> lora.forward_alone(host, x).shape
            torch.Size([2, 5, 64])
        """
        if not self.is_plain:
            return None
        if host.folds(x, self):
            return nn.functional.linear(x, self.folded_into(host.weight_out_in), host.bias)
        return self.add_delta(x, host.base_forward(x), in_place=True)  # a fresh output

    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """``‖W + s·B A‖`` per covered output row (``weight``: the covered rows), detached (DoRA).

        Example::

            >>> dora.weight_norm(host.covered(dora)[0]).shape
            torch.Size([64])
        """
        with torch.no_grad():  # in the wider dtype: a float32 DoRA on a bfloat16 layer takes a float32 norm
            delta = self.delta_weight()
            dtype = torch.promote_types(weight.dtype, delta.dtype)
            return torch.linalg.norm(weight.to(dtype) + delta.to(dtype), dim=1)

    def delta_weight(self) -> torch.Tensor:
        """``s·B A`` for the covered rows, ``(rows, in)`` (per group: ``s·B_i A_i``, stacked).

        Example::

            >>> LoRA(64, 64, LoRAConfig(), r=8, alpha=16).delta_weight().shape
            torch.Size([64, 64])
        """
        if self.groups == 1:
            return (self.lora_B @ self.lora_A) * self.scaling
        blocks_b = self.lora_B.unflatten(0, (self.groups, -1))  # (g, d, r)
        blocks_a = self.lora_A.unflatten(0, (self.groups, self.r))  # (g, r, in)
        return torch.bmm(blocks_b, blocks_a).flatten(0, 1) * self.scaling

    def merge_record(self, host) -> dict:
        """DoRA: ``‖W + s·B A‖`` before the merge, which the unmerge multiplies back; LoRA: nothing.

        Example::

            >>> dora.merge_record(host)["norm"].shape
            torch.Size([64])
        """
        return {"norm": self.weight_norm(host.covered(self)[0])} if self.use_dora else {}

    def merge_into(self, weight: torch.Tensor, bias: torch.Tensor | None, record: dict):
        """``W + s·B A`` (DoRA: ``(m/‖W + s·B A‖) ⊙ (W + s·B A)``); the bias is unchanged.

        Example::

            >>> merged, _ = lora.merge_into(weight, bias, {})     # == weight + lora.delta_weight()
        """
        delta = self.delta_weight().to(weight.dtype)
        if self.use_dora:
            combined = weight + delta
            return (self.lora_magnitude / torch.linalg.norm(combined, dim=1)).unsqueeze(1) * combined, bias
        return weight + delta, bias

    def unmerge_from(self, weight: torch.Tensor, bias: torch.Tensor | None, record: dict):
        """``W' − s·B A`` (DoRA: ``W' ⊙ (‖W + s·B A‖/m) − s·B A`` with the norm of the merge).

        Example::

            >>> weight, _ = lora.unmerge_from(merged, bias, {})
        """
        delta = self.delta_weight().to(weight.dtype)
        if self.use_dora:
            return weight * (record["norm"] / self.lora_magnitude).unsqueeze(1) - delta, bias
        return weight - delta, bias

    def delta_in_weight(self, record: dict) -> torch.Tensor | None:
        """``s·B A`` (recomputed from the parameters, as the unmerge does); None for DoRA.

        Example::

            >>> torch.equal(lora.delta_in_weight({}), lora.delta_weight())
            True
        """
        return None if self.use_dora else self.delta_weight()

    def dense_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B')`` of an equivalent plain LoRA over the host's whole output: ``s·B' A`` is
        this adapter's full ``(out, in)`` delta, with ``B' ∈ R^{out×g·r}`` holding ``B_i`` in the
        rows of part ``i`` and columns ``i·r … (i+1)·r``, zeros elsewhere.

        For writing a sliced adapter where only whole-module LoRAs exist (PEFT: rank ``g·r``).

        Example::

            >>> A, B = qv.dense_factors()
            >>> B.shape                                   # all 192 rows of c_attn, rank 2·8
            torch.Size([192, 16])
        """
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


class IA3(LoRA):
    """One (IA)³ adapter on one linear layer: the learned vector ``l`` (``lora_B``) scales the
    covered output columns, ``y ⊙ s·l``, or with ``scale_input`` the layer input,
    ``(x ⊙ s·l) Wᵀ + b``; a gate interpolates, ``1 + g·(s·l − 1)``. A merge multiplies the weight
    (and, scaling the output, the bias) by ``s·l``; the unmerge divides by it.

    ``LoRA``'s arguments, with a ``composition_mode="scale"`` config (:class:`~adapters.IA3Config`).

    Example::

        >>> ia3 = IA3(64, 64, IA3Config(), r=1, alpha=1)
        >>> ia3.lora_B.shape, ia3.additive
        (torch.Size([64, 1]), False)
    """

    composition_mode: ClassVar[str] = "scale"
    may_scale_input: ClassVar[bool] = True
    merge_factor: ClassVar[str] = "(IA)³ scaling vector"
    is_plain: ClassVar[bool] = False

    def _create_factors(self) -> None:
        """``l``: one entry per covered output column, or per input feature with ``scale_input``."""
        self.lora_B = nn.Parameter(torch.zeros(self.in_features if self.scale_input else self.rows, 1))

    @torch.no_grad()
    def _init_weights(self, init) -> None:
        if init == "bert":
            nn.init.normal_(self.lora_B, std=0.02)
        elif init in ("ia3", "lora", "gaussian"):  # ones: the identity
            nn.init.ones_(self.lora_B)
        else:  # False: random, not the identity
            nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))

    def scale_vector(self) -> torch.Tensor:
        """``s·l`` as a vector (``l`` itself when ``s = 1``, saving a multiplication).

        Example::

            >>> IA3(64, 64, IA3Config(), r=1, alpha=1).scale_vector().shape
            torch.Size([64])
        """
        vector = self.lora_B.view(-1)
        return vector if self.scaling == 1 else vector * self.scaling

    def _factor(self, x: torch.Tensor) -> torch.Tensor:
        """``s·l``, or with a gate ``1 + g·(s·l − 1)`` (per covered column)."""
        factor = self.scale_vector()
        gate = self.gate_value(x)
        return factor if gate is None else 1 + self._per_column(gate) * (factor - 1)

    def apply_to(self, host, x: torch.Tensor, output: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        """``output ⊙ s·l`` over the covered columns; with ``scale_input``
        ``output + (x ⊙ (s·l − 1)) Wᵀ`` (``(x ⊙ f) Wᵀ = x Wᵀ + (x ⊙ (f − 1)) Wᵀ``).

        Example::

            >>> ia3.apply_to(host, x, output, output)     # == output * ia3.scale_vector()
        """
        factor = self._factor(x)
        if self.scale_input:
            return output + nn.functional.linear(x * (factor - 1), host.covered(self)[0])
        return output * factor

    def forward_alone(self, host, x: torch.Tensor) -> torch.Tensor | None:
        """Input scaling: the layer on ``x ⊙ s·l``; output scaling over the whole output without a
        gate: the base output scaled (in place where autograd does not need it as it is).

        Example::

            >>> ia3.forward_alone(host, x).shape
            torch.Size([2, 5, 64])
        """
        if self.scale_input:  # one input scaling: fold into x
            return host.base_forward(x * self._factor(x))
        if self.gated or self.out_index is not None:
            return None
        output = host.base_forward(x)  # a fresh tensor
        return output.mul_(self.scale_vector()) if not torch.is_grad_enabled() else output * self.scale_vector()

    def delta_weight(self) -> torch.Tensor:
        """The scaling vector ``s·l`` (what a merge multiplies the weight's rows, or with
        ``scale_input`` its columns, by).

        Example::

            >>> IA3(64, 64, IA3Config(), r=1, alpha=1).delta_weight().shape
            torch.Size([64])
        """
        return self.lora_B.view(-1) * self.scaling

    def merge_record(self, host) -> dict:
        """Nothing: the unmerge divides by the same vector.

        Example::

            >>> ia3.merge_record(host)
            {}
        """
        return {}

    def merge_into(self, weight: torch.Tensor, bias: torch.Tensor | None, record: dict):
        """``diag(s·l) W`` and ``s·l ⊙ b``; with ``scale_input`` ``W diag(s·l)`` and ``b``.

        Example::

            >>> merged, merged_bias = ia3.merge_into(weight, bias, {})
        """
        factor = self.delta_weight().to(weight.dtype)
        if self.scale_input:
            return weight * factor.unsqueeze(0), bias
        return weight * factor.unsqueeze(1), None if bias is None else bias * factor

    def unmerge_from(self, weight: torch.Tensor, bias: torch.Tensor | None, record: dict):
        """The merge divided out again: ``diag(s·l)⁻¹ W'`` and ``b' / s·l`` (``W' diag(s·l)⁻¹``).

        Example::

            >>> weight, bias = ia3.unmerge_from(merged, merged_bias, {})
        """
        factor = self.delta_weight().to(weight.dtype)
        if self.scale_input:
            return weight / factor.unsqueeze(0), bias
        return weight / factor.unsqueeze(1), None if bias is None else bias / factor

    def delta_in_weight(self, record: dict) -> None:
        """None: a merged scaling counts as part of the reference weight.

        Example::

            >>> ia3.delta_in_weight({}) is None
            True
        """
        return None

    def dense_factors(self):
        """Not defined: (IA)³ has no low-rank factors.

        Example::

            >>> ia3.dense_factors()
            Traceback (most recent call last):
            ValueError: dense_factors is defined for LoRA ('add') adapters.
        """
        raise ValueError("dense_factors is defined for LoRA ('add') adapters.")


def lora_module_class(config: LoRAConfig) -> type[LoRA]:
    """The module class of a LoRA-family ``config``: :class:`IA3` for ``composition_mode="scale"``,
    :class:`LoRA` (with DoRA, gating, rsLoRA as the config says) otherwise.

    Example::

        >>> lora_module_class(IA3Config()).__name__
        'IA3'
    """
    return IA3 if config.composition_mode == IA3.composition_mode else LoRA


class LoRAGroup(NamedTuple):
    """One group of a :class:`LoRA` as a plain LoRA (views of its parameters; ``lora_A`` is None
    for (IA)³, whose ``lora_B`` is then a part of the scaling vector)."""

    lora_A: torch.Tensor | None
    lora_B: torch.Tensor
    scaling: float
    r: int
    composition_mode: str

    def delta_weight(self) -> torch.Tensor:
        """``s·B_i A_i`` or the scaling vector ``s·l_i``.

        Example::

            >>> lora.group_views()[0].delta_weight().shape
            torch.Size([64, 64])
        """
        if self.lora_A is None:
            return self.lora_B.view(-1) * self.scaling
        return (self.lora_B @ self.lora_A) * self.scaling


def accumulate_low_rank(
    output: torch.Tensor, x: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float, in_place: bool = False
) -> torch.Tensor:
    """``output + scaling · x Aᵀ Bᵀ``; with ``in_place`` written into ``output``, which must then
    be a fresh tensor nothing else holds (the base layer's result in a single-adapter pass).

    Two GEMMs and no extra pass over ``output``: ``A xᵀ`` (``r × tokens``) first, because the
    tall-skinny ``x Aᵀ`` (``tokens × r``) runs slower on CPU BLAS (the measurement is in the LoRA
    docs, "Inference cost"), then ``addmm`` accumulates
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


# the host's instance-dict entry of merge records ("_adapters_*": unload removes it with the others)
_MERGE_RECORDS = "_adapters_merge_records"
# a merge record's entry for the report of a merge into a quantized weight
_QUANTIZED_REPORT = "quantized"


class LinearHost(ComposableLayer):
    """Mixin for a linear layer that hosts adapters (swapped in by class): LoRA, (IA)³ and the
    weight transforms, side by side in one ``loras`` ModuleDict (AdapterHub's key names), each a
    :class:`LinearAdapter` that the host drives through that protocol alone. The layer is an
    ``nn.Linear`` or transformers' ``Conv1D``, whose weight is stored transposed; the mixin reads
    sizes and weight through the ``(out, in)`` view :attr:`weight_out_in` on both.

    Example::

        >>> query = model.encoder.layer[0].attention.self.query
        >>> query.loras["a"].lora_A.shape
        torch.Size([8, 32])
    """

    method = "lora"
    hosts_weight_deltas = True
    removed_when_empty = True
    supported_blocks = (Stack, Parallel, Split, BatchSplit, Average, MultiTask)
    BATCH_FIELDS = ("layer_input", "output", "base_output")
    SEQUENCE_FIELDS = ("layer_input", "output", "base_output")

    def init_adapter_layer(self, layer_idx: int, location: str) -> None:
        self._init_composable(layer_idx, location)
        self.loras = nn.ModuleDict()
        self.__dict__["merged"] = []  # names merged into the weight, in order
        self.__dict__[_MERGE_RECORDS] = {}  # name -> what its unmerge needs (LinearAdapter.merge_record)

    # -- the host's weight, whatever its storage layout -------------------------------------------
    @property
    def fan_in_fan_out(self) -> bool:
        """Whether the weight is stored ``(in, out)`` (transformers' ``Conv1D``)."""
        return isinstance(self, Conv1D)

    @property
    def weight_out_in(self) -> torch.Tensor:
        """The weight as ``(out, in)``: a view (in-place writes reach the parameter), or for a
        quantized weight (:attr:`quantized`) its dequantized value, a new tensor (a merge writes
        through :meth:`_write_covered`, which re-quantizes)."""
        quantized = self.quantized
        if quantized is not None:
            return quantized.dequantize(self)
        return self.weight.t() if self.fan_in_fan_out else self.weight

    @property
    def quantized(self):
        """The :class:`~adapters.methods.quantized.QuantizedWeight` of a quantized layer
        (bitsandbytes 4-bit / 8-bit, torchao), None for a plain weight.

        Example::

            >>> model.model.layers[0].self_attn.q_proj.quantized.kind
            'bitsandbytes 4-bit (nf4)'
        """
        return quantization_of(self)

    # the layer's own sizes: a quantized weight's storage shape is not (out, in) (bitsandbytes
    # packs a 4-bit weight into an (n, 1) byte column)
    @property
    def in_features(self) -> int:
        """The layer's input size (``nn.Linear.in_features``, ``Conv1D.nx``)."""
        size = self.__dict__.get("nx" if self.fan_in_fan_out else "in_features")
        return self.weight_out_in.shape[1] if size is None else size

    @property
    def out_features(self) -> int:
        """The layer's output size (``nn.Linear.out_features``, ``Conv1D.nf``)."""
        size = self.__dict__.get("nf" if self.fan_in_fan_out else "out_features")
        return self.weight_out_in.shape[0] if size is None else size

    def covered(self, adapter: LinearAdapter) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``(out, in)`` weight rows and bias entries ``adapter`` covers, as stored (copies
        when it covers only some rows; the parameters' own views otherwise).

        Example::

            >>> weight, bias = host.covered(host.loras["a"])
        """
        weight, bias = self.weight_out_in, self.bias
        if adapter.out_index is None:
            return weight, bias
        return weight[adapter.out_index], None if bias is None else bias[adapter.out_index]

    def reference_covered(self, adapter: LinearAdapter) -> torch.Tensor:
        """The covered ``(out, in)`` rows of the *reference* weight the weight transforms act on:
        the stored weight minus the additive updates merged into it (see
        :mod:`adapters.methods.weight_transform`); the stored weight itself when nothing is merged.

        Example::

            >>> host.reference_covered(host.loras["oft"]).shape
            torch.Size([64, 64])
        """
        weight = self.weight_out_in
        if self.merged:
            records = self.__dict__[_MERGE_RECORDS]
            weight = weight.detach().clone()
            for name in self.merged:
                merged = self.loras[name]
                delta = merged.delta_in_weight(records[name])
                if delta is None:
                    continue  # merged (IA)³ scalings and DoRA count as part of the reference weight
                if merged.out_index is None:
                    weight -= delta.to(weight.dtype)
                else:
                    weight[merged.out_index] -= delta.to(weight.dtype)
        return weight if adapter.out_index is None else weight[adapter.out_index]

    def _write_covered(
        self, adapter: LinearAdapter, weight: torch.Tensor, bias: torch.Tensor | None, old_weight: torch.Tensor
    ) -> QuantizedMerge | None:
        """Write the covered rows ``weight`` (``old_weight``: what they held) and bias entries; a
        quantized weight is dequantized, updated and re-quantized whole, and the report of what the
        re-quantization did to the change (see :mod:`adapters.methods.quantized`) is returned."""
        quantized = self.quantized
        if quantized is not None:
            full = quantized.dequantize(self)
            if adapter.out_index is None:
                full = weight.to(full.dtype)
            else:
                full[adapter.out_index] = weight.to(full.dtype)
            quantized.requantize(self, full)
            written = self.weight_out_in if adapter.out_index is None else self.weight_out_in[adapter.out_index]
            asked = weight.float() - old_weight.float()
            report = QuantizedMerge(
                quantized.kind, float((written.float() - weight.float()).abs().max()), float(asked.abs().max())
            )
            if bias is not None and adapter.out_index is None:
                self.bias.copy_(bias)
            elif bias is not None:
                self.bias[adapter.out_index] = bias
            return report
        target = self.weight_out_in
        if adapter.out_index is None:
            target.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)
        else:
            target[adapter.out_index] = weight
            if bias is not None:
                self.bias[adapter.out_index] = bias
        return None

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
        """Add LoRA / (IA)³ adapter ``name``; ``out_slices`` restricts it to some output column
        ranges (the parts of a fused projection, see the module docstring)."""
        with torch.random.fork_rng(enabled=config.init_weights_seed is not None):
            if config.init_weights_seed is not None:
                torch.manual_seed(config.init_weights_seed)
            module = lora_module_class(config)(
                self.in_features, self.out_features, config, r, alpha, self.weight_out_in, scale_input, out_slices
            )
        self.add_adapter_module(name, module)

    def add_adapter_module(self, name: str, adapter: LinearAdapter) -> None:
        """Host ``adapter`` (any :class:`LinearAdapter`) as adapter ``name``.

        Example::

            >>> host.add_adapter_module("b", LoRA(host.in_features, host.out_features, LoRAConfig(), r=4, alpha=8))
        """
        self.loras[name] = adapter
        self._invalidate_setup_cache()

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's own forward, without adapters."""
        keep_input_gradient(self, x)  # x may differ from the call's input (OFT rotates it)
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
            raise RuntimeError(f"Cannot uninstall a linear-layer host that still has adapters: {sorted(self.loras)}.")
        self.__dict__.pop("merged", None)
        self.__dict__.pop(_MERGE_RECORDS, None)
        remove_host_mixin(self, LinearHost, containers=("loras",))

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        setup = self.active_setup()
        if setup is None:
            return super().forward(x)
        if isinstance(setup, str):  # one adapter: the common case, its own shortcut where it has one
            adapter = self.loras[setup]
            # an adapter in another dtype (float32 on a bfloat16 model) takes compose_single's casts
            output = adapter.forward_alone(self, x) if parameter_dtype(adapter) in (x.dtype, None) else None
            if output is not None:
                return output
        output = super().forward(x)
        state = LoRAState(x, output, output)
        if not isinstance(setup, str) and setup.kind is MultiTask:  # the whole setup routes rows: the layer's fresh output takes the deltas
            return self.compose_routed(setup, state, self._task_rows(setup, state), in_place=True).output
        return self.compose(setup, state).output

    _FOLD_RATIO = 2.5
    # the forwards that are the plain affine map, so a folded weight may stand in for them; a
    # subclass with its own forward (a quantised linear, say) always runs it
    _AFFINE_FORWARDS = (nn.Linear.forward, Conv1D.forward)

    def folds(self, x: torch.Tensor, lora: LoRA) -> bool:
        """Whether the plain ``lora``, active alone, runs as one matmul with ``W + s·B A`` on ``x``
        (see the module docstring): no gradient recorded (training keeps the low-rank path, whose
        backward never forms ``d_out × d_in`` gradients), no active dropout, a float32/64 weight
        (in half precision ``W + s·B A`` would round the small update to the weight's precision),
        and ``tokens·(d_in + d_out) ≥ 2.5·d_in·d_out`` (the threshold's measurement is in the
        LoRA docs, "Inference cost").

        Example::

            >>> host.folds(torch.randn(4, 40, 32), host.loras["a"])   # under torch.no_grad()
            True
        """
        if torch.is_grad_enabled() or self.__dict__["_adapters_original_class"].forward not in self._AFFINE_FORWARDS:
            return False
        if x.dtype not in (torch.float32, torch.float64) or (isinstance(lora.dropout, nn.Dropout) and lora.dropout.training):
            return False
        if self.quantized is not None:  # torchao keeps nn.Linear's forward, but W + s·B A is no longer quantized
            return False
        d_out, d_in = self.out_features, self.in_features
        tokens = x.numel() // d_in
        return tokens * (d_in + d_out) >= self._FOLD_RATIO * d_in * d_out

    def compose_single(self, name: str, state: LoRAState) -> LoRAState:
        adapter = self.loras[name]
        # the adapter computes in its own dtype (float32 on a bfloat16 model: autocast_adapter_dtype),
        # the layer output keeps the activations' dtype, rounded once per adapter
        dtype = parameter_dtype(adapter)
        x, base_output = in_dtype(state.layer_input, dtype), in_dtype(state.base_output, dtype)
        if adapter.out_index is None:
            output = adapter.apply_to(self, x, in_dtype(state.output, dtype), base_output)
        else:  # a fused projection's parts: apply on the covered columns, leave the others
            dim, index = state.output.dim() - 1, adapter.out_index
            covered = adapter.apply_to(
                self, x, in_dtype(state.output.index_select(dim, index), dtype), base_output.index_select(dim, index)
            )
            output = state.output.index_copy(dim, index, covered.to(state.output.dtype))
        output = in_dtype(output, state.output.dtype)
        if adapter.gated:
            context = ForwardContext.get_context()
            if context is not None and context.output_adapter_gating_scores:
                scores = context.adapter_gating_scores.setdefault(name, {}).setdefault(self.layer_idx, {})
                scores[self.location] = adapter.gate_value(x).detach()
        return state._replace(output=output, last=name)

    def mean(self, states, weights, start: LoRAState) -> LoRAState:
        output = start.output
        for state, weight in zip(states, weights):
            output = output + weight * (state.output - start.output)
        return states[-1]._replace(output=output)

    #: rows a ``MultiTask`` routes to plain LoRAs of one rank run as one batched matmul over the
    #: stacked factors (False: the engine's sort-and-split path, per child; benchmarks compare them)
    stacked_routing: ClassVar[bool] = True

    def compose_routed(self, setup, state: LoRAState, rows, in_place: bool = False) -> LoRAState:
        """A ``MultiTask`` block (per-row ``adapter_names`` or ``task_ids``) on this layer. Where
        every child with rows is a plain LoRA (or absent here) of one rank and dtype, each row ``b``
        gets ``o_b + s_t · x_b A_tᵀ B_tᵀ`` of its own adapter ``t`` from two batched matmuls over the
        factors stacked once per layer and gathered per row (``s_t = 0`` for rows without an adapter
        here); otherwise the engine's path (rows sorted by child, each child on its run).
        ``in_place``: ``state.output`` is the layer's fresh output, which nothing else holds (it
        then takes the deltas in place where no gradient is recorded).

        Example::

            >>> host.compose_routed(setup, LoRAState(x, out, out), rows).output.shape == out.shape
            True
        """
        stacked = self._stacked_factors(setup, state, rows) if self.stacked_routing and len(rows.used) > 1 else None
        if stacked is None:
            return super().compose_routed(setup, state, rows)
        lora_A, lora_B, scaling = stacked
        x, output = state.layer_input, state.output
        batch = x.shape[0]
        x3 = x.reshape(batch, -1, x.shape[-1])
        hidden = torch.bmm(x3, lora_A.index_select(0, rows.positions).transpose(1, 2))  # (rows, tokens, r)
        alpha = scaling if isinstance(scaling, float) else 1.0
        if not isinstance(scaling, float):
            hidden = hidden * scaling.view(batch, 1, 1)
        flat = output.reshape(batch, -1, output.shape[-1])
        up = lora_B.index_select(0, rows.positions).transpose(1, 2)  # (rows, r, out)
        if in_place and output.is_contiguous() and not torch.is_grad_enabled():
            flat.baddbmm_(hidden, up, alpha=alpha)  # measured 3x faster than the out-of-place form on CPU
            return state._replace(output=output)
        return state._replace(output=torch.baddbmm(flat, hidden, up, alpha=alpha).view(output.shape))

    def _stacked_factors(self, setup, state: LoRAState, rows):
        """``(A, B, scaling)`` for :meth:`compose_routed`'s batched path: the ``A`` / ``B`` of the
        children with rows stacked in ``rows.used`` order, and one float scaling or a per-row
        tensor; None where a child is not a plain LoRA of the common rank and dtype (or a block)."""
        x = state.layer_input
        adapters = []
        for index in rows.used:
            child = setup.children[index]
            if child is None:
                adapters.append(None)
                continue
            factors = self.loras[child].low_rank_factors(x.dtype) if isinstance(child, str) else None
            if factors is None:
                return None
            adapters.append(factors)
        present = [f for f in adapters if f is not None]
        if not present or any(f[0].shape != present[0][0].shape for f in present) or x.shape[0] != rows.positions.numel():
            return None
        stand_in = present[0]  # rows without an adapter here compute with any factors, scaled by 0
        lora_A = torch.stack([(f or stand_in)[0] for f in adapters])
        lora_B = torch.stack([(f or stand_in)[1] for f in adapters])
        scales = tuple(0.0 if f is None else f[2] for f in adapters)
        if all(scale == scales[0] for scale in scales):
            return lora_A, lora_B, scales[0]
        context = None if torch.compiler.is_compiling() else ForwardContext.get_context()  # compiled: see _task_rows
        key = ("lora_row_scales", scales, x.shape[0], x.dtype, x.device)
        per_row = None if context is None else context.pass_cache.get(key)
        if per_row is None:  # once per pass for every layer with the same scalings
            per_row = torch.tensor(scales, dtype=x.dtype).to(x.device).index_select(0, rows.positions)
            if context is not None:
                context.pass_cache[key] = per_row
        return lora_A, lora_B, per_row

    # -- merging ---------------------------------------------------------------------------------
    def merge_state(self) -> tuple:
        """The host's merge bookkeeping (the merged names, in order, and what their unmerges
        need), for :meth:`restore_merge_state` after a trial run on copies of the weight; for a
        quantized weight also the weight itself, which a merge replaces instead of writing into
        (so the trial needs no copy of it).

        Example::

            >>> saved = host.merge_state()
            >>> host.merge("a"); host.restore_merge_state(saved)    # "a" counts as unmerged again
        """
        quantized = self.quantized
        storage = None if quantized is None else (quantized, quantized.snapshot(self))
        return list(self.merged), dict(self.__dict__[_MERGE_RECORDS]), storage

    def restore_merge_state(self, state: tuple) -> None:
        """Put back bookkeeping :meth:`merge_state` returned, and a quantized weight a merge
        replaced (a plain weight is the caller's business).

        Example::

            >>> host.restore_merge_state(saved)
        """
        merged, records, storage = state
        self.merged[:] = merged
        self.__dict__[_MERGE_RECORDS] = dict(records)
        if storage is not None:
            storage[0].restore(self, storage[1])
        self._invalidate_setup_cache()

    def merge_report(self, name: str) -> QuantizedMerge | None:
        """For adapter ``name`` merged into a quantized weight: what the re-quantization did to its
        update (:class:`~adapters.methods.quantized.QuantizedMerge`: ``max |ΔW_q − ΔW|`` next to
        ``max |ΔW|``); None for a plain weight or an adapter not merged.

        Example::

            >>> host.merge("a"); host.merge_report("a").describe()
            're-quantization error max |ΔW_q − ΔW| = 0.0031, delta max |ΔW| = 0.0412 (bitsandbytes 4-bit (nf4))'
        """
        record = self.__dict__[_MERGE_RECORDS].get(name) if name in self.merged else None
        return None if record is None else record.get(_QUANTIZED_REPORT)

    def _check_float_weight(self, name: str, action: str) -> None:
        """Refuse a weight a merge cannot write: one of a quantized format that cannot be
        re-quantized (torchao's), or of an unknown non-floating-point one."""
        quantized = self.quantized
        if quantized is not None:
            if quantized.refusal is not None:
                raise merge_error(name, action, quantized.refusal)
            return
        if not self.weight.is_floating_point():
            raise merge_error(
                name, action,
                f"the layer's weight is {self.weight.dtype} (quantized or integer), which cannot hold the merged "
                f"weight; keep the adapter unmerged, or dequantize the layer first (of the quantized formats, "
                f"bitsandbytes' 4-bit and 8-bit weights are re-quantized after a merge)",
            )

    @torch.no_grad()
    def merge(self, name: str, undoable: bool = True) -> QuantizedMerge | None:
        """Fold adapter ``name`` into the weight (and bias, for output-scaling (IA)³).

        The merged weight and bias are computed out of place and checked before anything is written:
        they must be finite, and with ``undoable`` (``merge_adapter``, which :meth:`unmerge` undoes)
        a multiplicative merge ((IA)³, DoRA) must not turn a non-zero entry into 0 or a subnormal
        number, which the division of the unmerge could not give back (a scaling entry (nearly) 0).
        A merge that fails a check raises :class:`~adapters.errors.AdapterMergeError` and writes nothing.

        A quantized weight (bitsandbytes) is dequantized, merged and re-quantized into a new weight
        of the same kind; the re-quantization's effect on the update is returned (and kept:
        :meth:`merge_report`); None for a plain weight. A torchao weight is refused (see
        :mod:`adapters.methods.quantized`).

        Example::

            >>> host.merge("a")
            >>> host.merged
            ['a']
        """
        adapter = self.loras[name]
        self._check_float_weight(name, "merge")
        self._check_reference_kept(name, adapter)
        record = adapter.merge_record(self)
        old_weight, old_bias = self.covered(adapter)
        weight, bias = _folded_in_adapter_dtype(adapter, adapter.merge_into, old_weight, old_bias, record)
        _check_finite(name, adapter, "merge", weight, bias)
        if undoable and not adapter.additive:
            _check_invertible(name, adapter, old_weight, old_bias, weight, bias)
        report = self._write_covered(adapter, weight, bias, old_weight)
        if report is not None:
            record = {**record, _QUANTIZED_REPORT: report}
        self.__dict__[_MERGE_RECORDS][name] = record
        self.merged.append(name)
        self._invalidate_setup_cache()
        return report

    def _check_reference_kept(self, name: str, adapter: LinearAdapter) -> None:
        """Refuse a merge after which the output would no longer be the unmerged composition's.

        The rotations (OFT, HRA: ``needs_weight``) act on the layer's weight, and a multiplicative
        adapter ((IA)³, DoRA) scales the layer's base output; merged, either one changes what the
        other acts on (``diag(l) W R`` is neither ``l ⊙ W x + (W R − W) x`` nor its converse). So
        on a layer that holds both kinds neither is merged: measured on a perturbed BERT layer,
        the merged Stack(ia3, oft) was 1.27 away from the unmerged one.
        """
        if not adapter.additive:
            others = [other for other, module in self.loras.items() if module.needs_weight]
            kind = "rotations act on this layer's weight, which its multiplicative merge would scale"
        elif adapter.needs_weight:
            others = [other for other, module in self.loras.items() if not module.additive]
            kind = "multiplicative adapters scale this layer's output, which its rotation would change"
        else:
            return
        if others:
            raise merge_error(
                name,
                "merge",
                f"it cannot be merged exactly beside {others} on the same layer ({kind}); run them "
                "unmerged, or delete one kind before merging the other",
            )

    @torch.no_grad()
    def unmerge(self, name: str) -> QuantizedMerge | None:
        """Take adapter ``name`` out of the weight again.

        The restored weight and bias are computed out of place and must be finite before they are
        written (:class:`~adapters.errors.AdapterMergeError` otherwise, nothing written: e.g. an
        adapter whose parameters were changed to NaN, or an (IA)³ entry set to 0, after the merge).
        A quantized weight is re-quantized again, so it comes back only up to the rounding reported
        (the return value, as for :meth:`merge`; None for a plain weight).

        Example::

            >>> host.unmerge("a")
        """
        adapter = self.loras[name]
        self._check_float_weight(name, "unmerge")
        records = self.__dict__[_MERGE_RECORDS]
        old_weight, old_bias = self.covered(adapter)
        weight, bias = _folded_in_adapter_dtype(adapter, adapter.unmerge_from, old_weight, old_bias, records[name])
        _check_finite(name, adapter, "unmerge", weight, bias)
        report = self._write_covered(adapter, weight, bias, old_weight)
        del records[name]
        self.merged.remove(name)
        self._invalidate_setup_cache()
        return report


#: the host's former name, kept for the code and tests that import it
LoRALinear = LinearHost


def _folded_in_adapter_dtype(adapter: LinearAdapter, fold, weight: torch.Tensor, bias, record: dict):
    """``fold(weight, bias, record)`` (a merge or unmerge) computed in the wider of the weight's
    and the adapter's dtype and returned in the weight's and bias's own: a float32 adapter on a
    bfloat16 layer adds its float32 update to the weight rounded once, at the end."""
    dtype = parameter_dtype(adapter)
    dtype = weight.dtype if dtype is None else torch.promote_types(weight.dtype, dtype)
    new_weight, new_bias = fold(in_dtype(weight, dtype), in_dtype(bias, dtype), record)
    return in_dtype(new_weight, weight.dtype), new_bias if bias is None else in_dtype(new_bias, bias.dtype)


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
            factor = adapter.merge_factor
            raise merge_error(
                name, "merge",
                f"{count} non-zero entr{'y' if count == 1 else 'ies'} of its {parameter} would become 0 (or too small "
                f"to divide back): the adapter's {factor} is (nearly) 0 there, so reset_adapter() could not restore "
                f"the weight. Use merge_and_unload(), which needs no unmerge, or run the adapter unmerged",
            )


# -- the LoRA family on a model: hosts, creation, LoftQ, trained biases, registration ------------------


def linear_hosts(model, config) -> tuple[list, str]:
    """``([(target, host)], prefix)``: the linear layers ``config`` targets, each made a
    :class:`LinearHost` host (LoRA and the weight-transform methods share it); ``prefix`` is the
    base model's path in the model. Raises before changing anything if a target lies inside a
    module adapters keep copies of (``modules_to_save``).

    Example::

        >>> pairs, prefix = linear_hosts(model, LoRAConfig(r=4))
        >>> pairs[0][1].adapter_names()
        set()
    """
    spec = model.__dict__["_adapters_spec"]
    prefix = "" if model.base_model is model else model.base_model_prefix + "."
    targets = resolve_targets(model.base_model, spec, config, prefix)
    saved = [p for p, m in model.base_model.named_modules() if isinstance(m, SavedModuleHost)]
    for target in targets:
        inside = [p for p in saved if target.path.startswith(p + ".")]
        if inside:
            raise AdapterConfigError(
                f"Module {target.path!r} lies inside {inside[0]!r}, of which adapters keep their own copies "
                f"(modules_to_save); an adapter there would be missing from those copies. Exclude it "
                f"(exclude_modules)."
            )
    pairs = []
    for target in targets:
        host = target.module
        if not isinstance(host, LinearHost):
            swap_class(host, LinearHost)
            host.init_adapter_layer(target.layer_idx, target.location)
            model._adapter_hosts.append(host)
        pairs.append((target, host))
    return pairs, prefix


def adapter_dtype_at(host, dtype):
    """The dtype of an adapter on ``host``: the wider of the adapted layer's floating dtype (T5 in
    float16 keeps ``wo`` in float32) and the model's choice ``dtype`` (float32 on a half-precision
    model unless ``autocast_adapter_dtype=False``; None: the layer's).

    Example::

        >>> adapter_dtype_at(bf16_model.model.layers[0].self_attn.q_proj, torch.float32)
        torch.float32
    """
    weight = getattr(host, "weight", None)
    own = weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else dtype
    return own if dtype is None else torch.promote_types(own, dtype)


def add_lora_modules(model, name: str, config: LoRAConfig, device, dtype) -> bool:
    """Attach LoRA / (IA)³ modules of adapter ``name`` to every targeted linear layer, making it
    a host first; returns whether any layer was targeted.

    Example::

        >>> add_lora_modules(model, "lora", LoRAConfig(r=4), device, dtype)
        True
    """
    pairs, prefix = linear_hosts(model, config)
    for pattern in {**config.rank_pattern, **config.alpha_pattern}:
        if not any(pattern_value({pattern: 1}, prefix + t.path, None) for t, _ in pairs):
            logger.warning(f"rank/alpha pattern {pattern!r} of adapter {name!r} matches none of its target modules.")
    for target, host in pairs:
        r = pattern_value(config.rank_pattern, prefix + target.path, config.r)
        alpha = pattern_value(config.alpha_pattern, prefix + target.path, config.alpha)
        scale_input = config.feedforward_modules is not None and matches_modules(target.path, config.feedforward_modules, prefix)
        host.add_lora(name, config, r, alpha, scale_input=scale_input, out_slices=target.out_slices)
    if config.init_weights == "loftq":
        # load_adapter builds the adapter under its staging name, then copies the saved factors in
        loading = model.__dict__.get("_adapters_staging_name") == name
        _loftq_initialise(model, name, [host for _, host in pairs], LoftQConfig(**(config.loftq_config or {})), loading)
    for _, host in pairs:
        host.loras[name].to(device=device, dtype=adapter_dtype_at(host, dtype)).train(model.training)
    if config.modules_to_save:
        add_saved_modules(model, name, config.modules_to_save)
    return bool(pairs) or bool(config.modules_to_save)


@torch.no_grad()
def _loftq_initialise(model, name: str, hosts: list, loftq, loading: bool = False) -> None:
    """LoftQ for adapter ``name`` on ``hosts``. A float layer's weight is replaced by its quantised
    version and A, B fit the residual. A layer loaded quantized keeps its weight: A, B fit the
    residual between it and the float weight read from the checkpoint the model was loaded from
    (one LoftQ step, as PEFT's ``replace_lora_weights_loftq``); while loading a saved LoftQ adapter
    nothing is fitted there (its factors come from the file). Every refusal comes before any
    weight changes."""
    for host in hosts:
        if host.loras[name].out_index is not None:
            raise AdapterConfigError(
                "init_weights='loftq' initialises a LoRA over a whole weight; this adapter covers only some parts "
                "of a fused projection (e.g. q and v of GPT-2's c_attn). Target the whole module "
                "(target_modules=['c_attn']) or use another init."
            )
    quantized_hosts = [host for host in hosts if host.quantized is not None]
    fitted = [] if loading else _loftq_on_quantized(model, name, quantized_hosts)  # reads and checks first
    for host in hosts:
        if host.quantized is not None:
            continue
        lora = host.loras[name]
        quantized, a, b = loftq_factors(host.weight_out_in, lora.r, lora.scaling, loftq.loftq_bits, loftq.loftq_iter, loftq.quantizer)
        host.weight_out_in.copy_(quantized)
        lora.lora_A.copy_(a)
        lora.lora_B.copy_(b)
    for lora, a, b in fitted:
        lora.lora_A.copy_(a.to(lora.lora_A.device, lora.lora_A.dtype))
        lora.lora_B.copy_(b.to(lora.lora_B.device, lora.lora_B.dtype))


def _loftq_on_quantized(model, name: str, hosts: list) -> list:
    """``(lora, A, B)`` per layer loaded quantized: ``s·B A`` = the best rank-r approximation of
    ``W − deq(W_q)``, ``W`` read from the model's checkpoint folder (``name_or_path``); refused
    (before anything changes) where it cannot be read or is not the layer's weight."""
    if not hosts:
        return []
    folder = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    paths = {id(module): path for path, module in model.named_modules()}
    prefix = getattr(model, "base_model_prefix", "") or ""
    fitted = []
    for host in hosts:
        path = paths[id(host)]
        candidates = [f"{path}.weight"]
        if prefix and path.startswith(prefix + "."):
            candidates.append(f"{path[len(prefix) + 1:]}.weight")
        elif prefix:
            candidates.append(f"{prefix}.{path}.weight")
        weight = next((w for w in (checkpoint_weight(folder, key) for key in candidates) if w is not None), None)
        where = f"layer {path!r} ({host.quantized.kind})"
        if weight is None:
            raise AdapterConfigError(
                f"init_weights='loftq' on {where} fits the LoRA factors to the difference between the float weight "
                f"and its quantization, and reads the float weight from the checkpoint the model was loaded from, but "
                f"{folder!r} holds no safetensors weight {candidates[0]!r}. Load the quantized model from a local folder "
                f"with the float checkpoint, or add the LoftQ adapter to the float model, save it and load it quantized."
            )
        quantized = host.weight_out_in.float()
        weight = weight.to(quantized.device, torch.float32)
        source = getattr(host, "source_cls", None)  # bitsandbytes keeps GPT-2's Conv1D weights as (out, in)
        if isinstance(source, type) and issubclass(source, Conv1D):
            weight = weight.t()
        if tuple(weight.shape) != tuple(quantized.shape):
            raise AdapterConfigError(
                f"init_weights='loftq' on {where}: the checkpoint's {candidates[0]!r} in {folder!r} has shape "
                f"{tuple(weight.shape)}, the layer {tuple(quantized.shape)}; load the model from the checkpoint it was quantized from."
            )
        relative = float((weight - quantized).norm() / weight.norm().clamp_min(1e-12))
        if relative > 0.5:  # 4-bit rounding is ~0.1 of the weight: this is another weight
            raise AdapterConfigError(
                f"init_weights='loftq' on {where}: the checkpoint's {candidates[0]!r} in {folder!r} is not the weight "
                f"this layer was quantized from (‖W − deq(W_q)‖ / ‖W‖ = {relative:.2f}); load the model from that checkpoint."
            )
        lora = host.loras[name]
        fitted.append((lora, *residual_factors(weight, quantized, lora.r, lora.scaling)))
    return fitted


def lora_bias_parameters(model, name: str, config) -> dict[str, nn.Parameter]:
    """The base-model biases adapter ``name`` trains and saves (LoRA's ``bias`` option: ``"all"``
    or ``"lora_only"``), keyed by their base-model-relative names.

    Example::

        >>> sorted(lora_bias_parameters(model, "lora", LoRAConfig(bias="lora_only")))[:1]
        ['encoder.layer.0.attention.self.query.bias']
    """
    if config.bias == "none":
        return {}
    hosts = {id(h) for h in model._adapter_hosts if isinstance(h, LinearHost) and name in h.loras}
    biases = {}
    for path, module in model.base_model.named_modules():
        bias = module._parameters.get("bias") if "loras" not in path.split(".") else None
        if bias is not None and (config.bias == "all" or id(module) in hosts) and not OWN_MODULES.search(path):
            biases[f"{path}.bias" if path else "bias"] = bias
    return biases


# -- the LoRA family in PEFT's format: LoRA, rsLoRA, DoRA (LORA) and (IA)³ (IA3) ----------------------
# PEFT's keys: <module>.lora_A.weight, <module>.lora_B.weight, <module>.lora_magnitude_vector (DoRA),
# <module>.ia3_l ((IA)³; shape (out, 1), or (1, in) for feedforward_modules, whose input is scaled);
# ours: <module>.loras.<name>.lora_A / lora_B / lora_magnitude. PEFT's LoraConfig fields map onto
# LoRAConfig one to one (lora_alpha -> alpha, lora_dropout -> dropout, the targeting fields,
# rank_pattern, alpha_pattern, use_rslora, use_dora, bias, feedforward_modules); trained biases
# (bias="all" / "lora_only") travel with the adapter as <module>.bias keys.


#: LoraConfig's fields (AdaLoraConfig inherits them) that say how the adapter was initialised or
#: trained, not what it computes (the weights come from the file): read with any value
PEFT_LORA_ANY_FIELDS = (
    "init_lora_weights", "loftq_config", "eva_config", "corda_config", "lora_ga_config", "fan_in_fan_out", "megatron_core",
    "qalora_group_size", "runtime_config", "ensure_weight_tying",
    "velora_config",  # VeLoRA changes only the backward pass
)
#: LoraConfig's fields this version does not implement, with PEFT's default (the only value read)
PEFT_LORA_UNIMPLEMENTED_FIELDS = {
    "lora_bias": False, "layer_replication": None, "use_qalora": False, "target_parameters": None, "megatron_config": None,
    "trainable_token_indices": None, "alora_invocation_tokens": None, "monteclora_config": None, "use_bdlora": None,
    "arrow_config": None, "kasa_config": None,
}
_PEFT_LORA_FIELDS = {
    "LORA": (
        ("r", "lora_alpha", "lora_dropout", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora", "bias",
         *PeftMapping.TARGETING_FIELDS),
        PEFT_LORA_ANY_FIELDS,
        PEFT_LORA_UNIMPLEMENTED_FIELDS,
    ),
    "IA3": (("feedforward_modules", "target_modules", "exclude_modules", "modules_to_save"), ("init_ia3_weights", "fan_in_fan_out"), {}),
}
_PEFT_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<param>lora_A\.weight|lora_B\.weight|lora_magnitude_vector(\.weight)?|ia3_l)$")
_PEFT_LORA_PARAMS = {"lora_A": "lora_A", "lora_B": "lora_B", "lora_magnitude_vector": "lora_magnitude", "ia3_l": "lora_B"}


def _listed(value):
    return list(value) if isinstance(value, (list, tuple, set)) else value


def lora_config_from_peft(meta: dict, targeting: dict) -> LoRAConfig:
    """Our :class:`~adapters.LoRAConfig` for PEFT's ``LORA`` or ``IA3`` config dict ``meta``
    (``targeting``: the shared targeting fields, read already).

    Example::

        >>> lora_config_from_peft({"peft_type": "LORA", "r": 8, "lora_alpha": 16}, {"target_modules": ["q_proj"]}).alpha
        16
    """
    if meta.get("peft_type") == "IA3":
        return LoRAConfig(
            r=1, alpha=1, composition_mode="scale", init_weights="ia3",
            feedforward_modules=_listed(meta.get("feedforward_modules")), **targeting,
        )
    return LoRAConfig(
        r=meta.get("r", 8),
        alpha=meta.get("lora_alpha", 8),
        dropout=meta.get("lora_dropout") or 0.0,
        rank_pattern=meta.get("rank_pattern") or {},
        alpha_pattern=meta.get("alpha_pattern") or {},
        use_rslora=meta.get("use_rslora") or False,
        use_dora=meta.get("use_dora") or False,
        bias=meta.get("bias") or "none",
        **targeting,
    )


def lora_key_from_peft(key: str, value: torch.Tensor, name: str):
    """``(our key, value)`` for a PEFT LoRA / DoRA / (IA)³ weight key (relative to the wrapped
    model), or None if it is none of theirs; (IA)³ input-scaling vectors ``(1, in)`` are
    transposed to ``(in, 1)``.

    Example::

        >>> lora_key_from_peft("model.layers.0.self_attn.q_proj.lora_A.weight", A, "a")[0]
        'model.layers.0.self_attn.q_proj.loras.a.lora_A'
    """
    match = _PEFT_LORA_KEY.match(re.sub(r"\.(lora_A|lora_B|lora_magnitude_vector|ia3_l)\.default(\.|$)", r".\1\2", key))
    if match is None:
        return None
    param = match.group("param").split(".")[0]
    if param == "ia3_l" and value.shape[0] == 1 and value.dim() == 2:
        value = value.t().contiguous()
    return f"{match.group('module')}.loras.{name}.{_PEFT_LORA_PARAMS[param]}", value


def _lora_host_to_peft(host, lora, path: str, config: LoRAConfig, weights: dict) -> int:
    """Adapter ``lora`` of ``host`` (at ``path``) in PEFT's keys, into ``weights``; returns the
    rank PEFT sees (1 for (IA)³)."""
    if config.composition_mode == "scale":
        vector = lora.lora_B.detach()
        if lora.out_index is not None:  # some parts of a fused projection: 1 on the others
            vector = vector.new_ones(lora.out_features, 1).index_copy(0, lora.out_index, vector)
        weights[f"{path}.ia3_l"] = (vector.t() if lora.scale_input else vector).contiguous()
        return 1
    lora_A, lora_B = lora.dense_factors()  # some parts of a fused projection: rank g·r over all of it
    weights[f"{path}.lora_A.weight"] = lora_A.detach()
    weights[f"{path}.lora_B.weight"] = lora_B.detach()
    if lora.use_dora:
        magnitude = lora.lora_magnitude.detach()
        if lora.out_index is not None:  # rows it does not cover: their own norm, i.e. scale 1
            norms = torch.linalg.norm(host.weight_out_in.detach().float(), dim=1).to(magnitude.dtype)
            magnitude = norms.index_copy(0, lora.out_index, magnitude)
        weights[f"{path}.lora_magnitude_vector"] = magnitude
    return lora_A.shape[0]


def lora_to_peft(model, name: str, config: LoRAConfig) -> tuple[dict, dict]:
    """``(fields, weights)`` of LoRA-family adapter ``name`` in PEFT's ``LORA`` (or, for (IA)³,
    ``IA3``) layout, weights keyed relative to the wrapped model. Module lists are written as exact
    module paths, and per-module ranks / alphas as escaped patterns, so PEFT rebuilds exactly the
    modules this adapter has.

    Raises:
        AdapterConfigError: the adapter is gated (PEFT has no gated LoRA).

    Example::

        >>> fields, weights = lora_to_peft(model, "lora", model.adapters_config.adapters["lora"])
    """
    if config.use_gating:
        raise AdapterConfigError(f"Adapter {name!r} is gated; PEFT has no gated LoRA, so it cannot be written in PEFT's format.")
    top_prefix = "" if model.base_model is model else model.base_model_prefix + "."
    paths = {id(m): top_prefix + p for p, m in model.base_model.named_modules()}
    hosts = [h for h in model._adapter_hosts if isinstance(h, LinearHost) and name in h.loras]
    targets, ranks, alphas, weights = [], {}, {}, {}
    for host in hosts:
        path, lora = paths[id(host)], host.loras[name]
        targets.append(path)
        rank = _lora_host_to_peft(host, lora, path, config, weights)
        if config.composition_mode == "scale":
            continue
        if rank != config.r:
            ranks[re.escape(path)] = rank
        alpha = lora.scaling * (rank ** 0.5 if config.use_rslora else rank)
        if abs(alpha - config.alpha) > 1e-9:
            alphas[re.escape(path)] = alpha
    for path, bias in lora_bias_parameters(model, name, config).items():
        weights[top_prefix + path] = bias.detach()
    fan_in_fan_out = any(host.fan_in_fan_out for host in hosts)  # transformers' Conv1D (GPT-2)
    if config.composition_mode == "scale":
        feedforward = [paths[id(h)] for h in hosts if h.loras[name].scale_input]
        fields = dict(peft_type="IA3", feedforward_modules=feedforward, init_ia3_weights=True, fan_in_fan_out=fan_in_fan_out)
    else:
        fields = dict(
            peft_type="LORA", r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, bias=config.bias,
            use_rslora=config.use_rslora, use_dora=config.use_dora, rank_pattern=ranks, alpha_pattern=alphas,
            fan_in_fan_out=fan_in_fan_out, init_lora_weights=True,
        )
    return {"target_modules": targets, **fields}, weights


def magnitudes_to_adapterhub(model, name: str, config, state: dict) -> dict:
    """``state`` with DoRA's magnitude vectors (``…loras.<name>.lora_magnitude``, ``d_out``) as
    AdapterHub stores them: the weight of a ``Linear(1, d_out)``, ``…loras.<name>.m.weight``
    (``d_out × 1``). The values are the same; only key and shape differ.

    Example::

        >>> magnitudes_to_adapterhub(model, "dora", config, {"q.loras.dora.lora_magnitude": m})
        {'q.loras.dora.m.weight': m[:, None]}
    """
    suffix = f".loras.{name}.lora_magnitude"
    return {
        (key[: -len("lora_magnitude")] + "m.weight" if key.endswith(suffix) else key): (
            value.detach().unsqueeze(1) if key.endswith(suffix) else value
        )
        for key, value in state.items()
    }


def magnitudes_from_adapterhub(model, name: str, config, state: dict, path: str = "") -> dict:
    """The inverse of :func:`magnitudes_to_adapterhub`: AdapterHub's ``…loras.<name>.m.weight``
    read as the magnitude vector; a checkpoint written by earlier versions of this library (with
    ``lora_magnitude`` keys) passes unchanged.

    Example::

        >>> magnitudes_from_adapterhub(model, "dora", config, {"q.loras.dora.m.weight": m})
        {'q.loras.dora.lora_magnitude': m.reshape(-1)}
    """
    suffix = f".loras.{name}.m.weight"
    return {
        (key[: -len("m.weight")] + "lora_magnitude" if key.endswith(suffix) else key): (
            value.reshape(-1) if key.endswith(suffix) else value
        )
        for key, value in state.items()
    }


LORA_PEFT = PeftMapping(
    "LORA", lora_config_from_peft, fields=_PEFT_LORA_FIELDS, field_names={"alpha": "lora_alpha", "dropout": "lora_dropout"},
    convert_key=lora_key_from_peft, write=lora_to_peft,
)


#: AdapterHub's name of the layer that holds LoRA modules (its ``loras`` ModuleDict): the suite finds LoRA
#: layers with ``isinstance(module, LoRALayer)``; here that layer is the swapped-in :class:`LinearHost`
LoRALayer = LinearHost


register(MethodFamily(
    name="lora", title="LoRA", blocks=LinearHost.supported_blocks, add=add_lora_modules, weight_delta=True,
    interface_method="lora", base_parameters=lora_bias_parameters, check_setup=check_saved_modules_in_setup,
    peft=LORA_PEFT, to_adapterhub=magnitudes_to_adapterhub, from_adapterhub=magnitudes_from_adapterhub,
))
