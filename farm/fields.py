"""What a job is: one table of its fields. Pure Python: no torch, Ray or Hydra.

Everything that lists job fields derives from FIELDS: the Job's id and batch key, its
to_dict/from_dict, its AUTOMATIC1111 infotext, the Loadout, the catalog's filters, the export
columns and the grid axes. The recipe keys that set these fields are another table
(farm/keys.py). Adding a field is one row here, the Job attribute, and the code that uses it
(tests/test_fields.py walks every row from recipe to replay).

Each field has a role:
    load   what a worker must have loaded (the Loadout): switching it costs a model load
    batch  shared by every image of one pipeline call
    image  may differ between the images of one call
and a codec: how its value enters the id, is recorded in the `farm` JSON and read back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm import emphasis, samplers
from farm.hashes import file_hash, legacy_hash
from farm.values import PREPROCESSORS, UPSCALERS, Control, Hires, Lora, Model, display_name

LOAD, BATCH, IMAGE = "load", "batch", "image"
ALWAYS = object()  # id_default of the first fields: they always enter the id
# where a reference field's value comes from: a model file, or an input image (its identity the
# hash of its decoded pixels; read by the worker, carried to nodes that cannot see it)
CHECKPOINT, VAE, REFINER, CONTROLNET, INPUT = "checkpoint", "vae", "refiner", "controlnet", "input"
Find = Callable[..., Model]  # (field, ref, identity[, path]) -> the Model found on this machine


# 1. codecs: a value as the id sees it, as the `farm` JSON records it, and back --------------------

@dataclass(frozen=True)
class Codec:
    identity: Callable[[Any], Any]  # hashable, JSON-ready: what the id hashes
    record: Callable[[str, Any], dict[str, Any]]  # name, value -> the record's keys
    restore: Callable[[str, dict, Find], Any]  # name, record, find -> the value


def _plain_restore(name: str, record: dict, find: Find) -> Any:
    return record.get(name, MISSING)


MISSING = object()  # a field an older record lacks: the Job's default
PLAIN = Codec(lambda v: v, lambda name, v: {name: v}, _plain_restore)
FLOAT = Codec(lambda v: None if v is None else float(v),
              lambda name, v: {name: None if v is None else float(v)}, _plain_restore)
# a model, recorded as its reference and its identity
MODEL = Codec(
    lambda m: None if m is None else m.identity,
    lambda name, m: {name: None if m is None else m.ref,
                     f"{name}_identity": None if m is None else m.identity},
    lambda name, r, find: None if r.get(name) is None else find(name, r[name],
                                                               r[f"{name}_identity"]))
LORAS = Codec(
    lambda loras: tuple((lora.model.identity, float(lora.weight)) for lora in loras),
    lambda name, loras: {name: [lora.record() for lora in loras]},
    lambda name, r, find: tuple(
        Lora(find(name, i["ref"], i["identity"], i.get("path")), i["weight"])
        for i in r.get(name) or ()))
EMBEDDINGS = Codec(  # ref: the word a prompt uses
    lambda items: tuple((e.ref, e.identity) for e in items),
    lambda name, items: {name: [{"name": e.ref, "identity": e.identity, "path": e.path}
                                for e in items]},
    lambda name, r, find: tuple(find(name, i["name"], i["identity"], i.get("path"))
                                for i in r.get(name) or ()))
# models (ControlNets) or input images (control images), one per ControlNet unit
MODEL_LIST = Codec(
    lambda items: tuple(m.identity for m in items),
    lambda name, items: {name: [{"ref": m.ref, "identity": m.identity} for m in items]},
    lambda name, r, find: tuple(find(name, i["ref"], i["identity"]) for i in r.get(name) or ()))
CONTROL = Codec(  # ControlNet units' settings (their models and images are fields of their own)
    lambda units: tuple(tuple(u.record().items()) for u in units),
    lambda name, units: {name: [u.record() for u in units]},
    lambda name, r, find: tuple(Control(**u) for u in r.get(name) or ()))
# a value derived from other fields, recorded but never in the id
DERIVED = Codec(lambda v: False, lambda name, v: {name: bool(v)}, _plain_restore)
# `crop` and `fill` fit inputs with A1111's arithmetic (inputs.fit); before, farm rounded the
# scaled side and centred otherwise, a row or column off for about half of the common size
# pairs. Their ids name the rule, so that images a run folder fitted the old way are not taken
# for these; `stretch` always matched and keeps its ids.
RESIZE = Codec(lambda v: {"crop": "crop/a1111", "fill": "fill/a1111"}.get(v, v),
               lambda name, v: {name: v}, _plain_restore)
# A hires pass runs A1111's schedule and covers a final size of another aspect ratio, as A1111
# does (render.py); before, farm's schedule was a step longer and such a size stretched. Its
# ids name the rule, so that images a run folder made the old way are not taken for these.
HIRES = Codec(  # hashable: a batch's jobs are compared by it
    lambda h: None if h is None else (*h.record().items(), ("rule", "a1111")),
    lambda name, h: {name: None if h is None else h.record()},
    lambda name, r, find: Hires(**r[name]) if r.get(name) else None)


# 2. AUTOMATIC1111's infotext: each field writes its own keys --------------------------------------

NO_SEPARATORS = str.maketrans("", "", ":,")  # A1111 drops them from names in its hash lists


def _quoted(items) -> str:
    """A1111's quoting of a value that holds commas: JSON string syntax."""
    return json.dumps(", ".join(items), ensure_ascii=False)


def _ti_hashes(embeddings) -> str:
    """A1111's "TI hashes": each embedding's file name (without ':' and ',') and the first 12
    hex digits of the sha256 of its whole file. Unlike a LoRA's, an embedding's A1111 hash
    includes the header, so it is not the identity (the tensor data's hash) farm keeps."""
    return _quoted(f"{Path(e.path).stem.translate(NO_SEPARATORS)}: "
                   f"{file_hash(Path(e.path))[:12]}" for e in embeddings)


def _plain(text: str) -> bool:
    try:
        return emphasis.plain(text)
    except emphasis.EmphasisError:  # never read as emphasis, so nothing to say
        return False


def _hires(job) -> dict[str, Any]:
    """A hires pass as A1111 writes it."""
    hires = job.hires
    if hires is None:
        return {}
    found: dict[str, Any] = {"Denoising strength": f"{hires.denoise:g}"}
    if hires.scale:
        found["Hires upscale"] = f"{hires.scale:g}"
    else:
        found["Hires resize"] = f"{job.width}x{job.height}"
    if hires.steps:
        found["Hires steps"] = hires.steps
    found["Hires upscaler"] = UPSCALERS[hires.upscaler]
    if hires.sampler is not None and (hires.sampler, hires.scheduler) != (job.sampler,
                                                                          job.scheduler):
        found["Hires sampler"] = samplers.sampler(hires.sampler).a1111
        found["Hires schedule type"] = samplers.schedule(hires.scheduler).a1111
    return found


def _emphasis(job) -> dict[str, Any]:
    """A1111 writes its emphasis mode only when it is not its default; farm's `none` is its
    "None" wherever the prompt has something A1111 would read as emphasis."""
    if job.emphasis == "none" and not all(
            _plain(t) for t in (emphasis.loras(job.prompt)[0], job.negative)):
        return {"Emphasis": "None"}
    return {}


RESIZE_MODES = {"stretch": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}
CONTROL_MODES = {False: "Balanced", True: "ControlNet is more important"}


def _controlnet(job) -> dict[str, Any]:
    """Each unit as sd-webui-controlnet writes it (`ControlNet 0: "Module: canny, Model: NAME
    [HASH], Weight: 1.0, ..."`), so that its infotext reader sets the units again: the model's
    name with its legacy hash (the way that extension lists models), the preprocessor run at
    the image's own size (its "Pixel Perfect")."""
    found = {}
    for i, (unit, model) in enumerate(zip(job.control, job.controlnets)):
        pairs = {"Module": PREPROCESSORS[unit.preprocessor],
                 "Model": f"{model.name} [{legacy_hash(model)}]",
                 "Weight": float(unit.weight), "Resize Mode": RESIZE_MODES[job.resize]}
        if unit.preprocessor == "canny":
            pairs.update({"Threshold A": float(unit.low), "Threshold B": float(unit.high)})
        pairs.update({"Guidance Start": float(unit.start), "Guidance End": float(unit.end),
                      "Pixel Perfect": True, "Control Mode": CONTROL_MODES[unit.guess_mode]})
        if unit.mode is not None:  # a union ControlNet's control type, by its number
            pairs["Union Control Type"] = unit.mode
        found[f"ControlNet {i}"] = json.dumps(", ".join(f"{k}: {v}" for k, v in pairs.items()))
    return found


def _shown_control(units) -> str | None:
    """ControlNet units as their export column reads: `canny 100/200 x1 0-1; none x0.5 0-0.8`."""
    if not units:
        return None
    return "; ".join(
        u["preprocessor"] + (f" {u['low']}/{u['high']}" if u.get("low") is not None else "")
        + f" x{u['weight']:g} {u['start']:g}-{u['end']:g}" + (" guess" if u["guess_mode"] else "")
        + (f" mode {u['mode']}" if u.get("mode") is not None else "")
        for u in units)


def _shown_hires(value: dict | None) -> str | None:
    """A hires pass as its export column reads: `2x latent, 10 steps, denoise 0.5`."""
    if not value:
        return None
    upscale = f"{value['scale']:g}x" if value.get("scale") else \
        f"from {value['width']}x{value['height']}"
    steps = f", {value['steps']} steps" if value.get("steps") else ""
    return f"{upscale} {value['upscaler']}{steps}, denoise {value['denoise']:g}"


# 3. the table -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobField:
    name: str  # the Job attribute, the metadata key, the export column, the filter name
    role: str  # load | batch | image (above)
    kind: type  # the Python type of its value as recorded
    column: str  # the export column's type (pyarrow and Hugging Face Value dtype)
    # its keys in AUTOMATIC1111's `parameters` (job -> {label: value}); None: not written there
    a1111: Callable[[Any], dict[str, Any]] | None = None
    # a field added after the first id version enters the id only when it is not at this
    # default, so that the ids of every existing run folder stay as they are
    id_default: Any = ALWAYS
    codec: Codec = PLAIN
    source: str | None = None  # a reference: resolved as a CHECKPOINT, VAE, REFINER or INPUT
    # a value recorded as a list (LoRAs, embeddings) as its export column and filters read it;
    # None where there is none (as every column says "absent")
    shown: Callable[[Any], str | None] | None = None

    @property
    def model(self) -> bool:
        """Recorded as ref + "<name>_identity" (a model file or an input image)."""
        return self.codec is MODEL

    def infotext(self, job) -> dict[str, Any]:
        return self.a1111(job) if self.a1111 else {}


def _pair(name: str, label: str, show: Callable[[Any], Any] = lambda v: v,
          when: Callable[[Any], bool] = lambda v: v is not None):
    """An infotext writer of one `label: value` pair, written when the field's value is set."""
    return lambda job: {label: show(getattr(job, name))} if when(getattr(job, name)) else {}


FIELDS: tuple[JobField, ...] = (  # in the order AUTOMATIC1111 writes them
    JobField("prompt", IMAGE, str, "string"),  # infotext's first line
    JobField("negative", IMAGE, str, "string"),  # its second: "Negative prompt: ..."
    JobField("steps", BATCH, int, "int64", _pair("steps", "Steps")),
    JobField("sampler", BATCH, str, "string",
             _pair("sampler", "Sampler", lambda v: samplers.sampler(v).a1111)),
    JobField("scheduler", BATCH, str, "string",
             _pair("scheduler", "Schedule type", lambda v: samplers.schedule(v).a1111)),
    JobField("cfg", BATCH, float, "float64", _pair("cfg", "CFG scale", lambda v: f"{v:g}"),
             codec=FLOAT),
    # Flux.1-dev's distilled guidance, written as Forge writes it; None on other families
    JobField("guidance", BATCH, float, "float64", _pair(
        "guidance", "Distilled CFG Scale", lambda v: f"{v:g}"), id_default=None, codec=FLOAT),
    JobField("seed", IMAGE, int, "uint64", _pair("seed", "Seed")),
    # A1111's Size is the first pass's: a hires pass says its final size or scale apart
    JobField("width", BATCH, int, "int64", lambda job: {"Size": (
        f"{job.hires.width}x{job.hires.height}" if job.hires else f"{job.width}x{job.height}")}),
    JobField("height", BATCH, int, "int64"),
    JobField("clip_skip", BATCH, int, "int64", _pair("clip_skip", "Clip skip",
                                                     when=lambda v: v > 1)),
    JobField("checkpoint", LOAD, str, "string", lambda job: {
        "Model hash": job.checkpoint.short_hash, "Model": job.checkpoint.name},
        codec=MODEL, source=CHECKPOINT),
    JobField("vae", LOAD, str, "string", lambda job: {
        "VAE hash": job.vae.short_hash, "VAE": job.vae.name} if job.vae else {},
        codec=MODEL, source=VAE),
    JobField("dtype", BATCH, str, "string"),
    # added after the first id version: in the id only when not at their defaults
    JobField("loras", BATCH, tuple, "string", _pair(
        "loras", "Lora hashes", lambda v: _quoted(f"{lora.name.translate(NO_SEPARATORS)}: "
                                                  f"{lora.short_hash}" for lora in v),
        when=bool), id_default=(), codec=LORAS,
        shown=lambda items: ", ".join(
            f"{display_name(i['ref'])}:{i['weight']:g}" for i in items) if items else None),
    JobField("emphasis", BATCH, str, "string", _emphasis, id_default="none"),
    JobField("embeddings", BATCH, tuple, "string", _pair(
        "embeddings", "TI hashes", _ti_hashes, when=bool), id_default=(), codec=EMBEDDINGS,
        shown=lambda items: ", ".join(i["name"] for i in items) if items else None),
    # an empty negative as zeros (SDXL): in the id when set, so that images a run folder made
    # from the encoding of "" (farm before it read the setting) are not taken for these
    JobField("zero_negative", BATCH, bool, "bool", id_default=False),
    # what the prompt's reading did (derived from it, so never in the id): A1111 writes "Pad
    # conds" when it padded prompt and negative to one length (its option, always on in farm);
    # a cut prompt has no A1111 key, so farm names it
    JobField("pad_conds", IMAGE, bool, "bool", _pair("pad_conds", "Pad conds", when=bool),
             id_default=False, codec=DERIVED),
    JobField("truncated", IMAGE, bool, "bool", lambda job: {
        "Prompt truncated": f"{job.max_sequence_length or 75} tokens"} if job.truncated else {},
        id_default=False, codec=DERIVED),
    # an SD3 folder saved without its T5 encoder (the pipeline gives T5's place zeros); derived
    # from the checkpoint, whose identity already tells it apart
    JobField("without_t5", BATCH, bool, "bool", id_default=False, codec=DERIVED),
    # images in: an input image (its identity the hash of its decoded pixels), the strength it
    # is denoised to and how it is fitted to the size; None on text-to-image jobs
    JobField("init", IMAGE, str, "string", _pair("init", "Init image hash",
                                                 lambda v: v.identity[:16]),
             id_default=None, codec=MODEL, source=INPUT),
    JobField("denoise", BATCH, float, "float64",
             _pair("denoise", "Denoising strength", lambda v: f"{v:g}"), id_default=None,
             codec=FLOAT),
    JobField("resize", BATCH, str, "string", id_default=None, codec=RESIZE),
    # T5 tokens a prompt takes (SD3, Flux.1); None where the checkpoint has no T5 encoder
    JobField("max_sequence_length", BATCH, int, "int64", id_default=None),
    # diffusers' step count (the first rule, so in the id as None) or A1111's
    JobField("img2img_steps", BATCH, str, "string", id_default=None, codec=Codec(
        lambda v: None if v == "diffusers" else v, lambda name, v: {name: v}, _plain_restore)),
    # inpainting: the init image's mask (its identity its decoded pixels') and A1111's
    # settings; None on jobs without a mask
    JobField("mask", IMAGE, str, "string", id_default=None, codec=MODEL, source=INPUT),
    JobField("mask_blur", BATCH, int, "int64",
             _pair("mask_blur", "Mask blur", when=lambda v: bool(v)), id_default=None),
    JobField("inpaint_full_res", BATCH, bool, "bool", lambda job: {
        "Inpaint area": "Only masked", "Masked area padding": job.inpaint_full_res_padding}
        if job.inpaint_full_res else {}, id_default=None),
    JobField("inpaint_full_res_padding", BATCH, int, "int64", id_default=None),
    JobField("inpainting_fill", BATCH, str, "string", _pair(
        "inpainting_fill", "Masked content", when=lambda v: v == "fill"), id_default=None),
    # a second pass (A1111's hires fix): {width, height (of the first pass), scale, upscaler,
    # steps, denoise, sampler, scheduler}; width and height above are the final image's
    JobField("hires", BATCH, dict, "string", _hires, id_default=None, codec=HIRES,
             shown=_shown_hires),
    # the SDXL refiner, and the share of the schedule after which it takes over
    JobField("refiner", LOAD, str, "string", _pair(
        "refiner", "Refiner", lambda v: f"{v.name} [{v.short_hash}]"), id_default=None,
        codec=MODEL, source=REFINER),
    JobField("switch_at", BATCH, float, "float64",
             _pair("switch_at", "Refiner switch at", lambda v: f"{v:g}"), id_default=None,
             codec=FLOAT),
    # ControlNet units, in one order in all three: the ControlNets (loaded with the
    # checkpoint), how each steers, and each one's image (its identity: its decoded pixels')
    JobField("controlnets", LOAD, tuple, "string", id_default=(), codec=MODEL_LIST,
             source=CONTROLNET, shown=lambda items: ", ".join(
                 display_name(i["ref"]) for i in items) if items else None),
    JobField("control", BATCH, tuple, "string", _controlnet, id_default=(), codec=CONTROL,
             shown=_shown_control),
    JobField("control_images", IMAGE, tuple, "string", id_default=(), codec=MODEL_LIST,
             source=INPUT, shown=lambda items: ", ".join(
                 Path(i["ref"]).name for i in items) if items else None),
)


BY_NAME = {f.name: f for f in FIELDS}
IDENTITY_FIELDS = tuple(f for f in FIELDS if f.role in (LOAD, BATCH))  # shared by a batch
LOAD_FIELDS = tuple(f for f in FIELDS if f.role == LOAD)  # the Loadout's members
INPUT_FIELDS = tuple(f for f in FIELDS if f.source == INPUT)  # input images


def input_images(job) -> list[Model]:
    """Every input image a job reads (its init image, its control images)."""
    found = []
    for f in INPUT_FIELDS:
        value = getattr(job, f.name)
        found += value if isinstance(value, tuple) else [value] if value is not None else []
    return found


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
