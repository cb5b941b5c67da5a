"""Language-modelling heads: causal LM (next-token prediction, usable with ``generate``),
sequence-to-sequence LM (on the decoder of an encoder-decoder) and masked LM (BERT-style).

Both are a stack of ``layers - 1`` transforms ``h -> LayerNorm(act(W h + b))`` (the norm only with
``layer_norm=True``) followed by the output embedding ``logits = E h (+ c)`` over the vocabulary.
With ``config.tie_word_embeddings`` the output embedding ``E`` *is* the model's input embedding
matrix (one shared parameter), so a one-layer causal LM head computes ``logits = h Eᵀ`` exactly
like the model's own LM head. The children are numbered as in AdapterHub (``heads.<name>.3.weight``
is the output embedding of a two-layer head with a norm), so its head checkpoints load.

``logit_softcapping=c`` soft-caps the logits, ``c · tanh(logits / c)``, as Gemma 2's LM head does
(a causal head reads ``config.final_logit_softcapping`` by default; ``0`` turns it off).

Losses: the causal head shifts by one (position ``t`` predicts token ``t + 1``) before the
cross-entropy; the masked and the seq2seq head do not (the seq2seq decoder reads the labels shifted
right, so position ``t`` already predicts ``labels[t]``). ``-100`` labels are ignored in all.

The seq2seq head reads the decoder's last hidden state ``s``. Where the model's config says
``scale_decoder_outputs`` (T5 v1.0: its output embedding is the tied input embedding) it
projects ``s · d^{-1/2}`` instead, exactly as ``T5ForConditionalGeneration`` does; BART's
``final_logits_bias`` is the output layer's bias (a head converted from
``BartForConditionalGeneration`` has ``bias=True`` and carries it).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers.modeling_outputs import CausalLMOutputWithPast, MaskedLMOutput, Seq2SeqLMOutput

from ..errors import AdapterConfigError
from .base import PredictionHead, activation, register_head_type

__all__ = ["CausalLMHead", "MaskedLMHead", "Seq2SeqLMHead"]


@register_head_type("causal_lm")
class CausalLMHead(PredictionHead):
    """Causal language modelling head; the model can ``generate`` with it (KV cache included).

    Example::

        >>> model.add_causal_lm_head("lm", layers=1)        # the plain (tied) LM head
        >>> model.generate(input_ids, max_new_tokens=20)
    """

    shift_labels_default = True
    softcapping_from_model = True
    output_class = CausalLMOutputWithPast

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
            raise AdapterConfigError(f"logit_softcapping must be a positive number (0: off), got {logit_softcapping!r}.")
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
        hidden, layers = model.config.hidden_size, self.config["layers"]
        size = self.config.get("embedding_size") or hidden  # AdapterHub's seq2seq head has no embedding_size
        if not isinstance(layers, int) or layers < 1:
            raise AdapterConfigError(f"An LM head needs layers >= 1, got {layers!r}.")
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
        """The child name of the output embedding (the last layer).

        Example::

            >>> model.heads["lm"].output_index
            '0'
        """
        return str(len(self) - 1)

    def get_output_embeddings(self) -> nn.Module:
        return self[len(self) - 1]

    def set_output_embeddings(self, module: nn.Module) -> None:
        """Replace the output embedding layer (resizing).

        Example::

            >>> model.heads["lm"].set_output_embeddings(nn.Linear(32, 120, bias=False))
        """
        self._modules[self.output_index] = module

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, after shifting by one position for causal heads.

        Example::

            >>> model.heads["lm"].loss(logits, input_ids)   # predicts token t+1 from position t
        """
        if self.config["shift_labels"]:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        return CrossEntropyLoss()(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1))

    def _head_input(self, outputs) -> torch.Tensor:
        """The hidden states the layers read: the base model's last hidden states."""
        return outputs[0]

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        """Vocabulary logits for every position (the last ``logits_to_keep`` ones when generating),
        soft-capped where the config says so, with the loss when ``labels`` are given.

        Example::

            >>> model(input_ids=ids, labels=ids, head="lm").logits.shape   # (batch, seq, vocab)
        """
        hidden = self._head_input(outputs)
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

    def _output(self, loss, logits, outputs):
        """``output_class`` with this head's loss and logits; its other fields (past key values,
        hidden states, attentions, ...) are the base model output's."""
        passed = {f.name: getattr(outputs, f.name, None) for f in dataclasses.fields(self.output_class)}
        return self.output_class(**{**passed, "loss": loss, "logits": logits})


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
    output_class = MaskedLMOutput

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


@register_head_type("seq2seq_lm")
class Seq2SeqLMHead(CausalLMHead):
    """Language modelling head on the decoder of an encoder-decoder (T5, BART, Whisper, ...);
    ``generate`` uses it. ``layers=1`` (the default) is the model's own LM head: ``logits = s Eᵀ``
    with ``E`` the tied word embeddings, T5's ``d^{-1/2}`` scaling where its config asks for it,
    plus a bias with ``bias=True`` (BART's ``final_logits_bias``). The labels are not shifted:
    the decoder reads them shifted right (``decoder_input_ids``, made from ``labels`` when not
    given), so ``logits[:, t]`` is scored against ``labels[:, t]``.

    The config keys are AdapterHub's, so head checkpoints load in both libraries.

    Example::

        >>> model = adapters.T5AdapterModel.from_pretrained("path/to/t5")
        >>> model.add_seq2seq_lm_head("summarize")
        >>> model(input_ids=ids, attention_mask=mask, labels=target_ids).loss
        >>> model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20)
    """

    shift_labels_default = False
    output_class = Seq2SeqLMOutput

    def __init__(
        self,
        model,
        head_name: str,
        vocab_size: Optional[int] = None,
        layers: int = 1,
        activation_function: Optional[str] = None,
        layer_norm: bool = False,
        bias: bool = False,
        shift_labels: Optional[bool] = None,
    ):
        PredictionHead.__init__(
            self,
            head_name,
            {
                "vocab_size": vocab_size or model.config.vocab_size,
                "layers": layers,
                "activation_function": activation_function,
                "layer_norm": layer_norm,
                "bias": bias,
                "shift_labels": self.shift_labels_default if shift_labels is None else shift_labels,
                "label2id": None,
            },
        )
        # T5 v1.0 rescales the decoder output before its tied output embedding (transformers 5:
        # config.scale_decoder_outputs); a property of the model, not of the head, as in AdapterHub
        self.scale_decoder_outputs = bool(getattr(model.config, "scale_decoder_outputs", False))
        self._build(model)

    def _head_input(self, outputs) -> torch.Tensor:
        hidden = outputs[0]
        if self.scale_decoder_outputs:
            hidden = hidden * hidden.shape[-1] ** -0.5
        return hidden


# AdapterHub's class name for the masked LM head
BertStyleMaskedLMHead = MaskedLMHead
