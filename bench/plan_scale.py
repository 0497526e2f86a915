"""Time and peak memory to plan a large recipe and diff it against a large manifest.

    python bench/plan_scale.py [--jobs 1000000]

Plans N jobs (10 prompts x N/10 seeds, the tiny model), builds a manifest with a row for every
job marked done (their files absent, the slowest case: every row is checked on disk), then
times `farm plan`'s count and render's pending scan against it. The baseline in the same run is
a bare loop that only builds the jobs, without ids or the manifest.
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import tempfile
import time
from pathlib import Path


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        Path("recipes").mkdir()
        Path("recipes/scale.yaml").write_text(
            "prompt: [a, b, c, d, e, f, g, h, i, j]\n"
            f"seeds: {{start: 0, count: {args.jobs // 10}}}\nsize: 64x64\nbatch_size: 8\n")
        from farm import compose, plan, run
        from farm.finished import Finished
        from farm.manifest import Manifest

        settings = compose.compose(["recipe=scale", "runtime=inline"])
        found = run.resolve_models(settings.recipe)
        print(f"recipe: {settings.recipe.job_count:,} jobs")

        started = time.perf_counter()
        built = sum(1 for _ in plan.jobs(settings.recipe, found))
        baseline = time.perf_counter() - started

        started = time.perf_counter()
        for job in plan.jobs(settings.recipe, found):
            assert job.id
        with_ids = time.perf_counter() - started
        memory_planned = peak_mib()

        settings.folder.root.mkdir(parents=True)
        Manifest(settings.folder.manifest).close()
        with sqlite3.connect(settings.folder.manifest) as db:  # streamed, never held
            db.executemany(
                "INSERT INTO jobs (id, seq, path, status, params) VALUES (?, ?, ?, 'done', '{}')",
                ((job.id, n, f"images/{n // 10_000:05d}/{n:08d}.png")
                 for n, job in enumerate(plan.jobs(settings.recipe, found))))

        started = time.perf_counter()
        counts = run.count(settings.recipe, settings.folder, found)
        diff = time.perf_counter() - started

        started = time.perf_counter()
        with Manifest(settings.folder.manifest, readonly=True) as manifest:
            work = run.pending_work(settings.recipe, found, Finished(settings.folder, manifest))
        scan = time.perf_counter() - started

        print(f"build jobs only (baseline)       {baseline:6.1f} s   {built:,} jobs")
        print(f"build jobs with ids              {with_ids:6.1f} s")
        print(f"plan + diff vs {counts.planned:,}-row manifest  {diff:6.1f} s   "
              f"{counts.pending:,} pending (files absent)")
        print(f"render's pending scan            {scan:6.1f} s   "
              f"{sum(w.left for w in work):,} pending in {len(work)} group(s)")
        print(f"peak memory: {memory_planned:.0f} MiB after planning, {peak_mib():.0f} MiB "
              "after the diff (manifest read at once up to 1M rows, else a chunk at a time)")


if __name__ == "__main__":
    main()
