"""Helpers shared by the tests, defined once: small jobs and recipes, the command line and a
render in this process, a run folder's manifest rows, a fake hub cache."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from farm import cli
from farm.jobs import Job, Model, Result

# a checkpoint that is planned with but never loaded (its files are nowhere)
CKPT = Model(ref="tiny", path="/nowhere", identity="a" * 64)

# Ids computed by farm before the field table existed, for jobs with fixed model identities: they
# must never change (tests/test_fields.py, tests/test_stages.py)
GOLDEN_CHECKPOINT = Model("tiny", "/nowhere", "0f" * 32)
GOLDEN_VAE = Model("tiny-vae", "/nowhere", "a1" * 32)
GOLDEN_IDS = [
    ({}, "f2b120b7654eaccde860f8e5"),
    ({"vae": GOLDEN_VAE}, "e96d6c1b0d7cd0114846f7e6"),
    ({"prompt": "a fox, ünïcode ✓", "negative": "", "seed": 2**64 - 1},
     "56199007c1051a4c541e0cf5"),
    ({"sampler": "dpmpp_2m", "scheduler": "karras", "steps": 30, "cfg": 5.5, "width": 768,
      "height": 512}, "6e8704b9d48768cecd4bba10"),
    ({"clip_skip": 2, "dtype": "float16"}, "82619f7a10cc74ddcbc8689c"),
]


def make_job(checkpoint: Model, **fields) -> Job:
    """A small, fast job; any field can be changed."""
    values = dict(vae=None, prompt="a red fox in fresh snow", negative="blurry", seed=1,
                  sampler="euler", scheduler="normal", steps=4, cfg=7.0, width=64, height=64)
    values.update(fields)
    return Job(checkpoint=checkpoint, **values)


def result(job: Job, path: str, ok: bool = True) -> Result:
    """What a worker sends back for a job it rendered (or failed)."""
    return Result(job_id=job.id, path=path, pixel_hash="f" * 64 if ok else None, seconds=0.5,
                  batch_size=2, position=0, worker="w", error=None if ok else "boom")


def rendered_images(worker, jobs, tag: str = "x") -> list:
    """Render jobs on a Worker as one batch; the decoded images, checked against the pixel
    hashes the worker reported."""
    import numpy as np
    from PIL import Image

    from farm.jobs import Batch
    from farm.outputs import pixel_hash

    paths = tuple(f"images/00000/{tag}-{i}-{job.id}.png" for i, job in enumerate(jobs))
    results = worker.render(Batch(tuple(jobs), paths))
    assert all(r.ok for r in results), [r.error for r in results]
    images = [np.asarray(Image.open(worker.folder.root / r.path)) for r in results]
    for r, image in zip(results, images):
        assert pixel_hash(Image.fromarray(image)) == r.pixel_hash
    return images


def recipe(base: Path | None = None, **fields):
    """A recipe of these fields (a prompt by default), checked as a recipe file is; prompt
    files and wildcards are read from `base`."""
    from farm.recipe import parse

    return parse({"prompt": "a cat", **fields}, source="test", base=base or Path("."))


def planned(recipe, models, loadout=None):
    """The jobs of a recipe with these models (by reference), its input images identified."""
    from farm import adapters, plan, run

    resolved = plan.Resolved(models, run.identified_inputs(recipe), adapters.Reader(recipe.base))
    return plan.jobs(recipe, resolved, loadout)


def render(*args: str):
    """A render in this process, as `farm render ARGS runtime=inline` does it: run.render on the
    composed settings; its Outcome."""
    from farm import compose, run

    return run.render(compose.compose([*args, "runtime=inline"]))


def run_farm(*args: str) -> int:
    """Run the command line in this process (torch stays imported); return its exit code."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    return exit_info.value.code


def run_inline(*args: str) -> int:
    """The command line with the in-process runtime, for tests that are not about Ray."""
    return run_farm(args[0], "runtime=inline", *args[1:])


def farm_command() -> list[str]:
    """The installed `farm` script, for tests that need a separate process."""
    return [sys.executable, "-m", "farm"]


def as_in_a_terminal() -> None:
    """A child's Ctrl-C and SIGTERM as a terminal leaves them (Popen's preexec_fn): a process
    started in the background by a shell without job control ignores Ctrl-C, and its children
    inherit that (a test run so would see farm ignore the SIGINT it sends, as it should)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def recipe_folder(tmp_path, monkeypatch, **recipes: str):
    """A working directory holding recipes/NAME.yaml for each given text, as a user has."""
    (tmp_path / "recipes").mkdir(exist_ok=True)
    for name, text in recipes.items():
        (tmp_path / "recipes" / f"{name}.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def manifest_rows(folder: Path) -> list[dict]:
    """A run folder's manifest rows (every status, params decoded), read through Manifest."""
    from farm.manifest import Manifest

    with Manifest(Path(folder) / "manifest.sqlite", readonly=True) as manifest:
        return list(manifest.rows())


def fake_hub_cache(tmp_path, source, repo="org/tiny-sd", commit="0123456789abcdef" * 2 + "0" * 8):
    """A Hugging Face cache holding one repo, laid out the way huggingface_hub writes it."""
    cache = tmp_path / "hub"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(source, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return cache, commit


def replayed_after_moving(image: Path, folder: Path, to: Path) -> str:
    """Move an input folder of a rendered image to `to`, then `farm replay` the image: refused
    without --inputs, rendered with it; the pixel hash of the image rendered again."""
    from PIL import Image

    from farm.outputs import pixel_hash

    shutil.move(folder, to)
    again = to.parent / f"{to.name}-replayed"
    assert run_farm("replay", str(image), "--to", str(again)) == 2
    assert run_farm("replay", str(image), "--to", str(again), "--inputs", str(to)) == 0
    return pixel_hash(Image.open(again / image.name))
