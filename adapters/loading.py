"""Saving and loading adapters and fusions in AdapterHub's folder layout.

An adapter folder holds ``adapter_config.json`` (``{"config": ..., "name", "hidden_size",
"model_type", "model_class", "model_name", "version"}``) and ``adapter.safetensors`` (legacy:
``pytorch_adapter.bin``, read with ``torch.load(weights_only=True)`` only). A fusion folder holds
``adapter_fusion_config.json`` and ``model_adapter_fusion.safetensors`` (legacy:
``pytorch_model_adapter_fusion.bin``).

Weight keys are written relative to the base model (``encoder.layer.0.output.adapters.<name>...``)
and read with or without the head model's prefix (``bert.``), so checkpoints move freely between
a bare model and the same model with a head.

Keys written against transformers 4 module paths load too: where transformers 5 renamed a model's
modules (ViT's ``encoder.layer.N.attention.attention.query`` is ``layers.N.attention.q_proj``
now), a key the adapter does not have is renamed with transformers' own checkpoint-conversion
mapping for the model — the renaming ``from_pretrained`` applies to the base weights — and then
with the spec's ``legacy_key_renames`` (adapter modules in blocks transformers dissolved).

Loading is atomic: the adapter is built under a temporary name, every key and shape is checked
against the file, and only then renamed; any problem raises :class:`AdapterLoadError` naming the
file and leaves the model as it was.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Optional

import torch

from . import logging
from . import __version__
from .composition import Fuse
from .errors import AdapterLoadError
from .configuration.base import AdapterConfig
from .configuration.fusion import AdapterFusionConfig
from .peft_format import (
    PEFT_LEGACY_WEIGHTS_NAME,
    PEFT_WEIGHTS_NAME,
    check_peft_adaption_prompt_model,
    config_from_peft,
    peft_checkpoint,
    prefix_from_peft,
    state_from_peft,
)

logger = logging.get_logger(__name__)

__all__ = [
    "AdapterLoadError",
    "save_adapter",
    "load_adapter",
    "save_adapter_fusion",
    "load_adapter_fusion",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "SAFE_WEIGHTS_NAME",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "pytorch_adapter.bin"
SAFE_WEIGHTS_NAME = "adapter.safetensors"
FUSION_CONFIG_NAME = "adapter_fusion_config.json"
FUSION_WEIGHTS_NAME = "pytorch_model_adapter_fusion.bin"
FUSION_SAFE_WEIGHTS_NAME = "model_adapter_fusion.safetensors"

# module-dict names under which methods keep per-adapter modules (state-dict key segments)
ADAPTER_CONTAINERS = (
    "adapters", "loras", "prefix_tunings", "prefix_gates", "prompt_tunings", "shared_parameters", "modules_to_save",
    "invertible_adapters", "adaption_prompts",
)
# AdapterHub saved its prefix pool once more under every layer (``<attention>.prefix_tuning.pool.``):
# copies of ``prefix_tuning.prefix_tunings.<name>``, which is what loads
_PREFIX_POOL_COPY = re.compile(r"\.prefix_tuning\.pool\.prefix_tunings\.")


# -- key selection -----------------------------------------------------------------------------------
def _adapter_key_pattern(name: str) -> re.Pattern:
    containers = "|".join(ADAPTER_CONTAINERS)
    return re.compile(rf"(^|\.)({containers})\.{re.escape(name)}\.")


def _fusion_key_pattern(fusion_name: str) -> re.Pattern:
    return re.compile(rf"(^|\.)adapter_fusion_layer\.{re.escape(fusion_name)}\.")


def _select_parameters(model, pattern: re.Pattern) -> dict[str, torch.nn.Parameter]:
    """Name -> parameter, for the parameters whose key matches ``pattern``; names are relative to
    the base model, or to the whole model for parameters outside it (a head's
    ``modules_to_save`` copy)."""
    return _strip_prefix(model, {k: p for k, p in model.named_parameters() if pattern.search(k)})


def _rename_in_keys(state: dict, pattern_fn, old: str, new: str) -> dict:
    if old == new:
        return state
    old_pattern = pattern_fn(old)
    renamed = {}
    for key, value in state.items():
        match = old_pattern.search(key)
        if match:
            start, end = match.span()
            key = key[:start] + match.group(0).replace(f".{old}.", f".{new}.") + key[end:]
        renamed[key] = value
    return renamed


def _strip_prefix(model, state: dict) -> dict:
    prefix = getattr(model, "base_model_prefix", "") + "."
    if model.base_model is model or prefix == ".":
        return state
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


# -- files ---------------------------------------------------------------------------------------------
def _resolve_folder(path: str, **hub_kwargs) -> str:
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise AdapterLoadError(f"{path} is a file; pass the folder that holds {CONFIG_NAME} and the weights.")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=path, **hub_kwargs)
    except Exception as error:  # no network, unknown repo, invalid id
        raise AdapterLoadError(
            f"{path!r} is not a local folder and could not be downloaded from the Hugging Face Hub ({error}). "
            f"Check the path, or the repo id and your network."
        ) from error


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise AdapterLoadError(f"{path} is missing: the folder is not an adapter checkpoint (or the wrong kind).")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterLoadError(f"{path} is not valid JSON ({error}); the file is corrupt.") from error


def _read_weights(folder: str, safe_name: str, legacy_name: str) -> tuple[dict, str]:
    safe_path, legacy_path = os.path.join(folder, safe_name), os.path.join(folder, legacy_name)
    if os.path.isfile(safe_path):
        from safetensors.torch import load_file

        path = safe_path
        loader = lambda: load_file(safe_path, device="cpu")  # noqa: E731
    elif os.path.isfile(legacy_path):
        path = legacy_path
        loader = lambda: torch.load(legacy_path, map_location="cpu", weights_only=True)  # noqa: E731
    else:
        raise AdapterLoadError(f"{folder} has no weights file: expected {safe_name} or {legacy_name}.")
    try:
        state = loader()
    except Exception as error:
        raise AdapterLoadError(f"{path} could not be read ({type(error).__name__}: {error}); the file is corrupt or truncated.") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdapterLoadError(f"{path} does not hold a dict of tensors.")
    return state, path


def _write_weights(state: dict, folder: str, use_safetensors: bool, safe_name: str, legacy_name: str) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if use_safetensors:
        from safetensors.torch import save_file

        save_file(state, os.path.join(folder, safe_name), metadata={"format": "pt"})
    else:
        torch.save(state, os.path.join(folder, legacy_name))


def _hidden_size(model) -> int:
    """``config.hidden_size``, or for a config without one (CLIP's), its first tower's."""
    from .models.spec import hidden_size_of

    spec = model.__dict__.get("_adapters_spec")
    return hidden_size_of(model.config, spec) if spec is not None else model.config.hidden_size


def _meta(model, name: str) -> dict:
    return {
        "name": name,
        "hidden_size": _hidden_size(model),
        "model_type": model.config.model_type,
        "model_class": type(model).__name__,
        "model_name": getattr(model.config, "name_or_path", "") or "",
        "version": f"adapters.{__version__}",
    }


def _check_hidden_size(model, meta: dict, path: str) -> None:
    saved, size = meta.get("hidden_size"), _hidden_size(model)
    if saved is not None and saved != size:
        raise AdapterLoadError(
            f"{path}: saved for hidden size {saved} but this model has hidden size {size}; "
            f"an adapter only loads into a model of the size it was trained with."
        )
    saved_type = meta.get("model_type")
    if saved_type and saved_type != model.config.model_type:
        logger.warning(f"{path} was saved for model type {saved_type!r}; loading into {model.config.model_type!r}.")


def _check_state(params: dict, state: dict, path: str, ignore_unexpected=lambda key: False, shown=lambda key: key) -> None:
    """Raise an AdapterLoadError unless ``state`` fits ``params`` (same keys and shapes).

    ``shown`` maps a key to the form used in messages (the name in the file, not the staging name).
    """
    missing = sorted(shown(k) for k in set(params) - set(state))
    unexpected = sorted(shown(k) for k in set(state) - set(params) if not ignore_unexpected(k))
    if missing:
        raise AdapterLoadError(
            f"{path} lacks {len(missing)} weight(s) the adapter needs, e.g. {missing[:3]}; "
            f"the file was saved from a different config or architecture."
        )
    if unexpected:
        raise AdapterLoadError(
            f"{path} holds {len(unexpected)} weight(s) this adapter does not have, e.g. {unexpected[:3]}; "
            f"the file was saved from a different config or architecture."
        )
    for key, param in params.items():
        if tuple(state[key].shape) != tuple(param.shape):
            raise AdapterLoadError(
                f"{path}: weight {shown(key)} has shape {tuple(state[key].shape)} but the model expects {tuple(param.shape)}; "
                f"was it saved for another model size or config?"
            )


def _copy_state(params: dict, state: dict) -> None:
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key].to(device=param.device, dtype=param.dtype))


def _copy_checked(params: dict, state: dict, path: str, ignore_unexpected=lambda key: False, shown=lambda key: key) -> None:
    """Check ``state`` against ``params`` (see :func:`_check_state`), then copy it in."""
    _check_state(params, state, path, ignore_unexpected, shown)
    _copy_state(params, state)


# -- adapters --------------------------------------------------------------------------------------------
def save_adapter(
    model,
    save_directory: str,
    adapter_name: str,
    meta_dict: Optional[dict] = None,
    use_safetensors: bool = True,
    format: str = "adapterhub",
) -> None:
    """Save one adapter (see the module docstring for the layout); ``format="peft"`` writes
    PEFT's layout instead (LoRA-family adapters, the weight transforms, Llama-Adapter on
    Llama/Mistral), which ``peft.PeftModel.from_pretrained`` loads.

    Example::

        >>> save_adapter(model, "out/task", "task")
        >>> save_adapter(model, "out/lora-peft", "lora", format="peft")
    """
    model._require_adapter(adapter_name)
    if format not in ("adapterhub", "peft"):
        raise ValueError(f"format must be 'adapterhub' or 'peft', got {format!r}.")
    os.makedirs(save_directory, exist_ok=True)
    if format == "peft":
        peft_meta, weights = peft_checkpoint(model, adapter_name)
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump({**peft_meta, **(meta_dict or {})}, f, indent=2, sort_keys=True)
        _write_weights(weights, save_directory, use_safetensors, PEFT_WEIGHTS_NAME, PEFT_LEGACY_WEIGHTS_NAME)
        return
    meta = _meta(model, adapter_name)
    meta["config"] = model.adapters_config.adapters[adapter_name].to_dict()
    meta.update(meta_dict or {})
    with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(dict(sorted(meta.items())), f, indent=2, sort_keys=True)
    state = {**_select_parameters(model, _adapter_key_pattern(adapter_name)), **model._bias_parameters(adapter_name)}
    _write_weights(state, save_directory, use_safetensors, SAFE_WEIGHTS_NAME, WEIGHTS_NAME)
    interface = model.__dict__.get("_adapters_interface")
    if interface is not None:  # where the weight keys point: adapters.init(model, interface=folder) restores it
        interface.save(save_directory, model.config)
    logger.info(f"Saved adapter {adapter_name!r} to {save_directory}.")


def _layer_index_finder(model) -> Callable[[str], Optional[int]]:
    """``key -> layer index`` of base-model keys (second-stack layers after the first stack's;
    None outside the layers), with the stacks' offsets looked up once."""
    from .models.targeting import first_layers, layer_of

    spec = model.__dict__["_adapters_spec"]
    offsets = first_layers(model.base_model, spec)

    def layer_index(key: str) -> Optional[int]:
        layer_idx = layer_of(key, spec, None, offsets)[0]
        return layer_idx if layer_idx >= 0 else None

    return layer_index


def load_adapter(
    model,
    adapter_name_or_path: str,
    config=None,
    load_as: Optional[str] = None,
    set_active: bool = False,
    leave_out: Optional[list[int]] = None,
    overwrite_ok: bool = False,
    **hub_kwargs,
) -> str:
    """Load an adapter folder into ``model``; returns its name (see the module docstring).

    Example::

        >>> load_adapter(model, "out/task", load_as="task2", set_active=True)
    """
    folder = _resolve_folder(adapter_name_or_path, **hub_kwargs)
    config_path = os.path.join(folder, CONFIG_NAME)
    meta = _read_json(config_path)
    _check_interface(model, folder)
    is_peft = "peft_type" in meta
    try:
        if config is not None:
            adapter_config = AdapterConfig.load(config)
        elif is_peft:
            adapter_config = config_from_peft(meta)
        else:
            adapter_config = AdapterConfig.load(meta.get("config", meta))
    except (ValueError, TypeError, KeyError) as error:
        raise AdapterLoadError(f"{config_path}: the adapter config is invalid ({error}).") from error
    if leave_out:
        adapter_config = adapter_config.replace(leave_out=tuple(sorted(set(adapter_config.leave_out) | set(leave_out))))
    _check_hidden_size(model, meta, config_path)
    if is_peft and adapter_config.architecture == "adaption_prompt":
        try:
            check_peft_adaption_prompt_model(model)
        except ValueError as error:
            raise AdapterLoadError(f"{config_path}: {error}") from error
    saved_name = "default" if is_peft else meta.get("name") or os.path.basename(os.path.normpath(folder))
    name = load_as or (os.path.basename(os.path.normpath(folder)) if is_peft else saved_name)
    model._check_name(name)
    if name in model.adapters_config.adapters and not overwrite_ok:
        raise AdapterLoadError(f"An adapter named {name!r} exists already; pass load_as=... or overwrite_ok=True.")
    if is_peft:
        state, weights_path = _read_weights(folder, PEFT_WEIGHTS_NAME, PEFT_LEGACY_WEIGHTS_NAME)
        if adapter_config.architecture == "prefix_tuning" and "prompt_embeddings" in state:
            try:
                state["prompt_embeddings"] = prefix_from_peft(model, meta, state["prompt_embeddings"])
            except (ValueError, KeyError) as error:
                raise AdapterLoadError(f"{config_path}: {error}") from error
        state = state_from_peft(state, saved_name, _saved_module_paths(model, adapter_config))
    else:
        state, weights_path = _read_weights(folder, SAFE_WEIGHTS_NAME, WEIGHTS_NAME)
    state = {k: v for k, v in _strip_prefix(model, state).items() if not _PREFIX_POOL_COPY.search(k)}
    saved_name = _name_in_keys(state, saved_name)
    staging = f"__loading__{name}"
    state = _rename_in_keys(state, _adapter_key_pattern, saved_name, staging)
    model.add_adapter(staging, adapter_config)
    try:
        skipped, layer_index = set(adapter_config.get("leave_out", ())), _layer_index_finder(model)
        params = {**_select_parameters(model, _adapter_key_pattern(staging)), **model._bias_parameters(staging)}
        state = _with_renamed_legacy_keys(model, state, params)
        _copy_checked(
            params,
            state,
            weights_path,
            ignore_unexpected=lambda key: layer_index(key) in skipped,
            shown=lambda key: key.replace(f".{staging}.", f".{saved_name}."),
        )
    except Exception:
        model.delete_adapter(staging)
        raise
    if name in model.adapters_config.adapters:
        model.delete_adapter(name)
    model._rename_adapter(staging, name)
    if set_active:
        model.set_active_adapters(name)
    logger.info(f"Loaded adapter {name!r} from {folder}.")
    return name


def _check_interface(model, folder: str) -> None:
    """Warn when the adapter was saved from a model described by another AdapterModelInterface
    (its weight keys follow that interface's module paths)."""
    from .interface import INTERFACE_CONFIG_NAME, AdapterModelInterface

    path = os.path.join(folder, INTERFACE_CONFIG_NAME)
    if not os.path.isfile(path):
        return
    try:
        saved = AdapterModelInterface.load(path)
    except ValueError as error:
        raise AdapterLoadError(f"{path}: {error}") from error
    if saved != model.__dict__.get("_adapters_interface"):
        logger.warning(
            f"{folder} was saved from a model initialised with another AdapterModelInterface; if its weights do not "
            f"load, initialise the model with that interface: adapters.init(model, interface={folder!r})."
        )


def _with_renamed_legacy_keys(model, state: dict, expected) -> dict:
    """``state`` with each key the adapter does not have renamed as transformers renames checkpoint
    keys of ``model`` written against older module paths (its conversion mapping's renamings, in
    order), then by the spec's ``legacy_key_renames``; keys that match already stay as they are.

    Example::

        >>> _with_renamed_legacy_keys(vit, {"encoder.layer.0.attention.attention.query.loras.a.lora_A": A}, params)
        {'layers.0.attention.q_proj.loras.a.lora_A': A}
    """
    unknown = [key for key in state if key not in expected]
    if not unknown:
        return state
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    spec_renames = model.__dict__["_adapters_spec"].legacy_key_renames
    state = dict(state)
    for key in unknown:
        new_key = rename_source_key(key, renamings, [])[0]
        for pattern, replacement in spec_renames:
            new_key = re.sub(pattern, replacement, new_key)
        if new_key != key and new_key in expected and new_key not in state:
            state[new_key] = state.pop(key)
    return state


def _saved_module_paths(model, config) -> list[str]:
    """The model's module paths a PEFT checkpoint's ``modules_to_save`` names (their weights are
    stored under the module's own path)."""
    from .models.targeting import matches_modules

    names = [n for part in config.configs_by_architecture() for n in (getattr(part, "modules_to_save", None) or ())]
    return [path for path, _ in model.named_modules() if names and path and matches_modules(path, names)]


def _name_in_keys(state: dict, fallback: str) -> str:
    """The adapter name the weight keys actually use (AdapterHub writes the saved name)."""
    containers = "|".join(c for c in ADAPTER_CONTAINERS if c != "shared_parameters")
    found = {m.group(3) for k in state for m in [re.search(rf"(^|\.)({containers})\.([^.]+)\.", k)] if m}
    return found.pop() if len(found) == 1 else fallback


# -- fusions --------------------------------------------------------------------------------------------
def save_adapter_fusion(model, save_directory: str, adapter_names, use_safetensors: bool = True) -> None:
    """Save one fusion layer (see the module docstring for the layout).

    Example::

        >>> save_adapter_fusion(model, "out/fusion", "a,b")
    """
    fusion_name = adapter_names if isinstance(adapter_names, str) else ",".join(adapter_names)
    registry = model.adapters_config
    if fusion_name not in registry.fusions:
        known = ", ".join(sorted(registry.fusions)) or "none"
        raise ValueError(f"No adapter fusion named {fusion_name!r}; the model has: {known}.")
    fusion_config, names = registry.fusions[fusion_name]
    os.makedirs(save_directory, exist_ok=True)
    meta = _meta(model, fusion_name)
    meta.update({"config": fusion_config.to_dict(), "adapter_names": list(names)})
    with open(os.path.join(save_directory, FUSION_CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(dict(sorted(meta.items())), f, indent=2, sort_keys=True)
    state = _select_parameters(model, _fusion_key_pattern(fusion_name))
    _write_weights(state, save_directory, use_safetensors, FUSION_SAFE_WEIGHTS_NAME, FUSION_WEIGHTS_NAME)


def load_adapter_fusion(model, path: str, load_as: Optional[str] = None, set_active: bool = False) -> str:
    """Load a fusion folder; its adapters must be in the model already. Returns the fusion name.

    Example::

        >>> load_adapter_fusion(model, "out/fusion", set_active=True)
    """
    folder = _resolve_folder(path)
    config_path = os.path.join(folder, FUSION_CONFIG_NAME)
    meta = _read_json(config_path)
    _check_hidden_size(model, meta, config_path)
    names = meta.get("adapter_names") or meta.get("name", "").split(",")
    missing = [n for n in names if n not in model.adapters_config.adapters]
    if missing:
        raise AdapterLoadError(f"{config_path} fuses adapters {missing} that the model does not have; load them first.")
    try:
        fusion_config = AdapterFusionConfig.load(meta.get("config", {}))
    except (ValueError, TypeError) as error:
        raise AdapterLoadError(f"{config_path}: the fusion config is invalid ({error}).") from error
    saved_name = meta.get("name") or ",".join(names)
    name = load_as or saved_name
    if name in model.adapters_config.fusions:
        raise AdapterLoadError(f"A fusion named {name!r} exists already; pass load_as=... or delete it first.")
    state, weights_path = _read_weights(folder, FUSION_SAFE_WEIGHTS_NAME, FUSION_WEIGHTS_NAME)
    state = _rename_in_keys(_strip_prefix(model, state), _fusion_key_pattern, saved_name, name)
    model.add_adapter_fusion(Fuse(*names, name=name), fusion_config)
    try:
        _copy_checked(_select_parameters(model, _fusion_key_pattern(name)), state, weights_path)
    except Exception:
        model.delete_adapter_fusion(name)
        raise
    if set_active:
        model.set_active_adapters(Fuse(*names, name=name))
    return name
