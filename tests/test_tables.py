"""Parquet and Hub exports (tables.py, card.py): shards, the dataset card, captions, re-exports
after the run grew; read back with `datasets`, `pyarrow` and `webdataset`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from PIL import Image

from farm import outputs
from tests.helpers import manifest_rows, recipe_folder, run_farm

RECIPE = """\
prompt: 'a {animal} at dusk'
vars: {animal: [cat, dog]}
caption: 'a photo of a {animal}, seed {seed}'
seeds: 0-2
steps: 2
size: 64x64
batch_size: 3
"""


def done(folder: Path) -> dict[str, dict]:
    return {r["id"]: {"pixel_hash": r["pixel_hash"], **r["params"]}
            for r in manifest_rows(folder) if r["status"] == "done"}


def shards(to: Path) -> dict[str, tuple[int, int]]:
    """Each parquet shard with what says whether it was written again: (inode, mtime)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted((to / "data").glob("*.parquet"))}


def test_a_hub_export_loads_with_its_card_and_grows_by_new_shards(tmp_path, monkeypatch,
                                                                  capsys):
    import datasets

    recipe_folder(tmp_path, monkeypatch, zoo=RECIPE)
    assert run_farm("render", "recipe=zoo", "runtime=inline") == 0
    run, to = tmp_path / "outputs" / "zoo", tmp_path / "hub"
    expected = done(run)
    args = ("export", str(run), "--format", "hub", "--to", str(to), "--max-shard-size", "30KB")
    assert run_farm(*args) == 0
    first = shards(to)
    assert len(first) >= 2 and all(n.startswith("train-") and n.endswith(
        f"-of-{len(first):05d}.parquet") for n in first)
    card = (to / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["dataset_info"]["splits"][0]["num_examples"] == 6
    assert {"name": "seed", "dtype": "uint64"} in header["dataset_info"]["features"]
    assert "tiny" in card and "euler / normal" in card
    loaded = datasets.load_dataset(str(to), split="train", cache_dir=str(tmp_path / "c1"))
    assert isinstance(loaded.features["image"], datasets.Image)
    assert loaded.features["seed"].dtype == "uint64" and loaded.num_rows == 6
    for row in loaded:
        job = expected[row["id"]]
        assert outputs.pixel_hash(row["image"]) == job["pixel_hash"]
        assert row["text"] == f"a photo of a {job['values']['animal']}, seed {job['seed']}"
    # the run grows: a re-export writes the new shards and keeps (renames) the old ones
    assert run_farm("render", "recipe=zoo", "runtime=inline", "seeds=0-4") == 0
    capsys.readouterr()
    assert run_farm(*args) == 0
    assert "already there" in capsys.readouterr().out
    second = shards(to)
    kept = {stamp for stamp in first.values()} & set(second.values())
    assert len(kept) >= len(first) - 1  # all but the last (which the new images fill up)
    assert datasets.load_dataset(str(to), split="train",
                                 cache_dir=str(tmp_path / "c2")).num_rows == 10


def test_parquet_shards_hold_the_manifest(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    recipe_folder(tmp_path, monkeypatch, zoo=RECIPE)
    assert run_farm("render", "recipe=zoo", "runtime=inline") == 0
    run, to = tmp_path / "outputs" / "zoo", tmp_path / "table"
    assert run_farm("export", str(run), "--format", "parquet", "--with-images", "--to",
                    str(to), "--max-shard-size", "30KB") == 0
    files = sorted(to.glob("manifest-*.parquet"))
    assert len(files) >= 2
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert sorted(r["id"] for r in rows) == sorted(done(run))
    assert all(r["text"].startswith("a photo of a ") and r["image"]["bytes"] for r in rows)


def test_captions_as_text_files_for_trainers(tmp_path, monkeypatch):
    import webdataset as wds

    recipe_folder(tmp_path, monkeypatch, zoo=RECIPE)
    assert run_farm("render", "recipe=zoo", "runtime=inline") == 0
    run = tmp_path / "outputs" / "zoo"
    expected = done(run)
    assert run_farm("export", str(run), "--format", "imagefolder", "--captions", "txt",
                    "--to", str(tmp_path / "kohya")) == 0
    images = sorted((tmp_path / "kohya" / "images").glob("*/*.png"))
    assert len(images) == 6
    for image in images:
        text = image.with_suffix(".txt").read_text()
        assert text.startswith("a photo of a ") and text.endswith(
            f"seed {image.stem.rsplit('-', 1)[1]}")
    assert run_farm("export", str(run), "--format", "webdataset", "--captions", "txt",
                    "--to", str(tmp_path / "wds")) == 0
    samples = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "wds").glob("*.tar")),
                                  shardshuffle=False))
    assert len(samples) == 6
    for sample in samples:
        job = expected[sample["__key__"]]
        assert sample["txt"].decode() == f"a photo of a {job['values']['animal']}, " \
                                         f"seed {job['seed']}"
        assert json.loads(sample["json"])["text"] == sample["txt"].decode()


def test_without_a_caption_template_the_text_is_the_prompt(finished_run, tmp_path):
    import pyarrow.parquet as pq

    assert run_farm("export", str(finished_run), "--format", "parquet", "--to",
                    str(tmp_path / "p")) == 0
    rows = pq.read_table(next((tmp_path / "p").glob("*.parquet"))).to_pylist()
    assert all(r["text"] == r["prompt"] for r in rows)


def test_bad_export_options_are_refused(finished_run, tmp_path, capsys):
    assert run_farm("export", str(finished_run), "--format", "parquet", "--captions", "txt",
                    "--to", str(tmp_path / "x")) == 2
    assert "--captions: got 'txt' for --format parquet" in capsys.readouterr().err
    assert run_farm("export", str(finished_run), "--format", "hub", "--max-shard-size", "lots",
                    "--to", str(tmp_path / "y")) == 2
    assert "--max-shard-size: got 'lots'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_an_unknown_caption_name_is_refused(tmp_path, monkeypatch, capsys):
    recipe_folder(tmp_path, monkeypatch, zoo=RECIPE.replace("{animal}, seed", "{animl}, seed"))
    assert run_farm("plan", "recipe=zoo") == 2
    assert "caption: got 'a photo of a {animl}" in capsys.readouterr().err


def test_a_sheet_of_a_hub_export_image_is_the_rendered_image(tmp_path, monkeypatch):
    """The bytes embedded are the file's: decoding gives the recorded pixels."""
    recipe_folder(tmp_path, monkeypatch, zoo=RECIPE)
    assert run_farm("render", "recipe=zoo", "runtime=inline", "seeds=0") == 0
    run = tmp_path / "outputs" / "zoo"
    assert run_farm("export", str(run), "--format", "hub", "--to", str(tmp_path / "h")) == 0
    import io

    import pyarrow.parquet as pq

    table = pq.read_table(next((tmp_path / "h" / "data").glob("*.parquet"))).to_pylist()
    expected = done(run)
    for row in table:
        image = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert outputs.pixel_hash(image) == expected[row["id"]]["pixel_hash"]


def test_a_hub_export_publishes_no_path_of_this_machine(tmp_path, monkeypatch, tiny):
    """Models and input images given as absolute paths, a recipe found by its path: the card
    and the rows name them relative to the recipe's folder, or by their names."""
    import shutil

    import pyarrow.parquet as pq

    project = tmp_path / "project"
    (project / "photos").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(project / "photos" / "red.png")
    shutil.copytree(tiny.path, tmp_path / "elsewhere" / "my-model")
    (project / "r.yaml").write_text(
        f"checkpoint: {tmp_path / 'elsewhere' / 'my-model'}\ninit: photos\nprompt: a fox\n"
        "steps: 2\nsize: 64x64\n")
    monkeypatch.chdir(tmp_path)
    assert run_farm("render", f"recipe={project / 'r.yaml'}", "runtime=inline") == 0
    to = tmp_path / "hub"
    assert run_farm("export", str(tmp_path / "outputs" / "r"), "--format", "hub", "--to",
                    str(to)) == 0
    card = (to / "README.md").read_text()
    rows = pq.read_table(next((to / "data").glob("*.parquet"))).to_pylist()
    assert str(tmp_path) not in card and str(Path.home()) not in card
    assert "my-model" in card and "photos/red.png" in card
    for row in rows:  # (the image files' own `farm` metadata still holds the paths it was made
        assert row["init"] == "photos/red.png" and row["checkpoint"] == "my-model"  # with)
        assert not any(str(tmp_path) in str(v) for k, v in row.items() if k != "image")
