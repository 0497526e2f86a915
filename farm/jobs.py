"""Frozen values that cross module boundaries: Loadout, Job, Batch, Result, WorkerSettings;
the job id. (Model,
Lora and Hires, the values a job is made of, are in values.py.)"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from functools import lru_cache
from operator import attrgetter
from typing import Any, ClassVar

from farm.fields import (ALWAYS, BY_NAME, FIELDS, IDENTITY_FIELDS, IMAGE, LOAD_FIELDS, MISSING,
                         PLAIN, Find)
from farm.values import UPSCALERS, Control, Hires, Lora, Model  # noqa: F401 (the values jobs are made of)
from farm.scorers import Score, Scorer

# Bump only when the meaning of the identity fields changes: it re-keys every run folder.
ID_VERSION = 1
ID_LENGTH = 24  # hex digits: 96 bits, no collision in any run folder that fits on a disk


@dataclass(frozen=True)
class Loadout:
    """What a worker must have loaded to render a batch: the checkpoint's pipeline, with
    another VAE swapped in when one is given, and a refiner when the jobs have one. Equal keys
    load the same weights."""

    checkpoint: Model
    vae: Model | None = None  # None: the checkpoint's own VAE
    refiner: Model | None = None  # an SDXL refiner checkpoint
    controlnets: tuple[Model, ...] = ()  # ControlNets beside the checkpoint's denoiser

    @property
    def key(self) -> tuple[str | None, ...]:
        """The identities of what is loaded: never paths, which differ between nodes."""
        return tuple(f.codec.identity(getattr(self, f.name)) for f in LOAD_FIELDS)

    def __str__(self) -> str:
        return self.checkpoint.ref + (f" + {self.vae.ref}" if self.vae else "") + (
            f" + refiner {self.refiner.ref}" if self.refiner else "") + "".join(
            f" + controlnet {c.ref}" for c in self.controlnets)


@dataclass(frozen=True)
class Job:
    """One image: every field here except the models' paths decides its pixels. The fields
    and what each is for are listed once, in farm/fields.py; this class holds their values."""

    checkpoint: Model
    vae: Model | None  # None: the checkpoint's own VAE
    prompt: str
    negative: str
    seed: int
    sampler: str  # canonical name from samplers.py
    scheduler: str  # canonical schedule name from samplers.py
    steps: int
    cfg: float  # classifier-free guidance; on Flux.1 true CFG (off at 1)
    width: int
    height: int
    clip_skip: int = 1  # AUTOMATIC1111's: 1 = the text encoder's last layer
    dtype: str = "auto"  # "auto": float16 on a GPU, float32 on the CPU
    loras: tuple[Lora, ...] = ()  # the recipe's and the prompt's <lora:...> tags, by identity
    # "a1111" where A1111's reading of the prompt (emphasis, BREAK, 75-token chunks) changes
    # what the text encoder sees; "none": the prompt is encoded as diffusers encodes it
    emphasis: str = "none"
    embeddings: tuple[Model, ...] = ()  # textual inversions its prompts use, ref = the word
    # the negative is empty and conditions with zeros (an SDXL checkpoint's own setting, as
    # A1111 does); False: "" is encoded, as farm did before (those ids and images stay)
    zero_negative: bool = False
    # what the prompt's reading did, for its infotext; read from the prompt, so never in the id:
    # the a1111 reading padded prompt and negative to one length (A1111's "Pad conds"), or
    # emphasis none cut a text past 75 tokens, or T5 one past max_sequence_length
    pad_conds: bool = False
    truncated: bool = False
    without_t5: bool = False  # its checkpoint was saved without its T5 encoder (zeros there)
    # images in: the input image (ref: its path; identity: its pixels' hash), its denoising
    # strength (0-1] and how it is fitted to width x height (farm/fields.py's RESIZE)
    init: Model | None = None
    denoise: float | None = None
    resize: str | None = None
    img2img_steps: str | None = None  # "diffusers" (int(steps x denoise)) or "a1111" (one more)
    # inpainting: the init image's mask (white repaints), A1111's blur, "only masked" area with
    # its padding, and masked content (original or fill)
    mask: Model | None = None
    mask_blur: int | None = None
    inpaint_full_res: bool | None = None
    inpaint_full_res_padding: int | None = None
    inpainting_fill: str | None = None
    max_sequence_length: int | None = None  # T5 tokens a prompt takes (SD3, Flux); None: no T5
    guidance: float | None = None  # Flux.1-dev's distilled guidance; None on other families
    hires: Hires | None = None  # a second pass; width and height are then its final size
    refiner: Model | None = None  # an SDXL refiner taking over at switch_at of the schedule
    switch_at: float | None = None
    # ControlNet units: each one's ControlNet, how it steers and its image (in unit order);
    # images that differ are rendered in one call, each with its own
    controlnets: tuple[Model, ...] = ()
    control: tuple[Control, ...] = ()
    control_images: tuple[Model, ...] = ()
    # how the prompt was made (template, chosen values, prompt-file columns): recorded with the
    # image, never part of its identity, so two routes to the same job give the same id
    context: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    @property
    def loadout(self) -> Loadout:
        return Loadout(**{f.name: getattr(self, f.name) for f in LOAD_FIELDS})

    def identity_value(self, name: str) -> Any:
        """A field's value as the id sees it: a model by its identity, cfg as a float."""
        return BY_NAME[name].codec.identity(getattr(self, name))

    @property
    def id(self) -> str:
        """sha256 of the canonical JSON of the batch fields (models by identity), then of the
        image fields: prompt, negative and seed length-prefixed, then any later image field
        not at its default. The first part is shared by a whole batch group and hashed once
        (plans run to millions of jobs); the id is cached on the job."""
        cached = self.__dict__.get("_id")
        if cached is None:
            head, later = self._id_texts()
            digest = _settings_digest(self.batch_key).copy()
            digest.update(b"%b%d%b" % (head, self.seed, later))
            cached = self.__dict__["_id"] = digest.hexdigest()[:ID_LENGTH]
        return cached

    def _id_texts(self) -> tuple[bytes, bytes]:
        """The id's text around the seed: prompt and negative before it, the later image fields
        after it. Cached on the job, and kept by reseeded()."""
        texts = self.__dict__.get("_texts")
        if texts is None:
            prompt, negative = self.prompt.encode(), self.negative.encode()
            later = b"".join(b"\n" + json.dumps([name, value]).encode()
                             for name, value in self._later_identity())
            texts = self.__dict__["_texts"] = (
                b"%d:%b%d:%b" % (len(prompt), prompt, len(negative), negative), later)
        return texts

    def _later_identity(self) -> Iterator[tuple[str, Any]]:
        """The later image fields not at their default, as the id sees them."""
        for name, identity, default in _LATER_IMAGE_IDENTITY:
            value = getattr(self, name)
            if identity is not None:
                value = identity(value)
            if value != default:
                yield name, value

    def reseeded(self, seed: int) -> Job:
        """This job with another seed, made without building its fields again: its batch key
        and the rest of its id's text are kept (a plan's jobs mostly differ by seed alone)."""
        self._id_texts()
        self.batch_key  # noqa: B018 (computed once, for every job made from this one)
        job = object.__new__(Job)
        values = job.__dict__
        values.update(self.__dict__)
        values["seed"] = seed
        values.pop("_id", None)
        return job

    @property
    def batch_key(self) -> tuple[tuple[str, Any], ...]:
        """(name, value) of every load and batch field that enters the id: jobs with equal keys
        can share one pipeline call. Cached on the job."""
        cached = self.__dict__.get("_batch_key")
        if cached is None:
            found = []
            for name, identity, default in _BATCH_IDENTITY:
                value = getattr(self, name)
                if identity is not None:
                    value = identity(value)
                if default is ALWAYS or value != default:
                    found.append((name, value))
            cached = self.__dict__["_batch_key"] = tuple(found)
        return cached

    def to_dict(self) -> dict:
        """Everything needed to render this image again (the `farm` PNG chunk, the manifest):
        every field, models as reference and identity, then how the prompt was made."""
        record: dict[str, Any] = {"id": self.id}
        for name, codec in _RECORDED:
            if codec is PLAIN:  # most fields: the value as it is (no dict made per field)
                record[name] = getattr(self, name)
            else:
                record.update(codec.record(name, getattr(self, name)))
        record.update(self.context)
        return record

    @staticmethod
    def from_dict(record: dict, model: Find) -> Job:
        """The job a to_dict() record describes; `model(field, ref, identity)` finds each model
        here (a LoRA's or embedding's with a fourth argument, the file it was read from). A
        field an older record lacks takes its default."""
        values = {f.name: f.codec.restore(f.name, record, model) for f in FIELDS}
        values = {name: value for name, value in values.items() if value is not MISSING}
        values["context"] = tuple((k, record[k]) for k in CONTEXT_KEYS if k in record)
        return Job(**values)


CONTEXT_KEYS = ("template", "values", "fields", "caption")  # how a prompt was made, its caption
_RECORDED = tuple((f.name, f.codec) for f in FIELDS)  # what to_dict writes, in the table's order
LATER_IMAGE_FIELDS = tuple(f for f in FIELDS if f.role == IMAGE and f.id_default is not ALWAYS)
def share_batch_key(job: Job, previous: Job) -> None:
    """Give `job` the batch key of `previous` when their load and batch fields are equal (the
    plan builds consecutive jobs of the very same objects, so the comparison is cheap):
    computing the key is most of an id's cost, and a plan has millions of ids."""
    if _batch_values(job) == _batch_values(previous):
        job.__dict__["_batch_key"] = previous.batch_key


_LATER_IMAGE_IDENTITY = tuple((f.name, None if f.codec is PLAIN else f.codec.identity,
                               f.id_default) for f in LATER_IMAGE_FIELDS)
_BATCH_IDENTITY = tuple((f.name, None if f.codec is PLAIN else f.codec.identity, f.id_default)
                        for f in IDENTITY_FIELDS)  # (the plain identity is the value itself)
_batch_values = attrgetter(*(f.name for f in IDENTITY_FIELDS))


@lru_cache(maxsize=4096)
def _settings_digest(batch_key: tuple[tuple[str, Any], ...]):
    """A sha256 primed with the canonical JSON of the load and batch fields."""
    fixed = {"v": ID_VERSION, **dict(batch_key)}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, ensure_ascii=False).encode() + b"\n")


def _check_table() -> None:
    """The Job's attributes and the field table must name the same fields, and the Loadout's
    the load fields."""
    names = [f.name for f in dataclass_fields(Job) if f.name != "context"]
    if sorted(names) != sorted(BY_NAME):
        raise TypeError(f"Job fields {names} differ from farm/fields.py's {list(BY_NAME)}")
    loaded = [f.name for f in dataclass_fields(Loadout)]
    if loaded != [f.name for f in LOAD_FIELDS]:
        raise TypeError(f"Loadout fields {loaded} differ from the load fields of farm/fields.py")


_check_table()


@dataclass(frozen=True)
class ImageFormat:
    """How a run folder stores its images: never part of a job's identity."""

    kind: str = "png"  # png | jpeg | webp
    quality: int = 90  # jpeg and webp, 1-100; webp at 100 is lossless
    png_compression: int = 6  # zlib level 0-9: file size against write time, same pixels
    detected_maps: bool = False  # each ControlNet unit's detected map saved beside its image

    SUFFIXES: ClassVar[dict[str, str]] = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}

    @property
    def suffix(self) -> str:
        return self.SUFFIXES[self.kind]

    @property
    def lossless(self) -> bool:
        """Whether the file decodes to exactly the pixels that were rendered."""
        return self.kind == "png" or (self.kind == "webp" and self.quality == 100)


@dataclass(frozen=True)
class Batch:
    """Jobs rendered by one pipeline call, each with the run-relative path it is written to.

    A job's pixels depend on the shape of the call it is in and on its position there, so
    every call is padded to the recipe's batch size (`pad_to`) with copies of the first job
    (rendered, never written), and a job rendered again (resume, repair, verify, replay) takes
    the position it had the first time (`positions`), with padding before and after it.
    """

    jobs: tuple[Job, ...]
    paths: tuple[str, ...] = field(default=())
    pad_to: int = 0  # images per pipeline call; 0: just the jobs
    image: ImageFormat = ImageFormat()  # how its files are written
    positions: tuple[int, ...] = ()  # each job's index in the call; default 0, 1, 2, ...
    # the input images' files, by identity, for a worker that cannot read them where they are
    # (another node): (identity, bytes)
    inputs: tuple[tuple[str, bytes], ...] = ()
    scorers: tuple[Scorer, ...] = ()  # what scores its images once rendered (a recipe's score:)

    def __post_init__(self) -> None:
        if not self.jobs:
            raise ValueError("a batch needs at least one job")
        if len({job.batch_key for job in self.jobs}) != 1:
            raise ValueError("a batch mixes jobs that cannot share a pipeline call")
        if self.paths and len(self.paths) != len(self.jobs):
            raise ValueError("a batch needs one path per job")
        if self.positions and (len(self.positions) != len(self.jobs)
                               or len(set(self.positions)) != len(self.positions)
                               or min(self.positions) < 0):
            raise ValueError("a batch needs one distinct position per job")
        if self.pad_to and self.pad_to < max(self.slots) + 1:
            raise ValueError("a batch cannot hold more jobs than its pad_to size")

    @property
    def slots(self) -> tuple[int, ...]:
        """Each job's index in the pipeline call."""
        return self.positions or tuple(range(len(self.jobs)))

    @property
    def shape(self) -> tuple[Job, ...]:
        """The jobs as the pipeline sees them, each at its slot, the rest copies of the first."""
        call = [self.jobs[0]] * max(self.pad_to, max(self.slots) + 1)
        for job, slot in zip(self.jobs, self.slots):
            call[slot] = job
        return tuple(call)

    @property
    def first(self) -> Job:
        return self.jobs[0]


@dataclass(frozen=True)
class Slot:
    """Where a job sat in its pipeline call: the same call shape gives the same pixels."""

    batch_size: int = 1
    position: int = 0

    @staticmethod
    def of(record: dict) -> Slot:
        """From a `farm` JSON or a manifest row (older images say nothing of their position:
        they were rendered at 0, or alone)."""
        size = record.get("batch_size") or 1
        position = record.get("position") or 0
        return Slot(size, position if position < size else 0)

    def batch(self, job: Job, path: str, image: ImageFormat = ImageFormat()) -> Batch:
        """A batch that renders `job` alone, at this slot, padded before and after."""
        return Batch((job,), (path,), pad_to=self.batch_size, image=image,
                     positions=(self.position,))


@dataclass(frozen=True)
class Result:
    """What a worker sends back for one job: small, but for the image's files when the worker
    cannot see the run folder (runtime.outputs)."""

    job_id: str
    path: str  # relative to the run folder
    pixel_hash: str | None  # sha256 of the decoded RGB pixels; None when it failed
    seconds: float  # this image's share of its batch's wall time
    batch_size: int
    position: int  # index within its batch
    worker: str
    error: str | None = None
    scheduler: str | None = None  # JSON: the diffusers scheduler class and its full config
    provenance: str | None = None  # JSON: device, dtype and library versions that made it
    loads: tuple[tuple[str, float], ...] = ()  # (model, seconds) its batch loaded first
    stop: str | None = None  # why the whole run must stop (a full or read-only disk)
    # the image's files, encoded, when the worker cannot see the run folder: (suffix, bytes)
    # in the order the driver writes them (outputs.write_files)
    files: tuple[tuple[str, bytes], ...] = ()
    oom: bool = False  # its call ran out of memory: the dispatcher tries it in smaller calls
    scores: tuple[Score, ...] = ()  # its pixels' scores, when the recipe asks (score:)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class WorkerSettings:
    """What a Worker is built with (Worker.built): the part of the Runtime a worker needs, one
    value that travels to Ray actors."""

    root: str | None  # the run folder, where this worker writes; None: the driver writes
    name: str
    device: str | None  # "cpu", "cuda", "cuda:1"; None: a GPU when there is one
    max_pipelines: int = 2
    threads: int | None = None  # torch threads on the CPU
    encode_threads: int | None = None
    compile: bool = False
    fuse_qkv: bool = False
