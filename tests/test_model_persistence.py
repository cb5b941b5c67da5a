"""Whole models and setups saved and restored as AdapterHub does (issue 23).

``save_pretrained`` -> ``from_pretrained`` (AdapterModels, and transformers' own classes followed
by ``adapters.init``) restores adapters, fusions, heads and the active setup from ``config.json``'s
``"adapters"`` entry; AdapterHub 1.3.0's own saved models (tests/fixtures/adapterhub_models, written
by utils/make_adapterhub_model_fixtures.py) reproduce its outputs, and a model saved here
(``written_here``) gives the output AdapterHub computed on it; ``save_adapter_setup`` /
``load_adapter_setup``; ``loading_info``; fusion heads; the file format switches; and the
registry (``ModelAdaptersConfig``) and block (``to_dict`` / ``from_dict``) forms they rest on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import adapters
from adapters import AdapterSetup, AutoAdapterModel, ModelAdaptersConfig
from adapters.composition import AdapterCompositionBlock, Average, BatchSplit, Fuse, MultiTask, Parallel, Split, Stack
from adapters import BnConfig, LoRAConfig, PrefixTuningConfig
from adapters.errors import AdapterConfigError, AdapterLoadError, CompositionError

from conftest import make_inputs, make_model, perturb_adapter

FIXTURES = Path(__file__).parent / "fixtures" / "adapterhub_models"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


def _bert_config(**changes):
    values = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=64,
                  max_position_embeddings=32, pad_token_id=0)
    values.update(changes)
    return transformers.BertConfig(**values)


def _adapter_state(model) -> dict:
    markers = (".adapters.", ".loras.", "adapter_fusion_layer", "prefix_tuning", "prompt_tuning", "refts", "shared_parameters",
               "invertible_adapters", "heads.")
    return {k: v for k, v in model.state_dict().items() if any(m in k for m in markers)}


def _assert_same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- AdapterHub's saved models ------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(MANIFEST["cases"]))
def test_adapterhub_saved_model_reproduces_its_outputs(case, adapters_log):
    record = MANIFEST["cases"][case]
    folder = str(FIXTURES / case)
    inputs = load_file(str(FIXTURES / "inputs.safetensors"))
    expected = load_file(str(FIXTURES / f"{case}.expected.safetensors"))["logits"]
    if record["load"] == "adapter_model":
        model = AutoAdapterModel.from_pretrained(folder)
    else:
        model = getattr(transformers, record["model_class"]).from_pretrained(folder)
        adapters.init(model)
    model.eval()
    saved = json.loads((FIXTURES / case / "config.json").read_text())["adapters"]
    assert sorted(model.adapters_config.adapters) == sorted(saved["adapters"])
    assert sorted(model.adapters_config.fusions) == sorted(saved["fusions"])
    assert "freshly initialised" not in adapters_log.text  # every adapter's weights came from the checkpoint
    setup = AdapterCompositionBlock.from_dict(record["setup"])
    if record.get("written_by") == "this library":  # saved here (active setup included), AdapterHub's output recorded
        assert model.active_adapters == setup
        model.set_active_adapters(None)
    else:
        assert model.active_adapters is None  # AdapterHub writes no active setup: none is restored
    with torch.no_grad():
        plain = model(**inputs).logits
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapters change the output: the check below can fail
    model.set_active_adapters(setup)
    if "head" in record:
        model.active_head = record["head"]
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_adapterhub_static_head_model_loads_into_an_adapter_model():
    """AutoAdapterModel of a transformers head model's folder (its head becomes "default") restores
    the adapters AdapterHub saved with it, weights included."""
    model, info = AutoAdapterModel.from_pretrained(str(FIXTURES / "static_head"), output_loading_info=True)
    assert type(model).__name__ == "BertAdapterModel" and list(model.heads) == ["default"]
    assert sorted(model.adapters_config.adapters) == ["a", "p"] and not info["missing_keys"]
    record = MANIFEST["cases"]["static_head"]
    model.set_active_adapters(AdapterCompositionBlock.from_dict(record["setup"]))
    with torch.no_grad():
        logits = model(**load_file(str(FIXTURES / "inputs.safetensors"))).logits
    expected = load_file(str(FIXTURES / "static_head.expected.safetensors"))["logits"]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_adapterhub_quickstart_folder_loads_cleanly():
    """AdapterHub's quickstart writes save_pretrained(p) and save_adapter(p, "sst-2") into one
    folder; from_pretrained(p) restores the adapter and its head once (the adapter file beside the
    model is the same adapter)."""
    model = AutoAdapterModel.from_pretrained(str(FIXTURES / "quickstart"))
    assert list(model.adapters_config.adapters) == ["sst-2"] and list(model.heads) == ["sst-2"]
    assert model.active_head == "sst-2"


def test_saved_config_has_adapterhub_layout(tmp_path):
    """Our config.json["adapters"] has the keys and value kinds of the one AdapterHub wrote, and
    AdapterHub's reader (kwargs of ModelAdaptersConfig) gets the same registry from both."""
    theirs = json.loads((FIXTURES / "adapter_model" / "config.json").read_text())["adapters"]
    model = AutoAdapterModel.from_pretrained(str(FIXTURES / "adapter_model"))
    model.save_pretrained(str(tmp_path))
    ours = json.loads((tmp_path / "config.json").read_text())["adapters"]
    assert set(theirs) <= set(ours) and set(ours) - set(theirs) == {"active_setup"}
    assert ours["fusions"] == theirs["fusions"] == {"a,c": "dynamic"}
    assert ours["fusion_name_map"] == theirs["fusion_name_map"]
    for saved in (ours, theirs):
        for name, key in saved["adapters"].items():
            assert isinstance(key, str) and key in saved["config_map"]
    restored_theirs, restored_ours = ModelAdaptersConfig(**theirs), ModelAdaptersConfig(**ours)
    assert restored_theirs.adapters == restored_ours.adapters == model.adapters_config.adapters
    assert restored_theirs.fusions == restored_ours.fusions


# -- our own round trips --------------------------------------------------------------------------------
ROUND_TRIP_METHODS = {
    "seq": "seq_bn", "par": "par_bn", "lora": "lora[r=4]", "dora": "dora[r=4]", "ia3": "ia3", "vera": "vera[r=4]",
    "prefix": "prefix_tuning[prefix_length=3,bottleneck_size=8]", "prompt": "prompt_tuning[prompt_length=3]",
    "compacter": "compacter[reduction_factor=8]", "loreft": "loreft[r=2]", "inv": "seq_bn_inv",
}


def _logits_under(model, inputs, setup):
    # the setup for this call (a forward's adapter_names=... means one adapter per row, PEFT's argument)
    with AdapterSetup(setup):
        return model(**inputs).logits


def test_adapter_model_round_trip_restores_every_method_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    model = adapters.BertAdapterModel(_bert_config())
    for name, config in ROUND_TRIP_METHODS.items():
        model.add_adapter(name, config=config)
        perturb_adapter(model, name, scale=0.2, seed=len(name))
    model.add_adapter("seq2", config="seq_bn[reduction_factor=8]")
    perturb_adapter(model, "seq2", scale=0.2, seed=11)
    model.add_adapter_fusion(Fuse("seq", "seq2"))
    model.add_classification_head("seq", num_labels=3)
    model.add_tagging_head("tags", num_labels=4)
    setup = Stack("inv", "lora", Fuse("seq", "seq2"))
    model.set_active_adapters(setup)
    model.active_head = "seq"
    model.eval()
    inputs = make_inputs("bert")
    inputs["input_ids"] = inputs["input_ids"] % 64
    with torch.no_grad():
        before = {name: _logits_under(model, inputs, name) for name in ROUND_TRIP_METHODS}
        before["setup"] = model(**inputs).logits
    model.save_pretrained(str(tmp_path))
    restored = AutoAdapterModel.from_pretrained(str(tmp_path))
    assert sorted(restored.adapters_config.adapters) == sorted([*ROUND_TRIP_METHODS, "seq2"])
    assert restored.adapters_config.adapters == model.adapters_config.adapters
    assert restored.active_adapters == setup and sorted(restored.heads) == ["seq", "tags"]
    _assert_same_state(_adapter_state(restored), _adapter_state(model))
    restored.active_head = "seq"
    with torch.no_grad():
        assert torch.equal(restored(**inputs).logits, before["setup"])
        for name in ROUND_TRIP_METHODS:
            assert torch.equal(_logits_under(restored, inputs, name), before[name]), name


@pytest.mark.parametrize("arch,head", [("bert", "seq_cls"), ("llama", "clm"), ("t5", "seq2seq")])
def test_transformers_class_round_trip_with_init(arch, head, tmp_path):
    model = make_model(arch, head)
    model_class = type(model)
    adapters.init(model)
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="lora[r=4]")
    for seed, name in enumerate(("a", "b")):
        perturb_adapter(model, name, scale=0.3, seed=seed)
    model.set_active_adapters(Stack("a", "b"))
    inputs = make_inputs(arch)
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(str(tmp_path))
    reloaded = model_class.from_pretrained(str(tmp_path))
    adapters.init(reloaded)
    assert reloaded.active_adapters == Stack("a", "b")
    _assert_same_state(_adapter_state(reloaded), _adapter_state(model))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected, atol=1e-6, rtol=0)


def test_our_quickstart_folder_and_base_folder_with_adapter(tmp_path):
    torch.manual_seed(0)
    model = adapters.BertAdapterModel(_bert_config())
    model.add_adapter("sst-2", config="seq_bn")
    model.add_classification_head("sst-2", num_labels=2)
    perturb_adapter(model, "sst-2", seed=3)
    model.save_pretrained(str(tmp_path / "both"))
    model.save_adapter(str(tmp_path / "both"), "sst-2")
    restored = AutoAdapterModel.from_pretrained(str(tmp_path / "both"))
    assert list(restored.adapters_config.adapters) == ["sst-2"] and list(restored.heads) == ["sst-2"]
    _assert_same_state(_adapter_state(restored), _adapter_state(model))
    # a base model's folder (no adapters in its config) with an adapter saved into it: the adapter loads
    plain = adapters.BertAdapterModel(_bert_config())
    plain.save_pretrained(str(tmp_path / "base"))
    model.save_adapter(str(tmp_path / "base"), "sst-2")
    loaded = AutoAdapterModel.from_pretrained(str(tmp_path / "base"))
    assert list(loaded.adapters_config.adapters) == ["sst-2"] and "sst-2" in loaded.heads
    _assert_same_state(
        {k: v for k, v in _adapter_state(loaded).items() if "sst-2" in k},
        {k: v for k, v in _adapter_state(model).items() if "sst-2" in k},
    )


def test_output_loading_info_reports_no_adapter_key_as_unexpected(tmp_path):
    model = adapters.BertAdapterModel(_bert_config())
    model.add_adapter("a", config="prefix_tuning[prefix_length=2,bottleneck_size=4]")
    model.add_adapter("b", config="lora[r=2]")
    model.save_pretrained(str(tmp_path))
    restored, info = AutoAdapterModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert set(info) >= {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    assert not info["unexpected_keys"] and not info["missing_keys"]
    assert sorted(restored.adapters_config.adapters) == ["a", "b"]


def test_init_with_adapters_config_builds_the_registry_adapters():
    registry = ModelAdaptersConfig()
    registry.add("a", config="lora[r=4]")
    registry.add("b")  # AdapterHub's default config: seq_bn
    registry.add("c", config={"architecture": "prefix_tuning", "prefix_length": 2, "bottleneck_size": 4})
    registry.add("d", config="seq_bn")
    registry.add_fusion("b,d", "static", fusion_name="bd")
    model = make_model("bert", "seq_cls")
    adapters.init(model, adapters_config=registry)
    assert sorted(model.adapters_config.adapters) == ["a", "b", "c", "d"]
    assert model.adapters_config.adapters["b"] == adapters.SeqBnConfig()
    assert model.adapters_config.fusions["bd"][1] == ("b", "d")
    assert model.get_adapter("a") and model.adapters_config.match("c", PrefixTuningConfig) is not None
    # the saved dict form works as well (AdapterHub passes either)
    other = make_model("bert", "seq_cls")
    adapters.init(other, adapters_config=model.adapters_config.to_dict())
    assert other.adapters_config.adapters == model.adapters_config.adapters


def test_model_adapters_config_api():
    registry = ModelAdaptersConfig(**{
        "adapters": {"a": "seq_bn", "b": "h1", "legacy": ["text_task", "pfeiffer"]},
        "config_map": {"h1": {"architecture": "lora", "r": 4, "leave_out": [1]}},
        "fusions": {"a,b": "dynamic"},
        "fusion_name_map": {},
    })
    assert registry.adapters["b"] == LoRAConfig(r=4, leave_out=(1,))
    assert registry.adapters["legacy"] == adapters.SeqBnConfig()  # adapter-transformers 1.x (type, config) pairs
    assert registry.fusions["a,b"][1] == ("a", "b")
    assert registry.match("b", LoRAConfig, layer_idx=0) == registry.adapters["b"]
    assert registry.match("b", LoRAConfig, layer_idx=1) is None  # left out there
    assert registry.match("a", LoRAConfig) is None and registry.match("zzz", LoRAConfig) is None
    assert registry.match("a", BnConfig, location_key="output_adapter") is not None
    assert registry.match("a", BnConfig, location_key="mh_adapter") is None
    mam = ModelAdaptersConfig(adapters={"m": "mam"})
    assert isinstance(mam.match("m", PrefixTuningConfig), PrefixTuningConfig)
    assert ModelAdaptersConfig(**registry.to_dict()).adapters == registry.adapters
    assert len(registry) == 3 and list(registry) == ["a", "b", "legacy"] and "b" in registry
    with pytest.raises(AdapterConfigError, match="registered already"):
        registry.add("a")
    with pytest.raises(AdapterConfigError, match="adapter_names"):
        registry.add_fusion(["a", "nope"])


@pytest.mark.parametrize(
    "saved,message",
    [
        ({"adapters": {"a": "no_such_config"}}, r"\['adapters'\]\['a'\].*not a config id"),
        ({"adapters": {"a": "/etc/passwd"}}, r"never a path"),
        ({"adapters": {"a": "h"}, "config_map": {"h": {"architecture": "lora", "r": -1}}}, r"config_map.*'h'.*r"),
        ({"adapters": {"../x": "seq_bn"}}, r"Invalid adapter name '\.\./x'"),
        ({"adapters": {"a": "seq_bn"}, "fusions": {"a,b": "dynamic"}}, r"fuses \['b'\]"),
        ({"adapters": {"a": "seq_bn"}, "fusions": {"a": 3}}, r"'dynamic', 'static'"),
        ({"adapters": ["a"]}, r"\['adapters'\] is the list"),
    ],
)
def test_corrupt_saved_registry_is_refused_and_leaves_the_model_unchanged(saved, message):
    model = make_model("bert", "seq_cls")
    model.config.adapters = saved
    with pytest.raises(AdapterConfigError, match=message):
        adapters.init(model)
    assert "_adapters_registry" not in model.__dict__ and not hasattr(model, "adapters_config")


def test_saved_active_setup_naming_an_absent_adapter_is_refused(tmp_path):
    model = adapters.BertAdapterModel(_bert_config())
    model.add_adapter("a", config="seq_bn")
    model.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    config["adapters"]["active_setup"] = Stack("a", "ghost").to_dict()
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterLoadError, match=r"active_setup.*ghost"):
        AutoAdapterModel.from_pretrained(str(tmp_path))
    config["adapters"]["active_setup"] = {"type": "Sandwich", "children": [{"type": "single", "children": ["a"]}]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterLoadError, match=r"'Sandwich'.*valid types"):
        AutoAdapterModel.from_pretrained(str(tmp_path))


def test_checkpoint_tensors_that_do_not_fit_are_refused(tmp_path):
    from safetensors.torch import save_file

    model = make_model("bert", "seq_cls")
    adapters.init(model)
    model.add_adapter("a", config="seq_bn")
    model.save_pretrained(str(tmp_path))
    state = load_file(str(tmp_path / "model.safetensors"))
    key = next(k for k in state if ".adapters.a.adapter_up.weight" in k)
    state[key] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    reloaded = type(make_model("bert", "seq_cls")).from_pretrained(str(tmp_path))
    with pytest.raises(AdapterLoadError, match=r"model\.safetensors.*shape \(3, 3\)"):
        adapters.init(reloaded)
    assert not reloaded.adapters_config.adapters  # nothing half-restored


# -- setups ---------------------------------------------------------------------------------------------
def test_save_and_load_adapter_setup_round_trip(tmp_path):
    torch.manual_seed(0)
    model = adapters.BertAdapterModel(_bert_config())
    for name in ("lang", "a", "b"):
        model.add_adapter(name, config="seq_bn")
        perturb_adapter(model, name, seed=len(name))
    model.add_adapter_fusion(Fuse("a", "b"))
    model.add_classification_head("a", num_labels=2)
    model.add_classification_head("b", num_labels=3)
    setup = Stack("lang", Fuse("a", "b"))
    model.save_adapter_setup(str(tmp_path), setup, head_setup="b")
    assert sorted(os.listdir(tmp_path)) == ["a", "a,b", "adapter_setup.json", "b", "lang"]
    saved = json.loads((tmp_path / "adapter_setup.json").read_text())
    assert saved["adapter_setup"] == setup.to_dict() and saved["head_setup"] == "b"
    fresh = adapters.BertAdapterModel(_bert_config())
    loaded_setup, head_setup = fresh.load_adapter_setup(str(tmp_path), set_active=True)
    assert loaded_setup == setup and head_setup == "b"
    assert fresh.active_adapters == setup and fresh.active_head == "b"
    _assert_same_state(_adapter_state(fresh), _adapter_state(model))


def test_adapter_setup_errors_leave_everything_unchanged(tmp_path):
    model = adapters.BertAdapterModel(_bert_config())
    model.add_adapter("a", config="seq_bn")
    with pytest.raises(AdapterConfigError, match="ghost"):
        model.save_adapter_setup(str(tmp_path / "s"), Stack("a", "ghost"))
    with pytest.raises(AdapterConfigError, match=r"head_setup names \['nohead'\]"):
        model.save_adapter_setup(str(tmp_path / "s"), "a", head_setup="nohead")
    assert not (tmp_path / "s").exists()
    model.add_adapter("b", config="seq_bn")
    model.save_adapter_setup(str(tmp_path / "s"), Stack("a", "b"))
    os.remove(tmp_path / "s" / "b" / "adapter_config.json")
    fresh = adapters.BertAdapterModel(_bert_config())
    with pytest.raises(AdapterLoadError, match="adapter_config.json is missing"):
        fresh.load_adapter_setup(str(tmp_path / "s"))
    assert not fresh.adapters_config.adapters  # "a" was loaded, then removed again


# -- loading switches ------------------------------------------------------------------------------------
def test_load_adapter_fills_loading_info(tmp_path):
    model = make_model("bert", "seq_cls")
    adapters.init(model)
    model.add_adapter("a", config="seq_bn")
    model.save_adapter(str(tmp_path), "a")
    info = {"missing_keys": ["earlier"]}
    model.load_adapter(str(tmp_path), load_as="b", loading_info=info)
    assert info == {"missing_keys": ["earlier"], "unexpected_keys": []}
    model.load_adapter(str(tmp_path), load_as="c", leave_out=[0], loading_info=info)
    assert info["unexpected_keys"] and all("layer.0." in k for k in info["unexpected_keys"])


def test_load_adapter_with_head_false_skips_the_head(tmp_path):
    model = adapters.BertAdapterModel(_bert_config())
    model.add_adapter("a", config="seq_bn")
    model.add_classification_head("a", num_labels=2)
    model.save_adapter(str(tmp_path), "a")
    fresh = adapters.BertAdapterModel(_bert_config())
    fresh.load_adapter(str(tmp_path), with_head=False)
    assert "a" in fresh.adapters_config.adapters and "a" not in fresh.heads


def test_fusion_with_head_and_file_formats(tmp_path):
    model = adapters.BertAdapterModel(_bert_config())
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter_fusion(Fuse("a", "b"))
    model.add_classification_head("fused", num_labels=2)
    with pytest.raises(AdapterConfigError, match="no head named 'a,b'"):
        model.save_adapter_fusion(str(tmp_path / "f"), Fuse("a", "b"), with_head=True)
    model.save_adapter_fusion(str(tmp_path / "f"), Fuse("a", "b"), with_head="fused", use_safetensors=False)
    assert sorted(os.listdir(tmp_path / "f")) == [
        "adapter_fusion_config.json", "head_config.json", "pytorch_model_adapter_fusion.bin", "pytorch_model_head.bin",
    ]
    model.save_adapter_fusion(str(tmp_path / "f"), "a,b")  # safetensors: the stale .bin of the fusion goes
    assert "pytorch_model_adapter_fusion.bin" not in os.listdir(tmp_path / "f")
    assert "model_adapter_fusion.safetensors" in os.listdir(tmp_path / "f")
    fresh = adapters.BertAdapterModel(_bert_config())
    for name in ("a", "b"):
        fresh.add_adapter(name, config="seq_bn")
    fresh.load_adapter_fusion(str(tmp_path / "f"), use_safetensors=True)
    assert "fused" in fresh.heads and "a,b" in fresh.adapters_config.fusions
    fresh.delete_adapter_fusion("a,b")
    fresh.load_adapter_fusion(str(tmp_path / "f"), with_head=False, load_as="x")
    assert "x" in fresh.adapters_config.fusions


def test_save_adapter_format_switch_removes_the_stale_file(tmp_path):
    model = make_model("bert", "seq_cls")
    adapters.init(model)
    model.add_adapter("a", config="seq_bn")
    model.save_adapter(str(tmp_path), "a", use_safetensors=False)
    assert "pytorch_adapter.bin" in os.listdir(tmp_path) and "adapter.safetensors" not in os.listdir(tmp_path)
    model.save_adapter(str(tmp_path), "a")
    assert "adapter.safetensors" in os.listdir(tmp_path) and "pytorch_adapter.bin" not in os.listdir(tmp_path)
    model.save_adapter(str(tmp_path), "a", use_safetensors=False)
    assert "pytorch_adapter.bin" in os.listdir(tmp_path) and "adapter.safetensors" not in os.listdir(tmp_path)


# -- behaviour alignments ----------------------------------------------------------------------------------
def test_get_adapter_of_unknown_or_deleted_name_is_empty():
    model = make_model("bert", "base")
    adapters.init(model)
    assert model.get_adapter("never") == {}
    model.add_adapter("a", config="seq_bn")
    assert set(model.get_adapter("a")) == {0, 1}
    model.delete_adapter("a")
    assert model.get_adapter("a") == {}


def test_blocks_to_dict_from_dict_and_flatten():
    setups = [
        Stack("a", Fuse("b", "c", name="f")),
        Parallel("a", Stack("b", "c")),
        Split("a", "b", splits=[2, 3]),
        BatchSplit("a", Average("b", "c", weights=[1, 3]), batch_sizes=[1, 2]),
        MultiTask("a", "b"),
    ]
    for setup in setups:
        data = json.loads(json.dumps(setup.to_dict()))
        assert AdapterCompositionBlock.from_dict(data) == setup
    assert Stack("a", "b").to_dict() == {
        "type": "Stack", "children": [{"type": "single", "children": ["a"]}, {"type": "single", "children": ["b"]}],
    }
    assert Split("a", "b", splits=4).to_dict()["kwargs"] == {"splits": [4, 4]}
    assert Stack("a", Parallel("b", Stack("a", "c"))).flatten() == {"a", "b", "c"}
    for bad, message in [
        ({"type": "Stack"}, "a saved setup has the form"),
        ({"type": "os.system", "children": [{"type": "single", "children": ["a"]}]}, "valid types"),
        ({"type": "Split", "children": [{"type": "single", "children": ["a"]}], "kwargs": {"evil": 1}}, "Split takes splits"),
        ({"type": "Stack", "children": [{"type": "single", "children": [1]}]}, "single adapter is saved as"),
    ]:
        with pytest.raises(CompositionError, match=message):
            AdapterCompositionBlock.from_dict(bad)


def test_loading_an_existing_name_replaces_it_unless_overwrite_ok_is_false(tmp_path, adapters_log):
    model = make_model("bert", "seq_cls")
    adapters.init(model)
    model.add_adapter("a", config="seq_bn")
    perturb_adapter(model, "a", seed=5)
    model.save_adapter(str(tmp_path), "a")
    saved = {k: v.clone() for k, v in _adapter_state(model).items()}
    perturb_adapter(model, "a", seed=6)  # the model's "a" now differs from the saved one
    with pytest.raises(AdapterLoadError, match="exists already"):
        model.load_adapter(str(tmp_path), overwrite_ok=False)
    assert not all(torch.equal(v, saved[k]) for k, v in _adapter_state(model).items())
    model.load_adapter(str(tmp_path))  # AdapterHub's default: the loaded adapter replaces it
    assert "Replacing the existing adapter 'a'" in adapters_log.text
    _assert_same_state(_adapter_state(model), saved)


def test_fusion_configs_have_adapterhubs_config_members():
    assert adapters.AdapterFusionConfig.architecture is None
    config = adapters.AdapterFusionConfig.from_dict({"temperature": True, "value": False})
    assert config.temperature and not config.value
    with pytest.raises(AdapterConfigError, match="did you mean 'temperature'"):
        adapters.AdapterFusionConfig.from_dict({"temprature": True})


def test_checkpoint_without_an_adapters_tensors_warns_and_keeps_fresh_weights(tmp_path, adapters_log):
    from safetensors.torch import save_file

    model = make_model("bert", "seq_cls")
    adapters.init(model)
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="lora[r=2]")
    perturb_adapter(model, "a")
    model.save_pretrained(str(tmp_path))
    state = load_file(str(tmp_path / "model.safetensors"))
    save_file({k: v for k, v in state.items() if ".adapters.a." not in k}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    reloaded = type(make_model("bert", "seq_cls")).from_pretrained(str(tmp_path))
    adapters.init(reloaded)
    assert "adapter 'a' from the saved config with freshly initialised weights" in adapters_log.text
    assert "adapter 'b'" not in adapters_log.text
    up = next(k for k in _adapter_state(reloaded) if ".adapters.a.adapter_up.weight" in k)
    assert not torch.equal(_adapter_state(reloaded)[up], _adapter_state(model)[up])  # fresh, not the perturbed weights
    b_keys = [k for k in _adapter_state(model) if ".loras.b." in k]
    _assert_same_state({k: _adapter_state(reloaded)[k] for k in b_keys}, {k: _adapter_state(model)[k] for k in b_keys})


def test_a_config_subclass_with_an_extra_field_is_added_saved_and_loaded(tmp_path, adapters_log):
    """As in AdapterHub: a user subclass of a config class (a frozen dataclass here) works in
    add_adapter and is saved with its extra field; loading reads it as the base class, without
    the field (AdapterHub drops it too), and the weights load."""
    import dataclasses

    @dataclasses.dataclass(frozen=True, eq=False)
    class NotedBnConfig(BnConfig):
        note: str = "mine"

    config = NotedBnConfig(mh_adapter=False, output_adapter=True, reduction_factor=8, non_linearity="relu")
    model = make_model("bert", "seq_cls")
    adapters.init(model)
    model.add_adapter("s", config=config)
    assert model.adapters_config.adapters["s"] is config
    perturb_adapter(model, "s")
    model.save_adapter(str(tmp_path), "s")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["config"]["note"] == "mine"
    model.load_adapter(str(tmp_path), load_as="copy")
    assert type(model.adapters_config.adapters["copy"]) is BnConfig and "ignoring 'note'" in adapters_log.text
    inputs = make_inputs("bert")
    with torch.no_grad():
        torch.testing.assert_close(_logits_under(model, inputs, "copy"), _logits_under(model, inputs, "s"), atol=0, rtol=0)


def test_sharded_checkpoints_are_read_and_shard_names_are_never_paths(tmp_path):
    model = make_model("bert", "seq_cls")
    adapters.init(model)
    model.add_adapter("a", config="lora[r=2]")
    perturb_adapter(model, "a")
    model.save_pretrained(str(tmp_path), max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model_class = type(make_model("bert", "seq_cls"))
    reloaded = model_class.from_pretrained(str(tmp_path))
    adapters.init(reloaded)
    _assert_same_state(_adapter_state(reloaded), _adapter_state(model))
    reloaded = model_class.from_pretrained(str(tmp_path))
    key = next(k for k in index["weight_map"] if ".loras.a." in k)
    index["weight_map"][key] = "../elsewhere.safetensors"  # then the index is tampered with
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(AdapterLoadError, match=r"file names beside the index, not '\.\./elsewhere"):
        adapters.init(reloaded)
    assert not reloaded.adapters_config.adapters


def test_config_adapters_is_written_for_the_save_only(tmp_path):
    """As AdapterHub: ``config.adapters`` exists while save_pretrained writes it; the restored
    model's registry takes over from the loaded entry, so a merged model saves no adapters."""
    model = make_model("bert", "seq_cls")
    adapters.init(model)
    model.add_adapter("a", config="lora[r=2]")
    model.save_pretrained(str(tmp_path / "with"))
    assert not hasattr(model.config, "adapters")
    reloaded = type(make_model("bert", "seq_cls")).from_pretrained(str(tmp_path / "with"))
    adapters.init(reloaded)
    assert not hasattr(reloaded.config, "adapters") and list(reloaded.adapters_config.adapters) == ["a"]
    plain = reloaded.merge_and_unload()
    plain.save_pretrained(str(tmp_path / "merged"))
    assert "adapters" not in json.loads((tmp_path / "merged" / "config.json").read_text())


def test_fusion_head_takes_load_as_and_is_activated_only_with_set_active(tmp_path):
    torch.manual_seed(0)
    model = adapters.BertAdapterModel(_bert_config())
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter_fusion(Fuse("a", "b"))
    model.add_classification_head("ab", num_labels=2)
    model.save_adapter_fusion(str(tmp_path / "f"), "a,b", with_head="ab")
    fresh = adapters.BertAdapterModel(_bert_config())
    for name in ("a", "b"):
        fresh.add_adapter(name, config="seq_bn")
    fresh.add_classification_head("ab", num_labels=5)  # the user's own head of the saved name
    fresh.add_classification_head("mine", num_labels=3)
    before = {k: v.clone() for k, v in fresh.heads["ab"].state_dict().items()}
    fresh.load_adapter_fusion(str(tmp_path / "f"), load_as="ab2")
    assert "ab2" in fresh.adapters_config.fusions and "ab2" in fresh.heads
    _assert_same_state({k: v for k, v in fresh.heads["ab"].state_dict().items()}, before)  # untouched
    _assert_same_state(fresh.heads["ab2"].state_dict(), model.heads["ab"].state_dict())
    assert fresh.active_head == "mine"  # set_active=False activates nothing
    fresh.load_adapter_fusion(str(tmp_path / "f"), load_as="ab3", set_active=True)
    assert fresh.active_head == "ab3"


def test_save_pretrained_keeps_an_adapters_entry_the_config_had(tmp_path):
    model = make_model("bert", "seq_cls")
    adapters.init(model)
    model.add_adapter("a", config="lora[r=2]")
    model.config.adapters = {"kept": True}  # the user's own value
    model.save_pretrained(str(tmp_path))
    assert model.config.adapters == {"kept": True}
    assert list(json.loads((tmp_path / "config.json").read_text())["adapters"]["adapters"]) == ["a"]


def test_load_adapter_setup_refuses_names_the_model_has_and_rolls_back_completely(tmp_path):
    torch.manual_seed(0)
    model = adapters.BertAdapterModel(_bert_config())
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
        model.add_classification_head(name, num_labels=2)
        perturb_adapter(model, name, seed=len(name) + 4)
    model.save_adapter_setup(str(tmp_path / "s"), Stack("a", "b"), head_setup="b")
    # the user's own adapter "a" and head "b": refused before anything is loaded, both kept
    user = adapters.BertAdapterModel(_bert_config())
    user.add_adapter("a", config="lora[r=2]")
    user.add_classification_head("b", num_labels=4)
    user.add_classification_head("mine", num_labels=3)
    state = {k: v.clone() for k, v in user.state_dict().items()}
    with pytest.raises(AdapterLoadError, match=r"\['a', 'b'\].*has already"):
        user.load_adapter_setup(str(tmp_path / "s"), set_active=True)
    _assert_same_state(user.state_dict(), state)
    assert list(user.adapters_config.adapters) == ["a"] and sorted(user.heads) == ["b", "mine"]
    assert user.active_head == "mine"
    # a part that fails after "a" (and its head, which became active) was loaded: all undone
    os.remove(tmp_path / "s" / "b" / "adapter_config.json")
    fresh = adapters.BertAdapterModel(_bert_config())
    fresh.add_classification_head("mine", num_labels=3)
    fresh.add_classification_head("other", num_labels=3)  # a head the setup does not save: kept
    with pytest.raises(AdapterLoadError, match="adapter_config.json is missing"):
        fresh.load_adapter_setup(str(tmp_path / "s"))
    assert not fresh.adapters_config.adapters and sorted(fresh.heads) == ["mine", "other"]
    assert fresh.active_head == "other"


def test_load_adapter_setup_failure_restores_a_static_head(tmp_path):
    model = make_model("bert", "seq_cls")
    adapters.init(model)
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    with torch.no_grad():
        for parameter in model._static_head_parameters().values():
            parameter.add_(1.0)
    model.save_adapter_setup(str(tmp_path), Stack("a", "b"), head_setup=True)
    os.remove(tmp_path / "b" / "adapter_config.json")
    fresh = make_model("bert", "seq_cls")
    adapters.init(fresh)
    before = {k: v.clone() for k, v in fresh._static_head_parameters().items()}
    with pytest.raises(AdapterLoadError, match="adapter_config.json is missing"):
        fresh.load_adapter_setup(str(tmp_path))
    _assert_same_state(dict(fresh._static_head_parameters()), before)
    assert not fresh.adapters_config.adapters


def test_a_checkpoint_in_a_subfolder_restores_its_adapters_or_warns(tmp_path, adapters_log):
    model = make_model("bert", "seq_cls")
    adapters.init(model)
    model.add_adapter("a", config="lora[r=2]")
    perturb_adapter(model, "a", seed=5)
    model.save_pretrained(str(tmp_path / "sub"))
    # AutoAdapterModel takes subfolder= and finds the weights there (static head converted to "default")
    restored = AutoAdapterModel.from_pretrained(str(tmp_path), subfolder="sub")
    keys = [k for k in _adapter_state(model) if ".loras.a." in k]
    assert keys
    _assert_same_state({k: _adapter_state(restored)[k] for k in keys}, {k: _adapter_state(model)[k] for k in keys})
    assert "freshly initialised" not in adapters_log.text
    # adapters.init does not see transformers' subfolder=: fresh weights, with a warning that says so
    plain = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path), subfolder="sub")
    adapters.init(plain)
    assert "no model weights file was found" in adapters_log.text and "['a']" in adapters_log.text
    assert list(plain.adapters_config.adapters) == ["a"]
    # an AdapterModel's own checkpoint in a subfolder (its config is read from the subfolder too)
    flexible = adapters.BertAdapterModel(_bert_config())
    flexible.add_adapter("b", config="seq_bn")
    perturb_adapter(flexible, "b", seed=6)
    flexible.save_pretrained(str(tmp_path / "flex"))
    back = AutoAdapterModel.from_pretrained(str(tmp_path), subfolder="flex")
    _assert_same_state(_adapter_state(back), _adapter_state(flexible))


@pytest.mark.parametrize("peft_installed", [True, False])
def test_an_adapter_saved_beside_a_base_model_loads_with_or_without_peft(tmp_path, monkeypatch, peft_installed):
    import transformers.integrations.peft as transformers_peft

    if not peft_installed:  # transformers' PEFT hook then never sees adapter_config.json
        monkeypatch.setattr(transformers_peft, "is_peft_available", lambda: False)
    torch.manual_seed(0)
    model = adapters.BertAdapterModel(_bert_config())
    model.add_adapter("a", config="seq_bn")
    model.add_classification_head("a", num_labels=2)
    perturb_adapter(model, "a", seed=9)
    adapters.BertAdapterModel(_bert_config()).save_pretrained(str(tmp_path / "sub"))
    model.save_adapter(str(tmp_path / "sub"), "a")
    if peft_installed:  # (transformers' PEFT hook itself cannot read a subfolder holding a whole model)
        loaded = AutoAdapterModel.from_pretrained(str(tmp_path / "sub"))
    else:
        loaded = AutoAdapterModel.from_pretrained(str(tmp_path), subfolder="sub")
    assert list(loaded.adapters_config.adapters) == ["a"] and "a" in loaded.heads  # loaded once, not twice
    _assert_same_state(
        {k: v for k, v in _adapter_state(loaded).items() if ".a." in k or "heads.a." in k},
        {k: v for k, v in _adapter_state(model).items() if ".a." in k or "heads.a." in k},
    )


def test_load_adapter_with_a_load_config_argument_loads_outside_from_pretrained(tmp_path):
    model = adapters.BertAdapterModel(_bert_config())
    model.add_adapter("a", config="seq_bn")
    model.save_adapter(str(tmp_path), "a")
    assert model.load_adapter(str(tmp_path), load_as="x", load_config=None) == "x"  # not swallowed
    assert sorted(model.adapters_config.adapters) == ["a", "x"]


def test_a_torch_bin_checkpoint_is_loaded_once_for_all_its_adapters(tmp_path, monkeypatch):
    from adapters.loading import _ModelCheckpoint

    model = make_model("bert", "seq_cls")
    adapters.init(model)
    for index, name in enumerate(("a", "b", "c")):
        model.add_adapter(name, config="seq_bn" if name != "b" else "lora[r=2]")
        perturb_adapter(model, name, seed=index)
    model.save_pretrained(str(tmp_path))
    torch.save(load_file(str(tmp_path / "model.safetensors")), str(tmp_path / "pytorch_model.bin"))
    os.remove(tmp_path / "model.safetensors")
    reloaded = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path))
    reads = []
    original = _ModelCheckpoint._torch_file
    monkeypatch.setattr(_ModelCheckpoint, "_torch_file", staticmethod(lambda path: reads.append(path) or original(path)))
    adapters.init(reloaded)
    assert reads == [str(tmp_path / "pytorch_model.bin")]  # once, not once per adapter
    _assert_same_state(_adapter_state(reloaded), _adapter_state(model))
