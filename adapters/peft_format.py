"""PEFT's checkpoint format, read and written: the layout every method shares, and dispatch by
``peft_type`` to the method families that map to it.

A PEFT folder holds ``adapter_config.json`` (with ``peft_type``) and ``adapter_model.safetensors``
(:data:`PEFT_WEIGHTS_NAME`; older PEFT wrote ``adapter_model.bin``) whose keys are the wrapped
model's module paths behind ``base_model.model.`` with the adapter name left out
(``...q_proj.lora_A.weight``); prompt-learning methods keep their prompt encoder's weights at the
top level (``prompt_embeddings``).

Each family that PEFT has declares a :class:`~adapters.methods.registry.PeftMapping` in its own
module (``adapters/methods/<family>.py``): the PEFT types it reads, how it reads their config and
renames, reshapes and checks their weights, and how it writes its adapters. The weight transforms
(LoHa, LoKr, OFT, HRA, AdaLoRA) share one layout, which this module implements from their
mappings' parameter names and fields. This module owns what all families share:

* PEFT's bookkeeping fields (``task_type``, ``peft_version``, ...), accepted with any value, and
  written (``base_model_name_or_path``, ``inference_mode``);
* the targeting fields of the methods on linear layers (``target_modules``, ``exclude_modules``,
  ``layers_to_transform``, ``layers_pattern``, ``modules_to_save``), read for the family;
* the copies of ``modules_to_save``, stored under the module's own path (``...classifier.weight``),
  which become ``classifier.modules_to_save.<name>.weight`` here;
* the field checks (:data:`PEFT_FIELDS`, from the families' tables): a field this version does not
  implement is accepted at PEFT's default and refused otherwise, with an error naming it; a field
  PEFT 0.21 does not define (a newer PEFT's) is dropped with a warning naming the file. Values are
  checked as any config's (a ``lora_alpha`` of NaN is refused, naming PEFT's field).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Optional

from . import logging
from .configuration.base import AdapterConfig
from .configuration.validation import describe, did_you_mean
from .errors import AdapterConfigError
from .methods.registry import MethodFamily, PeftMapping, families, families_of, family

__all__ = [
    "PEFT_WEIGHTS_NAME",
    "PEFT_LEGACY_WEIGHTS_NAME",
    "PEFT_FIELDS",
    "config_from_peft",
    "check_peft_fields",
    "check_peft_model",
    "peft_weights_for_model",
    "saved_module_paths",
    "state_from_peft",
    "peft_checkpoint",
    "trained_modules_outside_adapters",
    "check_peft_adaption_prompt_model",
    "prefix_from_peft",
    "PEFT_TYPES",
    "config_from_peft_meta",
    "convert_peft_key",
    "weight_transform_to_peft",
    "peft_weight_transform_checkpoint",
]

PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_LEGACY_WEIGHTS_NAME = "adapter_model.bin"
_PREFIX = "base_model.model."
logger = logging.get_logger(__name__)

# bookkeeping every PEFT config has: any value
_PEFT_COMMON = ("peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode")
_NO_FIELDS = ((), (), {})


# -- reading a config -------------------------------------------------------------------------------------


def _peft_families() -> dict[str, MethodFamily]:
    """PEFT ``peft_type`` -> the registered family that reads it."""
    return {peft_type: f for f in families() if f.peft is not None for peft_type in f.peft.peft_types}


def _fields_of(peft_type: str, method_family: MethodFamily) -> tuple[tuple, tuple, dict]:
    return method_family.peft.fields.get(peft_type, _NO_FIELDS)


#: peft_type -> (fields read into our config, fields read with any value, {unimplemented field: PEFT's
#: default, the only value read}), from the families' :class:`~adapters.methods.registry.PeftMapping`
#: (as registered when this module was imported); any other field is dropped with a warning
PEFT_FIELDS: dict[str, tuple[tuple, tuple, dict]] = {t: _fields_of(t, f) for t, f in _peft_families().items()}


def _listify(value):
    return list(value) if isinstance(value, (list, tuple, set)) else value


def _is_peft_default(value, default) -> bool:
    """Whether a value read from JSON is PEFT's default (``None``, ``False``, ``[]`` and ``{}`` all
    mean "unset" for the unset-by-default fields; ``0`` is not ``False``)."""
    if default is None or default is False:
        return value is None or value is False or (isinstance(value, (list, dict)) and not value)
    return type(value) is type(default) and value == default


def check_peft_fields(meta: dict, file: Optional[str] = None) -> None:
    """Refuse a non-default value of a PEFT 0.21 field this version does not implement, and warn
    (naming ``file``) about fields PEFT 0.21 does not define.

    Raises:
        AdapterConfigError: an unknown ``peft_type``, or an unimplemented field that is set (the
            message names it and PEFT's default).

    Example::

        >>> check_peft_fields({"peft_type": "LORA", "r": 8, "layer_replication": [[0, 2]]}, "a/adapter_config.json")
        Traceback (most recent call last):
        adapters.errors.AdapterConfigError: a/adapter_config.json: PEFT field layer_replication=[[0, 2]] ...
    """
    label = file or "PEFT's adapter_config.json"
    peft_type = meta.get("peft_type")
    known = _peft_families()
    if peft_type not in known:
        raise AdapterConfigError(
            f"{label}: PEFT method {peft_type!r} is not supported in this version ({', '.join(known)} are)."
            f"{did_you_mean(peft_type, known)}"
        )
    read, any_value, unimplemented = _fields_of(peft_type, known[peft_type])
    unknown = []
    for key, value in meta.items():
        if key in _PEFT_COMMON or key in read or key in any_value:
            continue
        if key in unimplemented:
            if not _is_peft_default(value, unimplemented[key]):
                raise AdapterConfigError(
                    f"{label}: PEFT field {key}={value!r} is not supported for {peft_type} in this version; only PEFT's "
                    f"default ({unimplemented[key]!r}) can be read. Load this adapter with PEFT."
                )
            continue
        unknown.append(key)
    if unknown:
        logger.warning(
            f"{label}: ignoring {', '.join(repr(k) for k in unknown)}, which PEFT 0.21's {peft_type} config does not "
            f"define (written by a newer PEFT?); the adapter is loaded without {'them' if len(unknown) > 1 else 'it'}."
        )


def config_from_peft(meta: dict, file: Optional[str] = None) -> AdapterConfig:
    """Our config equivalent to a PEFT ``adapter_config.json`` (a :class:`~adapters.LoRAConfig` for
    LoRA, DoRA, rsLoRA and (IA)³; the method's config for the others), its values checked.

    ``file`` (the JSON file's path) is named in warnings and errors. PEFT 0.21's fields are read
    as :data:`PEFT_FIELDS` says (see the module docstring); fields a newer PEFT added are dropped
    with a warning.

    Raises:
        AdapterConfigError: an unsupported ``peft_type``, a set field this version does not
            implement, or a bad value (``lora_alpha: NaN``); the message names the file and
            PEFT's field.

    Example::

        >>> config_from_peft({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]})
    """
    label = file or "PEFT's adapter_config.json"
    if not isinstance(meta, Mapping):
        raise AdapterConfigError(f"{label} must hold a JSON object (a dict), not {describe(meta)}.")
    check_peft_fields(meta, file)
    method_family = _peft_families()[meta.get("peft_type")]
    try:
        return _read_config(method_family, meta)
    except ValueError as error:  # our configs' AdapterConfigError, the families' refusals
        field = getattr(error, "field", None)
        theirs = method_family.peft.field_names.get(field, field)
        named = f"PEFT field {theirs!r}: " if theirs is not None and theirs != field and theirs in meta else ""
        raise AdapterConfigError(f"{label}: {named}{error}") from error


def _read_config(method_family: MethodFamily, meta: dict) -> AdapterConfig:
    mapping = method_family.peft
    targeting = {}
    if mapping.shares_targeting:
        layers_pattern = meta.get("layers_pattern")
        targeting = dict(
            target_modules=_listify(meta.get("target_modules")),
            exclude_modules=_listify(meta.get("exclude_modules")),
            layers_to_transform=_listify(meta.get("layers_to_transform")),
            layers_pattern=layers_pattern[0] if isinstance(layers_pattern, list) else layers_pattern,
            modules_to_save=_listify(meta.get("modules_to_save")) or None,
            selfattn_lora=False,
        )
    if method_family.build_linear is not None:  # the weight transforms share one layout
        return config_from_peft_meta(meta, targeting)
    return mapping.read_config(meta, targeting)


# -- the weight transforms' shared layout (LoHa, LoKr, OFT, HRA, AdaLoRA, ...) ----------------------------
# PEFT's keys are <module>.<parameter> with the parameter names of the family's PeftMapping.parameters
# (those in weight_suffixed with a ".weight" suffix, as OFT's oft_R.weight; AdaLoRA's lora_A / lora_B
# without the suffix LoRA's have); ours <module>.loras.<name>.<parameter>. The config fields share
# PEFT's names; the family's read_config / write_fields read and write its own. PEFT applies these
# methods to nn.Linear only (linear_only; AdaLoRA also to transformers' Conv1D), so an adapter on
# GPT-2's Conv1D layers or on some parts of a fused projection cannot be written for PEFT except for
# AdaLoRA on whole modules; writing such an adapter raises an error that says so.


def _mappings() -> dict:
    """PEFT ``peft_type`` -> (family, :class:`~adapters.methods.registry.PeftMapping`) of every
    weight-transform family PEFT has."""
    return {f.peft.peft_type: (f, f.peft) for f in families() if f.build_linear is not None and f.peft is not None}


#: PEFT ``peft_type`` -> our config ``architecture`` for the weight-transform methods
PEFT_TYPES = {peft_type: f.name for peft_type, (f, _) in _mappings().items()}


def _key_pattern() -> re.Pattern:
    """PEFT key -> (module path, our parameter name); AdaLoRA's A / B have no ".weight" suffix."""
    params = sorted({p for _, m in _mappings().values() for p in m.parameters} - {"lora_A", "lora_B"})
    return re.compile(rf"^(?P<module>.+)\.(?P<param>{'|'.join(params)}|lora_A|lora_B)(\.default)?(?P<weight>\.weight)?$")


_KEY = _key_pattern()
_WEIGHT_SUFFIXED = {p for _, m in _mappings().values() for p in m.weight_suffixed}


def config_from_peft_meta(meta: dict, targeting: dict):
    """Our config for a PEFT ``adapter_config.json`` of a weight-transform method; ``targeting``
    holds the shared targeting fields already read (``target_modules`` …).

    Example::

        >>> config_from_peft_meta({"peft_type": "LOHA", "r": 4, "alpha": 8}, {"target_modules": ["query"]})
    """
    peft_type = meta["peft_type"]
    if meta.get("bias", "none") not in ("none", None):
        raise AdapterConfigError(f"PEFT field bias={meta['bias']!r} is not supported for {peft_type} in this version (only 'none').")
    if meta.get("use_effective_conv2d"):
        raise AdapterConfigError("PEFT field use_effective_conv2d=True applies to convolutions, which this version does not adapt.")
    mapping = _mappings().get(peft_type)
    if mapping is None:
        raise AdapterConfigError(f"PEFT method {peft_type!r} is not a weight-transform method ({', '.join(PEFT_TYPES)} are).")
    return mapping[1].read_config(meta, targeting)


def convert_peft_key(key: str, name: str):
    """Our key for a PEFT weight key of these methods, or None if it is not one.

    Example::

        >>> convert_peft_key("encoder.layer.0.attention.self.query.hada_w1_a", "a")
        'encoder.layer.0.attention.self.query.loras.a.hada_w1_a'
    """
    match = _KEY.match(key)
    if match is None:
        return None
    param = match.group("param")
    if param in ("lora_A", "lora_B") and match.group("weight"):
        return None  # LoRA's keys (lora_A.weight): not ours
    if match.group("weight") and param not in _WEIGHT_SUFFIXED:
        return None
    return f"{match.group('module')}.loras.{name}.{param}"


def weight_transform_to_peft(model, name: str, part) -> tuple[dict, dict]:
    """``(fields, weights)`` of weight-transform adapter ``name`` (config ``part``) in PEFT's layout:
    the method's fields of PEFT's config and its weights, keyed relative to the wrapped model
    (:func:`peft_checkpoint` adds the layout every method shares).

    Raises:
        AdapterConfigError: the adapter sits where PEFT cannot load it (Conv1D layers for LoHa, LoKr, OFT
            and HRA; some parts of a fused projection).

    Example::

        >>> fields, weights = weight_transform_to_peft(model, "loha", model.adapters_config.adapters["loha"])
    """
    mapping = next(m for f, m in _mappings().values() if f.name == part.architecture)
    top_prefix = "" if model.base_model is model else model.base_model_prefix + "."
    paths = {id(m): top_prefix + p for p, m in model.base_model.named_modules()}
    hosts = [h for h in model._adapter_hosts if h.hosts_weight_deltas and name in h.loras]
    targets, weights = [], {}
    for host in hosts:
        adapter, path = host.loras[name], paths[id(host)]
        if adapter.out_index is not None:
            raise AdapterConfigError(
                f"Adapter {name!r} covers only some parts of the fused projection {path!r}; PEFT adapts whole modules, "
                f"so it cannot be written in PEFT's format. Target whole modules (target_modules=[...]) instead."
            )
        if host.fan_in_fan_out and mapping.linear_only:
            raise AdapterConfigError(
                f"Adapter {name!r} adapts the Conv1D layer {path!r} (GPT-2); PEFT's {mapping.peft_type} "
                f"supports nn.Linear layers only, so it cannot be written in PEFT's format."
            )
        targets.append(path)
        for param_name, param in adapter.named_parameters(recurse=False):
            weights[f"{path}.{param_name}" + (".weight" if param_name in mapping.weight_suffixed else "")] = param.detach()
    return {"target_modules": targets, "bias": "none", **mapping.write_fields(part, hosts, name)}, weights


def peft_weight_transform_checkpoint(model, name: str, part) -> tuple[dict, dict]:
    """``(adapter_config, weights)`` in PEFT's layout for weight-transform adapter ``name`` (whose
    config is ``part``): :func:`peft_checkpoint`, kept under this name.

    Raises:
        AdapterConfigError: the adapter sits where PEFT cannot load it (Conv1D layers for LoHa, LoKr, OFT
            and HRA; some parts of a fused projection).

    Example::

        >>> meta, weights = peft_weight_transform_checkpoint(model, "loha", model.adapters_config.adapters["loha"])
    """
    if part.architecture not in PEFT_TYPES.values():
        raise AdapterConfigError(
            f"peft_weight_transform_checkpoint takes a weight-transform adapter ({', '.join(PEFT_TYPES.values())}); "
            f"adapter {name!r} is a {part.architecture!r} adapter. Use adapters.peft_format.peft_checkpoint."
        )
    return peft_checkpoint(model, name)


# -- loading weights --------------------------------------------------------------------------------------


def _mappings_of(config) -> list[PeftMapping]:
    """The PEFT mappings of the families ``config``'s parts belong to (those PEFT has)."""
    found = []
    for method_family, _ in families_of(config):
        if method_family.peft is not None and method_family.peft not in found:
            found.append(method_family.peft)
    return found


def check_peft_model(model, config) -> None:
    """Raise an AdapterConfigError if PEFT computes something else than this library for an adapter
    of ``config`` on ``model`` (Llama-Adapter: on models other than Llama and Mistral).

    Example::

        >>> check_peft_model(llama, AdaptionPromptConfig())
    """
    for mapping in _mappings_of(config):
        if mapping.check_model is not None:
            mapping.check_model(model)


def peft_weights_for_model(model, meta: dict, config, state: dict) -> dict:
    """PEFT's weights ``state`` (read from the file of PEFT config ``meta``) made to fit ``model``
    before their keys are renamed (:func:`state_from_peft`): prefix tuning's cache layout.

    Raises:
        AdapterConfigError: the checkpoint's sizes or layout do not fit ``model`` (the message says which).

    Example::

        >>> state = peft_weights_for_model(t5, meta, PrefixTuningConfig(flat=True), state)
    """
    for mapping in _mappings_of(config):
        if mapping.load_weights is not None:
            state = mapping.load_weights(model, meta, state)
    return state


def saved_module_paths(model, config) -> list[str]:
    """The model's module paths a PEFT checkpoint's ``modules_to_save`` names (their weights are
    stored under the module's own path), for an adapter of ``config``.

    Example::

        >>> saved_module_paths(model, LoRAConfig(modules_to_save=["classifier"]))
        ['classifier']
    """
    from .hooks.targeting import matches_modules

    names = [
        n for method_family, part in families_of(config)
        if method_family.peft is not None and method_family.peft.shares_targeting for n in (part.modules_to_save or ())
    ]
    return [path for path, _ in model.named_modules() if names and path and matches_modules(path, names)]


def _key_converters() -> list:
    """``(key, value, name) -> (key, value) or None`` of every family PEFT has (the weight
    transforms' once, through their shared layout)."""
    converters, weight_transforms = [], False
    for method_family in families():
        if method_family.peft is None:
            continue
        if method_family.peft.convert_key is not None:
            converters.append(method_family.peft.convert_key)
        elif method_family.build_linear is not None and not weight_transforms:
            weight_transforms = True
            converters.append(_weight_transform_key)
    return converters


def _weight_transform_key(key: str, value, name: str):
    ours = convert_peft_key(key, name)
    return None if ours is None else (ours, value)


def state_from_peft(state: dict, name: str, saved_modules=()) -> dict:
    """PEFT weight keys -> this library's (``<module>.loras.<name>.<param>`` and the like),
    relative to the wrapped model, each renamed by the family whose key it is; keys under one of
    the module paths ``saved_modules`` (``modules_to_save``) move to
    ``<module>.modules_to_save.<name>.<param>``; keys no family knows stay as they are (the loader
    reports them as unexpected).

    Example::

        >>> state_from_peft({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": A}, "a")
        {'model.layers.0.self_attn.q_proj.loras.a.lora_A': A}
    """
    converted = {}
    by_length = sorted(saved_modules, key=len)
    converters = _key_converters()
    for key, value in state.items():
        key = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        owner = next((p for p in by_length if key.startswith(p + ".")), None)
        if owner is not None:
            converted[f"{owner}.modules_to_save.{name}.{key[len(owner) + 1:]}"] = value
            continue
        ours = next((found for convert in converters for found in [convert(key, value, name)] if found is not None), None)
        if ours is None:
            converted[key] = value  # reported as unexpected by the loader
        else:
            converted[ours[0]] = ours[1]
    return converted


# -- writing ----------------------------------------------------------------------------------------------


def _not_writable(name: str) -> AdapterConfigError:
    titles = [f.title for f in families() if f.peft is not None]
    methods = f"{', '.join(titles[:-1])} or {titles[-1]}" if len(titles) > 1 else "".join(titles)
    return AdapterConfigError(f"Adapter {name!r} is not a single {methods} adapter; only those can be written in PEFT's format.")


def peft_checkpoint(model, name: str) -> tuple[dict, dict]:
    """``(adapter_config, weights)`` in PEFT's layout for adapter ``name`` (of one method PEFT has),
    written by its family's :class:`~adapters.methods.registry.PeftMapping`.

    Raises:
        AdapterConfigError: the adapter has no PEFT equivalent (another method, a union of methods,
            a gated adapter, ...; the message says why).

    Example::

        >>> config, weights = peft_checkpoint(model, "lora")
    """
    config = model.adapters_config.adapters[name]
    parts = config.configs_by_architecture()
    method_family = family(parts[0].architecture) if len(parts) == 1 else None
    if method_family is None or method_family.peft is None:
        raise _not_writable(name)
    mapping, part = method_family.peft, parts[0]
    if mapping.check_model is not None:
        mapping.check_model(model)
    if method_family.build_linear is not None:  # the weight transforms share one layout
        fields, weights = weight_transform_to_peft(model, name, part)
    else:
        fields, weights = mapping.write(model, name, part)
    if not mapping.prompt_learning:
        weights = {key if key in mapping.model_level else _PREFIX + key: value for key, value in weights.items()}
    meta = {
        "peft_type": mapping.peft_type,
        "base_model_name_or_path": getattr(model.config, "name_or_path", None) or None,
        "inference_mode": True,
        "task_type": None,
    }
    trained = trained_modules_outside_adapters(model)
    if mapping.shares_targeting:
        saved = [h for h in model._adapter_hosts if h.keeps_module_copies and name in h.modules_to_save]
        for host in saved:  # PEFT stores a copy under the module's own path
            for key, value in host.modules_to_save[name].state_dict().items():
                weights[f"{_PREFIX}{host.location}.{key}"] = value
        # modules trained beside the adapters (a classifier, an LM head trained with
        # train_output_embeddings=True): PEFT's modules_to_save, or PEFT would load the untrained ones
        trained = [path for path in trained if path not in {h.location for h in saved}]
        owned = model._adapter_owned_ids(module_copies=True)
        for path in trained:
            for key, value in model.get_submodule(path).state_dict(keep_vars=True).items():
                if id(value) not in owned:  # an adapter on that module is written by its family
                    weights[f"{_PREFIX}{path}.{key}"] = value
        meta["modules_to_save"] = [h.location for h in saved] + trained or None
    elif trained:
        logger.warning(
            f"Adapter {name!r} is written in PEFT's {mapping.peft_type} format, which has no modules_to_save, but the "
            f"model also trains {trained} outside its adapters: those are not written, and PEFT loads them as the base "
            f"model has them. Save them separately (model.save_pretrained, or the adapter in this library's format "
            f"with with_head=True), or freeze them before training."
        )
    meta.update(fields)
    return meta, {k: v.detach().cpu().contiguous() for k, v in weights.items()}


def trained_modules_outside_adapters(model) -> list[str]:
    """The paths (from the model's top) of the modules that hold a trainable parameter no adapter
    owns (its modules, shared parameters, the biases it trains, its copies of ``modules_to_save``,
    fusion layers), while the base model is frozen (``train_adapter``): a classifier trained with
    the adapter, an LM head trained with ``train_output_embeddings=True``, embeddings trained with
    ``train_embeddings=True`` (each path a tensor has, so a tied output embedding is named too).
    Flexible heads are left out: they are saved with the adapter's head. Empty while the base
    model is not frozen (everything trains: not an adapter training).

    Example::

        >>> model.train_adapter("lora")               # a sequence classifier: its head trains
        >>> trained_modules_outside_adapters(model)
        ['classifier']
    """
    if not model.base_model.__dict__.get("model_frozen"):
        return []
    owned = model._adapter_owned_ids(module_copies=True)
    heads = model.__dict__.get("_modules", {}).get("heads")
    if heads is not None:  # a tied head's output matrix is the input embedding: that one counts
        base = {id(p) for p in model.base_model.parameters()}
        owned.update(id(p) for p in heads.parameters() if id(p) not in base)
    paths: list[str] = []
    for key, param in model.named_parameters(remove_duplicate=False):
        if param.requires_grad and id(param) not in owned:
            path = key.rpartition(".")[0]
            if path and path not in paths:
                paths.append(path)
    return paths


# -- names kept for callers of earlier versions: each is a family's, found through the registry --------


def _mapping_of_type(peft_type: str) -> PeftMapping:
    return _peft_families()[peft_type].peft


def check_peft_adaption_prompt_model(model) -> None:
    """Raise an AdapterConfigError unless PEFT's adaption prompt computes on ``model`` what ours
    does (the Llama-Adapter family's :attr:`~adapters.methods.registry.PeftMapping.check_model`;
    :func:`check_peft_model` checks any config).

    Example::

        >>> check_peft_adaption_prompt_model(llama_model)
    """
    _mapping_of_type("ADAPTION_PROMPT").check_model(model)


def prefix_from_peft(model, meta: dict, prompt):
    """PEFT's ``prompt_embeddings`` ``(P, L·2·H·D)`` -> this library's flat prefix of the model's
    prefix sites (the prefix-tuning family's reshaping; see
    :func:`adapters.methods.prefix_tuning.prefix_from_peft`).

    Raises:
        AdapterConfigError: the checkpoint's sizes or layout do not fit ``model``.

    Example::

        >>> flat = prefix_from_peft(t5, meta, weights["prompt_embeddings"])
    """
    key = PeftMapping.PROMPT_KEY
    return _mapping_of_type("PREFIX_TUNING").load_weights(model, meta, {key: prompt})[key]
