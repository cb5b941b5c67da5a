"""Merging adapters into the base weights, unloading them, and combining adapters into new ones.

Three jobs, one module each, re-exported here: :mod:`~adapters.merging.unload` (merging into the
weights, unmerging, unloading the library), :mod:`~adapters.merging.combine` (new adapters from
weighted combinations of others) and :mod:`~adapters.merging.task_vectors` (the tensor math of
the task-vector merges); :class:`MergingMixin` puts the model methods of the first two together.

**Merging and unloading** (PEFT's names). A LoRA-family adapter on a linear layer ``y = x Wᵀ + b``
folds into its weight (see :mod:`adapters.methods.lora`)::

    LoRA:   W' = W + s·B A                     (s = α/r, or α/√r with rsLoRA)
    (IA)³:  W' = diag(s·l) W,  b' = s·l ⊙ b    (output scaling; input scaling: W' = W diag(s·l))

and a ``Stack`` of them folds in order (deltas add, scalings multiply). ``merge_and_unload``
merges, then removes every trace of this library: the model that comes back is the plain
transformers model, saved by ``save_pretrained`` and loaded by ``from_pretrained`` without
``adapters`` installed. ``unload`` removes everything without merging; ``unmerge_adapter``
takes merged adapters out of the weights again.

**Finite or refused.** Every merge and unmerge (``merge_adapter``, ``merge_and_unload``,
``reset_adapter`` / ``unmerge_adapter``, and deleting a merged adapter) is all or nothing
(:func:`apply_all_or_nothing`): it first runs on copies of each layer's weight and bias, one layer
at a time, checking every value it would write — finite; a weight that can hold the result (a
floating-point one, or a bitsandbytes 4-bit / 8-bit one, which is dequantized, merged and
re-quantized with a warning that reports the rounding: see :mod:`adapters.methods.quantized`;
torchao's and other integer weights are refused); and, for a merge that ``reset_adapter`` may undo, that
the undo can restore it: (IA)³ and DoRA merges multiply the weight and their unmerge divides by
the same factors, so a factor of (nearly) 0 that turns a non-zero weight entry into 0 or a
subnormal number is refused (``merge_and_unload``, which is never undone, accepts it; PEFT
instead divides by ``l + 1e-8`` and silently loses those entries). Only when every layer passed
are the weights written. A refusal raises :class:`~adapters.errors.AdapterMergeError` naming the
adapter, the module and the parameter, with every weight as it was. The combinations below are
checked the same way: weights must be finite numbers, and a combination holding NaN/inf is not
added.

**Combining adapters** into a new adapter:

* :meth:`MergingMixin.average_adapter` (AdapterHub): a weighted average of adapters that share
  one config, parameter by parameter (any method) or LoRA-specific.
* :meth:`MergingMixin.add_weighted_adapter` (PEFT): weighted combinations of LoRA adapters,
  including the task-vector merges TIES, DARE and magnitude pruning, whose building blocks are
  the functions of :mod:`~adapters.merging.task_vectors` (:func:`task_arithmetic`, :func:`magnitude_prune`, :func:`ties`,
  :func:`dare_linear`, :func:`dare_ties`), with PEFT's semantics.

Every combination writes a new adapter next to its inputs; the inputs are left as they were.
"""

from __future__ import annotations

from .. import logging
from .combine import CombineMixin
from .task_vectors import (
    calculate_majority_sign_mask,
    dare_linear,
    dare_ties,
    disjoint_merge,
    magnitude_prune,
    prune,
    task_arithmetic,
    ties,
)
from .unload import UnloadMixin, apply_all_or_nothing

__all__ = [
    "MergingMixin",
    "apply_all_or_nothing",
    "calculate_majority_sign_mask",
    "dare_linear",
    "dare_ties",
    "disjoint_merge",
    "magnitude_prune",
    "prune",
    "task_arithmetic",
    "ties",
]

#: the package's logger; its modules log under it (``adapters.merging.unload``, ``adapters.merging.combine``)
logger = logging.get_logger(__name__)


class MergingMixin(UnloadMixin, CombineMixin):
    """Merging, unloading and weighted combination of adapters (mixed into the model API):
    :class:`~adapters.merging.unload.UnloadMixin`'s ``merge_adapter``, ``reset_adapter``,
    ``unmerge_adapter``, ``merge_and_unload`` and ``unload``, and
    :class:`~adapters.merging.combine.CombineMixin`'s ``average_adapter`` and ``add_weighted_adapter``.

    Example::

        >>> model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "ab", combination_type="cat")
        >>> model.set_active_adapters("ab")
        >>> plain = model.merge_and_unload()        # a plain transformers model
        >>> plain.save_pretrained("out/merged")
    """
