"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020; He et al., 2021).

A bottleneck adapter is a small residual MLP inserted after a sub-block (attention or FFN) of a
transformer layer. With ``h`` the sub-block output, ``x`` the residual stream entering it and
``LN`` the layer's own norm (absent in pre-LN layers, where the model adds ``x`` itself)::

    pre:     h̃ = LN(h + x)          if original_ln_before, else h
             r  = h (residual_before_ln=True), h + x ("post_add"), or h̃ (False)
    adapter: u  = s · f(LN_b(h̃) W_down + b_down) W_up + b_up        (s: scaling, f: non_linearity)
             a  = LN_a(g · u + r)                                    (g: optional gate)
    post:    y  = LN(a + x)          if original_ln_after, else a

A *parallel* adapter (``is_parallel``) reads the sub-block's input instead and adds to its
output: ``u = s · f(x W_down) W_up``, ``y = LN(u + h + x)``.

Where a pre-LN layer normalises the sub-block output before adding it (``y = x + N(h)``, Gemma's
sandwich norms; :attr:`~adapters.hooks.spec.ResidualHook.sublayer_norm`) the adapters run on ``h``
before ``N``, as AdapterHub places them: ``LN`` in the pre step is ``N``, and the post step is the
model's own ``y = x + N(a)``.

Compacter replaces ``W_down``/``W_up`` by PHM layers (:mod:`adapters.methods.phm`).

Composition (the engine is :class:`~adapters.hooks.engine.ComposableLayer`): ``Stack`` feeds
each adapter's output ``a`` into the next adapter's ``pre`` step; ``Fuse`` runs every child on
the last child's ``h̃`` and lets :class:`~adapters.methods.fusion.AdapterFusion` attend over
their ``u``; ``Average`` averages ``a`` (and ``u``); ``Split``/``BatchSplit``/``Parallel``
slice the sequence / batch. ``post`` of the last adapter finishes the block.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..composition import Average, BatchSplit, Fuse, MultiTask, Parallel, Split, Stack
from ..configuration.bottleneck import BnConfig
from ..configuration.fusion import AdapterFusionConfig
from ..context import ForwardContext
from ..errors import AdapterConfigError, CompositionError
from ..hooks.engine import ComposableLayer, choose_per_row
from ..hooks.patching import (
    NormOutputSlotMixin,
    PostNormHookMixin,
    ResidualSourceMixin,
    SublayerHookMixin,
    SublayerOutputHookMixin,
    swap_class,
)
from ..hooks.spec import ArchitectureSpec, ResidualHook, layer_stacks, stack_config, stack_configs
from .base import init_bert_weights, parameter_dtype
from .fusion import AdapterFusion
from .invertible import InvertibleAdapterMethods, add_invertible_adapter, move_embedding_host, uninstall_invertible
from .phm import PHMLayer, init_shared_parameters
from .registry import MethodFamily, register
from .. import logging

logger = logging.get_logger(__name__)

__all__ = [
    "Adapter", "ParallelAdapter", "BottleneckLayer", "BottleneckState", "BottleneckHost", "install_bottleneck_hosts",
    "check_bottleneck_config", "check_bottleneck_fusion", "add_bottleneck_modules", "freeze_fixed_phm_rules",
]


class BottleneckState(NamedTuple):
    """What flows through the composition engine at a bottleneck host.

    ``hidden_states``: the current output; ``input_tensor``: the residual stream ``x``;
    ``adapter_residual``: the residual of the adapter being applied; ``layer_norm``: the layer's
    own norm (None in pre-LN layers); ``bottleneck_up``: the last adapter's ``u``; ``last``: the
    name of the last adapter applied (its config decides the ``post`` step).
    """

    hidden_states: torch.Tensor
    input_tensor: torch.Tensor
    adapter_residual: torch.Tensor
    layer_norm: Any
    bottleneck_up: torch.Tensor | None = None
    last: str | None = None


class _Segments(NamedTuple):
    """``BottleneckState.last`` after a batch / sequence split whose parts ended with different
    adapters: ``parts`` are ``(size, last)`` along ``dim``."""

    dim: int
    parts: tuple


class _Permuted:
    """``BottleneckState.last`` after a ``MultiTask`` put the rows back in their order: row ``i``
    is row ``order[i]`` of a state whose ``last`` is ``inner`` (``inverse`` undoes ``order``)."""

    __slots__ = ("order", "inverse", "inner")

    def __init__(self, order: torch.Tensor, inverse: torch.Tensor, inner):
        self.order, self.inverse, self.inner = order, inverse, inner

    def as_runs(self):
        """The same ``last`` as runs of consecutive rows (:class:`_Segments` along the batch)."""
        parts: list = []
        for row in self.order.tolist():
            row_last = _slice_segments(self.inner, 0, row, row + 1)
            if parts and parts[-1][1] == row_last:
                parts[-1] = (parts[-1][0] + 1, row_last)
            else:
                parts.append((1, row_last))
        return parts[0][1] if len(parts) == 1 else _Segments(0, tuple(parts))


class _Chosen:
    """``BottleneckState.last`` after a ``MultiTask`` in a compiled graph, where every child ran
    on every row: row ``b`` ends as ``lasts[positions[b]]`` says (``positions``: a tensor, never
    read on the host). Compared by identity, like :class:`_Permuted`."""

    __slots__ = ("positions", "lasts")

    def __init__(self, positions: torch.Tensor, lasts: tuple):
        self.positions, self.lasts = positions, lasts


def _permuted_last(last, order: torch.Tensor, inverse: torch.Tensor):
    """``last`` for the rows ``order`` of its state (see :class:`_Permuted`)."""
    if isinstance(last, _Chosen):
        return _Chosen(last.positions.index_select(0, order), tuple(_permuted_last(part, order, inverse) for part in last.lasts))
    if isinstance(last, _Permuted):
        return _Permuted(last.order.index_select(0, order), inverse.index_select(0, last.inverse), last.inner)
    return _Permuted(order, inverse, last) if isinstance(last, _Segments) else last


def _slice_segments(last, dim: int, start: int, end: int):
    """``last`` (an adapter name, None or :class:`_Segments`) for the part ``start … end`` along ``dim``."""
    if isinstance(last, _Chosen):  # each candidate covers every row: cut each, and the choice
        positions = last.positions.narrow(0, start, end - start) if dim == 0 else last.positions
        return _Chosen(positions, tuple(_slice_segments(part, dim, start, end) for part in last.lasts))
    if isinstance(last, _Permuted):
        last = last.as_runs()
    if not isinstance(last, _Segments):
        return last
    parts, offset = [], 0
    for size, part_last in last.parts:
        if last.dim != dim:  # parts along the other dimension: each is cut alike
            parts.append((size, _slice_segments(part_last, dim, start, end)))
            continue
        low, high = max(start, offset), min(end, offset + size)
        if high > low:
            parts.append((high - low, _slice_segments(part_last, dim, low - offset, high - offset)))
        offset += size
    if len(parts) == 1 and last.dim == dim:
        return parts[0][1]
    return _Segments(last.dim, tuple(parts)) if parts else None


class Adapter(nn.Module):
    """One sequential bottleneck adapter (see the module docstring for the math).

    Args:
        input_size: the hidden size.
        down_sample: the bottleneck size.
        config: a :class:`~adapters.BnConfig`.
        shared_parameters: Compacter's shared PHM parameters of this adapter (or None).

    Example::

        >>> adapter = Adapter(64, 4, SeqBnConfig())
        >>> out, down, up = adapter(torch.randn(2, 5, 64), residual_input=torch.zeros(2, 5, 64))
    """

    def __init__(self, input_size: int, down_sample: int, config: BnConfig, shared_parameters=None):
        super().__init__()
        self.config = config
        self.input_size = input_size
        self.down_sample = max(int(down_sample), 1)
        self.original_ln_before = config.original_ln_before
        self.original_ln_after = config.original_ln_after
        self.residual_before_ln = config.residual_before_ln
        self.adapter_residual_before_ln = config.adapter_residual_before_ln
        self.use_gating = config.use_gating

        down: list[nn.Module] = []
        if config.ln_before:
            self.adapter_norm_before = nn.LayerNorm(input_size)
            down.append(self.adapter_norm_before)
        if config.phm_layer:
            down.append(PHMLayer(input_size, self.down_sample, "down", config, shared_parameters))
            self.adapter_up = PHMLayer(self.down_sample, input_size, "up", config, shared_parameters)
        else:
            down.append(nn.Linear(input_size, self.down_sample))
            self.adapter_up = nn.Linear(self.down_sample, input_size)
        down.append(ACT2FN[config.non_linearity.lower()])
        self.adapter_down = nn.Sequential(*down)

        if isinstance(config.scaling, (int, float)):
            self.scaling = float(config.scaling)
        elif config.scaling == "learned":
            self.scaling = nn.Parameter(torch.ones(1))
        else:  # "channel"
            self.scaling = nn.Parameter(torch.ones(input_size))
        if config.ln_after:
            self.adapter_norm_after = nn.LayerNorm(input_size)
        if config.use_gating:
            self.gate = nn.Linear(input_size, 1)
        self.dropout = nn.Dropout(config.dropout)
        self.stochastic_depth = config.stochastic_depth
        self._init_weights(config)

    def _init_weights(self, config: BnConfig) -> None:
        down_linear = self.adapter_down[1 if config.ln_before else 0]
        with torch.no_grad():
            if config.init_weights == "bert":
                self.adapter_down.apply(init_bert_weights)
                self.adapter_up.apply(init_bert_weights)
            elif config.init_weights == "mam_adapter":
                if isinstance(down_linear, nn.Linear):
                    nn.init.kaiming_uniform_(down_linear.weight, a=math.sqrt(5))
                    nn.init.zeros_(down_linear.bias)
                self._zero_up()
            else:  # "houlsby"
                for linear in (down_linear, self.adapter_up):
                    if isinstance(linear, nn.Linear):
                        nn.init.trunc_normal_(linear.weight, mean=0.0, std=1e-2, a=-2e-2, b=2e-2)
                        nn.init.zeros_(linear.bias)
            if self.use_gating:
                init_bert_weights(self.gate)

    def _zero_up(self) -> None:
        """Make ``u = 0`` so the adapter starts as the identity."""
        for param in self.adapter_up.parameters(recurse=False):
            if param is not None and param.dim() > 0 and param is not getattr(self.adapter_up, "phm_rule", None):
                nn.init.zeros_(param)

    # -- the three steps -------------------------------------------------------------------------
    def pre_forward(self, hidden_states, input_tensor, layer_norm, fusion_config: AdapterFusionConfig | None = None):
        """Returns ``(h̃, query, r)``: the adapter input, the fusion query and the adapter residual."""
        query = hidden_states if fusion_config is not None and fusion_config.query_before_ln else None
        residual = hidden_states if self.residual_before_ln is True else None
        if self.original_ln_before:
            hidden_states = hidden_states + input_tensor
            if self.residual_before_ln == "post_add":
                residual = hidden_states
            if layer_norm is not None:
                hidden_states = layer_norm(hidden_states)
        if self.residual_before_ln is False:
            residual = hidden_states
        if fusion_config is not None and not fusion_config.query_before_ln:
            query = hidden_states
        if residual is None:  # "post_add" without original_ln_before
            residual = hidden_states
        return hidden_states, query, residual

    def bottleneck(self, x: torch.Tensor):
        """``(down, up, output, gate)``: the down projection ``f(LN_b(x) W_down + b_down)``; ``u``,
        the scaled up projection (what fusion attends over); ``u`` after dropout, stochastic depth
        and the gate (what the adapter adds to its residual); and the gate ``g`` (None without
        ``use_gating``).

        Example::

            >>> down, up, output, gate = adapter.bottleneck(torch.randn(2, 5, 64))
        """
        down = self.adapter_down(x)
        up = self.adapter_up(down)
        if not (isinstance(self.scaling, float) and self.scaling == 1.0):
            up = up * self.scaling
        output = self.dropout(up) if self.dropout.p > 0 else up
        if self.stochastic_depth and self.training:
            keep = 1.0 - self.stochastic_depth
            mask = torch.bernoulli(torch.full((x.shape[0],) + (1,) * (x.dim() - 1), keep, device=x.device))
            output = output * mask.to(output.dtype) / keep
        gate = None
        if self.use_gating:
            gate = torch.sigmoid(self.gate(x)).mean(dim=1).unsqueeze(-1)
            output = output * gate
        return down, up, output, gate

    def forward(self, x, residual_input, output_gating: bool = False):
        """Returns ``(a, down, u)`` (plus the gate when ``output_gating``)."""
        down, up, output, gate = self.bottleneck(x)
        if self.adapter_residual_before_ln:
            output = output + residual_input
        if hasattr(self, "adapter_norm_after"):
            output = self.adapter_norm_after(output)
        if not self.adapter_residual_before_ln:
            output = output + residual_input
        return (output, down, up, gate) if output_gating and gate is not None else (output, down, up)

    def post_forward(self, hidden_states, input_hidden_states, input_tensor, layer_norm, residual_added_by_model=False):
        """Finish the block: ``LN(a + x)`` if original_ln_after, else ``a``.

        With ``residual_added_by_model`` (pre-LN layers) the model adds ``x`` after this hook, so
        the value returned is the one that yields ``y`` once ``x`` is added.
        """
        if self.original_ln_after:
            if layer_norm is not None:
                return layer_norm(hidden_states + input_tensor)
            return hidden_states if residual_added_by_model else hidden_states + input_tensor
        return hidden_states - input_tensor if residual_added_by_model else hidden_states

    def pre_norm_output(self, hidden_states, input_hidden_states):
        """Where a post-LN model adds ``x`` and applies its norm itself after the hook: the ``s``
        whose ``LN(s + x)`` is :meth:`post_forward`'s result (``s = a`` for original_ln_after), or
        None where the result is not of that form (original_ln_after=False: ``y = a``).

        Example::

            >>> adapter.pre_norm_output(a, h)       # SeqBnConfig: original_ln_after=True
            a
        """
        return hidden_states if self.original_ln_after else None


class ParallelAdapter(Adapter):
    """A parallel bottleneck adapter (He et al., 2021): reads the sub-block input ``x``, its
    output ``u`` is added to the sub-block output: ``y = LN(u + h + x)``.

    Example::

        >>> adapter = ParallelAdapter(64, 32, ParBnConfig())
    """

    def pre_forward(self, hidden_states, input_tensor, layer_norm, fusion_config=None):
        return input_tensor, (input_tensor if fusion_config is not None else None), input_tensor

    def forward(self, x, residual_input, output_gating: bool = False):
        down, up, output, gate = self.bottleneck(x)
        if hasattr(self, "adapter_norm_after"):
            output = self.adapter_norm_after(output)
        return (output, down, up, gate) if output_gating and gate is not None else (output, down, up)

    def post_forward(self, hidden_states, input_hidden_states, input_tensor, layer_norm, residual_added_by_model=False):
        return super().post_forward(
            hidden_states + input_hidden_states, input_hidden_states, input_tensor, layer_norm, residual_added_by_model
        )

    def pre_norm_output(self, hidden_states, input_hidden_states):
        """``u + h`` (the model's norm then computes ``LN(u + h + x)``), or None where
        original_ln_after is False. See :meth:`Adapter.pre_norm_output`.

        Example::

            >>> adapter.pre_norm_output(u, h)       # ParBnConfig
        """
        return super().pre_norm_output(hidden_states + input_hidden_states, input_hidden_states)


class BottleneckLayer(ComposableLayer):
    """Host of the bottleneck adapters and fusion layers at one position of one layer.

    Mixed into the module that owns the position when the architecture keeps adapters there
    (BERT's ``BertOutput``: keys ``...output.adapters.<name>``), or used as a standalone child
    module (``...output_adapters.adapters.<name>`` in Llama/DistilBERT layers).

    Example::

        >>> host = model.layers[0].output_adapters
        >>> host.adapters["a"]
        Adapter(...)
    """

    method = "bottleneck"
    supports_fusion = True
    supported_blocks = (Stack, Parallel, Fuse, Split, BatchSplit, Average, MultiTask)
    BATCH_FIELDS = ("hidden_states", "input_tensor", "adapter_residual", "bottleneck_up")
    SEQUENCE_FIELDS = BATCH_FIELDS

    def init_adapter_layer(self, layer_idx: int, location: str, model_config, shared_parameters) -> None:
        """Called once when the model is patched."""
        self._init_composable(layer_idx, location)
        self.adapters = nn.ModuleDict()
        self.adapter_fusion_layer = nn.ModuleDict()
        self.__dict__["_hidden_size"] = model_config.hidden_size
        self.__dict__["_attention_dropout"] = float(
            getattr(model_config, "attention_probs_dropout_prob", getattr(model_config, "attention_dropout", 0.0)) or 0.0
        )
        self.__dict__["_shared_parameters"] = shared_parameters

    def adapter_names(self) -> set[str]:
        return set(self.adapters.keys())

    # -- management ------------------------------------------------------------------------------
    def wants_adapter(self, config: BnConfig) -> bool:
        """Whether an adapter with ``config`` has a module at this position."""
        if self.layer_idx in config.leave_out:
            return False
        if self.location == "cross_adapter":
            return config.cross_adapter
        return bool(getattr(config, self.location))

    def add_adapter(self, name: str, config: BnConfig) -> bool:
        """Create adapter ``name`` here if its config places one here; returns whether it did."""
        if not self.wants_adapter(config):
            return False
        factor = config.reduction_factor_for(self.layer_idx)
        down_sample = int(self._hidden_size // factor)
        adapter_class = ParallelAdapter if config.is_parallel else Adapter
        with torch.random.fork_rng(enabled=config.init_weights_seed is not None):
            if config.init_weights_seed is not None:
                torch.manual_seed(config.init_weights_seed)
            shared = self._shared_parameters[name] if config.phm_layer and name in self._shared_parameters else None
            adapter = adapter_class(self._hidden_size, down_sample, config, shared_parameters=shared)
        self.adapters[name] = adapter
        self._invalidate_setup_cache()
        return True

    def delete_adapter(self, name: str) -> None:
        if name in self.adapters:
            del self.adapters[name]
            self._invalidate_setup_cache()

    def add_fusion_layer(self, fusion_name: str, adapter_names, config: AdapterFusionConfig) -> bool:
        """Create the fusion layer ``fusion_name`` here if any of its adapters is here."""
        if not set(adapter_names) & set(self.adapters.keys()):
            return False
        self.adapter_fusion_layer[fusion_name] = AdapterFusion(config, self._hidden_size, self._attention_dropout)
        self._invalidate_setup_cache()
        return True

    def delete_fusion_layer(self, fusion_name: str) -> None:
        if fusion_name in self.adapter_fusion_layer:
            del self.adapter_fusion_layer[fusion_name]
            self._invalidate_setup_cache()

    # -- forward -----------------------------------------------------------------------------------
    def bottleneck_layer_forward(
        self, setup, hidden_states, residual_input, layer_norm, residual_added_by_model=False, norm_follows=False
    ):
        """Run ``setup`` on sub-block output ``hidden_states`` with residual stream ``residual_input``.

        Returns the block output (see :meth:`Adapter.post_forward`). With ``norm_follows`` (a
        post-LN hook on ``h`` itself, before the model computes ``layer_norm(· + x)``) returns
        ``(pre_norm, block_output)``, one of them None: ``pre_norm`` where the model's own residual
        add and norm finish the block exactly as the ``post`` step would (every part of the batch /
        sequence ends with an original_ln_after adapter or with none, in the sub-block's dtype),
        else ``block_output`` for the norm to return instead of its own.

        Example::

            >>> host.bottleneck_layer_forward(host.active_setup(), h, x, layer_norm)   # post-LN: LN(a + x)
        """
        # a norm the model applies after this position (ResidualHook.sublayer_norm, Gemma's sandwich
        # norms): the adapters' LN(h + x) step reads it, while the model's own x + N(·) after the hook
        # stays their post step (layer_norm None below)
        sublayer_norm = self.__dict__.get("_sublayer_norm")
        state = BottleneckState(hidden_states, residual_input, hidden_states, layer_norm if sublayer_norm is None else sublayer_norm)
        state = self.compose(setup, state)
        if norm_follows:
            pre_norm = self._pre_norm(state.last, state.hidden_states, hidden_states)
            if pre_norm is not None and pre_norm.dtype == hidden_states.dtype:
                return pre_norm, None
        output = self._finish(state.last, state.hidden_states, hidden_states, state.input_tensor, layer_norm, residual_added_by_model)
        # adapters compute in their own dtype (see _run_adapter); the block keeps the sub-block's
        output = output if output.dtype == hidden_states.dtype else output.to(hidden_states.dtype)
        return (None, output) if norm_follows else output

    def _pre_norm(self, last, hidden_states, input_hidden_states):
        """What the model's own ``norm(· + x)`` must receive to finish each part of the batch /
        sequence as :meth:`_finish` would, or None if some part's ``post`` step is not of that form."""
        if isinstance(last, _Chosen):  # a compiled MultiTask: each row as its own child would
            values = [self._pre_norm(part, hidden_states, input_hidden_states) for part in last.lasts]
            return None if any(v is None for v in values) else choose_per_row(values, last.positions)
        if isinstance(last, _Permuted):  # rows a MultiTask routed: finish them in the inner order
            value = self._pre_norm(last.inner, hidden_states.index_select(0, last.inverse), input_hidden_states.index_select(0, last.inverse))
            return None if value is None else value.index_select(0, last.order)
        if isinstance(last, _Segments):
            parts, start, unchanged = [], 0, True
            for size, part_last in last.parts:
                part = hidden_states.narrow(last.dim, start, size)
                value = self._pre_norm(part_last, part, input_hidden_states.narrow(last.dim, start, size))
                if value is None:
                    return None
                unchanged = unchanged and value is part
                parts.append(value)
                start += size
            # every part hands on its own rows as they are (sequential adapters, untouched rows): no copy
            return hidden_states if unchanged else torch.cat(parts, dim=last.dim)
        if last is None:  # rows or tokens no adapter touched: the layer's own norm(h + x)
            return hidden_states
        return self.adapters[last].pre_norm_output(hidden_states, input_hidden_states)

    def _finish(self, last, hidden_states, input_hidden_states, residual, layer_norm, residual_added_by_model):
        """The ``post`` step of the adapter that ended each part of the batch / sequence."""
        if isinstance(last, _Chosen):  # a compiled MultiTask: each row as its own child would
            finished = [
                self._finish(part, hidden_states, input_hidden_states, residual, layer_norm, residual_added_by_model)
                for part in last.lasts
            ]
            return choose_per_row(finished, last.positions)
        if isinstance(last, _Permuted):  # rows a MultiTask routed: finish them in the inner order
            inner = [t.index_select(0, last.inverse) for t in (hidden_states, input_hidden_states, residual)]
            return self._finish(last.inner, *inner, layer_norm, residual_added_by_model).index_select(0, last.order)
        if isinstance(last, _Segments):
            outputs, start = [], 0
            for size, part_last in last.parts:
                part = [t.narrow(last.dim, start, size) for t in (hidden_states, input_hidden_states, residual)]
                outputs.append(self._finish(part_last, *part, layer_norm, residual_added_by_model))
                start += size
            return torch.cat(outputs, dim=last.dim)
        if last is None:  # rows or tokens no adapter touched: the layer's own residual step
            if layer_norm is not None:
                return layer_norm(hidden_states + residual)
            return hidden_states if residual_added_by_model else hidden_states + residual
        return self.adapters[last].post_forward(hidden_states, input_hidden_states, residual, layer_norm, residual_added_by_model)

    @staticmethod
    def slice_state(state: BottleneckState, fields, dim: int, start: int, end: int) -> BottleneckState:
        """The rows / tokens ``start … end`` of a state, with the ``post`` steps of earlier parts
        (``last``, a :class:`_Segments` after a split) cut to them as well."""
        sliced = ComposableLayer.slice_state(state, fields, dim, start, end)
        return sliced._replace(last=_slice_segments(state.last, dim, start, end))

    def permute_rows(self, state: BottleneckState, order: torch.Tensor, inverse: torch.Tensor) -> BottleneckState:
        """The rows ``order`` of a state; the ``post`` steps of parts that ended differently follow
        their rows (``last`` becomes a :class:`_Permuted`)."""
        permuted = ComposableLayer.select_rows(state, self.BATCH_FIELDS, order)
        return permuted._replace(last=_permuted_last(state.last, order, inverse))

    def choose_rows(self, states, positions: torch.Tensor, start: BottleneckState) -> BottleneckState:
        """Each row from its own child's state (a compiled ``MultiTask``); children that ended with
        different adapters keep their own ``post`` step per row (``last`` becomes a :class:`_Chosen`)."""
        chosen = ComposableLayer.choose_rows(self, states, positions, start)
        lasts = tuple(s.last for s in states)
        if all(last == lasts[0] for last in lasts) and not isinstance(lasts[0], (_Segments, _Chosen, _Permuted)):
            return chosen._replace(last=lasts[0])
        return chosen._replace(last=_Chosen(positions, lasts))

    def cat_states(self, states, fields, dim: int, template=None) -> BottleneckState:
        """Concatenate branch states; branches that ended with different adapters keep their own
        ``post`` step (a sequential and a parallel adapter finish differently)."""
        ups = [s.bottleneck_up for s in states]
        if any(up is None for up in ups) and any(up is not None for up in ups):
            # parts no adapter touched (tokens past a Split, absent children) contribute u = 0, so the
            # parts join (an enclosing Parallel, Average or Fuse reads u of the whole batch / sequence)
            states = [s if s.bottleneck_up is not None else s._replace(bottleneck_up=torch.zeros_like(s.hidden_states)) for s in states]
        merged = ComposableLayer.cat_states(states, fields, dim, template)
        lasts = [s.last for s in states]
        # parts that ended differently, or parts cut themselves (a _Segments covers its own rows only)
        if any(last != lasts[0] for last in lasts) or isinstance(lasts[0], (_Segments, _Chosen)):
            sizes = [s.hidden_states.shape[dim] for s in states]
            merged = merged._replace(last=_Segments(dim, tuple(zip(sizes, lasts))))
        return merged

    def _run_adapter(self, name: str, hidden_states, residual):
        adapter = self.adapters[name]
        dtype = next(adapter.parameters()).dtype
        # a float32 adapter on a half-precision model (autocast_adapter_dtype) computes in float32;
        # its output returns to the sub-block's dtype, in which the model's norms and residuals run
        activation_dtype = hidden_states.dtype
        if hidden_states.dtype != dtype or residual.dtype != dtype:
            # mixed precision at the hook: T5 in float16 keeps its FFN output projection (``wo``) in
            # float32, so the sub-block output arrives in float32 beside a float16 residual stream
            hidden_states, residual = hidden_states.to(dtype), residual.to(dtype)
        context = ForwardContext.get_context()
        gating = context is not None and context.output_adapter_gating_scores
        output = adapter(hidden_states, residual_input=residual, output_gating=gating)
        if gating and len(output) == 4:
            scores = context.adapter_gating_scores.setdefault(name, {}).setdefault(self.layer_idx, {})
            scores[self.location] = output[3].detach()
        return output[0].to(activation_dtype), output[2]

    def compose_single(self, name: str, state: BottleneckState) -> BottleneckState:
        adapter = self.adapters[name]
        hidden_states, _, residual = adapter.pre_forward(state.hidden_states, state.input_tensor, state.layer_norm)
        output, up = self._run_adapter(name, hidden_states, residual)
        return state._replace(hidden_states=output, adapter_residual=residual, bottleneck_up=up, last=name)

    def compose_fuse(self, setup, state: BottleneckState) -> BottleneckState:
        if setup.name not in self.adapter_fusion_layer:
            context = ForwardContext.get_context()
            registry = context.registry if context is not None else None
            fused = registry.fusions.get(setup.name, (None, ()))[1] if registry is not None else ()
            if fused and not set(fused) & set(self.adapters.keys()):
                # none of the fused adapters is here (leave_out), only earlier members of a Stack
                # child: like a Fuse whose adapters are all absent, the block passes this position by
                return state
            raise CompositionError(
                f"No fusion layer {setup.name!r} at layer {self.layer_idx} ({self.location}); "
                f"add it with model.add_adapter_fusion(Fuse({', '.join(map(repr, setup.name.split(',')))}))."
            )
        fusion = self.adapter_fusion_layer[setup.name]
        last = setup.last()
        hidden_states, query, residual = self.adapters[last].pre_forward(
            state.hidden_states, state.input_tensor, state.layer_norm, fusion_config=fusion.config
        )
        ups = []
        for child in setup.children:
            if isinstance(child, str):
                ups.append(self._run_adapter(child, hidden_states, residual)[1])
            else:
                child_state = self.compose(child, state._replace(hidden_states=hidden_states, adapter_residual=residual))
                ups.append(child_state.bottleneck_up)
        # the fusion computes in its own dtype (float32 on a half-precision model: autocast_adapter_dtype)
        # and its output returns to the activations' dtype
        dtype = parameter_dtype(fusion) or ups[-1].dtype
        ups = torch.stack([up.to(dtype) for up in ups], dim=2)
        context = ForwardContext.get_context()
        if context is not None and context.output_adapter_fusion_attentions:
            fused, attentions = fusion(query.to(dtype), ups, ups, residual.to(dtype), output_attentions=True)
            per_layer = context.adapter_fusion_attentions.setdefault(setup.name, {}).setdefault(self.layer_idx, {})
            per_layer[self.location] = attentions
        else:
            fused = fusion(query.to(dtype), ups, ups, residual.to(dtype))
        fused = fused.to(hidden_states.dtype)
        # u of the block: its last child's (what an enclosing Fuse or Average reads, as for a Stack)
        return state._replace(hidden_states=fused, adapter_residual=residual, bottleneck_up=ups[:, :, -1], last=last)

    def mean(self, states, weights, start) -> BottleneckState:
        def weighted(field):
            values = [getattr(s, field) for s in states]
            if all(value is None for value in values):
                return None
            values = [torch.zeros_like(s.hidden_states) if value is None else value for s, value in zip(states, values)]
            total = values[0] * weights[0]
            for value, weight in zip(values[1:], weights[1:]):
                total = total + value * weight
            return total

        return states[-1]._replace(hidden_states=weighted("hidden_states"), bottleneck_up=weighted("bottleneck_up"))


class BottleneckHost(BottleneckLayer, nn.Module):
    """A standalone host module (``attention_adapters`` / ``output_adapters``); never called."""

    def __init__(self):
        nn.Module.__init__(self)

    def forward(self, *args, **kwargs):  # pragma: no cover - hosts are driven by the hook mixins
        raise RuntimeError("BottleneckHost is driven by the layer's hooks and is not called directly.")


def install_residual_hook(layer: nn.Module, hook: ResidualHook, layer_idx: int, model_config, shared_parameters):
    """Give ``layer`` the bottleneck position ``hook``; returns its host."""
    if hook.create_host:
        host = BottleneckHost()
        parent, _, name = hook.host.rpartition(".")  # a nested host: ALBERT's attention.attention_adapters
        layer.get_submodule(parent).add_module(name, host)  # get_submodule("") is the layer itself
    else:
        host = layer.get_submodule(hook.host)
        swap_class(host, BottleneckLayer)
    host.init_adapter_layer(layer_idx, hook.location, model_config, shared_parameters)
    if hook.sublayer_norm is not None:  # kept out of the module tree: the norm stays the layer's (no new keys)
        host.__dict__["_sublayer_norm"] = layer.get_submodule(hook.sublayer_norm)

    source = layer.get_submodule(hook.residual_source)
    swap_class(source, ResidualSourceMixin)
    slots = source.__dict__.setdefault("_adapter_residual_slots", [])
    # no residual stream at this position (hook.no_residual): the source hands over x = 0
    slots.append((host, None, None) if hook.no_residual else (host, hook.residual_arg, hook.residual_kwarg))

    if hook.sublayer_output is not None:  # post-LN with h named: the adapters run on h itself
        norm = layer.get_submodule(hook.norm)
        swap_class(norm, NormOutputSlotMixin)
        target = layer.get_submodule(hook.sublayer_output)
        swap_class(target, SublayerOutputHookMixin)
        target.__dict__["_adapter_norm"] = norm
    else:
        target = layer.get_submodule(hook.norm or hook.sublayer)
        swap_class(target, PostNormHookMixin if hook.norm else SublayerHookMixin)
        if hook.sublayer:  # a module ending several sub-blocks (BEiT's drop_path) serves each of their hosts
            target.__dict__.setdefault("_adapter_sublayer_hosts", []).append(host)
    target.__dict__["_adapter_host"] = host
    return host


def install_bottleneck_hosts(base_model: nn.Module, spec: ArchitectureSpec, shared_parameters) -> list:
    """Install every residual hook of ``spec`` in every layer of every stack (encoder and decoder
    of an encoder-decoder family, CLIP's two towers; numbered as AdapterHub numbers them), each
    sized by its stack's config; returns the hosts."""
    hosts = []
    for stack, first, layers in layer_stacks(base_model, spec):
        config = stack_config(base_model.config, stack)
        for offset, layer in enumerate(layers):
            for hook in stack.residual_hooks:
                hosts.append(install_residual_hook(layer, hook, first + offset, config, shared_parameters))
                if hook.residual_from is not None:  # the earlier sub-block hands its adapted stream on
                    earlier = next(h for h in stack.residual_hooks if h.location == hook.residual_from)
                    sublayer = layer.get_submodule(earlier.sublayer)
                    sublayer.__dict__.setdefault("_adapter_stream_successors", []).append(hosts[-1])
    return hosts


# -- the bottleneck family on a model: checks, creation, training, registration ------------------------


def check_bottleneck_config(model, config: BnConfig) -> None:
    """Refuse a bottleneck config whose sizes do not fit the model: a Compacter ``phm_dim`` that
    does not divide the sizes, or shared PHM weights across layer stacks of different widths. A
    reduction factor that leaves no bottleneck makes it 1 wide, as AdapterHub does, with a warning.

    Example::

        >>> check_bottleneck_config(model, CompacterConfig(phm_dim=5))   # raises: 5 divides no width
    """
    spec = model.__dict__["_adapters_spec"]
    layer_configs = stack_configs(model.base_model, spec)  # per layer (CLIP: per tower)
    widths = {c.hidden_size for c in layer_configs}
    if config.phm_layer and config.shared_W_phm and len(widths) > 1:
        raise AdapterConfigError(
            f"Compacter with shared_W_phm=True shares one pair of PHM weights across all layers, but "
            f"{spec.name}'s layer stacks differ in hidden size ({', '.join(map(str, sorted(widths)))}); use "
            f"shared_W_phm=False (the default; the shared PHM rules fit every width)."
        )
    before_norm = [h for h in model._adapter_hosts
                   if isinstance(h, BottleneckLayer) and "_sublayer_norm" in h.__dict__ and h.wants_adapter(config)]
    if before_norm and not config.original_ln_after:
        raise AdapterConfigError(
            f"original_ln_after=False makes the adapter's output the block output, but on {spec.name} the adapters at "
            f"{before_norm[0].location} run before the layer's own norm, which the model applies to their output and adds "
            f"to the residual stream itself (ResidualHook.sublayer_norm, as in AdapterHub, which refuses it too); use "
            f"original_ln_after=True."
        )
    narrow = []
    for layer, layer_config in enumerate(layer_configs):
        hidden = layer_config.hidden_size
        size = int(hidden // config.reduction_factor_for(layer))
        if size < 1:  # AdapterHub's rule: a bottleneck is at least 1 wide (its checkpoints rely on it)
            narrow.append((layer, hidden, config.reduction_factor_for(layer)))
            size = 1
        if config.phm_layer and (hidden % config.phm_dim or size % config.phm_dim):
            raise AdapterConfigError(
                f"Compacter needs phm_dim={config.phm_dim} to divide the hidden size ({hidden}) and the "
                f"bottleneck size ({size}); pick another phm_dim or reduction_factor."
            )
    if narrow:
        layer, hidden, factor = narrow[0]
        logger.warning(
            f"reduction_factor={factor!r} leaves no bottleneck for hidden size {hidden} (layer {layer}"
            f"{f' and {len(narrow) - 1} more' if len(narrow) > 1 else ''}); the bottleneck is 1 wide there, as in "
            f"AdapterHub. Use a reduction_factor of at most {hidden} for a wider one."
        )


def check_bottleneck_fusion(names: list, configs: list) -> None:
    """Refuse fusing bottleneck adapters that sit at different positions of the layer (after
    attention, after the FFN): at a position where only some of them are, the fusion would attend
    over a subset (AdapterHub refuses such a fusion too).

    Example::

        >>> check_bottleneck_fusion(["a", "b"], [SeqBnConfig(), DoubleSeqBnConfig()])   # raises
    """
    for position in ("mh_adapter", "output_adapter"):
        values = {name: bool(getattr(config, position)) for name, config in zip(names, configs)}
        if len(set(values.values())) > 1:
            raise AdapterConfigError(
                f"Cannot fuse {names}: they differ in {position} ({values}); AdapterFusion needs the fused bottleneck "
                f"adapters at the same positions of the layer (the same mh_adapter and output_adapter)."
            )


def add_bottleneck_modules(model, name: str, config: BnConfig, device, dtype) -> bool:
    """Create adapter ``name`` at every bottleneck host whose position and layer ``config``
    covers (plus its shared PHM parameters and its invertible block, if it has them); returns
    whether any host took it.

    Example::

        >>> add_bottleneck_modules(model, "task", SeqBnConfig(), "cpu", torch.float32)
        True
    """
    if config.phm_layer:
        hidden_size = stack_configs(model.base_model, model.__dict__["_adapters_spec"])[0].hidden_size
        model._shared_parameters[name] = init_shared_parameters(config, hidden_size).to(device=device, dtype=dtype)
    if config.inv_adapter:
        add_invertible_adapter(model, name, config, device, dtype)
    added = False
    for host in model._adapter_hosts:
        if isinstance(host, BottleneckLayer) and host.add_adapter(name, config):
            host.adapters[name].to(device=device, dtype=dtype).train(model.training)
            added = True
    return added


def freeze_fixed_phm_rules(model, name: str, config: BnConfig) -> None:
    """Compacter with ``learn_phm=False`` keeps its PHM rules fixed while the adapter trains.

    Example::

        >>> freeze_fixed_phm_rules(model, "compacter", CompacterConfig(learn_phm=False))
    """
    if not (config.phm_layer and not config.learn_phm):
        return
    modules = [m for layer in model.get_adapter(name).values() for m in layer.values()]
    if name in model._shared_parameters:
        modules.append(model._shared_parameters[name])
    for module in modules:
        for param_name, param in module.named_parameters():
            if param_name.rsplit(".", 1)[-1].startswith("phm_rule"):
                param.requires_grad_(False)


register(MethodFamily(
    name="bottleneck", title="Bottleneck adapters", blocks=BottleneckLayer.supported_blocks, add=add_bottleneck_modules,
    check=check_bottleneck_config, check_fusion=check_bottleneck_fusion, on_init=install_bottleneck_hosts, remove_unused=uninstall_invertible,
    on_train=freeze_fixed_phm_rules,
    embeddings_replaced=move_embedding_host, fusable=True, interface_method="bottleneck",
    model_mixin=InvertibleAdapterMethods,
))
