"""Linear layers whose weight is stored quantized: bitsandbytes 4-bit (NF4 / FP4, QLoRA's
``Linear4bit``) and 8-bit (LLM.int8, ``Linear8bitLt``), and torchao's tensor subclasses
(``quantize_`` / ``TorchAoConfig``: int8 / int4 weight-only and the others).

The adapters on such a layer (:class:`~adapters.methods.lora.LinearHost`) never read sizes from the
stored weight (a 4-bit weight is a packed ``(n, 1)`` byte column): the layer's own ``in_features``
and ``out_features`` say them. The forward pass runs the quantized layer as it is and adds the
adapter's effect on top (``x Q(W)ᵀ + s·x Aᵀ Bᵀ``), so nothing here runs per forward pass except
for the adapters that read the weight itself (DoRA's row norms, (IA)³ input scaling in a
composition, the rotations), which see its dequantized value :math:`Q(W)`.

**Merging** folds ``ΔW`` into such a weight by dequantizing, adding and quantizing again, into a
new weight of the same kind and settings (block size, NF4 / FP4, double quantization, storage
type; int8's row-wise scales)::

    W_q' = q(deq(W_q) + ΔW),    ΔW_q = deq(W_q') − deq(W_q)

``ΔW_q`` is not ``ΔW``: the re-quantization rounds it (an update much smaller than the weight's
quantization step can vanish altogether). Every such merge reports ``max |ΔW_q − ΔW|`` next to
``max |ΔW|`` (a logger warning, and :attr:`QuantizedMerge` records the host keeps); an unmerge
re-quantizes again, so it restores the weight only up to the same kind of error. torchao's
tensors do not record the configuration they were quantized with, so a merge into one would have
to guess it: it is refused with an :class:`~adapters.errors.AdapterMergeError` that names the
alternative (merge on the float model, then quantize).
"""

from __future__ import annotations

import abc
import sys
from typing import NamedTuple, Optional

import torch
from torch import nn

from ..errors import AdapterMergeError
from ..hooks.quantized_layers import portable_4bit_layout

__all__ = ["QuantizedWeight", "QuantizedMerge", "quantization_of"]


class QuantizedMerge(NamedTuple):
    """What one merge or unmerge into a quantized weight did: ``error`` is ``max |ΔW_q − ΔW|``
    (the change the re-quantized weight holds against the change asked for), ``delta`` is
    ``max |ΔW|``, both over the rows written; ``kind`` names the weight's format."""

    kind: str
    error: float
    delta: float

    def describe(self) -> str:
        """The report as messages give it.

        Example::

            >>> QuantizedMerge("bitsandbytes 4-bit (nf4)", 0.004, 0.02).describe()
            're-quantization error max |ΔW_q − ΔW| = 0.004, delta max |ΔW| = 0.02 (bitsandbytes 4-bit (nf4))'
        """
        return f"re-quantization error max |ΔW_q − ΔW| = {self.error:.3g}, delta max |ΔW| = {self.delta:.3g} ({self.kind})"


class QuantizedWeight(abc.ABC):
    """How adapters read, and a merge rewrites, the weight of one kind of quantized linear layer.

    ``kind`` names the format in messages; :meth:`dequantize` gives ``deq(W_q)`` as an ``(out, in)``
    floating-point tensor; :meth:`requantize` replaces the layer's weight by ``q(W)`` of the same
    kind (never writing into the old one, so :meth:`snapshot` / :meth:`restore` can put it back);
    where that is not possible, :attr:`refusal` says why (and ``requantize`` is never called).

    Example::

        >>> backend = quantization_of(model.model.layers[0].self_attn.q_proj)
        >>> backend.kind, backend.dequantize(layer).shape
        ('bitsandbytes 4-bit (nf4)', torch.Size([64, 64]))
    """

    kind: str = ""
    #: why a merge cannot re-quantize this weight (None: it can)
    refusal: Optional[str] = None

    @abc.abstractmethod
    def dequantize(self, module: nn.Module) -> torch.Tensor:
        """``deq(W_q)``, ``(out, in)``, a new floating-point tensor.

        Example::

            >>> backend.dequantize(layer).dtype
            torch.float32
        """

    def requantize(self, module: nn.Module, weight: torch.Tensor) -> None:
        """Give ``module`` the new weight ``q(weight)`` of the same kind and settings (only called
        where :attr:`refusal` is None).

        Example::

            >>> backend.requantize(layer, backend.dequantize(layer) + delta)
        """
        raise AdapterMergeError(f"{self.kind} weights are not re-quantized: {self.refusal}")

    def snapshot(self, module: nn.Module) -> dict:
        """What :meth:`restore` needs to put the current weight back after a :meth:`requantize`.

        Example::

            >>> saved = backend.snapshot(layer)
        """
        return {"weight": module._parameters["weight"]}

    def restore(self, module: nn.Module, saved: dict) -> None:
        """Put back the weight :meth:`snapshot` saw.

        Example::

            >>> backend.restore(layer, saved)
        """
        module._parameters["weight"] = saved["weight"]


def _bnb():
    """bitsandbytes, if something imported it (a bitsandbytes weight exists only then)."""
    return sys.modules.get("bitsandbytes")


class _Bnb4bit(QuantizedWeight):
    """bitsandbytes' ``Params4bit`` (``Linear4bit``: NF4 or FP4 blocks with absmax scales)."""

    def __init__(self, weight):
        self.kind = f"bitsandbytes 4-bit ({weight.quant_state.quant_type})"

    def dequantize(self, module):
        portable_4bit_layout(module)
        return _bnb().functional.dequantize_4bit(module.weight.data, module.weight.quant_state)

    def requantize(self, module, weight):
        bnb = _bnb()
        portable_4bit_layout(module)
        old = module.weight
        state = old.quant_state
        data, new_state = bnb.functional.quantize_4bit(
            weight.to(state.dtype).contiguous(), blocksize=state.blocksize, compress_statistics=old.compress_statistics,
            quant_type=state.quant_type, quant_storage=old.quant_storage,
        )
        module.weight = bnb.nn.Params4bit(
            data, requires_grad=False, quant_state=new_state, blocksize=state.blocksize,
            compress_statistics=old.compress_statistics, quant_type=state.quant_type, quant_storage=old.quant_storage,
            module=module, bnb_quantized=True,
        )
        module.quant_state = new_state

    def snapshot(self, module):
        return {"weight": module._parameters["weight"], "quant_state": getattr(module, "quant_state", None)}

    def restore(self, module, saved):
        module._parameters["weight"] = saved["weight"]
        module.quant_state = saved["quant_state"]


class _Bnb8bit(QuantizedWeight):
    """bitsandbytes' ``Int8Params`` (``Linear8bitLt`` without fp16 weights: int8 rows with one
    absmax scale each, ``SCB``)."""

    kind = "bitsandbytes int8 (LLM.int8)"
    _STATE = ("CB", "SCB", "SB", "SBt", "CBt")

    @staticmethod
    def _scales(module):
        # the first forward pass moves CB / SCB from the weight to the layer's matmul state
        scales = getattr(module.weight, "SCB", None)
        return module.state.SCB if scales is None else scales

    def dequantize(self, module):
        return _bnb().functional.int8_vectorwise_dequant(module.weight.data, self._scales(module))

    def requantize(self, module, weight):
        bnb = _bnb()
        data, scales, _ = bnb.functional.int8_vectorwise_quant(weight.to(torch.float16).contiguous())
        module.weight = bnb.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False, CB=data, SCB=scales)
        # the next forward pass takes CB / SCB from the new weight (Linear8bitLt.init_8bit_state)
        module.state.reset_grads()

    def snapshot(self, module):
        weight = module._parameters["weight"]
        return {
            "weight": weight, "CB": weight.CB, "SCB": weight.SCB,
            "state": {key: getattr(module.state, key, None) for key in self._STATE},
        }

    def restore(self, module, saved):
        weight = saved["weight"]
        module._parameters["weight"] = weight
        weight.CB, weight.SCB = saved["CB"], saved["SCB"]
        for key, value in saved["state"].items():
            setattr(module.state, key, value)


class _TorchAo(QuantizedWeight):
    """A torchao tensor subclass (``quantize_`` / ``TorchAoConfig``): dequantized for reading;
    never re-quantized (see :attr:`refusal`)."""

    def __init__(self, weight):
        self.kind = f"torchao {type(weight).__name__}"
        self.refusal = (
            f"its weight is a torchao {type(weight).__name__}, which does not record the quantization config it was "
            "made with, so the merged weight could only be re-quantized by guessing it; keep the adapter unmerged, or "
            "merge on the float model (load it without TorchAoConfig / before quantize_) and quantize the merged model"
        )

    def dequantize(self, module):
        try:
            return module.weight.dequantize()
        except NotImplementedError as error:
            raise AdapterMergeError(
                f"torchao's {type(module.weight).__name__} cannot be dequantized ({error}); merge on the float model instead"
            ) from None


def quantization_of(module: nn.Module) -> Optional[QuantizedWeight]:
    """The :class:`QuantizedWeight` of ``module``'s weight, or None for a plain weight (also one
    of a format this library does not know: callers check ``is_floating_point()`` for that).

    Example::

        >>> quantization_of(model.model.layers[0].self_attn.q_proj).kind
        'bitsandbytes 4-bit (nf4)'
        >>> quantization_of(nn.Linear(4, 4)) is None
        True
    """
    weight = module._parameters.get("weight")
    if weight is None or type(weight) in (nn.Parameter, torch.Tensor):
        return None
    bnb = _bnb()
    if bnb is not None:
        if isinstance(weight, bnb.nn.Params4bit) and getattr(weight, "quant_state", None) is not None:
            return _Bnb4bit(weight)
        if isinstance(weight, bnb.nn.Int8Params) and weight.dtype == torch.int8:
            return _Bnb8bit()
    torchao = sys.modules.get("torchao.utils")
    if torchao is not None and isinstance(weight, getattr(torchao, "TorchAOBaseTensor", ())):
        return _TorchAo(weight)
    return None
