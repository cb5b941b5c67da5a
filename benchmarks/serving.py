"""Many-adapter serving: requests/s of one mixed batch in which every row (request) names its own
LoRA adapter, ours (``model(**batch, adapter_names=rows)``) beside the bare base model and PEFT
(``adapter_names=`` as well), in one process.

What is measured
----------------
A Llama-shaped ``LlamaModel`` (hidden 256, 4 layers, 4 heads / 2 KV heads, intermediate 688,
a 1024-token vocabulary; random init, fixed seed, no downloads) reads a batch of ``B`` rows of
``S`` tokens (no padding). ``N`` LoRA adapters (r=8, alpha=16 on ``q_proj`` / ``v_proj``, random
non-zero factors) are added to one patched copy and to one PEFT copy of the same weights; every
row names one of them, drawn uniformly at random (fixed seed), in random order (the caller does
not sort). Variants:

* ``base``: the unpatched model, no adapters (the goal's reference);
* ``ours``: ``adapter_names=rows``; each LoRA layer gathers every row's stacked factors and runs
  two batched matmuls (``LinearHost.compose_routed``);
* ``ours-grouped``: the same with ``stacked_routing=False``: rows sorted by adapter once per pass,
  each adapter on its run of rows (the engine's ``MultiTask`` path), for comparison;
* ``peft``: PEFT's ``adapter_names=rows`` (a loop over the adapters of the batch in every layer).

Before timing, each variant's output is checked against the base model with each row's adapter
alone (ours and PEFT to 1e-4), so the figures compare equal work.

How it is measured
------------------
Inference (``eval()``, ``torch.no_grad()``). All variants are warmed up, then for ``--rounds``
rounds every variant is timed in turn (the order shuffled each round); a sample is the mean time
per forward over ``--iters`` consecutive forwards. ``--clock cpu`` (the default) runs torch on
one thread and reads that thread's CPU time, which other processes on a shared machine barely
disturb; ``--clock wall`` uses ``perf_counter`` with ``--threads`` threads (and synchronises a
CUDA device). Each variant's sample is divided by the base sample of the same round; the table
gives requests/s (``B`` / median time), the median of those per-round ratios to the base model
and to PEFT, and a 95% bootstrap confidence interval of each median.

Goals: ours >= 0.95x the base model's requests/s, and >= PEFT's.

Usage::

    python benchmarks/serving.py [--adapters 16,64] [--batch 32,128] [--seq 64] [--rounds 15]
                                 [--iters 3] [--clock cpu|wall] [--threads 2] [--device cpu|cuda]
                                 [--no-peft] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import time

import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import adapters  # noqa: E402
from adapters.methods.lora import LinearHost  # noqa: E402

SEED = 0
TARGETS = ["q_proj", "v_proj"]


def build_base(layers: int = 4, hidden: int = 256, device: str = "cpu") -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=1024, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=688, attention_dropout=0.0,
    )
    torch.manual_seed(SEED)
    return LlamaModel(config).eval().to(device)


def adapter_weights(base, count: int) -> dict:
    """Random non-zero LoRA factors per adapter and target layer, shared by ours and PEFT."""
    generator = torch.Generator().manual_seed(SEED + 1)
    hidden = base.config.hidden_size
    kv = base.config.num_key_value_heads * (hidden // base.config.num_attention_heads)
    weights = {}
    for index in range(count):
        for layer in range(base.config.num_hidden_layers):
            for target, out in (("q_proj", hidden), ("v_proj", kv)):
                weights[(f"t{index}", layer, target)] = (
                    torch.randn(8, hidden, generator=generator) * 0.05, torch.randn(out, 8, generator=generator) * 0.05
                )
    return weights


def build_ours(base, count: int, weights: dict, stacked: bool = True):
    model = copy.deepcopy(base)
    adapters.init(model)
    for index in range(count):
        model.add_adapter(f"t{index}", config=adapters.LoRAConfig(r=8, alpha=16, target_modules=TARGETS))
    with torch.no_grad():
        for layer_index, layer in enumerate(model.layers):
            for target in TARGETS:
                host = getattr(layer.self_attn, target)
                if not stacked:
                    host.stacked_routing = False
                for name, lora in host.loras.items():
                    a, b = weights[(name, layer_index, target)]
                    lora.lora_A.copy_(a)
                    lora.lora_B.copy_(b)
    return model.eval()


def build_peft(base, count: int, weights: dict):
    import peft

    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS)
    model = peft.get_peft_model(copy.deepcopy(base), config, adapter_name="t0")
    for index in range(1, count):
        model.add_adapter(f"t{index}", config)
    with torch.no_grad():
        for layer_index, layer in enumerate(model.base_model.model.layers):
            for target in TARGETS:
                module = getattr(layer.self_attn, target)
                for name in module.lora_A:
                    a, b = weights[(name, layer_index, target)]
                    module.lora_A[name].weight.copy_(a)
                    module.lora_B[name].weight.copy_(b)
    return model.eval()


def check_outputs(variants: dict, ours, rows, inputs, atol: float = 1e-4) -> None:
    """Every variant's rows equal the base model with each row's adapter alone."""
    with torch.no_grad():
        expected = torch.empty_like(variants["base"][1]().last_hidden_state)
        for name in sorted(set(rows)):
            with adapters.AdapterSetup(name):
                full = ours(**inputs).last_hidden_state
            index = torch.tensor([i for i, r in enumerate(rows) if r == name], device=full.device)
            expected[index] = full[index]
        for label, (_, step) in variants.items():
            if label == "base":
                continue
            error = (step().last_hidden_state - expected).abs().max().item()
            if error > atol:
                raise SystemExit(f"{label}: output differs from each row's adapter alone by {error:.2e} (> {atol})")


def median_ci(values: list, resamples: int = 2000) -> tuple:
    rng = random.Random(SEED)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return statistics.median(values), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def measure(variants: dict, rounds: int, iters: int, clock, sync) -> dict:
    for _, step in variants.values():  # warm-up
        for _ in range(2):
            step()
    samples = {label: [] for label in variants}
    labels = list(variants)
    rng = random.Random(SEED)
    for _ in range(rounds):
        rng.shuffle(labels)
        for label in labels:
            step = variants[label][1]
            sync()
            start = clock()
            for _ in range(iters):
                step()
            sync()
            samples[label].append((clock() - start) / iters)
    return samples


def run_case(base, count: int, batch: int, seq: int, args, device: str) -> list:
    weights = adapter_weights(base, count)
    ours = build_ours(base, count, weights)
    grouped = build_ours(base, count, weights, stacked=False)
    rng = random.Random(SEED + count + batch)
    rows = [f"t{rng.randrange(count)}" for _ in range(batch)]
    generator = torch.Generator().manual_seed(SEED + 2)
    inputs = {
        "input_ids": torch.randint(0, 1024, (batch, seq), generator=generator).to(device),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=device),
    }

    def step_of(model, **extra):
        def step():
            with torch.no_grad():
                return model(**inputs, **extra)

        return step

    variants = {
        "base": (base, step_of(base)),
        "ours": (ours, step_of(ours, adapter_names=rows)),
        "ours-grouped": (grouped, step_of(grouped, adapter_names=rows)),
    }
    if not args.no_peft:
        variants["peft"] = (None, step_of(build_peft(base, count, weights), adapter_names=rows))
    check_outputs(variants, ours, rows, inputs)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    samples = measure(variants, args.rounds, args.iters, clock, sync)
    lines = []
    for label in variants:
        times = samples[label]
        to_base = [b / t for b, t in zip(samples["base"], times)]  # requests/s relative to the base model
        row = f"{count:>4} {batch:>5} {label:<13} {batch / statistics.median(times):>9.1f}"
        ratio, low, high = median_ci(to_base)
        row += f"   {ratio:6.3f} [{low:.3f}, {high:.3f}]"
        if "peft" in samples and label != "peft":
            to_peft = [p / t for p, t in zip(samples["peft"], times)]
            ratio, low, high = median_ci(to_peft)
            row += f"   {ratio:6.3f} [{low:.3f}, {high:.3f}]"
        lines.append(row)
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", default="16,64")
    parser.add_argument("--batch", default="32,128")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-peft", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 1 iteration, figures not meaningful")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.iters, args.layers, args.seq = 2, 1, 2, 16
    torch.set_num_threads(1 if args.clock == "cpu" else args.threads)
    base = build_base(args.layers, device=args.device)
    print(f"Llama hidden 256, {args.layers} layers, seq {args.seq}, LoRA r=8 on q/v; device {args.device}, clock "
          f"{args.clock}, {torch.get_num_threads()} thread(s), {args.rounds} rounds x {args.iters} iterations"
          + ("  [--quick: smoke run, do not quote]" if args.quick else ""))
    print("   N batch variant         req/s   x base [95% CI]          x peft [95% CI]")
    for count in (int(c) for c in args.adapters.split(",")):
        for batch in (int(b) for b in args.batch.split(",")):
            for line in run_case(base, count, batch, args.seq, args, args.device):
                print(line, flush=True)


if __name__ == "__main__":
    main()
