"""Classification-style heads: sequence classification (single- and multi-label), multiple
choice, token tagging and extractive question answering.

All of them are AdapterHub's numbered MLP (see :mod:`adapters.heads.base`) applied to

* the pooled sequence representation ``cls_output`` (classification, multiple choice): the first
  token's hidden state for encoders (or BERT's pooler output with ``use_pooler=True``), the last
  non-padding token's for decoders;
* every token's hidden state (tagging, question answering).

Losses are the usual ones: cross-entropy over the labels (MSE when ``num_labels == 1``),
binary cross-entropy with logits for multi-label classification, per-token cross-entropy for
tagging (padding and ``-100`` labels ignored), and the mean of the start and end cross-entropies
for question answering (positions outside the sequence ignored).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers.modeling_outputs import (
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from ..errors import AdapterConfigError
from .base import PredictionHead, register_head_type

__all__ = [
    "ClassificationHead",
    "MultiLabelClassificationHead",
    "MultipleChoiceHead",
    "TaggingHead",
    "QuestionAnsweringHead",
]


def _label2id(id2label: Optional[dict], count: int) -> dict:
    """AdapterHub's label map: given labels, else ``LABEL_i`` for every output."""
    if id2label is None:
        return {f"LABEL_{i}": i for i in range(count)}
    return {label: int(index) for index, label in id2label.items()}


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int, multilabel: bool = False) -> torch.Tensor:
    """Cross-entropy over the labels, MSE for a single output (regression), binary cross-entropy
    with logits for ``multilabel``.

    Example::

        >>> classification_loss(torch.zeros(2, 3), torch.tensor([0, 2]), num_labels=3)
        tensor(1.0986)
    """
    if num_labels == 1:
        return MSELoss()(logits.view(-1), labels.view(-1).to(logits.dtype))
    if multilabel:
        return BCEWithLogitsLoss()(logits, labels.to(logits.dtype))
    return CrossEntropyLoss()(logits.view(-1, num_labels), labels.view(-1))


def _with_base_outputs(output_class, outputs, **fields):
    return output_class(
        **fields,
        hidden_states=getattr(outputs, "hidden_states", None),
        attentions=getattr(outputs, "attentions", None),
    )


def _pooled(head: PredictionHead, outputs, cls_output, kwargs) -> torch.Tensor:
    if head.config.get("use_pooler"):
        pooled = kwargs.get("pooled_output")
        if pooled is None:
            raise AdapterConfigError(
                f"Head {head.name!r} has use_pooler=True but the base model returned no pooler output "
                f"(it has no pooler); add the head with use_pooler=False."
            )
        return pooled
    return cls_output if cls_output is not None else outputs[0][:, 0]


@register_head_type("classification")
class ClassificationHead(PredictionHead):
    """Sequence classification: ``logits = MLP(cls_output)``; loss CE (MSE for one label).

    Example::

        >>> model.add_classification_head("sentiment", num_labels=3)
        >>> model(**batch, labels=labels).loss
    """

    def __init__(
        self,
        model,
        head_name: str,
        num_labels: int = 2,
        layers: int = 2,
        activation_function: Optional[str] = "tanh",
        id2label: Optional[dict] = None,
        use_pooler: bool = False,
        bias: bool = True,
        dropout_prob: Optional[float] = None,
    ):
        super().__init__(
            head_name,
            {
                "num_labels": num_labels,
                "layers": layers,
                "activation_function": activation_function,
                "label2id": _label2id(id2label, num_labels if isinstance(num_labels, int) else 0),
                "use_pooler": use_pooler,
                "bias": bias,
                "dropout_prob": dropout_prob,
            },
        )
        self.build_mlp(model, num_labels)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CE over the labels (MSE when the head has a single output: regression).

        Example::

            >>> model.heads["sst2"].loss(logits, torch.tensor([0, 1]))
            tensor(0.69...)
        """
        return classification_loss(logits, labels, self.config["num_labels"])

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        """The logits of each sequence's pooled representation (``cls_output``, or the first /
        last token by the model's pooling), with the loss when ``labels`` are given.

        Example::

            >>> model(**batch, labels=labels, head="sst2").logits.shape   # (batch, num_labels)
        """
        logits = super().forward(_pooled(self, outputs, cls_output, kwargs))
        labels = kwargs.get("labels")
        loss = self.loss(logits, labels) if labels is not None else None
        return _with_base_outputs(SequenceClassifierOutput, outputs, loss=loss, logits=logits)


@register_head_type("multilabel_classification")
class MultiLabelClassificationHead(ClassificationHead):
    """Multi-label classification: independent sigmoid per label, loss BCE with logits.

    Example::

        >>> model.add_classification_head("topics", num_labels=5, multilabel=True)
        >>> model(**batch, labels=multi_hot).loss
    """

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy with logits over every label.

        Example::

            >>> model.heads["topics"].loss(logits, multi_hot.float())
        """
        return classification_loss(logits, labels, self.config["num_labels"], multilabel=True)


@register_head_type("multiple_choice")
class MultipleChoiceHead(PredictionHead):
    """Multiple choice: one score per (example, choice) pair, ``logits`` of shape
    ``(batch, num_choices)``; loss CE over the choices. Inputs are ``(batch, num_choices, seq)``.

    Example::

        >>> model.add_multiple_choice_head("swag", num_choices=4)
        >>> model(input_ids=ids_of_shape_b_4_t, labels=answer).logits.shape
        torch.Size([b, 4])
    """

    def __init__(
        self,
        model,
        head_name: str,
        num_choices: int = 2,
        layers: int = 2,
        activation_function: Optional[str] = "tanh",
        id2label: Optional[dict] = None,
        use_pooler: bool = False,
        dropout_prob: Optional[float] = None,
    ):
        super().__init__(
            head_name,
            {
                "num_choices": num_choices,
                "layers": layers,
                "activation_function": activation_function,
                "label2id": _label2id(id2label, num_choices if isinstance(num_choices, int) else 0),
                "use_pooler": use_pooler,
                "dropout_prob": dropout_prob,
            },
        )
        if not isinstance(num_choices, int) or num_choices < 1:
            raise AdapterConfigError(f"A multiple choice head needs num_choices >= 1, got {num_choices!r}.")
        self.build_mlp(model, 1)

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        """One score per (example, choice): ``logits`` of shape ``(batch, num_choices)``, with the CE
        loss over the choices when ``labels`` are given.

        Example::

            >>> model(**choices_batch, labels=answers).logits.shape   # (batch, num_choices)
        """
        scores = super().forward(_pooled(self, outputs, cls_output, kwargs))
        logits = scores.view(-1, kwargs.get("num_choices") or self.config["num_choices"])
        labels = kwargs.get("labels")
        loss = CrossEntropyLoss()(logits, labels.view(-1)) if labels is not None else None
        return _with_base_outputs(MultipleChoiceModelOutput, outputs, loss=loss, logits=logits)


class _PerTokenHead(PredictionHead):
    """An MLP applied to every token's hidden state (tagging, extractive QA)."""

    def __init__(
        self,
        model,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: Optional[str] = "tanh",
        id2label: Optional[dict] = None,
        dropout_prob: Optional[float] = None,
    ):
        super().__init__(
            head_name,
            {
                "num_labels": num_labels,
                "layers": layers,
                "activation_function": activation_function,
                "label2id": _label2id(id2label, num_labels if isinstance(num_labels, int) else 0),
                "dropout_prob": dropout_prob,
            },
        )
        self.build_mlp(model, num_labels)


@register_head_type("tagging")
class TaggingHead(_PerTokenHead):
    """Token classification: ``logits = MLP(h_t)`` for every token; loss CE over tokens, skipping
    padding (``attention_mask == 0``) and ``-100`` labels.

    Example::

        >>> model.add_tagging_head("ner", num_labels=9)
        >>> model(**batch, labels=tags).logits.shape
        torch.Size([b, t, 9])
    """

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        """Logits for every token, with the CE loss over the tokens whose label is not -100 when
        ``labels`` are given.

        Example::

            >>> model(**batch, labels=tags, head="ner").logits.shape   # (batch, seq, num_labels)
        """
        logits = super().forward(outputs[0])
        labels = kwargs.get("labels")
        loss = None
        if labels is not None:
            loss_fct = CrossEntropyLoss()
            labels = labels.reshape(-1)
            if attention_mask is not None:
                ignored = torch.full_like(labels, loss_fct.ignore_index)
                labels = torch.where(attention_mask.reshape(-1) == 1, labels, ignored)
            loss = loss_fct(logits.reshape(-1, self.config["num_labels"]), labels)
        return _with_base_outputs(TokenClassifierOutput, outputs, loss=loss, logits=logits)


@register_head_type("question_answering")
class QuestionAnsweringHead(_PerTokenHead):
    """Extractive QA: two scores per token, split into ``start_logits`` and ``end_logits``; loss
    the mean of the start and end cross-entropies (positions beyond the sequence are ignored).

    Example::

        >>> model.add_qa_head("squad")
        >>> out = model(**batch, start_positions=s, end_positions=e)
        >>> out.start_logits.shape, out.loss
    """

    def __init__(self, model, head_name: str, num_labels: int = 2, layers: int = 1,
                 activation_function: Optional[str] = "tanh", id2label: Optional[dict] = None,
                 dropout_prob: Optional[float] = None):
        if num_labels != 2:
            raise AdapterConfigError(f"A question answering head predicts start and end: num_labels must be 2, got {num_labels!r}.")
        super().__init__(model, head_name, num_labels, layers, activation_function, id2label, dropout_prob)

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        """``start_logits`` and ``end_logits`` per token, with the mean of the start and end losses
        when ``start_positions`` and ``end_positions`` are given.

        Example::

            >>> out = model(**batch, start_positions=s, end_positions=e, head="squad")
        """
        logits = super().forward(outputs[0])
        start_logits, end_logits = (part.squeeze(-1).contiguous() for part in logits.split(1, dim=-1))
        start, end = kwargs.get("start_positions"), kwargs.get("end_positions")
        loss = None
        if start is not None and end is not None:
            ignored = start_logits.size(1)  # positions outside the inputs are ignored
            start = start.reshape(-1).clamp(0, ignored)
            end = end.reshape(-1).clamp(0, ignored)
            loss_fct = CrossEntropyLoss(ignore_index=ignored)
            loss = (loss_fct(start_logits, start) + loss_fct(end_logits, end)) / 2
        return _with_base_outputs(
            QuestionAnsweringModelOutput, outputs, loss=loss, start_logits=start_logits, end_logits=end_logits
        )

    def get_label_names(self) -> list[str]:
        return ["start_positions", "end_positions"]
