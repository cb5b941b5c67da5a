"""Prefix tuning, prompt tuning, and the MAM / UniPELT unions. The math is in
:mod:`adapters.methods.prefix_tuning` and :mod:`adapters.methods.prompt_tuning`."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

from ..errors import AdapterConfigError
from .base import AdapterConfig, ConfigUnion, register_config
from .bottleneck import BnConfig, ParBnConfig, SeqBnConfig
from .lora import LoRAConfig
from .validation import (
    check_activation,
    check_bool,
    check_choice,
    check_int,
    check_layer_indices,
    check_probability,
    check_seed,
    check_str,
)

__all__ = ["PrefixTuningConfig", "PromptTuningConfig", "MAMConfig", "UniPELTConfig"]


@dataclasses.dataclass(eq=False)
class PrefixTuningConfig(AdapterConfig):
    """Prefix tuning (Li & Liang, 2021): learned key/value vectors prepended to every attention
    layer's keys and values.

    Args:
        prefix_length: number of prefix positions per layer.
        flat: learn the prefix directly (True) instead of through the MLP reparameterisation
            ``MLP(E)`` of a small embedding ``E`` (False, the paper's training setup).
        bottleneck_size: hidden size of the reparameterisation MLP.
        non_linearity: its activation (a name from transformers' ``ACT2FN``).
        dropout: dropout on the prefix states.
        encoder_prefix: put prefixes into encoder self-attention (encoder-decoder models).
        cross_prefix: put prefixes into cross-attention (encoder-decoder models).
        leave_out: layer indices without a prefix.
        use_gating: scale each layer's prefix keys and values by a learned gate
            ``g = mean_t σ(W_g h_t + b_g)`` of the attention input ``h`` (UniPELT).
        shared_gating: one gate for keys and values (True) or one each (False).
        shift_positions: number the real tokens from ``prefix_length`` on, as when the prefix
            is fed to the model as past keys/values (PEFT's prefix tuning and Li & Liang's
            implementation). False (AdapterHub's behaviour) keeps positions unchanged. Models
            with relative positions (RoPE) or absolute position embeddings give different
            numbers with the two choices; PEFT checkpoints load with True.
        init_weights_seed: seed for the initialisation (None: the global RNG).

    Example::

        >>> model.add_adapter("prefix", config=PrefixTuningConfig(prefix_length=30, flat=True))
    """

    architecture: ClassVar[str] = "prefix_tuning"

    prefix_length: int = 30
    flat: bool = False
    bottleneck_size: int = 512
    non_linearity: str = "tanh"
    dropout: float = 0.0
    encoder_prefix: bool = True
    cross_prefix: bool = True
    leave_out: tuple = ()
    use_gating: bool = False
    shared_gating: bool = True
    shift_positions: bool = False
    init_weights_seed: Optional[int] = None

    def __post_init__(self):
        """Every value check of prefix tuning, in one place."""
        name = type(self).__name__
        for field in ("flat", "encoder_prefix", "cross_prefix", "use_gating", "shared_gating", "shift_positions"):
            check_bool(name, field, getattr(self, field))
        object.__setattr__(self, "leave_out", check_layer_indices(name, "leave_out", self.leave_out))
        check_int(name, "prefix_length", self.prefix_length, minimum=1)
        check_int(name, "bottleneck_size", self.bottleneck_size, minimum=1)
        check_activation(name, "non_linearity", self.non_linearity)
        check_probability(name, "dropout", self.dropout)
        check_seed(name, "init_weights_seed", self.init_weights_seed)


@dataclasses.dataclass(eq=False)
class PromptTuningConfig(AdapterConfig):
    """Prompt tuning (Lester et al., 2021): learned input embeddings joined to the token
    embeddings of every input.

    Args:
        prompt_length: number of soft-prompt positions.
        prompt_init: ``"random_uniform"`` or ``"from_string"`` (the embeddings of the tokens of
            ``prompt_init_text``, repeated to ``prompt_length``).
        prompt_init_text: the text for ``"from_string"``.
        tokenizer_name_or_path: the tokenizer (name or folder) that turns ``prompt_init_text``
            into token ids; default: the model's ``config.name_or_path``.
        combine: ``"prefix"`` (prompt before the first token) or ``"prefix_after_bos"`` (after
            the first token, which is usually the BOS token).
        init_weights_seed: seed for the initialisation (None: the global RNG).

    Example::

        >>> model.add_adapter("prompt", config=PromptTuningConfig(prompt_length=20))
    """

    architecture: ClassVar[str] = "prompt_tuning"

    prompt_length: int = 10
    prompt_init: str = "random_uniform"
    prompt_init_text: Optional[str] = None
    combine: str = "prefix"
    tokenizer_name_or_path: Optional[str] = None
    init_weights_seed: Optional[int] = None

    def __post_init__(self):
        """Every value check of prompt tuning, in one place."""
        name = type(self).__name__
        check_int(name, "prompt_length", self.prompt_length, minimum=1)
        check_choice(name, "prompt_init", self.prompt_init, ("random_uniform", "from_string"))
        check_str(name, "prompt_init_text", self.prompt_init_text, optional=True)
        if self.prompt_init == "from_string" and not self.prompt_init_text:
            raise AdapterConfigError(
                f"{name}: prompt_init='from_string' needs prompt_init_text (the text whose embeddings start the prompt)."
            )
        check_choice(name, "combine", self.combine, ("prefix", "prefix_after_bos"))
        check_str(name, "tokenizer_name_or_path", self.tokenizer_name_or_path, optional=True)
        check_seed(name, "init_weights_seed", self.init_weights_seed)


@dataclasses.dataclass(init=False, eq=False)
class MAMConfig(ConfigUnion):
    """Mix-and-Match adapter (He et al., 2021): prefix tuning in attention plus a scaled
    parallel bottleneck next to the feed-forward block.

    Args:
        prefix_tuning: the prefix part (default ``PrefixTuningConfig(bottleneck_size=800)``).
        adapter: the bottleneck part (default :class:`~adapters.ParBnConfig`).

    Example::

        >>> model.add_adapter("mam", config="mam")
    """

    def __init__(self, prefix_tuning: Optional[PrefixTuningConfig] = None, adapter: Optional[BnConfig] = None):
        super().__init__(prefix_tuning or PrefixTuningConfig(bottleneck_size=800), adapter or ParBnConfig())


@dataclasses.dataclass(init=False, eq=False)
class UniPELTConfig(ConfigUnion):
    """UniPELT (Mao et al., 2022): gated prefix tuning, a gated sequential bottleneck and gated
    LoRA under one name; each gate learns how much its method contributes.

    Args:
        prefix_tuning: default ``PrefixTuningConfig(prefix_length=10)``.
        adapter: default ``SeqBnConfig(reduction_factor=16)``.
        lora: default ``LoRAConfig(r=8, alpha=2)``.

    All three get ``use_gating=True``.

    Example::

        >>> model.add_adapter("unipelt", config="unipelt")
    """

    def __init__(
        self,
        prefix_tuning: Optional[PrefixTuningConfig] = None,
        adapter: Optional[BnConfig] = None,
        lora: Optional[LoRAConfig] = None,
    ):
        parts = [
            prefix_tuning or PrefixTuningConfig(prefix_length=10),
            adapter or SeqBnConfig(reduction_factor=16),
            lora or LoRAConfig(r=8, alpha=2),
        ]
        super().__init__(*[part.replace(use_gating=True) for part in parts])


register_config("prefix_tuning", PrefixTuningConfig())
register_config("prefix_tuning_flat", PrefixTuningConfig(flat=True))
register_config("prompt_tuning", PromptTuningConfig())
register_config("mam", MAMConfig())
register_config("unipelt", UniPELTConfig())
