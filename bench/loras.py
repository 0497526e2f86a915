"""What LoRAs cost a worker: a batch with and without one, and a switch between LoRA sets.

    python bench/loras.py [--size 512] [--steps 20] [--batch 1] [--repeat 3]

On one worker (this machine's device), with the built-in tiny model and tiny LoRAs in the
kohya layout, prints the median of:
  - a batch without a LoRA (the baseline), with one and with two LoRAs active (unfused, as
    farm keeps them), and with an emphasis prompt (farm's encoder instead of diffusers'),
    rendered in turn, round after round;
  - a switch alone: to a LoRA file not loaded yet, to one already loaded, to no LoRA.
The tiny model's UNet is mostly convolutions, which LoRAs do not touch: on real models, with
far more attention layers, a LoRA costs a larger share.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from farm import adapters, models, tiny
from farm.jobs import Batch, Job, Lora
from farm.worker import Worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="farm-bench-loras-"))
    checkpoint = models.resolve("tiny")
    files = [tiny.write_lora("tiny", root / f"l{i}.safetensors", "kohya", seed=i)
             for i in range(2 + args.repeat * 2)]
    loras = [Lora(adapters.find_lora(str(f), root), 0.8) for f in files]
    worker = Worker(root / "run")
    counter = iter(range(10**9))

    def batch(loras_: tuple = (), prompt: str = "a red fox in fresh snow", emphasis="none"):
        jobs = tuple(Job(checkpoint, None, prompt, "blurry", seed, "euler", "normal", args.steps,
                         7.0, args.size, args.size, loras=loras_, emphasis=emphasis)
                     for seed in range(args.batch))
        return Batch(jobs, tuple(f"images/00000/{next(counter)}.png" for _ in jobs))

    def seconds(make) -> float:
        times = []
        for _ in range(args.repeat):
            b = make()
            started = time.perf_counter()
            results = worker.render(b)
            times.append(time.perf_counter() - started)
            assert all(r.ok for r in results), results[0].error
        return statistics.median(times)

    def ordered(*items):
        return tuple(sorted(items, key=lambda lora: lora.model.identity))

    worker.render(batch())  # load the pipeline; warm up
    ab = ordered(loras[0], loras[1])
    # 1. renders, the cases interleaved round by round so that drift hits them alike
    cases = {"no LoRA (baseline)": lambda: batch(), "one LoRA active": lambda: batch((loras[0],)),
             "two LoRAs active": lambda: batch(ab),
             "emphasis prompt (farm's encoder)": lambda: batch(
                 prompt="a (red:1.3) fox in ((fresh)) snow", emphasis="a1111")}
    times: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(args.repeat):
        for label, make in cases.items():
            b = make()
            started = time.perf_counter()
            results = worker.render(b)
            times[label].append(time.perf_counter() - started)
            assert all(r.ok for r in results), results[0].error
    # 2. switches alone, on the loaded pipeline
    pipe = worker.pipeline(batch().first.loadout)

    def switch(loras_) -> float:
        started = time.perf_counter()
        worker.with_loras(pipe, loras_)
        return time.perf_counter() - started

    fresh = [switch((lora,)) for lora in loras[2:]]  # each file loaded for the first time
    loaded = [switch((loras[i % 2],)) for i in range(args.repeat * 2)]
    off = [switch(()) + 0 * switch((loras[0],)) for _ in range(args.repeat)]
    # 3. the prompt's encoding alone: diffusers' (plain text) and farm's (emphasis)
    from farm.encode import TextEncoding

    plain_job = batch().first
    weighted_job = batch(prompt="a (red:1.3) fox in ((fresh)) snow", emphasis="a1111").first
    encoding = TextEncoding(pipe, worker.embedding)
    diffusers_encode, farm_encode = [], []
    for _ in range(args.repeat * 4):
        started = time.perf_counter()
        pipe.encode_prompt(plain_job.prompt, pipe.device, 1, True, plain_job.negative)
        diffusers_encode.append(time.perf_counter() - started)
        started = time.perf_counter()
        encoding.job(weighted_job)
        farm_encode.append(time.perf_counter() - started)
    print(f"device {worker.device.name}, {args.size}x{args.size}, {args.steps} steps, batch "
          f"{args.batch}, median of {args.repeat}")
    base = statistics.median(times["no LoRA (baseline)"])
    for label, values in times.items():
        value = statistics.median(values)
        print(f"  {label:34s} {value:7.3f} s a batch ({value - base:+.3f} s against no LoRA)")
    for label, values in (("switch to a LoRA not loaded yet", fresh),
                          ("switch to a LoRA already loaded", loaded),
                          ("switch to no LoRA", off),
                          ("encode a prompt: diffusers", diffusers_encode),
                          ("encode a prompt: farm, emphasis", farm_encode)):
        print(f"  {label:34s} {statistics.median(values) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
