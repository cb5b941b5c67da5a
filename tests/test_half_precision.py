"""Adapters on models loaded in bfloat16 and float16 compute what the float32 model computes, to
the precision of the dtype.

The base models are loaded with ``from_pretrained(..., dtype=...)`` as users load them, so T5 in
float16 keeps its FFN output projections (``wo``, transformers' ``_keep_in_fp32_modules``) in
float32: the FFN output reaches the adapters' hook in float32 beside a float16 residual stream,
and LoRA on ``wo`` lives in float32 like the layer it adapts. The float32 reference runs the same
adapter weights (a checkpoint written from the float32 model and loaded into the half-precision
one). Tolerances are relative to the largest output magnitude: 3 % in bfloat16 (8 mantissa bits),
0.4 % in float16 (11 bits), and every adapter changes the output by several tolerances.

Adapters on a half-precision model are float32 by default (``autocast_adapter_dtype``, PEFT's
default): they compute in float32, their result returns to the activations' dtype, and an optimizer
step is not rounded away; ``autocast_adapter_dtype=False`` keeps the model's dtype.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import main_output, make_inputs, make_model, perturb_adapter

import adapters
from adapters import IA3Config, LoHaConfig, LoRAConfig, OFTConfig, PrefixTuningConfig, SeqBnConfig

HEADS = {"bert": "seq_cls", "llama": "clm", "gpt2": "clm", "t5": "seq2seq", "bart": "seq2seq"}
METHODS = {
    "seq_bn": SeqBnConfig(reduction_factor=4),
    "lora": LoRAConfig(r=4, alpha=8, intermediate_lora=True, output_lora=True),  # T5: wo included
    "ia3": IA3Config(target_modules="all-linear"),
    "prefix": PrefixTuningConfig(prefix_length=4, bottleneck_size=16),
    "loha": LoHaConfig(r=4, alpha=8),
    "oft": OFTConfig(oft_block_size=8),
}
# one weight transform of each kind per architecture keeps the matrix small
ARCH_METHODS = [(a, m) for a in HEADS for m in METHODS if m != ("oft" if a in ("t5", "gpt2") else "loha")]
# 22 units in the last place of 1 (bfloat16: 2^-8, float16: 2^-11), relative to the output's magnitude;
# CPUs differ here (native AVX512-FP16 half-precision GEMMs round otherwise than float32 emulation)
TOLERANCE = {torch.bfloat16: 22 * 2**-8, torch.float16: 22 * 2**-11}
# adapter noise that moves the output well beyond the tolerance, yet keeps attention out of saturation
PERTURBATION = {"seq_bn": 1.0, "lora": 0.3, "ia3": 3.0, "prefix": 1.5, "loha": 0.3, "oft": 1.0}


@functools.lru_cache(maxsize=None)
def _saved_base(arch: str, root: str) -> str:
    folder = f"{root}/base_{arch}"
    make_model(arch, HEADS[arch]).save_pretrained(folder)
    return folder


@functools.lru_cache(maxsize=None)
def _float32_reference(arch: str, method: str, root: str, scale: float = 0.0):
    """``(adapter folder, float32 output with the adapter, float32 output without)``; the adapter's
    weights get noise of ``scale`` (default: the method's ``PERTURBATION``)."""
    model = make_model(arch, HEADS[arch])
    inputs = make_inputs(arch)
    with torch.no_grad():
        base = main_output(model(**inputs))
    adapters.init(model)
    model.add_adapter("a", METHODS[method], set_active=True)
    perturb_adapter(model, "a", scale=scale or PERTURBATION[method])
    with torch.no_grad():
        out = main_output(model(**inputs))
    folder = f"{root}/{arch}_{method}_{scale}"
    model.save_adapter(folder, "a")
    return folder, out, base


def _half_model(arch: str, dtype, root: str):
    model = type(make_model(arch, HEADS[arch])).from_pretrained(_saved_base(arch, root), dtype=dtype).eval()
    adapters.init(model)
    return model


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("half"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch,method", ARCH_METHODS)
def test_adapter_in_half_precision_matches_float32(root, arch, method, dtype):
    folder, expected, base = _float32_reference(arch, method, root)
    model = _half_model(arch, dtype, root)
    model.load_adapter(folder, load_as="a", set_active=True)
    for name, param in model.named_parameters():
        if ".a." in name or name.endswith(".a"):
            # loaded into float32 adapters (autocast_adapter_dtype), which compute in float32
            assert param.dtype == torch.float32, name
    with torch.no_grad():
        out = main_output(model(**make_inputs(arch)))
    assert out.dtype in (dtype, torch.float32)
    tolerance = TOLERANCE[dtype] * expected.abs().max().item()
    # the adapter moves the output well beyond the tolerance (the base model alone errs by under a
    # fifth of it), so a model that dropped or mangled the adapter fails the comparison below
    assert (expected - base).abs().max() > 1.25 * tolerance
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=0)


def test_t5_float16_keeps_wo_in_float32_and_trains(root):
    """The mixed-precision hook: a bottleneck after T5's FFN (float32 output, float16 residual) and
    LoRA on wo train; gradients reach only the adapter, finite, in each parameter's dtype."""
    model = _half_model("t5", torch.float16, root)
    wo = model.encoder.block[0].layer[1].DenseReluDense.wo
    assert wo.weight.dtype == torch.float32 and model.shared.weight.dtype == torch.float16
    model.add_adapter("a", SeqBnConfig(reduction_factor=4), set_active=True)
    model.add_adapter("b", LoRAConfig(r=2, output_lora=True, selfattn_lora=False), set_active=False)
    model.set_active_adapters(adapters.Stack("a", "b"))
    model.train_adapter(adapters.Stack("a", "b"))
    perturb_adapter(model, "b", scale=0.2)
    inputs = make_inputs("t5")
    loss = model(**inputs, labels=inputs["decoder_input_ids"]).loss
    loss.backward()
    trained = {n: p for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all(".a." in n or ".b." in n for n in trained)
    assert any(".wo.loras.b." in n and p.dtype == torch.float32 for n, p in trained.items())
    assert all(torch.isfinite(p.grad).all() and p.grad.dtype == p.dtype for p in trained.values())


@pytest.mark.parametrize("arch", ["t5", "bart"])
@pytest.mark.parametrize("method", ["lora", "ia3", "oft"])
def test_merge_in_bfloat16(root, arch, method):
    """merge_adapter and merge_and_unload in bfloat16 give the unmerged bfloat16 output (to the
    rounding of W + ΔW) and the float32 result (both roundings: twice the tolerance); the weights
    stay bfloat16. Noise 0.3 on every method (OFT's Cayley-Neumann series needs small skew blocks
    to be well conditioned: with 1.0 on T5 even float32 and float64 differ by 2.5e-4)."""
    folder, expected, _ = _float32_reference(arch, method, root, 0.3)
    model = _half_model(arch, torch.bfloat16, root)
    model.load_adapter(folder, load_as="a", set_active=True)
    inputs = make_inputs(arch)
    with torch.no_grad():
        unmerged = main_output(model(**inputs)).float()
        model.merge_adapter("a")
        merged = main_output(model(**inputs)).float()
        plain = model.merge_and_unload()
        unloaded = main_output(plain(**inputs)).float()
    tolerance = TOLERANCE[torch.bfloat16] * expected.abs().max().item()
    torch.testing.assert_close(merged, unmerged, atol=tolerance, rtol=0)
    torch.testing.assert_close(unloaded, merged, atol=0, rtol=0)
    torch.testing.assert_close(unloaded, expected, atol=2 * tolerance, rtol=0)
    assert plain is model and not hasattr(plain, "adapters_config")
    assert {p.dtype for p in plain.parameters()} == {torch.bfloat16}
    assert not any(".loras." in n for n, _ in plain.named_parameters())


# -- float32 adapters on half-precision models (autocast_adapter_dtype, PEFT's default) -------------

# one config of every registered method family (and the bottleneck variants with other modules:
# Compacter's shared PHM parameters, the invertible adapter, parallel placement)
EVERY_METHOD = {
    "seq_bn": SeqBnConfig(reduction_factor=4),
    "par_bn": adapters.ParBnConfig(reduction_factor=4),
    "compacter": adapters.CompacterConfig(reduction_factor=4),
    "seq_bn_inv": adapters.SeqBnInvConfig(reduction_factor=4),
    "lora": LoRAConfig(r=4, alpha=8),
    "dora": adapters.DoRAConfig(r=4, alpha=8),
    "ia3": IA3Config(),
    "loha": LoHaConfig(r=4, alpha=8),
    "lokr": adapters.LoKrConfig(r=4, alpha=8),
    "oft": OFTConfig(oft_block_size=8),
    "hra": adapters.HRAConfig(r=4),
    "adalora": adapters.AdaLoRAConfig(init_r=4, target_r=2, total_step=10),
    "mtl_lora": adapters.MTLLoRAConfig(r=4, alpha=8, n_up_projection=3),
    "vera": adapters.VeraConfig(r=4),
    "prefix": PrefixTuningConfig(prefix_length=4, bottleneck_size=16),
    "prompt": adapters.PromptTuningConfig(prompt_length=4),
    "adaption_prompt": adapters.AdaptionPromptConfig(adapter_len=4, adapter_layers=1),
    "loreft": adapters.LoReftConfig(r=2),
}


def _adapter_params(model, name: str = "a") -> dict:
    """Every parameter of adapter ``name`` (its modules, pools, shared parameters), by name."""
    return {n: p for n, p in model.named_parameters() if f".{name}." in n or n.endswith(f".{name}")}


def test_every_registered_family_is_covered():
    from adapters.methods.registry import families

    covered = {family.name for config in EVERY_METHOD.values() for family, _ in adapters.methods.registry.families_of(config)}
    assert covered == {family.name for family in families()}


@pytest.mark.parametrize("method", list(EVERY_METHOD))
def test_float32_adapter_on_bfloat16_model(method):
    """On a bfloat16 Llama every method's parameters are float32; the output stays bfloat16 and
    equals the float32 model's with the same adapter weights (to bfloat16's precision, well
    inside the adapter's own effect); one AdamW step at lr 1e-4 changes every adapter element
    (bfloat16 parameters keep about half of them: an update under half a unit in the last place
    rounds away), and nothing outside the adapter trains (the LM head included)."""
    reference = make_model("llama", "clm")
    adapters.init(reference)
    inputs = make_inputs("llama")
    with torch.no_grad():
        base = main_output(reference(**inputs))
    reference.add_adapter("a", EVERY_METHOD[method], set_active=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in _adapter_params(reference).values():
            param.add_(torch.randn(param.shape, generator=generator) * (1.0 if method == "adaption_prompt" else 0.3))
        expected = main_output(reference(**inputs))
    model = make_model("llama", "clm").to(torch.bfloat16)
    adapters.init(model)
    model.add_adapter("a", EVERY_METHOD[method], set_active=True)
    params = _adapter_params(model)
    assert params and {p.dtype for p in params.values()} == {torch.float32}
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(dict(reference.named_parameters())[name])
        out = main_output(model(**inputs))
    assert out.dtype == torch.bfloat16
    scale = expected.abs().max().item()
    # the adapter matters (prompt tuning's output has its prompt positions in front)
    assert (expected[:, -base.shape[1]:] - base).abs().max().item() > 0.05 * scale
    torch.testing.assert_close(out.float(), expected, atol=0.025 * scale, rtol=0)

    model.train_adapter("a")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(trainable) == set(params)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=1e-4)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    optimizer.step()
    unchanged = sum(int((p.detach() == before[n]).sum()) for n, p in trainable.items())
    total = sum(p.numel() for p in trainable.values())
    # AdamW moves every element with a gradient by about lr; a few may get an exact zero gradient
    assert unchanged <= 0.01 * total, f"{unchanged} of {total} elements unchanged"


@pytest.mark.parametrize("method", ["seq_bn", "lora", "prefix", "vera", "ia3"])
def test_autocast_adapter_dtype_off_keeps_model_dtype(method):
    """``autocast_adapter_dtype=False`` (per call, or the model's default) gives adapters the
    model's dtype, as before; the forward still runs and stays bfloat16."""
    model = make_model("llama", "clm").to(torch.bfloat16)
    adapters.init(model)
    model.add_adapter("a", EVERY_METHOD[method], set_active=True, autocast_adapter_dtype=False)
    assert {p.dtype for p in _adapter_params(model).values()} == {torch.bfloat16}
    model.autocast_adapter_dtype = False
    model.add_adapter("b", EVERY_METHOD[method])
    assert {p.dtype for p in _adapter_params(model, "b").values()} == {torch.bfloat16}
    model.add_adapter("c", EVERY_METHOD[method], autocast_adapter_dtype=True)
    assert {p.dtype for p in _adapter_params(model, "c").values()} == {torch.float32}
    with torch.no_grad():
        assert main_output(model(**make_inputs("llama"))).dtype == torch.bfloat16


def test_autocast_adapter_dtype_refuses_other_values_and_leaves_model_unchanged():
    model = make_model("llama", "clm").to(torch.bfloat16)
    adapters.init(model)
    with pytest.raises(adapters.AdapterConfigError, match=r"autocast_adapter_dtype must be True, False or None, not 'yes'"):
        model.add_adapter("a", "lora", autocast_adapter_dtype="yes")
    assert "a" not in model.adapters_config.adapters and not _adapter_params(model)


def test_float32_model_keeps_float32_adapters_and_float32_fusion_on_bfloat16():
    model = make_model("bert", "seq_cls")
    adapters.init(model)
    model.add_adapter("a", "seq_bn")
    assert {p.dtype for p in _adapter_params(model).values()} == {torch.float32}
    half = make_model("bert", "seq_cls").to(torch.bfloat16)
    adapters.init(half)
    half.add_adapter("a", "seq_bn")
    half.add_adapter("b", "seq_bn")
    half.add_adapter_fusion(adapters.Fuse("a", "b"), set_active=True)
    fusion = {n: p for n, p in half.named_parameters() if ".adapter_fusion_layer." in n}
    assert fusion and {p.dtype for p in fusion.values()} == {torch.float32}
    half.train_adapter_fusion(adapters.Fuse("a", "b"))
    inputs = make_inputs("bert")
    out = half(**inputs, labels=torch.tensor([0, 1]))
    assert main_output(out).dtype == torch.bfloat16
    out.loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fusion.values())


def test_adapter_to_moves_a_float32_adapter_to_bfloat16():
    model = make_model("llama", "clm").to(torch.bfloat16)
    adapters.init(model)
    model.add_adapter("a", SeqBnConfig(reduction_factor=4), set_active=True)
    perturb_adapter(model, "a", scale=0.3)
    inputs = make_inputs("llama")
    with torch.no_grad():
        before = main_output(model(**inputs)).float()
        model.adapter_to("a", dtype=torch.bfloat16)
        assert {p.dtype for p in _adapter_params(model).values()} == {torch.bfloat16}
        after = main_output(model(**inputs))
    assert after.dtype == torch.bfloat16
    torch.testing.assert_close(after.float(), before, atol=0.025 * before.abs().max().item(), rtol=0)


@pytest.mark.parametrize("method", ["lora", "ia3", "loha", "vera"])
def test_merge_adds_the_float32_update_rounded_once(method):
    """A float32 adapter merged into a bfloat16 weight: ``bf16(W + ΔW)``, the update computed and
    added in float32 and rounded once (not ``W + bf16(ΔW)``); merged ≈ unmerged; the unmerge
    gives ``bf16(W' − ΔW)``."""
    model = make_model("llama", "clm").to(torch.bfloat16)
    adapters.init(model)
    model.add_adapter("a", EVERY_METHOD[method], set_active=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in _adapter_params(model).values():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    host = next(h for h in model._adapter_hosts if h.hosts_weight_deltas and "a" in h.loras)
    adapter = host.loras["a"]
    weight = host.weight.detach().clone()
    inputs = make_inputs("llama")
    with torch.no_grad():
        unmerged = main_output(model(**inputs)).float()
        if adapter.additive:
            expected = (weight.float() + adapter.delta_weight().float()).to(torch.bfloat16)
        else:  # (IA)³ scales the weight's rows
            expected = (weight.float() * adapter.delta_weight().float().unsqueeze(1)).to(torch.bfloat16)
        model.merge_adapter("a")
        assert host.weight.dtype == torch.bfloat16
        torch.testing.assert_close(host.weight, expected, atol=0, rtol=0)
        merged = main_output(model(**inputs)).float()
        torch.testing.assert_close(merged, unmerged, atol=0.025 * unmerged.abs().max().item(), rtol=0)
        model.reset_adapter()
        if adapter.additive:
            restored = (expected.float() - adapter.delta_weight().float()).to(torch.bfloat16)
        else:
            restored = (expected.float() / adapter.delta_weight().float().unsqueeze(1)).to(torch.bfloat16)
        torch.testing.assert_close(host.weight, restored, atol=0, rtol=0)


@pytest.mark.parametrize(
    "setup",
    [
        adapters.Stack("l1", "l2", "b1"),
        adapters.Parallel("l1", "b1"),
        adapters.Average("l1", "l2", weights=[0.3, 0.7]),
        adapters.BatchSplit("b1", adapters.Stack("l2", "b2"), batch_sizes=[1, 1]),
        adapters.Average("b1", "b2", weights=[0.5, 0.5]),
    ],
    ids=["stack", "parallel", "average-lora", "batchsplit", "average-bn"],
)
def test_composed_float32_adapters_on_bfloat16_model(setup):
    """Composition blocks over float32 LoRA and bottleneck adapters on a bfloat16 Llama give the
    float32 model's output to bfloat16's precision, in bfloat16."""
    configs = {"l1": LoRAConfig(r=4, alpha=8), "l2": LoRAConfig(r=4, alpha=8), "b1": SeqBnConfig(reduction_factor=4), "b2": SeqBnConfig(reduction_factor=4)}
    reference = make_model("llama", "clm")
    model = make_model("llama", "clm").to(torch.bfloat16)
    for m in (reference, model):
        adapters.init(m)
        for name, config in configs.items():
            m.add_adapter(name, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in configs:
            for key, param in _adapter_params(reference, name).items():
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
                dict(model.named_parameters())[key].copy_(param)
    assert {p.dtype for name in configs for p in _adapter_params(model, name).values()} == {torch.float32}
    inputs = make_inputs("llama")
    with torch.no_grad():
        reference.set_active_adapters(setup)
        model.set_active_adapters(setup)
        expected = main_output(reference(**inputs))
        out = main_output(model(**inputs))
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    torch.testing.assert_close(out.float(), expected, atol=0.025 * expected.abs().max().item(), rtol=0)
