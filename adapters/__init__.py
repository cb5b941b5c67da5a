"""adapters: named, composable adapters for Hugging Face transformers 5 models.

Example::

    >>> import adapters
    >>> from adapters import Stack, Fuse
    >>> adapters.init(model)
    >>> model.add_adapter("lang", config="seq_bn")
    >>> model.add_adapter("task", config="seq_bn")
    >>> model.train_adapter(Stack("lang", "task"))
"""

from .version import __version__

from . import composition, logging
from .composition import (
    AdapterCompositionBlock,
    Average,
    BatchSplit,
    Fuse,
    MultiTask,
    Parallel,
    Split,
    Stack,
    parse_composition,
    validate_composition,
)
from .configuration import (
    ADAPTER_CONFIG_MAP,
    DEFAULT_ADAPTER_CONFIG,
    DEFAULT_ADAPTERFUSION_CONFIG,
    AdaLoRAConfig,
    AdaptionPromptConfig,
    LoHaConfig,
    LoKrConfig,
    OFTConfig,
    WeightTargetingConfig,
    ADAPTERFUSION_CONFIG_MAP,
    AdapterConfig,
    AdapterFusionConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    ConfigUnion,
    AdapterPlusConfig,
    DoubleSeqBnConfig,
    DoRAConfig,
    DvoRAConfig,
    VeraConfig,
    DoubleSeqBnInvConfig,
    DynamicAdapterFusionConfig,
    DynamicFusionConfig,
    IA3Config,
    LoftQConfig,
    LoRAConfig,
    MAMConfig,
    ModelAdaptersConfig,
    MTLLoRAConfig,
    MultiTaskConfig,
    ParBnConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    ReftConfig,
    LoReftConfig,
    NoReftConfig,
    DiReftConfig,
    SeqBnConfig,
    SeqBnInvConfig,
    StaticAdapterFusionConfig,
    StaticFusionConfig,
    UniPELTConfig,
)
from .context import AdapterSetup, ForwardContext
# configs that live with their method (adapters/methods/<family>.py); importing them registers every family
from .methods.hra import HRAConfig
from .errors import AdapterConfigError, AdapterError, AdapterLoadError, AdapterMergeError, CompositionError
from .embeddings import EmbeddingAdaptersMixin
from .model_mixin import ModelAdaptersMixin
from .initialize import init
from .models import SUPPORTED_MODEL_TYPES, ArchitectureSpec, ResidualHook, StackSpec, register_architecture
from .models import supported_model_types
from .interface import AdapterMethod, AdapterModelInterface
# AdapterHub's plug-in loader and marker classes (issue 23)
from .wrappers import init_adapters_config, load_model
from .static_heads import ModelWithHeadsAdaptersMixin
from .methods.invertible import InvertibleAdaptersMixin, InvertibleAdaptersWrapperMixin

# Names provided at their first use (PEP 562 __getattr__ below), so that `import adapters` stays light:
# each AdapterModel class is created on first use (creating it imports the architecture's modeling
# module), and the Trainer integration imports transformers' Trainer (and with it accelerate and peft).
_LAZY_NAMES = {
    "AdapterTrainer": "trainer",
    "AdaLoraCallback": "trainer",
    "Seq2SeqAdapterTrainer": "trainer",
    "AdapterArguments": "training",
    "setup_adapter_training": "training",
    "MultiHeadOutput": "heads",
    "PredictionHead": "heads",
    "register_custom_head": "heads",
    "AutoAdapterModel": "heads.adapter_model",
    "convert_to_adapter_model": "heads.adapter_model",
    "ModelWithFlexibleHeadsAdaptersMixin": "heads",
    "ADAPTER_MODEL_MAPPING": "heads.adapter_model",
    **{
        name: "heads"
        for name in (
            "BertStyleMaskedLMHead", "CausalLMHead", "ClassificationHead", "ImageClassificationHead", "MultiLabelClassificationHead",
            "MultipleChoiceHead", "QuestionAnsweringHead", "Seq2SeqLMHead", "TaggingHead",
            "BiaffineParsingHead", "DependencyParsingOutput",
        )
    },
    "get_adapter_config_hash": "utils",
    **{
        name: "heads.adapter_model"
        for name in (
            "AlbertAdapterModel", "BertAdapterModel", "DebertaV2AdapterModel", "DistilBertAdapterModel",
            "ElectraAdapterModel", "GPT2AdapterModel", "Gemma2AdapterModel", "Gemma3TextAdapterModel",
            "GPTJAdapterModel", "GPTNeoXAdapterModel", "LlamaAdapterModel", "MistralAdapterModel", "Phi3AdapterModel",
            "Qwen2AdapterModel", "Qwen3AdapterModel", "RobertaAdapterModel", "XLMRobertaAdapterModel",
            # encoder-decoders (seq2seq_lm heads)
            "BartAdapterModel", "MBartAdapterModel", "MT5AdapterModel", "T5AdapterModel", "WhisperAdapterModel",
            # image models, ModernBERT's own heads, CLIP
            "CLIPAdapterModel", "ModernBertAdapterModel", "ViTAdapterModel",
            # issue 23's architectures
            "BeitAdapterModel", "BertGenerationAdapterModel", "DebertaAdapterModel", "PLBartAdapterModel",
            "XmodAdapterModel", "PhiAdapterModel",
        )
    },
}
_LAZY_SUBMODULES = {"heads", "trainer", "training", "utils"}

import typing as _typing  # noqa: E402

if _typing.TYPE_CHECKING:  # for type checkers and IDEs (the generated AdapterModel classes have no static definition)
    from .heads import ModelWithFlexibleHeadsAdaptersMixin, MultiHeadOutput, PredictionHead, register_custom_head
    from .heads import (
        BertStyleMaskedLMHead, CausalLMHead, ClassificationHead, ImageClassificationHead, MultiLabelClassificationHead,
        MultipleChoiceHead, QuestionAnsweringHead, Seq2SeqLMHead, TaggingHead,
        BiaffineParsingHead, DependencyParsingOutput,
    )
    from .heads.adapter_model import ADAPTER_MODEL_MAPPING, AutoAdapterModel, convert_to_adapter_model
    from .trainer import AdaLoraCallback, AdapterTrainer, Seq2SeqAdapterTrainer
    from .training import AdapterArguments, setup_adapter_training
    from .utils import get_adapter_config_hash

__all__ = [
    "ADAPTER_CONFIG_MAP",
    "DEFAULT_ADAPTER_CONFIG",
    "DEFAULT_ADAPTERFUSION_CONFIG",
    "AdapterCompositionBlock",
    "validate_composition",
    "AdaLoRAConfig",
    "AdaLoraCallback",
    "AdaptionPromptConfig",
    "HRAConfig",
    "ReftConfig",
    "LoReftConfig",
    "NoReftConfig",
    "DiReftConfig",
    "MTLLoRAConfig",
    "MultiTask",
    "MultiTaskConfig",
    "LoHaConfig",
    "LoKrConfig",
    "OFTConfig",
    "WeightTargetingConfig",
    "ADAPTERFUSION_CONFIG_MAP",
    "AdapterConfig",
    "AdapterFusionConfig",
    "AdapterConfigError",
    "AdapterError",
    "AdapterLoadError",
    "AdapterMergeError",
    "CompositionError",
    "AdapterMethod",
    "AdapterModelInterface",
    "AdapterSetup",
    "AdapterTrainer",
    "Seq2SeqAdapterTrainer",
    "AdapterArguments",
    "setup_adapter_training",
    "ModelWithFlexibleHeadsAdaptersMixin",
    "ModelWithHeadsAdaptersMixin",
    "InvertibleAdaptersMixin",
    "InvertibleAdaptersWrapperMixin",
    "load_model",
    "init_adapters_config",
    "ADAPTER_MODEL_MAPPING",
    "BertStyleMaskedLMHead",
    "CausalLMHead",
    "ClassificationHead",
    "ImageClassificationHead",
    "MultiLabelClassificationHead",
    "MultipleChoiceHead",
    "QuestionAnsweringHead",
    "Seq2SeqLMHead",
    "TaggingHead",
    "BiaffineParsingHead",
    "DependencyParsingOutput",
    "EmbeddingAdaptersMixin",
    "get_adapter_config_hash",
    "ArchitectureSpec",
    "Average",
    "BatchSplit",
    "BnConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "ConfigUnion",
    "AdapterPlusConfig",
    "DoubleSeqBnConfig",
    "DoRAConfig",
    "DvoRAConfig",
    "VeraConfig",
    "DoubleSeqBnInvConfig",
    "DynamicAdapterFusionConfig",
    "DynamicFusionConfig",
    "ForwardContext",
    "IA3Config",
    "LoRAConfig",
    "LoftQConfig",
    "Fuse",
    "MAMConfig",
    "ModelAdaptersConfig",
    "ModelAdaptersMixin",
    "Parallel",
    "ParBnConfig",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "ResidualHook",
    "SUPPORTED_MODEL_TYPES",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "Split",
    "Stack",
    "StackSpec",
    "StaticAdapterFusionConfig",
    "StaticFusionConfig",
    "UniPELTConfig",
    "composition",
    "init",
    "logging",
    "parse_composition",
    "register_architecture",
    "supported_model_types",
    # flexible heads (adapters.heads, adapters.heads.adapter_model)
    "AutoAdapterModel",
    "BertAdapterModel",
    "DebertaV2AdapterModel",
    "DistilBertAdapterModel",
    "ElectraAdapterModel",
    "GPT2AdapterModel",
    "Gemma2AdapterModel",
    "Gemma3TextAdapterModel",
    "GPTJAdapterModel",
    "GPTNeoXAdapterModel",
    "AlbertAdapterModel",
    "LlamaAdapterModel",
    "MistralAdapterModel",
    "MultiHeadOutput",
    "PredictionHead",
    "Phi3AdapterModel",
    "Qwen2AdapterModel",
    "Qwen3AdapterModel",
    "RobertaAdapterModel",
    "XLMRobertaAdapterModel",
    "convert_to_adapter_model",
    "register_custom_head",
    # image models, ModernBERT's own heads, CLIP
    "CLIPAdapterModel",
    "ModernBertAdapterModel",
    "ViTAdapterModel",
]
__all__ += ["BartAdapterModel", "MBartAdapterModel", "MT5AdapterModel", "T5AdapterModel", "WhisperAdapterModel"]
__all__ += [
    "BeitAdapterModel", "BertGenerationAdapterModel", "DebertaAdapterModel", "PLBartAdapterModel", "XmodAdapterModel",
    "PhiAdapterModel",
]


def __getattr__(name):
    # PEP 562: the names of _LAZY_NAMES are imported (and the AdapterModel classes created) when first
    # asked for, then kept as attributes of the package
    import importlib

    if name in _LAZY_SUBMODULES:  # `adapters.heads.X` without importing adapters.heads first
        return importlib.import_module(f"{__name__}.{name}")
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'adapters' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY_NAMES))
