"""Reaching hook points by class swap, never by copying forward code.

``swap_class(module, Mixin)`` gives a module instance a subclass of its own class with ``Mixin``
in front: it stays ``isinstance``-compatible (transformers records hidden states by isinstance)
and keeps its parameter names. The mixins here only wrap ``super().forward``. A bottleneck
position (a :class:`~adapters.hooks.spec.ResidualHook`) is a sub-block output ``h`` that the
layer adds to its residual stream ``x``:

* :class:`ResidualSourceMixin` (the module whose input is ``x``) looks up the host's part of the
  pass's setup, once, and leaves it with ``x`` for the hook later in the block, in the forward
  context's ``hook_values`` (so threads never see each other's tensors);
* post-LN (``y = norm(h + x)``), where the spec names the module whose output is ``h``
  (``sublayer_output``, e.g. BERT's ``output.dropout``): :class:`SublayerOutputHookMixin` runs
  the adapters on that exact ``h`` and returns ``s`` such that the model's own ``norm(s + x)``
  is the adapter block's output; where the last adapter's result is not of that form
  (``original_ln_after=False``: the block output is the adapter output itself), it leaves the
  block output for the norm, whose :class:`NormOutputSlotMixin` returns it instead of its own;
* post-LN where the spec names no such module (``h`` is dropped out by a functional call, as in
  BART): :class:`PostNormHookMixin` on the norm receives ``h + x`` and runs the adapters on
  ``((h + x) − x, x)`` with itself as the layer norm;
* pre-LN (``y = x + sublayer(norm(x))``): :class:`SublayerHookMixin` runs the adapters on the
  sub-block's output ``h``; the model then adds ``x``.

When no adapter is active at a host each wrapper costs one context lookup and a dict lookup.

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
from typing import Any, NamedTuple

import torch
from torch import nn

from ..context import ForwardContext

__all__ = [
    "swap_class",
    "restore_class",
    "ResidualHandOff",
    "ResidualSourceMixin",
    "SublayerOutputHookMixin",
    "NormOutputSlotMixin",
    "PostNormHookMixin",
    "SublayerHookMixin",
]

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


class ResidualHandOff(NamedTuple):
    """What a residual source leaves for the hook later in its block (under the host's id in
    ``ForwardContext.hook_values``): the host's part of the pass's setup, looked up once there,
    and the residual stream ``x``.

    Example::

        >>> ForwardContext.get_context().hook_values[id(host)]     # inside the block, before the hook
        ResidualHandOff(setup=Stack[a, b], residual=tensor(...))
    """

    setup: Any
    residual: Any


class ResidualSourceMixin:
    """Hands one of this module's inputs (the residual stream ``x``) to a hook later in the layer,
    with the host's setup for this pass (None: nothing is handed over, the hook does nothing). A
    slot without an input index stands for a position without a residual stream: ``x = 0``, shaped
    as the module's first input."""

    def forward(self, *args, **kwargs):
        context = ForwardContext.get_context()
        if context is not None:
            for host, index, keyword in self.__dict__["_adapter_residual_slots"]:
                setup = host.active_setup(context)
                if setup is not None:
                    if index is None:
                        residual = torch.zeros_like(args[0] if args else next(iter(kwargs.values())))
                    else:
                        residual = args[index] if len(args) > index else kwargs.get(keyword)
                    context.hook_values[id(host)] = ResidualHandOff(setup, residual)
        return super().forward(*args, **kwargs)


def _take_hand_off(host) -> "tuple[ForwardContext | None, ResidualHandOff | None]":
    """The forward context and what the residual source left for ``host`` in it (taken out)."""
    context = ForwardContext.get_context()
    if context is None:
        return None, None
    return context, context.hook_values.pop(id(host), None)


class SublayerOutputHookMixin:
    """Post-LN, on the module whose output (or first output) is the sub-block's ``h``, the last
    step before the model computes ``norm(h + x)``: runs the adapters on ``h`` itself.

    Returns ``s`` such that the model's own ``norm(s + x)`` is the adapter block's output
    (``s = a``, the adapter output, for ``original_ln_after=True``; ``h`` where no adapter ran). Where
    the block output is not of that form it is left for the norm (:class:`NormOutputSlotMixin`),
    and ``h`` goes on unchanged into a sum the norm then ignores."""

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        host = self.__dict__["_adapter_host"]
        context, hand_off = _take_hand_off(host)
        if hand_off is None:
            return output
        norm = self.__dict__["_adapter_norm"]
        hidden = output[0] if isinstance(output, tuple) else output
        pre_norm, block_output = host.bottleneck_layer_forward(
            hand_off.setup, hidden, hand_off.residual, norm.norm_forward, norm_follows=True
        )
        if block_output is not None:
            context.hook_values[id(norm)] = block_output
            return output
        return (pre_norm,) + tuple(output[1:]) if isinstance(output, tuple) else pre_norm


class NormOutputSlotMixin:
    """A post-LN norm after a :class:`SublayerOutputHookMixin`: returns the block output that hook
    left for it, if any, instead of normalising its input."""

    def forward(self, *args, **kwargs):
        context = ForwardContext.get_context()
        if context is not None:
            block_output = context.hook_values.pop(id(self), None)
            if block_output is not None:
                return block_output
        return super().forward(*args, **kwargs)

    def norm_forward(self, hidden_states):
        """The norm itself (the adapters' own ``LN`` steps), never the replacement.

        Example::

            >>> layer.output.LayerNorm.norm_forward(h + x)    # what BertOutput's LayerNorm computes
        """
        # through __call__, so that hooks on the norm run (DeepSpeed ZeRO-3 gathers its weights there); no
        # block output waits for this norm yet (the caller leaves it afterwards), so forward normalises
        return self(hidden_states)


class PostNormHookMixin:
    """A post-LN norm that receives ``h + x`` and runs the adapters on ``(h, x)`` instead, ``h``
    recovered as ``(h + x) − x`` (for specs that name no module whose output is ``h``)."""

    def forward(self, hidden_states, *args, **kwargs):
        host = self.__dict__["_adapter_host"]
        _, hand_off = _take_hand_off(host)
        if hand_off is None:
            return super().forward(hidden_states, *args, **kwargs)
        residual = hand_off.residual
        return host.bottleneck_layer_forward(hand_off.setup, hidden_states - residual, residual, super().forward)


def _hand_stream_on(sublayer, added) -> None:
    """A later position reads the stream after this sub-block (``ResidualHook.residual_from``):
    its residual ``x``, waiting in the context, becomes ``x`` plus what this sub-block adds (its
    output, adapted where adapters ran; repeated along the batch where a Parallel block widened it)."""
    successors = sublayer.__dict__.get("_adapter_stream_successors")
    context = ForwardContext.get_context() if successors else None
    if context is None:
        return
    for successor in successors:
        hand_off = context.hook_values.get(id(successor))
        if hand_off is not None:
            residual = hand_off.residual
            if residual.shape[0] != added.shape[0]:
                residual = residual.repeat(added.shape[0] // residual.shape[0], *([1] * (residual.dim() - 1)))
            context.hook_values[id(successor)] = hand_off._replace(residual=residual + added)


class SublayerHookMixin:
    """A pre-LN sub-block whose output ``h`` the layer adds to ``x``: run the adapters on ``h``.

    One module may end several sub-blocks of a layer (BEiT's ``drop_path``, called once after
    attention and once after the FFN): it then serves several hosts, and each call runs the host
    whose residual source ran last (the one hand-off waiting)."""

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        for host in self.__dict__["_adapter_sublayer_hosts"]:
            _, hand_off = _take_hand_off(host)
            if hand_off is not None:
                break
        else:
            _hand_stream_on(self, output[0] if isinstance(output, tuple) else output)
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = host.bottleneck_layer_forward(hand_off.setup, hidden, hand_off.residual, None, residual_added_by_model=True)
        _hand_stream_on(self, hidden)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
