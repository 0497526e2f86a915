"""The job-field table: every field reaches everything derived from it; ids never change."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from farm import fields, outputs
from farm.fields import FIELDS
from farm.jobs import Job, Model
from farm.recipe import STAGE_AXES
from tests.helpers import make_job, run_farm

LEGACY = Path(__file__).parent / "data" / "legacy"

RECIPE = """\
name: every
prompt:
  - {text: a red fox, negative: blurry}
  - a lighthouse
seeds: 3
steps: [2, 3]
cfg: 6.5
size: 64x64
clip_skip: 2
batch_size: 2
"""


def test_the_job_and_the_table_name_the_same_fields():
    names = [f.name for f in dataclasses.fields(Job) if f.name != "context"]
    assert sorted(names) == sorted(fields.BY_NAME)
    assert all(f.role in (fields.LOAD, fields.BATCH, fields.IMAGE) for f in FIELDS)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, farm_cache):
    root = tmp_path_factory.mktemp("every")
    (root / "every.yaml").write_text(RECIPE)
    assert run_farm("render", f"recipe={root / 'every.yaml'}", "runtime=inline",
                    f"outputs={root / 'out'}") == 0
    return root


def test_every_field_reaches_plan_metadata_manifest_replay_and_exports(rendered, capsys, tiny):
    folder = rendered / "out" / "every"
    # 1. farm plan shows each field's axis
    capsys.readouterr()
    assert run_farm("plan", f"recipe={rendered / 'every.yaml'}", "runtime=inline",
                    f"outputs={rendered / 'out'}") == 0
    shown = capsys.readouterr().out
    for f in FIELDS:  # embeddings: prompt words; stages: shown when used (tests/test_stages)
        assert f.axis is None or f.axis in STAGE_AXES or f"  {f.axis} " in shown, f.name
    # 2. the PNG's farm JSON and 3. the manifest hold every field; 4. replay reads them back
    image = next(folder.glob("images/*/*.png"))
    infotext, meta = outputs.read_metadata(image)
    with sqlite3.connect(folder / "manifest.sqlite") as db:
        (params,), = db.execute("SELECT params FROM jobs WHERE path = ?",
                                (image.relative_to(folder).as_posix(),))
    params = json.loads(params)
    job = Job.from_dict(meta, lambda name, ref, identity: tiny)
    assert job.id == meta["id"] == params["id"]
    for f in FIELDS:
        assert f.name in meta and f.name in params, f.name
        if f.model:
            assert f"{f.name}_identity" in meta
        if f.infotext and getattr(job, f.name) not in (None, "", ()):
            # A1111 writes Emphasis only for a prompt it would read otherwise (test_prompts.py)
            assert f.infotext in infotext or f.name in ("height", "prompt", "emphasis"), f.name
    # 5. the export columns
    import pyarrow.parquet as pq

    assert run_farm("export", str(folder), "--format", "parquet", "--to",
                    str(rendered / "parquet")) == 0
    names = pq.read_schema(rendered / "parquet" / "manifest-00000-of-00001.parquet").names
    for f in FIELDS:
        assert f.name in names, f.name


# Ids computed by farm before the field table existed, for jobs with fixed model identities.
CHECKPOINT = Model("tiny", "/nowhere", "0f" * 32)
VAE = Model("tiny-vae", "/nowhere", "a1" * 32)
BEFORE = [
    ({}, "f2b120b7654eaccde860f8e5"),
    ({"vae": VAE}, "e96d6c1b0d7cd0114846f7e6"),
    ({"prompt": "a fox, ünïcode ✓", "negative": "", "seed": 2**64 - 1},
     "56199007c1051a4c541e0cf5"),
    ({"sampler": "dpmpp_2m", "scheduler": "karras", "steps": 30, "cfg": 5.5, "width": 768,
      "height": 512}, "6e8704b9d48768cecd4bba10"),
    ({"clip_skip": 2, "dtype": "float16"}, "82619f7a10cc74ddcbc8689c"),
]


@pytest.mark.parametrize("changes, expected", BEFORE)
def test_ids_are_the_ones_farm_gave_before(changes, expected):
    job = make_job(CHECKPOINT, **{"negative": "blurry", "seed": 1, "steps": 4, **changes})
    assert job.id == expected


def test_a_run_folder_made_before_resumes_with_nothing_rendered(tmp_path, capsys):
    """tests/data/legacy was rendered by farm before the field table (12 images, two
    samplers, a template, clip skip 2, batches of 2)."""
    shutil.copytree(LEGACY, tmp_path / "legacy")
    (tmp_path / "outputs").mkdir()
    shutil.copytree(tmp_path / "legacy" / "run", tmp_path / "outputs" / "legacy")
    before = {p.name: p.read_bytes() for p in (tmp_path / "outputs").rglob("*.png")}
    assert run_farm("render", f"recipe={tmp_path / 'legacy' / 'legacy.yaml'}", "runtime=inline",
                    f"outputs={tmp_path / 'outputs'}") == 0
    out = capsys.readouterr().out
    assert "all 12 images are already done" in out
    after = {p.name: p.read_bytes() for p in (tmp_path / "outputs").rglob("*.png")}
    assert after == before
    capsys.readouterr()  # its status, from its own record, also works on the old folder
    assert run_farm("status", str(tmp_path / "outputs" / "legacy")) == 0
    assert "12 done, 0 pending, 0 failed, of 12 planned" in capsys.readouterr().out
