"""Config classes can be subclassed and extended as AdapterHub's are (issue 23).

AdapterHub 1.3.0's configs are ``@dataclass(eq=False)`` classes that a set-once ``__setattr__``
makes immutable, and users extend them so::

    @dataclass(eq=False)
    class MyBnConfig(BnConfig):
        my_field: int = 3

Ours are plain dataclasses to the ``dataclasses`` module, sealed by
:class:`adapters.configuration.validation.Immutable` once built, so that form works, and so does
a frozen subclass (``@dataclass(frozen=True, eq=False)``), which Python would refuse over
AdapterHub's classes ("cannot inherit frozen dataclass from a non-frozen one").

AdapterHub itself, run on the same user code (/work/venvs/ah, scratch script, BERT hidden 32):
``save_adapter`` writes ``my_field`` into adapter_config.json for a bare subclass of BnConfig,
LoRAConfig and PrefixTuningConfig, key for key the dict written here (the other keys differ only
where the classes do: our extra LoRA/PEFT fields, ``shift_positions``, ``version``); inside a
ConfigUnion AdapterHub loses the part's class and ``my_field`` at ``add_adapter`` (it rebuilds
the parts through its fixed architecture->class map), here both are kept. ``load_adapter``
reads the file back as the base class without ``my_field`` in AdapterHub, silently, also when an
instance of the subclass is in its ``ADAPTER_CONFIG_MAP``; here the field is dropped with a
warning, and a subclass registered with ``register_config`` reads it back.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from dataclasses import dataclass

import pytest
import torch

import adapters
from adapters import AdapterConfig, AdapterFusionConfig, BnConfig, ConfigUnion, LoRAConfig, PrefixTuningConfig
from adapters.configuration.base import ADAPTER_CONFIG_MAP, register_config
from adapters.errors import AdapterConfigError

from conftest import make_inputs, patched, perturb_adapter, run


# -- user code, as AdapterHub's docs write it ---------------------------------------------------
@dataclass(eq=False)
class MyBnConfig(BnConfig):
    my_field: int = 3


@dataclass(eq=False)
class MyLoRAConfig(LoRAConfig):
    my_field: int = 3


@dataclass(eq=False)
class MyPrefixTuningConfig(PrefixTuningConfig):
    my_field: int = 3


# -- the same as frozen dataclasses ----------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FrozenBnConfig(BnConfig):
    my_field: int = 3


@dataclass(frozen=True, eq=False)
class FrozenLoRAConfig(LoRAConfig):
    my_field: int = 3


@dataclass(frozen=True, eq=False)
class FrozenPrefixTuningConfig(PrefixTuningConfig):
    my_field: int = 3


# parent config, and the subclasses extending it (each built with the parent's values and my_field=5)
PARENTS = {
    "bn": (BnConfig(reduction_factor=4), MyBnConfig, FrozenBnConfig),
    "lora": (LoRAConfig(r=4, alpha=8, intermediate_lora=True), MyLoRAConfig, FrozenLoRAConfig),
    "prefix": (PrefixTuningConfig(prefix_length=4, bottleneck_size=8), MyPrefixTuningConfig, FrozenPrefixTuningConfig),
}
CASES = [(kind, form) for kind in PARENTS for form in ("adapterhub", "frozen")]


def _extended(kind: str, form: str, my_field: int = 5):
    """``(parent config, the subclass config with the parent's values and my_field)``."""
    parent, adapterhub_class, frozen_class = PARENTS[kind]
    subclass = adapterhub_class if form == "adapterhub" else frozen_class
    values = {f.name: getattr(parent, f.name) for f in dataclasses.fields(parent)}
    return parent, subclass(**values, my_field=my_field)


def _copy_weights(model, source: str, target: str) -> None:
    with torch.no_grad():
        pairs = list(zip(model._adapter_parameters(source), model._adapter_parameters(target), strict=True))
        for a, b in pairs:
            b.copy_(a)


@pytest.fixture
def register():
    """``register(config, ...)``: register configs under string ids (as a user does to read their
    subclass back); they are unregistered after the test."""
    added = []

    def register_all(*configs):
        for config in configs:
            name = f"{type(config).__name__.lower()}_test"
            register_config(name, config)
            added.append(name)

    yield register_all
    for name in added:
        ADAPTER_CONFIG_MAP.pop(name, None)


def test_both_subclass_forms_are_defined_and_python_rules_still_hold():
    """The AdapterHub form and the frozen form both build; a non-frozen subclass of a user's
    frozen subclass is still refused, as Python refuses it (its frozen __setattr__ would break the
    subclass's __init__)."""
    for parent, adapterhub_class, frozen_class in PARENTS.values():
        assert issubclass(adapterhub_class, type(parent)) and issubclass(frozen_class, type(parent))
        assert dataclasses.is_dataclass(adapterhub_class) and dataclasses.is_dataclass(frozen_class)
    assert not BnConfig.__dataclass_params__.frozen and FrozenBnConfig.__dataclass_params__.frozen
    with pytest.raises(TypeError, match="cannot inherit non-frozen dataclass from a frozen one"):

        @dataclass(eq=False)
        class Twice(FrozenBnConfig):
            other: int = 1

    @dataclass(frozen=True, eq=False)
    class FrozenTwice(FrozenBnConfig):  # frozen over frozen: as Python allows
        other: int = 1

    assert FrozenTwice(other=2).to_dict()["other"] == 2 and FrozenTwice().my_field == 3


@pytest.mark.parametrize("kind,form", CASES)
def test_a_subclass_is_validated_immutable_equal_by_value_and_hashable(kind, form):
    parent, config = _extended(kind, form)
    assert config.my_field == 5 and type(config).__mro__[1] is type(parent)
    # immutable, as both libraries' configs are, whatever the decorator
    for change in (lambda: setattr(config, "my_field", 1), lambda: setattr(config, "r", 2), lambda: setattr(config, "new", 1)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            change()
    with pytest.raises(dataclasses.FrozenInstanceError):
        del config.my_field
    assert config.my_field == 5 and not hasattr(config, "new")
    # the parent's checks run for the subclass (in __post_init__)
    bad = {"bn": {"reduction_factor": 0}, "lora": {"r": 0}, "prefix": {"prefix_length": 0}}[kind]
    with pytest.raises(AdapterConfigError, match=f"{type(config).__name__}.{next(iter(bad))} must be"):
        type(config)(**bad)
    with pytest.raises(AdapterConfigError, match="unknown field 'my_feld'.*did you mean 'my_field'"):
        type(config)(my_feld=1)
    # equality and hashing by value (to_dict), as AdapterHub compares: the extra field counts
    same = _extended(kind, form)[1]
    assert config == same and hash(config) == hash(same) and {config: "x"}[same] == "x"
    assert config != _extended(kind, form, my_field=6)[1] and config != parent
    assert config.to_dict() == {**parent.to_dict(), "my_field": 5}
    # replace keeps the class and is validated; copies stay immutable
    changed = config.replace(my_field=7)
    assert type(changed) is type(config) and changed.my_field == 7 and config.my_field == 5
    with pytest.raises(AdapterConfigError, match="unknown field"):
        config.replace(my_fild=7)
    for duplicate in (copy.copy(config), copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert duplicate == config and type(duplicate) is type(config)
        with pytest.raises(dataclasses.FrozenInstanceError):
            duplicate.my_field = 1


def test_a_plain_dataclass_subclass_keeps_value_equality_and_its_hash():
    """``@dataclass`` (eq=True) would generate a field-tuple __eq__ and, unfrozen, no hash; a
    config subclass keeps comparing by value and stays hashable."""

    @dataclass
    class Plain(BnConfig):
        my_field: int = 3

    @dataclass(frozen=True)
    class PlainFrozen(LoRAConfig):
        my_field: int = 3

    assert Plain() == Plain() and hash(Plain()) == hash(Plain()) and Plain() != Plain(my_field=4)
    assert PlainFrozen(rank_pattern={"query": 2}) == PlainFrozen(rank_pattern={"query": 2})  # dict field: hashable all the same
    assert hash(PlainFrozen(rank_pattern={"query": 2})) == hash(PlainFrozen(rank_pattern={"query": 2}))


def test_library_configs_stay_immutable_and_equal_across_presets():
    from adapters import DynamicFusionConfig, SeqBnConfig

    config = SeqBnConfig()
    with pytest.raises(dataclasses.FrozenInstanceError, match="SeqBnConfig is immutable; use config.replace"):
        config.reduction_factor = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.anything = 1
    assert SeqBnConfig() == BnConfig(**SeqBnConfig().to_dict()) and hash(SeqBnConfig()) == hash(BnConfig(**SeqBnConfig().to_dict()))
    fusion = DynamicFusionConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        fusion.temperature = True
    assert fusion == AdapterFusionConfig() and hash(fusion) == hash(AdapterFusionConfig())

    @dataclass(eq=False)
    class MyFusionConfig(AdapterFusionConfig):
        my_field: int = 3

    assert MyFusionConfig().to_dict()["my_field"] == 3 and MyFusionConfig() != AdapterFusionConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        MyFusionConfig().my_field = 4


@pytest.mark.parametrize("kind,form", CASES)
def test_a_subclass_adapter_computes_its_parents_and_is_saved_and_loaded_with_its_field(kind, form, tmp_path, register, adapters_log):
    parent, config = _extended(kind, form)
    model = patched("bert", "seq_cls")
    model.add_adapter("parent", config=parent)
    model.add_adapter("sub", config=config)
    assert model.adapters_config.adapters["sub"] is config
    perturb_adapter(model, "parent")
    _copy_weights(model, "parent", "sub")
    inputs = make_inputs("bert")
    expected = run(model, inputs, "parent")
    assert not torch.allclose(expected, run(model, inputs))  # the adapter does something (none is active)
    torch.testing.assert_close(run(model, inputs, "sub"), expected, atol=0, rtol=0)

    model.save_adapter(str(tmp_path / "sub"), "sub")
    saved = json.loads((tmp_path / "sub" / "adapter_config.json").read_text())["config"]
    assert saved == config.to_dict() and saved["my_field"] == 5

    # registered: read back as the subclass, field and all
    register(type(config)())
    model.load_adapter(str(tmp_path / "sub"), load_as="back")
    loaded = model.adapters_config.adapters["back"]
    assert type(loaded) is type(config) and loaded.my_field == 5 and loaded == config
    torch.testing.assert_close(run(model, inputs, "back"), expected, atol=0, rtol=0)
    # a dict holding the field reads as the subclass too (AdapterConfig.load / from_dict)
    assert type(AdapterConfig.load(saved)) is type(config) and AdapterConfig.load(saved) == config

    # unregistered: the parent class, without the field, with a warning saying how to keep it
    for name in [n for n, c in ADAPTER_CONFIG_MAP.items() if type(c).__module__ == __name__]:
        ADAPTER_CONFIG_MAP.pop(name)
    model.load_adapter(str(tmp_path / "sub"), load_as="plain")
    plain = model.adapters_config.adapters["plain"]
    assert type(plain) is type(parent) and plain == parent and not hasattr(plain, "my_field")
    assert "ignoring 'my_field'" in adapters_log.text and "register_config" in adapters_log.text
    torch.testing.assert_close(run(model, inputs, "plain"), expected, atol=0, rtol=0)
    with pytest.raises(AdapterConfigError, match="unknown field 'my_field'"):
        AdapterConfig.from_dict(saved)  # a user's dict: refused, not silently dropped


def test_a_union_holding_a_subclass_equals_the_union_of_parents_and_round_trips(tmp_path, register):
    parent_lora, my_lora = _extended("lora", "adapterhub")
    parent_prefix, frozen_prefix = _extended("prefix", "frozen")
    union = ConfigUnion(my_lora, frozen_prefix)
    model = patched("bert", "seq_cls")
    model.add_adapter("parents", config=ConfigUnion(parent_lora, parent_prefix))
    model.add_adapter("sub", config=union)
    assert [type(p) for p in model.adapters_config.adapters["sub"].configs] == [MyLoRAConfig, FrozenPrefixTuningConfig]
    perturb_adapter(model, "parents")
    _copy_weights(model, "parents", "sub")
    inputs = make_inputs("bert")
    expected = run(model, inputs, "parents")
    torch.testing.assert_close(run(model, inputs, "sub"), expected, atol=0, rtol=0)

    model.save_adapter(str(tmp_path), "sub")
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["config"]
    assert [part["my_field"] for part in saved["configs"]] == [5, 5]  # AdapterHub drops both at add_adapter
    register(MyLoRAConfig(), FrozenPrefixTuningConfig())
    model.load_adapter(str(tmp_path), load_as="back")
    loaded = model.adapters_config.adapters["back"]
    assert [type(p) for p in loaded.configs] == [MyLoRAConfig, FrozenPrefixTuningConfig] and loaded == union
    torch.testing.assert_close(run(model, inputs, "back"), expected, atol=0, rtol=0)


def test_a_registered_subclass_is_used_by_its_string_id_and_the_closest_class_reads_a_dict(register):
    register(MyBnConfig(), MyLoRAConfig())
    config = AdapterConfig.load("mybnconfig_test[my_field=9, reduction_factor=8]")
    assert type(config) is MyBnConfig and config.my_field == 9 and config.reduction_factor == 8
    model = patched("bert")
    model.add_adapter("a", config="myloraconfig_test[my_field=4]")
    assert model.adapters_config.adapters["a"] == MyLoRAConfig(my_field=4)

    @dataclass(eq=False)
    class Wider(MyBnConfig):
        second: int = 0

    register(Wider())
    # a dict with my_field only fits MyBnConfig and Wider: the one with fewer fields reads it
    assert type(AdapterConfig.from_dict(MyBnConfig().to_dict())) is MyBnConfig
    assert type(AdapterConfig.from_dict(Wider(second=1).to_dict())) is Wider


def test_training_a_subclass_adapter_trains_only_its_parameters():
    model = patched("bert")
    model.add_adapter("sub", config=MyLoRAConfig(r=2))
    model.train_adapter("sub")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter = {n for n, p in model.named_parameters() if any(p is q for q in model._adapter_parameters("sub"))}
    assert adapter and trainable == adapter


def test_subclasses_defined_at_the_same_time_in_two_threads_each_see_their_own_frozen():
    """dataclasses stores a new class's parameters, then reads its bases' ``frozen``; a sealed
    base reports the subclass's own. Thread A stops after that first step of a non-frozen
    subclass, thread B takes the same step for a frozen one: A must still read ``frozen=False``
    (with one slot for all threads it read B's ``True`` and refused to build), B ``True``."""
    import threading

    plain_params = dataclasses.dataclass(eq=False)(type("Plain", (), {})).__dataclass_params__
    frozen_params = dataclasses.dataclass(frozen=True, eq=False)(type("Frozen", (), {})).__dataclass_params__
    subclass_a = type("ThreadA", (BnConfig,), {})
    subclass_b = type("ThreadB", (BnConfig,), {})
    subclass_a.__dataclass_params__ = plain_params  # thread A (this one): first step of its build
    seen_in_b = []

    def build_b():
        subclass_b.__dataclass_params__ = frozen_params  # thread B: first step of its build
        seen_in_b.append(BnConfig.__dataclass_params__.frozen)

    worker = threading.Thread(target=build_b)
    worker.start()
    worker.join()
    assert seen_in_b == [True]
    assert BnConfig.__dataclass_params__.frozen is False  # thread A still sees its own subclass's

    @dataclass(eq=False)  # and A's build completes afterwards
    class AfterThreads(BnConfig):
        other: int = 1

    assert AfterThreads(other=2).to_dict()["other"] == 2
