"""Per-call state, kept so that threads and asyncio tasks never see each other's setup.

* :class:`AdapterSetup` overrides the model's active setup for the code inside a ``with`` block.
* :class:`ForwardContext` holds everything one forward pass needs: the setup in force, how the
  batch was replicated for ``Parallel``, the values a hook leaves for a later one
  (``hook_values``), and the fusion attentions / gating scores the caller asked for. It is
  opened by the outermost model forward and closed when that forward returns.
* :class:`RegistryLock` makes every forward pass see one consistent set of adapters: forward
  passes share it, changes to the adapters (add, delete, merge, ...) take it alone, so a change
  waits for the passes in flight and the passes after it see the change everywhere.

Where the state lives, and why: ``with AdapterSetup(...)`` may span an ``await``, so its stack is a
``ContextVar`` (each asyncio task and thread has its own). A forward pass is synchronous (nothing
awaits inside it), so its :class:`ForwardContext` lives in a ``threading.local``: the same isolation
for threads and tasks, and ``torch.compile`` can trace it (dynamo cannot trace ``ContextVar.get``).
Compiled code reads the innermost setup from a per-thread mirror that ``AdapterSetup`` keeps beside
its ``ContextVar`` (see :func:`compiled_setup`).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from contextlib import contextmanager
from typing import Any

import torch

from .composition import AdapterCompositionBlock, SetupLike, parse_composition
from .errors import CompositionError

__all__ = ["AdapterSetup", "ForwardContext", "RegistryLock", "compiled_setup"]

_setup_stack: contextvars.ContextVar[tuple] = contextvars.ContextVar("adapters_setup_stack", default=())


class _ThreadState(threading.local):
    """Per-thread state that compiled code reads (dynamo traces attributes of a ``threading.local``
    and guards them per thread; it cannot trace ``ContextVar.get``).

    * ``forward_context``: the :class:`ForwardContext` of the pass running in this thread;
    * ``setups``: ``(block, asyncio task or None)`` for the :class:`AdapterSetup` blocks open in
      this thread, in the order entered (the mirror of ``_setup_stack`` that compiled code reads;
      exact for threads, see ``ambiguous``);
    * ``top``: ``(adapter_setup, head_setup)`` of the innermost of them, or None;
    * ``ambiguous``: blocks entered by more than one asyncio task of this thread are open at once:
      the mirror cannot tell which is innermost for the task that runs a pass, and compiled
      passes refuse to guess.
    """

    def __init__(self):
        # every field in each thread's own dict from the start: a compiled pass then guards on the
        # values (a field only on the class gets a guard on its absence, which the pass's own
        # writes break: "Guard failed on the same frame it was created")
        self.forward_context = None
        self.top = None
        self.ambiguous = False
        self.setups = []


_state = _ThreadState()


def _running_task():
    """The asyncio task running in this thread, or None (no event loop runs here)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def compiled_setup():
    """``(adapter_setup, head_setup)`` of the innermost :class:`AdapterSetup` of this thread, or
    None: what a pass reads under ``torch.compile`` instead of the ``ContextVar`` stack, with the
    same value wherever one thread runs one task at a time.

    Raises:
        CompositionError: AdapterSetup blocks of several asyncio tasks are open in this thread at
            once (the per-thread mirror cannot tell whose is innermost).

    Example::

        >>> with AdapterSetup("a"):
        ...     compiled_setup()
        (Stack[a], None)
    """
    if _state.ambiguous:
        raise CompositionError(
            "AdapterSetup blocks of several asyncio tasks are open in this thread at once, and a compiled forward "
            "pass cannot tell which one belongs to the task that runs it (torch.compile cannot read the task's "
            "ContextVar). Run compiled passes with model.set_active_adapters(...), keep `with AdapterSetup(...)` from "
            "spanning an await, or run the tasks in threads of their own."
        )
    return _state.top



def _sync_mirror() -> None:
    """Derive ``top`` and ``ambiguous`` of this thread's mirror from its open blocks (see _ThreadState)."""
    mirror = _state.setups
    _state.ambiguous = len({owner for _, owner in mirror}) > 1  # blocks of several tasks are open
    _state.top = (mirror[-1][0].adapter_setup, mirror[-1][0].head_setup) if mirror else None

class AdapterSetup:
    """Context manager that activates a setup for every forward pass run inside it.

    Nestable (the innermost wins) and isolated per thread and per asyncio task. The setup is
    validated against the model on the first forward pass that uses it.

    Args:
        adapter_setup: an adapter name, ``"a,b"``, a list, or a composition block.
        head_setup: name of the prediction head to use (flexible-head models).
        ignore_empty: if True, an empty setup leaves the model's own active setup in force.

    Example::

        >>> with adapters.AdapterSetup(Stack("de", "sentiment")):
        ...     logits = model(**batch).logits
    """

    def __init__(self, adapter_setup: SetupLike, head_setup: Any = None, ignore_empty: bool = False):
        self.adapter_setup = parse_composition(adapter_setup)
        self.head_setup = head_setup
        self.ignore_empty = ignore_empty
        self._tokens: list[contextvars.Token] = []

    def __enter__(self) -> "AdapterSetup":
        if self.ignore_empty and self.adapter_setup is None:
            self._tokens.append(None)
            return self
        self._tokens.append(_setup_stack.set(_setup_stack.get() + (self,)))
        _state.setups.append((self, _running_task()))
        _sync_mirror()
        return self

    def __exit__(self, *exc) -> None:
        token = self._tokens.pop()
        if token is None:
            return
        _setup_stack.reset(token)
        mirror = _state.setups
        for index in range(len(mirror) - 1, -1, -1):  # this block (not always the last one with several tasks)
            if mirror[index][0] is self:
                del mirror[index]
                break
        _sync_mirror()

    @staticmethod
    def get_context() -> "AdapterSetup | None":
        """The innermost active :class:`AdapterSetup`, or None.

        Example::

            >>> with AdapterSetup("a") as outer, AdapterSetup("b"):
            ...     AdapterSetup.get_context().adapter_setup
            Stack[b]
            >>> AdapterSetup.get_context() is None
            True
        """
        stack = _setup_stack.get()
        return stack[-1] if stack else None

    @staticmethod
    def current() -> "tuple[Any, Any] | None":
        """``(adapter_setup, head_setup)`` of the innermost active :class:`AdapterSetup`, or None;
        traceable by ``torch.compile`` (read from the per-thread mirror there, see
        :func:`compiled_setup`).

        Example::

            >>> with AdapterSetup("a", head_setup="h"):
            ...     AdapterSetup.current()
            (Stack[a], 'h')
        """
        if torch.compiler.is_compiling():
            return compiled_setup()
        stack = _setup_stack.get()
        return (stack[-1].adapter_setup, stack[-1].head_setup) if stack else None

    @classmethod
    def get_context_adapter_setup(cls) -> AdapterCompositionBlock | None:
        """The adapter setup of the innermost active :class:`AdapterSetup`, or None.

        Example::

            >>> with AdapterSetup(Parallel("a", "b")):
            ...     AdapterSetup.get_context_adapter_setup()
            Parallel[a, b]
        """
        context = cls.get_context()
        return context.adapter_setup if context is not None else None

    @classmethod
    def get_context_head_setup(cls):
        """The head setup of the innermost active :class:`AdapterSetup`, or None.

        Example::

            >>> with AdapterSetup("a", head_setup="sentiment"):
            ...     AdapterSetup.get_context_head_setup()
            'sentiment'
        """
        context = cls.get_context()
        return context.head_setup if context is not None else None


class ForwardContext:
    """State of one forward pass of a model with adapters.

    Attributes:
        model: the model whose forward opened the context.
        setup: the composition tree in force (validated), or None.
        skip_layers: layer indices where adapters are bypassed.
        parallel_channels: how many times the batch was replicated for ``Parallel`` (1: not).
        original_batch_size: the batch size before replication.
        output_adapter_fusion_attentions: whether to collect fusion attention weights.
        adapter_fusion_attentions: the collected fusion attention weights, per fusion name
            and layer.
        output_adapter_gating_scores: whether to collect gating scores.
        prefix_states: per-forward prefix keys/values, computed once per pass by the prefix
            tuning pool: ``{adapter: AdapterPrefixes}`` (each layer's keys/values per location).
        attention_extended: whether some method adds keys/values to attention in this pass
            (the attention wrapper and its mask function act only then).
        attention_adjusted: whether some method changes attention outputs in this pass without
            adding keys (Llama-Adapter's adaption prompts): the attention wrapper acts, the mask
            function stays the backend's own.
        adapter_gating_scores: the collected gating scores, per adapter and layer.
        task_ids: the task id of each batch row (a 1-d ``int64`` tensor, checked against the setup's
            ``MultiTask`` blocks when the pass starts), from the call's ``task_ids``; None without one.
        kv_cache_layers: the ``layers`` lists of the pass's ``past_key_values`` while prefixes are
            active (empty otherwise): they may keep the wrapper's joins (see
            ``adapters.hooks.joined_cache``).
        hook_values: values one hook of the pass leaves for a hook that runs later in it, keyed by
            the taker: a bottleneck host's id (its residual stream ``x`` with the host's setup,
            from the residual source), a post-LN norm's id (the block output it returns instead
            of its own), ``("attention_input", id(attention))`` (a gated prefix's input), or a
            name such as prefix tuning's ``POSITION_OFFSETS``. Formerly ``residuals`` (still
            readable under that name).

    Example::

        >>> ctx = ForwardContext.get_context()   # inside a hook during model(...)
        >>> ctx.setup
        Stack[a]
    """

    def __init__(self, model, setup=None, skip_layers=None):
        self.model = model
        self.registry = None  # the adapters registry of the model that opened this context
        self.setup = setup
        self.skip_layers = frozenset(skip_layers or ())
        self.parallel_channels = 1
        self.original_batch_size = None
        self.output_adapter_fusion_attentions = False
        self.output_adapter_gating_scores = False
        self.task_ids = None  # per-row task ids for MultiTask blocks (see adapters.forward)
        self.adapter_fusion_attentions: dict = {}
        self.adapter_gating_scores: dict = {}
        self.prefix_states: dict = {}
        # tensors built once per pass for all layers (see hooks.attention._once_per_pass)
        self.pass_cache: dict = {}
        # the layer lists of the pass's KV cache, where the attention wrapper may keep joins
        self.kv_cache_layers: tuple = ()
        self.attention_extended = False
        self.pending_prompt = None  # (position, prompt) for the embedding module to join, see prompt_tuning
        self.attention_adjusted = False
        # hand-over slots: a module earlier in the pass leaves a value for a hook later in it
        self.hook_values: dict[Any, Any] = {}

    @property
    def residuals(self) -> dict:
        """The former name of :attr:`hook_values` (it holds more than residuals), kept for code
        written against it.

        Example::

            >>> context.residuals is context.hook_values
            True
        """
        return self.hook_values

    @staticmethod
    def get_context() -> "ForwardContext | None":
        """The context of the forward pass running in this thread/task, or None.

        Example::

            >>> ForwardContext.get_context() is None      # outside a forward pass
            True
            >>> def hook(module, args, output):           # inside one (a forward hook)
            ...     print(ForwardContext.get_context().parallel_channels)
        """
        return _state.forward_context

    @contextmanager
    def activate(self):
        """Make this context current for the duration of the ``with`` block.

        Used when a forward pass is replayed outside its original call (gradient checkpointing
        recomputes layers during backward).

        Example::

            >>> context = ForwardContext.get_context()    # saved during the forward pass
            >>> with context.activate():                  # later, e.g. in a recomputation
            ...     layer(hidden_states)
        """
        previous = _state.forward_context
        _state.forward_context = self
        try:
            yield self
        finally:
            _state.forward_context = previous


class RegistryLock:
    """A readers-writer lock over one model's adapters (kept on its registry).

    Forward passes are readers: any number run at once, from any threads. A change of the
    adapters (``add_adapter``, ``delete_adapter``, fusions, ``merge_adapter``, ``reset_adapter``,
    ``merge_and_unload``, ...) is a writer: it waits until the passes in flight have returned, and
    passes that start while it waits or runs wait for it. So a pass runs an adapter in every layer
    it covers or in none (an adapter deleted before the pass starts makes the pass fail with the
    "unknown adapter" error of its setup), never in only some of them.

    Re-entrant: a pass that calls the model again (a head model calling its base model, a
    generation step) and a change that makes other changes (``delete_adapter`` deleting the
    fusions of the adapter) do not wait for themselves; a pass may run inside a change. A change
    started from inside a pass of the same model in the same thread (a forward hook deleting an
    adapter) would wait for itself forever, so it is refused with an error instead. Writers go
    first: a waiting change is not starved by a stream of passes.

    Copies of a model (``copy.deepcopy``, pickling) get a fresh, unlocked lock.

    Example::

        >>> lock = RegistryLock()
        >>> with lock.reading():           # a forward pass
        ...     pass
        >>> with lock.writing():           # a change of the adapters
        ...     pass
    """

    def __init__(self):
        self._condition = threading.Condition(threading.Lock())
        self._readers = 0  # threads inside a pass (each counted once, however deeply nested)
        self._writer: int | None = None  # the thread making a change
        self._writer_depth = 0
        self._writers_waiting = 0
        self._local = threading.local()  # per thread: nesting depth of reading()

    def __deepcopy__(self, memo) -> "RegistryLock":
        return RegistryLock()

    def __reduce__(self):
        return (RegistryLock, ())

    @property
    def reading_here(self) -> bool:
        """Whether the calling thread is inside a :meth:`reading` block of this lock.

        Example::

            >>> with lock.reading():
            ...     lock.reading_here
            True
        """
        return getattr(self._local, "depth", 0) > 0

    def acquire_read(self) -> "bool | None":
        """Enter a forward pass (shared); returns the token :meth:`release_read` takes. Waits while
        a change runs or waits; re-entrant within a thread.

        Under ``torch.compile`` it does nothing (returns None): a thread's condition variable
        cannot be traced, so a compiled pass neither waits for a change of the adapters made by
        another thread nor holds one back (make such changes between compiled passes).

        Example::

            >>> token = lock.acquire_read()
            >>> try:
            ...     output = run_layers()
            ... finally:
            ...     lock.release_read(token)
        """
        if torch.compiler.is_compiling():
            return None
        local = self._local
        depth = getattr(local, "depth", 0)
        counted = depth == 0 and self._writer != threading.get_ident()
        if counted:
            with self._condition:
                while self._writer is not None or self._writers_waiting:
                    self._condition.wait()
                self._readers += 1
        local.depth = depth + 1
        return counted

    def release_read(self, token: "bool | None") -> None:
        """Leave a forward pass entered with :meth:`acquire_read` (``token``: what it returned).

        Example::

            >>> lock.release_read(lock.acquire_read())
        """
        if token is None:  # acquired under torch.compile: nothing was taken
            return
        self._local.depth -= 1
        if token:
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextmanager
    def reading(self):
        """Hold the lock shared for the ``with`` block (a forward pass).

        Example::

            >>> with model_registry_lock.reading():
            ...     output = run_layers()
        """
        token = self.acquire_read()
        try:
            yield self
        finally:
            self.release_read(token)

    @contextmanager
    def writing(self, what: str = "changing the adapters"):
        """Hold the lock alone for the ``with`` block (a change of the adapters).

        Raises:
            RuntimeError: the calling thread is inside a forward pass of this model (the change
                would wait for that pass forever). ``what`` names the change in the message.

        Example::

            >>> with model_registry_lock.writing("delete_adapter('a')"):
            ...     remove_modules("a")
        """
        me = threading.get_ident()
        if self._writer == me:
            self._writer_depth += 1
            try:
                yield self
            finally:
                self._writer_depth -= 1
            return
        if self.reading_here:
            raise RuntimeError(
                f"{what} was called inside a forward pass of the same model (e.g. from a forward hook); the "
                f"adapters cannot change while a pass runs on them. Make the change before or after the forward pass."
            )
        with self._condition:
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._condition.wait()
            finally:
                self._writers_waiting -= 1
            self._writer, self._writer_depth = me, 1
        try:
            yield self
        finally:
            with self._condition:
                self._writer, self._writer_depth = None, 0
                self._condition.notify_all()


def registry_lock(registry) -> RegistryLock:
    """The :class:`RegistryLock` of a model's adapter registry (created on first use).

    Example::

        >>> with registry_lock(model.adapters_config).writing("my change"):
        ...     ...
    """
    lock = registry.__dict__.get("_lock")
    if lock is None:
        lock = registry.__dict__.setdefault("_lock", RegistryLock())
    return lock
