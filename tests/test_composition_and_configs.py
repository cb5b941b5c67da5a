"""Parsing and validation of setups; configs: ids, overrides, dict round trips, unions."""

from __future__ import annotations

import json

import pytest

import adapters
from adapters import (
    AdapterConfig,
    AdapterFusionConfig,
    Average,
    BatchSplit,
    BnConfig,
    ConfigUnion,
    Fuse,
    Parallel,
    ParBnConfig,
    SeqBnConfig,
    Split,
    Stack,
    parse_composition,
)
from adapters.composition import validate_composition


@pytest.mark.parametrize(
    "given,expected",
    [
        ("a", Stack("a")),
        ("a,b", Stack("a", "b")),
        (["a", "b"], Stack("a", "b")),
        (["a", ["b", "c"]], Stack("a", Fuse("b", "c"))),
        (Parallel("a", "b"), Parallel("a", "b")),
        (None, None),
    ],
)
def test_parse_composition(given, expected):
    assert parse_composition(given) == expected


def test_blocks_are_hashable_comparable_and_print_like_adapterhub():
    assert repr(Stack("c", Fuse("a", "b"))) == "Stack[c, Fuse[a, b]]"
    assert Split("a", "b", splits=3).splits == (3, 3)
    assert BatchSplit("a", "b", batch_sizes=[1, 2]) != BatchSplit("a", "b", batch_sizes=[2, 1])
    assert Average("a", "b", weights=[1, 3]).weights == (0.25, 0.75)
    assert Average("a", "b", weights=[1, 3], normalize_weights=False).weights == (1.0, 3.0)
    assert len({Stack("a", "b"), Stack("a", "b"), Stack("b", "a")}) == 2
    assert Fuse("a", Stack("b", "c")).name == "a,c" and Fuse("a", "b", name="f").name == "f"
    assert Stack("a", Parallel("b", Stack("c", "d"))).names_in_order() == ["a", "b", "c", "d"]
    assert Stack("a", Parallel("b", Stack("c", "d"))).flatten() == {"a", "b", "c", "d"}  # AdapterHub's set


@pytest.mark.parametrize(
    "setup,message",
    [
        (Fuse("a", Split("b", "c", splits=1)), "cannot nest Split"),
        (Average("a", Parallel("b", "c")), "must be the setup itself or a direct child"),
        (Stack(Parallel("a", "b"), Parallel("c", "d")), "2 Parallel blocks"),
    ],
)
def test_invalid_nestings(setup, message):
    with pytest.raises(ValueError, match=message):
        validate_composition(setup)


def test_allowed_nestings_include_everything_adapterhub_allows():
    for setup in [
        Stack("a", Fuse("b", "c"), Split("d", "e", splits=2), BatchSplit("f", "g", batch_sizes=1), Average("h", "i")),
        Split("a", Split("b", "c", splits=1), Stack("d"), BatchSplit("e", "f", batch_sizes=1), Average("g", "h"), splits=2),
        Parallel("a", Stack("b", "c"), BatchSplit("d", "e", batch_sizes=1), Average("f", "g"), Fuse("h", "i")),
        Average("a", Stack("b"), Split("c", "d", splits=1), BatchSplit("e", "f", batch_sizes=1)),
        Stack("x", Parallel("a", "b")),
    ]:
        validate_composition(setup)


def test_block_argument_errors():
    with pytest.raises(ValueError, match="2 children but 3 splits"):
        Split("a", "b", splits=[1, 2, 3])
    with pytest.raises(ValueError, match="at least one child"):
        Stack()
    with pytest.raises(ValueError, match="sum to 0"):
        Average("a", "b", weights=[1, -1])


@pytest.mark.parametrize("config_id", sorted(adapters.ADAPTER_CONFIG_MAP))
def test_every_config_id_round_trips_through_json(config_id):
    config = AdapterConfig.load(config_id)
    data = json.loads(json.dumps(config.to_dict()))
    assert AdapterConfig.load(data) == config
    # AdapterHub writes bottleneck configs without an architecture key, VeRA as a LoRA config, the
    # others with their own
    written = {"bottleneck": None, "vera": "lora"}.get(config.architecture, config.architecture)
    assert data.get("architecture") == written


def test_config_overrides_strings_and_files(tmp_path):
    assert AdapterConfig.load("seq_bn", reduction_factor=4).reduction_factor == 4
    config = AdapterConfig.load("par_bn[scaling=learned, reduction_factor=8]")
    assert isinstance(config, ParBnConfig) and config.scaling == "learned" and config.reduction_factor == 8
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"config": SeqBnConfig(non_linearity="gelu").to_dict()}))
    assert AdapterConfig.load(str(path)).non_linearity == "gelu"
    assert AdapterConfig.load({"reduction_factor": {"0": 2, "default": 8}}).reduction_factor_for(1) == 8
    with pytest.raises(dataclass_error()):
        SeqBnConfig().reduction_factor = 3  # frozen


def dataclass_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"reduction_factor": 0}, "reduction_factor must be a finite number >= 0.0625"),
        ({"init_weights": "zeros"}, "init_weights must be one of"),
        ({"scaling": "huge"}, "scaling must be"),
        ({"residual_before_ln": "sometimes"}, "residual_before_ln must be"),
        ({"non_linearity": "nope"}, "non_linearity must be the name of an activation"),
        ({"phm_layer": True, "hypercomplex_nonlinearity": "x"}, "hypercomplex_nonlinearity must be"),
    ],
)
def test_invalid_bottleneck_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BnConfig(**kwargs)


def test_reduction_factor_mapping_needs_a_default():
    with pytest.raises(adapters.AdapterConfigError, match="no entry for layer 3 and no 'default'"):
        BnConfig(reduction_factor={"0": 2}).reduction_factor_for(3)


def test_config_union_conflicts_and_round_trip():
    union = ConfigUnion(SeqBnConfig(mh_adapter=True, output_adapter=False), ParBnConfig(mh_adapter=False, output_adapter=True))
    assert AdapterConfig.load(union.to_dict()) == union
    with pytest.raises(ValueError, match="same positions"):
        ConfigUnion(SeqBnConfig(), ParBnConfig())
    with pytest.raises(TypeError, match="cannot contain another ConfigUnion"):
        ConfigUnion(union)


def test_union_adds_both_parts_to_a_model():
    from conftest import make_model

    model = make_model("bert")
    adapters.init(model)
    model.add_adapter("u", config=ConfigUnion(SeqBnConfig(mh_adapter=True, output_adapter=False), ParBnConfig()))
    positions = model.get_adapter("u")[0]
    assert type(positions["mh_adapter"]).__name__ == "Adapter"
    assert type(positions["output_adapter"]).__name__ == "ParallelAdapter"


def test_fusion_configs():
    # AdapterHub's defaults: "static" learns query and key but no value; "dynamic" adds a value
    # projection that starts at the identity, and its regularisation
    static = AdapterFusionConfig.load("static")
    assert static.key and static.query and not static.value and not static.regularization
    dynamic = AdapterFusionConfig.load("dynamic", temperature=True)
    assert dynamic.temperature and dynamic.query and dynamic.value and dynamic.value_initialized and dynamic.regularization
    assert AdapterFusionConfig.load(dynamic.to_dict()) == AdapterFusionConfig(**dynamic.to_dict())
    with pytest.raises(ValueError, match="Unknown fusion config"):
        AdapterFusionConfig.load("nope")


def test_union_config_strings_and_list_values_parse_as_adapterhub_writes_them():
    """AdapterHub's ``"a[...]|b[...]"`` is a union of both configs (not the first one alone), and
    bracket values may be lists."""
    from adapters import ConfigUnion, LoRAConfig, PrefixTuningConfig

    union = AdapterConfig.load("lora[use_gating=True, r=4]|prefix_tuning[prefix_length=10]")
    assert isinstance(union, ConfigUnion)
    lora, prefix = union.configs_by_architecture()
    assert isinstance(lora, LoRAConfig) and lora.use_gating and lora.r == 4
    assert isinstance(prefix, PrefixTuningConfig) and prefix.prefix_length == 10
    assert AdapterConfig.load("seq_bn[leave_out=[0, 1], reduction_factor=4]").leave_out == (0, 1)
    with pytest.raises(adapters.AdapterConfigError, match="empty part"):
        AdapterConfig.load("lora||seq_bn")
    with pytest.raises(adapters.AdapterConfigError, match="Unknown adapter config .lorra."):
        AdapterConfig.load("seq_bn|lorra")
