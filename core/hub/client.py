"""Publish artefacts to a model hub (Hugging Face Hub or a compatible server) and fetch them back.

``push`` uploads a backbone or adapter directory as one commit and returns its sha; ``pull``
downloads a repository at a revision into a directory, atomically, after refusing pickle files
and checking (optionally) that an adapter fits a local backbone. The pulled metadata file
records where it came from: ``{"hub": {"repo_id", "revision", "commit"}}``.

Tokens come from the argument, ``HF_TOKEN`` or the ``hf auth login`` cache; they are never
logged, and every error message is scrubbed of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from huggingface_hub import HfApi, get_token, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:  # the HTTP client huggingface_hub 2.x is built on; 1.x used httpx
    import httpx2 as _httpx
    from httpx2 import TransportError
except ImportError:  # pragma: no cover
    import httpx as _httpx
    from httpx import TransportError

from regiontune.adapters.folder import AdapterFolder
from regiontune.artifacts import (
    ADAPTER_META,
    BACKBONE_META,
    PICKLE_SUFFIXES,
    ArtifactError,
    BackboneMismatchError,
    artifact_kind,
    atomic_dir,
    read_json,
    refuse_pickles,
    write_json,
)
from regiontune.artifacts.cards import CARD_MARKER, public, write_card

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_HEX_SHA = re.compile(r"[0-9a-f]{40}")
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")
# Hub-side git files, not part of an artefact.
_HUB_ONLY = (".gitattributes",)


class HubError(RuntimeError):
    """A hub operation failed; the message says which repository, where, and what to do."""


class _BoundedTransport(_httpx.BaseTransport):
    """Caps each request's connect / read / write / pool timeouts, also for the calls of
    huggingface_hub that pass ``timeout=None`` (no limit) themselves."""

    def __init__(self, inner: _httpx.BaseTransport, connect: float, read: float) -> None:
        self.inner = inner
        self.bounds = {"connect": connect, "read": read, "write": read, "pool": connect}

    def handle_request(self, request: _httpx.Request) -> _httpx.Response:
        timeout = dict(request.extensions.get("timeout") or {})
        for key, bound in self.bounds.items():
            if timeout.get(key) is None or timeout[key] > bound:
                timeout[key] = bound
        request.extensions["timeout"] = timeout
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def set_timeouts(connect_s: float | None, read_s: float | None = None) -> None:
    """Bound every HTTP request huggingface_hub makes in this process: ``connect_s`` seconds
    to connect, ``read_s`` (default: ``connect_s``) without a byte. ``None``: the client's
    defaults again (some calls wait forever). Process-wide, as huggingface_hub shares one
    client; its retries still add up, so callers that need a total deadline set their own
    (:class:`~regiontune.serving.recommender.Recommender` does)."""
    from huggingface_hub import set_client_factory

    try:  # the default client, with the hub's request hooks (offline mode, request ids)
        from huggingface_hub.utils._http import default_client_factory
    except ImportError:  # pragma: no cover - a client without it: plain httpx settings
        def default_client_factory() -> _httpx.Client:
            return _httpx.Client(follow_redirects=True)
    if connect_s is None:
        set_client_factory(default_client_factory)
        return
    read_s = connect_s if read_s is None else read_s
    if not (connect_s > 0 and read_s > 0):
        raise ValueError(f"hub timeouts must be positive, not {connect_s!r} / {read_s!r}")

    def bounded_client() -> _httpx.Client:
        base = default_client_factory()
        transport = _BoundedTransport(_httpx.HTTPTransport(), connect_s, read_s)
        return _httpx.Client(transport=transport, event_hooks=base.event_hooks,
                             follow_redirects=True,
                             timeout=_httpx.Timeout(read_s, connect=connect_s))

    set_client_factory(bounded_client)


def validate_repo_id(repo_id: str) -> str:
    """Check an ``ORG/NAME`` repository id (letters, digits, ``-``, ``_``, ``.``)."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    bad = (len(parts) != 2 or not all(_NAME.fullmatch(p) for p in parts)
           or ".." in repo_id or "--" in repo_id or len(parts[1]) > 96)
    if bad:
        raise HubError(f"invalid repository id {repo_id!r}: expected ORG/NAME made of letters, "
                       "digits, '-', '_' and '.', not starting or ending with a separator, "
                       "without '..' or '--', name at most 96 characters")
    return repo_id


def _endpoint(endpoint: str | None) -> str:
    # huggingface_hub reads HF_ENDPOINT once at import; read it now and always pass it on.
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _token(token: str | None) -> str | None:
    return token or os.environ.get("HF_TOKEN") or get_token()


def _scrub(text: str, token: str | None) -> str:
    """Remove the token (and anything shaped like a Hub token) from a message."""
    if token:
        text = text.replace(token, "***")
    return _TOKEN_LIKE.sub("hf_***", text)


def _server_message(err: HfHubHTTPError) -> str:
    """The server's own explanation, when it sent one."""
    message = getattr(err, "server_message", None) or ""
    return f" ({message.strip()})" if message.strip() else ""


@contextlib.contextmanager
def _hub_errors(repo_id: str, endpoint: str, token: str | None, revision: str | None,
                action: str) -> Iterator[None]:
    """Turn huggingface_hub / network errors into a HubError with a clear, token-free message."""
    try:
        yield
    except RevisionNotFoundError as err:
        message = (f"revision {revision or 'main'!r} not found in {repo_id} at {endpoint}; "
                   "check the branch, tag or commit name")
        raise HubError(_scrub(message, token)) from err
    except RepositoryNotFoundError as err:
        message = (f"repository {repo_id} not found at {endpoint} (or you lack access: "
                   "check the name, and HF_TOKEN / `hf auth login` for private repositories)")
        raise HubError(_scrub(message, token)) from err
    except EntryNotFoundError as err:
        message = f"could not fetch a file of {repo_id} from {endpoint}: {err}"
        raise HubError(_scrub(message, token)) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            message = (f"unauthorised to {action} {repo_id} at {endpoint} (HTTP {status}"
                       f"{', no token sent' if not token else ''}): check HF_TOKEN / "
                       "`hf auth login`, and that the token has "
                       f"{'write' if action == 'push' else 'read'} access to this repository")
        else:
            message = (f"hub error while trying to {action} {repo_id} at {endpoint}: HTTP {status}"
                       f"{_server_message(err)}")
        raise HubError(_scrub(message, token)) from err
    except (TransportError, ConnectionError) as err:
        message = f"cannot reach the hub at {endpoint} to {action} {repo_id}: {err}"
        raise HubError(_scrub(message, token)) from err


def _meta_file(kind: str) -> str:
    return BACKBONE_META if kind == "backbone" else ADAPTER_META


def _ensure_card(directory: Path, kind: str) -> None:
    """Write README.md when missing, refresh it when it is one we generated."""
    readme = directory / "README.md"
    if readme.is_file() and CARD_MARKER not in readme.read_text(encoding="utf-8", errors="replace"):
        logger.info("%s: keeping the hand-written README.md", directory)
        return
    meta_path = directory / _meta_file(kind)
    meta = read_json(meta_path, f"{kind} metadata") if meta_path.is_file() else {}
    write_card(directory, meta, kind)


@contextlib.contextmanager
def _publishable(directory: Path) -> Iterator[Path]:
    """A view of ``directory`` to upload: its JSON files (``region.json``, ``regiontune.json``,
    ``adapter_config.json``, ...) with every absolute path cut to its last component (a host's
    paths never leave it), every other file linked (or copied) unchanged."""
    with tempfile.TemporaryDirectory(prefix=".push-", dir=directory.parent) as tmp:
        staged = Path(tmp) / directory.name
        for src in sorted(directory.rglob("*")):
            dest = staged / src.relative_to(directory)
            if src.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            data = read_json(src, src.name) if src.suffix == ".json" else None
            if data is not None and public(data) != data:
                dest.write_text(json.dumps(public(data), indent=2) + "\n")
            else:  # unchanged, byte for byte
                try:
                    os.link(src, dest)
                except OSError:  # another file system, or no hard links: copy
                    shutil.copy2(src, dest)
        yield staged


def push(path: str | Path, repo_id: str, *, token: str | None = None,
         endpoint: str | None = None, private: bool = False, revision: str | None = None,
         commit_message: str | None = None) -> str:
    """Upload an artefact directory to ``repo_id`` (created if needed); return the commit sha.

    ``revision`` names a branch, created from ``main`` when missing.
    """
    directory = Path(path)
    validate_repo_id(repo_id)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such artefact directory")
    kind = artifact_kind(directory)
    refuse_pickles(directory)
    if not any(directory.rglob("*.safetensors")):
        raise ArtifactError(f"{directory}: no .safetensors weights to publish")
    if revision is not None and _HEX_SHA.fullmatch(revision):
        raise HubError(f"cannot push to commit {revision}: give a branch name as revision")
    _ensure_card(directory, kind)
    endpoint, token = _endpoint(endpoint), _token(token)
    api = HfApi(endpoint=endpoint, token=token)
    message = commit_message or f"regiontune: upload {kind} {directory.name}"
    with _hub_errors(repo_id, endpoint, token, revision, "push"):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with _publishable(directory) as staged:
            info = api.upload_folder(repo_id=repo_id, folder_path=staged, revision=revision,
                                     commit_message=message)
    logger.info("pushed %s %s to %s/%s@%s (commit %s)", kind, directory, endpoint, repo_id,
                revision or "main", info.oid)
    return info.oid


def _check_listing(files: list[str], repo_id: str, commit: str) -> None:
    """Refuse a repository listing before anything is downloaded."""
    where = f"{repo_id}@{commit[:12]}"
    for name in files:
        if (not name or name.startswith("/") or "\\" in name or ":" in name.split("/")[0]
                or any(part in ("", ".", "..") for part in name.split("/"))):
            raise ArtifactError(f"{where}: refusing unsafe file name {name!r} (path traversal)")
    pickles = [name for name in files if PurePosixPath(name).suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise ArtifactError(f"{where}: holds pickle weight files {pickles}; regiontune only "
                            "loads safetensors (pickle files can run arbitrary code)")
    if not any(name.endswith(".safetensors") for name in files):
        raise ArtifactError(f"{where}: no .safetensors weights in the repository")
    if BACKBONE_META not in files and ADAPTER_META not in files:
        raise ArtifactError(f"{where}: not a regiontune artefact (neither {BACKBONE_META} nor "
                            f"{ADAPTER_META} at the top level)")


def _backbone_fingerprint(backbone_dir: str | Path) -> str:
    meta = read_json(Path(backbone_dir) / BACKBONE_META, "backbone metadata")
    if not meta.get("fingerprint"):
        raise ArtifactError(f"{backbone_dir}: {BACKBONE_META} records no fingerprint")
    return str(meta["fingerprint"])


def pull(repo_id: str, out: str | Path, *, revision: str | None = None,
         token: str | None = None, endpoint: str | None = None,
         backbone_dir: str | Path | None = None) -> Path:
    """Download ``repo_id`` at ``revision`` (branch, tag or commit; default main) into ``out``.

    ``out`` is replaced only once everything is downloaded and checked: a failed pull leaves
    an existing ``out`` untouched. With ``backbone_dir``, an adapter made for another backbone
    is refused (BackboneMismatchError) before anything is written.
    """
    validate_repo_id(repo_id)
    out = Path(out)
    endpoint, token = _endpoint(endpoint), _token(token)
    api = HfApi(endpoint=endpoint, token=token)
    backbone_fp = _backbone_fingerprint(backbone_dir) if backbone_dir is not None else None
    with _hub_errors(repo_id, endpoint, token, revision, "pull"):
        commit = api.model_info(repo_id, revision=revision).sha
        if not commit:
            raise HubError(f"{endpoint} returned no commit sha for {repo_id}@{revision or 'main'}")
        # List at the resolved commit, and download that same commit: a push in between
        # cannot slip unchecked files in.
        files = api.list_repo_files(repo_id, revision=commit)
    _check_listing(files, repo_id, commit)
    where = f"{repo_id}@{commit[:12]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with (_hub_errors(repo_id, endpoint, token, revision, "pull"),
          tempfile.TemporaryDirectory(prefix=f".{out.name}.cache-", dir=out.parent) as cache,
          atomic_dir(out) as tmp):
        # A private cache: never mixes with (or fills) the user's hub cache, and goes away.
        snapshot_download(repo_id, revision=commit, local_dir=tmp, cache_dir=cache,
                          endpoint=endpoint, token=token, ignore_patterns=list(_HUB_ONLY))
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # the client's download bookkeeping
        refuse_pickles(tmp)
        kind = artifact_kind(tmp)
        if backbone_fp is not None and kind == "adapter":
            try:  # the metadata only: the files are checked again where they are loaded
                AdapterFolder.read(tmp, backbone_fp, weights=False)
            except BackboneMismatchError as err:  # named by the repository, not the temp dir
                raise BackboneMismatchError(err.adapter_fingerprint, backbone_fp,
                                            where) from None
            except ArtifactError as err:
                raise ArtifactError(str(err).replace(str(tmp), where)) from None
        elif backbone_fp is not None:
            logger.info("%s is a backbone: backbone_dir %s not used", where, backbone_dir)
        meta_path = tmp / _meta_file(kind)
        meta = read_json(meta_path, f"{kind} metadata")
        meta["hub"] = {"repo_id": repo_id, "revision": revision or "main", "commit": commit}
        write_json(meta_path, meta)
    logger.info("pulled %s %s from %s into %s", kind, where, endpoint, out)
    return out
