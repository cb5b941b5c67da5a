"""One linear host protocol: LoRA, (IA)³ and every weight transform sit in one
:class:`~adapters.methods.lora.LinearHost` as :class:`~adapters.methods.lora.LinearAdapter`\\ s, and
the host never asks which method an adapter is."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import adapters
from adapters import Stack
from adapters.errors import AdapterMergeError
from adapters.methods.lora import LinearAdapter, LinearHost, LoRALinear
from adapters.methods.registry import families

from conftest import make_inputs, patched, perturb_adapter

LORA_FILE = Path(__file__).resolve().parents[1] / "adapters" / "methods" / "lora.py"
LINEAR_METHODS = {
    "lora": adapters.LoRAConfig(),
    "ia3": adapters.IA3Config(),
    "loha": adapters.LoHaConfig(),
    "lokr": adapters.LoKrConfig(),
    "oft": adapters.OFTConfig(),
    "hra": adapters.HRAConfig(),
}


def test_the_host_never_switches_on_the_method():
    """No ``composition_mode``, no method class and no method id inside LinearHost's code."""
    tree = ast.parse(LORA_FILE.read_text(encoding="utf-8"))
    host = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "LinearHost")
    method_ids = {f.name for f in families()} | {"add", "scale"}
    annotations = {
        id(inner)
        for node in ast.walk(host)
        for part in ([a.annotation for a in node.args.args + node.args.kwonlyargs] + [node.returns] if isinstance(node, ast.FunctionDef) else [])
        if part is not None
        for inner in ast.walk(part)
    }  # a type hint (``lora: LoRA``) is not a switch
    offenders = []
    for node in ast.walk(host):
        if id(node) in annotations:
            continue
        if isinstance(node, ast.Attribute) and node.attr == "composition_mode":
            offenders.append(f"line {node.lineno}: .composition_mode")
        if isinstance(node, ast.Name) and node.id in {"LoRA", "IA3", "WeightTransform", "LoHa", "LoKr", "OFT", "HRA", "AdaLoRA"}:
            offenders.append(f"line {node.lineno}: names {node.id}")
        if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in method_ids for c in node.comparators):
            offenders.append(f"line {node.lineno}: compares with a method string")
    assert not offenders, offenders


def test_every_linear_method_is_a_linear_adapter_in_one_host():
    model = patched("bert")
    for index, (name, config) in enumerate(LINEAR_METHODS.items()):
        model.add_adapter(name, config=config)
        perturb_adapter(model, name, seed=index + 1)
    query = model.encoder.layer[0].attention.self.value  # every method's default targets include v
    assert LoRALinear is LinearHost and isinstance(query, LinearHost)
    assert all(isinstance(adapter, LinearAdapter) for adapter in query.loras.values())
    kinds = {name: type(adapter).__name__ for name, adapter in query.loras.items()}
    assert kinds == {"lora": "LoRA", "ia3": "IA3", "loha": "LoHa", "lokr": "LoKr", "oft": "OFT", "hra": "HRA"}
    # a Stack of them runs through the host, and merging it reproduces the unmerged output ((IA)³
    # beside a rotation cannot be merged, see the next test)
    inputs = make_inputs("bert")
    exact = [name for name in LINEAR_METHODS if name != "ia3"]
    model.delete_adapter("ia3")
    setup = Stack(*exact)
    model.eval()
    with torch.no_grad():
        model.set_active_adapters(setup)
        unmerged = model(**inputs).last_hidden_state
        for name in exact:
            model.merge_adapter(name)
        merged = model(**inputs).last_hidden_state
        model.reset_adapter()
        restored = model(**inputs).last_hidden_state  # (IA)³ and the rotations divide back out: rounding
    assert torch.allclose(restored, unmerged, atol=1e-4)  # OFT's unmerge inverts a rotation
    assert torch.allclose(merged, unmerged, atol=1e-4)


@pytest.mark.parametrize("multiplicative", ["ia3", "dora"])
@pytest.mark.parametrize("rotation", ["oft", "hra"])
@pytest.mark.parametrize("first", ["multiplicative", "rotation"])  # which one is merged
def test_a_multiplicative_merge_beside_a_rotation_is_refused_and_changes_nothing(multiplicative, rotation, first):
    """A rotation acts on the reference weight, which a multiplicative merge ((IA)³, DoRA) scales:
    merged, Stack(ia3, oft) gave outputs 1.27 away from the unmerged Stack. Merging either one is
    refused, with the model as it was."""
    configs = {"ia3": adapters.IA3Config(), "dora": adapters.LoRAConfig(use_dora=True, attn_matrices=["v"]),
               "oft": adapters.OFTConfig(), "hra": adapters.HRAConfig()}
    model = patched("bert")
    for index, name in enumerate((multiplicative, rotation)):
        model.add_adapter(name, config=configs[name])
        perturb_adapter(model, name, seed=index + 1)
    model.eval()
    inputs = make_inputs("bert")
    name = multiplicative if first == "multiplicative" else rotation
    other = rotation if name == multiplicative else multiplicative
    with torch.no_grad():
        model.set_active_adapters(Stack(multiplicative, rotation))
        before = model(**inputs).last_hidden_state
        state = {key: value.clone() for key, value in model.state_dict().items()}
        with pytest.raises(AdapterMergeError, match=f"'{name}'.*beside \\['{other}'\\]"):
            model.merge_adapter(name)
        assert torch.equal(model(**inputs).last_hidden_state, before)
        assert all(torch.equal(value, model.state_dict()[key]) for key, value in state.items())
