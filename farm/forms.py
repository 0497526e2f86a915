"""The forms a recipe key's value may take, read into checked values: a key's parse,
(context, key, value) -> value, for the keys whose values are more than one checked value
(prompts, seeds, LoRA sets, hires passes, refiners, input images, grids, template variables).
farm/keys.py names each key's parse in its row. Pure Python: no torch, Ray or Hydra.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from farm import catalog, checks, inputs, prompts, scorers
from farm.checks import Check, FieldError
from farm.values import CANNY_THRESHOLDS, PREPROCESSORS, Control

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
    columns: Mapping[str, Check]  # prompt-file columns that set a key, with their cells' checks
    parsed: dict[str, Any] = field(default_factory=dict)
    negative_slots: bool = False  # whether the recipe's negative is a template

    def fail(self, field: str, given: Any, allowed: str) -> NoReturn:
        raise RecipeError(self.recipe, field, given, allowed)

    def checked(self, check: Check, field: str, value: Any) -> Any:
        try:
            return check(value)
        except FieldError as e:
            self.fail(field, value, str(e))


Parse = Callable[[Context, str, Any], Any]  # (context, key, value) -> checked value


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


def run_name(ctx: Context, name: str, value: Any) -> str:
    return ctx.checked(checks.run_name, name, ctx.recipe if value is None else value)


def variables(ctx: Context, name: str, value: Any) -> dict[str, tuple[str, ...]]:
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


def negative(ctx: Context, name: str, value: Any) -> str:
    """The recipe's negative: a template is expanded with each prompt item (its slots shared);
    for prompt-file rows without one, the plain text, its literal braces ({{ }}) read."""
    text = ctx.checked(checks.any_text, name, value)
    try:
        template = prompts.item("", text, ctx.parsed["vars"], ctx.base, "prompt", name)
    except prompts.PromptError as e:
        ctx.fail(e.field, e.given, str(e))
    ctx.negative_slots = bool(template.slots)
    return text if template.slots else prompts.fill(text, {})


def expansion(ctx: Context, name: str, value: Any) -> prompts.Expansion:
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


def prompt_item(ctx: Context, name: str, value: Any) -> prompts.Item | PromptFile:
    """Text, {text, negative}, or {file: prompts.txt|.csv|.jsonl}."""
    if isinstance(value, dict) and "file" in value:
        if set(value) != {"file"} or not isinstance(value["file"], str):
            ctx.fail(name, value, "a prompt file item is {file: prompts.txt|.csv|.jsonl}")
        path = ctx.base / value["file"]
        try:
            rows = list(prompts.file_rows(path, name, ctx.columns))  # checked once, here
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


def prompt_items(ctx: Context, name: str, value: Any) -> tuple:
    return listed(ctx, name, value, lambda where, v: prompt_item(ctx, where, v))


def seeds(ctx: Context, name: str, value: Any) -> tuple[range, ...]:
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


def lora_sets(ctx: Context, name: str, value: Any) -> tuple[tuple[tuple[str, float], ...], ...]:
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


def hires_passes(ctx: Context, name: str, value: Any) -> tuple[HiresSpec | None, ...]:
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
    for target in choices[1]:  # a final size is larger than the first pass, as a scale is
        for first in ctx.parsed.get("size") or ():
            if target is not None and (target == first or (target[0] <= first[0]
                                                            and target[1] <= first[1])):
                ctx.fail(f"{name}.size", f"{target[0]}x{target[1]}", "a hires pass makes the "
                         f"image larger than its first pass ({first[0]}x{first[1]}), as a "
                         "scale above 1 does (AUTOMATIC1111 skips a pass to the same size)")
    return tuple(HiresSpec(*combination) for combination in itertools.product(*choices))


def refiners(ctx: Context, name: str, value: Any) -> tuple[tuple[str, float] | None, ...]:
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


def input_images(ctx: Context, name: str, value: Any) -> tuple[str | None, ...]:
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


@dataclass(frozen=True)
class GridSpec:
    """A contact sheet to draw after a render; axes left out are chosen from what varies."""

    x: str | None = None
    y: str | None = None
    where: tuple[str, ...] = ()  # catalog filters: "seed=0", "prompt~fox"


def grids(ctx: Context, name: str, value: Any) -> tuple[GridSpec, ...]:
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


def scores(ctx: Context, name: str, value: Any) -> tuple[str, ...]:
    """Scorers that score each image right after it is rendered, on its worker: a list (or a
    comma-separated text) of NAME or NAME:REF (farm/scorers.py)."""
    if value is None:
        return ()
    try:
        return scorers.parse(value if isinstance(value, (str, list)) else [value], name)
    except scorers.ScorerError as e:
        ctx.fail(name, value, str(e).split(": ", 1)[-1])


CONTROL_UNIT = ("model", "image", "preprocessor", "weight", "start", "end", "guess_mode",
                "low_threshold", "high_threshold", "control_mode")
CONTROL_ALLOWED = ("expected a ControlNet unit set, [{model: REF, image: IMAGES, preprocessor: "
                   "none|canny, weight: 1.0, start: 0.0, end: 1.0, guess_mode: false}, ...] (one "
                   "unit may be written without the list), or a list of such sets; weight, "
                   "start and end may be lists to sweep; canny takes low_threshold and "
                   "high_threshold (100, 200); a union ControlNet takes control_mode")


def _unit_sets(ctx: Context, name: str, value: Any) -> list[tuple[str, list[dict]]]:
    """(where, units) of each unit set a `control` value gives."""
    if isinstance(value, dict):
        sets = [[value]]
    elif isinstance(value, list) and value and all(isinstance(s, list) for s in value):
        sets = value
    elif isinstance(value, list) and value:
        sets = [value]
    else:
        ctx.fail(name, value, CONTROL_ALLOWED)
    found = []
    for i, units in enumerate(sets):
        where = f"{name}[{i}]" if len(sets) > 1 else name
        if not units:
            ctx.fail(where, units, CONTROL_ALLOWED)
        for j, unit in enumerate(units):
            if not isinstance(unit, dict) or not set(unit) <= set(CONTROL_UNIT):
                extra = sorted(set(unit) - set(CONTROL_UNIT)) if isinstance(unit, dict) else []
                ctx.fail(f"{where}[{j}]" + (f".{extra[0]}" if extra else ""), unit,
                         CONTROL_ALLOWED)
            for needed in ("model", "image"):
                if unit.get(needed) is None:
                    ctx.fail(f"{where}[{j}].{needed}", None, f"each ControlNet unit needs its "
                             f"{needed}; " + CONTROL_ALLOWED)
        found.append((where, units))
    return found


def control_sets(ctx: Context, name: str, value: Any) -> tuple:
    """The `control` axis: unit sets, each a tuple of (ControlNet reference, Control), one
    per combination of its units' weight, start and end lists. The units' images are the
    control.image axis."""
    if value is None:
        return (None,)
    found: list[tuple] = []
    for where, units in _unit_sets(ctx, name, value):
        choices = []
        for j, unit in enumerate(units):
            at = f"{where}[{j}]" if len(units) > 1 or isinstance(value, list) else where
            ref = ctx.checked(checks.model_ref, f"{at}.model", unit["model"])
            kind = ctx.checked(checks.choice(tuple(PREPROCESSORS)), f"{at}.preprocessor",
                               unit.get("preprocessor", "none"))
            low, high = None, None
            if kind == "canny":
                low = ctx.checked(checks.whole(1, 255), f"{at}.low_threshold",
                                  unit.get("low_threshold", CANNY_THRESHOLDS[0]))
                high = ctx.checked(checks.whole(1, 255), f"{at}.high_threshold",
                                   unit.get("high_threshold", CANNY_THRESHOLDS[1]))
                if low > high:
                    ctx.fail(f"{at}.low_threshold", low, f"at most high_threshold ({high})")
            elif "low_threshold" in unit or "high_threshold" in unit:
                ctx.fail(f"{at}.preprocessor", kind, "thresholds are canny's; set "
                         "preprocessor: canny, or leave them out")
            weights = each(checks.number(0, 2))(ctx, f"{at}.weight", unit.get("weight", 1.0))
            starts = each(checks.number(0, 1))(ctx, f"{at}.start", unit.get("start", 0.0))
            ends = each(checks.number(0, 1))(ctx, f"{at}.end", unit.get("end", 1.0))
            guess = ctx.checked(checks.flag, f"{at}.guess_mode", unit.get("guess_mode", False))
            mode = None if unit.get("control_mode") is None else ctx.checked(
                checks.whole(0, 31), f"{at}.control_mode", unit["control_mode"])
            options = [(ref, Control(kind, low, high, float(w), float(s), float(e), guess, mode))
                       for w, s, e in itertools.product(weights, starts, ends) if s < e]
            if not options:
                ctx.fail(f"{at}.start", unit.get("start"), "start must be below end (the share "
                         "of the schedule the unit acts on)")
            choices.append(options)
        if len({option[0][1].guess_mode for option in choices}) > 1:
            ctx.fail(f"{where}", units, "guess_mode is one setting for all units of a set "
                     "(diffusers runs a MultiControlNet call in one mode)")
        found += itertools.product(*choices)
    if len(set(found)) != len(found):
        ctx.fail(name, value, "a ControlNet unit set is listed twice; each must appear once")
    return tuple(tuple(units) for units in found)


def control_images(ctx: Context, name: str, value: Any) -> tuple:
    """The control.image axis: a tuple of image paths (one per unit) for every combination
    of the units' images (files, folders, globs, .tar shards: one job per image). Every set of
    a control axis takes the same images."""
    given = ctx.given.get("control")
    if given is None:
        return (None,)
    per_set = []
    for where, units in _unit_sets(ctx, "control", given):
        images = []
        for j, unit in enumerate(units):
            at = f"{where}[{j}].image" if len(units) > 1 or isinstance(given, list) \
                else f"{where}.image"
            images.append(input_images(ctx, at, unit["image"]))
        per_set.append(images)
    if any(images != per_set[0] for images in per_set):
        ctx.fail("control", given, "every unit set of a control axis takes the same images, "
                 "unit by unit (they are one axis, control.image); sweep models, weights and "
                 "preprocessors on the same images, or make a second recipe")
    return tuple(itertools.product(*per_set[0]))


def init_images(ctx: Context, name: str, value: Any) -> tuple[str | None, ...]:
    """`init`: what input_images takes, and items {image: IMAGES, mask: MASKS} that give
    their images' masks (farm/keys.py's `mask` pairs them)."""
    if value is None:
        return (None,)
    items = value if isinstance(value, list) else [value]
    plain = [item["image"] if isinstance(item, dict) and set(item) == {"image", "mask"}
             else item for item in items]
    return input_images(ctx, name, plain if isinstance(value, list) else plain[0])


MASK_ALLOWED = ("expected a mask file, a folder or glob of masks (each paired with the init "
                "image of the same relative path and file stem), or a list of those; or give "
                "init items as {image: ..., mask: ...}")


def masks(ctx: Context, name: str, value: Any) -> dict[str, str] | None:
    """Each init image's mask, by the image's path: from `mask` (a file, folder or glob) and
    from init's {image, mask} items. Every init image needs one."""
    given = ctx.given.get("init")
    items = given if isinstance(given, list) else [given] if given is not None else []
    pairs = [(item["image"], item["mask"], f"init[{i}].mask") for i, item in enumerate(items)
             if isinstance(item, dict)]
    if value is not None:
        if given is None:
            ctx.fail(name, value, "masks pair with init images: set init too")
        if not (isinstance(value, str) and value.strip()) and not (
                isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            ctx.fail(name, value, MASK_ALLOWED)
        plain = [item for item in items if not isinstance(item, dict)]
        for mask in value if isinstance(value, list) else [value]:
            pairs += [(image, mask, name) for image in plain]
    if not pairs:
        return None
    found: dict[str, str] = {}
    for image, mask, where in pairs:
        if not isinstance(image, str) or not isinstance(mask, str):
            ctx.fail(where, mask, MASK_ALLOWED)
        try:
            found.update(inputs.paired(image.strip(), mask.strip(), ctx.base))
        except inputs.InputError as e:
            ctx.fail(where, e.given, e.problem)
    for path in ctx.parsed["init"]:
        if path not in found:
            ctx.fail(name, value, f"init image {path} has no mask: a mask pairs with the init "
                     "image of the same relative path and file stem (in/a.png with "
                     "masks/a.png or masks/a.jpg)")
    return found
