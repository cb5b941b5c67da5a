"""Architecture specs, their registry, and :func:`init`, which patches a loaded model."""

from __future__ import annotations

from torch import nn

from ..configuration.model_config import ModelAdaptersConfig
from . import bert, deberta, distilbert, gemma, gpt2, gptj, llama, modernbert, phi3  # noqa: F401  (registers the specs)
from .patching import install_architecture, swap_class
from .spec import SUPPORTED_MODEL_TYPES, ArchitectureSpec, ResidualHook, register_architecture, spec_for_model

__all__ = ["init", "ArchitectureSpec", "ResidualHook", "register_architecture", "SUPPORTED_MODEL_TYPES"]


def init(model: nn.Module) -> nn.Module:
    """Patch a loaded transformers model in place so it can hold adapters; returns it.

    Call it after the weights are loaded (``from_pretrained`` builds models on the meta device
    and re-initialises missing parameters, so adapters must be created afterwards). Calling it
    twice is a no-op.

    Raises:
        ValueError: the model type is not supported (the message lists the supported ones).

    Example::

        >>> from transformers import AutoModelForSequenceClassification
        >>> model = AutoModelForSequenceClassification.from_pretrained("path/to/bert")
        >>> adapters.init(model)
        >>> model.add_adapter("task", config="seq_bn")
    """
    from ..model_mixin import ModelAdaptersMixin, _checkpoint_with_context  # the mixin imports this package

    if "_adapters_registry" in model.__dict__:
        return model
    spec = spec_for_model(model)
    base = model.base_model
    if not hasattr(base, "shared_parameters"):
        base.add_module("shared_parameters", nn.ModuleDict())
    hosts = install_architecture(base, spec, base.shared_parameters)
    registry = ModelAdaptersConfig()
    for target in {id(model): model, id(base): base}.values():
        swap_class(target, ModelAdaptersMixin, keep_name=True)
        target.__dict__["_adapters_registry"] = registry
        target.__dict__["_adapters_hosts"] = hosts
        target.__dict__["_adapters_spec"] = spec
    # layers may already have a checkpointing function (gradient_checkpointing_enable before init)
    for module in model.modules():
        func = module.__dict__.get("_gradient_checkpointing_func")
        if func is not None:
            module._gradient_checkpointing_func = _checkpoint_with_context(func)
    return model
