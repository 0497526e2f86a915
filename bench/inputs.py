"""What reading input images costs the plan: identifying them by their pixels.

    python bench/inputs.py [--images 1000] [--size 512]

Writes IMAGES noise PNGs of SIZE x SIZE, as files in a folder and as one .tar shard, then prints
the seconds to list and identify them (decode + pixel hash), the first time (with the threads
farm uses, and with one thread, the baseline) and again from the hash cache, as a resumed run
does.
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="farm-bench-inputs-"))
    os.environ["FARM_CACHE"] = str(root / "cache")  # a cold hash cache
    from farm import inputs

    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(args.images):
        Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(
            folder / f"{i:06d}.png", compress_level=1)
    shard = root / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for file in sorted(folder.iterdir()):
            tar.add(file, file.name)

    def timed(source: Path, threads: int) -> float:
        inputs.THREADS = threads
        inputs._Cache.known.clear()  # as a new process: the cache file read again
        inputs._Cache.read_to.clear()
        started = time.perf_counter()
        found = list(inputs.identify(inputs.listed(str(source), root)))
        assert len(found) == args.images
        return time.perf_counter() - started

    print(f"{args.images} inputs of {args.size}x{args.size}, seconds (this machine: "
          f"{os.cpu_count()} cores)")
    for label, source in (("folder", folder), ("tar shard", shard)):
        one = timed(source, 1)
        (root / "cache" / "input-hashes.jsonl").unlink()
        many = timed(source, max(1, min(8, os.cpu_count() or 1)))
        cached = timed(source, 1)
        print(f"  {label:<10} first time: {one:6.2f} (1 thread)  {many:6.2f} (farm's threads)"
              f"   cached: {cached:5.2f}")


if __name__ == "__main__":
    main()
