""":func:`init`: patch a loaded transformers model in place so that it can hold adapters."""

from __future__ import annotations

from torch import nn

from . import logging
from .configuration.model_config import ModelAdaptersConfig
from .errors import AdapterConfigError
from .forward import _checkpoint_with_context, install_stack_entries
from .interface import CONFIG_KEY, AdapterModelInterface, interface_from_config
from .model_mixin import ModelAdaptersMixin
from .static_heads import ModelWithHeadsAdaptersMixin, static_head_modules
from .hooks.patching import swap_class
from .hooks.quantized_layers import keep_gradients_through_4bit_layers
from .models import spec_for_model
from .methods.registry import families

logger = logging.get_logger(__name__)

__all__ = ["init"]


def init(model: nn.Module, adapters_config=None, interface=None) -> nn.Module:
    """Patch a loaded transformers model in place so it can hold adapters; returns it.

    Call it after the weights are loaded (``from_pretrained`` builds models on the meta device
    and re-initialises missing parameters, so adapters must be created afterwards). Calling it
    twice is a no-op.

    A model loaded from a folder that an initialised model's ``save_pretrained`` wrote (here or
    in AdapterHub) gets its adapters back: ``config.json``'s ``"adapters"`` entry lists them,
    and their weights are read from that folder's weights file (``config.name_or_path``; a Hub
    repo is read from huggingface_hub's cache). AdapterHub's ``init`` rebuilds them with fresh
    weights (transformers' ``from_pretrained`` dropped their tensors as unexpected keys); an
    adapter whose tensors the checkpoint lacks keeps fresh weights here too, with a warning. The
    saved active setup is activated (AdapterHub saves none).

    Args:
        model: a transformers model, with or without a head.
        adapters_config: a :class:`~adapters.ModelAdaptersConfig` (or its saved dict) listing
            the adapters and fusions to build instead of ``config.adapters``.
        interface: an :class:`~adapters.AdapterModelInterface` describing a model this library
            has no spec for (or its dict form, or a folder / ``adapter_interface.json`` written by
            ``save_pretrained`` / ``save_adapter``, AdapterHub's included). It takes precedence
            over the built-in spec of the model type. Without it, an interface stored in
            ``model.config`` by an earlier ``init`` (kept by ``save_pretrained``) is used.

    Raises:
        AdapterConfigError: the model type is not supported (the message lists the supported ones),
            the interface does not fit the model (the message names the path and the closest
            module names), or the saved adapters entry is invalid (the message names the entry).
            The model is left unchanged.
        AdapterLoadError: the saved adapters do not fit the checkpoint's tensors or the model
            (the message names the file); the model is initialised, without adapters.

    Example::

        >>> from transformers import AutoModelForSequenceClassification
        >>> model = AutoModelForSequenceClassification.from_pretrained("path/to/bert")
        >>> adapters.init(model)
        >>> model.add_adapter("task", config="seq_bn")
        >>> adapters.init(custom_model, interface=AdapterModelInterface(...))
        >>> adapters.init(AutoModel.from_pretrained("out/saved_with_adapters"))   # its adapters are back
    """
    from .loading import restore_adapters, saved_adapters_config

    if "_adapters_registry" in model.__dict__:
        if adapters_config is not None:
            logger.warning("adapters.init: the model is initialised already; the adapters_config passed now is ignored.")
        return _patch(model, interface)
    registry = saved_adapters_config(model, adapters_config)  # checked before anything changes
    _patch(model, interface)
    if registry is not None:
        source = getattr(model.config, "_name_or_path", None)
        restore_adapters(model, registry, source=source, where="adapters_config" if adapters_config is not None else "config.adapters")
    return model


def init_adapter_model(model: nn.Module) -> nn.Module:
    """``init`` as an AdapterModel's constructor runs it: the adapters ``config.adapters`` lists
    are built with fresh weights (as AdapterHub's constructors build them), except while
    ``from_pretrained`` constructs the model on the meta device, after which
    :func:`~adapters.loading.finish_from_pretrained` restores them with their weights.

    Example::

        >>> init_adapter_model(self)   # in an AdapterModel's __init__
    """
    from .loading import restore_adapters, saved_adapters_config

    registry = saved_adapters_config(model)
    _patch(model)
    if registry is not None and not any(p.is_meta for p in model.parameters()):
        restore_adapters(model, registry)
    return model


def _patch(model: nn.Module, interface=None) -> nn.Module:
    """The class swap and hooks of :func:`init` (without rebuilding saved adapters)."""

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
    # a transformers head model's static head, found before anything is added (AdapterModels have flexible heads)
    static_head = static_head_modules(model, spec) if "heads" not in model._modules else ()
    if not hasattr(base, "shared_parameters"):
        base.add_module("shared_parameters", nn.ModuleDict())
    hosts = [host for f in families() if f.on_init is not None for host in f.on_init(base, spec, base.shared_parameters)]
    keep_gradients_through_4bit_layers(model)  # whatever method trains on a 4-bit base
    registry = ModelAdaptersConfig()
    for target in {id(model): model, id(base): base}.values():
        swap_class(target, ModelAdaptersMixin, keep_name=True)
        target.__dict__["_adapters_registry"] = registry
        target.__dict__["_adapters_hosts"] = hosts
        target.__dict__["_adapters_spec"] = spec
        target.__dict__["_adapters_interface"] = interface
    if static_head:  # save_head / load_head / get_labels of the static head (AdapterHub's ModelWithHeadsAdaptersMixin)
        swap_class(model, ModelWithHeadsAdaptersMixin, keep_name=True)
        model._record_static_head(static_head)
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
