"""Encoder-decoder models (T5, mT5, BART, mBART, Whisper): adapters in the encoder, the decoder and
cross-attention; AdapterHub's layer numbering; prefixes in cross-attention against an independent
computation; T5's position bias with prefixes; padding; generate (cache, Parallel, prompts);
checkpoints and merging."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    checked_peft_output,
    require,
    assert_generate_is_greedy_decoding,
    ENCODER_DECODERS,
    LAYERS,
    NO_PROMPT,
    make_inputs,
    make_model,
    patched,
    perturb_adapter,
    run,
)
from transformers import T5Config, T5EncoderModel

import adapters
from adapters import (
    BatchSplit,
    BnConfig,
    LoRAConfig,
    Parallel,
    PrefixTuningConfig,
    PromptTuningConfig,
    SeqBnConfig,
    Stack,
)

PREFIX = PrefixTuningConfig(prefix_length=3, flat=True)
# per family: (decoder layer path, cross-attention module inside a decoder layer)
DECODER_LAYERS = {"t5": "decoder.block", "mt5": "decoder.block"}
CROSS = {"t5": "layer.1.EncDecAttention", "mt5": "layer.1.EncDecAttention"}


def _decoder_layer(model, arch, i):
    return model.base_model.get_submodule(DECODER_LAYERS.get(arch, "decoder.layers"))[i]


def _cross(model, arch, i):
    return _decoder_layer(model, arch, i).get_submodule(CROSS.get(arch, "encoder_attn"))


def _generate_inputs(arch, batch=2):
    return {k: v for k, v in make_inputs(arch, batch=batch).items() if k != "decoder_input_ids"}


# -- placement and numbering ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_layers_are_numbered_encoder_first_as_in_adapterhub(arch):
    model = patched(arch)
    model.add_adapter("a", config=BnConfig(mh_adapter=True, output_adapter=True, cross_adapter=True))
    layers = model.get_adapter("a")
    assert set(layers) == set(range(2 * LAYERS))
    assert all(set(layers[i]) == {"mh_adapter", "output_adapter"} for i in range(LAYERS))  # encoder
    assert all(set(layers[i]) == {"mh_adapter", "cross_adapter", "output_adapter"} for i in range(LAYERS, 2 * LAYERS))
    # leave_out=[LAYERS] is the first decoder layer (AdapterHub's iter_layers numbering)
    model.add_adapter("b", config=SeqBnConfig(leave_out=[LAYERS]))
    assert set(model.get_adapter("b")) == set(range(2 * LAYERS)) - {LAYERS}
    first_decoder = _decoder_layer(model, arch, 0)
    assert not any("b" in getattr(m, "adapters", {}) for m in first_decoder.modules() if hasattr(m, "adapter_fusion_layer"))
    model.add_adapter("l", config=LoRAConfig(leave_out=list(range(LAYERS))))  # decoder only
    encoder_q = model.base_model.encoder.get_submodule("block.0.layer.0.SelfAttention.q" if arch == "t5" else "layers.0.self_attn.q_proj")
    assert "l" not in getattr(encoder_q, "loras", {})
    assert "l" in _cross(model, arch, 0).get_submodule("q" if arch == "t5" else "q_proj").loras  # cross-attention LoRA


@pytest.mark.parametrize("arch", ENCODER_DECODERS)
def test_adapters_reach_encoder_decoder_and_cross_attention(arch):
    model = patched(arch, "seq2seq")
    inputs = make_inputs(arch)
    base = run(model, inputs)
    encoder, decoder = list(range(LAYERS)), list(range(LAYERS, 2 * LAYERS))
    cross_output = {"t5": "EncDecAttention.o", "mt5": "EncDecAttention.o", "encoder-decoder": "crossattention.output.dense"}
    configs = {
        "encoder_bn": SeqBnConfig(leave_out=decoder),
        "decoder_bn": SeqBnConfig(leave_out=encoder),
        # EncoderDecoderModel's BERT decoder: AdapterHub's mh_adapter position after cross-attention
        "cross_bn": BnConfig(mh_adapter=False, output_adapter=False, cross_adapter=True)
        if arch != "encoder-decoder" else BnConfig(mh_adapter=True, output_adapter=False, leave_out=encoder),
        "encoder_lora": LoRAConfig(leave_out=decoder),
        "cross_lora": LoRAConfig(target_modules=[cross_output.get(arch, "encoder_attn.out_proj")]),
        "encoder_prefix": PrefixTuningConfig(prefix_length=3, flat=True, leave_out=decoder),
        "cross_prefix": PrefixTuningConfig(prefix_length=3, flat=True, encoder_prefix=False, leave_out=encoder),
    }
    for name, config in configs.items():
        model.add_adapter(name, config=config)
        perturb_adapter(model, name)
        assert (run(model, inputs, name) - base).abs().max() > 1e-4, name
    pool = model.base_model.prefix_tuning.prefix_tunings
    assert set(pool["encoder_prefix"]) == {"encoder_prefix", "self_prefix", "cross_prefix"}
    assert set(pool["cross_prefix"]) == {"self_prefix", "cross_prefix"}


def _attention_reference(module, hidden, kv_states, prefix, key_valid, position_bias=None):
    """``o(softmax(q [P_k; K]ᵀ·s + bias + mask) [P_v; V])`` from the module's weights; ``position_bias``
    covers the real keys (zeros for the prefix keys) or, as wide as all keys, the joined keys."""
    names = ("q", "k", "v", "o") if hasattr(module, "o") else ("q_proj", "k_proj", "v_proj", "out_proj")
    q, k, v, o = (getattr(module, n) for n in names)
    heads = getattr(module, "num_heads", None) or module.n_heads
    batch = hidden.shape[0]

    def split(x):
        return x.view(batch, x.shape[1], heads, -1).transpose(1, 2)

    keys = torch.cat([prefix[0].expand(batch, -1, -1, -1), split(k(kv_states))], dim=2)
    values = torch.cat([prefix[1].expand(batch, -1, -1, -1), split(v(kv_states))], dim=2)
    scores = split(q(hidden)) @ keys.transpose(-1, -2) * module.scaling
    if position_bias is not None and position_bias.shape[-1] < keys.shape[2]:
        position_bias = torch.cat([torch.zeros(*position_bias.shape[:-1], prefix.shape[2]), position_bias], dim=-1)
    if position_bias is not None:
        scores = scores + position_bias
    valid = torch.cat([torch.ones(batch, prefix.shape[2], dtype=torch.bool), key_valid], dim=1)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    out = scores.softmax(-1) @ values
    return o(out.transpose(1, 2).reshape(batch, hidden.shape[1], -1))


@pytest.mark.parametrize("arch", ["t5", "bart", "whisper"])
def test_cross_prefix_is_prepended_to_the_encoder_keys_and_values(arch):
    model = patched(arch)
    model.add_adapter("p", config=PREFIX, set_active=True)
    perturb_adapter(model, "p", scale=1.0)
    inputs = make_inputs(arch)
    records = []
    module = _cross(model, arch, 1)
    handle = module.register_forward_hook(lambda m, args, kwargs, out: records.append((args, kwargs, out)), with_kwargs=True)
    run(model, inputs)
    handle.remove()
    (args, kwargs, output), = records
    prefix = model.base_model.prefix_tuning.prefix_tunings["p"]["cross_prefix"]()[1]  # second decoder layer
    kv_states = kwargs["key_value_states"]
    key_valid = inputs["attention_mask"].bool() if "attention_mask" in inputs else torch.ones(kv_states.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        expected = _attention_reference(module, args[0], kv_states, prefix, key_valid)
    torch.testing.assert_close(output[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_t5_relative_position_bias_numbers_prefix_keys_first(implementation):
    """The prefix keys take key positions 0 … P−1 and the real keys P … (AdapterHub's numbering)."""
    model = patched("t5")
    model.set_attn_implementation(implementation)
    model.add_adapter("p", config=PREFIX, set_active=True)
    perturb_adapter(model, "p", scale=1.0)
    inputs = make_inputs("t5")
    records = []
    module = model.encoder.block[1].layer[0].SelfAttention  # receives layer 0's position bias
    handle = module.register_forward_hook(lambda m, args, kwargs, out: records.append((args, kwargs, out)), with_kwargs=True)
    run(model, inputs)
    handle.remove()
    (args, kwargs, output), = records
    assert model.encoder.config._attn_implementation == f"adapters_{implementation}"  # the stacks' own config copies
    bias = kwargs["position_bias"]
    assert bias.shape[-1] == inputs["input_ids"].shape[1]  # the model keeps its own, unpadded bias
    prefix = model.base_model.prefix_tuning.prefix_tunings["p"]["encoder_prefix"]()[1]
    owner = model.encoder.block[0].layer[0].SelfAttention
    with torch.no_grad():
        joined = owner.compute_bias(bias.shape[-2], prefix.shape[2] + bias.shape[-1])
        expected = _attention_reference(module, args[0], args[0], prefix, inputs["attention_mask"].bool(), joined)
    torch.testing.assert_close(output[0], expected, atol=1e-5, rtol=1e-5)


def test_t5_eager_equals_sdpa_with_prefixes_everywhere():
    inputs = make_inputs("t5")
    outputs = []
    for implementation in ("sdpa", "eager"):
        model = patched("t5", "seq2seq")
        model.set_attn_implementation(implementation)
        model.add_adapter("p", config=PREFIX, set_active=True)
        perturb_adapter(model, "p", scale=1.0)
        outputs.append(run(model, inputs))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_each_row_equals_the_row_run_alone(arch):
    model = patched(arch, "seq2seq")
    model.add_adapter("p", config=PREFIX)
    model.add_adapter("a", config="double_seq_bn")
    for name in "pa":
        perturb_adapter(model, name, seed=len(name))
    model.set_active_adapters(Stack("a", "p"))
    inputs = make_inputs(arch)  # row 1: 3 padding tokens at the end
    out = run(model, inputs)
    alone = run(model, {"input_ids": inputs["input_ids"][1:, :-3], "attention_mask": inputs["attention_mask"][1:, :-3],
                        "decoder_input_ids": inputs["decoder_input_ids"][1:]})
    torch.testing.assert_close(out[1:], alone, atol=1e-5, rtol=1e-5)


# -- generate --------------------------------------------------------------------------------------------
GENERATE = dict(do_sample=False, forced_eos_token_id=None)  # plain greedy; min_new_tokens keeps EOS out


@pytest.mark.parametrize("arch", ENCODER_DECODERS)
def test_generate_with_prefixes_and_adapters_in_encoder_and_decoder(arch):
    model = patched(arch, "seq2seq")
    model.add_adapter("p", config=PREFIX)
    model.add_adapter("a", config=BnConfig(mh_adapter=True, output_adapter=True, cross_adapter=True))
    for name in "pa":
        perturb_adapter(model, name, scale=1.0, seed=len(name))
    model.set_active_adapters(Stack("a", "p"))
    inputs = _generate_inputs(arch)
    # generate() runs the encoder on its own: its adapters and prefixes must run there too
    cached = assert_generate_is_greedy_decoding(model, inputs, steps=5, atol=1e-4, **GENERATE)
    model.set_active_adapters(None)
    assert not torch.equal(cached, model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, **GENERATE))


@pytest.mark.parametrize("arch", ["t5", "bart", "whisper"])
def test_parallel_generate_continues_each_branch_on_its_own_copy(arch):
    model = patched(arch, "seq2seq")
    model.add_adapter("p", config=PREFIX)
    model.add_adapter("a", config="double_seq_bn")
    for name in "pa":
        perturb_adapter(model, name, scale=1.0, seed=len(name))
    inputs = _generate_inputs(arch)
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, **GENERATE)
    model.set_active_adapters(Parallel("a", "p"))
    both = model.generate(**inputs, **kwargs)
    model.set_active_adapters("a")
    only_a = model.generate(**inputs, **kwargs)
    model.set_active_adapters("p")
    only_p = model.generate(**inputs, **kwargs)
    assert torch.equal(both, torch.cat([only_a, only_p]))


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_prefix_parallel_and_batchsplit_rows_equal_each_adapter_alone(arch):
    model = patched(arch, "seq2seq")
    model.add_adapter("p", config=PREFIX)
    model.add_adapter("q", config=PrefixTuningConfig(prefix_length=5, flat=True))  # longer: padded prefixes
    for name in "pq":
        perturb_adapter(model, name, scale=1.0, seed=ord(name))
    inputs = make_inputs(arch)
    alone = {n: run(model, inputs, n) for n in "pq"}
    torch.testing.assert_close(run(model, inputs, Parallel("p", "q")), torch.cat([alone["p"], alone["q"]]), atol=1e-5, rtol=1e-5)
    split = run(model, inputs, BatchSplit("q", "p", batch_sizes=[1, 1]))
    torch.testing.assert_close(split, torch.cat([alone["q"][:1], alone["p"][1:]]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", [a for a in ENCODER_DECODERS if a not in NO_PROMPT])
def test_prompt_generate_with_and_without_cache(arch):
    model = patched(arch, "seq2seq")
    model.add_adapter("t", config=PromptTuningConfig(prompt_length=3), set_active=True)
    perturb_adapter(model, "t", scale=1.0)
    inputs = _generate_inputs(arch)
    assert_generate_is_greedy_decoding(model, inputs, steps=4, atol=1e-4, **GENERATE)


# -- refusals, checkpoints, merging, encoder-only -----------------------------------------------------------
def test_prompt_tuning_is_refused_for_whisper_and_llama_adapter_for_encoder_decoders():
    model = patched("whisper")
    with pytest.raises(ValueError, match="audio features"):
        model.add_adapter("t", config=PromptTuningConfig(prompt_length=3))
    assert "t" not in model.adapters_config.adapters
    with pytest.raises(ValueError, match="decoder-only"):
        patched("t5").add_adapter("l", config=adapters.AdaptionPromptConfig(adapter_len=2))


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_prefix_and_lora_save_load_round_trip(tmp_path, arch):
    model = patched(arch, "seq2seq")
    model.add_adapter("p", config=PREFIX)
    model.add_adapter("l", config=LoRAConfig(r=4, attn_matrices=["q", "k", "v", "o"], intermediate_lora=True, output_lora=True))
    for name in "pl":
        perturb_adapter(model, name, seed=len(name))
    inputs = make_inputs(arch)
    expected = run(model, inputs, Stack("l", "p"))
    for name in "pl":
        model.save_adapter(str(tmp_path / name), name)
    fresh = patched(arch, "seq2seq")
    for name in "pl":
        fresh.load_adapter(str(tmp_path / name))
    assert torch.equal(run(fresh, inputs, Stack("l", "p")), expected)


@pytest.mark.parametrize("arch", ENCODER_DECODERS)
def test_lora_merge_and_unload_equals_unmerged(arch):
    model = patched(arch, "seq2seq")
    model.add_adapter("l", config=LoRAConfig(r=4, attn_matrices=["q", "k", "v", "o"], intermediate_lora=True, output_lora=True), set_active=True)
    perturb_adapter(model, "l", scale=0.1)
    inputs = make_inputs(arch)
    unmerged = run(model, inputs)
    model = model.merge_and_unload()
    assert type(model) is type(make_model(arch, "seq2seq"))
    torch.testing.assert_close(run(model, inputs), unmerged, atol=1e-5, rtol=1e-5)


def test_t5_encoder_model_numbers_its_layers_from_zero():
    model = T5EncoderModel(T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0)).eval()
    adapters.init(model)
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("p", config=PREFIX, set_active=True)
    assert set(model.get_adapter("a")) == {0, 1}
    assert set(model.base_model.prefix_tuning.prefix_tunings["p"]) == {"encoder_prefix"}
    inputs = make_inputs("t5")
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_lora_in_peft_format_loads_in_peft_with_the_same_outputs(tmp_path, arch):
    peft = require("peft")
    model = patched(arch, "seq2seq")
    model.add_adapter("l", config=LoRAConfig(r=4, attn_matrices=["q", "v"]), set_active=True)  # self- and cross-attention
    perturb_adapter(model, "l", scale=0.1)
    inputs = make_inputs(arch)
    model.save_adapter(str(tmp_path), "l", format="peft")
    theirs, broken = checked_peft_output(peft.PeftModel.from_pretrained(make_model(arch, "seq2seq"), str(tmp_path)).eval(), inputs)
    if broken:
        pytest.skip(broken)
    torch.testing.assert_close(theirs, run(model, inputs), atol=1e-5, rtol=1e-5)
