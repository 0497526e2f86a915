"""What a job is: one table of its fields. Pure Python: no torch, Ray or Hydra.

Everything that lists job fields derives from FIELDS: the Job's id and batch key, its
to_dict/from_dict, infotext, the checks a recipe value and a prompt-file value both go through,
`farm plan`'s display, the catalog's filters, the export columns and the grid axes. Adding a
field is one row here plus the code that uses it (tests/test_fields.py checks that every row
reaches the plan, the PNG metadata, the manifest, replay and the exports).

Each field has a role:
    load   what a worker must have loaded (the Loadout): switching it costs a model load
    batch  shared by every image of one pipeline call
    image  may differ between the images of one call
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOAD, BATCH, IMAGE = "load", "batch", "image"
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts 64-bit seeds
MAX_STEPS = 1000
MAX_CLIP_SKIP = 12
MAX_CFG = 100
DTYPES = ("auto", "float32", "float16", "bfloat16")
EMPHASIS = ("a1111", "none")
RESIZE = ("stretch", "crop", "fill")  # A1111's "Just resize", "Crop and resize", "Resize and fill"
CONFIG_MARK = "?config="  # "x.safetensors?config=org/name": one weights file and its architecture
ALWAYS = object()  # id_default of the first fields: they always enter the id


class FieldError(ValueError):
    """A value a field does not take; the message says what it takes."""


# 1. checks: value -> clean value, or FieldError saying what is allowed ----------------------------

def whole(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise FieldError(f"expected a whole number from {low} to {high}")
        return value
    return check


def number(low: float, high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not low <= value <= high:
            raise FieldError(f"expected a number from {low:g} to {high:g}")
        return float(value)
    return check


def choice(allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise FieldError(f"allowed: {', '.join(allowed)}")
        return value
    return check


def display_name(ref: str) -> str:
    """A model's or LoRA's name as infotext and columns show it: the file or folder name of
    its reference, without revision, config or extension."""
    tail = ref.split(CONFIG_MARK)[0].rstrip("/").split("/")[-1].split("@")[0]
    return tail.removesuffix(".safetensors")


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise FieldError("expected a string")
    return value


def _shown_hires(value: dict | None) -> str:
    """A hires pass as its export column reads: `2x latent, 10 steps, denoise 0.5`."""
    if not value:
        return ""
    upscale = f"{value['scale']:g}x" if value.get("scale") else \
        f"from {value['width']}x{value['height']}"
    steps = f", {value['steps']} steps" if value.get("steps") else ""
    return f"{upscale} {value['upscaler']}{steps}, denoise {value['denoise']:g}"


# 2. the table ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobField:
    name: str  # the Job attribute, the metadata key, the export column, the filter name
    role: str  # load | batch | image (above)
    kind: type  # the Python type of its value (a prompt-file cell is read as this)
    column: str  # the export column's type (pyarrow and Hugging Face Value dtype)
    axis: str | None  # the recipe field whose values it takes (size gives width and height)
    check: Callable[[Any], Any] = text  # a recipe value and a prompt-file value alike
    row: bool = False  # a prompt-file column of this name sets it for its row
    infotext: str | None = None  # AUTOMATIC1111's key in `parameters`
    # a field added after the first id version enters the id only when it is not at this
    # default, so that the ids of every existing run folder stay as they are
    id_default: Any = ALWAYS
    model: bool = False  # a model reference: recorded as ref + "<name>_identity"
    # a value recorded as a list (LoRAs, embeddings) as its export column and filters read it
    shown: Callable[[Any], str] | None = None

    def parse(self, value: Any) -> Any:
        """A prompt-file cell (text in a CSV, any JSON value in a JSONL) as this field's kind,
        checked like the recipe value."""
        if isinstance(value, str) and self.kind in (int, float):
            try:
                value = self.kind(value.strip())
            except ValueError:
                raise FieldError(f"expected {'a whole number' if self.kind is int else 'a number'}"
                                 ) from None
        elif self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        return self.check(value)


FIELDS: tuple[JobField, ...] = (  # in the order AUTOMATIC1111 writes them
    JobField("prompt", IMAGE, str, "string", "prompt"),
    JobField("negative", IMAGE, str, "string", "prompt", infotext="Negative prompt"),
    JobField("steps", BATCH, int, "int64", "steps", whole(1, MAX_STEPS), row=True,
             infotext="Steps"),
    JobField("sampler", BATCH, str, "string", "sampler", infotext="Sampler"),
    JobField("scheduler", BATCH, str, "string", "scheduler", infotext="Schedule type"),
    JobField("cfg", BATCH, float, "float64", "cfg", number(0, MAX_CFG), row=True,
             infotext="CFG scale"),
    JobField("seed", IMAGE, int, "uint64", "seeds", whole(0, MAX_SEED), row=True,
             infotext="Seed"),
    JobField("width", BATCH, int, "int64", "size", infotext="Size"),
    JobField("height", BATCH, int, "int64", "size"),
    JobField("clip_skip", BATCH, int, "int64", "clip_skip", whole(1, MAX_CLIP_SKIP),
             infotext="Clip skip"),
    JobField("checkpoint", LOAD, str, "string", "checkpoint", infotext="Model", model=True),
    JobField("vae", LOAD, str, "string", "vae", infotext="VAE", model=True),
    JobField("dtype", BATCH, str, "string", "dtype", choice(DTYPES)),
    # added after the first id version: in the id only when not at their defaults
    JobField("loras", BATCH, tuple, "string", "loras", infotext="Lora hashes", id_default=(),
             shown=lambda items: ", ".join(
                 f"{display_name(i['ref'])}:{i['weight']:g}" for i in items or ())),
    JobField("emphasis", BATCH, str, "string", "emphasis", choice(EMPHASIS), id_default="none",
             infotext="Emphasis"),
    JobField("embeddings", BATCH, tuple, "string", None, infotext="TI hashes", id_default=(),
             shown=lambda items: ", ".join(i["name"] for i in items or ())),
    # images in: an input image (its identity the hash of its decoded pixels), the strength it
    # is denoised to and how it is fitted to the size; None on text-to-image jobs
    JobField("init", IMAGE, str, "string", "init", infotext="Init image hash", id_default=None,
             model=True),
    JobField("denoise", BATCH, float, "float64", "denoise", number(0, 1),
             infotext="Denoising strength", id_default=None),
    JobField("resize", BATCH, str, "string", None, choice(RESIZE), id_default=None),
    # a second pass (A1111's hires fix): {width, height (of the first pass), scale, upscaler,
    # steps, denoise, sampler, scheduler}; width and height above are the final image's
    JobField("hires", BATCH, dict, "string", "hires", infotext="Hires upscale", id_default=None,
             shown=_shown_hires),
    # the SDXL refiner, and the share of the schedule after which it takes over
    JobField("refiner", LOAD, str, "string", "refiner", infotext="Refiner", id_default=None,
             model=True),
    JobField("switch_at", BATCH, float, "float64", "refiner", number(0, 1),
             infotext="Refiner switch at", id_default=None),
)


BY_NAME = {f.name: f for f in FIELDS}
ROW_FIELDS = {f.name: f for f in FIELDS if f.row}  # prompt-file columns that set a field
IDENTITY_FIELDS = tuple(f for f in FIELDS if f.role in (LOAD, BATCH))  # shared by a batch


def column_value(record: dict, name: str) -> Any:
    """A recorded job's value of column `name` as exports and filters read it: a list (LoRAs,
    embeddings) as text, a field an older record lacks at its default."""
    f = BY_NAME.get(name)
    if f is None:
        return record.get(name)
    value = record.get(name, None if f.id_default is ALWAYS else f.id_default)
    return f.shown(value) if f.shown else value


def columns() -> dict[str, str]:
    """Every job column of a dataset, with its type: model references come with identities."""
    found = {"id": "string"}
    for f in FIELDS:
        found[f.name] = f.column
        if f.model:
            found[f"{f.name}_identity"] = "string"
    found["template"] = "string"  # how the prompt was made; not a job field (never in the id)
    return found


COLUMNS = columns()
