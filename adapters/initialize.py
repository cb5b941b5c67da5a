""":func:`init`: patch a loaded transformers model in place so that it can hold adapters."""

from __future__ import annotations

from torch import nn

from . import logging
from .configuration.model_config import ModelAdaptersConfig
from .errors import AdapterConfigError
from .forward import _checkpoint_with_context, install_stack_entries
from .interface import CONFIG_KEY, AdapterModelInterface, interface_from_config
from .model_mixin import ModelAdaptersMixin
from .hooks.patching import swap_class
from .models import spec_for_model
from .methods.registry import families

logger = logging.get_logger(__name__)

__all__ = ["init"]


def init(model: nn.Module, interface=None) -> nn.Module:
    """Patch a loaded transformers model in place so it can hold adapters; returns it.

    Call it after the weights are loaded (``from_pretrained`` builds models on the meta device
    and re-initialises missing parameters, so adapters must be created afterwards). Calling it
    twice is a no-op.

    Args:
        model: a transformers model, with or without a head.
        interface: an :class:`~adapters.AdapterModelInterface` describing a model this library
            has no spec for (or its dict form, or a folder / ``adapter_interface.json`` written by
            ``save_pretrained`` / ``save_adapter``, AdapterHub's included). It takes precedence
            over the built-in spec of the model type. Without it, an interface stored in
            ``model.config`` by an earlier ``init`` (kept by ``save_pretrained``) is used.

    Raises:
        AdapterConfigError: the model type is not supported (the message lists the supported ones), or
            the interface does not fit the model (the message names the path and the closest
            module names). The model is left unchanged.

    Example::

        >>> from transformers import AutoModelForSequenceClassification
        >>> model = AutoModelForSequenceClassification.from_pretrained("path/to/bert")
        >>> adapters.init(model)
        >>> model.add_adapter("task", config="seq_bn")
        >>> adapters.init(custom_model, interface=AdapterModelInterface(...))
    """

    if "_adapters_registry" in model.__dict__:
        if interface is not None and AdapterModelInterface.load(interface) != model.__dict__.get("_adapters_interface"):
            logger.warning("adapters.init: the model is initialised already; the interface passed now is ignored.")
        return model
    if interface is None:
        interface = interface_from_config(getattr(model, "config", None))
    if interface is not None:
        interface = AdapterModelInterface.load(interface)
        if interface.base_model is not None and interface.base_model != getattr(model, "base_model_prefix", None):
            if "." in interface.base_model or not isinstance(getattr(model, interface.base_model, None), nn.Module):
                raise AdapterConfigError(
                    f"AdapterModelInterface.base_model={interface.base_model!r} is not a module attribute of "
                    f"{type(model).__name__}; name the attribute that holds the base model."
                )
        spec = interface.to_spec(model)  # checks every path before anything is changed
        if interface.base_model is not None:
            model.base_model_prefix = interface.base_model
    else:
        spec = spec_for_model(model)
    base = model.base_model
    if not hasattr(base, "shared_parameters"):
        base.add_module("shared_parameters", nn.ModuleDict())
    hosts = [host for f in families() if f.on_init is not None for host in f.on_init(base, spec, base.shared_parameters)]
    registry = ModelAdaptersConfig()
    for target in {id(model): model, id(base): base}.values():
        swap_class(target, ModelAdaptersMixin, keep_name=True)
        target.__dict__["_adapters_registry"] = registry
        target.__dict__["_adapters_hosts"] = hosts
        target.__dict__["_adapters_spec"] = spec
        target.__dict__["_adapters_interface"] = interface
    if interface is not None:
        setattr(model.config, CONFIG_KEY, interface.to_dict())
    if spec.is_encoder_decoder or spec.entry_modules:
        install_stack_entries(model, spec)
    # layers may already have a checkpointing function (gradient_checkpointing_enable before init)
    for module in model.modules():
        func = module.__dict__.get("_gradient_checkpointing_func")
        if func is not None:
            module._gradient_checkpointing_func = _checkpoint_with_context(func)
    return model
