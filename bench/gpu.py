"""Images per second and peak GPU memory: farm's worker against a bare diffusers loop.

    python bench/gpu.py [--quick] [--json FILE] [--no-ray] [--batches N]

For each workload, after a warm-up call, times `--batches` calls of:
  bare    a plain diffusers loop: one pipeline call per batch (per-image CPU generators, as
          farm), each image saved as a PNG, synchronously
  inline  farm's Worker in this process: the same batches as farm jobs (PNG encoding, metadata
          and atomic writes included; on a GPU the writes overlap the next batch)
  ray     the same Worker inside one Ray actor, every batch queued at once (skipped with --no-ray
          or where Ray is not installed)
  compile the inline Worker with runtime.compile (torch.compile of the UNet or transformer; its
          warm-up call, where it compiles, is not timed but printed)
  fused   the inline Worker with runtime.fuse_qkv (fused QKV projections; UNets only)

Workloads: random-sd15 at 512x512, 30 steps, cfg 7, batch 8; random-sdxl at 1024x1024, 30
steps, batch 2 (float16 on a GPU); random-sd35 (SD 3.5 Large's widths, 4 of its 38 blocks) and
random-flux (Flux.1-dev's widths, 2 of 19 double and 4 of 38 single blocks; guidance 3.5, no
negative), each with 2 of T5-XXL's 24 layers, at 1024x1024, 28 steps, batch 2 (bfloat16 on a
GPU). All are built on first use in the farm cache (about 2, 7, 4.5 and 4 GB). `--quick`: the
tiny models of each family at 64x64, 4 steps, batch 2, for the CPU and CI. Prints a table and,
with --json, writes the figures with the device, date and library versions. Every job is
planned by farm from a recipe, so that each family gets its own defaults.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

WORKLOADS = [("random-sd15", 512, 30, 8), ("random-sdxl", 1024, 30, 2),
             ("random-sd35", 1024, 28, 2), ("random-flux", 1024, 28, 2)]
QUICK = [("tiny", 64, 4, 2), ("tiny-xl", 64, 4, 2), ("tiny-sd3", 64, 4, 2), ("tiny-flux", 64, 4, 2)]
PROMPT = "a lighthouse on a cliff at dusk, dramatic sky"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--batches", type=int, default=None, help="timed calls per case")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile case")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend "
                        "(default: inductor; eager with --quick, which checks the wiring only)")
    args = parser.parse_args()
    import diffusers
    import torch

    from farm import __version__, libraries

    libraries.quiet()
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    batches = args.batches or (3 if args.quick else 5)
    from farm import worker as workers

    workers.COMPILE_BACKEND = args.compile_backend or ("eager" if args.quick else "inductor")
    warmups: dict[str, float] = {}
    cases = []
    for model, size, steps, batch in QUICK if args.quick else WORKLOADS:
        measured = {"bare": bare(model, size, steps, batch, batches),
                    "inline": inline(model, size, steps, batch, batches)}
        if not args.no_ray:
            measured["ray"] = on_ray(model, size, steps, batch, batches)
        if not args.no_compile:
            rate, peak, warmups[model] = inline(model, size, steps, batch, batches,
                                                compile=True, warmup=True)
            measured["compile"] = rate, peak
        if not _jobs(model, size, steps, batch, 0).first.max_sequence_length:  # a UNet's only
            measured["fused"] = inline(model, size, steps, batch, batches, fuse_qkv=True)
        for mode, (rate, peak) in measured.items():
            if rate is None:
                continue
            cases.append({"model": model, "size": size, "steps": steps, "batch": batch,
                          "mode": mode, "images_per_second": round(rate, 3),
                          "peak_gpu_mib": peak, "vs_bare": round(rate / measured["bare"][0], 3)})
    print(f"{device}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"farm {__version__}, {batches} timed calls after a warm-up")
    print(f"{'model':<13}{'size':>6}{'batch':>7} {'mode':<8}{'img/s':>9}{'vs bare':>9}"
          f"{'peak GPU MiB':>14}")
    for c in cases:
        peak = "-" if c["peak_gpu_mib"] is None else f"{c['peak_gpu_mib']:.0f}"
        print(f"{c['model']:<13}{c['size']:>6}{c['batch']:>7} {c['mode']:<8}"
              f"{c['images_per_second']:>9.2f}{c['vs_bare']:>9.2f}{peak:>14}")
    for model, seconds in warmups.items():
        print(f"compile warm-up call ({workers.COMPILE_BACKEND}), {model}: {seconds:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "device": device, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "farm": __version__, "timed_calls": batches,
            "compile_backend": workers.COMPILE_BACKEND,
            "compile_warmup_seconds": {k: round(v, 2) for k, v in warmups.items()},
            "cases": cases}, indent=1))


def _peak_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def bare(model: str, size: int, steps: int, batch: int, batches: int):
    import diffusers
    import torch

    from farm import tiny

    cuda = torch.cuda.is_available()
    job = _jobs(model, size, steps, batch, 0).first  # farm's defaults for the family
    half = torch.bfloat16 if job.max_sequence_length else torch.float16  # as dtype auto
    pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
        tiny.ensure(model), torch_dtype=half if cuda else torch.float32,
        use_safetensors=True, local_files_only=True).to("cuda" if cuda else "cpu")
    pipe.set_progress_bar_config(disable=True)
    guidance = {"guidance_scale": job.guidance, "true_cfg_scale": job.cfg} \
        if job.guidance is not None else {"guidance_scale": job.cfg}
    texts = {"negative_prompt": [job.negative] * batch} if job.negative else {}
    if job.max_sequence_length:
        texts["max_sequence_length"] = job.max_sequence_length
    with tempfile.TemporaryDirectory() as out:
        def call(seed0: int) -> None:
            generators = [torch.Generator("cpu").manual_seed(seed0 + i) for i in range(batch)]
            images = pipe(prompt=[PROMPT] * batch, num_inference_steps=steps, width=size,
                          height=size, generator=generators, **guidance, **texts).images
            for i, image in enumerate(images):
                image.save(Path(out) / f"{seed0 + i}.png")

        call(0)  # warm-up
        _peak_reset()
        started = time.perf_counter()
        for n in range(batches):
            call((n + 1) * batch)
        rate = batch * batches / (time.perf_counter() - started)
    return rate, _peak()


def _jobs(model: str, size: int, steps: int, batch: int, first_seed: int):
    """A batch of the model's jobs as farm plans them: the negative "blurry" where the family
    takes one without true CFG (not on Flux.1, whose defaults are guidance 3.5 and cfg 1)."""
    from farm import adapters, families, models, plan, run
    from farm.jobs import Batch
    from farm.recipe import parse

    checkpoint = models.resolve(model)
    rules = families.rules(models.family(checkpoint))
    recipe = parse({"checkpoint": model, "prompt": PROMPT, "size": f"{size}x{size}",
                    "steps": steps, "seeds": {"start": first_seed, "count": batch},
                    "negative": "" if rules.guidance is not None else "blurry"},
                   source="bench", base=Path("."))
    resolved = plan.Resolved({model: checkpoint}, run.identified_inputs(recipe),
                             adapters.Reader(Path(".")))
    jobs = tuple(plan.jobs(recipe, resolved))
    return Batch(jobs, tuple(f"images/00000/{job.seed}.png" for job in jobs), pad_to=batch)


def inline(model: str, size: int, steps: int, batch: int, batches: int, warmup: bool = False,
           **speedups):
    from farm.worker import Worker

    with tempfile.TemporaryDirectory() as out:
        worker = Worker(out, "bench", **speedups)
        worker.pipeline(_jobs(model, size, steps, batch, 0).first.loadout)  # the model's load
        started = time.perf_counter()
        worker.render(_jobs(model, size, steps, batch, 0))  # warm-up (compiles, with compile)
        warm = time.perf_counter() - started
        _peak_reset()
        started = time.perf_counter()
        for n in range(batches):
            results = worker.render(_jobs(model, size, steps, batch, (n + 1) * batch))
            assert all(r.ok for r in results), results[0].error
        rate = batch * batches / (time.perf_counter() - started)
        peak = _peak()
        del worker
    return (rate, peak, warm) if warmup else (rate, peak)


def on_ray(model: str, size: int, steps: int, batch: int, batches: int):
    try:
        import ray
    except ImportError:
        return None, None
    import torch

    from farm.cluster import _remote_worker

    gpus = 1 if torch.cuda.is_available() else 0
    ray.init(num_cpus=2, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        with tempfile.TemporaryDirectory() as out:
            actor = _remote_worker().options(num_gpus=gpus, max_concurrency=2).remote(
                out, "bench", None, 2, None)
            ray.get(actor.ready.remote())
            ray.get(actor.render.remote(_jobs(model, size, steps, batch, 0)))  # warm-up
            started = time.perf_counter()
            pending = [actor.render.remote(_jobs(model, size, steps, batch, (n + 1) * batch))
                       for n in range(batches)]
            for results in ray.get(pending):
                assert all(r.ok for r in results), results[0].error
            rate = batch * batches / (time.perf_counter() - started)
    finally:
        ray.shutdown()
    return rate, None  # the actor's GPU memory is its own process's


if __name__ == "__main__":
    main()
