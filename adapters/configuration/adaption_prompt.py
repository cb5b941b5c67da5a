"""Llama-Adapter's adaption prompts (the config; the math is in
:mod:`adapters.methods.adaption_prompt`)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

from .base import AdapterConfig, register_config
from .validation import check_int, check_seed, config_error

__all__ = ["AdaptionPromptConfig"]


@dataclasses.dataclass(eq=False)
class AdaptionPromptConfig(AdapterConfig):
    """Llama-Adapter (Zhang et al., 2023, "LLaMA-Adapter: Efficient Fine-tuning of Language
    Models with Zero-init Attention"): ``adapter_len`` learned prompt vectors in each of the top
    ``adapter_layers`` attention layers, attended to by every token through a separate softmax
    whose result is scaled by a gate initialised to zero. The field names are PEFT's
    (``peft.AdaptionPromptConfig``), so PEFT checkpoints load and save one to one.

    Args:
        adapter_len: number of prompt vectors per adapted layer (the paper uses 10).
        adapter_layers: number of adapted layers, counted from the top (the paper adapts the top
            30 of LLaMA-7B's 32). None adapts every layer.
        target_modules: PEFT's name of the attention module of a layer (``"self_attn"`` for the
            Llama family, ``"attn"`` for GPT-2); None means the attention module of the model's
            architecture spec. Any other name is refused: the prompt lives in the attention.
        init_weights_seed: seed for the prompt's initialisation (None: the global RNG).

    Example::

        >>> from adapters import AdaptionPromptConfig
        >>> model.add_adapter("llama_adapter", config=AdaptionPromptConfig(adapter_len=10, adapter_layers=30))
    """

    architecture: ClassVar[str] = "adaption_prompt"

    adapter_len: int = 10
    adapter_layers: Optional[int] = None
    target_modules: Optional[str] = None
    init_weights_seed: Optional[int] = None

    def __post_init__(self):
        """Every value check of Llama-Adapter, in one place."""
        name = type(self).__name__
        check_int(name, "adapter_len", self.adapter_len, minimum=1)  # the number of prompt vectors
        check_int(name, "adapter_layers", self.adapter_layers, minimum=1, optional=True)  # None: every layer
        if self.target_modules is not None and (not isinstance(self.target_modules, str) or not self.target_modules):
            raise config_error(
                name, "target_modules", self.target_modules, "the name of the attention module of a layer (e.g. 'self_attn') or None"
            )
        check_seed(name, "init_weights_seed", self.init_weights_seed)


register_config("adaption_prompt", AdaptionPromptConfig())
register_config("llama_adapter", AdaptionPromptConfig())
