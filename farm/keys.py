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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from farm import adapters, checks, emphasis, families, forms, prompts, samplers
from farm.checks import Check
from farm.fields import BY_NAME, INPUT_FIELDS
from farm.forms import (Context, HiresSpec, Parse, PromptFile, each,
                        one)
from farm.values import Control, Hires, Lora, Model

LOAD, BATCH, IMAGE, SETTING = "load", "batch", "image", "setting"
DEFAULT_DENOISE = 0.75  # AUTOMATIC1111's img2img default


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
    # an axis a recipe writes inside another key's value (control.image, in control's units),
    # whose parse reads it from there: not a recipe field of its own
    within: str | None = None

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


def loaded(ref: str | tuple[str, ...] | None, models: Mapping[str, Model]) -> Any:
    """What a load axis value's reference (Key.loads) loads: a model, a tuple of them (a
    ControlNet unit set's), or nothing (None; an empty tuple for no ControlNets)."""
    if isinstance(ref, tuple):
        return tuple(models[r] for r in ref)
    return None if ref is None else models[ref]


def _shown(value: Any) -> str:
    return "(none)" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


# 1. parses: (context, key, value) -> the checked value --------------------------------------------

def _denoise(ctx: Context, name: str, value: Any) -> tuple[float | None, ...]:
    images_in = ctx.given.get("init") is not None  # control images are not denoised
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


def _apply_mask(draft: Draft, pairs: Mapping[str, str] | None) -> None:
    init = draft.fields["init"]
    draft.fields["mask"] = None if init is None or not pairs else draft.inputs[pairs[init.path]]


def _for_mask(name: str, needs: str | None = None) -> Apply:
    """An inpainting setting of jobs that have a mask (and, for the padding, that inpaint only
    the masked area); None on the others."""
    def apply(draft: Draft, value: Any) -> None:
        fields = draft.fields
        fields[name] = value if fields["mask"] is not None and (
            needs is None or fields[needs]) else None
    return apply


def _masked(check: Check) -> Parse:
    """An inpainting setting: checked, and refused away from its default without a mask."""
    def parse(ctx: Context, name: str, value: Any) -> Any:
        value = ctx.checked(check, name, value)
        if value != DEFAULTS[name] and ctx.parsed.get("mask") is None:
            ctx.fail(name, value, "an inpainting setting: set init and mask too")
        return value
    return parse


def _apply_control(draft: Draft, units: tuple[tuple[str, Control], ...] | None) -> None:
    draft.fields["controlnets"] = tuple(draft.models[ref] for ref, _ in units or ())
    draft.fields["control"] = tuple(unit for _, unit in units or ())


def _apply_control_images(draft: Draft, paths: tuple[str, ...] | None) -> None:
    draft.fields["control_images"] = tuple(draft.inputs[p] for p in paths or ())


def _apply_prompt(draft: Draft, row: prompts.Row) -> None:
    """The prompt and its negative, and what the prompt's <lora:...> tags, embedding words and
    emphasis add (read with the job's checkpoint and emphasis mode, set by earlier rows)."""
    negative = draft.negative if row.negative is None else row.negative
    reading = draft.reader.read(row.text, negative, draft.fields["checkpoint"],
                                draft.fields["emphasis"])
    draft.fields.update(prompt=row.text, negative=negative, emphasis=reading.emphasis,
                        embeddings=reading.embeddings, zero_negative=reading.zero_negative,
                        pad_conds=reading.pad_conds, truncated=reading.truncated,
                        context=row.context)
    if reading.loras:
        draft.fields["loras"] = adapters.joined(draft.fields["loras"], reading.loras,
                                                f"prompt {row.text[:60]!r}")


def _family_default(name: str) -> Apply:
    """A value a recipe may leave unset (None): then the checkpoint's family's default
    (families.py: steps 20, or 4 on Flux.1-schnell; cfg 7, or 1 on Flux.1; guidance 3.5 on
    Flux.1-dev, else none)."""
    def apply(draft: Draft, value: Any) -> None:
        if value is None:
            rules = families.rules(draft.reader.family(draft.fields["checkpoint"]))
            value = getattr(rules or families.RULES["StableDiffusionPipeline"], name)
        draft.fields[name] = value
    return apply


def _apply_t5(draft: Draft, tokens: int | None) -> None:
    """T5's prompt length (max_sequence_length): the recipe's, else the family's default;
    None where the checkpoint has no T5 encoder. A prompt longer than it is cut there, and
    its job says so (truncated)."""
    reader, fields = draft.reader, draft.fields
    rules = families.rules(reader.family(fields["checkpoint"]))
    length = None if rules is None or rules.t5_tokens is None else tokens or rules.t5_tokens
    fields["max_sequence_length"] = length
    fields["without_t5"] = length is not None and not reader.has_t5(fields["checkpoint"])
    if length is not None and max(reader.t5_tokens(t, fields["checkpoint"]) for t in (
            emphasis.loras(fields["prompt"])[0], fields["negative"])) > length:
        fields["truncated"] = True


INPUT_NAMES = tuple(f.name for f in INPUT_FIELDS)  # (set or not by the time settings apply)


def _for_inputs(name: str) -> Apply:
    """A setting of jobs that have an input image (how it is fitted, its steps); None on
    the others."""
    def apply(draft: Draft, value: str) -> None:
        fields = draft.fields
        fields[name] = value if any(map(fields.get, INPUT_NAMES)) else None
    return apply


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
    Key("name", None, SETTING, parse=forms.run_name),  # the run folder; default: the file's name
    Key("vars", None, SETTING, parse=forms.variables),  # template variables: {name: [values]}
    Key("negative", "", SETTING, parse=forms.negative),  # for prompts without their own
    Key("expand", "combinatorial", SETTING, parse=forms.expansion),  # or {mode: random, ...}
    Key("dtype", "auto", SETTING, ("dtype",), _set("dtype"), checks.choice(checks.DTYPES)),
    Key("batch_size", 1, SETTING, item=checks.whole(1, checks.MAX_BATCH)),  # same images
    Key("format", "png", SETTING, item=checks.image_format),  # or jpeg, webp (+ .json sidecar)
    Key("quality", 90, SETTING, item=checks.whole(1, 100)),  # jpeg, webp; webp 100 lossless
    Key("png_compression", 6, SETTING, item=checks.whole(0, 9)),  # zlib level; same pixels
    Key("resize", "stretch", SETTING, ("resize",), _for_inputs("resize"),
        checks.choice(checks.RESIZE)),
    Key("img2img_steps", "diffusers", SETTING, ("img2img_steps",), _for_inputs("img2img_steps"),
        checks.choice(checks.IMG2IMG_STEPS)),
    # T5 tokens a prompt may take (SD3, Flux.1); null: the family's default (diffusers': 256 for
    # SD3 and Flux.1-schnell, 512 for Flux.1-dev)
    Key("max_sequence_length", None, SETTING, ("max_sequence_length", "truncated", "without_t5"),
        _apply_t5, checks.t5_tokens),
    # the axes, in cost order: the plan's loops, outermost (most expensive to switch) first
    Key("checkpoint", "tiny", LOAD, ("checkpoint",), _model("checkpoint"), checks.model_ref,
        loads=lambda ref: ref),
    Key("vae", None, LOAD, ("vae",), _model("vae"), checks.optional_model_ref,
        loads=lambda ref: ref, show=lambda v: v or "(checkpoint's own)"),
    Key("refiner", None, LOAD, ("refiner", "switch_at"), _apply_refiner, parse=forms.refiners,
        stage=True, loads=lambda value: value and value[0], loads_from="refiner.checkpoint",
        show=lambda v: f"{v[0]} at {v[1]:g}" if v else "(none)"),
    # ControlNet unit sets: [{model, image, preprocessor, weight, start, end, guess_mode}, ...]
    # (a list of sets is an axis; weight, start and end lists sweep); their images: control.image
    Key("control", None, LOAD, ("controlnets", "control"), _apply_control,
        parse=forms.control_sets, stage=True,
        loads=lambda units: tuple(ref for ref, _ in units or ()), loads_from="control.model",
        show=lambda units: " + ".join(f"{ref} {u.preprocessor} x{u.weight:g} "
                                      f"{u.start:g}-{u.end:g}" for ref, u in units)
        if units else "(none)"),
    Key("loras", [], BATCH, ("loras",), _apply_loras, parse=forms.lora_sets,
        show=lambda s: " + ".join(f"{ref}:{weight:g}" for ref, weight in s) or "(none)"),
    Key("size", "512x512", BATCH, ("width", "height"), _set("width", "height"), checks.size,
        show=lambda v: f"{v[0]}x{v[1]}"),
    Key("hires", None, BATCH, ("hires", "width", "height"), _apply_hires, parse=forms.hires_passes,
        stage=True),
    Key("sampler", "euler", BATCH, ("sampler",), _set("sampler"), checks.sampler),
    Key("scheduler", "automatic", BATCH, ("sampler", "scheduler"), _apply_scheduler,
        checks.schedule),
    Key("steps", None, BATCH, ("steps",), _family_default("steps"),
        checks.unset_or(checks.whole(1, checks.MAX_STEPS)), column="steps", kind=int,
        show=lambda v: "the model's (20; Flux.1-schnell: 4)" if v is None else str(v)),
    Key("cfg", None, BATCH, ("cfg",), _family_default("cfg"),
        checks.unset_or(checks.number(0, 100)), column="cfg", kind=float,
        show=lambda v: "the model's (7; Flux.1: 1)" if v is None else f"{v:g}"),
    # Flux.1-dev's distilled guidance (Forge's "Distilled CFG Scale"); null: the model's (3.5)
    Key("guidance", None, BATCH, ("guidance",), _family_default("guidance"),
        checks.unset_or(checks.number(0, 100)),
        show=lambda v: "the model's" if v is None else f"{v:g}"),
    Key("clip_skip", 1, BATCH, ("clip_skip",), _set("clip_skip"), checks.whole(1, 12),
        column="clip_skip", kind=int),  # AUTOMATIC1111's: 1 = the text encoder's last layer
    Key("emphasis", "a1111", BATCH, ("emphasis",), _set("emphasis"),
        checks.choice(checks.EMPHASIS)),
    Key("denoise", None, BATCH, ("denoise",), _set("denoise"), checks.strength,
        parse=_denoise, stage=True),
    Key("init", None, IMAGE, ("init",), _input("init"), parse=forms.init_images, stage=True,
        summary=_shown_images("init")),
    Key("control.image", None, IMAGE, ("control_images",), _apply_control_images,
        parse=forms.control_images, stage=True, within="control",
        summary=_shown_images("control.image")),
    Key("prompt", None, IMAGE, ("prompt", "negative", "emphasis", "embeddings", "zero_negative",
                                "pad_conds", "truncated", "loras"),
        _apply_prompt, parse=forms.prompt_items, each=_prompt_rows, length=_prompt_count,
        summary=_shown_prompt),
    Key("seeds", 0, IMAGE, ("seed",), _set("seed"), checks.seed, parse=forms.seeds, column="seed",
        kind=int, each=lambda r: itertools.chain.from_iterable(r["seeds"]),
        length=lambda r: sum(len(s) for s in r["seeds"]), summary=_shown_seeds),
    # settings that read the axes
    # inpainting: each init image's mask (white repaints, black keeps), and A1111's settings
    Key("mask", None, SETTING, ("mask",), _apply_mask, parse=forms.masks, stage=True),
    Key("mask_blur", 4, SETTING, ("mask_blur",), _for_mask("mask_blur"),
        parse=_masked(checks.whole(0, 64))),
    Key("inpaint_full_res", False, SETTING, ("inpaint_full_res",), _for_mask("inpaint_full_res"),
        parse=_masked(checks.flag)),  # A1111's "Inpaint area: Only masked"
    Key("inpaint_full_res_padding", 32, SETTING, ("inpaint_full_res_padding",),
        _for_mask("inpaint_full_res_padding", "inpaint_full_res"),
        parse=_masked(checks.whole(0, 256))),
    Key("inpainting_fill", "original", SETTING, ("inpainting_fill",),
        _for_mask("inpainting_fill"), parse=_masked(checks.inpainting_fill)),
    Key("zip", None, SETTING, parse=_zip),  # axes that advance together: [[prompt, seeds]]
    Key("grids", None, SETTING, parse=forms.grids),  # contact sheets: auto, or [{x: cfg, y: steps}]
    Key("gallery", False, SETTING, item=checks.flag),  # RUN/gallery/ refreshed after each render
    # each ControlNet unit's detected map saved beside its image (NAME.control0.png, ...)
    Key("save_detected_map", False, SETTING, item=checks.flag),
    Key("caption", None, SETTING, parse=_caption),  # the `text` of exports; default: the prompt
    Key("score", None, SETTING, parse=forms.scores),  # scorers run on each new image (farm score)
)

BY_KEY = {k.name: k for k in KEYS}
DEFAULTS = {k.name: k.default for k in KEYS if not k.within}  # the recipe's fields
AXES = tuple(k for k in KEYS if k.axis)  # in cost order
LOADED = tuple(k for k in AXES if k.role == LOAD)  # what workers load: these always multiply
STAGES = tuple(k for k in AXES if k.stage)  # (None,) unless the recipe sets them
# the keys that name input images (init, control.image, mask)
INPUT_KEYS = tuple(k for k in KEYS if any(BY_NAME[f].source == "input" for f in k.sets))


def input_paths(key: Key, value: Any) -> list[str]:
    """The image paths a key's value names (an axis's values, a mask's pairing)."""
    values = value.values() if isinstance(value, Mapping) else value or ()
    return [p for v in values for p in (v if isinstance(v, tuple) else (v,)) if p is not None]
COLUMNS = {k.column: k.cell for k in AXES if k.column}  # prompt-file columns that set a key
COLUMN_AXES = {k.column: k.name for k in AXES if k.column}
APPLIED = AXES + tuple(k for k in KEYS if not k.axis and k.apply)  # axes first: resize reads init
