"""Print how closely this library reproduces every reference fixture it can load.

For each case of ``../shared/fixtures/adapterhub`` (AdapterHub 1.3.0) and ``../shared/fixtures/peft``
(PEFT 0.21.2) whose method this version implements, load the checkpoints, activate the case's
setup, and print the largest absolute difference to the stored output (and, for PEFT, to the
merged output). Cases of methods not implemented yet are listed as skipped with the reason.

Usage::

    python utils/reproduce_fixtures.py [--fixtures ../shared/fixtures] [--tolerance 1e-4]

Exits with 1 if any loaded case differs by more than the tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from fixture_utils import parse_setup  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import adapters  # noqa: E402
from adapters import Average  # noqa: E402


def _first_output(output):
    return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


def _base(folder):
    with open(os.path.join(folder, "config.json")) as f:
        architecture = json.load(f)["architectures"][0]
    model = getattr(transformers, architecture).from_pretrained(folder).eval()
    adapters.init(model)
    return model


def _adapterhub_equivalent(setup):
    """AdapterHub 1.3.0 divides Average's weighted sum by the number of children."""
    if isinstance(setup, Average):
        n = len(setup.weights)
        return Average(*setup.children, weights=[w / n for w in setup.weights], normalize_weights=False)
    return setup


def adapterhub_cases(root):
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    for case in manifest["cases"]:
        arch_dir = os.path.join(root, case["arch"])
        label = f"adapterhub/{case['arch']}/{case['case']}"
        try:
            model = _base(os.path.join(arch_dir, "base"))
            for adapter in case["adapters"]:
                model.load_adapter(os.path.join(arch_dir, adapter["dir"]), load_as=adapter["name"])
            if case["fusion"]:
                model.load_adapter_fusion(os.path.join(arch_dir, case["fusion"]))
            lora = case["adapters"][0]["config"] in ("lora", "ia3")
            model.set_active_adapters(_adapterhub_equivalent(parse_setup(case["setup"], lora=lora)))
        except ValueError as error:
            yield label, None, str(error).splitlines()[0]
            continue
        inputs = load_file(os.path.join(arch_dir, "inputs.safetensors"))
        with torch.no_grad():
            out = _first_output(model(**inputs))
        expected = load_file(os.path.join(arch_dir, case["expected"]))["out"]
        yield label, [(out - expected).abs().max().item()], None


def peft_cases(root):
    for arch in sorted(os.listdir(root)):
        arch_dir = os.path.join(root, arch)
        if not os.path.isdir(arch_dir):
            continue
        for case in sorted(os.listdir(arch_dir)):
            folder = os.path.join(arch_dir, case)
            if case == "base" or not os.path.isdir(folder):
                continue
            label = f"peft/{arch}/{case}"
            model = _base(os.path.join(arch_dir, "base"))
            try:
                name = model.load_adapter(folder, set_active=True)
            except ValueError as error:
                yield label, None, str(error).splitlines()[0]
                continue
            inputs = load_file(os.path.join(arch_dir, "inputs.safetensors"))
            expected = load_file(os.path.join(folder, "expected.safetensors"))
            with torch.no_grad():
                errors = [(_first_output(model(**inputs)) - expected["out"]).abs().max().item()]
                if "merged_out" in expected:
                    model.merge_adapter(name)
                    errors.append((_first_output(model(**inputs)) - expected["merged_out"]).abs().max().item())
            yield label, errors, None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", default=os.path.join(ROOT, "..", "shared", "fixtures"))
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    failed = 0
    print(f"{'case':<42}{'max |diff| (out / merged)':<30}result")
    for label, errors, skipped in [
        *adapterhub_cases(os.path.join(args.fixtures, "adapterhub")),
        *peft_cases(os.path.join(args.fixtures, "peft")),
    ]:
        if errors is None:
            reason = skipped.split("(", 1)[1].rsplit(")", 1)[0] if ".json: " in skipped else skipped
            print(f"{label:<42}{'-':<30}skipped: {reason[:70]}")
            continue
        ok = all(e <= args.tolerance for e in errors)
        failed += not ok
        print(f"{label:<42}{' / '.join(f'{e:.1e}' for e in errors):<30}{'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
