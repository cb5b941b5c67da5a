"""AdapterModel classes: a transformers base model with adapters and named, flexible heads.

``BertAdapterModel``, ``LlamaAdapterModel``, ... are generated from one table
(:data:`ADAPTER_MODEL_TABLE`): each is a subclass of the architecture's own ``XPreTrainedModel``
(so ``config_class``, ``base_model_prefix``, weight initialisation and attention backends are
transformers' own) that holds the base model (``BertModel``, ``LlamaModel``, ...) under its usual
prefix and a ``heads`` ``nn.ModuleDict``. There is no copied forward code: ``forward`` runs the
base model and hands its output to the heads (:class:`~adapters.heads.FlexibleHeadsMixin`).
Every instance is patched with :func:`adapters.init` at construction, so adapters work at once.

``from_pretrained`` loads

* plain base-model checkpoints (``AutoModel.save_pretrained``: keys without prefix) and
  checkpoints of transformers' own head models (``BertForSequenceClassification``,
  ``LlamaForCausalLM``, ...; keys under the base-model prefix) — transformers maps the prefix;
* the head of a transformers head model becomes a flexible head named ``"default"`` with the
  same weights and outputs (AdapterHub's *static head conversion*, :data:`STATIC_HEAD_CONVERSIONS`);
  :func:`convert_to_adapter_model` does the same for a model in memory;
* checkpoints written by an AdapterModel's ``save_pretrained`` (heads rebuilt from
  ``config.prediction_heads``).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Optional

import torch
import transformers
from torch import nn
from transformers import AutoConfig, GenerationMixin, PreTrainedModel

from .. import logging
from ..errors import AdapterConfigError
from .checkpoints import _head_arguments
from .model_mixin import FlexibleHeadsMixin
from .modernbert import MODERNBERT_HEADS

logger = logging.get_logger(__name__)

__all__ = [
    "ADAPTER_MODEL_TABLE",
    "ADAPTER_MODEL_CLASSES",
    "ADAPTER_MODEL_MAPPING",
    "AutoAdapterModel",
    "STATIC_HEAD_CONVERSIONS",
    "convert_to_adapter_model",
]

_ENCODER_HEADS = (
    "classification", "multilabel_classification", "tagging", "multiple_choice", "question_answering", "masked_lm",
)
_DECODER_HEADS = ("classification", "multilabel_classification", "tagging", "question_answering", "causal_lm")
# AdapterHub's BERT-like text encoders also take a biaffine parsing head and a causal LM head (generate() then
# re-reads the whole sequence each step: see _EncoderGeneration)
_TEXT_ENCODER_HEADS = _ENCODER_HEADS + ("dependency_parsing", "causal_lm")

# model_type -> (class name, config class name, heads it supports, sequence pooling for classification)
ADAPTER_MODEL_TABLE: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "bert": ("BertAdapterModel", "BertConfig", _TEXT_ENCODER_HEADS, "first"),
    "roberta": ("RobertaAdapterModel", "RobertaConfig", _TEXT_ENCODER_HEADS, "first"),
    "xlm-roberta": ("XLMRobertaAdapterModel", "XLMRobertaConfig", _TEXT_ENCODER_HEADS, "first"),
    "distilbert": ("DistilBertAdapterModel", "DistilBertConfig", _TEXT_ENCODER_HEADS, "first"),
    "electra": ("ElectraAdapterModel", "ElectraConfig", _TEXT_ENCODER_HEADS, "first"),
    "llama": ("LlamaAdapterModel", "LlamaConfig", _DECODER_HEADS, "last"),
    "mistral": ("MistralAdapterModel", "MistralConfig", _DECODER_HEADS, "last"),
    "qwen2": ("Qwen2AdapterModel", "Qwen2Config", _DECODER_HEADS, "last"),
    "gpt2": ("GPT2AdapterModel", "GPT2Config", _DECODER_HEADS, "last"),
    "qwen3": ("Qwen3AdapterModel", "Qwen3Config", _DECODER_HEADS, "last"),
    "phi3": ("Phi3AdapterModel", "Phi3Config", _DECODER_HEADS, "last"),
    "gptj": ("GPTJAdapterModel", "GPTJConfig", _DECODER_HEADS, "last"),
    # Gemma's LM head soft-caps its final logits: the causal_lm head does so (logit_softcapping)
    "gemma2": ("Gemma2AdapterModel", "Gemma2Config", _DECODER_HEADS, "last"),
    "gemma3_text": ("Gemma3TextAdapterModel", "Gemma3TextConfig", _DECODER_HEADS, "last"),
    # DeBERTa's classification heads pool the first token through a dense layer (ContextPooler):
    # a two-layer classification head with the pooler's activation
    "deberta-v2": ("DebertaV2AdapterModel", "DebertaV2Config", _ENCODER_HEADS, "first"),
    "gpt_neox": ("GPTNeoXAdapterModel", "GPTNeoXConfig", _DECODER_HEADS, "last"),
    "albert": ("AlbertAdapterModel", "AlbertConfig", _ENCODER_HEADS, "first"),
}

# encoder-decoders: heads on the decoder's last hidden states; classification pools the decoder state at
# the last <eos> of input_ids ("eos"), as transformers' T5/BART ...ForSequenceClassification do
_SEQ2SEQ_HEADS = ("seq2seq_lm", "classification", "multilabel_classification", "question_answering")
ADAPTER_MODEL_TABLE.update({
    "t5": ("T5AdapterModel", "T5Config", _SEQ2SEQ_HEADS, "eos"),
    "mt5": ("MT5AdapterModel", "MT5Config", _SEQ2SEQ_HEADS, "eos"),
    "bart": ("BartAdapterModel", "BartConfig", _SEQ2SEQ_HEADS, "eos"),
    "mbart": ("MBartAdapterModel", "MBartConfig", _SEQ2SEQ_HEADS, "eos"),
    "whisper": ("WhisperAdapterModel", "WhisperConfig", ("seq2seq_lm",), "eos"),
})

# image models and ModernBERT (their forward and heads: _EXTRA_BASES below)
ADAPTER_MODEL_TABLE.update(
    {
        "vit": ("ViTAdapterModel", "ViTConfig", ("image_classification",), "first"),
        # ModernBERT's own heads (cls / mean pooling, a prediction head before the output layer)
        "modernbert": (
            "ModernBertAdapterModel", "ModernBertConfig",
            ("classification", "multilabel_classification", "tagging", "masked_lm"), "first",
        ),
        # both towers; heads read the vision tower (image classification), no heads: CLIP's outputs
        "clip": ("CLIPAdapterModel", "CLIPConfig", ("image_classification",), "first"),
    }
)

# issue 23's architectures (AdapterHub's head types for each). BertGeneration: an encoder or a decoder
# with an LM head (generation: "last"); BEiT classifies the mean-pooled patch states (its pooler)
ADAPTER_MODEL_TABLE.update(
    {
        "bert-generation": ("BertGenerationAdapterModel", "BertGenerationConfig", ("masked_lm", "causal_lm"), "last"),
        "xmod": ("XmodAdapterModel", "XmodConfig", _TEXT_ENCODER_HEADS, "first"),
        "deberta": ("DebertaAdapterModel", "DebertaConfig", _ENCODER_HEADS, "first"),
        "plbart": ("PLBartAdapterModel", "PLBartConfig", _SEQ2SEQ_HEADS, "eos"),
        "beit": ("BeitAdapterModel", "BeitConfig", ("image_classification",), "first"),
        "phi": ("PhiAdapterModel", "PhiConfig", _DECODER_HEADS, "last"),
    }
)


# what adapters.init leaves in a model's instance dict: the registry first, then what depends on the model
_ADAPTER_STATE_KEYS = ("_adapters_registry", "_adapters_hosts", "_adapters_spec", "_adapters_interface")


def _conversions() -> dict:
    """transformers head class name -> (flexible head config, {flex layer index: static module path},
    extra {flex key: static key})."""
    # longer than 80 lines on purpose: one table, an entry per head class of each family, read top to bottom

    def cls(layers=1, act=None, pooler=False, **extra):
        return {"head_type": "classification", "layers": layers, "activation_function": act, "use_pooler": pooler, **extra}

    def one(head_type, **extra):
        return {"head_type": head_type, "layers": 1, "activation_function": None, **extra}

    table = {}
    mlm = {"head_type": "masked_lm", "layers": 2, "layer_norm": True, "bias": True}
    for prefix in ("Bert", "Roberta", "XLMRoberta", "Xmod"):  # X-MOD has RoBERTa's heads
        roberta = prefix != "Bert"
        table[f"{prefix}ForSequenceClassification"] = (
            (cls(2, "tanh"), {1: "classifier.dense", 4: "classifier.out_proj"}, {})
            if roberta
            else (cls(1, None, True), {1: "classifier"}, {})
        )
        table[f"{prefix}ForMultipleChoice"] = (
            {"head_type": "multiple_choice", "layers": 1, "activation_function": None, "use_pooler": True}, {1: "classifier"}, {}
        )
        table[f"{prefix}ForTokenClassification"] = (one("tagging"), {1: "classifier"}, {})
        table[f"{prefix}ForQuestionAnswering"] = (one("question_answering"), {1: "qa_outputs"}, {})
        table[f"{prefix}ForMaskedLM"] = (
            (dict(mlm, activation_function="gelu"), {0: "lm_head.dense", 2: "lm_head.layer_norm", 3: "lm_head.decoder"},
             {"3.bias": "lm_head.bias"})
            if roberta
            else (dict(mlm, activation_function="$hidden_act"),
                  {0: "cls.predictions.transform.dense", 2: "cls.predictions.transform.LayerNorm", 3: "cls.predictions.decoder"},
                  {"3.bias": "cls.predictions.bias"})
        )
    table["DistilBertForSequenceClassification"] = (cls(2, "relu"), {1: "pre_classifier", 4: "classifier"}, {})
    table["DistilBertForMultipleChoice"] = (
        {"head_type": "multiple_choice", "layers": 2, "activation_function": "relu"}, {1: "pre_classifier", 4: "classifier"}, {}
    )
    table["DistilBertForTokenClassification"] = (one("tagging"), {1: "classifier"}, {})
    table["DistilBertForQuestionAnswering"] = (one("question_answering"), {1: "qa_outputs"}, {})
    table["DistilBertForMaskedLM"] = (
        dict(mlm, activation_function="$activation"), {0: "vocab_transform", 2: "vocab_layer_norm", 3: "vocab_projector"}, {}
    )
    # ELECTRA: gelu classification head on the first token; generator head dense -> gelu -> LN in embedding_size
    table["ElectraForSequenceClassification"] = (cls(2, "gelu"), {1: "classifier.dense", 4: "classifier.out_proj"}, {})
    table["ElectraForTokenClassification"] = (one("tagging"), {1: "classifier"}, {})
    table["ElectraForQuestionAnswering"] = (one("question_answering"), {1: "qa_outputs"}, {})
    table["ElectraForMaskedLM"] = (
        dict(mlm, activation_function="gelu"),
        {0: "generator_predictions.dense", 2: "generator_predictions.LayerNorm", 3: "generator_lm_head"}, {}
    )
    # ALBERT: BERT's pooled classification head; MLM head dense -> act -> LN in embedding_size
    table["AlbertForSequenceClassification"] = (cls(1, None, True), {1: "classifier"}, {})
    table["AlbertForMultipleChoice"] = table["BertForMultipleChoice"]
    table["AlbertForTokenClassification"] = (one("tagging"), {1: "classifier"}, {})
    table["AlbertForQuestionAnswering"] = (one("question_answering"), {1: "qa_outputs"}, {})
    table["AlbertForMaskedLM"] = (
        dict(mlm, activation_function="$hidden_act"),
        {0: "predictions.dense", 2: "predictions.LayerNorm", 3: "predictions.decoder"}, {"3.bias": "predictions.bias"}
    )
    for prefix in ("Llama", "Mistral", "Qwen2", "GPT2", "Qwen3", "Phi3", "GPTJ", "Gemma2", "Gemma3", "GPTNeoX", "Phi"):
        # Gemma 3's text-only classes are Gemma3Text...; its Gemma3For... classification classes are multimodal
        text = "Gemma3Text" if prefix == "Gemma3" else prefix
        table[f"{text}ForSequenceClassification"] = (cls(1, None, bias=False, dropout_prob=0.0), {1: "score"}, {})
        table[f"{text}ForTokenClassification"] = (one("tagging"), {1: "classifier" if prefix in ("GPT2", "GPTNeoX") else "score"}, {})
        table[f"{text}ForQuestionAnswering"] = (one("question_answering"), {1: "qa_outputs"}, {})
        lm_class = "GPT2LMHeadModel" if prefix == "GPT2" else f"{prefix}ForCausalLM"
        table[lm_class] = (
            {"head_type": "causal_lm", "layers": 1, "bias": prefix in ("GPTJ", "Phi"), "logit_softcapping": "$final_logit_softcapping"},
            {0: "lm_head"}, {},
        )
    # DeBERTa-v2/v3: ContextPooler (dropout -> dense -> pooler_hidden_act on the first token) -> dropout -> classifier
    pooler = {1: "pooler.dense", 4: "classifier"}
    # DeBERTa v1 has v2's heads under the same module names (and no multiple-choice model)
    for prefix in ("DebertaV2", "Deberta"):
        table[f"{prefix}ForSequenceClassification"] = (cls(2, "$pooler_hidden_act"), pooler, {})
        table[f"{prefix}ForMultipleChoice"] = (
            {"head_type": "multiple_choice", "layers": 2, "activation_function": "$pooler_hidden_act"}, pooler, {}
        )
        table[f"{prefix}ForTokenClassification"] = (one("tagging"), {1: "classifier"}, {})
        table[f"{prefix}ForQuestionAnswering"] = (one("question_answering"), {1: "qa_outputs"}, {})
        # legacy=True (the default): BERT's transform + decoder; legacy=False: transform in lm_predictions.lm_head,
        # decoder = the (tied) word embeddings plus a bias
        table[f"{prefix}ForMaskedLM"] = (
            dict(mlm, activation_function="$hidden_act"),
            {
                0: ("cls.predictions.transform.dense", "lm_predictions.lm_head.dense"),
                2: ("cls.predictions.transform.LayerNorm", "lm_predictions.lm_head.LayerNorm"),
                3: ("cls.predictions.decoder", "deberta.embeddings.word_embeddings"),
            },
            {"3.bias": ("cls.predictions.bias", "lm_predictions.lm_head.bias")},
        )
    # BertGeneration's LM head model: one decoder layer with a bias; its loss shifts the labels (a causal LM head)
    table["BertGenerationDecoder"] = ({"head_type": "causal_lm", "layers": 1, "bias": True}, {0: "lm_head.decoder"}, {})
    return table


def _seq2seq_conversions() -> dict:
    """The encoder-decoders' head classes, as :func:`_conversions` lists the others."""
    lm = {"head_type": "seq2seq_lm", "layers": 1, "activation_function": None, "layer_norm": False}
    # T5ClassificationHead / BartClassificationHead: dropout -> dense -> tanh -> dropout -> out_proj
    classification = {"head_type": "classification", "layers": 2, "activation_function": "tanh", "use_pooler": False}
    dense_out = {1: "classification_head.dense", 4: "classification_head.out_proj"}
    qa = {"head_type": "question_answering", "layers": 1, "activation_function": None}
    table = {}
    for prefix in ("T5", "MT5", "Bart", "MBart", "PLBart"):
        bart = prefix.endswith("Bart")
        # BART adds final_logits_bias (a buffer of shape (1, vocab)) to the logits: the head's bias
        table[f"{prefix}ForConditionalGeneration"] = (
            dict(lm, bias=bart), {0: "lm_head"}, {"0.bias": "final_logits_bias"} if bart else {}
        )
        table[f"{prefix}ForSequenceClassification"] = (classification, dense_out, {})
        table[f"{prefix}ForQuestionAnswering"] = (qa, {1: "qa_outputs"}, {})
    table["WhisperForConditionalGeneration"] = (dict(lm, bias=False), {0: "proj_out"}, {})
    return table


def _image_and_modernbert_conversions() -> dict:
    """ViT's classifier on the [CLS] final state; ModernBERT's heads (prediction head ``head.dense``
    / ``head.norm``, then ``classifier`` or ``decoder``; see :mod:`adapters.heads.modernbert`)."""
    image = {"head_type": "image_classification", "layers": 1, "activation_function": None}
    transform = {0: "head.dense", 2: "head.norm"}
    table = {
        "ViTForImageClassification": (image, {1: "classifier"}, {}),
        "BeitForImageClassification": (image, {1: "classifier"}, {}),  # on the pooler output (see _BeitInputs)
        "ModernBertForSequenceClassification": (
            {"head_type": "classification", "layers": 2, "activation_function": "$classifier_activation",
             "pooling": "$classifier_pooling", "dropout_prob": "$classifier_dropout"},
            {**transform, 4: "classifier"}, {},
        ),
        "ModernBertForTokenClassification": (
            {"head_type": "tagging", "layers": 2, "activation_function": "$classifier_activation",
             "dropout_prob": "$classifier_dropout"},
            {**transform, 4: "classifier"}, {},
        ),
        "ModernBertForMaskedLM": (
            {"head_type": "masked_lm", "activation_function": "$classifier_activation"}, {**transform, 3: "decoder"}, {}
        ),
    }
    return table


# transformers head class name -> conversion, for every head class of any transformers 5 release
_HEAD_CONVERSION_TABLE = {
    name: value
    for table in (_conversions(), _seq2seq_conversions(), _image_and_modernbert_conversions())
    for name, value in table.items()
}


def _static_conversion(architecture: Optional[str]):
    """The conversion of transformers head class ``architecture`` if this transformers version has
    the class, else None. Asking transformers for a class imports its modeling module: only the
    class asked for is looked up (``STATIC_HEAD_CONVERSIONS`` looks up all of them)."""
    if architecture not in _HEAD_CONVERSION_TABLE or not hasattr(transformers, architecture):
        return None
    return _HEAD_CONVERSION_TABLE[architecture]


def _static_head_conversions() -> dict:
    """``STATIC_HEAD_CONVERSIONS`` (a module attribute computed at its first use): transformers head
    class -> (flexible head config, {flex layer index: static module path}, extra keys), for the
    head classes this transformers version has."""
    return {name: value for name, value in _HEAD_CONVERSION_TABLE.items() if hasattr(transformers, name)}


def _pretrained_base_class(base_class: type) -> type:
    return next(c for c in base_class.__mro__[1:] if issubclass(c, PreTrainedModel) and c.__name__.endswith("PreTrainedModel"))


def _base_model_class(config) -> type:
    return transformers.MODEL_MAPPING[type(config)]


class _AdapterModelBody(FlexibleHeadsMixin):
    """What every generated AdapterModel class has (the table fills in the rest)."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        setattr(self, self.base_model_prefix, _base_model_class(config)(config))
        self.heads = nn.ModuleDict()
        self.post_init()
        from ..initialize import init_adapter_model

        init_adapter_model(self)  # adapters listed in config.adapters: restored with their weights by from_pretrained
        for name, head_config in dict(getattr(config, "prediction_heads", None) or {}).items():
            head_type, head_kwargs = _head_arguments(head_config)
            head = self._build_head(head_type, name, **head_kwargs)
            self.add_prediction_head(head, overwrite_ok=True, set_active=False)
        if len(self.heads) > 0:  # as AdapterHub: the last head restored is active
            self._active_heads = [list(self.heads)[-1]]

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        head: Optional[str] = None,
        labels: Optional[torch.Tensor] = None,
        start_positions: Optional[torch.Tensor] = None,
        end_positions: Optional[torch.Tensor] = None,
        logits_to_keep: int = 0,
        **kwargs,
    ):
        """Run the base model, then the head(s) in force on its output (no head: the base model's
        output). ``head`` picks a head for this call; ``labels`` / ``start_positions`` /
        ``end_positions`` give the loss. Multiple-choice inputs ``(batch, choices, seq)`` are
        flattened for the base model.

        Example::

            >>> out = model(**batch, labels=labels)              # active head
            >>> out = model(**batch, head="ner")                  # another head, this call only
        """
        kwargs.pop("return_dict", None)
        head_kwargs = {"labels": labels, "start_positions": start_positions, "end_positions": end_positions}
        head_kwargs.update({name: kwargs.pop(name) for name in self._head_only_inputs() if name in kwargs})
        if input_ids is not None and input_ids.dim() == 3 or inputs_embeds is not None and inputs_embeds.dim() == 4:
            head_kwargs["num_choices"] = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            input_ids, attention_mask, inputs_embeds, kwargs = _flatten_choices(input_ids, attention_mask, inputs_embeds, kwargs)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
        outputs = self.base_model(**self._base_model_inputs(inputs, head, labels))
        head_kwargs = {k: v for k, v in head_kwargs.items() if v is not None}
        if logits_to_keep:
            head_kwargs["logits_to_keep"] = logits_to_keep
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is not None:
            head_kwargs["pooled_output"] = pooled
        cls_output = self._sequence_representation(outputs[0], input_ids, attention_mask, head=head)
        return self.forward_head(outputs, head_name=head, cls_output=cls_output, attention_mask=attention_mask, **head_kwargs)

    def _base_model_inputs(self, inputs: dict, head: Optional[str], labels) -> dict:
        """The base model's keyword arguments (encoder-decoders add the decoder's inputs)."""
        return inputs

    def _sequence_representation(self, hidden: torch.Tensor, input_ids, attention_mask, head=None) -> torch.Tensor:
        """The vector classification heads read: the first token's (encoders), or the last
        non-padding token's (decoders; found as transformers' own ``...ForSequenceClassification``
        finds it: the rightmost token that is not ``pad_token_id``, else the attention mask)."""
        if self.cls_pooling == "first":
            return hidden[:, 0]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        pad = getattr(self.config, "pad_token_id", None)
        if input_ids is not None and pad is not None and input_ids.shape[1] == hidden.shape[1]:
            last = (positions * (input_ids != pad).to(torch.int32)).argmax(-1)
        elif attention_mask is not None and attention_mask.shape[-1] >= hidden.shape[1]:
            mask = attention_mask[:, -hidden.shape[1]:]
            last = (positions * (mask != 0).to(torch.int32)).argmax(-1)
        else:
            last = torch.full_like(rows, hidden.shape[1] - 1)
        return hidden[rows, last]

    def _static_head_as_flexible(self, name: str, meta: dict, state: dict, config_path: str, id2label=None) -> nn.Module:
        """The flexible head ``name`` built from a saved static head (``head_config.json`` of a
        transformers head model: ``"config": null``, its class in ``"model_class"``) and its
        weights ``state``: AdapterHub's static-to-flex head conversion, through the table of
        :func:`convert_to_adapter_model`. Nothing is added to the model."""
        from ..loading import AdapterLoadError

        architecture = meta.get("model_class")
        conversion = _static_conversion(architecture)
        if conversion is None:
            prefix = str(architecture).split("For")[0][:4]
            convertible = sorted(k for k in _HEAD_CONVERSION_TABLE if k.startswith(prefix) and _static_conversion(k))
            raise AdapterLoadError(
                f"{config_path}: no flexible-head conversion for the static head of {architecture!r}; convertible head "
                f"classes include: {', '.join(convertible) or 'none of this family'}."
            )
        labels = copy.deepcopy(self.config)  # the saved head's labels, on a copy of this model's config
        label2id = {str(label): int(index) for index, label in id2label.items()} if id2label else meta.get("label2id")
        if label2id:
            labels.id2label = {int(index): str(label) for label, index in label2id.items()}
            labels.label2id = {str(label): int(index) for label, index in label2id.items()}
        elif isinstance(meta.get("num_labels"), int):
            labels.num_labels = meta["num_labels"]
        head_config = _resolve_head_config(conversion[0], type("SavedHeadModel", (), {"config": labels})())
        try:
            head_type, head_kwargs = _head_arguments(head_config)
            head = self._build_head(head_type, name, **head_kwargs)
            output = head.get_output_embeddings()
            tied = {f"{index}.weight" for index, module in head.named_children() if module is output and self._ties_head(head)}
            _copy_static_head(head, state, conversion, architecture, skip=tied)
        except (AdapterConfigError, KeyError, TypeError, ValueError) as error:
            raise AdapterLoadError(f"{config_path}: {error}") from error
        return head

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a base-model checkpoint, a transformers head-model checkpoint (its head becomes the
        flexible head ``"default"``) or an AdapterModel checkpoint.

        Example::

            >>> model = BertAdapterModel.from_pretrained("path/to/bert-sst2")   # BertForSequenceClassification
            >>> model.active_head
            'default'
        """
        config = kwargs.get("config")
        if not isinstance(config, transformers.PretrainedConfig):
            config_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "subfolder", "token", "local_files_only") if k in kwargs}
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
        architecture = next(iter(getattr(config, "architectures", None) or []), None)
        output_loading_info = kwargs.pop("output_loading_info", False)
        download_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "subfolder", "token") if k in kwargs}
        if _static_conversion(architecture) is not None and not getattr(config, "prediction_heads", None):
            from ..loading import _drop_saved_adapters_entry, restore_adapters, saved_adapters_config

            static, info = getattr(transformers, architecture).from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
            registry = saved_adapters_config(static)  # restored below with the download arguments (subfolder, ...)
            if registry is not None:
                _drop_saved_adapters_entry(static.config)
            model = convert_to_adapter_model(static, adapter_model_class=cls)
            if registry is not None:
                restore_adapters(
                    model, registry, source=pretrained_model_name_or_path,
                    where=f"{pretrained_model_name_or_path}: config.json['adapters']", **download_kwargs,
                )
            return (model, info) if output_loading_info else model
        from ..loading import _IN_FROM_PRETRAINED, finish_from_pretrained  # adapters, fusions, setup of config.adapters

        token = _IN_FROM_PRETRAINED.set(True)  # transformers' PEFT hook is answered; finish_from_pretrained loads
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        finally:
            _IN_FROM_PRETRAINED.reset(token)
        return finish_from_pretrained(model, pretrained_model_name_or_path, download_kwargs, output_loading_info)

    @classmethod
    def can_generate(cls) -> bool:
        """Whether ``generate()`` is available: for the decoder families (pooling at the last token),
        whose language-modelling heads continue a sequence, and for the encoders that take a causal
        LM head (as in AdapterHub); transformers asks this.

        Example::

            >>> GPT2AdapterModel.can_generate(), BertAdapterModel.can_generate(), AlbertAdapterModel.can_generate()
            (True, True, False)
        """
        return cls.cls_pooling in ("last", "eos") or "causal_lm" in cls.head_types


class _EncoderGeneration:
    """``generate()`` on an encoder AdapterModel with a causal LM head (BERT, RoBERTa, ...), as
    AdapterHub runs it: the encoder keeps no KV cache, so every step feeds the whole sequence so far
    (prompt plus generated tokens, the attention mask grown by one 1 per step) and the causal LM
    head's logits at the last position pick the next token. The encoder attends bidirectionally
    unless its config says ``is_decoder=True``.
    """

    def prepare_inputs_for_generation(self, input_ids, past=None, attention_mask=None, **model_kwargs):
        """The inputs of one generation step: all of ``input_ids`` and its attention mask (ones
        where none is given), no cache. ``past`` is AdapterHub's name of a cache; an encoder keeps
        none, so it is ignored, as is any cache ``generate`` offers (and ``token_type_ids``: all
        zeros, as in AdapterHub).

        Example::

            >>> model.add_causal_lm_head("lm")
            >>> model.prepare_inputs_for_generation(torch.tensor([[2, 5, 7]]))["attention_mask"]
            tensor([[1, 1, 1]])
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # other step inputs (token_type_ids, a cache) are left out, as AdapterHub leaves them out
        return {"input_ids": input_ids, "attention_mask": attention_mask}


class _EncoderDecoderBody(_AdapterModelBody):
    """What the encoder-decoder AdapterModel classes (T5, BART, Whisper, ...) add: the heads read
    the decoder's last hidden states, and the decoder gets its inputs as transformers' own head
    models give them.

    * ``decoder_input_ids`` (when neither they nor ``decoder_inputs_embeds`` are given) are the
      ``labels`` shifted right when a ``seq2seq_lm`` head runs with labels
      (``...ForConditionalGeneration``), else ``input_ids`` shifted right (T5's and BART's
      sequence classifiers and QA models);
    * classification heads read the decoder state at the last ``<eos>`` of ``input_ids``
      (``BartForSequenceClassification``, ``T5ForSequenceClassification``).

    ``encoder_outputs``, ``past_key_values``, ``use_cache``, ``decoder_attention_mask``, ... pass
    through to the base model, so ``generate`` encodes once and decodes with the KV cache.
    """

    def _base_model_inputs(self, inputs: dict, head: Optional[str], labels) -> dict:
        inputs = {k: v for k, v in inputs.items() if v is not None}  # Whisper's encoder reads input_features
        if inputs.get("decoder_input_ids") is None and inputs.get("decoder_inputs_embeds") is None:
            if labels is not None and self._runs_head_type(head, ("seq2seq_lm",)):
                inputs["decoder_input_ids"] = self.prepare_decoder_input_ids_from_labels(labels)
            elif inputs.get("input_ids") is not None:
                inputs["decoder_input_ids"] = self.prepare_decoder_input_ids_from_labels(inputs["input_ids"])
        return inputs

    def _runs_head_type(self, head: Optional[str], head_types: tuple) -> bool:
        heads = self._heads_in_force(head) or []
        return any(self.heads[name].config.get("head_type") in head_types for name in heads)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` shifted one position right behind the decoder's start token (``-100`` becomes
        the pad token), by the architecture's own function — mBART wraps the last non-pad token
        (the language code) to the front instead. Data collators for seq2seq call this.

        Example::

            >>> model.prepare_decoder_input_ids_from_labels(torch.tensor([[5, 6, 1]]))
            tensor([[0, 5, 6]])
        """
        return _DECODER_INPUT_SHIFTS[self.config.model_type](self, labels)

    def _sequence_representation(self, hidden: torch.Tensor, input_ids, attention_mask, head=None):
        """The decoder state at the last ``<eos>`` of each row of ``input_ids`` (computed only when a
        classification head runs; the decoder must be as long as the input, as when the decoder
        inputs are ``input_ids`` shifted right)."""
        if not self._runs_head_type(head, ("classification", "multilabel_classification")):
            return None
        if input_ids is None or tuple(input_ids.shape) != tuple(hidden.shape[:2]):
            raise AdapterConfigError(
                f"{type(self).__name__}'s classification heads read the decoder state at the last <eos> token of "
                f"input_ids: pass input_ids and leave decoder_input_ids out (they default to input_ids shifted right)."
            )
        eos = input_ids.eq(self.config.eos_token_id)
        counts = eos.sum(1)
        if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
            raise AdapterConfigError(
                f"Every row of input_ids must hold the same number (at least one) of <eos> tokens "
                f"(eos_token_id={self.config.eos_token_id}); got {counts.tolist()}."
            )
        return hidden[eos].view(hidden.shape[0], -1, hidden.shape[-1])[:, -1]


def _shift_tokens(module_name: str, with_start: bool = True):
    """The architecture's own ``shift_tokens_right`` (BART, mBART, Whisper), imported at the first call."""
    import importlib

    def shift(model, ids):
        function = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}").shift_tokens_right
        if with_start:
            return function(ids, model.config.pad_token_id, model.config.decoder_start_token_id)
        return function(ids, model.config.pad_token_id)

    return shift


# model_type -> (model, ids) -> ids shifted right for the decoder, by transformers' own functions
_DECODER_INPUT_SHIFTS = {
    "t5": lambda model, ids: model._shift_right(ids),  # T5PreTrainedModel's
    "mt5": lambda model, ids: model._shift_right(ids),
    "bart": _shift_tokens("bart"),
    "mbart": _shift_tokens("mbart", with_start=False),  # wraps the language code to the front
    "whisper": _shift_tokens("whisper"),
    "plbart": _shift_tokens("plbart", with_start=False),  # wraps the language id to the front, as mBART
}


def _flatten_choices(input_ids, attention_mask, inputs_embeds, kwargs):
    """``(batch, choices, seq[, hidden])`` inputs as ``(batch·choices, seq[, hidden])``."""

    def flat(value, dims):
        return value.reshape(-1, *value.shape[-dims:]) if isinstance(value, torch.Tensor) and value.dim() > dims else value

    kwargs = {k: flat(v, 1) if k in ("token_type_ids", "position_ids") else v for k, v in kwargs.items()}
    return flat(input_ids, 1), flat(attention_mask, 1), flat(inputs_embeds, 2), kwargs


class _ImageInputs:
    """The forward of an image model's AdapterModel (ViT): ``pixel_values`` in, heads on the
    [CLS] final state (``cls_output``) or the pooler output."""

    def forward(self, pixel_values: Optional[torch.Tensor] = None, head: Optional[str] = None,
                labels: Optional[torch.Tensor] = None, **kwargs):
        """Run the base model on ``pixel_values``, then the head(s) in force (no head: the base
        model's output); ``labels`` give the loss.

        Example::

            >>> out = model(pixel_values=images, labels=labels)
        """
        kwargs.pop("return_dict", None)
        outputs = self.base_model(pixel_values=pixel_values, **kwargs)
        return self._image_heads(outputs, head, labels)

    def _image_heads(self, outputs, head, labels):
        head_kwargs = {} if labels is None else {"labels": labels}
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is not None:
            head_kwargs["pooled_output"] = pooled
        return self.forward_head(outputs, head_name=head, cls_output=outputs[0][:, 0], **head_kwargs)


class _BeitInputs(_ImageInputs):
    """BEiT's AdapterModel forward: as ViT's, but classification heads read the pooler output (the
    mean of the patch states after a norm), as ``BeitForImageClassification`` and AdapterHub do."""

    def _image_heads(self, outputs, head, labels):
        head_kwargs = {} if labels is None else {"labels": labels}
        pooled = outputs.pooler_output
        return self.forward_head(outputs, head_name=head, cls_output=pooled, pooled_output=pooled, **head_kwargs)


class _CLIPInputs(_ImageInputs):
    """The forward of ``CLIPAdapterModel``: texts and images -> ``CLIPModel``'s output (similarities,
    embeddings; under ``Parallel`` one block per branch); images alone -> the vision tower, texts
    alone -> the text tower. Heads (image classification) read the vision tower's final states."""

    def get_input_embeddings(self) -> nn.Module:
        """The text tower's token embedding.

        Example::

            >>> model = CLIPAdapterModel.from_pretrained("openai/clip-vit-base-patch32")
            >>> model.get_input_embeddings() is model.base_model.text_model.get_input_embeddings()
            True
        """
        return self.base_model.text_model.get_input_embeddings()

    def _has_pooler(self) -> bool:
        return True  # the vision tower's pooler output: its class token after post_layernorm

    def forward(self, input_ids: Optional[torch.Tensor] = None, pixel_values: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                return_loss: Optional[bool] = None, head: Optional[str] = None,
                labels: Optional[torch.Tensor] = None, **kwargs):
        """Run CLIP on what is given (see the class docstring), then the head(s) in force on the vision
        tower's output when images were given.

        Example::

            >>> out = model(input_ids=ids, pixel_values=images)        # CLIPOutput
            >>> model.add_image_classification_head("cls", num_labels=10)
            >>> model(pixel_values=images, labels=labels).loss
        """
        kwargs.pop("return_dict", None)
        clip = self.base_model
        text_inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        if input_ids is not None and pixel_values is not None:
            outputs = clip(pixel_values=pixel_values, return_loss=return_loss, **text_inputs, **kwargs)
            vision = outputs.vision_model_output
        elif pixel_values is not None:
            outputs = vision = clip.vision_model(pixel_values=pixel_values, **kwargs)
        elif input_ids is not None:
            outputs, vision = clip.text_model(**text_inputs, **kwargs), None
        else:
            raise AdapterConfigError(
                "CLIPAdapterModel needs input_ids (texts), pixel_values (images) or both; both were None."
            )
        if not self._heads_in_force(head):
            return outputs
        if vision is None:
            raise AdapterConfigError("The active head classifies images; pass pixel_values (or call with head=None).")
        return self._image_heads(vision, head, labels)


class _ModernBertHeads:
    """ModernBERT's own heads (:mod:`adapters.heads.modernbert`) under the usual head types, and
    ``add_*_head`` defaults taken from the model config (``classifier_activation``,
    ``classifier_pooling``)."""

    #: head type -> ModernBERT's head class for it (``add_*_head`` builds these)
    head_classes = MODERNBERT_HEADS

    def add_classification_head(self, head_name: str, num_labels: int = 2, layers: int = 2,
                                activation_function: Optional[str] = None, overwrite_ok: bool = False,
                                multilabel: bool = False, id2label: Optional[dict] = None, use_pooler: bool = False,
                                dropout_prob: Optional[float] = None, pooling: Optional[str] = None) -> None:
        """Add ModernBERT's classification head (``pooling``: ``"cls"`` or ``"mean"``, by default
        ``config.classifier_pooling``; the activation by default ``config.classifier_activation``).

        Example::

            >>> model.add_classification_head("sst2", num_labels=2, pooling="mean")
        """
        self._add_head(
            "multilabel_classification" if multilabel else "classification", head_name, overwrite_ok,
            num_labels=num_labels, layers=layers, activation_function=activation_function, id2label=id2label,
            use_pooler=use_pooler, dropout_prob=dropout_prob, pooling=pooling,
        )

    def add_tagging_head(self, head_name: str, num_labels: int = 2, layers: int = 2,
                         activation_function: Optional[str] = None, overwrite_ok: bool = False,
                         id2label: Optional[dict] = None) -> None:
        """Add ModernBERT's token classification head.

        Example::

            >>> model.add_tagging_head("ner", num_labels=9)
        """
        self._add_head(
            "tagging", head_name, overwrite_ok, num_labels=num_labels, layers=layers,
            activation_function=activation_function, id2label=id2label,
        )

    def add_masked_lm_head(self, head_name: str, activation_function: Optional[str] = None,
                           overwrite_ok: bool = False, **kwargs) -> None:
        """Add ModernBERT's masked LM head (the decoder tied to the token embeddings where the
        model ties them).

        Example::

            >>> model.add_masked_lm_head("mlm")
        """
        self._add_head("masked_lm", head_name, overwrite_ok, activation_function=activation_function, **kwargs)


# model types whose AdapterModel class takes its forward or heads from a class of its own
_EXTRA_BASES = {"vit": _ImageInputs, "beit": _BeitInputs, "clip": _CLIPInputs, "modernbert": _ModernBertHeads}


def _make_class(model_type: str) -> type:
    name, config_name, head_types, pooling = ADAPTER_MODEL_TABLE[model_type]
    config_class = getattr(transformers, config_name)
    base = _pretrained_base_class(transformers.MODEL_MAPPING[config_class])
    body = _EncoderDecoderBody if pooling == "eos" else _AdapterModelBody
    extra = (_EXTRA_BASES[model_type],) if model_type in _EXTRA_BASES else ()
    if pooling == "first" and "causal_lm" in head_types:  # encoders with a causal LM head generate, as in AdapterHub
        extra += (_EncoderGeneration,)
    bases = extra + (body, base) + ((GenerationMixin,) if pooling in ("last", "eos") or "causal_lm" in head_types else ())
    example = (
        'model.add_seq2seq_lm_head("task")' if "seq2seq_lm" in head_types else 'model.add_classification_head("task", num_labels=2)'
    )
    if head_types == ("image_classification",):  # ViT, CLIP
        example = 'model.add_image_classification_head("task", num_labels=2)'
    elif "classification" not in head_types and "causal_lm" in head_types:  # BertGeneration
        example = 'model.add_causal_lm_head("task")'

    doc = (
        f"{base.__name__[: -len('PreTrainedModel')]} with adapters and flexible heads "
        f"({', '.join(head_types)}).\n\n    Example::\n\n"
        f"        >>> model = adapters.{name}.from_pretrained(\"path/to/checkpoint\")\n"
        f"        >>> {example}\n"
    )
    return type(
        name,
        bases,
        {
            "__module__": __name__, "__qualname__": name, "__doc__": doc, "head_types": head_types, "cls_pooling": pooling,
            # Gemma3PreTrainedModel's own config_class is the multimodal Gemma3Config
            "config_class": config_class,
        },
    )


class _AdapterModelClasses(Mapping):
    """model_type -> generated AdapterModel class, each created at its first use: creating one
    imports the architecture's transformers modeling module, which ``import adapters`` should not
    pay for every architecture. A class is created once (under a lock) and is then also a
    module attribute, so ``isinstance`` checks and pickling see one class per model type."""

    def __init__(self):
        self._classes: dict[str, type] = {}
        self._lock = threading.RLock()

    def __getitem__(self, model_type: str) -> type:
        cls = self._classes.get(model_type)
        if cls is None:
            if model_type not in ADAPTER_MODEL_TABLE:
                raise KeyError(model_type)
            with self._lock:
                cls = self._classes.get(model_type)
                if cls is None:
                    cls = _make_class(model_type)
                    globals()[cls.__name__] = cls
                    self._classes[model_type] = cls
        return cls

    def __contains__(self, model_type) -> bool:
        return model_type in ADAPTER_MODEL_TABLE

    def __iter__(self):
        return iter(ADAPTER_MODEL_TABLE)

    def __len__(self) -> int:
        return len(ADAPTER_MODEL_TABLE)

    def __repr__(self) -> str:
        return f"<AdapterModel classes of {', '.join(ADAPTER_MODEL_TABLE)}>"


#: model_type -> generated AdapterModel class (a read-only mapping; each class is created at its first use)
ADAPTER_MODEL_CLASSES: Mapping[str, type] = _AdapterModelClasses()


class _AdapterModelMapping(Mapping):
    """AdapterHub's ``ADAPTER_MODEL_MAPPING``: transformers config class -> AdapterModel class.

    A view of :data:`ADAPTER_MODEL_TABLE` (the table ``AutoAdapterModel`` reads), so every
    architecture added there appears here; like :data:`ADAPTER_MODEL_CLASSES` it creates a class
    only when it is looked up. Keys are the config classes themselves (``BertConfig``), as in
    AdapterHub and transformers' own ``MODEL_MAPPING``.

    Example::

        >>> from transformers import BertConfig
        >>> adapters.ADAPTER_MODEL_MAPPING[BertConfig]
        <class 'adapters.heads.adapter_model.BertAdapterModel'>
        >>> BertConfig in adapters.ADAPTER_MODEL_MAPPING
        True
    """

    @staticmethod
    def _model_types() -> dict:
        return {getattr(transformers, entry[1]): model_type for model_type, entry in ADAPTER_MODEL_TABLE.items()}

    def __getitem__(self, config_class) -> type:
        model_type = self._model_types().get(config_class)
        if model_type is None:
            raise KeyError(config_class)
        return ADAPTER_MODEL_CLASSES[model_type]

    def __contains__(self, config_class) -> bool:
        return config_class in self._model_types()

    def __iter__(self):
        return iter(self._model_types())

    def __len__(self) -> int:
        return len(ADAPTER_MODEL_TABLE)

    def __repr__(self) -> str:
        return f"<AdapterModel classes of {', '.join(entry[1] for entry in ADAPTER_MODEL_TABLE.values())}>"


#: transformers config class -> AdapterModel class (AdapterHub's ``ADAPTER_MODEL_MAPPING``; read-only)
ADAPTER_MODEL_MAPPING: Mapping[type, type] = _AdapterModelMapping()
__all__ += [entry[0] for entry in ADAPTER_MODEL_TABLE.values()]


def __getattr__(name: str):
    # the AdapterModel classes (BertAdapterModel, ...) and STATIC_HEAD_CONVERSIONS are built at their first use
    if name == "STATIC_HEAD_CONVERSIONS":
        value = globals()[name] = _static_head_conversions()
        return value
    model_type = next((model_type for model_type, entry in ADAPTER_MODEL_TABLE.items() if entry[0] == name), None)
    if model_type is not None:
        return ADAPTER_MODEL_CLASSES[model_type]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"STATIC_HEAD_CONVERSIONS"} | {entry[0] for entry in ADAPTER_MODEL_TABLE.values()})


def _adapter_model_class(config) -> type:
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTER_MODEL_CLASSES:
        raise AdapterConfigError(
            f"No AdapterModel class for model type {model_type!r}; available: {', '.join(sorted(ADAPTER_MODEL_CLASSES))}."
        )
    return ADAPTER_MODEL_CLASSES[model_type]


class AutoAdapterModel:
    """Picks the AdapterModel class of a checkpoint's model type.

    Example::

        >>> model = AutoAdapterModel.from_pretrained("path/to/llama")
        >>> model.add_causal_lm_head("lm", layers=1, bias=False)
    """

    def __init__(self):
        raise EnvironmentError("AutoAdapterModel is used through AutoAdapterModel.from_pretrained / from_config.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a checkpoint into the AdapterModel class of its model type (see the class docs).

        Example::

            >>> model = AutoAdapterModel.from_pretrained("roberta-base")   # a RobertaAdapterModel
            >>> model.add_classification_head("sentiment", num_labels=2)
        """
        config = kwargs.get("config")
        if not isinstance(config, transformers.PretrainedConfig):
            config_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "subfolder", "token", "local_files_only") if k in kwargs}
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
        return _adapter_model_class(config).from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def from_config(cls, config, **kwargs):
        """A randomly initialised AdapterModel for ``config``.

        Example::

            >>> model = AutoAdapterModel.from_config(BertConfig(num_hidden_layers=2))
        """
        return _adapter_model_class(config)._from_config(config, **kwargs)


def convert_to_adapter_model(model: PreTrainedModel, adapter_model_class: Optional[type] = None, head_name: str = "default"):
    """An AdapterModel holding ``model``'s base model (the same module, not a copy) and, where
    ``model`` is a transformers head model (``BertForSequenceClassification``, ``LlamaForCausalLM``,
    ...), its head as flexible head ``head_name`` with the same weights (AdapterHub's static head
    conversion). Adapters already added to the base model stay.

    Raises:
        AdapterConfigError: no AdapterModel class for the model type, or its head class has no conversion
            (the message lists the convertible ones).

    Example::

        >>> static = BertForSequenceClassification.from_pretrained("path")
        >>> model = adapters.convert_to_adapter_model(static)
        >>> torch.equal(model(**batch).logits, static(**batch).logits)
        True
    """
    cls = adapter_model_class or _adapter_model_class(model.config)
    architecture = type(model).__name__
    conversion = _static_conversion(architecture)
    if model.base_model is not model and conversion is None:
        prefix = architecture.split("For")[0][:4]
        convertible = sorted(k for k in _HEAD_CONVERSION_TABLE if k.startswith(prefix) and _static_conversion(k))
        raise AdapterConfigError(f"No flexible-head conversion for {architecture}; convertible classes include: {', '.join(convertible)}.")
    has_head = conversion is not None
    base = _base_of(model) if has_head else model
    config = copy.deepcopy(model.config)
    config.prediction_heads = {}
    config.architectures = [cls.__name__]
    with torch.device("meta"):
        new = cls(config)
    new.__dict__.pop("_adapters_registry", None)
    setattr(new, new.base_model_prefix, base)
    new.__dict__.update({k: base.__dict__[k] for k in _ADAPTER_STATE_KEYS if k in base.__dict__})
    if "_adapters_registry" not in base.__dict__:  # a model that never had adapters: patch it now
        from ..initialize import init

        for key in _ADAPTER_STATE_KEYS[1:]:
            new.__dict__.pop(key, None)
        init(new)
    elif new.__dict__["_adapters_spec"].is_encoder_decoder:
        from ..forward import install_stack_entries

        install_stack_entries(new, new.__dict__["_adapters_spec"])  # the encoder opens the new model's context
    new.train(model.training)
    if has_head:
        head_config, layers, extra = conversion
        head_config = _resolve_head_config(head_config, model)
        head_type, head_kwargs = _head_arguments(head_config)
        head = new._build_head(head_type, head_name, **head_kwargs)
        _copy_static_head(head, model.state_dict(), conversion, architecture)
        new.add_prediction_head(head, overwrite_ok=True, set_active=True)
    return new


def _copy_static_head(head: nn.Module, static_state: dict, conversion: tuple, architecture: str, skip=frozenset()) -> None:
    """Copy a static head's weights (``static_state``, keys as in the transformers head model) into
    the flexible head built from ``conversion``; ``skip``: flexible keys (``"3.weight"``) not taken
    from the static state (a tied output matrix)."""
    _, layers, extra = conversion
    with torch.no_grad():
        for index, path in layers.items():
            for key, param in head[index].named_parameters(recurse=False):
                if f"{index}.{key}" in skip:
                    continue
                static_key = _first_present(static_state, path, key)
                if static_key is not None:
                    if static_state[static_key].shape != param.shape:
                        raise AdapterConfigError(
                            f"Cannot convert {architecture}'s head: {static_key} has shape "
                            f"{tuple(static_state[static_key].shape)}, the flexible head's {index}.{key} {tuple(param.shape)}."
                        )
                    param.copy_(static_state[static_key])
                elif f"{index}.{key}" not in extra:
                    raise AdapterConfigError(
                        f"Cannot convert {architecture}'s head: the checkpoint has no {path}.{key} for the flexible "
                        f"head's {index}.{key}."
                    )
        for key, static_keys in extra.items():
            static_key = _first_present(static_state, static_keys)
            if static_key is not None:  # BART's final_logits_bias is (1, vocab): the head's bias (vocab,)
                parameter = head.get_parameter(key)
                parameter.copy_(static_state[static_key].reshape(parameter.shape))


def _base_of(model: PreTrainedModel) -> nn.Module:
    """The base model of a transformers head model. T5's LM and QA models hold ``shared``,
    ``encoder`` and ``decoder`` themselves (no ``T5Model`` inside, so ``model.base_model`` is the
    model): their modules — adapters included — are gathered into a ``T5Model`` built on the meta
    device, the same module objects, not copies."""
    if model.base_model is not model:
        return model.base_model
    head_modules = {path.split(".")[0] for path in _static_conversion(type(model).__name__)[1].values()}
    with torch.device("meta"):
        shell = _base_model_class(model.config)(model.config)
    missing = [name for name in shell._modules if name not in model._modules]
    if missing:
        raise AdapterConfigError(f"Cannot convert {type(model).__name__}: it has no {', '.join(missing)} for its base model.")
    for name, module in model._modules.items():
        if name not in head_modules:
            shell._modules[name] = module
    if "_adapters_registry" in model.__dict__:  # adapters added to the head model: the shell carries them
        from ..model_mixin import ModelAdaptersMixin
        from ..hooks.patching import swap_class

        swap_class(shell, ModelAdaptersMixin, keep_name=True)
        for key in _ADAPTER_STATE_KEYS:
            shell.__dict__[key] = model.__dict__[key]
    shell.config = model.config
    shell.train(model.training)
    return shell


def _first_present(state: dict, paths, key: Optional[str] = None) -> Optional[str]:
    """The first of ``paths`` (a key, or alternatives) present in ``state`` (with ``.key`` appended
    when given); None if none is (a parameter the model does not have, e.g. a bias of a layer saved
    without one)."""
    for path in (paths,) if isinstance(paths, str) else paths:
        candidate = f"{path}.{key}" if key else path
        if candidate in state:
            return candidate
    return None


def _resolve_head_config(head_config: dict, model) -> dict:
    """Fill in a conversion's head config from the static model: labels, and values named by
    config attribute (``"$hidden_act"``, ``"$final_logit_softcapping"``; a missing one is None)."""
    config = {
        key: getattr(model.config, value[1:], None) if isinstance(value, str) and value.startswith("$") else value
        for key, value in head_config.items()
    }
    id2label = getattr(model.config, "id2label", None) or {}
    if config["head_type"] == "multiple_choice":
        config["num_choices"] = 2  # transformers' multiple-choice models score any number of choices
    elif config["head_type"] not in ("masked_lm", "causal_lm", "seq2seq_lm"):
        config["num_labels"] = model.config.num_labels if config["head_type"] != "question_answering" else 2
        if config["head_type"] != "question_answering":
            config["id2label"] = {int(k): v for k, v in id2label.items()}
    else:
        config["vocab_size"] = model.config.vocab_size
    return config
