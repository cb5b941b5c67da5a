"""adapters: named, composable adapters for Hugging Face transformers 5 models.

Example::

    >>> import adapters
    >>> from adapters import Stack, Fuse
    >>> adapters.init(model)
    >>> model.add_adapter("lang", config="seq_bn")
    >>> model.add_adapter("task", config="seq_bn")
    >>> model.train_adapter(Stack("lang", "task"))
"""

__version__ = "0.1.0"

from . import composition
from .composition import Average, BatchSplit, Fuse, Parallel, Split, Stack, parse_composition
from .configuration import (
    ADAPTER_CONFIG_MAP,
    AdaLoRAConfig,
    AdaptionPromptConfig,
    HRAConfig,
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
    DoubleSeqBnConfig,
    DoRAConfig,
    DoubleSeqBnInvConfig,
    DynamicAdapterFusionConfig,
    DynamicFusionConfig,
    IA3Config,
    LoftQConfig,
    LoRAConfig,
    MAMConfig,
    ModelAdaptersConfig,
    ParBnConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    SeqBnConfig,
    SeqBnInvConfig,
    StaticAdapterFusionConfig,
    StaticFusionConfig,
    UniPELTConfig,
)
from .context import AdapterSetup, ForwardContext
from .loading import AdapterLoadError
from .model_mixin import ModelAdaptersMixin
from .models import SUPPORTED_MODEL_TYPES, ArchitectureSpec, ResidualHook, init, register_architecture
from .interface import AdapterMethod, AdapterModelInterface
from .heads import MultiHeadOutput, PredictionHead, register_custom_head
from .models.adapter_model import (
    AutoAdapterModel,
    BertAdapterModel,
    DebertaV2AdapterModel,
    DistilBertAdapterModel,
    ElectraAdapterModel,
    GPT2AdapterModel,
    Gemma2AdapterModel,
    Gemma3TextAdapterModel,
    GPTJAdapterModel,
    GPTNeoXAdapterModel,
    AlbertAdapterModel,
    LlamaAdapterModel,
    MistralAdapterModel,
    Phi3AdapterModel,
    Qwen2AdapterModel,
    Qwen3AdapterModel,
    RobertaAdapterModel,
    XLMRobertaAdapterModel,
    convert_to_adapter_model,
)
from .models.adapter_model import (  # encoder-decoders (seq2seq_lm heads)
    BartAdapterModel,
    MBartAdapterModel,
    MT5AdapterModel,
    T5AdapterModel,
    WhisperAdapterModel,
)
from .models.adapter_model import CLIPAdapterModel, ModernBertAdapterModel, ViTAdapterModel

__all__ = [
    "ADAPTER_CONFIG_MAP",
    "AdaLoRAConfig",
    "AdaLoraCallback",
    "AdaptionPromptConfig",
    "HRAConfig",
    "LoHaConfig",
    "LoKrConfig",
    "OFTConfig",
    "WeightTargetingConfig",
    "ADAPTERFUSION_CONFIG_MAP",
    "AdapterConfig",
    "AdapterFusionConfig",
    "AdapterLoadError",
    "AdapterMethod",
    "AdapterModelInterface",
    "AdapterSetup",
    "AdapterTrainer",
    "ArchitectureSpec",
    "Average",
    "BatchSplit",
    "BnConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "ConfigUnion",
    "DoubleSeqBnConfig",
    "DoRAConfig",
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
    "StaticAdapterFusionConfig",
    "StaticFusionConfig",
    "UniPELTConfig",
    "composition",
    "init",
    "parse_composition",
    "register_architecture",
    # flexible heads (adapters.heads, adapters.models.adapter_model)
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


def __getattr__(name):
    # transformers' Trainer (and with it accelerate and peft) takes seconds to import: load the
    # Trainer integration only when it is asked for
    if name in ("AdapterTrainer", "AdaLoraCallback"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'adapters' has no attribute {name!r}")
