"""X-MOD (Pfeiffer et al., 2022): XLM-R's post-LN encoder with *language modules* — each layer's
FFN output block ends in a per-language bottleneck picked by ``lang_ids`` (or the model's
default language):

    y = LayerNorm(dropout(dense(a)) + x)
    z = y + dropout(M_lang(y))               (ln_before_adapter: the residual is y itself)

Adapters of this library take BERT's places, before the block's norm: ``...attention.output``
and ``...output`` own them (keys ``...attention.output.adapters.<name>``,
``...output.adapters.<name>``, as AdapterHub), so the FFN block computes
``y = LayerNorm(adapters(h, x))`` and X-MOD's language module then runs on ``y`` as it always
does. The language modules stay the model's own weights: ``lang_ids`` and
``set_default_language`` select them as in transformers, and under ``Parallel`` the
``lang_ids`` rows are replicated with the batch.

**AdapterHub differs here.** AdapterHub 1.3.0 *deletes* X-MOD's language modules at
``adapters.init`` and refuses ``lang_ids`` — the initialised model no longer computes what the
checkpoint was trained to compute. This library keeps them (the documented better choice);
AdapterHub's X-MOD adapter checkpoints hold no language-module weights and load here unchanged.
To compute what AdapterHub computes (``y`` alone, no language module), call
:func:`remove_language_modules` on the model: it replaces each language module by one without
weights that adds nothing, so transformers' language step computes ``z = y``.

X-MOD's output block reuses its ``LayerNorm`` for the language module only with the released
models' settings (``adapter_reuse_layer_norm=True``, ``adapter_layer_norm=False``); the adapters'
place is defined by that norm, so other settings are refused at :func:`adapters.init`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .bert import BERT
from ..errors import AdapterConfigError
from ..hooks.spec import register_architecture

__all__ = ["XMOD", "remove_language_modules", "RemovedLanguageModule"]

_NORM_REASON = (
    "the adapters run before the FFN block's LayerNorm, which X-MOD's output block calls only when it reuses it for "
    "the language modules (the released models' adapter_reuse_layer_norm=True, adapter_layer_norm=False)"
)

XMOD = register_architecture(
    dataclasses.replace(
        BERT,
        name="xmod",
        model_types=("xmod",),
        config_requirements=(("adapter_reuse_layer_norm", True, _NORM_REASON), ("adapter_layer_norm", False, _NORM_REASON)),
    )
)


def remove_language_modules(model) -> int:
    """Remove X-MOD's language modules from ``model`` (an X-MOD model, with or without a head), as
    AdapterHub 1.3.0's ``adapters.init`` deletes them: each FFN output block then computes
    ``z = y`` instead of ``y + M_lang(y)`` (transformers' language step writes each language
    module's output into its rows and adds the residual ``y``), so AdapterHub's X-MOD adapters reproduce AdapterHub's
    outputs on a pretrained X-MOD. Each language module is replaced by one without weights whose
    output is zero (the language names stay, as ``lang_ids`` and ``set_default_language`` look them
    up; they then select nothing). Returns the number of language modules removed; the model's
    other weights are unchanged.

    Raises:
        AdapterConfigError: ``model`` has no X-MOD output blocks (``XmodOutput`` with ``adapter_modules``).

    Example::

        >>> model = adapters.XmodAdapterModel.from_pretrained("facebook/xmod-base")
        >>> removed = remove_language_modules(model)   # AdapterHub's X-MOD: no language modules
        >>> model.roberta.encoder.layer[0].output.adapter_modules["en_XX"]
        RemovedLanguageModule()
    """
    from transformers.models.xmod.modeling_xmod import XmodOutput

    blocks = [m for m in model.modules() if isinstance(m, XmodOutput)]
    if not blocks:
        raise AdapterConfigError(
            f"remove_language_modules(model): {type(model).__name__} has no X-MOD output blocks with language modules "
            "(adapter_modules); pass an X-MOD model."
        )
    removed = 0
    for block in blocks:
        for language, module in list(block.adapter_modules.items()):
            if not isinstance(module, RemovedLanguageModule):
                block.adapter_modules[language] = RemovedLanguageModule()
                removed += 1
    return removed


class RemovedLanguageModule(nn.Module):
    """The place of an X-MOD language module that :func:`remove_language_modules` removed: no
    weights, a zero output (the language step then adds nothing to its residual).

    Example::

        >>> RemovedLanguageModule()(torch.ones(2, 3))
        tensor([[0., 0., 0.],
                [0., 0., 0.]])
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)
