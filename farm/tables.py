"""Exports as parquet: the manifest as a table (`parquet`), and a folder the Hugging Face Hub
takes as it is (`hub`): shards of bounded size, images embedded, and a dataset card.

Shards hold the images in the order the runs finished them, cut where their bytes reach the
limit; each shard's content is known by a digest of its rows, so a re-export after the run has
grown writes the new shards and keeps (at most renames) the unchanged ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from farm import card, scorers
from farm.catalog import Entry
from farm.fields import COLUMNS
from farm.outputs import PARTIAL_SUFFIX
from farm.selection import Options, Report, Selection, unit_columns

PROVENANCE = ("device", "dtype", "farm", "torch", "diffusers", "transformers")
ROWS_PER_GROUP, BYTES_PER_GROUP = 1000, 64 << 20  # parquet row groups: bounded memory
ROW_BYTES = 1000  # what a row without its image counts towards a shard's size



# 1. rows -----------------------------------------------------------------------------------------

def manifest_row(selection: Selection, entry: Entry, source: Path,
                 options: Options) -> dict[str, Any]:
    """A `parquet` row: the dataset's columns, then the rest of the manifest row."""
    row = {**selection.columns(entry), "path": entry.path, "seq": entry.seq,
           **{k: entry.row.get(k) for k in ("attempts", "seconds", "batch_size", "position",
                                            "worker", "run_id", "updated_at")}}
    scheduler = json.loads(entry.row.get("scheduler") or "null") or {}
    row["scheduler_class"] = scheduler.get("class")
    row["scheduler_config"] = json.dumps(scheduler.get("config"), default=str)
    made = json.loads(entry.row.get("provenance") or "null") or {}
    row["provenance"] = {k: made.get(k) for k in PROVENANCE}
    if options.with_images:
        row["image"] = {"bytes": source.read_bytes(), "path": Path(entry.path).name}
    return row


def hub_row(selection: Selection, entry: Entry, source: Path, options: Options) -> dict[str, Any]:
    """A `hub` row: the image, its caption, the job's columns."""
    return {"image": {"bytes": source.read_bytes(), "path": Path(entry.path).name},
            **selection.columns(entry, public=True)}


# 2. the exporters --------------------------------------------------------------------------------

def parquet(selection: Selection, to: Path, options: Options, state: dict) -> Report:
    """The manifest as parquet shards `manifest-00000-of-000NN.parquet`, a row per image; with
    `with_images`, an `image` column of {bytes, path} that Hugging Face decodes as an Image."""
    schema = schema_of(selection, images=options.with_images, manifest=True)
    return write_shards(selection, to, options, state, "manifest", schema, manifest_row,
                        options.with_images)


def hub(selection: Selection, to: Path, options: Options, state: dict) -> Report:
    """A dataset folder as the Hub lays one out: `data/train-00000-of-000NN.parquet` with the
    images embedded, and a README.md dataset card that declares its features and splits."""
    schema = schema_of(selection, images=True, image_first=True)
    report = write_shards(selection, to, options, state, "data/train", schema, hub_row, True)
    card.write(to, selection, schema, state["summary"], report)
    report.files.append("README.md")
    return report


# 3. shards ---------------------------------------------------------------------------------------

def write_shards(selection: Selection, to: Path, options: Options, state: dict, prefix: str,
                 schema, row_of, images: bool) -> Report:
    """Cut the selection into shards, write those whose content is new, keep the others."""
    for stray in to.rglob("*.keep"):  # set aside by an export that was killed: written again
        stray.unlink()
    # 1. plan: where shards are cut, and each one's digest (one pass over the manifest)
    plan, summary = _plan(selection, options, schema, images)
    state["summary"] = summary
    names = [f"{prefix}-{i:05d}-of-{len(plan):05d}.parquet" for i in range(len(plan))]
    known: dict[str, str] = state.get("shards", {})  # name -> digest, from the last export
    # 2. keep what is unchanged: set aside under a temporary name, put back under its new one
    found = {digest: name for name, digest in known.items() if (to / name).is_file()}
    kept = {}
    for name, (count, digest) in zip(names, plan):
        if digest in found and digest not in kept.values():
            os.replace(to / found[digest], to / (found[digest] + ".keep"))
            kept[name] = digest
    # 3. write the rest, in a second pass; rows of kept shards are skipped
    report, rows = Report(), selection.present(Report(), order="finished")
    (to / prefix).parent.mkdir(parents=True, exist_ok=True)
    for name, (count, digest) in zip(names, plan):
        if name in kept:
            for _ in range(count):
                next(rows)
            os.replace(to / (found[digest] + ".keep"), to / name)
            report.kept += count
            continue
        with parquet_file(to / name, schema) as writer:
            for _ in range(count):
                entry, source = next(rows)
                row = row_of(selection, entry, source, options)
                writer.add(row, len(row["image"]["bytes"]) if images else 0)
        report.written += count
    report.missing = summary["missing"]
    # 4. what the export no longer holds goes
    for name in set(known) - set(names):
        (to / name).unlink(missing_ok=True)
    state["shards"] = dict(zip(names, (digest for _, digest in plan)))
    report.files = names
    return report


def _plan(selection: Selection, options: Options, schema,
          images: bool) -> tuple[list[tuple[int, str]], dict[str, Any]]:
    """(rows, digest) of each shard, and what the selection holds (for the dataset card)."""
    plan: list[tuple[int, str]] = []
    seen = Report()
    start = hashlib.sha256(schema.to_string().encode())
    digest, count, size = start.copy(), 0, 0
    summary: dict[str, Any] = {"rows": 0, "bytes": 0, "models": {}, "samplers": [],
                               "sizes": [], "missing": 0}
    for entry, source in selection.present(seen, order="finished"):
        weight = source.stat().st_size if images else ROW_BYTES
        if count and size + weight > options.max_shard_bytes:
            plan.append((count, digest.hexdigest()))
            digest, count, size = start.copy(), 0, 0
        digest.update(f"{entry.id}:{entry.pixel_hash}:{json.dumps(entry.params)}\n".encode())
        count, size = count + 1, size + weight
        _summarise(summary, entry, weight)
    if count:
        plan.append((count, digest.hexdigest()))
    summary["missing"] = seen.missing
    return plan, summary


def _summarise(summary: dict[str, Any], entry: Entry, weight: int) -> None:
    summary["rows"] += 1
    summary["bytes"] += weight
    for name in ("checkpoint", "vae", "refiner"):
        if entry.params.get(name):
            summary["models"][entry.params[name]] = entry.params.get(f"{name}_identity")
    for key, value in (("samplers", f"{entry.params['sampler']} / {entry.params['scheduler']}"),
                       ("sizes", f"{entry.params['width']}x{entry.params['height']}")):
        if value not in summary[key]:
            summary[key].append(value)


class Rows:
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
def parquet_file(target: Path, schema) -> Iterator[Rows]:
    """A parquet file written under a temporary name and renamed into place when complete."""
    import pyarrow.parquet as pq

    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            rows = Rows(writer, schema)
            yield rows
            rows.flush()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)


# 4. the schema -----------------------------------------------------------------------------------

def schema_of(selection: Selection, first: str | None = None, images: bool = False,
              manifest: bool = False, image_first: bool = False):
    """Fixed column types (a seed may need all 64 bits), with Hugging Face's features: an
    optional `first` text column (imagefolder's file_name), the caption (`text`), the job's
    columns, template values and prompt-file columns, the pixel hash; with `manifest`, the rest
    of the manifest row; with `images`, the image ({bytes, path}, decoded as an Image)."""
    import pyarrow as pa

    text, whole = pa.string(), pa.int64()
    image = pa.struct([("bytes", pa.binary()), ("path", text)])
    types = {first: text} if first else {}
    if images and image_first:
        types["image"] = image
    types["text"] = text
    types.update({name: pa.type_for_alias(kind) for name, kind in COLUMNS.items()})
    for name, keys in selection.nested.items():
        types[name] = pa.struct([(k, text) for k in keys])
    types.update({name: pa.type_for_alias(kind)
                  for name, kind in unit_columns(selection.units).items()})
    types["pixel_hash"] = text
    types.update({column: pa.type_for_alias(scorers.TYPES[column])
                  for column in selection.scores})
    if selection.grouped:
        types["dup_group"] = whole
    if manifest:
        types.update({"path": text, "seq": whole, "attempts": whole, "seconds": pa.float64(),
                      "batch_size": whole, "position": whole, "worker": text, "run_id": whole,
                      "updated_at": text, "scheduler_class": text, "scheduler_config": text,
                      "provenance": pa.struct([(k, text) for k in PROVENANCE])})
    if images:
        types["image"] = image
    features = {name: feature(kind) for name, kind in types.items()}
    if images:
        features["image"] = {"_type": "Image"}
    return pa.schema(list(types.items()),
                     metadata={"huggingface": json.dumps({"info": {"features": features}})})


def feature(kind) -> dict:
    """A pyarrow type as a Hugging Face feature."""
    import pyarrow as pa

    if pa.types.is_struct(kind):
        return {f.name: feature(f.type) for f in kind}
    return {"dtype": str(kind).replace("double", "float64"), "_type": "Value"}
