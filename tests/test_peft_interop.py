"""PEFT 0.21.2 checkpoints (../shared/fixtures/peft) load as our adapters and reproduce PEFT's
outputs, merged and unmerged; our PEFT-format checkpoints load in PEFT with the same outputs."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import main_output, make_inputs, make_model, perturb_adapter
from fixture_utils import PEFT, fixture_inputs, load_tensors

import adapters
from adapters import DoRAConfig, IA3Config, LoRAConfig

pytestmark = pytest.mark.skipif(not os.path.isdir(PEFT), reason="../shared/fixtures is not present")

LORA_FAMILY = ["lora", "lora_all", "lora_layers", "lora_patterns", "lora_rslora", "dora", "ia3"]


def _base(arch):
    import transformers

    folder = os.path.join(PEFT, arch, "base")
    with open(os.path.join(folder, "config.json")) as f:
        architecture = json.load(f)["architectures"][0]
    return getattr(transformers, architecture).from_pretrained(folder).eval()


def _first_output(output):
    return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("case", LORA_FAMILY)
def test_peft_case_reproduces_out_and_merged_out(arch, case):
    folder = os.path.join(PEFT, arch, case)
    expected = load_tensors(os.path.join(folder, "expected.safetensors"))
    model = _base(arch)
    adapters.init(model)
    name = model.load_adapter(folder, set_active=True)
    assert name == case
    inputs = fixture_inputs(os.path.join(PEFT, arch))
    with torch.no_grad():
        out = _first_output(model(**inputs))
    torch.testing.assert_close(out, expected["out"], atol=1e-4, rtol=0)
    if "merged_out" in expected:
        model.merge_adapter(name)
        with torch.no_grad():
            merged = _first_output(model(**inputs))
        torch.testing.assert_close(merged, expected["merged_out"], atol=1e-4, rtol=0)


def test_peft_checkpoint_with_unsupported_fields_is_refused(tmp_path):
    import shutil

    from adapters import AdapterLoadError

    folder = tmp_path / "lora"
    shutil.copytree(os.path.join(PEFT, "bert", "lora"), folder)
    meta = json.loads((folder / "adapter_config.json").read_text())
    meta["layer_replication"] = [[0, 2], [1, 2]]
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    model = _base("bert")
    adapters.init(model)
    with pytest.raises(AdapterLoadError, match=r"layer_replication=\[\[0, 2\], \[1, 2\]\] is not supported"):
        model.load_adapter(str(folder))
    assert not model.adapters_config.adapters


@pytest.mark.parametrize("arch,head", [("bert", "base"), ("llama", "clm")])
@pytest.mark.parametrize(
    "config",
    [
        LoRAConfig(r=4, alpha=8, attn_matrices=["q", "v"], intermediate_lora=True),
        LoRAConfig(r=8, target_modules="all-linear", rank_pattern={"query|q_proj": 2}, use_rslora=True),
        DoRAConfig(r=4),
        IA3Config(),
        IA3Config(target_modules=["key", "value", "k_proj", "v_proj", "dense", "down_proj"], feedforward_modules=["output.dense", "down_proj"]),
    ],
    ids=["lora", "all-linear-patterns-rslora", "dora", "ia3", "ia3-feedforward"],
)
def test_saved_peft_format_loads_in_peft_with_the_same_outputs(tmp_path, arch, head, config):
    from peft import PeftModel

    model = make_model(arch, head)
    reference = make_model(arch, head)  # same seed: same base weights, never patched
    adapters.init(model)
    model.add_adapter("a", config=config, set_active=True)
    perturb_adapter(model, "a", scale=0.2)
    inputs = make_inputs(arch)
    with torch.no_grad():
        ours = main_output(model(**inputs))
    model.save_adapter(str(tmp_path), "a", format="peft")
    peft_model = PeftModel.from_pretrained(reference, str(tmp_path)).eval()
    with torch.no_grad():
        theirs = main_output(peft_model(**inputs))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    # and back: our loader reads what we wrote
    again = make_model(arch, head)
    adapters.init(again)
    again.load_adapter(str(tmp_path), load_as="b", set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(main_output(again(**inputs)), ours, atol=1e-6, rtol=1e-6)


def test_trained_biases_round_trip_through_peft(tmp_path):
    from peft import PeftModel

    model, reference = make_model("llama", "clm"), make_model("llama", "clm")
    adapters.init(model)
    model.add_adapter("a", config=LoRAConfig(r=4, target_modules=["q_proj", "down_proj"], bias="lora_only"), set_active=True)
    perturb_adapter(model, "a", scale=0.2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("down_proj.bias") or name.endswith("q_proj.bias"):
                param.add_(0.5)
    inputs = make_inputs("llama")
    with torch.no_grad():
        ours = main_output(model(**inputs))
    model.save_adapter(str(tmp_path), "a", format="peft")
    peft_model = PeftModel.from_pretrained(reference, str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(main_output(peft_model(**inputs)), ours, atol=1e-5, rtol=1e-5)


def test_peft_prefix_tuning_case_reproduces():
    """PEFT's prefix (a flat prompt fed as past keys/values; positions shift by its length) loads
    through load_adapter as a flat prefix with shift_positions and reproduces ``out``, padded row
    included."""
    folder = os.path.join(PEFT, "llama", "prefix")
    model = _base("llama")
    adapters.init(model)
    name = model.load_adapter(folder, set_active=True)
    config = model.adapters_config.adapters[name]
    assert config.architecture == "prefix_tuning" and config.flat and config.shift_positions
    with torch.no_grad():
        out = _first_output(model(**fixture_inputs(os.path.join(PEFT, "llama"))))
    expected = load_tensors(os.path.join(folder, "expected.safetensors"))["out"]
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
