"""One batch through a diffusers pipeline -> images."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from PIL import Image

from farm import emphasis, encode, samplers
from farm.encode import TextEncoding
from farm.jobs import Batch, Job

# A decoded image, or why there is none (a NaN-poisoned latent decodes to garbage).
Rendered = Image.Image | str


def render(pipe, batch: Batch, scheduler_config: dict,
           encoding: TextEncoding | None = None) -> tuple[list[Rendered], dict]:
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
    for slots, jobs, inputs in calls:
        # 3. noise: one CPU generator per image
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
        # 4. denoise with classifier-free guidance, decode; recipes were checked against the
        #    pipeline's family, so an input it does not take is left at its default
        output = pipe(num_inference_steps=first.steps, width=first.width, height=first.height,
                      generator=generators, output_type="np", **inputs,
                      **({"guidance_scale": first.cfg} if "guidance_scale" in takes else {}))
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


def _text_inputs(shape: tuple[Job, ...], takes) -> dict:
    """The prompts as text, for the pipeline to encode (without their <lora:...> tags)."""
    first = shape[0]
    optional = {
        "negative_prompt": [job.negative for job in shape],
        # AUTOMATIC1111 counts 1 as "no skip"; diffusers counts the layers skipped
        "clip_skip": first.clip_skip - 1 if first.clip_skip > 1 else None,
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
        parts = [encoded[job.id] for job in jobs]
        inputs = {"prompt_embeds": torch.cat([p[0] for p in parts]),
                  "negative_prompt_embeds": torch.cat([p[1] for p in parts])}
        if parts[0][2] is not None:
            inputs["pooled_prompt_embeds"] = torch.cat([p[2] for p in parts])
            inputs["negative_pooled_prompt_embeds"] = torch.cat([p[3] for p in parts])
        calls.append((tuple(slots), jobs, inputs))
    return calls
