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
========== ===================================================================================

What each block means for each method family is documented in ``docs/composition.rst``; this
module only builds, parses and structurally validates the trees. Validation against a concrete
model (do the adapters exist, can their methods take part in the block) lives in
:mod:`adapters.model_mixin`.

Example::

    >>> from adapters.composition import Fuse, Stack, parse_composition
    >>> parse_composition("lang,task")
    Stack[lang, task]
    >>> model.active_adapters = Stack("lang", Fuse("a", "b"))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

__all__ = [
    "AdapterCompositionBlock",
    "Stack",
    "Parallel",
    "Fuse",
    "Split",
    "BatchSplit",
    "Average",
    "parse_composition",
    "validate_composition",
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
            raise ValueError(f"{type(self).__name__} needs at least one child adapter or block.")
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

    def flatten(self) -> list[str]:
        """All adapter names in the tree, in order, without duplicates.

        Example::

            >>> Stack("a", Parallel("b", Stack("a", "c"))).flatten()
            ['a', 'b', 'c']
        """
        names: list[str] = []
        for child in self.children:
            for name in [child] if isinstance(child, str) else child.flatten():
                if name not in names:
                    names.append(name)
        return names


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
    if isinstance(sizes, int):
        sizes = [sizes] * count
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != count:
        raise ValueError(
            f"{block} has {count} children but {len(sizes)} {what}; give one {what[:-1]} per child "
            f"(or a single int used for every child)."
        )
    if any(s < 0 for s in sizes):
        raise ValueError(f"{block} {what} must be non-negative, got {list(sizes)}.")
    return sizes


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
        if weights is None:
            weights = [1.0 / count] * count
        weights = [float(w) for w in weights]
        if len(weights) != count:
            raise ValueError(f"Average has {count} children but {len(weights)} weights; give one weight per child.")
        if normalize_weights:
            total = sum(weights)
            if total == 0:
                raise ValueError("Average weights sum to 0 and cannot be normalized; pass normalize_weights=False.")
            weights = [w / total for w in weights]
        self.weights = tuple(weights)

    def _params(self) -> tuple:
        return self.weights


# Which children each block may contain. Everything AdapterHub allows, plus Fuse inside Parallel.
ALLOWED_NESTINGS: dict[type, tuple[type, ...]] = {
    Stack: (str, Fuse, Split, Parallel, BatchSplit, Average),
    Fuse: (str, Stack),
    Split: (str, Split, Stack, BatchSplit, Average),
    Parallel: (str, Stack, Fuse, BatchSplit, Average, Split),
    BatchSplit: (str, Stack, Split, BatchSplit, Average, Fuse),
    Average: (str, Stack, Split, BatchSplit, Fuse),
}


def validate_composition(setup: Union[str, AdapterCompositionBlock], level: int = 0) -> None:
    """Check the structure of a setup: allowed nestings, and Parallel only at the top.

    ``Parallel`` replicates the whole batch when the forward pass starts, so it may appear once,
    either as the setup itself or as a direct child of a top-level ``Stack``.

    Raises:
        ValueError: naming the offending block and child.

    Example::

        >>> validate_composition(Stack("a", Parallel("b", "c")))      # fine
        >>> validate_composition(Fuse("a", Parallel("b", "c")))        # raises ValueError
    """
    if isinstance(setup, str):
        return
    if not isinstance(setup, AdapterCompositionBlock):
        raise TypeError(f"Invalid adapter setup {setup!r}: expected an adapter name or a composition block.")
    parallels = _find_parallel_blocks(setup)
    if len(parallels) > 1:
        raise ValueError(f"Adapter setup {setup} contains {len(parallels)} Parallel blocks; use at most one.")
    if parallels:
        top_children = setup.children if isinstance(setup, Stack) else ()
        if setup is not parallels[0] and not any(c is parallels[0] for c in top_children):
            raise ValueError(
                f"Cannot use {parallels[0]} inside {setup}: Parallel replicates the whole batch, so it must be "
                f"the setup itself or a direct child of a top-level Stack."
            )
    _validate_nesting(setup)


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
            raise ValueError(
                f"Adapter setup is invalid: cannot nest {child} in {block}. "
                f"{type(block).__name__} may contain adapter names and {names}."
            )
        if isinstance(child, AdapterCompositionBlock):
            _validate_nesting(child)


SetupLike = Union[str, Sequence, AdapterCompositionBlock, None]


def parse_composition(setup: SetupLike, level: int | None = 0) -> Union[str, AdapterCompositionBlock, None]:
    """Turn a user-given setup into a block tree.

    At the top level a single name becomes ``Stack(name)``, ``"a,b"`` and ``["a", "b"]`` become
    ``Stack("a", "b")``; a list nested in a list becomes a ``Fuse`` (the adapter-transformers 1.x
    convention). With ``level=None`` the value is returned as a child (no wrapping, no validation).

    Example::

        >>> parse_composition("a,b")
        Stack[a, b]
        >>> parse_composition(["a", ["b", "c"]])
        Stack[a, Fuse[b, c]]
    """
    if setup is None or (isinstance(setup, (str, Sequence)) and len(setup) == 0):
        if level is None:
            raise ValueError("Empty adapter setup inside a composition block.")
        return None
    if isinstance(setup, AdapterCompositionBlock):
        if level == 0:
            validate_composition(setup)
        return setup
    if isinstance(setup, str):
        if level == 0:
            return Stack(*[name.strip() for name in setup.split(",")])
        if level is None and "," in setup:
            raise ValueError(f"Adapter name {setup!r} inside a block may not contain commas; use a Stack or Fuse.")
        return setup
    if isinstance(setup, Sequence):
        inner = Fuse if level == 1 else Stack
        children = [parse_composition(c, level=(level + 1) if level is not None else None) for c in setup]
        block = inner(*children) if level is not None else Stack(*children)
        if level == 0:
            validate_composition(block)
        return block
    raise TypeError(f"Invalid adapter setup {setup!r}: expected a name, a list of names or a composition block.")
