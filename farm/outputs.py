"""The run folder: file layout, image metadata, atomic writes, pixel hashes.

    outputs/<name>/
      manifest.sqlite          what is done (manifest.py)
      runs/run-0001.yaml       the resolved recipe of each run
      images/00000/00000042-a-red-fox-in-fresh-snow-3.png
                               sharded by sequence number, 10,000 images a folder
      images/00000/00000043-a-red-fox-in-fresh-snow-4.jpg (+ .json)
                               jpeg and webp: infotext in EXIF, the farm JSON in a sidecar
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from farm import __version__, emphasis
from farm.fields import FIELDS
from farm.jobs import ImageFormat, Job

SHARD_SIZE = 10_000
SLUG_LENGTH = 40
PARTIAL_SUFFIX = ".partial"  # files still being written; removed at the start of every run
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286  # where AUTOMATIC1111 puts infotext in a JPEG or WebP
UNICODE_MARK = b"UNICODE\0"  # EXIF UserComment's character code for UTF-16 (big-endian)


class FolderBusy(RuntimeError):
    """Another `farm render` is writing to this run folder."""


class RunFolder:
    def __init__(self, root: Path, image: ImageFormat = ImageFormat()):
        self.root = Path(root)
        self.image = image  # how new images are written

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.sqlite"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's write lock: one render at a time may write a run folder."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FolderBusy(f"another farm render is writing to {self.root}; wait for it "
                                 "or stop it (farm status shows its progress)") from None
            yield

    def image_path(self, seq: int, job: Job) -> str:
        """Where job number `seq` of this folder goes, relative to the folder."""
        return (f"images/{seq // SHARD_SIZE:05d}/"
                f"{seq:08d}-{slug(job.prompt)}-{job.seed}{self.image.suffix}")

    def write(self, relative: str, files: tuple[tuple[str, bytes], ...]
              ) -> tuple[str | None, str | None]:
        """An image's encoded files (encode_image) written atomically: (error, why the run must
        stop), both None when written. A full or read-only disk stops the run: every write
        would fail."""
        try:
            write_files(self.absolute(relative), files)
        except OSError as e:
            error = f"could not write {relative}: {e}"
            return error, error if e.errno in DISK_ERRORS else None
        return None, None

    def absolute(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"{relative!r} is outside the run folder {self.root}")
        return path

    def stored_suffix(self) -> str | None:
        """The file type of the images already recorded here (None when there are none)."""
        from farm.manifest import Manifest

        if not self.manifest.exists():
            return None
        with Manifest(self.manifest, readonly=True) as manifest:
            first = manifest.first_path()
        return Path(first).suffix if first else None

    def remove_partial_files(self) -> int:
        """Delete files left half-written by a killed run (they were never recorded), and the
        probe files of renders that were killed before they could remove theirs (the caller
        holds the folder: no other render is starting workers on it)."""
        removed = 0
        for partial in (self.root / "images").glob(f"*/*{PARTIAL_SUFFIX}"):
            partial.unlink(missing_ok=True)
            removed += 1
        for probe in self.root.glob(f"{PROBE_PREFIX}*"):
            if probe.name != f"{PROBE_PREFIX}{os.getpid()}":
                probe.unlink(missing_ok=True)
        return removed

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def write_report(self, report: dict) -> None:
        """report.json: what the last render did (run.report)."""
        write_atomic(self.report, json.dumps(report, indent=1, ensure_ascii=False).encode())

    def read_report(self) -> dict | None:
        try:
            return json.loads(self.report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def save_recipe(self, run_id: int, text: str) -> Path:
        """runs/run-NNNN.yaml: a run's record, never overwritten."""
        path = self.root / "runs" / f"run-{run_id:04d}.yaml"
        if path.exists():
            raise FileExistsError(f"{path} records an earlier run; farm never overwrites it")
        write_atomic(path, text.encode())
        return path

    def recorded_runs(self) -> dict[int, Path]:
        """The run records of runs/, by run number."""
        found = {}
        for path in (self.root / "runs").glob("run-*.yaml"):
            number = path.stem.removeprefix("run-")
            if number.isdigit():
                found[int(number)] = path
        return dict(sorted(found.items()))


def slug(text: str) -> str:
    """A file-name-safe, lower-case ASCII excerpt of a prompt: never a path, never empty."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    cleaned = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return cleaned[:SLUG_LENGTH].rstrip("-") or "image"


def infotext(job: Job) -> str:
    """AUTOMATIC1111's `parameters` text, so that other tools read the settings: the prompt (with
    a `<lora:NAME:WEIGHT>` tag for each of the recipe's LoRAs, so that pasting it into
    AUTOMATIC1111 applies them too), the negative, then the `Key: value` pairs each field
    writes, in the table's order."""
    tagged = {name for name, _ in emphasis.loras(job.prompt)[1]}
    lines = [" ".join([job.prompt, *(f"<lora:{lora.name}:{lora.weight:g}>" for lora in job.loras
                                     if lora.model.ref not in tagged and ":" not in lora.name)])]
    if job.negative:
        lines.append(f"Negative prompt: {job.negative}")
    pairs: dict[str, Any] = {}
    for f in FIELDS:
        pairs.update(f.infotext(job))
    pairs["Version"] = f"farm {__version__}"
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs.items()))
    return "\n".join(lines)


def metadata(job: Job, scheduler: dict | None = None, batch_size: int | None = None,
             image: ImageFormat = ImageFormat(), position: int = 0,
             control_maps: list[str] | None = None) -> dict:
    """The `farm` JSON: enough to render the same image again, the scheduler that ran, the
    batch size and position it was rendered at (the same call shape gives the same pixels, bit
    for bit), and for a lossy file the format and quality that turned those pixels into the
    stored ones."""
    record = {**job.to_dict(), "farm_version": __version__}
    if batch_size:
        record["batch_size"] = batch_size
        record["position"] = position
    if scheduler:
        record["scheduler_class"] = scheduler["class"]
        record["scheduler_config"] = scheduler["config"]
    if image.kind != "png":
        record["format"], record["quality"] = image.kind, image.quality
    if control_maps:  # each ControlNet unit's detected map, by its pixels
        record["control_maps"] = control_maps
    return record


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixel_hash(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and the size: PNG bytes may differ, pixels may not."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def write_image(image: Image.Image, path: Path, job: Job, fmt: ImageFormat = ImageFormat(),
                scheduler: dict | None = None, batch_size: int | None = None,
                position: int = 0) -> str:
    """Write an image with its metadata atomically; return the hash of the pixels the file
    decodes to (for a lossy format, not quite the rendered ones)."""
    files, digest = encode_image(image, job, fmt, scheduler, batch_size, position)
    write_files(path, files)
    return digest


def encode_image(image: Image.Image, job: Job, fmt: ImageFormat = ImageFormat(),
                 scheduler: dict | None = None, batch_size: int | None = None,
                 position: int = 0, control_maps: list[str] | None = None
                 ) -> tuple[tuple[tuple[str, bytes], ...], str]:
    """The bytes of an image's files, as (suffix, bytes) in the order they are written, and the
    hash of the pixels the image file decodes to.

    png: the `parameters` infotext and the `farm` JSON as text chunks. jpeg and webp: the
    infotext in EXIF UserComment, where AUTOMATIC1111 puts it, and the `farm` JSON in a sidecar
    `.json` written first, so that an image in place always has its sidecar."""
    record = json.dumps(metadata(job, scheduler, batch_size, fmt, position, control_maps),
                        ensure_ascii=False, default=str)
    buffer = io.BytesIO()
    if fmt.kind == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", infotext(job))
        info.add_text("farm", record)
        image.save(buffer, format="PNG", pnginfo=info, compress_level=fmt.png_compression)
        return (("", buffer.getvalue()),), pixel_hash(image)
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = UNICODE_MARK + infotext(job).encode("utf-16-be")
    options = {"lossless": True} if fmt.lossless else {"quality": fmt.quality}
    image.convert("RGB").save(buffer, format=fmt.kind.upper(), exif=exif, **options)
    with Image.open(buffer) as stored:
        digest = pixel_hash(stored)
    return ((".json", record.encode()), ("", buffer.getvalue())), digest


def write_files(path: Path, files: tuple[tuple[str, bytes], ...]) -> None:
    """An image's files (encode_image) written atomically, in order: "" is the image itself,
    another suffix replaces the image's (its sidecar)."""
    for suffix, data in files:
        write_atomic(path.with_suffix(suffix) if suffix else path, data)


# a file a Ray render writes into the run folder, that only workers which see the folder read
# (cluster.py); .probe-PID, removed when the render ends
PROBE_PREFIX = ".probe-"
DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)  # the disk, not the file: stop the run


def write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name, flush, rename into place; a failed write leaves nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def read_metadata(path: Path) -> tuple[str, dict]:
    """The `parameters` infotext and the `farm` JSON of an image farm wrote."""
    path = Path(path)
    with Image.open(path) as image:
        if image.format == "PNG":
            text = image.text  # type: ignore[attr-defined]
            return text.get("parameters", ""), json.loads(text["farm"])
        comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT, b"")
    if isinstance(comment, bytes) and comment.startswith(UNICODE_MARK):
        comment = comment[len(UNICODE_MARK):].decode("utf-16-be")
    elif isinstance(comment, bytes):
        comment = comment[8:].decode("utf-8", "replace")  # ASCII or unknown character code
    return comment, json.loads(path.with_suffix(".json").read_text())
