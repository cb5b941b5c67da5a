"""The Hugging Face Hub, offline: ``load_adapter("org/name")`` through a huggingface_hub cache laid
out as huggingface_hub lays it (checked with huggingface_hub's own ``scan_cache_dir``), and
``push_adapter_to_hub`` / ``push_adapter_setup_to_hub`` up to huggingface_hub's upload calls, the
files they would upload checked one by one."""

from __future__ import annotations

import hashlib
import json
import os

import huggingface_hub
import pytest
import torch
import transformers
from huggingface_hub import HfApi, ModelCard, scan_cache_dir
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file

import adapters
from adapters import AdapterConfigError, AdapterLoadError, CompositionError, Stack

from conftest import CONFIGS, make_inputs, perturb_adapter

COMMIT_1, COMMIT_2 = "1" * 40, "2" * 40


def bert_adapter_model(seed: int = 0):
    """A tiny BertAdapterModel named like a Hub checkpoint, with adapter "sst2" (perturbed) and its
    classification head."""
    torch.manual_seed(0)
    config = CONFIGS["bert"]()
    config.name_or_path = "org/tiny-bert"
    model = adapters.BertAdapterModel(config).eval()
    torch.manual_seed(seed)
    model.add_adapter("sst2", config="seq_bn[reduction_factor=4]")
    model.add_classification_head("sst2", num_labels=2, id2label={0: "neg", 1: "pos"})
    perturb_adapter(model, "sst2", seed=seed)
    return model


def logits(model, setup="sst2"):
    with torch.no_grad(), adapters.AdapterSetup(setup):
        return model(**make_inputs("bert")).logits


def put_in_cache(cache_dir, repo_id: str, commit: str, folder, refs=("main",)) -> str:
    """Lay ``folder``'s files into ``cache_dir`` as huggingface_hub's downloads do: content in
    ``models--org--name/blobs/<hash>``, the commit's tree in ``snapshots/<commit>/`` as relative
    symbolic links to the blobs, and ``refs/<branch or tag>`` holding the commit hash."""
    storage = os.path.join(cache_dir, huggingface_hub.file_download.repo_folder_name(repo_id=repo_id, repo_type="model"))
    snapshot = os.path.join(storage, "snapshots", commit)
    os.makedirs(os.path.join(storage, "blobs"), exist_ok=True)
    for root, _, files in os.walk(folder):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), folder)
            with open(os.path.join(root, name), "rb") as f:
                content = f.read()
            blob = os.path.join(storage, "blobs", hashlib.sha256(content).hexdigest())
            with open(blob, "wb") as f:
                f.write(content)
            link = os.path.join(snapshot, relative)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    os.makedirs(os.path.join(storage, "refs"), exist_ok=True)
    for ref in refs:
        with open(os.path.join(storage, "refs", ref), "w") as f:
            f.write(commit)
    return snapshot


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 as huggingface_hub reads it (its constants are read at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def test_load_adapter_from_the_hub_cache_offline(tmp_path, offline, monkeypatch):
    trained = bert_adapter_model(seed=1)
    retrained = bert_adapter_model(seed=2)
    trained.save_adapter(str(tmp_path / "v1"), "sst2")
    retrained.save_adapter(str(tmp_path / "v2"), "sst2")
    cache = tmp_path / "hub"
    put_in_cache(str(cache), "org/sst2-adapter", COMMIT_1, tmp_path / "v1", refs=("v1",))
    put_in_cache(str(cache), "org/sst2-adapter", COMMIT_2, tmp_path / "v2", refs=("main",))

    # huggingface_hub itself reads the cache as one repo with two revisions and these files
    (repo,) = scan_cache_dir(str(cache)).repos
    assert repo.repo_id == "org/sst2-adapter" and repo.repo_type == "model"
    assert {r.commit_hash: set(r.refs) for r in repo.revisions} == {COMMIT_1: {"v1"}, COMMIT_2: {"main"}}
    files = {f.file_name for r in repo.revisions for f in r.files}
    assert files == {"adapter_config.json", "adapter.safetensors", "head_config.json", "model_head.safetensors"}

    # cache_dir=..., the default revision (main), a tag, a commit hash, AdapterHub's version=
    for kwargs, source in (
        ({}, retrained), ({"revision": "v1"}, trained), ({"revision": COMMIT_1}, trained), ({"version": "v1"}, trained),
    ):
        fresh = bert_adapter_model(seed=9)
        fresh.delete_adapter("sst2")
        fresh.delete_head("sst2")
        name = fresh.load_adapter("org/sst2-adapter", cache_dir=str(cache), **kwargs)
        assert name == "sst2" and "sst2" in fresh.heads, kwargs
        assert torch.equal(logits(fresh), logits(source)), kwargs
        assert fresh.config.id2label == {0: "neg", 1: "pos"}

    # HF_HUB_CACHE pointing at the cache, no cache_dir; on transformers' own model class too
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    torch.manual_seed(0)
    config = CONFIGS["bert"]()
    plain = adapters.init(transformers.BertModel(config).eval())
    reference = adapters.init(transformers.BertModel(config).eval())
    reference.load_state_dict(plain.state_dict())
    assert plain.load_adapter("org/sst2-adapter", with_head=False, set_active=True) == "sst2"
    reference.load_adapter(str(tmp_path / "v2"), with_head=False, set_active=True)
    inputs = make_inputs("bert")
    with torch.no_grad():
        assert torch.equal(plain(**inputs).last_hidden_state, reference(**inputs).last_hidden_state)


def test_a_repo_missing_from_the_cache_offline_says_so_and_changes_nothing(tmp_path, offline):
    model = bert_adapter_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterLoadError, match="org/not-cached.*could not be downloaded from the Hugging Face Hub"):
        model.load_adapter("org/not-cached", cache_dir=str(tmp_path / "empty"), load_as="other")
    assert set(model.adapters_config.adapters) == {"sst2"} and set(model.heads) == {"sst2"}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # AdapterHub's archived index is refused with what to use instead
    for call in (lambda: model.load_adapter("sentiment/sst-2@ukp"), lambda: model.load_adapter("sst-2", source="ah")):
        with pytest.raises(AdapterLoadError, match="archived adapter index.*Hugging Face Hub repo"):
            call()


class FakeHub:
    """Stands in for the Hub behind ``HfApi``: records every call, and the files of each commit
    (path in repo -> bytes, read while the upload call runs, as the upload would read them; a
    deleted path -> None), and the paths each repo holds after them."""

    def __init__(self, monkeypatch):
        self.calls, self.commits, self.repos = [], [], {}
        hub = self

        def create_repo(api, repo_id, *, token=None, private=None, exist_ok=False, **kwargs):
            hub.calls.append(("create_repo", repo_id, {"token": token, "private": private, "exist_ok": exist_ok}))
            namespaced = repo_id if "/" in repo_id else f"me/{repo_id}"  # the Hub puts a bare name under the user
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{namespaced}")

        def create_branch(api, repo_id, *, branch, token=None, exist_ok=False, **kwargs):
            hub.calls.append(("create_branch", repo_id, {"branch": branch, "exist_ok": exist_ok}))

        def create_commit(api, repo_id, operations, *, commit_message, commit_description=None, token=None,
                          revision=None, create_pr=None, **kwargs):
            files, held = {}, hub.repos.setdefault(repo_id, set())
            for op in operations:
                if isinstance(op, huggingface_hub.CommitOperationDelete):
                    assert op.path_in_repo in held, f"deleting {op.path_in_repo}, which the repo does not hold"
                    files[op.path_in_repo] = None
                    held.discard(op.path_in_repo)
                    continue
                assert isinstance(op, huggingface_hub.CommitOperationAdd)
                with open(op.path_or_fileobj, "rb") as f:
                    files[op.path_in_repo] = f.read()
                held.add(op.path_in_repo)
            hub.commits.append(files)
            hub.calls.append(("create_commit", repo_id, {
                "commit_message": commit_message, "commit_description": commit_description, "token": token,
                "revision": revision, "create_pr": create_pr,
            }))
            return f"https://huggingface.co/{repo_id}/commit/{'3' * 40}"

        def list_repo_files(api, repo_id, *, revision=None, token=None, **kwargs):
            hub.calls.append(("list_repo_files", repo_id, {"revision": revision}))
            return sorted(hub.repos.get(repo_id, ()))

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "list_repo_files", list_repo_files)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)

    def write(self, files: dict, folder) -> str:
        """The committed files as a local folder (what a download of the repo would give)."""
        for path, content in files.items():
            target = os.path.join(folder, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(content)
        return str(folder)


def test_push_adapter_to_hub_uploads_the_saved_adapter_head_and_a_model_card(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    model = bert_adapter_model(seed=1)
    result = model.push_adapter_to_hub(
        "bert-sst2", "sst2", datasets_tag="glue", private=True, token="hf_x", create_pr=True, revision="dev",
        commit_description="trained 3 epochs",
        adapter_card_kwargs={"license": "apache-2.0", "language": "en", "metrics": ["accuracy"], "results": "acc 0.91"},
    )
    assert result == f"https://huggingface.co/me/bert-sst2/commit/{'3' * 40}"
    assert [c[0] for c in hub.calls] == ["create_repo", "create_branch", "create_commit"]
    assert hub.calls[0][1:] == ("bert-sst2", {"token": "hf_x", "private": True, "exist_ok": True})
    assert hub.calls[1][1] == hub.calls[2][1] == "me/bert-sst2"  # the id the Hub resolved
    assert hub.calls[1][2] == {"branch": "dev", "exist_ok": True}
    assert hub.calls[2][2] == {
        "commit_message": "Upload adapter sst2", "commit_description": "trained 3 epochs", "token": "hf_x",
        "revision": "dev", "create_pr": True,
    }

    # file by file: exactly what save_adapter writes, plus the card
    (files,) = hub.commits
    model.save_adapter(str(tmp_path / "local"), "sst2")
    local = sorted(os.listdir(tmp_path / "local"))
    assert sorted(files) == sorted(local + ["README.md"])
    assert local == ["adapter.safetensors", "adapter_config.json", "head_config.json", "model_head.safetensors"]
    for name in ("adapter_config.json", "head_config.json"):
        assert json.loads(files[name]) == json.loads((tmp_path / "local" / name).read_bytes()), name
    uploaded_folder = hub.write(files, tmp_path / "uploaded")
    for name in ("adapter.safetensors", "model_head.safetensors"):
        ours, theirs = load_file(os.path.join(uploaded_folder, name)), load_file(str(tmp_path / "local" / name))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name

    # the card: metadata huggingface_hub reads, the loading snippet, the config
    card = ModelCard.load(os.path.join(uploaded_folder, "README.md"))
    assert card.data.library_name == "adapter-transformers"
    assert card.data.tags == ["adapter-transformers", "adapters", "bert"]
    assert card.data.base_model == "org/tiny-bert" and card.data.datasets == ["glue"]
    assert card.data.license == "apache-2.0" and card.data.language == "en" and card.data.metrics == ["accuracy"]
    assert 'model = AutoAdapterModel.from_pretrained("org/tiny-bert")' in card.text
    assert 'model.load_adapter("me/bert-sst2", set_active=True)' in card.text
    assert "prediction head for classification" in card.text and "acc 0.91" in card.text
    config_block = card.text.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(config_block) == model.adapters_config.get("sst2").to_dict()

    # the uploaded folder loads back to the same model
    fresh = bert_adapter_model(seed=5)
    fresh.load_adapter(uploaded_folder, load_as="sst2", overwrite_ok=True)
    assert torch.equal(logits(fresh), logits(model))


def test_push_with_local_path_uploads_what_changed_and_keeps_a_written_card(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    model = bert_adapter_model(seed=1)
    model.push_adapter_to_hub("me/a", "sst2", local_path=str(tmp_path / "repo"))
    first = hub.commits[-1]
    assert "README.md" in first and (tmp_path / "repo" / "README.md").exists()
    assert hub.calls[-1][2]["revision"] is None and [c[0] for c in hub.calls] == ["create_repo", "create_commit"]

    # the user edits the card; the weights change: the card stays (and is uploaded as it is), the
    # weights are uploaded, other files the push did not write are not
    (tmp_path / "repo" / "README.md").write_text("my card")
    (tmp_path / "repo" / "notes.txt").write_text("kept, not uploaded again")
    perturb_adapter(model, "sst2", seed=7)
    os.utime(tmp_path / "repo" / "adapter.safetensors", ns=(0, 0))  # changed even within one mtime tick
    model.push_adapter_to_hub("me/a", "sst2", local_path=str(tmp_path / "repo"), commit_message="retrained")
    second = hub.commits[-1]
    assert (tmp_path / "repo" / "README.md").read_text() == "my card"
    assert second["README.md"] == b"my card" and "notes.txt" not in second and "adapter.safetensors" in second
    assert hub.calls[-1][2]["commit_message"] == "retrained"

    model.push_adapter_to_hub("me/a", "sst2", local_path=str(tmp_path / "repo"), overwrite_adapter_card=True)
    assert hub.commits[-1]["README.md"].startswith(b"---\n") and (tmp_path / "repo" / "README.md").read_text() != "my card"


def test_push_refuses_bad_input_before_contacting_the_hub(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    model = bert_adapter_model()
    for call, error, message in (
        (lambda: model.push_adapter_to_hub("me/a", "missing"), AdapterConfigError, "no adapter 'missing'"),
        (lambda: model.push_adapter_to_hub("me/a", "../x"), AdapterConfigError, "Invalid adapter name"),
        (lambda: model.push_adapter_to_hub("a/b/c", "sst2"), AdapterConfigError, "repo_id must be"),
        (lambda: model.push_adapter_to_hub("me/a", "sst2", adapter_card_kwargs={"licence": "mit"}), AdapterConfigError,
         "unknown key.*licence"),
        (lambda: model.push_adapter_setup_to_hub("me/a", Stack("sst2", "missing")), CompositionError, "unknown adapter 'missing'"),
    ):
        with pytest.raises(error, match=message):
            call()
    assert hub.calls == []


def test_push_adapter_setup_to_hub(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    model = bert_adapter_model(seed=1)
    model.add_adapter("lang", config="seq_bn")
    perturb_adapter(model, "lang", seed=3)
    setup = Stack("lang", "sst2")
    model.push_adapter_setup_to_hub("me/setup", setup, head_setup="sst2", datasets_tag="glue")
    (files,) = hub.commits
    model.save_adapter_setup(str(tmp_path / "local"), setup, head_setup="sst2")
    local = sorted(os.path.relpath(os.path.join(r, f), tmp_path / "local").replace(os.sep, "/")
                   for r, _, fs in os.walk(tmp_path / "local") for f in fs)
    assert sorted(files) == sorted(local + ["README.md"])
    card = ModelCard.load(hub.write({"README.md": files["README.md"]}, tmp_path / "card") + "/README.md")
    assert 'model.load_adapter_setup("me/setup", set_active=True)' in card.text
    assert str(setup) in card.text and card.data.datasets == ["glue"]
    configs = json.loads(card.text.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert configs == {name: model.adapters_config.get(name).to_dict() for name in ("lang", "sst2")}


def test_push_with_local_path_uploads_a_card_already_there_and_deletes_the_weights_save_removed(tmp_path, monkeypatch):
    # review 6: a README.md already in local_path never reached even a new repo; a weights file of the
    # other format that the save removed stayed in the repo
    hub = FakeHub(monkeypatch)
    model = bert_adapter_model(seed=1)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("written by hand")
    model.push_adapter_to_hub("me/a", "sst2", local_path=str(repo))
    assert hub.commits[-1]["README.md"] == b"written by hand"

    model.save_adapter(str(repo), "sst2", use_safetensors=False)  # AdapterHub's .bin weights, pushed as they are
    hub.repos["me/a"] |= {"pytorch_adapter.bin", "pytorch_model_head.bin"}
    model.push_adapter_to_hub("me/a", "sst2", local_path=str(repo))
    assert not (repo / "pytorch_adapter.bin").exists()
    deleted = {path for path, content in hub.commits[-1].items() if content is None}
    assert deleted == {"pytorch_adapter.bin", "pytorch_model_head.bin"}
    assert hub.repos["me/a"] == {"README.md", "adapter_config.json", "adapter.safetensors", "head_config.json", "model_head.safetensors"}


def test_push_that_fails_to_save_creates_no_repo(tmp_path, monkeypatch):
    # review 21: create_repo ran before the save, leaving an empty repo behind
    hub = FakeHub(monkeypatch)
    model = bert_adapter_model(seed=1)

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_adapter", failing_save)
    with pytest.raises(OSError, match="disk full"):
        model.push_adapter_to_hub("me/a", "sst2")
    with pytest.raises(OSError, match="disk full"):
        model.push_adapter_setup_to_hub("me/a", Stack("sst2"))
    assert hub.calls == []


def test_setup_card_names_the_head_type_of_head_setup(tmp_path, monkeypatch):
    # review 12: the card looked for a head named like the setup ("Stack[lang, sst2]"), never found
    hub = FakeHub(monkeypatch)
    model = bert_adapter_model(seed=1)
    model.add_adapter("lang", config="seq_bn")
    model.push_adapter_setup_to_hub("me/setup", Stack("lang", "sst2"), head_setup="sst2")
    card = hub.commits[-1]["README.md"].decode()
    assert "prediction head for classification" in card
    model.add_tagging_head("ner", num_labels=3)
    model.push_adapter_setup_to_hub("me/setup2", Stack("lang", "sst2"), head_setup=["sst2", "ner"])
    assert "prediction head for classification and tagging" in hub.commits[-1]["README.md"].decode()
    model.push_adapter_setup_to_hub("me/setup3", Stack("lang", "sst2"))
    assert "prediction head" not in hub.commits[-1]["README.md"].decode()
