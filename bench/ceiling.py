"""farm's own ceiling: images/s when the pipeline costs nothing.

    python bench/ceiling.py [--images 200] [--sizes 512 1024] [--batch 8]

A 1-4-step model on a fast GPU makes 50-100+ images/s at 512x512; farm must not be what limits
it. Here the pipeline call is replaced by one that returns ready-made noise images at once, so
what is left is farm's per-image work: planning and dispatch, the PNG encoding with its
metadata, the atomic write, the pixel hash and the manifest. One inline worker, in this
process, through the same `run.render` as `farm render`; each size with the worker writing and
with the driver writing (runtime.outputs=driver), and with two threads encoding (as a GPU
worker does by default). The baseline is encoding and saving the same
images with PIL alone, one after the other.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from farm import compose, render, run

    print(f"{args.images} images a run, batch {args.batch}, one inline worker, PNG level 6")
    print(f"{'size':>6} {'mode':<28}{'img/s':>9}")
    for size in args.sizes:
        noise = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (size, size, 3),
                                                                  dtype=np.uint8))
                 for i in range(args.batch)]

        def instant(pipe, batch, config, *encoding):  # the pipeline call, free
            return [noise[i % len(noise)] for i in batch.slots], {
                "class": "Instant", "config": {}}

        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            for i, image in enumerate(noise * (args.images // len(noise))):
                image.save(Path(tmp) / f"{i}.png", compress_level=6)
            bare = args.images / (time.perf_counter() - started)
        print(f"{size:>6} {'PIL save alone (baseline)':<28}{bare:>9.1f}")
        real = render.render
        render.render = instant
        try:
            for label, extra in (("(warm-up: loads the model)", []), ("farm, worker writes", []),
                                 ("farm, driver writes", ["runtime.outputs=driver"]),
                                 ("farm, 2 encode threads", ["runtime.encode_threads=2"])):
                with tempfile.TemporaryDirectory() as tmp:
                    settings = compose.compose([
                        "runtime=inline", f"outputs={tmp}", "prompt=noise",
                        f"seeds=0-{args.images - 1}", f"size={size}", "steps=1",
                        f"batch_size={args.batch}", *extra])
                    outcome = run.render(settings)
                    rate = outcome.summary.rendered / outcome.summary.seconds
                if not label.startswith("("):
                    print(f"{size:>6} {label:<28}{rate:>9.1f}  ({rate / bare:.2f}x the "
                          "baseline)")
        finally:
            render.render = real


if __name__ == "__main__":
    main()
