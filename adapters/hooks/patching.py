"""Reaching hook points by class swap, never by copying forward code.

``swap_class(module, Mixin)`` gives a module instance a subclass of its own class with ``Mixin``
in front: it stays ``isinstance``-compatible (transformers records hidden states by isinstance)
and keeps its parameter names. The mixins here only wrap ``super().forward``:

* :class:`ResidualSourceMixin` hands the residual stream ``x`` (one of its inputs) to the hook
  later in the layer, through the forward context (so threads never see each other's tensors);
* :class:`PostNormHookMixin` (post-LN): the norm receives ``h + x`` and runs the adapters on
  ``(h, x)`` with itself as the layer norm;
* :class:`SublayerHookMixin` (pre-LN): runs the adapters on the sub-block's output ``h``.

When no adapter is active at a host the wrappers cost one context lookup and a cached dict hit.

**Hub kernels.** transformers' ``use_kernels`` (``kernels.kernelize``; from transformers 5.25 on
``kernels`` is a dependency and ``from_pretrained`` runs it by default unless ``USE_HUB_KERNELS``
is off, and ``train()`` / ``eval()`` run it again) replaces the ``forward`` of layers such as
Llama's ``RMSNorm`` *per instance* where a kernel exists for the device; an instance ``forward``
hides the class's, so the mixins above would be skipped and the adapters silently not run. :func:`swap_class` therefore keeps a kernel forward it finds
inside the new class (the mixins call it through ``super().forward``) and marks the class with
``kernel_condition`` returning False, so a later ``kernelize`` leaves the module alone.
"""

from __future__ import annotations

import inspect
from types import MethodType

from torch import nn

from ..context import ForwardContext

__all__ = ["swap_class", "restore_class", "ResidualSourceMixin", "PostNormHookMixin", "SublayerHookMixin"]

_CLASS_CACHE: dict[tuple, type] = {}


def swap_class(module: nn.Module, mixin: type, keep_name: bool = False) -> None:
    """Put ``mixin`` in front of ``module``'s class (idempotent).

    ``keep_name`` keeps the class name unchanged (for models: ``save_pretrained`` writes it to
    ``config.architectures``).

    Example::

        >>> swap_class(layer.output.LayerNorm, PostNormHookMixin)
        >>> type(layer.output.LayerNorm).__name__
        'LayerNormWithAdapters'
    """
    original = module.__dict__.get("_adapters_original_class", type(module))
    mixins = module.__dict__.get("_adapters_mixins", ())
    if mixin in mixins:
        return
    mixins = (mixin,) + mixins
    instance_kernel = _instance_kernel_forward(module)
    kernel = instance_kernel if instance_kernel is not None else _class_kernel_forward(type(module))
    key = (original, mixins, keep_name, kernel)
    cls = _CLASS_CACHE.get(key)
    if cls is None:
        name = original.__name__ if keep_name else f"{original.__name__}WithAdapters"
        namespace = {"__module__": original.__module__, "__qualname__": name}
        if any(getattr(m, "shows_original_signature", False) for m in mixins):
            namespace["forward"] = _forward_with_original_signature(mixins, original, name)
        if hasattr(original, "kernel_layer_name"):  # a hub-kernel layer: kernelize must not hide our forward
            namespace["kernel_condition"] = staticmethod(_never_kernelize)
        kernel_base = () if kernel is None else (_kernel_forward_class(original, kernel),)
        cls = type(name, mixins + kernel_base + (original,), namespace)
        _CLASS_CACHE[key] = cls
    module.__dict__["_adapters_original_class"] = original
    module.__dict__["_adapters_mixins"] = mixins
    if instance_kernel is not None:
        del module.__dict__["forward"]  # it now runs inside the class, after the mixins
    module.__class__ = cls


def _never_kernelize(module) -> bool:
    return False


def _instance_kernel_forward(module: nn.Module):
    """The function of a hub kernel's forward that ``kernels.kernelize`` put on this instance (it
    records the kernel's repository in ``_kernel_repo``), or None."""
    forward = module.__dict__.get("forward")
    if forward is None or "_kernel_repo" not in module.__dict__:
        return None
    return getattr(forward, "__func__", None)


def _class_kernel_forward(cls: type):
    """The kernel forward :func:`swap_class` kept inside a swapped class, or None."""
    return next((k.__dict__["forward"] for k in cls.__mro__ if k.__dict__.get("adapters_hub_kernel")), None)


def _kernel_forward_class(original: type, kernel):
    """A base class whose ``forward`` is the hub kernel's (placed between the mixins and ``original``)."""
    name = f"{original.__name__}HubKernel"
    return type(name, (), {"__module__": original.__module__, "__qualname__": name, "forward": kernel, "adapters_hub_kernel": True})


def _forward_with_original_signature(mixins: tuple, original: type, qualname: str):
    """The mixins' ``forward`` under the signature of ``original.forward``, for a mixin with
    ``shows_original_signature``: transformers reads a model's label names, the dataset columns a
    Trainer keeps and the inputs ``generate`` passes (Whisper's ``input_features`` to its encoder)
    from the signature. Part of the class body, so a base class that wraps ``forward`` when a
    subclass is created (``GradientCheckpointingLayer``) wraps this one."""
    entry = next(k for m in mixins for k in m.__mro__ if "forward" in vars(k)).forward

    def forward(self, *args, **kwargs):
        return entry(self, *args, **kwargs)

    forward.__signature__ = inspect.signature(original.forward)
    forward.__doc__ = entry.__doc__
    forward.__qualname__ = f"{qualname}.forward"
    return forward


def restore_class(module: nn.Module) -> None:
    """Undo every :func:`swap_class` on ``module``."""
    original = module.__dict__.pop("_adapters_original_class", None)
    module.__dict__.pop("_adapters_mixins", None)
    if original is not None:
        kernel = _class_kernel_forward(type(module))
        module.__class__ = original
        if kernel is not None:  # the hub kernel goes back where kernelize put it
            module.forward = MethodType(kernel, module)


class ResidualSourceMixin:
    """Hands one of this module's inputs (the residual stream) to a hook later in the layer."""

    def forward(self, *args, **kwargs):
        for host, index, keyword in self.__dict__["_adapter_residual_slots"]:
            if host.active_setup() is not None:
                value = args[index] if len(args) > index else kwargs.get(keyword)
                ForwardContext.get_context().residuals[id(host)] = value
        return super().forward(*args, **kwargs)


class PostNormHookMixin:
    """A post-LN norm that receives ``h + x`` and runs the adapters on ``(h, x)`` instead."""

    def forward(self, hidden_states, *args, **kwargs):
        host = self.__dict__["_adapter_host"]
        setup = host.active_setup()
        if setup is None:
            return super().forward(hidden_states, *args, **kwargs)
        residual = ForwardContext.get_context().residuals.pop(id(host), None)
        if residual is None:
            return super().forward(hidden_states, *args, **kwargs)
        return host.bottleneck_layer_forward(setup, hidden_states - residual, residual, super().forward)


class SublayerHookMixin:
    """A pre-LN sub-block whose output ``h`` the layer adds to ``x``: run the adapters on ``h``."""

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        host = self.__dict__["_adapter_host"]
        setup = host.active_setup()
        if setup is None:
            return output
        residual = ForwardContext.get_context().residuals.pop(id(host), None)
        if residual is None:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = host.bottleneck_layer_forward(setup, hidden, residual, None, residual_added_by_model=True)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
