"""Value checks: a value in, a clean value out, or FieldError saying what is allowed. Pure Python.

One family for every route a value takes into a job: a recipe file, a config group, a
command-line override (all three composed into one recipe mapping) and a prompt-file cell.
farm/keys.py names the check of each recipe key; nothing else checks a value again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from farm import samplers
from farm.values import CONFIG_MARK, UPSCALERS

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts 64-bit seeds
MAX_STEPS = 1000
MAX_SIDE = 8192
MAX_BATCH = 256
DTYPES = ("auto", "float32", "float16", "bfloat16")
EMPHASIS = ("a1111", "none")
# how many img2img steps a strength takes: int(steps x d) of the schedule's last (diffusers), or
# one more, from one sigma earlier (AUTOMATIC1111)
IMG2IMG_STEPS = ("diffusers", "a1111")
RESIZE = ("stretch", "crop", "fill")  # A1111's "Just resize", "Crop and resize", "Resize and fill"
FORMATS = ("png", "jpeg", "webp")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

Check = Callable[[Any], Any]


class FieldError(ValueError):
    """A value a field does not take; the message says what it takes."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def flag(value: Any) -> bool:
    """true or false (YAML's booleans; a command line's `gallery=true` reads as one)."""
    if not isinstance(value, bool):
        raise FieldError("expected true or false")
    return value


def whole(low: int, high: int, allowed: str | None = None) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise FieldError(allowed or f"expected a whole number from {low} to {high}")
        return value
    return check


def number(low: float, high: float, allowed: str | None = None, above: bool = False,
           below: bool = False) -> Check:
    """A finite number from low to high; `above`/`below`: low/high themselves excluded."""
    def check(value: Any) -> float:
        if not _is_number(value) or not low <= value <= high \
                or (above and value == low) or (below and value == high):
            raise FieldError(allowed or f"expected a number from {low:g} to {high:g}")
        return float(value)
    return check


def unset_or(check: Check) -> Check:
    """None (the model's default), or a value `check` takes."""
    return lambda value: None if value is None else check(value)


def choice(allowed: tuple[str, ...]) -> Check:
    def check(value: Any) -> str:
        if value not in allowed:
            raise FieldError(f"allowed: {', '.join(allowed)}")
        return value
    return check


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FieldError("expected a non-empty string")
    return value


def any_text(value: Any) -> str:
    """A string, maybe empty (None reads as empty)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FieldError("expected a string")
    return value


def run_name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise FieldError("expected letters, digits, '.', '_' or '-' (starting with a letter or "
                         "digit, at most 100), used as the run folder name")
    return value


seed = whole(0, MAX_SEED)
# img2img's and the hires pass's denoising strength: 0 would change nothing
strength = number(0, 1, "expected a denoising strength above 0, at most 1", above=True)
# the refiner's share of the schedule: at 0 or 1 one of the two models would not run
switch_at = number(0, 1, "expected the share of the schedule the base model denoises before "
                   "the refiner takes over, above 0 and below 1", above=True, below=True)
scale = number(1, 8, "expected a scale above 1, up to 8 (AUTOMATIC1111 skips a pass at "
               "scale 1)", above=True)
hires_steps = whole(0, MAX_STEPS, f"expected a whole number from 0 (as many as the first pass) "
                    f"to {MAX_STEPS}")


def image_format(value: Any) -> str:
    return choice(FORMATS)("jpeg" if value == "jpg" else value)


def size(value: Any) -> tuple[int, int]:
    """"WxH" or one number for a square, each side a positive multiple of 8."""
    allowed = ('expected "WxH" (or one number for a square) with width and height positive '
               f"multiples of 8, at most {MAX_SIDE}, e.g. 512x768")
    if isinstance(value, int) and not isinstance(value, bool):
        w = h = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*[xX]\s*\d+\s*", value):
        w, h = (int(v) for v in re.split(r"[xX]", value))
    else:
        raise FieldError(allowed)
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE and w % 8 == 0 and h % 8 == 0):
        raise FieldError(allowed)
    return (w, h)


INPAINTING_FILL = ("original", "fill")  # A1111's masked content: latent noise/nothing, not yet


def inpainting_fill(value: Any) -> str:
    if value in ("latent_noise", "latent_nothing", "latent noise", "latent nothing"):
        raise FieldError("original or fill: diffusers' inpainting pipelines start from the "
                         "input's own latents, so farm cannot render A1111's latent noise and "
                         "latent nothing (for new content in the masked area, use denoise 1.0)")
    return choice(INPAINTING_FILL)(value)


def model_ref(value: Any) -> str:
    """A model reference, or {path: FILE.safetensors, config: REF} for a single file."""
    if isinstance(value, dict):
        if set(value) != {"path", "config"} or not all(
                isinstance(v, str) and v.strip() for v in value.values()):
            raise FieldError("a single-file model is {path: FILE.safetensors, config: "
                             "REFERENCE}, the config a diffusers folder or repo id that gives "
                             "its architecture")
        return f"{value['path'].strip()}{CONFIG_MARK}{value['config'].strip()}"
    if not isinstance(value, str) or not value.strip():
        raise FieldError("expected a model reference: tiny, a Hugging Face repo id "
                         "(org/name[@revision]), a diffusers folder or a .safetensors file")
    return value.strip()


def t5_tokens(value: Any) -> int | None:
    """max_sequence_length: unset (the model family's default) or 1 to 512 (T5's longest)."""
    return None if value is None else whole(1, 512, "expected a number of T5 tokens from 1 "
                                            "to 512, or null for the model's default")(value)


def optional_model_ref(value: Any) -> str | None:
    return None if value is None else model_ref(value)


def sampler(value: Any) -> str:
    """A sampler name (ComfyUI's or A1111's), with the schedule an A1111 name implies."""
    try:
        found, implied = samplers.resolve_sampler(value)
    except samplers.UnknownName as e:
        raise FieldError(str(e)) from None
    return found.name if implied is None else f"{found.name} {implied}"


def optional_sampler(value: Any) -> str | None:
    return None if value is None else sampler(value)


def schedule(value: Any) -> str:
    if str(value).strip().casefold() == samplers.AUTOMATIC:
        return samplers.AUTOMATIC
    try:
        return samplers.schedule(value).name
    except samplers.UnknownName as e:
        raise FieldError(str(e)) from None


def upscaler(value: Any) -> str:
    names = {k: k for k in UPSCALERS} | {v.casefold(): k for k, v in UPSCALERS.items()}
    found = names.get(str(value).strip().casefold())
    if found is None:
        raise FieldError(f"allowed: {', '.join(UPSCALERS)} (or A1111's names: "
                         f"{', '.join(UPSCALERS.values())})")
    return found


def lora_weight(value: Any) -> float:
    return number(-10, 10, "expected a number from -10 to 10 (or a list of them)")(value)


def cell(kind: type, check: Check) -> Check:
    """A prompt-file cell (text in a CSV, any JSON value in a JSONL) read as `kind`, then
    checked as the recipe value is."""
    def read(value: Any) -> Any:
        if isinstance(value, str) and kind in (int, float):
            try:
                value = kind(value.strip())
            except ValueError:
                raise FieldError("expected a whole number" if kind is int
                                 else "expected a number") from None
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        return check(value)
    return read
