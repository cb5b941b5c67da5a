"""Distributed scenarios run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU):

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed/scenarios.py MODES OUT

MODES is a comma-separated list of ``ddp``, ``fully_shard``, ``zero2``, ``zero3``,
``zero3_persistent`` and ``fsdp``. Rank 0
writes what each mode measured to ``OUT/<mode>/result.json`` (weights as nested lists, file
listings, flags); the tests assert on it. DeepSpeed needs ``DS_ACCELERATOR=cpu`` on a machine
without GPUs.
"""

from __future__ import annotations

import copy
import json
import os
import sys

import torch
import torch.distributed as dist
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import adapters  # noqa: E402
from adapters import AdapterTrainer, Fuse  # noqa: E402

SEQ, N_TRAIN = 8, 32
torch.set_num_threads(1)


def make_model(dropout: float = 0.0, seed: int = 0):
    """A tiny BERT classifier with a bottleneck adapter "task" (non-zero weights) ready to train;
    the same weights on every rank."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config)
    adapters.init(model)
    torch.manual_seed(seed)
    model.add_adapter("task", config="seq_bn")
    with torch.no_grad():
        for param in model._adapter_parameters("task"):
            param.normal_(0.0, 0.1)
    model.train_adapter("task")
    return model


def make_data(n: int = N_TRAIN, seed: int = 1) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (n, SEQ), generator=generator)
    return [{"input_ids": row, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": int(row[1] > 50)} for row in ids]


def batch_of(rows: list[dict]) -> dict:
    return {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) for k in rows[0]}


def trainable(model) -> dict[str, list]:
    return {k: p.detach().clone().tolist() for k, p in model.named_parameters() if p.requires_grad}


def files_under(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, files in os.walk(folder) for f in files)


def saved_weights(folder: str) -> dict[str, list]:
    """Every tensor of every safetensors file under ``folder``, keyed ``file:key``."""
    from safetensors.torch import load_file

    found = {}
    for name in files_under(folder):
        if name.endswith(".safetensors"):
            found.update({f"{name}:{k}": v.tolist() for k, v in load_file(os.path.join(folder, name)).items()})
    return found


def tensor_elements(folder: str) -> dict[str, int]:
    """For every pickled file of a checkpoint (DeepSpeed's model and optimizer states, FSDP's
    optimizer.bin; not the RNG states), the number of tensor elements it holds."""

    def count(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel()
        if isinstance(value, dict):
            return sum(count(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(count(v) for v in value)
        return 0

    found = {}
    for name in files_under(folder):
        if name.endswith((".pt", ".bin")) and not os.path.basename(name).startswith(("rng_state", "training_args")):
            found[name] = count(torch.load(os.path.join(folder, name), map_location="cpu", weights_only=False))
    return found


# -- hand-written loops -------------------------------------------------------------------------------------
def sgd_steps(model, batches, steps: int = 3, lr: float = 0.5) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        optimizer.zero_grad()
        model(**batches[step]).loss.backward()
        optimizer.step()


def run_ddp(out: str, rank: int, world: int) -> dict:
    """DDP: each rank trains on its half of every batch; the weights equal one process on the full batch."""
    from torch.nn.parallel import DistributedDataParallel

    result = {}
    rows = make_data()
    full = [batch_of(rows[8 * s: 8 * s + 8]) for s in range(3)]
    halves = [{k: v[4 * rank: 4 * rank + 4] for k, v in b.items()} for b in full]
    for case in ("adapter", "fusion"):
        model = make_model()
        if case == "fusion":
            model.add_adapter("other", config="seq_bn")
            model.add_adapter_fusion(Fuse("task", "other"))
            model.train_adapter_fusion(Fuse("task", "other"))
        reference = copy.deepcopy(model)
        ddp = DistributedDataParallel(model)
        ddp.train()
        sgd_steps(ddp, halves)
        weights = trainable(model)
        gathered = [None] * world
        dist.all_gather_object(gathered, weights)
        reference.train()
        sgd_steps(reference, full)
        result[case] = {"ranks": gathered, "reference": trainable(reference), "initial": trainable(make_model())}
    return result


def run_fully_shard(out: str, rank: int, world: int) -> dict:
    """FSDP2: save_adapter / save_adapter_fusion on a fully_shard model (every rank calls, rank 0
    writes) equal the unsharded model's files; one training step on the shards equals one process
    on the full batch."""
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    model.add_adapter("other", config="seq_bn")
    model.add_adapter_fusion(Fuse("task", "other"))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adapter_fusion_layer" in name:
                param.normal_(0.0, 0.1)
    model.train_adapter_fusion(Fuse("task", "other"))
    rows = make_data()
    full = [batch_of(rows[:8])]
    reference = copy.deepcopy(model)
    if rank == 0:
        reference.save_adapter(os.path.join(out, "unsharded", "task"), "task")
        reference.save_adapter_fusion(os.path.join(out, "unsharded", "task,other"), "task,other")
    for layer in model.bert.encoder.layer:
        fully_shard(layer)
    fully_shard(model)
    from torch.distributed.tensor import DTensor

    sharded = sum(isinstance(p, DTensor) for p in model.parameters())
    model.save_adapter(os.path.join(out, "sharded", "task"), "task")
    model.save_adapter_fusion(os.path.join(out, "sharded", "task,other"), "task,other")
    model.train()
    sgd_steps(model, [{k: v[4 * rank: 4 * rank + 4] for k, v in full[0].items()}], steps=1)
    model.save_all_adapters(os.path.join(out, "trained"))
    reference.train()
    sgd_steps(reference, full, steps=1)
    if rank == 0:
        reference.save_all_adapters(os.path.join(out, "trained_reference"))
    dist.barrier()
    return {
        "dtensor_parameters": sharded,
        "unsharded": saved_weights(os.path.join(out, "unsharded")),
        "sharded": saved_weights(os.path.join(out, "sharded")),
        "trained": saved_weights(os.path.join(out, "trained")),
        "trained_reference": saved_weights(os.path.join(out, "trained_reference")),
    }


# -- AdapterTrainer under DeepSpeed / FSDP ----------------------------------------------------------------------
class StopAfter(transformers.TrainerCallback):
    """Ends the run after optimiser step ``step``, its checkpoint written: the resumed run gets
    nothing but that checkpoint, as after a killed job."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def configure(mode: str) -> dict:
    """The TrainingArguments settings of ``mode``, after setting up the accelerate state it needs on
    CPU (afresh: call it before each trainer's arguments, as TrainingArguments would reset it)."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)

    if mode in ("zero2", "zero3", "zero3_persistent"):
        # TrainingArguments would build accelerate's state without a backend on a machine with no
        # accelerator (one process as far as DeepSpeed's batch-size checks go): configure it first
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
        # ZeRO-3 keeps parameters under stage3_param_persistence_threshold elements whole on every rank:
        # 0 partitions all of them, as for a model of real size
        # (zero3_persistent: DeepSpeed's default, under which this tiny model's parameters all stay whole)
        zero = {"zero2": {"stage": 2}, "zero3": {"stage": 3, "stage3_param_persistence_threshold": 0}}.get(mode, {"stage": 3})
        deepspeed = {
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": 8,
            "zero_optimization": zero, "zero_force_ds_cpu_optimizer": False,
        }
        return dict(deepspeed=deepspeed, ddp_backend="gloo", accelerator_config={"use_configured_state": True})
    # FSDP: accelerate turns FSDP on only for accelerator devices (accelerate/state.py lists MULTI_GPU,
    # MULTI_XPU, ... but not MULTI_CPU); FSDP2 itself runs on CPU with gloo, so the state is set to FSDP by hand
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, TorchDynamoPlugin

    fsdp_config = {"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"], "state_dict_type": "FULL_STATE_DICT"}
    # the plugin Trainer would build (these arguments reset accelerate's state: made first)
    args = transformers.TrainingArguments("unused", fsdp="full_shard", fsdp_config=fsdp_config, use_cpu=True, ddp_backend="gloo")
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState(cpu=True, backend="gloo")
    # as Accelerator() makes it; the Trainer's Accelerator finds and keeps it
    state = AcceleratorState(cpu=True, dynamo_plugin=TorchDynamoPlugin(), _from_accelerator=True)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState().distributed_type = DistributedType.FSDP
    return dict(fsdp="full_shard", fsdp_config=fsdp_config, use_cpu=True, ddp_backend="gloo",
                accelerator_config={"use_configured_state": True})


def make_args(mode: str, output_dir: str, **overrides):
    mode_settings = configure(mode)
    settings = dict(
        output_dir=output_dir, max_steps=6, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=1e-2, save_strategy="steps", save_steps=3, logging_strategy="steps", logging_steps=1,
        report_to=[], seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    settings.update(mode_settings)
    settings.update(overrides)
    return transformers.TrainingArguments(**settings)


def sharding_evidence(trainer) -> dict:
    """How the trained model's weights are held: DeepSpeed's ZeRO stage, ZeRO-3's partitioned
    parameters (empty outside a gather), FSDP2's DTensor parameters."""
    from torch.distributed.tensor import DTensor

    params = list(trainer.model.parameters())
    engine = trainer.model_wrapped
    return {
        "zero_stage": engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None,
        "partitioned": sum(hasattr(p, "ds_id") and p.data.numel() == 0 for p in params),
        "dtensors": sum(isinstance(p, DTensor) for p in params),
        "parameters": len(params),
    }


def run_trainer(mode: str, out: str, rank: int, world: int) -> dict:
    settings = mode
    data = make_data()
    result = {}

    def losses(trainer):
        return [h["loss"] for h in trainer.state.log_history if "loss" in h]

    # an uninterrupted run
    straight = AdapterTrainer(model=make_model(dropout=0.1), args=make_args(settings, f"{out}/straight"), train_dataset=data)
    straight.train()
    straight.save_model(f"{out}/straight/final")
    result["sharding"] = sharding_evidence(straight)
    result["straight_losses"] = losses(straight)
    # the same run killed after step 3 and resumed from checkpoint-3 on a model that starts elsewhere
    crashed = AdapterTrainer(
        model=make_model(dropout=0.1), args=make_args(settings, f"{out}/resumed"), train_dataset=data,
        callbacks=[StopAfter(3)],
    )
    crashed.train()
    result["crashed_checkpoints"] = sorted(os.listdir(f"{out}/resumed"))
    resumed = AdapterTrainer(model=make_model(dropout=0.1, seed=7), args=make_args(settings, f"{out}/resumed"), train_dataset=data)
    resumed.train(resume_from_checkpoint=f"{out}/resumed/checkpoint-3")
    resumed.save_model(f"{out}/resumed/final")
    result["resumed_losses"] = losses(resumed)
    result["resumed_step"] = resumed.state.global_step
    if mode == "zero3_persistent":  # only the resume (adapters that apply the layer's LayerNorm, kept whole)
        dist.barrier()
        result["straight_final"] = saved_weights(f"{out}/straight/final")
        result["resumed_final"] = saved_weights(f"{out}/resumed/final")
        return result

    # load_best_model_at_end: evaluations at steps 2, 4, 6 score 0.1, 0.9, 0.5; the best is step 4
    scores = iter([0.1, 0.9, 0.5])
    best = AdapterTrainer(
        model=make_model(), train_dataset=data, eval_dataset=data[:8],
        args=make_args(settings, f"{out}/best", eval_strategy="steps", eval_steps=2, save_steps=2,
                       load_best_model_at_end=True, metric_for_best_model="score", greater_is_better=True),
        compute_metrics=lambda prediction: {"score": next(scores)},
    )
    best.train()
    best.save_model(f"{out}/best/final")
    result["best_checkpoint"] = os.path.basename(best.state.best_model_checkpoint)
    dist.barrier()
    if rank == 0:
        for run in ("straight", "resumed", "best"):
            result[f"{run}_files"] = files_under(f"{out}/{run}")
            result[f"{run}_final"] = saved_weights(f"{out}/{run}/final")
        for step in (2, 4, 6):
            result[f"best_checkpoint_{step}"] = saved_weights(f"{out}/best/checkpoint-{step}")
        result["tensor_elements"] = tensor_elements(f"{out}/straight/checkpoint-3")
        model = make_model()
        result["trainable_elements"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result["frozen_elements"] = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        result["initial"] = trainable(make_model())
    return result


RUNS = {
    "ddp": run_ddp, "fully_shard": run_fully_shard, "zero2": run_trainer, "zero3": run_trainer,
    "zero3_persistent": run_trainer, "fsdp": run_trainer,
}


def main() -> None:
    """Run each mode of ``argv[1]`` (comma-separated) in this one process group (one start-up for
    all: importing torch, transformers and DeepSpeed is most of the time); rank 0 writes
    ``OUT/<mode>/result.json``, or ``{"error": ...}`` for a mode that raised."""
    import time
    import traceback

    modes, out = sys.argv[1].split(","), sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for mode in modes:
        folder = os.path.join(out, mode)
        os.makedirs(folder, exist_ok=True)
        started = time.perf_counter()
        try:
            run = RUNS[mode]
            result = run(mode, folder, rank, world) if run is run_trainer else run(folder, rank, world)
            result["world_size"] = world
        except Exception:
            result = {"error": traceback.format_exc()}
        result["seconds"] = time.perf_counter() - started
        if rank == 0:
            with open(os.path.join(folder, "result.json"), "w") as f:
                json.dump(result, f)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
