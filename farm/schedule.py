"""Dispatch batches to workers, retry what fails, record results, show progress.

The driver (the `farm render` process) is the single writer of the manifest: it claims a
batch's jobs (fixing their file paths), hands the batch to a worker, and records the small
results the worker sends back once its files are in place. Images never pass through here.

Two backends run the same Dispatcher: `inline` (a Worker in this process) and `ray` (one
actor per GPU, or CPU actors, on a local or remote Ray cluster). This is the only module that
knows Ray.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Protocol

from farm.jobs import Batch, Job, Result
from farm.manifest import Manifest
from farm.outputs import RunFolder

Key = tuple[str, Optional[str]]  # (checkpoint identity, VAE identity): what a worker loads


@dataclass
class Runtime:
    """How to render (the `runtime` config group); never part of a job's identity."""

    kind: str = "ray"  # ray: Ray workers (local cluster or runtime.address); inline: this process
    workers: Optional[int] = None  # default: one per GPU of the cluster, else one CPU worker
    threads: Optional[int] = None  # torch threads per CPU worker; default: the CPUs it gets
    max_pipelines: int = 2  # checkpoints (and VAEs) a worker keeps loaded, least recent out
    device: Optional[str] = None  # "cpu" or "cuda"; default: GPUs when the cluster has them
    address: Optional[str] = None  # a cluster to join ("auto", "host:6379"); or $RAY_ADDRESS
    max_attempts: int = 3  # tries per job before it is recorded as failed
    queue_depth: int = 2  # batches in flight per worker: one rendering, one being written
    start_timeout: float = 300.0  # seconds to wait for workers to start before giving up


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot run as asked (too few GPUs, no cluster); nothing was written."""


class WorkerLost(Exception):
    """A worker died with batches in flight (killed, out of memory, node lost)."""


@dataclass
class Summary:
    planned: int
    skipped: int  # already done before this run
    rendered: int = 0
    failed: int = 0
    unfinished: int = 0  # left pending because no worker was left to render them
    duplicates: int = 0  # jobs the plan reached twice; rendered once
    seconds: float = 0.0
    first_image_seconds: float | None = None  # start-up overhead: run start to first image
    failures: list[Result] = field(default_factory=list)
    per_worker: Counter[str] = field(default_factory=Counter)

    @property
    def images_per_second(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """A progress bar (done/total, images/s, ETA, per-worker counts); TQDM_DISABLE=1 hides it."""

    def __init__(self, total: int, label: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=label, unit="img", dynamic_ncols=True, smoothing=0.1)

    def update(self, summary: Summary, count: int) -> None:
        self.bar.update(count)
        postfix: dict[str, Any] = dict(sorted(summary.per_worker.items()))
        if summary.failed:
            postfix["failed"] = summary.failed
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()


@dataclass
class Work:
    """The pending batches of one model group, streamed, and how many jobs are still to hand out."""

    key: Key
    batches: Iterator[tuple[Job, ...]]
    left: int
    workers: int = 0  # workers currently assigned to it


class Backend(Protocol):
    def ready(self) -> list[str]:
        """Names of the workers that can take batches now."""

    def starting(self) -> bool:
        """Whether workers are still starting (so more may become ready)."""

    def submit(self, worker: str, batch: Batch) -> Any:
        """Start rendering a batch on a worker; return a handle."""

    def wait(self, handles: list[Any]) -> list[tuple[Any, list[Result] | Exception]]:
        """Block until at least one handle (or a starting worker) is done; return the done ones."""

    def replace(self, worker: str) -> None:
        """A worker is lost: start another in its place, if it can be placed."""

    def close(self) -> None: ...


class Dispatcher:
    """Hands batches to workers with model affinity, retries, records, counts."""

    def __init__(self, backend: Backend, work: list[Work], batch_size: int, folder: RunFolder,
                 manifest: Manifest, run_id: int, runtime: Runtime, summary: Summary,
                 progress: Progress):
        self.backend, self.work, self.batch_size = backend, work, batch_size
        self.folder, self.manifest, self.run_id = folder, manifest, run_id
        self.runtime, self.summary, self.progress = runtime, summary, progress
        self.in_flight: dict[Any, tuple[str, Batch]] = {}
        self.busy: Counter[str] = Counter()
        self.assigned: dict[str, Work] = {}
        self.retry: deque[Batch] = deque()  # failed jobs, with their paths, to try again
        self.attempts: Counter[str] = Counter()
        self.started = time.perf_counter()

    def run(self) -> None:
        while True:
            self._fill()
            if not self.in_flight and not (self._has_work() and self.backend.starting()):
                break
            for handle, outcome in self.backend.wait(list(self.in_flight)):
                worker, batch = self.in_flight.pop(handle)
                self.busy[worker] -= 1
                if isinstance(outcome, WorkerLost):
                    self._lost(worker, batch, outcome)
                elif isinstance(outcome, Exception):
                    error = f"{type(outcome).__name__}: {outcome}"
                    self._finish(worker, batch, self._failures(batch, worker, error))
                else:
                    self._finish(worker, batch, outcome)
        self.summary.unfinished = sum(w.left for w in self.work) + \
            sum(len(b.jobs) for b in self.retry)

    # 1. choosing work ---------------------------------------------------------------------------

    def _has_work(self) -> bool:
        return bool(self.retry) or any(w.left for w in self.work)

    def _fill(self) -> None:
        for worker in self.backend.ready():
            while self.busy[worker] < self.runtime.queue_depth:
                batch = self._next(worker)
                if batch is None:
                    break
                if not batch.paths:  # fresh jobs: fix their paths; drop what this run has
                    paths = self.manifest.claim(batch.jobs, self.folder.image_path, self.run_id)
                    kept = [(job, path) for job, path in zip(batch.jobs, paths) if path]
                    self._skip_duplicates(len(batch.jobs) - len(kept))
                    if not kept:
                        continue
                    batch = Batch(*map(tuple, zip(*kept)), pad_to=self.batch_size,
                                  image=self.folder.image)
                self.in_flight[self.backend.submit(worker, batch)] = (worker, batch)
                self.busy[worker] += 1

    def _skip_duplicates(self, count: int) -> None:
        if count:
            self.summary.duplicates += count
            self.progress.bar.total -= count

    def _next(self, worker: str) -> Batch | None:
        """A retry of the worker's own model first, then its group, then the neediest group.
        Fresh jobs come as a Batch without paths; retries keep theirs."""
        current = self.assigned.get(worker)
        for i, batch in enumerate(self.retry):
            if current is None or batch.first.batch_key[:2] == current.key:
                del self.retry[i]
                return batch
        if current is not None:
            jobs = next(current.batches, None)
            if jobs is not None:
                current.left -= len(jobs)
                return Batch(jobs)
            current.left, current.workers = 0, current.workers - 1
            del self.assigned[worker]
        open_work = [w for w in self.work if w.left > 0]
        if not open_work:
            return self.retry.popleft() if self.retry else None
        # the group with the most jobs per worker, so that each model is loaded as few times as
        # possible while no worker waits
        chosen = max(open_work, key=lambda w: w.left / (w.workers + 1))
        chosen.workers += 1
        self.assigned[worker] = chosen
        return self._next(worker)

    # 2. taking results --------------------------------------------------------------------------

    def _finish(self, worker: str, batch: Batch, results: list[Result]) -> None:
        final, again = [], []
        for job, path, result in zip(batch.jobs, batch.paths, results):
            self.attempts[job.id] += 1
            if result.ok or self.attempts[job.id] >= self.runtime.max_attempts:
                final.append(result)
            else:
                again.append((job, path))
        if again:
            self.retry.append(Batch(*map(tuple, zip(*again)), pad_to=self.batch_size,
                                    image=self.folder.image))
        self._record(worker, final)

    def _lost(self, worker: str, batch: Batch, error: WorkerLost) -> None:
        logging.getLogger(__name__).warning("worker %s lost: %s", worker, error)
        if worker in self.assigned:
            self.assigned.pop(worker).workers -= 1
        if worker in self.backend.ready():  # the first of its lost batches replaces it
            self.backend.replace(worker)
        self._finish(worker, batch, self._failures(batch, worker, f"worker lost: {error}"))

    def _failures(self, batch: Batch, worker: str, error: str) -> list[Result]:
        return [Result(job_id=job.id, path=path, pixel_hash=None, seconds=0.0,
                       batch_size=len(batch.shape), position=i, worker=worker, error=error)
                for i, (job, path) in enumerate(zip(batch.jobs, batch.paths))]

    def _record(self, worker: str, results: list[Result]) -> None:
        if not results:
            return
        self.manifest.record(results, self.run_id,
                             {r.job_id: self.attempts.pop(r.job_id) for r in results})
        s = self.summary
        if s.first_image_seconds is None and any(r.ok for r in results):
            s.first_image_seconds = time.perf_counter() - self.started
        for r in results:
            if r.ok:
                s.rendered += 1
                s.per_worker[worker] += 1
            else:
                s.failed += 1
                s.failures.append(r)
        self.progress.update(s, len(results))


# 3. backends ----------------------------------------------------------------------------------

class InlineBackend:
    """One Worker in this process; two threads, so that one batch's PNGs are written while the
    next batch renders (the worker's lock keeps one pipeline call at a time)."""

    def __init__(self, runtime: Runtime, root: os.PathLike):
        from concurrent.futures import ThreadPoolExecutor

        from farm.worker import Device, Worker

        device = Device.named(runtime.device) if runtime.device else None
        self.worker = Worker(root, name="inline", device=device,
                             max_pipelines=runtime.max_pipelines, threads=runtime.threads)
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="farm-inline")

    def ready(self) -> list[str]:
        return ["inline"]

    def starting(self) -> bool:
        return False

    def submit(self, worker: str, batch: Batch):
        return self.pool.submit(self.worker.render, batch)

    def wait(self, handles):
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return [(f, f.exception() or f.result()) for f in done]

    def replace(self, worker: str) -> None:
        raise RuntimeError("the inline worker cannot be replaced")

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class RayWorker:
    """The Ray actor: a thin shell around the plain Worker, which it builds on first use."""

    def __init__(self, root: str, name: str, device: str | None, max_pipelines: int,
                 threads: int | None):
        self.args = (root, name, device, max_pipelines, threads)
        self.worker = None

    def ready(self) -> dict:
        """Import torch and diffusers and build the Worker; say where this actor runs."""
        import ray
        from farm.worker import Device, Worker

        root, name, device, max_pipelines, threads = self.args
        self.worker = Worker(root, name=name, device=Device.named(device) if device else None,
                             max_pipelines=max_pipelines, threads=threads)
        return {"name": name, "node": ray.get_runtime_context().get_node_id(),
                "device": self.worker.device.name}

    def render(self, batch: Batch) -> list[Result]:
        return self.worker.render(batch)

    def loads(self) -> dict[str, int]:
        return dict(self.worker.loads)


class RayBackend:
    """One RayWorker actor per GPU (or CPU workers), on an embedded or a joined Ray cluster."""

    def __init__(self, runtime: Runtime, root: os.PathLike, label: str):
        self.runtime, self.root, self.label = runtime, str(root), label
        self.owns_cluster = _connect(runtime.address)  # before anything imports ray
        import ray

        try:
            self.count, self.device, self.options, self.threads = _placement(runtime)
            self.actors: dict[str, Any] = {}
            self.starting_refs: dict[Any, str] = {}
            self.live: list[str] = []
            self.placed: dict[str, dict] = {}  # name -> {node, device} of each started worker
            self.generation = Counter()
            for i in range(self.count):
                self._start(f"{'gpu' if self.device == 'cuda' else 'cpu'}-{i}")
            deadline = time.monotonic() + runtime.start_timeout
            while self.starting_refs and not self.live:
                self._poll_starting(timeout=max(0.0, deadline - time.monotonic()))
                if time.monotonic() >= deadline and not self.live:
                    raise RuntimeUnavailable(
                        f"runtime: no Ray worker started within {runtime.start_timeout:.0f} s "
                        f"({self.count} asked for, each with {self.options}); the cluster has "
                        f"{_describe(ray.cluster_resources())} in all, "
                        f"{_describe(ray.available_resources())} free")
        except BaseException:
            self.close()
            raise

    def _start(self, slot: str) -> None:
        self.generation[slot] += 1
        name = slot if self.generation[slot] == 1 else f"{slot}.{self.generation[slot] - 1}"
        actor_class = _remote_worker().options(
            name=f"farm-{self.label}-{name}-{os.getpid()}", max_restarts=0, max_concurrency=2,
            **self.options)
        actor = actor_class.remote(self.root, name, self.runtime.device,
                                   self.runtime.max_pipelines, self.threads)
        self.actors[name] = actor
        self.starting_refs[actor.ready.remote()] = name

    def _poll_starting(self, timeout: float) -> None:
        import ray

        done, _ = ray.wait(list(self.starting_refs), num_returns=1, timeout=timeout)
        for ref in done:
            name = self.starting_refs.pop(ref)
            try:
                self.placed[name] = ray.get(ref)
                self.live.append(name)
            except ray.exceptions.RayError as e:
                logging.getLogger(__name__).warning("worker %s failed to start: %s", name, e)
                self.actors.pop(name, None)

    def ready(self) -> list[str]:
        return list(self.live)

    def settle(self, timeout: float) -> None:
        """Wait until every starting worker has started or failed (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while self.starting_refs and time.monotonic() < deadline:
            self._poll_starting(timeout=max(0.0, deadline - time.monotonic()))

    def starting(self) -> bool:
        return bool(self.starting_refs)

    def submit(self, worker: str, batch: Batch):
        return self.actors[worker].render.remote(batch)

    def wait(self, handles):
        import ray

        waiting = list(handles) + list(self.starting_refs)
        done, _ = ray.wait(waiting, num_returns=1)
        outcomes = []
        for ref in done:
            if ref in self.starting_refs:
                self._poll_starting(timeout=0)
                continue
            try:
                outcomes.append((ref, ray.get(ref)))
            except ray.exceptions.RayActorError as e:
                outcomes.append((ref, WorkerLost(str(e).splitlines()[0])))
            except ray.exceptions.RayTaskError as e:
                outcomes.append((ref, RuntimeError(str(e).splitlines()[-1])))
        return outcomes

    def replace(self, worker: str) -> None:
        if worker in self.live:
            self.live.remove(worker)
        self.actors.pop(worker, None)
        self._start(worker.split(".")[0])

    def loads(self) -> dict[str, dict[str, int]]:
        """Model loads per live worker (for tests and logs)."""
        import ray

        return {name: ray.get(self.actors[name].loads.remote()) for name in self.live}

    def close(self) -> None:
        import ray

        for actor in getattr(self, "actors", {}).values():
            ray.kill(actor)
        if self.owns_cluster:
            ray.shutdown()


def _remote_worker():
    """RayWorker as a Ray actor class (made once per process)."""
    import ray

    global _REMOTE_WORKER
    if _REMOTE_WORKER is None:
        _REMOTE_WORKER = ray.remote(RayWorker)
    return _REMOTE_WORKER


_REMOTE_WORKER = None


def _connect(address: str | None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local one. True if we must
    shut it down again (a cluster this process already joined is left alone)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address and "ray" not in sys.modules:
        # An embedded cluster serves this process only, and Ray has no authentication: keep it
        # on the loopback interface (Ray's single-machine mode, as on macOS and Windows).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise RuntimeUnavailable(f"runtime.address: could not join the Ray cluster at "
                                 f"{address!r}: {e}") from None
    return True


def _placement(runtime: Runtime) -> tuple[int, str, dict, int | None]:
    """How many workers, on which device, with which Ray resources; fail fast if impossible."""
    import ray

    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 0))
    device = runtime.device or ("cuda" if gpus else "cpu")
    if device not in ("cpu", "cuda"):
        raise RuntimeUnavailable(f"runtime.device: got {device!r}; allowed: cpu, cuda")
    if runtime.workers is not None and runtime.workers < 1:
        raise RuntimeUnavailable(f"runtime.workers: got {runtime.workers}; expected at least 1")
    if device == "cuda":
        count = runtime.workers or gpus
        if count > gpus:
            raise RuntimeUnavailable(
                f"runtime.workers: got {count}, but each GPU worker needs a GPU and the Ray "
                f"cluster has {gpus} ({_describe(total)}); ask for at most {gpus}"
                + ("" if gpus else ", or use runtime.device=cpu"))
        return count, device, {"num_gpus": 1, "num_cpus": 1}, runtime.threads
    count = runtime.workers or 1
    threads = runtime.threads or max(1, cpus // count)
    if count * threads > cpus:
        raise RuntimeUnavailable(
            f"runtime.workers: {count} CPU workers x {threads} threads need {count * threads} "
            f"CPUs, but the Ray cluster has {cpus}; lower runtime.workers or runtime.threads")
    return count, device, {"num_cpus": threads, "num_gpus": 0}, threads


def _describe(resources: dict) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


def start(runtime: Runtime, folder: RunFolder, label: str) -> Backend:
    """Start the workers of a runtime, or fail fast with RuntimeUnavailable."""
    root = folder.root.resolve()  # workers run elsewhere (another cwd, another node)
    if runtime.kind == "inline":
        return InlineBackend(runtime, root)
    if runtime.kind == "ray":
        return RayBackend(runtime, root, label)
    raise RuntimeUnavailable(f"runtime: got {runtime.kind!r}; allowed: ray, inline")


def run(backend: Backend, work: list[Work], batch_size: int, folder: RunFolder,
        manifest: Manifest, run_id: int, runtime: Runtime, summary: Summary,
        label: str) -> Summary:
    """Render all pending work; fill in and return the summary."""
    started = time.perf_counter()
    progress = Progress(sum(w.left for w in work), label)
    try:
        Dispatcher(backend, work, batch_size, folder, manifest, run_id, runtime, summary,
                   progress).run()
    finally:
        progress.close()
        summary.seconds = time.perf_counter() - started
    return summary

