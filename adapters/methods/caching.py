"""Reuse of tensors derived from parameters while the parameters are unchanged.

Several methods compute, in every forward pass, a tensor that depends only on their parameters:
the prefix states of prefix tuning, the prompt keys/values of Llama-Adapter, Compacter's dense
PHM weight, OFT's orthogonal blocks, HRA's compact Householder factors. While nothing is being
trained those tensors stay the same from one pass to the next — every decoding step of
``generate()`` and every batch of an evaluation loop recomputes the same values — so they are
kept and reused until a parameter changes.

A parameter change is seen through the tensor's version counter (bumped by every in-place
update: an optimizer step, ``load_state_dict``, ``copy_``, a merge), its storage address (moved
to another device, or ``param.data`` replaced) and its dtype.

Nothing is reused while a gradient may flow into a source (the value must be part of this pass's
graph), and a value computed under ``torch.inference_mode`` is reused only there (an inference
tensor cannot enter an autograd graph later).

Under ``torch.compile`` nothing is kept: the value is computed in the graph every pass (version
counters and storage addresses cannot be traced, and the compiled graph computes such small
tensors at little cost).
"""

from __future__ import annotations

from typing import Callable, Hashable, Optional, Sequence, TypeVar

import torch

__all__ = ["reuse_while_unchanged"]

T = TypeVar("T")


def _fingerprint(sources: Sequence[Optional[torch.Tensor]]) -> tuple:
    return (torch.is_inference_mode_enabled(),) + tuple(
        None if t is None else (id(t), t._version, t.data_ptr(), t.dtype) for t in sources
    )


def reuse_while_unchanged(
    store: dict,
    key: Hashable,
    sources: Sequence[Optional[torch.Tensor]],
    compute: Callable[[], T],
    reusable: bool = True,
) -> T:
    """``compute()``, or the value it returned last time for ``key`` if no tensor of ``sources``
    has changed since and no gradient can flow into one of them.

    ``store`` is the caller's dict of kept values (one entry per ``key``); ``reusable=False``
    forces a fresh computation (e.g. while dropout inside ``compute`` is active). The fingerprint
    is taken after ``compute`` runs, so a computation that updates its own sources in place (OFT's
    COFT projection) is reused from the next call on.

    Example::

        >>> blocks = reuse_while_unchanged(self.__dict__.setdefault("_kept", {}), "blocks", [self.oft_R], self.blocks)
    """
    if torch.compiler.is_compiling():
        return compute()
    grad_possible = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in sources)
    if not reusable or grad_possible:
        return compute()
    kept = store.get(key)
    if kept is not None and kept[0] == _fingerprint(sources):
        return kept[1]
    value = compute()
    store[key] = (_fingerprint(sources), value)
    return value
