"""AdapterHub's training helpers: AdapterArguments / setup_adapter_training (training scripts),
Seq2SeqAdapterTrainer (generation), and AdapterTrainer's AdapterHub arguments (adapter_names,
tokenizer, train_adapter_fusion, label names of flexible heads)."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import HfArgumentParser, Seq2SeqTrainingArguments, TrainingArguments

import adapters
from adapters import AdapterArguments, AdapterConfigError, AdapterTrainer, CompositionError, Fuse, Seq2SeqAdapterTrainer, Stack
from adapters import setup_adapter_training

from conftest import CONFIGS, perturb_adapter

SEQ = 8


def bert_classifier(seed: int = 0):
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(CONFIGS["bert"]())
    adapters.init(model)
    torch.manual_seed(seed)
    return model


def trainable(model) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model, before: dict) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in now)


# -- AdapterArguments / setup_adapter_training --------------------------------------------------------
def test_adapter_arguments_are_adapterhubs_fields_and_parse_as_flags():
    fields = {f.name: f.default for f in dataclasses.fields(AdapterArguments)}
    assert fields == {
        "train_adapter": False, "load_adapter": "", "adapter_config": "seq_bn", "load_lang_adapter": None,
        "lang_adapter_config": None,
    }
    parser = HfArgumentParser((TrainingArguments, AdapterArguments))
    _, parsed = parser.parse_args_into_dataclasses(
        ["--output_dir", "out", "--train_adapter", "--adapter_config", "lora[r=4]", "--load_lang_adapter", "lang/en"]
    )
    assert parsed == AdapterArguments(train_adapter=True, adapter_config="lora[r=4]", load_lang_adapter="lang/en")


def test_setup_adds_the_task_adapter_and_trains_only_it():
    model = bert_classifier()
    names = setup_adapter_training(
        model, AdapterArguments(train_adapter=True, adapter_config="seq_bn"), "task", adapter_config_kwargs={"reduction_factor": 4}
    )
    assert names == ("task", None)
    assert model.adapters_config.get("task") == adapters.AdapterConfig.load("seq_bn", reduction_factor=4)
    assert str(model.active_adapters) == str(Stack("task"))
    expected = {n for n, _ in model.named_parameters() if ".task." in n or n.startswith("classifier.")}
    assert trainable(model) == expected and any(".task." in n for n in expected)

    # an adapter of that name already there is trained as it is (AdapterHub: not added again)
    model = bert_classifier()
    model.add_adapter("task", config="lora")
    perturb_adapter(model, "task")
    before = snapshot(model)
    assert setup_adapter_training(model, AdapterArguments(train_adapter=True), "task") == ("task", None)
    assert type(model.adapters_config.get("task")).__name__ == "LoRAConfig" and same_state(model, before)


def test_setup_loads_task_and_language_adapters_and_stacks_them(tmp_path):
    source = bert_classifier()
    source.add_adapter("lang_en", config="seq_bn")
    source.add_adapter("ner", config="seq_bn[reduction_factor=8]")
    perturb_adapter(source, "lang_en", seed=1)
    perturb_adapter(source, "ner", seed=2)
    source.save_adapter(str(tmp_path / "lang"), "lang_en")
    source.save_adapter(str(tmp_path / "ner"), "ner")

    model = bert_classifier()
    args = AdapterArguments(train_adapter=True, load_adapter=str(tmp_path / "ner"), adapter_config="seq_bn[reduction_factor=8]",
                            load_lang_adapter=str(tmp_path / "lang"))
    assert setup_adapter_training(model, args, "task", adapter_config_kwargs={"reduction_factor": 8}) == ("task", "lang_en")
    assert str(model.active_adapters) == str(Stack("lang_en", "task"))
    # the language adapter keeps its saved config (lang_adapter_config empty) and does not train
    assert model.adapters_config.get("lang_en") == source.adapters_config.get("lang_en")
    assert not any(".lang_en." in n for n in trainable(model)) and any(".task." in n for n in trainable(model))
    for name, loaded_as in (("lang_en", "lang_en"), ("ner", "task")):
        saved = dict(source._adapter_named_parameters(name)) if hasattr(source, "_adapter_named_parameters") else None
        ours = [p for p in model._adapter_parameters(loaded_as)]
        theirs = [p for p in source._adapter_parameters(name)]
        assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs)), name
        del saved

    # the same stack computed by hand: both adapters active in the source model
    source.set_active_adapters(Stack("lang_en", "ner"))
    inputs = {"input_ids": torch.randint(3, 99, (2, SEQ), generator=torch.Generator().manual_seed(0))}
    model.eval(), source.eval()
    with torch.no_grad():
        assert torch.equal(model.bert(**inputs).last_hidden_state, source.bert(**inputs).last_hidden_state)


def test_setup_refuses_bad_combinations_and_leaves_the_model_unchanged(tmp_path):
    model = bert_classifier()
    before = snapshot(model)
    assert setup_adapter_training(model, AdapterArguments(), "task") == (None, None)
    for args, message in (
        (AdapterArguments(load_adapter="somewhere"), "only loaded for adapter training.*--train_adapter"),
        (AdapterArguments(load_lang_adapter="somewhere"), "only loaded for adapter training"),
        (AdapterArguments(train_adapter=True, adapter_config="no_such_config"), "AdapterArguments.adapter_config='no_such_config'"),
        (AdapterArguments(train_adapter=True, load_lang_adapter=str(tmp_path), lang_adapter_config="nope"),
         "AdapterArguments.lang_adapter_config='nope'"),
    ):
        with pytest.raises(AdapterConfigError, match=message):  # AdapterHub: ValueError (this is one)
            setup_adapter_training(model, args, "task")
        assert not model.adapters_config.adapters and same_state(model, before)
    with pytest.raises(ValueError):
        setup_adapter_training(model, AdapterArguments(load_adapter="x"), "task")


def test_setup_loads_a_saved_lora_adapter_with_its_saved_config_under_the_default_flags(tmp_path):
    # review 1 / 19: --adapter_config (default "seq_bn") is for a new adapter; a loaded one keeps its
    # saved config, as in AdapterHub, and adapter_config_kwargs do not change it
    source = bert_classifier()
    source.add_adapter("ner", config="lora[r=4]")
    perturb_adapter(source, "ner", seed=3)
    source.save_adapter(str(tmp_path / "ner"), "ner")
    model = bert_classifier()
    args = AdapterArguments(train_adapter=True, load_adapter=str(tmp_path / "ner"))
    assert setup_adapter_training(model, args, "task", adapter_config_kwargs={"reduction_factor": 4}) == ("task", None)
    assert model.adapters_config.get("task") == source.adapters_config.get("ner")
    ours, theirs = list(model._adapter_parameters("task")), list(source._adapter_parameters("ner"))
    assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert trainable(model) == {n for n, _ in model.named_parameters() if ".task." in n or n.startswith("classifier.")}


def test_setup_refuses_load_as_and_config_in_adapter_load_kwargs(tmp_path):
    # review 13: they were passed twice to load_adapter (a TypeError)
    model = bert_classifier()
    before = snapshot(model)
    args = AdapterArguments(train_adapter=True, load_adapter=str(tmp_path), load_lang_adapter=str(tmp_path))
    for kwargs, named in (({"load_as": "x"}, "load_as"), ({"config": "lora"}, "config"), ({"config": 1, "load_as": 2}, "config, load_as")):
        with pytest.raises(AdapterConfigError, match=f"adapter_load_kwargs may not hold {named} "):
            setup_adapter_training(model, args, "task", adapter_load_kwargs=kwargs)
        assert not model.adapters_config.adapters and same_state(model, before)


def test_setup_leaves_the_model_unchanged_when_the_language_adapter_fails_to_load(tmp_path):
    # review 7: the task adapter added or loaded before stayed
    source = bert_classifier()
    source.add_adapter("ner", config="seq_bn")
    perturb_adapter(source, "ner", seed=2)
    source.save_adapter(str(tmp_path / "ner"), "ner")
    missing = str(tmp_path / "no_lang")

    model = bert_classifier()  # a new task adapter is taken out again
    before = snapshot(model)
    with pytest.raises(adapters.AdapterLoadError):
        setup_adapter_training(model, AdapterArguments(train_adapter=True, load_lang_adapter=missing), "task")
    assert not model.adapters_config.adapters and same_state(model, before) and model.active_adapters is None

    model = bert_classifier()  # a loaded one too; an adapter it replaced comes back with its weights and fusion
    model.add_adapter("task", config="seq_bn[reduction_factor=4]")
    model.add_adapter("other", config="seq_bn")
    perturb_adapter(model, "task", seed=5)
    perturb_adapter(model, "other", seed=6)
    model.add_adapter_fusion(Fuse("task", "other"))
    model.set_active_adapters("other")
    before, configs = snapshot(model), dict(model.adapters_config.adapters)
    args = AdapterArguments(train_adapter=True, load_adapter=str(tmp_path / "ner"), load_lang_adapter=missing)
    with pytest.raises(adapters.AdapterLoadError):
        setup_adapter_training(model, args, "task")
    assert dict(model.adapters_config.adapters) == configs and same_state(model, before)
    assert list(model.adapters_config.fusions) == ["task,other"] and str(model.active_adapters) == str(Stack("other"))
    # and with the language adapter there, the replacement goes through (the fusion of the old one goes with it)
    source.add_adapter("lang_en", config="seq_bn")
    source.save_adapter(str(tmp_path / "lang"), "lang_en")
    args = AdapterArguments(train_adapter=True, load_adapter=str(tmp_path / "ner"), load_lang_adapter=str(tmp_path / "lang"))
    assert setup_adapter_training(model, args, "task") == ("task", "lang_en")
    assert model.adapters_config.get("task") == source.adapters_config.get("ner") and not model.adapters_config.fusions
    assert sorted(model.adapters_config.adapters) == ["lang_en", "other", "task"]
    assert not any("~" in n for n, _ in model.named_parameters())
    ours, theirs = list(model._adapter_parameters("task")), list(source._adapter_parameters("ner"))
    assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))


# -- Seq2SeqAdapterTrainer ----------------------------------------------------------------------------
def t5_rows(n: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(3, 90, (6,), generator=generator), "attention_mask": torch.ones(6, dtype=torch.long),
         "labels": torch.randint(3, 90, (4,), generator=generator)}
        for _ in range(n)
    ]


def test_seq2seq_trainer_trains_the_adapter_generates_and_saves_adapter_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(CONFIGS["t5"]())
    adapters.init(model)
    model.add_adapter("task", config="seq_bn")
    perturb_adapter(model, "task", scale=1.0)  # the tiny base model alone generates only padding
    model.train_adapter("task")
    before = snapshot(model)
    args = Seq2SeqTrainingArguments(
        str(tmp_path), max_steps=4, per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=1e-2,
        save_steps=2, logging_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        predict_with_generate=True, generation_max_length=5,
    )
    seen = {}

    def metrics(prediction):
        seen["predictions"] = prediction.predictions
        seen["labels"] = prediction.label_ids
        return {"rows": float(len(prediction.predictions))}

    eval_rows = t5_rows(8, seed=2)
    trainer = Seq2SeqAdapterTrainer(model=model, args=args, train_dataset=t5_rows(16, seed=1), eval_dataset=eval_rows,
                                    compute_metrics=metrics)
    assert isinstance(trainer, transformers.Seq2SeqTrainer) and isinstance(trainer, AdapterTrainer)
    trainer.train()

    # only the adapter moved
    after = model.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved and all(".task." in k for k in moved), sorted(moved)[:5]

    # evaluation generated with the trained adapter: the predictions are model.generate's tokens
    assert trainer.evaluate()["eval_rows"] == 8.0
    batch = {k: torch.stack([row[k] for row in eval_rows]) for k in ("input_ids", "attention_mask")}
    model.eval()
    with torch.no_grad():
        generated = model.generate(**batch, max_length=5)
    predictions = torch.as_tensor(seen["predictions"])
    assert torch.equal(predictions[:, : generated.shape[1]], generated)
    assert torch.equal(torch.as_tensor(seen["labels"])[:, :4], torch.stack([row["labels"] for row in eval_rows]))
    with torch.no_grad():  # and generation depends on the adapter (the check above can fail)
        model.set_active_adapters(None)
        without = model.generate(**batch, max_length=5)
        model.set_active_adapters("task")
    assert not torch.equal(without, generated)

    # checkpoints hold the adapter, not the model (nor its frozen LM head)
    for step in (2, 4):
        files = sorted(os.listdir(tmp_path / f"checkpoint-{step}"))
        assert files == ["optimizer.pt", "rng_state.pth", "scheduler.pt", "task", "trainer_state.json", "training_args.bin"]
        assert sorted(os.listdir(tmp_path / f"checkpoint-{step}" / "task")) == ["adapter.safetensors", "adapter_config.json"]
        saved = load_file(tmp_path / f"checkpoint-{step}" / "task" / "adapter.safetensors")
        assert saved and all(".task." in k for k in saved)
    reloaded = transformers.T5ForConditionalGeneration(CONFIGS["t5"]())
    reloaded.load_state_dict({k: v for k, v in before.items() if ".task." not in k}, strict=False)
    adapters.init(reloaded)
    reloaded.load_adapter(str(tmp_path / "checkpoint-4" / "task"), set_active=True)
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded.generate(**batch, max_length=5), generated)


# -- AdapterTrainer: AdapterHub's arguments -----------------------------------------------------------
def classification_rows(n: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (n, SEQ), generator=generator)
    return [{"input_ids": row, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": int(row[1] > 50)} for row in ids]


def training_args(output_dir, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir), max_steps=6, per_device_train_batch_size=8, per_device_eval_batch_size=8,
        learning_rate=5e-2, save_strategy="steps", save_steps=2, logging_strategy="no", report_to=[], seed=0,
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def test_adapter_names_and_tokenizer_arguments(tmp_path):
    model = bert_classifier()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    model.freeze_model(True)
    tokenizer = object()
    trainer = AdapterTrainer(model, training_args(tmp_path), None, None, None, tokenizer, adapter_names=["a", "b"])
    assert trainer.processing_class is tokenizer  # AdapterHub's sixth positional argument
    assert str(model.active_adapters) == str(Stack("a", "b"))
    assert trainer.train_adapter_fusion is False
    with pytest.raises(AdapterConfigError, match="both tokenizer= and processing_class="):
        AdapterTrainer(model=model, args=training_args(tmp_path), tokenizer=tokenizer, processing_class=object())
    with pytest.raises(CompositionError, match="unknown adapter 'c'"):
        AdapterTrainer(model=model, args=training_args(tmp_path), adapter_names="c")


def test_training_an_unfrozen_model_is_refused(tmp_path):
    model = bert_classifier()
    model.add_adapter("a", config="seq_bn", set_active=True)  # activated, base model not frozen
    trainer = AdapterTrainer(model=model, args=training_args(tmp_path), train_dataset=classification_rows(16, 1))
    with pytest.raises(AdapterConfigError, match="not frozen.*train_adapter"):
        trainer.train()


def test_model_init_builds_the_adapter_model(tmp_path):
    def build():
        model = bert_classifier()
        model.add_adapter("a", config="seq_bn")
        model.train_adapter("a")
        return model

    trainer = AdapterTrainer(model_init=build, args=training_args(tmp_path, max_steps=2, save_strategy="no"),
                             train_dataset=classification_rows(16, 1))
    before = snapshot(trainer.model)
    trainer.train()
    after = trainer.model.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved and all(".a." in k or k.startswith("classifier.") for k in moved)
    with pytest.raises(AdapterConfigError, match="adapters.init"):
        AdapterTrainer(model_init=lambda: transformers.BertForSequenceClassification(CONFIGS["bert"]()), args=training_args(tmp_path))


def test_model_init_models_built_for_training_get_adapter_names(tmp_path):
    # review 9: train() calls model_init again; the rebuilt model did not get adapter_names
    built = []

    def build():
        model = bert_classifier()
        model.add_adapter("a", config="seq_bn")
        model.add_adapter("b", config="seq_bn")
        model.train_adapter(Stack("a", "b"))
        model.set_active_adapters("a")  # adapter_names is to activate Stack(a, b)
        built.append(model)
        return model

    trainer = AdapterTrainer(model_init=build, args=training_args(tmp_path, max_steps=1, save_strategy="no"),
                             train_dataset=classification_rows(16, 1), adapter_names=["a", "b"])
    assert str(trainer.model.active_adapters) == str(Stack("a", "b"))
    trainer.train()
    assert len(built) == 2 and trainer.model is built[-1]
    assert str(built[-1].active_adapters) == str(Stack("a", "b"))

    calls = []

    def unprepared():
        calls.append(1)
        if len(calls) == 2:  # the model train() builds is not an adapters model
            return transformers.BertForSequenceClassification(CONFIGS["bert"]())
        return build()

    trainer = AdapterTrainer(model_init=unprepared, args=training_args(tmp_path, max_steps=1, save_strategy="no"),
                             train_dataset=classification_rows(16, 1))
    with pytest.raises(AdapterConfigError, match="adapters.init"):
        trainer.train()


def fusion_model():
    model = bert_classifier()
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, config="seq_bn")
        perturb_adapter(model, name, seed=i)
    model.add_adapter_fusion(Fuse("a", "b"))
    model.train_adapter_fusion(Fuse("a", "b"))
    return model


def test_fusion_training_saves_fusion_and_adapters_and_reloads_the_best(tmp_path):
    """AdapterHub's fusion run: train_adapter_fusion is set, every checkpoint holds the fusion and
    the adapters, and load_best_model_at_end puts the best checkpoint's fusion back."""
    model = fusion_model()
    evals = []

    class Record(transformers.TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            evals.append((state.global_step, metrics["eval_loss"]))

    # "best" = the highest evaluation loss: a checkpoint before the last one, so restoring it shows
    args = training_args(tmp_path, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                         metric_for_best_model="eval_loss", greater_is_better=True, learning_rate=0.3)
    trainer = AdapterTrainer(model=model, args=args, train_dataset=classification_rows(48, 1),
                             eval_dataset=classification_rows(16, 2), callbacks=[Record()])
    assert trainer.train_adapter_fusion is True
    trainer.train()
    best_step = max(evals, key=lambda e: e[1])[0]
    assert {step for step, _ in evals} == {2, 4, 6} and best_step != 6, evals
    for step in (2, 4, 6):
        assert {"a", "b", "a,b"} <= set(os.listdir(tmp_path / f"checkpoint-{step}"))
    fusion_files = [f for f in os.listdir(tmp_path / f"checkpoint-{best_step}" / "a,b") if f.endswith(".safetensors")]
    best = load_file(tmp_path / f"checkpoint-{best_step}" / "a,b" / fusion_files[0])
    last = load_file(tmp_path / "checkpoint-6" / "a,b" / fusion_files[0])
    params = dict(model.named_parameters())  # the files hold AdapterHub's keys, from the head model's root
    assert any(not torch.equal(best[k], last[k]) for k in best)  # the fusion moved after the best step
    for key, value in best.items():  # and the best checkpoint's fusion is back
        assert torch.equal(params[key], value), key
    for name in ("a", "b"):  # the fused adapters too (frozen here: unchanged, and restored as they were)
        saved = load_file(tmp_path / f"checkpoint-{best_step}" / name / "adapter.safetensors")
        assert saved and all(torch.equal(params[k], v) for k, v in saved.items()), name


def test_fusion_value_matrices_are_not_weight_decayed(tmp_path):
    """AdapterHub's trainer means to keep the fusion value matrices (regularised towards the
    identity) out of weight decay, but its pattern never matches their names (re.match anchored
    at the name's start: AdapterHub's own name for this model is
    "bert.encoder.layer.0.output.adapter_fusion_layer.a,b.value.weight"); here they are kept out."""
    model = fusion_model()
    trainer = AdapterTrainer(model=model, args=training_args(tmp_path, weight_decay=0.1))
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}
    values = {n for n in names.values() if ".adapter_fusion_layer.a,b.value." in n}
    queries = {n for n in names.values() if ".adapter_fusion_layer.a,b.query.weight" in n}
    assert values and queries and "bert.encoder.layer.0.output.adapter_fusion_layer.a,b.value.weight" in values
    assert values <= decay[0.0] and not values & decay[0.1]
    assert queries <= decay[0.1]
    assert decay[0.0] | decay[0.1] == {n for n, p in model.named_parameters() if p.requires_grad}


def test_evaluation_reads_the_labels_of_flexible_heads(tmp_path):
    torch.manual_seed(0)
    model = adapters.BertAdapterModel(CONFIGS["bert"]())
    model.add_adapter("qa", config="seq_bn")
    model.add_qa_head("qa")
    model.train_adapter("qa")
    seen = {}

    def metrics(prediction):
        seen["labels"] = prediction.label_ids
        return {}

    rows = [dict(row, start_positions=i % SEQ, end_positions=(i + 2) % SEQ) for i, row in enumerate(classification_rows(8, 3))]
    for row in rows:
        del row["labels"]
    trainer = AdapterTrainer(model=model, args=training_args(tmp_path), eval_dataset=rows, compute_metrics=metrics)
    assert trainer.label_names == ["start_positions", "end_positions"]  # not the forward's "labels"
    trainer.evaluate()
    start, end = (torch.as_tensor(x) for x in seen["labels"])
    assert torch.equal(start, torch.tensor([i % SEQ for i in range(8)]))
    assert torch.equal(end, torch.tensor([(i + 2) % SEQ for i in range(8)]))
