"""Throughput of the same tiny-model workload four ways, in one run:

  bare        a plain diffusers loop that saves each PNG synchronously (the baseline)
  inline      farm render runtime=inline
  ray         farm render runtime=ray (an embedded local cluster, one worker writing)
  ray-driver  the same with runtime.outputs=driver: the worker sends each encoded image to
              the driver, which writes it (a cluster without a shared filesystem)

Each runs in a fresh process. Prints time to first image (start-up overhead: process start,
imports, model load, Ray start-up), total wall time, and steady-state images/s (after the first
batch), with ratios against the bare loop.

    python bench/throughput.py [--images 48] [--size 128] [--steps 20] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

BARE = textwrap.dedent("""
    import json, sys, time
    started = time.perf_counter()
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import PngImagePlugin
    from farm import tiny
    images, size, steps, batch, out = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                       int(sys.argv[4]), sys.argv[5])
    pipe = StableDiffusionPipeline.from_pretrained(tiny.ensure("tiny"), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a lighthouse on a cliff at dusk", "a red fox in fresh snow"]
    jobs = [(p, s) for p in prompts for s in range(images // len(prompts))]
    first = None
    run_started = time.perf_counter()
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        result = pipe([p for p, _ in chunk], negative_prompt=["blurry"] * len(chunk),
                      num_inference_steps=steps, guidance_scale=7.0, width=size, height=size,
                      generator=[torch.Generator("cpu").manual_seed(s) for _, s in chunk])
        for (p, s), image in zip(chunk, result.images):
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", f"{p}\\nSteps: {steps}, Seed: {s}")
            image.save(f"{out}/{i}-{s}.png", pnginfo=info)
        if first is None:
            first = time.perf_counter()
    ended = time.perf_counter()
    print(json.dumps({"first": first - started, "run": ended - run_started,
                      "first_in_run": first - run_started, "rendered": len(jobs)}))
""")

RECIPE = """\
name: bench
checkpoint: tiny
prompt: [a lighthouse on a cliff at dusk, a red fox in fresh snow]
negative: blurry
seeds: 0-{last}
steps: {steps}
size: {size}x{size}
batch_size: {batch}
"""

SUMMARY = re.compile(r"Rendered (\d+) of \d+ images into .* in ([\d.]+) s \(([\d.]+) images/s, "
                     r"first image after ([\d.]+) s\)")


def run_bare(args, folder: Path) -> dict:
    out = folder / "bare"
    out.mkdir()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", BARE, str(args.images), str(args.size),
                           str(args.steps), str(args.batch), str(out)],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": wall, "first": figures["first"], "rendered": figures["rendered"],
            "run": figures["run"], "first_in_run": figures["first_in_run"]}


def run_farm(args, folder: Path, runtime: str, *extra: str) -> dict:
    recipes = folder / "recipes"
    recipes.mkdir(exist_ok=True)
    (recipes / "bench.yaml").write_text(RECIPE.format(
        last=args.images // 2 - 1, steps=args.steps, size=args.size, batch=args.batch))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "farm", "render", "recipe=bench",
                           f"runtime={runtime}", f"outputs={runtime}{len(extra)}", *extra],
                          cwd=folder,
                          env={**os.environ, "TQDM_DISABLE": "1"},
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    match = SUMMARY.search(done.stdout)
    if not match:
        raise SystemExit(f"no summary from farm:\n{done.stdout}\n{done.stderr}")
    rendered, run, _, first_in_run = int(match[1]), *map(float, match.group(2, 3, 4))
    # time to first image as the user sees it: process start-up plus the run's first image
    return {"wall": wall, "first": wall - run + first_in_run, "rendered": rendered,
            "run": run, "first_in_run": first_in_run}


def steady(figures: dict, batch: int) -> float:
    """Images/s after the first batch: start-up and the first batch's warm-up left out."""
    return (figures["rendered"] - batch) / (figures["run"] - figures["first_in_run"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    import torch

    print(f"workload: {args.images} images, {args.size}x{args.size}, {args.steps} steps, cfg 7, "
          f"batch {args.batch}, tiny model; torch {torch.__version__}, "
          f"{'CUDA' if torch.cuda.is_available() else 'CPU'}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {"bare": run_bare(args, folder),
                   "inline": run_farm(args, folder, "inline"),
                   "ray": run_farm(args, folder, "ray"),
                   "ray-driver": run_farm(args, folder, "ray", "runtime.outputs=driver")}
    base = steady(results["bare"], args.batch)
    print(f"{'mode':<12}{'first image s':>15}{'wall s':>9}{'steady img/s':>14}{'vs bare':>9}")
    for mode, figures in results.items():
        rate = steady(figures, args.batch)
        print(f"{mode:<12}{figures['first']:>15.2f}{figures['wall']:>9.2f}{rate:>14.2f}"
              f"{rate / base:>9.2f}")


if __name__ == "__main__":
    main()
