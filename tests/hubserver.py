"""An in-memory stand-in for the Hugging Face Hub, for tests (stdlib ``http.server`` in a thread).

It speaks the subset of the Hub HTTP API that the real ``huggingface_hub`` 2.4 client calls for
``create_repo``, ``create_branch``, ``upload_folder`` / ``upload_file``, ``model_info``,
``list_repo_files`` / ``list_repo_tree`` and ``snapshot_download`` (routes read from the installed
client: hf_api.py, _commit_api.py, _upload_pipeline.py, file_download.py, _snapshot_download.py):

    POST      /api/repos/create                          create_repo (409 when it exists)
    POST      /api/validate-yaml                         README.md front matter check
    POST      /api/models/{repo}/preupload/{rev}         upload mode of each file
    POST      /api/models/{repo}/commit/{rev}            NDJSON: header line, then file lines
    POST      /api/models/{repo}/branch/{branch}         create_branch (409 when it exists)
    GET       /api/models/{repo}[/revision/{rev}]        model_info / repo_info (sha, siblings)
    GET       /api/models/{repo}/tree/{rev}[/{path}]     tree listing, cursor pages, Link header
    GET       /api/models/{repo}/refs                    list_repo_refs
    GET|HEAD  /{repo}/resolve/{rev}/{path}               file download (X-Repo-Commit, ETag)

Uploads: ``preupload`` answers ``uploadMode: "regular"`` for every file, so the client sends
every file inline (base64) in the commit NDJSON, safetensors included. By default the Hub asks
for "lfs" on weights, and with ``hf_xet`` installed the client would then push them to a Xet
CAS server, which cannot be faked here; inline is what the real Hub does for small text files
and is fine for the tiny test artefacts. A ``lfsFile`` commit line is therefore refused (400).

Auth: with ``token`` set, every request needs ``Authorization: Bearer <token>``; a wrong token
gets the Hub's 401 "Invalid credentials in Authorization header", a missing one a bare 401
(which the client reads as "repository not found", like the real Hub).

Storage: repo id -> {branch: head sha} + {sha: Commit(files {path: bytes})}; nothing on disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

logger = logging.getLogger(__name__)

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)


def blob_oid(data: bytes) -> str:
    """Git blob id of a file's content (what the Hub calls a regular file's oid / ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    message: str = ""
    parent: str | None = None


@dataclass
class Repo:
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit:
        """A branch name or a full commit sha -> the commit (404 RevisionNotFound otherwise)."""
        sha = self.branches.get(rev, rev)
        if sha not in self.commits:
            raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return self.commits[sha]


class HttpError(Exception):
    """An error answer: status, message (JSON body and X-Error-Message) and X-Error-Code."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = headers or {}, extra


class HubState:
    """Every repository, behind one lock (the server answers requests in threads)."""

    def __init__(self, token: str | None = None, page_size: int = 50) -> None:
        self.token = token
        self.page_size = page_size
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self._counter = 0

    def repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HttpError(404, "Repository not found", "RepoNotFound")
        return self.repos[repo_id]

    def commit(self, repo: Repo, branch: str, files: dict[str, bytes], message: str) -> Commit:
        """Record a new commit on ``branch`` (created when missing) and move the branch to it."""
        self._counter += 1
        parent = repo.branches.get(branch)
        listing = sorted((path, blob_oid(data)) for path, data in files.items())
        payload = json.dumps([parent, message, listing, self._counter]).encode()
        new = Commit(hashlib.sha1(payload).hexdigest(), dict(files), message, parent)
        repo.commits[new.sha] = new
        repo.branches[branch] = new.sha
        return new


def _tree_entries(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict[str, Any]]:
    """Tree listing under ``prefix`` (files and folders), sorted by path."""
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    entries: dict[str, dict[str, Any]] = {}
    for path, data in files.items():
        if not path.startswith(base):
            continue
        parts = path[len(base):].split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts) - 1) + 1):  # folders on the way
            folder = base + "/".join(parts[:i])
            entries[folder] = {"type": "directory", "path": folder,
                               "oid": hashlib.sha1(folder.encode()).hexdigest()}
        if recursive or len(parts) == 1:
            entries[path] = {"type": "file", "path": path, "size": len(data), "oid": blob_oid(data)}
    if base and not entries:
        raise HttpError(404, f"{prefix} does not exist", "EntryNotFound")
    return [entries[key] for key in sorted(entries)]


def _card_data(files: dict[str, bytes]) -> dict[str, Any] | None:
    match = _FRONT_MATTER.match(files.get("README.md", b"").decode("utf-8", "replace"))
    data = yaml.safe_load(match.group(1)) if match else None
    return data if isinstance(data, dict) else None


class _Handler(BaseHTTPRequestHandler):
    server: _HubHTTPServer
    # HTTP/1.0: one request per connection, so no keep-alive or chunked bodies to get right.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("hubserver: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def base_url(self) -> str:
        return f"http://{self.headers.get('Host', '127.0.0.1')}"

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            self._check_auth()
            with self.state.lock:
                status, headers, payload = self._route(method, url.path.split("/")[1:], query, body)
        except HttpError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            status, payload = err.status, {"error": err.message, **err.extra}
        except Exception as err:  # a server bug: answer 500 rather than hang the client
            logger.exception("hubserver: %s %s failed", method, self.path)
            status, headers, payload = 500, {}, {"error": repr(err)}
        self._reply(method, status, headers, payload)

    def _reply(self, method: str, status: int, headers: dict[str, str], payload: Any) -> None:
        if isinstance(payload, bytes):
            data, ctype = payload, "application/octet-stream"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def _check_auth(self) -> None:
        if self.state.token is None:
            return
        given = self.headers.get("Authorization", "")
        if not given:
            raise HttpError(401, "Unauthorized")
        if given != f"Bearer {self.state.token}":
            raise HttpError(401, "Invalid credentials in Authorization header")

    def _route(self, method: str, seg: list[str], query: dict[str, str], body: bytes):
        if method == "POST" and seg == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body or b"{}"))
        if method == "POST" and seg == ["api", "validate-yaml"]:
            return self._validate_yaml(json.loads(body or b"{}"))
        if len(seg) >= 4 and seg[:2] == ["api", "models"]:
            repo = self.state.repo(f"{seg[2]}/{seg[3]}")
            return self._api(method, f"{seg[2]}/{seg[3]}", repo, seg[4:], query, body)
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            repo = self.state.repo(f"{seg[0]}/{seg[1]}")
            return self._resolve(repo, unquote(seg[3]), unquote("/".join(seg[4:])))
        raise HttpError(404, f"no route for {method} {self.path}")

    def _api(self, method: str, repo_id: str, repo: Repo, rest: list[str],
             query: dict[str, str], body: bytes):
        action = rest[0] if rest else ""
        rev = unquote(rest[1]) if len(rest) > 1 else "main"
        if method == "GET" and action in ("", "revision"):
            return self._model_info(repo_id, repo, rev, query.get("blobs", "").lower() == "true")
        if method == "GET" and action == "tree":
            return self._tree(repo, rev, unquote("/".join(rest[2:])), query)
        if method == "GET" and action == "refs":
            branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
                        for name, sha in repo.branches.items()]
            return 200, {}, {"branches": branches, "tags": [], "converts": []}
        if method == "POST" and action == "preupload":
            return self._preupload(repo, rev, json.loads(body or b"{}"))
        if method == "POST" and action == "commit":
            return self._commit(repo_id, repo, rev, body, query)
        if method == "POST" and action == "branch":
            return self._branch(repo, rev, json.loads(body or b"{}"))
        raise HttpError(404, f"no route for {method} {self.path}")

    # -- endpoints ----------------------------------------------------------------------------

    def _create_repo(self, payload: dict[str, Any]):
        if payload.get("type") not in (None, "model"):
            raise HttpError(400, "this test hub only holds model repositories")
        repo_id = f"{payload.get('organization')}/{payload.get('name')}"
        url = f"{self.base_url}/{repo_id}"
        if repo_id in self.state.repos:
            raise HttpError(409, "You already created this model repo", url=url)
        repo = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self.state.repos[repo_id] = repo
        # Like the real Hub: a new repository starts with one commit holding .gitattributes.
        self.state.commit(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit")
        return 200, {}, {"url": url, "name": repo_id, "id": repo_id}

    def _validate_yaml(self, payload: dict[str, Any]):
        match = _FRONT_MATTER.match(payload.get("content", ""))
        try:
            data = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as err:
            data = str(err)
        if not isinstance(data, dict):
            return 400, {}, {"errors": [{"message": f"metadata is not a mapping: {data!r}"}]}
        return 200, {}, {"errors": [], "warnings": []}

    def _model_info(self, repo_id: str, repo: Repo, rev: str, blobs: bool):
        commit = repo.resolve(rev)
        siblings = [{"rfilename": path, **({"size": len(data), "blobId": blob_oid(data)}
                                           if blobs else {})}
                    for path, data in sorted(commit.files.items())]
        card = _card_data(commit.files) or {}
        info = {"id": repo_id, "modelId": repo_id, "sha": commit.sha, "private": repo.private,
                "tags": card.get("tags") or [], "library_name": card.get("library_name"),
                "cardData": card or None, "siblings": siblings}
        return 200, {}, info

    def _tree(self, repo: Repo, rev: str, path: str, query: dict[str, str]):
        entries = _tree_entries(repo.resolve(rev).files, path, query.get("recursive") == "true")
        start = int(query.get("cursor", 0))
        end = start + self.state.page_size
        headers = {}
        if end < len(entries):  # cursor pagination, announced like the Hub in a Link header
            recursive = query.get("recursive", "false")
            url = f"{self.base_url}{urlsplit(self.path).path}?recursive={recursive}&cursor={end}"
            headers["Link"] = f'<{url}>; rel="next"'
        return 200, headers, entries[start:end]

    def _preupload(self, repo: Repo, rev: str, payload: dict[str, Any]):
        files = repo.resolve(rev).files
        answers = [{"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                    "oid": blob_oid(files[item["path"]]) if item["path"] in files else None}
                   for item in payload.get("files", [])]
        return 200, {}, {"files": answers, "commitOid": repo.resolve(rev).sha}

    def _commit(self, repo_id: str, repo: Repo, branch: str, body: bytes, query: dict[str, str]):
        if query.get("create_pr"):
            raise HttpError(400, "this test hub does not do pull requests")
        if branch not in repo.branches:  # commits go to a branch, never to a sha
            raise HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line.get("key") == "header"), {})
        head = repo.commits[repo.branches[branch]]
        parent = header.get("parentCommit")
        if parent and not head.sha.startswith(parent):
            raise HttpError(412, f"parent commit {parent} is not the head of {branch}")
        files = dict(head.files)
        for line in lines:
            _apply(files, line.get("key"), line.get("value") or {})
        new = self.state.commit(repo, branch, files, header.get("summary", ""))
        return 200, {}, {"success": True, "commitOid": new.sha, "pullRequestUrl": None,
                         "commitUrl": f"{self.base_url}/{repo_id}/commit/{new.sha}"}

    def _branch(self, repo: Repo, branch: str, payload: dict[str, Any]):
        if branch in repo.branches:
            raise HttpError(409, f"Reference refs/heads/{branch} already exists")
        repo.branches[branch] = repo.resolve(payload.get("startingPoint") or "main").sha
        return 200, {}, {}

    def _resolve(self, repo: Repo, rev: str, path: str):
        commit = repo.resolve(rev)
        if path not in commit.files:
            raise HttpError(404, f"Entry not found: {path}", "EntryNotFound",
                            headers={"X-Repo-Commit": commit.sha})
        data = commit.files[path]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{blob_oid(data)}"'}
        return 200, headers, data


def _apply(files: dict[str, bytes], key: str | None, value: dict[str, Any]) -> None:
    """Apply one NDJSON commit line to a commit's file map."""
    path = value.get("path", "")
    if key == "file":
        content = value.get("content", "")
        files[path] = (base64.b64decode(content) if value.get("encoding") == "base64"
                       else content.encode())
    elif key == "deletedFile":
        if files.pop(path, None) is None:
            raise HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
    elif key == "deletedFolder":
        for name in [n for n in files if n.startswith(path.rstrip("/") + "/")]:
            del files[name]
    elif key == "lfsFile":
        raise HttpError(400, "LFS is not served by this test hub (preupload says 'regular')")
    elif key != "header":
        raise HttpError(400, f"unknown commit line {key!r}")


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: HubState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class HubServer:
    """Start/stop the fake Hub on 127.0.0.1 with a free port; ``endpoint`` is its base URL."""

    def __init__(self, token: str | None = None, page_size: int = 50) -> None:
        self.state = HubState(token=token, page_size=page_size)
        self._server: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubServer:
        self._server = _HubHTTPServer(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="hubserver",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
