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

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "adapterhub")


def tiny_models():
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99)
    yield "bert", BertModel, BertConfig(**common, max_position_embeddings=64)
    yield "llama", LlamaModel, LlamaConfig(**common, num_key_value_heads=2, max_position_embeddings=64)


def cases():
    """``(case name, [(adapter name, config)], setup)``; configs are AdapterHub's classes."""
    from adapters import AdapterPlusConfig

    # AdapterPlus's default reduction factor 96 leaves hidden 32 a width of 0, which AdapterHub
    # raises to 1 and this library refuses; the defaults otherwise, at a factor that fits
    yield "adapterplus", [("a", AdapterPlusConfig(reduction_factor=8))], "a"
    yield "adapterplus_r16", [("a", AdapterPlusConfig(reduction_factor=16, stochastic_depth=0.0))], "a"


def perturb(model, name: str, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if f".{name}." in key or key.endswith(f".{name}"):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


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
        base.save_pretrained(os.path.join(arch_dir, "base"))
        generator = torch.Generator().manual_seed(1)
        inputs = {
            "input_ids": torch.randint(1, config.vocab_size, (2, 12), generator=generator),
            "attention_mask": torch.tensor([[1] * 12, [1] * 9 + [0] * 3]),
        }
        from safetensors.torch import save_file

        save_file(inputs, os.path.join(arch_dir, "inputs.safetensors"))
        for case, adapter_list, setup in cases():
            model = model_class.from_pretrained(os.path.join(arch_dir, "base")).eval()
            model.config._name_or_path = f"tiny-{arch}"  # what AdapterHub records as model_name, not a local path
            adapters.init(model)
            entries = []
            for index, (name, adapter_config) in enumerate(adapter_list):
                model.add_adapter(name, config=adapter_config)
                perturb(model, name, seed=100 + index)
                folder = os.path.join(case, name)
                os.makedirs(os.path.join(arch_dir, folder), exist_ok=True)  # AdapterHub makes only the last folder
                model.save_adapter(os.path.join(arch_dir, folder), name)
                entries.append({"name": name, "dir": folder, "config": case})
            model.set_active_adapters(setup)
            model.eval()  # the adapters were added in training mode (drop-path would drop rows)
            with torch.no_grad():
                out = model(**inputs).last_hidden_state.contiguous()
                model.set_active_adapters(None)
                base_out = model(**inputs).last_hidden_state
            save_file({"out": out}, os.path.join(arch_dir, case, "expected.safetensors"))
            manifest["cases"].append({
                "arch": arch, "case": case, "kind": "text", "adapters": entries, "fusion": None,
                "setup": repr(setup), "expected": f"{case}/expected.safetensors",
                "differs_from_base": not torch.allclose(out, base_out, atol=1e-4),
            })
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(manifest['cases'])} cases to {os.path.relpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
