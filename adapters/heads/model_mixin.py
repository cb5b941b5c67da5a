"""Named prediction heads on an AdapterModel: adding, choosing, running, saving and loading them.

Which head runs (first match wins):

1. the ``head=`` argument of the forward call;
2. the ``head_setup`` of an enclosing :class:`~adapters.AdapterSetup`, or else the heads its
   adapter setup names, where they all exist (as for ``model.active_head`` below);
3. ``model.active_head``, which follows the adapters: activating a setup (``set_active_adapters``,
   ``train_adapter``) whose last / outer adapter has the name of a head makes that head active
   (``Stack("lang", "task")`` -> head ``task``; ``Parallel("a", "b")`` -> heads ``a`` and ``b``;
   ``BatchSplit("a", "b", batch_sizes=...)`` -> head ``a`` on the first rows, ``b`` on the rest).

With ``Parallel`` (the batch replicated once per branch) every branch goes through its own head
(or the one active head) and the result is a :class:`~adapters.heads.MultiHeadOutput`: a list of
per-branch outputs, ``loss`` the sum of the branch losses.

Head checkpoints use AdapterHub's layout: ``head_config.json`` (``{"config": {"head_type": ...},
"name", "hidden_size", "model_type", "model_class", "model_name", "version"}``) and
``model_head.safetensors`` (legacy ``pytorch_model_head.bin``) with keys ``heads.<name>.<i>...``.
"""

from __future__ import annotations

import copy
import re
from typing import Optional, Union

import torch
from torch import nn
from transformers.utils import ModelOutput

from .. import logging
from ..compat import CACHE_NAME, returned_cache
from ..composition import BatchSplit, Parallel, Stack
from ..context import AdapterSetup, ForwardContext
from ..errors import AdapterConfigError, AdapterError, CompositionError
from ..methods.invertible import CONTAINER as INVERTIBLE_CONTAINER
from ..methods.invertible import invert_before
from ..static_heads import ModelWithHeadsAdaptersMixin
from .checkpoints import HEAD_CONFIG_NAME, HEAD_SAFE_WEIGHTS_NAME, HEAD_WEIGHTS_NAME, HeadCheckpointMixin, _head_arguments
from .base import CUSTOM_HEAD_TYPES, HEAD_TYPES, MultiHeadOutput, PredictionHead, head_class, register_custom_head

logger = logging.get_logger(__name__)

__all__ = ["FlexibleHeadsMixin", "HEAD_CONFIG_NAME", "HEAD_WEIGHTS_NAME", "HEAD_SAFE_WEIGHTS_NAME", "heads_from_setup"]



def heads_from_setup(setup) -> Union[list, BatchSplit, None]:
    """The heads an adapter setup names (AdapterHub's rule): the last adapter of a Stack, every
    branch's last adapter of a Parallel, a BatchSplit of the parts' last adapters.

    Example::

        >>> heads_from_setup(Stack("lang", "task"))
        ['task']
        >>> heads_from_setup(Parallel("a", Stack("b", "c")))
        ['a', 'c']
    """
    block = setup
    if isinstance(block, Stack):
        block = block.children[-1]
    if isinstance(block, str):
        return [block]
    if isinstance(block, Parallel):
        return [child if isinstance(child, str) else child.last() for child in block.children]
    if isinstance(block, BatchSplit):
        names = [child if isinstance(child, str) else child.last() for child in block.children]
        return BatchSplit(*names, batch_sizes=list(block.batch_sizes))
    return None


def _split_rows(value, parts: list[int], total: int):
    """``value`` cut along its first dimension into ``len(parts)`` pieces in proportion to
    ``parts`` (rows per example may be more than one: multiple-choice flattening)."""
    rows = value.shape[0]
    if rows % total:
        raise CompositionError(
            f"A head input of {rows} rows cannot be cut into parts of sizes {parts} (one part per active head); "
            f"give every batched input a multiple of {total} rows."
        )
    scale = rows // total
    pieces, start = [], 0
    for size in parts:
        pieces.append(value[start : start + size * scale])
        start += size * scale
    return pieces


class FlexibleHeadsMixin(HeadCheckpointMixin, ModelWithHeadsAdaptersMixin):
    """The head API of the AdapterModel classes (AdapterHub's names and signatures).

    Example::

        >>> model = AutoAdapterModel.from_pretrained("path/to/bert")
        >>> model.add_classification_head("sentiment", num_labels=3)
        >>> model.add_adapter("sentiment", config="seq_bn")
        >>> model.train_adapter("sentiment")     # head "sentiment" is active now
    """

    head_types: tuple[str, ...] = ()
    #: head type -> the class this model builds for it instead of the registered one (ModernBERT's
    #: own heads)
    head_classes: dict = {}
    #: how the sequence representation of classification heads is taken: "first" token or "last"
    #: non-padding token
    cls_pooling: str = "first"

    # -- state ---------------------------------------------------------------------------------------
    @property
    def _active_heads(self):
        return self.__dict__.setdefault("_adapters_active_heads", None)

    @_active_heads.setter
    def _active_heads(self, value) -> None:
        self.__dict__["_adapters_active_heads"] = value
        # one active head with labels: the model config carries them, so that pipelines and
        # transformers' code show the head's label names (AdapterHub switches them the same way)
        if isinstance(value, list) and len(value) == 1 and value[0] in self.heads:
            label2id = self.heads[value[0]].config.get("label2id")
            if label2id:
                self.config.label2id = {str(label): int(index) for label, index in label2id.items()}
                self.config.id2label = {int(index): str(label) for label, index in label2id.items()}

    @property
    def active_head(self) -> Union[str, list, BatchSplit, None]:
        """The active head: a name, a list of names (several heads, or one per Parallel branch), a
        :class:`~adapters.BatchSplit` of names, or None. Settable.

        Example::

            >>> model.active_head = "sentiment"
            >>> model.active_head = ["a", "b"]        # with Parallel("a", "b")
        """
        heads = self._active_heads
        if isinstance(heads, list) and len(heads) == 1:
            return heads[0]
        return heads

    @active_head.setter
    def active_head(self, heads) -> None:
        self._active_heads = self._check_head_setup(heads)

    def _check_head_setup(self, heads):
        if heads is None or heads == "" or heads == []:
            return None
        names = [heads] if isinstance(heads, str) else list(heads)
        if not all(isinstance(n, str) for n in names):
            raise AdapterConfigError(f"A head setup is a head name, a list of names or a BatchSplit of names; got {heads!r}.")
        unknown = [n for n in names if n not in self.heads]
        if unknown:
            raise AdapterConfigError(f"No head named {unknown[0]!r}; the model has: {', '.join(sorted(self.heads)) or 'none'}.")
        return heads if isinstance(heads, BatchSplit) else names

    def _heads_follow_setup(self, setup) -> None:
        """Called when an adapter setup is activated: activate the heads it names, if they all exist."""
        names = heads_from_setup(setup) if setup is not None else None
        if names and all(n in self.heads for n in names):
            self._active_heads = names if isinstance(names, BatchSplit) else list(names)
        elif names:
            logger.info(f"No prediction head matches adapter setup {setup}; active head stays {self.active_head!r}.")

    # -- adding and removing ---------------------------------------------------------------------------
    def _check_head_type(self, head_type: str) -> None:
        builtin = head_type in HEAD_TYPES and head_type not in CUSTOM_HEAD_TYPES
        if builtin and head_type not in self.head_types:
            raise AdapterConfigError(
                f"{type(self).__name__} ({self.config.model_type}) does not support {head_type!r} heads; "
                f"it supports: {', '.join(self.head_types)}."
            )

    def _check_new_head(self, head_name: str, overwrite_ok: bool) -> None:
        from ..configuration.validation import check_name

        check_name(head_name, kind="head", argument="head_name")  # names are never paths
        if head_name in self.heads and not overwrite_ok:
            raise AdapterConfigError(
                f"A head named {head_name!r} exists already; pass overwrite_ok=True to replace it or choose another name."
            )

    def _add_head(self, head_type: str, head_name: str, overwrite_ok: bool, set_active: bool = True, **kwargs) -> None:
        """Check the name (and a requested pooler), build the head and add it: the ``add_*_head`` methods."""
        self._check_new_head(head_name, overwrite_ok)
        if kwargs.get("use_pooler") and not self._has_pooler():
            raise AdapterConfigError(f"{type(self).__name__} has no pooler; add the head with use_pooler=False.")
        self.add_prediction_head(self._build_head(head_type, head_name, **kwargs), overwrite_ok=overwrite_ok, set_active=set_active)

    def _has_pooler(self) -> bool:
        """Whether the base model's output carries a pooler output for ``use_pooler`` heads."""
        return getattr(self.base_model, "pooler", None) is not None

    def _build_head(self, head_type: str, head_name: str, **kwargs) -> PredictionHead:
        """A new, initialised head (not yet part of the model)."""
        self._check_head_type(head_type)
        cls = self.head_classes.get(head_type) or head_class(head_type)
        reference = next(self.base_model.parameters())
        try:
            head = cls(self, head_name, **kwargs)
        except AdapterError:  # the head refused an argument (message names it): as it is
            raise
        except TypeError as error:
            raise AdapterConfigError(f"Invalid arguments for a {head_type!r} head: {error}.") from error
        head.config["head_type"] = head_type  # also for a built-in class registered under a custom name
        if isinstance(head, PredictionHead):
            head.init_weights(self)
        else:
            head.apply(self._init_weights)
        return head.to(device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None)

    def add_prediction_head(self, head: nn.Module, overwrite_ok: bool = False, set_active: bool = True) -> None:
        """Insert a built head under ``head.name`` (tying its output embedding where the model ties
        word embeddings) and make it active.

        Example::

            >>> model.add_prediction_head(MyHead(model, "mine"))
        """
        self._check_new_head(head.name, overwrite_ok)
        if getattr(head, "config", None) is None or "head_type" not in head.config:
            raise AdapterConfigError(
                f"A prediction head needs a config dict with a 'head_type' (see PredictionHead); head {head.name!r} has "
                f"config={getattr(head, 'config', None)!r}."
            )
        self.heads[head.name] = head
        self._tie_head(head)
        output = head.get_output_embeddings() if hasattr(head, "get_output_embeddings") else None
        if output is not None and INVERTIBLE_CONTAINER in self.base_model._modules:
            invert_before(self, output)  # invertible adapters added before this LM head
        self._sync_head_configs()
        if set_active:
            self._active_heads = [head.name]
        logger.info(f"Added head {head.name!r} with config {head.config}.")

    def add_prediction_head_from_config(
        self, head_name: str, config: dict, overwrite_ok: bool = False, set_active: bool = True
    ) -> None:
        """Add a head from its config dict (as stored in ``head_config.json``).

        Example::

            >>> model.add_prediction_head_from_config("cls", {"head_type": "classification", "num_labels": 3})
        """
        self._check_new_head(head_name, overwrite_ok)
        head_type, kwargs = _head_arguments(config)
        head = self._build_head(head_type, head_name, **kwargs)
        self.add_prediction_head(head, overwrite_ok=overwrite_ok, set_active=set_active)

    def add_classification_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 2,
        activation_function: Optional[str] = "tanh",
        overwrite_ok: bool = False,
        multilabel: bool = False,
        id2label: Optional[dict] = None,
        use_pooler: bool = False,
        dropout_prob: Optional[float] = None,
    ) -> None:
        """Add a sequence classification head (``multilabel=True``: independent sigmoid per label,
        BCE loss) and make it active.

        Raises:
            AdapterConfigError: the name exists (and not ``overwrite_ok``), or the arguments do not fit
                (``num_labels < 1``, unknown activation, ``use_pooler`` on a model without pooler).
                The model is left unchanged.

        Example::

            >>> model.add_classification_head("sst2", num_labels=2, id2label={0: "neg", 1: "pos"})
        """
        self._add_head(
            "multilabel_classification" if multilabel else "classification", head_name, overwrite_ok, num_labels=num_labels,
            layers=layers, activation_function=activation_function, id2label=id2label, use_pooler=use_pooler,
            dropout_prob=dropout_prob,
        )

    def add_image_classification_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: Optional[str] = "tanh",
        overwrite_ok: bool = False,
        multilabel: bool = False,
        id2label: Optional[dict] = None,
        use_pooler: bool = False,
        dropout_prob: Optional[float] = None,
        pooling: str = "cls",
    ) -> None:
        """Add an image classification head (AdapterHub's ``image_classification``: an MLP on the
        [CLS] final state, or with ``pooling="mean_patches"`` on the mean of the patch states) and
        make it active.

        Example::

            >>> model.add_image_classification_head("cifar10", num_labels=10)
        """
        self._add_head(
            "image_classification", head_name, overwrite_ok, num_labels=num_labels, layers=layers,
            activation_function=activation_function, multilabel=multilabel, id2label=id2label, use_pooler=use_pooler,
            dropout_prob=dropout_prob, pooling=pooling,
        )

    def add_multiple_choice_head(
        self,
        head_name: str,
        num_choices: int = 2,
        layers: int = 2,
        activation_function: Optional[str] = "tanh",
        overwrite_ok: bool = False,
        id2label: Optional[dict] = None,
        use_pooler: bool = False,
    ) -> None:
        """Add a multiple choice head (inputs of shape ``(batch, num_choices, seq)``).

        Example::

            >>> model.add_multiple_choice_head("swag", num_choices=4)
        """
        self._add_head(
            "multiple_choice", head_name, overwrite_ok, num_choices=num_choices, layers=layers,
            activation_function=activation_function, id2label=id2label, use_pooler=use_pooler,
        )

    def add_tagging_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: Optional[str] = "tanh",
        overwrite_ok: bool = False,
        id2label: Optional[dict] = None,
    ) -> None:
        """Add a token classification head.

        Example::

            >>> model.add_tagging_head("ner", num_labels=9)
        """
        self._add_head(
            "tagging", head_name, overwrite_ok, num_labels=num_labels, layers=layers,
            activation_function=activation_function, id2label=id2label,
        )

    def add_qa_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: Optional[str] = "tanh",
        overwrite_ok: bool = False,
        id2label: Optional[dict] = None,
    ) -> None:
        """Add an extractive question answering head (start and end logits).

        Example::

            >>> model.add_qa_head("squad")
        """
        self._add_head(
            "question_answering", head_name, overwrite_ok, num_labels=num_labels, layers=layers,
            activation_function=activation_function, id2label=id2label,
        )

    def add_dependency_parsing_head(
        self, head_name: str, num_labels: int = 2, overwrite_ok: bool = False, id2label: Optional[dict] = None
    ) -> None:
        """Add a biaffine dependency-parsing head (:class:`~adapters.BiaffineParsingHead`: arc and
        relation scores over words pooled from subword tokens; the forward call takes
        ``word_starts``, and ``labels_arcs`` / ``labels_rels`` for the loss) and make it active.

        Raises:
            AdapterConfigError: the model does not support parsing heads, the name exists (and not
                ``overwrite_ok``), ``num_labels < 1``, or ``id2label`` does not name every label.
                The model is left unchanged.

        Example::

            >>> model.add_dependency_parsing_head("ud", num_labels=3, id2label={0: "root", 1: "nsubj", 2: "obj"})
            >>> model(input_ids, word_starts=word_starts, labels_arcs=arcs, labels_rels=rels).loss
        """
        self._add_head("dependency_parsing", head_name, overwrite_ok, num_labels=num_labels, id2label=id2label)

    def add_masked_lm_head(
        self,
        head_name: str,
        activation_function: Optional[str] = "gelu",
        layers: int = 2,
        overwrite_ok: bool = False,
        **kwargs,
    ) -> None:
        """Add a BERT-style masked LM head (``dense -> act -> LayerNorm -> decoder``; the decoder is
        tied to the input embeddings where the model ties word embeddings).

        Example::

            >>> model.add_masked_lm_head("mlm")
        """
        self._add_head(
            "masked_lm", head_name, overwrite_ok, activation_function=activation_function, layers=layers, **kwargs
        )

    def add_causal_lm_head(
        self,
        head_name: str,
        activation_function: Optional[str] = "gelu",
        layers: int = 2,
        overwrite_ok: bool = False,
        layer_norm: bool = True,
        bias: bool = True,
        **kwargs,
    ) -> None:
        """Add a causal LM head; ``generate`` uses it. The defaults are AdapterHub's (a transform
        layer with a norm before the output embedding); ``layers=1, bias=False`` gives the plain LM
        head of decoder models (``logits = h Eᵀ``, tied where the model ties word embeddings).
        ``logit_softcapping=c`` returns ``c · tanh(logits / c)``; by default it is the model's
        ``config.final_logit_softcapping`` (Gemma 2), ``0`` turns it off.

        Example::

            >>> model.add_causal_lm_head("lm", layers=1, bias=False)
            >>> model.generate(input_ids, max_new_tokens=16)
        """
        self._add_head(
            "causal_lm", head_name, overwrite_ok, activation_function=activation_function if layers > 1 else None,
            layers=layers, layer_norm=layer_norm and layers > 1, bias=bias, **kwargs,
        )

    def add_seq2seq_lm_head(
        self,
        head_name: str,
        layers: int = 1,
        overwrite_ok: bool = False,
        activation_function: Optional[str] = None,
        layer_norm: bool = False,
        bias: bool = False,
    ) -> None:
        """Add a sequence-to-sequence LM head on the decoder of an encoder-decoder (T5, BART,
        Whisper, ...); ``generate`` uses it. The default (``layers=1``) is the model's own LM head:
        the output embedding tied to the word embeddings, T5's ``d^{-1/2}`` output scaling where
        its config asks for it; ``bias=True`` adds a bias (BART's ``final_logits_bias``).
        ``labels`` give the loss; without ``decoder_input_ids`` the decoder reads the labels
        shifted right, as in transformers.

        Raises:
            AdapterConfigError: the model is not an encoder-decoder, the name exists (and not
                ``overwrite_ok``), or ``layers < 1``. The model is left unchanged.

        Example::

            >>> model.add_seq2seq_lm_head("translate")
            >>> model(input_ids=ids, labels=target_ids).loss
            >>> model.generate(input_ids=ids, max_new_tokens=20)
        """
        self._add_head(
            "seq2seq_lm", head_name, overwrite_ok, layers=layers, activation_function=activation_function,
            layer_norm=layer_norm, bias=bias,
        )

    def register_custom_head(self, identifier: str, head: type) -> None:
        """Register a custom head class ``head`` (for every model; see :func:`adapters.register_custom_head`).

        Example::

            >>> model.register_custom_head("mean_pool", MeanPoolHead)
        """
        register_custom_head(identifier, head)

    def add_custom_head(self, head_type: str, head_name: str, overwrite_ok: bool = False, set_active: bool = True, **kwargs) -> None:
        """Add a head of a registered custom type (``head_class(model, head_name, **kwargs)``).

        Raises:
            AdapterConfigError: ``head_type`` is not registered (register it with
                :func:`adapters.register_custom_head`), or the name exists.

        Example::

            >>> adapters.register_custom_head("mean_pool", MeanPoolHead)
            >>> model.add_custom_head("mean_pool", "pooled", num_labels=3)
        """
        self._add_head(head_type, head_name, overwrite_ok, set_active=set_active, **kwargs)

    def delete_head(self, head_name: str) -> None:
        """Delete a head (the active head setting drops it).

        Raises:
            ValueError: no head of that name.

        Example::

            >>> model.delete_head("sentiment")
        """
        if head_name not in self.heads:
            raise AdapterConfigError(f"No head named {head_name!r}; the model has: {', '.join(sorted(self.heads)) or 'none'}.")
        removed = set(map(id, self.heads[head_name].modules()))
        self._adapter_hosts[:] = [host for host in self._adapter_hosts if id(host) not in removed]
        del self.heads[head_name]
        active = self._active_heads
        if active is not None and head_name in list(active):
            self._active_heads = None
        self._sync_head_configs()

    def get_prediction_heads_config(self) -> dict:
        """``{head name: head config}`` of every head (copies; AdapterHub's method).

        Example::

            >>> model.add_classification_head("sst2", num_labels=2)
            >>> model.get_prediction_heads_config()["sst2"]["head_type"]
            'classification'
        """
        return {name: copy.deepcopy(head.config) for name, head in self.heads.items()}

    def average_head(self, head_name: str, head_list, weights: Optional[list] = None, normalize_weights: bool = True,
                     overwrite_ok: bool = False, set_active: bool = False) -> None:
        """Add head ``head_name`` whose every weight is the weighted sum of the weights of the heads
        in ``head_list``: ``W = Σ_i w_i W_i`` with ``w_i = weights[i] / Σ_j weights[j]``
        (``normalize_weights=False``: the weights as given; no weights: ``1/n`` each), as
        AdapterHub's ``average_head`` does. The heads must be of one class and one config (up to
        ``dropout_prob``); the new head has their config.

        Args:
            head_name: the new head's name.
            head_list: head names, or ``{head name: weight}`` (then ``weights`` must be None;
                AdapterHub documents this form and fails on it).
            weights: one weight per head of ``head_list``.
            normalize_weights: divide the weights by their sum.
            overwrite_ok: replace a head named ``head_name``.
            set_active: make the new head active.

        Raises:
            AdapterConfigError: no heads, an unknown head, heads of different classes or configs,
                weights that do not match the heads (or sum to 0 with ``normalize_weights``), or the
                name exists (and not ``overwrite_ok``). The model is left unchanged.

        Example::

            >>> model.average_head("avg", ["task_a", "task_b"], weights=[0.7, 0.3], set_active=True)
        """
        if isinstance(head_list, dict):
            if weights is not None:
                raise AdapterConfigError(
                    "average_head: give the weights either in head_list ({name: weight}) or in weights, not both."
                )
            names, weights = list(head_list), list(head_list.values())
        elif isinstance(head_list, (list, tuple)):
            names = list(head_list)
        else:
            raise AdapterConfigError(f"average_head: head_list must be a list of head names or a {{name: weight}} dict, not {head_list!r}.")
        if not names:
            raise AdapterConfigError("average_head: head_list is empty; name at least one head to average.")
        unknown = [name for name in names if name not in self.heads]
        if unknown:
            raise AdapterConfigError(
                f"average_head: no head named {', '.join(map(repr, unknown))}; the model has: {', '.join(sorted(self.heads)) or 'none'}."
            )
        self._check_new_head(head_name, overwrite_ok)
        first = self.heads[names[0]]
        for name in names[1:]:
            if type(self.heads[name]) is not type(first):
                raise AdapterConfigError(
                    f"average_head: heads of different classes cannot be averaged ({names[0]!r} is a {type(first).__name__}, "
                    f"{name!r} a {type(self.heads[name]).__name__})."
                )
            differing = sorted(
                key for key in set(first.config) | set(self.heads[name].config)
                if key != "dropout_prob" and first.config.get(key) != self.heads[name].config.get(key)
            )
            if differing:
                raise AdapterConfigError(
                    f"average_head: heads {names[0]!r} and {name!r} differ in {', '.join(differing)}; only heads of one config "
                    f"(up to dropout_prob) can be averaged."
                )
        if weights is None:
            weights = [1.0 / len(names)] * len(names)
        else:
            weights = list(weights)
            if len(weights) != len(names) or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
                raise AdapterConfigError(f"average_head: weights must be {len(names)} numbers, one per head, not {weights!r}.")
            if normalize_weights:
                total = sum(weights)
                if total == 0:
                    raise AdapterConfigError(f"average_head: weights {weights!r} sum to 0 and cannot be normalised.")
                weights = [w / total for w in weights]
        averaged = {}
        for name, weight in zip(names, weights):
            for key, value in self.heads[name].state_dict().items():
                averaged[key] = averaged[key] + weight * value if key in averaged else weight * value
        head = copy.deepcopy(first)
        head.name = head_name
        head.load_state_dict(averaged)
        if head_name in self.heads:
            self.delete_head(head_name)
        self.add_prediction_head(head, overwrite_ok=True, set_active=set_active)

    def _sync_head_configs(self) -> None:
        """Keep ``config.prediction_heads`` (what ``save_pretrained`` stores) and the tied-weight
        table equal to the heads."""
        self.config.prediction_heads = {name: copy.deepcopy(head.config) for name, head in self.heads.items()}
        # all submodels: the base model's own ties (T5's encoder/decoder embed_tokens -> shared) stay
        self.all_tied_weights_keys = self.get_expanded_tied_weights_keys(all_submodels=True)

    # -- tied output embeddings --------------------------------------------------------------------------
    @property
    def _tied_weights_keys(self) -> dict:
        """transformers' tied-weight table: each tied LM head's output embedding -> the input
        embedding (``save_pretrained`` stores the matrix once, ``from_pretrained`` re-ties)."""
        heads = self.__dict__.get("_modules", {}).get("heads")
        if heads is None:
            return {}
        source = self._input_embedding_key()
        tied = {}
        for name, head in heads.items():
            output = head.get_output_embeddings() if hasattr(head, "get_output_embeddings") else None
            if output is not None and self._ties_head(head):
                index = next(i for i, m in head.named_children() if m is output)
                tied[f"heads.{re.escape(name)}.{index}.weight"] = source
        return tied

    def _input_embedding_key(self) -> str:
        embedding = self.get_input_embeddings()
        for path, module in self.named_modules():
            if module is embedding:
                return f"{path}.weight"
        raise ValueError("The model's input embedding is not one of its modules.")

    def _ties_head(self, head) -> bool:
        output = head.get_output_embeddings()
        embedding = self.get_input_embeddings()
        return (
            bool(getattr(self.config, "tie_word_embeddings", False))
            and output is not None
            and tuple(output.weight.shape) == tuple(embedding.weight.shape)
        )

    def _tie_head(self, head) -> None:
        if self._ties_head(head):
            head.get_output_embeddings().weight = self.get_input_embeddings().weight

    def tie_weights(self, missing_keys=None, recompute_mapping: bool = True):
        """transformers' tying, then every LM head's output embedding to the input embedding.

        Example::

            >>> model.add_causal_lm_head("lm")
            >>> model.tie_weights()          # also called by from_pretrained / resize_token_embeddings
            >>> model.heads["lm"].get_output_embeddings().weight is model.get_input_embeddings().weight
            True
        """
        result = super().tie_weights(missing_keys=missing_keys, recompute_mapping=recompute_mapping)
        heads = self.__dict__.get("_modules", {}).get("heads")
        for head in (heads or {}).values():
            self._tie_head(head)
        return result

    def _language_model_outputs(self) -> list[nn.Module]:
        """Every LM head's output embedding: each runs the invertible adapters' inverse first."""
        heads = self.__dict__.get("_modules", {}).get("heads") or {}
        outputs = [h.get_output_embeddings() for h in heads.values() if hasattr(h, "get_output_embeddings")]
        return [output for output in outputs if output is not None]

    def get_output_embeddings(self) -> Optional[nn.Module]:
        """The active head's output embedding (LM heads), else None.

        Example::

            >>> model.add_masked_lm_head("mlm")      # becomes the active head
            >>> model.get_output_embeddings() is model.heads["mlm"].get_output_embeddings()
            True
        """
        active = self._active_heads
        if isinstance(active, list) and len(active) == 1 and active[0] in self.heads:
            head = self.heads[active[0]]
            return head.get_output_embeddings() if hasattr(head, "get_output_embeddings") else None
        return None

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        """Replace the active LM head's output embedding (used when resizing the vocabulary).

        Example::

            >>> model.add_causal_lm_head("lm")
            >>> model.resize_token_embeddings(len(tokenizer))   # calls set_output_embeddings
        """
        active = self._active_heads
        if isinstance(active, list) and len(active) == 1 and hasattr(self.heads[active[0]], "set_output_embeddings"):
            self.heads[active[0]].set_output_embeddings(new_embeddings)

    # -- running -------------------------------------------------------------------------------------------
    def _head_only_inputs(self) -> set:
        """Keyword inputs of the forward call that go to the heads, never to the base model: the
        target names (``get_label_names``) and ``extra_inputs`` of every head (a parsing head's
        ``word_starts``, ``labels_arcs``, ``labels_rels``)."""
        names = set()
        for head in self.heads.values():
            names.update(getattr(head, "extra_inputs", ()))
            if hasattr(head, "get_label_names"):
                names.update(head.get_label_names())
        return names

    def _heads_in_force(self, head_name=None):
        context = AdapterSetup.get_context()
        if head_name is not None:
            heads = head_name
        elif context is not None and context.head_setup is not None and len(self.heads) > 0:
            heads = context.head_setup
        else:
            heads = self._active_heads
            # an AdapterSetup without head_setup selects the heads its adapters name, as the
            # model's active setup does (AdapterHub's rule: ``with AdapterSetup("a")`` runs head "a")
            named = heads_from_setup(context.adapter_setup) if context is not None and context.adapter_setup is not None else None
            if named and all(n in self.heads for n in named):
                heads = named if isinstance(named, BatchSplit) else list(named)
        return self._check_head_setup(heads)

    def forward_head(self, outputs, head_name=None, cls_output=None, attention_mask=None, **kwargs):
        """Run the head(s) in force (see the module docstring) on the base model's ``outputs``;
        without any head, return ``outputs`` unchanged.

        ``kwargs`` carry ``labels`` (or ``start_positions`` / ``end_positions``) and
        ``pooled_output``; tensors with a batch dimension are split along with the rows under
        ``Parallel`` and ``BatchSplit``.

        Raises:
            AdapterConfigError: an unknown head.
            CompositionError: as many Parallel branches as neither one head nor one head per branch.

        Example::

            >>> outputs = model.base_model(**batch)
            >>> model.forward_head(outputs, head_name="sentiment", labels=labels)
        """
        heads = self._heads_in_force(head_name)
        if not heads:
            return outputs
        context = ForwardContext.get_context()
        channels = context.parallel_channels if context is not None else 1
        if channels > 1:
            explicit = head_name is not None or AdapterSetup.get_context_head_setup() is not None
            if len(heads) == 1 and not explicit:
                named = heads_from_setup(context.setup) if context.setup is not None else None
                with_head = [n for n in (named or ()) if n in self.heads]
                if with_head and len(with_head) < len(named):  # AdapterHub refuses this too
                    raise CompositionError(
                        f"The active setup {context.setup} runs {channels} Parallel branches; heads exist for "
                        f"{with_head} but not for {[n for n in named if n not in self.heads]}, so the branches cannot "
                        f"each get their own head. Add a head for every branch (named as its adapter), or pass "
                        f"head=... for one head on all branches."
                    )
            # head inputs the base model never saw (a parsing head's word_starts, QA positions) still have
            # the caller's rows: repeat them once per branch, as the base model's inputs were
            rows = outputs[0].shape[0]
            kwargs = {
                key: value.repeat(channels, *([1] * (value.dim() - 1)))
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] * channels == rows else value
                for key, value in kwargs.items()
            }
            if len(heads) == 1:
                heads = list(heads) * channels
            elif len(heads) != channels:
                raise CompositionError(
                    f"The active setup runs {channels} Parallel branches but {len(heads)} heads are active ({list(heads)}); "
                    f"activate one head, or one per branch."
                )
            return self._forward_parts(list(heads), [1] * channels, outputs, cls_output, attention_mask, kwargs)
        if isinstance(heads, BatchSplit):
            return self._forward_parts(list(heads), list(heads.batch_sizes), outputs, cls_output, attention_mask, kwargs)
        if len(heads) > 1:
            results = [self.heads[name](outputs, cls_output, attention_mask, True, **kwargs) for name in heads]
            return _multi_output(results, outputs)
        return self.heads[heads[0]](outputs, cls_output, attention_mask, True, **kwargs)

    def _forward_parts(self, names, sizes, outputs, cls_output, attention_mask, kwargs):
        """Head ``names[i]`` on the i-th block of rows (blocks in proportion to ``sizes``)."""
        total = sum(sizes)
        rows = outputs[0].shape[0]
        if rows % total:
            raise CompositionError(
                f"The batch of {rows} rows cannot be split into parts of sizes {sizes} (one part per active head); "
                f"give a batch of a multiple of {total} rows."
            )

        def split(value):
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return _split_rows(value, sizes, total)
            return [value] * len(sizes)

        base_fields = {k: split(v) for k, v in outputs.items()}
        cls_parts, mask_parts = split(cls_output), split(attention_mask)
        kwarg_parts = {k: split(v) for k, v in kwargs.items()}
        results = []
        for i, name in enumerate(names):
            part = type(outputs)(**{k: v[i] for k, v in base_fields.items()})
            results.append(
                self.heads[name](part, cls_parts[i], mask_parts[i], True, **{k: v[i] for k, v in kwarg_parts.items()})
            )
        return _multi_output(results, outputs)

    def get_labels_dict(self, head_name: Optional[str] = None) -> Optional[dict]:
        """``{id: label}`` of a head (default: the active one), or None for heads without labels.

        Example::

            >>> model.get_labels_dict("sst2")
            {0: 'neg', 1: 'pos'}
        """
        name = head_name or self.active_head
        if not isinstance(name, str) or name not in self.heads:
            raise AdapterConfigError(f"No head named {name!r}; the model has: {', '.join(sorted(self.heads)) or 'none'}.")
        label2id = self.heads[name].config.get("label2id")
        return {index: label for label, index in label2id.items()} if label2id else None

    def get_labels(self, head_name: Optional[str] = None) -> Optional[list]:
        """The labels a head predicts, in id order (None for heads without labels).

        Example::

            >>> model.get_labels("sst2")
            ['neg', 'pos']
        """
        labels = self.get_labels_dict(head_name)
        return [labels[i] for i in sorted(labels)] if labels else None











def _multi_output(results: list, outputs) -> MultiHeadOutput:
    losses = [r.get("loss") if isinstance(r, ModelOutput) else None for r in results]
    loss = torch.stack([l.reshape(()) for l in losses]).sum() if results and all(l is not None for l in losses) else None
    return MultiHeadOutput(head_outputs=results, loss=loss, **{CACHE_NAME: returned_cache(outputs)})
