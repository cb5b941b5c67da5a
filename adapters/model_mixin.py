"""The user API on a patched model: AdapterHub's method names and signatures.

:func:`adapters.init` swaps the model's class (and its base model's) for a subclass with
:class:`ModelAdaptersMixin` in front, keeping the class name. The mixin's ``forward`` opens a
:class:`~adapters.context.ForwardContext` around the original forward, holding the registry's
:class:`~adapters.context.RegistryLock` shared; the methods that change the adapters (add,
delete, fusions, merge, reset) hold it alone, so a forward pass sees one consistent set of
adapters. A change that fails leaves the model as it was; deleting the last adapter of a method
removes what adding it installed.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import numbers
import os
import re
from typing import Optional, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from . import logging
from .compat import passed_cache
from .composition import (
    AdapterCompositionBlock,
    BatchSplit,
    Fuse,
    Parallel,
    SetupLike,
    Split,
    Stack,
    batch_requirement,
    check_input_batch,
    parse_composition,
    validate_composition,
)
from .configuration.base import AdapterConfig
from .configuration.fusion import AdapterFusionConfig
from .configuration.validation import check_name
from .context import AdapterSetup, ForwardContext, registry_lock
from .embeddings import EmbeddingAdaptersMixin
from .errors import AdapterConfigError, CompositionError
from .merging import MergingMixin
from .methods import METHOD_BLOCKS, WEIGHT_TRANSFORM_METHODS
from .methods.adalora import AdaLoRAModelMixin
from .methods.adaption_prompt import (
    adaption_prompt_active,
    add_adaption_prompt,
    check_adaption_prompt_config,
    uninstall_adaption_prompt,
)
from .configuration.lora import LoftQConfig
from .methods.loftq import loftq_factors
from .methods.lora import LoRALinear
from .methods.invertible import CONTAINER as INVERTIBLE_CONTAINER
from .methods.invertible import EmbeddingOutputHost, OutputEmbeddingInputHost, coupling_block, uninstall_invertible
from .methods.phm import init_shared_parameters
from .methods.prefix_tuning import POSITION_OFFSETS, install_prefix_tuning, record_attention_inputs, uninstall_prefix_tuning
from .methods.prompt_tuning import PromptTuning, install_prompt_tuning, uninstall_prompt_tuning
from .methods.saved_modules import SavedModuleHost, check_saved_module_setup
from .methods.weight_transform import add_weight_transform_modules
from .hooks.attention import PREFIX as ATTENTION_PREFIX
from .hooks.attention import attention_configs, use_adapter_attention
from .hooks.joined_cache import cache_layer_lists
from .hooks.patching import restore_class, swap_class
from .hooks.spec import stack_configs
from .hooks.targeting import (
    OWN_MODULES,
    closest_names,
    first_layers,
    fused_part_ranges,
    layer_of,
    matches_modules,
    pattern_value,
    resolve_targets,
)

logger = logging.get_logger(__name__)

__all__ = ["ModelAdaptersMixin"]

# inputs that carry a batch dimension and are replicated for Parallel
_BATCH_INPUTS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "inputs_embeds",
    "labels",
    "decoder_input_ids",
    "decoder_attention_mask",
    "decoder_inputs_embeds",
    "pixel_values",
    "input_features",
)
# inputs with a batch of their own: a dual encoder (CLIP) reads N texts and M images in one call
_SEPARATE_BATCH_INPUTS = ("pixel_values",)


# set while generate() runs a Parallel setup whose inputs it replicated itself (number of branches)
_pre_replicated: contextvars.ContextVar[int] = contextvars.ContextVar("adapters_pre_replicated", default=1)


def _checkpoint_with_context(checkpoint_func):
    """Wrap a gradient-checkpointing function so that the recomputation during backward runs
    inside the forward context of the original pass (adapters stay active there)."""
    if getattr(checkpoint_func, "_adapters_context_aware", False):
        return checkpoint_func

    def checkpoint_in_context(function, *args, **kwargs):
        context = ForwardContext.get_context()
        if context is None:
            return checkpoint_func(function, *args, **kwargs)

        def replay(*inner_args, **inner_kwargs):
            with context.activate():
                return function(*inner_args, **inner_kwargs)

        return checkpoint_func(replay, *args, **kwargs)

    checkpoint_in_context._adapters_context_aware = True
    checkpoint_in_context.__wrapped__ = checkpoint_func  # unloading restores it
    return checkpoint_in_context


class ModelAdaptersMixin(EmbeddingAdaptersMixin, MergingMixin, AdaLoRAModelMixin):
    """Adds named adapters and their composition to a transformers model.

    Example::

        >>> import adapters
        >>> from transformers import AutoModel
        >>> model = AutoModel.from_pretrained("path/to/bert")
        >>> adapters.init(model)
        >>> model.add_adapter("task", config="seq_bn")
        >>> model.train_adapter("task")
    """

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def adapters_config(self):
        """The :class:`~adapters.configuration.ModelAdaptersConfig` registry of this model.

        Example::

            >>> model.add_adapter("a", config="lora")
            >>> list(model.adapters_config.adapters)
            ['a']
        """
        return self.__dict__["_adapters_registry"]

    @property
    def _adapter_hosts(self) -> list:
        return self.__dict__["_adapters_hosts"]

    @property
    def _shared_parameters(self) -> nn.ModuleDict:
        return self.base_model.shared_parameters

    # the patched class shows its original forward's signature (see patching.swap_class)
    shows_original_signature = True

    def forward(self, *args, **kwargs):
        """The model's forward, inside a forward context with the active adapter setup.

        Extra keyword arguments: ``output_adapter_fusion_attentions`` and
        ``output_adapter_gating_scores`` return the fusion attention weights / gating scores
        as ``adapter_fusion_attentions`` / ``adapter_gating_scores`` on the output.

        Example::

            >>> model.active_adapters = Fuse("a", "b")
            >>> out = model(**batch, output_adapter_fusion_attentions=True)
            >>> out.adapter_fusion_attentions["a,b"][0]["output_adapter"].shape   # (B, L, 2)
        """
        context = ForwardContext.get_context()
        if context is not None and context.registry is self.adapters_config:
            return super().forward(*args, **kwargs)  # nested call (head model -> base model)
        # the pass holds the registry lock shared: no adapter is added, deleted or merged while it
        # runs, so it sees one consistent set of adapters in every layer (see RegistryLock)
        lock = registry_lock(self.adapters_config)
        token = lock.acquire_read()
        try:
            return self._forward_in_context(args, kwargs)
        finally:
            lock.release_read(token)

    def _forward_in_context(self, args, kwargs):
        """The outermost forward pass, in a new forward context (called with the registry lock held)."""
        context = self._new_context()
        context.output_adapter_fusion_attentions = kwargs.pop("output_adapter_fusion_attentions", False)
        context.output_adapter_gating_scores = kwargs.pop("output_adapter_gating_scores", False)
        channels = self._channels_to_replicate(context)
        self._check_input_fits(context, channels, args, kwargs, _forward_parameter_names(type(self)))
        if channels:
            args, kwargs = self._replicate_batch(args, kwargs, channels, context)
        with context.activate():
            args, kwargs = self._prepare_prefix_and_prompt(context, args, kwargs)
            output = super().forward(*args, **kwargs)
        parallel_output = self.__dict__["_adapters_spec"].parallel_output
        if parallel_output is not None and context.parallel_channels > 1:
            output = parallel_output(self, output, context.parallel_channels)
        output = self._add_adalora_regularization(output, context.setup)
        if context.output_adapter_fusion_attentions and hasattr(output, "keys"):
            output.adapter_fusion_attentions = context.adapter_fusion_attentions
        if context.output_adapter_gating_scores and hasattr(output, "keys"):
            output.adapter_gating_scores = context.adapter_gating_scores
        return output

    def generate(self, *args, **kwargs):
        """transformers' ``generate`` with the active setup.

        With a ``Parallel`` setup of ``n`` branches, every branch continues its own copy of the
        input: the returned sequences have ``n × batch`` rows, branch ``i`` in rows
        ``i·batch … (i+1)·batch − 1`` (the same layout as Parallel's forward outputs).

        Example::

            >>> model.set_active_adapters(Parallel("a", "b"))
            >>> out = model.generate(input_ids, max_new_tokens=8)   # rows [a's; b's]
        """
        setup = self._setup_for_forward()[0]
        channels = _parallel_channels(setup)
        if channels == 1:
            return super().generate(*args, **kwargs)
        # positional arguments by generate's own names (inputs, generation_config, ...), the inputs as input_ids
        kwargs, _ = _replicate_inputs(("input_ids",) + _generate_parameter_names(type(self))[1:], args, kwargs, channels)
        token = _pre_replicated.set(channels)
        try:
            return super().generate(**kwargs)
        finally:
            _pre_replicated.reset(token)

    def _prepare_prefix_and_prompt(self, context: ForwardContext, args, kwargs):
        """Compute the active prefixes once for this pass and join active soft prompts to the
        inputs; both read the inputs by name, so positional arguments become keyword ones then."""
        if adaption_prompt_active(self, context):
            context.attention_adjusted = True
            use_adapter_attention(self)
        base = self.base_model
        prefix_pool, prompt_pool = base._modules.get("prefix_tuning"), base._modules.get("prompt_tuning")
        if context.setup is None or (prefix_pool is None and prompt_pool is None):
            return args, kwargs
        prefixes = prefix_pool is not None and prefix_pool.prepare_forward(context)
        prompts = (  # encoder-decoders: the encoder joins the prompt itself (EncoderEntryMixin)
            prompt_pool is not None
            and not self.__dict__["_adapters_spec"].is_encoder_decoder
            and bool(prompt_pool.names_in(context.setup))
        )
        if not (prefixes or prompts):
            return args, kwargs
        _, kwargs = self._as_kwargs(args, kwargs)
        if prefixes:
            use_adapter_attention(self)
            context.kv_cache_layers = cache_layer_lists(passed_cache(kwargs))
            self._set_prefix_positions(prefix_pool, context, kwargs)
        if prompts:
            kwargs = prompt_pool.prepare_forward(self, context, kwargs)
        return (), kwargs

    def _set_prefix_positions(self, prefix_pool, context: ForwardContext, kwargs: dict) -> None:
        """The ``position_ids`` active prefixes ask for: shifted by the prefix length
        (``shift_positions``, PEFT's convention), or, in causal models without given positions,
        each row's real tokens numbered from 0 — the prefix keys carry no position, so a row's
        result does not depend on its (left) padding."""
        offsets = prefix_pool.position_offsets(context.setup, *self._batch_and_device(kwargs))
        if offsets is not None and self.__dict__["_adapters_spec"].is_encoder_decoder:
            context.residuals[POSITION_OFFSETS] = offsets  # the decoder's position embedding reads them
            return
        if offsets is not None:
            kwargs["position_ids"] = self._position_ids(kwargs) + offsets[:, None]
            return
        mask = kwargs.get("attention_mask")
        if (
            prefix_pool.__dict__.get("causal")
            and "position_ids" in _forward_parameter_names(type(self))
            and kwargs.get("position_ids") is None
            and isinstance(mask, torch.Tensor)
            and mask.dim() == 2
        ):
            length = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]).shape[1]
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]

    def _new_context(self) -> ForwardContext:
        """A forward context with the active setup, marked as this model's: the one snapshot of the
        setup (and ``skip_layers``) the whole pass uses. Called with the registry lock held, so the
        adapters the setup names stay as they are until the pass returns."""
        context = ForwardContext(self, *self._setup_for_forward())
        context.registry = self.adapters_config
        return context

    @staticmethod
    def _channels_to_replicate(context) -> int:
        """The Parallel channels whose inputs this call must replicate (0: none). Inputs that
        generate() replicated once already are only recorded in ``context``."""
        channels = _parallel_channels(context.setup)
        if channels > 1 and _pre_replicated.get() == channels:
            context.parallel_channels = channels
            return 0
        return channels if channels > 1 else 0

    def _open_stack_context(self, module, args, kwargs):
        """``(context or None, kwargs)``: for an encoder run on its own (``generate`` encodes once before
        decoding), a forward context like the model's forward opens, with the prefixes computed;
        None when the model's forward opened one already."""
        _, kwargs = _as_module_kwargs(module, args, kwargs)
        context = ForwardContext.get_context()
        if context is not None and context.registry is self.adapters_config:
            return None, kwargs
        context = self._new_context()
        channels = self._channels_to_replicate(context)
        self._check_input_fits(context, channels, (), kwargs)
        if channels:
            kwargs, batch = _replicate_inputs((), (), kwargs, channels)
            context.parallel_channels, context.original_batch_size = channels, batch
        prefix_pool = self.base_model._modules.get("prefix_tuning")
        if context.setup is not None and prefix_pool is not None and prefix_pool.prepare_forward(context):
            use_adapter_attention(self)
        return context, kwargs

    def _prompt_length(self, context) -> tuple[int, int]:
        """``(position, length)`` of the active soft prompts in the encoder input (length 0: none)."""
        pool = self.base_model._modules.get("prompt_tuning")
        return (0, 0) if context is None or pool is None else pool.span(context.setup)

    def _as_kwargs(self, args, kwargs):
        kwargs = dict(kwargs)
        for name, value in zip(_forward_parameter_names(type(self)), args):
            kwargs[name] = value
        return (), kwargs

    @staticmethod
    def _batch_and_device(kwargs):
        for name in ("input_ids", "inputs_embeds", "input_features", "pixel_values", "decoder_input_ids"):
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor):
                return value.shape[0], value.device
        raise AdapterConfigError(
            f"Prefix tuning with shift_positions=True numbers positions from the input, but the forward call got none "
            f"of input_ids / inputs_embeds (arguments: {sorted(kwargs)}); pass input_ids or inputs_embeds."
        )

    @staticmethod
    def _position_ids(kwargs) -> torch.Tensor:
        """The position ids the model would use: the given ones, else ``past + arange(T)``."""
        if kwargs.get("position_ids") is not None:
            return kwargs["position_ids"]
        inputs = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        cache = passed_cache(kwargs)
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        return (torch.arange(inputs.shape[1], device=inputs.device) + past).unsqueeze(0)

    def _setup_for_forward(self):
        """``(setup, skip_layers)`` in force: the innermost AdapterSetup's (validated once), else the
        model's active setup."""
        registry = self.adapters_config
        override = AdapterSetup.get_context()
        if override is not None:
            setup = override.adapter_setup
            if setup is not None and setup not in registry._validated:
                self._validate_setup(setup)
                registry._validated[setup] = True
            return setup, None
        return registry.active_setup, registry.skip_layers

    def _replicate_batch(self, args, kwargs, channels: int, context: ForwardContext):
        kwargs, batch = _replicate_inputs(_forward_parameter_names(type(self)), args, kwargs, channels)
        context.parallel_channels = channels
        context.original_batch_size = batch
        return (), kwargs

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=checkpoint, every_n_layers: int = 1):
        return super()._set_gradient_checkpointing(
            enable=enable,
            gradient_checkpointing_func=_checkpoint_with_context(gradient_checkpointing_func),
            every_n_layers=every_n_layers,
        )

    # -- adding and removing ---------------------------------------------------------------------
    def _check_name(self, name: str, kind: str = "adapter", argument: Optional[str] = "adapter_name") -> None:
        """Raise an AdapterConfigError unless ``name`` is a valid name (see
        :func:`adapters.loading.check_name`: letters, digits, ``_``, ``-``; never a path)."""
        check_name(name, kind=kind, argument=argument)

    def add_adapter(self, adapter_name: str, config=None, overwrite_ok: bool = False, set_active: bool = False):
        """Add a new adapter of the given config to every layer it applies to.

        Args:
            adapter_name: the new adapter's name.
            config: a config object, a config id (``"seq_bn"``, ``"compacter"``, ...), a dict or
                a path to a JSON config; default ``"seq_bn"``.
            overwrite_ok: replace an existing adapter of that name.
            set_active: make the new adapter the active setup.

        Raises:
            AdapterConfigError: the name exists (and not ``overwrite_ok``), the config is unknown or
                does not fit the model. The model is left unchanged: whatever the call created
                (modules, hosts, class swaps, hooks) is removed again, and with ``overwrite_ok``
                the adapter it would replace stays as it was (the new one is built beside it and
                replaces it only once complete).

        Example::

            >>> model.add_adapter("task", config="seq_bn", set_active=True)
        """
        if adapter_name != self.__dict__.get("_adapters_staging_name"):  # load_adapter builds under a staging name
            self._check_name(adapter_name)
        config = AdapterConfig.load(config if config is not None else "seq_bn")
        registry = self.adapters_config
        with registry_lock(registry).writing(f"add_adapter({adapter_name!r})"):
            if adapter_name in registry.adapters and not overwrite_ok:
                raise AdapterConfigError(
                    f"An adapter named {adapter_name!r} exists already; pass overwrite_ok=True to replace it "
                    f"or choose another name."
                )
            self._check_config_fits(config)
            replacing = adapter_name in registry.adapters
            build_name = adapter_name
            if replacing:  # built beside the old one, which stays if the build fails
                build_name = f"{adapter_name}~replacing"
                while build_name in registry.adapters:
                    build_name += "~"
            try:
                self._create_adapter_modules(build_name, config)
            except BaseException:
                self._remove_adapter_modules(build_name)
                raise
            registry.adapters[build_name] = config
            if replacing:
                try:
                    self.delete_adapter(adapter_name)
                except BaseException:
                    self.delete_adapter(build_name)
                    raise
                self._rename_adapter(build_name, adapter_name)
            registry.changed()
        if set_active:
            self.set_active_adapters(adapter_name)
        return None

    def _check_fused_kv_parts_equal(self, spec) -> None:
        """Llama-Adapter projects its prompts through the key/value rows of a fused q/k/v projection
        taken as equal parts; refuse layouts whose parts differ (Phi-3 with grouped-query attention)."""
        if not spec.fused_qkv_heads or spec.key is None:
            return
        layer = self.base_model.get_submodule(spec.layers)[0]
        ranges = fused_part_ranges(spec, spec.key, layer.get_submodule(spec.key), self.config)
        if len({size for _, size in ranges.values()}) > 1:
            raise AdapterConfigError(
                f"Llama-Adapter is not available for {spec.name} with grouped-query attention: the fused {spec.key} "
                f"has parts of different sizes ({', '.join(f'{k}: {size}' for k, (_, size) in ranges.items())}). "
                f"Use prefix tuning, LoRA or bottleneck adapters for this model."
            )

    def _check_config_fits(self, config: AdapterConfig) -> None:
        layer_configs = stack_configs(self.base_model, self.__dict__["_adapters_spec"])  # per layer (CLIP: per tower)
        num_layers = len(layer_configs)
        for part in config.configs_by_architecture():
            if part.architecture not in METHOD_BLOCKS:
                raise AdapterConfigError(
                    f"Adapter method {part.architecture!r} is not available in this version; "
                    f"available methods: {', '.join(sorted(METHOD_BLOCKS))}."
                )
            leave_out = set(getattr(part, "leave_out", ()) or ())
            bad_layers = sorted(i for i in leave_out if not 0 <= i < num_layers)
            if bad_layers:
                raise AdapterConfigError(
                    f"leave_out {bad_layers} names layers the model does not have; give indices 0 … {num_layers - 1} (it "
                    f"has {num_layers} layers)."
                )
            if leave_out >= set(range(num_layers)):
                raise AdapterConfigError(
                    f"leave_out={sorted(leave_out)} leaves out every layer of this {num_layers}-layer model, so the "
                    f"{part.architecture} adapter would change nothing; leave out fewer layers."
                )
            spec = self.__dict__["_adapters_spec"]
            interface = self.__dict__.get("_adapters_interface")
            if interface is not None:
                interface.check_method(part, type(self).__name__)
            refusal = dict(spec.refused_methods).get(part.architecture)
            if refusal is not None:
                raise AdapterConfigError(
                    f"{part.architecture} is not available for {spec.name} ({type(self).__name__}): {refusal}. Use "
                    f"another method (bottleneck adapters, LoRA, prefix tuning) for this model."
                )
            attention_methods = {"prefix_tuning": "Prefix tuning", "adaption_prompt": "Llama-Adapter (adaption prompt)"}
            if part.architecture in attention_methods and not spec.attention_interface:
                raise AdapterConfigError(
                    f"{attention_methods[part.architecture]} is not available for {spec.name} ({type(self).__name__}): its "
                    f"attention does not call transformers' attention interface, through which this method enters "
                    f"without copying attention code. Use another method (bottleneck adapters, LoRA, prompt tuning) "
                    f"for this model."
                )
            if part.architecture == "adaption_prompt" and spec.is_encoder_decoder:
                raise AdapterConfigError(
                    f"Llama-Adapter (adaption prompt) is defined for decoder-only models; {spec.name} is an "
                    f"encoder-decoder. Use prefix tuning (it covers encoder, decoder and cross-attention) instead."
                )
            if part.architecture == "adaption_prompt":
                check_adaption_prompt_config(self, part)
                self._check_fused_kv_parts_equal(spec)
            if part.architecture == "prefix_tuning" and part.shift_positions and spec.is_encoder_decoder:
                if part.encoder_prefix or part.cross_prefix:
                    raise AdapterConfigError(
                        f"shift_positions=True on {spec.name} describes a prefix fed to the decoder as past keys/values "
                        f"(PEFT's layout): only the decoder's self-attention carries it. Set encoder_prefix=False and "
                        f"cross_prefix=False, or shift_positions=False."
                    )
            elif part.architecture == "prefix_tuning" and part.shift_positions and "position_ids" not in _forward_parameter_names(type(self)):
                raise AdapterConfigError(
                    f"shift_positions=True renumbers positions through position_ids, which {type(self).__name__}.forward "
                    f"does not take; use shift_positions=False."
                )
            if part.architecture == "bottleneck":
                widths = {c.hidden_size for c in layer_configs}
                if part.phm_layer and part.shared_W_phm and len(widths) > 1:
                    raise AdapterConfigError(
                        f"Compacter with shared_W_phm=True shares one pair of PHM weights across all layers, but "
                        f"{spec.name}'s layer stacks differ in hidden size ({', '.join(map(str, sorted(widths)))}); use "
                        f"shared_W_phm=False (the default; the shared PHM rules fit every width)."
                    )
                for layer in range(num_layers):
                    hidden = layer_configs[layer].hidden_size
                    size = int(hidden // part.reduction_factor_for(layer))
                    if size < 1:
                        raise AdapterConfigError(
                            f"reduction_factor={part.reduction_factor_for(layer)!r} leaves no bottleneck for hidden size "
                            f"{hidden} (layer {layer}); use a reduction_factor of at most {hidden}."
                        )
                    if part.phm_layer and (hidden % part.phm_dim or size % part.phm_dim):
                        raise AdapterConfigError(
                            f"Compacter needs phm_dim={part.phm_dim} to divide the hidden size ({hidden}) and the "
                            f"bottleneck size ({size}); pick another phm_dim or reduction_factor."
                        )

    def _create_adapter_modules(self, name: str, config: AdapterConfig) -> None:
        reference = next(self.base_model.parameters())
        dtype = reference.dtype if reference.is_floating_point() else None
        added = False
        for part in config.configs_by_architecture():
            if part.architecture == "bottleneck" and part.phm_layer:
                shared = init_shared_parameters(part, self._first_stack_config().hidden_size)
                self._shared_parameters[name] = shared.to(device=reference.device, dtype=dtype)
            if part.architecture == "lora":
                self._add_lora_modules(name, part, reference.device, dtype)
                added = True
            elif part.architecture in WEIGHT_TRANSFORM_METHODS:
                add_weight_transform_modules(self, name, part, reference.device, dtype)
                added = True
            if getattr(part, "modules_to_save", None):
                self._add_saved_modules(name, part.modules_to_save)
                added = True
            if part.architecture == "bottleneck" and part.inv_adapter:
                self._add_invertible_adapter(name, part, reference.device, dtype)
            if part.architecture == "prefix_tuning":
                added = self._add_prefix_modules(name, part, reference.device, dtype) or added
            if part.architecture == "prompt_tuning":
                self._add_prompt_modules(name, part, reference.device, dtype)
                added = True
            if part.architecture == "adaption_prompt":
                add_adaption_prompt(self, name, part, reference.device, dtype)
                added = True
        bottleneck_parts = [p for p in config.configs_by_architecture() if p.architecture == "bottleneck"]
        for host in self._adapter_hosts:
            for part in bottleneck_parts:
                if host.method == "bottleneck" and host.add_adapter(name, part):
                    host.adapters[name].to(device=reference.device, dtype=dtype).train(self.training)
                    added = True
        if not added:
            raise AdapterConfigError(f"Adapter config {config} places no module in this model (check leave_out and positions).")

    def get_input_embeddings(self) -> nn.Module:
        """transformers' input embedding; for a model transformers leaves it undefined for
        (``CLIPModel``, two towers), the spec's token embedding (CLIP: the text tower's).

        Example::

            >>> clip.get_input_embeddings() is clip.text_model.embeddings.token_embedding
            True
        """
        try:
            return super().get_input_embeddings()
        except NotImplementedError:
            spec = self.__dict__.get("_adapters_spec")
            if spec is None:
                raise
            return self.base_model.get_submodule(spec.embeddings)

    def _first_stack_config(self):
        """The config of the first layer stack (the model config, or CLIP's ``text_config``)."""
        return stack_configs(self.base_model, self.__dict__["_adapters_spec"])[0]

    def _add_prefix_modules(self, name: str, config, device, dtype) -> bool:
        """Create the prefix of adapter ``name`` in the pool (and its gates in the layers)."""
        pool = install_prefix_tuning(self)
        if not pool.add_adapter(name, config):
            return False
        pool.prefix_tunings[name].to(device=device, dtype=dtype).train(self.training)
        if config.use_gating:
            record_attention_inputs(pool)
            for host in pool.__dict__["layer_hosts"]:
                if pool.covers(name, host.layer_idx, host.location):
                    host.add_gate(name, config)
                    host.prefix_gates[name].to(device=device, dtype=dtype).train(self.training)
        use_adapter_attention(self)
        return True

    def _add_prompt_modules(self, name: str, config, device, dtype) -> None:
        """Create the soft prompt of adapter ``name``."""
        init_ids = None
        token_embeddings = self.get_input_embeddings()
        if not isinstance(token_embeddings, nn.Embedding):  # ViT: patch embeddings, no vocabulary
            if config.prompt_init == "from_string":
                raise AdapterConfigError(
                    f"prompt_init='from_string' copies token embeddings, but {type(self).__name__} embeds "
                    f"{type(token_embeddings).__name__} inputs, not tokens; use prompt_init='random_uniform'."
                )
            token_embeddings = self.config.hidden_size  # the prompt joins the embedding output
        if config.prompt_init == "from_string":
            from transformers import AutoTokenizer

            source = config.tokenizer_name_or_path or getattr(self.config, "name_or_path", None)
            try:
                tokenizer = AutoTokenizer.from_pretrained(source)
            except Exception as error:
                raise AdapterConfigError(
                    f"prompt_init='from_string' needs a tokenizer for prompt_init_text, but {source!r} could not be "
                    f"loaded ({type(error).__name__}); set tokenizer_name_or_path in the PromptTuningConfig."
                ) from error
            init_ids = tokenizer(config.prompt_init_text, add_special_tokens=False)["input_ids"]
            if not init_ids:
                raise AdapterConfigError(
                    f"prompt_init_text={config.prompt_init_text!r} tokenizes to no tokens; give a text of at least one token."
                )
        pool = install_prompt_tuning(self)
        seed = config.init_weights_seed
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            prompt = PromptTuning(config, token_embeddings, init_ids)
        pool.prompt_tunings[name] = prompt.to(device=device, dtype=dtype).train(self.training)
        pool._invalidate_setup_cache()

    def eject_prefix_tuning(self, name: str) -> None:
        """Replace the MLP reparameterisation of prefix-tuning adapter ``name`` by the flat prefix it
        produces: the outputs stay the same, the parameter count drops to
        ``prefix_length × layers × 2 × kv_heads × head_dim`` per location. The adapter's config
        becomes ``flat=True`` (saved checkpoints load as flat prefixes).

        Raises:
            AdapterConfigError: no adapter of that name, or it has no prefix tuning.

        Example::

            >>> model.eject_prefix_tuning("prefix")
            >>> model.save_adapter("out/prefix", "prefix")
        """
        self._require_adapter(name)
        pool = self.base_model._modules.get("prefix_tuning")
        if pool is None or name not in pool.prefix_tunings:
            raise AdapterConfigError(
                f"Adapter {name!r} has no prefix tuning to eject; eject_prefix_tuning takes a prefix-tuning adapter "
                f"(this model's: {sorted(pool.prefix_tunings) if pool is not None else []})."
            )
        pool.eject(name)
        registry = self.adapters_config
        config = registry.adapters[name]
        if config.architecture == "union":
            from .configuration.base import ConfigUnion

            parts = [p.replace(flat=True) if p.architecture == "prefix_tuning" else p for p in config.configs]
            registry.adapters[name] = ConfigUnion(*parts)
        else:
            registry.adapters[name] = config.replace(flat=True)
        registry.changed()

    def _linear_hosts(self, config) -> tuple[list, str]:
        """``([(target, host)], prefix)``: the linear layers ``config`` targets, each made a
        :class:`LoRALinear` host (LoRA and the weight-transform methods share it); ``prefix`` is the
        base model's path in the model. Raises before changing anything if a target lies inside a
        module adapters keep copies of (``modules_to_save``)."""
        spec = self.__dict__["_adapters_spec"]
        prefix = "" if self.base_model is self else self.base_model_prefix + "."
        targets = resolve_targets(self.base_model, spec, config, prefix)
        saved = [p for p, m in self.base_model.named_modules() if isinstance(m, SavedModuleHost)]
        for target in targets:
            inside = [p for p in saved if target.path.startswith(p + ".")]
            if inside:
                raise AdapterConfigError(
                    f"Module {target.path!r} lies inside {inside[0]!r}, of which adapters keep their own copies "
                    f"(modules_to_save); an adapter there would be missing from those copies. Exclude it "
                    f"(exclude_modules)."
                )
        pairs = []
        for target in targets:
            host = target.module
            if not isinstance(host, LoRALinear):
                swap_class(host, LoRALinear)
                host.init_adapter_layer(target.layer_idx, target.location)
                self._adapter_hosts.append(host)
            pairs.append((target, host))
        return pairs, prefix

    def _add_lora_modules(self, name: str, config, device, dtype) -> None:
        """Attach LoRA / (IA)³ modules to every targeted linear layer, making it a host first."""
        pairs, prefix = self._linear_hosts(config)
        for pattern in {**config.rank_pattern, **config.alpha_pattern}:
            if not any(pattern_value({pattern: 1}, prefix + t.path, None) for t, _ in pairs):
                logger.warning(f"rank/alpha pattern {pattern!r} of adapter {name!r} matches none of its target modules.")
        for target, host in pairs:
            r = pattern_value(config.rank_pattern, prefix + target.path, config.r)
            alpha = pattern_value(config.alpha_pattern, prefix + target.path, config.alpha)
            scale_input = config.feedforward_modules is not None and matches_modules(
                target.path, config.feedforward_modules, prefix
            )
            host.add_lora(name, config, r, alpha, scale_input=scale_input, out_slices=target.out_slices)
            if config.init_weights == "loftq":
                self._loftq_initialise(host, host.loras[name], LoftQConfig(**(config.loftq_config or {})))
            weight = getattr(host, "weight", None)  # the adapted layer's dtype (T5 in float16 keeps wo in float32)
            own_dtype = weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else dtype
            host.loras[name].to(device=device, dtype=own_dtype).train(self.training)

    def _add_saved_modules(self, name: str, module_names) -> None:
        """Give adapter ``name`` its own trainable copy of every module ``module_names`` matches
        (PEFT's ``modules_to_save``; anywhere in the model, heads included)."""
        from .hooks.engine import ComposableLayer

        modules = {p: m for p, m in self.named_modules() if p and not OWN_MODULES.search(p)}
        found = [p for p in modules if matches_modules(p, module_names)]
        found = [p for p in found if not any(p.startswith(q + ".") for q in found)]  # outermost only
        if not found:
            raise AdapterConfigError(
                f"modules_to_save={list(module_names)!r} matches no module of this model. Closest module names: "
                f"{', '.join(closest_names(' '.join(module_names), modules))}."
            )
        inside = lambda path: any(path == f or path.startswith(f + ".") for f in found)  # noqa: E731
        outside = {id(p) for path, m in modules.items() if not inside(path) for p in m.parameters(recurse=False)}
        prefix = "" if self.base_model is self else self.base_model_prefix + "."
        for path in found:
            module = modules[path]
            hosts = [sub for sub in module.modules() if isinstance(sub, ComposableLayer) and not isinstance(sub, SavedModuleHost)]
            if hosts:
                raise AdapterConfigError(
                    f"modules_to_save: {path!r} already hosts adapters (e.g. {type(hosts[0]).__name__}); a copy "
                    f"cannot carry them. Leave {path!r} out of target_modules, or out of modules_to_save."
                )
            tied = [n for n, p in module.named_parameters() if id(p) in outside]
            if tied:
                raise AdapterConfigError(
                    f"modules_to_save: {path}.{tied[0]} is shared with another module (tied weights, e.g. tied "
                    f"input embeddings and LM head); a separate copy would untie them. Train it with the base "
                    f"model instead, or untie the weights first."
                )
        for path in found:
            module = modules[path]
            if not isinstance(module, SavedModuleHost):
                swap_class(module, SavedModuleHost)
                inner = path[len(prefix):] if path.startswith(prefix) else path
                spec = self.__dict__["_adapters_spec"]
                module.init_adapter_layer(layer_of(inner, spec, None, first_layers(self.base_model, spec))[0], path)
                self._adapter_hosts.append(module)
            module.add_copy(name)
            module.modules_to_save[name].train(self.training)

    def _add_invertible_adapter(self, name: str, config, device, dtype) -> None:
        """The invertible block of ``config`` at the embedding output, and its inverse before the
        output embeddings (see :mod:`adapters.methods.invertible`); installs both hooks once."""
        base = self.base_model
        if INVERTIBLE_CONTAINER not in base._modules:
            base.add_module(INVERTIBLE_CONTAINER, nn.ModuleDict())
        spec = self.__dict__["_adapters_spec"]
        host = base.get_submodule(spec.embedding_output or spec.embeddings)
        if not isinstance(host, EmbeddingOutputHost):
            self._install_embedding_host(host)
        for output in self._language_model_outputs():
            self._invert_before(output)
        first = self._first_stack_config()  # the stack whose input embeddings the host reads (CLIP: text)
        size = getattr(first, "embedding_size", None) or first.hidden_size
        host.add_block(name, coupling_block(config, size).to(device=device, dtype=dtype).train(self.training))

    def _language_model_outputs(self) -> list[nn.Module]:
        """The output embeddings the invertible adapters' inverse runs before (the LM head's)."""
        below = getattr(super(), "_language_model_outputs", None)
        if below is not None:  # an AdapterModel (this mixin comes first in its MRO): every LM head's
            return below()
        output = self.get_output_embeddings()
        return [] if output is None else [output]

    def _invert_before(self, output: nn.Module) -> None:
        """Run the active invertible block's inverse on ``output``'s input (once per module)."""
        if isinstance(output, OutputEmbeddingInputHost):
            return
        spec = self.__dict__["_adapters_spec"]
        swap_class(output, OutputEmbeddingInputHost)
        output.__dict__["_adapters_invertible_blocks"] = self.base_model._modules[INVERTIBLE_CONTAINER]
        output.__dict__["_adapters_embedding_host"] = self.base_model.get_submodule(spec.embedding_output or spec.embeddings)
        output._init_composable(-1, OutputEmbeddingInputHost.location)
        self._adapter_hosts.append(output)

    def _install_embedding_host(self, module: nn.Module) -> None:
        swap_class(module, EmbeddingOutputHost)
        module.__dict__["_adapters_invertible_blocks"] = self.base_model._modules[INVERTIBLE_CONTAINER]
        module._init_composable(-1, EmbeddingOutputHost.location)
        self._adapter_hosts.append(module)
        for host in self._adapter_hosts:
            if isinstance(host, OutputEmbeddingInputHost):
                host.__dict__["_adapters_embedding_host"] = module

    def _input_embeddings_replaced(self, old: nn.Module, new: nn.Module) -> None:
        """Move the invertible adapters' hook when the embedding module itself is swapped out
        (``set_active_embeddings`` on models whose embedding output is the token embedding)."""
        if isinstance(old, EmbeddingOutputHost) and old is not new:
            self._adapter_hosts.remove(old)
            for key in ("_adapters_invertible_blocks", "layer_idx", "location", "_setup_cache"):
                old.__dict__.pop(key, None)
            restore_class(old)
            self._install_embedding_host(new)

    def _saved_module_paths(self) -> dict[str, set[str]]:
        """adapter -> the module paths it keeps copies of (``modules_to_save``)."""
        paths: dict[str, set[str]] = {}
        for host in self._adapter_hosts:
            if host.method == "modules_to_save":
                for name in host.modules_to_save:
                    paths.setdefault(name, set()).add(host.location)
        return paths

    @staticmethod
    @torch.no_grad()
    def _loftq_initialise(host, lora, loftq) -> None:
        """Replace the host's weight by its quantised version and fit A, B to the residual."""
        if lora.out_index is not None:
            raise AdapterConfigError(
                "init_weights='loftq' initialises a LoRA over a whole weight; this adapter covers only some parts "
                "of a fused projection (e.g. q and v of GPT-2's c_attn). Target the whole module "
                "(target_modules=['c_attn']) or use another init."
            )
        quantized, a, b = loftq_factors(
            host.weight_out_in, lora.r, lora.scaling, loftq.loftq_bits, loftq.loftq_iter, loftq.quantizer
        )
        host.weight_out_in.copy_(quantized)
        lora.lora_A.copy_(a)
        lora.lora_B.copy_(b)

    def _bias_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """The base-model biases adapter ``name`` trains and saves (LoRA's ``bias`` option),
        keyed by their base-model-relative names."""
        modes = {getattr(p, "bias", "none") for p in self.adapters_config.adapters[name].configs_by_architecture()}
        if modes <= {"none"}:
            return {}
        hosts = {id(h) for h in self._adapter_hosts if h.method == "lora" and name in h.loras}
        biases = {}
        for path, module in self.base_model.named_modules():
            bias = module._parameters.get("bias") if "loras" not in path.split(".") else None
            if bias is not None and ("all" in modes or id(module) in hosts) and not OWN_MODULES.search(path):
                biases[f"{path}.bias" if path else "bias"] = bias
        return biases

    def _lora_hosts_of(self, name: str) -> list:
        self._require_adapter(name)
        hosts = [h for h in self._adapter_hosts if h.method == "lora" and name in h.loras]
        if not hosts:
            raise AdapterConfigError(
                f"Adapter {name!r} changes no layer weights, so it cannot be merged into them: only the LoRA family "
                "(LoRA, DoRA, (IA)³) and the weight transforms (LoHa, LoKr, OFT, HRA, AdaLoRA) merge."
            )
        return hosts

    def merge_adapter(self, name: str) -> None:
        """Fold LoRA / (IA)³ adapter ``name`` into the weights of the layers it adapts.

        Afterwards the layers compute ``x (W + ΔW)ᵀ`` directly and the adapter no longer runs as
        a separate branch; :meth:`reset_adapter` takes it out again.

        All or nothing: every layer's merged weight and bias are computed (out of place, one layer
        at a time) and checked before any weight is written. Refused are non-finite results (a
        NaN/inf adapter, an overflow), a layer whose weight is not floating point (quantized or
        integer: it cannot hold the merged weight), and a merge :meth:`reset_adapter` could not
        undo: (IA)³ and DoRA merges multiply the weight, and their unmerge divides by the same
        factors, so an (IA)³ vector (or DoRA magnitude) with an entry of (nearly) 0 — one that turns a
        non-zero weight entry into 0 or a subnormal number — is refused rather than merged into a
        weight that could never be restored (``merge_and_unload``, which needs no unmerge, takes it).

        Raises:
            AdapterMergeError: a check above failed; the message names the adapter, the module and
                the parameter. No weight was written.
            AdapterConfigError: the adapter is not a LoRA-family adapter, is gated (the gate depends on
                the input, so there is no single merged weight), or is merged already.

        Example::

            >>> model.merge_adapter("lora")
            >>> model.reset_adapter()
        """
        from .merging import apply_all_or_nothing

        with registry_lock(self.adapters_config).writing(f"merge_adapter({name!r})"):
            config = self.adapters_config.adapters.get(name)
            hosts = self._lora_hosts_of(name)
            if any(getattr(part, "use_gating", False) for part in config.configs_by_architecture()):
                raise AdapterConfigError(f"Adapter {name!r} is gated; a gate depends on the input, so it cannot be merged.")
            if any(name in host.merged for host in hosts):
                raise AdapterConfigError(f"Adapter {name!r} is merged already; call reset_adapter() first.")
            apply_all_or_nothing(self, [(host, [name]) for host in hosts], "merge")

    def reset_adapter(self) -> None:
        """Undo every :meth:`merge_adapter` (in reverse order).

        All or nothing, like :meth:`merge_adapter`: every restored weight is computed and checked
        to be finite before any is written.

        Raises:
            AdapterMergeError: a restored weight would not be finite (the adapter's parameters were
                changed to NaN/inf, or an (IA)³ entry to 0, after the merge); no weight was written.

        Example::

            >>> model.reset_adapter()
        """
        self.unmerge_adapter()

    def _remove_adapter_modules(self, name: str) -> None:
        """Remove adapter ``name`` from every host, then what no adapter needs any more (see
        :meth:`_remove_empty_hosts`)."""
        for host in list(self._adapter_hosts):
            host.delete_adapter(name)
        if name in self._shared_parameters:
            del self._shared_parameters[name]
        self._remove_empty_hosts()

    def _remove_empty_hosts(self) -> None:
        """Take out every host, container, hook and class swap that adding adapters installed and
        that no adapter uses any more, so that deleting the last adapter of a method (or a failed
        ``add_adapter``) leaves the module tree as it was before: LoRA-family hosts on linear
        layers, ``modules_to_save`` copies, the invertible adapters' hooks, the prefix and prompt
        pools with their layer hosts, the adaption-prompt hosts, and the attention backend wrapper
        once no method adds to attention. The bottleneck hosts ``adapters.init`` installed stay."""
        hosts = self._adapter_hosts
        empty = [h for h in hosts if isinstance(h, (LoRALinear, SavedModuleHost)) and h.is_empty()]
        for host in empty:
            host.uninstall()
        if empty:
            hosts[:] = [h for h in hosts if not any(h is e for e in empty)]
        uninstall_invertible(self)
        uninstall_prefix_tuning(self)
        uninstall_prompt_tuning(self)
        uninstall_adaption_prompt(self)
        base = self.base_model
        if "prefix_tuning" not in base._modules and "_adaption_prompt_sites" not in base.__dict__:
            for config in attention_configs(self):  # the backend the wrapper wrapped
                implementation = getattr(config, "_attn_implementation", None)
                if isinstance(implementation, str) and implementation.startswith(ATTENTION_PREFIX):
                    config._attn_implementation = implementation[len(ATTENTION_PREFIX):]

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an adapter and every fusion that uses it.

        A merged adapter is unmerged first (all or nothing, see :meth:`reset_adapter`). What was
        installed for the adapter and is not used by another one (hosts, containers, hooks, class
        swaps, the attention wrapper) is removed too: deleting the only adapter leaves the module
        tree as it was before it was added. Waits for forward passes in flight (see
        :class:`~adapters.context.RegistryLock`).

        Raises:
            AdapterMergeError: the adapter is merged and taking it out of the weights would write
                NaN/inf; nothing was deleted.

        Example::

            >>> model.delete_adapter("task")
        """
        registry = self.adapters_config
        with registry_lock(registry).writing(f"delete_adapter({adapter_name!r})"):
            self._require_adapter(adapter_name)
            if any(adapter_name in getattr(h, "merged", ()) for h in self._adapter_hosts if h.method == "lora"):
                self.unmerge_adapter([adapter_name])  # refused before anything changes if it cannot be undone
            for fusion_name, (_, names) in list(registry.fusions.items()):
                if adapter_name in names:
                    self.delete_adapter_fusion(fusion_name)
            self._remove_adapter_modules(adapter_name)
            del registry.adapters[adapter_name]
            if registry.active_setup is not None and adapter_name in registry.active_setup.flatten():
                logger.info(f"Deleted adapter {adapter_name!r} was active; no adapters are active now.")
                registry.active_setup = None
            registry.changed()

    def _rename_adapter(self, old: str, new: str) -> None:
        """Rename an adapter everywhere (used by loading, which builds under a staging name)."""
        for host in self._adapter_hosts:
            if old in host.adapters:
                host.adapters[new] = host.adapters.pop(old)
                host._invalidate_setup_cache()
        if old in self._shared_parameters:
            self._shared_parameters[new] = self._shared_parameters.pop(old)
        registry = self.adapters_config
        registry.adapters[new] = registry.adapters.pop(old)
        registry.changed()

    def _require_adapter(self, name: str) -> None:
        if name not in self.adapters_config.adapters:
            known = ", ".join(sorted(self.adapters_config.adapters)) or "none"
            raise AdapterConfigError(f"No adapter named {name!r}; the model has: {known}. Add or load it first.")

    def add_adapter_fusion(
        self,
        adapter_names: Union[Fuse, list, str],
        config="dynamic",
        name: Optional[str] = None,
        overwrite_ok: bool = False,
        set_active: bool = False,
    ) -> None:
        """Add an AdapterFusion layer over existing adapters.

        Args:
            adapter_names: a :class:`~adapters.Fuse` block, a list of names or ``"a,b"``.
            config: ``"dynamic"``, ``"static"``, a dict or an :class:`~adapters.AdapterFusionConfig`.
            name: the fusion's name (default: the adapter names joined by commas).
            overwrite_ok: replace an existing fusion of that name.
            set_active: activate ``Fuse(*adapter_names)``.

        Example::

            >>> model.add_adapter_fusion(Fuse("a", "b", "c"), set_active=True)
        """
        block = _as_fuse(adapter_names, name)
        if block._name is not None:  # a name of its own (the default joins the adapter names, checked below)
            self._check_name(block.name, kind="fusion", argument="name")
        names = tuple(block.flatten())
        for adapter in names:
            self._require_adapter(adapter)
            if self.adapters_config.adapters[adapter].architecture not in ("bottleneck", "union"):
                raise AdapterConfigError(
                    f"Cannot fuse adapter {adapter!r}: its method {self.adapters_config.adapters[adapter].architecture} "
                    f"has no fusion; AdapterFusion combines bottleneck adapters."
                )
        fusion_config = AdapterFusionConfig.load(config)
        registry = self.adapters_config
        with registry_lock(registry).writing(f"add_adapter_fusion({block.name!r})"):
            replacing = block.name in registry.fusions
            if replacing and not overwrite_ok:
                raise AdapterConfigError(f"A fusion named {block.name!r} exists already; pass overwrite_ok=True to replace it.")
            build_name = f"{block.name}~replacing" if replacing else block.name  # the old one stays until the new is built
            reference = next(self.base_model.parameters())
            created = []
            try:
                for host in self._adapter_hosts:
                    if host.method == "bottleneck" and host.add_fusion_layer(build_name, names, fusion_config):
                        created.append(host)
                        layer = host.adapter_fusion_layer[build_name]
                        layer.to(device=reference.device, dtype=reference.dtype).train(self.training)
            except BaseException:
                for host in created:
                    host.delete_fusion_layer(build_name)
                raise
            if replacing:
                self.delete_adapter_fusion(block.name)
                for host in created:
                    layers = host.adapter_fusion_layer
                    layers[block.name] = layers.pop(build_name)
                    host._invalidate_setup_cache()
            registry.fusions[block.name] = (fusion_config, names)
            registry.changed()
        if set_active:
            self.set_active_adapters(block)

    def delete_adapter_fusion(self, adapter_names: Union[Fuse, list, str]) -> None:
        """Delete an AdapterFusion layer (by block, list of names or name).

        Example::

            >>> model.delete_adapter_fusion("a,b,c")
        """
        fusion_name = adapter_names if isinstance(adapter_names, str) else _as_fuse(adapter_names, None).name
        registry = self.adapters_config
        with registry_lock(registry).writing(f"delete_adapter_fusion({fusion_name!r})"):
            if fusion_name not in registry.fusions:
                known = ", ".join(sorted(registry.fusions)) or "none"
                raise AdapterConfigError(f"No adapter fusion named {fusion_name!r}; the model has: {known}.")
            for host in self._adapter_hosts:
                if host.method == "bottleneck":
                    host.delete_fusion_layer(fusion_name)
            del registry.fusions[fusion_name]
            if registry.active_setup is not None and _uses_fusion(registry.active_setup, fusion_name):
                registry.active_setup = None
            registry.changed()

    # -- activation ------------------------------------------------------------------------------
    @property
    def active_adapters(self) -> Optional[AdapterCompositionBlock]:
        """The active setup (a composition block), or None. Settable like
        :meth:`set_active_adapters`.

        Example::

            >>> model.active_adapters = "a,b"
            >>> model.active_adapters
            Stack[a, b]
        """
        return self.adapters_config.active_setup

    @active_adapters.setter
    def active_adapters(self, adapter_setup: SetupLike) -> None:
        self.set_active_adapters(adapter_setup)

    def set_active_adapters(self, adapter_setup: SetupLike, skip_layers: Optional[list[int]] = None) -> None:
        """Activate a setup for every following forward pass (None deactivates all adapters).

        The setup is validated here, completely, before anything changes: its structure
        (nestings, ``Parallel`` placement, ``BatchSplit`` sizes that fit together), unknown
        adapters, fusions that do not exist, methods that cannot take part in a block they sit in
        (at any depth), merged adapters outside a ``Stack``, and ``skip_layers``. A refused setup
        raises :class:`~adapters.errors.CompositionError` naming the block, the adapter and its
        method, and leaves the active setup as it was. What depends on the input (a batch that
        the ``BatchSplit`` sizes do not fit) is checked at the start of each forward pass.

        Args:
            adapter_setup: a name, ``"a,b"``, a list or a composition block.
            skip_layers: layer indices where no adapter runs (each ``0 <= i < number of layers``).

        Example::

            >>> model.set_active_adapters(Parallel("a", "b"))
            >>> model.set_active_adapters(Stack("a", "b"), skip_layers=[0])
        """
        setup = parse_composition(adapter_setup)
        if setup is not None:
            self._validate_setup(setup)
        skip = self._checked_skip_layers(skip_layers)
        registry = self.adapters_config
        registry.active_setup = setup
        registry.skip_layers = skip
        registry.changed()
        follow = getattr(self, "_heads_follow_setup", None)  # AdapterModels: the head of that name becomes active
        if follow is not None:
            follow(setup)

    def _checked_skip_layers(self, skip_layers) -> Optional[frozenset]:
        """``skip_layers`` as a frozenset (None for none), refused unless it lists layer indices of
        this model."""
        if skip_layers is None:
            return None
        num_layers = len(stack_configs(self.base_model, self.__dict__["_adapters_spec"]))
        valid = f"a list of layer indices 0 … {num_layers - 1} (this model has {num_layers} layers), or None"
        if isinstance(skip_layers, (str, bytes)) or not hasattr(skip_layers, "__iter__"):
            raise AdapterConfigError(f"skip_layers={skip_layers!r} is not a list; give {valid}.")
        layers = list(skip_layers)
        bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < num_layers]
        if bad:
            raise AdapterConfigError(f"skip_layers={layers!r} names {bad!r}, which are not layers of this model; give {valid}.")
        return frozenset(int(i) for i in layers) or None

    def _validate_setup(self, setup: AdapterCompositionBlock) -> None:
        """Refuse ``setup`` unless it can run on this model whatever the input (see
        :meth:`set_active_adapters`); raises :class:`~adapters.errors.CompositionError`."""
        validate_composition(setup)  # the structure and BatchSplit sizes (cached: cheap when parsed already)
        registry = self.adapters_config
        for name in setup.flatten():
            if name not in registry.adapters:
                known = ", ".join(sorted(registry.adapters)) or "none"
                raise CompositionError(
                    f"Adapter setup {setup} names unknown adapter {name!r}; the model has: {known}. "
                    f"Add it with add_adapter or load_adapter first."
                )
        self._validate_block(setup)
        self._validate_merged_in_setup(setup)
        try:
            check_saved_module_setup(setup, self._saved_module_paths())
        except CompositionError:
            raise
        except ValueError as error:
            raise CompositionError(str(error)) from error

    def _validate_block(self, block: AdapterCompositionBlock, ancestors: tuple = ()) -> None:
        """Check ``block`` and everything below it: its fusion (a ``Fuse``), and for every adapter
        that every block around it (``ancestors`` and ``block``) is one its methods take part in."""
        registry = self.adapters_config
        if isinstance(block, Fuse):
            if block.name not in registry.fusions:
                raise CompositionError(
                    f"{block} needs an AdapterFusion named {block.name!r}; add it with "
                    f"model.add_adapter_fusion({block}) or load_adapter_fusion."
                )
            fused = set(registry.fusions[block.name][1])
            children = {c if isinstance(c, str) else c.last() for c in block.children}
            if not children <= fused:
                raise CompositionError(
                    f"{block} fuses {sorted(children - fused)}, which fusion {block.name!r} was not built for "
                    f"(it fuses {sorted(fused)}); add a fusion of these adapters with model.add_adapter_fusion({block})."
                )
        enclosing = ancestors + (block,)
        for child in block.children:
            if isinstance(child, AdapterCompositionBlock):
                self._validate_block(child, enclosing)
                continue
            for part in registry.adapters[child].configs_by_architecture():
                supported = METHOD_BLOCKS[part.architecture]
                refused = [b for b in enclosing if type(b) not in supported]
                if refused:
                    raise CompositionError(_block_refusal(child, part.architecture, supported, refused[-1], block))

    def _validate_merged_in_setup(self, setup: AdapterCompositionBlock) -> None:
        """A merged adapter acts on every row and token (it is in the weights): refuse it anywhere
        but alone or in ``Stack`` blocks."""
        merged = {name for host in self._adapter_hosts if host.method == "lora" for name in getattr(host, "merged", ())}
        if not merged:
            return
        for name, path in _leaves_with_blocks(setup):
            outside = [b for b in path if not isinstance(b, Stack)]
            if name in merged and outside:
                raise CompositionError(
                    f"Adapter {name!r} is merged into the weights, so it acts on every row and token, but {setup} puts "
                    f"it inside {outside[-1]}. Use it alone or in a Stack, or call model.reset_adapter() first."
                )

    def _check_input_fits(self, context: ForwardContext, channels: int, args, kwargs, names=()) -> None:
        """At the start of a forward pass, refuse an input the setup cannot be applied to, with a
        :class:`~adapters.errors.CompositionError` naming the block, its sizes and the input's size
        (instead of a tensor error in a layer, or a silently wrong result):

        * a batch (``args`` named by ``names``, and ``kwargs``; replicated ``channels`` times for
          ``Parallel`` by this pass, 0: not) that the ``BatchSplit`` sizes do not fit;
        * a ``Split`` in a pass that continues a KV cache: its new tokens sit at positions after
          the cached ones, which the adapter positions cannot tell from 0, 1, …;
        * a KV cache of another batch size than the rows ``Parallel`` replicates the input to.
        """
        setup = context.setup
        if channels > 1:
            self._check_cache_rows(setup, channels, args, kwargs, names)
        sized = _sized_blocks(setup) if setup is not None else ()
        if not sized:
            return
        if batch_requirement(setup) is not None:
            batch = _input_batch(names, args, kwargs)
            if batch is not None:
                check_input_batch(setup, batch, channels or 1)
        split = next((b for b in sized if isinstance(b, Split)), None)
        cache = passed_cache(kwargs) if split is not None else None
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        if past:
            raise CompositionError(
                f"{split} cuts the sequence at fixed positions (splits {list(split.splits)}), but this forward pass "
                f"continues a KV cache of {past} positions: its new tokens sit at positions {past} and later, which "
                f"the adapters cannot tell from positions 0, 1, …. Run it without a cache (use_cache=False, e.g. "
                f"model.generate(..., use_cache=False)), or use a setup without Split."
            )

    @staticmethod
    def _check_cache_rows(setup, channels: int, args, kwargs, names) -> None:
        """Parallel replicates this pass's inputs ``channels`` times: a KV cache it continues must
        have the replicated rows (the cache of an earlier pass under the same Parallel)."""
        cache = passed_cache(kwargs)
        if cache is None or not hasattr(cache, "get_seq_length") or not cache.get_seq_length():
            return
        rows = _cache_rows(cache)
        batch = _input_batch(names, args, kwargs)
        if rows is not None and batch is not None and rows != batch * channels:
            raise CompositionError(
                f"{setup} replicates the input batch of {batch} rows {channels}× ({batch * channels} rows), but the KV "
                f"cache passed has {rows} rows. Continue a cache made under the same Parallel setup (it has "
                f"{batch * channels} rows), or activate the setup the cache was made with."
            )

    # -- training --------------------------------------------------------------------------------
    def freeze_model(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) every weight of the base model, adapters included.

        Example::

            >>> model.freeze_model()      # then unfreeze what you train
        """
        self.base_model.requires_grad_(not freeze)
        for host in self._adapter_hosts:  # copies kept outside the base model (modules_to_save on a head)
            if host.method == "modules_to_save":
                host.requires_grad_(not freeze)
        self.base_model.__dict__["model_frozen"] = freeze

    def _head_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the base model (heads), except modules adapters keep copies of:
        those train through the active adapter's copy."""
        excluded = {id(p) for p in self.base_model.parameters()}
        for host in self._adapter_hosts:
            if host.method == "modules_to_save":
                excluded.update(id(p) for p in host.parameters())
        return [p for p in self.parameters() if id(p) not in excluded]

    def _enable(self, setup: AdapterCompositionBlock, adapters: bool, fusions: bool) -> None:
        names = setup.flatten()
        fusion_names = _fusion_names(setup)
        for host in self._adapter_hosts:
            if adapters:
                for name in names:
                    if name in host.adapters:
                        host.adapters[name].requires_grad_(True)
            if fusions and host.method == "bottleneck":
                for fusion_name in fusion_names:
                    if fusion_name in host.adapter_fusion_layer:
                        host.adapter_fusion_layer[fusion_name].requires_grad_(True)
        if adapters:
            for name in names:
                if name in self._shared_parameters:
                    self._shared_parameters[name].requires_grad_(True)
                self._freeze_fixed_phm_rules(name)
                for bias in self._bias_parameters(name).values():
                    bias.requires_grad_(True)

    def _freeze_fixed_phm_rules(self, name: str) -> None:
        """Compacter with ``learn_phm=False`` keeps its PHM rules fixed while the adapter trains."""
        for part in self.adapters_config.adapters[name].configs_by_architecture():
            if part.architecture == "bottleneck" and part.phm_layer and not part.learn_phm:
                modules = [m for layer in self.get_adapter(name).values() for m in layer.values()]
                if name in self._shared_parameters:
                    modules.append(self._shared_parameters[name])
                for module in modules:
                    for param_name, param in module.named_parameters():
                        if param_name.rsplit(".", 1)[-1].startswith("phm_rule"):
                            param.requires_grad_(False)

    def train_adapter(self, adapter_setup: SetupLike, train_embeddings: bool = False) -> None:
        """Prepare training of the adapters in ``adapter_setup``: freeze the base model, make
        those adapters (and the heads of a model with heads) trainable, and activate the setup.

        Example::

            >>> model.train_adapter("task")
            >>> optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        """
        setup = parse_composition(adapter_setup)
        self._validate_setup(setup)
        self.train()
        self.freeze_model(True)
        self._enable(setup, adapters=True, fusions=False)
        for param in self._head_parameters():
            param.requires_grad_(True)
        if train_embeddings:
            self.get_input_embeddings().requires_grad_(True)
        self.set_active_adapters(setup)

    def train_adapter_fusion(self, adapter_setup: SetupLike, unfreeze_adapters: bool = False) -> None:
        """Prepare training of the fusion layers in ``adapter_setup`` (and, with
        ``unfreeze_adapters``, of the fused adapters).

        Example::

            >>> model.train_adapter_fusion(Fuse("a", "b", "c"))
        """
        setup = parse_composition(adapter_setup)
        self._validate_setup(setup)
        self.train()
        self.freeze_model(True)
        self._enable(setup, adapters=unfreeze_adapters, fusions=True)
        for param in self._head_parameters():
            param.requires_grad_(True)
        self.set_active_adapters(setup)

    def get_fusion_regularization_loss(self) -> torch.Tensor:
        """Sum of the value regularisers of all fusion layers that ask for one.

        Example::

            >>> loss = task_loss + model.get_fusion_regularization_loss()
        """
        total = torch.zeros((), device=next(self.parameters()).device)
        for host in self._adapter_hosts:
            if host.method == "bottleneck":
                for fusion in host.adapter_fusion_layer.values():
                    total = total + fusion.regularization_loss().to(total.device)
        return total

    # -- inspection ------------------------------------------------------------------------------
    def get_adapter(self, name: str) -> dict[int, dict[str, nn.Module]]:
        """The modules of adapter ``name``: ``{layer_idx: {location: module}}``.

        Example::

            >>> model.get_adapter("task")[0]["output_adapter"]
            Adapter(...)
        """
        self._require_adapter(name)
        modules: dict[int, dict[str, nn.Module]] = {}
        for host in self._adapter_hosts:
            module = host.adapters[name] if name in host.adapters else None
            if module is not None:
                modules.setdefault(host.layer_idx, {})[host.location] = module
        return modules

    def _adapter_parameters(self, name: str) -> list[nn.Parameter]:
        params = [p for layer in self.get_adapter(name).values() for m in layer.values() for p in m.parameters()]
        if name in self._shared_parameters:
            params += list(self._shared_parameters[name].values())
        return params

    def adapter_to(self, name: str, device=None, dtype=None) -> None:
        """Move adapter ``name`` (and its shared parameters) to a device and/or dtype.

        Example::

            >>> model.adapter_to("task", device="cuda", dtype=torch.bfloat16)
        """
        for layer in self.get_adapter(name).values():
            for module in layer.values():
                module.to(device=device, dtype=dtype)
        if name in self._shared_parameters:
            self._shared_parameters[name].to(device=device, dtype=dtype)

    def adapter_summary(self, as_dict: bool = False):
        """A table of the adapters and fusions: name, architecture, #params, %params (of the
        base model), active, trainable.

        Example::

            >>> print(model.adapter_summary())
        """
        registry = self.adapters_config
        active = set(registry.active_setup.flatten()) if registry.active_setup is not None else set()
        rows = []
        for name, config in registry.adapters.items():
            params = self._adapter_parameters(name)
            rows.append(
                {
                    "name": name,
                    "architecture": config.architecture,
                    "#param": sum(p.numel() for p in params),
                    "active": name in active,
                    "train": bool(params) and all(p.requires_grad for p in params),
                }
            )
        for fusion_name in registry.fusions:
            params = [
                p
                for host in self._adapter_hosts
                if host.method == "bottleneck" and fusion_name in host.adapter_fusion_layer
                for p in host.adapter_fusion_layer[fusion_name].parameters()
            ]
            rows.append(
                {
                    "name": fusion_name,
                    "architecture": "fusion",
                    "#param": sum(p.numel() for p in params),
                    "active": registry.active_setup is not None and _uses_fusion(registry.active_setup, fusion_name),
                    "train": bool(params) and all(p.requires_grad for p in params),
                }
            )
        own = {id(p) for name in registry.adapters for p in self._adapter_parameters(name)}
        own.update(id(p) for host in self._adapter_hosts if host.method == "bottleneck" for p in host.adapter_fusion_layer.parameters())
        base_params = sum(p.numel() for p in self.base_model.parameters() if id(p) not in own)
        for row in rows:
            row["%param"] = 100.0 * row["#param"] / base_params
        rows.append(
            {
                "name": "Full model",
                "#param": base_params,
                "%param": 100.0,
                "train": not self.base_model.__dict__.get("model_frozen", False),
            }
        )
        if as_dict:
            return rows
        line, header = "=" * 80, "{:<25}{:<15}{:>12}{:>12}{:>8}{:>8}"
        row_format = "{:<25}{:<15}{:>12,}{:>12.3f}{:>8}{:>8}"
        lines = [line, header.format("Name", "Architecture", "#Param", "%Param", "Active", "Train"), "-" * 80]
        for row in rows[:-1]:
            lines.append(
                row_format.format(
                    row["name"], row["architecture"], row["#param"], row["%param"], int(row["active"]), int(row["train"])
                )
            )
        full = rows[-1]
        lines += ["-" * 80, "{:<25}{:<15}{:>12,}{:>12.3f}{:>8}{:>8}".format(
            full["name"], "", full["#param"], full["%param"], "", int(full["train"])
        ), line]
        return "\n".join(lines)

    # -- checkpoints (see adapters.loading) ---------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``; a model initialised with an
        :class:`~adapters.AdapterModelInterface` also gets AdapterHub's ``adapter_interface.json``
        (the interface is in ``config.json`` too, where ``adapters.init`` finds it after
        ``from_pretrained``), written atomically inside ``save_directory``.

        Example::

            >>> model.save_pretrained("out/model")
            >>> adapters.init(MyModel.from_pretrained("out/model"))   # the saved interface is used
        """
        result = super().save_pretrained(save_directory, *args, **kwargs)
        interface = self.__dict__.get("_adapters_interface")
        if interface is not None:
            from .interface import INTERFACE_CONFIG_NAME
            from .loading import _CheckpointFiles

            with _CheckpointFiles(save_directory) as files:
                files.file(INTERFACE_CONFIG_NAME, lambda folder: interface.save(folder, self.config))
        return result

    def save_adapter(
        self,
        save_directory: str,
        adapter_name: str,
        with_head: bool = True,
        meta_dict=None,
        use_safetensors: bool = True,
        format: str = "adapterhub",
    ):
        """Save adapter ``adapter_name`` to a folder in AdapterHub's layout
        (``adapter_config.json`` + ``adapter.safetensors``), or with ``format="peft"`` in PEFT's
        (LoRA-family adapters, the weight transforms, Llama-Adapter on Llama/Mistral; loadable by
        ``peft.PeftModel.from_pretrained``). On an AdapterModel, ``with_head=True`` also saves the
        head of the same name (``head_config.json`` + ``model_head.safetensors``).

        The files are written atomically: each under a temporary name in the folder, moved into
        place once all are written (weights first, ``adapter_config.json`` last); the weights
        file of the other format that an earlier save left (``pytorch_adapter.bin`` beside a new
        ``adapter.safetensors`` or the reverse) is removed, nothing else. If a write fails, the
        folder keeps its previous checkpoint and no temporary file.

        Example::

            >>> model.save_adapter("out/task", "task")
            >>> model.save_adapter("out/lora", "lora", format="peft")
        """
        from .loading import _CheckpointFiles, _stage_adapter

        heads = getattr(self, "heads", None)
        with _CheckpointFiles(save_directory) as files:
            _stage_adapter(self, files, adapter_name, meta_dict, use_safetensors, format)
            if with_head and heads is not None and adapter_name in heads:
                self._stage_head(files, adapter_name, use_safetensors)
        logger.info(f"Saved adapter {adapter_name!r} to {save_directory}.")

    def load_adapter(
        self,
        adapter_name_or_path: str,
        config=None,
        load_as: Optional[str] = None,
        set_active: bool = False,
        leave_out: Optional[list[int]] = None,
        overwrite_ok: bool = False,
        allow_non_finite: bool = False,
        **kwargs,
    ) -> str:
        """Load an adapter saved by :meth:`save_adapter` or by AdapterHub (also legacy
        ``pytorch_adapter.bin``, read with ``torch.load(weights_only=True)``).

        Returns the name under which it was loaded. On any error the model is left unchanged. On an
        AdapterModel, a head saved next to the adapter is loaded too (under the same name) unless
        ``with_head=False``.

        Args:
            adapter_name_or_path: a folder, or a Hugging Face Hub repo id.
            config: use this config instead of the one saved.
            load_as: the name to load it under (default: the saved name); letters, digits, ``_``
                and ``-``.
            set_active: activate it.
            leave_out: layers to leave out in addition to the saved config's.
            overwrite_ok: replace an adapter of the same name.
            allow_non_finite: also load weights holding NaN/inf or of a non-float dtype (int,
                bool; converted to the parameter's dtype). Refused by default with an
                :class:`~adapters.AdapterLoadError` naming the file and the tensor; for research
                on such weights.

        Raises:
            AdapterLoadError: the checkpoint is missing, corrupt, does not fit the model, or its
                saved name is invalid (the message names the file).
            AdapterConfigError: ``load_as`` or ``leave_out`` is invalid.

        Example::

            >>> name = model.load_adapter("out/task", set_active=True)
            >>> model.load_adapter("out/diverged", load_as="nan_study", allow_non_finite=True)
        """
        from .loading import _resolve_folder, load_adapter

        if load_as is not None:
            self._check_name(load_as, argument="load_as")
        with_head = kwargs.pop("with_head", True)
        head = None
        if with_head and getattr(self, "heads", None) is not None:  # an AdapterModel (adapters.heads)
            folder = _resolve_folder(adapter_name_or_path, **kwargs)
            if self._holds_head(folder):  # checked before anything changes
                head = self._prepare_head(folder, load_as=load_as, overwrite_ok=overwrite_ok, allow_non_finite=allow_non_finite)
            adapter_name_or_path = folder
        name = load_adapter(
            self, adapter_name_or_path, config=config, load_as=load_as, set_active=False,
            leave_out=leave_out, overwrite_ok=overwrite_ok, allow_non_finite=allow_non_finite, **kwargs,
        )
        if head is not None:
            self._insert_loaded_head(*head, set_active=True)
        if set_active:
            self.set_active_adapters(name)
        return name

    def save_adapter_fusion(self, save_directory: str, adapter_names, use_safetensors: bool = True) -> None:
        """Save a fusion layer (AdapterHub layout: ``adapter_fusion_config.json`` + weights),
        atomically as :meth:`save_adapter`.

        Example::

            >>> model.save_adapter_fusion("out/fusion", "a,b,c")
        """
        from .loading import save_adapter_fusion

        save_adapter_fusion(self, save_directory, adapter_names, use_safetensors=use_safetensors)

    def load_adapter_fusion(
        self,
        adapter_fusion_name_or_path: str,
        load_as: Optional[str] = None,
        set_active: bool = False,
        allow_non_finite: bool = False,
        **kwargs,
    ) -> str:
        """Load a fusion layer saved by :meth:`save_adapter_fusion` or AdapterHub; the fused
        adapters must be loaded already. Returns the fusion's name. ``allow_non_finite`` as in
        :meth:`load_adapter`.

        Example::

            >>> model.load_adapter_fusion("out/fusion", set_active=True)
        """
        from .loading import load_adapter_fusion

        return load_adapter_fusion(
            self, adapter_fusion_name_or_path, load_as=load_as, set_active=set_active, allow_non_finite=allow_non_finite
        )

    def save_all_adapters(self, save_directory: str, with_head: bool = True, use_safetensors: bool = True) -> None:
        """Save every adapter into ``save_directory/<name>``. Every target is checked to lie
        inside ``save_directory`` (symbolic links resolved) before anything is written.

        Example::

            >>> model.save_all_adapters("out/adapters")
        """
        from .loading import _inside

        targets = {}
        for name in self.adapters_config.adapters:
            self._check_name(name, argument=None)
            targets[name] = _inside(save_directory, name)
        for name, target in targets.items():
            self.save_adapter(target, name, with_head=with_head, use_safetensors=use_safetensors)

    def save_all_adapter_fusions(self, save_directory: str, use_safetensors: bool = True) -> None:
        """Save every fusion into ``save_directory/<fusion name>``, each target checked to lie
        inside ``save_directory`` as in :meth:`save_all_adapters`.

        Example::

            >>> model.save_all_adapter_fusions("out/fusions")
        """
        from .loading import _inside

        targets = {}
        for name in self.adapters_config.fusions:
            self._check_name(name, kind="fusion", argument=None)
            targets[name] = _inside(save_directory, name)
        for name, target in targets.items():
            self.save_adapter_fusion(target, name, use_safetensors=use_safetensors)


_BLOCK_HINTS = {
    "Split": "put it outside the Split, e.g. Stack({name!r}, Split(...)), where it acts on every token",
    "Average": "use it outside the Average, e.g. Stack({name!r}, Average(...)), or in Parallel / BatchSplit branches",
    "Fuse": "only bottleneck adapters are fused; use it outside the Fuse, e.g. Stack({name!r}, Fuse(...))",
    "Parallel": "use it outside the Parallel, e.g. Stack({name!r}, Parallel(...)), where it acts on every row",
    "BatchSplit": "use it outside the BatchSplit, e.g. Stack({name!r}, BatchSplit(...)), where it acts on every row",
}


def _block_refusal(name: str, method: str, supported: tuple, refused, parent) -> str:
    """The message for adapter ``name`` whose ``method`` cannot take part in block ``refused``."""
    kind = type(refused).__name__
    where = "" if refused is parent else f" (it sits in {parent}, inside {refused})"
    hint = _BLOCK_HINTS.get(kind, "use it only in blocks its method supports").format(name=name)
    return (
        f"Adapter {name!r} cannot take part in {refused}{where}: its method {method!r} does not support {kind} "
        f"blocks (it supports {', '.join(b.__name__ for b in supported)}, at every level around it). Valid form: {hint}."
    )


@functools.lru_cache(maxsize=256)
@functools.lru_cache(maxsize=1024)  # setups are immutable and hashable; this runs at every forward pass
def _sized_blocks(setup) -> tuple:
    """The Split and BatchSplit blocks of ``setup`` (what the input must fit), depth first."""
    if isinstance(setup, str):
        return ()
    own = (setup,) if isinstance(setup, (Split, BatchSplit)) else ()
    return own + tuple(b for child in setup.children for b in _sized_blocks(child))


def _cache_rows(cache) -> Optional[int]:
    """The batch size of the keys a KV cache holds (its first filled layer), or None."""
    caches = [cache] + [getattr(cache, n) for n in ("self_attention_cache",) if getattr(cache, n, None) is not None]
    for part in caches:
        for layer in getattr(part, "layers", ()) or ():
            keys = getattr(layer, "keys", None)
            if isinstance(keys, torch.Tensor) and keys.dim() > 0 and keys.numel():
                return keys.shape[0]
    return None


def _input_batch(names, args, kwargs) -> Optional[int]:
    """The batch size of a call's inputs (the first batch input, by name or position), or None."""
    for name in _BATCH_INPUTS:
        value = kwargs.get(name)
        if value is None and name in names:
            index = names.index(name)
            value = args[index] if index < len(args) else None
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def _leaves_with_blocks(setup, path: tuple = ()):
    """``(name, enclosing blocks from the outermost)`` for every leaf of ``setup``."""
    if isinstance(setup, str):
        yield setup, path
        return
    for child in setup.children:
        yield from _leaves_with_blocks(child, path + (setup,))


def _original_class(cls) -> Optional[type]:
    """The transformers class behind a patched (or AdapterModel) class: the first module class in
    its MRO that is not an adapters mixin."""
    return next((c for c in cls.__mro__ if issubclass(c, nn.Module) and not issubclass(c, ModelAdaptersMixin)), None)


def _positional_names(function) -> tuple[str, ...]:
    params = inspect.signature(function).parameters
    return tuple(n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


@functools.lru_cache(maxsize=None)
def _generate_parameter_names(cls) -> tuple[str, ...]:
    return _positional_names(super(ModelAdaptersMixin, cls).generate)


@functools.lru_cache(maxsize=None)
def _forward_parameter_names(cls) -> tuple[str, ...]:
    return _positional_names(_original_class(cls).forward)


def _replicate_inputs(names, args, kwargs, channels: int) -> tuple[dict, Optional[int]]:
    """``(kwargs, batch)``: the call's arguments as keywords (positional ones named by ``names``),
    each batch input repeated ``channels`` times along the batch; ``batch`` is the original size."""
    kwargs = dict(kwargs)
    for name, value in zip(names, args):
        kwargs[name] = value
    batch = None
    for name in _BATCH_INPUTS:
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            separate = name in _SEPARATE_BATCH_INPUTS and batch is not None and value.shape[0] != batch
            batch = value.shape[0] if batch is None else batch
            if value.shape[0] == batch or separate:  # CLIP's images: M rows beside N texts
                kwargs[name] = value.repeat(channels, *([1] * (value.dim() - 1)))
    return kwargs, batch


def _parallel_channels(setup) -> int:
    if isinstance(setup, Parallel):
        return setup.parallel_channels
    if isinstance(setup, Stack):
        for child in setup.children:
            if isinstance(child, Parallel):
                return child.parallel_channels
    return 1


def _as_fuse(adapter_names, name) -> Fuse:
    if isinstance(adapter_names, Fuse):
        return Fuse(*adapter_names.children, name=name or adapter_names._name)
    if isinstance(adapter_names, str):
        adapter_names = [n.strip() for n in adapter_names.split(",")]
    return Fuse(*adapter_names, name=name)


def _fusion_names(setup) -> list[str]:
    names = []
    if isinstance(setup, Fuse):
        names.append(setup.name)
    if isinstance(setup, AdapterCompositionBlock):
        for child in setup.children:
            names += _fusion_names(child)
    return names


def _uses_fusion(setup, fusion_name: str) -> bool:
    return fusion_name in _fusion_names(setup)


def _as_module_kwargs(module, args, kwargs) -> tuple[tuple, dict]:
    """``((), kwargs)``: ``module``'s call with its positional arguments named."""
    if not args:
        return (), dict(kwargs)
    kwargs = dict(kwargs)
    for name, value in zip(_module_parameter_names(module.__dict__["_adapters_original_class"]), args):
        kwargs[name] = value
    return (), kwargs


@functools.lru_cache(maxsize=None)
def _module_parameter_names(cls) -> tuple[str, ...]:
    return _positional_names(cls.forward)


class StackEntryMixin:
    """Swapped onto a part of the model that callers run on their own (CLIP's ``text_model`` in
    ``get_text_features``, ``vision_model`` in ``get_image_features``): run outside the model's
    forward, it opens the model's forward context itself (active setup, prefixes, Parallel
    replication of its inputs); inside it, it runs as it is.

    Example::

        >>> adapters.init(clip)                   # swaps it onto clip.text_model and clip.vision_model
        >>> clip.set_active_adapters("a")
        >>> clip.get_text_features(input_ids=ids)  # the text tower's adapters run
    """

    def forward(self, *args, **kwargs):
        model = self.__dict__["_adapters_model"]
        lock = registry_lock(model.adapters_config)  # a pass of its own: one consistent set of adapters
        token = lock.acquire_read()
        try:
            context, kwargs = model._open_stack_context(self, args, kwargs)
            if context is None:
                return super().forward(**self._entry_inputs(model, ForwardContext.get_context(), kwargs))
            with context.activate():
                return super().forward(**self._entry_inputs(model, context, kwargs))
        finally:
            lock.release_read(token)

    def _entry_inputs(self, model, context, kwargs: dict) -> dict:
        """The inputs the part runs on (as given; the encoder joins soft prompts)."""
        return kwargs


class EncoderEntryMixin(StackEntryMixin):
    """Swapped onto the encoder of an encoder-decoder model.

    * Soft prompts (prompt tuning) are joined to the encoder's input here: ``[S ; E[x]]`` and the
      attention mask gets ``P`` ones; the decoder is unchanged.
    * Run on its own (``generate`` encodes once, through ``model.get_encoder()``, before decoding),
      the encoder opens the model's forward context itself, so its adapters and prefixes run too.

    Example::

        >>> adapters.init(t5)                     # swaps it onto t5.encoder
        >>> t5.set_active_adapters("prompt")
        >>> t5.get_encoder()(input_ids=ids).last_hidden_state.shape   # P + T positions
        torch.Size([2, 15, 32])
    """

    # generate() reads the encoder's signature to route model inputs (Whisper's input_features) to it
    shows_original_signature = True

    def _entry_inputs(self, model, context, kwargs: dict) -> dict:
        pool = model.base_model._modules.get("prompt_tuning")
        return kwargs if context is None or pool is None else pool.prepare_forward(self, context, kwargs)


class DecoderEntryMixin:
    """Swapped onto the decoder of an encoder-decoder model: while soft prompts lengthen the encoder
    output by ``P`` positions, the cross-attention mask (given for the ``T`` input tokens) gets ``P``
    ones at the prompt's place.

    Example::

        >>> adapters.init(bart)                   # swaps it onto bart.model.decoder
        >>> type(bart.model.decoder).__mro__[1].__name__
        'DecoderEntryMixin'
    """

    shows_original_signature = True

    def forward(self, *args, **kwargs):
        model = self.__dict__["_adapters_model"]
        at, length = model._prompt_length(ForwardContext.get_context())
        if length:
            _, kwargs = _as_module_kwargs(self, args, kwargs)
            args = ()
            mask, states = kwargs.get("encoder_attention_mask"), kwargs.get("encoder_hidden_states")
            if (
                isinstance(mask, torch.Tensor) and mask.dim() == 2 and isinstance(states, torch.Tensor)
                and states.shape[1] == mask.shape[1] + length
            ):
                block = mask.new_ones(mask.shape[0], length)
                kwargs["encoder_attention_mask"] = torch.cat([mask[:, :at], block, mask[:, at:]], dim=1)
        return super().forward(*args, **kwargs)


def install_stack_entries(model, spec) -> None:
    """Swap :class:`EncoderEntryMixin` / :class:`DecoderEntryMixin` onto the encoder and decoder of an
    encoder-decoder ``model`` (those it has), and :class:`StackEntryMixin` onto the spec's
    ``entry_modules`` (CLIP's towers).

    Example::

        >>> install_stack_entries(t5, T5)
        >>> isinstance(t5.encoder, EncoderEntryMixin), type(t5.encoder).__name__   # the name stays
        (True, 'T5Stack')
    """
    base = model.base_model
    entries = [(spec.encoder, EncoderEntryMixin), (spec.decoder_module, DecoderEntryMixin)]
    entries += [(path, StackEntryMixin) for path in spec.entry_modules]
    for path, mixin in entries:
        module = base._modules.get(path) if path else None
        if module is not None:
            # a PreTrainedModel part keeps its class name: transformers finds the outputs it records
            # (hidden states, attentions) by the class's name
            swap_class(module, mixin, keep_name=isinstance(module, PreTrainedModel))
            module.__dict__["_adapters_model"] = model
