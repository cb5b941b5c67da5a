"""The guide's rule "every public function has a docstring with an example", checked on the public
API: the objects of ``adapters.__all__`` (for a module: the module and the objects of its
``__all__``), for classes every public method, classmethod, staticmethod and property defined in
this package along their MRO (not those inherited from torch or transformers), and the model API
of :class:`~adapters.ModelAdaptersMixin` and of the heads' ``FlexibleHeadsMixin``."""

from __future__ import annotations

import inspect

import adapters
from adapters.heads.model_mixin import FlexibleHeadsMixin
from adapters.model_mixin import ModelAdaptersMixin

# Public names that cannot carry a docstring of their own, each with the reason.
EXEMPT = {
    # plain dicts (string id -> config): an instance of dict has dict's docstring; both maps are
    # documented in docs/api.rst and used in the examples of register_config / AdapterConfig.load
    "adapters.ADAPTER_CONFIG_MAP",
    "adapters.ADAPTERFUSION_CONFIG_MAP",
    # AdapterHub's default config ids (strings), documented in docs/api.rst
    "adapters.DEFAULT_ADAPTER_CONFIG",
    "adapters.DEFAULT_ADAPTERFUSION_CONFIG",
    # AdapterHub's config class -> AdapterModel class mapping: an instance of a read-only Mapping
    # (its class, adapters.heads.adapter_model._AdapterModelMapping, has the docstring and example);
    # documented in docs/api.rst
    "adapters.ADAPTER_MODEL_MAPPING",
}


def _ours(obj) -> bool:
    return (getattr(obj, "__module__", None) or "").split(".")[0] == "adapters"


def _class_members(cls, qualname: str, found: dict) -> None:
    found.setdefault(id(cls), (qualname, cls))
    for klass in cls.__mro__:
        if not _ours(klass):
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(attr, (staticmethod, classmethod)):
                function = attr.__func__
            elif isinstance(attr, property):
                function = attr.fget
            elif inspect.isfunction(attr):
                function = attr
            else:
                continue
            found.setdefault(id(function), (f"{klass.__module__}.{klass.__qualname__}.{name}", function))


def public_api() -> dict[str, object]:
    """Qualified name -> object, for everything the rule applies to (each object once)."""
    found: dict[int, tuple[str, object]] = {}
    exempt = []
    for name in adapters.__all__:
        obj = getattr(adapters, name)
        qualname = f"adapters.{name}"
        if qualname in EXEMPT:
            exempt.append(qualname)
        elif inspect.ismodule(obj):
            found.setdefault(id(obj), (obj.__name__, obj))
            for member_name in getattr(obj, "__all__", ()):
                member = getattr(obj, member_name)
                if inspect.isclass(member) and _ours(member):
                    _class_members(member, f"{obj.__name__}.{member_name}", found)
                elif callable(member) and _ours(member):
                    found.setdefault(id(member), (f"{obj.__name__}.{member_name}", member))
        elif inspect.isclass(obj):
            _class_members(obj, qualname, found)
        elif callable(obj):
            found.setdefault(id(obj), (qualname, obj))
        else:
            raise AssertionError(f"{qualname} is public data without a docstring: document it or add it to EXEMPT with a reason")
    for mixin in (ModelAdaptersMixin, FlexibleHeadsMixin):
        _class_members(mixin, f"{mixin.__module__}.{mixin.__qualname__}", found)
    return dict(found.values())


def test_every_public_object_has_a_docstring_with_an_example():
    api = public_api()
    assert len(api) > 150, "the walk found too little; is adapters.__all__ complete?"
    missing = sorted(name for name, obj in api.items() if "Example" not in (inspect.getdoc(obj) or ""))
    assert not missing, "docstrings without an example (add 'Example::' with a short example):\n  " + "\n  ".join(missing)


def test_the_walk_reaches_methods_properties_and_the_model_api():
    api = public_api()
    for name in (
        "adapters.model_mixin.ModelAdaptersMixin.add_adapter",  # model API
        "adapters.heads.model_mixin.FlexibleHeadsMixin.add_classification_head",  # heads API
        "adapters.composition.batch_requirement",  # a module's __all__
        "adapters.composition.Fuse.name",  # property
        "adapters.configuration.base.AdapterConfig.load",  # classmethod
    ):
        assert name in api, name
    # nothing inherited from torch or transformers is part of the walk
    assert not any(".nn.modules." in name or name.startswith("transformers.") for name in api)
    assert all(name.startswith("adapters") for name in api)


def test_exemptions_are_names_of_the_public_api():
    assert EXEMPT <= {f"adapters.{name}" for name in adapters.__all__}
