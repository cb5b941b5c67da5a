"""QLoRA training cost: LoRA on a bitsandbytes 4-bit (NF4) base, this library vs PEFT (CPU).

What is measured
----------------
One Llama-shaped causal LM (random init, fixed seed, saved once to a temporary folder) is loaded
twice in 4-bit NF4 (``BitsAndBytesConfig``, double quantization, float32 compute), and the same
LoRA (r=16, alpha=32, no dropout, on every quantized linear layer: q/k/v/o and the MLP's
gate/up/down projections) is added to each: with this library (``adapters.init``,
``add_adapter``, ``train_adapter``) and with PEFT (``get_peft_model``). Both adapters start from
the same weights (ours are copied into PEFT's), so both runs compute the same numbers.

* **step x**: the time of one training step (forward, backward, ``AdamW.step`` over the adapter
  parameters, ``zero_grad``) of ours divided by PEFT's. The two are timed *alternately* for
  ``--rounds`` rounds (the order alternates from round to round), each sample the mean of
  ``--iters`` steps; each sample of ours is paired with the mean of PEFT's samples around it.
  Reported: the median of the per-pair ratios and its 95% confidence interval (bootstrap over
  the pairs). Goal: ``<= 1.00`` (no slower than PEFT).
* **peak RSS**: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of a fresh subprocess that loads the
  4-bit model, adds the adapter one way or the other and runs ``--rss-steps`` training steps on a
  batch twice as wide and twice as long as the timed one (so training, not importing, sets the
  peak; how much training raised it is printed too).
  Both subprocesses import both libraries first, so the import footprint is the same on both
  sides and the difference is what each does with the model. The subprocesses alternate,
  ``--rss-runs`` each; reported: each side's median and the ratio of the medians, with the
  range over the runs. Goal: ours ``<=`` PEFT's ``+ 5%``.

``--clock cpu`` (the default) runs torch on one thread and reads that thread's CPU time
(``time.thread_time``), which other processes on a shared machine barely disturb; ``--clock wall``
uses ``time.perf_counter`` with ``--threads`` threads, for a quiet machine.

Usage::

    python benchmarks/qlora.py [--quick | --large] [--rounds N] [--iters N] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

SEED = 0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SIZES = {  # hidden, intermediate, layers, vocab, batch, tokens
    "default": (256, 704, 4, 4096, 4, 64),
    "large": (512, 1408, 4, 8192, 4, 128),
    "quick": (128, 384, 2, 1024, 2, 32),
}


def build_folder(size: str) -> str:
    hidden, intermediate, layers, vocab, _, _ = SIZES[size]
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128, pad_token_id=0, tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    folder = tempfile.mkdtemp(prefix="qlora_bench_")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def load_4bit(folder: str):
    quantization = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32
    )
    return transformers.LlamaForCausalLM.from_pretrained(folder, quantization_config=quantization)


def ours(folder: str):
    import adapters

    model = load_4bit(folder)
    adapters.init(model)
    model.add_adapter("lora", adapters.LoRAConfig(r=16, alpha=32, dropout=0.0, target_modules=TARGETS, init_weights="bert"))
    model.train_adapter("lora")
    return model


def peft(folder: str, like=None):
    import peft as peft_lib

    config = peft_lib.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, init_lora_weights=True)
    model = peft_lib.get_peft_model(load_4bit(folder), config)
    if like is not None:  # the same adapter weights as ours: both runs compute the same numbers
        theirs = dict(model.named_parameters())
        with torch.no_grad():
            for path, module in like.named_modules():
                if hasattr(module, "loras"):
                    lora = module.loras["lora"]
                    theirs[f"base_model.model.{path}.lora_A.default.weight"].copy_(lora.lora_A)
                    theirs[f"base_model.model.{path}.lora_B.default.weight"].copy_(lora.lora_B)
    model.train()
    return model


def trainer_step(model, size: str, batch: int | None = None, tokens: int | None = None):
    _, _, _, vocab, default_batch, default_tokens = SIZES[size]
    batch, tokens = batch or default_batch, tokens or default_tokens
    ids = torch.randint(1, vocab, (batch, tokens), generator=torch.Generator().manual_seed(SEED))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def median_ci(values, resamples: int = 2000):
    if len(values) < 5:
        return float("nan"), float("nan")
    rng = random.Random(SEED)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def time_steps(clock, ours_step, peft_step, rounds: int, iters: int) -> tuple:
    def sample(step):
        start = clock()
        for _ in range(iters):
            step()
        return (clock() - start) / iters

    for step in (ours_step, peft_step):  # warm-up
        sample(step)
    peft_samples, ours_samples = [sample(peft_step)], []
    for index in range(rounds):
        ours_samples.append(sample(ours_step))
        peft_samples.append(sample(peft_step))
        if index % 2:  # alternate which side opens the next pair
            ours_samples.append(sample(ours_step))
            peft_samples.append(sample(peft_step))
    ratios = [o / ((peft_samples[i] + peft_samples[i + 1]) / 2) for i, o in enumerate(ours_samples)]
    return statistics.median(ours_samples), statistics.median(peft_samples), ratios


def rss_child(kind: str, folder: str, size: str, steps: int) -> None:
    """Subprocess body: both libraries imported, then one side's model trained; prints peak RSS (KiB)."""
    import adapters  # noqa: F401  (both sides pay the same imports)
    import peft as _  # noqa: F401

    torch.set_num_threads(1)
    model = ours(folder) if kind == "ours" else peft(folder)
    _, _, _, _, batch, tokens = SIZES[size]
    # a batch 4x larger than the timed one: training, not the imports, sets the peak
    step = trainer_step(model, size, batch * 2, tokens * 2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(steps):
        step()
    print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model, few rounds: a smoke run, not figures")
    parser.add_argument("--large", action="store_true", help="hidden 512, batch 4 x 128 tokens (a quiet machine)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rss-steps", type=int, default=3)
    parser.add_argument("--rss-runs", type=int, default=3)
    parser.add_argument("--rss-child", nargs=3, metavar=("KIND", "FOLDER", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.rss_child:
        kind, folder, size = args.rss_child
        rss_child(kind, folder, size, args.rss_steps)
        return
    size = "quick" if args.quick else ("large" if args.large else "default")
    rounds = args.rounds or (3 if args.quick else 12)
    iters = args.iters or (1 if args.quick else 2)
    if args.clock == "cpu":
        torch.set_num_threads(1)
        clock = time.thread_time
    else:
        torch.set_num_threads(args.threads)
        clock = time.perf_counter
    hidden, intermediate, layers, vocab, batch, tokens = SIZES[size]
    print(f"Llama {layers} layers, hidden {hidden}, MLP {intermediate}, vocab {vocab}; 4-bit NF4 (double quant), "
          f"float32 compute; LoRA r=16 on {', '.join(TARGETS)}; batch {batch} x {tokens} tokens; "
          f"clock {args.clock}, torch {torch.get_num_threads()} thread(s); {rounds} rounds x {iters} steps")
    if args.quick:
        print("--quick: a smoke run of every code path; its figures are not meaningful")
    folder = build_folder(size)

    ours_model = ours(folder)
    peft_model = peft(folder, like=ours_model)
    # the same adapter weights and the same 4-bit weights: the same loss
    ids = torch.randint(1, vocab, (batch, tokens), generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        ours_loss, peft_loss = ours_model(input_ids=ids, labels=ids).loss, peft_model(input_ids=ids, labels=ids).loss
    print(f"same loss on both sides: ours {ours_loss.item():.6f}, PEFT {peft_loss.item():.6f}")
    ours_time, peft_time, ratios = time_steps(clock, trainer_step(ours_model, size), trainer_step(peft_model, size), rounds, iters)
    low, high = median_ci(ratios)
    verdict = "ok" if high <= 1.0 else ("MISS" if low > 1.0 else "within noise")
    print(f"train step: ours {ours_time * 1e3:.1f} ms, PEFT {peft_time * 1e3:.1f} ms; step x (ours / PEFT) "
          f"{statistics.median(ratios):.3f}, 95% CI [{low:.3f}, {high:.3f}] over {len(ratios)} pairs; goal <= 1.00: {verdict}")
    del ours_model, peft_model

    rss, before = {"ours": [], "peft": []}, {"ours": [], "peft": []}
    for run in range(args.rss_runs):
        for kind in (("ours", "peft") if run % 2 == 0 else ("peft", "ours")):
            result = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--rss-child", kind, folder, size, "--rss-steps", str(args.rss_steps)],
                capture_output=True, text=True, check=True,
            )
            start, peak = (int(v) / 1024 for v in result.stdout.strip().splitlines()[-1].split())
            rss[kind].append(peak)
            before[kind].append(start)
    ours_rss, peft_rss = statistics.median(rss["ours"]), statistics.median(rss["peft"])
    verdict = "ok" if ours_rss <= 1.05 * peft_rss else "MISS"
    grown = {k: statistics.median(p - b for p, b in zip(rss[k], before[k])) for k in rss}
    print(f"peak RSS ({args.rss_steps} training steps of batch {batch * 2} x {tokens * 2}, {args.rss_runs} runs each): "
          f"ours {ours_rss:.0f} MiB [{min(rss['ours']):.0f}-{max(rss['ours']):.0f}], PEFT {peft_rss:.0f} MiB "
          f"[{min(rss['peft']):.0f}-{max(rss['peft']):.0f}]; ours / PEFT {ours_rss / peft_rss:.3f}; goal <= 1.05: {verdict}")
    print(f"  of which training raised the peak by: ours {grown['ours']:.0f} MiB, PEFT {grown['peft']:.0f} MiB "
          f"(the rest: the imports of both libraries and the 4-bit model, the same on both sides)")


if __name__ == "__main__":
    main()
