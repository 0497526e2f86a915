"""The values a job is made of: Model (checkpoints, VAEs, LoRA and embedding files, input
images), Lora and Hires. Pure Python: the job-field table (fields.py) records and restores
them, jobs.py builds jobs of them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")  # never loaded
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(@(?P<revision>[\w./-]+))?")
CONFIG_MARK = "?config="  # "x.safetensors?config=org/name": one weights file and its architecture


def display_name(ref: str) -> str:
    """A model's or LoRA's name as infotext and columns show it: the file or folder name of
    its reference, without revision, config or extension."""
    tail = ref.split(CONFIG_MARK)[0].rstrip("/").split("/")[-1].split("@")[0]
    return tail.removesuffix(".safetensors")


@dataclass(frozen=True)
class Model:
    """A checkpoint, VAE, LoRA, embedding or input image, resolved: where its files are and
    what they are."""

    ref: str  # what the recipe said: "tiny", "org/name@rev", "models/x.safetensors"
    path: str  # its files on this machine; never part of an id (another node may differ)
    identity: str  # sha256 of the weights (hex), or "hub:<repo>@<commit>" for a pinned hub model
    config: str | None = None  # single-file weights: the diffusers folder giving the architecture
    # a hub pipeline's weight files, when not its default ones: "fp16" for half-precision jobs
    # where the repository has them (the same commit, so the same identity)
    variant: str | None = None

    @property
    def short_hash(self) -> str:
        """AUTOMATIC1111's "Model hash": the first 10 hex digits of the weights' sha256."""
        return self.identity.split("@")[-1][:10]

    @property
    def name(self) -> str:
        """A display name for infotext: the file or folder name without extension."""
        return display_name(self.ref)


@dataclass(frozen=True)
class Lora:
    """A LoRA applied to a job, at a weight (A1111's `<lora:NAME:WEIGHT>`)."""

    model: Model  # its .safetensors file; identity: sha256 of its tensor data (A1111's hash)
    weight: float

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def short_hash(self) -> str:
        """What A1111 and CivitAI show in "Lora hashes": 12 hex digits."""
        return self.model.identity[:12]

    def record(self) -> dict[str, Any]:
        return {"ref": self.model.ref, "identity": self.model.identity, "weight": self.weight,
                "path": self.model.path}

    def __str__(self) -> str:
        return f"{self.name}:{self.weight:g}"


@dataclass(frozen=True)
class Hires:
    """A second pass (AUTOMATIC1111's hires fix): the first pass renders at this width and
    height, its result is upscaled to the job's size and denoised again, img2img."""

    width: int  # of the first pass
    height: int
    scale: float | None  # as the recipe asked (None: it asked for the final size)
    upscaler: str  # a name from UPSCALERS
    steps: int  # steps the second pass takes; 0: as many as the first pass
    denoise: float  # the second pass's denoising strength
    sampler: str | None = None  # the second pass's, with its schedule; None: the job's own
    scheduler: str | None = None

    def record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclass_fields(self)}


# Upscalers of the hires pass: latent ones interpolate the latents (torch's modes, A1111's
# names); pixel ones decode, resize with Pillow, and encode again.
UPSCALERS = {
    "latent": "Latent", "latent-antialiased": "Latent (antialiased)",
    "latent-bicubic": "Latent (bicubic)",
    "latent-bicubic-antialiased": "Latent (bicubic antialiased)",
    "latent-nearest": "Latent (nearest)", "latent-nearest-exact": "Latent (nearest-exact)",
    "lanczos": "Lanczos", "nearest": "Nearest", "bicubic": "Bicubic",
}


# ControlNet preprocessors: farm's name -> the module name sd-webui-controlnet writes
PREPROCESSORS = {"none": "none", "canny": "canny"}
CANNY_THRESHOLDS = (100, 200)  # sd-webui-controlnet's defaults (low, high)


@dataclass(frozen=True)
class Control:
    """How one ControlNet unit steers a render: its preprocessor and settings, its weight and
    the share of the schedule it acts on. The ControlNet itself is a load field of the job
    (`controlnets`), its image an image field (`control_images`), in the same unit order."""

    preprocessor: str  # a name from PREPROCESSORS
    low: int | None = None  # canny's thresholds (None for `none`)
    high: int | None = None
    weight: float = 1.0  # diffusers' controlnet_conditioning_scale
    start: float = 0.0  # control_guidance_start: the share of the schedule it starts at
    end: float = 1.0  # control_guidance_end
    guess_mode: bool = False  # diffusers' guess mode (sd-webui's "ControlNet is more important")
    mode: int | None = None  # a union ControlNet's control type (xinsir's: 3 is canny); else None

    def record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclass_fields(self)}

    @property
    def settings(self) -> tuple:
        """What makes its detected map from an image (with the size and fit)."""
        return (self.preprocessor, self.low, self.high)
