"""Architecture-specific behaviour of the newer families, against definitions computed here from
the unmodified transformers model (the shared matrix in the other test files covers every
method and block on every architecture)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CONFIGS, make_inputs, make_model, patched, perturb_adapter, run
from transformers import AutoModel, DynamicCache

import adapters
from adapters import AdaptionPromptConfig, LoRAConfig, PrefixTuningConfig
from adapters.compat import CACHE_NAME


def _set_softcap(model, cap):
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = cap


def _sliding_window_reference(arch, prefixes, inputs, softcap=None):
    """The unmodified model with the prefix as past keys/values and explicit masks per layer type:
    every query sees every prefix key; real keys as the model masks them (causal, padding, and in
    sliding layers only the last ``sliding_window`` positions)."""
    model = make_model(arch, "clm")
    if softcap is not None:
        _set_softcap(model, softcap)
    window = model.config.sliding_window
    batch, length = inputs["input_ids"].shape
    cache = DynamicCache()  # plain layers: a sliding layer's cache would drop the prefix itself
    for layer_idx, (keys, values) in enumerate(prefixes):
        cache.update(keys.unsqueeze(0).expand(batch, -1, -1, -1), values.unsqueeze(0).expand(batch, -1, -1, -1), layer_idx)
    n = prefixes[0][0].shape[1]
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None, :]
    padding = inputs["attention_mask"].bool()[:, None, None, :]
    masks = {}
    for layer_type, allowed in (("full_attention", k <= q), ("sliding_attention", (k <= q) & (k > q - window))):
        real = allowed[None, None] & padding
        visible = torch.cat([torch.ones(batch, 1, length, n, dtype=torch.bool), real], dim=-1)
        masks[layer_type] = torch.where(visible, 0.0, torch.finfo(torch.float32).min)
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=masks, position_ids=positions, **{CACHE_NAME: cache}).logits


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text"])
def test_gemma_prefix_is_seen_by_every_query_in_sliding_window_layers(arch):
    model = patched(arch, "clm")
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    model.add_adapter("p", config=PrefixTuningConfig(prefix_length=4, flat=True), set_active=True)
    perturb_adapter(model, "p", scale=1.0)
    states = model.base_model.prefix_tuning.prefix_tunings["p"]["self_prefix"]()
    prefixes = [(layer[0], layer[1]) for layer in states]
    inputs = make_inputs(arch)  # 12 tokens, window 4: the window bites
    ours = run(model, inputs)
    assert (ours - run(make_model(arch, "clm"), inputs)).abs().max() > 1e-3
    expected = _sliding_window_reference(arch, prefixes, inputs)
    real = inputs["attention_mask"].bool()  # padded positions' outputs are not defined the same way
    torch.testing.assert_close(ours[real], expected[real], atol=1e-5, rtol=0)
    # Gemma 2's attention-logit soft-capping reaches the attention the wrapper calls (a cap of 0.1
    # bends the tiny model's scores, the default 50 barely does)
    if arch == "gemma2":
        assert model.model.layers[0].self_attn.attn_logit_softcapping == 50.0
        _set_softcap(model, 0.1)
        capped = run(model, inputs)
        assert (capped - ours).abs().max() > 1e-3
        expected = _sliding_window_reference(arch, prefixes, inputs, softcap=0.1)
        torch.testing.assert_close(capped[real], expected[real], atol=1e-5, rtol=0)


# -- Phi-3: fused qkv_proj, parts of different sizes under grouped-query attention -------------------
def _phi3_gqa(seed=0):
    torch.manual_seed(seed)
    config = CONFIGS["phi3"]()
    config.num_key_value_heads = 2  # q: 4 heads x 8 = 32 columns, k and v: 16 each
    model = AutoModel.from_config(config).eval()
    adapters.init(model)
    return model


def _fused_lora_reference(model, name, seed=0):
    """A fresh copy whose qkv_proj weights are ``W[S_i] + s·B_i A_i`` for each covered part ``S_i``."""
    reference = _phi3_gqa(seed)
    with torch.no_grad():
        for layer, ref_layer in zip(model.layers, reference.layers):
            lora = layer.self_attn.qkv_proj.loras[name]
            blocks_a = lora.lora_A.unflatten(0, (lora.groups, -1))
            blocks_b = lora.lora_B.unflatten(0, (lora.groups, -1))
            for (start, stop), a, b in zip(lora.out_slices, blocks_a, blocks_b):
                ref_layer.self_attn.qkv_proj.weight[start:stop] += lora.scaling * b @ a
    return reference


def test_phi3_lora_on_the_key_and_value_parts_of_a_gqa_qkv_proj_matches_its_definition():
    model = _phi3_gqa()
    model.add_adapter("kv", config=LoRAConfig(r=2, attn_matrices=["k", "v"]), set_active=True)
    lora = model.layers[0].self_attn.qkv_proj.loras["kv"]
    assert lora.out_slices == ((32, 48), (48, 64))
    perturb_adapter(model, "kv", scale=0.3)
    inputs = make_inputs("phi3")
    out = run(model, inputs)
    assert (out - run(_phi3_gqa(), inputs)).abs().max() > 1e-3
    torch.testing.assert_close(out, run(_fused_lora_reference(model, "kv"), inputs), atol=1e-5, rtol=0)
    model.merge_adapter("kv")  # merging writes the same rows
    torch.testing.assert_close(run(model, inputs), out, atol=1e-5, rtol=0)


def test_phi3_lora_on_parts_of_different_sizes_is_refused_and_changes_nothing():
    model = _phi3_gqa()
    before = dict(model.state_dict())
    with pytest.raises(ValueError, match=r"different sizes \(q: 32, v: 16.*target_modules=\['qkv_proj'\]"):
        model.add_adapter("qv", config=LoRAConfig(r=2, attn_matrices=["q", "v"]))
    assert "qv" not in model.adapters_config.adapters
    assert model.state_dict().keys() == before.keys()
    # the whole fused module, as PEFT adapts it, is fine
    model.add_adapter("all", config=LoRAConfig(r=2, selfattn_lora=False, target_modules=["qkv_proj"]), set_active=True)
    assert model.layers[0].self_attn.qkv_proj.loras["all"].out_slices is None


# -- GPT-J: parallel residual, attention outside the attention interface -------------------------------
def _gptj_block0(model, inputs, setup):
    """Block 0's input ``x``, branch outputs (as the block sums them) and output, under ``setup``."""
    block, seen = model.h[0], {}
    hooks = [
        block.ln_1.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0])),
        block.attn.register_forward_hook(lambda m, args, out: seen.__setitem__("attn", out[0])),
        block.mlp.register_forward_hook(lambda m, args, out: seen.__setitem__("mlp", out)),
        block.register_forward_hook(lambda m, args, out: seen.__setitem__("y", out[0] if isinstance(out, tuple) else out)),
    ]
    try:
        run(model, inputs, setup)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_gptj_adapters_run_on_both_parallel_branches_with_the_block_input_as_residual():
    model = patched("gptj")
    model.add_adapter("a", config="double_seq_bn", set_active=True)  # both positions
    perturb_adapter(model, "a")
    inputs = make_inputs("gptj")
    plain = _gptj_block0(make_model("gptj"), inputs, None)  # the same weights, no adapters
    adapted = _gptj_block0(model, inputs, "a")
    torch.testing.assert_close(adapted["x"], plain["x"], atol=0, rtol=0)  # block 0 reads the embeddings
    # y = x + A_attn(attn(ln_1 x)) + A_mlp(mlp(ln_1 x)), with Houlsby's A(h) = h + up(act(down(h)))
    torch.testing.assert_close(adapted["y"], adapted["x"] + adapted["attn"] + adapted["mlp"], atol=1e-5, rtol=0)
    for branch, host in (("attn", model.h[0].attention_adapters), ("mlp", model.h[0].output_adapters)):
        adapter = host.adapters["a"]
        with torch.no_grad():
            expected = plain[branch] + adapter.adapter_up(adapter.adapter_down(plain[branch]))
        assert (expected - plain[branch]).abs().max() > 1e-3
        torch.testing.assert_close(adapted[branch], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,head", [("gptj", "clm"), ("deberta-v2", "mlm"), ("deberta", "mlm")])
def test_llama_adapter_is_refused_where_attention_bypasses_the_interface(arch, head):
    """GPT-J (before transformers 5.24) and DeBERTa score keys in their own code: prefix tuning
    enters there through the spec's attention mixin (tests/test_adapterhub_prefix_archs.py), but
    Llama-Adapter's gated prompt adjusts an attention-interface output and is refused."""
    model = patched(arch, head)
    before = dict(model.state_dict())
    with pytest.raises(ValueError, match=f"adaption_prompt is not available for {arch}.*attention interface"):
        model.add_adapter("p", config=AdaptionPromptConfig(adapter_len=2))
    assert "p" not in model.adapters_config.adapters and model.state_dict().keys() == before.keys()
    assert not model.config._attn_implementation.startswith("adapters_")
    for config in (PrefixTuningConfig(prefix_length=4), "mam", "unipelt"):  # prefix tuning is fine
        model.add_adapter("prefix", config=config)
        model.delete_adapter("prefix")
    model.add_adapter("ok", config="seq_bn")  # the other methods are fine
    assert "ok" in model.adapters_config.adapters


# -- ModernBERT: fused Wqkv of three equal parts -------------------------------------------------------
def test_modernbert_lora_on_query_and_value_parts_of_wqkv_matches_its_definition():
    model = patched("modernbert")
    model.add_adapter("qv", config=LoRAConfig(r=2, attn_matrices=["q", "v"]), set_active=True)
    assert model.layers[0].attn.Wqkv.loras["qv"].out_slices == ((0, 32), (64, 96))
    perturb_adapter(model, "qv", scale=0.3)
    inputs = make_inputs("modernbert")
    reference = make_model("modernbert")
    with torch.no_grad():
        for layer, ref_layer in zip(model.layers, reference.layers):
            lora = layer.attn.Wqkv.loras["qv"]
            blocks = zip(lora.out_slices, lora.lora_A.unflatten(0, (2, -1)), lora.lora_B.unflatten(0, (2, -1)))
            for (start, stop), a, b in blocks:
                ref_layer.attn.Wqkv.weight[start:stop] += lora.scaling * b @ a
    out = run(model, inputs)
    assert (out - run(make_model("modernbert"), inputs)).abs().max() > 1e-3
    torch.testing.assert_close(out, run(reference, inputs), atol=1e-5, rtol=0)


def test_phi3_with_gqa_refuses_llama_adapter_and_stays_unchanged():
    model = _phi3_gqa()
    before = dict(model.state_dict())
    with pytest.raises(ValueError, match=r"Llama-Adapter is not available for phi3 with grouped-query attention.*q: 32, k: 16"):
        model.add_adapter("ap", config=AdaptionPromptConfig(adapter_len=2))
    assert "ap" not in model.adapters_config.adapters and model.state_dict().keys() == before.keys()


# -- GPT-NeoX: fused query_key_value interleaved per head ---------------------------------------------
def _per_head(weight, heads=4):
    """``query_key_value``'s ``(3·hidden, in)`` rows as ``(heads, [q, k, v], head_dim, in)``, the model's view."""
    return weight.view(heads, 3, -1, weight.shape[-1])


def test_gpt_neox_lora_on_the_query_part_changes_exactly_the_query_rows_of_every_head():
    model = patched("gpt_neox", "clm")
    model.add_adapter("q", config=LoRAConfig(r=2, attn_matrices=["q"]), set_active=True)
    host = model.gpt_neox.layers[0].attention.query_key_value
    assert host.loras["q"].out_slices == (((0, 8), (24, 32), (48, 56), (72, 80)),)  # 4 heads of 8: [q_h k_h v_h]
    perturb_adapter(model, "q", scale=0.3)
    merged = copy.deepcopy(model)
    merged.merge_adapter("q")
    delta = _per_head(merged.gpt_neox.layers[0].attention.query_key_value.weight - host.weight)
    assert delta[:, 0].abs().min(dim=-1).values.gt(0).all()  # every query row of every head moves
    assert delta[:, 1:].abs().max() == 0  # keys and values stay
    # reference: the unmodified model with W_q of head h += s·B_h A (B's rows follow the heads)
    reference = make_model("gpt_neox", "clm")
    with torch.no_grad():
        for layer, ref_layer in zip(model.gpt_neox.layers, reference.gpt_neox.layers):
            lora = layer.attention.query_key_value.loras["q"]
            update = (lora.scaling * lora.lora_B @ lora.lora_A).view(4, 8, -1)
            _per_head(ref_layer.attention.query_key_value.weight)[:, 0] += update
    inputs = make_inputs("gpt_neox")
    out = run(model, inputs)
    assert (out - run(make_model("gpt_neox", "clm"), inputs)).abs().max() > 1e-3
    torch.testing.assert_close(out, run(reference, inputs), atol=1e-5, rtol=0)
    model.merge_adapter("q")
    assert host.merged == ["q"]
    torch.testing.assert_close(run(model, inputs), out, atol=1e-5, rtol=0)


def test_gpt_neox_llama_adapter_projects_prompts_through_the_key_and_value_rows_of_every_head():
    model = patched("gpt_neox", "clm")
    model.add_adapter("ap", config=AdaptionPromptConfig(adapter_len=3, adapter_layers=1))
    host = model.gpt_neox.layers[-1].attention.adaption_prompt
    prompt = torch.randn(3, 32)
    qkv = model.gpt_neox.layers[-1].attention.query_key_value
    with torch.no_grad():
        # the model's split: view (..., heads, 3·head_dim), then chunk into q, k, v
        full = torch.nn.functional.linear(prompt, qkv.weight, qkv.bias).view(3, 4, 3, 8)
        from adapters.methods.adaption_prompt import _project

        keys = _project(host.__dict__["key_projection"], prompt).view(3, 4, 8)
        values = _project(host.__dict__["value_projection"], prompt).view(3, 4, 8)
    torch.testing.assert_close(keys, full[:, :, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(values, full[:, :, 2], atol=1e-6, rtol=0)


# -- ViT: checkpoints written against transformers 4's module paths -------------------------------------
# transformers 4 module path -> transformers 5 (written out here, independently of the loader's mapping)
_VIT_4X_PATHS = (
    (r"(^|\.)layers\.(\d+)\.output_adapters\.", r"\1encoder.layer.\2.output.output_adapters."),  # AdapterHub's ViTOutput
    (r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)


def test_vit_adapters_saved_against_transformers_4_module_paths_load_with_identical_outputs(tmp_path):
    import json
    import re

    from safetensors.torch import load_file, save_file

    model = patched("vit", "seq_cls")
    config = adapters.ConfigUnion(
        adapters.DoubleSeqBnConfig(), LoRAConfig(r=2, attn_matrices=["q", "v", "o"], intermediate_lora=True, output_lora=True)
    )
    model.add_adapter("a", config=config, set_active=True)
    perturb_adapter(model, "a")
    inputs = make_inputs("vit")
    expected = run(model, inputs)
    model.save_adapter(str(tmp_path / "new"), "a")
    # save_adapter writes AdapterHub's keys: transformers 4's paths, from the head model's root
    old_state = load_file(str(tmp_path / "new" / "adapter.safetensors"))
    ours = [k[len("vit."):] for k, _ in model.named_parameters() if ".a." in k and k.startswith("vit.")]
    by_hand = set()
    for key in ours:
        for pattern, replacement in _VIT_4X_PATHS:
            key = re.sub(pattern, replacement, key)
        by_hand.add("vit." + key)
    assert set(old_state) == by_hand
    assert any(".attention.attention.query.loras.a." in k for k in old_state)
    assert any(".encoder.layer.1.output.output_adapters.adapters.a." in k for k in old_state)
    assert not any(".layers." in k or "mlp.fc" in k for k in old_state)
    (tmp_path / "old").mkdir()
    save_file(old_state, str(tmp_path / "old" / "adapter.safetensors"))
    meta = json.loads((tmp_path / "new" / "adapter_config.json").read_text())
    (tmp_path / "old" / "adapter_config.json").write_text(json.dumps(meta))
    fresh = patched("vit", "seq_cls")
    assert (run(fresh, inputs) - expected).abs().max() > 1e-3
    fresh.load_adapter(str(tmp_path / "old"), set_active=True)
    torch.testing.assert_close(run(fresh, inputs), expected, atol=0, rtol=0)
    # a key that matches nothing, old or new, is still reported
    old_state["vit.encoder.layer.0.nowhere.adapters.a.weight"] = torch.zeros(1)
    save_file(old_state, str(tmp_path / "old" / "adapter.safetensors"))
    with pytest.raises(adapters.AdapterLoadError, match="nowhere"):
        patched("vit", "seq_cls").load_adapter(str(tmp_path / "old"), load_as="b")


def test_vit_prompt_from_string_is_refused_for_patch_embeddings():
    model = patched("vit")
    with pytest.raises(ValueError, match="from_string.*ViTPatchEmbeddings.*random_uniform"):
        model.add_adapter("p", config=adapters.PromptTuningConfig(prompt_length=2, prompt_init="from_string", prompt_init_text="a cat"))
    assert "p" not in model.adapters_config.adapters


# -- CLIP's towers -------------------------------------------------------------------------------------
def test_clip_text_refuses_prompt_tuning_and_stays_unchanged():
    model = patched("clip_text_model")
    before = dict(model.state_dict())
    with pytest.raises(ValueError, match="prompt_tuning is not available for clip_text_model.*end-of-text token"):
        model.add_adapter("p", config=adapters.PromptTuningConfig(prompt_length=2))
    assert "p" not in model.adapters_config.adapters and model.state_dict().keys() == before.keys()


@pytest.mark.parametrize("arch,tower", [("clip_text_model", "text_model"), ("clip_vision_model", "vision_model")])
def test_clip_tower_adapters_saved_with_transformers_4_paths_load_with_identical_outputs(tmp_path, arch, tower):
    """transformers 4's CLIPTextModel / CLIPVisionModel held the tower under ``text_model.`` /
    ``vision_model.``; AdapterHub's keys carry that level, transformers 5 drops it on load."""
    from safetensors.torch import load_file, save_file

    model = patched(arch)
    config = adapters.ConfigUnion(adapters.SeqBnConfig(reduction_factor=4), LoRAConfig(r=2, output_lora=True))
    model.add_adapter("a", config=config, set_active=True)
    perturb_adapter(model, "a")
    inputs = make_inputs(arch)
    expected = run(model, inputs)
    model.save_adapter(str(tmp_path), "a")
    state = load_file(str(tmp_path / "adapter.safetensors"))  # written with AdapterHub's keys
    assert all(k.startswith(f"{tower}.encoder.layers.") for k in state)
    fresh = patched(arch)
    fresh.load_adapter(str(tmp_path), set_active=True)
    torch.testing.assert_close(run(fresh, inputs), expected, atol=0, rtol=0)


# -- ALBERT: one shared layer group, run num_hidden_layers times -------------------------------------------
def test_albert_adapters_belong_to_the_shared_layers_and_run_at_every_application():
    model = patched("albert", "mlm")
    config = model.config
    assert (config.num_hidden_groups, config.inner_group_num, config.num_hidden_layers) == (1, 2, 2)
    model.add_adapter("a", config="double_seq_bn", set_active=True)
    assert set(model.get_adapter("a")) == {0, 1}  # the two distinct layers, not the four applications
    calls = []
    layers = model.albert.encoder.albert_layer_groups[0].albert_layers
    hosts = [layer.attention.attention_adapters for layer in layers] + [layer.output_adapters for layer in layers]
    handles = [h.adapters["a"].register_forward_hook(lambda m, args, out: calls.append(m)) for h in hosts]
    run(model, make_inputs("albert"))
    for handle in handles:
        handle.remove()
    assert all(sum(c is h.adapters["a"] for c in calls) == 2 for h in hosts)  # once per group pass
    # leave_out names distinct layers: 0 removes the adapter from layer 0 at every depth
    model.add_adapter("b", config=adapters.SeqBnConfig(leave_out=[0]))
    assert set(model.get_adapter("b")) == {1}
    with pytest.raises(ValueError, match=r"leave_out \[2\] names layers the model does not have; give indices 0 … 1"):
        model.add_adapter("c", config=adapters.SeqBnConfig(leave_out=[2]))


def test_albert_lora_on_the_shared_query_equals_the_updated_shared_weight():
    model = patched("albert")
    model.add_adapter("q", config=LoRAConfig(r=2, attn_matrices=["q"]), set_active=True)
    perturb_adapter(model, "q", scale=0.3)
    reference = make_model("albert")
    with torch.no_grad():
        shared = zip(model.encoder.albert_layer_groups[0].albert_layers, reference.encoder.albert_layer_groups[0].albert_layers)
        for layer, ref_layer in shared:
            lora = layer.attention.query.loras["q"]
            ref_layer.attention.query.weight += lora.scaling * lora.lora_B @ lora.lora_A
    inputs = make_inputs("albert")
    out = run(model, inputs)
    assert (out - run(make_model("albert"), inputs)).abs().max() > 1e-3
    torch.testing.assert_close(out, run(reference, inputs), atol=1e-5, rtol=0)


def test_albert_prompt_and_invertible_adapters_live_in_the_embedding_width():
    model = patched("albert", "mlm")
    assert model.config.embedding_size == 16 != model.config.hidden_size
    model.add_adapter("p", config=adapters.PromptTuningConfig(prompt_length=2))
    assert model.albert.prompt_tuning.prompt_tunings["p"].prompt_embedding.weight.shape == (2, 16)
    model.add_adapter("i", config="seq_bn_inv", set_active=True)
    perturb_adapter(model, "i")
    invertible = model.albert.invertible_adapters["i"]
    assert 2 * invertible.F[0].in_features == 16  # NICE couples the two halves of the 16-wide embedding
    inputs = make_inputs("albert")
    assert run(model, inputs).shape == (2, 12, 99)


