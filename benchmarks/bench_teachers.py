"""Teacher stage: throughput against an endpoint of fixed latency L and concurrency cap C, memory with many
queued items, and requests sent by a re-run.

1. Throughput: N realistic images (640x480 JPEGs of 130 KB, sent as 174 KB base64 data URLs) through our
   stage and through the hand-written baseline (AsyncOpenAI + a semaphore + asyncio.gather), both against
   the same local endpoint (a separate asyncio process that reads each request whole, sleeps L and serves at
   most C at once; it stands for a remote server, so it spends little of this machine's CPU). The rate is
   over the whole run: start-up and the last unit's curation included. Goal: ours >= 90 % of C/L.
2. Memory: the stage over 10k and 100k queued (image, teacher) jobs whose replies are all cached, each in its
   own process: peak RSS must stay flat, and the run sends 0 requests.

python benchmarks/bench_teachers.py [--n 3000] [--latency 0.25] [--concurrency 32] [--queued 10000 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builders.recipe import load_recipe  # noqa: E402
from builders.teacher_stage import TeacherStage  # noqa: E402
from builders.teachers.cache import ReplyCache  # noqa: E402
from builders.teachers.prompt import messages  # noqa: E402
from builders.workfolder import UNIT_SCHEMA, unit_path, write_unit  # noqa: E402
from mp16_reason.jpeg import jpeg_data_url  # noqa: E402
from mp16_reason.schema import BuildInfo, ImageInfo, Sample, to_json_bytes  # noqa: E402

REPLY = json.dumps(
    {
        "localizable": True,
        "localizability": 0.9,
        "reasoning": "A sign.",
        "entities": [],
        "country": "France",
        "city": "Paris",
        "lat": None,
        "lon": None,
    }
)


def _jpeg(rng: np.random.Generator, w: int, h: int) -> bytes:
    base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3)
    pixels = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def write_units(work: Path, n: int, size: tuple[int, int], unit_size: int = 1000) -> list[str]:
    """Prepared-image units as the data plane leaves them (one distinct image per row); returns the hashes."""
    import hashlib

    rng = np.random.default_rng(0)
    images = [_jpeg(rng, *size) for _ in range(min(n, 64))]
    shas = []
    for u in range(-(-n // unit_size)):
        cols: dict[str, list] = {k: [] for k in UNIT_SCHEMA.names}
        for i in range(u * unit_size, min(n, (u + 1) * unit_size)):
            jpg = images[i % len(images)]
            sha = hashlib.sha256(f"{i}".encode()).hexdigest()  # distinct keys, even where the bytes repeat
            rec = Sample(
                id=f"b{i}",
                lat=48.85,
                lon=2.35,
                country="France",
                city="Paris",
                split="train",
                image=ImageInfo(width=size[0], height=size[1], sha256=sha),
                build=BuildInfo(),
            )
            row = (i, f"b{i}", "ok", "", "", "train", sha, jpg, to_json_bytes(rec), 0)
            for k, v in zip(UNIT_SCHEMA.names, row):
                cols[k].append(v)
            shas.append(sha)
        write_unit(pa.table(cols, schema=UNIT_SCHEMA), unit_path(work, u))
    return shas


def recipe(url: str, cache: Path, concurrency: int):
    off = {"enabled": False}
    return load_recipe(
        None,
        {
            "input.metadata": "unused.csv",
            "teachers": [
                {
                    "name": "t",
                    "base_url": url,
                    "model": "bench",
                    "max_concurrency": concurrency,
                    "structured_output": False,
                    "max_retries": 0,
                }
            ],
            "curation": {"localizability": off, "ground_truth": off, "agreement": off, "grounding": off},
            "distill.cache": str(cache),
        },
    )


def serve(latency: float, cap: int) -> None:
    """The endpoint (run in its own process): reads each request whole, sleeps ``latency`` with at most ``cap``
    requests at once, answers a chat completion. It stands for a remote server: an asyncio loop that neither
    parses nor decodes the payload, so the CPU it takes from the stage on this machine stays small."""
    body = json.dumps(
        {
            "id": "bench",
            "object": "chat.completion",
            "created": 0,
            "model": "bench",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 500, "completion_tokens": 50, "total_tokens": 550},
        }
    ).encode()
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    served = 0

    async def main() -> None:
        gate = asyncio.Semaphore(cap)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal served
            try:
                while True:  # one keep-alive connection: request after request
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    await reader.readexactly(length)
                    async with gate:
                        await asyncio.sleep(latency)
                    served += 1
                    writer.write(response)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin

    asyncio.run(main())
    print(served, flush=True)


def baseline(url: str, jpegs: list[bytes], concurrency: int) -> float:
    """What one writes by hand: AsyncOpenAI, a semaphore, gather over everything."""
    import openai

    async def go() -> None:
        client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0)
        sem = asyncio.Semaphore(concurrency)

        async def one(jpeg: bytes) -> None:
            async with sem:
                url_ = await asyncio.to_thread(jpeg_data_url, jpeg, 768 * 28 * 28)
                await client.chat.completions.create(model="bench", messages=messages(url_), max_tokens=1024)

        await asyncio.gather(*(one(j) for j in jpegs))
        await client.close()

    t0 = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - t0


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(n: int, root: Path) -> None:
    """One process: n queued jobs, every reply cached; prints peak RSS (MB) and requests sent."""
    work = root / ".work"
    shas = write_units(work, n, (32, 24))
    cache_path = root / "cache.sqlite"
    rec = recipe("http://127.0.0.1:9/v1", cache_path, 64)  # nothing listens there: any request would fail
    cache = ReplyCache(cache_path)
    cache.put(*(rec.teachers[0].reply(sha, REPLY, 1, 1) for sha in shas))
    cache.close()
    rss_before = peak_rss_mb()
    d = TeacherStage(rec, work, progress=False, log=lambda *_: None)
    t0 = time.perf_counter()
    d.run(-(-n // 1000))
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()
    sent = sum(u.requests for u in d.usage.values())
    print(
        json.dumps(
            {
                "n": n,
                "sent": sent,
                "hits": sum(d.hits.values()),
                "seconds": seconds,
                "rss_before_mb": rss_before,
                "peak_mb": peak,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--latency", type=float, default=0.25)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--queued", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--serve", nargs=2, type=float, help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve[0], int(args.serve[1]))
    if args.memory_child:
        return memory_child(args.memory_child, args.dir)

    c, lat = args.concurrency, args.latency
    ideal = c / lat
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        srv = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(lat), str(c)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        url = srv.stdout.readline().strip()
        print(f"endpoint: latency {lat} s, cap {c}: C/L = {ideal:.1f} requests/s; {args.n} images of 640x480")
        shas = write_units(tmp / "w" / ".work", args.n, (640, 480))
        d = TeacherStage(recipe(url, tmp / "c.sqlite", c), tmp / "w" / ".work", progress=False, log=lambda *_: None)
        t0 = time.perf_counter()
        d.run(-(-args.n // 1000))
        ours = args.n / (time.perf_counter() - t0)
        jpegs = [_jpeg(np.random.default_rng(i), 640, 480) for i in range(64)]
        base = args.n / baseline(url, [jpegs[i % 64] for i in range(args.n)], c)
        again = TeacherStage(recipe(url, tmp / "c.sqlite", c), tmp / "w" / ".work", progress=False, log=lambda *_: None)
        for p in (tmp / "w" / ".work" / "curated").glob("*.parquet"):
            p.unlink()  # curate again from scratch: every answer must come from the cache
        again.run(-(-args.n // 1000))
        srv.stdin.close()
        srv.wait()
        srv.stdout.close()
        print(f"  ours                {ours:8.1f} req/s   {ours / ideal:6.1%} of C/L")
        print(f"  openai + semaphore  {base:8.1f} req/s   {base / ideal:6.1%} of C/L")
        print(f"  ratio ours/baseline {ours / base:8.2f}x")
        resent = sum(u.requests for u in again.usage.values())
        print(f"  re-run: {resent} requests sent, {sum(again.hits.values())} from the cache")
        assert len(shas) == args.n
        for n in args.queued:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(n), "--dir", str(tmp / f"m{n}")],
                capture_output=True,
                text=True,
                check=True,
            )
            m = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"  {n:>7,} queued jobs, all cached: peak RSS {m['peak_mb']:.0f} MB "
                f"({m['rss_before_mb']:.0f} MB before the stage), {m['sent']} sent, {m['hits']:,} cache hits, "
                f"{m['n'] / m['seconds']:,.0f} jobs/s"
            )


if __name__ == "__main__":
    main()
