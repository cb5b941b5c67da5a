"""Image classification (AdapterHub's ``image_classification`` head, ViT and CLIP's vision tower).

``logits = MLP(r)`` with AdapterHub's numbered MLP (see :mod:`adapters.heads.base`) on one vector
``r`` per image:

* ``pooling="cls"`` (default, AdapterHub's): the final state of the [CLS] position, as the base
  model returns it (ViT: after its final layer norm; ``use_pooler=True``: the pooler output);
* ``pooling="mean_patches"``: the mean of the patch positions' final states, [CLS] left out
  (``CLIPForImageClassification``).

The loss is cross-entropy over the labels, MSE for a single output (regression), binary
cross-entropy with logits for ``multilabel=True``.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers.modeling_outputs import ImageClassifierOutput

from ..errors import AdapterConfigError
from .base import PredictionHead, register_head_type
from .classification import _label2id, _pooled, _with_base_outputs, classification_loss

__all__ = ["ImageClassificationHead", "head_width"]

_POOLINGS = ("cls", "mean_patches")


def head_width(model) -> int:
    """The width of the states an image head reads: the vision tower's for a two-tower model (CLIP),
    else the model's hidden size.

    Example::

        >>> head_width(clip_adapter_model) == clip_adapter_model.config.vision_config.hidden_size
        True
    """
    vision = getattr(model.config, "vision_config", None)
    return (vision if vision is not None else model.config).hidden_size


@register_head_type("image_classification")
class ImageClassificationHead(PredictionHead):
    """Image classification: ``logits = MLP(r)`` for the pooled image representation ``r`` (see the
    module docstring); loss CE (MSE for one label, BCE for ``multilabel``).

    Example::

        >>> model = ViTAdapterModel.from_pretrained("path/to/vit")
        >>> model.add_image_classification_head("cifar", num_labels=10)
        >>> model(pixel_values=images, labels=labels).loss
    """

    def __init__(
        self,
        model,
        head_name: str,
        num_labels: int = 2,
        layers: int = 2,
        activation_function: Optional[str] = "tanh",
        multilabel: bool = False,
        id2label: Optional[dict] = None,
        use_pooler: bool = False,
        bias: bool = True,
        dropout_prob: Optional[float] = None,
        pooling: str = "cls",
    ):
        if pooling not in _POOLINGS:
            raise AdapterConfigError(f"pooling must be one of {', '.join(_POOLINGS)}, got {pooling!r}.")
        if use_pooler and pooling != "cls":
            raise AdapterConfigError(
                f"use_pooler=True reads the pooler output; it cannot be combined with pooling={pooling!r} (use pooling='cls')."
            )
        labels = num_labels if isinstance(num_labels, int) else 0
        super().__init__(
            head_name,
            {
                "num_labels": num_labels,
                "layers": layers,
                "activation_function": activation_function,
                "multilabel": multilabel,
                "label2id": _label2id(id2label, labels),
                "use_pooler": use_pooler,
                "bias": bias,
                "dropout_prob": dropout_prob,
                "pooling": pooling,
            },
        )
        self.build_mlp(model, num_labels, hidden=head_width(model))

    def _representation(self, outputs, cls_output, kwargs) -> torch.Tensor:
        if self.config.get("pooling") == "mean_patches":
            return outputs[0][:, 1:].mean(dim=1)
        return _pooled(self, outputs, cls_output, kwargs)

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        """The logits of each image's representation (the [CLS] state, or the mean of the patch
        states), with the loss when ``labels`` are given.

        Example::

            >>> model(pixel_values=images, labels=labels).logits.shape   # (batch, num_labels)
        """
        logits = super().forward(self._representation(outputs, cls_output, kwargs))
        labels = kwargs.get("labels")
        loss = None
        if labels is not None:
            loss = classification_loss(logits, labels, self.config["num_labels"], bool(self.config.get("multilabel")))
        return _with_base_outputs(ImageClassifierOutput, outputs, loss=loss, logits=logits)
