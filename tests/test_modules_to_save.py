"""modules_to_save: an adapter's own trainable copy of whole modules (heads, embeddings), used when
the adapter is active, composed per batch row, saved, merged and exchanged with PEFT."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import checked_peft_output, make_inputs, patched, require, run

from adapters import AdapterSetup, BatchSplit, LoRAConfig, Parallel, Split, Stack

# the module holding the head of each (arch, head) pair, and the base-model output it reads
HEADS = [("bert", "seq_cls", "classifier"), ("llama", "clm", "lm_head"), ("qwen2", "seq_cls", "score")]


def _with_copies(arch, head, module, names=("a", "b")):
    model = patched(arch, head)
    for i, name in enumerate(names):
        model.add_adapter(name, LoRAConfig(r=4, modules_to_save=[module], init_weights_seed=i))
        with torch.no_grad():
            for param in model.get_submodule(module).modules_to_save[name].parameters():
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(10 + i)))
    return model


def _manual_head(model, module_name, name, inputs):
    """The copy of adapter ``name`` applied to what the original head receives under ``name``."""
    seen = {}
    original = model.get_submodule(module_name)
    hook = original.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    try:
        with AdapterSetup(name), torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    with torch.no_grad():
        return original.modules_to_save[name](seen["x"])


@pytest.mark.parametrize("arch,head,module", HEADS)
def test_copy_runs_only_while_its_adapter_is_active(arch, head, module):
    inputs = make_inputs(arch)
    plain = patched(arch, head)
    model = _with_copies(arch, head, module)
    copy = model.get_submodule(module).modules_to_save["a"]
    assert type(copy) is type(plain.get_submodule(module))  # a plain module, not a host
    torch.testing.assert_close(run(model, inputs), run(plain, inputs))  # nothing active: the original
    if head == "clm":  # logits are the head's output: compare with the copy applied by hand
        torch.testing.assert_close(run(model, inputs, "a"), _manual_head(model, module, "a", inputs))
    # the copy's effect is exactly that of the original holding the copy's weights
    reference = patched(arch, head)
    reference.add_adapter("a", LoRAConfig(r=4, init_weights_seed=0))
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if "modules_to_save" not in k}, strict=False)
    reference.get_submodule(module).load_state_dict(copy.state_dict())
    torch.testing.assert_close(run(model, inputs, "a"), run(reference, inputs, "a"), atol=1e-6, rtol=0)
    assert not torch.allclose(run(model, inputs, "a"), run(model, inputs, "b"))


@pytest.mark.parametrize("arch,head,module", HEADS)
def test_parallel_and_batchsplit_give_each_branch_its_own_copy(arch, head, module):
    model = _with_copies(arch, head, module)
    model.add_adapter("c", LoRAConfig(r=4, init_weights_seed=5))  # no copy: the original runs for its rows
    inputs = make_inputs(arch, batch=2)
    alone = {n: run(model, inputs, n) for n in ("a", "b", "c")}
    out = run(model, inputs, Parallel("a", "b", "c"))
    for i, name in enumerate(("a", "b", "c")):
        torch.testing.assert_close(out[2 * i : 2 * i + 2], alone[name], atol=1e-5, rtol=0)
    split = run(model, inputs, BatchSplit("b", "a", batch_sizes=[1, 1]))
    torch.testing.assert_close(split[:1], alone["b"][:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(split[1:], alone["a"][1:], atol=1e-5, rtol=0)


def test_a_block_may_hold_one_copy_per_module_per_row():
    model = _with_copies("bert", "seq_cls", "classifier")
    model.add_adapter("c", LoRAConfig(r=4))
    inputs = make_inputs("bert")
    model.set_active_adapters(Stack("c", "a"))  # one owner in the Stack: its copy
    stacked = run(model, inputs)
    model.set_active_adapters(Stack("c", Parallel("a", "b")))  # one owner per branch
    for bad, reason in [
        (Stack("a", "b"), "both have a copy of module 'classifier'"),
        (Stack("a", Parallel("b", "c")), "both have a copy"),
        (Split("a", "c", splits=[4, 8]), "cuts the sequence"),
    ]:
        with pytest.raises(ValueError, match=reason):
            model.set_active_adapters(bad)
    model.set_active_adapters(Stack("c", "a"))
    torch.testing.assert_close(run(model, inputs), stacked)


def test_train_adapter_trains_the_active_copy_only():
    model = _with_copies("bert", "seq_cls", "classifier")
    model.train_adapter("a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.modules_to_save.a.weight", "classifier.modules_to_save.a.bias"} <= trainable
    assert not {"classifier.weight", "classifier.modules_to_save.b.weight"} & trainable
    assert all(".loras.a." in n or ".modules_to_save.a." in n for n in trainable)
    inputs = make_inputs("bert")
    model(**inputs).logits.sum().backward()
    assert model.classifier.modules_to_save["a"].weight.grad is not None
    assert model.classifier.weight.grad is None
    rows = {r["name"]: r for r in model.adapter_summary(as_dict=True)}
    copy_params = 32 * 3 + 3
    lora_params = 2 * 2 * (4 * 32 + 32 * 4)
    assert rows["a"]["#param"] == lora_params + copy_params
    assert rows["Full model"]["#param"] == sum(p.numel() for p in model.bert.parameters()) - 2 * lora_params


def test_adapterhub_round_trip_and_mismatched_model(tmp_path):
    from safetensors.torch import load_file

    model = _with_copies("bert", "seq_cls", "classifier")
    inputs = make_inputs("bert")
    expected = run(model, inputs, "a")
    model.save_adapter(str(tmp_path / "a"), "a")
    keys = load_file(str(tmp_path / "a" / "adapter.safetensors"))
    assert {"classifier.modules_to_save.a.weight", "classifier.modules_to_save.a.bias"} <= set(keys)
    fresh = patched("bert", "seq_cls")
    fresh.load_adapter(str(tmp_path / "a"), set_active=True)
    torch.testing.assert_close(run(fresh, inputs), expected)
    bare = patched("bert", "base")
    with pytest.raises(ValueError, match=r"modules_to_save=\['classifier'\] matches no module"):
        bare.load_adapter(str(tmp_path / "a"))
    assert not bare.adapters_config.adapters


def test_merge_and_unload_keeps_the_merged_adapters_copy():
    model = _with_copies("bert", "seq_cls", "classifier")
    inputs = make_inputs("bert")
    with pytest.raises(ValueError, match="each has its own copy of module 'classifier'"):
        model.merge_and_unload(adapter_names=["a", "b"])
    assert type(model.classifier).__name__ == "LinearWithAdapters"  # unchanged
    model.set_active_adapters("b")
    expected = run(model, inputs)
    plain = model.merge_and_unload(safe_merge=True)
    assert type(plain.classifier) is torch.nn.Linear and not hasattr(plain.classifier, "modules_to_save")
    assert not any("modules_to_save" in k for k in plain.state_dict())
    torch.testing.assert_close(run(plain, inputs), expected, atol=1e-5, rtol=0)


def test_unload_and_delete_restore_the_original_module():
    model = _with_copies("bert", "seq_cls", "classifier")
    inputs = make_inputs("bert")
    original = run(patched("bert", "seq_cls"), inputs)
    model.delete_adapter("a")
    assert list(model.classifier.modules_to_save) == ["b"]
    assert not any(".a." in k for k in model.state_dict())
    torch.testing.assert_close(run(model.unload(), inputs), original)


def test_weighted_combinations_and_their_copies():
    model = _with_copies("bert", "seq_cls", "classifier")
    model.add_adapter("plain", LoRAConfig(r=4, init_weights_seed=3))
    model.add_weighted_adapter(["a", "plain"], [0.5, 0.5], "ap", combination_type="cat")
    torch.testing.assert_close(model.classifier.modules_to_save["ap"].weight, model.classifier.modules_to_save["a"].weight)
    before = set(model.adapters_config.adapters)
    with pytest.raises(ValueError, match="each has its own copy of module 'classifier'"):
        model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "ab", combination_type="cat")
    assert set(model.adapters_config.adapters) == before
    model.average_adapter("avg", ["a", "b"], weights=[0.25, 0.75])
    copies = model.classifier.modules_to_save
    torch.testing.assert_close(copies["avg"].weight, 0.25 * copies["a"].weight + 0.75 * copies["b"].weight)


def test_bad_modules_to_save_are_refused_and_change_nothing():
    model = patched("bert", "seq_cls")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="matches no module.*classifier"):
        model.add_adapter("a", LoRAConfig(modules_to_save=["clasifier"]))
    with pytest.raises(ValueError, match="already hosts adapters"):
        model.add_adapter("a", LoRAConfig(target_modules=["query"], modules_to_save=["attention"]))
    with pytest.raises(ValueError, match="modules_to_save must be a list of module names"):
        LoRAConfig(modules_to_save=[""])
    assert not model.adapters_config.adapters and model.state_dict().keys() == state.keys()
    gpt2 = patched("gpt2", "clm")  # lm_head is tied to the input embeddings
    with pytest.raises(ValueError, match="tied weights"):
        gpt2.add_adapter("a", LoRAConfig(modules_to_save=["lm_head"]))
    model.add_adapter("head", LoRAConfig(modules_to_save=["pooler"]))
    with pytest.raises(ValueError, match="lies inside 'pooler'"):
        model.add_adapter("later", LoRAConfig(target_modules=["dense"]))
    assert set(model.adapters_config.adapters) == {"head"}


def test_embedding_copy_inside_the_base_model():
    model = patched("llama", "clm")
    model.add_adapter("emb", LoRAConfig(r=4, modules_to_save=["embed_tokens"]), set_active=True)
    inputs = make_inputs("llama")
    copy = model.model.embed_tokens.modules_to_save["emb"]
    with torch.no_grad():
        copy.weight[inputs["input_ids"][0, 0]] += 1.0
    changed = run(model, inputs)
    reference = patched("llama", "clm")
    reference.add_adapter("emb", LoRAConfig(r=4))
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if "modules_to_save" not in k}, strict=False)
    reference.model.embed_tokens.weight.data.copy_(copy.weight)
    torch.testing.assert_close(changed, run(reference, inputs, "emb"))


def test_peft_round_trips_modules_to_save(tmp_path):
    peft = require("peft")
    model = _with_copies("bert", "seq_cls", "classifier", names=("a",))
    for param in model.get_adapter("a")[0].values():
        torch.nn.init.normal_(param.lora_B)
    inputs = make_inputs("bert")
    expected = run(model, inputs, "a")
    model.save_adapter(str(tmp_path / "ours"), "a", format="peft")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["modules_to_save"] == ["classifier"]
    base = patched("bert", "seq_cls").unload()
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "ours")).eval()
    output, broken = checked_peft_output(theirs, inputs)
    if broken:
        pytest.skip(broken)
    with torch.no_grad():
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)
        # and back: PEFT's own save loads here with the same outputs
        theirs.save_pretrained(str(tmp_path / "theirs"))
    ours = patched("bert", "seq_cls")
    name = ours.load_adapter(str(tmp_path / "theirs"), set_active=True)
    assert name == "theirs" and "theirs" in ours.classifier.modules_to_save
    torch.testing.assert_close(run(ours, inputs), expected, atol=1e-5, rtol=0)
