"""Declarative architecture specs: where a family keeps its layers, residual blocks and
projections. One small spec per family; :func:`adapters.init` does the rest.

A bottleneck position is described by a :class:`ResidualHook`: inside each layer, some
sub-block produces ``h`` which is added to the residual stream ``x``:

* post-LN (BERT): ``y = norm(h + x)`` — the ``norm`` module is swapped for a subclass that
  receives ``h + x`` and runs the adapters on ``(h, x)`` with the norm;
* pre-LN (Llama): ``y = x + sublayer(norm(x))`` — the ``sublayer`` module is swapped for a
  subclass that runs the adapters on its output ``h``; the model then adds ``x``.

``x`` itself is taken from the input of ``residual_source`` (argument ``residual_arg``, or the
keyword ``residual_kwarg``), which is swapped for a subclass that hands it over through the
forward context.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

__all__ = ["ResidualHook", "ArchitectureSpec", "register_architecture", "spec_for_model", "SUPPORTED_MODEL_TYPES"]


@dataclasses.dataclass(frozen=True)
class ResidualHook:
    """One place per layer where bottleneck adapters run (paths are relative to the layer).

    Args:
        location: ``"mh_adapter"`` (after attention), ``"output_adapter"`` (after the FFN) or
            ``"cross_adapter"`` (after cross-attention).
        host: the module that owns the adapters (their state-dict keys start with its path).
        create_host: create ``host`` as a new child module instead of extending an existing one.
        residual_source: the module whose input is the residual stream ``x``.
        residual_arg, residual_kwarg: where ``x`` is in that module's call.
        norm: post-LN only: the norm that receives ``h + x``.
        sublayer: pre-LN only: the module whose output (or first output) is ``h``.

    Example::

        >>> ResidualHook("output_adapter", host="output_adapters", create_host=True,
        ...              residual_source="post_attention_layernorm", sublayer="mlp")
    """

    location: str
    host: str
    residual_source: str
    residual_arg: int = 0
    residual_kwarg: str = "hidden_states"
    create_host: bool = False
    norm: Optional[str] = None
    sublayer: Optional[str] = None

    def __post_init__(self):
        if (self.norm is None) == (self.sublayer is None):
            raise ValueError(f"ResidualHook {self.location}: give exactly one of norm (post-LN) or sublayer (pre-LN).")


@dataclasses.dataclass(frozen=True)
class ArchitectureSpec:
    """Where an architecture family keeps the parts adapters attach to.

    Paths are dotted module paths: ``layers`` relative to the base model, everything else
    relative to one layer.

    Args:
        name: family name shown in messages.
        model_types: ``config.model_type`` values this spec serves.
        layers: the ``nn.ModuleList`` of transformer layers.
        residual_hooks: the bottleneck positions of a layer.
        attention: the self-attention module.
        query, key, value: its q/k/v projections. Where several name the same module (GPT-2's
            fused ``c_attn``), that module's output is those parts concatenated in q, k, v order,
            in equal sizes unless ``fused_qkv_heads`` says otherwise, and LoRA adapts only the
            selected parts.
        fused_qkv_heads: for a fused q/k/v projection whose parts differ in size (grouped-query
            attention, Phi-3's ``qkv_proj``): the config attributes holding the head counts of
            the q, k and v parts (a missing or None attribute falls back to the first one); the
            parts' sizes are proportional to them.
        attention_interface: whether the attention module calls transformers' attention
            interface (``ALL_ATTENTION_FUNCTIONS``); methods that work through the attention
            wrapper (prefix tuning) are refused where it does not.
        attn_output: the attention output projection.
        ffn_in: the FFN input projection(s).
        ffn_out: the FFN output projection.
        embeddings: the input embedding module (relative to the base model).
        embedding_output: the module whose output is the embedding output the first layer reads
            (default: ``embeddings``); invertible adapters act on it.
        pre_ln: whether layers normalise before their sub-blocks.
        intermediate_lora, output_lora: the linear layers LoRA's ``intermediate_lora`` and
            ``output_lora`` place adapters on (AdapterHub's placement, so its checkpoints load).

    Example::

        >>> register_architecture(ArchitectureSpec(name="mymodel", model_types=("mymodel",), ...))
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    residual_hooks: tuple[ResidualHook, ...]
    attention: str
    query: Optional[str]
    key: Optional[str]
    value: Optional[str]
    attn_output: str
    ffn_in: tuple[str, ...]
    ffn_out: str
    embeddings: str
    pre_ln: bool
    intermediate_lora: tuple[str, ...] = ()
    output_lora: tuple[str, ...] = ()
    embedding_output: Optional[str] = None
    fused_qkv_heads: tuple[str, ...] = ()
    attention_interface: bool = True


_REGISTRY: dict[str, ArchitectureSpec] = {}


def register_architecture(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Register ``spec`` for all of its ``model_types``.

    Example::

        >>> register_architecture(MY_SPEC)
        >>> adapters.init(my_model)
    """
    for model_type in spec.model_types:
        _REGISTRY[model_type] = spec
    return spec


def SUPPORTED_MODEL_TYPES() -> list[str]:
    """The model types :func:`adapters.init` can patch."""
    return sorted(_REGISTRY)


def spec_for_model(model) -> ArchitectureSpec:
    """The spec of ``model``'s architecture, or a ValueError naming the supported ones."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in _REGISTRY:
        raise ValueError(
            f"Model type {model_type!r} ({type(model).__name__}) is not supported by adapters. "
            f"Supported model types: {', '.join(SUPPORTED_MODEL_TYPES())}."
        )
    return _REGISTRY[model_type]
