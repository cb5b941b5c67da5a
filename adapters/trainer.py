"""Training adapters with transformers' ``Trainer``: :class:`AdapterTrainer`, and
:class:`Seq2SeqAdapterTrainer` on ``Seq2SeqTrainer`` for generation.

``Trainer`` saves, resumes and restores whole models. An adapter run changes only a few weights
(the adapters, fusion layers and heads), so :class:`AdapterTrainer` keeps its checkpoints to those:

``checkpoint-<step>/`` holds:

* ``<adapter>/``: every adapter, in the AdapterHub layout of :meth:`save_adapter`
  (``adapter_config.json``, ``adapter.safetensors``; the head of the same name on an
  AdapterModel, a transformers head model's head while it trains), loadable with
  ``model.load_adapter("checkpoint-500/<adapter>")``;
* ``<fusion>/``: every fusion layer (:meth:`save_adapter_fusion`'s layout);
* ``<head>/``: every flexible prediction head, where the model has ``heads`` (``save_all_heads``);
* ``trainable_weights.safetensors``: the trainable weights outside adapters and fusions: heads
  (a transformers head such as ``classifier.*`` of ``BertForSequenceClassification``, or
  flexible heads), input embeddings trained with ``train_embeddings=True``;
* ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ``trainer_state.json``,
  ``training_args.bin``: written by ``Trainer`` as for any run.

No full-model weights file is written. The adapter, fusion and head folders and
``trainable_weights.safetensors`` are written atomically (see :mod:`adapters.loading`) and only
inside the checkpoint folder: names are never paths. Resuming (``trainer.train(resume_from_checkpoint=...)``)
and ``load_best_model_at_end`` copy the saved weights *in place* into the model's existing
parameters: their identity, ``requires_grad`` flags and the active setup stay as they are, and the
checkpoint must hold exactly the adapters and fusions the model has (build the model the same way
before resuming). A bad checkpoint raises an error naming the file and leaves the weights as they
were.

While a fusion layer trains (:meth:`train_adapter_fusion`), the fusion's value regulariser
``0.01 · ||I − W_V||²`` (:meth:`get_fusion_regularization_loss`) is added to the training loss.

Distributed training: DDP, DeepSpeed ZeRO-2 and ZeRO-3 (``TrainingArguments(deepspeed=...)``) and
accelerate's FSDP2 (``fsdp=..., fsdp_config={"version": 2}``). The adapter, fusion and head weights
are gathered from their shards on every rank (ZeRO-3: ``deepspeed.zero.GatheredParameters``, only
those weights; FSDP2: ``DTensor.full_tensor()``) and rank 0 writes the same folders as above. The
optimizer state stays in the format of its engine, without the frozen base model: DeepSpeed's
``global_step<N>/`` (``save_checkpoint(exclude_frozen_parameters=True)``: optimizer partitions and
the trainable weights), FSDP's ``optimizer.bin`` (no ``pytorch_model_fsdp.bin``). Resuming under
DeepSpeed loads that folder (the weights from it, the frozen base from the model); under FSDP the
adapter folders are copied into the shards. FSDP1 (``fsdp_config={"version": 1}``) and SageMaker
model parallelism are refused.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Optional

import torch
from torch import nn
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback
from transformers.trainer import SCHEDULER_NAME, TRAINING_ARGS_NAME

from . import logging
from .errors import AdapterConfigError, AdapterLoadError
from .model_mixin import ModelAdaptersMixin

logger = logging.get_logger(__name__)

__all__ = ["AdapterTrainer", "Seq2SeqAdapterTrainer", "AdaLoraCallback", "TRAINABLE_WEIGHTS_NAME"]

TRAINABLE_WEIGHTS_NAME = "trainable_weights.safetensors"


@contextlib.contextmanager
def _adapters_attached(model):
    """Let ``Trainer.__init__`` accept a quantized model (QLoRA) that has trainable adapters:
    transformers refuses a quantized model unless it carries PEFT's adapters, which it recognises
    by ``_hf_peft_config_loaded`` (``validate_quantization_for_training``). The flag is set only for
    that check: elsewhere it would make ``save_pretrained`` save PEFT's adapters."""
    quantized = getattr(model, "is_quantized", False) and not getattr(model, "_hf_peft_config_loaded", False)
    if not quantized or not any(p.requires_grad for p in model.parameters()):
        yield
        return
    model._hf_peft_config_loaded = True
    try:
        yield
    finally:
        model._hf_peft_config_loaded = False


class AdapterTrainer(Trainer):
    """A ``transformers.Trainer`` for adapter training: checkpoints hold only adapters, fusions and
    heads (see the module docstring), resuming and ``load_best_model_at_end`` restore them, and
    the fusion value regulariser joins the loss while a fusion trains.

    Prepare the model as for a hand-written loop (``train_adapter`` / ``train_adapter_fusion``)
    before creating the trainer (or return it prepared from ``model_init``). The arguments are
    AdapterHub's, in its order: ``tokenizer`` is passed on as transformers 5's
    ``processing_class``; ``adapter_names`` (AdapterHub's deprecated argument) activates that setup
    first; further keyword arguments go to ``Trainer``.

    Raises:
        AdapterConfigError: the model is not an adapters model (call ``adapters.init(model)``), or it has
            no active adapter setup (call ``model.train_adapter(...)`` first), both ``tokenizer``
            and ``processing_class`` are given, or FSDP1 or SageMaker model parallelism is enabled;
            at ``train()``: the base model is not frozen.

    Example::

        >>> import adapters
        >>> from adapters import AdapterTrainer
        >>> from transformers import TrainingArguments
        >>> adapters.init(model)
        >>> model.add_adapter("task", config="seq_bn")
        >>> model.train_adapter("task")
        >>> args = TrainingArguments("out", max_steps=1000, save_steps=200, eval_strategy="steps",
        ...                          eval_steps=200, load_best_model_at_end=True)
        >>> trainer = AdapterTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev)
        >>> trainer.train()                                   # or resume_from_checkpoint=True
        >>> model.load_adapter("out/checkpoint-400/task")     # checkpoints hold adapter folders
    """

    def __init__(
        self,
        model: Optional[nn.Module] = None,
        args=None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        tokenizer=None,
        processing_class=None,
        model_init=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        preprocess_logits_for_metrics=None,
        adapter_names=None,
        **kwargs,
    ):
        if tokenizer is not None:
            if processing_class is not None and processing_class is not tokenizer:
                raise AdapterConfigError(
                    "AdapterTrainer got both tokenizer= and processing_class=: pass the tokenizer as processing_class "
                    "(transformers 5's name; tokenizer= is read as processing_class for AdapterHub's scripts)."
                )
            processing_class = tokenizer
        if model is None and model_init is None:
            raise AdapterConfigError("AdapterTrainer needs a model, got model=None: pass model=... (or model_init=...).")
        # every model model_init builds (here, and again when train() starts) gets adapter_names and the checks
        self._adapter_names = adapter_names
        if model is not None:
            self._check_adapters_model(model, adapter_names)
        with _adapters_attached(model):
            super().__init__(
                model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                eval_dataset=eval_dataset, processing_class=processing_class, model_init=model_init,
                compute_metrics=compute_metrics, callbacks=callbacks, optimizers=optimizers,
                preprocess_logits_for_metrics=preprocess_logits_for_metrics, **kwargs,
            )
        if self.is_fsdp_enabled and getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
            # FSDP1 flattens parameters into FlatParameters under wrapped names: adapters cannot be found or saved
            raise AdapterConfigError(
                "AdapterTrainer supports FSDP2 only, got fsdp_config version 1: pass "
                "TrainingArguments(fsdp=..., fsdp_config={'version': 2, ...})."
            )
        from transformers.utils import is_sagemaker_mp_enabled

        if is_sagemaker_mp_enabled():
            raise AdapterConfigError(
                "AdapterTrainer does not support SageMaker model parallelism (its partitioned state cannot be saved as "
                "adapter folders); use DDP, DeepSpeed ZeRO-2/3 or FSDP2."
            )
        self.add_callback(_FrozenBaseModelCheck())
        self._use_head_label_names()

    def call_model_init(self, trial=None):
        """Build the model with ``model_init`` (as ``Trainer`` does, in ``__init__`` and again when
        ``train()`` starts), then activate ``adapter_names`` on it and check it is an adapters model
        with an active setup, as for a model passed in.

        Example::

            >>> trainer = AdapterTrainer(model_init=build, args=args, adapter_names=["a", "b"])
            >>> trainer.call_model_init().active_adapters
            Stack[a, b]
        """
        model = super().call_model_init(trial)
        self._check_adapters_model(model, self._adapter_names)
        return model

    @staticmethod
    def _check_adapters_model(model, adapter_names) -> None:
        """An adapters model with an active setup (``adapter_names`` activated first, as AdapterHub's
        deprecated argument did)."""
        if not isinstance(model, ModelAdaptersMixin):
            raise AdapterConfigError(
                f"AdapterTrainer needs an adapters model, got {type(model).__name__}: call adapters.init(model) "
                f"(or use AutoAdapterModel), add adapters and call model.train_adapter(...) first."
            )
        if adapter_names is not None:
            model.set_active_adapters(adapter_names)
        if model.active_adapters is None:
            raise AdapterConfigError(
                "The model has no active adapter setup: call model.train_adapter('name') (or train_adapter_fusion) "
                "before creating the AdapterTrainer. To train the whole model, use transformers.Trainer."
            )

    def _use_head_label_names(self) -> None:
        """An AdapterModel's forward signature names ``labels`` whatever its heads read, so unless
        ``TrainingArguments.label_names`` says otherwise the active heads' label names (``labels``;
        ``start_positions`` / ``end_positions`` for question answering) are the ones evaluation
        collects for ``compute_metrics``, as AdapterHub's trainer does."""
        model = self._adapters_model
        if self.args.label_names is not None or getattr(model, "heads", None) is None or not model._active_heads:
            return
        names = []
        for head in model._active_heads:
            if head in model.heads:
                names += [n for n in model.heads[head].get_label_names() if n not in names]
        self.label_names = names

    @property
    def train_adapter_fusion(self) -> bool:
        """Whether this run trains a fusion layer (AdapterHub's trainer attribute): some fusion
        layer of the active setup has trainable weights, as after
        :meth:`~adapters.ModelAdaptersMixin.train_adapter_fusion`. Then the fusion value
        regulariser joins the loss; checkpoints always hold every fusion (and every adapter), and
        ``load_best_model_at_end`` restores them.

        Example::

            >>> model.train_adapter_fusion(Fuse("a", "b"))
            >>> AdapterTrainer(model=model, args=args, train_dataset=data).train_adapter_fusion
            True
        """
        return self._trains_fusion(self._adapters_model)

    # -- the loss ------------------------------------------------------------------------------------
    @property
    def _adapters_model(self) -> ModelAdaptersMixin:
        return self.accelerator.unwrap_model(self.model)

    def _trains_fusion(self, model: ModelAdaptersMixin) -> bool:
        return any(
            param.requires_grad
            for host in model._adapter_hosts
            if host.supports_fusion
            for param in host.adapter_fusion_layer.parameters()
        )

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """``Trainer``'s loss, plus the fusion value regulariser while a fusion layer trains.

        The regulariser is added once per optimiser step: where ``Trainer`` treats the loss as
        already normalised over the accumulated batch, it is divided by the accumulation steps.

        Example::

            >>> model.train_adapter_fusion(Fuse("a", "b"))
            >>> trainer.compute_loss(model, batch)  # task loss + 0.01 · ||I − W_V||² per layer
        """
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        unwrapped = self._adapters_model
        if unwrapped.training and self._trains_fusion(unwrapped):
            regularization = unwrapped.get_fusion_regularization_loss().to(loss.device)
            scaled = self.loss_is_scaled_for_ga
            if scaled is None:
                scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
            if scaled:
                regularization = regularization / self.current_gradient_accumulation_steps
            loss = loss + regularization
        return (loss, outputs) if return_outputs else loss

    # -- the optimizer -------------------------------------------------------------------------------
    def get_decay_parameter_names(self, model) -> list[str]:
        """``Trainer``'s weight-decayed parameter names, less the fusion layers' value matrices:
        their regulariser pulls them towards the identity, which weight decay (pulling towards
        zero) would work against. AdapterHub's trainer means to exclude them too, but its pattern
        is anchored at the start of the parameter name (``re.match``) and never matches a name
        such as ``bert.encoder.layer.0.output.adapter_fusion_layer.a,b.value.weight``, so
        AdapterHub decays them.

        Example::

            >>> names = trainer.get_decay_parameter_names(model)
            >>> any(".adapter_fusion_layer." in n and ".value." in n for n in names)
            False
        """
        return [
            name for name in super().get_decay_parameter_names(model)
            if not re.search(r"(^|\.)adapter_fusion_layer\.[^.]+\.value\.", name)
        ]

    # -- saving --------------------------------------------------------------------------------------
    def _other_trainable_parameters(self, model) -> dict[str, nn.Parameter]:
        """Trainable parameters outside every adapter and fusion (heads included), by name."""
        owned = model._adapter_owned_ids()
        return {k: p for k, p in model.named_parameters() if p.requires_grad and id(p) not in owned}

    @property
    def _shards_weights(self) -> bool:
        """Whether the weights are sharded over the ranks (ZeRO-3, FSDP): saving gathers them on every rank."""
        return self._zero3 or self.is_fsdp_enabled

    @property
    def _zero3(self) -> bool:
        return self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3

    def _saved_parameters(self, model) -> list[nn.Parameter]:
        """Every parameter a checkpoint holds: adapters, fusions, heads, trainable weights."""
        owned = model._adapter_owned_ids()
        params = {id(p): p for p in model.parameters() if p.requires_grad or id(p) in owned}
        if getattr(model, "heads", None) is not None:
            params.update((id(p), p) for p in model.heads.parameters())
        params.update((id(p), p) for p in getattr(model, "_static_head_parameters", dict)().values())
        return list(params.values())

    def _whole_weights(self, model, modifier_rank=None):
        """Under ZeRO-3, the checkpoint's parameters gathered whole on every rank (only those: the
        frozen base stays partitioned); with ``modifier_rank`` rank 0's values are partitioned
        again on exit. FSDP2's DTensors are gathered where they are written. Elsewhere a no-op."""
        if not self._zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(self._saved_parameters(model), modifier_rank=modifier_rank)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Write the adapter checkpoint layout (see the module docstring) to ``output_dir``.
        Under DeepSpeed and FSDP every rank runs it (the weights are gathered from their shards,
        only the adapters', fusions' and heads'); rank 0 writes. ``Trainer`` would gather the
        whole model's state dict first (or write DeepSpeed's full checkpoint), which this skips.

        Example::

            >>> trainer.save_model("out/final")     # out/final/<adapter>/adapter.safetensors, ...
        """
        if not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            return super().save_model(output_dir, _internal_call)
        self._save(output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        """Write the adapters, fusions, heads and other trainable weights (not the base model) to
        ``output_dir``, with the tokenizer / processor and the training arguments. With sharded
        weights every rank gathers them and rank 0 writes; ``state_dict`` is not used."""
        from .loading import _rank0_writes

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        sharded = self._shards_weights
        if not self.args.should_save and not sharded:
            return
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            logger.info(f"Saving adapter checkpoint to {output_dir}")
        model = self._adapters_model
        with self._whole_weights(model), _rank0_writes(sharded):
            self._write_checkpoint(model, output_dir)
        if self.processing_class is not None and self.args.should_save:
            self.processing_class.save_pretrained(output_dir)

    def _write_checkpoint(self, model, output_dir: str) -> None:
        """The adapter, fusion and head folders, the other trainable weights and the arguments."""
        from .loading import _CheckpointFiles

        # every name checked and every target resolved inside output_dir before anything is written
        flexible_heads = getattr(model, "heads", None) is not None
        # a transformers head model's static head goes into each adapter folder only while it trains (a
        # classifier trained with the adapter); a frozen one (an LM head) is the base model's, not copied
        static_head_trains = any(p.requires_grad for p in getattr(model, "_static_head_parameters", dict)().values())
        model.save_all_adapters(output_dir, with_head=flexible_heads or static_head_trains)
        model.save_all_adapter_fusions(output_dir)
        if flexible_heads:  # for users; resuming reads trainable_weights.safetensors
            model.save_all_heads(output_dir)
        others = self._other_trainable_parameters(model)
        with _CheckpointFiles(output_dir) as files:  # atomic, as the adapter folders
            if others:
                files.weights(others, True, TRAINABLE_WEIGHTS_NAME, TRAINABLE_WEIGHTS_NAME)
            files.file(TRAINING_ARGS_NAME, lambda folder: torch.save(self.args, os.path.join(folder, TRAINING_ARGS_NAME)))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """The optimizer and scheduler states. DeepSpeed: its ``global_step<N>/`` folder without
        the frozen weights (``exclude_frozen_parameters=True``); FSDP: the optimizer state alone
        (``Trainer`` also writes the whole model there); otherwise as ``Trainer``."""
        if self.is_deepspeed_enabled:
            from accelerate.utils import DeepSpeedSchedulerWrapper

            self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
            if self.args.should_save and not isinstance(self.lr_scheduler, DeepSpeedSchedulerWrapper):
                torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))
        elif self.is_fsdp_enabled:
            from accelerate.utils import save_fsdp_optimizer

            save_fsdp_optimizer(self.accelerator.state.fsdp_plugin, self.accelerator, self.optimizer, self.model, output_dir)
            if self.args.should_save:
                torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))
        else:
            super()._save_optimizer_and_scheduler(output_dir)

    # -- loading -------------------------------------------------------------------------------------
    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        """``Trainer``'s preparation; under DeepSpeed the resume loads the ``global_step<N>/``
        folder non-strictly (it holds no frozen weights; ``Trainer`` asks for every weight there
        unless the model is a PEFT model), then the scheduler as ``Trainer`` does."""
        if not (self.is_deepspeed_enabled and resume_from_checkpoint is not None):
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        import glob

        if not glob.glob(os.path.join(resume_from_checkpoint, "global_step*")):
            raise AdapterLoadError(
                f"{resume_from_checkpoint} holds no DeepSpeed state (global_step*/): it was not written by a DeepSpeed "
                f"run of AdapterTrainer; resume it without DeepSpeed, or start a new run."
            )
        load_path, _ = self.model_wrapped.load_checkpoint(
            resume_from_checkpoint, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise AdapterLoadError(f"DeepSpeed could not resume from {resume_from_checkpoint}.")
        self._load_optimizer_and_scheduler(resume_from_checkpoint)
        self._load_scaler(resume_from_checkpoint)
        return model, train_dataloader

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume: copy the checkpoint's adapter, fusion and head weights into the model (into
        each rank's shard under FSDP2)."""
        load_checkpoint_weights(self._adapters_model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: copy the best checkpoint's weights into the model (under
        ZeRO-3 into the gathered parameters, partitioned again from rank 0's values; under FSDP2
        into each rank's shard)."""
        best = self.state.best_model_checkpoint
        logger.info(f"Loading the best adapters from {best} (score: {self.state.best_metric}).")
        model = self._adapters_model
        with self._whole_weights(model, modifier_rank=0):
            load_checkpoint_weights(model, best)


class _FrozenBaseModelCheck(TrainerCallback):
    """Refuses to start training while the base model is not frozen (``train_adapter`` /
    ``train_adapter_fusion`` not called, e.g. a setup only activated): the whole model would
    train, and the adapter-only checkpoints would not hold it."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model = getattr(model, "module", model)
        if model is not None and not model.base_model.__dict__.get("model_frozen", False):
            raise AdapterConfigError(
                "The base model's weights are not frozen: call model.train_adapter(...) (or train_adapter_fusion) "
                "before training with AdapterTrainer; to train the whole model use transformers.Trainer."
            )
        return control


class Seq2SeqAdapterTrainer(AdapterTrainer, Seq2SeqTrainer):
    """:class:`AdapterTrainer` for sequence-to-sequence and generation tasks: transformers'
    ``Seq2SeqTrainer`` (evaluation and prediction with ``model.generate`` when
    ``Seq2SeqTrainingArguments(predict_with_generate=True)``, generation settings from the
    arguments) with :class:`AdapterTrainer`'s adapter-only checkpoints, resumption, best-checkpoint
    restore and fusion regulariser. Generation runs through the active adapter setup.

    Example::

        >>> from transformers import Seq2SeqTrainingArguments
        >>> model.add_adapter("summarise", config="lora")
        >>> model.train_adapter("summarise")
        >>> args = Seq2SeqTrainingArguments("out", predict_with_generate=True, generation_max_length=32)
        >>> trainer = Seq2SeqAdapterTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
        ...                                 compute_metrics=rouge)
        >>> trainer.train()
        >>> trainer.evaluate()["eval_rouge1"]            # computed on generated sequences
    """


def _checkpoint_entries(folder: str) -> tuple[dict, dict]:
    """{name: subfolder} for the adapters and fusions a checkpoint folder holds."""
    from .configuration.validation import check_name
    from .loading import CONFIG_NAME, FUSION_CONFIG_NAME, _read_json

    adapter_folders, fusion_folders = {}, {}
    for entry in sorted(os.listdir(folder)):
        sub = os.path.join(folder, entry)
        for file_name, kind, found in ((CONFIG_NAME, "adapter", adapter_folders), (FUSION_CONFIG_NAME, "fusion", fusion_folders)):
            path = os.path.join(sub, file_name)
            if os.path.isfile(path):
                name = _read_json(path).get("name") or entry
                found[check_name(name, kind=kind, argument='its "name"', file=path)] = sub
    return adapter_folders, fusion_folders


def _check_same_names(kind: str, in_model, in_checkpoint, folder: str) -> None:
    lacking, extra = sorted(set(in_model) - set(in_checkpoint)), sorted(set(in_checkpoint) - set(in_model))
    if lacking or extra:
        raise AdapterLoadError(
            f"{folder} does not match the model's {kind}s: the model has {sorted(in_model)}, the checkpoint "
            f"{sorted(in_checkpoint)}. Build the model with the same {kind}s (add_adapter / add_adapter_fusion "
            f"with the same configs) before resuming or loading the best checkpoint."
        )


def load_checkpoint_weights(model: ModelAdaptersMixin, folder: str, allow_non_finite: bool = False) -> None:
    """Copy an :class:`AdapterTrainer` checkpoint's weights into ``model``'s existing parameters.

    Every adapter and fusion of the model must be in the checkpoint and vice versa; every key and
    shape is checked, and every weight must be a finite float (unless ``allow_non_finite``). On
    any error the model keeps the weights it had.

    Example::

        >>> load_checkpoint_weights(model, "out/checkpoint-500")
    """
    from .loading import (
        AdapterLoadError,
        FUSION_SAFE_WEIGHTS_NAME,
        FUSION_WEIGHTS_NAME,
        SAFE_WEIGHTS_NAME,
        WEIGHTS_NAME,
        _adapter_key_pattern,
        _check_state,
        _fusion_key_pattern,
        _read_weights,
        _select_parameters,
        _strip_prefix,
    )

    if not folder or not os.path.isdir(folder):
        raise AdapterLoadError(f"Can't find an adapter checkpoint at {folder!r}: it is not a folder.")
    adapter_folders, fusion_folders = _checkpoint_entries(folder)
    if not adapter_folders:
        raise AdapterLoadError(
            f"{folder} holds no adapter folders (<name>/adapter_config.json): it was not written by AdapterTrainer."
        )
    registry = model.adapters_config
    _check_same_names("adapter", registry.adapters, adapter_folders, folder)
    _check_same_names("fusion", registry.fusions, fusion_folders, folder)

    # (parameters, state, file) for every part; copied only after all files were read
    parts = []
    for name, sub in adapter_folders.items():
        state, path = _read_weights(sub, SAFE_WEIGHTS_NAME, WEIGHTS_NAME, allow_non_finite)
        params = {**_select_parameters(model, _adapter_key_pattern(name)), **model._bias_parameters(name)}
        parts.append((params, _strip_prefix(model, state), path))
    for name, sub in fusion_folders.items():
        state, path = _read_weights(sub, FUSION_SAFE_WEIGHTS_NAME, FUSION_WEIGHTS_NAME, allow_non_finite)
        parts.append((_select_parameters(model, _fusion_key_pattern(name)), _strip_prefix(model, state), path))
    others_path = os.path.join(folder, TRAINABLE_WEIGHTS_NAME)
    if os.path.isfile(others_path):
        named = dict(model.named_parameters())
        state, _ = _read_weights(folder, TRAINABLE_WEIGHTS_NAME, TRAINABLE_WEIGHTS_NAME, allow_non_finite)
        unknown = sorted(set(state) - set(named))
        if unknown:
            raise AdapterLoadError(f"{others_path} holds weights the model does not have, e.g. {unknown[:3]}; was it saved from another model?")
        parts.append(({k: named[k] for k in state}, state, others_path))

    for params, state, path in parts:  # every file checked before any weight changes
        _check_state(params, state, path)
    for params, state, _ in parts:
        _copy_into_shards(params, state)
    logger.info(f"Loaded {len(adapter_folders)} adapter(s) and {len(fusion_folders)} fusion(s) from {folder}.")


def _copy_into_shards(params: dict, state: dict) -> None:
    """Copy whole tensors into the parameters; a ``DTensor`` parameter (FSDP2) gets its own
    shard of the value (every rank read the same file, so no communication is needed)."""
    from .loading import _copy_state

    if "torch.distributed.tensor" not in sys.modules:
        return _copy_state(params, state)
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        for key, param in params.items():
            value = state[key].to(dtype=param.dtype)
            if isinstance(param, DTensor):
                local = distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
                param.to_local().copy_(local.to_local())
            else:
                param.copy_(value.to(device=param.device))


class AdaLoraCallback(TrainerCallback):
    """A ``transformers.Trainer`` callback that runs AdaLoRA's budget step after every optimizer
    step (before the gradients are zeroed): ``model.update_and_allocate(state.global_step)``.

    Example::

        >>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[AdaLoraCallback()])
    """

    def __init__(self, adapter_name: str | None = None):
        self.adapter_name = adapter_name

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        """The Trainer's hook after each optimizer step: the budget step for ``state.global_step``.

        Raises:
            AdapterConfigError: the Trainer's model is not an adapters model with AdaLoRA support.

        Example::

            >>> callback = AdaLoraCallback("ada")   # the Trainer calls it; by hand it reads:
            >>> callback.on_optimizer_step(args, state, control, model=model)   # update_and_allocate(state.global_step)
        """
        model = getattr(model, "module", model)
        if model is None or not hasattr(model, "update_and_allocate"):
            raise AdapterConfigError(
                f"AdaLoraCallback needs the Trainer's model to be an adapters model with an AdaLoRA adapter, got "
                f"{type(model).__name__}."
            )
        model.update_and_allocate(state.global_step, adapter_name=self.adapter_name)
        return control
