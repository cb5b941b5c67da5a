"""Switchable input embeddings for new vocabularies (AdapterHub's embedding API, MAD-X).

A model keeps named embedding matrices besides its own (``"default"``). ``add_embeddings``
creates one for a tokenizer's vocabulary, optionally copying the rows of tokens the vocabulary
shares with a reference embedding; ``set_active_embeddings`` makes one the model's input
embedding. Where the model ties its output embeddings (an LM head; on an AdapterModel every LM
head, whichever head is active) to the input embedding, each is re-tied to the active one (with
a bias per embedding where the head has a bias) and
``config.vocab_size`` follows, so MLM / CLM losses see the new vocabulary. Inactive embeddings
are not part of the model's state dict; ``save_embeddings`` / ``load_embeddings`` store them
(``embedding.safetensors``, the tokenizer in ``tokenizer/``; AdapterHub's ``embedding.pt`` is
read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from . import logging
from .errors import AdapterConfigError

logger = logging.get_logger(__name__)

__all__ = ["EmbeddingAdaptersMixin", "EMBEDDING_FILE", "LEGACY_EMBEDDING_FILE", "TOKENIZER_PATH"]

EMBEDDING_FILE = "embedding.safetensors"
LEGACY_EMBEDDING_FILE = "embedding.pt"
TOKENIZER_PATH = "tokenizer"


class EmbeddingAdaptersMixin:
    """The embedding API of a patched model (mixed into :class:`~adapters.ModelAdaptersMixin`).

    Example::

        >>> isinstance(model, EmbeddingAdaptersMixin)      # every model after adapters.init
        True
        >>> model.add_embeddings("de", tokenizer_de, reference_embedding="default", reference_tokenizer=tokenizer)
    """

    @property
    def _embedding_state(self) -> dict:
        base = self.base_model.__dict__
        if "_adapters_embeddings" not in base:
            base["_adapters_embeddings"] = {"loaded": {}, "vocab_sizes": {}, "active": "default"}
        return base["_adapters_embeddings"]

    @property
    def active_embeddings(self) -> str:
        """The name of the input embedding in use (``"default"``: the model's own).

        Example::

            >>> model.active_embeddings
            'default'
        """
        return self._embedding_state["active"]

    def _loaded_embeddings(self) -> dict:
        state = self._embedding_state
        state["loaded"][state["active"]] = self.get_input_embeddings()
        return state["loaded"]

    def add_embeddings(
        self,
        name: str,
        tokenizer,
        reference_embedding: Optional[str] = None,
        reference_tokenizer=None,
        embedding_dim: Optional[int] = None,
    ) -> None:
        """Add an input embedding for ``tokenizer``'s vocabulary and make it active.

        Rows start as the model initialises embeddings (normal, ``config.initializer_range``);
        with a reference embedding and its tokenizer, tokens present in both vocabularies start
        from the reference's vectors.

        Raises:
            AdapterConfigError: the name exists, or only one of ``reference_embedding`` /
                ``reference_tokenizer`` is given, or the reference is unknown.

        Example::

            >>> model.add_embeddings("de", de_tokenizer, reference_embedding="default",
            ...                      reference_tokenizer=en_tokenizer)
        """
        from .configuration.validation import check_name

        check_name(name, kind="embedding", argument="name")
        loaded = self._loaded_embeddings()
        if name in loaded:
            raise AdapterConfigError(f"An embedding named {name!r} exists already; delete_embeddings({name!r}) first or rename.")
        if (reference_embedding is None) != (reference_tokenizer is None):
            raise AdapterConfigError(
                f"Give both reference_embedding and reference_tokenizer, or neither; got reference_embedding="
                f"{reference_embedding!r} and reference_tokenizer={type(reference_tokenizer).__name__}."
            )
        if reference_embedding is not None and reference_embedding not in loaded:
            raise AdapterConfigError(f"No embedding named {reference_embedding!r}; the model has: {', '.join(sorted(loaded))}.")
        current = self.get_input_embeddings()
        dim = embedding_dim or current.embedding_dim
        embedding = nn.Embedding(len(tokenizer), dim, padding_idx=getattr(tokenizer, "pad_token_id", None))
        with torch.no_grad():
            embedding.weight.normal_(0.0, getattr(self.config, "initializer_range", 0.02))
            if embedding.padding_idx is not None:
                embedding.weight[embedding.padding_idx].zero_()
            if reference_embedding is not None:
                vocab, reference_vocab = tokenizer.get_vocab(), reference_tokenizer.get_vocab()
                shared = sorted(set(vocab) & set(reference_vocab))
                source = loaded[reference_embedding].weight
                rows = torch.tensor([vocab[t] for t in shared], dtype=torch.long)
                embedding.weight[rows] = source[torch.tensor([reference_vocab[t] for t in shared])].to(embedding.weight)
                logger.info(f"Embedding {name!r}: {len(shared)} of {len(vocab)} tokens start from {reference_embedding!r}.")
        embedding.to(device=current.weight.device, dtype=current.weight.dtype)
        loaded[name] = embedding
        self.set_active_embeddings(name)

    def set_active_embeddings(self, name: str) -> None:
        """Use embedding ``name`` as the model's input embedding (and tied output embedding).

        Example::

            >>> model.set_active_embeddings("default")
        """
        loaded = self._loaded_embeddings()
        if name not in loaded:
            raise AdapterConfigError(f"No embedding named {name!r}; the model has: {', '.join(sorted(loaded))}.")
        state = self._embedding_state
        embedding = loaded[name]
        current = self.get_input_embeddings().weight
        state["vocab_sizes"].setdefault(state["active"], self.config.vocab_size)
        # every tied output embedding follows, not only the active head's: an AdapterModel may hold
        # an MLM head while a classification head is active
        for output in self._tied_output_embeddings(current):
            if output.bias is not None:
                biases = output.__dict__.setdefault("_adapters_embedding_biases", {})  # one bias per embedding
                biases.setdefault(state["active"], output.bias)
                if name not in biases:
                    biases[name] = nn.Parameter(output.bias.new_zeros(embedding.num_embeddings))
                output.bias = biases[name]
            output.weight = embedding.weight
            output.out_features = embedding.num_embeddings
        previous = self.get_input_embeddings()
        self.set_input_embeddings(embedding)
        self._input_embeddings_replaced(previous, embedding)
        self.config.vocab_size = state["vocab_sizes"].get(name, embedding.num_embeddings)
        state["active"] = name

    def delete_embeddings(self, name: str) -> None:
        """Delete embedding ``name`` (the default one cannot be deleted); deleting the active one
        switches back to ``"default"``.

        Example::

            >>> model.delete_embeddings("de")
        """
        loaded = self._loaded_embeddings()
        if name == "default" or name not in loaded:
            raise AdapterConfigError(f"Cannot delete embedding {name!r}: deletable are {sorted(set(loaded) - {'default'})}.")
        if self.active_embeddings == name:
            logger.warning(f"Deleting the active embedding {name!r}; 'default' is active now.")
            self.set_active_embeddings("default")
        del loaded[name]
        for output in self._output_embedding_modules():
            output.__dict__.get("_adapters_embedding_biases", {}).pop(name, None)

    def _output_embedding_modules(self) -> list:
        """The model's output embeddings: every LM head's of an AdapterModel, else the model's own."""
        return self._language_model_outputs()

    def _tied_output_embeddings(self, weight: torch.Tensor) -> list:
        """The output embeddings whose weight is ``weight`` (tied to the input embedding)."""
        return [output for output in self._output_embedding_modules() if getattr(output, "weight", None) is weight]

    def save_embeddings(self, path: str, name: str, tokenizer=None) -> None:
        """Save embedding ``name`` (and ``tokenizer``, if given) to folder ``path``. The weights
        file is written atomically (a temporary file in ``path``, moved into place; an earlier
        ``embedding.pt`` there is removed); the tokenizer is written by its ``save_pretrained``.

        Example::

            >>> model.save_embeddings("out/de-emb", "de", tokenizer=de_tokenizer)
        """
        from .loading import _CheckpointFiles

        loaded = self._loaded_embeddings()
        if name not in loaded:
            raise AdapterConfigError(f"No embedding named {name!r}; the model has: {', '.join(sorted(loaded))}.")
        with _CheckpointFiles(path) as files:
            files.weights({"weight": loaded[name].weight}, True, EMBEDDING_FILE, LEGACY_EMBEDDING_FILE)
        if tokenizer is not None:
            tokenizer.save_pretrained(os.path.join(path, TOKENIZER_PATH))

    def load_embeddings(self, path: str, name: str, allow_non_finite: bool = False):
        """Load an embedding saved by :meth:`save_embeddings` (or AdapterHub) as ``name`` and make
        it active; returns the tokenizer saved with it, or None. The weights must be a finite
        float matrix unless ``allow_non_finite=True``.

        Example::

            >>> tokenizer = model.load_embeddings("out/de-emb", "de")
        """
        from .configuration.validation import check_name
        from .loading import AdapterLoadError, _check_values

        check_name(name, kind="embedding", argument="name")
        if name in self._loaded_embeddings():
            raise AdapterConfigError(f"An embedding named {name!r} exists already; delete_embeddings({name!r}) first or rename.")
        safe, legacy = os.path.join(path, EMBEDDING_FILE), os.path.join(path, LEGACY_EMBEDDING_FILE)
        if os.path.isfile(safe):
            from safetensors.torch import load_file

            weight, file = load_file(safe).get("weight"), safe
        elif os.path.isfile(legacy):
            weight, file = torch.load(legacy, map_location="cpu", weights_only=True), legacy
        else:
            raise FileNotFoundError(f"{path} holds no embedding: expected {EMBEDDING_FILE} or {LEGACY_EMBEDDING_FILE}.")
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise AdapterLoadError(f"{file} does not hold an embedding matrix (a 2-d tensor, under 'weight' in safetensors).")
        if not allow_non_finite:
            _check_values({"weight": weight}, file)
        tokenizer = None
        if os.path.isdir(os.path.join(path, TOKENIZER_PATH)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(os.path.join(path, TOKENIZER_PATH))
        current = self.get_input_embeddings().weight
        embedding = nn.Embedding.from_pretrained(weight.to(device=current.device, dtype=current.dtype), freeze=False)
        self._loaded_embeddings()[name] = embedding
        self.set_active_embeddings(name)
        return tokenizer
