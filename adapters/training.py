"""Command-line training scripts with adapters: :class:`AdapterArguments` and
:func:`setup_adapter_training`, under AdapterHub's names.

A training script parses :class:`AdapterArguments` with transformers' ``HfArgumentParser`` next to
its model, data and ``TrainingArguments``; one call of :func:`setup_adapter_training` then turns
those flags into a model ready for :class:`~adapters.AdapterTrainer`:

* ``--train_adapter`` off: the model is left as it is (full fine-tuning); asking to load an adapter
  without it is an error, since a loaded adapter would silently stay inactive;
* ``--train_adapter`` on: the task adapter is loaded from ``--load_adapter`` (a folder or a Hub
  repo) under the task adapter's name, or else added with ``--adapter_config`` unless the model
  has an adapter of that name already; with ``--load_lang_adapter`` a language adapter is loaded
  too. Only the task adapter (and the heads) train; the active setup is the task adapter, or
  ``Stack(language, task)`` (the MAD-X recipe: the language adapter transforms the
  representations, the task adapter learns on top of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .composition import Stack
from .configuration import AdapterConfig
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

    With ``adapter_args.train_adapter``: load (``load_adapter``) or add (``adapter_config``,
    unless an adapter ``adapter_name`` exists already) the task adapter ``adapter_name``; load the
    language adapter if ``load_lang_adapter`` is set; make only the task adapter and the heads
    trainable (:meth:`~adapters.ModelAdaptersMixin.train_adapter`); activate
    ``Stack(language, task)`` or the task adapter alone. Without it, nothing changes.

    Args:
        model: a model after ``adapters.init`` (or an AdapterModel).
        adapter_args: the parsed flags.
        adapter_name: the task adapter's name.
        adapter_config_kwargs: overrides applied to both configs (``AdapterConfig.load(...,
            **kwargs)``).
        adapter_load_kwargs: extra arguments of both ``load_adapter`` calls (``revision``,
            ``cache_dir``, ``leave_out``, ...).

    Returns:
        ``(adapter_name, lang_adapter_name)``: the task adapter's name and the language
        adapter's (None without one); ``(None, None)`` when ``train_adapter`` is off.

    Raises:
        AdapterConfigError: ``load_adapter`` or ``load_lang_adapter`` is set while
            ``train_adapter`` is off (AdapterHub raises a ``ValueError`` there too; this error
            is one), or a config flag names no usable config.

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
    if not adapter_args.train_adapter:
        if adapter_args.load_adapter or adapter_args.load_lang_adapter:
            raise AdapterConfigError(
                f"AdapterArguments asks to load adapters (load_adapter={adapter_args.load_adapter!r}, "
                f"load_lang_adapter={adapter_args.load_lang_adapter!r}) while train_adapter is False: adapters are "
                f"only loaded for adapter training. Pass --train_adapter (train_adapter=True), or drop the load flags "
                f"to fine-tune the whole model."
            )
        return None, None

    adapter_config = _resolved_config(adapter_args.adapter_config, adapter_config_kwargs, "adapter_config")
    lang_config = None
    if adapter_args.load_lang_adapter:  # checked before anything is added or loaded
        lang_config = _resolved_config(adapter_args.lang_adapter_config, adapter_config_kwargs, "lang_adapter_config")
    if adapter_args.load_adapter:
        # an adapter of that name already there is replaced by the loaded one, as AdapterHub does
        load_kwargs = {"overwrite_ok": True, **adapter_load_kwargs}
        model.load_adapter(adapter_args.load_adapter, config=adapter_config, load_as=adapter_name, **load_kwargs)
    elif adapter_name not in model.adapters_config:
        if adapter_config is None:
            raise AdapterConfigError(
                f"AdapterArguments.adapter_config is {adapter_args.adapter_config!r}, and the model has no adapter "
                f"{adapter_name!r} to train: give a config string such as 'seq_bn'."
            )
        model.add_adapter(adapter_name, config=adapter_config)
    lang_adapter_name = None
    if adapter_args.load_lang_adapter:
        lang_adapter_name = model.load_adapter(adapter_args.load_lang_adapter, config=lang_config, **adapter_load_kwargs)
    model.train_adapter(adapter_name)
    model.set_active_adapters(Stack(lang_adapter_name, adapter_name) if lang_adapter_name else adapter_name)
    return adapter_name, lang_adapter_name
