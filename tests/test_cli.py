"""The command line end to end: render, resume, grow, repair, fail, validate, status."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from farm import outputs, render
from farm.manifest import ManifestDamaged
from tests.helpers import farm_command, manifest_rows, recipe_folder
from tests.helpers import run_farm as run_farm_default
from tests.helpers import run_inline as run_farm

SMALL = """\
name: small
checkpoint: tiny
prompt:
  - a lighthouse on a cliff
  - {text: a red fox in snow, negative: cartoon}
negative: blurry
seeds: 0-2
steps: 4
size: 64x64
batch_size: 4
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    return recipe_folder(tmp_path, monkeypatch, small=SMALL)


def images(folder: Path) -> dict[str, str]:
    """Every PNG of a run folder: relative path -> decoded pixel hash."""
    return {p.relative_to(folder).as_posix(): outputs.pixel_hash(Image.open(p))
            for p in sorted(folder.glob("images/*/*.png"))}


def test_render_writes_every_image_with_its_record(workdir, capsys):
    assert run_farm("render", "recipe=small") == 0
    folder = workdir / "outputs" / "small"
    files = images(folder)
    assert len(files) == 6
    rows = manifest_rows(folder)
    assert {(r["path"], r["pixel_hash"]) for r in rows} == set(files.items())
    assert {r["status"] for r in rows} == {"done"}
    assert (folder / "runs" / "run-0001.yaml").is_file()
    out = capsys.readouterr().out
    assert "Rendered 6 of 6 images" in out and "0 failed" in out
    params, farm = outputs.read_metadata(folder / rows[0]["path"])
    assert farm["id"] == rows[0]["id"] and farm["steps"] == 4 and "Seed: " in params


def test_rerun_renders_nothing_and_says_so(workdir, capsys):
    run_farm("render", "recipe=small")
    folder = workdir / "outputs" / "small"
    before = {p: (folder / p).stat().st_mtime_ns for p in images(folder)}
    capsys.readouterr()
    assert run_farm("render", "recipe=small") == 0
    assert "all 6 images are already done" in capsys.readouterr().out
    assert {p: (folder / p).stat().st_mtime_ns for p in images(folder)} == before


def test_more_seeds_render_only_the_new_ones(workdir, capsys):
    run_farm("render", "recipe=small")
    folder = workdir / "outputs" / "small"
    before = images(folder)
    capsys.readouterr()
    assert run_farm("render", "recipe=small", "seeds=0-4") == 0
    assert "Rendered 4 of 10 images" in capsys.readouterr().out
    after = images(folder)
    assert len(after) == 10 and all(after[p] == h for p, h in before.items())


def test_a_deleted_image_is_rendered_again_with_the_same_pixels(workdir, capsys):
    run_farm("render", "recipe=small")
    folder = workdir / "outputs" / "small"
    before = images(folder)
    victim = sorted(before)[2]
    (folder / victim).unlink()
    capsys.readouterr()
    assert run_farm("render", "recipe=small") == 0
    assert "Rendered 1 of 6 images" in capsys.readouterr().out
    assert images(folder) == before


def test_batch_size_does_not_change_the_plan(workdir, capsys):
    run_farm("render", "recipe=small", "batch_size=1")
    capsys.readouterr()
    assert run_farm("render", "recipe=small", "batch_size=4") == 0
    assert "already done" in capsys.readouterr().out


def test_failed_jobs_are_listed_exit_1_and_are_retried(workdir, capsys, monkeypatch):
    real = render.render

    def flaky(pipe, batch, config, *encoding):
        if any(job.seed == 1 for job in batch.jobs):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(pipe, batch, config, *encoding)

    monkeypatch.setattr(render, "render", flaky)
    assert run_farm("render", "recipe=small", "batch_size=1") == 1
    out = capsys.readouterr().out
    assert "2 failed" in out and "CUDA out of memory (simulated)" in out
    assert run_farm("status", "recipe=small", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["done"], report["failed"], report["pending"]) == (4, 2, 2)
    assert len(report["failures"]) == 2
    monkeypatch.setattr(render, "render", real)
    assert run_farm("render", "recipe=small") == 0
    assert "Rendered 2 of 6" in capsys.readouterr().out


def test_plan_counts_and_writes_nothing(workdir, capsys):
    assert run_farm("plan", "recipe=small", "steps=[4,8]") == 0
    out = capsys.readouterr().out
    assert ("jobs: 12 (1 checkpoint x 1 vae x 1 loras x 1 size x 1 sampler x 1 scheduler x "
            "2 steps x 1 cfg x 1 guidance x 1 clip_skip x 1 emphasis x 2 prompt x 3 seeds, outermost first); "
            "done 0, pending 12") in out
    assert "loras             1  (none)" in out
    assert not (workdir / "outputs").exists()
    run_farm("render", "recipe=small")
    capsys.readouterr()
    run_farm("plan", "recipe=small", "steps=[4,8]")
    assert "done 6, pending 6" in capsys.readouterr().out


def test_status_of_a_run_folder(workdir, capsys):
    run_farm("render", "recipe=small", "seeds=0-1")
    capsys.readouterr()
    assert run_farm("status", "outputs/small") == 0
    assert "outputs/small: 4 done, 0 pending, 0 failed, of 4 planned" in capsys.readouterr().out
    assert run_farm("status", "outputs/small", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["done"] == 4 and report["last_run"]["rendered"] == 4


def test_recipe_by_path_and_packaged_name(workdir, capsys):
    (workdir / "elsewhere").mkdir()
    (workdir / "elsewhere" / "birds.yaml").write_text("prompt: a bird\nsize: 64x64\nsteps: 2\n")
    assert run_farm("render", "recipe=elsewhere/birds.yaml") == 0
    assert len(images(workdir / "outputs" / "birds")) == 1
    assert run_farm("plan", "recipe=demo") == 0
    assert "jobs: 8" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["recipe=small", "step=5"], "unknown field 'step'"),
    (["recipe=small", "size=100x100"], "recipe small: size: got '100x100'"),
    (["recipe=small", "sampler=warp_drive"], "sampler: got 'warp_drive'; unknown sampler"),
    (["recipe=small", "seeds=9-3"], "range end 3 is before its start 9"),
    (["recipe=small", "checkpoint=./no/such/model"], "checkpoint: './no/such/model': no such"),
    (["recipe=small", "vae=./missing-vae"], "vae: './missing-vae': no such"),
    (["recipe=small", "checkpoint=sd15.ckpt"], "pickle files can run arbitrary code"),
    (["recipe=nope"], "recipe: 'nope': not found"),
    (["recipe=small", "runtime=warp"], "'runtime' has no option 'warp'"),
    (["recipe=small", "runtime.wokers=2"], "runtime.wokers"),
    (["recipe=small", "steps=[4,"], "command line"),
])
def test_bad_input_exits_2_before_anything_is_written(workdir, capsys, args, words):
    assert run_farm("render", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("farm: error: ") and words in err
    assert not (workdir / "outputs").exists()


def test_unknown_field_in_a_recipe_file(workdir, capsys):
    (workdir / "recipes" / "typo.yaml").write_text("prompt: a\nsteps: 4\ncfg_scale: 7\n")
    assert run_farm("render", "recipe=typo") == 2
    err = capsys.readouterr().err
    assert "cfg_scale: unknown field (allowed: defaults, name," in err and ", checkpoint," in err


def test_a_recipe_cannot_run_code(workdir, capsys):
    (workdir / "recipes" / "evil.yaml").write_text(
        "prompt: !!python/object/apply:os.system ['touch pwned']\n")
    assert run_farm("render", "recipe=evil") == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not (workdir / "pwned").exists()


@pytest.mark.slow
def test_the_readme_demo_command(tmp_path):
    """`farm render` in an empty folder renders the packaged demo with the tiny model."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run(farm_command() + ["render"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Rendered 8 of 8 images into outputs/demo" in done.stdout
    files = images(tmp_path / "outputs" / "demo")
    assert len(files) == 8 and len(set(files.values())) == 8
    for path in files:
        assert Image.open(tmp_path / "outputs" / "demo" / path).size == (256, 256)


@pytest.mark.slow
def test_sigkill_mid_render_then_resume_finishes_every_image_once(workdir):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    command = farm_command() + ["render", "recipe=small", "seeds=0-11", "steps=8",
                                "batch_size=2", "runtime=inline"]
    folder = workdir / "outputs" / "small"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and done < 4:
        time.sleep(0.05)
        if (folder / "manifest.sqlite").exists():
            try:
                done = sum(r["status"] == "done" for r in manifest_rows(folder))
            except (sqlite3.OperationalError, ManifestDamaged):  # its tables not made yet
                pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 4 <= done < 24, "the render should have been killed part-way"

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = manifest_rows(folder)
    files = images(folder)
    assert len(rows) == 24 and {r["status"] for r in rows} == {"done"}
    assert sorted(files) == sorted(r["path"] for r in rows)  # each image exactly once
    assert all(files[r["path"]] == r["pixel_hash"] for r in rows)
    assert not [p for p in folder.rglob("*") if p.name.endswith(outputs.PARTIAL_SUFFIX)]


def relabelled(workdir: Path, pipeline: str) -> Path:
    """The tiny model's folder, its model_index.json naming another pipeline class."""
    from farm import tiny

    folder = workdir / f"tiny-as-{pipeline}"
    import shutil

    shutil.copytree(tiny.ensure("tiny"), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = pipeline
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("pipeline", ["LatentConsistencyModelPipeline", "PixArtSigmaPipeline",
                                      "NoSuchPipeline"])
def test_a_pipeline_family_farm_does_not_test_is_refused(workdir, capsys, pipeline):
    """Rendered with an SD sampler, these would be wrong images with exit 0."""
    folder = relabelled(workdir, pipeline)
    for command in ("plan", "render"):
        assert run_farm(command, "recipe=small", f"checkpoint={folder}") == 2
        err = capsys.readouterr().err
        assert f"checkpoint: '{folder}' is a {pipeline}; farm renders the families it " \
               "tests: Stable Diffusion 1.x/2.x (StableDiffusionPipeline), SDXL " \
               "(StableDiffusionXLPipeline), Stable Diffusion 1.x/2.x inpainting " \
               "(StableDiffusionInpaintPipeline), SDXL inpainting " \
               "(StableDiffusionXLInpaintPipeline), SD3 (StableDiffusion3Pipeline), Flux.1 " \
               "(FluxPipeline), Flux.1-schnell (FluxPipeline)" in err
        assert not (workdir / "outputs").exists()


def test_tiny_xl_end_to_end(workdir):
    assert run_farm("render", "recipe=small", "checkpoint=tiny-xl", "seeds=0",
                    "vae=[null,tiny-vae]", "clip_skip=2") == 0
    folder = workdir / "outputs" / "small"
    files = images(folder)
    assert len(files) == 4 and len(set(files.values())) == 4
    for path in files:
        parameters, farm = outputs.read_metadata(folder / path)
        assert farm["checkpoint"] == "tiny-xl" and farm["clip_skip"] == 2
        assert "Model: tiny-xl" in parameters and "Clip skip: 2" in parameters
        assert Image.open(folder / path).size == (64, 64)


def test_a_single_file_checkpoint_from_a_recipe(workdir, tiny):
    from tests.ldm import write_single_file

    write_single_file(Path(tiny.path), workdir / "tiny.safetensors")
    (workdir / "recipes" / "single.yaml").write_text(
        "checkpoint: {path: tiny.safetensors, config: tiny}\n"
        "prompt: a red fox\nseeds: 0-1\nsteps: 4\nsize: 64x64\n")
    assert run_farm("render", "recipe=single") == 0
    assert run_farm("render", "recipe=single", "checkpoint=tiny", "name=folder") == 0
    from_file = images(workdir / "outputs" / "single")
    from_folder = images(workdir / "outputs" / "folder")
    assert sorted(from_file.values()) == sorted(from_folder.values())
    parameters, farm = outputs.read_metadata(workdir / "outputs" / "single" / sorted(from_file)[0])
    assert farm["checkpoint"] == "tiny.safetensors?config=tiny" and "Model: tiny," in parameters
    # the inline form, typed on the command line as it is (no Hydra quoting): the same jobs
    assert run_farm("plan", "recipe=single", "checkpoint=tiny.safetensors?config=tiny") == 0


def test_templates_are_recorded_and_planned(workdir, capsys):
    (workdir / "recipes" / "zoo.yaml").write_text(
        "prompt: 'a {animal}, {red|blue}'\nvars: {animal: [cat, dog]}\nseeds: [1, 2, 3, 4]\n"
        "zip: [[prompt, seeds]]\nsteps: 2\nsize: 64x64\n")
    assert run_farm("plan", "recipe=zoo") == 0
    out = capsys.readouterr().out
    assert "prompt+seeds" in out and "zipped" in out and "jobs: 4" in out
    assert run_farm("render", "recipe=zoo") == 0
    folder = workdir / "outputs" / "zoo"
    rows = manifest_rows(folder)
    assert len(rows) == 4
    _, farm = outputs.read_metadata(folder / rows[0]["path"])
    assert farm["template"] == "a {animal}, {red|blue}"
    assert farm["values"] == {"animal": "cat", "{red|blue}": "red"}
    assert farm["prompt"] == "a cat, red" and farm["seed"] == 1
    assert rows[0]["params"]["values"] == {"animal": "cat", "{red|blue}": "red"}


def test_replay_renders_an_image_again_from_its_metadata(workdir, capsys):
    assert run_farm("render", "recipe=small", "seeds=0-1") == 0
    folder = workdir / "outputs" / "small"
    path, pixel_hash = next(iter(images(folder).items()))
    capsys.readouterr()
    assert run_farm_default("replay", str(folder / path), "--to", "again") == 0
    assert "the same pixels as" in capsys.readouterr().out
    again = workdir / "again" / Path(path).name
    assert outputs.pixel_hash(Image.open(again)) == pixel_hash
    _, meta = outputs.read_metadata(again)
    assert meta["batch_size"] == 4  # padded to the recipe's batch size, as the original


def test_replay_refuses_an_image_without_metadata_or_with_other_models(workdir, capsys, tiny):
    Image.new("RGB", (8, 8)).save(workdir / "plain.png")
    assert run_farm_default("replay", str(workdir / "plain.png")) == 2
    assert "no farm metadata to replay" in capsys.readouterr().err
    assert run_farm("render", "recipe=small", "seeds=0") == 0
    folder = workdir / "outputs" / "small"
    source = folder / next(iter(images(folder)))
    parameters, meta = outputs.read_metadata(source)
    meta["checkpoint_identity"] = "0" * 64
    info = PngImagePlugin.PngInfo()
    info.add_text("farm", json.dumps(meta))
    Image.open(source).save(workdir / "edited.png", pnginfo=info)
    assert run_farm_default("replay", str(workdir / "edited.png")) == 2
    assert "the same pixels need the same model" in capsys.readouterr().err


def test_verify_reports_identical_images_and_damaged_files(workdir, capsys):
    assert run_farm("render", "recipe=small") == 0
    folder = workdir / "outputs" / "small"
    capsys.readouterr()
    assert run_farm_default("verify", str(folder), "--all") == 0
    out = capsys.readouterr().out
    assert out.count("identical") == 6 and "6 fine, 0 not." in out
    paths = sorted(images(folder))
    truncated, replaced = folder / paths[0], folder / paths[1]
    truncated.write_bytes(truncated.read_bytes()[:200])
    Image.new("RGB", (64, 64), "red").save(replaced)
    assert run_farm_default("verify", str(folder), "--sample", "2") == 1
    out = capsys.readouterr().out
    assert f"unreadable: {paths[0]}" in out and f"replaced: {paths[1]}" in out
    assert run_farm_default("verify", "recipe=small", "--sample", "0") == 1  # by its recipe
    out = capsys.readouterr().out
    assert f"unreadable: {paths[0]}" in out and f"replaced: {paths[1]}" in out


def test_a_job_the_plan_reaches_twice_is_rendered_once(workdir, capsys):
    (workdir / "dupes.csv").write_text("prompt\na red fox\na red fox\nan owl\n")
    (workdir / "recipes" / "dupes.yaml").write_text(
        "prompt: [{file: ../dupes.csv}, 'a {animal}']\nvars: {animal: [red fox, cat]}\n"
        "seeds: 0-1\nsteps: 2\nsize: 64x64\nbatch_size: 4\n")
    assert run_farm("plan", "recipe=dupes") == 0
    out = capsys.readouterr().out
    assert "jobs: 6 (" in out and "4 more are reached twice" in out and "pending 6 " in out
    assert run_farm("render", "recipe=dupes") == 0
    out = capsys.readouterr().out
    assert "Rendered 6 of 6 images" in out and "4 jobs were reached twice" in out
    assert run_farm("plan", "recipe=dupes") == 0
    assert "done 6, pending 0 " in capsys.readouterr().out
    folder = workdir / "outputs" / "dupes"
    assert len(images(folder)) == len(manifest_rows(folder)) == 6


def test_jpeg_runs_verify_replay_and_keep_their_format(workdir, capsys):
    assert run_farm("render", "recipe=small", "format=jpeg", "quality=80") == 0
    folder = workdir / "outputs" / "small"
    files = sorted(folder.glob("images/*/*"))
    assert {p.suffix for p in files} == {".jpg", ".json"} and len(files) == 12
    parameters, meta = outputs.read_metadata(files[0])
    assert "Seed: " in parameters and meta["quality"] == 80
    capsys.readouterr()
    assert run_farm_default("verify", str(folder), "--sample", "2") == 0
    assert capsys.readouterr().out.count("identical") == 2
    assert run_farm_default("replay", str(files[0]), "--to", "again") == 0
    assert "the same pixels as" in capsys.readouterr().out
    assert (workdir / "again" / files[0].name).is_file()
    files[0].with_suffix(".json").unlink()  # a sidecar gone: verify names it
    assert run_farm_default("verify", str(folder), "--sample", "0") == 1
    assert "its .json sidecar" in capsys.readouterr().out
    assert run_farm("render", "recipe=small", "seeds=0-5") == 2  # png into a jpeg folder
    assert "holds .jpg images; a run folder keeps one format" in capsys.readouterr().err


@pytest.mark.parametrize("name, jobs", [("demo", 8), ("compare", 12)])
def test_packaged_recipes_are_valid(tmp_path, monkeypatch, capsys, name, jobs):
    monkeypatch.chdir(tmp_path)
    assert run_farm("plan", f"recipe={name}") == 0
    assert f"jobs: {jobs} (" in capsys.readouterr().out


# the command line as Hydra and Unix users expect it ---------------------------------------------

def test_options_may_come_between_overrides(workdir, capsys):
    assert run_farm("plan", "recipe=small", "--cfg", "steps=3") == 0
    assert "steps: 3" in capsys.readouterr().out
    assert run_farm("plan", "recipe=small", "-m", "steps=2,4") == 2
    assert "steps='[2,4]'" in capsys.readouterr().err


def test_version_help_and_bad_counts(workdir, capsys):
    from farm import __version__

    assert run_farm_default("--version") == 0
    assert f"farm {__version__}" in capsys.readouterr().out
    assert run_farm_default("render", "--help") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "runtime.max_attempts=3" in text and "143 stopped by SIGTERM" in text
    assert run_farm_default("verify", "outputs/small", "--sample", "-1") == 2
    assert "--sample: got '-1'; expected a whole number, 0 or more" in capsys.readouterr().err


def test_status_alone_lists_the_run_folders(workdir, capsys):
    assert run_farm_default("status") == 2
    assert "outputs/ holds no run folder" in capsys.readouterr().err
    assert run_farm("render", "recipe=small") == 0
    capsys.readouterr()
    assert run_farm_default("status") == 0
    assert "outputs/small: 6 done, 0 pending, 0 failed, of 6 planned" in capsys.readouterr().out


def test_status_json_into_a_closed_pipe_is_quiet(workdir):
    assert run_farm("render", "recipe=small") == 0
    shell = f"{' '.join(farm_command())} status outputs/small --json | head -1"
    done = subprocess.run(shell, shell=True, cwd=workdir, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.stdout.strip() == "{" and "Traceback" not in done.stderr, done.stderr


def test_filters_take_the_caption_and_the_pixel_hash(workdir, capsys, tmp_path):
    assert run_farm("render", "recipe=small") == 0
    folder = workdir / "outputs" / "small"
    first = manifest_rows(folder)[0]
    assert run_farm_default("export", str(folder), "--format", "imagefolder", "--to",
                            str(tmp_path / "a"), "--where", f"pixel_hash={first['pixel_hash']}"
                            ) == 0
    assert run_farm_default("export", str(folder), "--format", "imagefolder", "--to",
                            str(tmp_path / "b"), "--where", "text~FOX") == 0
    assert len(list((tmp_path / "a").rglob("*.png"))) == 1
    assert len(list((tmp_path / "b").rglob("*.png"))) == 3


def test_ctrl_c_in_plan_says_nothing_of_resuming(workdir, capsys, monkeypatch):
    from farm import run

    monkeypatch.setattr(run, "count", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert run_farm("plan", "recipe=small") == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "resume" not in err


@pytest.mark.parametrize("stop, code, said", [("SIGINT", 130, "interrupted"),
                                              ("SIGTERM", 143, "terminated")])
def test_a_stop_while_farm_is_still_importing_exits_as_any_stop(tmp_path, stop, code, said):
    """Ctrl-C or SIGTERM in the second or two farm takes to import its libraries: the usual
    exit code and message, not a traceback or a kill by the signal."""
    script = tmp_path / "early.py"
    script.write_text(
        "import builtins, os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal gives\n"
        "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "import farm.__main__ as command\n"
        "real = builtins.__import__\n"
        "def importing(name, *args, **kwargs):\n"
        "    if name == 'farm.cli':  # the stop lands inside the import\n"
        f"        os.kill(os.getpid(), signal.{stop})\n"
        "        time.sleep(0.5)\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = importing\n"
        "sys.argv = ['farm', 'plan']\n"
        "command.entry()\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == code, done.stderr[-2000:]
    assert f"farm: {said}; nothing was done yet: run the same command again to resume" in \
        done.stderr
    assert "Traceback" not in done.stderr
