"""The value checks shared by every config and composition-block argument.

Each method's config class holds all of its checks in one place (its ``__post_init__``), built
from the validators here; each validator returns the value in its normal form (a tuple for a
list, a ``str`` key for a layer index) or raises :class:`~adapters.errors.AdapterConfigError`
naming the class and field, the bad value and the valid form, e.g.
``LoRAConfig.r must be a positive integer (at most 65536), not the bool True.``

The rules:

- no ``bool`` where a number is expected (``True`` is an ``int`` to Python, not to a config);
- numbers are finite (no NaN, no infinity);
- ints are ints: ``1.7`` is never rounded or truncated to ``1``;
- sizes are bounded: ranks, lengths and widths are at most :data:`MAX_SIZE`, and a bottleneck's
  ``reduction_factor`` is at least :data:`MIN_REDUCTION_FACTOR` (a bottleneck at most 16 times
  the hidden size), so a typo cannot ask for gigabytes;
- a string that must be one of a few names (an activation, an init scheme) is checked against
  them and the error lists them, with a did-you-mean;
- regular expressions (``target_modules`` as a string, ``rank_pattern``/``alpha_pattern`` keys)
  must compile;
- layer index lists (``leave_out``) are lists of ints ``>= 0``; a single int is refused, since
  ``leave_out=1`` could mean "layer 1" or "one layer" (AdapterHub takes lists): write ``[1]``.

Example::

    >>> from adapters.configuration.validation import check_int
    >>> check_int("LoRAConfig", "r", 8, minimum=1)
    8
    >>> check_int("LoRAConfig", "r", True, minimum=1)
    Traceback (most recent call last):
    adapters.errors.AdapterConfigError: LoRAConfig.r must be a positive integer (at most 65536), not the bool True.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
import threading
import weakref
from collections.abc import Iterable, Mapping, Set
from typing import Any, Optional

import torch

from ..errors import AdapterConfigError, AdapterLoadError

__all__ = [
    "MAX_SIZE",
    "MIN_REDUCTION_FACTOR",
    "describe",
    "closest",
    "did_you_mean",
    "config_error",
    "unknown_fields_error",
    "check_bool",
    "check_int",
    "check_number",
    "check_probability",
    "check_choice",
    "check_str",
    "check_activation",
    "check_layer_indices",
    "check_regex",
    "check_module_names",
    "check_pattern_dict",
    "check_seed",
    "check_sizes",
    "check_weights",
    "CheckedFields",
    "Immutable",
    "NAME_MAX_LENGTH",
    "check_name",
]

# the largest rank, length, width or count a config may ask for
MAX_SIZE = 65536
# the smallest bottleneck reduction factor: a bottleneck at most 16x the hidden size
MIN_REDUCTION_FACTOR = 1 / 16


def describe(value: Any) -> str:
    """How an error message shows a bad value: its type and its repr.

    Example::

        >>> describe(True), describe("8"), describe(float("nan"))
        ('the bool True', "the str '8'", 'the float nan')
    """
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"the {type(value).__name__} {text}"


# names other libraries (PEFT, older AdapterHub versions) use for our fields: did-you-mean hints
_SYNONYMS = {
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "activation": "non_linearity",
    "reduction": "reduction_factor",
    "num_virtual_tokens": "prefix_length",
}


def closest(name: Any, candidates: Iterable[str]) -> Optional[str]:
    """The candidate ``name`` most likely meant (same name in another case, a known synonym such
    as PEFT's ``lora_alpha`` for ``alpha``, or a close spelling), or None.

    Example::

        >>> closest("rank", ["r", "alpha"]), closest("reduction_factr", ["reduction_factor"])
        ('r', 'reduction_factor')
    """
    if not isinstance(name, str):
        return None
    candidates = [c for c in candidates if isinstance(c, str)]
    by_lower = {c.lower(): c for c in candidates}
    if name.lower() in by_lower and by_lower[name.lower()] != name:
        return by_lower[name.lower()]
    if _SYNONYMS.get(name) in candidates:
        return _SYNONYMS[name]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(name: Any, candidates: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest candidate (see :func:`closest`), or an empty string.

    Example::

        >>> did_you_mean("rank", ["r", "alpha", "dropout"])
        " Did you mean 'r'?"
    """
    guess = closest(name, candidates)
    return f" Did you mean {guess!r}?" if guess is not None else ""


def config_error(owner: str, field: str, value: Any, valid: str, hint: str = "", detail: str = "") -> AdapterConfigError:
    """The error for ``owner.field = value``: names the field, the bad value and the valid form.

    The error carries ``owner``, ``field`` and ``value`` as attributes (for callers that map our
    field names back to a file's, such as PEFT's ``lora_alpha``).

    Example::

        >>> raise config_error("LoRAConfig", "alpha", "8", "a finite number > 0")
        Traceback (most recent call last):
        adapters.errors.AdapterConfigError: LoRAConfig.alpha must be a finite number > 0, not the str '8'.
    """
    error = AdapterConfigError(f"{owner}.{field} must be {valid}, not {describe(value)}{detail}.{hint}")
    error.owner, error.field, error.value = owner, field, value
    return error


def unknown_fields_error(owner: str, unknown: Iterable[str], known: Iterable[str]) -> AdapterConfigError:
    """The error for keys a config does not have, with a did-you-mean for each.

    Example::

        >>> raise unknown_fields_error("LoRAConfig", ["rank"], ["r", "alpha"])
        Traceback (most recent call last):
        adapters.errors.AdapterConfigError: unknown field 'rank' for LoRAConfig; did you mean 'r'? Valid fields: alpha, r.
    """
    known = sorted(known)
    parts = []
    for key in unknown:
        guess = closest(key, known)
        parts.append(f"unknown field {key!r} for {owner}" + (f"; did you mean {guess!r}?" if guess else ""))
    text = "; ".join(parts)
    error = AdapterConfigError(f"{text}{'' if text.endswith('?') else '.'} Valid fields: {', '.join(known)}.")
    error.owner, error.field, error.value = owner, next(iter(unknown), None), None
    return error


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_bool(owner: str, field: str, value: Any) -> bool:
    """``value`` must be ``True`` or ``False`` (not ``1``, not ``"yes"``).

    Example::

        >>> check_bool("BnConfig", "mh_adapter", True)
        True
    """
    if not isinstance(value, bool):
        raise config_error(owner, field, value, "True or False")
    return value


def _int_form(minimum: Optional[int], maximum: Optional[int]) -> str:
    if minimum == 1:
        text = "a positive integer"
    elif minimum == 0:
        text = "a non-negative integer"
    elif minimum is not None:
        text = f"an integer >= {minimum}"
    else:
        text = "an integer"
    return f"{text} (at most {maximum})" if maximum is not None else text


def check_int(
    owner: str, field: str, value: Any, minimum: Optional[int] = None, maximum: Optional[int] = MAX_SIZE, optional: bool = False
) -> Optional[int]:
    """An ``int`` (not a bool, not a float) in ``[minimum, maximum]``; ``None`` if ``optional``.

    Example::

        >>> check_int("PrefixTuningConfig", "prefix_length", 30, minimum=1)
        30
    """
    if value is None and optional:
        return None
    if not _is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        valid = _int_form(minimum, maximum) + (" or None" if optional else "")
        raise config_error(owner, field, value, valid)
    return int(value)


def _range_text(minimum, maximum, min_open, max_open) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if min_open else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<' if max_open else '<='} {maximum:g}")
    return " and ".join(parts)


def check_number(
    owner: str,
    field: str,
    value: Any,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    min_open: bool = False,
    max_open: bool = False,
    optional: bool = False,
):
    """A finite real number (``int`` or ``float``, not a bool or a string) within the bounds;
    returned as given (an ``int`` stays an ``int``, so configs round-trip unchanged).

    Example::

        >>> check_number("LoRAConfig", "alpha", 16, minimum=0, min_open=True)
        16
    """
    if value is None and optional:
        return None
    ok = _is_real(value) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if min_open else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if max_open else value <= maximum
    if not ok:
        bounds = _range_text(minimum, maximum, min_open, max_open)
        valid = "a finite number" + (f" {bounds}" if bounds else "") + (" or None" if optional else "")
        raise config_error(owner, field, value, valid)
    return value


def check_probability(owner: str, field: str, value: Any) -> float:
    """A dropout-like probability in ``[0, 1)``.

    Example::

        >>> check_probability("LoRAConfig", "dropout", 0.1)
        0.1
    """
    return check_number(owner, field, value, minimum=0.0, maximum=1.0, max_open=True)


def _same(a, b) -> bool:
    """Equal and of the same kind (``True`` is not ``1``)."""
    return a is b or (type(a) is type(b) and a == b)


def check_choice(owner: str, field: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of ``choices`` (compared with their type: ``True`` is not ``1``), with a did-you-mean.

    Example::

        >>> check_choice("BnConfig", "init_weights", "bert", ("bert", "mam_adapter", "houlsby"))
        'bert'
    """
    choices = tuple(choices)
    if not any(_same(value, choice) for choice in choices):
        listed = ", ".join(repr(c) for c in choices)
        raise config_error(
            owner, field, value, f"one of {listed}", did_you_mean(value, [c for c in choices if isinstance(c, str)])
        )
    return value


def check_str(owner: str, field: str, value: Any, optional: bool = False, what: str = "a string") -> Optional[str]:
    """A non-empty string (or ``None`` if ``optional``).

    Example::

        >>> check_str("PromptTuningConfig", "prompt_init_text", "Classify:", optional=True)
        'Classify:'
    """
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise config_error(owner, field, value, f"a non-empty {what.removeprefix('a ')}" + (" or None" if optional else ""))
    return value


def _activation_names() -> list[str]:
    from transformers.activations import ACT2FN

    return sorted(ACT2FN)


def check_activation(owner: str, field: str, value: Any) -> str:
    """The name of an activation in transformers' ``ACT2FN`` (any case); the error lists them.

    Example::

        >>> check_activation("BnConfig", "non_linearity", "gelu")
        'gelu'
    """
    names = _activation_names()
    if not isinstance(value, str) or value.lower() not in names:
        raise config_error(
            owner, field, value, f"the name of an activation in transformers' ACT2FN: {', '.join(names)}",
            did_you_mean(value.lower() if isinstance(value, str) else value, names),
        )
    return value


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple, range, Set)) and not isinstance(value, (str, bytes))


def check_layer_indices(owner: str, field: str, value: Any, optional: bool = False) -> Optional[tuple]:
    """A list of layer indices (ints ``>= 0``), returned as a tuple; a single int is refused.

    Example::

        >>> check_layer_indices("BnConfig", "leave_out", [0, 3])
        (0, 3)
    """
    if value is None and optional:
        return None
    valid = f"a list of layer indices (ints >= 0, at most {MAX_SIZE})" + (" or None" if optional else "")
    if _is_int(value):
        raise config_error(owner, field, value, valid, f" For layer {value} alone write {field}=[{value}].")
    if not _is_sequence(value):
        raise config_error(owner, field, value, valid)
    items = sorted(value) if isinstance(value, Set) and all(_is_int(i) for i in value) else list(value)
    for item in items:
        if not _is_int(item) or not 0 <= item <= MAX_SIZE:
            raise config_error(owner, field, value, valid, detail=f" ({describe(item)} is not a layer index)")
    return tuple(int(i) for i in items)


def check_regex(owner: str, field: str, pattern: Any) -> str:
    """A string that compiles as a regular expression; the error quotes ``re``'s reason.

    Example::

        >>> check_regex("LoRAConfig", "target_modules", "(query|value)$")
        '(query|value)$'
        >>> check_regex("LoRAConfig", "target_modules", "(query")
        Traceback (most recent call last):
        adapters.errors.AdapterConfigError: LoRAConfig.target_modules must be a valid regular expression, not the str '(query'. The regex does not compile: missing ), unterminated subpattern at position 0.
    """
    if not isinstance(pattern, str):
        raise config_error(owner, field, pattern, "a regular expression (a string)")
    try:
        re.compile(pattern)
    except re.error as error:
        raise config_error(owner, field, pattern, "a valid regular expression", f" The regex does not compile: {error}.") from None
    return pattern


def check_module_names(owner: str, field: str, value: Any, optional: bool = True, regex: bool = True):
    """Module targeting: ``None``, a string (a regex matched against the full module path when
    ``regex``; ``"all-linear"`` is a keyword), or a non-empty list of non-empty module names
    (returned as a tuple).

    Example::

        >>> check_module_names("LoRAConfig", "target_modules", ["query", "value"])
        ('query', 'value')
    """
    if value is None and optional:
        return None
    valid = "a list of module names" + (" or a regular expression (a string)" if regex else "") + (" or None" if optional else "")
    if isinstance(value, str):
        if not value:
            raise config_error(owner, field, value, valid)
        return check_regex(owner, field, value) if regex and value != "all-linear" else value
    if not _is_sequence(value):
        raise config_error(owner, field, value, valid)
    names = sorted(value) if isinstance(value, Set) else list(value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise config_error(owner, field, value, valid, detail=f" ({describe(name)} is not a module name)")
    return tuple(names)


def check_pattern_dict(owner: str, field: str, value: Any, integer: bool) -> dict:
    """``rank_pattern`` / ``alpha_pattern``: a dict from regex (must compile) to a positive int
    rank (``integer``) or a finite positive alpha; ``None`` counts as empty.

    Example::

        >>> check_pattern_dict("LoRAConfig", "rank_pattern", {"q_proj$": 4}, integer=True)
        {'q_proj$': 4}
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise config_error(owner, field, value, "a dict from regular expression to " + ("rank" if integer else "alpha"))
    result = {}
    for pattern, number in value.items():
        check_regex(owner, f"{field} key", pattern)
        if integer:
            result[pattern] = check_int(owner, f"{field}[{pattern!r}]", number, minimum=1)
        else:
            result[pattern] = check_number(owner, f"{field}[{pattern!r}]", number, minimum=0, min_open=True)
    return result


def check_seed(owner: str, field: str, value: Any) -> Optional[int]:
    """A random seed: ``None`` or an int torch accepts (``-2**63 <= seed < 2**64``).

    Example::

        >>> check_seed("LoRAConfig", "init_weights_seed", 42)
        42
    """
    if value is None:
        return None
    if not _is_int(value) or not -(2**63) <= value < 2**64:
        raise config_error(owner, field, value, "None or an int seed (-2**63 <= seed < 2**64)")
    return int(value)


def _as_list(value):
    """A numpy array or torch tensor as a list (of Python numbers); anything else as it is."""
    if not isinstance(value, (str, bytes, list, tuple)) and callable(getattr(value, "tolist", None)):
        return value.tolist()
    return value


def check_sizes(owner: str, field: str, value: Any, count: int) -> tuple[int, ...]:
    """Block sizes (``Split.splits``, ``BatchSplit.batch_sizes``): one int ``>= 0`` per child or a
    single int for all; never rounded.

    Example::

        >>> check_sizes("Split", "splits", 4, 2)
        (4, 4)
    """
    valid = f"an int >= 0 or a list of {count} of them (one per child)"
    value = _as_list(value)
    if _is_int(value):
        value = [value] * count
    elif not _is_sequence(value) or isinstance(value, Set):
        raise config_error(owner, field, value, valid)
    sizes = list(value)
    for size in sizes:
        if not _is_int(size) or size < 0:
            hint = " Sizes are never rounded." if _is_real(size) else ""
            raise config_error(owner, field, value, valid, hint, detail=f" ({describe(size)} is not a size)")
    if len(sizes) != count:
        error = AdapterConfigError(
            f"{owner} has {count} children but {len(sizes)} {field}; give one {field.rstrip('s')} per child "
            f"(or a single int used for every child)."
        )
        error.owner, error.field, error.value = owner, field, value
        raise error
    return tuple(int(s) for s in sizes)


def check_weights(owner: str, field: str, value: Any, count: int) -> tuple:
    """Averaging weights: a list of ``count`` finite numbers (not bools or strings).

    Example::

        >>> check_weights("Average", "weights", [1, 3], 2)
        (1, 3)
    """
    valid = f"a list of {count} finite numbers (one per child)"
    value = _as_list(value)
    if not _is_sequence(value) or isinstance(value, Set):
        raise config_error(owner, field, value, valid)
    weights = list(value)
    for weight in weights:
        if not _is_real(weight) or not math.isfinite(weight):
            raise config_error(owner, field, value, valid, detail=f" ({describe(weight)} is not a finite number)")
    if len(weights) != count:
        error = AdapterConfigError(f"{owner} has {count} children but {len(weights)} {field}; give one weight per child.")
        error.owner, error.field, error.value = owner, field, value
        raise error
    return tuple(weights)


# ids of the config instances whose ``__init__`` is running: only these may have attributes set
_UNDER_CONSTRUCTION: set[int] = set()
# (a weak reference to) the class dataclasses is processing now in this thread
# (``CheckedFields.__dataclass_params__``): per thread, as config classes defined at the same time in
# two threads must each see their own subclass's ``frozen``
_DATACLASS_BEING_BUILT = threading.local()


class _ParamsWithFrozen:
    """A class's dataclass parameters as its subclass being built sees them: another ``frozen``."""

    def __init__(self, params, frozen: bool):
        self._params, self.frozen = params, frozen

    def __getattr__(self, name):
        return getattr(self._params, name)


class CheckedFields(type):
    """Metaclass of the config classes.

    - Calling a class with a keyword its ``__init__`` does not take raises
      :class:`~adapters.errors.AdapterConfigError` with a did-you-mean (``LoRAConfig(rank=4)``:
      "unknown field 'rank' for LoRAConfig; did you mean 'r'?") instead of Python's bare
      ``TypeError``.
    - It marks an instance as under construction while its ``__init__`` (and ``__post_init__``)
      runs; :class:`Immutable` refuses every assignment outside that window.
    - Config classes that :class:`Immutable` seals (dataclasses that are not ``frozen`` to the
      ``dataclasses`` module) may be subclassed both as AdapterHub's are
      (``@dataclass(eq=False)``) and as frozen dataclasses (``@dataclass(frozen=True)``), which
      Python otherwise refuses to mix (see :attr:`__dataclass_params__`).

    Example::

        >>> LoRAConfig(rank=4)
        Traceback (most recent call last):
        adapters.errors.AdapterConfigError: unknown field 'rank' for LoRAConfig; did you mean 'r'? Valid fields: ...
    """

    def __call__(cls, *args, **kwargs):
        if kwargs:
            names = cls.__dict__.get("_init_keywords_cache", False)
            if names is False:
                names = _init_keywords(cls)
                type.__setattr__(cls, "_init_keywords_cache", names)
            if names is not None:
                unknown = [key for key in kwargs if key not in names]
                if unknown:
                    raise unknown_fields_error(cls.__name__, unknown, names)
        # type.__call__'s two steps, with the instance open for assignment in between
        instance = cls.__new__(cls, *args, **kwargs)
        if isinstance(instance, cls):
            _UNDER_CONSTRUCTION.add(id(instance))
            try:
                type(instance).__init__(instance, *args, **kwargs)
            finally:
                _UNDER_CONSTRUCTION.discard(id(instance))
        return instance

    # ``dataclasses`` refuses a frozen dataclass over a non-frozen one and the reverse: it reads
    # ``__dataclass_params__.frozen`` of every base. A sealed config class is neither kind — not
    # frozen to ``dataclasses`` (so that AdapterHub's ``@dataclass(eq=False)`` subclasses, whose
    # ``__init__`` assigns fields, work) yet immutable (``Immutable.__setattr__``) — so either
    # kind of subclass keeps its guarantees. While ``dataclasses`` builds a subclass, a sealed
    # class therefore reports the subclass's own ``frozen``. ``dataclasses`` stores the new
    # class's parameters (the setter below) before it reads its bases' (Python 3.10 to 3.13;
    # tests/test_config_subclassing.py fails if a version changes that).
    @property
    def __dataclass_params__(cls):
        owner = next((klass for klass in cls.__mro__ if "_own_dataclass_params" in klass.__dict__), None)
        if owner is None:
            raise AttributeError(f"{cls.__name__} is not a dataclass")
        params = owner.__dict__["_own_dataclass_params"]
        reference = getattr(_DATACLASS_BEING_BUILT, "cls", None)
        building = reference() if reference is not None else None
        if (
            building is not None
            and building is not cls
            and "__dataclass_fields__" not in building.__dict__  # still being built
            and issubclass(building, cls)
            and not params.frozen  # a sealed class; a frozen one stays frozen to its subclasses
        ):
            return _ParamsWithFrozen(params, building.__dict__["_own_dataclass_params"].frozen)
        return params

    @__dataclass_params__.setter
    def __dataclass_params__(cls, params):
        type.__setattr__(cls, "_own_dataclass_params", params)
        _DATACLASS_BEING_BUILT.cls = weakref.ref(cls)

    @property
    def __signature__(cls):
        # the signature of the class's __init__ (without self), so that inspect and Sphinx show the
        # fields rather than this metaclass's (*args, **kwargs)
        import inspect

        signature = inspect.signature(cls.__init__)
        return signature.replace(parameters=list(signature.parameters.values())[1:])


class Immutable(metaclass=CheckedFields):
    """Base of the config classes: an instance cannot change once built.

    Its attributes are set while its ``__init__`` and ``__post_init__`` run; afterwards every
    assignment and deletion raises :class:`dataclasses.FrozenInstanceError`, as for a frozen
    dataclass (derive a changed copy with ``replace``). The classes are plain (not ``frozen``)
    dataclasses to the ``dataclasses`` module, so a user may subclass them as AdapterHub's are::

        @dataclass(eq=False)
        class MyBnConfig(BnConfig):
            my_field: int = 3

    or as frozen dataclasses (``@dataclass(frozen=True, eq=False)``); either subclass is
    immutable. Configs compare (and hash) by value whatever the subclass's decorator says: every
    subclass keeps its parent's ``__eq__`` and ``__hash__`` unless its own body defines them
    (``@dataclass`` adds neither to a class that has them).

    Example::

        >>> config = SeqBnConfig()
        >>> config.reduction_factor = 4
        Traceback (most recent call last):
        dataclasses.FrozenInstanceError: cannot assign to field 'reduction_factor': SeqBnConfig is immutable; use config.replace(reduction_factor=...) for a changed copy.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("__eq__", "__hash__"):
            if name not in cls.__dict__:  # inherited: made the class's own, so @dataclass keeps it
                type.__setattr__(cls, name, getattr(cls, name))

    def __setattr__(self, name: str, value: Any) -> None:
        if id(self) not in _UNDER_CONSTRUCTION:
            raise dataclasses.FrozenInstanceError(
                f"cannot assign to field {name!r}: {type(self).__name__} is immutable; "
                f"use config.replace({name}=...) for a changed copy."
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}: {type(self).__name__} is immutable.")


def _init_keywords(cls) -> Optional[frozenset]:
    """The keyword names ``cls.__init__`` takes, or None if it takes ``**kwargs``."""
    import inspect

    names = set()
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if parameter.kind is parameter.VAR_KEYWORD:
            return None
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            names.add(parameter.name)
    return frozenset(names)


# -- names ---------------------------------------------------------------------------------------------
NAME_MAX_LENGTH = 128
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
_NAME_FORM = (
    f"1 to {NAME_MAX_LENGTH} characters of ASCII letters, digits, '_' and '-', not starting with '-' "
    f"(e.g. 'sst2', 'lang_de', 'task-1')"
)
_RESERVED_NAMES: Optional[frozenset] = None


def _reserved_names() -> frozenset:
    """Attribute names of torch's ``ModuleDict`` (``to``, ``keys``, ``training``, ...): adapters,
    fusions and heads are held in ModuleDicts by name, which cannot take these."""
    global _RESERVED_NAMES
    if _RESERVED_NAMES is None:
        _RESERVED_NAMES = frozenset(dir(torch.nn.ModuleDict()))
    return _RESERVED_NAMES


def _name_problem(name, fusion: bool, module_dict: bool = True) -> Optional[str]:
    """What is wrong with ``name`` (None: nothing); ``module_dict``: it keys a ModuleDict."""
    if not isinstance(name, str):
        return f"a name is a str, not {type(name).__name__}"
    for part in name.split(",") if fusion else [name]:
        if not part:
            return "it is empty" if part == name else "it has an empty part between commas"
        if len(part) > NAME_MAX_LENGTH:
            return f"it is {len(part)} characters long"
        if not _NAME_RE.match(part):
            bad = sorted({c for c in part if not (c.isascii() and (c.isalnum() or c in "_-"))})
            if bad:
                return f"it contains {', '.join(repr(c) for c in bad)}"
            return "it starts with '-'"
        if module_dict and part in _reserved_names():
            return f"{part!r} is reserved (an attribute of torch's ModuleDict, which holds modules by name)"
    return None


def check_name(name, kind: str = "adapter", argument: Optional[str] = None, file: Optional[str] = None) -> str:
    """Return ``name`` if it is a valid adapter, fusion, head or embedding name, else raise.

    A name is 1 to 128 characters of ASCII letters, digits, ``_`` and ``-``, not starting with
    ``-`` and (but for embeddings, which are not held in one) not an attribute of torch's
    ``ModuleDict`` (``to``, ``keys``, ...); a fusion name
    (``kind="fusion"``) is such names joined by ``,``. So a name is never a path: no ``/``,
    ``\\``, ``.``, ``..``, NUL or whitespace.

    Args:
        name: the name to check.
        kind: ``"adapter"``, ``"fusion"``, ``"head"`` or ``"embedding"`` (for the message).
        argument: the argument it came from (``"load_as"``), or where in ``file`` it was read.
        file: the checkpoint file the name was read from: the error is then an
            :class:`AdapterLoadError` naming it (else an :class:`AdapterConfigError`).

    Example::

        >>> check_name("lang_de")
        'lang_de'
        >>> check_name("../escape", argument="load_as")
        Traceback (most recent call last):
        adapters.errors.AdapterConfigError: Invalid adapter name '../escape' (load_as): it contains '.', '/'. ...
    """
    problem = _name_problem(name, fusion=kind == "fusion", module_dict=kind != "embedding")
    if problem is None:
        return name
    form = _NAME_FORM if kind != "fusion" else f"adapter names joined by ',' (e.g. 'a,b'), each {_NAME_FORM}"
    where = f" ({argument})" if argument else ""
    article = "An" if kind[0] in "aeiou" else "A"
    if file is None:
        raise AdapterConfigError(f"Invalid {kind} name {name!r}{where}: {problem}. {article} {kind} name is {form}; names are never paths.")
    raise AdapterLoadError(
        f"{file}: invalid {kind} name {name!r}{where}: {problem}. {article} {kind} name is {form}; names are never paths. "
        f"Load it under a valid name with load_as=..."
    )
