"""Declarative architecture specs: where a family keeps its layers, residual blocks and
projections. One small spec per family; :func:`adapters.init` does the rest.

A spec is an :class:`ArchitectureSpec`: the model-level fields (name, model types, embeddings,
refused methods, ...) and ``stacks``, one :class:`StackSpec` per stack of transformer layers,
which says everything about the layers of that stack:

* single-stack families (BERT, Llama, ...): one stack (role ``"layers"``);
* encoder-decoders (T5, BART, Whisper): the encoder stack, then the decoder stack (role
  ``"decoder"``, :data:`DecoderSpec`), whose layers also have a cross-attention block
  (``cross_attention`` and its q/k/v/o projections);
* dual encoders (CLIP): two towers run side by side (roles ``"text"``, ``"vision"``), without
  cross-attention. Each tower reads its own sub-config (``sub_config="vision_config"``): its
  hidden size, heads and dropout size the adapters of its layers.

A bottleneck position is described by a :class:`ResidualHook`: inside each layer, some
sub-block produces ``h`` which is added to the residual stream ``x``:

* post-LN (BERT): ``y = norm(h + x)`` — the ``norm`` module is swapped for a subclass that
  receives ``h + x`` and runs the adapters on ``(h, x)`` with the norm;
* pre-LN (Llama): ``y = x + sublayer(norm(x))`` — the ``sublayer`` module is swapped for a
  subclass that runs the adapters on its output ``h``; the model then adds ``x``.

``x`` itself is taken from the input of ``residual_source`` (argument ``residual_arg``, or the
keyword ``residual_kwarg``), which is swapped for a subclass that hands it over through the
forward context.

Code that walks layers reads ``spec.stacks`` (the stacks with their roles filled in) and
:func:`layer_stacks` for a model. Layer numbering follows AdapterHub's ``iter_layers``:
first-stack layers ``0 … E−1``, second-stack layers ``E … E+D−1`` (decoder after encoder; CLIP's
vision layers after its text layers), so ``leave_out=[0]`` leaves out the first layer of the
first stack and ``leave_out=[E]`` the first layer of the second. A model with only one of the
stacks (``T5EncoderModel``, ``CLIPForImageClassification``) numbers its layers from 0.

Specs written before ``stacks`` existed (the first stack's fields as keywords of
:class:`ArchitectureSpec`, the second in ``second_stack=``) still build, into the same stacks.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

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
    "supported_model_types",
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
        sublayer_output: post-LN, optional: the module whose output (or first output) is ``h``
            itself, called once per block as the last step before the model adds ``x`` (BERT's
            ``output.dropout``). Given, the adapters run there on the exact ``h``; the norm only
            returns their result where the model's ``norm(· + x)`` cannot produce it
            (original_ln_after=False). None: the norm recovers ``h`` as ``(h + x) − x``.
        no_residual: pre-LN only: the adapters see no residual stream at this position (``x = 0``:
            they read ``h`` alone, and return what the layer adds instead of ``h``), as
            AdapterHub's plug-in interface runs them where it hooks no module before the sub-block
            (Phi's FFN, beside attention in one parallel block). ``residual_source`` then only opens
            the position's pass (any module the layer calls before the hook).
        residual_from: pre-LN only: the ``location`` of an earlier position in the layer whose
            result (``x`` plus its sub-block's output, adapted) is this position's residual stream
            instead of ``x``. In a parallel block (``y = x + attn(·) + mlp(·)``) AdapterHub's GPT-J
            runs the FFN adapters on the stream after the attention adapters; the layer's own sum
            is unchanged when no adapter is active.
        sublayer_norm: pre-LN only: the norm ``N`` the layer applies to the sub-block output
            before adding it to ``x`` (Gemma's "sandwich" post-norms), with ``sublayer`` the module
            whose output ``o`` that norm receives. The adapters run on ``o`` (before ``N``), as
            AdapterHub's plug-in interface places them: their ``original_ln_before`` step reads
            ``N(o + x)``, and what they return goes through the model's own ``x + N(·)``, which
            is their post step (``original_ln_after=False``, a block output that skips ``N``, is
            refused when the adapter is added).

    Example::

        >>> ResidualHook("output_adapter", host="output_adapters", create_host=True,
        ...              residual_source="post_attention_layernorm", sublayer="mlp")
        >>> ResidualHook("output_adapter", host="output_adapters", create_host=True,
        ...              residual_source="pre_feedforward_layernorm", sublayer="mlp",
        ...              sublayer_norm="post_feedforward_layernorm")
    """

    location: str
    host: str
    residual_source: str
    residual_arg: int = 0
    residual_kwarg: str = "hidden_states"
    create_host: bool = False
    norm: Optional[str] = None
    sublayer: Optional[str] = None
    sublayer_output: Optional[str] = None
    no_residual: bool = False
    residual_from: Optional[str] = None
    sublayer_norm: Optional[str] = None

    def __post_init__(self):
        if self.sublayer_norm is not None and (self.sublayer is None or self.no_residual):
            raise AdapterConfigError(
                f"ResidualHook {self.location}: sublayer_norm={self.sublayer_norm!r} needs a pre-LN sublayer with a "
                f"residual stream (the norm reads o + x), got sublayer={self.sublayer!r} and "
                f"no_residual={self.no_residual!r}."
            )
        if (self.norm is None) == (self.sublayer is None):
            raise AdapterConfigError(
                f"ResidualHook {self.location}: give exactly one of norm (post-LN) or sublayer (pre-LN), got "
                f"norm={self.norm!r} and sublayer={self.sublayer!r}."
            )
        if self.residual_from is not None and (self.sublayer is None or self.no_residual):
            raise AdapterConfigError(
                f"ResidualHook {self.location}: residual_from={self.residual_from!r} needs a pre-LN sublayer with a "
                f"residual stream, got sublayer={self.sublayer!r} and no_residual={self.no_residual!r}."
            )
        if self.no_residual and self.sublayer is None:
            raise AdapterConfigError(
                f"ResidualHook {self.location}: no_residual=True needs a pre-LN sublayer (the adapters then read h "
                f"alone), got norm={self.norm!r}."
            )
        if self.sublayer_output is not None and self.norm is None:
            raise AdapterConfigError(
                f"ResidualHook {self.location}: sublayer_output={self.sublayer_output!r} names h in a post-LN block "
                f"and needs norm; a pre-LN block names h with sublayer={self.sublayer!r} alone."
            )


@dataclasses.dataclass(frozen=True)
class StackSpec:
    """One stack of transformer layers: where its layers keep the parts adapters attach to (paths:
    ``layers`` and ``position_embeddings`` relative to the base model, everything else relative to
    one layer of the stack).

    Args:
        layers: the stack's ``nn.ModuleList`` of layers.
        residual_hooks: the bottleneck positions of a layer (``mh_adapter``, ``output_adapter``
            and, in a decoder, ``cross_adapter``).
        attention: the self-attention module.
        query, key, value: its q/k/v projections. Where several name the same module (GPT-2's
            fused ``c_attn``), that module's output is those parts concatenated (see
            :class:`ArchitectureSpec`'s ``fused_qkv_heads`` and ``fused_qkv_layout``), and LoRA
            adapts only the selected parts.
        attn_output: the attention output projection.
        ffn_in: the FFN input projection(s); ffn_out: the FFN output projection.
        intermediate_lora, output_lora: the linear layers LoRA's ``intermediate_lora`` and
            ``output_lora`` place adapters on (AdapterHub's placement, so its checkpoints load).
        cross_attention: a decoder's cross-attention module (queries from the decoder, keys and
            values from the encoder output); None for a stack without cross-attention.
        cross_query, cross_key, cross_value, cross_attn_output: its projections.
        role: what the stack is: ``"layers"`` (the one stack of a single-stack family; a later
            stack over the same positions is ``"layers.<name>"``, as ALBERT's layer groups),
            ``"encoder"`` / ``"decoder"``, or a tower's name (``"text"``, ``"vision"``). None: set
            by :class:`ArchitectureSpec` from the stack's place — ``"decoder"`` after the first
            stack, and for the first ``"encoder"`` beside a decoder, else ``"layers"``.
        sub_config: the attribute of the model config that configures this stack (CLIP's
            ``"vision_config"``); None: the model config itself.
        attention_location: where prefix tuning files the stack's self-attention (its prefix key is
            ``<location>_prefix``). None: set by :class:`ArchitectureSpec` — ``"encoder"`` for the
            encoder of an encoder-decoder (the config's ``encoder_prefix``), else ``"self"``.
        position_embeddings: a decoder's position embedding module (relative to the base model),
            called with ``position_ids``; prefix tuning's ``shift_positions`` offsets them. None
            where positions are relative (T5's position bias).

    Example::

        >>> StackSpec(layers="vision_model.encoder.layers", residual_hooks=(...), attention="self_attn",
        ...           ..., role="vision", sub_config="vision_config")
        >>> encoder, decoder = T5.stacks
        >>> decoder.role, decoder.attention_location, decoder.cross_attention
        ('decoder', 'self', 'layer.1.EncDecAttention')
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
    role: Optional[str] = None
    sub_config: Optional[str] = None
    attention_location: Optional[str] = None
    position_embeddings: Optional[str] = None

    def attention_matrices(self) -> dict[str, list[str]]:
        """``{"q": [paths], "k": ..., "v": ..., "o": ...}``: the projections AdapterHub's
        ``attn_matrices`` select in one layer of this stack (self- and cross-attention alike).

        Example::

            >>> BART.stacks[1].attention_matrices()["q"]
            ['self_attn.q_proj', 'encoder_attn.q_proj']
        """
        own = {"q": self.query, "k": self.key, "v": self.value, "o": self.attn_output}
        cross = {"q": self.cross_query, "k": self.cross_key, "v": self.cross_value, "o": self.cross_attn_output}
        return {letter: [p for p in (own[letter], cross[letter]) if p] for letter in "qkvo"}


#: The decoder stack of an encoder-decoder family: a :class:`StackSpec` (after the encoder's, its
#: role defaults to ``"decoder"``) with the cross-attention fields set.
DecoderSpec = StackSpec

#: A stack as the patching code walks it: a :class:`StackSpec` with its role and prefix location
#: filled in (the items of :attr:`ArchitectureSpec.stacks`). Kept as a name for code written when
#: it was a separate type.
LayerStack = StackSpec


class _Stacks(tuple):
    """The tuple of an :class:`ArchitectureSpec`'s stacks. Calling it returns itself, so code that
    reads the stacks as ``spec.stacks()`` (a method before ``stacks`` became a field) keeps working."""

    def __call__(self) -> "_Stacks":
        return self


# keywords of ArchitectureSpec from before ``stacks``: the first stack's fields (``first_role`` is
# its role), and the second stack as a whole
_FIRST_STACK_KEYWORDS = {
    "layers": "layers", "residual_hooks": "residual_hooks", "attention": "attention", "query": "query", "key": "key",
    "value": "value", "attn_output": "attn_output", "ffn_in": "ffn_in", "ffn_out": "ffn_out",
    "intermediate_lora": "intermediate_lora", "output_lora": "output_lora", "first_role": "role",
    "sub_config": "sub_config", "attention_location": "attention_location",
}
_SECOND_STACK_KEYWORDS = ("second_stack", "decoder")
_REQUIRED_STACK_FIELDS = tuple(f.name for f in dataclasses.fields(StackSpec) if f.default is dataclasses.MISSING)


def _first_stack_field(field: str) -> property:
    """A read-only property of :class:`ArchitectureSpec` that reads ``field`` of the first stack."""

    def read(self):
        return getattr(self.stacks[0], field)

    read.__name__ = field
    read.__doc__ = (
        f"The first stack's ``{field}`` (read-only; ``spec.stacks[0].{field}``), for code written before specs "
        f"had ``stacks``.\n\nExample::\n\n    >>> BERT.{field} == BERT.stacks[0].{field}\n    True\n"
    )
    return property(read)


def _fold_stack_keywords(name: str, stacks, stack_keywords: dict) -> tuple[StackSpec, ...]:
    """The stacks an :class:`ArchitectureSpec` is built with: ``stacks``, or the stacks the older
    keywords describe (the first stack's fields, ``second_stack`` / ``decoder``). Given beside
    ``stacks`` (``dataclasses.replace(spec, query=...)``), those keywords change its first stack, or
    replace its second."""
    given_second = [keyword for keyword in _SECOND_STACK_KEYWORDS if keyword in stack_keywords]
    unknown = sorted(set(stack_keywords) - set(_FIRST_STACK_KEYWORDS) - set(_SECOND_STACK_KEYWORDS))
    if unknown:
        raise AdapterConfigError(
            f"ArchitectureSpec {name}: unknown keyword(s) {', '.join(unknown)}. Describe each layer stack in "
            f"stacks=(StackSpec(...), ...); the older per-stack keywords are {', '.join(_FIRST_STACK_KEYWORDS)} "
            f"(the first stack) and second_stack (the second)."
        )
    if len(given_second) > 1:
        raise AdapterConfigError(
            f"ArchitectureSpec {name}: second_stack and decoder both name the second stack; give one of them."
        )
    first_fields = {_FIRST_STACK_KEYWORDS[k]: v for k, v in stack_keywords.items() if k in _FIRST_STACK_KEYWORDS}
    if stacks is None:
        missing = [field for field in _REQUIRED_STACK_FIELDS if field not in first_fields]
        if missing:
            raise AdapterConfigError(
                f"ArchitectureSpec {name}: no stacks given. Pass stacks=(StackSpec(layers=..., ...), ...), or the "
                f"first stack's fields as keywords; missing: {', '.join(missing)}."
            )
        stacks = (StackSpec(**first_fields),)
    else:
        stacks = tuple(stacks)
        if not stacks or not all(isinstance(stack, StackSpec) for stack in stacks):
            raise AdapterConfigError(
                f"ArchitectureSpec {name}: stacks must be a non-empty tuple of StackSpec, got {stacks!r}."
            )
        if first_fields:
            stacks = (dataclasses.replace(stacks[0], **first_fields),) + stacks[1:]
    if given_second:
        second = stack_keywords[given_second[0]]
        if second is not None and not isinstance(second, StackSpec):
            raise AdapterConfigError(
                f"ArchitectureSpec {name}: {given_second[0]} must be a StackSpec (or None), got "
                f"{type(second).__name__}."
            )
        stacks = stacks[:1] + ((second,) if second is not None else ())
    return stacks


def _resolve_roles(name: str, stacks: tuple[StackSpec, ...]) -> _Stacks:
    """``stacks`` with every role and prefix location filled in (see :class:`StackSpec`)."""
    later_roles = [stack.role or "decoder" for stack in stacks[1:]]
    beside_decoder = "decoder" in later_roles
    roles = [stacks[0].role or ("encoder" if beside_decoder else "layers")] + later_roles
    if len(set(roles)) != len(roles):
        raise AdapterConfigError(f"ArchitectureSpec {name}: each stack needs its own role, got roles {roles}.")
    resolved = []
    for index, (stack, role) in enumerate(zip(stacks, roles)):
        location = stack.attention_location or ("encoder" if index == 0 and beside_decoder else "self")
        if (role, location) != (stack.role, stack.attention_location):
            stack = dataclasses.replace(stack, role=role, attention_location=location)
        resolved.append(stack)
    return _Stacks(resolved)


@dataclasses.dataclass(frozen=True, init=False)
class ArchitectureSpec:
    """Where an architecture family keeps the parts adapters attach to: its layer stacks
    (:class:`StackSpec`) and the model-level parts. Paths are dotted module paths relative to the
    base model.

    Args:
        name: family name shown in messages.
        model_types: ``config.model_type`` values this spec serves.
        stacks: the layer stacks, in AdapterHub's numbering order (encoder first; CLIP: text
            first). Their ``role`` and ``attention_location`` are filled in where not given (see
            :class:`StackSpec`); ``spec.stacks`` holds them so (``spec.stacks()`` returns the same).
        embeddings: the input embedding module (of an encoder-decoder: the encoder's).
        pre_ln: whether layers normalise before their sub-blocks.
        embedding_output: the module whose output is the embedding output the first layer reads
            (default: ``embeddings``); invertible adapters act on it.
        embedding_scale: an attribute of the embedding-output module holding a factor that module
            multiplies its output by (Gemma 2's ``embed_scale``, √hidden). Invertible adapters act
            on the output before that factor, as they did on transformers 4, where the model applied
            it after the module, and as AdapterHub's checkpoints were trained.
        embedding_mask: the keyword under which the ``embeddings`` module receives the attention
            mask itself (DeBERTa's ``mask``, by which it multiplies its output). Prompt tuning,
            which joins the prompt to that module's output and extends the model's mask by the
            prompt's positions, hands the module the mask of its own input positions.
        fused_qkv_heads: for a fused q/k/v projection whose parts differ in size (grouped-query
            attention, Phi-3's ``qkv_proj``): the config attributes holding the head counts of
            the q, k and v parts (a missing or None attribute falls back to the first one); the
            parts' sizes are proportional to them. Parts named by one module are in q, k, v order,
            in equal sizes unless this says otherwise.
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
        adapterhub_key_renames: ``(pattern, replacement)`` regex pairs that :func:`adapters.save_adapter`
            applies to adapter keys after transformers' checkpoint-conversion renames are undone
            (which gives transformers 4's module paths), so that the file holds AdapterHub's key
            names: the inverse of ``legacy_key_renames`` (ViT's ``layers.N.output_adapters`` comes
            back as ``encoder.layer.N.output_adapters`` and is written as AdapterHub's
            ``encoder.layer.N.output.output_adapters``).
        refused_methods: ``(method, reason)`` pairs: adapter methods (config ``architecture`` ids
            such as ``"prompt_tuning"``) this family cannot take, with the reason
            :meth:`add_adapter` gives in its error.
        config_requirements: ``(config attribute, required value, reason)`` triples that
            :func:`adapters.init` checks (ALBERT: a single shared layer group).
        attention_interface: whether the attention modules call transformers' attention
            interface (``ALL_ATTENTION_FUNCTIONS``); methods that work through the attention
            wrapper (prefix tuning) are refused where they do not.
        encoder, decoder_module: encoder-decoder only: the encoder and decoder modules. The
            encoder's forward joins soft prompts to its input and opens the adapters' forward
            context when ``generate`` runs it on its own; the decoder's extends the
            cross-attention mask by the prompt's positions.
        entry_modules: modules that callers may run on their own, outside the model's forward
            (CLIP's ``get_text_features`` runs ``text_model``): run so, they open the model's
            forward context themselves, so adapters and Parallel replication apply there too.
        parallel_output: ``(model, output, channels) -> output``: called after a forward pass under
            ``Parallel`` with ``channels`` branches, for outputs that combine rows of different
            inputs (CLIP's image-text similarities): restores one block per branch.
        for_model: ``(model) -> ArchitectureSpec``, for families whose layout depends on the model
            (ALBERT's number of layer groups, the encoder and decoder of transformers'
            ``EncoderDecoderModel``): :func:`spec_for_model` returns the spec it builds for the
            model (a spec without ``for_model``) instead of the registered one, after checking
            ``config_requirements``.
        attention_mixin: for attention modules that compute their scores in code of their own
            instead of calling transformers' attention interface: a mixin class that methods
            entering attention (prefix tuning) swap onto each self-attention module; it overrides
            one inner method of the module so that the keys and values contributed through
            :func:`adapters.hooks.attention.attend_with_contributions` join the module's own
            (GPT-J's ``_attn`` on transformers 5.23, DeBERTa's disentangled attention).

    **Older keywords.** Specs written before ``stacks`` gave the first stack's fields as keywords
    (``layers``, ``residual_hooks``, ``attention``, ``query``, ``key``, ``value``,
    ``attn_output``, ``ffn_in``, ``ffn_out``, ``intermediate_lora``, ``output_lora``,
    ``first_role``, ``sub_config``, ``attention_location``) and the second stack as
    ``second_stack=StackSpec(...)`` (or ``decoder=``); they build the same stacks. Given beside
    ``stacks`` (as ``dataclasses.replace(spec, query=...)`` does), they change the first stack or
    replace the second. The same names read the first stack back (``spec.query`` is
    ``spec.stacks[0].query``).

    Example::

        >>> register_architecture(ArchitectureSpec(
        ...     name="mymodel", model_types=("mymodel",),
        ...     stacks=(StackSpec(layers="decoder.blocks", residual_hooks=(...), attention="attn", ...),),
        ...     embeddings="embed_tokens", pre_ln=True))
    """

    name: str
    model_types: tuple[str, ...]
    stacks: tuple[StackSpec, ...]
    embeddings: Optional[str]
    pre_ln: bool
    embedding_output: Optional[str] = None
    embedding_mask: Optional[str] = None
    embedding_scale: Optional[str] = None
    fused_qkv_heads: tuple[str, ...] = ()
    fused_qkv_layout: str = "concatenated"
    legacy_key_renames: tuple[tuple[str, str], ...] = ()
    adapterhub_key_renames: tuple[tuple[str, str], ...] = ()
    refused_methods: tuple[tuple[str, str], ...] = ()
    config_requirements: tuple[tuple[str, object, str], ...] = ()
    attention_interface: bool = True
    encoder: Optional[str] = None
    decoder_module: Optional[str] = None
    entry_modules: tuple[str, ...] = ()
    parallel_output: Optional[Callable] = None
    for_model: Optional[Callable] = None
    attention_mixin: Optional[type] = None

    def __init__(
        self,
        name: str,
        model_types: tuple[str, ...],
        *,
        stacks: Optional[tuple[StackSpec, ...]] = None,
        embeddings: Optional[str],
        pre_ln: bool,
        embedding_output: Optional[str] = None,
        embedding_mask: Optional[str] = None,
        embedding_scale: Optional[str] = None,
        fused_qkv_heads: tuple[str, ...] = (),
        fused_qkv_layout: str = "concatenated",
        legacy_key_renames: tuple[tuple[str, str], ...] = (),
        adapterhub_key_renames: tuple[tuple[str, str], ...] = (),
        refused_methods: tuple[tuple[str, str], ...] = (),
        config_requirements: tuple[tuple[str, object, str], ...] = (),
        attention_interface: bool = True,
        encoder: Optional[str] = None,
        decoder_module: Optional[str] = None,
        entry_modules: tuple[str, ...] = (),
        parallel_output: Optional[Callable] = None,
        for_model: Optional[Callable] = None,
        attention_mixin: Optional[type] = None,
        **stack_keywords,
    ):
        if fused_qkv_layout not in ("concatenated", "interleaved_heads"):
            raise AdapterConfigError(
                f"ArchitectureSpec {name}: fused_qkv_layout must be 'concatenated' or 'interleaved_heads', "
                f"got {fused_qkv_layout!r}."
            )
        values = dict(locals())  # every field is a parameter of the same name
        values["stacks"] = _resolve_roles(name, _fold_stack_keywords(name, stacks, stack_keywords))
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, values[field.name])  # frozen: set once, here

    # the first stack's fields under the names older code reads them by
    layers = _first_stack_field("layers")
    residual_hooks = _first_stack_field("residual_hooks")
    attention = _first_stack_field("attention")
    query = _first_stack_field("query")
    key = _first_stack_field("key")
    value = _first_stack_field("value")
    attn_output = _first_stack_field("attn_output")
    ffn_in = _first_stack_field("ffn_in")
    ffn_out = _first_stack_field("ffn_out")
    intermediate_lora = _first_stack_field("intermediate_lora")
    output_lora = _first_stack_field("output_lora")
    sub_config = _first_stack_field("sub_config")
    attention_location = _first_stack_field("attention_location")
    first_role = _first_stack_field("role")

    @property
    def second_stack(self) -> Optional[StackSpec]:
        """The second stack (an encoder-decoder's decoder, a dual encoder's second tower), None for a
        single-stack family (read-only; ``spec.stacks[1]``), for code written before ``stacks``.

        Example::

            >>> T5.second_stack is T5.stacks[1], BERT.second_stack
            (True, None)
        """
        return self.stacks[1] if len(self.stacks) > 1 else None

    @property
    def decoder(self) -> Optional[StackSpec]:
        """The decoder stack of an encoder-decoder family (None for other families).

        Example::

            >>> T5.decoder.role, CLIP.decoder        # CLIP's second stack is a second encoder
            ('decoder', None)
        """
        return next((stack for stack in self.stacks[1:] if stack.role == "decoder"), None)

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
        """Whether the family has more than one layer stack (encoder-decoders, dual encoders).

        Example::

            >>> T5.is_multi_stack, CLIP.is_multi_stack, BERT.is_multi_stack
            (True, True, False)
        """
        return len(self.stacks) > 1


_REGISTRY: dict[str, ArchitectureSpec] = {}


def layer_stacks(base_model, spec: ArchitectureSpec) -> list[tuple[StackSpec, int, object]]:
    """``[(stack, first layer index, nn.ModuleList)]`` for the stacks ``base_model`` has, numbered
    as AdapterHub numbers them (a missing stack, e.g. the decoder of ``T5EncoderModel`` or the text
    tower of ``CLIPForImageClassification``, is skipped and takes no numbers).

    Example::

        >>> [(s.role, first, len(layers)) for s, first, layers in layer_stacks(t5, T5)]
        [('encoder', 0, 2), ('decoder', 2, 2)]
    """
    found, first = [], 0
    for stack in spec.stacks:
        try:
            layers = base_model.get_submodule(stack.layers)
        except AttributeError:
            if not spec.is_multi_stack:
                raise
            continue
        found.append((stack, first, layers))
        first += len(layers)
    return found


def stack_config(config, stack: StackSpec):
    """The config that sizes ``stack``'s layers: the model config, or its sub-config
    ``stack.sub_config`` (CLIP's ``text_config`` / ``vision_config``).

    Example::

        >>> text, vision = CLIP.stacks
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
        size = stack_config(config, spec.stacks[0]).hidden_size
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


def supported_model_types() -> list[str]:
    """The model types :func:`adapters.init` can patch (``config.model_type`` values), sorted.

    Example::

        >>> "llama" in adapters.supported_model_types()
        True
    """
    return sorted(_REGISTRY)


def SUPPORTED_MODEL_TYPES() -> list[str]:  # noqa: N802  (its first, published name)
    """The model types :func:`adapters.init` can patch: :func:`supported_model_types`, under the
    name it had first (named like a constant, but a function), kept for compatibility.

    Example::

        >>> adapters.SUPPORTED_MODEL_TYPES() == adapters.supported_model_types()
        True
    """
    return supported_model_types()


def spec_for_model(model) -> ArchitectureSpec:
    """The spec of ``model``'s architecture, or an AdapterConfigError naming the supported ones.

    Example::

        >>> spec_for_model(bert_model).name
        'bert'
    """
    model_type = getattr(model.config, "model_type", None)
    if model_type not in _REGISTRY:
        raise AdapterConfigError(
            f"Model type {model_type!r} ({type(model).__name__}) is not supported by adapters. "
            f"Supported model types: {', '.join(supported_model_types())}."
        )
    spec = _REGISTRY[model_type]
    for attribute, required, reason in spec.config_requirements:
        value = getattr(model.config, attribute, None)
        if value != required:
            raise AdapterConfigError(
                f"{type(model).__name__} has {attribute}={value!r} but adapters needs {attribute}={required!r} for "
                f"{spec.name}: {reason}."
            )
    return spec if spec.for_model is None else spec.for_model(model)
