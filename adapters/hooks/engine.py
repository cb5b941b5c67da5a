"""The composition engine: one walk over a block tree, shared by every method.

A method hosts its adapters at some place in every layer (a bottleneck host after a residual
block, a LoRA host on a linear layer, ...). The host mixes in :class:`ComposableLayer` and
implements the small protocol below; the engine in :meth:`ComposableLayer.compose` turns
``Stack``/``Parallel``/``Split``/``BatchSplit``/``Average``/``MultiTask`` (and ``Fuse``, where the
method defines it) into calls of that protocol. A ``MultiTask`` is a ``BatchSplit`` over the rows
sorted by their task id (the forward context's ``task_ids``); the rows return in their order.
Under ``torch.compile`` the row counts per task are not known while tracing, so every child runs
on every row and each row keeps its own child's result (:meth:`ComposableLayer.choose_rows`).

Protocol of a method's host (``State`` is the method's NamedTuple of intermediate values):

* ``compose_single(name, state) -> State``: apply one adapter.
* ``compose_fuse(block, state) -> State``: AdapterFusion (only methods that support it).
* ``mean(states, weights, start) -> State``: weighted mean of the children of an ``Average``
  (``start`` is the state the children started from).
* ``BATCH_FIELDS`` / ``SEQUENCE_FIELDS``: the state fields that carry a batch / sequence
  dimension; slicing and concatenation of states are derived from them.

Children of a block that have no adapter at this host (``leave_out``, another method, another
location) are pruned once per setup and host and cached, so a forward pass does no work for
adapters that do not run here.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple, Optional

import torch

from ..composition import Average, BatchSplit, Fuse, MultiTask, Parallel, Split, Stack
from ..context import ForwardContext
from ..errors import CompositionError

__all__ = ["HostCapabilities", "ComposableLayer", "RowGroups", "choose_per_row", "prune_setup", "hoist_batch_splits", "batch_branches", "remove_host_mixin"]


_IDENTITY = None  # a pruned child: passes its slice of the state through unchanged

# instance entries ComposableLayer._init_composable sets
_COMPOSABLE_ENTRIES = ("layer_idx", "location", "_setup_cache")


def remove_host_mixin(module: torch.nn.Module, mixin: type, containers: tuple = ()) -> None:
    """Undo ``swap_class(module, mixin)`` when a host is no longer needed: drop the child modules
    named in ``containers``, take ``mixin`` out of the module's class (the other mixins swapped onto
    it stay, in their order, with the same class objects as before), and drop the host's
    bookkeeping entries (``layer_idx``, ``location``, the setup cache) once no host mixin is left.
    The module's own parameters and names are untouched.

    Example::

        >>> remove_host_mixin(query, LinearHost, containers=("loras",))
        >>> type(query).__name__
        'Linear'
    """
    from .patching import restore_class, swap_class

    for name in containers:
        module._modules.pop(name, None)
    mixins = module.__dict__.get("_adapters_mixins", ())
    if mixin in mixins:
        original = module.__dict__["_adapters_original_class"]
        keep_name = type(module).__name__ == original.__name__
        remaining = tuple(m for m in mixins if m is not mixin)
        restore_class(module)
        for other in reversed(remaining):  # swap_class puts a mixin in front: oldest first
            swap_class(module, other, keep_name=keep_name)
    if issubclass(mixin, ComposableLayer) and not isinstance(module, ComposableLayer):
        for key in _COMPOSABLE_ENTRIES:
            module.__dict__.pop(key, None)
        module.__dict__.update(module.__dict__.pop("_adapters_shadowed", {}))


def prune_setup(setup, present: set):
    """Restrict ``setup`` to the adapters in ``present``.

    Returns None if nothing in the setup runs here. Children of positional blocks (Parallel,
    Split, BatchSplit) are kept as ``None`` placeholders so that branch ``i`` still means child
    ``i``; Stack and Fuse simply drop them; Average drops them and rescales the remaining weights to the
    original total. A ``BatchSplit`` below an ``Average`` or ``Fuse`` is first moved above it
    (:func:`hoist_batch_splits`), so that each row drops exactly the children absent from its own
    setup.

    Example::

        >>> prune_setup(Stack("a", Parallel("b", "c")), {"a", "c"})
        Stack[a, Parallel[None, c]]
    """
    return _prune(hoist_batch_splits(setup), present)


def _prune(setup, present: set):
    if isinstance(setup, str):
        return setup if setup in present else None
    children = [_prune(child, present) for child in setup.children]
    if all(child is None for child in children):
        return None
    if isinstance(setup, (Stack, Fuse)):
        kept = [c for c in children if c is not None]
        if isinstance(setup, Fuse):
            return _Pruned(Fuse, kept, name=setup.name)
        return kept[0] if len(kept) == 1 and isinstance(kept[0], str) else _Pruned(Stack, kept)
    if isinstance(setup, Average):
        pairs = [(c, w) for c, w in zip(children, setup.weights) if c is not None]
        rescale = sum(setup.weights) / sum(w for _, w in pairs)  # keep the total the user gave
        return _Pruned(Average, [c for c, _ in pairs], weights=[w * rescale for _, w in pairs])
    if isinstance(setup, Split):
        return _Pruned(Split, children, splits=setup.splits)
    if isinstance(setup, BatchSplit):
        return _Pruned(BatchSplit, children, batch_sizes=setup.batch_sizes)
    if isinstance(setup, Parallel):
        return _Pruned(Parallel, children)
    if isinstance(setup, MultiTask):  # positional: child i takes the rows of task i
        return _Pruned(MultiTask, children)
    raise TypeError(f"Unknown composition block {setup!r}.")


_hoisted: dict = {}


def hoist_batch_splits(setup):
    """``setup`` with every ``BatchSplit`` below an ``Average`` or ``Fuse`` moved above it: the
    block becomes a ``BatchSplit`` over runs of rows, each run holding the block as its rows see
    it (every BatchSplit replaced by the child that owns them). The same computation row by row,
    but an ``Average`` / ``Fuse`` that drops a child absent at some position (``leave_out``) now
    drops it for exactly the rows whose setup has it. Cached per setup.

    Example::

        >>> hoist_batch_splits(Average("a", BatchSplit("b", "c", batch_sizes=[1, 2])))
        BatchSplit[Average[a, b], Average[a, c]]
    """
    if isinstance(setup, str):
        return setup
    try:
        return _hoisted[setup]
    except KeyError:
        pass
    result = _hoist(setup)
    if len(_hoisted) > 1024:
        _hoisted.clear()
    _hoisted[setup] = result
    return result


def _hoist(node):
    if isinstance(node, str):
        return node
    children = [_hoist(child) for child in node.children]
    node = _rebuilt(node, children)
    if isinstance(node, (Average, Fuse)) and any(_contains_batch_split(child) for child in children):
        rows = _rows_seen(node)
        cuts = sorted(set(_row_cuts(node, 0)) | {0, rows})
        if rows > 0:
            runs = list(zip(cuts, cuts[1:]))
            parts = [_owned_by_row(node, start) for start, _ in runs]
            return BatchSplit(*parts, batch_sizes=[end - start for start, end in runs])
    return node


def _rebuilt(node, children):
    """A block like ``node`` (same kind and parameters) with ``children``."""
    if list(children) == list(node.children):
        return node
    if isinstance(node, Fuse):
        return Fuse(*children, name=node.name)
    if isinstance(node, Split):
        return Split(*children, splits=list(node.splits))
    if isinstance(node, BatchSplit):
        return BatchSplit(*children, batch_sizes=list(node.batch_sizes))
    if isinstance(node, Average):
        return Average(*children, weights=list(node.weights), normalize_weights=False)
    return type(node)(*children)


def _contains_batch_split(node) -> bool:
    return not isinstance(node, str) and (isinstance(node, BatchSplit) or any(_contains_batch_split(c) for c in node.children))


def _rows_seen(node) -> int:
    """The rows a block sees, read from its outermost BatchSplit (all agree: validate_composition)."""
    if isinstance(node, BatchSplit):
        return sum(node.batch_sizes)
    for child in node.children:
        if not isinstance(child, str) and _contains_batch_split(child):
            return _rows_seen(child)
    raise ValueError(f"{node} contains no BatchSplit")


def _row_cuts(node, offset: int) -> list:
    """The row boundaries of every BatchSplit in ``node`` (which starts at row ``offset``)."""
    if isinstance(node, str):
        return []
    if not isinstance(node, BatchSplit):
        return [cut for child in node.children for cut in _row_cuts(child, offset)]
    cuts, start = [], offset
    for child, size in zip(node.children, node.batch_sizes):
        cuts += [start] + _row_cuts(child, start)
        start += size
    return cuts + [start]


def _owned_by_row(node, row: int):
    """``node`` as row ``row`` sees it: every BatchSplit replaced by the child owning the row."""
    if isinstance(node, str):
        return node
    if isinstance(node, BatchSplit):
        start = 0
        for child, size in zip(node.children, node.batch_sizes):
            if row < start + size:
                return _owned_by_row(child, row - start)
            start += size
        raise ValueError(f"row {row} lies outside {node}")
    return _rebuilt(node, [_owned_by_row(child, row) for child in node.children])


def setup_members(setup, present, cache: dict) -> tuple[str, ...]:
    """The adapters of ``setup`` (depth first, each once) that ``present()`` contains — for the
    model-wide pools (prefix tuning, prompt tuning, Llama-Adapter), which look this up in every
    forward pass; kept in ``cache`` per setup (clear it when the pool's adapters change).

    Example::

        >>> setup_members(Stack("lang", "prefix"), lambda: {"prefix"}, {})
        ('prefix',)
    """
    try:
        return cache[setup]
    except KeyError:
        container = present()
        names = cache[setup] = tuple(n for n in dict.fromkeys(setup.names_in_order()) if n in container)
        return names


def batch_branches(block, batch: int) -> list:
    """``[(rows, name or None)]``: which adapter acts on which consecutive rows of a batch, for a
    setup pruned to one host whose adapters replace something rather than compose (one adapter
    per row). ``Parallel`` / ``BatchSplit`` split the rows among their children; inside any other
    block each row takes the first adapter of its own setup that is present here (the setup of a
    row: every Parallel / BatchSplit replaced by the child that owns the row), so
    ``Stack(Parallel("a", "b"), "c")`` gives the rows of branch ``a`` adapter ``a`` and, where
    ``a`` has none here, ``c``.

    Example::

        >>> batch_branches(prune_setup(Parallel("a", "b"), {"a", "b"}), 4)
        [(2, 'a'), (2, 'b')]
        >>> batch_branches(prune_setup(Stack(Parallel("a", "b"), "c"), {"b", "c"}), 4)
        [(2, 'c'), (2, 'b')]
    """
    if block is None or isinstance(block, str):
        return [(batch, block)]
    if block.kind in (Parallel, BatchSplit):
        sizes = block.batch_sizes or [batch // len(block.children)] * len(block.children)
        return _join_runs([branch for child, size in zip(block.children, sizes) for branch in batch_branches(child, size)])
    runs = [(batch, None)]
    for child in block.children:
        if child is not None:
            runs = _overlay_runs(runs, batch_branches(child, batch))
            if all(name is not None for _, name in runs):
                break
    return runs


def _overlay_runs(first: list, second: list) -> list:
    """Runs of ``first`` where they name an adapter, else those of ``second`` (same total rows)."""
    out, i, j, left_i, left_j = [], 0, 0, first[0][0], second[0][0]
    while i < len(first) and j < len(second):
        step = min(left_i, left_j)
        name = first[i][1] if first[i][1] is not None else second[j][1]
        out.append((step, name))
        left_i, left_j = left_i - step, left_j - step
        if left_i == 0:
            i += 1
            left_i = first[i][0] if i < len(first) else 0
        if left_j == 0:
            j += 1
            left_j = second[j][0] if j < len(second) else 0
    return _join_runs(out)


def _join_runs(runs: list) -> list:
    """Adjacent runs of one adapter joined, empty runs dropped (at least one run is kept)."""
    out: list = []
    for size, name in runs:
        if size == 0:
            continue
        if out and out[-1][1] == name:
            out[-1] = (out[-1][0] + size, name)
        else:
            out.append((size, name))
    return out or [(0, None)]


class _Pruned:
    """A block restricted to one host: same kind and parameters, children may be None."""

    __slots__ = ("kind", "children", "name", "weights", "splits", "batch_sizes")

    def __init__(self, kind, children, name=None, weights=None, splits=None, batch_sizes=None):
        self.kind = kind
        self.children = tuple(children)
        self.name = name
        self.weights = weights
        self.splits = splits
        self.batch_sizes = batch_sizes

    def last(self) -> str:
        for child in reversed(self.children):
            if child is not None:
                return child if isinstance(child, str) else child.last()
        raise ValueError("empty block")

    def __repr__(self):
        return f"{self.kind.__name__}[{', '.join(str(c) for c in self.children)}]"


class RowGroups(NamedTuple):
    """How a ``MultiTask`` block's task ids split the rows of a batch, computed once per forward
    pass (and device) and shared by every host and layer.

    ``sizes`` holds the rows per child (one entry per child), or None while ``torch.compile``
    traces (:meth:`traced`: the counts depend on the ids' values, which a graph does not know);
    ``used`` the indices of the children that have rows, ascending (every child when traced);
    ``order`` / ``inverse`` the stable sort of the rows by task and its inverse (on the device), or
    None when the rows are sorted already (or traced); ``positions`` per row the position of its
    child in ``used`` (an ``int64`` tensor on the device).

    Example::

        >>> RowGroups.of(torch.tensor([2, 0, 2]), 3, "cpu").used
        (0, 2)
    """

    sizes: list
    used: tuple
    order: Optional[torch.Tensor]
    inverse: Optional[torch.Tensor]
    positions: torch.Tensor

    @classmethod
    def of(cls, task_ids: torch.Tensor, children: int, device) -> "RowGroups":
        """The groups of ``task_ids`` (a 1-d ``int64`` tensor on the CPU) for a block of ``children``.

        Example::

            >>> RowGroups.of(torch.tensor([1, 0]), 2, "cpu").positions
            tensor([1, 0])
        """
        task_ids = task_ids.to("cpu")
        sizes = torch.bincount(task_ids, minlength=children).tolist()
        used = tuple(i for i, size in enumerate(sizes) if size)
        lookup = torch.zeros(children, dtype=torch.int64)
        lookup[list(used)] = torch.arange(len(used))
        positions = lookup[task_ids].to(device)
        if bool((task_ids[1:] >= task_ids[:-1]).all()):
            return cls(sizes, used, None, None, positions)
        order = torch.argsort(task_ids, stable=True)
        return cls(sizes, used, order.to(device), torch.argsort(order).to(device), positions)

    @classmethod
    def traced(cls, task_ids: torch.Tensor, children: int, device) -> "RowGroups":
        """The groups of ``task_ids`` as a compiled graph sees them: no row counts (``sizes`` is
        None), every child used, each row's position its task id. Reading the counts would need
        the ids' values on the host, which breaks the graph; :meth:`ComposableLayer.compose_routed`
        instead runs every child on every row and keeps each row's own result.

        Example::

            >>> RowGroups.traced(torch.tensor([2, 0, 2]), 3, "cpu").used
            (0, 1, 2)
        """
        return cls(None, tuple(range(children)), None, None, task_ids.to(device))


def choose_per_row(values: list, positions: torch.Tensor) -> torch.Tensor:
    """Row ``b`` of ``values[positions[b]]``: one tensor from equally shaped candidates (batch
    first), without reading ``positions`` on the host (so a compiled graph keeps it a tensor).

    Example::

        >>> choose_per_row([torch.zeros(3, 2), torch.ones(3, 2)], torch.tensor([1, 0, 1]))[:, 0]
        tensor([1., 0., 1.])
    """
    chosen = values[0]
    for index in range(1, len(values)):
        if values[index] is chosen:
            continue
        mask = (positions == index).view(-1, *([1] * (chosen.dim() - 1)))
        chosen = torch.where(mask, values[index], chosen)
    return chosen


class HostCapabilities:
    """What the model API may ask any entry of a model's host list (it never compares method
    names); a host class overrides the ones that hold for it.

    Example::

        >>> [type(h).__name__ for h in model._adapter_hosts if h.hosts_weight_deltas][:1]
        ['Linear']
    """

    #: the host changes its layer's weight (LoRA-family adapters): it merges and unmerges
    hosts_weight_deltas: ClassVar[bool] = False
    #: the host keeps per-adapter copies of a whole module (``modules_to_save``)
    keeps_module_copies: ClassVar[bool] = False
    #: the host runs AdapterFusion layers (bottleneck adapters)
    supports_fusion: ClassVar[bool] = False
    #: the host is taken out again once it holds no adapter (it was installed on demand)
    removed_when_empty: ClassVar[bool] = False


@torch._dynamo.assume_constant_result
def _prune_while_tracing(host, setup) -> bool:
    """Under torch.compile, fill ``host``'s cache for ``setup`` while the pass is traced (not in the
    graph): the traced lookup that follows then finds it, so a first pass that fills the cache (and
    the module-level caches pruning uses) does not leave a guard that the filled cache breaks."""
    host._pruned_setup(setup)
    return True


class ComposableLayer(HostCapabilities):
    """Mixin for a module that hosts one method's adapters at one place of one layer.

    Subclasses set ``method`` (the config ``architecture`` they host), ``supported_blocks`` and
    the protocol described in the module docstring. ``layer_idx`` and ``location`` are set when
    the model is patched.

    Example::

        >>> host = model.bert.encoder.layer[0].output       # a BERT output block with adapters
        >>> host.adapter_names()
        {'a'}
    """

    method: ClassVar[str] = ""
    supported_blocks: ClassVar[tuple] = (Stack,)
    BATCH_FIELDS: ClassVar[tuple[str, ...]] = ()
    SEQUENCE_FIELDS: ClassVar[tuple[str, ...]] = ()

    layer_idx: int = -1
    location: str = ""

    def _init_composable(self, layer_idx: int, location: str) -> None:
        # entries of the module itself that the host's shadow (a transformers attention's own
        # layer_idx): remove_host_mixin puts them back
        shadowed = {k: self.__dict__[k] for k in _COMPOSABLE_ENTRIES if k in self.__dict__}
        self.__dict__.setdefault("_adapters_shadowed", shadowed)
        self.layer_idx = layer_idx
        self.location = location
        self.__dict__["_setup_cache"] = {}

    # -- which adapters live here ---------------------------------------------------------------
    def adapter_names(self) -> set[str]:
        """Names of the adapters this host has."""
        raise NotImplementedError(f"{type(self).__name__} must implement adapter_names")

    def _invalidate_setup_cache(self) -> None:
        self.__dict__["_setup_cache"] = {}

    def active_setup(self, context: Optional[ForwardContext] = None):
        """The part of the current forward pass's setup that runs at this host, or None.

        Cached per setup, so its cost does not grow with the number of adapters. ``context``: the
        current forward context where the caller has it at hand (saves looking it up).
        """
        if context is None:
            context = ForwardContext.get_context()
        if context is None or context.setup is None or self.layer_idx in context.skip_layers:
            return None
        if torch.compiler.is_compiling():
            _prune_while_tracing(self, context.setup)
        return self._pruned_setup(context.setup)

    def _pruned_setup(self, setup):
        """``setup`` pruned to this host's adapters (cached per setup)."""
        cache = self.__dict__["_setup_cache"]
        try:
            return cache[setup]
        except KeyError:
            pruned = prune_setup(setup, self.adapter_names())
            cache[setup] = pruned
            return pruned

    # -- the engine ------------------------------------------------------------------------------
    def compose(self, setup, state):
        """Apply ``setup`` (a pruned block or a name) to ``state``."""
        if setup is _IDENTITY:
            return state
        if isinstance(setup, str):
            return self.compose_single(setup, state)
        kind = setup.kind
        if kind is Stack:
            for child in setup.children:
                state = self.compose(child, state)
            return state
        if kind is Parallel:
            return self._compose_batch_groups(setup.children, state, self._parallel_sizes(setup, state))
        if kind is BatchSplit:
            sizes = list(setup.batch_sizes)
            batch = self._batch_size(state)
            if sum(sizes) != batch:
                raise CompositionError(
                    f"BatchSplit batch_sizes {sizes} add up to {sum(sizes)} but the batch has {batch} rows at "
                    f"{type(self).__name__} (layer {self.layer_idx}); make them add up to the batch size."
                )
            return self._compose_batch_groups(setup.children, state, sizes)
        if kind is Split:
            return self.compose_split(setup, state)
        if kind is Average:
            return self.mean([self.compose(child, state) for child in setup.children], setup.weights, state)
        if kind is Fuse:
            return self.compose_fuse(setup, state)
        if kind is MultiTask:
            return self._compose_multi_task(setup, state)
        raise TypeError(f"Unknown block {setup!r}")

    def _compose_multi_task(self, setup, state):
        """Child ``i`` processes the rows whose task id is ``i`` (see :meth:`compose_routed`)."""
        return self.compose_routed(setup, state, self._task_rows(setup, state))

    def compose_routed(self, setup, state, rows: "RowGroups"):
        """A ``MultiTask`` block on ``state``: the rows sorted by task (stably, :meth:`permute_rows`),
        each child on its run of rows (children without rows are skipped), the rows put back in
        their order. A host with a faster way for its adapters (stacked LoRA factors) overrides it.

        Example::

            >>> host.compose_routed(setup, state, host._task_rows(setup, state)).output.shape
            torch.Size([4, 7, 32])
        """
        if rows.sizes is None:  # compiled: every child on every row, each row keeps its own child's
            return self.choose_rows([self.compose(child, state) for child in setup.children], rows.positions, state)
        if len(rows.used) == 1:  # every row takes the same child
            return self.compose(setup.children[rows.used[0]], state)
        grouped = state if rows.order is None else self.permute_rows(state, rows.order, rows.inverse)
        children = [setup.children[index] for index in rows.used]
        grouped = self._compose_batch_groups(children, grouped, [rows.sizes[index] for index in rows.used])
        return grouped if rows.order is None else self.permute_rows(grouped, rows.inverse, rows.order)

    def choose_rows(self, states: list, positions: torch.Tensor, start):
        """One state whose row ``b`` is row ``b`` of ``states[positions[b]]`` (every state covers
        all rows; ``start`` is the state they began from): a ``MultiTask`` inside a compiled graph.
        A host whose state holds per-row bookkeeping besides the tensors (a bottleneck's ``last``)
        chooses that too.

        Example::

            >>> host.choose_rows([host.compose("a", s), host.compose("b", s)], torch.tensor([1, 0]), s)
        """
        template, changes = next((s for s in reversed(states) if s is not start), start), {}
        for field in self.BATCH_FIELDS:
            values = [getattr(s, field) for s in states]
            if all(v is None for v in values):
                continue
            values = [v if v is not None else getattr(start, field) for v in values]
            present = next(v for v in values if v is not None)
            # a field a child leaves unset where another sets it (a bottleneck's u of an absent child)
            # counts as zeros on that child's rows, as when row groups are concatenated
            changes[field] = choose_per_row([v if v is not None else torch.zeros_like(present) for v in values], positions)
        return template._replace(**changes)

    def permute_rows(self, state, order: torch.Tensor, inverse: torch.Tensor):
        """``state`` with its rows in the order ``order`` (a permutation; ``inverse`` undoes it).
        A host whose state holds per-row bookkeeping besides the tensors (a bottleneck's ``last``)
        permutes that too.

        Example::

            >>> host.permute_rows(state, torch.tensor([1, 0]), torch.tensor([1, 0])).output[0]   # row 1
        """
        return self.select_rows(state, self.BATCH_FIELDS, order)

    def _task_rows(self, setup, state) -> "RowGroups":
        """The forward context's task ids on this state's rows as :class:`RowGroups`, computed
        once per pass and device (every host and layer reuses them)."""
        context = ForwardContext.get_context()
        task_ids = None if context is None else getattr(context, "task_ids", None)
        batch = self._batch_size(state)
        if task_ids is None:
            raise CompositionError(
                f"{setup.kind.__name__} needs task ids, one per batch row, but this pass has none at "
                f"{type(self).__name__} (layer {self.layer_idx}); call the model with task_ids=..., e.g. "
                f"model(**batch, task_ids=[0, 1, ...])."
            )
        device = getattr(state, self.BATCH_FIELDS[0]).device
        # compiled: no cache (a graph computes this in a few ops, and looking up a key that holds
        # the batch size would fix a dynamic batch size to one value)
        compiling = torch.compiler.is_compiling()
        key = ("task_rows", batch, len(setup.children), device)
        found = None if compiling else context.pass_cache.get(key)
        if found is None:
            rows = task_ids.numel()
            if batch != rows:
                if batch % rows or batch // rows != context.parallel_channels:
                    raise CompositionError(
                        f"MultiTask got task_ids for {rows} rows, but the batch has {batch} rows at {type(self).__name__} "
                        f"(layer {self.layer_idx}); give one task id per row of the batch."
                    )
                task_ids = task_ids.repeat(batch // rows)  # Parallel replicated the rows: each copy keeps its task
            found = (RowGroups.traced if compiling else RowGroups.of)(task_ids, len(setup.children), device)
            if not compiling:
                context.pass_cache[key] = found
        return found

    def _parallel_sizes(self, setup, state) -> list[int]:
        channels = len(setup.children)
        batch = self._batch_size(state)
        if batch % channels:
            raise CompositionError(
                f"Parallel with {channels} branches got a batch of {batch} rows, which is not a multiple of {channels}; "
                f"Parallel replicates the input when the model's forward starts, so run the whole model."
            )
        return [batch // channels] * channels

    def _batch_size(self, state) -> int:
        return getattr(state, self.BATCH_FIELDS[0]).shape[0]

    def _compose_batch_groups(self, children, state, sizes):
        """``children[i]`` on the next ``sizes[i]`` rows of ``state``, the results joined again."""
        outputs, start, template = [], 0, None
        for child, size in zip(children, sizes):
            outputs.append(self.compose(child, self.slice_state(state, self.BATCH_FIELDS, 0, start, start + size)))
            template = outputs[-1] if child is not _IDENTITY else template
            start += size
        return self.cat_states(outputs, self.BATCH_FIELDS, 0, template)

    def compose_split(self, setup, state):
        """Children process consecutive sequence segments; the rest of the sequence passes through."""
        seq_len = getattr(state, self.SEQUENCE_FIELDS[0]).shape[1]
        outputs, start, template = [], 0, None
        for child, size in zip(setup.children, setup.splits):
            end = min(start + size, seq_len)
            outputs.append(self.compose(child, self.slice_state(state, self.SEQUENCE_FIELDS, 1, start, end)))
            template = outputs[-1] if child is not _IDENTITY else template
            start = end
        if start < seq_len:
            outputs.append(self.slice_state(state, self.SEQUENCE_FIELDS, 1, start, seq_len))
        return self.cat_states(outputs, self.SEQUENCE_FIELDS, 1, template)

    def compose_single(self, name: str, state):
        raise NotImplementedError(f"{type(self).__name__} must implement compose_single")

    def compose_fuse(self, setup, state):
        raise CompositionError(f"{self.method} adapters cannot be fused; Fuse is defined for bottleneck adapters only.")

    def mean(self, states, weights, start):
        raise NotImplementedError(f"{type(self).__name__} must implement mean")

    # -- state algebra derived from the field lists ---------------------------------------------
    @staticmethod
    def select_rows(state: NamedTuple, fields, index: torch.Tensor):
        """The rows ``index`` (a 1-d index tensor) of the tensor fields ``fields``, in that order."""
        return state._replace(**{f: getattr(state, f).index_select(0, index) for f in fields if getattr(state, f) is not None})

    @staticmethod
    def slice_state(state: NamedTuple, fields, dim: int, start: int, end: int):
        return state._replace(
            **{f: getattr(state, f).narrow(dim, start, end - start) for f in fields if getattr(state, f) is not None}
        )

    @staticmethod
    def cat_states(states, fields, dim: int, template=None):
        """Concatenate the tensor fields; the other fields come from ``template`` (the last state
        an adapter produced)."""
        changes = {}
        for f in fields:
            values = [getattr(s, f) for s in states]
            if all(v is not None for v in values):
                changes[f] = torch.cat(values, dim=dim)
        return (template if template is not None else states[-1])._replace(**changes)
