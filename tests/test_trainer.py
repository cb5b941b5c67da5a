"""AdapterTrainer: adapter-only checkpoints, exact resumption, load_best_model_at_end, and the
fusion regulariser in the loss."""

from __future__ import annotations

import os

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

import adapters
from adapters import AdapterTrainer, Fuse
from adapters.trainer import TRAINABLE_WEIGHTS_NAME

SEQ, N_TRAIN, N_EVAL = 8, 48, 16


def make_model(adapter_seed: int = 0, dropout: float = 0.1):
    """A tiny BERT classifier with one bottleneck adapter "task" ready to train. The base weights
    are the same on every call; the adapter and the classifier head start from ``adapter_seed``."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config)
    adapters.init(model)
    torch.manual_seed(adapter_seed)
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    model.add_adapter("task", config="seq_bn")
    with torch.no_grad():
        for param in model._adapter_parameters("task"):
            param.normal_(0.0, 0.1)
    model.train_adapter("task")
    return model


def make_data(n: int, seed: int) -> list[dict]:
    """Rows with a label that depends on the tokens, plus a string column the model does not take
    (Trainer must drop it by the model's real forward signature)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (n, SEQ), generator=generator)
    return [
        {"input_ids": row, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": int(row[1] > 50), "text": f"row {i}"}
        for i, row in enumerate(ids)
    ]


def make_args(output_dir, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir), max_steps=6, per_device_train_batch_size=8, per_device_eval_batch_size=8,
        learning_rate=1e-2, save_strategy="steps", save_steps=3, logging_strategy="no", report_to=[], seed=0,
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def trained_weights(model) -> dict[str, torch.Tensor]:
    """Every weight the run changes: the adapter's and the classifier head's."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


def files_under(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, files in os.walk(folder) for f in files)


class Crash(Exception):
    pass


class CrashAfter(TrainerCallback):
    """Simulates a killed job: raises before optimiser step ``step + 1`` starts."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash()


def test_checkpoint_holds_only_adapters_and_heads(tmp_path):
    model = make_model()
    base_before = {k: v.clone() for k, v in model.bert.state_dict().items() if ".adapters." not in k}
    trainer = AdapterTrainer(model=model, args=make_args(tmp_path), train_dataset=make_data(N_TRAIN, 1))
    trainer.train()

    checkpoint = tmp_path / "checkpoint-3"
    files = files_under(checkpoint)
    assert "task/adapter_config.json" in files and "task/adapter.safetensors" in files
    assert TRAINABLE_WEIGHTS_NAME in files and "optimizer.pt" in files and "trainer_state.json" in files
    for full_model_file in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "config.json"):
        assert full_model_file not in files
    # every stored weight is an adapter weight or the classifier head, and all of them are stored
    stored = {}
    for name in files:
        if name.endswith(".safetensors"):
            stored.update(load_file(checkpoint / name))
    adapter_keys = {k for k in stored if ".adapters.task." in k}
    assert set(stored) - adapter_keys == {"classifier.weight", "classifier.bias"}
    assert sum(v.numel() for v in stored.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # the frozen base model did not move and is nowhere in the checkpoint
    for key, value in model.bert.state_dict().items():
        if ".adapters." not in key:
            assert torch.equal(value, base_before[key]), key
    # the final save_model writes the same layout, and its adapter folder loads with load_adapter
    trainer.save_model(str(tmp_path / "final"))
    fresh = make_model(adapter_seed=5)
    fresh.delete_adapter("task")
    fresh.load_adapter(str(tmp_path / "final" / "task"), set_active=True)
    fresh_state, model_state = dict(fresh.named_parameters()), dict(model.named_parameters())
    for key in adapter_keys:
        assert torch.equal(fresh_state[key], model_state[key])  # (AdapterHub's keys: from the head model's root)


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    data = make_data(N_TRAIN, 1)
    reference = make_model()
    AdapterTrainer(model=reference, args=make_args(tmp_path / "straight"), train_dataset=data).train()
    expected = trained_weights(reference)

    crashed = make_model()
    with pytest.raises(Crash):
        AdapterTrainer(
            model=crashed, args=make_args(tmp_path / "resumed"), train_dataset=data, callbacks=[CrashAfter(3)]
        ).train()
    assert os.path.isdir(tmp_path / "resumed" / "checkpoint-3") and not os.path.isdir(tmp_path / "resumed" / "checkpoint-6")

    resumed = make_model(adapter_seed=7)  # different start: the checkpoint must overwrite it
    initial = trained_weights(resumed)
    params_before = {k: p for k, p in resumed.named_parameters()}
    trainer = AdapterTrainer(model=resumed, args=make_args(tmp_path / "resumed"), train_dataset=data)
    trainer.train(resume_from_checkpoint=True)  # the last checkpoint: checkpoint-3
    assert trainer.state.global_step == 6
    result = trained_weights(resumed)
    assert set(result) == set(expected)
    for key in expected:
        assert not torch.equal(initial[key], expected[key]), key  # the comparison below means something
        torch.testing.assert_close(result[key], expected[key], rtol=0, atol=1e-6, msg=key)
        assert params_before[key] is dict(resumed.named_parameters())[key]  # loaded in place


def test_dropout_and_data_order_matter_for_the_resume_test(tmp_path):
    """Without the restored RNG state and data position the weights differ: a different seed
    changes the result (so the test above would catch a resume that lost them)."""
    data = make_data(N_TRAIN, 1)
    first, second = make_model(), make_model()
    AdapterTrainer(model=first, args=make_args(tmp_path / "a", max_steps=3), train_dataset=data).train()
    AdapterTrainer(model=second, args=make_args(tmp_path / "b", max_steps=3, seed=1), train_dataset=data).train()
    assert any(not torch.equal(v, trained_weights(second)[k]) for k, v in trained_weights(first).items())


def test_load_best_model_at_end_restores_best_checkpoint(tmp_path):
    scores = iter([0.1, 0.9, 0.5])  # evaluations at steps 2, 4, 6: the best is step 4

    def compute_metrics(prediction):
        assert prediction.label_ids is not None  # labels reached the evaluation loop
        return {"score": next(scores)}

    model = make_model()
    args = make_args(
        tmp_path, save_steps=2, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
        metric_for_best_model="score", greater_is_better=True,
    )
    trainer = AdapterTrainer(
        model=model, args=args, train_dataset=make_data(N_TRAIN, 1), eval_dataset=make_data(N_EVAL, 2),
        compute_metrics=compute_metrics,
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-4")
    assert any("eval_loss" in entry for entry in trainer.state.log_history)  # label names read correctly

    best = load_file(tmp_path / "checkpoint-4" / "task" / "adapter.safetensors")
    last = load_file(tmp_path / "checkpoint-6" / "task" / "adapter.safetensors")
    best_head = load_file(tmp_path / "checkpoint-4" / TRAINABLE_WEIGHTS_NAME)
    params = dict(model.named_parameters())
    assert any(not torch.equal(best[k], last[k]) for k in best)
    for key, value in best.items():
        assert torch.equal(params[key].detach(), value), key  # (AdapterHub's keys: from the head model's root)
    for key, value in best_head.items():
        assert torch.equal(params[key].detach(), value), key


def _fusion_model():
    model = make_model(dropout=0.0)
    model.add_adapter("other", config="seq_bn")
    model.add_adapter_fusion(Fuse("task", "other"), "dynamic")
    with torch.no_grad():  # move the value projections away from the identity: the regulariser is > 0
        for name, param in model.named_parameters():
            if "adapter_fusion_layer" in name and ".value." in name:
                param.add_(0.1)
    return model


def test_fusion_regularisation_joins_the_loss_while_fusion_trains(tmp_path):
    model = _fusion_model()
    model.train_adapter_fusion(Fuse("task", "other"))
    batch = {k: torch.stack([torch.as_tensor(r[k]) for r in make_data(4, 3)]) for k in ("input_ids", "attention_mask", "labels")}
    trainer = AdapterTrainer(model=model, args=make_args(tmp_path), train_dataset=make_data(N_TRAIN, 1))
    regularization = model.get_fusion_regularization_loss()
    assert regularization.item() > 1e-3
    with torch.no_grad():
        task_loss = model(**batch).loss
        loss = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(loss, task_loss + regularization)

    model.eval()  # evaluation losses stay the task loss
    with torch.no_grad():
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), model(**batch).loss)

    model.train_adapter("task")  # the fusion is frozen now: nothing is added
    with torch.no_grad():
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), model(**batch).loss)


def test_fusion_checkpoint_round_trip(tmp_path):
    model = _fusion_model()
    model.train_adapter_fusion(Fuse("task", "other"))
    AdapterTrainer(model=model, args=make_args(tmp_path, max_steps=3), train_dataset=make_data(N_TRAIN, 1)).train()
    assert "task,other/adapter_fusion_config.json" in files_under(tmp_path / "checkpoint-3")

    fresh = _fusion_model()
    fresh.train_adapter_fusion(Fuse("task", "other"))
    adapters.trainer.load_checkpoint_weights(fresh, str(tmp_path / "checkpoint-3"))
    for (key, value), (_, loaded) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(value, loaded), key


def test_bad_inputs(tmp_path):
    plain = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    ))
    with pytest.raises(ValueError, match="adapters.init"):
        AdapterTrainer(model=plain, args=make_args(tmp_path))
    adapters.init(plain)
    plain.add_adapter("task", config="seq_bn")
    with pytest.raises(ValueError, match="train_adapter"):
        AdapterTrainer(model=plain, args=make_args(tmp_path))

    # a checkpoint that does not match the model: error, and the model keeps its weights
    model = make_model()
    AdapterTrainer(model=model, args=make_args(tmp_path, max_steps=3), train_dataset=make_data(N_TRAIN, 1)).train()
    other = make_model(adapter_seed=3)
    other.add_adapter("extra", config="seq_bn")
    before = trained_weights(other)
    with pytest.raises(ValueError, match="extra"):
        adapters.trainer.load_checkpoint_weights(other, str(tmp_path / "checkpoint-3"))
    other.delete_adapter("extra")
    os.remove(tmp_path / "checkpoint-3" / "task" / "adapter.safetensors")
    with pytest.raises(adapters.AdapterLoadError, match="no weights file"):
        adapters.trainer.load_checkpoint_weights(other, str(tmp_path / "checkpoint-3"))
    with pytest.raises(ValueError, match="not a folder"):
        adapters.trainer.load_checkpoint_weights(other, str(tmp_path / "missing"))
    for key, value in trained_weights(other).items():
        assert torch.equal(value, before[key]), key


def test_failed_load_rolls_back_weights_already_copied(tmp_path):
    """The adapter file is fine and copied first; the head file has a wrong shape: the adapter's
    weights go back to what they were."""
    from safetensors.torch import save_file

    model = make_model()
    AdapterTrainer(model=model, args=make_args(tmp_path, max_steps=3), train_dataset=make_data(N_TRAIN, 1)).train()
    head_file = tmp_path / "checkpoint-3" / TRAINABLE_WEIGHTS_NAME
    state = load_file(head_file)
    state["classifier.weight"] = torch.zeros(3, 32)
    save_file(state, head_file)
    other = make_model(adapter_seed=3)
    before = trained_weights(other)
    with pytest.raises(adapters.AdapterLoadError, match="shape"):
        adapters.trainer.load_checkpoint_weights(other, str(tmp_path / "checkpoint-3"))
    for key, value in trained_weights(other).items():
        assert torch.equal(value, before[key]), key


def test_flexible_heads_are_saved_and_restored(tmp_path):
    """An AdapterModel's flexible head: written with save_all_heads for users and restored on
    resume / load_best from trainable_weights.safetensors."""

    def adapter_model(seed):
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        )
        model = adapters.BertAdapterModel(config)
        torch.manual_seed(seed)
        model.add_adapter("task", config="seq_bn")
        model.add_classification_head("task", num_labels=2)
        model.train_adapter("task")
        return model

    model = adapter_model(0)
    AdapterTrainer(model=model, args=make_args(tmp_path, max_steps=3), train_dataset=make_data(N_TRAIN, 1)).train()
    checkpoint = tmp_path / "checkpoint-3"
    assert any(name.startswith("task/head") for name in files_under(checkpoint)), files_under(checkpoint)
    assert any(key.startswith("heads.task.") for key in load_file(checkpoint / TRAINABLE_WEIGHTS_NAME))

    fresh = adapter_model(9)
    assert any(not torch.equal(v, trained_weights(model)[k]) for k, v in trained_weights(fresh).items())
    adapters.trainer.load_checkpoint_weights(fresh, str(checkpoint))
    expected = trained_weights(model)
    for key, value in trained_weights(fresh).items():
        assert torch.equal(value, expected[key]), key
