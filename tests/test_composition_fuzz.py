"""A property test over random composition setups (issue 20): every setup is either refused with a
:class:`~adapters.errors.CompositionError` when it is activated (``set_active_adapters`` or the
first forward under ``AdapterSetup``) or at the start of the forward pass (a batch its
``BatchSplit`` sizes do not fit), or it runs a finite forward of the right shape whose rows match
the definition:

* ``Parallel``: the rows of branch ``i`` equal the setup with the Parallel replaced by child ``i``
  (run on the original batch);
* ``BatchSplit``: the rows of part ``i`` equal the setup with the BatchSplit replaced by child ``i``
  (run on those rows alone) — together: every row equals its own setup without Parallel and
  BatchSplit;
* ``Average`` / ``Stack`` of plain LoRA adapters: the model whose weights are ``W + Σ w_i ΔW_i``
  (the deltas computed from the adapters' factors), run without adapters.

Random trees of Stack, Parallel, Fuse (a fusion is added when its adapters allow one), Split,
BatchSplit and Average, nesting depth ≤ 3, over adapters of every method the architecture takes
(bottleneck sequential / parallel / with leave_out, LoRA, (IA)³, LoHa, prefix tuning, an invertible
adapter, prompt tuning, Llama-Adapter, a MAM union) on BERT, GPT-2, Llama, T5 and ViT. Models are
built once per architecture; the examples are derandomised, so a failure reproduces.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from conftest import assert_unchanged, main_output, make_inputs, model_state, patched, perturb_adapter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import AdapterSetup
from adapters.composition import (
    ALLOWED_NESTINGS,
    AdapterCompositionBlock,
    Average,
    BatchSplit,
    Fuse,
    Parallel,
    Split,
    Stack,
    batch_requirement,
)
from adapters.errors import CompositionError

BATCH, SEQ = 2, 6
# adapter name -> config; each architecture keeps those it can add
POOL = {
    "s1": "seq_bn",
    "s2": "seq_bn[leave_out=[0]]",
    "pb": "par_bn",
    "l1": "lora",
    "l2": "lora[leave_out=[1]]",
    "i3": "ia3",
    "lh": "loha",
    "px": "prefix_tuning",
    "inv": "seq_bn_inv",
    "pt": "prompt_tuning",
    "ap": "adaption_prompt",
    "mam": "mam",
}
# architecture -> head: an encoder and a decoder with their LM heads (where invertible adapters
# also run their inverse), Llama (Llama-Adapter), an encoder-decoder and an image model, all of
# the light matrix
ARCHS = {"bert": "mlm", "gpt2": "clm", "llama": "base", "t5": "base", "vit": "seq_cls"}
PLAIN_LORAS = ("l1", "l2")
BOTTLENECKS = ("s1", "s2", "pb", "inv")  # plain LoRAs (no slices, gate or DoRA): Average / Stack of them has a cheap definition
EXAMPLES = {"bert": 1200, "gpt2": 1000, "llama": 800, "t5": 600, "vit": 800}

_models: dict = {}


def _model(arch: str):
    """``(model, inputs, names)``: the architecture's model with every adapter of the pool it can
    take (perturbed, so none is the identity), built once."""
    if arch not in _models:
        model = patched(arch, ARCHS[arch])
        names = []
        for index, (name, config) in enumerate(POOL.items()):
            try:
                model.add_adapter(name, config=config)
            except (ValueError, TypeError):  # a method this architecture refuses
                continue
            perturb_adapter(model, name, scale=0.3, seed=index)
            names.append(name)
        _models[arch] = (model, make_inputs(arch, batch=BATCH, seq=SEQ), tuple(names))
    return _models[arch]


# -- random setups ------------------------------------------------------------------------------
BLOCKS = (Stack, Fuse, Split, BatchSplit, Average)


@st.composite
def _node(draw, names, rows: int, depth: int, parent):
    """A child of ``parent`` (a block type) seeing ``rows`` batch rows; ``depth`` blocks left."""
    if depth == 0 or draw(st.floats(0, 1)) < 0.5:
        if parent is Fuse and draw(st.floats(0, 1)) < 0.7:  # mostly adapters a fusion can be built of
            return draw(st.sampled_from([n for n in names if n in BOTTLENECKS]))
        return draw(st.sampled_from(names))
    allowed = [b for b in ALLOWED_NESTINGS[parent] if b in BLOCKS] if parent else list(BLOCKS)
    # now and then an invalid nesting: it must be refused, never crash
    kind = draw(st.sampled_from(allowed if allowed and draw(st.floats(0, 1)) < 0.93 else list(BLOCKS)))
    return draw(_block(names, kind, rows, depth))


@st.composite
def _block(draw, names, kind, rows: int, depth: int):
    count = draw(st.integers(1 if kind is Stack else 2, 3))
    if kind is BatchSplit:
        if draw(st.floats(0, 1)) < 0.1:  # sizes that fit no batch, or another batch
            sizes = draw(st.lists(st.integers(0, 4), min_size=count, max_size=count))
        else:
            cuts = sorted(draw(st.lists(st.integers(0, rows), min_size=count - 1, max_size=count - 1)))
            sizes = [b - a for a, b in zip([0] + cuts, cuts + [rows])]
        children = [draw(_node(names, size, depth - 1, kind)) for size in sizes]
        return BatchSplit(*children, batch_sizes=sizes)
    children = [draw(_node(names, rows, depth - 1, kind)) for _ in range(count)]
    if kind is Split:
        return Split(*children, splits=draw(st.lists(st.integers(0, 4), min_size=count, max_size=count)))
    if kind is Average:
        if draw(st.booleans()):
            return Average(*children)
        weights = draw(st.lists(st.floats(0.1, 2.0), min_size=count, max_size=count))
        return Average(*children, weights=weights, normalize_weights=draw(st.booleans()))
    return kind(*children)


@st.composite
def setups(draw, names):
    """A random setup: a name, a block, a Parallel, or a Stack with a Parallel among its children."""
    shape = draw(st.sampled_from(["name", "block", "block", "parallel", "stack_parallel"]))
    if shape == "name":
        return draw(st.sampled_from(names))
    depth = draw(st.integers(1, 3))
    if shape == "block":
        kind = draw(st.sampled_from(BLOCKS))
        return draw(_block(names, kind, BATCH, depth))
    channels = draw(st.integers(2, 3))
    branches = [draw(_node(names, BATCH, depth - 1, Parallel)) for _ in range(channels)]
    parallel = Parallel(*branches)
    if shape == "parallel":
        return parallel
    before = [draw(_node(names, channels * BATCH, depth - 1, Stack)) for _ in range(draw(st.integers(0, 1)))]
    after = [draw(_node(names, channels * BATCH, depth - 1, Stack)) for _ in range(draw(st.integers(0, 1)))]
    return Stack(*before, parallel, *after)


# -- definitions ---------------------------------------------------------------------------------
def _row_setup(node, row: int, rows: int):
    """The setup that row ``row`` (of the ``rows`` this node sees) runs: every Parallel and
    BatchSplit replaced by the child that owns the row (Fuse keeps its fusion's name)."""
    if isinstance(node, str):
        return node
    if isinstance(node, Parallel):
        size = rows // len(node.children)
        return _row_setup(node.children[row // size], row % size, size)
    if isinstance(node, BatchSplit):
        start = 0
        for child, size in zip(node.children, node.batch_sizes):
            if row < start + size:
                return _row_setup(child, row - start, size)
            start += size
        raise AssertionError("row outside the BatchSplit")
    children = []
    for child in node.children:
        resolved = _row_setup(child, row, rows)
        if isinstance(child, (Parallel, BatchSplit)) and not isinstance(resolved, str):
            if isinstance(node, Stack) and isinstance(resolved, Stack):
                children.extend(resolved.children)  # a Stack in a Stack: the same as its children there
                continue
            if not isinstance(resolved, ALLOWED_NESTINGS[type(node)]):
                resolved = Stack(resolved)  # e.g. a Fuse that was a BatchSplit's child, now in a Split
        children.append(resolved)
    if isinstance(node, Fuse):
        return Fuse(*children, name=node.name)
    if isinstance(node, Split):
        return Split(*children, splits=list(node.splits))
    if isinstance(node, Average):
        return Average(*children, weights=list(node.weights), normalize_weights=False)
    return Stack(*children)


def _forward(model, inputs, setup):
    with torch.no_grad(), AdapterSetup(setup):
        return main_output(model(**inputs))


def _rows(inputs: dict, rows: list[int]) -> dict:
    index = torch.tensor(rows)
    return {k: v.index_select(0, index) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _check_rows(model, inputs, setup, out):
    """Every row equals its own setup (without Parallel / BatchSplit) run on that input row."""
    channels = next((len(b.children) for b in _blocks(setup) if isinstance(b, Parallel)), 1)
    total = channels * BATCH
    groups: dict = {}
    for row in range(total):
        groups.setdefault(_row_setup(setup, row, total), []).append(row)
    if len(groups) == 1 and channels == 1:
        return  # no row is special: nothing to compare with but itself
    for row_setup, rows in groups.items():
        model._validate_setup(row_setup if isinstance(row_setup, AdapterCompositionBlock) else Stack(row_setup))
        expected = _forward(model, _rows(inputs, [r % BATCH for r in rows]), row_setup)
        real = _real_positions(inputs, [r % BATCH for r in rows], expected)
        torch.testing.assert_close(
            out[rows] * real, expected * real, atol=2e-4, rtol=2e-4, msg=lambda m: f"rows {rows} ({row_setup}): {m}"
        )


def _real_positions(inputs: dict, rows: list[int], output: torch.Tensor) -> torch.Tensor:
    """1 at the output positions of real tokens, 0 at padding (whose outputs nothing defines: a
    prefix renumbers the positions of a causal model's padding); soft prompts count as real."""
    mask = inputs.get("attention_mask")
    if mask is None or output.dim() < 3 or output.shape[1] < mask.shape[1]:
        return torch.ones(())
    mask = mask[rows].to(output.dtype)
    prompt = output.shape[1] - mask.shape[1]
    mask = torch.cat([mask.new_ones(len(rows), prompt), mask], dim=1)
    return mask.view(*mask.shape, *([1] * (output.dim() - 2)))


def _blocks(node):
    if isinstance(node, AdapterCompositionBlock):
        yield node
        for child in node.children:
            yield from _blocks(child)


def _lora_only(node) -> bool:
    if isinstance(node, str):
        return node in PLAIN_LORAS
    return isinstance(node, (Stack, Average)) and all(_lora_only(c) for c in node.children)


def _delta(node, host):
    """``Σ w_i ΔW_i`` of a Stack / Average tree of plain LoRAs at ``host`` (absent adapters drop out
    and an Average rescales the remaining weights to the total given, as documented)."""
    if isinstance(node, str):
        if node not in host.loras:
            return None
        lora = host.loras[node]
        if lora.out_index is None:
            return lora.delta_weight()
        full = host.weight_out_in.new_zeros(host.weight_out_in.shape)  # GPT-2's c_attn: the covered rows
        full[lora.out_index] = lora.delta_weight()
        return full
    parts = [(_delta(child, host), weight) for child, weight in zip(node.children, getattr(node, "weights", None) or [1.0] * len(node.children))]
    present = [(d, w) for d, w in parts if d is not None]
    if not present:
        return None
    if isinstance(node, Average):
        rescale = sum(node.weights) / sum(w for _, w in present)
        return sum(d * w * rescale for d, w in present)
    return sum(d for d, _ in present)


def _check_weight_deltas(model, inputs, setup, out):
    """A Stack / Average of plain LoRAs equals the plain model with weights ``W + Σ w_i ΔW_i``."""
    hosts = [h for h in model._adapter_hosts if h.method == "lora"]
    saved = {}
    try:
        with torch.no_grad():
            for host in hosts:
                delta = _delta(setup, host)
                if delta is not None:
                    saved[host] = host.weight.detach().clone()
                    host.weight_out_in.add_(delta)
        expected = _forward(model, inputs, None)
    finally:
        with torch.no_grad():
            for host, weight in saved.items():
                host.weight.copy_(weight)
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=2e-4)


def _add_fusions(model, setup) -> None:
    for block in _blocks(setup):
        if isinstance(block, Fuse) and block.name not in model.adapters_config.fusions:
            try:
                model.add_adapter_fusion(block)
            except ValueError:  # adapters that cannot be fused: activation must refuse the setup
                pass


def _activation_error(model, setup):
    """The message activating ``setup`` fails with, or None."""
    try:
        model._validate_setup(setup)
    except CompositionError as error:
        return str(error)
    return None


def _check(arch: str, setup, use_context: bool) -> str:
    """Run one example; returns how it ended (for the statistics of the test)."""
    model, inputs, _ = _model(arch)
    model.set_active_adapters(None)
    setup = setup if isinstance(setup, AdapterCompositionBlock) else Stack(setup)
    _add_fusions(model, setup)
    refusal = _activation_error(model, setup)
    if not use_context:
        before = model_state(model)
        try:
            model.set_active_adapters(setup)
        except CompositionError as error:
            assert str(error) == refusal
            assert_unchanged(model, before)  # refused before changing anything
            return "refused"
        assert refusal is None, refusal
    try:
        with torch.no_grad(), (AdapterSetup(setup) if use_context else nullcontext()):
            out = main_output(model(**inputs))
    except CompositionError as error:
        if use_context and refusal is not None:
            assert str(error) == refusal  # the first use of an AdapterSetup refuses it alike
            return "refused"
        # the one refusal left: an input the setup does not fit, at the start of the forward
        assert "input batch" in str(error), str(error)
        requirement = batch_requirement(setup)
        assert requirement is not None and requirement.batch != BATCH, str(error)
        return "refused at forward"
    assert refusal is None, f"{setup} ran, but activating it is refused: {refusal}"
    requirement = batch_requirement(setup)
    assert requirement is None or requirement.batch == BATCH, f"{setup} ran on a batch its BatchSplit does not fit"
    assert torch.isfinite(out).all(), f"{setup}: non-finite output"
    channels = next((len(b.children) for b in _blocks(setup) if isinstance(b, Parallel)), 1)
    base = _forward(model, inputs, None)
    assert out.shape[0] == channels * BATCH and out.shape[2:] == base.shape[2:], f"{setup}: shape {tuple(out.shape)}"
    _check_rows(model, inputs, setup, out)
    if _lora_only(setup):
        _check_weight_deltas(model, inputs, setup, out)
    return "ran"


def _names(arch):
    return _model(arch)[2]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_random_setups_are_refused_clearly_or_run_as_defined(arch):
    names = list(_names(arch))
    shift = list(ARCHS).index(arch) * 5  # another order per architecture: other trees from the same seed
    names = names[shift % len(names):] + names[: shift % len(names)]
    outcomes: dict = {}

    @settings(
        max_examples=EXAMPLES[arch],
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(setup=setups(names), use_context=st.booleans())
    def check(setup, use_context):
        result = _check(arch, setup, use_context)
        outcomes[result] = outcomes.get(result, 0) + 1

    try:
        check()
    finally:
        _model(arch)[0].set_active_adapters(None)
    # the generator must reach every outcome, or the test proves little
    assert outcomes.get("ran", 0) >= EXAMPLES[arch] // 4, outcomes
    assert outcomes.get("refused", 0) > 0, outcomes
