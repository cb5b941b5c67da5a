"""CLIPModel (both towers in one model): numbering, per-tower sizes, each tower against the same
adapters on that tower run alone (the tower specs), features, Parallel similarities, refusals,
checkpoints and merging."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import CONFIGS, IMAGE_SIZE, LAYERS, make_model, perturb_adapter

import adapters
from adapters.methods.invertible import EmbeddingOutputHost
from adapters import BatchSplit, Fuse, LoRAConfig, Parallel, PrefixTuningConfig, SeqBnConfig, Stack

TOWERS = {"text": ("text_model", "clip_text_model", "text_config"), "vision": ("vision_model", "clip_vision_model", "vision_config")}


def _clip(seed: int = 0):
    model = make_model("clip", seed=seed)
    adapters.init(model)
    return model


def _inputs(texts: int = 2, images: int = 2, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 99, (texts, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if texts > 1:
        attention_mask[1, -2:] = 0
    pixel_values = torch.randn(images, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def _tower_alone(clip, tower: str, name: str, config):
    """The tower as its own model (CLIPTextModel / CLIPVisionModel with the tower's weights) with
    adapter ``name`` of ``config`` carrying the CLIP model's adapter weights of that tower."""
    attribute, model_type, sub_config = TOWERS[tower]
    cls = transformers.CLIPTextModel if tower == "text" else transformers.CLIPVisionModel
    alone = cls(getattr(clip.config, sub_config)).eval()
    base_state = {k: v for k, v in getattr(clip, attribute).state_dict().items() if k in alone.state_dict()}
    alone.load_state_dict(base_state, strict=False)
    adapters.init(alone)
    alone.add_adapter(name, config=config)
    source = clip.state_dict()
    with torch.no_grad():
        for key, param in alone.state_dict().items():
            if f".{name}." not in key or key in base_state:
                continue
            if key.startswith("prefix_tuning."):  # the pool sits at the root; CLIP keeps a location per tower
                theirs = key.replace(".self_prefix.", f".{model_type}_self_prefix.")
            elif key.startswith("shared_parameters."):
                theirs = key
            else:
                theirs = f"{attribute}.{key}"
            param.copy_(source[theirs])
    alone.set_active_adapters(name)
    return alone


def test_layers_are_numbered_text_first_then_vision_and_sized_by_their_tower():
    model = _clip()
    model.add_adapter("a", config=SeqBnConfig(reduction_factor=4, leave_out=[LAYERS]))  # leave out vision layer 0
    hosts = {(h.layer_idx, h.location): h for h in model._adapter_hosts if getattr(h, "method", None) == "bottleneck"}
    assert sorted({i for i, _ in hosts}) == list(range(2 * LAYERS))
    for layer in range(LAYERS):
        text_host = model.text_model.encoder.layers[layer].output_adapters
        vision_host = model.vision_model.encoder.layers[layer].output_adapters
        assert text_host.layer_idx == layer and vision_host.layer_idx == LAYERS + layer
        assert text_host.adapters["a"].adapter_down[0].in_features == 32  # text width
        if layer == 0:
            assert "a" not in vision_host.adapters
        else:
            assert vision_host.adapters["a"].adapter_down[0].in_features == 48  # vision width
    keys = [k for k in model.state_dict() if ".a." in k]
    assert any(k.startswith("text_model.encoder.layers.0.output_adapters.adapters.a.") for k in keys)
    assert not any(k.startswith("vision_model.encoder.layers.0.") for k in keys)
    assert any(k.startswith("vision_model.encoder.layers.1.output_adapters.adapters.a.") for k in keys)
    with pytest.raises(ValueError, match="give indices 0 … 3"):
        model.add_adapter("b", config=SeqBnConfig(leave_out=[2 * LAYERS]))


def test_peft_targeting_with_layers_pattern_numbers_vision_layers_after_the_text_layers():
    """leave_out counts over both towers (text first) with PEFT-style targeting too, as it does with
    AdapterHub's attn_matrices; layers_to_transform stays the index in the path (per tower)."""
    model = _clip()
    model.add_adapter("a", config=LoRAConfig(r=2, target_modules=["q_proj"], layers_pattern="layers", leave_out=[LAYERS]))
    model.add_adapter("b", config=LoRAConfig(r=2, target_modules=["q_proj"], layers_pattern="layers", layers_to_transform=[0]))

    def layers_with(name):
        return {
            (tower, i)
            for tower in ("text_model", "vision_model")
            for i, layer in enumerate(getattr(model, tower).encoder.layers)
            if name in getattr(layer.self_attn.q_proj, "loras", {})
        }

    every = {(tower, i) for tower in ("text_model", "vision_model") for i in range(LAYERS)}
    assert layers_with("a") == every - {("vision_model", 0)}
    assert layers_with("b") == {("text_model", 0), ("vision_model", 0)}
    assert model.vision_model.encoder.layers[1].self_attn.q_proj.layer_idx == LAYERS + 1


@pytest.mark.parametrize(
    "config",
    [
        SeqBnConfig(reduction_factor=4),
        adapters.CompacterConfig(reduction_factor=4),
        LoRAConfig(r=2, attn_matrices=["q", "k", "v", "o"], intermediate_lora=True, output_lora=True),
        adapters.IA3Config(),
        PrefixTuningConfig(prefix_length=3, bottleneck_size=8),
    ],
    ids=["seq_bn", "compacter", "lora", "ia3", "prefix"],
)
def test_each_tower_equals_the_same_adapter_on_that_tower_alone(config):
    clip = _clip()
    clip.add_adapter("a", config=config, set_active=True)
    perturb_adapter(clip, "a", scale=0.3)
    inputs = _inputs()
    with torch.no_grad():
        out = clip(**inputs)
        text = _tower_alone(clip, "text", "a", config)(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        vision = _tower_alone(clip, "vision", "a", config)(pixel_values=inputs["pixel_values"])
        clip.set_active_adapters(None)
        bare = clip(**inputs)
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(out.text_model_output.last_hidden_state[mask], text.last_hidden_state[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.vision_model_output.last_hidden_state, vision.last_hidden_state, atol=1e-5, rtol=1e-5)
    # and the adapters changed both towers
    assert not torch.allclose(out.text_model_output.last_hidden_state, bare.text_model_output.last_hidden_state, atol=1e-4)
    assert not torch.allclose(out.vision_model_output.last_hidden_state, bare.vision_model_output.last_hidden_state, atol=1e-4)


def test_features_run_the_adapters_of_their_tower_as_forward_does():
    clip = _clip()
    clip.add_adapter("a", config=SeqBnConfig(reduction_factor=4), set_active=True)
    perturb_adapter(clip, "a")
    inputs = _inputs()
    with torch.no_grad():
        out = clip(**inputs)
        text = clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output
        image = clip.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        with adapters.AdapterSetup(None):
            bare_image = clip.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    torch.testing.assert_close(text / text.norm(dim=-1, keepdim=True), out.text_embeds, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(image / image.norm(dim=-1, keepdim=True), out.image_embeds, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(image, bare_image, atol=1e-4)


def test_parallel_keeps_each_branch_with_its_own_texts_and_images():
    clip = _clip()
    clip.add_adapter("a", config=SeqBnConfig(reduction_factor=4))
    clip.add_adapter("b", config=LoRAConfig(r=2))
    perturb_adapter(clip, "a")
    perturb_adapter(clip, "b", seed=7)
    inputs = _inputs(texts=3, images=2)  # texts and images have batches of their own
    square = _inputs(texts=2, images=2)
    alone, losses = {}, {}
    with torch.no_grad():
        for name in ("a", "b"):
            with adapters.AdapterSetup(name):
                alone[name] = clip(**inputs)
                losses[name] = clip(**square, return_loss=True).loss
        clip.set_active_adapters(Parallel("a", "b"))
        out = clip(**inputs)
        loss = clip(**square, return_loss=True).loss
        text_features = clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        image_features = clip.get_image_features(pixel_values=inputs["pixel_values"])
    assert out.logits_per_image.shape == (4, 3) and out.logits_per_text.shape == (6, 2)
    for field in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        expected = torch.cat([getattr(alone["a"], field), getattr(alone["b"], field)])
        torch.testing.assert_close(getattr(out, field), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, losses["a"] + losses["b"])
    embeds = lambda f: f.pooler_output / f.pooler_output.norm(dim=-1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(embeds(text_features), out.text_embeds, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(embeds(image_features), out.image_embeds, atol=1e-6, rtol=1e-5)


def test_batchsplit_gives_each_row_of_both_towers_its_adapter():
    clip = _clip()
    for name, seed in (("a", 0), ("b", 3)):
        clip.add_adapter(name, config=SeqBnConfig(reduction_factor=4))
        perturb_adapter(clip, name, seed=seed)
    inputs = _inputs()
    with torch.no_grad():
        with adapters.AdapterSetup(BatchSplit("a", "b", batch_sizes=[1, 1])):
            out = clip(**inputs)
        with adapters.AdapterSetup("a"):
            a = clip(**inputs)
        with adapters.AdapterSetup("b"):
            b = clip(**inputs)
    for field in ("text_embeds", "image_embeds"):
        torch.testing.assert_close(getattr(out, field)[:1], getattr(a, field)[:1], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(getattr(out, field)[1:], getattr(b, field)[1:], atol=1e-6, rtol=1e-5)


def test_fusion_and_stack_run_in_both_towers_with_their_widths():
    clip = _clip()
    for name in ("a", "b"):
        clip.add_adapter(name, config=SeqBnConfig(reduction_factor=4))
        perturb_adapter(clip, name, seed=len(name))
    clip.add_adapter_fusion(Fuse("a", "b"))
    vision_fusion = clip.vision_model.encoder.layers[0].output_adapters.adapter_fusion_layer["a,b"]
    assert vision_fusion.query.in_features == 48
    inputs = _inputs()
    with torch.no_grad():
        with adapters.AdapterSetup(Fuse("a", "b")):
            fused = clip(**inputs)
        with adapters.AdapterSetup(Stack("a", "b")):
            stacked = clip(**inputs)
        bare = clip(**inputs)
    for out in (fused, stacked):
        assert torch.isfinite(out.logits_per_image).all()
        assert not torch.allclose(out.image_embeds, bare.image_embeds, atol=1e-4)
        assert not torch.allclose(out.text_embeds, bare.text_embeds, atol=1e-4)


def test_prompt_tuning_llama_adapter_and_width_bound_compacter_are_refused_leaving_the_model_unchanged():
    clip = _clip()
    before = dict(clip.state_dict())
    with pytest.raises(ValueError, match="prompt_tuning is not available for clip.*end-of-text token"):
        clip.add_adapter("p", config="prompt_tuning")
    with pytest.raises(ValueError, match="adaption_prompt is not available for clip"):
        clip.add_adapter("l", config=adapters.AdaptionPromptConfig(adapter_len=2))
    with pytest.raises(ValueError, match="shared_W_phm=True.*differ in hidden size \\(32, 48\\)"):
        clip.add_adapter("c", config=adapters.CompacterConfig(reduction_factor=4, shared_W_phm=True))
    assert set(clip.state_dict()) == set(before) and not clip.adapters_config.adapters


def test_invertible_adapter_acts_on_the_text_embeddings_only():
    clip = _clip()
    clip.add_adapter("inv", config=adapters.SeqBnInvConfig(reduction_factor=4))
    perturb_adapter(clip, "inv")
    assert isinstance(clip.text_model.embeddings, EmbeddingOutputHost)  # AdapterHub: the text tower's
    inputs = _inputs()

    def layer_zero_inputs():  # each tower run on its own (as get_text_features / get_image_features do)
        text = clip.text_model(input_ids=inputs["input_ids"], output_hidden_states=True).hidden_states[0]
        vision = clip.vision_model(pixel_values=inputs["pixel_values"], output_hidden_states=True).hidden_states[0]
        return text, vision

    with torch.no_grad():
        bare_text, bare_vision = layer_zero_inputs()
        with adapters.AdapterSetup("inv"):
            text, vision = layer_zero_inputs()
    # layer 0's input: the text embeddings went through the invertible block, the image embeddings did not
    assert not torch.allclose(text, bare_text, atol=1e-4)
    assert torch.equal(vision, bare_vision)


def test_save_load_round_trip_in_adapterhub_layout_is_bit_identical(tmp_path):
    config = adapters.ConfigUnion(SeqBnConfig(reduction_factor=4), LoRAConfig(r=2), PrefixTuningConfig(prefix_length=2))
    clip = _clip()
    clip.add_adapter("u", config=config, set_active=True)
    perturb_adapter(clip, "u")
    clip.save_adapter(str(tmp_path / "u"), "u")
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "u" / "adapter.safetensors")))
    assert "prefix_tuning.prefix_tunings.u.clip_text_model_self_prefix.wte.weight" in keys
    assert "prefix_tuning.prefix_tunings.u.clip_vision_model_self_prefix.wte.weight" in keys
    assert any(k.startswith("vision_model.encoder.layers.1.self_attn.q_proj.loras.u.") for k in keys)
    fresh = _clip()
    fresh.load_adapter(str(tmp_path / "u"), set_active=True)
    inputs = _inputs()
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits_per_image, clip(**inputs).logits_per_image)


def test_merged_lora_equals_unmerged_in_both_towers():
    clip = _clip()
    clip.add_adapter("l", config=LoRAConfig(r=2, attn_matrices=["q", "v", "o"], output_lora=True), set_active=True)
    perturb_adapter(clip, "l")
    inputs = _inputs()
    with torch.no_grad():
        unmerged = clip(**inputs)
        clip.merge_adapter("l")
        merged = clip(**inputs)
    torch.testing.assert_close(merged.text_embeds, unmerged.text_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged.image_embeds, unmerged.image_embeds, atol=1e-5, rtol=1e-5)


def test_vision_only_clip_classifier_numbers_its_layers_from_zero():
    config = CONFIGS["clip"]()
    config.num_labels = 3
    torch.manual_seed(0)
    model = transformers.CLIPForImageClassification(config).eval()
    adapters.init(model)
    model.add_adapter("a", config=SeqBnConfig(reduction_factor=4, leave_out=[0]), set_active=True)
    assert "a" not in model.vision_model.encoder.layers[0].output_adapters.adapters
    assert model.vision_model.encoder.layers[1].output_adapters.layer_idx == 1
    pixels = _inputs()["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels).logits
        perturb_adapter(model, "a")
        changed = model(pixel_values=pixels).logits
    assert out.shape == (2, 3) and not torch.allclose(out, changed)
