"""Saving and loading: bit-identical round trips, Compacter's shared parameters, bad checkpoints."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import ARCHS, LIGHT_ARCHS, cls_head, main_output, make_inputs, make_model, patched, perturb_adapter

import adapters
from adapters import AdapterLoadError, Fuse




def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        dict(model.adapters_config.adapters),
        dict(model.adapters_config.fusions),
        model.active_adapters,
    )


def assert_unchanged(model, before):
    state, configs, fusions, active = before
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) for k in state)
    assert model.adapters_config.adapters == configs and model.adapters_config.fusions == fusions
    assert model.active_adapters == active


_ROUND_TRIPS = [(c, s) for c in ("double_seq_bn", "scaled_par_bn", "compacter") for s in (True, False)]


@pytest.mark.parametrize(
    "arch,config,use_safetensors",
    # the latest architectures: both positions in safetensors, Compacter's shared tensors in the legacy file
    [(a, c, s) for a in ARCHS for c, s in _ROUND_TRIPS if a not in LIGHT_ARCHS or (c, s) in _ROUND_TRIPS[::5]],
)
def test_save_load_round_trip_is_bit_identical(tmp_path, arch, config, use_safetensors):
    model = patched(arch, cls_head(arch))
    config = adapters.AdapterConfig.load(config, **({"reduction_factor": 4} if config == "compacter" else {}))
    model.add_adapter("a", config=config, set_active=True)
    perturb_adapter(model, "a")  # includes Compacter's shared phm_rule
    inputs = make_inputs(arch)
    with torch.no_grad():
        expected = main_output(model(**inputs))
    model.save_adapter(str(tmp_path / "a"), "a", use_safetensors=use_safetensors)
    weights = "adapter.safetensors" if use_safetensors else "pytorch_adapter.bin"
    # a transformers head model saves its static head beside the adapter (with_head=True), as AdapterHub does
    head = ["head_config.json", "model_head.safetensors" if use_safetensors else "pytorch_model_head.bin"]
    assert sorted(os.listdir(tmp_path / "a")) == sorted(["adapter_config.json", weights, *(head if cls_head(arch) != "base" else [])])

    fresh = patched(arch, cls_head(arch))
    with torch.no_grad():
        fresh.load_state_dict({k: v for k, v in model.state_dict().items() if ".adapters." not in k and "shared_parameters" not in k}, strict=False)
    name = fresh.load_adapter(str(tmp_path / "a"), set_active=True)
    assert name == "a"
    for (k1, v1), (k2, v2) in zip(sorted(model.state_dict().items()), sorted(fresh.state_dict().items())):
        assert k1 == k2 and torch.equal(v1, v2), k1
    with torch.no_grad():
        assert torch.equal(main_output(fresh(**inputs)), expected)


def test_compacter_shared_parameters_are_saved_and_restored(tmp_path):
    model = patched()
    model.add_adapter("c", config=adapters.CompacterPlusPlusConfig(reduction_factor=4))
    with torch.no_grad():
        model.base_model.shared_parameters["c"]["phm_rule"].mul_(7.0).add_(1.0)
    model.save_adapter(str(tmp_path), "c")
    from safetensors.torch import load_file

    assert "shared_parameters.c.phm_rule" in load_file(str(tmp_path / "adapter.safetensors"))
    fresh = patched()
    fresh.load_adapter(str(tmp_path), load_as="d")
    assert torch.equal(fresh.base_model.shared_parameters["d"]["phm_rule"], model.base_model.shared_parameters["c"]["phm_rule"])


def test_save_from_head_model_loads_into_bare_model_and_back(tmp_path):
    head_model = patched("bert", "seq_cls")
    head_model.add_adapter("a", set_active=True)
    perturb_adapter(head_model, "a")
    head_model.save_adapter(str(tmp_path), "a")
    bare = patched("bert")
    bare.load_state_dict(head_model.base_model.state_dict(), strict=False)
    bare.load_adapter(str(tmp_path), set_active=True)
    inputs = make_inputs("bert")
    with torch.no_grad():
        torch.testing.assert_close(bare(**inputs).last_hidden_state, head_model.base_model(**inputs).last_hidden_state)


def test_fusion_round_trip_and_save_all(tmp_path):
    model = patched("llama")
    for name in "ab":
        model.add_adapter(name)
        perturb_adapter(model, name)
    model.add_adapter_fusion(Fuse("a", "b"), set_active=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adapter_fusion_layer" in name:
                param.add_(torch.randn_like(param) * 0.1)
    inputs = make_inputs("llama")
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state
    model.save_all_adapters(str(tmp_path / "adapters"))
    model.save_all_adapter_fusions(str(tmp_path / "fusions"))
    assert sorted(os.listdir(tmp_path / "adapters")) == ["a", "b"]
    assert os.listdir(tmp_path / "fusions") == ["a,b"]
    fresh = patched("llama")
    for name in "ab":
        fresh.load_adapter(str(tmp_path / "adapters" / name))
    assert fresh.load_adapter_fusion(str(tmp_path / "fusions" / "a,b"), set_active=True) == "a,b"
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).last_hidden_state, expected)


def test_load_as_and_leave_out(tmp_path):
    model = patched()
    model.add_adapter("a", config="double_seq_bn")
    model.save_adapter(str(tmp_path), "a")
    model.load_adapter(str(tmp_path), load_as="b", leave_out=[0])
    assert set(model.get_adapter("b")) == {1}
    assert model.adapters_config.adapters["b"].leave_out == (0,)


# -- bad checkpoints -------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    model = patched()
    model.add_adapter("a", config="seq_bn")
    model.save_adapter(str(tmp_path / "a"), "a")
    target = patched()
    target.add_adapter("existing")
    target.set_active_adapters("existing")
    return tmp_path / "a", target


def _expect_error(target, folder, match, **kwargs):
    before = snapshot(target)
    with pytest.raises(AdapterLoadError, match=match):
        target.load_adapter(str(folder), **kwargs)
    assert_unchanged(target, before)


def test_missing_config_file(saved):
    folder, target = saved
    os.remove(folder / "adapter_config.json")
    _expect_error(target, folder, r"adapter_config.json is missing")


def test_missing_weights_file(saved):
    folder, target = saved
    os.remove(folder / "adapter.safetensors")
    _expect_error(target, folder, r"has no weights file: expected adapter.safetensors or pytorch_adapter.bin")


def test_other_hidden_size(saved, tmp_path):
    folder, target = saved
    big = make_model("bert")
    big.config.hidden_size = 32
    from transformers import BertConfig, BertModel

    other = BertModel(BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99))
    adapters.init(other)
    other.add_adapter("a")
    other.save_adapter(str(tmp_path / "wide"), "a")
    _expect_error(target, tmp_path / "wide", r"hidden size 48 but this model has hidden size 32")


def test_config_of_another_method(saved):
    folder, target = saved
    meta = json.loads((folder / "adapter_config.json").read_text())
    meta["config"] = {"architecture": "no_such_method", "r": 8}
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    _expect_error(target, folder, r"adapter config is invalid .*Unknown adapter architecture 'no_such_method'")


def test_config_that_does_not_match_the_weights(saved):
    folder, target = saved
    meta = json.loads((folder / "adapter_config.json").read_text())
    meta["config"]["reduction_factor"] = 2  # bottleneck 16 instead of 2
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    _expect_error(target, folder, r"adapters\.a\.adapter_\w+\.weight has shape \((2, 32|32, 2)\) but the model expects \((16, 32|32, 16)\)")


def test_corrupt_and_truncated_weights(saved):
    folder, target = saved
    data = (folder / "adapter.safetensors").read_bytes()
    (folder / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    _expect_error(target, folder, r"adapter.safetensors could not be read .*corrupt or truncated")
    (folder / "adapter.safetensors").write_bytes(b"\x00" * 64)
    _expect_error(target, folder, r"corrupt or truncated")


def test_corrupt_legacy_bin_is_read_safely(saved):
    folder, target = saved
    os.remove(folder / "adapter.safetensors")
    # a pickle that would run code under torch.load(weights_only=False)
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "pytorch_adapter.bin").write_bytes(pickle.dumps(Evil()))
    _expect_error(target, folder, r"pytorch_adapter.bin could not be read")


def test_unknown_and_missing_keys(saved):
    folder, target = saved
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "adapter.safetensors"))
    extra = dict(state, **{"encoder.layer.0.output.adapters.a.surprise": torch.zeros(3)})
    save_file(extra, str(folder / "adapter.safetensors"))
    _expect_error(target, folder, r"holds 1 weight\(s\) this adapter does not have.*surprise")
    missing = {k: v for k, v in state.items() if "layer.1." not in k}
    save_file(missing, str(folder / "adapter.safetensors"))
    _expect_error(target, folder, r"lacks 4 weight\(s\) the adapter needs")


def test_name_clash_and_bad_path(saved, tmp_path):
    folder, target = saved
    _expect_error(target, folder, r"exists already", load_as="existing", overwrite_ok=False)
    _expect_error(target, tmp_path / "does-not-exist", r"not a local folder and could not be downloaded")
    (tmp_path / "file.txt").write_text("x")
    _expect_error(target, tmp_path / "file.txt", r"is a file")


def test_overwrite_ok_replaces_atomically(saved):
    folder, target = saved
    target.load_adapter(str(folder), load_as="existing", overwrite_ok=True)
    assert "existing" in target.adapters_config.adapters and "__loading__existing" not in target.adapters_config.adapters


def test_fusion_of_missing_adapters_is_rejected(tmp_path):
    model = patched()
    for name in "ab":
        model.add_adapter(name)
    model.add_adapter_fusion("a,b")
    model.save_adapter_fusion(str(tmp_path), "a,b")
    target = patched()
    target.add_adapter("a")
    before = snapshot(target)
    with pytest.raises(AdapterLoadError, match=r"fuses adapters \['b'\] that the model does not have"):
        target.load_adapter_fusion(str(tmp_path))
    assert_unchanged(target, before)


@pytest.mark.parametrize("path,kwargs", [("qa/squad1@ukp", {}), ("sentiment/sst-2@ukp", {}), ("AdapterHub/x", {"source": "ah"})])
def test_adapterhub_index_ids_are_refused_with_what_to_use_instead(path, kwargs):
    from conftest import patched

    model = patched("bert")
    with pytest.raises(adapters.AdapterLoadError, match=r"AdapterHub's archived adapter index.*Hugging Face Hub repo"):
        model.load_adapter(path, **kwargs)
    assert not model.adapters_config.adapters
