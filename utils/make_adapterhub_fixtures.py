"""Write the AdapterHub 1.3.0 reference fixtures under tests/fixtures/adapterhub/.

Run it in a side venv that has AdapterHub's library, never in this project's environment::

    python -m venv /tmp/ah && /tmp/ah/bin/pip install torch==2.13.0 && \
        /tmp/ah/bin/pip install adapters==1.3.0 transformers==4.57.6
    HF_HUB_OFFLINE=1 /tmp/ah/bin/python utils/make_adapterhub_fixtures.py

For each architecture of ``ARCHITECTURES`` it builds a tiny model from a config (hidden size 32),
saves it, and for each case adds the adapters with AdapterHub, perturbs every adapter parameter (so
a wrong key or formula cannot pass by leaving the adapter at its initial value), saves them with
AdapterHub's ``save_adapter`` / ``save_adapter_fusion`` / ``save_head`` and records the output
AdapterHub computes. The cases are one standard matrix (``matrix_cases``: every method and the
composition blocks) run on every architecture, plus the method cases of ``cases`` on BERT and
Llama. What AdapterHub refuses on an architecture (an error at add, activation or forward) is written
to the manifest's ``adapterhub_refuses`` with its error, never skipped silently. The layout is that of
``../shared/fixtures/adapterhub`` (see tests/fixture_utils.py), so the same reader serves both; the
manifest adds each case's ``inputs`` kind, its setup as a JSON tree (``setup_tree``, with the block
parameters) and, for head cases, the head. A matrix case of one adapter keeps that adapter's files in
the case's folder, beside ``expected.safetensors``; a fusion's files are in its case's folder too.
``expected.safetensors`` also holds, as ``stray.<key>``, any tensor AdapterHub's init adds to the
model itself that no file holds (ModernBERT's fused ``Wqkv`` bias). Everything is written into a new
folder that replaces ``tests/fixtures/adapterhub`` at the end (a test run never sees a half-written
tree). Size: about 18 MB as ``du --apparent-size`` counts (about 4 MB of it the 4 KB of each of the
~930 folders), about 14.5 MB of files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zlib
from dataclasses import dataclass
from typing import Callable

import torch

OUT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "adapterhub"))


@dataclass(frozen=True)
class Architecture:
    """One tiny model: ``name`` (its folder), ``model_class`` (the transformers class name the base
    is built and saved with), ``config`` (a function of the ``transformers`` module returning the
    tiny config) and ``inputs``: ``"text"`` (input_ids + attention_mask, row 1 right-padded),
    ``"seq2seq"`` (text + decoder_input_ids), ``"vision"`` (pixel_values), ``"speech"`` (Whisper's
    input_features + decoder_input_ids) or ``"text+vision"`` (CLIPModel: both)."""

    name: str
    model_class: str
    config: Callable
    inputs: str
    # optional: a function of the freshly built base model, run before it is saved (X-MOD: see below)
    prepare: Callable = None


_COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=99)
_ENC = dict(_COMMON, intermediate_size=37, max_position_embeddings=64)
_DEC = dict(_COMMON, intermediate_size=37, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
_T5 = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2, num_heads=4,
           relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
_BART = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
             pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
_SLIDING_FULL = ["sliding_attention", "full_attention"]
_CLIP_TEXT = dict(_COMMON, intermediate_size=37, max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_CLIP_VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=8,
                    patch_size=2, num_channels=3)

def _silence_xmod_language_modules(base) -> None:
    """Zero the output layer of each X-MOD language module: the module then adds nothing to its input."""
    with torch.no_grad():
        for module in base.modules():
            if type(module).__name__ == "XmodAdapter":
                module.dense2.weight.zero_()
                module.dense2.bias.zero_()


def _perturb_norm_weights(base) -> None:
    """Give every norm of the model its own weights (Gemma's RMSNorms start at 0, scale 1 + w, the
    same in every layer; trained ones differ): a norm taken from the wrong layer then shows."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for key, parameter in base.named_parameters():
            if "norm" in key and key.endswith(".weight"):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


# One line per architecture. BERT and Llama come first and keep their configs: their files stay as
# they were. Issue 23's architectures are at the end; EncoderDecoderModel (not an AutoModel class) and
# DeBERTa v1 (AdapterHub's init changes its outputs) have their own fixtures:
# utils/make_adapterhub_new_arch_fixtures.py.
ARCHITECTURES = [
    Architecture("bert", "BertModel", lambda t: t.BertConfig(**_ENC), "text"),
    Architecture("llama", "LlamaModel", lambda t: t.LlamaConfig(**dict(_DEC, pad_token_id=None)), "text"),
    Architecture("roberta", "RobertaModel", lambda t: t.RobertaConfig(**_ENC, pad_token_id=1), "text"),
    Architecture("xlm-roberta", "XLMRobertaModel", lambda t: t.XLMRobertaConfig(**_ENC, pad_token_id=1), "text"),
    Architecture("distilbert", "DistilBertModel", lambda t: t.DistilBertConfig(
        vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64), "text"),
    Architecture("albert", "AlbertModel", lambda t: t.AlbertConfig(
        **_ENC, embedding_size=16, inner_group_num=2, pad_token_id=0), "text"),
    Architecture("electra", "ElectraModel", lambda t: t.ElectraConfig(**_ENC, embedding_size=16), "text"),
    Architecture("deberta-v2", "DebertaV2Model", lambda t: t.DebertaV2Config(
        **_ENC, relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
        max_relative_positions=16, position_buckets=8, pad_token_id=0), "text"),
    Architecture("modernbert", "ModernBertModel", lambda t: t.ModernBertConfig(
        **dict(_COMMON, intermediate_size=37), global_attn_every_n_layers=2, local_attention=6, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2), "text"),
    Architecture("gpt2", "GPT2Model", lambda t: t.GPT2Config(
        vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=64, pad_token_id=0), "text"),
    Architecture("gptj", "GPTJModel", lambda t: t.GPTJConfig(
        vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_inner=37, rotary_dim=4, n_positions=64, pad_token_id=0), "text"),
    Architecture("mistral", "MistralModel", lambda t: t.MistralConfig(**_DEC), "text"),
    Architecture("qwen2", "Qwen2Model", lambda t: t.Qwen2Config(**_DEC), "text"),
    Architecture("qwen3", "Qwen3Model", lambda t: t.Qwen3Config(**_DEC, head_dim=8), "text"),
    Architecture("gemma2", "Gemma2Model", lambda t: t.Gemma2Config(
        **_DEC, head_dim=8, sliding_window=4, layer_types=_SLIDING_FULL), "text", prepare=_perturb_norm_weights),
    Architecture("gemma3_text", "Gemma3TextModel", lambda t: t.Gemma3TextConfig(
        **_DEC, head_dim=8, sliding_window=4, layer_types=_SLIDING_FULL), "text", prepare=_perturb_norm_weights),
    Architecture("t5", "T5Model", lambda t: t.T5Config(**_T5), "seq2seq"),
    Architecture("mt5", "MT5Model", lambda t: t.MT5Config(**dict(_T5, feed_forward_proj="gated-gelu")), "seq2seq"),
    Architecture("bart", "BartModel", lambda t: t.BartConfig(**_BART), "seq2seq"),
    Architecture("mbart", "MBartModel", lambda t: t.MBartConfig(**_BART), "seq2seq"),
    Architecture("whisper", "WhisperModel", lambda t: t.WhisperConfig(
        **dict(_BART, max_target_positions=32, decoder_start_token_id=1, num_mel_bins=8, max_source_positions=8,
               pad_token_id=0, bos_token_id=1, eos_token_id=2)), "speech"),
    Architecture("vit", "ViTModel", lambda t: t.ViTConfig(**_ENC, image_size=8, patch_size=2, num_channels=3), "vision"),
    Architecture("clip_vision_model", "CLIPVisionModel", lambda t: t.CLIPVisionConfig(**_CLIP_VISION), "vision"),
    Architecture("clip_text_model", "CLIPTextModel", lambda t: t.CLIPTextConfig(**_CLIP_TEXT), "text"),
    Architecture("clip", "CLIPModel", lambda t: t.CLIPConfig(
        text_config=_CLIP_TEXT, vision_config=_CLIP_VISION, projection_dim=16), "text+vision"),
    # H3's architectures (issue 23). X-MOD: AdapterHub deletes the model's language modules at init, this
    # library keeps them; with their output layers zeroed they add nothing, so both compute the same and
    # the cases check the adapters (tests/test_new_architectures.py tests the language modules)
    Architecture("bert-generation", "BertGenerationEncoder", lambda t: t.BertGenerationConfig(**_ENC, pad_token_id=0), "text"),
    Architecture("xmod", "XmodModel", lambda t: t.XmodConfig(
        **_ENC, pad_token_id=1, languages=["en_XX", "de_DE"], default_language="en_XX"), "text",
        prepare=lambda base: _silence_xmod_language_modules(base)),
    Architecture("plbart", "PLBartModel", lambda t: t.PLBartConfig(**_BART), "seq2seq"),
    Architecture("beit", "BeitModel", lambda t: t.BeitConfig(
        **{k: v for k, v in _ENC.items() if k not in ("vocab_size", "max_position_embeddings")}, image_size=8,
        patch_size=2, num_channels=3, use_relative_position_bias=True, layer_scale_init_value=0.1), "vision"),
    Architecture("phi", "PhiModel", lambda t: t.PhiConfig(**_DEC), "text"),
    Architecture("albert_groups", "AlbertModel", lambda t: t.AlbertConfig(
        **dict(_ENC, num_hidden_layers=4), embedding_size=16, num_hidden_groups=2, inner_group_num=2, pad_token_id=0), "text"),
]
LEGACY_ARCHS = ("bert", "llama")
# the architectures that run every composition block (the others: Stack and Fuse), one per family
# (encoder, decoder with and without fused q/k/v, the two encoder-decoder families, vision); the
# fixtures' size grows with every case, so the blocks stay on these
BLOCK_ARCHS = ("bert", "llama", "gpt2", "t5", "bart", "vit")
# the prefix blocks (and Stack(lang, task)) also where prefixes or invertible adapters take another
# path: DistilBERT's and ALBERT's attention, GPT-J's, Whisper's (tests/test_adapterhub_prefix_archs.py)
PREFIX_BLOCK_ARCHS = (*BLOCK_ARCHS, "distilbert", "albert", "gptj", "whisper")


def make_inputs(architecture: Architecture, config) -> dict:
    """The forward inputs of a kind; every text batch has a right-padded second row (9 of 12 tokens)."""
    generator = torch.Generator().manual_seed(1)
    inputs = {}
    if "text" in architecture.inputs or architecture.inputs == "seq2seq":
        vocab = getattr(config, "vocab_size", None) or config.text_config.vocab_size
        inputs["input_ids"] = torch.randint(1, vocab, (2, 12), generator=generator)
        inputs["attention_mask"] = torch.tensor([[1] * 12, [1] * 9 + [0] * 3])
    if architecture.inputs in ("seq2seq", "speech"):
        inputs["decoder_input_ids"] = torch.randint(3, config.vocab_size, (2, 5), generator=generator)
    if "vision" in architecture.inputs:
        inputs["pixel_values"] = torch.randn((2, 3, 8, 8), generator=generator)
    if architecture.inputs == "speech":
        inputs["input_features"] = torch.randn((2, config.num_mel_bins, 16), generator=generator)
    return inputs


def outputs_of(output) -> dict:
    """The tensors a case records: ``out`` (the last hidden state: the decoder's on encoder-decoders,
    the text tower's on CLIPModel), plus ``encoder_out`` or CLIPModel's ``vision_out`` and ``logits``
    (logits_per_text); head models record ``logits``."""
    if hasattr(output, "text_model_output"):
        return {"out": output.text_model_output.last_hidden_state, "vision_out": output.vision_model_output.last_hidden_state,
                "logits": output.logits_per_text}
    if not hasattr(output, "last_hidden_state"):
        return {"logits": output.logits}
    tensors = {"out": output.last_hidden_state}
    if getattr(output, "encoder_last_hidden_state", None) is not None:
        tensors["encoder_out"] = output.encoder_last_hidden_state
    return {key: value.contiguous() for key, value in tensors.items()}


def cases():
    """BERT and Llama's method cases: ``(case name, [(adapter name, config)], setup[, options])``; configs are AdapterHub's classes.

    ``options``: ``archs`` (the tiny models the case runs on; default all), ``perturb``
    (``"diagonal"``: perturb square matrices on their diagonal only; ``"none"``: keep the seeded
    initialisation), ``adapterhub_fails`` (the
    case shows an AdapterHub failure: its error is recorded under ``adapterhub_failures``, no files),
    ``forward`` (extra keyword arguments of the forward pass, JSON values; written to the manifest),
    ``share`` (groups of adapter names given to ``share_parameters`` once all are added and perturbed,
    before they are saved; written to the manifest)."""
    from adapters import AdapterPlusConfig, DoRAConfig, DvoRAConfig, Stack, VeraConfig

    # AdapterPlus's defaults at factors that fit hidden 32, and as they are
    yield "adapterplus", [("a", AdapterPlusConfig(reduction_factor=8))], "a"
    yield "adapterplus_r16", [("a", AdapterPlusConfig(reduction_factor=16, stochastic_depth=0.0))], "a"
    # the defaults as they are: reduction 96 leaves hidden 32 no bottleneck, which AdapterHub makes 1 wide
    yield "adapterplus_default", [("a", AdapterPlusConfig())], "a", {"archs": ["bert"]}
    # VeRA: AdapterHub saves no projections and draws them again from init_weights_seed, so every
    # case sets one. Trained AdapterHub VeRA matrices are dense (every entry trains): "vera" perturbs
    # them all; "vera_diagonal" keeps them diagonal (the paper's vectors). AdapterHub draws one
    # projection pair with the first layer's shape, so its default q/v placement fails on Llama's
    # grouped-query attention (v is 16 wide): "vera_gqa" records that; the others adapt q only
    # (AdapterHub accepts "o" in attn_matrices, but places nothing there).
    yield "vera", [("a", VeraConfig(r=4, init_weights_seed=11))], "a", {"archs": ["bert"]}
    yield "vera_q", [("a", VeraConfig(r=4, alpha=16, init_weights_seed=12, attn_matrices=["q"]))], "a"
    yield "vera_diagonal", [("a", VeraConfig(r=4, init_weights_seed=13, vera_d=1.0, vera_b=1.0, attn_matrices=["q"]))], "a", {
        "perturb": "diagonal",
    }
    yield "vera_gqa", [("a", VeraConfig(r=4, init_weights_seed=14))], "a", {"archs": ["llama"], "adapterhub_fails": True}
    yield "dvora", [("a", DvoRAConfig(init_weights_seed=15, attn_matrices=["v"]))], "a"
    # DoRA: AdapterHub stores the magnitude as m.weight (d_out x 1); "dora_alpha" (alpha != r)
    # shows its norm of W + BA without the scaling
    # ("dora", DoRAConfig(attn_matrices=["v"])) is in the standard matrix
    yield "dora_alpha", [("a", DoRAConfig(r=4, alpha=12, attn_matrices=["v"]))], "a", {"archs": ["llama"]}
    # ReFT: the inputs' second row is right-padded (9 real tokens), so suffix positions must follow
    # the attention mask. AdapterHub does not write DiReFT's subtract_projection (a class attribute,
    # not a field), so "direft" reloads as NoReFT there too; "reft_stack" shows that AdapterHub runs
    # only the first adapter of a setup
    from adapters import DiReftConfig, LoReftConfig, NoReftConfig

    # ("loreft", LoReftConfig(r=2, suffix_positions=2)) is in the standard matrix
    yield "noreft", [("a", NoReftConfig(suffix_positions=1))], "a"
    yield "direft", [("a", DiReftConfig(r=2, non_linearity="relu"))], "a"
    yield "loreft_tied", [("a", LoReftConfig(layers=[1], prefix_positions=2, suffix_positions=2, r=2, tied_weights=True))], "a"
    yield "loreft_seeded", [("a", LoReftConfig(r=2, suffix_positions=1, init_weights_seed=7))], "a", {"perturb": "none"}
    # more suffix positions than the padded row's 9 real tokens: AdapterHub indexes before the row's start
    yield "reft_long_suffix", [("a", LoReftConfig(prefix_positions=0, suffix_positions=10))], "a", {
        "archs": ["bert"], "adapterhub_fails": True,
    }
    yield "reft_stack", [("a", NoReftConfig(prefix_positions=1, suffix_positions=1)), ("b", NoReftConfig(r=2))], Stack("a", "b")
    # MTL-LoRA: a MultiTask routes each row to its task's adapter (task ids as adapter names, which
    # AdapterHub takes as a list); "mtl_lora_shared": three tasks share A and the B_k
    # (share_parameters), row 0 runs task c, row 1 task a; "mtl_lora_ffn": two unshared tasks on
    # every linear layer of the second block (small files: a few modules each). AdapterHub's TaskSpecificLinear never calls
    # nn.Module.__init__, so task_specific_matrix_type="linear" cannot be added: "mtl_lora_linear"
    from adapters import MTLLoRAConfig, MultiTask

    shared = MTLLoRAConfig(r=4, alpha=64, n_up_projection=3, weights_sharpness=0.5, attn_matrices=["q"])
    yield "mtl_lora_shared", [(t, shared) for t in "abc"], MultiTask("a", "b", "c"), {
        "share": [["a", "b", "c"]], "forward": {"task_ids": ["c", "a"]},
    }
    ffn = MTLLoRAConfig(r=2, alpha=32, intermediate_lora=True, output_lora=True, leave_out=[0])
    yield "mtl_lora_ffn", [("a", ffn), ("b", ffn)], MultiTask("a", "b"), {"forward": {"task_ids": ["b", "a"]}}
    linear = MTLLoRAConfig(r=4, n_up_projection=2, task_specific_matrix_type="linear")
    yield "mtl_lora_linear", [("a", linear), ("b", linear)], MultiTask("a", "b"), {
        "archs": ["bert"], "adapterhub_fails": True, "forward": {"task_ids": ["b", "a"]},
    }


def matrix_cases():
    """The standard matrix, run on every architecture: ``(case, [(adapter name, config)], setup,
    options)`` like ``cases``, plus the option ``fusion`` (the fusion config of the setup's
    Fuse) and ``head`` (a head case: ``(AdapterHub head method, kwargs)``; the model is AdapterHub's
    AdapterModel, the head is saved with ``save_head`` into ``<case>/head``). Prefix MLPs are 8 wide
    (AdapterHub's default 512 would make most of the fixtures' size)."""
    from adapters.composition import Average
    from adapters import (
        BatchSplit, CompacterConfig, DoRAConfig, DoubleSeqBnConfig, DoubleSeqBnInvConfig,
        DynamicAdapterFusionConfig, Fuse, IA3Config, LoRAConfig, LoReftConfig, MAMConfig, ParBnConfig, Parallel,
        PrefixTuningConfig, PromptTuningConfig, SeqBnConfig, SeqBnInvConfig, Split, Stack, StaticAdapterFusionConfig,
        UniPELTConfig,
    )

    prefix_mlp = PrefixTuningConfig(prefix_length=5, bottleneck_size=8)
    # methods, each alone
    yield "seq_bn", [("a", SeqBnConfig())], "a", {}
    yield "double_seq_bn", [("a", DoubleSeqBnConfig())], "a", {}
    yield "par_bn", [("a", ParBnConfig(reduction_factor=8, scaling=2.0))], "a", {}
    yield "seq_bn_inv", [("a", SeqBnInvConfig())], "a", {}
    yield "double_seq_bn_inv", [("a", DoubleSeqBnInvConfig())], "a", {}
    # the shared PHM rule of AdapterHub's default is never saved (shared_parameters): per-layer rules
    yield "compacter", [("a", CompacterConfig(reduction_factor=8, shared_phm_rule=False))], "a", {}
    yield "prefix_tuning_flat", [("a", PrefixTuningConfig(prefix_length=5, flat=True))], "a", {}
    yield "prefix_tuning", [("a", prefix_mlp)], "a", {}
    yield "prompt_tuning", [("a", PromptTuningConfig(prompt_length=4))], "a", {}
    yield "lora", [("a", LoRAConfig(r=4, alpha=8))], "a", {}
    yield "ia3", [("a", IA3Config())], "a", {}
    yield "dora", [("a", DoRAConfig(attn_matrices=["v"]))], "a", {}
    yield "loreft", [("a", LoReftConfig(r=2, suffix_positions=2))], "a", {}
    yield "mam", [("a", MAMConfig(prefix_tuning=prefix_mlp, adapter=ParBnConfig(reduction_factor=8)))], "a", {}
    yield "unipelt", [("a", UniPELTConfig(prefix_tuning=PrefixTuningConfig(prefix_length=5, bottleneck_size=8, use_gating=True)))], "a", {}
    # composition blocks over two (three) bottleneck adapters: Stack and Fuse on every architecture,
    # the others on representatives of each family (encoder, shared layers, decoders, encoder-decoders,
    # speech, vision, dual encoder, AdapterHub's plug-in interface), to keep the fixtures small
    blocks = {"archs": list(BLOCK_ARCHS)}
    two = [("a", SeqBnConfig()), ("b", SeqBnConfig(reduction_factor=8))]
    yield "stack", two, Stack("a", "b"), {}
    yield "fuse", two, Fuse("a", "b"), {"fusion": DynamicAdapterFusionConfig()}
    yield "parallel", two, Parallel("a", "b"), blocks
    yield "fuse_static", two, Fuse("a", "b"), {"fusion": StaticAdapterFusionConfig(), "archs": ["bert", "t5", "vit", "llama"]}
    yield "split", two, Split("a", "b", splits=[5, 7]), {**blocks, "inputs": ["text"]}
    yield "batchsplit", two, BatchSplit("a", "b", batch_sizes=[1, 1]), blocks
    yield "average", two, Average("a", "b", weights=[0.3, 0.7]), blocks
    # Average of one adapter twice (b is a copy of a): its weighted mean is that adapter's output,
    # recorded beside it as reference_out
    yield "average_identical", [("a", SeqBnConfig()), ("b", SeqBnConfig())], Average("a", "b", weights=[0.3, 0.7]), {
        "archs": ["bert"], "copy": ("a", "b"), "reference_setup": "a",
    }
    prefix_blocks = {"archs": list(PREFIX_BLOCK_ARCHS)}
    yield "stack_lang_task", [("lang", SeqBnInvConfig()), ("task", SeqBnConfig())], Stack("lang", "task"), prefix_blocks
    yield "stack_fuse", two + [("c", SeqBnConfig())], Stack("c", Fuse("a", "b")), {
        "fusion": DynamicAdapterFusionConfig(), **blocks,
    }
    yield "prefix_stack", [("a", prefix_mlp), ("b", PrefixTuningConfig(prefix_length=3, flat=True))], Stack("a", "b"), prefix_blocks
    yield "prefix_parallel", [("a", prefix_mlp), ("b", PrefixTuningConfig(prefix_length=3, flat=True))], Parallel("a", "b"), prefix_blocks
    yield "lora_parallel", [("a", LoRAConfig(r=4)), ("b", LoRAConfig(r=2))], Parallel("a", "b"), blocks
    # heads: AdapterHub's AdapterModel with a head saved by save_head
    heads = {"text": ("add_classification_head", {"num_labels": 3}), "seq2seq": ("add_seq2seq_lm_head", {}),
             "vision": ("add_image_classification_head", {"num_labels": 3})}
    yield "head", [("a", SeqBnConfig())], "a", {"head": heads, "archs": ["bert", "roberta", "distilbert", "t5", "bart", "vit"]}
    yield "head_clm", [("a", LoRAConfig(r=4))], "a", {"head": {"text": ("add_causal_lm_head", {})}, "archs": ["llama", "gpt2"]}


# the matrix cases written in AdapterHub's default .bin format; the others in safetensors
# (AdapterHub's safetensors writer refuses prefix tuning: its pools share memory with the layers' views).
# BIN_ON_BLOCK_ARCHS are .bin on BLOCK_ARCHS only (the keys are the same in both formats; a .bin
# file of tiny tensors is about twice the size)
BIN_CASES = ("fuse_static", "head", "head_clm", "prefix_tuning", "prefix_tuning_flat", "prefix_stack", "prefix_parallel",
             "mam", "unipelt")
BIN_ON_BLOCK_ARCHS = ("seq_bn", "lora")
# BERT and Llama's dora and loreft files were .bin before the matrix existed, and stay so
LEGACY_BIN_CASES = ("dora", "loreft")
# cases whose setup has a prefix or a prompt (their unpadded outputs are recorded too)
PREFIX_CASES = {"prefix", "mam", "unipelt", "prompt"}


def describe(setup):
    """The setup as a JSON tree: an adapter's name, or ``{"block": ..., "children": [...], ...}``
    with the block's parameters (splits, batch_sizes, weights)."""
    if isinstance(setup, str):
        return setup
    tree = {"block": type(setup).__name__, "children": [describe(child) for child in setup.children]}
    for key in ("splits", "batch_sizes", "weights"):
        if getattr(setup, key, None) is not None:
            tree[key] = list(setup.__dict__.get(key) if key in setup.__dict__ else getattr(setup, key))
    if type(setup).__name__ == "Average":
        tree["normalize_weights"] = getattr(setup, "normalize_weights", True)
    return tree


def all_cases(architecture: Architecture):
    """The cases run on ``architecture``: BERT and Llama's method cases, then the standard matrix."""
    for group, generated in (("legacy", cases()), ("matrix", matrix_cases())):
        for case, adapter_list, setup, *more in generated:
            options = dict(more[0]) if more else {}
            if group == "legacy":
                options.setdefault("archs", list(LEGACY_ARCHS))
            else:
                legacy_bin = architecture.name in LEGACY_ARCHS and case in LEGACY_BIN_CASES
                as_bin = case in BIN_CASES or (case in BIN_ON_BLOCK_ARCHS and architecture.name in BLOCK_ARCHS)
                options.setdefault("safetensors", not as_bin and not legacy_bin)
            if architecture.name not in options.get("archs", [architecture.name]):
                continue
            if architecture.inputs not in options.get("inputs", [architecture.inputs]):
                continue
            yield group, case, adapter_list, setup, options


def perturb(model, name: str, seed: int, diagonal: bool = False) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            # frozen ones (VeRA's shared projections) are never trained, so never perturbed
            if parameter.requires_grad and (f".{name}." in key or key.endswith(f".{name}")):
                noise = torch.randn(parameter.shape, generator=generator) * 0.1
                if key.endswith("parametrizations.weight.original"):
                    # torch's orthogonal parametrisation keeps signs (±1) on this diagonal that training
                    # never changes (no gradient reaches them); noise there would flip or zero rows
                    noise.diagonal().zero_()
                if diagonal and parameter.dim() == 2 and parameter.shape[0] == parameter.shape[1]:
                    noise = torch.diag(torch.diagonal(noise))
                parameter.add_(noise)


def provide_stochastic_depth() -> None:
    """AdapterHub builds its drop-path from ``torchvision.ops.StochasticDepth`` and refuses
    ``stochastic_depth > 0`` without torchvision. No torchvision build on the registry matches
    torch 2.13's operator ABI, so where it cannot be imported this stands in: row-mode stochastic
    depth (per sample, kept entries scaled by 1/(1-p)) in training, the identity in eval mode. The
    fixtures are recorded in eval mode, where both are the identity."""
    try:
        import torchvision.ops.stochastic_depth  # noqa: F401  (the real one imports: use it)

        return
    except Exception:
        pass
    import types

    from torch import nn

    class StochasticDepth(nn.Module):
        def __init__(self, p: float, mode: str):
            super().__init__()
            self.p, self.mode = p, mode

        def forward(self, x):
            if not self.training or self.p == 0.0:
                return x
            keep = x.new_empty([x.shape[0]] + [1] * (x.ndim - 1)).bernoulli_(1 - self.p)
            return x * keep / (1 - self.p)

    ops = types.ModuleType("torchvision.ops")
    stochastic_depth = types.ModuleType("torchvision.ops.stochastic_depth")
    stochastic_depth.StochasticDepth = StochasticDepth
    ops.stochastic_depth = stochastic_depth
    sys.modules.update({"torchvision": types.ModuleType("torchvision"), "torchvision.ops": ops,
                        "torchvision.ops.stochastic_depth": stochastic_depth})
    import adapters.methods.modeling

    adapters.methods.modeling.is_torchvision_available = lambda: True


def build_base(architecture: Architecture, transformers):
    config = architecture.config(transformers)
    torch.manual_seed(0)
    base = getattr(transformers, architecture.model_class)(config).eval()
    with torch.no_grad():  # BERT initialises its biases to 0; trained ones are not (AdapterHub's DoRA scales them)
        bias_generator = torch.Generator().manual_seed(2)
        for key, parameter in base.named_parameters():
            if key.endswith(".bias"):
                parameter.normal_(0.0, 0.1, generator=bias_generator)
        if architecture.prepare is not None:
            architecture.prepare(base)
    return config, base


def adapter_folder(architecture, group, case, name, adapter_list) -> str:
    """Where an adapter of a case is saved, relative to the architecture's folder: a matrix case of
    one adapter saves it into the case's folder itself (beside expected.safetensors: one folder per
    case, which keeps the fixtures small), the others into ``<case>/<adapter>`` (BERT and Llama's
    method cases and their dora / loreft files keep the layout they had)."""
    legacy = architecture.name in LEGACY_ARCHS and (group == "legacy" or case in LEGACY_BIN_CASES)
    return case if len(adapter_list) == 1 and not legacy else os.path.join(case, name)


def run_case(architecture, arch_dir, inputs, group, case, adapter_list, setup, options):
    """Add, perturb, save and run one case in AdapterHub; returns its manifest entry."""
    import adapters
    import transformers

    torch.manual_seed(zlib.crc32(f"{architecture.name}/{case}".encode()))
    head = options.get("head")
    strays = {}
    if head:
        model = adapters.AutoAdapterModel.from_pretrained(os.path.join(arch_dir, "base")).eval()
    else:
        model = getattr(transformers, architecture.model_class).from_pretrained(os.path.join(arch_dir, "base")).eval()
        model.config._name_or_path = f"tiny-{architecture.name}"  # what AdapterHub records as model_name, not a local path
        base_keys = set(model.state_dict())
        adapters.init(model)
        # tensors AdapterHub's init adds to the model itself (not to an adapter), which no file holds:
        # recorded as "stray.<key>" beside the outputs (ModernBERT: a bias on the fused Wqkv)
        strays = {f"stray.{key}": value.detach().clone() for key, value in model.state_dict().items()
                  if key not in base_keys and "adapter" not in key and ".loras." not in key and ".refts." not in key
                  and not key.startswith("prompt_tuning.")}  # (prompt tuning's alias of the model's embeddings)
    model.config._name_or_path = f"tiny-{architecture.name}"
    for index, (name, adapter_config) in enumerate(adapter_list):
        model.add_adapter(name, config=adapter_config)
        if options.get("perturb") != "none":  # "none": the adapter as its seeded initialisation made it
            perturb(model, name, seed=100 + index, diagonal=options.get("perturb") == "diagonal")
    if head:
        method, kwargs = head[architecture.inputs]
        getattr(model, method)("a", **kwargs)
        perturb(model, "a", seed=200)  # the head's layers too (heads.a.*)
    fusion_name = None
    if options.get("fusion") is not None:
        fuse = setup if type(setup).__name__ == "Fuse" else setup.children[-1]
        model.add_adapter_fusion(fuse, options["fusion"])
        fusion_name = ",".join(fuse.children)
        perturb(model, fusion_name, seed=300)
    for group in options.get("share", []):
        model.share_parameters(group)
    if options.get("copy"):  # the second adapter as a copy of the first
        source, target = options["copy"]
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for key, parameter in parameters.items():
                if f".{target}." in key:
                    parameter.copy_(parameters[key.replace(f".{target}.", f".{source}.")])
    model.set_active_adapters(setup)
    model.eval()  # the adapters were added in training mode (drop-path would drop rows)
    with torch.no_grad():
        output = outputs_of(model(**inputs, **options.get("forward", {})))
        if "attention_mask" in inputs and PREFIX_CASES.intersection(case.split("_")):
            # AdapterHub drops prefixes on decoder-only models when the mask has padding, and lets
            # prompts attend to the padding: the unpadded batch shows the method without either
            unpadded = dict(inputs, attention_mask=torch.ones_like(inputs["attention_mask"]))
            output.update({f"{key}_unpadded": value for key, value in outputs_of(model(**unpadded)).items()})
        if options.get("reference_setup"):
            model.set_active_adapters(options["reference_setup"])
            output.update({f"reference_{key}": value for key, value in outputs_of(model(**inputs)).items()})
            model.set_active_adapters(setup)
    # AdapterHub writes .bin by default; the matrix writes safetensors (AdapterHub's use_safetensors=True,
    # a fraction of the size for tiny tensors) except for the cases in BIN_CASES, so both formats are read
    saving = {"use_safetensors": options.get("safetensors", False)}
    entries = []
    for name, _ in adapter_list:
        folder = adapter_folder(architecture, group, case, name, adapter_list)
        os.makedirs(os.path.join(arch_dir, folder), exist_ok=True)  # AdapterHub makes only the last folder
        model.save_adapter(os.path.join(arch_dir, folder), name, **saving)
        entries.append({"name": name, "dir": folder, "config": case})
    entry = {}
    if fusion_name:  # into the case's folder (its files' names are the fusion's own; its adapters have folders)
        model.save_adapter_fusion(os.path.join(arch_dir, case), fusion_name, **saving)
        entry["fusion_name"] = fusion_name
    if head:
        os.makedirs(os.path.join(arch_dir, case, "head"), exist_ok=True)
        model.save_head(os.path.join(arch_dir, case, "head"), "a", **saving)
        entry["head"] = f"{case}/head"
    with torch.no_grad():
        model.set_active_adapters(None)
        base_output = outputs_of(model(**inputs))
    from safetensors.torch import save_file

    save_file({**output, **strays}, os.path.join(arch_dir, case, "expected.safetensors"))
    first = next(iter(output))
    return {
        "arch": architecture.name, "case": case, "kind": "text", "inputs": architecture.inputs, "adapters": entries,
        "fusion": case if fusion_name else None, "setup": repr(setup), "setup_tree": describe(setup),
        "expected": f"{case}/expected.safetensors",
        "differs_from_base": not (output[first].shape == base_output[first].shape
                                  and torch.allclose(output[first], base_output[first], atol=1e-4)),
        **entry, **{key: options[key] for key in ("forward", "share") if key in options},
    }


def main() -> None:
    import adapters
    import transformers
    from safetensors.torch import save_file

    provide_stochastic_depth()
    transformers.logging.set_verbosity_error()
    import logging

    logging.getLogger("adapters").setLevel(logging.ERROR)
    only = sys.argv[1:]  # names of architectures: rewrite only theirs (their folders and manifest entries)

    # everything is written into a fresh folder beside OUT, swapped in at the end: a test run (or
    # another agent's) never sees a half-written fixture tree
    target = f"{OUT}.new-{os.getpid()}"
    previous = {}
    if only and os.path.exists(os.path.join(OUT, "manifest.json")):
        with open(os.path.join(OUT, "manifest.json")) as f:
            previous = json.load(f)
        shutil.copytree(OUT, target)  # the other architectures' folders, kept as they are
    else:
        os.makedirs(target)
    manifest = {"anchor": f"adapters {adapters.__version__}", "transformers": transformers.__version__, "cases": [],
                "adapterhub_refuses": [], "adapterhub_failures": []}
    for architecture in ARCHITECTURES:
        if only and architecture.name not in only:
            for key in ("cases", "adapterhub_refuses", "adapterhub_failures"):
                manifest[key] += [e for e in previous.get(key, []) if e["arch"] == architecture.name]
            continue
        arch_dir = os.path.join(target, architecture.name)
        if os.path.isdir(arch_dir):
            shutil.rmtree(arch_dir)
        config, base = build_base(architecture, transformers)
        base.save_pretrained(os.path.join(arch_dir, "base"))
        inputs = make_inputs(architecture, config)
        save_file(inputs, os.path.join(arch_dir, "inputs.safetensors"))
        for group, case, adapter_list, setup, options in all_cases(architecture):
            if options.get("adapterhub_fails"):
                manifest["adapterhub_failures"].append(expect_failure(architecture, arch_dir, inputs, case, adapter_list, setup,
                                                                      options))
                continue
            try:
                entry = run_case(architecture, arch_dir, inputs, group, case, adapter_list, setup, options)
            except Exception as error:  # AdapterHub refuses the case on this architecture: recorded, no files
                shutil.rmtree(os.path.join(arch_dir, case), ignore_errors=True)
                manifest["adapterhub_refuses"].append({
                    "arch": architecture.name, "case": case, "error": _shortened(f"{type(error).__name__}: {error}"),
                })
                continue
            entry["group"] = group
            manifest["cases"].append(entry)
        print(f"{architecture.name}: {sum(c['arch'] == architecture.name for c in manifest['cases'])} cases", file=sys.stderr)
    with open(os.path.join(target, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    swap_in(target, OUT)
    print(f"wrote {len(manifest['cases'])} cases to {os.path.relpath(OUT)}", file=sys.stderr)


def swap_in(new: str, folder: str) -> None:
    """Replace ``folder`` by ``new`` with two renames (the old tree is removed afterwards)."""
    old = f"{folder}.old-{os.getpid()}"
    if os.path.isdir(folder):
        os.replace(folder, old)
    os.replace(new, folder)
    shutil.rmtree(old, ignore_errors=True)


def _shortened(text: str, keep: int = 150) -> str:
    """An error message for the manifest: its start and its end (where AdapterHub says what it refuses)."""
    return text if len(text) <= 2 * keep else f"{text[:keep]} ... {text[-keep:]}"


def expect_failure(architecture, arch_dir, inputs, case, adapter_list, setup, options) -> dict:
    """A case that shows an AdapterHub failure: its error is the fixture."""
    import adapters
    import transformers

    torch.manual_seed(zlib.crc32(f"{architecture.name}/{case}".encode()))
    model = getattr(transformers, architecture.model_class).from_pretrained(os.path.join(arch_dir, "base")).eval()
    adapters.init(model)
    try:
        for name, adapter_config in adapter_list:
            model.add_adapter(name, config=adapter_config)
        model.set_active_adapters(setup)
        with torch.no_grad():
            model(**inputs, **options.get("forward", {}))
    except Exception as error:
        return {"arch": architecture.name, "case": case, "error": f"{type(error).__name__}: {error}",
                "configs": [config.to_dict() for _, config in adapter_list], "setup": repr(setup)}
    raise AssertionError(f"{case} on {architecture.name} was expected to fail in AdapterHub, and ran")


if __name__ == "__main__":
    main()
