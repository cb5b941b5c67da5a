"""Distributed training and saving, two processes under torchrun (gloo, CPU): DDP, save_adapter on an
FSDP2 ``fully_shard`` model, and AdapterTrainer with DeepSpeed ZeRO-2, ZeRO-3 and accelerate's FSDP2.

The scenarios run in one torchrun launch (tests/distributed/scenarios.py; start-up is most of the
time); each test asserts on what rank 0 measured for its scenario.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import IN_CI

HERE = os.path.dirname(__file__)
SCRIPT = os.path.join(HERE, "distributed", "scenarios.py")
TRAINER_MODES = ("zero2", "zero3", "fsdp")


def _available_modes() -> tuple[list[str], str]:
    """The scenarios this platform can run, and why the others cannot."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        return [], "torch.distributed with the gloo backend is not available on this platform"
    modes = ["ddp", "fully_shard", "fsdp"]
    if importlib.util.find_spec("deepspeed") is not None:
        modes[2:2] = ["zero2", "zero3", "zero3_persistent"]
    return modes, "deepspeed is not installed"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    modes, why_not = _available_modes()
    if not modes:
        if IN_CI:
            pytest.fail(why_not)
        pytest.skip(why_not)
    out = tmp_path_factory.mktemp("distributed")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT, ",".join(modes), str(out)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    found = {}
    for mode in modes:
        path = out / mode / "result.json"
        found[mode] = json.loads(path.read_text()) if path.is_file() else {"error": f"no result; torchrun exited {run.returncode}:\n{run.stderr[-4000:]}"}
    found["_out"], found["_why_not"] = out, why_not
    return found


def result_of(results, mode: str) -> dict:
    if mode not in results:
        if IN_CI:
            pytest.fail(results["_why_not"])
        pytest.skip(results["_why_not"])
    result = results[mode]
    assert "error" not in result, result["error"]
    assert result["world_size"] == 2
    return result


def largest_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((torch.tensor(a[k]) - torch.tensor(b[k])).abs().max().item() for k in a)


def test_ddp_ranks_agree_and_equal_one_process_on_the_full_batch(results):
    result = result_of(results, "ddp")
    for case, trained in (("adapter", 10), ("fusion", 12)):  # the adapter (+ fusion) and the classifier
        ranks, reference, initial = result[case]["ranks"], result[case]["reference"], result[case]["initial"]
        assert len(reference) == trained
        assert ranks[0] == ranks[1], case  # bit for bit
        assert largest_difference(ranks[0], reference) <= 6e-8, case
        common = {k: v for k, v in initial.items() if k in reference}
        assert largest_difference(common, {k: reference[k] for k in common}) > 1e-2, case  # training moved them


def test_save_adapter_on_a_fully_shard_model_equals_the_unsharded_files(results):
    result = result_of(results, "fully_shard")
    assert result["dtensor_parameters"] == 67  # every parameter is a DTensor shard
    # every rank called save_adapter / save_adapter_fusion; rank 0 wrote the gathered tensors
    assert sorted(result["sharded"]) == sorted(result["unsharded"])
    assert {key.split(":")[0] for key in result["sharded"]} == {
        "task/adapter.safetensors", "task/model_head.safetensors", "task,other/model_adapter_fusion.safetensors",
    }
    assert result["sharded"] == result["unsharded"]  # bit for bit
    # a training step on the shards, saved with save_all_adapters, equals one process on the full batch
    assert len(result["trained"]) == len(result["trained_reference"]) > 0
    assert largest_difference(result["trained"], result["trained_reference"]) <= 6e-8


CHECKPOINT_FILES = {
    "task/adapter.safetensors", "task/adapter_config.json", "task/head_config.json", "task/model_head.safetensors",
    "trainable_weights.safetensors", "trainer_state.json", "training_args.bin", "rng_state_0.pth", "rng_state_1.pth",
    "scheduler.pt",
}
ENGINE_FILES = {
    "zero2": {
        "latest", "zero_to_fp32.py", "zero_to_torch.py", "global_step3/mp_rank_00_model_states.pt",
        "global_step3/zero_pp_rank_0_mp_rank_00_optim_states.pt", "global_step3/zero_pp_rank_1_mp_rank_00_optim_states.pt",
    },
    "zero3": {
        "latest", "zero_to_fp32.py", "zero_to_torch.py",
        "global_step3/zero_pp_rank_0_mp_rank_00_model_states.pt", "global_step3/zero_pp_rank_1_mp_rank_00_model_states.pt",
        "global_step3/zero_pp_rank_0_mp_rank_00_optim_states.pt", "global_step3/zero_pp_rank_1_mp_rank_00_optim_states.pt",
    },
    "fsdp": {"optimizer.bin"},
}


@pytest.mark.parametrize("mode", TRAINER_MODES)
def test_adapter_trainer_sharded(results, mode):
    result = result_of(results, mode)
    sharding = result["sharding"]
    if mode == "zero2":
        assert sharding["zero_stage"] == 2
    elif mode == "zero3":  # every parameter partitioned over the ranks
        assert sharding["zero_stage"] == 3 and sharding["partitioned"] == sharding["parameters"] == 49
    else:  # accelerate's FSDP2: every parameter a DTensor shard
        assert sharding["dtensors"] == sharding["parameters"] == 49

    # checkpoints: the adapter layout plus the engine's optimizer state, no full-model weights
    files = [f[len("checkpoint-3/"):] for f in result["straight_files"] if f.startswith("checkpoint-3/")]
    assert set(files) == CHECKPOINT_FILES | ENGINE_FILES[mode]
    assert {f for f in result["straight_files"] if f.startswith("final/")} == {
        "final/task/adapter.safetensors", "final/task/adapter_config.json", "final/task/head_config.json",
        "final/task/model_head.safetensors", "final/trainable_weights.safetensors", "final/training_args.bin",
    }
    trainable, frozen = result["trainable_elements"], result["frozen_elements"]
    assert frozen > 50 * trainable
    # the engine's files hold the trainable weights (ZeRO-2's model states: exactly those) and their optimizer
    # state (two Adam moments, a rank's fp32 partition, step counters), nothing of the frozen base
    elements = result["tensor_elements"]
    assert elements and all(n <= 2 * trainable + 16 for n in elements.values()), elements
    if mode == "zero2":
        assert elements["global_step3/mp_rank_00_model_states.pt"] == trainable
    final = result["straight_final"]
    adapter_keys = [k for k in final if k.startswith("task/adapter.safetensors:")]
    assert len(adapter_keys) == 8 and all(".adapters.task." in k for k in adapter_keys)
    assert sum(torch.tensor(final[k]).numel() for k in final if k.startswith("trainable_weights.safetensors:")) == 66

    # resuming from checkpoint-3 (on a model that starts elsewhere) gives the uninterrupted run
    assert result["crashed_checkpoints"] == ["checkpoint-3"]
    assert result["resumed_step"] == 6
    assert len(result["resumed_losses"]) == 6
    torch.testing.assert_close(torch.tensor(result["resumed_losses"]), torch.tensor(result["straight_losses"]), rtol=0, atol=1e-6)
    assert largest_difference(result["resumed_final"], final) <= 1e-6

    # load_best_model_at_end restores checkpoint-4 (scores 0.1, 0.9, 0.5 at steps 2, 4, 6)
    assert result["best_checkpoint"] == "checkpoint-4"
    best_final = {k: v for k, v in result["best_final"].items() if not k.startswith("training_args")}
    assert largest_difference(best_final, result["best_checkpoint_4"]) == 0.0
    assert largest_difference(best_final, result["best_checkpoint_6"]) > 1e-3  # the comparison means something


def test_zero3_resume_with_parameters_kept_whole(results):
    """Under DeepSpeed's default stage3_param_persistence_threshold most of the tiny model's
    parameters stay whole; a seq_bn adapter applies the layer's LayerNorm from the sub-block before it, which must
    go through the norm's hooks (ZeRO-3 fetches the norm's weights there) or the resumed run's
    first backward fails on an empty LayerNorm weight."""
    result = result_of(results, "zero3_persistent")
    sharding = result["sharding"]
    assert sharding["zero_stage"] == 3 and sharding["partitioned"] < sharding["parameters"]  # some kept whole
    assert result["resumed_step"] == 6
    torch.testing.assert_close(torch.tensor(result["resumed_losses"]), torch.tensor(result["straight_losses"]), rtol=0, atol=1e-6)
    assert len(result["straight_final"]) == 12  # 8 adapter tensors; the classifier in the head file and beside
    assert largest_difference(result["resumed_final"], result["straight_final"]) <= 1e-6


@pytest.mark.parametrize("mode", TRAINER_MODES)
def test_sharded_run_saves_loadable_adapter_folders(results, mode):
    """The adapter folder a sharded run wrote loads with load_adapter into a plain model."""
    result_of(results, mode)
    sys.path.insert(0, os.path.join(HERE, "distributed"))
    try:
        from scenarios import make_model
    finally:
        sys.path.remove(os.path.join(HERE, "distributed"))
    model = make_model(seed=5)
    model.delete_adapter("task")
    model.load_adapter(str(results["_out"] / mode / "straight" / "final" / "task"), set_active=True)
    saved = {k.split(":", 1)[1]: v for k, v in results[mode]["straight_final"].items() if k.startswith("task/adapter.safetensors:")}
    params = dict(model.named_parameters())
    assert len(saved) == 8
    for key, value in saved.items():
        assert torch.equal(params[key], torch.tensor(value)), key


def test_saving_zero3_partitions_without_gathering_them_is_refused(tmp_path):
    """A ZeRO-3 parameter outside GatheredParameters is an empty placeholder (DeepSpeed keeps the
    whole size in ``ds_numel``): saving it would write empty tensors, so the save refuses."""
    from adapters.errors import AdapterConfigError

    sys.path.insert(0, os.path.join(HERE, "distributed"))
    try:
        from scenarios import make_model
    finally:
        sys.path.remove(os.path.join(HERE, "distributed"))
    model = make_model()
    name, param = next((k, p) for k, p in model.named_parameters() if ".adapters.task." in k)
    param.ds_numel = param.numel() + 7  # what DeepSpeed records for a partitioned parameter
    target = tmp_path / "task"
    with pytest.raises(AdapterConfigError) as error:
        model.save_adapter(str(target), "task")
    assert str(error.value).startswith(f"Cannot save {str(target)!r}: 1 weight(s) are DeepSpeed ZeRO-3 partitions, e.g. [")
    assert "deepspeed.zero.GatheredParameters" in str(error.value)
    assert not target.exists()  # nothing written
    del param.ds_numel
    model.save_adapter(str(target), "task")
    assert sorted(os.listdir(target)) == ["adapter.safetensors", "adapter_config.json", "head_config.json", "model_head.safetensors"]
