"""Prefix tuning (Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
Generation").

Every attention layer ``l`` attends, besides the ``T`` real tokens, to ``P`` learned positions:

    K'_l = [P^K_l ; K_l],   V'_l = [P^V_l ; V_l],   P^K_l, P^V_l ∈ R^{heads_kv × P × d_head}
    Attn(Q_l, K'_l, V'_l) = softmax(Q_l K'_lᵀ / √d_head + [0 | M]) V'_l

(``M`` is the model's own mask: causal and/or padding; every real query sees every prefix
position). The prefix of all layers comes from one reparameterisation per adapter and location,
computed once per forward pass (not once per layer):

    [P^K_1, P^V_1, …, P^K_L, P^V_L] = W_2 f(W_1 E + b_1) + b_2,   E ∈ R^{P × d_model}  (flat=False)
    [P^K_1, P^V_1, …, P^K_L, P^V_L] = θ                                                 (flat=True)

The MLP makes training stable; after training, :meth:`eject_prefix_tuning` replaces it by the
flat θ it produces (same outputs, far fewer parameters).

With ``use_gating`` (UniPELT) layer ``l`` scales its prefix by ``g = mean_t σ(W_g h_t + b_g)`` of
the attention input ``h`` (one gate for keys and values, or one each): ``P^K_l ← g_K P^K_l``,
``P^V_l ← g_V P^V_l``. Like AdapterHub's (and this library's LoRA and bottleneck gates), the mean
runs over all positions of the row.

The prefix enters attention through the one attention wrapper of :mod:`adapters.hooks.attention`,
after the KV-cache update: the cache holds only real tokens, and the prefix is prepended again at
every decoding step. Grouped-query attention gets ``heads_kv`` prefix heads.

Composition at one layer (state: the prefix collected so far, per batch row):

* ``Stack(a, b)``: prefixes concatenate, ``[P_b ; P_a ; K]`` (order does not change attention);
* ``Parallel`` / ``BatchSplit``: each group of batch rows gets its child's prefix; where children
  have prefixes of different lengths the shorter ones are padded with masked positions;
* ``Fuse``, ``Split``, ``Average``: not defined for prefixes — rejected when the setup is activated.

Modules and state-dict keys follow AdapterHub: the pool at ``prefix_tuning.prefix_tunings.<name>.
<location>_prefix`` on the base model (``wte``, ``control_trans.{0,2}`` or a flat
``control_trans``), gates at ``<attention>.prefix_tuning.prefix_gates.<name>`` in each layer.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..composition import BatchSplit, Parallel, Stack
from ..configuration.prefix import PrefixTuningConfig
from ..configuration.validation import check_int
from ..context import ForwardContext
from ..compat import passed_cache
from ..errors import AdapterConfigError, CompositionError
from ..hooks.attention import (
    AttentionContributor,
    KeyValueExtension,
    add_contributor,
    set_position_bias_module,
    tag_attention,
    use_adapter_attention,
)
from ..hooks.joined_cache import cache_layer_lists
from ..hooks.patching import swap_class
from ..hooks.spec import layer_stacks, stack_config
from ..hooks.engine import HostCapabilities, ComposableLayer, remove_host_mixin, setup_members
from .caching import reuse_while_unchanged
from .registry import MethodFamily, PeftMapping, register

__all__ = [
    "PrefixTuning",
    "AdapterPrefixes",
    "FlatPrefixTuning",
    "PrefixTuningPool",
    "PrefixTuningLayer",
    "PrefixShape",
    "install_prefix_tuning",
    "uninstall_prefix_tuning",
    "prefix_shapes",
    "check_prefix_config",
    "add_prefix_modules",
    "prepare_prefixes",
    "eject_prefix",
]

#: the name of the prefix pool in the base model (AdapterHub's key: ``prefix_tuning.prefix_tunings.<name>``)
POOL_NAME = "prefix_tuning"


class PrefixShape(NamedTuple):
    """Sizes of one location's prefix: layers, key/value heads, head size, model width."""

    n_layers: int
    n_heads: int
    head_dim: int
    input_size: int

    @property
    def per_position(self) -> int:
        return self.n_layers * 2 * self.n_heads * self.head_dim


def _to_layers(flat: torch.Tensor, prefix_length: int, shape: PrefixShape) -> torch.Tensor:
    """``(P, L·2·H·D)`` -> ``(L, 2, H, P, D)`` (AdapterHub's and PEFT's layout of the flat vector).

    Made contiguous once here, so that each layer's ``(H, P, D)`` keys are one dense block: the
    attention wrapper joins them to the real keys at every layer of every pass (every decoding
    step), and ``torch.cat`` from a transposed view costs about three times as much."""
    states = flat.view(prefix_length, shape.n_layers, 2, shape.n_heads, shape.head_dim)
    return states.permute(1, 2, 3, 0, 4).contiguous()


class PrefixTuning(nn.Module):
    """The MLP reparameterisation ``W_2 f(W_1 E + b_1) + b_2`` of one location's prefix.

    Example::

        >>> module = PrefixTuning(PrefixShape(2, 4, 8, 32), PrefixTuningConfig(prefix_length=5))
        >>> module().shape          # (layers, 2, heads, prefix_length, head_dim)
        torch.Size([2, 2, 4, 5, 8])
    """

    def __init__(self, shape: PrefixShape, config: PrefixTuningConfig):
        super().__init__()
        self.shape, self.prefix_length = shape, config.prefix_length
        self.wte = nn.Embedding(config.prefix_length, shape.input_size)
        self.control_trans = nn.Sequential(
            nn.Linear(shape.input_size, config.bottleneck_size),
            ACT2FN[config.non_linearity.lower()],
            nn.Linear(config.bottleneck_size, shape.per_position),
        )
        self.dropout = nn.Dropout(config.dropout)

    def flat_prefix(self) -> torch.Tensor:
        """The prefix of all layers as AdapterHub's flat vector ``(P·L·2·H·D,)``, without dropout."""
        return self.control_trans(self.wte.weight).reshape(-1)

    def forward(self) -> torch.Tensor:
        return _to_layers(self.dropout(self.control_trans(self.wte.weight)), self.prefix_length, self.shape)


class FlatPrefixTuning(nn.Module):
    """One location's prefix learned directly (``control_trans``, a flat vector).

    Example::

        >>> FlatPrefixTuning(PrefixShape(2, 4, 8, 32), PrefixTuningConfig(prefix_length=5, flat=True))().shape
        torch.Size([2, 2, 4, 5, 8])
    """

    def __init__(self, shape: PrefixShape, config: PrefixTuningConfig):
        super().__init__()
        self.shape, self.prefix_length = shape, config.prefix_length
        self.control_trans = nn.Parameter(torch.randn(config.prefix_length * shape.per_position))
        self.dropout = nn.Dropout(config.dropout)

    def flat_prefix(self) -> torch.Tensor:
        return self.control_trans

    def forward(self) -> torch.Tensor:
        return _to_layers(self.dropout(self.control_trans.view(self.prefix_length, -1)), self.prefix_length, self.shape)


class AdapterPrefixes:
    """One adapter's prefix keys/values for every layer of every location, as computed for a pass
    (and kept across passes while its parameters are unchanged, e.g. every decoding step).

    Each layer reads its ``(H, P, D)`` keys and values as prepared views, broadcast to the batch
    rows it needs, so a layer does no tensor indexing of its own on every call.

    Example::

        >>> states = AdapterPrefixes({"self": torch.zeros(2, 2, 4, 5, 8)}, shift_positions=False)
        >>> states.keys_values("self", 1, rows=3)[0].shape
        torch.Size([3, 4, 5, 8])
    """

    def __init__(self, by_location: dict[str, torch.Tensor], shift_positions: bool):
        """``by_location``: location -> ``(L, 2, H, P, D)``; ``shift_positions``: the adapter's
        config (the real tokens are numbered after the prefix)."""
        self.shift_positions = shift_positions
        self._layers = {location: [layer.unbind(0) for layer in states.unbind(0)] for location, states in by_location.items()}
        self._broadcast: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def keys_values(
        self, location: str, index: int, rows: int, dtype: Optional[torch.dtype] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s prefix keys and values at ``location``, each ``(rows, H, P, D)`` (a
        view), in ``dtype`` (the real keys' dtype; None: the prefix's own). The same tensor objects
        on every call."""
        entry = (location, index, rows, dtype)
        pair = self._broadcast.get(entry)
        if pair is None:
            keys, values = (t if dtype is None else t.to(dtype) for t in self._layers[location][index])
            pair = self._broadcast[entry] = (keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
        return pair


def _parameters_of(module: nn.Module) -> list[nn.Parameter]:
    """``list(module.parameters())`` without its name bookkeeping (read at every decoding step)."""
    found, pending = [], [module]
    while pending:
        current = pending.pop()
        found.extend(p for p in current._parameters.values() if p is not None)
        pending.extend(m for m in current._modules.values() if m is not None)
    return found


class PrefixTuningPool(HostCapabilities, nn.Module):
    """All prefix-tuning adapters of one model (``base_model.prefix_tuning``).

    ``prefix_tunings[name][f"{location}_prefix"]`` produces that location's prefix for every
    layer; :meth:`prepare_forward` computes the prefixes of the active setup once per forward
    pass and leaves them in the forward context for the layers.

    Example::

        >>> pool = model.base_model.prefix_tuning
        >>> sorted(pool.prefix_tunings)
        ['prefix']
    """

    method = "prefix_tuning"
    layer_idx = -1
    location = "prefix_tuning"

    def __init__(self, shapes: dict[str, PrefixShape]):
        super().__init__()
        self.prefix_tunings = nn.ModuleDict()
        self.__dict__["shapes"] = dict(shapes)
        self.__dict__["layer_hosts"] = []
        self.__dict__["_names_cache"] = {}
        self.__dict__["_states_cache"] = {}

    # -- host protocol shared with the other methods' hosts --------------------------------------
    @property
    def adapters(self) -> nn.ModuleDict:
        return self.prefix_tunings

    def _invalidate_setup_cache(self) -> None:
        self.__dict__["_names_cache"] = {}
        self.__dict__["_states_cache"] = {}
        for host in self.__dict__["layer_hosts"]:
            host._invalidate_setup_cache()

    def add_adapter(self, name: str, config: PrefixTuningConfig) -> bool:
        """Create the prefix of adapter ``name`` for every location the config covers."""
        locations = [loc for loc in self.shapes if _covers(config, loc)]
        if not locations:
            return False
        group = nn.ModuleDict()
        group.config = config
        seed = config.init_weights_seed
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for location in locations:
                module_cls = FlatPrefixTuning if config.flat else PrefixTuning
                group[f"{location}_prefix"] = module_cls(self.shapes[location], config)
        self.prefix_tunings[name] = group
        self._invalidate_setup_cache()
        return True

    def delete_adapter(self, name: str) -> None:
        if name in self.prefix_tunings:
            del self.prefix_tunings[name]
        self._invalidate_setup_cache()

    def config_of(self, name: str) -> PrefixTuningConfig:
        return self.prefix_tunings[name].config

    def covers(self, name: str, layer_idx: int, location: str) -> bool:
        """Whether adapter ``name`` puts a prefix into that layer's attention at ``location``."""
        group = self.prefix_tunings[name]
        return f"{location}_prefix" in group and layer_idx not in group.config.leave_out

    def eject(self, name: str) -> None:
        """Replace the MLP reparameterisation of ``name`` by the flat prefix it produces."""
        group = self.prefix_tunings[name]
        for key, module in list(group.items()):
            if isinstance(module, PrefixTuning):
                flat = FlatPrefixTuning(module.shape, group.config.replace(flat=True))
                with torch.no_grad():
                    flat.control_trans.data = module.flat_prefix().detach().clone()
                flat.to(device=flat.control_trans.device).train(module.training)
                flat.control_trans.requires_grad_(module.wte.weight.requires_grad)
                group[key] = flat
        group.config = group.config.replace(flat=True)
        self._invalidate_setup_cache()

    # -- per forward ---------------------------------------------------------------------------
    def names_in(self, setup) -> tuple[str, ...]:
        """The prefix-tuning adapters of ``setup`` (cached per setup)."""
        return setup_members(setup, lambda: self.prefix_tunings, self.__dict__["_names_cache"])

    def _states(self, name: str) -> AdapterPrefixes:
        group = self.prefix_tunings[name]

        def compute():
            return AdapterPrefixes(
                {key[: -len("_prefix")]: module() for key, module in group.items()}, group.config.shift_positions
            )

        # the prefix only changes when its parameters do (decoding reuses it every step)
        return reuse_while_unchanged(
            self.__dict__["_states_cache"], name, _parameters_of(group), compute, reusable=not group.training
        )

    def prepare_forward(self, context: ForwardContext) -> bool:
        """Compute the active prefixes into ``context.prefix_states``; True if there are any."""
        if context.setup is None:
            return False
        names = self.names_in(context.setup)
        if not names:
            return False
        for name in names:
            context.prefix_states[name] = self._states(name)
        context.attention_extended = True
        return True

    def position_offsets(self, setup, batch: int, device) -> Optional[torch.Tensor]:
        """Per-row position offsets from adapters with ``shift_positions`` (None: all zero)."""
        names = self.names_in(setup)
        if not any(self.config_of(n).shift_positions for n in names):
            return None
        return self._offsets(setup, batch).to(device)

    def _offsets(self, setup, rows: int) -> torch.Tensor:
        if isinstance(setup, str):
            shift = setup in self.prefix_tunings and self.config_of(setup).shift_positions
            return torch.full((rows,), self.config_of(setup).prefix_length if shift else 0, dtype=torch.long)
        if isinstance(setup, Stack):
            total = torch.zeros(rows, dtype=torch.long)
            for child in setup.children:
                total += self._offsets(child, rows)
            return total
        if isinstance(setup, (Parallel, BatchSplit)):
            if isinstance(setup, Parallel):
                sizes = [rows // len(setup.children)] * len(setup.children)
            else:
                sizes = list(setup.batch_sizes)
            return torch.cat([self._offsets(child, size) for child, size in zip(setup.children, sizes)])
        return torch.zeros(rows, dtype=torch.long)

    def forward(self, *args, **kwargs):  # pragma: no cover - driven by prepare_forward
        raise RuntimeError("PrefixTuningPool is driven by the model's forward and is not called directly.")


def _covers(config: PrefixTuningConfig, location: str) -> bool:
    return {"encoder": config.encoder_prefix, "cross": config.cross_prefix}.get(location, True)


class PrefixState(NamedTuple):
    """The prefix collected so far for a group of batch rows.

    ``keys``/``values``: ``(rows, heads, n, head_dim)`` or None (nothing yet); ``valid``:
    ``(rows, n)`` boolean or None (all valid); ``rows``: number of batch rows; ``hidden``: the
    attention input of those rows (for gates) or None."""

    keys: Optional[torch.Tensor]
    values: Optional[torch.Tensor]
    valid: Optional[torch.Tensor]
    rows: int
    hidden: Optional[torch.Tensor]


class _RecordsAttentionInput:
    """Swapped onto an attention module whose layer has prefix gates: hands its input ``h`` to
    the gates through the forward context."""

    def forward(self, *args, **kwargs):
        context = ForwardContext.get_context()
        if context is not None and context.attention_extended:
            hidden = args[0] if args else kwargs.get("hidden_states")
            context.hook_values[("attention_input", id(self))] = hidden
        return super().forward(*args, **kwargs)


# where the model's forward leaves the per-row position offsets of an encoder-decoder's decoder
POSITION_OFFSETS = "prefix_position_offsets"


class _ShiftsPositions:
    """Swapped onto the position embedding of an encoder-decoder's decoder
    (``spec.decoder.position_embeddings``, called with ``position_ids``): while prefixes with
    ``shift_positions`` are active, row ``b``'s decoder tokens are numbered from its prefix length
    on, as when the prefix is fed to the decoder as past keys/values (PEFT). The encoder's
    positions stay as they are."""

    def forward(self, *args, **kwargs):
        context = ForwardContext.get_context()
        offsets = context.hook_values.get(POSITION_OFFSETS) if context is not None else None
        if offsets is None:
            return super().forward(*args, **kwargs)
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            raise RuntimeError(
                f"{type(self).__name__} was called without position_ids; prefix tuning's shift_positions needs them to "
                f"renumber the decoder's tokens (this transformers version computes positions differently)."
            )
        kwargs["position_ids"] = position_ids + offsets.to(position_ids.device)[:, None]  # (rows, T)
        output = super().forward(*args, **kwargs)
        # BART-like embeddings treat position_ids as one row (unsqueeze(0)): (1, rows, T, d) -> (rows, T, d)
        return output.squeeze(0) if output.dim() == 4 else output


class PrefixTuningLayer(ComposableLayer, AttentionContributor, nn.Module):
    """The prefix tuning host of one attention module (``<attention>.prefix_tuning``): composes
    the active prefixes for its layer and hands them to the attention wrapper; owns the gates.

    Example::

        >>> host = model.bert.encoder.layer[0].attention.self.prefix_tuning
        >>> host.adapter_names()
        {'prefix'}
    """

    method = "prefix_tuning"
    supported_blocks = (Stack, Parallel, BatchSplit)
    BATCH_FIELDS = ("keys", "values", "valid", "hidden")

    def __init__(self, pool: PrefixTuningPool, layer_idx: int, location: str, hidden_size: int, index: Optional[int] = None):
        nn.Module.__init__(self)
        self.prefix_gates = nn.ModuleDict()
        self.__dict__["pool"] = pool  # not a submodule: the pool's keys live on the base model only
        self.__dict__["hidden_size"] = hidden_size
        # row of this layer in its location's prefix (decoder layers: counted from the decoder's first)
        self.__dict__["prefix_index"] = layer_idx if index is None else index
        self._init_composable(layer_idx, location)

    @property
    def adapters(self) -> nn.ModuleDict:
        return self.prefix_gates

    def adapter_names(self) -> set[str]:
        pool = self.__dict__["pool"]
        return {n for n in pool.prefix_tunings if pool.covers(n, self.layer_idx, self.location)}

    def add_gate(self, name: str, config: PrefixTuningConfig) -> None:
        gate = nn.Linear(self.__dict__["hidden_size"], 1 if config.shared_gating else 2)
        nn.init.normal_(gate.weight, mean=0.0, std=0.02)
        nn.init.zeros_(gate.bias)
        self.prefix_gates[name] = gate

    def delete_adapter(self, name: str) -> None:
        if name in self.prefix_gates:
            del self.prefix_gates[name]
        self._invalidate_setup_cache()

    # -- AttentionContributor ------------------------------------------------------------------
    def extend_keys_values(self, module, site, query, key, value, context) -> Optional[KeyValueExtension]:
        setup = self.active_setup(context)
        if setup is None:
            return None
        gated = len(self._modules["prefix_gates"]) > 0
        if setup.__class__ is str and not gated:  # one ungated prefix (every decoding step): no engine
            states = context.prefix_states[setup]
            keys, values = states.keys_values(self.location, self.__dict__["prefix_index"], key.shape[0], key.dtype)
            return KeyValueExtension(keys, values, None, states.shift_positions, kept=True)
        hidden = context.hook_values.get(("attention_input", id(module))) if gated else None
        state = self.compose(setup, PrefixState(None, None, None, key.shape[0], hidden))
        if state.keys is None:
            return None
        # the prefix sits at positions 0 … n−1 when every prefix of the setup shifts the real tokens
        positioned = all(
            context.prefix_states[n].shift_positions for n in self.__dict__["pool"].names_in(context.setup) if self.covers_name(n)
        )
        return KeyValueExtension(state.keys, state.values, state.valid, positioned)

    def covers_name(self, name: str) -> bool:
        """Whether adapter ``name`` puts a prefix into this attention module.

        Example::

            >>> t5.decoder.block[0].layer[1].EncDecAttention.prefix_tuning.covers_name("peft_prefix")
            False
        """
        return self.__dict__["pool"].covers(name, self.layer_idx, self.location)

    # -- composition protocol --------------------------------------------------------------------
    def _batch_size(self, state: PrefixState) -> int:
        return state.rows

    def compose_single(self, name: str, state: PrefixState) -> PrefixState:
        context = ForwardContext.get_context()
        keys, values = context.prefix_states[name].keys_values(self.location, self.__dict__["prefix_index"], state.rows)
        if name in self.prefix_gates and state.hidden is not None:
            gate = torch.sigmoid(self.prefix_gates[name](state.hidden)).mean(dim=1)  # (rows, 1 or 2)
            if context.output_adapter_gating_scores:
                scores = context.adapter_gating_scores.setdefault(name, {}).setdefault(self.layer_idx, {})
                scores["prefix"] = gate.detach()
            keys = keys * gate[:, 0].view(-1, 1, 1, 1).to(keys.dtype)
            values = values * gate[:, -1].view(-1, 1, 1, 1).to(values.dtype)
        valid = None
        if state.keys is not None:
            if state.valid is not None:
                valid = torch.cat([state.valid.new_ones(state.rows, keys.shape[2]), state.valid], dim=1)
            keys = torch.cat([keys, state.keys.to(keys.dtype)], dim=2)
            values = torch.cat([values, state.values.to(values.dtype)], dim=2)
        return state._replace(keys=keys, values=values, valid=valid)

    def _compose_batch_groups(self, children, state: PrefixState, sizes) -> PrefixState:
        outputs, start = [], 0
        for child, size in zip(children, sizes):
            part = self.slice_state(state, self.BATCH_FIELDS, 0, start, start + size)._replace(rows=size)
            outputs.append(self.compose(child, part))
            start += size
        lengths = [o.keys.shape[2] if o.keys is not None else 0 for o in outputs]
        longest = max(lengths)
        if longest == 0:
            return state
        template = next(o for o in outputs if o.keys is not None).keys
        keys, values, valid = [], [], []
        for output, length in zip(outputs, lengths):
            pad = longest - length
            shape = (output.rows, template.shape[1], pad, template.shape[3])
            filler = template.new_zeros(shape)
            own_keys = output.keys if output.keys is not None else template.new_zeros(shape[:2] + (0,) + shape[3:])
            own_values = output.values if output.values is not None else own_keys
            own_valid = output.valid if output.valid is not None else torch.ones(
                output.rows, length, dtype=torch.bool, device=template.device
            )
            keys.append(torch.cat([filler, own_keys.to(template.dtype)], dim=2))
            values.append(torch.cat([filler, own_values.to(template.dtype)], dim=2))
            valid.append(torch.cat([torch.zeros(output.rows, pad, dtype=torch.bool, device=template.device), own_valid], dim=1))
        every_row_valid = longest == min(lengths) and all(o.valid is None for o in outputs)  # no device sync
        return state._replace(
            keys=torch.cat(keys, dim=0),
            values=torch.cat(values, dim=0),
            valid=None if every_row_valid else torch.cat(valid, dim=0),
        )

    def compose_split(self, setup, state):
        raise CompositionError(f"{setup}: prefix tuning adapters cannot take part in Split, a prefix belongs to whole sequences.")

    def mean(self, states, weights, start):
        raise CompositionError("Prefix tuning adapters cannot take part in Average: prefixes are not averaged.")

    def forward(self, *args, **kwargs):  # pragma: no cover - driven by the attention wrapper
        raise RuntimeError("PrefixTuningLayer is driven by the attention wrapper and is not called directly.")


def attention_sites(base_model, spec):
    """``(layer_idx, location, module, index)`` for every attention module prefixes can enter;
    ``index`` counts the modules of one location from 0 (the row in that location's prefix).

    Encoder-only and decoder-only families have one self-attention per layer (``"self"``). An
    encoder-decoder has its encoder self-attention at ``"encoder"`` (the config's
    ``encoder_prefix``), its decoder self-attention at ``"self"`` and its cross-attention at
    ``"cross"`` (``cross_prefix``: the prefix joins the keys and values computed from the encoder
    output), as in AdapterHub. CLIP's towers have a location each (``"clip_text_model_self"``,
    ``"clip_vision_model_self"``: AdapterHub's keys), sized by the tower's config.
    """
    return [site[:4] for site in _sites_with_configs(base_model, spec)]


def _sites_with_configs(base_model, spec):
    """:func:`attention_sites` with the config of each site's stack appended."""
    sites, counts = [], {}  # counts: the modules of each location so far (stacks sharing a location, as
    # ALBERT's layer groups do, number their rows on from the previous stack's)

    def index_at(location: str) -> int:
        counts[location] = counts.get(location, 0) + 1
        return counts[location] - 1

    for stack, first, layers in layer_stacks(base_model, spec):
        config = stack_config(base_model.config, stack)
        for offset, layer in enumerate(layers):
            location = stack.attention_location
            sites.append((first + offset, location, layer.get_submodule(stack.attention), index_at(location), config))
            if stack.cross_attention:
                sites.append((first + offset, "cross", layer.get_submodule(stack.cross_attention), index_at("cross"), config))
    return sites


def _attention_dims(module, config) -> tuple[int, int]:
    """``(key/value heads, head size)`` of an attention module: the config's where it says
    (grouped-query attention, explicit ``head_dim``), else the module's own (T5's ``d_kv`` can
    differ from ``d_model / heads``; BART's encoder and decoder may differ in head count)."""
    heads = getattr(module, "num_heads", None) or getattr(module, "n_heads", None) or config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = (
        getattr(config, "head_dim", None)
        or getattr(module, "key_value_proj_dim", None)
        or getattr(module, "head_dim", None)
        or config.hidden_size // heads
    )
    return kv_heads, head_dim


def prefix_shapes(model, sites=None) -> dict[str, PrefixShape]:
    """The prefix shape of every location of ``model`` (``{"self": PrefixShape(...), ...}``).

    Example::

        >>> prefix_shapes(llama)["self"]
        PrefixShape(n_layers=2, n_heads=2, head_dim=8, input_size=32)
    """
    spec = model.__dict__["_adapters_spec"]
    sites = _sites_with_configs(model.base_model, spec) if sites is None else sites
    shapes = {}
    for _, location, module, _, config in sites:
        if location not in shapes:
            n_layers = sum(1 for site in sites if site[1] == location)
            kv_heads, head_dim = _attention_dims(module, config)
            shapes[location] = PrefixShape(n_layers, kv_heads, head_dim, config.hidden_size)
    return shapes


def install_prefix_tuning(model) -> PrefixTuningPool:
    """Give ``model`` its prefix pool and a prefix host in every attention module (once).

    Example::

        >>> pool = install_prefix_tuning(model)
    """
    base = model.base_model
    pool = base._modules.get(POOL_NAME)
    if pool is not None:
        return pool
    spec = model.__dict__["_adapters_spec"]
    sites = _sites_with_configs(base, spec)
    shapes = prefix_shapes(model, sites)
    pool = PrefixTuningPool(shapes)
    pool.__dict__["causal"] = any(bool(getattr(site[2], "is_causal", False)) for site in sites)
    base.add_module(POOL_NAME, pool)
    model._adapter_hosts.append(pool)
    for layer_idx, location, attention, index, config in sites:
        tag_attention(attention, layer_idx, location)
        if spec.attention_mixin is not None and location != "cross":  # attention that scores keys in code of its own
            swap_class(attention, spec.attention_mixin)
        host = PrefixTuningLayer(pool, layer_idx, location, config.hidden_size, index)
        attention.add_module("prefix_tuning", host)
        host.__dict__["attention"] = attention
        add_contributor(attention, host)
        pool.__dict__["layer_hosts"].append(host)
        model._adapter_hosts.append(host)
    for location in shapes:  # T5: the first layer of a stack owns the relative position bias of all its layers
        modules = [site[2] for site in sites if site[1] == location]
        owner = next((m for m in modules if getattr(m, "has_relative_attention_bias", False)), None)
        for module in modules if owner is not None else ():
            set_position_bias_module(module, owner)
    decoder = spec.decoder
    if decoder is not None and decoder.position_embeddings:  # shift_positions renumbers the decoder's tokens here
        try:
            module = base.get_submodule(decoder.position_embeddings)
        except AttributeError:  # a model without the decoder (T5EncoderModel)
            pass
        else:
            swap_class(module, _ShiftsPositions)
            pool.__dict__["position_embeddings"] = module
    return pool


def remove_attention_contributor(attention: nn.Module, contributor) -> None:
    """Detach ``contributor`` from a tagged attention module; the last one leaving takes the tags
    (:func:`~adapters.hooks.attention.tag_attention`) with it.

    Example::

        >>> remove_attention_contributor(layer.self_attn, layer.self_attn.prefix_tuning)
    """
    entries = attention.__dict__
    for key in ("_adapters_attention_contributors", "_adapters_attention_adjusters"):
        if key in entries:
            entries[key][:] = [c for c in entries[key] if c is not contributor]
    if not entries.get("_adapters_attention_contributors"):
        for key in (
            "_adapters_attention_site", "_adapters_attention_contributors", "_adapters_attention_adjusters",
            "_adapters_position_bias_module",
        ):
            entries.pop(key, None)


def uninstall_prefix_tuning(model) -> None:
    """Take prefix tuning out of ``model`` once its pool holds no prefix: the pool, the prefix host
    of every attention module (and the tags and class swaps installed with them), the inverse of
    :func:`install_prefix_tuning`.

    Example::

        >>> model.delete_adapter("prefix")      # the last prefix-tuning adapter
        >>> "prefix_tuning" in model.base_model._modules
        False
    """
    base = model.base_model
    pool = base._modules.get(POOL_NAME)
    if pool is None or len(pool.prefix_tunings):
        return
    removed = [pool]
    for host in pool.__dict__["layer_hosts"]:
        attention = host.__dict__["attention"]
        if attention._modules.get("prefix_tuning") is host:
            del attention._modules["prefix_tuning"]
        remove_attention_contributor(attention, host)
        remove_host_mixin(attention, _RecordsAttentionInput)
        attention_mixin = model.__dict__["_adapters_spec"].attention_mixin
        if attention_mixin is not None:
            remove_host_mixin(attention, attention_mixin)
        removed.append(host)
    position_embeddings = pool.__dict__.get("position_embeddings")
    if position_embeddings is not None:
        remove_host_mixin(position_embeddings, _ShiftsPositions)
    del base._modules["prefix_tuning"]
    hosts = model._adapter_hosts
    hosts[:] = [host for host in hosts if not any(host is r for r in removed)]


def record_attention_inputs(pool: PrefixTuningPool) -> None:
    """Make the attention modules hand their input to the gates (needed once a gated prefix exists)."""
    for host in pool.__dict__["layer_hosts"]:
        swap_class(host.__dict__["attention"], _RecordsAttentionInput)


# -- the prefix-tuning family on a model: checks, creation, per-pass preparation, registration -------


def check_prefix_config(model, config: PrefixTuningConfig) -> None:
    """Refuse ``shift_positions`` where this model cannot renumber positions for the prefix.

    Example::

        >>> check_prefix_config(t5, PrefixTuningConfig(shift_positions=True))   # raises: encoder prefix on
    """
    spec = model.__dict__["_adapters_spec"]
    if config.shift_positions and spec.is_encoder_decoder:
        if config.encoder_prefix or config.cross_prefix:
            raise AdapterConfigError(
                f"shift_positions=True on {spec.name} describes a prefix fed to the decoder as past keys/values "
                f"(PEFT's layout): only the decoder's self-attention carries it. Set encoder_prefix=False and "
                f"cross_prefix=False, or shift_positions=False."
            )
    elif config.shift_positions and "position_ids" not in model._forward_argument_names():
        raise AdapterConfigError(
            f"shift_positions=True renumbers positions through position_ids, which {type(model).__name__}.forward "
            f"does not take; use shift_positions=False."
        )


def add_prefix_modules(model, name: str, config: PrefixTuningConfig, device, dtype) -> bool:
    """Create the prefix of adapter ``name`` in the pool (and its gates in the layers); returns
    whether any attention module takes it.

    Example::

        >>> add_prefix_modules(model, "prefix", PrefixTuningConfig(prefix_length=10), "cpu", torch.float32)
        True
    """
    pool = install_prefix_tuning(model)
    if not pool.add_adapter(name, config):
        return False
    pool.prefix_tunings[name].to(device=device, dtype=dtype).train(model.training)
    if config.use_gating:
        record_attention_inputs(pool)
        for host in pool.__dict__["layer_hosts"]:
            if pool.covers(name, host.layer_idx, host.location):
                host.add_gate(name, config)
                host.prefix_gates[name].to(device=device, dtype=dtype).train(model.training)
    use_adapter_attention(model)
    return True


def prepare_prefixes(model, context: ForwardContext, call) -> None:
    """Before a forward pass: compute the active prefixes once for the pass, route attention
    through the wrapper, and set the positions the prefixes ask for (see :func:`_set_positions`).
    For a stack entered on its own (``call.entry``: an encoder run by ``generate``) the inputs
    stay as they are.

    Example::

        >>> prepare_prefixes(model, context, call)     # run by the model's forward
    """
    pool = model.base_model._modules.get(POOL_NAME)
    if context.setup is None or pool is None or not pool.prepare_forward(context):
        return
    use_adapter_attention(model)
    if call.entry:
        return
    kwargs = call.keyword_arguments()
    context.kv_cache_layers = cache_layer_lists(passed_cache(kwargs))
    _set_positions(model, pool, context, kwargs)


def _set_positions(model, pool, context: ForwardContext, kwargs: dict) -> None:
    """The ``position_ids`` active prefixes ask for: shifted by the prefix length
    (``shift_positions``, PEFT's convention), or, in causal models without given positions,
    each row's real tokens numbered from 0 — the prefix keys carry no position, so a row's
    result does not depend on its (left) padding; padding tokens keep the model's own positions."""
    offsets = pool.position_offsets(context.setup, *_batch_and_device(kwargs))
    if offsets is not None and model.__dict__["_adapters_spec"].is_encoder_decoder:
        context.hook_values[POSITION_OFFSETS] = offsets  # the decoder's position embedding reads them
        return
    if offsets is not None:
        kwargs["position_ids"] = _position_ids(kwargs) + offsets[:, None]
        return
    mask = kwargs.get("attention_mask")
    if (
        pool.__dict__.get("causal")
        and "position_ids" in model._forward_argument_names()
        and kwargs.get("position_ids") is None
        and isinstance(mask, torch.Tensor)
        and mask.dim() == 2
    ):
        length = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]).shape[1]
        # padding keeps the model's own positions (its outputs at right padding then equal the model's)
        own = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        kwargs["position_ids"] = torch.where(mask.bool(), mask.long().cumsum(-1) - 1, own)[:, -length:]


def _batch_and_device(kwargs):
    for name in ("input_ids", "inputs_embeds", "input_features", "pixel_values", "decoder_input_ids"):
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor):
            return value.shape[0], value.device
    raise AdapterConfigError(
        f"Prefix tuning with shift_positions=True numbers positions from the input, but the forward call got none "
        f"of input_ids / inputs_embeds (arguments: {sorted(kwargs)}); pass input_ids or inputs_embeds."
    )


def _position_ids(kwargs) -> torch.Tensor:
    """The position ids the model would use: the given ones, else ``past + arange(T)``."""
    if kwargs.get("position_ids") is not None:
        return kwargs["position_ids"]
    inputs = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
    cache = passed_cache(kwargs)
    past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
    return (torch.arange(inputs.shape[1], device=inputs.device) + past).unsqueeze(0)


def eject_prefix(model, name: str, config: PrefixTuningConfig) -> PrefixTuningConfig:
    """Replace adapter ``name``'s MLP reparameterisation by the flat prefix it produces; returns
    its new config (``flat=True``). Raises if the adapter has no prefix in the pool.

    Example::

        >>> eject_prefix(model, "prefix", model.adapters_config.adapters["prefix"])
    """
    pool = model.base_model._modules.get(POOL_NAME)
    if pool is None or name not in pool.prefix_tunings:
        raise AdapterConfigError(
            f"Adapter {name!r} has no prefix tuning to eject; eject_prefix_tuning takes a prefix-tuning adapter "
            f"(this model's: {sorted(pool.prefix_tunings) if pool is not None else []})."
        )
    pool.eject(name)
    return config.replace(flat=True)


# -- prefix tuning in PEFT's format (PREFIX_TUNING) -----------------------------------------------------
# PEFT stores the prefix it feeds to the model as past keys/values: ``prompt_embeddings``
# (P, L·2·token_dim) (an MLP reparameterisation already applied), with num_virtual_tokens, num_layers,
# num_attention_heads (key/value heads) and token_dim (heads × head size). Here it is a flat prefix
# with shift_positions (the real tokens are numbered from P). On an encoder-decoder
# (num_transformer_submodules=2) the cache is the decoder's: only the decoder self-attention gets a
# prefix (encoder_prefix=cross_prefix=False), decoder layer i the one PEFT stores for layer 2i mod L
# (see prefix_from_peft).

#: PEFT's key of the prefix (the prompt encoder's embedding, at the top level of the file)
PEFT_PROMPT_KEY = PeftMapping.PROMPT_KEY
_PEFT_PREFIX_FIELDS = {
    "PREFIX_TUNING": (
        ("num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers"),
        # the saved prompt_embeddings already went through a projection; the init does not matter
        ("prefix_projection", "encoder_hidden_size", "init_weights"),
        {"modules_to_save": None},
    ),
}


def _peft_submodules(meta: dict) -> int:
    """PEFT's ``num_transformer_submodules`` (unset: 2 for ``SEQ_2_SEQ_LM``, else 1, as PEFT decides)."""
    submodules = meta.get("num_transformer_submodules")
    if submodules is None:
        submodules = 2 if meta.get("task_type") == "SEQ_2_SEQ_LM" else 1
    return int(submodules)


def prefix_config_from_peft(meta: dict, targeting: dict) -> PrefixTuningConfig:
    """Our config for PEFT's ``PREFIX_TUNING`` config dict ``meta``: PEFT saves a prefix as the flat
    prompt it produces (``prompt_embeddings``, ``(P, L·2·kv_dim)``, the MLP already applied), fed to
    the model as past keys/values: positions shift by ``P``. On an encoder-decoder
    (``num_transformer_submodules=2``) that cache is the decoder's: only the decoder self-attention
    gets a prefix (see :func:`prefix_from_peft`). ``targeting`` is unused (PEFT's prefix covers
    every layer).

    Example::

        >>> prefix_config_from_peft({"num_virtual_tokens": 8, "num_layers": 12, "num_attention_heads": 12,
        ...                          "token_dim": 768}, {}).prefix_length
        8
    """
    for field in ("num_layers", "num_attention_heads", "token_dim"):  # read by prefix_from_peft
        check_int("PEFT PrefixTuningConfig", field, meta.get(field), minimum=1)
    check_int("PEFT PrefixTuningConfig", "num_transformer_submodules", meta.get("num_transformer_submodules"), minimum=1, maximum=2, optional=True)
    seq2seq = _peft_submodules(meta) == 2
    return PrefixTuningConfig(
        prefix_length=meta.get("num_virtual_tokens"), flat=True, shift_positions=True,
        encoder_prefix=not seq2seq, cross_prefix=not seq2seq,
    )


def _peft_prefix_rows(n_layers: int, peft_layers: int) -> list[int]:
    """The row of PEFT's prefix that decoder layer ``i`` of an encoder-decoder reads, for each ``i``.

    PEFT 0.21 views the prefix as ``(P, 2L, H, D)``, concatenates it with itself along the ``2L``
    axis and cuts the result into groups of four (self key, self value, cross key, cross value),
    one per decoder layer; the cross-attention part is dropped again. Layer ``i`` therefore reads
    rows ``4i, 4i+1`` of the doubled axis, i.e. the keys and values PEFT stores for its layer
    ``2i mod L`` (with even ``L`` the odd rows are never read)."""
    return [(2 * i) % peft_layers for i in range(n_layers)]


def _check_peft_submodules(spec, submodules: int) -> None:
    """PEFT builds an encoder-decoder's cache right only with 2 submodules, any other's with 1."""
    if spec.is_encoder_decoder and submodules != 2:
        raise AdapterConfigError(
            f"PEFT prefix with num_transformer_submodules={submodules} on the encoder-decoder {spec.name}: PEFT builds "
            f"the decoder's cache correctly only with 2 (task_type='SEQ_2_SEQ_LM')."
        )
    if not spec.is_encoder_decoder and submodules != 1:
        raise AdapterConfigError(
            f"PEFT prefix with num_transformer_submodules={submodules} is for encoder-decoder models; {spec.name} has "
            f"one stack of layers (1)."
        )


def prefix_from_peft(model, meta: dict, prompt: torch.Tensor) -> torch.Tensor:
    """PEFT's ``prompt_embeddings`` ``(P, L·2·H·D)`` -> this library's flat prefix of the model's
    prefix sites (decoder-only: every layer; encoder-decoder: the decoder's self-attention, layer
    ``i`` from PEFT's row ``2i mod L``: PEFT doubles the ``2L`` key/value rows and cuts them into
    groups of four per decoder layer).

    Raises:
        AdapterConfigError: the checkpoint's sizes or layout do not fit ``model`` (the message says
            which; :func:`~adapters.loading.load_adapter` raises it as an AdapterLoadError naming the file).

    Example::

        >>> flat = prefix_from_peft(t5, meta, weights["prompt_embeddings"])
    """
    spec = model.__dict__["_adapters_spec"]
    _check_peft_submodules(spec, _peft_submodules(meta))
    shape = prefix_shapes(model)["self"]
    length, peft_layers = int(meta["num_virtual_tokens"]), int(meta["num_layers"])
    heads, token_dim = int(meta["num_attention_heads"]), int(meta["token_dim"])
    if heads != shape.n_heads or token_dim != shape.n_heads * shape.head_dim:
        raise AdapterConfigError(
            f"PEFT prefix for {heads} key/value heads of size {token_dim // max(heads, 1)} (num_attention_heads={heads}, "
            f"token_dim={token_dim}), but this model's attention has {shape.n_heads} of size {shape.head_dim}."
        )
    if tuple(prompt.shape) != (length, peft_layers * 2 * token_dim):
        raise AdapterConfigError(
            f"PEFT prompt_embeddings has shape {tuple(prompt.shape)}, expected {(length, peft_layers * 2 * token_dim)} "
            f"(num_virtual_tokens, num_layers·2·token_dim)."
        )
    if not spec.is_encoder_decoder:
        if peft_layers != shape.n_layers:
            raise AdapterConfigError(
                f"PEFT prefix for num_layers={peft_layers}, but this model has {shape.n_layers} layers; it loads into a "
                f"model with {peft_layers} layers only."
            )
        return prompt
    if shape.n_layers > peft_layers:
        raise AdapterConfigError(
            f"PEFT prefix for num_layers={peft_layers}, but this model's decoder has {shape.n_layers} layers (PEFT's "
            f"cache would miss the last ones)."
        )
    per_layer = prompt.reshape(length, peft_layers, 2 * token_dim)
    return per_layer[:, _peft_prefix_rows(shape.n_layers, peft_layers)].reshape(length, -1)


def _prefix_weights_from_peft(model, meta: dict, state: dict) -> dict:
    """``state`` with PEFT's prefix made this model's (:func:`prefix_from_peft`)."""
    if PEFT_PROMPT_KEY not in state:
        return state
    return {**state, PEFT_PROMPT_KEY: prefix_from_peft(model, meta, state[PEFT_PROMPT_KEY])}


def _prefix_key_from_peft(key: str, value: torch.Tensor, name: str):
    """PEFT's ``prompt_embeddings`` (after :func:`prefix_from_peft`) is the flat prefix of every layer."""
    if key != PEFT_PROMPT_KEY:
        return None
    return f"{POOL_NAME}.prefix_tunings.{name}.self_prefix.control_trans", value.reshape(-1)


def _peft_task_type(model) -> str:
    """The PEFT ``task_type`` whose model class feeds the prefix to ``model`` as it runs here:
    ``SEQ_2_SEQ_LM`` (encoder-decoders), ``CAUSAL_LM`` (models that generate), else
    ``FEATURE_EXTRACTION`` (passes the prefix to any other model, heads included, untouched;
    PEFT's ``SEQ_CLS`` would also expect a trained copy of the classifier)."""
    if model.__dict__["_adapters_spec"].is_encoder_decoder:
        return "SEQ_2_SEQ_LM"
    return "CAUSAL_LM" if model.can_generate() else "FEATURE_EXTRACTION"


def _check_prefix_writable(model, name: str, config: PrefixTuningConfig) -> None:
    """PEFT feeds the prefix to the model as past keys/values, so only prefixes that compute the
    same are written: ungated, in every layer, with ``shift_positions``, and on an encoder-decoder
    in the decoder's self-attention only."""
    spec = model.__dict__["_adapters_spec"]
    problems = []
    if config.use_gating:
        problems.append("it is gated (PEFT has no prefix gates)")
    if config.leave_out:
        problems.append(f"it leaves out layers {list(config.leave_out)} (PEFT's prefix covers every layer)")
    if spec.is_encoder_decoder and (config.encoder_prefix or config.cross_prefix):
        problems.append(
            "it has prefixes in the encoder or in cross-attention (PEFT's encoder-decoder prefix reaches the decoder's "
            "self-attention only; use encoder_prefix=False, cross_prefix=False)"
        )
    if not config.shift_positions:
        problems.append(
            "it has shift_positions=False (PEFT feeds the prefix as past keys/values, which numbers the tokens from "
            "prefix_length on; use shift_positions=True)"
        )
    if problems:
        raise AdapterConfigError(f"Prefix adapter {name!r} cannot be written in PEFT's format: {'; '.join(problems)}.")


def prefix_to_peft(model, name: str, config: PrefixTuningConfig) -> tuple[dict, dict]:
    """``(fields, weights)`` of prefix adapter ``name`` in PEFT's ``PREFIX_TUNING`` layout:
    ``prompt_embeddings`` ``(P, L·2·H·D)``, the flat prefix of every layer (an MLP
    reparameterisation written as the prefix it produces), with the config PEFT needs to rebuild it.

    Raises:
        AdapterConfigError: PEFT would compute something else (see the message).

    Example::

        >>> fields, weights = prefix_to_peft(model, "prefix", model.adapters_config.adapters["prefix"])
    """
    _check_prefix_writable(model, name, config)
    spec = model.__dict__["_adapters_spec"]
    group = model.base_model._modules[POOL_NAME].prefix_tunings[name]
    shape = group["self_prefix"].shape
    length, token_dim = config.prefix_length, shape.n_heads * shape.head_dim
    with torch.no_grad():
        ours = group["self_prefix"].flat_prefix().detach().reshape(length, shape.n_layers, 2 * token_dim)
    peft_layers = shape.n_layers
    if spec.is_encoder_decoder:
        peft_layers = _peft_layers_for(model, ours)
        stored = ours.new_zeros(length, peft_layers, 2 * token_dim)  # rows PEFT never reads stay zero
        stored[:, _peft_prefix_rows(shape.n_layers, peft_layers)] = ours
        ours = stored
    fields = {
        "task_type": _peft_task_type(model),
        "num_virtual_tokens": length,
        "num_layers": peft_layers,
        "token_dim": token_dim,
        "num_attention_heads": shape.n_heads,
        "encoder_hidden_size": token_dim,
        "num_transformer_submodules": 2 if spec.is_encoder_decoder else 1,
        "prefix_projection": False,
    }
    return fields, {PEFT_PROMPT_KEY: ours.reshape(length, -1)}


def _peft_layers_for(model, ours: torch.Tensor) -> int:
    """PEFT's ``num_layers`` for a decoder prefix ``ours`` ``(P, D, 2·token_dim)``: the model's own
    layer count (what PEFT picks itself) where layer ``i`` reading row ``2i mod L`` can give every
    decoder layer its prefix (always with odd ``L``; with even ``L`` layers ``i`` and ``i + L/2``
    must have equal prefixes), else the smallest odd count ``≥ D`` (``2i mod L`` is then one-to-one)."""
    n_layers = ours.shape[1]
    own = getattr(model.config, "num_hidden_layers", None)
    if own is not None and own >= n_layers:
        rows = _peft_prefix_rows(n_layers, own)
        first = {}
        if all(torch.equal(ours[:, first.setdefault(row, i)], ours[:, i]) for i, row in enumerate(rows)):
            return own
    return n_layers if n_layers % 2 else n_layers + 1


def prefix_pool_to_adapterhub(model, name: str, config, state: dict) -> dict:
    """``state`` with the adapter's pool entries written once more under every prefix host, as
    AdapterHub stores them: its pool is a submodule of each attention's prefix layer, so its files
    repeat ``prefix_tuning.prefix_tunings.<name>.…`` as ``<attention>.prefix_tuning.pool.
    prefix_tunings.<name>.…`` for every attention module (the same tensors; loading reads the
    first and skips the copies). Keys are relative to the base model, in this library's module
    paths (the caller renames them to AdapterHub's).

    Example::

        >>> prefix_pool_to_adapterhub(model, "p", config, {"prefix_tuning.prefix_tunings.p.self_prefix.wte.weight": w})
        {'prefix_tuning.prefix_tunings.p.self_prefix.wte.weight': w,
         'encoder.layer.0.attention.self.prefix_tuning.pool.prefix_tunings.p.self_prefix.wte.weight': w, ...}
    """
    pool_keys = [key for key in state if key.startswith(f"{POOL_NAME}.prefix_tunings.{name}.")]
    base = model.base_model
    hosts = [path for path, module in base.named_modules() if isinstance(module, PrefixTuningLayer)]
    # separate tensors: safetensors refuses to write one storage under several keys
    copies = {f"{host}.pool.{key[len(POOL_NAME) + 1:]}": state[key].detach().clone() for host in hosts for key in pool_keys}
    return {**state, **copies}


PREFIX_TUNING_PEFT = PeftMapping(
    "PREFIX_TUNING", prefix_config_from_peft, fields=_PEFT_PREFIX_FIELDS, field_names={"prefix_length": "num_virtual_tokens"},
    shares_targeting=False, prompt_learning=True, load_weights=_prefix_weights_from_peft, convert_key=_prefix_key_from_peft,
    write=prefix_to_peft,
)


register(MethodFamily(
    name="prefix_tuning", title="Prefix tuning", blocks=PrefixTuningLayer.supported_blocks, add=add_prefix_modules,
    check=check_prefix_config, remove_unused=uninstall_prefix_tuning, installed=lambda model: POOL_NAME in model.base_model._modules,
    before_forward=prepare_prefixes, enters_attention=True, interface_method="prefix_tuning", eject=eject_prefix,
    peft=PREFIX_TUNING_PEFT, to_adapterhub=prefix_pool_to_adapterhub,
))
