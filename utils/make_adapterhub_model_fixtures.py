"""Write the AdapterHub 1.3.0 whole-model fixtures under tests/fixtures/adapterhub_models/.

Run it in a side venv that has AdapterHub's library, never in this project's environment::

    python -m venv /tmp/ah && /tmp/ah/bin/pip install torch==2.13.0 && \
        /tmp/ah/bin/pip install adapters==1.3.0 transformers==4.57.6
    HF_HUB_OFFLINE=1 python utils/make_adapterhub_model_fixtures.py --write-ours   # this project's venv
    HF_HUB_OFFLINE=1 /tmp/ah/bin/python utils/make_adapterhub_model_fixtures.py

The first command (in this project's environment) writes ``written_here/``: the ``adapter_model``
case built and saved with this library's ``save_pretrained``; the second (AdapterHub) loads that
folder with AdapterHub's ``AutoAdapterModel.from_pretrained`` and records AdapterHub's output on it
(``written_here.expected.safetensors``), so the other direction (files written here, read by
AdapterHub) is checked against what AdapterHub computes.

Each case builds a tiny BERT (hidden size 32) with AdapterHub, adds adapters (and fusions, heads),
perturbs every adapter and head parameter (a wrong key or a fresh initialisation cannot pass), and
writes the folder AdapterHub's ``save_pretrained`` writes (``config.json`` with its ``"adapters"``
entry, ``model.safetensors``) plus ``expected.safetensors``: the output AdapterHub computes for
``inputs.safetensors`` (row 1 right-padded) under the case's setup. ``manifest.json`` lists each
case: how to load it (``"adapter_model"``: ``AutoAdapterModel.from_pretrained``;
``"transformers"``: transformers' own class, then ``adapters.init``), the setup to activate (as
``AdapterCompositionBlock.to_dict`` writes it) and the output recorded.

Cases:

* ``adapter_model``: seq_bn ``a`` and ``c``, LoRA ``b``, the fusion ``a,c`` and a classification
  head ``a``; recorded under ``Stack(b, Fuse(a, c))``.
* ``static_head``: ``BertForSequenceClassification`` after ``adapters.init`` with seq_bn ``a`` and
  prefix tuning ``p`` (AdapterHub also stores the prefix pool once per layer); recorded under
  ``Stack(a, p)``.
* ``quickstart``: AdapterHub's quickstart folder: ``save_pretrained(p)`` of an AdapterModel with
  adapter and head ``sst-2``, then ``save_adapter(p, "sst-2")`` into the same folder.
"""

from __future__ import annotations

import json
import os
import shutil

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "adapterhub_models")


def _config(transformers):
    return transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=64,
        max_position_embeddings=32, pad_token_id=0,
    )


def _perturb(model, seed: int) -> None:
    """Add noise to every adapter, fusion and head parameter (AdapterHub initialises some to zero)."""
    generator = torch.Generator().manual_seed(seed)
    markers = (".adapters.", ".loras.", "adapter_fusion_layer", "prefix_tuning", "heads.", "classifier.")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(marker in name for marker in markers):
                param.add_(0.2 * torch.randn(param.shape, generator=generator))


def _inputs() -> dict:
    input_ids = torch.tensor([[2, 5, 9, 13, 17, 21, 3], [2, 7, 11, 3, 0, 0, 0]])
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}


def adapter_model_case(adapters, transformers, folder: str) -> dict:
    from adapters.composition import Fuse, Stack

    model = adapters.BertAdapterModel(_config(transformers))
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="lora[r=4]")
    model.add_adapter("c", config="seq_bn[reduction_factor=8]")
    model.add_adapter_fusion(Fuse("a", "c"))
    model.add_classification_head("a", num_labels=3)
    _perturb(model, 1)
    setup = Stack("b", Fuse("a", "c"))
    model.set_active_adapters(setup)
    model.active_head = "a"
    model.save_pretrained(folder)
    model.eval()
    with torch.no_grad():
        logits = model(**_inputs()).logits
    return {"load": "adapter_model", "setup": setup.to_dict(), "head": "a", "expected": logits}


def static_head_case(adapters, transformers, folder: str) -> dict:
    from adapters.composition import Stack

    torch.manual_seed(2)
    model = transformers.BertForSequenceClassification(_config(transformers))
    adapters.init(model)
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("p", config="prefix_tuning[prefix_length=3,bottleneck_size=8]")
    _perturb(model, 2)
    setup = Stack("a", "p")
    model.set_active_adapters(setup)
    model.save_pretrained(folder)
    model.eval()
    with torch.no_grad():
        logits = model(**_inputs()).logits
    return {"load": "transformers", "model_class": "BertForSequenceClassification", "setup": setup.to_dict(), "expected": logits}


def quickstart_case(adapters, transformers, folder: str) -> dict:
    from adapters.composition import Stack

    model = adapters.BertAdapterModel(_config(transformers))
    model.add_adapter("sst-2", config="seq_bn")
    model.add_classification_head("sst-2", num_labels=2)
    _perturb(model, 3)
    model.set_active_adapters("sst-2")
    model.save_pretrained(folder)
    model.save_adapter(folder, "sst-2")
    model.eval()
    with torch.no_grad():
        logits = model(**_inputs()).logits
    return {"load": "adapter_model", "setup": Stack("sst-2").to_dict(), "head": "sst-2", "expected": logits}


CASES = {"adapter_model": adapter_model_case, "static_head": static_head_case, "quickstart": quickstart_case}


WRITTEN_HERE = "written_here"


def write_ours() -> None:
    """In this project's environment: ``written_here/`` saved by this library (see the module docstring)."""
    import adapters
    import transformers

    folder = os.path.join(OUT, WRITTEN_HERE)
    shutil.rmtree(folder, ignore_errors=True)
    adapter_model_case(adapters, transformers, folder)
    print(f"wrote {folder} with adapters {adapters.__version__}")


def read_ours(adapters, transformers) -> dict:
    """With AdapterHub: load ``written_here/`` and record AdapterHub's output under the case's setup."""
    from adapters.composition import Fuse, Stack

    model = adapters.AutoAdapterModel.from_pretrained(os.path.join(OUT, WRITTEN_HERE))
    model.eval()
    setup = Stack("b", Fuse("a", "c"))
    model.set_active_adapters(setup)
    model.active_head = "a"
    with torch.no_grad():
        logits = model(**_inputs()).logits
    return {"load": "adapter_model", "setup": setup.to_dict(), "head": "a", "expected": logits, "written_by": "this library"}


def main() -> None:
    import adapters
    import transformers
    from safetensors.torch import save_file

    if not os.path.isdir(os.path.join(OUT, WRITTEN_HERE)):
        raise SystemExit(f"{os.path.join(OUT, WRITTEN_HERE)} is missing: run this script with --write-ours in this project's venv first.")
    torch.manual_seed(0)
    for entry in os.listdir(OUT):  # everything but the folder this library wrote
        if entry != WRITTEN_HERE:
            path = os.path.join(OUT, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    save_file({k: v.contiguous() for k, v in _inputs().items()}, os.path.join(OUT, "inputs.safetensors"))
    manifest = {"generated_with": {"adapters": adapters.__version__, "transformers": transformers.__version__, "torch": torch.__version__}, "cases": {}}
    for name, build in CASES.items():
        folder = os.path.join(OUT, name)
        record = build(adapters, transformers, folder)
        save_file({"logits": record.pop("expected").contiguous()}, os.path.join(OUT, f"{name}.expected.safetensors"))
        for extra in ("generation_config.json",):  # not needed to load the model; keeps the fixtures small
            if os.path.exists(os.path.join(folder, extra)):
                os.remove(os.path.join(folder, extra))
        manifest["cases"][name] = record
    record = read_ours(adapters, transformers)
    save_file({"logits": record.pop("expected").contiguous()}, os.path.join(OUT, f"{WRITTEN_HERE}.expected.safetensors"))
    manifest["cases"][WRITTEN_HERE] = record
    with open(os.path.join(OUT, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {len(manifest['cases'])} cases to {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    import sys

    write_ours() if sys.argv[1:] == ["--write-ours"] else main()
