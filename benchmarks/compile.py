"""Compiled forward passes with adapters against the compiled base model and compiled PEFT (one process).

What is measured
----------------
A Llama-shaped ``LlamaModel`` (hidden 256, 4 layers, 4 heads, FFN 512; random init, fixed seed, no
download) on batch 8 x 128 tokens, inference (``eval()``, ``torch.no_grad()``), every variant
compiled with ``torch.compile`` (inductor, default mode):

* ``seq_bn``, ``lora``, ``prefix_tuning`` and ``Stack(seq_bn, seq_bn)`` of this library, each
  divided by the compiled base model (goals: <= 1.05, Stack of two <= 1.10);
* ``lora`` of this library divided by PEFT's LoRA on the same layers and rank (``q_proj`` and
  ``v_proj``, r = 8, alpha = 8), both compiled (goal: <= 1.00);
* the eager -> compiled speed-up (eager time / compiled time) of the base model, our LoRA and
  PEFT's LoRA.

How it is measured
------------------
Every variant is its own model instance, built from the same seed, compiled and warmed up first.
Then for ``--rounds`` rounds the base model and the variants are timed alternately (``base, v1,
base, v2, ..., base``, the variant order rotating per round); a sample is the mean of
``--iters`` consecutive calls, and each variant sample is paired with the mean of the two base
samples around it (PEFT: with the PEFT sample next to it). A ratio is the median of its pairs, with
a 95% bootstrap confidence interval of that median. ``--quick``: a smoke run on a shrunken model
(figures not meaningful).

Usage::

    python benchmarks/compile.py [--quick] [--rounds N] [--iters N]
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
import warnings

import torch
import transformers

import adapters
from adapters import Stack

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()


def build(shape: dict, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=shape["hidden"], num_hidden_layers=shape["layers"], num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=2 * shape["hidden"], pad_token_id=0,
    )
    return transformers.LlamaModel(config).eval()


def ours(base, setup: str):
    model = copy.deepcopy(base)
    adapters.init(model)
    if setup == "stack2":
        model.add_adapter("a", config="seq_bn")
        model.add_adapter("b", config="seq_bn")
        model.set_active_adapters(Stack("a", "b"))
    else:
        model.add_adapter("a", config=setup)
        model.set_active_adapters("a")
    return model


def peft_lora(base):
    import peft

    config = peft.LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return peft.get_peft_model(copy.deepcopy(base), config).eval()


def sample(fn, inputs, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn(**inputs)
    return (time.perf_counter() - start) / iters


def median_ci(ratios: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return statistics.median(ratios), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    shape = dict(hidden=256, layers=4, batch=8, seq=128)
    if args.quick:
        shape = dict(hidden=64, layers=2, batch=2, seq=16)
        args.rounds, args.iters = 3, 1
    torch.manual_seed(1)
    inputs = {"input_ids": torch.randint(1, 1000, (shape["batch"], shape["seq"]))}

    base = build(shape)
    eager = {"base": base, "seq_bn": ours(base, "seq_bn"), "lora": ours(base, "lora"),
             "prefix_tuning": ours(base, "prefix_tuning"), "stack2": ours(base, "stack2")}
    try:
        eager["peft_lora"] = peft_lora(base)
    except ImportError:
        print("peft is not installed: the PEFT comparison is left out", file=sys.stderr)
    compiled = {}
    with torch.no_grad():
        for name, model in eager.items():
            print(f"compiling {name} ...", file=sys.stderr, flush=True)
            compiled[name] = torch.compile(model)
            for _ in range(2):
                compiled[name](**inputs)
            eager[name](**inputs)

        variants = [n for n in compiled if n != "base"]
        pairs: dict[str, list[float]] = {n: [] for n in variants}
        peft_pairs: list[float] = []
        speedups: dict[str, list[float]] = {n: [] for n in ("base", "lora", "peft_lora") if n in compiled}
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
            order = variants[round_ % len(variants):] + variants[: round_ % len(variants)]
            times = {}
            before = sample(compiled["base"], inputs, args.iters)
            for name in order:
                times[name] = sample(compiled[name], inputs, args.iters)
                after = sample(compiled["base"], inputs, args.iters)
                pairs[name].append(times[name] / ((before + after) / 2))
                times.setdefault("base", after)
                before = after
            if "peft_lora" in times:
                peft_pairs.append(times["lora"] / times["peft_lora"])
            for name in speedups:  # eager and compiled of one model back to back
                speedups[name].append(sample(eager[name], inputs, args.iters) / sample(compiled[name], inputs, args.iters))

    goals = {"seq_bn": 1.05, "lora": 1.05, "prefix_tuning": 1.05, "stack2": 1.10}
    print(f"LlamaModel hidden {shape['hidden']}, {shape['layers']} layers, batch {shape['batch']} x {shape['seq']} tokens, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds x {args.iters} iterations"
          + (" (--quick: figures not meaningful)" if args.quick else ""))
    print("\ncompiled with adapter / compiled base      median  [95% CI]        goal")
    for name in variants:
        if name == "peft_lora":
            continue
        m, lo, hi = median_ci(pairs[name])
        verdict = "ok" if hi <= goals[name] else "MISS" if lo > goals[name] else "within CI"
        print(f"  {name:38} {m:6.3f}  [{lo:.3f}, {hi:.3f}]  <= {goals[name]:.2f} {verdict}")
    if peft_pairs:
        m, lo, hi = median_ci(peft_pairs)
        verdict = "ok" if hi <= 1.0 else "MISS" if lo > 1.0 else "within CI"
        print(f"\ncompiled ours LoRA / compiled PEFT LoRA    {m:6.3f}  [{lo:.3f}, {hi:.3f}]  <= 1.00 {verdict}")
    print("\neager / compiled (speed-up of compiling)")
    for name, values in speedups.items():
        m, lo, hi = median_ci(values)
        print(f"  {name:38} {m:6.2f}x [{lo:.2f}, {hi:.2f}]")


if __name__ == "__main__":
    main()
