"""Command-line training scripts with adapters: :class:`AdapterArguments` and
:func:`setup_adapter_training`, under AdapterHub's names.

A training script parses :class:`AdapterArguments` with transformers' ``HfArgumentParser`` next to
its model, data and ``TrainingArguments``; one call of :func:`setup_adapter_training` then turns
those flags into a model ready for :class:`~adapters.AdapterTrainer`:

* ``--train_adapter`` off: the model is left as it is (full fine-tuning); asking to load an adapter
  without it is an error, since a loaded adapter would silently stay inactive;
* ``--train_adapter`` on: the task adapter is loaded from ``--load_adapter`` (a folder or a Hub
  repo) under the task adapter's name with its saved config, or else added with
  ``--adapter_config`` unless the model has an adapter of that name already; with
  ``--load_lang_adapter`` a language adapter is loaded too. Only the task adapter (and the heads) train; the active setup is the task adapter, or
  ``Stack(language, task)`` (the MAD-X recipe: the language adapter transforms the
  representations, the task adapter learns on top of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .composition import Stack
from .configuration import AdapterConfig
from .context import registry_lock
from .errors import AdapterConfigError

__all__ = ["AdapterArguments", "setup_adapter_training"]


@dataclass
class AdapterArguments:
    """The adapter flags of a training script (AdapterHub's fields, for ``HfArgumentParser``).

    Args:
        train_adapter: train an adapter instead of the whole model.
        load_adapter: a folder or Hugging Face Hub repo id of a trained task adapter to continue
            training from (empty: add a new adapter).
        adapter_config: the task adapter's config: a config string (``"seq_bn"``,
            ``"lora[r=8]"``, ``"lora|prefix_tuning"``) or the path of a JSON config file.
        load_lang_adapter: a folder or Hub repo id of a language adapter to stack below the
            task adapter (not trained).
        lang_adapter_config: the language adapter's config, as ``adapter_config``; empty: the
            config saved with the language adapter.

    Example::

        >>> from transformers import HfArgumentParser, TrainingArguments
        >>> parser = HfArgumentParser((TrainingArguments, AdapterArguments))
        >>> training_args, adapter_args = parser.parse_args_into_dataclasses(
        ...     ["--output_dir", "out", "--train_adapter", "--adapter_config", "lora[r=8]"])
        >>> adapter_args.adapter_config
        'lora[r=8]'
    """

    train_adapter: bool = field(default=False, metadata={"help": "Train an adapter instead of the whole model."})
    load_adapter: Optional[str] = field(
        default="", metadata={"help": "Folder or Hub repo id of a trained task adapter to continue from."}
    )
    adapter_config: Optional[str] = field(
        default="seq_bn", metadata={"help": "Task adapter config: a config string or the path of a JSON config file."}
    )
    load_lang_adapter: Optional[str] = field(
        default=None, metadata={"help": "Folder or Hub repo id of a language adapter stacked below the task adapter."}
    )
    lang_adapter_config: Optional[str] = field(
        default=None, metadata={"help": "Language adapter config (default: the one saved with it)."}
    )


def _resolved_config(value, kwargs: dict, field_name: str):
    """The config a flag names, with ``adapter_config_kwargs`` applied; None for an empty flag
    (the saved config is used then, as AdapterHub does)."""
    if value is None or value == "":
        return None
    try:
        return AdapterConfig.load(value, **kwargs)
    except AdapterConfigError as error:
        raise AdapterConfigError(f"AdapterArguments.{field_name}={value!r} is not a usable adapter config: {error}") from error


def setup_adapter_training(
    model,
    adapter_args: AdapterArguments,
    adapter_name: str,
    adapter_config_kwargs: Optional[dict] = None,
    adapter_load_kwargs: Optional[dict] = None,
):
    """Prepare ``model`` (an adapters model) for the training :class:`AdapterArguments` describe.

    With ``adapter_args.train_adapter``: load (``load_adapter``, with the config saved with it, as
    AdapterHub does) or add (``adapter_config``, unless an adapter ``adapter_name`` exists already)
    the task adapter ``adapter_name``; load the language adapter if ``load_lang_adapter`` is set
    (with its saved config, or ``lang_adapter_config``); make only the task adapter and the heads
    trainable (:meth:`~adapters.ModelAdaptersMixin.train_adapter`); activate
    ``Stack(language, task)`` or the task adapter alone. Without it, nothing changes. If a step
    fails, the adapters added or loaded by the earlier steps are taken out again, an adapter the
    loaded task adapter replaced is put back and the active setup is restored.

    Args:
        model: a model after ``adapters.init`` (or an AdapterModel).
        adapter_args: the parsed flags.
        adapter_name: the task adapter's name.
        adapter_config_kwargs: overrides applied to the configs the flags name
            (``AdapterConfig.load(..., **kwargs)``): ``adapter_config`` for a new task adapter,
            ``lang_adapter_config`` when it is set. A loaded adapter without a config flag keeps
            its saved config unchanged.
        adapter_load_kwargs: extra arguments of both ``load_adapter`` calls (``revision``,
            ``cache_dir``, ``leave_out``, ...); not ``load_as`` or ``config``, which this
            function sets.

    Returns:
        ``(adapter_name, lang_adapter_name)``: the task adapter's name and the language
        adapter's (None without one); ``(None, None)`` when ``train_adapter`` is off.

    Raises:
        AdapterConfigError: ``load_adapter`` or ``load_lang_adapter`` is set while
            ``train_adapter`` is off (AdapterHub raises a ``ValueError`` there too; this error
            is one), a config flag names no usable config, or ``adapter_load_kwargs`` holds
            ``load_as`` or ``config``.

    Example::

        >>> args = AdapterArguments(train_adapter=True, adapter_config="seq_bn[reduction_factor=8]",
        ...                         load_lang_adapter="out/lang_en")
        >>> setup_adapter_training(model, args, "sst2")
        ('sst2', 'lang_en')
        >>> model.active_adapters
        Stack[lang_en, sst2]
    """
    adapter_config_kwargs = dict(adapter_config_kwargs or {})
    adapter_load_kwargs = dict(adapter_load_kwargs or {})
    fixed = sorted(key for key in ("config", "load_as") if key in adapter_load_kwargs)
    if fixed:
        raise AdapterConfigError(
            f"adapter_load_kwargs may not hold {', '.join(fixed)} (got {adapter_load_kwargs!r}): setup_adapter_training "
            f"sets them itself (load_as is adapter_name; a loaded adapter keeps its saved config, the language adapter "
            f"takes AdapterArguments.lang_adapter_config). Pass revision, cache_dir, leave_out, ... only."
        )
    if not adapter_args.train_adapter:
        if adapter_args.load_adapter or adapter_args.load_lang_adapter:
            raise AdapterConfigError(
                f"AdapterArguments asks to load adapters (load_adapter={adapter_args.load_adapter!r}, "
                f"load_lang_adapter={adapter_args.load_lang_adapter!r}) while train_adapter is False: adapters are "
                f"only loaded for adapter training. Pass --train_adapter (train_adapter=True), or drop the load flags "
                f"to fine-tune the whole model."
            )
        return None, None

    # every flag is checked before anything is added or loaded
    adapter_config = _resolved_config(adapter_args.adapter_config, adapter_config_kwargs, "adapter_config")
    lang_config = None
    if adapter_args.load_lang_adapter:
        lang_config = _resolved_config(adapter_args.lang_adapter_config, adapter_config_kwargs, "lang_adapter_config")
    if not adapter_args.load_adapter and adapter_name not in model.adapters_config and adapter_config is None:
        raise AdapterConfigError(
            f"AdapterArguments.adapter_config is {adapter_args.adapter_config!r}, and the model has no adapter "
            f"{adapter_name!r} to train: give a config string such as 'seq_bn'."
        )
    registry = model.adapters_config
    with registry_lock(registry).writing("setup_adapter_training"):  # no forward pass sees a half-done setup
        active_before = registry.active_setup
        kept = None  # (name, name it is kept under) of an adapter the loaded task adapter replaces
        added = []  # adapters this call added, deleted again on an error
        try:
            if adapter_args.load_adapter:
                # A loaded adapter keeps the config saved with it, as in AdapterHub (whose load_adapter takes
                # the config only to find a file of its retired index): --adapter_config is for a new adapter.
                # An adapter of that name already there is replaced, as AdapterHub does; it is set aside
                # first, so that an error in a later step can put it back.
                load_kwargs = {"overwrite_ok": True, **adapter_load_kwargs}
                merged = any(adapter_name in h.merged for h in model._adapter_hosts if h.hosts_weight_deltas)
                if adapter_name in registry.adapters and load_kwargs["overwrite_ok"] and not merged:
                    kept = (adapter_name, f"{adapter_name}~kept")
                    model._rename_adapter(*kept)
                model.load_adapter(adapter_args.load_adapter, load_as=adapter_name, **load_kwargs)
                added.append(adapter_name)
            elif adapter_name not in registry.adapters:
                model.add_adapter(adapter_name, config=adapter_config)
                added.append(adapter_name)
            lang_adapter_name = None
            if adapter_args.load_lang_adapter:
                known = set(registry.adapters)
                lang_adapter_name = model.load_adapter(adapter_args.load_lang_adapter, config=lang_config, **adapter_load_kwargs)
                if lang_adapter_name not in known:
                    added.append(lang_adapter_name)
            setup = Stack(lang_adapter_name, adapter_name) if lang_adapter_name else adapter_name
            model.set_active_adapters(setup)  # refused here (before train_adapter changes anything) if it cannot run
            if kept is not None:
                for fusion_name, (_, names) in list(registry.fusions.items()):
                    if adapter_name in names:  # the fusions of the replaced adapter go with it, as load_adapter does
                        model.delete_adapter_fusion(fusion_name)
                model.delete_adapter(kept[1])
                kept = None
        except BaseException:
            for name in reversed(added):
                if kept is not None and name == kept[0]:
                    # out of the way under a name of its own, so that the fusions of the adapter it was to
                    # replace (named by that name) are not deleted with it
                    model._rename_adapter(name, f"{name}~loaded")
                    name = f"{name}~loaded"
                if name in registry.adapters:
                    model.delete_adapter(name)
            if kept is not None:
                model._rename_adapter(kept[1], kept[0])
            registry.active_setup = active_before
            registry.changed()
            raise
        model.train_adapter(adapter_name)
        model.set_active_adapters(setup)
    return adapter_name, lang_adapter_name
