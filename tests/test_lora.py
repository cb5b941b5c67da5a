"""LoRA and (IA)³ slots: identity at init, composition against its definition (checked through
merged weights), mixing with bottleneck adapters, merging, targeting, checkpoints, training."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, LAYERS, cls_head, main_output, make_inputs, patched, perturb_adapter, run

from adapters import Average, BatchSplit, IA3Config, LoRAConfig, Parallel, Split, Stack






def lora_pair(arch, head="base", config=None):
    model = patched(arch, head)
    for i, name in enumerate("ab"):
        model.add_adapter(name, config=config or LoRAConfig(r=4, attn_matrices=["q", "k", "v", "o"], intermediate_lora=True, output_lora=True))
        perturb_adapter(model, name, scale=0.3, seed=7 * i)
    return model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("config", [LoRAConfig(), IA3Config(), LoRAConfig(target_modules="all-linear", init_weights="gaussian")])
def test_initialised_lora_and_ia3_are_the_identity(arch, config):
    model = patched(arch)
    inputs = make_inputs(arch)
    base = run(model, inputs)
    model.add_adapter("a", config=config, set_active=True)
    assert torch.equal(run(model, inputs), base)
    perturb_adapter(model, "a")
    assert (run(model, inputs) - base).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_stack_adds_the_deltas_on_the_same_weight(arch):
    # float64: T5 does not scale its attention logits, which amplifies float32 rounding differences
    model = lora_pair(arch).to(torch.float64)
    inputs = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in make_inputs(arch).items()}
    stacked = run(model, inputs, Stack("a", "b"))
    model.merge_adapter("a")
    model.merge_adapter("b")  # W + ΔW_a + ΔW_b
    torch.testing.assert_close(run(model, inputs), stacked, atol=1e-4, rtol=1e-4)
    model.reset_adapter()
    # the order of two float additions: rounding relative to the output's scale (CLIP's vision tower
    # returns its last states unnormalised, |x| ~ 60 here)
    scale = stacked.abs().max().clamp(min=1).item()
    torch.testing.assert_close(run(model, inputs, Stack("b", "a")), stacked, atol=1e-5 * scale, rtol=1e-5)


def test_stack_of_ia3_multiplies_the_scalings():
    model = lora_pair("llama", config=IA3Config())
    inputs = make_inputs("llama")
    stacked = run(model, inputs, Stack("a", "b"))
    model.merge_adapter("a")
    torch.testing.assert_close(run(model, inputs, "b"), stacked, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_parallel_and_batchsplit_rows_equal_each_adapter_alone(arch):
    model = lora_pair(arch, cls_head(arch))
    inputs = make_inputs(arch)
    alone = {n: run(model, inputs, n) for n in "ab"}
    parallel = run(model, inputs, Parallel("a", "b"))
    torch.testing.assert_close(parallel, torch.cat([alone["a"], alone["b"]]), atol=1e-5, rtol=1e-5)
    split = run(model, inputs, BatchSplit("a", "b", batch_sizes=[1, 1]))
    torch.testing.assert_close(split, torch.cat([alone["a"][:1], alone["b"][1:]]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_average_is_the_weighted_mean_of_the_deltas(arch):
    config = LoRAConfig(r=4, attn_matrices=["q", "v"], intermediate_lora=True)
    model = lora_pair(arch, config=config)
    weights = [0.25, 0.75]
    # a rank-8 adapter whose ΔW = 0.25 ΔW_a + 0.75 ΔW_b: A = [A_a; A_b], B = [0.25 B_a, 0.75 B_b]
    model.add_adapter("c", config=config.replace(r=8))
    with torch.no_grad():
        for host in model._adapter_hosts:
            if host.method == "lora" and "c" in host.loras:
                # part by part where the layer is fused (GPT-2's c_attn: one rank-r update per q / v)
                for a, b, c in zip(*(host.loras[n].group_views() for n in "abc")):
                    c.lora_A.copy_(torch.cat([a.lora_A, b.lora_A]))
                    c.lora_B.copy_(torch.cat([weights[0] * a.lora_B * (a.scaling / c.scaling),
                                              weights[1] * b.lora_B * (b.scaling / c.scaling)], dim=1))
    inputs = make_inputs(arch)
    torch.testing.assert_close(run(model, inputs, Average("a", "b", weights=weights)), run(model, inputs, "c"), atol=1e-5, rtol=1e-5)


def test_split_routes_sequence_segments_at_each_layer():
    # LoRA on the FFN output only of the last layer: position-wise after attention, so segments compare directly
    config = LoRAConfig(selfattn_lora=False, output_lora=True, leave_out=list(range(LAYERS - 1)))
    model = lora_pair("bert", config=config)
    inputs = make_inputs("bert")
    out = run(model, inputs, Split("a", "b", splits=[4, 8]))
    torch.testing.assert_close(out[:, :4], run(model, inputs, "a")[:, :4])
    torch.testing.assert_close(out[:, 4:], run(model, inputs, "b")[:, 4:])


@pytest.mark.parametrize("arch", ["bert", "llama", "distilbert"])
def test_bottleneck_and_lora_mix_in_one_setup(arch):
    model = patched(arch)
    model.add_adapter("bn", config="seq_bn")
    model.add_adapter("lora", config=LoRAConfig(r=4))
    for name in ("bn", "lora"):
        perturb_adapter(model, name, scale=0.3)
    inputs = make_inputs(arch)
    mixed = run(model, inputs, Stack("bn", "lora"))
    torch.testing.assert_close(run(model, inputs, Stack("lora", "bn")), mixed)  # different places: order-free
    model.merge_adapter("lora")
    torch.testing.assert_close(run(model, inputs, "bn"), mixed, atol=1e-5, rtol=1e-5)
    model.reset_adapter()
    parallel = run(model, inputs, Parallel("bn", "lora"))
    torch.testing.assert_close(parallel[:2], run(model, inputs, "bn"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parallel[2:], run(model, inputs, "lora"), atol=1e-5, rtol=1e-5)


def test_lora_cannot_be_fused():
    model = lora_pair("bert")
    with pytest.raises(ValueError, match="Cannot fuse adapter 'a': its method lora has no fusion"):
        model.add_adapter_fusion(["a", "b"])


@pytest.mark.parametrize("arch,modules", [("bert", ["query", "value", "intermediate.dense"]), ("gpt2", ["c_fc", "mlp.c_proj"])])
def test_inference_on_many_tokens_folds_the_update_into_the_weight(arch, modules, monkeypatch):
    """No gradient, many tokens: each plain LoRA runs as x (W + s·B A)ᵀ (nn.Linear and GPT-2's
    Conv1D); the low-rank path (training, few tokens, active dropout) gives the same outputs."""
    from adapters.methods.lora import LoRA

    model = patched(arch)
    model.add_adapter("a", config=LoRAConfig(r=4, alpha=8, target_modules=modules, dropout=0.1), set_active=True)
    perturb_adapter(model, "a", scale=0.3)
    model.eval()
    hosts = [m for m in model.modules() if hasattr(m, "loras") and "a" in m.loras]
    folds = []
    fold = LoRA.folded_into
    monkeypatch.setattr(LoRA, "folded_into", lambda lora, weight: folds.append(lora) or fold(lora, weight))
    many = make_inputs(arch, batch=4, seq=40)  # 160 tokens: 160·(32 + 128) ≥ 2.5·32·128, the widest host

    folded = run(model, many)
    assert len(folds) == len(hosts) > 0
    folds.clear()
    low_rank = main_output(model(**many))  # recording gradients: never folded
    assert not folds
    torch.testing.assert_close(folded, low_rank.detach(), atol=1e-5, rtol=1e-5)
    model.set_active_adapters(None)
    assert (run(model, many) - folded).abs().max() > 1e-2  # the adapter matters

    model.set_active_adapters("a")
    few = make_inputs(arch, batch=1, seq=6)  # 6 tokens: the low-rank path is cheaper
    run(model, few)
    model.train()  # active dropout: the low-rank path draws its mask on x
    run(model, many)
    assert not folds


def test_merge_equals_unmerged_and_reset_restores_weights():
    model = lora_pair("bert", config=IA3Config())
    model.add_adapter("l", config=LoRAConfig(r=4, output_lora=True))
    perturb_adapter(model, "l", scale=0.3)
    inputs = make_inputs("bert")
    weights = {k: v.clone() for k, v in model.state_dict().items() if "loras" not in k}
    for name in ("a", "l"):
        expected = run(model, inputs, name)
        model.merge_adapter(name)
        torch.testing.assert_close(run(model, inputs, name), expected, atol=1e-5, rtol=1e-5)  # merged one is skipped
        torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="merged already"):
            model.merge_adapter(name)
        model.reset_adapter()
    for key, value in model.state_dict().items():
        if key in weights:
            torch.testing.assert_close(value, weights[key], atol=1e-6, rtol=1e-6)


def test_merge_errors():
    model = patched()
    model.add_adapter("bn")
    model.add_adapter("g", config=LoRAConfig(use_gating=True))
    with pytest.raises(ValueError, match="changes no layer weights, so it cannot be merged"):
        model.merge_adapter("bn")
    with pytest.raises(ValueError, match="gated"):
        model.merge_adapter("g")


def test_peft_style_targeting():
    model = patched("llama")
    model.add_adapter("list", config=LoRAConfig(target_modules=["q_proj", "mlp.down_proj"]))
    assert set(model.get_adapter("list")[0]) == {"self_attn.q_proj", "mlp.down_proj"}
    model.add_adapter("regex", config=LoRAConfig(target_modules=r".*\.(k|v)_proj", layers_to_transform=[1]))
    assert set(model.get_adapter("regex")) == {1} and set(model.get_adapter("regex")[1]) == {"self_attn.k_proj", "self_attn.v_proj"}
    model.add_adapter("all", config=LoRAConfig(target_modules="all-linear", exclude_modules=["o_proj"]))
    assert len(model.get_adapter("all")[0]) == 6  # q, k, v, gate, up, down
    model.add_adapter("ranks", config=LoRAConfig(target_modules=["q_proj", "v_proj"], rank_pattern={"q_proj": 2}, alpha_pattern={r"layers\.1\.self_attn\.v_proj": 32}))
    layer0, layer1 = model.get_adapter("ranks")[0], model.get_adapter("ranks")[1]
    assert layer0["self_attn.q_proj"].r == 2 and layer0["self_attn.v_proj"].r == 8
    assert layer1["self_attn.v_proj"].scaling == 4.0 and layer0["self_attn.v_proj"].scaling == 1.0
    model.add_adapter("rs", config=LoRAConfig(r=16, alpha=8, use_rslora=True))
    assert model.get_adapter("rs")[0]["self_attn.q_proj"].scaling == pytest.approx(2.0)


def test_targeting_errors_leave_the_model_unchanged():
    model = patched("llama")
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match="matches no linear layer.*Closest module names: .*q_proj"):
        model.add_adapter("x", config=LoRAConfig(target_modules=["q_prj"]))
    with pytest.raises(ValueError, match="LoRAConfig.r must be a positive integer"):
        LoRAConfig(r=0)
    with pytest.raises(ValueError, match="LoRAConfig.alpha must be a finite number > 0"):
        LoRAConfig(alpha=0)
    assert set(model.state_dict()) == keys and not model.adapters_config.adapters


def test_pattern_matching_nothing_warns(caplog):
    import logging

    model = patched("llama")
    logger = logging.getLogger("adapters.methods.lora")
    logger.addHandler(caplog.handler)
    try:  # conftest silences transformers' warnings, and adapters' follow them: a level of its own here
        with caplog.at_level(logging.WARNING, logger="adapters.methods.lora"):
            model.add_adapter("x", config=LoRAConfig(rank_pattern={"nothing_here": 2}))
    finally:
        logger.removeHandler(caplog.handler)
    assert "matches none of its target modules" in caplog.text


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_lora_round_trip_and_training(tmp_path, arch):
    model = patched(arch, "seq_cls")
    model.add_adapter("a", config=LoRAConfig(r=4, target_modules="all-linear"))
    model.add_adapter("b", config=IA3Config())
    model.train_adapter(Stack("a", "b"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        main_output(model(**make_inputs(arch))).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(".loras.a.lora_B" in k for k in changed) and any(".loras.b." in k for k in changed)
    assert all(".loras." in k or not k.startswith(model.base_model_prefix) for k in changed)
    model.eval()
    inputs = make_inputs(arch)
    expected = run(model, inputs)
    for name in "ab":
        model.save_adapter(str(tmp_path / name), name)
    fresh = patched(arch, "seq_cls")
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if ".loras." not in k}, strict=False)
    for name in "ab":
        fresh.load_adapter(str(tmp_path / name))
    fresh.set_active_adapters(Stack("a", "b"))
    assert torch.equal(run(fresh, inputs), expected)


def test_gradient_checkpointing_with_lora_gives_the_same_gradients():
    def grads(checkpointing):
        model = patched("llama", "seq_cls", seed=3)
        model.add_adapter("a", config=LoRAConfig(r=4, init_weights=False))
        model.train_adapter("a")
        if checkpointing:
            model.activation_checkpointing_enable()
        main_output(model(**make_inputs("llama"))).pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and any("lora_A" in k for k in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_delete_restores_a_clean_forward():
    model = lora_pair("bert")
    inputs = make_inputs("bert")
    base = run(model, inputs)
    model.merge_adapter("a")
    model.delete_adapter("a")  # unmerges first
    torch.testing.assert_close(run(model, inputs), base, atol=1e-6, rtol=1e-6)
    assert not any(".loras.a." in k for k in model.state_dict())


@pytest.mark.parametrize("bits,quantizer", [(4, "nf"), (4, "uniform"), (2, "nf")])
def test_loftq_fits_the_quantisation_residual(bits, quantizer):
    from adapters import LoftQConfig
    from adapters.methods.loftq import quantize_dequantize

    model = patched("llama")
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj"))}
    loftq = LoftQConfig(loftq_bits=bits, loftq_iter=2, quantizer=quantizer)
    model.add_adapter("q", config=LoRAConfig(r=8, alpha=16, init_weights="loftq", loftq_config=loftq))
    for path, module in model.named_modules():
        if path in original:
            w = original[path]
            q = module.weight.detach()
            lora = module.loras["q"]
            approx = q + lora.delta_weight()
            assert torch.linalg.norm(w - approx) < torch.linalg.norm(w - q) < torch.linalg.norm(w)
            # one iteration is exactly q(W) + best rank-8 fit of the residual
            assert torch.linalg.norm(w - quantize_dequantize(w, bits, quantizer)) > 0
    assert model.adapters_config.adapters["q"].loftq_config["loftq_bits"] == bits


def test_nf4_quantiser_uses_sixteen_levels_per_block():
    from adapters.methods.loftq import NF4_LEVELS, quantize_dequantize

    w = torch.randn(8, 64)
    q = quantize_dequantize(w, 4, "nf", block_size=64)
    for row_w, row_q in zip(w, q):
        normalised = row_q / row_w.abs().max()
        assert torch.isin(normalised.round(decimals=5), NF4_LEVELS.round(decimals=5)).all()
        assert normalised.unique().numel() <= 16


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_bias_option_trains_and_saves_biases(tmp_path, bias):
    model = patched("bert")
    model.add_adapter("a", config=LoRAConfig(r=4, bias=bias))
    model.train_adapter("a")
    trainable_biases = {n for n, p in model.named_parameters() if p.requires_grad and n.endswith(".bias") and ".loras." not in n}
    query_bias = "encoder.layer.0.attention.self.query.bias"
    assert query_bias in trainable_biases
    assert ("encoder.layer.0.output.dense.bias" in trainable_biases) == (bias == "all")
    with torch.no_grad():
        model.get_parameter(query_bias).add_(1.0)
    model.save_adapter(str(tmp_path), "a")
    fresh = patched("bert")
    fresh.load_adapter(str(tmp_path))
    assert torch.equal(fresh.get_parameter(query_bias), model.get_parameter(query_bias))
