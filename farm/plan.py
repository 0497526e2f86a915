"""Expand a recipe into jobs and batches: pure, deterministic, streaming."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping

from farm import samplers
from farm.jobs import Job, Model
from farm.recipe import Recipe

Group = tuple[str, "str | None"]  # (checkpoint reference, VAE reference): what a worker loads


def groups(recipe: Recipe) -> list[Group]:
    """The model pairs of a recipe, in plan order; each is one pipeline to load."""
    return list(itertools.product(recipe.checkpoint, recipe.vae))


def jobs(recipe: Recipe, models: Mapping[str, Model], group: Group | None = None) -> Iterator[Job]:
    """Every job of the recipe (or of one model group), one at a time, keeping batches together.

    Expensive switches change least often: checkpoint, then VAE, then size, then the sampler
    settings; prompts and seeds, which a single pipeline call can mix, vary fastest.
    `models` maps each checkpoint and VAE reference of the recipe to its resolved Model.
    """
    pairs = [group] if group is not None else groups(recipe)
    for (ckpt, vae), size, sampler_value, schedule_value, steps, cfg, clip_skip in \
            itertools.product(pairs, recipe.size, recipe.sampler, recipe.scheduler,
                              recipe.steps, recipe.cfg, recipe.clip_skip):
        sampler, schedule = samplers.effective_schedule(sampler_value, schedule_value)
        for prompt in recipe.prompt:
            negative = recipe.negative if prompt.negative is None else prompt.negative
            for seed in recipe.seed_values():
                yield Job(
                    checkpoint=models[ckpt],
                    vae=models[vae] if vae is not None else None,
                    prompt=prompt.text,
                    negative=negative,
                    seed=seed,
                    sampler=sampler,
                    scheduler=schedule,
                    steps=steps,
                    cfg=cfg,
                    width=size[0],
                    height=size[1],
                    clip_skip=clip_skip,
                    dtype=recipe.dtype,
                )


def batches(stream: Iterable[Job], batch_size: int) -> Iterator[tuple[Job, ...]]:
    """Group consecutive jobs that can share a pipeline call, at most batch_size at a time."""
    group: list[Job] = []
    for job in stream:
        if group and (len(group) == batch_size or job.batch_key != group[0].batch_key):
            yield tuple(group)
            group = []
        group.append(job)
    if group:
        yield tuple(group)


def pending(stream: Iterable[Job], is_done: Callable[[str], bool]) -> Iterator[Job]:
    """The jobs of a stream that are not done yet."""
    return (job for job in stream if not is_done(job.id))
