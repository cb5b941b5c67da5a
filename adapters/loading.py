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
file and leaves the model as it was. A checkpoint's JSON is data, never a pointer: a ``"config"``
string must be a config id (``"seq_bn"``, ``"lora"``; no file is read), and weights must be finite
floating-point tensors unless ``allow_non_finite=True``.

Names are never paths (:func:`~adapters.configuration.validation.check_name`): adapter, fusion and head names are ASCII letters,
digits, ``_`` and ``-`` (a fusion's joined by ``,``), whether passed as arguments or read from a
checkpoint, and every save resolves its targets inside the folder it was given.

Saving is atomic: each file is written under a temporary name inside the target folder and moved
into place with ``os.replace`` only after every file was written, weights first and the JSON config
last, so a reader never sees a new config beside old weights. The weights file of the other format
(``.safetensors`` / legacy ``.bin``) that an earlier save left is removed; nothing else in the
folder is touched (it may hold a full model too). If a write fails, the previous checkpoint stays
as it was and no temporary file is left behind.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import secrets
import shutil
import tempfile
from typing import Callable, Optional

import torch

from . import logging
from .version import __version__
from .composition import Fuse
from .context import registry_lock
from .methods.registry import families_of
from .errors import AdapterConfigError, AdapterLoadError
from .configuration.base import AdapterConfig
from .configuration.validation import check_name
from .configuration.fusion import AdapterFusionConfig
from .peft_format import (
    PEFT_LEGACY_WEIGHTS_NAME,
    PEFT_WEIGHTS_NAME,
    check_peft_model,
    config_from_peft,
    peft_checkpoint,
    peft_weights_for_model,
    saved_module_paths,
    state_from_peft,
)

logger = logging.get_logger(__name__)

__all__ = [
    "AdapterLoadError",
    "check_name",
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
    "invertible_adapters", "adaption_prompts", "refts",
)
# AdapterHub saved its prefix pool once more under every layer (``<attention>.prefix_tuning.pool.``):
# copies of ``prefix_tuning.prefix_tunings.<name>``, which is what loads
_PREFIX_POOL_COPY = re.compile(r"\.prefix_tuning\.pool\.prefix_tunings\.")


def _inside(root: str, *parts: str) -> str:
    """``os.path.join(root, *parts)``, after checking that it resolves (symbolic links included)
    to a path inside ``root`` (and, with ``parts``, not ``root`` itself); raise otherwise."""
    path = os.path.join(root, *parts)
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root or (parts and real == real_root):
        raise AdapterConfigError(
            f"Refusing to write {path!r}: it resolves to {real!r}, outside the folder {root!r} it was given for "
            f"(a name or a symbolic link pointing elsewhere). Saves write only inside the folder given."
        )
    return path


# -- key selection -----------------------------------------------------------------------------------
def _adapter_key_pattern(name: str) -> re.Pattern:
    containers = "|".join(ADAPTER_CONTAINERS)
    return re.compile(rf"(^|\.)({containers})\.{re.escape(name)}\.")


def _fusion_key_pattern(fusion_name: str) -> re.Pattern:
    return re.compile(rf"(^|\.)adapter_fusion_layer\.{re.escape(fusion_name)}\.")


def _select_parameters(model, pattern: re.Pattern) -> dict[str, torch.nn.Parameter]:
    """Name -> parameter, for the parameters whose key matches ``pattern``; names are relative to
    the base model, or to the whole model for parameters outside it (a head's
    ``modules_to_save`` copy). A parameter that several adapters share (``share_parameters``) is
    listed under each adapter's own key."""
    return _strip_prefix(model, {k: p for k, p in model.named_parameters(remove_duplicate=False) if pattern.search(k)})


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
    """The local folder of ``path``: the folder itself, or a Hugging Face Hub repo downloaded into
    huggingface_hub's cache (``hub_kwargs`` go to ``snapshot_download``; AdapterHub's ``source`` and
    ``version`` are read as it reads them for the Hub: ``version`` is the revision). Ids of
    AdapterHub's archived index (``"name@org"``, ``source="ah"``) are refused with what to use
    instead."""
    source = hub_kwargs.pop("source", None)
    if hub_kwargs.get("version") is not None and "revision" not in hub_kwargs:
        hub_kwargs["revision"] = hub_kwargs.pop("version")
    hub_kwargs.pop("version", None)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise AdapterLoadError(f"{path} is a file; pass the folder that holds {CONFIG_NAME} and the weights.")
    if source == "ah" or (isinstance(path, str) and "@" in path and "/" not in path.split("@", 1)[1]):
        raise AdapterLoadError(
            f"{path!r} is an id of AdapterHub's archived adapter index (name@org, or source='ah'), which this library "
            f"does not read. Load the adapter from its Hugging Face Hub repo (AdapterHub's adapters are on the Hub, "
            f"e.g. model.load_adapter('AdapterHub/roberta-base-pf-imdb')) or from a local folder."
        )
    if source not in (None, "hf"):
        raise AdapterLoadError(f"source={source!r} is not a source this library reads; use 'hf' (the Hugging Face Hub) or leave it out.")
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
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterLoadError(f"{path} is not valid JSON ({error}); the file is corrupt.") from error
    except RecursionError as error:
        raise AdapterLoadError(f"{path} nests its JSON too deeply to read; the file is corrupt.") from error
    if not isinstance(data, dict):
        shown = json.dumps(data)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise AdapterLoadError(
            f"{path} holds a JSON {_json_kind(data)} ({shown}) where a JSON object ({{\"config\": ..., \"name\": ...}}) "
            f"belongs; the file is corrupt or not a checkpoint file."
        )
    return data


def _json_kind(value) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _read_weights(folder: str, safe_name: str, legacy_name: str, allow_non_finite: bool = False) -> tuple[dict, str]:
    """``(state, path)`` of a checkpoint's weights file (safetensors preferred), every tensor
    checked with :func:`_check_values` unless ``allow_non_finite``."""
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
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise AdapterLoadError(f"{path} does not hold a dict of tensors by name.")
    if not allow_non_finite:
        _check_values(state, path)
    return state, path


def _check_values(state: dict, path: str) -> None:
    """Raise an AdapterLoadError naming ``path`` and the tensor unless every tensor of ``state``
    is floating-point and finite."""
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise AdapterLoadError(
                f"{path}: tensor {key!r} has dtype {tensor.dtype}; adapter weights are floating-point tensors "
                f"(float32, float16, bfloat16, ...). Pass allow_non_finite=True to load it anyway (converted to the "
                f"parameter's dtype)."
            )
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise AdapterLoadError(
                f"{path}: tensor {key!r} holds {bad} non-finite value(s) (NaN or inf); adapter weights must be finite. "
                f"Pass allow_non_finite=True to load it anyway."
            )


class _CheckpointFiles:
    """The files of one checkpoint folder, written atomically.

    Each file is written under a temporary name inside ``folder`` (``.<name>.<random>.tmp``);
    :meth:`commit` then moves them into place with ``os.replace``: weights first, then removes the
    weights file of the other format an earlier save left (``stale``), then the JSON configs in
    the order they were staged, the checkpoint's own config (``adapter_config.json``) last. Used
    as a context manager, it commits when the block ends and, if the block raised, removes its
    temporary files (and the folder, if it created it) and leaves the folder as it was.

    Example::

        >>> with _CheckpointFiles("out/task") as files:
        ...     files.weights(state, True, SAFE_WEIGHTS_NAME, WEIGHTS_NAME)
        ...     files.json(CONFIG_NAME, meta)
    """

    def __init__(self, folder: str):
        self.folder = folder
        self._weights: list[tuple[str, str]] = []  # (temporary, target)
        self._configs: list[tuple[str, str]] = []
        self._last: list[tuple[str, str]] = []  # the checkpoint's own config: committed after every other file
        self._stale: list[str] = []
        self._temporary: list[str] = []
        self._created = False

    def __enter__(self) -> "_CheckpointFiles":
        if os.path.lexists(self.folder) and not os.path.isdir(self.folder):
            raise AdapterConfigError(f"Cannot save into {self.folder!r}: it is a file, not a folder.")
        self._created = not os.path.isdir(self.folder)
        os.makedirs(self.folder, exist_ok=True)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            self.commit()
            return
        self.abort()
        if self._created:  # a folder this save created stays only if the save succeeds
            try:
                os.rmdir(self.folder)
            except OSError:
                pass

    def _stage(self, filename: str, write: Callable[[str], None], config: bool, last: bool = False) -> None:
        target = _inside(self.folder, filename)
        while True:
            temporary = os.path.join(self.folder, f".{filename}.{secrets.token_hex(8)}.tmp")
            try:
                os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode as umask allows
                break
            except FileExistsError:
                continue
        self._temporary.append(temporary)
        write(temporary)
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        (self._last if last else self._configs if config else self._weights).append((temporary, target))

    def json(self, filename: str, data: dict, last: bool = False) -> None:
        """Stage a JSON file (keys sorted, indented; moved into place after every weights file, and
        with ``last=True`` after every other file)."""

        def write(path: str) -> None:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)

        self._stage(filename, write, config=True, last=last)

    def weights(self, state: dict, use_safetensors: bool, safe_name: str, legacy_name: str) -> None:
        """Stage a weights file: ``safe_name`` (safetensors) or ``legacy_name`` (``torch.save``);
        the other one is removed on commit."""
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        if use_safetensors:
            from safetensors.torch import save_file

            self._stage(safe_name, lambda path: save_file(state, path, metadata={"format": "pt"}), config=False)
        else:
            self._stage(legacy_name, lambda path: torch.save(state, path), config=False)
        self._stale.append(legacy_name if use_safetensors else safe_name)

    def file(self, filename: str, write: Callable[[str], None], config: bool = True) -> None:
        """Stage a file another function writes: ``write(folder)`` writes ``filename`` into the
        (temporary) folder it is given."""

        def write_via_folder(path: str) -> None:
            scratch = tempfile.mkdtemp(prefix=f".{filename}.", suffix=".tmp", dir=self.folder)
            try:
                write(scratch)
                os.replace(os.path.join(scratch, filename), path)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

        self._stage(filename, write_via_folder, config=config)

    def commit(self) -> None:
        """Move the staged files into place (weights, stale removal, configs)."""
        try:
            for temporary, target in self._weights:
                os.replace(temporary, target)
            written = {target for _, target in self._weights + self._configs + self._last}
            for filename in self._stale:  # a symbolic link is removed itself, never its target
                stale = os.path.join(self.folder, filename)
                if stale not in written and (os.path.isfile(stale) or os.path.islink(stale)):
                    os.remove(stale)
            for temporary, target in self._configs + self._last:
                os.replace(temporary, target)
        finally:
            self.abort()
        try:  # make the renames durable where the platform allows it
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    def abort(self) -> None:
        """Remove every temporary file that is still there."""
        for temporary in self._temporary:
            try:
                os.remove(temporary)
            except FileNotFoundError:
                pass
        self._temporary.clear()


def _hidden_size(model) -> int:
    """``config.hidden_size``, or for a config without one (CLIP's), its first tower's."""
    from .hooks.spec import hidden_size_of

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
    if saved is not None and (not isinstance(saved, int) or isinstance(saved, bool)):
        raise AdapterLoadError(
            f"{path}: \"hidden_size\" must be an integer (e.g. {size}), not the {type(saved).__name__} {saved!r}; "
            f"the file is corrupt or was not written by an adapter library."
        )
    if saved is not None and saved != size:
        raise AdapterLoadError(
            f"{path}: saved for hidden size {saved} but this model has hidden size {size}; "
            f"an adapter only loads into a model of the size it was trained with."
        )
    saved_type = meta.get("model_type")
    if saved_type and saved_type != model.config.model_type:
        logger.warning(f"{path} was saved for model type {saved_type!r}; loading into {model.config.model_type!r}.")


def _checkpoint_config(meta: dict, path: str):
    """The adapter config a checkpoint's JSON holds (its ``"config"``, or for a bare config file
    the whole object), checked to be data only: a dict, or a config id string (``"seq_bn"``,
    ``"lora[r=4]"``). A string is never read as a file path (it could point outside the folder,
    or at the file itself); neither are the parts of a union config.

    Example::

        >>> _checkpoint_config({"config": "seq_bn", "name": "a"}, "out/a/adapter_config.json")
        'seq_bn'
    """
    from .configuration.base import ADAPTER_CONFIG_MAP

    def check(value, where: str):
        if isinstance(value, str):
            config_id = value.split("[", 1)[0].strip()
            if config_id not in ADAPTER_CONFIG_MAP:
                raise AdapterLoadError(
                    f"{path}: {where} is the string {value!r}, which is not a config id. In a checkpoint a config is "
                    f"a JSON object or a config id ({', '.join(sorted(ADAPTER_CONFIG_MAP))}); it is never read from "
                    f"another file."
                )
        elif isinstance(value, dict):
            if isinstance(value.get("config"), (str, dict)):  # a nested {"config": ...}
                check(value["config"], f"{where}[\"config\"]")
            parts = value.get("configs")
            if parts is not None:
                if not isinstance(parts, list):
                    raise AdapterLoadError(
                        f"{path}: {where}[\"configs\"] must be a list of configs, not the {type(parts).__name__} {parts!r}."
                    )
                for i, part in enumerate(parts):
                    check(part, f"{where}[\"configs\"][{i}]")
        else:
            raise AdapterLoadError(
                f"{path}: {where} must be a JSON object or a config id string such as \"seq_bn\", "
                f"not the {_json_kind(value)} {value!r}."
            )
        return value

    if "config" in meta:
        return check(meta["config"], '"config"')
    return check(meta, "the config")


def _checkpoint_fusion_config(meta: dict, path: str):
    """A fusion checkpoint's ``"config"``: a dict or ``"dynamic"`` / ``"static"``, never a path."""
    from .configuration.fusion import ADAPTERFUSION_CONFIG_MAP

    config = meta.get("config", {})
    if isinstance(config, dict) or (isinstance(config, str) and config in ADAPTERFUSION_CONFIG_MAP):
        return config
    raise AdapterLoadError(
        f"{path}: \"config\" must be a JSON object or one of {sorted(ADAPTERFUSION_CONFIG_MAP)}, not the "
        f"{_json_kind(config)} {config!r}; a fusion config is never read from another file."
    )


def _fusion_adapter_names(meta: dict, path: str) -> list[str]:
    """The adapters a fusion checkpoint fuses: its ``"adapter_names"`` (a list, or ``"a,b"``), else
    its ``"name"`` split at commas; each a valid adapter name."""
    names = meta.get("adapter_names")
    where = '"adapter_names"'
    if not names:
        names, where = meta.get("name"), '"name"'
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    if not isinstance(names, list) or not names:
        raise AdapterLoadError(
            f"{path}: {where} must list the fused adapters, as a list (e.g. [\"a\", \"b\"]) or \"a,b\"; "
            f"got the {_json_kind(names)} {names!r}."
        )
    for name in names:
        check_name(name, argument=f"in {where}", file=path)
    return names


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

    The files are written atomically (see the module docstring): if a write fails, the folder
    keeps the checkpoint it held before.

    Example::

        >>> save_adapter(model, "out/task", "task")
        >>> save_adapter(model, "out/lora-peft", "lora", format="peft")
    """
    with _CheckpointFiles(save_directory) as files:
        _stage_adapter(model, files, adapter_name, meta_dict, use_safetensors, format)
    logger.info(f"Saved adapter {adapter_name!r} to {save_directory}.")


def _stage_adapter(model, files: _CheckpointFiles, adapter_name: str, meta_dict, use_safetensors: bool, format: str) -> None:
    """Stage an adapter's files in ``files`` (weights, then ``adapter_config.json``, committed last)."""
    model._require_adapter(adapter_name)
    if format not in ("adapterhub", "peft"):
        raise AdapterConfigError(f"format must be 'adapterhub' or 'peft', got {format!r}.")
    if format == "peft":
        peft_meta, weights = peft_checkpoint(model, adapter_name)
        files.weights(weights, use_safetensors, PEFT_WEIGHTS_NAME, PEFT_LEGACY_WEIGHTS_NAME)
        files.json(CONFIG_NAME, {**peft_meta, **(meta_dict or {})}, last=True)
        return
    meta = _meta(model, adapter_name)
    meta["config"] = model.adapters_config.adapters[adapter_name].to_dict()
    meta.update(meta_dict or {})
    state = {**_select_parameters(model, _adapter_key_pattern(adapter_name)), **model._bias_parameters(adapter_name)}
    for method_family, part in families_of(model.adapters_config.adapters[adapter_name]):
        if method_family.to_adapterhub is not None:
            state = method_family.to_adapterhub(model, adapter_name, part, state)
    files.weights(state, use_safetensors, SAFE_WEIGHTS_NAME, WEIGHTS_NAME)
    interface = model.__dict__.get("_adapters_interface")
    if interface is not None:  # where the weight keys point: adapters.init(model, interface=folder) restores it
        from .interface import INTERFACE_CONFIG_NAME

        files.file(INTERFACE_CONFIG_NAME, lambda folder: interface.save(folder, model.config))
    files.json(CONFIG_NAME, dict(sorted(meta.items())), last=True)


def _layer_index_finder(model) -> Callable[[str], Optional[int]]:
    """``key -> layer index`` of base-model keys (second-stack layers after the first stack's;
    None outside the layers), with the stacks' offsets looked up once."""
    from .hooks.targeting import first_layers, layer_of

    spec = model.__dict__["_adapters_spec"]
    offsets = first_layers(model.base_model, spec)

    def layer_index(key: str) -> Optional[int]:
        layer_idx = layer_of(key, spec, None, offsets)[0]
        return layer_idx if layer_idx >= 0 else None

    return layer_index


def _as_load_error(path: str, error: Exception, what: str = "") -> AdapterLoadError:
    """``error`` (raised while loading from ``path``) as an AdapterLoadError naming the file and
    keeping the original message; an AdapterLoadError stays as it is."""
    if isinstance(error, AdapterLoadError):
        return error
    return AdapterLoadError(f"{path}: {what}{error}")


def _without_path(error: Exception, path: str) -> str:
    """``error``'s message without a leading ``"<path>: "`` (the wrapping error names the file once)."""
    message = str(error)
    return message[len(path) + 2 :] if message.startswith(f"{path}: ") else message


def load_adapter(
    model,
    adapter_name_or_path: str,
    config=None,
    load_as: Optional[str] = None,
    set_active: bool = False,
    leave_out: Optional[list[int]] = None,
    overwrite_ok: bool = False,
    allow_non_finite: bool = False,
    **hub_kwargs,
) -> str:
    """Load an adapter folder into ``model``; returns its name (see the module docstring).

    ``allow_non_finite=True`` also loads weights that are NaN/inf or not floating-point (converted
    to the parameter's dtype), which are refused by default.

    Example::

        >>> load_adapter(model, "out/task", load_as="task2", set_active=True)
    """
    if load_as is not None:
        check_name(load_as, argument="load_as")
    leave_out = _checked_leave_out(leave_out)
    folder = _resolve_folder(adapter_name_or_path, **hub_kwargs)
    config_path = os.path.join(folder, CONFIG_NAME)
    meta = _read_json(config_path)
    _check_interface(model, folder)
    adapter_config = _adapter_config(model, meta, config, leave_out, config_path)
    name, saved_name = _names(model, meta, folder, load_as, overwrite_ok, config_path)
    state, weights_path = _adapter_state(model, meta, adapter_config, folder, saved_name, allow_non_finite, config_path)
    saved_name = _name_in_keys(state, saved_name)
    _install(model, name, saved_name, adapter_config, state, weights_path, config_path, set_active)
    logger.info(f"Loaded adapter {name!r} from {folder}.")
    return name


def _checked_leave_out(leave_out) -> Optional[list[int]]:
    if leave_out is None:
        return None
    if (
        isinstance(leave_out, (str, bytes)) or not hasattr(leave_out, "__iter__")
        or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in leave_out)
    ):
        raise AdapterConfigError(f"leave_out must be a list of layer indices (e.g. [0, 1]), not {leave_out!r}.")
    return [int(i) for i in leave_out]


def _adapter_config(model, meta: dict, config, leave_out, config_path: str) -> AdapterConfig:
    """The config to build: ``config`` if given, else the checkpoint's (AdapterHub's or PEFT's),
    with ``leave_out`` added; checked against the model (hidden size, PEFT's model checks)."""
    is_peft = "peft_type" in meta
    try:
        if config is not None:
            adapter_config = AdapterConfig.load(config)
        elif is_peft:
            adapter_config = config_from_peft(meta, file=config_path)
        else:
            _checkpoint_config(meta, config_path)  # data only: never a path
            # lenient with keys AdapterHub / newer versions write (warned, or refused if not at their default)
            adapter_config = AdapterConfig.from_checkpoint_dict(meta, file=config_path)
    except AdapterLoadError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
        raise AdapterLoadError(f"{config_path}: the adapter config is invalid ({_without_path(error, config_path)}).") from error
    if leave_out:
        try:
            adapter_config = adapter_config.replace(leave_out=tuple(sorted(set(adapter_config.leave_out) | set(leave_out))))
        except (ValueError, TypeError) as error:
            raise _as_load_error(config_path, error) from error
    _check_hidden_size(model, meta, config_path)
    if is_peft:
        try:
            check_peft_model(model, adapter_config)  # PEFT computes the same on this model
        except ValueError as error:
            raise AdapterLoadError(f"{config_path}: {error}") from error
    return adapter_config


def _names(model, meta: dict, folder: str, load_as, overwrite_ok: bool, config_path: str) -> tuple[str, str]:
    """``(name, saved name)``: the name to load as (``load_as``, the saved ``name``, else the
    folder's) and the name the checkpoint's keys use; refused if taken and not ``overwrite_ok``."""
    is_peft = "peft_type" in meta
    folder_name = os.path.basename(os.path.normpath(folder))
    meta_name = None if is_peft else meta.get("name")
    if meta_name is not None and not isinstance(meta_name, str):
        check_name(meta_name, argument='its "name"', file=config_path)
    saved_name = "default" if is_peft else meta_name or folder_name
    if load_as is not None:
        name = load_as
    elif meta_name:
        name = check_name(meta_name, argument='its "name"', file=config_path)
    else:
        name = check_name(folder_name, argument="taken from the folder name", file=folder)
    if name in model.adapters_config.adapters and not overwrite_ok:
        raise AdapterLoadError(f"An adapter named {name!r} exists already; pass load_as=... or overwrite_ok=True.")
    return name, saved_name


def _adapter_state(model, meta, adapter_config, folder, saved_name, allow_non_finite, config_path) -> tuple[dict, str]:
    """``(state, weights file)``: the checkpoint's tensors under our keys, relative to the base model."""
    if "peft_type" in meta:
        state, weights_path = _read_weights(folder, PEFT_WEIGHTS_NAME, PEFT_LEGACY_WEIGHTS_NAME, allow_non_finite)
        try:  # tensors laid out for PEFT's model (prefix tuning's cache), checked against the config's sizes
            state = peft_weights_for_model(model, meta, adapter_config, state)
        except (ValueError, KeyError, TypeError) as error:
            raise _as_load_error(config_path, error) from error
        try:
            state = state_from_peft(state, saved_name, saved_module_paths(model, adapter_config))
        except (ValueError, KeyError, TypeError) as error:
            raise _as_load_error(weights_path, error) from error
    else:
        state, weights_path = _read_weights(folder, SAFE_WEIGHTS_NAME, WEIGHTS_NAME, allow_non_finite)
    return {k: v for k, v in _strip_prefix(model, state).items() if not _PREFIX_POOL_COPY.search(k)}, weights_path


def _install(model, name, saved_name, adapter_config, state, weights_path, config_path, set_active: bool) -> None:
    """Build the adapter and copy the checked weights in, as one change of the adapters: under a
    staging name no user can give (names never hold '~'), renamed to ``name`` only once complete,
    so a failure leaves the model as it was and no forward pass sees a half-loaded adapter."""
    staging = f"{name}~loading"
    state = _rename_in_keys(state, _adapter_key_pattern, saved_name, staging)
    with registry_lock(model.adapters_config).writing("load_adapter"):
        model.__dict__["_adapters_staging_name"] = staging
        try:
            model.add_adapter(staging, adapter_config)
        except (ValueError, TypeError) as error:  # the config does not fit this model (add_adapter left it as it was)
            raise _as_load_error(config_path, error) from error
        finally:
            model.__dict__.pop("_adapters_staging_name", None)
        try:
            skipped, layer_index = set(adapter_config.get("leave_out", ())), _layer_index_finder(model)
            params = {**_select_parameters(model, _adapter_key_pattern(staging)), **model._bias_parameters(staging)}
            state = _with_renamed_legacy_keys(model, state, params)
            for method_family, part in families_of(adapter_config):
                if method_family.from_adapterhub is not None:  # may reshape the modules (VeRA's dense form)
                    state = method_family.from_adapterhub(model, staging, part, state, weights_path)
                    params = {**_select_parameters(model, _adapter_key_pattern(staging)), **model._bias_parameters(staging)}
            _copy_checked(
                params,
                state,
                weights_path,
                ignore_unexpected=lambda key: layer_index(key) in skipped,
                shown=lambda key: key.replace(f".{staging}.", f".{saved_name}."),
            )
            if name in model.adapters_config.adapters:
                model.delete_adapter(name)  # may refuse (a merged adapter that cannot be unmerged exactly)
        except Exception:
            model.delete_adapter(staging)
            raise
        model._rename_adapter(staging, name)
        if set_active:
            model.set_active_adapters(name)


def _check_interface(model, folder: str) -> None:
    """Warn when the adapter was saved from a model described by another AdapterModelInterface
    (its weight keys follow that interface's module paths)."""
    from .interface import INTERFACE_CONFIG_NAME, AdapterModelInterface

    path = os.path.join(folder, INTERFACE_CONFIG_NAME)
    if not os.path.isfile(path):
        return
    try:
        saved = AdapterModelInterface.load(path)
    except AdapterLoadError:  # names the file already
        raise
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


def _name_in_keys(state: dict, fallback: str) -> str:
    """The adapter name the weight keys actually use (AdapterHub writes the saved name)."""
    containers = "|".join(c for c in ADAPTER_CONTAINERS if c != "shared_parameters")
    found = {m.group(3) for k in state for m in [re.search(rf"(^|\.)({containers})\.([^.]+)\.", k)] if m}
    return found.pop() if len(found) == 1 else fallback


# -- fusions --------------------------------------------------------------------------------------------
def save_adapter_fusion(model, save_directory: str, adapter_names, use_safetensors: bool = True) -> None:
    """Save one fusion layer (see the module docstring for the layout), atomically.

    Example::

        >>> save_adapter_fusion(model, "out/fusion", "a,b")
    """
    fusion_name = adapter_names if isinstance(adapter_names, str) else ",".join(adapter_names)
    registry = model.adapters_config
    if fusion_name not in registry.fusions:
        known = ", ".join(sorted(registry.fusions)) or "none"
        raise AdapterConfigError(f"No adapter fusion named {fusion_name!r} (adapter_names); the model has: {known}.")
    fusion_config, names = registry.fusions[fusion_name]
    meta = _meta(model, fusion_name)
    meta.update({"config": fusion_config.to_dict(), "adapter_names": list(names)})
    state = _select_parameters(model, _fusion_key_pattern(fusion_name))
    with _CheckpointFiles(save_directory) as files:
        files.weights(state, use_safetensors, FUSION_SAFE_WEIGHTS_NAME, FUSION_WEIGHTS_NAME)
        files.json(FUSION_CONFIG_NAME, dict(sorted(meta.items())), last=True)


def load_adapter_fusion(
    model, path: str, load_as: Optional[str] = None, set_active: bool = False, allow_non_finite: bool = False
) -> str:
    """Load a fusion folder; its adapters must be in the model already. Returns the fusion name.

    ``allow_non_finite=True`` also loads weights that are NaN/inf or not floating-point (refused
    by default).

    Example::

        >>> load_adapter_fusion(model, "out/fusion", set_active=True)
    """
    if load_as is not None:
        check_name(load_as, kind="fusion", argument="load_as")
    folder = _resolve_folder(path)
    config_path = os.path.join(folder, FUSION_CONFIG_NAME)
    meta = _read_json(config_path)
    _check_hidden_size(model, meta, config_path)
    names = _fusion_adapter_names(meta, config_path)
    missing = [n for n in names if n not in model.adapters_config.adapters]
    if missing:
        raise AdapterLoadError(f"{config_path} fuses adapters {missing} that the model does not have; load them first.")
    try:
        _checkpoint_fusion_config(meta, config_path)  # data only: never a path
        fusion_config = AdapterFusionConfig.from_checkpoint_dict(meta, file=config_path)
    except AdapterLoadError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        raise AdapterLoadError(f"{config_path}: the fusion config is invalid ({_without_path(error, config_path)}).") from error
    saved_name = meta.get("name") or ",".join(names)
    if not isinstance(saved_name, str):
        check_name(saved_name, kind="fusion", argument='its "name"', file=config_path)
    name = load_as if load_as is not None else check_name(saved_name, kind="fusion", argument='its "name"', file=config_path)
    if name in model.adapters_config.fusions:
        raise AdapterLoadError(f"A fusion named {name!r} exists already; pass load_as=... or delete it first.")
    state, weights_path = _read_weights(folder, FUSION_SAFE_WEIGHTS_NAME, FUSION_WEIGHTS_NAME, allow_non_finite)
    state = _rename_in_keys(_strip_prefix(model, state), _fusion_key_pattern, saved_name, name)
    with registry_lock(model.adapters_config).writing("load_adapter_fusion"):  # one change of the adapters
        try:
            model.add_adapter_fusion(Fuse(*names, name=name), fusion_config)
        except (ValueError, TypeError) as error:  # e.g. it fuses adapters of a method without fusion
            raise _as_load_error(config_path, error) from error
        try:
            _copy_checked(_select_parameters(model, _fusion_key_pattern(name)), state, weights_path)
        except Exception:
            model.delete_adapter_fusion(name)
            raise
        if set_active:
            model.set_active_adapters(Fuse(*names, name=name))
    return name


class CheckpointMixin:
    """Saving and loading on the model (AdapterHub's method names; part of
    :class:`~adapters.ModelAdaptersMixin`): thin methods over the functions above.

    Example::

        >>> model.save_adapter("out/task", "task")
        >>> model.load_adapter("out/task", load_as="task2")
    """

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``; a model initialised with an
        :class:`~adapters.AdapterModelInterface` also gets AdapterHub's ``adapter_interface.json``
        (the interface is in ``config.json`` too, where ``adapters.init`` finds it after
        ``from_pretrained``), written atomically inside ``save_directory``.

        Example::

            >>> model.save_pretrained("out/model")
            >>> adapters.init(MyModel.from_pretrained("out/model"))   # the saved interface is used
        """
        result = super().save_pretrained(save_directory, *args, **kwargs)
        interface = self.__dict__.get("_adapters_interface")
        if interface is not None:
            from .interface import INTERFACE_CONFIG_NAME

            with _CheckpointFiles(save_directory) as files:
                files.file(INTERFACE_CONFIG_NAME, lambda folder: interface.save(folder, self.config))
        return result

    def save_adapter(
        self,
        save_directory: str,
        adapter_name: str,
        with_head: bool = True,
        meta_dict=None,
        use_safetensors: bool = True,
        format: str = "adapterhub",
    ):
        """Save adapter ``adapter_name`` to a folder in AdapterHub's layout
        (``adapter_config.json`` + ``adapter.safetensors``), or with ``format="peft"`` in PEFT's
        (LoRA-family adapters, the weight transforms, Llama-Adapter on Llama/Mistral; loadable by
        ``peft.PeftModel.from_pretrained``). On an AdapterModel, ``with_head=True`` also saves the
        head of the same name (``head_config.json`` + ``model_head.safetensors``).

        The files are written atomically: each under a temporary name in the folder, moved into
        place once all are written (weights first, ``adapter_config.json`` last); the weights
        file of the other format that an earlier save left (``pytorch_adapter.bin`` beside a new
        ``adapter.safetensors`` or the reverse) is removed, nothing else. If a write fails, the
        folder keeps its previous checkpoint and no temporary file.

        Example::

            >>> model.save_adapter("out/task", "task")
            >>> model.save_adapter("out/lora", "lora", format="peft")
        """

        heads = getattr(self, "heads", None)
        with _CheckpointFiles(save_directory) as files:
            _stage_adapter(self, files, adapter_name, meta_dict, use_safetensors, format)
            if with_head and heads is not None and adapter_name in heads:
                self._stage_head(files, adapter_name, use_safetensors)
        logger.info(f"Saved adapter {adapter_name!r} to {save_directory}.")

    def load_adapter(
        self,
        adapter_name_or_path: str,
        config=None,
        load_as: Optional[str] = None,
        set_active: bool = False,
        leave_out: Optional[list[int]] = None,
        overwrite_ok: bool = False,
        allow_non_finite: bool = False,
        **kwargs,
    ) -> str:
        """Load an adapter saved by :meth:`save_adapter` or by AdapterHub (also legacy
        ``pytorch_adapter.bin``, read with ``torch.load(weights_only=True)``).

        Returns the name under which it was loaded. On any error the model is left unchanged. On an
        AdapterModel, a head saved next to the adapter is loaded too (under the same name) unless
        ``with_head=False``.

        Args:
            adapter_name_or_path: a folder, or a Hugging Face Hub repo id.
            config: use this config instead of the one saved.
            load_as: the name to load it under (default: the saved name); letters, digits, ``_``
                and ``-``.
            set_active: activate it.
            leave_out: layers to leave out in addition to the saved config's.
            overwrite_ok: replace an adapter of the same name.
            allow_non_finite: also load weights holding NaN/inf or of a non-float dtype (int,
                bool; converted to the parameter's dtype). Refused by default with an
                :class:`~adapters.AdapterLoadError` naming the file and the tensor; for research
                on such weights.

        Raises:
            AdapterLoadError: the checkpoint is missing, corrupt, does not fit the model, or its
                saved name is invalid (the message names the file).
            AdapterConfigError: ``load_as`` or ``leave_out`` is invalid.

        Example::

            >>> name = model.load_adapter("out/task", set_active=True)
            >>> model.load_adapter("out/diverged", load_as="nan_study", allow_non_finite=True)
        """

        if load_as is not None:
            self._check_name(load_as, argument="load_as")
        with_head = kwargs.pop("with_head", True)
        head = None
        if with_head and getattr(self, "heads", None) is not None:  # an AdapterModel (adapters.heads)
            folder = _resolve_folder(adapter_name_or_path, **kwargs)
            if self._holds_head(folder):  # checked before anything changes
                head = self._prepare_head(folder, load_as=load_as, overwrite_ok=overwrite_ok, allow_non_finite=allow_non_finite)
            adapter_name_or_path = folder
        name = load_adapter(
            self, adapter_name_or_path, config=config, load_as=load_as, set_active=False,
            leave_out=leave_out, overwrite_ok=overwrite_ok, allow_non_finite=allow_non_finite, **kwargs,
        )
        if head is not None:
            self._insert_loaded_head(*head, set_active=True)
        if set_active:
            self.set_active_adapters(name)
        return name

    def save_adapter_fusion(self, save_directory: str, adapter_names, use_safetensors: bool = True) -> None:
        """Save a fusion layer (AdapterHub layout: ``adapter_fusion_config.json`` + weights),
        atomically as :meth:`save_adapter`.

        Example::

            >>> model.save_adapter_fusion("out/fusion", "a,b,c")
        """

        save_adapter_fusion(self, save_directory, adapter_names, use_safetensors=use_safetensors)

    def load_adapter_fusion(
        self,
        adapter_fusion_name_or_path: str,
        load_as: Optional[str] = None,
        set_active: bool = False,
        allow_non_finite: bool = False,
        **kwargs,
    ) -> str:
        """Load a fusion layer saved by :meth:`save_adapter_fusion` or AdapterHub; the fused
        adapters must be loaded already. Returns the fusion's name. ``allow_non_finite`` as in
        :meth:`load_adapter`.

        Example::

            >>> model.load_adapter_fusion("out/fusion", set_active=True)
        """

        return load_adapter_fusion(
            self, adapter_fusion_name_or_path, load_as=load_as, set_active=set_active, allow_non_finite=allow_non_finite
        )

    def save_all_adapters(self, save_directory: str, with_head: bool = True, use_safetensors: bool = True) -> None:
        """Save every adapter into ``save_directory/<name>``. Every target is checked to lie
        inside ``save_directory`` (symbolic links resolved) before anything is written.

        Example::

            >>> model.save_all_adapters("out/adapters")
        """

        targets = {}
        for name in self.adapters_config.adapters:
            self._check_name(name, argument=None)
            targets[name] = _inside(save_directory, name)
        for name, target in targets.items():
            self.save_adapter(target, name, with_head=with_head, use_safetensors=use_safetensors)

    def save_all_adapter_fusions(self, save_directory: str, use_safetensors: bool = True) -> None:
        """Save every fusion into ``save_directory/<fusion name>``, each target checked to lie
        inside ``save_directory`` as in :meth:`save_all_adapters`.

        Example::

            >>> model.save_all_adapter_fusions("out/fusions")
        """

        targets = {}
        for name in self.adapters_config.fusions:
            self._check_name(name, kind="fusion", argument=None)
            targets[name] = _inside(save_directory, name)
        for name, target in targets.items():
            self.save_adapter_fusion(target, name, use_safetensors=use_safetensors)
