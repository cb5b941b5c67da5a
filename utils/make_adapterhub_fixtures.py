"""Write the AdapterHub 1.3.0 reference fixtures under tests/fixtures/adapterhub/.

Run it in a side venv that has AdapterHub's library, never in this project's environment::

    python -m venv /tmp/ah && /tmp/ah/bin/pip install torch==2.13.0 && \
        /tmp/ah/bin/pip install adapters==1.3.0 transformers==4.57.6
    /tmp/ah/bin/python utils/make_adapterhub_fixtures.py

For each architecture it builds a tiny model from a config (hidden size 32), saves it, and for each
case adds the adapters with AdapterHub, perturbs every adapter parameter (so a wrong key or formula
cannot pass by leaving the adapter at its initial value), saves them with AdapterHub's
``save_adapter`` and records the output AdapterHub computes. The layout is that of
``../shared/fixtures/adapterhub`` (see tests/fixture_utils.py), so the same reader serves both.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zlib

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "adapterhub")


def tiny_models():
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99)
    yield "bert", BertModel, BertConfig(**common, max_position_embeddings=64)
    yield "llama", LlamaModel, LlamaConfig(**common, num_key_value_heads=2, max_position_embeddings=64)


def cases():
    """``(case name, [(adapter name, config)], setup[, options])``; configs are AdapterHub's classes.

    ``options``: ``archs`` (the tiny models the case runs on; default all), ``perturb``
    (``"diagonal"``: perturb square matrices on their diagonal only; ``"none"``: keep the seeded
    initialisation), ``adapterhub_fails`` (the
    case shows an AdapterHub failure: its error is recorded under ``adapterhub_failures``, no files),
    ``forward`` (extra keyword arguments of the forward pass, JSON values; written to the manifest),
    ``share`` (groups of adapter names given to ``share_parameters`` once all are added and perturbed,
    before they are saved; written to the manifest)."""
    from adapters import AdapterPlusConfig, DoRAConfig, DvoRAConfig, Stack, VeraConfig

    # AdapterPlus's defaults at factors that fit hidden 32, and as they are
    yield "adapterplus", [("a", AdapterPlusConfig(reduction_factor=8))], "a"
    yield "adapterplus_r16", [("a", AdapterPlusConfig(reduction_factor=16, stochastic_depth=0.0))], "a"
    # the defaults as they are: reduction 96 leaves hidden 32 no bottleneck, which AdapterHub makes 1 wide
    yield "adapterplus_default", [("a", AdapterPlusConfig())], "a", {"archs": ["bert"]}
    # VeRA: AdapterHub saves no projections and draws them again from init_weights_seed, so every
    # case sets one. Trained AdapterHub VeRA matrices are dense (every entry trains): "vera" perturbs
    # them all; "vera_diagonal" keeps them diagonal (the paper's vectors). AdapterHub draws one
    # projection pair with the first layer's shape, so its default q/v placement fails on Llama's
    # grouped-query attention (v is 16 wide): "vera_gqa" records that; the others adapt q only
    # (AdapterHub accepts "o" in attn_matrices, but places nothing there).
    yield "vera", [("a", VeraConfig(r=4, init_weights_seed=11))], "a", {"archs": ["bert"]}
    yield "vera_q", [("a", VeraConfig(r=4, alpha=16, init_weights_seed=12, attn_matrices=["q"]))], "a"
    yield "vera_diagonal", [("a", VeraConfig(r=4, init_weights_seed=13, vera_d=1.0, vera_b=1.0, attn_matrices=["q"]))], "a", {
        "perturb": "diagonal",
    }
    yield "vera_gqa", [("a", VeraConfig(r=4, init_weights_seed=14))], "a", {"archs": ["llama"], "adapterhub_fails": True}
    yield "dvora", [("a", DvoRAConfig(init_weights_seed=15, attn_matrices=["v"]))], "a"
    # DoRA: AdapterHub stores the magnitude as m.weight (d_out x 1); "dora_alpha" (alpha != r)
    # shows its norm of W + BA without the scaling
    yield "dora", [("a", DoRAConfig(attn_matrices=["v"]))], "a"
    yield "dora_alpha", [("a", DoRAConfig(r=4, alpha=12, attn_matrices=["v"]))], "a", {"archs": ["llama"]}
    # ReFT: the inputs' second row is right-padded (9 real tokens), so suffix positions must follow
    # the attention mask. AdapterHub does not write DiReFT's subtract_projection (a class attribute,
    # not a field), so "direft" reloads as NoReFT there too; "reft_stack" shows that AdapterHub runs
    # only the first adapter of a setup
    from adapters import DiReftConfig, LoReftConfig, NoReftConfig

    yield "loreft", [("a", LoReftConfig(r=2, suffix_positions=2))], "a"
    yield "noreft", [("a", NoReftConfig(suffix_positions=1))], "a"
    yield "direft", [("a", DiReftConfig(r=2, non_linearity="relu"))], "a"
    yield "loreft_tied", [("a", LoReftConfig(layers=[1], prefix_positions=2, suffix_positions=2, r=2, tied_weights=True))], "a"
    yield "loreft_seeded", [("a", LoReftConfig(r=2, suffix_positions=1, init_weights_seed=7))], "a", {"perturb": "none"}
    # more suffix positions than the padded row's 9 real tokens: AdapterHub indexes before the row's start
    yield "reft_long_suffix", [("a", LoReftConfig(prefix_positions=0, suffix_positions=10))], "a", {
        "archs": ["bert"], "adapterhub_fails": True,
    }
    yield "reft_stack", [("a", NoReftConfig(prefix_positions=1, suffix_positions=1)), ("b", NoReftConfig(r=2))], Stack("a", "b")
    # MTL-LoRA: a MultiTask routes each row to its task's adapter (task ids as adapter names, which
    # AdapterHub takes as a list); "mtl_lora_shared": three tasks share A and the B_k
    # (share_parameters), row 0 runs task c, row 1 task a; "mtl_lora_ffn": two unshared tasks on
    # every linear layer of the second block (small files: a few modules each). AdapterHub's TaskSpecificLinear never calls
    # nn.Module.__init__, so task_specific_matrix_type="linear" cannot be added: "mtl_lora_linear"
    from adapters import MTLLoRAConfig, MultiTask

    shared = MTLLoRAConfig(r=4, alpha=64, n_up_projection=3, weights_sharpness=0.5, attn_matrices=["q"])
    yield "mtl_lora_shared", [(t, shared) for t in "abc"], MultiTask("a", "b", "c"), {
        "share": [["a", "b", "c"]], "forward": {"task_ids": ["c", "a"]},
    }
    ffn = MTLLoRAConfig(r=2, alpha=32, intermediate_lora=True, output_lora=True, leave_out=[0])
    yield "mtl_lora_ffn", [("a", ffn), ("b", ffn)], MultiTask("a", "b"), {"forward": {"task_ids": ["b", "a"]}}
    linear = MTLLoRAConfig(r=4, n_up_projection=2, task_specific_matrix_type="linear")
    yield "mtl_lora_linear", [("a", linear), ("b", linear)], MultiTask("a", "b"), {
        "archs": ["bert"], "adapterhub_fails": True, "forward": {"task_ids": ["b", "a"]},
    }


def perturb(model, name: str, seed: int, diagonal: bool = False) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            # frozen ones (VeRA's shared projections) are never trained, so never perturbed
            if parameter.requires_grad and (f".{name}." in key or key.endswith(f".{name}")):
                noise = torch.randn(parameter.shape, generator=generator) * 0.1
                if key.endswith("parametrizations.weight.original"):
                    # torch's orthogonal parametrisation keeps signs (±1) on this diagonal that training
                    # never changes (no gradient reaches them); noise there would flip or zero rows
                    noise.diagonal().zero_()
                if diagonal and parameter.dim() == 2 and parameter.shape[0] == parameter.shape[1]:
                    noise = torch.diag(torch.diagonal(noise))
                parameter.add_(noise)


def provide_stochastic_depth() -> None:
    """AdapterHub builds its drop-path from ``torchvision.ops.StochasticDepth`` and refuses
    ``stochastic_depth > 0`` without torchvision. No torchvision build on the registry matches
    torch 2.13's operator ABI, so where it cannot be imported this stands in: row-mode stochastic
    depth (per sample, kept entries scaled by 1/(1-p)) in training, the identity in eval mode. The
    fixtures are recorded in eval mode, where both are the identity."""
    try:
        import torchvision.ops.stochastic_depth  # noqa: F401  (the real one imports: use it)

        return
    except Exception:
        pass
    import types

    from torch import nn

    class StochasticDepth(nn.Module):
        def __init__(self, p: float, mode: str):
            super().__init__()
            self.p, self.mode = p, mode

        def forward(self, x):
            if not self.training or self.p == 0.0:
                return x
            keep = x.new_empty([x.shape[0]] + [1] * (x.ndim - 1)).bernoulli_(1 - self.p)
            return x * keep / (1 - self.p)

    ops = types.ModuleType("torchvision.ops")
    stochastic_depth = types.ModuleType("torchvision.ops.stochastic_depth")
    stochastic_depth.StochasticDepth = StochasticDepth
    ops.stochastic_depth = stochastic_depth
    sys.modules.update({"torchvision": types.ModuleType("torchvision"), "torchvision.ops": ops,
                        "torchvision.ops.stochastic_depth": stochastic_depth})
    import adapters.methods.modeling

    adapters.methods.modeling.is_torchvision_available = lambda: True


def main() -> None:
    import adapters
    import transformers

    provide_stochastic_depth()

    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    manifest = {"anchor": f"adapters {adapters.__version__}", "transformers": transformers.__version__, "cases": []}
    for arch, model_class, config in tiny_models():
        arch_dir = os.path.join(OUT, arch)
        torch.manual_seed(0)
        base = model_class(config).eval()
        with torch.no_grad():  # BERT initialises its biases to 0; trained ones are not (AdapterHub's DoRA scales them)
            bias_generator = torch.Generator().manual_seed(2)
            for key, parameter in base.named_parameters():
                if key.endswith(".bias"):
                    parameter.normal_(0.0, 0.1, generator=bias_generator)
        base.save_pretrained(os.path.join(arch_dir, "base"))
        generator = torch.Generator().manual_seed(1)
        inputs = {
            "input_ids": torch.randint(1, config.vocab_size, (2, 12), generator=generator),
            "attention_mask": torch.tensor([[1] * 12, [1] * 9 + [0] * 3]),
        }
        from safetensors.torch import save_file

        save_file(inputs, os.path.join(arch_dir, "inputs.safetensors"))
        for case, adapter_list, setup, *more in cases():
            options = more[0] if more else {}
            if arch not in options.get("archs", [arch]):
                continue
            # each case draws its adapters' initial weights from its own seed, so adding a case
            # leaves the others' files as they were
            torch.manual_seed(zlib.crc32(f"{arch}/{case}".encode()))
            model = model_class.from_pretrained(os.path.join(arch_dir, "base")).eval()
            model.config._name_or_path = f"tiny-{arch}"  # what AdapterHub records as model_name, not a local path
            adapters.init(model)
            if options.get("adapterhub_fails"):
                try:
                    for name, adapter_config in adapter_list:
                        model.add_adapter(name, config=adapter_config)
                    model.set_active_adapters(setup)
                    with torch.no_grad():
                        model(**inputs, **options.get("forward", {}))
                except Exception as error:  # the failure is the fixture
                    manifest.setdefault("adapterhub_failures", []).append({
                        "arch": arch, "case": case, "error": f"{type(error).__name__}: {error}",
                        "configs": [config.to_dict() for _, config in adapter_list], "setup": repr(setup),
                    })
                    continue
                raise AssertionError(f"{case} on {arch} was expected to fail in AdapterHub, and ran")
            entries = []
            for index, (name, adapter_config) in enumerate(adapter_list):
                model.add_adapter(name, config=adapter_config)
                if options.get("perturb") != "none":  # "none": the adapter as its seeded initialisation made it
                    perturb(model, name, seed=100 + index, diagonal=options.get("perturb") == "diagonal")
            for group in options.get("share", []):
                model.share_parameters(group)
            for name, _ in adapter_list:
                folder = os.path.join(case, name)
                os.makedirs(os.path.join(arch_dir, folder), exist_ok=True)  # AdapterHub makes only the last folder
                model.save_adapter(os.path.join(arch_dir, folder), name)
                entries.append({"name": name, "dir": folder, "config": case})
            model.set_active_adapters(setup)
            model.eval()  # the adapters were added in training mode (drop-path would drop rows)
            with torch.no_grad():
                out = model(**inputs, **options.get("forward", {})).last_hidden_state.contiguous()
                model.set_active_adapters(None)
                base_out = model(**inputs).last_hidden_state
            save_file({"out": out}, os.path.join(arch_dir, case, "expected.safetensors"))
            manifest["cases"].append({
                "arch": arch, "case": case, "kind": "text", "adapters": entries, "fusion": None,
                "setup": repr(setup), "expected": f"{case}/expected.safetensors",
                "differs_from_base": not torch.allclose(out, base_out, atol=1e-4),
                **{key: options[key] for key in ("forward", "share") if key in options},
            })
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(manifest['cases'])} cases to {os.path.relpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
