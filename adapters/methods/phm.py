"""Parameterised hypercomplex multiplication (PHM) layers, the projections of Compacter
(Mahabadi et al., 2021, "Compacter: Efficient Low-Rank Hypercomplex Adapter Layers").

A PHM layer replaces the weight ``W ∈ R^{d_in × d_out}`` of a linear map by a sum of ``n``
Kronecker products (``n = phm_dim``)::

    W = Σ_{i=1..n}  A_i ⊗ B_i,     A_i ∈ R^{n×n} ("rule"),  B_i ∈ R^{(d_in/n) × (d_out/n)}
    y = x W + b

Compacter shares the rules ``A_i`` across all layers of an adapter (``shared_phm_rule``) and
factorises each ``B_i = s_i t_iᵀ`` into rank-``phm_rank`` factors (``factorized_phm_W``), so an
adapter layer has ``O(d_in + d_out)`` parameters. The shared tensors live once per adapter in
the model (``shared_parameters.<name>``) and are saved with the adapter.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration.bottleneck import BnConfig
from ..errors import AdapterConfigError
from .caching import reuse_while_unchanged

__all__ = ["PHMLayer", "init_shared_parameters", "kronecker_product"]


def kronecker_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched Kronecker product of ``a[..., i, j]`` and ``b[..., k, l]``."""
    size = (a.shape[-2] * b.shape[-2], a.shape[-1] * b.shape[-1])
    product = a.unsqueeze(-1).unsqueeze(-3) * b.unsqueeze(-2).unsqueeze(-4)
    return product.reshape(product.shape[:-4] + size)


def _init_phm_weight(tensor: torch.Tensor, config: BnConfig) -> None:
    """Initialise each of the ``phm_dim`` slices of a PHM weight factor in place."""
    with torch.no_grad():
        for i in range(tensor.shape[0]):
            if config.hypercomplex_nonlinearity == "glorot-normal":
                nn.init.xavier_normal_(tensor[i])
            elif config.hypercomplex_nonlinearity == "glorot-uniform":
                nn.init.xavier_uniform_(tensor[i])
            else:
                nn.init.normal_(tensor[i], mean=0.0, std=config.phm_init_range)


def _init_phm_rule(tensor: torch.Tensor, config: BnConfig, uniform_bound: float, normal_std: float) -> None:
    with torch.no_grad():
        if config.phm_c_init == "uniform":
            tensor.uniform_(-uniform_bound, uniform_bound)
        else:
            tensor.normal_(mean=0.0, std=normal_std)


def init_shared_parameters(config: BnConfig, in_features: int) -> nn.ParameterDict:
    """The parameters one Compacter adapter shares across all its layers.

    ``phm_rule`` (or its two factors) when ``shared_phm_rule``; the down/up weight factors when
    ``shared_W_phm``.
    """
    n = config.phm_dim
    params = nn.ParameterDict()
    if config.shared_W_phm:
        out_features = int(in_features // config.reduction_factor_for(-1))
        shapes = {"down": (in_features // n, out_features // n), "up": (out_features // n, in_features // n)}
        for position, (rows, cols) in shapes.items():
            if config.factorized_phm_W:
                left, right = torch.empty(n, rows, config.phm_rank), torch.empty(n, config.phm_rank, cols)
                _init_phm_weight(left, config)
                _init_phm_weight(right, config)
                params[f"W_{position}_left"] = nn.Parameter(left)
                params[f"W_{position}_right"] = nn.Parameter(right)
            else:
                weight = torch.empty(n, rows, cols)
                _init_phm_weight(weight, config)
                params[f"W_{position}"] = nn.Parameter(weight)
    if config.shared_phm_rule:
        if config.factorized_phm_rule:
            left, right = torch.empty(n, n, 1), torch.empty(n, 1, n)
            _init_phm_rule(left, config, 1.0, config.phm_init_range)
            _init_phm_rule(right, config, 1.0, config.phm_init_range)
            params["phm_rule_left"] = nn.Parameter(left, requires_grad=config.learn_phm)
            params["phm_rule_right"] = nn.Parameter(right, requires_grad=config.learn_phm)
        else:
            rule = torch.empty(n, n, n)
            _init_phm_rule(rule, config, 1.0, config.phm_init_range)
            params["phm_rule"] = nn.Parameter(rule, requires_grad=config.learn_phm)
    return params


class PHMLayer(nn.Module):
    """``y = x (Σ_i A_i ⊗ B_i) + b`` — see the module docstring.

    Args:
        in_features, out_features: must be divisible by ``config.phm_dim``.
        position: "down" or "up" (selects the shared weight factors when ``shared_W_phm``).
        config: the adapter's :class:`~adapters.BnConfig`.
        shared_parameters: the adapter's shared ``ParameterDict`` (rules and/or weights).

    Example::

        >>> layer = PHMLayer(64, 16, "down", CompacterConfig(), init_shared_parameters(CompacterConfig(), 64))
        >>> layer(torch.randn(2, 5, 64)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, in_features: int, out_features: int, position: str, config: BnConfig, shared_parameters=None):
        super().__init__()
        n = config.phm_dim
        if in_features % n or out_features % n:
            raise AdapterConfigError(
                f"PHM layer sizes {in_features}->{out_features} are not divisible by phm_dim={n}; "
                f"choose a phm_dim that divides the hidden size and the bottleneck size."
            )
        self.in_features, self.out_features, self.position = in_features, out_features, position
        self.phm_dim = n
        self.shared_phm_rule = config.shared_phm_rule
        self.factorized_phm_rule = config.factorized_phm_rule
        self.shared_W_phm = config.shared_W_phm
        self.factorized_phm_W = config.factorized_phm_W
        # a reference, not a submodule: the shared tensors are stored once, on the model
        self.__dict__["shared_parameters"] = shared_parameters
        if not self.shared_phm_rule:
            if self.factorized_phm_rule:
                self.phm_rule_left = nn.Parameter(torch.empty(n, n, 1), requires_grad=config.learn_phm)
                self.phm_rule_right = nn.Parameter(torch.empty(n, 1, n), requires_grad=config.learn_phm)
                _init_phm_rule(self.phm_rule_left, config, 0.01, 0.01)
                _init_phm_rule(self.phm_rule_right, config, 0.01, 0.01)
            else:
                self.phm_rule = nn.Parameter(torch.empty(n, n, n), requires_grad=config.learn_phm)
                _init_phm_rule(self.phm_rule, config, 0.01, 0.01)
        if not self.shared_W_phm:
            rows, cols = in_features // n, out_features // n
            if self.factorized_phm_W:
                self.W_left = nn.Parameter(torch.empty(n, rows, config.phm_rank))
                self.W_right = nn.Parameter(torch.empty(n, config.phm_rank, cols))
                _init_phm_weight(self.W_left, config)
                _init_phm_weight(self.W_right, config)
            else:
                self.W = nn.Parameter(torch.empty(n, rows, cols))
                _init_phm_weight(self.W, config)
        self.b = nn.Parameter(torch.zeros(out_features)) if config.phm_bias else None

    def _rule(self) -> torch.Tensor:
        source = self.shared_parameters if self.shared_phm_rule else self._parameters
        if self.factorized_phm_rule:
            return torch.bmm(source["phm_rule_left"], source["phm_rule_right"])
        return source["phm_rule"]

    def _weight_factors(self) -> torch.Tensor:
        if self.shared_W_phm:
            shared, prefix = self.shared_parameters, f"W_{self.position}"
            if self.factorized_phm_W:
                return torch.bmm(shared[f"{prefix}_left"], shared[f"{prefix}_right"])
            return shared[prefix]
        if self.factorized_phm_W:
            return torch.bmm(self.W_left, self.W_right)
        return self.W

    def _sources(self) -> list[torch.Tensor]:
        own = [p for p in self._parameters.values() if p is not None and p is not self.b]
        shared = list(self.shared_parameters.values()) if self.shared_parameters is not None else []
        return own + shared

    def weight_matrix(self) -> torch.Tensor:
        """The dense ``d_in × d_out`` matrix ``Σ_i A_i ⊗ B_i``.

        While no gradient can flow into its factors the matrix is kept and rebuilt only after one of
        them changed (:func:`~adapters.methods.caching.reuse_while_unchanged`).
        """
        return reuse_while_unchanged(
            self.__dict__.setdefault("_kept", {}), "dense_weight", list(self._sources()),
            lambda: kronecker_product(self._rule(), self._weight_factors()).sum(0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight_matrix())
        return y + self.b if self.b is not None else y
