"""The job-field table and the recipe keys that set its fields: every row reaches everything
derived from it (plan, Job, id, infotext, manifest, export columns, replay); ids never change."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file

from farm import fields, keys, outputs, plan, replay, run, tiny
from farm.compose import compose
from farm.fields import BY_NAME, FIELDS
from farm.jobs import Job
from tests.helpers import (GOLDEN_CHECKPOINT, GOLDEN_IDS, make_job, manifest_rows,
                           run_farm, run_inline)

LEGACY = Path(__file__).parent / "data" / "legacy"

# Recipes that between them set every axis to a value other than its default (stages that farm
# does not combine need recipes of their own)
COMMON = "size: 64x64\nsteps: 2\nseeds: 3\nbatch_size: 2\ndtype: float32\n"
WALKS = {
    "every": """\
checkpoint: tiny
vae: tiny-vae
loras: [{ref: ink, weight: 0.5}]
prompt: [{text: "a (red:1.2) fox with badhands", negative: blurry}, a hare]
sampler: dpmpp_2m
scheduler: karras
cfg: 6.5
clip_skip: 2
emphasis: none
""" + COMMON,
    "images": "prompt: a hare\ninit: in.png\ndenoise: 0.5\nresize: crop\nimg2img_steps: a1111\n"
              + COMMON,
    "hires": "prompt: a hare\nhires: {scale: 1.5, steps: 2, denoise: 0.5}\n" + COMMON,
    "refiner": "checkpoint: tiny-xl\nprompt: a hare\n"
               "refiner: {checkpoint: tiny-xl-refiner, switch_at: 0.7}\n" + COMMON,
    "sd3": "checkpoint: tiny-sd3\nprompt: a hare\nmax_sequence_length: 64\n" + COMMON,
    "flux": "checkpoint: tiny-flux\nprompt: a hare\nguidance: 2.5\n" + COMMON,
    "inpaint": "checkpoint: tiny-inpaint\nprompt: a hare\ninit: in.png\nmask: mask.png\n"
               "mask_blur: 6\ninpaint_full_res: true\ninpaint_full_res_padding: 16\n"
               "inpainting_fill: fill\n" + COMMON,
    "control": "prompt: a hare\ncontrol: {model: tiny-controlnet, image: in.png, preprocessor: "
               "canny, weight: 0.8, start: 0.1, end: 0.9, guess_mode: true}\nresize: fill\n"
               + COMMON,
}


def test_the_job_and_the_table_name_the_same_fields():
    names = [f.name for f in dataclasses.fields(Job) if f.name != "context"]
    assert sorted(names) == sorted(fields.BY_NAME)
    assert all(f.role in (fields.LOAD, fields.BATCH, fields.IMAGE) for f in FIELDS)


@pytest.fixture(scope="module")
def walked(tmp_path_factory, farm_cache):
    """Each walk recipe rendered (in this process, through run.render)."""
    root = tmp_path_factory.mktemp("walks")
    tiny.write_lora("tiny", root / "loras" / "ink.safetensors", "kohya", seed=5)
    (root / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))},
              str(root / "embeddings" / "badhands.safetensors"))
    noise = np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "in.png")
    Image.fromarray((noise[..., 0] > 128).astype(np.uint8) * 255).save(root / "mask.png")
    for name, text in WALKS.items():
        (root / f"{name}.yaml").write_text(text)
        settings = compose([f"recipe={root / name}.yaml", "runtime=inline",
                            f"outputs={root / 'out'}"])
        assert run.render(settings).ok, name
    return root


@pytest.mark.parametrize("name", WALKS)
def test_every_row_walks_from_recipe_to_replay(walked, name, capsys, tmp_path):
    settings = compose([f"recipe={walked / name}.yaml", "runtime=inline",
                        f"outputs={walked / 'out'}"])
    recipe, folder = settings.recipe, walked / "out" / name
    used = [k for k in keys.AXES if recipe.uses(k.name)]
    # 1. farm plan shows each axis the recipe uses
    capsys.readouterr()
    assert run_inline("plan", f"recipe={walked / name}.yaml", f"outputs={walked / 'out'}") == 0
    shown = capsys.readouterr().out
    for key in used:
        assert f"  {key.name} " in shown, key.name
    # 2. the plan's Jobs are the rendered ones: the same ids, every field recorded alike in
    #    the image's `farm` JSON and in the manifest, and read back into the same Job
    planned = {job.id: job for job in plan.jobs(recipe, run.resolve_models(recipe))}
    rows = {r["id"]: r for r in manifest_rows(folder)}
    assert set(rows) == set(planned) and len(rows) == recipe.job_count
    image = folder / next(iter(rows.values()))["path"]
    infotext, meta = outputs.read_metadata(image)
    job = planned[meta["id"]]
    record = job.to_dict()
    assert replay.job_from(meta, str(image)).id == job.id  # its models found again
    for key in used:
        for name_ in key.sets:
            f = BY_NAME[name_]
            assert meta[name_] == record[name_] == rows[job.id]["params"][name_], name_
            # 3. its A1111 infotext keys, where it writes any for this job
            for label in f.infotext(job):
                assert f"{label}: " in infotext, (key.name, label)
    # 4. the export columns
    import pyarrow.parquet as pq

    assert run_farm("export", str(folder), "--format", "parquet", "--to", str(tmp_path)) == 0
    columns = pq.read_schema(tmp_path / "manifest-00000-of-00001.parquet").names
    for key in used:
        assert set(key.sets) <= set(columns), key.name
    # 5. replay renders the image again, the same pixels
    again, same = replay.replay(image, tmp_path / "again")
    assert same and again.exists()


def test_the_walks_cover_every_axis_and_every_job_field():
    covered = set()
    for text in WALKS.values():
        covered |= {k for k, key in keys.BY_KEY.items()
                    if f"\n{key.within or k}:" in f"\n{text}"}  # control.image: in control
    assert {k.name for k in keys.AXES} - {"seeds", "prompt"} <= covered
    assert set().union(*(keys.BY_KEY[k].sets for k in covered | {"seeds", "prompt", "dtype",
                                                                   "resize"})) == set(BY_NAME)


@pytest.mark.parametrize("changes, expected", GOLDEN_IDS)
def test_ids_are_the_ones_farm_gave_before(changes, expected):
    job = make_job(GOLDEN_CHECKPOINT, **{"negative": "blurry", "seed": 1, "steps": 4, **changes})
    assert job.id == expected


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5, reason="the tiny model "
                    "built by transformers 4 saves other tokenizer files, so has another "
                    "identity than the one this run folder recorded")
def test_a_run_folder_made_before_resumes_with_nothing_rendered(tmp_path, capsys):
    """tests/data/legacy was rendered by farm before the field table (12 images, two
    samplers, a template, clip skip 2, batches of 2)."""
    shutil.copytree(LEGACY, tmp_path / "legacy")
    (tmp_path / "outputs").mkdir()
    shutil.copytree(tmp_path / "legacy" / "run", tmp_path / "outputs" / "legacy")
    before = {p.name: p.read_bytes() for p in (tmp_path / "outputs").rglob("*.png")}
    assert run_inline("render", f"recipe={tmp_path / 'legacy' / 'legacy.yaml'}",
                      f"outputs={tmp_path / 'outputs'}") == 0
    out = capsys.readouterr().out
    assert "all 12 images are already done" in out
    after = {p.name: p.read_bytes() for p in (tmp_path / "outputs").rglob("*.png")}
    assert after == before
    capsys.readouterr()  # its status, from its own record, also works on the old folder
    assert run_farm("status", str(tmp_path / "outputs" / "legacy")) == 0
    assert "12 done, 0 pending, 0 failed, of 12 planned" in capsys.readouterr().out
