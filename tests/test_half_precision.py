"""Adapters on models loaded in bfloat16 and float16 compute what the float32 model computes, to
the precision of the dtype.

The base models are loaded with ``from_pretrained(..., dtype=...)`` as users load them, so T5 in
float16 keeps its FFN output projections (``wo``, transformers' ``_keep_in_fp32_modules``) in
float32: the FFN output reaches the adapters' hook in float32 beside a float16 residual stream,
and LoRA on ``wo`` lives in float32 like the layer it adapts. The float32 reference runs the same
adapter weights (a checkpoint written from the float32 model and loaded into the half-precision
one). Tolerances are relative to the largest output magnitude: 3 % in bfloat16 (8 mantissa bits),
0.4 % in float16 (11 bits), and every adapter changes the output by several tolerances.
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
            # adapters take the dtype of the layer they sit on: T5 keeps wo in float32 in float16
            assert param.dtype == (torch.float32 if ".wo." in name and dtype == torch.float16 and arch == "t5" else dtype), name
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
