"""Finite or refused, and nothing half-applied (issue 20, cases 2 and 8).

* ``merge_adapter``, ``merge_and_unload``, ``reset_adapter`` / ``unmerge_adapter`` and the
  combinations (``add_weighted_adapter``, ``average_adapter``) check every value they would write
  before writing any: a non-finite result, a weight that is not floating point, and a merge that
  ``reset_adapter`` could not undo (an (IA)³ entry or DoRA magnitude of (nearly) 0, whose unmerge
  divides by it) raise :class:`~adapters.errors.AdapterMergeError` naming the adapter, the module
  and the parameter, and every weight stays bit for bit as it was.
* Deleting the last adapter of a method takes out everything adding it installed (hosts,
  containers, class swaps, hooks, the attention wrapper): add then delete leaves the model as
  ``conftest.model_state`` recorded it, for every method family. A failing ``add_adapter`` (or a
  failing load, which deletes what ``add_adapter`` built) leaves it unchanged too.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from adapters import (
    AdaLoRAConfig,
    AdaptionPromptConfig,
    CompacterConfig,
    DoubleSeqBnConfig,
    Fuse,
    HRAConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoRAConfig,
    MAMConfig,
    OFTConfig,
    ParBnConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    SeqBnConfig,
    SeqBnInvConfig,
    UniPELTConfig,
)
from adapters.errors import AdapterConfigError, AdapterLoadError, AdapterMergeError
from conftest import assert_unchanged, make_inputs, model_state, patched, perturb_adapter, run


def lora_hosts(model, name):
    return [h for h in model._adapter_hosts if h.method == "lora" and name in h.loras]


def path_of(model, module) -> str:
    return next(p for p, m in model.base_model.named_modules() if m is module)


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_bits(model, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value) or (
            value.is_floating_point() and torch.allclose(after[key], value, rtol=0, atol=0, equal_nan=True)
        ), key


# -- finite or refused: merging ----------------------------------------------------------------------


def test_ia3_with_a_zero_entry_is_not_merged_where_reset_could_not_restore_the_weight():
    model = patched("bert")
    model.add_adapter("a", config=IA3Config())
    perturb_adapter(model, "a", scale=0.2)
    host = lora_hosts(model, "a")[1]
    with torch.no_grad():
        host.loras["a"].lora_B[3, 0] = 0.0
    before = model_state(model)
    with pytest.raises(AdapterMergeError) as error:
        model.merge_adapter("a")
    message = str(error.value)
    assert "adapter 'a'" in message and f"module {path_of(model, host)!r}" in message
    assert "scaling vector" in message and "reset_adapter" in message and "merge_and_unload" in message  # why, and the valid form
    assert_unchanged(model, before)  # no layer was merged, not even the ones before the bad one
    assert not any(h.merged for h in lora_hosts(model, "a"))


def test_ia3_merge_then_reset_restores_the_weights_when_the_entries_are_small_but_divisible():
    model = patched("bert")
    model.add_adapter("a", config=IA3Config())
    perturb_adapter(model, "a", scale=0.2)
    with torch.no_grad():
        lora_hosts(model, "a")[0].loras["a"].lora_B[3, 0] = 1e-20  # products stay normal float32 numbers
    before = weights(model)
    model.merge_adapter("a")
    model.reset_adapter()
    for key, value in model.state_dict().items():
        assert torch.isfinite(value).all() if value.is_floating_point() else True, key
        assert torch.allclose(value, before[key], rtol=1e-5, atol=1e-7), key


def test_ia3_subnormal_entry_is_refused_and_zero_entries_merge_into_merge_and_unload():
    model = patched("bert")
    model.add_adapter("a", config=IA3Config(), set_active=True)
    perturb_adapter(model, "a", scale=0.2)
    with torch.no_grad():
        lora_hosts(model, "a")[0].loras["a"].lora_B[0, 0] = 1e-44  # w · 1e-44 underflows to a subnormal or 0
        lora_hosts(model, "a")[2].loras["a"].lora_B[5, 0] = 0.0
    before = model_state(model)
    with pytest.raises(AdapterMergeError, match="would become 0"):
        model.merge_adapter("a")
    assert_unchanged(model, before)
    inputs = make_inputs("bert")
    expected = run(model, inputs)
    plain = model.merge_and_unload()  # no unmerge follows: a zero scaling is a valid merge here
    assert torch.allclose(run(plain, inputs), expected, atol=1e-5)


def test_a_nan_lora_is_refused_by_merge_adapter_and_merge_and_unload():
    model = patched("bert")
    model.add_adapter("a", config=LoRAConfig(r=4), set_active=True)
    perturb_adapter(model, "a")
    host = lora_hosts(model, "a")[-1]
    with torch.no_grad():
        host.loras["a"].lora_B[0, 0] = float("nan")
    before = model_state(model)
    with pytest.raises(AdapterMergeError) as error:
        model.merge_adapter("a")
    message = str(error.value)
    assert f"adapter 'a' into module {path_of(model, host)!r}" in message
    assert "weight would hold NaN/inf" in message and "lora_B holds NaN/inf" in message
    assert_unchanged(model, before)
    with pytest.raises(AdapterMergeError, match="NaN/inf"):
        model.merge_and_unload()  # safe_merge is no longer needed for the check
    assert_unchanged(model, before)


def test_an_overflowing_merge_is_refused():
    model = patched("bert")
    model.add_adapter("a", config=LoRAConfig(r=4))
    with torch.no_grad():
        lora = lora_hosts(model, "a")[0].loras["a"]
        lora.lora_A.fill_(1e19)
        lora.lora_B.fill_(1e19)
    before = model_state(model)
    with pytest.raises(AdapterMergeError, match="overflows torch.float32"):
        model.merge_adapter("a")
    assert_unchanged(model, before)


def test_dora_with_a_zero_magnitude_row_is_refused():
    model = patched("bert")
    model.add_adapter("a", config=LoRAConfig(r=4, use_dora=True))
    perturb_adapter(model, "a")
    with torch.no_grad():
        lora_hosts(model, "a")[0].loras["a"].lora_magnitude[2] = 0.0
    before = model_state(model)
    with pytest.raises(AdapterMergeError, match="DoRA magnitude is \\(nearly\\) 0"):
        model.merge_adapter("a")
    assert_unchanged(model, before)


def test_merging_into_an_integer_weight_is_refused():
    model = patched("bert")
    model.add_adapter("a", config=LoRAConfig(r=4))
    perturb_adapter(model, "a")
    host = lora_hosts(model, "a")[0]
    host.weight = nn.Parameter(torch.zeros(host.weight.shape, dtype=torch.int8), requires_grad=False)
    before = model_state(model)
    with pytest.raises(AdapterMergeError, match="torch.int8 \\(quantized or integer\\).*keep the adapter unmerged"):
        model.merge_adapter("a")
    assert_unchanged(model, before)


@pytest.mark.parametrize("change", ["nan", "ia3_zero"])
def test_reset_that_would_write_nan_is_refused_and_writes_nothing(change):
    model = patched("bert")
    model.add_adapter("a", config=IA3Config() if change == "ia3_zero" else LoRAConfig(r=4))
    perturb_adapter(model, "a", scale=0.2)
    model.merge_adapter("a")
    hosts = lora_hosts(model, "a")
    with torch.no_grad():  # changed after the merge: the unmerge cannot be exact any more
        hosts[-1].loras["a"].lora_B[0, 0] = float("nan") if change == "nan" else 0.0
    before = model_state(model)
    with pytest.raises(AdapterMergeError) as error:
        model.reset_adapter()
    message = str(error.value)
    assert f"unmerge adapter 'a' out of module {path_of(model, hosts[-1])!r}" in message and "NaN/inf" in message
    assert_unchanged(model, before)  # the other layers stay merged too
    assert all(h.merged == ["a"] for h in hosts)
    with pytest.raises(AdapterMergeError):  # deleting it would unmerge it: refused the same way
        model.delete_adapter("a")
    assert_unchanged(model, before)


def test_modules_to_save_copy_with_nan_is_refused_by_merge_and_unload():
    model = patched("bert", "seq_cls")
    model.add_adapter("a", config=LoRAConfig(r=4, modules_to_save=["classifier"]), set_active=True)
    with torch.no_grad():
        model.classifier.modules_to_save["a"].weight[0, 0] = float("inf")
    before = model_state(model)
    with pytest.raises(AdapterMergeError, match="adapter 'a' into module 'classifier'.*NaN/inf in weight"):
        model.merge_and_unload()
    assert_unchanged(model, before)


# -- finite or refused: combinations -----------------------------------------------------------------


def nan_pair(config=None):
    model = patched("bert")
    for name in ("a", "b"):
        model.add_adapter(name, config=config or LoRAConfig(r=4))
        perturb_adapter(model, name)
    with torch.no_grad():
        lora_hosts(model, "b")[1].loras["b"].lora_A[0, 0] = float("nan")
    return model


@pytest.mark.parametrize("combination_type", ["cat", "svd", "linear", "ties_svd"])
def test_add_weighted_adapter_refuses_a_non_finite_combination(combination_type):
    model = nan_pair()
    before = model_state(model)
    density = 0.5 if combination_type == "ties_svd" else None
    with pytest.raises(AdapterMergeError) as error:
        model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "ab", combination_type=combination_type, density=density)
    message = str(error.value)
    assert "add_weighted_adapter" in message and "['a', 'b']" in message and "NaN/inf" in message
    assert path_of(model, lora_hosts(model, "b")[1]) in message
    assert_unchanged(model, before)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "0.5"])
def test_add_weighted_adapter_refuses_weights_that_are_not_finite_numbers(bad):
    model = patched("bert")
    for name in ("a", "b"):
        model.add_adapter(name, config=LoRAConfig(r=4))
    before = model_state(model)
    with pytest.raises(AdapterConfigError, match="weights=.*finite number"):
        model.add_weighted_adapter(["a", "b"], [0.5, bad], "ab", combination_type="cat")
    with pytest.raises(AdapterConfigError, match="weights=.*finite number"):
        model.average_adapter("ab", ["a", "b"], weights=[0.5, bad])
    assert_unchanged(model, before)


@pytest.mark.parametrize("strategy", ["linear", "lora_delta_w_svd"])
def test_average_adapter_refuses_a_non_finite_average_and_keeps_the_adapter_it_would_replace(strategy):
    model = nan_pair()
    model.add_adapter("avg", config=LoRAConfig(r=4))
    perturb_adapter(model, "avg")
    before = model_state(model)
    svd_rank = 4 if strategy == "lora_delta_w_svd" else None
    with pytest.raises(AdapterMergeError, match="NaN/inf"):
        model.average_adapter("avg", ["a", "b"], combine_strategy=strategy, svd_rank=svd_rank, overwrite_ok=True)
    assert_unchanged(model, before)


def test_a_merged_combination_is_checked_like_any_adapter():
    model = patched("bert")
    for name in ("a", "b"):
        model.add_adapter(name, config=IA3Config())
        perturb_adapter(model, name, scale=0.2)
    host = lora_hosts(model, "a")[0]
    with torch.no_grad():  # l_diff = 0.5 · l_a + 0.5 · l_b is 0 there
        host.loras["a"].lora_B[0, 0], host.loras["b"].lora_B[0, 0] = 0.5, -0.5
    model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "mean", combination_type="linear")
    assert host.loras["mean"].lora_B[0, 0] == 0
    before = model_state(model)
    with pytest.raises(AdapterMergeError, match=f"adapter 'mean' into module {path_of(model, host)!r}.*would become 0"):
        model.merge_adapter("mean")
    assert_unchanged(model, before)


# -- nothing half-applied: add then delete -------------------------------------------------------------

METHODS = {
    "seq_bn": SeqBnConfig(),
    "double_seq_bn": DoubleSeqBnConfig(),
    "par_bn": ParBnConfig(),
    "compacter": CompacterConfig(reduction_factor=2),
    "seq_bn_inv": SeqBnInvConfig(),
    "lora": LoRAConfig(),
    "dora": LoRAConfig(use_dora=True),
    "ia3": IA3Config(),
    "loha": LoHaConfig(),
    "lokr": LoKrConfig(),
    "oft": OFTConfig(),
    "hra": HRAConfig(),
    "adalora": AdaLoRAConfig(),
    "prefix_tuning": PrefixTuningConfig(),
    "prefix_gated": PrefixTuningConfig(use_gating=True),
    "prompt_tuning": PromptTuningConfig(),
    "adaption_prompt": AdaptionPromptConfig(adapter_len=4),
    "modules_to_save": LoRAConfig(modules_to_save=["classifier"]),
    "mam": MAMConfig(),
    "unipelt": UniPELTConfig(),
}
ARCHS = [("bert", "seq_cls"), ("gpt2", "clm"), ("t5", "seq2seq")]
# combinations that do not apply: T5 refuses Llama-Adapter (tested elsewhere); only the BERT
# classifier model has the "classifier" module that the modules_to_save config names
NOT_APPLICABLE = {("t5", "adaption_prompt"), ("gpt2", "modules_to_save"), ("t5", "modules_to_save")}
ARCH_METHODS = [(arch, head, method) for arch, head in ARCHS for method in sorted(METHODS) if (arch, method) not in NOT_APPLICABLE]


@pytest.mark.parametrize("arch, head, method", ARCH_METHODS)
def test_add_then_delete_leaves_the_model_as_it_was(arch, head, method):
    model = patched(arch, head)
    inputs = make_inputs(arch)
    expected = run(model, inputs)
    before = model_state(model)
    hosts = list(model._adapter_hosts)
    model.add_adapter("x", config=METHODS[method])
    perturb_adapter(model, "x")
    model.set_active_adapters("x")
    run(model, inputs)
    model.delete_adapter("x")
    assert_unchanged(model, before)
    assert len(model._adapter_hosts) == len(hosts) and all(a is b for a, b in zip(model._adapter_hosts, hosts))
    assert torch.equal(run(model, inputs), expected)


@pytest.mark.parametrize("method", ["lora", "ia3", "prefix_tuning", "prompt_tuning", "seq_bn_inv", "modules_to_save", "adaption_prompt"])
def test_deleting_one_of_two_adapters_keeps_what_the_other_needs(method):
    model = patched("bert", "seq_cls")
    inputs = make_inputs("bert")
    before = model_state(model)
    model.add_adapter("x", config=METHODS[method])
    perturb_adapter(model, "x")
    with_x = model_state(model)
    expected = run(model, inputs, setup="x")
    model.add_adapter("y", config=METHODS[method])
    model.delete_adapter("y")
    assert_unchanged(model, with_x)
    assert torch.equal(run(model, inputs, setup="x"), expected)
    model.delete_adapter("x")
    assert_unchanged(model, before)


def test_merged_adapter_deleted_leaves_the_model_as_it_was():
    model = patched("bert")
    before = model_state(model)
    model.add_adapter("x", config=LoRAConfig(r=4))
    perturb_adapter(model, "x", scale=0.1)
    model.merge_adapter("x")
    model.delete_adapter("x")  # unmerges first, then removes the hosts
    after = model_state(model)
    assert after["modules"] == before["modules"] and after["hooks"] == before["hooks"]
    for key, value in before["tensors"].items():
        assert torch.allclose(after["tensors"][key], value, atol=1e-6), key


def test_fusion_add_then_delete_leaves_the_model_as_it_was():
    model = patched("bert")
    before = model_state(model)
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    with_adapters = model_state(model)
    model.add_adapter_fusion(Fuse("a", "b"), set_active=True)
    model.delete_adapter_fusion("a,b")
    with_adapters["active"] = (None, None)
    assert_unchanged(model, with_adapters)
    model.add_adapter_fusion(Fuse("a", "b"))
    model.delete_adapter("a")  # deletes the fusion that uses it
    model.delete_adapter("b")
    assert_unchanged(model, before)


def test_replacing_a_fusion_that_fails_to_build_keeps_the_old_one(monkeypatch):
    from adapters.methods.bottleneck import BottleneckLayer

    model = patched("bert")
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter_fusion(Fuse("a", "b"))
    before = model_state(model)
    calls = []
    original = BottleneckLayer.add_fusion_layer

    def failing(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BottleneckLayer, "add_fusion_layer", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        model.add_adapter_fusion(Fuse("a", "b"), config="static", overwrite_ok=True)
    assert_unchanged(model, before)


# -- nothing half-applied: failing add_adapter / load_adapter -----------------------------------------


@pytest.mark.parametrize("config", [LoRAConfig(modules_to_save=["nope"]), IA3Config(modules_to_save=["nope"]), LoHaConfig(modules_to_save=["nope"])], ids=["lora", "ia3", "loha"])
def test_add_adapter_with_modules_to_save_matching_nothing_leaves_no_trace(config):
    model = patched("bert")
    before = model_state(model)
    with pytest.raises(ValueError, match="modules_to_save=\\['nope'\\] matches no module.*Closest module names"):
        model.add_adapter("x", config=config)
    assert_unchanged(model, before)
    assert not any(h.method == "lora" for h in model._adapter_hosts)


def test_replacing_an_adapter_with_a_failing_config_keeps_the_old_one():
    model = patched("bert")
    model.add_adapter("x", config=LoRAConfig(r=4), set_active=True)
    perturb_adapter(model, "x")
    before = model_state(model)
    with pytest.raises(ValueError, match="modules_to_save"):
        model.add_adapter("x", config=IA3Config(modules_to_save=["nope"]), overwrite_ok=True)
    assert_unchanged(model, before)
    model.add_adapter("x", config=IA3Config(), overwrite_ok=True)  # a good replacement still works
    assert model.adapters_config.adapters["x"] == IA3Config()
    assert all("x" in h.loras and h.loras["x"].composition_mode == "scale" for h in lora_hosts(model, "x"))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_failure_at_the_end_of_add_adapter_leaves_no_trace(method, monkeypatch):
    """Everything was created when the failure comes (out of memory, an interrupt): all of it goes."""
    model = patched("bert", "seq_cls")
    before = model_state(model)
    create = type(model)._create_adapter_modules

    def create_then_fail(self, name, config, *args, **kwargs):
        create(self, name, config, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(type(model), "_create_adapter_modules", create_then_fail)
    with pytest.raises(KeyboardInterrupt):
        model.add_adapter("x", config=METHODS[method])
    assert_unchanged(model, before)


def save_bottleneck(tmp_path):
    source = patched("bert")
    source.add_adapter("a", config="seq_bn")
    folder = os.path.join(tmp_path, "a")
    source.save_adapter(folder, "a")
    return folder


def test_loading_bottleneck_weights_under_a_lora_config_leaves_no_trace(tmp_path):
    folder = save_bottleneck(tmp_path)
    path = os.path.join(folder, "adapter_config.json")
    with open(path) as file:
        meta = json.load(file)
    meta["config"] = LoRAConfig().to_dict()
    with open(path, "w") as file:
        json.dump(meta, file)
    model = patched("bert")
    before = model_state(model)
    with pytest.raises(AdapterLoadError, match="adapter.safetensors"):
        model.load_adapter(folder)
    assert_unchanged(model, before)


def test_loading_lora_weights_under_a_peft_ia3_config_leaves_no_trace(tmp_path):
    source = patched("bert")
    source.add_adapter("a", config=LoRAConfig(target_modules=["query", "value"]))
    folder = os.path.join(tmp_path, "peft")
    source.save_adapter(folder, "a", format="peft")
    path = os.path.join(folder, "adapter_config.json")
    with open(path) as file:
        meta = json.load(file)
    ia3 = {"peft_type": "IA3", "task_type": meta.get("task_type"), "target_modules": ["query", "value"],
           "feedforward_modules": [], "fan_in_fan_out": False, "init_ia3_weights": True}
    with open(path, "w") as file:
        json.dump(ia3, file)
    model = patched("bert")
    before = model_state(model)
    with pytest.raises(AdapterLoadError, match="adapter_model.safetensors"):
        model.load_adapter(folder)
    assert_unchanged(model, before)


def test_modules_to_save_on_an_attention_keeps_its_own_layer_idx_through_add_and_delete():
    """A transformers attention has a ``layer_idx`` of its own (its KV-cache slot): the copy keeps
    it, and deleting the adapter gives it back to the module."""
    model = patched("llama", "clm")
    inputs = make_inputs("llama")
    expected = run(model, inputs)
    before = model_state(model)
    config = IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"], modules_to_save=["layers.1.self_attn"])
    model.add_adapter("x", config=config, set_active=True)
    assert model.model.layers[1].self_attn.modules_to_save["x"].layer_idx == 1
    run(model, inputs)
    model.delete_adapter("x")
    assert_unchanged(model, before)
    assert model.model.layers[1].self_attn.layer_idx == 1
    assert torch.equal(run(model, inputs), expected)
