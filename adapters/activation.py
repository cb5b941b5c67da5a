"""Activating, validating and training adapter setups on a patched model (AdapterHub's method
names; part of :class:`~adapters.ModelAdaptersMixin`).

A setup is validated once, completely, when it is activated: its structure, the adapters and
fusions it names, and for every adapter that each block around it is one its method family takes
part in (the family's ``blocks`` in :mod:`adapters.methods.registry`) and whatever else the
families refuse (``check_setup``). Training a setup freezes the base model and unfreezes exactly the
setup's adapters (and fusions, heads, the biases a family trains), then activates it.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import nn

from .composition import BASE_ROWS, AdapterCompositionBlock, Fuse, MultiTask, SetupLike, Stack, parse_composition, validate_composition
from .errors import AdapterConfigError, CompositionError
from .hooks.spec import stack_configs
from .methods.registry import families, families_of

__all__ = ["ActivationMixin"]


class ActivationMixin:
    """Activation, validation and training of setups (see the module docstring).

    Example::

        >>> model.set_active_adapters(Stack("lang", "task"))
        >>> model.train_adapter("task")
    """

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
        for name in setup.names_in_order():
            if name not in registry.adapters and name != BASE_ROWS:  # BASE_ROWS: checked where it stands, below
                known = ", ".join(sorted(registry.adapters)) or "none"
                raise CompositionError(
                    f"Adapter setup {setup} names unknown adapter {name!r}; the model has: {known}. "
                    f"Add it with add_adapter or load_adapter first."
                )
        self._validate_block(setup)
        self._validate_merged_in_setup(setup)
        checks = dict.fromkeys(f.check_setup for f in families() if f.check_setup is not None)  # each once
        for check in checks:
            check(self, setup)

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
            if child == BASE_ROWS and child not in registry.adapters:
                if isinstance(block, MultiTask):  # the rows of this task run without adapters
                    continue
                raise CompositionError(
                    f"{block} names {BASE_ROWS!r}, which stands for rows without adapters only as a child of a "
                    f"MultiTask, e.g. MultiTask('a', {BASE_ROWS!r}); the model has no adapter of that name."
                )
            for method_family, part in families_of(registry.adapters[child]):
                refused = [b for b in enclosing if type(b) not in method_family.blocks]
                if refused:
                    raise CompositionError(_block_refusal(child, part.architecture, method_family.blocks, refused[-1], block))

    def _validate_merged_in_setup(self, setup: AdapterCompositionBlock) -> None:
        """A merged adapter acts on every row and token (it is in the weights): refuse it anywhere
        but alone or in ``Stack`` blocks."""
        merged = {name for host in self._adapter_hosts if host.hosts_weight_deltas for name in host.merged}
        if not merged:
            return
        for name, path in _leaves_with_blocks(setup):
            outside = [b for b in path if not isinstance(b, Stack)]
            if name in merged and outside:
                raise CompositionError(
                    f"Adapter {name!r} is merged into the weights, so it acts on every row and token, but {setup} puts "
                    f"it inside {outside[-1]}. Use it alone or in a Stack, or call model.reset_adapter() first."
                )

    def freeze_model(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) every weight of the base model, adapters included.

        Example::

            >>> model.freeze_model()      # then unfreeze what you train
        """
        self.base_model.requires_grad_(not freeze)
        for host in self._adapter_hosts:  # copies kept outside the base model (modules_to_save on a head)
            if host.keeps_module_copies:
                host.requires_grad_(not freeze)
        self.base_model.__dict__["model_frozen"] = freeze

    def _head_parameters(self, train_output_embeddings: bool = False) -> list[nn.Parameter]:
        """Parameters outside the base model (heads), except modules adapters keep copies of (those
        train through the active adapter's copy) and, unless ``train_output_embeddings``, the
        pretrained output embeddings (:meth:`_pretrained_output_embeddings`)."""
        excluded = {id(p) for p in self.base_model.parameters()}
        for host in self._adapter_hosts:
            if host.keeps_module_copies:
                excluded.update(id(p) for p in host.parameters())
        output = None if train_output_embeddings else self._pretrained_output_embeddings()
        if output is not None:
            excluded.update(id(p) for p in output.parameters())
        return [p for p in self.parameters() if id(p) not in excluded]

    def _pretrained_output_embeddings(self) -> Optional[nn.Module]:
        """The LM head's output embedding that came with the pretrained model (transformers'
        ``get_output_embeddings()`` of a model with a static head, tied to the input embeddings or
        not), which :meth:`train_adapter` keeps frozen as PEFT does; None for a model with flexible
        heads (added with ``add_*_head``: new, trained as AdapterHub trains them; a tied output
        matrix is the input embedding, frozen with the base model) or without an LM head."""
        if isinstance(self.__dict__.get("_modules", {}).get("heads"), nn.ModuleDict):
            return None
        return self._output_embeddings()

    def _output_embeddings(self) -> Optional[nn.Module]:
        try:
            output = self.get_output_embeddings()
        except (AttributeError, NotImplementedError):
            return None
        return output if isinstance(output, nn.Module) else None

    def _set_embeddings_trainable(self, train_embeddings: bool, train_output_embeddings: bool) -> None:
        output = self._pretrained_output_embeddings()
        if output is not None:  # outside the base model: freeze_model left it as it was
            output.requires_grad_(False)
        if train_embeddings:
            self.get_input_embeddings().requires_grad_(True)
        if train_output_embeddings:  # checked by _check_output_embeddings_option
            self._output_embeddings().requires_grad_(True)

    def _enable(self, setup: AdapterCompositionBlock, adapters: bool, fusions: bool) -> None:
        names = _adapters_named(setup, self.adapters_config.adapters)
        fusion_names = _fusion_names(setup)
        for host in self._adapter_hosts:
            if adapters:
                for name in names:
                    if name in host.adapters:
                        host.adapters[name].requires_grad_(True)
            if fusions and host.supports_fusion:
                for fusion_name in fusion_names:
                    if fusion_name in host.adapter_fusion_layer:
                        host.adapter_fusion_layer[fusion_name].requires_grad_(True)
        if adapters:
            for name in names:
                if name in self._shared_parameters:
                    self._shared_parameters[name].requires_grad_(True)
                for method_family, part in families_of(self.adapters_config.adapters[name]):
                    if method_family.on_train is not None:
                        method_family.on_train(self, name, part)
                for bias in self._bias_parameters(name).values():
                    bias.requires_grad_(True)

    def train_adapter(
        self, adapter_setup: SetupLike, train_embeddings: bool = False, train_output_embeddings: bool = False
    ) -> None:
        """Prepare training of the adapters in ``adapter_setup``: freeze the base model, make
        those adapters (and the heads of a model with heads) trainable, and activate the setup.

        A pretrained LM head's output embedding (``get_output_embeddings()`` of a transformers
        model with an LM head, e.g. Llama's ``lm_head``) stays frozen, as in PEFT; newly
        initialised heads (a classifier, flexible heads added with ``add_*_head``) train.

        Args:
            adapter_setup: the adapters to train (a name, ``"a,b"``, a list or a block).
            train_embeddings: also train the input embeddings (and an output embedding tied to them).
            train_output_embeddings: also train the output embeddings (tied ones are the input
                embeddings: those train too). AdapterHub trains them always.

        Raises:
            AdapterConfigError: ``train_output_embeddings`` on a model without output embeddings.

        Example::

            >>> model.train_adapter("task")
            >>> optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
            >>> model.train_adapter("task", train_output_embeddings=True)   # also the LM head
        """
        setup = parse_composition(adapter_setup)
        self._validate_setup(setup)
        self._check_output_embeddings_option(train_output_embeddings)
        self.train()
        self.freeze_model(True)
        self._enable(setup, adapters=True, fusions=False)
        for param in self._head_parameters(train_output_embeddings):
            param.requires_grad_(True)
        self._set_embeddings_trainable(train_embeddings, train_output_embeddings)
        self.set_active_adapters(setup)

    def train_adapter_fusion(
        self, adapter_setup: SetupLike, unfreeze_adapters: bool = False, train_output_embeddings: bool = False
    ) -> None:
        """Prepare training of the fusion layers in ``adapter_setup`` (and, with
        ``unfreeze_adapters``, of the fused adapters). A pretrained LM head's output embedding
        stays frozen unless ``train_output_embeddings`` (see :meth:`train_adapter`).

        Example::

            >>> model.train_adapter_fusion(Fuse("a", "b", "c"))
        """
        setup = parse_composition(adapter_setup)
        self._validate_setup(setup)
        self._check_output_embeddings_option(train_output_embeddings)
        self.train()
        self.freeze_model(True)
        self._enable(setup, adapters=unfreeze_adapters, fusions=True)
        for param in self._head_parameters(train_output_embeddings):
            param.requires_grad_(True)
        self._set_embeddings_trainable(False, train_output_embeddings)
        self.set_active_adapters(setup)

    def _check_output_embeddings_option(self, train_output_embeddings) -> None:
        """Refuse a non-bool ``train_output_embeddings``, or True on a model without output
        embeddings, before anything changes."""
        if not isinstance(train_output_embeddings, bool):
            raise AdapterConfigError(f"train_output_embeddings must be True or False, not {train_output_embeddings!r}.")
        if train_output_embeddings and self._output_embeddings() is None:
            raise AdapterConfigError(
                f"train_output_embeddings=True, but {type(self).__name__} has no output embeddings (no LM head, or no "
                f"single active LM head); leave it False."
            )

    def get_fusion_regularization_loss(self) -> torch.Tensor:
        """Sum of the value regularisers of all fusion layers that ask for one.

        Example::

            >>> loss = task_loss + model.get_fusion_regularization_loss()
        """
        total = torch.zeros((), device=next(self.parameters()).device)
        for host in self._adapter_hosts:
            if host.supports_fusion:
                for fusion in host.adapter_fusion_layer.values():
                    total = total + fusion.regularization_loss().to(total.device)
        return total


_BLOCK_HINTS = {
    "Split": "put it outside the Split, e.g. Stack({name!r}, Split(...)), where it acts on every token",
    "Average": "use it outside the Average, e.g. Stack({name!r}, Average(...)), or in Parallel / BatchSplit branches",
    "Fuse": "only bottleneck adapters are fused; use it outside the Fuse, e.g. Stack({name!r}, Fuse(...))",
    "Parallel": "use it outside the Parallel, e.g. Stack({name!r}, Parallel(...)), where it acts on every row",
    "BatchSplit": "use it outside the BatchSplit, e.g. Stack({name!r}, BatchSplit(...)), where it acts on every row",
    "MultiTask": "MultiTask (and per-row adapter_names) routes rows only to adapters of the methods that take part "
    "in it; use it outside, e.g. Stack({name!r}, MultiTask(...)), where it acts on every row",
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


def _leaves_with_blocks(setup, path: tuple = ()):
    """``(name, enclosing blocks from the outermost)`` for every leaf of ``setup``."""
    if isinstance(setup, str):
        yield setup, path
        return
    for child in setup.children:
        yield from _leaves_with_blocks(child, path + (setup,))


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


def _adapters_named(setup: AdapterCompositionBlock, adapters) -> list[str]:
    """The adapters ``setup`` names, in order: its names without :data:`BASE_ROWS`, which in a
    ``MultiTask`` stands for rows without adapters (unless the model has an adapter of that name)."""
    return [name for name in setup.names_in_order() if name != BASE_ROWS or name in adapters]
