"""Logging and progress bars of ``adapters``, with the names of ``transformers.logging``.

Every module of this package logs to a logger named after it (``adapters.loading``,
``adapters.merging``, ...), under the library's root logger ``"adapters"``. By default that root
logger **follows transformers' verbosity**: ``transformers.logging.set_verbosity_error()`` (or the
environment variable ``TRANSFORMERS_VERBOSITY``) silences this library's warnings together with
transformers' own. Setting a verbosity here (:func:`set_verbosity` and its shortcuts, or the
environment variable ``ADAPTERS_VERBOSITY`` with ``debug``, ``info``, ``warning``, ``error`` or
``critical``) sets this library's level alone, whatever transformers' is;
``set_verbosity(None)`` makes it follow transformers again.

Messages are printed to ``sys.stderr`` as ``[adapters] message`` by the root logger's own handler
(``ADAPTERS_VERBOSITY=detail`` or ``TRANSFORMERS_VERBOSITY=detail`` adds the level, logger name
and line). As transformers' root logger, it does not propagate to Python's root logger unless the
``CI`` environment variable is set or :func:`enable_propagation` is called.

Example::

    >>> import adapters, transformers
    >>> transformers.logging.set_verbosity_error()   # silences transformers and adapters
    >>> adapters.logging.set_verbosity_info()        # ... but adapters logs from INFO on
    >>> adapters.logging.set_verbosity(None)         # adapters follows transformers again
"""

# `import logging` is the standard library's module here: imports are absolute (this module is
# `adapters.logging` and only `from . import logging` / `adapters.logging` reach it)
import logging
import os
import sys
import threading
from logging import CRITICAL, DEBUG, ERROR, FATAL, INFO, NOTSET, WARN, WARNING  # noqa: F401  (re-exported)
from typing import Optional, Union

from transformers.utils import logging as hf_logging

from .errors import AdapterConfigError

__all__ = [
    "get_logger",
    "get_verbosity",
    "set_verbosity",
    "set_verbosity_debug",
    "set_verbosity_info",
    "set_verbosity_warning",
    "set_verbosity_error",
    "enable_default_handler",
    "disable_default_handler",
    "enable_propagation",
    "disable_propagation",
    "enable_progress_bar",
    "disable_progress_bar",
    "is_progress_bar_enabled",
    "tqdm",
]

_LIBRARY_NAME = "adapters"
_ENV_VERBOSITY = "ADAPTERS_VERBOSITY"
_LEVELS = {"detail": DEBUG, "debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR, "critical": CRITICAL}

_lock = threading.Lock()
_default_handler: Optional[logging.Handler] = None
# progress bars: None follows transformers (transformers.logging.disable_progress_bar()), else ours alone
_progress_bar: Optional[bool] = None


class _FollowedLevel(int):
    """transformers' level, as the ``"adapters"`` logger reports it while it has none of its own:
    setting it back (``old = logger.level; ...; logger.setLevel(old)``, as ``caplog.at_level`` and
    ``assertLogs`` do) leaves the logger following transformers instead of fixing today's level."""


class _RootLogger(logging.Logger):
    """The class of the ``"adapters"`` logger: its level, while none is set (``NOTSET``), is the
    effective level of transformers' root logger, so that the children (``adapters.loading``, ...)
    follow transformers' verbosity. Any level set (``setLevel``, ``set_verbosity``) is used as is.
    transformers' ``set_verbosity`` calls ``Logger.setLevel``, which clears every logger's level
    cache, so a change of transformers' verbosity is seen at once."""

    @property
    def level(self) -> int:
        explicit = self.__dict__.get("_explicit_level", NOTSET)
        if explicit != NOTSET:
            return explicit
        return _FollowedLevel(logging.getLogger("transformers").getEffectiveLevel())

    @level.setter
    def level(self, value: int) -> None:
        self.__dict__["_explicit_level"] = NOTSET if isinstance(value, _FollowedLevel) else value


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (pytest's capture, a redirected stream)."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def _env_level() -> Optional[int]:
    value = os.getenv(_ENV_VERBOSITY)
    if not value:
        return None
    if value.lower() not in _LEVELS:
        logging.getLogger(__name__).warning(
            f"Unknown option {_ENV_VERBOSITY}={value}; use one of {', '.join(_LEVELS)}."
        )
        return None
    return _LEVELS[value.lower()]


def _root_logger() -> logging.Logger:
    """The library's root logger ``"adapters"``, configured at the first call: its class, handler,
    format, propagation and the level from ``ADAPTERS_VERBOSITY``."""
    global _default_handler
    root = logging.getLogger(_LIBRARY_NAME)
    if _default_handler is not None:
        return root
    with _lock:
        if _default_handler is not None:
            return root
        hf_logging.get_verbosity()  # configures transformers' root logger (TRANSFORMERS_VERBOSITY)
        # a level set before this module configured the logger (or before a reload of this module)
        explicit = root.__dict__.get("_explicit_level", root.__dict__.get("level", NOTSET))
        if getattr(type(root), "level", None) is not _RootLogger.level:
            cls = _RootLogger if type(root) is logging.Logger else type("AdaptersRootLogger", (_RootLogger, type(root)), {})
            root.__dict__.pop("level", None)
            root.__class__ = cls
            root.level = explicit
        handler = _StderrHandler()
        detail = "detail" in (os.getenv(_ENV_VERBOSITY, "").lower(), os.getenv("TRANSFORMERS_VERBOSITY", "").lower())
        handler.setFormatter(
            logging.Formatter(
                "%(levelname)s [%(name)s:%(lineno)s] %(asctime)s %(message)s" if detail else f"[{_LIBRARY_NAME}] %(message)s"
            )
        )
        root.addHandler(handler)
        root.propagate = os.getenv("CI", "").upper() in {"1", "ON", "YES", "TRUE"}
        _default_handler = handler
        level = _env_level()
        # setLevel clears the level caches of all loggers (the class swap changed what the level is)
        root.setLevel(level if level is not None else explicit)
    return root


def get_logger(name: Optional[str] = None) -> logging.Logger:
    """The logger ``name`` (by default the library's root logger ``"adapters"``); this package's
    modules call it with ``__name__``, plug-ins may too (``"adapters.<something>"`` to come under
    this library's verbosity).

    Example::

        >>> from adapters.logging import get_logger
        >>> logger = get_logger(__name__)
        >>> logger.warning("shown unless adapters' or transformers' verbosity is ERROR or above")
    """
    _root_logger()
    return logging.getLogger(name or _LIBRARY_NAME)


def get_verbosity() -> int:
    """The level this library logs from (``logging.WARNING`` = 30 ...): the level set with
    :func:`set_verbosity` or ``ADAPTERS_VERBOSITY``, else transformers' verbosity.

    Example::

        >>> adapters.logging.get_verbosity() == transformers.logging.get_verbosity()   # nothing set here
        True
    """
    return int(_root_logger().getEffectiveLevel())


def set_verbosity(verbosity: Union[int, str, None]) -> None:
    """Set the level of this library's loggers alone: ``logging.ERROR`` (or ``"error"``), ...
    ``None`` (or ``logging.NOTSET``) makes them follow transformers' verbosity again.

    Args:
        verbosity: a level (``adapters.logging.INFO``, ``logging.INFO``, ``20``), its name
            (``"debug"``, ``"info"``, ``"warning"``, ``"error"``, ``"critical"``), or None.

    Example::

        >>> adapters.logging.set_verbosity(adapters.logging.ERROR)   # only errors from adapters
        >>> adapters.logging.set_verbosity("info")
        >>> adapters.logging.set_verbosity(None)                     # follow transformers again
    """
    if verbosity is None:
        verbosity = NOTSET
    elif isinstance(verbosity, str):
        if verbosity.lower() not in _LEVELS:
            raise AdapterConfigError(f"Unknown verbosity {verbosity!r}; use one of {', '.join(_LEVELS)}, a logging level or None.")
        verbosity = _LEVELS[verbosity.lower()]
    _root_logger().setLevel(verbosity)


def set_verbosity_debug() -> None:
    """Log everything from this library (``DEBUG``), whatever transformers' verbosity.

    Example::

        >>> adapters.logging.set_verbosity_debug()
    """
    set_verbosity(DEBUG)


def set_verbosity_info() -> None:
    """Log this library's ``INFO`` messages (adapters saved, loaded, ...) and above.

    Example::

        >>> adapters.logging.set_verbosity_info()
    """
    set_verbosity(INFO)


def set_verbosity_warning() -> None:
    """Log this library's warnings and errors (transformers' default level), whatever
    transformers' verbosity.

    Example::

        >>> adapters.logging.set_verbosity_warning()
    """
    set_verbosity(WARNING)


def set_verbosity_error() -> None:
    """Silence this library's warnings (transformers' are left as they are).

    Example::

        >>> adapters.logging.set_verbosity_error()
        >>> model.merge_and_unload()   # no "No adapter setup is active" warning
    """
    set_verbosity(ERROR)


def disable_default_handler() -> None:
    """Remove the handler that prints this library's messages to ``sys.stderr`` (e.g. when they
    propagate to handlers of your own).

    Example::

        >>> adapters.logging.disable_default_handler()
        >>> adapters.logging.enable_propagation()      # to the handlers of Python's root logger
    """
    _root_logger().removeHandler(_default_handler)


def enable_default_handler() -> None:
    """Print this library's messages to ``sys.stderr`` again (the default).

    Example::

        >>> adapters.logging.enable_default_handler()
    """
    root = _root_logger()
    if _default_handler not in root.handlers:
        root.addHandler(_default_handler)


def enable_propagation() -> None:
    """Pass this library's messages on to the handlers of Python's root logger too (disable the
    default handler to avoid printing them twice).

    Example::

        >>> logging.basicConfig(filename="run.log")
        >>> adapters.logging.enable_propagation()
    """
    _root_logger().propagate = True


def disable_propagation() -> None:
    """Keep this library's messages from Python's root logger's handlers (the default).

    Example::

        >>> adapters.logging.disable_propagation()
    """
    _root_logger().propagate = False


def is_progress_bar_enabled() -> bool:
    """Whether this library shows progress bars (``merge_and_unload(progressbar=True)``, ...): as
    set by :func:`enable_progress_bar` / :func:`disable_progress_bar`, else as transformers'.

    Example::

        >>> transformers.logging.disable_progress_bar()
        >>> adapters.logging.is_progress_bar_enabled()
        False
    """
    return hf_logging.is_progress_bar_enabled() if _progress_bar is None else _progress_bar


def enable_progress_bar() -> None:
    """Show this library's progress bars, whatever transformers' setting.

    Example::

        >>> adapters.logging.enable_progress_bar()
    """
    global _progress_bar
    _progress_bar = True


def disable_progress_bar() -> None:
    """Hide this library's progress bars (transformers' are left as they are).

    Example::

        >>> adapters.logging.disable_progress_bar()
        >>> model.merge_and_unload(progressbar=True)   # no bar
    """
    global _progress_bar
    _progress_bar = False


class _NoProgressBar:
    """What :func:`tqdm` gives while progress bars are off: iterates, and ignores every call."""

    def __init__(self, iterable=None, *args, **kwargs):
        self._iterable = iterable

    def __iter__(self):
        return iter(self._iterable)

    def __getattr__(self, _):
        return lambda *args, **kwargs: None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def tqdm(*args, **kwargs):
    """A ``tqdm`` progress bar if this library's progress bars are on (:func:`is_progress_bar_enabled`),
    else an object that only iterates. This library's loops with a progress bar use it.

    Example::

        >>> for item in adapters.logging.tqdm(items, desc="Merging"):
        ...     work(item)
    """
    if _progress_bar is None:
        return hf_logging.tqdm(*args, **kwargs)  # transformers' switch (and its hook)
    if not _progress_bar:
        return _NoProgressBar(*args, **kwargs)
    from tqdm.auto import tqdm as tqdm_class

    return tqdm_class(*args, **kwargs)
