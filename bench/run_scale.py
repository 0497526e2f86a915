"""A run folder of ten million done jobs: what each command costs on it.

    python bench/run_scale.py [--jobs 10000000] [--keep DIR]

Builds a finished run folder of `--jobs` jobs (the built-in `instant` checkpoint, 8x8, 100
prompts x jobs/100 seeds, batches of 8) through farm's own code, then times each command in a
fresh process, with its peak memory (VmHWM):

  - baselines in the same run: planning every job with its id (plan.jobs, streamed), and one
    bare pass over the manifest (one cursor, json.loads of each row's params);
  - `farm status` and a `farm render` with nothing to do, before the plan is sealed (the full
    diff of plan against manifest and files) and after (farm/seals.py);
  - `farm verify --sample 100` (every file decoded and checked, 100 jobs rendered again);
  - `farm export --format hub` (parquet shards with the images, and the card);
  - `farm gallery --where seed<100` (the run read once, 10,000 thumbnails).

How it is built: a real `farm render` of the first 8 jobs gives the rows and image a worker
makes; every other job is claimed by the manifest's own claim (its params are the job's
record) and recorded by its own record with that first row's pixel hash, provenance and
scheduler, its file a hard link to a copy of that first image in its folder (10 million
files of 8x8 would take about 40 GB of disk blocks; the links take none). The 100 jobs verify samples (catalog.sample,
as verify chooses them) are then rendered for real into their own files and recorded, so that
verify compares real pixels.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

PEAK = "\nprint('PEAK', int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]))"
PLAN = """
from farm import compose, run, plan
settings = compose.compose(["recipe=scale", "runtime=inline"])
found = run.resolve_models(settings.recipe)
print(sum(1 for job in plan.jobs(settings.recipe, found) if job.id))
"""
BARE = """
import json, sqlite3
db = sqlite3.connect("file:outputs/scale/manifest.sqlite?mode=ro", uri=True)
print(sum(1 for (p,) in db.execute("SELECT params FROM jobs WHERE status='done' ORDER BY seq")
          if json.loads(p)))
"""
FARM = "import sys\nfrom farm.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n" \
       "    pass"
SAMPLE = 100


def build(jobs: int) -> None:
    """The finished folder outputs/scale of recipes/scale.yaml, in the current folder."""
    from farm import catalog, compose, plan, run
    from farm.jobs import Result, Slot
    from farm.manifest import Manifest
    from farm.replay import job_from
    from farm.worker import Worker

    prompts = ", ".join(f"prompt {n}" for n in range(100))
    Path("recipes").mkdir()
    Path("recipes/scale.yaml").write_text(
        f"checkpoint: instant\nprompt: [{prompts}]\nseeds: {{start: 0, count: {jobs // 100}}}\n"
        "size: 8x8\nbatch_size: 8\n")
    Path("recipes/first.yaml").write_text(Path("recipes/scale.yaml").read_text().replace(
        f"count: {jobs // 100}", "count: 8").replace(f"[{prompts}]", "[prompt 0]")
        + "name: scale\n")
    # 1. a real render of the first 8 jobs: the rows and the image a worker makes
    assert run.render(compose.compose(["recipe=first", "runtime=inline"])).ok
    settings = compose.compose(["recipe=scale", "runtime=inline"])
    folder, found = settings.folder, run.resolve_models(settings.recipe)
    with Manifest(folder.manifest) as manifest:
        first = next(manifest.done())
        run_id = manifest.begin_run(run.run_record(settings, found), jobs)
        image = folder.root / first["path"]
        # 2. every other job claimed and recorded by the manifest's own code, its file a link
        stream = plan.jobs(settings.recipe, found)
        made, sources = 0, {image.parent: image}
        while chunk := list(islice(stream, 10_000)):
            rendered = manifest.lookup([job.id for job in chunk])  # (the first 8)
            chunk = [job for job in chunk if job.id not in rendered]
            paths = manifest.claim(chunk, folder.image_path, run_id)
            fresh = [(job, path) for job, path in zip(chunk, paths) if path]
            for job, path in fresh:  # a copy per image folder, linked (at most 65,000 links)
                file = folder.root / path
                if file.parent not in sources:
                    file.parent.mkdir(exist_ok=True)
                    shutil.copyfile(image, file)
                    sources[file.parent] = file
                else:
                    os.link(sources[file.parent], file)
            manifest.record([Result(job.id, path, first["pixel_hash"], 0.001, 8, made % 8,
                                    first["worker"], scheduler=first["scheduler"],
                                    provenance=first["provenance"]) for job, path in fresh],
                            run_id)
            made += len(chunk) + len(rendered)
            print(f"\rbuilt {made:,} of {jobs:,}", end="", flush=True)
        print()
        # 3. the jobs verify samples, rendered for real into their own files
        worker = Worker(folder.root, "bench")
        for entry in catalog.sample(folder.root, catalog.Where(), SAMPLE):
            job = job_from(entry.params, entry.path)
            (folder.root / entry.path).unlink()
            result, = worker.render(Slot.of(entry.row).batch(job, entry.path))
            assert result.ok, result.error
            manifest.record([result], run_id)
        manifest.end_run(run_id, jobs, 0, 0, 0.0)


def timed(name: str, code: str, *args: str) -> tuple[float, float, str]:
    """Wall seconds and peak MiB of `code` in a fresh process; its output's last line (the
    first, for status)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + PEAK, *args], capture_output=True,
                          text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    peak = int(lines[-1].split()[1]) / 1024 if lines and lines[-1].startswith("PEAK") else 0
    said = [line for line in lines[:-1] if line.strip()] or [done.stderr[-200:]]
    said = said[0] if "status" in args else said[-1]
    print(f"{name:<44} {seconds:8.1f} s {peak:7.0f} MiB   {said.strip()[:70]}", flush=True)
    return seconds, peak, said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000_000)
    parser.add_argument("--keep", type=Path, help="build in (or reuse) this folder")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="farm-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)
    try:
        if not Path("outputs/scale/manifest.sqlite").exists():
            started = time.perf_counter()
            build(args.jobs)
            size = Path("outputs/scale/manifest.sqlite").stat().st_size / 2**30
            print(f"built in {time.perf_counter() - started:.0f} s; manifest {size:.1f} GiB")
        print(f"{'':<44} {'wall':>10} {'peak':>11}")
        timed("plan every job with its id (baseline)", PLAN)
        timed("read the manifest once (baseline)", BARE)
        timed("farm status, before the seal", FARM, "status", "recipe=scale")
        timed("farm render, nothing to do (full diff)", FARM, "render", "recipe=scale",
              "runtime=inline")
        timed("farm render, nothing to do (sealed)", FARM, "render", "recipe=scale",
              "runtime=inline")
        timed("farm status (sealed)", FARM, "status", "recipe=scale")
        timed("farm status outputs/scale (sealed)", FARM, "status", "outputs/scale")
        timed(f"farm verify --sample {SAMPLE}", FARM, "verify", "outputs/scale", "--sample",
              str(SAMPLE))
        timed("farm export --format hub", FARM, "export", "outputs/scale", "--format", "hub",
              "--to", "hub")
        timed("farm gallery --where seed<100", FARM, "gallery", "outputs/scale", "--where",
              "seed<100", "--to", "gallery")
    finally:
        if args.keep is None:
            os.chdir("/")
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
