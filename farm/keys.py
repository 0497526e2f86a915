"""The recipe's keys: one row each, from the value a recipe gives to the Job fields it sets.

A row says everything about a key (as AUTOMATIC1111's `AxisOption` rows do for its X/Y/Z plot):
its default, how its value is checked (`parse`, one signature for every row), its role, the
Job fields it sets and how (`apply`), whether a prompt-file column may set it, and how
`farm plan` shows it. Keys that can be lists are axes: the plan multiplies them, in the order
of the rows (what is expensive to switch changes least often). Everything that lists keys
derives from KEYS: the recipe's defaults, its axes, the cost order, what workers load, which
axes are optional stages, the prompt-file columns. Pure Python: no torch, Ray or Hydra.

Roles:
    load     what a worker must have loaded: always multiplied, never zipped
    batch    shared by the images of one pipeline call
    image    may differ between the images of one call (prompts and seeds vary fastest)
    setting  one value for the whole recipe (not an axis)
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

from farm import adapters, catalog, checks, inputs, prompts, samplers
from farm.checks import Check, FieldError
from farm.fields import BY_NAME, INPUT_FIELDS
from farm.values import Hires, Lora, Model

LOAD, BATCH, IMAGE, SETTING = "load", "batch", "image", "setting"
DEFAULT_DENOISE = 0.75  # AUTOMATIC1111's img2img default
DEFAULT_HIRES = {"upscaler": "latent", "steps": 0, "denoise": 0.7, "sampler": None}
DEFAULT_SWITCH = 0.8


class RecipeError(ValueError):
    """Bad input in a recipe: which recipe, which field, what was given, what is allowed."""

    def __init__(self, recipe: str, field: str, given: Any, allowed: str):
        self.recipe, self.field, self.given, self.allowed = recipe, field, given, allowed
        super().__init__(f"recipe {recipe}: {field}: got {given!r}; {allowed}")


@dataclass
class Context:
    """What a key's parse sees besides its value: the recipe (for errors), its folder (prompt
    files, wildcards, input images), every key's given value and the keys parsed so far."""

    recipe: str
    base: Path
    given: Mapping[str, Any]
    parsed: dict[str, Any] = field(default_factory=dict)
    negative_slots: bool = False  # whether the recipe's negative is a template

    def fail(self, field: str, given: Any, allowed: str) -> NoReturn:
        raise RecipeError(self.recipe, field, given, allowed)

    def checked(self, check: Check, field: str, value: Any) -> Any:
        try:
            return check(value)
        except FieldError as e:
            self.fail(field, value, str(e))


@dataclass
class Draft:
    """A job being built from one choice of every axis: the Job's keyword arguments so far, and
    what the rows build it with (plan.jobs makes one per loadout and reuses it)."""

    fields: dict[str, Any]
    models: Mapping[str, Model]  # checkpoints, VAEs, refiners by reference
    inputs: Mapping[str, Model]  # input images by path
    reader: adapters.Reader  # prompts' LoRA tags, embeddings and emphasis
    negative: str  # the recipe's, for prompt rows without one
    lora_sets: dict[tuple, tuple[Lora, ...]] = field(default_factory=dict)  # by (set, checkpoint)


Parse = Callable[[Context, str, Any], Any]  # (context, key, value) -> checked value
Apply = Callable[[Draft, Any], None]  # (draft, one value) -> the Job fields it sets


@dataclass(frozen=True)
class Key:
    name: str  # as a recipe writes it
    default: Any  # when a recipe leaves it out (Hydra composes on top of these)
    role: str  # load | batch | image | setting (above)
    sets: tuple[str, ...] = ()  # the Job fields its value decides
    apply: Apply | None = None
    # the check of one value (of a setting, of each value of an axis, of a prompt-file cell);
    # a key whose values are more than one checked value parses them itself
    item: Check | None = None
    parse: Parse | None = None  # default: `item` of one value (a setting) or of each (an axis)
    column: str | None = None  # a prompt-file column of this name sets it for its row
    kind: type = str  # how a CSV cell reads, before the check
    stage: bool = False  # an optional stage: (None,) unless the recipe sets it
    loads: Callable[[Any], str | None] | None = None  # a load axis value's model reference
    loads_from: str | None = None  # where a recipe writes that reference, if not at the key
    show: Callable[[Any], str] | None = None  # one value as `farm plan` lists it
    summary: Callable[[Mapping[str, Any]], str] | None = None  # or the whole axis, in short
    # a streamed axis: its values from the recipe's (prompt rows, seeds), never held at once
    each: Callable[[Mapping[str, Any]], Iterable] | None = None
    length: Callable[[Mapping[str, Any]], int] | None = None

    def __post_init__(self) -> None:
        if self.parse is None:
            object.__setattr__(self, "parse", each(self.item) if self.axis else one(self.item))

    @property
    def axis(self) -> bool:
        return self.role != SETTING

    def cell(self, value: Any) -> Any:
        """A prompt-file cell of this key's column, checked as a recipe value is."""
        return checks.cell(self.kind, self.item)(value)

    def values(self, recipe: Mapping[str, Any]) -> Iterable:
        return self.each(recipe) if self.each else recipe[self.name]

    def count(self, recipe: Mapping[str, Any]) -> int:
        return self.length(recipe) if self.length else len(recipe[self.name])

    def shown(self, recipe: Mapping[str, Any]) -> str:
        if self.summary:
            return self.summary(recipe)
        show = self.show or _shown
        return ", ".join(show(v) for v in recipe[self.name])


def _shown(value: Any) -> str:
    return "(none)" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


# 1. parses: (context, key, value) -> the checked value --------------------------------------------

def listed(ctx: Context, name: str, value: Any, item: Callable[[str, Any], Any]) -> tuple:
    """A scalar or a list: either way a non-empty tuple of items, each made by item(where,
    value), none listed twice."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        ctx.fail(name, value, "an axis needs at least one value")
    found = tuple(item(f"{name}[{i}]" if len(items) > 1 else name, v)
                  for i, v in enumerate(items))
    for i, v in enumerate(found):
        if v in found[:i]:
            ctx.fail(name, value, f"{v!r} is listed twice; each value must appear once")
    return found


def each(check: Check) -> Parse:
    """An axis of checked values."""
    return lambda ctx, name, value: listed(ctx, name, value,
                                           lambda where, v: ctx.checked(check, where, v))


def one(check: Check) -> Parse:
    """A setting: one checked value."""
    return lambda ctx, name, value: ctx.checked(check, name, value)


def _name(ctx: Context, name: str, value: Any) -> str:
    return ctx.checked(checks.run_name, name, ctx.recipe if value is None else value)


def _vars(ctx: Context, name: str, value: Any) -> dict[str, tuple[str, ...]]:
    """Template variables: {name: [values]} or {name: {file: values.txt}}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.fail(name, value, "expected {name: [values]} or {name: {file: values.txt}}")
    found = {}
    for var, values in value.items():
        where = f"vars.{var}"
        if not isinstance(var, str) or not prompts.NAME.fullmatch(var):
            ctx.fail(where, var, "a variable name is letters, digits and '_'")
        if isinstance(values, dict) and set(values) == {"file"}:
            try:
                found[var] = prompts.read_values(ctx.base / str(values["file"]), where)
            except prompts.PromptError as e:
                ctx.fail(where, values, str(e))
            continue
        items = values if isinstance(values, list) else [values]
        if not items or not all(isinstance(v, (str, int, float)) and str(v).strip()
                                for v in items):
            ctx.fail(where, values, "expected a non-empty list of values (or one value, or "
                     "{file: values.txt})")
        found[var] = tuple(str(v).strip() for v in items)
        if len(set(found[var])) != len(found[var]):
            ctx.fail(where, values, "a value is listed twice")
    return found


def _negative(ctx: Context, name: str, value: Any) -> str:
    """The recipe's negative: a template is expanded with each prompt item (its slots shared);
    for prompt-file rows without one, the plain text, its literal braces ({{ }}) read."""
    text = ctx.checked(checks.any_text, name, value)
    try:
        template = prompts.item("", text, ctx.parsed["vars"], ctx.base, "prompt", name)
    except prompts.PromptError as e:
        ctx.fail(e.field, e.given, str(e))
    ctx.negative_slots = bool(template.slots)
    return text if template.slots else prompts.fill(text, {})


def _expand(ctx: Context, name: str, value: Any) -> prompts.Expansion:
    if value in ("combinatorial", {"mode": "combinatorial"}):
        return prompts.Expansion()
    if isinstance(value, dict) and value.get("mode") == "random" \
            and set(value) <= {"mode", "count", "seed"}:
        count, seed = value.get("count"), value.get("seed", 0)
        if isinstance(count, int) and not isinstance(count, bool) and count >= 1 \
                and isinstance(seed, int) and not isinstance(seed, bool):
            return prompts.Expansion("random", count, seed)
    ctx.fail(name, value, "expected combinatorial, or {mode: random, count: N, seed: S} "
             "(count at least 1)")


@dataclass(frozen=True)
class PromptFile:
    """A file of prompts (.txt, .csv, .jsonl); read again each time it is planned."""

    path: Path
    rows: int  # counted when the recipe was checked
    negatives: int  # how many rows set a negative prompt


def _prompt_item(ctx: Context, name: str, value: Any) -> prompts.Item | PromptFile:
    """Text, {text, negative}, or {file: prompts.txt|.csv|.jsonl}."""
    if isinstance(value, dict) and "file" in value:
        if set(value) != {"file"} or not isinstance(value["file"], str):
            ctx.fail(name, value, "a prompt file item is {file: prompts.txt|.csv|.jsonl}")
        path = ctx.base / value["file"]
        try:
            rows = list(prompts.file_rows(path, name, COLUMNS))  # checked once, here
        except prompts.PromptError as e:
            ctx.fail(name, value, str(e))
        return PromptFile(path, len(rows), sum(1 for r in rows if r.negative))
    if isinstance(value, dict):
        extra = sorted(set(value) - {"text", "negative"})
        if extra:
            ctx.fail(f"{name}.{extra[0]}", value[extra[0]],
                     "a prompt item takes only 'text' and 'negative' (or 'file')")
        if "text" not in value:
            ctx.fail(name, value, "a prompt item needs 'text'")
        text = ctx.checked(checks.text, f"{name}.text", value["text"])
        negative = value.get("negative")
        if negative is not None:
            negative = ctx.checked(checks.any_text, f"{name}.negative", negative)
    elif value is None:
        ctx.fail(name, value, "a recipe needs at least one prompt")
    else:
        text, negative = ctx.checked(checks.text, name, value), None
    # an item without a negative takes the recipe's template, expanded with it (its slots
    # shared); a plain one is filled in by the plan
    label = f"{name}.negative"
    if negative is None and ctx.negative_slots:
        negative, label = ctx.given["negative"], "negative"
    try:
        return prompts.item(text, negative, ctx.parsed["vars"], ctx.base, name, label)
    except prompts.PromptError as e:
        ctx.fail(e.field, e.given, str(e))


def _prompts(ctx: Context, name: str, value: Any) -> tuple:
    return listed(ctx, name, value, lambda where, v: _prompt_item(ctx, where, v))


def _seeds(ctx: Context, name: str, value: Any) -> tuple[range, ...]:
    """'A-B' (inclusive), an int, {start, count}, or a list of ints and 'A-B' ranges; every seed
    checked as a prompt file's seed column is."""
    allowed = (f"expected seeds as 'A-B' (inclusive), an integer, {{start: S, count: N}} or a "
               f"list of those, each from 0 to {checks.MAX_SEED}")
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        ctx.fail(name, value, "an axis needs at least one value")
    ranges = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            r = range(item, item + 1)
        elif isinstance(item, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", item):
            a, b = (int(v) for v in item.split("-"))
            if b < a:
                ctx.fail(name, value, f"range end {b} is before its start {a}; {allowed}")
            r = range(a, b + 1)
        elif isinstance(item, dict) and set(item) == {"start", "count"}:
            start, count = item["start"], item["count"]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, count)) \
                    or count < 1:
                ctx.fail(name, value, allowed)
            r = range(start, start + count)
        else:
            ctx.fail(name, value, allowed)
        for seed in (r.start, r.stop - 1):
            ctx.checked(checks.seed, name, seed)
        ranges.append(r)
    ordered = sorted(ranges, key=lambda r: r.start)
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.stop:
            ctx.fail(name, value, f"seed {b.start} is listed twice; each seed must appear once")
    return tuple(ranges)


def _lora_sets(ctx: Context, name: str, value: Any) -> tuple[tuple[tuple[str, float], ...], ...]:
    """One LoRA set ([] or [{ref, weight}, ...]) or a list of sets, each LoRA a reference or
    {ref: REF, weight: W}; a list of weights makes one set per weight."""
    allowed = ("expected a LoRA set, [{ref: NAME|FILE.safetensors|org/name, weight: 0.8}, ...], "
               "or a list of such sets ([] for none); a weight may be a list of weights to sweep")
    if value is None:
        return ((),)
    if not isinstance(value, list):
        ctx.fail(name, value, allowed)
    sets = value if value and all(isinstance(s, list) for s in value) else [value]
    found: list[tuple[tuple[str, float], ...]] = []
    for i, given in enumerate(sets):
        where = f"{name}[{i}]" if len(sets) > 1 else name
        choices: list[list[tuple[str, float]]] = []
        for j, item in enumerate(given):
            if isinstance(item, str):
                item = {"ref": item}
            if not isinstance(item, dict) or not set(item) <= {"ref", "weight"} \
                    or not isinstance(item.get("ref"), str) or not item["ref"].strip():
                ctx.fail(f"{where}[{j}]", item, allowed)
            weights = item.get("weight", 1.0)
            weights = weights if isinstance(weights, list) and weights else [weights]
            for weight in weights:
                ctx.checked(checks.lora_weight, f"{where}[{j}].weight", weight)
            choices.append([(item["ref"].strip(), float(w)) for w in weights])
        for combination in itertools.product(*choices):
            refs = [ref for ref, _ in combination]
            if len(set(refs)) != len(refs):
                ctx.fail(where, given, "a LoRA is listed twice in one set")
            found.append(tuple(sorted(combination)))
    if len(set(found)) != len(found):
        ctx.fail(name, value, "a LoRA set is listed twice; each must appear once")
    return tuple(found)


@dataclass(frozen=True)
class HiresSpec:
    """One hires pass of the recipe (each member may have been an axis)."""

    scale: float | None  # the final size as a multiple of the first pass's, or
    size: tuple[int, int] | None  # the final size itself
    upscaler: str
    steps: int  # 0: as many as the first pass
    denoise: float
    sampler: str | None  # as the sampler axis holds it (a schedule suffix if implied)

    def final(self, width: int, height: int) -> tuple[int, int]:
        """The final size of a first pass of width x height: scaled, rounded down to a
        multiple of 8 (the latents' grid), as AUTOMATIC1111 does."""
        if self.size is not None:
            return self.size
        return (max(8, int(width * self.scale) // 8 * 8),
                max(8, int(height * self.scale) // 8 * 8))

    def __str__(self) -> str:
        upscale = f"{self.scale:g}x" if self.scale else f"to {self.size[0]}x{self.size[1]}"
        return (f"{upscale} {self.upscaler}, {self.steps or 'same'} steps, denoise "
                f"{self.denoise:g}" + (f", {self.sampler}" if self.sampler else ""))


HIRES_MEMBERS = {"scale": checks.scale, "size": checks.size, "upscaler": checks.upscaler,
                 "steps": checks.hires_steps, "denoise": checks.strength,
                 "sampler": checks.optional_sampler}


def _hires(ctx: Context, name: str, value: Any) -> tuple[HiresSpec | None, ...]:
    """{scale or size, upscaler, steps, denoise, sampler}; each member may be a list."""
    if value is None:
        return (None,)
    if not isinstance(value, dict) or not set(value) <= set(HIRES_MEMBERS):
        ctx.fail(name, value, "expected {scale: 2 (or size: WxH), upscaler: latent, steps: 0, "
                 "denoise: 0.7, sampler: ...}, each member a value or a list")
    if ("scale" in value) == ("size" in value):
        ctx.fail(name, value, "a hires pass needs a scale (2) or a final size (1024x1024), "
                 "one of them")
    given = {**DEFAULT_HIRES, **value}
    choices = [each(check)(ctx, f"{name}.{member}", given[member]) if member in given
               else (None,) for member, check in HIRES_MEMBERS.items()]
    return tuple(HiresSpec(*combination) for combination in itertools.product(*choices))


def _refiner(ctx: Context, name: str, value: Any) -> tuple[tuple[str, float] | None, ...]:
    """{checkpoint: REF, switch_at: 0.8}; both may be lists."""
    if value is None:
        return (None,)
    if not isinstance(value, dict) or "checkpoint" not in value \
            or not set(value) <= {"checkpoint", "switch_at"}:
        ctx.fail(name, value, "expected {checkpoint: REF, switch_at: 0.8} (each a value or a "
                 "list), REF an SDXL refiner")
    refs = each(checks.model_ref)(ctx, f"{name}.checkpoint", value["checkpoint"])
    switches = each(checks.switch_at)(ctx, f"{name}.switch_at",
                                      value.get("switch_at", DEFAULT_SWITCH))
    return tuple(itertools.product(refs, switches))


def _images(ctx: Context, name: str, value: Any) -> tuple[str | None, ...]:
    """Input images: a file, folder, glob or .tar shard, or a list of them (absolute paths)."""
    if value is None:
        return (None,)
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v.strip() for v in items):
        ctx.fail(name, value, "expected an image file, a folder of images, a glob pattern "
                 "(images/*.png), a .tar shard, or a list of those")
    found: list[str] = []
    for i, item in enumerate(items):
        try:
            found += inputs.listed(item.strip(), ctx.base)
        except inputs.InputError as e:
            ctx.fail(f"{name}[{i}]" if len(items) > 1 else name, e.given, e.problem)
    return tuple(found)


def _denoise(ctx: Context, name: str, value: Any) -> tuple[float | None, ...]:
    images_in = any(ctx.given.get(k.name) is not None for k in INPUT_KEYS)
    if value is None:
        return (DEFAULT_DENOISE,) if images_in else (None,)
    if not images_in:
        ctx.fail(name, value, "the denoising strength of input images: set init too (a hires "
                 "pass has its own, hires.denoise)")
    return each(checks.strength)(ctx, name, value)


def _zip(ctx: Context, name: str, value: Any) -> tuple[tuple[str, ...], ...]:
    zippable = [k.name for k in AXES if k.role != LOAD]
    allowed = (f"expected a list of axis groups, e.g. [[prompt, seeds]], each of 2 or more of: "
               f"{', '.join(zippable)} ({', '.join(k.name for k in LOADED[:-1])} and "
               f"{LOADED[-1].name} decide what "
               "workers load, so they always multiply)")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(g, list) for g in value):
        ctx.fail(name, value, allowed)
    seen: set[str] = set()
    groups = []
    for group in value:
        if len(group) < 2 or not all(member in zippable for member in group):
            ctx.fail(name, value, allowed)
        if seen & set(group) or len(set(group)) != len(group):
            ctx.fail(name, value, "an axis may be in one zip group only, once")
        seen |= set(group)
        groups.append(tuple(sorted(group, key=zippable.index)))
    return tuple(groups)


@dataclass(frozen=True)
class GridSpec:
    """A contact sheet to draw after a render; axes left out are chosen from what varies."""

    x: str | None = None
    y: str | None = None
    where: tuple[str, ...] = ()  # catalog filters: "seed=0", "prompt~fox"


def _grids(ctx: Context, name: str, value: Any) -> tuple[GridSpec, ...]:
    allowed = ("expected auto, or a list of {x: FIELD, y: FIELD, where: [FIELD=VALUE, ...]} "
               "(each key optional; axes left out are chosen from what varies)")
    if value is None:
        return ()
    if value == "auto":
        return (GridSpec(),)
    specs = []
    for i, item in enumerate(value if isinstance(value, list) else [value]):
        if not isinstance(item, dict) or not set(item) <= {"x", "y", "where"}:
            ctx.fail(name, value, allowed)
        where = item.get("where") or []
        where = [where] if isinstance(where, str) else where
        if not isinstance(where, list) or not all(isinstance(w, str) for w in where):
            ctx.fail(f"{name}[{i}].where", item.get("where"), allowed)
        try:
            for axis in ("x", "y"):
                if item.get(axis) is not None:
                    catalog.check_field(str(item[axis]), f"{name}[{i}].{axis}")
            catalog.Where.parse(where, f"{name}[{i}].where")
        except catalog.CatalogError as e:
            ctx.fail(f"{name}[{i}]", item, str(e))
        specs.append(GridSpec(item.get("x"), item.get("y"), tuple(where)))
    return tuple(specs)


def _caption(ctx: Context, name: str, value: Any) -> str | None:
    """A caption template whose every `{name}` something gives: a job field, a variable, a
    template slot, or a prompt-file column."""
    if value is None:
        return None
    template = ctx.checked(checks.text, name, value)
    known = set(BY_NAME) | set(ctx.parsed["vars"])
    for source in ctx.parsed["prompt"]:
        if isinstance(source, PromptFile):
            known |= {k for row in prompts.file_rows(source.path, "prompt", COLUMNS)
                      for k, _ in row.fields}
        else:
            known |= {slot.key for slot in source.slots}
    for slot in prompts.caption_names(template):
        if slot not in known:
            ctx.fail(name, value, f"{{{slot}}} is none of: {', '.join(sorted(known))} (job "
                     "fields, variables, template slots, prompt-file columns; {{ and }} for "
                     "literal braces)")
    return template


# 2. applies: one value -> the Job fields it sets --------------------------------------------------

def _set(*names: str) -> Apply:
    """A value that is the Job field itself (or, for several, a tuple of them)."""
    if len(names) == 1:
        return lambda draft, value: draft.fields.__setitem__(names[0], value)
    return lambda draft, value: draft.fields.update(zip(names, value))


def _model(name: str) -> Apply:
    return lambda draft, ref: draft.fields.__setitem__(
        name, None if ref is None else draft.models[ref])


def _apply_refiner(draft: Draft, value: tuple[str, float] | None) -> None:
    draft.fields["refiner"] = None if value is None else draft.models[value[0]]
    draft.fields["switch_at"] = None if value is None else value[1]


def _apply_loras(draft: Draft, lora_set: tuple[tuple[str, float], ...]) -> None:
    checkpoint = draft.fields["checkpoint"]
    key = (lora_set, checkpoint)
    if key not in draft.lora_sets:
        draft.lora_sets[key] = adapters.joined((), tuple(
            Lora(draft.reader.lora(ref, checkpoint), weight) for ref, weight in lora_set),
            "loras")
    draft.fields["loras"] = draft.lora_sets[key]


def _apply_scheduler(draft: Draft, schedule: str) -> None:
    """The sampler row set the sampler as written; with the schedule, the pair it means."""
    draft.fields["sampler"], draft.fields["scheduler"] = effective_pair(
        draft.fields["sampler"], schedule)


def _apply_hires(draft: Draft, spec: HiresSpec | None) -> None:
    """The first pass is at `size`; the job's width and height are the final image's."""
    draft.fields["hires"] = None if spec is None else _hires_pass(
        spec, draft.fields["width"], draft.fields["height"])
    if spec is not None:
        draft.fields["width"], draft.fields["height"] = spec.final(draft.fields["width"],
                                                                   draft.fields["height"])


@lru_cache(maxsize=1024)
def effective_pair(sampler: str, schedule: str) -> tuple[str, str]:
    """(sampler, schedule) as a job records them (an A1111 name's implied schedule applied)."""
    return samplers.effective_schedule(sampler, schedule)


@lru_cache(maxsize=1024)
def _hires_pass(spec: HiresSpec, width: int, height: int) -> Hires:
    sampler, schedule = (None, None) if spec.sampler is None else \
        effective_pair(spec.sampler, samplers.AUTOMATIC)
    return Hires(width, height, spec.scale, spec.upscaler, spec.steps, spec.denoise, sampler,
                 schedule)


def _input(name: str) -> Apply:
    return lambda draft, path: draft.fields.__setitem__(
        name, None if path is None else draft.inputs[path])


def _apply_prompt(draft: Draft, row: prompts.Row) -> None:
    """The prompt and its negative, and what the prompt's <lora:...> tags, embedding words and
    emphasis add (read with the job's checkpoint and emphasis mode, set by earlier rows)."""
    negative = draft.negative if row.negative is None else row.negative
    reading = draft.reader.read(row.text, negative, draft.fields["checkpoint"],
                                draft.fields["emphasis"])
    draft.fields.update(prompt=row.text, negative=negative, emphasis=reading.emphasis,
                        embeddings=reading.embeddings, context=row.context)
    if reading.loras:
        draft.fields["loras"] = adapters.joined(draft.fields["loras"], reading.loras,
                                                f"prompt {row.text[:60]!r}")


def _apply_resize(draft: Draft, mode: str) -> None:
    """How input images are fitted: a field of jobs that have one."""
    fields = draft.fields
    fields["resize"] = None
    for f in INPUT_FIELDS:
        if fields[f.name] is not None:
            fields["resize"] = mode


# 3. the table -------------------------------------------------------------------------------------

def _prompt_rows(recipe: Mapping[str, Any]) -> Iterable[prompts.Row]:
    """Every prompt of the recipe, templates expanded and files read, one at a time."""
    for index, source in enumerate(recipe["prompt"]):
        if isinstance(source, PromptFile):
            yield from prompts.file_rows(source.path, "prompt", COLUMNS)
        else:
            yield from source.rows(recipe["expand"], index)


def _prompt_count(recipe: Mapping[str, Any]) -> int:
    return sum(p.rows if isinstance(p, PromptFile) else p.count(recipe["expand"])
               for p in recipe["prompt"])


def _shown_prompt(recipe: Mapping[str, Any]) -> str:
    expansion = recipe["expand"]
    return f"{len(recipe['prompt'])} item(s)" + (
        "" if expansion.mode == "combinatorial" else f", random x {expansion.count}")


def _shown_seeds(recipe: Mapping[str, Any]) -> str:
    return ", ".join(f"{s.start}-{s.stop - 1}" if len(s) > 1 else str(s.start)
                     for s in recipe["seeds"])


def _shown_images(name: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda recipe: "(none)" if recipe[name] == (None,) else f"{len(recipe[name])} image(s)"


KEYS: tuple[Key, ...] = (
    # settings parsed first: the axes below read them
    Key("name", None, SETTING, parse=_name),  # the run folder; default: the recipe file's name
    Key("vars", None, SETTING, parse=_vars),  # template variables: {name: [values] or file}
    Key("negative", "", SETTING, parse=_negative),  # for prompts without their own
    Key("expand", "combinatorial", SETTING, parse=_expand),  # or {mode: random, count, seed}
    Key("dtype", "auto", SETTING, ("dtype",), _set("dtype"), checks.choice(checks.DTYPES)),
    Key("batch_size", 1, SETTING, item=checks.whole(1, checks.MAX_BATCH)),  # same images
    Key("format", "png", SETTING, item=checks.image_format),  # or jpeg, webp (+ .json sidecar)
    Key("quality", 90, SETTING, item=checks.whole(1, 100)),  # jpeg, webp; webp 100 lossless
    Key("png_compression", 6, SETTING, item=checks.whole(0, 9)),  # zlib level; same pixels
    Key("resize", "stretch", SETTING, ("resize",), _apply_resize, checks.choice(checks.RESIZE)),
    # the axes, in cost order: the plan's loops, outermost (most expensive to switch) first
    Key("checkpoint", "tiny", LOAD, ("checkpoint",), _model("checkpoint"), checks.model_ref,
        loads=lambda ref: ref),
    Key("vae", None, LOAD, ("vae",), _model("vae"), checks.optional_model_ref,
        loads=lambda ref: ref, show=lambda v: v or "(checkpoint's own)"),
    Key("refiner", None, LOAD, ("refiner", "switch_at"), _apply_refiner, parse=_refiner,
        stage=True, loads=lambda value: value and value[0], loads_from="refiner.checkpoint",
        show=lambda v: f"{v[0]} at {v[1]:g}" if v else "(none)"),
    Key("loras", [], BATCH, ("loras",), _apply_loras, parse=_lora_sets,
        show=lambda s: " + ".join(f"{ref}:{weight:g}" for ref, weight in s) or "(none)"),
    Key("size", "512x512", BATCH, ("width", "height"), _set("width", "height"), checks.size,
        show=lambda v: f"{v[0]}x{v[1]}"),
    Key("hires", None, BATCH, ("hires", "width", "height"), _apply_hires, parse=_hires,
        stage=True),
    Key("sampler", "euler", BATCH, ("sampler",), _set("sampler"), checks.sampler),
    Key("scheduler", "automatic", BATCH, ("sampler", "scheduler"), _apply_scheduler,
        checks.schedule),
    Key("steps", 20, BATCH, ("steps",), _set("steps"), checks.whole(1, checks.MAX_STEPS),
        column="steps", kind=int),
    Key("cfg", 7.0, BATCH, ("cfg",), _set("cfg"), checks.number(0, 100), column="cfg",
        kind=float),
    Key("clip_skip", 1, BATCH, ("clip_skip",), _set("clip_skip"), checks.whole(1, 12),
        column="clip_skip", kind=int),  # AUTOMATIC1111's: 1 = the text encoder's last layer
    Key("emphasis", "a1111", BATCH, ("emphasis",), _set("emphasis"),
        checks.choice(checks.EMPHASIS)),
    Key("denoise", None, BATCH, ("denoise",), _set("denoise"), checks.strength,
        parse=_denoise, stage=True),
    Key("init", None, IMAGE, ("init",), _input("init"), parse=_images, stage=True,
        summary=_shown_images("init")),
    Key("prompt", None, IMAGE, ("prompt", "negative", "emphasis", "embeddings", "loras"),
        _apply_prompt, parse=_prompts, each=_prompt_rows, length=_prompt_count,
        summary=_shown_prompt),
    Key("seeds", 0, IMAGE, ("seed",), _set("seed"), checks.seed, parse=_seeds, column="seed",
        kind=int, each=lambda r: itertools.chain.from_iterable(r["seeds"]),
        length=lambda r: sum(len(s) for s in r["seeds"]), summary=_shown_seeds),
    # settings that read the axes
    Key("zip", None, SETTING, parse=_zip),  # axes that advance together: [[prompt, seeds]]
    Key("grids", None, SETTING, parse=_grids),  # contact sheets: auto, or [{x: cfg, y: steps}]
    Key("caption", None, SETTING, parse=_caption),  # the `text` of exports; default: the prompt
)

BY_KEY = {k.name: k for k in KEYS}
DEFAULTS = {k.name: k.default for k in KEYS}
AXES = tuple(k for k in KEYS if k.axis)  # in cost order
LOADED = tuple(k for k in AXES if k.role == LOAD)  # what workers load: these always multiply
STAGES = tuple(k for k in AXES if k.stage)  # (None,) unless the recipe sets them
INPUT_KEYS = tuple(k for k in AXES if any(BY_NAME[f].source == "input" for f in k.sets))
COLUMNS = {k.column: k.cell for k in AXES if k.column}  # prompt-file columns that set a key
COLUMN_AXES = {k.column: k.name for k in AXES if k.column}
APPLIED = AXES + tuple(k for k in KEYS if not k.axis and k.apply)  # axes first: resize reads init
