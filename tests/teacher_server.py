"""A scripted OpenAI-compatible chat server on 127.0.0.1: deterministic replies, injected faults, counters.

``reply(image_bytes, request) -> str`` writes the answer text; ``fault(n, digest) -> str | None`` picks a fault
for the n-th request (0-based, over the whole server) of the image with sha256 ``digest``:

``"429"`` (with Retry-After); any other status as its digits (``"500"``, ``"503"``, ``"400"``); ``"timeout"``
(sleeps ``hang_s``, then hangs up); ``"truncated"`` (a body shorter than its Content-Length, then the connection
closes); ``"nonjson"`` (200 with an HTML body); ``"401echo"`` and ``"400echo"`` (401 or 400 whose message
repeats the caller's key, as some gateways do).

Each request sleeps ``latency_s`` first (the benchmark's fixed latency). ``logprobs(request)``, when given,
returns the first token's top candidates ``[(token, logprob), ...]``, sent as vLLM does when a request asks for
``logprobs``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ReplyFn = Callable[[bytes, dict], str]
FaultFn = Callable[[int, str], "str | None"]


def image_of(request: dict) -> bytes:
    for message in request.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    return base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
    return b""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (a timeout fault) closes its end: not the server's error


class TeacherServer:
    def __init__(
        self,
        reply: ReplyFn,
        fault: FaultFn | None = None,
        latency_s: float = 0.0,
        hang_s: float = 5.0,
        retry_after: str = "0.05",
        logprobs: Callable[[dict], list[tuple[str, float]]] | None = None,
    ) -> None:
        self.reply, self.fault, self.logprobs = reply, fault or (lambda n, d: None), logprobs
        self.latency_s, self.hang_s, self.retry_after = latency_s, hang_s, retry_after
        self.lock = threading.Lock()
        self.n = 0  # requests received
        self.ok = 0  # 200 replies with a valid completion
        self.ok_by_image: Counter = Counter()
        self.faults: Counter = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth: set[str] = set()
        self.requests: list[dict] = []  # the bodies (without images), for assertions
        self.bodies: list[dict] = []  # the whole bodies, images included
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json", **headers: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, b'{"status":"ok"}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                image = image_of(body)
                digest = hashlib.sha256(image).hexdigest()
                with server.lock:
                    n = server.n
                    server.n += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.auth.add(self.headers.get("Authorization", ""))
                    server.requests.append({k: v for k, v in body.items() if k != "messages"})
                    server.bodies.append(body)
                try:
                    if server.latency_s:
                        time.sleep(server.latency_s)
                    self._answer(body, image, digest, server.fault(n, digest))
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _answer(self, body: dict, image: bytes, digest: str, fault: str | None) -> None:
                if fault:
                    with server.lock:
                        server.faults[fault] += 1
                if fault == "429":
                    return self._send(429, b'{"error":{"message":"slow down"}}', Retry_After=server.retry_after)
                if fault and fault.isdigit():  # any status: "500", "503", "400", ...
                    return self._send(int(fault), json.dumps({"error": {"message": f"fault {fault}"}}).encode())
                if fault in ("401echo", "400echo"):
                    key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    msg = json.dumps({"error": {"message": f"Request with key {key} refused"}}).encode()
                    return self._send(int(fault[:3]), msg)
                if fault == "nonjson":
                    return self._send(200, b"<html><body>Bad gateway</body></html>")
                if fault == "timeout":  # answer nothing until the client has given up
                    time.sleep(server.hang_s)
                    self.close_connection = True
                    return None
                text = server.reply(image, body)
                choice: dict = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                if fault == "refusal":  # what OpenAI's models send instead of an answer they will not give
                    text, choice["message"] = "", {"role": "assistant", "content": None, "refusal": "I can't help."}
                if fault == "filtered":
                    text, choice["message"]["content"], choice["finish_reason"] = "", "", "content_filter"
                if server.logprobs and body.get("logprobs"):
                    top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in server.logprobs(body)]
                    first = top[0] if top else {"token": text, "logprob": 0.0, "bytes": None}
                    choice["logprobs"] = {"content": [{**first, "top_logprobs": top[: body.get("top_logprobs", 0)]}]}
                payload = json.dumps(
                    {
                        "id": f"chatcmpl-{digest[:8]}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", ""),
                        "choices": [choice],
                        "usage": {
                            "prompt_tokens": 100 + len(image) // 1000,
                            "completion_tokens": len(text) // 4,
                            "total_tokens": 100 + len(image) // 1000 + len(text) // 4,
                        },
                    }
                ).encode()
                if fault == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                with server.lock:
                    server.ok += 1
                    server.ok_by_image[digest] += 1
                return self._send(200, payload)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> TeacherServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
