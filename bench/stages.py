"""What later stages cost: a hires pass and the SDXL refiner against one pass of the same size.

    python bench/stages.py [--size 512] [--steps 20] [--hires-steps 10] [--repeat 3]

On one worker (this machine's device), with the built-in tiny models, prints the median
seconds per image of, rendered in turn round after round (so that drift hits them alike):
  - tiny: one pass at SIZE (the baseline); a hires pass from SIZE/2 at scale 2, latent and
    lanczos upscalers (first pass STEPS, second pass HIRES_STEPS at denoise 0.5); img2img of
    a SIZE input at denoise 0.75 (STEPS x 0.75 steps); one ControlNet unit (tiny-controlnet,
    canny on a SIZE input); inpainting a centred square of that input at denoise 0.75, on
    tiny and on the 9-channel tiny-inpaint;
  - tiny-xl: one pass at SIZE (the baseline); the same with tiny-xl-refiner from 0.8; one
    ControlNet unit (tiny-xl-controlnet, canny).
The tiny models' UNets are mostly convolutions at low width: the ratios, not the seconds, are
what carries over to real checkpoints (where a step at 4x the pixels costs about 4x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from farm import inputs, models
from farm.jobs import Batch, Control, Hires, Job
from farm.worker import Worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hires-steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="farm-bench-stages-"))
    sd, xl, refiner = (models.resolve(name) for name in ("tiny", "tiny-xl", "tiny-xl-refiner"))
    net, xl_net = (models.resolve(name, "controlnet")
                   for name in ("tiny-controlnet", "tiny-xl-controlnet"))
    picture = root / "input.png"
    Image.fromarray(np.random.default_rng(0).integers(
        0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(picture)
    square = Image.new("L", (args.size, args.size))
    square.paste(255, (args.size // 4, args.size // 4, args.size * 3 // 4, args.size * 3 // 4))
    square.save(root / "mask.png")
    init, mask = inputs.identify([str(picture), str(root / "mask.png")])
    worker = Worker(root / "run")
    counter = iter(range(10**9))
    size, half = args.size, args.size // 2

    def job(checkpoint, **fields) -> Job:
        values = dict(vae=None, prompt="a red fox in fresh snow", negative="blurry", seed=1,
                      sampler="euler", scheduler="normal", steps=args.steps, cfg=7.0,
                      width=size, height=size)
        return Job(checkpoint, **{**values, **fields})

    cases = {
        "tiny: one pass (baseline)": job(sd),
        "tiny: hires from half, latent": job(sd, hires=Hires(half, half, 2.0, "latent",
                                                             args.hires_steps, 0.5)),
        "tiny: hires from half, lanczos": job(sd, hires=Hires(half, half, 2.0, "lanczos",
                                                              args.hires_steps, 0.5)),
        "tiny: img2img, denoise 0.75": job(sd, init=init, denoise=0.75, resize="stretch"),
        "tiny-xl: one pass (baseline)": job(xl),
        "tiny-xl: refiner from 0.8": job(xl, refiner=refiner, switch_at=0.8),
    }
    inpainting = dict(init=init, denoise=0.75, resize="stretch", mask=mask, mask_blur=4,
                      inpaint_full_res=False, inpainting_fill="original")
    cases["tiny: inpainting, denoise 0.75"] = job(sd, **inpainting)
    cases["tiny: inpainting with tiny-inpaint"] = job(models.resolve("tiny-inpaint"),
                                                      **inpainting)
    unit = (Control("canny", 100, 200),)
    cases["tiny: one ControlNet unit, canny"] = job(sd, controlnets=(net,), control=unit,
                                                    control_images=(init,), resize="stretch")
    cases["tiny-xl: one ControlNet unit, canny"] = job(xl, controlnets=(xl_net,), control=unit,
                                                       control_images=(init,), resize="stretch")
    for one in cases.values():  # load every pipeline; warm up
        worker.render(Batch((one,), (f"images/00000/{next(counter)}.png",)))
    times: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(args.repeat):
        for label, one in cases.items():
            started = time.perf_counter()
            result, = worker.render(Batch((one,), (f"images/00000/{next(counter)}.png",)))
            times[label].append(time.perf_counter() - started)
            assert result.ok, result.error
    medians = {label: statistics.median(t) for label, t in times.items()}
    print(f"{size}x{size}, {args.steps} steps, hires {args.hires_steps} steps; median of "
          f"{args.repeat}, seconds per image, on {worker.device.name}")
    for label, seconds in medians.items():
        base = medians[label.split(":")[0] + ": one pass (baseline)"]
        print(f"  {label:<34} {seconds:7.3f} s  {seconds / base:5.2f}x")
    print(json.dumps({"size": size, "steps": args.steps, "hires_steps": args.hires_steps,
                      "seconds": {k: round(v, 4) for k, v in medians.items()}}))


if __name__ == "__main__":
    main()
