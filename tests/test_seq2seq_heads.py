"""Encoder-decoder AdapterModel classes (T5, mT5, BART, mBART, Whisper): the seq2seq LM head against
transformers' own LM heads (logits, loss, generated tokens), classification and QA heads on the
decoder against their definitions, static head conversion, generate (cache, Parallel), checkpoints
and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import CONFIGS, ENCODER_DECODERS, make_inputs, make_model, patched, perturb_adapter
from transformers import GenerationMixin

import adapters
from adapters import AdapterSetup, AutoAdapterModel, MultiHeadOutput, Parallel
from adapters.heads.adapter_model import STATIC_HEAD_CONVERSIONS

# plain greedy decoding; min_new_tokens keeps EOS out, so every row runs all steps
GREEDY = dict(do_sample=False, forced_eos_token_id=None, max_new_tokens=4, min_new_tokens=4)


def adapter_model(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoAdapterModel.from_config(CONFIGS[arch]()).eval()


def encoder_inputs(arch: str, batch: int = 2) -> dict:
    return {k: v for k, v in make_inputs(arch, batch=batch).items() if k != "decoder_input_ids"}


def labels_for(arch: str) -> torch.Tensor:
    labels = make_inputs(arch)["decoder_input_ids"].clone()
    labels[1, -3:] = -100  # ignored positions
    return labels


def static_model(class_name: str, arch: str, **config_changes):
    """A transformers head model with non-zero biases (a dropped one shows)."""
    torch.manual_seed(0)
    config = CONFIGS[arch]()
    for key, value in config_changes.items():
        setattr(config, key, value)
    model = getattr(transformers, class_name)(config).eval()
    torch.manual_seed(7)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                torch.nn.init.normal_(module.bias)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.normal_()
    return model


# -- the seq2seq LM head is the model's own LM head ------------------------------------------------------
@pytest.mark.parametrize("arch", [a for a in ENCODER_DECODERS if a != "encoder-decoder"])  # no AdapterModel class
def test_seq2seq_lm_head_is_the_models_own_lm_head_with_its_loss(arch):
    static = make_model(arch, "seq2seq")
    model = adapters.convert_to_adapter_model(static)
    model.add_seq2seq_lm_head("lm")
    head = model.heads["lm"]
    assert head[0].weight is model.get_input_embeddings().weight  # tied: one shared parameter
    inputs, labels = encoder_inputs(arch), labels_for(arch)
    with torch.no_grad():
        expected = static(**inputs, labels=labels)
        out = model(**inputs, labels=labels)  # decoder_input_ids: the labels shifted right
        decoder_states = model.base_model(
            **inputs, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels)
        ).last_hidden_state
    torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, expected.loss, rtol=0, atol=1e-5)
    # by definition: T5 (v1.0) scales the decoder output by d^-1/2 before its tied embedding, the others do not
    scale = CONFIGS[arch]().d_model ** -0.5 if arch == "t5" else 1.0
    logits = (decoder_states * scale) @ model.get_input_embeddings().weight.T
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=1e-5)
    keep = labels != -100
    torch.testing.assert_close(out.loss, F.cross_entropy(logits[keep], labels[keep]), rtol=0, atol=1e-5)
    assert head.config == {
        "head_type": "seq2seq_lm", "vocab_size": 99, "layers": 1, "activation_function": None, "layer_norm": False,
        "bias": False, "shift_labels": False, "label2id": None,
    }  # AdapterHub's keys


def test_decoder_inputs_are_shifted_by_each_architectures_own_rule():
    labels = torch.tensor([[5, 6, 7, -100], [8, 9, -100, -100]])
    for arch, class_name in (("t5", "T5ForConditionalGeneration"), ("bart", "BartForConditionalGeneration"),
                             ("mbart", "MBartForConditionalGeneration")):
        static = static_model(class_name, arch)
        model = adapters.convert_to_adapter_model(static)
        assert torch.equal(model.prepare_decoder_input_ids_from_labels(labels), static.prepare_decoder_input_ids_from_labels(labels))
    # mBART wraps the last non-pad token (the language code) to the front; T5 starts with the pad token
    assert model.prepare_decoder_input_ids_from_labels(torch.tensor([[5, 6, 7]])).tolist() == [[7, 5, 6]]
    t5 = adapter_model("t5")
    assert t5.prepare_decoder_input_ids_from_labels(torch.tensor([[5, -100, 7]])).tolist() == [[0, 5, 0]]


# -- static head conversion ----------------------------------------------------------------------------
SEQ2SEQ_CONVERSIONS = [
    (name, arch)
    for arch, prefix in (("t5", "T5"), ("mt5", "MT5"), ("bart", "Bart"), ("mbart", "MBart"), ("whisper", "Whisper"))
    for name in STATIC_HEAD_CONVERSIONS
    if name.startswith(prefix + "For")
]


def test_every_encoder_decoder_head_class_of_transformers_converts():
    assert sorted(name for name, _ in SEQ2SEQ_CONVERSIONS) == sorted(
        f"{p}For{kind}" for p in ("T5", "MT5", "Bart", "MBart") for kind in ("ConditionalGeneration", "SequenceClassification", "QuestionAnswering")
    ) + ["WhisperForConditionalGeneration"]


@pytest.mark.parametrize("class_name,arch", SEQ2SEQ_CONVERSIONS)
def test_transformers_seq2seq_head_models_convert_with_the_same_outputs(class_name, arch, tmp_path):
    static = static_model(class_name, arch, **({"num_labels": 3} if "Sequence" in class_name else {}))
    static.save_pretrained(tmp_path)
    loaded = AutoAdapterModel.from_pretrained(tmp_path).eval()
    converted = adapters.convert_to_adapter_model(static)
    assert type(loaded).__name__ == type(converted).__name__ == f"{class_name.split('For')[0]}AdapterModel"
    assert loaded.active_head == converted.active_head == "default"
    inputs = make_inputs(arch)
    if "ConditionalGeneration" not in class_name:
        inputs.pop("decoder_input_ids")  # the classifiers decode input_ids shifted right
    with torch.no_grad():
        expected = static(**inputs)
        outputs = [loaded(**inputs), converted(**inputs)]
    fields = ("start_logits", "end_logits") if "QuestionAnswering" in class_name else ("logits",)
    for out in outputs:
        for field in fields:
            assert torch.equal(getattr(out, field), getattr(expected, field)), field
    if "ConditionalGeneration" in class_name and arch in ("bart", "mbart"):
        assert torch.equal(loaded.heads["default"][0].bias, static.final_logits_bias[0])


def test_conversion_keeps_adapters_added_to_a_t5_lm_model_that_holds_its_stacks_itself():
    static = patched("t5", "seq2seq")
    static.add_adapter("a", config="seq_bn")
    perturb_adapter(static, "a")
    static.set_active_adapters("a")
    inputs = make_inputs("t5")
    with torch.no_grad():
        expected = static(**inputs).logits
    model = adapters.convert_to_adapter_model(static)
    assert model.base_model.encoder is static.encoder and model.active_adapters == static.active_adapters
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, expected)
        # the encoder run alone (as generate runs it) opens the AdapterModel's context with the adapter
        encoded = model.get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        with AdapterSetup(None):
            plain = model.get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert not torch.equal(encoded.last_hidden_state, plain.last_hidden_state)


# -- classification and QA heads on the decoder ------------------------------------------------------
@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_classification_reads_the_decoder_state_at_the_last_eos(arch):
    model = adapter_model(arch)
    model.add_classification_head("cls", num_labels=3)
    inputs = encoder_inputs(arch)
    eos = model.config.eos_token_id
    inputs["input_ids"][:, 3] = eos  # two <eos> per row: the last one counts
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        out = model(**inputs, labels=labels)
        # without decoder inputs the decoder reads input_ids shifted right
        states = model.base_model(
            **inputs, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(inputs["input_ids"])
        ).last_hidden_state
    last = [max(i for i in range(inputs["input_ids"].shape[1]) if inputs["input_ids"][r, i] == eos) for r in range(2)]
    x = states[torch.arange(2), torch.tensor(last)]
    head = model.heads["cls"]
    expected = F.linear(torch.tanh(F.linear(x, head[1].weight, head[1].bias)), head[4].weight, head[4].bias)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected, labels), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["mt5", "mbart"])
def test_qa_head_scores_every_decoder_position(arch):
    model = adapter_model(arch)
    model.add_qa_head("qa")
    inputs = make_inputs(arch)
    start, end = torch.tensor([1, 3]), torch.tensor([4, 40])  # 40 lies outside the sequence: ignored
    with torch.no_grad():
        out = model(**inputs, start_positions=start, end_positions=end)
        states = model.base_model(**inputs).last_hidden_state
    head = model.heads["qa"]
    logits = F.linear(states, head[1].weight, head[1].bias)
    torch.testing.assert_close(out.start_logits, logits[..., 0], rtol=0, atol=1e-6)
    length = logits.shape[1]
    expected = (F.cross_entropy(logits[..., 0], start) + F.cross_entropy(logits[..., 1], end.clamp(0, length), ignore_index=length)) / 2
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-6)


# -- generate ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["t5", "bart", "whisper"])
def test_generate_equals_transformers_greedy_decoding_with_and_without_cache(arch):
    static = patched(arch, "seq2seq")
    static.add_adapter("a", config="lora", set_active=True)
    perturb_adapter(static, "a", scale=3.0)  # large enough that the tiny model does not repeat one token
    inputs = encoder_inputs(arch)
    # transformers' own LM head and its plain greedy search (Whisper's generate adds its own token logic)
    expected = GenerationMixin.generate(static, **inputs, **GREEDY)
    model = adapters.convert_to_adapter_model(static)
    cached = model.generate(**inputs, **GREEDY)
    assert torch.equal(cached, expected) and torch.equal(model.generate(**inputs, use_cache=False, **GREEDY), expected)
    assert len(set(expected[:, 1:].flatten().tolist())) > 1  # not a degenerate repetition of one token
    # greedy decoding step by step, recomputing the whole decoder sequence each time
    sequence = expected[:, :1]
    with torch.no_grad():
        for _ in range(GREEDY["max_new_tokens"]):
            next_token = model(**inputs, decoder_input_ids=sequence).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_token], dim=1)
    assert torch.equal(sequence, expected)


@pytest.mark.parametrize("arch", ["t5", "bart", "whisper"])
def test_parallel_generate_continues_each_branch_with_its_own_adapter_and_head(arch):
    model = adapter_model(arch)
    for seed, name in enumerate("ab"):
        model.add_adapter(name, config="seq_bn")
        perturb_adapter(model, name, scale=1.0, seed=seed)
        model.add_seq2seq_lm_head(name, bias=True)
        with torch.no_grad():
            model.heads[name][0].bias.normal_(generator=torch.Generator().manual_seed(seed))
    inputs = encoder_inputs(arch)
    model.set_active_adapters(Parallel("a", "b"))
    assert model.active_head == ["a", "b"]
    both = model.generate(**inputs, **GREEDY)
    alone = []
    for name in "ab":
        with AdapterSetup(name, head_setup=name):
            alone.append(model.generate(**inputs, **GREEDY))
    assert torch.equal(both, torch.cat(alone)) and not torch.equal(alone[0], alone[1])
    # a forward pass with labels: one output per branch, the loss their sum
    labels = labels_for(arch)
    with torch.no_grad():
        out = model(**inputs, labels=labels)
        singles = []
        for name in "ab":
            with AdapterSetup(name, head_setup=name):
                singles.append(model(**inputs, labels=labels))
    assert isinstance(out, MultiHeadOutput) and len(out) == 2
    for branch, single in zip(out, singles):
        torch.testing.assert_close(branch.logits, single.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, singles[0].loss + singles[1].loss, rtol=0, atol=1e-5)


# -- checkpoints -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["t5", "mbart"])
def test_adapter_model_round_trips_with_heads_and_adapters(arch, tmp_path):
    model = adapter_model(arch)
    model.add_classification_head("cls", num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    model.add_seq2seq_lm_head("lm", bias=True)
    model.add_qa_head("qa")
    with torch.no_grad():
        model.heads["lm"][0].bias.normal_()
    model.save_pretrained(tmp_path)
    loaded = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model) and list(loaded.heads) == ["cls", "lm", "qa"] and loaded.active_head == "qa"
    assert loaded.heads["lm"][0].weight is loaded.get_input_embeddings().weight  # re-tied
    assert loaded.get_labels("cls") == ["a", "b", "c"]
    inputs = make_inputs(arch)
    with torch.no_grad():
        for name, field in (("cls", "logits"), ("qa", "start_logits"), ("lm", "logits")):
            assert torch.equal(getattr(model(**inputs, head=name), field), getattr(loaded(**inputs, head=name), field)), name
    loaded.add_adapter("task", config="seq_bn")  # patched at construction
    assert "task" in loaded.adapters_config.adapters


def test_seq2seq_heads_save_and_load_alone_and_with_their_adapter(tmp_path):
    model = adapter_model("bart")
    model.add_adapter("sum", config="lora")
    perturb_adapter(model, "sum")
    model.add_seq2seq_lm_head("sum", bias=True, layers=2, activation_function="gelu")
    with torch.no_grad():
        for param in model.heads["sum"].parameters():
            if param is not model.get_input_embeddings().weight:
                param.normal_()
    model.set_active_adapters("sum")
    inputs = make_inputs("bart")
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_adapter(str(tmp_path / "with_head"), "sum")
    model.save_head(str(tmp_path / "head"), "sum")

    other = adapter_model("bart")
    assert other.load_adapter(str(tmp_path / "with_head"), set_active=True) == "sum"
    assert other.active_head == "sum"
    with torch.no_grad():
        assert torch.equal(other(**inputs).logits, expected)
    again = adapter_model("bart")
    again.load_head(str(tmp_path / "head"), load_as="lm")
    assert again.heads["lm"].get_output_embeddings().weight is again.get_input_embeddings().weight  # tied, not from the file
    for key, value in model.heads["sum"].state_dict().items():
        assert torch.equal(again.heads["lm"].state_dict()[key], value), key


# -- bad input -----------------------------------------------------------------------------------------------
def test_bad_seq2seq_requests_raise_clearly_and_leave_the_model_unchanged():
    bert = AutoAdapterModel.from_config(CONFIGS["bert"]())
    with pytest.raises(ValueError, match="does not support 'seq2seq_lm'"):
        bert.add_seq2seq_lm_head("lm")
    whisper = adapter_model("whisper")
    with pytest.raises(ValueError, match="does not support 'classification'"):
        whisper.add_classification_head("cls")
    with pytest.raises(ValueError, match="layers >= 1"):
        whisper.add_seq2seq_lm_head("lm", layers=0)
    assert not whisper.heads and not bert.heads

    model = adapter_model("bart")
    model.add_classification_head("cls")
    inputs = encoder_inputs("bart")
    inputs["input_ids"][0, 2] = model.config.eos_token_id  # row 0 has two <eos>, row 1 one
    with pytest.raises(ValueError, match="same number"):
        model(**inputs)
    inputs = make_inputs("bart")
    inputs["decoder_input_ids"] = inputs["decoder_input_ids"][:, :5]
    with pytest.raises(ValueError, match="leave decoder_input_ids out"):
        model(**inputs)
    with pytest.raises(ValueError, match="No flexible-head conversion for BartForCausalLM"):
        adapters.convert_to_adapter_model(transformers.BartForCausalLM(CONFIGS["bart"]()))
