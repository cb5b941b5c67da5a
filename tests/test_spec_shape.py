"""The shape of architecture specs: one :class:`~adapters.hooks.spec.StackSpec` per layer stack inside
``ArchitectureSpec(stacks=...)``, and the compatibility path for specs written in the older keywords
(the first stack's fields on the spec itself, the second in ``second_stack``)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
from legacy_spec_keywords import LEGACY_KEYWORDS, OLD_STACK_ROLES

import adapters
import adapters.models
from adapters import ArchitectureSpec, ResidualHook, StackSpec
from adapters.errors import AdapterConfigError
from adapters.hooks.spec import _REGISTRY, DecoderSpec, LayerStack
from adapters.models.bert import BERT
from adapters.models.clip import CLIP
from adapters.models.llama import LLAMA
from adapters.models.t5 import T5

BUILT_IN = {spec.name: spec for spec in _REGISTRY.values()}
# what ArchitectureSpec took as keywords for the first stack, and the StackSpec field each fills
FIRST_STACK_KEYWORDS = {
    "layers": "layers", "residual_hooks": "residual_hooks", "attention": "attention", "query": "query", "key": "key",
    "value": "value", "attn_output": "attn_output", "ffn_in": "ffn_in", "ffn_out": "ffn_out",
    "intermediate_lora": "intermediate_lora", "output_lora": "output_lora", "first_role": "role",
    "sub_config": "sub_config", "attention_location": "attention_location",
}


def _hook(location: str, sublayer: str) -> ResidualHook:
    return ResidualHook(location, host=f"{location}s", create_host=True, residual_source="norm", sublayer=sublayer)


def _stack(**fields) -> StackSpec:
    values = dict(
        layers="layers", residual_hooks=(_hook("mh_adapter", "attn"),), attention="attn", query="attn.q",
        key="attn.k", value="attn.v", attn_output="attn.o", ffn_in=("mlp.up",), ffn_out="mlp.down",
    )
    return StackSpec(**{**values, **fields})


# specs added after specs had ``stacks`` (issue 23): they were never written in the older keywords
ADDED_WITH_STACKS = {"beit", "bert-generation", "deberta", "encoder-decoder", "phi", "plbart", "xmod"}


def test_every_built_in_spec_has_its_legacy_description():
    assert set(LEGACY_KEYWORDS) == set(BUILT_IN) - ADDED_WITH_STACKS == set(OLD_STACK_ROLES)


@pytest.mark.parametrize("name", sorted(LEGACY_KEYWORDS))
def test_old_keywords_build_the_same_spec_as_the_new_shape(name):
    """Field by field: the model-level fields, then every field of every stack (roles included)."""
    old, new = ArchitectureSpec(**LEGACY_KEYWORDS[name]), BUILT_IN[name]
    for field in dataclasses.fields(ArchitectureSpec):
        if field.name != "stacks":
            assert getattr(old, field.name) == getattr(new, field.name), field.name
    assert len(old.stacks) == len(new.stacks)
    for old_stack, new_stack in zip(old.stacks, new.stacks):
        assert type(new_stack) is StackSpec
        for field in dataclasses.fields(StackSpec):
            assert getattr(old_stack, field.name) == getattr(new_stack, field.name), (new_stack.role, field.name)
    derived = [(s.role, s.attention_location, s.sub_config) for s in new.stacks]
    assert derived == [tuple(entry) for entry in OLD_STACK_ROLES[name]]
    assert old == new and hash(old) == hash(new)


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_the_old_names_read_the_first_and_second_stack(name):
    spec = BUILT_IN[name]
    for keyword, field in FIRST_STACK_KEYWORDS.items():
        assert getattr(spec, keyword) == getattr(spec.stacks[0], field)
    assert spec.stacks() is spec.stacks  # the method spelling of older code
    assert spec.second_stack == (spec.stacks[1] if len(spec.stacks) > 1 else None)
    assert spec.is_multi_stack == (len(spec.stacks) > 1)
    assert spec.is_encoder_decoder == (spec.decoder is not None) == (spec.encoder is not None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.layers = "elsewhere"


def test_roles_and_prefix_locations_are_filled_in_from_the_place_of_the_stack():
    single = ArchitectureSpec(name="one", model_types=("one",), stacks=(_stack(),), embeddings="embed", pre_ln=True)
    assert [(s.role, s.attention_location) for s in single.stacks] == [("layers", "self")]
    pair = ArchitectureSpec(  # no roles given: the stack after the first is a decoder, the first its encoder
        name="pair", model_types=("pair",), embeddings="e", pre_ln=True,
        stacks=(_stack(layers="encoder.layers"), _stack(layers="decoder.layers")),
    )
    assert [(s.role, s.attention_location) for s in pair.stacks] == [("encoder", "encoder"), ("decoder", "self")]
    assert pair.decoder is pair.stacks[1] and pair.is_encoder_decoder
    towers = ArchitectureSpec(
        name="towers", model_types=("towers",), embeddings="e", pre_ln=True,
        stacks=(_stack(layers="a.layers"), _stack(layers="b.layers", role="vision")),
    )
    assert [(s.role, s.attention_location) for s in towers.stacks] == [("layers", "self"), ("vision", "self")]
    assert towers.decoder is None and not towers.is_encoder_decoder and towers.is_multi_stack


def test_old_keywords_beside_stacks_change_the_first_stack_as_dataclasses_replace_did():
    fused = dict(query="self_attn.qkv", key="self_attn.qkv", value="self_attn.qkv")
    phi = dataclasses.replace(LLAMA, name="mine", **fused)
    assert phi.stacks[0] == dataclasses.replace(LLAMA.stacks[0], **fused)
    assert (phi.name, phi.embeddings, phi.pre_ln) == ("mine", LLAMA.embeddings, LLAMA.pre_ln)
    assert dataclasses.replace(LLAMA, name="mine") == dataclasses.replace(LLAMA, name="mine", stacks=LLAMA.stacks)

    other_decoder = dataclasses.replace(T5.stacks[1], layers="other.block")
    replaced = dataclasses.replace(T5, second_stack=other_decoder)
    assert replaced.stacks[0] == T5.stacks[0] and replaced.stacks[1] == other_decoder
    assert len(dataclasses.replace(CLIP, second_stack=None).stacks) == 1


def test_decoder_is_a_keyword_for_the_second_stack():
    keywords = {k: v for k, v in LEGACY_KEYWORDS["t5"].items() if k != "second_stack"}
    assert ArchitectureSpec(**keywords, decoder=LEGACY_KEYWORDS["t5"]["second_stack"]) == T5


@pytest.mark.parametrize(
    "keywords, message",
    [
        (dict(stacks=(_stack(),), ffn_inn=("x",)), "unknown keyword(s) ffn_inn"),
        (dict(stacks=(_stack(),), second_stack=_stack(), decoder=_stack()), "give one of them"),
        (dict(layers="l", attention="a"), "missing: residual_hooks, query, key, value, attn_output, ffn_in, ffn_out"),
        (dict(stacks=()), "non-empty tuple of StackSpec"),
        (dict(stacks=("layers",)), "non-empty tuple of StackSpec"),
        (dict(stacks=(_stack(),), second_stack="decoder.layers"), "second_stack must be a StackSpec"),
        (dict(stacks=(_stack(role="text"), _stack(role="text"))), "its own role"),
        (dict(stacks=(_stack(),), fused_qkv_layout="rows"), "fused_qkv_layout must be"),
    ],
)
def test_bad_specs_are_refused_with_the_keyword_and_the_valid_form(keywords, message):
    with pytest.raises(AdapterConfigError, match="ArchitectureSpec bad") as error:
        ArchitectureSpec(name="bad", model_types=("bad",), embeddings="e", pre_ln=True, **keywords)
    assert message in str(error.value)


def test_specs_copy_and_pickle_with_their_stacks():
    for spec in (BERT, T5, CLIP):
        for again in (copy.deepcopy(spec), pickle.loads(pickle.dumps(spec))):
            assert again == spec and again.stacks() == spec.stacks


def test_layer_stack_is_the_stack_spec():
    assert LayerStack is StackSpec and DecoderSpec is StackSpec
    assert T5.stacks[1].attention_matrices()["q"] == ["layer.0.SelfAttention.q", "layer.1.EncDecAttention.q"]
    assert BERT.stacks[0].attention_matrices()["o"] == ["attention.output.dense"]


def test_supported_model_types_is_the_properly_named_function():
    assert adapters.supported_model_types() == adapters.SUPPORTED_MODEL_TYPES() == sorted(_REGISTRY)
    assert adapters.models.supported_model_types is adapters.supported_model_types
    assert {"bert", "llama", "t5", "clip"} <= set(adapters.supported_model_types())
