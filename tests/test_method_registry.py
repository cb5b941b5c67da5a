"""A method family is one file: a weight-transform method written outside the package (config,
module, build function, one ``register_weight_transform`` call) works end to end — adding,
composing, merging, saving, loading, deleting — with no change anywhere else. This is the
contributor guide's "add a method" checklist (docs/contributing.rst), executed."""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import pytest
import torch
from torch import nn

import adapters
from adapters import AdapterMethod, CompositionError, Fuse, LoRAConfig, Stack
from adapters.configuration.base import register_config
from adapters.configuration.weight_transforms import WeightTargetingConfig
from adapters.methods.registry import families, family, unregister
from adapters.methods.weight_transform import WeightTransform, register_weight_transform

from conftest import assert_unchanged, make_inputs, model_state, patched, perturb_adapter, run

# -- the whole method: what a contributor writes in adapters/methods/rank_one.py ------------------


@dataclasses.dataclass(frozen=True, eq=False)
class RankOneConfig(WeightTargetingConfig):
    """A rank-one update ``ΔW = s · u vᵀ`` (u starts at 0: the adapter starts as the identity)."""

    architecture: ClassVar[str] = "rank_one_test"
    scale: float = 2.0


class RankOne(WeightTransform):
    """``ΔW = s · u vᵀ`` over the covered rows; its output is ``s · (x v) uᵀ``."""

    method = "rank_one_test"

    def __init__(self, in_features: int, out_features: int, config: RankOneConfig, out_slices=None):
        super().__init__(in_features, out_features, out_slices)
        self.scale = config.scale
        self.u = nn.Parameter(torch.zeros(self.rows))
        self.v = nn.Parameter(torch.randn(in_features) / in_features**0.5)

    def delta_weight(self, weight=None) -> torch.Tensor:
        return self.scale * torch.outer(self.u, self.v)

    def delta_output(self, x: torch.Tensor, weight=None) -> torch.Tensor:
        return self.scale * (x @ self.v)[..., None] * self.u


def build_rank_one(config, in_features, out_features, target, path_prefix):
    return RankOne(in_features, out_features, config, target.out_slices)


@pytest.fixture
def rank_one():
    register_config("rank_one_test", RankOneConfig())
    yield register_weight_transform("rank_one_test", "Rank-one test", build_rank_one)
    unregister("rank_one_test")


# -- the checks -------------------------------------------------------------------------------------


def _with_rank_one(config=None):
    model = patched("bert")
    model.add_adapter("r1", config=config or RankOneConfig(target_modules=["query", "value"]), set_active=True)
    perturb_adapter(model, "r1")
    return model


def _expected(model) -> torch.Tensor:
    """The definition: a copy of the base model whose query/value weights carry W + s u vᵀ."""
    reference = copy.deepcopy(model)
    reference.set_active_adapters(None)
    with torch.no_grad():
        for host in [h for h in model._adapter_hosts if h.hosts_weight_deltas and "r1" in h.loras]:
            path = next(p for p, m in model.named_modules() if m is host)
            reference.get_submodule(path).weight.add_(host.loras["r1"].delta_weight())
    return run(reference, make_inputs("bert"))


def test_the_method_registers_its_family(rank_one):
    assert family("rank_one_test") is rank_one and rank_one in list(families())
    assert rank_one.weight_delta and rank_one.interface_method == "lora"
    assert AdapterMethod.of(RankOneConfig()) == ["lora"]
    assert adapters.AdapterConfig.load("rank_one_test") == RankOneConfig()


def test_added_it_computes_its_definition(rank_one):
    model = _with_rank_one()
    inputs = make_inputs("bert")
    hosts = [h for h in model._adapter_hosts if h.hosts_weight_deltas and "r1" in h.loras]
    assert len(hosts) == 4 and all(isinstance(h.loras["r1"], RankOne) for h in hosts)  # 2 layers × query, value
    adapted = run(model, inputs)
    torch.testing.assert_close(adapted, _expected(model), rtol=1e-5, atol=1e-5)
    model.set_active_adapters(None)
    assert not torch.allclose(adapted, run(model, inputs), atol=1e-3)  # the perturbed update does change it


def test_it_composes_merges_and_unmerges_like_the_built_in_transforms(rank_one):
    model = _with_rank_one()
    model.add_adapter("lora", config=LoRAConfig(r=2, target_modules=["query"]))
    perturb_adapter(model, "lora", seed=7)
    inputs = make_inputs("bert")
    alone, stacked = run(model, inputs, "r1"), run(model, inputs, Stack("r1", "lora"))
    model.merge_adapter("r1")
    torch.testing.assert_close(run(model, inputs, "r1"), alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run(model, inputs, Stack("r1", "lora")), stacked, rtol=1e-5, atol=1e-5)
    model.reset_adapter()
    torch.testing.assert_close(run(model, inputs, "r1"), alone, rtol=0, atol=1e-6)
    with pytest.raises(CompositionError, match="r1"):
        model.set_active_adapters(Fuse("r1", "lora"))


def test_it_saves_loads_and_deletes(rank_one, tmp_path):
    model = _with_rank_one()
    inputs = make_inputs("bert")
    expected = run(model, inputs)
    model.save_adapter(str(tmp_path / "r1"), "r1")
    other = patched("bert")
    before = model_state(other)
    name = other.load_adapter(str(tmp_path / "r1"), set_active=True)
    assert name == "r1" and torch.equal(run(other, inputs), expected)
    other.delete_adapter("r1")
    assert_unchanged(other, before)


def test_an_unregistered_method_is_refused_by_name(rank_one):
    model = patched("bert")
    unregister("rank_one_test")
    try:
        before = model_state(model)
        with pytest.raises(adapters.AdapterConfigError, match="rank_one_test.*available methods"):
            model.add_adapter("r1", config=RankOneConfig(target_modules=["query"]))
        assert_unchanged(model, before)
    finally:
        register_weight_transform("rank_one_test", "Rank-one test", build_rank_one)


def test_a_family_registered_after_a_forward_pass_gets_its_forward_hooks():
    """The per-forward hook lists follow the registry: a family registered once the model has run
    (a plug-in imported late) still has its ``before_forward`` / ``after_forward`` called."""
    from adapters.methods.registry import MethodFamily, register

    model = patched("bert")
    inputs = make_inputs("bert")
    model(**inputs)
    calls = []
    register(MethodFamily(
        name="late_hooks", title="Late hooks", blocks=(Stack,), add=lambda *args: False,
        before_forward=lambda model, context, call: calls.append("before"),
        after_forward=lambda model, context, output: calls.append("after") or output,
    ))
    try:
        model(**inputs)
    finally:
        unregister("late_hooks")
    assert calls == ["before", "after"]
    model(**inputs)
    assert calls == ["before", "after"]  # unregistered: no longer called
