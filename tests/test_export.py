"""farm export: imagefolder, webdataset and parquet, read back with the real readers."""

import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from farm import outputs
from tests.helpers import manifest_rows, run_farm


def manifest(folder: Path) -> dict[str, dict]:
    """id -> the manifest's view of each finished image."""
    return {r["id"]: {"path": r["path"], "pixel_hash": r["pixel_hash"], **r["params"]}
            for r in manifest_rows(folder) if r["status"] == "done"}


def contents(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder but SQLite's own -shm/-wal files, which readers create."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(("-shm", "-wal"))}


def pixels(image) -> str:
    return outputs.pixel_hash(image if isinstance(image, Image.Image) else Image.open(image))


def test_imagefolder_loads_with_datasets_with_the_job_fields(finished_run, tmp_path, capsys):
    import datasets

    expected = manifest(finished_run)
    assert run_farm("export", str(finished_run), "--format", "imagefolder",
                    "--to", str(tmp_path / "hf")) == 0
    assert f"Exported {len(expected)} images" in capsys.readouterr().out
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "hf"),
                                   cache_dir=str(tmp_path / "cache"))["train"]
    assert loaded.num_rows == len(expected) == 12
    for column in ("image", "id", "prompt", "negative", "seed", "checkpoint", "sampler",
                   "scheduler", "steps", "cfg", "width", "height", "template", "values",
                   "fields", "pixel_hash"):
        assert column in loaded.column_names
    for row in loaded:
        job = expected[row["id"]]
        assert pixels(row["image"]) == job["pixel_hash"]
        assert (row["prompt"], row["seed"], row["cfg"]) == (job["prompt"], job["seed"],
                                                            job["cfg"])
        assert row["values"]["animal"] == job.get("values", {}).get("animal")
        assert row["fields"]["mood"] == job.get("fields", {}).get("mood")


def metadata_rows(to: Path) -> list[dict]:
    """The rows of an imagefolder export's metadata.parquet."""
    import pyarrow.parquet as pq

    return pq.read_table(to / "metadata.parquet").to_pylist()


def test_an_export_is_rerunnable_filtered_and_follows_the_run(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    to = tmp_path / "cats"
    args = ("export", str(run), "--format", "imagefolder", "--to", str(to),
            "--where", "values.animal=cat", "--where", "cfg=7")
    assert run_farm(*args) == 0
    lines = metadata_rows(to)
    assert len(lines) == 2  # cat, cfg 7, seeds 0 and 1
    assert all(line["values"]["animal"] == "cat" for line in lines)
    capsys.readouterr()
    assert run_farm(*args) == 0
    assert "(0 written, 2 already there)" in capsys.readouterr().out
    gone = run / lines[0]["file_name"]
    gone.unlink()  # the run loses an image: the export follows, and says so
    assert run_farm(*args) == 0
    assert "recorded as done but missing from" in capsys.readouterr().out
    assert len(metadata_rows(to)) == 1
    assert not (to / lines[0]["file_name"]).exists()
    assert not list(to.rglob("*.partial"))


def test_export_refuses_bad_targets_and_changed_options(finished_run, tmp_path, capsys):
    before = contents(finished_run)
    assert run_farm("export", str(finished_run), "--format", "parquet",
                    "--to", str(finished_run / "export")) == 2
    assert "must not be inside the run folder" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert run_farm("export", str(finished_run), "--format", "parquet",
                    "--to", str(tmp_path / "busy")) == 2
    assert "is not a farm export" in capsys.readouterr().err
    assert run_farm("export", str(finished_run), "--format", "parquet",
                    "--to", str(tmp_path / "p")) == 0
    assert run_farm("export", str(finished_run), "--format", "parquet", "--to",
                    str(tmp_path / "p"), "--where", "seed=0") == 2
    assert "it holds an export with where '(everything)'" in capsys.readouterr().err
    assert run_farm("export", str(finished_run), "--format", "parquet", "--to",
                    str(tmp_path / "q"), "--where", "colour=red") == 2
    assert "unknown field 'colour'" in capsys.readouterr().err
    assert run_farm("export", str(tmp_path / "busy"), "--format", "parquet", "--to",
                    str(tmp_path / "r")) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert run_farm("export", str(finished_run), "--format", "imagefolder", "--to",
                    str(tmp_path / "s"), "--where", "seed=7") == 2
    assert "no finished images match seed=7; nothing exported" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert contents(finished_run) == before


def test_webdataset_shards_read_back_with_webdataset(finished_run, tmp_path, capsys):
    import webdataset as wds

    expected = manifest(finished_run)
    to = tmp_path / "wds"
    assert run_farm("export", str(finished_run), "--format", "webdataset", "--to", str(to),
                    "--shard-size", "5") == 0
    shards = sorted(to.glob("shard-*.tar"))
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar",
                                        "shard-000002.tar"]
    samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False).decode("pil"))
    assert len(samples) == len(expected) == 12
    for sample in samples:
        job = expected[sample["__key__"]]
        assert pixels(sample["png"]) == job["pixel_hash"]
        assert sample["json"]["prompt"] == job["prompt"]
        assert sample["json"]["path"] == job["path"]
    stamps = [s.stat().st_mtime_ns for s in shards]
    capsys.readouterr()
    assert run_farm("export", str(finished_run), "--format", "webdataset", "--to", str(to),
                    "--shard-size", "5") == 0
    assert "(0 written, 12 already there)" in capsys.readouterr().out
    assert [s.stat().st_mtime_ns for s in shards] == stamps


def test_parquet_is_the_manifest_with_images_on_request(finished_run, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    expected = manifest(finished_run)
    assert run_farm("export", str(finished_run), "--format", "parquet",
                    "--to", str(tmp_path / "plain")) == 0
    table = pq.read_table(tmp_path / "plain" / "manifest-00000-of-00001.parquet")
    assert table.num_rows == 12 and "image" not in table.column_names
    rows = table.to_pylist()
    assert {r["id"]: r["path"] for r in rows} == {i: j["path"] for i, j in expected.items()}
    assert {r["provenance"]["device"] for r in rows} == {"cpu"}
    assert all(r["scheduler_class"] == "EulerDiscreteScheduler" for r in rows)
    assert run_farm("export", str(finished_run), "--format", "parquet", "--with-images",
                    "--to", str(tmp_path / "full"), "--where", "prompt~owl") == 0
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "full" /
                                                             "manifest-00000-of-00001.parquet"),
                                   cache_dir=str(tmp_path / "cache"))["train"]
    assert loaded.num_rows == 4  # the owl: 2 cfgs x 2 seeds
    for row in loaded:
        assert isinstance(row["image"], Image.Image)
        assert pixels(row["image"]) == expected[row["id"]]["pixel_hash"]


@pytest.mark.parametrize("kind", ["jpeg", "webp"])
def test_a_lossy_run_exports_its_own_files(tmp_path, monkeypatch, kind):
    import webdataset as wds

    monkeypatch.chdir(tmp_path)
    assert run_farm("render", "runtime=inline", "steps=2", "size=64x64", "seeds=0-1",
                    f"format={kind}", "name=lossy") == 0
    run = tmp_path / "outputs" / "lossy"
    assert run_farm("export", str(run), "--format", "webdataset", "--to", "w") == 0
    suffix = ".jpg" if kind == "jpeg" else ".webp"
    samples = list(wds.WebDataset(["w/shard-000000.tar"], shardshuffle=False).decode("pil"))
    assert len(samples) == 4
    assert all(pixels(s[suffix[1:]]) == manifest(run)[s["__key__"]]["pixel_hash"]
               for s in samples)


def test_a_killed_webdataset_export_resumes_from_its_last_whole_shard(finished_run, tmp_path,
                                                                      monkeypatch):
    from farm import export

    write_shard, written = export._write_shard, []

    def crash_on_the_second(path, chunk, selection, captions=False):
        if written:
            path.with_name(path.name + ".partial").write_bytes(b"half a tar")
            raise KeyboardInterrupt  # killed while writing
        write_shard(path, chunk, selection, captions)
        written.append(path.name)

    monkeypatch.setattr(export, "_write_shard", crash_on_the_second)
    options = export.Options("webdataset", shard_size=5)
    with pytest.raises(KeyboardInterrupt):
        export.export(finished_run, tmp_path / "w", options)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        ".farm-export.json", "shard-000000.tar", "shard-000001.tar.partial"]
    monkeypatch.setattr(export, "_write_shard", write_shard)
    report = export.export(finished_run, tmp_path / "w", options)
    assert (report.kept, report.written) == (5, 7)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        ".farm-export.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]


def test_imagefolder_can_hard_link_instead_of_copying(finished_run, tmp_path):
    assert run_farm("export", str(finished_run), "--format", "imagefolder", "--link",
                    "--to", str(tmp_path / "linked"), "--where", "seed=0") == 0
    for line in metadata_rows(tmp_path / "linked"):
        name = line["file_name"]
        assert (tmp_path / "linked" / name).stat().st_ino == (finished_run / name).stat().st_ino


def test_webdataset_shards_stay_put_when_a_retry_succeeds_later(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with sqlite3.connect(run / "manifest.sqlite") as db:  # the first job failed in run 1
        first, = db.execute("SELECT id FROM jobs ORDER BY seq LIMIT 1").fetchone()
        db.execute("UPDATE jobs SET status = 'failed' WHERE id = ?", (first,))
    args = ("export", str(run), "--format", "webdataset", "--to", str(tmp_path / "w"),
            "--shard-size", "4")
    assert run_farm(*args) == 0  # 11 images: shards of 4, 4, 3
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "w").glob("*.tar")}
    with sqlite3.connect(run / "manifest.sqlite") as db:  # ... and succeeded in run 2
        db.execute("UPDATE jobs SET status = 'done', run_id = 2 WHERE id = ?", (first,))
    capsys.readouterr()
    assert run_farm(*args) == 0
    assert "(4 written, 8 already there)" in capsys.readouterr().out  # only the last shard
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "w").glob("*.tar")}
    assert {k: after[k] for k in ("shard-000000.tar", "shard-000001.tar")} == {
        k: stamps[k] for k in ("shard-000000.tar", "shard-000001.tar")}
    import webdataset as wds

    keys = [s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in (tmp_path / "w").glob(
        "*.tar")), shardshuffle=False)]
    assert len(keys) == 12 and keys[-1] == first


def test_parquet_without_pyarrow_says_what_to_install(finished_run, tmp_path, monkeypatch,
                                                      capsys):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    assert run_farm("export", str(finished_run), "--format", "parquet",
                    "--to", str(tmp_path / "p")) == 2
    assert "needs pyarrow: pip install pyarrow" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
