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
    # -- model methods
    # -- parameters of present callables
    # -- registry and composition helpers
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
_SAFETENSORS = (
    "``use_safetensors`` defaults to True: safetensors is written by default (``False`` writes AdapterHub's .bin); "
    "AdapterHub reads such a folder with ``use_safetensors=True`` (its default reads only the .bin)"
)
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
    "ModelWithHeadsAdaptersMixin.save_head": _SAFETENSORS,
    "ModelWithHeadsAdaptersMixin.save_all_heads": _SAFETENSORS,
    "ModelAdaptersMixin.save_adapter_fusion": f"{_SAFETENSORS}; {_SAVE_LOAD}",
    "ModelWithHeadsAdaptersMixin.save_adapter_fusion": f"{_SAFETENSORS}; {_SAVE_LOAD}",
    **_each(
        f"{_SAFETENSORS}; {_SAVE_LOAD}; one method serves models with and without heads, so ``head_setup`` is the third "
        "parameter as on AdapterHub's head models (on its base models ``meta_dict`` is)",
        "ModelAdaptersMixin.save_adapter_setup", "ModelWithHeadsAdaptersMixin.save_adapter_setup",
    ),
    **_each(
        "after the leading path the optional parameters are ordered differently: ``set_active`` and "
        "``use_safetensors`` come right after ``version`` (pass them by keyword); ``custom_weights_loaders`` "
        "(AdapterHub's loader plug-ins) is not supported: each method family saves and loads its own weights; a "
        "setup naming an adapter, fusion or head the model has already is refused (AdapterHub replaces them), so "
        "that a failed load is undone completely",
        "ModelAdaptersMixin.load_adapter_setup", "ModelWithHeadsAdaptersMixin.load_adapter_setup",
    ),
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
        f"{_ARCHITECTURE_FIELD}; {_VERA_FIELDS}; it is not a LoRAConfig subclass here and does not take LoRA's "
        "``composition_mode``, ``use_gating``, ``use_dora`` and ``dtype``: MTL-LoRA here computes AdapterHub's MTL-LoRA "
        "only with their defaults (additive, ungated, no DoRA magnitude, the model's dtype), so a constructor taking them "
        "would accept values it cannot honour; AdapterHub's files holding the defaults load, other values are refused",
        "adapters:MTLLoRAConfig", "adapters.configuration:MTLLoRAConfig", "adapters.configuration.adapter_config:MTLLoRAConfig",
    ),
    "AdapterConfig.load": "``download_kwargs`` (AdapterHub-index download options) is refused with the index",
    "AdapterConfig.from_dict": "keys the config class does not have: AdapterHub sets them as plain attributes, which "
    "its add_adapter / load_adapter then drop silently (they re-read the config through to_dict); here such a key is "
    "refused with a did-you-mean (a checkpoint's is dropped with a warning), and a dict holding the extra fields of "
    "a config subclass registered with register_config is read as that subclass, its fields kept",
    "adapters.configuration:build_full_config": "AdapterHub's helper for the adapter_config.json dict; adapters/loading.py "
    "writes the same layout",
    # -- heads
    **_each(
        "``shift_labels=None`` means the head type's AdapterHub default (True for causal LM, False otherwise)",
        *(f"{module}:{head}" for module in ("adapters", "adapters.heads", "adapters.heads.language_modeling")
          for head in ("CausalLMHead", "Seq2SeqLMHead", "BertStyleMaskedLMHead")),
    ),
    "ModelWithFlexibleHeadsAdaptersMixin.head_type": "AdapterHub's decorator registering head types; heads are registered "
    "with ``adapters.register_custom_head`` here",
    "ModelWithFlexibleHeadsAdaptersMixin.use_pooler": "per-model pooler switch of AdapterHub's model classes; heads read the "
    "pooled output where the model has one",
    # -- trainer, context, classes
    "AdapterTrainer": "AdapterHub's arguments are taken (``tokenizer`` is passed on as transformers 5's "
    "``processing_class``); checkpoints hold every adapter and fusion plus ``trainable_weights.safetensors`` (the "
    "trained weights outside them), and resuming / ``load_best_model_at_end`` copy them into the existing "
    "parameters; the fusion value regulariser is part of the training loss (AdapterHub back-propagates it after "
    "each optimizer step, so its gradient reaches the next step); fusion value matrices are kept out of weight decay, "
    "as AdapterHub means to (its pattern never matches their names); a frozen LM head is not copied into checkpoints",
    "Seq2SeqAdapterTrainer": "AdapterTrainer's checkpoints, loss and optimizer groups (see AdapterTrainer) on transformers' "
    "Seq2SeqTrainer",
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
    "adapters:init": "on a model loaded from a folder an initialised model's ``save_pretrained`` wrote, the adapters of "
    "``config.adapters`` get their saved weights back from that folder's weights file (AdapterHub rebuilds them with "
    "fresh weights: transformers dropped their tensors as unexpected), and the saved active setup is activated",
    "XmodAdapterModel": "X-MOD's language modules stay (AdapterHub's ``adapters.init`` deletes them and refuses "
    "``lang_ids``): the initialised model computes what the checkpoint was trained to compute, and ``lang_ids`` / "
    "``set_default_language`` work as in transformers; ``adapters.models.xmod.remove_language_modules(model)`` gives "
    "AdapterHub's X-MOD (no language module), on which AdapterHub's X-MOD checkpoints reproduce its outputs",
    "ModelAdaptersMixin.save_pretrained": "``config.adapters`` also records the active setup (``active_setup``, which "
    "AdapterHub ignores), so that ``from_pretrained`` / ``adapters.init`` restore it; AdapterHub restores no active setup",
    "adapters:ModelWithHeadsAdaptersMixin": "swapped into a transformers head model's class by ``adapters.init`` (and a base "
    "of the AdapterModel classes' head mixin); never constructed directly",
    "adapters.methods.lora:LoRALayer": "the name of ``LinearHost``, the class swapped into a linear layer that holds LoRA "
    "modules (``isinstance(module, LoRALayer)`` and its ``loras`` work as in AdapterHub); it is never constructed, so "
    "AdapterHub's constructor arguments (its layer plumbing) are not taken",
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
    # -- training
    **_each(
        "a pretrained LM head's output embedding (``get_output_embeddings()`` of a transformers model with an LM "
        "head, tied to the input embeddings or not) stays frozen, as in PEFT, so that the adapter alone is what "
        "trains and a PEFT-format save describes the trained model; AdapterHub leaves it trainable (284,672 "
        "trainable parameters beside a 28,672-parameter LoRA on a small Llama). ``train_output_embeddings=True`` "
        "(an added keyword) trains it as AdapterHub does; new heads (classifiers, flexible heads) train as there",
        "ModelAdaptersMixin.train_adapter", "ModelWithHeadsAdaptersMixin.train_adapter",
        "ModelAdaptersMixin.train_adapter_fusion", "ModelWithHeadsAdaptersMixin.train_adapter_fusion",
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
TO_ALIGN: set = set()

#: differences whose signature matches AdapterHub's but whose behaviour differs on purpose (kept
#: listed even while the signature check finds nothing)
BEHAVIOUR_DIFFERENCES: set = {
    "AdapterTrainer", "Seq2SeqAdapterTrainer", "adapters:init", "ModelAdaptersMixin.save_pretrained", "AdapterConfig.from_dict",
    "XmodAdapterModel", "ModelAdaptersMixin.train_adapter", "ModelWithHeadsAdaptersMixin.train_adapter",
    "ModelAdaptersMixin.train_adapter_fusion", "ModelWithHeadsAdaptersMixin.train_adapter_fusion",
}
