"""Saving and loading prediction heads (AdapterHub's layout: ``head_config.json`` beside
``model_head.safetensors``, or the legacy ``pytorch_model_head.bin`` read with
``torch.load(weights_only=True)``); part of :class:`~adapters.heads.FlexibleHeadsMixin`.

A head is read and checked completely (its config, its hidden size against the model's, its
weights' names, shapes and values) before the model changes; a failed load leaves it as it was.
"""

from __future__ import annotations

import copy
import os
from typing import Optional

from torch import nn

from .. import logging
from ..errors import AdapterConfigError
from ..static_heads import HEAD_CONFIG_NAME, HEAD_SAFE_WEIGHTS_NAME, HEAD_WEIGHTS_NAME

logger = logging.get_logger(__name__)

# the file names are AdapterHub's, defined once in static_heads (the head layout both kinds of head share)
__all__ = ["HeadCheckpointMixin", "HEAD_CONFIG_NAME", "HEAD_WEIGHTS_NAME", "HEAD_SAFE_WEIGHTS_NAME"]


class HeadCheckpointMixin:
    """Saving and loading heads (see the module docstring).

    Example::

        >>> model.save_head("out/sentiment", "sentiment")
        >>> model.load_head("out/sentiment", load_as="sentiment2")
    """

    def save_head(self, save_directory: str, head_name: Optional[str] = None, use_safetensors: bool = True) -> None:
        """Save one head in AdapterHub's layout (``head_config.json`` + ``model_head.safetensors``),
        atomically (as :meth:`save_adapter`: weights first, the config last; a failed write leaves
        the previous files).

        Raises:
            ValueError: no head of that name.

        Example::

            >>> model.save_head("out/sentiment_head", "sentiment")
        """
        from ..loading import _model_checkpoint

        head_name = head_name or self.active_head
        if not isinstance(head_name, str) or head_name not in self.heads:
            raise AdapterConfigError(f"No head named {head_name!r}; the model has: {', '.join(sorted(self.heads)) or 'none'}.")
        with _model_checkpoint(self, save_directory) as files:
            self._stage_head(files, head_name, use_safetensors)
        logger.info(f"Saved head {head_name!r} to {save_directory}.")

    def _stage_head(self, files, head_name: str, use_safetensors: bool) -> None:
        """Stage a head's files in a ``loading._CheckpointFiles`` (weights, then ``head_config.json``)."""
        from ..loading import _meta

        meta = _meta(self, head_name)
        meta["config"] = copy.deepcopy(self.heads[head_name].config)
        state = {f"heads.{head_name}.{k}": v for k, v in self.heads[head_name].state_dict().items()}
        files.weights(state, use_safetensors, HEAD_SAFE_WEIGHTS_NAME, HEAD_WEIGHTS_NAME)
        files.json(HEAD_CONFIG_NAME, dict(sorted(meta.items())))

    def save_all_heads(self, save_directory: str, use_safetensors: bool = True) -> None:
        """Save every head into ``save_directory/<head name>``; every target is checked to lie
        inside ``save_directory`` (symbolic links resolved) before anything is written.

        Example::

            >>> model.save_all_heads("out/heads")
        """
        from ..configuration.validation import check_name
        from ..loading import _inside

        targets = {name: _inside(save_directory, check_name(name, kind="head")) for name in self.heads}
        for name, target in targets.items():
            self.save_head(target, name, use_safetensors=use_safetensors)

    def load_head(self, save_directory: str, load_as: Optional[str] = None, id2label: Optional[dict] = None,
                  use_safetensors: bool = False, overwrite_ok: bool = True, set_active: bool = True,
                  allow_non_finite: bool = False, **kwargs) -> str:
        """Load a head saved by :meth:`save_head` (or AdapterHub); returns its name.
        ``allow_non_finite=True`` also loads NaN/inf or non-float weights (refused by default).

        A head of the same name is replaced, with a warning, as AdapterHub replaces it (and as
        :meth:`load_adapter` replaces an adapter); the replacement happens only once the new head
        is built and its weights checked, so a failed load keeps the old one.
        ``overwrite_ok=False`` refuses to replace it instead.

        A static head (saved from a transformers head model such as
        ``BertForSequenceClassification``, here or by AdapterHub) becomes a flexible head named
        ``load_as``, with the same weights and labels (AdapterHub's static-to-flex conversion).
        The file format is detected: a folder with one weights file has that file read; where it
        holds both, ``use_safetensors`` picks ``model_head.safetensors`` (True) or
        ``pytorch_model_head.bin`` (False, the default, as AdapterHub reads).

        Raises:
            AdapterLoadError: the folder has no head, the head was saved for another hidden size,
                its type does not fit this model, a static head has no conversion to a flexible head
                (or no name: pass ``load_as``), a head of that name exists and
                ``overwrite_ok=False``, its saved name is invalid, or the weights do not match the
                config or are not finite floats. The model is left unchanged.
            AdapterConfigError: ``load_as`` is not a valid head name.

        Example::

            >>> name = model.load_head("out/sentiment_head", load_as="sentiment2")
        """
        if kwargs:
            raise TypeError(f"load_head() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}.")
        name, head = self._prepare_head(
            save_directory, load_as=load_as, id2label=id2label, overwrite_ok=overwrite_ok, allow_non_finite=allow_non_finite,
            prefer_safetensors=use_safetensors,
        )
        if name in self.heads:
            logger.warning(f"Replacing the existing head {name!r} with the one loaded from {save_directory}.")
        self._insert_loaded_head(name, head, set_active=set_active)
        return name

    # ``_holds_head`` (whether a folder holds a saved head) comes from ModelWithHeadsAdaptersMixin

    def _prepare_head(self, save_directory: str, load_as=None, id2label=None, overwrite_ok=False, allow_non_finite=False,
                      prefer_safetensors=True):
        """Read and check a head folder; returns ``(name, head)`` without changing the model.
        ``prefer_safetensors`` picks the weights file where the folder holds both formats."""
        from ..configuration.validation import check_name
        from ..loading import AdapterLoadError, _check_hidden_size, _copy_checked, _read_json, _read_weights, _resolve_folder

        if load_as is not None:
            check_name(load_as, kind="head", argument="load_as")
        folder = _resolve_folder(save_directory)
        config_path = os.path.join(folder, HEAD_CONFIG_NAME)
        meta = _read_json(config_path)
        _check_hidden_size(self, meta, config_path)
        meta_name, folder_name = meta.get("name"), os.path.basename(os.path.normpath(folder))
        if meta_name is not None and not isinstance(meta_name, str):
            check_name(meta_name, kind="head", argument='its "name"', file=config_path)
        saved_name = meta_name or folder_name  # the weight keys' prefix; only a name when not loaded as another
        if load_as is not None:
            name = load_as
        elif meta_name:
            name = check_name(meta_name, kind="head", argument='its "name"', file=config_path)
        else:
            name = check_name(folder_name, kind="head", argument="taken from the folder name", file=folder)
        if meta.get("config") is None and meta.get("name") is None and isinstance(meta.get("model_class"), str):
            # a transformers head model's static head (AdapterHub writes neither a config nor a name for it)
            return self._prepare_static_head_as_flexible(
                folder, meta, config_path, load_as, id2label, overwrite_ok, allow_non_finite, prefer_safetensors
            )
        if not isinstance(meta.get("config"), dict):
            raise AdapterLoadError(
                f"{config_path}: \"config\" must be a JSON object with a \"head_type\" (e.g. {{\"head_type\": "
                f"\"classification\", \"num_labels\": 2}}), not {meta.get('config')!r}."
            )
        try:
            self._check_new_head(name, overwrite_ok)
            config = dict(meta["config"])
            if id2label is not None:
                config["id2label"] = id2label
            head_type, kwargs = _head_arguments(config)
            head = self._build_head(head_type, name, **kwargs)
        except (KeyError, TypeError, ValueError) as error:
            raise AdapterLoadError(f"{config_path}: {error}") from error
        state, weights_path = _read_weights(folder, HEAD_SAFE_WEIGHTS_NAME, HEAD_WEIGHTS_NAME, allow_non_finite, prefer_safetensors)
        prefixes = (f"heads.{saved_name}.", f"{self.base_model_prefix}.heads.{saved_name}.")
        state = {k[len(p):]: v for k, v in state.items() for p in prefixes if k.startswith(p)}
        params = dict(head.named_parameters())
        tied = [k for k, m in head.named_children() if self._ties_head(head) and m is head.get_output_embeddings()]
        tied_keys = {f"{k}.weight" for k in tied}
        if tied_keys:
            # the output embedding of a tied LM head is this model's input embedding: not taken from the file
            state = {k: v for k, v in state.items() if k not in tied_keys}
            params = {k: v for k, v in params.items() if k not in tied_keys}
        _copy_checked(params, state, weights_path, shown=lambda key: f"heads.{saved_name}.{key}")
        return name, head

    def _prepare_static_head_as_flexible(self, folder, meta, config_path, load_as, id2label, overwrite_ok, allow_non_finite,
                                         prefer_safetensors=True):
        """``(name, head)`` of a static head (saved from a transformers head model: no name, no
        flexible config) converted into a flexible head named ``load_as`` — or, beside an adapter,
        the adapter's name, as AdapterHub names it."""
        from ..configuration.validation import check_name
        from ..loading import CONFIG_NAME as ADAPTER_CONFIG_NAME
        from ..loading import AdapterLoadError, _read_json, _read_weights

        name = load_as
        if name is None and os.path.isfile(os.path.join(folder, ADAPTER_CONFIG_NAME)):
            name = _read_json(os.path.join(folder, ADAPTER_CONFIG_NAME)).get("name")
        if name is None:
            raise AdapterLoadError(
                f"{config_path} holds the static head of a {meta['model_class']} (it has no name); pass load_as=\"<head name>\"."
            )
        check_name(name, kind="head", argument="load_as" if load_as is not None else "the adapter's name")
        self._check_new_head(name, overwrite_ok)
        state, _ = _read_weights(folder, HEAD_SAFE_WEIGHTS_NAME, HEAD_WEIGHTS_NAME, allow_non_finite, prefer_safetensors)
        return name, self._static_head_as_flexible(name, meta, state, config_path, id2label=id2label)

    def _insert_loaded_head(self, name: str, head: nn.Module, set_active: bool = True) -> None:
        if name in self.heads:
            self.delete_head(name)
        self.add_prediction_head(head, overwrite_ok=True, set_active=set_active)
        logger.info(f"Loaded head {name!r}.")


def _head_arguments(config: dict) -> tuple[str, dict]:
    """``(head_type, kwargs)`` for building a head from its saved config (label2id becomes id2label)."""
    config = dict(config)
    head_type = config.pop("head_type")
    label2id = config.pop("label2id", None)
    if "id2label" not in config and label2id:
        config["id2label"] = {int(index): label for label, index in label2id.items()}
    elif config.get("id2label"):
        config["id2label"] = {int(index): label for index, label in config["id2label"].items()}
    return head_type, config
