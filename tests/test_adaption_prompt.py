"""Llama-Adapter (adaption prompts): zero gate is the base model, the output equals a reference
computed by hand from the layer's projections, padding, eager == sdpa, KV cache and generate,
PEFT fixture and PEFT round trip, composition, training, checkpoints, bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import (
    assert_generate_is_greedy_decoding,
    checked_peft_output,
    ARCHS,
    DECODERS,
    NO_ADAPTION_PROMPT,
    NO_PREFIX,
    NO_SDPA,
    left_padded_prompt,
    make_inputs,
    make_model,
    patched,
    run,
)
from fixture_utils import PEFT, fixture_inputs, load_tensors
from transformers.pytorch_utils import Conv1D

import adapters
from adapters import (
    AdapterLoadError,
    AdapterSetup,
    AdaptionPromptConfig,
    Average,
    BatchSplit,
    Fuse,
    LoRAConfig,
    Parallel,
    Split,
    Stack,
)
from adapters.compat import CACHE_NAME, returned_cache
from adapters.hooks.spec import spec_for_model

CONFIG = AdaptionPromptConfig(adapter_len=4, adapter_layers=1)
ALL_LAYERS = AdaptionPromptConfig(adapter_len=3)
REFERENCE_ARCHS = ("llama", "mistral", "qwen2", "gpt2", "bert")


def _prompts(model, name):
    """``{layer: (prompt, gate)}`` of adapter ``name``, straight from the parameters."""
    spec = model.__dict__["_adapters_spec"]
    found = {}
    for idx, layer in enumerate(model.base_model.get_submodule(spec.layers)):
        host = layer.get_submodule(spec.attention)._modules.get("adaption_prompt")
        if host is not None and name in host.adaption_prompts:
            module = host.adaption_prompts[name]
            found[idx] = (module.prompt.detach(), module.gate.detach())
    return found


def _set_gates(model, name, value=None, seed=0):
    """Give adapter ``name`` non-zero gates (random ones in [0.5, 1.5) unless ``value``)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for (_, gate) in _prompts(model, name).values():
            gate.fill_(value if value is not None else 0.5 + torch.rand((), generator=generator).item())


def _with_prompt(arch="llama", head="base", config=ALL_LAYERS, name="ap", seed=0):
    model = patched(arch, head)
    model.add_adapter(name, config=config, set_active=True)
    _set_gates(model, name, seed=seed)
    return model


# -- an independent reference: the unmodified model, with hooks adding the prompt's share ----------
def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _linear(module, x, rows=None):
    """``x Wᵀ + b`` of a Linear or Conv1D, optionally only output rows ``rows``."""
    weight = module.weight.t() if isinstance(module, Conv1D) else module.weight
    bias = module.bias
    if rows is not None:
        weight, bias = weight[rows], (bias[rows] if bias is not None else None)
    return torch.nn.functional.linear(x, weight, bias)


def _share(config, layer, spec, hidden, rope, terms):
    """Σ_terms weight · g softmax(q k_Pᵀ/√d) v_P per head, as ``(batch, seq, heads·d)``;
    ``terms``: ``[(prompt, gate, weight, rows, positions)]``."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    d = getattr(config, "head_dim", None) or config.hidden_size // heads
    q_mod, k_mod, v_mod = (layer.get_submodule(p) for p in (spec.query, spec.key, spec.value))
    fused = k_mod is q_mod
    batch, seq, _ = hidden.shape
    width = heads * d
    q = _linear(q_mod, hidden, slice(0, width) if fused else None).view(batch, seq, heads, d).transpose(1, 2)
    if rope is not None:
        cos, sin = (t.unsqueeze(1) for t in rope)
        q = q * cos + _rotate_half(q) * sin
    total = torch.zeros(batch, seq, width)
    for prompt, gate, weight, rows, positions in terms:
        kv_width = kv_heads * d
        k = _linear(k_mod, prompt, slice(width, width + kv_width) if fused else None)
        v = _linear(v_mod, prompt, slice(width + kv_width, width + 2 * kv_width) if fused else None)
        k = k.view(-1, kv_heads, d).transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)  # (heads, n, d)
        v = v.view(-1, kv_heads, d).transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
        probs = torch.softmax((q @ k.transpose(-1, -2)) / d**0.5, dim=-1, dtype=torch.float32)
        share = (gate * probs @ v).transpose(1, 2).reshape(batch, seq, width)
        mask = torch.zeros(batch, seq, 1)
        mask[rows, positions] = 1.0
        total = total + weight * share * mask
    return total


def _reference(arch, head, inputs, terms_by_layer, setup_kwargs=None):
    """Output of the unpatched model whose attention output projection gets the hand-computed
    shares added to its input. ``terms_by_layer``: ``{layer: [(prompt, gate, weight, rows, positions)]}``."""
    model = make_model(arch, head)
    spec = spec_for_model(model)
    base = model.base_model
    layers = base.get_submodule(spec.layers)
    captured, handles = {}, []
    for idx, terms in terms_by_layer.items():
        layer = layers[idx]

        def capture(module, args, kwargs, idx=idx):
            hidden = args[0] if args else kwargs.get("hidden_states")
            captured[idx] = (hidden, kwargs.get("position_embeddings"))

        def add(module, args, idx=idx, layer=layer, terms=terms):
            hidden, rope = captured[idx]
            return (args[0] + _share(model.config, layer, spec, hidden, rope, terms).to(args[0].dtype),) + args[1:]

        handles.append(layer.get_submodule(spec.attention).register_forward_pre_hook(capture, with_kwargs=True))
        handles.append(layer.get_submodule(spec.attn_output).register_forward_pre_hook(add))
    try:
        with torch.no_grad():
            out = model(**inputs, **(setup_kwargs or {}))
    finally:
        for handle in handles:
            handle.remove()
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _single_terms(model, name, weight=1.0, rows=slice(None), positions=slice(None)):
    return {idx: [(p, g, weight, rows, positions)] for idx, (p, g) in _prompts(model, name).items()}


def _merge_terms(*term_dicts):
    merged = {}
    for terms in term_dicts:
        for idx, items in terms.items():
            merged.setdefault(idx, []).extend(items)
    return merged


# -- definition ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in NO_PREFIX + NO_ADAPTION_PROMPT])
def test_zero_gate_is_the_base_model(arch):
    model = patched(arch)
    model.add_adapter("ap", config=ALL_LAYERS, set_active=True)
    assert all(gate.item() == 0 for _, gate in _prompts(model, "ap").values())
    inputs = make_inputs(arch)
    torch.testing.assert_close(run(model, inputs), run(make_model(arch), inputs), atol=0, rtol=0)


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_output_equals_hand_computed_reference(arch):
    head = "clm" if arch in DECODERS else "base"
    model = _with_prompt(arch, head, AdaptionPromptConfig(adapter_len=5, adapter_layers=1))
    inputs = make_inputs(arch)
    ours = run(model, inputs)
    assert list(_prompts(model, "ap")) == [1]  # the top layer only
    assert (ours - run(make_model(arch, head), inputs)).abs().max() > 1e-3
    torch.testing.assert_close(ours, _reference(arch, head, inputs, _single_terms(model, "ap")), atol=1e-5, rtol=1e-5)


def test_adapter_layers_places_prompts_in_the_top_layers():
    model = patched("llama")
    model.add_adapter("top", config=AdaptionPromptConfig(adapter_len=2, adapter_layers=1))
    model.add_adapter("all", config=AdaptionPromptConfig(adapter_len=2))
    assert list(_prompts(model, "top")) == [1] and list(_prompts(model, "all")) == [0, 1]
    prompt, gate = _prompts(model, "top")[1]
    assert prompt.shape == (2, 32) and gate.shape == (1,)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_left_padded_row_equals_row_alone(arch):
    """With position ids counting the real tokens (what generate passes), padding changes nothing."""
    model = _with_prompt(arch, "base")
    ids = torch.randint(3, 99, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = run(model, {"input_ids": ids, "attention_mask": mask, "position_ids": positions})
    alone = run(model, {"input_ids": ids[1:, 3:], "attention_mask": torch.ones(1, 6, dtype=torch.long)})
    torch.testing.assert_close(out[1, 3:], alone[0], atol=1e-5, rtol=0)
    full = run(model, {"input_ids": ids[:1], "attention_mask": torch.ones(1, 9, dtype=torch.long)})
    torch.testing.assert_close(out[0], full[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in NO_PREFIX + NO_SDPA + NO_ADAPTION_PROMPT])
def test_eager_equals_sdpa(arch):
    inputs = make_inputs(arch)
    sdpa, eager = _with_prompt(arch), _with_prompt(arch)
    eager.set_attn_implementation("eager")  # the next forward wraps it again
    out_eager = run(eager, inputs)
    assert eager.config._attn_implementation == "adapters_eager"
    assert sdpa.config._attn_implementation == "adapters_sdpa"
    torch.testing.assert_close(out_eager, run(sdpa, inputs), atol=1e-5, rtol=0)


# -- KV cache and generate -------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gpt2"])
def test_generate_with_and_without_cache_agree(arch):
    model = _with_prompt(arch, "clm")
    ids, mask = left_padded_prompt()
    assert_generate_is_greedy_decoding(model, dict(input_ids=ids, attention_mask=mask), steps=6, pad_token_id=0)
    # the prompt changes the next-token distribution (tokens may still coincide on a tiny model)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        with AdapterSetup(None):
            base_logits = model(input_ids=ids, attention_mask=mask).logits
    assert (logits - base_logits).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_generate_equals_step_by_step_argmax_and_padded_row_generates_as_alone(arch):
    model = _with_prompt(arch, "clm")
    ids, mask = left_padded_prompt()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    seq, m = ids, mask
    for _ in range(4):
        with torch.no_grad():
            positions = (m.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=seq, attention_mask=m, position_ids=positions, use_cache=False).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        m = torch.cat([m, torch.ones(2, 1, dtype=torch.long)], dim=1)
    assert torch.equal(out, seq)
    alone = model.generate(input_ids=ids[1:, 2:], attention_mask=mask[1:, 2:], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(out[1:, 2:], alone)


def test_cached_decoding_logits_equal_full_forward():
    model = _with_prompt("llama", "clm")
    ids = torch.randint(3, 99, (2, 8), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        first = model(input_ids=ids[:, :5], use_cache=True)
        cache, steps = returned_cache(first), [first.logits]
        for t in range(5, 8):
            step = model(input_ids=ids[:, t : t + 1], use_cache=True, **{CACHE_NAME: cache})
            cache = returned_cache(step)
            steps.append(step.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


# -- PEFT --------------------------------------------------------------------------------------------
peft_fixture = pytest.mark.skipif(not os.path.isdir(PEFT), reason="../shared/fixtures is not present")


def _peft_base():
    import transformers

    return transformers.LlamaForCausalLM.from_pretrained(os.path.join(PEFT, "llama", "base")).eval()


@peft_fixture
def test_peft_fixture_reproduces_out():
    folder = os.path.join(PEFT, "llama", "adaption_prompt")
    model = _peft_base()
    adapters.init(model)
    name = model.load_adapter(folder, set_active=True)
    config = model.adapters_config.adapters[name]
    assert isinstance(config, AdaptionPromptConfig) and (config.adapter_len, config.adapter_layers) == (4, 2)
    with torch.no_grad():
        out = model(**fixture_inputs(os.path.join(PEFT, "llama"))).logits
    expected = load_tensors(os.path.join(folder, "expected.safetensors"))["out"]
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch,config", [("llama", CONFIG), ("mistral", ALL_LAYERS)], ids=["llama-top1", "mistral-all"])
def test_saved_peft_format_loads_in_peft_with_the_same_outputs(tmp_path, arch, config):
    from peft import PeftModel

    model, reference = _with_prompt(arch, "clm", config), make_model(arch, "clm")
    with torch.no_grad():
        for prompt, _ in _prompts(model, "ap").values():
            prompt.add_(0.3)  # a trained prompt, not just the initialisation
    inputs = make_inputs(arch)
    ours = run(model, inputs)
    model.save_adapter(str(tmp_path), "ap", format="peft")
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "ADAPTION_PROMPT" and meta["adapter_layers"] == len(_prompts(model, "ap"))
    again = patched(arch, "clm")
    again.load_adapter(str(tmp_path), load_as="b", set_active=True)
    torch.testing.assert_close(run(again, inputs), ours, atol=0, rtol=0)
    definition = _reference(arch, "clm", inputs, _single_terms(model, "ap"))  # the method computed by hand
    torch.testing.assert_close(ours, definition, atol=1e-5, rtol=1e-5)
    peft_model = PeftModel.from_pretrained(reference, str(tmp_path)).eval()
    theirs, broken = checked_peft_output(peft_model, inputs, independent=definition, atol=1e-5)
    if broken:
        pytest.skip(broken)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_peft_format_is_refused_where_peft_computes_differently(tmp_path):
    model = _with_prompt("gpt2", "clm")
    with pytest.raises(ValueError, match="after the output projection"):
        model.save_adapter(str(tmp_path / "out"), "ap", format="peft")
    assert not os.path.exists(tmp_path / "out" / "adapter_model.safetensors")
    model.save_adapter(str(tmp_path / "llama"), "ap")  # AdapterHub-style layout works for every model
    llama = _with_prompt("llama", "clm")
    llama.save_adapter(str(tmp_path / "peft"), "ap", format="peft")
    gpt2 = patched("gpt2", "clm")
    with pytest.raises(AdapterLoadError, match="llama, mistral models only"):
        gpt2.load_adapter(str(tmp_path / "peft"))
    assert not gpt2.adapters_config.adapters


# -- composition ------------------------------------------------------------------------------------
def _two_prompts(arch="llama", head="base"):
    model = patched(arch, head)
    model.add_adapter("a", config=AdaptionPromptConfig(adapter_len=4))
    model.add_adapter("b", config=AdaptionPromptConfig(adapter_len=2, adapter_layers=1))
    _set_gates(model, "a", seed=1)
    _set_gates(model, "b", seed=2)
    return model


def test_stack_adds_the_shares_of_each_prompt():
    model = _two_prompts()
    inputs = make_inputs("llama")
    expected = _reference("llama", "base", inputs, _merge_terms(_single_terms(model, "a"), _single_terms(model, "b")))
    torch.testing.assert_close(run(model, inputs, Stack("a", "b")), expected, atol=1e-5, rtol=1e-5)


def test_average_split_parallel_batchsplit_equal_their_definitions():
    model = _two_prompts()
    inputs = make_inputs("llama")
    # layer 1 has both prompts; layer 0 only a's, which Average then weighs with the whole total
    # (absent children are left out and the remaining weights rescaled, as for every method)
    average = _merge_terms(_single_terms(model, "a", weight=0.3), _single_terms(model, "b", weight=0.7))
    average[0] = [(p, g, 1.0, rows, positions) for p, g, _, rows, positions in average[0]]
    torch.testing.assert_close(
        run(model, inputs, Average("a", "b", weights=[0.3, 0.7])), _reference("llama", "base", inputs, average), atol=1e-5, rtol=1e-5
    )
    split = _merge_terms(_single_terms(model, "a", positions=slice(0, 5)), _single_terms(model, "b", positions=slice(5, None)))
    torch.testing.assert_close(
        run(model, inputs, Split("a", "b", splits=[5, 7])), _reference("llama", "base", inputs, split), atol=1e-5, rtol=1e-5
    )
    out_a, out_b = run(model, inputs, "a"), run(model, inputs, "b")
    torch.testing.assert_close(run(model, inputs, Parallel("a", "b")), torch.cat([out_a, out_b]), atol=1e-6, rtol=0)
    split_rows = run(model, inputs, BatchSplit("a", "b", batch_sizes=[1, 1]))
    torch.testing.assert_close(split_rows, torch.cat([out_a[:1], out_b[1:]]), atol=1e-6, rtol=0)


def test_stack_with_lora_equals_the_prompt_on_the_merged_model():
    """LoRA outside the k/v projections changes what the prompt sees (the query, the layer's
    input): Stack(lora, prompt) equals the prompt alone on a model with the LoRA merged in."""
    model = _two_prompts("llama", "clm")
    model.add_adapter("lo", config=LoRAConfig(r=4, target_modules=["q_proj", "o_proj", "up_proj"]))
    with torch.no_grad():
        for host in model._adapter_hosts:
            if host.method == "lora" and "lo" in host.loras:
                host.loras["lo"].lora_B.normal_(0, 0.2)
    inputs = make_inputs("llama")
    stacked = run(model, inputs, Stack("lo", "a"))
    assert (stacked - run(model, inputs, "a")).abs().max() > 1e-3
    model.merge_adapter("lo")
    torch.testing.assert_close(run(model, inputs, "a"), stacked, atol=1e-5, rtol=1e-5)


def test_composes_with_bottleneck_in_stack_and_parallel():
    model = _two_prompts("llama", "clm")
    model.add_adapter("bn", config="seq_bn")
    with torch.no_grad():
        for param in model._adapter_parameters("bn"):
            param.normal_(0, 0.1)
    inputs = make_inputs("llama")
    stacked = run(model, inputs, Stack("a", "bn"))
    assert (stacked - run(model, inputs, "bn")).abs().max() > 1e-3
    assert (stacked - run(model, inputs, "a")).abs().max() > 1e-3
    parallel = run(model, inputs, Parallel(Stack("a", "bn"), "b"))
    torch.testing.assert_close(parallel, torch.cat([stacked, run(model, inputs, "b")]), atol=1e-5, rtol=0)
    _set_gates(model, "a", value=0.0)  # a closed gate leaves exactly the bottleneck
    torch.testing.assert_close(run(model, inputs, Stack("a", "bn")), run(model, inputs, "bn"), atol=0, rtol=0)


def test_parallel_generate_continues_each_branch():
    model = _two_prompts("llama", "clm")
    ids, mask = left_padded_prompt()
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    model.set_active_adapters(Parallel("a", "b"))
    both = model.generate(**kwargs)
    with AdapterSetup("a"):
        only_a = model.generate(**kwargs)
    with AdapterSetup("b"):
        only_b = model.generate(**kwargs)
    assert torch.equal(both, torch.cat([only_a, only_b]))


def test_fuse_is_refused():
    model = _two_prompts()
    model.add_adapter("bn", config="seq_bn")
    with pytest.raises(ValueError, match="adaption_prompt has no fusion"):
        model.add_adapter_fusion(Fuse("a", "bn"))
    assert not model.adapters_config.fusions


# -- training and checkpoints ------------------------------------------------------------------------
def _grads(model, name):
    return {k: p.grad for k, p in model.named_parameters() if "adaption_prompts" in k and f".{name}." in k}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_reach_only_prompt_and_gate(checkpointing):
    model = patched("llama", "seq_cls")
    model.add_adapter("ap", config=ALL_LAYERS)
    if checkpointing:
        model.activation_checkpointing_enable()
    model.train_adapter("ap")
    model(**make_inputs("llama"), labels=torch.tensor([0, 2])).loss.backward()
    grads = _grads(model, "ap")
    # zero-init: the gate gets a gradient, the prompt none until the gate opens
    assert all(g.abs().sum() > 0 for k, g in grads.items() if k.endswith(".gate"))
    assert all(torch.count_nonzero(g) == 0 for k, g in grads.items() if k.endswith(".prompt"))
    others = [k for k, p in model.named_parameters() if p.grad is not None and "adaption_prompts" not in k and "score" not in k]
    assert others == []
    model.zero_grad()
    _set_gates(model, "ap")
    model(**make_inputs("llama"), labels=torch.tensor([0, 2])).loss.backward()
    assert all(g.abs().sum() > 0 for g in _grads(model, "ap").values())


def test_training_step_moves_only_the_adapter():
    model = patched("llama", "clm")
    model.add_adapter("ap", config=ALL_LAYERS)
    model.train_adapter("ap")
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    inputs = make_inputs("llama")
    for _ in range(2):  # the first step opens the gate, the second moves the prompt
        optimizer.zero_grad()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        optimizer.step()
    changed = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
    # train_adapter also trains the prediction head (AdapterHub's behaviour); the base model stays
    assert changed - {"lm_head.weight"} == {k for k in before if "adaption_prompts.ap." in k}


def test_save_load_round_trip_and_delete(tmp_path):
    model = _with_prompt("llama", "clm", CONFIG)
    inputs = make_inputs("llama")
    ours = run(model, inputs)
    model.save_adapter(str(tmp_path), "ap")
    again = patched("llama", "clm")
    name = again.load_adapter(str(tmp_path), set_active=True)
    assert name == "ap" and again.adapters_config.adapters["ap"] == CONFIG
    for (p1, g1), (p2, g2) in zip(_prompts(model, "ap").values(), _prompts(again, "ap").values()):
        assert torch.equal(p1, p2) and torch.equal(g1, g2)
    torch.testing.assert_close(run(again, inputs), ours, atol=0, rtol=0)
    again.delete_adapter("ap")
    assert not _prompts(again, "ap") and not any("adaption_prompts" in k for k in again.state_dict())
    torch.testing.assert_close(run(again, inputs), run(make_model("llama", "clm"), inputs), atol=0, rtol=0)


def test_adapter_summary_and_config_id():
    model = patched("llama")
    model.add_adapter("ap", config="adaption_prompt[adapter_len=3, adapter_layers=2]")
    row = next(r for r in model.adapter_summary(as_dict=True) if r["name"] == "ap")
    assert row["architecture"] == "adaption_prompt" and row["#param"] == 2 * (3 * 32 + 1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(adapter_len=0), "adapter_len must be a positive integer"),
        (dict(adapter_layers=0), "adapter_layers must be a positive integer"),
        (dict(target_modules=["self_attn"]), "target_modules must be the name"),
    ],
)
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptionPromptConfig(**kwargs)


@pytest.mark.parametrize(
    "config,message",
    [
        (AdaptionPromptConfig(adapter_layers=3), "adapter_layers=3 but the model has 2 layers"),
        (AdaptionPromptConfig(target_modules="mlp"), "which is 'self_attn' in llama models"),
    ],
)
def test_configs_that_do_not_fit_leave_the_model_unchanged(config, message):
    model = patched("llama")
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match=message):
        model.add_adapter("ap", config=config)
    assert not model.adapters_config.adapters and set(model.state_dict()) == keys


def test_merge_is_refused_and_unload_restores_the_plain_model():
    model = _with_prompt("llama", "clm")
    inputs = make_inputs("llama")
    with pytest.raises(ValueError, match="changes no layer weights"):
        model.merge_adapter("ap")
    with pytest.raises(ValueError, match="adaption_prompt part has no weight to fold into"):
        model.merge_and_unload()
    plain = model.unload()
    reference = make_model("llama", "clm")
    assert type(plain) is type(reference) and plain.config._attn_implementation == "sdpa"
    assert set(plain.state_dict()) == set(reference.state_dict())
    assert not any("adaption" in name for name, _ in plain.named_modules())
    torch.testing.assert_close(run(plain, inputs), run(reference, inputs), atol=0, rtol=0)
