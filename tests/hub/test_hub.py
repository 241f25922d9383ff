"""Hub publishing: push / pull against an in-memory Hub, via the real huggingface_hub client."""

from __future__ import annotations

import json
import socket
import traceback

import pytest
import torch
from huggingface_hub import HfApi

from regiontune.artifacts import ArtifactError, BackboneMismatchError
from regiontune.hub.client import HubError, pull, push, validate_repo_id
from tests.hub.artefacts import files_of, make_adapter, make_backbone
from tests.hubserver import HubServer

TOKEN = "hf_testsecrettoken0123456789"
WRONG = "not-the-right-token-4242"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The fake Hub, requiring TOKEN; small pages so that tree pagination is exercised."""
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with HubServer(token=TOKEN, page_size=2) as server:
        yield server


@pytest.fixture
def hub_server(hub):
    """(endpoint, token) of a running fake Hub."""
    return hub.endpoint, TOKEN


def test_push_pull_roundtrip(hub_server, tmp_path):
    endpoint, token = hub_server
    src = make_adapter(tmp_path / "src")
    sha = push(src, "acme/de-lora", token=token, endpoint=endpoint)
    assert len(sha) == 40
    out = pull("acme/de-lora", tmp_path / "out" / "de", token=token, endpoint=endpoint)
    pushed, pulled = files_of(src), files_of(out)
    assert set(pulled) == set(pushed) == {"README.md", "adapter_config.json",
                                          "adapter_model.safetensors", "region.json"}
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        assert pulled[name] == pushed[name], name
    meta = json.loads(pulled["region.json"])
    assert meta.pop("hub") == {"repo_id": "acme/de-lora", "revision": "main", "commit": sha}
    assert meta == json.loads(pushed["region.json"])
    assert [p.name for p in out.parent.iterdir()] == ["de"]  # no temp or cache dirs left


def test_push_twice_and_pull_old_commit(hub_server, tmp_path):
    endpoint, token = hub_server
    src = make_adapter(tmp_path / "src", value=1.0)
    first_weights = (src / "adapter_model.safetensors").read_bytes()
    first = push(src, "acme/de-lora", token=token, endpoint=endpoint)
    make_adapter(tmp_path / "src", value=2.0)
    second = push(src, "acme/de-lora", token=token, endpoint=endpoint, commit_message="retrain")
    assert second != first
    old = pull("acme/de-lora", tmp_path / "old", revision=first, token=token, endpoint=endpoint)
    assert (old / "adapter_model.safetensors").read_bytes() == first_weights
    assert json.loads((old / "region.json").read_text())["hub"]["commit"] == first
    new = pull("acme/de-lora", tmp_path / "new", token=token, endpoint=endpoint)
    assert (new / "adapter_model.safetensors").read_bytes() == (
        src / "adapter_model.safetensors").read_bytes()


def test_push_and_pull_branch(hub_server, tmp_path):
    endpoint, token = hub_server
    src = make_adapter(tmp_path / "src")
    sha = push(src, "acme/de-lora", token=token, endpoint=endpoint, revision="dev")
    with pytest.raises(ArtifactError, match="no .safetensors"):  # main only has .gitattributes
        pull("acme/de-lora", tmp_path / "main", token=token, endpoint=endpoint)
    out = pull("acme/de-lora", tmp_path / "dev", revision="dev", token=token, endpoint=endpoint)
    hub_meta = json.loads((out / "region.json").read_text())["hub"]
    assert hub_meta == {"repo_id": "acme/de-lora", "revision": "dev", "commit": sha}


def test_backbone_roundtrip_and_adapter_check(hub_server, tmp_path):
    endpoint, token = hub_server
    backbone = make_backbone(tmp_path / "src")
    sha = push(backbone, "acme/backbone", token=token, endpoint=endpoint)
    out = pull("acme/backbone", tmp_path / "bb", token=token, endpoint=endpoint)
    assert (out / "model.safetensors").read_bytes() == (backbone / "model.safetensors").read_bytes()
    assert json.loads((out / "regiontune.json").read_text())["hub"]["commit"] == sha
    push(make_adapter(tmp_path / "src"), "acme/de-lora", token=token, endpoint=endpoint)
    pulled = pull("acme/de-lora", tmp_path / "ad", token=token, endpoint=endpoint, backbone_dir=out)
    assert (pulled / "adapter_model.safetensors").is_file()


def test_pull_onto_other_backbone_refused(hub_server, tmp_path):
    endpoint, token = hub_server
    push(make_adapter(tmp_path / "src", fp="sha256:aaa"), "acme/de-lora", token=token,
         endpoint=endpoint)
    other = make_backbone(tmp_path / "other", fp="sha256:bbb")
    out = tmp_path / "out" / "de"
    with pytest.raises(BackboneMismatchError) as info:
        pull("acme/de-lora", out, token=token, endpoint=endpoint, backbone_dir=other)
    assert "sha256:aaa" in str(info.value) and "sha256:bbb" in str(info.value)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temp dir left behind either


def test_missing_repo_and_revision(hub_server, tmp_path):
    endpoint, token = hub_server
    with pytest.raises(HubError, match=r"repository acme/nothing not found at http://127\.0\.0\.1"):
        pull("acme/nothing", tmp_path / "out", token=token, endpoint=endpoint)
    push(make_adapter(tmp_path / "src"), "acme/de-lora", token=token, endpoint=endpoint)
    with pytest.raises(HubError, match="revision 'nope' not found in acme/de-lora"):
        pull("acme/de-lora", tmp_path / "out", revision="nope", token=token, endpoint=endpoint)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("action", ["push", "pull"])
def test_unauthorised_never_echoes_token(hub_server, tmp_path, action):
    endpoint, token = hub_server
    src = make_adapter(tmp_path / "src")
    push(src, "acme/de-lora", token=token, endpoint=endpoint)
    with pytest.raises(HubError, match="unauthorised") as info:
        if action == "push":
            push(src, "acme/de-lora", token=WRONG, endpoint=endpoint)
        else:
            pull("acme/de-lora", tmp_path / "out", token=WRONG, endpoint=endpoint)
    assert "HF_TOKEN" in str(info.value)
    assert WRONG not in str(info.value)
    assert WRONG not in "".join(traceback.format_exception(info.value))  # chained causes too
    assert not (tmp_path / "out").exists()


def test_token_from_environment(hub_server, tmp_path, monkeypatch):
    endpoint, token = hub_server
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # read at call time, not at import
    sha = push(make_adapter(tmp_path / "src"), "acme/de-lora")
    out = pull("acme/de-lora", tmp_path / "out")
    assert json.loads((out / "region.json").read_text())["hub"]["commit"] == sha


def test_pull_refuses_pickles_and_leaves_out_untouched(hub_server, tmp_path):
    endpoint, token = hub_server
    push(make_adapter(tmp_path / "src"), "acme/de-lora", token=token, endpoint=endpoint)
    HfApi(endpoint=endpoint, token=token).upload_file(
        path_or_fileobj=b"\x80\x04pickle", path_in_repo="pytorch_model.bin",
        repo_id="acme/de-lora", commit_message="add a pickle")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous artefact")
    with pytest.raises(ArtifactError, match="pickle"):
        pull("acme/de-lora", out, token=token, endpoint=endpoint)
    assert files_of(out) == {"keep.txt": b"previous artefact"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_pull_refuses_path_traversal(hub, tmp_path):
    push(make_adapter(tmp_path / "src"), "acme/de-lora", token=TOKEN, endpoint=hub.endpoint)
    repo = hub.state.repos["acme/de-lora"]  # the client refuses such names: plant one directly
    files = {**repo.commits[repo.branches["main"]].files, "../escape.json": b"{}"}
    hub.state.commit(repo, "main", files, "evil")
    with pytest.raises(ArtifactError, match="unsafe file name"):
        pull("acme/de-lora", tmp_path / "out" / "de", token=TOKEN, endpoint=hub.endpoint)
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.json").exists()


@pytest.mark.parametrize("repo_id", ["noslash", "a/b/c", "-org/x", "org/x-", "org/a..b", "org/",
                                     "/x", "org/x y", "org/../x", "org/x_", ".org/x", "org/ä"])
def test_invalid_repo_ids(repo_id, tmp_path):
    with pytest.raises(HubError, match="invalid repository id"):
        validate_repo_id(repo_id)
    with pytest.raises(HubError, match="invalid repository id"):
        push(make_adapter(tmp_path), repo_id, token=TOKEN, endpoint="http://127.0.0.1:9")
    with pytest.raises(HubError, match="invalid repository id"):
        pull(repo_id, tmp_path / "out", token=TOKEN, endpoint="http://127.0.0.1:9")


def test_valid_repo_ids():
    for repo_id in ("acme/de-lora", "A_b.c/x.y_z-1", "u/m"):
        assert validate_repo_id(repo_id) == repo_id


def test_push_refuses_pickles(hub, tmp_path):
    src = make_adapter(tmp_path / "src")
    (src / "model.pt").write_bytes(b"\x80\x04")
    with pytest.raises(ArtifactError, match="pickle"):
        push(src, "acme/de-lora", token=TOKEN, endpoint=hub.endpoint)
    assert hub.state.repos == {}  # refused before any request


def test_push_refuses_non_artefact(hub, tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(ArtifactError, match="neither a backbone"):
        push(tmp_path, "acme/junk", token=TOKEN, endpoint=hub.endpoint)


def test_pushed_card_and_hand_written_readme(hub_server, tmp_path):
    endpoint, token = hub_server
    src = make_adapter(tmp_path / "src")
    push(src, "acme/de-lora", token=token, endpoint=endpoint)
    info = HfApi(endpoint=endpoint, token=token).model_info("acme/de-lora")
    assert info.card_data.library_name == "regiontune"
    assert "region-adapter" in info.card_data.tags
    (src / "README.md").write_text("# my own words\n")
    push(src, "acme/de-lora", token=token, endpoint=endpoint)
    out = pull("acme/de-lora", tmp_path / "out", token=token, endpoint=endpoint)
    assert (out / "README.md").read_text() == "# my own words\n"


def test_unreachable_hub(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(HubError, match="cannot reach the hub at http://127.0.0.1"):
        pull("acme/de-lora", tmp_path / "out", token=TOKEN, endpoint=endpoint)
    with pytest.raises(HubError, match="cannot reach the hub"):
        push(make_adapter(tmp_path), "acme/de-lora", token=TOKEN, endpoint=endpoint)


def test_real_adapter_round_trip_gives_identical_scores(hub_server, tmp_path, tiny_backbone_dir,
                                                         tiny_regions):
    """A trained adapter pushed and pulled back scores exactly like the original."""
    from regiontune.adapters import load_adapter, save_adapter
    from regiontune.config import AdaptConfig, TrainConfig
    from regiontune.evaluation.evaluate import task_scores
    from regiontune.model.backbone import load_backbone
    from regiontune.training.adapt import train_region

    endpoint, token = hub_server
    backbone, vocab, meta = load_backbone(tiny_backbone_dir)
    island = tiny_regions["island"]
    task, _ = train_region(backbone, vocab, island, AdaptConfig(region="island"),
                           TrainConfig(epochs=1, batch_size=16, progress=False))
    torch.manual_seed(0)
    with torch.no_grad():  # make every adapter tensor non-trivial
        for p in task.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    src = tmp_path / "island"
    save_adapter(task, "lora", "island", {"region": "island",
                                          "backbone_fingerprint": meta["fingerprint"]}, src)
    push(src, "acme/island-lora", token=token, endpoint=endpoint)
    out = pull("acme/island-lora", tmp_path / "pulled", token=token, endpoint=endpoint,
               backbone_dir=tiny_backbone_dir)
    histories = [c.history for c in island.test]
    scores = []
    for directory in (src, out):
        model, vocab, meta = load_backbone(tiny_backbone_dir)
        loaded = load_adapter(directory, model, vocab, meta["fingerprint"])
        scores.append(task_scores(loaded, histories, island.catalogue))
    assert torch.equal(scores[0], scores[1])
    assert torch.allclose(scores[0], task_scores(task, histories, island.catalogue), atol=1e-5)


def test_pushed_metadata_holds_no_absolute_paths(hub_server, tmp_path):
    endpoint, token = hub_server
    src = make_adapter(tmp_path / "src")
    host = "/home/someone/secret-project/runs/backbone"
    meta = json.loads((src / "region.json").read_text())
    (src / "region.json").write_text(json.dumps({**meta, "backbone_path": host}))
    config = json.loads((src / "adapter_config.json").read_text())
    (src / "adapter_config.json").write_text(json.dumps({**config,
                                                         "base_model_name_or_path": host}))
    push(src, "acme/de-paths", token=token, endpoint=endpoint)
    out = pull("acme/de-paths", tmp_path / "out", token=token, endpoint=endpoint)
    for name in ("region.json", "adapter_config.json", "README.md"):
        assert "/home/someone" not in (out / name).read_text(), name
    assert json.loads((out / "region.json").read_text())["backbone_path"] == "backbone"
    assert json.loads((src / "region.json").read_text())["backbone_path"] == host  # local kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no staging left
