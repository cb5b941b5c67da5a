"""The composition engine: one walk over a block tree, shared by every method.

A method hosts its adapters at some place in every layer (a bottleneck host after a residual
block, a LoRA host on a linear layer, ...). The host mixes in :class:`ComposableLayer` and
implements the small protocol below; the engine in :meth:`ComposableLayer.compose` turns
``Stack``/``Parallel``/``Split``/``BatchSplit``/``Average`` (and ``Fuse``, where the method defines
it) into calls of that protocol.

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

from ..composition import Average, BatchSplit, Fuse, Parallel, Split, Stack
from ..context import ForwardContext

__all__ = ["ComposableLayer", "prune_setup", "batch_branches", "first_child", "init_bert_weights"]


def init_bert_weights(module: torch.nn.Module) -> None:
    """BERT's initialisation (weights N(0, 0.02), zero biases, unit LayerNorms); for ``Module.apply``."""
    if isinstance(module, torch.nn.Linear):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, torch.nn.LayerNorm):
        torch.nn.init.ones_(module.weight)
        torch.nn.init.zeros_(module.bias)

_IDENTITY = None  # a pruned child: passes its slice of the state through unchanged


def prune_setup(setup, present: set):
    """Restrict ``setup`` to the adapters in ``present``.

    Returns None if nothing in the setup runs here. Children of positional blocks (Parallel,
    Split, BatchSplit) are kept as ``None`` placeholders so that branch ``i`` still means child
    ``i``; Stack and Fuse simply drop them; Average drops them and rescales the remaining weights to the
    original total.
    """
    if isinstance(setup, str):
        return setup if setup in present else None
    children = [prune_setup(child, present) for child in setup.children]
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
    raise TypeError(f"Unknown composition block {setup!r}.")


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
        names = cache[setup] = tuple(n for n in dict.fromkeys(setup.flatten()) if n in container)
        return names


def batch_branches(block, batch: int, choose) -> list:
    """``[(rows, name or None)]``: which adapter acts on which consecutive rows of a batch, for a
    setup pruned to one host. ``Parallel`` / ``BatchSplit`` split the rows among their children;
    any other block hands all its rows to the child ``choose(block)`` picks (a host whose adapter
    replaces something, rather than composing, decides which one).

    Example::

        >>> batch_branches(prune_setup(Parallel("a", "b"), {"a", "b"}), 4, choose=first_child)
        [(2, 'a'), (2, 'b')]
    """
    if block is None or isinstance(block, str):
        return [(batch, block)]
    if block.kind in (Parallel, BatchSplit):
        sizes = block.batch_sizes or [batch // len(block.children)] * len(block.children)
        return [branch for child, size in zip(block.children, sizes) for branch in batch_branches(child, size, choose)]
    return batch_branches(choose(block), batch, choose)


def first_child(block):
    """The first child of a pruned block that runs here (a ``choose`` for :func:`batch_branches`)."""
    return next(child for child in block.children if child is not None)


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


class ComposableLayer:
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
        cache = self.__dict__["_setup_cache"]
        setup = context.setup
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
            return self._compose_batch_groups(setup, state, self._parallel_sizes(setup, state))
        if kind is BatchSplit:
            sizes = list(setup.batch_sizes)
            batch = self._batch_size(state)
            if sum(sizes) != batch:
                raise ValueError(
                    f"BatchSplit batch_sizes {sizes} add up to {sum(sizes)} but the batch has {batch} rows; "
                    f"make them add up to the batch size."
                )
            return self._compose_batch_groups(setup, state, sizes)
        if kind is Split:
            return self.compose_split(setup, state)
        if kind is Average:
            return self.mean([self.compose(child, state) for child in setup.children], setup.weights, state)
        if kind is Fuse:
            return self.compose_fuse(setup, state)
        raise TypeError(f"Unknown block {setup!r}")

    def _parallel_sizes(self, setup, state) -> list[int]:
        channels = len(setup.children)
        batch = self._batch_size(state)
        if batch % channels:
            raise ValueError(
                f"Parallel with {channels} branches got a batch of {batch} rows, which is not a multiple of {channels}."
            )
        return [batch // channels] * channels

    def _batch_size(self, state) -> int:
        return getattr(state, self.BATCH_FIELDS[0]).shape[0]

    def _compose_batch_groups(self, setup, state, sizes):
        outputs, start, template = [], 0, None
        for child, size in zip(setup.children, sizes):
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
        raise ValueError(f"{self.method} adapters cannot be fused; Fuse is defined for bottleneck adapters only.")

    def mean(self, states, weights, start):
        raise NotImplementedError(f"{type(self).__name__} must implement mean")

    # -- state algebra derived from the field lists ---------------------------------------------
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
