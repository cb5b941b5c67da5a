"""AdapterHub's ``adapters.wrappers``: loading a transformers model with adapter support in one call.

* :func:`load_model` — ``model_class.from_pretrained(...)`` followed by :func:`adapters.init`
  (with an :class:`~adapters.AdapterModelInterface` for a model this library has no spec for);
* :func:`init` — :func:`adapters.init` itself;
* :func:`init_adapters_config` — AdapterHub's helper that gives a model its config and adapter
  registry, here by patching the model with :func:`adapters.init`.

AdapterHub patches the model inside its ``__init__``, before ``from_pretrained`` loads the
weights; here the model is patched after loading (transformers 5 builds models on the meta
device and re-initialises missing parameters, so adapter parameters created earlier would not
survive), with the same result for the caller.
"""

from __future__ import annotations

import os
from typing import Optional, Union

from .initialize import init
from .interface import INTERFACE_CONFIG_NAME, AdapterModelInterface

__all__ = ["init", "init_adapters_config", "load_model"]


def load_model(model_name_or_path: Optional[Union[str, os.PathLike]], model_class: type,
               interface: Optional[AdapterModelInterface] = None, *model_args, **kwargs):
    """Load a pretrained model with ``model_class.from_pretrained`` and patch it for adapters
    (AdapterHub's plug-in loader).

    Args:
        model_name_or_path: what ``from_pretrained`` takes: a folder or a Hugging Face Hub id.
        model_class: a transformers model class (``AutoModelForCausalLM``, ``BertModel``, ...) or
            an AdapterModel class (``adapters.AutoAdapterModel``, ...; those patch themselves).
        interface: an :class:`~adapters.AdapterModelInterface` (or its dict form) for a model
            without a built-in architecture spec. Without it, an ``adapter_interface.json`` in the
            folder (written by ``save_pretrained`` of a model patched with an interface; AdapterHub
            writes the same file) is used, then an interface stored in the model's config, then
            the built-in spec of the model type.
        model_args, kwargs: passed on to ``from_pretrained``.

    Returns:
        The loaded model, patched (adapters saved with it by ``save_pretrained`` restored).

    Raises:
        AdapterConfigError: the model type has no spec and no interface was given, or the
            interface does not fit the model (from :func:`adapters.init`).

    Example::

        >>> from transformers import AutoModelForCausalLM
        >>> model = adapters.load_model("path/to/phi", AutoModelForCausalLM, interface=my_interface)
        >>> model.add_adapter("task", config="lora")
    """
    if interface is None and model_name_or_path is not None:
        folder = os.fspath(model_name_or_path)
        if os.path.isfile(os.path.join(folder, INTERFACE_CONFIG_NAME)):
            interface = AdapterModelInterface.load(folder)
    model = model_class.from_pretrained(model_name_or_path, *model_args, **kwargs)
    init(model, interface=interface)
    return model


def init_adapters_config(model, model_config, adapters_config=None):
    """Give ``model`` the config ``model_config`` and an adapter registry (AdapterHub's helper):
    the model is patched with :func:`adapters.init`, which builds the adapters of
    ``adapters_config`` (a :class:`~adapters.ModelAdaptersConfig` or its saved dict form) or,
    without it, of ``model_config.adapters`` as ``save_pretrained`` wrote it. Returns the model's
    registry (``model.adapters_config``). On a model that is patched already only the config is
    set, and ``adapters_config`` must be None (its adapters exist already).

    Raises:
        AdapterConfigError: ``adapters_config`` given for a model patched already.

    Example::

        >>> registry = adapters.init_adapters_config(model, model.config)
        >>> registry is model.adapters_config
        True
    """
    from .errors import AdapterConfigError

    patched = "_adapters_registry" in model.__dict__
    if patched and adapters_config is not None:
        raise AdapterConfigError(
            f"init_adapters_config: {type(model).__name__} is patched already and has its adapters; adapters_config "
            f"must be None (add adapters with add_adapter / load_adapter)."
        )
    previous_config = model.config
    model.config = model_config
    if not patched:
        try:
            if adapters_config is None:
                init(model)
            else:
                init(model, adapters_config=adapters_config)
        except Exception:
            model.config = previous_config  # init failed: the model is left as it was
            raise
    return model.adapters_config
