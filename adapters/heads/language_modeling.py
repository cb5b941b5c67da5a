"""Language-modelling heads: causal LM (next-token prediction, usable with ``generate``) and
masked LM (BERT-style).

Both are a stack of ``layers - 1`` transforms ``h -> LayerNorm(act(W h + b))`` (the norm only with
``layer_norm=True``) followed by the output embedding ``logits = E h (+ c)`` over the vocabulary.
With ``config.tie_word_embeddings`` the output embedding ``E`` *is* the model's input embedding
matrix (one shared parameter), so a one-layer causal LM head computes ``logits = h Eᵀ`` exactly
like the model's own LM head. The children are numbered as in AdapterHub (``heads.<name>.3.weight``
is the output embedding of a two-layer head with a norm), so its head checkpoints load.

``logit_softcapping=c`` soft-caps the logits, ``c · tanh(logits / c)``, as Gemma 2's LM head does
(a causal head reads ``config.final_logit_softcapping`` by default; ``0`` turns it off).

Losses: the causal head shifts by one (position ``t`` predicts token ``t + 1``) before the
cross-entropy; the masked head does not. ``-100`` labels are ignored in both.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers.modeling_outputs import CausalLMOutputWithPast, MaskedLMOutput

from .base import PredictionHead, activation, register_head_type

__all__ = ["CausalLMHead", "MaskedLMHead"]


@register_head_type("causal_lm")
class CausalLMHead(PredictionHead):
    """Causal language modelling head; the model can ``generate`` with it (KV cache included).

    Example::

        >>> model.add_causal_lm_head("lm", layers=1)        # the plain (tied) LM head
        >>> model.generate(input_ids, max_new_tokens=20)
    """

    shift_labels_default = True
    softcapping_from_model = True

    def __init__(
        self,
        model,
        head_name: str,
        vocab_size: Optional[int] = None,
        embedding_size: Optional[int] = None,
        layers: int = 1,
        activation_function: Optional[str] = None,
        layer_norm: bool = False,
        bias: bool = False,
        shift_labels: Optional[bool] = None,
        dropout_prob: Optional[float] = None,
        logit_softcapping: Optional[float] = None,
    ):
        config = model.config
        if logit_softcapping is None and self.softcapping_from_model:
            # Gemma 2 soft-caps its final logits (config.final_logit_softcapping): so does its LM head here
            logit_softcapping = getattr(config, "final_logit_softcapping", None)
        if logit_softcapping is not None and (not isinstance(logit_softcapping, (int, float)) or logit_softcapping < 0):
            raise ValueError(f"logit_softcapping must be a positive number (0: off), got {logit_softcapping!r}.")
        super().__init__(
            head_name,
            {
                "vocab_size": vocab_size or config.vocab_size,
                "embedding_size": embedding_size or getattr(config, "embedding_size", None) or config.hidden_size,
                "layers": layers,
                "activation_function": activation_function,
                "layer_norm": layer_norm,
                "bias": bias,
                "shift_labels": self.shift_labels_default if shift_labels is None else shift_labels,
                "label2id": None,
                "dropout_prob": dropout_prob,
                "logit_softcapping": logit_softcapping or None,
            },
        )
        self._build(model)

    def _build(self, model) -> None:
        hidden, size, layers = model.config.hidden_size, self.config["embedding_size"], self.config["layers"]
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"An LM head needs layers >= 1, got {layers!r}.")
        act_name = self.config.get("activation_function")
        activation(act_name)
        eps = getattr(model.config, "layer_norm_eps", None) or getattr(model.config, "rms_norm_eps", None) or 1e-12
        modules = []
        for index in range(layers - 1):
            modules.append(nn.Linear(hidden if index == 0 else size, size))
            if act_name:
                modules.append(activation(act_name))
            if self.config.get("layer_norm"):
                modules.append(nn.LayerNorm(size, eps=eps))
        modules.append(nn.Linear(size if layers > 1 else hidden, self.config["vocab_size"], bias=self.config["bias"]))
        for index, module in enumerate(modules):
            self.add_module(str(index), module)

    @property
    def output_index(self) -> str:
        """The child name of the output embedding (the last layer)."""
        return str(len(self) - 1)

    def get_output_embeddings(self) -> nn.Module:
        return self[len(self) - 1]

    def set_output_embeddings(self, module: nn.Module) -> None:
        """Replace the output embedding layer (resizing)."""
        self._modules[self.output_index] = module

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, after shifting by one position for causal heads."""
        if self.config["shift_labels"]:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        return CrossEntropyLoss()(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1))

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        hidden = outputs[0]
        keep = kwargs.get("logits_to_keep") or 0
        if isinstance(keep, int) and keep > 0 and kwargs.get("labels") is None:
            hidden = hidden[:, -keep:]  # generate only needs the last position's logits
        logits = super().forward(hidden)
        cap = self.config.get("logit_softcapping")
        if cap:
            logits = torch.tanh(logits / cap) * cap
        labels = kwargs.get("labels")
        loss = self.loss(logits, labels) if labels is not None else None
        return self._output(loss, logits, outputs)

    @staticmethod
    def _output(loss, logits, outputs):
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=getattr(outputs, "past_key_values", None),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )


@register_head_type("masked_lm")
class MaskedLMHead(CausalLMHead):
    """BERT-style masked language modelling head: ``dense -> act -> LayerNorm -> decoder``
    (``layers=2``), loss on the unshifted labels (``-100`` for unmasked positions).

    Example::

        >>> model.add_masked_lm_head("mlm")
        >>> model(**batch, labels=masked_labels).loss
    """

    shift_labels_default = False
    softcapping_from_model = False

    def __init__(
        self,
        model,
        head_name: str,
        vocab_size: Optional[int] = None,
        embedding_size: Optional[int] = None,
        layers: int = 2,
        activation_function: Optional[str] = "gelu",
        layer_norm: bool = True,
        bias: bool = True,
        shift_labels: Optional[bool] = None,
        dropout_prob: Optional[float] = None,
        logit_softcapping: Optional[float] = None,
    ):
        super().__init__(
            model, head_name, vocab_size, embedding_size, layers, activation_function, layer_norm, bias, shift_labels,
            dropout_prob, logit_softcapping,
        )

    @staticmethod
    def _output(loss, logits, outputs):
        return MaskedLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )


# AdapterHub's class name for the masked LM head
BertStyleMaskedLMHead = MaskedLMHead
