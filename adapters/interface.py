"""Adapters for a model this library has no spec for: the plugin interface.

A transformer layer has the same parts in every architecture; only their names differ. An
:class:`AdapterModelInterface` (AdapterHub's name and fields) names them for one model, and
:func:`adapters.init(model, interface=...) <adapters.init>` turns it into the same declarative
:class:`~adapters.hooks.spec.ArchitectureSpec` the built-in architectures use. Every method then
works as on a built-in model — bottleneck adapters and Compacter, LoRA and (IA)³, the weight
transforms (LoHa, LoKr, OFT, HRA, AdaLoRA), prefix tuning, prompt tuning, invertible adapters —
and so does every composition block, ``Parallel`` included.

Names follow AdapterHub: the part before the first ``_`` says what a path is relative to
(``model_*``: the base model; ``layer_*``: one entry of ``model_layers``; ``attn_*``: the attention
module ``layer_self_attn``). How each part is used:

* **LoRA family**: ``attn_q_proj`` / ``attn_k_proj`` / ``attn_v_proj`` (or one fused
  ``attn_qkv_proj`` computing ``[q | k | v]``) and ``attn_o_proj`` for ``attn_matrices``;
  ``layer_intermediate_proj`` for ``intermediate_lora``, ``layer_output_proj`` for
  ``output_lora``.
* **Bottleneck adapters** run where a sub-block's result ``h`` meets the residual stream ``x``;
  ``x`` is the input of ``layer_pre_self_attn`` (attention) and ``layer_pre_ffn`` (FFN).

  - pre-LN layers ``y = x + h``: the adapters run on ``h``, the output of ``layer_self_attn`` /
    ``layer_output_proj``; where the layer normalises ``h`` before adding it (Gemma's "sandwich"
    norms ``layer_ln_1`` / ``layer_ln_2``, ``y = x + N(h)``) they still run on ``h``, before ``N``,
    as AdapterHub's interface runs them: their ``original_ln_before`` step reads ``N(h + x)`` and
    the model applies ``x + N(·)`` to what they return
    (:attr:`~adapters.hooks.spec.ResidualHook.sublayer_norm`);
  - post-LN layers ``y = LN(h + x)``: ``layer_ln_1`` / ``layer_ln_2`` are those norms; the
    adapters run on ``(h, x)`` with the norm.

  Whether the layer is pre-LN is read from ``layer_pre_self_attn``: a normalisation module there
  means the layer normalises before attention (``pre_ln`` overrides). Adapters live in new
  ``attention_adapters`` / ``output_adapters`` children of each layer, as AdapterHub's plugin
  path puts them.
* **Prefix tuning** prepends keys and values through transformers' attention interface, so the
  attention module must call ``ALL_ATTENTION_FUNCTIONS.get_interface(...)`` as every transformers
  5 model does (checked in the module's source; ``attention_interface`` overrides).
* **Prompt tuning** joins the prompt to ``model_embeddings``'s output (or, where that is the
  model's input embedding matrix, to ``inputs_embeds``); **invertible adapters** act on the output
  of ``model_embedding_output`` (default ``model_embeddings``).

``adapter_methods`` lists the method families the model accepts (AdapterHub's
:class:`AdapterMethod` names); adding an adapter of another family is refused.

The interface travels with the model: ``adapters.init`` stores it in ``model.config`` (key
``adapter_interface``, so ``save_pretrained`` / ``from_pretrained`` keep it and ``adapters.init``
on the reloaded model finds it), and ``save_pretrained`` and ``save_adapter`` also write
AdapterHub's ``adapter_interface.json`` (``{"interface": ..., "model_type": ..., "version": ...}``),
which ``adapters.init(model, interface=folder)`` reads.

Example::

    >>> interface = AdapterModelInterface(
    ...     adapter_methods=["bottleneck", "lora", "prefix_tuning", "prompt_tuning"],
    ...     model_embeddings="embed_tokens", model_layers="layers",
    ...     layer_self_attn="self_attn", layer_cross_attn=None,
    ...     attn_q_proj="q_proj", attn_k_proj="k_proj", attn_v_proj="v_proj", attn_o_proj="o_proj",
    ...     layer_intermediate_proj="mlp.up_proj", layer_output_proj="mlp.down_proj",
    ...     layer_pre_self_attn="input_layernorm", layer_pre_ffn="post_attention_layernorm",
    ... )
    >>> adapters.init(model, interface=interface)
    >>> model.add_adapter("task", config="seq_bn")
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Mapping
from typing import Optional, Union

from torch import nn
from transformers.pytorch_utils import Conv1D

from . import logging
from .errors import AdapterConfigError, AdapterLoadError
from .hooks.spec import ArchitectureSpec, ResidualHook, StackSpec
from .methods.registry import AdapterMethod

logger = logging.get_logger(__name__)

__all__ = ["AdapterMethod", "AdapterModelInterface", "INTERFACE_CONFIG_NAME", "CONFIG_KEY"]

#: AdapterHub's file name for a saved interface
INTERFACE_CONFIG_NAME = "adapter_interface.json"
#: the key under which ``adapters.init`` stores the interface in ``model.config``
CONFIG_KEY = "adapter_interface"


@dataclasses.dataclass(frozen=True)
class AdapterModelInterface:
    """Names the parts of a model's layers so adapters can attach to them (see the module docs).

    The fields and their order are AdapterHub's (its JSON files load), followed by three that
    this library adds for what AdapterHub's plugin path did not support.

    Args:
        adapter_methods: the method families to allow (:class:`AdapterMethod`).
        model_embeddings: the input embedding module, relative to the base model (None: no
            prompt tuning or invertible adapters).
        model_layers: the ``nn.ModuleList`` of transformer layers, relative to the base model.
        layer_self_attn: the self-attention module, relative to a layer.
        layer_cross_attn: the cross-attention module (must be None: adapters at cross-attention
            are not placed through an interface).
        attn_o_proj: the attention output projection, relative to ``layer_self_attn``.
        layer_intermediate_proj: the FFN input projection, relative to a layer.
        layer_output_proj: the FFN output projection, relative to a layer.
        attn_k_proj, attn_q_proj, attn_v_proj: the key/query/value projections, relative to
            ``layer_self_attn``; give all three or ``attn_qkv_proj``.
        attn_qkv_proj: one projection computing ``[q | k | v]``.
        layer_pre_self_attn: the module whose input is the residual stream before attention
            (pre-LN: the attention's input norm; post-LN: the attention block).
        layer_pre_cross_attn: as above for cross-attention (must be None).
        layer_pre_ffn: the module whose input is the residual stream before the FFN.
        layer_ln_1, layer_ln_2: the norms after attention / after the FFN: post-LN, the norm of
            ``h + x``; pre-LN, a norm of ``h`` alone before it is added (Gemma's sandwich norms).
        base_model: the attribute of the model holding the base model (default: the model's
            ``base_model_prefix``).
        pre_ln: whether layers normalise before their sub-blocks (None: read from
            ``layer_pre_self_attn``).
        attn_qkv_heads: for an ``attn_qkv_proj`` whose parts differ in size (grouped-query
            attention): the config attributes holding the head counts of q, k and v.
        attention_interface: whether the attention module calls transformers' attention
            interface (None: read from its source); prefix tuning needs it.
        model_embedding_output: the module whose output the first layer reads, if not
            ``model_embeddings``'s (invertible adapters act there).

    Example::

        >>> AdapterModelInterface(
        ...     adapter_methods=["lora"], model_embeddings="wte", model_layers="h",
        ...     layer_self_attn="attn", layer_cross_attn=None, attn_qkv_proj="c_attn", attn_o_proj="c_proj",
        ...     layer_intermediate_proj="mlp.c_fc", layer_output_proj="mlp.c_proj",
        ... )
    """

    adapter_methods: tuple[str, ...]
    model_embeddings: Optional[str]
    model_layers: str
    layer_self_attn: str
    layer_cross_attn: Optional[str]
    attn_o_proj: Optional[str]
    layer_intermediate_proj: Optional[str]
    layer_output_proj: Optional[str]
    attn_k_proj: Optional[str] = None
    attn_q_proj: Optional[str] = None
    attn_v_proj: Optional[str] = None
    attn_qkv_proj: Optional[str] = None
    layer_pre_self_attn: Optional[str] = None
    layer_pre_cross_attn: Optional[str] = None
    layer_pre_ffn: Optional[str] = None
    layer_ln_1: Optional[str] = None
    layer_ln_2: Optional[str] = None
    base_model: Optional[str] = None
    # this library's additions
    pre_ln: Optional[bool] = None
    attn_qkv_heads: Optional[tuple[str, str, str]] = None
    attention_interface: Optional[bool] = None
    model_embedding_output: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.adapter_methods, str) or not all(isinstance(m, str) for m in self.adapter_methods or ()):
            raise AdapterConfigError(
                f"adapter_methods must be a list of method names, got {self.adapter_methods!r}; "
                f"e.g. adapter_methods=['bottleneck', 'lora']."
            )
        object.__setattr__(self, "adapter_methods", tuple(self.adapter_methods))
        unknown = [m for m in self.adapter_methods if m not in AdapterMethod.ALL]
        if unknown:
            raise AdapterConfigError(f"Unknown adapter_methods {unknown}; choose from {', '.join(AdapterMethod.ALL)}.")
        if not self.adapter_methods:
            raise AdapterConfigError(f"adapter_methods is empty; name at least one of {', '.join(AdapterMethod.ALL)}.")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("adapter_methods", "pre_ln", "attention_interface", "attn_qkv_heads"):
                continue
            if value is not None and (not isinstance(value, str) or not value or value.startswith(".") or value.endswith(".")):
                raise AdapterConfigError(f"{field.name} must be a dotted module path like 'mlp.up_proj' or None, got {value!r}.")
        for required in ("model_layers", "layer_self_attn"):
            if getattr(self, required) is None:
                raise AdapterConfigError(f"{required} is required (got None): name the model's {required.split('_', 1)[1].replace('_', ' ')}.")
        separate = [self.attn_q_proj, self.attn_k_proj, self.attn_v_proj]
        if self.attn_qkv_proj is not None and any(p is not None for p in separate):
            raise AdapterConfigError(
                "Give either attn_q_proj, attn_k_proj and attn_v_proj (separate projections) or attn_qkv_proj "
                "(one fused projection), not both."
            )
        if self.attn_qkv_proj is None and any(p is None for p in separate) and any(p is not None for p in separate):
            missing = [n for n, p in zip(("attn_q_proj", "attn_k_proj", "attn_v_proj"), separate) if p is None]
            raise AdapterConfigError(f"{', '.join(missing)} missing: give all of attn_q_proj, attn_k_proj, attn_v_proj, or attn_qkv_proj.")
        if self.attn_qkv_heads is not None:
            heads = tuple(self.attn_qkv_heads)
            if len(heads) != 3 or not all(isinstance(h, str) for h in heads):
                raise AdapterConfigError(f"attn_qkv_heads must name three config attributes (q, k, v), got {self.attn_qkv_heads!r}.")
            if self.attn_qkv_proj is None:
                raise AdapterConfigError("attn_qkv_heads describes a fused attn_qkv_proj; set attn_qkv_proj or drop attn_qkv_heads.")
            object.__setattr__(self, "attn_qkv_heads", heads)
        for flag in ("pre_ln", "attention_interface"):
            if getattr(self, flag) not in (None, True, False):
                raise AdapterConfigError(f"{flag} must be True, False or None (inferred), got {getattr(self, flag)!r}.")
        if self.layer_cross_attn is not None or self.layer_pre_cross_attn is not None:
            raise AdapterConfigError(
                f"Adapters at cross-attention are not placed through an AdapterModelInterface: set layer_cross_attn "
                f"(got {self.layer_cross_attn!r}) and layer_pre_cross_attn (got {self.layer_pre_cross_attn!r}) to None "
                f"(self-attention, FFN and embeddings are covered)."
            )
        if AdapterMethod.lora in self.adapter_methods and not any(
            (self.attn_q_proj, self.attn_qkv_proj, self.attn_o_proj, self.layer_intermediate_proj, self.layer_output_proj)
        ):
            raise AdapterConfigError(
                "adapter_methods includes 'lora' but the interface names no projection for it to adapt: set one of "
                "attn_q_proj, attn_qkv_proj, attn_o_proj, layer_intermediate_proj, layer_output_proj, or drop 'lora'."
            )
        if self.embedding_methods and self.model_embeddings is None:
            raise AdapterConfigError(f"adapter_methods {list(self.embedding_methods)} need model_embeddings: name the embedding module.")

    @property
    def embedding_methods(self) -> tuple[str, ...]:
        """The enabled families that act on the embeddings (they need ``model_embeddings``).

        Example::

            >>> tiny_interface.embedding_methods
            ('prompt_tuning', 'invertible')
        """
        return tuple(m for m in self.adapter_methods if m in (AdapterMethod.prompt_tuning, AdapterMethod.invertible))

    # -- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The interface as JSON-ready dict (AdapterHub's keys, then this library's).

        Example::

            >>> AdapterModelInterface.from_dict(interface.to_dict()) == interface
            True
        """
        result = dataclasses.asdict(self)
        result["adapter_methods"] = list(self.adapter_methods)
        if self.attn_qkv_heads is not None:
            result["attn_qkv_heads"] = list(self.attn_qkv_heads)
        return result

    @classmethod
    def from_dict(cls, data: dict) -> "AdapterModelInterface":
        """Build an interface from :meth:`to_dict`'s form (AdapterHub's ``adapter_types`` is read
        as ``adapter_methods``).

        Raises:
            AdapterConfigError: unknown keys (with the closest field names) or invalid values.

        Example::

            >>> AdapterModelInterface.from_dict({"adapter_methods": ["lora"], "model_embeddings": "wte", ...})
        """
        from .hooks.targeting import closest_names

        if not isinstance(data, Mapping):
            raise AdapterConfigError(
                f"An AdapterModelInterface is built from a dict of its fields (e.g. {{'adapter_methods': ['lora'], "
                f"'model_layers': 'layers', ...}}), not {type(data).__name__} {data!r:.80}."
            )
        data = dict(data)
        if "adapter_types" in data and "adapter_methods" not in data:  # AdapterHub before 1.2
            data["adapter_methods"] = data.pop("adapter_types")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise AdapterConfigError(
                f"Unknown AdapterModelInterface field(s) {unknown}; closest: "
                f"{', '.join(n for k in unknown for n in closest_names(k, names)[:3])}."
            )
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in data]
        if required:
            raise AdapterConfigError(f"AdapterModelInterface lacks required field(s) {required}.")
        return cls(**data)

    def save(self, save_directory: str, model_config=None) -> None:
        """Write ``adapter_interface.json`` (AdapterHub's layout) into ``save_directory``.

        Example::

            >>> interface.save("out/model", model.config)
        """
        from .version import __version__

        os.makedirs(save_directory, exist_ok=True)
        data = {
            "interface": self.to_dict(),
            "model_type": getattr(model_config, "model_type", None),
            "version": f"adapters.{__version__}",
        }
        with open(os.path.join(save_directory, INTERFACE_CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, source: Union[str, os.PathLike, dict, "AdapterModelInterface"]) -> "AdapterModelInterface":
        """An interface from a dict, an ``adapter_interface.json`` file or a folder holding one (a
        saved model or adapter; AdapterHub's files included).

        Raises:
            AdapterLoadError: the file is missing, not JSON, or not a valid interface (naming the file).
            AdapterConfigError: ``source`` is a dict that is not a valid interface.

        Example::

            >>> AdapterModelInterface.load("out/model")
        """
        if isinstance(source, cls):
            return source
        if isinstance(source, dict):
            return cls.from_dict(source.get("interface", source) if "model_layers" not in source else source)
        path = os.fspath(source)
        if os.path.isdir(path):
            path = os.path.join(path, INTERFACE_CONFIG_NAME)
        if not os.path.isfile(path):
            raise AdapterLoadError(f"{path} does not exist: no saved AdapterModelInterface there ({INTERFACE_CONFIG_NAME}).")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise AdapterLoadError(f"{path} is not valid JSON ({error}).") from error
        if not isinstance(data, dict):
            raise AdapterLoadError(
                f"{path} does not hold an AdapterModelInterface: expected a JSON object (with its fields under "
                f"\"interface\"), not {type(data).__name__}."
            )
        try:
            return cls.from_dict(data.get("interface", data))
        except AdapterConfigError as error:
            raise AdapterLoadError(f"{path}: {error}") from error

    # -- translation ------------------------------------------------------------------------------
    def to_spec(self, model: nn.Module) -> ArchitectureSpec:
        """The :class:`~adapters.hooks.spec.ArchitectureSpec` this interface describes for
        ``model`` (a model with or without a head), after checking every path in every layer.

        Raises:
            AdapterConfigError: a path does not exist (the message names the closest module names), a
                projection is not a linear layer, or a needed part is missing. The model is not
                changed.

        Example::

            >>> spec = interface.to_spec(model)
            >>> spec.stacks[0].query
            'self_attn.q_proj'
        """
        base = self.resolve_base_model(model)
        _check_path(base, self.model_layers, "model_layers", "the base model")
        layers = base.get_submodule(self.model_layers)
        if not isinstance(layers, (nn.ModuleList, nn.Sequential)) or len(layers) == 0:
            raise AdapterConfigError(
                f"AdapterModelInterface.model_layers={self.model_layers!r} is a {type(layers).__name__}, not a non-empty "
                f"nn.ModuleList of transformer layers."
            )
        for name in ("model_embeddings", "model_embedding_output"):
            if getattr(self, name) is not None:
                _check_path(base, getattr(self, name), name, "the base model")

        attn = self.layer_self_attn
        in_attn = lambda p: p and f"{attn}.{p}"  # noqa: E731
        qkv = (in_attn(self.attn_q_proj), in_attn(self.attn_k_proj), in_attn(self.attn_v_proj))
        if self.attn_qkv_proj is not None:
            qkv = (in_attn(self.attn_qkv_proj),) * 3
        self._check_layer_paths(layers, qkv)

        first = layers[0]
        pre_ln = self._pre_ln(first)
        hooks = self._residual_hooks(first, pre_ln) if AdapterMethod.bottleneck in self.adapter_methods else ()
        # the module that calls the attention function is where prefixes enter: layer_self_attn
        # itself, or (BERT's ``attention`` around ``attention.self``) the first module inside it
        caller = _attention_caller(first.get_submodule(attn))
        attention_path = attn if not caller else f"{attn}.{caller}"
        attention_interface = self.attention_interface
        if attention_interface is None:
            attention_interface = caller is not None
        if AdapterMethod.prefix_tuning in self.adapter_methods and not attention_interface:
            raise AdapterConfigError(
                f"adapter_methods includes 'prefix_tuning', but {type(first.get_submodule(attn)).__name__}.forward does not "
                f"call transformers' attention interface (ALL_ATTENTION_FUNCTIONS.get_interface), through which "
                f"prefixes enter attention. Make the attention call it (as transformers' models do), drop "
                f"'prefix_tuning', or set attention_interface=True if it does so indirectly."
            )
        model_type = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
        intermediate = (self.layer_intermediate_proj,) if self.layer_intermediate_proj else ()
        layer_stack = StackSpec(
            layers=self.model_layers,
            residual_hooks=hooks,
            attention=attention_path,
            query=qkv[0],
            key=qkv[1],
            value=qkv[2],
            attn_output=in_attn(self.attn_o_proj),
            ffn_in=intermediate,
            ffn_out=self.layer_output_proj,
            intermediate_lora=intermediate,
            output_lora=(self.layer_output_proj,) if self.layer_output_proj else (),
        )
        return ArchitectureSpec(
            name=f"{model_type} (AdapterModelInterface)",
            model_types=(model_type,),
            stacks=(layer_stack,),
            embeddings=self.model_embeddings,
            embedding_output=self.model_embedding_output,
            pre_ln=pre_ln,
            fused_qkv_heads=self.attn_qkv_heads or (),
            attention_interface=attention_interface,
        )

    def _check_layer_paths(self, layers: nn.ModuleList, qkv: tuple) -> None:
        """Check that every path of the interface exists in every layer (and, where LoRA is among the
        methods, that each projection is a linear layer); ``qkv`` are the q/k/v paths in a layer."""
        attn = self.layer_self_attn
        in_attn = lambda p: p and f"{attn}.{p}"  # noqa: E731
        projections = {
            "attn_q_proj": qkv[0], "attn_k_proj": qkv[1], "attn_v_proj": qkv[2], "attn_qkv_proj": qkv[0],
            "attn_o_proj": in_attn(self.attn_o_proj),
            "layer_intermediate_proj": self.layer_intermediate_proj, "layer_output_proj": self.layer_output_proj,
        }
        if self.attn_qkv_proj is None:
            projections.pop("attn_qkv_proj")
        else:
            for name in ("attn_q_proj", "attn_k_proj", "attn_v_proj"):
                projections.pop(name)
        others = {name: getattr(self, name) for name in ("layer_pre_self_attn", "layer_pre_ffn", "layer_ln_1", "layer_ln_2")}
        for index, layer in enumerate(layers):
            where = f"layer {index} ({self.model_layers}.{index})"
            _check_path(layer, attn, "layer_self_attn", where)
            attention = layer.get_submodule(attn)
            for name, path in {**projections, **others}.items():
                if path is None:
                    continue
                if name.startswith("attn_"):
                    _check_path(attention, getattr(self, name), name, f"the self-attention {attn!r} of {where}")
                else:
                    _check_path(layer, path, name, where)
                if name in projections and AdapterMethod.lora in self.adapter_methods:
                    module = layer.get_submodule(path)
                    if not isinstance(module, (nn.Linear, Conv1D)):
                        raise AdapterConfigError(
                            f"AdapterModelInterface.{name}={getattr(self, name)!r} in {where} is a {type(module).__name__}; "
                            f"LoRA-family methods adapt nn.Linear (or transformers' Conv1D) layers. Name a linear layer, "
                            f"or drop 'lora' from adapter_methods."
                        )

    def resolve_base_model(self, model: nn.Module) -> nn.Module:
        """The module the ``model_*`` paths are relative to.

        Example::

            >>> interface.resolve_base_model(causal_lm) is causal_lm.model
            True
        """
        if self.base_model is None:
            return getattr(model, "base_model", model)
        _check_path(model, self.base_model, "base_model", "the model")
        return model.get_submodule(self.base_model)

    def _pre_ln(self, layer: nn.Module) -> bool:
        if self.pre_ln is not None:
            return self.pre_ln
        if self.layer_pre_self_attn is None:
            return True  # no bottleneck positions: the flag is not used
        return _is_norm(layer.get_submodule(self.layer_pre_self_attn))

    def _residual_hooks(self, layer: nn.Module, pre_ln: bool) -> tuple[ResidualHook, ...]:
        needs = {"layer_pre_self_attn": self.layer_pre_self_attn, "layer_pre_ffn": self.layer_pre_ffn}
        if not pre_ln:
            needs.update(layer_ln_1=self.layer_ln_1, layer_ln_2=self.layer_ln_2)
        else:
            needs.update(layer_output_proj=self.layer_output_proj)
        missing = [name for name, value in needs.items() if value is None]
        if missing:
            kind = "pre-LN" if pre_ln else "post-LN"
            raise AdapterConfigError(
                f"adapter_methods includes 'bottleneck', which in this {kind} layer needs {', '.join(missing)}: the modules "
                f"whose inputs are the residual stream (layer_pre_self_attn, layer_pre_ffn)"
                + ("" if pre_ln else " and the norms of h + x (layer_ln_1, layer_ln_2)")
                + ". Name them, or drop 'bottleneck' from adapter_methods."
            )
        if pre_ln and self.layer_ln_1 is not None and self.layer_ln_1 == self.layer_pre_ffn:
            raise AdapterConfigError(
                f"layer_ln_1={self.layer_ln_1!r} is also layer_pre_ffn: in a pre-LN layer layer_ln_1 is a norm of the "
                f"attention output before it is added to the residual stream (Gemma's sandwich norm), not the norm "
                f"in front of the FFN. Leave layer_ln_1 None."
            )
        if pre_ln:
            # the adapters run on the sub-block's output, before a sandwich norm where the layer has one
            # (its original_ln_before step reads that norm, as AdapterHub's interface hands it over)
            return (
                ResidualHook("mh_adapter", host="attention_adapters", create_host=True,
                             residual_source=self.layer_pre_self_attn, residual_kwarg=_first_argument(layer, self.layer_pre_self_attn),
                             sublayer=self.layer_self_attn, sublayer_norm=self.layer_ln_1),
                ResidualHook("output_adapter", host="output_adapters", create_host=True,
                             residual_source=self.layer_pre_ffn, residual_kwarg=_first_argument(layer, self.layer_pre_ffn),
                             sublayer=self.layer_output_proj, sublayer_norm=self.layer_ln_2),
            )
        return (
            ResidualHook("mh_adapter", host="attention_adapters", create_host=True,
                         residual_source=self.layer_pre_self_attn, residual_kwarg=_first_argument(layer, self.layer_pre_self_attn),
                         norm=self.layer_ln_1),
            ResidualHook("output_adapter", host="output_adapters", create_host=True,
                         residual_source=self.layer_pre_ffn, residual_kwarg=_first_argument(layer, self.layer_pre_ffn),
                         norm=self.layer_ln_2),
        )

    def check_method(self, config, model_name: str = "this model") -> None:
        """Refuse an adapter config of a method family not in ``adapter_methods``.

        Example::

            >>> interface.check_method(LoRAConfig())    # raises unless 'lora' is listed
        """
        missing = [family for family in AdapterMethod.of(config) if family not in self.adapter_methods]
        if missing:
            raise AdapterConfigError(
                f"{type(config).__name__} needs the method famil{'ies' if len(missing) > 1 else 'y'} {missing}, which the "
                f"AdapterModelInterface of {model_name} does not enable (adapter_methods={list(self.adapter_methods)}). "
                f"Add {missing} to adapter_methods when calling adapters.init."
            )


def _check_path(root: nn.Module, path: str, field: str, where: str) -> None:
    """Raise an AdapterConfigError naming the closest module names when ``path`` is not a module of ``root``."""
    from .hooks.targeting import closest_names

    try:
        module = root.get_submodule(path)
    except AttributeError:
        module = None
    if isinstance(module, nn.Module):
        return
    names = [name for name, _ in root.named_modules() if name]
    raise AdapterConfigError(
        f"AdapterModelInterface.{field}={path!r} is not a module of {where}. Closest module names there: "
        f"{', '.join(closest_names(path, names)[:5]) or 'none'}."
    )


_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm) if hasattr(nn, "RMSNorm") else (nn.LayerNorm, nn.GroupNorm)


def _is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (torch's, or a class named ``...Norm``)."""
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def _first_argument(layer: nn.Module, path: str) -> str:
    """The name of the first argument of ``layer.<path>``'s forward (how the residual stream is
    passed when given by keyword)."""
    forward = type(layer.get_submodule(path)).forward
    parameters = [
        p for p in list(inspect.signature(forward).parameters.values())[1:]
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return parameters[0].name if parameters else "hidden_states"


def _calls_attention_interface(module: nn.Module) -> bool:
    """Whether ``module``'s own forward calls transformers' attention interface (read from its
    source; True when the source is not available)."""
    for klass in type(module).__mro__:
        if "forward" in klass.__dict__ and klass.__module__.split(".")[0] != "adapters":
            try:
                source = inspect.getsource(klass.__dict__["forward"])
            except (OSError, TypeError):
                return True
            return "ALL_ATTENTION_FUNCTIONS" in source or "_attn_implementation" in source
    return False


def _attention_caller(attention: nn.Module) -> Optional[str]:
    """The path (``""``: the module itself) of the first module in ``attention`` whose forward
    calls the attention interface, or None."""
    for path, module in attention.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D, nn.Dropout)) and _calls_attention_interface(module):
            return path
    return None


def interface_from_config(config) -> Optional[AdapterModelInterface]:
    """The interface stored in a model config by :func:`adapters.init` (None if there is none).

    Example::

        >>> interface_from_config(model.config).model_layers
        'layers'
    """
    data = getattr(config, CONFIG_KEY, None)
    return AdapterModelInterface.from_dict(data) if data else None
