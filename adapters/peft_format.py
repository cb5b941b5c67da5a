"""PEFT's checkpoint layout for the LoRA family (LoRA, rsLoRA, DoRA, (IA)³), Llama-Adapter and
prefix tuning, read and written.

A PEFT folder holds ``adapter_config.json`` (with ``peft_type``) and ``adapter_model.safetensors``
whose keys are the wrapped model's module paths behind ``base_model.model.`` with the adapter
name left out: ``...q_proj.lora_A.weight``, ``...q_proj.lora_B.weight``,
``...q_proj.lora_magnitude_vector`` (DoRA), ``...k_proj.ia3_l`` ((IA)³; shape ``(out, 1)``, or
``(1, in)`` for ``feedforward_modules``, whose input is scaled).

PEFT's config fields map onto :class:`~adapters.LoRAConfig` one to one (``lora_alpha`` ->
``alpha``, ``lora_dropout`` -> ``dropout``, ``target_modules``, ``exclude_modules``,
``layers_to_transform``, ``layers_pattern``, ``rank_pattern``, ``alpha_pattern``, ``use_rslora``,
``use_dora``, ``feedforward_modules``, ``modules_to_save``), and their values are checked as any
config's (a ``lora_alpha`` of NaN is refused). The other fields PEFT 0.21 defines are read by
kind (:data:`PEFT_FIELDS`): bookkeeping and initialisation settings (``task_type``,
``init_lora_weights``, ``loftq_config``, ...) are accepted with any value, since the weights come
from the file; a field this version does not implement (``layer_replication``, ``lora_bias``,
``trainable_token_indices``, ...) is accepted at PEFT's default and refused otherwise, with an
error naming it; a field PEFT 0.21 does not define (a newer PEFT's) is dropped with a warning
naming the file. Trained biases (``bias="all"`` / ``"lora_only"``) travel with the adapter as ``<module>.bias``
keys; the copies of ``modules_to_save`` as the module's own keys (``...classifier.weight``), which
become ``classifier.modules_to_save.<name>.weight`` here.

Llama-Adapter (``ADAPTION_PROMPT``): PEFT keeps ``adapter_len``, ``adapter_layers`` and
``target_modules`` (:class:`~adapters.AdaptionPromptConfig` uses the same names) and stores
``<attention>.adaption_prompt`` ``(1, adapter_len, d_model)`` and ``<attention>.adaption_gate``
``(1,)`` per adapted layer; here they are ``<attention>.adaption_prompt.adaption_prompts.<name>.
prompt`` / ``.gate``. Exchanged for Llama and Mistral models only, where PEFT computes what this
library does (see :func:`check_peft_adaption_prompt_model`).

Prefix tuning (``PREFIX_TUNING``): PEFT stores the prefix it feeds to the model as past keys/values,
``prompt_embeddings`` ``(P, L·2·token_dim)`` (an MLP reparameterisation already applied), with
``num_virtual_tokens``, ``num_layers``, ``num_attention_heads`` (key/value heads) and ``token_dim``
(heads × head size). Here it is a flat prefix with ``shift_positions`` (the real tokens are numbered
from ``P``). On an encoder-decoder (``num_transformer_submodules=2``) the cache is the decoder's:
only the decoder self-attention gets a prefix (``encoder_prefix=cross_prefix=False``), decoder
layer ``i`` the one PEFT stores for layer ``2i mod L`` (see :func:`prefix_from_peft`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Optional

import torch

from . import logging
from .configuration.adaption_prompt import AdaptionPromptConfig
from .configuration.base import AdapterConfig
from .configuration.lora import LoRAConfig
from .configuration.prefix import PrefixTuningConfig
from .configuration.validation import check_int, describe, did_you_mean
from .errors import AdapterConfigError
from .peft_weight_transforms import PEFT_TYPES, config_from_peft_meta, convert_peft_key, peft_weight_transform_checkpoint

__all__ = [
    "PEFT_WEIGHTS_NAME",
    "PEFT_LEGACY_WEIGHTS_NAME",
    "PEFT_FIELDS",
    "config_from_peft",
    "check_peft_fields",
    "state_from_peft",
    "peft_checkpoint",
    "check_peft_adaption_prompt_model",
    "prefix_from_peft",
]

PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_LEGACY_WEIGHTS_NAME = "adapter_model.bin"
_PREFIX = "base_model.model."
logger = logging.get_logger(__name__)

# -- PEFT 0.21's config fields, by what reading them needs ----------------------------------------------
# bookkeeping every PEFT config has: any value
_PEFT_COMMON = ("peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode")
_TARGETING = ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save")
# LoraConfig's fields (AdaLoraConfig inherits them): how the adapter was initialised or trained, not
# what it computes (the weights come from the file): any value
_LORA_ANY = (
    "init_lora_weights", "loftq_config", "eva_config", "corda_config", "lora_ga_config", "fan_in_fan_out", "megatron_core",
    "qalora_group_size", "runtime_config", "ensure_weight_tying",
    "velora_config",  # VeLoRA changes only the backward pass
)
# LoraConfig's fields this version does not implement, with PEFT's default (the only value read)
_LORA_UNIMPLEMENTED = {
    "lora_bias": False, "layer_replication": None, "use_qalora": False, "target_parameters": None, "megatron_config": None,
    "trainable_token_indices": None, "alora_invocation_tokens": None, "monteclora_config": None, "use_bdlora": None,
    "arrow_config": None, "kasa_config": None,
}
_LORA_READ = ("r", "lora_alpha", "lora_dropout", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora", "bias", *_TARGETING)
_LYCORIS_READ = ("r", "alpha", "rank_dropout", "module_dropout", "init_weights", "rank_pattern", "alpha_pattern", *_TARGETING)
#: peft_type -> (fields read into our config, fields read with any value, {unimplemented field: PEFT's
#: default, the only value read}); any other field is dropped with a warning
PEFT_FIELDS: dict[str, tuple[tuple, tuple, dict]] = {
    "LORA": (_LORA_READ, _LORA_ANY, _LORA_UNIMPLEMENTED),
    "ADALORA": (
        ("init_r", "target_r", "lora_alpha", "lora_dropout", "init_lora_weights", "tinit", "tfinal", "deltaT", "beta1",
         "beta2", "orth_reg_weight", "total_step", "rank_pattern", "bias", *_TARGETING),
        (*_LORA_ANY, "r", "use_rslora", "alpha_pattern"),  # PEFT's AdaLoRA does not read these
        {**_LORA_UNIMPLEMENTED, "use_dora": False},
    ),
    "IA3": (("feedforward_modules", "target_modules", "exclude_modules", "modules_to_save"), ("init_ia3_weights", "fan_in_fan_out"), {}),
    # PEFT's LoHa / LoKr have no "bias"; this library writes "none" for every weight transform
    "LOHA": (_LYCORIS_READ, (), {"use_effective_conv2d": False, "bias": "none"}),
    "LOKR": (
        (*_LYCORIS_READ, "decompose_both", "decompose_factor", "rank_dropout_scale"), (), {"use_effective_conv2d": False, "bias": "none"}
    ),
    "OFT": (
        ("r", "oft_block_size", "module_dropout", "init_weights", "coft", "eps", "block_share", "use_cayley_neumann",
         "num_cayley_neumann_terms", "bias", *_TARGETING),
        ("fan_in_fan_out",),
        {},
    ),
    "HRA": (("r", "apply_GS", "init_weights", "bias", *_TARGETING), (), {}),
    "PREFIX_TUNING": (
        ("num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers"),
        # the saved prompt_embeddings already went through a projection; the init does not matter
        ("prefix_projection", "encoder_hidden_size", "init_weights"),
        {"modules_to_save": None},
    ),
    "ADAPTION_PROMPT": (("adapter_len", "adapter_layers", "target_modules"), (), {}),
}
# our field -> PEFT's name, to name PEFT's field in an error
_PEFT_NAMES = {"alpha": "lora_alpha", "dropout": "lora_dropout", "prefix_length": "num_virtual_tokens"}


def _listify(value):
    return list(value) if isinstance(value, (list, tuple, set)) else value


def _is_peft_default(value, default) -> bool:
    """Whether a value read from JSON is PEFT's default (``None``, ``False``, ``[]`` and ``{}`` all
    mean "unset" for the unset-by-default fields; ``0`` is not ``False``)."""
    if default is None or default is False:
        return value is None or value is False or (isinstance(value, (list, dict)) and not value)
    return type(value) is type(default) and value == default


def check_peft_fields(meta: dict, file: Optional[str] = None) -> None:
    """Refuse a non-default value of a PEFT 0.21 field this version does not implement, and warn
    (naming ``file``) about fields PEFT 0.21 does not define.

    Raises:
        AdapterConfigError: an unknown ``peft_type``, or an unimplemented field that is set (the
            message names it and PEFT's default).

    Example::

        >>> check_peft_fields({"peft_type": "LORA", "r": 8, "layer_replication": [[0, 2]]}, "a/adapter_config.json")
        Traceback (most recent call last):
        adapters.errors.AdapterConfigError: a/adapter_config.json: PEFT field layer_replication=[[0, 2]] ...
    """
    label = file or "PEFT's adapter_config.json"
    peft_type = meta.get("peft_type")
    if peft_type not in PEFT_FIELDS:
        raise AdapterConfigError(
            f"{label}: PEFT method {peft_type!r} is not supported in this version ({', '.join(PEFT_FIELDS)} are)."
            f"{did_you_mean(peft_type, PEFT_FIELDS)}"
        )
    read, any_value, unimplemented = PEFT_FIELDS[peft_type]
    unknown = []
    for key, value in meta.items():
        if key in _PEFT_COMMON or key in read or key in any_value:
            continue
        if key in unimplemented:
            if not _is_peft_default(value, unimplemented[key]):
                raise AdapterConfigError(
                    f"{label}: PEFT field {key}={value!r} is not supported for {peft_type} in this version; only PEFT's "
                    f"default ({unimplemented[key]!r}) can be read. Load this adapter with PEFT."
                )
            continue
        unknown.append(key)
    if unknown:
        logger.warning(
            f"{label}: ignoring {', '.join(repr(k) for k in unknown)}, which PEFT 0.21's {peft_type} config does not "
            f"define (written by a newer PEFT?); the adapter is loaded without {'them' if len(unknown) > 1 else 'it'}."
        )


def config_from_peft(meta: dict, file: Optional[str] = None) -> AdapterConfig:
    """Our config equivalent to a PEFT ``adapter_config.json`` (a :class:`~adapters.LoRAConfig` for
    LoRA, DoRA, rsLoRA and (IA)³; the method's config for the others), its values checked.

    ``file`` (the JSON file's path) is named in warnings and errors. PEFT 0.21's fields are read
    as :data:`PEFT_FIELDS` says (see the module docstring); fields a newer PEFT added are dropped
    with a warning.

    Raises:
        AdapterConfigError: an unsupported ``peft_type``, a set field this version does not
            implement, or a bad value (``lora_alpha: NaN``); the message names the file and
            PEFT's field.

    Example::

        >>> config_from_peft({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]})
    """
    label = file or "PEFT's adapter_config.json"
    if not isinstance(meta, Mapping):
        raise AdapterConfigError(f"{label} must hold a JSON object (a dict), not {describe(meta)}.")
    check_peft_fields(meta, file)
    try:
        return _config_from_peft(meta)
    except ValueError as error:  # our configs' AdapterConfigError, the weight transforms' refusals
        field = getattr(error, "field", None)
        theirs = _PEFT_NAMES.get(field, field) if meta.get("peft_type") in ("LORA", "PREFIX_TUNING") else field
        named = f"PEFT field {theirs!r}: " if theirs is not None and theirs != field and theirs in meta else ""
        raise AdapterConfigError(f"{label}: {named}{error}") from error


def _config_from_peft(meta: dict) -> AdapterConfig:
    peft_type = meta.get("peft_type")
    if peft_type == "PREFIX_TUNING":
        return _prefix_config_from_peft(meta)
    if peft_type == "ADAPTION_PROMPT":
        return AdaptionPromptConfig(
            adapter_len=meta.get("adapter_len"), adapter_layers=meta.get("adapter_layers"), target_modules=meta.get("target_modules")
        )
    common = dict(
        target_modules=_listify(meta.get("target_modules")),
        exclude_modules=_listify(meta.get("exclude_modules")),
        layers_to_transform=_listify(meta.get("layers_to_transform")),
        layers_pattern=meta.get("layers_pattern") if not isinstance(meta.get("layers_pattern"), list) else meta["layers_pattern"][0],
        modules_to_save=_listify(meta.get("modules_to_save")) or None,
        selfattn_lora=False,
    )
    if peft_type == "LORA":
        return LoRAConfig(
            r=meta.get("r", 8),
            alpha=meta.get("lora_alpha", 8),
            dropout=meta.get("lora_dropout") or 0.0,
            rank_pattern=meta.get("rank_pattern") or {},
            alpha_pattern=meta.get("alpha_pattern") or {},
            use_rslora=meta.get("use_rslora") or False,
            use_dora=meta.get("use_dora") or False,
            bias=meta.get("bias") or "none",
            **common,
        )
    if peft_type in PEFT_TYPES:  # LoHa, LoKr, OFT, HRA, AdaLoRA
        return config_from_peft_meta(meta, common)
    if peft_type == "IA3":
        return LoRAConfig(
            r=1, alpha=1, composition_mode="scale", init_weights="ia3",
            feedforward_modules=_listify(meta.get("feedforward_modules")), **common,
        )
    raise AdapterConfigError(
        f"PEFT method {peft_type!r} is not supported in this version (LORA, IA3, PREFIX_TUNING, ADAPTION_PROMPT, "
        f"{', '.join(PEFT_TYPES)} are)."
    )


def _peft_submodules(meta: dict) -> int:
    """PEFT's ``num_transformer_submodules`` (unset: 2 for ``SEQ_2_SEQ_LM``, else 1, as PEFT decides)."""
    submodules = meta.get("num_transformer_submodules")
    if submodules is None:
        submodules = 2 if meta.get("task_type") == "SEQ_2_SEQ_LM" else 1
    return int(submodules)


def _prefix_config_from_peft(meta: dict) -> PrefixTuningConfig:
    """PEFT saves a prefix as the flat prompt it produces (``prompt_embeddings``, ``(P, L·2·kv_dim)``,
    the MLP already applied), fed to the model as past keys/values: positions shift by ``P``. On an
    encoder-decoder (``num_transformer_submodules=2``) that cache is the decoder's: only the
    decoder self-attention gets a prefix (see :func:`prefix_from_peft`)."""
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
    from .methods.prefix_tuning import prefix_shapes

    spec = model.__dict__["_adapters_spec"]
    submodules = _peft_submodules(meta)
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


_WEIGHT_TRANSFORMS = tuple(PEFT_TYPES.values())
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<param>lora_A\.weight|lora_B\.weight|lora_magnitude_vector(\.weight)?|ia3_l)$")


def state_from_peft(state: dict, name: str, saved_modules=()) -> dict:
    """PEFT weight keys -> this library's (``<module>.loras.<name>.<param>``), relative to the
    wrapped model; (IA)³ input-scaling vectors are transposed to ``(in, 1)``; keys under one of
    the module paths ``saved_modules`` (``modules_to_save``) move to
    ``<module>.modules_to_save.<name>.<param>``."""
    converted = {}
    by_length = sorted(saved_modules, key=len)
    for key, value in state.items():
        if key == "prompt_embeddings":  # prefix tuning: the flat prefix of every layer
            converted[f"prefix_tuning.prefix_tunings.{name}.self_prefix.control_trans"] = value.reshape(-1)
            continue
        key = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        if key.endswith((".adaption_prompt", ".adaption_gate")):  # Llama-Adapter: on the attention module itself
            attention, param = key.rsplit(".", 1)
            ours = "prompt" if param == "adaption_prompt" else "gate"
            converted[f"{attention}.adaption_prompt.adaption_prompts.{name}.{ours}"] = value.reshape(value.shape[-2:]) if ours == "prompt" else value
            continue
        owner = next((p for p in by_length if key.startswith(p + ".")), None)
        if owner is not None:
            converted[f"{owner}.modules_to_save.{name}.{key[len(owner) + 1:]}"] = value
            continue
        ours = convert_peft_key(key, name)  # LoHa, LoKr, OFT, HRA, AdaLoRA
        if ours is not None:
            converted[ours] = value
            continue
        key = re.sub(r"\.(lora_A|lora_B|lora_magnitude_vector|ia3_l)\.default(\.|$)", r".\1\2", key)
        match = _PEFT_KEY.match(key)
        if not match:
            converted[key] = value  # reported as unexpected by the loader
            continue
        param = match.group("param").split(".")[0]
        ours = {"lora_A": "lora_A", "lora_B": "lora_B", "lora_magnitude_vector": "lora_magnitude", "ia3_l": "lora_B"}[param]
        if param == "ia3_l" and value.shape[0] == 1 and value.dim() == 2:
            value = value.t().contiguous()
        converted[f"{match.group('module')}.loras.{name}.{ours}"] = value
    return converted


def peft_checkpoint(model, name: str) -> tuple[dict, dict]:
    """``(adapter_config, weights)`` in PEFT's layout for LoRA-family adapter ``name``.

    Module lists are written as exact module paths, and per-module ranks / alphas as escaped
    patterns, so PEFT rebuilds exactly the modules this adapter has.

    Example::

        >>> config, weights = peft_checkpoint(model, "lora")
    """
    config = model.adapters_config.adapters[name]
    if config.architecture == "adaption_prompt":
        return _adaption_prompt_checkpoint(model, name, config)
    if config.architecture == "prefix_tuning":
        return _prefix_checkpoint(model, name, config)
    transforms = [p for p in config.configs_by_architecture() if p.architecture in _WEIGHT_TRANSFORMS]
    if len(transforms) == 1 and len(config.configs_by_architecture()) == 1:
        return peft_weight_transform_checkpoint(model, name, transforms[0])
    parts = [p for p in config.configs_by_architecture() if p.architecture == "lora"]
    if len(parts) != 1 or len(config.configs_by_architecture()) != 1:
        raise AdapterConfigError(
            f"Adapter {name!r} is not a single LoRA-family, weight-transform, prefix-tuning or Llama-Adapter adapter; "
            f"only those can be written in PEFT's format."
        )
    part = parts[0]
    if part.use_gating:
        raise AdapterConfigError(f"Adapter {name!r} is gated; PEFT has no gated LoRA, so it cannot be written in PEFT's format.")
    top_prefix = "" if model.base_model is model else model.base_model_prefix + "."
    paths = {id(m): top_prefix + p for p, m in model.base_model.named_modules()}
    hosts = [h for h in model._adapter_hosts if h.method == "lora" and name in h.loras]
    targets, feedforward, ranks, alphas, weights = [], [], {}, {}, {}
    for host in hosts:
        path, lora = paths[id(host)], host.loras[name]
        targets.append(path)
        key = _PREFIX + path
        if part.composition_mode == "scale":
            vector = lora.lora_B.detach()
            if lora.out_index is not None:  # some parts of a fused projection: 1 on the others
                vector = vector.new_ones(lora.out_features, 1).index_copy(0, lora.out_index, vector)
            if lora.scale_input:
                feedforward.append(path)
                vector = vector.t()
            weights[f"{key}.ia3_l"] = vector.contiguous()
            continue
        lora_A, lora_B = lora.dense_factors()  # some parts of a fused projection: rank g·r over all of it
        weights[f"{key}.lora_A.weight"] = lora_A.detach()
        weights[f"{key}.lora_B.weight"] = lora_B.detach()
        if lora.use_dora:
            magnitude = lora.lora_magnitude.detach()
            if lora.out_index is not None:  # rows it does not cover: their own norm, i.e. scale 1
                norms = torch.linalg.norm(host.weight_out_in.detach().float(), dim=1).to(magnitude.dtype)
                magnitude = norms.index_copy(0, lora.out_index, magnitude)
            weights[f"{key}.lora_magnitude_vector"] = magnitude
        rank = lora_A.shape[0]
        if rank != part.r:
            ranks[re.escape(path)] = rank
        alpha = lora.scaling * (rank ** 0.5 if part.use_rslora else rank)
        if abs(alpha - part.alpha) > 1e-9:
            alphas[re.escape(path)] = alpha
    for path, bias in model._bias_parameters(name).items():
        weights[_PREFIX + top_prefix + path] = bias.detach()
    saved = [h for h in model._adapter_hosts if h.method == "modules_to_save" and name in h.modules_to_save]
    for host in saved:  # PEFT stores a copy under the module's own path
        for key, value in host.modules_to_save[name].state_dict().items():
            weights[f"{_PREFIX}{host.location}.{key}"] = value.detach()
    fan_in_fan_out = any(host.fan_in_fan_out for host in hosts)  # transformers' Conv1D (GPT-2)
    meta = {
        "peft_type": "IA3" if part.composition_mode == "scale" else "LORA",
        "target_modules": targets,
        "base_model_name_or_path": getattr(model.config, "name_or_path", None) or None,
        "inference_mode": True,
        "task_type": None,
        "modules_to_save": [h.location for h in saved] or None,
    }
    if part.composition_mode == "scale":
        meta.update(feedforward_modules=feedforward, init_ia3_weights=True, fan_in_fan_out=fan_in_fan_out)
    else:
        meta.update(
            r=part.r, lora_alpha=part.alpha, lora_dropout=part.dropout, bias=part.bias, use_rslora=part.use_rslora,
            use_dora=part.use_dora, rank_pattern=ranks, alpha_pattern=alphas, fan_in_fan_out=fan_in_fan_out,
            init_lora_weights=True,
        )
    return meta, {k: v.detach().cpu().contiguous() for k, v in weights.items()}


# model types whose Llama-Adapter PEFT computes as this library does (PEFT's GPT-2 variant adds the
# prompt's share after the output projection, without projecting it)
PEFT_ADAPTION_PROMPT_MODEL_TYPES = ("llama", "mistral")


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


def _adaption_prompt_checkpoint(model, name: str, config) -> tuple[dict, dict]:
    """PEFT's layout for Llama-Adapter: ``<attention>.adaption_prompt`` ``(1, n, d_model)`` and
    ``<attention>.adaption_gate`` ``(1,)`` in each adapted layer."""
    check_peft_adaption_prompt_model(model)
    spec = model.__dict__["_adapters_spec"]
    top_prefix = "" if model.base_model is model else model.base_model_prefix + "."
    layers = model.base_model.get_submodule(spec.layers)
    weights = {}
    for layer_idx, layer in enumerate(layers):
        host = layer.get_submodule(spec.attention)._modules.get("adaption_prompt")
        if host is None or name not in host.adaption_prompts:
            continue
        key = f"{_PREFIX}{top_prefix}{spec.layers}.{layer_idx}.{spec.attention}"
        weights[f"{key}.adaption_prompt"] = host.adaption_prompts[name].prompt.detach().unsqueeze(0)
        weights[f"{key}.adaption_gate"] = host.adaption_prompts[name].gate.detach()
    meta = {
        "peft_type": "ADAPTION_PROMPT",
        "adapter_len": config.adapter_len,
        "adapter_layers": config.adapter_layers if config.adapter_layers is not None else len(layers),
        "target_modules": spec.attention.rsplit(".", 1)[-1],
        "base_model_name_or_path": getattr(model.config, "name_or_path", None) or None,
        "inference_mode": True,
        "task_type": None,
    }
    return meta, {k: v.cpu().contiguous() for k, v in weights.items()}


def _peft_task_type(model) -> str:
    """The PEFT ``task_type`` whose model class feeds the prefix to ``model`` as it runs here:
    ``SEQ_2_SEQ_LM`` (encoder-decoders), ``CAUSAL_LM`` (models that generate), else
    ``FEATURE_EXTRACTION`` (passes the prefix to any other model, heads included, untouched;
    PEFT's ``SEQ_CLS`` would also expect a trained copy of the classifier)."""
    if model.__dict__["_adapters_spec"].is_encoder_decoder:
        return "SEQ_2_SEQ_LM"
    return "CAUSAL_LM" if model.can_generate() else "FEATURE_EXTRACTION"


def _prefix_checkpoint(model, name: str, config: PrefixTuningConfig) -> tuple[dict, dict]:
    """PEFT's layout for a prefix: ``prompt_embeddings`` ``(P, L·2·H·D)``, the flat prefix of every
    layer (an MLP reparameterisation written as the prefix it produces), with the config PEFT needs
    to rebuild it. PEFT feeds it to the model as past keys/values, so only prefixes that compute the
    same are written: ungated, in every layer, with ``shift_positions``, and on an encoder-decoder in
    the decoder's self-attention only."""
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
    group = model.base_model.prefix_tuning.prefix_tunings[name]
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
    meta = {
        "peft_type": "PREFIX_TUNING",
        "task_type": _peft_task_type(model),
        "num_virtual_tokens": length,
        "num_layers": peft_layers,
        "token_dim": token_dim,
        "num_attention_heads": shape.n_heads,
        "encoder_hidden_size": token_dim,
        "num_transformer_submodules": 2 if spec.is_encoder_decoder else 1,
        "prefix_projection": False,
        "base_model_name_or_path": getattr(model.config, "name_or_path", None) or None,
        "inference_mode": True,
    }
    return meta, {"prompt_embeddings": ours.reshape(length, -1).cpu().contiguous()}


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
