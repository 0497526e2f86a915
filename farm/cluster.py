"""The Ray backend: one worker actor per GPU (or CPU workers) on an embedded or joined cluster.

The actor is a thin shell around the plain Worker; the Dispatcher in schedule.py drives it
through the same Backend contract as the inline worker. This is the only module that knows Ray.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import replace
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from farm import inputs
from farm.jobs import Batch, Result, WorkerSettings
from farm.outputs import PROBE_PREFIX
from farm.scorers import Score
from farm.scorers import Work as ScoreWork
from farm.schedule import Runtime, RuntimeUnavailable, WorkerLost


class RayWorker:
    """The Ray actor: a thin shell around the plain Worker, which it builds on first use."""

    def __init__(self, settings: WorkerSettings, probe: tuple[str, str] | None = None):
        self.settings = settings
        self.probe = probe  # (file, token): the run folder is visible here if it reads so
        self.worker = None

    def ready(self) -> dict:
        """Import torch and diffusers and build the Worker; say where this actor runs and who
        writes its images (itself, or the driver when it cannot see the run folder)."""
        import ray
        from farm.worker import Worker

        settings = self.settings
        if settings.root is not None and self.probe is not None \
                and not sees(settings.root, *self.probe):
            settings = replace(settings, root=None)
        self.worker = Worker.built(settings)
        return {"name": settings.name, "node": ray.get_runtime_context().get_node_id(),
                "device": self.worker.device.name,
                "writes": "worker" if self.worker.folder is not None else "driver"}

    def render(self, batch: Batch) -> list[Result]:
        return self.worker.render(batch)

    def score(self, work: ScoreWork) -> list[list[Score]]:
        return self.worker.score(work)

    def loads(self) -> dict[str, int]:
        return dict(self.worker.loads)


def sees(root: str, probe: str, token: str) -> bool:
    """Whether this machine sees the run folder the driver wrote `probe` into (a cluster
    without a shared filesystem: another disk, or nothing, at that path)."""
    try:
        return (Path(root) / probe).read_text() == token
    except OSError:
        return False


class RayBackend:
    """One RayWorker actor per GPU (or CPU workers), on an embedded or a joined Ray cluster."""

    replaceable = True  # a hung or lost actor is killed and another started in its place

    def __init__(self, runtime: Runtime, root: os.PathLike, label: str):
        self.runtime, self.root, self.label = runtime, str(root), label
        self.actors: dict[str, Any] = {}
        self.owns_cluster = False
        self.probe: tuple[str, str] | None = None
        if runtime.outputs == "auto":  # a file only the nodes that share the folder can read
            self.probe = (f"{PROBE_PREFIX}{os.getpid()}", secrets.token_hex(16))
            Path(root).mkdir(parents=True, exist_ok=True)
            (Path(root) / self.probe[0]).write_text(self.probe[1])
        try:
            # a cluster this process has not joined yet is ours to shut down, also when a
            # signal stops its start half-way
            self.owns_cluster = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
            with interrupts_held():  # Ctrl-C or SIGTERM inside ray.init crashes Ray's core worker
                self.owns_cluster = _connect(runtime.address)  # before anything imports ray
            self.count, self.device, self.options, self.threads = _placement(runtime)
            self.starting_refs: dict[Any, str] = {}
            self.since: dict[Any, float] = {}  # starting ref -> when it was asked for
            self.live: list[str] = []
            self.placed: dict[str, dict] = {}  # name -> {node, device} of each started worker
            self.generation = Counter()
            self.failed_starts: Counter[str] = Counter()  # slot -> starts that failed
            self.problem = ""  # why the last worker that could not start did not
            for i in range(self.count):
                self._start(f"{'gpu' if self.device == 'cuda' else 'cpu'}-{i}")
            while self.starting_refs and not self.live:
                self._poll_starting(timeout=self._until_deadline())
            if not self.live:
                raise RuntimeUnavailable(f"runtime: no Ray worker could start; {self.problem}")
        except BaseException:
            self.close()
            raise

    def _start(self, slot: str) -> None:
        self.generation[slot] += 1
        name = slot if self.generation[slot] == 1 else f"{slot}.{self.generation[slot] - 1}"
        actor_class = _remote_worker().options(
            name=f"farm-{self.label}-{name}-{os.getpid()}", max_restarts=0, max_concurrency=2,
            **self.options)
        root = None if self.runtime.outputs == "driver" else self.root
        actor = actor_class.remote(self.runtime.worker(root, name, self.threads), self.probe)
        self.actors[name] = actor
        ref = actor.ready.remote()
        self.starting_refs[ref] = name
        self.since[ref] = time.monotonic()

    def _until_deadline(self) -> float | None:
        """Seconds until the first starting worker is past runtime.start_timeout."""
        if not self.since:
            return None
        return max(0.0, min(self.since.values()) + self.runtime.start_timeout - time.monotonic())

    def _poll_starting(self, timeout: float | None) -> None:
        """Take the workers that started; start again one that failed while starting (killed,
        out of memory), up to runtime.max_attempts times per slot; give up on one that could
        not be placed within runtime.start_timeout (the resources it needs are taken)."""
        import ray

        done, _ = ray.wait(list(self.starting_refs), num_returns=1, timeout=timeout)
        for ref in done:
            name = self.starting_refs.pop(ref)
            del self.since[ref]
            try:
                self.placed[name] = ray.get(ref)
                self.live.append(name)
                if self.placed[name].get("writes") == "driver" and self.runtime.outputs == "auto":
                    logging.getLogger(__name__).warning(
                        "worker %s cannot see the run folder %s on its node: it sends its "
                        "images to the driver, which writes them", name, self.root)
            except ray.exceptions.RayError as e:
                slot = name.split(".")[0]
                self.failed_starts[slot] += 1
                self.problem = (f"worker {name} failed while starting ({str(e).splitlines()[0]}"
                                f"); {self.failed_starts[slot]} of runtime.max_attempts="
                                f"{self.runtime.max_attempts} starts of {slot} failed")
                logging.getLogger(__name__).warning(self.problem)
                self.actors.pop(name, None)
                if self.failed_starts[slot] < self.runtime.max_attempts:
                    self._start(slot)
        now = time.monotonic()
        for ref, since in list(self.since.items()):
            if now - since >= self.runtime.start_timeout:
                name = self.starting_refs.pop(ref)
                del self.since[ref]
                ray.kill(self.actors.pop(name))
                needs = {"CPU": self.options["num_cpus"], "GPU": self.options["num_gpus"]}
                self.problem = (f"worker {name} could not be placed within runtime."
                                f"start_timeout={self.runtime.start_timeout:g} s: it needs "
                                f"{_describe(needs)}, and the cluster has "
                                f"{_describe(ray.available_resources())} free of "
                                f"{_describe(ray.cluster_resources())}")
                logging.getLogger(__name__).warning(self.problem)

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
        # input images travel with their batch: the worker's node may not see their files
        return self.actors[worker].render.remote(inputs.carried(batch))

    def submit_scores(self, worker: str, work: ScoreWork):
        return self.actors[worker].score.remote(work)

    def wait(self, handles, timeout=None):
        import ray

        waiting = list(handles) + list(self.starting_refs)
        limits = [t for t in (timeout, self._until_deadline()) if t is not None]
        done, _ = ray.wait(waiting, num_returns=1, timeout=min(limits) if limits else None)
        outcomes = []
        if not done or any(ref in self.starting_refs for ref in done):
            self._poll_starting(timeout=0)  # started, failed, or past its deadline
        for ref in done:
            if ref in self.starting_refs or ref not in handles:
                continue
            try:
                outcomes.append((ref, ray.get(ref)))
            except ray.exceptions.RayActorError as e:
                outcomes.append((ref, WorkerLost(str(e).splitlines()[0])))
            except ray.exceptions.RayTaskError as e:
                outcomes.append((ref, RuntimeError(str(e).splitlines()[-1])))
        return outcomes

    def kill(self, worker: str) -> None:
        """Kill a hung worker: what it had in flight comes back as lost (then replace it)."""
        import ray

        if worker in self.actors:
            ray.kill(self.actors[worker], no_restart=True)

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
        if self.probe is not None:
            (Path(self.root) / self.probe[0]).unlink(missing_ok=True)
        if "ray" not in sys.modules:
            return
        import ray

        for actor in self.actors.values():
            ray.kill(actor)
        if self.owns_cluster:
            ray.shutdown()


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block is done, then act on the first as its
    own handler would (farm's SIGTERM handler: exit 143): a signal inside ray.init crashes Ray's
    core worker (a segmentation fault) and leaves its processes behind. ray.init also installs
    a SIGTERM handler that exits at once (code 15, no summary): a SIGTERM that reaches it is
    held as well, and farm's handler is back in place when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    stopped, done = threading.Event(), threading.Event()

    def hold(number: int, frame) -> None:
        caught.append(number)
        stopped.set()

    # Ray may never come back from a start a signal reached: a watchdog (started here, not in
    # the handler, which runs between two bytecodes of whatever the main thread was doing)
    threading.Thread(target=_give_up, args=(caught, stopped, done), daemon=True,
                     name="farm-held-stop").start()
    previous = {number: signal.signal(number, hold) for number in held}
    try:
        yield
    except SystemExit as e:  # ray.init installs a SIGTERM handler of its own that exits
        if e.code != signal.SIGTERM:
            raise
        caught.append(signal.SIGTERM)
    finally:  # (which also puts farm's back in place of Ray's)
        for number, handler in previous.items():
            signal.signal(number, handler)
        done.set()
        stopped.set()  # (the watchdog's wait ends)
    if caught:
        handler = previous[caught[0]]
        if callable(handler):
            handler(caught[0], None)
        raise KeyboardInterrupt


HELD_FOR = 30.0  # seconds a stop waits for Ray's start to end before farm exits without it


def _give_up(caught: list[int], stopped: threading.Event, done: threading.Event) -> None:
    """A stop held through Ray's start, which has not ended HELD_FOR seconds later (it can wait
    forever for its own processes once a signal reached it): end those processes and exit as
    the stop asks (130 Ctrl-C, 143 SIGTERM). Nothing had been rendered yet."""
    stopped.wait()
    if done.wait(HELD_FOR) or not caught:
        return
    number = caught[0]
    import psutil

    for child in psutil.Process().children(recursive=True):  # the cluster it was starting
        try:
            child.kill()
        except psutil.Error:
            pass
    said = "interrupted" if number == signal.SIGINT else "terminated"
    sys.stderr.write(f"farm: {said} while Ray was starting, which did not end in "
                     f"{HELD_FOR:g} s; nothing was rendered: run the same command again to "
                     "resume\n")
    sys.stderr.flush()
    os._exit(128 + number)


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
    # Ray's C++ failure-signal handler would catch SIGTERM, print a stack dump and abort the
    # driver instead of letting farm stop as on Ctrl-C (read when ray is imported)
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    if not address and "ray" not in sys.modules:
        # An embedded cluster serves this process only, and Ray has no authentication: keep it
        # on the loopback interface (Ray's single-machine mode, as on macOS and Windows).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    try:
        # "local": a cluster of our own, never one that `ray start` left on this machine
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
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
    # by default one CPU worker per node, with the cores of the smallest node (one worker asking
    # for the whole cluster's CPUs would fit on no node)
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes()
             if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1]
    count = runtime.workers or max(1, len(nodes))
    threads = runtime.threads or max(1, int(min(nodes)) if runtime.workers is None and nodes
                                      else cpus // count)
    share = runtime.cpus_per_worker or threads  # a fraction: workers share the cores
    if count * share > cpus + 1e-9:
        raise RuntimeUnavailable(
            f"runtime.workers: {count} CPU workers x {share:g} CPUs need {count * share:g} "
            f"CPUs, but the Ray cluster has {cpus}; lower runtime.workers or runtime.threads "
            "(or give each a fraction: runtime.cpus_per_worker)")
    return count, device, {"num_cpus": share, "num_gpus": 0,
                           "scheduling_strategy": "SPREAD"}, threads


def _describe(resources: dict) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))
