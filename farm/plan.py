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
    for (ckpt, vae), size, sampler_value, schedule_value, (i_steps, steps), (i_cfg, cfg), \
            clip_skip in itertools.product(pairs, recipe.size, recipe.sampler, recipe.scheduler,
                                           enumerate(recipe.steps), enumerate(recipe.cfg),
                                           recipe.clip_skip):
        sampler, schedule = samplers.effective_schedule(sampler_value, schedule_value)
        for row in recipe.prompt_rows():
            negative = recipe.negative if row.negative is None else row.negative
            fixed = dict(row.overrides)
            # a prompt-file row that sets steps or cfg takes part once, not once per value
            if ("steps" in fixed and i_steps) or ("cfg" in fixed and i_cfg):
                continue
            context = tuple(row.context().items())
            seeds = [fixed["seed"]] if "seed" in fixed else recipe.seed_values()
            for seed in seeds:
                yield Job(
                    checkpoint=models[ckpt],
                    vae=models[vae] if vae is not None else None,
                    prompt=row.text,
                    negative=negative,
                    seed=seed,
                    sampler=sampler,
                    scheduler=schedule,
                    steps=fixed.get("steps", steps),
                    cfg=fixed.get("cfg", cfg),
                    width=size[0],
                    height=size[1],
                    clip_skip=clip_skip,
                    dtype=recipe.dtype,
                    context=context,
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
