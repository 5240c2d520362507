"""Teachers in batch mode: every missing reply as a line of a Batch API file, uploaded, submitted, polled and
imported into the reply cache before the teacher stage reads it.

OpenAI bills its Batch API at half the online price, under separate rate limits, and ``vllm run-batch`` runs
the same files offline (``mp16-reason cache export-requests`` / ``import-results``). A line's ``custom_id`` is
the reply-cache key and its ``body`` is what the online request would send, so the replies, and the shards
built from them, are those of an online build.

Nothing is submitted twice. Each batch teacher's state is a JSON file in the build's work folder, rewritten
after every step: a chunk is recorded with its uploaded file before its batch is created, and the batch carries
the chunk's name in its metadata, so a build killed between the two finds its batch by listing them instead of
creating another. The requests of a recorded chunk are written again only when its batch ended without their
replies (failed lines; expired, failed or cancelled batches): they go into a new round, up to the teacher's
``max_retries``, and are then quarantined with the reason, as online failures are.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from builders.teachers.base import TeacherFailure, TeacherSettings, Usage
from builders.teachers.cache import CachedReply, ReplyCache
from builders.teachers.online import OpenAITeacher, endpoint, no_answer
from builders.teachers.prompt import reply_problem
from builders.workfolder import read_unit, unit_path
from mp16_reason.storage import Location

ENDPOINT = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def missing_requests(
    work: Location, units: Iterable[int], specs: list[OpenAITeacher], cache: ReplyCache
) -> Iterator[tuple[OpenAITeacher, str, str, bytes]]:
    """(teacher, cache key, image sha256, prepared JPEG) of every reply the cache lacks over ``units``, each key
    once (a duplicate image is asked about once)."""
    seen: set[bytes] = set()  # 16 bytes a key: millions of requests fit in a few hundred MB
    for index in units:
        table = read_unit(unit_path(work, index), ["status", "sha256", "jpg"])
        ok = [pos for pos, status in enumerate(table.column("status").to_pylist()) if status == "ok"]
        all_shas, jpgs = table.column("sha256").to_pylist(), table.column("jpg")
        shas = {pos: all_shas[pos] for pos in ok}
        keys = {(pos, t): spec.key(shas[pos]) for pos in ok for t, spec in enumerate(specs)}
        cached = cache.get_many(set(keys.values()))
        for (pos, t), key in keys.items():
            short = bytes.fromhex(key[:32])
            if key in cached or short in seen:
                continue
            seen.add(short)
            yield specs[t], key, shas[pos], jpgs[pos].as_py()


def request_line(spec: TeacherSettings, key: str, jpeg: bytes) -> bytes:
    """One Batch API input line: the kind's request body (:meth:`TeacherSettings.batch_body`), under the reply's
    cache key."""
    body = spec.batch_body(jpeg)
    line = {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def read_results(lines: Iterable[bytes | str], cache: ReplyCache) -> tuple[list[CachedReply], dict[str, str], int]:
    """Replies and failures (key -> reason) in the lines of a batch output or error file (OpenAI's format, which
    ``vllm run-batch`` writes too), with the number of lines naming a request the cache never wrote."""
    parsed = []
    for raw in lines:
        text = raw.decode() if isinstance(raw, bytes) else raw
        if text.strip():
            parsed.append(json.loads(text))
    asked = cache.get_requests(line.get("custom_id", "") for line in parsed)
    replies, failures, unknown = [], {}, 0
    for line in parsed:
        request = asked.get(line.get("custom_id", ""))
        if request is None:
            unknown += 1
            continue
        reply = _reply(line, request)
        if isinstance(reply, CachedReply):
            replies.append(reply)
        else:
            failures[request.key] = reply
    return replies, failures, unknown


def _reply(line: dict[str, Any], request: CachedReply) -> CachedReply | str:
    if line.get("error"):
        error = line["error"]
        return f"batch error {error.get('code') or ''}: {str(error.get('message') or error)[:300]}".strip()
    response = line.get("response") or {}
    status, body = response.get("status_code"), response.get("body") or {}
    if status != 200:
        message = (body.get("error") or {}).get("message", "") if isinstance(body, dict) else str(body)
        return f"HTTP {status}: {str(message)[:300]}"
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"] or ""
        usage = body.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return f"malformed response: {type(exc).__name__}: {str(exc)[:300]}"
    # A reply that is no answer is a failed line, as it is a failed request online: never cached.
    max_tokens = json.loads(request.params or "{}").get("max_tokens", 0)
    if problem := no_answer(
        choice["message"].get("refusal"), choice.get("finish_reason"), reply_problem(text), max_tokens
    ):
        return problem
    return replace(request, text=text, input_tokens=tokens[0], output_tokens=tokens[1], origin="endpoint")


def remember_requests(cache: ReplyCache, spec: OpenAITeacher, asked: list[tuple[str, str]]) -> None:
    """Record what each (key, image sha256) asks, so that results naming only the key become replies."""
    cache.put_requests(spec.reply(sha, "") for _, sha in asked)


class BatchRunner:
    """One teacher's batches for one build: submit what is missing, poll, import, resubmit failures."""

    def __init__(
        self,
        spec: OpenAITeacher,
        work: Location,
        cache: ReplyCache,
        progress: bool = True,
        log=print,
        client: Any = None,
    ) -> None:
        self.spec, self.cache, self.progress, self.log = spec, cache, progress, log
        self.folder = work / "batches" / spec.name
        self.work = work
        self.endpoint = endpoint(spec)
        self.endpoint.key()  # a missing key fails here, with or without a client given
        self.client = client if client is not None else self.endpoint.client()
        self.usage = Usage()
        self.state_path = self.folder / "state.json"
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
        else:  # the id tells this build's batches from any other's in the account
            self.state = {"id": uuid.uuid4().hex, "chunks": [], "failures": {}}

    # -- state -------------------------------------------------------------------------------------------------
    def _save(self) -> None:
        self.folder.mkdir()
        self.state_path.write_text(json.dumps(self.state, indent=1, sort_keys=True) + "\n")

    def quarantined(self) -> dict[str, TeacherFailure]:
        """Keys given up on, with the reason as the build records it."""
        return {
            key: TeacherFailure(self.spec.name, f["reason"], f["attempts"], "batch")
            for key, f in self.state["failures"].items()
            if f["attempts"] > self.spec.max_retries
        }

    def forgive(self) -> None:
        """Ask the given-up requests again on the next run (the build stopped instead of quarantining them)."""
        for key in self.quarantined():
            del self.state["failures"][key]
        self._save()

    def scrub(self, text: str) -> str:
        return self.endpoint.scrub(text)

    def summary(self) -> str:
        counts = Counter(c["status"] for c in self.state["chunks"])
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
        u = self.usage
        return (
            f"teacher {self.spec.name} (batch): {len(self.state['chunks'])} batch(es) ({states}); this run "
            f"{u.requests:,} replies imported, {u.retries:,} resubmitted, {u.failed:,} quarantined"
        )

    # -- the stage ---------------------------------------------------------------------------------------------
    def run(self, units: list[int]) -> dict[str, TeacherFailure]:
        """This teacher alone (see :func:`run_batches`)."""
        return run_batches([self], units, self.progress, self.log)

    def submit(self, units: list[int]) -> int:
        """Write, upload and submit every missing request not yet given up on, in files within the API's limits."""
        spec, given_up, failures = self.spec, self.quarantined(), self.state["failures"]
        submitted = 0
        with tempfile.TemporaryDirectory(prefix="mp16-reason-batch-") as folder:
            path = Path(folder) / "requests.jsonl"
            asked: list[tuple[str, str]] = []
            size = 0
            fh = open(path, "wb")  # noqa: SIM115 - one file a chunk, closed before each upload
            bar = tqdm(desc=f"{spec.name} batch files", unit="req", disable=not self.progress)
            try:
                for _, key, sha, jpeg in missing_requests(self.work, units, [spec], self.cache):
                    if key in given_up:
                        continue
                    line = request_line(spec, key, jpeg)
                    if len(line) > spec.batch_max_bytes:
                        raise ValueError(
                            f"teacher {spec.name}: one request is {len(line):,} bytes, over batch_max_bytes "
                            f"({spec.batch_max_bytes:,}); lower the teacher's max_pixels or raise the limit"
                        )
                    if asked and (len(asked) >= spec.batch_max_requests or size + len(line) > spec.batch_max_bytes):
                        fh.close()
                        self._upload(path, asked)
                        fh, asked, size = open(path, "wb"), [], 0  # noqa: SIM115
                    fh.write(line)
                    asked.append((key, sha))
                    size += len(line)
                    submitted += 1
                    self.usage.retries += key in failures  # asked before, and failed
                    bar.update(1)
                fh.close()
                if asked:
                    self._upload(path, asked)
            finally:
                fh.close()
                bar.close()
        return submitted

    def _upload(self, path: Path, asked: list[tuple[str, str]]) -> None:
        name = f"{self.spec.name}-{len(self.state['chunks']):05d}"
        remember_requests(self.cache, self.spec, asked)
        (self.folder / f"{name}.keys").write_text("".join(f"{key}\n" for key, _ in asked))
        with open(path, "rb") as fh:
            uploaded = self.client.files.create(file=(f"{name}.jsonl", fh), purpose="batch")
        # Recorded before the batch exists: from here on these requests are this chunk's, and a restart finds
        # its batch (by the metadata below) rather than submit them again.
        self.state["chunks"].append(
            {
                "name": name,
                "file_id": uploaded.id,
                "batch_id": None,
                "status": "uploaded",
                "requests": len(asked),
                "done": 0,
                "imported": False,
            }
        )
        self._save()
        self._create(self.state["chunks"][-1])

    def _metadata(self, chunk: dict) -> dict[str, str]:
        return {"mp16_reason_build": self.state["id"], "mp16_reason_chunk": chunk["name"]}

    def _create(self, chunk: dict) -> None:
        batch = self.client.batches.create(
            input_file_id=chunk["file_id"],
            endpoint=ENDPOINT,
            completion_window=self.spec.batch_completion_window,
            metadata=self._metadata(chunk),
        )
        chunk["batch_id"], chunk["status"] = batch.id, batch.status
        self._save()

    def create_recorded(self) -> None:
        """Chunks uploaded by a build that was killed before it saw their batch: find the batch, else create it."""
        orphans = {c["name"]: c for c in self.state["chunks"] if c["batch_id"] is None}
        if not orphans:
            return
        for batch in self.client.batches.list(limit=100):
            meta = batch.metadata or {}
            chunk = orphans.get(meta.get("mp16_reason_chunk", ""))
            if chunk is not None and meta.get("mp16_reason_build") == self.state["id"]:
                chunk["batch_id"], chunk["status"] = batch.id, batch.status
                del orphans[chunk["name"]]
                if not orphans:
                    break
        self._save()
        for chunk in orphans.values():
            self._create(chunk)

    def poll(self) -> list[dict]:
        """Look at each unfinished batch once, importing those that have ended; returns those still running."""
        for chunk in self.active():
            batch = self.client.batches.retrieve(chunk["batch_id"])
            counts = batch.request_counts
            done = (counts.completed + counts.failed) if counts else 0
            if (batch.status, done) != (chunk["status"], chunk["done"]):
                chunk["status"], chunk["done"] = batch.status, done
                self._save()
            if batch.status in TERMINAL:
                self._import(chunk, batch)
        return self.active()

    def active(self) -> list[dict]:
        return [c for c in self.state["chunks"] if not c["imported"]]

    def _lines(self, file_id: str | None) -> list[bytes]:
        return self.client.files.content(file_id).content.splitlines() if file_id else []

    def _import(self, chunk: dict, batch: Any) -> None:
        """A finished batch's replies into the cache (usage kept); the rest of its requests count as failed."""
        keys = (self.folder / f"{chunk['name']}.keys").read_text().split()
        replies, failures, _ = read_results(self._lines(batch.output_file_id), self.cache)
        errors = read_results(self._lines(batch.error_file_id), self.cache)[1]
        answered = {r.key for r in replies}
        failures.update((k, v) for k, v in errors.items() if k not in answered)
        ended = f"batch {batch.status}"
        if batch.errors and batch.errors.data:
            ended += f": {batch.errors.data[0].message}"
        for key in keys:
            if key not in answered and key not in failures:
                failures[key] = ended
        if replies:
            self.cache.put(*replies)  # committed before the state says the chunk is imported
        for key, reason in failures.items():
            f = self.state["failures"].setdefault(key, {"attempts": 0, "reason": ""})
            f["attempts"] += 1
            f["reason"] = self.scrub(reason)
            self.usage.failed += f["attempts"] > self.spec.max_retries
        for key in answered:
            self.state["failures"].pop(key, None)
        self.usage.requests += len(replies)
        self.usage.input_tokens += sum(r.input_tokens for r in replies)
        self.usage.output_tokens += sum(r.output_tokens for r in replies)
        chunk["imported"] = True
        self._save()


def run_batches(
    runners: list[BatchRunner], units: list[int], progress: bool = True, log=print
) -> dict[str, TeacherFailure]:
    """Every batch teacher's missing replies into the cache, or quarantined: all teachers' files are submitted
    before any is waited for, then polled together; what failed goes into the next round. Returns the
    quarantined keys with their reasons."""
    while True:
        for runner in runners:
            runner.create_recorded()
        _wait(runners, progress)
        if not sum(runner.submit(units) for runner in runners):
            break
    quarantined: dict[str, TeacherFailure] = {}
    for runner in runners:
        log(runner.summary())
        quarantined.update(runner.quarantined())
    return quarantined


def _wait(runners: list[BatchRunner], progress: bool) -> None:
    """Poll until every submitted batch has ended; one bar for all: requests done, batches by state."""
    chunks = [c for r in runners for c in r.active()]
    if not chunks:
        return
    bar = tqdm(total=sum(c["requests"] for c in chunks), desc="batches", unit="req", disable=not progress)
    try:
        while True:
            running = [r for r in runners if r.poll()]
            bar.n = sum(c["requests"] if c["imported"] else c["done"] for c in chunks)
            states = Counter(c["status"] for c in chunks)
            bar.set_postfix_str(", ".join(f"{n} {s}" for s, n in sorted(states.items())), refresh=True)
            if not running:
                return
            time.sleep(min(r.spec.batch_poll_s for r in running))
    finally:
        bar.close()


def export_requests(
    work: Location, units: list[int], specs: list[OpenAITeacher], cache: ReplyCache, out: str | Path
) -> Counter:
    """Every missing reply's request line into ``out`` (for ``vllm run-batch`` or a Batch API upload made by
    hand), remembered in the cache so that ``import_results`` can read the results; requests per teacher."""
    per: Counter = Counter()
    asked: list[tuple[OpenAITeacher, str]] = []  # remembered a few thousand at a time: millions would not fit
    with Location(out).commit() as fh:
        for spec, key, sha, jpeg in missing_requests(work, units, specs, cache):
            fh.write(request_line(spec, key, jpeg))
            asked.append((spec, sha))
            per[spec.name] += 1
            if len(asked) >= 5000:
                cache.put_requests(s.reply(sha, "") for s, sha in asked)
                asked.clear()
        cache.put_requests(s.reply(sha, "") for s, sha in asked)
    return per


def import_results(path: str | Path, cache: ReplyCache, lines_at_once: int = 10_000) -> tuple[int, dict[str, str], int]:
    """A results file's replies into the cache; returns (replies imported, failures by key, unknown lines)."""
    imported, failures, unknown = 0, {}, 0

    def flush(lines: list[bytes]) -> None:
        nonlocal imported, unknown
        replies, failed, n_unknown = read_results(lines, cache)
        if replies:
            cache.put(*replies)
        imported += len(replies)
        failures.update(failed)
        unknown += n_unknown

    with Location(path).open("rb") as fh:
        lines: list[bytes] = []
        for line in fh:
            lines.append(line)
            if len(lines) >= lines_at_once:
                flush(lines)
                lines = []
        flush(lines)
    return imported, failures, unknown
