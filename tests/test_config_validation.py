"""Issue 20, cases 5, 6 and 9 (configs and block arguments): every value a user passes in a config
or a composition block is checked (types, no bool for numbers, finiteness, ranges with upper bounds,
names from a fixed set, regexes that compile), unknown keys in a user's config are refused with a
did-you-mean, and a checkpoint's JSON is read leniently (AdapterHub 1.3.0 / PEFT 0.21 keys at their
default accepted, an unimplemented setting refused, any other key warned about and dropped).

Each error-path test asserts the error type, that the message names the class and field, the bad
value and the valid form, and (for calls on a model) that the model is unchanged."""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import pytest
from conftest import assert_unchanged, model_state, patched

import adapters
from adapters import (
    AdapterConfig,
    AdapterFusionConfig,
    Average,
    BatchSplit,
    BnConfig,
    ConfigUnion,
    IA3Config,
    LoRAConfig,
    PrefixTuningConfig,
    SeqBnConfig,
    Split,
    Stack,
)
from adapters.errors import AdapterConfigError, AdapterLoadError, CompositionError
from adapters.peft_format import config_from_peft

NAN, INF = float("nan"), float("inf")


@pytest.fixture
def logged(adapters_log):
    """The warnings this library logs during the test (conftest's ``adapters_log``)."""
    return adapters_log


def assert_config_error(error, *parts):
    """The error is an AdapterConfigError (a ValueError and a TypeError) whose message holds every part."""
    assert isinstance(error.value, AdapterConfigError) and isinstance(error.value, ValueError)
    message = str(error.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# -- case 5 / 9: bad values in config constructors --------------------------------------------------------
# (config class, kwargs, what the message must name: class.field, the bad value, the valid form)
BAD_VALUES = [
    (LoRAConfig, dict(alpha=INF), ["LoRAConfig.alpha", "the float inf", "a finite number > 0"]),
    (LoRAConfig, dict(alpha=NAN), ["LoRAConfig.alpha", "the float nan", "a finite number > 0"]),
    (LoRAConfig, dict(alpha=-1), ["LoRAConfig.alpha", "the int -1", "a finite number > 0"]),
    (LoRAConfig, dict(alpha="8"), ["LoRAConfig.alpha", "the str '8'", "a finite number > 0"]),
    (LoRAConfig, dict(r=True), ["LoRAConfig.r", "the bool True", "a positive integer"]),
    (LoRAConfig, dict(r=2.0), ["LoRAConfig.r", "the float 2.0", "a positive integer"]),
    (LoRAConfig, dict(r=10**9), ["LoRAConfig.r", "the int 1000000000", "at most 65536"]),
    (LoRAConfig, dict(dropout=1.0), ["LoRAConfig.dropout", "the float 1.0", "< 1"]),
    (LoRAConfig, dict(dropout=NAN), ["LoRAConfig.dropout", "the float nan", ">= 0 and < 1"]),
    (LoRAConfig, dict(leave_out=["a"]), ["LoRAConfig.leave_out", "['a']", "the str 'a' is not a layer index", "a list of layer indices"]),
    (LoRAConfig, dict(leave_out=1), ["LoRAConfig.leave_out", "the int 1", "a list of layer indices", "leave_out=[1]"]),
    (LoRAConfig, dict(leave_out=[-1]), ["LoRAConfig.leave_out", "the int -1 is not a layer index"]),
    (LoRAConfig, dict(target_modules="(query"), ["LoRAConfig.target_modules", "'(query'", "a valid regular expression", "missing )"]),
    (LoRAConfig, dict(target_modules=["query", 3]), ["LoRAConfig.target_modules", "the int 3 is not a module name"]),
    (LoRAConfig, dict(rank_pattern={"[x": 2}), ["LoRAConfig.rank_pattern", "'[x'", "a valid regular expression", "unterminated"]),
    (LoRAConfig, dict(alpha_pattern={"(a": 2}), ["LoRAConfig.alpha_pattern", "'(a'", "a valid regular expression"]),
    (LoRAConfig, dict(rank_pattern={"q": 1.5}), ["LoRAConfig.rank_pattern['q']", "the float 1.5", "a positive integer"]),
    (LoRAConfig, dict(alpha_pattern={"q": NAN}), ["LoRAConfig.alpha_pattern['q']", "the float nan", "a finite number > 0"]),
    (LoRAConfig, dict(use_dora=1), ["LoRAConfig.use_dora", "the int 1", "True or False"]),
    (LoRAConfig, dict(attn_matrices="qv"), ["LoRAConfig.attn_matrices", "the str 'qv'", "a list of 'q', 'k', 'v' and 'o'"]),
    (LoRAConfig, dict(init_weights="lroa"), ["LoRAConfig.init_weights", "the str 'lroa'", "one of 'lora'", "Did you mean 'lora'?"]),
    (LoRAConfig, dict(init_weights_seed=1.5), ["LoRAConfig.init_weights_seed", "the float 1.5", "an int seed"]),
    (IA3Config, dict(dropout=-0.5), ["IA3Config.dropout", "the float -0.5", ">= 0"]),
    (SeqBnConfig, dict(reduction_factor=True), ["SeqBnConfig.reduction_factor", "the bool True", "a finite number >= 0.0625"]),
    (SeqBnConfig, dict(reduction_factor=1e-6), ["SeqBnConfig.reduction_factor", "the float 1e-06", ">= 0.0625", "16x the hidden size"]),
    (SeqBnConfig, dict(reduction_factor=NAN), ["SeqBnConfig.reduction_factor", "the float nan", "a finite number"]),
    (SeqBnConfig, dict(reduction_factor=INF), ["SeqBnConfig.reduction_factor", "the float inf", "a finite number"]),
    (SeqBnConfig, dict(reduction_factor="16"), ["SeqBnConfig.reduction_factor", "the str '16'", "a finite number"]),
    (SeqBnConfig, dict(reduction_factor={"defualt": 4}), ["SeqBnConfig.reduction_factor", "'defualt' is neither a layer index nor 'default'", "Did you mean 'default'?"]),
    (SeqBnConfig, dict(reduction_factor={"0": 2, "default": NAN}), ["SeqBnConfig.reduction_factor['default']", "the float nan"]),
    (SeqBnConfig, dict(non_linearity=3), ["SeqBnConfig.non_linearity", "the int 3", "the name of an activation", "gelu", "relu"]),
    (SeqBnConfig, dict(non_linearity="rleu"), ["SeqBnConfig.non_linearity", "the str 'rleu'", "Did you mean 'relu'?"]),
    (SeqBnConfig, dict(leave_out=["a"]), ["SeqBnConfig.leave_out", "the str 'a' is not a layer index"]),
    (SeqBnConfig, dict(leave_out=1), ["SeqBnConfig.leave_out", "the int 1", "leave_out=[1]"]),
    (SeqBnConfig, dict(scaling=NAN), ["SeqBnConfig.scaling", "the float nan", "a finite number"]),
    (SeqBnConfig, dict(scaling=INF), ["SeqBnConfig.scaling", "the float inf", "a finite number"]),
    (SeqBnConfig, dict(scaling=True), ["SeqBnConfig.scaling", "the bool True", "a finite number, 'learned' or 'channel'"]),
    (SeqBnConfig, dict(dropout=NAN), ["SeqBnConfig.dropout", "the float nan"]),
    (SeqBnConfig, dict(mh_adapter="yes"), ["SeqBnConfig.mh_adapter", "the str 'yes'", "True or False"]),
    (SeqBnConfig, dict(inv_adapter="nice", inv_adapter_reduction_factor=1e-9), ["SeqBnConfig.inv_adapter_reduction_factor", "1e-09"]),
    (SeqBnConfig, dict(phm_dim=True), ["SeqBnConfig.phm_dim", "the bool True", "a positive integer"]),
    (PrefixTuningConfig, dict(prefix_length=True), ["PrefixTuningConfig.prefix_length", "the bool True", "a positive integer"]),
    (PrefixTuningConfig, dict(prefix_length=10**7), ["PrefixTuningConfig.prefix_length", "at most 65536"]),
    (PrefixTuningConfig, dict(leave_out="0"), ["PrefixTuningConfig.leave_out", "the str '0'", "a list of layer indices"]),
    (PrefixTuningConfig, dict(non_linearity=None), ["PrefixTuningConfig.non_linearity", "the NoneType None", "ACT2FN"]),
    (adapters.LoHaConfig, dict(alpha=NAN), ["LoHaConfig.alpha", "the float nan", "a finite number > 0"]),
    (adapters.LoKrConfig, dict(r=True), ["LoKrConfig.r", "the bool True", "a positive integer"]),
    (adapters.OFTConfig, dict(eps=INF), ["OFTConfig.eps", "the float inf"]),
    (adapters.HRAConfig, dict(target_modules="a(b"), ["HRAConfig.target_modules", "a valid regular expression"]),
    (adapters.AdaLoRAConfig, dict(lora_alpha=NAN), ["AdaLoRAConfig.lora_alpha", "the float nan"]),
    (adapters.AdaLoRAConfig, dict(beta1=1.0), ["AdaLoRAConfig.beta1", "the float 1.0", "> 0 and < 1"]),
    (adapters.PromptTuningConfig, dict(prompt_length=2.5), ["PromptTuningConfig.prompt_length", "the float 2.5"]),
    (adapters.AdaptionPromptConfig, dict(adapter_len=True), ["AdaptionPromptConfig.adapter_len", "the bool True"]),
]


@pytest.mark.parametrize("cls,kwargs,parts", BAD_VALUES, ids=lambda v: repr(v)[:40] if not isinstance(v, list) else "")
def test_bad_values_are_refused_when_a_config_is_built(cls, kwargs, parts):
    with pytest.raises(AdapterConfigError) as error:
        cls(**kwargs)
    assert_config_error(error, *parts)


def test_bool_for_a_number_is_refused_even_where_python_takes_it():
    # True == 1 to Python, so these were LoRA rank 1 / reduction factor 1 before
    for build in (lambda: LoRAConfig(r=True), lambda: SeqBnConfig(reduction_factor=True), lambda: LoRAConfig(alpha=True)):
        with pytest.raises(AdapterConfigError, match="the bool True"):
            build()


def test_nan_alpha_is_refused_rather_than_scaling_one_unmerged_and_nan_merged():
    with pytest.raises(AdapterConfigError) as error:
        LoRAConfig(alpha=NAN)
    assert_config_error(error, "LoRAConfig.alpha", "nan", "a finite number > 0")


# -- the same values through add_adapter: an error and an unchanged model ---------------------------------
ADD_ADAPTER_CASES = [
    ({"architecture": "lora", "alpha": NAN}, ["LoRAConfig.alpha", "nan"]),
    ({"architecture": "lora", "alpha": INF}, ["LoRAConfig.alpha", "inf"]),
    ({"architecture": "lora", "alpha": "8"}, ["LoRAConfig.alpha", "the str '8'"]),
    ({"architecture": "lora", "r": True}, ["LoRAConfig.r", "the bool True"]),
    ({"architecture": "lora", "rank": 4}, ["unknown field 'rank' for LoRAConfig", "did you mean 'r'?"]),
    ({"architecture": "lora", "leave_out": 1}, ["LoRAConfig.leave_out", "the int 1"]),
    ({"architecture": "lora", "target_modules": "(q"}, ["LoRAConfig.target_modules", "a valid regular expression"]),
    ({"architecture": "lora", "vera_d": "big"}, ["VeraConfig.vera_d", "the str 'big'"]),  # AdapterHub's VeRA dict
    ({"reduction_factor": 1e-6}, ["BnConfig.reduction_factor", "1e-06"]),
    ({"reduction_factor": True}, ["BnConfig.reduction_factor", "the bool True"]),
    ({"reduction_factor": NAN}, ["BnConfig.reduction_factor", "nan"]),
    ({"reduction_factor": {"0": 2, "deflt": 8}}, ["BnConfig.reduction_factor", "'deflt'", "Did you mean 'default'?"]),
    ({"reduction_factr": 4}, ["unknown field 'reduction_factr' for BnConfig", "did you mean 'reduction_factor'?"]),
    ({"scaling": NAN, "is_parallel": True}, ["BnConfig.scaling", "nan"]),
    ({"non_linearity": 3}, ["BnConfig.non_linearity", "the int 3", "relu"]),
    ({"leave_out": ["a"]}, ["BnConfig.leave_out", "the str 'a' is not a layer index"]),
    ({"architecture": "lorra"}, ["Unknown adapter architecture 'lorra'", "Did you mean 'lora'?"]),
    ("lora[alpha=NaN]", ["LoRAConfig.alpha", "nan"]),
    ("seq_bn[reduction_factor=true]", ["SeqBnConfig.reduction_factor", "the bool True"]),
    ("seq_bn[non_linearity=3]", ["SeqBnConfig.non_linearity", "the int 3"]),
]


@pytest.mark.parametrize("config,parts", ADD_ADAPTER_CASES, ids=lambda v: repr(v)[:50] if not isinstance(v, list) else "")
def test_add_adapter_with_a_bad_config_raises_and_changes_nothing(config, parts):
    model = patched("bert")
    model.add_adapter("existing", config=LoRAConfig(), set_active=True)
    before = model_state(model)
    with pytest.raises(AdapterConfigError) as error:
        model.add_adapter("new", config=config)
    assert_config_error(error, *parts)
    assert_unchanged(model, before)


# -- case 6: unknown keys in a config the user passes: refused, with a did-you-mean ------------------------
def test_unknown_key_in_a_user_dict_is_refused_with_did_you_mean():
    with pytest.raises(AdapterConfigError) as error:
        AdapterConfig.load({"architecture": "lora", "rank": 4})
    assert_config_error(error, "unknown field 'rank' for LoRAConfig; did you mean 'r'?", "Valid fields:", "alpha")
    with pytest.raises(AdapterConfigError, match="unknown field 'lora_alpha' for LoRAConfig; did you mean 'alpha'"):
        AdapterConfig.from_dict({"architecture": "lora", "lora_alpha": 16})


def test_unknown_keyword_arguments_overrides_and_replace_are_refused_with_did_you_mean():
    with pytest.raises(AdapterConfigError, match="unknown field 'rank' for LoRAConfig; did you mean 'r'"):
        LoRAConfig(rank=4)
    with pytest.raises(AdapterConfigError, match="unknown field 'reduction_factr' for SeqBnConfig; did you mean 'reduction_factor'"):
        AdapterConfig.load("seq_bn", reduction_factr=4)
    with pytest.raises(AdapterConfigError, match="unknown field 'rnk' for LoRAConfig"):
        AdapterConfig.load("lora[rnk=4]")
    with pytest.raises(AdapterConfigError, match="unknown field 'alph' for LoRAConfig; did you mean 'alpha'"):
        LoRAConfig().replace(alph=2)
    with pytest.raises(AdapterConfigError, match="unknown field 'prefix_len' for MAMConfig.*did you mean 'prefix_length'"):
        AdapterConfig.load("mam", prefix_len=4)  # a union: a key no part has
    with pytest.raises(AdapterConfigError, match="unknown field 'keys' for AdapterFusionConfig; did you mean 'key'"):
        AdapterFusionConfig.load({"keys": True})
    with pytest.raises(AdapterConfigError, match="unknown field 'loftq_bit' for LoftQConfig; did you mean 'loftq_bits'"):
        LoRAConfig(init_weights="loftq", loftq_config={"loftq_bit": 4})


def test_unknown_keys_in_a_reduction_factor_dict_are_refused():
    with pytest.raises(AdapterConfigError) as error:
        SeqBnConfig(reduction_factor={"0": 2, "layer1": 4, "default": 16})
    assert_config_error(error, "SeqBnConfig.reduction_factor", "'layer1' is neither a layer index nor 'default'", "e.g. {'0': 4")
    # layer indices may be given as ints; they are stored as the strings AdapterHub writes
    config = SeqBnConfig(reduction_factor={1: 4, "default": 16})
    assert config.reduction_factor == {"1": 4, "default": 16} and config.reduction_factor_for(1) == 4
    assert AdapterConfig.load(json.loads(json.dumps(config.to_dict()))) == config


# -- case 6: a checkpoint's JSON is read leniently --------------------------------------------------------
def test_checkpoint_accepts_adapterhub_keys_at_their_default(logged):
    data = {"config": {**LoRAConfig().to_dict(), "vera_d": None, "vera_b": None}, "version": "adapters.1.3.0", "name": "a"}
    assert AdapterConfig.from_checkpoint_dict(data, file="a/adapter_config.json") == LoRAConfig()
    assert not logged.records  # known keys at their default: nothing to warn about


def test_checkpoint_with_adapterhub_vera_fields_set_reads_as_vera_or_is_refused_without_a_seed():
    ah_lora = {key: value for key, value in LoRAConfig().to_dict().items() if key not in ("target_modules", "bias")}
    data = {"config": {**ah_lora, "vera_d": 0.1, "vera_b": 0.0, "init_weights": "vera", "init_weights_seed": 3}}
    config = AdapterConfig.from_checkpoint_dict(data, file="a/adapter_config.json")
    assert type(config).__name__ == "VeraConfig" and config.init_weights_seed == 3 and not config.save_projection
    data["config"]["init_weights_seed"] = None  # AdapterHub drew its projections unseeded and did not save them
    with pytest.raises(AdapterConfigError) as error:
        AdapterConfig.from_checkpoint_dict(data, file="a/adapter_config.json")
    assert_config_error(error, "a/adapter_config.json", "init_weights_seed=None", "cannot be rebuilt")


def test_checkpoint_warns_about_other_unknown_keys_and_loads(logged):
    data = {"config": {**SeqBnConfig().to_dict(), "from_the_future": 3, "reduction_factr": 2}}
    config = AdapterConfig.from_checkpoint_dict(data, file="a/adapter_config.json")
    assert config == SeqBnConfig()
    text = logged.text
    assert "a/adapter_config.json" in text and "'from_the_future'" in text and "'reduction_factr'" in text
    assert "did you mean 'reduction_factor'" in text


def test_checkpoint_values_are_still_checked():
    data = {"config": {**LoRAConfig().to_dict(), "alpha": NAN}}
    with pytest.raises(AdapterConfigError) as error:
        AdapterConfig.from_checkpoint_dict(data, file="a/adapter_config.json")
    assert_config_error(error, "a/adapter_config.json", "LoRAConfig.alpha", "nan")


@pytest.mark.parametrize("config", ["/etc/passwd", "../other/adapter_config.json", 3, None, ["seq_bn"]])
def test_checkpoint_config_that_is_not_a_dict_is_refused_never_read_as_a_path(config):
    with pytest.raises(AdapterConfigError) as error:
        AdapterConfig.from_checkpoint_dict({"config": config}, file="a/adapter_config.json")
    assert_config_error(error, "a/adapter_config.json", "'config' must be a JSON object")


def test_checkpoint_config_may_be_a_config_id():
    assert AdapterConfig.from_checkpoint_dict({"config": "seq_bn"}) == SeqBnConfig()
    assert AdapterConfig.from_checkpoint_dict({"config": "lora[r=4]"}) == LoRAConfig(r=4)


@pytest.mark.parametrize("data", [[1, 2], "seq_bn.json", None])
def test_checkpoint_file_that_is_not_an_object_is_refused(data):
    with pytest.raises(AdapterConfigError, match="a/adapter_config.json must hold a JSON object"):
        AdapterConfig.from_checkpoint_dict(data, file="a/adapter_config.json")


def test_a_config_file_naming_itself_is_refused_without_recursion(tmp_path):
    path = tmp_path / "self.json"
    path.write_text(json.dumps(str(path)))
    with pytest.raises(AdapterConfigError, match="must hold a JSON object, not the str"):
        AdapterConfig.load(str(path))


def test_adapterhub_legacy_invertible_adapter_key_is_read():
    data = {"invertible_adapter": {"block_type": "nice", "reduction_factor": 2}, "non_linearity": "relu"}
    config = AdapterConfig.from_checkpoint_dict({"config": data})
    assert config.inv_adapter == "nice" and config.inv_adapter_reduction_factor == 2
    assert AdapterConfig.from_dict({"invertible_adapter": None}) == BnConfig()
    with pytest.raises(AdapterConfigError, match="contradicts inv_adapter='glow'"):
        AdapterConfig.from_dict({"invertible_adapter": {"block_type": "nice", "reduction_factor": 2}, "inv_adapter": "glow"})


def test_fusion_checkpoint_is_read_leniently(logged):
    data = {"config": {**AdapterFusionConfig().to_dict(), "new_knob": 1}, "adapter_names": ["a", "b"]}
    assert AdapterFusionConfig.from_checkpoint_dict(data, file="f/adapter_fusion_config.json") == AdapterFusionConfig()
    assert "f/adapter_fusion_config.json" in logged.text and "'new_knob'" in logged.text
    with pytest.raises(AdapterConfigError, match="f/adapter_fusion_config.json: AdapterFusionConfig.dropout_prob"):
        AdapterFusionConfig.from_checkpoint_dict({"config": {"dropout_prob": NAN}}, file="f/adapter_fusion_config.json")
    with pytest.raises(AdapterConfigError, match="'config' must be a JSON object"):
        AdapterFusionConfig.from_checkpoint_dict({"config": "/etc/passwd"}, file="f/adapter_fusion_config.json")


def _fixture_files(kind: str, name: str) -> list[str]:
    from fixture_utils import ADAPTERHUB, PEFT

    root = ADAPTERHUB if kind == "adapterhub" else PEFT
    if not os.path.isdir(root):
        pytest.skip("../shared/fixtures is not present")
    return sorted(glob.glob(os.path.join(root, "**", name), recursive=True))


def test_every_adapterhub_fixture_config_reads_without_warnings(logged):
    """Real AdapterHub 1.3.0 checkpoints (LoRA's carry vera_d / vera_b at None) read as checkpoints
    and as user dicts alike, with no warning."""
    files = _fixture_files("adapterhub", "adapter_config.json")
    assert len(files) > 50
    for path in files:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        config = AdapterConfig.from_checkpoint_dict(meta, file=path)
        assert AdapterConfig.load(meta["config"]) == config
    for path in _fixture_files("adapterhub", "adapter_fusion_config.json"):
        with open(path, encoding="utf-8") as f:
            AdapterFusionConfig.from_checkpoint_dict(json.load(f), file=path)
    assert not logged.records, logged.text


def test_every_peft_fixture_config_reads_without_warnings(logged):
    files = _fixture_files("peft", "adapter_config.json")
    assert len(files) > 20
    for path in files:
        with open(path, encoding="utf-8") as f:
            config_from_peft(json.load(f), file=path)
    assert not logged.records, logged.text


def _save_lora(tmp_path, fmt: str):
    model = patched("bert")
    model.add_adapter("a", config=LoRAConfig(target_modules=["query", "value"]) if fmt == "peft" else LoRAConfig())
    model.save_adapter(str(tmp_path / "a"), "a", format=fmt)
    return tmp_path / "a" / "adapter_config.json"


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # writes NaN as NaN, as Python's json (and PEFT) do


def test_peft_checkpoint_with_nan_lora_alpha_is_refused_naming_the_file(tmp_path):
    path = _save_lora(tmp_path, "peft")
    _edit(path, lambda d: d.update(lora_alpha=NAN))
    assert "NaN" in path.read_text()
    model = patched("bert")
    before = model_state(model)
    with pytest.raises(AdapterLoadError) as error:
        model.load_adapter(str(path.parent))
    message = str(error.value)
    assert str(path) in message and "lora_alpha" in message and "nan" in message and "a finite number > 0" in message
    assert_unchanged(model, before)


def test_peft_config_with_nan_lora_alpha_is_refused():
    meta = {"peft_type": "LORA", "r": 8, "lora_alpha": NAN, "target_modules": ["query"]}
    with pytest.raises(AdapterConfigError) as error:
        config_from_peft(meta, file="p/adapter_config.json")
    assert_config_error(error, "p/adapter_config.json", "PEFT field 'lora_alpha'", "LoRAConfig.alpha", "the float nan", "a finite number > 0")


@pytest.mark.parametrize(
    "field,value",
    [("layer_replication", [[0, 1]]), ("lora_bias", True), ("trainable_token_indices", [1, 2]), ("use_qalora", True)],
)
def test_peft_checkpoint_refuses_a_set_field_this_version_lacks(tmp_path, field, value):
    path = _save_lora(tmp_path, "peft")
    _edit(path, lambda d: d.update({field: value}))
    model = patched("bert")
    before = model_state(model)
    with pytest.raises(AdapterLoadError) as error:
        model.load_adapter(str(path.parent))
    assert str(path) in str(error.value) and f"PEFT field {field}=" in str(error.value) and "only PEFT's default" in str(error.value)
    assert_unchanged(model, before)


def test_peft_checkpoint_accepts_peft_fields_at_their_default_and_warns_about_unknown_ones(tmp_path, logged):
    path = _save_lora(tmp_path, "peft")
    _edit(path, lambda d: d.update(layer_replication=None, lora_bias=False, megatron_core="megatron.core", a_newer_peft_field=1))
    model = patched("bert")
    name = model.load_adapter(str(path.parent))
    assert model.adapters_config.adapters[name].alpha == 8
    assert "'a_newer_peft_field'" in logged.text and "layer_replication" not in logged.text


def test_peft_prefix_sizes_are_checked():
    meta = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 2.5, "num_layers": 2, "num_attention_heads": 2, "token_dim": 32}
    with pytest.raises(AdapterConfigError, match="PrefixTuningConfig.prefix_length must be a positive integer.*2.5"):
        config_from_peft(meta)
    with pytest.raises(AdapterConfigError, match="num_layers must be a positive integer.*the str '2'"):
        config_from_peft({**meta, "num_virtual_tokens": 2, "num_layers": "2"})


def test_adapterhub_checkpoint_with_an_unknown_key_loads_with_a_warning(tmp_path, logged):
    path = _save_lora(tmp_path, "adapterhub")
    _edit(path, lambda d: d["config"].update(from_a_newer_version=True))
    model = patched("bert")
    name = model.load_adapter(str(path.parent))
    assert model.adapters_config.adapters[name] == LoRAConfig()
    assert str(path) in logged.text and "'from_a_newer_version'" in logged.text


def test_adapterhub_vera_checkpoint_without_a_seed_is_refused(tmp_path):
    path = _save_lora(tmp_path, "adapterhub")
    _edit(path, lambda d: [d["config"].pop(k) for k in ("target_modules", "bias")] and d["config"].update(vera_d=0.1, vera_b=0.0))
    model = patched("bert")
    before = model_state(model)
    with pytest.raises(AdapterLoadError) as error:
        model.load_adapter(str(path.parent))
    assert str(path) in str(error.value) and "init_weights_seed=None" in str(error.value)
    assert_unchanged(model, before)


# -- composition blocks: arguments ------------------------------------------------------------------------
def test_fractional_split_sizes_are_refused_not_truncated():
    with pytest.raises(AdapterConfigError) as error:
        Split("a", "b", splits=[1.7, 2.2])
    assert_config_error(error, "Split.splits", "[1.7, 2.2]", "the float 1.7 is not a size", "an int >= 0", "never rounded")
    with pytest.raises(AdapterConfigError, match="BatchSplit.batch_sizes .*the float 2.0 is not a size"):
        BatchSplit("a", "b", batch_sizes=[2.0, 2])


@pytest.mark.parametrize("splits", ["x", None, True, [True, 1], [-1, 2], {1, 2}])
def test_bad_split_sizes_are_refused(splits):
    with pytest.raises(AdapterConfigError) as error:
        Split("a", "b", splits=splits)
    assert_config_error(error, "Split.splits", "an int >= 0 or a list of 2 of them")


@pytest.mark.parametrize("weights,bad", [([NAN, 1.0], "the float nan"), ([INF, 1.0], "the float inf"), ([1.0, -INF], "the float -inf"),
                                         ("x", "the str 'x'"), (["x", 1], "the str 'x'"), ([True, 1], "the bool True"), (0.5, "the float 0.5")])
def test_bad_average_weights_are_refused(weights, bad):
    with pytest.raises(AdapterConfigError) as error:
        Average("a", "b", weights=weights)
    assert_config_error(error, "Average.weights", bad, "a list of 2 finite numbers")


def test_average_weights_whose_sum_is_not_finite_or_zero_are_refused():
    with pytest.raises(AdapterConfigError, match="sum is inf"):
        Average("a", "b", weights=[1e308, 1e308])
    with pytest.raises(AdapterConfigError, match="sum to 0.*normalize_weights=False"):
        Average("a", "b", weights=[1, -1])
    with pytest.raises(AdapterConfigError, match="Average.normalize_weights must be True or False"):
        Average("a", "b", normalize_weights="no")
    assert Average("a", "b", weights=[1, -1], normalize_weights=False).weights == (1.0, -1.0)


@pytest.mark.parametrize("child", [3, 2.5, {"a": 1}, object()])
def test_block_children_must_be_names_or_blocks(child):
    with pytest.raises(CompositionError) as error:
        Stack("a", child)
    assert "Stack: child 2 is the" in str(error.value) and "adapter names (str) or blocks" in str(error.value)


def test_setting_a_bad_block_leaves_the_model_unchanged():
    model = patched("bert")
    model.add_adapter("a", config=LoRAConfig())
    model.add_adapter("b", config=LoRAConfig())
    model.set_active_adapters(Stack("a", "b"))
    before = model_state(model)
    with pytest.raises(AdapterConfigError):
        model.set_active_adapters(Average("a", "b", weights=[NAN, 1]))
    with pytest.raises(AdapterConfigError):
        model.set_active_adapters(Split("a", "b", splits=[1.7, 2.2]))
    assert_unchanged(model, before)


# -- valid configs still build and round-trip -------------------------------------------------------------
@pytest.mark.parametrize("config_id", sorted(adapters.ADAPTER_CONFIG_MAP))
def test_every_registered_config_builds_and_round_trips(config_id, logged):
    config = AdapterConfig.load(config_id)
    data = json.loads(json.dumps(config.to_dict()))
    assert AdapterConfig.from_dict(data) == config
    assert AdapterConfig.load(data) == config
    assert AdapterConfig.from_checkpoint_dict({"config": data, "name": "x", "version": "adapters.1.3.0"}) == config
    assert config.replace() == config
    for part in config.configs_by_architecture():  # every part rebuilds from its own fields
        assert type(part)(**{f.name: getattr(part, f.name) for f in dataclasses.fields(part)}) == part
    assert not logged.records


def test_adapterhub_compatible_forms_keep_working():
    assert SeqBnConfig(reduction_factor=0.5).reduction_factor == 0.5  # wider than the hidden size: allowed
    assert SeqBnConfig(reduction_factor=10**6).reduction_factor == 10**6  # a bottleneck of 0 is refused by the model
    assert LoRAConfig(leave_out=(0, 1)).leave_out == (0, 1) and LoRAConfig(leave_out=range(2)).leave_out == (0, 1)
    assert LoRAConfig(layers_to_transform=1).layers_to_transform == (1,)  # PEFT's single int
    assert LoRAConfig(modules_to_save="classifier").modules_to_save == ("classifier",)
    assert ConfigUnion(SeqBnConfig(mh_adapter=True, output_adapter=False), adapters.ParBnConfig()).configs[1].scaling == 4.0
    assert AdapterConfig.load("pfeiffer") == SeqBnConfig() and AdapterConfig.load("houlsby") == adapters.DoubleSeqBnConfig()
    assert AdapterConfig.load("seq_bn", non_linearity="GELU").non_linearity == "GELU"  # any case, as AdapterHub


@pytest.mark.parametrize(
    "config", [LoRAConfig(leave_out=[0, 1]), IA3Config(leave_out=[0, 1]), SeqBnConfig(leave_out=[0, 1]), PrefixTuningConfig(leave_out=[0, 1])],
    ids=["lora", "ia3", "seq_bn", "prefix"],
)
def test_leave_out_of_every_layer_is_refused(config):
    """An adapter left out of every layer would change nothing (the LoRA family and prefixes used to
    be accepted, LoRA with 0 parameters)."""
    model = patched("bert")
    before = model_state(model)
    with pytest.raises(AdapterConfigError, match=r"leave_out=\[0, 1\] leaves out every layer of this 2-layer model"):
        model.add_adapter("x", config=config)
    assert_unchanged(model, before)


def test_a_reduction_factor_beyond_the_hidden_size_gives_a_one_wide_bottleneck_with_a_warning(logged):
    """AdapterHub's rule (its checkpoints rely on it: AdapterPlus's default factor 96 on a narrower
    model): the bottleneck is 1 wide, and the warning names the factor and the largest that fits."""
    model = patched("bert")
    model.add_adapter("tiny", config=SeqBnConfig(reduction_factor=64))
    widths = {m.adapter_up.in_features for m in model.modules() if hasattr(m, "adapter_up")}
    assert widths == {1}
    assert "reduction_factor=64 leaves no bottleneck for hidden size 32" in logged.text
    assert "at most 32" in logged.text


@pytest.mark.parametrize("written,read", [("gelu_orig", "gelu"), ("gelu", "gelu_new"), ("relu", "relu")])
def test_unversioned_checkpoints_keep_their_legacy_activation_names(written, read):
    """adapter-transformers 2 wrote no "version" and named GELU differently; AdapterHub renames on
    load ("gelu" was today's "gelu_new", "gelu_orig" today's "gelu"), and so does this library.
    A versioned file is read as written."""
    data = {"config": {**SeqBnConfig().to_dict(), "non_linearity": written}, "name": "a"}
    assert AdapterConfig.from_checkpoint_dict(data, file="a/adapter_config.json").non_linearity == read
    if written != "gelu_orig":
        versioned = {**data, "version": "adapters.1.3.0"}
        assert AdapterConfig.from_checkpoint_dict(versioned, file="a/adapter_config.json").non_linearity == written
