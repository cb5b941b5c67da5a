"""AdapterHub's last head-API pieces: the biaffine dependency-parsing head (scores against the
formula computed by hand, loss, training, checkpoints, an AdapterHub-written head), ``generate``
on encoder AdapterModels with a causal LM head (against a hand-written greedy loop), and the head
methods called with AdapterHub's positional parameter order."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, left_padded_prompt, make_inputs, perturb, perturb_adapter

import adapters
from adapters import AdapterConfigError, AutoAdapterModel, BiaffineParsingHead, DependencyParsingOutput, PredictionHead
from adapters.heads import Biaffine
from adapters.heads.dependency_parsing import word_spans

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "adapterhub_parsing")
# AdapterHub's AdapterModels with a parsing (and a causal LM) head; a few representatives run here
PARSING_ARCHS = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "xmod")
LIGHT_PARSING = ("bert", "roberta", "distilbert")
SEQ = 10
# the word spans of the batch (row 1 is padded after token 6 by make_inputs): (start, end) token ranges
SPANS = [[(2, 3), (3, 5), (5, 6), (6, 9)], [(2, 4), (4, 5), (5, 7)]]
# per word: its head (0 = the root; none here equals a pad id, 0 or 1, which marks padding) and relation
ARCS = [[2, 4, 2, 3], [3, 2, 3]]
RELS = [[1, 2, 0, 3], [2, 1, 0]]
NUM_LABELS = 4


def adapter_model(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoAdapterModel.from_config(CONFIGS[arch]()).eval()


def padded(rows, width: int, value: int) -> torch.Tensor:
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


def word_starts_of(spans) -> torch.Tensor:
    """Each row's word starts then the end of its last word, padded with 0."""
    return padded([[s for s, _ in row] + [row[-1][1]] for row in spans], SEQ, 0)


def labels(pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Arc and relation labels, padded with the model's pad id."""
    return padded(ARCS, SEQ, pad), padded(RELS, SEQ, pad)


def parsing_model(arch: str):
    model = adapter_model(arch)
    model.add_dependency_parsing_head("ud", num_labels=NUM_LABELS, id2label={i: f"rel{i}" for i in range(NUM_LABELS)})
    perturb(model.heads["ud"], scale=0.3)
    return model


def by_hand(model, inputs, spans, arcs=None, rels=None):
    """arc / rel scores and the loss from the head's parameters and the base model's states."""
    head = model.heads["ud"]
    with torch.no_grad():
        states = model.base_model(**inputs).last_hidden_state
    batch, length, size = states.shape
    words = torch.zeros(batch, length, size)
    for row, row_spans in enumerate(spans):
        for j, (start, end) in enumerate(row_spans):
            words[row, j] = states[row, start:end].mean(0)
    candidates = torch.cat([states[:, :1], words], 1)
    ones = torch.ones(batch, length + 1, 1)
    dependents = torch.cat([words, ones[:, :length]], -1)
    arc = dependents @ head.biaffine_arcs.weight[0] @ candidates.transpose(1, 2)
    rel = torch.stack(
        [dependents @ head.biaffine_rels.weight[l] @ torch.cat([candidates, ones], -1).transpose(1, 2) for l in range(NUM_LABELS)],
        dim=-1,
    )
    if arcs is None:
        return arc, rel, None
    arc_terms, rel_terms = [], []
    for row, row_spans in enumerate(spans):
        for i in range(len(row_spans)):
            gold = int(arcs[row, i])
            arc_terms.append(F.cross_entropy(arc[row, i][None], torch.tensor([gold])))
            rel_terms.append(F.cross_entropy(rel[row, i, gold][None], rels[row, i][None]))
    return arc, rel, torch.stack(arc_terms).mean() + torch.stack(rel_terms).mean()


@pytest.mark.parametrize("arch", LIGHT_PARSING)
def test_parsing_scores_and_loss_equal_the_biaffine_formula(arch):
    model = parsing_model(arch)
    inputs = make_inputs(arch, seq=SEQ)
    arcs, rels = labels(model.config.pad_token_id)
    with torch.no_grad():
        out = model(**inputs, word_starts=word_starts_of(SPANS), labels_arcs=arcs, labels_rels=rels)
    assert isinstance(out, DependencyParsingOutput)
    assert out.arc_preds.shape == (2, SEQ, SEQ + 1) and out.rel_preds.shape == (2, SEQ, SEQ + 1, NUM_LABELS)
    arc, rel, loss = by_hand(model, inputs, SPANS, arcs, rels)
    torch.testing.assert_close(out.arc_preds, arc, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.rel_preds, rel, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=1e-5)
    # AdapterHub's config keys (what head_config.json stores)
    assert model.heads["ud"].config == {
        "head_type": "dependency_parsing", "num_labels": NUM_LABELS, "label2id": {f"rel{i}": i for i in range(NUM_LABELS)},
    }


def test_a_new_parsing_head_scores_zero_and_has_adapterhubs_config():
    model = adapter_model("bert")
    model.add_dependency_parsing_head("ud")
    head = model.heads["ud"]
    assert isinstance(head, BiaffineParsingHead) and isinstance(head, PredictionHead)
    assert head.config == {"head_type": "dependency_parsing", "num_labels": 2, "label2id": None}
    assert head.get_label_names() == ["labels_arcs", "labels_rels"]
    with torch.no_grad():
        out = model(**make_inputs("bert", seq=SEQ), word_starts=word_starts_of(SPANS))
    assert out.loss is None and not out.arc_preds.any() and not out.rel_preds.any()


def test_biaffine_scorer_formula():
    torch.manual_seed(0)
    scorer = Biaffine(n_in=3, n_out=2, bias_x=True, bias_y=False)
    assert scorer.weight.shape == (2, 4, 3) and not scorer.weight.any()
    perturb(scorer)
    x, y = torch.randn(1, 2, 3), torch.randn(1, 5, 3)
    scores = scorer(x, y)
    for o in range(2):
        for i in range(2):
            for j in range(5):
                expected = torch.cat([x[0, i], torch.ones(1)]) @ scorer.weight[o] @ y[0, j]
                torch.testing.assert_close(scores[0, o, i, j], expected)
    with pytest.raises(AdapterConfigError, match="n_in"):
        Biaffine(0)


def test_word_starts_follow_adapterhubs_rule():
    # boundaries pair up; entries equal to the pad id are skipped; the first end <= 0 stops the row
    assert word_spans([1, 2, 4, 5, 0, 0], pad_token_id=0) == [(1, 2), (2, 4), (4, 5)]
    assert word_spans([1, 3, -1, 5], pad_token_id=None) == [(1, 3)]
    assert word_spans([2, 3, 5, 1, 1], pad_token_id=1) == [(2, 3), (3, 5)]


def test_parsing_loss_decreases_and_only_adapter_and_head_train():
    model = parsing_model("bert")
    model.add_adapter("ud", config="seq_bn")
    model.train_adapter("ud")
    assert model.active_head == "ud"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.ud." in n or n.startswith("heads.ud.") for n in trainable)
    assert {"heads.ud.biaffine_arcs.weight", "heads.ud.biaffine_rels.weight"} <= trainable
    inputs = make_inputs("bert", seq=SEQ)
    arcs, rels = labels(model.config.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    losses = []
    for _ in range(6):
        loss = model(**inputs, word_starts=word_starts_of(SPANS), labels_arcs=arcs, labels_rels=rels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_parsing_head_round_trips_bit_for_bit(tmp_path):
    model = parsing_model("bert")
    model.save_head(str(tmp_path / "ud"), "ud")
    fresh = adapter_model("bert")
    fresh.load_head(str(tmp_path / "ud"))
    assert fresh.heads["ud"].config == model.heads["ud"].config
    for key, value in model.heads["ud"].state_dict().items():
        assert torch.equal(fresh.heads["ud"].state_dict()[key], value), key
    inputs = dict(make_inputs("bert", seq=SEQ), word_starts=word_starts_of(SPANS))
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).rel_preds, model(**inputs).rel_preds)
    # and through the model's own checkpoint (config.prediction_heads)
    model.save_pretrained(str(tmp_path / "model"))
    reloaded = AutoAdapterModel.from_pretrained(str(tmp_path / "model")).eval()
    assert isinstance(reloaded.heads["ud"], BiaffineParsingHead) and reloaded.config.id2label[1] == "rel1"
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).arc_preds, model(**inputs).arc_preds)


def test_adapterhub_parsing_head_reproduces():
    with open(os.path.join(FIXTURE, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    model = adapters.BertAdapterModel.from_pretrained(os.path.join(FIXTURE, "base")).eval()
    model.load_head(os.path.join(FIXTURE, "head"))
    assert model.heads["parse"].config == expected["head_config"]
    assert model.config.id2label == {0: "root", 1: "nsubj", 2: "obj", 3: "det"}
    batch = {k: torch.tensor(expected[k]) for k in ("input_ids", "attention_mask", "word_starts", "labels_arcs", "labels_rels")}
    with torch.no_grad():
        out = model(**batch)
    torch.testing.assert_close(out.arc_preds, torch.tensor(expected["arc_preds"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.rel_preds, torch.tensor(expected["rel_preds"]), atol=1e-4, rtol=0)
    assert abs(out.loss.item() - expected["loss"]) < 1e-4


def test_parsing_head_bad_input_is_refused_and_leaves_the_model_unchanged():
    model = adapter_model("bert")
    for kwargs, field in (({"num_labels": 0}, "num_labels"), ({"num_labels": 2, "id2label": {0: "a"}}, "id2label")):
        with pytest.raises(AdapterConfigError, match=field):
            model.add_dependency_parsing_head("ud", **kwargs)
        assert "ud" not in model.heads
    albert = adapter_model("albert")
    with pytest.raises(AdapterConfigError, match="dependency_parsing"):
        albert.add_dependency_parsing_head("ud")
    assert len(albert.heads) == 0
    model.add_dependency_parsing_head("ud")
    inputs = make_inputs("bert", seq=SEQ)
    with pytest.raises(AdapterConfigError, match="word_starts"):
        model(**inputs)
    with pytest.raises(AdapterConfigError, match="word_starts row 0"):
        model(**inputs, word_starts=torch.tensor([[3, 2, 0], [1, 2, 0]]))


def test_parsing_head_is_offered_where_adapterhub_offers_it():
    for arch in PARSING_ARCHS:
        cls = type(adapter_model(arch)) if arch in LIGHT_PARSING else adapters.heads.adapter_model.ADAPTER_MODEL_CLASSES[arch]
        assert {"dependency_parsing", "causal_lm"} <= set(cls.head_types), arch
        assert cls.can_generate(), arch
    assert not adapters.AlbertAdapterModel.can_generate()


def test_parsing_heads_under_parallel_and_batchsplit_equal_single_runs():
    from adapters import BatchSplit, Parallel

    model = parsing_model("bert")
    model.add_dependency_parsing_head("b", num_labels=NUM_LABELS)
    perturb(model.heads["b"], scale=0.3, seed=3)
    for name in ("ud", "b"):
        model.add_adapter(name)
        perturb_adapter(model, name)
    inputs = dict(make_inputs("bert", seq=SEQ), word_starts=word_starts_of(SPANS))
    arcs, rels = labels(0)
    single = {}
    with torch.no_grad():
        for name in ("ud", "b"):
            model.set_active_adapters(name)
            single[name] = model(**inputs, labels_arcs=arcs, labels_rels=rels)
        model.set_active_adapters(Parallel("ud", "b"))  # heads "ud" and "b", the batch once per branch
        both = model(**inputs, labels_arcs=arcs, labels_rels=rels)
        model.set_active_adapters(BatchSplit("ud", "b", batch_sizes=[1, 1]))
        split = model(**inputs)
    for i, name in enumerate(("ud", "b")):
        torch.testing.assert_close(both[i].arc_preds, single[name].arc_preds, atol=1e-5, rtol=0)
        torch.testing.assert_close(both[i].rel_preds, single[name].rel_preds, atol=1e-5, rtol=0)
        torch.testing.assert_close(split[i].arc_preds, single[name].arc_preds[i : i + 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(both.loss, single["ud"].loss + single["b"].loss, atol=1e-5, rtol=1e-5)


# -- generate on encoder AdapterModels ------------------------------------------------------------------
@pytest.mark.parametrize("arch", ("bert", "roberta"))
def test_encoder_generate_equals_a_greedy_loop_over_forward(arch):
    model = adapter_model(arch)
    model.add_adapter("a", config="seq_bn")
    perturb_adapter(model, "a")
    model.add_causal_lm_head("lm")
    perturb(model.heads["lm"], scale=0.3)
    model.set_active_adapters("a")
    ids, mask = left_padded_prompt()
    generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    # AdapterHub's encoder generation: no cache, the whole sequence each step, the mask grown by ones
    tokens, attention = ids, mask
    with torch.no_grad():
        for _ in range(4):
            following = model(input_ids=tokens, attention_mask=attention).logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, following], 1)
            attention = torch.cat([attention, torch.ones_like(following)], 1)
    assert torch.equal(generated, tokens)
    step = model.prepare_inputs_for_generation(ids, past=object(), token_type_ids=torch.zeros_like(ids))
    assert set(step) == {"input_ids", "attention_mask"} and torch.equal(step["input_ids"], ids)
    assert torch.equal(step["attention_mask"], torch.ones_like(ids))


# -- head methods with AdapterHub's positional parameter order -----------------------------------------
def test_head_methods_take_adapterhubs_positional_order():
    model = adapter_model("bert")
    model.add_causal_lm_head("lm")
    model.add_causal_lm_head("lm", "relu", 2, True)  # head_name, activation_function, layers, overwrite_ok
    assert model.heads["lm"].config["activation_function"] == "relu" and model.heads["lm"].config["layers"] == 2
    model.add_masked_lm_head("mlm", "gelu", 1)
    assert model.heads["mlm"].config["layers"] == 1
    model.add_masked_lm_head("mlm", "relu", 2, True)
    assert model.heads["mlm"].config["layers"] == 2 and model.heads["mlm"].config["activation_function"] == "relu"
    model.add_dependency_parsing_head("ud", 3, False, {0: "a", 1: "b", 2: "c"})
    model.add_dependency_parsing_head("ud", 5, True)
    assert model.heads["ud"].config["num_labels"] == 5
    with pytest.raises(AdapterConfigError, match="exists already"):
        model.add_masked_lm_head("mlm", "relu", 2, False)

    seq2seq = adapter_model("t5")
    seq2seq.add_seq2seq_lm_head("s2s")
    seq2seq.add_seq2seq_lm_head("s2s", 1, True)  # head_name, layers, overwrite_ok
    assert seq2seq.heads["s2s"].config["layers"] == 1
    with pytest.raises(AdapterConfigError, match="exists already"):
        seq2seq.add_seq2seq_lm_head("s2s", 1)


def test_register_custom_head_takes_adapterhubs_parameter_name():
    class MeanHead(PredictionHead):
        def __init__(self, model, head_name, num_labels=2):
            super().__init__(head_name, {"num_labels": num_labels})
            self.add_module("0", torch.nn.Linear(model.config.hidden_size, num_labels))

        def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
            return {"logits": self[0](outputs[0].mean(1))}

    model = adapter_model("bert")
    model.register_custom_head("h10_mean", head=MeanHead)
    model.add_custom_head("h10_mean", "pooled", num_labels=3)
    assert isinstance(model.heads["pooled"], MeanHead) and model.heads["pooled"].config["head_type"] == "h10_mean"
