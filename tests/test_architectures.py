"""Architecture-specific behaviour of the newer families, against definitions computed here from
the unmodified transformers model (the shared matrix in the other test files covers every
method and block on every architecture)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs, make_model, patched, perturb_adapter, run
from transformers import DynamicCache

from adapters import PrefixTuningConfig


def _set_softcap(model, cap):
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = cap


def _sliding_window_reference(arch, prefixes, inputs, softcap=None):
    """The unmodified model with the prefix as past keys/values and explicit masks per layer type:
    every query sees every prefix key; real keys as the model masks them (causal, padding, and in
    sliding layers only the last ``sliding_window`` positions)."""
    model = make_model(arch, "clm")
    if softcap is not None:
        _set_softcap(model, softcap)
    window = model.config.sliding_window
    batch, length = inputs["input_ids"].shape
    cache = DynamicCache()  # plain layers: a sliding layer's cache would drop the prefix itself
    for layer_idx, (keys, values) in enumerate(prefixes):
        cache.update(keys.unsqueeze(0).expand(batch, -1, -1, -1), values.unsqueeze(0).expand(batch, -1, -1, -1), layer_idx)
    n = prefixes[0][0].shape[1]
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None, :]
    padding = inputs["attention_mask"].bool()[:, None, None, :]
    masks = {}
    for layer_type, allowed in (("full_attention", k <= q), ("sliding_attention", (k <= q) & (k > q - window))):
        real = allowed[None, None] & padding
        visible = torch.cat([torch.ones(batch, 1, length, n, dtype=torch.bool), real], dim=-1)
        masks[layer_type] = torch.where(visible, 0.0, torch.finfo(torch.float32).min)
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=masks, past_key_values=cache, position_ids=positions).logits


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text"])
def test_gemma_prefix_is_seen_by_every_query_in_sliding_window_layers(arch):
    model = patched(arch, "clm")
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    model.add_adapter("p", config=PrefixTuningConfig(prefix_length=4, flat=True), set_active=True)
    perturb_adapter(model, "p", scale=1.0)
    states = model.base_model.prefix_tuning.prefix_tunings["p"]["self_prefix"]()
    prefixes = [(layer[0], layer[1]) for layer in states]
    inputs = make_inputs(arch)  # 12 tokens, window 4: the window bites
    ours = run(model, inputs)
    assert (ours - run(make_model(arch, "clm"), inputs)).abs().max() > 1e-3
    expected = _sliding_window_reference(arch, prefixes, inputs)
    real = inputs["attention_mask"].bool()  # padded positions' outputs are not defined the same way
    torch.testing.assert_close(ours[real], expected[real], atol=1e-5, rtol=0)
    # Gemma 2's attention-logit soft-capping reaches the attention the wrapper calls (a cap of 0.1
    # bends the tiny model's scores, the default 50 barely does)
    if arch == "gemma2":
        assert model.model.layers[0].self_attn.attn_logit_softcapping == 50.0
        _set_softcap(model, 0.1)
        capped = run(model, inputs)
        assert (capped - ours).abs().max() > 1e-3
        expected = _sliding_window_reference(arch, prefixes, inputs, softcap=0.1)
        torch.testing.assert_close(capped[real], expected[real], atol=1e-5, rtol=0)
