"""PEFT's checkpoint layout for LoHa, LoKr, OFT, HRA and AdaLoRA, read and written.

Config: PEFT's ``peft_type`` (``LOHA``, ``LOKR``, ``OFT``, ``HRA``, ``ADALORA``) selects the
config class; the fields share PEFT's names. Weights: PEFT's keys are the wrapped model's module
paths behind ``base_model.model.`` with the parameter names ``hada_w1_a`` … (LoHa), ``lokr_w1`` …
(LoKr), ``oft_R.weight`` (OFT), ``hra_u`` (HRA), ``lora_A`` / ``lora_B`` / ``lora_E`` (AdaLoRA,
without the ``.weight`` suffix of LoRA's); ours are ``<module>.loras.<name>.<parameter>`` with
the same parameter names (``oft_R`` for OFT).

PEFT applies these methods to ``nn.Linear`` only (AdaLoRA also to transformers' ``Conv1D``), so
an adapter on GPT-2's ``Conv1D`` layers or on some parts of a fused projection cannot be written
for PEFT except for AdaLoRA on whole modules; writing such an adapter raises an error that says so.
"""

from __future__ import annotations

import re

from .configuration.weight_transforms import AdaLoRAConfig, HRAConfig, LoHaConfig, LoKrConfig, OFTConfig
from .errors import AdapterConfigError

__all__ = ["PEFT_TYPES", "config_from_peft_meta", "convert_peft_key", "peft_weight_transform_checkpoint"]

PEFT_TYPES = {"LOHA": "loha", "LOKR": "lokr", "OFT": "oft", "HRA": "hra", "ADALORA": "adalora"}
_ARCHITECTURE_TO_PEFT = {v: k for k, v in PEFT_TYPES.items()}
_PARAMS = (
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b",
    "oft_R", "hra_u", "lora_E",
)
# PEFT key -> (module path, our parameter name); AdaLoRA's A / B have no ".weight" suffix
_KEY = re.compile(rf"^(?P<module>.+)\.(?P<param>{'|'.join(_PARAMS)}|lora_A|lora_B)(\.default)?(?P<weight>\.weight)?$")
_PREFIX = "base_model.model."


def config_from_peft_meta(meta: dict, targeting: dict):
    """Our config for a PEFT ``adapter_config.json`` of a weight-transform method; ``targeting``
    holds the shared targeting fields already read (``target_modules`` …).

    Example::

        >>> config_from_peft_meta({"peft_type": "LOHA", "r": 4, "alpha": 8}, {"target_modules": ["query"]})
    """
    peft_type = meta["peft_type"]
    if meta.get("bias", "none") not in ("none", None):
        raise AdapterConfigError(f"PEFT field bias={meta['bias']!r} is not supported for {peft_type} in this version (only 'none').")
    if meta.get("use_effective_conv2d"):
        raise AdapterConfigError("PEFT field use_effective_conv2d=True applies to convolutions, which this version does not adapt.")
    if peft_type in ("LOHA", "LOKR"):
        fields = dict(
            r=meta.get("r", 8), alpha=meta.get("alpha", 8), rank_dropout=meta.get("rank_dropout") or 0.0,
            module_dropout=meta.get("module_dropout") or 0.0, init_weights=meta.get("init_weights", True),
            rank_pattern=meta.get("rank_pattern") or {}, alpha_pattern=meta.get("alpha_pattern") or {},
        )
        if peft_type == "LOHA":
            return LoHaConfig(**fields, **targeting)
        return LoKrConfig(
            **fields, decompose_both=bool(meta.get("decompose_both")), decompose_factor=meta.get("decompose_factor", -1),
            rank_dropout_scale=bool(meta.get("rank_dropout_scale")), **targeting,
        )
    if peft_type == "OFT":
        if "oft_block_size" not in meta:
            raise AdapterConfigError("This OFT checkpoint predates PEFT 0.14 (no oft_block_size); retrain it with a newer PEFT.")
        return OFTConfig(
            r=meta.get("r", 0), oft_block_size=meta.get("oft_block_size", 32), module_dropout=meta.get("module_dropout") or 0.0,
            coft=bool(meta.get("coft")), eps=meta.get("eps", 6e-5), block_share=bool(meta.get("block_share")),
            use_cayley_neumann=meta.get("use_cayley_neumann", True), num_cayley_neumann_terms=meta.get("num_cayley_neumann_terms", 5),
            init_weights=meta.get("init_weights", True), **targeting,
        )
    if peft_type == "HRA":
        return HRAConfig(r=meta.get("r", 8), apply_GS=bool(meta.get("apply_GS")), init_weights=meta.get("init_weights", True), **targeting)
    if peft_type == "ADALORA":
        return AdaLoRAConfig(
            init_r=meta.get("init_r", 12), target_r=meta.get("target_r", 8), lora_alpha=meta.get("lora_alpha", 8),
            lora_dropout=meta.get("lora_dropout") or 0.0, init_lora_weights=bool(meta.get("init_lora_weights", True)),
            tinit=meta.get("tinit", 0), tfinal=meta.get("tfinal", 0), deltaT=meta.get("deltaT", 1),
            beta1=meta.get("beta1", 0.85), beta2=meta.get("beta2", 0.85), orth_reg_weight=meta.get("orth_reg_weight", 0.5),
            total_step=meta.get("total_step"), rank_pattern=meta.get("rank_pattern"), **targeting,
        )
    raise AdapterConfigError(f"PEFT method {peft_type!r} is not a weight-transform method ({', '.join(PEFT_TYPES)} are).")


def convert_peft_key(key: str, name: str):
    """``(our key, transpose?)`` for a PEFT weight key of these methods, or None if it is not one.

    Example::

        >>> convert_peft_key("encoder.layer.0.attention.self.query.hada_w1_a", "a")
        'encoder.layer.0.attention.self.query.loras.a.hada_w1_a'
    """
    match = _KEY.match(key)
    if match is None:
        return None
    param = match.group("param")
    if param in ("lora_A", "lora_B") and match.group("weight"):
        return None  # LoRA's keys (lora_A.weight): not ours
    if match.group("weight") and param != "oft_R":
        return None
    return f"{match.group('module')}.loras.{name}.{param}"


def peft_weight_transform_checkpoint(model, name: str, part) -> tuple[dict, dict]:
    """``(adapter_config, weights)`` in PEFT's layout for weight-transform adapter ``name``.

    Raises:
        AdapterConfigError: the adapter sits where PEFT cannot load it (Conv1D layers for LoHa, LoKr, OFT
            and HRA; some parts of a fused projection).

    Example::

        >>> meta, weights = peft_weight_transform_checkpoint(model, "loha", model.adapters_config.adapters["loha"])
    """
    top_prefix = "" if model.base_model is model else model.base_model_prefix + "."
    paths = {id(m): top_prefix + p for p, m in model.base_model.named_modules()}
    hosts = [h for h in model._adapter_hosts if h.method == "lora" and name in h.loras]
    targets, weights = [], {}
    method = part.architecture
    for host in hosts:
        adapter, path = host.loras[name], paths[id(host)]
        if adapter.out_index is not None:
            raise AdapterConfigError(
                f"Adapter {name!r} covers only some parts of the fused projection {path!r}; PEFT adapts whole modules, "
                f"so it cannot be written in PEFT's format. Target whole modules (target_modules=[...]) instead."
            )
        if host.fan_in_fan_out and method != "adalora":
            raise AdapterConfigError(
                f"Adapter {name!r} adapts the Conv1D layer {path!r} (GPT-2); PEFT's {_ARCHITECTURE_TO_PEFT[method]} "
                f"supports nn.Linear layers only, so it cannot be written in PEFT's format."
            )
        targets.append(path)
        for param_name, param in adapter.named_parameters(recurse=False):
            key = f"{_PREFIX}{path}.{param_name}" + (".weight" if param_name == "oft_R" else "")
            weights[key] = param.detach()
    saved = [h for h in model._adapter_hosts if h.method == "modules_to_save" and name in h.modules_to_save]
    for host in saved:  # modules_to_save: PEFT stores the copy under the module's own path
        for key, value in host.modules_to_save[name].state_dict().items():
            weights[f"{_PREFIX}{host.location}.{key}"] = value.detach()
    fields = {
        f: getattr(part, f) for f in (
            "r", "alpha", "rank_dropout", "module_dropout", "init_weights", "decompose_both", "decompose_factor",
            "rank_dropout_scale", "oft_block_size", "coft", "eps", "block_share", "use_cayley_neumann",
            "num_cayley_neumann_terms", "apply_GS", "init_r", "target_r", "lora_alpha", "lora_dropout",
            "init_lora_weights", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight", "total_step",
        ) if hasattr(part, f)
    }
    for pattern_field in ("rank_pattern", "alpha_pattern"):
        if method in ("loha", "lokr"):
            fields[pattern_field] = dict(getattr(part, pattern_field))
    if method == "oft":  # PEFT wants exactly one of the two non-zero; write the sizes actually used
        blocks = {host.loras[name].r for host in hosts}
        sizes = {host.loras[name].block_size for host in hosts}
        if len(sizes) == 1:
            fields.update(r=0, oft_block_size=sizes.pop())
        elif len(blocks) == 1:
            fields.update(r=blocks.pop(), oft_block_size=0)
    if method == "adalora":
        fields["total_step"] = part.total_step or 1  # PEFT refuses None; only training uses it
        fields["tinit"], fields["tfinal"] = (part.tinit, part.tfinal) if part.total_step else (0, 0)
        fields["rank_pattern"] = None
        fields["fan_in_fan_out"] = any(host.fan_in_fan_out for host in hosts)
    meta = {
        "peft_type": _ARCHITECTURE_TO_PEFT[method],
        "target_modules": targets,
        "base_model_name_or_path": getattr(model.config, "name_or_path", None) or None,
        "inference_mode": True,
        "task_type": None,
        "modules_to_save": [h.location for h in saved] or None,
        "bias": "none",
        **fields,
    }
    return meta, {k: v.cpu().contiguous() for k, v in weights.items()}
