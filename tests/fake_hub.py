"""A local HTTP server that answers what the real `huggingface_hub` client asks of the Hub to
describe a model repository and download it (`model_info`, `list_repo_tree`, the files' HEAD and
GET), so that the real download code runs here without the network. A file can be held part-way
(`hold`): it sends that many bytes, then waits until the test releases it, so a download is
observed while it runs, without sleeps."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

COMMIT = "feedfacefeedfacefeedfacefeedfacefeedface"
HOLD_TIMEOUT_S = 120.0  # a test that never releases a held file fails, not hangs


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = COMMIT


@dataclass
class Hold:
    after_bytes: int
    released: threading.Event = field(default_factory=threading.Event)
    reached: threading.Event = field(default_factory=threading.Event)


class FakeHub:
    def __init__(self, repos: dict[str, Repo]):
        self.repos = repos
        self.holds: dict[tuple[str, str], Hold] = {}
        self.downloads: list[str] = []  # "repo/file" of each GET of a file, in order
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fake hub")

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for hold in self.holds.values():
            hold.released.set()
        self._server.shutdown()
        self._server.server_close()

    def hold(self, repo: str, path: str, after_bytes: int) -> Hold:
        self.holds[(repo, path)] = hold = Hold(after_bytes)
        return hold

    def _handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._route(head=True)

            def do_GET(self):
                self._route(head=False)

            def _route(self, head: bool):
                path = unquote(urlsplit(self.path).path)
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                    return self._info(m[1])
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", path):
                    return self._tree(m[1])
                if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    return self._file(m[1], m[3], head)
                self._json(404, {"error": "not found"}, {"X-Error-Code": "EntryNotFound"})

            def _json(self, status, value, headers=None):
                body = json.dumps(value).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _repo(self, name):
                repo = hub.repos.get(name)
                if repo is None:
                    self._json(401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return repo

            def _info(self, name):
                if (repo := self._repo(name)) is not None:
                    self._json(200, {"id": name, "modelId": name, "sha": repo.commit, "private": False, "tags": [],
                                     "siblings": [{"rfilename": p, "size": len(b)} for p, b in repo.files.items()]})

            def _tree(self, name):
                if (repo := self._repo(name)) is not None:
                    self._json(200, [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                     for p, b in repo.files.items()])

            def _file(self, name, path, head):
                repo = self._repo(name)
                if repo is None:
                    return
                body = repo.files.get(path)
                if body is None:
                    return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                start = 0
                if (r := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))) and not head:
                    start = int(r[1])
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("X-Repo-Commit", repo.commit)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if head:
                    return
                hub.downloads.append(f"{name}/{path}")
                hold = hub.holds.get((name, path))
                if hold is not None and start < hold.after_bytes:
                    self.wfile.write(body[start:hold.after_bytes])
                    self.wfile.flush()
                    hold.reached.set()
                    hold.released.wait(HOLD_TIMEOUT_S)
                    start = hold.after_bytes
                self.wfile.write(body[start:])

        return Handler
