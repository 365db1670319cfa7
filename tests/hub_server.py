"""A small stand-in for the Hugging Face Hub on the loopback address: the few endpoints the real
`huggingface_hub` client calls to list and download a repo, serving local folders, and to create a repo and
commit small files to it (create_repo, upload_folder). Tests point the client at it with HF_ENDPOINT. Also
serves plain files under /files/ (the face pack's zip). A repo's commit id is a digest of its files, so an
upload makes a new revision, as on the Hub."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote, urlparse

from loopback import LoopbackServer


def commit_of(folder: str) -> str:
    digest = hashlib.sha1()
    for name, path in sorted(_files(folder).items()):
        with open(path, "rb") as handle:
            digest.update(name.encode() + b"\0" + hashlib.sha1(handle.read()).digest())
    return digest.hexdigest()


def _files(folder: str) -> dict[str, str]:
    found = {}
    for here, _, names in os.walk(folder, followlinks=True):
        for name in names:
            path = os.path.join(here, name)
            found[os.path.relpath(path, folder).replace(os.sep, "/")] = path
    return found


class HubServer(LoopbackServer):
    """`repos`: repo id -> local folder; `files`: name -> local path, served at /files/<name>."""

    def __init__(self, repos: dict[str, str], files: dict[str, str] | None = None, upload_root: str | None = None):
        self.repos, self.files, self.requests = repos, files or {}, []
        self.upload_root = upload_root  # where repos made by create_repo live (default: the system's temp)
        self.failing = False  # True: every read answers 503, as a Hub having a bad day
        super().__init__(self._handler())

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def do_POST(self):
                path = unquote(urlparse(self.path).path)
                server.requests.append((self.command, path))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = path.strip("/").split("/")
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo = f"{request.get('organization') or 'user'}/{request['name']}"
                    if repo not in server.repos:
                        server.repos[repo] = tempfile.mkdtemp(prefix="hub-repo-", dir=server.upload_root)
                    return self._json({"url": f"http://{self.headers['Host']}/{repo}"})
                if path == "/api/validate-yaml":
                    return self._json({})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[2] + "/" + parts[3] in server.repos:
                    folder = server.repos[parts[2] + "/" + parts[3]]
                    if parts[4] == "preupload":
                        files = json.loads(body)["files"]
                        modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                        return self._json({"files": modes})
                    if parts[4] == "commit":
                        for line in body.splitlines():
                            item = json.loads(line)
                            if item["key"] == "file":
                                target = os.path.join(folder, item["value"]["path"])
                                os.makedirs(os.path.dirname(target), exist_ok=True)
                                with open(target, "wb") as handle:
                                    handle.write(base64.b64decode(item["value"]["content"]))
                        url = f"http://{self.headers['Host']}/{parts[2]}/{parts[3]}/commit/{commit_of(folder)}"
                        return self._json({"commitUrl": url, "commitOid": commit_of(folder)})
                self._error(404, "RepoNotFound")

            def _json(self, payload):
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, body: bool):
                path = unquote(urlparse(self.path).path)
                server.requests.append((self.command, path))
                if server.failing:
                    return self._error(503, "ServiceUnavailable")
                parts = path.strip("/").split("/")
                if parts[:1] == ["files"]:
                    return self._file(server.files.get("/".join(parts[1:])), body, "EntryNotFound")
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    return self._api(parts[2] + "/" + parts[3], parts[4], parts[6:] if parts[4] == "tree" else [])
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo = parts[0] + "/" + parts[1]
                    if repo not in server.repos:
                        return self._error(404, "RepoNotFound")
                    folder = server.repos[repo]
                    return self._file(_files(folder).get("/".join(parts[4:])), body, "EntryNotFound", commit_of(folder))
                self._error(404, "RepoNotFound")

            def _api(self, repo: str, kind: str, below: list[str]):
                if repo not in server.repos:
                    return self._error(404, "RepoNotFound")
                files = _files(server.repos[repo])
                if kind == "revision":
                    payload = {
                        "id": repo,
                        "modelId": repo,
                        "sha": commit_of(server.repos[repo]),
                        "private": False,
                        "siblings": [{"rfilename": name} for name in sorted(files)],
                    }
                else:  # tree, recursive
                    prefix = "/".join(below)
                    payload = [
                        {
                            "type": "file",
                            "oid": hashlib.sha1(name.encode()).hexdigest(),
                            "size": os.path.getsize(local),
                            "path": name,
                        }
                        for name, local in sorted(files.items())
                        if name.startswith(prefix)
                    ]
                self._json(payload)

            def _file(self, local: str | None, body: bool, missing_code: str, commit: str = "0" * 40):
                if local is None:
                    return self._error(404, missing_code)
                with open(local, "rb") as handle:
                    data = handle.read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", commit)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, status: int, code: str):
                data = json.dumps({"error": code}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        return Handler
