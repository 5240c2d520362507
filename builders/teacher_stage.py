"""The teacher stage of the build: ask every teacher about every prepared image, then curate, unit by unit.

It runs in the build's main process on one event loop: a fixed pool of asynchronous workers takes
(image, teacher) jobs from a bounded queue that a producer fills unit by unit, so memory holds a few units
whatever the size of the input, while each teacher's own cap and rates decide what is in flight. Answers come
from the reply cache when present; each new reply is committed to the cache as soon as it arrives. When all
jobs of a unit are done, a single curation thread filters it and commits ``curated/unit-NNNNNN.arrow``
atomically. A killed build therefore resumes with committed units skipped and every reply that arrived
already paid for; at most the requests in flight at the moment of the kill are sent again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from builders.curation.curator import Curator
from builders.recipe import Recipe
from builders.stops import BuildStopped
from builders.teachers.base import Job, Teacher, TeacherFailed, TeacherFailure, TeacherSettings, Usage
from builders.teachers.cache import CachedReply, ReplyCache, claim_owner, default_path
from builders.teachers.online import import_http_stacks
from builders.workfolder import UNIT_SCHEMA, curated_path, read_unit, tar_member_bytes, unit_path, write_unit
from mp16_reason.manifest import DEFAULT_CONFIG, LOCALIZABILITY_CONFIG
from mp16_reason.schema import Sample, TeacherAnswer, from_json_bytes, to_json_bytes
from mp16_reason.storage import Location, location

LOCALIZABILITY = LOCALIZABILITY_CONFIG
CLAIM_LEASE_S = 90.0  # a claim not renewed for this long belongs to a build that died
CLAIM_POLL_S = 0.5  # how often a key another build is asking about is looked up again
# A curated unit: the prepared unit's columns but the image, which ``pos`` (the row in the prepared unit) finds.
CURATED_SCHEMA = pa.schema(
    [f for f in UNIT_SCHEMA if f.name != "jpg"] + [pa.field("pos", pa.int32()), pa.field("config", pa.string())]
)


def open_cache(recipe: Recipe) -> ReplyCache:
    cache = ReplyCache(Path(recipe.distill.cache).expanduser() if recipe.distill.cache else default_path())
    if recipe.distill.import_cache:
        cache.import_(recipe.distill.import_cache)
    return cache


class QuarantineExceeded(BuildStopped):
    """More of a teacher's requests failed than its ``max_quarantined`` allows: the build stops, resumably."""


@dataclass
class _Unit:
    index: int
    table: pa.Table | None
    jobs: int
    samples: dict[int, Sample] = field(default_factory=dict)  # the prepared records, parsed once
    results: dict[tuple[int, int], TeacherAnswer | TeacherFailure] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(isinstance(r, TeacherFailure) for r in self.results.values())


@dataclass
class TeacherTotals:
    """Per teacher, over the whole build (every judged image, resumed runs included)."""

    answers: int = 0
    parsed: int = 0
    authored: int = 0  # written by hand, not by the model (the offline sample)
    input_tokens: int = 0
    output_tokens: int = 0


class TeacherStage:
    def __init__(self, recipe: Recipe, work_dir: Path | Location, progress: bool = True, log=print) -> None:
        self.recipe, self.work = recipe, location(work_dir)
        self.specs = recipe.teachers
        self.progress, self.log = progress, log
        coordinates = frozenset(s.name for s in self.specs if not s.reasons)
        self.curator = Curator(recipe.curation, len(self.specs) - len(coordinates), coordinates)
        self.usage = {s.name: Usage() for s in self.specs}  # requests sent in this run, per teacher
        self.hits: Counter = Counter()  # answers served from the cache in this run
        self.waited: Counter = Counter()  # looks at keys another build sharing the cache was asking about
        self.asked: Counter = Counter()  # jobs settled in this run (answers, cached or not, and failures)
        self.failures: dict[str, Counter] = {s.name: Counter() for s in self.specs}  # reason -> quarantined
        self.owner = claim_owner()  # this run's name on its claims in the shared reply cache

    # -- one job ---------------------------------------------------------------------------------------------
    async def _answer(
        self, teacher: Teacher | None, spec: TeacherSettings, key: str, job: Job
    ) -> TeacherAnswer | TeacherFailure:
        loop = asyncio.get_running_loop()
        if key in self.inflight:  # the same image twice in flight in this build (a duplicate): one request
            reply = await asyncio.shield(self.inflight[key])
            return spec.answer(reply) if reply else TeacherFailure(spec.name, "duplicate request failed", 0)
        if teacher is None:  # offline, or a batch teacher whose batches are done
            reply = await loop.run_in_executor(self.db, self.cache.get, key)
            if reply is not None:
                self.hits[spec.name] += 1
                return spec.answer(reply)
            if key in self.quarantined:
                return self.quarantined[key]
            if self.recipe.distill.offline:
                return TeacherFailure(
                    spec.name, "no cached reply and the build is offline (distill.offline)", 0, "offline"
                )
            return TeacherFailure(spec.name, "no reply from its batches", 0, "batch")
        future: asyncio.Future[CachedReply | None] = loop.create_future()
        self.inflight[key] = future  # before any await: a duplicate of this image now waits for this job
        reply = None
        try:
            # Claimed in the shared cache first: a build sharing the cache may have answered it, or be asking now.
            while (
                claim := await loop.run_in_executor(self.db, self.cache.claim, key, self.owner, CLAIM_LEASE_S)
            ) is False:
                self.waited[spec.name] += 1
                await asyncio.sleep(CLAIM_POLL_S)
            if not isinstance(claim, bool):
                self.hits[spec.name] += 1
                reply = claim
                return spec.answer(claim)
            try:
                received = await teacher.ask(job)
                if problem := spec.unusable(received.text):  # any kind: a reply that is no answer is not kept
                    raise TeacherFailed(TeacherFailure(spec.name, problem, 1, "reply"))
            except TeacherFailed as exc:  # this image's failure (any other exception stops the build)
                await loop.run_in_executor(self.db, self.cache.release, key, self.owner)
                return exc.failure
            # Committed before the job counts as done; the ledger's reply is the one used (the first stored).
            reply = (await loop.run_in_executor(self.db, self.cache.put, received))[0]
        finally:
            # Only now, with the reply in the cache, may a duplicate stop waiting here and look there instead.
            future.set_result(reply)
            self.inflight.pop(key, None)
        return spec.answer(reply)  # our own code: an error here stops the build, the reply stays cached

    # -- one unit --------------------------------------------------------------------------------------------
    def _finish(self, unit: _Unit) -> None:
        """Curate a unit whose answers are all in and commit it (runs on the curation thread).

        The images stay in the prepared unit (``pos`` points back to them): only the small columns are
        rewritten, so curating holds the GIL, and the disk, for milliseconds rather than the unit's megabytes."""
        if unit.table is None:  # a held unit (it had quarantines): read again now that the stage may seal it
            unit.table = read_unit(unit_path(self.work, unit.index))
        rows = unit.table.drop_columns(["jpg"]).to_pylist()
        jpgs = unit.table.column("jpg")
        jpg_bytes = pc.binary_length(jpgs).to_pylist()
        cols: dict[str, list] = {name: [] for name in CURATED_SCHEMA.names}

        def emit(pos: int, config: str = DEFAULT_CONFIG, **update) -> None:
            values = {**rows[pos], "pos": pos, "config": config, **update}
            for name in CURATED_SCHEMA.names:
                cols[name].append(values.get(name))

        for pos, row in enumerate(rows):
            if row["status"] != "ok":
                emit(pos)
                continue
            results = [unit.results[(pos, t)] for t in range(len(self.specs))]
            answers = [r for r in results if isinstance(r, TeacherAnswer)]
            failures = [r for r in results if isinstance(r, TeacherFailure)]
            d = self.curator.curate(unit.samples[pos], jpgs[pos].as_py, answers, failures)
            js = to_json_bytes(d.record)
            size = tar_member_bytes(jpg_bytes[pos], len(js))
            if d.kept:
                emit(pos, json=js, tar_bytes=size)
            else:  # the record stays (with every answer) for inspection; the image goes to no shard
                emit(pos, status="rejected", stage=d.stage, reason=d.reason, json=js, tar_bytes=0)
            if d.judged:
                emit(pos, LOCALIZABILITY, status="ok", stage="", reason="", json=js, tar_bytes=size)
        write_unit(pa.table(cols, schema=CURATED_SCHEMA), curated_path(self.work, unit.index))

    # -- the stage -------------------------------------------------------------------------------------------
    async def _run(self, todo: list[int], n_jobs: int) -> list[_Unit]:
        """Every job of ``todo``; commits each unit whose answers all came, and returns the units with
        quarantined requests, which the stage seals only if the quarantines stay under each teacher's limit."""
        offline = self.recipe.distill.offline
        specs = self.specs
        teachers = [self._teacher(s, offline) for s in specs]
        loop = asyncio.get_running_loop()
        n_workers = sum(s.max_concurrency for s in self.specs)
        queue: asyncio.Queue = asyncio.Queue(maxsize=2 * n_workers)
        curation = ThreadPoolExecutor(max_workers=1, thread_name_prefix="curate")
        # The reply cache lives on a thread of its own: SQLite lets go of the GIL while it reads and commits,
        # and the event loop, which carries every request, never waits on the disk.
        self.db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reply-cache")
        room = asyncio.Semaphore(2)  # units loaded or curating at once: bounds memory
        finishing: list[asyncio.Future] = []
        held: list[_Unit] = []
        bar = tqdm(total=n_jobs, unit="ask", desc="teachers", disable=not self.progress)
        # Curation (filters, the grounding model) runs beside the asking and may lag it: a line of its own, so
        # a full "teachers" bar with units still curating is not a stall.
        curated = tqdm(total=len(todo), unit="unit", desc="curation", disable=not self.progress, position=1)

        def curated_one(_: object) -> None:
            room.release()
            curated.update(1)

        def done(unit: _Unit) -> None:
            if unit.failed:  # kept back, without its images, until the stage knows it may seal quarantines
                unit.table = None
                held.append(unit)
                room.release()
                return
            fut = loop.run_in_executor(curation, self._finish, unit)
            fut.add_done_callback(curated_one)
            finishing.append(fut)

        async def produce() -> None:
            for index in todo:
                await room.acquire()
                table = await asyncio.to_thread(read_unit, unit_path(self.work, index))
                ok = [i for i, s in enumerate(table.column("status").to_pylist()) if s == "ok"]
                unit = _Unit(index, table, len(ok) * len(specs))
                if not unit.jobs:
                    done(unit)
                    continue
                records = table.column("json").to_pylist()
                jpgs = table.column("jpg")
                for pos in ok:
                    unit.samples[pos] = from_json_bytes(records[pos])
                shas = {pos: unit.samples[pos].image.sha256 for pos in ok}
                keys = {(pos, t): s.key(shas[pos]) for pos in ok for t, s in enumerate(specs)}
                # One query for the unit, not one a job.
                cached = await loop.run_in_executor(self.db, self.cache.get_many, set(keys.values()))
                for pos in ok:
                    img = unit.samples[pos].image
                    for t, spec in enumerate(specs):
                        if (reply := cached.get(keys[(pos, t)])) is not None:  # answered already: no job
                            self.hits[spec.name] += 1
                            settle(unit, pos, t, spec.answer(reply))
                        else:
                            job = Job(img.sha256, jpgs[pos].as_py(), img.width, img.height)
                            await queue.put((unit, pos, t, keys[(pos, t)], job))
            for _ in range(n_workers):
                await queue.put(None)

        def settle(unit: _Unit, pos: int, t: int, result: TeacherAnswer | TeacherFailure) -> None:
            unit.results[(pos, t)] = result
            self.asked[specs[t].name] += 1
            if isinstance(result, TeacherFailure):
                self.failures[specs[t].name][result.reason] += 1
            unit.jobs -= 1
            bar.update(1)
            if unit.jobs == 0:
                done(unit)

        async def work() -> None:
            while (item := await queue.get()) is not None:
                unit, pos, t, key, job = item
                settle(unit, pos, t, await self._answer(teachers[t], specs[t], key, job))

        async def renew_claims() -> None:  # while this build asks, its claims in the shared cache stay live
            while True:
                await asyncio.sleep(CLAIM_LEASE_S / 3)
                await loop.run_in_executor(self.db, self.cache.renew, self.owner, CLAIM_LEASE_S)

        renewing = asyncio.create_task(renew_claims())
        tasks = [asyncio.create_task(produce()), *(asyncio.create_task(work()) for _ in range(n_workers))]
        try:
            await asyncio.gather(*tasks)
            await asyncio.gather(*finishing)
        except BaseException:
            # A stop (an outage, ^C): the other workers stop too, before the claims are given up, so none of them
            # claims a key after that.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            renewing.cancel()
            # A stopped stage leaves no claim behind: its rerun, or another build, asks those keys at once.
            await loop.run_in_executor(self.db, self.cache.release_all, self.owner)
            bar.close()
            curated.close()
            curation.shutdown(wait=True)
            self.db.shutdown(wait=True)
            for t in teachers:
                if t is not None:
                    await t.close()
        return held

    def _over_limit(self) -> list[str]:
        """The teachers whose quarantines exceed ``max_quarantined``, each with its counts by reason."""
        lines = []
        for spec in self.specs:
            failed, asked = sum(self.failures[spec.name].values()), self.asked[spec.name]
            if asked and failed > spec.max_quarantined * asked:
                reasons = "; ".join(f"{n:,} x {why}" for why, n in self.failures[spec.name].most_common(5))
                lines.append(
                    f"teacher {spec.name!r}: {failed:,} of {asked:,} requests quarantined "
                    f"({failed / asked:.1%} > max_quarantined {spec.max_quarantined:.1%}): {reasons}"
                )
        return lines

    def _teacher(self, spec: TeacherSettings, offline: bool) -> Teacher | None:
        """What answers this teacher's jobs: None where the cache alone does (offline, or batch mode)."""
        return spec.make(self.usage[spec.name], offline)

    def _batches(self, todo: list[int]) -> None:
        """Batch teachers first: their replies go into the cache, and the stage below reads them there."""
        from builders.teachers.batch import BatchRunner, run_batches

        self.runners = [
            BatchRunner(s, self.work, self.cache, self.progress, self.log)
            for s in self.specs
            if getattr(s, "mode", "online") == "batch"
        ]
        if self.runners:
            self.quarantined = run_batches(self.runners, todo, self.progress, self.log)

    def run(self, n_units: int) -> None:
        (self.work / "curated").remove_temporaries()  # units a killed build was writing; they are redone below
        todo = [i for i in range(n_units) if not curated_path(self.work, i).exists()]
        if not todo:
            return
        n_jobs = len(self.specs) * sum(
            read_unit(unit_path(self.work, i), ["status"]).column("status").to_pylist().count("ok") for i in todo
        )
        c = self.recipe.curation
        if not self.progress and (c.agreement.enabled or c.grounding.enabled):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # loading the curation models shows bars of its own
        import_http_stacks()  # before the curation, cache and request threads start
        self.cache = open_cache(self.recipe)
        self.inflight: dict[str, asyncio.Future] = {}
        self.quarantined: dict[str, TeacherFailure] = {}  # batch requests given up on, with their reasons
        self.runners: list = []
        try:
            if not self.recipe.distill.offline:
                self._batches(todo)
            held = asyncio.run(self._run(todo, n_jobs))
            if over := self._over_limit():
                for runner in self.runners:  # the rerun asks the given-up batch requests again
                    runner.forgive()
                raise QuarantineExceeded(
                    "the teacher stage stopped instead of sealing a build with this many quarantined requests:\n  "
                    + "\n  ".join(over)
                    + f"\n{len(held):,} unit(s) are left open: fix the cause and run the same command again to ask "
                    "exactly the requests not yet answered (or raise the teacher's max_quarantined to keep them "
                    "as rejections)"
                )
            for unit in held:  # under every teacher's limit: the quarantines become rejections
                self._finish(unit)
        finally:
            self.cache.close()
        per = ", ".join(
            f"{name} {u.requests:,} sent ({u.retries:,} retries, {u.failed:,} failed"
            + (f", paused {u.paused:,} time(s) while most requests failed" if u.paused else "")
            + f") + {self.hits[name]:,} cached"
            + (f" ({self.waited[name]:,} waited for another build's request)" if self.waited[name] else "")
            for name, u in self.usage.items()
        )
        self.log(f"teacher replies: {per}")


def teacher_totals(work_dir: Path, n_units: int, specs: list[TeacherSettings]) -> dict[str, TeacherTotals]:
    """Answers, parsed and authored answers, and tokens per teacher, over every curated record of the build."""
    totals = {s.name: TeacherTotals() for s in specs}
    for i in range(n_units):
        t = read_unit(curated_path(work_dir, i), ["json", "config"])
        for js, config in zip(t.column("json").to_pylist(), t.column("config").to_pylist()):
            if js is None or config != DEFAULT_CONFIG:
                continue
            for a in from_json_bytes(js).teachers:
                tt = totals.setdefault(a.teacher, TeacherTotals())
                tt.answers += 1
                tt.parsed += a.parsed
                tt.authored += a.origin == "authored"
                tt.input_tokens += a.input_tokens
                tt.output_tokens += a.output_tokens
    return totals


@dataclass
class Estimate:
    teacher: str
    images: int
    cached: int
    input_tokens: int
    output_tokens: int
    cost: float | None
    batch: bool = False

    @property
    def requests(self) -> int:
        return self.images - self.cached


def estimate(recipe: Recipe, work_dir: Path, n_units: int) -> list[Estimate]:
    """What the teacher stage would send: requests, tokens (image tokens at each teacher's budget, the
    prompt, and ``expected_output_tokens``) and cost, with replies already in the cache left out."""
    sizes: dict[str, tuple[int, int]] = {}  # by image hash: a duplicate image is asked about once
    for i in range(n_units):
        if curated_path(work_dir, i).exists():
            continue  # already curated: nothing more to send
        t = read_unit(unit_path(work_dir, i), ["status", "json"])
        for status, js in zip(t.column("status").to_pylist(), t.column("json").to_pylist()):
            if status == "ok":
                img = from_json_bytes(js).image
                sizes[img.sha256] = (img.width, img.height)
    cache = open_cache(recipe)
    try:
        out = []
        for spec in recipe.teachers:
            if spec.request_tokens(1, 1) is None:  # runs in the build's process: nothing to send, nothing to pay
                continue
            todo = [wh for sha, wh in sizes.items() if cache.get(spec.key(sha)) is None]
            tokens = [spec.request_tokens(w, h) for w, h in todo]
            tokens_in, tokens_out = sum(t[0] for t in tokens), sum(t[1] for t in tokens)
            cost = spec.cost(tokens_in, tokens_out)
            batch = spec.billing() == "batch"
            out.append(Estimate(spec.name, len(sizes), len(sizes) - len(todo), tokens_in, tokens_out, cost, batch))
        return out
    finally:
        cache.close()
