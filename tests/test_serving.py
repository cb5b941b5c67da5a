"""Many-adapter serving: ``model(**batch, adapter_names=[...])`` runs every row with its own adapter
setup (PEFT's argument, ``"__base__"`` for no adapter), through the same per-row routing as the
``MultiTask`` block's ``task_ids``. Each row must equal its setup run alone on the whole batch."""

from __future__ import annotations

import pytest
import torch
from conftest import left_padded_prompt, main_output, make_inputs, patched, perturb_adapter, run

from adapters import (
    AdapterSetup,
    BatchSplit,
    CompacterConfig,
    DoRAConfig,
    DoubleSeqBnConfig,
    HRAConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoRAConfig,
    OFTConfig,
    VeraConfig,
    MultiTask,
    ParBnConfig,
    PrefixTuningConfig,
    SeqBnConfig,
    Split,
    Stack,
)
from adapters.errors import CompositionError
from adapters.methods.lora import LinearHost

ATOL = 1e-5


def with_adapters(arch: str, configs: dict, head: str = "base"):
    model = patched(arch, head)
    for index, (name, config) in enumerate(configs.items()):
        model.add_adapter(name, config=config)
        perturb_adapter(model, name, scale=0.3, seed=10 * index + 1)
    return model


def expected_rows(model, inputs, rows) -> torch.Tensor:
    """Row ``i`` of the whole batch run under ``rows[i]`` alone (the base model for ``"__base__"``)."""
    full = {row: run(model, inputs) if row == "__base__" else run(model, inputs, row) for row in dict.fromkeys(rows)}
    return torch.stack([full[row][index] for index, row in enumerate(rows)])


def routed(model, inputs, rows) -> torch.Tensor:
    with torch.no_grad():
        return main_output(model(**inputs, adapter_names=rows))


LORAS = {"a": LoRAConfig(r=4, alpha=8), "b": LoRAConfig(r=4, alpha=16), "c": LoRAConfig(r=4, alpha=8, use_rslora=True)}


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_each_row_equals_its_adapter_alone_across_methods(arch):
    """LoRA (three of one rank: the stacked path), LoRA of another rank, DoRA, (IA)³, VeRA, LoHa,
    LoKr, OFT, HRA, seq_bn, par_bn, double_seq_bn and Compacter in one unsorted batch with padded
    rows and a base row."""
    configs = dict(
        LORAS, r8=LoRAConfig(r=8, alpha=8), dora=DoRAConfig(r=4), ia3=IA3Config(), vera=VeraConfig(r=4),
        loha=LoHaConfig(r=4), lokr=LoKrConfig(r=4), oft=OFTConfig(r=0, oft_block_size=8), hra=HRAConfig(r=4),
        seq=SeqBnConfig(reduction_factor=4), par=ParBnConfig(reduction_factor=4), dbl=DoubleSeqBnConfig(reduction_factor=4),
        compacter=CompacterConfig(phm_dim=2, reduction_factor=4),
    )
    model = with_adapters(arch, configs)
    rows = ["b", "seq", "__base__", "a", "par", "loha", "c", "dbl", "r8", "ia3", "b", "seq", "dora", "vera", "lokr", "oft",
            "hra", "compacter", "a"]
    inputs = make_inputs(arch, batch=len(rows))
    inputs["attention_mask"][4, -5:] = 0
    inputs["attention_mask"][13, -7:] = 0
    out = routed(model, inputs, rows)
    torch.testing.assert_close(out, expected_rows(model, inputs, rows), atol=ATOL, rtol=0)
    assert model.active_adapters is None  # the call's routing replaced no setup of the model


@pytest.mark.parametrize("stacked", [True, False])
def test_lora_rows_take_the_stacked_path_or_the_grouped_path_alike(stacked, monkeypatch):
    """Plain LoRAs of one rank run as batched matmuls over stacked factors (every LoRA layer of the
    model; a row without adapter scales by 0); with ``stacked_routing=False`` each adapter runs on
    its run of sorted rows. Both give each row its adapter's output."""
    model = with_adapters("llama", LORAS)
    monkeypatch.setattr(LinearHost, "stacked_routing", stacked)
    used = []
    original = LinearHost._stacked_factors
    monkeypatch.setattr(LinearHost, "_stacked_factors", lambda self, *a: used.append(original(self, *a)) or used[-1])
    rows = ["c", "a", "__base__", "b", "a", "c", "b"]
    inputs = make_inputs("llama", batch=len(rows))
    out = routed(model, inputs, rows)
    lora_layers = sum(1 for host in model._adapter_hosts if isinstance(host, LinearHost))
    assert lora_layers == 4  # q and v of 2 layers
    assert [factors is not None for factors in used] == ([True] * lora_layers if stacked else [])
    used.clear()
    torch.testing.assert_close(out, expected_rows(model, inputs, rows), atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_rows_may_name_stacks_with_a_shared_adapter(arch):
    """A row's setup may be a Stack (or "a,b"): a shared adapter under each row's own one, across
    methods (bottleneck under LoRA, two bottlenecks ending with different post steps)."""
    configs = dict(LORAS, shared=SeqBnConfig(reduction_factor=4), par=ParBnConfig(reduction_factor=4))
    model = with_adapters(arch, configs)
    rows = [Stack("shared", "a"), "shared,b", "__base__", Stack("shared", "par"), "a", Stack("par", "shared"), "shared,b"]
    inputs = make_inputs(arch, batch=len(rows))
    out = routed(model, inputs, rows)
    torch.testing.assert_close(out, expected_rows(model, inputs, rows), atol=ATOL, rtol=0)


def test_multitask_block_routes_lora_and_bottleneck_rows_by_task_ids():
    """The MultiTask block takes plain LoRA and bottleneck adapters now (one routing for both
    arguments): task_ids give the same rows as adapter_names."""
    model = with_adapters("bert", dict(LORAS, seq=SeqBnConfig(reduction_factor=4)))
    inputs = make_inputs("bert", batch=4)
    with torch.no_grad(), AdapterSetup(Stack("seq", MultiTask("a", "b"))):
        out = main_output(model(**inputs, task_ids=[1, 0, 0, 1]))
    rows = [Stack("seq", "b"), Stack("seq", "a"), Stack("seq", "a"), Stack("seq", "b")]
    torch.testing.assert_close(out, expected_rows(model, inputs, rows), atol=ATOL, rtol=0)
    torch.testing.assert_close(out, routed(model, inputs, rows), atol=ATOL, rtol=0)


def test_base_rows_in_a_multitask_run_without_adapters_and_only_there():
    model = with_adapters("bert", LORAS)
    inputs = make_inputs("bert", batch=3)
    with torch.no_grad(), AdapterSetup(MultiTask("a", "__base__")):
        out = main_output(model(**inputs, task_ids=[1, 0, 1]))
    torch.testing.assert_close(out, expected_rows(model, inputs, ["__base__", "a", "__base__"]), atol=ATOL, rtol=0)
    before = model.active_adapters
    with pytest.raises(CompositionError, match=r"Stack\[a, __base__\] names '__base__', which stands for rows without adapters only as a child of a MultiTask"):
        model.set_active_adapters(Stack("a", "__base__"))
    assert model.active_adapters == before


def test_a_multitask_with_base_rows_trains_saves_and_loads(tmp_path):
    model = with_adapters("bert", LORAS)
    setup = MultiTask("a", "__base__")
    model.train_adapter(setup)
    trainable = {n.split(".loras.")[1].split(".")[0] for n, p in model.named_parameters() if p.requires_grad and ".loras." in n}
    assert trainable == {"a"} and model.active_adapters == setup
    model.save_adapter_setup(tmp_path / "setup", setup)
    fresh = patched("bert", "base")
    loaded, _ = fresh.load_adapter_setup(tmp_path / "setup", set_active=True)
    assert loaded == setup and set(fresh.adapters_config.adapters) == {"a"}
    inputs = make_inputs("bert", batch=2)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(main_output(fresh(**inputs, task_ids=[0, 1])), main_output(model(**inputs, task_ids=[0, 1])), atol=ATOL, rtol=0)


def test_route_adapter_names_gives_the_setup_and_task_ids_a_call_with_adapter_names_runs():
    model = with_adapters("bert", dict(LORAS, seq=SeqBnConfig(reduction_factor=4)))
    inputs = make_inputs("bert", batch=4)
    rows = ["seq", "__base__", Stack("seq", "a"), "b"]
    setup, task_ids = model.route_adapter_names(rows)
    assert task_ids.dtype == torch.int64 and task_ids.shape == (4,)
    assert model.route_adapter_names(["b", "a", "a", "seq"])[0] is setup  # one setup for every list
    with torch.no_grad(), AdapterSetup(setup):
        out = main_output(model(**inputs, task_ids=task_ids))
    torch.testing.assert_close(out, routed(model, inputs, rows), atol=ATOL, rtol=0)
    torch.testing.assert_close(out, expected_rows(model, inputs, rows), atol=ATOL, rtol=0)
    with pytest.raises(CompositionError, match=r"adapter_names\[1\]='x' names no adapter of this model"):
        model.route_adapter_names(["a", "x"])


def test_generate_keeps_each_rows_adapter_at_every_step():
    """Greedy decoding with the KV cache: every row decodes as its adapter alone does."""
    model = with_adapters("llama", dict(LORAS, seq=SeqBnConfig(reduction_factor=4)), head="clm")
    ids, mask = left_padded_prompt()
    ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)
    rows = ["b", "__base__", "seq", "a"]
    settings = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(**settings, adapter_names=rows)
        singles = {}
        for row in set(rows):
            if row == "__base__":
                singles[row] = model.generate(**settings)
            else:
                with AdapterSetup(row):
                    singles[row] = model.generate(**settings)
    assert len({tuple(s[i].tolist()) for i, s in enumerate(singles.values())}) > 1 or not torch.equal(singles["a"], singles["b"])
    assert torch.equal(out, torch.stack([singles[row][i] for i, row in enumerate(rows)]))
    with pytest.raises(CompositionError, match=r"adapter_names has 4 entries but the input batch has 5 rows"):
        model(input_ids=torch.cat([ids, ids[:1]]), adapter_names=rows)


def test_beam_search_keeps_each_rows_adapter_for_all_its_beams_and_sequences():
    """generate() repeats every input row for beams and num_return_sequences (as in PEFT, each
    row's adapter goes with its copies): each row's sequences are those of its adapter alone."""
    model = with_adapters("llama", LORAS, head="clm")
    ids, mask = left_padded_prompt()
    rows = ["b", "a"]
    settings = dict(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, pad_token_id=0, num_beams=3,
                    num_return_sequences=2, do_sample=False)
    with torch.no_grad():
        out = model.generate(**settings, adapter_names=rows)
        singles = []
        for row in rows:
            with AdapterSetup(row):
                singles.append(model.generate(**settings))
    assert out.shape[0] == 4 and not torch.equal(singles[0], singles[1])
    assert torch.equal(out[:2], singles[0][:2]) and torch.equal(out[2:], singles[1][2:])


def test_training_gradients_reach_only_each_rows_adapter():
    """adapter_names with gradients: a loss on the rows of ``a`` trains ``a`` alone, with the
    gradients of ``a`` run alone on those rows."""
    model = with_adapters("llama", LORAS)
    model.train_adapter(["a", "b", "c"])
    rows = ["a", "b", "a", "__base__"]
    inputs = make_inputs("llama", batch=4)
    main_output(model(**inputs, adapter_names=rows))[[0, 2]].square().mean().backward()
    routed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with AdapterSetup("a"):
        main_output(model(**inputs))[[0, 2]].square().mean().backward()
    alone = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert routed_grads and set(routed_grads) <= set(alone) | {n for n in routed_grads if not routed_grads[n].any()}
    assert all(".a." in n for n, g in routed_grads.items() if g.any())
    for name, grad in alone.items():
        torch.testing.assert_close(routed_grads[name], grad, atol=1e-5, rtol=1e-4)


def test_calls_with_other_rows_reuse_one_routing_setup():
    """The routing's MultiTask is fixed for the model's adapters: calls with different rows run the
    same setup, so no per-setup cache grows with the rows served."""
    model = with_adapters("llama", LORAS)
    inputs = make_inputs("llama", batch=3)
    routed(model, inputs, ["a", "b", "c"])
    setup = model.__dict__["_adapters_row_routing"].setup
    caches = [len(host.__dict__["_setup_cache"]) for host in model._adapter_hosts]
    routed(model, inputs, ["c", "__base__", "c"])
    routed(model, inputs, ["b", "a", "a"])
    assert model.__dict__["_adapters_row_routing"].setup is setup
    assert setup == MultiTask("a", "b", "c", "__base__")
    assert [len(host.__dict__["_setup_cache"]) for host in model._adapter_hosts] == caches
    model.add_adapter("d", config=LoRAConfig(r=4))  # a change of the adapters makes a new routing
    routed(model, inputs, ["d", "a", "a"])
    assert model.__dict__["_adapters_row_routing"].setup == MultiTask("a", "b", "c", "d", "__base__")


VALID = r"give one entry per batch row \(3 rows\): an adapter name, '__base__' for a row without adapters"


@pytest.mark.parametrize(
    "rows, message",
    [
        (["a", "x", "b"], r"adapter_names\[1\]='x' names no adapter of this model \(it has: a, b, c, p\); " + VALID),
        (["a", "b"], r"adapter_names has 2 entries but the input batch has 3 rows; " + VALID),
        ("a", r"adapter_names='a' is not a list of per-row adapter setups; " + VALID),
        ([], r"adapter_names=\[\] is not a list of per-row adapter setups; " + VALID),
        (["a", 3, "b"], r"adapter_names\[1\]=3 is neither an adapter name nor a Stack / Average of adapters; " + VALID),
        (["a", "p", "b"], r"adapter_names\[1\]='p' cannot take part in per-row routing: Adapter 'p' cannot take part in "
         r"MultiTask\[p\]: its method 'prefix_tuning' does not support MultiTask blocks"),
    ],
)
def test_bad_adapter_names_are_refused_before_the_model_runs(rows, message):
    model = with_adapters("llama", dict(LORAS, p=PrefixTuningConfig(prefix_length=2)))
    model.set_active_adapters("a")
    inputs = make_inputs("llama", batch=3)
    before = run(model, inputs)
    with pytest.raises(CompositionError, match=message):
        model(**inputs, adapter_names=rows)
    assert model.active_adapters == Stack("a")
    torch.testing.assert_close(run(model, inputs), before, atol=0, rtol=0)


def test_adapter_names_on_a_model_without_adapters_and_with_task_ids_are_refused():
    model = patched("llama")
    inputs = make_inputs("llama", batch=2)
    with pytest.raises(CompositionError, match=r"adapter_names\[0\]='a' names no adapter of this model \(it has: none\)"):
        model(**inputs, adapter_names=["a", "__base__"])
    torch.testing.assert_close(routed(model, inputs, ["__base__", "__base__"]), run(model, inputs), atol=0, rtol=0)
    model = with_adapters("llama", LORAS)
    with pytest.raises(CompositionError, match="adapter_names and task_ids were both given"):
        model(**inputs, adapter_names=["a", "b"], task_ids=[0, 1])


@pytest.mark.parametrize("tail", ["split", "batch_split"])
def test_bottleneck_rows_finish_with_their_own_adapter_before_a_split(tail):
    """After a routed MultiTask of a sequential and a parallel bottleneck (different post steps),
    a Split / BatchSplit in the same Stack cuts the routed rows: each row still equals its setup."""
    configs = {name: (SeqBnConfig if name[0] == "s" else ParBnConfig)(reduction_factor=4) for name in ("s1", "p2", "s3", "p4")}
    model = with_adapters("bert", configs)
    inputs = make_inputs("bert", batch=4)
    ids = [1, 0, 1, 0]
    last = Split("s3", "p4", splits=[5, 7]) if tail == "split" else BatchSplit("s3", "p4", batch_sizes=[1, 3])
    with torch.no_grad(), AdapterSetup(Stack(MultiTask("s1", "p2"), last)):
        out = main_output(model(**inputs, task_ids=ids))
    rows = [Stack(("s1", "p2")[t], last if tail == "split" else ("s3" if i < 1 else "p4")) for i, t in enumerate(ids)]
    expected = expected_rows(model, inputs, rows)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    assert (expected - run(model, inputs)).abs().amax(dim=(1, 2)).min() > 1e-2  # every row changed by its adapters
