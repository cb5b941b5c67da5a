"""Configs of ReFT, representation finetuning (Wu et al., 2024, "ReFT: Representation Finetuning for
Language Models"): LoReFT, NoReFT and DiReFT, with AdapterHub 1.3.0's class names, fields and
defaults, so its ``adapter_config.json`` files read as ours field for field.

The math is in :mod:`adapters.methods.reft`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional, Union

from .base import AdapterConfig, register_config
from .validation import (
    check_activation,
    check_bool,
    check_choice,
    check_int,
    check_layer_indices,
    check_probability,
    check_seed,
    config_error,
)

__all__ = ["ReftConfig", "LoReftConfig", "NoReftConfig", "DiReftConfig", "REFT_DTYPES"]

#: the values ``dtype`` takes: None (the model's dtype) or the name of a floating torch dtype
REFT_DTYPES = ("float16", "bfloat16", "float32", "float64")


@dataclasses.dataclass(eq=False)
class ReftConfig(AdapterConfig):
    """ReFT: after each selected layer, the hidden states at a few positions are replaced by an
    *intervention* ``Φ(h) = h + Rᵀ(φ(W h + b) − R h)`` (see :mod:`adapters.methods.reft`).

    The defaults are LoReFT's (:class:`LoReftConfig`); AdapterHub's base class has no defaults for
    ``layers`` … ``orthogonality``, so every config it writes names them and reads the same here.

    Args:
        layers: ``"all"`` or a list of layer indices (AdapterHub's numbering: an encoder-decoder's
            decoder layers follow its encoder layers) whose outputs are intervened on.
        prefix_positions: how many of the first real (non-padding) tokens are intervened on.
        suffix_positions: how many of the last real tokens are intervened on.
        r: rank of the intervention (rows of ``R`` and ``W``); positive.
        orthogonality: ``R`` has orthonormal rows (kept so by an orthogonal parametrisation), as in
            LoReFT; False: a free matrix (NoReFT, DiReFT).
        tied_weights: one intervention for the prefix and the suffix positions of a layer; False:
            one each.
        subtract_projection: subtract ``R h`` inside the edit (LoReFT, NoReFT); False: DiReFT's
            ``h + Rᵀ φ(W h + b)``. AdapterHub keeps this as a class attribute that it never writes
            to ``adapter_config.json`` (so its saved DiReFT adapters reload as NoReFT); here it is a
            field and is saved.
        dropout: dropout on the intervened hidden states in training, in ``[0, 1)``.
        non_linearity: ``φ``: None (the identity) or an activation name of transformers'
            ``ACT2FN`` (or ``"leakyrelu"``).
        dtype: None (the model's dtype) or the name of a floating torch dtype (``"float32"``, ...)
            the intervention's parameters are kept in.
        output_reft: AdapterHub's flag for interventions on layer outputs, the only place it (and
            this library) puts them; only True.
        init_weights_seed: seed for the initialisation; with a seed, every intervention of the
            adapter starts from the same values (as in AdapterHub). None: the global generator.

    Example::

        >>> model.add_adapter("reft", config=ReftConfig(layers=[0, 1], prefix_positions=2, suffix_positions=2, r=4))
    """

    architecture: ClassVar[str] = "reft"

    layers: Union[str, tuple] = "all"
    prefix_positions: int = 3
    suffix_positions: int = 0
    r: int = 1
    orthogonality: bool = True
    tied_weights: bool = False
    subtract_projection: bool = True
    dropout: float = 0.05
    non_linearity: Optional[str] = None
    dtype: Optional[str] = None
    output_reft: bool = True
    init_weights_seed: Optional[int] = None

    def __post_init__(self):
        """Every value check of ReFT, in one place (the layer indices are checked against the
        model when the adapter is added)."""
        name = type(self).__name__
        if self.layers != "all":
            if isinstance(self.layers, str):
                raise config_error(name, "layers", self.layers, "'all' or a list of layer indices (ints >= 0)")
            layers = check_layer_indices(name, "layers", self.layers)
            if not layers:
                raise config_error(name, "layers", self.layers, "'all' or a non-empty list of layer indices (ints >= 0)")
            object.__setattr__(self, "layers", layers)
        check_int(name, "prefix_positions", self.prefix_positions, minimum=0)
        check_int(name, "suffix_positions", self.suffix_positions, minimum=0)
        if self.prefix_positions == 0 and self.suffix_positions == 0:
            raise config_error(
                name, "prefix_positions", self.prefix_positions,
                "a positive integer when suffix_positions is 0 (with both 0 the adapter intervenes nowhere)",
            )
        check_int(name, "r", self.r, minimum=1)
        for field in ("orthogonality", "tied_weights", "subtract_projection"):
            check_bool(name, field, getattr(self, field))
        check_probability(name, "dropout", self.dropout)
        if self.non_linearity is not None and not (
            isinstance(self.non_linearity, str) and self.non_linearity.lower() == "leakyrelu"
        ):
            check_activation(name, "non_linearity", self.non_linearity)
        if self.dtype is not None:
            check_choice(name, "dtype", self.dtype, REFT_DTYPES)
        if self.output_reft is not True:
            raise config_error(name, "output_reft", self.output_reft, "True (interventions sit on layer outputs only)")
        check_seed(name, "init_weights_seed", self.init_weights_seed)

    def to_dict(self) -> dict:
        """AdapterHub's layout: ``layers`` is ``"all"`` or a JSON list.

        Example::

            >>> LoReftConfig(layers=[1]).to_dict()["layers"]
            [1]
        """
        data = super().to_dict()
        if isinstance(self.layers, tuple):
            data["layers"] = list(self.layers)
        return data


@dataclasses.dataclass(eq=False)
class LoReftConfig(ReftConfig):
    """LoReFT (low-rank linear subspace ReFT): ``Φ(h) = h + Rᵀ(W h + b − R h)`` with orthonormal rows
    of ``R``, on the first 3 real tokens after every layer, rank 1 (AdapterHub's defaults; string id
    ``"loreft"``).

    Example::

        >>> model.add_adapter("loreft", config=LoReftConfig(r=4, suffix_positions=3), set_active=True)
    """


@dataclasses.dataclass(eq=False)
class NoReftConfig(ReftConfig):
    """NoReFT: LoReFT without the orthogonality of ``R`` (string id ``"noreft"``).

    Example::

        >>> model.add_adapter("noreft", config="noreft", set_active=True)
    """

    orthogonality: bool = False


@dataclasses.dataclass(eq=False)
class DiReftConfig(ReftConfig):
    """DiReFT: ``Φ(h) = h + Rᵀ(W h + b)`` — no orthogonality, no subtracted projection (string id
    ``"direft"``).

    Example::

        >>> model.add_adapter("direft", config=DiReftConfig(r=2), set_active=True)
    """

    orthogonality: bool = False
    subtract_projection: bool = False


register_config("loreft", LoReftConfig())
register_config("noreft", NoReftConfig())
register_config("direft", DiReftConfig())
