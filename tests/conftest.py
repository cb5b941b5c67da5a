"""Tiny models of every supported architecture, built offline from configs."""

from __future__ import annotations

import os

import pytest
import torch
import transformers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers.logging.set_verbosity_error()
# CI installs every package a test uses (the README's test command): there a missing one is an error, not a skip
IN_CI = bool(os.environ.get("CI"))


def pytest_report_header(config):
    import importlib.metadata

    versions = []
    for name in ("transformers", "torch", "peft", "safetensors", "huggingface_hub"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return "adapters tested with " + ", ".join(versions)


def require(package: str):
    """The imported ``package``; a test that needs it is skipped where it is not installed, except in
    CI (``CI`` set), where the missing package fails the test."""
    import importlib

    return importlib.import_module(package) if IN_CI else pytest.importorskip(package)
# the models are tiny: one thread per test process is faster than several competing for the cores
# (pytest -n runs several processes)
torch.set_num_threads(1)

HIDDEN, LAYERS, HEADS, VOCAB = 32, 2, 4, 99
IMAGE_SIZE = 8

_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS)
_ENCODER = dict(_COMMON, intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_DECODER = dict(_COMMON, intermediate_size=64, num_key_value_heads=2, pad_token_id=0)

_SLIDING_FULL = ["sliding_attention", "full_attention"]
_T5 = dict(
    vocab_size=VOCAB, d_model=HIDDEN, d_kv=6, d_ff=64, num_layers=LAYERS, num_decoder_layers=LAYERS, num_heads=HEADS,
    relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
_BART = dict(
    vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_attention_heads=HEADS,
    decoder_attention_heads=HEADS, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0, attention_dropout=0.0,
    activation_dropout=0.0, max_position_embeddings=64,
)
_BART_TOKENS = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)

def _bert2bert_config():
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        transformers.BertConfig(**_ENCODER), transformers.BertConfig(**_ENCODER, is_decoder=True, add_cross_attention=True)
    )
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id, config.vocab_size = 1, 0, 2, VOCAB
    return config


CONFIGS = {
    "bert": lambda: transformers.BertConfig(**_ENCODER),
    "roberta": lambda: transformers.RobertaConfig(**_ENCODER, pad_token_id=1),
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(**_ENCODER, pad_token_id=1),
    "distilbert": lambda: transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=64, dropout=0.0, attention_dropout=0.0
    ),
    # one shared group of 2 distinct layers, run LAYERS times (4 layer applications); embeddings 16 wide
    "albert": lambda: transformers.AlbertConfig(
        **_ENCODER, inner_group_num=2, embedding_size=16, classifier_dropout_prob=0.0, pad_token_id=0
    ),
    "electra": lambda: transformers.ElectraConfig(**_ENCODER, embedding_size=16),  # embeddings_project 16 -> 32
    # disentangled attention: content-to-position and position-to-content scores
    "deberta-v2": lambda: transformers.DebertaV2Config(
        **_ENCODER, relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
        max_relative_positions=16, position_buckets=8, pad_token_id=0,
    ),
    # global attention in layer 0, local (sliding window 6 of 12 tokens) in layer 1
    "modernbert": lambda: transformers.ModernBertConfig(
        **dict(_COMMON, intermediate_size=64), global_attn_every_n_layers=2, local_attention=6, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, attention_dropout=0.0, mlp_dropout=0.0,
        embedding_dropout=0.0,
    ),
    "llama": lambda: transformers.LlamaConfig(**_DECODER),
    "mistral": lambda: transformers.MistralConfig(**_DECODER),
    "qwen2": lambda: transformers.Qwen2Config(**_DECODER),
    "qwen3": lambda: transformers.Qwen3Config(**_DECODER, head_dim=8),
    # sliding window 4 < 12 tokens in layer 0; Gemma 2 also soft-caps attention (and final) logits
    "gemma2": lambda: transformers.Gemma2Config(**_DECODER, head_dim=8, sliding_window=4, layer_types=_SLIDING_FULL),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(**_DECODER, head_dim=8, sliding_window=4, layer_types=_SLIDING_FULL),
    # fused qkv_proj / gate_up_proj; as many key/value heads as query heads (Phi-3-mini)
    "phi3": lambda: transformers.Phi3Config(**dict(_DECODER, num_key_value_heads=HEADS), resid_pdrop=0.0),
    # parallel residual; rotary on 4 of each head's 8 dimensions
    "gptj": lambda: transformers.GPTJConfig(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=64, rotary_dim=4, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
    # fused query_key_value interleaved per head; parallel residual; rotary on half of each head
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        **dict(_COMMON, intermediate_size=64), rotary_pct=0.5, hidden_dropout=0.0, attention_dropout=0.0,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
    # 8x8 images in 2x2 patches: 16 patches + [CLS]
    "vit": lambda: transformers.ViTConfig(
        **_ENCODER, image_size=IMAGE_SIZE, patch_size=2, num_channels=3
    ),
    # CLIP's towers on their own: causal text encoder (pooled at the end-of-text token) and vision encoder
    "clip_text_model": lambda: transformers.CLIPTextConfig(
        **dict(_COMMON, intermediate_size=64), max_position_embeddings=32, attention_dropout=0.0, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    ),
    "clip_vision_model": lambda: transformers.CLIPVisionConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=64,
        image_size=IMAGE_SIZE, patch_size=2, num_channels=3, attention_dropout=0.0,
    ),
    # both CLIP towers in one model (text first, then vision); the towers differ in width (32 / 48)
    "clip": lambda: transformers.CLIPConfig(
        text_config=dict(
            **dict(_COMMON, intermediate_size=64), max_position_embeddings=32, attention_dropout=0.0, pad_token_id=0,
            bos_token_id=1, eos_token_id=2,
        ),
        vision_config=dict(
            hidden_size=48, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=64,
            image_size=IMAGE_SIZE, patch_size=2, num_channels=3, attention_dropout=0.0,
        ),
        projection_dim=16,
    ),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
    # encoder-decoders: T5 with d_kv * heads (24) != d_model (32); mT5 with a gated-GELU FFN; BART
    # post-LN, mBART pre-LN; Whisper reads 8 mel bins over 16 frames
    "t5": lambda: transformers.T5Config(**_T5),
    "mt5": lambda: transformers.MT5Config(**dict(_T5, d_kv=8, feed_forward_proj="gated-gelu")),
    "bart": lambda: transformers.BartConfig(**_BART, **_BART_TOKENS),
    "mbart": lambda: transformers.MBartConfig(**_BART, **_BART_TOKENS),
    # issue 23's architectures: BertGeneration (BERT's layers, no token types); X-MOD with two language
    # modules (default en_XX); DeBERTa v1 (fused in_proj, per head [q|k|v]); PLBART (BART's layout);
    # BEiT with layer scale (λ = 0.1) and a relative position bias
    "bert-generation": lambda: transformers.BertGenerationConfig(**_ENCODER, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "xmod": lambda: transformers.XmodConfig(
        **_ENCODER, pad_token_id=1, languages=["en_XX", "de_DE"], default_language="en_XX"
    ),
    "deberta": lambda: transformers.DebertaConfig(
        **_ENCODER, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=16, pad_token_id=0,
    ),
    "plbart": lambda: transformers.PLBartConfig(**_BART, **_BART_TOKENS),
    # transformers' EncoderDecoderModel: a BERT encoder and a BERT decoder with cross-attention (bert2bert)
    "encoder-decoder": lambda: _bert2bert_config(),
    # parallel residual (attention and FFN read one norm); rotary on half of each head
    "phi": lambda: transformers.PhiConfig(
        **dict(_DECODER, num_key_value_heads=HEADS), resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
        bos_token_id=1, eos_token_id=2,
    ),
    "beit": lambda: transformers.BeitConfig(
        **{k: v for k, v in _ENCODER.items() if k != "vocab_size"}, image_size=IMAGE_SIZE, patch_size=2, num_channels=3,
        use_relative_position_bias=True, layer_scale_init_value=0.1,
    ),
    "whisper": lambda: transformers.WhisperConfig(
        **dict(_BART, max_target_positions=32, decoder_start_token_id=1, num_mel_bins=8, max_source_positions=8),
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
}
ENCODERS = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "modernbert", "deberta-v2", "albert", "xmod", "deberta", "bert-generation")
DECODERS = ("llama", "mistral", "qwen2", "gpt2", "qwen3", "gemma2", "gemma3_text", "phi3", "gptj", "gpt_neox", "phi")
ENCODER_DECODERS = ("t5", "mt5", "bart", "mbart", "whisper", "plbart", "encoder-decoder")
# architectures that read images (pixel_values) instead of tokens (the support table's "vision" kind)
VISION = ("vit", "clip_vision_model", "beit")
# architectures without a prediction-head class in transformers (CLIP's towers): their tests run bare
NO_HEADS = ("clip_text_model", "clip_vision_model")
# dual encoders: text and image inputs in one call (CLIPModel)
DUAL = ("clip",)
ARCHS = tuple(CONFIGS)
# architectures added after the first eight: the tests that run only on a few representatives
# (PEFT methods, merging) run on these too
NEW_ARCHS = (
    "qwen3", "electra", "gemma2", "gemma3_text", "phi3", "gptj", "modernbert", "deberta-v2", "gpt_neox", "vit",
    "clip_text_model", "albert",  # the vision tower has the text tower's layers (same spec rows)
    "clip",
    "deberta",  # DeBERTa v1: one fused in_proj, per head [q | k | v]
)
# architectures without an AdapterModel class: CLIP's towers on their own (CLIPAdapterModel holds both)
NO_ADAPTER_MODEL = ("clip_text_model", "clip_vision_model", "encoder-decoder")
# architectures whose attention does not call transformers' attention interface and has no prefix hook
# (a spec's attention_mixin): prefix tuning and Llama-Adapter are refused
NO_PREFIX = ()
# architectures whose layers run several times per pass (ALBERT's shared group): no adapter acts after
# the last layer application only
SHARED_DEPTH = ("albert",)
# architectures whose transformers classes do not support gradient checkpointing
NO_CHECKPOINTING = ("albert",)
# architectures whose transformers class cannot run sdpa (Gemma 2: attention-logit soft-capping)
NO_SDPA = ("gemma2",)
# DeBERTa's disentangled attention and GPT-J's before transformers 5.24 compute their scores themselves (eager
# only; one list for every supported release, so the generated support table does not depend on the version)
NO_SDPA += ("deberta-v2", "deberta", "gptj")

HEAD_CLASSES = {
    "base": transformers.AutoModel,
    "seq_cls": transformers.AutoModelForSequenceClassification,
    "mlm": transformers.AutoModelForMaskedLM,
    "clm": transformers.AutoModelForCausalLM,
    "seq2seq": transformers.AutoModelForSeq2SeqLM,
}
# Whisper's heads: the speech seq2seq model; its sequence classifier is an encoder-only model
_HEAD_OVERRIDES = {("whisper", "seq2seq"): transformers.AutoModelForSpeechSeq2Seq}
# BertGeneration's LM head model (BertGenerationDecoder) is bidirectional unless is_decoder: its masked-LM model
_HEAD_OVERRIDES[("bert-generation", "mlm")] = transformers.AutoModelForCausalLM
# EncoderDecoderModel is transformers' only class for its config: the bare model has the decoder's LM head
_HEAD_OVERRIDES[("encoder-decoder", "base")] = transformers.AutoModelForSeq2SeqLM
# ... and CLIP's towers have no classification head class of their own (CLIPModel's only one,
# CLIPForImageClassification, drops the text tower)
NO_SEQ_CLS = ("whisper", *NO_HEADS, *DUAL, "bert-generation", "encoder-decoder")
# architectures that refuse prompt tuning: Whisper's inputs are not token ids; CLIP's text tower
# pools at the end-of-text position in input_ids, which a prompt would move
NO_PROMPT = ("whisper", "clip_text_model", "clip", "beit", "encoder-decoder")
# Llama-Adapter is defined for decoder-only models: refused on encoder-decoders and CLIPModel
NO_ADAPTION_PROMPT = (*ENCODER_DECODERS, "clip")
# prefix tuning enters through a spec's attention_mixin, but Llama-Adapter's gated prompt needs the interface
NO_ADAPTION_PROMPT += ("gptj", "deberta-v2", "deberta")
# (arch, head) pairs the tests run: every arch bare and with its natural heads
ARCH_HEADS = (
    [(a, "base") for a in ARCHS]
    + [(a, "seq_cls") for a in ARCHS if a not in NO_SEQ_CLS]
    + [(a, "mlm") for a in ENCODERS]
    + [(a, "clm") for a in DECODERS]
    + [(a, "seq2seq") for a in ENCODER_DECODERS]
)
# the latest architectures (GPT-NeoX, ViT, CLIP's towers, ALBERT) run the heaviest bottleneck
# matrices with their natural head only (the bare model runs inside it), to keep the suite fast;
# every method, block and head conversion is still run on each of them
LIGHT_ARCHS = {
    "gpt_neox": "clm", "vit": "seq_cls", "clip_text_model": "base", "clip_vision_model": "base", "albert": "mlm",
    "clip": "base",
    # issue 23's architectures
    "bert-generation": "mlm", "xmod": "seq_cls", "deberta": "mlm", "plbart": "seq2seq", "beit": "seq_cls", "phi": "clm", "encoder-decoder": "seq2seq",
}
ARCH_HEADS_LIGHT = [(a, h) for a, h in ARCH_HEADS if LIGHT_ARCHS.get(a, h) == h]


def make_model(arch: str, head: str = "base", seed: int = 0):
    """A tiny randomly initialised model (not yet patched), in eval mode."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    if head == "seq_cls":
        config.num_labels = 3
    if arch in VISION and head == "seq_cls":
        model = transformers.AutoModelForImageClassification.from_config(config)
    else:
        model = _HEAD_OVERRIDES.get((arch, head), HEAD_CLASSES[head]).from_config(config)
    return model.eval()


def make_inputs(arch: str, batch: int = 2, seq: int = 12, seed: int = 1, padded: bool = True):
    """Token ids and an attention mask (the second row padded); ``pixel_values`` for image models."""
    generator = torch.Generator().manual_seed(seed)
    if arch in VISION:
        return {"pixel_values": torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)}
    input_ids = torch.randint(3, VOCAB, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    if padded and batch > 1:
        attention_mask[1, -3:] = 0
    if arch in DUAL:  # as many images as texts (the rows Parallel and BatchSplit split)
        pixel_values = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
    if arch not in ENCODER_DECODERS:
        return {"input_ids": input_ids, "attention_mask": attention_mask}
    # encoder-decoders: the decoder reads as many tokens as the encoder (the sequence classifiers
    # pool the decoder at the encoder input's end-of-sequence tokens, which end every row)
    decoder_input_ids = torch.randint(3, VOCAB, (batch, seq), generator=generator)
    if arch == "whisper":
        features = torch.randn(batch, 8, 16, generator=generator)
        return {"input_features": features, "decoder_input_ids": decoder_input_ids}
    eos = CONFIGS[arch]().eos_token_id
    input_ids[torch.arange(batch), attention_mask.sum(-1) - 1] = eos
    return {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids}


def cls_head(arch: str) -> str:
    """``"seq_cls"``, or ``"base"`` where the architecture has no sequence classifier with a decoder."""
    return "base" if arch in NO_SEQ_CLS else "seq_cls"


def n_layers(arch: str) -> int:
    """The number of layers adapters count (encoder-decoders: encoder and decoder layers together;
    CLIPModel: text and vision layers)."""
    return 2 * LAYERS if arch in ENCODER_DECODERS or arch in DUAL else LAYERS


def batch_of(inputs: dict) -> int:
    """The batch size of ``make_inputs`` output."""
    return next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0]


def left_padded_prompt():
    """Two 6-token prompts for generate(); the second starts with 2 padding tokens."""
    ids = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    ids[1, :2] = 0
    return ids, mask


def main_output(output) -> torch.Tensor:
    """last_hidden_state for bare models, logits for models with heads; for CLIPModel both towers'
    final states along the sequence (row ``i``: image ``i``'s positions, then text ``i``'s, the
    narrower tower's states padded with zeros to the wider width)."""
    if getattr(output, "text_model_output", None) is not None:
        text, vision = output.text_model_output.last_hidden_state, output.vision_model_output.last_hidden_state
        width = max(text.shape[-1], vision.shape[-1])
        pad = lambda states: torch.nn.functional.pad(states, (0, width - states.shape[-1]))  # noqa: E731
        return torch.cat([pad(vision), pad(text)], dim=1)
    return output.logits if hasattr(output, "logits") and output.logits is not None else output.last_hidden_state


def perturb(module: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> None:
    """Add noise to every parameter so no adapter is (near) the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.is_floating_point():
                param.add_(torch.randn(param.shape, generator=generator) * scale)


def perturb_adapter(model, name: str, scale: float = 0.5, seed: int = 0) -> None:
    with torch.no_grad():
        for param in model._adapter_parameters(name):
            generator = torch.Generator().manual_seed(seed)
            param.add_(torch.randn(param.shape, generator=generator) * scale)
            seed += 1


@pytest.fixture
def adapters_log(caplog):
    """The library's warnings (its logger does not propagate to the root logger)."""
    import logging

    logger = logging.getLogger("adapters")
    # where it propagates (CI sets that), caplog's handler on the root logger would record each message again
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="adapters"):
            yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.propagate = propagate


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


def reference_with_deltas(model, arch: str, deltas: dict, head: str = "base"):
    """A fresh copy of ``model``'s base model (same arch and head, same initial weights) whose
    adapted linear weights are ``W + Σ_i w_i ΔW_i``, written out independently of the library:
    ``deltas`` maps an adapter name to ``(w_i, delta)``, ``delta(adapter, W_rows) -> ΔW_i`` over
    the rows the adapter covers (its parts of a fused projection such as GPT-2's ``c_attn``)."""
    reference = make_model(arch, head)
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for path, host in model.named_modules():
            if not hasattr(host, "loras"):
                continue
            weight = host.weight_out_in.detach().clone()
            total = weight.clone()
            for name, (factor, delta) in deltas.items():
                if name in host.loras:
                    adapter = host.loras[name]
                    rows = slice(None) if adapter.out_index is None else adapter.out_index
                    total[rows] += (factor * delta(adapter, weight[rows])).to(total.dtype)
            modules[path].weight.copy_(total.t() if host.fan_in_fan_out else total)
    return reference


def patched(arch: str = "bert", head: str = "base", seed: int = 0):
    """A tiny model with ``adapters.init`` applied."""
    import adapters

    model = make_model(arch, head, seed)
    adapters.init(model)
    return model


def run(model, inputs, setup=None) -> torch.Tensor:
    """The main output without gradients, under ``setup`` if given (else the active setup)."""
    from adapters import AdapterSetup

    with torch.no_grad():
        if setup is None:
            return main_output(model(**inputs))
        with AdapterSetup(setup):
            return main_output(model(**inputs))



def _full_forward_logits(model, inputs: dict, sequences: torch.Tensor, steps: int) -> torch.Tensor:
    """``(steps, batch, vocab)``: for each of the last ``steps`` tokens of ``sequences``, the logits
    that predicted it, each from one full forward over the tokens before it without a cache; a
    decoder's rows number their real tokens from 0 (left padding takes no positions)."""
    import inspect

    start = sequences.shape[1] - steps
    encoder_decoder = model.config.is_encoder_decoder
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    logits = []
    with torch.no_grad():
        for step in range(steps):
            tokens = sequences[:, : start + step]
            if encoder_decoder:
                encoder = {k: v for k, v in inputs.items() if not k.startswith("decoder_")}
                out = model(**encoder, decoder_input_ids=tokens, use_cache=False)
            else:
                mask = inputs.get("attention_mask")
                mask = torch.ones_like(tokens[:, :start]) if mask is None else mask
                mask = torch.cat([mask, torch.ones_like(tokens[:, :step])], dim=1)
                extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if takes_positions else {}
                out = model(input_ids=tokens, attention_mask=mask, use_cache=False, **extra)
            logits.append(out.logits[:, -1])
    return torch.stack(logits)


def assert_generate_is_greedy_decoding(model, inputs: dict, steps: int = 5, atol: float = 1e-5, **generate_kwargs):
    """Check ``generate()`` against an independent computation rather than against itself: greedy
    decoding with the KV cache and without it choose the same tokens, every step's logits in both
    equal a full forward pass over the tokens so far (:func:`_full_forward_logits`), and each token
    is the argmax of those (a hand-written greedy loop over full forwards gives the same sequence);
    the cached run really decodes from its cache (every forward after the first reads one new
    token). Returns the generated sequences.

    ``min_new_tokens=steps`` keeps end-of-sequence tokens out, so every row runs all ``steps``."""
    kwargs = {
        "do_sample": False, **generate_kwargs,
        "max_new_tokens": steps, "min_new_tokens": steps, "output_logits": True, "return_dict_in_generate": True,
    }
    lengths = []  # the tokens each forward embeds (encoder-decoders: each decoder forward)
    decoder = model.get_decoder() if model.config.is_encoder_decoder else None
    # the decoder's token embedding (an EncoderDecoderModel's decoder is a whole model: its input embeddings)
    embeddings = model.get_input_embeddings() if decoder is None else getattr(decoder, "embed_tokens", None) or decoder.get_input_embeddings()
    hook = embeddings.register_forward_hook(lambda module, args, output: lengths.append(args[0].shape[-1]))
    try:
        cached = model.generate(**inputs, use_cache=True, **kwargs)
    finally:
        hook.remove()
    assert len(lengths) > 1 and all(n == 1 for n in lengths[1:]), f"the cached run did not decode from its cache: {lengths}"
    uncached = model.generate(**inputs, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    expected = _full_forward_logits(model, inputs, cached.sequences, steps)
    torch.testing.assert_close(torch.stack(cached.logits), expected, atol=atol, rtol=0)
    torch.testing.assert_close(torch.stack(uncached.logits), expected, atol=atol, rtol=0)
    # and every token is the argmax of those logits (end-of-sequence tokens excluded): by induction the
    # sequence a hand-written greedy loop over full forward passes produces
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    greedy = expected.clone()
    greedy[..., [token for token in eos if token < greedy.shape[-1]]] = -float("inf")
    assert torch.equal(cached.sequences[:, -steps:], greedy.argmax(-1).T), "generate() is not greedy decoding"
    return cached.sequences


def reference_disagreement(reference: torch.Tensor, independent: torch.Tensor, what: str, atol: float = 1e-5) -> str | None:
    """None when a reference output (another library's, or a transformers code path) agrees with
    an independent computation of the same thing; else why the reference cannot be trusted on the
    installed versions. Tests compare against a reference only where this is None, and skip that
    comparison with the reason otherwise (after checking our own result against the independent
    computation), so a reference library that breaks on a new release neither fails nor passes
    our tests."""
    if reference.shape == independent.shape and torch.allclose(reference, independent, atol=atol, rtol=0):
        return None
    import importlib.metadata

    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("transformers", "peft"))
    gap = (reference - independent).abs().max().item() if reference.shape == independent.shape else f"shape {tuple(reference.shape)}"
    return f"the reference ({what}) is wrong on {versions}: it differs from the independent computation by {gap}"


def checked_peft_output(peft_model, inputs: dict, independent: torch.Tensor | None = None, atol: float = 1e-4):
    """``(output, None)``: a PeftModel's main output for ``inputs``, checked against an independent
    computation — by default the plain transformers model ``merge_and_unload()`` makes of a copy
    (the adapter folded into the weights, no PEFT code in its forward); methods PEFT cannot merge
    (prefixes, Llama-Adapter) pass their own. ``(output, reason)`` when they disagree: callers skip
    their comparison with PEFT with that reason (see :func:`reference_disagreement`)."""
    import copy

    what = "PeftModel's forward" if independent is not None else "PeftModel's forward vs the plain model of its merge_and_unload()"
    with torch.no_grad():
        theirs = main_output(peft_model(**inputs))
        if independent is None:
            independent = main_output(copy.deepcopy(peft_model).merge_and_unload()(**inputs))
    return theirs, reference_disagreement(theirs, independent, what, atol=atol)


def model_state(model) -> dict:
    """Everything a failing call must leave as it was: the module tree (names and classes), every
    parameter and buffer (values, dtype, requires_grad), the hooks on every module, the adapter
    registry (adapters, fusions, active setup, skip_layers), the heads of a flexible-head model and
    the attention implementation. Compare with :func:`assert_unchanged`."""
    registry = model.adapters_config
    return {
        "modules": [(name, type(module).__qualname__) for name, module in model.named_modules()],
        "tensors": {name: tensor.detach().clone() for name, tensor in model.state_dict(keep_vars=True).items()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "hooks": [
            (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._state_dict_hooks))
            for name, m in model.named_modules()
        ],
        "adapters": dict(registry.adapters),
        "fusions": dict(registry.fusions),
        "active": (registry.active_setup, registry.skip_layers),
        "heads": sorted(getattr(model, "heads", {}) or {}),
        "attn": model.config._attn_implementation,
    }


def assert_unchanged(model, before: dict) -> None:
    """The model is as :func:`model_state` recorded it (tensors bit for bit)."""
    after = model_state(model)
    for key in ("modules", "requires_grad", "hooks", "adapters", "fusions", "active", "heads", "attn"):
        assert after[key] == before[key], f"{key} changed"
    assert after["tensors"].keys() == before["tensors"].keys(), "state dict keys changed"
    for name, tensor in before["tensors"].items():
        now = after["tensors"][name]
        assert now.dtype == tensor.dtype and now.shape == tensor.shape, f"{name} changed its dtype or shape"
        same = torch.equal(now, tensor) or (tensor.is_floating_point() and torch.allclose(now, tensor, rtol=0, atol=0, equal_nan=True))
        assert same, f"{name} changed"
