"""A scripted server for the Files and Batches endpoints the ``openai`` client calls, on 127.0.0.1.

Uploads (``POST /v1/files``, multipart), file content (``GET /v1/files/{id}/content``), batches (create,
retrieve, list with metadata, cancel). A batch is ``validating``, then ``in_progress``, and ends ``delay_s``
after its creation: ``completed``, or ``expired`` for the batches whose ordinal (0-based, over the server) is in
``expire``, which answer only the first half of their lines, as an expired OpenAI batch does. Each line is
answered by ``reply(image_bytes, body)``, unless ``fail(custom_id, attempt)`` says the line fails (then it goes to
the error file as an HTTP 500). ``answer_lines`` does the same offline, as ``vllm run-batch`` would.
"""

from __future__ import annotations

import email.parser
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from teacher_server import image_of

ReplyFn = Callable[[bytes, dict], str]
FailFn = Callable[[str, int], bool]


def completion(text: str, body: dict, image: bytes) -> dict:
    """The chat completion an endpoint answers (usage as ``TeacherServer`` counts it)."""
    return {
        "id": "chatcmpl-batch",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", ""),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 100 + len(image) // 1000,
            "completion_tokens": len(text) // 4,
            "total_tokens": 100 + len(image) // 1000 + len(text) // 4,
        },
    }


def answer_line(line: dict, reply: ReplyFn, failed: bool) -> dict:
    if failed:
        response = {"status_code": 500, "request_id": "req", "body": {"error": {"message": "internal error"}}}
    else:
        image = image_of(line["body"])
        response = {
            "status_code": 200,
            "request_id": "req",
            "body": completion(reply(image, line["body"]), line["body"], image),
        }
    return {"id": f"resp-{line['custom_id'][:8]}", "custom_id": line["custom_id"], "response": response, "error": None}


def answer_lines(lines: list[str], reply: ReplyFn, fail: FailFn | None = None) -> list[str]:
    """What an offline batch runner writes for these input lines (failed lines included, as vLLM writes them)."""
    fail = fail or (lambda key, attempt: False)
    out = []
    for text in lines:
        line = json.loads(text)
        out.append(json.dumps(answer_line(line, reply, fail(line["custom_id"], 0))))
    return out


class BatchServer:
    def __init__(self, reply: ReplyFn, fail: FailFn | None = None, delay_s: float = 0.3, expire=()) -> None:
        self.reply, self.fail, self.delay_s, self.expire = reply, fail or (lambda k, a: False), delay_s, set(expire)
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.submitted: Counter = Counter()  # custom_id -> lines submitted in created batches
        self.bodies: dict[str, dict] = {}  # custom_id -> the last body submitted
        self.uploads: list[tuple[int, int]] = []  # (bytes, lines) of each uploaded file
        self.auth: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, payload: object | bytes) -> None:
                body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_POST(self) -> None:
                server.auth.add(self.headers.get("Authorization", ""))
                path = self.path.split("?")[0]
                if path == "/v1/files":
                    return self._send(200, server._upload(self.headers["Content-Type"], self._body()))
                if path == "/v1/batches":
                    return self._send(200, server._create(json.loads(self._body())))
                if path.startswith("/v1/batches/") and path.endswith("/cancel"):
                    self._body()
                    return self._send(200, server._cancel(path.split("/")[3]))
                return self._send(404, {"error": {"message": f"no route {path}"}})

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                parts = path.strip("/").split("/")
                if path == "/v1/batches":
                    with server.lock:
                        data = [server._view(b) for b in reversed(server.batches.values())]
                    return self._send(
                        200,
                        {
                            "object": "list",
                            "data": data,
                            "has_more": False,
                            "first_id": data[0]["id"] if data else None,
                            "last_id": data[-1]["id"] if data else None,
                        },
                    )
                if parts[:2] == ["v1", "batches"] and len(parts) == 3:
                    with server.lock:
                        return self._send(200, server._view(server.batches[parts[2]]))
                if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
                    return self._send(200, server.files[parts[2]])
                return self._send(404, {"error": {"message": f"no route {path}"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- endpoints ---------------------------------------------------------------------------------------------
    def _upload(self, content_type: str, body: bytes) -> dict:
        message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        fields = {part.get_param("name", header="content-disposition"): part for part in message.get_payload()}
        data = fields["file"].get_payload(decode=True)
        assert fields["purpose"].get_payload() == "batch"
        with self.lock:
            file_id = f"file-{len(self.files):04d}"
            self.files[file_id] = data
            self.uploads.append((len(data), data.count(b"\n")))
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": 0,
            "filename": fields["file"].get_filename(),
            "purpose": "batch",
            "status": "processed",
        }

    def _create(self, req: dict) -> dict:
        lines = [json.loads(x) for x in self.files[req["input_file_id"]].decode().splitlines() if x.strip()]
        with self.lock:
            ordinal = len(self.batches)
            batch_id = f"batch-{ordinal:04d}"
            for line in lines:
                assert line["method"] == "POST" and line["url"] == req["endpoint"] == "/v1/chat/completions"
                self.submitted[line["custom_id"]] += 1
                self.bodies[line["custom_id"]] = line["body"]
            self.batches[batch_id] = {
                "id": batch_id,
                "ordinal": ordinal,
                "input_file_id": req["input_file_id"],
                "lines": lines,
                "metadata": req.get("metadata") or {},
                "window": req["completion_window"],
                "created": time.time(),
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "done": 0,
                "failed": 0,
            }
            return self._view(self.batches[batch_id])

    def _cancel(self, batch_id: str) -> dict:
        with self.lock:
            batch = self.batches[batch_id]
            if batch["status"] not in ("completed", "expired", "failed", "cancelled"):
                self._finish(batch, "cancelled", 0)
            return self._view(batch)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _finish(self, batch: dict, status: str, answered: int) -> None:
        out, err = [], []
        for line in batch["lines"][:answered]:
            key = line["custom_id"]
            failed = self.fail(key, self.submitted[key] - 1)
            (err if failed else out).append(json.dumps(answer_line(line, self.reply, failed)))
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = f"file-{len(self.files):04d}"
                self.files[file_id] = ("\n".join(rows) + "\n").encode()
                batch[name] = file_id
        batch.update(status=status, done=len(out), failed=len(err))

    def _view(self, batch: dict) -> dict:
        """The batch as the API shows it now (advancing it when its time has come)."""
        age = time.time() - batch["created"]
        if batch["status"] in ("validating", "in_progress"):
            if age >= self.delay_s:
                expired = batch["ordinal"] in self.expire
                self._finish(
                    batch,
                    "expired" if expired else "completed",
                    len(batch["lines"]) // 2 if expired else len(batch["lines"]),
                )
            elif age >= self.delay_s / 3:
                batch["status"] = "in_progress"
        n = len(batch["lines"])
        return {
            "id": batch["id"],
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": None,
            "input_file_id": batch["input_file_id"],
            "completion_window": batch["window"],
            "status": batch["status"],
            "output_file_id": batch["output_file_id"],
            "error_file_id": batch["error_file_id"],
            "created_at": int(batch["created"]),
            "metadata": batch["metadata"],
            "request_counts": {"total": n, "completed": batch["done"], "failed": batch["failed"]},
        }

    def __enter__(self) -> BatchServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
