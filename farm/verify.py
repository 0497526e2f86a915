"""Check a run folder: every recorded file is there and decodes to its recorded pixels, and
finished jobs rendered again give the same pixels."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from farm import catalog, outputs
from farm.catalog import Where
from farm.jobs import ImageFormat, Slot
from farm.manifest import Manifest
from farm.outputs import RunFolder
from farm.replay import ReplayError, job_from, stored_format

TOLERANCE = 1  # of 255: what other batch shapes change, measured on the CPU


@dataclass(frozen=True)
class Finding:
    path: str
    # identical | within tolerance | different | missing | unreadable | replaced |
    # not rendered again (its input image or a model is gone)
    verdict: str
    detail: str = ""

    @property
    def bad(self) -> bool:
        return self.verdict not in ("identical", "within tolerance")


def check_files(folder: RunFolder) -> list[Finding]:
    """Every file the manifest records as done: present, decodable, and the recorded pixels."""
    findings = []
    with Manifest(folder.manifest, readonly=True) as manifest:
        for path, recorded in manifest.done_files():
            file = folder.root / path
            if not file.is_file():
                findings.append(Finding(path, "missing"))
                continue
            try:
                with Image.open(file) as image:
                    actual = outputs.pixel_hash(image)
            except (OSError, ValueError) as e:
                findings.append(Finding(path, "unreadable", f"{type(e).__name__}: {e}"))
                continue
            if actual != recorded:
                findings.append(Finding(path, "replaced", "its pixels are not the recorded ones"))
            elif file.suffix != ".png" and not file.with_suffix(".json").is_file():
                findings.append(Finding(path, "missing", "its .json sidecar (farm metadata)"))
    return findings


def rerender(folder: RunFolder, sample: int | None, device: str | None = None,
             moved: Mapping[str, str] | None = None,
             found_in: Sequence[Path] = (), where: Where = Where()) -> list[Finding]:
    """Render `sample` finished jobs again (all when None) of those `where` selects, and
    compare their pixels."""
    from farm.worker import Device, Worker

    chosen = catalog.entries(folder.root, where) if sample is None else \
        catalog.sample(folder.root, where, sample)  # (never every row in memory)
    rows = ((e.path, e.params, e.row["batch_size"], e.row["position"], e.row["provenance"])
            for e in chosen)
    findings = []
    workers: dict[tuple[bool, bool], Worker] = {}
    with tempfile.TemporaryDirectory(prefix="farm-verify-") as scratch:
        for path, params, batch_size, position, provenance in rows:
            # like with like: the speed-ups that made it (compile, fused QKV) on here too
            made = json.loads(provenance or "null") or {}
            speedups = (bool(made.get("compile")), bool(made.get("fused_qkv")))
            worker = workers.get(speedups)
            if worker is None:
                worker = workers[speedups] = Worker(
                    scratch, name="verify", device=Device.named(device) if device else None,
                    compile=speedups[0], fuse_qkv=speedups[1])
            try:
                job = job_from(params, path, moved, found_in)
            except ReplayError as e:  # an input or model gone: say so, and check the others
                findings.append(Finding(path, "not rendered again", str(e)))
                continue
            original = folder.root / path
            fmt = ImageFormat()
            if original.suffix != ".png" and original.is_file():  # lossy: the same quality
                try:
                    fmt = stored_format(outputs.read_metadata(original)[1])
                except (OSError, ValueError):  # no sidecar: check_files reports it
                    fmt = ImageFormat(original.suffix.lstrip(".").replace("jpg", "jpeg"))
            slot = Slot.of({"batch_size": batch_size, "position": position})
            result, = worker.render(slot.batch(job, Path(path).name, fmt))
            if not result.ok:
                findings.append(Finding(path, "different", f"rendering failed: {result.error}"))
            elif not original.is_file():
                findings.append(Finding(path, "missing"))
            else:
                finding = _compare(path, original, Path(scratch) / result.path)
                elsewhere = _elsewhere(made, json.loads(result.provenance or "null") or {})
                if finding.verdict != "identical" and elsewhere:
                    finding = Finding(path, finding.verdict, f"{finding.detail}; {elsewhere}")
                findings.append(finding)
    return findings


def _elsewhere(made: dict, here: dict) -> str:
    """Why pixels may differ in their last bits: what made the image that differs here."""
    keys = ("device", "dtype", "torch", "diffusers", "vae_tiling", "vae_slicing",
            "weights_variant")
    changed = [f"{k} {made.get(k)} then, {here.get(k)} now" for k in keys
               if made and made.get(k) != here.get(k)]
    return "rendered with " + ", ".join(changed) if changed else ""


def _compare(path: str, original: Path, again: Path) -> Finding:
    try:
        with Image.open(original) as a:
            left = np.asarray(a.convert("RGB"), int)
    except (OSError, ValueError) as e:  # damaged on disk: named, and the others still compared
        return Finding(path, "unreadable", f"{type(e).__name__}: {e}")
    with Image.open(again) as b:
        right = np.asarray(b.convert("RGB"), int)
    if left.shape != right.shape:
        return Finding(path, "different", f"size {left.shape} vs {right.shape}")
    worst = int(np.abs(left - right).max())
    if worst == 0:
        return Finding(path, "identical")
    share = float((left != right).mean())
    verdict = "within tolerance" if worst <= TOLERANCE else "different"
    return Finding(path, verdict, f"max difference {worst}/255 on {share:.4%} of values")
