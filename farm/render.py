"""One batch through a diffusers pipeline -> images."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from PIL import Image

from farm import samplers
from farm.jobs import Batch

# A decoded image, or why there is none (a NaN-poisoned latent decodes to garbage).
Rendered = Image.Image | str


def render(pipe, batch: Batch, scheduler_config: dict) -> tuple[list[Rendered], dict]:
    """Render every job of a batch in one pipeline call; one image (or error) per job.

    The call is padded to the batch's `pad_to` size, each job at its slot (see Batch). Each
    image gets its own CPU generator seeded with its own seed, passed as a list, so that its
    noise is the same whatever batch, worker or device renders it. Also returns the scheduler
    that ran, as {"class": ..., "config": {...}}, for the record.
    """
    first, shape = batch.first, batch.shape
    # 1. sampler: a fresh scheduler from the checkpoint's own config; the model stays loaded
    pipe.scheduler = samplers.make_scheduler(scheduler_config, first.sampler, first.scheduler)
    # 2. noise: one CPU generator per image
    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in shape]
    # 3. encode prompts, denoise with classifier-free guidance, decode; recipes were checked
    #    against the pipeline's family, so an input it does not take is left at its default
    optional = {
        "negative_prompt": [job.negative for job in shape],
        "guidance_scale": first.cfg,
        # AUTOMATIC1111 counts 1 as "no skip"; diffusers counts the layers skipped
        "clip_skip": first.clip_skip - 1 if first.clip_skip > 1 else None,
    }
    takes = inspect.signature(pipe.__call__).parameters
    output = pipe(
        prompt=[job.prompt for job in shape],
        num_inference_steps=first.steps,
        width=first.width,
        height=first.height,
        generator=generators,
        output_type="np",
        **{k: v for k, v in optional.items() if k in takes and v is not None},
    )
    # 4. to 8-bit RGB, refusing what cannot be an image
    images: list[Rendered] = []
    for slot in batch.slots:  # the batch's own jobs, not the padding
        array = output.images[slot]  # (H, W, 3) floats in [0, 1]
        if not np.isfinite(array).all():
            images.append("the decoded image contains NaN or infinite values")
            continue
        images.append(Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)))
    used = {"class": type(pipe.scheduler).__name__, "config": dict(pipe.scheduler.config)}
    return images, used
