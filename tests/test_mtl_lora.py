"""MTL-LoRA, the MultiTask block and share_parameters: each adapter against the method's
definition (written out here from the parameters, AdapterHub's formula), MultiTask rows against
the single adapters, compositions against their definitions, the checks of task ids and setups,
parameter sharing (training, saving, unsharing), merging, checkpoints and AdapterHub's fixtures."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import ARCHS, make_inputs, make_model, patched, perturb_adapter, reference_with_deltas, run

import adapters
from adapters import (
    AdapterConfig,
    AdapterSetup,
    Average,
    BatchSplit,
    Fuse,
    LoRAConfig,
    MTLLoRAConfig,
    MultiTask,
    MultiTaskConfig,
    Parallel,
    PrefixTuningConfig,
    SeqBnConfig,
    Split,
    Stack,
)
from adapters.errors import AdapterConfigError, CompositionError

CONFIG = MTLLoRAConfig(r=4, alpha=8, n_up_projection=3, weights_sharpness=0.5)
LINEAR = CONFIG.replace(task_specific_matrix_type="linear")
LIGHT = ("bert", "llama", "gpt2")  # an encoder, a decoder, a fused projection (GPT-2's c_attn)


# -- the definition, written out from the parameters ------------------------------------------------------
def mtl_delta(adapter, config) -> torch.Tensor:
    """``(α/r) · Σ_k exp(w_k/τ)/Σ_j exp(w_j/τ) · B_k Λᵀ A`` in float64, as AdapterHub computes it
    (``Λ = diag(values)`` or the full matrix)."""
    weights = torch.exp(adapter.weights.detach().double() / config.weights_sharpness)
    weights = weights / weights.sum()
    values = adapter.task_specific.values.detach().double()
    lam = torch.diag(values) if values.dim() == 1 else values
    a, b = adapter.lora_A.detach().double(), adapter.lora_B.detach().double()
    return (config.alpha / config.r) * sum(weights[k] * b[k] @ lam.t() @ a for k in range(b.shape[0]))


def reference_model(model, arch, deltas: dict, head="base"):
    """A fresh copy of the base model whose adapted weights are ``W + Σ_i w_i ΔW_i``;
    ``deltas``: adapter name -> (weight, function of the adapter module giving its ΔW)."""
    return reference_with_deltas(
        model, arch, {n: (w, lambda adapter, _, delta=delta: delta(adapter)) for n, (w, delta) in deltas.items()}, head
    )


def with_tasks(arch, names=("a", "b", "c"), config=CONFIG, head="base", seed=0):
    model = patched(arch, head)
    for index, name in enumerate(names):
        model.add_adapter(name, config=config)
        perturb_adapter(model, name, scale=0.3, seed=seed + 10 * index)
    return model


def forward(model, inputs, setup, **kwargs) -> torch.Tensor:
    from conftest import main_output

    with torch.no_grad(), AdapterSetup(setup):
        return main_output(model(**inputs, **kwargs))


# -- config ---------------------------------------------------------------------------------------------------
def test_config_has_adapterhubs_fields_defaults_and_id():
    config = MTLLoRAConfig()
    assert (config.r, config.alpha, config.n_up_projection, config.task_specific_matrix_type, config.weights_sharpness) == (
        8, 8, 1, "singular_values", 0.05
    )
    assert isinstance(config, MultiTaskConfig) and config.architecture == "mtl_lora"
    assert AdapterConfig.load("mtl_lora") == config
    assert AdapterConfig.load("mtl_lora", n_up_projection=2).n_up_projection == 2
    assert AdapterConfig.load(CONFIG.to_dict()) == CONFIG
    # AdapterHub's LoRA fields that MTL-LoRA implements only at their default: read there, refused otherwise
    saved = {**CONFIG.to_dict(), "composition_mode": "add", "use_gating": False, "use_dora": False, "dtype": None, "vera_d": None}
    assert AdapterConfig.load(saved) == CONFIG
    with pytest.raises(AdapterConfigError, match="use_gating=True"):
        AdapterConfig.load({**saved, "use_gating": True})


@pytest.mark.parametrize(
    "field, value, valid",
    [
        ("n_up_projection", 0, "positive integer"),
        ("r", 0, "positive integer"),
        ("r", -2, "positive integer"),
        ("weights_sharpness", 0, "> 0"),
        ("weights_sharpness", -0.5, "> 0"),
        ("task_specific_matrix_type", "diagonal", "'singular_values', 'linear'"),
        ("init_weights", "ia3", "'lora', 'bert', 'gaussian', False"),
        ("alpha", 0, "> 0"),
    ],
)
def test_config_refuses_bad_values_naming_field_value_and_range(field, value, valid):
    with pytest.raises(AdapterConfigError) as error:
        MTLLoRAConfig(**{field: value})
    message = str(error.value)
    assert field in message and repr(value) in message and valid in message


# -- a single adapter: its task's update ----------------------------------------------------------------------
@pytest.mark.parametrize("arch", LIGHT)
@pytest.mark.parametrize("config", [CONFIG, LINEAR], ids=["singular_values", "linear"])
def test_initialised_adapter_is_the_identity_and_trained_one_matches_its_definition(arch, config):
    model = patched(arch)
    inputs = make_inputs(arch)
    base = run(model, inputs)
    model.add_adapter("a", config=config, set_active=True)
    torch.testing.assert_close(run(model, inputs), base, atol=0, rtol=0)  # B_k = 0: the identity
    host = next(h for h in model._adapter_hosts if "a" in getattr(h, "loras", {}))
    adapter = host.loras["a"]
    assert adapter.lora_B.shape == (3, adapter.rows, 4) and adapter.weights.shape == (3,)
    assert torch.equal(adapter.task_specific.matrix(), torch.eye(4))  # Λ starts as the identity (both types)
    perturb_adapter(model, "a", scale=0.3)
    out = run(model, inputs)
    assert (out - base).abs().max() > 1e-2
    expected = run(reference_model(model, arch, {"a": (1.0, lambda m: mtl_delta(m, config))}), inputs)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


def test_bert_init_is_adapterhubs_and_not_the_identity():
    model = patched("bert")
    inputs = make_inputs("bert")
    base = run(model, inputs)
    model.add_adapter("a", config=CONFIG.replace(init_weights="bert"), set_active=True)
    adapter = model.encoder.layer[0].attention.self.query.loras["a"]
    assert 0.01 < adapter.lora_B.std() < 0.03 and 0.01 < adapter.lora_A.std() < 0.03
    assert not torch.allclose(run(model, inputs), base)


def test_rank_and_alpha_patterns_and_rslora_set_each_layers_update():
    model = patched("bert")
    config = CONFIG.replace(rank_pattern={"value": 2}, alpha_pattern={"value": 16}, use_rslora=True)
    model.add_adapter("a", config=config)
    query = model.encoder.layer[0].attention.self.query.loras["a"]
    value = model.encoder.layer[0].attention.self.value.loras["a"]
    assert (query.r, value.r) == (4, 2)
    assert query.scaling == pytest.approx(8 / 2) and value.scaling == pytest.approx(16 / 2**0.5)


# -- MultiTask ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2", "t5"])
def test_multitask_gives_each_row_its_tasks_adapter(arch):
    model = with_tasks(arch)
    inputs = make_inputs(arch, batch=5)
    singles = {name: run(model, inputs, name) for name in "abc"}
    assert not torch.allclose(singles["a"], singles["b"])
    ids = [2, 0, 1, 0, 2]
    expected = torch.stack([singles["abc"[t]][row] for row, t in enumerate(ids)])
    for task_ids in (ids, torch.tensor(ids), [["a", "b", "c"][t] for t in ids]):
        torch.testing.assert_close(forward(model, inputs, MultiTask("a", "b", "c"), task_ids=task_ids), expected, atol=1e-6, rtol=0)
    # rows already in task order take the shortcut without reordering; one task for every row
    torch.testing.assert_close(
        forward(model, inputs, MultiTask("a", "b", "c"), task_ids=[0, 0, 1, 2, 2]),
        torch.cat([singles["a"][:2], singles["b"][2:3], singles["c"][3:]]), atol=1e-6, rtol=0,
    )
    torch.testing.assert_close(forward(model, inputs, MultiTask("a", "b", "c"), task_ids=[1] * 5), singles["b"], atol=1e-6, rtol=0)


def test_multitask_of_stacks_and_a_stack_around_it_equal_their_definitions():
    model = with_tasks("bert")
    model.add_adapter("lora", config=LoRAConfig(r=4, attn_matrices=["q", "k", "v"]))
    model.add_adapter("bn", config=SeqBnConfig(reduction_factor=4))
    perturb_adapter(model, "lora", seed=7)
    perturb_adapter(model, "bn", seed=8)
    inputs = make_inputs("bert", batch=3)
    ids = [1, 0, 1]

    def rows(setups):
        outs = [run(model, inputs, setup) for setup in setups]
        return torch.stack([outs[t][row] for row, t in enumerate(ids)])

    got = forward(model, inputs, MultiTask(Stack("a", "c"), "b"), task_ids=ids)
    torch.testing.assert_close(got, rows([Stack("a", "c"), "b"]), atol=1e-6, rtol=0)
    got = forward(model, inputs, Stack("lora", MultiTask("a", "b"), "bn"), task_ids=ids)
    torch.testing.assert_close(got, rows([Stack("lora", "a", "bn"), Stack("lora", "b", "bn")]), atol=1e-6, rtol=0)
    # Parallel before it replicates the rows: every copy keeps its row's task
    got = forward(model, inputs, Stack(Parallel("bn", "lora"), MultiTask("a", "b")), task_ids=ids)
    expected = torch.cat([rows([Stack("bn", "a"), Stack("bn", "b")]), rows([Stack("lora", "a"), Stack("lora", "b")])])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "task_ids, message",
    [
        (None, "needs task_ids"),
        ([0, 1], "task_ids has 2 entries but the input batch has 3 rows"),
        ([0, 1, 3], r"task_ids holds \[3\], outside 0 … 2"),
        ([0, -1, 2], r"task_ids holds \[-1\], outside 0 … 2"),
        (torch.tensor([0.0, 1.0, 2.0]), "torch.float32 tensor"),
        (torch.tensor([[0, 1, 2]]), r"shape \(1, 3\)"),
        (["a", "x", "b"], r"names \['x'\], which are no adapters of MultiTask\[a, b, c\]"),
        ([True, False, True], "is not a list of task ids"),
    ],
)
def test_task_ids_that_do_not_fit_are_refused_before_the_forward(task_ids, message):
    model = with_tasks("bert")
    model.set_active_adapters(MultiTask("a", "b", "c"))
    inputs = make_inputs("bert", batch=3)
    kwargs = {} if task_ids is None else {"task_ids": task_ids}
    with pytest.raises(CompositionError, match=message) as error:
        model(**inputs, **kwargs)
    assert "one task id per batch row (3 rows)" in str(error.value)  # the valid form
    # task ids are ignored where no MultiTask is active (AdapterHub's behaviour)
    model.set_active_adapters("a")
    torch.testing.assert_close(forward(model, inputs, "a", task_ids=[5]), run(model, inputs, "a"))


@pytest.mark.parametrize(
    "setup, message",
    [
        (
            MultiTask("a", "pre"),
            r"Adapter 'pre' cannot take part in MultiTask\[a, pre\]: its method 'prefix_tuning' does not support "
            r"MultiTask.*routes rows only to adapters of the methods that take part in it; use it outside, e.g. "
            r"Stack\('pre', MultiTask",
        ),
        (MultiTask("a", Stack("bn", "pre")), r"Adapter 'pre' cannot take part in MultiTask\[a, Stack\[bn, pre\]\]"),
        (Average(MultiTask("a", "b"), "c"), r"Cannot use MultiTask\[a, b\] inside Average.*a direct child of a top-level Stack"),
        (Parallel(MultiTask("a", "b"), "c"), r"Cannot use MultiTask\[a, b\] inside Parallel"),
        (MultiTask("a", Stack("b", BatchSplit("c", "a", batch_sizes=[1, 1]))), "cannot use BatchSplit"),
        (Stack("a", Stack(MultiTask("b", "c"))), "MultiTask must be the setup itself or a direct child of a top-level Stack"),
        (MultiTask(Fuse("a", "b"), "c"), "cannot nest Fuse"),
    ],
)
def test_setups_multitask_cannot_run_are_refused_at_activation(setup, message):
    model = with_tasks("bert")
    model.add_adapter("lora", config=LoRAConfig(r=4))
    model.add_adapter("bn", config=SeqBnConfig())
    model.add_adapter("pre", config=PrefixTuningConfig(prefix_length=2))  # LoRA and bottlenecks take part in MultiTask
    model.set_active_adapters("a")
    with pytest.raises(CompositionError, match=message):
        model.set_active_adapters(setup)
    assert model.active_adapters == Stack("a")  # left as it was


def test_fusion_of_mtl_adapters_is_refused_naming_the_adapter_and_method():
    model = with_tasks("bert", names=("a", "b"))
    with pytest.raises(AdapterConfigError, match="Cannot fuse adapter 'a': its method mtl_lora has no fusion"):
        model.add_adapter_fusion(Fuse("a", "b"))


# -- composition beyond MultiTask -------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_stack_and_average_with_lora_equal_their_definitions(arch):
    model = with_tasks(arch, names=("a", "b"))
    model.add_adapter("lora", config=LoRAConfig(r=4))
    perturb_adapter(model, "lora", seed=9)
    inputs = make_inputs(arch)
    mtl = lambda m: mtl_delta(m, CONFIG)  # noqa: E731
    lora = lambda m: m.delta_weight().detach().double()  # noqa: E731
    expected = run(reference_model(model, arch, {"a": (1.0, mtl), "lora": (1.0, lora)}), inputs)
    torch.testing.assert_close(run(model, inputs, Stack("a", "lora")), expected, atol=2e-5, rtol=1e-4)
    expected = run(reference_model(model, arch, {"a": (0.25, mtl), "b": (0.75, mtl)}), inputs)
    torch.testing.assert_close(run(model, inputs, Average("a", "b", weights=[1, 3])), expected, atol=2e-5, rtol=1e-4)


def test_parallel_batchsplit_and_split_give_each_slice_its_adapter():
    model = with_tasks("bert", names=("a", "b"))
    inputs = make_inputs("bert", batch=2)
    alone = {name: run(model, inputs, name) for name in "ab"}
    parallel = run(model, inputs, Parallel("a", "b"))
    torch.testing.assert_close(parallel, torch.cat([alone["a"], alone["b"]]), atol=1e-6, rtol=0)
    split = run(model, inputs, BatchSplit("b", "a", batch_sizes=[1, 1]))
    torch.testing.assert_close(split, torch.cat([alone["b"][:1], alone["a"][1:]]), atol=1e-6, rtol=0)
    # Split cuts the sequence: the first 5 positions run a, the rest b (all layers) — differs from both
    sequence = run(model, inputs, Split("a", "b", splits=[5, 7]))
    assert not torch.allclose(sequence, alone["a"]) and not torch.allclose(sequence, alone["b"])


# -- merging ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_a_single_task_merges_and_unmerges_and_a_multitask_setup_cannot_use_it_merged(arch):
    model = with_tasks(arch, names=("a", "b"))
    inputs = make_inputs(arch)
    unmerged = run(model, inputs, "a")
    model.merge_adapter("a")
    model.set_active_adapters("a")
    torch.testing.assert_close(run(model, inputs), unmerged, atol=2e-5, rtol=1e-4)
    with pytest.raises(CompositionError, match="Adapter 'a' is merged into the weights"):
        model.set_active_adapters(MultiTask("a", "b"))
    model.reset_adapter()
    model.set_active_adapters(None)
    plain = make_model(arch)
    torch.testing.assert_close(run(model, inputs), run(plain, inputs), atol=1e-5, rtol=0)
    expected = run(model, inputs, "b")
    merged = model.merge_and_unload(adapter_names=["b"])
    torch.testing.assert_close(run(merged, inputs), expected, atol=2e-5, rtol=1e-4)


def test_combinations_take_mtl_lora_only_as_a_parameter_average():
    model = with_tasks("bert", names=("a", "b"))
    model.average_adapter("avg", ["a", "b"], weights=[0.25, 0.75])
    for key, parameter in model.named_parameters():
        if ".loras.avg." in key:
            a = dict(model.named_parameters())[key.replace(".avg.", ".a.")]
            b = dict(model.named_parameters())[key.replace(".avg.", ".b.")]
            torch.testing.assert_close(parameter, 0.25 * a + 0.75 * b)
    with pytest.raises(AdapterConfigError, match="combines LoRA / \\(IA\\)³ adapters only; 'a' is not"):
        model.average_adapter("svd", ["a", "b"], combine_strategy="lora_delta_w_svd", svd_rank=2)
    with pytest.raises(AdapterConfigError, match="'a' is not"):
        model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "weighted")


# -- sharing parameters ---------------------------------------------------------------------------------------
def _query(model):
    return model.encoder.layer[0].attention.self.query


def test_share_parameters_shares_a_and_the_up_projections_from_the_reference():
    model = with_tasks("bert")
    inputs = make_inputs("bert", batch=3)
    query = _query(model)
    reference = {p: getattr(query.loras["b"], p).detach().clone() for p in ("lora_A", "lora_B")}
    own = {n: query.loras[n].weights.detach().clone() for n in "abc"}
    model.share_parameters(MultiTask("a", "b", "c"), reference_adapter_name="b")
    for p in ("lora_A", "lora_B"):
        assert getattr(query.loras["a"], p) is getattr(query.loras["b"], p) is getattr(query.loras["c"], p)
        assert torch.equal(getattr(query.loras["a"], p), reference[p])
    assert all(torch.equal(query.loras[n].weights, own[n]) for n in "abc")  # task-specific stay each task's
    assert query.loras["a"].task_specific.values is not query.loras["c"].task_specific.values
    # b computes as before (it is the reference); the other tasks now use b's A and B_k
    before_b = run(model, inputs, "b")
    torch.testing.assert_close(run(model, inputs, "b"), before_b)
    # training the MultiTask trains the shared parameters once, with gradients from every task
    model.train_adapter(MultiTask("a", "b", "c"))
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".loras." in k for k in trainable)
    output = model(**inputs, task_ids=[0, 2, 1]).last_hidden_state
    output.pow(2).mean().backward()
    shared_grad = query.loras["a"].lora_A.grad
    assert shared_grad is not None and shared_grad.abs().sum() > 0
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    optimizer.step()
    assert query.loras["a"].lora_A is query.loras["c"].lora_A  # still shared after a step


def test_training_one_shared_task_trains_only_its_own_and_the_shared_parameters():
    model = with_tasks("bert")
    model.share_parameters(["a", "b", "c"])
    model.train_adapter("a")
    trainable = {k for k, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    assert any(".loras.a.weights" in k for k in trainable) and any(".loras.a.task_specific" in k for k in trainable)
    assert not any(".loras.b.weights" in k or ".loras.c.task_specific" in k for k in trainable)
    assert any(".loras.b.lora_A" in k for k in trainable)  # the same object as a's


def test_unshare_gives_every_task_its_own_copy_of_the_values():
    model = with_tasks("bert")
    inputs = make_inputs("bert")
    model.share_parameters("a,b,c", name="group")
    outputs = {n: run(model, inputs, n) for n in "abc"}
    with pytest.raises(AdapterConfigError, match="no sharing group named 'a,b,c'; the model's groups: \\['group'\\]"):
        model.unshare_parameters("a,b,c")
    model.unshare_parameters("a,b,c", name="group")
    query = _query(model)
    assert query.loras["a"].lora_A is not query.loras["b"].lora_A
    assert torch.equal(query.loras["a"].lora_A, query.loras["b"].lora_A)
    for n in "abc":
        torch.testing.assert_close(run(model, inputs, n), outputs[n], atol=0, rtol=0)
    with torch.no_grad():
        query.loras["a"].lora_A.add_(1.0)
    assert not torch.equal(query.loras["a"].lora_A, query.loras["b"].lora_A)
    model.share_parameters("a,b,c", name="group")  # the name is free again


def test_share_parameters_refuses_what_cannot_share_and_changes_nothing():
    model = with_tasks("bert", names=("a", "b"))
    model.add_adapter("lora", config=LoRAConfig(r=4))
    model.add_adapter("q_only", config=CONFIG.replace(attn_matrices=["q"]))
    model.add_adapter("wide", config=CONFIG.replace(r=8))
    query = _query(model)
    before = query.loras["b"].lora_A.detach().clone()
    cases = [
        (["a", "lora"], "adapter 'lora' is a LoRAConfig \\(lora\\); only adapters of a multi-task method"),
        (["a", "nope"], "names 'nope', which the model does not have"),
        (["a", "q_only"], "only \\['a'\\] of \\['a', 'q_only'\\] have modules"),
        (["a", "wide"], "adapter 'wide' has parameters of shapes"),
        ([], "is invalid"),
        (["a", "a"], "is invalid"),
    ]
    for names, message in cases:
        with pytest.raises(AdapterConfigError, match=message):
            model.share_parameters(names)
    with pytest.raises(AdapterConfigError, match="reference_adapter_name='x' is not one of adapter_names"):
        model.share_parameters(["a", "b"], reference_adapter_name="x")
    assert query.loras["a"].lora_A is not query.loras["b"].lora_A and torch.equal(query.loras["b"].lora_A, before)
    model.share_parameters(["a", "b"])
    with pytest.raises(AdapterConfigError, match="share parameters in group 'a,b' already"):
        model.share_parameters(["b", "wide"], name="other")
    model.delete_adapter("a")  # the group keeps its other member
    assert model.__dict__["_adapters_parameter_sharing"] == {"a,b": ("b",)}
    model.delete_adapter("b")
    assert "_adapters_parameter_sharing" not in model.__dict__


def test_shared_tasks_save_with_their_values_and_load_as_independent_adapters(tmp_path):
    model = with_tasks("bert")
    model.share_parameters(MultiTask("a", "b", "c"))
    inputs = make_inputs("bert", batch=3)
    expected = forward(model, inputs, MultiTask("a", "b", "c"), task_ids=[2, 1, 0])
    for name in "abc":
        model.save_adapter(str(tmp_path / name), name)
    other = patched("bert")
    for name in "abc":
        other.load_adapter(str(tmp_path / name), load_as=name)
    for name in "abc":
        mine = {k: v for k, v in model.state_dict().items() if f".loras.{name}." in k}
        theirs = {k: v for k, v in other.state_dict().items() if f".loras.{name}." in k}
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    query = _query(other)
    assert query.loras["a"].lora_A is not query.loras["b"].lora_A  # sharing is not saved (AdapterHub's layout)
    torch.testing.assert_close(forward(other, inputs, MultiTask("a", "b", "c"), task_ids=[2, 1, 0]), expected, atol=0, rtol=0)
    other.share_parameters(MultiTask("a", "b", "c"))  # equal values: sharing again changes nothing
    torch.testing.assert_close(forward(other, inputs, MultiTask("a", "b", "c"), task_ids=[2, 1, 0]), expected, atol=0, rtol=0)


# -- checkpoints, training, failed adds ----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_adapterhub_layout_round_trips_bit_for_bit(tmp_path, arch):
    model = with_tasks(arch, names=("a",), config=LINEAR)
    model.save_adapter(str(tmp_path), "a")
    assert sorted(os.listdir(tmp_path)) == ["adapter.safetensors", "adapter_config.json"]
    other = patched(arch)
    name = other.load_adapter(str(tmp_path), set_active=True)
    assert other.adapters_config.adapters[name] == LINEAR
    mine = {k: v for k, v in model.state_dict().items() if ".loras.a." in k}
    theirs = {k.replace(f".loras.{name}.", ".loras.a."): v for k, v in other.state_dict().items() if f".loras.{name}." in k}
    assert {k.split(".loras.a.")[1] for k in mine} == {"lora_A", "lora_B", "weights", "task_specific.values"}
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    inputs = make_inputs(arch)
    torch.testing.assert_close(run(other, inputs), run(model, inputs, "a"), atol=0, rtol=0)


def test_train_adapter_trains_only_the_adapter_and_dropout_acts_in_training_only():
    model = with_tasks("llama", names=("a", "b"), config=CONFIG.replace(dropout=0.5))
    model.train_adapter("a")
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".loras.a." in k for k in trainable)
    inputs = make_inputs("llama")
    first, second = (model(**inputs).last_hidden_state for _ in range(2))
    assert not torch.allclose(first, second)  # dropout on the adapter branch
    model.eval()
    torch.testing.assert_close(run(model, inputs), run(model, inputs))


def test_a_failed_add_leaves_the_model_as_it_was():
    model = patched("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterConfigError, match="leave_out"):
        model.add_adapter("a", config=CONFIG.replace(leave_out=[0, 1]))
    assert model.state_dict().keys() == before.keys() and not model.adapters_config.adapters


def test_peft_format_is_refused_with_the_adapter_named(tmp_path):
    model = with_tasks("bert", names=("a",))
    with pytest.raises(AdapterConfigError, match="Adapter 'a' is not a single"):
        model.save_adapter(str(tmp_path), "a", format="peft")
    assert not os.listdir(tmp_path)


# -- the architecture matrix ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_starts_at_the_identity_and_routes_rows_by_task(arch):
    model = patched(arch)
    inputs = make_inputs(arch, batch=3)
    base = run(model, inputs)
    for index, name in enumerate(("a", "b")):
        model.add_adapter(name, config=CONFIG)
    torch.testing.assert_close(forward(model, inputs, MultiTask("a", "b"), task_ids=[1, 0, 1]), base, atol=0, rtol=0)
    for index, name in enumerate(("a", "b")):
        perturb_adapter(model, name, scale=0.3, seed=index)
    singles = [run(model, inputs, name) for name in "ab"]
    assert not torch.allclose(singles[0], base)
    expected = torch.stack([singles[1][0], singles[0][1], singles[1][2]])
    torch.testing.assert_close(forward(model, inputs, MultiTask("a", "b"), task_ids=[1, 0, 1]), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_adapter_model_with_heads_routes_rows_by_task(arch):
    from adapters import AutoAdapterModel
    from conftest import CONFIGS

    torch.manual_seed(0)
    model = AutoAdapterModel.from_config(CONFIGS[arch]()).eval()
    for index, name in enumerate(("a", "b")):
        model.add_adapter(name, config=CONFIG)
        perturb_adapter(model, name, scale=0.3, seed=index)
    model.add_classification_head("cls", num_labels=3)
    inputs = make_inputs(arch, batch=3)
    with torch.no_grad():
        singles = []
        for name in "ab":
            with AdapterSetup(name, head_setup="cls"):
                singles.append(model(**inputs).logits)
        with AdapterSetup(MultiTask("a", "b"), head_setup="cls"):
            routed = model(**inputs, task_ids=["b", "a", "a"]).logits
    assert routed.shape == (3, 3) and not torch.allclose(singles[0], singles[1])
    torch.testing.assert_close(routed, torch.stack([singles[1][0], singles[0][1], singles[0][2]]), atol=1e-6, rtol=0)


# -- AdapterHub's fixtures ------------------------------------------------------------------------------------
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "adapterhub")


def _manifest():
    with open(os.path.join(HERE, "manifest.json")) as f:
        return json.load(f)


def test_adapterhub_cannot_build_the_linear_task_specific_matrix():
    """AdapterHub 1.3.0's ``TaskSpecificLinear`` never calls ``nn.Module.__init__``, so an MTL-LoRA
    with ``task_specific_matrix_type="linear"`` cannot be added there (the generator records the
    error); here it builds, starts as the identity and matches its definition (tested above)."""
    failures = [f for f in _manifest()["adapterhub_failures"] if f["case"] == "mtl_lora_linear"]
    assert failures and "cannot assign parameters before Module.__init__() call" in failures[0]["error"]
    config = AdapterConfig.load(failures[0]["configs"][0])
    assert config == MTLLoRAConfig(r=4, n_up_projection=2, task_specific_matrix_type="linear")
    model = patched("bert")
    model.add_adapter("a", config=config)
    assert torch.equal(_query(model).loras["a"].task_specific.values, torch.eye(4))


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_adapterhub_shared_tasks_load_with_equal_shared_values_and_share_again(arch):
    from transformers import AutoModel
    from safetensors.torch import load_file

    case = next(c for c in _manifest()["cases"] if c["case"] == "mtl_lora_shared" and c["arch"] == arch)
    assert case["share"] == [["a", "b", "c"]]
    arch_dir = os.path.join(HERE, arch)
    model = AutoModel.from_pretrained(os.path.join(arch_dir, "base")).eval()
    adapters.init(model)
    for adapter in case["adapters"]:
        model.load_adapter(os.path.join(arch_dir, adapter["dir"]), load_as=adapter["name"])
    hosts = [h for h in model._adapter_hosts if "a" in getattr(h, "loras", {})]
    for host in hosts:  # AdapterHub saved every task with the shared values
        assert torch.equal(host.loras["a"].lora_A, host.loras["c"].lora_A)
        assert torch.equal(host.loras["b"].lora_B, host.loras["c"].lora_B)
    model.share_parameters(MultiTask("a", "b", "c"))
    inputs = load_file(os.path.join(arch_dir, "inputs.safetensors"))
    expected = load_file(os.path.join(arch_dir, case["expected"]))["out"]
    with torch.no_grad(), AdapterSetup(MultiTask("a", "b", "c")):
        output = model(**inputs, task_ids=torch.tensor([2, 0])).last_hidden_state
    torch.testing.assert_close(output, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch, head", [("llama", "clm"), ("t5", "seq2seq")])
def test_generate_keeps_each_rows_task_at_every_step(arch, head):
    from conftest import left_padded_prompt

    model = with_tasks(arch, names=("a", "b"), head=head)
    if arch == "llama":
        ids, mask = left_padded_prompt()
        inputs = {"input_ids": ids, "attention_mask": mask}
    else:
        inputs = {k: v for k, v in make_inputs(arch).items() if k != "decoder_input_ids"}
    settings = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    with torch.no_grad():
        singles = []
        for name in "ab":
            with AdapterSetup(name):
                singles.append(model.generate(**inputs, **settings))
        with AdapterSetup(MultiTask("a", "b")):
            routed = model.generate(**inputs, task_ids=["b", "a"], **settings)
            with pytest.raises(CompositionError, match="task_ids has 2 entries but the input batch has 4 rows"):
                model.generate(**inputs, task_ids=[1, 0], num_beams=2, **settings)
    assert not torch.equal(singles[0], singles[1])
    assert torch.equal(routed, torch.stack([singles[1][0], singles[0][1]]))


def test_generate_with_parallel_before_multitask_takes_one_task_id_per_input_row():
    """generate() replicates the rows for a Parallel once, before the first pass; task_ids still
    name the caller's rows, and each branch decodes as its own Stack with the MultiTask would."""
    model = patched("llama", "clm")
    for name in ("x", "y"):
        model.add_adapter(name, config=LoRAConfig(r=4))
        perturb_adapter(model, name, scale=0.3, seed=len(name))
    for index, name in enumerate(("a", "b")):
        model.add_adapter(name, config=CONFIG)
        perturb_adapter(model, name, scale=0.3, seed=20 + index)
    inputs = make_inputs("llama")
    kwargs = dict(**inputs, task_ids=[1, 0], max_new_tokens=3, do_sample=False, pad_token_id=0)
    with AdapterSetup(Stack(Parallel("x", "y"), MultiTask("a", "b"))):
        both = model.generate(**kwargs)
    branches = []
    for branch in ("x", "y"):
        with AdapterSetup(Stack(branch, MultiTask("a", "b"))):
            branches.append(model.generate(**kwargs))
    assert torch.equal(both, torch.cat(branches))
