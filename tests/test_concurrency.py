"""One consistent set of adapters per forward pass (issue 20, case 7).

A forward pass holds the model's registry lock shared (``adapters.context.RegistryLock``); adding,
deleting, merging or unmerging adapters holds it alone. So a pass that runs while another thread
deletes and re-adds an adapter either sees the adapter in every layer (the full output) or, when
it starts while the adapter is gone, fails with the clear "unknown adapter" error of its setup —
never the adapter in only some layers, the base output while it is active, or a bare KeyError.
"""

from __future__ import annotations

import copy
import pickle
import threading
import time

import pytest
import torch

from adapters import AdapterSetup, LoRAConfig, SeqBnConfig
from adapters.context import RegistryLock, registry_lock
from adapters.errors import CompositionError
from conftest import assert_unchanged, make_inputs, model_state, patched, run

CYCLES = 100


def _classify(output, full, base) -> str:
    if torch.allclose(output, full, atol=1e-6, rtol=0):
        return "full"
    if torch.allclose(output, base, atol=1e-6, rtol=0):
        return "base"
    return "partial"


@pytest.mark.parametrize(
    "config",
    [
        LoRAConfig(init_weights="bert", init_weights_seed=3, selfattn_lora=True, output_lora=True),
        SeqBnConfig(reduction_factor=4, init_weights_seed=3),
    ],
    ids=["lora", "seq_bn"],
)
def test_deleting_an_adapter_while_another_thread_runs_it_gives_all_or_a_clear_error(config):
    model = patched("bert")
    inputs = make_inputs("bert")
    model.add_adapter("x", config=config)
    full, base = run(model, inputs, setup="x"), run(model, inputs)
    assert not torch.allclose(full, base, atol=1e-4), "the adapter must change the output to be told apart"

    outcomes: list[str] = []
    writer_done = threading.Event()
    writer_errors: list[BaseException] = []

    def forwards():
        while not writer_done.is_set() or len(outcomes) < 5:
            try:
                with torch.no_grad(), AdapterSetup("x"):
                    output = model(**inputs).last_hidden_state
                outcomes.append(_classify(output, full, base))
            except CompositionError as error:
                outcomes.append("unknown-adapter error" if "'x'" in str(error) else f"other CompositionError: {error}")
            except Exception as error:  # a bare KeyError, a tensor error, ...: the failure this test guards against
                outcomes.append(f"{type(error).__name__}: {error}")

    def delete_and_re_add():
        try:
            for _ in range(CYCLES):
                model.delete_adapter("x")
                time.sleep(0.0005)  # let a forward pass start while the adapter is gone
                model.add_adapter("x", config=config)
                time.sleep(0.0005)
        except BaseException as error:  # pragma: no cover - reported below
            writer_errors.append(error)
        finally:
            writer_done.set()

    reader = threading.Thread(target=forwards)
    writer = threading.Thread(target=delete_and_re_add)
    reader.start()
    writer.start()
    writer.join(timeout=60)
    reader.join(timeout=60)
    assert not writer.is_alive() and not reader.is_alive(), "a thread hung (deadlock?)"
    assert not writer_errors, writer_errors
    kinds = {kind: outcomes.count(kind) for kind in set(outcomes)}
    assert set(kinds) <= {"full", "unknown-adapter error"}, kinds
    assert kinds.get("full", 0) > 0, kinds
    assert torch.allclose(run(model, inputs, setup="x"), full, atol=1e-6, rtol=0)


def test_merging_waits_for_passes_in_flight_and_passes_see_all_or_nothing_merged():
    model = patched("bert")
    inputs = make_inputs("bert")
    model.add_adapter("x", config=LoRAConfig(init_weights="bert", init_weights_seed=3, output_lora=True))
    full, base = run(model, inputs, setup="x"), run(model, inputs)
    outcomes: list[str] = []
    done = threading.Event()

    def forwards():
        while not done.is_set():
            try:
                with torch.no_grad(), AdapterSetup("x"):  # merged or not, the setup computes the same function
                    outcomes.append(_classify(model(**inputs).last_hidden_state, full, base))
            except Exception as error:
                outcomes.append(f"{type(error).__name__}: {error}")

    reader = threading.Thread(target=forwards)
    reader.start()
    try:
        for _ in range(30):
            model.merge_adapter("x")
            model.reset_adapter()
    finally:
        done.set()
        reader.join(timeout=60)
    assert set(outcomes) <= {"full"}, {kind: outcomes.count(kind) for kind in set(outcomes)}


def test_changing_adapters_inside_a_forward_pass_of_the_same_model_is_refused():
    model = patched("bert")
    inputs = make_inputs("bert")
    model.add_adapter("x", config="lora", set_active=True)
    before = model_state(model)
    errors = []

    def hook(module, args, output):
        try:
            model.delete_adapter("x")
        except RuntimeError as error:
            errors.append(error)

    handle = model.encoder.layer[0].register_forward_hook(hook)
    try:
        run(model, inputs)
    finally:
        handle.remove()
    assert len(errors) == 1
    assert "delete_adapter('x')" in str(errors[0]) and "inside a forward pass" in str(errors[0])
    assert_unchanged(model, before)


def test_nested_and_repeated_passes_do_not_wait_for_themselves():
    model = patched("bert", "seq_cls")  # the head model's forward calls the base model's: one lock, re-entered
    inputs = make_inputs("bert")
    model.add_adapter("x", config="lora", set_active=True)
    lock = registry_lock(model.adapters_config)
    with lock.writing("test"):  # a change may run passes (a writer reads too)
        inside = run(model, inputs)
    assert torch.equal(inside, run(model, inputs))
    assert not lock.reading_here and lock._readers == 0 and lock._writer is None


def test_a_copied_model_gets_a_fresh_lock():
    model = patched("bert")
    model.add_adapter("x", config="lora", set_active=True)
    inputs = make_inputs("bert")
    expected = run(model, inputs)
    lock = registry_lock(model.adapters_config)
    with lock.reading():
        clone = copy.deepcopy(model)  # while the original's lock is held
    copied = registry_lock(clone.adapters_config)
    assert copied is not lock and copied._readers == 0
    clone.delete_adapter("x")  # would wait forever on a copied held lock
    assert torch.allclose(run(model, inputs), expected)
    assert isinstance(pickle.loads(pickle.dumps(lock)), RegistryLock)


def test_a_waiting_change_is_not_starved_by_a_stream_of_passes():
    lock = RegistryLock()
    stop = threading.Event()
    changed = threading.Event()

    def reader():
        while not stop.is_set():
            with lock.reading():
                time.sleep(0.001)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        def writer():
            with lock.writing():
                changed.set()

        thread = threading.Thread(target=writer)
        thread.start()
        assert changed.wait(timeout=10), "the change never got the lock"
        thread.join()
    finally:
        stop.set()
        for thread in readers:
            thread.join()
