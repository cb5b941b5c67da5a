"""float32 adapters on a bfloat16 model (``autocast_adapter_dtype``): what they cost and what they buy (CPU).

What is measured
----------------
One Llama-shaped causal LM (random init, fixed seed) in bfloat16 gets the same LoRA (r=16,
alpha=32, no dropout, on q/k/v/o and the MLP's gate/up/down projections) three ways:

* ``ours``: this library's default, float32 LoRA parameters (``autocast_adapter_dtype=True``);
* ``ours-bf16``: this library with ``autocast_adapter_dtype=False`` (bfloat16 LoRA parameters);
* ``peft``: PEFT's ``get_peft_model`` with its default ``autocast_adapter_dtype=True`` (float32).

Figures:

* **updated**: the share of LoRA elements one AdamW step at ``lr=1e-4`` changes (after a few
  warm-up steps, so ``lora_B`` is no longer zero); bfloat16 parameters round most such updates away.
* **step x**: the time of one training step (forward, backward, ``AdamW.step``, ``zero_grad``) of
  ``ours`` divided by ``peft``'s and by ``ours-bf16``'s. The variants are timed in every round, in
  an order that rotates from round to round; each sample is the mean of ``--iters`` steps, and
  each ratio pairs two samples of the same round. Reported: the median of the per-round ratios
  and its 95% confidence interval (bootstrap over the rounds).

``--clock cpu`` (the default) runs torch on one thread and reads that thread's CPU time
(``time.thread_time``), which other processes on a shared machine barely disturb; ``--clock wall``
uses ``time.perf_counter``.

Usage::

    python benchmarks/adapter_dtype.py [--quick] [--rounds N] [--iters N] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

SEED = 0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SIZES = {  # hidden, intermediate, layers, vocab, batch, tokens
    "default": (256, 704, 4, 4096, 4, 64),
    "quick": (128, 384, 2, 1024, 2, 32),
}


def base_model(size: str):
    hidden, intermediate, layers, vocab, _, _ = SIZES[size]
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=4, pad_token_id=0,
    )
    torch.manual_seed(SEED)
    return transformers.LlamaForCausalLM(config).to(torch.bfloat16)


def ours(base, autocast: bool):
    import adapters

    model = copy.deepcopy(base)
    adapters.init(model)
    model.add_adapter("a", adapters.LoRAConfig(r=16, alpha=32, target_modules=TARGETS), autocast_adapter_dtype=autocast)
    model.train_adapter("a")
    return model


def peft_model(base):
    import peft

    config = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS)
    return peft.get_peft_model(copy.deepcopy(base), config)


def trainer_step(model, size: str):
    _, _, _, vocab, batch, tokens = SIZES[size]
    ids = torch.randint(1, vocab, (batch, tokens), generator=torch.Generator().manual_seed(SEED))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, params


def updated_share(step, params) -> float:
    for _ in range(3):  # lora_B leaves zero, so every element has a gradient
        step()
    before = [p.detach().clone() for p in params]
    step()
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(params, before))
    return changed / sum(p.numel() for p in params)


def median_ci(values, resamples: int = 2000):
    rng = random.Random(SEED)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return statistics.median(values), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    size = "quick" if args.quick else "default"
    if args.clock == "cpu":
        torch.set_num_threads(1)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

    base = base_model(size)
    variants = {"ours": ours(base, True), "ours-bf16": ours(base, False), "peft": peft_model(base)}
    steps = {}
    for name, model in variants.items():
        step, params = trainer_step(model, size)
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})
        print(f"{name:10s} LoRA parameters {sum(p.numel() for p in params):,} in {'/'.join(dtypes)}; "
              f"one AdamW step at lr 1e-4 changes {100 * updated_share(step, params):.1f}% of them")
        steps[name] = step

    def sample(step):
        start = clock()
        for _ in range(args.iters):
            step()
        return (clock() - start) / args.iters

    names = list(steps)
    for name in names:  # warm-up
        sample(steps[name])
    times = {name: [] for name in names}
    for index in range(args.rounds):
        order = names[index % len(names):] + names[: index % len(names)]
        for name in order:
            times[name].append(sample(steps[name]))
    print(f"\nstep time ({args.clock} clock, {args.rounds} rounds x {args.iters} steps; medians): "
          + ", ".join(f"{n} {1000 * statistics.median(t):.1f} ms" for n, t in times.items()))
    for other in ("peft", "ours-bf16"):
        ratios = [o / t for o, t in zip(times["ours"], times[other])]
        median, low, high = median_ci(ratios)
        print(f"ours / {other:9s} step x {median:.3f}  (95% CI {low:.3f} .. {high:.3f})")


if __name__ == "__main__":
    main()
