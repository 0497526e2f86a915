"""The recipe schema and its validation: plain data in, typed Recipe out, one clear error.

A recipe is data. It is read from YAML (via Hydra in cli.py) and checked here field by field;
nothing in it is ever imported, evaluated or instantiated.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm import catalog, fields, inputs, prompts, samplers
from farm.fields import CONFIG_MARK, MAX_SEED, MAX_STEPS, RESIZE, FieldError
from farm.jobs import UPSCALERS, ImageFormat

# Every field a recipe may set, with its default. Hydra composes on top of these, so that any of
# them can be overridden from the command line even when the recipe file leaves it out.
DEFAULTS: dict[str, Any] = {
    "name": None,  # run folder name; defaults to the recipe's file name
    "checkpoint": "tiny",
    "vae": None,  # None: the checkpoint's own VAE
    "prompt": None,  # required: text, {text, negative}, {file: prompts.csv}, or a list of those
    "negative": "",
    "vars": None,  # template variables: {name: [values] or {file: values.txt}}
    "expand": "combinatorial",  # or {mode: random, count: N, seed: S}
    "zip": None,  # axes that advance together instead of multiplying: [[prompt, seeds], ...]
    "seeds": 0,
    "sampler": "euler",
    "scheduler": "automatic",  # the schedule an A1111 name implies ("DPM++ 2M Karras"), else normal
    "steps": 20,
    "cfg": 7.0,
    "size": "512x512",
    "clip_skip": 1,  # AUTOMATIC1111's: 1 = use the text encoder's last layer
    "loras": [],  # a LoRA set, or a list of sets: [[], [{ref: ink, weight: 0.8}], ...]
    "emphasis": "a1111",  # (word:1.2), [word], BREAK, long prompts as A1111 reads them; none
    "dtype": "auto",  # float16 on a GPU, float32 on the CPU
    "batch_size": 1,
    "format": "png",  # or jpeg, webp: infotext in EXIF, the farm JSON in a sidecar .json
    "quality": 90,  # jpeg and webp, 1-100 (webp at 100 is lossless)
    "png_compression": 6,  # zlib level 0-9: smaller files or faster writes, same pixels
    "grids": None,  # contact sheets drawn after a render: auto, or [{x: cfg, y: steps}, ...]
    "caption": None,  # the `text` of exports: the prompt, or a template of values and fields
    "init": None,  # input images (img2img): files, folders, globs, .tar shards; an axis
    "denoise": None,  # img2img's denoising strength, 0 < d <= 1 (0.75 when init is set); axis
    "resize": "stretch",  # how an input is fitted to the size: stretch, crop, fill
    "hires": None,  # a second pass: {scale or size, upscaler, steps, denoise, sampler}
    "refiner": None,  # the SDXL refiner: {checkpoint: REF, switch_at: 0.8}
}
DEFAULT_DENOISE = 0.75  # AUTOMATIC1111's img2img default
DEFAULT_HIRES = {"upscaler": "latent", "steps": 0, "denoise": 0.7, "sampler": None}
DEFAULT_SWITCH = 0.8

AXES = ("checkpoint", "vae", "refiner", "loras", "prompt", "sampler", "scheduler", "steps", "cfg",
        "size", "hires", "clip_skip", "emphasis", "denoise", "init", "seeds")
# The order the plan loops in, outermost first: what is expensive to switch changes least often
COST_ORDER = ("checkpoint", "vae", "refiner", "loras", "size", "hires", "sampler", "scheduler",
              "steps", "cfg", "clip_skip", "emphasis", "denoise", "init", "prompt", "seeds")
LOAD_AXES = ("checkpoint", "vae", "refiner")  # what workers load: these always multiply
STAGE_AXES = ("refiner", "hires", "denoise", "init")  # (None,) unless the recipe sets them
MAX_BATCH = 256
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class RecipeError(ValueError):
    """Bad input in a recipe: which recipe, which field, what was given, what is allowed."""

    def __init__(self, recipe: str, field: str, given: Any, allowed: str):
        self.recipe, self.field, self.given, self.allowed = recipe, field, given, allowed
        super().__init__(f"recipe {recipe}: {field}: got {given!r}; {allowed}")


@dataclass(frozen=True)
class PromptFile:
    """A file of prompts (.txt, .csv, .jsonl); read again each time it is planned."""

    path: Path
    rows: int  # counted when the recipe was checked
    negatives: int  # how many rows set a negative prompt


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


@dataclass(frozen=True)
class GridSpec:
    """A contact sheet to draw after a render; axes left out are chosen from what varies."""

    x: str | None = None
    y: str | None = None
    where: tuple[str, ...] = ()  # catalog filters: "seed=0", "prompt~fox"


def Prompt(text: str, negative: str | None = None) -> prompts.Item:  # noqa: N802
    """A plain prompt item (no template slots)."""
    return prompts.Item(text, negative)


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Every axis is a non-empty tuple; the plan is their product."""

    name: str
    checkpoint: tuple[str, ...]
    vae: tuple[str | None, ...]
    prompt: tuple[prompts.Item | PromptFile, ...]
    negative: str  # for prompt-file rows without one; items carry theirs, templates expanded
    expansion: prompts.Expansion
    seeds: tuple[range, ...]  # disjoint, in the order given
    sampler: tuple[str, ...]  # canonical names, with a schedule suffix if the name implied one
    scheduler: tuple[str, ...]  # canonical names, or "automatic"
    steps: tuple[int, ...]
    cfg: tuple[float, ...]
    size: tuple[tuple[int, int], ...]  # (width, height)
    clip_skip: tuple[int, ...]
    dtype: str
    batch_size: int
    zip: tuple[tuple[str, ...], ...] = ()  # groups of axes zipped together
    image: ImageFormat = ImageFormat()
    grids: tuple[GridSpec, ...] = ()
    caption: str | None = None  # a template; None: the prompt as written
    # LoRA sets: each a tuple of (reference, weight), resolved when the models are
    loras: tuple[tuple[tuple[str, float], ...], ...] = ((),)
    emphasis: tuple[str, ...] = ("a1111",)
    base: Path = Path(".")  # the recipe's folder: loras/, embeddings/, wildcards/ are here
    init: tuple[str | None, ...] = (None,)  # input images' absolute paths; None: text-to-image
    denoise: tuple[float | None, ...] = (None,)
    resize: str = "stretch"
    hires: tuple[HiresSpec | None, ...] = (None,)
    refiner: tuple[tuple[str, float] | None, ...] = (None,)  # (reference, switch_at)

    def seed_values(self) -> Iterator[int]:
        for r in self.seeds:
            yield from r

    def prompt_rows(self) -> Iterator[prompts.Row]:
        """Every prompt of the recipe, templates expanded and files read, one at a time."""
        for index, source in enumerate(self.prompt):
            if isinstance(source, PromptFile):
                yield from prompts.file_rows(source.path, "prompt")
            else:
                yield from source.rows(self.expansion, index)

    def has_context(self) -> bool:
        """Whether its prompts record how they were made (templates, prompt-file rows) or its
        images carry a caption."""
        return self.caption is not None or any(isinstance(p, PromptFile) or p.slots
                                               for p in self.prompt)

    def uses_negative(self) -> bool:
        return bool(self.negative) or any(
            p.negatives if isinstance(p, PromptFile) else bool(p.negative) for p in self.prompt)

    def shown(self, axis: str) -> str:
        """An axis's values as `farm plan` lists them."""
        if axis == "prompt":
            return f"{len(self.prompt)} item(s)" + (
                "" if self.expansion.mode == "combinatorial" else
                f", random x {self.expansion.count}")
        if axis == "seeds":
            return ", ".join(f"{s.start}-{s.stop - 1}" if len(s) > 1 else str(s.start)
                             for s in self.seeds)
        if axis == "size":
            return ", ".join(f"{w}x{h}" for w, h in self.size)
        if axis == "vae":
            return ", ".join(v or "(checkpoint's own)" for v in self.vae)
        if axis == "loras":
            return "; ".join(" + ".join(f"{ref}:{weight:g}" for ref, weight in s) or "(none)"
                             for s in self.loras)
        if axis == "init":
            return "(none)" if self.init == (None,) else f"{len(self.init)} image(s)"
        if axis == "refiner":
            return ", ".join(f"{r[0]} at {r[1]:g}" if r else "(none)" for r in self.refiner)
        if axis in ("hires", "denoise"):
            return ", ".join("(none)" if v is None else f"{v:g}" if isinstance(v, float)
                             else str(v) for v in getattr(self, axis))
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                         for v in getattr(self, axis))

    def unused(self, axis: str) -> bool:
        """A stage axis the recipe does not use (no init images, hires pass or refiner):
        `farm plan` leaves it out."""
        return axis in STAGE_AXES and getattr(self, axis) == (None,)

    def axis_lengths(self) -> dict[str, int]:
        lengths = {axis: len(getattr(self, axis)) for axis in AXES
                   if axis not in ("seeds", "prompt")}
        lengths["seeds"] = sum(len(r) for r in self.seeds)
        lengths["prompt"] = sum(p.rows if isinstance(p, PromptFile) else p.count(self.expansion)
                                for p in self.prompt)
        return {axis: lengths[axis] for axis in AXES}

    def combined_axes(self) -> list[tuple[str, ...]]:
        """The axes the plan multiplies, in cost order (outermost first): a zip group is one
        axis, placed where its most expensive member would be."""
        zipped = {name: group for group in self.zip for name in group}
        combined: list[tuple[str, ...]] = []
        for name in COST_ORDER:
            axis = zipped.get(name, (name,))
            if axis not in combined:
                combined.append(axis)
        return combined

    @property
    def job_count(self) -> int:
        lengths = self.axis_lengths()
        size = {axis: lengths[axis[0]] for axis in self.combined_axes()}
        everything = 1
        for n in size.values():
            everything *= n
        if not any(isinstance(p, PromptFile) for p in self.prompt):
            return everything
        # a prompt-file row that sets a field takes part at one value of that field's axis
        # (unless the axis is zipped with the prompts: then the row's value wins, as it is)
        prompt_axis = next(a for a in size if "prompt" in a)
        total = 0
        for row in self.prompt_rows():
            jobs = everything // size[prompt_axis]
            for name, _ in row.overrides:
                if self.set_by_row(name):
                    jobs //= size[next(a for a in size if ROW_AXES[name] in a)]
            total += jobs
        return total

    def set_by_row(self, name: str) -> bool:
        """Whether a prompt-file row that sets field `name` replaces one value of its axis
        (False: the axis is zipped with the prompts, and the row's value replaces the value it
        is paired with)."""
        return not any("prompt" in group and ROW_AXES[name] in group for group in self.zip)


ROW_AXES = {name: f.axis for name, f in fields.ROW_FIELDS.items()}  # prompt-file column -> axis


def parse(data: dict[str, Any], source: str, base: Path = Path(".")) -> Recipe:
    """Check a plain recipe mapping and turn it into a Recipe. `source` names it in errors;
    `base` is the recipe's folder, where wildcards/ and prompt files are found."""
    if not isinstance(data, dict):
        raise RecipeError(source, "(top level)", data, "expected a mapping of recipe fields")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise RecipeError(source, unknown[0], data[unknown[0]],
                          f"unknown field; allowed: {', '.join(DEFAULTS)}")
    given = {**DEFAULTS, **data}
    label = given["name"] or source
    p = _Parser(str(label), base)
    p.variables = p.vars(given["vars"])
    p.negative = p.text("negative", given["negative"], allow_empty=True)
    negative = p.default_negative()
    recipe = Recipe(
        name=p.name(given["name"] if given["name"] is not None else source),
        checkpoint=p.axis("checkpoint", given["checkpoint"], p.model_ref),
        vae=p.axis("vae", given["vae"], p.optional_model_ref),
        prompt=p.axis("prompt", given["prompt"], p.prompt),
        negative=negative,
        expansion=p.expansion(given["expand"]),
        seeds=p.seeds(given["seeds"]),
        sampler=p.axis("sampler", given["sampler"], p.sampler),
        scheduler=p.axis("scheduler", given["scheduler"], p.schedule),
        steps=p.axis("steps", given["steps"], p.checked("steps")),
        cfg=p.axis("cfg", given["cfg"], p.checked("cfg")),
        size=p.axis("size", given["size"], p.size),
        clip_skip=p.axis("clip_skip", given["clip_skip"], p.checked("clip_skip")),
        loras=p.lora_sets(given["loras"]),
        emphasis=p.axis("emphasis", given["emphasis"], p.checked("emphasis")),
        base=base,
        init=p.init(given["init"]),
        denoise=p.denoise(given["denoise"], given["init"] is not None),
        resize=p.choice("resize", given["resize"], RESIZE),
        hires=p.hires(given["hires"]),
        refiner=p.refiner(given["refiner"]),
        dtype=p.checked("dtype")("dtype", given["dtype"]),
        batch_size=p.integer("batch_size", given["batch_size"], 1, MAX_BATCH),
        zip=p.zip(given["zip"]),
        image=ImageFormat(
            kind=p.choice("format", "jpeg" if given["format"] == "jpg" else given["format"],
                          tuple(ImageFormat.SUFFIXES)),
            quality=p.integer("quality", given["quality"], 1, 100),
            png_compression=p.integer("png_compression", given["png_compression"], 0, 9)),
        grids=p.grids(given["grids"]),
    )
    recipe = dataclasses.replace(recipe, caption=p.caption(given["caption"], recipe))
    lengths = recipe.axis_lengths()
    for group in recipe.zip:
        if len({lengths[name] for name in group}) > 1:
            raise RecipeError(recipe.name, "zip", list(group), "zipped axes must have the same "
                              "length; got " + ", ".join(f"{n} {lengths[n]}" for n in group))
    check_sampler_pairs(recipe)
    check_stages(recipe)
    if p.negative_slots and any(isinstance(s, PromptFile) and s.rows > s.negatives
                                for s in recipe.prompt):
        raise RecipeError(recipe.name, "negative", recipe.negative, "a negative with template "
                          "slots is expanded with each prompt item, but a prompt file's rows "
                          "have no slots to share: give the file a negative column, or make "
                          "the recipe's negative plain text")
    return recipe


def check_sampler_pairs(recipe: Recipe) -> None:
    """Every sampler combines with every schedule, and no two spellings of the sampler and
    scheduler axes give the same pair ("DPM++ 2M Karras" + automatic is dpmpp_2m + karras):
    the plan would count such a job twice."""
    seen: dict[tuple[str, str], str] = {}
    for s in recipe.sampler:
        for sch in recipe.scheduler:
            try:
                pair = samplers.effective_schedule(s, sch)
            except samplers.UnknownName as e:
                raise RecipeError(recipe.name, "scheduler", sch, str(e)) from None
            spelled = f"sampler {s!r} with scheduler {sch!r}"
            twin = seen.setdefault(pair, spelled)
            if twin != spelled:
                raise RecipeError(recipe.name, "sampler", list(recipe.sampler),
                                  f"{twin} and {spelled} are the same sampler and schedule "
                                  f"({pair[0]}, {pair[1]}); list each pair once (e.g. plain "
                                  "sampler names with a scheduler list)")


def check_stages(recipe: Recipe) -> None:
    """Stages that farm does not combine (yet): say so before anything is written."""
    images_in = recipe.init != (None,)
    if images_in and recipe.hires != (None,):
        raise RecipeError(recipe.name, "hires", "(set)", "a hires pass follows a text-to-image "
                          "first pass; it cannot be combined with init images (render the "
                          "images at the size you want, or run a second recipe on them)")
    if recipe.refiner != (None,) and (images_in or recipe.hires != (None,)):
        raise RecipeError(recipe.name, "refiner", "(set)", "the refiner finishes a text-to-image "
                          "render; farm does not combine it with init images or a hires pass")
    twice = [path for path, n in Counter(recipe.init).items() if n > 1]
    if twice and not any("init" in group and "prompt" in group for group in recipe.zip):
        raise RecipeError(recipe.name, "init", twice[0], "this image is listed twice; each input "
                          "must appear once (or zip init with prompt to pair it with several)")


class _Parser:
    """Field checkers for one recipe; each returns a clean value or raises RecipeError."""

    def __init__(self, recipe: str, base: Path):
        self.recipe, self.base = recipe, base
        self.variables: dict[str, tuple[str, ...]] = {}
        self.negative = ""  # the recipe's negative, as written (maybe a template)
        self.negative_slots = False  # whether it has slots to expand

    def fail(self, field: str, given: Any, allowed: str):
        raise RecipeError(self.recipe, field, given, allowed)

    def axis(self, field: str, value: Any, item) -> tuple:
        """A scalar or a list: either way, a non-empty tuple of checked items, no repeats."""
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not items:
            self.fail(field, value, "an axis needs at least one value")
        checked = tuple(item(f"{field}[{i}]" if len(items) > 1 else field, v)
                        for i, v in enumerate(items))
        seen = set()
        for v in checked:
            if v in seen:
                self.fail(field, value, f"{v!r} is listed twice; each value must appear once")
            seen.add(v)
        return checked

    def name(self, value: Any) -> str:
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            self.fail("name", value, "expected letters, digits, '.', '_' or '-' "
                      "(starting with a letter or digit, at most 100), used as the run folder name")
        return value

    def text(self, field: str, value: Any, allow_empty: bool = False) -> str:
        if value is None and allow_empty:
            return ""
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            self.fail(field, value, "expected a non-empty string" if not allow_empty
                      else "expected a string")
        return value

    def prompt(self, field: str, value: Any) -> prompts.Item | PromptFile:
        if isinstance(value, dict) and "file" in value:
            if set(value) != {"file"} or not isinstance(value["file"], str):
                self.fail(field, value, "a prompt file item is {file: prompts.txt|.csv|.jsonl}")
            path = self.base / value["file"]
            try:
                rows = list(prompts.file_rows(path, field))  # checked once, here
            except prompts.PromptError as e:
                self.fail(field, value, str(e))
            return PromptFile(path, len(rows), sum(1 for r in rows if r.negative))
        if isinstance(value, dict):
            extra = sorted(set(value) - {"text", "negative"})
            if extra:
                self.fail(f"{field}.{extra[0]}", value[extra[0]],
                          "a prompt item takes only 'text' and 'negative' (or 'file')")
            if "text" not in value:
                self.fail(field, value, "a prompt item needs 'text'")
            negative = value.get("negative")
            text = self.text(f"{field}.text", value["text"])
            negative = None if negative is None else self.text(f"{field}.negative", negative,
                                                               allow_empty=True)
        elif value is None:
            self.fail(field, value, "a recipe needs at least one prompt")
        else:
            text, negative = self.text(field, value), None
        # an item without a negative takes the recipe's template, expanded with it (its slots
        # shared); a plain one is filled in by the plan
        label = f"{field}.negative"
        if negative is None and self.negative_slots:
            negative, label = self.negative, "negative"
        try:
            return prompts.item(text, negative, self.variables, self.base, field, label)
        except prompts.PromptError as e:
            self.fail(e.field, e.given, str(e))

    def default_negative(self) -> str:
        """The negative of prompt-file rows that have none: the recipe's, its literal braces
        ({{ }}) read; a template is refused there (parse), and expanded with each item."""
        try:
            template = prompts.item("", self.negative, self.variables, self.base, "prompt",
                                    "negative")
        except prompts.PromptError as e:
            self.fail(e.field, e.given, str(e))
        self.negative_slots = bool(template.slots)
        return self.negative if template.slots else prompts.fill(self.negative, {})

    def vars(self, value: Any) -> dict[str, tuple[str, ...]]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail("vars", value, "expected {name: [values]} or {name: {file: values.txt}}")
        found = {}
        for name, values in value.items():
            field = f"vars.{name}"
            if not isinstance(name, str) or not prompts.NAME.fullmatch(name):
                self.fail(field, name, "a variable name is letters, digits and '_'")
            if isinstance(values, dict) and set(values) == {"file"}:
                try:
                    found[name] = prompts.read_values(self.base / str(values["file"]), field)
                except prompts.PromptError as e:
                    self.fail(field, values, str(e))
                continue
            items = values if isinstance(values, list) else [values]
            if not items or not all(isinstance(v, (str, int, float)) and str(v).strip()
                                    for v in items):
                self.fail(field, values, "expected a non-empty list of values (or one value, "
                          "or {file: values.txt})")
            found[name] = tuple(str(v).strip() for v in items)
            if len(set(found[name])) != len(found[name]):
                self.fail(field, values, "a value is listed twice")
        return found

    def init(self, value: Any) -> tuple[str | None, ...]:
        """Input images: a file, folder, glob or .tar shard, or a list of them."""
        if value is None:
            return (None,)
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str) and v.strip() for v in items):
            self.fail("init", value, "expected an image file, a folder of images, a glob "
                      "pattern (images/*.png), a .tar shard, or a list of those")
        found: list[str] = []
        for i, item in enumerate(items):
            try:
                found += inputs.listed(item.strip(), self.base)
            except inputs.InputError as e:
                self.fail(f"init[{i}]" if len(items) > 1 else "init", e.given, e.problem)
        return tuple(found)

    def denoise(self, value: Any, images_in: bool) -> tuple[float | None, ...]:
        if value is None:
            return (DEFAULT_DENOISE,) if images_in else (None,)
        if not images_in:
            self.fail("denoise", value, "the denoising strength of input images: set init too "
                      "(a hires pass has its own, hires.denoise)")
        return self.axis("denoise", value, self.strength)

    def strength(self, field: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            self.fail(field, value, "expected a denoising strength above 0, at most 1")
        return float(value)

    def hires(self, value: Any) -> tuple[HiresSpec | None, ...]:
        """{scale or size, upscaler, steps, denoise, sampler}; each member may be a list."""
        if value is None:
            return (None,)
        members = ("scale", "size", "upscaler", "steps", "denoise", "sampler")
        if not isinstance(value, dict) or not set(value) <= set(members):
            self.fail("hires", value, "expected {scale: 2 (or size: WxH), upscaler: latent, "
                      "steps: 0, denoise: 0.7, sampler: ...}, each member a value or a list")
        if ("scale" in value) == ("size" in value):
            self.fail("hires", value, "a hires pass needs a scale (2) or a final size "
                      "(1024x1024), one of them")
        given = {**DEFAULT_HIRES, **value}
        choices: dict[str, tuple] = {}
        for name in members:
            if name not in given:
                choices[name] = (None,)
                continue
            check = {"scale": self.scale, "size": self.size, "upscaler": self.upscaler,
                     "steps": self.hires_steps, "denoise": self.strength,
                     "sampler": lambda f, v: None if v is None else self.sampler(f, v)}[name]
            choices[name] = self.axis(f"hires.{name}", given[name], check)
        return tuple(HiresSpec(*combination) for combination in itertools.product(
            *(choices[name] for name in members)))

    def scale(self, field: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 8:
            self.fail(field, value, "expected a scale from 1 to 8")
        return float(value)

    def upscaler(self, field: str, value: Any) -> str:
        names = {k: k for k in UPSCALERS} | {v.casefold(): k for k, v in UPSCALERS.items()}
        found = names.get(str(value).strip().casefold())
        if found is None:
            self.fail(field, value, f"allowed: {', '.join(UPSCALERS)} (or A1111's names: "
                      f"{', '.join(UPSCALERS.values())})")
        return found

    def hires_steps(self, field: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STEPS:
            self.fail(field, value, f"expected a whole number from 0 (as many as the first "
                      f"pass) to {MAX_STEPS}")
        return value

    def refiner(self, value: Any) -> tuple[tuple[str, float] | None, ...]:
        """{checkpoint: REF, switch_at: 0.8}; both may be lists."""
        if value is None:
            return (None,)
        if not isinstance(value, dict) or "checkpoint" not in value \
                or not set(value) <= {"checkpoint", "switch_at"}:
            self.fail("refiner", value, "expected {checkpoint: REF, switch_at: 0.8} (each a "
                      "value or a list), REF an SDXL refiner")
        refs = self.axis("refiner.checkpoint", value["checkpoint"], self.model_ref)
        switches = self.axis("refiner.switch_at", value.get("switch_at", DEFAULT_SWITCH),
                             self.switch_at)
        return tuple(itertools.product(refs, switches))

    def switch_at(self, field: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            self.fail(field, value, "expected the share of the schedule the base model "
                      "denoises before the refiner takes over, above 0 and below 1")
        return float(value)

    def zip(self, value: Any) -> tuple[tuple[str, ...], ...]:
        zippable = [a for a in AXES if a not in LOAD_AXES]
        allowed = (f"expected a list of axis groups, e.g. [[prompt, seeds]], each of 2 or more "
                   f"of: {', '.join(zippable)} (checkpoint, vae and refiner decide what "
                   "workers load, so they always multiply)")
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(g, list) for g in value):
            self.fail("zip", value, allowed)
        seen: set[str] = set()
        groups = []
        for group in value:
            if len(group) < 2 or not all(name in zippable for name in group):
                self.fail("zip", value, allowed)
            if seen & set(group) or len(set(group)) != len(group):
                self.fail("zip", value, "an axis may be in one zip group only, once")
            seen |= set(group)
            groups.append(tuple(sorted(group, key=COST_ORDER.index)))
        return tuple(groups)

    def grids(self, value: Any) -> tuple[GridSpec, ...]:
        allowed = ("expected auto, or a list of {x: FIELD, y: FIELD, where: [FIELD=VALUE, ...]} "
                   "(each key optional; axes left out are chosen from what varies)")
        if value is None:
            return ()
        if value == "auto":
            return (GridSpec(),)
        specs = []
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if not isinstance(item, dict) or not set(item) <= {"x", "y", "where"}:
                self.fail("grids", value, allowed)
            where = item.get("where") or []
            where = [where] if isinstance(where, str) else where
            if not isinstance(where, list) or not all(isinstance(w, str) for w in where):
                self.fail(f"grids[{i}].where", item.get("where"), allowed)
            try:
                for axis in ("x", "y"):
                    if item.get(axis) is not None:
                        catalog.check_field(str(item[axis]), f"grids[{i}].{axis}")
                catalog.Where.parse(where, f"grids[{i}].where")
            except catalog.CatalogError as e:
                self.fail(f"grids[{i}]", item, str(e))
            specs.append(GridSpec(item.get("x"), item.get("y"), tuple(where)))
        return tuple(specs)

    def caption(self, value: Any, recipe: Recipe) -> str | None:
        """A caption template whose every `{name}` something gives: a job field, a variable,
        a template slot, or a prompt-file column."""
        if value is None:
            return None
        template = self.text("caption", value)
        known = set(fields.BY_NAME) | set(self.variables)
        for source in recipe.prompt:
            if isinstance(source, PromptFile):
                known |= {k for row in prompts.file_rows(source.path, "prompt")
                          for k, _ in row.fields}
            else:
                known |= {slot.key for slot in source.slots}
        for name in prompts.caption_names(template):
            if name not in known:
                self.fail("caption", value, f"{{{name}}} is none of: {', '.join(sorted(known))} "
                          "(job fields, variables, template slots, prompt-file columns; "
                          "{{ and }} for literal braces)")
        return template

    def expansion(self, value: Any) -> prompts.Expansion:
        allowed = ("expected combinatorial, or {mode: random, count: N, seed: S} "
                   "(count at least 1)")
        if value in ("combinatorial", {"mode": "combinatorial"}):
            return prompts.Expansion()
        if isinstance(value, dict) and value.get("mode") == "random" \
                and set(value) <= {"mode", "count", "seed"}:
            count, seed = value.get("count"), value.get("seed", 0)
            if isinstance(count, int) and not isinstance(count, bool) and count >= 1 \
                    and isinstance(seed, int) and not isinstance(seed, bool):
                return prompts.Expansion("random", count, seed)
        self.fail("expand", value, allowed)

    def model_ref(self, field: str, value: Any) -> str:
        if isinstance(value, dict):  # {path: weights.safetensors, config: org/name}
            if set(value) != {"path", "config"} or not all(
                    isinstance(v, str) and v.strip() for v in value.values()):
                self.fail(field, value, "a single-file model is {path: FILE.safetensors, "
                          "config: REFERENCE}, the config a diffusers folder or repo id that "
                          "gives its architecture")
            return f"{value['path'].strip()}{CONFIG_MARK}{value['config'].strip()}"
        if not isinstance(value, str) or not value.strip():
            self.fail(field, value, "expected a model reference: tiny, a Hugging Face repo id "
                      "(org/name[@revision]), a diffusers folder or a .safetensors file")
        return value.strip()

    def lora_sets(self, value: Any) -> tuple[tuple[tuple[str, float], ...], ...]:
        """One LoRA set ([] or [{ref, weight}, ...]) or a list of sets, each LoRA a reference
        or {ref: REF, weight: W}; a list of weights makes one set per weight."""
        allowed = ("expected a LoRA set, [{ref: NAME|FILE.safetensors|org/name, weight: 0.8}, "
                   "...], or a list of such sets ([] for none); a weight may be a list of "
                   "weights to sweep")
        if value is None:
            return ((),)
        if not isinstance(value, list):
            self.fail("loras", value, allowed)
        sets = value if value and all(isinstance(s, list) for s in value) else [value]
        found: list[tuple[tuple[str, float], ...]] = []
        for i, given in enumerate(sets):
            field = f"loras[{i}]" if len(sets) > 1 else "loras"
            choices: list[list[tuple[str, float]]] = []
            for j, item in enumerate(given):
                where = f"{field}[{j}]"
                if isinstance(item, str):
                    item = {"ref": item}
                if not isinstance(item, dict) or not set(item) <= {"ref", "weight"} \
                        or not isinstance(item.get("ref"), str) or not item["ref"].strip():
                    self.fail(where, item, allowed)
                weights = item.get("weight", 1.0)
                weights = weights if isinstance(weights, list) and weights else [weights]
                for weight in weights:
                    if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                            or not -10 <= weight <= 10:
                        self.fail(f"{where}.weight", item.get("weight"),
                                  "expected a number from -10 to 10 (or a list of them)")
                choices.append([(item["ref"].strip(), float(w)) for w in weights])
            for combination in itertools.product(*choices):
                refs = [ref for ref, _ in combination]
                if len(set(refs)) != len(refs):
                    self.fail(field, given, "a LoRA is listed twice in one set")
                found.append(tuple(sorted(combination)))
        if len(set(found)) != len(found):
            self.fail("loras", value, "a LoRA set is listed twice; each must appear once")
        return tuple(found)

    def optional_model_ref(self, field: str, value: Any) -> str | None:
        return None if value is None else self.model_ref(field, value)

    def sampler(self, field: str, value: Any) -> str:
        try:
            found, implied = samplers.resolve_sampler(value)
        except samplers.UnknownName as e:
            self.fail(field, value, str(e))
        return found.name if implied is None else f"{found.name} {implied}"

    def schedule(self, field: str, value: Any) -> str:
        if str(value).strip().casefold() == samplers.AUTOMATIC:
            return samplers.AUTOMATIC
        try:
            return samplers.schedule(value).name
        except samplers.UnknownName as e:
            self.fail(field, value, str(e))

    def checked(self, name: str):
        """The table's check of job field `name`, as an axis item checker."""
        def check(field: str, value: Any) -> Any:
            try:
                return fields.BY_NAME[name].check(value)
            except FieldError as e:
                self.fail(field, value, str(e))
        return check

    def choice(self, field: str, value: Any, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            self.fail(field, value, f"allowed: {', '.join(allowed)}")
        return value

    def integer(self, field: str, value: Any, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(field, value, f"expected a whole number from {low} to {high}")
        return value

    def size(self, field: str, value: Any) -> tuple[int, int]:
        allowed = ('expected "WxH" (or one number for a square) with width and height '
                   "positive multiples of 8, at most 8192, e.g. 512x768")
        if isinstance(value, int) and not isinstance(value, bool):
            w = h = value
        elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*[xX]\s*\d+\s*", value):
            w, h = (int(v) for v in re.split(r"[xX]", value))
        else:
            self.fail(field, value, allowed)
        if not (0 < w <= 8192 and 0 < h <= 8192 and w % 8 == 0 and h % 8 == 0):
            self.fail(field, value, allowed)
        return (w, h)

    def seeds(self, value: Any) -> tuple[range, ...]:
        """'A-B' (inclusive), an int, {start, count}, or a list of ints and 'A-B' ranges."""
        allowed = (f"expected seeds as 'A-B' (inclusive), an integer, {{start: S, count: N}} "
                   f"or a list of those, each from 0 to {MAX_SEED}")
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items:
            self.fail("seeds", value, "an axis needs at least one value")
        ranges = []
        for item in items:
            if isinstance(item, bool):
                self.fail("seeds", value, allowed)
            elif isinstance(item, int):
                r = range(item, item + 1)
            elif isinstance(item, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", item):
                a, b = (int(v) for v in item.split("-"))
                if b < a:
                    self.fail("seeds", value, f"range end {b} is before its start {a}; {allowed}")
                r = range(a, b + 1)
            elif isinstance(item, dict) and set(item) == {"start", "count"}:
                start, count = item["start"], item["count"]
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, count)) \
                        or count < 1:
                    self.fail("seeds", value, allowed)
                r = range(start, start + count)
            else:
                self.fail("seeds", value, allowed)
            if r.start < 0 or r.stop - 1 > MAX_SEED:
                self.fail("seeds", value, allowed)
            ranges.append(r)
        ordered = sorted(ranges, key=lambda r: r.start)
        for a, b in zip(ordered, ordered[1:]):
            if b.start < a.stop:
                self.fail("seeds", value,
                          f"seed {b.start} is listed twice; each seed must appear once")
        return tuple(ranges)
