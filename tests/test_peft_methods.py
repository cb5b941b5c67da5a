"""LoHa, LoKr, OFT, HRA and AdaLoRA as composable adapter slots: each against its definition
(effective weights computed here from the parameters, independently of the library), their
compositions with each other, LoRA and bottleneck adapters, merging, GPT-2's Conv1D, checkpoints
and AdaLoRA's budget allocation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import NEW_ARCHS, make_inputs, make_model, patched, perturb_adapter, reference_with_deltas, run

import adapters
from adapters import (
    AdaLoraCallback,
    AdaLoRAConfig,
    Average,
    BatchSplit,
    HRAConfig,
    LoHaConfig,
    LoKrConfig,
    LoRAConfig,
    OFTConfig,
    Parallel,
    SeqBnConfig,
    Split,
    Stack,
)
from adapters.methods.weight_transform import WeightTransform

CONFIGS = {
    "loha": LoHaConfig(r=4, alpha=8),
    "lokr": LoKrConfig(r=2, alpha=4, decompose_both=True),
    "oft": OFTConfig(oft_block_size=8),
    "oft_exact_shared": OFTConfig(r=4, oft_block_size=0, block_share=True, use_cayley_neumann=False),
    "hra": HRAConfig(r=4),
    "hra_gs": HRAConfig(r=4, apply_GS=True),
    "adalora": AdaLoRAConfig(init_r=4, target_r=2, total_step=10),
}
METHODS = list(CONFIGS)


# -- the definitions, written out from the parameters -------------------------------------------------
def _skew(params: torch.Tensor, size: int) -> torch.Tensor:
    q = torch.zeros(size, size, dtype=params.dtype)
    k = 0
    for i in range(size):
        for j in range(i + 1, size):
            q[i, j], q[j, i] = params[k], -params[k]
            k += 1
    return q


def _oft_rotation(adapter) -> torch.Tensor:
    blocks = []
    for params in adapter.oft_R.detach():
        q = _skew(params, adapter.block_size)
        eye = torch.eye(adapter.block_size)
        if adapter.neumann_terms is None:
            blocks.append((eye - q) @ torch.linalg.inv(eye + q))
        else:  # PEFT's truncated series for 5 terms: I + 2Q + 2Q² + 2Q³ + Q⁴
            assert adapter.neumann_terms == 5
            p = torch.linalg.matrix_power
            blocks.append(eye + 2 * q + 2 * p(q, 2) + 2 * p(q, 3) + p(q, 4))
    if adapter.block_share:
        blocks = blocks * adapter.r
    return torch.block_diag(*blocks)


def _householder_product(adapter) -> torch.Tensor:
    u = adapter.hra_u.detach()
    eye = torch.eye(u.shape[0])
    if adapter.apply_GS:
        basis = []
        for i in range(u.shape[1]):
            v = u[:, i].clone()
            for b in basis:
                v = v - (b @ v) * b
            basis.append(v / v.norm())
        q = torch.stack(basis, dim=1)
        return eye - 2 * q @ q.t()
    h = eye
    for i in range(u.shape[1]):
        v = u[:, i : i + 1]
        h = h @ (eye - 2 * v @ v.t() / (v.t() @ v))
    return h


def effective_delta(adapter, weight: torch.Tensor) -> torch.Tensor:
    """``ΔW = W_eff − W`` by the method's definition."""
    method = getattr(adapter, "method", "lora")
    if method == "loha":
        return (adapter.hada_w1_a @ adapter.hada_w1_b) * (adapter.hada_w2_a @ adapter.hada_w2_b) * adapter.scaling
    if method == "lokr":
        p = dict(adapter.named_parameters())
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
        return torch.kron(w1, w2) * adapter.scaling
    if method == "oft":
        return weight @ _oft_rotation(adapter).t() - weight
    if method == "hra":
        return weight @ _householder_product(adapter) - weight
    if method == "adalora":
        return adapter.lora_B @ (adapter.lora_A * adapter.lora_E) * adapter.scaling
    if method == "lora" and adapter.composition_mode == "add":  # LoRA's own delta, checked in test_lora.py
        return adapter.delta_weight()
    raise AssertionError(method)


def reference_model(model, arch, weights_per_adapter: dict[str, float], head="base"):
    """A fresh copy of the base model whose adapted weights are ``W + Σ_i w_i ΔW_i(W)``."""
    return reference_with_deltas(model, arch, {n: (w, effective_delta) for n, w in weights_per_adapter.items()}, head)


def _add(model, name, method, **overrides):
    config = CONFIGS[method].replace(**overrides) if overrides else CONFIGS[method]
    model.add_adapter(name, config=config)
    perturb_adapter(model, name, scale=0.2, seed=hash(name) % 1000)


# -- single adapters -------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2", *NEW_ARCHS, "t5", "bart", "whisper"])
@pytest.mark.parametrize("method", METHODS)
def test_initialised_adapter_is_the_identity_and_trained_one_matches_its_definition(arch, method):
    model = patched(arch)
    inputs = make_inputs(arch)
    base = run(model, inputs)
    model.add_adapter("a", config=CONFIGS[method], set_active=True)
    if method != "hra_gs":  # a Gram–Schmidt chain is a reflection, never the identity
        torch.testing.assert_close(run(model, inputs), base, atol=1e-5, rtol=0)
    perturb_adapter(model, "a", scale=0.2)
    out = run(model, inputs)
    assert (out - base).abs().max() > 1e-3
    expected = run(reference_model(model, arch, {"a": 1.0}), inputs)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_all_linear_on_gpt2_conv1d_matches_the_definition(method):
    model = patched("gpt2")
    overrides = {"oft_block_size": 0, "r": 4} if method == "oft" else {}
    _add(model, "a", method, target_modules="all-linear", **overrides)
    assert any(h.fan_in_fan_out for h in model._adapter_hosts if h.method == "lora" and "a" in h.loras)
    model.set_active_adapters("a")
    inputs = make_inputs("gpt2")
    torch.testing.assert_close(run(model, inputs), run(reference_model(model, "gpt2", {"a": 1.0}), inputs), atol=2e-5, rtol=1e-4)


def test_lokr_factorisation_and_oft_block_adjustment_follow_peft():
    from peft.tuners.lokr.layer import factorization
    from peft.tuners.oft.layer import OFTLayer

    from adapters.methods.lokr import factorize
    from adapters.methods.oft import nearest_divisor

    for dimension in list(range(1, 130)) + [768, 1000, 3072, 4096, 11008]:
        for factor in (-1, 2, 3, 4, 8, 16):
            assert factorize(dimension, factor) == factorization(dimension, factor), (dimension, factor)
        for wanted in (1, 3, 7, 16, 32, 200):
            assert nearest_divisor(dimension, wanted) == OFTLayer.adjust_oft_parameters(None, dimension, wanted)


def test_hra_wy_form_equals_the_product_of_reflections():
    model = patched("bert")
    _add(model, "a", "hra", r=5, init_weights=False)
    adapter = next(h.loras["a"] for h in model._adapter_hosts if h.method == "lora" and "a" in h.loras)
    torch.testing.assert_close(adapter.reflection_matrix(), _householder_product(adapter), atol=1e-5, rtol=0)


def test_oft_coft_keeps_each_block_within_its_radius():
    model = patched("bert")
    model.add_adapter("a", config=OFTConfig(oft_block_size=8, coft=True, eps=1e-3, init_weights=False), set_active=True)
    run(model, make_inputs("bert"))
    adapter = next(h.loras["a"] for h in model._adapter_hosts if h.method == "lora" and "a" in h.loras)
    radius = 1e-3 / math.sqrt(adapter.r)
    norms = torch.stack([torch.linalg.norm(_skew(p, adapter.block_size)) for p in adapter.oft_R.detach()])
    assert (norms <= radius * (1 + 1e-5)).all()


# -- composition -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_stack_and_average_of_several_methods_on_the_same_layers(arch):
    model = patched(arch)
    for name, method in [("loha", "loha"), ("oft", "oft"), ("hra", "hra"), ("ada", "adalora"), ("lokr", "lokr")]:
        _add(model, name, method)
    model.add_adapter("lora", config=LoRAConfig(r=4, alpha=8))
    perturb_adapter(model, "lora", scale=0.2, seed=5)
    inputs = make_inputs(arch)
    names = ["lora", "loha", "oft", "hra", "ada", "lokr"]
    stacked = run(model, inputs, Stack(*names))
    torch.testing.assert_close(stacked, run(reference_model(model, arch, dict.fromkeys(names, 1.0)), inputs), atol=3e-5, rtol=1e-4)
    weights = [0.5, -0.25, 1.5]
    averaged = run(model, inputs, Average("oft", "loha", "lora", weights=weights, normalize_weights=False))
    expected = run(reference_model(model, arch, dict(zip(["oft", "loha", "lora"], weights))), inputs)
    torch.testing.assert_close(averaged, expected, atol=3e-5, rtol=1e-4)


def test_parallel_batchsplit_and_split_give_each_slice_its_adapter():
    model = patched("llama")
    _add(model, "oft", "oft")
    _add(model, "loha", "loha")
    inputs = make_inputs("llama", batch=2)
    single = {n: run(model, inputs, n) for n in ("oft", "loha")}
    parallel = run(model, inputs, Parallel("oft", "loha"))
    torch.testing.assert_close(parallel[:2], single["oft"], atol=1e-5, rtol=0)
    torch.testing.assert_close(parallel[2:], single["loha"], atol=1e-5, rtol=0)
    split = run(model, inputs, BatchSplit("oft", "loha", batch_sizes=[1, 1]))
    torch.testing.assert_close(split[:1], single["oft"][:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(split[1:], single["loha"][1:], atol=1e-5, rtol=0)
    model.add_adapter("bn", config=SeqBnConfig(reduction_factor=4))
    perturb_adapter(model, "bn", scale=0.2)
    mixed = run(model, inputs, Parallel("oft", "bn"))
    torch.testing.assert_close(mixed[2:], run(model, inputs, "bn"), atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[:2], single["oft"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("first,second", [("oft", "lokr"), ("hra", "adalora"), ("loha", "oft")])
def test_split_routes_sequence_segments(first, second):
    # only the FFN output projection of the last layer: position-wise after attention, so segments compare directly
    model = patched("bert")
    last = {"selfattn_lora": False, "output_lora": True, "leave_out": [0]}
    _add(model, first, first, **last)
    _add(model, second, second, **last)
    inputs = make_inputs("bert")
    out = run(model, inputs, Split(first, second, splits=[4, 8]))
    torch.testing.assert_close(out[:, :4], run(model, inputs, first)[:, :4], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 4:], run(model, inputs, second)[:, 4:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_average_of_hra_lokr_and_adalora_equals_its_definition(arch):
    # the composition table of docs/peft_methods.rst claims W + Σ_i w_i ΔW_i(W) for every method
    model = patched(arch)
    names = ["hra", "lokr", "adalora", "hra_gs"]
    for name in names:
        _add(model, name, name)
    inputs = make_inputs(arch)
    weights = [0.3, -0.5, 1.2, 0.4]
    averaged = run(model, inputs, Average(*names, weights=weights, normalize_weights=False))
    expected = run(reference_model(model, arch, dict(zip(names, weights))), inputs)
    torch.testing.assert_close(averaged, expected, atol=3e-5, rtol=1e-4)
    normalised = run(model, inputs, Average("hra", "lokr", weights=[1.0, 3.0]))
    expected = run(reference_model(model, arch, {"hra": 0.25, "lokr": 0.75}), inputs)
    torch.testing.assert_close(normalised, expected, atol=3e-5, rtol=1e-4)


def test_stack_with_a_bottleneck_adapter_applies_the_bottleneck_to_the_transformed_layers():
    model = patched("bert")
    _add(model, "hra", "hra")
    _add(model, "lokr", "lokr")
    model.add_adapter("bn", config=SeqBnConfig(reduction_factor=4))
    perturb_adapter(model, "bn", scale=0.2)
    inputs = make_inputs("bert")
    out = run(model, inputs, Stack("hra", "bn", "lokr"))
    # independent: the weights set by definition, then the same bottleneck adapter alone
    reference = reference_model(model, "bert", {"hra": 1.0, "lokr": 1.0})
    adapters.init(reference)
    reference.add_adapter("bn", config=SeqBnConfig(reduction_factor=4))
    source = {k: v for k, v in model.state_dict().items() if ".bn." in k}
    reference.load_state_dict(source, strict=False)
    torch.testing.assert_close(out, run(reference, inputs, "bn"), atol=3e-5, rtol=1e-4)


def test_fuse_of_weight_transforms_is_refused():
    from adapters import Fuse

    model = patched("bert")
    _add(model, "a", "loha")
    _add(model, "b", "oft")
    with pytest.raises(ValueError, match="fusion"):
        model.add_adapter_fusion(Fuse("a", "b"))


# -- merging -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("method", METHODS)
def test_merge_unmerge_round_trip(arch, method):
    model = patched(arch)
    _add(model, "a", method)
    model.set_active_adapters("a")
    inputs = make_inputs(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = run(model, inputs)
    model.merge_adapter("a")
    torch.testing.assert_close(run(model, inputs), out, atol=2e-5, rtol=1e-4)
    model.reset_adapter()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("order", [["oft", "lora", "hra", "loha"], ["lora", "loha", "hra", "oft"]])
def test_merge_and_unload_of_a_mixed_stack_equals_the_unmerged_stack(order):
    model = patched("llama")
    for name in ("oft", "hra", "loha"):
        _add(model, name, name)
    model.add_adapter("lora", config=LoRAConfig(r=4))
    perturb_adapter(model, "lora", scale=0.2, seed=9)
    inputs = make_inputs("llama")
    model.set_active_adapters(Stack(*order))
    out = run(model, inputs)
    model.merge_adapter(order[0])  # one merged earlier: the others still act on the reference weight
    torch.testing.assert_close(run(model, inputs, Stack(*order[1:])), out, atol=3e-5, rtol=1e-4)
    plain = model.merge_and_unload(safe_merge=True, progressbar=False)
    assert type(plain).__name__ == "LlamaModel" and not hasattr(plain, "adapters_config")
    torch.testing.assert_close(run(plain, inputs), out, atol=3e-5, rtol=1e-4)


def test_merge_and_unload_with_adapter_names_unload_and_delete():
    model = patched("bert")
    _add(model, "a", "hra")
    _add(model, "b", "lokr")
    inputs = make_inputs("bert")
    reference = make_model("bert")
    expected_b = run(model, inputs, "b")
    model.delete_adapter("a")
    assert all("a" not in h.loras for h in model._adapter_hosts if h.method == "lora")
    model.merge_and_unload(adapter_names=["b"])
    torch.testing.assert_close(run(model, inputs), expected_b, atol=2e-5, rtol=1e-4)
    other = patched("bert")
    _add(other, "a", "oft")
    other.merge_adapter("a")
    plain = other.unload()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key], atol=1e-5, rtol=0)


def test_safe_merge_refuses_non_finite_and_leaves_the_model_unchanged():
    model = patched("bert")
    _add(model, "a", "loha")
    with torch.no_grad():
        next(h.loras["a"] for h in model._adapter_hosts if h.method == "lora" and "a" in h.loras).hada_w1_a.fill_(float("nan"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="NaN"):
        model.merge_and_unload(adapter_names=["a"], safe_merge=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) or (value.isnan() == before[key].isnan()).all()


# -- checkpoints -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_adapterhub_layout_round_trips_bit_for_bit(tmp_path, method):
    model = patched("gpt2")
    _add(model, "a", method)
    model.save_adapter(str(tmp_path), "a")
    other = patched("gpt2")
    name = other.load_adapter(str(tmp_path), set_active=True)
    assert other.adapters_config.adapters[name] == model.adapters_config.adapters["a"]
    mine = {k: v for k, v in model.state_dict().items() if ".loras.a." in k}
    theirs = {k.replace(f".loras.{name}.", ".loras.a."): v for k, v in other.state_dict().items() if f".loras.{name}." in k}
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    inputs = make_inputs("gpt2")
    torch.testing.assert_close(run(other, inputs), run(model, inputs, "a"), atol=0, rtol=0)


def test_peft_format_refuses_what_peft_cannot_load(tmp_path):
    model = patched("gpt2")
    _add(model, "a", "loha", target_modules=["c_attn"])
    with pytest.raises(ValueError, match="Conv1D"):
        model.save_adapter(str(tmp_path), "a", format="peft")


def test_configs_validate_and_round_trip():
    for config in CONFIGS.values():
        assert adapters.AdapterConfig.load(config.to_dict()) == config
        assert config.modules_to_save is None
    assert adapters.AdapterConfig.load("oft[oft_block_size=16]").oft_block_size == 16
    with pytest.raises(ValueError, match="exactly one of r"):
        OFTConfig(r=4)
    with pytest.raises(ValueError, match="positive"):
        LoHaConfig(r=0)
    with pytest.raises(ValueError, match="lycoris"):
        LoKrConfig(init_weights="gaussian")
    with pytest.raises(ValueError, match="budgeting phase"):
        AdaLoRAConfig(total_step=10, tinit=6, tfinal=4)
    model = patched("bert")
    with pytest.raises(ValueError, match="matches no linear layer"):
        model.add_adapter("a", config=HRAConfig(target_modules=["nonexistent"]))
    assert not model.adapters_config.adapters and not any(h.loras for h in model._adapter_hosts if hasattr(h, "loras"))


def test_training_moves_only_the_adapter_and_dropouts_act_in_training_only():
    model = patched("bert")
    model.add_adapter("a", config=LoHaConfig(r=4, rank_dropout=0.5, module_dropout=0.5))
    perturb_adapter(model, "a", scale=0.2)
    model.train_adapter("a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".loras.a." in n for n in trainable)
    inputs = make_inputs("bert")
    outs = {tuple(model(**inputs).last_hidden_state.flatten()[:5].tolist()) for _ in range(6)}
    assert len(outs) > 1  # random dropout in training
    model.eval()
    assert len({tuple(run(model, inputs).flatten()[:5].tolist()) for _ in range(3)}) == 1


# -- AdaLoRA -------------------------------------------------------------------------------------------------
def _cubic_budget(step, b0, bt, tinit, tfinal, total):
    if step <= tinit:
        return b0
    if step > total - tfinal:
        return bt
    return int((b0 - bt) * (1 - (step - tinit) / (total - tfinal - tinit)) ** 3 + bt)


def _train_adalora(model, steps: int, callback=None):
    inputs = make_inputs("bert")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    budgets = []
    for step in range(steps):
        loss = model(**inputs).last_hidden_state.pow(2).mean()
        loss.backward()
        optimizer.step()
        if callback is None:
            model.update_and_allocate(step)
        else:
            callback.on_optimizer_step(None, SimpleNamespace(global_step=step), None, model=model)
        optimizer.zero_grad()
        budgets.append(sum(model.adalora_ranks("ada").values()))
    return budgets


@pytest.mark.parametrize("use_callback", [False, True])
def test_adalora_budget_follows_the_cubic_schedule_and_reaches_the_target_by_tfinal(use_callback):
    config = AdaLoRAConfig(init_r=6, target_r=2, tinit=2, tfinal=3, total_step=12, target_modules=["query", "value", "key"])
    model = patched("bert")
    model.add_adapter("ada", config=config)
    perturb_adapter(model, "ada", scale=0.2)
    model.train_adapter("ada")
    layers = len(model.adalora_ranks("ada"))
    b0, bt = 6 * layers, 2 * layers
    budgets = _train_adalora(model, 12, AdaLoraCallback() if use_callback else None)
    for step, budget in enumerate(budgets):
        expected = _cubic_budget(step, b0, bt, config.tinit, config.tfinal, config.total_step)
        assert budget == expected, (step, budget, expected)
    assert budgets[config.total_step - config.tfinal] == bt
    allocator = model.__dict__["_adapters_adalora_allocators"]["ada"]
    assert [allocator.budget_schedule(s)[0] for s in range(12)] == [
        _cubic_budget(s, b0, bt, config.tinit, config.tfinal, config.total_step) for s in range(12)
    ]


def test_adalora_orthogonal_regulariser_is_added_to_the_training_loss():
    from transformers import BertForMaskedLM

    from conftest import CONFIGS as MODEL_CONFIGS

    torch.manual_seed(0)
    model = BertForMaskedLM(MODEL_CONFIGS["bert"]())
    adapters.init(model)
    model.add_adapter("ada", config=AdaLoRAConfig(init_r=4, target_r=2, total_step=10, orth_reg_weight=0.3))
    perturb_adapter(model, "ada", scale=0.2)
    model.train_adapter("ada")
    model.train(False)  # deterministic; the regulariser is added in training mode only
    inputs = make_inputs("bert")
    labels = inputs["input_ids"]
    plain = model(**inputs, labels=labels).loss
    model.train(True)
    regularised = model(**inputs, labels=labels).loss
    modules = [h.loras["ada"] for h in model._adapter_hosts if h.method == "lora" and "ada" in h.loras]
    terms = []
    for m in modules:
        a, b = m.lora_A.detach(), m.lora_B.detach()
        terms += [torch.linalg.norm(a @ a.t() - torch.eye(4)), torch.linalg.norm(b.t() @ b - torch.eye(4))]
    torch.testing.assert_close(regularised - plain, 0.3 * torch.stack(terms).mean(), atol=1e-5, rtol=1e-4)
    regularised.backward()
    assert modules[0].lora_A.grad is not None


def test_update_and_allocate_needs_an_adalora_adapter():
    model = patched("bert")
    _add(model, "a", "loha")
    model.set_active_adapters("a")
    with pytest.raises(ValueError, match="AdaLoRA adapter"):
        model.update_and_allocate(0)
    model.add_adapter("ada", config=AdaLoRAConfig())
    with pytest.raises(ValueError, match="total_step"):
        model.update_and_allocate(0, adapter_name="ada")


def test_weight_transforms_share_one_host_with_lora():
    model = patched("bert")
    model.add_adapter("lora", config=LoRAConfig(r=2))
    _add(model, "oft", "oft")
    query = model.encoder.layer[0].attention.self.query
    assert set(query.loras) == {"lora", "oft"} and isinstance(query.loras["oft"], WeightTransform)
    assert "encoder.layer.0.attention.self.query.loras.oft.oft_R" in dict(model.named_parameters())


def test_modules_to_save_travels_with_a_weight_transform_through_peft(tmp_path):
    from peft import PeftModel

    from conftest import checked_peft_output, main_output

    model, reference = make_model("bert", "seq_cls"), make_model("bert", "seq_cls")
    adapters.init(model)
    model.add_adapter("a", config=HRAConfig(r=4, modules_to_save=["classifier"]), set_active=True)
    perturb_adapter(model, "a", scale=0.2)
    with torch.no_grad():
        for param in model.classifier.modules_to_save["a"].parameters():
            param.add_(0.3)
    model.train_adapter("a")
    assert model.classifier.modules_to_save["a"].weight.requires_grad
    model.eval()
    inputs = make_inputs("bert")
    with torch.no_grad():
        ours = main_output(model(**inputs))
    model.save_adapter(str(tmp_path), "a", format="peft")
    again = make_model("bert", "seq_cls")
    adapters.init(again)
    again.load_adapter(str(tmp_path), load_as="b", set_active=True)
    torch.testing.assert_close(run(again, inputs), ours, atol=1e-6, rtol=1e-6)
    theirs, broken = checked_peft_output(PeftModel.from_pretrained(reference, str(tmp_path)).eval(), inputs)
    if broken:
        pytest.skip(broken)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
