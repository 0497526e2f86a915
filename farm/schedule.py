"""Dispatch batches to workers, retry what fails, record results, show progress.

The driver (the `farm render` process) is the single writer of the manifest: it claims a
batch's jobs (fixing their file paths), hands the batch to a worker, and records the small
results the worker sends back once its files are in place. Images never pass through here.

Two backends run the same Dispatcher: `inline` (a Worker in this process) and `ray` (one
actor per GPU, or CPU actors, on a local or remote Ray cluster; cluster.py, the only module
that knows Ray).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional, Protocol

from farm.jobs import Batch, Loadout, Result, WorkerSettings
from farm.manifest import Manifest, ManifestUnwritable
from farm.outputs import RunFolder
from farm.scorers import Scorer
from farm.scorers import Work as ScoreWork


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
    grace: float = 20.0  # on Ctrl-C or SIGTERM: seconds the batches in flight may finish in
    # who writes the images: auto (each worker that sees the run folder, else the driver from
    # the bytes the worker sends back), driver, or shared (every worker writes)
    outputs: str = "auto"
    # a batch that takes more than this many times its group's usual time (and at least
    # MIN_HANG_SECONDS) has hung: its worker is replaced and the batch retried; 0: never
    hang_after: float = 10.0
    # threads that encode and write a batch's images at once; default: 1 on the CPU (its cores
    # render), the host's cores less one on a GPU
    encode_threads: Optional[int] = None
    # opt-in speed-ups that change the last bits of an image (recorded in its provenance, and
    # `farm verify` renders with the same): torch.compile of the UNet (a warm-up per loadout
    # and shape, then faster steps), fused QKV projections in its attention layers
    compile: bool = False
    fuse_qkv: bool = False
    # Ray CPUs each CPU worker takes; default: its threads. A fraction lets many workers share
    # the cores: a simulated cluster (checkpoint instant, bench/driver.py) on one machine
    cpus_per_worker: Optional[float] = None

    def worker(self, root: str | None, name: str, threads: int | None) -> WorkerSettings:
        """What one worker of this runtime is built with."""
        return WorkerSettings(root, name, self.device, self.max_pipelines, threads,
                              self.encode_threads, self.compile, self.fuse_qkv)


OUTPUTS = ("auto", "driver", "shared")


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot run as asked (too few GPUs, no cluster); nothing was written."""


def check_runtime(runtime: Runtime) -> None:
    """Runtime settings that can never work are refused before anything starts."""
    whole = {"workers": (runtime.workers, 1), "threads": (runtime.threads, 1),
             "max_pipelines": (runtime.max_pipelines, 1), "max_attempts": (runtime.max_attempts, 1),
             "queue_depth": (runtime.queue_depth, 1), "encode_threads": (runtime.encode_threads, 1)}
    for name, (value, low) in whole.items():
        if value is not None and (isinstance(value, bool) or value < low):
            raise RuntimeUnavailable(f"runtime.{name}: got {value!r}; expected a whole number "
                                     f"from {low}")
    if runtime.cpus_per_worker is not None and not runtime.cpus_per_worker > 0:
        raise RuntimeUnavailable(f"runtime.cpus_per_worker: got {runtime.cpus_per_worker}; "
                                 "expected CPUs above 0 (a fraction shares a core)")
    if runtime.hang_after < 0:
        raise RuntimeUnavailable(f"runtime.hang_after: got {runtime.hang_after}; expected a "
                                 "multiple of a batch's usual time, or 0 (never)")
    if runtime.grace < 0:
        raise RuntimeUnavailable(f"runtime.grace: got {runtime.grace}; expected seconds, 0 or "
                                 "more")
    if runtime.start_timeout <= 0:
        raise RuntimeUnavailable(f"runtime.start_timeout: got {runtime.start_timeout}; expected "
                                 "seconds, more than 0")
    if runtime.outputs not in OUTPUTS:
        raise RuntimeUnavailable(f"runtime.outputs: got {runtime.outputs!r}; allowed: "
                                 f"{', '.join(OUTPUTS)}")
    if runtime.kind not in ("ray", "inline"):
        raise RuntimeUnavailable(f"runtime: got {runtime.kind!r}; allowed: ray, inline")
    device = runtime.device
    if device is not None and not (device == "cpu" or device == "cuda"
                                   or (device.startswith("cuda:") and device[5:].isdigit())):
        raise RuntimeUnavailable(f"runtime.device: got {device!r}; allowed: cpu, cuda")


MIN_HANG_SECONDS = 60.0  # no batch is called hung sooner (a slow write, a busy machine)


class WorkerLost(Exception):
    """A worker died with batches in flight (killed, out of memory, node lost)."""


@dataclass
class Summary:
    planned: int
    skipped: int  # already done before this run
    rendered: int = 0
    failed: int = 0
    unfinished: int = 0  # left pending because no worker was left to render them
    problem: str = ""  # why no worker was left, when the backend knows
    stopped: str = ""  # why the run stopped early (a full or read-only disk)
    hung: list[str] = field(default_factory=list)  # workers replaced because a batch hung
    duplicates: int = 0  # jobs the plan reached twice; rendered once
    seconds: float = 0.0
    first_image_seconds: float | None = None  # start-up overhead: run start to first image
    failures: list[Result] = field(default_factory=list)
    per_worker: Counter[str] = field(default_factory=Counter)
    loads: dict[str, list[float]] = field(default_factory=dict)  # model -> seconds of each load

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
    """The pending batches of one loadout, streamed, and how many jobs are still to hand out."""

    loadout: Loadout
    batches: Iterator[Batch]
    left: int
    workers: int = 0  # workers currently assigned to it


class Backend(Protocol):
    """Where batches render: a set of named workers the Dispatcher hands batches to and waits
    on. `inline` (one Worker in this process) and `ray` (cluster.py) implement it; every method
    the Dispatcher calls is declared here."""

    # whether a worker can be killed and replaced (an inline worker is this process)
    replaceable: bool

    def ready(self) -> list[str]:
        """Names of the workers that can take batches now."""

    def starting(self) -> bool:
        """Whether workers are still starting (so more may become ready)."""

    def submit(self, worker: str, batch: Batch) -> Any:
        """Start rendering a batch on a worker; return a handle."""

    def submit_scores(self, worker: str, work: ScoreWork) -> Any:
        """Start scoring images on a worker (farm score); `wait` returns its list of Scores
        per image."""

    def wait(self, handles: list[Any], timeout: float | None = None
             ) -> list[tuple[Any, list[Result] | Exception]]:
        """Block until at least one handle (or a starting worker) is done, or `timeout` seconds;
        return the done ones."""

    def replace(self, worker: str) -> None:
        """A worker is lost: start another in its place, if it can be placed."""

    def kill(self, worker: str) -> None:
        """End a hung worker (alive, but its batch takes far too long); its batches in flight
        come back from `wait` as WorkerLost. Only called where `replaceable`."""

    def close(self) -> None:
        """Stop every worker and release what the backend holds."""


class Dispatcher:
    """The driver's loop: hands batches to workers, records what comes back, retries.

    Each worker takes batches of one loadout for as long as it has work (model affinity: a
    worker switches only when its group runs out, or when joining a bigger group pays for the
    load); every batch's jobs are claimed in the manifest (their paths fixed) before it is
    submitted, and recorded when its results arrive, the files already in place. A failed job
    is tried again up to runtime.max_attempts; a lost worker's batches go back to the queue; a
    batch that runs out of memory is split; a hung worker is replaced where the backend can.
    """

    def __init__(self, backend: Backend, work: list[Work], folder: RunFolder,
                 manifest: Manifest, run_id: int, runtime: Runtime, summary: Summary,
                 progress: Progress, scorers: tuple[Scorer, ...] = ()):
        self.backend, self.work = backend, work
        self.scorers = scorers  # what scores each new image on its worker (a recipe's score:)
        self.folder, self.manifest, self.run_id = folder, manifest, run_id
        self.runtime, self.summary, self.progress = runtime, summary, progress
        self.in_flight: dict[Any, tuple[str, Batch]] = {}
        self.busy: Counter[str] = Counter()
        self.assigned: dict[str, Work] = {}
        self.retry: deque[Batch] = deque()  # failed jobs, with their paths, to try again
        self.attempts: Counter[str] = Counter()
        self.loaded: dict[str, list[tuple]] = {}  # worker -> loadout keys, most recent last
        self.order: dict[Any, int] = {}  # handle -> when it was submitted
        self.rendering: dict[str, Any] = {}  # lost worker -> the handle it was rendering
        self.image_seconds: dict[tuple, float] = {}  # loadout -> seconds per image, measured
        self.load_seconds: list[float] = []  # each model load's seconds, measured
        self.left_out = 0  # jobs whose files could not be written when the disk stopped the run
        self.started = time.perf_counter()
        self.since: dict[str, float] = {}  # worker -> when its oldest batch in flight started
        self.loads_model: dict[Any, bool] = {}  # handle -> whether its worker loads a model
        self.hung: set[str] = set()  # workers killed as hung, until their loss comes back
        self.recording = True  # False once the manifest refused a write
        self.call_limit: dict[tuple, int] = {}  # (loadout, width, height) -> images that fit

    def run(self) -> None:
        try:
            while True:
                self._fill()
                if not self.in_flight and not (self._has_work() and self.backend.starting()):
                    break
                self._take(self.backend.wait(list(self.in_flight), timeout=self._hang_wait()))
                self._kill_hung()
                if self.summary.stopped:  # the disk: no retries, record what is finishing
                    self._drain(self.runtime.grace)
                    break
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: hand out nothing more, record what ends
            self._drain(self.runtime.grace)
            raise
        except ManifestUnwritable as e:  # nothing more can be recorded: stop, keep what is
            self.summary.stopped, self.recording = str(e), False
            self._drain(self.runtime.grace)  # their files land; the next run records them anew
        finally:
            self._count_unfinished()

    def _take(self, outcomes: list) -> None:
        for handle, outcome in outcomes:
            worker, batch = self.in_flight.pop(handle)
            self.busy[worker] -= 1
            self.loads_model.pop(handle, None)
            self.since[worker] = time.monotonic()  # its next batch, if any, starts now
            if isinstance(outcome, WorkerLost):
                self._lost(worker, handle, batch, outcome)
            elif isinstance(outcome, Exception):
                error = f"{type(outcome).__name__}: {outcome}"
                self._finish(worker, batch, self._failures(batch, worker, error))
            else:
                self._finish(worker, batch, outcome)

    def _drain(self, grace: float) -> None:
        """Let the batches in flight finish for `grace` seconds and record them; what is still
        out then is left (its files, if any, are not recorded: the next run renders it again to
        the same path). A second interrupt stops the wait."""
        deadline = time.monotonic() + grace
        while self.in_flight and time.monotonic() < deadline:
            self._take(self.backend.wait(list(self.in_flight),
                                         timeout=max(0.0, deadline - time.monotonic())))

    def _count_unfinished(self) -> None:
        self.summary.unfinished = sum(w.left for w in self.work) + self.left_out + \
            sum(len(b.jobs) for b in self.retry) + \
            sum(len(b.jobs) for _, b in self.in_flight.values())
        if self.summary.unfinished:
            self.summary.problem = getattr(self.backend, "problem", "")

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
                    kept = [(job, path, slot) for job, path, slot
                            in zip(batch.jobs, paths, batch.slots) if path]
                    self._skip_duplicates(len(batch.jobs) - len(kept))
                    if not kept:
                        continue
                    jobs, paths, slots = map(tuple, zip(*kept))
                    batch = Batch(jobs, paths, pad_to=batch.pad_to, image=self.folder.image,
                                  positions=slots)
                if self.scorers:
                    batch = replace(batch, scorers=self.scorers)
                handle = self.backend.submit(worker, batch)
                self.in_flight[handle] = (worker, batch)
                self.order[handle] = len(self.order)
                self.loads_model[handle] = batch.first.loadout.key not in \
                    self.loaded.get(worker, ())
                self._loading(worker, batch.first.loadout.key)
                if not self.busy[worker]:
                    self.since[worker] = time.monotonic()
                self.busy[worker] += 1

    def _skip_duplicates(self, count: int) -> None:
        if count:
            self.summary.duplicates += count
            self.progress.bar.total -= count

    def _loading(self, worker: str, key: tuple) -> None:
        """What the worker has loaded, most recent last (as many as it keeps)."""
        recent = self.loaded.setdefault(worker, [])
        if key in recent:
            recent.remove(key)
        recent.append(key)
        del recent[:-self.runtime.max_pipelines]

    def _next(self, worker: str) -> Batch | None:
        """A retry of what the worker has loaded first, then its group, then a new group: one
        it has loaded, else one nobody serves, else the one with most jobs per worker. Fresh
        jobs come as a Batch without paths; retries keep theirs."""
        current = self.assigned.get(worker)
        mine = [current.loadout.key] if current else self.loaded.get(worker, [])
        for i, batch in enumerate(self.retry):
            if batch.first.loadout.key in mine:
                del self.retry[i]
                return batch
        if current is not None:
            batch = next(current.batches, None)
            if batch is not None:
                current.left -= len(batch.jobs)
                return self._fitted(batch)
            current.left, current.workers = 0, current.workers - 1
            del self.assigned[worker]
        if self.busy[worker]:
            return None  # choose its next group once what it has in flight is measured
        open_work = [w for w in self.work if w.left > 0]
        if not open_work:
            return self.retry.popleft() if self.retry else None
        # so that each model is loaded as few times as possible while no worker waits: what the
        # worker has loaded, else what nobody serves, else help where that saves more time than
        # the load costs (a resumed run's small leftover is not worth a second load)
        loaded = self.loaded.get(worker, [])
        worth = [w for w in open_work if w.loadout.key in loaded or w.workers == 0
                 or self._joining_pays(w)]
        if not worth:
            return None  # idle: the others finish sooner than this worker could load
        chosen = max(worth, key=lambda w: (w.loadout.key in loaded, w.workers == 0,
                                           w.left / (w.workers + 1)))
        chosen.workers += 1
        self.assigned[worker] = chosen
        return self._next(worker)

    def _joining_pays(self, work: Work) -> bool:
        """Whether one more worker on `work` saves more time than loading its model costs,
        from what this run has measured (joining, while nothing is measured yet)."""
        measured = list(self.image_seconds.values())
        image = self.image_seconds.get(work.loadout.key) or (
            sum(measured) / len(measured) if measured else None)  # another model's, meanwhile
        if image is None or not self.load_seconds:
            return True
        remaining = work.left * image
        saved = remaining / work.workers - remaining / (work.workers + 1)
        return saved > sum(self.load_seconds) / len(self.load_seconds)

    # 2. hung workers: alive, but their batch takes far longer than the group's usual time ------

    def _deadlines(self) -> dict[str, float]:
        """When each worker's oldest batch in flight counts as hung; a batch of a group not
        measured yet, or one that loads a model no load of which was measured, has none."""
        if not self.runtime.hang_after or not self.backend.replaceable:
            return {}  # (an inline worker is this process: nothing to replace it with)
        oldest: dict[str, Any] = {}
        for handle, (worker, _) in self.in_flight.items():
            if worker not in oldest or self.order[handle] < self.order[oldest[worker]]:
                oldest[worker] = handle
        found = {}
        for worker, handle in oldest.items():
            batch = self.in_flight[handle][1]
            image = self.image_seconds.get(batch.first.loadout.key)
            if image is None or worker in self.hung or (
                    self.loads_model.get(handle) and not self.load_seconds):
                continue
            usual = image * max(len(batch.jobs), batch.pad_to) + (
                max(self.load_seconds) if self.loads_model.get(handle) else 0.0)
            found[worker] = self.since[worker] + max(MIN_HANG_SECONDS,
                                                     self.runtime.hang_after * usual)
        return found

    def _hang_wait(self) -> float | None:
        deadlines = self._deadlines()
        return max(0.0, min(deadlines.values()) - time.monotonic()) if deadlines else None

    def _kill_hung(self) -> None:
        """Replace a worker whose batch is past its deadline: its batch comes back as lost
        (an attempt charged, as for a worker that died) and is rendered again."""
        now = time.monotonic()
        for worker, deadline in self._deadlines().items():
            if now >= deadline:
                logging.getLogger(__name__).warning(
                    "worker %s has hung: its batch has taken %.0f s, more than %g times its "
                    "group's usual time; replacing it", worker, now - self.since[worker],
                    self.runtime.hang_after)
                self.hung.add(worker)
                self.summary.hung.append(worker)
                self.backend.kill(worker)

    # 3. taking results --------------------------------------------------------------------------

    def _finish(self, worker: str, batch: Batch, results: list[Result]) -> None:
        results = [self._written(r) for r in results]
        stops = [r.stop for r in results if r.stop]
        if stops:  # what could not be written stays pending for the next run, uncharged
            self.summary.stopped = self.summary.stopped or stops[0]
            self.left_out += sum(not r.ok for r in results)
            for r in results:
                self.attempts[r.job_id] += r.ok
            self._record(worker, [r for r in results if r.ok])
            return
        if len(batch.shape) > 1 and any(r.oom for r in results):
            self._split(batch)  # not the jobs' fault: no attempt charged
            return
        loads = [seconds for r in results for _, seconds in r.loads]
        if results and all(r.ok for r in results):  # the batch's time less its model loads
            rendering = sum(r.seconds for r in results) - sum(loads)
            self.image_seconds[batch.first.loadout.key] = max(0.0, rendering) / len(results)
        self.load_seconds += loads
        final, again = [], []
        for job, path, slot, result in zip(batch.jobs, batch.paths, batch.slots, results):
            self.attempts[job.id] += 1
            if result.ok or self.attempts[job.id] >= self.runtime.max_attempts:
                final.append(result)
            else:
                again.append((job, path, slot))
        if again:  # at the same slots: a job that had pixels once gets the same ones
            jobs, paths, slots = map(tuple, zip(*again))
            self.retry.append(Batch(jobs, paths, pad_to=batch.pad_to, image=self.folder.image,
                                    positions=slots))
        self._record(worker, final)

    def _split(self, batch: Batch) -> None:
        """A call that ran out of memory: its jobs go again in calls half its size, and so do
        the group's later batches (each image records the call size it was rendered in)."""
        size = max(1, len(batch.shape) // 2)
        key = batch.first.loadout.key, batch.first.width, batch.first.height
        self.call_limit[key] = min(size, self.call_limit.get(key, size))
        logging.getLogger(__name__).warning(
            "a call of %d images ran out of memory; trying calls of %d", len(batch.shape), size)
        pieces = [Batch(batch.jobs[i:i + size], batch.paths[i:i + size], pad_to=size,
                        image=batch.image) for i in range(0, len(batch.jobs), size)]
        self.retry.extendleft(reversed(pieces))

    def _fitted(self, batch: Batch) -> Batch:
        """A fresh batch cut to the call size its group fits in (others go to the queue)."""
        limit = self.call_limit.get((batch.first.loadout.key, batch.first.width,
                                     batch.first.height))
        if limit is None or len(batch.shape) <= limit:
            return batch
        pieces = [Batch(batch.jobs[i:i + limit], pad_to=limit)
                  for i in range(0, len(batch.jobs), limit)]
        self.retry.extendleft(reversed(pieces[1:]))
        return pieces[0]

    def _written(self, result: Result) -> Result:
        """A result whose files came back from a worker that cannot see the run folder, its
        files written here, exactly as the worker would have written them."""
        if not result.files:
            return result
        error, stop = self.folder.write(result.path, result.files)
        return replace(result, files=(), error=error, stop=stop,
                       pixel_hash=None if error else result.pixel_hash)

    def _lost(self, worker: str, handle: Any, batch: Batch, error: WorkerLost) -> None:
        """A worker died: the batch it was rendering (its oldest in flight) counts an attempt;
        the batches queued behind it go back to the queue as they were."""
        logging.getLogger(__name__).warning("worker %s lost: %s", worker, error)
        self.hung.discard(worker)
        if worker in self.assigned:
            self.assigned.pop(worker).workers -= 1
        if worker not in self.rendering:  # its first lost batch: find the one it had started
            queued = [h for h, (w, _) in self.in_flight.items() if w == worker]
            self.rendering[worker] = handle if all(self.order[h] > self.order[handle]
                                                 for h in queued) else \
                min(queued, key=self.order.__getitem__)
            if worker in self.backend.ready():
                self.backend.replace(worker)
        if self.rendering[worker] != handle:
            self.retry.appendleft(batch)  # never started: no attempt charged
            return
        self._finish(worker, batch, self._failures(batch, worker, f"worker lost: {error}"))

    def _failures(self, batch: Batch, worker: str, error: str) -> list[Result]:
        return [Result(job_id=job.id, path=path, pixel_hash=None, seconds=0.0,
                       batch_size=len(batch.shape), position=slot, worker=worker, error=error)
                for job, path, slot in zip(batch.jobs, batch.paths, batch.slots)]

    def _record(self, worker: str, results: list[Result]) -> None:
        if not results:
            return
        if not self.recording:
            self.left_out += len(results)
            return
        self.manifest.record(results, self.run_id,
                             {r.job_id: self.attempts.pop(r.job_id) for r in results})
        s = self.summary
        if s.first_image_seconds is None and any(r.ok for r in results):
            s.first_image_seconds = time.perf_counter() - self.started
        for r in results:
            for model, seconds in r.loads:
                s.loads.setdefault(model, []).append(seconds)
            if r.ok:
                s.rendered += 1
                s.per_worker[worker] += 1
            else:
                s.failed += 1
                s.failures.append(r)
        self.progress.update(s, len(results))


# the inline backend (the Ray backend is in cluster.py) -----------------------------------------

class InlineBackend:
    """One Worker in this process; two threads, so that one batch's PNGs are written while the
    next batch renders (the worker's one compute thread keeps one pipeline call at a time)."""

    replaceable = False

    def __init__(self, runtime: Runtime, root: os.PathLike):
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from farm.worker import Worker

        if runtime.device and runtime.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeUnavailable(f"runtime.device: got {runtime.device!r}, but torch sees no "
                                     "CUDA GPU here; leave it unset (a GPU when there is one) or "
                                     "use cpu")
        self.worker = Worker.built(runtime.worker(
            None if runtime.outputs == "driver" else str(root), "inline", runtime.threads))
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="farm-inline")

    def ready(self) -> list[str]:
        return ["inline"]

    def starting(self) -> bool:
        return False

    def submit(self, worker: str, batch: Batch):
        return self.pool.submit(self.worker.render, batch)

    def submit_scores(self, worker: str, work: ScoreWork):
        return self.pool.submit(self.worker.score, work)

    def wait(self, handles, timeout=None):
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return [(f, f.exception() or f.result()) for f in done]

    def replace(self, worker: str) -> None:
        raise RuntimeError("the inline worker cannot be replaced")

    def kill(self, worker: str) -> None:
        raise RuntimeError("the inline worker cannot be killed: it is this process")

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def run(backend: Backend, work: list[Work], folder: RunFolder,
        manifest: Manifest, run_id: int, runtime: Runtime, summary: Summary,
        label: str, scorers: tuple[Scorer, ...] = ()) -> Summary:
    """Render all pending work; fill in and return the summary."""
    started = time.perf_counter()
    progress = Progress(sum(w.left for w in work), label)
    try:
        Dispatcher(backend, work, folder, manifest, run_id, runtime, summary,
                   progress, scorers).run()
    finally:
        progress.close()
        summary.seconds = time.perf_counter() - started
    return summary

