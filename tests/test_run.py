"""A render run end to end, as a new user tries it: the promises of the README, kept."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import manifest_rows as rows
from tests.helpers import recipe_folder, render
from tests.helpers import run_farm as run_farm_default
from tests.helpers import run_inline as run_farm


BASE = "steps: 2\nsize: 64x64\n"


# 1. what a job is: sampler spellings, zip and prompt files, prompt-file values -------------------

def test_two_spellings_of_one_sampler_and_schedule_are_refused(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: [a cat, a dog]\nseeds: 0-2\n" + BASE)
    assert run_farm("plan", "recipe=r", "sampler=[DPM++ 2M Karras, dpmpp_2m]",
                    "scheduler=[automatic, karras]") == 2
    err = capsys.readouterr().err
    assert "sampler" in err and "(dpmpp_2m, karras)" in err and "list each pair once" in err
    assert not (tmp_path / "outputs").exists()
    assert run_farm("plan", "recipe=r", "sampler=[DPM++ 2M Karras, euler]") == 0
    assert "jobs: 12 " in capsys.readouterr().out


def test_zip_keeps_every_prompt_file_row_and_its_own_seed(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: {file: ../rows.csv}\nseeds: [10, 11, 12]\n"
                  "zip: [[prompt, seeds]]\n" + BASE)
    (tmp_path / "rows.csv").write_text("prompt,seed\na cat,5\na dog,\nan owl,7\n")
    assert run_farm("plan", "recipe=r") == 0
    assert "jobs: 3 " in capsys.readouterr().out
    assert render("recipe=r").ok
    made = {(r["params"]["prompt"], r["params"]["seed"]) for r in rows(tmp_path / "outputs" / "r")}
    # a row's own seed wins; a row without one takes the seed it is zipped with
    assert made == {("a cat", 5), ("a dog", 11), ("an owl", 7)}


@pytest.mark.parametrize("cell, column, words", [
    ("steps=0", "steps", "got '0'; expected a whole number from 1 to 1000"),
    ("seed=-5", "seed", "got '-5'; expected a whole number from 0 to"),
    ("cfg=-3", "cfg", "got '-3'; expected a number from 0 to 100"),
    ("cfg=nan", "cfg", "got 'nan'; expected a number from 0 to 100"),
])
def test_prompt_file_values_pass_the_recipe_checks(tmp_path, monkeypatch, capsys, cell, column,
                                                   words):
    recipe_folder(tmp_path, monkeypatch, r="prompt: {file: ../rows.csv}\n" + BASE)
    (tmp_path / "rows.csv").write_text(f"prompt,{column}\na cat,1\na dog,{cell.split('=')[1]}\n")
    assert run_farm("render", "recipe=r") == 2
    assert f"rows.csv line 3: column {column}: {words}" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_jsonl_values_are_checked_too(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: {file: ../rows.jsonl}\n" + BASE)
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a cat", "steps": true}\n')
    assert run_farm("plan", "recipe=r") == 2
    assert "rows.jsonl line 1: column steps: got True" in capsys.readouterr().err


# 2. bit-exact re-renders at any batch position ---------------------------------------------------

def test_verify_replay_and_repair_are_bit_exact_at_every_position(tmp_path, monkeypatch,
                                                                   capsys):
    # cfg 1 (no guidance): a call shape where a job's pixels depend on its position (this CPU)
    recipe_folder(tmp_path, monkeypatch, r="prompt: [a red fox, an owl]\nseeds: 0-2\ncfg: 1\n"
                  "format: jpeg\nbatch_size: 3\n" + BASE)
    assert run_farm("render", "recipe=r") == 0
    folder = tmp_path / "outputs" / "r"
    made = rows(folder)
    assert sorted({r["position"] for r in made}) == [0, 1, 2]
    capsys.readouterr()
    assert run_farm_default("verify", str(folder), "--all") == 0
    out = capsys.readouterr().out
    assert out.count("identical") == 6 and "6 fine, 0 not." in out
    later = next(r for r in made if r["position"] == 2)
    assert run_farm_default("replay", str(folder / later["path"]), "--to",
                            str(tmp_path / "again")) == 0
    assert "the same pixels as" in capsys.readouterr().out
    for r in made:  # deleted by hand: each comes back with the pixels it had
        (folder / r["path"]).unlink()
    assert render("recipe=r").ok
    assert {r["path"]: (r["pixel_hash"], r["position"]) for r in rows(folder)} == \
        {r["path"]: (r["pixel_hash"], r["position"]) for r in made}


# 3. templated negatives --------------------------------------------------------------------------

def test_the_recipe_negative_is_a_template_too(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: [a cat, 'a {big|small} {red|green} ball']\n"
                  "negative: '{red|green} cast, {{literal}}'\n" + BASE)
    assert render("recipe=r").ok
    made = {(r["params"]["prompt"], r["params"]["negative"]) for r in rows(tmp_path / "outputs"
                                                                           / "r")}
    assert made == {("a cat", "red cast, {literal}"), ("a cat", "green cast, {literal}"),
                    ("a big red ball", "red cast, {literal}"),
                    ("a big green ball", "green cast, {literal}"),
                    ("a small red ball", "red cast, {literal}"),
                    ("a small green ball", "green cast, {literal}")}


def test_a_slot_shared_by_prompt_and_negative_takes_one_value(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: {text: 'a {big|small} {red|green} ball', "
                  "negative: '{red|green} cast'}\n" + BASE)
    assert run_farm("plan", "recipe=r") == 0
    assert "jobs: 4 " in capsys.readouterr().out
    assert render("recipe=r").ok
    for r in rows(tmp_path / "outputs" / "r"):
        colour = r["params"]["values"]["{red|green}"]
        assert colour in r["params"]["prompt"] and r["params"]["negative"] == f"{colour} cast"


def test_a_templated_negative_with_a_prompt_file_is_refused(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: {file: ../p.txt}\nnegative: '{a|b}'\n" + BASE)
    (tmp_path / "p.txt").write_text("a cat\n")
    assert run_farm("plan", "recipe=r") == 2
    assert "negative column" in capsys.readouterr().err


# 4. recipes are never evaluated ------------------------------------------------------------------

@pytest.mark.parametrize("prompt, words", [
    ("a fox, ${oc.env:HOME}", "calls a resolver, which farm never runs"),
    ("price ${price}", "${price} names no recipe field"),
])
def test_recipes_run_no_resolvers(tmp_path, monkeypatch, capsys, prompt, words):
    recipe_folder(tmp_path, monkeypatch, r=f"prompt: '{prompt}'\n" + BASE)
    assert run_farm("plan", "recipe=r") == 2
    err = capsys.readouterr().err
    assert "recipe r: prompt: got" in err and words in err and "command line" not in err
    assert os.environ["HOME"] not in err.split("got")[1].split(";")[0].replace(prompt, "")


def test_a_literal_dollar_survives_and_fields_may_refer_to_fields(tmp_path, monkeypatch,
                                                                   capsys):
    recipe_folder(tmp_path, monkeypatch, r="name: foxes-${steps}\n"
                  "prompt: 'a $5 fox, costs \\${{price}}, ${size}'\n" + BASE)
    assert render("recipe=r").ok
    (row,) = rows(tmp_path / "outputs" / "foxes-2")
    assert row["params"]["prompt"] == "a $5 fox, costs ${price}, 64x64"


# 5. metadata follows the recipe ------------------------------------------------------------------

def test_changed_labels_reach_the_records_of_finished_images(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: {file: ../rows.csv}\n" + BASE)
    (tmp_path / "rows.csv").write_text("prompt,label\na cat,dgo\n")
    assert run_farm("render", "recipe=r") == 0
    (tmp_path / "rows.csv").write_text("prompt,label\na cat,cat\n")
    capsys.readouterr()
    assert run_farm("render", "recipe=r") == 0
    out = capsys.readouterr().out
    assert "already done" in out and "of 1 finished images" in out
    (row,) = rows(tmp_path / "outputs" / "r")
    assert row["params"]["fields"] == {"label": "cat"}
    assert run_farm_default("export", str(tmp_path / "outputs" / "r"), "--format", "parquet",
                            "--to", str(tmp_path / "x"), "--where", "fields.label=cat") == 0


# 6. the run folder's own tools work from anywhere ------------------------------------------------

def test_status_of_a_run_folder_from_anywhere_after_the_recipe_moved(tmp_path, monkeypatch,
                                                                     capsys):
    work = tmp_path / "work"
    work.mkdir()
    recipe_folder(work, monkeypatch, r="prompt: {file: ../rows.csv}\nseeds: 0-1\n" + BASE)
    (work / "rows.csv").write_text("prompt\na cat\na dog\n")
    assert run_farm("render", "recipe=r") == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (work / "recipes" / "r.yaml").rename(work / "moved.yaml")
    capsys.readouterr()
    assert run_farm("status", str(work / "outputs" / "r")) == 0
    assert "4 done, 0 pending, 0 failed, of 4 planned" in capsys.readouterr().out


# 7. integers stay integers -----------------------------------------------------------------------

@pytest.mark.parametrize("top, fmt, loader", [
    (2**60 + 2, "imagefolder", "imagefolder"),  # datasets' imagefolder holds up to 2**63 - 1
    (2**64 - 1, "parquet", "parquet"),
])
def test_seeds_above_two_to_the_53_stay_whole(tmp_path, monkeypatch, capsys, top, fmt, loader):
    recipe_folder(tmp_path, monkeypatch, r=f"prompt: a cat\nseeds: {top - 2}-{top}\n" + BASE)
    assert run_farm("render", "recipe=r") == 0
    folder = tmp_path / "outputs" / "r"
    capsys.readouterr()
    assert run_farm_default("export", str(folder), "--format", fmt, "--to",
                            str(tmp_path / "hf"), "--where", f"seed={top}") == 0
    assert "Exported 1 images" in capsys.readouterr().out
    import datasets

    source = ({"data_dir": str(tmp_path / "hf")} if loader == "imagefolder" else
              {"data_files": str(tmp_path / "hf" / "manifest-*.parquet")})
    loaded = datasets.load_dataset(loader, **source, cache_dir=str(tmp_path / "cache"))["train"]
    assert loaded.features["seed"].dtype == "uint64" and loaded["seed"][:] == [top]


# 8. prompt files as people save them -------------------------------------------------------------

@pytest.mark.parametrize("name, data, words", [
    ("p.jsonl", b'{"prompt": "a cat"}\n{"prompt": \n', "p.jsonl line 2: not valid JSON"),
    ("p.jsonl", b'{"prompt": "a cat"}\n["a dog"]\n', "p.jsonl line 2: expected a JSON object"),
    ("p.csv", "prompt\nun caf\xe9\n".encode("latin-1"), "p.csv line 2: not UTF-8 text"),
    ("p.txt", "un caf\xe9\n".encode("latin-1"), "p.txt line 1: not UTF-8 text"),
])
def test_bad_prompt_files_are_named(tmp_path, monkeypatch, capsys, name, data, words):
    recipe_folder(tmp_path, monkeypatch, r=f"prompt: {{file: ../{name}}}\n" + BASE)
    (tmp_path / name).write_bytes(data)
    assert run_farm("plan", "recipe=r") == 2
    assert words in capsys.readouterr().err


def test_excel_csv_and_spaced_headers_are_read(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: {file: ../p.csv}\nseeds: 0-4\n" + BASE)
    (tmp_path / "p.csv").write_bytes("\ufeffprompt, seed\nun café, 3\n".encode("utf-8"))
    assert render("recipe=r").ok
    (row,) = rows(tmp_path / "outputs" / "r")
    assert (row["params"]["prompt"], row["params"]["seed"]) == ("un café", 3)


def test_a_repeated_txt_line_is_rendered_once(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: {file: ../p.txt}\n" + BASE)
    (tmp_path / "p.txt").write_text("a cat\na dog\na cat\n")
    assert run_farm("render", "recipe=r") == 0
    assert "Rendered 2 of 2 images" in capsys.readouterr().out
    assert run_farm("render", "recipe=r") == 0
    assert "all 2 images are already done" in capsys.readouterr().out


# 9. contact sheets and filters -------------------------------------------------------------------

def test_two_grids_on_the_same_axes_keep_both_sheets(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: a cat\nseeds: 0-1\ncfg: [5, 7]\n"
                  "grids: [{x: cfg, y: seed}, {x: cfg, y: seed, where: [seed=0]}]\n" + BASE)
    assert render("recipe=r").ok
    sheets = sorted(p.name for p in (tmp_path / "outputs" / "r" / "grids").glob("*.png"))
    assert sheets == ["grid1-cfg-seed.png", "grid2-cfg-seed.png"]


def test_images_of_another_dtype_get_their_own_sheet(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: a cat\nseeds: 0-1\ncfg: [5, 7]\n" + BASE)
    assert render("recipe=r").ok
    assert run_farm("render", "recipe=r", "dtype=float32") == 0
    folder = tmp_path / "outputs" / "r"
    capsys.readouterr()
    assert run_farm_default("grid", str(folder), "--x", "cfg", "--y", "seed") == 0
    out = capsys.readouterr().out
    assert out.count("2 x 2 cells") == 2  # one sheet per dtype: all 8 images shown


def test_where_matches_alternatives_booleans_and_numbers_in_text(tmp_path, monkeypatch,
                                                                 capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: ['a {red|green} ball', {file: ../p.jsonl}, "
                  "{file: ../q.csv}]\n" + BASE)
    (tmp_path / "p.jsonl").write_text('{"prompt": "an owl", "night": false}\n')
    (tmp_path / "q.csv").write_text("prompt,weight\na fox,1.0\n")
    assert run_farm("render", "recipe=r") == 0
    folder = tmp_path / "outputs" / "r"
    for where, count in (("values.{red|green}=red", 1), ("fields.night=false", 1),
                         ("fields.night=False", 1), ("fields.weight=1", 1),
                         ("fields.weight>0.5", 1)):
        capsys.readouterr()
        assert run_farm_default("export", str(folder), "--format", "parquet", "--to",
                                str(tmp_path / where.replace("|", "_")), "--where", where) == 0
        assert f"Exported {count} images" in capsys.readouterr().out, where


# 10. a damaged file does not stop verify ---------------------------------------------------------

def test_verify_all_names_a_truncated_image_and_compares_the_rest(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: a cat\nseeds: 0-2\n" + BASE)
    assert run_farm("render", "recipe=r") == 0
    folder = tmp_path / "outputs" / "r"
    damaged = folder / rows(folder)[0]["path"]
    damaged.write_bytes(damaged.read_bytes()[:300])
    capsys.readouterr()
    assert run_farm_default("verify", str(folder), "--all") == 1
    out = capsys.readouterr().out
    assert f"unreadable: {rows(folder)[0]['path']}" in out and out.count("identical") == 2


# 11. the run report ------------------------------------------------------------------------------

def test_each_render_writes_a_report_that_status_shows(tmp_path, monkeypatch, capsys):
    from farm import render

    real = render.render

    def picky(pipe, batch, config, *encoding):
        if any("owl" in job.prompt for job in batch.jobs):
            raise MemoryError("no room for owls")
        return real(pipe, batch, config, *encoding)

    monkeypatch.setattr(render, "render", picky)
    recipe_folder(tmp_path, monkeypatch, r="prompt: [a cat, an owl]\nseeds: 0-1\n" + BASE)
    assert run_farm("render", "recipe=r", "runtime.max_attempts=1") == 1
    folder = tmp_path / "outputs" / "r"
    report = json.loads((folder / "report.json").read_text())
    assert report["jobs"] == {"planned": 4, "done": 2, "rendered": 2, "skipped": 0, "failed": 2,
                              "unfinished": 0, "repeats": 0}
    assert report["failures"]["MemoryError"]["count"] == 2
    assert "no room for owls" in report["failures"]["MemoryError"]["examples"][0]["error"]
    assert report["per_worker"]["inline"]["images"] == 2 and report["images_per_second"] > 0
    assert report["loads"]["tiny"]["count"] == 1 and report["first_image_seconds"] > 0
    assert report["versions"]["torch"] and report["versions"]["diffusers"]
    capsys.readouterr()
    assert run_farm("status", str(folder), "--json") == 0
    assert json.loads(capsys.readouterr().out)["report"] == report
    assert run_farm("status", str(folder)) == 0
    out = capsys.readouterr().out
    assert "Last render: 2 rendered" in out and "Failed with MemoryError: 2" in out


# 12. faults refused up front, models checked where they load ----------------------------------

def test_a_busy_folder_is_refused_before_any_worker_starts(tmp_path, monkeypatch, capsys):
    import time

    from farm import cluster
    from farm.outputs import RunFolder

    def never(*args, **kwargs):
        raise AssertionError("a worker was started for a busy folder")

    monkeypatch.setattr(cluster, "RayBackend", never)
    recipe_folder(tmp_path, monkeypatch, r="prompt: a cat\n" + BASE)
    with RunFolder(tmp_path / "outputs" / "r").locked():
        started = time.monotonic()
        assert run_farm_default("render", "recipe=r") == 2  # the Ray runtime
        assert time.monotonic() - started < 10
    assert "another farm render is writing to" in capsys.readouterr().err


@pytest.mark.parametrize("setting, words", [
    ("runtime.queue_depth=0", "runtime.queue_depth: got 0; expected a whole number from 1"),
    ("runtime.max_pipelines=0", "runtime.max_pipelines: got 0"),
    ("runtime.max_attempts=0", "runtime.max_attempts: got 0"),
    ("runtime.device=cuda", "torch sees no CUDA GPU here"),
    ("runtime.device=tpu", "runtime.device: got 'tpu'; allowed: cpu, cuda"),
    ("runtime.outputs=nfs", "runtime.outputs: got 'nfs'; allowed: auto, driver, shared"),
])
def test_runtime_settings_that_cannot_work_are_refused(tmp_path, monkeypatch, capsys, setting,
                                                      words):
    recipe_folder(tmp_path, monkeypatch, r="prompt: a cat\n" + BASE)
    assert run_farm("render", "recipe=r", setting) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_a_model_changed_after_planning_fails_its_jobs_with_the_reason(tmp_path, tiny, tiny_vae):
    from farm.jobs import Batch
    from farm.worker import Device, Worker
    from tests.helpers import make_job

    from farm import models

    vae = tmp_path / "vae"
    shutil.copytree(tiny_vae.path, vae)
    planned = models.resolve(str(vae), "vae")
    weights = vae / "diffusion_pytorch_model.safetensors"
    shutil.copy(Path(tiny.path) / "vae" / "diffusion_pytorch_model.safetensors", weights)
    worker = Worker(tmp_path / "run", device=Device("cpu", "float32"))
    result, = worker.render(Batch((make_job(tiny, vae=planned),), ("images/00000/x.png",)))
    assert not result.ok and "not " + planned.identity[:16] + "... as planned" in result.error
    assert not (tmp_path / "run" / "images" / "00000" / "x.png").exists()


def test_verify_and_replay_find_a_model_that_moved(tmp_path, monkeypatch, capsys, tiny):
    recipe_folder(tmp_path, monkeypatch, r="prompt: a cat\nseeds: 0-1\n" + BASE)
    shutil.copytree(tiny.path, tmp_path / "models" / "mine")
    assert run_farm("render", "recipe=r", "checkpoint=models/mine") == 0
    (tmp_path / "models" / "mine").rename(tmp_path / "models" / "moved")
    folder = tmp_path / "outputs" / "r"
    capsys.readouterr()
    assert run_farm("status", str(folder)) == 0  # needs no model at all
    assert "2 done, 0 pending" in capsys.readouterr().out
    assert run_farm_default("verify", str(folder), "--all") == 1  # each image says why
    assert capsys.readouterr().out.count("--model models/mine=NEW_PLACE") == 2
    assert run_farm_default("verify", str(folder), "--all", "--model",
                            "models/mine=models/moved") == 0
    assert capsys.readouterr().out.count("identical") == 2
    image = next(folder.glob("images/*/*.png"))
    assert run_farm_default("replay", str(image), "--to", str(tmp_path / "again"), "--model",
                            "models/mine=models/moved") == 0
    assert "the same pixels" in capsys.readouterr().out


@pytest.mark.parametrize("writer", ["shared", "driver"])
def test_a_full_disk_stops_the_run_cleanly_and_it_resumes(tmp_path, monkeypatch, capsys, writer):
    """The worker writing (shared) or the driver writing what the worker sent (driver)."""
    import errno

    from farm import outputs

    real, written = outputs.write_atomic, []

    def filling(path, data):
        if path.suffix == ".png":
            if len(written) >= 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            written.append(path)
        real(path, data)

    monkeypatch.setattr(outputs, "write_atomic", filling)
    recipe_folder(tmp_path, monkeypatch, r="prompt: [a cat, a dog]\nseeds: 0-3\nbatch_size: 2\n"
                  + BASE)
    assert run_farm("render", "recipe=r", f"runtime.outputs={writer}") == 1
    out = capsys.readouterr().out
    assert "The run stopped: could not write images/00000/" in out
    assert "No space left on device" in out and "run the same command again" in out
    folder = tmp_path / "outputs" / "r"
    made = rows(folder)
    assert {r["status"] for r in made} <= {"done", "queued"}  # no failures charged, no retries
    assert sum(r["status"] == "done" for r in made) == 3 and len(written) == 3
    assert not list(folder.rglob("*.partial"))
    monkeypatch.setattr(outputs, "write_atomic", real)  # room again
    assert run_farm("render", "recipe=r", f"runtime.outputs={writer}") == 0
    assert "Rendered 5 of 8 images" in capsys.readouterr().out
    files = sorted(p.relative_to(folder).as_posix() for p in folder.glob("images/*/*.png"))
    assert files == sorted(r["path"] for r in rows(folder)) and len(files) == 8


def test_a_damaged_manifest_is_rebuilt_from_the_images(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: ['a {red|blue} fox', an owl]\nseeds: 0-1\n"
                  "batch_size: 3\ncfg: 1\n" + BASE)
    assert run_farm("render", "recipe=r") == 0
    folder = tmp_path / "outputs" / "r"
    before = {r["id"]: (r["path"], r["pixel_hash"], r["position"], r["params"])
              for r in rows(folder)}
    (folder / "manifest.sqlite").write_bytes(b"this is not a database" * 100)
    capsys.readouterr()
    assert run_farm("status", str(folder)) == 2
    assert f"rebuild it with farm rebuild {folder}" in capsys.readouterr().err
    assert run_farm_default("rebuild", str(folder)) == 0
    assert "from 6 images" in capsys.readouterr().out
    after = {r["id"]: (r["path"], r["pixel_hash"], r["position"], r["params"])
             for r in rows(folder)}
    assert after == before
    assert run_farm_default("verify", str(folder), "--all") == 0
    assert run_farm("render", "recipe=r") == 0
    assert "all 6 images are already done" in capsys.readouterr().out
    (folder / "manifest.sqlite").unlink()  # deleted: the same
    assert run_farm_default("rebuild", str(folder)) == 0
    assert {r["id"] for r in rows(folder)} == set(before)


def test_one_vae_given_two_ways_is_listed_once(tmp_path, monkeypatch, capsys, tiny):
    """A checkpoint folder and its vae/ keep their own identities (existing run folders'
    ids), so listing both would render the same images twice: refused."""
    recipe_folder(tmp_path, monkeypatch, r="prompt: a cat\n" + BASE)
    shutil.copytree(tiny.path, tmp_path / "ckpt")
    assert run_farm("plan", "recipe=r", "vae=[ckpt, ckpt/vae]") == 2
    assert "'ckpt' and 'ckpt/vae' are the same VAE weights" in capsys.readouterr().err
    assert run_farm("plan", "recipe=r", "vae=[ckpt, tiny-vae]") == 0


def test_images_the_driver_or_a_pool_writes_are_the_images_a_worker_writes(tmp_path, monkeypatch,
                                                                          capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: [a cat, a dog]\nseeds: 0-1\nbatch_size: 2\n"
                  "format: webp\n" + BASE)
    assert render("recipe=r", "outputs=shared").ok
    assert render("recipe=r", "runtime.outputs=driver", "outputs=driven").ok
    assert render("recipe=r", "runtime.encode_threads=3", "outputs=pooled").ok
    shared = tmp_path / "shared" / "r"
    names = sorted(p.relative_to(shared) for p in shared.glob("images/*/*"))
    assert len(names) == 8
    for other in (tmp_path / "driven" / "r", tmp_path / "pooled" / "r"):
        assert names == sorted(p.relative_to(other) for p in other.glob("images/*/*"))
        for name in names:  # image and sidecar, byte for byte
            assert (shared / name).read_bytes() == (other / name).read_bytes()


def test_a_manifest_on_a_full_disk_stops_the_run_cleanly_and_it_resumes(tmp_path, monkeypatch,
                                                                        capsys):
    """SQLite's own "database or disk is full" (its size capped a few pages above what it
    holds when the run opens it), not an imitation of it."""
    from farm import manifest as manifests

    real_init = manifests.Manifest.__init__

    def capped(self, path, readonly=False):
        real_init(self, path, readonly)
        if not readonly:
            (pages,) = self.db.execute("PRAGMA page_count").fetchone()
            self.db.execute(f"PRAGMA max_page_count = {pages + 4}")

    monkeypatch.setattr(manifests.Manifest, "__init__", capped)
    recipe_folder(tmp_path, monkeypatch, r="prompt: [a cat, a dog]\nseeds: 0-19\nbatch_size: 2\n"
                  + BASE)
    assert run_farm("render", "recipe=r") == 1
    out = capsys.readouterr()
    assert "database or disk is full" in out.out + out.err
    assert "Traceback" not in out.out + out.err
    folder = tmp_path / "outputs" / "r"
    assert not list(folder.rglob("*.partial"))
    monkeypatch.setattr(manifests.Manifest, "__init__", real_init)  # room again
    assert render("recipe=r").ok
    files = sorted(p.relative_to(folder).as_posix() for p in folder.glob("images/*/*.png"))
    made = rows(folder)
    assert len(made) == 40 and {r["status"] for r in made} == {"done"}
    assert files == sorted(r["path"] for r in made)


@pytest.mark.slow
def test_a_second_writer_the_lock_misses_is_refused(tmp_path, monkeypatch, capsys):
    """Two renders on one run folder from machines whose file locks do not see each other
    (some NFS): the second, with the lock made blind here, is refused by the manifest while
    the first (a real process) renders; once it has stopped, a render goes ahead."""
    import contextlib
    import os
    import signal
    import socket
    import subprocess
    import time

    from farm.manifest import ManifestDamaged
    from farm.outputs import RunFolder
    from tests.helpers import farm_command

    recipe_folder(tmp_path, monkeypatch, r="prompt: [a cat, a dog]\nseeds: 0-39\n" + BASE)
    first = subprocess.Popen(farm_command() + ["render", "recipe=r", "runtime=inline"],
                             cwd=tmp_path, env={**os.environ, "TQDM_DISABLE": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = tmp_path / "outputs" / "r" / "manifest.sqlite"

    def first_image_recorded() -> bool:
        """A done row: never an error while the first render is still making the manifest
        (the file exists before its tables do)."""
        try:
            return any(r["status"] == "done" for r in rows(manifest.parent))
        except (OSError, ManifestDamaged, sqlite3.DatabaseError):
            return False

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None and not first_image_recorded():
        time.sleep(0.1)
    monkeypatch.setattr(RunFolder, "locked", lambda self: contextlib.nullcontext())
    assert first.poll() is None, "the first render ended before the second could start"
    assert run_farm("render", "recipe=r", "runtime=inline") == 2
    err = capsys.readouterr().err
    assert f"another farm render, on {socket.gethostname()} (pid {first.pid})" in err
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143
    assert render("recipe=r", "runtime=inline").ok
    assert {r["status"] for r in rows(manifest.parent)} == {"done"}
    # a claim left by a writer that stopped answering a while ago does not block
    with sqlite3.connect(manifest) as db:
        db.execute("INSERT INTO writer VALUES (1, 'elsewhere', 1, ?)", (time.time() - 3600,))
    assert render("recipe=r", "runtime=inline", "seeds=0-40").ok


def test_a_call_out_of_gpu_memory_is_split_and_nothing_fails(tmp_path, monkeypatch, capsys):
    """An injected CUDA out-of-memory error for calls of more than 2 images: those jobs and the
    group's later batches go in calls of 2; no job fails or is charged an attempt, and each
    image records the call size it was rendered in."""
    import torch

    from farm import render as rendering

    real, sizes = rendering.render, []

    def small_gpu(pipe, batch, config, *encoding):
        sizes.append(len(batch.shape))
        if len(batch.shape) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pipe, batch, config, *encoding)

    monkeypatch.setattr(rendering, "render", small_gpu)
    recipe_folder(tmp_path, monkeypatch, r="prompt: [a cat, a dog]\nseeds: 0-4\nbatch_size: 4\n"
                  + BASE)
    assert run_farm("render", "recipe=r") == 0
    assert "Rendered 10 of 10" in capsys.readouterr().out
    made = rows(tmp_path / "outputs" / "r")
    assert {(r["status"], r["attempts"], r["batch_size"]) for r in made} == {("done", 1, 2)}
    # the calls of 4 already in flight fail (runtime.queue_depth: 2), then the group fits
    first_fit = sizes.index(2)
    assert 1 <= sizes.count(4) <= 2 and set(sizes[first_fit:]) == {2}
    # the images are those a batch_size 2 run renders
    monkeypatch.setattr(rendering, "render", real)
    assert render("recipe=r", "batch_size=2", "outputs=two").ok
    two = {r["id"]: r["pixel_hash"] for r in rows(tmp_path / "two" / "r")}
    assert two == {r["id"]: r["pixel_hash"] for r in made}


# 12. operations: run records, reports, signals, probes ------------------------------------------

def test_after_a_rebuild_runs_are_kept_and_no_run_record_is_overwritten(tmp_path, monkeypatch,
                                                                          capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: a fox\nseeds: 0-1\n" + BASE)
    assert render("recipe=r").ok
    folder = tmp_path / "outputs" / "r"
    first = (folder / "runs" / "run-0001.yaml").read_bytes()
    for damaged in (b"this is not a database" * 100, None):  # damaged, then deleted
        if damaged is None:
            (folder / "manifest.sqlite").unlink()
        else:
            (folder / "manifest.sqlite").write_bytes(damaged)
        assert run_farm_default("rebuild", str(folder)) == 0
        capsys.readouterr()
        assert run_farm("status", str(folder)) == 0  # its last run read back from runs/
        assert "has no recorded run" not in capsys.readouterr().err
    assert render("recipe=r", "seeds=0-2").ok  # a run after the rebuild: the next number
    assert (folder / "runs" / "run-0001.yaml").read_bytes() == first
    assert (folder / "runs" / "run-0002.yaml").is_file()


def test_a_rebuild_keeps_the_attempts_a_readable_manifest_counted(tmp_path, monkeypatch):
    recipe_folder(tmp_path, monkeypatch, r="prompt: a fox\nseeds: 0-1\n" + BASE)
    assert render("recipe=r").ok
    folder = tmp_path / "outputs" / "r"
    with sqlite3.connect(folder / "manifest.sqlite") as db:  # a job failed twice, then was done
        db.execute("UPDATE jobs SET attempts = 3 WHERE seq = 0")
    assert run_farm_default("rebuild", str(folder)) == 0
    assert sorted(r["attempts"] for r in rows(folder)) == [1, 3]


def test_a_render_with_nothing_to_do_keeps_the_report(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: a fox\nseeds: 0-1\n" + BASE)
    assert render("recipe=r").ok
    report = tmp_path / "outputs" / "r" / "report.json"
    before = report.read_bytes()
    assert run_farm("render", "recipe=r") == 0
    assert "already done" in capsys.readouterr().out
    assert report.read_bytes() == before
    assert json.loads(before)["jobs"]["rendered"] == 2


def test_sigterm_inside_a_wait_that_loses_its_type_still_exits_143(tmp_path, monkeypatch,
                                                                    capsys):
    """Ray's ray.wait turns whatever signal lands in it into a plain KeyboardInterrupt: what
    was received decides, and the summary says the render was terminated."""
    import signal

    from farm import run, schedule

    def waits_in_ray(*args, **kwargs):
        try:
            run.terminate(signal.SIGTERM, None)  # the handler runs inside the wait
        except run.Terminated:
            raise KeyboardInterrupt from None  # and comes out as Ray raises it

    real = schedule.run
    monkeypatch.setattr(schedule, "run", waits_in_ray)
    recipe_folder(tmp_path, monkeypatch, r="prompt: a fox\nseeds: 0-3\n" + BASE)
    assert run_farm("render", "recipe=r") == 143
    captured = capsys.readouterr()
    assert "terminated; what finished is recorded" in captured.err
    assert "no worker was left" not in captured.out
    monkeypatch.setattr(schedule, "run", real)
    assert render("recipe=r").ok  # and a Ctrl-C in a later render is a Ctrl-C again
    monkeypatch.setattr(schedule, "run", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert run_farm("render", "recipe=r", "seeds=0-5") == 130


def test_probe_files_of_killed_renders_are_removed(tmp_path, monkeypatch):
    recipe_folder(tmp_path, monkeypatch, r="prompt: a fox\nseeds: 0-1\n" + BASE)
    assert render("recipe=r").ok
    folder = tmp_path / "outputs" / "r"
    (folder / ".probe-4194000").write_text("token")  # a driver killed with SIGKILL left it
    assert render("recipe=r", "seeds=0-2").ok
    assert not list(folder.glob(".probe-*"))


def test_a_resume_hands_out_no_finished_job_the_plan_reaches_twice(tmp_path, monkeypatch,
                                                                   capsys):
    recipe_folder(tmp_path, monkeypatch, r="prompt: ['a {cat|dog}', a cat]\n" + BASE)
    assert run_farm("render", "recipe=r") == 0
    assert "1 jobs were reached twice" in capsys.readouterr().out
    dog = next(p for p in (tmp_path / "outputs" / "r").glob("images/*/*.png") if "dog" in p.name)
    dog.unlink()
    assert run_farm("render", "recipe=r") == 0
    out = capsys.readouterr().out
    assert "Rendered 1 of 2" in out and "reached twice" not in out
