"""AdapterHub 1.3.0 checkpoints on every architecture both libraries support.

utils/make_adapterhub_fixtures.py wrote, in a side venv with AdapterHub's library on transformers
4.57.6, a tiny model per architecture and the standard matrix of cases on it (every method, the
composition blocks, fusions, heads), each adapter perturbed and saved with AdapterHub's own
``save_adapter`` / ``save_adapter_fusion`` / ``save_head``, with the output AdapterHub computed. Here
each case is loaded with this library on transformers 5 and must reproduce that output within 1e-4,
unless it is one of AdapterHub's defects (``ADAPTERHUB_DEFECTS``), each pinned by a test that shows
AdapterHub wrong against an independent computation. The base models load with transformers 5's
``from_pretrained`` as they are (it renames 4.57's module paths itself); the adapter keys are renamed
by ``load_adapter`` (adapters/loading.py). What AdapterHub refuses on an architecture is listed in the
manifest's ``adapterhub_refuses``; ``test_every_refusal_is_adapterhubs`` keeps that list honest.
"""

from __future__ import annotations

import copy
import functools
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import adapters
from adapters.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "adapterhub")
with open(os.path.join(HERE, "manifest.json")) as _f:
    MANIFEST = json.load(_f)

# tests/test_fixtures_adapterhub_methods.py reads BERT and Llama's method cases (the ``legacy`` group)
# (with BERT and Llama's dora and loreft cases, and their pinned DoRA defects)
CASES = [c for c in MANIFEST["cases"]
         if c.get("group") == "matrix" and not (c["arch"] in ("bert", "llama") and c["case"] in ("dora", "loreft"))]


def _each(reason: str, cases_by_arch: dict) -> dict:
    return {(arch, case): reason for arch, cases in cases_by_arch.items() for case in cases.split()}


_ALL_PREFIX = "prefix_tuning_flat prefix_tuning mam unipelt prefix_stack prefix_parallel"
_FLAT_MLP_MAM_UNIPELT = "prefix_tuning_flat prefix_tuning mam unipelt"
# the Gemma cases whose adapters read the post-norm (original_ln_before: N(o + x)), where AdapterHub's
# plug-in interface hands every layer the last layer's norm
_GEMMA_NORM_READING = ("seq_bn", "seq_bn_inv", "stack", "fuse")
# cases that do not reproduce yet, with who works on them: the reproduction test xfails on them
# strictly (a fix flips it to a failure, and the entry is removed)
PENDING: dict[tuple[str, str], str] = {
}

# AdapterHub drops prefix tuning on its decoder-only models when the attention mask has padding
# (every row of the batch loses the prefix): these architectures' prefix cases are compared on the
# unpadded batch, which AdapterHub recorded too (``*_unpadded``); test_adapterhub_drops_prefixes_on_
# padded_decoder_batches pins the padded output
PREFIX_DROPPED_ON_PADDING = ("llama", "gpt2", "mistral")
_PREFIX_CASES = {"prefix_tuning", "prefix_tuning_flat", "prefix_stack", "prefix_parallel", "mam", "unipelt"}


# AdapterHub's prompt tuning lets the prompt positions attend to the padding (its mask gains rows
# that attend everywhere): prompt cases are compared on the unpadded batch;
# test_adapterhub_prompt_attends_to_padding pins the padded one

# cases where AdapterHub computes something else than the method's definition, each pinned by the
# named test (and left out of the reproduction test)
ADAPTERHUB_DEFECTS = {
    **{(arch, "dora"): "test_adapterhub_dora_rescales_the_bias" for arch in (
        "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta-v2", "qwen2", "bart", "mbart", "whisper",
        "vit", "clip_vision_model", "clip_text_model", "clip",
        "bert-generation", "xmod", "plbart", "beit", "phi", "albert_groups", "gpt2")},  # H3's architectures
    **{(arch, name): "test_adapterhub_albert_attention_adapters_read_the_layer_input"
       for arch in ("albert", "albert_groups") for name in ("double_seq_bn", "double_seq_bn_inv", "compacter")},
    ("clip", "loreft"): "test_adapterhub_clip_vision_tower_reft_takes_the_text_towers_positions",
    # prefix tuning and invertible adapters: each pin (tests/test_adapterhub_prefix_archs.py) rebuilds
    # AdapterHub's recorded output from ours with the defect put in by hand; ours is the definition
    # there (hand-computed attention, and transformers' own model fed the prefix as past keys/values
    # in tests/test_prefix.py)
    **_each("test_adapterhub_parallel_prefix_branch_attends_to_its_padding",
            {arch: "prefix_parallel" for arch in ("bert", "albert", "t5", "vit", "gptj")}),
    **_each("test_adapterhub_sdpa_aligns_the_causal_mask_over_the_prefix_top_left",
            {**{arch: _FLAT_MLP_MAM_UNIPELT for arch in ("mistral", "mbart", "plbart")},
             **{arch: _FLAT_MLP_MAM_UNIPELT + " prefix_stack" for arch in ("llama", "gpt2", "bart", "whisper")}}),
    **_each("test_adapterhub_distilbert_prefix_gets_a_logit_bonus_on_padded_batches",
            {"distilbert": _FLAT_MLP_MAM_UNIPELT + " prefix_stack"}),
    **_each("test_adapterhub_parallel_prefix_under_sdpa_attends_to_its_padding and "
            "test_adapterhub_parallel_prefix_on_padded_batches",
            {arch: "prefix_parallel" for arch in ("llama", "gpt2", "distilbert", "bart", "whisper")}),
    **_each("test_adapterhub_whisper_invertible_adapter_acts_on_the_encoder_output",
            {"whisper": "seq_bn_inv double_seq_bn_inv stack_lang_task"}),
    **{(arch, name): "test_adapterhub_gemma_bottlenecks_take_the_last_layers_norm and "
                     "test_gemma_bottlenecks_read_each_layers_own_norm and test_adapterhub_gemma_cases_differ_by_the_norm_only"
       for arch in ("gemma2", "gemma3_text") for name in _GEMMA_NORM_READING if (arch, name) not in PENDING},
}


def _case_id(case) -> str:
    return f"{case['arch']}-{case['case']}"


def _setup(tree):
    """The setup from the manifest's JSON tree (with the block parameters AdapterHub used)."""
    if isinstance(tree, str):
        return tree
    children = [_setup(child) for child in tree["children"]]
    block = tree["block"]
    if block == "Split":
        return Split(*children, splits=tree["splits"])
    if block == "BatchSplit":
        return BatchSplit(*children, batch_sizes=tree["batch_sizes"])
    if block == "Average":
        return Average(*children, weights=tree["weights"])
    return {"Stack": Stack, "Parallel": Parallel, "Fuse": Fuse}[block](*children)


def _adapterhub_equivalent(setup):
    """AdapterHub 1.3.0's Average divides the weighted sum once more by the number of children
    (test_adapterhub_average_of_one_adapter_twice_is_not_that_adapter pins it): the same numbers come
    from this library's Average with weights ``w_i / n``, unnormalised."""
    if isinstance(setup, Average):
        n = len(setup.children)
        return Average(*setup.children, weights=[w / n for w in setup.weights], normalize_weights=False)
    return setup


def _outputs(output) -> dict:
    """The tensors the generator recorded (its ``outputs_of``)."""
    if hasattr(output, "text_model_output"):
        return {"out": output.text_model_output.last_hidden_state,
                "vision_out": output.vision_model_output.last_hidden_state, "logits": output.logits_per_text}
    if not hasattr(output, "last_hidden_state"):
        return {"logits": output.logits}
    tensors = {"out": output.last_hidden_state}
    if getattr(output, "encoder_last_hidden_state", None) is not None:
        tensors["encoder_out"] = output.encoder_last_hidden_state
    return tensors


@functools.lru_cache(maxsize=None)
def _base(arch: str):
    """The arch's base model, loaded once (each case works on a copy)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(os.path.join(HERE, arch, "base")).eval()


@functools.lru_cache(maxsize=None)
def _inputs(arch: str) -> dict:
    return load_file(os.path.join(HERE, arch, "inputs.safetensors"))


def _load_case(case):
    """``(model with the case's adapters, fusion and head loaded, inputs, AdapterHub's outputs)``."""
    arch_dir = os.path.join(HERE, case["arch"])
    if case.get("head"):
        model = adapters.AutoAdapterModel.from_pretrained(os.path.join(arch_dir, "base")).eval()
    else:
        model = copy.deepcopy(_base(case["arch"]))
        adapters.init(model)
    for adapter in case["adapters"]:
        loaded = model.load_adapter(os.path.join(arch_dir, adapter["dir"]), load_as=adapter["name"], with_head=False)
        assert loaded == adapter["name"]
    if case["fusion"]:
        model.load_adapter_fusion(os.path.join(arch_dir, case["fusion"]))
    if case.get("head"):
        assert model.load_head(os.path.join(arch_dir, case["head"])) == "a"
    return model, dict(_inputs(case["arch"])), load_file(os.path.join(arch_dir, case["expected"]))


def _run(model, inputs, setup) -> dict:
    model.set_active_adapters(setup)
    with torch.no_grad():
        outputs = _outputs(model(**inputs))
        if "attention_mask" in inputs:
            unpadded = dict(inputs, attention_mask=torch.ones_like(inputs["attention_mask"]))
            outputs.update({f"{key}_unpadded": value for key, value in _outputs(model(**unpadded)).items()})
    return outputs


def _with_adapterhub_strays(model, expected):
    """``model`` with the tensors AdapterHub's init added to the model itself, which no file holds
    (the generator records them as ``stray.<key>``; ModernBERT's fused ``Wqkv`` gains a bias
    initialised at random: test_adapterhub_modernbert_wqkv_gains_a_random_bias pins it)."""
    for key, value in expected.items():
        if key.startswith("stray."):
            module_path, _, name = _module_path(model, key[len("stray."):]).rpartition(".")
            assert name == "bias" and getattr(model.get_submodule(module_path), "bias", None) is None, key
            model.get_submodule(module_path).bias = torch.nn.Parameter(value.clone(), requires_grad=False)
    return model


def _compared_keys(case, expected) -> list:
    keys = [key for key in expected if not key.startswith(("reference_", "stray."))]
    if (case["arch"] in PREFIX_DROPPED_ON_PADDING and case["case"] in _PREFIX_CASES) or case["case"] == "prompt_tuning":
        keys = [key for key in keys if key.endswith("_unpadded")]
    return keys


@pytest.mark.parametrize("case", [c for c in CASES if (c["arch"], c["case"]) not in ADAPTERHUB_DEFECTS], ids=_case_id)
def test_adapterhub_checkpoint_reproduces_its_output(case):
    reason = PENDING.get((case["arch"], case["case"]))
    try:
        model, inputs, expected = _load_case(case)
        model = _with_adapterhub_strays(model, expected)
        outputs = _run(model, inputs, _adapterhub_equivalent(_setup(case["setup_tree"])))
        for key in _compared_keys(case, expected):
            torch.testing.assert_close(outputs[key], expected[key], atol=1e-4, rtol=1e-4, msg=lambda m: f"{key}: {m}")
    except Exception:
        if reason:
            pytest.xfail(reason)
        raise
    if reason:
        pytest.fail(f"{_case_id(case)} reproduces now: remove it from PENDING ({reason})")
    assert case["differs_from_base"]


def test_every_pending_and_defect_entry_names_a_case():
    """PENDING and ADAPTERHUB_DEFECTS name cases the fixtures have (an entry left behind when a case
    leaves the matrix would hide nothing and mislead)."""
    cases = {(c["arch"], c["case"]) for c in CASES}
    assert set(PENDING) <= cases, set(PENDING) - cases
    assert set(ADAPTERHUB_DEFECTS) <= cases, set(ADAPTERHUB_DEFECTS) - cases
    # and every defect names the test that pins it, which exists
    import test_adapterhub_prefix_archs as prefix_pins

    pins = {name for value in ADAPTERHUB_DEFECTS.values() for name in value.split(" and ")}
    missing = {name for name in pins if not (name in globals() or hasattr(prefix_pins, name))}
    assert not missing, f"ADAPTERHUB_DEFECTS names tests that do not exist: {missing}"


def test_the_matrix_covers_every_architecture_and_method():
    """Every architecture has every method of the matrix, as a case or as an AdapterHub refusal."""
    methods = {"seq_bn", "double_seq_bn", "par_bn", "seq_bn_inv", "double_seq_bn_inv", "compacter", "prefix_tuning",
               "prefix_tuning_flat", "prompt_tuning", "lora", "ia3", "dora", "loreft", "mam", "unipelt"}
    archs = {c["arch"] for c in CASES}
    assert len(archs) >= 24 and MANIFEST["anchor"] == "adapters 1.3.0" and MANIFEST["transformers"] == "4.57.6"
    for arch in archs:
        covered = {c["case"] for c in MANIFEST["cases"] if c["arch"] == arch}
        covered |= {r["case"] for r in MANIFEST["adapterhub_refuses"] if r["arch"] == arch}
        assert methods <= covered, (arch, methods - covered)


# -- AdapterHub's defects, each shown against an independent computation --------------------------------


def _matrix_case(arch: str, name: str) -> dict:
    return next(c for c in CASES if c["arch"] == arch and c["case"] == name)


def _checkpoint(case, adapter: str = "a") -> dict:
    folder = os.path.join(HERE, case["arch"], next(a["dir"] for a in case["adapters"] if a["name"] == adapter))
    if os.path.exists(os.path.join(folder, "adapter.safetensors")):
        return load_file(os.path.join(folder, "adapter.safetensors"))
    return torch.load(os.path.join(folder, "pytorch_adapter.bin"), weights_only=True)


def _module_path(model, key: str) -> str:
    """The transformers 5 path of a module AdapterHub named with transformers 4.57's paths (renamed
    as transformers renames the base weights)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    return rename_source_key(f"{key}.weight", renamings, [])[0][: -len(".weight")]


def _dora_by_hand(case, adapterhub: bool) -> dict:
    """The base model with each DoRA-adapted linear layer's weight replaced by hand from the
    checkpoint's tensors: DoRA (Liu et al., 2024) is ``x W'ᵀ + b`` with ``W' = m ⊙ V/‖V‖`` and
    ``V = W + s·B A``; AdapterHub divides by ``‖W + B A‖`` and rescales the bias ``b`` as well, and
    on a fused q/k/v layer (GPT-2's ``c_attn``) computes plain LoRA, ``V`` alone (``m`` unused)."""
    weights = _checkpoint(case)
    with open(os.path.join(HERE, case["arch"], case["adapters"][0]["dir"], "adapter_config.json")) as f:
        config = json.load(f)["config"]
    scaling = config["alpha"] / config["r"]
    model = copy.deepcopy(_base(case["arch"]))
    with torch.no_grad():
        for key in [k for k in weights if k.endswith(".loras.a.lora_A")]:
            prefix = key[: -len(".lora_A")]
            layer = model.get_submodule(_module_path(model, key[: -len(".loras.a.lora_A")]))
            update = weights[f"{prefix}.lora_B"] @ weights[f"{prefix}.lora_A"]
            # (out, in) rows of the adapted projection; GPT-2's fused c_attn (a Conv1D, stored
            # transposed) is adapted in its value rows only, the last third
            fused = type(layer).__name__ == "Conv1D"
            weight = layer.weight.T[-update.shape[0]:] if fused else layer.weight
            bias = layer.bias[-update.shape[0]:] if layer.bias is not None else None
            direction = weight + scaling * update
            norm = (weight + update if adapterhub else direction).norm(dim=1)
            factor = weights[f"{prefix}.m.weight"].reshape(-1) / norm
            if adapterhub and fused:  # AdapterHub's fused (merged) layer adds s·B A and never reads m: LoRA
                factor = torch.ones_like(factor)
            weight.copy_(factor[:, None] * direction)  # a view: writes into the layer's weight
            if adapterhub and bias is not None:
                bias.mul_(factor)
        return _outputs(model(**_inputs(case["arch"])))


# every architecture whose DoRA-adapted value projections have a bias (BERT's and Llama's cases are
# pinned in tests/test_fixtures_adapterhub_methods.py); GPT-2's is a fused c_attn (AdapterHub's
# merged LoRA, not by hand here)
_DORA_BIAS_ARCHS = ("roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta-v2", "qwen2", "bart", "mbart",
                    "whisper", "vit", "clip_vision_model", "clip_text_model", "clip",
                    "bert-generation", "xmod", "plbart", "beit", "phi", "albert_groups", "gpt2")


@pytest.mark.parametrize("arch", _DORA_BIAS_ARCHS)
def test_adapterhub_dora_rescales_the_bias(arch):
    """AdapterHub's DoRA output is ``m/‖W + B A‖ ⊙ (x (W + s·B A)ᵀ + b)``: the layer's bias is
    rescaled with the weight (and the norm leaves out ``s``, 1 here); on GPT-2's fused ``c_attn`` it
    is LoRA's ``x (W + s·B A)ᵀ + b``, the magnitude saved but never applied. Computed by hand from the
    checkpoint on the bare transformers model, AdapterHub's formula reproduces its recorded output,
    DoRA's definition reproduces this library's, and the two differ wherever the layer has a bias."""
    case = _matrix_case(arch, "dora")
    model, inputs, expected = _load_case(case)
    ours = _run(model, inputs, "a")
    adapterhub, definition = _dora_by_hand(case, adapterhub=True), _dora_by_hand(case, adapterhub=False)
    for key, value in adapterhub.items():
        torch.testing.assert_close(value, expected[key], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(definition[key], ours[key], atol=1e-5, rtol=1e-4)
    assert (ours["out"] - expected["out"]).abs().max() > 1e-3


def _albert_by_hand(case, adapterhub: bool) -> dict:
    """ALBERT with ``double_seq_bn``'s two bottlenecks applied by hand with forward pre-hooks on the
    bare transformers model: each bottleneck is ``f(z) = W_up swish(W_down z + b_down) + b_up``; the
    attention block is ``LN(h + f(h) + x)`` by the definition (the adapter transforms the sub-block's
    output ``h``, as everywhere else) and ``LN(x + f(x) + h)`` in AdapterHub, whose ALBERT attention
    passes the layer input ``x`` where the sub-block output belongs; the FFN block is
    ``LN(h + f(h) + y)`` in both."""
    weights = _checkpoint(case)
    model = copy.deepcopy(_base(case["arch"]))  # "albert_groups": every layer of every group (H3)

    def bottleneck(prefix, z):
        down = torch.nn.functional.silu(torch.nn.functional.linear(
            z, weights[f"{prefix}.adapter_down.0.weight"], weights[f"{prefix}.adapter_down.0.bias"]))
        return torch.nn.functional.linear(down, weights[f"{prefix}.adapter_up.weight"], weights[f"{prefix}.adapter_up.bias"])

    stream = {}
    layers = [(f"encoder.albert_layer_groups.{g}.albert_layers.{index}", layer)
              for g, group in enumerate(model.encoder.albert_layer_groups) for index, layer in enumerate(group.albert_layers)]
    for prefix, layer in layers:

        def keep(name):
            return lambda module, args: stream.__setitem__(name, args[0])

        def attention_norm(module, args, prefix=prefix):
            x = stream["x"]
            h = args[0] - x
            z = x if adapterhub else h
            return (h + x + bottleneck(f"{prefix}.attention.attention_adapters.adapters.a", z),)

        def output_norm(module, args, prefix=prefix):
            y = stream["y"]
            h = args[0] - y
            return (h + y + bottleneck(f"{prefix}.output_adapters.adapters.a", h),)

        layer.attention.register_forward_pre_hook(keep("x"))
        layer.attention.LayerNorm.register_forward_pre_hook(attention_norm)
        layer.ffn.register_forward_pre_hook(keep("y"))
        layer.full_layer_layer_norm.register_forward_pre_hook(output_norm)
    with torch.no_grad():
        return _outputs(model(**_inputs(case["arch"])))


@pytest.mark.parametrize("arch", ["albert", "albert_groups"])
def test_adapterhub_albert_attention_adapters_read_the_layer_input(arch):
    """AdapterHub's ALBERT attention calls its bottleneck with the layer input and the attention
    output swapped (``attention_adapters(hidden_states, attention_output, LayerNorm)``; every other
    model passes the sub-block output first): its attention adapters transform ``x``, not ``h``.
    Computed by hand, that reproduces AdapterHub's output; the definition reproduces this library's.
    The same swap makes the ``double_seq_bn_inv`` and ``compacter`` cases (adapters after attention)
    differ; cases with FFN adapters only reproduce."""
    case = _matrix_case(arch, "double_seq_bn")
    model, inputs, expected = _load_case(case)
    ours = _run(model, inputs, "a")
    torch.testing.assert_close(_albert_by_hand(case, adapterhub=True)["out"], expected["out"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_albert_by_hand(case, adapterhub=False)["out"], ours["out"], atol=1e-5, rtol=1e-4)
    assert (ours["out"] - expected["out"]).abs().max() > 1e-2
    torch.testing.assert_close(_run(*_load_case(_matrix_case(arch, "seq_bn"))[:2], "a")["out"],
                               _load_case(_matrix_case(arch, "seq_bn"))[2]["out"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", PREFIX_DROPPED_ON_PADDING)
def test_adapterhub_drops_prefixes_on_padded_decoder_batches(arch):
    """On AdapterHub's decoder-only models a batch whose attention mask has padding runs without
    the prefix at all: its recorded output is the bare model's, bit for bit (computed here by
    transformers alone), for the padded and the unpadded row, although the same prefix changes the
    unpadded batch's output. This library attends over the prefix (compared on the unpadded batch
    in the reproduction test)."""
    case = _matrix_case(arch, "prefix_tuning")
    expected = load_file(os.path.join(HERE, arch, case["expected"]))
    inputs = dict(_inputs(arch))
    with torch.no_grad():
        bare = _outputs(_base(arch)(**inputs))["out"]
        bare_unpadded = _outputs(_base(arch)(**dict(inputs, attention_mask=torch.ones_like(inputs["attention_mask"]))))["out"]
    torch.testing.assert_close(expected["out"], bare, atol=1e-5, rtol=1e-5)
    assert (expected["out_unpadded"] - bare_unpadded).abs().max() > 1e-2


def test_adapterhub_average_of_one_adapter_twice_is_not_that_adapter():
    """Average is a weighted mean: over two copies of one adapter (weights 0.3 / 0.7) it must give
    that adapter's output, which AdapterHub recorded beside it (``reference_out``, the adapter
    alone). AdapterHub's Average divides the weighted sum once more by the number of children, so its
    output differs; this library's Average reproduces the adapter alone, and with weights ``w_i / n``
    AdapterHub's number."""
    case = _matrix_case("bert", "average_identical")
    model, inputs, expected = _load_case(case)
    setup = _setup(case["setup_tree"])
    assert (expected["out"] - expected["reference_out"]).abs().max() > 1e-2
    torch.testing.assert_close(_run(model, inputs, setup)["out"], expected["reference_out"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_run(model, inputs, _adapterhub_equivalent(setup))["out"], expected["out"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["bert", "roberta", "xlm-roberta", "albert"])
def test_adapterhub_prompt_attends_to_padding(arch):
    """AdapterHub extends the attention mask by the prompt with rows that attend everywhere: in a
    padded row the prompt positions see the padding, so that row's output depends on its padding
    (the unpadded batch reproduces exactly, in the reproduction test). Given AdapterHub's mask
    explicitly (prompt queries see every key, the text's queries see the prompt and the real
    tokens), this library reproduces the padded batch too, which pins the difference to exactly
    that mask."""
    case = _matrix_case(arch, "prompt_tuning")
    model, inputs, expected = _load_case(case)
    ours = _run(model, inputs, "a")["out"]
    length = ours.shape[1] - inputs["input_ids"].shape[1]
    assert (ours[1] - expected["out"][1]).abs().max() > 1e-3
    keys = torch.cat([torch.ones(2, length, dtype=torch.bool), inputs["attention_mask"].bool()], dim=1)
    adapterhub_mask = keys[:, None, None, :].expand(-1, 1, keys.shape[1], -1).clone()
    adapterhub_mask[:, :, :length, :] = True
    with torch.no_grad():
        emulated = model(input_ids=inputs["input_ids"], attention_mask=adapterhub_mask).last_hidden_state
    torch.testing.assert_close(emulated, expected["out"], atol=1e-4, rtol=1e-4)


def test_a_position_reads_the_stream_after_an_earlier_one_only_in_a_pre_ln_block():
    """``ResidualHook.residual_from`` (GPT-J's FFN position reads the stream after the attention
    adapters, as in AdapterHub) needs a pre-LN sub-block with a residual stream; elsewhere the spec
    is refused with the field, the value and what it needs."""
    from adapters.errors import AdapterConfigError
    from adapters.hooks.spec import ResidualHook

    hook = ResidualHook("output_adapter", host="output_adapters", residual_source="ln_1", sublayer="mlp",
                        residual_from="mh_adapter")
    assert hook.residual_from == "mh_adapter"
    with pytest.raises(AdapterConfigError, match="residual_from='mh_adapter' needs a pre-LN sublayer"):
        ResidualHook("output_adapter", host="output", residual_source="output", norm="output.LayerNorm",
                     residual_from="mh_adapter")


# cases AdapterHub accepts and then fails at forward (the manifest's other entries are refusals:
# a ValueError naming the method or block the model does not support)
ADAPTERHUB_CRASHES = {
    **{(arch, "loreft"): "ReFT on encoder-decoders indexes the decoder's positions by the encoder mask's lengths"
       for arch in ("t5", "mt5", "bart", "mbart", "plbart")},
    **{("beit", case): "BEiT's relative position bias is not extended by the prefix / prompt positions"
       for case in ("prefix_tuning_flat", "prefix_tuning", "prompt_tuning", "mam", "unipelt")},
    ("modernbert", "dora"): "DoRA's magnitude (q and v rows) against the fused Wqkv (96 rows)",
    ("vit", "lora_parallel"): "Parallel with LoRA doubles the batch of the attention's queries only",
    ("phi", "par_bn"): "the plug-in interface hands the parallel adapter no FFN input",
}


def test_every_refusal_is_adapterhubs():
    """What the manifest lists under ``adapterhub_refuses`` is AdapterHub's own answer: a refusal
    (ValueError: the method or block is not supported by that model), or one of the known failures
    of ``ADAPTERHUB_CRASHES``; a case the generator could not run for another reason fails here."""
    crashes = set()
    for entry in MANIFEST["adapterhub_refuses"]:
        if entry["error"].startswith("ValueError:"):
            # AdapterHub's "Adapter config or type '...' is not supported by this model", its Parallel
            # refusal on models without Parallel, or "Cannot use Parallel[a, b] with LoRA"
            assert entry["error"].startswith("ValueError: Adapter config or type") \
                or "support adapter composition" in entry["error"] or "Cannot use" in entry["error"], entry
        else:
            crashes.add((entry["arch"], entry["case"]))
    assert crashes == set(ADAPTERHUB_CRASHES)


def test_adapterhub_distilbert_prompt_raises_the_prompts_scores():
    """AdapterHub extends DistilBERT's *additive* attention mask (0 attend, -inf padding) by the
    prompt with the value 1 it uses for multiplicative masks: every query's scores for the prompt
    keys get +1 (so even the unpadded row differs from prompt tuning), and the prompt queries see the
    padding. Unpadded, DistilBERT builds no mask and the batch reproduces (the reproduction test);
    given that additive mask explicitly, this library reproduces the padded batch too."""
    case = _matrix_case("distilbert", "prompt_tuning")
    model, inputs, expected = _load_case(case)
    ours = _run(model, inputs, "a")["out"]
    length = ours.shape[1] - inputs["input_ids"].shape[1]
    assert (ours[0] - expected["out"][0]).abs().max() > 1e-3
    text = torch.where(inputs["attention_mask"].bool(), 0.0, torch.finfo(torch.float32).min)
    adapterhub_mask = torch.cat([torch.ones(2, length), text], dim=1)[:, None, None, :].repeat(1, 1, ours.shape[1], 1)
    adapterhub_mask[:, :, :length, :] = 1.0
    with torch.no_grad():
        emulated = model(input_ids=inputs["input_ids"], attention_mask=adapterhub_mask).last_hidden_state
    torch.testing.assert_close(emulated, expected["out"], atol=1e-4, rtol=1e-4)


def _gemma_by_hand(case, norms_of_last_layer: bool) -> dict:
    """Gemma with ``seq_bn`` applied by hand with forward hooks on the bare transformers model, as
    AdapterHub's plug-in interface places it: on the output ``o`` of the FFN's ``down_proj`` (the
    attention's ``o_proj`` for attention adapters), with the residual stream ``x`` (the input of the
    sub-block's pre-norm), the adapter returns ``f(N(o + x)) + o``, ``f(z) = W_up relu(W_down z +
    b_down) + b_up``, ``N`` the sub-block's post-norm; the model then adds ``x + post_norm(·)``.
    ``norms_of_last_layer``: ``N`` is the last layer's post-norm in every layer (what a closure over
    the loop variable of AdapterHub's ``init_bottleneck`` reads), else the layer's own."""
    weights = _checkpoint(case)
    model = copy.deepcopy(_base(case["arch"]))
    stream = {}

    def adapted(prefix, o, x, norm):
        if f"{prefix}.adapter_up.weight" not in weights:
            return o
        down = torch.relu(torch.nn.functional.linear(
            norm(o + x), weights[f"{prefix}.adapter_down.0.weight"], weights[f"{prefix}.adapter_down.0.bias"]))
        return torch.nn.functional.linear(down, weights[f"{prefix}.adapter_up.weight"], weights[f"{prefix}.adapter_up.bias"]) + o

    for index, layer in enumerate(model.layers):
        norms = model.layers[-1] if norms_of_last_layer else layer
        layer.input_layernorm.register_forward_pre_hook(lambda m, args, i=index: stream.__setitem__(("x", i), args[0]))
        layer.pre_feedforward_layernorm.register_forward_pre_hook(
            lambda m, args, i=index: stream.__setitem__(("y", i), args[0]))
        layer.self_attn.o_proj.register_forward_hook(lambda m, args, o, i=index, n=norms.post_attention_layernorm: adapted(
            f"layers.{i}.attention_adapters.adapters.a", o, stream[("x", i)], n))
        layer.mlp.down_proj.register_forward_hook(lambda m, args, o, i=index, n=norms.post_feedforward_layernorm: adapted(
            f"layers.{i}.output_adapters.adapters.a", o, stream[("y", i)], n))
    with torch.no_grad():
        return _outputs(model(**_inputs(case["arch"])))


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text"])
def test_adapterhub_gemma_bottlenecks_take_the_last_layers_norm(arch):
    """AdapterHub's plug-in interface gives each layer's bottleneck a getter of "the layer's norm"
    that is a lambda over the loop variable ``layer``: called at forward time, every getter returns
    the LAST layer's norm. The fixture's norms differ per layer (utils/make_adapterhub_fixtures.py
    perturbs them), and AdapterHub's recorded output is exactly the by-hand computation with the
    last layer's norm in every layer, not the one with each layer's own norm (which differs by more
    than 0.1); this library uses each layer's own norm."""
    case = _matrix_case(arch, "seq_bn")
    expected = load_file(os.path.join(HERE, arch, case["expected"]))
    last, own = _gemma_by_hand(case, norms_of_last_layer=True), _gemma_by_hand(case, norms_of_last_layer=False)
    torch.testing.assert_close(last["out"], expected["out"], atol=1e-4, rtol=1e-4)
    assert (own["out"] - expected["out"]).abs().max() > 0.1


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text"])
def test_gemma_bottlenecks_read_each_layers_own_norm(arch):
    """This library runs Gemma's bottlenecks where AdapterHub's plug-in interface runs them (on the
    sub-block output before its post-norm, reading ``N(o + x)``), with each layer's own norm ``N``:
    on AdapterHub's ``seq_bn`` checkpoint its output is the by-hand computation with each layer's own
    norm (the definition), which AdapterHub's recorded output is not (the test above)."""
    case = _matrix_case(arch, "seq_bn")
    model, inputs, expected = _load_case(case)
    ours = _run(model, inputs, "a")
    torch.testing.assert_close(ours["out"], _gemma_by_hand(case, norms_of_last_layer=False)["out"], atol=1e-4, rtol=1e-4)
    assert (ours["out"] - expected["out"]).abs().max() > 0.1


def _reading_the_last_layers_norms(model):
    """``model`` with the bottlenecks of every layer reading the LAST layer's post-norms in their
    ``N(o + x)`` step, as AdapterHub's getters do (the model's own residual steps keep each layer's
    norm)."""
    last = model.layers[-1]
    for layer in model.layers:
        layer.attention_adapters.__dict__["_sublayer_norm"] = last.post_attention_layernorm
        layer.output_adapters.__dict__["_sublayer_norm"] = last.post_feedforward_layernorm
    return model


@pytest.mark.parametrize("case", [c for c in CASES if c["arch"] in ("gemma2", "gemma3_text") and c["case"] in _GEMMA_NORM_READING
                                  and (c["arch"], c["case"]) not in PENDING], ids=_case_id)
def test_adapterhub_gemma_cases_differ_by_the_norm_only(case):
    """Every Gemma case whose adapters read the post-norm (``seq_bn``, its invertible variant, the
    Stack and the Fuse over it) differs from AdapterHub's output by AdapterHub's late-binding norm
    alone: handed the last layer's norms in that step, this library reproduces AdapterHub's recorded
    output (padded and unpadded) within 1e-4; with each layer's own norm it differs by more than 1e-2.
    The cases whose adapters read no norm (``double_seq_bn``, ``par_bn``, ``compacter``, ...) reproduce
    in the reproduction test."""
    model, inputs, expected = _load_case(case)
    setup = _adapterhub_equivalent(_setup(case["setup_tree"]))
    ours = _run(model, inputs, setup)
    adapterhub = _run(_reading_the_last_layers_norms(model), inputs, setup)
    for key in _compared_keys(case, expected):
        torch.testing.assert_close(adapterhub[key], expected[key], atol=1e-4, rtol=1e-4, msg=lambda m: f"{key}: {m}")
    assert (ours["out"] - expected["out"]).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text"])
def test_gemma_refuses_adapters_whose_output_would_skip_the_post_norm(arch):
    """On Gemma the model applies ``x + N(·)`` to what the adapters return, so an adapter whose
    output is meant to be the block output (``original_ln_after=False``, as AdapterPlus) cannot be
    placed; it is refused when added, naming the field (AdapterHub refuses it too), and the model is
    left without it. A hook with ``sublayer_norm`` needs a pre-LN sublayer with a residual stream."""
    from adapters import AdapterPlusConfig, SeqBnConfig
    from adapters.errors import AdapterConfigError
    from adapters.hooks.spec import ResidualHook

    model = copy.deepcopy(_base(arch))
    adapters.init(model)
    before = set(model.state_dict())
    for config in (SeqBnConfig(original_ln_after=False), AdapterPlusConfig()):
        with pytest.raises(AdapterConfigError, match=r"original_ln_after=False .* use original_ln_after=True"):
            model.add_adapter("plus", config=config)
        assert "plus" not in model.adapters_config and set(model.state_dict()) == before
    model.add_adapter("plus", config=SeqBnConfig())
    assert "plus" in model.adapters_config
    with pytest.raises(AdapterConfigError, match=r"sublayer_norm='post_feedforward_layernorm' needs a pre-LN sublayer"):
        ResidualHook("output_adapter", host="output", residual_source="output", norm="output.LayerNorm",
                     sublayer_norm="post_feedforward_layernorm")


def _clip_vision_loreft_by_hand(case, suffix_positions) -> torch.Tensor:
    """CLIP's vision tower with LoReFT applied by hand after every encoder layer, with torch's own
    orthogonal parametrisation of the checkpoint's ``R``: at each position ``p`` of the first
    ``prefix_positions`` (unit 0) and of ``suffix_positions`` (per row; unit 1), ``h_p`` becomes
    ``h_p + (W h_p + b − R h_p) R`` (LoReFT, Wu et al. 2024, with the identity as non-linearity)."""
    weights = _checkpoint(case)
    with open(os.path.join(HERE, case["arch"], case["adapters"][0]["dir"], "adapter_config.json")) as f:
        prefix_positions = json.load(f)["config"]["prefix_positions"]
    model = copy.deepcopy(_base(case["arch"]))

    def unit(prefix):
        projection = torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(32, 2, bias=False))
        projection.load_state_dict({key: weights[f"{prefix}.projection.{key}"] for key in projection.state_dict()})
        source = torch.nn.Linear(32, 2)
        source.load_state_dict({key: weights[f"{prefix}.learned_source.{key}"] for key in ("weight", "bias")})
        rotation = projection.weight.detach()
        return lambda h: h + (source(h) - h @ rotation.T) @ rotation

    def intervene(index):
        units = [unit(f"vision_model.encoder.layers.{index}.reft_layer.refts.a.units.{u}") for u in (0, 1)]

        def hook(module, args, output):
            hidden = (output[0] if isinstance(output, tuple) else output).clone()
            for row, positions in enumerate(suffix_positions):
                hidden[row, :prefix_positions] = units[0](hidden[row, :prefix_positions])
                hidden[row, positions] = units[1](hidden[row, positions])
            return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

        return hook

    for index, layer in enumerate(model.vision_model.encoder.layers):
        layer.register_forward_hook(intervene(index))
    with torch.no_grad():
        return _outputs(model(**_inputs(case["arch"])))["vision_out"]


def test_adapterhub_clip_vision_tower_reft_takes_the_text_towers_positions():
    """AdapterHub computes ReFT's positions once per forward, from the attention mask it finds in
    the call (CLIPModel's: the text's), and caches them in the forward context for every later
    layer: CLIP's vision tower (17 positions) then adapts the positions of the text's last real
    tokens (rows of 12 and 9: positions 10, 11 and 7, 8) instead of its own last two (15, 16).
    Computed by hand, the text's positions reproduce AdapterHub's vision output; the tower's own
    reproduce this library's; the text tower reproduces (it is compared in the reproduction test's
    ``out``, also here)."""
    case = _matrix_case("clip", "loreft")
    model, inputs, expected = _load_case(case)
    ours = _run(model, inputs, "a")
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    text_positions = [[length - 2, length - 1] for length in lengths]
    patches = ours["vision_out"].shape[1]
    torch.testing.assert_close(_clip_vision_loreft_by_hand(case, text_positions), expected["vision_out"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_clip_vision_loreft_by_hand(case, [[patches - 2, patches - 1]] * 2), ours["vision_out"],
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours["out"], expected["out"], atol=1e-4, rtol=1e-4)
    assert (ours["vision_out"] - expected["vision_out"]).abs().max() > 0.1


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
def test_ffn_lora_of_the_other_placement_is_refused(arch, tmp_path):
    """Qwen 2 / 3 and Gemma 2 / 3 place ``intermediate_lora`` on ``mlp.up_proj`` as AdapterHub's
    plug-in interface does (its IA³ checkpoint reproduces, in the reproduction test). A checkpoint
    with the Llama placement (the same weights named on ``mlp.down_proj``) names layers the spec does
    not adapt: ``load_adapter`` refuses it, naming the missing weights, and leaves the model without
    the adapter."""
    from adapters.errors import AdapterLoadError

    case = _matrix_case(arch, "ia3")
    folder = os.path.join(HERE, arch, case["adapters"][0]["dir"])
    weights = {key.replace("mlp.up_proj", "mlp.down_proj"): value for key, value in _checkpoint(case).items()}
    assert any("mlp.down_proj" in key for key in weights)
    from safetensors.torch import save_file

    save_file(weights, str(tmp_path / "adapter.safetensors"))
    with open(os.path.join(folder, "adapter_config.json")) as f:
        (tmp_path / "adapter_config.json").write_text(f.read())
    model = copy.deepcopy(_base(arch))
    adapters.init(model)
    with pytest.raises(AdapterLoadError, match=r"lacks \d+ weight\(s\).*mlp\.up_proj"):
        model.load_adapter(str(tmp_path), load_as="a")
    assert "a" not in model.adapters_config
    model.load_adapter(folder, load_as="a")
    assert "a" in model.adapters_config


def test_adapterhub_modernbert_wqkv_gains_a_random_bias():
    """AdapterHub's plug-in interface wraps ModernBERT's fused ``attn.Wqkv`` (no bias:
    ``attention_bias=False``) in its merged LoRA layer, built as an ``nn.Linear`` with the default
    ``bias=True``; the original's weight is copied in, its bias only where it has one. So every
    adapted ModernBERT gains a bias of torch's random initialisation, in no file (the base has none,
    the adapter does not save it): AdapterHub's outputs depend on the random state at ``init``. The
    generator records that bias (``stray.*``): added by hand to the bare ``Wqkv``, this library
    reproduces AdapterHub's LoRA output exactly; without it, the outputs differ."""
    case = _matrix_case("modernbert", "lora")
    model, inputs, expected = _load_case(case)
    assert _base("modernbert").config.attention_bias is False
    assert all(layer.attn.Wqkv.bias is None for layer in model.layers)
    strays = {key: value for key, value in expected.items() if key.startswith("stray.")}
    assert sorted(strays) == [f"stray.layers.{i}.attn.Wqkv.bias" for i in range(2)]
    assert all(value.abs().max() > 1e-2 for value in strays.values())
    without = _run(model, inputs, "a")["out"]
    with_bias = _run(_with_adapterhub_strays(model, expected), inputs, "a")["out"]
    torch.testing.assert_close(with_bias, expected["out"], atol=1e-5, rtol=1e-5)
    assert (without - expected["out"]).abs().max() > 1e-3
