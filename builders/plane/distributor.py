"""Running units of work: a local process pool (default) or Ray tasks, with one interface.

``run(fn, tasks)`` yields each task's result as it finishes; a unit that raises is retried once and then
re-raised, so a crash never passes silently.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import multiprocessing.connection
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

PRELOAD = ["builders.plane.preload"]  # the unit code and the gazetteer, loaded once for all workers


def process_context() -> mp.context.BaseContext:
    """Workers start from a clean process, never a fork of the caller (its threads: progress bars, HTTP pools).

    forkserver, where the platform has it: the server loads the unit code and the gazetteer once and each
    worker is a fork of it, ready in milliseconds, where spawn would re-import pandas and pyarrow and reload the
    gazetteer in every worker.
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


def warm_up() -> None:
    """Start the fork server now, so that its imports overlap with the caller's own start-up."""
    ctx = process_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def take_environment(env: dict[str, str]) -> None:
    """Make this process's environment the caller's. A fork server's children inherit the server's, which
    is the caller's as it was when the server started: a storage credential set since (``AWS_*``) would be
    missing. Passed over the local pipe to our own processes only; never written anywhere."""
    if os.environ != env:
        os.environ.clear()
        os.environ.update(env)


def exit_with_parent(env: dict[str, str] | None = None) -> None:
    """Pool initializer: take the caller's environment, and end this worker as soon as the process that
    started it is gone.

    A pool's workers otherwise outlive a killed build, idle but holding their memory, waiting on a queue
    that nobody will write to again. The rerun redoes the unit such a worker was in the middle of.
    """
    if env is not None:
        take_environment(env)
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        mp.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_local(fn: Callable[[Any], Any], tasks: Iterable[Any], workers: int) -> Iterator[Any]:
    tasks = list(tasks)
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield fn(task)
        return
    ctx = process_context()
    with cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=exit_with_parent, initargs=(dict(os.environ),)
    ) as pool:
        futures = {pool.submit(fn, t): t for t in tasks}
        for fut in cf.as_completed(futures):
            try:
                yield fut.result()
            except cf.process.BrokenProcessPool:
                raise
            except Exception:
                yield fn(futures[fut])  # one retry in the parent; a second failure propagates


def run_ray(
    fn: Callable[[Any], Any], tasks: Iterable[Any], workers: int, options: dict[str, Any] | None = None
) -> Iterator[Any]:
    """Each task a Ray task, on any node of the cluster. Tasks read and write only the build's storage (an
    object store on a cluster), so any node can run any unit, and a unit whose node dies is rerun elsewhere
    (``max_retries``): its output appears only when committed, so a rerun never meets half of it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--distributor ray needs Ray: pip install 'mp16-reason[ray]'") from None
    if not ray.is_initialized():
        # RAY_ADDRESS joins a running cluster. Without it the build starts a Ray instance of its own of `workers`
        # CPUs ("local"): left to itself, ray.init() would join whatever cluster `ray start` last recorded on
        # this machine, even a dead one, and refuse our num_cpus.
        ray.init(
            address=None if _has_address() else "local",
            num_cpus=None if _has_address() else workers,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
        )
    remote = ray.remote(retry_exceptions=True, **(options or {}))(fn)  # Ray's own default: 3 retries
    pending = [remote.remote(t) for t in tasks]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


def _has_address() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


DISTRIBUTORS = ("local", "ray")


def run(
    fn: Callable[[Any], Any],
    tasks: Iterable[Any],
    workers: int,
    distributor: str = "local",
    ray_options: dict[str, Any] | None = None,
) -> Iterator[Any]:
    """``ray_options`` (``num_cpus``, ``resources``, ``max_retries``) place Ray tasks; the local pool ignores them."""
    if distributor == "ray":
        return run_ray(fn, tasks, workers, ray_options)
    if distributor != "local":
        raise ValueError(f"unknown distributor {distributor!r}; use one of {', '.join(DISTRIBUTORS)}")
    return run_local(fn, tasks, workers)
