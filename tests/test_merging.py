"""Merging into the weights, unloading, and weighted combinations, each against its definition
(see adapters/merging/): merged equals unmerged (per dtype), merge_and_unload leaves a plain
transformers model that reloads without adapters, unload is bit-identical, and every combination
type reproduces its formula computed by hand from the input adapters."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import NEW_ARCHS, make_inputs, make_model, patched, perturb_adapter, run

import adapters
from adapters import Average, IA3Config, LoRAConfig, Parallel, Stack
from adapters.merging import (
    MergingMixin,
    calculate_majority_sign_mask,
    dare_linear,
    dare_ties,
    disjoint_merge,
    magnitude_prune,
    prune,
    task_arithmetic,
    ties,
)

_API = ("unmerge_adapter", "merge_and_unload", "unload", "average_adapter", "add_weighted_adapter")


@pytest.fixture(autouse=True, scope="module")
def merging_api():
    """Until MergingMixin is among ModelAdaptersMixin's bases: lend its methods (harmless after)."""
    missing = [name for name in _API if not hasattr(adapters.ModelAdaptersMixin, name)]
    for name in missing:
        setattr(adapters.ModelAdaptersMixin, name, getattr(MergingMixin, name))
    yield
    for name in missing:
        delattr(adapters.ModelAdaptersMixin, name)


FULL = {"attn_matrices": ["q", "k", "v", "o"], "intermediate_lora": True, "output_lora": True}






def with_loras(arch="bert", configs=None, head="base"):
    model = patched(arch, head)
    configs = configs or {"a": LoRAConfig(r=4, **FULL), "b": LoRAConfig(r=4, alpha=8, **FULL)}
    for i, (name, config) in enumerate(configs.items()):
        model.add_adapter(name, config=config)
        perturb_adapter(model, name, scale=0.3, seed=11 * i)
    return model


def modules_of(model, name):
    """``{host: LoRA module}`` of adapter ``name``."""
    return {h: h.loras[name] for h in model._adapter_hosts if h.method == "lora" and name in h.loras}


def weighted_delta(host, names, weights):
    return sum(w * host.loras[n].delta_weight() for n, w in zip(names, weights) if n in host.loras)


def assert_plain(model, arch, head="base", fresh=None):
    """No trace of the library: same module tree, classes, instance attributes and keys as a
    freshly built model of the same architecture."""
    fresh = fresh if fresh is not None else make_model(arch, head)
    ours, theirs = dict(model.named_modules()), dict(fresh.named_modules())
    assert ours.keys() == theirs.keys()
    for path, module in ours.items():
        assert type(module) is type(theirs[path]), path
        extra = module.__dict__.keys() ^ theirs[path].__dict__.keys()
        assert not extra, (path, extra)
    assert model.state_dict().keys() == fresh.state_dict().keys()
    assert not any(type(m).__module__.startswith("adapters") for m in model.modules())


# -- merge utilities -------------------------------------------------------------------------------


def test_magnitude_pruning_keeps_exactly_the_largest_entries():
    tensor = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    for density in (0.0, 0.1, 0.35, 0.5, 1.0):
        pruned = prune(tensor, density)
        k = int(density * tensor.numel())
        assert int((pruned != 0).sum()) == k
        kept = tensor.abs().flatten().sort(descending=True).values[:k]
        assert torch.equal(pruned.abs().flatten().sort(descending=True).values[:k], kept)
        assert torch.equal(pruned[pruned != 0], tensor[pruned != 0])  # survivors unchanged
    assert torch.equal(magnitude_prune([tensor, -tensor], [0.5, 0.25], 0.5), 0.25 * prune(tensor, 0.5))
    with pytest.raises(ValueError, match="density must be in"):
        prune(tensor, -0.1)


def test_ties_elects_the_sign_by_total_magnitude_and_averages_agreeing_entries():
    t1 = torch.tensor([2.0, -1.0, 0.5, 0.0])
    t2 = torch.tensor([-1.0, -3.0, 1.0, 0.0])
    t3 = torch.tensor([-0.5, 4.0, 0.0, 0.0])
    # elected signs (sum): +, +, +, + (0 elects +) ; agreeing: [t1], [t3], [t1, t2], none
    mask = calculate_majority_sign_mask(torch.stack([t1, t2, t3]))
    assert torch.equal(mask[:, 0], torch.tensor([True, False, False]))
    weights = [1.0, 2.0, 0.5]
    expected = torch.tensor([2.0, 0.5 * 4.0, (0.5 + 2.0 * 1.0) / 2, 0.0])
    assert torch.allclose(ties([t1, t2, t3], weights, density=1.0), expected)
    # "frequency": two of three are negative in entry 0
    mask = calculate_majority_sign_mask(torch.stack([t1, t2, t3]), "frequency")
    assert torch.equal(mask[:, 0], torch.tensor([False, True, True]))
    assert torch.allclose(disjoint_merge(torch.stack([t1, t2]), mask[:2]), torch.tensor([-1.0, -2.0, 0.75, 0.0]))
    # trimming first: density 0.5 keeps the 2 largest of each
    trimmed = [prune(t, 0.5) for t in (t1, t2, t3)]
    assert torch.allclose(ties([t1, t2, t3], weights, 0.5), ties(trimmed, weights, 1.0))


def test_dare_drops_with_probability_one_minus_density_and_rescales():
    tensor = torch.randn(200, 50)
    torch.manual_seed(3)
    merged = dare_linear([tensor], [1.0], density=0.25)
    torch.manual_seed(3)
    assert torch.equal(dare_linear([tensor], [1.0], density=0.25), merged)  # deterministic given the seed
    kept = merged != 0
    assert torch.allclose(merged[kept], tensor[kept] / 0.25)
    assert abs(kept.float().mean().item() - 0.25) < 0.02
    torch.manual_seed(3)
    expected = task_arithmetic([prune(tensor, 0.25, "random", rescale=True)], [1.0])
    assert torch.equal(merged, expected)
    torch.manual_seed(4)
    a = dare_ties([tensor, -tensor * 0.5], [1.0, 1.0], 0.5)
    torch.manual_seed(4)
    pruned = [prune(t, 0.5, "random", rescale=True) for t in (tensor, -tensor * 0.5)]
    assert torch.equal(a, ties(pruned, [1.0, 1.0], 1.0))


# -- add_weighted_adapter ----------------------------------------------------------------------------


def test_cat_reproduces_the_weighted_sum_of_deltas_exactly_on_the_union_of_layers():
    configs = {
        "a": LoRAConfig(r=4, intermediate_lora=True),
        "b": LoRAConfig(r=2, alpha=6, output_lora=True, attn_matrices=["q"]),
    }
    model = with_loras("llama", configs)
    weights = [0.7, -0.4]
    model.add_weighted_adapter(["a", "b"], weights, "c", combination_type="cat")
    config = model.adapters_config.adapters["c"]
    assert config.r == 6 and config.alpha == 6  # rank Σ r_i, scaling 1
    new = modules_of(model, "c")
    assert set(new) == set(modules_of(model, "a")) | set(modules_of(model, "b"))  # every layer either adapts
    for host, lora in new.items():
        assert lora.scaling == 1.0
        torch.testing.assert_close(lora.delta_weight(), weighted_delta(host, "ab", weights), atol=1e-6, rtol=0)
    # the model computes W + Σ w_i ΔW_i: fold that in by hand and compare outputs
    inputs = make_inputs("llama")
    combined = run(model, inputs, "c")
    with torch.no_grad():
        for host in new:
            host.weight.add_(weighted_delta(host, "ab", weights))
    torch.testing.assert_close(run(model, inputs), combined, atol=1e-5, rtol=1e-5)


def test_cat_equals_the_average_block_when_placements_agree():
    model = with_loras("bert")
    model.add_weighted_adapter(["a", "b"], [0.25, 0.75], "c", combination_type="cat")
    inputs = make_inputs("bert")
    average = run(model, inputs, Average("a", "b", weights=[0.25, 0.75]))
    torch.testing.assert_close(run(model, inputs, "c"), average, atol=1e-5, rtol=1e-5)


def test_svd_is_exact_at_full_rank_and_within_the_truncation_error_below():
    model = with_loras("bert")
    weights = [0.6, 0.9]
    model.add_weighted_adapter(["a", "b"], weights, "full", combination_type="svd", svd_rank=100)
    assert model.adapters_config.adapters["full"].r == 32  # capped at the largest min(d_out, d_in)
    model.add_weighted_adapter(["a", "b"], weights, "r3", combination_type="svd", svd_rank=3)
    model.add_weighted_adapter(["a", "b"], weights, "default", combination_type="svd")
    assert model.adapters_config.adapters["default"].r == 4  # the largest input rank
    for host, lora in modules_of(model, "full").items():
        target = weighted_delta(host, "ab", weights)
        torch.testing.assert_close(lora.delta_weight(), target, atol=2e-5, rtol=0)
        singular = torch.linalg.svdvals(target)
        error = torch.linalg.matrix_norm(host.loras["r3"].delta_weight() - target)
        assert error <= singular[3:].norm() * (1 + 1e-4) + 1e-5  # Eckart–Young: the optimum
        assert torch.linalg.matrix_rank(host.loras["r3"].delta_weight(), atol=1e-4) <= 3


def test_linear_scales_both_factors_by_the_root_of_weight_times_scaling():
    model = with_loras("bert")
    weights = [0.3, 0.5]
    model.add_weighted_adapter(["a", "b"], weights, "lin", combination_type="linear")
    assert model.adapters_config.adapters["lin"].r == 4
    for host, lora in modules_of(model, "lin").items():
        a, b = host.loras["a"], host.loras["b"]
        ca, cb = math.sqrt(weights[0] * a.scaling), math.sqrt(weights[1] * b.scaling)
        torch.testing.assert_close(lora.lora_A, ca * a.lora_A + cb * b.lora_A)
        torch.testing.assert_close(lora.lora_B, ca * a.lora_B + cb * b.lora_B)
    # one adapter: exactly w ΔW (PEFT turns every type into linear)
    model.add_weighted_adapter(["a"], [0.4], "one", combination_type="ties", density=0.1)
    model.add_weighted_adapter(["a"], [-2.0], "neg")  # negative weight: cat, no square root
    for host, lora in modules_of(model, "one").items():
        delta = host.loras["a"].delta_weight()
        torch.testing.assert_close(lora.delta_weight(), 0.4 * delta, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(host.loras["neg"].delta_weight(), -2.0 * delta, atol=1e-6, rtol=1e-5)


MERGES = {"ties": ties, "dare_linear": dare_linear, "dare_ties": dare_ties, "magnitude_prune": magnitude_prune}


@pytest.mark.parametrize("kind", ["ties", "dare_linear", "dare_ties", "magnitude_prune"])
def test_task_vector_types_apply_their_merge_to_A_and_B(kind):
    merge = MERGES[kind]
    extra = {} if kind in ("dare_linear", "magnitude_prune") else {"majority_sign_method": "total"}
    model = with_loras("bert")
    weights, density = [0.5, 1.5], 0.5
    torch.manual_seed(0)
    model.add_weighted_adapter(["a", "b"], weights, "m", combination_type=kind, density=density)
    torch.manual_seed(0)  # the same draws, in the same order (per layer: A, then B)
    for host, lora in modules_of(model, "m").items():
        a, b = host.loras["a"], host.loras["b"]
        c = [math.sqrt(weights[0] * a.scaling), math.sqrt(weights[1] * b.scaling)]
        torch.testing.assert_close(lora.lora_A, merge([a.lora_A, b.lora_A], c, density, **extra))
        torch.testing.assert_close(lora.lora_B, merge([a.lora_B, b.lora_B], c, density, **extra))
        if kind == "magnitude_prune":  # each input kept ⌊density·n⌋ entries: at most twice that survive
            assert int((lora.lora_A != 0).sum()) <= 2 * int(density * a.lora_A.numel())
    torch.manual_seed(0)
    model.add_weighted_adapter(["a", "b"], weights, "again", combination_type=kind, density=density)
    for host, lora in modules_of(model, "m").items():
        assert torch.equal(lora.lora_A, host.loras["again"].lora_A)  # deterministic with a seed


@pytest.mark.parametrize("kind", ["ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd"])
def test_svd_task_vector_types_merge_the_deltas_then_decompose(kind):
    merge = MERGES[kind.removesuffix("_svd")]
    model = with_loras("bert")
    weights, density = [0.5, -1.0], 0.3
    torch.manual_seed(1)
    model.add_weighted_adapter(["a", "b"], weights, "m", combination_type=kind, density=density, svd_rank=64)
    torch.manual_seed(1)
    for host, lora in modules_of(model, "m").items():
        expected = merge([host.loras["a"].delta_weight(), host.loras["b"].delta_weight()], weights, density)
        torch.testing.assert_close(lora.delta_weight(), expected, atol=2e-5, rtol=0)  # full rank: exact
    if kind == "magnitude_prune_svd":  # one input: the kept count is exact
        model.add_weighted_adapter(["a", "b"], [1.0, 0.0], "one", combination_type=kind, density=0.25, svd_rank=64)
        for host, lora in modules_of(model, "one").items():
            n = host.loras["a"].delta_weight().numel()
            assert int((lora.delta_weight().abs() > 1e-4).sum()) == int(0.25 * n)


def test_ia3_combines_its_scaling_vectors_linearly():
    model = with_loras("llama", {"a": IA3Config(), "b": IA3Config(alpha=2)})
    model.add_weighted_adapter(["a", "b"], [0.25, 0.5], "c", combination_type="linear")
    for host, lora in modules_of(model, "c").items():
        torch.testing.assert_close(lora.delta_weight(), weighted_delta(host, "ab", [0.25, 0.5]))
    with pytest.raises(ValueError, match="combine with combination_type='linear' only"):
        model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "d", combination_type="svd")


def test_add_weighted_adapter_refusals_leave_the_model_unchanged():
    configs = {"a": LoRAConfig(r=4), "b": LoRAConfig(r=2), "g": LoRAConfig(use_gating=True), "i": IA3Config()}
    model = with_loras("bert", configs)
    model.add_adapter("bn", config="seq_bn")
    before = set(model.state_dict())
    cases = [  # (adapters, weights, options, message)
        ("ab", [1, 1], {"combination_type": "linear"}, "needs equal ranks"),
        ("ab", [1, -1], {"combination_type": "ties", "density": 0.5}, "non-negative weights"),
        ("ab", [1, 1], {"combination_type": "dare_ties_svd"}, "needs density"),
        ("ab", [1, 1], {"combination_type": "magic"}, "Invalid combination_type"),
        ("ag", [1, 1], {"combination_type": "cat"}, "gated"),
        (["a", "bn"], [1, 1], {"combination_type": "cat"}, "LoRA / \\(IA\\)³ adapters only"),
        ("ai", [1, 1], {"combination_type": "cat"}, "cannot combine LoRA \\('add'\\) and"),
        ("ax", [1, 1], {}, "No adapter named 'x'"),
        ("ab", [1], {}, "one weight per adapter"),
        ("ab", [1, 1], {"adapter_name": "a"}, "exists already"),
    ]
    for names, weights, options, message in cases:
        options.setdefault("adapter_name", "new")
        with pytest.raises(ValueError, match=message):
            model.add_weighted_adapter(list(names), weights, **options)
    assert set(model.state_dict()) == before and "new" not in model.adapters_config.adapters
    if hasattr(adapters, "DoRAConfig"):
        model.add_adapter("d", config=adapters.DoRAConfig(r=4))
        with pytest.raises(ValueError, match="DoRA"):
            model.add_weighted_adapter(["a", "d"], [1, 1], "new", combination_type="cat")


# -- average_adapter ----------------------------------------------------------------------------------


COMPACTER = adapters.AdapterConfig.load("compacter", reduction_factor=4)


DORA = getattr(adapters, "DoRAConfig", None)


@pytest.mark.parametrize(
    "config",
    [
        "seq_bn",
        COMPACTER,
        LoRAConfig(r=4, use_gating=True),
        IA3Config(),
        pytest.param(DORA and DORA(r=4), marks=pytest.mark.skipif(DORA is None, reason="no DoRA in this version")),
    ],
    ids=["seq_bn", "compacter", "gated_lora", "ia3", "dora"],
)
def test_linear_average_is_the_weighted_mean_of_every_parameter(config):
    model = patched("bert")
    for i, name in enumerate("abc"):
        model.add_adapter(name, config=config)
        perturb_adapter(model, name, scale=0.3, seed=5 * i)
    model.average_adapter("avg", ["a", "b", "c"], weights=[1.0, 2.0, 1.0])
    weights = [0.25, 0.5, 0.25]  # normalised
    assert model.adapters_config.adapters["avg"] == model.adapters_config.adapters["a"]
    new = dict(zip(["a", "b", "c", "avg"], [model._adapter_parameters(n) for n in ["a", "b", "c", "avg"]]))
    assert len(new["avg"]) == len(new["a"]) > 0  # includes Compacter's shared parameters
    for i, param in enumerate(new["avg"]):
        torch.testing.assert_close(param, sum(w * new[n][i] for n, w in zip("abc", weights)))
    model.average_adapter("sum", {"a": 1.0, "b": -1.0}, normalize_weights=False)
    for p, pa, pb in zip(model._adapter_parameters("sum"), new["a"], new["b"]):
        torch.testing.assert_close(p, pa - pb)


def test_lora_specific_average_strategies():
    model = with_loras("bert")
    model.average_adapter("neg", ["a", "b"], weights=[2.0, -1.0], combine_strategy="lora_linear_only_negate_b")
    model.average_adapter("svd", ["a", "b"], weights=[0.3, 0.7], combine_strategy="lora_delta_w_svd", svd_rank=64)
    model.average_adapter("svd2", ["a", "b"], combine_strategy="lora_delta_w_svd", svd_rank=2)
    assert model.adapters_config.adapters["svd"].r == 64 and model.adapters_config.adapters["svd2"].alpha == 8
    for host, lora in modules_of(model, "neg").items():
        a, b = host.loras["a"], host.loras["b"]
        torch.testing.assert_close(lora.lora_A, 2.0 * a.lora_A + 1.0 * b.lora_A)  # |w_i|
        torch.testing.assert_close(lora.lora_B, 2.0 * a.lora_B - 1.0 * b.lora_B)  # w_i
        target = weighted_delta(host, "ab", [0.3, 0.7])  # scalings of inputs and result accounted for
        torch.testing.assert_close(host.loras["svd"].delta_weight(), target, atol=2e-5, rtol=0)
        half = weighted_delta(host, "ab", [0.5, 0.5])
        error = torch.linalg.matrix_norm(host.loras["svd2"].delta_weight() - half)
        assert error <= torch.linalg.svdvals(half)[2:].norm() * (1 + 1e-4) + 1e-5


def test_average_adapter_refusals():
    configs = {"a": LoRAConfig(r=4), "b": LoRAConfig(r=4, dropout=0.1), "c": LoRAConfig(r=2), "i": IA3Config()}
    model = with_loras("bert", configs)
    model.add_adapter("bn", config="seq_bn")
    before = set(model.state_dict())
    with pytest.raises(ValueError, match="different configurations"):
        model.average_adapter("x", ["a", "c"])
    with pytest.raises(ValueError, match="needs svd_rank"):
        model.average_adapter("x", ["a", "b"], combine_strategy="lora_delta_w_svd")
    with pytest.raises(ValueError, match="use 'linear' for"):
        model.average_adapter("x", ["i"], combine_strategy="lora_linear_only_negate_b")
    with pytest.raises(ValueError, match="LoRA / \\(IA\\)³ adapters only"):
        model.average_adapter("x", ["bn"], combine_strategy="lora_delta_w_svd", svd_rank=2)
    with pytest.raises(ValueError, match="sum to 0"):
        model.average_adapter("x", ["a", "b"], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="exists already"):
        model.average_adapter("c", ["a", "b"])
    assert set(model.state_dict()) == before
    model.average_adapter("ab", ["a", "b"], set_active=True)  # dropout differs: allowed, as AdapterHub
    assert model.active_adapters == Stack("ab")


# -- merge_and_unload / unload / unmerge ----------------------------------------------------------------


_CHILD = textwrap.dedent(
    """
    import json, sys, torch, transformers
    cases = json.loads(sys.argv[1])
    for case in cases:
        model = getattr(transformers, case["auto"]).from_pretrained(case["dir"]).eval()
        data = torch.load(case["io"])
        with torch.no_grad():
            out = model(**data["inputs"])
        out = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        diff = (out - data["expected"]).abs().max().item()
        assert diff <= 1e-5, (case["dir"], diff)
    assert "adapters" not in sys.modules, "the child imported adapters"
    print("ok")
    """
)


def test_merge_and_unload_round_trips_through_a_process_without_adapters(tmp_path):
    cases = []
    models = (("bert", "seq_cls", "AutoModelForSequenceClassification"), ("llama", "clm", "AutoModelForCausalLM"))
    for arch, head, auto in models:
        model = with_loras(arch, {"a": LoRAConfig(r=4, **FULL), "i": IA3Config()}, head=head)
        model.add_adapter("bn", config="seq_bn")  # inactive: discarded
        model.set_active_adapters(Stack("a", "i"))
        inputs = make_inputs(arch)
        expected = run(model, inputs)
        merged = model.merge_and_unload()
        assert merged is model and type(model).__name__ == type(make_model(arch, head)).__name__
        assert_plain(model, arch, head)
        torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)
        directory = tmp_path / arch
        model.save_pretrained(directory)
        torch.save({"inputs": inputs, "expected": expected}, tmp_path / f"{arch}.pt")
        cases.append({"auto": auto, "dir": str(directory), "io": str(tmp_path / f"{arch}.pt")})
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    command = [sys.executable, "-c", _CHILD, json.dumps(cases)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_unload_gives_back_the_original_model_bit_for_bit():
    original = make_model("distilbert")
    inputs = make_inputs("distilbert")
    expected = run(original, inputs)
    state = {k: v.clone() for k, v in original.state_dict().items()}
    model = patched("distilbert")
    model.add_adapter("a", config=LoRAConfig(r=4, **FULL), set_active=True)
    model.add_adapter("bn", config=COMPACTER)
    perturb_adapter(model, "a")
    model.train_adapter("a")
    model.eval()
    assert not torch.equal(run(model, inputs), expected)
    assert model.unload() is model
    assert_plain(model, "distilbert")
    assert torch.equal(run(model, inputs), expected)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "dtype, atol",
    [(torch.float32, 5e-5), (torch.float16, 5e-2), (torch.bfloat16, 5e-1)],
    ids=["fp32", "fp16", "bf16"],
)
@pytest.mark.parametrize("arch", ["bert", "llama", *NEW_ARCHS, "bart"])  # T5: unscaled attention logits amplify half-precision rounding past these bounds
def test_merging_changes_outputs_only_by_the_dtype_rounding(arch, dtype, atol):
    model = make_model(arch).to(dtype)
    adapters.init(model)
    model.add_adapter("a", config=LoRAConfig(r=4, **FULL), set_active=True)
    perturb_adapter(model, "a", scale=0.3)
    eps = torch.finfo(dtype).eps
    exact = {}  # W + s·B A in float64 from the dtype's tensors, and the rounding allowed
    for host, lora in modules_of(model, "a").items():
        A, B = (factor.double() for factor in lora.dense_factors())  # fused parts (Phi-3): zero rows elsewhere
        merged = host.weight.double() + lora.scaling * (B @ A)
        # rounding of the sum, plus that of the rank-r dot products and the scaling (standard bound)
        exact[host] = (merged, eps * (merged.abs() + (lora.r + 2) * lora.scaling * (B.abs() @ A.abs())))
    inputs = make_inputs(arch)
    unmerged = run(model, inputs).float()
    model.merge_and_unload()
    assert all(p.dtype == dtype for p in model.parameters())
    for host, (merged, allowed) in exact.items():  # each merged weight: the exact one, rounded
        assert ((host.weight.double() - merged).abs() <= allowed).all()
    merged_out = run(model, inputs).float()
    error = (merged_out - unmerged).abs().max().item()
    # relative to the output's scale (CLIP's vision tower returns its last states unnormalised)
    assert error <= atol * unmerged.abs().max().clamp(min=1).item(), error
    plain = make_model(arch).to(dtype)
    assert (run(plain, inputs).float() - merged_out).abs().max() > 5 * atol  # the merge did something


def test_safe_merge_names_the_adapter_and_module_and_changes_nothing():
    model = with_loras("bert", {"a": LoRAConfig(r=4, **FULL), "b": LoRAConfig(r=4)})
    model.set_active_adapters(Stack("a", "b"))
    query = model.encoder.layer[1].attention.self.query
    with torch.no_grad():
        query.loras["b"].lora_B[0, 0] = float("nan")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="adapter 'b' into module 'encoder.layer.1.attention.self.query'.*NaN/inf"):
        model.merge_and_unload(safe_merge=True)
    assert all(torch.equal(v, weights[k]) or v.isnan().any() for k, v in model.state_dict().items())
    assert all(not h.merged for h in model._adapter_hosts if h.method == "lora")
    assert model.active_adapters == Stack("a", "b") and hasattr(query, "loras")
    with torch.no_grad():
        query.loras["b"].lora_B[0, 0] = 0.0
    inputs = make_inputs("bert")
    expected = run(model, inputs)
    model.merge_and_unload(safe_merge=True)
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)


def test_progressbar_reports_the_merge(capsys):
    model = with_loras("bert")
    model.set_active_adapters("a")
    model.merge_and_unload(progressbar=True)
    assert "Unloading and merging model" in capsys.readouterr().err
    model = with_loras("bert")
    model.set_active_adapters("a")
    model.merge_and_unload()
    assert "Unloading and merging" not in capsys.readouterr().err


def test_merge_and_unload_refuses_what_cannot_merge_and_changes_nothing():
    model = with_loras("bert", {"a": LoRAConfig(r=4), "b": LoRAConfig(r=4), "g": LoRAConfig(use_gating=True)})
    model.add_adapter("bn", config="seq_bn")
    perturb_adapter(model, "bn")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [
        ("g", None, "gated"),
        (Parallel("a", "b"), None, "contains the block Parallel"),
        (Average("a", "b", weights=[0.5, 0.5]), None, "add_weighted_adapter first"),
        (Stack("a", "bn"), None, "'bn': its bottleneck part has no weight"),
        ("a", ["a", "bn"], "'bn': its bottleneck part"),
        (None, ["nope"], "No adapter named 'nope'"),
    ]
    for setup, names, message in cases:
        model.set_active_adapters(setup)
        with pytest.raises(ValueError, match=message):
            model.merge_and_unload(adapter_names=names)
        assert model.state_dict().keys() == weights.keys()
        assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    model.set_active_adapters(Parallel("a", "b"))
    inputs = make_inputs("bert")
    expected = run(model, inputs, "b")
    model.merge_and_unload(adapter_names=["b"])  # explicit names: the active setup is not consulted
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)


def test_without_an_active_setup_every_lora_adapter_is_merged_and_skip_layers_are_respected():
    model = with_loras("llama")
    model.add_adapter("bn", config="seq_bn")  # never active: dropped
    inputs = make_inputs("llama")
    expected = run(model, inputs, Stack("a", "b"))
    model.merge_and_unload()
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)
    model = with_loras("llama")
    model.set_active_adapters("a", skip_layers=[0])
    expected = run(model, inputs)
    model.merge_and_unload()
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)


def test_unmerge_adapter_takes_out_only_the_named_adapters():
    model = with_loras("bert", {"a": LoRAConfig(r=4, **FULL), "i": IA3Config()})
    inputs = make_inputs("bert")
    base, only_i = run(model, inputs), run(model, inputs, "i")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.merge_adapter("a")
    model.merge_adapter("i")  # (W + ΔW_a) · l: the merges do not commute
    model.unmerge_adapter("a")
    assert all(h.merged == ["i"] for h in modules_of(model, "i"))
    torch.testing.assert_close(run(model, inputs), only_i, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(run(model, inputs), base, atol=1e-5, rtol=1e-5)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="No adapter named"):
        model.unmerge_adapter(["nope"])


def test_merged_adapters_stay_merged_and_checkpointing_is_unwrapped():
    def build():
        model = make_model("llama")
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        return model

    model = build()
    adapters.init(model)
    model.add_adapter("a", config=LoRAConfig(r=4))
    perturb_adapter(model, "a")
    inputs = make_inputs("llama")
    expected = run(model, inputs, "a")
    model.merge_adapter("a")
    def is_wrapped(module):
        return getattr(module.__dict__.get("_gradient_checkpointing_func"), "_adapters_context_aware", False)

    wrapped = [m for m in model.modules() if is_wrapped(m)]
    assert wrapped
    model.merge_and_unload(adapter_names=[])
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)
    assert not any(is_wrapped(m) for m in wrapped)
    assert_plain(model, "llama", fresh=build())


@pytest.mark.skipif(DORA is None, reason="no DoRA in this version")
@pytest.mark.parametrize(
    "config",
    [DORA and DORA(r=4, **FULL), IA3Config(feedforward_modules=["output.dense"], output_lora=True)],
    ids=["dora", "ia3_input_scaling"],
)
def test_dora_and_input_scaling_ia3_merge_through_the_hosts(config):
    model = with_loras("bert", {"a": config})
    if config.composition_mode == "scale":
        assert any(lora.scale_input for lora in modules_of(model, "a").values())
    model.set_active_adapters("a")
    inputs = make_inputs("bert")
    expected = run(model, inputs)
    model.merge_and_unload(safe_merge=True)
    assert_plain(model, "bert")
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)
