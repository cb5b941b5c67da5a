"""Issue 20, case 4: setups that used to pass activation and crash in the forward pass with raw
torch errors. Each either runs and equals its definition now, or is refused with a
:class:`~adapters.errors.CompositionError` that names the block, the adapter and its method (and
the valid form) — at activation when only the setup and the methods decide, at the start of the
forward pass when the input decides — and leaves the model as it was.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_unchanged, make_inputs, model_state, patched, perturb_adapter, run

from adapters import AdapterSetup, Average, BatchSplit, Fuse, Parallel, Split, Stack, parse_composition
from adapters.context import ForwardContext
from adapters.errors import AdapterConfigError, CompositionError
from adapters.hooks.engine import prune_setup


def _model(configs: dict, arch: str = "bert", head: str = "base"):
    model = patched(arch, head)
    for i, (name, config) in enumerate(configs.items()):
        model.add_adapter(name, config=config)
        perturb_adapter(model, name, scale=0.3, seed=11 * i)
    return model


def _rows(inputs: dict, rows) -> dict:
    index = torch.as_tensor(list(rows))
    return {k: v.index_select(0, index) for k, v in inputs.items()}


def _refused_at_activation(model, setup, *fragments):
    """set_active_adapters(setup) raises CompositionError naming every fragment; nothing changes.
    The first forward under AdapterSetup(setup) raises the same."""
    model.set_active_adapters("a")
    before = model_state(model)
    with pytest.raises(CompositionError) as error:
        model.set_active_adapters(setup)
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))
    assert_unchanged(model, before)
    with pytest.raises(CompositionError) as again:
        with AdapterSetup(setup), torch.no_grad():
            model(**make_inputs("bert", batch=2, seq=6))
    assert str(again.value) == str(error.value)
    assert_unchanged(model, before)
    return str(error.value)


# -- Split inside Parallel / Average --------------------------------------------------------------
@pytest.mark.parametrize("config", ["seq_bn", "par_bn", "lora", "ia3"])
def test_parallel_with_a_split_branch_runs_each_branch_as_defined(config):
    """Parallel("a", Split("a", splits=[2])): crashed for bottleneck adapters (the untouched tokens
    had no bottleneck output to join); branch i equals its setup alone."""
    model = _model({"a": config})
    inputs = make_inputs("bert", batch=3, seq=6)
    out = run(model, inputs, Parallel("a", Split("a", splits=[2])))
    assert out.shape[0] == 6 and torch.isfinite(out).all()
    torch.testing.assert_close(out[:3], run(model, inputs, "a"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[3:], run(model, inputs, Split("a", splits=[2])), atol=1e-5, rtol=1e-5)


def _host_output(model, host, setup, *args):
    setup = parse_composition(setup)
    with ForwardContext(model, setup).activate(), torch.no_grad():
        if host.method == "bottleneck":
            pruned = prune_setup(setup, host.adapter_names())
            return host.bottleneck_layer_forward(pruned, *args, lambda t: t)
        return host(*args)


@pytest.mark.parametrize("config", ["seq_bn", "par_bn"])
def test_average_with_a_split_child_is_the_split_token_by_token_bottleneck(config):
    """Average("a", Split("b", splits=[3])): crashed; at an adapter position the first 3 tokens
    get Average(a, b) and the others Average(a, <b's Split passes them through>)."""
    model = _model({"a": config, "b": config})
    host = model.encoder.layer[0].output
    generator = torch.Generator().manual_seed(0)
    hidden, residual = torch.randn(2, 6, 32, generator=generator), torch.randn(2, 6, 32, generator=generator)
    out = _host_output(model, host, Average("a", Split("b", splits=[3])), hidden, residual)
    both = _host_output(model, host, Average("a", "b"), hidden, residual)
    passed = _host_output(model, host, Average("a", Split("b", splits=[0])), hidden, residual)
    torch.testing.assert_close(out[:, :3], both[:, :3], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[:, 3:], passed[:, 3:], atol=1e-6, rtol=1e-6)
    full = run(model, make_inputs("bert", batch=2, seq=6), Average("a", Split("b", splits=[3])))
    assert full.shape == (2, 6, 32) and torch.isfinite(full).all()


def test_average_with_a_split_child_averages_the_deltas_token_by_token_lora():
    """For LoRA: W + ½ΔW_a + ½ΔW_b on the first 3 tokens, W + ½ΔW_a on the rest (the Split's other
    tokens keep the weight as it is)."""
    model = _model({"a": "lora", "b": "lora"})
    host = model.encoder.layer[0].attention.self.query
    x = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(1))
    out = _host_output(model, host, Average("a", Split("b", splits=[3])), x)
    base = host.base_forward(x)
    delta_a, delta_b = (x @ host.loras[n].delta_weight().T for n in "ab")
    in_split = torch.tensor([1.0, 1, 1, 0, 0, 0]).view(1, 6, 1)
    torch.testing.assert_close(out, base + 0.5 * delta_a + 0.5 * in_split * delta_b, atol=1e-5, rtol=1e-5)


# -- BatchSplit inside Stack / BatchSplit -----------------------------------------------------------
@pytest.mark.parametrize("config", ["lora", "ia3", "seq_bn"])
def test_batchsplit_then_split_in_a_stack_runs_rows_as_defined(config):
    """Stack(BatchSplit("l", "a", batch_sizes=[2, 2]), Split("a", splits=[2])): rows 0-1 run
    Stack(l, Split(a)), rows 2-3 Stack(a, Split(a))."""
    model = _model({"a": config, "l": config})
    inputs = make_inputs("bert", batch=4, seq=6)
    out = run(model, inputs, Stack(BatchSplit("l", "a", batch_sizes=[2, 2]), Split("a", splits=[2])))
    first = run(model, _rows(inputs, [0, 1]), Stack("l", Split("a", splits=[2])))
    second = run(model, _rows(inputs, [2, 3]), Stack("a", Split("a", splits=[2])))
    torch.testing.assert_close(out, torch.cat([first, second]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", ["lora", "seq_bn", "prefix_tuning"])
def test_two_batchsplits_in_a_stack_run_rows_as_defined(config):
    """Stack(BatchSplit("l", "a", batch_sizes=[2, 2]), BatchSplit("b", "a", batch_sizes=[2, 2]))."""
    model = _model({"a": config, "b": config, "l": config})
    inputs = make_inputs("bert", batch=4, seq=6)
    out = run(model, inputs, Stack(BatchSplit("l", "a", batch_sizes=[2, 2]), BatchSplit("b", "a", batch_sizes=[2, 2])))
    first = run(model, _rows(inputs, [0, 1]), Stack("l", "b"))
    second = run(model, _rows(inputs, [2, 3]), Stack("a", "a"))
    torch.testing.assert_close(out, torch.cat([first, second]), atol=1e-5, rtol=1e-5)


def test_batchsplits_that_fit_different_batches_are_refused_at_activation():
    model = _model({"a": "lora", "b": "lora", "l": "lora"})
    message = _refused_at_activation(
        model,
        Stack(BatchSplit("l", "a", batch_sizes=[2, 2]), BatchSplit("b", "a", batch_sizes=[3, 2])),
        "BatchSplit[l, a]", "[2, 2]", "BatchSplit[b, a]", "[3, 2]", "different batch sizes",
    )
    assert "give both batch_sizes that fit one batch size" in message


def test_a_batchsplit_nested_in_a_part_of_another_must_add_up_to_the_part():
    model = _model({"a": "seq_bn", "b": "seq_bn", "c": "lora"})
    _refused_at_activation(
        model,
        BatchSplit(BatchSplit("a", "b", batch_sizes=[2, 2]), "c", batch_sizes=[3, 1]),
        "BatchSplit[a, b] with batch_sizes [2, 2] (4 rows)", "part 0 of", "which has 3 rows", "add up to 3",
    )
    inputs = make_inputs("bert", batch=4, seq=6)
    out = run(model, inputs, BatchSplit(BatchSplit("a", "b", batch_sizes=[1, 2]), "c", batch_sizes=[3, 1]))
    expected = [run(model, _rows(inputs, rows), name) for rows, name in [([0], "a"), ([1, 2], "b"), ([3], "c")]]
    torch.testing.assert_close(out, torch.cat(expected), atol=1e-5, rtol=1e-5)


# -- Parallel followed by BatchSplit in a Stack ----------------------------------------------------
def test_batchsplit_after_parallel_sees_the_replicated_batch():
    """Stack(Parallel("a", "b"), BatchSplit("l", "a", batch_sizes=[4, 4])): the BatchSplit cuts
    the 2·B replicated rows, so it fits an input batch of 4 (rows 0-3 are branch a's copy)."""
    model = _model({"a": "seq_bn", "b": "lora", "l": "ia3"})
    setup = Stack(Parallel("a", "b"), BatchSplit("l", "a", batch_sizes=[4, 4]))
    inputs = make_inputs("bert", batch=4, seq=6)
    out = run(model, inputs, setup)
    torch.testing.assert_close(out[:4], run(model, inputs, Stack("a", "l")), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[4:], run(model, inputs, Stack("b", "a")), atol=1e-5, rtol=1e-5)


def test_batchsplit_after_parallel_on_another_batch_is_refused_at_forward_start():
    model = _model({"a": "seq_bn", "b": "lora", "l": "ia3"})
    setup = Stack(Parallel("a", "b"), BatchSplit("l", "a", batch_sizes=[4, 4]))
    model.set_active_adapters(setup)
    before = model_state(model)
    with pytest.raises(CompositionError) as error:
        with torch.no_grad():
            model(**make_inputs("bert", batch=3, seq=6))
    message = str(error.value)
    for fragment in ("BatchSplit[l, a]", "[4, 4]", "replicated 2× by Parallel", "input batch has 3 rows", "input batch of 4 rows"):
        assert fragment in message, message
    assert_unchanged(model, before)


def test_batchsplit_after_parallel_that_no_batch_fits_is_refused_at_activation():
    model = _model({"a": "seq_bn", "b": "lora", "l": "ia3"})
    _refused_at_activation(
        model,
        Stack(Parallel("a", "b"), BatchSplit("l", "a", batch_sizes=[3, 2])),
        "BatchSplit[l, a]", "[3, 2]", "not a multiple of 2", "inside the Parallel branches",
    )


# -- invertible adapters inside BatchSplit ---------------------------------------------------------
def test_invertible_adapter_in_a_batchsplit_that_does_not_fit_the_batch_is_refused_at_forward_start():
    """BatchSplit("inv", "a", batch_sizes=[2, 4]) on a batch of 4 sequences of 6 tokens: the sizes
    add up to the sequence length, not the batch; the invertible block at the embeddings crashed
    on it. Now the forward refuses before any layer runs."""
    model = _model({"inv": "seq_bn_inv", "a": "seq_bn"}, head="mlm")
    model.set_active_adapters(BatchSplit("inv", "a", batch_sizes=[2, 4]))
    before = model_state(model)
    seen = []
    hook = model.bert.embeddings.register_forward_hook(lambda *args: seen.append(1))
    try:
        with pytest.raises(CompositionError) as error, torch.no_grad():
            model(**make_inputs("bert", batch=4, seq=6))
    finally:
        hook.remove()
    assert not seen  # refused at the start: nothing ran
    message = str(error.value)
    for fragment in ("BatchSplit[inv, a]", "batch_sizes [2, 4]", "the input batch has 4 rows", "add up to 4"):
        assert fragment in message, message
    assert_unchanged(model, before)
    # the same setup under AdapterSetup, and a fitting batch runs each part as defined
    with pytest.raises(CompositionError, match=r"input batch has 4 rows"):
        run(model, make_inputs("bert", batch=4, seq=6), BatchSplit("inv", "a", batch_sizes=[2, 4]))
    inputs = make_inputs("bert", batch=6, seq=6)
    out = run(model, inputs, BatchSplit("inv", "a", batch_sizes=[2, 4]))
    expected = torch.cat([run(model, _rows(inputs, range(2)), "inv"), run(model, _rows(inputs, range(2, 6)), "a")])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_invertible_block_of_a_row_is_the_first_of_its_own_setup():
    """Stack(Parallel("a", "inv"), "inv"): branch a's rows run Stack(a, inv), so the invertible
    block of inv applies to them too (it used to be skipped there)."""
    model = _model({"inv": "seq_bn_inv", "a": "seq_bn"}, head="mlm")
    inputs = make_inputs("bert", batch=2, seq=6)
    out = run(model, inputs, Stack(Parallel("a", "inv"), "inv"))
    torch.testing.assert_close(out[:2], run(model, inputs, Stack("a", "inv")), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[2:], run(model, inputs, Stack("inv", "inv")), atol=1e-5, rtol=1e-5)


# -- prefixes (and other methods) below a block they do not support, at any depth -----------------
def test_prefix_in_a_stack_inside_a_split_is_refused_at_activation():
    model = _model({"a": "seq_bn", "p": "prefix_tuning"})
    message = _refused_at_activation(
        model, Split(Stack("p", "a"), "a", splits=[2, 2]), "Adapter 'p'", "'prefix_tuning'", "Split[Stack[p, a], a]",
        "does not support Split blocks", "Valid form: put it outside the Split",
    )
    assert "it sits in Stack[p, a]" in message


@pytest.mark.parametrize(
    "configs,setup,fragments",
    [
        ({"a": "seq_bn", "p": "prompt_tuning"}, Parallel(Stack("p", "a"), "a"), ["Adapter 'p'", "'prompt_tuning'", "Parallel"]),
        ({"a": "seq_bn", "p": "prompt_tuning"}, BatchSplit(Stack("p", "a"), "a", batch_sizes=[1, 1]), ["'prompt_tuning'", "BatchSplit"]),
        ({"a": "seq_bn", "p": "prefix_tuning"}, Average(Stack("p", "a"), "a"), ["Adapter 'p'", "'prefix_tuning'", "Average"]),
        ({"a": "seq_bn", "l": "lora"}, Fuse("a", Stack("l", "a")), ["Adapter 'l'", "'lora'", "Fuse", "only bottleneck adapters are fused"]),
    ],
)
def test_methods_are_checked_against_every_enclosing_block(configs, setup, fragments):
    model = _model(configs)
    for block in [b for b in [setup] if isinstance(b, Fuse)]:
        model.add_adapter_fusion(Fuse("a", "a", name=block.name))  # a fusion named like the block
    _refused_at_activation(model, setup, *fragments)


def test_merged_adapter_outside_a_stack_is_refused():
    model = _model({"a": "lora", "b": "lora"})
    model.merge_adapter("a")
    _refused_at_activation(model, Parallel("a", "b"), "'a' is merged into the weights", "Parallel[a, b]", "reset_adapter")
    model.set_active_adapters(Stack("a", "b"))  # a Stack is fine


def test_unknown_adapters_and_fusions_raise_composition_errors():
    model = _model({"a": "seq_bn", "b": "seq_bn"})
    _refused_at_activation(model, Stack("a", "zzz"), "unknown adapter 'zzz'", "the model has: a, b")
    _refused_at_activation(model, Fuse("a", "b"), "needs an AdapterFusion named 'a,b'", "add_adapter_fusion")
    with pytest.raises(CompositionError, match="direct child of a top-level Stack"):
        model.set_active_adapters(Average("a", Parallel("a", "b")))


# -- a leave_out child of an Average under a BatchSplit: each row drops exactly its own -------------
def test_average_over_a_batchsplit_drops_absent_children_row_by_row():
    """Average("a", BatchSplit("a", "b")) with b left out of layer 0: row 1 runs Average(a, b),
    which at layer 0 is a alone (weights rescaled), as documented for absent children."""
    model = _model({"a": "seq_bn", "b": "seq_bn[leave_out=[0]]"})
    inputs = make_inputs("bert", batch=2, seq=6)
    out = run(model, inputs, Average("a", BatchSplit("a", "b", batch_sizes=[1, 1])))
    torch.testing.assert_close(out[:1], run(model, _rows(inputs, [0]), Average("a", "a")), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:], run(model, _rows(inputs, [1]), Average("a", "b")), atol=1e-5, rtol=1e-5)


# -- skip_layers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("skip_layers,bad", [([99], "[99]"), ([0, -1], "[-1]"), ([True], "[True]"), (["0"], "['0']"), (3, "3")])
def test_skip_layers_outside_the_model_are_refused(skip_layers, bad):
    model = _model({"a": "seq_bn"})
    model.set_active_adapters("a", skip_layers=[1])
    before = model_state(model)
    with pytest.raises(AdapterConfigError) as error:
        model.set_active_adapters("a", skip_layers=skip_layers)
    message = str(error.value)
    assert "skip_layers" in message and bad in message and "layer indices 0 … 1" in message and "2 layers" in message, message
    assert_unchanged(model, before)


def test_valid_skip_layers_still_work():
    model = _model({"a": "seq_bn"})
    inputs = make_inputs("bert", batch=2, seq=6)
    base = run(model, inputs)  # nothing active
    model.set_active_adapters("a", skip_layers=[0, 1])
    torch.testing.assert_close(run(model, inputs), base, atol=0, rtol=0)
    model.set_active_adapters("a", skip_layers=[0])
    assert (run(model, inputs) - base).abs().max() > 1e-3
    model.set_active_adapters("a", skip_layers=[])
    assert model.adapters_config.skip_layers is None


# -- input-dependent checks at the start of the forward pass ---------------------------------------
def test_split_in_a_pass_that_continues_a_kv_cache_is_refused():
    """Split cuts at fixed positions; a decoding step's new token sits after the cached ones, which
    the adapter positions would take for position 0 (segment 0). Refused before any layer runs;
    without a cache generate() runs the Split as defined."""
    from conftest import left_padded_prompt

    model = _model({"a": "lora", "b": "lora"}, arch="gpt2", head="clm")
    ids, mask = left_padded_prompt()
    model.set_active_adapters(Split("a", "b", splits=[3, 3]))
    before = model_state(model)
    with pytest.raises(CompositionError) as error:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2)
    message = str(error.value)
    for fragment in ("Split[a, b]", "splits [3, 3]", "KV cache of 6 positions", "use_cache=False"):
        assert fragment in message, message
    assert_unchanged(model, before)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, min_new_tokens=2, use_cache=False)
    assert out.shape == (2, 8)


def test_parallel_continuing_a_cache_of_other_rows_is_refused():
    model = _model({"a": "lora", "b": "lora"}, arch="gpt2", head="clm")
    inputs = make_inputs("gpt2", batch=2, seq=6, padded=False)
    with torch.no_grad():
        cache = model(**inputs, use_cache=True).past_key_values  # made without Parallel: 2 rows
    model.set_active_adapters(Parallel("a", "b"))
    before = model_state(model)
    step = {"input_ids": inputs["input_ids"][:, -1:], "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    with pytest.raises(CompositionError) as error, torch.no_grad():
        model(**step, past_key_values=cache)
    message = str(error.value)
    for fragment in ("Parallel[a, b]", "input batch of 2 rows 2× (4 rows)", "KV cache passed has 2 rows"):
        assert fragment in message, message
    assert_unchanged(model, before)
