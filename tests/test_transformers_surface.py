"""The transformers internals this library relies on, checked one by one.

``adapters`` never copies transformers code, but it reaches inside it: it registers attention and
mask backends, swaps module classes named by its architecture specs, keeps joins in KV-cache
layers, wraps the gradient-checkpointing function, reads the cache ``generate`` hands over, and so
on. A transformers release that changes one of these usually breaks nothing loudly — the adapters
are silently skipped instead (as when 5.24 renamed ``past_key_values`` to ``cache``). Each test
here checks exactly what the code relies on and fails naming the installed transformers version
and what changed. Behavioural tests elsewhere in ``tests/`` are referenced in the comments.

The list of these internals, where each is used and how the 5.23–5.25 differences are handled, is
in ``docs/architecture.rst`` ("The surface we depend on"): code that starts relying on another
internal adds a row there and a test here.
"""

from __future__ import annotations

import inspect
import logging
from types import MethodType, SimpleNamespace

import pytest
import torch
import transformers
from conftest import (
    ARCHS,
    CONFIGS,
    DECODERS,
    ENCODER_DECODERS,
    LAYERS,
    VISION,
    left_padded_prompt,
    make_inputs,
    make_model,
    patched,
    perturb_adapter,
    run,
)
from packaging.version import Version
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

import adapters
from adapters.compat import CACHE_NAME, CACHE_NAMES, TRANSFORMERS_VERSION, passed_cache, returned_cache
from adapters.hooks.spec import layer_stacks, spec_for_model

VERSION = Version(TRANSFORMERS_VERSION)


def changed(what: str) -> str:
    """An assertion message that names the installed transformers version."""
    return f"transformers {TRANSFORMERS_VERSION}: {what}"


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


# -- architecture specs: every path, hook and attention module they name ---------------------------------
def _resolve(root: nn.Module, path: str, arch: str, what: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError as error:
        pytest.fail(changed(f"{arch}: {what} {path!r} is no longer a module of {type(root).__name__} ({error})"))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_module_path_of_the_architecture_spec_resolves(arch):
    """Specs name transformers' module attributes (``self_attn.q_proj``, ``mlp.down_proj``, ...)."""
    model = make_model(arch)
    spec = spec_for_model(model)
    base = model.base_model
    for attribute in ("embeddings", "embedding_output", "encoder", "decoder_module"):
        if getattr(spec, attribute):
            _resolve(base, getattr(spec, attribute), arch, f"spec.{attribute}")
    for path in spec.entry_modules:
        _resolve(base, path, arch, "spec.entry_modules entry")
    if spec.decoder is not None and spec.decoder.position_embeddings:
        embedding = _resolve(base, spec.decoder.position_embeddings, arch, "decoder.position_embeddings")
        # prefix tuning's shift_positions renumbers the decoder's tokens through this argument
        assert "position_ids" in parameters(type(embedding).forward), changed(
            f"{arch}: {type(embedding).__name__}.forward no longer takes position_ids (prefix tuning's shift_positions)"
        )
    for attribute, _required, _reason in spec.config_requirements:
        assert hasattr(model.config, attribute), changed(f"{arch}: the config has no {attribute!r} any more")
    for attribute in spec.fused_qkv_heads:
        assert hasattr(model.config, attribute), changed(f"{arch}: the config has no {attribute!r} (fused_qkv_heads)")
    stacks = layer_stacks(base, spec)
    assert len(stacks) == len(spec.stacks()), changed(f"{arch}: a layer stack of the spec is missing")
    for stack, _, layers in stacks:
        assert isinstance(layers, nn.ModuleList) and len(layers) > 0, changed(f"{arch}: {stack.layers} is not a ModuleList")
        for layer in layers:
            for attribute in ("attention", "query", "key", "value", "attn_output", "ffn_out", "cross_attention",
                              "cross_query", "cross_key", "cross_value", "cross_attn_output"):
                path = getattr(stack, attribute)
                if path:
                    _resolve(layer, path, arch, f"{stack.role} {attribute}")
            for attribute in ("ffn_in", "intermediate_lora", "output_lora"):  # alternatives (T5: wi, or wi_0 and wi_1)
                paths = getattr(stack, attribute)
                if paths:
                    found = [p for p in paths if _has_submodule(layer, p)]
                    assert found, changed(f"{arch}: none of {stack.role} {attribute} {paths} is a module of the layer")
            for hook in stack.residual_hooks:
                if hook.create_host:
                    parent = hook.host.rpartition(".")[0]
                    if parent:
                        _resolve(layer, parent, arch, f"{hook.location} host parent")
                else:
                    _resolve(layer, hook.host, arch, f"{hook.location} host")
                source = _resolve(layer, hook.residual_source, arch, f"{hook.location} residual_source")
                _resolve(layer, hook.norm or hook.sublayer, arch, f"{hook.location} norm/sublayer")
                # the residual stream is read as this positional argument (or this keyword)
                positional = [
                    p for p in list(inspect.signature(type(source).forward).parameters.values())[1:]
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                ]
                names = [p.name for p in positional]
                assert len(positional) > hook.residual_arg, changed(
                    f"{arch}: {type(source).__name__}.forward{tuple(names)} has no argument {hook.residual_arg} "
                    f"(the residual stream of {hook.location})"
                )
                if hook.residual_kwarg != "hidden_states" or hook.residual_arg:
                    assert names[hook.residual_arg] == hook.residual_kwarg, changed(
                        f"{arch}: {type(source).__name__}.forward's argument {hook.residual_arg} is "
                        f"{names[hook.residual_arg]!r}, the spec reads {hook.residual_kwarg!r}"
                    )


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


@pytest.mark.parametrize("arch", ARCHS)
def test_every_bottleneck_position_runs_inside_the_models_own_forward(arch, monkeypatch):
    """The class-swapped residual sources, norms and sub-blocks must all be called by the model's
    forward with the arguments the spec says: a host that never receives its residual skips its
    adapters silently. (Numbers: tests/test_bottleneck.py, tests/test_architectures.py.)"""
    from adapters.methods.bottleneck import BottleneckLayer

    model = patched(arch)
    model.add_adapter("a", config=adapters.DoubleSeqBnConfig(cross_adapter=True), set_active=True)
    called = set()
    original = BottleneckLayer.bottleneck_layer_forward

    def spy(self, *args, **kwargs):
        called.add(id(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BottleneckLayer, "bottleneck_layer_forward", spy)
    run(model, make_inputs(arch))
    hosts = [h for h in model._adapter_hosts if getattr(h, "method", None) == "bottleneck" and "a" in h.adapters]
    missed = [f"{h.location} of layer {h.layer_idx}" for h in hosts if id(h) not in called]
    assert hosts and not missed, changed(
        f"{arch}: the adapters at {missed} never ran (a hooked module is no longer called as the spec says)"
    )


# -- the attention interface: ALL_ATTENTION_FUNCTIONS / AttentionInterface, masks ------------------------------
_SPY = "surface_spy"


@pytest.fixture
def spy_backend():
    """A backend registered as adapters registers its wrappers: the model's eager attention and the
    eager mask, recording how transformers calls them."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    from adapters.hooks.attention import _model_eager

    record = SimpleNamespace(attention=[], masks=[])

    def attention(module, query, key, value, attention_mask, **kwargs):
        record.attention.append(SimpleNamespace(module=module, key=key, mask=attention_mask, kwargs=set(kwargs)))
        return _model_eager(module)(module, query, key, value, attention_mask, **kwargs)

    def mask(*args, **kwargs):
        result = ALL_MASK_ATTENTION_FUNCTIONS["eager"](*args, **kwargs)
        record.masks.append(SimpleNamespace(args=args, kwargs=set(kwargs), result=result))
        return result

    AttentionInterface.register(_SPY, attention)
    AttentionMaskInterface.register(_SPY, mask)
    yield record
    AttentionInterface._global_mapping.pop(_SPY, None)
    AttentionMaskInterface._global_mapping.pop(_SPY, None)


def _causal(arch: str, location: str) -> bool:
    """Whether a site's attention is causal (the wrapper builds a causal mask itself when it gets none)."""
    if arch in DECODERS:
        return True
    # CLIP's text tower is causal through the mask its model builds; its attention modules say is_causal=False
    return arch in ENCODER_DECODERS and location == "self"


# attention modules that did not call the attention interface before, per release that changed it: the
# spec keeps attention_interface=False (prefix tuning refused) while the oldest supported release needs it
_CALLS_INTERFACE_SINCE = {"gptj": Version("5.24.0")}


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_modules_call_the_registered_backend_and_mask(arch, spy_backend):
    """Every attention module a spec names calls ``ALL_ATTENTION_FUNCTIONS.get_interface(
    config._attn_implementation, ...)`` as ``(module, query, key, value, attention_mask, **kwargs)``
    with the module itself first, and its masks come from ``ALL_MASK_ATTENTION_FUNCTIONS`` of the same
    name; the prefix shapes match the keys it computes. (Numbers: tests/test_prefix.py,
    tests/test_adaption_prompt.py.)"""
    from adapters.methods.prefix_tuning import _attention_dims, _sites_with_configs
    from adapters.hooks.attention import attention_configs

    model = make_model(arch)
    spec = spec_for_model(model)
    for config in attention_configs(model):
        config._attn_implementation = _SPY
    inputs = make_inputs(arch)
    with torch.no_grad():
        model(**inputs)
    sites = _sites_with_configs(model.base_model, spec)
    callers = {id(call.module) for call in spy_backend.attention}
    silent = [f"{location} attention of layer {layer_idx} ({type(module).__name__})"
              for layer_idx, location, module, _, _ in sites if id(module) not in callers]
    since = _CALLS_INTERFACE_SINCE.get(arch)
    if spec.attention_mixin is not None and silent:
        # attention scored in the module's own code: prefixes enter through the spec's class swap, whose
        # overrides must still name methods of the module's class (or they would never run)
        overridden = [n for n, v in vars(spec.attention_mixin).items() if callable(v) and not n.startswith("__")]
        for _, location, module, _, _ in sites:
            if location != "cross":
                missing = [n for n in overridden if not hasattr(type(module), n)]
                assert not missing, changed(f"{arch}: {type(module).__name__} has no {missing} ({spec.attention_mixin.__name__})")
        return
    if not spec.attention_interface:
        if since is not None and VERSION >= since:
            assert not silent, changed(f"{arch}: {silent} no longer call the attention interface (they did from {since} on)")
        else:
            assert len(silent) == len(sites), changed(
                f"{arch}: its attention now calls the attention interface; the spec's attention_interface=False "
                f"(prefix tuning refused) could become True"
            )
        return
    assert not silent, changed(f"{arch}: {silent} no longer call the registered attention function (prefixes would be dropped)")
    for layer_idx, location, module, index, config in sites:
        kv_heads, head_dim = _attention_dims(module, config)
        for call in (c for c in spy_backend.attention if c.module is module):
            assert call.key.dim() == 4 and (call.key.shape[1], call.key.shape[3]) == (kv_heads, head_dim), changed(
                f"{arch}: {location} attention of layer {layer_idx} gets keys of shape {tuple(call.key.shape)}; prefix "
                f"tuning builds (batch, {kv_heads}, n, {head_dim})"
            )
        assert bool(getattr(module, "is_causal", False)) == _causal(arch, location), changed(
            f"{arch}: {type(module).__name__}.is_causal is {getattr(module, 'is_causal', None)!r}"
        )
        if _causal(arch, location) and (arch in DECODERS or arch in ENCODER_DECODERS):
            # the KV cache is indexed by it (adapters.hooks.joined_cache finds the layer's cache entry)
            assert module.__dict__.get("layer_idx") == index, changed(
                f"{arch}: {type(module).__name__}.layer_idx is {module.__dict__.get('layer_idx')!r}, expected {index}"
            )
    if arch in ("t5", "mt5"):  # the wrapper pads T5's relative position bias for the extra keys
        assert all("position_bias" in c.kwargs for c in spy_backend.attention), changed(f"{arch}: no position_bias kwarg")
    if arch == "gemma2":  # the wrapper passes soft-capping through to the backend
        assert all("softcap" in c.kwargs for c in spy_backend.attention), changed(f"{arch}: no softcap kwarg")
    if arch not in VISION:
        assert spy_backend.masks, changed(f"{arch}: no mask was built through ALL_MASK_ATTENTION_FUNCTIONS")
        for call in spy_backend.masks:
            # adapters' mask wrapper reads q_length and sets allow_is_causal_skip by keyword
            assert {"q_length", "allow_is_causal_skip"} <= call.kwargs, changed(
                f"{arch}: the mask function is called with {sorted(call.kwargs)}"
            )
        built = {id(call.result) for call in spy_backend.masks}
        masked = [c for c in spy_backend.attention if c.mask is not None]
        assert masked and all(id(c.mask) in built for c in masked), changed(
            f"{arch}: the attention gets masks the registered mask function did not build"
        )


def test_an_attention_backend_needs_its_mask_entry():
    """transformers builds no mask for a backend missing from ``ALL_MASK_ATTENTION_FUNCTIONS``
    (padding silently ignored): adapters registers every wrapper in both interfaces."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, create_causal_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    from adapters.hooks.attention import adapter_attention_name

    name = adapter_attention_name("sdpa")
    assert name in AttentionInterface._global_mapping and name in ALL_ATTENTION_FUNCTIONS, changed("registration")
    assert name in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, changed("mask registration")
    assert ALL_ATTENTION_FUNCTIONS.get_interface(name, None) is ALL_ATTENTION_FUNCTIONS[name], changed("get_interface")
    config = CONFIGS["llama"]()
    ids, mask = left_padded_prompt()
    embeds = torch.zeros(*ids.shape, config.hidden_size)
    AttentionInterface.register("surface_no_mask", ALL_ATTENTION_FUNCTIONS["sdpa"])
    try:
        for implementation, expected in ((name, True), ("surface_no_mask", False)):
            config._attn_implementation = implementation
            built = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=mask, **{CACHE_NAME: None})
            assert (built is not None) == expected, changed(
                f"create_causal_mask with backend {implementation!r} returned {type(built).__name__}"
            )
    finally:
        AttentionInterface._global_mapping.pop("surface_no_mask", None)


def test_eager_attention_forward_lookup_and_flash_detection():
    """Backend ``eager`` is the calling model's own ``eager_attention_forward`` (found in the module
    that defines the attention class, Llama's as fallback); ``adapters_flash_attention_2`` must still
    read as flash attention (models switch to 2D padding masks on the substring)."""
    from transformers.models.llama import modeling_llama
    from transformers.utils.generic import is_flash_attention_requested

    from adapters.hooks.attention import _model_eager

    signature = parameters(modeling_llama.eager_attention_forward)[:5]
    assert signature == ["module", "query", "key", "value", "attention_mask"], changed(
        f"Llama's eager_attention_forward takes {signature}"
    )
    for arch in ("llama", "gpt2", "bert", "t5", "gemma2"):
        model = make_model(arch)
        spec = spec_for_model(model)
        module = model.base_model.get_submodule(spec.layers)[0].get_submodule(spec.attention)
        function = _model_eager(module)
        assert function.__name__ == "eager_attention_forward" and function.__module__ == type(module).__module__, changed(
            f"{arch}: {type(module).__module__} has no eager_attention_forward any more"
        )
    assert is_flash_attention_requested(requested_attention_implementation="adapters_flash_attention_2"), changed(
        "is_flash_attention_requested no longer matches a substring"
    )
    assert not is_flash_attention_requested(requested_attention_implementation="adapters_sdpa"), changed("flash detection")


def test_attn_implementation_is_a_plain_settable_config_field():
    """adapters sets ``config._attn_implementation`` to its wrapper's name and reads back whatever
    ``set_attn_implementation`` put there (re-wrapped before the next forward; numbers:
    tests/test_prefix.py::test_eager_equals_sdpa). The wrapper's name is never saved."""
    model = patched("llama")
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager", changed(
        "set_attn_implementation does not set config._attn_implementation"
    )
    model.config._attn_implementation = "adapters_eager"
    assert model.config._attn_implementation == "adapters_eager", changed("config._attn_implementation is not settable")
    assert "adapters_eager" not in str(model.config.to_dict()), changed("config.to_dict() now saves _attn_implementation")


# -- the KV cache: the argument's name, the cache classes and the layer internals ----------------------------
@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # the old spelling, on purpose
def test_cache_argument_and_output_field_names():
    """``adapters.compat`` reads the cache under ``CACHE_NAMES`` (``cache`` from 5.24 on, with
    ``past_key_values`` accepted until 5.40) and the models return it under ``CACHE_NAME``.
    (Numbers: tests/test_prompt_tuning.py::test_generate_with_and_without_cache_agree,
    tests/test_prefix.py::test_decoding_step_joins_without_copying_the_cache.)"""
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaModel

    model = make_model("llama")
    signature = parameters(LlamaModel.forward)
    assert CACHE_NAME in signature, changed(f"LlamaModel.forward takes no {CACHE_NAME!r}: {signature}")
    assert CACHE_NAME in parameters(LlamaAttention.forward), changed(f"LlamaAttention.forward takes no {CACHE_NAME!r}")
    ids, mask = left_padded_prompt()
    for spelling in CACHE_NAMES:
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            output = model(input_ids=ids, attention_mask=mask, use_cache=True, **{spelling: cache})
        assert returned_cache(output) is cache and cache.get_seq_length() == ids.shape[1], changed(
            f"a cache passed as {spelling!r} is not filled and returned under {CACHE_NAMES}"
        )
    assert CACHE_NAME in dict.keys(output), changed(f"the output's cache field is not {CACHE_NAME!r}: {list(output.keys())}")
    ignored = DynamicCache(config=model.config)
    other = "cache" if CACHE_NAME == "past_key_values" else None
    if other is not None:  # 5.23 does not know ``cache``: compat must not offer it
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=True, **{other: ignored})
        assert ignored.get_seq_length() == 0 and other not in CACHE_NAMES, changed(
            "cache is now accepted; update adapters.compat"
        )


def test_dynamic_layer_exposes_replaceable_keys_and_values():
    """``adapters.hooks.joined_cache`` swaps a plain ``DynamicLayer`` for a subclass whose
    ``.keys``/``.values`` are views into ``[extra ; real]`` storage: it relies on ``update``'s
    signature, on ``keys``/``values`` being plain attributes the layer reads back (``get_seq_length``,
    the next ``update``), and on every other operation *replacing* them (so the layer notices).
    (Numbers: tests/test_prefix.py::test_decoding_cache_keeps_the_join_and_gives_the_plain_results.)"""
    assert parameters(DynamicLayer.update)[:3] == ["self", "key_states", "value_states"], changed(
        f"DynamicLayer.update takes {parameters(DynamicLayer.update)}"
    )
    assert parameters(DynamicCache.update)[:4] == ["self", "key_states", "value_states", "layer_idx"], changed(
        f"Cache.update takes {parameters(DynamicCache.update)}"
    )
    keys, values = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    cache = DynamicCache()
    # models call update(..., layer_idx, kwargs=...) from 5.24 on: extra keywords reach the layer
    cache.update(keys, values, 0, kwargs={})
    assert isinstance(cache.layers, list) and type(cache.layers[0]) is DynamicLayer, changed(
        f"DynamicCache().layers is {type(cache.layers).__name__} of {type(cache.layers[0]).__name__}"
    )
    layer = cache.layers[0]
    storage = torch.cat([torch.zeros(1, 2, 5, 4), keys], dim=2)
    layer.keys, layer.values = storage[:, :, 5:], storage[:, :, 5:]
    assert cache.get_seq_length() == 3, changed("get_seq_length no longer reads layer.keys")
    grown_keys, _ = cache.update(keys, values, 0)
    assert grown_keys.shape[2] == 6 and torch.equal(grown_keys[:, :, :3], keys), changed("update no longer appends to layer.keys")
    for operation in ("crop", "reorder_cache", "batch_select_indices", "batch_repeat_interleave", "reset"):
        layer = DynamicLayer()
        layer.update(keys, values)
        before = layer.keys
        argument = {"crop": (-1,), "reorder_cache": (torch.tensor([0]),), "batch_select_indices": (torch.tensor([0]),),
                    "batch_repeat_interleave": (1,), "reset": ()}[operation]
        getattr(layer, operation)(*argument)
        assert layer.keys is not before, changed(
            f"DynamicLayer.{operation} now changes keys in place (a kept join would go stale)"
        )
    encoder_decoder = EncoderDecoderCache(DynamicCache(), DynamicCache())
    assert isinstance(encoder_decoder.self_attention_cache, DynamicCache) and isinstance(
        encoder_decoder.cross_attention_cache, DynamicCache
    ), changed("EncoderDecoderCache.self_attention_cache / cross_attention_cache")
    # sliding-window layers are subclasses: joined_cache takes over plain DynamicLayers only (exact type)
    sliding = DynamicCache(config=CONFIGS["gemma2"]()).layers
    assert any(type(layer) is not DynamicLayer and isinstance(layer, DynamicLayer) for layer in sliding), changed(
        "Gemma 2's sliding-window cache layers are no longer DynamicLayer subclasses"
    )


def test_generate_passes_the_cache_under_cache_name(monkeypatch):
    """Prompt tuning and prefix tuning tell a decoding step from a first step by the cache in the
    forward's keyword arguments; ``generate`` reads it back from the output under its name
    (``MultiHeadOutput`` carries it there). (Numbers: tests/test_prompt_tuning.py,
    tests/test_seq2seq_heads.py::test_generate_equals_transformers_greedy_decoding_with_and_without_cache.)"""
    from transformers.generation.utils import ALL_CACHE_NAMES

    from adapters.heads.base import MultiHeadOutput

    assert CACHE_NAME in ALL_CACHE_NAMES, changed(f"generate's cache names are {ALL_CACHE_NAMES}")
    model = patched("llama", "clm")
    seen = []
    forward = type(model).forward

    def spy(self, *args, **kwargs):
        seen.append(passed_cache(kwargs))
        assert not (set(kwargs) & set(CACHE_NAMES)) - {CACHE_NAME}, changed(f"generate passes {sorted(kwargs)}")
        return forward(self, *args, **kwargs)

    spy.__signature__ = inspect.signature(forward)  # generate reads the forward's parameters
    monkeypatch.setattr(type(model), "forward", spy)
    ids, mask = left_padded_prompt()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert len(seen) == 3 and all(c is not None for c in seen) and seen[-1].get_seq_length() > ids.shape[1], changed(
        f"generate no longer passes the cache as {CACHE_NAME!r}"
    )
    cache = DynamicCache()
    updated = model._update_model_kwargs_for_generation(MultiHeadOutput(**{CACHE_NAME: cache}), {})
    assert passed_cache(updated) is cache, changed("_update_model_kwargs_for_generation does not read MultiHeadOutput's cache")
    inputs = model.prepare_inputs_for_generation(ids, attention_mask=mask, **{CACHE_NAME: seen[-1]})
    assert passed_cache(inputs) is seen[-1], changed("prepare_inputs_for_generation drops the cache")


def test_default_position_ids_are_the_cache_length_plus_arange():
    """Prefix tuning's ``shift_positions`` offsets the positions a model would use by itself:
    ``past + arange(T)`` (``ModelAdaptersMixin._position_ids``)."""
    model = make_model("llama")
    ids, _ = left_padded_prompt()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids[:, :4], use_cache=True, **{CACHE_NAME: cache})
        copy = DynamicCache(config=model.config)
        model(input_ids=ids[:, :4], use_cache=True, **{CACHE_NAME: copy})
        implicit = model(input_ids=ids[:, 4:], **{CACHE_NAME: cache}).last_hidden_state
        explicit = model(input_ids=ids[:, 4:], position_ids=torch.arange(4, 6)[None], **{CACHE_NAME: copy}).last_hidden_state
    torch.testing.assert_close(implicit, explicit, msg=changed("the default positions are no longer past + arange(T)"))


# -- gradient checkpointing ---------------------------------------------------------------------------
def test_gradient_checkpointing_goes_through_the_overridden_set_function():
    """``ModelAdaptersMixin._set_gradient_checkpointing`` wraps the checkpoint function so the
    recomputation sees the adapters; if transformers stopped calling it (or called it with other
    keywords), adapters would be skipped in the backward pass and the gradients silently wrong.
    (Numbers: tests/test_bottleneck.py::test_gradient_checkpointing_gives_the_same_gradients.)"""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from adapters.model_mixin import ModelAdaptersMixin

    theirs = parameters(transformers.PreTrainedModel._set_gradient_checkpointing)
    ours = parameters(ModelAdaptersMixin._set_gradient_checkpointing)
    assert theirs == ours, changed(f"PreTrainedModel._set_gradient_checkpointing takes {theirs}, the override {ours}")
    assert "value" not in ours  # transformers would take the override for the pre-4.35 format
    model = patched("llama")
    enable = getattr(model, "activation_checkpointing_enable", None)
    assert enable is not None, changed("PreTrainedModel.activation_checkpointing_enable is gone")
    enable()
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(m.gradient_checkpointing for m in layers), changed("activation_checkpointing_enable")
    unwrapped = [
        type(m).__name__ for m in layers if not getattr(m._gradient_checkpointing_func, "_adapters_context_aware", False)
    ]
    assert not unwrapped, changed(f"{unwrapped} got a checkpoint function that did not go through _set_gradient_checkpointing")
    # the layer checkpoints through its instance's function, in training with gradients
    calls = []
    for layer in layers:
        function = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=function, **k: calls.append(1) or _f(*a, **k)
    model.train()
    model(**make_inputs("llama"))
    assert len(calls) == len(layers), changed("GradientCheckpointingLayer no longer calls self._gradient_checkpointing_func")


def test_checkpointing_wraps_forward_at_class_creation_and_a_class_swap_keeps_it_once():
    """``GradientCheckpointingLayer`` wraps ``forward`` when a subclass is created and checkpoints in
    the outermost wrapper only; a layer whose class ``swap_class`` extends (no built-in spec does
    today) must checkpoint exactly once per call, neither skipped nor doubled."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from adapters.hooks.patching import swap_class

    class Sub(GradientCheckpointingLayer):
        def forward(self, x):
            return x

    assert Sub.forward.__code__.co_name == "forward_with_checkpointing", changed(
        "GradientCheckpointingLayer no longer wraps forward at class creation"
    )

    class Passthrough:
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    model = patched("llama")
    model.activation_checkpointing_enable()
    calls = []
    for layer in model.layers:
        swap_class(layer, Passthrough)
        function = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=function, **k: calls.append(1) or _f(*a, **k)
    model.train()
    model(**make_inputs("llama"))
    assert len(calls) == len(model.layers), changed(
        f"a class-swapped GradientCheckpointingLayer checkpointed {len(calls)} times for {len(model.layers)} layers"
    )


# -- output capturing (hidden states, attentions) --------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "bert", "t5", "clip", "gpt2"])
def test_output_recording_finds_the_class_swapped_model(arch):
    """transformers keys a model's ``_can_record_outputs`` by ``str(model.__class__)`` and hooks
    modules by ``isinstance``: the patched model keeps its class's name and module, so
    ``output_hidden_states`` still works."""
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

    model = patched(arch)
    original = model.__dict__["_adapters_original_class"]
    assert str(type(model)) == str(original), changed(f"{arch}: str() of the patched class differs")
    assert _CAN_RECORD_REGISTRY.get(model) == _CAN_RECORD_REGISTRY.get(make_model(arch)), changed(
        f"{arch}: the output-recording registry no longer finds the patched {original.__name__}"
    )
    with torch.no_grad():
        output = model(**make_inputs(arch), output_hidden_states=True)
    if getattr(output, "text_model_output", None) is not None:
        output = output.text_model_output
    states = getattr(output, "hidden_states", None) or getattr(output, "encoder_hidden_states", None)
    assert states is not None and len(states) == LAYERS + 1, changed(
        f"{arch}: output_hidden_states returned {None if states is None else len(states)} states"
    )


# -- hub kernels (use_kernels / kernels.kernelize) -------------------------------------------------------------
class _FakeRMSNormKernel(nn.Module):
    """A stand-in for a hub kernel of Llama's RMSNorm (stateless, forward with the same signature)."""

    def forward(self, hidden_states):
        _KERNEL_CALLS.append(1)
        variance = hidden_states.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states.float() * torch.rsqrt(variance + self.variance_epsilon)).to(hidden_states.dtype)


_KERNEL_CALLS: list = []


def _kernelized_llama(kernelize_before: bool, kernelize_after: bool, real: bool):
    """A patched Llama with an active bottleneck adapter whose RMSNorms run a hub kernel, installed
    before ``adapters.init`` (``from_pretrained``) and/or after it (``train()`` / ``eval()`` re-run it)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    model = make_model("llama")

    def kernelize(after_init: bool):
        if not real:  # what kernels' kernelize does per module: an instance forward and the repository
            for module in model.modules():
                cls = type(module)
                if not isinstance(module, LlamaRMSNorm):
                    continue
                # kernelize visits classes with a kernel_layer_name (none without the kernels package)
                # and skips those whose kernel_condition says no
                condition = getattr(cls, "kernel_condition", None)
                if after_init and (not hasattr(cls, "kernel_layer_name") or (condition is not None and not condition(module))):
                    continue
                module.forward = MethodType(_FakeRMSNormKernel.forward, module)
                module.__dict__["_kernel_repo"] = "surface/fake-rmsnorm"
            return
        from pathlib import Path

        from kernels import LocalLayerRepository, Mode, kernelize as run_kernelize, use_kernel_mapping

        class Repository(LocalLayerRepository):
            def load(self):
                return _FakeRMSNormKernel

        mapping = {"RMSNorm": {"cpu": Repository(Path("/surface-test"), layer_name="FakeRMSNorm")}}
        logger = logging.getLogger("kernels")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            with use_kernel_mapping(mapping, inherit_mapping=False):
                run_kernelize(model, mode=Mode.INFERENCE, device="cpu")
        finally:
            logger.setLevel(level)

    if kernelize_before:
        kernelize(after_init=False)
    adapters.init(model)
    model.add_adapter("a", config="seq_bn", set_active=True)
    perturb_adapter(model, "a")
    if kernelize_after:
        kernelize(after_init=True)
    return model


@pytest.mark.parametrize("real", [False, True], ids=["simulated", "kernels"])
def test_hub_kernels_do_not_hide_the_class_swapped_forward(real):
    """``kernels.kernelize`` (a dependency of transformers 5.25, which runs it in ``from_pretrained``
    by default and again in ``train()`` / ``eval()``) replaces the forward of
    e.g. Llama's RMSNorm *per instance*, which hides the class-level hooks adapters swaps in: the
    adapters would silently not run. ``swap_class`` keeps a kernel it finds and marks its classes with
    ``kernel_condition`` so later kernelization skips them."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    if real and not hasattr(LlamaRMSNorm, "kernel_layer_name"):  # transformers' decorator left the class alone
        pytest.skip(
            f"transformers {TRANSFORMERS_VERSION} runs no hub kernels here (the kernels package is absent or outside the "
            "range this release accepts), so none can hide the hooks; the simulated variant covers the mechanism"
        )

    assert getattr(LlamaRMSNorm, "kernel_layer_name", "RMSNorm") == "RMSNorm", changed("LlamaRMSNorm's hub kernel name")
    inputs = make_inputs("llama")
    reference = _kernelized_llama(False, False, real=False)
    expected = run(reference, inputs)
    assert (expected - run(make_model("llama"), inputs)).abs().max() > 1e-3
    for before, after in ((True, False), (False, True), (True, True)):
        _KERNEL_CALLS.clear()
        model = _kernelized_llama(before, after, real)
        torch.testing.assert_close(
            run(model, inputs), expected, atol=1e-5, rtol=1e-5,
            msg=changed(f"a hub kernel installed {' and '.join(w for w, on in (('before', before), ('after', after)) if on)} "
                        f"adapters.init hides the adapters"),
        )
        if before:  # the kernel still runs in every RMSNorm, inside the swapped classes
            assert len(_KERNEL_CALLS) == 2 * LAYERS + 1, changed(f"the kernel ran {len(_KERNEL_CALLS)} times")
    plain = model.unload()  # the kernel goes back onto the instance
    restored = plain.layers[0].input_layernorm.__dict__.get("forward")
    assert getattr(restored, "__func__", None) is _FakeRMSNormKernel.forward, "unload did not give the kernel back"


# -- checkpoint conversion (from_pretrained key renames) -----------------------------------------------------
def test_conversion_mapping_renames_transformers_4_module_paths():
    """``load_adapter`` renames keys of AdapterHub checkpoints written against transformers 4 module
    paths with transformers' own conversion mapping (``get_model_conversion_mapping``,
    ``WeightRenaming``, ``rename_source_key``). (Numbers: tests/test_architectures.py::
    test_vit_adapters_saved_against_transformers_4_module_paths_load_with_identical_outputs.)"""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    from adapters.loading import _with_renamed_legacy_keys

    assert parameters(rename_source_key)[:3] == ["source_key", "weight_renamings", "weight_converters"], changed(
        f"rename_source_key takes {parameters(rename_source_key)}"
    )
    cases = {
        "vit": {
            "encoder.layer.0.attention.attention.query.loras.a.lora_A": "layers.0.attention.q_proj.loras.a.lora_A",
            "encoder.layer.1.output.dense.loras.a.lora_B": "layers.1.mlp.fc2.loras.a.lora_B",
            "encoder.layer.0.output.output_adapters.adapters.b.adapter_down.0.weight":
                "layers.0.output_adapters.adapters.b.adapter_down.0.weight",
        },
        "clip_text_model": {
            "text_model.encoder.layers.0.self_attn.q_proj.loras.a.lora_A": "encoder.layers.0.self_attn.q_proj.loras.a.lora_A",
        },
        "clip_vision_model": {
            "vision_model.encoder.layers.1.self_attn.v_proj.loras.a.lora_B": "encoder.layers.1.self_attn.v_proj.loras.a.lora_B",
        },
    }
    for arch, renames in cases.items():
        model = patched(arch)
        model.add_adapter("a", config=adapters.LoRAConfig(r=2, output_lora=True))
        model.add_adapter("b", config="seq_bn")
        renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
        assert renamings, changed(f"{arch}: get_model_conversion_mapping has no WeightRenaming any more")
        expected = {k for k, _ in model.base_model.named_parameters()}
        for old, new in renames.items():
            assert new in expected, f"test setup: {new} is not a parameter"
            renamed = _with_renamed_legacy_keys(model, {old: 1}, expected)
            assert renamed == {new: 1}, changed(f"{arch}: {old} is renamed to {list(renamed)}, not {new}")


# -- tied weights -----------------------------------------------------------------------------------
def test_tied_weights_table_and_tie_weights_signature():
    """Flexible LM heads are tied through transformers' table: ``_tied_weights_keys`` (a dict
    target -> source, read by ``get_expanded_tied_weights_keys``) and ``all_tied_weights_keys``;
    ``tie_weights`` is overridden with transformers' signature. (Numbers:
    tests/test_heads.py::test_tied_lm_head_round_trips_and_stays_tied.)"""
    PreTrainedModel = transformers.PreTrainedModel
    assert parameters(PreTrainedModel.tie_weights) == ["self", "missing_keys", "recompute_mapping"], changed(
        f"tie_weights takes {parameters(PreTrainedModel.tie_weights)}"
    )
    assert "all_submodels" in parameters(PreTrainedModel.get_expanded_tied_weights_keys), changed(
        "get_expanded_tied_weights_keys takes no all_submodels"
    )
    config = CONFIGS["llama"]()
    config.tie_word_embeddings = True
    model = adapters.AutoAdapterModel.from_config(config)
    model.add_causal_lm_head("lm")
    table = model.all_tied_weights_keys
    tied = {k: v for k, v in table.items() if k.startswith("heads.lm.")}
    assert tied and all(v.endswith("embed_tokens.weight") for v in tied.values()), changed(
        f"all_tied_weights_keys does not take the heads from _tied_weights_keys: {table}"
    )


# -- Trainer -------------------------------------------------------------------------------------------
def test_trainer_methods_adapter_trainer_overrides(tmp_path):
    """``AdapterTrainer`` overrides ``_save``, ``_load_from_checkpoint``, ``_load_best_model`` and
    ``compute_loss`` and reads some Trainer attributes; ``AdaLoraCallback`` gets the model from the
    callback handler. ``current_gradient_accumulation_steps``, set while training, is covered by
    tests/test_trainer.py::test_fusion_regularisation_joins_the_loss_while_fusion_trains.
    (Numbers: tests/test_trainer.py.)"""
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer import TRAINING_ARGS_NAME
    from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState

    expected = {
        "_save": ["self", "output_dir", "state_dict"],
        "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
        "_load_best_model": ["self"],
        "compute_loss": ["self", "model", "inputs", "return_outputs", "num_items_in_batch"],
    }
    for name, names in expected.items():
        assert parameters(getattr(Trainer, name)) == names, changed(f"Trainer.{name} takes {parameters(getattr(Trainer, name))}")
    assert TRAINING_ARGS_NAME == "training_args.bin" and hasattr(Trainer, "loss_is_scaled_for_ga"), changed("Trainer attributes")
    model = patched("bert")
    model.add_adapter("a", config="seq_bn")
    model.train_adapter("a")
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = adapters.AdapterTrainer(model=model, args=args)
    for attribute in ("model_accepts_loss_kwargs", "compute_loss_func", "processing_class", "is_deepspeed_enabled",
                      "is_fsdp_enabled", "accelerator"):
        assert hasattr(trainer, attribute), changed(f"Trainer has no {attribute!r} after __init__")
    assert hasattr(trainer.args, "should_save"), changed("TrainingArguments.should_save")
    received = []

    class Recorder(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            received.append(model)

    handler = CallbackHandler([Recorder()], model, None, None, None)
    handler.on_optimizer_step(args, TrainerState(), TrainerControl())
    assert received == [model], changed("the callback handler no longer passes model= to on_optimizer_step")


# -- AdapterModel classes, static head conversion, decoder input shifts -----------------------------------------
def test_adapter_model_classes_find_their_transformers_bases():
    """Each AdapterModel class subclasses ``<Arch>PreTrainedModel`` (found in the MRO of
    ``MODEL_MAPPING[config_class]``) and builds that base model under ``base_model_prefix``."""
    from adapters.heads.adapter_model import ADAPTER_MODEL_TABLE, _pretrained_base_class

    for model_type, (name, config_name, _, _) in ADAPTER_MODEL_TABLE.items():
        config_class = getattr(transformers, config_name, None)
        assert config_class is not None, changed(f"transformers has no {config_name}")
        base_class = transformers.MODEL_MAPPING[config_class]
        pretrained = _pretrained_base_class(base_class)
        assert issubclass(base_class, pretrained) and pretrained.base_model_prefix, changed(
            f"{model_type}: {base_class.__name__} has no ...PreTrainedModel base with a base_model_prefix"
        )


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in ("clip_text_model", "clip_vision_model")])
def test_static_head_conversion_paths_resolve(arch):
    """``convert_to_adapter_model`` copies transformers' head modules by path
    (``classifier``, ``score``, ``lm_head``, ``cls.predictions.decoder``, ...)."""
    from adapters.heads.adapter_model import STATIC_HEAD_CONVERSIONS

    config_class = type(CONFIGS[arch]())
    for class_name, (_, modules, extra) in STATIC_HEAD_CONVERSIONS.items():
        head_class = getattr(transformers, class_name)
        if getattr(head_class, "config_class", None) is not config_class:
            continue
        model = head_class(CONFIGS[arch]())
        names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
        for path in list(modules.values()) + list(extra.values()):
            alternatives = path if isinstance(path, tuple) else (path,)
            assert any(_has_submodule(model, p) or p in names for p in alternatives), changed(
                f"{class_name} has no {path!r} (static head conversion)"
            )


def test_decoder_input_shift_functions():
    """Encoder-decoder AdapterModels shift labels right with the architecture's own functions."""
    import importlib

    from transformers.models.t5.modeling_t5 import T5PreTrainedModel

    assert parameters(T5PreTrainedModel._shift_right) == ["self", "input_ids"], changed("T5PreTrainedModel._shift_right")
    for module_name, names in (("bart", 3), ("mbart", 2), ("whisper", 3)):
        function = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}").shift_tokens_right
        assert len(parameters(function)) == names, changed(f"{module_name}'s shift_tokens_right takes {parameters(function)}")


# -- encoder-decoder specifics: T5's position bias, decoder positions, encoder signature ------------------------
def test_t5_position_bias_and_encoder_decoder_entries():
    """The attention wrapper computes the bias of positioned prefix keys with T5's ``compute_bias``;
    ``generate`` routes inputs to the encoder by its forward signature, which the patched encoder
    keeps; the BART-like decoder calls its position embedding with ``position_ids=``."""
    from transformers.models.t5.modeling_t5 import T5Attention

    assert parameters(T5Attention.compute_bias) == ["self", "query_length", "key_length", "device", "past_seen_tokens"], changed(
        f"T5Attention.compute_bias takes {parameters(T5Attention.compute_bias)}"
    )
    t5 = patched("t5")
    first = t5.encoder.block[0].layer[0].SelfAttention
    second = t5.encoder.block[1].layer[0].SelfAttention
    assert first.has_relative_attention_bias and not second.has_relative_attention_bias, changed(
        "T5's first layer no longer owns the relative position bias"
    )
    for model, arch in ((t5, "t5"), (patched("whisper"), "whisper")):
        encoder = model.get_encoder()
        original = encoder.__dict__["_adapters_original_class"]
        assert inspect.signature(encoder.forward) == inspect.signature(original.forward.__get__(encoder)), changed(
            f"{arch}: the patched encoder's forward signature differs from the original's"
        )
    bart = make_model("bart")
    seen = []
    handle = bart.decoder.embed_positions.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append("position_ids" in kwargs), with_kwargs=True
    )
    with torch.no_grad():
        bart(**make_inputs("bart"))
    handle.remove()
    assert seen == [True], changed("BART's decoder no longer passes position_ids= to embed_positions")


def test_clip_similarities_and_contrastive_loss():
    """Under ``Parallel``, CLIP's similarities are recomputed per branch as transformers computes them
    (``text_embeds @ image_embeds.T * logit_scale.exp()``) and the loss with its
    ``image_text_contrastive_loss``. (Numbers: tests/test_vision_heads.py::
    test_clip_adapter_model_parallel_similarities_per_branch.)"""
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss

    assert parameters(image_text_contrastive_loss) == ["similarity"], changed("image_text_contrastive_loss's signature")
    model = make_model("clip")
    with torch.no_grad():
        output = model(**make_inputs("clip"), return_loss=True)
    expected = output.text_embeds @ output.image_embeds.t() * model.logit_scale.exp()
    torch.testing.assert_close(output.logits_per_text, expected, msg=changed("CLIP's logits_per_text formula"))
    torch.testing.assert_close(output.logits_per_image, expected.t(), msg=changed("CLIP's logits_per_image"))
    torch.testing.assert_close(output.loss, image_text_contrastive_loss(expected), msg=changed("CLIP's loss"))


# -- small public-but-specific helpers -----------------------------------------------------------------------
def test_conv1d_layout_activations_and_output_classes():
    """GPT-2's ``Conv1D`` stores its weight ``(in, out)`` (LoRA and Llama-Adapter read it through a
    transpose); the heads use ``ACT2FN`` names and transformers' output classes with these fields."""
    from transformers.activations import ACT2FN
    from transformers.pytorch_utils import Conv1D
    from transformers import modeling_outputs

    layer = Conv1D(5, 3)
    x = torch.randn(2, 3)
    assert layer.weight.shape == (3, 5), changed(f"Conv1D(nf=5, nx=3).weight is {tuple(layer.weight.shape)}")
    torch.testing.assert_close(layer(x), x @ layer.weight + layer.bias, msg=changed("Conv1D no longer computes x W + b"))
    for name in ("gelu", "relu", "tanh", "swish", "silu", "gelu_new"):
        assert name in ACT2FN, changed(f"ACT2FN has no {name!r}")
    fields = {
        "SequenceClassifierOutput": ("loss", "logits", "hidden_states", "attentions"),
        "MultipleChoiceModelOutput": ("loss", "logits", "hidden_states", "attentions"),
        "TokenClassifierOutput": ("loss", "logits", "hidden_states", "attentions"),
        "QuestionAnsweringModelOutput": ("loss", "start_logits", "end_logits", "hidden_states", "attentions"),
        "ImageClassifierOutput": ("loss", "logits", "hidden_states", "attentions"),
        "MaskedLMOutput": ("loss", "logits", "hidden_states", "attentions"),
        "CausalLMOutputWithPast": ("loss", "logits", CACHE_NAME, "hidden_states", "attentions"),
        "Seq2SeqLMOutput": ("loss", "logits", CACHE_NAME, "encoder_last_hidden_state"),
    }
    for class_name, names in fields.items():
        declared = set(getattr(modeling_outputs, class_name).__dataclass_fields__)
        assert set(names) <= declared, changed(f"{class_name} lacks {sorted(set(names) - declared)}")


def test_transformers_logging_names_adapters_logging_follows():
    """``adapters.logging`` follows the effective level of the ``"transformers"`` logger (which
    ``transformers.logging.set_verbosity`` sets) and transformers' progress-bar switch."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    try:
        hf_logging.set_verbosity_error()
        assert logging.getLogger("transformers").getEffectiveLevel() == logging.ERROR, changed(
            "transformers' root logger is no longer named 'transformers'"
        )
    finally:
        hf_logging.set_verbosity(level)
    for name in ("get_verbosity", "is_progress_bar_enabled", "tqdm", "get_logger"):
        assert callable(getattr(hf_logging, name, None)), changed(f"transformers.utils.logging.{name} is gone")


def test_peft_integration_methods_adapters_shadows():
    """The patched model's ``add_adapter`` / ``load_adapter`` / ``delete_adapter`` / ``active_adapters``
    shadow transformers' PEFT integration; transformers calls those only once
    ``_hf_peft_config_loaded`` is set, which adapters never sets."""
    from adapters.model_mixin import ModelAdaptersMixin

    model = patched("llama")
    for name in ("add_adapter", "load_adapter", "delete_adapter", "active_adapters"):
        assert hasattr(transformers.PreTrainedModel, name), changed(f"PreTrainedModel.{name} is gone")
        assert inspect.getattr_static(model, name) is inspect.getattr_static(ModelAdaptersMixin, name)
    assert not getattr(model, "_hf_peft_config_loaded", False), changed("_hf_peft_config_loaded is set on a plain model")
