"""The worker and render: pixels, reproducibility, batching, model and sampler swaps."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

import farm
from farm import encode, outputs, samplers, tiny
from farm.jobs import Batch, Job, Model, Slot
from farm.worker import Device, Worker
from tests.helpers import make_job, planned, recipe, rendered_images


def test_a_batch_writes_one_png_per_job_with_its_metadata(worker, tiny):
    jobs = [make_job(tiny, seed=s, prompt=p) for s, p in [(0, "a cat"), (1, "a dog")]]
    paths = ("images/00000/a.png", "images/00000/b.png")
    results = worker.render(Batch(tuple(jobs), paths))
    assert [r.path for r in results] == list(paths)
    assert [(r.batch_size, r.position, r.worker) for r in results] == \
        [(2, 0, "worker-0"), (2, 1, "worker-0")]
    for job, path in zip(jobs, paths):
        image = Image.open(worker.folder.root / path)
        assert image.size == (64, 64) and image.mode == "RGB"
        assert outputs.read_metadata(worker.folder.root / path)[1]["id"] == job.id


def test_same_job_same_pixels(worker, tiny):
    job = make_job(tiny, seed=5)
    first, = rendered_images(worker, [job], "first")
    fresh = Worker(worker.folder.root, device=Device("cpu", "float32"))
    again, = rendered_images(fresh, [job], "again")
    assert np.array_equal(first, again)


def test_a_batch_of_four_matches_each_image_alone(worker, tiny):
    jobs = [make_job(tiny, seed=s, prompt=f"prompt {s}") for s in range(4)]
    together = rendered_images(worker, jobs, "together")
    for job, image in zip(jobs, together):
        alone, = rendered_images(worker, [job], "alone")
        difference = np.abs(alone.astype(int) - image.astype(int))
        assert difference.max() <= 1  # 1/255: float rounding across batch shapes
        assert (difference > 0).mean() < 0.01


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("cfg", [7.0, 1.0])  # cfg 1: no guidance, so another UNet batch shape
def test_a_job_rendered_again_at_its_slot_is_bit_identical(worker, tiny, size, cfg):
    """A resume, verify or replay renders a job alone, at the batch size and position it had,
    padded before and after: the same pixels, bit for bit, at every position. (On this CPU a
    job at position 1 of 3 without guidance differs from the same job at position 0.)"""
    jobs = [make_job(tiny, seed=1, prompt=f"prompt {s}", cfg=cfg) for s in range(size)]
    paths = tuple(f"images/00000/full-{size}-{i}.png" for i in range(size))
    full = worker.render(Batch(tuple(jobs), paths))
    for position, job in enumerate(jobs):
        alone, = worker.render(Slot(size, position).batch(job, "images/00000/alone.png"))
        assert alone.pixel_hash == full[position].pixel_hash, position
        assert (alone.batch_size, alone.position) == (size, position)
    # one job repeated: what it gives at each position is what it gives alone there
    same = worker.render(Batch((jobs[0],) * 1, ("images/00000/same.png",), pad_to=size))
    assert same[0].pixel_hash == full[0].pixel_hash


def test_seeds_and_prompts_change_pixels(worker, tiny):
    base, other_seed, other_prompt = rendered_images(worker, [
        make_job(tiny, seed=1), make_job(tiny, seed=2), make_job(tiny, seed=1, prompt="owl")])
    assert not np.array_equal(base, other_seed)
    assert not np.array_equal(base, other_prompt)


@pytest.mark.parametrize("sampler, schedule", [
    ("euler", "normal"), ("euler", "karras"), ("euler_ancestral", "normal"),
    ("ddim", "normal"), ("dpmpp_2m", "normal"), ("dpmpp_2m", "karras"),
])
def test_required_samplers_render_without_reloading(worker, tiny, sampler, schedule):
    image, = rendered_images(worker, [make_job(tiny, sampler=sampler, scheduler=schedule)])
    assert image.shape == (64, 64, 3) and image.std() > 0
    assert worker.loads[tiny.identity] == 1  # scheduler swaps never reload the model


def test_samplers_and_schedules_give_different_images(worker, tiny):
    images = rendered_images(worker, [make_job(tiny, sampler="euler")]) + \
        rendered_images(worker, [make_job(tiny, sampler="euler", scheduler="karras")]) + \
        rendered_images(worker, [make_job(tiny, sampler="dpmpp_2m")])
    hashes = {outputs.pixel_hash(Image.fromarray(i)) for i in images}
    assert len(hashes) == 3


def test_vae_swap_changes_pixels_and_keeps_the_checkpoint_loaded(worker, tiny, tiny_vae):
    own, = rendered_images(worker, [make_job(tiny)])
    swapped, = rendered_images(worker, [make_job(tiny, vae=tiny_vae)])
    assert not np.array_equal(own, swapped)
    assert worker.loads[tiny.identity] == 1 and worker.loads[tiny_vae.identity] == 1


def test_a_failing_batch_reports_each_job_and_writes_nothing(worker, tiny):
    broken = Model(ref="broken", path=str(worker.folder.root / "missing"), identity="0" * 64)
    jobs = (make_job(broken, seed=0), make_job(broken, seed=1))
    paths = ("images/00000/broken-0.png", "images/00000/broken-1.png")
    results = worker.render(Batch(jobs, paths))
    assert [r.ok for r in results] == [False, False]
    assert all(r.error and r.pixel_hash is None for r in results)
    assert not any((worker.folder.root / p).exists() for p in paths)


def test_non_finite_images_are_failures_not_files(worker, tiny, monkeypatch):
    from farm import render as render_module

    monkeypatch.setattr(render_module.np, "isfinite", lambda a: np.zeros_like(a, dtype=bool))
    job = dataclasses.replace(make_job(tiny), seed=77)
    result, = worker.render(Batch((job,), ("images/00000/nan.png",)))
    assert not result.ok and "NaN" in result.error
    assert not (worker.folder.root / "images/00000/nan.png").exists()


def pairs():
    """Every sampler with every schedule diffusers can run it with."""
    from farm import samplers

    for s in samplers.SAMPLERS:
        for schedule in samplers.SCHEDULES:
            try:
                samplers.check_pair(s.name, schedule.name)
            except samplers.UnknownName:
                continue
            yield s.name, schedule.name


@pytest.mark.parametrize("sampler, schedule", list(pairs()))
def test_every_sampler_and_schedule_renders(worker, tiny, sampler, schedule):
    result, = worker.render(Batch((make_job(tiny, sampler=sampler, scheduler=schedule),),
                                  (f"images/00000/{sampler}-{schedule}.png",)))
    assert result.ok, result.error
    recorded = json.loads(result.scheduler)
    _, farm = outputs.read_metadata(worker.folder.root / result.path)
    assert farm["scheduler_class"] == recorded["class"]
    assert farm["scheduler_config"] == recorded["config"]
    for key, value in samplers.options(sampler, schedule).items():
        assert recorded["config"][key] == value


@pytest.mark.parametrize("sampler", [s.name for s in samplers.SAMPLERS])
def test_every_sampler_is_batch_invariant(worker, tiny, sampler):
    """A job alone and inside a batch of 3 (other prompts and seeds) gives the same image."""
    jobs = [make_job(tiny, seed=s, prompt=f"prompt {s}", sampler=sampler, steps=6)
            for s in range(3)]
    together = rendered_images(worker, jobs, f"inv-{sampler}")
    alone, = rendered_images(worker, [jobs[1]], f"inv-{sampler}-alone")
    difference = np.abs(alone.astype(int) - together[1].astype(int))
    assert difference.max() <= 1


def test_clip_skip_changes_pixels_and_is_in_the_infotext(worker, tiny):
    plain, = rendered_images(worker, [make_job(tiny)])
    skipped, = rendered_images(worker, [make_job(tiny, clip_skip=2)])
    assert not np.array_equal(plain, skipped)
    job = make_job(tiny, clip_skip=2)
    result, = worker.render(Batch((job,), ("images/00000/clip.png",)))
    parameters, farm = outputs.read_metadata(worker.folder.root / result.path)
    assert "Clip skip: 2" in parameters and farm["clip_skip"] == 2


def test_dtype_is_a_job_field_and_loads_its_own_copy(tiny, tmp_path):
    worker = Worker(tmp_path, device=Device("cpu", "float32"))
    full = rendered_images(worker, [make_job(tiny)])
    half = rendered_images(worker, [make_job(tiny, dtype="bfloat16")])
    assert not np.array_equal(full[0], half[0])
    assert np.abs(full[0].astype(int) - half[0].astype(int)).mean() < 64  # same picture, roughly
    assert worker.loads[tiny.identity] == 2
    assert make_job(tiny).id != make_job(tiny, dtype="bfloat16").id


def test_tiny_xl_renders_batch_invariant_and_swaps_its_vae(worker, tiny_vae):
    from farm import models

    xl = models.resolve("tiny-xl", "checkpoint")
    jobs = [make_job(xl, seed=s, prompt=f"prompt {s}") for s in range(3)]
    together = rendered_images(worker, jobs, "xl")
    alone, = rendered_images(worker, [jobs[2]], "xl-alone")
    assert np.abs(alone.astype(int) - together[2].astype(int)).max() <= 1
    swapped, = rendered_images(worker, [make_job(xl, seed=2, prompt="prompt 2", vae=tiny_vae)],
                               "xl-vae")
    assert not np.array_equal(swapped, alone)
    assert worker.loads[xl.identity] == 1


def test_each_result_says_what_made_it(worker, tiny):
    import diffusers
    import torch
    import transformers

    result, = worker.render(Batch((make_job(tiny, dtype="bfloat16"),), ("images/00000/p.png",)))
    made = json.loads(result.provenance)
    assert made == {"device": "cpu", "dtype": "bfloat16", "farm": farm.__version__,
                    "torch": torch.__version__, "diffusers": diffusers.__version__,
                    "transformers": transformers.__version__}


def test_an_empty_sdxl_negative_is_zeros_as_diffusers_and_a1111_make_it(worker):
    """SDXL checkpoints condition an empty negative with zeros (`force_zeros_for_empty_prompt`;
    A1111 zeros it too): a recipe's default job gives diffusers' own pipeline's pixels, through
    the plain text route and farm's emphasis encoder alike. A job recorded before (the
    encoding of "") keeps its own id and still renders as it was made."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from farm import models

    xl = models.resolve("tiny-xl", "checkpoint")
    plain, weighted = planned(recipe(checkpoint="tiny-xl", prompt=["a fox", "a (fox:1.2)"],
                                     size="64x64", steps=4, seeds=3), {"tiny-xl": xl})
    assert plain.zero_negative and weighted.zero_negative and weighted.emphasis == "a1111"
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny.ensure("tiny-xl"))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a fox", num_inference_steps=4, width=64, height=64, guidance_scale=7.0,
                    generator=[torch.Generator("cpu").manual_seed(3)], output_type="np").images
    ours, = rendered_images(worker, [plain], "zeros")
    assert np.abs(ours.astype(int) - (expected[0] * 255).round().astype(int)).max() <= 1
    cond, uncond, _, negative_pooled = encode.TextEncoding(pipe, encode.load_embedding).job(
        weighted)
    assert not uncond.any() and not negative_pooled.any() and cond.any()
    record = plain.to_dict()  # as a run folder made before recorded it: no such field
    del record["zero_negative"]
    old = Job.from_dict(record, lambda *found: xl)
    assert not old.zero_negative and old.id != plain.id
    before, = rendered_images(worker, [old], "old")
    assert not np.array_equal(before, ours)


def test_auto_precision_is_bfloat16_on_a_gpu_for_flow_families_only(tiny, tmp_path):
    """SD3 and Flux.1 run in bfloat16 where "auto" means half precision (a GPU); other
    families keep float16 there, and the CPU float32 for all."""
    import torch

    from farm import models

    gpu = Worker(tmp_path / "gpu", device=Device("cuda", "float16"))
    cpu = Worker(tmp_path / "cpu", device=Device("cpu", "float32"))
    flux, sd3 = models.resolve("tiny-flux"), models.resolve("tiny-sd3")
    assert gpu.dtype("auto", flux) == gpu.dtype("auto", sd3) == torch.bfloat16
    assert gpu.dtype("auto", tiny) == torch.float16 and gpu.dtype("float16", flux) == torch.float16
    assert cpu.dtype("auto", flux) == torch.float32
