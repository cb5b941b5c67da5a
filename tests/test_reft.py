"""ReFT (LoReFT, NoReFT, DiReFT): each adapter is checked against the method's definition computed
independently — a plain forward hook on the layers that applies ``Φ(h) = h + Rᵀ(φ(W h + b) − R h)``
(DiReFT: without ``− R h``) at positions listed by hand from the attention mask — on a model whose
ReFT adapters are inactive. AdapterHub's checkpoints are in tests/test_fixtures_adapterhub_methods.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    ARCH_HEADS_LIGHT,
    CONFIGS,
    left_padded_prompt,
    main_output,
    make_inputs,
    patched,
    perturb_adapter,
    run,
)

import adapters
from adapters import (
    AdapterConfigError,
    AdapterSetup,
    Average,
    BatchSplit,
    CompositionError,
    DiReftConfig,
    Fuse,
    LoReftConfig,
    NoReftConfig,
    Parallel,
    ReftConfig,
    Split,
    Stack,
)
from adapters.compat import CACHE_NAME, returned_cache
from adapters.methods.reft import ReftLayer

VARIANTS = {
    "loreft": LoReftConfig(r=2, prefix_positions=2, suffix_positions=2),
    "noreft": NoReftConfig(r=3, prefix_positions=1, suffix_positions=2, non_linearity="gelu"),
    "direft": DiReftConfig(r=2, prefix_positions=3, suffix_positions=1, non_linearity="relu"),
    "loreft_tied_layer1": LoReftConfig(r=2, layers=[1], prefix_positions=2, suffix_positions=3, tied_weights=True),
}


def _eval_config(config: ReftConfig) -> ReftConfig:
    return config.replace(dropout=0.0)


def _perturb(model, name: str, scale: float = 0.3, seed: int = 0) -> None:
    """Noise on what training moves: the trainable parameters, except the sign diagonal of the
    orthogonal parametrisation's ``original``, which receives no gradient (torch's Householder map
    reads only its sign), and the frozen base."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if parameter.requires_grad and (f".{name}." in key or key.endswith(f".{name}")):
                noise = torch.randn(parameter.shape, generator=generator) * scale
                if key.endswith("parametrizations.weight.original"):
                    noise.diagonal().zero_()
                parameter.add_(noise)


def _model(arch="bert", head="base", configs=None, seed=0):
    model = patched(arch, head)
    for index, (name, config) in enumerate((configs or {}).items()):
        model.add_adapter(name, config=config)
        _perturb(model, name, seed=seed + 7 * index)
    return model.eval()


# -- the independent computation ------------------------------------------------------------------


def _phi(config: ReftConfig, unit, h: torch.Tensor) -> torch.Tensor:
    """``Φ(h)`` from the unit's weights, written out (no dropout: eval mode)."""
    w, b = unit.learned_source.weight.detach(), unit.learned_source.bias.detach()
    rotation = unit.projection.weight.detach().to(h.dtype)
    activation = {None: lambda x: x, "relu": torch.relu, "gelu": torch.nn.functional.gelu}[config.non_linearity]
    edit = activation(h @ w.t() + b)
    if config.subtract_projection:
        edit = edit - h @ rotation.t()
    return h + edit @ rotation


def _prompt_positions(mask_row, p: int, s: int) -> tuple[list, list]:
    """The prefix / suffix positions of one row, listed from its mask."""
    real = [i for i, value in enumerate(mask_row) if value]
    n = len(real)
    return real[: min(p, n)], (real[n - min(s, n):] if s else [])


def _reference_hooks(model, name: str, config: ReftConfig, masks: torch.Tensor, extra=None):
    """Forward hooks on every layer adapter ``name`` intervenes after, applying its units at the
    positions ``masks`` gives (``extra(row, length) -> positions`` adds positions for unit 0)."""
    handles = []
    for host in [h for h in model._adapter_hosts if isinstance(h, ReftLayer) and name in h.refts]:
        units = host.refts[name].units

        def hook(module, args, output, units=units):
            hidden = output if isinstance(output, torch.Tensor) else output[0]
            hidden = hidden.clone()
            original = hidden.clone()
            for row in range(hidden.shape[0]):
                prefix, suffix = _prompt_positions(masks[row].tolist(), config.prefix_positions, config.suffix_positions)
                if extra is not None:
                    prefix = prefix + extra(row, hidden.shape[1])
                for position in prefix:
                    if position < hidden.shape[1]:
                        hidden[row, position] = _phi(config, units[0], original[row, position])
                for position in suffix:
                    if position < hidden.shape[1]:
                        hidden[row, position] = _phi(config, units[0 if config.tied_weights else 1], original[row, position])
            return hidden if isinstance(output, torch.Tensor) else (hidden,) + tuple(output[1:])

        handles.append(host.__dict__["_layer"].register_forward_hook(hook))
    return handles


def _reference(model, inputs, interventions, mask=None, setup=None):
    """The main output with ``setup`` active (None: no adapter) plus the ReFT adapters in
    ``interventions`` (``[(name, config)]``, applied in order) by hand."""
    mask = inputs["attention_mask"] if mask is None else mask
    handles = [h for name, config in interventions for h in _reference_hooks(model, name, config, mask)]
    try:
        with AdapterSetup(setup) if setup is not None else _no_setup(model):
            with torch.no_grad():
                return main_output(model(**inputs))
    finally:
        for handle in handles:
            handle.remove()


class _no_setup:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.saved = self.model.adapters_config.active_setup
        self.model.set_active_adapters(None)

    def __exit__(self, *exc):
        self.model.set_active_adapters(self.saved)


# -- configs ---------------------------------------------------------------------------------------


def test_configs_have_adapterhubs_ids_fields_and_defaults():
    """The ids "loreft", "noreft", "direft" resolve to AdapterHub's classes and defaults; the saved
    dict has AdapterHub's fields (and subtract_projection, which AdapterHub does not write)."""
    loreft, noreft, direft = (adapters.AdapterConfig.load(i) for i in ("loreft", "noreft", "direft"))
    assert isinstance(loreft, LoReftConfig) and isinstance(noreft, NoReftConfig) and isinstance(direft, DiReftConfig)
    assert (loreft.layers, loreft.prefix_positions, loreft.suffix_positions, loreft.r) == ("all", 3, 0, 1)
    assert (loreft.orthogonality, loreft.subtract_projection, loreft.tied_weights, loreft.dropout) == (True, True, False, 0.05)
    assert (noreft.orthogonality, noreft.subtract_projection) == (False, True)
    assert (direft.orthogonality, direft.subtract_projection) == (False, False)
    assert set(loreft.to_dict()) == {
        "architecture", "layers", "prefix_positions", "suffix_positions", "r", "orthogonality", "tied_weights",
        "subtract_projection", "dropout", "non_linearity", "dtype", "output_reft", "init_weights_seed",
    }
    saved = LoReftConfig(layers=[1, 0]).to_dict()
    assert saved["architecture"] == "reft" and saved["layers"] == [1, 0]
    assert adapters.AdapterConfig.load(saved) == LoReftConfig(layers=[1, 0])
    assert adapters.AdapterConfig.load("loreft", r=4).r == 4


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("r", 0, "positive integer"),
        ("prefix_positions", -1, "non-negative integer"),
        ("suffix_positions", -2, "non-negative integer"),
        ("prefix_positions", 0, "suffix_positions is 0"),
        ("dropout", 1.0, "< 1"),
        ("dropout", -0.1, ">= 0"),
        ("non_linearity", "sigmoidish", "ACT2FN"),
        ("dtype", "int8", "'float32'"),
        ("layers", "some", "'all'"),
        ("layers", [-1], "layer indices"),
        ("layers", [], "non-empty"),
        ("orthogonality", 1, "True or False"),
        ("output_reft", False, "True"),
    ],
)
def test_bad_values_are_refused_naming_field_value_and_valid_form(field, value, fragment):
    with pytest.raises(AdapterConfigError) as error:
        LoReftConfig(**{field: value})
    message = str(error.value)
    assert field in message and (repr(value) in message or str(value) in message), message
    assert fragment in message, message


def test_layers_the_model_lacks_are_refused_at_add_adapter_and_nothing_is_added():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    with pytest.raises(AdapterConfigError, match=r"layers=\[1, 2\].*\[2\].*0 … 1"):
        model.add_adapter("r", config=LoReftConfig(layers=[1, 2]))
    assert "r" not in model.adapters_config.adapters
    assert [type(m) for m in model.modules()] == classes
    assert model.state_dict().keys() == before.keys()


# -- the intervention against its definition -----------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_each_variant_equals_its_definition_at_the_real_tokens(arch, variant):
    """bert's second row is right-padded, so suffix positions sit before the padding; every layer
    (or the one selected) is intervened on at exactly the listed positions."""
    config = _eval_config(VARIANTS[variant])
    model = _model(arch, configs={"r": config})
    inputs = make_inputs(arch)
    expected = _reference(model, inputs, [("r", config)])
    torch.testing.assert_close(run(model, inputs, "r"), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, run(model, inputs), atol=1e-3)
    hosts = [h.layer_idx for h in model._adapter_hosts if isinstance(h, ReftLayer)]
    assert hosts == ([1] if config.layers == (1,) else [0, 1])


def test_orthogonality_keeps_the_rows_of_r_orthonormal_after_any_update():
    model = _model(configs={"r": LoReftConfig(r=3)})
    for host in [h for h in model._adapter_hosts if isinstance(h, ReftLayer)]:
        for unit in host.refts["r"].units:
            rotation = unit.projection.weight
            torch.testing.assert_close(rotation @ rotation.t(), torch.eye(3), atol=1e-5, rtol=0)
    noreft = _model(configs={"n": NoReftConfig(r=3)})
    rotation = next(h for h in noreft._adapter_hosts if isinstance(h, ReftLayer)).refts["n"].units[0].projection.weight
    assert not torch.allclose(rotation @ rotation.t(), torch.eye(3), atol=1e-2)


@pytest.mark.parametrize("name", ["loreft", "noreft", "direft"])
def test_no_variant_is_the_identity_at_initialisation(name):
    """AdapterHub initialises W, b and R at random: a new adapter changes the output at once."""
    model = patched("bert")
    model.add_adapter("r", config=adapters.AdapterConfig.load(name, dropout=0.0))
    inputs = make_inputs("bert")
    assert not torch.allclose(run(model, inputs, "r"), run(model, inputs), atol=1e-4)


def test_left_padding_is_read_from_the_mask():
    """llama with a left-padded second row: the prefix starts at its first real token."""
    config = _eval_config(VARIANTS["loreft"])
    model = _model("llama", configs={"r": config})
    ids, mask = left_padded_prompt()
    inputs = {"input_ids": ids, "attention_mask": mask}
    expected = _reference(model, inputs, [("r", config)])
    torch.testing.assert_close(run(model, inputs, "r"), expected, atol=1e-5, rtol=1e-5)


def test_rows_shorter_than_the_positions_are_refused_naming_the_field_and_the_row():
    """Fewer real tokens than prefix_positions (or suffix_positions): a clear error before any
    intervention runs, naming the field, the row and its length. Prefix and suffix that would
    overlap (untied): refused too. A tied overlap is defined (each position once); so is a row of
    padding only (nothing to intervene on)."""
    configs = {
        "p": LoReftConfig(prefix_positions=5, dropout=0.0), "s": LoReftConfig(prefix_positions=0, suffix_positions=5),
        "ps": LoReftConfig(prefix_positions=3, suffix_positions=3),
        "tied": LoReftConfig(prefix_positions=3, suffix_positions=3, tied_weights=True, dropout=0.0),
    }
    model = _model(configs=configs)
    inputs = make_inputs("bert", seq=6)
    inputs["attention_mask"][1] = torch.tensor([1, 1, 1, 1, 0, 0])
    with pytest.raises(CompositionError, match=r"'p' has prefix_positions=5, but row 1 .* only 4 real tokens.*at least 5"):
        run(model, inputs, "p")
    with pytest.raises(CompositionError, match=r"'s' has suffix_positions=5, but row 1"):
        run(model, inputs, "s")
    with pytest.raises(CompositionError, match=r"'ps'.*first 3 and the last 3.*row 1 has only 4 real tokens"):
        run(model, inputs, "ps")
    expected = _reference(model, inputs, [("tied", model.adapters_config.adapters["tied"])])
    torch.testing.assert_close(run(model, inputs, "tied"), expected, atol=1e-5, rtol=1e-5)
    inputs["attention_mask"][1] = 1
    for name in configs:
        assert torch.isfinite(run(model, inputs, name)).all()  # 6 real tokens: every config fits
    inputs["attention_mask"][1] = 0  # a row of padding only: nothing to intervene on, nothing refused
    assert torch.isfinite(run(model, inputs, "p")).all()


def test_hidden_states_and_dtype_follow_the_intervention():
    model = _model(configs={"r": _eval_config(VARIANTS["loreft"])})
    inputs = make_inputs("bert")
    with AdapterSetup("r"), torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    model.add_adapter("d", config=LoReftConfig(dtype="float64", dropout=0.0))
    unit = next(h for h in model._adapter_hosts if isinstance(h, ReftLayer)).refts["d"].units[0]
    assert unit.learned_source.weight.dtype == torch.float64 and run(model, inputs, "d").dtype == torch.float32


def test_a_seed_gives_every_intervention_the_same_start_and_leaves_the_global_generator():
    model = patched("bert")
    state = torch.random.get_rng_state()
    model.add_adapter("s", config=LoReftConfig(init_weights_seed=3))
    assert torch.equal(torch.random.get_rng_state(), state)
    units = [u for h in model._adapter_hosts if isinstance(h, ReftLayer) for u in h.refts["s"].units]
    assert len(units) == 4 and all(torch.equal(u.learned_source.weight, units[0].learned_source.weight) for u in units)
    assert all(torch.equal(u.projection.weight, units[0].projection.weight) for u in units)


# -- composition ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_stack_parallel_and_batchsplit_equal_their_definitions(arch):
    a, b = _eval_config(VARIANTS["loreft"]), _eval_config(VARIANTS["direft"])
    model = _model(arch, configs={"a": a, "b": b})
    inputs = make_inputs(arch)
    alone_a, alone_b = run(model, inputs, "a"), run(model, inputs, "b")
    # Stack: at each layer b's intervention on a's output
    stacked = _reference(model, inputs, [("a", a), ("b", b)])
    torch.testing.assert_close(run(model, inputs, Stack("a", "b")), stacked, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(stacked, alone_a, atol=1e-3) and not torch.allclose(stacked, alone_b, atol=1e-3)
    # Parallel: the batch replicated, branch i runs adapter i
    parallel = run(model, inputs, Parallel("a", "b"))
    torch.testing.assert_close(parallel, torch.cat([alone_a, alone_b]), atol=1e-5, rtol=1e-5)
    # BatchSplit: row 0 through a, row 1 through b
    split = run(model, inputs, BatchSplit("a", "b", batch_sizes=[1, 1]))
    torch.testing.assert_close(split, torch.stack([alone_a[0], alone_b[1]]), atol=1e-5, rtol=1e-5)


def test_stack_with_lora_mixes_methods():
    config = _eval_config(VARIANTS["noreft"])
    model = _model("llama", configs={"lora": "lora", "r": config})
    inputs = make_inputs("llama")
    expected = _reference(model, inputs, [("r", config)], setup="lora")
    torch.testing.assert_close(run(model, inputs, Stack("lora", "r")), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, run(model, inputs, "r"), atol=1e-3)


@pytest.mark.parametrize(
    "setup, block",
    [
        (Split("r", "s", splits=[3, 3]), "Split"),
        (Average("r", "s"), "Average"),
        (Stack("s", Average("r", "lora")), "Average"),
    ],
)
def test_other_blocks_are_refused_at_activation_naming_block_adapter_and_method(setup, block):
    model = _model(configs={"r": "loreft", "s": "direft", "lora": "lora"})
    model.set_active_adapters("r")
    with pytest.raises(CompositionError) as error:
        model.set_active_adapters(setup)
    message = str(error.value)
    assert block in message and "'r'" in message and "reft" in message.lower()
    assert model.adapters_config.active_setup == Stack("r")


def test_fusion_of_reft_adapters_is_refused_naming_the_adapter_and_method():
    model = _model(configs={"r": "loreft", "s": "direft"})
    with pytest.raises(AdapterConfigError, match=r"Cannot fuse adapter 'r': its method reft has no fusion"):
        model.add_adapter_fusion(Fuse("r", "s"))
    assert not model.adapters_config.fusions


# -- merging, training, saving ---------------------------------------------------------------------


def test_reft_does_not_merge():
    model = _model(configs={"r": "loreft"})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_active_adapters("r")
    for call in (lambda: model.merge_adapter("r"), lambda: model.merge_and_unload(adapter_names="r"), model.merge_and_unload):
        with pytest.raises(adapters.AdapterError) as error:
            call()
        message = str(error.value)
        assert "'r'" in message and ("no layer weights" in message or "no weight to fold into" in message), message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_train_adapter_trains_only_the_interventions_and_keeps_r_orthonormal():
    model = _model(configs={"r": LoReftConfig(r=2, suffix_positions=1), "other": "loreft"})
    model.train_adapter("r")
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".refts.r." in k for k in trainable)
    assert not any(k.endswith(".base") for k in trainable)  # the parametrisation's fixed base
    assert {k.rsplit(".", 1)[-1] for k in trainable} == {"weight", "bias", "original"}
    frozen = {k: p.detach().clone() for k, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    inputs = make_inputs("bert")
    main_output(model(**inputs)).pow(2).mean().backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[k]) for k, p in model.named_parameters() if k in frozen)
    host = next(h for h in model._adapter_hosts if isinstance(h, ReftLayer))
    rotation = host.refts["r"].units[0].projection.weight
    torch.testing.assert_close(rotation @ rotation.t(), torch.eye(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["loreft", "direft"])
def test_save_and_load_round_trip_bit_for_bit(variant, tmp_path):
    config = _eval_config(VARIANTS[variant])
    model = _model("llama", configs={"r": config})
    inputs = make_inputs("llama")
    expected = run(model, inputs, "r")
    model.save_adapter(str(tmp_path), "r")
    fresh = patched("llama")
    assert fresh.load_adapter(str(tmp_path), set_active=True) == "r"
    assert fresh.adapters_config.adapters["r"] == config
    saved = {k: v for k, v in model.state_dict().items() if ".refts.r." in k}
    loaded = {k: v for k, v in fresh.state_dict().items() if ".refts.r." in k}
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert any(k.endswith("parametrizations.weight.0.base") for k in saved) == (variant == "loreft")
    assert torch.equal(run(fresh, inputs), expected)


def test_delete_restores_the_model_and_copies_are_independent():
    model = patched("bert")
    inputs = make_inputs("bert")
    base, classes = run(model, inputs), [type(m) for m in model.modules()]
    model.add_adapter("r", config="loreft", set_active=True)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(run(twin, inputs), run(model, inputs))
    model.delete_adapter("r")
    assert [type(m) for m in model.modules()] == classes and torch.equal(run(model, inputs), base)
    assert not any(isinstance(h, ReftLayer) for h in model._adapter_hosts)
    assert not torch.allclose(run(twin, inputs), base, atol=1e-4)  # the copy keeps its adapter


# -- architectures ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, head", ARCH_HEADS_LIGHT, ids=lambda v: str(v))
def test_every_architecture_runs_reft_bare_and_with_its_heads(arch, head):
    """The interventions change the output, deleting them restores it (vision: the first patch
    positions; encoder-decoders: encoder and decoder layers)."""
    model = patched(arch, head)
    inputs = make_inputs(arch)
    base = run(model, inputs)
    model.add_adapter("r", config=LoReftConfig(suffix_positions=1, dropout=0.0))
    out = run(model, inputs, "r")
    assert out.shape == base.shape and torch.isfinite(out).all() and not torch.allclose(out, base, atol=1e-5)
    model.delete_adapter("r")
    assert torch.equal(run(model, inputs), base)


def test_an_adapter_model_with_a_head_runs_and_saves_reft(tmp_path):
    config = _eval_config(VARIANTS["loreft"])
    torch.manual_seed(0)
    model = adapters.AutoAdapterModel.from_config(CONFIGS["bert"]()).eval()
    model.add_adapter("r", config=config)
    model.add_classification_head("r", num_labels=3)
    _perturb(model, "r")
    inputs = make_inputs("bert")
    model.set_active_adapters("r")
    with torch.no_grad():
        logits = model(**inputs).logits
    handles = _reference_hooks(model, "r", config, inputs["attention_mask"])
    try:
        with AdapterSetup(None, head_setup="r"), torch.no_grad():
            expected = model(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    model.save_adapter(str(tmp_path), "r")
    torch.manual_seed(0)
    fresh = adapters.AutoAdapterModel.from_config(CONFIGS["bert"]()).eval()
    fresh.load_adapter(str(tmp_path), set_active=True)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, logits)


# -- generation ------------------------------------------------------------------------------------------


def _greedy_reference(model, name, config, ids, mask, steps, extra=None):
    """Greedy decoding by full forward passes (no cache), the interventions applied by hand at the
    prompt's positions only (plus ``extra``): ``(tokens, per-step logits)``."""
    tokens, logits = ids, []
    for step in range(steps):
        full_mask = torch.cat([mask, torch.ones(mask.shape[0], step, dtype=mask.dtype)], dim=1)
        position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)
        prompt_mask = torch.cat([mask, torch.zeros_like(full_mask[:, mask.shape[1]:])], dim=1)  # generated: not prompt
        handles = _reference_hooks(model, name, config, prompt_mask, extra)
        try:
            with _no_setup(model), torch.no_grad():
                out = model(input_ids=tokens, attention_mask=full_mask, position_ids=position_ids, use_cache=False).logits[:, -1]
        finally:
            for handle in handles:
                handle.remove()
        logits.append(out)
        tokens = torch.cat([tokens, out.argmax(-1, keepdim=True)], dim=1)
    return tokens, torch.stack(logits, dim=1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generation_intervenes_on_the_prompt_only_with_and_without_the_cache(arch):
    config = _eval_config(VARIANTS["loreft"])
    model = _model(arch, "clm", configs={"r": config})
    model.set_active_adapters("r")
    ids, mask = left_padded_prompt()
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    cached = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs)
    uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    tokens, logits = _greedy_reference(model, "r", config, ids, mask, 4)
    assert torch.equal(cached.sequences, tokens)
    torch.testing.assert_close(torch.stack(cached.logits, 1), logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.stack(uncached.logits, 1), logits, atol=1e-4, rtol=0)


def test_generation_differs_from_adapterhubs_rule_of_intervening_on_each_new_token():
    """AdapterHub recomputes the positions on each decoding step's one-token input, so its cached
    decoding applies the prefix intervention to every generated token (and fails on left-padded
    prompts or with suffix positions, whose indices fall outside the one-token input). Computed
    here by hand for an unpadded prompt: it is not what generate() does."""
    config = _eval_config(LoReftConfig(r=2, prefix_positions=2))
    model = _model("llama", "clm", configs={"r": config})
    model.set_active_adapters("r")
    ids, mask = left_padded_prompt()
    ids, mask = ids[:1], torch.ones_like(mask[:1])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    ours = _greedy_reference(model, "r", config, ids, mask, 4)[1]
    prompt_length = ids.shape[1]
    every_new_token = lambda row, length: list(range(prompt_length, length))  # noqa: E731
    adapterhub = _greedy_reference(model, "r", config, ids, mask, 4, extra=every_new_token)[1]
    torch.testing.assert_close(torch.stack(out.logits, 1), ours, atol=1e-4, rtol=0)
    assert not torch.allclose(ours[:, 1:], adapterhub[:, 1:], atol=1e-3)
    torch.testing.assert_close(ours[:, 0], adapterhub[:, 0], atol=1e-5, rtol=0)  # the prompt pass agrees


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_encoder_decoder_generation_is_the_same_with_and_without_the_cache(arch):
    """The decoder's prompt is generate()'s start token: tied weights let one token be both prefix and suffix."""
    config = LoReftConfig(prefix_positions=1, suffix_positions=1, tied_weights=True, dropout=0.0)
    model = _model(arch, "seq2seq", configs={"r": config})
    inputs = {k: v for k, v in make_inputs(arch).items() if not k.startswith("decoder_")}
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    base = model.generate(**inputs, **kwargs)
    model.set_active_adapters("r")
    cached = model.generate(**inputs, use_cache=True, **kwargs)
    uncached = model.generate(**inputs, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), atol=1e-4, rtol=0)
    assert not torch.allclose(torch.stack(cached.logits), torch.stack(base.logits), atol=1e-3)


def test_a_pass_continuing_a_cache_outside_generate_intervenes_nowhere():
    config = _eval_config(VARIANTS["loreft"])
    model = _model("llama", "clm", configs={"r": config})
    model.set_active_adapters("r")
    ids = make_inputs("llama", padded=False)["input_ids"]
    with torch.no_grad():
        cache = returned_cache(model(input_ids=ids[:, :8], use_cache=True))
        continued = model(input_ids=ids[:, 8:], use_cache=True, **{CACHE_NAME: cache}).logits
    mask = torch.cat([torch.ones(2, 8, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)], dim=1)
    expected = _reference(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, [("r", config)], mask=mask)
    torch.testing.assert_close(continued, expected[:, 8:], atol=1e-4, rtol=0)


def test_parallel_generation_gives_each_branch_its_own_rows():
    a, b = _eval_config(VARIANTS["loreft"]), _eval_config(VARIANTS["direft"])
    model = _model("llama", "clm", configs={"a": a, "b": b})
    ids, mask = left_padded_prompt()
    kwargs = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    model.set_active_adapters(Parallel("a", "b"))
    both = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    alone = []
    for name in ("a", "b"):
        model.set_active_adapters(name)
        alone.append(model.generate(input_ids=ids, attention_mask=mask, **kwargs))
    assert torch.equal(both.sequences, torch.cat([alone[0].sequences, alone[1].sequences]))
    expected = torch.cat([torch.stack(alone[0].logits, 1), torch.stack(alone[1].logits, 1)])
    torch.testing.assert_close(torch.stack(both.logits, 1), expected, atol=1e-4, rtol=0)


# -- training details, plug-in interfaces ---------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_gradients():
    """The layer is recomputed in backward inside the pass's context, interventions included."""
    grads = []
    for checkpointing in (False, True):
        model = _model("llama", configs={"r": _eval_config(VARIANTS["noreft"])})
        model.train_adapter("r")
        if checkpointing:
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        main_output(model(**make_inputs("llama"))).pow(2).mean().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in grads[0].values())


def test_a_plugin_interface_admits_reft_by_its_method_name():
    from test_interface import tiny_patched

    assert adapters.AdapterMethod.of(LoReftConfig()) == ["reft"]
    model = tiny_patched(adapter_methods=["lora", "reft"])
    model.add_adapter("r", config=LoReftConfig(dropout=0.0))
    inputs = make_inputs("tiny")
    assert not torch.allclose(run(model, inputs, "r"), run(model, inputs), atol=1e-5)
    refusing = tiny_patched(adapter_methods=["lora"])
    with pytest.raises(ValueError, match="reft"):
        refusing.add_adapter("r", config="loreft")
    assert "r" not in refusing.adapters_config.adapters


def test_a_half_precision_model_keeps_the_orthogonal_projection_in_float32():
    """torch's orthogonal parametrisation needs a QR decomposition, which half precision lacks:
    converting the model (after or before adding) keeps R in float32 and the output in the model's dtype."""
    config = _eval_config(VARIANTS["loreft"])
    model = _model("llama", configs={"r": config})
    inputs = make_inputs("llama")
    expected = run(model, inputs, "r")
    unit = next(h for h in model._adapter_hosts if isinstance(h, ReftLayer)).refts["r"].units[0]
    parametrization = unit.projection.parametrizations.weight
    kept = (parametrization.original.detach().clone(), parametrization[0].base.clone())
    model.to(torch.bfloat16)
    assert unit.learned_source.weight.dtype == torch.bfloat16 and unit.projection.weight.dtype == torch.float32
    # never rounded through 16 bits: the trained original and the fixed base keep their values
    assert torch.equal(parametrization.original, kept[0]) and torch.equal(parametrization[0].base, kept[1])
    out = run(model, inputs, "r")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)


def test_suffix_positions_beyond_a_padded_rows_length_are_refused_where_adapterhub_crashes():
    """AdapterHub counts the suffix from the sequence's end, not the row's real tokens: for the
    right-padded row of 9 real tokens and suffix_positions=10 it indexes position −1 and fails
    with an IndexError (recorded in the fixtures' manifest); here the row is refused with an error
    naming the field, the row and its length, and rows that fit run."""
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), "fixtures", "adapterhub", "manifest.json")
    with open(path) as f:
        (failure,) = [c for c in json.load(f).get("adapterhub_failures", []) if c["case"] == "reft_long_suffix"]
    assert "index -1 is out of bounds" in failure["error"]
    config = adapters.AdapterConfig.load(failure["configs"][0]).replace(dropout=0.0)
    model = _model(configs={"r": config})
    inputs = make_inputs("bert")
    assert inputs["attention_mask"][1].sum() == 9 < config.suffix_positions
    with pytest.raises(CompositionError, match=rf"suffix_positions={config.suffix_positions}, but row 1 .* only 9 real tokens"):
        run(model, inputs, "r")
    inputs["attention_mask"][1] = 1
    expected = _reference(model, inputs, [("r", config)])
    torch.testing.assert_close(run(model, inputs, "r"), expected, atol=1e-5, rtol=1e-5)


def test_average_adapter_refuses_loreft_and_averages_noreft_linearly():
    """LoReFT's R is a nonlinear function of its parameters (the parametrisation keeps the rows'
    signs in them: averaging +1 and −1 loses a row), so average_adapter refuses it and adds
    nothing; NoReFT's parameters average linearly, and adapters drawn from different seeds whose
    fixed values differ are refused."""
    model = patched("bert")
    for index, name in enumerate(("a", "b")):
        model.add_adapter(name, config=LoReftConfig(r=2, init_weights_seed=5))
        perturb_adapter(model, name, scale=0.3, seed=index)
    with pytest.raises(adapters.AdapterConfigError, match="cannot average LoReFT adapters"):
        model.average_adapter("avg", ["a", "b"], weights=[0.5, 0.5])
    assert "avg" not in model.adapters_config.adapters
    for index, name in enumerate(("n1", "n2")):
        model.add_adapter(name, config=NoReftConfig(r=2))
        perturb_adapter(model, name, scale=0.3, seed=index)
    model.average_adapter("navg", ["n1", "n2"], weights=[0.25, 0.75])
    host = next(h for h in model._adapter_hosts if isinstance(h, ReftLayer))
    units = {n: host.refts[n].units[0] for n in ("n1", "n2", "navg")}
    expected = 0.25 * units["n1"].learned_source.weight + 0.75 * units["n2"].learned_source.weight
    torch.testing.assert_close(units["navg"].learned_source.weight, expected)
