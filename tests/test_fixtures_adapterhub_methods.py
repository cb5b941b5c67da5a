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
from adapters import AdapterPlusConfig, DiReftConfig, DoRAConfig, DvoRAConfig, LoReftConfig, NoReftConfig, Stack, VeraConfig
from adapters import MTLLoRAConfig, MultiTask

from fixture_utils import parse_setup

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "adapterhub")
with open(os.path.join(HERE, "manifest.json")) as _f:
    MANIFEST = json.load(_f)

# our config each case's adapters were written with in AdapterHub (same class names and fields)
OUR_CONFIGS = {
    "adapterplus": AdapterPlusConfig(reduction_factor=8),
    "adapterplus_r16": AdapterPlusConfig(reduction_factor=16, stochastic_depth=0.0),
    "adapterplus_default": AdapterPlusConfig(),
    "vera": VeraConfig(r=4, init_weights_seed=11),
    "vera_q": VeraConfig(r=4, alpha=16, init_weights_seed=12, attn_matrices=["q"]),
    "vera_diagonal": VeraConfig(r=4, init_weights_seed=13, vera_d=1.0, vera_b=1.0, attn_matrices=["q"]),
    "dvora": DvoRAConfig(init_weights_seed=15, attn_matrices=["v"]),
    "dora": DoRAConfig(attn_matrices=["v"]),
    "dora_alpha": DoRAConfig(r=4, alpha=12, attn_matrices=["v"]),
    "loreft": LoReftConfig(r=2, suffix_positions=2),
    "noreft": NoReftConfig(suffix_positions=1),
    "direft": DiReftConfig(r=2, non_linearity="relu"),
    "loreft_tied": LoReftConfig(layers=[1], prefix_positions=2, suffix_positions=2, r=2, tied_weights=True),
    "loreft_seeded": LoReftConfig(r=2, suffix_positions=1, init_weights_seed=7),
    # a case of several adapters with different configs: by adapter name
    "reft_stack": {"a": NoReftConfig(prefix_positions=1, suffix_positions=1), "b": NoReftConfig(r=2)},
    "mtl_lora_shared": MTLLoRAConfig(r=4, alpha=64, n_up_projection=3, weights_sharpness=0.5, attn_matrices=["q"]),
    "mtl_lora_ffn": MTLLoRAConfig(r=2, alpha=32, intermediate_lora=True, output_lora=True, leave_out=[0]),
}
# this file reads BERT and Llama's method cases; tests/test_fixtures_adapterhub_archs.py the standard
# matrix on every architecture
MANIFEST = dict(MANIFEST, cases=[c for c in MANIFEST["cases"] if c["arch"] in ("bert", "llama") and c["case"] in OUR_CONFIGS])
# cases where AdapterHub computes something else than the method's definition; each is pinned by
# its own test against an independent computation (and left out of the reproduction test)
ADAPTERHUB_DEFECTS = {
    # AdapterHub's DoRA rescales the layer's bias with the weight (m/‖W + ΔW‖ ⊙ (x Wᵀ + b + x ΔWᵀ));
    # DoRA rescales the weight only (BERT's projections have biases; Llama's have none)
    # and it normalises by ‖W + B A‖ without the scaling s = alpha/r (DoRA: ‖W + s·B A‖)
    ("bert", "dvora"): "test_adapterhub_dora_rescales_the_bias_and_norms_the_unscaled_update",
    ("bert", "dora"): "test_adapterhub_dora_rescales_the_bias_and_norms_the_unscaled_update",
    ("llama", "dora_alpha"): "test_adapterhub_dora_rescales_the_bias_and_norms_the_unscaled_update",
    # AdapterHub never writes DiReFT's subtract_projection (a class attribute, not a field), so its
    # checkpoint reads as NoReFT, in AdapterHub as here
    ("bert", "direft"): "test_adapterhub_direft_checkpoint_reads_as_noreft",
    ("llama", "direft"): "test_adapterhub_direft_checkpoint_reads_as_noreft",
    # AdapterHub's ReFT runs only the first adapter of any setup: its Stack(a, b) is a alone
    ("bert", "reft_stack"): "test_adapterhub_reft_runs_only_the_first_adapter_of_a_setup",
    ("llama", "reft_stack"): "test_adapterhub_reft_runs_only_the_first_adapter_of_a_setup",
}


def test_the_fixtures_come_from_adapterhub():
    assert MANIFEST["anchor"] == "adapters 1.3.0" and MANIFEST["transformers"] == "4.57.6"
    assert {case["case"] for case in MANIFEST["cases"]} == set(OUR_CONFIGS)


def _setup_of(case):
    """The case's setup (``MultiTask[a, b]`` too, which fixture_utils does not parse)."""
    text = case["setup"]
    if text.startswith("MultiTask["):
        return MultiTask(*(name.strip() for name in text[len("MultiTask["):-1].split(",")))
    return parse_setup(text)


def _load_case(case):
    """``(model with the case's adapters loaded, inputs, AdapterHub's output)``."""
    from transformers import AutoModel

    arch_dir = os.path.join(HERE, case["arch"])
    model = AutoModel.from_pretrained(os.path.join(arch_dir, "base")).eval()
    adapters.init(model)
    for adapter in case["adapters"]:
        assert model.load_adapter(os.path.join(arch_dir, adapter["dir"]), load_as=adapter["name"]) == adapter["name"]
    inputs = load_file(os.path.join(arch_dir, "inputs.safetensors"))
    expected = load_file(os.path.join(arch_dir, case["expected"]))["out"]
    return model, inputs, expected


@pytest.mark.parametrize(
    "case", [c for c in MANIFEST["cases"] if (c["arch"], c["case"]) not in ADAPTERHUB_DEFECTS],
    ids=lambda c: f"{c['arch']}-{c['case']}",
)
def test_adapterhub_checkpoint_reproduces_its_output(case):
    model, inputs, expected = _load_case(case)
    with torch.no_grad():
        base = model(**inputs).last_hidden_state
        model.set_active_adapters(_setup_of(case))
        output = model(**inputs, **case.get("forward", {})).last_hidden_state  # MultiTask: task_ids
    assert case["differs_from_base"] and not torch.allclose(base, expected, atol=1e-3)
    torch.testing.assert_close(output, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=lambda c: f"{c['arch']}-{c['case']}")
def test_adapterhub_config_is_our_config(case):
    """The config AdapterHub saved equals ours field for field (the string id ``"adapterplus"`` is ours)."""
    for adapter in case["adapters"]:
        with open(os.path.join(HERE, case["arch"], adapter["dir"], "adapter_config.json")) as f:
            saved = json.load(f)["config"]
        ours = OUR_CONFIGS[adapter["config"]]
        ours = (ours[adapter["name"]] if isinstance(ours, dict) else ours).to_dict()
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


def _reft_cases(name: str) -> list:
    return [c for c in MANIFEST["cases"] if c["case"] == name]


@pytest.mark.parametrize("case", _reft_cases("direft"), ids=lambda c: c["arch"])
def test_adapterhub_direft_checkpoint_reads_as_noreft(case):
    """AdapterHub keeps ``subtract_projection`` as a class attribute of DiReftConfig, not a field:
    its adapter_config.json lacks it, so the checkpoint reads as ReFT's default (subtract the
    projection: NoReFT), in AdapterHub (``ReftConfig.from_dict``) as here, and does not reproduce
    the output AdapterHub computed before saving. Given the DiReFT config, the same weights do."""
    model, inputs, expected = _load_case(case)
    loaded = model.adapters_config.adapters["a"]
    assert loaded.subtract_projection is True and loaded.orthogonality is False
    with torch.no_grad():
        model.set_active_adapters("a")
        as_saved = model(**inputs).last_hidden_state
    assert not torch.allclose(as_saved, expected, atol=1e-3)
    arch_dir = os.path.join(HERE, case["arch"])
    model.load_adapter(os.path.join(arch_dir, "direft", "a"), config=OUR_CONFIGS["direft"], load_as="d")
    with torch.no_grad():
        model.set_active_adapters("d")
        output = model(**inputs).last_hidden_state
    torch.testing.assert_close(output, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", _reft_cases("reft_stack"), ids=lambda c: c["arch"])
def test_adapterhub_reft_runs_only_the_first_adapter_of_a_setup(case):
    """AdapterHub's ReFT layer applies ``setup.first()`` only: its ``Stack(a, b)`` output is
    ``a``'s alone. Here ``Stack(a, b)`` applies ``b`` after ``a`` (tests/test_reft.py checks it
    against its definition), so it differs from AdapterHub's output, which ``a`` alone reproduces."""
    model, inputs, expected = _load_case(case)
    with torch.no_grad():
        model.set_active_adapters(Stack("a", "b"))
        stacked = model(**inputs).last_hidden_state
        model.set_active_adapters("a")
        first = model(**inputs).last_hidden_state
    assert not torch.allclose(stacked, expected, atol=1e-3)
    torch.testing.assert_close(first, expected, atol=1e-4, rtol=1e-4)


def _case(arch: str, name: str) -> dict:
    return next(c for c in MANIFEST["cases"] if c["arch"] == arch and c["case"] == name)


@pytest.mark.parametrize("arch,name", [("bert", "dvora"), ("bert", "dora"), ("llama", "dora_alpha")])
def test_adapterhub_dora_rescales_the_bias_and_norms_the_unscaled_update(arch, name):
    """AdapterHub's DoRA (and DVoRA) computes ``m/‖W + U‖ ⊙ (x Wᵀ + b + s·x Uᵀ)`` with ``U`` the
    unscaled update (``B A``; VeRA's ``vera_B B vera_D A``) and ``s = alpha/r``: the bias is rescaled
    with the weight, and the norm leaves out ``s``. DoRA (Liu et al., 2024), which this library
    computes, is ``x W'ᵀ + b`` with ``W' = m ⊙ (W + s·U)/‖W + s·U‖``. Written out here from the
    checkpoint's tensors, AdapterHub's formula reproduces its recorded output and DoRA's reproduces
    ours; they differ where the layers have biases (BERT) or ``s ≠ 1``."""
    from transformers import AutoModel

    case = _case(arch, name)
    model, inputs, expected = _load_case(case)
    config = OUR_CONFIGS[name]
    arch_dir = os.path.join(HERE, arch)
    weights = torch.load(os.path.join(arch_dir, name, "a", "pytorch_adapter.bin"), weights_only=True)
    scaling = config.alpha / config.r
    if isinstance(config, DvoRAConfig):  # AdapterHub: seed, then A (r × d_in) and B (d_out × r)
        torch.manual_seed(config.init_weights_seed)
        A = torch.nn.init.kaiming_uniform_(torch.empty(config.r, 32))
        B = torch.nn.init.kaiming_uniform_(torch.empty(32, config.r))

    def with_layers(adapterhub: bool):
        reference = AutoModel.from_pretrained(os.path.join(arch_dir, "base")).eval()
        layers = reference.encoder.layer if arch == "bert" else reference.layers
        with torch.no_grad():
            for i, layer in enumerate(layers):
                value = layer.attention.self.value if arch == "bert" else layer.self_attn.v_proj
                prefix = f"encoder.layer.{i}.attention.self.value" if arch == "bert" else f"layers.{i}.self_attn.v_proj"
                key = f"{prefix}.loras.a."
                if isinstance(config, DvoRAConfig):
                    update = weights[key + "vera_B"] @ B[: value.out_features] @ weights[key + "vera_D"] @ A
                else:
                    update = weights[key + "lora_B"] @ weights[key + "lora_A"]
                magnitude = weights[key + "m.weight"].reshape(-1)
                updated = value.weight + scaling * update
                factor = magnitude / ((value.weight + update) if adapterhub else updated).norm(dim=1)
                value.weight.copy_(factor.unsqueeze(1) * updated)
                if adapterhub and value.bias is not None:
                    value.bias.mul_(factor)
            return reference(**inputs).last_hidden_state

    with torch.no_grad():
        model.set_active_adapters("a")
        ours = model(**inputs).last_hidden_state
    torch.testing.assert_close(with_layers(adapterhub=True), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(with_layers(adapterhub=False), ours, atol=1e-5, rtol=1e-4)
    assert (ours - expected).abs().max() > 1e-3


def test_adapterhub_vera_fails_on_grouped_query_attention_and_ours_runs_there():
    """AdapterHub draws VeRA's projections once, shaped for the first adapted layer (Llama's q, 32
    wide), and fails at the 16-wide v of grouped-query attention; here the projections are sized for
    the largest layer and v uses their top block (its definition is checked in tests/test_vera.py)."""
    (failure,) = [f for f in MANIFEST.get("adapterhub_failures", []) if f["case"] == "vera_gqa"]
    assert failure["arch"] == "llama" and "cannot be multiplied" in failure["error"]
    from transformers import AutoModel

    model = AutoModel.from_pretrained(os.path.join(HERE, "llama", "base")).eval()
    adapters.init(model)
    model.add_adapter("a", config=adapters.AdapterConfig.from_dict(failure["configs"][0]), set_active=True)
    value = model.layers[0].self_attn.v_proj
    assert value.out_features == 16 and value.loras["a"].lora_B.shape == (16, 4)
    with torch.no_grad():
        out = model(**load_file(os.path.join(HERE, "llama", "inputs.safetensors"))).last_hidden_state
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("case", _reft_cases("loreft_seeded"), ids=lambda c: c["arch"])
def test_a_seeded_reft_adapter_starts_where_adapterhubs_does(case):
    """The case keeps AdapterHub's seeded initialisation (not perturbed): adding the same config
    here, without loading anything, builds the same interventions and computes AdapterHub's output."""
    model, inputs, expected = _load_case(case)
    model.delete_adapter("a")
    model.add_adapter("fresh", config=OUR_CONFIGS["loreft_seeded"], set_active=True)
    model.eval()
    with torch.no_grad():
        output = model(**inputs).last_hidden_state
    torch.testing.assert_close(output, expected, atol=1e-4, rtol=1e-4)


def test_dora_checkpoints_use_adapterhubs_magnitude_key_and_earlier_files_still_load(tmp_path):
    """DoRA's magnitude is written as AdapterHub's ``m.weight`` (``d_out × 1``) and read back bit for
    bit; a file written by earlier versions of this library (``lora_magnitude``) still loads."""
    from safetensors.torch import save_file

    from conftest import make_inputs, patched, perturb_adapter

    model = patched("bert")
    model.add_adapter("d", config=DoRAConfig(r=4))
    perturb_adapter(model, "d", scale=0.3)
    model.save_adapter(str(tmp_path / "d"), "d")
    saved = load_file(str(tmp_path / "d" / "adapter.safetensors"))
    key = "encoder.layer.0.attention.self.query.loras.d."
    assert saved[key + "m.weight"].shape == (32, 1) and key + "lora_magnitude" not in saved
    inputs = make_inputs("bert")
    with torch.no_grad():
        model.set_active_adapters("d")
        expected = model(**inputs).last_hidden_state
    for layout in ("adapterhub", "earlier"):
        if layout == "earlier":
            earlier = {k.replace(".m.weight", ".lora_magnitude"): v.reshape(-1) if k.endswith("m.weight") else v for k, v in saved.items()}
            save_file(earlier, str(tmp_path / "d" / "adapter.safetensors"))
        other = patched("bert")
        other.load_adapter(str(tmp_path / "d"), set_active=True)
        with torch.no_grad():
            assert torch.equal(other(**inputs).last_hidden_state, expected)
