"""Prefix tuning through the attention wrapper: definition (prefix as past keys/values of the
unmodified model), padding, backends, KV cache and generate, composition, eject, checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    assert_generate_is_greedy_decoding,
    ARCH_HEADS_LIGHT,
    ARCHS,
    DECODERS,
    NO_PREFIX,
    NO_SDPA,
    left_padded_prompt,
    make_inputs,
    make_model,
    patched,
    perturb_adapter,
    run,
)
from transformers import DynamicCache

import adapters
from adapters.compat import CACHE_NAME, CACHE_NAMES
from adapters import AdapterSetup, Average, BatchSplit, Fuse, Parallel, PrefixTuningConfig, Split, Stack

FLAT = PrefixTuningConfig(prefix_length=4, flat=True)
MLP = PrefixTuningConfig(prefix_length=3, bottleneck_size=16)
CACHE_ARCHS = ("bert", "llama", "mistral", "qwen2", "gpt2", "qwen3", "electra")  # take past_key_values and position_ids plainly


def _with_prefix(arch, head="base", config=FLAT, name="p", seed=0):
    model = patched(arch, head)
    model.add_adapter(name, config=config, set_active=True)
    perturb_adapter(model, name, scale=1.0, seed=seed)
    return model


def _layer_prefixes(model, name):
    """``[(keys, values)]`` per layer, each ``(kv_heads, P, head_dim)``, straight from the parameters."""
    states = model.base_model.prefix_tuning.prefix_tunings[name]["self_prefix"]()
    return [(layer[0], layer[1]) for layer in states]


def _reference(arch, head, prefixes, inputs, shift=False):
    """The unmodified model with the prefix fed as past keys/values (mask extended by ones)."""
    model = make_model(arch, head)
    batch, length = inputs["input_ids"].shape
    cache = DynamicCache(config=model.config)
    for layer_idx, (keys, values) in enumerate(prefixes):
        cache.update(keys.unsqueeze(0).expand(batch, -1, -1, -1), values.unsqueeze(0).expand(batch, -1, -1, -1), layer_idx)
    n = prefixes[0][0].shape[1]
    mask = torch.cat([torch.ones(batch, n, dtype=torch.long), inputs["attention_mask"]], dim=1)
    kwargs = dict(input_ids=inputs["input_ids"], attention_mask=mask, **{CACHE_NAME: cache})
    if not shift:  # decoders number the real tokens of each row from 0 while a prefix is active
        positions = _position_ids(inputs["attention_mask"]) if arch in DECODERS else torch.arange(length).expand(batch, -1)
        kwargs["position_ids"] = positions
    with torch.no_grad():
        output = model(**kwargs)
    return output.logits if hasattr(output, "logits") and output.logits is not None else output.last_hidden_state


@pytest.mark.parametrize("arch", CACHE_ARCHS)
def test_prefix_equals_past_key_values_of_unmodified_model(arch):
    head = "clm" if arch in DECODERS else "base"
    model = _with_prefix(arch, head)
    inputs = make_inputs(arch)
    ours = run(model, inputs)
    base = run(make_model(arch, head), inputs)
    assert (ours - base).abs().max() > 1e-3  # the prefix does something
    torch.testing.assert_close(ours, _reference(arch, head, _layer_prefixes(model, "p"), inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shift_positions_equals_past_key_values_with_default_positions(arch):
    model = _with_prefix(arch, "clm", PrefixTuningConfig(prefix_length=4, flat=True, shift_positions=True))
    inputs = make_inputs(arch)
    expected = _reference(arch, "clm", _layer_prefixes(model, "p"), inputs, shift=True)
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,head", [(a, h) for a, h in ARCH_HEADS_LIGHT if a not in NO_PREFIX])
def test_prefix_runs_on_every_architecture_and_head(arch, head):
    model = _with_prefix(arch, head, MLP)
    inputs = make_inputs(arch)
    out = run(model, inputs)
    assert torch.isfinite(out).all()
    assert (out - run(make_model(arch, head), inputs)).abs().max() > 1e-4


def _position_ids(mask):
    """Each row's real tokens numbered from 0; padding keeps the model's own positions."""
    return torch.where(mask.bool(), mask.cumsum(-1) - 1, torch.arange(mask.shape[1]).expand_as(mask))


@pytest.mark.parametrize("arch", ["bert", "llama", "mistral", "qwen2", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_equal_rows_run_alone(arch, side):
    model = _with_prefix(arch, "base", MLP)
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 99, (2, 9), generator=generator)
    mask = torch.ones(2, 9, dtype=torch.long)
    real = slice(3, 9) if side == "left" else slice(0, 6)
    mask[1] = 0
    mask[1, real] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if arch == "bert":  # absolute positions from 0 regardless of padding, as in the base model
        batch["position_ids"] = _position_ids(mask)
    # decoders: with a prefix active, positions count the real tokens (see the docs)
    out = run(model, batch)
    alone = run(model, {"input_ids": ids[1:, real], "attention_mask": torch.ones(1, 6, dtype=torch.long)})
    torch.testing.assert_close(out[1, real], alone[0], atol=1e-5, rtol=0)
    full = run(model, {"input_ids": ids[:1], "attention_mask": torch.ones(1, 9, dtype=torch.long)})
    torch.testing.assert_close(out[0], full[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_prefix_mlp_runs_once_per_pass_and_is_kept_while_unchanged(arch, monkeypatch):
    """One pool per model: the MLP reparameterisation produces every layer's prefix in one call
    per pass; passes without gradients reuse it until one of its parameters changes."""
    from adapters.methods.prefix_tuning import PrefixTuning

    model = _with_prefix(arch, "base", MLP)
    calls = []
    forward = PrefixTuning.forward
    monkeypatch.setattr(PrefixTuning, "forward", lambda self: calls.append(self) or forward(self))
    batch = make_inputs(arch, batch=2, seq=5)
    model(**batch)  # recording gradients: computed for this pass
    assert len(calls) == 1 and model.config.num_hidden_layers > 1
    first = run(model, batch)
    assert run(model, batch) is not None and len(calls) == 2  # the second pass without gradients reuses
    with torch.no_grad():
        next(model.base_model.prefix_tuning.prefix_tunings["p"].parameters()).add_(0.5)
    changed = run(model, batch)
    assert len(calls) == 3 and (changed - first).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_extended_mask_is_built_once_per_pass(arch, monkeypatch):
    """transformers hands every layer the same mask tensor: the wrapper extends it once per pass."""
    from adapters.hooks import attention

    model = _with_prefix(arch, "base", MLP)
    calls = []
    extend = attention._extend_mask
    monkeypatch.setattr(attention, "_extend_mask", lambda *args: calls.append(1) or extend(*args))
    ids, mask = left_padded_prompt()
    batch = {"input_ids": ids, "attention_mask": mask}
    out = run(model, batch)
    assert len(calls) == 1 and model.config.num_hidden_layers > 1
    monkeypatch.setattr(attention, "_extend_mask", extend)
    torch.testing.assert_close(run(model, batch), out, atol=0, rtol=0)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in NO_SDPA + NO_PREFIX])
def test_eager_equals_sdpa(arch):
    inputs = make_inputs(arch)
    sdpa = _with_prefix(arch, "base", MLP)
    eager = _with_prefix(arch, "base", MLP)
    eager.set_attn_implementation("eager")  # the next forward wraps it again
    out_eager = run(eager, inputs)
    assert eager.config._attn_implementation == "adapters_eager"
    assert sdpa.config._attn_implementation == "adapters_sdpa"
    torch.testing.assert_close(out_eager, run(sdpa, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2", "distilbert"])
@pytest.mark.parametrize("config", [FLAT, MLP], ids=["flat", "mlp"])
def test_gradients_reach_prefix_and_checkpointing_gives_the_same(arch, config):
    grads = []
    for checkpointing in (False, True):
        model = _with_prefix(arch, "seq_cls", config)
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train_adapter("p")
        out = model(**make_inputs(arch), labels=torch.tensor([0, 2]))
        out.loss.backward()
        params = dict(model.base_model.prefix_tuning.named_parameters())
        assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
        base_grads = [p.grad for n, p in model.named_parameters() if "prefix_tuning" not in n and "classifier" not in n
                      and "score" not in n and "pre_classifier" not in n]
        assert all(g is None for g in base_grads)
        grads.append({n: p.grad.clone() for n, p in params.items()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gpt2"])
def test_generate_with_and_without_cache_agree(arch):
    model = _with_prefix(arch, "clm", MLP)
    ids, mask = left_padded_prompt()
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = assert_generate_is_greedy_decoding(model, dict(input_ids=ids, attention_mask=mask), steps=6, pad_token_id=0)
    with AdapterSetup(None, ignore_empty=False):
        base = model.generate(**kwargs)
    # the prefix changes the next-token distribution (tokens may still coincide on a tiny model)
    logits = model(input_ids=ids, attention_mask=mask).logits
    with AdapterSetup(None):
        base_logits = model(input_ids=ids, attention_mask=mask).logits
    assert (logits - base_logits).abs().max() > 1e-3
    assert base.shape == cached.shape


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_generate_equals_step_by_step_argmax_without_cache(arch):
    model = _with_prefix(arch, "clm", MLP)
    ids, mask = left_padded_prompt()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    seq, m = ids, mask
    for _ in range(4):
        with torch.no_grad():
            logits = model(input_ids=seq, attention_mask=m, position_ids=_position_ids(m), use_cache=False).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        m = torch.cat([m, torch.ones(2, 1, dtype=torch.long)], dim=1)
    assert torch.equal(out, seq)



def _scripted_decode(model, record_grad: bool):
    """Logits of every call of a decode on one cache: prefill, steps, another prefix, a crop, rows
    reordered (beam search), a step without adapters. With ``record_grad`` no cache layer keeps
    the wrapper's join (the plain path), without it they do."""
    ids, mask = left_padded_prompt()
    cache, logits = DynamicCache(config=model.config), []

    def call(tokens):
        nonlocal mask
        if logits:
            mask = torch.cat([mask, torch.ones(2, tokens.shape[1], dtype=torch.long)], dim=1)
        output = model(input_ids=tokens, attention_mask=mask, use_cache=True, **{CACHE_NAME: cache})
        logits.append(output.logits[:, -1].detach())
        return logits[-1].argmax(-1, keepdim=True)

    with torch.set_grad_enabled(record_grad):
        token = call(ids)
        for _ in range(3):
            token = call(token)
        model.set_active_adapters("q")  # another prefix on the same cache
        token = call(token)
        model.set_active_adapters("p")
        cache.crop(-2)
        mask = mask[:, :-2]
        token = call(token)
        order = torch.tensor([1, 0])
        cache.reorder_cache(order)
        mask, token = mask[order], token[order]
        token = call(token)
        with AdapterSetup(None, ignore_empty=False):
            token = call(token)
        call(token)
    return logits, cache


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decoding_cache_keeps_the_join_and_gives_the_plain_results(arch):
    model = _with_prefix(arch, "clm", MLP).eval()
    model.add_adapter("q", config=PrefixTuningConfig(prefix_length=2, flat=True))
    perturb_adapter(model, "q", scale=1.0, seed=3)
    kept, cache = _scripted_decode(model, record_grad=False)
    plain, plain_cache = _scripted_decode(model, record_grad=True)
    for ours, reference in zip(kept, plain):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    # the cache holds and reports the real tokens only, as a view into [prefix ; real] storage
    assert cache.get_seq_length() == plain_cache.get_seq_length() == 6 + 8 - 2
    layer = cache.layers[0]
    assert type(layer).__name__ == "JoinedCacheLayer" and type(plain_cache.layers[0]).__name__ == "DynamicLayer"
    joined = layer.__dict__["_adapters_joined"]
    assert layer.keys._base is joined.keys and joined.keys.shape[2] == layer.keys.shape[2] + MLP.prefix_length
    torch.testing.assert_close(layer.keys, plain_cache.layers[0].keys, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spelling", CACHE_NAMES)  # generate() passes the newest
def test_decoding_step_joins_without_copying_the_cache(monkeypatch, spelling):
    model = _with_prefix("llama", "clm", MLP).eval()
    ids, mask = left_padded_prompt()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, **{spelling: cache})
        joins = []
        real_cat = torch.cat

        def cat(tensors, *args, **kwargs):
            first = tensors[0]
            if first.dim() == 4 and first.shape[2] == MLP.prefix_length and first.dtype.is_floating_point:
                joins.append(first.shape)  # [prefix ; ...]: a join of keys or values
            return real_cat(tensors, *args, **kwargs)

        monkeypatch.setattr(torch, "cat", cat)
        model(input_ids=ids[:, :1], attention_mask=torch.cat([mask, mask[:, :1]], dim=1), **{spelling: cache})
    assert joins == []


# -- composition ----------------------------------------------------------------------------------
def _two_prefixes(arch="llama", head="base", lengths=(4, 2)):
    model = patched(arch, head)
    model.add_adapter("a", config=PrefixTuningConfig(prefix_length=lengths[0], flat=True))
    model.add_adapter("b", config=PrefixTuningConfig(prefix_length=lengths[1], bottleneck_size=8))
    perturb_adapter(model, "a", scale=1.0, seed=1)
    perturb_adapter(model, "b", scale=1.0, seed=2)
    return model


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_stack_concatenates_prefixes(arch):
    model = _two_prefixes(arch)
    inputs = make_inputs(arch)
    prefixes = [
        (torch.cat([kb, ka], dim=1), torch.cat([vb, va], dim=1))
        for (ka, va), (kb, vb) in zip(_layer_prefixes(model, "a"), _layer_prefixes(model, "b"))
    ]
    torch.testing.assert_close(run(model, inputs, Stack("a", "b")), _reference(arch, "base", prefixes, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_parallel_and_batchsplit_with_prefixes_of_different_lengths(arch):
    model = _two_prefixes(arch)
    inputs = make_inputs(arch)
    out_a, out_b = run(model, inputs, "a"), run(model, inputs, "b")
    torch.testing.assert_close(run(model, inputs, Parallel("a", "b")), torch.cat([out_a, out_b]), atol=1e-5, rtol=0)
    split = run(model, inputs, BatchSplit("a", "b", batch_sizes=[1, 1]))
    torch.testing.assert_close(split, torch.cat([out_a[:1], out_b[1:]]), atol=1e-5, rtol=0)


def test_prefix_composes_with_bottleneck_and_lora_in_one_setup():
    model = _two_prefixes("llama")
    model.add_adapter("bn", config="seq_bn")
    model.add_adapter("lo", config="lora")
    perturb_adapter(model, "bn", seed=3)
    perturb_adapter(model, "lo", seed=4)
    inputs = make_inputs("llama")
    parallel = run(model, inputs, Parallel(Stack("a", "bn"), Stack("b", "lo")))
    torch.testing.assert_close(
        parallel, torch.cat([run(model, inputs, Stack("a", "bn")), run(model, inputs, Stack("b", "lo"))]), atol=1e-5, rtol=0
    )
    # a prefix changes what the bottleneck sees: the combination differs from each part
    assert (run(model, inputs, Stack("a", "bn")) - run(model, inputs, "bn")).abs().max() > 1e-3


@pytest.mark.parametrize("block", [Fuse("a", "b"), Split("a", "b", splits=[3, 3]), Average("a", "b", weights=[0.5, 0.5])])
def test_fuse_split_average_with_prefixes_are_refused(block):
    model = _two_prefixes()
    with pytest.raises(ValueError, match="prefix_tuning|fusion"):
        model.set_active_adapters(block)


def test_parallel_generate_continues_each_branch():
    model = _two_prefixes("llama", "clm")
    ids, mask = left_padded_prompt()
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    model.set_active_adapters(Parallel("a", "b"))
    both = model.generate(**kwargs)
    assert both.shape[0] == 4
    with AdapterSetup("a"):
        only_a = model.generate(**kwargs)
    with AdapterSetup("b"):
        only_b = model.generate(**kwargs)
    assert torch.equal(both, torch.cat([only_a, only_b]))
    # positional arguments keep their meaning: input_ids, then a GenerationConfig
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, config, attention_mask=mask), both)


# -- eject, gates, checkpoints ----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_eject_keeps_outputs_and_drops_parameters(arch):
    config = PrefixTuningConfig(prefix_length=5, bottleneck_size=16)
    model = _with_prefix(arch, "base", config)
    inputs = make_inputs(arch)
    before = run(model, inputs)
    count_before = sum(p.numel() for p in model._adapter_parameters("p"))
    model.eject_prefix_tuning("p")
    shape = model.base_model.prefix_tuning.shapes["self"]
    flat_size = 5 * shape.n_layers * 2 * shape.n_heads * shape.head_dim
    mlp_size = 5 * shape.input_size + shape.input_size * 16 + 16 + 16 * (flat_size // 5) + flat_size // 5
    assert count_before == mlp_size
    assert sum(p.numel() for p in model._adapter_parameters("p")) == flat_size
    assert model.adapters_config.adapters["p"].flat
    torch.testing.assert_close(run(model, inputs), before, atol=1e-6, rtol=0)


def test_eject_errors_for_adapters_without_prefix():
    model = patched("bert")
    model.add_adapter("bn", config="seq_bn")
    with pytest.raises(ValueError, match="no prefix tuning"):
        model.eject_prefix_tuning("bn")
    with pytest.raises(ValueError, match="No adapter named"):
        model.eject_prefix_tuning("missing")


@pytest.mark.parametrize("config", ["prefix_tuning", "mam", "unipelt"])
def test_save_load_round_trip(tmp_path, config):
    model = patched("llama")
    model.add_adapter("x", config=config, set_active=True)
    perturb_adapter(model, "x", seed=7)
    inputs = make_inputs("llama")
    expected = run(model, inputs)
    model.save_adapter(str(tmp_path / "x"), "x")
    fresh = patched("llama")
    assert fresh.load_adapter(str(tmp_path / "x"), set_active=True) == "x"
    torch.testing.assert_close(run(fresh, inputs), expected, atol=0, rtol=0)


def test_gated_prefix_scales_by_the_mean_gate():
    """use_gating: prefix keys/values times mean_t σ(W_g h_t + b) of the attention input."""
    model = patched("llama")
    model.add_adapter("g", config=PrefixTuningConfig(prefix_length=3, flat=True, use_gating=True, shared_gating=False), set_active=True)
    perturb_adapter(model, "g", scale=1.0, seed=9)
    inputs = make_inputs("llama", padded=False)
    with torch.no_grad():
        out = model(**inputs, output_adapter_gating_scores=True)
    gates = out.adapter_gating_scores["g"]
    assert set(gates) == {0, 1} and gates[0]["prefix"].shape == (2, 2)
    # zero gate weights and a very negative bias switch the prefix off
    for layer in model.layers:
        with torch.no_grad():
            layer.self_attn.prefix_tuning.prefix_gates["g"].weight.zero_()
            layer.self_attn.prefix_tuning.prefix_gates["g"].bias.fill_(-1e4)
    off = run(model, inputs, "g")
    zero_prefix = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in _layer_prefixes(model, "g")]
    torch.testing.assert_close(off, _reference("llama", "base", zero_prefix, inputs), atol=1e-5, rtol=0)


def test_leave_out_skips_layers():
    model = patched("llama")
    model.add_adapter("p", config=PrefixTuningConfig(prefix_length=3, flat=True, leave_out=[0]), set_active=True)
    perturb_adapter(model, "p", scale=1.0)
    inputs = make_inputs("llama", padded=False)
    # layer 0 attends to no prefix: the same as a prefix of zero keys whose values are masked out;
    # here, equivalently, layer 0's output equals the base model's
    assert model.layers[0].self_attn.prefix_tuning.adapter_names() == set()
    assert model.layers[1].self_attn.prefix_tuning.adapter_names() == {"p"}
    with torch.no_grad():
        ours = model(**inputs, output_hidden_states=True).hidden_states
        base = make_model("llama")(**inputs, output_hidden_states=True).hidden_states
    torch.testing.assert_close(ours[1], base[1], atol=1e-6, rtol=0)
    assert (ours[2] - base[2]).abs().max() > 1e-4


def test_base_model_without_prefix_active_is_unchanged():
    model = _with_prefix("llama", "clm")
    inputs = make_inputs("llama")
    model.set_active_adapters(None)
    torch.testing.assert_close(run(model, inputs), run(make_model("llama", "clm"), inputs), atol=1e-6, rtol=0)


def test_deleting_the_prefix_adapter_cleans_up():
    model = _with_prefix("bert")
    model.delete_adapter("p")
    assert "prefix_tuning" not in model.base_model._modules  # the last prefix takes the pool and its hosts with it
    assert not any("prefix" in k for k in model.state_dict())
    adapters.init(model)  # no-op
