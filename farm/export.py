"""A run folder's finished images as a dataset: imagefolder, webdataset, parquet or hub.

Every exporter takes the same Selection (the run folder, a filter, the column layout;
selection.py) and streams the catalog, so memory stays bounded for runs of millions of images.
Exports only read the run folder. They are re-runnable: the target folder remembers what it holds
(`.farm-export.json`), files already exported are kept, every file is written under a
temporary name and renamed when complete, and a re-run after a crash or after the run has grown
writes only what is missing or changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

from farm import catalog, tables
from farm.catalog import Entry
from farm.outputs import PARTIAL_SUFFIX, write_atomic
from farm.selection import ExportError, Options, Report, Selection, caption, select

FORMATS = ("imagefolder", "webdataset", "parquet", "hub")
STATE = ".farm-export.json"  # hidden: Hugging Face's imagefolder skips it


# 1. the exporters: one contract, four formats (parquet and hub in tables.py) ---------------------

def imagefolder(selection: Selection, to: Path, options: Options, state: dict) -> Report:
    """Hugging Face's imagefolder layout: the images in the run's own 10,000-a-folder shards and
    a metadata.parquet whose file_name points at each (typed columns: a 64-bit seed stays a
    whole number, which JSON lines would turn into a float); shards are pruned of files no
    longer in it."""
    report, visited = Report(), set()
    shard, keep, big = None, set(), False
    schema = tables.schema_of(selection, "file_name")
    (to / "metadata.jsonl").unlink(missing_ok=True)  # written by farm before 0.2: one metadata
    with tables.parquet_file(to / "metadata.parquet", schema) as rows:
        for entry, source in selection.present(report):
            target = _inside(to, entry.path)
            if target.parent != shard:
                _prune(shard, keep)
                shard, keep = target.parent, set()
                shard.mkdir(parents=True, exist_ok=True)
                visited.add(shard.name)
            keep.add(target.name)
            if target.is_file() and target.stat().st_size == source.stat().st_size:
                report.kept += 1
            else:
                _copy_atomic(source, target, options.link)
                report.written += 1
            if options.captions:  # NAME.txt beside NAME.png, as kohya-style trainers read
                text = target.with_suffix(".txt")
                keep.add(text.name)
                if not text.is_file() or text.read_text(encoding="utf-8") != caption(entry):
                    write_atomic(text, caption(entry).encode())
            rows.add({"file_name": entry.path, **selection.columns(entry)})
            big = big or (entry.params.get("seed") or 0) >= 2**63
        _prune(shard, keep)
    if big:
        report.notes.append("some seeds are 2**63 or more: metadata.parquet holds them exactly, "
                            "but datasets' imagefolder loader stops at 2**63 - 1 (read the "
                            "metadata with pyarrow or pandas, or export --format parquet)")
    for old in (to / "images").glob("*"):  # shards with nothing selected any more
        if old.is_dir() and old.name not in visited:
            shutil.rmtree(old)
    report.files = ["metadata.parquet", "images/"]
    return report


def webdataset(selection: Selection, to: Path, options: Options, state: dict) -> Report:
    """Tar shards of `shard_size` images, `{id}.png` (or .jpg, .webp) + `{id}.json`, ordered by
    the run that finished each image: what later runs add (new jobs, retries that succeeded)
    comes after what an earlier export holds, so a shard whose images are unchanged is kept."""
    report, shards = Report(), state.setdefault("shards", {})
    chunk: list[tuple[Entry, Path]] = []
    index = 0

    def flush() -> None:
        nonlocal index, chunk
        name = f"shard-{index:06d}.tar"
        digest = hashlib.sha256(json.dumps(selection.nested).encode())  # the JSON's keys
        digest.update("".join(e.id + e.pixel_hash for e, _ in chunk).encode())
        if (to / name).is_file() and shards.get(name) == digest.hexdigest():
            report.kept += len(chunk)
        else:
            _write_shard(to / name, chunk, selection, bool(options.captions))
            report.written += len(chunk)
            shards[name] = digest.hexdigest()
            _save_state(to, state)  # a crash from here on keeps this shard
        report.files.append(name)
        index, chunk = index + 1, []

    for item in selection.present(report, order="finished"):
        chunk.append(item)
        if len(chunk) == options.shard_size:
            flush()
    if chunk:
        flush()
    for stale in sorted(set(shards) - set(report.files)):  # the run lost images since
        (to / stale).unlink(missing_ok=True)
        del shards[stale]
    return report


def _write_shard(path: Path, chunk: list[tuple[Entry, Path]], selection: Selection,
                 captions: bool = False) -> None:
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry, source in chunk:
            record = {**selection.columns(entry), "path": entry.path}
            members = [(f"{entry.id}{source.suffix}", source.read_bytes()),
                       (f"{entry.id}.json", json.dumps(record).encode())]
            if captions:
                members.append((f"{entry.id}.txt", caption(entry).encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    os.replace(partial, path)


EXPORTERS = {"imagefolder": imagefolder, "webdataset": webdataset, "parquet": tables.parquet,
             "hub": tables.hub}


# 2. running one ----------------------------------------------------------------------------------

def export(run: Path, to: Path, options: Options) -> Report:
    """Check everything, then export; the target remembers its options for the next call."""
    catalog.manifest_of(run)
    run, to = Path(run).resolve(), Path(to).resolve()
    if to == run or to.is_relative_to(run) or run.is_relative_to(to):
        raise ExportError(f"--to {to}: an export must not be inside the run folder {run} "
                          "(nor hold it); choose a folder elsewhere")
    if options.format in ("parquet", "imagefolder", "hub"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ExportError(f"--format {options.format} needs pyarrow: pip install pyarrow "
                              "(farm depends on it; this environment lacks it)") from None
    if options.shard_size < 1:
        raise ExportError(f"--shard-size: got {options.shard_size}; expected 1 or more")
    if options.max_shard_bytes < 1:
        raise ExportError(f"--max-shard-size: got {options.max_shard_bytes} bytes; expected a "
                          "size such as 500MB")
    if options.captions not in (None, "txt") or (options.captions and options.format not in (
            "imagefolder", "webdataset")):
        raise ExportError(f"--captions: got {options.captions!r} for --format "
                          f"{options.format}; allowed: txt, with imagefolder or webdataset (the "
                          "parquet and hub exports carry the caption as their `text` column)")
    state = _load_state(to, run, options)
    selection = select(run, options.where)
    if not selection.count:
        raise ExportError(f"{run}: no finished images match {options.where}; nothing exported")
    to.mkdir(parents=True, exist_ok=True)
    for partial in to.rglob(f"*{PARTIAL_SUFFIX}"):  # left by an export that was killed
        partial.unlink()
    _save_state(to, state)
    report = EXPORTERS[options.format](selection, to, options, state)
    _save_state(to, state)
    return report


def _load_state(to: Path, run: Path, options: Options) -> dict:
    wanted = {"run": str(run), **options.describe()}
    path = to / STATE
    if path.is_file():
        state = json.loads(path.read_text())
        differs = [k for k in wanted if state.get(k) != wanted[k]]
        if differs:
            k = differs[0]
            raise ExportError(f"--to {to}: it holds an export with {k} {state.get(k)!r}, not "
                              f"{wanted[k]!r}; export into another folder, or delete it first")
        return state
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise ExportError(f"--to {to}: exists and is not a farm export; choose a new or empty "
                          "folder")
    return wanted


def _save_state(to: Path, state: dict) -> None:
    write_atomic(to / STATE, json.dumps(state, indent=1).encode())


def _inside(root: Path, relative: str) -> Path:
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise ExportError(f"{relative!r} would be written outside {root}")
    return target


def _copy_atomic(source: Path, target: Path, link: bool = False) -> None:
    """Copy (or hard-link, on the same filesystem) under a temporary name, then rename."""
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    try:
        if not link:
            raise OSError
        os.link(source, partial)
    except OSError:  # asked for a copy, or another filesystem
        shutil.copyfile(source, partial)
    os.replace(partial, target)


def _prune(shard: Path | None, keep: set[str]) -> None:
    """Remove files of an exported shard folder that the selection no longer has."""
    if shard is None:
        return
    for old in shard.iterdir():
        if old.name not in keep:
            old.unlink()
