"""The dispatcher with a fake backend (no Ray, no torch): affinity, retries, lost workers."""

from __future__ import annotations

from collections import Counter

from farm import plan, schedule
from farm.jobs import Batch, Loadout, Model, Result
from farm.manifest import Manifest
from farm.outputs import RunFolder
from tests.helpers import make_job

A = Model("a", "/nowhere/a", "aa" * 32)
B = Model("b", "/nowhere/b", "bb" * 32)


class FakeBackend:
    """Workers that 'render' at once: they record what they were given and may fail or die."""

    replaceable = False

    def __init__(self, workers: list[str], fail: Counter | None = None,
                 die: set[str] | None = None):
        self.workers = list(workers)
        self.fail = fail or Counter()  # job id -> how many more times it fails
        self.die = die or set()  # workers that die on their next batch
        self.calls: list[tuple[str, Batch]] = []
        self.loaded: dict[str, list[tuple]] = {w: [] for w in workers}
        self.pending: dict[int, tuple[str, Batch]] = {}
        self.replaced: list[str] = []

    def ready(self) -> list[str]:
        return list(self.workers)

    def starting(self) -> bool:
        return False

    def submit(self, worker: str, batch: Batch) -> int:
        handle = len(self.calls)
        self.calls.append((worker, batch))
        self.pending[handle] = (worker, batch)
        return handle

    def wait(self, handles, timeout=None):
        handle = min(handles)
        worker, batch = self.pending.pop(handle)
        if worker in self.die:
            self.die.discard(worker)
            return [(handle, schedule.WorkerLost(f"{worker} was killed"))]
        key = batch.first.loadout.key
        if not self.loaded[worker] or self.loaded[worker][-1] != key:
            self.loaded[worker].append(key)
        results = []
        for job, path, slot in zip(batch.jobs, batch.paths, batch.slots):
            error = None
            if self.fail[job.id]:
                self.fail[job.id] -= 1
                error = "RuntimeError: boom"
            results.append(Result(job.id, path, None if error else f"hash-{job.id}", 0.1,
                                  len(batch.shape), slot, worker, error))
        return [(handle, results)]

    def replace(self, worker: str) -> None:
        self.replaced.append(worker)

    def close(self) -> None:
        pass


def work_for(jobs, batch_size=2) -> list[schedule.Work]:
    by_loadout: dict[tuple, list] = {}
    for job in jobs:
        by_loadout.setdefault(job.loadout.key, []).append(job)
    return [schedule.Work(Loadout(group[0].checkpoint, group[0].vae),
                          plan.batches(((j, None) for j in group), batch_size), len(group))
            for group in by_loadout.values()]


def dispatch(tmp_path, backend, jobs, max_attempts=3, queue_depth=2, **settings):
    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    summary = schedule.Summary(planned=len(jobs), skipped=0)
    runtime = schedule.Runtime(kind="fake", max_attempts=max_attempts, queue_depth=queue_depth,
                               **settings)
    with Manifest(folder.manifest) as manifest:
        schedule.run(backend, work_for(jobs), folder, manifest, 1, runtime, summary, "test")
        rows = {job.id: manifest.job(job.id) for job in jobs}
    return summary, rows


def jobs_of(*models: Model, seeds: int = 4):
    return [make_job(m, seed=s) for m in models for s in range(seeds)]


def test_each_worker_keeps_to_one_loadout(tmp_path):
    backend = FakeBackend(["w0", "w1"])
    summary, rows = dispatch(tmp_path, backend, jobs_of(A, B, seeds=8))
    assert summary.rendered == 16 and summary.failed == 0
    assert all(len(keys) == 1 for keys in backend.loaded.values()), backend.loaded
    assert {keys[0] for keys in backend.loaded.values()} == {Loadout(A).key, Loadout(B).key}
    assert all(row["status"] == "done" for row in rows.values())


def test_a_failed_job_is_retried_at_its_slot_and_counts_its_attempts(tmp_path):
    jobs = jobs_of(A)
    backend = FakeBackend(["w0"], fail=Counter({jobs[1].id: 1}))
    summary, rows = dispatch(tmp_path, backend, jobs)
    assert summary.rendered == 4 and summary.failed == 0
    retried = [b for _, b in backend.calls if jobs[1] in b.jobs]
    assert len(retried) == 2 and [b.slots[b.jobs.index(jobs[1])] for b in retried] == [1, 1]
    assert all(len(b.shape) == 2 for b in retried)  # padded to the batch size both times
    assert rows[jobs[1].id]["attempts"] == 2 and rows[jobs[0].id]["attempts"] == 1


def test_a_job_that_keeps_failing_is_recorded_as_failed(tmp_path):
    jobs = jobs_of(A)
    backend = FakeBackend(["w0"], fail=Counter({jobs[2].id: 99}))
    summary, rows = dispatch(tmp_path, backend, jobs, max_attempts=2)
    assert (summary.rendered, summary.failed) == (3, 1)
    assert rows[jobs[2].id]["status"] == "failed" and rows[jobs[2].id]["attempts"] == 2
    assert "boom" in rows[jobs[2].id]["error"]


def test_a_lost_worker_is_replaced_and_its_batch_rendered_elsewhere(tmp_path):
    backend = FakeBackend(["w0", "w1"], die={"w0"})
    summary, rows = dispatch(tmp_path, backend, jobs_of(A, B))
    assert backend.replaced == ["w0"]
    assert summary.rendered == 8 and summary.failed == 0
    assert all(row["status"] == "done" for row in rows.values())


class LosingBackend(FakeBackend):
    """A worker that dies with several batches in flight: every one of them is lost."""

    def wait(self, handles, timeout=None):
        worker, _ = self.pending[min(handles)]
        if worker in self.die:
            self.die.discard(worker)
            lost = [h for h in sorted(handles) if self.pending[h][0] == worker]
            for h in lost:
                self.pending.pop(h)
            return [(h, schedule.WorkerLost(f"{worker} was killed")) for h in reversed(lost)]
        return super().wait(handles, timeout)

    def replace(self, worker: str) -> None:
        super().replace(worker)
        self.workers.remove(worker)
        self.workers.append(worker + ".1")
        self.loaded[worker + ".1"] = []


def test_only_the_batch_a_dead_worker_had_started_counts_an_attempt(tmp_path):
    """queue_depth 4, max_attempts 1: the batches queued behind the one being rendered go back
    to the queue uncharged and are rendered by the replacement."""
    backend = LosingBackend(["w0"], die={"w0"})
    summary, rows = dispatch(tmp_path, backend, jobs_of(A, seeds=8), max_attempts=1,
                             queue_depth=4)
    assert backend.replaced == ["w0"]
    assert (summary.failed, summary.rendered) == (2, 6)  # the first batch of 2 only
    first = backend.calls[0][1]
    assert all(rows[job.id]["status"] == "failed" for job in first.jobs)


class CountingBackend(FakeBackend):
    """Workers that keep one model loaded (max_pipelines=1) and count their loads."""

    def wait(self, handles, timeout=None):
        worker, batch = self.pending[min(handles)]
        self.loads += batch.first.loadout.key not in self.loaded[worker][-1:]
        return super().wait(handles, timeout)

    loads = 0


def test_a_resumed_run_does_not_send_two_workers_to_one_small_leftover(tmp_path):
    """What a resume leaves: 1 batch of A, 5 of B. The second worker takes A (nobody serves
    it) rather than joining B: three loads in all, where joining costs four."""
    backend = CountingBackend(["w0", "w1"])
    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    jobs = jobs_of(A, seeds=2) + jobs_of(B, seeds=10)
    summary = schedule.Summary(planned=len(jobs), skipped=0)
    runtime = schedule.Runtime(kind="fake", max_pipelines=1, queue_depth=1)
    with Manifest(folder.manifest) as manifest:
        schedule.run(backend, work_for(jobs), folder, manifest, 1, runtime, summary, "test")
    assert summary.rendered == 12 and backend.loads <= 3, backend.loaded


class HangingBackend(FakeBackend):
    """A worker that hangs (alive, never answering) on one job's batch until it is killed."""

    replaceable = True

    def __init__(self, workers, hang_on: str):
        super().__init__(workers)
        self.hang_on, self.killed = hang_on, []

    def wait(self, handles, timeout=None):
        import time

        worker, batch = self.pending[min(handles)]
        if self.killed:  # its batches in flight come back lost
            dead = self.killed.pop()
            lost = [h for h in sorted(handles) if self.pending[h][0] == dead]
            for h in lost:
                self.pending.pop(h)
            return [(h, schedule.WorkerLost(f"{dead} was killed")) for h in reversed(lost)]
        if any(job.id == self.hang_on for job in batch.jobs):
            assert timeout is not None, "a hung batch would be waited for forever"
            time.sleep(timeout)
            return []
        return super().wait(handles, timeout)

    def kill(self, worker):
        self.killed.append(worker)
        self.hang_on = None  # the replacement renders it


def test_a_hung_worker_is_replaced_and_its_batch_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(schedule, "MIN_HANG_SECONDS", 0.05)
    jobs = jobs_of(A, seeds=8)
    backend = HangingBackend(["w0"], hang_on=jobs[4].id)
    summary, rows = dispatch(tmp_path, backend, jobs, hang_after=2)
    assert summary.hung == ["w0"] and backend.replaced == ["w0"]
    assert summary.rendered == 8 and summary.failed == 0
    assert rows[jobs[4].id]["attempts"] == 2  # the hung try counts
    assert all(row["status"] == "done" for row in rows.values())

