"""Prompt tuning: the soft prompt joined to the embedded input (the embedding module's output on
the BERT family, the input embeddings elsewhere), on encoders and decoders (Llama and GPT-2
included), with the attention mask, labels and generate() handled."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ARCHS,
    assert_generate_is_greedy_decoding,
    DECODERS,
    ENCODER_DECODERS,
    NO_PROMPT,
    left_padded_prompt,
    VISION,
    make_inputs,
    make_model,
    patched,
    perturb_adapter,
    run,
)

from adapters import PromptTuningConfig, Stack
from adapters.compat import returned_cache

CONFIG = PromptTuningConfig(prompt_length=3)


def _with_prompt(arch, head="base", config=CONFIG):
    model = patched(arch, head)
    model.add_adapter("t", config=config, set_active=True)
    perturb_adapter(model, "t", scale=0.3, seed=1)
    return model


ENCODERS = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert", "xmod", "bert-generation", "deberta-v2"}  # embedding module with positions and a norm


def _definition(arch, head, prompt, inputs, at=0):
    """The unmodified model with ``S`` joined at position ``at`` and the mask extended by ones:
    to the embedding module's output on the BERT family (AdapterHub), to the input embeddings
    elsewhere (PEFT)."""
    model = make_model(arch, head)
    batch = next(iter(inputs.values())).shape[0]

    def join(hidden):
        return torch.cat([hidden[:, :at], prompt.unsqueeze(0).expand(batch, -1, -1), hidden[:, at:]], dim=1)

    if arch in VISION:  # ViT: joined to the [CLS] + patch embeddings with their positions (AdapterHub)
        model.base_model.embeddings.register_forward_hook(lambda module, args, output: join(output))
        with torch.no_grad():
            out = model(**inputs)
        return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    mask = inputs["attention_mask"]
    mask = torch.cat([mask[:, :at], torch.ones(batch, prompt.shape[0], dtype=mask.dtype), mask[:, at:]], dim=1)
    with torch.no_grad():
        if arch in ENCODERS:
            hook = model.base_model.embeddings.register_forward_hook(lambda module, args, output: join(output))
            if arch == "deberta-v2":  # its embeddings multiply their output by the mask they get: the text's own
                model.base_model.embeddings.register_forward_pre_hook(
                    lambda module, args, kwargs: (args, {**kwargs, "mask": inputs["attention_mask"]}), with_kwargs=True)
            out = model(input_ids=inputs["input_ids"], attention_mask=mask)
            hook.remove()
        else:  # encoder-decoders: the prompt joins the encoder input, the decoder reads its own tokens
            extra = {"decoder_input_ids": inputs["decoder_input_ids"]} if arch in ENCODER_DECODERS else {}
            out = model(inputs_embeds=join(model.get_input_embeddings()(inputs["input_ids"])), attention_mask=mask, **extra)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in NO_PROMPT])
def test_prompt_joins_the_embedded_input(arch):
    head = "clm" if arch in DECODERS else "base"
    model = _with_prompt(arch, head)
    inputs = make_inputs(arch)
    out = run(model, inputs)
    if arch in VISION:
        assert out.shape[1] == run(make_model(arch, head), inputs).shape[1] + 3
    else:
        assert out.shape[1] == inputs["input_ids"].shape[1] + (0 if arch in ENCODER_DECODERS else 3)
    prompt = model.base_model.prompt_tuning.prompt_tunings["t"].prompt_embedding.weight.detach()
    torch.testing.assert_close(out, _definition(arch, head, prompt, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_prefix_after_bos_keeps_the_first_token_first(arch):
    model = _with_prompt(arch, "base", PromptTuningConfig(prompt_length=2, combine="prefix_after_bos"))
    inputs = make_inputs(arch)
    prompt = model.base_model.prompt_tuning.prompt_tunings["t"].prompt_embedding.weight.detach()
    torch.testing.assert_close(run(model, inputs), _definition(arch, "base", prompt, inputs, at=1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_a_right_padded_row_equals_the_row_alone(arch):
    model = _with_prompt(arch)
    inputs = make_inputs(arch)  # row 1 ends in 3 padding tokens
    batched = run(model, inputs)
    alone = run(model, {"input_ids": inputs["input_ids"][1:, :-3], "attention_mask": inputs["attention_mask"][1:, :-3]})
    torch.testing.assert_close(batched[1:, :-3], alone, atol=1e-5, rtol=0)


def test_stacked_prompts_concatenate():
    model = _with_prompt("llama")
    model.add_adapter("u", config=PromptTuningConfig(prompt_length=2))
    perturb_adapter(model, "u", scale=0.3, seed=2)
    pool = model.base_model.prompt_tuning.prompt_tunings
    prompt = torch.cat([pool["t"].prompt_embedding.weight, pool["u"].prompt_embedding.weight]).detach()
    inputs = make_inputs("llama")
    torch.testing.assert_close(run(model, inputs, Stack("t", "u")), _definition("llama", "base", prompt, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", [a for a in DECODERS if a not in NO_PROMPT])
def test_generate_with_and_without_cache_agree(arch):
    """Cached generate() == uncached generate() == greedy decoding over full forwards, on a batch
    with a left-padded row; the cache holds prompt + input + generated tokens."""
    model = _with_prompt(arch, "clm")
    ids, mask = left_padded_prompt()
    inputs = dict(input_ids=ids, attention_mask=mask)
    sequences = assert_generate_is_greedy_decoding(model, inputs, steps=5, pad_token_id=0)
    assert sequences.shape == (2, ids.shape[1] + 5)
    out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    assert returned_cache(out).get_seq_length() == 3 + ids.shape[1] + 5 - 1


def test_labels_get_ignored_prompt_positions_and_training_reaches_the_prompt():
    model = _with_prompt("gpt2", "clm")
    model.train_adapter("t")
    inputs = make_inputs("gpt2")
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    weight = model.base_model.prompt_tuning.prompt_tunings["t"].prompt_embedding.weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert model.get_input_embeddings().weight.grad is None


def test_from_string_initialises_with_token_embeddings(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(99)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="w0").save_pretrained(str(tmp_path))
    model = patched("llama")
    config = PromptTuningConfig(prompt_length=5, prompt_init="from_string", prompt_init_text="w7 w9",
                                tokenizer_name_or_path=str(tmp_path))
    model.add_adapter("s", config=config)
    weight = model.base_model.prompt_tuning.prompt_tunings["s"].prompt_embedding.weight
    table = model.get_input_embeddings().weight
    torch.testing.assert_close(weight, table[[7, 9, 7, 9, 7]])


def test_bad_prompt_configs_are_refused_and_leave_the_model_unchanged():
    with pytest.raises(ValueError, match="combine"):
        PromptTuningConfig(combine="middle")
    with pytest.raises(ValueError, match="prompt_init_text"):
        PromptTuningConfig(prompt_init="from_string")
    model = patched("bert")
    config = PromptTuningConfig(prompt_init="from_string", prompt_init_text="hello", tokenizer_name_or_path="/nonexistent")
    with pytest.raises(ValueError, match="tokenizer"):
        model.add_adapter("s", config=config)
    assert "s" not in model.adapters_config.adapters


def test_prompt_round_trips_through_a_checkpoint(tmp_path):
    model = _with_prompt("llama", "clm")
    inputs = make_inputs("llama")
    expected = run(model, inputs)
    model.save_adapter(str(tmp_path / "t"), "t")
    fresh = patched("llama", "clm")
    fresh.load_adapter(str(tmp_path / "t"), set_active=True)
    torch.testing.assert_close(run(fresh, inputs), expected, atol=0, rtol=0)
