"""VeRA and DVoRA: each against its definition (effective weights written out here from the shared
projections and the vectors), across the architecture matrix, in every composition block LoRA takes
part in, merged, saved and loaded in AdapterHub's and PEFT's layouts, trained, and refused where the
input is bad."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import NEW_ARCHS, make_inputs, make_model, patched, perturb_adapter, reference_with_deltas, require, run
from safetensors.torch import load_file, save_file

import adapters
from adapters import (
    AdapterConfig,
    AdapterConfigError,
    AdapterLoadError,
    Average,
    BatchSplit,
    CompositionError,
    DvoRAConfig,
    Fuse,
    LoRAConfig,
    Parallel,
    SeqBnConfig,
    Split,
    Stack,
    VeraConfig,
)
from adapters.methods.vera import Vera, draw_projections

CONFIGS = {"vera": VeraConfig(r=4, init_weights_seed=0), "dvora": DvoRAConfig(r=4, init_weights_seed=0)}


# -- the definition, written out ------------------------------------------------------------------------
def vera_weight(model, name: str, adapter: Vera, weight: torch.Tensor) -> torch.Tensor:
    """The adapted weight rows by VeRA's definition: ``W + s·diag(b) B diag(d) A`` per part of a
    fused projection (DVoRA: renormalised per row, times ``m``)."""
    projections = model.base_model.shared_parameters[name]
    A = projections.lora_A[:, : adapter.in_features]
    parts, rows = adapter.groups, adapter.rows // adapter.groups
    B = projections.lora_B[:rows]
    d, b = adapter.vera_D.detach(), adapter.vera_B.detach()
    if d.dim() == 2:  # AdapterHub's dense form
        delta = b @ B @ d @ A
    else:
        delta = torch.cat([
            torch.diag(b[i * rows : (i + 1) * rows]) @ B @ torch.diag(d[i * adapter.r : (i + 1) * adapter.r]) @ A
            for i in range(parts)
        ])
    updated = weight + adapter.scaling * delta
    if "lora_magnitude" in dict(adapter.named_parameters()):
        updated = adapter.lora_magnitude.detach().unsqueeze(1) * updated / updated.norm(dim=1, keepdim=True)
    return updated


def reference_model(model, arch, weights_per_adapter: dict[str, float], head="base"):
    """A fresh base model whose adapted weights are ``W + Σ_i w_i (W_i − W)`` (VeRA's ``W_i`` by
    its definition, other methods' by their own ``delta_weight``)."""

    def delta_of(name):
        def delta(adapter, weight):
            if isinstance(adapter, Vera):
                return vera_weight(model, name, adapter, weight) - weight
            return adapter.delta_weight().detach()

        return delta

    return reference_with_deltas(model, arch, {n: (w, delta_of(n)) for n, w in weights_per_adapter.items()}, head)


def _add(model, name, method="vera", seed=0, **overrides):
    config = CONFIGS[method].replace(**overrides) if overrides else CONFIGS[method]
    model.add_adapter(name, config=config)
    perturb_adapter(model, name, scale=0.3, seed=seed)


# -- single adapters across the matrix ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2", *NEW_ARCHS, "t5", "bart", "whisper"])
@pytest.mark.parametrize("method", list(CONFIGS))
def test_initialised_adapter_is_the_identity_and_trained_one_matches_its_definition(arch, method):
    model = patched(arch)
    inputs = make_inputs(arch)
    base = run(model, inputs)
    model.add_adapter("a", config=CONFIGS[method], set_active=True)
    torch.testing.assert_close(run(model, inputs), base, atol=1e-5, rtol=0)  # b = 0 (DVoRA: m = ‖W‖)
    perturb_adapter(model, "a", scale=0.3)
    out = run(model, inputs)
    assert (out - base).abs().max() > 1e-3
    torch.testing.assert_close(out, run(reference_model(model, arch, {"a": 1.0}), inputs), atol=2e-5, rtol=1e-4)


def test_projections_are_shared_and_sized_for_the_largest_layer():
    # Llama's grouped-query attention: q is 32 wide, v 16 — AdapterHub's one-shape projections fail
    # there (see tests/fixtures/adapterhub/manifest.json); here v uses the top 16 rows of B
    model = patched("llama")
    model.add_adapter("a", config=VeraConfig(r=4, init_weights_seed=7, intermediate_lora=True))
    projections = model.base_model.shared_parameters["a"]
    hosts = [h for h in model._adapter_hosts if hasattr(h, "loras") and "a" in h.loras]
    assert projections.lora_A.shape == (4, max(h.in_features for h in hosts))
    assert projections.lora_B.shape == (max(h.out_features for h in hosts), 4)
    assert all(h.loras["a"].projections is projections for h in hosts)
    A, B = draw_projections("vera", 4, *projections.lora_A.shape[1:], projections.lora_B.shape[0], seed=7)
    assert torch.equal(projections.lora_A, A) and torch.equal(projections.lora_B, B)
    # AdapterHub's draw: seed the global generator, Kaiming-uniform A, then B
    torch.manual_seed(7)
    assert torch.equal(torch.nn.init.kaiming_uniform_(torch.empty(A.shape)), A)
    assert not any(p is projections.lora_A for p in model.parameters())  # buffers: never trained


@pytest.mark.parametrize("arch,head", [("bert", "seq_cls"), ("llama", "clm"), ("t5", "seq2seq")])
def test_heads_and_adapter_model_heads(arch, head):
    model = patched(arch, head)
    inputs = make_inputs(arch)
    base = run(model, inputs)
    _add(model, "a", "dvora")
    model.set_active_adapters("a")
    out = run(model, inputs)
    assert (out - base).abs().max() > 1e-3
    torch.testing.assert_close(out, run(reference_model(model, arch, {"a": 1.0}, head), inputs), atol=3e-5, rtol=1e-4)
    if arch == "bert":
        from adapters import AutoAdapterModel

        flex = AutoAdapterModel.from_config(make_model(arch).config)
        flex.add_adapter("a", config=CONFIGS["vera"])
        flex.add_classification_head("a", num_labels=3)
        perturb_adapter(flex, "a", scale=0.3)
        flex.train_adapter("a")
        logits = flex(**inputs).logits
        logits.sum().backward()
        trainable = {k for k, p in flex.named_parameters() if p.requires_grad}
        assert trainable and all(".a." in k or "heads.a" in k for k in trainable)
        assert any(k.endswith("vera_D") for k in trainable) and logits.shape[-1] == 3


def test_training_moves_only_d_b_and_the_magnitude():
    model = patched("bert")
    _add(model, "v", "vera")
    _add(model, "dv", "dvora", seed=3)
    model.train_adapter(Stack("v", "dv"))
    trainable = {k.rsplit(".", 1)[-1] for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"vera_D", "vera_B", "lora_magnitude"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(**make_inputs("bert")).last_hidden_state
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.rsplit(".", 1)[-1] in ("vera_D", "vera_B", "lora_magnitude") for k in changed)
    per_layer = sum(p.numel() for k, p in model.named_parameters() if ".v." in k)
    hosts = [h for h in model._adapter_hosts if hasattr(h, "loras") and "v" in h.loras]
    assert per_layer == sum(4 + h.out_features for h in hosts)  # r + d_out per layer


# -- composition -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_stack_and_average_with_lora_equal_their_definitions(arch):
    model = patched(arch)
    _add(model, "v", "vera")
    _add(model, "w", "vera", seed=5, init_weights_seed=1)
    model.add_adapter("lora", config=LoRAConfig(r=4))
    perturb_adapter(model, "lora", scale=0.2, seed=9)
    inputs = make_inputs(arch)
    stacked = run(model, inputs, Stack("v", "lora", "w"))
    expected = run(reference_model(model, arch, {"v": 1.0, "lora": 1.0, "w": 1.0}), inputs)
    torch.testing.assert_close(stacked, expected, atol=3e-5, rtol=1e-4)
    weights = [0.7, -0.4, 1.3]
    averaged = run(model, inputs, Average("v", "lora", "w", weights=weights, normalize_weights=False))
    expected = run(reference_model(model, arch, dict(zip(["v", "lora", "w"], weights))), inputs)
    torch.testing.assert_close(averaged, expected, atol=3e-5, rtol=1e-4)


def test_parallel_batchsplit_and_split_give_each_slice_its_adapter():
    model = patched("llama")
    _add(model, "v", "vera")
    _add(model, "dv", "dvora", seed=2)
    model.add_adapter("bn", config=SeqBnConfig(reduction_factor=4))
    perturb_adapter(model, "bn", scale=0.2)
    inputs = make_inputs("llama", batch=2)
    single = {n: run(model, inputs, n) for n in ("v", "dv", "bn")}
    parallel = run(model, inputs, Parallel("v", "dv", "bn"))
    for i, name in enumerate(("v", "dv", "bn")):
        torch.testing.assert_close(parallel[2 * i : 2 * i + 2], single[name], atol=1e-5, rtol=0)
    split = run(model, inputs, BatchSplit("v", "dv", batch_sizes=[1, 1]))
    torch.testing.assert_close(split[:1], single["v"][:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(split[1:], single["dv"][1:], atol=1e-5, rtol=0)
    # sequence split at the FFN output of the last BERT layer (position-wise after attention)
    bert = patched("bert")
    last = {"selfattn_lora": False, "output_lora": True, "leave_out": [0]}
    _add(bert, "v", "vera", **last)
    _add(bert, "dv", "dvora", seed=2, **last)
    inputs = make_inputs("bert")
    out = run(bert, inputs, Split("v", "dv", splits=[4, 8]))
    torch.testing.assert_close(out[:, :4], run(bert, inputs, "v")[:, :4], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 4:], run(bert, inputs, "dv")[:, 4:], atol=1e-5, rtol=0)


def test_stack_with_a_bottleneck_and_fuse_refused_at_activation():
    model = patched("bert")
    _add(model, "v", "vera")
    model.add_adapter("bn", config=SeqBnConfig(reduction_factor=4))
    perturb_adapter(model, "bn", scale=0.2)
    inputs = make_inputs("bert")
    out = run(model, inputs, Stack("v", "bn"))
    reference = reference_model(model, "bert", {"v": 1.0})
    adapters.init(reference)
    reference.add_adapter("bn", config=SeqBnConfig(reduction_factor=4))
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if ".bn." in k}, strict=False)
    torch.testing.assert_close(out, run(reference, inputs, "bn"), atol=3e-5, rtol=1e-4)
    _add(model, "w", "vera", seed=4)
    with pytest.raises(AdapterConfigError, match=r"adapter 'v': its method vera has no fusion"):
        model.add_adapter_fusion(Fuse("v", "w"))
    with pytest.raises(CompositionError, match="Fuse"):
        model.set_active_adapters(Fuse("v", "w"))
    assert not model.adapters_config.fusions


# -- merging -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("method", list(CONFIGS))
def test_merge_unmerge_and_merge_and_unload(arch, method):
    model = patched(arch)
    _add(model, "a", method)
    model.set_active_adapters("a")
    inputs = make_inputs(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = run(model, inputs)
    model.merge_adapter("a")
    torch.testing.assert_close(run(model, inputs), out, atol=1e-5, rtol=1e-5)
    model.reset_adapter()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=1e-6, rtol=0)
    unloaded = model.merge_and_unload()
    torch.testing.assert_close(run(unloaded, inputs), out, atol=1e-5, rtol=1e-5)
    assert not any("loras" in k or "shared_parameters" in k for k in unloaded.state_dict())


def test_average_adapter_is_linear_on_shared_projections_only():
    model = patched("bert")
    _add(model, "a", "vera", seed=1)
    _add(model, "b", "vera", seed=2)
    model.average_adapter("avg", ["a", "b"], weights=[0.25, 0.75])
    host = next(h for h in model._adapter_hosts if hasattr(h, "loras") and "avg" in h.loras)
    expected = 0.25 * host.loras["a"].vera_B + 0.75 * host.loras["b"].vera_B
    torch.testing.assert_close(host.loras["avg"].vera_B, expected)
    with pytest.raises(AdapterConfigError, match="combine_strategy='linear'"):
        model.average_adapter("svd", ["a", "b"], combine_strategy="lora_delta_w_svd", svd_rank=2)
    _add(model, "c", "vera", seed=3, init_weights_seed=5)
    with pytest.raises(AdapterConfigError, match="different fixed values"):
        model.average_adapter("mixed", ["a", "c"], weights=[0.5, 0.5])
    assert "svd" not in model.adapters_config.adapters and "mixed" not in model.adapters_config.adapters


# -- checkpoints -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(CONFIGS))
def test_adapterhub_layout_round_trips_bit_for_bit(tmp_path, method):
    model = patched("bert")
    _add(model, "a", method)
    model.save_adapter(str(tmp_path), "a")
    with open(tmp_path / "adapter_config.json") as f:
        saved = json.load(f)["config"]
    assert saved["architecture"] == "lora" and saved["vera_d"] == 0.1  # AdapterHub's layout
    weights = load_file(str(tmp_path / "adapter.safetensors"))
    query = "encoder.layer.0.attention.self.query.loras.a."
    assert weights[query + "vera_D"].shape == (4, 4) and weights[query + "vera_B"].shape == (32, 32)
    assert (query + "m.weight" in weights) == (method == "dvora")
    assert sorted(k for k in weights if "shared_parameters" in k) == ["shared_parameters.a.lora_A", "shared_parameters.a.lora_B"]
    other = patched("bert")
    other.load_adapter(str(tmp_path))
    assert type(other.adapters_config.adapters["a"]) is type(CONFIGS[method])
    mine = {k: v for k, v in model.state_dict().items() if ".a." in k}
    theirs = {k: v for k, v in other.state_dict().items() if ".a." in k}
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_without_saved_projections_the_seed_rebuilds_them(tmp_path):
    model = patched("llama")
    _add(model, "a", "vera", save_projection=False, init_weights_seed=None, projection_prng_key=42)
    model.save_adapter(str(tmp_path), "a")
    assert not any("shared_parameters" in k for k in load_file(str(tmp_path / "adapter.safetensors")))
    other = patched("llama")
    other.load_adapter(str(tmp_path), set_active=True)
    inputs = make_inputs("llama")
    torch.testing.assert_close(run(other, inputs), run(model, inputs, "a"), atol=0, rtol=0)


def test_dense_adapterhub_matrices_switch_the_layer_to_the_full_form_and_keep_training(tmp_path):
    model = patched("bert")
    _add(model, "a", "vera")
    model.save_adapter(str(tmp_path), "a")
    path = str(tmp_path / "adapter.safetensors")
    weights = load_file(path)
    key = "encoder.layer.0.attention.self.query.loras.a.vera_D"
    weights[key] = weights[key] + 0.05  # dense, as AdapterHub trains it
    save_file(weights, path)
    other = patched("bert")
    other.load_adapter(str(tmp_path), set_active=True)
    module = other.encoder.layer[0].attention.self.query.loras["a"]
    assert module.full_scaling and module.vera_D.shape == (4, 4)
    assert not other.encoder.layer[1].attention.self.query.loras["a"].full_scaling  # still diagonal there
    inputs = make_inputs("bert")
    torch.testing.assert_close(run(other, inputs), run(reference_model(other, "bert", {"a": 1.0}), inputs), atol=2e-5, rtol=1e-4)
    other.train_adapter("a")
    assert module.vera_D.requires_grad
    other.save_adapter(str(tmp_path / "again"), "a")
    assert torch.equal(load_file(str(tmp_path / "again" / "adapter.safetensors"))[key], weights[key])


def test_adapterhub_checkpoints_without_a_seed_are_refused(tmp_path):
    """AdapterHub saves no projections and, without init_weights_seed, draws them from the unseeded
    generator: no library can rebuild them, so loading would compute something else."""
    config = VeraConfig(r=4).to_dict()
    for key in ("projection_prng_key", "save_projection", "target_modules"):
        config.pop(key)
    meta = {"config": config, "name": "a", "model_type": "bert", "hidden_size": 32, "version": "adapters.1.3.0"}
    with pytest.raises(AdapterConfigError, match=r"init_weights_seed.*cannot be rebuilt"):
        AdapterConfig.from_checkpoint_dict(meta, file="a/adapter_config.json")
    config["init_weights_seed"] = 3
    loaded = AdapterConfig.from_checkpoint_dict({**meta, "config": config}, file="a/adapter_config.json")
    assert isinstance(loaded, VeraConfig) and not loaded.save_projection and loaded.init_weights_seed == 3
    model = patched("bert")
    model.add_adapter("a", config=loaded)
    model.save_adapter(str(tmp_path), "a")
    with open(tmp_path / "adapter_config.json", "w") as f:
        json.dump({**meta, "config": {**config, "init_weights_seed": None}}, f)
    fresh = patched("bert")
    with pytest.raises(AdapterLoadError, match="init_weights_seed"):
        fresh.load_adapter(str(tmp_path))
    assert not fresh.adapters_config.adapters


def test_saved_projections_of_another_shape_are_refused(tmp_path):
    model = patched("bert")
    _add(model, "a", "vera")
    model.save_adapter(str(tmp_path), "a")
    path = str(tmp_path / "adapter.safetensors")
    weights = load_file(path)
    weights["shared_parameters.a.lora_A"] = torch.zeros(4, 7)
    save_file(weights, path)
    fresh = patched("bert")
    with pytest.raises(AdapterLoadError, match=r"adapter.safetensors.*lora_A.*\(4, 7\)"):
        fresh.load_adapter(str(tmp_path))
    assert not fresh.adapters_config.adapters and "a" not in fresh.base_model.shared_parameters


# -- PEFT's VeRA --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("save_projection", [True, False])
@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_peft_vera_checkpoints_load_and_ours_load_in_peft(tmp_path, arch, save_projection):
    peft = require("peft")
    targets = ["q_proj", "v_proj"] if arch == "llama" else ["query", "value"]
    reference = make_model(arch)
    peft_model = peft.get_peft_model(
        reference, peft.VeraConfig(r=4, target_modules=targets, projection_prng_key=3, save_projection=save_projection)
    )
    with torch.no_grad():
        for i, (key, param) in enumerate(p for p in peft_model.named_parameters() if "vera_lambda" in p[0]):
            param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(i)) * 0.5)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    inputs = make_inputs(arch)
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**inputs)[0]
    ours = patched(arch)
    base = run(ours, inputs)
    ours.load_adapter(str(tmp_path / "peft"), load_as="v", set_active=True)
    out = run(ours, inputs)
    assert (out - base).abs().max() > 1e-3
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # and back: ours (with alpha != r, folded into b) written for PEFT
    mine = patched(arch)
    mine.add_adapter("m", config=VeraConfig(r=4, alpha=12, target_modules=targets, save_projection=save_projection))
    perturb_adapter(mine, "m", scale=0.5)
    mine.save_adapter(str(tmp_path / "mine"), "m", format="peft")
    loaded = peft.PeftModel.from_pretrained(make_model(arch), str(tmp_path / "mine")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs)[0], run(mine, inputs, "m"), atol=1e-5, rtol=1e-5)


def test_what_peft_cannot_express_is_refused(tmp_path):
    model = patched("bert")
    _add(model, "dv", "dvora")
    with pytest.raises(AdapterConfigError, match="PEFT has no DVoRA"):
        model.save_adapter(str(tmp_path / "dv"), "dv", format="peft")
    _add(model, "bert_init", "vera", init_weights="bert", save_projection=False)
    with pytest.raises(AdapterConfigError, match="save_projection=True"):
        model.save_adapter(str(tmp_path / "b"), "bert_init", format="peft")
    assert not os.path.exists(tmp_path / "dv" / "adapter_config.json")


# -- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,message", [
    ("r", 0, "VeraConfig.r must be a positive integer"),
    ("vera_d", "big", "VeraConfig.vera_d"),
    ("vera_b", float("nan"), "VeraConfig.vera_b"),
    ("init_weights", "kaiming", "VeraConfig.init_weights must be one of 'vera'"),
    ("composition_mode", "scale", "VeraConfig.composition_mode"),
    ("rank_pattern", {"query": 2}, "VeraConfig.rank_pattern"),
    ("projection_prng_key", -1, "VeraConfig.projection_prng_key"),
    ("save_projection", "yes", "VeraConfig.save_projection"),
])
def test_bad_values_are_refused_with_the_field_named(field, value, message):
    with pytest.raises(AdapterConfigError, match=message):
        VeraConfig(**{field: value})


def test_ids_dicts_and_adapterhub_dicts_read_as_vera():
    assert AdapterConfig.load("vera") == VeraConfig() and isinstance(AdapterConfig.load("dvora[r=4]"), DvoRAConfig)
    ah = {"architecture": "lora", "r": 4, "vera_d": 0.1, "vera_b": 0.0, "use_dora": True, "init_weights": "vera"}
    config = AdapterConfig.from_dict(ah)
    assert isinstance(config, DvoRAConfig) and config.r == 4
    assert isinstance(AdapterConfig.from_dict({"architecture": "lora", "r": 4}), LoRAConfig)
    assert AdapterConfig.from_dict(VeraConfig(alpha=3).to_dict()) == VeraConfig(alpha=3)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_inference_keeps_the_adapted_weight_until_a_parameter_changes(method):
    model = patched("bert")
    _add(model, "a", method)
    model.set_active_adapters("a")
    inputs = make_inputs("bert")
    module = model.encoder.layer[0].attention.self.query.loras["a"]
    host = model.encoder.layer[0].attention.self.query
    kept_weight = lambda: host.__dict__.get("_adapters_kept_weight", {}).get("weight", (None, None))[1]  # noqa: E731
    first = run(model, inputs)
    kept = kept_weight()
    assert kept is not None and run(model, inputs) is not None and kept_weight() is kept  # reused
    with torch.no_grad():
        module.vera_B.mul_(-2.0)  # an optimizer step, a load: the version counter moves
    changed = run(model, inputs)
    assert kept_weight() is not kept and (changed - first).abs().max() > 1e-4
    torch.testing.assert_close(changed, run(reference_model(model, "bert", {"a": 1.0}), inputs), atol=2e-5, rtol=1e-4)
    module.vera_B.data.mul_(0.5)  # no version counter sees this: forget the kept weight by hand
    Vera.forget_kept_weight(host)
    torch.testing.assert_close(run(model, inputs), run(reference_model(model, "bert", {"a": 1.0}), inputs), atol=2e-5, rtol=1e-4)
    _add(model, "b", method, seed=9)
    run(model, inputs, "b")
    assert kept_weight() is not kept and len(host.__dict__["_adapters_kept_weight"]) == 1  # one per layer
    model.to(torch.float64)
    model.to(torch.float16)
    model.set_active_adapters("a")
    run(model, {k: v for k, v in inputs.items()})  # half precision: the low-rank path, and the kept weight is freed
    assert kept_weight() is None
    model.to(torch.float32)
    model.train_adapter("a")
    out = model(**inputs).last_hidden_state  # training: the low-rank path, with gradients
    out.sum().backward()
    assert module.vera_B.grad is not None


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("method", list(CONFIGS))
def test_the_training_path_computes_the_definition(arch, method):
    """With gradients recorded the vectors act on the activations (their gradients are sums over
    the tokens); the output is still the definition, on whole layers and on GPT-2's fused c_attn."""
    model = patched(arch)
    _add(model, "a", method)
    model.train_adapter("a")
    inputs = make_inputs(arch)
    from conftest import main_output

    out = main_output(model(**inputs))
    torch.testing.assert_close(out.detach(), run(reference_model(model, arch, {"a": 1.0}), inputs), atol=3e-5, rtol=1e-4)
    out.sum().backward()
    assert all(p.grad is not None for k, p in model.named_parameters() if p.requires_grad and ".a." in k)
