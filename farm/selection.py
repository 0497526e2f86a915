"""What an export takes: its options, the images it selects from a run folder, the columns of
their rows; and what it reports. Shared by every exporter (export.py, tables.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm import catalog
from farm.catalog import Entry, Where
from farm.fields import COLUMNS, column_value

JOB_COLUMNS = tuple(COLUMNS)  # every job field (farm/fields.py), models with their identities
MAX_SHARD_BYTES = 500 * 2**20  # parquet shards: about what the Hugging Face Hub advises


class ExportError(ValueError):
    """An export that cannot start: its source, its target or its options."""


@dataclass(frozen=True)
class Options:
    format: str
    where: Where = Where()
    shard_size: int = 1000  # webdataset: images per tar shard
    with_images: bool = False  # parquet: embed the image bytes
    link: bool = False  # imagefolder: hard-link the images (no copy, no space) where possible
    captions: str | None = None  # "txt": imagefolder and webdataset write a caption per image
    max_shard_bytes: int = MAX_SHARD_BYTES  # parquet and hub: bytes of images (or rows) a shard

    def describe(self) -> dict[str, Any]:
        """What decides the export's content: a re-run must ask for the same."""
        sharded = self.format in ("parquet", "hub")
        return {"format": self.format, "where": str(self.where),
                **({"shard_size": self.shard_size} if self.format == "webdataset" else {}),
                **({"with_images": self.with_images} if self.format == "parquet" else {}),
                **({"max_shard_bytes": self.max_shard_bytes} if sharded else {}),
                **({"captions": self.captions} if self.captions else {})}


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
        """A row of the dataset: its caption (`text`), the job's fields, template values and
        prompt-file columns (the same keys on every row, missing ones None), and the pixels'
        hash."""
        row = {"text": caption(entry), **{name: column_value(entry.params, name)
                                          for name in JOB_COLUMNS}}
        for name, keys in self.nested.items():
            given = entry.params.get(name) or {}
            row[name] = {k: _text(given.get(k)) for k in keys}
        row["pixel_hash"] = entry.pixel_hash
        return row


def _text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def select(run: Path, where: Where) -> Selection:
    """Scan the selected rows once for the union of their nested keys (streaming)."""
    nested: dict[str, set[str]] = {name: set() for name in catalog.FREE}
    count = 0
    for count, entry in enumerate(catalog.entries(run, where), 1):
        for name, keys in nested.items():
            keys.update(entry.params.get(name) or ())
    return Selection(run, where, {k: tuple(sorted(v)) for k, v in nested.items() if v}, count)




def caption(entry: Entry) -> str:
    """What training scripts read as an image's text: the recipe's caption, else the prompt as
    written."""
    return entry.params.get("caption") or entry.params["prompt"]
