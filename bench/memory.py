"""Host memory over model switches: does a worker give back what it evicts?

    python bench/memory.py [--switches 20] [--models 3] [--quick]

Builds `--models` random-sd15 checkpoints (Stable Diffusion 1.5's architecture with random
weights, each its own seed; about 1 billion parameters, saved in float16 to the farm cache
once) and loads them in turn, `--switches` times, in float32 on this machine's device:
  - baseline: a bare diffusers loop (from_pretrained, one 1-step call, drop it),
  - farm: one Worker with runtime.max_pipelines=1 rendering a 1-step job from each in turn
    (so each switch evicts the previous pipeline),
and prints the resident memory (and GPU memory, where there is one) after each load, and the
growth per switch fitted over the switches after the first round. `--quick`: 6 switches over
2 models.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
from pathlib import Path

from farm import libraries, models, tiny
from farm.jobs import Batch, Job


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


def gpu_mib() -> float | None:
    import torch

    return torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else None


def build(folder: Path, seed: int) -> Path:
    """random-sd15 (farm/tiny.py) with its own seed: another checkpoint of the same shape."""
    if not (folder / "model_index.json").exists():
        libraries.quiet()
        tiny.build_random_sd15(folder, seed)
    return folder


def slope(values: list[float], skip: int) -> float:
    """MiB per switch: the least-squares line through the values after the first `skip`."""
    ys = values[skip:]
    if len(ys) < 2:
        return 0.0
    xs = range(len(ys))
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    switches, count = (6, 2) if args.quick else (args.switches, args.models)
    folders = [build(tiny.cache_dir() / "bench" / f"random-sd15-{i}", i) for i in range(count)]
    import torch
    from diffusers import StableDiffusionPipeline

    from farm.worker import Worker

    libraries.quiet()
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def bare() -> list[float]:
        after = []
        for k in range(switches):
            pipe = StableDiffusionPipeline.from_pretrained(
                folders[k % count], torch_dtype=torch.float32).to(device)
            pipe.set_progress_bar_config(disable=True)
            pipe("a fox", num_inference_steps=1, width=64, height=64)
            del pipe
            after.append(rss_mib())
        return after

    def farm() -> list[float]:
        checkpoints = [models.resolve(str(f)) for f in folders]
        worker = Worker(None, "memory", max_pipelines=1)
        after = []
        for k in range(switches):
            job = Job(checkpoints[k % count], None, "a fox", "", 0, "euler", "normal", 1, 7.0,
                      64, 64)
            result, = worker.render(Batch((job,), ("images/00000/x.png",)))
            assert result.ok, result.error
            after.append(rss_mib())
        return after

    print(f"device {device}, {count} random-sd15 checkpoints, "
          f"{switches} loads, float32, pid {os.getpid()}")
    for label, measure in (("diffusers, bare loop (baseline)", bare), ("farm worker", farm)):
        gc.collect()
        values = measure()
        gpu = gpu_mib()
        print(f"  {label:32s} RSS after each load (MiB): "
              + " ".join(f"{v:.0f}" for v in values))
        print(f"  {'':32s} growth {slope(values, count):+.1f} MiB per switch after the first "
              f"round" + (f"; GPU allocated {gpu:.0f} MiB" if gpu is not None else ""))


if __name__ == "__main__":
    main()
