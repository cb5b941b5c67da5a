"""Flexible prediction heads (AdapterHub's ``heads`` package): head classes, their registry and
the head API of the AdapterModel classes."""

from .base import HEAD_TYPES, MultiHeadOutput, PredictionHead, register_custom_head
from .classification import (
    ClassificationHead,
    MultiLabelClassificationHead,
    MultipleChoiceHead,
    QuestionAnsweringHead,
    TaggingHead,
)
from .dependency_parsing import Biaffine, BiaffineParsingHead, DependencyParsingOutput
from .image import ImageClassificationHead
from .language_modeling import BertStyleMaskedLMHead, CausalLMHead, MaskedLMHead, Seq2SeqLMHead
from .model_mixin import FlexibleHeadsMixin, heads_from_setup

#: AdapterHub's name of the flexible-heads mixin (the suite's isinstance checks use it)
ModelWithFlexibleHeadsAdaptersMixin = FlexibleHeadsMixin
from .modernbert import (
    ModernBertClassificationHead,
    ModernBertMaskedLMHead,
    ModernBertMultiLabelClassificationHead,
    ModernBertTaggingHead,
)

__all__ = [
    "HEAD_TYPES",
    "BertStyleMaskedLMHead",
    "Biaffine",
    "BiaffineParsingHead",
    "CausalLMHead",
    "ClassificationHead",
    "DependencyParsingOutput",
    "FlexibleHeadsMixin",
    "ModelWithFlexibleHeadsAdaptersMixin",
    "ImageClassificationHead",
    "ModernBertClassificationHead",
    "ModernBertMaskedLMHead",
    "ModernBertMultiLabelClassificationHead",
    "ModernBertTaggingHead",
    "MaskedLMHead",
    "MultiHeadOutput",
    "MultiLabelClassificationHead",
    "MultipleChoiceHead",
    "PredictionHead",
    "QuestionAnsweringHead",
    "Seq2SeqLMHead",
    "TaggingHead",
    "heads_from_setup",
    "register_custom_head",
]
