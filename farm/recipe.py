"""The recipe: plain data in, a checked Recipe out, or one clear error.

A recipe is data. compose.py reads it from YAML with Hydra (config groups, command-line
overrides); every key is then checked here, through its row in farm/keys.py; nothing in it is
ever imported, evaluated or instantiated.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm import prompts, samplers
from farm.jobs import ImageFormat
from farm.forms import Context, GridSpec, HiresSpec, PromptFile, RecipeError
from farm.keys import AXES, BY_KEY, COLUMN_AXES, COLUMNS, DEFAULTS, INPUT_KEYS, KEYS, LOADED

__all__ = ["DEFAULTS", "GridSpec", "HiresSpec", "Prompt", "PromptFile", "Recipe", "RecipeError",
           "parse"]


def Prompt(text: str, negative: str | None = None) -> prompts.Item:  # noqa: N802
    """A plain prompt item (no template slots)."""
    return prompts.Item(text, negative)


@dataclass(frozen=True)
class Recipe:
    """A checked recipe: every key's value (farm/keys.py), axes as non-empty tuples; the plan is
    their product. `recipe["steps"]` is a key's value."""

    name: str
    base: Path  # the recipe's folder: loras/, embeddings/, wildcards/ and prompt files are here
    values: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def image(self) -> ImageFormat:
        return ImageFormat(self["format"], self["quality"], self["png_compression"],
                           self["save_detected_map"])

    def prompt_rows(self) -> Iterator[prompts.Row]:
        """Every prompt of the recipe, templates expanded and files read, one at a time."""
        return iter(BY_KEY["prompt"].values(self.values))

    def has_context(self) -> bool:
        """Whether its prompts record how they were made (templates, prompt-file rows) or its
        images carry a caption."""
        return self["caption"] is not None or any(isinstance(p, PromptFile) or p.slots
                                                  for p in self["prompt"])

    def uses_negative(self) -> bool:
        return bool(self["negative"]) or any(
            p.negatives if isinstance(p, PromptFile) else bool(p.negative) for p in self["prompt"])

    def uses(self, key: str) -> bool:
        """Whether the recipe sets an optional stage (init images, a hires pass, a refiner);
        `farm plan` leaves out the stages it does not."""
        return not BY_KEY[key].stage or self[key] not in ((None,), None)

    def zipped(self, *keys: str) -> bool:
        """Whether these axes are in one zip group."""
        return any(set(keys) <= set(group) for group in self["zip"])

    def axis_lengths(self) -> dict[str, int]:
        return {k.name: k.count(self.values) for k in AXES}

    def combined_axes(self) -> list[tuple[str, ...]]:
        """The axes the plan multiplies, in cost order (outermost first): a zip group is one
        axis, placed where its most expensive member would be."""
        zipped = {name: group for group in self["zip"] for name in group}
        combined: list[tuple[str, ...]] = []
        for k in AXES:
            axis = zipped.get(k.name, (k.name,))
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
        if not any(isinstance(p, PromptFile) for p in self["prompt"]):
            return everything
        # a prompt-file row that sets a key takes part at one value of that key's axis (unless
        # the axis is zipped with the prompts: then the row's value wins, as it is)
        prompt_axis = next(a for a in size if "prompt" in a)
        total = 0
        for row in self.prompt_rows():
            jobs = everything // size[prompt_axis]
            for column, _ in row.overrides:
                if self.set_by_row(column):
                    jobs //= size[next(a for a in size if COLUMN_AXES[column] in a)]
            total += jobs
        return total

    def set_by_row(self, column: str) -> bool:
        """Whether a prompt-file row that sets `column` replaces one value of its axis (False:
        the axis is zipped with the prompts, and the row's value replaces the value it is
        paired with)."""
        return not self.zipped("prompt", COLUMN_AXES[column])


def parse(data: dict[str, Any], source: str, base: Path = Path(".")) -> Recipe:
    """Check a plain recipe mapping and turn it into a Recipe. `source` names it in errors;
    `base` is the recipe's folder, where wildcards/ and prompt files are found."""
    if not isinstance(data, dict):
        raise RecipeError(source, "(top level)", data, "expected a mapping of recipe fields")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(DEFAULTS), n=1)
        raise RecipeError(source, unknown[0], data[unknown[0]], "unknown field" + (
            f"; did you mean {close[0]!r}?" if close else "") + f" (allowed: "
            f"{', '.join(DEFAULTS)})")
    given = {**DEFAULTS, **data}
    ctx = Context(str(given["name"] or source), base, given, COLUMNS)
    for key in KEYS:  # in table order: settings the axes read come first
        value = given.get(key.name) if key.name != "name" or given["name"] is not None \
            else source
        ctx.parsed[key.name] = key.parse(ctx, key.name, value)
    recipe = Recipe(ctx.parsed["name"], base, ctx.parsed)
    # 2. what no single key can see
    lengths = recipe.axis_lengths()
    for group in recipe["zip"]:
        if len({lengths[name] for name in group}) > 1:
            raise RecipeError(recipe.name, "zip", list(group), "zipped axes must have the same "
                              "length; got " + ", ".join(f"{n} {lengths[n]}" for n in group))
    check_sampler_pairs(recipe)
    check_stages(recipe)
    if ctx.negative_slots and any(isinstance(s, PromptFile) and s.rows > s.negatives
                                  for s in recipe["prompt"]):
        raise RecipeError(recipe.name, "negative", recipe["negative"], "a negative with "
                          "template slots is expanded with each prompt item, but a prompt "
                          "file's rows have no slots to share: give the file a negative "
                          "column, or make the recipe's negative plain text")
    return recipe


def check_sampler_pairs(recipe: Recipe) -> None:
    """Every sampler combines with every schedule, and no two spellings of the sampler and
    scheduler axes give the same pair ("DPM++ 2M Karras" + automatic is dpmpp_2m + karras):
    the plan would count such a job twice."""
    seen: dict[tuple[str, str], str] = {}
    for s in recipe["sampler"]:
        for sch in recipe["scheduler"]:
            try:
                pair = samplers.effective_schedule(s, sch)
            except samplers.UnknownName as e:
                raise RecipeError(recipe.name, "scheduler", sch, str(e)) from None
            spelled = f"sampler {s!r} with scheduler {sch!r}"
            twin = seen.setdefault(pair, spelled)
            if twin != spelled:
                raise RecipeError(recipe.name, "sampler", list(recipe["sampler"]),
                                  f"{twin} and {spelled} are the same sampler and schedule "
                                  f"({pair[0]}, {pair[1]}); list each pair once (e.g. plain "
                                  "sampler names with a scheduler list)")


def check_stages(recipe: Recipe) -> None:
    """Stages that farm does not combine (yet): say so before anything is written."""
    images_in = [k.name for k in INPUT_KEYS if recipe.uses(k.name)]
    if images_in and recipe.uses("hires"):
        raise RecipeError(recipe.name, "hires", str(recipe["hires"][0]),
                          "a hires pass follows a text-to-image first pass; it cannot be "
                          f"combined with {images_in[0]} images (render the images at the size "
                          "you want, or run a second recipe on them)")
    if recipe.uses("refiner") and (images_in or recipe.uses("hires")):
        raise RecipeError(recipe.name, "refiner", recipe["refiner"][0][0], "the refiner "
                          "finishes a text-to-image render; farm does not combine it with init "
                          "images or a hires pass")
    if recipe.uses("mask") and recipe.uses("control") and recipe["inpaint_full_res"]:
        raise RecipeError(recipe.name, "inpaint_full_res", True, "ControlNet units steer the "
                          "whole picture: farm does not crop their images with the masked "
                          "area; inpaint the whole picture (inpaint_full_res: false)")
    for key in (k for k in INPUT_KEYS if k.axis):
        twice = [path for path, n in Counter(recipe[key.name]).items() if n > 1]
        if twice and not recipe.zipped(key.name, "prompt"):
            raise RecipeError(recipe.name, key.name, twice[0], "this image is listed twice; "
                              f"each input must appear once (or zip {key.name} with prompt to "
                              "pair it with several)")


def loaded_refs(recipe: Recipe) -> dict[str, tuple[str, ...]]:
    """The model references each loaded axis names, each once, in order (None: the
    checkpoint's own VAE, no refiner)."""
    return {k.name: tuple(dict.fromkeys(map(k.loads, recipe[k.name]))) for k in LOADED}

