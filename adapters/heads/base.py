"""The building block of flexible prediction heads, their registry and the multi-head output.

A prediction head is a small stack of layers on top of the base model's hidden states. It is an
``nn.Sequential`` whose children are numbered as AdapterHub numbers them, so head checkpoints
(``model_head.safetensors`` with keys ``heads.<name>.<i>.weight``) load in both libraries. For
``layers = L`` and ``num_outputs = n`` the stack is::

    [Dropout, Linear(h, h), act] * (L - 1) + [Dropout, Linear(h, n)]

(``act`` is left out when ``activation_function`` is None; dropout comes from the head config,
else the model's ``classifier_dropout`` / ``hidden_dropout_prob``). Each head keeps a JSON
serialisable ``config`` dict (``head_type`` first) — exactly what ``head_config.json`` stores.

Head types are looked up in a registry: the built-in ones register themselves, users add theirs
with :func:`register_custom_head`.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass
from typing import Optional

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from ..compat import CACHE_NAME
from ..errors import AdapterConfigError

__all__ = ["PredictionHead", "MultiHeadOutput", "register_custom_head", "HEAD_TYPES", "head_class"]

# head_type -> head class; filled by the built-in head modules and register_custom_head
HEAD_TYPES: dict[str, type] = {}
# the head types added by register_custom_head (a built-in class may be registered under a new name)
CUSTOM_HEAD_TYPES: set[str] = set()


def register_head_type(head_type: str):
    """Class decorator: register a built-in head class under ``head_type``."""

    def decorator(cls):
        HEAD_TYPES[head_type] = cls
        cls.head_type = head_type
        return cls

    return decorator


def register_custom_head(identifier: str, head_class: type) -> None:
    """Make a user-defined head class available to every AdapterModel under ``identifier``.

    The class is called as ``head_class(model, head_name, **kwargs)`` and must be a
    :class:`PredictionHead` (or at least an ``nn.Module`` with a JSON-serialisable ``config`` dict
    and a ``forward(outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs)``).
    Heads registered this way can be added with ``model.add_custom_head(identifier, name, ...)``
    and are rebuilt from ``head_config.json`` / ``config.json`` when loaded.

    Raises:
        AdapterConfigError: ``identifier`` names a built-in head type.

    Example::

        >>> class MeanPoolHead(PredictionHead):
        ...     def __init__(self, model, head_name, num_labels=2):
        ...         super().__init__(head_name, {"num_labels": num_labels})
        ...         self.add_module("0", nn.Linear(model.config.hidden_size, num_labels))
        ...     def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        ...         return SequenceClassifierOutput(logits=self[0](outputs[0].mean(1)))
        >>> adapters.register_custom_head("mean_pool", MeanPoolHead)
        >>> model.add_custom_head("mean_pool", "sentiment", num_labels=3)
    """
    if identifier in HEAD_TYPES and identifier not in CUSTOM_HEAD_TYPES:
        raise AdapterConfigError(f"{identifier!r} is a built-in head type; register the custom head under another name.")
    HEAD_TYPES[identifier] = head_class
    CUSTOM_HEAD_TYPES.add(identifier)


def head_class(head_type: str) -> type:
    """The class registered for ``head_type``, or an AdapterConfigError listing the known ones."""
    if head_type not in HEAD_TYPES:
        raise AdapterConfigError(
            f"Unknown head type {head_type!r}; known head types: {', '.join(sorted(HEAD_TYPES))}. "
            f"Register a custom head with adapters.register_custom_head({head_type!r}, HeadClass) first."
        )
    return HEAD_TYPES[head_type]


class _HeadOutputs:
    """What :class:`MultiHeadOutput` adds to its fields: indexing, iteration and stacked logits."""

    @property
    def logits(self) -> torch.Tensor:
        """The heads' logits stacked along the batch dimension.

        Example::

            >>> model.set_active_adapters(Parallel("a", "b"))
            >>> model(**batch).logits.shape          # (2 * B, num_labels)
        """
        return torch.vstack([output["logits"] for output in self.head_outputs])

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.head_outputs[key]
        return super().__getitem__(key)

    def __iter__(self):
        return iter(self.head_outputs)

    def __len__(self) -> int:
        return len(self.head_outputs)


# The base model's KV cache rides along under the field name generate() reads back for the next
# step: ``cache`` from transformers 5.24 on, ``past_key_values`` before (adapters.compat).
MultiHeadOutput = make_dataclass(
    "MultiHeadOutput",
    [
        ("head_outputs", Optional[list], field(default=None)),
        ("loss", Optional[torch.FloatTensor], field(default=None)),
        (CACHE_NAME, Optional[object], field(default=None)),
    ],
    bases=(_HeadOutputs, ModelOutput),
    namespace={"__module__": __name__},
)
MultiHeadOutput.__doc__ = """The outputs of several heads in one pass (``Parallel`` branches, ``BatchSplit`` parts, or a
list of active heads): ``head_outputs[i]`` is the i-th head's output, ``loss`` the sum of their
losses when every head computed one, and the base model's KV cache under transformers' name for it
(``cache``, or ``past_key_values`` before transformers 5.24) while generating.

Indexing with an int gives a head's output; iterating walks the head outputs.

Example::

    >>> model.set_active_adapters(Parallel("a", "b"))
    >>> out = model(**batch, labels=labels)
    >>> out[0].logits, out[1].logits, out.loss   # loss = loss_a + loss_b
"""


def activation(name: Optional[str]) -> Optional[nn.Module]:
    """transformers' activation module called ``name`` (None: no activation)."""
    if not name:
        return None
    if name not in ACT2FN:
        raise AdapterConfigError(f"Unknown activation_function {name!r}; use one of {', '.join(sorted(ACT2FN))}.")
    return ACT2FN[name]


def model_dropout(model_config, head_config: dict) -> float:
    """The dropout a head uses: its own ``dropout_prob``, else the model's classifier dropout, else
    its hidden dropout (0 for models without one)."""
    if head_config.get("dropout_prob") is not None:
        return head_config["dropout_prob"]
    for name in ("classifier_dropout", "seq_classif_dropout", "hidden_dropout_prob", "dropout"):
        value = getattr(model_config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


class PredictionHead(nn.Sequential):
    """Base class of all heads: a numbered stack of layers plus a JSON-serialisable ``config``.

    Subclasses build their layers in ``__init__`` (usually with :meth:`build_mlp`) and implement
    ``forward(outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs)``, where
    ``outputs`` is the base model's output (``outputs[0]``: the last hidden states), ``cls_output``
    the pooled representation of each sequence, and ``kwargs`` hold ``labels`` and friends.

    Example::

        >>> head = model.heads["sentiment"]
        >>> head.config
        {'head_type': 'classification', 'num_labels': 2, 'layers': 2, ...}
    """

    head_type = "custom"
    #: keyword inputs of the model's forward call that this head reads besides its targets
    #: (:meth:`get_label_names`); the AdapterModel hands them to the heads, never to the base model
    extra_inputs: tuple = ()

    def __init__(self, name: str, config: Optional[dict] = None):
        super().__init__()
        self.name = name
        self.config = {"head_type": type(self).head_type, **(config or {})}

    def build_mlp(self, model, num_outputs: Optional[int], hidden: Optional[int] = None) -> None:
        """Add AdapterHub's numbered ``[Dropout, Linear, act] * (layers-1) + [Dropout, Linear]``
        stack; the last Linear maps to ``num_outputs`` (None: to the hidden size, followed by the
        activation). ``hidden``: the width of the states the head reads (default: the model's
        hidden size; CLIP's image heads read the vision tower's).

        Example::

            >>> class TwoLayerHead(PredictionHead):
            ...     def __init__(self, model, head_name, num_labels=2):
            ...         super().__init__(head_name, {"num_labels": num_labels, "layers": 2, "activation_function": "tanh"})
            ...         self.build_mlp(model, num_labels)   # Dropout, Linear, Tanh, Dropout, Linear
        """
        layers, hidden = self.config["layers"], hidden or model.config.hidden_size
        if not isinstance(layers, int) or layers < 1:
            raise AdapterConfigError(f"A head needs layers >= 1, got {layers!r}.")
        if num_outputs is not None and (not isinstance(num_outputs, int) or num_outputs < 1):
            raise AdapterConfigError(f"A head needs at least one output, got {num_outputs!r}.")
        act_name = self.config.get("activation_function")
        activation(act_name)  # validate before building anything
        dropout = model_dropout(model.config, self.config)
        modules = []
        for index in range(layers):
            modules.append(nn.Dropout(dropout))
            last = index == layers - 1
            out = num_outputs if last and num_outputs is not None else hidden
            modules.append(nn.Linear(hidden, out, bias=self.config.get("bias", True) if last else True))
            if (not last or num_outputs is None) and act_name:
                modules.append(activation(act_name))
        for index, module in enumerate(modules):
            self.add_module(str(index), module)

    def build(self, model) -> None:
        """Build the layers of ``self.config`` and initialise them as the model initialises its own
        weights (AdapterHub's method, which custom heads written for AdapterHub call after setting
        ``self.config``): :meth:`build_mlp` with ``layers``, ``activation_function``, ``bias`` and
        ``dropout_prob`` from the config, ending in ``num_labels`` outputs (a ``num_choices`` head:
        one score per choice; neither: the hidden size, followed by the activation).

        Raises:
            AdapterConfigError: the config lacks ``layers`` or ``activation_function``, or a value
                is invalid.

        Example::

            >>> class MyHead(PredictionHead):
            ...     def __init__(self, model, head_name, num_labels=2, layers=2, activation_function="tanh"):
            ...         super().__init__(head_name)
            ...         self.config = {"head_type": "my_head", "num_labels": num_labels, "layers": layers,
            ...                        "activation_function": activation_function}
            ...         self.build(model)
        """
        missing = [key for key in ("layers", "activation_function") if key not in self.config]
        if missing:
            raise AdapterConfigError(
                f"PredictionHead.build: head {self.name!r}'s config has no {', '.join(missing)}; set e.g. "
                f"self.config = {{'layers': 2, 'activation_function': 'tanh', 'num_labels': 2, ...}} before build(model)."
            )
        if "num_labels" in self.config:
            outputs = self.config["num_labels"]
        elif "num_choices" in self.config:
            outputs = 1
        else:
            outputs = None
        self.build_mlp(model, outputs)
        self.init_weights(model)

    def init_weights(self, model) -> None:
        """Initialise the head's layers the way the model initialises its own.

        Example::

            >>> head = TwoLayerHead(model, "task")   # a custom head, see build_mlp
            >>> head.init_weights(model)             # model._init_weights on every layer
        """
        for module in self.modules():
            if module is not self:
                model._init_weights(module)
        self.train(model.training)

    def get_output_embeddings(self) -> Optional[nn.Module]:
        """The head's output embedding layer (LM heads), else None.

        Example::

            >>> model.add_masked_lm_head("mlm")
            >>> model.heads["mlm"].get_output_embeddings()      # the Linear tied to the input embedding
            >>> model.heads["sentiment"].get_output_embeddings() is None
            True
        """
        return None

    def get_label_names(self) -> list[str]:
        """The keyword arguments that carry this head's targets.

        Example::

            >>> model.heads["sentiment"].get_label_names()
            ['labels']
            >>> model.add_qa_head("qa")
            >>> model.heads["qa"].get_label_names()
            ['start_positions', 'end_positions']
        """
        return ["labels"]
