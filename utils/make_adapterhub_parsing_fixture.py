"""Write the AdapterHub 1.3.0 dependency-parsing head fixture under tests/fixtures/adapterhub_parsing/.

Run it in the side venv that has AdapterHub's library (see utils/make_adapterhub_fixtures.py)::

    HF_HUB_OFFLINE=1 /work/venvs/ah/bin/python utils/make_adapterhub_parsing_fixture.py

A tiny BERT (hidden size 32, two layers) is saved as ``base/``; AdapterHub's ``BertAdapterModel``
loads it, adds a biaffine parsing head ``parse`` (four relation labels with names) whose arc and
relation weights are drawn at random (AdapterHub starts them at zero, which would make every score
0), and writes:

* ``head/``: ``save_head`` of that head (``head_config.json`` + AdapterHub's default weights file);
* ``expected.json``: the batch (a padded row; ``word_starts`` with a multi-token word; arc and
  relation labels padded with BERT's ``pad_token_id`` 0, as AdapterHub's loss expects) and what
  AdapterHub computes on it in eval mode: ``arc_preds`` ``(batch, seq, seq + 1)``, ``rel_preds``
  ``(batch, seq, seq + 1, num_labels)`` and the loss.

About 90 KB in all.
"""

from __future__ import annotations

import json
import os
import shutil

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join("tests", "fixtures", "adapterhub_parsing")  # relative: head_config.json records the base model's path
INPUT_IDS = [[2, 17, 33, 45, 8, 21, 9, 3], [2, 21, 9, 40, 3, 0, 0, 0]]
ATTENTION_MASK = [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]]
# word boundaries: word j spans tokens word_starts[j] .. word_starts[j + 1] - 1 (row 0: "33 45" is one word)
WORD_STARTS = [[1, 2, 4, 5, 6, 7, 0, 0], [1, 3, 4, 0, 0, 0, 0, 0]]
# per word: the index of its head word (0 = the root, i.e. the [CLS] position), padded with 0
LABELS_ARCS = [[2, 5, 2, 3, 4, 0, 0, 0], [2, 1, 0, 0, 0, 0, 0, 0]]
LABELS_RELS = [[1, 2, 3, 1, 2, 0, 0, 0], [3, 1, 0, 0, 0, 0, 0, 0]]
ID2LABEL = {0: "root", 1: "nsubj", 2: "obj", 3: "det"}


def main() -> None:
    import adapters
    import transformers
    from transformers import BertConfig, BertModel

    os.chdir(ROOT)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(os.path.join(OUT, "base"))
    model = adapters.BertAdapterModel.from_pretrained(os.path.join(OUT, "base")).eval()
    model.add_dependency_parsing_head("parse", num_labels=len(ID2LABEL), id2label=ID2LABEL)
    with torch.no_grad():
        for param in model.heads["parse"].parameters():
            param.copy_(torch.randn_like(param) * 0.3)
    model.save_head(os.path.join(OUT, "head"), "parse")
    inputs = {
        "input_ids": torch.tensor(INPUT_IDS),
        "attention_mask": torch.tensor(ATTENTION_MASK),
        "word_starts": torch.tensor(WORD_STARTS),
        "labels_arcs": torch.tensor(LABELS_ARCS),
        "labels_rels": torch.tensor(LABELS_RELS),
    }
    with torch.no_grad():
        out = model(**inputs)
    expected = {
        "input_ids": INPUT_IDS,
        "attention_mask": ATTENTION_MASK,
        "word_starts": WORD_STARTS,
        "labels_arcs": LABELS_ARCS,
        "labels_rels": LABELS_RELS,
        "arc_preds": out.arc_preds.tolist(),
        "rel_preds": out.rel_preds.tolist(),
        "loss": out.loss.item(),
        "head_config": model.heads["parse"].config,
        "generated_with": {"adapters": adapters.__version__, "transformers": transformers.__version__},
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
