"""Helpers to read the reference fixtures in ../shared/fixtures."""

from __future__ import annotations

import json
import os
import re

from safetensors.torch import load_file

from adapters.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack

# ../shared/fixtures beside the repository; ADAPTERS_FIXTURES points elsewhere (the tests that
# need the fixtures are skipped when the folder is absent)
FIXTURES = os.environ.get("ADAPTERS_FIXTURES") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")
ADAPTERHUB = os.path.join(FIXTURES, "adapterhub")
PEFT = os.path.join(FIXTURES, "peft")

# the block parameters the fixtures were written with (fixtures/README.md)
_BLOCKS = {"Stack": Stack, "Parallel": Parallel, "Fuse": Fuse, "Split": Split, "BatchSplit": BatchSplit, "Average": Average}


def adapterhub_manifest() -> dict:
    with open(os.path.join(ADAPTERHUB, "manifest.json")) as f:
        return json.load(f)


def parse_setup(text: str, lora: bool = False):
    """Parse the library's repr (``Stack[c, Fuse[a, b]]``, ``'a'``) into a block tree."""
    text = text.strip().strip("'")
    match = re.match(r"^(\w+)\[(.*)\]$", text)
    if not match:
        return text
    kind, inner = match.group(1), match.group(2)
    children, depth, current = [], 0, ""
    for char in inner:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            children.append(current)
            current = ""
        else:
            current += char
    children.append(current)
    parsed = [parse_setup(c, lora) for c in children]
    if kind == "Split":
        return Split(*parsed, splits=[5, 7])
    if kind == "BatchSplit":
        return BatchSplit(*parsed, batch_sizes=[1, 1])
    if kind == "Average":
        return Average(*parsed, weights=[0.5, 0.5] if lora else [0.3, 0.7])
    return _BLOCKS[kind](*parsed)


def load_tensors(path: str) -> dict:
    return load_file(path)


def fixture_inputs(arch_dir: str) -> dict:
    return {k: v for k, v in load_file(os.path.join(arch_dir, "inputs.safetensors")).items()}
