"""ModernBERT's own prediction heads, as flexible heads of ``ModernBertAdapterModel``.

ModernBERT transforms the states its heads read with a *prediction head* before the output layer,
``T(h) = LayerNorm(act(W h + b))`` (``W``: ``hidden × hidden``, bias ``config.classifier_bias``;
``act``: ``config.classifier_activation``; a LayerNorm with ``config.norm_eps`` and bias
``config.norm_bias``):

* classification: ``logits = C · dropout(T(r))`` on the pooled state ``r``: the first token's
  final state (``pooling="cls"``) or the mean over the real tokens (``"mean"``), by default
  ``config.classifier_pooling``;
* tagging: ``logits_t = C · dropout(T(h_t))`` for every token;
* masked LM: ``logits_t = D · T(h_t)`` (``D`` tied to the token embeddings where the model ties them).

Numbered children (``0`` dense, ``1`` act, ``2`` norm, ``3`` dropout / decoder, ``4`` classifier)
hold the weights of ``ModernBertFor...``'s ``head.dense``, ``head.norm``, ``classifier`` /
``decoder``; the static head conversions copy them, giving the same logits.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..errors import AdapterConfigError
from .base import PredictionHead, activation, model_dropout
from .classification import ClassificationHead, MultiLabelClassificationHead, TaggingHead, _label2id
from .language_modeling import MaskedLMHead

__all__ = [
    "ModernBertClassificationHead",
    "ModernBertMultiLabelClassificationHead",
    "ModernBertTaggingHead",
    "ModernBertMaskedLMHead",
    "MODERNBERT_HEADS",
]


def _transform(model, bias: bool, act_name: str, norm_bias: bool, eps: float) -> list[nn.Module]:
    """``[dense, act, norm]``: ModernBERT's prediction head."""
    hidden = model.config.hidden_size
    return [nn.Linear(hidden, hidden, bias=bias), activation(act_name), nn.LayerNorm(hidden, eps=eps, bias=norm_bias)]


def _head_settings(model, activation_function, bias, norm_bias, norm_eps) -> dict:
    """The transform's settings, the model config's where not given."""
    config = model.config
    return {
        "activation_function": activation_function or getattr(config, "classifier_activation", "gelu"),
        "bias": bool(getattr(config, "classifier_bias", False)) if bias is None else bias,
        "norm_bias": bool(getattr(config, "norm_bias", False)) if norm_bias is None else norm_bias,
        "norm_eps": float(getattr(config, "norm_eps", 1e-5)) if norm_eps is None else norm_eps,
    }


class _TransformedOutputHead:
    """Builds ``[dense, act, norm, dropout, Linear(hidden, n)]`` (see the module docstring)."""

    def _build_transformed(self, model, num_outputs) -> None:
        if not isinstance(num_outputs, int) or num_outputs < 1:
            raise AdapterConfigError(f"A head needs at least one output, got {num_outputs!r}.")
        c = self.config
        modules = _transform(model, c["bias"], c["activation_function"], c["norm_bias"], c["norm_eps"])
        modules += [nn.Dropout(model_dropout(model.config, c)), nn.Linear(model.config.hidden_size, num_outputs)]
        for index, module in enumerate(modules):
            self.add_module(str(index), module)


class ModernBertClassificationHead(_TransformedOutputHead, ClassificationHead):
    """ModernBERT's sequence classification head: ``C · dropout(T(pool(h)))`` with cls or mean
    pooling (see the module docstring); loss CE (MSE for one label).

    Example::

        >>> model = ModernBertAdapterModel.from_pretrained("path/to/modernbert")
        >>> model.add_classification_head("nli", num_labels=3)          # config.classifier_pooling
        >>> model.add_classification_head("sst", num_labels=2, pooling="mean")
    """

    def __init__(
        self,
        model,
        head_name: str,
        num_labels: int = 2,
        layers: int = 2,
        activation_function: Optional[str] = None,
        id2label: Optional[dict] = None,
        use_pooler: bool = False,
        bias: Optional[bool] = None,
        dropout_prob: Optional[float] = None,
        pooling: Optional[str] = None,
        norm_bias: Optional[bool] = None,
        norm_eps: Optional[float] = None,
    ):
        pooling = pooling or getattr(model.config, "classifier_pooling", "cls")
        if pooling not in ("cls", "mean"):
            raise AdapterConfigError(f"pooling must be 'cls' or 'mean', got {pooling!r}.")
        if use_pooler:
            raise AdapterConfigError("ModernBERT has no pooler; its classification head pools with pooling='cls' or 'mean'.")
        if layers != 2:
            raise AdapterConfigError(f"ModernBERT's classification head has 2 layers (prediction head, classifier); got layers={layers!r}.")
        PredictionHead.__init__(self, head_name, {
            "num_labels": num_labels,
            "layers": 2,
            "label2id": _label2id(id2label, num_labels if isinstance(num_labels, int) else 0),
            "use_pooler": False,
            "dropout_prob": dropout_prob,
            "pooling": pooling,
            **_head_settings(model, activation_function, bias, norm_bias, norm_eps),
        })
        self._build_transformed(model, num_labels)

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        hidden = outputs[0]
        if self.config["pooling"] == "mean":
            mask = attention_mask if attention_mask is not None else hidden.new_ones(hidden.shape[:2])
            mask = mask[:, -hidden.shape[1]:].to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
        else:
            pooled = hidden[:, 0]
        return super().forward(outputs, cls_output=pooled, attention_mask=attention_mask, return_dict=return_dict, **kwargs)


class ModernBertMultiLabelClassificationHead(ModernBertClassificationHead):
    """:class:`ModernBertClassificationHead` with one sigmoid per label (loss BCE with logits).

    Example::

        >>> model.add_classification_head("topics", num_labels=5, multilabel=True)
    """

    head_type = "multilabel_classification"
    loss = MultiLabelClassificationHead.loss


class ModernBertTaggingHead(_TransformedOutputHead, TaggingHead):
    """ModernBERT's token classification head: ``C · dropout(T(h_t))`` for every token.

    Example::

        >>> model.add_tagging_head("ner", num_labels=9)
    """

    def __init__(
        self,
        model,
        head_name: str,
        num_labels: int = 2,
        layers: int = 2,
        activation_function: Optional[str] = None,
        id2label: Optional[dict] = None,
        dropout_prob: Optional[float] = None,
        bias: Optional[bool] = None,
        norm_bias: Optional[bool] = None,
        norm_eps: Optional[float] = None,
    ):
        PredictionHead.__init__(self, head_name, {
            "num_labels": num_labels,
            "layers": 2,
            "label2id": _label2id(id2label, num_labels if isinstance(num_labels, int) else 0),
            "dropout_prob": dropout_prob,
            **_head_settings(model, activation_function, bias, norm_bias, norm_eps),
        })
        self._build_transformed(model, num_labels)


class ModernBertMaskedLMHead(MaskedLMHead):
    """ModernBERT's masked LM head: ``D · T(h_t)``, ``D``'s bias ``config.decoder_bias``.

    Example::

        >>> model.add_masked_lm_head("mlm")
        >>> model(**batch, labels=masked_labels).loss
    """

    def __init__(
        self,
        model,
        head_name: str,
        vocab_size: Optional[int] = None,
        activation_function: Optional[str] = None,
        bias: Optional[bool] = None,
        transform_bias: Optional[bool] = None,
        norm_bias: Optional[bool] = None,
        norm_eps: Optional[float] = None,
        **kwargs,
    ):
        unknown = set(kwargs) - {"embedding_size", "layers", "layer_norm", "shift_labels", "dropout_prob", "logit_softcapping"}
        if unknown:
            raise AdapterConfigError(
                f"Invalid arguments for a ModernBERT masked LM head: unexpected {sorted(unknown)}; it takes vocab_size, "
                f"activation_function, bias, transform_bias, norm_bias and norm_eps."
            )
        settings = _head_settings(model, activation_function, transform_bias, norm_bias, norm_eps)
        decoder_bias = bool(getattr(model.config, "decoder_bias", True)) if bias is None else bias
        PredictionHead.__init__(self, head_name, {
            "vocab_size": vocab_size or model.config.vocab_size,
            "embedding_size": model.config.hidden_size,
            "layers": 2,
            "activation_function": settings["activation_function"],
            "layer_norm": True,
            "bias": decoder_bias,
            "transform_bias": settings["bias"],
            "norm_bias": settings["norm_bias"],
            "norm_eps": settings["norm_eps"],
            "shift_labels": False,
            "label2id": None,
            "dropout_prob": None,
            "logit_softcapping": None,
        })
        modules = _transform(model, settings["bias"], settings["activation_function"], settings["norm_bias"], settings["norm_eps"])
        modules.append(nn.Linear(model.config.hidden_size, self.config["vocab_size"], bias=decoder_bias))
        for index, module in enumerate(modules):
            self.add_module(str(index), module)


#: head type -> ModernBERT's class for it (``ModernBertAdapterModel.head_classes``)
MODERNBERT_HEADS = {
    "classification": ModernBertClassificationHead,
    "multilabel_classification": ModernBertMultiLabelClassificationHead,
    "tagging": ModernBertTaggingHead,
    "masked_lm": ModernBertMaskedLMHead,
}
