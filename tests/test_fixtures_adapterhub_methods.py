"""AdapterHub 1.3.0 checkpoints of the methods added after the shared fixtures were written
(tests/fixtures/adapterhub, written by utils/make_adapterhub_fixtures.py in a side venv with
AdapterHub's library): each loads and reproduces the output AdapterHub computed, within 1e-4."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import adapters
from adapters import AdapterPlusConfig

from fixture_utils import parse_setup

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "adapterhub")
with open(os.path.join(HERE, "manifest.json")) as _f:
    MANIFEST = json.load(_f)

# our config each case's adapters were written with in AdapterHub (same class names and fields)
OUR_CONFIGS = {
    "adapterplus": AdapterPlusConfig(reduction_factor=8),
    "adapterplus_r16": AdapterPlusConfig(reduction_factor=16, stochastic_depth=0.0),
}


def test_the_fixtures_come_from_adapterhub():
    assert MANIFEST["anchor"] == "adapters 1.3.0" and MANIFEST["transformers"] == "4.57.6"
    assert {case["case"] for case in MANIFEST["cases"]} == set(OUR_CONFIGS)


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=lambda c: f"{c['arch']}-{c['case']}")
def test_adapterhub_checkpoint_reproduces_its_output(case):
    from transformers import AutoModel

    arch_dir = os.path.join(HERE, case["arch"])
    model = AutoModel.from_pretrained(os.path.join(arch_dir, "base")).eval()
    adapters.init(model)
    for adapter in case["adapters"]:
        assert model.load_adapter(os.path.join(arch_dir, adapter["dir"]), load_as=adapter["name"]) == adapter["name"]
    inputs = load_file(os.path.join(arch_dir, "inputs.safetensors"))
    expected = load_file(os.path.join(arch_dir, case["expected"]))["out"]
    with torch.no_grad():
        base = model(**inputs).last_hidden_state
        model.set_active_adapters(parse_setup(case["setup"]))
        output = model(**inputs).last_hidden_state
    assert case["differs_from_base"] and not torch.allclose(base, expected, atol=1e-3)
    torch.testing.assert_close(output, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=lambda c: f"{c['arch']}-{c['case']}")
def test_adapterhub_config_is_our_config(case):
    """The config AdapterHub saved equals ours field for field (the string id ``"adapterplus"`` is ours)."""
    for adapter in case["adapters"]:
        with open(os.path.join(HERE, case["arch"], adapter["dir"], "adapter_config.json")) as f:
            saved = json.load(f)["config"]
        ours = OUR_CONFIGS[adapter["config"]].to_dict()
        assert {key: saved[key] for key in saved if key in ours} == {key: ours[key] for key in saved if key in ours}


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_adapterplus_by_id_composes_and_trains_only_itself(arch):
    """``"adapterplus"`` is the registered id (with bracket-free overrides); the adapter takes part
    in composition like any bottleneck (a Stack with seq_bn changes the output; Parallel's first
    branch equals the adapter alone) and train_adapter makes only its parameters, the per-channel
    scaling included, trainable."""
    from conftest import make_inputs, make_model, perturb_adapter

    config = adapters.AdapterConfig.load("adapterplus", reduction_factor=8)
    assert isinstance(config, AdapterPlusConfig) and config.reduction_factor == 8
    model = make_model(arch)
    adapters.init(model)
    model.add_adapter("plus", config=config)
    model.add_adapter("seq", config="seq_bn")
    for index, name in enumerate(("plus", "seq")):
        perturb_adapter(model, name, seed=index + 3)
    model.eval()
    inputs = make_inputs(arch)
    with torch.no_grad():
        base = model(**inputs).last_hidden_state
        model.set_active_adapters("plus")
        alone = model(**inputs).last_hidden_state
        model.set_active_adapters(adapters.Stack("plus", "seq"))
        stacked = model(**inputs).last_hidden_state
        model.set_active_adapters(adapters.Parallel("plus", "seq"))
        parallel = model(**inputs).last_hidden_state
    assert not torch.allclose(alone, base) and not torch.allclose(stacked, alone)
    n = base.shape[0]
    torch.testing.assert_close(parallel[:n], alone)  # Parallel's first branch is the adapter alone
    model.train_adapter("plus")
    trainable = {key for key, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all(".plus." in key for key in trainable)
    assert any("scaling" in key for key in trainable)  # the per-channel scaling is learned
