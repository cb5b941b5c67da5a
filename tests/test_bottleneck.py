"""Bottleneck adapters, Compacter and every composition block, on every architecture.

Each test asserts numbers: zero-initialised adapters leave outputs unchanged, composed setups
equal their definition computed from single adapters, training moves only trainable weights,
gradient checkpointing gives the same gradients, and per-thread setups stay separate.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from conftest import (
    assert_generate_is_greedy_decoding,
    ARCH_HEADS_LIGHT,
    ARCHS,
    DECODERS,
    LAYERS,
    NO_CHECKPOINTING,
    NO_SEQ_CLS,
    SHARED_DEPTH,
    batch_of,
    main_output,
    make_inputs,
    make_model,
    n_layers,
    patched,
    perturb_adapter,
    run,
)

import adapters
from adapters import AdapterSetup, Average, BatchSplit, Fuse, Parallel, Split, Stack
from adapters.context import ForwardContext
from adapters.hooks.engine import prune_setup

BOTTLENECK_CONFIGS = ["seq_bn", "double_seq_bn", "par_bn", "scaled_par_bn", "compacter", "compacter++"]


def config_for_tiny(config, **overrides):
    """A config that fits the tiny models (Compacter's default reduction 32 would leave 1 unit)."""
    if str(config).startswith("compacter"):
        overrides.setdefault("reduction_factor", 4)
    return adapters.AdapterConfig.load(config, **overrides)






# -- identity and effect ----------------------------------------------------------------------------
@pytest.mark.parametrize("arch,head", ARCH_HEADS_LIGHT)
@pytest.mark.parametrize("config", BOTTLENECK_CONFIGS)
def test_zero_initialised_adapter_leaves_output_unchanged(arch, head, config):
    model = patched(arch, head)
    inputs = make_inputs(arch)
    base = run(model, inputs)
    model.add_adapter("a", config=config_for_tiny(config, init_weights="mam_adapter"), set_active=True)
    torch.testing.assert_close(run(model, inputs), base, atol=2e-6, rtol=0)
    perturb_adapter(model, "a")
    assert (run(model, inputs) - base).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_inactive_adapters_do_not_change_output_at_all(arch):
    model = patched(arch)
    inputs = make_inputs(arch)
    base = run(model, inputs)
    model.add_adapter("a", config="seq_bn")
    perturb_adapter(model, "a")
    assert torch.equal(run(model, inputs), base)
    model.set_active_adapters("a")
    model.set_active_adapters(None)
    assert torch.equal(run(model, inputs), base)


# -- blocks vs their definitions, at model level ----------------------------------------------------
def _two_adapters(arch, head="base", config="seq_bn", **config_overrides):
    model = patched(arch, head)
    for i, name in enumerate("ab"):
        model.add_adapter(name, config=adapters.AdapterConfig.load(config, **config_overrides))
        perturb_adapter(model, name, seed=10 * i)
    return model


@pytest.mark.parametrize("arch,head", ARCH_HEADS_LIGHT)
def test_stack_of_one_equals_the_adapter(arch, head):
    model = _two_adapters(arch, head)
    inputs = make_inputs(arch)
    assert torch.equal(run(model, inputs, Stack("a")), run(model, inputs, "a"))


@pytest.mark.parametrize("arch,head", ARCH_HEADS_LIGHT)
def test_parallel_branch_i_equals_adapter_i_alone(arch, head):
    model = _two_adapters(arch, head, config="double_seq_bn")
    inputs = make_inputs(arch)
    out = run(model, inputs, Parallel("a", "b"))
    batch = batch_of(inputs)
    assert out.shape[0] == 2 * batch
    torch.testing.assert_close(out[:batch], run(model, inputs, "a"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[batch:], run(model, inputs, "b"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in NO_SEQ_CLS])
def test_parallel_with_labels_computes_a_loss_over_all_branches(arch):
    model = _two_adapters(arch, "seq_cls")
    inputs = make_inputs(arch)
    model.set_active_adapters(Parallel("a", "b"))
    output = model(**inputs, labels=torch.tensor([0, 2]))
    assert output.logits.shape == (4, 3)
    expected = torch.nn.functional.cross_entropy(output.logits, torch.tensor([0, 2, 0, 2]))
    torch.testing.assert_close(output.loss, expected)


@pytest.mark.parametrize("arch,head", ARCH_HEADS_LIGHT)
def test_batchsplit_rows_equal_their_adapter_alone(arch, head):
    model = _two_adapters(arch, head)
    inputs = make_inputs(arch, batch=3)
    out = run(model, inputs, BatchSplit("a", "b", batch_sizes=[1, 2]))
    torch.testing.assert_close(out[:1], run(model, inputs, "a")[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:], run(model, inputs, "b")[1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in SHARED_DEPTH])
def test_split_segments_equal_their_adapter_on_that_segment(arch):
    # adapters only after the last FFN: everything before is shared, so segments compare directly
    model = _two_adapters(arch, leave_out=list(range(n_layers(arch) - 1)))
    inputs = make_inputs(arch, seq=12)
    out = run(model, inputs, Split("a", "b", splits=[5, 4]))
    alone_a, alone_b, base = run(model, inputs, "a"), run(model, inputs, "b"), run(model, inputs)
    torch.testing.assert_close(out[:, :5], alone_a[:, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 5:9], alone_b[:, 5:9], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 9:], base[:, 9:], atol=1e-5, rtol=1e-5)  # past the splits: unchanged


@pytest.mark.parametrize("arch", ARCHS)
def test_skip_layers_and_leave_out_bypass_adapters(arch):
    model = _two_adapters(arch)
    inputs = make_inputs(arch)
    model.set_active_adapters("a", skip_layers=list(range(n_layers(arch))))
    assert torch.equal(run(model, inputs), run(model.set_active_adapters(None) or model, inputs))
    model.add_adapter("c", config=adapters.SeqBnConfig(leave_out=list(range(n_layers(arch)))[:-1]))
    assert set(model.get_adapter("c")) == {n_layers(arch) - 1}


# -- blocks vs their definitions, at one host ---------------------------------------------------------
def _host_output(model, host, setup, hidden, residual, identity_norm=True):
    setup = adapters.parse_composition(setup)
    context = ForwardContext(model, setup)
    with context.activate(), torch.no_grad():
        pruned = prune_setup(setup, host.adapter_names())
        return host.bottleneck_layer_forward(pruned, hidden, residual, (lambda t: t) if identity_norm else None)


@pytest.fixture
def host_setup():
    model = patched("bert")
    for i, name in enumerate("abc"):
        model.add_adapter(name, config="seq_bn")
        perturb_adapter(model, name, seed=5 * i)
    host = model.encoder.layer[0].output
    generator = torch.Generator().manual_seed(3)
    hidden, residual = torch.randn(3, 7, 32, generator=generator), torch.randn(3, 7, 32, generator=generator)
    return model, host, hidden, residual


def test_stack_applies_b_to_a_output(host_setup):
    model, host, h, x = host_setup
    after_a = _host_output(model, host, "a", h, x)
    expected = _host_output(model, host, "b", after_a - x, x)  # b sees a's block output as its input
    torch.testing.assert_close(_host_output(model, host, Stack("a", "b"), h, x), expected, atol=1e-5, rtol=1e-5)


def test_average_is_the_weighted_mean_of_adapter_outputs(host_setup):
    model, host, h, x = host_setup
    out = _host_output(model, host, Average("a", "b", "c", weights=[0.2, 0.5, 0.3]), h, x)
    expected = sum(w * _host_output(model, host, n, h, x) for n, w in zip("abc", [0.2, 0.5, 0.3]))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    unnormalised = _host_output(model, host, Average("a", "b", weights=[1.0, 2.0], normalize_weights=False), h, x)
    expected = 1.0 * _host_output(model, host, "a", h, x) + 2.0 * _host_output(model, host, "b", h, x) - 2.0 * x
    torch.testing.assert_close(unnormalised, expected, atol=1e-5, rtol=1e-5)


def test_split_and_batchsplit_at_one_host(host_setup):
    model, host, h, x = host_setup
    out = _host_output(model, host, Split("a", "b", splits=[3, 4]), h, x)
    torch.testing.assert_close(out[:, :3], _host_output(model, host, "a", h, x)[:, :3])
    torch.testing.assert_close(out[:, 3:], _host_output(model, host, "b", h, x)[:, 3:])
    out = _host_output(model, host, BatchSplit("a", Stack("b", "c"), batch_sizes=[2, 1]), h, x)
    torch.testing.assert_close(out[:2], _host_output(model, host, "a", h, x)[:2])
    torch.testing.assert_close(out[2:], _host_output(model, host, Stack("b", "c"), h, x)[2:])


def test_fuse_of_one_adapter_equals_that_adapter(host_setup):
    model, host, h, x = host_setup
    model.add_adapter_fusion(Fuse("a"), config=adapters.DynamicFusionConfig(value_initialized=True))
    with torch.no_grad():
        host.adapter_fusion_layer["a"].value.weight.copy_(torch.eye(32))
    torch.testing.assert_close(_host_output(model, host, Fuse("a"), h, x), _host_output(model, host, "a", h, x))


def test_fuse_with_uniform_attention_averages_the_bottleneck_outputs(host_setup):
    model, host, h, x = host_setup
    model.add_adapter_fusion(Fuse("a", "b"))
    fusion = host.adapter_fusion_layer["a,b"]
    with torch.no_grad():
        fusion.query.weight.zero_()
        fusion.query.bias.zero_()  # q = 0: every adapter gets attention 1/2
        fusion.value.weight.copy_(torch.eye(32))
    # with identity norm and seq_bn: an adapter's block output is u + h + x, so u = out - h - x
    up_a = _host_output(model, host, "a", h, x) - h - x
    up_b = _host_output(model, host, "b", h, x) - h - x
    expected = 0.5 * (up_a + up_b) + h + x
    torch.testing.assert_close(_host_output(model, host, Fuse("a", "b"), h, x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_fuse_runs_in_every_nesting_and_returns_attentions(arch):
    model = patched(arch)
    for name in "abc":
        model.add_adapter(name, config="seq_bn")
    model.add_adapter_fusion(Fuse("a", "b"))
    inputs = make_inputs(arch)
    for setup in [Fuse("a", "b"), Stack("c", Fuse("a", "b")), Parallel(Fuse("a", "b"), "c"), Fuse(Stack("c", "a"), "b")]:
        if isinstance(setup, Fuse) and setup.name != "a,b":
            continue
        assert torch.isfinite(run(model, inputs, setup)).all()
    model.set_active_adapters(Fuse("a", "b"))
    output = model(**inputs, output_adapter_fusion_attentions=True)
    attentions = output.adapter_fusion_attentions["a,b"]
    assert set(attentions) == set(range(LAYERS))
    probs = attentions[0]["output_adapter"]
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


# -- training -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,head", [(a, "seq_cls") for a in ARCHS if a not in NO_SEQ_CLS] + [("bert", "base"), ("llama", "clm")])
def test_train_adapter_moves_only_the_adapter_and_head(arch, head):
    model = patched(arch, head)
    model.add_adapter("a", config=config_for_tiny("compacter"))
    model.add_adapter("b", config="seq_bn")
    model.train_adapter("a")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    inputs = make_inputs(arch)
    for _ in range(3):
        loss = main_output(model(**inputs)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    base_keys = {k for k, _ in model.base_model.named_parameters()}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    prefix = model.base_model_prefix + "." if model.base_model is not model else ""
    for key in changed:
        rel = key[len(prefix):] if key.startswith(prefix) else key
        assert ".adapters.a." in f".{rel}" or rel.startswith("shared_parameters.a.") or rel not in base_keys, key
    assert any(".adapters.a." in k for k in changed)
    assert any(k.startswith("shared_parameters.a.") or ".shared_parameters.a." in k for k in changed)
    summary = {row["name"]: row for row in model.adapter_summary(as_dict=True)}
    assert summary["a"]["train"] and not summary["b"]["train"] and summary["a"]["active"]


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in NO_CHECKPOINTING])
def test_gradient_checkpointing_gives_the_same_gradients(arch):
    def grads(checkpointing):
        model = patched(arch, "base" if arch in NO_SEQ_CLS else "seq_cls", seed=4)
        model.add_adapter("a", config="double_seq_bn")
        model.add_adapter("b", config="par_bn")
        perturb_adapter(model, "b")
        model.train_adapter(Stack("a", "b"))
        if checkpointing:
            model.activation_checkpointing_enable()
        loss = main_output(model(**make_inputs(arch))).pow(2).sum()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and any(".adapters.a." in k for k in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_checkpointing_enabled_before_init_still_sees_adapters():
    model = make_model("bert", "seq_cls").train()
    model.activation_checkpointing_enable()
    adapters.init(model)
    model.add_adapter("a")
    model.train_adapter("a")
    main_output(model(**make_inputs("bert"))).sum().backward()
    assert all(p.grad is not None for p in model._adapter_parameters("a"))


def test_fusion_training_adds_the_regulariser_and_trains_only_fusion():
    model = patched("bert", "seq_cls")
    for name in "ab":
        model.add_adapter(name)
    model.add_adapter_fusion(Fuse("a", "b"))
    model.train_adapter_fusion(Fuse("a", "b"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("adapter_fusion_layer.a,b." in n for n in trainable)
    assert not any(".adapters." in n for n in trainable)
    assert model.get_fusion_regularization_loss().item() > 0
    model.train_adapter_fusion(Fuse("a", "b"), unfreeze_adapters=True)
    assert any(".adapters.a." in n for n, p in model.named_parameters() if p.requires_grad)


# -- per-thread and per-task setups ---------------------------------------------------------------------
def test_threads_under_different_setups_get_their_own_results():
    model = _two_adapters("bert")
    inputs = make_inputs("bert")
    expected = {"a": run(model, inputs, "a"), "b": run(model, inputs, "b")}
    results, barrier = {}, threading.Barrier(2)

    def worker(name):
        with AdapterSetup(name):
            barrier.wait()
            outs = []
            for _ in range(5):
                with torch.no_grad():
                    outs.append(main_output(model(**inputs)))
            results[name] = outs

    threads = [threading.Thread(target=worker, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in "ab":
        for out in results[name]:
            assert torch.equal(out, expected[name])


def test_asyncio_tasks_and_nesting_are_isolated():
    model = _two_adapters("llama")
    inputs = make_inputs("llama")
    expected = {"a": run(model, inputs, "a"), "b": run(model, inputs, "b")}

    async def task(name):
        with AdapterSetup(name):
            await asyncio.sleep(0)
            with torch.no_grad():
                return main_output(model(**inputs))

    async def main():
        return await asyncio.gather(task("a"), task("b"))

    out_a, out_b = asyncio.run(main())
    assert torch.equal(out_a, expected["a"]) and torch.equal(out_b, expected["b"])
    with AdapterSetup("a"):
        with AdapterSetup("b"):
            assert AdapterSetup.get_context_adapter_setup() == Stack("b")
        assert AdapterSetup.get_context_adapter_setup() == Stack("a")
    assert AdapterSetup.get_context_adapter_setup() is None


# -- management -----------------------------------------------------------------------------------------
def test_init_twice_is_a_no_op_and_keeps_class_names():
    model = make_model("bert", "seq_cls")
    adapters.init(model)
    cls = type(model)
    adapters.init(model)
    assert type(model) is cls and cls.__name__ == "BertForSequenceClassification"
    assert isinstance(model, adapters.ModelAdaptersMixin)


def test_unsupported_model_gets_an_error_naming_supported_types():
    from transformers import OPTConfig, OPTModel

    model = OPTModel(OPTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32))
    with pytest.raises(ValueError, match="'opt'.*Supported model types: .*bert.*llama"):
        adapters.init(model)


def test_delete_summary_get_adapter_and_adapter_to():
    model = patched("bert")
    model.add_adapter("a", config="double_seq_bn")
    model.add_adapter("b", config=config_for_tiny("compacter"))
    model.add_adapter_fusion(Fuse("a", "b"), set_active=True)
    layers = model.get_adapter("a")
    assert set(layers) == set(range(LAYERS)) and set(layers[0]) == {"mh_adapter", "output_adapter"}
    summary = model.adapter_summary()
    assert "a" in summary and "bottleneck" in summary and "fusion" in summary and "Full model" in summary
    rows = {r["name"]: r for r in model.adapter_summary(as_dict=True)}
    assert rows["b"]["#param"] == sum(p.numel() for p in model._adapter_parameters("b"))
    model.adapter_to("b", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model._adapter_parameters("b"))
    model.adapter_to("b", dtype=torch.float32)
    model.delete_adapter("a")
    assert "a,b" not in model.adapters_config.fusions and model.active_adapters is None
    assert not any(".adapters.a." in k for k in model.state_dict())
    with pytest.raises(ValueError, match="No adapter named 'a'"):
        model.delete_adapter("a")


def test_active_adapters_property_and_parsing():
    model = _two_adapters("bert")
    model.active_adapters = "a,b"
    assert model.active_adapters == Stack("a", "b")
    model.active_adapters = ["a", "b"]
    assert model.active_adapters == Stack("a", "b")
    model.set_active_adapters("a")
    assert model.active_adapters == Stack("a")


@pytest.mark.parametrize(
    "setup,message",
    [
        ("zzz", "unknown adapter 'zzz'"),
        (Fuse("a", "b"), "needs an AdapterFusion named 'a,b'"),
        (Fuse("a", Split("a", "b", splits=2)), "cannot nest"),
        (Stack("a", Stack("b", Parallel("a", "b"))), "direct child of a top-level Stack"),
    ],
)
def test_invalid_setups_are_rejected_with_a_clear_error(setup, message):
    model = _two_adapters("bert")
    model.set_active_adapters("a")
    with pytest.raises(ValueError, match=message):
        model.set_active_adapters(setup)
    assert model.active_adapters == Stack("a")  # unchanged


def test_add_adapter_errors_leave_the_model_unchanged():
    model = patched("bert")
    model.add_adapter("a")
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match="exists already"):
        model.add_adapter("a")
    with pytest.raises(ValueError, match="Unknown adapter config"):
        model.add_adapter("b", config="no_such_config")
    with pytest.raises(ValueError, match="phm_dim"):
        model.add_adapter("b", config=adapters.CompacterConfig(phm_dim=5))
    with pytest.raises(ValueError, match="leave_out"):
        model.add_adapter("b", config=adapters.SeqBnConfig(leave_out=[7]))
    with pytest.raises(ValueError, match="Invalid adapter name"):
        model.add_adapter("a.b")
    assert set(model.state_dict()) == keys and list(model.adapters_config.adapters) == ["a"]


@pytest.mark.parametrize("arch", DECODERS)
def test_decoder_generate_with_adapters(arch):
    model = patched(arch, "clm")
    model.add_adapter("a", config="seq_bn", set_active=True)
    perturb_adapter(model, "a")
    inputs = make_inputs(arch, padded=False)
    assert_generate_is_greedy_decoding(model, inputs, steps=4)


def test_compacter_learn_phm_false_keeps_rules_fixed_in_training():
    model = patched("bert")
    model.add_adapter("c", config=config_for_tiny("compacter", learn_phm=False, shared_phm_rule=False))
    model.add_adapter("s", config=config_for_tiny("compacter++", learn_phm=False))
    for name in "cs":
        model.train_adapter(name)
        rules = [p for n, p in model.named_parameters() if "phm_rule" in n and (f".{name}." in f".{n}")]
        assert rules and not any(p.requires_grad for p in rules)
        assert any(p.requires_grad for n, p in model.named_parameters() if "W_left" in n and f".{name}." in n)


def test_compacter_cached_weight_follows_parameter_updates():
    model = patched("bert")
    model.add_adapter("c", config=config_for_tiny("compacter++"), set_active=True)
    perturb_adapter(model, "c")
    inputs = make_inputs("bert")
    first = run(model, inputs)
    assert torch.equal(run(model, inputs), first)  # served from the cache
    with torch.no_grad():
        model.base_model.shared_parameters["c"]["phm_rule"].mul_(3.0)  # in-place: version bump
    changed = run(model, inputs)
    assert not torch.equal(changed, first)
    model.train()
    with torch.enable_grad():
        reference = main_output(model(**inputs))  # recomputed with autograd
    torch.testing.assert_close(reference.detach(), changed, atol=1e-6, rtol=1e-6)


def test_generate_with_parallel_continues_each_branch():
    """Parallel generate: every branch continues its own copy of the input; rows [a's; b's]."""
    model = _two_adapters("llama", "clm")
    model.set_active_adapters(Parallel("a", "b"))
    inputs = make_inputs("llama", padded=False)
    both = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert both.shape == (4, 15)
    with AdapterSetup("a"):
        only_a = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with AdapterSetup("b"):
        only_b = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(both, torch.cat([only_a, only_b]))
    assert type(model).can_generate()


@pytest.mark.parametrize("arch", ARCHS)
def test_compacter_takes_part_in_all_six_blocks(arch):
    model = patched(arch)
    for i, name in enumerate("ab"):
        model.add_adapter(name, config=config_for_tiny("compacter"))
        perturb_adapter(model, name, seed=i)
    model.add_adapter_fusion(Fuse("a", "b"))
    inputs = make_inputs(arch, batch=2)
    alone = {n: run(model, inputs, n) for n in "ab"}
    parallel = run(model, inputs, Parallel("a", "b"))
    torch.testing.assert_close(parallel[:2], alone["a"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parallel[2:], alone["b"], atol=1e-5, rtol=1e-5)
    batch_split = run(model, inputs, BatchSplit("a", "b", batch_sizes=[1, 1]))
    torch.testing.assert_close(batch_split, torch.cat([alone["a"][:1], alone["b"][1:]]), atol=1e-5, rtol=1e-5)
    for setup in [Stack("a", "b"), Split("a", "b", splits=[6, 6]), Average("a", "b"), Fuse("a", "b")]:
        out = run(model, inputs, setup)
        assert torch.isfinite(out).all() and not torch.equal(out, alone["a"]), setup


@pytest.mark.parametrize("arch", ARCHS)
def test_branches_with_different_adapter_kinds_finish_with_their_own_post_step(arch):
    model = patched(arch)
    model.add_adapter("seq", config="seq_bn")
    model.add_adapter("par", config="par_bn")
    for i, name in enumerate(("seq", "par")):
        perturb_adapter(model, name, seed=3 * i)
    inputs = make_inputs(arch, batch=2)
    alone = {n: run(model, inputs, n) for n in ("seq", "par")}
    parallel = run(model, inputs, Parallel("seq", "par"))
    torch.testing.assert_close(parallel[:2], alone["seq"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parallel[2:], alone["par"], atol=1e-5, rtol=1e-5)
    split = run(model, inputs, BatchSplit("par", "seq", batch_sizes=[1, 1]))
    torch.testing.assert_close(split, torch.cat([alone["par"][:1], alone["seq"][1:]]), atol=1e-5, rtol=1e-5)


def test_split_with_different_adapter_kinds_at_one_host(host_setup):
    model, host, h, x = host_setup
    model.add_adapter("p", config="par_bn")
    perturb_adapter(model, "p")
    out = _host_output(model, host, Split("a", "p", splits=[3, 2]), h, x)
    torch.testing.assert_close(out[:, :3], _host_output(model, host, "a", h, x)[:, :3])
    torch.testing.assert_close(out[:, 3:5], _host_output(model, host, "p", h, x)[:, 3:5])
    torch.testing.assert_close(out[:, 5:], (h + x)[:, 5:])  # identity norm: the layer's own residual step
