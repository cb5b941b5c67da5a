"""The forward pass of a patched model: the forward context every hook reads, and the entries
through which a pass starts.

:class:`ForwardMixin` (part of :class:`~adapters.ModelAdaptersMixin`) opens a
:class:`~adapters.context.ForwardContext` around the model's original forward, holding the
registry's :class:`~adapters.context.RegistryLock` shared: it snapshots the active setup once,
refuses inputs the setup cannot be applied to, replicates the batch for ``Parallel``, and runs the
method families' forward hooks (:mod:`adapters.methods.registry`: prefixes computed once per pass,
soft prompts joined to the inputs, AdaLoRA's regulariser added to the loss). Parts of a model that
callers run on their own (an encoder-decoder's encoder during ``generate``, CLIP's towers) get an
entry mixin that opens the same context; gradient checkpointing replays a layer inside the context
it first ran in.
"""

from __future__ import annotations

import functools
import threading
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from .compat import passed_cache
from .composition import BatchSplit, MultiTask, Parallel, RowRouting, Split, Stack, batch_requirement, check_input_batch
from .context import AdapterSetup, ForwardContext, registry_lock
from .errors import CompositionError
from .hooks.patching import swap_class
from .hooks.signatures import as_keyword_arguments, positional_names
from .methods.registry import families_with

__all__ = ["ForwardMixin", "ForwardCall", "StackEntryMixin", "EncoderEntryMixin", "DecoderEntryMixin", "install_stack_entries"]

# inputs that carry a batch dimension and are replicated for Parallel
_BATCH_INPUTS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "inputs_embeds",
    "labels",
    "decoder_input_ids",
    "decoder_attention_mask",
    "decoder_inputs_embeds",
    "pixel_values",
    "input_features",
    "lang_ids",  # X-MOD's language of each row
)
# inputs with a batch of their own: a dual encoder (CLIP) reads N texts and M images in one call
_SEPARATE_BATCH_INPUTS = ("pixel_values",)


class _GenerateState(threading.local):
    """What a running ``generate()`` tells the forward passes it makes. generate() is synchronous
    (no await inside), so per thread is per call, as with a ContextVar; unlike one, torch.compile
    can read it (compiled passes inside generate)."""

    # the number of branches of a Parallel setup whose inputs generate() replicated itself (1: none)
    pre_replicated = 1
    # the task_ids given to generate(), for the forward passes it makes (transformers passes on only
    # the keyword arguments the model's forward signature names)
    task_ids = None
    # the per-row adapter_names given to generate(), likewise
    adapter_names = None

    def __init__(self):
        # every thread's own dict holds every field from the start: a compiled pass then guards on
        # their values (a field only on the class gets a guard on its absence, which the pass's
        # own writes break)
        self.pre_replicated, self.task_ids, self.adapter_names = 1, None, None


_generate_state = _GenerateState()


class ForwardCall:
    """The arguments of one forward call, as the families' ``before_forward`` hooks see them:
    positional arguments are named (by the model's forward signature) the first time a hook asks
    for keyword arguments; a call no hook touched is passed on as it came.

    Args:
        model: the patched model.
        args / kwargs: the call's arguments.
        entry: the call enters one stack on its own (an encoder run by ``generate``, a CLIP
            tower); only what the stack needs is prepared.

    Example::

        >>> call = ForwardCall(model, (input_ids,), {})
        >>> call.keyword_arguments()["input_ids"] is input_ids
        True
    """

    def __init__(self, model, args: tuple, kwargs: dict, entry: bool = False):
        self.model, self.args, self.kwargs, self.entry = model, args, kwargs, entry
        self._named = False

    def keyword_arguments(self) -> dict:
        """The call's arguments as one mutable dict of keyword arguments (changes apply to the call)."""
        if not self._named:  # a copy: the caller's dict stays as it was
            kwargs = dict(self.kwargs)
            for name, value in zip(self.model._forward_argument_names(), self.args):
                kwargs[name] = value
            self.args, self.kwargs, self._named = (), kwargs, True
        return self.kwargs

    def set_keyword_arguments(self, kwargs: dict) -> None:
        """Replace the call's arguments by ``kwargs`` (keyword arguments only)."""
        self.args, self.kwargs, self._named = (), kwargs, True


def _checkpoint_with_context(checkpoint_func):
    """Wrap a gradient-checkpointing function so that the recomputation during backward runs
    inside the forward context of the original pass (adapters stay active there)."""
    if getattr(checkpoint_func, "_adapters_context_aware", False):
        return checkpoint_func

    def checkpoint_in_context(function, *args, **kwargs):
        context = ForwardContext.get_context()
        if context is None:
            return checkpoint_func(function, *args, **kwargs)

        def replay(*inner_args, **inner_kwargs):
            with context.activate():
                return function(*inner_args, **inner_kwargs)

        return checkpoint_func(replay, *args, **kwargs)

    checkpoint_in_context._adapters_context_aware = True
    checkpoint_in_context.__wrapped__ = checkpoint_func  # unloading restores it
    return checkpoint_in_context


class ForwardMixin:
    """The forward pass of a patched model (see the module docstring); part of
    :class:`~adapters.ModelAdaptersMixin`.

    Example::

        >>> model.set_active_adapters("task")
        >>> out = model(**batch)          # runs in a forward context with Stack("task") active
    """

    # the patched class shows its original forward's signature (see patching.swap_class)
    shows_original_signature = True

    def _forward_argument_names(self) -> tuple[str, ...]:
        """The positional parameter names of the original model class's forward."""
        return _forward_parameter_names(type(self))

    def forward(self, *args, **kwargs):
        """The model's forward, inside a forward context with the active adapter setup.

        Extra keyword arguments: ``output_adapter_fusion_attentions`` and
        ``output_adapter_gating_scores`` return the fusion attention weights / gating scores
        as ``adapter_fusion_attentions`` / ``adapter_gating_scores`` on the output;
        ``task_ids`` gives each batch row its task for a ``MultiTask`` setup (integers or the
        block's adapter names, one per row; ignored by setups without ``MultiTask``).
        ``adapter_names`` gives each batch row its own adapter setup for this call (an adapter
        name, ``"__base__"`` for none, or a ``Stack`` / ``Average``; PEFT's argument), replacing
        the active setup; see ``docs/serving.rst``.

        Example::

            >>> model.active_adapters = Fuse("a", "b")
            >>> out = model(**batch, output_adapter_fusion_attentions=True)
            >>> out.adapter_fusion_attentions["a,b"][0]["output_adapter"].shape   # (B, L, 2)
        """
        context = ForwardContext.get_context()
        if context is not None and context.registry is self.adapters_config:
            return super().forward(*args, **kwargs)  # nested call (head model -> base model)
        # the pass holds the registry lock shared: no adapter is added, deleted or merged while it
        # runs, so it sees one consistent set of adapters in every layer (see RegistryLock)
        lock = registry_lock(self.adapters_config)
        token = lock.acquire_read()
        try:
            return self._forward_in_context(args, kwargs)
        finally:
            lock.release_read(token)

    def _forward_in_context(self, args, kwargs):
        """The outermost forward pass, in a new forward context (called with the registry lock held)."""
        context = self._new_context()
        context.output_adapter_fusion_attentions = kwargs.pop("output_adapter_fusion_attentions", False)
        context.output_adapter_gating_scores = kwargs.pop("output_adapter_gating_scores", False)
        names = self._forward_argument_names()
        task_ids = kwargs.pop("task_ids", None)
        task_ids = _generate_state.task_ids if task_ids is None else task_ids
        batch = _input_batch(names, args, kwargs)
        replicated = _generate_state.pre_replicated
        if batch is not None and replicated and replicated == _parallel_channels(context.setup):
            batch //= replicated  # generate() replicated the rows for Parallel; task_ids name the user's rows
        context.task_ids = self._rows_of_call(context, kwargs.pop("adapter_names", None), task_ids, batch)
        channels = self._channels_to_replicate(context)
        self._check_input_fits(context, channels, args, kwargs, names)
        if channels:
            args, kwargs = self._replicate_batch(args, kwargs, channels, context)
        with context.activate():
            call = ForwardCall(self, args, kwargs)
            for family in families_with("before_forward"):
                family.before_forward(self, context, call)
            output = super().forward(*call.args, **call.kwargs)
        parallel_output = self.__dict__["_adapters_spec"].parallel_output
        if parallel_output is not None and context.parallel_channels > 1:
            output = parallel_output(self, output, context.parallel_channels)
        for family in families_with("after_forward"):
            output = family.after_forward(self, context, output)
        if context.output_adapter_fusion_attentions and hasattr(output, "keys"):
            output.adapter_fusion_attentions = context.adapter_fusion_attentions
        if context.output_adapter_gating_scores and hasattr(output, "keys"):
            output.adapter_gating_scores = context.adapter_gating_scores
        return output

    def generate(self, *args, **kwargs):
        """transformers' ``generate`` with the active setup.

        With a ``Parallel`` setup of ``n`` branches, every branch continues its own copy of the
        input: the returned sequences have ``n × batch`` rows, branch ``i`` in rows
        ``i·batch … (i+1)·batch − 1`` (the same layout as Parallel's forward outputs).

        With a ``MultiTask`` setup, ``task_ids`` (one per input row) hold for every step (greedy
        search or sampling, one sequence per row; more rows per input are refused at the first step).
        Per-row ``adapter_names`` (one setup per input row, see ``docs/serving.rst``) hold for every step
        and for every copy of a row that beams or ``num_return_sequences`` make.

        Example::

            >>> model.set_active_adapters(Parallel("a", "b"))
            >>> out = model.generate(input_ids, max_new_tokens=8)   # rows [a's; b's]
        """
        if kwargs.get("adapter_names") is not None:  # per-row adapters: every step's rows keep theirs
            previous, _generate_state.adapter_names = _generate_state.adapter_names, kwargs.pop("adapter_names")
            try:  # the setup is the rows' routing (no Parallel to replicate for)
                return super().generate(*args, **kwargs)
            finally:
                _generate_state.adapter_names = previous
        if kwargs.get("task_ids") is not None:  # MultiTask: every step's rows keep their task ids
            previous, _generate_state.task_ids = _generate_state.task_ids, kwargs.pop("task_ids")
            try:
                return self.generate(*args, **kwargs)
            finally:
                _generate_state.task_ids = previous
        setup = self._setup_for_forward()[0]
        channels = _parallel_channels(setup)
        if channels == 1:
            return super().generate(*args, **kwargs)
        # positional arguments by generate's own names (inputs, generation_config, ...), the inputs as input_ids
        kwargs, _ = _replicate_inputs(("input_ids",) + _generate_parameter_names(type(self))[1:], args, kwargs, channels)
        previous, _generate_state.pre_replicated = _generate_state.pre_replicated, channels
        try:
            return super().generate(**kwargs)
        finally:
            _generate_state.pre_replicated = previous

    def _rows_of_call(self, context: ForwardContext, adapter_names, task_ids, batch: Optional[int]) -> Optional[torch.Tensor]:
        """The pass's per-row task ids (``context.task_ids``): from ``adapter_names``, one adapter
        setup per row, which also replace the pass's setup by their routing (a ``MultiTask``, see
        :class:`~adapters.composition.RowRouting`), or from ``task_ids`` for the setup's own
        ``MultiTask`` blocks. Checked before the model runs (errors name the argument)."""
        if adapter_names is None and _generate_state.adapter_names is not None:
            adapter_names = _generate_state.adapter_names
            rows = len(adapter_names) if isinstance(adapter_names, (list, tuple)) else 0
            if rows and batch and batch != rows and batch % rows == 0:
                # beams / num_return_sequences: generate repeats each input row in place (repeat_interleave)
                adapter_names = [entry for entry in adapter_names for _ in range(batch // rows)]
        if adapter_names is None:
            return _checked_task_ids(context.setup, task_ids, batch)
        return self._route_adapter_names(context, adapter_names, task_ids, batch)

    # names are Python strings, which a compiled graph would guard on one by one (a compilation per
    # distinct list): the routing runs outside the graph, which then sees a fixed setup and a tensor
    @torch.compiler.disable
    def _route_adapter_names(self, context, adapter_names, task_ids, batch):
        if task_ids is not None:
            raise CompositionError(
                "adapter_names and task_ids were both given; give adapter_names (one adapter per row, any active "
                "setup is replaced for the call) or task_ids (rows of the active setup's MultiTask), not both."
            )
        context.setup, ids = self._row_routing().route(adapter_names, batch, self._validate_setup)
        context.skip_layers = frozenset()
        return torch.tensor(ids, dtype=torch.int64)

    def _row_routing(self) -> RowRouting:
        """The routing of per-row ``adapter_names`` for the model's adapters as they are now (made
        once per change of the adapters)."""
        registry = self.adapters_config
        routing = self.__dict__.get("_adapters_row_routing")
        if routing is None or routing.version != registry.version:
            routing = RowRouting(registry.adapters, self._validate_setup, registry.version)
            self.__dict__["_adapters_row_routing"] = routing
        return routing

    def route_adapter_names(self, adapter_names) -> tuple:
        """``(setup, task_ids)``: the ``MultiTask`` setup and per-row task ids (an ``int64``
        tensor) that run ``adapter_names`` (one adapter setup per batch row, as the forward's
        ``adapter_names=`` takes them). The setup is the same for every list of the model's
        adapter names while its adapters stay the same (a row naming a ``Stack`` / ``Average``
        not named before adds a child, and so a new setup), so a model compiled with
        ``fullgraph=True`` serves any mix of rows with one graph when called with ``task_ids``
        inside ``AdapterSetup(setup)`` (``adapter_names=`` itself routes outside the graph: one
        graph break).

        Raises:
            CompositionError: naming ``adapter_names``, the row and value, and the valid form.

        Example::

            >>> setup, task_ids = model.route_adapter_names(["b", "__base__", "a"])
            >>> with AdapterSetup(setup):
            ...     out = compiled_model(**batch, task_ids=task_ids)   # rows as with adapter_names=
        """
        lock = registry_lock(self.adapters_config)
        token = lock.acquire_read()
        try:
            setup, ids = self._row_routing().route(adapter_names, None, self._validate_setup)
        finally:
            lock.release_read(token)
        return setup, torch.tensor(ids, dtype=torch.int64)

    def _new_context(self) -> ForwardContext:
        """A forward context with the active setup, marked as this model's: the one snapshot of the
        setup (and ``skip_layers``) the whole pass uses. Called with the registry lock held, so the
        adapters the setup names stay as they are until the pass returns."""
        context = ForwardContext(self, *self._setup_for_forward())
        context.registry = self.adapters_config
        return context

    @staticmethod
    def _channels_to_replicate(context) -> int:
        """The Parallel channels whose inputs this call must replicate (0: none). Inputs that
        generate() replicated once already are only recorded in ``context``."""
        channels = _parallel_channels(context.setup)
        if channels > 1 and _generate_state.pre_replicated == channels:
            context.parallel_channels = channels
            return 0
        return channels if channels > 1 else 0

    def _open_stack_context(self, module, args, kwargs):
        """``(context or None, kwargs)``: for an encoder run on its own (``generate`` encodes once before
        decoding), a forward context like the model's forward opens, with the prefixes computed;
        None when the model's forward opened one already."""
        kwargs = as_keyword_arguments(module, args, kwargs)
        context = ForwardContext.get_context()
        if context is not None and context.registry is self.adapters_config:
            return None, kwargs
        context = self._new_context()
        task_ids = kwargs.pop("task_ids", None)
        task_ids = _generate_state.task_ids if task_ids is None else task_ids
        context.task_ids = self._rows_of_call(context, kwargs.pop("adapter_names", None), task_ids, _input_batch((), (), kwargs))
        channels = self._channels_to_replicate(context)
        self._check_input_fits(context, channels, (), kwargs)
        if channels:
            kwargs, batch = _replicate_inputs((), (), kwargs, channels)
            context.parallel_channels, context.original_batch_size = channels, batch
        call = ForwardCall(self, (), kwargs, entry=True)
        for family in families_with("before_forward"):
            family.before_forward(self, context, call)
        return context, call.kwargs

    def _setup_for_forward(self):
        """``(setup, skip_layers)`` in force: the innermost AdapterSetup's (validated once), else the
        model's active setup."""
        registry = self.adapters_config
        override = AdapterSetup.current()
        if override is not None:
            setup = override[0]
            if setup is not None:
                _validate_once(self, registry, setup)
            return setup, None
        return registry.active_setup, registry.skip_layers

    def _replicate_batch(self, args, kwargs, channels: int, context: ForwardContext):
        kwargs, batch = _replicate_inputs(self._forward_argument_names(), args, kwargs, channels)
        context.parallel_channels = channels
        context.original_batch_size = batch
        return (), kwargs

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=checkpoint, every_n_layers: int = 1):
        return super()._set_gradient_checkpointing(
            enable=enable,
            gradient_checkpointing_func=_checkpoint_with_context(gradient_checkpointing_func),
            every_n_layers=every_n_layers,
        )

    def _check_input_fits(self, context: ForwardContext, channels: int, args, kwargs, names=()) -> None:
        """At the start of a forward pass, refuse an input the setup cannot be applied to, with a
        :class:`~adapters.errors.CompositionError` naming the block, its sizes and the input's size
        (instead of a tensor error in a layer, or a silently wrong result):

        * a batch (``args`` named by ``names``, and ``kwargs``; replicated ``channels`` times for
          ``Parallel`` by this pass, 0: not) that the ``BatchSplit`` sizes do not fit;
        * a ``Split`` in a pass that continues a KV cache: its new tokens sit at positions after
          the cached ones, which the adapter positions cannot tell from 0, 1, …;
        * a KV cache of another batch size than the rows ``Parallel`` replicates the input to.
        """
        setup = context.setup
        if channels > 1:
            self._check_cache_rows(setup, channels, args, kwargs, names)
        sized = _sized_blocks(setup) if setup is not None else ()
        if not sized:
            return
        if batch_requirement(setup) is not None:
            batch = _input_batch(names, args, kwargs)
            if batch is not None:
                check_input_batch(setup, batch, channels or 1)
        split = next((b for b in sized if isinstance(b, Split)), None)
        cache = passed_cache(kwargs) if split is not None else None
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        if past:
            raise CompositionError(
                f"{split} cuts the sequence at fixed positions (splits {list(split.splits)}), but this forward pass "
                f"continues a KV cache of {past} positions: its new tokens sit at positions {past} and later, which "
                f"the adapters cannot tell from positions 0, 1, …. Run it without a cache (use_cache=False, e.g. "
                f"model.generate(..., use_cache=False)), or use a setup without Split."
            )

    @staticmethod
    def _check_cache_rows(setup, channels: int, args, kwargs, names) -> None:
        """Parallel replicates this pass's inputs ``channels`` times: a KV cache it continues must
        have the replicated rows (the cache of an earlier pass under the same Parallel)."""
        cache = passed_cache(kwargs)
        if cache is None or not hasattr(cache, "get_seq_length") or not cache.get_seq_length():
            return
        rows = _cache_rows(cache)
        batch = _input_batch(names, args, kwargs)
        if rows is not None and batch is not None and rows != batch * channels:
            raise CompositionError(
                f"{setup} replicates the input batch of {batch} rows {channels}× ({batch * channels} rows), but the KV "
                f"cache passed has {rows} rows. Continue a cache made under the same Parallel setup (it has "
                f"{batch * channels} rows), or activate the setup the cache was made with."
            )


@torch._dynamo.assume_constant_result
def _validate_once(model, registry, setup) -> bool:
    """Validate an ``AdapterSetup`` override against the model the first time a pass uses it
    (``registry._validated``: id → setup, emptied when the adapters change). Under torch.compile
    it runs while the pass is traced, not in the graph (the setup's identity is guarded)."""
    if registry._validated.get(id(setup)) is not setup:
        model._validate_setup(setup)
        registry._validated[id(setup)] = setup  # kept alive with its id: the id names no other setup
    return True


@torch._dynamo.assume_constant_result  # torch.compile: read while tracing (the setup's identity is guarded)
@functools.lru_cache(maxsize=1024)
def _multi_task_blocks(setup) -> tuple:
    """The MultiTask blocks of ``setup`` (the setup itself or children of its top-level Stack)."""
    if isinstance(setup, MultiTask):
        return (setup,)
    if isinstance(setup, Stack):
        return tuple(child for child in setup.children if isinstance(child, MultiTask))
    return ()


def _checked_task_ids(setup, task_ids, batch: Optional[int]) -> Optional[torch.Tensor]:
    """The call's ``task_ids`` as a 1-d ``int64`` tensor of indices into the setup's ``MultiTask``
    children, checked before the model runs: given where a MultiTask is active, one per row of the
    ``batch`` (when known), each an index ``0 … n − 1`` or the name of a child adapter (resolved the
    same in every MultiTask of the setup). None where the setup has no MultiTask (ids are ignored).

    Raises:
        CompositionError: naming ``task_ids``, the value and the valid form.
    """
    blocks = _multi_task_blocks(setup) if setup is not None else ()
    if not blocks:
        return None
    block = blocks[0]
    count = min(len(b.children) for b in blocks)
    # a compiled pass may see the batch size as a symbol (after a recompile for another size), which
    # the messages fixed while tracing cannot hold: they leave the row count out there
    shown_batch = None if torch.compiler.is_compiling() else batch
    valid = _valid_task_ids(setup, shown_batch)
    if task_ids is None:
        raise CompositionError(f"{block} needs task_ids for this forward call; give {valid}, e.g. model(**batch, task_ids=[0, 1]).")
    if isinstance(task_ids, torch.Tensor):
        if task_ids.dim() != 1 or task_ids.dtype.is_floating_point or task_ids.dtype.is_complex or task_ids.dtype == torch.bool:
            raise CompositionError(f"task_ids is a {task_ids.dtype} tensor of shape {tuple(task_ids.shape)}; give {valid}.")
        ids = task_ids.detach().to("cpu", torch.int64)
    elif isinstance(task_ids, (list, tuple)) and task_ids and all(isinstance(t, str) for t in task_ids):
        resolved = []
        for candidate in blocks:
            children = [c if isinstance(c, str) else None for c in candidate.children]
            unknown = sorted({t for t in task_ids if t not in children})
            if unknown:
                raise CompositionError(f"task_ids names {unknown}, which are no adapters of {candidate}; give {valid}.")
            resolved.append([children.index(t) for t in task_ids])
        if any(r != resolved[0] for r in resolved):
            raise CompositionError(
                f"task_ids={list(task_ids)!r} names different positions in the setup's MultiTask blocks "
                f"{list(blocks)}; give integer task ids instead."
            )
        ids = torch.tensor(resolved[0], dtype=torch.int64)
    elif isinstance(task_ids, (list, tuple)) and task_ids and all(isinstance(t, int) and not isinstance(t, bool) for t in task_ids):
        ids = torch.tensor(task_ids, dtype=torch.int64)
    else:
        raise CompositionError(f"task_ids={task_ids!r} is not a list of task ids; give {valid}.")
    if batch is not None and ids.numel() != batch:
        raise CompositionError(f"task_ids has {ids.numel()} entries but the input batch has {batch} rows; give {valid}.")
    if torch.compiler.is_compiling():  # the values are not known while tracing: checked when the graph runs
        torch._assert_async(((ids >= 0) & (ids < count)).all(), _out_of_range_message(setup, shown_batch))
        return ids
    bad = ids[(ids < 0) | (ids >= count)]
    if bad.numel():
        raise CompositionError(f"task_ids holds {bad.unique().tolist()}, outside 0 … {count - 1}; give {valid}.")
    return ids


@torch._dynamo.assume_constant_result  # torch.compile: read while tracing (the setup's identity is guarded)
def _valid_task_ids(setup, batch: Optional[int]) -> str:
    """The valid form of ``task_ids`` for ``setup`` (which holds a ``MultiTask``) and ``batch`` rows."""
    blocks = _multi_task_blocks(setup)
    count = min(len(b.children) for b in blocks)
    return (
        f"one task id per batch row{f' ({batch} rows)' if batch is not None else ''}: integers 0 … {count - 1} (a list "
        f"or a 1-d integer tensor) or names of {blocks[0]}'s adapters"
    )


@torch._dynamo.assume_constant_result  # a str a graph's assertion can carry (dynamo keeps f-strings lazy)
def _out_of_range_message(setup, batch: Optional[int]) -> str:
    """The error of a compiled pass whose ``task_ids`` leave the children of ``setup``'s MultiTask."""
    count = min(len(b.children) for b in _multi_task_blocks(setup))
    return f"task_ids holds ids outside 0 … {count - 1}; give {_valid_task_ids(setup, batch)}."


@torch._dynamo.assume_constant_result  # torch.compile: read while tracing (the setup's identity is guarded)
@functools.lru_cache(maxsize=1024)  # setups are immutable and hashable; this runs at every forward pass
def _sized_blocks(setup) -> tuple:
    """The Split and BatchSplit blocks of ``setup`` (what the input must fit), depth first."""
    if isinstance(setup, str):
        return ()
    own = (setup,) if isinstance(setup, (Split, BatchSplit)) else ()
    return own + tuple(b for child in setup.children for b in _sized_blocks(child))


def _cache_rows(cache) -> Optional[int]:
    """The batch size of the keys a KV cache holds (its first filled layer), or None."""
    caches = [cache] + [getattr(cache, n) for n in ("self_attention_cache",) if getattr(cache, n, None) is not None]
    for part in caches:
        for layer in getattr(part, "layers", ()) or ():
            keys = getattr(layer, "keys", None)
            if isinstance(keys, torch.Tensor) and keys.dim() > 0 and keys.numel():
                return keys.shape[0]
    return None


def _input_batch(names, args, kwargs) -> Optional[int]:
    """The batch size of a call's inputs (the first batch input, by name or position), or None."""
    for name in _BATCH_INPUTS:
        value = kwargs.get(name)
        if value is None and name in names:
            index = names.index(name)
            value = args[index] if index < len(args) else None
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def _original_class(cls) -> Optional[type]:
    """The transformers class behind a patched (or AdapterModel) class: the first module class in
    its MRO that is not an adapters mixin."""
    return next((c for c in cls.__mro__ if issubclass(c, nn.Module) and not issubclass(c, ForwardMixin)), None)


@functools.lru_cache(maxsize=None)
def _generate_parameter_names(cls) -> tuple[str, ...]:
    """The positional parameters of the ``generate`` this mixin wraps: the first one after it in
    the class hierarchy that names them (a method family's pass-through ``generate(*args,
    **kwargs)``, ReFT's, is skipped)."""
    mro = cls.__mro__
    for klass in mro[mro.index(ForwardMixin) + 1 :]:
        function = klass.__dict__.get("generate")
        if function is not None and positional_names(function):
            return positional_names(function)
    return ()


@functools.lru_cache(maxsize=None)
def _forward_parameter_names(cls) -> tuple[str, ...]:
    return positional_names(_original_class(cls).forward)


def _replicate_inputs(names, args, kwargs, channels: int) -> tuple[dict, Optional[int]]:
    """``(kwargs, batch)``: the call's arguments as keywords (positional ones named by ``names``),
    each batch input repeated ``channels`` times along the batch; ``batch`` is the original size."""
    kwargs = dict(kwargs)
    for name, value in zip(names, args):
        kwargs[name] = value
    batch = None
    for name in _BATCH_INPUTS:
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            separate = name in _SEPARATE_BATCH_INPUTS and batch is not None and value.shape[0] != batch
            batch = value.shape[0] if batch is None else batch
            if value.shape[0] == batch or separate:  # CLIP's images: M rows beside N texts
                kwargs[name] = value.repeat(channels, *([1] * (value.dim() - 1)))
    return kwargs, batch


def _parallel_channels(setup) -> int:
    if isinstance(setup, Parallel):
        return setup.parallel_channels
    if isinstance(setup, Stack):
        for child in setup.children:
            if isinstance(child, Parallel):
                return child.parallel_channels
    return 1


class StackEntryMixin:
    """Swapped onto a part of the model that callers run on their own (CLIP's ``text_model`` in
    ``get_text_features``, ``vision_model`` in ``get_image_features``): run outside the model's
    forward, it opens the model's forward context itself (active setup, prefixes, Parallel
    replication of its inputs); inside it, it runs as it is.

    Example::

        >>> adapters.init(clip)                   # swaps it onto clip.text_model and clip.vision_model
        >>> clip.set_active_adapters("a")
        >>> clip.get_text_features(input_ids=ids)  # the text tower's adapters run
    """

    def forward(self, *args, **kwargs):
        model = self.__dict__["_adapters_model"]
        lock = registry_lock(model.adapters_config)  # a pass of its own: one consistent set of adapters
        token = lock.acquire_read()
        try:
            context, kwargs = model._open_stack_context(self, args, kwargs)
            if context is None:
                return super().forward(**self._entry_inputs(model, ForwardContext.get_context(), kwargs))
            with context.activate():
                return super().forward(**self._entry_inputs(model, context, kwargs))
        finally:
            lock.release_read(token)

    def _entry_inputs(self, model, context, kwargs: dict) -> dict:
        """The inputs the part runs on (as given; the encoder joins soft prompts)."""
        return kwargs


class EncoderEntryMixin(StackEntryMixin):
    """Swapped onto the encoder of an encoder-decoder model.

    * Soft prompts (prompt tuning) are joined to the encoder's input here: ``[S ; E[x]]`` and the
      attention mask gets ``P`` ones; the decoder is unchanged.
    * Run on its own (``generate`` encodes once, through ``model.get_encoder()``, before decoding),
      the encoder opens the model's forward context itself, so its adapters and prefixes run too.

    Example::

        >>> adapters.init(t5)                     # swaps it onto t5.encoder
        >>> t5.set_active_adapters("prompt")
        >>> t5.get_encoder()(input_ids=ids).last_hidden_state.shape   # P + T positions
        torch.Size([2, 15, 32])
    """

    # generate() reads the encoder's signature to route model inputs (Whisper's input_features) to it
    shows_original_signature = True

    def _entry_inputs(self, model, context, kwargs: dict) -> dict:
        for family in families_with("encoder_inputs"):
            kwargs = family.encoder_inputs(model, self, context, kwargs)
        return kwargs


class DecoderEntryMixin:
    """Swapped onto the decoder of an encoder-decoder model: while soft prompts lengthen the encoder
    output by ``P`` positions, the cross-attention mask (given for the ``T`` input tokens) gets ``P``
    ones at the prompt's place.

    Example::

        >>> adapters.init(bart)                   # swaps it onto bart.model.decoder
        >>> type(bart.model.decoder).__mro__[1].__name__
        'DecoderEntryMixin'
    """

    shows_original_signature = True

    def forward(self, *args, **kwargs):
        model = self.__dict__["_adapters_model"]
        context = ForwardContext.get_context()
        for family in families_with("decoder_inputs"):
            args, kwargs = family.decoder_inputs(model, self, context, args, kwargs)
        return super().forward(*args, **kwargs)


def install_stack_entries(model, spec) -> None:
    """Swap :class:`EncoderEntryMixin` / :class:`DecoderEntryMixin` onto the encoder and decoder of an
    encoder-decoder ``model`` (those it has), and :class:`StackEntryMixin` onto the spec's
    ``entry_modules`` (CLIP's towers).

    Example::

        >>> install_stack_entries(t5, T5)
        >>> isinstance(t5.encoder, EncoderEntryMixin), type(t5.encoder).__name__   # the name stays
        (True, 'T5Stack')
    """
    base = model.base_model
    entries = [(spec.encoder, EncoderEntryMixin), (spec.decoder_module, DecoderEntryMixin)]
    entries += [(path, StackEntryMixin) for path in spec.entry_modules]
    for path, mixin in entries:
        module = base._modules.get(path) if path else None
        if module is not None:
            # a PreTrainedModel part keeps its class name: transformers finds the outputs it records
            # (hidden states, attentions) by the class's name
            swap_class(module, mixin, keep_name=isinstance(module, PreTrainedModel))
            module.__dict__["_adapters_model"] = model
