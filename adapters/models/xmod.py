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

X-MOD's output block reuses its ``LayerNorm`` for the language module only with the released
models' settings (``adapter_reuse_layer_norm=True``, ``adapter_layer_norm=False``); the adapters'
place is defined by that norm, so other settings are refused at :func:`adapters.init`.
"""

from __future__ import annotations

import dataclasses

from .bert import BERT
from ..hooks.spec import register_architecture

__all__ = ["XMOD"]

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
