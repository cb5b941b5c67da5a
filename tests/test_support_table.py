"""docs/support_table.rst is what utils/support_table.py generates from the test matrix (so the
documented support cannot drift from what the tests run)."""

from __future__ import annotations

import importlib.util
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _generator():
    spec = importlib.util.spec_from_file_location("support_table", os.path.join(ROOT, "utils", "support_table.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_committed_support_table_is_up_to_date():
    generator = _generator()
    with open(generator.OUTPUT, encoding="utf-8") as f:
        committed = f.read()
    assert committed == generator.render(generator.load_conftest()), "run: python utils/support_table.py"


def test_cells_follow_the_exclusion_lists():
    generator = _generator()
    matrix = types.SimpleNamespace(
        CONFIGS={"a": None, "b": None}, ENCODERS=("a",), DECODERS=("b",), NO_PREFIX=("b",), NEW_ARCHS=("a",),
    )
    text = generator.render(matrix)
    rows = {block.split("\n")[0].strip(" *-`"): block for block in text.split("   * - ")[1:]}
    prefix_index = [c.title for c in generator.COLUMNS].index("Prefix tuning")
    cells = lambda arch: [line.strip()[2:] for line in rows[arch].split("\n")[2:] if line.strip().startswith("- ")]  # noqa: E731
    assert cells("a")[prefix_index] == "yes" and cells("b")[prefix_index].startswith("no [#no-prefix]_")
    assert "NO_ADAPTER_MODEL" not in text  # an empty or missing list adds no footnote
    assert "``NO_PREFIX``" in text
