"""PEFT 0.21.2 checkpoints (../shared/fixtures/peft) load as our adapters and reproduce PEFT's
outputs, merged and unmerged; our PEFT-format checkpoints load in PEFT with the same outputs."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import checked_peft_output, main_output, make_inputs, make_model, perturb_adapter
from fixture_utils import PEFT, fixture_inputs, load_tensors

import adapters
from adapters import AdaLoRAConfig, DoRAConfig, HRAConfig, IA3Config, LoHaConfig, LoKrConfig, LoRAConfig, OFTConfig

pytestmark = pytest.mark.skipif(not os.path.isdir(PEFT), reason="../shared/fixtures is not present")

LORA_FAMILY = ["lora", "lora_all", "lora_layers", "lora_patterns", "lora_rslora", "dora", "ia3"]
WEIGHT_TRANSFORMS = ["loha", "lokr", "oft", "hra", "hra_gs", "adalora"]


def _base(arch):
    import transformers

    folder = os.path.join(PEFT, arch, "base")
    with open(os.path.join(folder, "config.json")) as f:
        architecture = json.load(f)["architectures"][0]
    return getattr(transformers, architecture).from_pretrained(folder).eval()


def _first_output(output):
    return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("case", LORA_FAMILY + WEIGHT_TRANSFORMS)
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
    # our loader reads what we wrote
    again = make_model(arch, head)
    adapters.init(again)
    again.load_adapter(str(tmp_path), load_as="b", set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(main_output(again(**inputs)), ours, atol=1e-6, rtol=1e-6)
    theirs, broken = checked_peft_output(PeftModel.from_pretrained(reference, str(tmp_path)).eval(), inputs)
    if broken:
        pytest.skip(broken)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


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
    theirs, broken = checked_peft_output(PeftModel.from_pretrained(reference, str(tmp_path)).eval(), inputs)
    if broken:
        pytest.skip(broken)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


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


@pytest.mark.parametrize("arch,head", [("bert", "base"), ("llama", "clm")])
@pytest.mark.parametrize(
    "config",
    [
        LoHaConfig(r=4, alpha=8, rank_pattern={"value|v_proj": 2}),
        LoKrConfig(r=2, decompose_both=True, target_modules="all-linear"),
        OFTConfig(oft_block_size=8),
        OFTConfig(r=4, oft_block_size=0, block_share=True, coft=True, eps=1e-2, use_cayley_neumann=False),
        HRAConfig(r=4),
        HRAConfig(r=4, apply_GS=True),
        AdaLoRAConfig(init_r=4, target_r=2, total_step=10),
    ],
    ids=["loha", "lokr-all-linear", "oft", "oft-share-coft-exact", "hra", "hra-gs", "adalora"],
)
def test_saved_weight_transforms_load_in_peft_with_the_same_outputs(tmp_path, arch, head, config):
    from peft import PeftModel

    model, reference = make_model(arch, head), make_model(arch, head)
    adapters.init(model)
    model.add_adapter("a", config=config, set_active=True)
    perturb_adapter(model, "a", scale=0.2)
    model.eval()
    inputs = make_inputs(arch)
    with torch.no_grad():
        ours = main_output(model(**inputs))
    model.save_adapter(str(tmp_path), "a", format="peft")
    again = make_model(arch, head)
    adapters.init(again)
    again.load_adapter(str(tmp_path), load_as="b", set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(main_output(again(**inputs)), ours, atol=1e-6, rtol=1e-6)
    theirs, broken = checked_peft_output(PeftModel.from_pretrained(reference, str(tmp_path)).eval(), inputs)
    if broken:
        pytest.skip(broken)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_adalora_rank_pattern_of_a_peft_checkpoint_shrinks_the_modules(tmp_path):
    """PEFT saves an allocated AdaLoRA with each module cut to its kept triplets (rank_pattern);
    the scaling keeps using init_r."""
    from peft import PeftModel

    model, reference = make_model("bert"), make_model("bert")
    adapters.init(model)
    model.add_adapter("a", config=AdaLoRAConfig(init_r=4, target_r=2, total_step=10, target_modules=["query"]), set_active=True)
    perturb_adapter(model, "a", scale=0.2)
    model.save_adapter(str(tmp_path), "a", format="peft")
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    keep = [True, False, True, False]
    pattern = {}
    for key in list(weights):
        module = key.removeprefix("base_model.model.").rsplit(".", 1)[0]
        pattern[f"{module}.lora_E"] = keep
        index = torch.tensor([0, 2])
        weights[key] = weights[key][:, index] if key.endswith("lora_B") else weights[key][index]
    meta["rank_pattern"] = pattern
    (tmp_path / "adapter_config.json").write_text(json.dumps(meta))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "adapter_model.safetensors"))
    inputs = make_inputs("bert")
    theirs, broken = checked_peft_output(PeftModel.from_pretrained(reference, str(tmp_path)).eval(), inputs)
    again = make_model("bert")
    adapters.init(again)
    again.load_adapter(str(tmp_path), load_as="b", set_active=True)
    assert set(again.adalora_ranks("b").values()) == {2}
    if broken:
        pytest.skip(broken)
    with torch.no_grad():
        torch.testing.assert_close(main_output(again(**inputs)), theirs, atol=1e-5, rtol=1e-5)
