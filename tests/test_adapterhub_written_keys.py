"""Files this library writes are files AdapterHub 1.3.0 reads: its key names, its configs.

For every case of ``tests/fixtures/adapterhub/manifest.json`` (files AdapterHub's own
``save_adapter`` / ``save_adapter_fusion`` wrote, on every architecture both libraries support) the
adapters are loaded with this library and saved again with this library's ``save_adapter`` /
``save_adapter_fusion``; the weight file must hold exactly AdapterHub's key set with bit-identical
tensors (no extra keys: this library writes none of its own), and ``adapter_config.json`` must say
what AdapterHub wrote, apart from the fields named in ``OUR_EXTRA_FIELDS`` (this library's
additions, at the values that mean AdapterHub's behaviour; AdapterHub keeps unknown fields as
attributes when it reads a config) and ``ADAPTERHUB_DEFAULTS_LEFT_OUT`` (AdapterHub fields this
library does not write, which AdapterHub fills in with these same defaults).

Where transformers 5 moved modules, the keys are written with transformers 4's paths (ViT's
``encoder.layer.N.output.output_adapters``, CLIP towers' ``vision_model.…``); the prefix pool is
repeated under every attention module (``<attention>.prefix_tuning.pool.prefix_tunings.…``) as
AdapterHub's module tree holds it; DistilBERT's prefixes are filed under ``self``, CLIP towers' under
``clip_<tower>_model_self_prefix``, encoder-decoders' invertible adapters under ``encoder.``, CLIP's
under ``text_model.``; a model with a head prefixes the base model's keys (``bert.``).

Checked in AdapterHub itself (a scratch script in the side venv with adapters 1.3.0 on
transformers 4.57.6, not part of the suite): the files this library wrote for every case of the
manifest, loaded with AdapterHub's ``load_adapter(..., use_safetensors=True)`` /
``load_adapter_fusion`` into the fixtures' tiny base models, give AdapterHub's recorded outputs
exactly (max abs difference 0) in 549 of the 559 cases run — DistilBERT prefix tuning (flat and
MLP), T5 ``seq_bn_inv`` and ``stack_lang_task``, the CLIP towers' prefix tuning and UniPELT and ViT
UniPELT among them; the other 10 (BERT/Llama DiReFT, ModernBERT's plug-in interface cases) do not
reproduce in that script with AdapterHub's own files either (state AdapterHub's init draws at
random), and the 4 cases with forward options were not run. Every ``adapter_config.json`` written
here reads back in AdapterHub (``AdapterConfig.load``) equal to the config AdapterHub wrote. The
same check found that a ``"version"`` below ``adapters.1.1.0`` (this library's own ``0.1.0``) made
AdapterHub rewrite every LoRA's ``alpha`` to ``r``: the files record ``adapters.1.3.0+<ours>``.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from packaging.version import Version
from safetensors.torch import load_file

from adapters.errors import AdapterConfigError
from adapters.models.xmod import remove_language_modules
from tests.test_fixtures_adapterhub_archs import HERE, MANIFEST, _base, _case_id, _compared_keys, _load_case, _run, _setup

# this library's additions to a method's config: (the value it writes when the adapter behaves as
# AdapterHub's, why the field exists)
OUR_EXTRA_FIELDS = {
    "target_modules": (None, "PEFT's module targeting, for LoRA-family adapters (None: AdapterHub's *_lora switches)"),
    "exclude_modules": (None, "PEFT's module targeting (None: AdapterHub's placement)"),
    "layers_to_transform": (None, "PEFT's layer selection (None: every layer not in leave_out)"),
    "layers_pattern": (None, "PEFT's layer selection (None: every layer not in leave_out)"),
    "modules_to_save": (None, "PEFT's fully trained modules (None: none, as in AdapterHub)"),
    "feedforward_modules": (None, "PEFT's IA³ feed-forward targeting (None: AdapterHub's placement)"),
    "rank_pattern": ({}, "PEFT's per-module ranks ({}: r everywhere, as in AdapterHub)"),
    "alpha_pattern": ({}, "PEFT's per-module alphas ({}: alpha everywhere, as in AdapterHub)"),
    "use_rslora": (False, "PEFT's rank-stabilised scaling (False: AdapterHub's alpha / r)"),
    "loftq_config": (None, "PEFT's LoftQ initialisation (None: AdapterHub's initialisation)"),
    "bias": ("none", "PEFT's bias training (none: AdapterHub trains no bias)"),
    "shift_positions": (False, "prefix tuning's position shift (False: AdapterHub's positions)"),
    "subtract_projection": (True, "NoReFT's form (True: AdapterHub's h + Rᵀ(Wh + b − Rh))"),
    "tokenizer_name_or_path": (None, "prompt tuning's text initialisation (None: AdapterHub's random init)"),
    "save_projection": (False, "VeRA's shared projections stored in the file (False: rebuilt from the seed)"),
    "projection_prng_key": (0, "VeRA's projection seed (0: AdapterHub's fixed seed)"),
}
# AdapterHub fields this library leaves out of a config, with the default AdapterHub fills in when it
# reads the file (LoRAConfig's VeRA / gating / DoRA switches, which its MTL-LoRA config inherits)
ADAPTERHUB_DEFAULTS_LEFT_OUT = {
    "vera_d": None, "vera_b": None, "use_dora": False, "dtype": None, "composition_mode": "add", "use_gating": False,
}
# fields outside "config" that may differ: the version (checked apart: see _same_meta), the model's
# name (the path it was loaded from here), and CLIPModel's hidden_size (CLIPConfig has none:
# AdapterHub writes null, this library the text tower's width; AdapterHub's loader does not read it)
TOP_LEVEL_FREE = {"version", "model_name"}


def _weights(folder: str, safe: str, legacy: str) -> dict:
    path = os.path.join(folder, safe)
    if os.path.exists(path):
        return load_file(path)
    return torch.load(os.path.join(folder, legacy), weights_only=True)


def _same_config(ours, theirs, where: str) -> None:
    """``ours`` says what ``theirs`` says (recursively), up to the tables above."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for key in set(ours) | set(theirs):
            if key not in theirs:
                assert key in OUR_EXTRA_FIELDS and ours[key] == OUR_EXTRA_FIELDS[key][0], f"{where}.{key}: {ours[key]!r}"
            elif key not in ours:
                assert key in ADAPTERHUB_DEFAULTS_LEFT_OUT and theirs[key] == ADAPTERHUB_DEFAULTS_LEFT_OUT[key], (
                    f"{where}.{key} missing (AdapterHub: {theirs[key]!r})"
                )
            else:
                _same_config(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list) and isinstance(ours, list):
        assert len(ours) == len(theirs), where
        for index, (mine, its) in enumerate(zip(ours, theirs)):
            _same_config(mine, its, f"{where}[{index}]")
    else:
        assert ours == theirs, f"{where}: ours {ours!r}, AdapterHub's {theirs!r}"


def _same_meta(ours: dict, theirs: dict, arch: str) -> None:
    free = TOP_LEVEL_FREE | ({"hidden_size"} if arch == "clip" and theirs.get("hidden_size") is None else set())
    assert set(ours) == set(theirs)
    for key in set(theirs) - free - {"config"}:
        assert ours[key] == theirs[key], (key, ours[key], theirs[key])
    # AdapterHub rewrites a LoRA's alpha to r in files below "adapters.1.1.0" (its fix for an old
    # scaling bug): the version must read as AdapterHub's format at 1.1.0 or later
    assert ours["version"].startswith("adapters.") and Version(ours["version"][len("adapters."):]) >= Version("1.1.0")
    _same_config(ours["config"], theirs["config"], "config")


def _same_weights(ours: dict, theirs: dict) -> None:
    assert sorted(set(theirs) - set(ours)) == [], "keys AdapterHub wrote and we did not"
    assert sorted(set(ours) - set(theirs)) == [], "keys we wrote and AdapterHub did not"
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=_case_id)
def test_saved_files_hold_adapterhubs_keys_and_config(case, tmp_path):
    model, _, _ = _load_case(case)
    arch_dir = os.path.join(HERE, case["arch"])
    for adapter in case["adapters"]:
        folder = tmp_path / adapter["name"]
        model.save_adapter(str(folder), adapter["name"], with_head=False)
        theirs = os.path.join(arch_dir, adapter["dir"])
        ours_weights = _weights(str(folder), "adapter.safetensors", "pytorch_adapter.bin")
        # (AdapterHub's head case files hold the head too: save_head's, compared below)
        theirs_weights = {k: v for k, v in _weights(theirs, "adapter.safetensors", "pytorch_adapter.bin").items()
                          if not k.startswith("heads.")}
        _same_weights(ours_weights, theirs_weights)
        with open(folder / "adapter_config.json") as mine, open(os.path.join(theirs, "adapter_config.json")) as its:
            _same_meta(json.load(mine), json.load(its), case["arch"])
    if case["fusion"]:
        folder = tmp_path / "fusion"
        model.save_adapter_fusion(str(folder), case.get("fusion_name") or ",".join(a["name"] for a in case["adapters"]))
        theirs = os.path.join(arch_dir, case["fusion"])
        _same_weights(_weights(str(folder), "model_adapter_fusion.safetensors", "pytorch_model_adapter_fusion.bin"),
                      _weights(theirs, "model_adapter_fusion.safetensors", "pytorch_model_adapter_fusion.bin"))
        with open(folder / "adapter_fusion_config.json") as mine, open(os.path.join(theirs, "adapter_fusion_config.json")) as its:
            _same_meta(json.load(mine), json.load(its), case["arch"])


def test_legacy_format_writes_adapterhubs_file_names(tmp_path):
    """``use_safetensors=False`` writes AdapterHub's own default file, ``pytorch_adapter.bin``,
    with the same keys AdapterHub wrote (DistilBERT prefix tuning: the pool and its copies)."""
    case = next(c for c in MANIFEST["cases"] if c["arch"] == "distilbert" and c["case"] == "prefix_tuning")
    model, _, _ = _load_case(case)
    model.save_adapter(str(tmp_path), "a", use_safetensors=False)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "pytorch_adapter.bin"]
    theirs = _weights(os.path.join(HERE, "distilbert", case["adapters"][0]["dir"]), "-", "pytorch_adapter.bin")
    _same_weights(torch.load(tmp_path / "pytorch_adapter.bin", weights_only=True), theirs)
    assert any(".prefix_tuning.pool.prefix_tunings.a.self." in key for key in theirs)


# -- X-MOD: AdapterHub deletes the language modules ------------------------------------------------


@pytest.mark.parametrize("name", ["seq_bn", "lora", "prefix_tuning", "stack"])
def test_xmod_without_language_modules_reproduces_adapterhub_on_a_pretrained_xmod(name):
    """AdapterHub's ``adapters.init`` deletes X-MOD's language modules; this library keeps them (its
    X-MOD computes what the checkpoint was trained to compute). The fixtures' X-MOD has silent
    language modules (zero output layers), so both agree there; with language modules that add
    something, as a pretrained X-MOD's do, AdapterHub's X-MOD checkpoints give another output here,
    and :func:`~adapters.models.xmod.remove_language_modules` gives AdapterHub's."""
    case = next(c for c in MANIFEST["cases"] if c["arch"] == "xmod" and c["case"] == name)
    model, inputs, expected = _load_case(case)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a pretrained-style X-MOD: its language modules change the output
        for module in model.modules():
            if type(module).__name__ == "XmodAdapter":
                for parameter in module.dense2.parameters():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator))
    setup = _setup(case["setup_tree"])
    keys = _compared_keys(case, expected)
    kept = _run(model, inputs, setup)
    assert max((kept[key] - expected[key]).abs().max() for key in keys) > 1e-2
    languages = len(model.config.languages)
    assert remove_language_modules(model) == languages * model.config.num_hidden_layers
    removed = _run(model, inputs, setup)
    for key in keys:
        torch.testing.assert_close(removed[key], expected[key], atol=1e-4, rtol=1e-4)


def test_remove_language_modules_names_a_model_without_them():
    with pytest.raises(AdapterConfigError, match=r"remove_language_modules\(model\): BertModel has no X-MOD output blocks"):
        remove_language_modules(_base("bert"))
