"""Where this library's API departs from AdapterHub 1.3.0's: the two tables
``tests/test_adapterhub_api.py`` checks against ``tests/fixtures/adapterhub_api.json`` and
``utils/adapterhub_api_page.py`` renders into ``docs/adapterhub_api.rst``.

Keys name a recorded AdapterHub name: ``"module:Name"`` for an export (a bare ``"Name"`` covers it
in every module that exports it), ``"Class.member"`` for a member of one of AdapterHub's classes,
and, in :data:`ABSENT` only, ``"<name>(param)"`` for one parameter of a signature that this library
does not accept (yet). A name is in at most one table; the test fails when an entry is no longer
true (an "absent" name that exists now, a "difference" that has become compatible), so remove
entries as the API catches up, then rerun ``python utils/adapterhub_api_page.py``.

Example::

    >>> DIFFERENCES["ForwardContext.wrap"]
    "AdapterHub's per-forward context plumbing; ..."
"""

from __future__ import annotations


def _each(reason: str, *keys: str) -> dict:
    return {key: reason for key in keys}


#: the class here that stands in for each AdapterHub class whose members are recorded: "init:X" =
#: transformers' class X (a tiny BERT) after ``adapters.init``, "new:X" = this library's class X
#: instantiated (both swap in the adapter mixin), "module.Name" = that class; any other recorded
#: class is looked up under its own name in ``adapters``
ROLES = {
    "ModelAdaptersMixin": "init:BertModel",
    "ModelBaseAdaptersMixin": "init:BertModel",
    "EmbeddingAdaptersMixin": "init:BertModel",
    "InvertibleAdaptersMixin": "init:BertModel",
    "ModelWithHeadsAdaptersMixin": "init:BertForSequenceClassification",
    "ModelWithFlexibleHeadsAdaptersMixin": "new:BertAdapterModel",
    "BertAdapterModel": "new:BertAdapterModel",
    "AdapterCompositionBlock": "adapters.composition.AdapterCompositionBlock",
    "PredictionHead": "adapters.heads.PredictionHead",
}

_ISSUE_API = "issue 23, API to add"
_TRIVIAL = "trivially addable"

#: AdapterHub names (or parameters) this library does not have yet: why, and what adds them
ABSENT = {
    # -- top-level exports the suite imports at module level (one missing name fails a whole test file)
    "ADAPTER_MODEL_MAPPING": f"{_ISSUE_API}: AdapterModel class per config class; the suite's flex-head tests gate on it",
    "load_model": f"{_ISSUE_API}: AdapterHub's plug-in loader (``adapters.wrappers.load_model``); full-model load tests use it",
    "adapters.wrappers:init": f"{_ISSUE_API}: the ``adapters.wrappers`` module (here ``init`` is ``adapters.init``)",
    "init_adapters_config": "AdapterHub's helper that attaches an empty adapters config to a model config; comes with "
    "``adapters.wrappers`` (issue 23)",
    "AdapterArguments": f"{_ISSUE_API}: training-script arguments",
    "setup_adapter_training": f"{_ISSUE_API}: training-script helper",
    "Seq2SeqAdapterTrainer": f"{_ISSUE_API}: AdapterTrainer for generation (transformers' Seq2SeqTrainer)",
    "BeitAdapterModel": "issue 23, architectures: BEiT",
    "BertGenerationAdapterModel": "issue 23, architectures: bert-generation",
    "DebertaAdapterModel": "issue 23, architectures: DeBERTa (v1)",
    "PLBartAdapterModel": "issue 23, architectures: PLBART",
    "XmodAdapterModel": "issue 23, architectures: X-MOD",
    "adapters:ModelWithHeadsAdaptersMixin": "no separate class: transformers' own head models get ModelAdaptersMixin; a marker "
    "class for the suite's isinstance checks is needed (issue 23, static heads)",
    "adapters:InvertibleAdaptersMixin": "invertible adapters are a method family here; the suite skips its invertible-adapter tests "
    "unless the base model is an instance of this class, so a marker class is needed (issue 23, invertible adapters)",
    "adapters:InvertibleAdaptersWrapperMixin": "as InvertibleAdaptersMixin (issue 23, invertible adapters)",
    **_each(
        f"exported from ``adapters.heads`` here; the top-level re-export is {_TRIVIAL}",
        "adapters:BertStyleMaskedLMHead", "adapters:CausalLMHead", "adapters:ClassificationHead",
        "adapters:MultiLabelClassificationHead", "adapters:MultipleChoiceHead", "adapters:QuestionAnsweringHead",
        "adapters:Seq2SeqLMHead", "adapters:TaggingHead",
    ),
    **_each(
        "AdapterHub's biaffine dependency-parsing head is not implemented (no issue part plans it yet)",
        "BiaffineParsingHead", "DependencyParsingOutput", "adapters.heads:Biaffine",
        "ModelWithFlexibleHeadsAdaptersMixin.add_dependency_parsing_head",
    ),
    "adapters.methods.lora:LoRALayer": "AdapterHub's LoRA layer class; LoRA modules here are ``adapters.methods.lora.LoRA`` "
    "(on a ``LinearHost``). The suite's LoRA, DoRA, VeRA and MTL-LoRA test modules import the name, so an alias or a "
    "marker class is needed (issue 23, suite gating)",
    "adapters.configuration.adapter_config:MTLLoRAConfig": "no ``adapters.configuration.adapter_config`` module (the configs "
    f"live in ``adapters.configuration``); the suite's MTL-LoRA tests import from it; an alias module is {_TRIVIAL}",
    # -- model methods
    "ModelAdaptersMixin.support_lora_delta_w_svd": f"{_ISSUE_API}",
    "ModelBaseAdaptersMixin.adapter_interface": f"{_ISSUE_API} (on models that have an interface)",
    "ModelAdaptersMixin.save_adapter_setup": f"{_ISSUE_API}",
    "ModelAdaptersMixin.load_adapter_setup": f"{_ISSUE_API}",
    "ModelWithHeadsAdaptersMixin.save_adapter_setup": f"{_ISSUE_API}",
    "ModelWithHeadsAdaptersMixin.load_adapter_setup": f"{_ISSUE_API}",
    "ModelAdaptersMixin.push_adapter_to_hub": "issue 23, Hub: upload with a generated model card",
    "ModelAdaptersMixin.push_adapter_setup_to_hub": "issue 23, Hub: upload of a whole setup",
    "ModelWithHeadsAdaptersMixin.average_head": f"{_ISSUE_API}",
    "ModelWithHeadsAdaptersMixin.save_head": "issue 23, models: save_head / load_head on transformers' own head models",
    "ModelWithHeadsAdaptersMixin.load_head": "issue 23, models: save_head / load_head on transformers' own head models",
    "ModelWithHeadsAdaptersMixin.save_all_heads": "issue 23, models: with save_head on transformers' own head models",
    "ModelWithHeadsAdaptersMixin.get_labels": "labels of a static head model (from model.config); with issue 23's head work",
    "ModelWithHeadsAdaptersMixin.get_labels_dict": "labels of a static head model (from model.config); with issue 23's head work",
    "ModelWithFlexibleHeadsAdaptersMixin.get_prediction_heads_config": f"{_ISSUE_API}",
    "BertAdapterModel.loaded_embeddings": f"{_ISSUE_API}",
    "BertAdapterModel.prepare_inputs_for_generation": "generation with a causal-LM head on an encoder AdapterModel; not planned yet",
    "InvertibleAdaptersMixin.get_invertible_adapter": f"{_ISSUE_API}",
    "InvertibleAdaptersMixin.add_invertible_adapter": "AdapterHub adds invertible adapters through add_adapter as here; the direct "
    "method comes with the invertible-adapter marker class (issue 23)",
    "InvertibleAdaptersMixin.delete_invertible_adapter": "as add_invertible_adapter (issue 23)",
    "InvertibleAdaptersMixin.enable_invertible_adapters": "as add_invertible_adapter (issue 23)",
    "PredictionHead.build": "custom heads written for AdapterHub call ``self.build(model)`` to create their layers; "
    f"{_TRIVIAL} on this PredictionHead",
    # -- parameters of present callables
    "ModelWithHeadsAdaptersMixin.save_adapter_fusion(with_head)": f"{_ISSUE_API}",
    "ModelWithHeadsAdaptersMixin.load_adapter_fusion(with_head)": "with save_adapter_fusion(with_head=) (issue 23)",
    "ModelAdaptersMixin.load_adapter_fusion(use_safetensors)": "issue 23: the .bin / safetensors choice on every load",
    "ModelWithHeadsAdaptersMixin.load_adapter_fusion(use_safetensors)": "issue 23: the .bin / safetensors choice on every load",
    "ModelWithHeadsAdaptersMixin.load_adapter(with_head)": "issue 23: heads saved with an adapter are loaded by default; the "
    "switch is not accepted yet",
    "adapters:ModelAdaptersConfig(**kwargs)": "building the registry from a saved ``config.adapters`` dict (issue 23, models: "
    "save_pretrained restores adapters)",
    "adapters.configuration:ModelAdaptersConfig(**kwargs)": "as adapters:ModelAdaptersConfig (issue 23)",
    "adapters:init(adapters_config)": "comes with issue 23's save_pretrained restore (AdapterHub passes a saved registry)",
    **_each(
        "LoRA options AdapterHub's MTLLoRAConfig inherits from LoRAConfig and this one lacks (no issue part plans them yet)",
        "adapters:MTLLoRAConfig(composition_mode)", "adapters:MTLLoRAConfig(use_gating)", "adapters:MTLLoRAConfig(use_dora)",
        "adapters:MTLLoRAConfig(dtype)",
    ),
    # -- registry and composition helpers
    "ModelAdaptersConfig.to_dict": "the registry as written to ``config.adapters`` (issue 23, save_pretrained restore)",
    "ModelAdaptersConfig.add": "registering a config without creating weights (issue 23, save_pretrained restore)",
    "ModelAdaptersConfig.add_fusion": "as ModelAdaptersConfig.add (issue 23)",
    "ModelAdaptersConfig.match": f"the config of an adapter at a given layer/location; {_TRIVIAL}",
    "AdapterCompositionBlock.to_dict": "setups as JSON, for save_adapter_setup (issue 23)",
    "AdapterCompositionBlock.from_dict": "setups from JSON, for load_adapter_setup (issue 23)",
}

_ARCHITECTURE_FIELD = (
    "``architecture`` is fixed by the config class here (it is still written to and read from "
    "adapter_config.json), not a constructor argument"
)
_VERA_FIELDS = "VeRA's ``vera_d`` / ``vera_b`` are VeraConfig's (and DvoRAConfig's) fields here, not every LoRA config's"
_SAVE_LOAD = (
    "after the leading (path, name) the optional parameters are ordered differently (pass them by keyword); "
    "``custom_weights_loaders`` (AdapterHub's loader plug-ins) is not supported: each method family saves and "
    "loads its own weights"
)
_INDEX_ARGS = "AdapterHub-index arguments (``version``, ``model_name``) are not taken (the index is retired)"
_SAFETENSORS = "``use_safetensors`` defaults to True: safetensors is written by default (``False`` writes AdapterHub's .bin)"
_PLUMBING = (
    "AdapterHub's plumbing for its copied model code; here ``adapters.init`` swaps the class and hooks the "
    "architecture spec's modules (adapters/hooks), and one engine runs every method"
)
_INDEX = (
    "AdapterHub's own adapter index is retired: adapters load from paths and the Hugging Face Hub (through "
    "huggingface_hub's cache), and index ids are refused with a message naming what to use"
)

#: AdapterHub names that differ here on purpose, or are left out on purpose (or, for keys in
#: :data:`TO_ALIGN`, differ and are to be aligned): why
DIFFERENCES = {
    # -- model methods
    "ModelAdaptersMixin.save_adapter": f"{_SAFETENSORS}; {_SAVE_LOAD}; no ``**kwargs``",
    "ModelWithHeadsAdaptersMixin.save_adapter": f"{_SAFETENSORS}; {_SAVE_LOAD}",
    "ModelAdaptersMixin.save_all_adapters": f"{_SAFETENSORS}; {_SAVE_LOAD}; ``meta_dict`` is not taken here",
    "ModelWithHeadsAdaptersMixin.save_all_adapters": f"{_SAFETENSORS}; {_SAVE_LOAD}; ``meta_dict`` is not taken here",
    "ModelAdaptersMixin.save_adapter_fusion": f"{_SAFETENSORS}; {_SAVE_LOAD}; ``meta_dict`` is not taken here",
    "ModelWithHeadsAdaptersMixin.save_adapter_fusion": f"{_SAFETENSORS}; {_SAVE_LOAD}; ``meta_dict`` is not taken here",
    "ModelAdaptersMixin.save_all_adapter_fusions": f"{_SAFETENSORS}; {_SAVE_LOAD}; ``meta_dict`` is not taken here",
    "ModelAdaptersMixin.load_adapter": f"{_SAVE_LOAD}; {_INDEX_ARGS}; ``id2label`` and ``use_safetensors`` are not "
    "taken (labels come from the saved head; the file format is detected)",
    "ModelWithHeadsAdaptersMixin.load_adapter": f"{_SAVE_LOAD}; {_INDEX_ARGS}; ``id2label`` and ``use_safetensors`` are "
    "not taken (labels come from the saved head; the file format is detected)",
    "ModelAdaptersMixin.load_adapter_fusion": _SAVE_LOAD,
    "ModelWithHeadsAdaptersMixin.load_adapter_fusion": _SAVE_LOAD,
    "BertAdapterModel.forward": "one forward for every AdapterModel: architecture-specific inputs (``token_type_ids``, "
    "``position_ids``, ...) are passed by keyword, as transformers 5's models take them",
    "ModelWithFlexibleHeadsAdaptersMixin.forward_head": "called with the base model's output object (``outputs``); "
    "``return_dict`` / ``context`` are not needed (outputs are always ModelOutput objects here)",
    "ModelWithFlexibleHeadsAdaptersMixin.register_custom_head": "the second parameter is named ``head_class`` (AdapterHub: "
    "``head``), passed positionally as AdapterHub's docs do; renaming is trivial",
    "ModelWithFlexibleHeadsAdaptersMixin.add_causal_lm_head": "``overwrite_ok`` comes before ``layers`` (AdapterHub: after); "
    "pass both by keyword",
    "ModelWithFlexibleHeadsAdaptersMixin.add_masked_lm_head": "``layers`` is taken only through ``**kwargs`` (by keyword); "
    "``overwrite_ok`` is the third parameter (AdapterHub: the fourth)",
    "ModelWithFlexibleHeadsAdaptersMixin.add_seq2seq_lm_head": "``activation_function`` / ``layer_norm`` / ``bias`` come before "
    "``overwrite_ok``; pass it by keyword",
    # -- composition
    "adapters.composition:SUPPORTED_MODELS": "which blocks a model supports comes from its architecture spec "
    "(adapters/models), not a table of model types",
    **_each(
        "helpers of AdapterHub's copied attention code for Parallel; the composition engine handles Parallel here",
        "adapters.composition:adjust_tensors_for_parallel", "adapters.composition:adjust_tensors_for_parallel_",
        "adapters.composition:match_attn_matrices_for_parallel",
    ),
    "adapters.composition:parse_heads_from_composition": "internal helper; here "
    "``adapters.heads.model_mixin.heads_from_setup``",
    # -- configuration
    **_each(
        _ARCHITECTURE_FIELD,
        "DiReftConfig", "DvoRAConfig", "LoReftConfig", "NoReftConfig", "PrefixTuningConfig", "PromptTuningConfig",
        "ReftConfig",
    ),
    **_each(f"{_ARCHITECTURE_FIELD}; {_VERA_FIELDS}", "DoRAConfig", "IA3Config", "LoRAConfig", "VeraConfig"),
    **_each(
        f"{_ARCHITECTURE_FIELD}; {_VERA_FIELDS}; it is not a LoRAConfig subclass here (see the absent parameters for the "
        "LoRA options it lacks)",
        "adapters:MTLLoRAConfig", "adapters.configuration:MTLLoRAConfig",
    ),
    **_each(
        "AdapterFusionConfig is not an AdapterConfig subclass here and lacks this member (AdapterHub's has it); "
        "trivially addable",
        "AdapterConfig.architecture", "AdapterConfig.from_dict",
    ),
    "AdapterConfig.load": "``download_kwargs`` (AdapterHub-index download options) is refused with the index",
    "adapters.configuration:build_full_config": "AdapterHub's helper for the adapter_config.json dict; adapters/loading.py "
    "writes the same layout",
    # -- heads
    **_each(
        "``shift_labels=None`` means the head type's AdapterHub default (True for causal LM, False otherwise)",
        *(f"{module}:{head}" for module in ("adapters.heads", "adapters.heads.language_modeling")
          for head in ("CausalLMHead", "Seq2SeqLMHead", "BertStyleMaskedLMHead")),
    ),
    "adapters.heads:QuestionAnsweringHead": "``layers``, ``activation_function``, ``id2label``, ``dropout_prob`` are taken "
    "through ``**kwargs`` (keyword only)",
    "ModelWithFlexibleHeadsAdaptersMixin.head_type": "AdapterHub's decorator registering head types; heads are registered "
    "with ``adapters.register_custom_head`` here",
    "ModelWithFlexibleHeadsAdaptersMixin.use_pooler": "per-model pooler switch of AdapterHub's model classes; heads read the "
    "pooled output where the model has one",
    # -- trainer, context, classes
    "AdapterTrainer": "transformers 5's Trainer arguments pass through ``*pargs`` / ``**kwargs`` (transformers 5 has no "
    "``tokenizer`` argument: use ``processing_class``); ``model_init`` is refused and AdapterHub's deprecated "
    "``adapter_names`` is not taken (activate the setup with ``train_adapter`` first)",
    "adapters.trainer:AdapterTrainerCallback": "AdapterHub's callback that saves adapters at checkpoints; AdapterTrainer "
    "saves adapter checkpoints itself here",
    "ForwardContext": "created by the model's forward only (``ForwardContext(model, setup, skip_layers)``), not by users",
    **_each(
        "AdapterHub's per-forward context plumbing; here the model's forward (adapters/forward.py) opens the context",
        "ForwardContext.add_context_args_in_signature", "ForwardContext.context_args", "ForwardContext.context_attributes",
        "ForwardContext.get_contexts", "ForwardContext.storage", "ForwardContext.wrap", "ForwardContext.wrap_base",
        "AdapterSetup.get_contexts", "AdapterSetup.storage",
    ),
    "ModelAdaptersMixin": "swapped into a model's class by ``adapters.init``; never constructed directly",
    "adapters:init": "``interface`` is the second parameter (AdapterHub: the third, after ``adapters_config``, which is "
    "absent: see the absent parameters)",
    **_each(
        _PLUMBING,
        "AdapterLayerBase", "ComposableAdapterLayerBase",
        "ModelAdaptersMixin.init_adapters", "ModelBaseAdaptersMixin.init_adapters", "ModelWithHeadsAdaptersMixin.init_adapters",
        "EmbeddingAdaptersMixin.init_adapters", "InvertibleAdaptersMixin.init_adapters",
        "ModelAdaptersMixin.add_base_adapters", "ModelBaseAdaptersMixin.add_base_adapters",
        "ModelAdaptersMixin.apply_to_adapter_layers", "ModelAdaptersMixin.apply_to_basemodel_childs",
        "ModelAdaptersMixin.forward_context", "ModelAdaptersMixin.set_shared_parameters",
        "ModelBaseAdaptersMixin.iter_attentions", "ModelBaseAdaptersMixin.iter_layer_ffns",
        "ModelBaseAdaptersMixin.post_embedding_forward", "InvertibleAdaptersMixin.invertible_adapters_forward",
    ),
    # -- the AdapterHub index
    **_each(
        _INDEX,
        "ADAPTER_CACHE", "AdapterInfo", "AdapterType", "get_adapter_info", "list_adapters",
        "adapters.utils:find_in_index", "adapters.utils:resolve_adapter_path", "ModelAdaptersMixin.model_name",
    ),
}

#: differences in :data:`DIFFERENCES` that are not a design choice: AdapterHub's form is to be
#: adopted (the docs list them apart)
TO_ALIGN = {
    "ModelWithFlexibleHeadsAdaptersMixin.register_custom_head",
    "ModelWithFlexibleHeadsAdaptersMixin.add_causal_lm_head", "ModelWithFlexibleHeadsAdaptersMixin.add_masked_lm_head",
    "ModelWithFlexibleHeadsAdaptersMixin.add_seq2seq_lm_head",
    "adapters.heads:QuestionAnsweringHead",
    "adapters:init", "AdapterConfig.architecture", "AdapterConfig.from_dict",
}

#: differences whose signature matches AdapterHub's but whose behaviour differs on purpose (kept
#: listed even while the signature check finds nothing)
BEHAVIOUR_DIFFERENCES: set = set()
