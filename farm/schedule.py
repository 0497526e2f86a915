"""Dispatch batches to workers, record results, show progress.

The driver (this module, in the `farm render` process) is the single writer of the manifest:
it claims a batch's jobs (fixing their file paths), hands the batch to a worker, and records
the small results the worker sends back after its files are in place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from farm import plan
from farm.jobs import Batch, Job, Result
from farm.manifest import Manifest
from farm.outputs import RunFolder


@dataclass
class Runtime:
    """How to render (the `runtime` config group); never part of a job's identity."""

    kind: str = "inline"  # inline: in this process
    workers: int | None = None  # cap on workers; default one per GPU, else one on the CPU
    threads: int | None = None  # torch threads per CPU worker; default: torch's choice
    max_pipelines: int = 2  # checkpoints (and VAEs) a worker keeps loaded, least recent out
    device: str | None = None  # "cpu" or "cuda"; default: a GPU when there is one


@dataclass
class Summary:
    planned: int
    skipped: int  # already done before this run
    rendered: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[Result] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """A progress bar (images done, images/s, ETA) on stderr; TQDM_DISABLE=1 silences it."""

    def __init__(self, total: int, label: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=label, unit="img", dynamic_ncols=True, smoothing=0.1)

    def update(self, results: list[Result]) -> None:
        self.bar.update(len(results))
        failed = sum(not r.ok for r in results)
        if failed:
            self.bar.set_postfix(failed=failed, refresh=False)

    def close(self) -> None:
        self.bar.close()


def pending_batches(jobs: Iterable[Job], is_done: Callable[[str], bool],
                    batch_size: int) -> Iterator[tuple[Job, ...]]:
    return plan.batches(plan.pending(jobs, is_done), batch_size)


def run_inline(batches: Iterable[tuple[Job, ...]], batch_size: int, folder: RunFolder,
               manifest: Manifest, run_id: int, runtime: Runtime, summary: Summary,
               progress: Progress) -> None:
    """Render every batch in this process, one at a time, each padded to batch_size."""
    from farm.worker import Device, Worker

    device = None
    if runtime.device:
        device = Device(runtime.device, "float32" if runtime.device == "cpu" else "float16")
    worker = Worker(folder.root, name="inline", device=device,
                    max_pipelines=runtime.max_pipelines, threads=runtime.threads)
    for jobs in batches:
        paths = manifest.claim(jobs, folder.image_path)
        results = worker.render(Batch(jobs, tuple(paths), pad_to=batch_size))
        manifest.record(results, run_id)
        _count(summary, results)
        progress.update(results)


def _count(summary: Summary, results: list[Result]) -> None:
    for r in results:
        if r.ok:
            summary.rendered += 1
        else:
            summary.failed += 1
            summary.failures.append(r)


def run(batches: Iterable[tuple[Job, ...]], batch_size: int, pending: int, folder: RunFolder,
        manifest: Manifest, run_id: int, runtime: Runtime, summary: Summary,
        label: str) -> Summary:
    """Render the pending batches with the chosen runtime; fill in and return the summary."""
    started = time.perf_counter()
    progress = Progress(pending, label)
    try:
        if runtime.kind == "inline":
            run_inline(batches, batch_size, folder, manifest, run_id, runtime, summary,
                       progress)
        else:
            raise ValueError(f"runtime {runtime.kind!r} is not available; allowed: inline")
    finally:
        progress.close()
        summary.seconds = time.perf_counter() - started
    return summary
