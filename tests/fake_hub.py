"""A minimal Hugging Face Hub on localhost, for testing `--push-to-hub` with no network.

It serves the four endpoints `HfApi.create_repo` and `HfApi.upload_folder` call (repo creation, README
metadata validation, preupload, commit) and keeps what was committed in memory. Every file is declared
"regular" at preupload, so its bytes come inline in the commit (no LFS / Xet transfer to serve). Point
huggingface_hub at it with HF_ENDPOINT=hub.url (read when huggingface_hub is imported: a subprocess).

    with FakeHub() as hub:            # hub.fail_with = 401 makes every request fail that way
        ... HF_ENDPOINT=hub.url ...
        hub.repos["user/name"]        # {"private": bool, "files": {path: bytes}, "commits": [message]}
"""
from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USER = "tester"  # whose token the fake Hub pretends to see
_PREUPLOAD = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<revision>[^/?]+)")
_COMMIT = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<revision>[^/?]+)")


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[str] = []  # "POST /api/..." of every request, in order
        self.fail_with: int | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        self.requests.append(f"{method} {path}")
        if self.fail_with is not None:
            return self.fail_with, {"error": "Invalid credentials in Authorization header"}
        if method == "POST" and path.startswith("/api/repos/create"):
            request = json.loads(body)
            repo = f"{request['organization'] or USER}/{request['name']}"  # NAME alone: the token's user
            entry = self.repos.setdefault(repo, {"files": {}, "commits": []})
            entry["private"] = request.get("visibility") == "private"
            return 200, {"url": f"{self.url}/{repo}"}
        if method == "POST" and path.startswith("/api/validate-yaml"):
            return 200, {"errors": [], "warnings": []}
        if method == "POST" and (match := _PREUPLOAD.match(path)):
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]}
        if method == "POST" and (match := _COMMIT.match(path)):
            return self._commit(match["repo"], body)
        return 404, {"error": f"the fake Hub does not serve {method} {path}"}

    def _commit(self, repo: str, body: bytes) -> tuple[int, dict]:
        if repo not in self.repos:
            return 404, {"error": f"Repository {repo} not found"}
        entry = self.repos[repo]
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                entry["commits"].append(item["value"]["summary"])
            elif item["key"] == "file":
                entry["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            else:
                return 400, {"error": f"the fake Hub takes regular files only, got {item['key']}"}
        oid = f"{len(entry['commits']):040d}"
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def _respond(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, payload = hub.answer(method, self.path, self.rfile.read(length))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self._respond("POST")

        def do_GET(self) -> None:  # noqa: N802
            self._respond("GET")

        def do_HEAD(self) -> None:  # noqa: N802
            self._respond("HEAD")

        def log_message(self, *args) -> None:  # quiet: requests are kept in hub.requests
            pass

    return Handler
