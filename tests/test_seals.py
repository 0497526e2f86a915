"""A finished plan, remembered (farm/seals.py): a resume or `farm status` of an all-done folder
answers without planning, and anything that could change the answer plans again."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3

import pytest
import torch
from safetensors.torch import save_file

from farm import run, tiny
from tests.helpers import recipe_folder, render
from tests.helpers import run_inline as run_farm

RECIPE = "checkpoint: instant\nprompt: [a fox, a lighthouse]\nseeds: 0-5\nsize: 8x8\n" \
         "batch_size: 2\n"


@pytest.fixture
def sealed(monkeypatch):
    """A block in which streaming the plan fails the test: what runs in it answers from the
    seal."""
    real = run.survey

    @contextlib.contextmanager
    def block():
        def refused(*args, **kwargs):
            raise AssertionError("the plan was streamed")
        monkeypatch.setattr(run, "survey", refused)
        try:
            yield
        finally:
            monkeypatch.setattr(run, "survey", real)
    return block


def status(capsys, *args) -> dict:
    capsys.readouterr()
    assert run_farm("status", *args, "--json") == 0
    return json.loads(capsys.readouterr().out)


def counts(report: dict) -> tuple:
    return report["planned"], report["done"], report["pending"], report["failed"]


def test_a_finished_plan_answers_without_planning_again(tmp_path, monkeypatch, capsys, sealed):
    recipe_folder(tmp_path, monkeypatch, r=RECIPE)
    assert render("recipe=r").summary.rendered == 12
    with sealed():
        again = render("recipe=r")
        by_recipe, by_folder = status(capsys, "recipe=r"), status(capsys, "outputs/r")
        assert run_farm("plan", "recipe=r") == 0
        assert "done 12, pending 0" in capsys.readouterr().out
    assert (again.summary.rendered, again.summary.skipped) == (0, 12)
    assert counts(by_recipe) == counts(by_folder) == (12, 12, 0, 0)
    # the same counts as a full diff
    monkeypatch.setattr(run.seals, "sealed", lambda *args: None)
    assert counts(status(capsys, "recipe=r")) == (12, 12, 0, 0)


def test_a_deleted_image_is_rendered_again(tmp_path, monkeypatch, capsys, sealed):
    recipe_folder(tmp_path, monkeypatch, r=RECIPE)
    render("recipe=r")
    gone = sorted((tmp_path / "outputs" / "r" / "images").glob("*/*.png"))[5]
    gone.unlink()
    assert counts(status(capsys, "recipe=r")) == (12, 11, 1, 0)
    again = render("recipe=r")
    assert (again.summary.rendered, again.summary.skipped) == (1, 11) and gone.is_file()
    with sealed():  # sealed again
        assert render("recipe=r").summary.rendered == 0


def test_an_image_deleted_while_the_render_goes_on_is_not_sealed_over(tmp_path, monkeypatch,
                                                                       sealed):
    from farm import schedule

    real = schedule.run

    def deleting(backend, work, folder, *args, **kwargs):
        real(backend, work, folder, *args, **kwargs)
        next(iter(sorted((folder.root / "images").glob("*/*.png")))).unlink()

    recipe_folder(tmp_path, monkeypatch, r=RECIPE)
    monkeypatch.setattr(schedule, "run", deleting)
    assert render("recipe=r").summary.rendered == 12
    monkeypatch.setattr(schedule, "run", real)
    assert render("recipe=r").summary.rendered == 1
    with sealed():
        assert render("recipe=r").summary.rendered == 0


def test_a_changed_recipe_or_manifest_plans_again(tmp_path, monkeypatch, capsys, sealed):
    recipe_folder(tmp_path, monkeypatch, r=RECIPE)
    render("recipe=r")
    assert render("recipe=r", "seeds=0-6").summary.rendered == 2  # one seed more: a new plan
    assert counts(status(capsys, "recipe=r")) == (12, 12, 0, 0)  # the first plan again
    # a job recorded otherwise than by a render (a manifest edited by hand): no seal holds
    render("recipe=r")
    with sealed():
        render("recipe=r")
    with sqlite3.connect(tmp_path / "outputs" / "r" / "manifest.sqlite") as db:
        db.execute("UPDATE jobs SET status = 'failed' WHERE seq = 3")
        db.execute("UPDATE generation SET value = value + 1")  # (as farm's own writes do)
    assert counts(status(capsys, "recipe=r")) == (12, 11, 1, 1)
    assert render("recipe=r").summary.rendered == 1


def test_an_edited_prompt_file_plans_again(tmp_path, monkeypatch, capsys, sealed):
    recipe_folder(tmp_path, monkeypatch, r=RECIPE.replace(
        "prompt: [a fox, a lighthouse]", "prompt: {file: ../prompts.txt}"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\na lighthouse\n")
    render("recipe=r")
    with sealed():
        assert counts(status(capsys, "recipe=r")) == (12, 12, 0, 0)
    prompts.write_text("a fox\na lighthousE\n")  # the same size
    os.utime(prompts, ns=(prompts.stat().st_atime_ns, prompts.stat().st_mtime_ns + 10**9))
    assert counts(status(capsys, "recipe=r")) == (12, 6, 6, 0)


def test_a_replaced_lora_or_a_new_embedding_plans_again(tmp_path, monkeypatch, capsys, sealed,
                                                       farm_cache):
    recipe_folder(tmp_path, monkeypatch, r="prompt: [a fox <lora:ink:0.5>, a badhands owl]\n"
                  "loras: [[{ref: style, weight: 1}]]\nseeds: 0-1\nsize: 64x64\nsteps: 2\n")
    loras = tmp_path / "recipes" / "loras"
    tiny.write_lora("tiny", loras / "ink.safetensors", "kohya", seed=5)
    tiny.write_lora("tiny", loras / "style.safetensors", "kohya", seed=6)
    assert render("recipe=r").summary.rendered == 4
    # another file under a tag's name, found after the first (a subfolder is searched later)
    tiny.write_lora("tiny", loras / "more" / "ink.safetensors", "kohya", seed=7)
    with sealed():
        assert render("recipe=r").summary.rendered == 0
    os.replace(loras / "more" / "ink.safetensors", loras / "ink.safetensors")
    assert counts(status(capsys, "recipe=r")) == (4, 2, 2, 0)  # the fox's LoRA changed
    assert render("recipe=r").summary.rendered == 2
    with sealed():
        assert render("recipe=r").summary.rendered == 0
    # an embedding named by a word of a prompt: that prompt's jobs are new
    (tmp_path / "recipes" / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))},
              str(tmp_path / "recipes" / "embeddings" / "badhands.safetensors"))
    assert counts(status(capsys, "recipe=r")) == (4, 2, 2, 0)
    assert render("recipe=r").summary.rendered == 2


def test_a_render_that_fails_a_job_seals_nothing(tmp_path, monkeypatch, capsys, sealed):
    from farm import render as rendering

    real = rendering.render

    def picky(pipe, batch, config, *encoding):
        if any("lighthouse" in job.prompt for job in batch.jobs):
            raise MemoryError("no room for lighthouses")
        return real(pipe, batch, config, *encoding)

    recipe_folder(tmp_path, monkeypatch, r=RECIPE)
    monkeypatch.setattr(rendering, "render", picky)
    assert run_farm("render", "recipe=r", "runtime.max_attempts=1") == 1
    assert counts(status(capsys, "recipe=r")) == (12, 6, 6, 6)  # (not sealed: planned)
    monkeypatch.setattr(rendering, "render", real)
    assert render("recipe=r").summary.rendered == 6
    with sealed():
        assert counts(status(capsys, "recipe=r")) == (12, 12, 0, 0)
