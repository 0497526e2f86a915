"""One batch through a diffusers pipeline -> images, in stages: a text-to-image or img2img
pass, then a refiner's or a hires pass when the jobs have one."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from farm import emphasis, encode, inpaint, inputs, samplers
from farm.encode import TextEncoding
from farm.jobs import Batch, Job

# A decoded image, or why there is none (a NaN-poisoned latent decodes to garbage).
Rendered = Image.Image | str


@dataclass
class Stages:
    """What the later stages need from the worker that keeps the pipelines: each is asked for
    only when a batch's jobs have that stage."""

    img2img: Callable[[object], object]  # the img2img pipeline sharing a pipeline's components
    init: Callable[[Job], Image.Image]  # a job's input image, checked against its identity
    refiner: Callable[[], tuple[object, dict, TextEncoding]] | None = None  # (pipeline,
    # its scheduler config, its text encoding)
    # the ControlNet pipeline sharing a pipeline's components ("text2image", "img2img" or
    # "inpainting"), and a job's detected maps, one per unit, at its size
    controlled: Callable[[object, str], object] | None = None
    control: Callable[[Job], list[Image.Image]] | None = None
    # the inpainting pipeline sharing a pipeline's components, and a job's mask
    inpainting: Callable[[object], object] | None = None
    mask: Callable[[Job], Image.Image] | None = None


def render(pipe, batch: Batch, scheduler_config: dict, encoding: TextEncoding | None = None,
           stages: Stages | None = None) -> tuple[list[Rendered], dict]:
    """Render every job of a batch in one pipeline call; one image (or error) per job.

    The call is padded to the batch's `pad_to` size, each job at its slot (see Batch). Each
    image gets its own CPU generator seeded with its own seed, passed as a list, so that its
    noise is the same whatever batch, worker or device renders it. Also returns the scheduler
    that ran, as {"class": ..., "config": {...}}, for the record.

    Jobs whose prompts A1111 reads differently from plain text (emphasis, long prompts,
    embeddings) are encoded by `encoding`, image by image; their calls take the embeddings,
    one call per length of them (a long prompt makes a longer sequence), each of the batch's
    shape, the other slots holding copies of one of its jobs.
    """
    first, shape = batch.first, batch.shape
    # 1. sampler: a fresh scheduler from the checkpoint's own config; the model stays loaded
    pipe.scheduler = samplers.make_scheduler(scheduler_config, first.sampler, first.scheduler)
    takes = inspect.signature(pipe.__call__).parameters
    # 2. the calls: the text as it is, or each image's own embeddings grouped by length
    if first.emphasis == "none" and not first.embeddings:
        calls = [(batch.slots, shape, _text_inputs(shape, takes))]
    else:
        calls = _embedded_calls(batch, encoding or TextEncoding(pipe, encode.load_embedding))
    pixels: dict[int, np.ndarray] = {}
    guidance = _guidance(first, takes)
    for slots, jobs, text in calls:
        # 3. noise: one CPU generator per image
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
        # 4. denoise with classifier-free guidance, decode; recipes were checked against the
        #    pipeline's family, so an input it does not take is left at its default
        if first.mask is not None:  # inpainting: each image with its own mask
            output = _inpainted(pipe, jobs, text, guidance, generators, stages)
        elif first.control:  # ControlNet units, each image with its own maps
            output = _controlled(pipe, jobs, text, guidance, generators, stages)
        elif first.init is not None:  # img2img: each image's input, fitted to the size
            images = _fitted(jobs, stages)  # the padding repeats the first
            img2img = stages.img2img(pipe)
            img2img.scheduler = pipe.scheduler  # this batch's fresh one (1.)
            output = img2img(image=images, strength=img2img_strength(first),
                             num_inference_steps=first.steps, generator=generators,
                             output_type="np", **text, **guidance)
        elif first.hires is not None:
            output = _hires(pipe, jobs, text, guidance, generators, scheduler_config, stages)
        elif first.refiner is not None:
            output = _refined(pipe, jobs, text, guidance, generators, stages)
        else:
            output = pipe(num_inference_steps=first.steps, width=first.width,
                          height=first.height, generator=generators, output_type="np",
                          **text, **guidance)
        pixels.update((slot, output.images[slot]) for slot in slots)
    # 5. to 8-bit RGB, refusing what cannot be an image
    images: list[Rendered] = []
    for slot in batch.slots:  # the batch's own jobs, not the padding
        array = pixels[slot]  # (H, W, 3) floats in [0, 1]
        if not np.isfinite(array).all():
            images.append("the decoded image contains NaN or infinite values")
            continue
        images.append(Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)))
    used = {"class": type(pipe.scheduler).__name__, "config": dict(pipe.scheduler.config)}
    return images, used


@dataclass
class _Output:
    images: list


def _inpainted(pipe, jobs: tuple[Job, ...], text: dict, guidance: dict, generators: list,
               stages: Stages) -> _Output:
    """An inpainting call (diffusers' inpainting pipeline, for inpainting checkpoints and
    ordinary ones), each image with its own mask; A1111's mask blur, "only masked" crop and
    paste-back around it (inpaint.py). Returns the finished images as arrays in [0, 1]."""
    first = jobs[0]
    prepared = {job.id: inpaint.prepare(
        stages.init(job), stages.mask(job), first.width, first.height, first.resize,
        first.mask_blur, first.inpaint_full_res, first.inpaint_full_res_padding,
        first.inpainting_fill) for job in _distinct(jobs)}
    steering: dict = {}
    if first.control:  # ControlNet units steer the inpainting too
        steering, images = _steering(jobs, stages)
        steering["control_image"] = images
        pipeline = stages.controlled(pipe, "inpainting")
    else:
        pipeline = stages.inpainting(pipe)
    pipeline.scheduler = pipe.scheduler  # this batch's fresh one
    output = pipeline(image=[prepared[j.id].image for j in jobs],
                      mask_image=[prepared[j.id].mask for j in jobs],
                      strength=img2img_strength(first), num_inference_steps=first.steps,
                      width=first.width, height=first.height, generator=generators,
                      output_type="np", **steering, **text, **guidance)
    images = []
    for job, array in zip(jobs, output.images):
        if not np.isfinite(array).all():
            images.append(array)  # refused below, as any broken image
            continue
        rendered = Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))
        done = inpaint.finished(rendered, prepared[job.id])
        images.append(np.asarray(done, dtype=np.float32) / 255)
    return _Output(images)


def _controlled(pipe, jobs: tuple[Job, ...], text: dict, guidance: dict, generators: list,
                stages: Stages):
    """A ControlNet call (diffusers' ControlNet pipelines, img2img when the jobs have an input
    image): each image of the call with its own detected maps, one per unit."""
    first = jobs[0]
    steering, images = _steering(jobs, stages)
    controlled = stages.controlled(pipe, "img2img" if first.init is not None else "text2image")
    controlled.scheduler = pipe.scheduler  # this batch's fresh one
    if first.init is not None:
        return controlled(image=_fitted(jobs, stages), control_image=images,
                          strength=img2img_strength(first), num_inference_steps=first.steps,
                          generator=generators, output_type="np", **steering, **text,
                          **guidance)
    if first.control[0].mode is not None:  # a union ControlNet's pipeline names them so
        return controlled(control_image=images, num_inference_steps=first.steps,
                          width=first.width, height=first.height, generator=generators,
                          output_type="np", **steering, **text, **guidance)
    return controlled(image=images, num_inference_steps=first.steps, width=first.width,
                      height=first.height, generator=generators, output_type="np", **steering,
                      **text, **guidance)


def _distinct(jobs: tuple[Job, ...]) -> list[Job]:
    """A call's jobs, each once (the padding repeats the first)."""
    return list({job.id: job for job in jobs}.values())


def _fitted(jobs: tuple[Job, ...], stages: Stages) -> list[Image.Image]:
    """Each job's input image fitted to the call's size, read once per job."""
    first = jobs[0]
    fitted = {job.id: inputs.fit(stages.init(job), first.width, first.height, first.resize)
              for job in _distinct(jobs)}
    return [fitted[job.id] for job in jobs]


def _steering(jobs: tuple[Job, ...], stages: Stages) -> tuple[dict, list]:
    """A ControlNet call's settings (the units' weights, guidance start and end, guess mode,
    a union ControlNet's control type) and its control images: each job's detected maps, one
    per unit, as diffusers takes them (a list per image for several units; for a union
    ControlNet, one list per control type)."""
    first = jobs[0]
    made = {job.id: stages.control(job) for job in _distinct(jobs)}
    maps = [made[job.id] for job in jobs]  # per image, one map per unit
    units = first.control
    several = len(units) > 1
    pick = (lambda values: list(values)) if several else (lambda values: values[0])
    steering = {
        "controlnet_conditioning_scale": pick([float(u.weight) for u in units]),
        "control_guidance_start": pick([float(u.start) for u in units]),
        "control_guidance_end": pick([float(u.end) for u in units]),
        "guess_mode": units[0].guess_mode,
    }
    images = [list(m) for m in maps] if several else [m[0] for m in maps]
    if units[0].mode is not None:
        steering["control_mode"] = [units[0].mode]
        images = [images]
    return steering, images


LATENT_MODES = {"latent": ("bilinear", False), "latent-antialiased": ("bilinear", True),
                "latent-bicubic": ("bicubic", False),
                "latent-bicubic-antialiased": ("bicubic", True),
                "latent-nearest": ("nearest", False),
                "latent-nearest-exact": ("nearest-exact", False)}
PIXEL_MODES = {"lanczos": Image.LANCZOS, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC}


def _hires(pipe, jobs: tuple[Job, ...], text: dict, guidance: dict, generators: list,
           scheduler_config: dict, stages: Stages):
    """A1111's hires fix: the first pass at the first size, upscaled (its latents
    interpolated, or its pixels resized and encoded again), then an img2img pass at the final
    size with fresh noise from each image's seed."""
    first, hires = jobs[0], jobs[0].hires
    latent = hires.upscaler in LATENT_MODES
    low = pipe(num_inference_steps=first.steps, width=hires.width, height=hires.height,
               generator=generators, output_type="latent" if latent else "pil", **text,
               **guidance).images
    # 1. upscale to cover the final size (a final size of another aspect ratio overflows it)
    width, height, cut_x, cut_y = cover(hires.width, hires.height, first.width, first.height)
    if latent:  # (B, 4, H/8, W/8), interpolated, the overflow cut as A1111 cuts it
        mode, antialias = LATENT_MODES[hires.upscaler]
        upscaled = torch.nn.functional.interpolate(
            low, size=(height // 8, width // 8), mode=mode,
            **({"antialias": antialias} if mode in ("bilinear", "bicubic") else {}))
        upscaled = upscaled[:, :, cut_y // 2:upscaled.shape[2] - (cut_y + 1) // 2,
                            cut_x // 2:upscaled.shape[3] - (cut_x + 1) // 2]
    else:  # the same cut, made in pixels before encoding (8 pixels a latent)
        left, top = cut_x // 2 * 8, cut_y // 2 * 8
        box = (left, top, left + first.width, top + first.height)
        upscaled = [image.resize((width, height), PIXEL_MODES[hires.upscaler]).crop(box)
                    for image in low]
    # 2. the second pass: A1111's schedule (hires_schedule), fresh noise from each seed
    second = stages.img2img(pipe)  # a fresh scheduler: the first pass's holds its state
    second.scheduler = samplers.make_scheduler(scheduler_config, hires.sampler or first.sampler,
                                               hires.scheduler or first.scheduler)
    length, strength = hires_schedule(hires.steps or first.steps, hires.denoise)
    fresh = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
    return second(image=upscaled, strength=strength, num_inference_steps=length,
                  generator=fresh, output_type="np", **text, **guidance)


def _guidance(job: Job, takes) -> dict:
    """The guidance inputs: cfg as classifier-free guidance's scale; on Flux.1 (whose
    `guidance_scale` is the distilled guidance) cfg is `true_cfg_scale` and the distilled
    guidance the job's own, which schnell has none of."""
    if "true_cfg_scale" in takes:
        return {"true_cfg_scale": job.cfg,
                **({"guidance_scale": job.guidance} if job.guidance is not None else {})}
    return {"guidance_scale": job.cfg} if "guidance_scale" in takes else {}


def img2img_strength(job: Job) -> float:
    """The strength that makes diffusers' img2img take the job's steps: diffusers runs the last
    int(steps x strength) of the schedule. AUTOMATIC1111 runs one more, from one sigma earlier
    (t_enc = int(min(d, 0.999) x steps), then sigmas[steps - t_enc - 1:]): asked for with
    `img2img_steps: a1111`, as that count and a half."""
    if job.img2img_steps != "a1111":
        return job.denoise
    return min(1.0, (int(min(job.denoise, 0.999) * job.steps) + 1.5) / job.steps)


def cover(first_width: int, first_height: int, width: int,
          height: int) -> tuple[int, int, int, int]:
    """A1111's hires target: the size the first pass is upscaled to (covering width x height,
    its aspect ratio kept, the other side floored) and the latent columns and rows of
    overflow it cuts, half (rounded down) before and the rest after."""
    if first_width * height == first_height * width:
        return width, height, 0, 0
    if first_width / first_height < width / height:
        up_width, up_height = width, width * first_height // first_width
    else:
        up_width, up_height = height * first_width // first_height, height
    return up_width, up_height, (up_width - width) // 8, (up_height - height) // 8


def hires_schedule(steps: int, denoise: float) -> tuple[int, float]:
    """(schedule length, strength) for diffusers' img2img to run A1111's hires pass: a
    schedule of int(steps / min(denoise, 0.999)) steps of which the last `steps` run.
    diffusers runs int(length * strength) of a schedule, so the strength asks for `steps`
    and a half (what it denoises from is the schedule's own sigma there)."""
    length = int(steps / min(denoise, 0.999))
    return length, min(1.0, (steps + 0.5) / length)


def _refined(pipe, jobs: tuple[Job, ...], text: dict, guidance: dict, generators: list,
             stages: Stages):
    """SDXL's ensemble of experts: the base model denoises the first `switch_at` of the
    schedule, the refiner the rest, from the base's latents; each image's generator goes on
    from where the base left it."""
    first = jobs[0]
    latents = pipe(num_inference_steps=first.steps, width=first.width, height=first.height,
                   denoising_end=first.switch_at, generator=generators, output_type="latent",
                   **text, **guidance).images
    refiner, config, encoding = stages.refiner()
    refiner.scheduler = samplers.make_scheduler(config, first.sampler, first.scheduler)
    takes = inspect.signature(refiner.__call__).parameters
    if "prompt" in text:
        words = _text_inputs(jobs, takes)
    else:  # emphasis or embeddings: the refiner's own encoder reads them as the base's did
        words = _stacked([encoding.job(job) for job in jobs])
    return refiner(image=latents, num_inference_steps=first.steps,
                   denoising_start=first.switch_at, generator=generators, output_type="np",
                   **words, **guidance)


def _text_inputs(shape: tuple[Job, ...], takes) -> dict:
    """The prompts as text, for the pipeline to encode (without their <lora:...> tags)."""
    first = shape[0]
    optional = {  # no negative: the pipeline's own zeros (first.zero_negative: its setting)
        "negative_prompt": None if first.zero_negative else [job.negative for job in shape],
        # AUTOMATIC1111 counts 1 as "no skip"; diffusers counts the layers skipped
        "clip_skip": first.clip_skip - 1 if first.clip_skip > 1 else None,
        "max_sequence_length": first.max_sequence_length,
    }
    return {"prompt": [emphasis.loras(job.prompt)[0] for job in shape],
            **{k: v for k, v in optional.items() if k in takes and v is not None}}


def _embedded_calls(batch: Batch, encoding: TextEncoding) -> list[tuple]:
    """(slots, jobs, inputs) of each call: the slots it renders for the batch, the jobs at
    every slot of the call, and the embeddings it takes."""
    encoded: dict[str, tuple] = {}
    for job in batch.shape:
        if job.id not in encoded:
            encoded[job.id] = encoding.job(job)
    lengths: dict[int, list[int]] = {}
    for slot, job in zip(batch.slots, batch.jobs):
        lengths.setdefault(encoded[job.id][0].shape[1], []).append(slot)
    calls = []
    for slots in lengths.values():
        filler = batch.shape[slots[0]]
        jobs = tuple(job if encoded[job.id][0].shape[1] == encoded[filler.id][0].shape[1]
                     else filler for job in batch.shape)
        calls.append((tuple(slots), jobs, _stacked([encoded[job.id] for job in jobs])))
    return calls


def _stacked(parts: list[tuple]) -> dict:
    """Per-image encodings (TextEncoding.job) as one call's embedding inputs."""
    inputs = {"prompt_embeds": torch.cat([p[0] for p in parts]),
              "negative_prompt_embeds": torch.cat([p[1] for p in parts])}
    if parts[0][2] is not None:
        inputs["pooled_prompt_embeds"] = torch.cat([p[2] for p in parts])
        inputs["negative_pooled_prompt_embeds"] = torch.cat([p[3] for p in parts])
    return inputs
