"""Task-vector merging: the tensor math of PEFT's merge utilities, with the same semantics.

A *task tensor* ``t_i`` is what one adapter changes (a LoRA factor, or its delta ``ΔW_i``); these
functions combine several of them with weights ``w_i``: plainly (:func:`task_arithmetic`), after
pruning each (:func:`magnitude_prune`, DARE's random pruning in :func:`dare_linear`), or with TIES'
sign election and disjoint merge (:func:`ties`, :func:`dare_ties`). They know nothing of models;
:meth:`~adapters.merging.MergingMixin.add_weighted_adapter` applies them per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..errors import AdapterConfigError

__all__ = [
    "calculate_majority_sign_mask",
    "dare_linear",
    "dare_ties",
    "disjoint_merge",
    "magnitude_prune",
    "prune",
    "task_arithmetic",
    "ties",
]

WeightsLike = Sequence[float] | torch.Tensor


def _weighted(stacked: torch.Tensor, weights: WeightsLike) -> torch.Tensor:
    """``w_i · t_i`` for tensors stacked on dim 0."""
    weights = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device)
    return stacked * weights.view(-1, *([1] * (stacked.dim() - 1)))


def prune(tensor: torch.Tensor, density: float, method: str = "magnitude", rescale: bool = False) -> torch.Tensor:
    """Keep a fraction ``density`` of the entries of ``tensor``, zero the rest.

    ``method="magnitude"`` keeps the ``⌊density·n⌋`` entries of largest absolute value (``n`` the
    number of entries; ties broken by ``torch.topk``); ``method="random"`` keeps each entry
    independently with probability ``density`` (drawn from torch's global generator: seed it for
    reproducible results) and, with ``rescale``, divides the kept entries by ``density`` so the
    expectation is unchanged (DARE). ``density >= 1`` returns the tensor unchanged.

    Args:
        tensor: the tensor to prune.
        density: fraction of entries to keep, in [0, 1].
        method: "magnitude" or "random".
        rescale: "random" only: divide the kept entries by ``density``.

    Raises:
        AdapterConfigError: ``density < 0`` or an unknown method.

    Example::

        >>> prune(torch.tensor([3.0, -1.0, 0.5, -4.0]), 0.5)
        tensor([ 3., -0.,  0., -4.])
    """
    if density < 0:
        raise AdapterConfigError(f"density must be in [0, 1] (the fraction of entries to keep), got {density!r}.")
    if method not in ("magnitude", "random"):
        raise AdapterConfigError(f"Unknown pruning method={method!r}; use 'magnitude' or 'random'.")
    if density >= 1:
        return tensor
    if method == "magnitude":
        flat = tensor.reshape(-1)
        keep = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
        k = int(density * flat.numel())
        if k > 0:
            keep[flat.abs().topk(k).indices] = True
        return tensor * keep.view(tensor.shape)
    if density == 0:
        return torch.zeros_like(tensor)
    kept = tensor * torch.bernoulli(torch.full_like(tensor, density))
    return kept / density if rescale else kept


def calculate_majority_sign_mask(
    tensor: torch.Tensor, method: Literal["total", "frequency"] = "total"
) -> torch.Tensor:
    """Which entries of the task tensors stacked on dim 0 agree with the elected sign.

    The elected sign of an entry is the sign of ``Σ_i t_i`` (``"total"``: the sign with the larger
    total magnitude) or of ``Σ_i sign(t_i)`` (``"frequency"``: the more frequent sign); zero
    elects ``+``.

    Example::

        >>> calculate_majority_sign_mask(torch.tensor([[1.0, -2.0], [-3.0, 1.0]]))
        tensor([[False,  True],
                [ True, False]])
    """
    sign = tensor.sign()
    if method == "total":
        votes = tensor.sum(dim=0)
    elif method == "frequency":
        votes = sign.sum(dim=0)
    else:
        raise AdapterConfigError(f"majority_sign_method must be 'total' or 'frequency', got {method!r}.")
    elected = torch.where(votes >= 0, 1.0, -1.0).to(sign.dtype)
    return sign == elected


def disjoint_merge(task_tensors: torch.Tensor, majority_sign_mask: torch.Tensor) -> torch.Tensor:
    """The mean, per entry, over the task tensors (stacked on dim 0) that agree with the elected
    sign; 0 where none does.

    Example::

        >>> t = torch.tensor([[1.0, -2.0], [3.0, 1.0]])
        >>> disjoint_merge(t, calculate_majority_sign_mask(t))
        tensor([ 2., -2.])
    """
    total = (task_tensors * majority_sign_mask).sum(dim=0)
    return total / majority_sign_mask.sum(dim=0).clamp(min=1)


def task_arithmetic(task_tensors: list[torch.Tensor], weights: WeightsLike) -> torch.Tensor:
    """Task arithmetic: ``Σ_i w_i t_i``.

    Example::

        >>> task_arithmetic([torch.ones(2), torch.full((2,), 2.0)], [0.5, 0.25])
        tensor([1., 1.])
    """
    return _weighted(torch.stack(task_tensors), weights).sum(dim=0)


def magnitude_prune(task_tensors: list[torch.Tensor], weights: WeightsLike, density: float) -> torch.Tensor:
    """``Σ_i w_i prune(t_i, density)``: each task tensor keeps its ``⌊density·n⌋`` largest
    entries (by magnitude) before the weighted sum.

    Example::

        >>> magnitude_prune([torch.tensor([3.0, -1.0])], [2.0], 0.5)
        tensor([6., -0.])
    """
    return task_arithmetic([prune(t, density, "magnitude") for t in task_tensors], weights)


def ties(
    task_tensors: list[torch.Tensor],
    weights: WeightsLike,
    density: float,
    majority_sign_method: Literal["total", "frequency"] = "total",
) -> torch.Tensor:
    """TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint merge.

    Each task tensor keeps its ``⌊density·n⌋`` largest entries; per entry the sign is elected
    from the trimmed (unweighted) tensors (:func:`calculate_majority_sign_mask`); the result is
    the mean of ``w_i t_i`` over the tensors that agree with it (:func:`disjoint_merge`).

    Example::

        >>> ties([torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])], [1.0, 1.0], density=1.0)
        tensor([ 2., -2.])
    """
    pruned = torch.stack([prune(t, density, "magnitude") for t in task_tensors])
    return _elect_sign_and_merge(pruned, weights, majority_sign_method)


def dare_linear(task_tensors: list[torch.Tensor], weights: WeightsLike, density: float) -> torch.Tensor:
    """DARE (Yu et al., 2023) with a linear merge: ``Σ_i w_i · (m_i ⊙ t_i) / density`` with
    random keep-masks ``m_i ~ Bernoulli(density)`` (torch's global generator: seed it).

    Example::

        >>> torch.manual_seed(0)
        >>> dare_linear([torch.ones(4)], [1.0], density=0.5)  # kept entries become 2
    """
    return task_arithmetic([prune(t, density, "random", rescale=True) for t in task_tensors], weights)


def dare_ties(
    task_tensors: list[torch.Tensor],
    weights: WeightsLike,
    density: float,
    majority_sign_method: Literal["total", "frequency"] = "total",
) -> torch.Tensor:
    """DARE pruning (random keep-masks, rescaled by ``1/density``) followed by TIES' sign election
    and disjoint merge.

    Example::

        >>> torch.manual_seed(0)
        >>> merged = dare_ties([torch.randn(8), torch.randn(8)], [0.5, 0.5], density=0.5)
    """
    pruned = torch.stack([prune(t, density, "random", rescale=True) for t in task_tensors])
    return _elect_sign_and_merge(pruned, weights, majority_sign_method)


def _elect_sign_and_merge(pruned: torch.Tensor, weights: WeightsLike, majority_sign_method) -> torch.Tensor:
    """TIES' last two steps on already pruned task tensors: sign election, disjoint merge."""
    mask = calculate_majority_sign_mask(pruned, majority_sign_method)
    return disjoint_merge(_weighted(pruned, weights), mask)


#: combine task tensors ``(tensors, weights, density, majority_sign_method)`` by name (add_weighted_adapter's types)
TASK_MERGES = {
    "linear": lambda ts, w, d, m: task_arithmetic(ts, w),
    "ties": lambda ts, w, d, m: ties(ts, w, d, m),
    "dare_linear": lambda ts, w, d, m: dare_linear(ts, w, d),
    "dare_ties": lambda ts, w, d, m: dare_ties(ts, w, d, m),
    "magnitude_prune": lambda ts, w, d, m: magnitude_prune(ts, w, d),
}
