"""adapters.logging: this library's warnings follow transformers' verbosity unless a verbosity of
its own is set, can be silenced alone, and every module logs through it; progress bars likewise."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from conftest import patched

import adapters
from adapters import LoRAConfig

ROOT = Path(__file__).resolve().parents[1]
# what merge_and_unload logs when no adapter setup is active (adapters.merging)
WARNING_TEXT = "No adapter setup is active"


@pytest.fixture
def logging_state():
    """Start from the defaults (transformers at WARNING, adapters following it, progress bars as
    transformers'); restore transformers' verbosity, adapters' own level, the default handler,
    propagation and both progress-bar switches afterwards (conftest sets transformers to ERROR)."""
    root = logging.getLogger("adapters")
    adapters.logging.get_logger()  # configured
    saved = (
        transformers.logging.get_verbosity(), root.__dict__.get("_explicit_level", logging.NOTSET), root.propagate,
        list(root.handlers), transformers.logging.is_progress_bar_enabled(), adapters.logging._progress_bar,
    )
    transformers.logging.set_verbosity_warning()
    adapters.logging.set_verbosity(None)
    adapters.logging._progress_bar = None
    yield
    hf_level, own_level, propagate, handlers, hf_bars, own_bars = saved
    transformers.logging.set_verbosity(hf_level)
    root.setLevel(own_level)
    root.propagate = propagate
    root.handlers[:] = handlers
    (transformers.logging.enable_progress_bar if hf_bars else transformers.logging.disable_progress_bar)()
    adapters.logging._progress_bar = own_bars


def _merge_warns(capsys) -> bool:
    """Whether merge_and_unload's warning (no active setup: every LoRA adapter is merged) reaches stderr."""
    model = patched("bert")
    model.add_adapter("lora", config=LoRAConfig())
    capsys.readouterr()
    model.merge_and_unload()
    err = capsys.readouterr().err
    return f"[adapters] {WARNING_TEXT}" in err


def _transformers_warns() -> bool:
    # transformers' handler holds the sys.stderr of its creation, out of capsys' reach: ask the logger
    return transformers.logging.get_logger("transformers.test_logging").isEnabledFor(logging.WARNING)


def test_a_warning_is_shown_by_default_and_follows_transformers_verbosity(capsys, logging_state):
    assert adapters.logging.get_verbosity() == logging.WARNING
    assert _merge_warns(capsys)
    transformers.logging.set_verbosity_error()
    assert adapters.logging.get_verbosity() == logging.ERROR
    assert not _merge_warns(capsys)
    transformers.logging.set_verbosity_warning()
    assert _merge_warns(capsys)


def test_set_verbosity_error_silences_adapters_alone_and_is_undone(capsys, logging_state):
    adapters.logging.set_verbosity_error()
    assert not _merge_warns(capsys)
    assert _transformers_warns()  # transformers' own warnings are left as they were
    assert transformers.logging.get_verbosity() == logging.WARNING
    # adapters' own level wins either way: shown while transformers is at ERROR
    transformers.logging.set_verbosity_error()
    adapters.logging.set_verbosity_warning()
    assert _merge_warns(capsys) and not _transformers_warns()
    # None: adapters follows transformers again
    adapters.logging.set_verbosity(None)
    assert not _merge_warns(capsys)
    transformers.logging.set_verbosity_warning()
    assert _merge_warns(capsys)


def test_info_messages_and_verbosity_names(caplog, logging_state):
    logger = adapters.logging.get_logger("adapters.test_logging")
    logger.addHandler(caplog.handler)
    try:
        logger.info("an info message")
        assert "an info message" not in caplog.text
        transformers.logging.set_verbosity_info()  # followed
        logger.info("an info message")
        assert "an info message" in caplog.text
        transformers.logging.set_verbosity_warning()
        adapters.logging.set_verbosity("debug")
        logger.debug("a debug message")
        assert "a debug message" in caplog.text
        assert adapters.logging.get_verbosity() == adapters.logging.DEBUG
        adapters.logging.set_verbosity_info()
        assert adapters.logging.get_verbosity() == logging.INFO
        adapters.logging.set_verbosity_debug()
        assert adapters.logging.get_verbosity() == logging.DEBUG
    finally:
        logger.removeHandler(caplog.handler)
    with pytest.raises(ValueError, match="Unknown verbosity 'loud'"):
        adapters.logging.set_verbosity("loud")


def test_saving_and_restoring_the_root_level_keeps_following_transformers(caplog, logging_state):
    # caplog.at_level (like unittest's assertLogs) saves logger.level and sets it back afterwards
    with caplog.at_level(logging.INFO, logger="adapters"):
        assert adapters.logging.get_verbosity() == logging.INFO
    transformers.logging.set_verbosity_error()
    assert adapters.logging.get_verbosity() == logging.ERROR
    adapters.logging.set_verbosity_error()
    with caplog.at_level(logging.INFO, logger="adapters"):
        pass
    transformers.logging.set_verbosity_info()
    assert adapters.logging.get_verbosity() == logging.ERROR  # an own level stays


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_default_handler_and_propagation(capsys, logging_state):
    logger = adapters.logging.get_logger("adapters.test_logging")
    python_root = _Collect()  # a handler of Python's root logger (caplog's may be attached to ours too)
    logging.getLogger().addHandler(python_root)
    try:
        adapters.logging.disable_default_handler()
        adapters.logging.enable_propagation()
        capsys.readouterr()
        logger.warning("propagated")
        assert python_root.messages == ["propagated"] and "propagated" not in capsys.readouterr().err
        adapters.logging.enable_default_handler()
        adapters.logging.enable_default_handler()  # added once only
        adapters.logging.disable_propagation()
        logger.warning("printed")
        assert capsys.readouterr().err.count("[adapters] printed") == 1 and python_root.messages == ["propagated"]
    finally:
        logging.getLogger().removeHandler(python_root)


def test_progress_bars_follow_transformers_unless_set(capsys, logging_state):
    def bar_shown() -> bool:
        capsys.readouterr()
        assert list(adapters.logging.tqdm(range(3), desc="adapters-bar")) == [0, 1, 2]
        return "adapters-bar" in capsys.readouterr().err

    transformers.logging.enable_progress_bar()
    assert adapters.logging.is_progress_bar_enabled() and bar_shown()
    transformers.logging.disable_progress_bar()
    assert not adapters.logging.is_progress_bar_enabled() and not bar_shown()
    adapters.logging.enable_progress_bar()
    assert adapters.logging.is_progress_bar_enabled() and bar_shown()
    transformers.logging.enable_progress_bar()
    adapters.logging.disable_progress_bar()
    assert not adapters.logging.is_progress_bar_enabled() and not bar_shown()
    with adapters.logging.tqdm(total=2) as bar:  # the stand-in takes tqdm's calls
        bar.update(1)


def test_every_module_logs_through_adapters_logging():
    """No logger of this package is created outside adapters.logging (transformers' get_logger or
    logging.getLogger would put it outside the verbosity above), and `logging` in the package's
    modules is never shadowed: adapters.logging's own `logging` is the standard library's."""
    assert adapters.logging.logging is logging and "adapters" not in (logging.__file__ or "")
    offenders = []
    for path in sorted((ROOT / "adapters").rglob("*.py")):
        if path.name == "logging.py" and path.parent.name == "adapters":
            continue
        text = path.read_text(encoding="utf-8")
        for bad in ("transformers.utils import logging", "transformers.utils.logging", "getLogger("):
            if bad in text:
                offenders.append(f"{path.relative_to(ROOT)}: {bad}")
    assert not offenders, offenders
    for name in ("merging", "loading", "model_mixin", "initialize", "heads.adapter_model", "heads.model_mixin"):
        module = importlib.import_module(f"adapters.{name}")
        assert module.logging is adapters.logging
        assert module.logger.name == module.__name__ and module.logger.name.startswith("adapters")


@pytest.mark.parametrize(
    "env, shown, level",
    [
        ({"TRANSFORMERS_VERBOSITY": "error"}, False, logging.ERROR),
        ({"TRANSFORMERS_VERBOSITY": "error", "ADAPTERS_VERBOSITY": "info"}, True, logging.INFO),
    ],
)
def test_environment_variables(env, shown, level):
    script = (
        "import adapters\n"
        "adapters.logging.get_logger('adapters.test_logging').info('an info message')\n"
        "print(adapters.logging.get_verbosity())\n"
    )
    full_env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")}
    full_env.update(env, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=full_env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) == level
    assert ("[adapters] an info message" in result.stderr) == shown, result.stderr
