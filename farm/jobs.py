"""Frozen values that cross module boundaries: Model, Job, Batch, Result; and the job id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

# Bump only when the meaning of the identity fields changes: it re-keys every run folder.
ID_VERSION = 1
ID_LENGTH = 24  # hex digits: 96 bits, no collision in any run folder that fits on a disk
CONFIG_MARK = "?config="  # "x.safetensors?config=org/name": one weights file and its architecture


@dataclass(frozen=True)
class Model:
    """A checkpoint or VAE, resolved: where its files are and what they are."""

    ref: str  # what the recipe said: "tiny", "org/name@rev", "models/x.safetensors"
    path: str  # its files on this machine; never part of an id (another node may differ)
    identity: str  # sha256 of the weights (hex), or "hub:<repo>@<commit>" for a pinned hub model
    config: str | None = None  # single-file weights: the diffusers folder giving the architecture

    @property
    def short_hash(self) -> str:
        """AUTOMATIC1111's "Model hash": the first 10 hex digits of the weights' sha256."""
        return self.identity.split("@")[-1][:10]

    @property
    def name(self) -> str:
        """A display name for infotext: the file or folder name without extension."""
        tail = self.ref.split(CONFIG_MARK)[0].rstrip("/").split("/")[-1].split("@")[0]
        return tail.removesuffix(".safetensors")


@dataclass(frozen=True)
class Job:
    """One image: every field here except the models' paths decides its pixels."""

    checkpoint: Model
    vae: Model | None  # None: the checkpoint's own VAE
    prompt: str
    negative: str
    seed: int
    sampler: str  # canonical name from samplers.py
    scheduler: str  # canonical schedule name from samplers.py
    steps: int
    cfg: float
    width: int
    height: int
    clip_skip: int = 1  # AUTOMATIC1111's: 1 = the text encoder's last layer
    dtype: str = "auto"  # "auto": float16 on a GPU, float32 on the CPU
    # how the prompt was made (template, chosen values, prompt-file columns): recorded with the
    # image, never part of its identity, so two routes to the same job give the same id
    context: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    def settings(self) -> dict:
        """The fields other than the models, as they go into ids and metadata alike."""
        return {
            "prompt": self.prompt,
            "negative": self.negative,
            "seed": self.seed,
            "sampler": self.sampler,
            "scheduler": self.scheduler,
            "steps": self.steps,
            "cfg": float(self.cfg),
            "width": self.width,
            "height": self.height,
            "clip_skip": self.clip_skip,
            "dtype": self.dtype,
        }

    def identity_fields(self) -> dict:
        """What the id covers: model identities, never paths or reference spellings."""
        return {
            "v": ID_VERSION,
            "checkpoint": self.checkpoint.identity,
            "vae": self.vae.identity if self.vae else None,
            **self.settings(),
        }

    @property
    def id(self) -> str:
        """sha256 of the canonical JSON of everything but prompt, negative and seed, then of
        those three, length-prefixed. The first part is shared by a whole batch group and
        hashed once (plans run to millions of jobs); the id is cached on the job."""
        cached = self.__dict__.get("_id")
        if cached is None:
            digest = _settings_digest(self.batch_key).copy()
            prompt, negative = self.prompt.encode(), self.negative.encode()
            digest.update(b"%d:%b%d:%b%d" % (len(prompt), prompt, len(negative), negative,
                                             self.seed))
            cached = self.__dict__["_id"] = digest.hexdigest()[:ID_LENGTH]
        return cached

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one pipeline call."""
        return (
            self.checkpoint.identity,
            self.vae.identity if self.vae else None,
            self.sampler,
            self.scheduler,
            self.steps,
            float(self.cfg),
            self.width,
            self.height,
            self.clip_skip,
            self.dtype,
        )

    def to_dict(self) -> dict:
        """Everything needed to render this image again (the `farm` PNG chunk, the manifest)."""
        return {
            "id": self.id,
            "checkpoint": self.checkpoint.ref,
            "checkpoint_identity": self.checkpoint.identity,
            "vae": self.vae.ref if self.vae else None,
            "vae_identity": self.vae.identity if self.vae else None,
            **self.settings(),
            **dict(self.context),
        }


@lru_cache(maxsize=4096)
def _settings_digest(batch_key: tuple):
    """A sha256 primed with the canonical JSON of everything but prompt, negative and seed."""
    ckpt, vae, sampler, scheduler, steps, cfg, width, height, clip_skip, dtype = batch_key
    fixed = {"v": ID_VERSION, "checkpoint": ckpt, "vae": vae, "sampler": sampler,
             "scheduler": scheduler, "steps": steps, "cfg": cfg, "width": width,
             "height": height, "clip_skip": clip_skip, "dtype": dtype}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, ensure_ascii=False).encode() + b"\n")


@dataclass(frozen=True)
class ImageFormat:
    """How a run folder stores its images: never part of a job's identity."""

    kind: str = "png"  # png | jpeg | webp
    quality: int = 90  # jpeg and webp, 1-100; webp at 100 is lossless
    png_compression: int = 6  # zlib level 0-9: file size against write time, same pixels

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

    A batch shorter than `pad_to` is filled up with copies of its first job (rendered, never
    written): a job's pixels depend on the shape of the call it is in, so rendering every call
    at the recipe's batch size makes a resumed or repaired image bit-identical to the original.
    """

    jobs: tuple[Job, ...]
    paths: tuple[str, ...] = field(default=())
    pad_to: int = 0  # images per pipeline call; 0: just the jobs
    image: ImageFormat = ImageFormat()  # how its files are written

    def __post_init__(self) -> None:
        if not self.jobs:
            raise ValueError("a batch needs at least one job")
        if len({job.batch_key for job in self.jobs}) != 1:
            raise ValueError("a batch mixes jobs that cannot share a pipeline call")
        if self.paths and len(self.paths) != len(self.jobs):
            raise ValueError("a batch needs one path per job")
        if self.pad_to and self.pad_to < len(self.jobs):
            raise ValueError("a batch cannot hold more jobs than its pad_to size")

    @property
    def shape(self) -> tuple[Job, ...]:
        """The jobs as the pipeline sees them: padded with copies of the first one."""
        return self.jobs + (self.jobs[0],) * max(0, self.pad_to - len(self.jobs))

    @property
    def first(self) -> Job:
        return self.jobs[0]


@dataclass(frozen=True)
class Result:
    """What a worker sends back for one job: small, never the image itself."""

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

    @property
    def ok(self) -> bool:
        return self.error is None
