"""Expand a recipe into jobs and batches: pure, deterministic, streaming."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from farm import adapters, inputs, prompts, samplers
from farm.fields import FIELDS
from farm.jobs import Batch, Hires, Job, Loadout, Lora, Model, Slot
from farm.recipe import LOAD_AXES, ROW_AXES, HiresSpec, Recipe


def loadouts(recipe: Recipe, models: Mapping[str, Model]) -> list[Loadout]:
    """What workers must load for the recipe, in plan order; each is one pipeline (and a
    refiner's, when it has one)."""
    refiners = list(dict.fromkeys(r[0] if r else None for r in recipe.refiner))
    return [Loadout(models[ckpt], models[vae] if vae is not None else None,
                    models[refiner] if refiner is not None else None)
            for ckpt, vae, refiner in itertools.product(recipe.checkpoint, recipe.vae, refiners)]


def input_images(recipe: Recipe, models: Mapping[str, Model]) -> dict[str, Model]:
    """The recipe's input images by path, identified (run.resolve_models did it once)."""
    found = getattr(models, "inputs", None)
    if found is None:
        found = {m.path: m for m in inputs.identify(p for p in recipe.init if p is not None)}
    return found


def jobs(recipe: Recipe, models: Mapping[str, Model],
         loadout: Loadout | None = None) -> Iterator[Job]:
    """Every job of the recipe (or of one loadout), one at a time, keeping batches together.

    Expensive switches change least often: checkpoint, then VAE, then size, then the sampler
    settings; prompts and seeds, which a single pipeline call can mix, vary fastest, whatever
    order the recipe lists its axes in. Zipped axes advance together. `models` maps each
    checkpoint and VAE reference of the recipe to its resolved Model.
    """
    axes = [axis for axis in recipe.combined_axes() if axis[0] not in LOAD_AXES]
    replaced = {name: recipe.set_by_row(name) for name in ROW_AXES}
    reader: adapters.Reader = getattr(models, "reader", None) or adapters.Reader(recipe.base)
    images = input_images(recipe, models)
    for out in [loadout] if loadout is not None else loadouts(recipe, models):
        sets = {s: _joined((), tuple(Lora(reader.lora(ref, out.checkpoint), weight)
                                     for ref, weight in s), "loras") for s in recipe.loras}
        switches = [r[1] if r else None for r in recipe.refiner
                    if (models[r[0]] if r else None) == out.refiner]
        for switch_at, chosen in _each(switches, lambda: _product(recipe, axes)):
            row: prompts.Row = chosen["prompt"][1]
            fixed = dict(row.overrides) if row.overrides else {}
            # a prompt-file row that sets a field takes part at one value of that field's axis
            if fixed and any(replaced[name] and chosen[ROW_AXES[name]][0] for name in fixed):
                continue
            sampler, schedule = _schedule(chosen["sampler"][1], chosen["scheduler"][1])
            width, height = chosen["size"][1]
            hires = _hires(chosen["hires"][1], width, height)
            if hires is not None:  # the job's size is the final image's
                width, height = chosen["hires"][1].final(width, height)
            init = chosen["init"][1]
            negative = recipe.negative if row.negative is None else row.negative
            # what the prompt's <lora:...> tags, embedding words and emphasis add
            reading = reader.read(row.text, negative, out.checkpoint, chosen["emphasis"][1])
            loras = sets[chosen["loras"][1]]
            if reading.loras:
                loras = _joined(loras, reading.loras, f"prompt {row.text[:60]!r}")
            job = Job(
                checkpoint=out.checkpoint,
                vae=out.vae,
                prompt=row.text,
                negative=negative,
                seed=fixed.get("seed", chosen["seeds"][1]),
                sampler=sampler,
                scheduler=schedule,
                steps=fixed.get("steps", chosen["steps"][1]),
                cfg=fixed.get("cfg", chosen["cfg"][1]),
                width=width,
                height=height,
                clip_skip=chosen["clip_skip"][1],
                dtype=recipe.dtype,
                loras=loras,
                emphasis=reading.emphasis,
                embeddings=reading.embeddings,
                init=images[init] if init is not None else None,
                denoise=chosen["denoise"][1],
                resize=recipe.resize if init is not None else None,
                hires=hires,
                refiner=out.refiner,
                switch_at=switch_at,
                context=row.context,
            )
            if recipe.caption is not None:  # recorded with the image, never in its id
                job = _captioned(job, recipe.caption, row)
            yield job


def _each(outer: list, inner) -> Iterator[tuple[Any, dict]]:
    """(value, chosen) for each outer value and each item of a fresh inner stream (whose
    items are one dict, updated in place)."""
    for value in outer:
        for chosen in inner():
            yield value, chosen


@lru_cache(maxsize=1024)
def _hires(spec: HiresSpec | None, width: int, height: int) -> Hires | None:
    """A recipe's hires pass for a first pass of width x height."""
    if spec is None:
        return None
    sampler, schedule = (None, None) if spec.sampler is None else \
        _schedule(spec.sampler, samplers.AUTOMATIC)
    return Hires(width, height, spec.scale, spec.upscaler, spec.steps, spec.denoise, sampler,
                 schedule)


def _joined(recipe_set: tuple[Lora, ...], added: tuple[Lora, ...], where: str
            ) -> tuple[Lora, ...]:
    """A LoRA set with more LoRAs (a prompt's tags), ordered by identity: the order they are
    applied in, so that the same set always gives the same pixels."""
    found = {lora.model.identity: lora for lora in recipe_set}
    for lora in added:
        if lora.model.identity in found:
            raise adapters.AdapterError(where, lora.model.ref, "this LoRA file is in the set "
                                        "twice (the recipe's loras and the prompt's tags, or "
                                        "two names for one file); give it once")
        found[lora.model.identity] = lora
    return tuple(found[k] for k in sorted(found))


def _captioned(job: Job, template: str, row: prompts.Row) -> Job:
    known = {**dict(row.fields), **dict(row.values),
             **{f.name: getattr(job, f.name) for f in FIELDS if not f.model}}
    return replace(job, context=job.context + (("caption", prompts.caption(template, known)),))


def repeated_prompts(recipe: Recipe) -> frozenset[int]:
    """Hashes of the (prompt, negative) pairs that more than one prompt row gives: two
    templates or two file lines that say the same thing. Only their jobs can repeat."""
    counts = Counter(hash((row.text, recipe.negative if row.negative is None else row.negative))
                     for row in recipe.prompt_rows())
    return frozenset(key for key, n in counts.items() if n > 1)


def distinct(stream: Iterable[Job], repeated: frozenset[int]) -> Iterator[Job]:
    """The jobs of a stream, each once; only the jobs of repeated prompts are remembered."""
    seen: set[str] = set()
    for job in stream:
        if repeated and hash((job.prompt, job.negative)) in repeated:
            if job.id in seen:
                continue
            seen.add(job.id)
        yield job


@lru_cache(maxsize=1024)
def _schedule(sampler: str, schedule: str) -> tuple[str, str]:
    return samplers.effective_schedule(sampler, schedule)


def _values(recipe: Recipe, axis: str) -> Iterable:
    """The values of one axis, streamed."""
    if axis == "prompt":
        return recipe.prompt_rows()
    if axis == "seeds":
        return recipe.seed_values()
    return getattr(recipe, axis)


def _product(recipe: Recipe, axes: list[tuple[str, ...]]) -> Iterator[dict[str, tuple[int, Any]]]:
    """Nested loops over the (combined) axes, outermost first; each item maps an axis name to
    (index on its axis, value). Axes with fixed values (sizes, samplers, steps, ...) are
    multiplied directly; the streamed ones (prompts, seeds) are re-read lazily inside."""
    split = len(axes)
    while split and any(name in STREAMED for name in axes[split - 1]):
        split -= 1
    if any(name in STREAMED for axis in axes[:split] for name in axis):
        split = 0  # a streamed axis zipped into an outer one: loop everything lazily
    fixed = [list(enumerate(zip(*(_values(recipe, name) for name in axis))))
             for axis in axes[:split]]
    for combination in itertools.product(*fixed):
        chosen = {name: (index, value) for axis, (index, values) in zip(axes, combination)
                  for name, value in zip(axis, values)}
        yield from _streamed(recipe, axes[split:], chosen)


STREAMED = ("prompt", "seeds")


def _streamed(recipe: Recipe, axes: list[tuple[str, ...]],
              chosen: dict) -> Iterator[dict[str, tuple[int, Any]]]:
    if not axes:
        yield chosen
        return
    for index, values in enumerate(zip(*(_values(recipe, name) for name in axes[0]))):
        for name, value in zip(axes[0], values):
            chosen[name] = (index, value)
        yield from _streamed(recipe, axes[1:], chosen)


def batches(stream: Iterable[tuple[Job, Slot | None]], batch_size: int) -> Iterator[Batch]:
    """Consecutive jobs that can share a pipeline call, at most batch_size at a time, each
    call padded to batch_size. A job with a slot (rendered before) goes at that position of a
    call of that size; such jobs share calls while their positions differ."""
    fresh: list[Job] = []
    placed: dict[int, Job] = {}  # position -> job, in a call of placed_size
    placed_size = 0
    for job, slot in stream:
        if slot is None:
            if fresh and (len(fresh) == batch_size or job.batch_key != fresh[0].batch_key):
                yield Batch(tuple(fresh), pad_to=batch_size)
                fresh = []
            fresh.append(job)
            continue
        if placed and (slot.position in placed or slot.batch_size != placed_size
                       or job.batch_key != next(iter(placed.values())).batch_key):
            yield _placed(placed, placed_size)
            placed = {}
        placed[slot.position], placed_size = job, slot.batch_size
    if fresh:
        yield Batch(tuple(fresh), pad_to=batch_size)
    if placed:
        yield _placed(placed, placed_size)


def _placed(placed: dict[int, Job], size: int) -> Batch:
    positions = tuple(sorted(placed))
    return Batch(tuple(placed[p] for p in positions), pad_to=size, positions=positions)
