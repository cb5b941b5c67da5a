"""ReFT, representation finetuning (Wu et al., 2024, "ReFT: Representation Finetuning for Language
Models"): instead of changing weights, edit the hidden representations a layer outputs, at a few
token positions.

**The intervention.** For a hidden state ``h ∈ R^d`` a rank-``r`` intervention is

    Φ(h) = h + Rᵀ (φ(W h + b) − R h)          (LoReFT, NoReFT: ``subtract_projection``)
    Φ(h) = h + Rᵀ  φ(W h + b)                 (DiReFT)

with ``W ∈ R^{r×d}``, ``b ∈ R^r`` (``learned_source``), ``R ∈ R^{r×d}`` (``projection``) and ``φ`` the
``non_linearity`` (the identity by default). LoReFT keeps the rows of ``R`` orthonormal
(``orthogonality``): ``R`` is parametrised by torch's orthogonal parametrisation (Householder
form, trivialised around a fixed orthogonal ``base``), so that ``Rᵀ(·)`` edits ``h`` only inside the
``r``-dimensional subspace spanned by the rows of ``R`` — there it replaces ``R h`` by ``φ(W h + b)``.
NoReFT drops the orthogonality, DiReFT also the subtracted projection. In training, dropout acts
on the intervened state ``Φ(h)`` (AdapterHub's placement). None of the three is the identity at
initialisation: ``W``, ``b`` and ``R`` all start random, as in AdapterHub.

**Where.** After each selected layer (``layers``: ``"all"`` or indices in AdapterHub's numbering),
on the layer's output hidden states, at the first ``prefix_positions`` and the last
``suffix_positions`` *real* tokens of each row (padding is read from the attention mask, left or
right). Untied (``tied_weights=False``) the prefix positions get intervention ``units.0`` and the
suffix positions ``units.1``; tied, ``units.0`` serves both. A row with fewer real tokens than
``prefix_positions`` (or ``suffix_positions``) is refused: the adapter was trained on positions
the row does not have. Where the prefix and suffix of a row would overlap (fewer than
``prefix_positions + suffix_positions`` real tokens): with tied weights a shared position gets the
intervention once; untied, the row is refused, since it is not defined which of the two
interventions applies where they meet. A row without real tokens (all padding) is left alone.

**Generation.** The prompt of a sequence is the input of the pass that starts it; interventions
apply at the prompt's real tokens only, never at generated tokens. Inside ``generate()`` the
positions are taken from the prompt once and kept for the whole call, so greedy decoding with and
without the KV cache is the same computation; outside ``generate()`` a forward pass that continues
a KV cache intervenes nowhere (its tokens come after the prompt).

**Composition.** ``Stack(a, b)``: ``b``'s intervention is applied to ``a``'s output, each at its own
positions. ``Parallel`` and ``BatchSplit`` give each branch its rows. ReFT does not merge into
weights.

**Layout.** Each selected layer gets a child ``reft_layer`` (the host), whose ``refts.<name>`` holds
the adapter's intervention, as in AdapterHub: ``<layer>.reft_layer.refts.<name>.units.<i>.
learned_source.{weight,bias}`` and ``….projection.weight``, or with orthogonality
``….projection.parametrizations.weight.original`` and the fixed ``….parametrizations.weight.0.base``
(torch's buffer: never trained; the family's checkpoint hooks save and load it with the weights).
"""

from __future__ import annotations

import threading
from typing import NamedTuple, Optional

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..compat import passed_cache
from ..composition import BatchSplit, Parallel, Stack
from ..configuration.reft import ReftConfig
from ..context import ForwardContext
from ..errors import AdapterConfigError, CompositionError
from ..hooks.engine import ComposableLayer, remove_host_mixin, setup_members
from ..hooks.patching import swap_class
from ..hooks.spec import layer_stacks, stack_config, stack_configs
from .base import copy_saved_tensor
from .caching import reuse_while_unchanged
from .registry import MethodFamily, register

__all__ = [
    "ReftUnit", "ReftIntervention", "ReftLayer", "ReftOutputMixin", "ReftGenerationMixin", "REFT_BLOCKS",
    "add_reft", "check_reft",
]

#: the composition blocks ReFT adapters take part in
REFT_BLOCKS = (Stack, Parallel, BatchSplit)

#: the host's name in each layer and the location ``get_adapter`` reports (AdapterHub's)
HOST_NAME = "reft_layer"
LOCATION = "output_reft"

# the stacks whose real tokens the model's ``attention_mask`` describes; a decoder reads
# ``decoder_attention_mask``; any other (a vision tower) has no padding
_MASK_OF_ROLE = {"layers": "attention_mask", "encoder": "attention_mask", "text": "attention_mask",
                 "decoder": "decoder_attention_mask"}
# stacks that continue a KV cache (an encoder and a vision tower never do)
_CACHED_ROLES = ("layers", "decoder")
_HALF = (torch.float16, torch.bfloat16)


class ReftUnit(nn.Module):
    """One intervention ``Φ(h) = h + Rᵀ(φ(W h + b) − R h)`` (without ``− R h`` when not
    ``subtract_projection``), then dropout (see the module docstring).

    Example::

        >>> unit = ReftUnit(32, LoReftConfig(r=2), torch.float32)
        >>> unit(torch.randn(5, 32)).shape
        torch.Size([5, 32])
    """

    def __init__(self, hidden_size: int, config: ReftConfig, dtype: Optional[torch.dtype]):
        super().__init__()
        self.orthogonal = config.orthogonality
        self.subtract_projection = config.subtract_projection
        # built in AdapterHub's order (source, projection, parametrisation), so that one seed gives
        # the same initial values in both libraries
        self.learned_source = nn.Linear(hidden_size, config.r, bias=True, dtype=dtype)
        projection = nn.Linear(hidden_size, config.r, bias=False, dtype=dtype)
        if self.orthogonal:
            # the Householder parametrisation needs a QR decomposition, unavailable in half precision
            projection = projection.to(torch.float32) if dtype in _HALF else projection
            # the fixed orthogonal ``base`` stays torch's buffer: never trained or averaged; the
            # family's checkpoint hooks save and load it (AdapterHub writes it too)
            projection = nn.utils.parametrizations.orthogonal(projection)
        self.projection = projection
        name = config.non_linearity
        if name is None:
            self.non_linearity = nn.Identity()
        elif name.lower() == "leakyrelu":
            self.non_linearity = nn.LeakyReLU()
        else:
            self.non_linearity = ACT2FN[name.lower()]
        self.dropout = nn.Dropout(config.dropout)

    def _apply(self, fn, recurse=True):
        # model.half() / .to(bfloat16) reach here: the orthogonal parametrisation keeps its float32
        # values (moved to the new device), never rounded through 16 bits
        if not self.orthogonal:
            return super()._apply(fn, recurse)
        parametrization = self.projection.parametrizations.weight
        original, base = parametrization.original.data, parametrization[0].base
        super()._apply(fn, recurse)
        if parametrization.original.dtype in _HALF:
            device = parametrization.original.device
            parametrization.original.data = original.to(device)
            parametrization[0].base = base.to(device)
        return self

    def rotation(self) -> torch.Tensor:
        """``R`` (``r × d``). With orthogonality torch's parametrisation builds it from a full
        ``d × d`` product at every access; in inference it is kept while its parameters are
        unchanged (:func:`~adapters.methods.caching.reuse_while_unchanged`).

        Example::

            >>> unit.rotation().shape
            torch.Size([1, 32])
        """
        if not self.orthogonal:
            return self.projection.weight
        parametrization = self.projection.parametrizations.weight
        sources = [parametrization.original, parametrization[0].base]
        return reuse_while_unchanged(self.__dict__.setdefault("_kept", {}), "rotation", sources, lambda: self.projection.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        dtype = self.learned_source.weight.dtype
        h = hidden.to(dtype)
        rotation = self.rotation().to(dtype)  # R, (r, d): rows orthonormal with orthogonality
        edit = self.non_linearity(self.learned_source(h))
        if self.subtract_projection:
            edit = edit - h @ rotation.t()
        return self.dropout(h + edit @ rotation).to(hidden.dtype)

class ReftIntervention(nn.Module):
    """The interventions of one adapter at one layer: ``units.0`` (prefix positions, and suffix ones
    when ``tied_weights``) and ``units.1`` (suffix positions, untied). AdapterHub builds two units
    whenever the weights are untied, whether or not both kinds of positions are used; so does this.

    Example::

        >>> intervention = ReftIntervention(32, LoReftConfig(prefix_positions=2, suffix_positions=1), None)
        >>> len(intervention.units)
        2
    """

    def __init__(self, hidden_size: int, config: ReftConfig, dtype: Optional[torch.dtype]):
        super().__init__()
        self.prefix_positions = config.prefix_positions
        self.suffix_positions = config.suffix_positions
        self.tied_weights = config.tied_weights
        seed = config.init_weights_seed
        units = []
        for _ in range(1 if config.tied_weights else 2):
            with torch.random.fork_rng(enabled=seed is not None):  # a seed never changes the global generator
                if seed is not None:
                    torch.manual_seed(seed)
                units.append(ReftUnit(hidden_size, config, dtype))
        self.units = nn.ModuleList(units)

    def positions(self, spans: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positions, valid)``, both ``(rows, prefix_positions + suffix_positions)``: the
        positions of this pass that get the prefix interventions, then the suffix ones, and whether
        each is one to apply. ``spans`` holds per row ``(first, n)``: the position of the row's
        first real prompt token relative to this pass's first position, and the number of real
        prompt tokens. A position outside this pass (a prompt before a cached decoding step), in a
        row of padding only, or (tied) a suffix position the prefix already covers is not valid;
        invalid positions are clamped into the pass and left alone.

        Example::

            >>> positions, valid = intervention.positions(torch.tensor([[0, 5], [2, 3]]), 6)  # p=2, s=1
            >>> positions.tolist(), valid.tolist()
            ([[0, 1, 4], [2, 3, 4]], [[True, True, True], [True, True, True]])
        """
        first, count = spans[:, :1], spans[:, 1:]
        offsets = torch.arange(self.prefix_positions + self.suffix_positions, device=spans.device).unsqueeze(0)
        is_suffix = offsets >= self.prefix_positions
        # prefix: first + k; suffix: the last suffix_positions real tokens, first + n − s + (k − p)
        relative = torch.where(is_suffix, count - self.suffix_positions + offsets - self.prefix_positions, offsets)
        valid = (count > 0) & (relative >= 0) & (relative < count)
        if self.tied_weights:  # a position both prefix and suffix get covers once, as the prefix
            valid = valid & ~(is_suffix & (relative < self.prefix_positions))
        positions = first + relative
        valid = valid & (positions >= 0) & (positions < length)
        return positions.clamp(0, max(length - 1, 0)), valid

    def locate(self, spans: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows, positions, valid)``: :meth:`positions` with the row index of each entry.

        Example::

            >>> rows, positions, valid = intervention.locate(torch.tensor([[0, 5], [2, 3]]), 6)
            >>> rows.tolist()
            [[0, 0, 0], [1, 1, 1]]
        """
        positions, valid = self.positions(spans, length)
        rows = torch.arange(len(spans), device=spans.device).unsqueeze(1).expand_as(positions)
        return rows, positions, valid

    def check_fits(self, spans: torch.Tensor, name: str) -> None:
        """Refuse rows with fewer real tokens than ``prefix_positions`` or ``suffix_positions``,
        and rows whose prefix and suffix positions would overlap with untied weights (see the
        module docstring); tied, a shared position gets the one intervention once."""
        p, s = self.prefix_positions, self.suffix_positions
        count = spans[:, 1]
        if torch.compiler.is_compiling():  # the same checks as a runtime assertion in the graph (no row number)
            self._assert_fits_compiled(count, name)
            return
        too_short = ((count > 0) & (count < max(p, s))).nonzero().flatten().tolist()
        if too_short:
            row = too_short[0]
            field, value = ("prefix_positions", p) if p >= s else ("suffix_positions", s)
            raise CompositionError(
                f"ReFT adapter {name!r} has {field}={value}, but row {row} of this input has only {int(count[row])} real "
                f"tokens: every row needs at least {value} real tokens (the positions are counted among a row's real "
                f"tokens, padding excluded). Pass longer inputs, or use the adapter with a config whose {field} is at "
                f"most the shortest row's length."
            )
        if not (p and s) or self.tied_weights:
            return
        short = ((count > 0) & (count < p + s)).nonzero().flatten().tolist()
        if short:
            row = short[0]
            raise CompositionError(
                f"ReFT adapter {name!r} intervenes on the first {p} and the last {s} real tokens of each row, but row "
                f"{row} has only {int(count[row])} real tokens, so its prefix and suffix positions would overlap. Give "
                f"every row at least {p + s} real tokens, or use a config with fewer prefix_positions / "
                f"suffix_positions."
            )

    def _assert_fits_compiled(self, count: torch.Tensor, name: str) -> None:
        """:meth:`check_fits` under torch.compile: reading the offending row would leave the graph,
        so the conditions become assertions the compiled graph checks when it runs."""
        p, s = self.prefix_positions, self.suffix_positions
        torch._assert_async(
            ~((count > 0) & (count < max(p, s))).any(),
            f"ReFT adapter {name!r} needs at least {max(p, s)} real tokens in every row (prefix_positions={p}, "
            f"suffix_positions={s}; padding excluded), and a row of this input has fewer. Pass longer inputs.",
        )
        if p and s and not self.tied_weights:
            torch._assert_async(
                ~((count > 0) & (count < p + s)).any(),
                f"ReFT adapter {name!r} intervenes on the first {p} and the last {s} real tokens of each row, and a "
                f"row of this input has fewer than {p + s}, so its positions would overlap. Give every row at least "
                f"{p + s} real tokens.",
            )

    def forward(self, hidden: torch.Tensor, spans: torch.Tensor, located=None) -> torch.Tensor:
        """``hidden`` with the interventions applied at the row's positions: the states there are
        gathered, intervened on and scattered back as a change (only ``prefix_positions +
        suffix_positions`` states per row are computed, and the pass costs one copy of ``hidden``).
        ``located``: ``(rows, positions, valid)`` of these spans, computed already (see
        :meth:`locate`)."""
        rows, positions, valid = located if located is not None else self.locate(spans, hidden.shape[1])
        gathered = hidden[rows, positions]
        if self.tied_weights:
            edited = self.units[0](gathered)
        else:
            p = self.prefix_positions
            edited = torch.cat([self.units[0](gathered[:, :p]), self.units[1](gathered[:, p:])], dim=1)
        change = torch.where(valid.unsqueeze(-1), edited - gathered, torch.zeros_like(gathered))
        # accumulate: an invalid (clamped) position may repeat a valid one, and adds nothing. Without
        # autograd the layer's fresh output is edited in place (nothing else holds it yet), which
        # saves a copy of the hidden states per layer
        if not torch.is_grad_enabled() and not hidden.requires_grad:
            return hidden.index_put_((rows, positions), change, accumulate=True)
        return hidden.index_put((rows, positions), change, accumulate=True)


class ReftState(NamedTuple):
    """What the composition engine passes between a layer's interventions: the hidden states
    ``(rows, length, d)`` and each row's ``(first, n)`` prompt span (see
    :meth:`ReftIntervention.positions`)."""

    hidden: torch.Tensor
    spans: torch.Tensor


class ReftLayer(ComposableLayer, nn.Module):
    """The ReFT host of one layer (its child ``reft_layer``): the adapters' interventions in
    ``refts``, composed by the engine on the layer's output.

    Example::

        >>> model.add_adapter("reft", config="loreft")
        >>> sorted(model.bert.encoder.layer[0].reft_layer.refts)
        ['reft']
    """

    method = "reft"
    supported_blocks = REFT_BLOCKS
    BATCH_FIELDS = ("hidden", "spans")
    SEQUENCE_FIELDS = ("hidden",)
    removed_when_empty = True

    def __init__(self, layer_idx: int, role: str):
        super().__init__()
        self._init_composable(layer_idx, LOCATION)
        self.role = role
        self.refts = nn.ModuleDict()

    @property
    def adapters(self) -> nn.ModuleDict:
        """The interventions by adapter name.

        Example::

            >>> list(model.bert.encoder.layer[0].reft_layer.adapters)
            ['reft']
        """
        return self.refts

    def adapter_names(self) -> set[str]:
        """The adapters with an intervention at this layer.

        Example::

            >>> model.bert.encoder.layer[0].reft_layer.adapter_names()
            {'reft'}
        """
        return set(self.refts)

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name``'s intervention (nothing if it has none here).

        Example::

            >>> model.bert.encoder.layer[0].reft_layer.delete_adapter("reft")
        """
        if name in self.refts:
            del self.refts[name]
        self._invalidate_setup_cache()

    def is_empty(self) -> bool:
        """Whether no adapter has an intervention here (then :meth:`uninstall` may run).

        Example::

            >>> model.bert.encoder.layer[0].reft_layer.is_empty()
            False
        """
        return not len(self.refts)

    def uninstall(self) -> None:
        """Take the host out of its layer and the layer's class swap with it.

        Example::

            >>> model.delete_adapter("reft")       # the last ReFT adapter: every host uninstalls
        """
        layer = self.__dict__.pop("_layer", None)
        if layer is not None:
            remove_host_mixin(layer, ReftOutputMixin, containers=(HOST_NAME,))

    def compose_single(self, name: str, state: ReftState) -> ReftState:
        intervention = self.refts[name]
        context = ForwardContext.get_context()
        checked = context.__dict__.setdefault("reft_checked", set()) if context is not None else set()
        key = (self.role, intervention.prefix_positions, intervention.suffix_positions, state.spans.data_ptr(), len(state.spans))
        if key not in checked:
            intervention.check_fits(state.spans, name)
            checked.add(key)
        # every layer of the pass intervenes at the same positions: located once per pass
        located_by_key = context.__dict__.setdefault("reft_located", {}) if context is not None else {}
        key = (*key, intervention.tied_weights, state.hidden.shape[1])
        located = located_by_key.get(key)
        if located is None:
            located = located_by_key[key] = intervention.locate(state.spans, state.hidden.shape[1])
        return state._replace(hidden=intervention(state.hidden, state.spans, located))

    def intervene(self, hidden: torch.Tensor) -> torch.Tensor:
        """The layer's output hidden states with the active setup's interventions applied.

        Example::

            >>> with ForwardContext(model, Stack("reft")).activate():
            ...     edited = model.bert.encoder.layer[0].reft_layer.intervene(hidden)
        """
        context = ForwardContext.get_context()
        setup = self.active_setup(context)
        if setup is None:
            return hidden
        spans = _prompt_spans(context, self.role, hidden)
        if spans is None:  # no position of this pass is intervened on
            return hidden
        return self.compose(setup, ReftState(hidden, spans)).hidden

    def forward(self, *args, **kwargs):  # pragma: no cover - driven by the layer's forward
        raise RuntimeError("ReftLayer is driven by its layer's forward and is not called directly.")


class ReftOutputMixin:
    """Swapped onto each layer that hosts ReFT interventions: runs the layer, then its ``reft_layer``
    on the output hidden states (the first output where the layer returns a tuple).

    Example::

        >>> type(model.bert.encoder.layer[0]).__mro__[1].__name__
        'ReftOutputMixin'
    """

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        host = self._modules.get(HOST_NAME)
        if host is None or ForwardContext.get_context() is None:
            return output
        if isinstance(output, torch.Tensor):
            return host.intervene(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (host.intervene(output[0]),) + tuple(output[1:])
        return output


# -- the prompt's positions in each pass -----------------------------------------------------------------


class _Generation:
    """The prompt spans of one ``generate()`` call, per stack role, taken from its first pass."""

    def __init__(self, model):
        self.model = model
        self.spans: dict[str, torch.Tensor] = {}


class _GenerationState(threading.local):
    """The running ``generate()`` call of this thread (generate is synchronous: per thread is per
    call, and torch.compile can read it, unlike a ContextVar)."""

    def __init__(self):
        self.current: Optional[_Generation] = None  # in each thread's own dict (see adapters.context._ThreadState)


_generation = _GenerationState()


class ReftGenerationMixin:
    """Model method the ReFT family adds to every patched model: ``generate`` keeps the prompt's
    positions for the whole call, so interventions never reach generated tokens and decoding with
    and without the KV cache agree.

    Example::

        >>> model.set_active_adapters("loreft")
        >>> model.generate(input_ids, attention_mask=mask, max_new_tokens=8)
    """

    def generate(self, *args, **kwargs):
        """transformers' ``generate`` with ReFT's generation rule (interventions at the prompt's real
        tokens only); everything else as the next ``generate`` in the class hierarchy does it.

        Example::

            >>> out = model.generate(input_ids, attention_mask=mask, max_new_tokens=8, use_cache=False)
        """
        previous, _generation.current = _generation.current, _Generation(self)
        try:
            return super().generate(*args, **kwargs)
        finally:
            _generation.current = previous


def _reft_names(model) -> set[str]:
    registry = model.adapters_config
    return {
        name for name, config in registry.adapters.items()
        if any(part.architecture == "reft" for part in config.configs_by_architecture())
    }


@torch._dynamo.assume_constant_result  # torch.compile: looked up while tracing (the setup's identity is guarded)
def _active_reft_adapters(model, setup) -> tuple[str, ...]:
    """The ReFT adapters of ``setup`` (cached per setup and registry version)."""
    registry = model.adapters_config
    cache = model.__dict__.get("_adapters_reft_members")
    if cache is None or cache[0] != registry.version:
        cache = model.__dict__["_adapters_reft_members"] = (registry.version, {})
    return setup_members(setup, lambda: _reft_names(model), cache[1])


def note_pass_inputs(model, context: ForwardContext, call) -> None:
    """Before a forward pass with active ReFT adapters: keep the attention masks and the length of
    the KV cache the pass continues, from which each stack's real-token positions are read.

    Example::

        >>> note_pass_inputs(model, context, call)     # run by the model's forward
    """
    if context.setup is None or not _active_reft_adapters(model, context.setup):
        return
    kwargs = call.keyword_arguments()
    cache = passed_cache(kwargs)
    past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
    context.reft_inputs = {
        "attention_mask": kwargs.get("attention_mask"),
        "decoder_attention_mask": kwargs.get("decoder_attention_mask"),
        "past": int(past),
    }
    context.reft_spans = {}


def _spans_from_mask(mask: Optional[torch.Tensor], rows: int, total: int, device) -> torch.Tensor:
    """``(rows, 2)``: each row's first real position and number of real tokens among ``total``."""
    if mask is None:
        first = torch.zeros(rows, dtype=torch.long, device=device)
        return torch.stack([first, torch.full_like(first, total)], dim=1)
    real = mask.to(device) != 0
    return torch.stack([real.long().argmax(dim=1), real.sum(dim=1)], dim=1)


def _prompt_spans(context: ForwardContext, role: str, hidden: torch.Tensor) -> Optional[torch.Tensor]:
    """The ``(first, n)`` prompt span of each row, relative to this pass's first position (None
    when no position of the pass is intervened on); computed once per pass and stack."""
    cached = context.__dict__.setdefault("reft_spans", {})
    if role in cached:
        return cached[role]
    inputs = context.__dict__.get("reft_inputs") or {}
    rows, length = hidden.shape[:2]
    kind = role.partition(".")[0]  # a later stack over the same positions ("layers.group1": ALBERT's layer groups)
    past = inputs.get("past", 0) if kind in _CACHED_ROLES else 0
    mask = inputs.get(_MASK_OF_ROLE.get(kind, ""))
    if not (isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape == (rows, past + length)):
        mask = None  # no mask for this stack's positions: every position is a real token
    generation = _generation.current
    if generation is not None and generation.model is context.model:
        prompt = generation.spans.get(role)
        if prompt is None:  # the call's first pass over this stack reads the prompt
            prompt = generation.spans[role] = _spans_from_mask(mask, rows, past + length, hidden.device)
        elif len(prompt) != rows:
            raise CompositionError(
                f"generate() began with {len(prompt)} rows but a later pass has {rows}; ReFT keeps the prompt's "
                f"positions per row and cannot follow a change of the batch inside one generate() call."
            )
        spans = prompt
    elif past:
        spans = None  # continuing a cache outside generate(): its tokens come after the prompt
    else:
        spans = _spans_from_mask(mask, rows, length, hidden.device)
    if spans is not None:
        spans = spans - torch.tensor([past, 0], device=spans.device)
        # a prompt that ends before this pass's first position (a cached decoding step) leaves nothing to do
        if past and not bool(((spans[:, 0] + spans[:, 1]) > 0).any()):
            spans = None
    cached[role] = spans
    return spans


# -- the ReFT family on a model: checks, creation, registration ---------------------------------------------


def check_reft(model, config: ReftConfig) -> None:
    """Refuse a config whose ``layers`` the model does not have.

    Example::

        >>> check_reft(model, LoReftConfig(layers=[7]))    # a 2-layer model
        Traceback (most recent call last):
        adapters.errors.AdapterConfigError: LoReftConfig.layers=[7] names layers the model does not have ...
    """
    if config.layers == "all":
        return
    count = len(stack_configs(model.base_model, model.__dict__["_adapters_spec"]))
    missing = sorted(i for i in config.layers if i >= count)
    if missing:
        error = AdapterConfigError(
            f"{type(config).__name__}.layers={list(config.layers)} names layers the model does not have ({missing}); "
            f"give indices 0 … {count - 1} (it has {count} layers), or 'all'."
        )
        error.owner, error.field, error.value = type(config).__name__, "layers", config.layers
        raise error


def _host_of(model, layer: nn.Module, layer_idx: int, role: str) -> ReftLayer:
    host = layer._modules.get(HOST_NAME)
    if host is None:
        host = ReftLayer(layer_idx, role)
        host.__dict__["_layer"] = layer
        layer.add_module(HOST_NAME, host)
        swap_class(layer, ReftOutputMixin)
        model._adapter_hosts.append(host)
    return host


def add_reft(model, name: str, config: ReftConfig, device, dtype) -> bool:
    """Create adapter ``name``'s interventions after the layers ``config.layers`` selects.

    Example::

        >>> add_reft(model, "reft", LoReftConfig(layers=[0]), "cpu", torch.float32)
        True
    """
    spec = model.__dict__["_adapters_spec"]
    base = model.base_model
    dtype = getattr(torch, config.dtype) if config.dtype is not None else dtype
    added = False
    for stack, first, layers in layer_stacks(base, spec):
        hidden_size = stack_config(base.config, stack).hidden_size
        for offset, layer in enumerate(layers):
            layer_idx = first + offset
            if config.layers != "all" and layer_idx not in config.layers:
                continue
            host = _host_of(model, layer, layer_idx, stack.role)
            intervention = ReftIntervention(hidden_size, config, dtype)
            host.refts[name] = intervention.to(device=device).train(model.training)
            host._invalidate_setup_cache()
            added = True
    return added


def check_average(config: ReftConfig) -> None:
    """Refuse averaging LoReFT adapters: ``R`` is a nonlinear function of its parameters (torch's
    orthogonal parametrisation keeps the rows' signs in them), so a weighted mean of the
    parameters is no mean of the interventions and can even lose a row of ``R``.

    Example::

        >>> check_average(LoReftConfig())
        Traceback (most recent call last):
        adapters.errors.AdapterConfigError: average_adapter cannot average LoReFT adapters ...
    """
    if config.orthogonality:
        raise AdapterConfigError(
            f"average_adapter cannot average LoReFT adapters ({type(config).__name__} with orthogonality=True): R is a "
            f"nonlinear function of its parameters, so their weighted mean is no mean of the interventions. "
            f"NoReFT and DiReFT adapters (orthogonality=False) average linearly."
        )


def _bases(model, name: str) -> dict[str, torch.Tensor]:
    """``{key relative to the base model: base}`` of adapter ``name``'s orthogonal parametrisations."""
    bases = {}
    for path, host in model.base_model.named_modules():
        if isinstance(host, ReftLayer) and name in host.refts:
            for i, unit in enumerate(host.refts[name].units):
                if unit.orthogonal:
                    key = f"{path}.refts.{name}.units.{i}.projection.parametrizations.weight.0.base"
                    bases[key] = unit.projection.parametrizations.weight[0].base
    return bases


def bases_to_checkpoint(model, name: str, config: ReftConfig, state: dict) -> dict:
    """The adapter's weights with the fixed bases of its orthogonal parametrisations, which
    AdapterHub saves with them (they are buffers: the parameters alone leave them out).

    Example::

        >>> state = bases_to_checkpoint(model, "reft", LoReftConfig(), state)
    """
    return {**state, **{key: base.detach() for key, base in _bases(model, name).items()}}


def bases_from_checkpoint(model, name: str, config: ReftConfig, state: dict, path: str) -> dict:
    """The checkpoint's bases copied into the adapter's parametrisations (shape-checked) and taken
    out of ``state``; a checkpoint without them keeps the drawn ones, as AdapterHub does.

    Raises:
        AdapterLoadError: a base of another shape (the message names ``path``).

    Example::

        >>> state = bases_from_checkpoint(model, "reft", LoReftConfig(), state, "out/reft/adapter.safetensors")
    """
    state = dict(state)
    for key, base in _bases(model, name).items():
        saved = state.pop(key, None)
        if saved is not None:
            copy_saved_tensor(base, saved, path, key)
    return state


register(MethodFamily(
    name="reft", title="ReFT", blocks=REFT_BLOCKS, add=add_reft, check=check_reft,
    before_forward=note_pass_inputs, interface_method="reft",
    to_adapterhub=bases_to_checkpoint, from_adapterhub=bases_from_checkpoint, check_average=check_average,
    model_mixin=ReftGenerationMixin,
))
