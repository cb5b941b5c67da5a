"""AdapterHub 1.3.0's public API, name by name, against this library.

``tests/fixtures/adapterhub_api.json`` (written by ``utils/make_adapterhub_api_snapshot.py`` with
AdapterHub installed) lists every public name AdapterHub exports and every public member of its
model mixins, AdapterModel base, trainers and configuration / composition classes, with call
signatures. Each must be, here, one of:

* present and compatible: the same import path (for a member: the same attribute on the class that
  plays that role here, :data:`adapterhub_api_tables.ROLES`), of a compatible kind, and callable with
  every argument list AdapterHub accepts (:func:`signature_problems`);
* a deliberate difference, listed with its reason in
  :data:`adapterhub_api_tables.DIFFERENCES`; or
* still absent, listed with its reason in :data:`adapterhub_api_tables.ABSENT`.

A listed name must really be what its table says: an "absent" name that has appeared, or a
"difference" that has become compatible, fails until its entry is removed, so the tables (and
``docs/adapterhub_api.rst``, generated from them) stay true.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os

import pytest

import adapterhub_api_tables as tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOT = os.path.join(ROOT, "tests", "fixtures", "adapterhub_api.json")

_KINDS = {
    "p/": inspect.Parameter.POSITIONAL_ONLY,
    "p": inspect.Parameter.POSITIONAL_OR_KEYWORD,
    "*": inspect.Parameter.VAR_POSITIONAL,
    "k": inspect.Parameter.KEYWORD_ONLY,
    "**": inspect.Parameter.VAR_KEYWORD,
}
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_MISSING = object()


@functools.lru_cache(maxsize=None)
def snapshot() -> dict:
    with open(SNAPSHOT, encoding="utf-8") as f:
        return json.load(f)


def parse_parameter(text: str):
    """``"p:config=None"`` -> (kind, name, has_default, default repr or "...")."""
    kind, rest = text.split(":", 1)
    name, sep, default = rest.partition("=")
    return _KINDS[kind], name, bool(sep), default if sep else None


def _default_repr(value) -> str:
    """The snapshot's form of a default: its repr when it is a simple literal, else "..."."""

    def literal(v) -> bool:
        if v is None or isinstance(v, (bool, int, float)) and type(v).__module__ == "builtins":
            return True
        if isinstance(v, str):
            return len(v) <= 60
        if isinstance(v, (tuple, list)):
            return len(v) <= 8 and all(literal(x) for x in v)
        return False

    return repr(value) if literal(value) else "..."


def signature_problems(recorded: list, ours: inspect.Signature, by_keyword: bool = False) -> list[tuple[str, str]]:
    """Why a call valid against AdapterHub's ``recorded`` signature could fail against ``ours``, as
    (parameter, explanation) pairs; empty when none can. Each positional slot keeps its parameter's
    name, each keyword name is accepted, ``*args`` / ``**kwargs`` stay, a parameter AdapterHub lets
    callers omit may be omitted (with the same default when both defaults are simple literals), and
    nothing new is required. A signature that is only ``(*args, **kwargs)`` forwards to what it
    wraps (transformers' forward, ...), so any signature matches it. With ``by_keyword`` (a
    dataclass's fields) only the required leading parameters must keep their positions."""
    theirs = [parse_parameter(p) for p in recorded]
    if sorted(t[0] for t in theirs) == sorted([inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]):
        return []  # AdapterHub's only forwards (*args, **kwargs) to what it wraps: nothing to compare
    problems = []
    params = list(ours.parameters.values())
    by_name = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    positional = [p for p in params if p.kind in _POSITIONAL]
    has_var = {k: any(p.kind == k for p in params) for k in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    their_positional = [t for t in theirs if t[0] in _POSITIONAL and not (by_keyword and t[2])]
    for index, (kind, name, has_default, default) in enumerate(their_positional):
        if index < len(positional):
            here = positional[index]
            if kind == inspect.Parameter.POSITIONAL_OR_KEYWORD and here.name != name:
                problems.append((name, f"positional argument {index + 1} is `{name}` in AdapterHub, `{here.name}` here"))
            elif kind == inspect.Parameter.POSITIONAL_OR_KEYWORD and here.kind == here.POSITIONAL_ONLY:
                problems.append((name, f"`{name}` cannot be passed by keyword here"))
        elif not has_var[inspect.Parameter.VAR_POSITIONAL]:
            problems.append((name, f"`{name}` (positional argument {index + 1} in AdapterHub) cannot be passed positionally here"))
    for kind, name, has_default, default in theirs:
        if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            if not has_var[kind]:
                stars = "*" if kind == inspect.Parameter.VAR_POSITIONAL else "**"
                problems.append((stars + name, f"AdapterHub takes `{stars}{name}`, this library does not"))
            continue
        here = by_name.get(name)
        if here is None:
            if kind != inspect.Parameter.POSITIONAL_ONLY:
                problems.append((name, f"keyword `{name}` is not accepted here"))
            continue
        if has_default and here.default is here.empty:
            problems.append((name, f"`{name}` is optional in AdapterHub, required here"))
        elif has_default and default != "..." and _default_repr(here.default) not in ("...", default):
            problems.append((name, f"`{name}` defaults to {default} in AdapterHub, to {here.default!r} here"))
    their_names = {t[1] for t in theirs}
    for p in params:
        if p.kind in _POSITIONAL + (inspect.Parameter.KEYWORD_ONLY,) and p.default is p.empty and p.name not in their_names:
            problems.append((p.name, f"`{p.name}` is required here and unknown to AdapterHub"))
    return problems


def missing_parameters(problems) -> set:
    """The AdapterHub parameters a signature lacks outright (what ``ABSENT["id(param)"]`` lists)."""
    return {param for param, text in problems if "is not accepted here" in text or "this library does not" in text}


# -- finding a recorded name here ----------------------------------------------------------------
def resolve_export(module_name: str, name: str):
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return _MISSING
    try:
        return getattr(module, name)
    except AttributeError:
        return _MISSING


@functools.lru_cache(maxsize=None)
def role_class(class_name: str):
    """The class that plays AdapterHub's class ``class_name``'s role here (see
    :data:`adapterhub_api_tables.ROLES`), or None when there is none."""
    role = tables.ROLES.get(class_name)
    if role is None:
        found = resolve_export("adapters", class_name)
        return None if found is _MISSING else found
    if role.startswith(("init:", "new:")):  # the class of a tiny BERT model, as a user gets it
        import transformers

        import adapters
        from conftest import CONFIGS

        kind, _, class_name = role.partition(":")
        if kind == "init":  # transformers' own class, after adapters.init swapped in the mixin
            model = adapters.init(getattr(transformers, class_name)(CONFIGS["bert"]()))
        else:  # one of this library's AdapterModel classes
            model = getattr(adapters, class_name)(CONFIGS["bert"]())
        return type(model)
    module_name, _, attr = role.rpartition(".")
    found = resolve_export(module_name, attr)
    return None if found is _MISSING else found


def _raw_member(cls, name):
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return _MISSING


def _has_member(cls, name) -> bool:
    return _raw_member(cls, name) is not _MISSING or hasattr(cls, name)


def _signature(obj, drop_first: bool):
    sig = inspect.signature(obj)
    if drop_first:
        params = list(sig.parameters.values())
        if params and params[0].kind in _POSITIONAL:
            sig = sig.replace(parameters=params[1:])
    return sig


def export_problems(recorded: dict, value) -> list[str]:
    """Why ``value`` (found here at the recorded path) is not a compatible stand-in."""
    kind = recorded["kind"]
    if kind == "class" and not inspect.isclass(value):
        return [("", f"AdapterHub's is a class, this library's a {type(value).__name__}")]
    if kind == "function" and not callable(value):
        return [("", f"AdapterHub's is a function, this library's a {type(value).__name__}")]
    if kind == "constant" or "signature" not in recorded:
        return []
    try:
        sig = inspect.signature(value)
    except (TypeError, ValueError):
        return [("", "its signature cannot be read here")]
    return signature_problems(recorded["signature"], sig, by_keyword=recorded.get("dataclass", False))


def member_problems(recorded: dict, cls, name: str) -> list[str]:
    raw = _raw_member(cls, name)
    kind = recorded["kind"]
    if kind == "attribute":
        return []
    if kind == "property":
        if isinstance(raw, (property, functools.cached_property)) or not callable(getattr(cls, name)):
            return []
        return [("", "AdapterHub's is a property, this library's a method")]
    if isinstance(raw, (property, functools.cached_property)):
        return [("", f"AdapterHub's is a {kind}, this library's a property")]
    if kind in ("classmethod", "staticmethod") and not isinstance(raw, (classmethod, staticmethod)):
        return [("", f"AdapterHub's is a {kind} (callable on the class), this library's is not")]
    if not callable(getattr(cls, name)):
        return [("", f"AdapterHub's is a {kind}, this library's is not callable")]
    if isinstance(raw, staticmethod):
        obj, drop = raw.__func__, False
    elif isinstance(raw, classmethod):
        obj, drop = raw.__func__, True
    elif inspect.isfunction(raw):
        obj, drop = raw, True
    else:
        obj, drop = getattr(cls, name), kind == "method" and not inspect.ismethod(getattr(cls, name))
    try:
        sig = _signature(obj, drop)
    except (TypeError, ValueError):
        return [("", "its signature cannot be read here")]
    return signature_problems(recorded.get("signature") or [], sig)


# -- the entries, their status, and the checks ---------------------------------------------------
def entries():
    """Every recorded name as (id, area, check) — id "module:Name" for an export and
    "Class.member" for a member; check() returns None when the name is absent here, else the list
    of incompatibilities (empty = compatible)."""
    data = snapshot()
    for module_name, names in data["exports"].items():
        for name, recorded in names.items():

            def check(module_name=module_name, name=name, recorded=recorded):
                value = resolve_export(module_name, name)
                return None if value is _MISSING else export_problems(recorded, value)

            yield f"{module_name}:{name}", module_name, check
    for class_name, info in data["classes"].items():
        for name, recorded in info["members"].items():
            # AdapterHub's subclasses that inherit the member unchanged: it must be there on their
            # stand-ins too (an AdapterModel has ModelAdaptersMixin's methods, ...)
            heirs = [c for c, i in data["classes"].items() if class_name in i["bases"] and name not in i["members"]]

            def check(class_name=class_name, name=name, recorded=recorded, heirs=heirs):
                cls = role_class(class_name)
                if cls is None or not _has_member(cls, name):
                    return None
                problems = member_problems(recorded, cls, name)
                for heir in heirs:
                    other = role_class(heir)
                    if other is None or other is cls:
                        continue
                    if not _has_member(other, name):
                        problems.append(("", f"missing on {other.__name__} (AdapterHub's {heir} inherits it)"))
                    else:  # only what differs from the stand-in of AdapterHub's defining class
                        seen = {text for _, text in problems}
                        problems += [(p, f"{text} (on {other.__name__})") for p, text in member_problems(recorded, other, name) if text not in seen]
                return problems

            yield f"{class_name}.{name}", class_name, check


def table_entry(table: dict, entry_id: str):
    """The table key that covers ``entry_id``: the id itself, or a bare name covering that name in
    every module that exports it."""
    if entry_id in table:
        return entry_id
    if ":" in entry_id and entry_id.split(":", 1)[1] in table:
        return entry_id.split(":", 1)[1]
    return None


def class_absent(entry_id: str) -> bool:
    """A member of a class that is itself listed absent is absent with it."""
    if ":" in entry_id:
        return False
    class_name = entry_id.split(".", 1)[0]
    return class_name not in tables.ROLES and table_entry(tables.ABSENT, f"adapters:{class_name}") is not None


@functools.lru_cache(maxsize=None)
def statuses() -> dict:
    """{id: (area, status, detail)}. Status "compatible"; "difference" (listed in DIFFERENCES: it
    differs, or is left out, on purpose);
    "absent" (listed in ABSENT, or a member of a class listed absent); "partial" (present, and every
    incompatibility is an AdapterHub parameter listed in ABSENT as ``"id(param)"``); or, where a
    table is wrong, "unlisted" / "stale" with the reason."""
    out = {}
    for entry_id, area, check in entries():
        problems = check()
        absent_key = table_entry(tables.ABSENT, entry_id)
        difference_key = table_entry(tables.DIFFERENCES, entry_id)
        param_keys = {k for k in tables.ABSENT if k.startswith(entry_id + "(")}
        if problems is None:
            if absent_key is not None or class_absent(entry_id):
                out[entry_id] = (area, "absent", "")
            elif difference_key is not None:
                out[entry_id] = (area, "difference", "not provided on purpose")
            else:
                out[entry_id] = (area, "unlisted", "absent here and in neither table")
            continue
        detail = "; ".join(text for _, text in problems)
        listed_params = {k[len(entry_id) + 1:-1] for k in param_keys}
        stale_params = sorted(listed_params - missing_parameters(problems))
        if absent_key is not None:
            differs = f" (it differs: {detail})" if detail else ""
            out[entry_id] = (area, "stale", f"listed absent but present here: remove it from ABSENT{differs}")
        elif stale_params:
            out[entry_id] = (area, "stale", f"ABSENT lists parameter(s) {stale_params} that are accepted now: remove them")
        elif difference_key is not None:
            if problems or difference_key in tables.BEHAVIOUR_DIFFERENCES:
                out[entry_id] = (area, "difference", detail)
            else:
                out[entry_id] = (area, "stale", "listed as a difference but compatible now: remove it from DIFFERENCES")
        elif not problems:
            out[entry_id] = (area, "compatible", "")
        elif {param for param, _ in problems} <= listed_params:
            out[entry_id] = (area, "partial", detail)
        else:
            out[entry_id] = (area, "unlisted", detail)
    return out


def _areas():
    data = snapshot()
    return list(data["exports"]) + list(data["classes"])


@pytest.mark.parametrize("area", _areas())
def test_every_adapterhub_name_is_compatible_or_listed(area):
    wrong = {k: (s, d) for k, (a, s, d) in statuses().items() if a == area and s in ("unlisted", "stale")}
    assert not wrong, "\n".join(f"{k}: {s}: {d}" for k, (s, d) in sorted(wrong.items()))


def test_tables_name_only_recorded_names_once():
    ids = {entry_id for entry_id, _, _ in entries()}
    bare = {i.split(":", 1)[1] for i in ids if ":" in i}
    for table_name, table in (("ABSENT", tables.ABSENT), ("DIFFERENCES", tables.DIFFERENCES)):
        unknown = [k for k in table if k.split("(", 1)[0] not in ids and k not in bare]
        assert not unknown, f"{table_name} lists names AdapterHub 1.3.0 does not have: {unknown}"
        assert all(isinstance(v, str) and v.strip() for v in table.values()), f"{table_name}: every entry needs a reason"
    both = [i for i in ids if table_entry(tables.ABSENT, i) and table_entry(tables.DIFFERENCES, i)]
    assert not both, f"listed both absent and different: {both}"
    assert set(tables.BEHAVIOUR_DIFFERENCES) <= set(tables.DIFFERENCES)
    assert set(tables.TO_ALIGN) <= set(tables.DIFFERENCES)


@pytest.fixture
def fresh_statuses():
    """statuses() recomputed inside the test (after it patched the library or the tables), and
    again afterwards for the other tests."""
    statuses.cache_clear()
    yield statuses
    statuses.cache_clear()


def test_tables_that_are_no_longer_true_fail(fresh_statuses, monkeypatch):
    import adapters

    # a name listed absent that is present, an incompatible name missing from the tables, a name
    # that goes missing, a difference that is compatible, a parameter listed absent that is accepted
    monkeypatch.setitem(tables.ABSENT, "BiaffineParsingHead", "pretend")
    monkeypatch.delitem(tables.DIFFERENCES, "BertAdapterModel.forward")
    monkeypatch.setattr(adapters, "DependencyParsingOutput", None)
    monkeypatch.setitem(tables.DIFFERENCES, "adapters:Stack", "pretend")
    monkeypatch.setitem(tables.ABSENT, "ModelAdaptersMixin.add_adapter(config)", "pretend")
    found = fresh_statuses()
    assert found["adapters:BiaffineParsingHead"][1] == "stale"
    assert found["BertAdapterModel.forward"][1] == "unlisted"
    assert found["adapters:DependencyParsingOutput"][1] == "unlisted"
    assert found["adapters:Stack"][1] == "stale"
    assert found["ModelAdaptersMixin.add_adapter"][1] == "stale"
    assert "accepted now" in found["ModelAdaptersMixin.add_adapter"][2]


def test_signature_rules_catch_each_kind_of_break():
    """The comparison itself: each rule fires on a signature that breaks it, and not on one that
    only adds optional parameters."""

    def ours(text):
        namespace = {}
        exec(f"def f{text}: pass", namespace)  # noqa: S102 - a literal signature, for the test
        return inspect.signature(namespace["f"])

    assert signature_problems(["*:args", "**:kwargs"], ours("(input_ids=None, **kwargs)")) == []
    theirs = ["p:name", "p:config=None", "k:flag=False", "**:kwargs"]
    assert signature_problems(theirs, ours("(name, config=None, extra=1, *, flag=False, **kwargs)")) == []

    def first(text, by_keyword=False):
        problems = signature_problems(theirs, ours(text), by_keyword=by_keyword)
        assert len(problems) >= 1, text
        return problems[0]

    assert "positional argument 2" in first("(name, other=None, config=None, *, flag=False, **kwargs)")[1]
    assert first("(name, config, *, flag=False, **kwargs)") == ("config", "`config` is optional in AdapterHub, required here")
    assert "defaults to False" in first("(name, config=None, *, flag=True, **kwargs)")[1]
    assert first("(name, config=None, **kwargs)") == ("flag", "keyword `flag` is not accepted here")
    assert first("(name, config=None, *, flag=False)")[0] == "**kwargs"
    assert "unknown to AdapterHub" in first("(name, config=None, *, must, flag=False, **kwargs)")[1]
    assert "cannot be passed positionally" in first("(name, *, config=None, flag=False, **kwargs)")[1]
    # a dataclass's optional fields are passed by keyword: their order may differ, their names not
    assert signature_problems(theirs, ours("(name, *, flag=False, config=None, **kwargs)"), by_keyword=True) == []
    assert missing_parameters(signature_problems(theirs, ours("(name, **kw)"))) == {"config", "flag"}


def test_docs_page_is_generated_from_the_tables():
    """docs/adapterhub_api.rst is what utils/adapterhub_api_page.py renders from the tables and the
    snapshot (rerun it after changing either)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("adapterhub_api_page", os.path.join(ROOT, "utils", "adapterhub_api_page.py"))
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    with open(page.OUTPUT, encoding="utf-8") as f:
        committed = f.read()
    assert committed == page.render(statuses()), "run: python utils/adapterhub_api_page.py"


def test_adapterhub_utils_names_behave_as_adapterhubs():
    """``adapters.utils``: AdapterHub's file names, its config-string parser and its config hash.
    The hashes below were computed by AdapterHub 1.3.0 (``adapters.utils.get_adapter_config_hash``,
    in the side venv of utils/make_adapterhub_fixtures.py) from the same dicts."""
    from adapters import PrefixTuningConfig, SeqBnConfig
    from adapters.utils import (
        SAFE_WEIGHTS_NAME,
        WEIGHTS_NAME,
        get_adapter_config_hash,
        parse_adapter_config_string,
        resolve_adapter_config,
    )

    assert (WEIGHTS_NAME, SAFE_WEIGHTS_NAME) == ("pytorch_adapter.bin", "adapter.safetensors")
    assert get_adapter_config_hash({"reduction_factor": 16, "non_linearity": "relu", "init_weights": "bert"}) == "b7d265cde0728407"
    assert get_adapter_config_hash(SeqBnConfig().to_dict()) == "9076f36a74755ac4"
    assert get_adapter_config_hash(SeqBnConfig().to_dict(), ignore_params=["reduction_factor"]) == "7cb4095e1aa54a4b"
    assert get_adapter_config_hash(PrefixTuningConfig().to_dict()) == "648bf22f5afeaaa6"
    assert parse_adapter_config_string("lora[r=4]|prefix_tuning[prefix_length=10]") == [
        ("lora", {"r": 4}), ("prefix_tuning", {"prefix_length": 10}),
    ]
    assert resolve_adapter_config("seq_bn", reduction_factor=4).reduction_factor == 4
    assert resolve_adapter_config("mine", local_map={"mine": SeqBnConfig(reduction_factor=2)}).reduction_factor == 2


def test_has_adapters_parallel_channels_and_adapter_fusion_to_behave_as_adapterhubs():
    import torch
    from conftest import patched

    from adapters import AdapterConfigError, Fuse, Parallel, Stack

    assert Stack("a", Parallel("b", "c")).parallel_channels == 2 and Stack("a", "b").parallel_channels == 1
    model = patched("bert")
    assert not model.has_adapters() and not model.has_parallel_adapters
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    assert model.has_adapters()
    model.set_active_adapters(Parallel("a", "b"))
    assert model.has_parallel_adapters
    model.set_active_adapters("a")
    assert not model.has_parallel_adapters
    model.add_adapter_fusion(Fuse("a", "b"))
    model.adapter_fusion_to(Fuse("a", "b"), dtype=torch.float64)
    fused = [p for n, p in model.named_parameters() if "adapter_fusion_layer" in n]
    assert fused and all(p.dtype == torch.float64 for p in fused)
    model.adapter_fusion_to("a,b", dtype=torch.float32)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "adapter_fusion_layer" in n)
    with pytest.raises(AdapterConfigError, match="No fusion named 'a,c'"):
        model.adapter_fusion_to(["a", "c"])
    # AdapterHub's fusion_name_map: only fusions added under a name of their own
    assert model.adapters_config.fusion_name_map == {}
    model.add_adapter_fusion(["b", "a"], name="ba")
    assert model.adapters_config.fusion_name_map == {"ba": ["b", "a"]}
    model.adapters_config.fusion_name_map["ba"].append("x")  # a copy: the registry is unchanged
    assert model.adapters_config.fusion_name_map == {"ba": ["b", "a"]}
    assert model.adapters_config.to_dict()["fusion_name_map"]["ba"] == ["b", "a"]


def test_common_config_value_returns_the_shared_value_or_names_the_difference():
    from conftest import patched

    from adapters import AdapterConfigError

    model = patched("bert")
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    model.add_adapter("c", config="double_seq_bn")
    registry = model.adapters_config
    assert registry.common_config_value(["a", "b"], "output_adapter") is True
    assert registry.get(adapter_name="a") is registry.adapters["a"]
    with pytest.raises(AdapterConfigError, match="differ in mh_adapter"):
        registry.common_config_value(["a", "c"], "mh_adapter")
    with pytest.raises(AdapterConfigError, match="No adapter named 'x'"):
        registry.common_config_value(["a", "x"], "mh_adapter")


def test_iter_layers_get_layer_and_supports_adapter():
    """AdapterHub's layer numbering (an encoder-decoder's decoder after its encoder) and its
    support check, answered by the same checks add_adapter makes (GPT-J refuses prefix tuning)."""
    from conftest import n_layers, patched

    from adapters import AdapterConfigError, LoRAConfig, PrefixTuningConfig

    t5 = patched("t5")
    layers = list(t5.iter_layers())
    assert [i for i, _ in layers] == list(range(n_layers("t5")))  # encoder and decoder layers
    encoder_layers = len(t5.encoder.block)
    assert layers[0][1] is t5.encoder.block[0] and layers[encoder_layers][1] is t5.decoder.block[0]
    assert t5.get_layer(-1) is t5.decoder.block[-1]
    with pytest.raises(IndexError, match="no layer 99"):
        t5.get_layer(99)
    gptj = patched("gptj")
    assert gptj.supports_adapter("lora") and gptj.supports_adapter(LoRAConfig(r=4))
    assert gptj.supports_adapter("prefix_tuning") and gptj.supports_adapter(PrefixTuningConfig())
    assert not gptj.supports_adapter("adaption_prompt")  # its gated prompt needs the attention interface
    assert patched("bert").supports_adapter("prefix_tuning") and patched("bert").support_prompt_tuning
    assert not patched("whisper").support_prompt_tuning  # its inputs are not token ids
    with pytest.raises(AdapterConfigError, match="Unknown adapter type or config 'lorra'"):
        t5.supports_adapter("lorra")


def test_freeze_embeddings_freezes_the_lm_heads_embeddings_as_adapterhub():
    from conftest import patched

    lm = patched("gpt2", "clm")
    lm.freeze_embeddings()
    assert not lm.get_output_embeddings().weight.requires_grad
    lm.freeze_embeddings(False)
    assert lm.get_output_embeddings().weight.requires_grad
    patched("bert").freeze_embeddings()  # no output embeddings: nothing to do
