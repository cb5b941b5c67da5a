"""Adapters on quantized bases: bitsandbytes 4-bit (NF4 / FP4) and 8-bit (LLM.int8), torchao int8 /
int4 weight-only (see adapters/methods/quantized.py and docs/quantization.rst).

The forward reference: on CPU bitsandbytes multiplies with the dequantized weight ``deq(W_q)``
(measured: 3.6e-7 from ``x deq(W_q)ᵀ + b`` for int8, float32 rounding for 4-bit), so a layer with
an adapter must compute ``x W'ᵀ + b'`` with ``W'``, ``b'`` the adapter's effective weight built on
``deq(W_q)`` in float — for LoRA, the quantized layer's own output plus ``s·x Aᵀ Bᵀ``.

The merge bound: a merge writes ``W_q' = q(deq(W_q) + ΔW)`` and reports ``e = max |deq(W_q') −
(deq(W_q) + ΔW)|``, so the merged layer's output differs from the unmerged one by at most
``‖x‖₁ · e`` per entry (each output entry is a sum over ``x_i`` times an entry of the error).
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import adapters
from adapters.context import ForwardContext
from adapters.errors import AdapterConfigError, AdapterMergeError
from adapters.methods.quantized import quantization_of

from conftest import perturb_adapter, require

# bitsandbytes 4-bit blocks are 64 weights: every size here is a multiple of it
LLAMA = dict(
    vocab_size=99, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, pad_token_id=0,
)
INPUT_IDS = torch.tensor([[5, 17, 33, 2, 91, 44, 8], [60, 3, 12, 77, 25, 9, 41]])

METHODS = {
    "lora": lambda: adapters.LoRAConfig(r=4, alpha=8),
    "dora": lambda: adapters.LoRAConfig(r=4, alpha=8, use_dora=True),
    "ia3": lambda: adapters.IA3Config(),
    "vera": lambda: adapters.VeraConfig(r=8, vera_d=0.5),
    "loha": lambda: adapters.LoHaConfig(r=4, alpha=4),
    "lokr": lambda: adapters.LoKrConfig(r=4, alpha=4),
    "oft": lambda: adapters.OFTConfig(),
    "hra": lambda: adapters.HRAConfig(r=4),
}


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny Llama saved once (no pretrained causal LM installs offline)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).save_pretrained(folder)
    return folder


def _bnb_model(folder, kind: str):
    require("bitsandbytes")
    quantization = {
        "nf4": transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
        "fp4": transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32
        ),
        "int8": transformers.BitsAndBytesConfig(load_in_8bit=True),
    }[kind]
    model = transformers.LlamaForCausalLM.from_pretrained(folder, quantization_config=quantization)
    adapters.init(model)
    return model


def _torchao_model(folder, kind: str):
    require("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    model = transformers.LlamaForCausalLM.from_pretrained(folder)
    # int4 weight-only that runs on CPU (Int4WeightOnlyConfig's packing formats need CUDA or mslk)
    int4 = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))
    quantize_(model, Int8WeightOnlyConfig() if kind == "ao-int8" else int4)
    adapters.init(model)
    return model


def _model(folder, kind: str):
    return _torchao_model(folder, kind) if kind.startswith("ao-") else _bnb_model(folder, kind)


def _in_setup(model, setup, module, x):
    with ForwardContext(model, setup).activate(), torch.no_grad():
        return module(x)


def _hidden(seed: int = 3) -> torch.Tensor:
    return torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(seed))


# -- sizes and the forward pass ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nf4", "int8", "ao-int8"])
def test_features_come_from_the_layer_not_the_packed_weight(llama_folder, kind):
    model = _model(llama_folder, kind)
    model.add_adapter("a", adapters.LoRAConfig(r=4, alpha=8, target_modules=["down_proj"]))
    host = model.model.layers[0].mlp.down_proj  # 128 -> 64: a transposed size would show
    assert (host.in_features, host.out_features) == (128, 64)
    assert host.loras["a"].lora_A.shape == (4, 128) and host.loras["a"].lora_B.shape == (64, 4)
    assert host.quantized is not None and host.weight_out_in.shape == (64, 128)
    if kind == "nf4":
        assert tuple(host.weight.shape) == (128 * 64 // 2, 1)  # two 4-bit values per byte


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8", "ao-int8"])
def test_lora_output_is_the_quantized_output_plus_the_float_delta(llama_folder, kind):
    model = _model(llama_folder, kind)
    model.add_adapter("a", adapters.LoRAConfig(r=4, alpha=8))
    perturb_adapter(model, "a", scale=0.1)
    host = model.model.layers[1].self_attn.q_proj
    lora = host.loras["a"]
    x = _hidden()
    with torch.no_grad():
        expected = host.base_forward(x) + lora.scaling * (x @ lora.lora_A.t()) @ lora.lora_B.t()
        delta = (expected - host.base_forward(x)).abs().max()
    got = _in_setup(model, "a", host, x)
    assert delta > 0.1  # the adapter does change the output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # a long input (folding W + s·B A would pay off on a float weight) takes the same path
    long_x = torch.randn(4, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        long_expected = host.base_forward(long_x) + lora.scaling * (long_x @ lora.lora_A.t()) @ lora.lora_B.t()
    torch.testing.assert_close(_in_setup(model, "a", host, long_x), long_expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["nf4", "int8", "ao-int8"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_linear_method_on_a_quantized_layer(llama_folder, kind, method):
    """Each method's layer output equals ``x W'ᵀ + b'`` with its effective weight built on
    ``deq(W_q)`` in float; and training moves only the adapter."""
    model = _model(llama_folder, kind)
    model.add_adapter(method, METHODS[method]())
    perturb_adapter(model, method, scale=0.1)
    host = model.model.layers[0].self_attn.v_proj
    adapter = host.loras[method]
    adapter.eval()
    x = _hidden()
    with torch.no_grad():
        weight, bias = host.covered(adapter)
        effective, effective_bias = adapter.merge_into(weight, bias, adapter.merge_record(host))
        expected = torch.nn.functional.linear(x, effective, effective_bias)
        base = host.base_forward(x)
        # LLM.int8 rounds the activations too (outliers above its threshold aside): the kernel's own
        # distance from x deq(W_q)ᵀ + b, measured on this input, bounds what it adds (4-bit: ~1e-7)
        kernel = float((base - torch.nn.functional.linear(x, weight, bias)).abs().max())
    got = _in_setup(model, method, host, x)
    assert (expected - base).abs().max() > 1e-3, "the perturbed adapter should change the output"
    torch.testing.assert_close(got, expected, atol=2e-5 + 2 * kernel, rtol=1e-4)

    model.train_adapter(method)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.is_floating_point() and "loras" in n for n, p in model.named_parameters() if p.requires_grad)
    assert not any(m.weight.requires_grad for m in model.modules() if hasattr(m, "loras"))
    model(input_ids=INPUT_IDS, labels=INPUT_IDS).loss.backward()
    assert all(p.grad is not None for p in trainable)


def _dequantized_4bit_weights(model) -> dict:
    bnb = require("bitsandbytes")
    return {n: quantization_of(m).dequantize(m).clone() for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_training_after_an_inference_pass_reaches_every_layers_adapter(llama_folder, kind):
    """QLoRA with an evaluation between training steps: on a CPU with AVX512-BF16, bitsandbytes
    repacks a 4-bit weight at its first inference pass for a kernel that records no gradient for
    its input, which would cut the gradient off from every adapter below the last layer; every
    4-bit layer (adapted or not) puts its weight back in the portable layout when a gradient must
    pass. The gradients are those of a model that never ran an inference pass, up to bfloat16
    rounding: the layers whose input needs no gradient keep the kernel, which rounds activations
    to bfloat16, and the repacking leaves bfloat16 absmax scales behind."""
    grads = {}
    for evaluated_first in (False, True):
        model = _model(llama_folder, kind)
        torch.manual_seed(1)  # the same initial adapter in both models
        model.add_adapter("a", adapters.LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
        perturb_adapter(model, "a", scale=0.1)
        model.train_adapter("a")
        weights = _dequantized_4bit_weights(model)
        if evaluated_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=INPUT_IDS)
            model.train()
        model(input_ids=INPUT_IDS, labels=INPUT_IDS).loss.backward()
        grads[evaluated_first] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        # every 4-bit weight (in features up to 128, blocks of 64) reads as before, up to the
        # rounding of its block scales: to bfloat16 (nf4 here; measured 0.37% of the row's largest
        # entry), then back to 8-bit codes with double quantization (fp4 here; measured 0.84%)
        allowed = 2**-7 if kind == "nf4" else 2**-6
        for name, after in _dequantized_4bit_weights(model).items():
            scale = weights[name].abs().amax(dim=1, keepdim=True)
            assert bool(((after - weights[name]).abs() <= scale * allowed).all()), name
    assert len(grads[True]) == 2 * 2 * 3  # two layers, three modules, A and B
    for name, fresh in grads[False].items():
        assert grads[True][name] is not None and grads[True][name].abs().sum() > 0, name
        relative = float((grads[True][name] - fresh).norm() / fresh.norm())
        assert relative < 0.02, (name, relative)  # bfloat16 rounding, see the docstring


# -- merging ----------------------------------------------------------------------------------------


def _kernel_error(host, x) -> float:
    """How far the quantized layer's own kernel is from ``x deq(W_q)ᵀ + b`` on ``x``."""
    with torch.no_grad():
        base = host.base_forward(x)
        return float((base - torch.nn.functional.linear(x, host.weight_out_in, host.bias)).abs().max())


def _merge_checks(model, name, host, x):
    """Merge ``name``; the merged layer's output is within ``‖x‖₁ · e`` of the unmerged one, ``e``
    the reported re-quantization error, which is what the dequantized weights show (plus what the
    kernel itself adds to ``x deq(W_q)ᵀ``, measured before and after: on a CPU with AVX512-BF16,
    bitsandbytes' 4-bit inference kernel rounds its input to bfloat16)."""
    unmerged = _in_setup(model, name, host, x)
    kernel_before = _kernel_error(host, x)
    with torch.no_grad():
        before_weight = host.weight_out_in
        adapter = host.loras[name]
        covered, bias = host.covered(adapter)
        asked, _ = adapter.merge_into(covered, bias, adapter.merge_record(host))
    stored_before = host.weight.data.clone()
    model.merge_adapter(name)
    report = host.merge_report(name)
    assert report is not None
    with torch.no_grad():
        realized = host.weight_out_in
    assert report.error == pytest.approx(float((realized - asked).abs().max()), rel=1e-6, abs=1e-9)
    assert report.delta == pytest.approx(float((asked - before_weight).abs().max()), rel=1e-6)
    if adapter.additive:  # (IA)³ scales whole rows: the codes may stay, the scales change
        changed = int((host.weight.data != stored_before).sum())
        assert changed > host.weight.data.numel() // 4, changed  # the quantized entries did change
    assert (realized - before_weight).abs().max() > report.error
    merged = _in_setup(model, name, host, x)  # merged: the adapter no longer runs as a branch
    bound = x.abs().sum(-1, keepdim=True) * report.error + kernel_before + _kernel_error(host, x) + 1e-5
    assert bool(((merged - unmerged).abs() <= bound).all()), float((merged - unmerged).abs().max())
    return report


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8"])
def test_merge_into_a_bitsandbytes_weight_requantizes_and_reports(llama_folder, kind, adapters_log):
    model = _model(llama_folder, kind)
    with torch.no_grad():
        base = model(input_ids=INPUT_IDS).logits
    model.add_adapter("a", adapters.LoRAConfig(r=4, alpha=8))
    perturb_adapter(model, "a", scale=0.1)
    model.set_active_adapters("a")
    with torch.no_grad():
        unmerged = model(input_ids=INPUT_IDS).logits
    host = model.model.layers[1].self_attn.v_proj
    weight_type = type(host.weight)
    report = _merge_checks(model, "a", host, _hidden())
    assert type(host.weight) is weight_type and host.quantized.kind == report.kind
    # the 4-bit step is about absmax/8 of a block (NF4's largest gap is 0.28 of absmax), int8's absmax/127
    assert report.error < (0.2 if kind != "int8" else 0.01) * float(host.weight_out_in.abs().max())
    warning = [r.getMessage() for r in adapters_log.records if "re-quantized" in r.getMessage()]
    assert len(warning) == 1 and "re-quantization error max |ΔW_q − ΔW| =" in warning[0] and "delta max |ΔW| =" in warning[0]
    with torch.no_grad():
        merged = model(input_ids=INPUT_IDS).logits
    # model level: the merged model is far closer to the unmerged one than the adapter's own effect
    # (the rounding of every layer compounds here, so this is the layer bound's consequence, not a bound;
    # fp4 with double quantization measured 0.27 on a CPU whose 4-bit kernel rounds to bfloat16)
    assert (merged - unmerged).abs().max() < (0.35 if kind != "int8" else 0.05) * (unmerged - base).abs().max()

    model.unmerge_adapter("a")
    assert host.merged == [] and type(host.weight) is weight_type
    with torch.no_grad():
        back = model(input_ids=INPUT_IDS).logits
    # two re-quantizations (the merge's and the unmerge's) stand between ``back`` and the unmerged
    # weights: twice the merge's allowance
    assert (back - unmerged).abs().max() < (0.7 if kind != "int8" else 0.1) * (unmerged - base).abs().max()


@pytest.mark.parametrize("method", ["dora", "ia3", "vera", "loha", "oft"])
def test_other_methods_merge_into_a_4bit_weight(llama_folder, method):
    model = _model(llama_folder, "nf4")
    model.add_adapter(method, METHODS[method]())
    perturb_adapter(model, method, scale=0.1)
    model.set_active_adapters(method)
    host = model.model.layers[0].self_attn.v_proj
    _merge_checks(model, method, host, _hidden())


def test_merge_and_unload_a_4bit_model_keeps_it_4bit(llama_folder):
    bnb = require("bitsandbytes")
    model = _model(llama_folder, "nf4")
    model.add_adapter("a", adapters.LoRAConfig(r=4, alpha=8))
    perturb_adapter(model, "a", scale=0.1)
    model.set_active_adapters("a")
    with torch.no_grad():
        unmerged = model(input_ids=INPUT_IDS).logits
    plain = model.merge_and_unload()
    layer = plain.model.layers[0].self_attn.q_proj
    assert type(layer) is bnb.nn.Linear4bit and isinstance(layer.weight, bnb.nn.Params4bit)
    assert not any("loras" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        merged = plain(input_ids=INPUT_IDS).logits
    assert (merged - unmerged).abs().max() < 0.25 * unmerged.abs().max()


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_a_refused_merge_leaves_every_quantized_weight_as_it_was(llama_folder, kind):
    """All or nothing on quantized weights: the trial merge replaces weights and puts them back."""
    model = _model(llama_folder, kind)
    with torch.no_grad():
        model(input_ids=INPUT_IDS)  # int8: the first pass moves the scales into the layers' matmul state
    model.add_adapter("a", adapters.LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    perturb_adapter(model, "a", scale=0.1)
    last = model.model.layers[1].self_attn.v_proj
    with torch.no_grad():
        last.loras["a"].lora_B[0, 0] = float("nan")  # the last host of the plan fails
    weights = {n: (m.weight, m.weight_out_in) for n, m in model.named_modules() if hasattr(m, "loras")}
    with torch.no_grad():
        before = model(input_ids=INPUT_IDS).logits
    with pytest.raises(AdapterMergeError, match="v_proj"):
        model.merge_adapter("a")
    for name, module in model.named_modules():
        if name in weights:
            assert module.weight is weights[name][0] and torch.equal(module.weight_out_in, weights[name][1]), name
            assert module.merged == []
    with torch.no_grad():
        assert torch.equal(model(input_ids=INPUT_IDS).logits, before)


@pytest.mark.parametrize("kind", ["ao-int8", "ao-int4"])
def test_merge_into_a_torchao_weight_is_refused_clearly(llama_folder, kind):
    model = _model(llama_folder, kind)
    model.add_adapter("a", adapters.LoRAConfig(r=4, alpha=8))
    perturb_adapter(model, "a", scale=0.1)
    model.set_active_adapters("a")
    host = model.model.layers[0].self_attn.q_proj
    weight = host.weight
    with torch.no_grad():
        before = model(input_ids=INPUT_IDS).logits
    for merge in (lambda: model.merge_adapter("a"), model.merge_and_unload):
        with pytest.raises(AdapterMergeError) as caught:
            merge()
        message = str(caught.value)
        assert "layers.0.self_attn.q_proj" in message and f"torchao {type(weight).__name__}" in message
        assert "merge on the float model" in message and "every weight of the model is as it was" in message
    assert host.weight is weight and host.merged == []
    with torch.no_grad():
        assert torch.equal(model(input_ids=INPUT_IDS).logits, before)


def test_torchao_int4_forward(llama_folder):
    model = _model(llama_folder, "ao-int4")
    model.add_adapter("a", adapters.LoRAConfig(r=4, alpha=8, target_modules=["down_proj"]))
    perturb_adapter(model, "a", scale=0.1)
    host = model.model.layers[0].mlp.down_proj
    assert (host.in_features, host.out_features) == (128, 64)
    lora, x = host.loras["a"], torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = host.base_forward(x) + lora.scaling * (x @ lora.lora_A.t()) @ lora.lora_B.t()
    torch.testing.assert_close(_in_setup(model, "a", host, x), expected, atol=1e-4, rtol=1e-4)


# -- LoftQ ------------------------------------------------------------------------------------------


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal tensors, torchao's quantized tensors (which have no ``equal``) compared dequantized."""
    if type(a).__module__.startswith("torchao"):
        return torch.equal(a.dequantize(), b.dequantize())
    return torch.equal(a, b)


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8", "ao-int8"])
def test_loftq_on_the_quantized_base_fits_the_checkpoints_residual(llama_folder, kind):
    """LoftQ on a model loaded quantized: the quantized weights stay, and each adapter's ``s·B A`` is
    the best rank-r approximation of ``W − deq(W_q)`` with ``W`` read from the checkpoint folder
    (Eckart-Young: its error is the norm of the residual's other singular values), so the adapted
    4-bit model is closer to the float model than the quantized one alone."""
    model = _model(llama_folder, kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.add_adapter("q", adapters.LoRAConfig(r=4, alpha=8, init_weights="loftq", target_modules=["q_proj", "down_proj"]))
    float_model = transformers.LlamaForCausalLM.from_pretrained(llama_folder)
    float_weights = dict(float_model.named_parameters())
    hosts = {n: m for n, m in model.named_modules() if hasattr(m, "loras") and "q" in m.loras}
    assert len(hosts) == 4
    for name, host in hosts.items():
        lora = host.loras["q"]
        weight, quantized = float_weights[name + ".weight"].detach(), host.weight_out_in
        residual = weight - quantized
        error = weight - (quantized + lora.scaling * lora.lora_B @ lora.lora_A)
        rest = torch.linalg.svdvals(residual)[4:].norm()
        torch.testing.assert_close(error.norm(), rest, rtol=1e-4, atol=1e-6)
        assert error.norm() < residual.norm()
    after = dict(model.named_parameters())  # the quantized base is untouched
    assert all(_same_values(after[n], before[n]) for n in before)
    with torch.no_grad():
        reference = float_model(input_ids=INPUT_IDS).logits
        plain = model(input_ids=INPUT_IDS).logits  # no adapter active
        model.set_active_adapters("q")
        adapted = model(input_ids=INPUT_IDS).logits
    if kind in ("nf4", "fp4"):  # int8 rounding is small next to what LLM.int8 / torchao do to activations
        assert (adapted - reference).abs().mean() < (plain - reference).abs().mean()


def test_loftq_on_a_quantized_base_without_its_checkpoint_is_refused_and_changes_nothing(llama_folder, tmp_path):
    model = _model(llama_folder, "nf4")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.name_or_path = str(tmp_path)  # a folder without the float checkpoint
    with pytest.raises(AdapterConfigError, match=r"layer 'model.layers.0.self_attn.q_proj' \(bitsandbytes 4-bit \(nf4\)\).*holds no safetensors weight 'model.layers.0.self_attn.q_proj.weight'"):
        model.add_adapter("q", adapters.LoRAConfig(r=4, alpha=8, init_weights="loftq"))
    assert "q" not in model.adapters_config.adapters
    after = dict(model.named_parameters())
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)
    other = tmp_path / "other"  # another model's checkpoint with the same names
    torch.manual_seed(7)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).save_pretrained(other)
    model.name_or_path = str(other)
    with pytest.raises(AdapterConfigError, match=r"is not the weight this layer was quantized from"):
        model.add_adapter("q", adapters.LoRAConfig(r=4, alpha=8, init_weights="loftq"))
    assert "q" not in model.adapters_config.adapters
    (other / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")  # a corrupt file
    with pytest.raises(AdapterConfigError, match=r"model.safetensors: not a readable safetensors file"):
        model.add_adapter("q", adapters.LoRAConfig(r=4, alpha=8, init_weights="loftq"))
    # an index naming a shard outside the folder (which holds the right weights) is not followed
    (tmp_path / "x").write_bytes((llama_folder / "model.safetensors").read_bytes())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "x"), framework="pt") as checkpoint:
        keys = list(checkpoint.keys())
    (other / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {key: "../x" for key in keys}}))
    with pytest.raises(AdapterConfigError, match=r"holds no safetensors weight"):
        model.add_adapter("q", adapters.LoRAConfig(r=4, alpha=8, init_weights="loftq"))
    assert "q" not in model.adapters_config.adapters
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before)


def test_loftq_on_a_4bit_gpt2_reads_the_conv1d_weights_transposed_and_refuses_fused_parts(tmp_path):
    """GPT-2 keeps its projections as transformers' Conv1D, stored (in, out); bitsandbytes quantizes
    them as (out, in) layers. LoftQ reads the checkpoint's weight transposed (the square c_proj
    included, where only the orientation tells), and refuses an adapter over parts of the fused
    c_attn before it changes anything."""
    bnb = require("bitsandbytes")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=99, n_positions=32, n_embd=64, n_layer=2, n_head=4)).save_pretrained(tmp_path)
    quantization = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, quantization_config=quantization)
    adapters.init(model)
    with pytest.raises(AdapterConfigError, match=r"covers only some parts of a fused projection"):
        model.add_adapter("parts", adapters.LoRAConfig(r=4, alpha=8, init_weights="loftq"))  # q and v of c_attn
    assert "parts" not in model.adapters_config.adapters
    model.add_adapter("q", adapters.LoRAConfig(r=4, alpha=8, init_weights="loftq", target_modules=["c_attn", "c_fc", "c_proj"]))
    float_weights = dict(transformers.GPT2LMHeadModel.from_pretrained(tmp_path).named_parameters())
    hosts = {n: m for n, m in model.named_modules() if hasattr(m, "loras") and "q" in m.loras}
    assert len(hosts) == 8 and all(isinstance(m, bnb.nn.Linear4bit) for m in hosts.values())
    for name, host in hosts.items():
        lora = host.loras["q"]
        weight, quantized = float_weights[name + ".weight"].detach().t(), host.weight_out_in  # Conv1D: (in, out)
        error = weight - (quantized + lora.scaling * lora.lora_B @ lora.lora_A)
        torch.testing.assert_close(error.norm(), torch.linalg.svdvals(weight - quantized)[4:].norm(), rtol=1e-4, atol=1e-6)


def test_a_refused_loftq_leaves_the_float_layers_of_a_partly_quantized_model_as_they_were(llama_folder, tmp_path):
    """q_proj left in float (llm_int8_skip_modules), k_proj quantized without its checkpoint: the
    refusal for k_proj comes before LoftQ rewrites q_proj's float weight."""
    require("bitsandbytes")
    quantization = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["q_proj", "lm_head"]
    )
    model = transformers.LlamaForCausalLM.from_pretrained(llama_folder, quantization_config=quantization)
    adapters.init(model)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.name_or_path = str(tmp_path)  # no checkpoint there
    with pytest.raises(AdapterConfigError, match=r"layer 'model.layers.0.self_attn.k_proj'.*holds no safetensors weight"):
        model.add_adapter("q", adapters.LoRAConfig(r=4, alpha=8, init_weights="loftq", target_modules=["q_proj", "k_proj"]))
    after = dict(model.named_parameters())
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)


def test_loftq_on_the_float_model_then_loaded_in_4bit(llama_folder, tmp_path):
    """The supported path: LoftQ on the float model replaces each adapted weight by its NF4
    quantization (blocks of 64, absmax scales: bitsandbytes' NF4 without double quantization), so
    that model saved and loaded in 4-bit holds the same weights, and the adapter reproduces."""
    require("bitsandbytes")
    model = transformers.LlamaForCausalLM.from_pretrained(llama_folder)
    adapters.init(model)
    # every layer bitsandbytes quantizes (all linear layers but lm_head) gets the adapter
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model.add_adapter("q", adapters.LoRAConfig(r=4, alpha=8, init_weights="loftq", target_modules=every))
    model.set_active_adapters("q")
    with torch.no_grad():
        float_logits = model(input_ids=INPUT_IDS).logits
    adapted = {n: m.weight_out_in.detach().clone() for n, m in model.named_modules() if hasattr(m, "loras")}
    model.save_adapter(tmp_path / "adapter", "q")
    model.unload().save_pretrained(tmp_path / "base")
    quantized = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "base", quantization_config=transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False, bnb_4bit_compute_dtype=torch.float32
        ),
    )
    adapters.init(quantized)
    quantized.load_adapter(tmp_path / "adapter", set_active=True)
    for name, module in quantized.named_modules():
        if name in adapted:
            torch.testing.assert_close(module.weight_out_in, adapted[name], atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        # bitsandbytes' portable 4-bit path multiplies with deq(W_q) in float32 (training mode takes it
        # everywhere); its inference kernel on AVX512-BF16 CPUs rounds activations to bfloat16
        quantized.train()
        torch.testing.assert_close(quantized(input_ids=INPUT_IDS).logits, float_logits, atol=1e-4, rtol=1e-4)
        quantized.eval()
        torch.testing.assert_close(quantized(input_ids=INPUT_IDS).logits, float_logits, atol=2e-2, rtol=2e-2)
