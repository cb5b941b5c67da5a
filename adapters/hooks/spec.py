"""Declarative architecture specs: where a family keeps its layers, residual blocks and
projections. One small spec per family; :func:`adapters.init` does the rest.

A bottleneck position is described by a :class:`ResidualHook`: inside each layer, some
sub-block produces ``h`` which is added to the residual stream ``x``:

* post-LN (BERT): ``y = norm(h + x)`` — the ``norm`` module is swapped for a subclass that
  receives ``h + x`` and runs the adapters on ``(h, x)`` with the norm;
* pre-LN (Llama): ``y = x + sublayer(norm(x))`` — the ``sublayer`` module is swapped for a
  subclass that runs the adapters on its output ``h``; the model then adds ``x``.

``x`` itself is taken from the input of ``residual_source`` (argument ``residual_arg``, or the
keyword ``residual_kwarg``), which is swapped for a subclass that hands it over through the
forward context.

**Two-stack families** describe their first stack with the usual fields and the second in
``second_stack``, a :class:`StackSpec` with the same per-layer fields:

* encoder-decoders (T5, BART, Whisper): the second stack is the decoder (role ``"decoder"``,
  :data:`DecoderSpec`), whose layers also have a cross-attention block (``cross_attention`` and its
  q/k/v/o projections);
* dual encoders (CLIP): the second stack is a second tower run beside the first (role
  ``"vision"``), without cross-attention. Each tower reads its own sub-config
  (``sub_config="vision_config"``): its hidden size, heads and dropout size the adapters of its
  layers.

Code that walks layers goes through :meth:`ArchitectureSpec.stacks` (and :func:`layer_stacks` for
a model), which yields one :class:`LayerStack` per stack: one for single-stack families, two
(``"encoder"``, ``"decoder"``; ``"text"``, ``"vision"``) for two-stack ones.

Layer numbering follows AdapterHub's ``iter_layers``: first-stack layers ``0 … E−1``, second-stack
layers ``E … E+D−1`` (decoder after encoder; CLIP's vision layers after its text layers), so
``leave_out=[0]`` leaves out the first layer of the first stack and ``leave_out=[E]`` the first
layer of the second. A model with only one of the stacks (``T5EncoderModel``,
``CLIPForImageClassification``) numbers its layers from 0.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

from ..errors import AdapterConfigError

__all__ = [
    "ResidualHook",
    "ArchitectureSpec",
    "DecoderSpec",
    "StackSpec",
    "LayerStack",
    "stack_config",
    "stack_configs",
    "hidden_size_of",
    "layer_stacks",
    "register_architecture",
    "spec_for_model",
    "SUPPORTED_MODEL_TYPES",
]


@dataclasses.dataclass(frozen=True)
class ResidualHook:
    """One place per layer where bottleneck adapters run (paths are relative to the layer).

    Args:
        location: ``"mh_adapter"`` (after attention), ``"output_adapter"`` (after the FFN) or
            ``"cross_adapter"`` (after cross-attention).
        host: the module that owns the adapters (their state-dict keys start with its path).
        create_host: create ``host`` as a new child module instead of extending an existing one.
        residual_source: the module whose input is the residual stream ``x``.
        residual_arg, residual_kwarg: where ``x`` is in that module's call.
        norm: post-LN only: the norm that receives ``h + x``.
        sublayer: pre-LN only: the module whose output (or first output) is ``h``.

    Example::

        >>> ResidualHook("output_adapter", host="output_adapters", create_host=True,
        ...              residual_source="post_attention_layernorm", sublayer="mlp")
    """

    location: str
    host: str
    residual_source: str
    residual_arg: int = 0
    residual_kwarg: str = "hidden_states"
    create_host: bool = False
    norm: Optional[str] = None
    sublayer: Optional[str] = None

    def __post_init__(self):
        if (self.norm is None) == (self.sublayer is None):
            raise AdapterConfigError(
                f"ResidualHook {self.location}: give exactly one of norm (post-LN) or sublayer (pre-LN), got "
                f"norm={self.norm!r} and sublayer={self.sublayer!r}."
            )


@dataclasses.dataclass(frozen=True)
class StackSpec:
    """The second layer stack of a two-stack family (paths: ``layers`` relative to the base model,
    everything else relative to one layer of the stack).

    Args:
        layers: the stack's ``nn.ModuleList`` of layers.
        residual_hooks: the bottleneck positions of a layer (``mh_adapter``, ``output_adapter``
            and, in a decoder, ``cross_adapter``).
        attention, query, key, value, attn_output: the self-attention and its projections.
        ffn_in, ffn_out, intermediate_lora, output_lora: as in :class:`ArchitectureSpec`.
        cross_attention: a decoder's cross-attention module (queries from the decoder, keys and
            values from the encoder output); None for a stack without cross-attention.
        cross_query, cross_key, cross_value, cross_attn_output: its projections.
        role: ``"decoder"`` (an encoder-decoder's decoder) or a name for a tower (``"vision"``).
        sub_config: the attribute of the model config that configures this stack (CLIP's
            ``"vision_config"``); None: the model config itself.
        attention_location: where prefix tuning files the stack's self-attention (its prefix key is
            ``<location>_prefix``).
        position_embeddings: a decoder's position embedding module (relative to the base model),
            called with ``position_ids``; prefix tuning's ``shift_positions`` offsets them. None
            where positions are relative (T5's position bias).

    Example::

        >>> StackSpec(layers="vision_model.encoder.layers", residual_hooks=(...), attention="self_attn",
        ...           ..., role="vision", sub_config="vision_config")
    """

    layers: str
    residual_hooks: tuple[ResidualHook, ...]
    attention: str
    query: Optional[str]
    key: Optional[str]
    value: Optional[str]
    attn_output: str
    ffn_in: tuple[str, ...]
    ffn_out: str
    intermediate_lora: tuple[str, ...] = ()
    output_lora: tuple[str, ...] = ()
    cross_attention: Optional[str] = None
    cross_query: Optional[str] = None
    cross_key: Optional[str] = None
    cross_value: Optional[str] = None
    cross_attn_output: Optional[str] = None
    role: str = "decoder"
    sub_config: Optional[str] = None
    attention_location: str = "self"
    position_embeddings: Optional[str] = None


#: The decoder stack of an encoder-decoder family: a :class:`StackSpec` with ``role="decoder"``
#: (the default) and the cross-attention fields set.
DecoderSpec = StackSpec


class LayerStack(NamedTuple):
    """One stack of layers as the patching code sees it (see :meth:`ArchitectureSpec.stacks`).

    ``role`` is ``"layers"`` (single-stack families), ``"encoder"`` / ``"decoder"`` or a tower's
    name (``"text"``, ``"vision"``); ``attention_location`` is where prefix tuning files the stack's
    self-attention (``"self"``, ``"encoder"`` for an encoder-decoder's encoder: the config's
    ``encoder_prefix``, or a tower's own location). The ``cross_*`` fields are None except for a
    decoder; ``sub_config`` names the config attribute that configures the stack (None: the
    model config).

    Example::

        >>> encoder, decoder = T5.stacks()
        >>> decoder.role, decoder.attention_location, decoder.cross_attention
        ('decoder', 'self', 'layer.1.EncDecAttention')
    """

    role: str
    layers: str
    residual_hooks: tuple
    attention: str
    query: Optional[str]
    key: Optional[str]
    value: Optional[str]
    attn_output: str
    ffn_in: tuple
    ffn_out: str
    intermediate_lora: tuple
    output_lora: tuple
    attention_location: str = "self"
    cross_attention: Optional[str] = None
    cross_query: Optional[str] = None
    cross_key: Optional[str] = None
    cross_value: Optional[str] = None
    cross_attn_output: Optional[str] = None
    sub_config: Optional[str] = None

    def attention_matrices(self) -> dict[str, list[str]]:
        """``{"q": [paths], "k": ..., "v": ..., "o": ...}``: the projections AdapterHub's
        ``attn_matrices`` select in one layer of this stack (self- and cross-attention alike).

        Example::

            >>> BART.stacks()[1].attention_matrices()["q"]
            ['self_attn.q_proj', 'encoder_attn.q_proj']
        """
        own = {"q": self.query, "k": self.key, "v": self.value, "o": self.attn_output}
        cross = {"q": self.cross_query, "k": self.cross_key, "v": self.cross_value, "o": self.cross_attn_output}
        return {letter: [p for p in (own[letter], cross[letter]) if p] for letter in "qkvo"}


@dataclasses.dataclass(frozen=True)
class ArchitectureSpec:
    """Where an architecture family keeps the parts adapters attach to.

    Paths are dotted module paths: ``layers`` relative to the base model, everything else
    relative to one layer.

    Args:
        name: family name shown in messages.
        model_types: ``config.model_type`` values this spec serves.
        layers: the ``nn.ModuleList`` of transformer layers.
        residual_hooks: the bottleneck positions of a layer.
        attention: the self-attention module.
        query, key, value: its q/k/v projections. Where several name the same module (GPT-2's
            fused ``c_attn``), that module's output is those parts concatenated in q, k, v order,
            in equal sizes unless ``fused_qkv_heads`` says otherwise, and LoRA adapts only the
            selected parts.
        fused_qkv_heads: for a fused q/k/v projection whose parts differ in size (grouped-query
            attention, Phi-3's ``qkv_proj``): the config attributes holding the head counts of
            the q, k and v parts (a missing or None attribute falls back to the first one); the
            parts' sizes are proportional to them.
        fused_qkv_layout: how a fused q/k/v projection orders its output rows: ``"concatenated"``
            (``[q | k | v]``: GPT-2, Phi-3, ModernBERT) or ``"interleaved_heads"`` (per head
            ``[q_h | k_h | v_h]``, head after head: GPT-NeoX's ``query_key_value``). With
            interleaved heads a part is spread over the output (``num_attention_heads`` runs of
            ``head_dim`` rows), and LoRA covers exactly those rows.
        legacy_key_renames: ``(pattern, replacement)`` regex pairs that :func:`adapters.load_adapter`
            applies to adapter checkpoint keys after transformers' own checkpoint-conversion
            renames (which move keys whose modules transformers 5 renamed): for adapter modules
            that sat where transformers has no base weight to rename (AdapterHub's ViT kept its
            FFN adapters in ``ViTOutput``, a block transformers 5 dissolved).
        refused_methods: ``(method, reason)`` pairs: adapter methods (config ``architecture`` ids
            such as ``"prompt_tuning"``) this family cannot take, with the reason
            :meth:`add_adapter` gives in its error.
        config_requirements: ``(config attribute, required value, reason)`` triples that
            :func:`adapters.init` checks (ALBERT: a single shared layer group).
        attention_interface: whether the attention module calls transformers' attention
            interface (``ALL_ATTENTION_FUNCTIONS``); methods that work through the attention
            wrapper (prefix tuning) are refused where it does not.
        attn_output: the attention output projection.
        ffn_in: the FFN input projection(s).
        ffn_out: the FFN output projection.
        embeddings: the input embedding module (relative to the base model).
        embedding_output: the module whose output is the embedding output the first layer reads
            (default: ``embeddings``); invertible adapters act on it.
        pre_ln: whether layers normalise before their sub-blocks.
        intermediate_lora, output_lora: the linear layers LoRA's ``intermediate_lora`` and
            ``output_lora`` place adapters on (AdapterHub's placement, so its checkpoints load).
        second_stack: for two-stack families, the second stack (:class:`StackSpec`): an
            encoder-decoder's decoder (then the fields above describe the encoder stack, and
            ``embeddings`` the encoder's input embeddings), or a dual encoder's second tower.
        first_role, sub_config, attention_location: the first stack's role (default
            ``"encoder"`` beside a decoder, else ``"layers"``), the config attribute configuring it
            (CLIP's ``"text_config"``) and its prefix-tuning location (default ``"encoder"``
            beside a decoder, else ``"self"``).
        entry_modules: modules (relative to the base model) that callers may run on their own,
            outside the model's forward (CLIP's ``get_text_features`` runs ``text_model``): run so,
            they open the model's forward context themselves, so adapters and Parallel
            replication apply there too.
        parallel_output: ``(model, output, channels) -> output``: called after a forward pass under
            ``Parallel`` with ``channels`` branches, for outputs that combine rows of different
            inputs (CLIP's image-text similarities): restores one block per branch.
        encoder, decoder_module: encoder-decoder only: the encoder and decoder modules (relative
            to the base model). The encoder's forward joins soft prompts to its input and opens
            the adapters' forward context when ``generate`` runs it on its own; the decoder's
            extends the cross-attention mask by the prompt's positions.

    Example::

        >>> register_architecture(ArchitectureSpec(name="mymodel", model_types=("mymodel",), ...))
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    residual_hooks: tuple[ResidualHook, ...]
    attention: str
    query: Optional[str]
    key: Optional[str]
    value: Optional[str]
    attn_output: str
    ffn_in: tuple[str, ...]
    ffn_out: str
    embeddings: str
    pre_ln: bool
    intermediate_lora: tuple[str, ...] = ()
    output_lora: tuple[str, ...] = ()
    embedding_output: Optional[str] = None
    fused_qkv_heads: tuple[str, ...] = ()
    fused_qkv_layout: str = "concatenated"
    legacy_key_renames: tuple[tuple[str, str], ...] = ()
    refused_methods: tuple[tuple[str, str], ...] = ()
    config_requirements: tuple[tuple[str, object, str], ...] = ()
    attention_interface: bool = True
    second_stack: Optional[StackSpec] = None
    encoder: Optional[str] = None
    decoder_module: Optional[str] = None
    first_role: Optional[str] = None
    sub_config: Optional[str] = None
    attention_location: Optional[str] = None
    entry_modules: tuple[str, ...] = ()
    parallel_output: Optional[Callable] = None

    @property
    def decoder(self) -> Optional[StackSpec]:
        """The decoder stack of an encoder-decoder family (None for other families).

        Example::

            >>> T5.decoder.role, CLIP.decoder        # CLIP's second stack is a second encoder
            ('decoder', None)
        """
        stack = self.second_stack
        return stack if stack is not None and stack.role == "decoder" else None

    @property
    def is_encoder_decoder(self) -> bool:
        """Whether the family has an encoder and a decoder stack.

        Example::

            >>> spec_for_model(t5_model).is_encoder_decoder, spec_for_model(bert_model).is_encoder_decoder
            (True, False)
        """
        return self.decoder is not None

    @property
    def is_multi_stack(self) -> bool:
        """Whether the family has two layer stacks (encoder-decoders, dual encoders).

        Example::

            >>> T5.is_multi_stack, CLIP.is_multi_stack, BERT.is_multi_stack
            (True, True, False)
        """
        return self.second_stack is not None

    def stacks(self) -> tuple[LayerStack, ...]:
        """The layer stacks, in AdapterHub's numbering order (encoder first; CLIP: text first).

        Example::

            >>> [s.role for s in T5.stacks()]
            ['encoder', 'decoder']
        """
        beside_decoder = self.is_encoder_decoder
        first = LayerStack(
            self.first_role or ("encoder" if beside_decoder else "layers"), self.layers, self.residual_hooks,
            self.attention, self.query, self.key, self.value, self.attn_output, self.ffn_in, self.ffn_out,
            self.intermediate_lora, self.output_lora,
            self.attention_location or ("encoder" if beside_decoder else "self"), sub_config=self.sub_config,
        )
        if self.second_stack is None:
            return (first,)
        second = LayerStack(**{field: getattr(self.second_stack, field) for field in LayerStack._fields})
        return first, second

    def __post_init__(self):
        if self.fused_qkv_layout not in ("concatenated", "interleaved_heads"):
            raise AdapterConfigError(
                f"ArchitectureSpec {self.name}: fused_qkv_layout must be 'concatenated' or 'interleaved_heads', "
                f"got {self.fused_qkv_layout!r}."
            )


_REGISTRY: dict[str, ArchitectureSpec] = {}


def layer_stacks(base_model, spec: ArchitectureSpec) -> list[tuple[LayerStack, int, object]]:
    """``[(stack, first layer index, nn.ModuleList)]`` for the stacks ``base_model`` has, numbered
    as AdapterHub numbers them (a missing stack, e.g. the decoder of ``T5EncoderModel`` or the text
    tower of ``CLIPForImageClassification``, is skipped and takes no numbers).

    Example::

        >>> [(s.role, first, len(layers)) for s, first, layers in layer_stacks(t5, T5)]
        [('encoder', 0, 2), ('decoder', 2, 2)]
    """
    found, first = [], 0
    for stack in spec.stacks():
        try:
            layers = base_model.get_submodule(stack.layers)
        except AttributeError:
            if not spec.is_multi_stack:
                raise
            continue
        found.append((stack, first, layers))
        first += len(layers)
    return found


def stack_config(config, stack: LayerStack):
    """The config that sizes ``stack``'s layers: the model config, or its sub-config
    ``stack.sub_config`` (CLIP's ``text_config`` / ``vision_config``).

    Example::

        >>> text, vision = CLIP.stacks()
        >>> stack_config(clip.config, vision).hidden_size
        768
    """
    return getattr(config, stack.sub_config) if stack.sub_config else config


def stack_configs(base_model, spec: ArchitectureSpec) -> list:
    """The config of every layer of ``base_model`` in AdapterHub's numbering (see
    :func:`stack_config`): entry ``i`` sizes layer ``i``.

    Example::

        >>> [c.hidden_size for c in stack_configs(clip, CLIP)]   # 2 text layers, then 2 vision layers
        [512, 512, 768, 768]
    """
    return [stack_config(base_model.config, stack) for stack, _, layers in layer_stacks(base_model, spec) for _ in layers]


def hidden_size_of(config, spec: ArchitectureSpec) -> int:
    """The model's hidden size as adapter checkpoints record it: ``config.hidden_size``, or for a
    family whose config has none (CLIP), the first stack's.

    Example::

        >>> hidden_size_of(clip.config, CLIP) == clip.config.text_config.hidden_size
        True
    """
    size = getattr(config, "hidden_size", None)
    if size is None:
        size = stack_config(config, spec.stacks()[0]).hidden_size
    return size


def register_architecture(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Register ``spec`` for all of its ``model_types``.

    Example::

        >>> register_architecture(MY_SPEC)
        >>> adapters.init(my_model)
    """
    for model_type in spec.model_types:
        _REGISTRY[model_type] = spec
    return spec


def SUPPORTED_MODEL_TYPES() -> list[str]:
    """The model types :func:`adapters.init` can patch.

    Example::

        >>> "llama" in adapters.SUPPORTED_MODEL_TYPES()
        True
    """
    return sorted(_REGISTRY)


def spec_for_model(model) -> ArchitectureSpec:
    """The spec of ``model``'s architecture, or an AdapterConfigError naming the supported ones."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in _REGISTRY:
        raise AdapterConfigError(
            f"Model type {model_type!r} ({type(model).__name__}) is not supported by adapters. "
            f"Supported model types: {', '.join(SUPPORTED_MODEL_TYPES())}."
        )
    spec = _REGISTRY[model_type]
    for attribute, required, reason in spec.config_requirements:
        value = getattr(model.config, attribute, None)
        if value != required:
            raise AdapterConfigError(
                f"{type(model).__name__} has {attribute}={value!r} but adapters needs {attribute}={required!r} for "
                f"{spec.name}: {reason}."
            )
    return spec
