"""``train_adapter`` keeps a pretrained LM head frozen, as PEFT does (AdapterHub trains it), and
a PEFT-format save writes what trains outside the adapters as PEFT's ``modules_to_save``, so PEFT
loads the model that was trained."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS, main_output, make_inputs, make_model, require

import adapters
from adapters import AdapterConfigError, AutoAdapterModel, Fuse, LoRAConfig, PrefixTuningConfig


def _trainable(model) -> dict:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _lora_model(arch="llama", head="clm"):
    model = make_model(arch, head)
    adapters.init(model)
    model.add_adapter("a", LoRAConfig(r=4, alpha=8))
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_train_adapter_keeps_the_lm_head_frozen(arch):
    """Only the LoRA trains: Llama's untied lm_head, GPT-2's and T5's tied ones stay frozen."""
    model = _lora_model(arch, "seq2seq" if arch == "t5" else "clm")
    model.train_adapter("a")
    trainable = _trainable(model)
    assert trainable and all(".loras.a." in n for n in trainable)
    assert not any(p.requires_grad for p in model.get_output_embeddings().parameters())
    lora = sum(p.numel() for n, p in model.named_parameters() if ".loras.a." in n)
    assert sum(p.numel() for p in trainable.values()) == lora


def test_train_output_embeddings_trains_the_lm_head_and_train_embeddings_the_input():
    model = _lora_model()
    model.train_adapter("a", train_output_embeddings=True)
    assert set(_trainable(model)) == {n for n, _ in model.named_parameters() if ".loras.a." in n} | {"lm_head.weight"}
    model.train_adapter("a", train_embeddings=True)  # a second call freezes the LM head again
    assert set(_trainable(model)) == {n for n, _ in model.named_parameters() if ".loras.a." in n} | {"model.embed_tokens.weight"}


def test_new_classifier_trains():
    model = _lora_model("bert", "seq_cls")
    model.train_adapter("a")
    heads = {n for n in _trainable(model) if ".loras." not in n}
    assert heads == {"classifier.weight", "classifier.bias"}


def test_train_output_embeddings_refused_without_an_lm_head():
    model = _lora_model("bert", "seq_cls")
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(AdapterConfigError, match=r"train_output_embeddings=True, but BertForSequenceClassification has no output embeddings"):
        model.train_adapter("a", train_output_embeddings=True)
    with pytest.raises(AdapterConfigError, match=r"train_output_embeddings must be True or False, not 'yes'"):
        model.train_adapter("a", train_output_embeddings="yes")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert model.active_adapters is None


def test_train_adapter_fusion_keeps_the_lm_head_frozen():
    model = make_model("llama", "clm")
    adapters.init(model)
    model.add_adapter("a", "seq_bn")
    model.add_adapter("b", "seq_bn")
    model.add_adapter_fusion(Fuse("a", "b"))
    model.train_adapter_fusion(Fuse("a", "b"))
    trainable = _trainable(model)
    assert trainable and all(".adapter_fusion_layer." in n for n in trainable)
    model.train_adapter_fusion(Fuse("a", "b"), train_output_embeddings=True)
    assert "lm_head.weight" in _trainable(model)


def test_setup_adapter_training_keeps_the_lm_head_frozen():
    from adapters.training import AdapterArguments, setup_adapter_training

    model = make_model("llama", "clm")
    adapters.init(model)
    setup_adapter_training(model, AdapterArguments(train_adapter=True, adapter_config="lora"), "task")
    trainable = _trainable(model)
    assert trainable and all(".loras.task." in n for n in trainable)


def test_flexible_causal_lm_head_trains_except_the_tied_embedding():
    """A head added with add_causal_lm_head is new and trains (AdapterHub and this library
    alike); where the model ties word embeddings its output matrix is the pretrained input
    embedding, which stays frozen unless train_embeddings / train_output_embeddings."""
    config = CONFIGS["gpt2"]()
    assert config.tie_word_embeddings
    model = AutoAdapterModel.from_config(config).eval()
    model.add_adapter("a", LoRAConfig(r=4))
    model.add_causal_lm_head("a")
    head = model.heads["a"]
    output = head.get_output_embeddings()
    assert output.weight is model.get_input_embeddings().weight
    model.train_adapter("a")
    assert not output.weight.requires_grad
    new = [p for n, p in head.named_parameters() if p is not output.weight]
    assert all(p.requires_grad for p in new)
    model.train_adapter("a", train_output_embeddings=True)
    assert output.weight.requires_grad


def _base_folder(tmp_path):
    folder = str(tmp_path / "base")
    make_model("llama", "clm").save_pretrained(folder)
    return folder


def _saved_for_peft_as_trained(model, inputs, path, seed: int, modules_to_save: list) -> torch.Tensor:
    """Move every trainable parameter (as if trained), save adapter "a" in PEFT's format to
    ``path`` and check its ``modules_to_save``; returns the model's output on ``inputs``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in _trainable(model).values():
            param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    model.eval()
    with torch.no_grad():
        ours = main_output(model(**inputs))
    model.save_adapter(str(path), "a", format="peft")
    with open(path / "adapter_config.json") as f:
        assert json.load(f)["modules_to_save"] == modules_to_save
    return ours


def _assert_peft_loads_the_same_model(cls, folder, path, inputs, ours) -> None:
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(cls.from_pretrained(folder).eval(), str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(main_output(peft_model(**inputs)), ours, atol=1e-5, rtol=0)


def test_peft_save_writes_a_trained_lm_head_as_modules_to_save(tmp_path):
    """LoRA trained together with the LM head (train_output_embeddings=True) is written with
    modules_to_save=["lm_head"]; PEFT 0.21 loads the same model (logits within 1e-5), and so does
    this library."""
    require("peft")
    folder = _base_folder(tmp_path)
    cls = type(make_model("llama", "clm"))
    model = cls.from_pretrained(folder).eval()
    adapters.init(model)
    model.add_adapter("a", LoRAConfig(r=4, alpha=8), set_active=True)
    model.train_adapter("a", train_output_embeddings=True)
    inputs = make_inputs("llama")
    ours = _saved_for_peft_as_trained(model, inputs, tmp_path / "peft", seed=0, modules_to_save=["lm_head"])
    _assert_peft_loads_the_same_model(cls, folder, tmp_path / "peft", inputs, ours)
    again = cls.from_pretrained(folder).eval()
    adapters.init(again)
    again.load_adapter(str(tmp_path / "peft"), load_as="a", set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(main_output(again(**inputs)), ours, atol=1e-5, rtol=0)


def test_peft_save_of_a_frozen_lm_head_writes_none(tmp_path):
    require("peft")
    model = _lora_model()
    model.train_adapter("a")
    model.save_adapter(str(tmp_path), "a", format="peft")
    with open(tmp_path / "adapter_config.json") as f:
        assert json.load(f)["modules_to_save"] is None


def test_peft_save_warns_naming_trained_modules_its_format_cannot_hold(tmp_path, adapters_log):
    model = make_model("llama", "clm")
    adapters.init(model)
    model.add_adapter("p", PrefixTuningConfig(prefix_length=4, flat=True, shift_positions=True))
    model.train_adapter("p", train_output_embeddings=True)
    model.save_adapter(str(tmp_path), "p", format="peft")
    assert "PEFT's PREFIX_TUNING format, which has no modules_to_save, but the model also trains ['lm_head']" in adapters_log.text


def test_peft_save_writes_a_trained_classifier_as_modules_to_save(tmp_path):
    """The classifier of a sequence classifier trains with the adapter; PEFT gets it as
    modules_to_save (before, the save dropped it and PEFT loaded the untrained one)."""
    require("peft")
    folder = str(tmp_path / "base")
    cls = type(make_model("bert", "seq_cls"))
    make_model("bert", "seq_cls").save_pretrained(folder)
    model = cls.from_pretrained(folder).eval()
    adapters.init(model)
    model.add_adapter("a", LoRAConfig(r=4, alpha=8))
    model.train_adapter("a")
    inputs = make_inputs("bert")
    ours = _saved_for_peft_as_trained(model, inputs, tmp_path / "peft", seed=1, modules_to_save=["classifier"])
    _assert_peft_loads_the_same_model(cls, folder, tmp_path / "peft", inputs, ours)
