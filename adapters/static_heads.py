"""The head API on transformers' own head models (AdapterHub's ``ModelWithHeadsAdaptersMixin``).

A transformers head model (``BertForSequenceClassification``, ``LlamaForCausalLM``, ...) has one
fixed, *static* head: every module outside its base model (``classifier``, ``lm_head``,
``cls.predictions``, ...). After :func:`adapters.init` such a model also has this mixin, so it saves
and loads that head as AdapterHub does:

* ``save_head(folder)`` writes AdapterHub's static-head layout: ``head_config.json`` with
  ``"config": null`` and ``"name": null`` (a static head has neither a flexible-head config nor a
  name), the model's class in ``"model_class"``, ``"num_labels"`` and ``"label2id"`` from the
  model config, and the head's weights under their names in the model (``classifier.weight``, ...)
  in ``model_head.safetensors`` (``use_safetensors=False``: AdapterHub's ``pytorch_model_head.bin``);
* ``load_head(folder)`` reads such a folder into a model of the same class (a head saved from
  another class is refused, as AdapterHub refuses it) and sets the labels in ``model.config``;
* an AdapterModel loads the same folder as a *flexible* head (AdapterHub's static-to-flex
  conversion, ``adapters.heads``), so a head trained on a transformers head model moves to an
  AdapterModel with the same outputs;
* ``save_adapter(..., with_head=True)`` writes the head beside the adapter, and ``load_adapter``
  reads it back (a head of another model class beside the adapter is skipped with a warning, as
  AdapterHub does).

The AdapterModel classes (``adapters.heads``) have the same methods for their named flexible heads;
``isinstance(model, ModelWithHeadsAdaptersMixin)`` is true for both kinds.
"""

from __future__ import annotations

import os
from typing import Optional

from torch import nn

from . import logging
from .errors import AdapterConfigError, AdapterLoadError

logger = logging.get_logger(__name__)

__all__ = ["ModelWithHeadsAdaptersMixin", "HEAD_CONFIG_NAME", "HEAD_WEIGHTS_NAME", "HEAD_SAFE_WEIGHTS_NAME"]

#: AdapterHub's file names of a saved head
HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "pytorch_model_head.bin"
HEAD_SAFE_WEIGHTS_NAME = "model_head.safetensors"


def static_head_modules(model: nn.Module, spec=None) -> tuple[str, ...]:
    """The names of the top-level modules that make up ``model``'s static head.

    A model that holds its base model under ``base_model_prefix`` has its head in every other
    top-level module. A model that holds its base model's parts itself (T5's LM and QA models:
    ``shared``, ``encoder``, ``decoder`` beside ``lm_head``) has its head in the top-level modules
    that are neither the input embedding nor hold a transformer layer (of ``spec``, the model's
    architecture spec; default: its built-in one). Called by ``adapters.init`` before it adds
    anything, so no adapter module counts as head.

    Example::

        >>> static_head_modules(BertForSequenceClassification(config))
        ('dropout', 'classifier')
        >>> static_head_modules(T5ForConditionalGeneration(t5_config))
        ('lm_head',)
    """
    base = model.base_model
    if base is model:
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

        base_classes = MODEL_MAPPING_NAMES.get(getattr(model.config, "model_type", None)) or ()
        if type(model).__name__ in ((base_classes,) if isinstance(base_classes, str) else base_classes):
            return ()  # a base model (BertModel, T5Model, ...): no head
        from .hooks.spec import layer_stacks
        from .models import spec_for_model

        try:
            stacks = layer_stacks(model, spec if spec is not None else spec_for_model(model))
        except AdapterConfigError:
            return ()
        layers = {id(layer) for _, _, stack_layers in stacks for layer in stack_layers}
        try:
            inputs = model.get_input_embeddings()
        except (AttributeError, NotImplementedError):  # vision models (CLIP's image classifier) have none
            inputs = None
        body = {
            name for name, child in model.named_children()
            if child is inputs or any(id(module) in layers for module in child.modules())
        }
        return tuple(name for name, _ in model.named_children() if name not in body) if body else ()
    return tuple(name for name, child in model.named_children() if child is not base)


class ModelWithHeadsAdaptersMixin:
    """The head API of a model with prediction heads (AdapterHub's name): on transformers' own head
    models after :func:`adapters.init` it saves and loads their static head (see the module
    docstring); the AdapterModel classes have the same methods for their flexible heads.

    Example::

        >>> model = adapters.init(BertForSequenceClassification.from_pretrained("path"))
        >>> isinstance(model, adapters.ModelWithHeadsAdaptersMixin)
        True
        >>> model.save_head("out/head")
        >>> AutoAdapterModel.from_pretrained("path").load_head("out/head", load_as="task")
    """

    # -- the static head ---------------------------------------------------------------------------
    def _record_static_head(self, names: tuple) -> None:
        """Remember the head's modules and its state-dict keys as ``adapters.init`` found them:
        adapters added later (a LoRA on the classifier, a ``modules_to_save`` copy of it) add keys
        under those modules that are the adapter's, never the head's."""
        self.__dict__["_adapters_static_head"] = tuple(names)
        self.__dict__["_adapters_static_head_keys"] = frozenset(self._static_head_state())

    @staticmethod
    def _holds_head(folder: str) -> bool:
        """Whether ``folder`` (a local folder) holds a saved prediction head."""
        return os.path.isfile(os.path.join(folder, HEAD_CONFIG_NAME))

    def _static_head_names(self) -> tuple[str, ...]:
        return self.__dict__.get("_adapters_static_head", ())

    def _static_head_parameters(self) -> dict:
        """The head's own parameters by their names in the model; a parameter the head shares with
        the base model (an LM head's output matrix tied to the input embedding) is the base
        model's, not the head's."""
        base = {id(p) for p in self.base_model.parameters()} if self.base_model is not self else set()
        names = self._static_head_names()
        if self.base_model is self:
            body = [child for name, child in self.named_children() if name not in names]
            base = {id(p) for child in body for p in child.parameters()}
        params = {
            f"{name}.{key}": param
            for name in names
            for key, param in self.get_submodule(name).named_parameters()
            if id(param) not in base
        }
        return self._head_keys_only({**params, **self._own_head_tensors()})

    def _head_keys_only(self, tensors: dict) -> dict:
        keys = self.__dict__.get("_adapters_static_head_keys")
        return tensors if keys is None else {key: value for key, value in tensors.items() if key in keys}

    def _own_head_tensors(self) -> dict:
        """Tensors the head model holds itself, outside any module (BART's ``final_logits_bias``,
        added to the LM logits): part of the head, as AdapterHub's static head saves it. A model
        holding its base model's parts itself (T5's LM model) has none."""
        if self.base_model is self or not self._static_head_names():
            return {}
        own = {key: param for key, param in self._parameters.items() if param is not None}
        own.update(
            (key, buffer) for key, buffer in self._buffers.items()
            if buffer is not None and key not in self._non_persistent_buffers_set
        )
        return own

    def _static_head_state(self) -> dict:
        """Every tensor of the head's modules, as AdapterHub saves them (tied matrices included)."""
        state = dict(self._own_head_tensors())
        for name in self._static_head_names():
            state.update({f"{name}.{key}": value for key, value in self.get_submodule(name).state_dict().items()})
        return self._head_keys_only(state)

    def _static_head_meta(self) -> dict:
        from .loading import _meta

        meta = _meta(self, None)
        meta["config"] = None
        if getattr(self.config, "label2id", None) and getattr(self.config, "num_labels", None) is not None:
            meta["label2id"] = {str(label): int(index) for label, index in self.config.label2id.items()}
        if getattr(self.config, "num_labels", None) is not None:
            meta["num_labels"] = self.config.num_labels
        return meta

    def _stage_static_head(self, files, use_safetensors: bool) -> None:
        """Stage the static head's files in a ``loading._CheckpointFiles`` (weights, then config).
        A tensor the head holds under two names (RoBERTa's ``lm_head.bias`` is also
        ``lm_head.decoder.bias``) is saved once, under its parameter's name: safetensors refuses
        shared tensors, and loading maps the other name back."""
        owners = {(p.data_ptr(), tuple(p.shape)): key for key, p in self._static_head_parameters().items()}
        state = {
            key: value for key, value in self._static_head_state().items()
            if owners.get((value.data_ptr(), tuple(value.shape)), key) == key
        }
        files.weights(state, use_safetensors, HEAD_SAFE_WEIGHTS_NAME, HEAD_WEIGHTS_NAME)
        files.json(HEAD_CONFIG_NAME, dict(sorted(self._static_head_meta().items())))

    def _prepare_static_head(self, folder: str, id2label: Optional[dict] = None, allow_non_finite: bool = False,
                             beside_adapter: bool = False, prefer_safetensors: bool = True):
        """Read and check a static head folder; returns a function that puts it into the model (or
        None when ``beside_adapter`` and the head is of another model class: skipped with a
        warning, as AdapterHub skips it). Nothing changes before the returned function runs.
        ``prefer_safetensors`` picks the weights file where the folder holds both formats."""
        from .loading import _check_hidden_size, _check_state, _copy_state, _read_json, _read_weights

        config_path = os.path.join(folder, HEAD_CONFIG_NAME)
        meta = _read_json(config_path)
        _check_hidden_size(self, meta, config_path)
        saved_class = meta.get("model_class")
        if saved_class != type(self).__name__ or meta.get("config") is not None:
            kind = "a flexible head" if meta.get("config") is not None else "the static head"
            message = (
                f"{config_path} holds {kind} of a {saved_class} model; this {type(self).__name__} loads only the static "
                f"head of its own class. Load it into an AdapterModel (adapters.AutoAdapterModel), which converts "
                f"static heads into flexible heads."
            )
            if beside_adapter:
                logger.warning(message + " The head beside the adapter is not loaded.")
                return None
            raise AdapterLoadError(message)
        if id2label is not None:
            label2id = {str(label): int(index) for index, label in id2label.items()}
        else:
            label2id = meta.get("label2id")
            if label2id is not None and not (
                isinstance(label2id, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in label2id.values())
            ):
                raise AdapterLoadError(f"{config_path}: \"label2id\" must map label names to integer ids, not {label2id!r}.")
        state, weights_path = _read_weights(folder, HEAD_SAFE_WEIGHTS_NAME, HEAD_WEIGHTS_NAME, allow_non_finite, prefer_safetensors)
        params = self._static_head_parameters()
        tied = set(self._static_head_state()) - set(params)
        state = {key: value for key, value in state.items() if key not in tied}
        _check_state(params, state, weights_path, lambda key: False, lambda key: key)

        def apply() -> None:
            _copy_state(params, state)
            if label2id:
                self.config.label2id = dict(label2id)
                self.config.id2label = {index: label for label, index in label2id.items()}
            logger.info(f"Loaded the static head of {type(self).__name__} from {folder}.")

        return apply

    # -- AdapterHub's head API -----------------------------------------------------------------------
    def save_head(self, save_directory: str, head_name: Optional[str] = None, use_safetensors: bool = True) -> None:
        """Save the model's static head in AdapterHub's layout (see the module docstring),
        atomically as ``save_adapter``. ``head_name`` is accepted for AdapterHub's signature and
        ignored, as there: a static head has no name.

        Example::

            >>> model.save_head("out/head")
            >>> sorted(os.listdir("out/head"))
            ['head_config.json', 'model_head.safetensors']
        """
        from .loading import _CheckpointFiles

        if not self._static_head_names():
            raise AdapterConfigError(f"{type(self).__name__} has no prediction head to save (it is a base model).")
        with _CheckpointFiles(save_directory) as files:
            self._stage_static_head(files, use_safetensors)
        logger.info(f"Saved the head of {type(self).__name__} to {save_directory}.")

    def save_all_heads(self, save_directory: str, use_safetensors: bool = True) -> None:
        """Save every head: on a static head model, its one head into ``save_directory`` (as
        AdapterHub does).

        Example::

            >>> model.save_all_heads("out/heads")
        """
        self.save_head(save_directory, use_safetensors=use_safetensors)

    def load_head(self, save_directory: str, load_as: Optional[str] = None, id2label: Optional[dict] = None,
                  use_safetensors: bool = False, allow_non_finite: bool = False, **kwargs) -> Optional[str]:
        """Load a static head saved by :meth:`save_head` (here or by AdapterHub) from a model of
        this class: its weights replace the head's, its labels (or ``id2label``) go to
        ``model.config``. Returns None (a static head has no name), as AdapterHub does. The file
        format is detected: a folder with one weights file has that file read; where it holds both,
        ``use_safetensors`` picks ``model_head.safetensors`` (True) or ``pytorch_model_head.bin``
        (False, the default, as AdapterHub reads). ``load_as`` is ignored and ``set_active``
        / ``overwrite_ok`` have nothing to do on a model with one fixed head (as in AdapterHub).

        Raises:
            AdapterLoadError: the folder holds no head, a head of another model class or a
                flexible head (load those into an AdapterModel), or weights that do not fit. The
                model is left unchanged.

        Example::

            >>> model.load_head("out/head")
            >>> model.config.id2label
            {0: 'neg', 1: 'pos'}
        """
        from .loading import _resolve_folder

        unknown = set(kwargs) - {"set_active", "overwrite_ok"}
        if unknown:
            raise TypeError(f"load_head() got unexpected keyword argument(s): {', '.join(sorted(unknown))}.")
        folder = _resolve_folder(save_directory)
        self._prepare_static_head(
            folder, id2label=id2label, allow_non_finite=allow_non_finite, prefer_safetensors=use_safetensors
        )()
        return None

    def get_labels_dict(self) -> Optional[dict]:
        """``{id: label}`` of the model's head (``model.config.id2label``), as AdapterHub's.

        Example::

            >>> model.get_labels_dict()
            {0: 'neg', 1: 'pos'}
        """
        return getattr(self.config, "id2label", None)

    def get_labels(self) -> Optional[list]:
        """The labels of the model's head in id order (from ``model.config.id2label``).

        Example::

            >>> model.get_labels()
            ['neg', 'pos']
        """
        labels = self.get_labels_dict()
        return [labels[index] for index in sorted(labels)] if labels else None

    def average_head(self, head_name: str, head_list, weights: Optional[list] = None, normalize_weights: bool = True,
                     overwrite_ok: bool = False, set_active: bool = False) -> None:
        """Average named heads into a new one: defined for the flexible heads of an AdapterModel
        (``adapters.AutoAdapterModel``, or ``adapters.convert_to_adapter_model(model)``); a static
        head model has a single unnamed head, so this raises (AdapterHub fails with an
        AttributeError here).

        Raises:
            AdapterConfigError: always, naming the conversion to use.

        Example::

            >>> flex = adapters.convert_to_adapter_model(model)     # its head becomes "default"
            >>> flex.average_head("avg", ["default", "other"])
        """
        raise AdapterConfigError(
            f"average_head({head_name!r}, ...) needs named flexible heads; {type(self).__name__} has one static head. "
            f"Convert it first: adapters.convert_to_adapter_model(model) (its head becomes 'default')."
        )
