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
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers.modeling_outputs import ImageClassifierOutput

from .base import PredictionHead, register_head_type

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
            raise ValueError(f"pooling must be one of {', '.join(_POOLINGS)}, got {pooling!r}.")
        if use_pooler and pooling != "cls":
            raise ValueError("use_pooler=True reads the pooler output; it cannot be combined with pooling='mean_patches'.")
        labels = num_labels if isinstance(num_labels, int) else 0
        super().__init__(
            head_name,
            {
                "num_labels": num_labels,
                "layers": layers,
                "activation_function": activation_function,
                "multilabel": multilabel,
                "label2id": {f"LABEL_{i}": i for i in range(labels)} if id2label is None
                else {label: int(index) for index, label in id2label.items()},
                "use_pooler": use_pooler,
                "bias": bias,
                "dropout_prob": dropout_prob,
                "pooling": pooling,
            },
        )
        self.build_mlp(model, num_labels, hidden=head_width(model))

    def _representation(self, outputs, cls_output, kwargs) -> torch.Tensor:
        if self.config.get("use_pooler"):
            pooled = kwargs.get("pooled_output")
            if pooled is None:
                raise ValueError(
                    f"Head {self.name!r} has use_pooler=True but the base model returned no pooler output; add the "
                    f"head with use_pooler=False."
                )
            return pooled
        if self.config.get("pooling") == "mean_patches":
            return outputs[0][:, 1:].mean(dim=1)
        return cls_output if cls_output is not None else outputs[0][:, 0]

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        logits = super().forward(self._representation(outputs, cls_output, kwargs))
        labels = kwargs.get("labels")
        loss = None
        if labels is not None:
            if self.config["num_labels"] == 1:
                loss = MSELoss()(logits.view(-1), labels.view(-1).to(logits.dtype))
            elif self.config.get("multilabel"):
                loss = BCEWithLogitsLoss()(logits, labels.to(logits.dtype))
            else:
                loss = CrossEntropyLoss()(logits.view(-1, self.config["num_labels"]), labels.view(-1))
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )
