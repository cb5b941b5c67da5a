"""Write the AdapterHub 1.3.0 static-head fixtures under tests/fixtures/adapterhub_heads/.

Run it in a side venv that has AdapterHub's library (see utils/make_adapterhub_fixtures.py)::

    HF_HUB_OFFLINE=1 /tmp/ah/bin/python utils/make_adapterhub_head_fixtures.py

A tiny ``BertForSequenceClassification`` (hidden size 32, three labels with names) is patched with
AdapterHub's ``adapters.init``, its classifier perturbed, and AdapterHub writes:

* ``base/``: the model (``save_pretrained``; its classifier is the perturbed one);
* ``static_head/``: ``save_head`` of the static head (``head_config.json`` with ``"config": null``,
  ``pytorch_model_head.bin``);
* ``adapter_with_head/``: ``save_adapter`` of a perturbed ``seq_bn`` adapter ``a`` with its static head;
* ``expected.json``: the logits AdapterHub computes on ``input_ids`` with adapter ``a`` active (the
  static model, and an AdapterModel that loaded ``adapter_with_head`` and so converted the head
  into a flexible head named ``a``), and the flexible head config AdapterHub's conversion made.
"""

from __future__ import annotations

import json
import os
import shutil

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "adapterhub_heads")
INPUT_IDS = [[2, 17, 33, 45, 8, 3], [2, 21, 9, 3, 0, 0]]
ATTENTION_MASK = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]


def main() -> None:
    import adapters
    from transformers import BertConfig, BertForSequenceClassification

    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, max_position_embeddings=16,
        id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for param in model.classifier.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    model.save_pretrained(os.path.join(OUT, "base"))
    adapters.init(model)
    model.save_head(os.path.join(OUT, "static_head"))
    model.add_adapter("a", config="seq_bn")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".adapters.a." in name:
                param.add_(torch.randn_like(param) * 0.5)
    model.save_adapter(os.path.join(OUT, "adapter_with_head"), "a")
    model.set_active_adapters("a")
    inputs = {"input_ids": torch.tensor(INPUT_IDS), "attention_mask": torch.tensor(ATTENTION_MASK)}
    with torch.no_grad():
        static_logits = model(**inputs).logits

    flex = adapters.AutoAdapterModel.from_pretrained(os.path.join(OUT, "base")).eval()
    flex.load_adapter(os.path.join(OUT, "adapter_with_head"), set_active=True)
    with torch.no_grad():
        flex_logits = flex(**inputs).logits
    expected = {
        "input_ids": INPUT_IDS,
        "attention_mask": ATTENTION_MASK,
        "static_logits": static_logits.tolist(),
        "flex_logits": flex_logits.tolist(),
        "flex_head_config": flex.heads["a"].config,
        "flex_head_names": list(flex.heads),
        "generated_with": {"adapters": adapters.__version__, "transformers": __import__("transformers").__version__},
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
