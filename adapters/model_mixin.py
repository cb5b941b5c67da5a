"""The user API on a patched model: AdapterHub's method names and signatures.

:func:`adapters.init` swaps the model's class (and its base model's) for a subclass with
:class:`ModelAdaptersMixin` in front, keeping the class name. The mixin is thin and split by role:

* adding and deleting adapters and fusions, and inspecting them (here), each a loop over the
  method-family registry (:mod:`adapters.methods.registry`), which knows every method;
* the forward pass and its context (:mod:`adapters.forward`);
* activating, validating and training setups (:mod:`adapters.activation`);
* saving and loading (:mod:`adapters.loading`), merging and combining (:mod:`adapters.merging`),
  embeddings (:mod:`adapters.embeddings`), and the model methods a family adds.

The methods that change the adapters (add, delete, fusions, merge, reset) hold the registry's
:class:`~adapters.context.RegistryLock` alone, while every forward pass holds it shared, so a pass
sees one consistent set of adapters. A change that fails leaves the model as it was; deleting the
last adapter of a method removes what adding it installed.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from . import logging
from .activation import ActivationMixin, _uses_fusion
from .composition import Fuse
from .configuration import DEFAULT_ADAPTER_CONFIG, DEFAULT_ADAPTERFUSION_CONFIG
from .configuration.base import ADAPTER_CONFIG_MAP, AdapterConfig
from .configuration.fusion import AdapterFusionConfig
from .configuration.validation import check_name
from .context import registry_lock
from .embeddings import EmbeddingAdaptersMixin
from .errors import AdapterConfigError
from .forward import ForwardMixin
from .hooks.attention import release_adapter_attention
from .hooks.spec import layer_stacks, stack_configs
from .hub import HubMixin
from .loading import CheckpointMixin
from .merging import MergingMixin
from .methods.registry import AdapterMethod, families, families_of

logger = logging.get_logger(__name__)

__all__ = ["ModelAdaptersMixin"]

#: model methods some families add (AdaLoRA's update_and_allocate, ...), collected from the registry
_FAMILY_MIXINS = tuple(dict.fromkeys(f.model_mixin for f in families() if f.model_mixin is not None))


class ModelAdaptersMixin(
    ForwardMixin, ActivationMixin, EmbeddingAdaptersMixin, CheckpointMixin, HubMixin, MergingMixin, *_FAMILY_MIXINS
):
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

    # -- adding and removing ---------------------------------------------------------------------
    def _check_name(self, name: str, kind: str = "adapter", argument: Optional[str] = "adapter_name") -> None:
        """Raise an AdapterConfigError unless ``name`` is a valid name (see
        :func:`adapters.loading.check_name`: letters, digits, ``_``, ``-``; never a path)."""
        check_name(name, kind=kind, argument=argument)

    #: the default of ``autocast_adapter_dtype`` for :meth:`add_adapter`, :meth:`add_adapter_fusion`
    #: and the loads that add adapters (set it on a model to change it there)
    autocast_adapter_dtype: bool = True

    def add_adapter(
        self,
        adapter_name: str,
        config=None,
        overwrite_ok: bool = False,
        set_active: bool = False,
        autocast_adapter_dtype: Optional[bool] = None,
    ):
        """Add a new adapter of the given config to every layer it applies to.

        Args:
            adapter_name: the new adapter's name.
            config: a config object, a config id (``"seq_bn"``, ``"compacter"``, ...), a dict or
                a path to a JSON config; default ``"seq_bn"``.
            overwrite_ok: replace an existing adapter of that name.
            set_active: make the new adapter the active setup.
            autocast_adapter_dtype: on a model in float16 or bfloat16, create the adapter's
                parameters in float32 (PEFT's default of the same name): the adapter computes in
                float32 and its result returns to the activations' dtype, so small optimizer
                updates are not rounded away. False: the adapter takes the model's dtype. None:
                the model's :attr:`autocast_adapter_dtype` (True unless set).

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
        config = AdapterConfig.load(config if config is not None else DEFAULT_ADAPTER_CONFIG)
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
                self._create_adapter_modules(build_name, config, autocast_adapter_dtype)
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


    def _check_config_fits(self, config: AdapterConfig) -> None:
        """Raise an :class:`~adapters.errors.AdapterConfigError` unless every part of ``config`` fits
        this model: what every method shares (``leave_out``, the plug-in interface, the spec's
        refusals, the attention interface), then the family's own ``check``."""
        spec = self.__dict__["_adapters_spec"]
        num_layers = len(stack_configs(self.base_model, spec))  # per layer (CLIP: per tower)
        interface = self.__dict__.get("_adapters_interface")
        refusals = dict(spec.refused_methods)
        for method_family, part in families_of(config):
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
            if interface is not None:
                interface.check_method(part, type(self).__name__)
            if part.architecture in refusals:
                raise AdapterConfigError(
                    f"{part.architecture} is not available for {spec.name} ({type(self).__name__}): "
                    f"{refusals[part.architecture]}. Use another method (bottleneck adapters, LoRA, prefix tuning) for "
                    f"this model."
                )
            if method_family.enters_attention and not spec.attention_interface:
                raise AdapterConfigError(
                    f"{method_family.title} is not available for {spec.name} ({type(self).__name__}): its attention "
                    f"does not call transformers' attention interface, through which this method enters without "
                    f"copying attention code. Use another method (bottleneck adapters, LoRA, prompt tuning) for this "
                    f"model."
                )
            if method_family.check is not None:
                method_family.check(self, part)

    def _create_adapter_modules(self, name: str, config: AdapterConfig, autocast: Optional[bool] = None) -> None:
        """Let each part's family create its modules (on the base model's device, in
        :meth:`_adapter_dtype`)."""
        reference = next(self.base_model.parameters())
        dtype = self._adapter_dtype(autocast)
        added = False
        for method_family, part in families_of(config):
            added = method_family.add(self, name, part, reference.device, dtype) or added
        if not added:
            raise AdapterConfigError(f"Adapter config {config} places no module in this model (check leave_out and positions).")

    def _adapter_dtype(self, autocast: Optional[bool] = None) -> Optional[torch.dtype]:
        """The dtype new adapter parameters take: the base model's floating dtype, or float32 for a
        float16 / bfloat16 model when ``autocast`` (None: :attr:`autocast_adapter_dtype`) holds.
        A family whose host layer keeps another dtype (T5's float32 ``wo`` in a float16 model)
        takes the wider of the two."""
        if autocast is None:
            autocast = self.autocast_adapter_dtype
        if not isinstance(autocast, bool):
            raise AdapterConfigError(f"autocast_adapter_dtype must be True, False or None, not {autocast!r}.")
        reference = next(self.base_model.parameters())
        dtype = reference.dtype if reference.is_floating_point() else None
        if autocast and dtype in (torch.float16, torch.bfloat16):
            return torch.float32
        return dtype

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
        registry = self.adapters_config
        config = registry.adapters[name]
        parts = [(f, part) for f, part in families_of(config) if f.eject is not None]
        if not parts:
            ejectable = [n for n, c in registry.adapters.items() if any(f.eject for f, _ in families_of(c))]
            raise AdapterConfigError(
                f"Adapter {name!r} has no prefix tuning to eject; eject_prefix_tuning takes a prefix-tuning adapter "
                f"(this model's: {sorted(ejectable)})."
            )
        ejected = {id(part): f.eject(self, name, part) for f, part in parts}
        registry.adapters[name] = config.replace_parts(lambda part: ejected.get(id(part), part))
        registry.changed()

    def _language_model_outputs(self) -> list[nn.Module]:
        """The output embeddings the invertible adapters' inverse runs before (the LM head's)."""
        below = getattr(super(), "_language_model_outputs", None)
        if below is not None:  # an AdapterModel (this mixin comes first in its MRO): every LM head's
            return below()
        output = self.get_output_embeddings()
        return [] if output is None else [output]

    def _input_embeddings_replaced(self, old: nn.Module, new: nn.Module) -> None:
        """Let the families move what they hooked onto the input embedding module when it is
        swapped out (``set_active_embeddings``)."""
        for method_family in families():
            if method_family.embeddings_replaced is not None:
                method_family.embeddings_replaced(self, old, new)

    def _bias_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """The base-model parameters adapter ``name`` trains and saves with itself (LoRA's ``bias``
        option), keyed by their base-model-relative names."""
        parameters = {}
        for method_family, part in families_of(self.adapters_config.adapters[name]):
            if method_family.base_parameters is not None:
                parameters.update(method_family.base_parameters(self, name, part))
        return parameters

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
        ``add_adapter``) leaves the module tree as it was before: hosts installed on demand (on
        linear layers, ``modules_to_save`` copies), what each family's ``remove_unused`` takes out
        (pools, hooks), and the attention backend wrapper once no family adds to attention. The
        bottleneck hosts ``adapters.init`` installed stay."""
        hosts = self._adapter_hosts
        empty = [h for h in hosts if h.removed_when_empty and h.is_empty()]
        for host in empty:
            host.uninstall()
        if empty:
            hosts[:] = [h for h in hosts if not any(h is e for e in empty)]
        for method_family in families():
            if method_family.remove_unused is not None:
                method_family.remove_unused(self)
        if not any(f.installed(self) for f in families() if f.enters_attention and f.installed is not None):
            release_adapter_attention(self)

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
            if any(adapter_name in h.merged for h in self._adapter_hosts if h.hosts_weight_deltas):
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
        config=None,
        name: Optional[str] = None,
        overwrite_ok: bool = False,
        set_active: bool = False,
        autocast_adapter_dtype: Optional[bool] = None,
    ) -> None:
        """Add an AdapterFusion layer over existing adapters.

        Args:
            adapter_names: a :class:`~adapters.Fuse` block, a list of names or ``"a,b"``.
            config: ``"dynamic"``, ``"static"``, a dict or an :class:`~adapters.AdapterFusionConfig`;
                None: ``"dynamic"`` (:data:`~adapters.DEFAULT_ADAPTERFUSION_CONFIG`).
            name: the fusion's name (default: the adapter names joined by commas).
            overwrite_ok: replace an existing fusion of that name.
            set_active: activate ``Fuse(*adapter_names)``.
            autocast_adapter_dtype: float32 fusion layers on a float16 / bfloat16 model (as for
                :meth:`add_adapter`); None: the model's :attr:`autocast_adapter_dtype`.

        Example::

            >>> model.add_adapter_fusion(Fuse("a", "b", "c"), set_active=True)
        """
        block = _as_fuse(adapter_names, name)
        if block._name is not None:  # a name of its own (the default joins the adapter names, checked below)
            self._check_name(block.name, kind="fusion", argument="name")
        names = tuple(block.names_in_order())
        for adapter in names:
            self._require_adapter(adapter)
            adapter_config = self.adapters_config.adapters[adapter]
            if not any(method_family.fusable for method_family, _ in families_of(adapter_config)):
                raise AdapterConfigError(
                    f"Cannot fuse adapter {adapter!r}: its method {adapter_config.architecture} has no fusion; AdapterFusion "
                    f"combines {' and '.join(f.title.lower() for f in families() if f.fusable)}."
                )
        parts_by_family: dict = {}
        for adapter in names:
            for method_family, part in families_of(self.adapters_config.adapters[adapter]):
                if method_family.fusable:
                    parts_by_family.setdefault(method_family, []).append((adapter, part))
        for method_family, parts in parts_by_family.items():
            if method_family.check_fusion is not None:
                method_family.check_fusion([a for a, _ in parts], [p for _, p in parts])
        fusion_config = AdapterFusionConfig.load(config if config is not None else DEFAULT_ADAPTERFUSION_CONFIG)
        registry = self.adapters_config
        with registry_lock(registry).writing(f"add_adapter_fusion({block.name!r})"):
            replacing = block.name in registry.fusions
            if replacing and not overwrite_ok:
                raise AdapterConfigError(f"A fusion named {block.name!r} exists already; pass overwrite_ok=True to replace it.")
            build_name = f"{block.name}~replacing" if replacing else block.name  # the old one stays until the new is built
            reference = next(self.base_model.parameters())
            dtype = self._adapter_dtype(autocast_adapter_dtype)
            created = []
            try:
                for host in self._adapter_hosts:
                    if host.supports_fusion and host.add_fusion_layer(build_name, names, fusion_config):
                        created.append(host)
                        layer = host.adapter_fusion_layer[build_name]
                        layer.to(device=reference.device, dtype=dtype).train(self.training)
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
                if host.supports_fusion:
                    host.delete_fusion_layer(fusion_name)
            del registry.fusions[fusion_name]
            if registry.active_setup is not None and _uses_fusion(registry.active_setup, fusion_name):
                registry.active_setup = None
            registry.changed()

    # -- inspection ------------------------------------------------------------------------------
    def get_adapter(self, name: str) -> dict[int, dict[str, nn.Module]]:
        """The modules of adapter ``name``: ``{layer_idx: {location: module}}``; an empty dict
        for a name the model does not have (deleted or never added), as AdapterHub answers.

        Example::

            >>> model.get_adapter("task")[0]["output_adapter"]
            Adapter(...)
            >>> model.get_adapter("deleted")
            {}
        """
        if name not in self.adapters_config.adapters:
            return {}
        modules: dict[int, dict[str, nn.Module]] = {}
        for host in self._adapter_hosts:
            module = host.adapters[name] if name in host.adapters else None
            if module is not None:
                modules.setdefault(host.layer_idx, {})[host.location] = module
        return modules

    def _adapter_parameters(self, name: str) -> list[nn.Parameter]:
        self._require_adapter(name)
        params = [p for layer in self.get_adapter(name).values() for m in layer.values() for p in m.parameters()]
        if name in self._shared_parameters:
            params += list(self._shared_parameters[name].parameters())
        return params

    def _adapter_owned_ids(self, module_copies: bool = False) -> set[int]:
        """The ids of the tensors the adapters own: every adapter's parameters, shared parameters
        and trained biases, the fusion layers, and with ``module_copies`` the hosts that keep
        copies of modules (``modules_to_save``)."""
        owned = set()
        for name in self.adapters_config.adapters:
            owned.update(id(p) for p in self._adapter_parameters(name))
            owned.update(id(p) for p in self._bias_parameters(name).values())
        for host in self._adapter_hosts:
            if host.supports_fusion:
                owned.update(id(p) for p in host.adapter_fusion_layer.parameters())
            if module_copies and host.keeps_module_copies:
                owned.update(id(p) for p in host.parameters())
        return owned

    def adapter_to(self, name: str, device=None, dtype=None) -> None:
        """Move adapter ``name`` (and its shared parameters) to a device and/or dtype.

        Example::

            >>> model.adapter_to("task", device="cuda", dtype=torch.bfloat16)
        """
        self._require_adapter(name)
        for layer in self.get_adapter(name).values():
            for module in layer.values():
                module.to(device=device, dtype=dtype)
        if name in self._shared_parameters:
            self._shared_parameters[name].to(device=device, dtype=dtype)

    def adapter_fusion_to(self, adapter_names, device=None, dtype=None) -> None:
        """Move the fusion layers of ``adapter_names`` (a :class:`~adapters.Fuse`, a list or
        ``"a,b"``) to a device and/or dtype.

        Example::

            >>> model.adapter_fusion_to(Fuse("a", "b"), device="cuda")
        """
        name = _as_fuse(adapter_names, None).name
        if name not in self.adapters_config.fusions:
            raise AdapterConfigError(f"No fusion named {name!r}; the model has: {', '.join(sorted(self.adapters_config.fusions)) or 'none'}.")
        for host in self._adapter_hosts:
            if host.supports_fusion and name in host.adapter_fusion_layer:
                host.adapter_fusion_layer[name].to(device=device, dtype=dtype)

    def iter_layers(self):
        """``(index, layer)`` for every transformer layer the adapters number, in AdapterHub's
        numbering (first stack, then the second: an encoder-decoder's decoder layers follow its
        encoder's).

        Example::

            >>> [index for index, _ in model.iter_layers()]
            [0, 1]
        """
        for _, first, layers in layer_stacks(self.base_model, self.__dict__["_adapters_spec"]):
            for offset, layer in enumerate(layers):
                yield first + offset, layer

    def get_layer(self, idx: int) -> nn.Module:
        """The layer of index ``idx`` in :meth:`iter_layers`' numbering (negative indices count
        from the end, as in a list).

        Raises:
            IndexError: no such layer (the message gives the valid range).

        Example::

            >>> model.get_layer(0) is model.encoder.layer[0]
            True
        """
        layers = [layer for _, layer in self.iter_layers()]
        try:
            return layers[idx]
        except IndexError:
            raise IndexError(f"The model has no layer {idx!r}; its layers are 0 … {len(layers) - 1}.") from None

    def supports_adapter(self, type_or_config) -> bool:
        """Whether adapters of ``type_or_config`` can be added to this model: a method type of
        :class:`~adapters.AdapterMethod` (``"lora"``, ``"prefix_tuning"``, ...: whether any of its
        configs fits), a config id or a config (whether it fits, as ``add_adapter`` checks).

        Example::

            >>> model.supports_adapter("prompt_tuning"), model.supports_adapter(LoRAConfig(r=4))
            (True, True)
        """
        if isinstance(type_or_config, str) and type_or_config not in ADAPTER_CONFIG_MAP:
            if type_or_config not in AdapterMethod.ALL:
                raise AdapterConfigError(
                    f"Unknown adapter type or config {type_or_config!r}; give one of {', '.join(AdapterMethod.ALL)}, a "
                    f"config id or a config."
                )
            configs = [c for c in ADAPTER_CONFIG_MAP.values() if type_or_config in AdapterMethod.of(c)]
            return any(self._fits(config) for config in configs)
        return self._fits(AdapterConfig.load(type_or_config))

    def _fits(self, config: AdapterConfig) -> bool:
        try:
            self._check_config_fits(config)
        except AdapterConfigError:
            return False
        return True

    @property
    def support_prompt_tuning(self) -> bool:
        """Whether prompt tuning can be added to this model (AdapterHub's flag).

        Example::

            >>> model.support_prompt_tuning
            True
        """
        return self.supports_adapter(AdapterMethod.prompt_tuning)

    #: whether ``average_adapter(..., combine_strategy="lora_delta_w_svd")`` works on this model
    #: (AdapterHub's flag): here on every model, fused projections (GPT-2's ``c_attn``) included,
    #: since the deltas are combined per LoRA module whatever slice of the weight it adapts
    support_lora_delta_w_svd = True

    @property
    def adapter_interface(self):
        """The :class:`~adapters.AdapterModelInterface` this model was patched with
        (``adapters.init(model, interface=...)``), or None for a model of a built-in architecture
        spec (AdapterHub sets ``base_model.adapter_interface`` on plug-in models only).

        Example::

            >>> adapters.init(model, interface=my_interface)
            >>> model.base_model.adapter_interface == my_interface
            True
        """
        return self.__dict__.get("_adapters_interface")

    @property
    def loaded_embeddings(self) -> dict:
        """The embedding matrices this model holds, by name (``"default"``: the model's own input
        embedding, plus those added with ``add_embeddings`` / ``load_embeddings``); AdapterHub's
        attribute, read-only here (change it through those methods).

        Example::

            >>> model.add_embeddings("de", tokenizer_de)
            >>> sorted(model.loaded_embeddings)
            ['de', 'default']
        """
        return dict(self._loaded_embeddings())

    def freeze_embeddings(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) the output embeddings of a model with a language-modelling head
        (tied to the input embeddings in most models), as AdapterHub's method does; a model without
        output embeddings is left as it is.

        Example::

            >>> lm.freeze_embeddings()              # the LM head's embedding matrix stays fixed
        """
        output_embeddings = self.get_output_embeddings()
        for module in output_embeddings if isinstance(output_embeddings, list) else [output_embeddings]:
            if module is not None:
                module.requires_grad_(not freeze)

    def has_adapters(self) -> bool:
        """Whether the model has any adapter.

        Example::

            >>> model.has_adapters()
            True
        """
        return len(self.adapters_config.adapters) > 0

    @property
    def has_parallel_adapters(self) -> bool:
        """Whether the active setup replicates the batch (holds a ``Parallel`` block).

        Example::

            >>> model.set_active_adapters(Parallel("a", "b")); model.has_parallel_adapters
            True
        """
        setup = self.adapters_config.active_setup
        return setup is not None and not isinstance(setup, str) and setup.parallel_channels > 1

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
                    # any: some adapters keep fixed parameters that never train (ReFT's orthogonal base)
                    "train": any(p.requires_grad for p in params),
                }
            )
        for fusion_name in registry.fusions:
            params = [
                p
                for host in self._adapter_hosts
                if host.supports_fusion and fusion_name in host.adapter_fusion_layer
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
        own.update(id(p) for host in self._adapter_hosts if host.supports_fusion for p in host.adapter_fusion_layer.parameters())
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


def _as_fuse(adapter_names, name) -> Fuse:
    if isinstance(adapter_names, Fuse):
        return Fuse(*adapter_names.children, name=name or adapter_names._name)
    if isinstance(adapter_names, str):
        adapter_names = [n.strip() for n in adapter_names.split(",")]
    return Fuse(*adapter_names, name=name)
