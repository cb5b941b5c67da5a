"""AdapterFusion (Pfeiffer et al., 2021, "AdapterFusion: Non-Destructive Task Composition for
Transfer Learning").

At every place where the fused adapters run, each adapter ``j`` produces its bottleneck output
``u_j`` (before its residual). Fusion attends over them, with the layer output as query::

    q = h W_Q,   k_j = u_j W_K,   v_j = u_j W_V
    α = softmax_j(q · k_j / T)
    o = Σ_j α_j v_j + r

``r`` is the residual of the last fused adapter. Without learned projections (static fusion)
the raw vectors are used. The value projection is regularised towards the identity while
training (``0.01 · ||I − W_V||²``), and the temperature ``T`` can be annealed from 50 to 1.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration.fusion import AdapterFusionConfig
from .base import init_bert_weights

__all__ = ["AdapterFusion"]


class AdapterFusion(nn.Module):
    """The fusion attention of one layer position (see the module docstring).

    Args:
        config: the :class:`~adapters.AdapterFusionConfig`.
        hidden_size: the model's hidden size.
        dropout_prob: dropout on the attention scores when the config gives none.

    Example::

        >>> fusion = AdapterFusion(DynamicFusionConfig(), hidden_size=64, dropout_prob=0.0)
        >>> ups = torch.randn(2, 5, 3, 64)            # batch, tokens, adapters, hidden
        >>> fusion(torch.randn(2, 5, 64), ups, ups, torch.randn(2, 5, 64)).shape
        torch.Size([2, 5, 64])
    """

    def __init__(self, config: AdapterFusionConfig, hidden_size: int, dropout_prob: float = 0.0):
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout_prob if config.dropout_prob is not None else dropout_prob)
        if config.query:
            self.query = nn.Linear(hidden_size, hidden_size)
            init_bert_weights(self.query)
        if config.key:
            self.key = nn.Linear(hidden_size, hidden_size)
            init_bert_weights(self.key)
        if config.value:
            self.value = nn.Linear(hidden_size, hidden_size, bias=False)
            init_bert_weights(self.value)
            if config.value_initialized:
                with torch.no_grad():
                    self.value.weight.copy_(torch.full((hidden_size, hidden_size), 1e-6).fill_diagonal_(1.0))
        self.temperature = 50.0 if config.temperature else 1.0
        self._temperature_step = self.temperature / 1000.0

    def forward(self, query, key, value, residual, output_attentions: bool = False):
        """``query``: (B, L, H); ``key``/``value``: (B, L, n_adapters, H); ``residual``: (B, L, H).

        Both projections of the n adapter outputs are moved to the other side of a linear map,
        so each costs one H×H product per token instead of n:
        ``q·(W_K k_j + b_K) = (q W_K)·k_j + q·b_K`` and, the value projection having no bias,
        ``Σ_j α_j W_V v_j = W_V Σ_j α_j v_j`` (so ``value_before_softmax`` gives the same result).
        """
        config = self.config
        if config.residual_before:
            value = value + residual.unsqueeze(2)
        query_layer = self.query(query) if config.query else query
        if config.key:
            scores = torch.matmul(key, torch.matmul(query_layer, self.key.weight).unsqueeze(-1)).squeeze(-1)
            scores = scores + torch.matmul(query_layer, self.key.bias).unsqueeze(-1)
        else:
            scores = torch.matmul(key, query_layer.unsqueeze(-1)).squeeze(-1)
        probs = torch.softmax(self.dropout(scores) / self.temperature, dim=-1)
        if self.training and self.temperature > 1.0:
            self.temperature = max(self.temperature - self._temperature_step, 1.0)
        context = torch.matmul(probs.unsqueeze(-2), value).squeeze(-2)
        if config.value:
            context = self.value(context)
        if not config.residual_before:
            context = context + residual
        return (context, probs.detach()) if output_attentions else context

    def regularization_loss(self) -> torch.Tensor:
        """``0.01 · ||I − W_V||²``, or 0 without a value projection."""
        if not self.config.value or not self.config.regularization:
            return torch.zeros(())
        weight = self.value.weight
        identity = torch.eye(weight.shape[0], device=weight.device, dtype=weight.dtype)
        return 0.01 * (identity - weight).pow(2).sum()
