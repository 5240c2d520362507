"""Downloads over HTTP(S): the rows' own URLs and URL lists' entries."""

from __future__ import annotations

import fnmatch
import http.client
import random
import ssl
import threading
import time
from urllib.parse import urljoin, urlsplit

from builders.sources.base import FetchError


class HttpClient:
    """HTTP(S) downloads with a timeout, retries with jittered backoff on 429/5xx/timeouts, dead links recorded.

    Connections are kept alive, one per host in each download thread: MP-16's photos come from a handful of
    Flickr hosts, so most requests skip the TCP and TLS handshakes that a connection per image would pay. They
    are the standard library's ``http.client`` connections, used directly: a pooling layer on top (urllib3's
    pool manager, with its per-request retry and URL bookkeeping) costs about as much CPU again as the request
    itself, ~0.1 ms an image, which at MP-16's small photos is a sizeable share of the whole build.
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

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get((scheme, netloc))
        if conn is None:
            if scheme == "https":
                self._tls = self._tls or ssl.create_default_context()
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout_s, context=self._tls)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout_s)
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
                    conn.request("GET", target, headers={"User-Agent": self.USER_AGENT})
                    resp = conn.getresponse()
                    body = resp.read()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    self._drop(parts.scheme, parts.netloc)
                    if reused and not fresh:
                        continue  # the server closed a kept-alive connection while idle: once more, on a new one
                    raise
                except BaseException:
                    self._drop(parts.scheme, parts.netloc)
                    raise
                if resp.will_close:
                    self._drop(parts.scheme, parts.netloc)
                break
            location = resp.getheader("Location")
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                return resp.status, body, url
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
