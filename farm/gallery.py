"""A run you can browse offline: a static folder (index.html, data.js, thumbnails) that opens
from disk in any browser, with no server and no network.

    index.html         the page: facets, a grid or an X/Y view, an image's overlay, the run's
                       health; its script and style are inline (gallery_page.html)
    data.js            the images and their fields, as a script (a browser refuses fetch() of
                       a local file from file://, but loads <script src>): value tables per
                       field, and for each image the index of its value in each
    details/NNNNN.js   per CHUNK images: infotext and farm record, loaded when one is opened
    thumbs/NNNNN/ID.webp   thumbnails, made once and kept while the gallery is refreshed

The page shows every prompt, value and error through textContent, never as HTML. The gallery
only reads the run folder (and writes where it is told: RUN/gallery by default).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from farm import __version__, catalog, grid, scorers
from farm.catalog import Entry, Where
from farm.manifest import Manifest
from farm.outputs import RunFolder, write_atomic

THUMB = 256  # thumbnails' longest side in pixels
CHUNK = 1000  # images per details file
SCORE_BINS = 10  # a score column's facet: values in this many equal ranges
MAX_FAILURES = 500  # failures listed on the page (the count is whole)
CURVE_POINTS = 120  # bins of the throughput chart


class GalleryError(ValueError):
    """A gallery that cannot be made: not a run folder, nothing selected, a bad target."""


@dataclass(frozen=True)
class Made:
    """What a gallery run wrote."""

    folder: Path
    images: int
    thumbs_made: int  # new thumbnails (the others were kept)
    fields: tuple[str, ...]  # the facets: fields that vary


def build(run: Path, to: Path | None = None, where: Where = Where()) -> Made:
    """Write (or refresh) the gallery of a run folder's finished images into `to`."""
    # 1. the images and the fields that vary among them
    folder = RunFolder(Path(run))
    catalog.manifest_of(folder.root)
    to = Path(to) if to is not None else folder.root / "gallery"
    root, target = folder.root.resolve(), to.resolve()
    if target == root or root / "images" in (target, *target.parents):
        raise GalleryError(f"--to {to}: a gallery has its own folder, never the run folder or "
                           "its images (default: RUN/gallery)")
    entries = list(catalog.entries(folder.root, where))
    columns = _columns(entries)
    tables = {name: _table(entries, name) for name in columns}
    facets = [name for name in columns if len(tables[name][0]) > 1]
    constant = {name: tables[name][0][0] for name in columns  # what every image shares
                if len(tables[name][0]) == 1 and not name.endswith("_identity")
                and tables[name][0][0] not in ("(none)", "False", "")}
    # 2. thumbnails, made once (a refresh keeps those it has)
    to.mkdir(parents=True, exist_ok=True)
    made = _thumbnails(folder.root, to, entries)
    # 3. the data the page reads, and the details of each image in chunks
    images = []
    for i, e in enumerate(entries):
        images.append([e.id, e.seq, e.path, [tables[name][1][i] for name in facets]])
    data = {
        "run": folder.root.name, "farm": __version__, "where": str(where),
        "made_at": datetime.now().isoformat(timespec="seconds"),
        "fields": [{"name": name, "values": tables[name][0], "numeric": tables[name][2]}
                   for name in facets],
        "constant": constant, "images": images, "chunk": CHUNK,
        # where the run folder is from the gallery: image paths are relative to it
        "run_folder": os.path.relpath(folder.root, to).replace(os.sep, "/") + "/",
        "health": _health(folder),
        "replay": f"farm replay {folder.root}/",
    }
    chunks = set()
    for start in range(0, len(entries), CHUNK):
        details = [_details(e) for e in entries[start:start + CHUNK]]
        path = to / "details" / f"{start // CHUNK:05d}.js"
        text = f"farmDetails({start // CHUNK}, {_json(details)});\n".encode()
        if not path.is_file() or path.read_bytes() != text:  # a refresh rewrites what changed
            write_atomic(path, text)
        chunks.add(path.name)
    for stale in (to / "details").glob("*.js"):
        if stale.name not in chunks:
            stale.unlink()
    write_atomic(to / "data.js", f"window.FARM_GALLERY = {_json(data)};\n".encode())
    page = resources.files("farm").joinpath("gallery_page.html").read_text(encoding="utf-8")
    write_atomic(to / "index.html", page.encode())
    return Made(to, len(entries), made, tuple(facets))


def _json(value: Any) -> str:
    """JSON for a script: `<` escaped too, so no text can close a script element."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def _columns(entries: list[Entry]) -> list[str]:
    """What the page may show and filter on: the job's fields (as contact sheets take them),
    template values and prompt-file columns, and the run's score columns."""
    names = [n for n in grid.candidates(entries) if n != "template"]
    scored = {c for e in entries for c in e.scores}
    names += [c for c in scorers.COLUMNS if c in scored and c != "phash"]
    if any(e.dup_group is not None for e in entries):
        names.append("dup_group")
    return names


def _table(entries: list[Entry], name: str) -> tuple[list[str], list[int], bool]:
    """A field's values as the page shows them (labels, in order: numbers ascending, the rest
    in the order the run made them), each image's index into them, and whether they are
    numbers. A score column is cut into SCORE_BINS ranges."""
    raw = [e.get(name) for e in entries]
    if name in scorers.NUMERIC:
        return _binned(raw)
    keys = [_key(v) for v in raw]
    first = dict(zip(reversed(keys), reversed(raw)))  # key -> a value (the first seen wins)
    order = list(dict.fromkeys(keys))
    numeric = all(isinstance(first[k], (int, float)) and not isinstance(first[k], bool)
                  for k in order)
    if numeric:
        order.sort(key=lambda k: first[k])
    labels = [_shown(first[k]) for k in order]
    index = {k: i for i, k in enumerate(order)}
    return labels, [index[k] for k in keys], numeric


def _key(value: Any) -> Any:
    """A value as a dict key: itself when it can be one (a boolean kept apart from 1 and 0),
    else its JSON."""
    if isinstance(value, bool):
        return ("bool", value)
    if value is None or isinstance(value, (str, int, float)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _shown(value: Any) -> str:
    """A value in one line: a structured one (a LoRA set, a hires pass) joined up."""
    if isinstance(value, list):
        return " + ".join(_shown(v) for v in value) or "(none)"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items() if v is not None)
    return grid.label(value)


def _binned(raw: list[Any]) -> tuple[list[str], list[int], bool]:
    numbers = [float(v) for v in raw if v is not None]
    if not numbers:
        return ["(none)"], [0] * len(raw), False
    low, high = min(numbers), max(numbers)
    width = (high - low) / SCORE_BINS or 1.0
    labels = [f"{low + k * width:.3g} to {low + (k + 1) * width:.3g}" for k in range(SCORE_BINS)]
    missing = len(labels)
    labels.append("(none)")
    index = [missing if v is None else min(SCORE_BINS - 1, int((float(v) - low) / width))
             for v in raw]
    used = sorted(set(index))  # only the ranges that hold images
    remap = {old: new for new, old in enumerate(used)}
    return [labels[k] for k in used], [remap[k] for k in index], True


def _thumb_path(entry: Entry) -> str:
    return f"thumbs/{entry.seq // 10_000:05d}/{entry.id}.webp"


def _thumbnails(run: Path, to: Path, entries: list[Entry]) -> int:
    """Make the thumbnails that are missing (in threads: decoding and WebP encoding let go
    of the GIL); return how many were made."""
    missing = [e for e in entries if not (to / _thumb_path(e)).is_file()]

    def make(entry: Entry) -> None:
        target = to / _thumb_path(entry)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with Image.open(run / entry.path) as image:
                image.thumbnail((THUMB, THUMB))
                partial = target.with_name(f".{target.name}.partial")
                image.convert("RGB").save(partial, "WEBP", quality=80)
            os.replace(partial, target)
        except OSError:  # the file is gone or damaged: the page shows the gap
            pass

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(make, missing))
    return len(missing)


def _details(entry: Entry) -> dict[str, Any]:
    """What an image's overlay shows beyond its fields: its infotext and farm record."""
    return {"id": entry.id, "path": entry.path, "infotext": _infotext(entry.params),
            "farm": entry.params, "scores": entry.scores, "pixel_hash": entry.pixel_hash}


def _infotext(params: dict) -> str | None:
    """AUTOMATIC1111's parameters text of a recorded job (as its image carries it)."""
    from farm.jobs import Job, Model
    from farm.outputs import infotext

    def found(field: str, ref: str, identity: str, path: str | None = None) -> Model:
        return Model(ref=ref, path=path or "", identity=identity)

    try:
        return infotext(Job.from_dict(params, found))
    except (KeyError, TypeError, ValueError, OSError):
        return None


def _health(folder: RunFolder) -> dict[str, Any]:
    """The run's counts (report.json), its failures with their reasons, and its throughput:
    images recorded per worker over the time of the last run that recorded any."""
    with Manifest(folder.manifest, readonly=True) as manifest:
        counts = manifest.counts()
        failures = [[path, error] for _, path, error in manifest.failures()]
        times: dict[str, list[float]] = {}
        last = manifest.db.execute("SELECT MAX(run_id) FROM jobs WHERE status = 'done'"
                                   ).fetchone()[0]
        for worker, stamp in manifest.db.execute(
                "SELECT worker, updated_at FROM jobs WHERE status = 'done' AND run_id = ?",
                (last,)):
            try:
                times.setdefault(worker or "?", []).append(
                    datetime.fromisoformat(stamp).timestamp())
            except (TypeError, ValueError):
                continue
    return {"counts": counts, "failures": failures[:MAX_FAILURES],
            "failed": len(failures), "report": folder.read_report(),
            "throughput": _curve(times), "run": last}


def _curve(times: dict[str, list[float]]) -> dict[str, Any] | None:
    """Images per bin of time, per worker (bins of whole seconds: the manifest's resolution)."""
    stamps = [t for ts in times.values() for t in ts]
    if not stamps:
        return None
    start, end = min(stamps), max(stamps)
    width = max(1.0, float(int((end - start) / CURVE_POINTS) + 1))
    bins = int((end - start) / width) + 1
    per_worker = {}
    for worker, ts in sorted(times.items()):
        counted = Counter(int((t - start) / width) for t in ts)
        per_worker[worker] = [counted.get(k, 0) for k in range(bins)]
    return {"start": datetime.fromtimestamp(start).isoformat(timespec="seconds"),
            "bin_seconds": width, "workers": per_worker}
