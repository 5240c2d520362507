"""Downloads over HTTP(S): the rows' own URLs and URL lists' entries."""

from __future__ import annotations

import fnmatch
import http.client
import random
import socket
import ssl
import threading
import time
from urllib.parse import urljoin, urlsplit

from builders.sources.base import FetchError

MAX_LINE = 65536  # a status or header line longer than this is refused, as http.client refuses it
MAX_HEADERS = 100


class Connection:
    """One kept-alive HTTP/1.1 connection that GETs and reads the whole response.

    Status line and headers are split by hand: ``http.client`` hands them to the ``email`` package's parser,
    which took ~7-9 % of a build worker's GIL time at MP-16's ~85 KB photos. What a GET of an image needs is
    kept: interim 1xx responses skipped, bodies by ``Content-Length``, chunked or to the close, and whether
    the server will close. Errors are ``http.client``'s own (``RemoteDisconnected``, ``IncompleteRead``,
    ``BadStatusLine`` ...).
    """

    def __init__(self, scheme: str, netloc: str, timeout_s: float, tls: ssl.SSLContext | None) -> None:
        parts = urlsplit(f"//{netloc}")
        self.host, self.port = parts.hostname or "", parts.port or (443 if scheme == "https" else 80)
        self.host_header = netloc if netloc.isascii() else netloc.encode("idna").decode("ascii")
        self.timeout_s, self.tls = timeout_s, tls
        self.sock: socket.socket | None = None
        self._in = None

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one small write
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock, self._in = sock, sock.makefile("rb")

    def close(self) -> None:
        if self._in is not None:
            self._in.close()
        if self.sock is not None:
            self.sock.close()
        self.sock = self._in = None

    def get(self, target: str, user_agent: str) -> tuple[int, dict[str, str], bytes, bool]:
        """``(status, headers with lower-case names, body, the server will close)`` of one GET."""
        assert self.sock is not None and self._in is not None
        self.sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {self.host_header}\r\nUser-Agent: {user_agent}\r\n"
            "Accept-Encoding: identity\r\n\r\n".encode("latin-1")
        )
        return read_response(self._in)


def _line(fp) -> bytes:
    line = fp.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise http.client.LineTooLong("header line")
    return line


def read_response(fp) -> tuple[int, dict[str, str], bytes, bool]:
    """A response to a GET read whole from the buffered stream ``fp``: status, headers (lower-case names; a
    repeated one joined with ", "), body, and whether the connection ends after it."""
    while True:
        line = _line(fp)
        if not line:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        version, _, rest = line.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/") or not code.isdigit() or rest[3:4] not in (b" ", b"\r", b"\n", b""):
            raise http.client.BadStatusLine(line.decode("latin-1").rstrip())
        status = int(code)
        headers: dict[str, str] = {}
        while (line := _line(fp)) not in (b"\r\n", b"\n", b""):
            name, colon, value = line.partition(b":")
            if not colon or line[:1] in (b" ", b"\t"):
                continue  # not a field (an obsolete folded continuation, say): nothing a GET of an image needs
            key, text = name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
            if len(headers) > MAX_HEADERS:
                raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if not (100 <= status < 200) or status == 101:
            break  # 1xx: an interim response, the real one follows
    tokens = {t.strip() for t in headers.get("connection", "").lower().split(",")}
    will_close = "close" in tokens or (version == b"HTTP/1.0" and "keep-alive" not in tokens)
    if status in (204, 304):
        return status, headers, b"", will_close
    if headers.get("transfer-encoding", "").lower().rsplit(",", 1)[-1].strip() == "chunked":
        return status, headers, _chunked(fp), will_close
    if "content-length" in headers:
        try:
            length = int(headers["content-length"].split(",")[0])
        except ValueError:
            raise http.client.HTTPException(f"bad Content-Length: {headers['content-length']!r}") from None
        body = fp.read(length) if length > 0 else b""
        if len(body) < length:
            raise http.client.IncompleteRead(body, length - len(body))
        return status, headers, body, will_close
    return status, headers, fp.read(), True  # the body ends when the server closes


def _chunked(fp) -> bytes:
    parts = []
    while True:
        line = _line(fp)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise http.client.IncompleteRead(b"".join(parts)) from None
        if size == 0:
            while _line(fp) not in (b"\r\n", b"\n", b""):
                pass  # trailer fields
            return b"".join(parts)
        chunk = fp.read(size)
        if len(chunk) < size:
            raise http.client.IncompleteRead(b"".join(parts) + chunk, size - len(chunk))
        parts.append(chunk)
        fp.read(2)  # the chunk's CRLF


class HttpClient:
    """HTTP(S) downloads with a timeout, retries with jittered backoff on 429/5xx/timeouts, dead links recorded.

    Connections are kept alive, one per host in each download thread: MP-16's photos come from a handful of
    Flickr hosts, so most requests skip the TCP and TLS handshakes that a connection per image would pay. They
    are :class:`Connection`, a GET and its response on a socket: a pooling layer (urllib3's pool manager, with
    its per-request retry and URL bookkeeping) takes several times the client CPU a download needs
    (``benchmarks/bench_http.py``), a sizeable share of the whole build at MP-16's small photos.
    Redirects are followed (up to five). Flickr answers many deleted photos with a redirect to a "photo
    unavailable" image (HTTP 200): a final URL matching ``placeholder_urls`` is a failure, not an image.
    """

    USER_AGENT = "mp16-reason-builder (+https://arxiv.org/abs/2506.14674)"
    MAX_REDIRECTS = 5

    def __init__(
        self,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        threads: int = 16,
        placeholder_urls: tuple[str, ...] = (),
    ) -> None:
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.placeholder_urls = tuple(placeholder_urls)
        # Each download thread's kept-alive connections, by host; they close when their thread ends.
        self._local = threading.local()
        self._tls: ssl.SSLContext | None = None

    def _connection(self, scheme: str, netloc: str) -> Connection:
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get((scheme, netloc))
        if conn is None:
            if scheme == "https":
                self._tls = self._tls or ssl.create_default_context()
            conn = Connection(scheme, netloc, self.timeout_s, self._tls if scheme == "https" else None)
            conns[(scheme, netloc)] = conn
        return conn

    def _drop(self, scheme: str, netloc: str) -> None:
        conn = self._local.__dict__.get("conns", {}).pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def _get(self, url: str) -> tuple[int, bytes, str]:
        """(status, body, final URL) of one GET, redirects followed."""
        for _ in range(self.MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise FetchError(f"not an http(s) URL: {url}")
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            sent = target + parts.netloc  # urlsplit has dropped CR, LF and tab already
            if not (sent.isascii() and sent.isprintable()) or " " in sent:
                raise FetchError(f"URL with spaces, control or non-ASCII characters (percent-encode them): {url!r}")
            for fresh in (False, True):
                conn = self._connection(parts.scheme, parts.netloc)
                reused = conn.sock is not None
                if not reused:
                    try:
                        conn.connect()
                    except TimeoutError:
                        self._drop(parts.scheme, parts.netloc)
                        raise
                    except OSError as exc:  # refused, unreachable, no such host, TLS handshake
                        self._drop(parts.scheme, parts.netloc)
                        raise _NoConnection(str(exc)) from exc
                try:
                    status, headers, body, will_close = conn.get(target, self.USER_AGENT)
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    self._drop(parts.scheme, parts.netloc)
                    if reused and not fresh:
                        continue  # the server closed a kept-alive connection while idle: once more, on a new one
                    raise
                except BaseException:
                    self._drop(parts.scheme, parts.netloc)
                    raise
                if will_close:
                    self._drop(parts.scheme, parts.netloc)
                break
            location = headers.get("location")
            if status not in (301, 302, 303, 307, 308) or not location:
                return status, body, url
            url = urljoin(url, location)
        raise FetchError(f"more than {self.MAX_REDIRECTS} redirects: {url}")

    def fetch(self, ref: str) -> bytes:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                status, body, final = self._get(ref)
            except (http.client.HTTPException, OSError) as exc:
                last = _reason(exc)
                continue
            if status < 300:
                if final != ref and any(fnmatch.fnmatch(final, p) for p in self.placeholder_urls):
                    raise FetchError(f"Flickr placeholder: {ref} redirects to {final}")
                return body
            last = f"HTTP {status}"
            if status != 429 and status < 500:
                break  # 404, 403, 410: the link is dead, retrying will not help
        raise FetchError(f"dead link ({last}) after {attempt + 1} attempt(s): {ref}")


class _NoConnection(OSError):
    """A connection that could not be made."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, _NoConnection):
        return f"cannot connect: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
