"""What a resume costs at scale, against planning once plus reading the manifest once.

    python bench/plan_scale.py [--jobs 1000000]

Plans N jobs (10 prompts x N/10 seeds, the tiny model) and builds a finished run folder for
them: a manifest row marked done for every job, and an empty file for each image (only its
presence is checked). Then times, in the same run:

- the baselines: planning every job with its id once; reading the whole manifest once;
- `farm render` on the finished folder (`run.render`: nothing to do);
- a resume with 1% of the images deleted: the pass over the plan that finds them and the
  batches handed to workers (rendering left out: run.survey, then every batch drawn).

The goal (issue "Recipe axes as table rows"): a resume costs no more than the two baselines.
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


def timed(call):
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

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
        folder = settings.folder
        print(f"recipe: {settings.recipe.job_count:,} jobs")

        # 1. a finished run folder, built from the real plan
        folder.root.mkdir(parents=True)
        Manifest(folder.manifest).close()
        paths = []
        with sqlite3.connect(folder.manifest) as db:  # streamed, never held
            def rows():
                for n, job in enumerate(plan.jobs(settings.recipe, found)):
                    path = f"images/{n // 10_000:05d}/{n:08d}.png"
                    paths.append(path)
                    yield job.id, n, path
            db.executemany("INSERT INTO jobs (id, seq, path, status, params) "
                           "VALUES (?, ?, ?, 'done', '{}')", rows())
        for shard in {p.rpartition("/")[0] for p in paths}:
            (folder.root / shard).mkdir(parents=True)
        for path in paths:
            os.close(os.open(folder.root / path, os.O_CREAT | os.O_WRONLY))

        # 2. the baselines
        planned, plan_seconds = timed(lambda: sum(1 for job in plan.jobs(settings.recipe, found)
                                                  if job.id))
        with Manifest(folder.manifest, readonly=True) as manifest:
            rows_read, read_seconds = timed(lambda: len(manifest.lookup()))
        baseline = plan_seconds + read_seconds
        memory_before = peak_mib()

        # 3. farm render on the finished folder: nothing to do
        outcome, noop_seconds = timed(lambda: run.render(settings))
        assert outcome.summary.rendered == 0 and outcome.summary.skipped == planned

        # 4. a resume with 1% of the images gone: the pass and the batches, not the rendering
        for path in paths[::100]:
            os.unlink(folder.root / path)

        def resume_plan() -> int:
            with Manifest(folder.manifest) as manifest:
                survey = run.survey(settings.recipe, folder, found, manifest)
                work = survey.work(settings.recipe, found, Finished(folder, manifest))
                return sum(len(batch.jobs) for w in work for batch in w.batches)
        pending, resume_seconds = timed(resume_plan)

        print(f"plan every job with its id (baseline a)   {plan_seconds:6.1f} s   {planned:,} jobs")
        print(f"read the manifest once (baseline b)       {read_seconds:6.1f} s   "
              f"{rows_read:,} rows")
        print(f"farm render, nothing to do                {noop_seconds:6.1f} s   "
              f"{noop_seconds / baseline:.2f}x (a + b)")
        print(f"resume with 1% missing: plan + batches    {resume_seconds:6.1f} s   "
              f"{resume_seconds / baseline:.2f}x (a + b), {pending:,} pending")
        print(f"peak memory: {memory_before:.0f} MiB after the baselines, {peak_mib():.0f} MiB "
              "after the resumes")


if __name__ == "__main__":
    main()
