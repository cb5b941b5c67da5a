"""Bad input raises the error class of its kind (docs/errors.rst), naming the bad value.

One representative case per module that raises for bad input: the public call with a bad
argument, config, name, setup or checkpoint must raise the specific subclass of
:class:`~adapters.errors.AdapterError` (``AdapterConfigError``, ``CompositionError``,
``AdapterLoadError``) with a message that names the bad value. A meta-test then reads the source
of ``adapters/`` and fails on any ``raise ValueError(`` / ``raise TypeError(`` / ``raise KeyError(``
outside the allowlist of internal sites below, so a new plain ValueError is caught in review.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import pytest
import torch
import transformers
from conftest import CONFIGS, make_inputs, patched

import adapters
from adapters import (
    AdaLoRAConfig,
    AdapterModelInterface,
    AdaptionPromptConfig,
    AutoAdapterModel,
    BatchSplit,
    CompacterConfig,
    Fuse,
    LoRAConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    ResidualHook,
    SeqBnConfig,
    Split,
)
from adapters.errors import AdapterConfigError, AdapterError, AdapterLoadError, CompositionError

# -- models, built once per module ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bert():
    """BERT with a bottleneck adapter 'bn' and LoRA adapters 'a', 'b' (same config)."""
    model = patched("bert")
    model.add_adapter("bn", "seq_bn")
    model.add_adapter("a", LoRAConfig(r=2))
    model.add_adapter("b", LoRAConfig(r=2))
    return model


@pytest.fixture(scope="module")
def bert_heads():
    torch.manual_seed(0)
    model = AutoAdapterModel.from_config(CONFIGS["bert"]()).eval()
    model.add_classification_head("cls2", num_labels=2)
    model.add_classification_head("cls", num_labels=2)
    model.active_head = "cls"
    return model


# BERT's modules as an AdapterModelInterface describes them
INTERFACE_FIELDS = dict(
    adapter_methods=["lora"], model_embeddings="embeddings", model_layers="encoder.layer", layer_self_attn="attention",
    layer_cross_attn=None, attn_q_proj="self.query", attn_k_proj="self.key", attn_v_proj="self.value",
    attn_o_proj="output.dense", layer_intermediate_proj="intermediate.dense", layer_output_proj="output.dense",
)


def _raises(kind: type, value: str, call) -> AdapterError:
    """Run ``call``; it must raise ``kind`` whose message contains ``value`` (the bad value, verbatim)."""
    with pytest.raises(AdapterError) as info:
        call()
    error = info.value
    assert type(error) is kind, f"{type(error).__name__} raised, expected {kind.__name__}: {error}"
    assert value in str(error), f"the message does not name {value!r}: {error}"
    return error


# -- merging/ --------------------------------------------------------------------------------------


def test_prune_density():
    from adapters.merging import prune

    _raises(AdapterConfigError, "-0.5", lambda: prune(torch.ones(4), -0.5))


def test_majority_sign_method():
    from adapters.merging import calculate_majority_sign_mask

    _raises(AdapterConfigError, "'mode'", lambda: calculate_majority_sign_mask(torch.ones(2, 3), "mode"))


def test_merge_and_unload_unknown_adapter(bert):
    _raises(AdapterConfigError, "'missing'", lambda: bert.merge_and_unload(adapter_names=["missing"]))


def test_merge_and_unload_bottleneck_adapter(bert):
    _raises(AdapterConfigError, "'bn'", lambda: bert.merge_and_unload(adapter_names=["bn"]))


def test_add_weighted_adapter_weight_count(bert):
    error = _raises(AdapterConfigError, "[1.0, 2.0]", lambda: bert.add_weighted_adapter(["a"], [1.0, 2.0], "ab"))
    assert "weights" in str(error)


def test_add_weighted_adapter_combination_type(bert):
    _raises(AdapterConfigError, "'nope'", lambda: bert.add_weighted_adapter(["a", "b"], [1, 1], "ab", combination_type="nope"))


def test_add_weighted_adapter_bottleneck_input(bert):
    _raises(AdapterConfigError, "'bn'", lambda: bert.add_weighted_adapter(["a", "bn"], [1, 1], "ab"))


def test_average_adapter_strategy(bert):
    _raises(AdapterConfigError, "'bogus'", lambda: bert.average_adapter("avg", ["a", "b"], combine_strategy="bogus"))


def test_average_adapter_svd_rank_without_svd(bert):
    _raises(AdapterConfigError, "svd_rank=3", lambda: bert.average_adapter("avg", ["a", "b"], svd_rank=3))


# -- model_mixin.py -------------------------------------------------------------------------------


def test_modules_to_save_matches_nothing(bert):
    _raises(AdapterConfigError, "['nope']", lambda: bert.add_adapter("m", LoRAConfig(modules_to_save=["nope"])))


def test_eject_prefix_tuning_of_lora(bert):
    _raises(AdapterConfigError, "'a'", lambda: bert.eject_prefix_tuning("a"))


def test_fusion_of_lora_adapters(bert):
    _raises(AdapterConfigError, "'a'", lambda: bert.add_adapter_fusion(Fuse("a", "b")))


# -- models/targeting.py, models/spec.py, models/attention.py, models/__init__.py ----------------


def test_target_modules_match_nothing(bert):
    _raises(AdapterConfigError, "'nowhere'", lambda: bert.add_adapter("t", LoRAConfig(target_modules=["nowhere"])))


def test_residual_hook_needs_norm_or_sublayer():
    _raises(
        AdapterConfigError, "norm=None",
        lambda: ResidualHook("output_adapter", host="output_adapters", residual_source="mlp"),
    )


def test_unsupported_model_type():
    model = transformers.MobileBertModel(
        transformers.MobileBertConfig(
            vocab_size=20, hidden_size=16, embedding_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=16, intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=1,
        )
    )
    _raises(AdapterConfigError, "'mobilebert'", lambda: adapters.init(model))


def test_unknown_attention_implementation():
    from adapters.hooks.attention import adapter_attention_name

    _raises(AdapterConfigError, "'no_such_attention'", lambda: adapter_attention_name("no_such_attention"))


def test_interface_base_model_not_an_attribute():
    interface = AdapterModelInterface(**dict(INTERFACE_FIELDS, base_model="nope"))
    model = transformers.BertModel(CONFIGS["bert"]())
    _raises(AdapterConfigError, "'nope'", lambda: adapters.init(model, interface=interface))


# -- interface.py ---------------------------------------------------------------------------------


def test_interface_unknown_method():
    _raises(
        AdapterConfigError, "['nope']",
        lambda: AdapterModelInterface(**dict(INTERFACE_FIELDS, adapter_methods=["nope"])),
    )


def test_interface_file_not_an_object(tmp_path):
    path = tmp_path / "adapter_interface.json"
    path.write_text("[1, 2]")
    _raises(AdapterLoadError, str(path), lambda: AdapterModelInterface.load(str(tmp_path)))


def test_interface_file_with_unknown_field(tmp_path):
    path = tmp_path / "adapter_interface.json"
    path.write_text(json.dumps({"interface": {"adapter_methods": ["lora"], "bogus_field": 1}}))
    error = _raises(AdapterLoadError, str(path), lambda: AdapterModelInterface.load(str(path)))
    assert "bogus_field" in str(error)


# -- heads ----------------------------------------------------------------------------------------


def test_delete_unknown_head(bert_heads):
    _raises(AdapterConfigError, "'missing'", lambda: bert_heads.delete_head("missing"))


def test_labels_of_unknown_head(bert_heads):
    _raises(AdapterConfigError, "'missing'", lambda: bert_heads.get_labels_dict("missing"))


def test_unknown_activation_function(bert_heads):
    _raises(AdapterConfigError, "'nope'", lambda: bert_heads.add_classification_head("x", activation_function="nope"))


def test_multiple_choice_head_without_choices(bert_heads):
    _raises(AdapterConfigError, "0", lambda: bert_heads.add_multiple_choice_head("mc", num_choices=0))


def test_qa_head_num_labels(bert_heads):
    _raises(AdapterConfigError, "3", lambda: bert_heads.add_qa_head("qa", num_labels=3))


def test_register_custom_head_over_builtin():
    _raises(AdapterConfigError, "'classification'", lambda: adapters.register_custom_head("classification", object))


def test_head_batch_split_that_does_not_fit_the_batch(bert_heads):
    bert_heads.active_head = BatchSplit("cls", "cls2", batch_sizes=[1, 1])
    try:
        inputs = make_inputs("bert", batch=3)
        _raises(CompositionError, "3 rows", lambda: bert_heads(**inputs))
    finally:
        bert_heads.active_head = "cls"


def test_image_head_pooling():
    torch.manual_seed(0)
    model = AutoAdapterModel.from_config(CONFIGS["vit"]())
    _raises(AdapterConfigError, "'max'", lambda: model.add_image_classification_head("img", pooling="max"))


def test_causal_lm_head_softcapping():
    torch.manual_seed(0)
    model = AutoAdapterModel.from_config(CONFIGS["gpt2"]())
    _raises(AdapterConfigError, "-1", lambda: model.add_causal_lm_head("lm", logit_softcapping=-1))


def test_modernbert_classification_pooling():
    torch.manual_seed(0)
    model = AutoAdapterModel.from_config(CONFIGS["modernbert"]())
    _raises(AdapterConfigError, "'max'", lambda: model.add_classification_head("c", pooling="max"))


# -- models/adapter_model.py ----------------------------------------------------------------------


def test_no_adapter_model_class():
    _raises(AdapterConfigError, "'mobilebert'", lambda: AutoAdapterModel.from_config(transformers.MobileBertConfig()))


# -- peft_format.py, peft_weight_transforms.py, loading.py ---------------------------------------


def test_peft_format_of_bottleneck_adapter(bert, tmp_path):
    _raises(AdapterConfigError, "'bn'", lambda: bert.save_adapter(str(tmp_path / "bn"), "bn", format="peft"))


def test_peft_adaption_prompt_model_type(bert):
    from adapters.peft_format import check_peft_adaption_prompt_model

    _raises(AdapterConfigError, "'bert'", lambda: check_peft_adaption_prompt_model(bert))


def test_peft_weight_transform_field(tmp_path):
    from adapters.peft_format import config_from_peft

    meta = {"peft_type": "LOHA", "r": 4, "alpha": 8, "target_modules": ["query"], "bias": "all"}
    _raises(AdapterConfigError, "'all'", lambda: config_from_peft(meta, file="a/adapter_config.json"))


def test_peft_checkpoint_that_does_not_fit_the_model(bert, tmp_path):
    """A PEFT LoHa file whose field this version refuses: an AdapterLoadError naming the file."""
    folder = tmp_path / "loha"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LOHA", "r": 4, "alpha": 8, "target_modules": ["query"], "use_effective_conv2d": True})
    )
    error = _raises(AdapterLoadError, str(folder / "adapter_config.json"), lambda: bert.load_adapter(str(folder)))
    assert "use_effective_conv2d" in str(error)


def test_save_unknown_fusion(bert, tmp_path):
    _raises(AdapterConfigError, "'a,b'", lambda: bert.save_adapter_fusion(str(tmp_path / "f"), "a,b"))


# -- methods --------------------------------------------------------------------------------------


def test_adalora_update_for_a_lora_adapter(bert):
    _raises(AdapterConfigError, "'a'", lambda: bert.update_and_allocate(0, adapter_name="a"))


def test_adalora_allocation_needs_total_step():
    from adapters.methods.adalora import RankAllocator

    _raises(AdapterConfigError, "total_step=None", lambda: RankAllocator(AdaLoRAConfig(), []))


def test_adaption_prompt_layers():
    model = patched("llama")
    _raises(AdapterConfigError, "adapter_layers=5", lambda: model.add_adapter("ap", AdaptionPromptConfig(adapter_layers=5)))


def test_prefix_tuning_in_split():
    model = patched("bert")
    model.add_adapter("p", PrefixTuningConfig(prefix_length=2))
    layer = next(m for m in model.modules() if type(m).__name__ == "PrefixTuningLayer")
    _raises(CompositionError, "Split[p]", lambda: layer.compose_split(Split("p", splits=[2]), None))


def test_prompt_tuning_without_tokens():
    model = patched("gpt2")
    model.add_adapter("pt", PromptTuningConfig(prompt_length=2), set_active=True)
    mask = torch.ones(1, 4, dtype=torch.long)
    error = _raises(AdapterConfigError, "input_ids", lambda: model(attention_mask=mask))
    assert "attention_mask" in str(error)


def test_phm_sizes():
    from adapters.methods.phm import PHMLayer

    _raises(AdapterConfigError, "phm_dim=4", lambda: PHMLayer(30, 6, "down", CompacterConfig(phm_dim=4)))


def test_ia3_input_scaling_on_output_slices():
    from adapters.methods.lora import _check_slices

    _raises(AdapterConfigError, "[(0, 4)]", lambda: _check_slices([(0, 4)], 8, scale_input=True))


def test_saved_modules_in_split():
    from adapters.methods.saved_modules import check_saved_module_setup

    setup = Split("a", "b", splits=[2, 2])
    _raises(CompositionError, "['a']", lambda: check_saved_module_setup(setup, {"a": {"classifier"}}))


def test_bottleneck_fuse_without_fusion_layer(bert):
    host = next(h for h in bert._adapter_hosts if h.method == "bottleneck")
    _raises(CompositionError, "'bn,x'", lambda: host.compose_fuse(Fuse("bn", "x"), None))


# -- configuration, embeddings, trainer, logging ---------------------------------------------------


def test_reduction_factor_mapping_without_default():
    _raises(AdapterConfigError, "layer 3", lambda: SeqBnConfig(reduction_factor={"0": 2}).reduction_factor_for(3))


def test_unknown_embedding(bert):
    _raises(AdapterConfigError, "'missing'", lambda: bert.set_active_embeddings("missing"))


def test_trainer_needs_an_adapters_model():
    from adapters import AdapterTrainer

    plain = transformers.BertModel(CONFIGS["bert"]())
    _raises(AdapterConfigError, "BertModel", lambda: AdapterTrainer(model=plain))


def test_trainer_checkpoint_not_a_folder(bert, tmp_path):
    from adapters.trainer import load_checkpoint_weights

    missing = str(tmp_path / "checkpoint-1")
    _raises(AdapterLoadError, missing, lambda: load_checkpoint_weights(bert, missing))


def test_trainer_checkpoint_without_adapters(bert, tmp_path):
    from adapters.trainer import load_checkpoint_weights

    _raises(AdapterLoadError, str(tmp_path), lambda: load_checkpoint_weights(bert, str(tmp_path)))


def test_logging_verbosity():
    _raises(AdapterConfigError, "'loud'", lambda: adapters.logging.set_verbosity("loud"))


# -- no new plain ValueError / TypeError / KeyError ------------------------------------------------

# Sites that keep a plain exception, each with the reason: internal invariants no input from the
# caller can reach (the setup, spec or caller was validated before), and one Mapping whose
# __getitem__ must raise KeyError. Keyed by file and a piece of the raise statement (its message).
ALLOWED = {
    ("heads/adapter_model.py", "raise KeyError(config_class)"):
        "ADAPTER_MODEL_MAPPING is a Mapping: a missing key must raise KeyError (``in`` and ``get`` rely on it)",
    ("heads/checkpoints.py", "got unexpected keyword argument"):
        "Python's own error for an unknown keyword argument, raised where ``**kwargs`` takes AdapterHub's extras",
    ("static_heads.py", "got unexpected keyword argument"):
        "Python's own error for an unknown keyword argument, raised where ``**kwargs`` takes AdapterHub's extras",
    ("heads/model_mixin.py", "The model's input embedding is not one of its modules"):
        "get_input_embeddings() always returns a module of the model (transformers' or the spec's)",
    ("hooks/engine.py", "Unknown composition block"):
        "prune_setup runs on validated setups, whose blocks are the six known kinds",
    ("hooks/engine.py", "contains no BatchSplit"):
        "_rows_seen is only called on nodes that _contains_batch_split said hold one",
    ("hooks/engine.py", "lies outside"):
        "row indices come from the BatchSplit's own sizes, which validate_composition checked",
    ("hooks/engine.py", '"empty block"'):
        "pruned blocks with no children are dropped by prune_setup before last() is called",
    ("hooks/engine.py", "Unknown block"):
        "compose dispatches validated, pruned setups: the six known block kinds only",
    ("methods/lora.py", "DoRA needs the base weight"):
        "every LoRA host passes its own weight; the argument exists for the module's constructor",
    ("methods/lora.py", "dense_factors is defined for LoRA"):
        "called only by the PEFT writer for 'add'-mode adapters",
    ("hooks/slices.py", "out_slices {out_slices!r} must be"):
        "out_slices are computed by targeting from the spec (fused_part_rows), never passed by the caller",
    ("hooks/slices.py", "must be non-overlapping, non-empty column ranges"):
        "the second out_slices check of check_slices: computed slices, as above",
    ("methods/adaption_prompt.py", "query heads cannot share"):
        "the prompt's key/value heads are the model's own, of which the query heads are a multiple",
    ("methods/saved_modules.py", "got no tensor input to split"):
        "a module with per-branch copies runs inside the model's forward, which always passes tensors",
    ("hooks/targeting.py", "interleaves its parts per head; use fused_part_rows"):
        "a programming error: callers use fused_part_rows for interleaved layouts",
    ("hooks/attention.py", "is not a tagged attention module"):
        "contributors are added by the methods right after tag_attention",
    ("heads/adapter_model.py", "raise KeyError(model_type)"):
        "Mapping.__getitem__ of the lazy AdapterModel class table: KeyError is the Mapping protocol",
}

_PLAIN_RAISE = re.compile(r"raise (ValueError|TypeError|KeyError)\(")


def _plain_raises() -> list[tuple[str, int, str]]:
    """``(path in adapters/, line number, the raise statement)`` for every plain raise."""
    root = pathlib.Path(adapters.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if _PLAIN_RAISE.search(line):
                statement, end = line.strip(), number
                while statement.count("(") > statement.count(")") and end < len(lines):  # continuation lines
                    statement += " " + lines[end].strip()
                    end += 1
                found.append((path.relative_to(root).as_posix(), number, statement))
    return found


def test_no_plain_value_or_type_errors_outside_the_allowlist():
    found = _plain_raises()
    unexpected = [
        f"adapters/{path}:{number}: {line}"
        for path, number, line in found
        if not any(path == file and piece in line for file, piece in ALLOWED)
    ]
    assert not unexpected, (
        "plain ValueError / TypeError / KeyError raised for what may be bad input; raise the matching class of "
        "adapters.errors (AdapterConfigError, CompositionError, AdapterLoadError, AdapterMergeError) naming the "
        "argument or file, the bad value and the valid form, or add an internal site to ALLOWED with the reason:\n  "
        + "\n  ".join(unexpected)
    )


def test_the_allowlist_has_no_stale_entries():
    found = _plain_raises()
    stale = [entry for entry in ALLOWED if not any(path == entry[0] and entry[1] in line for path, _, line in found)]
    assert not stale, f"ALLOWED entries that match no raise any more (remove them): {stale}"


def test_fusing_bottleneck_adapters_at_different_positions_is_refused(bert):
    """AdapterHub refuses it too: at the position only some of them occupy, the fusion would
    attend over a subset."""
    bert.add_adapter("after_ffn", config="seq_bn")
    bert.add_adapter("both", config="double_seq_bn")
    _raises(AdapterConfigError, "differ in mh_adapter", lambda: bert.add_adapter_fusion(["after_ffn", "both"]))
    assert not bert.adapters_config.fusions
