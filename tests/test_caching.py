"""Derived tensors kept between passes while their parameters are unchanged
(adapters.methods.caching), and the methods that rely on it."""

import pytest
import torch

import adapters
from adapters.methods.caching import reuse_while_unchanged
from tests.conftest import make_inputs, make_model


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self):
        self.calls += 1
        return self.fn()


def test_value_is_reused_until_a_source_changes():
    param = torch.nn.Parameter(torch.randn(3))
    store, compute = {}, None
    compute = Counter(lambda: param * 2)
    with torch.no_grad():
        first = reuse_while_unchanged(store, "k", [param], compute)
        assert reuse_while_unchanged(store, "k", [param], compute) is first
        assert compute.calls == 1
        param.add_(1.0)  # an optimizer step: the version counter moves
        second = reuse_while_unchanged(store, "k", [param], compute)
    assert compute.calls == 2 and torch.equal(second, param.detach() * 2)
    param.data = param.data.double()  # dtype / storage replaced without touching the version
    with torch.no_grad():
        third = reuse_while_unchanged(store, "k", [param], compute)
    assert compute.calls == 3 and third.dtype == torch.float64


def test_nothing_is_reused_while_a_gradient_can_flow():
    param = torch.nn.Parameter(torch.randn(3))
    store, compute = {}, Counter(lambda: param * 2)
    for _ in range(2):
        value = reuse_while_unchanged(store, "k", [param], compute)
        value.sum().backward()
    assert compute.calls == 2 and torch.equal(param.grad, torch.full((3,), 4.0))
    frozen = torch.randn(3)  # no gradient possible: reused even with grad mode on
    compute = Counter(lambda: frozen + 1)
    reuse_while_unchanged(store, "f", [frozen], compute)
    reuse_while_unchanged(store, "f", [frozen], compute)
    assert compute.calls == 1
    assert reuse_while_unchanged(store, "f", [frozen], compute, reusable=False) is not None and compute.calls == 2


def test_inference_mode_values_stay_in_inference_mode():
    param = torch.nn.Parameter(torch.randn(3), requires_grad=False)
    store, compute = {}, Counter(lambda: param * 2)
    with torch.inference_mode():
        inner = reuse_while_unchanged(store, "k", [param], compute)
    outer = reuse_while_unchanged(store, "k", [param], compute)
    assert compute.calls == 2 and inner.is_inference() and not outer.is_inference()


@pytest.mark.parametrize("method", ["oft", "hra"])
def test_rotation_methods_rebuild_only_after_a_parameter_update(method, monkeypatch):
    model = make_model("bert")
    adapters.init(model)
    config = adapters.OFTConfig(oft_block_size=8, init_weights=False) if method == "oft" else adapters.HRAConfig(r=4, init_weights=False)
    model.add_adapter("a", config=config)
    model.set_active_adapters("a")
    model.eval()
    inputs = make_inputs("bert")
    module = next(m for n, m in model.named_modules() if n.endswith(".loras.a"))
    name = "blocks" if method == "oft" else "_compute_wy_factors"
    counter = Counter(getattr(module, name))
    monkeypatch.setattr(module, name, counter)
    with torch.no_grad():
        first = model(**inputs).last_hidden_state
        again = model(**inputs).last_hidden_state
        assert counter.calls == 1 and torch.equal(first, again)
        param = next(module.parameters())
        param.add_(0.3 * torch.randn_like(param))  # trained further
        changed = model(**inputs).last_hidden_state
    assert counter.calls == 2 and not torch.allclose(changed, first)
    model.train_adapter("a")
    model(**inputs).last_hidden_state.sum().backward()  # training: rebuilt, and the gradient arrives
    assert counter.calls == 3 and next(module.parameters()).grad.abs().sum() > 0
