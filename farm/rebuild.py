"""A run folder's manifest rebuilt from its images: each image carries its job (the `farm`
JSON), so a damaged or deleted manifest.sqlite loses nothing."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from farm import outputs
from farm.manifest import Manifest
from farm.outputs import PARTIAL_SUFFIX, RunFolder

SEQUENCE = re.compile(r"(\d{8})-")  # images/00000/00000042-a-red-fox-3.png: number 42
NOT_JOB = ("farm_version", "batch_size", "position", "scheduler_class", "scheduler_config",
           "format", "quality")  # what the farm JSON holds besides the job's own record


@dataclass(frozen=True)
class Rebuilt:
    images: int  # finished images recorded again
    skipped: list[str]  # files that are not farm images (or are damaged), with why
    kept: Path | None  # where the old manifest was moved, if there was one


def rows(folder: RunFolder, skipped: list[str],
         attempts: dict[str, int] | None = None) -> Iterator[dict]:
    """The manifest row of every image in the folder, in file order (with the attempts the old
    manifest counted, where it could still be read)."""
    seen: set[str] = set()
    for path in sorted((folder.root / "images").glob("*/*")):
        if path.suffix not in (".png", ".jpg", ".webp") or path.name.endswith(PARTIAL_SUFFIX):
            continue
        relative = path.relative_to(folder.root).as_posix()
        number = SEQUENCE.match(path.name)
        try:
            _, meta = outputs.read_metadata(path)
            with Image.open(path) as image:
                pixels = outputs.pixel_hash(image)
        except (OSError, KeyError, ValueError) as e:
            skipped.append(f"{relative}: {type(e).__name__}: {e}")
            continue
        if number is None or meta.get("id") in seen:
            skipped.append(f"{relative}: " + ("a second file of job " + meta["id"]
                                              if number else "not named as farm names images"))
            continue
        seen.add(meta["id"])
        scheduler = ({"class": meta["scheduler_class"], "config": meta.get("scheduler_config")}
                     if "scheduler_class" in meta else None)
        yield {"id": meta["id"], "seq": int(number[1]), "path": relative, "pixel_hash": pixels,
               "attempts": (attempts or {}).get(meta["id"]),
               "params": json.dumps({k: v for k, v in meta.items() if k not in NOT_JOB},
                                    ensure_ascii=False),
               "batch_size": meta.get("batch_size"), "position": meta.get("position"),
               "scheduler": json.dumps(scheduler, default=str) if scheduler else None,
               "provenance": None}


def recorded(folder: RunFolder) -> tuple[list[dict], dict[str, int]]:
    """The runs the folder recorded, and each job's attempts: from the old manifest where it
    can still be read, else the runs from their records in runs/ (their counts unknown)."""
    attempts: dict[str, int] = {}
    if folder.manifest.exists():
        try:
            with Manifest(folder.manifest, readonly=True) as old:
                runs = old.runs()
                attempts = {row["id"]: row["attempts"] for row in old.rows()}
            if runs or not folder.recorded_runs():
                return runs, attempts
        except Exception:  # a damaged database fails in any of SQLite's ways: use the records
            attempts = {}
    runs = []
    for number, path in folder.recorded_runs().items():
        started = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
        runs.append({"id": number, "started_at": started.isoformat(timespec="seconds"),
                     "recipe": path.read_text(encoding="utf-8"), "planned": 0})
    return runs, attempts


def rebuild(root: Path) -> Rebuilt:
    """Rebuild RUN/manifest.sqlite from the images, under the folder's lock; the old one (if
    any) is kept beside it as manifest.sqlite.damaged."""
    folder = RunFolder(Path(root))
    if not (folder.root / "images").is_dir():
        raise FileNotFoundError(f"{folder.root}: no images/ folder to rebuild a manifest from")
    with folder.locked():
        fresh = folder.manifest.with_name("manifest.sqlite.rebuilding")
        for stale in (fresh, fresh.with_name(fresh.name + "-wal"),
                      fresh.with_name(fresh.name + "-shm")):
            stale.unlink(missing_ok=True)
        skipped: list[str] = []
        runs, attempts = recorded(folder)
        with Manifest(fresh) as manifest:
            count = manifest.insert_done(rows(folder, skipped, attempts))
            manifest.insert_runs(runs)
            manifest.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        kept = None
        if folder.manifest.exists():
            kept = folder.manifest.with_name("manifest.sqlite.damaged")
            os.replace(folder.manifest, kept)
        for suffix in ("-wal", "-shm"):  # the old database's journal must not meet the new one
            folder.manifest.with_name(folder.manifest.name + suffix).unlink(missing_ok=True)
        os.replace(fresh, folder.manifest)
        for suffix in ("-wal", "-shm"):
            fresh.with_name(fresh.name + suffix).unlink(missing_ok=True)
    return Rebuilt(count, skipped, kept)
