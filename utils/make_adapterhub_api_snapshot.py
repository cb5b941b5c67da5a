"""Write tests/fixtures/adapterhub_api.json: the public API of AdapterHub ``adapters`` 1.3.0.

Run it with the interpreter of a side environment that has AdapterHub 1.3.0 and transformers 4.x
installed (never this library)::

    HF_HUB_OFFLINE=1 /work/venvs/ah/bin/python utils/make_adapterhub_api_snapshot.py

The snapshot records names and call signatures only — no code, no docstrings:

* ``exports``: for each public module AdapterHub's users and its test suite import from
  (:data:`MODULES`), every public name it exports, with its kind (``class``, ``function``,
  ``constant``) and, for callables, its signature (for a class: its constructor's; a dataclass is
  marked, as its fields are meant to be passed by keyword);
* ``classes``: for each class in :data:`CLASSES` (the model mixins, the AdapterModel base, the
  trainers, the configuration and composition classes), every public member it defines or
  inherits from a non-recorded AdapterHub base, with its kind (``method``, ``classmethod``,
  ``staticmethod``, ``property``, ``attribute``) and, for methods, its signature without
  ``self`` / ``cls``; and ``bases``, the recorded classes it inherits the rest of its members from.

A signature is a list of parameters, each one string ``"<kind>:<name>"`` or
``"<kind>:<name>=<default>"`` where kind is ``p/`` (positional only), ``p`` (positional or
keyword), ``*`` (``*args``), ``k`` (keyword only) or ``**`` (``**kwargs``), and default — present
when the parameter has one — is the ``repr`` of a literal default (``None``, a bool, number or
short string, or a tuple/list of them) or ``...`` for any other default. ``tests/test_adapterhub_api.py`` compares it with this library.
The output is sorted and stable, so a rerun on the same versions writes the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import importlib
import inspect
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "tests", "fixtures", "adapterhub_api.json")

#: modules whose exports are recorded, and how their public names are found: "all" = every public
#: name the module binds that is not itself a module or a typing helper; "own" = only the names whose
#: object is defined in that module (constants: every upper-case name bound there); a tuple = those names
MODULES = {
    "adapters": "all",  # the lazy _import_structure of adapters/__init__.py
    "adapters.composition": "own",
    "adapters.configuration": "all",
    "adapters.context": "own",
    "adapters.heads": "all",
    "adapters.heads.language_modeling": "own",
    "adapters.interface": "own",
    "adapters.trainer": "own",
    "adapters.training": "own",
    "adapters.wrappers": "all",
    # the suite's LoRA / DoRA / VeRA / MTL-LoRA test modules import these at module level
    "adapters.methods.lora": ("LoRALayer",),
    "adapters.configuration.adapter_config": ("MTLLoRAConfig",),
    # adapters.utils is mostly AdapterHub's download/cache machinery; its tests import the file-name
    # constants, the config hash and the index lookup from it
    "adapters.utils": (
        "ADAPTERFUSION_CONFIG_NAME", "ADAPTERFUSION_WEIGHTS_NAME", "ADAPTER_CACHE", "AdapterInfo", "AdapterType",
        "CONFIG_NAME", "EMBEDDING_FILE", "HEAD_CONFIG_NAME", "HEAD_WEIGHTS_NAME", "INTERFACE_CONFIG_NAME",
        "SAFE_ADAPTERFUSION_WEIGHTS_NAME", "SAFE_HEAD_WEIGHTS_NAME", "SAFE_WEIGHTS_NAME", "SETUP_CONFIG_NAME",
        "TOKENIZER_PATH", "WEIGHTS_NAME", "find_in_index", "get_adapter_config_hash", "get_adapter_info",
        "list_adapters", "parse_adapter_config_string", "resolve_adapter_config", "resolve_adapter_path",
    ),
}

#: classes whose public members are recorded (module, class name)
CLASSES = (
    ("adapters.model_mixin", "ModelAdaptersMixin"),
    ("adapters.model_mixin", "ModelBaseAdaptersMixin"),
    ("adapters.model_mixin", "ModelWithHeadsAdaptersMixin"),
    ("adapters.model_mixin", "EmbeddingAdaptersMixin"),
    ("adapters.model_mixin", "InvertibleAdaptersMixin"),
    ("adapters.heads.model_mixin", "ModelWithFlexibleHeadsAdaptersMixin"),
    ("adapters.models.bert.adapter_model", "BertAdapterModel"),  # what every AdapterModel class adds
    ("adapters.trainer", "AdapterTrainer"),
    ("adapters.trainer", "Seq2SeqAdapterTrainer"),
    ("adapters.configuration.adapter_config", "AdapterConfig"),
    ("adapters.configuration.adapter_config", "ConfigUnion"),
    ("adapters.configuration.adapter_config", "MultiTaskConfig"),
    ("adapters.configuration.adapter_fusion_config", "AdapterFusionConfig"),
    ("adapters.configuration.model_adapters_config", "ModelAdaptersConfig"),
    ("adapters.composition", "AdapterCompositionBlock"),
    ("adapters.context", "AdapterSetup"),
    ("adapters.context", "ForwardContext"),
    ("adapters.heads.base", "PredictionHead"),
)

_KIND_CODES = {
    inspect.Parameter.POSITIONAL_ONLY: "p/",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "p",
    inspect.Parameter.VAR_POSITIONAL: "*",
    inspect.Parameter.KEYWORD_ONLY: "k",
    inspect.Parameter.VAR_KEYWORD: "**",
}


def _literal(value) -> bool:
    if value is None or isinstance(value, (bool, int, float)) and not isinstance(value, enum.Enum):
        return True
    if isinstance(value, str):
        return len(value) <= 60
    if isinstance(value, (tuple, list)):
        return len(value) <= 8 and all(_literal(v) for v in value)
    return False


def signature_of(obj, drop_first: bool = False):
    """The recorded form of ``obj``'s signature (see the module docstring), or None when Python
    cannot tell it (a builtin without a text signature)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if drop_first and params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        params = params[1:]
    out = []
    for p in params:
        entry = f"{_KIND_CODES[p.kind]}:{p.name}"
        if p.default is not p.empty:
            entry += "=" + (repr(p.default) if _literal(p.default) else "...")
        out.append(entry)
    return out


def _kind(obj) -> str:
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "constant"


def _public_names(module, how) -> list[str]:
    if isinstance(how, tuple):
        return sorted(how)
    if module.__name__ == "adapters":
        return sorted(n for names in module._import_structure.values() for n in names)
    if hasattr(module, "_import_structure"):  # a lazy module (adapters.wrappers)
        return sorted(n for names in module._import_structure.values() for n in names)
    # "own": defined in the module; "all" (a package): defined anywhere inside the package, so that
    # helpers its star imports leak (from torch, transformers or another adapters module) are left out
    home = module.__name__ if how == "own" else module.__name__ + "."
    assigned = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*[:=]", inspect.getsource(module), flags=re.M))
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if inspect.isclass(value) or callable(value):
            origin = getattr(value, "__module__", "") or ""
            if not (origin == module.__name__ or how == "all" and origin.startswith(home)):
                continue
        elif not (name.isupper() and (name in assigned or how == "all")):
            continue
        names.append(name)
    return sorted(names)


def export_entry(value) -> dict:
    entry = {"kind": _kind(value)}
    if entry["kind"] == "class" and dataclasses.is_dataclass(value):
        entry["dataclass"] = True  # fields are set by keyword; their positional order is an artefact
    if entry["kind"] != "constant":
        sig = signature_of(value)
        if sig is not None:
            entry["signature"] = sig
    return entry


def _member_entry(raw, value) -> dict:
    if isinstance(raw, (property, functools.cached_property)):
        return {"kind": "property"}
    if isinstance(raw, staticmethod):
        return {"kind": "staticmethod", "signature": signature_of(raw.__func__)}
    if isinstance(raw, classmethod):
        return {"kind": "classmethod", "signature": signature_of(raw.__func__, drop_first=True)}
    if inspect.isfunction(raw):
        return {"kind": "method", "signature": signature_of(raw, drop_first=True)}
    if callable(value) and not inspect.isclass(value):
        return {"kind": "method", "signature": signature_of(value, drop_first=True)}
    return {"kind": "attribute"}


def class_members(cls, recorded: set) -> dict:
    """Public members of ``cls`` that an AdapterHub class defines: on ``cls`` itself or on an
    AdapterHub base that is not recorded on its own (so each is recorded once, where it is defined
    or overridden)."""
    members = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if owner is None or not owner.__module__.startswith("adapters"):
            continue
        if owner is not cls and (owner.__module__, owner.__qualname__) in recorded:
            continue
        if any(
            base is not cls and (base.__module__, base.__qualname__) in recorded and name in dir(base)
            and next(k for k in base.__mro__ if name in vars(k)) is owner
            for base in cls.__mro__
        ):
            continue  # inherited unchanged from a recorded class: recorded there
        raw = vars(owner)[name]
        entry = _member_entry(raw, getattr(cls, name))
        if dataclasses.is_dataclass(cls) and entry["kind"] == "attribute" and name in {f.name for f in dataclasses.fields(cls)}:
            continue  # a dataclass field: part of the constructor's signature
        members[name] = entry
    return members


def snapshot() -> dict:
    import adapters
    import transformers

    exports = {}
    for module_name, how in MODULES.items():
        module = importlib.import_module(module_name)
        exports[module_name] = {name: export_entry(getattr(module, name)) for name in _public_names(module, how)}
    recorded = set(CLASSES)
    classes = {}
    for module_name, class_name in CLASSES:
        cls = getattr(importlib.import_module(module_name), class_name)
        bases = sorted(b.__name__ for b in cls.__mro__[1:] if (b.__module__, b.__qualname__) in recorded)
        classes[class_name] = {"module": module_name, "members": class_members(cls, recorded), "bases": bases}
    return {
        "generated_with": {"adapters": adapters.__version__, "transformers": transformers.__version__},
        "exports": exports,
        "classes": classes,
    }


def dumps(value, level: int = 0) -> str:
    """JSON with one name per line (its kind and signature on that line): small, and a diff of two
    snapshots shows which name changed."""
    if isinstance(value, dict) and value and "kind" not in value:
        pad = " " * (level + 1)
        items = (f"{pad}{json.dumps(k)}: {dumps(value[k], level + 1)}" for k in sorted(value))
        return "{\n" + ",\n".join(items) + "\n" + " " * level + "}"
    return json.dumps(value, sort_keys=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=OUTPUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = snapshot()
    if not data["generated_with"]["adapters"].startswith("1."):
        print("run this with AdapterHub's adapters 1.x installed, not this library", file=sys.stderr)
        return 1
    text = dumps(data) + "\n"
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    n_exports = sum(len(v) for v in data["exports"].values())
    n_members = sum(len(v["members"]) for v in data["classes"].values())
    print(f"wrote {args.output}: {n_exports} exports, {n_members} class members, {len(text)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
