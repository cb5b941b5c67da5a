"""Hostile names and files (issue 20): names are never paths, saves never write outside the folder
given and are atomic, hostile or corrupt checkpoints raise a clear error naming the file, and every
failing call leaves the model as it was."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat

import pytest
import torch
from conftest import assert_unchanged, make_inputs, model_state, patched, perturb_adapter, run
from safetensors.torch import load_file, save_file

import adapters
from adapters import AdapterConfigError, AdapterLoadError

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")
PEFT_BERT = os.path.join(FIXTURES, "peft", "bert")

# the valid form every name error states
VALID_FORM = "letters, digits, '_' and '-'"
BAD_NAMES = ["../x", "/abs/path", "a/b", "a\\b", "a\x00b", "..", ".", "-lead", "", "a b", "a.b", "a,b", "to", "keys", 7]


@pytest.fixture
def sentinel(tmp_path):
    """A folder hostile names point into: it must stay empty."""
    folder = tmp_path / "sentinel"
    folder.mkdir()
    yield folder
    assert not os.listdir(folder), f"something was written outside the target folder: {os.listdir(folder)}"


def files_under(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, files in os.walk(folder) for f in files)


def no_temporary_files(folder) -> None:
    leftovers = [f for f in files_under(folder) if f.endswith(".tmp") or "/." in "/" + f]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def model_with(config="seq_bn", name="a", arch="bert", head="base", seed=0):
    model = patched(arch, head)
    model.add_adapter(name, config=config, set_active=True)
    perturb_adapter(model, name, seed=seed)
    return model


def edit_json(path, change) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data = change(data)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def set_key(key, value):
    def change(data):
        data[key] = value
        return data

    return change


def expect_refused(model, error, call, *patterns):
    """``call()`` raises ``error`` whose message contains every pattern; the model is unchanged."""
    before = model_state(model)
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for pattern in patterns:
        assert pattern in message, f"{pattern!r} not in {message!r}"
    assert_unchanged(model, before)
    return message


# -- 1. names are never paths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_add_adapter_refuses_names_that_are_not_names(name):
    model = model_with()
    message = expect_refused(model, AdapterConfigError, lambda: model.add_adapter(name), "Invalid adapter name", VALID_FORM)
    assert repr(name) in message and "adapter_name" in message


@pytest.mark.parametrize("name", ["a", "sst2", "lang_de", "task-1", "A_1-b", "x" * 128, "__loading__q", "default"])
def test_valid_names_are_accepted(name):
    model = patched()
    model.add_adapter(name)
    assert name in model.adapters_config.adapters


def test_load_as_path_is_refused(tmp_path, sentinel):
    source = model_with()
    source.save_adapter(str(tmp_path / "ckpt"), "a")
    target = model_with(name="existing")
    for bad in ["../x", str(sentinel / "x"), "a/b", "..", ""]:
        message = expect_refused(
            target, AdapterConfigError, lambda: target.load_adapter(str(tmp_path / "ckpt"), load_as=bad), "load_as", VALID_FORM
        )
        assert repr(bad) in message


def test_checkpoint_name_that_is_a_path_is_refused_and_save_all_stays_inside(tmp_path, sentinel):
    source = model_with()
    source.save_adapter(str(tmp_path / "ckpt"), "a")
    escaped = str(sentinel / "ESCAPED")
    edit_json(tmp_path / "ckpt" / "adapter_config.json", set_key("name", escaped))
    target = model_with(name="existing")
    message = expect_refused(
        target, AdapterLoadError, lambda: target.load_adapter(str(tmp_path / "ckpt")), "adapter_config.json", repr(escaped),
        VALID_FORM, "load_as",
    )
    assert "names are never paths" in message
    # under a valid name it loads, and save_all_adapters writes only inside "out"
    assert target.load_adapter(str(tmp_path / "ckpt"), load_as="ok") == "ok"
    out = tmp_path / "out"
    target.save_all_adapters(str(out))
    assert sorted(os.listdir(out)) == ["existing", "ok"]


def test_save_all_refuses_a_name_or_link_pointing_outside(tmp_path, sentinel):
    """Defence in depth: even a name that slipped into the registry, or a symbolic link in the
    target folder, cannot make a save write outside it."""
    model = model_with()
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(sentinel, out / "a")  # out/a -> sentinel
    with pytest.raises(AdapterConfigError, match="outside the folder"):
        model.save_all_adapters(str(out))
    # a symbolic link in place of a file of the checkpoint
    os.remove(out / "a")
    (out / "a").mkdir()
    os.symlink(sentinel / "weights", out / "a" / "adapter.safetensors")
    with pytest.raises(AdapterConfigError, match="outside the folder"):
        model.save_adapter(str(out / "a"), "a")
    os.remove(out / "a" / "adapter.safetensors")
    no_temporary_files(out)
    # a bad name in the registry (not reachable through the API): refused before anything is written
    registry = model.adapters_config
    registry.adapters[str(sentinel / "x")] = registry.adapters["a"]
    try:
        with pytest.raises(AdapterConfigError, match="Invalid adapter name"):
            model.save_all_adapters(str(tmp_path / "out2"))
        assert not (tmp_path / "out2").exists()
    finally:
        del registry.adapters[str(sentinel / "x")]


@pytest.mark.parametrize("name", ["../x", "../../escape", "a/b", ",a", "a,", "a,,b", "a.b,c"])
def test_fusion_name_that_is_not_a_name_is_refused(name):
    model = model_with()
    model.add_adapter("b")
    message = expect_refused(
        model, AdapterConfigError, lambda: model.add_adapter_fusion(["a", "b"], name=name), "Invalid fusion name", "'a,b'"
    )
    assert repr(name) in message
    model.add_adapter_fusion(["a", "b"], name="my_fusion")  # a valid custom name
    assert "my_fusion" in model.adapters_config.fusions


def test_fusion_checkpoint_name_that_is_a_path_is_refused(tmp_path, sentinel):
    model = model_with()
    model.add_adapter("b")
    model.add_adapter_fusion("a,b")
    model.save_adapter_fusion(str(tmp_path / "fusion"), "a,b")
    escaped = str(sentinel / "F")
    edit_json(tmp_path / "fusion" / "adapter_fusion_config.json", set_key("name", escaped))
    target = model_with()
    target.add_adapter("b")
    expect_refused(
        target, AdapterLoadError, lambda: target.load_adapter_fusion(str(tmp_path / "fusion")), "adapter_fusion_config.json",
        repr(escaped), "'a,b'",
    )
    expect_refused(
        target, AdapterConfigError, lambda: target.load_adapter_fusion(str(tmp_path / "fusion"), load_as="../f"), "load_as",
    )
    assert target.load_adapter_fusion(str(tmp_path / "fusion"), load_as="a,b") == "a,b"
    target.save_all_adapter_fusions(str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == ["a,b"]


def test_head_names_are_never_paths(tmp_path, sentinel):
    model = adapters.AutoAdapterModel.from_config(patched().config).eval()
    model.add_adapter("a")
    message = expect_refused(
        model, AdapterConfigError, lambda: model.add_classification_head(str(sentinel / "h"), num_labels=2), "Invalid head name",
        VALID_FORM,
    )
    assert "head_name" in message
    model.add_classification_head("a", num_labels=2)
    model.save_head(str(tmp_path / "head"), "a")
    escaped = str(sentinel / "H")
    edit_json(tmp_path / "head" / "head_config.json", set_key("name", escaped))
    other = adapters.AutoAdapterModel.from_config(patched().config).eval()
    expect_refused(other, AdapterLoadError, lambda: other.load_head(str(tmp_path / "head")), "head_config.json", repr(escaped))
    expect_refused(other, AdapterConfigError, lambda: other.load_head(str(tmp_path / "head"), load_as="../h"), "load_as")
    edit_json(tmp_path / "head" / "head_config.json", set_key("name", "a"))
    assert other.load_head(str(tmp_path / "head"), load_as="h") == "h"
    # save_all_heads: a symbolic link where a head's folder goes is refused
    out = tmp_path / "heads"
    out.mkdir()
    os.symlink(sentinel, out / "h")
    with pytest.raises(AdapterConfigError, match="outside the folder"):
        other.save_all_heads(str(out))
    os.remove(out / "h")
    other.save_all_heads(str(out))
    assert sorted(os.listdir(out)) == ["h"]


def test_module_dict_attribute_names_are_refused_clearly():
    model = model_with()
    for name in ("to", "keys", "forward", "training"):
        expect_refused(model, AdapterConfigError, lambda: model.add_adapter(name), "reserved", repr(name))


def test_embedding_names_are_checked():
    model = patched("bert", "mlm")

    class Tokenizer:
        pad_token_id = 0

        def __len__(self):
            return 10

    with pytest.raises(AdapterConfigError, match="Invalid embedding name"):
        model.add_embeddings("../e", Tokenizer())


def test_loading_under_any_valid_name_never_collides_with_the_staging_name(tmp_path):
    """Adapters are built under a staging name users cannot give: a user adapter named like the
    old staging name and ``load_as="q"`` both work."""
    source = model_with()
    source.save_adapter(str(tmp_path / "ckpt"), "a")
    target = patched()
    target.add_adapter("__loading__q")
    assert target.load_adapter(str(tmp_path / "ckpt"), load_as="q") == "q"
    assert target.load_adapter(str(tmp_path / "ckpt"), load_as="__loading__a") == "__loading__a"
    assert sorted(target.adapters_config.adapters) == ["__loading__a", "__loading__q", "q"]
    assert not any("~" in name for name, _ in target.named_modules())


def _trainable_bert():
    """A tiny BertForSequenceClassification with adapter "task" in training."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    model = transformers.BertForSequenceClassification(config)
    adapters.init(model)
    model.add_adapter("task")
    model.train_adapter("task")
    return model


def test_trainer_checkpoints_stay_inside_output_dir(tmp_path, sentinel):
    import transformers

    from adapters import AdapterTrainer

    model = _trainable_bert()
    data = [{"input_ids": torch.randint(5, 99, (8,)), "labels": i % 2} for i in range(8)]
    output_dir = tmp_path / "run"
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=4, save_steps=1, save_strategy="steps",
        logging_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
    )
    AdapterTrainer(model=model, args=args, train_dataset=data).train()
    written = files_under(tmp_path)
    assert written and all(f.startswith("run" + os.sep) for f in written), written
    assert "run/checkpoint-1/task/adapter_config.json" in written
    no_temporary_files(output_dir)
    # a checkpoint folder whose adapter config carries a path as its name: refused on resume
    edit_json(output_dir / "checkpoint-2" / "task" / "adapter_config.json", set_key("name", str(sentinel / "x")))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterLoadError, match="adapter_config.json: invalid adapter name"):
        adapters.trainer.load_checkpoint_weights(model, str(output_dir / "checkpoint-2"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -- 2. atomic checkpoints ------------------------------------------------------------------------------------
def partial_then_fail(real):
    """A writer that writes part of the file, then fails as a full disk does."""

    def writer(*args, **kwargs):
        target = args[1] if len(args) > 1 else kwargs.get("filename", kwargs.get("f"))
        if isinstance(target, (str, os.PathLike)):
            with open(target, "wb") as f:
                f.write(b"\x00partial")
        else:  # a file object (json.dump)
            target.write('{"partial": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    return writer


def snapshot_folder(folder) -> dict:
    return {f: (folder / f).read_bytes() for f in files_under(folder)}


@pytest.mark.parametrize("fail", ["safetensors", "torch.save", "json.dump"])
def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch, fail):
    import safetensors.torch

    folder = tmp_path / "ckpt"
    old = model_with(seed=1)
    old.save_adapter(str(folder), "a", use_safetensors=fail != "torch.save")
    (folder / "model.safetensors").write_bytes(b"a full model, not ours")
    inputs = make_inputs("bert")
    expected = run(old, inputs)
    before = snapshot_folder(folder)

    new = model_with(seed=2)
    targets = {"safetensors": (safetensors.torch, "save_file"), "torch.save": (torch, "save"), "json.dump": (json, "dump")}
    module, attribute = targets[fail]
    monkeypatch.setattr(module, attribute, partial_then_fail(getattr(module, attribute)))
    with pytest.raises(OSError) as info:
        new.save_adapter(str(folder), "a", use_safetensors=fail != "torch.save")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()

    assert snapshot_folder(folder) == before  # nothing changed, no temporary file left
    no_temporary_files(folder)
    fresh = patched()
    fresh.load_adapter(str(folder), set_active=True)
    assert torch.equal(run(fresh, inputs), expected)


def test_failed_head_write_leaves_adapter_and_head_as_they_were(tmp_path, monkeypatch):
    import safetensors.torch

    model = adapters.AutoAdapterModel.from_config(patched().config).eval()
    model.add_adapter("a")
    model.add_classification_head("a", num_labels=2)
    model.save_adapter(str(tmp_path / "a"), "a")
    before = snapshot_folder(tmp_path / "a")
    assert sorted(before) == ["adapter.safetensors", "adapter_config.json", "head_config.json", "model_head.safetensors"]
    perturb_adapter(model, "a")
    calls = []
    real = safetensors.torch.save_file

    def second_fails(state, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the head's weights, after the adapter's were written
            return partial_then_fail(real)(state, path)
        return real(state, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", second_fails)
    with pytest.raises(OSError):
        model.save_adapter(str(tmp_path / "a"), "a")
    monkeypatch.undo()
    assert snapshot_folder(tmp_path / "a") == before
    with pytest.raises(OSError):  # save_head on its own, too
        monkeypatch.setattr(safetensors.torch, "save_file", partial_then_fail(real))
        model.save_head(str(tmp_path / "a"), "a")
    monkeypatch.undo()
    assert snapshot_folder(tmp_path / "a") == before


def test_failed_fusion_save_leaves_the_previous_fusion(tmp_path, monkeypatch):
    import safetensors.torch

    model = model_with()
    model.add_adapter("b")
    model.add_adapter_fusion("a,b")
    model.save_adapter_fusion(str(tmp_path / "f"), "a,b")
    before = snapshot_folder(tmp_path / "f")
    monkeypatch.setattr(safetensors.torch, "save_file", partial_then_fail(safetensors.torch.save_file))
    with pytest.raises(OSError):
        model.save_adapter_fusion(str(tmp_path / "f"), "a,b")
    monkeypatch.setattr(json, "dump", partial_then_fail(json.dump))
    with pytest.raises(OSError):
        model.save_adapter_fusion(str(tmp_path / "f"), "a,b", use_safetensors=False)
    monkeypatch.undo()
    assert snapshot_folder(tmp_path / "f") == before
    target = model_with()
    target.add_adapter("b")
    assert target.load_adapter_fusion(str(tmp_path / "f")) == "a,b"


def test_weights_are_moved_into_place_before_the_config(tmp_path, monkeypatch):
    model = model_with()
    order = []
    real = os.replace

    def recording(source, target):
        order.append(os.path.basename(target))
        return real(source, target)

    monkeypatch.setattr(os, "replace", recording)
    model.save_adapter(str(tmp_path / "a"), "a")
    assert order == ["adapter.safetensors", "adapter_config.json"]


@pytest.mark.parametrize("first_safetensors", [True, False])
def test_saving_in_the_other_format_removes_the_stale_weights(tmp_path, first_safetensors):
    folder = tmp_path / "a"
    old = model_with(seed=1)
    old.save_adapter(str(folder), "a", use_safetensors=first_safetensors)
    (folder / "config.json").write_text("{}")  # a full model's files stay
    (folder / "notes.txt").write_text("mine")
    new = model_with(seed=2)
    new.save_adapter(str(folder), "a", use_safetensors=not first_safetensors)
    weights = "adapter.safetensors" if not first_safetensors else "pytorch_adapter.bin"
    assert sorted(os.listdir(folder)) == sorted(["adapter_config.json", weights, "config.json", "notes.txt"])
    inputs = make_inputs("bert")
    fresh = patched()
    fresh.load_adapter(str(folder), set_active=True)
    assert torch.equal(run(fresh, inputs), run(new, inputs))


def test_saved_files_get_the_usual_permissions(tmp_path):
    """The temporary files are created as ``open`` creates files (not 0600 as ``mkstemp`` would)."""
    model = model_with()
    model.save_adapter(str(tmp_path / "a"), "a", use_safetensors=False)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("adapter_config.json", "pytorch_adapter.bin"):
        assert stat.S_IMODE(os.stat(tmp_path / "a" / name).st_mode) == 0o666 & ~umask


def test_failed_trainer_checkpoint_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import safetensors.torch
    import transformers

    from adapters import AdapterTrainer

    model = _trainable_bert()
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = AdapterTrainer(model=model, args=args)
    trainer._save(str(tmp_path / "run" / "ckpt"))
    before = snapshot_folder(tmp_path / "run" / "ckpt")
    assert "trainable_weights.safetensors" in before and "task/adapter.safetensors" in before
    monkeypatch.setattr(safetensors.torch, "save_file", partial_then_fail(safetensors.torch.save_file))
    with pytest.raises(OSError):
        trainer._save(str(tmp_path / "run" / "ckpt"))
    monkeypatch.undo()
    assert snapshot_folder(tmp_path / "run" / "ckpt") == before


# -- 3. hostile and corrupt checkpoint files ------------------------------------------------------------------
@pytest.mark.parametrize(
    "value,dtype",
    [(float("nan"), torch.float32), (float("inf"), torch.float32), (-float("inf"), torch.float16), (3, torch.int64), (1, torch.bool)],
)
def test_non_finite_or_non_float_weights_are_refused_unless_allowed(tmp_path, value, dtype):
    model_with().save_adapter(str(tmp_path / "a"), "a")
    path = tmp_path / "a" / "adapter.safetensors"
    state = load_file(path)
    key = sorted(state)[0]
    bad = state[key].clone()
    bad.view(-1)[0] = value if dtype.is_floating_point else 0
    state[key] = bad.to(dtype) if dtype.is_floating_point else torch.full_like(bad, value, dtype=dtype)
    save_file(state, path)
    target = model_with(name="existing")
    message = expect_refused(target, AdapterLoadError, lambda: target.load_adapter(str(tmp_path / "a")), str(path), repr(key), "allow_non_finite=True")
    assert ("non-finite" in message) if dtype.is_floating_point else (str(dtype) in message)
    assert target.load_adapter(str(tmp_path / "a"), allow_non_finite=True) == "a"


def test_non_finite_head_and_fusion_weights_are_refused(tmp_path):
    model = adapters.AutoAdapterModel.from_config(patched().config).eval()
    model.add_adapter("a")
    model.add_adapter("b")
    model.add_adapter_fusion("a,b")
    model.add_classification_head("a", num_labels=2)
    model.save_head(str(tmp_path / "head"), "a")
    model.save_adapter_fusion(str(tmp_path / "fusion"), "a,b")
    for file in (tmp_path / "head" / "model_head.safetensors", tmp_path / "fusion" / "model_adapter_fusion.safetensors"):
        state = load_file(file)
        state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
        save_file(state, file)
    other = adapters.AutoAdapterModel.from_config(patched().config).eval()
    other.add_adapter("a")
    other.add_adapter("b")
    expect_refused(other, AdapterLoadError, lambda: other.load_head(str(tmp_path / "head")), "model_head.safetensors", "non-finite")
    expect_refused(
        other, AdapterLoadError, lambda: other.load_adapter_fusion(str(tmp_path / "fusion")), "model_adapter_fusion.safetensors", "non-finite"
    )
    assert other.load_adapter_fusion(str(tmp_path / "fusion"), allow_non_finite=True) == "a,b"


@pytest.mark.parametrize("content,kind", [([1, 2], "array"), ("seq_bn", "string"), (None, "null"), (3, "number")])
def test_config_file_that_is_not_an_object_is_refused(tmp_path, content, kind):
    model_with().save_adapter(str(tmp_path / "a"), "a")
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(content))
    target = model_with(name="existing")
    expect_refused(target, AdapterLoadError, lambda: target.load_adapter(str(tmp_path / "a")), "adapter_config.json", f"JSON {kind}", "JSON object")


def test_config_string_is_never_read_as_a_path(tmp_path, sentinel):
    model_with().save_adapter(str(tmp_path / "a"), "a")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"architecture": "lora", "r": 4}))
    target = model_with(name="existing")
    # a path outside the folder, the file itself (AdapterConfig.load recursed on it), a relative path
    for value in [str(outside), str(tmp_path / "a" / "adapter_config.json"), "../outside.json"]:
        edit_json(tmp_path / "a" / "adapter_config.json", set_key("config", value))
        message = expect_refused(target, AdapterLoadError, lambda: target.load_adapter(str(tmp_path / "a")), "adapter_config.json", repr(value), "config id", "seq_bn")
        assert "never read from another file" in message
    # a union config whose part is a path
    edit_json(tmp_path / "a" / "adapter_config.json", set_key("config", {"architecture": "union", "configs": [str(outside)]}))
    expect_refused(target, AdapterLoadError, lambda: target.load_adapter(str(tmp_path / "a")), '"configs"][0]', repr(str(outside)))
    # a config id is fine (the weights then decide)
    edit_json(tmp_path / "a" / "adapter_config.json", set_key("config", "seq_bn"))
    assert target.load_adapter(str(tmp_path / "a")) == "a"


def test_hidden_size_of_the_wrong_type_is_a_clear_error(tmp_path):
    model_with().save_adapter(str(tmp_path / "a"), "a")
    edit_json(tmp_path / "a" / "adapter_config.json", set_key("hidden_size", "32"))
    target = model_with(name="existing")
    message = expect_refused(target, AdapterLoadError, lambda: target.load_adapter(str(tmp_path / "a")), "adapter_config.json", "\"hidden_size\" must be an integer", "'32'")
    assert "saved for hidden size" not in message


def test_fusion_adapter_names_as_a_string_are_split_at_commas(tmp_path):
    model = model_with(name="good")
    model.add_adapter("gb")
    model.add_adapter_fusion("good,gb")
    model.save_adapter_fusion(str(tmp_path / "f"), "good,gb")
    edit_json(tmp_path / "f" / "adapter_fusion_config.json", set_key("adapter_names", "good,gb"))
    target = model_with(name="good")
    target.add_adapter("gb")
    assert target.load_adapter_fusion(str(tmp_path / "f")) == "good,gb"
    assert target.adapters_config.fusions["good,gb"][1] == ("good", "gb")
    target.delete_adapter_fusion("good,gb")
    for bad in (5, {"a": 1}, [1, 2], ["good", "../x"]):
        edit_json(tmp_path / "f" / "adapter_fusion_config.json", set_key("adapter_names", bad))
        expect_refused(target, AdapterLoadError, lambda: target.load_adapter_fusion(str(tmp_path / "f")), "adapter_fusion_config.json")


def test_errors_while_building_the_adapter_name_the_file(tmp_path):
    model_with().save_adapter(str(tmp_path / "a"), "a")
    edit_json(tmp_path / "a" / "adapter_config.json", lambda d: {**d, "config": {**d["config"], "leave_out": [9]}})
    target = model_with(name="existing")
    expect_refused(target, AdapterLoadError, lambda: target.load_adapter(str(tmp_path / "a")), "adapter_config.json", "leave_out", "9")


def test_fusion_checkpoint_over_lora_adapters_names_the_file(tmp_path):
    model = model_with()
    model.add_adapter("b")
    model.add_adapter_fusion("a,b")
    model.save_adapter_fusion(str(tmp_path / "f"), "a,b")
    target = model_with(config="lora")
    target.add_adapter("b", config="lora")
    expect_refused(target, AdapterLoadError, lambda: target.load_adapter_fusion(str(tmp_path / "f")), "adapter_fusion_config.json", "Cannot fuse adapter")


def fixture_base():
    from transformers import AutoModel

    model = AutoModel.from_pretrained(os.path.join(PEFT_BERT, "base")).eval()
    adapters.init(model)
    return model


def test_peft_checkpoint_whose_target_modules_match_nothing_names_the_file(tmp_path):
    shutil.copytree(os.path.join(PEFT_BERT, "lora"), tmp_path / "lora")
    edit_json(tmp_path / "lora" / "adapter_config.json", set_key("target_modules", ["nope"]))
    target = fixture_base()
    expect_refused(target, AdapterLoadError, lambda: target.load_adapter(str(tmp_path / "lora")), "adapter_config.json", "nope")


# -- 4. nothing half-created --------------------------------------------------------------------------------
def test_lora_config_with_bottleneck_weights_leaves_no_containers(tmp_path):
    model_with().save_adapter(str(tmp_path / "a"), "a")
    edit_json(tmp_path / "a" / "adapter_config.json", set_key("config", {"architecture": "lora"}))
    target = patched()
    expect_refused(target, AdapterLoadError, lambda: target.load_adapter(str(tmp_path / "a")), "adapter.safetensors", "lacks")


def test_peft_ia3_config_with_lora_weights_leaves_no_containers(tmp_path):
    os.makedirs(tmp_path / "mixed")
    shutil.copy(os.path.join(PEFT_BERT, "ia3", "adapter_config.json"), tmp_path / "mixed")
    shutil.copy(os.path.join(PEFT_BERT, "lora", "adapter_model.safetensors"), tmp_path / "mixed")
    target = fixture_base()
    expect_refused(target, AdapterLoadError, lambda: target.load_adapter(str(tmp_path / "mixed")), "adapter_model.safetensors")


def test_failed_save_into_a_new_folder_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    model = model_with()
    monkeypatch.setattr(safetensors.torch, "save_file", partial_then_fail(safetensors.torch.save_file))
    with pytest.raises(OSError):
        model.save_adapter(str(tmp_path / "new"), "a")
    assert not (tmp_path / "new").exists()


def test_nested_config_paths_and_bad_head_configs_are_refused(tmp_path):
    model_with().save_adapter(str(tmp_path / "a"), "a")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"architecture": "bottleneck"}))
    edit_json(tmp_path / "a" / "adapter_config.json", set_key("config", {"config": str(outside)}))
    target = model_with(name="existing")
    expect_refused(target, AdapterLoadError, lambda: target.load_adapter(str(tmp_path / "a")), "adapter_config.json", repr(str(outside)))

    model = adapters.AutoAdapterModel.from_config(patched().config).eval()
    model.add_classification_head("h", num_labels=2)
    model.save_head(str(tmp_path / "head"), "h")
    other = adapters.AutoAdapterModel.from_config(patched().config).eval()
    for bad in ("classification", None, [1]):
        edit_json(tmp_path / "head" / "head_config.json", set_key("config", bad))
        expect_refused(other, AdapterLoadError, lambda: other.load_head(str(tmp_path / "head")), "head_config.json", "head_type")


@pytest.mark.parametrize("leave_out", [1, "0", [True], [0.5]])
def test_leave_out_argument_of_the_wrong_type_is_refused(tmp_path, leave_out):
    model_with().save_adapter(str(tmp_path / "a"), "a")
    target = model_with(name="existing")
    expect_refused(target, AdapterConfigError, lambda: target.load_adapter(str(tmp_path / "a"), leave_out=leave_out), "leave_out", repr(leave_out))
