"""Prefix tuning where the attention does not (always) call transformers' attention interface —
GPT-J (its own ``_attn`` before transformers 5.24) and DeBERTa-v2 (disentangled attention) —
checked against the definition computed by hand from the layer's queries, keys and values; the
AdapterHub checkpoint layouts and position conventions that decide whether its prefix tuning and
invertible adapter files reproduce (DistilBERT's location key, the encoder's invertible adapters of
T5/BART, T5's relative positions of the prefix keys)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import adapters
import adapters.hooks.attention as attention_hooks
from adapters import PrefixTuningConfig
from adapters.composition import BatchSplit, Parallel, Stack
from adapters.models.deberta import DisentangledPrefixAttention
from adapters.models.gptj import GPTJPrefixAttention

from conftest import assert_generate_is_greedy_decoding, make_inputs, patched, perturb_adapter, run

FLAT = PrefixTuningConfig(prefix_length=3, flat=True)


def _prefix(model, name: str, layer: int, location: str = "self") -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer``'s prefix keys and values of adapter ``name``, each ``(heads, P, head_dim)``."""
    states = model.base_model.prefix_tuning.prefix_tunings[name][f"{location}_prefix"]()
    return states[layer, 0], states[layer, 1]


def _softmax_attention(query, keys, values, allowed, scale):
    """``softmax(q kᵀ · scale, masked where not allowed) v`` over ``(batch, heads, ·, head_dim)``."""
    scores = (query @ keys.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return scores.softmax(-1) @ values


# -- GPT-J ----------------------------------------------------------------------------------------------
def _spy_on_gptj_attention(monkeypatch):
    """Record the (post-rotary) queries, keys and values GPT-J's attention hands over, on both paths:
    the attention interface (transformers 5.24 on) and the inner ``_attn`` (5.23)."""
    calls = []
    original = attention_hooks.attend_with_contributions

    def spy(module, query, key, value, attention_mask, inner, **kwargs):
        calls.append((module, query, key, value))
        return original(module, query, key, value, attention_mask, inner, **kwargs)

    monkeypatch.setattr(attention_hooks, "attend_with_contributions", spy)
    monkeypatch.setattr("adapters.models.gptj.attend_with_contributions", spy)
    return calls


def test_gptj_prefix_is_attention_over_prefix_keys_prepended_to_the_layers_keys(monkeypatch):
    model = patched("gptj")
    model.add_adapter("p", config=FLAT, set_active=True)
    perturb_adapter(model, "p", scale=1.0)
    assert isinstance(model.h[0].attn, GPTJPrefixAttention)
    inputs = make_inputs("gptj")  # row 1: three padding tokens at the end
    calls = _spy_on_gptj_attention(monkeypatch)
    outputs = []
    handle = model.h[1].attn.register_forward_hook(lambda m, args, out: outputs.append(out[0]))
    run(model, inputs)
    handle.remove()
    module, query, key, value = next(c for c in calls if c[0] is model.h[1].attn)
    prefix_keys, prefix_values = _prefix(model, "p", 1)
    batch, length, n = query.shape[0], query.shape[2], prefix_keys.shape[1]
    keys = torch.cat([prefix_keys.expand(batch, -1, -1, -1), key], dim=2)
    values = torch.cat([prefix_values.expand(batch, -1, -1, -1), value], dim=2)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    real = causal[None, None] & inputs["attention_mask"].bool()[:, None, None, :]
    allowed = torch.cat([torch.ones(batch, 1, length, n, dtype=torch.bool), real], dim=-1)
    with torch.no_grad():
        attended = _softmax_attention(query.float(), keys.float(), values.float(), allowed, query.shape[-1] ** -0.5)
        expected = module.out_proj(attended.transpose(1, 2).reshape(batch, length, -1))
    real_rows = inputs["attention_mask"].bool()
    torch.testing.assert_close(outputs[0][real_rows], expected[real_rows], atol=1e-5, rtol=1e-5)


def test_gptj_prefix_composes_in_stack_parallel_and_batchsplit():
    model = patched("gptj")
    for name, length in (("a", 2), ("b", 3)):
        model.add_adapter(name, config=PrefixTuningConfig(prefix_length=length, flat=True))
        perturb_adapter(model, name, scale=1.0, seed=length)
    inputs = make_inputs("gptj", padded=False)
    alone = {name: run(model, inputs, name) for name in "ab"}
    parallel = run(model, inputs, Parallel("a", "b"))
    torch.testing.assert_close(parallel[:2], alone["a"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parallel[2:], alone["b"], atol=1e-5, rtol=1e-5)
    split = run(model, inputs, BatchSplit("a", "b", batch_sizes=[1, 1]))
    torch.testing.assert_close(split, torch.cat([alone["a"][:1], alone["b"][1:]]), atol=1e-5, rtol=1e-5)
    stacked = run(model, inputs, Stack("a", "b"))
    assert (stacked - alone["a"]).abs().max() > 1e-3 and (stacked - alone["b"]).abs().max() > 1e-3


def test_gptj_prefix_generation_with_a_kv_cache_is_greedy_decoding():
    model = patched("gptj", "clm")
    model.add_adapter("p", config=FLAT, set_active=True)
    perturb_adapter(model, "p", scale=1.0)
    inputs = make_inputs("gptj", batch=1, padded=False)
    assert_generate_is_greedy_decoding(model, inputs, steps=4)


# -- DeBERTa-v2 -------------------------------------------------------------------------------------
def _deberta(relative_attention: bool):
    model = transformers.DebertaV2Model(transformers.DebertaV2Config(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64, pad_token_id=0,
        relative_attention=relative_attention, pos_att_type=["p2c", "c2p"] if relative_attention else None,
        position_buckets=8, max_relative_positions=16,
    )).eval()
    adapters.init(model)
    return model


def _deberta_attention_by_hand(module, hidden, prefix, attention_mask):
    """Disentangled attention without relative positions, from the module's projections:
    ``softmax(q [P_k; K]ᵀ / √d) [P_v; V]`` with the padding masked (every query sees the prefix)."""
    batch, length = hidden.shape[:2]
    heads = module.num_attention_heads

    def split(x):
        return x.view(batch, length, heads, -1).transpose(1, 2)

    keys = torch.cat([prefix[0].expand(batch, -1, -1, -1), split(module.key_proj(hidden))], dim=2)
    values = torch.cat([prefix[1].expand(batch, -1, -1, -1), split(module.value_proj(hidden))], dim=2)
    query = split(module.query_proj(hidden))
    n = prefix[0].shape[1]
    allowed = torch.cat([torch.ones(batch, n, dtype=torch.bool), attention_mask.bool()], dim=1)[:, None, None, :]
    attended = _softmax_attention(query, keys, values, allowed, query.shape[-1] ** -0.5)
    return attended.transpose(1, 2).reshape(batch, length, -1)


def test_deberta_v2_prefix_is_attention_over_prefix_keys_prepended_to_the_layers_keys():
    model = _deberta(relative_attention=False)
    model.add_adapter("p", config=FLAT, set_active=True)
    perturb_adapter(model, "p", scale=1.0)
    module = model.encoder.layer[1].attention.self
    assert isinstance(module, DisentangledPrefixAttention)
    inputs = make_inputs("deberta-v2")
    records = []
    handle = module.register_forward_hook(lambda m, args, out: records.append((args[0], out[0])))
    run(model, inputs)
    handle.remove()
    (hidden, output), = records
    with torch.no_grad():
        expected = _deberta_attention_by_hand(module, hidden, _prefix(model, "p", 1), inputs["attention_mask"])
    real_rows = inputs["attention_mask"].bool()
    torch.testing.assert_close(output[real_rows], expected[real_rows], atol=1e-5, rtol=1e-5)


def test_deberta_v2_prefix_keys_get_no_relative_position_score():
    """With relative attention, the real keys keep their content-position scores and the prefix
    keys get none: a prefix whose keys are zero scores 0 against every query (weight e⁰ each), so
    with zero values it only adds ``P`` to every softmax denominator."""
    model = _deberta(relative_attention=True)
    model.add_adapter("p", config=FLAT, set_active=True)
    with torch.no_grad():
        model.base_model.prefix_tuning.prefix_tunings["p"]["self_prefix"].control_trans.zero_()
    inputs = make_inputs("deberta-v2", padded=False)
    module = model.encoder.layer[0].attention.self
    outputs = []
    handle = module.register_forward_hook(lambda m, args, out: outputs.append(out[0]))
    run(model, inputs)
    model.set_active_adapters(None)
    run(model, inputs)
    handle.remove()
    with_prefix, plain = (o.view(*o.shape[:2], module.num_attention_heads, -1) for o in outputs)
    # per query and head: the real keys' weights e^s / Z become e^s / (Z + P), one factor Z / (Z + P) < 1
    factor = (with_prefix * plain).sum(-1, keepdim=True) / (plain * plain).sum(-1, keepdim=True)
    torch.testing.assert_close(with_prefix, factor * plain, atol=1e-6, rtol=1e-5)
    assert (factor < 1).all() and (factor > 0).all()


def test_deberta_v2_prefix_runs_in_parallel_and_trains_only_the_prefix():
    model = _deberta(relative_attention=True)
    for name, length in (("a", 2), ("b", 3)):
        model.add_adapter(name, config=PrefixTuningConfig(prefix_length=length, flat=True))
        perturb_adapter(model, name, scale=1.0, seed=length)
    inputs = make_inputs("deberta-v2")
    alone = {name: run(model, inputs, name) for name in "ab"}
    parallel = run(model, inputs, Parallel("a", "b"))
    torch.testing.assert_close(parallel, torch.cat([alone["a"], alone["b"]]), atol=1e-5, rtol=1e-5)
    model.train_adapter("a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prefix_tuning.prefix_tunings.a.self_prefix.control_trans"}
    model(**inputs).last_hidden_state.sum().backward()
    assert model.base_model.prefix_tuning.prefix_tunings["a"]["self_prefix"].control_trans.grad.abs().sum() > 0


def test_deberta_v1_prefix_is_attention_over_prefix_keys_prepended_to_the_layers_keys():
    """DeBERTa (v1) splits one fused projection per head into ``[q_h | k_h | v_h]`` and adds
    ``q_bias`` / ``v_bias``; the prefix keys and values join the real ones as they are."""
    from adapters.models.deberta import FusedDisentangledPrefixAttention

    model = transformers.DebertaModel(transformers.DebertaConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64, pad_token_id=0,
        relative_attention=False,
    )).eval()
    adapters.init(model)
    model.add_adapter("p", config=FLAT, set_active=True)
    perturb_adapter(model, "p", scale=1.0)
    module = model.encoder.layer[1].attention.self
    assert isinstance(module, FusedDisentangledPrefixAttention)
    with torch.no_grad():
        module.q_bias.normal_()
        module.v_bias.normal_()
    inputs = make_inputs("deberta")
    records = []
    handle = module.register_forward_hook(lambda m, args, out: records.append((args[0], out[0])))
    run(model, inputs)
    handle.remove()
    (hidden, output), = records
    batch, length, heads = hidden.shape[0], hidden.shape[1], module.num_attention_heads
    prefix_keys, prefix_values = _prefix(model, "p", 1)
    with torch.no_grad():
        query, key, value = module.in_proj(hidden).view(batch, length, heads, -1).transpose(1, 2).chunk(3, dim=-1)
        query = query + module.q_bias.view(heads, -1)[None, :, None]
        value = value + module.v_bias.view(heads, -1)[None, :, None]
        keys = torch.cat([prefix_keys.expand(batch, -1, -1, -1), key], dim=2)
        values = torch.cat([prefix_values.expand(batch, -1, -1, -1), value], dim=2)
        n = prefix_keys.shape[1]
        allowed = torch.cat([torch.ones(batch, n, dtype=torch.bool), inputs["attention_mask"].bool()], dim=1)[:, None, None, :]
        expected = _softmax_attention(query, keys, values, allowed, query.shape[-1] ** -0.5)
        expected = expected.transpose(1, 2).reshape(batch, length, -1)
    real_rows = inputs["attention_mask"].bool()
    torch.testing.assert_close(output[real_rows], expected[real_rows], atol=1e-5, rtol=1e-5)


def test_deleting_the_last_prefix_restores_the_attention_classes():
    for arch, attention in (
        ("gptj", lambda m: m.h[0].attn), ("deberta-v2", lambda m: m.encoder.layer[0].attention.self),
        ("deberta", lambda m: m.encoder.layer[0].attention.self),
    ):
        model = patched(arch)
        original = type(attention(model))
        model.add_adapter("p", config=FLAT)
        assert type(attention(model)) is not original
        model.delete_adapter("p")
        assert type(attention(model)) is original, arch


# -- AdapterHub's layouts and conventions -------------------------------------------------------------------
def test_adapterhub_distilbert_prefix_keys_load(tmp_path):
    """AdapterHub files DistilBERT's prefix under the location ``self`` (its other models:
    ``self_prefix``); save_adapter writes it so too, and such a file loads and gives the prefix it
    holds."""
    model = patched("distilbert")
    model.add_adapter("p", config=FLAT)
    perturb_adapter(model, "p", scale=1.0)
    model.save_adapter(str(tmp_path), "p")
    weights = load_file(str(tmp_path / "adapter.safetensors"))
    assert "prefix_tuning.prefix_tunings.p.self.control_trans" in weights
    assert not any(".self_prefix." in k for k in weights)
    other = patched("distilbert")
    other.load_adapter(str(tmp_path), load_as="p")
    inputs = make_inputs("distilbert")
    torch.testing.assert_close(run(other, inputs, "p"), run(model, inputs, "p"), atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_adapterhub_encoder_invertible_adapter_keys_load(tmp_path, arch):
    """AdapterHub keeps an encoder-decoder's invertible adapters in the encoder
    (``encoder.invertible_adapters.<name>``)."""
    model = patched(arch)
    model.add_adapter("lang", config="seq_bn_inv")
    perturb_adapter(model, "lang", scale=1.0)
    model.save_adapter(str(tmp_path), "lang")
    weights = load_file(str(tmp_path / "adapter.safetensors"))  # written as AdapterHub names them
    assert any(k.startswith("encoder.invertible_adapters.lang.") for k in weights)
    assert not any(k.startswith("invertible_adapters.") for k in weights)
    other = patched(arch)
    other.load_adapter(str(tmp_path), load_as="lang")
    inputs = make_inputs(arch)
    torch.testing.assert_close(run(other, inputs, "lang"), run(model, inputs, "lang"), atol=0, rtol=0)


def test_t5_prefix_keys_take_the_first_key_positions_as_in_adapterhub():
    """T5's relative position bias over ``[prefix ; real]`` keys: the prefix at key positions
    ``0 … P−1``, the real keys from ``P`` on, the queries where they were (AdapterHub's numbering:
    its T5 prefix checkpoints reproduce only so). Checked in the first encoder layer by hand."""
    model = patched("t5")
    model.set_attn_implementation("eager")
    model.add_adapter("p", config=FLAT, set_active=True)
    perturb_adapter(model, "p", scale=1.0)
    inputs = make_inputs("t5")
    module = model.encoder.block[0].layer[0].SelfAttention
    records = []
    handle = module.register_forward_hook(lambda m, args, kwargs, out: records.append((args[0], out[0])), with_kwargs=True)
    run(model, inputs)
    handle.remove()
    (hidden, output), = records
    prefix_keys, prefix_values = _prefix(model, "p", 0, "encoder")
    batch, length = hidden.shape[:2]
    n = prefix_keys.shape[1]

    def split(x):
        return x.view(batch, length, module.n_heads, -1).transpose(1, 2)

    with torch.no_grad():
        keys = torch.cat([prefix_keys.expand(batch, -1, -1, -1), split(module.k(hidden))], dim=2)
        values = torch.cat([prefix_values.expand(batch, -1, -1, -1), split(module.v(hidden))], dim=2)
        query_positions = torch.arange(length)[:, None]
        key_positions = torch.arange(n + length)[None, :]
        buckets = module._relative_position_bucket(
            key_positions - query_positions, bidirectional=True, num_buckets=module.relative_attention_num_buckets,
            max_distance=module.relative_attention_max_distance,
        )
        bias = module.relative_attention_bias(buckets).permute(2, 0, 1)[None]
        scores = split(module.q(hidden)) @ keys.transpose(-1, -2) + bias
        allowed = torch.cat([torch.ones(batch, n, dtype=torch.bool), inputs["attention_mask"].bool()], dim=1)
        scores = scores.masked_fill(~allowed[:, None, None, :], torch.finfo(scores.dtype).min)
        expected = module.o((scores.softmax(-1) @ values).transpose(1, 2).reshape(batch, length, -1))
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


# -- AdapterHub's defects, each shown on the files AdapterHub wrote (tests/fixtures/adapterhub) -----------
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "adapterhub")


def _fixture_case(arch: str, name: str):
    """``(model with the case's adapters loaded, inputs, AdapterHub's outputs)``, or a skip when the
    generated fixtures do not have the case."""
    manifest = os.path.join(FIXTURES, "manifest.json")
    if not os.path.exists(manifest):
        pytest.skip("no AdapterHub fixtures (utils/make_adapterhub_fixtures.py writes them)")
    with open(manifest) as f:
        case = next((c for c in json.load(f)["cases"] if c["arch"] == arch and c["case"] == name), None)
    if case is None:
        pytest.skip(f"no AdapterHub fixture {arch}/{name}")
    arch_dir = os.path.join(FIXTURES, arch)
    model = transformers.AutoModel.from_pretrained(os.path.join(arch_dir, "base")).eval()
    adapters.init(model)
    for adapter in case["adapters"]:
        model.load_adapter(os.path.join(arch_dir, adapter["dir"]), load_as=adapter["name"])
    inputs = load_file(os.path.join(arch_dir, "inputs.safetensors"))
    return model, inputs, load_file(os.path.join(arch_dir, case["expected"]))


@pytest.mark.parametrize("name", ["seq_bn_inv", "double_seq_bn_inv", "stack_lang_task"])
def test_adapterhub_whisper_invertible_adapter_acts_on_the_encoder_output(name):
    """MAD-X's invertible adapter maps the embeddings the first layer reads (and its inverse the
    states before the output embeddings). AdapterHub 1.3.0 hooks it on Whisper's
    ``encoder.layer_norm``, the norm *after* the last encoder layer: its output equals this library's
    bottleneck adapter with the block applied by hand to the encoder's final output (bit for bit),
    not to any embedding. This library keeps the block at the decoder's token embeddings (Whisper's
    only token embeddings, tied to its output projection), so these checkpoints compute otherwise."""
    model, inputs, expected = _fixture_case("whisper", name)
    first = "lang" if name == "stack_lang_task" else "a"  # the adapter whose block runs
    model.set_active_adapters(Stack("lang", "task") if name == "stack_lang_task" else "a")
    ours = run(model, inputs)
    block = model.base_model.invertible_adapters[first]
    model.delete_invertible_adapter(first)
    handle = model.encoder.layer_norm.register_forward_hook(lambda module, args, output: block(output))
    adapterhub_placement = run(model, inputs)
    handle.remove()
    torch.testing.assert_close(adapterhub_placement, expected["out"], atol=1e-5, rtol=1e-5)
    assert (ours - expected["out"]).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ["bert", "albert", "t5", "vit", "gptj"])
def test_adapterhub_parallel_prefix_branch_attends_to_its_padding(arch):
    """``Parallel(a, b)`` with prefixes of different lengths: AdapterHub pads the shorter prefix
    (``b``) with keys and values equal to ``pad_token_id`` and does not mask the filler (it pads an
    additive mask with ``1.0``, a logit bonus, and ViT's attention has no mask at all), so branch
    ``b`` attends to it. Its rows then differ
    from ``b`` run alone; branch ``a`` (the longest, no filler) reproduces. By the definition of
    Parallel (each branch runs its own adapter on its copy of the batch), ours equals ``b`` alone."""
    model, inputs, expected = _fixture_case(arch, "prefix_parallel")
    lengths = {n: model.adapters_config.adapters[n].prefix_length for n in "ab"}
    assert lengths["b"] < lengths["a"]
    ours = run(model, inputs, Parallel("a", "b"))
    rows = ours.shape[0] // 2
    torch.testing.assert_close(ours[rows:], run(model, inputs, "b"), atol=1e-5, rtol=1e-5)  # the definition
    torch.testing.assert_close(ours[:rows], expected["out"][:rows], atol=1e-4, rtol=1e-4)  # branch a reproduces
    assert (ours[rows:] - expected["out"][rows:]).abs().max() > 1e-3  # branch b: AdapterHub's filler attended


def _with_extended_masks(monkeypatch, change):
    """Route the attention wrapper's mask extension through ``change(mask, n_extra, module, query)``."""
    original = attention_hooks._extend_mask

    def extend(mask, valid, n_extra, module, query, key_length):
        return change(original(mask, valid, n_extra, module, query, key_length), n_extra, module, query)

    monkeypatch.setattr(attention_hooks, "_extend_mask", extend)


def _additive(mask, query):
    return mask if mask.dtype != torch.bool else torch.where(mask, 0.0, torch.finfo(query.dtype).min).to(query.dtype)


# AdapterHub's cases with one prefix (or a Stack of prefixes) per row
_PREFIX_CASES = ("prefix_tuning_flat", "prefix_tuning", "mam", "unipelt", "prefix_stack")


def _setup_of(name: str):
    return Stack("a", "b") if name == "prefix_stack" else "a"


@pytest.mark.parametrize("name", _PREFIX_CASES)
@pytest.mark.parametrize("arch,output", [
    ("llama", "out_unpadded"), ("mistral", "out_unpadded"), ("gpt2", "out_unpadded"), ("bart", "out"),
    ("bart", "out_unpadded"), ("mbart", "out"), ("plbart", "out"), ("whisper", "out"),
])
def test_adapterhub_sdpa_aligns_the_causal_mask_over_the_prefix_top_left(monkeypatch, arch, output, name):
    """AdapterHub 1.3.0 under sdpa (its default) hands a causal self-attention without padding no
    mask, so torch's ``is_causal`` aligns the causal mask to the top left of the ``P + T`` joined
    keys: query ``i`` sees joined keys ``0 … i`` (mostly prefix), not its own tokens. Its output
    equals ours with exactly that mask put in by hand; the definition (every query sees the whole
    prefix and its own past: tests/test_prefix.py compares ours with transformers' model fed the
    prefix as past keys/values) gives other numbers. (With padding AdapterHub's boolean mask masks
    the prefix out instead; with attn_implementation="eager" it computes the definition.)"""
    model, inputs, expected = _fixture_case(arch, name)
    if output.endswith("_unpadded"):
        inputs = dict(inputs, attention_mask=torch.ones_like(inputs["attention_mask"]))
    model.set_active_adapters(_setup_of(name))
    ours = run(model, inputs)

    def top_left(mask, n_extra, module, query):
        if not getattr(module, "is_causal", False) or query.shape[2] == 1:
            return mask
        keys = n_extra + query.shape[2]
        return _additive(torch.ones(query.shape[2], keys, dtype=torch.bool).tril()[None, None], query)

    _with_extended_masks(monkeypatch, top_left)
    torch.testing.assert_close(run(model, inputs), expected[output], atol=1e-4, rtol=1e-4)
    assert (ours - expected[output]).abs().max() > 1e-2


@pytest.mark.parametrize("name", _PREFIX_CASES)
def test_adapterhub_distilbert_prefix_gets_a_logit_bonus_on_padded_batches(monkeypatch, name):
    """DistilBERT hands its prefix layer ``invert_mask=False`` (a 0/1 mask), but under sdpa
    AdapterHub's DistilBERT builds an additive float mask (0 / min) when the batch has padding, so
    the prefix columns it appends as ``1`` add ``+1.0`` to every prefix logit. Its padded output
    equals ours with that bonus put in by hand; its unpadded output (no mask) reproduces ours."""
    model, inputs, expected = _fixture_case("distilbert", name)
    model.set_active_adapters(_setup_of(name))
    unpadded = dict(inputs, attention_mask=torch.ones_like(inputs["attention_mask"]))
    torch.testing.assert_close(run(model, unpadded), expected["out_unpadded"], atol=1e-4, rtol=1e-4)
    ours = run(model, inputs)

    def bonus(mask, n_extra, module, query):
        mask = _additive(mask, query).clone()
        mask[..., :n_extra] += 1.0
        return mask

    _with_extended_masks(monkeypatch, bonus)
    torch.testing.assert_close(run(model, inputs), expected["out"], atol=1e-4, rtol=1e-4)
    assert (ours - expected["out"]).abs().max() > 1e-2


def _filled_like_adapterhub(model, short: str, long: str) -> str:
    """A flat copy of prefix adapter ``short`` as long as ``long``, its extra positions in front filled
    with ``pad_token_id`` in every key and value entry (AdapterHub's padding of the shorter prefix)."""
    pool = model.base_model.prefix_tuning.prefix_tunings
    length = model.adapters_config.adapters[long].prefix_length
    config = model.adapters_config.adapters[short]
    model.add_adapter("filled", config=config.replace(prefix_length=length, flat=True))
    fill = float(model.config.pad_token_id or 0)
    with torch.no_grad():
        for key, module in pool["filled"].items():
            own = pool[short][key].flat_prefix().view(config.prefix_length, -1)
            filler = own.new_full((length - config.prefix_length, own.shape[1]), fill)
            module.control_trans.copy_(torch.cat([filler, own]).reshape(-1))
    return "filled"


@pytest.mark.parametrize("arch,output", [
    ("llama", "out_unpadded"), ("gpt2", "out_unpadded"), ("distilbert", "out_unpadded"), ("bart", "out_unpadded"),
    ("whisper", "out"),
])
def test_adapterhub_parallel_prefix_under_sdpa_attends_to_its_padding(monkeypatch, arch, output):
    """The two defects together (``Parallel`` of prefixes of different lengths under sdpa, batches
    without padding, where AdapterHub passes no mask): the shorter prefix's ``pad_token_id`` filler is
    attended like a prefix position, and causal self-attention is aligned top-left. AdapterHub's
    output equals ours for ``Parallel(a, b')``, ``b'`` being ``b`` with that filler written into it,
    under the top-left mask put in by hand."""
    model, inputs, expected = _fixture_case(arch, "prefix_parallel")
    if output.endswith("_unpadded"):
        inputs = dict(inputs, attention_mask=torch.ones_like(inputs["attention_mask"]))
    filled = _filled_like_adapterhub(model, "b", "a")

    def top_left(mask, n_extra, module, query):
        if not getattr(module, "is_causal", False) or query.shape[2] == 1:
            return mask
        return _additive(torch.ones(query.shape[2], n_extra + query.shape[2], dtype=torch.bool).tril()[None, None], query)

    ours = run(model, inputs, Parallel("a", "b"))
    _with_extended_masks(monkeypatch, top_left)
    torch.testing.assert_close(run(model, inputs, Parallel("a", filled)), expected[output], atol=1e-4, rtol=1e-4)
    assert (ours - expected[output]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["distilbert", "bart"])
def test_adapterhub_parallel_prefix_on_padded_batches(monkeypatch, arch):
    """``Parallel(a, b)`` of prefixes of different lengths on the padded batch, where AdapterHub's
    sdpa path builds an additive float mask: BART pads it with ``+1.0`` for the shorter prefix's
    ``pad_token_id`` filler (encoder and cross-attention; the decoder's self-attention has no mask and
    is aligned top-left), DistilBERT gives every prefix column ``+1.0`` and its filler ``0``. With
    the filler written into ``b`` and those biases put in by hand, ours gives AdapterHub's numbers."""
    model, inputs, expected = _fixture_case(arch, "prefix_parallel")
    lengths = {n: model.adapters_config.adapters[n].prefix_length for n in "ab"}
    filler = lengths["a"] - lengths["b"]
    filled = _filled_like_adapterhub(model, "b", "a")
    ours = run(model, inputs, Parallel("a", "b"))

    def adapterhub_masks(mask, n_extra, module, query):
        if getattr(module, "is_causal", False) and query.shape[2] > 1:  # BART's decoder: no mask, top left
            return _additive(torch.ones(query.shape[2], n_extra + query.shape[2], dtype=torch.bool).tril()[None, None], query)
        mask = _additive(mask, query).clone()
        half = mask.shape[0] // 2  # branch b's rows
        if arch == "distilbert":
            mask[..., :n_extra] += 1.0
            mask[half:, ..., :filler] -= 1.0
        else:
            mask[half:, ..., :filler] += 1.0
        return mask

    _with_extended_masks(monkeypatch, adapterhub_masks)
    torch.testing.assert_close(run(model, inputs, Parallel("a", filled)), expected["out"], atol=1e-4, rtol=1e-4)
    assert (ours - expected["out"]).abs().max() > 1e-3


def test_deberta_v2_prefix_of_one_thread_does_not_reach_another_threads_pass():
    """The prefix a pass is joining to DeBERTa-v2's keys is state of that pass (its forward
    context), not of the shared attention module: while thread A's prefix pass is stopped inside
    layer 0's attention, thread B runs a whole pass without a prefix through the same module; each
    gets its single-thread result."""
    import threading

    model = _deberta(relative_attention=True)
    model.add_adapter("p", config=PrefixTuningConfig(prefix_length=3, flat=True))
    perturb_adapter(model, "p", scale=1.0, seed=2)
    inputs = make_inputs("deberta-v2")
    alone_prefix, alone_base = run(model, inputs, "p"), run(model, inputs)
    assert not torch.allclose(alone_prefix, alone_base)

    a_inside, b_done, results, errors = threading.Event(), threading.Event(), {}, []

    def stop_a_inside_attention(module, args):  # layer 0's query projection: A's prefix is pending
        if threading.current_thread().name == "prefix-pass":
            a_inside.set()
            b_done.wait(timeout=60)

    def prefix_pass():
        try:
            results["prefix"] = run(model, inputs, "p")
        except Exception as error:  # reported below
            errors.append(error)

    def base_pass():
        a_inside.wait(timeout=60)
        try:
            results["base"] = run(model, inputs)
        except Exception as error:
            errors.append(error)
        finally:
            b_done.set()

    handle = model.encoder.layer[0].attention.self.query_proj.register_forward_pre_hook(stop_a_inside_attention)
    try:
        threads = [threading.Thread(target=prefix_pass, name="prefix-pass"), threading.Thread(target=base_pass)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        handle.remove()
    assert a_inside.is_set() and not errors, errors
    torch.testing.assert_close(results["base"], alone_base, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(results["prefix"], alone_prefix, atol=1e-6, rtol=1e-6)
