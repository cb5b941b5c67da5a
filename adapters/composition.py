"""The composition algebra: blocks that decide which adapters run at a hook point and how their
results combine.

A *setup* is an adapter name or a tree of blocks whose leaves are adapter names:

========== ===================================================================================
Stack      children applied one after another (each sees the previous one's output)
Parallel   the batch is replicated once per child; child ``i`` processes copy ``i``
Fuse       AdapterFusion: an attention over the children's outputs
Split      the sequence is cut into segments (``splits``); child ``i`` processes segment ``i``
BatchSplit the batch is cut into groups (``batch_sizes``); child ``i`` processes group ``i``
Average    every child processes the input; outputs are averaged with ``weights``
MultiTask  each batch row is processed by the child its task id names (``task_ids`` of the call)
========== ===================================================================================

What each block means for each method family is documented in ``docs/composition.rst``; this
module builds, parses and validates the trees on their own (nestings, ``Parallel`` placement,
``BatchSplit`` sizes that fit one batch; errors are :class:`~adapters.errors.CompositionError`),
and checks an input batch against them (:func:`check_input_batch`, at the start of a forward
pass). Validation against a concrete model (do the adapters exist, can their methods take part
in every block around them) lives in :mod:`adapters.model_mixin`.

Example::

    >>> from adapters.composition import Fuse, Stack, parse_composition
    >>> parse_composition("lang,task")
    Stack[lang, task]
    >>> model.active_adapters = Stack("lang", Fuse("a", "b"))
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import NamedTuple, Optional, Union

from .configuration.validation import check_bool, check_sizes, check_weights, config_error, describe
from .errors import CompositionError

__all__ = [
    "AdapterCompositionBlock",
    "Stack",
    "Parallel",
    "Fuse",
    "Split",
    "BatchSplit",
    "Average",
    "MultiTask",
    "BASE_ROWS",
    "RowRouting",
    "parse_composition",
    "intern_setup",
    "validate_composition",
    "batch_requirement",
    "check_input_batch",
]


class AdapterCompositionBlock(Sequence):
    """Base class of all blocks: an immutable, hashable sequence of children.

    Children are adapter names (``str``) or nested blocks. Blocks compare equal when their type,
    children and parameters are equal, so they can be used as dictionary keys (the per-layer
    setup caches rely on this).

    Example::

        >>> from adapters.composition import Stack
        >>> Stack("lang", "task")
        Stack[lang, task]
    """

    def __init__(self, *children: Union[str, "AdapterCompositionBlock"]):
        if not children:
            raise CompositionError(f"{type(self).__name__} needs at least one child adapter or block.")
        for position, child in enumerate(children, 1):
            if child is not None and not isinstance(child, (str, AdapterCompositionBlock, list, tuple)):
                raise CompositionError(
                    f"{type(self).__name__}: child {position} is {describe(child)}; a block's children are adapter names "
                    f"(str) or blocks, e.g. {type(self).__name__}('a', Stack('b', 'c'))."
                )
        self.children = tuple(parse_composition(c, level=None) for c in children)

    # parameters besides the children that make two blocks different (overridden by subclasses)
    def _params(self) -> tuple:
        return ()

    def __getitem__(self, index):
        return self.children[index]

    def __len__(self) -> int:
        return len(self.children)

    def __eq__(self, other) -> bool:
        return (
            type(self) is type(other)
            and self.children == other.children
            and self._params() == other._params()
        )

    def __hash__(self) -> int:
        # blocks are immutable and hashed at every hook point (setup caches): compute once
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = self.__dict__["_hash"] = hash((type(self).__name__, self.children, self._params()))
        return cached

    def __repr__(self) -> str:
        return f"{type(self).__name__}[{', '.join(str(c) for c in self.children)}]"

    __str__ = __repr__

    def first(self) -> str:
        """Name of the first adapter (depth first).

        Example::

            >>> Stack(Parallel("a", "b"), "c").first()
            'a'
        """
        child = self.children[0]
        return child if isinstance(child, str) else child.first()

    def last(self) -> str:
        """Name of the last adapter (depth first).

        Example::

            >>> Stack("a", Fuse("b", "c")).last()
            'c'
        """
        child = self.children[-1]
        return child if isinstance(child, str) else child.last()

    @property
    def parallel_channels(self) -> int:
        """How often the batch is replicated under this block: the largest ``Parallel`` inside it
        (1 without one).

        Example::

            >>> Stack("a", Parallel("b", "c")).parallel_channels
            2
        """
        return max((c.parallel_channels if isinstance(c, AdapterCompositionBlock) else 1) for c in self.children)

    def flatten(self) -> set[str]:
        """The set of adapter names in the tree (AdapterHub's result type; :meth:`names_in_order`
        keeps their order).

        Example::

            >>> Stack("a", Parallel("b", Stack("a", "c"))).flatten() == {"a", "b", "c"}
            True
        """
        return set(self.names_in_order())

    def names_in_order(self) -> list[str]:
        """All adapter names in the tree, depth first, each once (where order matters: the
        adapters a fusion fuses, the order adapters are saved in).

        Example::

            >>> Stack("a", Parallel("b", Stack("a", "c"))).names_in_order()
            ['a', 'b', 'c']
        """
        names: list[str] = []
        for child in self.children:
            for name in [child] if isinstance(child, str) else child.names_in_order():
                if name not in names:
                    names.append(name)
        return names

    def _saved_arguments(self) -> dict:
        """The keyword arguments besides the children that rebuild this block (``to_dict``'s
        ``"kwargs"``); overridden by blocks that have some."""
        return {}

    def to_dict(self) -> dict:
        """The tree as JSON-ready data in AdapterHub's layout: ``{"type": <block class>,
        "children": [...], "kwargs": {...}}``, an adapter name as ``{"type": "single",
        "children": [name]}`` (written by ``save_adapter_setup``; read by :meth:`from_dict`).

        Example::

            >>> Stack("a", Fuse("b", "c")).to_dict()["children"][0]
            {'type': 'single', 'children': ['a']}
        """
        data = {
            "type": type(self).__name__,
            "children": [
                child.to_dict() if isinstance(child, AdapterCompositionBlock) else {"type": "single", "children": [child]}
                for child in self.children
            ],
        }
        arguments = self._saved_arguments()
        if arguments:
            data["kwargs"] = arguments
        return data

    @classmethod
    def from_dict(cls, data) -> "AdapterCompositionBlock":
        """The block :meth:`to_dict` (or AdapterHub) wrote. Only the composition blocks of this
        module are built (``"type"`` is never looked up elsewhere).

        Raises:
            CompositionError: ``data`` is not that layout (the message names the bad part and
                the valid form).

        Example::

            >>> AdapterCompositionBlock.from_dict(Stack("a", "b").to_dict())
            Stack[a, b]
        """
        return _block_from_data(data, "the setup")


class Stack(AdapterCompositionBlock):
    """Apply the children one after another.

    For bottleneck adapters child ``b`` sees child ``a``'s output. For weight-delta methods (LoRA
    family) the deltas add up on the same weight: ``W + ΔW_a + ΔW_b``. Prefixes concatenate.

    Example::

        >>> model.active_adapters = Stack("german", "sentiment")   # MAD-X: language, then task
    """

    def __init__(self, *stack_layers: Union[str, AdapterCompositionBlock]):
        super().__init__(*stack_layers)


class Parallel(AdapterCompositionBlock):
    """Run each child on its own copy of the batch, in one forward pass.

    The input batch is replicated ``len(children)`` times when the forward pass starts; copy
    ``i`` passes through child ``i``. Outputs come back concatenated along the batch dimension in
    child order (``out[i * B:(i + 1) * B]`` is branch ``i``).

    Example::

        >>> model.active_adapters = Parallel("sentiment", "topic")
        >>> out = model(**batch)            # batch dimension is 2 * B
    """

    def __init__(self, *parallel_adapters: Union[str, AdapterCompositionBlock]):
        super().__init__(*parallel_adapters)

    @property
    def parallel_channels(self) -> int:
        """Number of branches, i.e. how often the batch is replicated.

        Example::

            >>> Parallel("a", "b", "c").parallel_channels
            3
        """
        return len(self.children)


class Fuse(AdapterCompositionBlock):
    """AdapterFusion: a learned attention over the outputs of the children.

    The fusion layer must exist (``add_adapter_fusion`` or ``load_adapter_fusion``) under the
    block's ``name``, which defaults to the children's names joined by commas.

    Example::

        >>> model.add_adapter_fusion(Fuse("a", "b", "c"))
        >>> model.active_adapters = Fuse("a", "b", "c")
    """

    def __init__(self, *fuse_stacks: Union[str, AdapterCompositionBlock], name: str | None = None):
        super().__init__(*fuse_stacks)
        self._name = name

    def _params(self) -> tuple:
        return (self.name,)

    def _saved_arguments(self) -> dict:
        return {"name": self._name} if self._name else {}

    @property
    def name(self) -> str:
        """Name of the fusion layer this block uses.

        Example::

            >>> Fuse("a", Stack("x", "b")).name
            'a,b'
            >>> Fuse("a", "b", name="my_fusion").name
            'my_fusion'
        """
        if self._name:
            return self._name
        return ",".join(c if isinstance(c, str) else c.last() for c in self.children)


def _expand_sizes(sizes, count: int, what: str, block: str) -> tuple[int, ...]:
    """``Split.splits`` / ``BatchSplit.batch_sizes``: ints >= 0, one per child (or one int for all);
    never rounded (``[1.7, 2.2]`` is refused). Raises AdapterConfigError."""
    return check_sizes(block, what, sizes, count)


class Split(AdapterCompositionBlock):
    """Cut the sequence into consecutive segments; child ``i`` processes segment ``i``.

    ``splits`` gives each segment's length (an int is used for every child). Tokens past the last
    segment pass through unchanged.

    Example::

        >>> model.active_adapters = Split("question", "context", splits=[16, 48])
    """

    def __init__(self, *split_adapters: Union[str, AdapterCompositionBlock], splits: Union[list[int], int]):
        super().__init__(*split_adapters)
        self.splits = _expand_sizes(splits, len(self.children), "splits", "Split")

    def _params(self) -> tuple:
        return self.splits

    def _saved_arguments(self) -> dict:
        return {"splits": list(self.splits)}


class BatchSplit(AdapterCompositionBlock):
    """Cut the batch into consecutive groups; child ``i`` processes group ``i``.

    ``batch_sizes`` gives each group's size (an int is used for every child); they must add up to
    the batch size of the forward pass.

    Example::

        >>> model.active_adapters = BatchSplit("en", "de", batch_sizes=[4, 4])
    """

    def __init__(
        self, *split_adapters: Union[str, AdapterCompositionBlock], batch_sizes: Union[list[int], int]
    ):
        super().__init__(*split_adapters)
        self.batch_sizes = _expand_sizes(batch_sizes, len(self.children), "batch_sizes", "BatchSplit")

    def _params(self) -> tuple:
        return self.batch_sizes

    def _saved_arguments(self) -> dict:
        return {"batch_sizes": list(self.batch_sizes)}


class Average(AdapterCompositionBlock):
    """Run every child on the same input and take the weighted mean of their outputs.

    ``weights`` default to uniform; with ``normalize_weights`` (default) they are divided by
    their sum. For weight-delta methods the deltas are averaged.

    Example::

        >>> model.active_adapters = Average("a", "b", weights=[0.3, 0.7])
    """

    def __init__(
        self,
        *average_adapters: Union[str, AdapterCompositionBlock],
        weights: list[float] | None = None,
        normalize_weights: bool = True,
    ):
        super().__init__(*average_adapters)
        count = len(self.children)
        check_bool("Average", "normalize_weights", normalize_weights)
        if weights is None:
            weights = [1.0 / count] * count
        weights = [float(w) for w in check_weights("Average", "weights", weights, count)]
        if normalize_weights:
            total = sum(weights)
            if total == 0:
                raise config_error(
                    "Average", "weights", weights, "weights with a non-zero sum", " Pass normalize_weights=False to use them as given.",
                    detail=" (they sum to 0 and cannot be normalized)",
                )
            if not math.isfinite(total):
                raise config_error("Average", "weights", weights, "weights whose sum is a finite number", detail=f" (the sum is {total})")
            weights = [w / total for w in weights]
        self.weights = tuple(weights)

    def _params(self) -> tuple:
        return self.weights

    def _saved_arguments(self) -> dict:
        # the weights as used (normalised already): rebuilt without normalising them again
        return {"weights": list(self.weights), "normalize_weights": False}


class MultiTask(AdapterCompositionBlock):
    """Route each batch row to the child its task id names: child ``i`` processes the rows whose
    id is ``i`` (multi-task learning with one adapter per task, e.g. MTL-LoRA).

    The ids come with the forward call: ``model(**batch, task_ids=ids)``, one per row, as integers
    ``0 … len(children) − 1`` (a list or a 1-d tensor) or as the children's names. The rows keep
    their order in the output. The adapters of the method families that list the block take part
    (LoRA and the other weight-delta methods, bottleneck adapters, MTL-LoRA); the children are
    adapter names, or a ``Stack`` / ``Average`` of them. A forward call's per-row
    ``adapter_names=[...]`` runs as a ``MultiTask`` too (see :class:`RowRouting`).

    Example::

        >>> model.active_adapters = MultiTask("sst2", "mnli", "qqp")
        >>> out = model(**batch, task_ids=[0, 2, 2, 1])     # row 0: sst2, rows 1-2: qqp, row 3: mnli
    """

    def __init__(self, *task_adapters: Union[str, AdapterCompositionBlock]):
        super().__init__(*task_adapters)


#: the per-row adapter name of a row that runs without adapters (PEFT's name for it)
BASE_ROWS = "__base__"
_ROUTING_LOCK = threading.Lock()


class RowRouting:
    """A forward call's per-row ``adapter_names`` as a :class:`MultiTask` and its task ids: one
    mechanism for both. The block's children are fixed for a model's adapters (the adapters that
    can take part in a ``MultiTask``, sorted, then :data:`BASE_ROWS`, then the blocks rows have
    named, in order of first use), so calls with different rows run the same setup and every
    per-setup cache (pruned setups, validations) is reused; children without rows cost nothing.

    Args:
        adapters: the model's adapter names.
        validate: refuses a setup on the model (raises :class:`~adapters.errors.CompositionError`);
            called here once per adapter, and by :meth:`route` once per block a row names.
        version: the version of the model's adapters the routing was made for.

    Example::

        >>> routing = RowRouting(["a", "b"], model._validate_setup)
        >>> routing.route(["b", "__base__", "a"], 3, model._validate_setup)
        (MultiTask[a, b, __base__], [1, 2, 0])
    """

    def __init__(self, adapters, validate, version: int = 0):
        self.version = version
        self.adapters = tuple(adapters)
        self.refused: dict = {}
        routable = []
        for name in self.adapters:
            if name == BASE_ROWS:
                continue
            try:
                validate(MultiTask(name))
            except CompositionError as error:
                self.refused[name] = error
            else:
                routable.append(name)
        self.children = tuple(sorted(routable)) + (BASE_ROWS,)
        self.index = {child: i for i, child in enumerate(self.children)}
        self.setup = MultiTask(*self.children)

    def route(self, adapter_names, batch: Optional[int], validate) -> tuple:
        """``(setup, task_ids)`` for one adapter setup per row (``adapter_names``, ``batch`` rows
        when known): an adapter name, :data:`BASE_ROWS`, ``"a,b"`` or a ``Stack`` / ``Average``.

        Raises:
            CompositionError: naming ``adapter_names``, the row and value, and the valid form.

        Example::

            >>> routing.route(["a", Stack("a", "b")], 2, model._validate_setup)[1]
            [0, 3]
        """
        valid = (
            f"one entry per batch row{f' ({batch} rows)' if batch is not None else ''}: an adapter name, "
            f"{BASE_ROWS!r} for a row without adapters, or a Stack / Average of adapters, e.g. "
            f"model(**batch, adapter_names=['a', {BASE_ROWS!r}, 'b'])"
        )
        if isinstance(adapter_names, (str, bytes)) or not isinstance(adapter_names, Sequence) or not adapter_names:
            raise CompositionError(f"adapter_names={adapter_names!r} is not a list of per-row adapter setups; give {valid}.")
        if batch is not None and len(adapter_names) != batch:
            raise CompositionError(
                f"adapter_names has {len(adapter_names)} entries but the input batch has {batch} rows; give {valid}."
            )
        index = self.index
        ids = []
        for row, entry in enumerate(adapter_names):
            position = index.get(entry) if isinstance(entry, (str, AdapterCompositionBlock)) else None
            if position is None:
                position = self._add_child(row, entry, valid, validate)
            ids.append(position)
        return self.setup, ids

    def _add_child(self, row: int, entry, valid: str, validate) -> int:
        """The child index of a row's entry that is no routable adapter name: a refused or unknown
        name raises; a block (or ``"a,b"``) is validated once and becomes a child."""
        where = f"adapter_names[{row}]={entry!r}"
        if isinstance(entry, (str, AdapterCompositionBlock)) and entry in self.index:  # added by an earlier row
            return self.index[entry]
        if isinstance(entry, str) and "," not in entry:
            if entry in self.refused:
                raise CompositionError(f"{where} cannot take part in per-row routing: {self.refused[entry]}") from None
            known = ", ".join(sorted(self.adapters)) or "none"
            raise CompositionError(f"{where} names no adapter of this model (it has: {known}); give {valid}.")
        if isinstance(entry, str):
            entry = parse_composition(entry)
        if not isinstance(entry, (Stack, Average)):
            raise CompositionError(f"{where} is neither an adapter name nor a Stack / Average of adapters; give {valid}.")
        if len(entry.children) == 1 and isinstance(entry, Stack) and isinstance(entry.children[0], str):
            name = entry.children[0]
            return self.index[name] if name in self.index else self._add_child(row, name, valid, validate)
        try:
            validate(MultiTask(entry))
        except CompositionError as error:
            raise CompositionError(f"{where} cannot take part in per-row routing: {error}") from None
        with _ROUTING_LOCK:  # appended once: the ids of rows routed before stay valid
            if entry not in self.index:
                self.children = self.children + (entry,)
                # the setup before the index: a route() that reads the new index (first) and the
                # setup (last) then gets a setup that has the new child
                self.setup = MultiTask(*self.children)
                self.index = {**self.index, entry: len(self.children) - 1}
            return self.index[entry]


_SAVED_BLOCKS = ("Stack", "Parallel", "Fuse", "Split", "BatchSplit", "Average", "MultiTask")
_SAVED_ARGUMENTS = {"Fuse": {"name"}, "Split": {"splits"}, "BatchSplit": {"batch_sizes"}, "Average": {"weights", "normalize_weights"}}


def _block_from_data(data, where: str):
    """A block (or, for ``{"type": "single"}``, an adapter name) from :meth:`AdapterCompositionBlock.to_dict`'s
    layout; ``where`` names the part in error messages."""
    form = "{\"type\": \"Stack\", \"children\": [{\"type\": \"single\", \"children\": [\"a\"]}, ...]}"
    if not isinstance(data, dict) or not isinstance(data.get("children"), list) or not data["children"]:
        raise CompositionError(f"{where} is {describe(data)}; a saved setup has the form {form}.")
    kind = data.get("type")
    if kind == "single":
        name = data["children"][0]
        if len(data["children"]) != 1 or not isinstance(name, str):
            raise CompositionError(f"{where} is {describe(data)}; a single adapter is saved as {{\"type\": \"single\", \"children\": [\"name\"]}}.")
        return name
    if kind not in _SAVED_BLOCKS:
        raise CompositionError(f"{where} has \"type\" {kind!r}; the valid types are 'single', {', '.join(map(repr, _SAVED_BLOCKS))}.")
    arguments = data.get("kwargs") or {}
    unknown = set(arguments) - _SAVED_ARGUMENTS.get(kind, set()) if isinstance(arguments, dict) else None
    if unknown is None or unknown:
        raise CompositionError(
            f"{where}: {kind}'s \"kwargs\" is {describe(arguments)}; {kind} takes "
            f"{', '.join(sorted(_SAVED_ARGUMENTS.get(kind, ()))) or 'no keyword arguments'}."
        )
    children = [_block_from_data(child, f"{where}[\"children\"][{i}]") for i, child in enumerate(data["children"])]
    return globals()[kind](*children, **arguments)


# Which children each block may contain. Everything AdapterHub allows, plus Fuse inside Parallel
# (a MultiTask routes rows, so no block that cuts or replicates rows sits below it).
ALLOWED_NESTINGS: dict[type, tuple[type, ...]] = {
    Stack: (str, Fuse, Split, Parallel, BatchSplit, Average, MultiTask),
    Fuse: (str, Stack),
    Split: (str, Split, Stack, BatchSplit, Average),
    Parallel: (str, Stack, Fuse, BatchSplit, Average, Split),
    BatchSplit: (str, Stack, Split, BatchSplit, Average, Fuse),
    Average: (str, Stack, Split, BatchSplit, Fuse),
    MultiTask: (str, Stack, Average),
}
# blocks that cut or replicate the rows, which a MultiTask hands out by task: none sits inside one
_ROW_BLOCKS = (Parallel, BatchSplit, MultiTask)


def validate_composition(
    adapter_composition: Union[str, AdapterCompositionBlock], level: int = 0, model_type: Optional[str] = None
) -> None:
    """Check a setup on its own, before any model is involved: allowed nestings, ``Parallel``
    only at the top, and ``BatchSplit`` sizes that can fit together. (``model_type`` is
    AdapterHub's parameter, which refused blocks on some architectures; here every block runs on
    every supported architecture, so it changes nothing.)

    ``Parallel`` replicates the whole batch when the forward pass starts, so it may appear once,
    either as the setup itself or as a direct child of a top-level ``Stack``. Every ``BatchSplit``
    sees a number of rows fixed by where it sits (see :func:`batch_requirement`): inside a part of
    another ``BatchSplit`` the part's size, elsewhere the (replicated) batch, so their sizes must
    agree. What also depends on the model (unknown adapters, methods that cannot take part in a
    block) is checked by ``set_active_adapters``; what depends on the input (the batch size) at
    the start of the forward pass.

    Raises:
        CompositionError: (a ``ValueError``) naming the offending block and the valid form.

    Example::

        >>> validate_composition(Stack("a", Parallel("b", "c")))      # fine
        >>> validate_composition(Fuse("a", Parallel("b", "c")))        # raises CompositionError
        >>> validate_composition(BatchSplit(BatchSplit("a", "b", batch_sizes=[2, 2]), "c", batch_sizes=[2, 2]))
        Traceback (most recent call last):
        adapters.errors.CompositionError: BatchSplit[a, b] with batch_sizes [2, 2] (4 rows) sits in part 0 of ...
    """
    setup = adapter_composition
    if isinstance(setup, str):
        return
    if not isinstance(setup, AdapterCompositionBlock):
        raise CompositionError(
            f"Invalid adapter setup {setup!r} ({type(setup).__name__}): expected an adapter name or a composition "
            f"block such as Stack('a', 'b')."
        )
    parallels = _find_parallel_blocks(setup)
    if len(parallels) > 1:
        raise CompositionError(
            f"Adapter setup {setup} contains {len(parallels)} Parallel blocks ({', '.join(map(str, parallels))}); "
            f"use at most one, e.g. Parallel('a', 'b') or Stack('shared', Parallel('a', 'b'))."
        )
    if parallels:
        top_children = setup.children if isinstance(setup, Stack) else ()
        if setup is not parallels[0] and not any(c is parallels[0] for c in top_children):
            raise CompositionError(
                f"Cannot use {parallels[0]} inside {setup}: Parallel replicates the whole batch, so it must be "
                f"the setup itself or a direct child of a top-level Stack, e.g. Stack('shared', {parallels[0]})."
            )
    for multi_task in _blocks_of(setup, MultiTask):
        top_children = setup.children if isinstance(setup, Stack) else ()
        if setup is not multi_task and not any(c is multi_task for c in top_children):
            raise CompositionError(
                f"Cannot use {multi_task} inside {setup}: the task ids of a forward call name one adapter per row of "
                f"the whole batch, so MultiTask must be the setup itself or a direct child of a top-level Stack, "
                f"e.g. Stack('shared', {multi_task})."
            )
    _validate_nesting(setup)
    batch_requirement(setup)


def _blocks_of(block: AdapterCompositionBlock, kind: type) -> list[AdapterCompositionBlock]:
    """The blocks of type ``kind`` in ``block`` (itself included), depth first."""
    return [b for b in _blocks_in(block) if isinstance(b, kind)]


def _find_parallel_blocks(block: AdapterCompositionBlock) -> list[AdapterCompositionBlock]:
    found = [block] if isinstance(block, Parallel) else []
    for child in block.children:
        if isinstance(child, AdapterCompositionBlock):
            found += _find_parallel_blocks(child)
    return found


def _validate_nesting(block: AdapterCompositionBlock) -> None:
    allowed = ALLOWED_NESTINGS[type(block)]
    for child in block.children:
        if not isinstance(child, allowed):
            names = ", ".join(t.__name__ for t in allowed if t is not str)
            raise CompositionError(
                f"Adapter setup is invalid: cannot nest {child} in {block}. "
                f"{type(block).__name__} may contain adapter names and {names}."
            )
        if isinstance(child, AdapterCompositionBlock):
            _validate_nesting(child)
    if isinstance(block, MultiTask):
        inner = [b for child in block.children if not isinstance(child, str) for b in _blocks_in(child)]
        rows = next((b for b in inner if isinstance(b, _ROW_BLOCKS)), None)
        if rows is not None:
            raise CompositionError(
                f"Adapter setup is invalid: cannot use {rows} inside {block}. MultiTask hands each row to the child "
                f"its task id names, so no block below it may cut or replicate the rows; put {type(rows).__name__} "
                f"outside, e.g. Stack({rows}, {block})."
            )


def _blocks_in(block) -> list:
    """``block`` and every block below it."""
    return [block] + [b for child in block.children if not isinstance(child, str) for b in _blocks_in(child)]


class BatchRequirement(NamedTuple):
    """What a setup asks of the batch (see :func:`batch_requirement`): every adapter position sees
    ``rows`` rows (the input batch after ``Parallel`` replicated it ``channels`` times), fixed by
    ``block``, the first ``BatchSplit`` outside any other ``BatchSplit``; ``batch`` is the input
    batch size that gives them.

    Example::

        >>> batch_requirement(Stack(Parallel("a", "b"), BatchSplit("c", "d", batch_sizes=[4, 4])))
        BatchRequirement(rows=8, block=BatchSplit[c, d], channels=2)
    """

    rows: int
    block: "BatchSplit"
    channels: int

    @property
    def batch(self) -> int:
        """The input batch size the setup fits (before replication).

        Example::

            >>> batch_requirement(Parallel(BatchSplit("a", "b", batch_sizes=[1, 2]), "c")).batch
            3
        """
        return self.rows // self.channels


_requirements: dict = {}


def batch_requirement(setup) -> "BatchRequirement | None":
    """The batch size a setup fits, as fixed by its ``BatchSplit`` blocks, or None when any batch
    fits (no ``BatchSplit``); cached per setup.

    Every adapter position sees the same rows: the input batch ``B``, or ``n·B`` after a
    ``Parallel`` of ``n`` branches replicated it. A ``BatchSplit`` inside part ``i`` of another one
    sees that part's ``batch_sizes[i]`` rows, one inside a ``Parallel`` branch ``B`` rows, any other
    all ``n·B`` rows; its sizes must add up to what it sees.

    Raises:
        CompositionError: the sizes cannot fit any batch (nested sizes that do not add up to their
            part, two BatchSplits that fix different batch sizes, sizes after a ``Parallel`` that
            are not a multiple of its branches).

    Example::

        >>> batch_requirement(BatchSplit("a", "b", batch_sizes=[2, 2])).batch
        4
        >>> batch_requirement(Stack("a", "b")) is None
        True
    """
    if isinstance(setup, str) or setup is None:
        return None
    try:
        return _requirements[setup]
    except KeyError:
        pass
    channels = max((len(p.children) for p in _find_parallel_blocks(setup)), default=1)
    found: list = []  # (rows, block, share): block fixes the replicated batch to rows
    _collect_batch_splits(setup, share=1, part=None, found=found)
    requirement = None
    for rows, block, share in found:
        if share == 1 and rows % channels:
            raise CompositionError(
                f"{block} sees all rows of the batch after Parallel replicated it {channels}× ({channels}·B rows), "
                f"but its batch_sizes {list(block.batch_sizes)} add up to {sum(block.batch_sizes)}, which is not a "
                f"multiple of {channels}. Give batch_sizes that add up to {channels}·B, or put the BatchSplit inside "
                f"the Parallel branches, where it sees B rows."
            )
        if requirement is None:
            requirement = BatchRequirement(rows, block, channels)
        elif rows != requirement.rows:
            first = requirement.block
            raise CompositionError(
                f"{first} (batch_sizes {list(first.batch_sizes)}) and {block} (batch_sizes {list(block.batch_sizes)}) "
                f"fit different batch sizes ({requirement.rows // channels} and {rows // channels} rows"
                f"{' before Parallel replication' if channels > 1 else ''}); every adapter position sees the same "
                f"rows, so give both batch_sizes that fit one batch size."
            )
    if len(_requirements) > 1024:
        _requirements.clear()
    _requirements[setup] = requirement
    return requirement


def _collect_batch_splits(node, share: int, part, found: list) -> None:
    """Walk ``node``: ``share`` — it sees ``rows / share`` of the replicated batch; ``part`` —
    ``(rows, parent, index)`` when it sits in part ``index`` of BatchSplit ``parent`` instead."""
    if isinstance(node, str):
        return
    if isinstance(node, BatchSplit):
        total = sum(node.batch_sizes)
        if part is not None:
            rows, parent, index = part
            if total != rows:
                raise CompositionError(
                    f"{node} with batch_sizes {list(node.batch_sizes)} ({total} rows) sits in part {index} of {parent} "
                    f"(batch_sizes {list(parent.batch_sizes)}), which has {rows} rows; give it batch_sizes that add "
                    f"up to {rows}."
                )
        else:
            found.append((total * share, node, share))
        for index, (child, size) in enumerate(zip(node.children, node.batch_sizes)):
            _collect_batch_splits(child, share, (size, node, index), found)
        return
    if isinstance(node, Parallel):
        for child in node.children:
            _collect_batch_splits(child, share * len(node.children), part, found)
        return
    for child in node.children:
        _collect_batch_splits(child, share, part, found)


def check_input_batch(setup, batch: int, channels: int = 1) -> None:
    """Check, at the start of a forward pass, that ``setup`` fits an input batch of ``batch`` rows
    (replicated ``channels`` times by ``Parallel`` when the pass starts; 1 when the rows came
    replicated already, as in ``generate()``'s steps).

    Raises:
        CompositionError: naming the BatchSplit, its sizes and the input's batch size.

    Example::

        >>> check_input_batch(BatchSplit("a", "b", batch_sizes=[2, 4]), batch=4)
        Traceback (most recent call last):
        adapters.errors.CompositionError: BatchSplit[a, b] has batch_sizes [2, 4] (6 rows) but the input batch has 4 rows; ...
    """
    requirement = batch_requirement(setup)
    if requirement is None or requirement.rows == batch * channels:
        return
    block, n = requirement.block, requirement.channels
    sizes, total = list(block.batch_sizes), sum(block.batch_sizes)
    if n > 1:
        given = batch * channels // n
        raise CompositionError(
            f"{block} has batch_sizes {sizes} ({total} rows): the setup fits an input batch of {requirement.batch} rows "
            f"(replicated {n}× by Parallel: {requirement.rows} rows), but the input batch has {given} rows "
            f"({given * n} after replication); give an input batch of {requirement.batch} rows, or batch_sizes that fit "
            f"an input batch of {given}."
        )
    raise CompositionError(
        f"{block} has batch_sizes {sizes} ({total} rows) but the input batch has {batch * channels} rows; give an input "
        f"batch of {total} rows or batch_sizes that add up to {batch * channels}."
    )


SetupLike = Union[str, Sequence, AdapterCompositionBlock, None]


# one object per distinct setup (see intern_setup); setups are few, small and immutable
_INTERNED: dict = {}


def intern_setup(setup: "AdapterCompositionBlock") -> "AdapterCompositionBlock":
    """The one block object that stands for every setup equal to ``setup`` (the first one seen).

    ``torch.compile`` guards a compiled forward pass on the identity of the setup it read, so
    equal setups must be the same object, or ``model.set_active_adapters("a")`` (a new ``Stack``
    each time) would compile the model again every time. :func:`parse_composition` returns
    interned setups.

    Example::

        >>> intern_setup(Stack("a", "b")) is intern_setup(Stack("a", "b"))
        True
    """
    found = _INTERNED.get(setup)
    if found is None:
        found = _INTERNED.setdefault(setup, setup)
    return found


def parse_composition(
    adapter_composition: SetupLike, level: int | None = 0, model_type: Optional[str] = None
) -> Union[str, AdapterCompositionBlock, None]:
    """Turn a user-given setup into a block tree (``model_type``: as for
    :func:`validate_composition`, AdapterHub's parameter, changing nothing here).

    At the top level a single name becomes ``Stack(name)``, ``"a,b"`` and ``["a", "b"]`` become
    ``Stack("a", "b")``; a list nested in a list becomes a ``Fuse`` (the adapter-transformers 1.x
    convention). With ``level=None`` the value is returned as a child (no wrapping, no validation).

    Example::

        >>> parse_composition("a,b")
        Stack[a, b]
        >>> parse_composition(["a", ["b", "c"]])
        Stack[a, Fuse[b, c]]
    """
    setup = adapter_composition
    if setup is None or (isinstance(setup, (str, Sequence)) and len(setup) == 0):
        if level is None:
            raise CompositionError(
                "Empty adapter setup inside a composition block: give every block adapter names or blocks, "
                "e.g. Stack('a', 'b')."
            )
        return None
    if isinstance(setup, AdapterCompositionBlock):
        if level == 0:
            validate_composition(setup)
            return intern_setup(setup)
        return setup
    if isinstance(setup, str):
        if level == 0:
            return intern_setup(Stack(*[name.strip() for name in setup.split(",")]))
        if level is None and "," in setup:
            raise CompositionError(
                f"Adapter name {setup!r} inside a block may not contain commas; use a Stack or Fuse, "
                f"e.g. Stack({', '.join(repr(n.strip()) for n in setup.split(','))})."
            )
        return setup
    if isinstance(setup, Sequence):
        inner = Fuse if level == 1 else Stack
        children = [parse_composition(c, level=(level + 1) if level is not None else None) for c in setup]
        block = inner(*children) if level is not None else Stack(*children)
        if level == 0:
            validate_composition(block)
            return intern_setup(block)
        return block
    raise CompositionError(
        f"Invalid adapter setup {setup!r} ({type(setup).__name__}): expected an adapter name, a list of names or a "
        f"composition block such as Stack('a', 'b')."
    )
