"""Flexible heads and AdapterModel classes: head outputs against their definitions computed by
hand from the base model's hidden states, static head conversion against transformers' own head
models, checkpoints, head selection, Parallel, generate and bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    ARCH_HEADS, ARCHS, CONFIGS, DECODERS, ENCODERS, NO_ADAPTER_MODEL, main_output, make_inputs, make_model, perturb_adapter,
)

import adapters
from adapters import AdapterSetup, AutoAdapterModel, BatchSplit, MultiHeadOutput, Parallel, PredictionHead, Stack
from adapters.heads import ClassificationHead


def adapter_model(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoAdapterModel.from_config(CONFIGS[arch]()).eval()


def hidden(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.base_model(**inputs).last_hidden_state


def pooled(arch: str, model, inputs, states: torch.Tensor) -> torch.Tensor:
    """The sequence vector by definition: first token (encoders), last non-pad token (decoders)."""
    if arch in ENCODERS:
        return states[:, 0]
    ids, pad = inputs["input_ids"], model.config.pad_token_id
    last = torch.tensor([max(i for i in range(ids.shape[1]) if ids[r, i] != pad) for r in range(ids.shape[0])])
    return states[torch.arange(ids.shape[0]), last]


def state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- head outputs against their definitions ------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "distilbert", "llama", "gpt2"])
def test_classification_head_is_dense_tanh_out_proj_of_the_sequence_vector(arch):
    model = adapter_model(arch)
    model.add_classification_head("cls", num_labels=3)
    inputs = make_inputs(arch)
    inputs["input_ids"][1, -2:] = model.config.pad_token_id if arch in DECODERS else inputs["input_ids"][1, -2:]
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    head = model.heads["cls"]
    x = pooled(arch, model, inputs, hidden(model, inputs))
    expected = F.linear(torch.tanh(F.linear(x, head[1].weight, head[1].bias)), head[4].weight, head[4].bias)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected, labels), rtol=0, atol=1e-6)
    assert [type(m).__name__ for m in head] == ["Dropout", "Linear", "Tanh", "Dropout", "Linear"]


def test_multilabel_regression_and_pooler_classification():
    model = adapter_model("bert")
    inputs = make_inputs("bert")
    model.add_classification_head("multi", num_labels=4, multilabel=True, layers=1)
    targets = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]])
    with torch.no_grad():
        out = model(**inputs, labels=targets)
    x = hidden(model, inputs)[:, 0]
    logits = F.linear(x, model.heads["multi"][1].weight, model.heads["multi"][1].bias)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(logits, targets.float()), rtol=0, atol=1e-6)

    model.add_classification_head("reg", num_labels=1, layers=1, use_pooler=True)
    with torch.no_grad():
        out = model(**inputs, labels=torch.tensor([0.5, -1.0]))
        pooler = model.base_model(**inputs).pooler_output
    value = F.linear(pooler, model.heads["reg"][1].weight, model.heads["reg"][1].bias)
    torch.testing.assert_close(out.logits, value, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss, F.mse_loss(value.view(-1), torch.tensor([0.5, -1.0])), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["roberta", "qwen2"])
def test_tagging_head_per_token_with_padding_ignored(arch):
    model = adapter_model(arch)
    model.add_tagging_head("ner", num_labels=5)
    inputs = make_inputs(arch)
    labels = torch.randint(0, 5, inputs["input_ids"].shape, generator=torch.Generator().manual_seed(3))
    labels[0, 1] = -100
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    head = model.heads["ner"]
    logits = F.linear(hidden(model, inputs), head[1].weight, head[1].bias)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=1e-6)
    keep = (inputs["attention_mask"] == 1) & (labels != -100)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits[keep], labels[keep]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["xlm-roberta", "mistral"])
def test_qa_head_start_end_logits_and_loss(arch):
    model = adapter_model(arch)
    model.add_qa_head("squad")
    inputs = make_inputs(arch)
    start, end = torch.tensor([1, 3]), torch.tensor([4, 40])  # 40 lies outside the sequence: ignored
    with torch.no_grad():
        out = model(**inputs, start_positions=start, end_positions=end)
    head = model.heads["squad"]
    logits = F.linear(hidden(model, inputs), head[1].weight, head[1].bias)
    torch.testing.assert_close(out.start_logits, logits[..., 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.end_logits, logits[..., 1], rtol=0, atol=1e-6)
    length = logits.shape[1]
    expected = (
        F.cross_entropy(logits[..., 0], start) + F.cross_entropy(logits[..., 1], end.clamp(0, length), ignore_index=length)
    ) / 2
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-6)


def test_multiple_choice_head_scores_every_choice():
    model = adapter_model("bert")
    model.add_multiple_choice_head("mc", num_choices=3)
    flat = make_inputs("bert", batch=6)
    inputs = {k: v.view(2, 3, -1) for k, v in flat.items()}
    labels = torch.tensor([2, 1])
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    head = model.heads["mc"]
    x = hidden(model, flat)[:, 0]
    scores = F.linear(torch.tanh(F.linear(x, head[1].weight, head[1].bias)), head[4].weight, head[4].bias).view(2, 3)
    torch.testing.assert_close(out.logits, scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss, F.cross_entropy(scores, labels), rtol=0, atol=1e-6)


def test_causal_lm_head_is_the_tied_embedding_projection_and_shifts_labels():
    model = adapter_model("gpt2")
    model.add_causal_lm_head("lm", layers=1, bias=False)
    head = model.heads["lm"]
    assert head[0].weight is model.get_input_embeddings().weight  # one shared parameter
    inputs = make_inputs("gpt2")
    with torch.no_grad():
        out = model(**inputs, labels=inputs["input_ids"])
    logits = hidden(model, inputs) @ model.get_input_embeddings().weight.T
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=1e-5)
    shifted = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), inputs["input_ids"][:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, shifted, rtol=0, atol=1e-5)


def test_masked_lm_head_is_dense_gelu_layernorm_decoder():
    model = adapter_model("bert")
    model.add_masked_lm_head("mlm")
    head = model.heads["mlm"]
    assert head[3].weight is model.get_input_embeddings().weight
    inputs = make_inputs("bert")
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2] = inputs["input_ids"][:, 2]
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    h = F.gelu(F.linear(hidden(model, inputs), head[0].weight, head[0].bias))
    h = F.layer_norm(h, h.shape[-1:], head[2].weight, head[2].bias, model.config.layer_norm_eps)
    logits = F.linear(h, model.get_input_embeddings().weight, head[3].bias)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits[:, 2], labels[:, 2]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("head_first", [True, False])
def test_invertible_inverse_runs_before_every_lm_heads_decoder(head_first):
    """MAD-X: an LM head's decoder reads A⁻¹ of its input, whether the head or the invertible
    adapter came first, and for a second LM head too."""
    model = adapter_model("bert")
    if head_first:
        model.add_masked_lm_head("mlm")
    model.add_adapter("lang", config="seq_bn_inv")
    if not head_first:
        model.add_masked_lm_head("mlm")
    model.add_masked_lm_head("mlm2")
    perturb_adapter(model, "lang")
    model.set_active_adapters("lang")
    block = model.base_model.invertible_adapters["lang"]
    inputs = make_inputs("bert")
    for name in ("mlm", "mlm2"):
        head = model.heads[name]
        with torch.no_grad():
            logits = model(**inputs, head=name).logits
            h = F.gelu(F.linear(hidden(model, inputs), head[0].weight, head[0].bias))
            h = F.layer_norm(h, h.shape[-1:], head[2].weight, head[2].bias, model.config.layer_norm_eps)
            expected = F.linear(block(h, rev=True), head[3].weight, head[3].bias)
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    decoder = model.heads["mlm2"][3]
    assert any(host is decoder for host in model._adapter_hosts)
    model.delete_head("mlm2")
    assert not any(host is decoder for host in model._adapter_hosts)


# -- AdapterModel classes and static head conversion -------------------------------------------------------
def _assert_same_numbers(actual, expected):
    """Equal up to float rounding: decoder heads score the pooled token only, transformers' score
    every token and then pool — GEMMs of another shape, which some CPUs (AVX512-FP16) round apart."""
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch,head", [(a, h) for a, h in ARCH_HEADS if a not in NO_ADAPTER_MODEL])
def test_checkpoints_of_transformers_models_load_with_the_same_outputs(arch, head, tmp_path):
    static = make_model(arch, head)
    torch.manual_seed(7)
    for module in static.modules():  # give zero-initialised biases values, so a dropped weight shows
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.normal_(module.bias)
    static.save_pretrained(tmp_path)
    model = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert type(model).__name__ == adapters.heads.adapter_model.ADAPTER_MODEL_TABLE[arch][0]
    inputs = make_inputs(arch)
    with torch.no_grad():
        expected = static(**inputs)
        out = model(**inputs)
    if head == "base":
        assert model.active_head is None and not model.heads
        assert torch.equal(main_output(out), main_output(expected))  # CLIPModel: both towers
    else:
        assert model.active_head == "default"
        _assert_same_numbers(out.logits, expected.logits)
    # the same conversion for a model in memory, sharing its base model (T5's LM and QA models hold the
    # encoder and decoder themselves: their modules move into a T5Model, the same parameters)
    converted = adapters.convert_to_adapter_model(static)
    assert converted.base_model is static.base_model or arch in ("t5", "mt5") and head == "seq2seq"
    static_parameters = {id(p) for p in static.parameters()}
    assert all(id(p) in static_parameters for p in converted.base_model.parameters())
    with torch.no_grad():
        again = converted(**inputs)
    _assert_same_numbers(again[0] if head == "base" else again.logits, expected[0] if head == "base" else expected.logits)


def test_adapter_model_checkpoints_round_trip_with_heads_and_adapters_work(tmp_path):
    model = adapter_model("llama")
    model.add_classification_head("cls", num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    model.add_causal_lm_head("lm", layers=1, bias=False)
    model.save_pretrained(tmp_path)
    loaded = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert list(loaded.heads) == ["cls", "lm"] and loaded.active_head == "lm"
    assert loaded.get_labels("cls") == ["a", "b", "c"]
    inputs = make_inputs("llama")
    for name in ("cls", "lm"):
        with torch.no_grad():
            assert torch.equal(model(**inputs, head=name).logits, loaded(**inputs, head=name).logits)
    loaded.add_adapter("task", config="seq_bn")  # patched at construction
    assert "task" in loaded.adapters_config.adapters


# -- head checkpoints -----------------------------------------------------------------------------------------
def test_heads_round_trip_bit_exactly_in_adapterhubs_layout(tmp_path):
    model = adapter_model("roberta")
    model.add_classification_head("cls", num_labels=3, id2label={0: "x", 1: "y", 2: "z"})
    model.add_qa_head("qa")
    model.save_head(str(tmp_path / "cls"), "cls")
    meta = json.loads((tmp_path / "cls" / "head_config.json").read_text())
    assert meta["name"] == "cls" and meta["model_type"] == "roberta" and meta["hidden_size"] == 32
    assert meta["config"] == {
        "head_type": "classification", "num_labels": 3, "layers": 2, "activation_function": "tanh",
        "label2id": {"x": 0, "y": 1, "z": 2}, "use_pooler": False, "bias": True, "dropout_prob": None,
    }
    from safetensors.torch import load_file

    assert sorted(load_file(tmp_path / "cls" / "model_head.safetensors")) == [
        "heads.cls.1.bias", "heads.cls.1.weight", "heads.cls.4.bias", "heads.cls.4.weight"
    ]
    model.save_all_heads(str(tmp_path / "all"))
    assert sorted(os.listdir(tmp_path / "all")) == ["cls", "qa"]

    other = adapter_model("roberta", seed=0)
    assert other.load_head(str(tmp_path / "all" / "qa")) == "qa"
    assert other.load_head(str(tmp_path / "cls"), load_as="cls2") == "cls2"
    assert other.active_head == "cls2" and other.get_labels() == ["x", "y", "z"]
    for a, b in (("cls", "cls2"), ("qa", "qa")):
        for (_, p), (_, q) in zip(model.heads[a].named_parameters(), other.heads[b].named_parameters()):
            assert torch.equal(p, q)


def test_save_and_load_adapter_with_head(tmp_path):
    model = adapter_model("distilbert")
    model.add_adapter("sst", config="seq_bn")
    model.add_classification_head("sst", num_labels=2)
    perturb_adapter(model, "sst")
    model.save_adapter(str(tmp_path), "sst")  # with_head=True by default
    assert {"head_config.json", "model_head.safetensors", "adapter_config.json"} <= set(os.listdir(tmp_path))
    inputs = make_inputs("distilbert")
    with torch.no_grad(), AdapterSetup("sst"):
        expected = model(**inputs).logits

    other = adapter_model("distilbert")
    name = other.load_adapter(str(tmp_path), load_as="mine", set_active=True)
    assert name == "mine" and "mine" in other.heads and other.active_head == "mine"
    with torch.no_grad():
        assert torch.equal(other(**inputs).logits, expected)
    plain = adapter_model("distilbert")
    plain.load_adapter(str(tmp_path), with_head=False)
    assert not plain.heads
    model.save_adapter(str(tmp_path / "nohead"), "sst", with_head=False)
    assert "head_config.json" not in os.listdir(tmp_path / "nohead")


def test_tied_lm_head_round_trips_and_stays_tied(tmp_path):
    model = adapter_model("bert")
    model.add_masked_lm_head("mlm")
    model.save_head(str(tmp_path), "mlm")
    other = adapter_model("bert")
    other.load_head(str(tmp_path))
    assert other.heads["mlm"][3].weight is other.get_input_embeddings().weight
    for key, value in model.heads["mlm"].state_dict().items():
        assert torch.equal(value, other.heads["mlm"].state_dict()[key]), key


class MeanPoolHead(PredictionHead):
    """A custom head: mean over the tokens, one linear layer."""

    def __init__(self, model, head_name, num_labels=2):
        super().__init__(head_name, {"num_labels": num_labels})
        self.add_module("0", torch.nn.Linear(model.config.hidden_size, num_labels))

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=self[0](outputs[0].mean(1)))


def test_custom_heads_register_run_and_round_trip(tmp_path):
    adapters.register_custom_head("mean_pool", MeanPoolHead)
    model = adapter_model("bert")
    model.add_custom_head("mean_pool", "pool", num_labels=3)
    inputs = make_inputs("bert")
    with torch.no_grad():
        out = model(**inputs)
    head = model.heads["pool"]
    torch.testing.assert_close(out.logits, head[0](hidden(model, inputs).mean(1)), rtol=0, atol=1e-6)
    model.save_head(str(tmp_path), "pool")
    other = adapter_model("bert")
    other.load_head(str(tmp_path))
    assert other.heads["pool"].config == {"head_type": "mean_pool", "num_labels": 3}
    assert torch.equal(other.heads["pool"][0].weight, head[0].weight)
    with pytest.raises(ValueError, match="built-in head type"):
        adapters.register_custom_head("classification", MeanPoolHead)
    # a built-in class registered under a new name leaves the built-in type built in
    adapters.register_custom_head("my_classifier", ClassificationHead)
    with pytest.raises(ValueError, match="built-in head type"):
        adapters.register_custom_head("classification", MeanPoolHead)


# -- which head runs -----------------------------------------------------------------------------------------
def test_heads_follow_the_active_adapters_and_the_call():
    model = adapter_model("bert")
    for name in ("lang", "a", "b"):
        model.add_adapter(name, config="seq_bn")
    model.add_classification_head("a", num_labels=2)
    model.add_classification_head("b", num_labels=4)
    model.add_tagging_head("tag", num_labels=3)
    assert model.active_head == "tag"  # the last added
    model.train_adapter("a")
    assert model.active_head == "a"
    model.set_active_adapters(Stack("lang", "b"))
    assert model.active_head == "b"
    model.set_active_adapters("lang")  # no head of that name: unchanged
    assert model.active_head == "b"
    inputs = make_inputs("bert")
    model.eval()
    with torch.no_grad():
        assert model(**inputs).logits.shape == (2, 4)
        assert model(**inputs, head="tag").logits.shape == (2, 12, 3)
        with AdapterSetup("a", head_setup="a"):
            assert model(**inputs).logits.shape == (2, 2)
    model.delete_head("b")
    assert model.active_head is None and "b" not in model.config.prediction_heads
    with torch.no_grad():
        assert model(**inputs).last_hidden_state.shape == (2, 12, 32)  # no head: base output


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_parallel_gives_one_output_per_branch_equal_to_each_branch_alone(arch):
    model = adapter_model(arch)
    for name, labels in (("a", 2), ("b", 3)):
        model.add_adapter(name, config="seq_bn")
        perturb_adapter(model, name, seed=len(name) + labels)
        model.add_classification_head(name, num_labels=labels)
    inputs = make_inputs(arch)
    labels = torch.tensor([1, 0])
    model.set_active_adapters(Parallel("a", "b"))
    assert model.active_head == ["a", "b"]
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    assert isinstance(out, MultiHeadOutput) and len(out) == 2
    singles = []
    for name in ("a", "b"):
        with torch.no_grad(), AdapterSetup(name, head_setup=name):
            singles.append(model(**inputs, labels=labels))
    for branch, single in zip(out, singles):
        torch.testing.assert_close(branch.logits, single.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, singles[0].loss + singles[1].loss, rtol=0, atol=1e-5)


def test_batch_split_runs_each_head_on_its_rows():
    model = adapter_model("bert")
    for name, labels in (("a", 2), ("b", 3)):
        model.add_adapter(name, config="seq_bn")
        perturb_adapter(model, name)
        model.add_classification_head(name, num_labels=labels)
    inputs = make_inputs("bert", batch=3)
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
    with torch.no_grad():
        out = model(**inputs)
        with AdapterSetup("b", head_setup="b"):
            rows_b = model(**{k: v[1:] for k, v in inputs.items()}).logits
    assert out[0].logits.shape == (1, 2)
    torch.testing.assert_close(out[1].logits, rows_b, rtol=0, atol=1e-5)


# -- generate ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_with_a_causal_lm_head_is_greedy_decoding(arch):
    model = adapter_model(arch)
    model.add_adapter("task", config="seq_bn")
    perturb_adapter(model, "task")
    model.add_causal_lm_head("task", layers=1, bias=False)
    model.set_active_adapters("task")
    ids = make_inputs(arch, batch=1)["input_ids"]
    generated = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    uncached = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0, use_cache=False)
    sequence = ids
    with torch.no_grad():
        for _ in range(5):  # greedy decoding step by step, recomputing the whole sequence
            next_token = model(input_ids=sequence).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_token], dim=1)
    assert torch.equal(generated, sequence) and torch.equal(uncached, sequence)


# -- bad input -----------------------------------------------------------------------------------------------
def test_bad_head_requests_raise_clearly_and_leave_the_model_unchanged(tmp_path):
    model = adapter_model("distilbert")
    model.add_classification_head("cls")
    before, heads_before = state(model), dict(model.config.prediction_heads)
    inputs = make_inputs("distilbert")
    with pytest.raises(ValueError, match="exists already"):
        model.add_classification_head("cls", num_labels=5)
    with pytest.raises(ValueError, match="no pooler"):
        model.add_classification_head("p", use_pooler=True)
    with pytest.raises(ValueError, match="layers >= 1"):
        model.add_classification_head("z", layers=0)
    with pytest.raises(ValueError, match="activation_function"):
        model.add_tagging_head("t", activation_function="nope")
    with pytest.raises(ValueError, match="No head named 'missing'"):
        model(**inputs, head="missing")
    with pytest.raises(ValueError, match="No head named 'missing'"):
        model.active_head = "missing"
    with pytest.raises(ValueError, match="No head named 'missing'"):
        model.delete_head("missing")
    with pytest.raises(ValueError, match="Unknown head type 'nonsense'"):
        model.add_custom_head("nonsense", "x")
    llama = adapter_model("llama")
    with pytest.raises(ValueError, match="does not support 'multiple_choice'"):
        llama.add_multiple_choice_head("mc")
    with pytest.raises(ValueError, match="does not support 'masked_lm'"):
        llama.add_masked_lm_head("mlm")
    assert not llama.heads
    # a head saved for another hidden size does not fit
    bert = adapter_model("bert")
    bert.add_classification_head("cls")
    bert.save_head(str(tmp_path), "cls")
    meta = json.loads((tmp_path / "head_config.json").read_text())
    meta["hidden_size"] = 64
    (tmp_path / "head_config.json").write_text(json.dumps(meta))
    with pytest.raises(adapters.AdapterLoadError, match="hidden size 64"):
        model.load_head(str(tmp_path), load_as="other")
    meta["hidden_size"] = 32
    (tmp_path / "head_config.json").write_text(json.dumps(meta))
    with pytest.raises(adapters.AdapterLoadError, match="exists already"):
        model.load_head(str(tmp_path), overwrite_ok=False)
    assert same_state(state(model), before) and model.config.prediction_heads == heads_before
    assert model.active_head == "cls"


def test_load_head_replaces_a_head_of_the_same_name_as_adapterhub_does(tmp_path, caplog):
    """AdapterHub's ``load_head`` replaces an existing head of the loaded name (with a warning);
    so does this library's, unless ``overwrite_ok=False``."""
    import logging

    source = adapter_model("bert")
    source.add_classification_head("cls", num_labels=3)
    with torch.no_grad():
        for parameter in source.heads["cls"].parameters():
            parameter.add_(torch.randn_like(parameter))
    source.save_head(str(tmp_path), "cls")
    model = adapter_model("bert")
    model.add_classification_head("cls", num_labels=2)
    logger = logging.getLogger("adapters")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="adapters"):
            assert model.load_head(str(tmp_path)) == "cls"
    finally:
        logger.removeHandler(caplog.handler)
    assert "Replacing the existing head 'cls'" in caplog.text
    assert list(model.heads) == ["cls"] and model.active_head == "cls"
    assert same_state(state(model.heads["cls"]), state(source.heads["cls"]))


def test_parallel_with_the_wrong_number_of_heads_is_refused():
    model = adapter_model("bert")
    for name in ("a", "b", "c"):
        model.add_adapter(name, config="seq_bn")
    model.add_classification_head("x")
    model.add_classification_head("y")
    model.set_active_adapters(Parallel("a", "b", "c"))
    model.active_head = ["x", "y"]
    with pytest.raises(ValueError, match="3 Parallel branches but 2 heads"):
        model(**make_inputs("bert"))


def test_every_architecture_has_an_adapter_model_class():
    for arch in ARCHS:
        if arch in NO_ADAPTER_MODEL:
            with pytest.raises(ValueError, match="No AdapterModel class for model type"):
                adapter_model(arch)
            continue
        model = adapter_model(arch)
        assert isinstance(model, adapters.ModelAdaptersMixin) and hasattr(model, "heads")
    assert isinstance(ClassificationHead, type)


# -- Gemma 2/3 and DeBERTa-v2 AdapterModels: the head classes the generic test does not reach -------------
def _static(arch: str, class_name: str, **config_changes):
    import transformers

    torch.manual_seed(0)
    config = CONFIGS[arch]()
    for key, value in config_changes.items():
        setattr(config, key, value)
    model = getattr(transformers, class_name)(config).eval()
    torch.manual_seed(7)
    for module in model.modules():  # non-zero biases, so a dropped one shows
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.normal_(module.bias)
    return model


@pytest.mark.parametrize(
    "arch, class_name, changes",
    [
        ("deberta-v2", "DebertaV2ForTokenClassification", {}),
        ("deberta-v2", "DebertaV2ForQuestionAnswering", {}),
        ("deberta-v2", "DebertaV2ForMaskedLM", {"legacy": False}),  # transform in lm_predictions, tied decoder
        ("gemma2", "Gemma2ForTokenClassification", {}),
        ("gemma3_text", "Gemma3ForCausalLM", {"final_logit_softcapping": 0.5}),
        ("gemma3_text", "Gemma3TextForSequenceClassification", {"num_labels": 3}),
    ],
)
def test_more_transformers_heads_convert_with_the_same_outputs(arch, class_name, changes, tmp_path):
    static = _static(arch, class_name, **changes)
    static.save_pretrained(tmp_path)
    model = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert model.active_head == "default"
    inputs = make_inputs(arch)
    with torch.no_grad():
        expected, out = static(**inputs), model(**inputs)
    for field in ("logits", "start_logits", "end_logits"):
        if getattr(expected, field, None) is not None:
            _assert_same_numbers(getattr(out, field), getattr(expected, field))


def test_deberta_multiple_choice_converts_with_the_same_outputs():
    static = _static("deberta-v2", "DebertaV2ForMultipleChoice")
    model = adapters.convert_to_adapter_model(static)
    inputs = {k: torch.stack([v, v.flip(0)], dim=1) for k, v in make_inputs("deberta-v2").items()}
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, static(**inputs).logits)


def test_causal_lm_head_soft_caps_like_gemma2():
    """logits = c · tanh(E h / c), with c = config.final_logit_softcapping unless the head says otherwise."""
    model = adapter_model("gemma2")
    model.config.final_logit_softcapping = 0.5  # small, so the cap shows on these logits
    model.add_causal_lm_head("capped", layers=1, bias=False)
    model.add_causal_lm_head("plain", layers=1, bias=False, logit_softcapping=0)
    assert model.heads["capped"].config["logit_softcapping"] == 0.5 and model.heads["plain"].config["logit_softcapping"] is None
    inputs = make_inputs("gemma2")
    states = hidden(model, inputs)
    raw = states @ model.get_input_embeddings().weight.T
    with torch.no_grad():
        capped, plain = model(**inputs, head="capped").logits, model(**inputs, head="plain").logits
    torch.testing.assert_close(plain, raw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(capped, 0.5 * torch.tanh(raw / 0.5), rtol=1e-5, atol=1e-5)
    assert capped.abs().max() <= 0.5
    with pytest.raises(ValueError, match="logit_softcapping"):
        model.add_causal_lm_head("bad", logit_softcapping=-1.0)
    assert "bad" not in model.heads


def test_adapter_setup_selects_the_heads_it_names_and_the_active_heads_labels_reach_the_config():
    """AdapterHub's rules: ``with AdapterSetup("a")`` runs head "a" (unless a head_setup is given),
    and activating one head puts its label names on ``model.config`` (what pipelines print)."""
    from adapters import AdapterSetup, AutoAdapterModel

    model = AutoAdapterModel.from_config(make_model("bert").config)
    model.add_adapter("a")
    model.add_classification_head("a", num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"} and model.config.label2id["pos"] == 2
    model.add_adapter("b")
    model.add_classification_head("b", num_labels=2)
    assert model.active_head == "b" and model.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    model.eval()
    inputs = make_inputs("bert")
    with torch.no_grad(), AdapterSetup("a"):
        assert model(**inputs).logits.shape[-1] == 3
    with torch.no_grad(), AdapterSetup("a", head_setup="b"):
        assert model(**inputs).logits.shape[-1] == 2
    with torch.no_grad():
        assert model(**inputs).logits.shape[-1] == 2  # outside the context: the active head
    model.active_head = "a"
    assert model.config.id2label[2] == "pos"


def test_parallel_with_heads_for_some_branches_only_is_refused():
    """AdapterHub refuses a Parallel whose branches do not each have a head; here one head for all
    branches stays possible when asked for (head=...), but heads for some branches and not others
    would silently run one branch's head on the others, and are refused naming the branches."""
    from adapters import AutoAdapterModel, CompositionError

    model = AutoAdapterModel.from_config(make_model("bert").config)
    for name in ("a", "b", "c"):
        model.add_adapter(name)
    model.add_classification_head("a", num_labels=3)
    model.add_classification_head("b", num_labels=2)
    model.eval()
    inputs = make_inputs("bert")
    model.set_active_adapters(Parallel("a", "b", "c"))
    with torch.no_grad():
        with pytest.raises(CompositionError, match=r"heads exist for \['a', 'b'\] but not for \['c'\]"):
            model(**inputs)
        assert [o.logits.shape[-1] for o in model(**inputs, head="b")] == [2, 2, 2]
        model.add_classification_head("c", num_labels=4)
        model.set_active_adapters(Parallel("a", "b", "c"))
        assert [o.logits.shape[-1] for o in model(**inputs)] == [3, 2, 4]
