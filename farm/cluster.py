"""The Ray backend: one worker actor per GPU (or CPU workers) on an embedded or joined cluster.

The actor is a thin shell around the plain Worker; the Dispatcher in schedule.py drives it
through the same Backend contract as the inline worker. This is the only module that knows Ray.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from typing import Any

from farm.jobs import Batch, Result
from farm.schedule import Runtime, RuntimeUnavailable, WorkerLost


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
