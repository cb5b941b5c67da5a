"""Llama-Adapter (Zhang et al., 2023, "LLaMA-Adapter: Efficient Fine-tuning of Language Models
with Zero-init Attention"): adaption prompts with zero-initialised, gated attention.

Each of the top ``adapter_layers`` layers ``l`` gets ``n = adapter_len`` learned prompt vectors
``P_l ∈ R^{n × d_model}`` and a scalar gate ``g_l`` (initialised to 0). The prompt goes through
the layer's own, frozen key and value projections, without rotary position embedding (a prompt
has no position):

    K^P_l = P_l W_Kᵀ + b_K,   V^P_l = P_l W_Vᵀ + b_V        (kv_heads × n × d_head after the head split)

Every query attends to the prompt through a softmax of its own, separate from the softmax over
the real tokens, computed in float32; the gate scales the result, which is added to the
attention output of the tokens before the output projection:

    A_h = softmax(Q_h K^P_{k(h)}ᵀ / √d_head)                 (n columns; float32, then the query's dtype)
    O_h = Attn(Q, K, V)_h + g_l · A_h V^P_{k(h)}
    out = W_O [O_1; …; O_H] + b_O

``Q_h`` is exactly the query the model's attention uses (after ``q_proj``, RoPE and any adapter
on ``q_proj``); with grouped-query attention head ``h`` uses key/value head
``k(h) = ⌊h · kv_heads / H⌋`` (transformers' ``repeat_kv`` layout), here without materialising the
repeated heads. The scale is ``1/√d_head`` (the paper's and PEFT's). With ``g_l = 0`` the model is
exactly the base model, which is why training starts from it ("zero-init attention").

Facts shared with PEFT's ``adaption_prompt`` (so its checkpoints reproduce): prompt initialised
``N(0, 1)`` like the official code's embedding, gate a single scalar per layer without tanh,
softmax in float32, no RoPE and no mask on the prompt (every position sees it, padding included:
padded positions are discarded downstream anyway). One difference: PEFT applies the whole output
projection a second time to the prompt's share, so on models whose ``o_proj`` has a bias
(``attention_bias=True``) it adds that bias twice; here the prompt's share enters before the
projection and ``g = 0`` stays the base model. PEFT's GPT-2 variant adds the prompt's share
*after* ``c_proj`` without projecting it; this implementation treats GPT-2 like every other model.

Where the prompt attaches: the attention wrapper of :mod:`adapters.hooks.attention` calls
:meth:`AdaptionPromptLayer.adjust_output` with the query and the attention output of the real
tokens, for every backend (eager, sdpa, flash) and after the KV-cache update; no attention code is
copied. The cache holds only real tokens; the prompt's keys and values are recomputed from the
parameters (and, in inference, reused while the parameters do not change) and every decoding step
attends to them. Because the query carries its absolute position (RoPE) and the prompt none,
results depend on positions: a left-padded batch gives each row the same result as running alone
only with ``position_ids`` that count its real tokens (``generate`` passes them, as transformers
does for the unpatched model).

Composition at one attention layer (state: the sum ``Δ`` of the prompts' shares, per batch row):

* ``Stack(a, b)``: shares add, ``Δ = g_a A_a V^P_a + g_b A_b V^P_b`` — each prompt keeps its own
  softmax and gate, as LoRA deltas add;
* ``Parallel`` / ``BatchSplit``: each group of rows gets its child's prompt;
* ``Split``: consecutive positions of the current chunk get their child's prompt;
* ``Average(a, b, weights)``: ``Δ = Σ_i w_i Δ_i``;
* ``Fuse``: not defined (AdapterFusion combines bottleneck outputs) — rejected with an error.

Modules and state-dict keys: ``<attention>.adaption_prompt.adaption_prompts.<name>.prompt``
(``n × d_model``) and ``.gate`` (``1``), in the adapted layers only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..composition import Average, BatchSplit, Parallel, Split, Stack
from ..context import ForwardContext
from ..errors import AdapterConfigError, CompositionError
from ..hooks.attention import AttentionContributor, add_contributor, tag_attention, use_adapter_attention
from ..hooks.targeting import fused_part_ranges, fused_part_rows
from ..hooks.engine import ComposableLayer, setup_members
from .caching import reuse_while_unchanged
from .registry import MethodFamily, register

__all__ = [
    "AdaptionPrompt",
    "AdaptionPromptLayer",
    "AdaptionPromptSites",
    "install_adaption_prompt",
    "uninstall_adaption_prompt",
    "add_adaption_prompt",
    "check_adaption_prompt_config",
    "adapted_layers",
    "check_adaption_prompt",
    "prepare_adaption_prompts",
]

#: where the base model keeps its :class:`AdaptionPromptSites` (in its ``__dict__``)
SITES_KEY = "_adaption_prompt_sites"


class AdaptionPrompt(nn.Module):
    """One adapter's prompt ``P`` (``adapter_len × d_model``, ``N(0, 1)``) and gate ``g`` (zero).

    Example::

        >>> prompt = AdaptionPrompt(adapter_len=10, hidden_size=4096)
        >>> prompt.gate
        Parameter containing: tensor([0.], requires_grad=True)
    """

    def __init__(self, adapter_len: int, hidden_size: int):
        super().__init__()
        # the official implementation keeps the prompt in an nn.Embedding: standard normal values
        self.prompt = nn.Parameter(torch.randn(adapter_len, hidden_size))
        # zero-init attention: the model starts as the base model
        self.gate = nn.Parameter(torch.zeros(1))

    def extra_repr(self) -> str:
        return f"adapter_len={self.prompt.shape[0]}, hidden_size={self.prompt.shape[1]}"


class _Projection(NamedTuple):
    """The rows of a (possibly fused) projection that produce keys or values."""

    module: nn.Module
    start: int  # first output row
    size: int  # number of output rows (kv_heads · d_head)
    rows: torch.Tensor | None = None  # the output rows where they are not one run (interleaved heads)


def _projection(module: nn.Module, part: int, parts: int) -> _Projection:
    weight = module.weight.t() if isinstance(module, Conv1D) else module.weight
    size = weight.shape[0] // parts
    return _Projection(module, part * size, size)


def _spread_projection(module: nn.Module, ranges) -> _Projection:
    """The rows of a part spread over a fused projection's output (one range per head)."""
    rows = torch.cat([torch.arange(start, stop) for start, stop in ranges])
    return _Projection(module, 0, len(rows), rows)


def _project(projection: _Projection, prompt: torch.Tensor) -> torch.Tensor:
    """``P W[rows]ᵀ + b[rows]`` with the module's frozen weight (adapters on it do not act)."""
    module = projection.module
    weight = module.weight.t() if isinstance(module, Conv1D) else module.weight
    if projection.rows is not None:
        rows = projection.rows.to(weight.device)
        weight = weight.index_select(0, rows)
        bias = module.bias.index_select(0, rows) if module.bias is not None else None
    else:
        weight = weight.narrow(0, projection.start, projection.size)
        bias = module.bias.narrow(0, projection.start, projection.size) if module.bias is not None else None
    return F.linear(prompt.to(weight.dtype), weight, bias)


class AdaptionPromptState(NamedTuple):
    """A group of batch rows: their queries ``(rows, q, heads, d_head)`` (a transposed view of
    what attention uses) and the prompts' shares added so far ``(rows, q, heads, d_head)``."""

    query: torch.Tensor
    delta: torch.Tensor


class AdaptionPromptLayer(ComposableLayer, AttentionContributor, nn.Module):
    """The adaption-prompt host of one attention module (``<attention>.adaption_prompt``): owns
    the prompts and gates of that layer and adds their gated attention to its output.

    Example::

        >>> host = model.model.layers[-1].self_attn.adaption_prompt
        >>> sorted(host.adaption_prompts)
        ['llama_adapter']
    """

    method = "adaption_prompt"
    supported_blocks = (Stack, Parallel, BatchSplit, Split, Average)
    BATCH_FIELDS = ("query", "delta")
    SEQUENCE_FIELDS = ("query", "delta")

    def __init__(self, sites: "AdaptionPromptSites", layer_idx: int, key: _Projection, value: _Projection, head_dim: int):
        nn.Module.__init__(self)
        self.adaption_prompts = nn.ModuleDict()
        # not submodules: the projections belong to the attention module
        self.__dict__["sites"] = sites
        self.__dict__["key_projection"] = key
        self.__dict__["value_projection"] = value
        self.__dict__["head_dim"] = head_dim
        self.__dict__["_kv_cache"] = {}
        self._init_composable(layer_idx, "adaption_prompt")

    @property
    def adapters(self) -> nn.ModuleDict:
        return self.adaption_prompts

    def adapter_names(self) -> set[str]:
        return set(self.adaption_prompts)

    def _invalidate_setup_cache(self) -> None:
        super()._invalidate_setup_cache()
        self.__dict__["_kv_cache"] = {}
        self.__dict__["sites"].invalidate()

    def add_prompt(self, name: str, config, hidden_size: int) -> None:
        """Create adapter ``name``'s prompt and zero gate here."""
        self.adaption_prompts[name] = AdaptionPrompt(config.adapter_len, hidden_size)
        self._invalidate_setup_cache()

    def delete_adapter(self, name: str) -> None:
        if name in self.adaption_prompts:
            del self.adaption_prompts[name]
        self._invalidate_setup_cache()

    # -- the prompt's keys and values ------------------------------------------------------------
    def prompt_keys_values(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K^P, V^P)`` of adapter ``name``, each ``(kv_heads, n, d_head)``.

        In inference they are reused while the prompt and the projection weights are unchanged
        (every decoding step needs them)."""
        prompt = self.adaption_prompts[name].prompt
        key, value = self.__dict__["key_projection"], self.__dict__["value_projection"]
        tensors = [prompt, key.module.weight, key.module.bias, value.module.weight, value.module.bias]
        head_dim = self.__dict__["head_dim"]

        def project():
            keys = _project(key, prompt).unflatten(-1, (-1, head_dim)).transpose(0, 1)
            return keys, _project(value, prompt).unflatten(-1, (-1, head_dim)).transpose(0, 1)

        return reuse_while_unchanged(self.__dict__["_kv_cache"], name, tensors, project)

    def prompt_share(self, name: str, query: torch.Tensor) -> torch.Tensor:
        """``g · softmax(Q K^Pᵀ / √d_head) V^P`` for ``query`` ``(rows, heads, q, d_head)``;
        returned as ``(rows, q, heads, d_head)``, the layout of attention outputs."""
        keys, values = self.prompt_keys_values(name)
        kv_heads, heads = keys.shape[0], query.shape[1]
        if heads % kv_heads:
            raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads of the adaption prompt.")
        dtype = query.dtype
        grouped = query.unflatten(1, (kv_heads, heads // kv_heads))  # (rows, kv, group, q, d): head h -> kv h // group
        scores = torch.matmul(grouped, keys.to(dtype).transpose(-1, -2).unsqueeze(1)) * (self.__dict__["head_dim"] ** -0.5)
        probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        gated_values = values.to(dtype) * self.adaption_prompts[name].gate.to(dtype)  # n × d_head rows: cheaper than gating A
        share = torch.matmul(probabilities, gated_values.unsqueeze(1))  # (rows, kv, group, q, d)
        return share.flatten(1, 2).transpose(1, 2)

    # -- AttentionContributor ------------------------------------------------------------------
    def adjust_output(self, module, site, query, output, context) -> torch.Tensor:
        setup = self.active_setup()
        if setup is None:
            return output
        if isinstance(setup, str):  # one adapter: the common case, without the composition engine
            return output + self.prompt_share(setup, query).to(output.dtype)
        start = AdaptionPromptState(query.transpose(1, 2), torch.zeros_like(output))
        return output + self.compose(setup, start).delta

    # -- composition protocol --------------------------------------------------------------------
    def compose_single(self, name: str, state: AdaptionPromptState) -> AdaptionPromptState:
        share = self.prompt_share(name, state.query.transpose(1, 2))
        return state._replace(delta=state.delta + share.to(state.delta.dtype))

    def mean(self, states, weights, start: AdaptionPromptState) -> AdaptionPromptState:
        delta = start.delta
        for state, weight in zip(states, weights):
            delta = delta + weight * (state.delta - start.delta)
        return start._replace(delta=delta)

    def compose_fuse(self, setup, state):
        raise CompositionError(
            "Adaption prompts (Llama-Adapter) cannot take part in Fuse: AdapterFusion combines bottleneck adapter outputs."
        )

    def forward(self, *args, **kwargs):  # pragma: no cover - driven by the attention wrapper
        raise RuntimeError("AdaptionPromptLayer is driven by the attention wrapper and is not called directly.")


class AdaptionPromptSites:
    """The adaption-prompt hosts of one model and which adapters of a setup have prompts (cached
    per setup, so a forward pass costs a dict lookup).

    Example::

        >>> sites = model.base_model.__dict__["_adaption_prompt_sites"]
        >>> sites.names_in(model.active_adapters)
        ('llama_adapter',)
    """

    def __init__(self):
        self.hosts: list[AdaptionPromptLayer] = []
        self._names: dict = {}

    def invalidate(self) -> None:
        self._names = {}

    def names_in(self, setup) -> tuple[str, ...]:
        """The adapters of ``setup`` that have a prompt in some layer."""
        return setup_members(setup, lambda: set().union(*(host.adapter_names() for host in self.hosts)), self._names)


def _attention_name(spec) -> str:
    return spec.attention.rsplit(".", 1)[-1]


def adapted_layers(config, num_layers: int) -> range:
    """The layers that get a prompt: the top ``adapter_layers`` (all of them for None).

    Example::

        >>> adapted_layers(AdaptionPromptConfig(adapter_layers=2), 32)
        range(30, 32)
    """
    count = num_layers if config.adapter_layers is None else config.adapter_layers
    return range(num_layers - count, num_layers)


def check_adaption_prompt_config(model, config) -> None:
    """Raise an AdapterConfigError if ``config`` does not fit ``model`` (before anything is created).

    Example::

        >>> check_adaption_prompt_config(model, AdaptionPromptConfig(adapter_layers=2))
    """
    spec = model.__dict__["_adapters_spec"]
    num_layers = len(model.base_model.get_submodule(spec.layers))
    if config.adapter_layers is not None and config.adapter_layers > num_layers:
        raise AdapterConfigError(
            f"adapter_layers={config.adapter_layers} but the model has {num_layers} layers; use at most {num_layers} "
            f"(or None for every layer)."
        )
    if config.target_modules is not None and config.target_modules not in (spec.attention, _attention_name(spec)):
        raise AdapterConfigError(
            f"target_modules={config.target_modules!r}: adaption prompts live in the attention module of a layer, which "
            f"is {_attention_name(spec)!r} in {spec.name} models; use that or None."
        )
    if spec.key is None or spec.value is None:
        raise AdapterConfigError(f"The {spec.name} spec names no key/value projections, which the adaption prompt goes through.")


def install_adaption_prompt(model) -> AdaptionPromptSites:
    """Give every attention module of ``model`` an adaption-prompt host (once).

    Example::

        >>> sites = install_adaption_prompt(model)
    """
    from .prefix_tuning import attention_sites

    base = model.base_model
    sites = base.__dict__.get(SITES_KEY)
    if sites is not None:
        return sites
    spec = model.__dict__["_adapters_spec"]
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers = base.get_submodule(spec.layers)
    fused = spec.key == spec.value
    sites = AdaptionPromptSites()
    for layer_idx, location, attention, _ in attention_sites(base, spec):
        layer = layers[layer_idx]
        if fused and spec.fused_qkv_layout == "interleaved_heads":  # per head [q_h k_h v_h] (GPT-NeoX)
            module = layer.get_submodule(spec.key)
            rows = fused_part_rows(spec, spec.key, module, config)
            key, value = _spread_projection(module, rows["k"]), _spread_projection(module, rows["v"])
        elif fused:  # one projection computes [q | k | v] in equal parts (GPT-2's c_attn)
            module = layer.get_submodule(spec.key)
            parts = 3 if spec.query == spec.key else 2
            key, value = _projection(module, parts - 2, parts), _projection(module, parts - 1, parts)
        else:
            key, value = _projection(layer.get_submodule(spec.key), 0, 1), _projection(layer.get_submodule(spec.value), 0, 1)
        tag_attention(attention, layer_idx, location)
        host = AdaptionPromptLayer(sites, layer_idx, key, value, head_dim)
        attention.add_module("adaption_prompt", host)
        host.__dict__["attention"] = attention  # not a submodule: the host's owner, for uninstalling
        add_contributor(attention, host)
        sites.hosts.append(host)
        model._adapter_hosts.append(host)
    base.__dict__[SITES_KEY] = sites
    return sites


def uninstall_adaption_prompt(model) -> None:
    """Take the adaption-prompt hosts out of ``model`` once none holds a prompt (the inverse of
    :func:`install_adaption_prompt`).

    Example::

        >>> model.delete_adapter("llama_adapter")   # the last adaption-prompt adapter
        >>> "_adaption_prompt_sites" in model.base_model.__dict__
        False
    """
    from .prefix_tuning import remove_attention_contributor

    base = model.base_model
    sites = base.__dict__.get(SITES_KEY)
    if sites is None or any(len(host.adaption_prompts) for host in sites.hosts):
        return
    for host in sites.hosts:
        attention = host.__dict__.get("attention")
        if attention is None:
            continue
        if attention._modules.get("adaption_prompt") is host:
            del attention._modules["adaption_prompt"]
        remove_attention_contributor(attention, host)
    del base.__dict__[SITES_KEY]
    hosts = model._adapter_hosts
    hosts[:] = [host for host in hosts if not any(host is h for h in sites.hosts)]


def add_adaption_prompt(model, name: str, config, device, dtype) -> None:
    """Create adapter ``name``'s prompts and gates in the top ``config.adapter_layers`` layers.

    Example::

        >>> add_adaption_prompt(model, "llama_adapter", AdaptionPromptConfig(adapter_layers=2), "cpu", torch.float32)
    """
    check_adaption_prompt_config(model, config)
    sites = install_adaption_prompt(model)
    layers = adapted_layers(config, len(sites.hosts))
    seed = config.init_weights_seed
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for host in sites.hosts:
            if host.layer_idx in layers:
                hidden_size = host.__dict__["key_projection"].module.weight.shape[
                    0 if isinstance(host.__dict__["key_projection"].module, Conv1D) else 1
                ]
                host.add_prompt(name, config, hidden_size)
                host.adaption_prompts[name].to(device=device, dtype=dtype).train(model.training)
    use_adapter_attention(model)


def adaption_prompt_active(model, context: ForwardContext) -> bool:
    """Whether the setup of this forward pass has an adaption prompt (then the attention wrapper
    must run its contributors)."""
    sites = model.base_model.__dict__.get(SITES_KEY)
    return sites is not None and context.setup is not None and bool(sites.names_in(context.setup))


# -- the adaption-prompt family on a model: checks, per-pass preparation, registration ---------------


def check_adaption_prompt(model, config) -> None:
    """Refuse an adaption prompt the model cannot take: an encoder-decoder, a config that does
    not fit (see :func:`check_adaption_prompt_config`), or a fused q/k/v projection whose key and
    value parts differ in size (Phi-3 with grouped-query attention).

    Example::

        >>> check_adaption_prompt(t5, AdaptionPromptConfig())   # raises: defined for decoder-only models
    """
    spec = model.__dict__["_adapters_spec"]
    if spec.is_encoder_decoder:
        raise AdapterConfigError(
            f"Llama-Adapter (adaption prompt) is defined for decoder-only models; {spec.name} is an "
            f"encoder-decoder. Use prefix tuning (it covers encoder, decoder and cross-attention) instead."
        )
    check_adaption_prompt_config(model, config)
    if not spec.fused_qkv_heads or spec.key is None:
        return
    layer = model.base_model.get_submodule(spec.layers)[0]
    ranges = fused_part_ranges(spec, spec.key, layer.get_submodule(spec.key), model.config)
    if len({size for _, size in ranges.values()}) > 1:
        raise AdapterConfigError(
            f"Llama-Adapter is not available for {spec.name} with grouped-query attention: the fused {spec.key} "
            f"has parts of different sizes ({', '.join(f'{k}: {size}' for k, (_, size) in ranges.items())}). "
            f"Use prefix tuning, LoRA or bottleneck adapters for this model."
        )


def prepare_adaption_prompts(model, context: ForwardContext, call) -> None:
    """Before a forward pass whose setup has an adaption prompt: the attention wrapper must run
    its contributors (and adjust attention outputs).

    Example::

        >>> prepare_adaption_prompts(model, context, call)     # run by the model's forward
    """
    if not call.entry and adaption_prompt_active(model, context):
        context.attention_adjusted = True
        use_adapter_attention(model)


def _add(model, name: str, config, device, dtype) -> bool:
    add_adaption_prompt(model, name, config, device, dtype)
    return True


# -- Llama-Adapter in PEFT's format (ADAPTION_PROMPT) ---------------------------------------------------
# PEFT keeps adapter_len, adapter_layers and target_modules (AdaptionPromptConfig uses the same names)
# and stores <attention>.adaption_prompt (1, adapter_len, d_model) and <attention>.adaption_gate (1,)
# per adapted layer; here they are <attention>.adaption_prompt.adaption_prompts.<name>.prompt / .gate.
# Exchanged for Llama and Mistral models only, where PEFT computes what this library does (see
# check_peft_adaption_prompt_model).
from .. import logging
from ..configuration.adaption_prompt import AdaptionPromptConfig
from .registry import PeftMapping

logger = logging.get_logger(__name__)

#: model types whose Llama-Adapter PEFT computes as this library does (PEFT's GPT-2 variant adds the
#: prompt's share after the output projection, without projecting it)
PEFT_ADAPTION_PROMPT_MODEL_TYPES = ("llama", "mistral")
_PEFT_ADAPTION_PROMPT_FIELDS = {"ADAPTION_PROMPT": (("adapter_len", "adapter_layers", "target_modules"), (), {})}


def check_peft_adaption_prompt_model(model) -> None:
    """Raise an AdapterConfigError unless PEFT's adaption prompt computes on ``model`` what ours does.

    Example::

        >>> check_peft_adaption_prompt_model(llama_model)
    """
    model_type = model.config.model_type
    if model_type not in PEFT_ADAPTION_PROMPT_MODEL_TYPES:
        reason = (
            "PEFT's GPT-2 variant adds the prompt's attention after the output projection without projecting it"
            if model_type == "gpt2"
            else "PEFT has no adaption prompt for it"
        )
        raise AdapterConfigError(
            f"Adaption prompts in PEFT's format are exchanged for {', '.join(PEFT_ADAPTION_PROMPT_MODEL_TYPES)} models only, "
            f"not {model_type!r}: {reason}. Use the AdapterHub-style format (format='adapterhub') instead."
        )
    if getattr(model.config, "attention_bias", False):
        logger.warning(
            "This model's o_proj has a bias: PEFT's adaption prompt adds it a second time (it projects the prompt's "
            "share with the whole o_proj), this library does not. Outputs differ from PEFT's by that bias."
        )


def adaption_prompt_config_from_peft(meta: dict, targeting: dict) -> AdaptionPromptConfig:
    """Our config for PEFT's ``ADAPTION_PROMPT`` config dict ``meta`` (the same field names;
    ``targeting`` is unused: PEFT's ``target_modules`` names the attention module).

    Example::

        >>> adaption_prompt_config_from_peft({"adapter_len": 10, "adapter_layers": 2, "target_modules": "self_attn"}, {})
    """
    return AdaptionPromptConfig(
        adapter_len=meta.get("adapter_len"), adapter_layers=meta.get("adapter_layers"), target_modules=meta.get("target_modules")
    )


def _adaption_prompt_key_from_peft(key: str, value: torch.Tensor, name: str):
    """PEFT's ``<attention>.adaption_prompt`` ``(1, n, d)`` / ``.adaption_gate``: on the attention
    module itself; ours on its ``adaption_prompt`` host."""
    if not key.endswith((".adaption_prompt", ".adaption_gate")):
        return None
    attention, param = key.rsplit(".", 1)
    if param == "adaption_prompt":
        return f"{attention}.adaption_prompt.adaption_prompts.{name}.prompt", value.reshape(value.shape[-2:])
    return f"{attention}.adaption_prompt.adaption_prompts.{name}.gate", value


def adaption_prompt_to_peft(model, name: str, config: AdaptionPromptConfig) -> tuple[dict, dict]:
    """``(fields, weights)`` of Llama-Adapter ``name`` in PEFT's ``ADAPTION_PROMPT`` layout:
    ``<attention>.adaption_prompt`` ``(1, n, d_model)`` and ``<attention>.adaption_gate`` ``(1,)``
    in each adapted layer, keyed relative to the wrapped model.

    Example::

        >>> fields, weights = adaption_prompt_to_peft(llama, "llama_adapter", llama.adapters_config.adapters["llama_adapter"])
    """
    spec = model.__dict__["_adapters_spec"]
    top_prefix = "" if model.base_model is model else model.base_model_prefix + "."
    layers = model.base_model.get_submodule(spec.layers)
    weights = {}
    for layer_idx, layer in enumerate(layers):
        host = layer.get_submodule(spec.attention)._modules.get("adaption_prompt")
        if host is None or name not in host.adaption_prompts:
            continue
        key = f"{top_prefix}{spec.layers}.{layer_idx}.{spec.attention}"
        weights[f"{key}.adaption_prompt"] = host.adaption_prompts[name].prompt.detach().unsqueeze(0)
        weights[f"{key}.adaption_gate"] = host.adaption_prompts[name].gate.detach()
    fields = {
        "adapter_len": config.adapter_len,
        "adapter_layers": config.adapter_layers if config.adapter_layers is not None else len(layers),
        "target_modules": spec.attention.rsplit(".", 1)[-1],
    }
    return fields, weights


ADAPTION_PROMPT_PEFT = PeftMapping(
    "ADAPTION_PROMPT", adaption_prompt_config_from_peft, fields=_PEFT_ADAPTION_PROMPT_FIELDS, shares_targeting=False,
    check_model=check_peft_adaption_prompt_model, convert_key=_adaption_prompt_key_from_peft, write=adaption_prompt_to_peft,
)


register(MethodFamily(
    name="adaption_prompt", title="Llama-Adapter (adaption prompt)", blocks=AdaptionPromptLayer.supported_blocks,
    add=_add, check=check_adaption_prompt, remove_unused=uninstall_adaption_prompt,
    installed=lambda model: SITES_KEY in model.base_model.__dict__, before_forward=prepare_adaption_prompts,
    enters_attention=True, interface_method="prefix_tuning", peft=ADAPTION_PROMPT_PEFT,
))
