"""The biaffine dependency-parsing head (AdapterHub's ``dependency_parsing`` head type).

The parser of Glavaš & Vulić, "Is Supervised Syntactic Parsing Beneficial for Language
Understanding?" (2021), after Dozat & Manning's deep biaffine attention, on top of a transformer
encoder.

**Words from subword tokens.** ``word_starts`` gives, per sequence, the token positions where the
words begin, followed by the position just after the last word: word ``j`` is the mean of the
(dropped-out) last hidden states ``h_t`` for ``word_starts[j] <= t < word_starts[j + 1]``. Entries
equal to the model's ``pad_token_id`` are skipped and the list ends at the first entry ``<= 0`` (so
rows are padded with ``pad_token_id`` or 0). The ``n`` word vectors ``w_1..w_n`` fill the first
``n`` of ``seq`` rows (``seq``: the token sequence length), the rest are zeros. (AdapterHub's rule,
kept so that its users' inputs mean the same here; on models whose ``pad_token_id`` is 1, such as
RoBERTa, it means no word can start at token 1.)

**Candidate heads.** Position 0 is the root, represented by the first token's state ``h_0``
([CLS]); positions ``1..seq`` are the word rows: ``r = [h_0; w_1; ...; w_seq]``.

**Biaffine scores.** With ``x' = [x; 1]`` (a bias feature), :class:`Biaffine` with weight
``U`` of shape ``(n_out, n_in + bias_x, n_in + bias_y)`` scores every pair as
``s[o, i, j] = x'_iᵀ U_o y'_j``. The arc scorer has one output and a bias on the dependent side
only, ``arc[i, j] = [w_i; 1]ᵀ U_arc r_j`` — the score of word ``i`` attaching to head ``j``; the
relation scorer has ``num_labels`` outputs and bias features on both sides,
``rel[i, j, l] = [w_i; 1]ᵀ U_l [r_j; 1]``. Both weights start at zero (AdapterHub's
initialisation: all scores 0 until trained).

**Loss** (given ``labels_arcs`` and ``labels_rels``, one entry per word row, the head position
for arcs; positions equal to ``pad_token_id`` — or ``-100`` — are ignored): the cross-entropy of
the arc scores over the candidate heads, plus the cross-entropy of the relation scores at the
gold head, ``CE(arc[i, :], a_i) + CE(rel[i, a_i, :], l_i)`` averaged over the words. As in
AdapterHub, a gold arc equal to ``pad_token_id`` (BERT's 0, the root) is ignored as padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers.utils import ModelOutput

from ..errors import AdapterConfigError
from .base import PredictionHead, model_dropout, register_head_type

__all__ = ["Biaffine", "BiaffineParsingHead", "DependencyParsingOutput"]


@dataclass
class DependencyParsingOutput(ModelOutput):
    """What a dependency-parsing head returns: ``arc_preds`` ``(batch, seq, seq + 1)`` (the score of
    each word row attaching to each candidate head, 0 = the root), ``rel_preds``
    ``(batch, seq, seq + 1, num_labels)`` (each relation label's score for every such attachment),
    ``loss`` when arc and relation labels were given, and the base model's hidden states and
    attentions when asked for.

    Example::

        >>> out = model(input_ids, word_starts=word_starts)
        >>> out.arc_preds.argmax(-1)          # the predicted head of every word row
    """

    loss: Optional[torch.FloatTensor] = None
    rel_preds: Optional[torch.FloatTensor] = None
    arc_preds: Optional[torch.FloatTensor] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


class Biaffine(nn.Module):
    """The biaffine scorer ``s[b, o, i, j] = [x_bi; 1]ᵀ U_o [y_bj; 1]`` (each ``; 1`` only where
    ``bias_x`` / ``bias_y`` is set) for every pair of rows of ``x`` and ``y``; ``U`` (``weight``,
    shape ``(n_out, n_in + bias_x, n_in + bias_y)``) starts at zero.

    Example::

        >>> scorer = Biaffine(n_in=32, n_out=4)
        >>> scorer(torch.randn(2, 5, 32), torch.randn(2, 6, 32)).shape
        torch.Size([2, 4, 5, 6])
    """

    def __init__(self, n_in: int, n_out: int = 1, bias_x: bool = True, bias_y: bool = True):
        super().__init__()
        for field, value in (("n_in", n_in), ("n_out", n_out)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AdapterConfigError(f"Biaffine: {field} must be a positive int, got {value!r}.")
        self.n_in, self.n_out, self.bias_x, self.bias_y = n_in, n_out, bool(bias_x), bool(bias_y)
        self.weight = nn.Parameter(torch.zeros(n_out, n_in + self.bias_x, n_in + self.bias_y))

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_out={self.n_out}, bias_x={self.bias_x}, bias_y={self.bias_y}"

    def init_weights(self) -> None:
        """Zero the weight (every score 0), as the parser starts.

        Example::

            >>> scorer.init_weights()
            >>> bool((scorer.weight == 0).all())
            True
        """
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scores ``(batch, n_out, len_x, len_y)`` of rows ``x`` ``(batch, len_x, n_in)`` against
        rows ``y`` ``(batch, len_y, n_in)``.

        Example::

            >>> Biaffine(8)(torch.randn(1, 3, 8), torch.randn(1, 4, 8)).shape
            torch.Size([1, 1, 3, 4])
        """
        if self.bias_x:
            x = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)
        if self.bias_y:
            y = torch.cat([y, torch.ones_like(y[..., :1])], dim=-1)
        return torch.einsum("bxi,oij,byj->boxy", x, self.weight, y)


def word_spans(starts: list, pad_token_id: Optional[int]) -> list:
    """The ``(start, end)`` token span of each word of one row of ``word_starts`` (see the module
    docstring): entries equal to ``pad_token_id`` skipped, consecutive entries paired, stopping at
    the first end ``<= 0``.

    Example::

        >>> word_spans([1, 2, 4, 5, 0, 0], pad_token_id=0)
        [(1, 2), (2, 4), (4, 5)]
    """
    bounds = [int(s) for s in starts if pad_token_id is None or s != pad_token_id]
    spans = []
    for start, end in zip(bounds, bounds[1:]):
        if end <= 0:
            break
        spans.append((start, end))
    return spans


@register_head_type("dependency_parsing")
class BiaffineParsingHead(PredictionHead):
    """Biaffine dependency parsing over words pooled from subword tokens (see the module
    docstring); the forward call needs ``word_starts``, and ``labels_arcs`` / ``labels_rels`` give
    the loss. Config keys are AdapterHub's (``num_labels``, ``label2id``), so heads either library
    saved load in the other.

    Example::

        >>> model.add_dependency_parsing_head("ud", num_labels=37, id2label=dict(enumerate(relations)))
        >>> out = model(input_ids, attention_mask=mask, word_starts=word_starts,
        ...             labels_arcs=arcs, labels_rels=rels)
        >>> out.loss, out.arc_preds.shape, out.rel_preds.shape
    """

    #: keyword inputs of the forward call that this head reads (the base model never sees them)
    extra_inputs = ("word_starts",)

    def __init__(self, model, head_name: str, num_labels: int = 2, id2label: Optional[dict] = None):
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
            raise AdapterConfigError(f"A dependency_parsing head needs num_labels >= 1 (an int), got {num_labels!r}.")
        if id2label is not None and (not isinstance(id2label, dict) or len(id2label) != num_labels):
            raise AdapterConfigError(
                f"id2label of a dependency_parsing head must map each of the {num_labels} label ids to a name, got {id2label!r}."
            )
        super().__init__(
            head_name,
            {
                "num_labels": num_labels,
                # AdapterHub's: None without labels (not LABEL_i names)
                "label2id": {label: int(index) for index, label in id2label.items()} if id2label is not None else None,
            },
        )
        hidden = model.config.hidden_size
        self.pad_token_id = getattr(model.config, "pad_token_id", None)
        self.biaffine_arcs = Biaffine(n_in=hidden, n_out=1, bias_x=True, bias_y=False)
        self.biaffine_rels = Biaffine(n_in=hidden, n_out=num_labels, bias_x=True, bias_y=True)
        self.dropout = nn.Dropout(model_dropout(model.config, self.config))

    def init_weights(self, model) -> None:
        """Zero both scorers (AdapterHub's start) and follow the model's training mode.

        Example::

            >>> model.heads["ud"].init_weights(model)
        """
        self.biaffine_arcs.init_weights()
        self.biaffine_rels.init_weights()
        self.train(model.training)

    def get_label_names(self) -> list[str]:
        """The keyword arguments that carry the targets: ``labels_arcs`` and ``labels_rels``.

        Example::

            >>> model.heads["ud"].get_label_names()
            ['labels_arcs', 'labels_rels']
        """
        return ["labels_arcs", "labels_rels"]

    def pool_words(self, hidden: torch.Tensor, word_starts: torch.Tensor) -> torch.Tensor:
        """Word vectors ``(batch, seq, hidden)``: row ``j`` of sequence ``b`` is the mean of word
        ``j``'s token states (see :func:`word_spans`), zeros after the last word.

        Raises:
            AdapterConfigError: ``word_starts`` has another number of rows than the batch, spans
                that are empty or leave the sequence, or more words than the sequence has tokens.

        Example::

            >>> head.pool_words(outputs[0], torch.tensor([[1, 2, 4, 5, 0, 0]])).shape
            torch.Size([1, 6, 32])
        """
        batch, length, _ = hidden.shape
        if word_starts.dim() != 2 or word_starts.shape[0] != batch:
            raise AdapterConfigError(
                f"word_starts must be (batch, positions) with {batch} rows, got shape {tuple(word_starts.shape)}."
            )
        rows = []
        for index, starts in enumerate(word_starts.tolist()):
            spans = word_spans(starts, self.pad_token_id)
            if len(spans) > length or any(not 0 <= start < end <= length for start, end in spans):
                raise AdapterConfigError(
                    f"word_starts row {index} gives word spans {spans}; each must satisfy 0 <= start < end <= {length} "
                    f"(the sequence length), at most {length} words."
                )
            words = [hidden[index, start:end].mean(dim=0) for start, end in spans]
            padding = hidden.new_zeros(length - len(words), hidden.shape[-1])
            rows.append(torch.cat([torch.stack(words), padding]) if words else padding)
        return torch.stack(rows)

    def forward(
        self,
        outputs,
        cls_output=None,
        attention_mask=None,
        return_dict: bool = True,
        word_starts: Optional[torch.Tensor] = None,
        labels_arcs: Optional[torch.Tensor] = None,
        labels_rels: Optional[torch.Tensor] = None,
        **kwargs,
    ):
        """Arc and relation scores of every word row against the root and every word row, with the
        loss when ``labels_arcs`` and ``labels_rels`` are given.

        Raises:
            AdapterConfigError: no ``word_starts``, or ones that do not fit (see :meth:`pool_words`).

        Example::

            >>> out = model(input_ids, word_starts=word_starts, head="ud")
            >>> out.arc_preds.shape, out.rel_preds.shape     # (B, S, S + 1), (B, S, S + 1, num_labels)
        """
        if word_starts is None:
            raise AdapterConfigError(
                f"The dependency_parsing head {self.name!r} needs word_starts=... in the forward call: per sequence the "
                f"token positions where the words start, then the position after the last word."
            )
        hidden = self.dropout(outputs[0])
        words = self.pool_words(hidden, word_starts)
        candidates = torch.cat([hidden[:, :1], words], dim=1)  # position 0: the root ([CLS])
        arc_preds = self.biaffine_arcs(words, candidates).squeeze(1)
        rel_preds = self.biaffine_rels(words, candidates).permute(0, 2, 3, 1)
        loss = self.loss(arc_preds, rel_preds, labels_arcs, labels_rels)
        if not return_dict:
            return (rel_preds, arc_preds) if loss is None else (loss, rel_preds, arc_preds)
        return DependencyParsingOutput(
            loss=loss,
            rel_preds=rel_preds,
            arc_preds=arc_preds,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    def loss(self, arc_preds, rel_preds, labels_arcs, labels_rels) -> Optional[torch.Tensor]:
        """Arc cross-entropy plus relation cross-entropy at the gold head, over the word rows whose
        arc label is not padding (``pad_token_id`` or ``-100``); None without both label tensors.

        Example::

            >>> head.loss(out.arc_preds, out.rel_preds, arcs, rels)
            tensor(2.71...)
        """
        if labels_arcs is None or labels_rels is None:
            return None
        keep = labels_arcs != -100
        if self.pad_token_id is not None:
            keep &= labels_arcs != self.pad_token_id
        arcs, rels = labels_arcs[keep], labels_rels[keep]
        cross_entropy = CrossEntropyLoss()
        arc_loss = cross_entropy(arc_preds[keep], arcs)
        at_gold_head = rel_preds[keep][torch.arange(len(arcs), device=arcs.device), arcs]
        return arc_loss + cross_entropy(at_gold_head, rels)
