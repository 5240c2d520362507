"""The sample's images over loopback HTTP, each after a delay: builds that take long enough to act on mid-way."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path


class SlowImages:
    """``with SlowImages(folder, delay_s) as base: ...`` serves ``folder``'s files under the URL ``base``."""

    def __init__(self, folder: Path, delay_s: float = 0.15) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                time.sleep(delay_s)
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_port}/"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def url_metadata(sample_input: Path, base: str, out: Path) -> Path:
    """The sample's metadata with each image named by its URL under ``base``."""
    import pandas as pd

    rows = pd.read_csv(sample_input / "metadata.csv", dtype=str, keep_default_na=False)
    rows["image"] = [base + name if name else "" for name in rows["image"]]
    out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / "metadata.csv", index=False)
    return out / "metadata.csv"
