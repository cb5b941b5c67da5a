"""torch.compile (issue 24, points 3 and 4): one graph per forward for every method family and
block, at most one compilation per distinct setup, compiled training steps that do not recompile.

Graph breaks are counted with ``fullgraph=True`` (any break raises) and ``torch._dynamo.explain``;
compilations with a backend that counts its calls. The graph-capture tests use the ``eager`` /
``aot_eager`` backends (no code generation); one test runs inductor.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.backends.registry import lookup_backend

from adapters import AdapterSetup, CompacterConfig, LoRAConfig, LoReftConfig, ParBnConfig
from adapters.composition import Average, BatchSplit, Fuse, MultiTask, Parallel, Split, Stack
from adapters.configuration.base import ADAPTER_CONFIG_MAP
from adapters.context import compiled_setup
from adapters.errors import CompositionError
from adapters.methods.registry import families, families_of
from conftest import main_output, make_inputs, patched, perturb_adapter

# one config per method family and bottleneck variant (the family coverage is checked below)
METHODS = {
    "seq_bn": "seq_bn",
    "par_bn": "par_bn",
    "double_seq_bn": "double_seq_bn",
    "compacter": CompacterConfig(reduction_factor=4, phm_dim=2),
    "seq_bn_inv": "seq_bn_inv",  # invertible adapter
    "lora": "lora",
    "ia3": "ia3",
    "dora": "dora",
    "loha": "loha",
    "lokr": "lokr",
    "vera": "vera",
    "oft": "oft",
    "hra": "hra",
    "adalora": "adalora",
    "mtl_lora": "mtl_lora",
    "prefix_tuning": "prefix_tuning",
    "prompt_tuning": "prompt_tuning",
    "loreft": LoReftConfig(dropout=0.0),  # no dropout: compiled and eager training steps compare exactly
    "llama_adapter": "llama_adapter",  # decoder-only
}
DECODER_ONLY = ("llama_adapter",)


def _config(key):
    value = METHODS[key]
    return ADAPTER_CONFIG_MAP[value] if isinstance(value, str) else value


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given (one per compilation without
    graph breaks) and runs them with ``inner`` (a backend name)."""

    def __init__(self, inner: str = "eager"):
        self.calls, self.inner = 0, lookup_backend(inner)

    def __call__(self, graph_module, example_inputs):
        self.calls += 1
        return self.inner(graph_module, example_inputs)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def _model_with(arch, key, names=("a",), head="base"):
    model = patched(arch, head)
    for seed, name in enumerate(names):
        model.add_adapter(name, config=_config(key))
        perturb_adapter(model, name, 0.1, seed=10 * seed)  # no adapter is the identity
    return model


def test_the_methods_cover_every_registered_family():
    covered = {family.name for key in METHODS for family, _ in families_of(_config(key))}
    assert covered == {family.name for family in families()}


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("key", list(METHODS))
def test_a_single_adapter_compiles_to_one_graph_with_the_eager_output(arch, key):
    if key in DECODER_ONLY and arch != "llama":
        pytest.skip(f"{key} is defined for decoder-only models")
    model = _model_with(arch, key)
    model.set_active_adapters("a")
    inputs = make_inputs(arch)
    backend = CountingBackend()
    with torch.no_grad():
        expected = main_output(model(**inputs))
        compiled = main_output(torch.compile(model, fullgraph=True, backend=backend)(**inputs))
    assert backend.calls == 1
    torch.testing.assert_close(compiled, expected, atol=1e-5, rtol=0)


BLOCKS = {
    "stack": Stack("a", "b"),
    "parallel": Parallel("a", "b"),
    "fuse": Fuse("a", "b"),
    "split": Split("a", "b", splits=[5, 7]),
    "batch_split": BatchSplit("a", "b", batch_sizes=[1, 1]),
    "average": Average("a", "b", weights=[0.3, 0.7]),
}


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("block", list(BLOCKS))
def test_every_block_compiles_without_graph_breaks(arch, block):
    model = _model_with(arch, "seq_bn", names=("a", "b"))
    model.add_adapter_fusion(Fuse("a", "b"))
    model.set_active_adapters(BLOCKS[block])
    inputs = make_inputs(arch)
    backend = CountingBackend()
    with torch.no_grad():
        expected = main_output(model(**inputs))
        if arch == "bert":  # dynamo's own account; fullgraph (below) raises at any break as well
            explanation = dynamo.explain(model)(**inputs)
            assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]
            assert explanation.graph_count == 1
            dynamo.reset()
        compiled = main_output(torch.compile(model, fullgraph=True, backend=backend)(**inputs))
    assert backend.calls == 1
    torch.testing.assert_close(compiled, expected, atol=1e-5, rtol=0)


MULTI_TASK = {  # (arch, method of "a" and "b", a third adapter "c" or None, setup)
    "lora-bert": ("bert", "lora", None, MultiTask("a", "b")),
    "lora-llama": ("llama", "lora", None, MultiTask("a", "b")),
    "lora_other_rank": ("bert", "lora", LoRAConfig(r=4), MultiTask("a", "c", "b")),  # not stacked: every child per row
    "seq_bn-bert": ("bert", "seq_bn", None, MultiTask("a", "b")),
    "seq_bn-llama": ("llama", "seq_bn", None, MultiTask("a", "b")),
    "seq_and_par_bn": ("llama", "seq_bn", ParBnConfig(), MultiTask("a", "c", "b")),  # different post steps per row
    "stack_child": ("bert", "seq_bn", None, MultiTask(Stack("a", "b"), "b")),
    "inside_a_stack": ("bert", "lora", "seq_bn", Stack("c", MultiTask("a", "b"))),
}


def _compilations_matching_eager(model, calls) -> int:
    """Run ``model`` compiled (fullgraph) on each ``(inputs, task_ids)`` of ``calls``, each output
    within 1e-5 of the eager pass; returns how many compilations that took."""
    backend = CountingBackend()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    with torch.no_grad():
        for inputs, task_ids in calls:
            expected = main_output(model(**inputs, task_ids=task_ids))
            torch.testing.assert_close(main_output(compiled(**inputs, task_ids=task_ids)), expected, atol=1e-5, rtol=0)
    return backend.calls


@pytest.mark.parametrize("case", list(MULTI_TASK))
def test_multi_task_compiles_to_one_graph_for_every_value_of_task_ids(case):
    arch, key, third, setup = MULTI_TASK[case]
    model = _model_with(arch, key, names=("a", "b"))
    if third is not None:
        model.add_adapter("c", config=third if not isinstance(third, str) else _config(third))
        perturb_adapter(model, "c", 0.1, seed=5)
    model.set_active_adapters(setup)
    inputs = make_inputs(arch)
    children = len(next(block for block in (setup, *setup.children) if isinstance(block, MultiTask)).children)
    calls = [(inputs, torch.tensor(ids)) for ids in ([1, 0], [0, 0], [children - 1, 1], [1, 1])]
    assert _compilations_matching_eager(model, calls) == 1


def test_a_compiled_multi_task_serves_other_batch_sizes_with_one_dynamic_graph():
    # the second size makes dynamo compile for a symbolic batch size, which serves the rest
    model = _model_with("bert", "lora", names=("a", "b"))
    model.set_active_adapters(MultiTask("a", "b"))
    calls = [(make_inputs("bert", batch=batch), torch.tensor([row % 2 for row in range(batch)])) for batch in (2, 3, 4, 5)]
    assert _compilations_matching_eager(model, calls) == 2


def test_a_compiled_multi_task_refuses_task_ids_out_of_range_when_the_graph_runs():
    model = _model_with("bert", "lora", names=("a", "b"))
    model.set_active_adapters(MultiTask("a", "b"))
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        compiled(**make_inputs("bert"), task_ids=torch.tensor([0, 1]))
        with pytest.raises(RuntimeError, match=r"task_ids holds ids outside 0 … 1; give one task id per batch row: integers 0 … 1"):
            compiled(**make_inputs("bert"), task_ids=torch.tensor([0, 2]))


ROW_MIXES = [["a", "b"], ["b", "a"], ["c", "__base__"], ["a", "a"], ["b", "c"], ["__base__", "a"]]


def test_per_row_adapter_names_compile_once_for_every_mix_of_rows():
    model = _model_with("bert", "lora", names=("a", "b", "c"))
    inputs = make_inputs("bert")
    graphs, whole_graphs = CountingBackend(), CountingBackend()
    compiled = torch.compile(model, backend=graphs)  # adapter_names= routes outside the graph (one break)
    whole = torch.compile(model, fullgraph=True, backend=whole_graphs)  # routed by the caller: one graph
    with torch.no_grad():
        for rows in ROW_MIXES:
            expected = main_output(model(**inputs, adapter_names=rows))
            torch.testing.assert_close(main_output(compiled(**inputs, adapter_names=rows)), expected, atol=1e-5, rtol=0)
            setup, task_ids = model.route_adapter_names(rows)
            with AdapterSetup(setup):
                torch.testing.assert_close(main_output(whole(**inputs, task_ids=task_ids)), expected, atol=1e-5, rtol=0)
    assert graphs.calls == 1 and whole_graphs.calls == 1


def test_a_setup_compiles_once_and_switching_back_reuses_its_graph():
    model = _model_with("bert", "lora", names=("a", "b"))
    inputs = make_inputs("bert")
    expected = {}
    with torch.no_grad():
        for name in "ab":
            model.set_active_adapters(name)
            expected[name] = main_output(model(**inputs))
    backend = CountingBackend()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    counts = []
    with torch.no_grad():
        # set_active_adapters builds a new Stack each time: equal setups are one object (interned)
        for name in ["a", "b", "a", "a", "b"]:
            model.set_active_adapters(name)
            torch.testing.assert_close(main_output(compiled(**inputs)), expected[name], atol=1e-5, rtol=0)
            counts.append(backend.calls)
        model.set_active_adapters(None)
        for name in ["b", "a", "b", "a"]:
            with AdapterSetup(name):
                torch.testing.assert_close(main_output(compiled(**inputs)), expected[name], atol=1e-5, rtol=0)
            counts.append(backend.calls)
    assert counts == [1, 2, 2, 2, 2, 3, 4, 4, 4]


TRAINED = ["seq_bn", "compacter", "seq_bn_inv", "lora", "ia3", "dora", "loha", "lokr", "vera", "oft", "hra", "adalora",
           "mtl_lora", "prefix_tuning", "prompt_tuning", "loreft", "llama_adapter"]


@pytest.mark.parametrize("key", TRAINED)
def test_a_compiled_training_step_matches_eager_and_does_not_recompile(key):
    arch, head = ("llama", "clm") if key in DECODER_ONLY else ("bert", "seq_cls")
    model = _model_with(arch, key, head=head)
    model.train_adapter("a")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)

    def batch(seed):
        inputs = make_inputs(arch, seed=seed)
        labels = inputs["input_ids"] if head == "clm" else torch.tensor([0, 2])
        return dict(inputs, labels=labels)

    def step(module, inputs):
        loss = module(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    step(model, batch(0))  # an eager training forward with labels first (it once broke the compiled step)
    backend = CountingBackend("aot_eager")
    compiled = torch.compile(model, backend=backend)
    for seed in range(1, 5):  # new random inputs of the same shape every step
        inputs = batch(seed)
        with torch.no_grad():
            expected = model(**inputs).loss  # the same training-mode loss (regularisers included), eager
        torch.testing.assert_close(step(compiled, inputs), expected, atol=1e-5, rtol=1e-5)
    assert backend.calls == 1


def test_inductor_compiles_lora_to_the_eager_output():
    model = _model_with("bert", "lora")
    model.set_active_adapters("a")
    inputs = make_inputs("bert")
    with torch.no_grad():
        expected = main_output(model(**inputs))
        compiled = main_output(torch.compile(model, fullgraph=True)(**inputs))
    torch.testing.assert_close(compiled, expected, atol=1e-5, rtol=1e-5)


def test_compiled_passes_read_each_threads_own_adapter_setup():
    seen, barrier = {}, threading.Barrier(2)

    def run(name):
        with AdapterSetup(name):
            barrier.wait()  # both threads inside their blocks at once
            seen[name] = compiled_setup()[0]
            barrier.wait()
        seen[name + " after"] = compiled_setup()

    threads = [threading.Thread(target=run, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"a": Stack("a"), "b": Stack("b"), "a after": None, "b after": None}


def test_interleaved_asyncio_setups_are_refused_by_compiled_passes_not_guessed():
    outcomes, entered, checked = {}, [], []

    async def until(done: list):
        while len(done) < 2:
            await asyncio.sleep(0)

    async def task(name):
        with AdapterSetup(name):
            entered.append(name)
            await until(entered)  # both tasks' blocks are open in this thread now
            try:
                outcomes[name] = compiled_setup()
            except CompositionError as error:
                outcomes[name] = str(error)
            checked.append(name)
            await until(checked)
        outcomes[name + " after"] = AdapterSetup.current()

    async def main():
        await asyncio.gather(task("a"), task("b"))

    asyncio.run(main())
    assert outcomes["a"].startswith("AdapterSetup blocks of several asyncio tasks are open in this thread at once")
    assert outcomes["b"] == outcomes["a"]
    assert outcomes["a after"] is None and outcomes["b after"] is None
    with AdapterSetup("a"):  # the mirror is exact again once the tasks' blocks are closed
        assert compiled_setup() == (Stack("a"), None)


def test_equal_setups_are_one_object():
    model = _model_with("bert", "lora", names=("a", "b"))
    model.set_active_adapters(Stack("a", "b"))
    first = model.active_adapters
    model.set_active_adapters("a,b")
    assert model.active_adapters is first
    with AdapterSetup(["a", "b"]) as override:
        assert override.adapter_setup is first


def test_the_first_pass_of_a_thread_may_be_a_compiled_one():
    # a thread whose first pass is compiled: no eager pass has written the per-thread state yet
    model = _model_with("bert", "lora")
    model.set_active_adapters("a")
    inputs = make_inputs("bert")
    backend, outputs = CountingBackend(), []

    def first_pass():
        with torch.no_grad():
            compiled = torch.compile(model, fullgraph=True, backend=backend)
            outputs.extend(main_output(compiled(**inputs)) for _ in range(2))

    thread = threading.Thread(target=first_pass)
    thread.start()
    thread.join()
    with torch.no_grad():
        expected = main_output(model(**inputs))
    assert len(outputs) == 2 and backend.calls == 1
    for output in outputs:
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)
