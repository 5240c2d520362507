"""CPU per image download: our ``HttpClient`` (kept-alive connections, responses read by hand) against urllib3's pool
manager (what the build used before, and what ``requests`` sits on), in one run, over one kept-alive loopback
connection to a server in another process answering an ~85 KB JPEG-sized body (MP-16's photos).

Only the client's CPU counts (``time.process_time``), so the server and the machine's drift weigh little.

    python benchmarks/bench_http.py [--requests 5000] [--bytes 85000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time


def serve(port: int, size: int) -> None:
    body = os.urandom(size)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % size

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def cpu_per_request(fetch, n: int) -> float:
    fetch()  # the connection is made outside the measurement
    start = time.process_time()
    for _ in range(n):
        fetch()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--bytes", type=int, default=85_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.bytes)

    import socket

    import urllib3

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from builders.sources import HttpClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--bytes", str(args.bytes)])
    try:
        url = f"http://127.0.0.1:{port}/000001.jpg"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        ours = HttpClient(timeout_s=10, retries=3, threads=1)
        pool = urllib3.PoolManager(
            maxsize=1,
            timeout=urllib3.Timeout(connect=10, read=10),
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5),
        )
        assert len(ours.fetch(url)) == len(pool.request("GET", url).data) == args.bytes
        runs: dict[str, list[float]] = {"urllib3 PoolManager": [], "mp16-reason HttpClient": []}
        for rep in range(args.repeats):
            order = list(runs) if rep % 2 == 0 else list(reversed(runs))  # alternate who goes first
            for name in order:
                fetch = (
                    (lambda: pool.request("GET", url).data) if name.startswith("urllib3") else (lambda: ours.fetch(url))
                )
                runs[name].append(cpu_per_request(fetch, args.requests))
        print(
            f"{args.requests:,} GETs of {args.bytes:,} bytes over one kept-alive loopback connection, "
            f"client CPU per request (median of {args.repeats} alternating runs)"
        )
        for name, values in runs.items():
            print(f"  {name:<24} {statistics.median(values):7.1f} us   (runs {min(values):.1f}-{max(values):.1f})")
        ratios = [a / b for a, b in zip(runs["urllib3 PoolManager"], runs["mp16-reason HttpClient"])]
        print(f"  urllib3 / ours: {statistics.median(ratios):.2f}x (runs {min(ratios):.2f}-{max(ratios):.2f}x)")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
