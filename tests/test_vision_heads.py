"""AdapterModel classes for ViT, ModernBERT and CLIP: static head conversions against transformers'
own head models, heads against their definition, AutoAdapterModel, save/load round trips with heads."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import CONFIGS, IMAGE_SIZE, make_inputs, perturb_adapter

import adapters
from adapters import AutoAdapterModel, CLIPAdapterModel, ModernBertAdapterModel, Parallel, ViTAdapterModel


def _static(cls_name: str, arch: str, seed: int = 0, **overrides):
    config = CONFIGS[arch]()
    config.num_labels = 3
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return getattr(transformers, cls_name)(config).eval()


@pytest.mark.parametrize(
    "cls_name,arch,overrides",
    [
        ("ViTForImageClassification", "vit", {}),
        ("ModernBertForSequenceClassification", "modernbert", {"classifier_pooling": "cls"}),
        ("ModernBertForSequenceClassification", "modernbert", {"classifier_pooling": "mean"}),
        ("ModernBertForTokenClassification", "modernbert", {}),
        ("ModernBertForMaskedLM", "modernbert", {}),
    ],
)
def test_head_models_load_with_equal_logits_and_round_trip_with_their_head(tmp_path, cls_name, arch, overrides):
    static = _static(cls_name, arch, **overrides)
    static.save_pretrained(tmp_path / "static")
    model = AutoAdapterModel.from_pretrained(str(tmp_path / "static")).eval()
    assert type(model).__name__ == {"vit": "ViTAdapterModel", "modernbert": "ModernBertAdapterModel"}[arch]
    assert model.active_head == "default"
    inputs = make_inputs(arch)
    with torch.no_grad():
        expected = static(**inputs).logits
        torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-6, rtol=1e-5)
    # with an adapter: the head checkpoint travels with it and gives the same logits in a fresh model
    model.add_adapter("default", config="seq_bn", set_active=True)
    perturb_adapter(model, "default")
    with torch.no_grad():
        adapted = model(**inputs).logits
    assert not torch.allclose(adapted, expected, atol=1e-4)
    model.save_adapter(str(tmp_path / "adapter"), "default")
    fresh = AutoAdapterModel.from_config(model.config.__class__(**{k: v for k, v in model.config.to_dict().items() if k != "prediction_heads"}))
    fresh.load_state_dict(model.state_dict(), strict=False)  # base weights only (no heads, no adapters yet)
    fresh.load_adapter(str(tmp_path / "adapter"), set_active=True)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(**inputs).logits, adapted)
    # and save_pretrained keeps the heads
    model.save_pretrained(tmp_path / "full")
    again = AutoAdapterModel.from_pretrained(str(tmp_path / "full")).eval()
    again.set_active_adapters(None)
    model.set_active_adapters(None)
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, model(**inputs).logits)


def test_vit_image_classification_head_is_its_definition():
    torch.manual_seed(0)
    model = ViTAdapterModel(CONFIGS["vit"]()).eval()
    model.add_image_classification_head("cls", num_labels=4, layers=2, activation_function="relu")
    head = model.heads["cls"]
    pixels = make_inputs("vit")["pixel_values"]
    labels = torch.tensor([1, 3])
    with torch.no_grad():
        out = model(pixel_values=pixels, labels=labels)
        states = model.vit(pixel_values=pixels).last_hidden_state  # after ViT's final layer norm
        logits = head[4](torch.relu(head[1](states[:, 0])))
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match="does not support 'classification' heads"):
        model.add_classification_head("text", num_labels=2)


def test_vit_parallel_runs_each_branch_through_its_head():
    torch.manual_seed(0)
    model = ViTAdapterModel(CONFIGS["vit"]()).eval()
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
        perturb_adapter(model, name, seed=len(name) * 3)
        model.add_image_classification_head(name, num_labels=2 + len(name))
    pixels = make_inputs("vit")["pixel_values"]
    with torch.no_grad():
        alone = {}
        for name in ("a", "b"):
            model.set_active_adapters(name)
            alone[name] = model(pixel_values=pixels).logits
        model.set_active_adapters(Parallel("a", "b"))
        out = model(pixel_values=pixels)
    torch.testing.assert_close(out[0].logits, alone["a"])
    torch.testing.assert_close(out[1].logits, alone["b"])


def test_modernbert_heads_follow_the_config_and_mean_pooling_skips_padding():
    config = CONFIGS["modernbert"]()
    torch.manual_seed(0)
    model = ModernBertAdapterModel(config).eval()
    model.add_classification_head("mean", num_labels=2, pooling="mean")
    head = model.heads["mean"]
    assert head.config["activation_function"] == config.classifier_activation and head[2].bias is None  # norm_bias False
    inputs = make_inputs("modernbert")
    with torch.no_grad():
        logits = model(**inputs).logits
        states = model.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        pooled = (states * mask).sum(1) / mask.sum(1)
        expected = head[4](head[2](head[1](head[0](pooled))))
    torch.testing.assert_close(logits, expected)
    with pytest.raises(ValueError, match="pooling must be 'cls' or 'mean'"):
        model.add_classification_head("bad", pooling="max")
    assert "bad" not in model.heads
    model.add_masked_lm_head("mlm")
    assert model.heads["mlm"][3].weight is model.model.embeddings.tok_embeddings.weight  # tied


def test_clip_adapter_model_returns_clip_outputs_and_classifies_images(tmp_path):
    config = CONFIGS["clip"]()
    torch.manual_seed(0)
    model = CLIPAdapterModel(config).eval()
    reference = transformers.CLIPModel(config).eval()
    reference.load_state_dict(model.clip.state_dict(), strict=False)
    inputs = make_inputs("clip")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits_per_image, reference(**inputs).logits_per_image)
    model.add_adapter("a", config="seq_bn", set_active=True)
    perturb_adapter(model, "a")
    with torch.no_grad():
        text = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        both = model(**inputs)
        with adapters.AdapterSetup(None):
            bare = model(**inputs)
    torch.testing.assert_close(both.text_model_output.last_hidden_state, text)  # the text tower alone, adapters in
    assert not torch.allclose(both.logits_per_image, bare.logits_per_image, atol=1e-4)
    # image classification on the vision tower, CLIPForImageClassification's pooling (mean of the patches)
    model.add_image_classification_head("a", num_labels=3, layers=1, pooling="mean_patches")
    assert model.heads["a"][1].in_features == config.vision_config.hidden_size
    pixels = inputs["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
        states = model.clip.vision_model(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(logits, model.heads["a"][1](states[:, 1:].mean(1)))
    with pytest.raises(ValueError, match="pass pixel_values"):
        model(input_ids=inputs["input_ids"])
    # use_pooler: the vision tower's pooler output (the class token after post_layernorm)
    model.add_image_classification_head("pooled", num_labels=2, layers=1, use_pooler=True)
    with torch.no_grad():
        pooled = model.clip.vision_model(pixel_values=pixels).pooler_output
        torch.testing.assert_close(model(pixel_values=pixels, head="pooled").logits, model.heads["pooled"][1](pooled))
    model.delete_head("pooled")
    model.save_adapter(str(tmp_path / "a"), "a")
    torch.manual_seed(1)
    fresh = CLIPAdapterModel(CONFIGS["clip"]()).eval()
    fresh.clip.load_state_dict(model.clip.state_dict(), strict=False)
    fresh.load_adapter(str(tmp_path / "a"), set_active=True)
    with torch.no_grad():
        assert torch.equal(fresh(pixel_values=pixels).logits, logits)


def test_clip_adapter_model_parallel_similarities_per_branch():
    torch.manual_seed(0)
    model = CLIPAdapterModel(CONFIGS["clip"]()).eval()
    for name in ("a", "b"):
        model.add_adapter(name, config="lora")
        perturb_adapter(model, name, seed=len(name))
    inputs = make_inputs("clip")
    inputs["pixel_values"] = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        alone = []
        for name in ("a", "b"):
            with adapters.AdapterSetup(name):
                alone.append(model(**inputs).logits_per_image)
        with adapters.AdapterSetup(Parallel("a", "b")):
            out = model(**inputs).logits_per_image
    torch.testing.assert_close(out, torch.cat(alone))
