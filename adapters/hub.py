"""Sharing adapters on the Hugging Face Hub: :meth:`~HubMixin.push_adapter_to_hub` and
:meth:`~HubMixin.push_adapter_setup_to_hub` (AdapterHub's methods and arguments), with a
generated model card.

Downloading needs nothing here: ``model.load_adapter("org/repo")`` resolves a repo id through
huggingface_hub's ``snapshot_download`` into its cache (``HF_HUB_CACHE`` / ``cache_dir=``;
with ``HF_HUB_OFFLINE=1`` a cached snapshot is used without network), see
:meth:`~adapters.ModelAdaptersMixin.load_adapter`.

Pushing writes the adapter into a folder (a temporary one, or ``local_path``) exactly as
:meth:`~adapters.ModelAdaptersMixin.save_adapter` does (``adapter_config.json``,
``adapter.safetensors``, and on an AdapterModel the head of the same name), adds a model card
``README.md`` unless the folder has one already (or ``overwrite_adapter_card=True``), and then
calls ``huggingface_hub.HfApi``: ``create_repo(repo_id, exist_ok=True)`` (only once the files are
written: a save that fails creates no repo) and one ``create_commit`` adding the files this push
wrote or changed and the card (with ``local_path``, other files that were already there and are
unchanged are not uploaded again; a ``README.md`` of the folder is the card, uploaded each time),
and deleting from the repo the files of the folder the save removed (the weights file of the
other format). ``revision`` names a branch, created from the main branch when missing.

The model card's metadata marks the repo as an adapter (``library_name: adapter-transformers``,
tags ``adapter-transformers`` and ``adapters``, the base model's type), names the base model
(``base_model``, when the model was loaded from a named checkpoint) and the dataset
(``datasets_tag``); its text shows how to load the adapter and the adapter's config.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Optional, Union

from . import logging
from .errors import AdapterConfigError

logger = logging.get_logger(__name__)

__all__ = ["HubMixin", "render_adapter_card", "ADAPTER_CARD_NAME", "CARD_PLACEHOLDER"]

ADAPTER_CARD_NAME = "README.md"
#: the text of a card section nobody filled in (``architecture_training``, ``results``, ``citation``)
CARD_PLACEHOLDER = "<!-- Add some description here -->"
#: what ``adapter_card_kwargs`` may hold (AdapterHub's keys)
CARD_KWARGS = ("tags", "language", "license", "metrics", "architecture_training", "results", "citation")


def render_adapter_card(
    repo_id: str,
    base_model: Optional[str],
    model_type: Optional[str],
    configs: dict,
    load_fn: str = "load_adapter",
    setup: Optional[str] = None,
    datasets_tag: Optional[str] = None,
    head_type: Optional[str] = None,
    tags: Optional[list] = None,
    language: Optional[Union[str, list]] = None,
    license: Optional[str] = None,
    metrics: Optional[list] = None,
    architecture_training: Optional[str] = None,
    results: Optional[str] = None,
    citation: Optional[str] = None,
) -> str:
    """The model card (``README.md``: YAML metadata, then Markdown) of an adapter repo.

    Args:
        repo_id: the Hub repo the card describes (used in the loading snippet).
        base_model: the base model's name or path (``model.config.name_or_path``; None or "" if
            the model was built from a config).
        model_type: the base model's ``config.model_type`` (a tag).
        configs: ``{adapter name: config dict}`` of the adapters the repo holds.
        load_fn: the loading method the snippet calls (``load_adapter`` or
            ``load_adapter_setup``).
        setup: the composition the repo holds, for a setup (``str(Stack("a", "b"))``).
        datasets_tag: a Hugging Face dataset id the adapter was trained on.
        head_type: the type of the prediction head saved with the adapter.
        tags, language, license, metrics: more metadata (AdapterHub's ``adapter_card_kwargs``).
        architecture_training, results, citation: the text of those sections (a placeholder
            comment when None).

    Example::

        >>> card = render_adapter_card("me/sst2", "bert-base-uncased", "bert", {"sst2": {"architecture": "bottleneck"}},
        ...                            datasets_tag="glue", head_type="classification")
        >>> card.splitlines()[0]
        '---'
    """
    from huggingface_hub import ModelCardData

    all_tags = ["adapter-transformers", "adapters"]
    for tag in [model_type, *(tags or [])]:
        if tag and tag not in all_tags:
            all_tags.append(tag)
    metadata = ModelCardData(
        library_name="adapter-transformers",
        tags=all_tags,
        base_model=base_model or None,
        datasets=[datasets_tag] if datasets_tag else None,
        language=language,
        license=license,
        metrics=list(metrics) if metrics else None,
    )
    base = base_model or f"<a {model_type or 'base'} model>"
    dataset = f" on the [{datasets_tag}](https://huggingface.co/datasets/{datasets_tag}) dataset" if datasets_tag else ""
    head = f", with a prediction head for {head_type.replace('_', ' ')}" if head_type else ""
    what = f"An adapter setup (`{setup}`)" if setup else "An adapter"
    config_text = json.dumps(configs if setup else next(iter(configs.values()), {}), indent=2, sort_keys=True)
    lines = [
        "---",
        metadata.to_yaml(),
        "---",
        "",
        f"# Adapter `{repo_id}` for {base}",
        "",
        f"{what} for the `{base}` model, trained{dataset}{head}. It is loaded with the `adapters` library, "
        f"which adds named, composable adapters to Hugging Face transformers models.",
        "",
        "## Usage",
        "",
        "```",
        "pip install -U adapters",
        "```",
        "",
        "```python",
        "from adapters import AutoAdapterModel",
        "",
        f'model = AutoAdapterModel.from_pretrained("{base}")',
        f'adapter_name = model.{load_fn}("{repo_id}", set_active=True)',
        "```",
        "",
        "## Adapter configuration" + ("s" if setup else ""),
        "",
        "```json",
        config_text,
        "```",
        "",
        "## Architecture & Training",
        "",
        architecture_training or CARD_PLACEHOLDER,
        "",
        "## Evaluation results",
        "",
        results or CARD_PLACEHOLDER,
        "",
        "## Citation",
        "",
        citation or CARD_PLACEHOLDER,
        "",
    ]
    return "\n".join(lines)


def _file_states(folder: str) -> dict[str, tuple[int, int]]:
    """``{path relative to folder: (mtime_ns, size)}`` of every file under ``folder``."""
    states = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            states[os.path.relpath(path, folder).replace(os.sep, "/")] = (stat.st_mtime_ns, stat.st_size)
    return states


@contextmanager
def _work_folder(local_path: Optional[str]):
    """``local_path`` (created if missing, kept afterwards), or a temporary folder removed after."""
    if local_path:
        os.makedirs(local_path, exist_ok=True)
        yield local_path
    else:
        with tempfile.TemporaryDirectory(prefix="adapter-push-") as folder:
            yield folder


class HubMixin:
    """Uploading adapters to the Hugging Face Hub (part of :class:`~adapters.ModelAdaptersMixin`;
    see the module docstring for what is uploaded).

    Example::

        >>> model.push_adapter_to_hub("me/bert-sst2-adapter", "sst2", datasets_tag="glue")
    """

    def _check_card_kwargs(self, adapter_card_kwargs) -> dict:
        if adapter_card_kwargs is None:
            return {}
        if not isinstance(adapter_card_kwargs, dict):
            raise AdapterConfigError(
                f"adapter_card_kwargs must be a dict (keys {', '.join(CARD_KWARGS)}), not {type(adapter_card_kwargs).__name__}."
            )
        unknown = sorted(set(adapter_card_kwargs) - set(CARD_KWARGS))
        if unknown:
            raise AdapterConfigError(f"adapter_card_kwargs has unknown key(s) {unknown}; the model card takes {', '.join(CARD_KWARGS)}.")
        return dict(adapter_card_kwargs)

    @staticmethod
    def _check_repo_id(repo_id) -> None:
        if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1:
            raise AdapterConfigError(f"repo_id must be a Hugging Face Hub repo id ('name' or 'org/name'), got {repo_id!r}.")

    def _write_adapter_card(
        self, folder: str, repo_id: str, names: list, datasets_tag, card_kwargs: dict, setup=None, head_setup=None
    ) -> None:
        heads = getattr(self, "heads", None) or {}
        if setup is None:
            head_names = [names[0]]  # save_adapter's head: the one named like the adapter
        else:
            from .loading import _head_setup_names

            head_names = _head_setup_names(head_setup) or []  # the heads save_adapter_setup writes
        head_types = []
        for head_name in head_names:
            head_type = heads[head_name].config.get("head_type") if head_name in heads else None
            if head_type and head_type not in head_types:
                head_types.append(head_type)
        head_type = " and ".join(head_types) or None
        configs = {name: self.adapters_config.get(name).to_dict() for name in names}
        card = render_adapter_card(
            repo_id,
            getattr(self.config, "name_or_path", None),
            getattr(self.config, "model_type", None),
            configs,
            load_fn="load_adapter_setup" if setup is not None else "load_adapter",
            setup=str(setup) if setup is not None else None,
            datasets_tag=datasets_tag,
            head_type=head_type,
            **card_kwargs,
        )
        with open(os.path.join(folder, ADAPTER_CARD_NAME), "w", encoding="utf-8") as f:
            f.write(card)

    def _push_folder(self, repo_id, write, what, local_path, commit_message, private, token, overwrite_adapter_card,
                     create_pr, revision, commit_description, write_card):
        """Let ``write(folder)`` save into the work folder, create the repo (only then: a save that
        fails leaves the Hub untouched), add the card (``write_card(folder, repo_id)`` with the repo
        id the Hub resolved, ``"name"`` becoming ``"user/name"``), and commit the files this push
        wrote or changed and the card, deleting from the repo the files the save removed from the
        folder. The caller has checked every name and argument before."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

        api = HfApi()
        with _work_folder(local_path) as folder:
            before = _file_states(folder)
            write(folder)
            repo_id = api.create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
            if overwrite_adapter_card or not os.path.exists(os.path.join(folder, ADAPTER_CARD_NAME)):
                write_card(folder, repo_id)
            after = _file_states(folder)
            changed = {path for path, state in after.items() if before.get(path) != state}
            changed.add(ADAPTER_CARD_NAME)  # the card, also one the folder had (a new repo gets it too)
            removed = sorted(set(before) - set(after))
            if revision is not None and not revision.startswith("refs/pr"):
                api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
            if removed:  # only those the repo holds: deleting a missing file fails the commit
                in_repo = set(api.list_repo_files(repo_id, revision=revision, token=token))
                removed = [path for path in removed if path in in_repo]
            logger.info(f"Pushing {what} to {repo_id}: {', '.join(sorted(changed))}" + (f"; deleting {', '.join(removed)}" if removed else ""))
            operations = [
                CommitOperationAdd(path_in_repo=path, path_or_fileobj=os.path.join(folder, path)) for path in sorted(changed)
            ] + [CommitOperationDelete(path_in_repo=path) for path in removed]
            return api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message or f"Upload {what}",
                commit_description=commit_description,
                token=token,
                revision=revision,
                create_pr=create_pr,
            )

    def push_adapter_to_hub(
        self,
        repo_id: str,
        adapter_name: str,
        datasets_tag: Optional[str] = None,
        local_path: Optional[str] = None,
        commit_message: Optional[str] = None,
        private: Optional[bool] = None,
        token: Optional[Union[bool, str]] = None,
        overwrite_adapter_card: bool = False,
        create_pr: bool = False,
        revision: Optional[str] = None,
        commit_description: Optional[str] = None,
        adapter_card_kwargs: Optional[dict] = None,
    ):
        """Upload adapter ``adapter_name`` (and, on an AdapterModel, its head) to the Hub repo
        ``repo_id``, created if missing, with a generated model card.

        Args:
            repo_id: ``"name"`` or ``"org/name"``.
            adapter_name: the adapter to upload.
            datasets_tag: a Hugging Face dataset id for the card.
            local_path: write the files here (kept; created if missing) instead of a temporary
                folder; the files the save writes or changes and the card ``README.md`` are
                uploaded (other files there are not), and a file the save removes (the weights
                of the other format) is deleted from the repo too.
            commit_message: the commit's message (default ``"Upload adapter <name>"``).
            private: create the repo private (an existing repo keeps its visibility).
            token: a Hub token, or True / None for the logged-in one.
            overwrite_adapter_card: write the card even if ``local_path`` has a ``README.md``.
            create_pr: open a pull request instead of committing to the branch.
            revision: the branch to commit to (created when missing).
            commit_description: the commit's description.
            adapter_card_kwargs: card fields ``tags``, ``language``, ``license``, ``metrics``,
                ``architecture_training``, ``results``, ``citation``.

        Returns:
            huggingface_hub's ``CommitInfo`` of the commit (a ``str``: the commit's URL).

        Raises:
            AdapterConfigError: no adapter ``adapter_name``, a bad ``repo_id`` or an unknown
                ``adapter_card_kwargs`` key; raised before the Hub is contacted.

        Example::

            >>> model.push_adapter_to_hub("me/bert-sst2", "sst2", datasets_tag="glue",
            ...                           adapter_card_kwargs={"license": "apache-2.0"})
        """
        self._check_repo_id(repo_id)
        card_kwargs = self._check_card_kwargs(adapter_card_kwargs)
        self._check_name(adapter_name)
        if adapter_name not in self.adapters_config.adapters:
            raise AdapterConfigError(
                f"push_adapter_to_hub: the model has no adapter {adapter_name!r}; its adapters are "
                f"{sorted(self.adapters_config.adapters)}."
            )
        return self._push_folder(
            repo_id, lambda folder: self.save_adapter(folder, adapter_name), f"adapter {adapter_name}",
            local_path, commit_message, private, token, overwrite_adapter_card, create_pr, revision, commit_description,
            lambda folder, resolved_id: self._write_adapter_card(folder, resolved_id, [adapter_name], datasets_tag, card_kwargs),
        )

    def push_adapter_setup_to_hub(
        self,
        repo_id: str,
        adapter_setup,
        head_setup=None,
        datasets_tag: Optional[str] = None,
        local_path: Optional[str] = None,
        commit_message: Optional[str] = None,
        private: Optional[bool] = None,
        token: Optional[Union[bool, str]] = None,
        overwrite_adapter_card: bool = False,
        create_pr: bool = False,
        revision: Optional[str] = None,
        commit_description: Optional[str] = None,
        adapter_card_kwargs: Optional[dict] = None,
    ):
        """Upload an adapter setup (a composition such as ``Stack("lang", "task")``: its
        adapters, fusions and heads, as :meth:`save_adapter_setup` writes them) to the Hub repo
        ``repo_id``, with a model card whose snippet loads it with ``load_adapter_setup``.

        ``head_setup`` is passed to :meth:`save_adapter_setup`; the other arguments are
        :meth:`push_adapter_to_hub`'s.

        Returns:
            huggingface_hub's ``CommitInfo`` of the commit.

        Raises:
            AdapterConfigError / CompositionError: a setup naming unknown adapters, a bad
                ``repo_id`` or an unknown ``adapter_card_kwargs`` key; raised before the Hub is
                contacted.

        Example::

            >>> model.push_adapter_setup_to_hub("me/madx-ner", Stack("en", "ner"), datasets_tag="conll2003")
        """
        from .composition import parse_composition

        self._check_repo_id(repo_id)
        card_kwargs = self._check_card_kwargs(adapter_card_kwargs)
        setup = parse_composition(adapter_setup)
        if setup is None:
            raise AdapterConfigError("push_adapter_setup_to_hub: adapter_setup is empty; pass a composition such as Stack('a', 'b').")
        self._validate_setup(setup)
        names = [name for name in setup.names_in_order() if name in self.adapters_config.adapters]
        save_kwargs = {} if head_setup is None else {"head_setup": head_setup}
        return self._push_folder(
            repo_id, lambda folder: self.save_adapter_setup(folder, setup, **save_kwargs), f"adapter setup {setup}",
            local_path, commit_message, private, token, overwrite_adapter_card, create_pr, revision, commit_description,
            lambda folder, resolved_id: self._write_adapter_card(
                folder, resolved_id, sorted(names), datasets_tag, card_kwargs, setup=setup, head_setup=head_setup
            ),
        )
