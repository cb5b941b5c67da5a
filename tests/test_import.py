"""`import adapters` stays light: the heavy parts (transformers' Trainer, PEFT, DeepSpeed,
bitsandbytes, torchao, the modeling modules behind the AdapterModel classes) are imported when first
used, and the names provided lazily still behave as ordinary attributes."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import adapters

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("transformers.trainer", "peft", "deepspeed", "bitsandbytes", "torchao", "transformers.masking_utils")


def _run(script: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_import_adapters_leaves_heavy_modules_unimported():
    out = _run(
        "import sys\n"
        # transformers' own model base imports what its quantizers need (torchao where installed): only what
        # `import adapters` adds on top of that counts
        "from transformers import PreTrainedModel\n"
        "before = set(sys.modules)\n"
        "import adapters\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules and m not in before))\n"
        # no AdapterModel class is built, so no architecture's modeling module is imported
        "print(sorted(m for m in sys.modules if m.startswith('transformers.models.') and '.modeling_' in m"
        " and not m.startswith('transformers.models.auto')))\n"
        "print('adapters.heads.adapter_model' in sys.modules, 'adapters.trainer' in sys.modules)\n"
    )
    heavy, modeling, lazy = out.strip().splitlines()
    assert heavy == "[]", f"imported by `import adapters`: {heavy}"
    assert modeling == "[]", f"modeling modules imported by `import adapters`: {modeling}"
    assert lazy == "False False"


def test_lazy_names_resolve_on_first_use():
    out = _run(
        "import sys, adapters\n"
        "from adapters import BertAdapterModel\n"
        "print(BertAdapterModel is adapters.BertAdapterModel is adapters.heads.adapter_model.BertAdapterModel)\n"
        "print('transformers.models.bert.modeling_bert' in sys.modules, 'transformers.models.t5.modeling_t5' in sys.modules)\n"
        "print(adapters.AdapterTrainer.__module__, 'transformers.trainer' in sys.modules)\n"
    )
    assert out.split() == ["True", "True", "False", "adapters.trainer", "True"]


def test_public_names_are_listed_and_resolve():
    names = set(dir(adapters))
    assert set(adapters.__all__) <= names
    assert {"BertAdapterModel", "AutoAdapterModel", "AdapterTrainer", "logging"} <= names
    for name in adapters.__all__:
        assert getattr(adapters, name) is not None
    from adapters.heads import adapter_model

    assert set(adapter_model.ADAPTER_MODEL_CLASSES) == set(adapter_model.ADAPTER_MODEL_TABLE)
    for model_type, cls in adapter_model.ADAPTER_MODEL_CLASSES.items():
        name = adapter_model.ADAPTER_MODEL_TABLE[model_type][0]
        # one class per model type, found by pickle under its module and name
        assert cls.__name__ == name and getattr(adapters, name) is cls is getattr(adapter_model, name)
        assert pickle.loads(pickle.dumps(cls)) is cls
    assert "BertForSequenceClassification" in adapter_model.STATIC_HEAD_CONVERSIONS
    assert adapters.heads.ClassificationHead.__module__ == "adapters.heads.classification"


def test_adapter_model_classes_are_shared_by_auto_and_isinstance():
    from conftest import CONFIGS

    model = adapters.AutoAdapterModel.from_config(CONFIGS["bert"]())
    assert isinstance(model, adapters.BertAdapterModel)
    assert type(model).__name__ == "BertAdapterModel"
