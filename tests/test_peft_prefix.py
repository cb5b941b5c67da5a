"""PEFT prefix tuning exchanged both ways, encoder-decoders included.

PEFT 0.21 feeds a prefix to the model as past keys/values. On an encoder-decoder
(``num_transformer_submodules=2``) that cache is the decoder's: the decoder self-attention of layer
``i`` reads PEFT's stored layer ``2i mod L`` (the cross-attention part is rebuilt from the encoder;
the encoder gets nothing), the decoder's tokens are numbered from ``P`` on, and T5's relative bias
covers the prefix as positions ``0 … P−1``. The references are PeftModel outputs computed here by
peft itself on the tiny models of conftest (and on 3-layer variants, where ``2i mod L`` permutes the
layers)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import _BART, _BART_TOKENS, _T5, make_inputs, make_model, perturb_adapter, reference_disagreement, require
from conftest import checked_peft_output

import adapters
from adapters import AdapterLoadError, BatchSplit, PrefixTuningConfig
from adapters.compat import CACHE_NAME

peft = require("peft")

SEQ2SEQ = dict(encoder_prefix=False, cross_prefix=False, shift_positions=True)


def _model(arch: str, layers: int = 2, head: str = "seq2seq"):
    """conftest's tiny model, or a variant with ``layers`` encoder and decoder layers."""
    if layers == 2:
        return make_model(arch, head)
    torch.manual_seed(0)
    if arch == "t5":
        config = transformers.T5Config(**dict(_T5, num_layers=layers, num_decoder_layers=layers))
        return transformers.T5ForConditionalGeneration(config).eval()
    config = transformers.BartConfig(**dict(_BART, encoder_layers=layers, decoder_layers=layers), **_BART_TOKENS)
    return transformers.BartForConditionalGeneration(config).eval()


def _inputs(arch: str) -> dict:
    inputs = make_inputs(arch)
    if arch != "whisper":  # a padded decoder row too (PEFT prepends P ones to the decoder mask)
        mask = torch.ones_like(inputs["decoder_input_ids"])
        mask[0, -2:] = 0
        inputs["decoder_attention_mask"] = mask
    return inputs


def _generate(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens and the raw logits of every step (tiny random models repeat tokens; the logits
    compare every decoding step)."""
    out = model.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), max_new_tokens=6, min_new_tokens=6,
        do_sample=False, output_logits=True, return_dict_in_generate=True,
    )
    return out.sequences, torch.stack(out.logits)


def _steps_with_prefix_as_past(peft_model, fresh_model, inputs, sequences, steps) -> torch.Tensor:
    """The independent computation both libraries' generate() is checked against: for each of the
    last ``steps`` tokens of ``sequences``, the logits that predicted it, from one full forward of an
    unmodified model over the tokens before it, the prefix handed to it as past keys/values (PEFT's
    own cache of its prefix, made anew for each forward; the model numbers the tokens after it)."""
    start = sequences.shape[1] - steps
    batch = sequences.shape[0]
    logits = []
    with torch.no_grad():
        for step in range(steps):
            tokens = sequences[:, : start + step]
            cache = {CACHE_NAME: peft_model.get_prompt(batch)}
            if fresh_model.config.is_encoder_decoder:
                out = fresh_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], decoder_input_ids=tokens, **cache)
            else:
                prefix = peft_model.peft_config["default"].num_virtual_tokens
                out = fresh_model(input_ids=tokens, attention_mask=torch.ones(batch, prefix + tokens.shape[1], dtype=torch.long), **cache)
            logits.append(out.logits[:, -1])
    return torch.stack(logits)


def _forward_with_prefix_as_past(peft_model, fresh_model, inputs) -> torch.Tensor:
    """The independent computation PEFT's forward is checked against: an unmodified model's logits
    with PEFT's prefix handed to it as past keys/values, the masks extended by the prefix's ones."""
    batch = inputs["input_ids"].shape[0]
    prefix = peft_model.peft_config["default"].num_virtual_tokens
    ones = torch.ones(batch, prefix, dtype=torch.long)
    kwargs = dict(inputs, **{CACHE_NAME: peft_model.get_prompt(batch)})
    masked = "decoder_attention_mask" if fresh_model.config.is_encoder_decoder else "attention_mask"
    if kwargs.get(masked) is not None:
        kwargs[masked] = torch.cat([ones, kwargs[masked]], dim=1)
    with torch.no_grad():
        return fresh_model(**kwargs).logits


def _peft_prefix_model(arch, layers=2, projection=False, seed=1):
    token_dim = {"t5": 24}.get(arch)  # T5 here: 4 heads of d_kv=6, not d_model / heads
    config = peft.PrefixTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, token_dim=token_dim, prefix_projection=projection,
        encoder_hidden_size=16 if projection else None,
    )
    torch.manual_seed(seed)
    peft_model = peft.get_peft_model(_model(arch, layers), config).eval()
    with torch.no_grad():  # prefix values of the size trained prefixes have
        for param in peft_model.prompt_encoder.parameters():
            param.mul_(0.5)
    return peft_model


@pytest.mark.parametrize(
    "arch,layers,projection",
    [("t5", 2, False), ("t5", 3, False), ("bart", 2, False), ("bart", 3, True), ("mbart", 2, False), ("mt5", 2, True)],
)
def test_peft_seq2seq_prefix_loads_with_peft_outputs(tmp_path, arch, layers, projection):
    peft_model = _peft_prefix_model(arch, layers, projection)
    inputs = _inputs(arch)
    independent = _forward_with_prefix_as_past(peft_model, _model(arch, layers), inputs)
    expected, broken_forward = checked_peft_output(peft_model, inputs, independent=independent, atol=1e-5)
    expected_tokens, expected_steps = _generate(peft_model, inputs)
    peft_model.save_pretrained(str(tmp_path))

    model = _model(arch, layers)
    adapters.init(model)
    name = model.load_adapter(str(tmp_path), set_active=True)
    config = model.adapters_config.adapters[name]
    assert (config.flat, config.shift_positions, config.encoder_prefix, config.cross_prefix) == (True, True, False, False)
    with torch.no_grad():
        ours = model(**inputs).logits
        base = _model(arch, layers)(**inputs).logits
    assert (independent - base).abs().max() > 0.05  # the prefix matters
    torch.testing.assert_close(ours, independent, atol=1e-5, rtol=1e-5)
    tokens, steps = _generate(model, inputs)
    torch.testing.assert_close(steps, _steps_with_prefix_as_past(peft_model, _model(arch, layers), inputs, tokens, 6), atol=1e-5, rtol=1e-5)
    if broken_forward:
        pytest.skip(broken_forward)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    broken = reference_disagreement(expected_steps, _steps_with_prefix_as_past(peft_model, _model(arch, layers), inputs, expected_tokens, 6), "PeftModel.generate with a prefix")
    if broken:
        pytest.skip(broken)
    assert torch.equal(tokens, expected_tokens)
    torch.testing.assert_close(steps, expected_steps, atol=1e-5, rtol=1e-5)


def test_peft_seq2seq_prefix_layer_rows():
    """With L=3 PEFT's decoder layers 0, 1, 2 read its stored layers 0, 2, 1 (checked on peft's own
    cache), and the loaded adapter holds them in that order."""
    peft_model = _peft_prefix_model("t5", layers=3)
    with torch.no_grad():
        cache = peft_model.get_prompt(1).self_attention_cache
    stored = peft_model.prompt_encoder["default"].embedding.weight.detach().view(3, 3, 2, 4, 3 * 2)
    for layer, row in enumerate([0, 2, 1]):
        torch.testing.assert_close(cache.layers[layer].keys[0].transpose(0, 1), stored[:, row, 0])
    from adapters.peft_format import prefix_from_peft

    model = _model("t5", 3)
    adapters.init(model)
    meta = peft_model.peft_config["default"].to_dict()
    ours = prefix_from_peft(model, meta, peft_model.prompt_encoder["default"].embedding.weight.detach())
    torch.testing.assert_close(ours.view(3, 3, 2, 4, 6), stored[:, [0, 2, 1]])


@pytest.mark.parametrize("arch", ["t5", "bart"])
@pytest.mark.parametrize("flat", [False, True], ids=["mlp", "flat"])
def test_saved_seq2seq_prefix_loads_in_peft_with_the_same_outputs(tmp_path, arch, flat):
    """An adapter of this library (distinct prefixes in both decoder layers: PEFT's own L=2 would
    give both layer 0's, so the checkpoint says num_layers=3) reproduces in PeftModel, and loads back."""
    model = _model(arch)
    adapters.init(model)
    model.add_adapter("p", PrefixTuningConfig(prefix_length=4, flat=flat, bottleneck_size=16, **SEQ2SEQ), set_active=True)
    perturb_adapter(model, "p", scale=0.3)
    inputs = _inputs(arch)
    with torch.no_grad():
        ours = model(**inputs).logits
    tokens, steps = _generate(model, inputs)
    model.save_adapter(str(tmp_path), "p", format="peft")
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (meta["peft_type"], meta["task_type"], meta["num_layers"], meta["num_transformer_submodules"]) == (
        "PREFIX_TUNING", "SEQ_2_SEQ_LM", 3, 2,
    )
    peft_model = peft.PeftModel.from_pretrained(_model(arch), str(tmp_path)).eval()
    independent = _forward_with_prefix_as_past(peft_model, _model(arch), inputs)
    torch.testing.assert_close(ours, independent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steps, _steps_with_prefix_as_past(peft_model, _model(arch), inputs, tokens, 6), atol=1e-5, rtol=1e-5)
    again = _model(arch)
    adapters.init(again)
    again.load_adapter(str(tmp_path), load_as="q", set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, ours, atol=1e-6, rtol=1e-6)
    theirs, broken = checked_peft_output(peft_model, inputs, independent=independent, atol=1e-5)
    if broken:
        pytest.skip(broken)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    peft_tokens, peft_steps = _generate(peft_model, inputs)
    broken = reference_disagreement(peft_steps, _steps_with_prefix_as_past(peft_model, _model(arch), inputs, peft_tokens, 6), "PeftModel.generate with a prefix")
    if broken:
        pytest.skip(broken)
    assert torch.equal(peft_tokens, tokens)
    torch.testing.assert_close(peft_steps, steps, atol=1e-5, rtol=1e-5)


def test_peft_round_trip_keeps_peft_layer_count_when_it_can(tmp_path):
    """A PEFT checkpoint loaded and written again keeps num_layers=2 (its decoder layers share
    PEFT's row 0, so L=2 expresses them) and the rows PEFT reads."""
    from safetensors.torch import load_file

    peft_model = _peft_prefix_model("bart")
    peft_model.save_pretrained(str(tmp_path / "peft"))
    model = _model("bart")
    adapters.init(model)
    model.load_adapter(str(tmp_path / "peft"), load_as="p")
    model.save_adapter(str(tmp_path / "ours"), "p", format="peft")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["num_layers"] == 2
    theirs = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))["prompt_embeddings"].view(3, 2, -1)
    ours = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))["prompt_embeddings"].view(3, 2, -1)
    torch.testing.assert_close(ours[:, 0], theirs[:, 0], atol=0, rtol=0)
    assert not ours[:, 1].any()  # a row PEFT never reads


@pytest.mark.parametrize("arch,head,task", [("llama", "clm", "CAUSAL_LM"), ("gpt2", "clm", "CAUSAL_LM"), ("bert", "seq_cls", "FEATURE_EXTRACTION")])
def test_saved_single_stack_prefix_loads_in_peft_with_the_same_outputs(tmp_path, arch, head, task):
    model = make_model(arch, head)
    adapters.init(model)
    model.add_adapter("p", PrefixTuningConfig(prefix_length=4, bottleneck_size=16, shift_positions=True), set_active=True)
    perturb_adapter(model, "p", scale=0.3)
    inputs = make_inputs(arch)
    with torch.no_grad():
        ours = model(**inputs).logits
    model.save_adapter(str(tmp_path), "p", format="peft")
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (meta["task_type"], meta["num_layers"], meta["num_transformer_submodules"]) == (task, 2, 1)
    peft_model = peft.PeftModel.from_pretrained(make_model(arch, head), str(tmp_path)).eval()
    independent = _forward_with_prefix_as_past(peft_model, make_model(arch, head), inputs)
    torch.testing.assert_close(ours, independent, atol=1e-5, rtol=1e-5)
    theirs, broken_forward = checked_peft_output(peft_model, inputs, independent=independent, atol=1e-5)
    again = make_model(arch, head)
    adapters.init(again)
    again.load_adapter(str(tmp_path), load_as="q", set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, ours, atol=1e-6, rtol=1e-6)
    if broken_forward:
        pytest.skip(broken_forward)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    if head != "clm":
        return
    prompt = dict(input_ids=inputs["input_ids"][:1, :6])
    tokens, steps = _generate(model, prompt)
    torch.testing.assert_close(steps, _steps_with_prefix_as_past(peft_model, make_model(arch, head), prompt, tokens, 6), atol=1e-5, rtol=1e-5)
    peft_tokens, peft_steps = _generate(peft_model, prompt)
    broken = reference_disagreement(peft_steps, _steps_with_prefix_as_past(peft_model, make_model(arch, head), prompt, peft_tokens, 6), "PeftModel.generate with a prefix")
    if broken:
        pytest.skip(broken)
    assert torch.equal(peft_tokens, tokens)
    torch.testing.assert_close(peft_steps, steps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "config,message",
    [
        (PrefixTuningConfig(prefix_length=3, shift_positions=True, encoder_prefix=False), None),  # refused at add_adapter
        (PrefixTuningConfig(prefix_length=3, encoder_prefix=False, cross_prefix=False), "shift_positions=False"),
        (PrefixTuningConfig(prefix_length=3), "prefixes in the encoder or in cross-attention"),
        (PrefixTuningConfig(prefix_length=3, use_gating=True, **SEQ2SEQ), "it is gated"),
        (PrefixTuningConfig(prefix_length=3, leave_out=[2], **SEQ2SEQ), r"leaves out layers \[2\]"),
    ],
    ids=["shift-with-encoder-prefix", "unshifted", "encoder-and-cross", "gated", "leave-out"],
)
def test_prefixes_peft_cannot_express_are_refused(tmp_path, config, message):
    model = _model("t5")
    adapters.init(model)
    if message is None:
        with pytest.raises(ValueError, match="only the decoder's self-attention carries it"):
            model.add_adapter("p", config)
        assert "p" not in model.adapters_config.adapters
        return
    model.add_adapter("p", config, set_active=True)
    inputs = _inputs("t5")
    with torch.no_grad():
        before = model(**inputs).logits
    with pytest.raises(ValueError, match=message):
        model.save_adapter(str(tmp_path), "p", format="peft")
    assert not (tmp_path / "adapter_model.safetensors").exists()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, before, atol=0, rtol=0)


def test_peft_prefix_that_does_not_fit_is_refused(tmp_path):
    peft_model = _peft_prefix_model("t5")
    peft_model.save_pretrained(str(tmp_path))
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    model = _model("t5")
    adapters.init(model)
    for change, match in (
        ({"num_transformer_submodules": 1}, "num_transformer_submodules=1 on the encoder-decoder t5"),
        ({"token_dim": 32}, "this model's attention has 4 of size 6"),
        ({"num_layers": 1}, "prompt_embeddings has shape"),
    ):
        (tmp_path / "adapter_config.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(AdapterLoadError, match=match):
            model.load_adapter(str(tmp_path))
        assert not model.adapters_config.adapters


def test_shifted_prefixes_of_different_lengths_in_batch_split():
    """Each row group of a BatchSplit gets its own prefix and its own decoder position offset
    (BART's learned positions), as the same rows with that adapter alone."""
    model = _model("bart")
    adapters.init(model)
    model.add_adapter("a", PrefixTuningConfig(prefix_length=2, flat=True, **SEQ2SEQ))
    model.add_adapter("b", PrefixTuningConfig(prefix_length=5, flat=True, **SEQ2SEQ))
    inputs = _inputs("bart")
    with torch.no_grad():
        model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 1]))
        split = model(**inputs).logits
        model.set_active_adapters("a")
        alone_a = model(**inputs).logits
        model.set_active_adapters("b")
        alone_b = model(**inputs).logits
    torch.testing.assert_close(split[:1], alone_a[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split[1:], alone_b[1:], atol=1e-5, rtol=1e-5)
