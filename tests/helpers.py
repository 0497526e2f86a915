"""Helpers for tests: small jobs, the command line in this process."""

from __future__ import annotations

import sys

import pytest

from farm import cli
from farm.jobs import Job, Model


def make_job(checkpoint: Model, **fields) -> Job:
    """A small, fast job; any field can be changed."""
    values = dict(vae=None, prompt="a red fox in fresh snow", negative="blurry", seed=1,
                  sampler="euler", scheduler="normal", steps=4, cfg=7.0, width=64, height=64)
    values.update(fields)
    return Job(checkpoint=checkpoint, **values)


def run_farm(*args: str) -> int:
    """Run the command line in this process (torch stays imported); return its exit code."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    return exit_info.value.code


def farm_command() -> list[str]:
    """The installed `farm` script, for tests that need a separate process."""
    return [sys.executable, "-m", "farm"]


def recipe_folder(tmp_path, monkeypatch, **recipes: str):
    """A working directory holding recipes/NAME.yaml for each given text, as a user has."""
    (tmp_path / "recipes").mkdir()
    for name, text in recipes.items():
        (tmp_path / "recipes" / f"{name}.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def planned(recipe, models, loadout=None):
    """The jobs of a recipe with these models (by reference), its input images identified."""
    from farm import plan

    return plan.jobs(recipe, plan.Resolved.given(recipe, models), loadout)
