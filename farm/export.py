"""A run folder's finished images as a dataset: imagefolder, webdataset or parquet.

Every exporter takes the same Selection (the run folder, a filter, the column layout) and
streams the catalog once, so memory stays bounded for runs of millions of images. Exports only
read the run folder. They are re-runnable: the target folder remembers what it holds
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm import catalog
from farm.catalog import Entry, Where
from farm.fields import COLUMNS
from farm.outputs import PARTIAL_SUFFIX, write_atomic

FORMATS = ("imagefolder", "webdataset", "parquet")
STATE = ".farm-export.json"  # hidden: Hugging Face's imagefolder skips it
JOB_COLUMNS = tuple(COLUMNS)  # every job field (farm/fields.py), models with their identities
PROVENANCE = ("device", "dtype", "farm", "torch", "diffusers", "transformers")
ROWS_PER_GROUP, BYTES_PER_GROUP = 1000, 64 << 20  # parquet row groups: bounded memory


class ExportError(ValueError):
    """An export that cannot start: its source, its target or its options."""


@dataclass(frozen=True)
class Options:
    format: str
    where: Where = Where()
    shard_size: int = 1000  # webdataset: images per tar shard
    with_images: bool = False  # parquet: embed the image bytes
    link: bool = False  # imagefolder: hard-link the images (no copy, no space) where possible

    def describe(self) -> dict[str, Any]:
        """What decides the export's content: a re-run must ask for the same."""
        return {"format": self.format, "where": str(self.where),
                **({"shard_size": self.shard_size} if self.format == "webdataset" else {}),
                **({"with_images": self.with_images} if self.format == "parquet" else {})}


@dataclass
class Report:
    written: int = 0  # images exported by this call
    kept: int = 0  # images an earlier call had exported already
    missing: int = 0  # recorded as done, but the file is gone from the run folder
    files: list[str] = field(default_factory=list)  # what the export holds, relative to it
    notes: list[str] = field(default_factory=list)  # what a user of the export should know


@dataclass(frozen=True)
class Selection:
    """The images to export, and the nested columns their rows share."""

    run: Path
    where: Where
    nested: dict[str, tuple[str, ...]]  # "values"/"fields" -> every key any selected row has
    count: int  # rows selected when they were scanned

    def entries(self, order: str = "file") -> Iterator[Entry]:
        return catalog.entries(self.run, self.where, order)

    def present(self, report: Report, order: str = "file") -> Iterator[tuple[Entry, Path]]:
        """The selected entries whose files are there, with those files; the rest counted.
        A progress bar follows them (TQDM_DISABLE=1 hides it)."""
        from tqdm import tqdm

        with tqdm(total=self.count, desc="export", unit="img", dynamic_ncols=True) as bar:
            for entry in self.entries(order):
                bar.update()
                source = self.run / entry.path
                if source.is_file():
                    yield entry, source
                else:
                    report.missing += 1

    def columns(self, entry: Entry) -> dict[str, Any]:
        """A row of the dataset: the job's fields, template values and prompt-file columns
        (the same keys on every row, missing ones None), and the pixels' hash."""
        row = {name: entry.params.get(name) for name in JOB_COLUMNS}
        for name, keys in self.nested.items():
            given = entry.params.get(name) or {}
            row[name] = {k: _text(given.get(k)) for k in keys}
        row["pixel_hash"] = entry.pixel_hash
        return row


def _text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def select(run: Path, where: Where) -> Selection:
    """Scan the selected rows once for the union of their nested keys (streaming)."""
    nested: dict[str, set[str]] = {name: set() for name in catalog.NESTED}
    count = 0
    for count, entry in enumerate(catalog.entries(run, where), 1):
        for name, keys in nested.items():
            keys.update(entry.params.get(name) or ())
    return Selection(run, where, {k: tuple(sorted(v)) for k, v in nested.items() if v}, count)


# 1. the exporters: one contract, three formats ---------------------------------------------------

def imagefolder(selection: Selection, to: Path, options: Options, state: dict) -> Report:
    """Hugging Face's imagefolder layout: the images in the run's own 10,000-a-folder shards and
    a metadata.parquet whose file_name points at each (typed columns: a 64-bit seed stays a
    whole number, which JSON lines would turn into a float); shards are pruned of files no
    longer in it."""
    report, visited = Report(), set()
    shard, keep, big = None, set(), False
    schema = _schema(selection, "file_name")
    (to / "metadata.jsonl").unlink(missing_ok=True)  # written by farm before 0.2: one metadata
    with _parquet(to / "metadata.parquet", schema) as rows:
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


class _Rows:
    """Rows written to a parquet file in bounded row groups."""

    def __init__(self, writer, schema):
        self.writer, self.schema, self.rows, self.size = writer, schema, [], 0

    def add(self, row: dict[str, Any], size: int = 0) -> None:
        self.rows.append(row)
        self.size += size
        if len(self.rows) >= ROWS_PER_GROUP or self.size >= BYTES_PER_GROUP:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.writer.write_batch(pa.RecordBatch.from_pylist(self.rows, self.schema))
        self.rows, self.size = [], 0


@contextmanager
def _parquet(target: Path, schema) -> Iterator[_Rows]:
    """A parquet file written under a temporary name and renamed into place when complete."""
    import pyarrow.parquet as pq

    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            rows = _Rows(writer, schema)
            yield rows
            rows.flush()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)


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
            _write_shard(to / name, chunk, selection)
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


def _write_shard(path: Path, chunk: list[tuple[Entry, Path]], selection: Selection) -> None:
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry, source in chunk:
            record = {**selection.columns(entry), "path": entry.path}
            for name, data in ((f"{entry.id}{source.suffix}", source.read_bytes()),
                               (f"{entry.id}.json", json.dumps(record).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    os.replace(partial, path)


def parquet(selection: Selection, to: Path, options: Options, state: dict) -> Report:
    """One table of the manifest, a row per image, written in bounded row groups; with
    `with_images`, an `image` column of {bytes, path} that Hugging Face decodes as an Image."""
    report = Report()
    target = to / "manifest.parquet"
    with _parquet(target, _schema(selection, images=options.with_images, manifest=True)) as rows:
        for entry, source in selection.present(report):
            row = {**selection.columns(entry), "path": entry.path, "seq": entry.seq,
                   **{k: entry.row.get(k) for k in ("attempts", "seconds", "batch_size",
                                                    "position", "worker", "run_id",
                                                    "updated_at")}}
            scheduler = json.loads(entry.row.get("scheduler") or "null") or {}
            row["scheduler_class"] = scheduler.get("class")
            row["scheduler_config"] = json.dumps(scheduler.get("config"), default=str)
            made = json.loads(entry.row.get("provenance") or "null") or {}
            row["provenance"] = {k: made.get(k) for k in PROVENANCE}
            size = 0
            if options.with_images:
                data = source.read_bytes()
                row["image"] = {"bytes": data, "path": Path(entry.path).name}
                size = len(data)
            rows.add(row, size)
            report.written += 1
    report.files = [target.name]
    return report


def _schema(selection: Selection, first: str | None = None, images: bool = False,
            manifest: bool = False):
    """Fixed column types (a seed may need all 64 bits), with Hugging Face's features: an
    optional `first` text column (imagefolder's file_name), the job's columns, template values
    and prompt-file columns, the pixel hash; with `manifest`, the rest of the manifest row."""
    import pyarrow as pa

    text, whole = pa.string(), pa.int64()
    types = {first: text} if first else {}
    types.update({name: getattr(pa, kind)() for name, kind in COLUMNS.items()})
    for name, keys in selection.nested.items():
        types[name] = pa.struct([(k, text) for k in keys])
    types["pixel_hash"] = text
    if manifest:
        types.update({"path": text, "seq": whole, "attempts": whole, "seconds": pa.float64(),
                      "batch_size": whole, "position": whole, "worker": text, "run_id": whole,
                      "updated_at": text, "scheduler_class": text, "scheduler_config": text,
                      "provenance": pa.struct([(k, text) for k in PROVENANCE])})
    if images:
        types["image"] = pa.struct([("bytes", pa.binary()), ("path", text)])
    features = {name: _feature(kind) for name, kind in types.items()}
    if images:
        features["image"] = {"_type": "Image"}
    return pa.schema(list(types.items()),
                     metadata={"huggingface": json.dumps({"info": {"features": features}})})


def _feature(kind) -> dict:
    import pyarrow as pa

    if pa.types.is_struct(kind):
        return {f.name: _feature(f.type) for f in kind}
    return {"dtype": str(kind).replace("double", "float64"), "_type": "Value"}


EXPORTERS = {"imagefolder": imagefolder, "webdataset": webdataset, "parquet": parquet}


# 2. running one -----------------------------------------------------------------------------------

def export(run: Path, to: Path, options: Options) -> Report:
    """Check everything, then export; the target remembers its options for the next call."""
    catalog.manifest_of(run)
    run, to = Path(run).resolve(), Path(to).resolve()
    if to == run or to.is_relative_to(run) or run.is_relative_to(to):
        raise ExportError(f"--to {to}: an export must not be inside the run folder {run} "
                          "(nor hold it); choose a folder elsewhere")
    if options.format in ("parquet", "imagefolder"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ExportError(f"--format {options.format} needs pyarrow: pip install pyarrow "
                              "(farm depends on it; this environment lacks it)") from None
    if options.shard_size < 1:
        raise ExportError(f"--shard-size: got {options.shard_size}; expected 1 or more")
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
