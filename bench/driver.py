"""One driver's ceiling: images/s into one manifest with many simulated Ray workers.

    python bench/driver.py [--images 20000] [--workers 1 4 16 32] [--sizes 8 512] [--quick]

Every render goes through `farm render`'s own path (run.render: plan, dispatcher, Ray actors,
PNG encoding with metadata, atomic writes, pixel hashes, the manifest) with the built-in
`instant` checkpoint, whose pipeline returns noise at once, so that what is measured is farm:
  - baselines in the same run: the same render inline (no Ray: one worker in the driver's
    process), and Ray's own round trip (an empty actor call, as many in flight per actor as
    farm keeps);
  - for each size and W workers (each taking 2/W of a CPU: runtime.cpus_per_worker), the
    workers writing the images and the driver writing them (runtime.outputs=driver): images/s
    sustained from the first image on, and the driver's own CPU seconds per image;
  - a profile of the driver's main thread CPU (the largest W at the first size; 4 with
    --quick): where its time goes.
The last line reads `driver: N images/s with W workers (...)`, the best sustained rate.
Each actor imports torch (about 0.4 GB resident), which is what bounds W on one machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import tempfile
import time
from pathlib import Path


def cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def render(root: Path, name: str, images: int, size: int, extra: list[str]) -> dict:
    """One farm render of `images` instant images; its sustained rate and driver CPU."""
    from farm import compose, run

    recipe = root / f"{name}.yaml"
    recipe.write_text(f"name: {name}\ncheckpoint: instant\nprompt: a red fox\n"
                      f"seeds: 0-{images - 1}\nsize: {size}x{size}\nbatch_size: 8\n")
    settings = compose.compose([f"recipe={recipe}", f"outputs={root}", *extra])
    cpu = cpu_seconds()
    outcome = run.render(settings)
    cpu = cpu_seconds() - cpu
    summary = outcome.summary
    assert outcome.ok and summary.rendered == images, summary
    steady = summary.seconds - (summary.first_image_seconds or 0)
    return {"images_per_second": images / steady if steady > 0 else float("inf"),
            "overall": summary.images_per_second, "driver_ms_per_image": 1000 * cpu / images,
            "workers": len(summary.per_worker)}


def ray_round_trip(workers: int, calls: int) -> float:
    """Empty actor calls per second, two in flight per actor (farm's queue_depth)."""
    import ray

    @ray.remote(num_cpus=0.01)
    class Empty:
        def call(self, payload):
            return payload

    actors = [Empty.remote() for _ in range(workers)]
    ray.get([a.call.remote(0) for a in actors])
    started = time.perf_counter()
    in_flight = {a.call.remote(0): a for a in actors for _ in range(2)}
    done = 0
    while done < calls:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            actor = in_flight.pop(ref)
            done += 1
            in_flight[actor.call.remote(0)] = actor
    rate = calls / (time.perf_counter() - started)
    for a in actors:
        ray.kill(a)
    return rate


def profile_categories(profile: cProfile.Profile) -> dict[str, float]:
    """The driver's own time (tottime) by where it was spent."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    spent = {"ray calls": 0.0, "manifest (sqlite)": 0.0, "progress bar": 0.0,
             "files (driver writes)": 0.0, "farm bookkeeping": 0.0, "other": 0.0}
    for (file, _, function), (_, _, tottime, _, _) in stats.stats.items():
        if "/ray/" in file:
            spent["ray calls"] += tottime
        elif file.endswith("manifest.py") or "sqlite3" in function or "sqlite" in file:
            spent["manifest (sqlite)"] += tottime
        elif "tqdm" in file:
            spent["progress bar"] += tottime
        elif file.endswith("outputs.py"):
            spent["files (driver writes)"] += tottime
        elif "/farm/" in file:
            spent["farm bookkeeping"] += tottime
        else:
            spent["other"] += tottime
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="per render at 8x8")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 512])
    parser.add_argument("--quick", action="store_true", help="8x8 only, 1 4 16 workers, "
                        "4,000 images, workers writing: under 3 minutes")
    args = parser.parse_args()
    if args.quick:
        args.images, args.workers, args.sizes = 4_000, [1, 4, 16], [8]
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    from farm.cluster import _connect

    _connect(None)  # one embedded cluster for every render (each starts its own actors)
    best = (0.0, 0, "")
    with tempfile.TemporaryDirectory(prefix="farm-bench-driver-") as tmp:
        root = Path(tmp)
        print(f"Ray round trip (baseline): {ray_round_trip(4, 4000):.0f} empty calls/s with 4 "
              "actors (farm makes one call per batch of 8 images)")
        for size in args.sizes:
            images = args.images if size <= 64 else max(400, args.images // 40)
            inline = render(root, f"inline-{size}", images, size, ["runtime=inline"])
            print(f"{size}x{size}, {images} images; inline, no Ray (baseline): "
                  f"{inline['images_per_second']:.0f} images/s, driver "
                  f"{inline['driver_ms_per_image']:.2f} ms CPU per image (rendering included)")
            modes = [("workers write", [])] + ([] if args.quick else
                                               [("driver writes", ["runtime.outputs=driver"])])
            for workers in args.workers:
                for label, extra in modes:
                    found = render(root, f"ray-{size}-{workers}-{len(extra)}", images, size, [
                        "runtime.device=cpu", f"runtime.workers={workers}", "runtime.threads=1",
                        f"runtime.cpus_per_worker={min(1.0, 2 / workers):g}", *extra])
                    print(f"  {workers:>3} workers, {label:<14}: "
                          f"{found['images_per_second']:>7.0f} images/s sustained "
                          f"({found['overall']:.0f} counting start-up), driver "
                          f"{found['driver_ms_per_image']:.3f} ms CPU per image")
                    if found["images_per_second"] > best[0]:
                        best = (found["images_per_second"], workers,
                                f"{size}x{size}, {label}, driver "
                                f"{found['driver_ms_per_image']:.3f} ms CPU per image")
        workers, size = (4 if args.quick else args.workers[-1]), args.sizes[0]
        profile = cProfile.Profile(time.thread_time)  # the main thread's CPU, not its waiting
        profile.enable()
        render(root, "profiled", args.images, size, [
            "runtime.device=cpu", f"runtime.workers={workers}", "runtime.threads=1",
            f"runtime.cpus_per_worker={min(1.0, 2 / workers):g}"])
        profile.disable()
        spent = profile_categories(profile)
        total = sum(spent.values()) or 1.0
        print(f"driver profile, {workers} workers at {size}x{size} (main thread CPU): "
              + ", ".join(f"{k} {v / total:.0%}" for k, v in spent.items()))
    print(f"driver: {best[0]:.0f} images/s with {best[1]} workers ({best[2]})")


if __name__ == "__main__":
    main()
