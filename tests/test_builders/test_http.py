"""The download client's response reading, against the standard library's ``http.client`` on the same bytes, and
over real sockets: chunked bodies, bodies to the close, HTTP/1.0, interim responses, header injection refused."""

from __future__ import annotations

import http.client
import io
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders.sources import FetchError, HttpClient
from builders.sources.http import read_response

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(lambda t: t[0] != "-")
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 /;=.,-", max_size=30)
FRAMING = st.sampled_from(["length", "chunked", "close"])


@st.composite
def responses(draw) -> tuple[bytes, bool]:
    """Raw bytes of one response to a GET, and whether they are complete."""
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    status = draw(st.sampled_from([200, 203, 204, 301, 302, 304, 404, 429, 500, 503]))
    head = b""
    if draw(st.booleans()):  # an interim response first
        head += b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"
    reason = draw(st.sampled_from(["OK", "", "Some Reason"]))
    head += f"{version} {status} {reason}".rstrip().encode() + b"\r\n"
    fields = draw(st.lists(st.tuples(TOKEN, VALUE), max_size=6))
    for name, value in fields:
        if name not in ("content-length", "transfer-encoding", "connection"):
            head += f"{name.title()}: {value}\r\n".encode()
    connection = draw(st.sampled_from([None, "close", "keep-alive", "Keep-Alive, Upgrade"]))
    if connection:
        head += f"Connection: {connection}\r\n".encode()
    body = draw(st.binary(max_size=3000)) if status not in (204, 304) else b""
    framing = draw(FRAMING) if status not in (204, 304) else "length"
    complete = True
    if framing == "length":
        payload = body
        if status not in (204, 304):
            head += b"Content-Length: %d\r\n" % len(body)
            if body and draw(st.booleans()):
                payload, complete = body[: draw(st.integers(0, len(body) - 1))], False  # truncated
    elif framing == "chunked":
        head += b"Transfer-Encoding: chunked\r\n"
        payload, i = b"", 0
        while i < len(body):
            n = draw(st.integers(1, 700))
            payload += b"%x\r\n" % len(body[i : i + n]) + body[i : i + n] + b"\r\n"
            i += n
        payload += b"0\r\n" + (b"X-Trailer: t\r\n" if draw(st.booleans()) else b"") + b"\r\n"
    else:
        payload = body
    return head + b"\r\n" + payload, complete


class _Sock:
    """What http.client.HTTPResponse needs of a socket."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))


def _stdlib(data: bytes):
    resp = http.client.HTTPResponse(_Sock(data), method="GET")
    resp.begin()
    return resp.status, resp.msg, resp.read(), resp.will_close


@settings(max_examples=400, deadline=None)
@given(responses())
def test_responses_read_as_http_client_reads_them(case):
    data, complete = case
    if not complete:
        with pytest.raises(http.client.IncompleteRead):
            _stdlib(data)
        with pytest.raises(http.client.IncompleteRead):
            read_response(io.BufferedReader(io.BytesIO(data)))
        return
    status, msg, body, will_close = _stdlib(data)
    ours = read_response(io.BufferedReader(io.BytesIO(data)))
    assert ours[0] == status and ours[2] == body and ours[3] == will_close
    for name in {k.lower() for k in msg}:
        if name not in ("connection", "transfer-encoding"):
            assert ours[1][name] == ", ".join(v.strip() for v in msg.get_all(name)), name


def test_a_response_cut_before_its_status_line_is_remote_disconnected():
    with pytest.raises(http.client.RemoteDisconnected):
        read_response(io.BufferedReader(io.BytesIO(b"")))
    with pytest.raises(http.client.BadStatusLine):
        read_response(io.BufferedReader(io.BytesIO(b"SSH-2.0-OpenSSH\r\n\r\n")))
    with pytest.raises(http.client.LineTooLong):
        read_response(io.BufferedReader(io.BytesIO(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n")))


def _raw_server(answers: list[bytes], seen: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    """A server that answers each request on one connection with the next of ``answers`` (closing after an
    answer framed by the close), recording each request it read."""
    srv = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        queue = list(answers)
        while queue:
            conn, _ = srv.accept()
            with conn, conn.makefile("rb") as fp:
                while queue:
                    request = b""
                    while (line := fp.readline()) not in (b"\r\n", b""):
                        request += line
                    if not request:
                        break
                    seen.append(request)
                    answer = queue.pop(0)
                    conn.sendall(answer)
                    if b"Content-Length" not in answer and b"chunked" not in answer:
                        break  # framed by the close

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return srv, thread


def test_chunked_bodies_to_the_close_and_http10_over_a_real_socket():
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\njpeg\r\n5\r\nbytes\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none",
        b"HTTP/1.0 200 OK\r\n\r\nto the close",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain",
    ]
    seen: list[bytes] = []
    srv, thread = _raw_server(answers, seen)
    port = srv.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    client = HttpClient(timeout_s=5, retries=0)
    try:
        assert client.fetch(f"{base}/a.jpg?size=b") == b"jpegbytes"
        assert client.fetch(f"{base}/b.jpg") == b"one"  # same connection, after an interim response
        assert client.fetch(f"{base}/c.jpg") == b"to the close"
        assert client.fetch(f"{base}/d.jpg") == b"again"  # a new connection: the last one ended with its body
        thread.join(5)
    finally:
        srv.close()
    assert [r.split(b"\r\n")[0] for r in seen] == [
        b"GET /a.jpg?size=b HTTP/1.1",
        b"GET /b.jpg HTTP/1.1",
        b"GET /c.jpg HTTP/1.1",
        b"GET /d.jpg HTTP/1.1",
    ]
    assert all(f"Host: 127.0.0.1:{port}".encode() in r for r in seen)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/a.jpg X-Injected: 1",  # CR and LF themselves urlsplit drops
        "http://127.0.0.1:9/a\x00.jpg",
        "http://127.0.0.1:9/a\x7f.jpg",
        "http://127.0.0.1:9/a\x1b.jpg",
        "http://127.0.0.1:9/caf\u00e9.jpg",
    ],
)
def test_urls_that_would_smuggle_bytes_into_the_request_are_refused(url):
    with pytest.raises(FetchError, match="percent-encode"):
        HttpClient(timeout_s=1, retries=0).fetch(url)
