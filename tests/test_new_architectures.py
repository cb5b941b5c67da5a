"""What is particular to issue 23's architectures (the shared matrix in conftest runs every method and
block on them): X-MOD's language modules beside the adapters, transformers' EncoderDecoderModel
(adapters in encoder, decoder and cross-attention), ALBERT with several layer groups, BEiT's layer
scale, Phi's parallel block, DeBERTa v1's per-head fused projection, BertGeneration's LM head; and
AdapterHub 1.3.0 checkpoints of EncoderDecoderModel and DeBERTa v1
(``tests/fixtures/adapterhub_new_archs``, written by utils/make_adapterhub_new_arch_fixtures.py; the
other new architectures' checkpoints are cases of tests/test_fixtures_adapterhub_archs.py).

Each adapter position is checked against its definition computed by hand on the plain transformers
model (hooks that insert the adapter's formula where the paper puts it), never against this library."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers
from conftest import _ENCODER, CONFIGS, assert_unchanged, make_inputs, make_model, model_state, patched, perturb_adapter, run
from safetensors.torch import load_file

import adapters
from adapters import LoRAConfig, Parallel, SeqBnConfig
from adapters.errors import AdapterConfigError

# SeqBnConfig (Pfeiffer): at a post-LN block LN(h + x) the adapter makes it LN(s + x) with
# s = h + U relu(D LN(h + x)); at a pre-LN block x + h it makes x + h + U relu(D (h + x))
OUTPUT_ONLY = SeqBnConfig()
ATTENTION_ONLY = SeqBnConfig(mh_adapter=True, output_adapter=False)


def _bottleneck(model, name: str, path: str):
    """``z -> U relu(D z)`` with the weights of adapter ``name`` in host ``path``."""
    weights = {k: v.detach() for k, v in model.state_dict().items() if k.startswith(f"{path}.")}
    down_w, down_b = weights[f"{path}.adapters.{name}.adapter_down.0.weight"], weights[f"{path}.adapters.{name}.adapter_down.0.bias"]
    up_w, up_b = weights[f"{path}.adapters.{name}.adapter_up.weight"], weights[f"{path}.adapters.{name}.adapter_up.bias"]
    return lambda z: torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(z, down_w, down_b)), up_w, up_b)


def _post_ln_by_hand(block, bottleneck):
    """Hooks on a post-LN output ``block`` of a plain model (BERT's ``SelfOutput`` / ``Output``: dense,
    dropout, then ``LayerNorm(· + input_tensor)``): the dropout's output ``h`` becomes
    ``s = h + bottleneck(LN(h + x))`` (a second dropout call in the block, X-MOD's language module's,
    is left alone)."""
    seen = {}

    def take_x(module, args, kwargs):
        seen["x"] = args[1] if len(args) > 1 else kwargs["input_tensor"]

    def insert(module, args, h):
        x = seen.pop("x", None)
        return h if x is None else h + bottleneck(block.LayerNorm(h + x))

    return [block.register_forward_pre_hook(take_x, with_kwargs=True), block.dropout.register_forward_hook(insert)]


# -- X-MOD: the model's language modules keep working beside the adapters --------------------------


def _xmod_by_hand(model, lang_ids=None):
    """The plain X-MOD model with ``model``'s adapter ``a`` (output position) inserted by hand."""
    plain = make_model("xmod")
    hooks = []
    for index, layer in enumerate(plain.encoder.layer):
        hooks += _post_ln_by_hand(layer.output, _bottleneck(model, "a", f"encoder.layer.{index}.output"))
    try:
        return run(plain, dict(make_inputs("xmod"), **({} if lang_ids is None else {"lang_ids": lang_ids})))
    finally:
        for hook in hooks:
            hook.remove()


def test_xmod_keeps_its_language_modules_beside_the_adapters():
    inputs = make_inputs("xmod")
    german = torch.tensor([1, 1])
    plain = make_model("xmod")
    model = patched("xmod")
    for lang_ids in (None, german):  # init alone changes nothing, in either language
        extra = {} if lang_ids is None else {"lang_ids": lang_ids}
        assert torch.equal(run(model, dict(inputs, **extra)), run(plain, dict(inputs, **extra)))
    model.add_adapter("a", config=OUTPUT_ONLY, set_active=True)
    perturb_adapter(model, "a")
    english_out, german_out = run(model, inputs), run(model, dict(inputs, lang_ids=german))
    assert (english_out - german_out).abs().max() > 1e-3  # the language modules still act
    torch.testing.assert_close(english_out, _xmod_by_hand(model), atol=1e-5, rtol=0)
    torch.testing.assert_close(german_out, _xmod_by_hand(model, german), atol=1e-5, rtol=0)
    model.set_default_language("de_DE")  # X-MOD's own API keeps working
    torch.testing.assert_close(run(model, inputs), german_out, atol=1e-6, rtol=0)


def test_xmod_parallel_replicates_the_language_of_each_row():
    model = patched("xmod")
    model.add_adapter("a", config=OUTPUT_ONLY)
    model.add_adapter("b", config=SeqBnConfig(reduction_factor=8))
    perturb_adapter(model, "a", seed=1)
    perturb_adapter(model, "b", seed=2)
    inputs = dict(make_inputs("xmod"), lang_ids=torch.tensor([0, 1]))  # one English row, one German row
    both = run(model, inputs, Parallel("a", "b"))
    torch.testing.assert_close(both[:2], run(model, inputs, "a"), atol=1e-5, rtol=0)
    torch.testing.assert_close(both[2:], run(model, inputs, "b"), atol=1e-5, rtol=0)


def test_xmod_refuses_language_module_settings_that_move_its_norm():
    config = CONFIGS["xmod"]()
    config.adapter_layer_norm = True  # the language modules get their own norm: the block's LayerNorm is not called
    model = transformers.AutoModel.from_config(config)
    with pytest.raises(AdapterConfigError, match=r"adapter_layer_norm=True but adapters needs adapter_layer_norm=False"):
        adapters.init(model)
    assert "_adapters_registry" not in model.__dict__


# -- EncoderDecoderModel (bert2bert) ------------------------------------------------------------------


def _bert2bert(seed: int = 0):
    encoder = transformers.BertConfig(**_ENCODER)
    decoder = transformers.BertConfig(**_ENCODER, is_decoder=True, add_cross_attention=True)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id = 1, 0
    torch.manual_seed(seed)
    return transformers.EncoderDecoderModel(config=config).eval()


def _bert2bert_inputs():
    inputs = make_inputs("bert")
    inputs["decoder_input_ids"] = torch.randint(3, 99, (2, 7), generator=torch.Generator().manual_seed(3))
    return inputs


def test_encoder_decoder_model_has_adapters_in_encoder_decoder_and_cross_attention():
    model = _bert2bert()
    adapters.init(model)
    spec = model.__dict__["_adapters_spec"]
    assert [stack.layers for stack in spec.stacks] == ["encoder.encoder.layer", "decoder.bert.encoder.layer"]
    assert [layer_index for layer_index, _ in model.iter_layers()] == [0, 1, 2, 3]  # decoder layers after the encoder's
    model.add_adapter("a", config=ATTENTION_ONLY)
    model.add_adapter("l", config=LoRAConfig(r=2, attn_matrices=["q", "k", "v"]))
    keys = model.state_dict()
    for path in ("encoder.encoder.layer.0.attention.output", "decoder.bert.encoder.layer.1.attention.output",
                 "decoder.bert.encoder.layer.1.crossattention.output"):
        assert f"{path}.adapters.a.adapter_up.weight" in keys  # AdapterHub's keys: cross-attention as an mh_adapter
    assert "decoder.bert.encoder.layer.0.crossattention.self.key.loras.l.lora_A" in keys
    assert not any("encoder.encoder.layer.0.crossattention" in key for key in keys)


def test_encoder_decoder_model_adapters_compute_their_definition():
    model = _bert2bert()
    adapters.init(model)
    model.add_adapter("a", config=ATTENTION_ONLY, set_active=True)
    perturb_adapter(model, "a")
    inputs = _bert2bert_inputs()
    plain = _bert2bert()
    hooks = []
    blocks = [f"encoder.encoder.layer.{i}.attention.output" for i in range(2)]
    blocks += [f"decoder.bert.encoder.layer.{i}.{part}.output" for i in range(2) for part in ("attention", "crossattention")]
    for path in blocks:
        hooks += _post_ln_by_hand(plain.get_submodule(path), _bottleneck(model, "a", path))
    expected = run(plain, inputs)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=0)
    model.set_active_adapters(None)
    torch.testing.assert_close(run(model, inputs), run(plain, inputs), atol=0, rtol=0)
    # generate() encodes once and decodes with the cache: the same tokens as without it
    model.set_active_adapters("a")
    cached = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=4,
                            do_sample=False, use_cache=True)
    uncached = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=4,
                              do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_encoder_decoder_model_with_a_decoder_of_another_layout_is_refused():
    encoder = transformers.BertConfig(**_ENCODER)
    decoder = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, add_cross_attention=True, is_decoder=True)
    model = transformers.EncoderDecoderModel(config=transformers.EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder))
    with pytest.raises(AdapterConfigError, match=r"decoder with a cross-attention block.*GPT2LMHeadModel.*'gpt2'"):
        adapters.init(model)
    assert "_adapters_registry" not in model.__dict__


def test_encoder_decoder_model_refuses_prompt_tuning():
    model = _bert2bert()
    adapters.init(model)
    before = model_state(model)
    with pytest.raises(AdapterConfigError, match="prompt_tuning is not available for encoder-decoder"):
        model.add_adapter("p", config="prompt_tuning")
    assert_unchanged(model, before)


# -- ALBERT with several layer groups -----------------------------------------------------------------


def _albert_groups():
    config = CONFIGS["albert"]()
    config.num_hidden_groups, config.num_hidden_layers, config.inner_group_num = 2, 4, 1  # each group runs twice
    torch.manual_seed(0)
    return transformers.AutoModel.from_config(config).eval()


def test_albert_layer_groups_are_numbered_group_after_group():
    model = _albert_groups()
    adapters.init(model)
    groups = model.encoder.albert_layer_groups
    assert [layer for _, layer in model.iter_layers()] == [groups[0].albert_layers[0], groups[1].albert_layers[0]]
    model.add_adapter("late", config=SeqBnConfig(leave_out=[0]))  # AdapterHub's numbering: group 1's layer is 1
    keys = [k for k in model.state_dict() if ".late." in k]
    assert keys and all(k.startswith("encoder.albert_layer_groups.1.") for k in keys)


def test_albert_group_adapters_run_at_every_application_of_their_group():
    """Group g's output adapter acts in each of the group's applications (layers 2g and 2g+1 of 4)."""
    model = _albert_groups()
    adapters.init(model)
    model.add_adapter("a", config=OUTPUT_ONLY, set_active=True)
    perturb_adapter(model, "a")
    plain = _albert_groups()
    hooks, calls = [], []
    for g, group in enumerate(plain.encoder.albert_layer_groups):
        layer = group.albert_layers[0]
        bottleneck = _bottleneck(model, "a", f"encoder.albert_layer_groups.{g}.albert_layers.0.output_adapters")
        seen = {}
        hooks.append(layer.ffn.register_forward_pre_hook(lambda m, args, seen=seen: seen.update(x=args[0])))

        def by_hand(module, args, seen=seen, bottleneck=bottleneck, norm=layer.full_layer_layer_norm, g=g):
            x = seen.pop("x")
            h = args[0] - x  # the norm receives h + x
            calls.append(g)
            return (h + bottleneck(norm.forward(h + x)) + x,)  # forward: the norm itself, without this hook

        hooks.append(layer.full_layer_layer_norm.register_forward_pre_hook(by_hand))
    inputs = make_inputs("albert")
    expected = run(plain, inputs)
    assert calls == [0, 0, 1, 1]
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=0)


# -- BEiT: the adapters read the layer-scaled sub-block output ---------------------------------------


def test_beit_adapters_read_the_layer_scaled_output():
    model = patched("beit")
    model.add_adapter("a", config=OUTPUT_ONLY, set_active=True)
    perturb_adapter(model, "a")
    plain = make_model("beit")
    hooks = []
    for index, layer in enumerate(plain.layers):
        bottleneck, seen = _bottleneck(model, "a", f"layers.{index}.output_adapters"), {}
        hooks.append(layer.layernorm_after.register_forward_pre_hook(lambda m, args, seen=seen: seen.update(x=args[0])))

        def by_hand(module, args, scaled, seen=seen, bottleneck=bottleneck):
            if "x" not in seen:  # the first call (after attention): no adapter there
                return scaled
            return scaled + bottleneck(scaled + seen.pop("x"))  # λ₂·FFN output, plus the adapter on it and x

        hooks.append(layer.drop_path.register_forward_hook(by_hand))
    inputs = make_inputs("beit")
    expected = run(plain, inputs)
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=0)
    assert float(plain.layers[0].lambda_2.detach().abs().max()) == pytest.approx(0.1)  # the scale is not 1


def test_beit_refuses_prompt_tuning_with_the_reason():
    model = patched("beit")
    with pytest.raises(AdapterConfigError, match="relative position bias over the image's patch grid"):
        model.add_adapter("p", config="prompt_tuning")


# -- Phi: AdapterHub's plug-in placement in a parallel block -----------------------------------------


def test_phi_attention_adapter_reads_x_and_ffn_adapter_reads_its_output_alone():
    """y = x + (h + U relu(D (h + x))) + (m + U' relu(D' m)): attention output h with the residual x,
    FFN output m alone (AdapterHub's interface hooks no module before Phi's FFN)."""
    model = patched("phi")
    model.add_adapter("a", config=SeqBnConfig(mh_adapter=True, output_adapter=True), set_active=True)
    perturb_adapter(model, "a")
    plain = make_model("phi")
    hooks = []
    for index, layer in enumerate(plain.layers):
        attention_bn = _bottleneck(model, "a", f"layers.{index}.attention_adapters")
        ffn_bn = _bottleneck(model, "a", f"layers.{index}.output_adapters")
        seen = {}
        hooks.append(layer.input_layernorm.register_forward_pre_hook(lambda m, args, seen=seen: seen.update(x=args[0])))
        hooks.append(layer.self_attn.register_forward_hook(
            lambda m, args, kwargs, out, seen=seen, bn=attention_bn: (out[0] + bn(out[0] + seen["x"]),) + tuple(out[1:]),
            with_kwargs=True))
        hooks.append(layer.mlp.register_forward_hook(lambda m, args, out, bn=ffn_bn: out + bn(out)))
    inputs = make_inputs("phi")
    expected = run(plain, inputs)
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=0)


# -- DeBERTa v1: LoRA covers exactly the selected rows of the per-head fused in_proj -----------------


def test_deberta_lora_on_queries_changes_only_the_query_rows_of_each_head():
    model = patched("deberta")
    model.add_adapter("q", config=LoRAConfig(r=2, attn_matrices=["q"]), set_active=True)
    perturb_adapter(model, "q")
    weight = model.encoder.layer[0].attention.self.in_proj.weight.detach().clone()
    model.merge_adapter("q")
    delta = (model.encoder.layer[0].attention.self.in_proj.weight.detach() - weight).abs().sum(-1)
    head_dim = 32 // 4
    per_head = delta.view(4, 3, head_dim)  # rows per head: [q_h | k_h | v_h]
    assert (per_head[:, 0] > 0).all() and (per_head[:, 1:] == 0).all()


# -- BertGeneration: the LM head model as a decoder ---------------------------------------------------


def test_bert_generation_decoder_generates_with_adapters():
    config = CONFIGS["bert-generation"]()
    config.is_decoder = True
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    adapters.init(model)
    model.add_adapter("a", config="seq_bn", set_active=True)
    perturb_adapter(model, "a")
    ids = torch.randint(3, 99, (2, 5), generator=torch.Generator().manual_seed(4))
    cached = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, use_cache=True)
    uncached = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    flexible = adapters.convert_to_adapter_model(model)  # a BertGenerationAdapterModel with the LM head as "default"
    assert type(flexible).__name__ == "BertGenerationAdapterModel"
    assert flexible.active_head == "default"
    with torch.no_grad():
        torch.testing.assert_close(flexible(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6, rtol=0)


# -- AdapterHub 1.3.0 checkpoints: EncoderDecoderModel and DeBERTa v1 ---------------------------------

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "adapterhub_new_archs")
with open(os.path.join(FIXTURES, "manifest.json")) as _f:
    NEW_ARCH_CASES = {(c["arch"], c["case"]): c for c in json.load(_f)["cases"]}


def _adapterhub_case(arch: str, case: str):
    """``(model with the case's adapter loaded and active, inputs, AdapterHub's outputs)``."""
    entry = NEW_ARCH_CASES[(arch, case)]
    folder = os.path.join(FIXTURES, arch)
    model_class = transformers.EncoderDecoderModel if arch == "bert2bert" else transformers.AutoModel
    model = model_class.from_pretrained(os.path.join(folder, "base")).eval()
    adapters.init(model)
    for adapter in entry["adapters"]:
        model.load_adapter(os.path.join(folder, adapter["dir"]), load_as=adapter["name"])
    model.set_active_adapters("a")
    return model, load_file(os.path.join(folder, "inputs.safetensors")), load_file(os.path.join(folder, entry["expected"]))


@pytest.mark.parametrize("case", ["seq_bn", "mh_adapter", "lora", "prefix_tuning"])
def test_adapterhub_encoder_decoder_checkpoints_reproduce(case):
    model, inputs, expected = _adapterhub_case("bert2bert", case)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected["logits"], atol=1e-4, rtol=1e-4)
    assert NEW_ARCH_CASES[("bert2bert", case)]["differs_from_base"]


def test_adapterhub_encoder_decoder_model_skips_the_inverse_before_the_lm_head():
    """AdapterHub defect: its EncoderDecoderModel relays the decoder's inverse pass to the encoder's
    invertible adapter (its own comment: "only the reverse pass in the LM head should be active"), but
    transformers' BertLMHeadModel never calls it — its logits are those of the LM head reading ``h``,
    not ``A⁻¹(h)`` (MAD-X's definition, computed here with AdapterHub's weights)."""
    model, inputs, expected = _adapterhub_case("bert2bert", "seq_bn_inv")
    block = model.invertible_adapters["a"]
    head = model.decoder.get_output_embeddings()  # the decoder's output embedding (LM head's last layer)
    with torch.no_grad():
        seen = {}
        hook = head.register_forward_pre_hook(lambda m, args: seen.update(h=args[0]))  # its input, before A⁻¹
        ours = model(**inputs).logits
        hook.remove()
        definition = torch.nn.functional.linear(block(seen["h"], rev=True), head.weight, head.bias)
        without_inverse = torch.nn.functional.linear(seen["h"], head.weight, head.bias)
    torch.testing.assert_close(ours, definition, atol=1e-5, rtol=0)
    torch.testing.assert_close(expected["logits"], without_inverse, atol=1e-4, rtol=1e-4)  # AdapterHub's
    assert (ours - expected["logits"]).abs().max() > 1e-2


def test_adapterhub_init_changes_deberta_v1_outputs_before_any_adapter():
    """AdapterHub defect: ``adapters.init`` swaps DeBERTa v1's attention for its own copy, which
    computes something else than transformers 4.57.6's DebertaModel: with no adapter at all, the
    output moves by far more than rounding. The plain model (transformers 4.57.6, recorded; 5.x,
    computed here) is the independent computation; ours leaves it unchanged, so none of AdapterHub's
    DeBERTa v1 cases can reproduce — they load, with the keys AdapterHub wrote."""
    folder = os.path.join(FIXTURES, "deberta")
    recorded = load_file(os.path.join(folder, "plain.safetensors"))
    inputs = load_file(os.path.join(folder, "inputs.safetensors"))
    model = transformers.AutoModel.from_pretrained(os.path.join(folder, "base")).eval()
    with torch.no_grad():
        plain = model(**inputs).last_hidden_state
        torch.testing.assert_close(plain, recorded["plain_out"], atol=1e-5, rtol=0)  # 4.57.6 and 5.x agree
        adapters.init(model)
        torch.testing.assert_close(model(**inputs).last_hidden_state, plain, atol=0, rtol=0)
    assert (recorded["after_init_out"] - plain).abs().max() > 0.1
    for case in ("seq_bn", "mh_adapter", "lora"):
        loaded, _, _ = _adapterhub_case("deberta", case)
        assert "a" in loaded.adapters_config
