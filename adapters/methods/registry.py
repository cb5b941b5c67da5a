"""The method-family registry: what the model API knows about adapter methods, and all it knows.

Each ``adapters/methods/<family>.py`` ends with one :func:`register` call declaring its
:class:`MethodFamily`: the config ``architecture`` id it handles, the composition blocks its
adapters take part in, how it checks a config against a model and adds its modules at the hook
points the architecture spec names, what it removes again once no adapter needs it, what it does
around a forward pass, whether it merges into weights, and how it maps to PEFT's checkpoint
format. The model mixin, the plug-in interface, loading, merging and the PEFT format iterate this
registry and never name a method; adding a method is one new file plus its import line in
``adapters/methods/__init__.py``.

Every callable receives the patched model as its first argument and reaches it only through the
model's public and ``_adapters_*`` attributes, so the methods layer imports nothing from the model
API above it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Iterator, Mapping, Optional

import torch

from ..errors import AdapterConfigError

__all__ = [
    "AdapterMethod", "MethodFamily", "PeftMapping", "register", "unregister", "family", "families", "families_of",
    "families_with",
]


@dataclasses.dataclass(frozen=True)
class PeftMapping:
    """How a family's adapters map to PEFT's checkpoint format (``adapter_config.json`` with
    ``peft_type``, ``adapter_model.safetensors`` with keys ``base_model.model.<module>.<param>``).

    :mod:`adapters.peft_format` owns the layout every method shares (the file names, the
    ``base_model.model.`` key prefix, PEFT's bookkeeping fields, the targeting fields and the
    copies of ``modules_to_save``) and dispatches on ``peft_type`` through this mapping. A
    weight-transform family (one with ``build_linear``) gives ``parameters`` and
    ``write_fields`` and is read and written by the weight transforms' shared layout there; any
    other family gives ``write`` and ``convert_key`` (and the load hooks it needs) itself.

    Args:
        peft_type: PEFT's ``peft_type`` the family writes by default (``"HRA"``).
        read_config: ``(meta, targeting) -> AdapterConfig``: our config for PEFT's config dict
            ``meta`` (of any of ``peft_types``); ``targeting`` holds the targeting fields every
            method shares, read already (``target_modules``, ``exclude_modules``,
            ``layers_to_transform``, ...; empty unless ``shares_targeting``).
        write_fields: ``(config, hosts, name) -> dict``: the method's own fields of PEFT's config
            for adapter ``name``, which sits on the linear-layer ``hosts`` (weight transforms).
        parameters: the parameter names in PEFT's weight keys, the same as ours (weight transforms).
        weight_suffixed: those of them PEFT stores as a submodule's ``.weight``.
        linear_only: PEFT adapts ``nn.Linear`` only, so an adapter on a ``Conv1D`` (GPT-2) cannot
            be written.
        fields: ``{peft_type: (read, any_value, unimplemented)}``, PEFT 0.21's config fields of each
            PEFT type the family reads (a family may read several: the LoRA family reads ``LORA``
            and ``IA3``): the fields read into our config, the fields accepted with any value
            (bookkeeping, initialisation), and ``{field: PEFT's default}`` for fields this version
            does not implement (only the default is accepted). PEFT's bookkeeping fields
            (``task_type``, ...) are accepted for every type; any other field is dropped with a
            warning. Empty: the family reads ``peft_type`` only, and every field but the
            bookkeeping ones is dropped with a warning.
        field_names: ``{our config field: PEFT's field}`` where they differ (``"alpha"`` ->
            ``"lora_alpha"``), so an error about a value names PEFT's field.
        shares_targeting: the family's configs take the targeting fields every method on linear
            layers shares (:attr:`TARGETING_FIELDS`): they are read into ``targeting``, and the
            adapter's copies of ``modules_to_save`` are written with it.
        prompt_learning: PEFT keeps the weights in a prompt encoder, at the top level of the file
            (``prompt_embeddings``), not under ``base_model.model.``.
        check_model: ``(model) -> None``: raise :class:`~adapters.errors.AdapterConfigError` if
            PEFT computes something else than this library on ``model`` (checked on load and save).
        load_weights: ``(model, meta, state) -> state``: PEFT's tensors made to fit ``model``
            before their keys are renamed (prefix tuning's cache layout); raises
            :class:`~adapters.errors.AdapterConfigError` if they do not fit.
        convert_key: ``(key, value, name) -> (our key, value) or None``: one PEFT weight (its key
            relative to the wrapped model, ``base_model.model.`` removed) as adapter ``name``'s, or
            None if it is none of the family's.
        write: ``(model, name, config) -> (fields, weights)``: the family's fields of PEFT's
            config (``peft_type`` among them where it is not ``peft_type``'s default) and its weights,
            keyed relative to the wrapped model (or at the top level, ``prompt_learning``).
        model_level: keys of ``write``'s weights that PEFT keeps on its tuner rather than in the
            wrapped model, written as they are (VeRA's ``base_model.vera_A``).

    Example::

        >>> PeftMapping("HRA", read_config=hra_from_peft, write_fields=hra_to_peft, parameters=("hra_u",),
        ...             fields={"HRA": (("r", "apply_GS", "init_weights", "bias", *PeftMapping.TARGETING_FIELDS), (), {})})
    """

    #: the targeting fields every method on linear layers shares, in PEFT's names and ours
    TARGETING_FIELDS: ClassVar[tuple[str, ...]] = (
        "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
    )
    #: the key of a prompt-learning method's weights in PEFT's file (its prompt encoder's embedding)
    PROMPT_KEY: ClassVar[str] = "prompt_embeddings"

    peft_type: str
    read_config: Callable
    write_fields: Optional[Callable] = None
    parameters: tuple[str, ...] = ()
    weight_suffixed: tuple[str, ...] = ()
    linear_only: bool = True
    # not hashed (dicts), so that a family stays hashable
    fields: Mapping[str, tuple] = dataclasses.field(default_factory=dict, hash=False)
    field_names: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    shares_targeting: bool = True
    prompt_learning: bool = False
    check_model: Optional[Callable] = None
    load_weights: Optional[Callable] = None
    convert_key: Optional[Callable] = None
    write: Optional[Callable] = None
    model_level: tuple[str, ...] = ()

    @property
    def peft_types(self) -> tuple[str, ...]:
        """Every PEFT ``peft_type`` the family reads (the keys of ``fields``, else ``peft_type``).

        Example::

            >>> family("lora").peft.peft_types
            ('LORA', 'IA3')
        """
        return tuple(self.fields) or (self.peft_type,)


@dataclasses.dataclass(frozen=True)
class MethodFamily:
    """One adapter method family, as the rest of the library sees it.

    Args:
        name: the config ``architecture`` id (``"lora"``, ``"hra"``, ...).
        title: the method's name in messages (``"HRA"``, ``"Prefix tuning"``).
        blocks: the composition blocks its adapters may take part in.
        add: ``(model, name, config, device, dtype) -> bool``: create the adapter's modules at the
            hook points the spec names; returns whether any module was placed.
        check: ``(model, config) -> None``: raise :class:`~adapters.errors.AdapterConfigError` if the
            config does not fit the model (called before anything is created).
        remove_unused: ``(model) -> None``: take out what adding installed and no adapter uses any
            more (pools, hooks, class swaps), after an adapter was deleted.
        on_init: ``(base_model, spec, shared_parameters) -> hosts``: hosts to install when a model
            is patched (:func:`adapters.init`), before any adapter exists (the bottleneck hosts at
            every residual hook, AdapterHub's module tree).
        installed: ``(model) -> bool``: whether the family has anything installed in the model
            (for ``enters_attention`` families: the attention wrapper stays while one has).
        before_forward: ``(model, context, call) -> None``: per outermost forward pass (and per
            stack entered on its own, ``call.entry``), before the model runs; may change the call's
            inputs (``call`` is a :class:`~adapters.forward.ForwardCall`).
        after_forward: ``(model, context, output) -> output``: per outermost forward pass.
        encoder_inputs: ``(model, encoder, context, kwargs) -> kwargs``: the inputs of an
            encoder-decoder's encoder (prompt tuning joins its soft prompts there).
        decoder_inputs: ``(model, decoder, context, args, kwargs) -> (args, kwargs)``: the inputs of
            an encoder-decoder's decoder.
        check_setup: ``(model, setup) -> None``: refuse a setup the family cannot run (raises
            :class:`~adapters.errors.CompositionError`), beyond the block support in ``blocks``.
        on_train: ``(model, name, config) -> None``: after ``train_adapter`` made adapter ``name``
            trainable (Compacter freezes fixed PHM rules again).
        embeddings_replaced: ``(model, old, new) -> None``: the input embedding module was swapped
            out (``set_active_embeddings``).
        enters_attention: the method enters through transformers' attention interface (needs a
            spec with ``attention_interface``).
        weight_delta: a linear-layer adapter whose effect is a change of the layer's weight: it is
            hosted on :class:`~adapters.methods.lora.LinearHost`, merges and takes part in
            ``merge_adapter`` / ``average_adapter`` / ``merge_and_unload``.
        build_linear: for ``weight_delta`` families other than LoRA:
            ``(config, in_features, out_features, target, path_prefix) -> WeightTransform``.
        fusable: its adapters may be fused (AdapterFusion).
        interface_method: the :class:`~adapters.AdapterMethod` entry of a plug-in interface that
            admits it (``"lora"`` for every weight-delta family).
        peft: its :class:`PeftMapping`, if PEFT has the method.
        eject: ``(model, name) -> config``: replace a trainable reparameterisation by what it
            produces (prefix tuning's MLP by its flat prefix); returns the adapter's new config.
        base_parameters: ``(model, name, config) -> {path: parameter}``: base-model parameters
            the adapter trains and saves with itself (LoRA's ``bias`` option).
        model_mixin: a class of model methods the family adds to every patched model (AdaLoRA's
            ``update_and_allocate``).
        check_fusion: ``(names, configs) -> None``: raise :class:`~adapters.errors.AdapterConfigError`
            if adapters ``names`` (their configs of this family) cannot be fused together (bottleneck
            adapters at different positions of the layer).
        check_average: ``(config) -> None``: raise :class:`~adapters.errors.AdapterConfigError` if
            adapters of ``config`` cannot be averaged parameter by parameter (``average_adapter``;
            LoReFT's orthogonal parametrisation).
        to_adapterhub: ``(model, name, config, state) -> state``: the adapter's weights (keyed
            relative to the base model) as AdapterHub's layout stores them, where that differs from
            the modules' parameters (VeRA's diagonal matrices and shared projections).
        from_adapterhub: ``(model, name, config, state, path) -> state``: a checkpoint's weights
            (AdapterHub's layout, or PEFT's after renaming) made to fit the adapter's modules,
            which it may adjust (VeRA's dense form); raises
            :class:`~adapters.errors.AdapterLoadError` naming ``path`` if they cannot.

    Example::

        >>> register(MethodFamily(name="hra", title="HRA", blocks=LINEAR_BLOCKS, add=add_linear,
        ...                       weight_delta=True, build_linear=HRA.build, interface_method="lora"))
    """

    name: str
    title: str
    blocks: tuple
    add: Callable[..., bool]
    check: Optional[Callable] = None
    remove_unused: Optional[Callable] = None
    installed: Optional[Callable] = None
    on_init: Optional[Callable] = None
    before_forward: Optional[Callable] = None
    after_forward: Optional[Callable] = None
    encoder_inputs: Optional[Callable] = None
    decoder_inputs: Optional[Callable] = None
    check_setup: Optional[Callable] = None
    on_train: Optional[Callable] = None
    embeddings_replaced: Optional[Callable] = None
    enters_attention: bool = False
    weight_delta: bool = False
    build_linear: Optional[Callable] = None
    fusable: bool = False
    interface_method: Optional[str] = None
    peft: Optional[PeftMapping] = None
    eject: Optional[Callable] = None
    base_parameters: Optional[Callable] = None
    model_mixin: Optional[type] = None
    check_fusion: Optional[Callable] = None
    check_average: Optional[Callable] = None
    to_adapterhub: Optional[Callable] = None
    from_adapterhub: Optional[Callable] = None


_FAMILIES: dict[str, MethodFamily] = {}
# families_with's answers, for the registry as it is now (register / unregister empty it)
_WITH: dict[str, tuple[MethodFamily, ...]] = {}


def register(method_family: MethodFamily) -> MethodFamily:
    """Make ``method_family`` known to the model API (once per name); returns it.

    Example::

        >>> register(MethodFamily(name="my_method", title="My method", blocks=(Stack,), add=add_mine))
    """
    existing = _FAMILIES.get(method_family.name)
    if existing is not None and existing is not method_family:
        raise AdapterConfigError(
            f"A method family named {method_family.name!r} is registered already ({existing.title}); "
            f"give the new family another name."
        )
    _FAMILIES[method_family.name] = method_family
    _WITH.clear()
    return method_family


def unregister(name: str) -> None:
    """Forget the family ``name`` (a plug-in method's, e.g. in a test); adapters of it must be
    deleted first.

    Example::

        >>> unregister("my_method")
    """
    _FAMILIES.pop(name, None)
    _WITH.clear()


def family(name: Any) -> MethodFamily:
    """The registered family of config ``architecture`` id ``name``.

    Raises:
        AdapterConfigError: no family of that name is registered (the message lists them).

    Example::

        >>> family("lora").weight_delta
        True
    """
    found = _FAMILIES.get(name) if isinstance(name, str) else None
    if found is None:
        raise AdapterConfigError(
            f"Adapter method {name!r} is not available in this version; available methods: "
            f"{', '.join(sorted(_FAMILIES))}."
        )
    return found


def families() -> Iterator[MethodFamily]:
    """Every registered family, in registration order.

    Example::

        >>> sorted(f.name for f in families() if f.weight_delta)
        ['adalora', 'hra', 'loha', 'lokr', 'lora', 'mtl_lora', 'oft', 'vera']
    """
    return iter(tuple(_FAMILIES.values()))


def families_with(hook: str) -> tuple[MethodFamily, ...]:
    """The registered families that define ``hook`` (a :class:`MethodFamily` field), in
    registration order; kept until the registry changes, so a per-forward loop costs a dict lookup.

    Example::

        >>> [f.name for f in families_with("before_forward")]
        ['prefix_tuning', 'prompt_tuning', 'adaption_prompt']
    """
    if torch.compiler.is_compiling():  # traced without the cache: a first pass filling it would compile again
        return tuple(f for f in _FAMILIES.values() if getattr(f, hook) is not None)
    found = _WITH.get(hook)
    if found is None:
        found = _WITH[hook] = tuple(f for f in _FAMILIES.values() if getattr(f, hook) is not None)
    return found


def families_of(config) -> list[tuple[MethodFamily, Any]]:
    """``[(family, part)]`` for every single-method part of ``config`` (a union has several).

    Example::

        >>> [f.name for f, _ in families_of(MAMConfig())]
        ['prefix_tuning', 'bottleneck']
    """
    return [(family(part.architecture), part) for part in config.configs_by_architecture()]


class AdapterMethod:
    """The method families an interface can enable (AdapterHub's names).

    * ``bottleneck``: bottleneck adapters, Compacter, parallel adapters;
    * ``lora``: weight updates of linear layers — LoRA, DoRA, (IA)³, LoHa, LoKr, OFT, HRA, AdaLoRA, MTL-LoRA;
    * ``prefix_tuning``: methods inside attention — prefix tuning, Llama-Adapter;
    * ``prompt_tuning``: soft prompts;
    * ``invertible``: invertible adapters on the embeddings (``inv_adapter`` of a bottleneck config);
    * ``reft``: representation finetuning — LoReFT, NoReFT, DiReFT (interventions on layer outputs);

    Each family names the entry that admits it (:attr:`MethodFamily.interface_method`).

    Example::

        >>> AdapterMethod.of(LoRAConfig())
        ['lora']
    """

    bottleneck = "bottleneck"
    prefix_tuning = "prefix_tuning"
    lora = "lora"
    prompt_tuning = "prompt_tuning"
    reft = "reft"
    invertible = "invertible"

    ALL = ("bottleneck", "prefix_tuning", "lora", "prompt_tuning", "reft", "invertible")

    @staticmethod
    def of(config) -> list[str]:
        """The families an adapter config needs (a union needs those of its parts).

        Example::

            >>> AdapterMethod.of(SeqBnInvConfig())
            ['bottleneck', 'invertible']
        """
        needed = []
        for part in config.configs_by_architecture():
            method_family = _FAMILIES.get(part.architecture)
            needed.append(method_family.interface_method if method_family is not None else part.architecture)
            if getattr(part, "inv_adapter", None):
                needed.append(AdapterMethod.invertible)
        return list(dict.fromkeys(needed))
