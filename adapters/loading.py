"""Saving and loading adapters and fusions in AdapterHub's folder layout.

An adapter folder holds ``adapter_config.json`` (``{"config": ..., "name", "hidden_size",
"model_type", "model_class", "model_name", "version"}``) and ``adapter.safetensors`` (legacy:
``pytorch_adapter.bin``, read with ``torch.load(weights_only=True)`` only). A fusion folder holds
``adapter_fusion_config.json`` and ``model_adapter_fusion.safetensors`` (legacy:
``pytorch_model_adapter_fusion.bin``).

Weight keys are written as AdapterHub 1.3.0 writes them for the same model, so AdapterHub loads
the files: transformers 4's module paths (ViT's ``encoder.layer.N.output.output_adapters``), the
prefix pool repeated under each attention module (``<attention>.prefix_tuning.pool...``), the
head model's prefix (``bert.``) on a model with a head (:func:`_as_adapterhub_keys`). They are read
with or without that prefix, so checkpoints move freely between a bare model and the same model
with a head.

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

Sharded models: on a model sharded with ``torch.distributed.fsdp.fully_shard`` (FSDP2, whose
parameters are ``DTensor`` shards), ``save_adapter``, ``save_adapter_fusion``, ``save_head`` and
the ``save_all_*`` methods over them are collective: every rank calls them, each tensor is
gathered (``DTensor.full_tensor()``), rank 0 alone writes the files, and every rank returns once
they are in place (an error on rank 0 is raised on every rank). A DeepSpeed ZeRO-3 partition (an
empty placeholder outside ``deepspeed.zero.GatheredParameters``) is refused, never written.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import json
import numbers
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
from typing import Callable, Optional

import torch

from . import logging
from .version import __version__
from .activation import _adapters_named
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
SETUP_CONFIG_NAME = "adapter_setup.json"

# module-dict names under which methods keep per-adapter modules (state-dict key segments)
ADAPTER_CONTAINERS = (
    "adapters", "loras", "prefix_tunings", "prefix_gates", "prompt_tunings", "shared_parameters", "modules_to_save",
    "invertible_adapters", "adaption_prompts", "refts",
)
# AdapterHub saved its prefix pool once more under every layer (``<attention>.prefix_tuning.pool.``):
# copies of ``prefix_tuning.prefix_tunings.<name>``, which is what loads
# held while save_pretrained writes the adapters entry into a (possibly shared) config
_SAVE_CONFIG_LOCK = threading.RLock()
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
    """``state`` with keys relative to the base model: a head model's prefix (``bert.``) removed,
    also from a file saved from a head model and read into the bare model."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    if prefix == "." or (model.base_model is model and prefix[:-1] in model._modules):
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


def _read_weights(
    folder: str, safe_name: str, legacy_name: str, allow_non_finite: bool = False, prefer_safetensors: bool = True
) -> tuple[dict, str]:
    """``(state, path)`` of a checkpoint's weights file (where a folder holds both formats, the
    safetensors file unless ``prefer_safetensors=False``), every tensor checked with
    :func:`_check_values` unless ``allow_non_finite``."""
    safe_path, legacy_path = os.path.join(folder, safe_name), os.path.join(folder, legacy_name)
    if os.path.isfile(safe_path) and (prefer_safetensors or not os.path.isfile(legacy_path)):
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


# -- sharded models -----------------------------------------------------------------------------------
# False on every rank but 0 while a sharded model is saved: those ranks join the gathers (collectives
# every rank must enter, in the same order) and write nothing, so two ranks never race on one folder
_WRITES = contextvars.ContextVar("adapters_checkpoint_writes", default=True)


def _is_sharded(model) -> bool:
    """Whether ``model`` holds ``DTensor`` parameters (FSDP2's ``fully_shard``, tensor parallelism)."""
    if "torch.distributed.tensor" not in sys.modules:  # no DTensor can exist before the module is loaded
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(param, DTensor) for param in model.parameters())


def _full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a ``DTensor`` shard (gathered from every rank: all must call), else ``tensor``."""
    if "torch.distributed.tensor" in sys.modules:
        from torch.distributed.tensor import DTensor

        if isinstance(tensor, DTensor):
            return tensor.full_tensor()
    return tensor


@contextlib.contextmanager
def _rank0_writes(sharded: bool = True):
    """While saving a sharded model: every rank runs the save (the gathers), rank 0 alone writes
    (:class:`_CheckpointFiles` writes nothing elsewhere), and no rank leaves before rank 0's files
    are in place; rank 0's error is raised on every rank. Without ``sharded`` or outside a process
    group it does nothing.

    Example::

        >>> with _rank0_writes(_is_sharded(model)):
        ...     save_adapter(model, "out/task", "task")
    """
    import torch.distributed as dist

    if not sharded or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        yield
        return
    writer = dist.get_rank() == 0
    token = _WRITES.set(_WRITES.get() and writer)
    failure = None
    try:
        yield
    except BaseException as error:
        failure = error
        raise
    finally:
        _WRITES.reset(token)
        outcome = [None if failure is None else f"{type(failure).__name__}: {failure}"]
        dist.broadcast_object_list(outcome, src=0)  # also the barrier: rank 0 has committed its files
        if failure is None and outcome[0] is not None:
            raise AdapterConfigError(f"Saving the sharded model failed on rank 0, which writes the files: {outcome[0]}")


@contextlib.contextmanager
def _model_checkpoint(model, save_directory: str):
    """The :class:`_CheckpointFiles` of a checkpoint of ``model`` in ``save_directory``, written
    collectively where ``model`` is sharded (see :func:`_rank0_writes`).

    Example::

        >>> with _model_checkpoint(model, "out/task") as files:
        ...     files.json("adapter_config.json", config, last=True)
    """
    with _rank0_writes(_is_sharded(model)), _CheckpointFiles(save_directory) as files:
        yield files


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
        self._writes = _WRITES.get()  # False on the ranks that only help gather a sharded model's tensors

    def __enter__(self) -> "_CheckpointFiles":
        if not self._writes:
            return self
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
        if not self._writes:
            return
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
        the other one is removed on commit. ``DTensor`` shards are gathered into whole tensors
        first (on every rank, also those that do not write)."""
        # a ZeRO-3 parameter outside deepspeed.zero.GatheredParameters is an empty placeholder: refuse it
        partitioned = sorted(k for k, v in state.items() if getattr(v, "ds_numel", None) not in (None, v.numel()))
        if partitioned:
            raise AdapterConfigError(
                f"Cannot save {self.folder!r}: {len(partitioned)} weight(s) are DeepSpeed ZeRO-3 partitions, e.g. "
                f"{partitioned[:3]}, not whole tensors. Enter deepspeed.zero.GatheredParameters(<those parameters>) "
                f"on every rank and save from rank 0 inside it, or let AdapterTrainer save (it gathers them)."
            )
        state = {k: _full_tensor(v.detach()).cpu().contiguous() for k, v in state.items()}
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
        if not self._writes:
            return
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


#: the ``"version"`` the JSON files record: the AdapterHub format they follow, with this library's
#: version as a local label. AdapterHub reads it: a version below ``adapters.1.1.0`` makes it
#: rewrite a LoRA's ``alpha`` to ``r`` (its fix for an old scaling bug), which would change the
#: outputs of every LoRA written here with ``alpha != r`` (tests/test_adapterhub_written_keys.py)
FILE_VERSION = f"adapters.1.3.0+{__version__}"


def _meta(model, name: str) -> dict:
    return {
        "name": name,
        "hidden_size": _hidden_size(model),
        "model_type": model.config.model_type,
        "model_class": type(model).__name__,
        "model_name": getattr(model.config, "name_or_path", "") or "",
        "version": FILE_VERSION,
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
    with _model_checkpoint(model, save_directory) as files:
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
    files.weights(_as_adapterhub_keys(model, state), use_safetensors, SAFE_WEIGHTS_NAME, WEIGHTS_NAME)
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
    overwrite_ok: bool = True,
    allow_non_finite: bool = False,
    loading_info: Optional[dict] = None,
    **hub_kwargs,
) -> str:
    """Load an adapter folder into ``model``; returns its name (see the module docstring).
    ``loading_info`` (a dict) gets AdapterHub's ``"missing_keys"`` / ``"unexpected_keys"`` lists
    (see :meth:`CheckpointMixin.load_adapter`).

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
    skipped = _install(model, name, saved_name, adapter_config, state, weights_path, config_path, set_active)
    if loading_info is not None:
        loading_info.setdefault("missing_keys", [])
        loading_info.setdefault("unexpected_keys", []).extend(skipped)
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
    if name in model.adapters_config.adapters:
        if not overwrite_ok:
            raise AdapterLoadError(f"An adapter named {name!r} exists already; pass load_as=... (overwrite_ok=False refuses to replace it).")
        logger.warning(f"Replacing the existing adapter {name!r} with the one loaded from {folder}.")
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


def _install(model, name, saved_name, adapter_config, state, weights_path, config_path, set_active: bool) -> list[str]:
    """Build the adapter and copy the checked weights in, as one change of the adapters: under a
    staging name no user can give (names never hold '~'), renamed to ``name`` only once complete,
    so a failure leaves the model as it was and no forward pass sees a half-loaded adapter.
    Returns the checkpoint's keys it skipped (layers the adapter leaves out), as the file names them."""
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
        def shown(key: str) -> str:  # errors and the report name the keys as the file does
            return key.replace(f".{staging}.", f".{saved_name}.")

        try:
            ignored = sorted(shown(key) for key in _copy_adapter_state(model, staging, adapter_config, state, weights_path, shown))
            if name in model.adapters_config.adapters:
                model.delete_adapter(name)  # may refuse (a merged adapter that cannot be unmerged exactly)
        except Exception:
            model.delete_adapter(staging)
            raise
        model._rename_adapter(staging, name)
        if set_active:
            model.set_active_adapters(name)
    return ignored


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
    # the adapter's buffers too (ReFT's orthogonal bases), which its method family copies itself
    expected = set(expected) | {key for key, _ in model.named_buffers()}
    state = dict(state)
    for key in unknown:
        new_key = rename_source_key(key, renamings, [])[0]
        for pattern, replacement in spec_renames:
            new_key = re.sub(pattern, replacement, new_key)
        if new_key != key and new_key in expected:
            if new_key not in state:
                state[new_key] = state.pop(key)
            elif torch.equal(state[new_key], state[key]):
                # one module AdapterHub saved under each path it is registered at (an EncoderDecoderModel's
                # prefix pool and invertible adapters): the same tensor again, not a weight of its own
                del state[key]
    return state


def _as_adapterhub_keys(model, state: dict) -> dict:
    """``state`` (keys relative to the base model, this library's module paths) under the key names
    AdapterHub 1.3.0 writes for the same modules, so that AdapterHub loads the file: transformers'
    checkpoint-conversion renamings undone, last one first (what ``from_pretrained`` applies to
    transformers 4 checkpoints, without its legacy renames such as ``gamma`` → ``weight`` and without
    prefix changes scoped to a sub-model, which read that sub-model's own checkpoints), which gives
    back transformers 4's module paths; then the spec's ``adapterhub_key_renames`` (the inverse of
    its ``legacy_key_renames``, for adapter modules AdapterHub kept where transformers 5 has none);
    on a model with a head, the base model's keys get its prefix (``bert.``), as AdapterHub names
    them (both libraries read either form).

    Example::

        >>> _as_adapterhub_keys(vit, {"layers.0.output_adapters.adapters.a.adapter_up.bias": b})
        {'encoder.layer.0.output.output_adapters.adapters.a.adapter_up.bias': b}
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import PrefixChange, WeightRenaming, rename_source_key

    reverted = [
        t.reverse_transform()
        for t in get_model_conversion_mapping(model, add_legacy=False)[::-1]
        if isinstance(t, WeightRenaming) and not (isinstance(t, PrefixChange) and t.scope_prefix)
    ]
    spec_renames = model.__dict__["_adapters_spec"].adapterhub_key_renames
    # AdapterHub names a head model's weights from the whole model (``bert.encoder...``)
    prefix = "" if model.base_model is model or not model.base_model_prefix else f"{model.base_model_prefix}."
    inside = set(model.base_model._modules) | {name for name, _ in model.base_model.named_parameters(recurse=False)}
    renamed = {}
    for key, value in state.items():
        in_base = key.split(".", 1)[0] in inside
        key = rename_source_key(key, reverted, [])[0] if reverted else key
        for pattern, replacement in spec_renames:
            key = re.sub(pattern, replacement, key)
        renamed[prefix + key if in_base else key] = value
    return renamed


def _name_in_keys(state: dict, fallback: str) -> str:
    """The adapter name the weight keys actually use (AdapterHub writes the saved name)."""
    containers = "|".join(c for c in ADAPTER_CONTAINERS if c != "shared_parameters")
    found = {m.group(3) for k in state for m in [re.search(rf"(^|\.)({containers})\.([^.]+)\.", k)] if m}
    return found.pop() if len(found) == 1 else fallback


# -- fusions --------------------------------------------------------------------------------------------
def save_adapter_fusion(model, save_directory: str, adapter_names, use_safetensors: bool = True, meta_dict=None, files=None) -> None:
    """Save one fusion layer (see the module docstring for the layout), atomically; ``meta_dict``
    adds entries to its ``adapter_fusion_config.json``; ``files`` stages into an open
    :class:`_CheckpointFiles` (committed with the files staged beside it).

    Example::

        >>> save_adapter_fusion(model, "out/fusion", "a,b")
    """
    fusion_name = _fusion_name(adapter_names)
    registry = model.adapters_config
    if fusion_name not in registry.fusions:
        known = ", ".join(sorted(registry.fusions)) or "none"
        raise AdapterConfigError(f"No adapter fusion named {fusion_name!r} (adapter_names); the model has: {known}.")
    fusion_config, names = registry.fusions[fusion_name]
    meta = _meta(model, fusion_name)
    meta.update({"config": fusion_config.to_dict(), "adapter_names": list(names)})
    meta.update(meta_dict or {})
    state = _as_adapterhub_keys(model, _select_parameters(model, _fusion_key_pattern(fusion_name)))
    if files is not None:
        files.weights(state, use_safetensors, FUSION_SAFE_WEIGHTS_NAME, FUSION_WEIGHTS_NAME)
        files.json(FUSION_CONFIG_NAME, dict(sorted(meta.items())), last=True)
        return
    with _model_checkpoint(model, save_directory) as files:
        files.weights(state, use_safetensors, FUSION_SAFE_WEIGHTS_NAME, FUSION_WEIGHTS_NAME)
        files.json(FUSION_CONFIG_NAME, dict(sorted(meta.items())), last=True)


def _fusion_name(adapter_names) -> str:
    """The fusion layer's name for ``adapter_names``: a ``Fuse`` block's name, ``"a,b"``, or a list joined by commas."""
    if isinstance(adapter_names, Fuse):
        return adapter_names.name
    return adapter_names if isinstance(adapter_names, str) else ",".join(adapter_names)


def _blocks(setup, kind: type) -> list:
    """Every block of type ``kind`` in the tree ``setup``, depth first."""
    if isinstance(setup, str):
        return []
    found = [setup] if isinstance(setup, kind) else []
    for child in setup.children:
        found += _blocks(child, kind)
    return found


def load_adapter_fusion(
    model, path: str, load_as: Optional[str] = None, set_active: bool = False, allow_non_finite: bool = False,
    prefer_safetensors: bool = True,
) -> str:
    """Load a fusion folder; its adapters must be in the model already. Returns the fusion name.

    ``allow_non_finite=True`` also loads weights that are NaN/inf or not floating-point (refused
    by default); ``prefer_safetensors=False`` reads the legacy ``.bin`` where both files exist.

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
    state, weights_path = _read_weights(folder, FUSION_SAFE_WEIGHTS_NAME, FUSION_WEIGHTS_NAME, allow_non_finite, prefer_safetensors)
    state = _rename_in_keys(_strip_prefix(model, state), _fusion_key_pattern, saved_name, name)
    with registry_lock(model.adapters_config).writing("load_adapter_fusion"):  # one change of the adapters
        try:
            model.add_adapter_fusion(Fuse(*names, name=name), fusion_config)
        except (ValueError, TypeError) as error:  # e.g. it fuses adapters of a method without fusion
            raise _as_load_error(config_path, error) from error
        try:
            params = _select_parameters(model, _fusion_key_pattern(name))
            # written against transformers 4's module paths (ViT, CLIP): renamed as the base weights are
            _copy_checked(params, _with_renamed_legacy_keys(model, state, params), weights_path)
        except Exception:
            model.delete_adapter_fusion(name)
            raise
        if set_active:
            model.set_active_adapters(Fuse(*names, name=name))
    return name


# -- whole models: save_pretrained / from_pretrained / adapters.init ---------------------------------
#: the key of ``config.json`` under which a model's adapters are listed (AdapterHub's)
ADAPTERS_CONFIG_KEY = "adapters"
_MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class _ModelCheckpoint:
    """The weights files of a saved full model (``save_pretrained``'s folder, or its Hugging Face
    Hub repo in huggingface_hub's cache): which tensors it holds, read on demand by base-model key
    (the head model's prefix, ``bert.``, stripped) so that only the adapters' tensors are read.

    Example::

        >>> checkpoint = _ModelCheckpoint.find(model, "out/model")
        >>> checkpoint.read(["encoder.layer.0.output.adapters.a.adapter_up.weight"])
    """

    def __init__(self, files: dict[str, str], label: str, loaded: Optional[dict] = None):
        self.files = files  # base-model key -> (file, key in the file)
        self.label = label
        # each torch (.bin) file, loaded whole, is kept for this checkpoint's life (one
        # restore_adapters), so that restoring n adapters loads it once, not n times
        self._loaded: dict[str, dict] = dict(loaded or {})

    @classmethod
    def find(cls, model, source, **download_kwargs) -> Optional["_ModelCheckpoint"]:
        """The checkpoint of ``source`` (a folder or a Hub repo id already in the cache), or None
        where it has no weights file (a model built from a config alone)."""
        if not source or not isinstance(source, (str, os.PathLike)):
            return None
        source = str(source)
        subfolder = download_kwargs.get("subfolder") or ""

        def locate(filename: str) -> Optional[str]:
            local = os.path.join(source, subfolder, filename)
            if os.path.isdir(source):
                return local if os.path.isfile(local) else None
            try:  # a Hub repo that from_pretrained downloaded: read from the cache, never the network
                from transformers.utils import cached_file

                return cached_file(
                    source, filename, local_files_only=True, _raise_exceptions_for_missing_entries=False,
                    _raise_exceptions_for_connection_errors=False,
                    **{k: v for k, v in download_kwargs.items() if k in ("cache_dir", "revision", "subfolder")},
                )
            except Exception:  # not a repo id at all
                return None

        loaded: dict[str, dict] = {}  # a .bin read to list its keys, kept for reading the tensors
        for filename in _MODEL_WEIGHTS:
            path = locate(filename)
            if path is None:
                continue
            if filename.endswith(".index.json"):
                index = _read_json(path)
                weight_map = index.get("weight_map")
                if not isinstance(weight_map, dict):
                    raise AdapterLoadError(f"{path}: \"weight_map\" must map tensor names to shard files; the file is corrupt.")
                names = set(weight_map.values())
                bad = sorted(repr(n) for n in names if not isinstance(n, str) or not n or os.path.basename(n) != n or n in (".", ".."))
                if bad:  # a shard is a file beside the index, never a path elsewhere
                    raise AdapterLoadError(f"{path}: shard names must be file names beside the index, not {', '.join(bad)}.")
                shards = {shard: locate(shard) for shard in names}
                missing = sorted(shard for shard, found in shards.items() if found is None)
                if missing:
                    raise AdapterLoadError(f"{path} names shard files that are missing: {missing}.")
                located = {key: (shards[shard], key) for key, shard in weight_map.items()}
            elif filename.endswith(".safetensors"):
                from safetensors import safe_open

                try:
                    with safe_open(path, framework="pt") as f:
                        located = {key: (path, key) for key in f.keys()}
                except Exception as error:
                    raise AdapterLoadError(f"{path} could not be read ({type(error).__name__}: {error}); the file is corrupt.") from error
            else:
                loaded[path] = cls._torch_file(path)
                located = {key: (path, key) for key in loaded[path]}
            return cls(dict(zip(_strip_prefix(model, dict.fromkeys(located)), located.values())), path, loaded)
        return None

    @staticmethod
    def _torch_file(path: str) -> dict:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise AdapterLoadError(f"{path} could not be read ({type(error).__name__}: {error}); the file is corrupt.") from error
        if not isinstance(state, dict):
            raise AdapterLoadError(f"{path} does not hold a dict of tensors by name.")
        return state

    def keys_matching(self, pattern: re.Pattern) -> list[str]:
        """The base-model keys that ``pattern`` finds (AdapterHub's per-layer prefix-pool copies left out)."""
        return [key for key in self.files if pattern.search(key) and not _PREFIX_POOL_COPY.search(key)]

    def read(self, keys) -> dict:
        """``{key: tensor}`` for base-model ``keys``, each file opened once."""
        by_file: dict[str, list[str]] = {}
        for key in keys:
            path, stored = self.files[key]
            by_file.setdefault(path, []).append(key)
        state = {}
        for path, wanted in by_file.items():
            if path.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(path, framework="pt") as f:
                    state.update({key: f.get_tensor(self.files[key][1]) for key in wanted})
            else:
                if path not in self._loaded:
                    self._loaded[path] = self._torch_file(path)
                stored = self._loaded[path]
                state.update({key: stored[self.files[key][1]] for key in wanted})
        _check_values(state, self.label)
        return state


def saved_adapters_config(model, adapters_config=None, where: Optional[str] = None):
    """The registry to rebuild on ``model``: ``adapters_config`` (a ModelAdaptersConfig or its
    saved dict) if given, else the ``config.adapters`` entry that ``save_pretrained`` wrote (None
    where there is none or it lists nothing).

    Raises:
        AdapterConfigError: the entry is not valid (the message names it, e.g.
            ``out/model/config.json['adapters']['adapters']['a']``).

    Example::

        >>> saved_adapters_config(model).adapters
        {'a': SeqBnConfig(...)}
    """
    from .configuration.model_config import ModelAdaptersConfig

    if isinstance(adapters_config, ModelAdaptersConfig):
        return adapters_config
    if adapters_config is not None:
        return ModelAdaptersConfig.from_saved(adapters_config, where or "adapters_config")
    data = getattr(getattr(model, "config", None), ADAPTERS_CONFIG_KEY, None)
    if data is None:
        return None
    source = getattr(model.config, "_name_or_path", "") or ""
    label = where or (f"{os.path.join(source, 'config.json')}['adapters']" if source else "config.adapters")
    registry = ModelAdaptersConfig.from_saved(data, label)
    return registry if registry.adapters or registry.fusions else None


def _head_setup_names(head_setup) -> Optional[list]:
    """The head names a head setup names (``save_adapter_setup`` / ``load_adapter_setup``): a
    block's names, one name, a list or tuple of names, or none for None and a bool (``True`` is a
    static head); None where ``head_setup`` is none of these forms."""
    from .composition import AdapterCompositionBlock

    if isinstance(head_setup, AdapterCompositionBlock):
        return head_setup.names_in_order()
    if isinstance(head_setup, str):
        return [head_setup]
    if isinstance(head_setup, (list, tuple)) and all(isinstance(name, str) for name in head_setup):
        return list(head_setup)
    if head_setup is None or isinstance(head_setup, bool):
        return []
    return None


def _drop_saved_adapters_entry(config) -> None:
    """Remove ``config.adapters`` (once the registry holds the adapters it lists)."""
    if config is not None and ADAPTERS_CONFIG_KEY in vars(config):
        delattr(config, ADAPTERS_CONFIG_KEY)


def restore_adapters(model, registry, source=None, where: str = "config.adapters", **download_kwargs) -> None:
    """Build the adapters and fusions ``registry`` lists in ``model`` and activate its saved
    setup; the weights come from the full-model checkpoint ``source`` (a ``save_pretrained``
    folder or Hub repo, AdapterHub's included) where it holds them. An adapter of which the
    checkpoint holds no tensor keeps its fresh initialisation (a warning names it), as it does
    in AdapterHub; one of which it holds some but not all is refused.

    The change is atomic: on any error every adapter and fusion built here is removed again
    and the error names the checkpoint file or the registry entry.

    Raises:
        AdapterLoadError: the checkpoint's tensors do not fit the adapters, or the saved active
            setup is not valid on the model.

    Example::

        >>> restore_adapters(model, saved_adapters_config(model), source="out/model")
    """
    from .composition import AdapterCompositionBlock, parse_composition
    from .errors import CompositionError

    setup = None
    if registry.saved_active_setup is not None:  # checked before anything changes
        try:
            setup = parse_composition(AdapterCompositionBlock.from_dict(registry.saved_active_setup))
        except (CompositionError, AdapterConfigError) as error:
            raise AdapterLoadError(f"{where}['active_setup']: {error}") from error
    taken = [name for name in registry.adapters if name in model.adapters_config.adapters]
    taken += [name for name in registry.fusions if name in model.adapters_config.fusions]
    if taken:
        raise AdapterLoadError(f"{where} lists {taken}, which the model has already; delete them first.")
    checkpoint = _ModelCheckpoint.find(model, source, **download_kwargs) if source else None
    if checkpoint is None and source and (registry.adapters or registry.fusions):
        # a model loaded from a checkpoint whose weights file is not where the adapters look (a
        # from_pretrained with subfolder=, cache_dir= or revision= that adapters.init does not see)
        logger.warning(
            f"{where} lists {[*registry.adapters, *registry.fusions]}, but no model weights file was found for "
            f"{source!r}: they are built with freshly initialised weights. Load the model with "
            f"AutoAdapterModel.from_pretrained (which takes subfolder=, cache_dir= and revision=) to restore them."
        )
    added, fused = [], []
    with registry_lock(model.adapters_config).writing("restore_adapters"):
        try:
            for name, config in registry.adapters.items():
                try:
                    model.add_adapter(name, config)
                except (ValueError, TypeError) as error:
                    raise AdapterLoadError(f"{where}['adapters'][{name!r}]: {error}") from error
                added.append(name)
                _restore_weights(model, checkpoint, name, config)
            for fusion_name, (config, names) in registry.fusions.items():
                try:
                    model.add_adapter_fusion(Fuse(*names, name=fusion_name), config)
                except (ValueError, TypeError) as error:
                    raise AdapterLoadError(f"{where}['fusions'][{fusion_name!r}]: {error}") from error
                fused.append(fusion_name)
                params = _select_parameters(model, _fusion_key_pattern(fusion_name))
                keys = checkpoint.keys_matching(_fusion_key_pattern(fusion_name)) if checkpoint is not None else []
                if keys:
                    _copy_checked(params, checkpoint.read(keys), checkpoint.label)
                else:
                    _warn_fresh(checkpoint, f"fusion {fusion_name!r}")
            if setup is not None:
                try:
                    model.set_active_adapters(setup)
                except (ValueError, TypeError) as error:
                    raise AdapterLoadError(f"{where}['active_setup']: {error}") from error
            _drop_saved_adapters_entry(getattr(model, "config", None))  # the registry holds them now
        except Exception:
            for fusion_name in fused:
                model.delete_adapter_fusion(fusion_name)
            for name in added:
                model.delete_adapter(name)
            raise


def _warn_fresh(checkpoint, what: str) -> None:
    """Report an adapter built with fresh weights: a warning where a checkpoint lacks its tensors;
    a model built from a config alone (no checkpoint) gets fresh weights by design."""
    if checkpoint is None:
        logger.info(f"Built {what} from the saved config with freshly initialised weights (no checkpoint).")
    else:
        logger.warning(f"Restored {what} from the saved config with freshly initialised weights: {checkpoint.label} holds none of its weights.")


def _restore_weights(model, checkpoint, name: str, config) -> None:
    """Copy adapter ``name``'s tensors from ``checkpoint`` (as load_adapter does: legacy key
    renames, each method family's AdapterHub form, every key and shape checked)."""
    pattern = _adapter_key_pattern(name)
    keys = checkpoint.keys_matching(pattern) if checkpoint is not None else []
    if not keys:
        _warn_fresh(checkpoint, f"adapter {name!r}")
        return
    state = checkpoint.read(keys)
    bias = model._bias_parameters(name)  # base-model parameters, loaded with the base weights already
    state.update(checkpoint.read([key for key in bias if key in checkpoint.files]))
    _copy_adapter_state(model, name, config, state, checkpoint.label)


def _copy_adapter_state(model, name: str, adapter_config, state: dict, label: str, shown=lambda key: key) -> set:
    """Copy a saved adapter's tensors ``state`` into the built adapter ``name`` (``load_adapter``
    and ``restore_adapters`` alike): legacy key names are renamed, each method family turns its
    AdapterHub form into its own (which may reshape its modules, as VeRA's dense form does),
    keys that match only in the family's own form are renamed again, and every key and shape is
    checked before anything is copied; the tensors of layers the adapter leaves out are skipped.
    ``label`` names the file in errors, ``shown`` maps a key to the name errors give it. Returns
    the keys of ``state`` that were skipped."""
    pattern = _adapter_key_pattern(name)

    def parameters() -> dict:
        return {**_select_parameters(model, pattern), **model._bias_parameters(name)}

    params = parameters()
    state = _with_renamed_legacy_keys(model, state, params)
    for method_family, part in families_of(adapter_config):
        if method_family.from_adapterhub is not None:
            state = method_family.from_adapterhub(model, name, part, state, label)
            params = parameters()
    state = _with_renamed_legacy_keys(model, state, params)  # keys in the family's own form (DoRA's m.weight, ReFT's units)
    skipped, layer_index = set(adapter_config.get("leave_out", ())), _layer_index_finder(model)
    _copy_checked(params, state, label, ignore_unexpected=lambda key: layer_index(key) in skipped, shown=shown)
    return set(state) - set(params)


def _saved_adapter_patterns(model) -> list[re.Pattern]:
    """Key patterns of the adapters and fusions that ``config.adapters`` lists (their tensors
    are restored after transformers' loading, so they are not unexpected)."""
    data = getattr(getattr(model, "config", None), ADAPTERS_CONFIG_KEY, None)
    if not isinstance(data, dict):
        return []
    adapters = data.get("adapters") if isinstance(data.get("adapters"), dict) else {}
    fusions = data.get("fusions") if isinstance(data.get("fusions"), dict) else {}
    return [_adapter_key_pattern(n) for n in adapters if isinstance(n, str)] + [
        _fusion_key_pattern(n) for n in fusions if isinstance(n, str)
    ]


class _LoadingInfo(dict):
    """The loading report transformers' ``from_pretrained`` asks of ``load_adapter`` when the
    folder also holds an adapter (``output_loading_info``): the base model's own report."""

    def to_dict(self) -> dict:
        return dict(self)


#: set while an AdapterModel's ``from_pretrained`` runs transformers' ``from_pretrained``: the
#: ``load_adapter`` call that transformers' PEFT integration makes then (for an
#: ``adapter_config.json`` beside the model) is answered with the loading report only, since
#: :func:`finish_from_pretrained` loads that adapter itself (with or without peft installed)
_IN_FROM_PRETRAINED = contextvars.ContextVar("adapters_in_from_pretrained", default=False)


def _adapter_folder_beside_model(source, download_kwargs: dict) -> Optional[str]:
    """The folder of an ``adapter_config.json`` saved beside a model's weights (AdapterHub's
    quickstart: ``save_pretrained(p)``, then ``save_adapter(p, name)``), honouring
    ``subfolder``; None where there is none. A Hub repo is asked through huggingface_hub's cache
    (as transformers asks for the model's own files)."""
    if not source or not isinstance(source, (str, os.PathLike)):
        return None
    subfolder = download_kwargs.get("subfolder") or ""
    local = os.path.join(str(source), subfolder)
    if os.path.isdir(str(source)):
        return local if os.path.isfile(os.path.join(local, CONFIG_NAME)) else None
    try:
        from transformers.utils import cached_file

        path = cached_file(
            str(source), CONFIG_NAME, _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **{k: v for k, v in download_kwargs.items() if k in ("cache_dir", "revision", "subfolder", "token")},
        )
    except Exception:  # not a repo id, or the Hub cannot be reached: nothing beside the model
        return None
    return os.path.dirname(path) if path else None


def finish_from_pretrained(model, source, download_kwargs: dict, output_loading_info: bool = False):
    """After transformers' ``from_pretrained`` of an AdapterModel: rebuild the adapters, fusions
    and active setup ``config.adapters`` lists with their weights from the checkpoint, then load
    an adapter saved into the same folder (AdapterHub's quickstart: ``save_pretrained(p)``, then
    ``save_adapter(p, name)``) unless ``config.adapters`` restored it already. Returns the model,
    with ``output_loading_info`` also transformers' report (missing / unexpected / mismatched
    keys; the restored adapters' keys are not unexpected).

    Example::

        >>> model = finish_from_pretrained(BertAdapterModel.from_pretrained("out/model"), "out/model", {})
    """
    report = model.__dict__.pop("_adapters_loading_info", None)
    registry = saved_adapters_config(model)
    if registry is not None:
        restore_adapters(model, registry, source=source, where=f"{source}: config.json['adapters']", **download_kwargs)
    folder = _adapter_folder_beside_model(source, download_kwargs)  # looked up here: no peft needed
    if folder is not None:
        meta = _read_json(os.path.join(folder, CONFIG_NAME))
        saved_name = meta.get("name") if "peft_type" not in meta else None
        if saved_name not in model.adapters_config.adapters:  # else config.adapters restored it (and its head)
            model.load_adapter(folder)
    if output_loading_info:
        info = report.to_dict() if report is not None else {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
        return model, info
    return model


class CheckpointMixin:
    """Saving and loading on the model (AdapterHub's method names; part of
    :class:`~adapters.ModelAdaptersMixin`): thin methods over the functions above.

    Example::

        >>> model.save_adapter("out/task", "task")
        >>> model.load_adapter("out/task", load_as="task2")
    """

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``, with the model's adapters: their weights are part of
        the model's weights file, and ``config.json`` lists them under AdapterHub's ``"adapters"``
        key (:meth:`ModelAdaptersConfig.to_dict <adapters.ModelAdaptersConfig.to_dict>`: adapters,
        fusions and, as this library's addition, the active setup), so that
        ``AutoAdapterModel.from_pretrained`` or ``adapters.init`` after transformers'
        ``from_pretrained`` rebuild them, here or in AdapterHub. A model initialised with an
        :class:`~adapters.AdapterModelInterface` also gets AdapterHub's ``adapter_interface.json``
        (the interface is in ``config.json`` too, where ``adapters.init`` finds it after
        ``from_pretrained``), written atomically inside ``save_directory``.

        Example::

            >>> model.save_pretrained("out/model")
            >>> adapters.init(MyModel.from_pretrained("out/model"))   # the saved interface and adapters are used
        """
        # the registry is the truth: written for this save only (as AdapterHub does), so a config
        # shared with or copied to another model never carries a stale list of adapters; an entry
        # the config had before is put back, and the lock keeps two saves (of models that share
        # the config) from restoring each other's entry
        with _SAVE_CONFIG_LOCK:
            config_vars = vars(self.config)
            had_entry, previous = ADAPTERS_CONFIG_KEY in config_vars, config_vars.get(ADAPTERS_CONFIG_KEY)
            setattr(self.config, ADAPTERS_CONFIG_KEY, self.adapters_config.to_dict())
            try:
                result = super().save_pretrained(save_directory, *args, **kwargs)
            finally:
                if had_entry:
                    setattr(self.config, ADAPTERS_CONFIG_KEY, previous)
                else:
                    _drop_saved_adapters_entry(self.config)
        interface = self.__dict__.get("_adapters_interface")
        if interface is not None:
            from .interface import INTERFACE_CONFIG_NAME

            with _CheckpointFiles(save_directory) as files:
                files.file(INTERFACE_CONFIG_NAME, lambda folder: interface.save(folder, self.config))
        return result

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """transformers' clean-up of its loading report (during ``from_pretrained``), then the
        tensors of the adapters ``config.adapters`` lists taken out of the unexpected keys (they
        are restored once the base weights are loaded); the report is kept for
        ``output_loading_info``."""
        super()._adjust_missing_and_unexpected_keys(loading_info)
        patterns = _saved_adapter_patterns(self)
        if patterns:
            loading_info.unexpected_keys = type(loading_info.unexpected_keys)(
                key for key in loading_info.unexpected_keys
                if not _PREFIX_POOL_COPY.search(key) and not any(p.search(key) for p in patterns)
            )
        self.__dict__["_adapters_loading_info"] = loading_info

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
        head of the same name (``head_config.json`` + ``model_head.safetensors``); on a
        transformers head model (``BertForSequenceClassification``, ...), its static head.

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
        with _model_checkpoint(self, save_directory) as files:
            _stage_adapter(self, files, adapter_name, meta_dict, use_safetensors, format)
            if with_head and heads is not None and adapter_name in heads:
                self._stage_head(files, adapter_name, use_safetensors)
            elif with_head and heads is None and self.__dict__.get("_adapters_static_head"):  # a transformers head model
                self._stage_static_head(files, use_safetensors)
        logger.info(f"Saved adapter {adapter_name!r} to {save_directory}.")

    def load_adapter(
        self,
        adapter_name_or_path: str,
        config=None,
        load_as: Optional[str] = None,
        set_active: bool = False,
        leave_out: Optional[list[int]] = None,
        overwrite_ok: bool = True,
        allow_non_finite: bool = False,
        with_head: bool = True,
        loading_info: Optional[dict] = None,
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
            overwrite_ok: what happens to an adapter of the same name (and a head of that name
                saved with it): by default it is replaced, with a warning, as AdapterHub replaces
                it (the replacement is atomic: if the load fails, the old one stays);
                ``overwrite_ok=False`` refuses to replace it (an AdapterLoadError).
            with_head: also load a head saved beside the adapter (AdapterModels and transformers'
                head models).
            loading_info: a dict that gets AdapterHub's report: ``"missing_keys"`` (always empty
                here: a checkpoint lacking a weight is refused) and ``"unexpected_keys"`` (the
                tensors of layers the adapter leaves out, which are skipped), appended to lists
                already there.
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

        if _IN_FROM_PRETRAINED.get() and "load_config" in kwargs:
            # transformers' PEFT integration, inside an AdapterModel's from_pretrained, found
            # adapter_config.json beside the model: finish_from_pretrained loads it (peft or not)
            report = self.__dict__.get("_adapters_loading_info")
            return _LoadingInfo(report.to_dict() if report is not None else {})
        if load_as is not None:
            self._check_name(load_as, argument="load_as")
        head = None
        if with_head and getattr(self, "heads", None) is not None:  # an AdapterModel (adapters.heads)
            folder = _resolve_folder(adapter_name_or_path, **kwargs)
            if self._holds_head(folder):  # checked before anything changes
                head = self._prepare_head(folder, load_as=load_as, overwrite_ok=overwrite_ok, allow_non_finite=allow_non_finite)
            adapter_name_or_path = folder
        elif with_head and self.__dict__.get("_adapters_static_head"):  # a transformers head model (static_heads.py)
            folder = _resolve_folder(adapter_name_or_path, **kwargs)
            if self._holds_head(folder):
                head = self._prepare_static_head(folder, allow_non_finite=allow_non_finite, beside_adapter=True)
            adapter_name_or_path = folder
        name = load_adapter(
            self, adapter_name_or_path, config=config, load_as=load_as, set_active=False,
            leave_out=leave_out, overwrite_ok=overwrite_ok, allow_non_finite=allow_non_finite,
            loading_info=loading_info, **kwargs,
        )
        if callable(head):
            head()
        elif head is not None:
            self._insert_loaded_head(*head, set_active=True)
        if set_active:
            self.set_active_adapters(name)
        return name

    def save_adapter_fusion(
        self,
        save_directory: str,
        adapter_names,
        meta_dict: Optional[dict] = None,
        with_head=False,
        use_safetensors: bool = True,
    ) -> None:
        """Save a fusion layer (AdapterHub layout: ``adapter_fusion_config.json`` + weights),
        atomically as :meth:`save_adapter`.

        Args:
            save_directory: the folder.
            adapter_names: the fusion: a ``Fuse`` block, ``"a,b"`` or a list of names.
            meta_dict: entries added to ``adapter_fusion_config.json``.
            with_head: on an AdapterModel, also save a head into the folder: ``True`` the head
                named like the fusion, a string the head of that name (AdapterHub's switch).
            use_safetensors: ``adapter.safetensors``-style weights (else AdapterHub's ``.bin``;
                the file of the other format is removed).

        Raises:
            AdapterConfigError: no such fusion, or ``with_head`` names no head of the model.

        Example::

            >>> model.save_adapter_fusion("out/fusion", "a,b,c")
            >>> model.save_adapter_fusion("out/fusion", Fuse("a", "b"), with_head=True)
        """
        head = None
        if with_head:
            head = with_head if isinstance(with_head, str) else _fusion_name(adapter_names)
            if head not in (getattr(self, "heads", None) or {}):
                raise AdapterConfigError(
                    f"with_head={with_head!r}: the model has no head named {head!r} "
                    f"(heads: {', '.join(getattr(self, 'heads', None) or {}) or 'none'}); pass a head's name or with_head=False."
                )
        with _model_checkpoint(self, save_directory) as files:
            save_adapter_fusion(self, save_directory, adapter_names, use_safetensors=use_safetensors, meta_dict=meta_dict, files=files)
            if head is not None:
                self._stage_head(files, head, use_safetensors)

    def load_adapter_fusion(
        self,
        adapter_fusion_name_or_path: str,
        load_as: Optional[str] = None,
        set_active: bool = False,
        allow_non_finite: bool = False,
        with_head: bool = True,
        use_safetensors: bool = False,
        **kwargs,
    ) -> str:
        """Load a fusion layer saved by :meth:`save_adapter_fusion` or AdapterHub; the fused
        adapters must be loaded already. Returns the fusion's name. ``allow_non_finite`` as in
        :meth:`load_adapter`; ``with_head`` also loads a head saved beside it (AdapterModels);
        ``use_safetensors`` picks the file where a folder holds both formats (AdapterHub's
        switch; with one file, that file is read). On any error the model is left unchanged.

        Example::

            >>> model.load_adapter_fusion("out/fusion", set_active=True)
        """

        folder = _resolve_folder(adapter_fusion_name_or_path, **kwargs)
        head = None
        if with_head and getattr(self, "heads", None) is not None and self._holds_head(folder):
            # the head takes the fusion's name (load_as) and is activated only with set_active
            head = self._prepare_head(folder, load_as=load_as, allow_non_finite=allow_non_finite, overwrite_ok=True)
        name = load_adapter_fusion(
            self, folder, load_as=load_as, set_active=set_active, allow_non_finite=allow_non_finite,
            prefer_safetensors=use_safetensors,
        )
        if head is not None:
            self._insert_loaded_head(*head, set_active=set_active)
        return name

    def save_adapter_setup(
        self,
        save_directory: str,
        adapter_setup,
        head_setup=None,
        meta_dict: Optional[dict] = None,
        use_safetensors: bool = True,
    ) -> None:
        """Save a whole setup (AdapterHub's layout): ``adapter_setup.json`` (the setup and head
        setup as :meth:`~adapters.composition.AdapterCompositionBlock.to_dict` writes them), each
        adapter in ``<save_directory>/<name>`` (with its head of the same name, as
        :meth:`save_adapter`), each fusion of the setup in ``<save_directory>/<fusion name>``,
        and the heads ``head_setup`` names in ``<save_directory>/<head name>`` (``True``: a
        transformers head model's static head, in ``save_directory`` itself).

        Everything the setup names is checked before anything is written.

        Raises:
            AdapterConfigError: the setup names an adapter, fusion or head the model lacks (the
                message names it and what the model has).

        Example::

            >>> model.save_adapter_setup("out/setup", Stack("lang", Fuse("a", "b")), head_setup="a")
            >>> setup, heads = model.load_adapter_setup("out/setup", set_active=True)
        """
        from .composition import AdapterCompositionBlock, parse_composition

        setup = parse_composition(adapter_setup)
        if setup is None:
            raise AdapterConfigError(f"adapter_setup={adapter_setup!r} names no adapter; pass a setup such as Stack('a', 'b').")
        names = _adapters_named(setup, self.adapters_config.adapters)
        for name in names:
            self._require_adapter(name)
        fusions = [block.name for block in _blocks(setup, Fuse)]
        missing = [name for name in fusions if name not in self.adapters_config.fusions]
        if missing:
            raise AdapterConfigError(f"adapter_setup fuses with {missing}, which the model does not have; add or load the fusion first.")
        heads = _head_setup_names(head_setup)
        if heads is None:
            raise AdapterConfigError(
                f"head_setup is {type(head_setup).__name__} {head_setup!r}; pass None, True (a static head), a head name, "
                f"a list of head names or a block of them."
            )
        flexible = getattr(self, "heads", None) or {}
        absent = [name for name in heads if name not in flexible]
        if absent:
            raise AdapterConfigError(f"head_setup names {absent}, which the model does not have (heads: {', '.join(flexible) or 'none'}).")
        if head_setup is True and not hasattr(self, "save_head"):
            raise AdapterConfigError("head_setup=True saves a transformers head model's static head; this model has none.")
        targets = {name: _inside(save_directory, name) for name in [*names, *fusions, *heads]}
        with _CheckpointFiles(save_directory) as files:
            files.json(
                SETUP_CONFIG_NAME,
                {
                    "adapter_setup": setup.to_dict(),
                    "head_setup": head_setup.to_dict() if isinstance(head_setup, AdapterCompositionBlock) else head_setup,
                    "version": FILE_VERSION,
                },
                last=True,
            )
            for name in names:
                self.save_adapter(targets[name], name, meta_dict=meta_dict, use_safetensors=use_safetensors)
            for name in fusions:
                self.save_adapter_fusion(targets[name], name, meta_dict=meta_dict, use_safetensors=use_safetensors)
            for name in heads:
                self.save_head(targets[name], name, use_safetensors=use_safetensors)
            if head_setup is True:
                self.save_head(save_directory, use_safetensors=use_safetensors)

    def load_adapter_setup(
        self, adapter_setup_name_or_path: str, version: Optional[str] = None, set_active: bool = False,
        use_safetensors: bool = False, **kwargs,
    ):
        """Load a setup saved by :meth:`save_adapter_setup` (here or by AdapterHub): its
        adapters (with their heads), fusions and heads; returns ``(adapter_setup, head_setup)``.
        With ``set_active`` the setup (and head setup) become active. A setup never replaces
        what the model has: an adapter, fusion or head of a name it loads is refused before
        anything is loaded. All or nothing: on any error what was loaded is removed again, and
        the active setup and head and a static head are put back as they were. ``version`` is a Hub revision (AdapterHub's name
        for it); ``use_safetensors`` picks the fusion weights' format where both are saved (each
        adapter's file format is detected).

        Raises:
            AdapterLoadError: ``adapter_setup.json`` is missing or invalid, the model has a name
                the setup loads already, or a part does not load (the message names the file).

        Example::

            >>> setup, heads = model.load_adapter_setup("out/setup", set_active=True)
        """
        from .composition import AdapterCompositionBlock, Stack

        folder = _resolve_folder(adapter_setup_name_or_path, version=version, **kwargs)
        path = os.path.join(folder, SETUP_CONFIG_NAME)
        saved = _read_json(path)
        try:
            setup = AdapterCompositionBlock.from_dict(saved.get("adapter_setup"))
            head_setup = saved.get("head_setup")
            if isinstance(head_setup, dict):
                head_setup = AdapterCompositionBlock.from_dict(head_setup)
        except (ValueError, TypeError) as error:
            raise AdapterLoadError(f"{path}: {error}") from error
        if isinstance(setup, str):
            setup = Stack(setup)
        heads = _head_setup_names(head_setup)
        if heads is None:
            raise AdapterLoadError(f"{path}: \"head_setup\" is {head_setup!r}; it must be null, true, a head name, a list of names or a block.")
        names = _adapters_named(setup, self.adapters_config.adapters)
        fusions = [block.name for block in _blocks(setup, Fuse)]
        flexible = getattr(self, "heads", None)
        # a setup never replaces what the model has (so the rollback below removes only what it loaded)
        taken = [name for name in names if name in self.adapters_config.adapters]
        taken += [name for name in fusions if name in self.adapters_config.fusions]
        if flexible is not None:
            saved_heads = [name for name in names if self._holds_head(_inside(folder, name))]
            taken += [name for name in dict.fromkeys([*saved_heads, *heads]) if name in flexible]
        if taken:
            raise AdapterLoadError(
                f"{path}: the setup loads {taken}, which the model has already; delete them first (nothing was loaded)."
            )
        registry = self.adapters_config
        previous_setup, previous_skip = registry.active_setup, registry.skip_layers
        previous_heads = self.__dict__.get("_adapters_active_heads")
        heads_before = set(flexible or {})
        static_head = None  # a transformers head model's static head, which each adapter's load may replace
        if flexible is None and self.__dict__.get("_adapters_static_head"):
            static_head = (
                {key: value.detach().clone() for key, value in self._static_head_parameters().items()},
                copy.deepcopy(getattr(self.config, "label2id", None)), copy.deepcopy(getattr(self.config, "id2label", None)),
            )
        loaded, fused = [], []
        try:
            for name in names:
                loaded.append(self.load_adapter(_inside(folder, name), load_as=name, overwrite_ok=False))
            for name in fusions:
                fused.append(self.load_adapter_fusion(_inside(folder, name), load_as=name, use_safetensors=use_safetensors))
            for name in heads:  # a head saved with its adapter of the same name was loaded with it: replaced
                self.load_head(_inside(folder, name), load_as=name, set_active=False, overwrite_ok=name in loaded)
            if set_active:
                self.set_active_adapters(setup)
                if heads:
                    self.active_head = head_setup if isinstance(head_setup, (str, AdapterCompositionBlock)) else heads
            if head_setup is True:  # last: a static head load is all or nothing itself, and nothing follows it
                self.load_head(folder)
        except Exception:
            registry.active_setup, registry.skip_layers = previous_setup, previous_skip
            registry.changed()
            if flexible is not None:
                self.__dict__["_adapters_active_heads"] = previous_heads
                for name in [name for name in flexible if name not in heads_before]:
                    self.delete_head(name)
            if static_head is not None:
                saved, label2id, id2label = static_head
                with torch.no_grad():
                    for key, parameter in self._static_head_parameters().items():
                        parameter.copy_(saved[key])
                self.config.label2id, self.config.id2label = label2id, id2label
            for name in fused:
                self.delete_adapter_fusion(name)
            for name in loaded:
                self.delete_adapter(name)
            raise
        return setup, head_setup

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
