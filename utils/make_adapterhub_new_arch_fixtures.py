"""Write AdapterHub 1.3.0 fixtures for the two architectures whose cases do not fit the shared
matrix of utils/make_adapterhub_fixtures.py: transformers' ``EncoderDecoderModel`` (bert2bert; not
an ``AutoModel`` class, its outputs are logits) and DeBERTa v1 (AdapterHub's ``adapters.init``
changes its outputs before any adapter is added, so no case can reproduce; the fixture pins that).

Run it in the side venv with AdapterHub's library, like the shared generator (whose helpers it
uses: the same tiny configs, perturbation, saving and manifest entries)::

    HF_HUB_OFFLINE=1 /work/venvs/ah/bin/python utils/make_adapterhub_new_arch_fixtures.py

Writes ``tests/fixtures/adapterhub_new_archs/`` (read by tests/test_new_architectures.py): per
architecture the base model, the inputs, the cases' adapters with AdapterHub's outputs, and
``plain.safetensors`` — the base model's output (``plain``) and the output after AdapterHub's
``adapters.init`` with no adapter added (``after_init``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_adapterhub_fixtures as shared  # noqa: E402  (the shared generator's helpers)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "adapterhub_new_archs")


def _bert2bert_config(t):
    """A BERT encoder and a BERT decoder with cross-attention. Eager attention: with sdpa, AdapterHub's
    decoder aligns its causal mask wrongly over prefix keys (the defect H2 pins for BART)."""
    encoder = t.BertConfig(**shared._ENC, attn_implementation="eager")
    decoder = t.BertConfig(**shared._ENC, is_decoder=True, add_cross_attention=True, attn_implementation="eager")
    config = t.EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.vocab_size = 1, 0, 99
    return config


ARCHITECTURES = [
    shared.Architecture("bert2bert", "EncoderDecoderModel", _bert2bert_config, "seq2seq"),
    shared.Architecture("deberta", "DebertaModel", lambda t: t.DebertaConfig(
        **shared._ENC, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=16, pad_token_id=0),
        "text"),
]


def cases():
    """``(case, [(adapter name, config)], setup, options)``: the bottleneck positions (self- and
    cross-attention: ``mh_adapter``), LoRA on self- and cross-attention, prefix tuning (encoder, decoder
    and cross prefixes) and an invertible adapter."""
    from adapters import LoRAConfig, PrefixTuningConfig, SeqBnConfig, SeqBnInvConfig

    yield "seq_bn", [("a", SeqBnConfig())], "a", {}
    yield "mh_adapter", [("a", SeqBnConfig(mh_adapter=True, output_adapter=False))], "a", {}
    yield "lora", [("a", LoRAConfig(r=4, alpha=8, attn_matrices=["q", "k", "v"]))], "a", {}
    yield "prefix_tuning", [("a", PrefixTuningConfig(prefix_length=5, bottleneck_size=8))], "a", {"archs": ["bert2bert"]}
    yield "seq_bn_inv", [("a", SeqBnInvConfig())], "a", {"archs": ["bert2bert"]}


def _load_eager(transformers) -> None:
    """Make the shared generator's ``EncoderDecoderModel.from_pretrained`` load with eager attention
    (the saved config does not keep the choice)."""
    original = transformers.EncoderDecoderModel.from_pretrained.__func__
    transformers.EncoderDecoderModel.from_pretrained = classmethod(
        lambda cls, *args, **kwargs: original(cls, *args, **{"attn_implementation": "eager", **kwargs})
    )


def main() -> None:
    import adapters
    import transformers
    from safetensors.torch import save_file

    transformers.logging.set_verbosity_error()
    _load_eager(transformers)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    manifest = {"anchor": f"adapters {adapters.__version__}", "transformers": transformers.__version__, "cases": []}
    for architecture in ARCHITECTURES:
        arch_dir = os.path.join(OUT, architecture.name)
        config, base = shared.build_base(architecture, transformers)
        base.save_pretrained(os.path.join(arch_dir, "base"))
        inputs = shared.make_inputs(architecture, config)
        save_file(inputs, os.path.join(arch_dir, "inputs.safetensors"))
        with torch.no_grad():
            plain = shared.outputs_of(base(**inputs))
            adapters.init(base)
            after_init = shared.outputs_of(base(**inputs))
        save_file({**{f"plain_{k}": v for k, v in plain.items()}, **{f"after_init_{k}": v for k, v in after_init.items()}},
                  os.path.join(arch_dir, "plain.safetensors"))
        for case, adapter_list, setup, options in cases():
            if architecture.name not in options.get("archs", [architecture.name]):
                continue
            # safetensors cannot hold the tensors AdapterHub saves under several paths (prefix pools, invertible
            # adapters of an EncoderDecoderModel): those cases are written as AdapterHub's .bin
            safetensors = case not in ("prefix_tuning", "seq_bn_inv")
            entry = shared.run_case(architecture, arch_dir, inputs, case, adapter_list, setup, dict(options, safetensors=safetensors))
            manifest["cases"].append(entry)
        print(f"{architecture.name}: {sum(c['arch'] == architecture.name for c in manifest['cases'])} cases")
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
