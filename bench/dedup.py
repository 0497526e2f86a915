"""Grouping near-duplicates: farm dedup's grouping against comparing every pair.

    python bench/dedup.py [--images 100000] [--distance 4] [--pairs-sample 5000]

Builds --images random 64-bit perceptual hashes, 1% of them near copies of others (1 to
--distance bits flipped), and prints:
  - the baseline: comparing every pair (numpy, a block at a time), timed on --pairs-sample
    hashes and scaled by the number of pairs to --images (n^2/2 grows; it is not run whole);
  - farm's grouping (curation.groups: multi-index hashing, distance + 1 bands): seconds and
    peak memory at --images, and whether it found every planted group.
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

import numpy as np

from farm.curation import _bits, groups


def planted(count: int, distance: int, seed: int = 0) -> tuple[list[int], int]:
    rng = random.Random(seed)
    copies = count // 100
    hashes = [rng.getrandbits(64) for _ in range(count - copies)]
    for i in range(copies):
        value = hashes[i]
        for bit in rng.sample(range(64), rng.randint(1, distance)):
            value ^= 1 << bit
        hashes.append(value)
    return hashes, copies


def all_pairs_seconds(hashes: list[int], distance: int) -> float:
    values = np.array(hashes, dtype=np.uint64)
    started = time.perf_counter()
    for start in range(0, len(values), 256):
        block = values[start:start + 256]
        _bits(block[:, None] ^ values[None, :]) <= distance
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--distance", type=int, default=4)
    parser.add_argument("--pairs-sample", type=int, default=5000)
    args = parser.parse_args()
    hashes, copies = planted(args.images, args.distance)
    sample = all_pairs_seconds(hashes[:args.pairs_sample], args.distance)
    scaled = sample * (args.images / args.pairs_sample) ** 2
    print(f"every pair (baseline): {sample:.2f} s for {args.pairs_sample} hashes -> about "
          f"{scaled:.0f} s for {args.images}")
    pixels = [str(i) for i in range(len(hashes))]
    started = time.perf_counter()
    roots = groups(pixels, hashes, args.distance)
    seconds = time.perf_counter() - started
    tracemalloc.start()  # a second pass for the memory: tracing slows Python down several times
    groups(pixels, hashes, args.distance)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    originals = len(hashes) - copies
    found = sum(roots[originals + i] == roots[i] for i in range(copies))
    print(f"farm dedup grouping: {seconds:.2f} s for {args.images} hashes at distance "
          f"{args.distance}, peak {peak / 2**20:.0f} MiB traced; {found} of {copies} planted "
          f"near copies grouped with their original; {scaled / seconds:.0f}x fewer seconds "
          "than every pair")


if __name__ == "__main__":
    main()
