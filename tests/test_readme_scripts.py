"""The README's utility commands behave for a newcomer: ``utils/reproduce_fixtures.py`` without the
reference fixtures, and a cut-down ``benchmarks/overhead.py --quick`` smoke run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, env=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_reproduce_fixtures_without_fixtures_prints_one_line_and_succeeds(tmp_path):
    missing = tmp_path / "no-such-folder"
    result = _run("utils/reproduce_fixtures.py", env={"ADAPTERS_FIXTURES": str(missing)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"reference fixtures not present: {missing} does not exist, nothing to compare"]
    assert "Traceback" not in result.stderr


def test_fixture_tests_are_skipped_with_the_reason_without_fixtures(tmp_path):
    env = {"ADAPTERS_FIXTURES": str(tmp_path / "no-such-folder")}
    files = ["tests/test_fixtures_adapterhub.py", "tests/test_peft_interop.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "-rs", *files],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1", **env), timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "skipped" in summary and "passed" not in summary and "error" not in summary, result.stdout
    assert "SKIPPED" in result.stdout and "../shared/fixtures is not present" in result.stdout


def test_benchmark_quick_smoke_run():
    """Every phase of a few scenarios (a composition, a weight-writing one, a PEFT one) on one
    architecture; the report says its figures are not meaningful, progress goes to stderr."""
    require("peft")
    only = "identical copy,seq_bn,Fuse(3 seq_bn),LoRA merged,PEFT LoRA r8 q+v"
    result = _run("benchmarks/overhead.py", "--quick", "--arch", "bert", "--only", only, "--rounds", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    banner = "--quick: smoke run, too few rounds for meaningful figures"
    assert out.startswith(banner) and out.count(banner) == 3, out  # at the start, under the table, under the summary
    for name in only.split(","):
        assert f"\n{name:<20} " in out, name
    assert "Summary:\n  bert: " in out
    assert "bert forward: round 1/1" in result.stderr and "bert train: round 1/1" in result.stderr
