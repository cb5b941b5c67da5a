"""Where the bottleneck hooks sit and what they hand each other during a forward pass.

* A residual source looks up its host's setup once per pass and hands it on with ``x``; the hook
  later in the block uses it (no second lookup).
* Post-LN blocks whose spec names the module whose output is ``h`` (BERT's ``output.dropout``)
  run the adapters on that exact ``h``, never on ``(h + x) − x``: the block output is bit for bit
  the adapter math applied to the sub-block's own ``h`` and ``x``.
* The hand-over dict is ``ForwardContext.hook_values`` (``residuals`` is its former name), and
  every hand-over is taken by the hook it was left for.
"""

from __future__ import annotations

import collections
import functools

import pytest
import torch

import adapters
from adapters import Average, BatchSplit, Fuse, ForwardContext, Split, Stack
from adapters.composition import parse_composition
from adapters.errors import AdapterConfigError
from adapters.hooks.engine import ComposableLayer, prune_setup
from adapters.hooks.spec import ResidualHook, spec_for_model
from adapters.methods.bottleneck import BottleneckLayer
from conftest import make_inputs, n_layers, patched, perturb_adapter, run


def _bottleneck_hosts(model, name: str) -> list:
    return [h for h in model._adapter_hosts if isinstance(h, BottleneckLayer) and name in h.adapters]


@pytest.mark.parametrize("arch", ["bert", "distilbert", "llama"])  # post-LN with h named, post-LN without, pre-LN
def test_one_setup_lookup_per_hook_per_pass(arch, monkeypatch):
    model = patched(arch)
    for index, name in enumerate("ab"):
        model.add_adapter(name, config="double_seq_bn")  # after attention and after the FFN
        perturb_adapter(model, name, seed=index)
    model.set_active_adapters(Stack("a", "b"))
    hosts = _bottleneck_hosts(model, "a")
    inputs = make_inputs(arch)
    run(model, inputs)  # the setup is validated and each host's part of it cached on the first pass

    lookups = collections.Counter()
    original = ComposableLayer.active_setup

    def counted(self, *args, **kwargs):
        lookups[id(self)] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ComposableLayer, "active_setup", counted)
    run(model, inputs)
    per_host = {f"{h.location} of layer {h.layer_idx}": lookups[id(h)] for h in hosts}
    assert len(hosts) == 2 * n_layers(arch)
    assert set(per_host.values()) == {1}, per_host


_SETUPS = ["a", "par", "ln_after_false", Stack("a", "b"), Stack("a", "ln_after_false"), Stack("ln_after_false", "a"),
           Fuse("a", "ln_after_false"), Split("a", "ln_after_false", splits=[5, 4]), BatchSplit("a", "par", batch_sizes=[1, 1]),
           BatchSplit("a", "ln_after_false", batch_sizes=[1, 1]), Average("a", "ln_after_false")]


@pytest.fixture(scope="module")
def bert_with_adapters():
    model = patched("bert")
    configs = {
        "a": "seq_bn",
        "b": "double_seq_bn",
        "par": "par_bn",
        "ln_after_false": adapters.SeqBnConfig(original_ln_after=False),  # y = a: the norm's output is replaced
    }
    for index, (name, config) in enumerate(configs.items()):
        model.add_adapter(name, config=config)
        perturb_adapter(model, name, seed=10 * index)
    model.add_adapter_fusion(Fuse("a", "ln_after_false"))  # both after the FFN only (fused adapters share positions)
    return model


def test_bert_names_the_module_whose_output_is_h():
    spec = spec_for_model(patched("bert"))
    hooks = [hook for stack in spec.stacks() for hook in stack.residual_hooks]
    assert [hook.sublayer_output for hook in hooks] == ["attention.output.dropout", "output.dropout"]


@pytest.mark.parametrize("setup", _SETUPS, ids=str)
def test_post_ln_adapters_run_on_the_exact_sub_block_output(bert_with_adapters, setup):
    """Each BERT block output equals the adapter math (``bottleneck_layer_forward`` with the plain
    LayerNorm) applied to the ``h`` and ``x`` the block itself computed: bit for bit, so ``h`` was
    never recovered as ``(h + x) − x``. Covers both ends of the hook: the model's own norm finishing
    the block (original_ln_after) and the norm returning the adapter output (original_ln_after=False)."""
    model = bert_with_adapters
    inputs = make_inputs("bert")
    seen = {}
    handles = []
    for layer in model.encoder.layer:
        for block in (layer.attention.output, layer.output):  # BertSelfOutput / BertOutput: LayerNorm(dropout(dense(a)) + x)
            key = id(block)
            handles += [
                block.register_forward_pre_hook(lambda m, args, key=key: seen.setdefault(key, {}).update(x=args[1])),
                # dropout is the identity here (eval): h is the dense layer's output
                block.dense.register_forward_hook(lambda m, args, out, key=key: seen[key].update(h=out)),
                block.LayerNorm.register_forward_hook(lambda m, args, out, key=key: seen[key].update(y=out)),
            ]
    try:
        run(model, inputs, setup)
    finally:
        for handle in handles:
            handle.remove()
    setup = parse_composition(setup)
    with ForwardContext(model, setup).activate(), torch.no_grad():
        for layer in model.encoder.layer:
            for block in (layer.attention.output, layer.output):
                values = seen[id(block)]
                layer_norm = functools.partial(torch.nn.LayerNorm.forward, block.LayerNorm)
                expected = block.bottleneck_layer_forward(prune_setup(setup, block.adapter_names()), values["h"], values["x"], layer_norm)
                assert torch.equal(values["y"], expected), f"{block.location} of layer {block.layer_idx}"


def test_every_hand_over_is_taken_and_the_dict_has_its_honest_name(bert_with_adapters):
    model = bert_with_adapters
    contexts = []
    handle = model.encoder.layer[-1].register_forward_hook(lambda *args: contexts.append(ForwardContext.get_context()))
    try:
        run(model, make_inputs("bert"), Stack("a", "ln_after_false"))
    finally:
        handle.remove()
    context = contexts[0]
    assert context.residuals is context.hook_values  # the former name still reads the same dict
    assert context.hook_values == {}  # each residual hand-over and each replaced norm output was taken


def test_a_gated_prefix_hands_the_attention_input_over_in_hook_values():
    model = patched("bert")
    model.add_adapter("g", config=adapters.PrefixTuningConfig(prefix_length=3, use_gating=True), set_active=True)
    contexts = []
    handle = model.encoder.layer[-1].register_forward_hook(lambda *args: contexts.append(ForwardContext.get_context()))
    try:
        run(model, make_inputs("bert"))
    finally:
        handle.remove()
    keys = [key for key in contexts[0].hook_values if isinstance(key, tuple)]
    assert len(keys) == model.config.num_hidden_layers and {key[0] for key in keys} == {"attention_input"}


def test_sublayer_output_belongs_to_post_ln_hooks():
    hook = ResidualHook("output_adapter", host="output", residual_source="output", norm="output.LayerNorm",
                        sublayer_output="output.dropout")
    assert hook.sublayer_output == "output.dropout"
    with pytest.raises(AdapterConfigError, match="sublayer_output"):
        ResidualHook("output_adapter", host="output_adapters", create_host=True, residual_source="post_attention_layernorm",
                     sublayer="mlp", sublayer_output="mlp.down_proj")
