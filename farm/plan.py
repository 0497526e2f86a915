"""Expand a recipe into jobs and batches: pure, deterministic, streaming."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from farm import adapters, prompts
from farm.fields import FIELDS
from farm.jobs import Batch, Job, Loadout, Model, Slot, share_batch_key
from farm.keys import APPLIED, AXES, BY_KEY, COLUMN_AXES, LOADED, Draft, loaded
from farm.recipe import Recipe, loaded_refs
from farm.scorers import Scorer


@dataclass(frozen=True)
class Resolved:
    """The recipe's references, resolved once (run.resolve_models) and passed to the plan:
    its models by reference, its input images by path (identified by their pixels), and the
    reader of its prompts, which found and checked their LoRAs and embeddings; the scorers
    that score each new image (its `score:`)."""

    models: Mapping[str, Model]
    inputs: Mapping[str, Model]
    reader: adapters.Reader
    scorers: tuple[Scorer, ...] = ()


def loadouts(recipe: Recipe, resolved: Resolved) -> list[Loadout]:
    """What workers must load for the recipe, in plan order: one for each combination of the
    loaded axes' models (a checkpoint's pipeline, another VAE, a refiner)."""
    refs = loaded_refs(recipe)
    return [Loadout(**{k.sets[0]: loaded(ref, resolved.models)
                       for k, ref in zip(LOADED, combination)})
            for combination in itertools.product(*(refs[k.name] for k in LOADED))]


def jobs(recipe: Recipe, resolved: Resolved, loadout: Loadout | None = None) -> Iterator[Job]:
    """Every job of the recipe (or of one loadout), one at a time, keeping batches together.

    The axes loop in the order of their rows in farm/keys.py: what is expensive to switch
    changes least often (checkpoint, VAE, size, sampler settings); prompts and seeds, which a
    single pipeline call can mix, vary fastest, whatever order the recipe lists its keys in.
    Zipped axes advance together. Each key's row sets its Job fields from the chosen value; a
    prompt-file row's column replaces the value of its key's axis.
    """
    axes = recipe.combined_axes()
    replaced = {column: recipe.set_by_row(column) for column in COLUMN_AXES}
    settings = [recipe[k.name] for k in APPLIED if not k.axis]
    for out in [loadout] if loadout is not None else loadouts(recipe, resolved):
        # a loaded axis takes the values that load this loadout's models
        chosen_loads = {k.name: [v for v in recipe[k.name] if getattr(out, k.sets[0]) ==
                                 loaded(k.loads(v), resolved.models)] for k in LOADED}
        draft = Draft({}, resolved.models, resolved.inputs, resolved.reader, recipe["negative"])
        # the fields before each row was applied, and the value it was applied with: a job
        # applies the rows from the first whose value changed (mostly only the seed's)
        before: list[dict] = [{}] * len(APPLIED)
        applied: list = [_UNSET] * len(APPLIED)
        previous: Job | None = None
        seeds_inside = axes[-1] == ("seeds",)  # the innermost loop: only the seed advances
        for chosen, advanced in _product(recipe, axes, chosen_loads):
            row: prompts.Row = chosen["prompt"][1]
            fixed = dict(row.overrides) if row.overrides else {}
            # a prompt-file row that sets a key takes part at one value of that key's axis
            if fixed and any(replaced[c] and chosen[COLUMN_AXES[c]][0] for c in fixed):
                previous = None
                continue
            if advanced and seeds_inside and previous is not None:
                # the seed alone changed since the job before, and no other row reads it
                seed = fixed.get("seed", chosen["seeds"][1]) if fixed else chosen["seeds"][1]
                job = previous.reseeded(seed)
                applied[SEED] = seed
            else:
                values = [chosen[k.name][1] for k in AXES]
                if fixed:
                    values = [fixed.get(k.column, v) for k, v in zip(AXES, values)]
                first = SEED  # (nothing changed: only a repeated job, all the same)
                for i, value in enumerate(values):
                    if value is not applied[i]:
                        first = i
                        break
                values += settings
                draft.fields = dict(before[first])
                for i in range(first, len(APPLIED)):
                    if i > first:
                        before[i] = dict(draft.fields)
                    APPLIED[i].apply(draft, values[i])
                    applied[i] = values[i]
                job = Job(**draft.fields)
                if previous is not None:
                    share_batch_key(job, previous)
            previous = job
            if recipe["caption"] is not None:  # recorded with the image, never in its id
                job = _captioned(job, recipe["caption"], row)
            yield job


def _captioned(job: Job, template: str, row: prompts.Row) -> Job:
    known = {**dict(row.fields), **dict(row.values),
             **{f.name: getattr(job, f.name) for f in FIELDS if not f.model}}
    return replace(job, context=job.context + (("caption", prompts.caption(template, known)),))


def repeated_prompts(recipe: Recipe) -> frozenset[int]:
    """Hashes of the (prompt, negative) pairs that more than one prompt row gives: two
    templates or two file lines that say the same thing. Only their jobs can repeat."""
    counts = Counter(hash((row.text, recipe["negative"] if row.negative is None else row.negative))
                     for row in recipe.prompt_rows())
    return frozenset(key for key, n in counts.items() if n > 1)


_UNSET = object()  # a row not applied yet
SEED = len(AXES) - 1  # the seeds row, the last axis; it sets the seed alone, and no row reads it
if AXES[SEED].sets != ("seed",):
    raise TypeError("farm/keys.py: the seeds row must be the last axis and set the seed alone")


def _product(recipe: Recipe, axes: list[tuple[str, ...]],
             loaded: dict[str, list]) -> Iterator[tuple[dict[str, tuple[int, Any]], bool]]:
    """Nested loops over the (combined) axes, outermost first; each item maps an axis name to
    (index on its axis, value), with whether only the innermost axis advanced since the item
    before. Axes with fixed values (sizes, samplers, steps, ...) are multiplied directly; the
    streamed ones (prompts, seeds) are re-read lazily inside."""
    def values(name: str) -> Iterable:
        return loaded[name] if name in loaded else BY_KEY[name].values(recipe.values)

    streamed = {k.name for k in AXES if k.each}
    split = len(axes)
    while split and streamed & set(axes[split - 1]):
        split -= 1
    if any(streamed & set(axis) for axis in axes[:split]):
        split = 0  # a streamed axis zipped into an outer one: loop everything lazily
    fixed = [list(enumerate(zip(*(values(name) for name in axis)))) for axis in axes[:split]]
    for combination in itertools.product(*fixed):
        chosen = {name: (index, value) for axis, (index, value_tuple) in zip(axes, combination)
                  for name, value in zip(axis, value_tuple)}
        yield from _streamed(values, axes[split:], chosen)


def _streamed(values: Callable[[str], Iterable], axes: list[tuple[str, ...]],
              chosen: dict) -> Iterator[tuple[dict[str, tuple[int, Any]], bool]]:
    if not axes:
        yield chosen, False
        return
    names = axes[0]
    if len(axes) == 1 and len(names) == 1:  # the innermost loop of one axis (mostly seeds)
        name = names[0]
        for index, value in enumerate(values(name)):
            chosen[name] = (index, value)
            yield chosen, index > 0  # past its first item, only it advances
        return
    for index, value_tuple in enumerate(zip(*(values(name) for name in names))):
        for name, value in zip(names, value_tuple):
            chosen[name] = (index, value)
        if len(axes) == 1:
            yield chosen, index > 0
        else:
            yield from _streamed(values, axes[1:], chosen)


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
