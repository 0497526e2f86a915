"""Time and peak memory of `farm export` for run folders of growing size.

    python bench/export_scale.py [--images 10000 100000]

For each size, builds a synthetic run folder (a manifest of done rows with template values,
and an 8x8 PNG per row, 10,000 to a folder), then runs each export format (hub: parquet shards
with the images embedded, and the dataset card) in a fresh process
and prints its wall time and peak RSS. The baseline in the same run is a bare pass over the
manifest (one cursor, json.loads of each row) in a fresh process: memory that grows with the
run size beyond the baseline's would mean an export holds rows.
"""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

# peak RSS from VmHWM: it starts afresh at exec, while ru_maxrss keeps the parent's peak
PEAK = "print(int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024)"
BARE = """
import json, sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}/manifest.sqlite?mode=ro", uri=True)
n = sum(1 for (p,) in db.execute("SELECT params FROM jobs WHERE status='done' ORDER BY seq")
        if json.loads(p))
""" + PEAK
EXPORT = """
import sys
from pathlib import Path
from farm import export
kind, _, link = sys.argv[3].partition("+")
export.export(Path(sys.argv[1]), Path(sys.argv[2]), export.Options(kind, link=link == "link"))
""" + PEAK


def started(root: Path) -> tuple[bytes, sqlite3.Connection]:
    """An 8x8 PNG's bytes, and a new manifest in `root` (bench/gallery.py builds with it too)."""
    from farm.manifest import SCHEMA

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "gray").save(buffer, format="PNG")
    db = sqlite3.connect(root / "manifest.sqlite")
    db.executescript(SCHEMA)
    return buffer.getvalue(), db


def build(root: Path, count: int) -> None:
    png, db = started(root)
    rows = []
    for seq in range(count):
        path = f"images/{seq // 10_000:05d}/{seq:08d}-a-cat-{seq}.png"
        if seq % 10_000 == 0:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(png)
        animal = ("cat", "dog", "owl")[seq % 3]
        params = {"id": f"{seq:024x}", "checkpoint": "tiny", "checkpoint_identity": "a" * 64,
                  "vae": None, "vae_identity": None, "prompt": f"a {animal} number {seq}",
                  "negative": "blurry", "seed": seq, "sampler": "euler", "scheduler": "normal",
                  "steps": 20, "cfg": 7.0, "width": 8, "height": 8, "clip_skip": 1,
                  "dtype": "auto", "template": "a {animal} number {n}",
                  "values": {"animal": animal, "n": str(seq)}}
        rows.append((f"{seq:024x}", seq, path, "done", "f" * 64, json.dumps(params), 1, 0.1,
                     4, seq % 4, "w", json.dumps({"class": "EulerDiscreteScheduler",
                                                   "config": {}}),
                     json.dumps({"device": "cpu"}), 1, 1, "now"))
        if len(rows) == 10_000 or seq == count - 1:
            insert(db, rows)
            rows = []
    db.commit()
    db.close()


def insert(db: sqlite3.Connection, rows: list[tuple]) -> None:
    db.executemany("INSERT INTO jobs (id, seq, path, status, pixel_hash, params, attempts, "
                   "seconds, batch_size, position, worker, scheduler, provenance, run_id, "
                   "claimed_run, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)


def timed(code: str, *args: str) -> tuple[float, float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True,
                         text=True).stdout
    return time.perf_counter() - started, float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    print(f"{'images':>8}  {'what':<16} {'seconds':>8} {'images/s':>9} {'peak MiB':>9}")
    for count in args.images:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            run.mkdir()
            build(run, count)
            seconds, peak = timed(BARE, str(run))
            print(f"{count:>8}  {'bare pass':<16} {seconds:>8.1f} {count / seconds:>9.0f} "
                  f"{peak:>9.0f}")
            for kind in ("imagefolder", "imagefolder+link", "webdataset", "parquet", "hub"):
                seconds, peak = timed(EXPORT, str(run), str(Path(tmp) / kind), kind)
                print(f"{count:>8}  {kind:<16} {seconds:>8.1f} {count / seconds:>9.0f} "
                      f"{peak:>9.0f}")


if __name__ == "__main__":
    main()
