"""GPT-2: bottleneck adapters and the LoRA family on transformers' ``Conv1D`` (weight stored
``(in, out)``) and on the fused ``c_attn`` projection, whose q / k / v thirds AdapterHub-style
placement adapts separately.

Every check is against a definition: zero-initialised adapters are the identity; a sliced LoRA on
``c_attn`` changes exactly its parts' columns by ``s·x A_iᵀ B_iᵀ``; composed setups equal merged
weights or single adapters; merged equals unmerged; round trips and generation are exact; PEFT
reads what we write.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import HIDDEN, LAYERS, assert_generate_is_greedy_decoding, checked_peft_output, main_output, make_inputs, make_model, patched, perturb_adapter, run

import adapters
from adapters import Average, BatchSplit, DoRAConfig, IA3Config, LoRAConfig, Parallel, Split, Stack
from adapters.context import ForwardContext
from adapters.hooks.engine import prune_setup

D = HIDDEN  # size of each of q, k, v in c_attn's output
ALL_PLACES = dict(attn_matrices=["q", "k", "v", "o"], intermediate_lora=True, output_lora=True)






def with_adapters(configs: dict, head="base", scale=0.3):
    model = patched("gpt2", head)
    for i, (name, config) in enumerate(configs.items()):
        model.add_adapter(name, config=config)
        perturb_adapter(model, name, scale=scale, seed=11 * i)
    return model


def c_attn(model, layer=0):
    return model.base_model.h[layer].attn.c_attn


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


def perturb_named(module, marker: str, scale: float = 0.3) -> None:
    """Add noise to the parameters whose name contains ``marker`` (a PEFT model's adapter weights)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if marker in name:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


# -- placement --------------------------------------------------------------------------------------
def test_adapterhub_placement_on_gpt2():
    model = patched("gpt2")
    model.add_adapter("qv", config=LoRAConfig(r=4))  # attn_matrices q, v
    model.add_adapter("all", config=LoRAConfig(r=2, **ALL_PLACES))
    model.add_adapter("ia3", config=IA3Config())  # k, v and the FFN input projection
    host = c_attn(model)
    assert type(host).__name__ == "Conv1DWithAdapters" and (host.in_features, host.out_features) == (D, 3 * D)
    qv = host.loras["qv"]
    assert qv.out_slices == ((0, D), (2 * D, 3 * D)) and qv.groups == 2
    assert qv.lora_A.shape == (2 * 4, D) and qv.lora_B.shape == (2 * D, 4)  # AdapterHub's LoRAMergedLinear shapes
    assert host.loras["all"].out_slices == ((0, D), (D, 2 * D), (2 * D, 3 * D))
    assert host.loras["ia3"].out_slices == ((D, 2 * D), (2 * D, 3 * D)) and host.loras["ia3"].lora_B.shape == (2 * D, 1)
    assert set(model.get_adapter("all")[0]) == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    assert set(model.get_adapter("ia3")[1]) == {"attn.c_attn", "mlp.c_fc"}
    assert model.base_model.h[0].mlp.c_fc.loras["all"].lora_B.shape == (64, 2)
    keys = [k for k in model.state_dict() if ".loras.qv." in k]
    assert "h.0.attn.c_attn.loras.qv.lora_A" in keys and not any("out_index" in k for k in keys)


def test_peft_style_targeting_covers_whole_conv1d_modules():
    model = patched("gpt2", "clm")
    model.add_adapter("fused", config=LoRAConfig(r=4, target_modules=["c_attn"]))
    lora = c_attn(model).loras["fused"]
    assert lora.out_slices is None and lora.lora_B.shape == (3 * D, 4)
    model.add_adapter("every", config=LoRAConfig(r=2, target_modules="all-linear"))
    assert all(len(model.get_adapter("every")[i]) == 4 for i in range(LAYERS))  # never lm_head
    model.add_adapter("proj", config=LoRAConfig(r=2, target_modules=["c_proj"], layers_to_transform=[1]))
    assert set(model.get_adapter("proj")) == {1} and set(model.get_adapter("proj")[1]) == {"attn.c_proj", "mlp.c_proj"}


# -- identity ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["base", "seq_cls", "clm"])
@pytest.mark.parametrize(
    "config",
    [
        LoRAConfig(r=4),
        LoRAConfig(r=4, init_weights="gaussian", **ALL_PLACES),
        LoRAConfig(r=4, target_modules="all-linear"),
        DoRAConfig(r=4, **ALL_PLACES),
        DoRAConfig(r=4, target_modules=["c_attn", "c_fc"]),
        IA3Config(),
        IA3Config(target_modules=["c_attn", "c_fc", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"]),
    ],
    ids=["lora-qv", "lora-all-places", "lora-all-linear", "dora-all-places", "dora-peft", "ia3", "ia3-feedforward"],
)
def test_initialised_lora_family_is_the_identity(head, config):
    model = patched("gpt2", head)
    inputs = make_inputs("gpt2")
    base = run(model, inputs)
    model.add_adapter("a", config=config, set_active=True)
    close(run(model, inputs), base, 1e-6)
    perturb_adapter(model, "a")
    assert (run(model, inputs) - base).abs().max() > 1e-3


@pytest.mark.parametrize("config", ["seq_bn", "double_seq_bn", "par_bn", "compacter"])
def test_initialised_bottleneck_is_the_identity(config):
    model = patched("gpt2", "clm")
    inputs = make_inputs("gpt2")
    base = run(model, inputs)
    overrides = {"reduction_factor": 4} if config == "compacter" else {}
    model.add_adapter("a", config=adapters.AdapterConfig.load(config, init_weights="mam_adapter", **overrides), set_active=True)
    close(run(model, inputs), base, 2e-6)


# -- the sliced delta on c_attn, by definition ------------------------------------------------------
def _c_attn_io(model, setup):
    """Input and output of layer 0's c_attn under ``setup``."""
    seen = {}
    handle = c_attn(model).register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    try:
        run(model, make_inputs("gpt2"), setup)
    finally:
        handle.remove()
    return seen["x"], seen["y"]


def test_sliced_lora_changes_only_its_parts_by_their_own_update():
    model = with_adapters({"qv": LoRAConfig(r=4, alpha=8)})
    host, lora = c_attn(model), c_attn(model).loras["qv"]
    x, y = _c_attn_io(model, "qv")
    plain = x @ host.weight + host.bias  # Conv1D: x W + b
    close(y[..., D : 2 * D], plain[..., D : 2 * D], 1e-6)  # k untouched
    for i, (start, stop) in enumerate(lora.out_slices):  # part i: + s · x A_iᵀ B_iᵀ
        A_i, B_i = lora.lora_A[4 * i : 4 * (i + 1)], lora.lora_B[D * i : D * (i + 1)]
        close(y[..., start:stop], plain[..., start:stop] + lora.scaling * (x @ A_i.t() @ B_i.t()))


def test_sliced_lora_equals_its_dense_whole_module_form():
    # the q/v adapter == a rank-2r LoRA on the whole c_attn whose B is B_i block-placed (dense_factors)
    model = with_adapters({"qv": LoRAConfig(r=4, alpha=8)})
    model.add_adapter("dense", config=LoRAConfig(r=8, alpha=16, target_modules=["attn.c_attn"]))
    with torch.no_grad():
        for layer in range(LAYERS):
            sliced, dense = c_attn(model, layer).loras["qv"], c_attn(model, layer).loras["dense"]
            A, B = sliced.dense_factors()
            dense.lora_A.copy_(A)
            dense.lora_B.copy_(B)
            full = torch.zeros(3 * D, D)
            full[sliced.out_index] = sliced.delta_weight()
            close(dense.delta_weight(), full, 1e-6)
    inputs = make_inputs("gpt2")
    close(run(model, inputs, "dense"), run(model, inputs, "qv"))


# -- composition vs definitions ---------------------------------------------------------------------
LORA_SETUPS = {
    "qv+ffn": LoRAConfig(r=4, attn_matrices=["q", "v"], intermediate_lora=True, output_lora=True),
    "all-places": LoRAConfig(r=4, **ALL_PLACES),
    "peft": LoRAConfig(r=4, target_modules=["c_attn", "c_proj", "c_fc"]),
}


@pytest.mark.parametrize("config", list(LORA_SETUPS.values()), ids=list(LORA_SETUPS))
def test_lora_stack_equals_both_merged(config):
    model = with_adapters({"a": config, "b": config})
    inputs = make_inputs("gpt2")
    stacked = run(model, inputs, Stack("a", "b"))
    close(run(model, inputs, Stack("b", "a")), stacked)
    model.merge_adapter("a")
    model.merge_adapter("b")
    close(run(model, inputs), stacked, 1e-4)


def test_adapters_on_different_parts_of_c_attn_compose():
    model = with_adapters(
        {
            "q": LoRAConfig(r=2, attn_matrices=["q"]),
            "kv": LoRAConfig(r=3, attn_matrices=["k", "v"]),
            "whole": LoRAConfig(r=2, target_modules=["c_attn"]),
            "ia3": IA3Config(attn_matrices=["v"], intermediate_lora=False),
        }
    )
    assert c_attn(model).loras["q"].out_slices == ((0, D),) and c_attn(model).loras["ia3"].out_slices == ((2 * D, 3 * D),)
    inputs = make_inputs("gpt2")
    stacked = run(model, inputs, Stack("q", "kv", "whole"))
    for name in ("q", "kv", "whole"):
        model.merge_adapter(name)
    close(run(model, inputs), stacked, 1e-4)
    model.reset_adapter()
    # (IA)³ after LoRA scales the LoRA-updated v columns: merged in the same order
    stacked = run(model, inputs, Stack("kv", "ia3"))
    model.merge_adapter("kv")
    model.merge_adapter("ia3")
    close(run(model, inputs), stacked, 1e-4)


@pytest.mark.parametrize("config", [LORA_SETUPS["qv+ffn"], DoRAConfig(r=4, **ALL_PLACES), IA3Config()], ids=["lora", "dora", "ia3"])
def test_lora_parallel_and_batchsplit_rows_equal_each_adapter_alone(config):
    model = with_adapters({"a": config, "b": config}, head="seq_cls")
    inputs = make_inputs("gpt2", batch=3)
    alone = {n: run(model, inputs, n) for n in "ab"}
    close(run(model, inputs, Parallel("a", "b")), torch.cat([alone["a"], alone["b"]]))
    close(run(model, inputs, BatchSplit("a", "b", batch_sizes=[1, 2])), torch.cat([alone["a"][:1], alone["b"][1:]]))


def _rank_concat(lora_c, parts, weights):
    """Set ``lora_c`` (rank Σ r_i) to Σ_i w_i ΔW_i, part by part of c_attn: A_c = [A_i], B_c = [w_i s_i/s_c B_i]."""
    for group_c, *groups in zip(lora_c.group_views(), *(p.group_views() for p in parts)):
        group_c.lora_A.copy_(torch.cat([g.lora_A for g in groups]))
        group_c.lora_B.copy_(torch.cat([w * g.lora_B * (g.scaling / group_c.scaling) for g, w in zip(groups, weights)], dim=1))


def test_lora_average_is_the_weighted_mean_of_the_deltas():
    config = LoRAConfig(r=4, attn_matrices=["q", "v"], intermediate_lora=True)
    model = with_adapters({"a": config, "b": config})
    model.add_adapter("c", config=config.replace(r=8))
    weights = [0.25, 0.75]
    with torch.no_grad():
        for host in model._adapter_hosts:
            if host.method == "lora":
                _rank_concat(host.loras["c"], [host.loras["a"], host.loras["b"]], weights)
                expected = weights[0] * host.loras["a"].delta_weight() + weights[1] * host.loras["b"].delta_weight()
                close(host.loras["c"].delta_weight(), expected, 1e-6)
    inputs = make_inputs("gpt2")
    close(run(model, inputs, Average("a", "b", weights=weights)), run(model, inputs, "c"))


def test_lora_split_routes_sequence_segments():
    config = LoRAConfig(selfattn_lora=False, output_lora=True, leave_out=list(range(LAYERS - 1)))
    model = with_adapters({"a": config, "b": config})
    inputs = make_inputs("gpt2")
    out = run(model, inputs, Split("a", "b", splits=[4, 8]))
    close(out[:, :4], run(model, inputs, "a")[:, :4])
    close(out[:, 4:], run(model, inputs, "b")[:, 4:])


@pytest.mark.parametrize("head", ["base", "seq_cls", "clm"])
@pytest.mark.parametrize("config", ["double_seq_bn", "par_bn"])
def test_bottleneck_parallel_and_batchsplit_rows_equal_each_adapter_alone(head, config):
    model = with_adapters({"a": config, "b": config}, head=head, scale=0.5)
    inputs = make_inputs("gpt2", batch=3)
    alone = {n: run(model, inputs, n) for n in "ab"}
    parallel = run(model, inputs, Parallel("a", "b"))
    assert parallel.shape[0] == 6
    close(parallel, torch.cat([alone["a"], alone["b"]]))
    close(run(model, inputs, BatchSplit("a", "b", batch_sizes=[2, 1])), torch.cat([alone["a"][:2], alone["b"][2:]]))


def test_parallel_sequence_classification_picks_each_rows_last_token():
    model = with_adapters({"a": "seq_bn", "b": "seq_bn"}, head="seq_cls", scale=0.5)
    inputs = make_inputs("gpt2", batch=2)
    inputs["input_ids"][1, -3:] = model.config.pad_token_id  # row 1: last real token at position 8
    alone = {n: run(model, inputs, n) for n in "ab"}
    close(run(model, inputs, Parallel("a", "b")), torch.cat([alone["a"], alone["b"]]))


def _host_output(model, host, setup, hidden, residual):
    setup = adapters.parse_composition(setup)
    with ForwardContext(model, setup).activate(), torch.no_grad():
        pruned = prune_setup(setup, host.adapter_names())
        return host.bottleneck_layer_forward(pruned, hidden, residual, None, residual_added_by_model=True)


@pytest.mark.parametrize("config", ["seq_bn", "double_seq_bn", "par_bn"])
def test_bottleneck_stack_and_average_in_a_pre_ln_block(config):
    model = with_adapters({"a": config, "b": config}, scale=0.5)
    generator = torch.Generator().manual_seed(0)
    h, x = torch.randn(2, 5, D, generator=generator), torch.randn(2, 5, D, generator=generator)
    hosts = [layer.attention_adapters for layer in model.base_model.h] + [layer.output_adapters for layer in model.base_model.h]
    hosts = [host for host in hosts if "a" in host.adapters]
    assert len(hosts) == (4 if config == "double_seq_bn" else 2)
    for host in hosts:
        if config != "par_bn":  # a parallel adapter reads the block input x, never a's output
            after_a = _host_output(model, host, "a", h, x)  # the block output the model adds x to
            close(_host_output(model, host, Stack("a", "b"), h, x), _host_output(model, host, "b", after_a, x))
        expected = 0.3 * _host_output(model, host, "a", h, x) + 0.7 * _host_output(model, host, "b", h, x)
        close(_host_output(model, host, Average("a", "b", weights=[0.3, 0.7]), h, x), expected)


def test_bottleneck_and_sliced_lora_mix():
    model = with_adapters({"bn": "seq_bn", "lora": LORA_SETUPS["qv+ffn"]})
    inputs = make_inputs("gpt2")
    mixed = run(model, inputs, Stack("bn", "lora"))
    close(run(model, inputs, Stack("lora", "bn")), mixed)
    model.merge_adapter("lora")
    close(run(model, inputs, "bn"), mixed, 1e-4)
    model.reset_adapter()
    parallel = run(model, inputs, Parallel("bn", "lora"))
    close(parallel[:2], run(model, inputs, "bn"))
    close(parallel[2:], run(model, inputs, "lora"))


# -- merging in Conv1D layout -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "config",
    [
        LORA_SETUPS["qv+ffn"],
        LoRAConfig(r=4, target_modules="all-linear", use_rslora=True),
        DoRAConfig(r=4, **ALL_PLACES),
        DoRAConfig(r=4, target_modules=["c_attn", "c_proj"]),
        IA3Config(),
        IA3Config(target_modules=["c_attn", "c_fc", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"]),
    ],
    ids=["lora-sliced", "lora-all-linear", "dora-sliced", "dora-peft", "ia3-sliced", "ia3-feedforward"],
)
def test_merge_equals_unmerged_in_conv1d_layout(config):
    model = with_adapters({"a": config}, head="clm")
    inputs = make_inputs("gpt2")
    weights = {k: v.clone() for k, v in model.state_dict().items() if ".loras." not in k}
    expected = run(model, inputs, "a")
    host = c_attn(model)
    unloaded = c_attn(copy.deepcopy(model).merge_and_unload(adapter_names=["a"]))  # as merge_and_unload writes it
    model.merge_adapter("a")
    assert unloaded.weight.shape == host.weight.shape == (D, 3 * D)  # Conv1D's (in, out)
    assert torch.equal(host.weight, unloaded.weight) and torch.equal(host.bias, unloaded.bias)
    close(run(model, inputs), expected, 1e-4)
    close(run(model, inputs, "a"), expected, 1e-4)  # a merged adapter does not run again
    model.reset_adapter()
    for key, value in model.state_dict().items():
        if key in weights:
            close(value, weights[key], 1e-6)


def test_merged_sliced_lora_writes_only_its_columns():
    model = with_adapters({"qv": LoRAConfig(r=4)})
    host = c_attn(model)
    before = host.weight.clone()
    model.merge_adapter("qv")
    assert torch.equal(host.weight[:, D : 2 * D], before[:, D : 2 * D])
    close(host.weight[:, :D] - before[:, :D], host.loras["qv"].delta_weight()[:D].t(), 1e-6)


# -- checkpoints, generation, training ---------------------------------------------------------------
def test_save_load_round_trip_is_bit_identical(tmp_path):
    configs = {"lora": LORA_SETUPS["qv+ffn"], "dora": DoRAConfig(r=2, attn_matrices=["k"]), "ia3": IA3Config(), "bn": "double_seq_bn"}
    model = with_adapters(configs, head="seq_cls")
    inputs = make_inputs("gpt2")
    setup = Stack("lora", "dora", "ia3", "bn")
    expected = run(model, inputs, setup)
    for name in configs:
        model.save_adapter(str(tmp_path / name), name)
    fresh = patched("gpt2", "seq_cls")
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if ".loras." not in k and ".adapters." not in k}, strict=False)
    for name in configs:
        assert fresh.load_adapter(str(tmp_path / name)) == name
    assert c_attn(fresh).loras["lora"].out_slices == ((0, D), (2 * D, 3 * D))
    assert torch.equal(run(fresh, inputs, setup), expected)


@pytest.mark.parametrize("config", ["seq_bn", "lora"])
def test_generate_is_the_same_with_and_without_kv_cache(config):
    config = LORA_SETUPS["qv+ffn"] if config == "lora" else config
    model = with_adapters({"a": config}, head="clm", scale=0.5)
    model.set_active_adapters("a")
    inputs = make_inputs("gpt2", padded=False)
    cached = assert_generate_is_greedy_decoding(model, inputs, steps=5)
    assert cached.shape[1] == 17
    model.set_active_adapters(None)
    assert not torch.equal(model.generate(**inputs, max_new_tokens=5, do_sample=False), cached)


@pytest.mark.parametrize("config", ["double_seq_bn", "lora", "dora"])
def test_gradient_checkpointing_gives_the_same_gradients(config):
    config = {"lora": LoRAConfig(r=4, init_weights=False, **ALL_PLACES), "dora": DoRAConfig(r=4, init_weights=False)}.get(config, config)

    def grads(checkpointing):
        model = with_adapters({"a": config}, head="seq_cls")
        model.train_adapter("a")
        if checkpointing:
            model.activation_checkpointing_enable()
        main_output(model(**make_inputs("gpt2"))).pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and any(".a." in k for k in plain)
    for name in plain:
        close(checkpointed[name], plain[name], 1e-5)


def test_training_moves_only_the_adapter():
    model = with_adapters({"a": LORA_SETUPS["qv+ffn"]}, head="clm")
    model.train_adapter("a")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = make_inputs("gpt2")
    for _ in range(2):
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".loras.a." in k for k in changed), changed
    assert any("c_attn.loras.a.lora_A" in k for k in changed)


# -- PEFT interop ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config",
    [
        LoRAConfig(r=4, alpha=8, target_modules=["c_attn", "c_proj"]),
        DoRAConfig(r=4, target_modules=["c_attn", "c_fc"]),
        IA3Config(target_modules=["c_attn", "c_fc", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"]),
    ],
    ids=["lora", "dora", "ia3"],
)
def test_saved_peft_format_loads_in_peft_with_the_same_outputs(tmp_path, config):
    from peft import PeftModel

    model = make_model("gpt2", "clm")
    reference = make_model("gpt2", "clm")  # same seed: same base weights, never patched
    adapters.init(model)
    model.add_adapter("a", config=config, set_active=True)
    perturb_adapter(model, "a", scale=0.2)
    inputs = make_inputs("gpt2")
    ours = run(model, inputs)
    model.save_adapter(str(tmp_path), "a", format="peft")
    again = patched("gpt2", "clm")
    again.load_adapter(str(tmp_path), load_as="b", set_active=True)
    close(run(again, inputs), ours, 1e-6)
    peft_model = PeftModel.from_pretrained(reference, str(tmp_path)).eval()
    theirs, broken = checked_peft_output(peft_model, inputs)
    if broken:
        pytest.skip(broken)
    close(theirs, ours)
    with torch.no_grad():
        peft_model.merge_adapter()
        close(main_output(peft_model(**inputs)), ours, 1e-4)


def test_peft_written_gpt2_checkpoints_load_with_the_same_outputs(tmp_path):
    # PEFT marks Conv1D targets fan_in_fan_out=True; its A, B shapes are nn.Linear's, as ours
    from peft import IA3Config as PeftIA3Config
    from peft import LoraConfig, get_peft_model

    inputs = make_inputs("gpt2")
    configs = {
        "lora": LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, init_lora_weights=False),
        "dora": LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, use_dora=True, init_lora_weights=False),
        "ia3": PeftIA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True),
    }
    for name, config in configs.items():
        peft_model = get_peft_model(make_model("gpt2", "clm"), config)
        if name == "ia3":
            perturb_named(peft_model, "ia3_l")
        theirs, broken = checked_peft_output(peft_model, inputs)
        if broken:
            pytest.skip(f"{name}: {broken}")
        peft_model.save_pretrained(str(tmp_path / name))
        model = patched("gpt2", "clm")
        model.load_adapter(str(tmp_path / name), set_active=True)
        assert (theirs - run(model, inputs)).abs().max() < 1e-5 < (theirs - run(make_model("gpt2", "clm"), inputs)).abs().max()
        model.merge_adapter(name)
        close(run(model, inputs), theirs, 1e-4)


@pytest.mark.parametrize(
    "config", [LORA_SETUPS["qv+ffn"], DoRAConfig(r=2, attn_matrices=["k", "v"]), IA3Config()], ids=["lora", "dora", "ia3"]
)
def test_sliced_adapters_are_written_as_whole_module_peft_adapters(tmp_path, config):
    # PEFT has no per-part LoRA: a q/v adapter is written as a rank-2r LoRA on c_attn (dense_factors)
    from peft import PeftModel

    model = with_adapters({"a": config}, head="clm")
    model.set_active_adapters("a")
    inputs = make_inputs("gpt2")
    ours = run(model, inputs)
    model.save_adapter(str(tmp_path), "a", format="peft")
    theirs, broken = checked_peft_output(PeftModel.from_pretrained(make_model("gpt2", "clm"), str(tmp_path)).eval(), inputs)
    if broken:
        pytest.skip(broken)
    close(theirs, ours)


def test_weighted_combinations_on_fused_parts_follow_their_definitions():
    model = make_model("gpt2")
    adapters.init(model)
    qv = adapters.LoRAConfig(r=4, attn_matrices=["q", "v"], intermediate_lora=True)
    for i, name in enumerate("ab"):
        model.add_adapter(name, config=qv.replace(alpha=4 + 4 * i))
        perturb_adapter(model, name, seed=i)
    weights = [0.6, -0.4]
    model.add_weighted_adapter(["a", "b"], weights, "cat", combination_type="cat")
    model.add_weighted_adapter(["a", "b"], weights, "svd", combination_type="svd", svd_rank=8)
    model.add_weighted_adapter(["a", "b"], [0.6, 0.4], "lin", combination_type="linear")
    model.add_adapter("c", config=qv.replace(alpha=4))  # the same config as a: they can be averaged
    perturb_adapter(model, "c", seed=7)
    model.average_adapter("avg", ["a", "c"], weights=[0.25, 0.75], combine_strategy="lora_delta_w_svd", svd_rank=8)
    for host in (h for h in model._adapter_hosts if h.method == "lora"):
        a, b = host.loras["a"], host.loras["b"]
        assert host.loras["cat"].out_slices == a.out_slices  # still only the q and v parts
        wanted = weights[0] * a.delta_weight() + weights[1] * b.delta_weight()
        close(host.loras["cat"].delta_weight(), wanted, 1e-5)  # exact
        close(host.loras["svd"].delta_weight(), wanted, 1e-5)  # rank 8 = r_a + r_b per part: no truncation
        close(host.loras["avg"].delta_weight(), 0.25 * a.delta_weight() + 0.75 * host.loras["c"].delta_weight(), 1e-5)
        for lin, ga, gb in zip(host.loras["lin"].group_views(), a.group_views(), b.group_views()):
            ca, cb = (0.6 * ga.scaling) ** 0.5, (0.4 * gb.scaling) ** 0.5
            close(lin.delta_weight(), lin.scaling * (ca * ga.lora_B + cb * gb.lora_B) @ (ca * ga.lora_A + cb * gb.lora_A), 1e-5)
    inputs = make_inputs("gpt2")
    expected = run(model, inputs, "cat")
    model.merge_adapter("cat")
    close(run(model, inputs), expected, 1e-4)


def test_combining_different_parts_or_loftq_on_fused_parts_is_refused_clearly():
    model = make_model("gpt2")
    adapters.init(model)
    model.add_adapter("a", config=adapters.LoRAConfig(r=4, attn_matrices=["q", "v"]))
    model.add_adapter("b", config=adapters.LoRAConfig(r=4, attn_matrices=["q", "k"]))
    model.add_adapter("w", config=adapters.LoRAConfig(r=4, attn_matrices=["q", "v"], leave_out=[0]))
    with pytest.raises(ValueError, match="different parts of the fused projection"):
        model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "c", combination_type="cat")
    with pytest.raises(ValueError, match="adapt different layers, and some of them only parts"):
        model.add_weighted_adapter(["a", "w"], [0.5, 0.5], "c", combination_type="cat")
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match="parts of a fused projection"):
        model.add_adapter("q", config=adapters.LoRAConfig(r=4, attn_matrices=["q", "v"], init_weights="loftq"))
    assert set(model.state_dict()) == keys and set(model.adapters_config.adapters) == {"a", "b", "w"}
