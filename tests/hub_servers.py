"""Real servers for Hub tests: olah (a read-only Hub mirror) and a small server for the Hub's write endpoints.

olah serves plain git repositories as Hub repositories, so a staged dataset or model folder becomes
``globe/mp16-reason`` at ``HF_ENDPOINT``. It runs from its own virtual environment (``.venv-olah``, made by
``scripts/setup.sh``; ``MP16_OLAH`` overrides the path to ``olah-cli``).

The write server implements the endpoints ``huggingface_hub`` calls to create a repository, a branch and a
tag and to commit files (the single-commit path: preupload, LFS batch + upload, commit), and keeps every
revision's tree in memory so a test can compare it with what was staged.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def olah_cli() -> Path | None:
    path = Path(os.environ.get("MP16_OLAH", ROOT / ".venv-olah" / "bin" / "olah-cli"))
    return path if path.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_commit_tree(src: Path, repo: Path) -> str:
    """Make ``repo`` a git repository holding exactly the files of ``src``; returns the commit sha."""
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(src, repo)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "data"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True)
    return head.stdout.strip()


class OlahHub:
    """``with OlahHub(tmp) as hub: hub.add("datasets", "globe/mp16-reason", folder)``; ``hub.endpoint``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.mirrors = self.workdir / "mirrors"
        self.proc: subprocess.Popen | None = None

    def add(self, kind: str, repo_id: str, folder: Path) -> str:
        return git_commit_tree(Path(folder), self.mirrors / kind / repo_id)

    def __enter__(self) -> OlahHub:
        exe = olah_cli()
        if exe is None:
            raise RuntimeError("olah is not installed: run scripts/setup.sh (it creates .venv-olah)")
        self.mirrors.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{self.workdir / "repos"}"\n'
            f'mirror-netloc = "127.0.0.1:{self.port}"\nmirror-lfs-netloc = "127.0.0.1:{self.port}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            "[accessibility]\noffline = true\n"
        )
        self.log = open(self.workdir / "olah.log", "wb")  # closed in __exit__
        self.proc = subprocess.Popen(
            [str(exe), "-c", str(config)], stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"olah exited: {(self.workdir / 'olah.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/api/models/none/none", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # it answers: up
            except OSError:
                time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class HubWriteServer:
    """The Hub's write API, enough for create_repo / create_branch / upload_folder / create_tag."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # "datasets/org/name" -> {"private", "refs": {rev: {path: bytes}}, "tags"}
        self.lfs: dict[str, bytes] = {}
        self.auth_headers: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HubWriteServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()

    def tree(self, repo: str, revision: str = "main") -> dict[str, str]:
        """path -> sha256 of the file at ``revision`` of ``datasets/org/name``."""
        return {p: hashlib.sha256(b).hexdigest() for p, b in self.repos[repo]["refs"][revision].items()}

    def _handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _json(self, code: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_PUT(self) -> None:  # LFS basic transfer
                data = self._body()
                oid = self.path.rsplit("/", 1)[-1]
                if hashlib.sha256(data).hexdigest() != oid:
                    return self._json(400, {"error": "oid mismatch"})
                hub.lfs[oid] = data
                self._json(200, {})

            def do_POST(self) -> None:
                hub.auth_headers.append(self.headers.get("Authorization", ""))
                parts = self.path.split("?")[0].strip("/").split("/")
                body = self._body()
                if parts[:2] == ["api", "validate-yaml"]:  # the client checks a README's front matter first
                    import yaml

                    try:
                        text = json.loads(body)["content"]
                        head = text.split("\n---", 1)[0].removeprefix("---\n") if text.startswith("---") else ""
                        yaml.safe_load(head)
                    except yaml.YAMLError as exc:
                        return self._json(400, {"error": f"invalid YAML: {exc}"})
                    return self._json(200, {"errors": [], "warnings": []})
                if parts[:3] == ["api", "repos", "create"]:
                    req = json.loads(body)
                    name = f"{req['type']}s/{req.get('organization') or 'user'}/{req['name']}"
                    if name in hub.repos:
                        return self._json(409, {"error": "You already created this repo", "url": name})
                    private = req.get("visibility") == "private" or bool(req.get("private"))
                    hub.repos[name] = {"private": private, "refs": {"main": {}}, "tags": {}}
                    return self._json(200, {"url": f"{hub.endpoint}/{name}", "name": name})
                if len(parts) >= 4 and parts[0] == "api" and parts[1] in ("datasets", "models", "spaces"):
                    repo = "/".join(parts[1:4])
                    action, rev = parts[4], "/".join(parts[5:]) or "main"
                    state = hub.repos.get(repo)
                    if state is None:
                        return self._json(404, {"error": f"Repository {repo} not found"})
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._json(
                            200,
                            {"files": [{"path": f["path"], "uploadMode": "lfs", "shouldIgnore": False} for f in files]},
                        )
                    if action == "branch":
                        state["refs"].setdefault(rev, dict(state["refs"]["main"]))
                        return self._json(200, {})
                    if action == "tag":
                        tag = json.loads(body)["tag"]
                        state["tags"][tag] = rev
                        return self._json(200, {})
                    if action == "commit":
                        tree = state["refs"].setdefault(rev, {})
                        for line in body.decode().splitlines():
                            op = json.loads(line)
                            value = op["value"]
                            if op["key"] == "file":
                                tree[value["path"]] = base64.b64decode(value["content"])
                            elif op["key"] == "lfsFile":
                                tree[value["path"]] = hub.lfs[value["oid"]]
                            elif op["key"] == "deletedFile":
                                tree.pop(value["path"], None)
                        oid = hashlib.sha1(json.dumps(sorted(hub.tree(repo, rev).items())).encode()).hexdigest()
                        state.setdefault("commits", {})[oid] = rev
                        return self._json(200, {"commitUrl": f"{hub.endpoint}/{repo}/commit/{oid}", "commitOid": oid})
                if self.path.split("?")[0].endswith(".git/info/lfs/objects/batch"):
                    req = json.loads(body)
                    objects = [
                        {
                            "oid": o["oid"],
                            "size": o["size"],
                            **(
                                {}
                                if o["oid"] in hub.lfs
                                else {"actions": {"upload": {"href": f"{hub.endpoint}/lfs-upload/{o['oid']}"}}}
                            ),
                        }
                        for o in req["objects"]
                    ]
                    return self._json(200, {"transfer": "basic", "objects": objects})
                self._json(404, {"error": f"unknown endpoint {self.path}"})

        return Handler
