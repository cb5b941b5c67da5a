"""AdapterPlus (Steitz & Roth 2024) in every composition block a bottleneck adapter takes part in,
each against its definition computed from single adapters. The adapters sit after the FFN of the
last layer only (``leave_out=[0]``): AdapterPlus does not norm its output again
(``original_ln_after=False``), so there the layer's output is the adapter's output and the blocks'
definitions can be written with whole-model outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs, patched, perturb_adapter, run

from adapters import AdapterPlusConfig, Average, BatchSplit, Fuse, Parallel, Split, Stack

LAST_LAYER = dict(leave_out=[0], stochastic_depth=0.0)


def _model(arch="bert"):
    model = patched(arch)
    for index, name in enumerate(("plus", "plus2")):
        model.add_adapter(name, config=AdapterPlusConfig(reduction_factor=8, **LAST_LAYER))
        perturb_adapter(model, name, scale=0.3, seed=10 * index + 1)
    model.eval()
    return model


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_batchsplit_parallel_and_split_give_each_slice_its_adapter(arch):
    model = _model(arch)
    inputs = make_inputs(arch)
    single = {name: run(model, inputs, name) for name in ("plus", "plus2")}
    assert (single["plus"] - single["plus2"]).abs().max() > 1e-3
    split = run(model, inputs, BatchSplit("plus", "plus2", batch_sizes=[1, 1]))
    torch.testing.assert_close(split[:1], single["plus"][:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(split[1:], single["plus2"][1:], atol=1e-5, rtol=0)
    parallel = run(model, inputs, Parallel("plus", "plus2"))
    torch.testing.assert_close(parallel, torch.cat([single["plus"], single["plus2"]]), atol=1e-5, rtol=0)
    if arch == "bert":  # position-wise after the last attention: sequence segments compare directly
        segments = run(model, inputs, Split("plus", "plus2", splits=[5, 7]))
        torch.testing.assert_close(segments[:, :5], single["plus"][:, :5], atol=1e-5, rtol=0)
        torch.testing.assert_close(segments[:, 5:], single["plus2"][:, 5:], atol=1e-5, rtol=0)


def test_average_is_the_weighted_mean_of_the_adapters_outputs():
    model = _model("bert")
    inputs = make_inputs("bert")
    single = {name: run(model, inputs, name) for name in ("plus", "plus2")}
    averaged = run(model, inputs, Average("plus", "plus2", weights=[0.25, 0.75]))
    torch.testing.assert_close(averaged, 0.25 * single["plus"] + 0.75 * single["plus2"], atol=1e-5, rtol=1e-5)


def test_stack_feeds_the_first_adapters_output_to_the_second():
    """``Stack(plus, plus2)`` at the last FFN, written out with the layer's own modules (BERT:
    ``h = dense(·)``, residual ``x``, norm ``LN``): each adapter first norms its input with the
    residual (``original_ln_before``), adds its bottleneck to that (``residual_before_ln=False``)
    and is not normed again, so ``a1 = plus(LN(h + x))``, ``a2 = plus2(LN(a1 + x))``."""
    model = _model("bert")
    inputs = make_inputs("bert")
    output = model.encoder.layer[1].output
    seen = {}
    hook = output.register_forward_pre_hook(lambda module, args, kwargs: seen.update(args=args, kwargs=kwargs), with_kwargs=True)
    stacked = run(model, inputs, Stack("plus", "plus2"))
    hook.remove()
    intermediate, x = (list(seen["args"]) + [seen["kwargs"].get(k) for k in ("hidden_states", "input_tensor")])[:2]
    host = next(h for h in model._adapter_hosts if "plus" in getattr(h, "adapters", {}) and h.layer_idx == 1)
    plus, plus2 = host.adapters["plus"], host.adapters["plus2"]
    with torch.no_grad():
        h = output.dense(intermediate)
        normed = output.LayerNorm(h + x)
        a1 = plus(normed, normed)[0]
        normed = output.LayerNorm(a1 + x)
        a2 = plus2(normed, normed)[0]
    torch.testing.assert_close(stacked, a2, atol=1e-5, rtol=1e-5)
    assert (stacked - run(model, inputs, "plus")).abs().max() > 1e-3


def test_fuse_runs_adapterfusion_over_adapterplus_adapters():
    model = _model("bert")
    model.add_adapter_fusion(Fuse("plus", "plus2"))
    inputs = make_inputs("bert")
    fused = run(model, inputs, Fuse("plus", "plus2"))
    for name in ("plus", "plus2"):  # the fusion attends over both adapters' outputs: it is neither alone
        assert fused.shape == run(model, inputs, name).shape and (fused - run(model, inputs, name)).abs().max() > 1e-4
    model.train_adapter_fusion(Fuse("plus", "plus2"))
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("adapter_fusion_layer" in k for k in trainable)
