"""What an export takes: its options, the images it selects from a run folder, the columns of
their rows; and what it reports. Shared by every exporter (export.py, tables.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from farm import catalog, scorers
from farm.catalog import Entry, Where
from farm.fields import COLUMNS, FIELDS, column_value
from farm.keys import INPUT_KEYS, LOADED
from farm.manifest import Manifest
from farm.values import CONFIG_MARK

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
    record: dict | None = None  # the last run's record (runs/run-NNNN.yaml), if it has one
    scores: tuple[str, ...] = ()  # the score columns of the run (its scorers': farm score)
    scorers: tuple[dict, ...] = ()  # each scorer identity that scored it: scorer, model, images
    grouped: bool = False  # whether farm dedup grouped it: a dup_group column
    units: int = 0  # the most ControlNet units a selected row has: columns per unit

    @property
    def base(self) -> Path | None:
        """The folder of the recipe the last run read: public paths are relative to it."""
        return Path(self.record["base"]) if self.record and self.record.get("base") else None

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

    def columns(self, entry: Entry, public: bool = False) -> dict[str, Any]:
        """A row of the dataset: its caption (`text`), the job's fields, template values and
        prompt-file columns (the same keys on every row, missing ones None), and the pixels'
        hash. `public` (a dataset to publish): model files and input images by their paths
        relative to the recipe's folder, or their names, never this machine's layout."""
        row = {"text": caption(entry), **{name: column_value(entry.params, name)
                                          for name in JOB_COLUMNS}}
        for f in REFERENCES if public else ():
            row[f] = public_ref(row[f], self.base)
        for name, keys in self.nested.items():
            given = entry.params.get(name) or {}
            row[name] = {k: _text(given.get(k)) for k in keys}
        row.update(unit_values(entry.params, self.units, self.base if public else None,
                               public))
        row["pixel_hash"] = entry.pixel_hash
        for column in self.scores:
            row[column] = entry.scores.get(column)
        if self.grouped:
            row["dup_group"] = entry.dup_group
        return row


# each ControlNet unit's columns (control_0_model, control_0_image, ...), as export types
UNIT_COLUMNS = {"model": "string", "image": "string", "preprocessor": "string",
                "weight": "float64", "start": "float64", "end": "float64"}


def unit_columns(units: int) -> dict[str, str]:
    return {f"control_{i}_{name}": kind for i in range(units)
            for name, kind in UNIT_COLUMNS.items()}


def unit_values(params: dict, units: int, base: Path | None, public: bool) -> dict[str, Any]:
    """A row's ControlNet units, one set of columns each (None past the row's own units)."""
    found: dict[str, Any] = dict.fromkeys(unit_columns(units))
    nets, settings, images = (params.get(k) or () for k in ("controlnets", "control",
                                                            "control_images"))
    for i, (net, unit, image) in enumerate(zip(nets, settings, images)):
        found.update({f"control_{i}_model": public_ref(net["ref"], base) if public
                      else net["ref"],
                      f"control_{i}_image": public_ref(image["ref"], base) if public
                      else image["ref"],
                      **{f"control_{i}_{k}": unit[k] for k in ("preprocessor", "weight",
                                                               "start", "end")}})
    return found


def _text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def select(run: Path, where: Where) -> Selection:
    """Scan the selected rows once for the union of their nested keys (streaming)."""
    nested: dict[str, set[str]] = {name: set() for name in catalog.FREE}
    count = units = 0
    for count, entry in enumerate(catalog.entries(run, where), 1):
        for name, keys in nested.items():
            keys.update(entry.params.get(name) or ())
        units = max(units, len(entry.params.get("control") or ()))
    with Manifest(catalog.manifest_of(run), readonly=True) as manifest:
        have, used, grouped = manifest.scorer_names(), manifest.scorers(), manifest.grouped()
    columns = tuple(c for c in scorers.COLUMNS if scorers.BY_COLUMN[c].name in have)
    return Selection(run, where, {k: tuple(sorted(v)) for k, v in nested.items() if v}, count,
                     last_record(run), columns, tuple(u for u in used if u["images"]),
                     bool(grouped), units)


REFERENCES = tuple(f.name for f in FIELDS if f.source)  # checkpoints, VAEs, refiners, inputs


def last_record(run: Path) -> dict | None:
    """The record of the run folder's last run (runs/run-NNNN.yaml, as the manifest keeps it)."""
    with Manifest(run / "manifest.sqlite", readonly=True) as manifest:
        last = manifest.last_run()
    return yaml.safe_load(last["recipe"]) if last else None


def public_ref(ref: str | None, base: Path | None) -> str | None:
    """A reference as a published dataset shows it, never the machine's layout: a path in the
    recipe's folder relative to it, another absolute path by its name; a hub id or a built-in
    model as it is (a single file's config likewise)."""
    if not ref:
        return ref
    weights, mark, config = ref.partition(CONFIG_MARK)
    path = Path(weights)
    if path.is_absolute():
        weights = path.relative_to(base).as_posix() if base and path.is_relative_to(base) \
            else path.name
    return weights + mark + (public_ref(config, base) or "")


# recipe keys that hold model references or input paths (a refiner's or a LoRA's in a mapping)
REFERENCE_KEYS = tuple(k.name for k in (*LOADED, *INPUT_KEYS)) + ("loras",)


def _public_paths(value: Any, base: Path | None) -> Any:
    if isinstance(value, str):
        return public_ref(value, base)
    if isinstance(value, list):
        return [_public_paths(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _public_paths(v, base) for k, v in value.items()}
    return value


def published(record: dict) -> dict:
    """A run's record (runs/run-NNNN.yaml) as a dataset card shows it: the recipe's own fields
    and settings, every path made public; where the files were on this machine left out."""
    base = Path(record["base"]) if record.get("base") else None
    shown = {k: v for k, v in record.items() if k not in ("base", "outputs")}
    if "recipe" in shown:
        shown["recipe"] = Path(shown["recipe"]).name
    for key in REFERENCE_KEYS:  # the recipe's references as it wrote them (maybe paths)
        if key in shown:
            shown[key] = _public_paths(shown[key], base)
    if "models" in shown:
        shown["models"] = {
            public_ref(ref, base): {k: public_ref(v, base) if k == "config" else v
                                    for k, v in model.items() if k != "path"}
            for ref, model in shown["models"].items()}
    if "inputs" in shown:
        shown["inputs"] = {public_ref(path, base): identity
                           for path, identity in shown["inputs"].items()}
    return shown




def caption(entry: Entry) -> str:
    """What training scripts read as an image's text: the recipe's caption, else the prompt as
    written."""
    return entry.get("text")
