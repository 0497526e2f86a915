"""The pipeline families farm renders, and what each takes. Pure Python.

A family is the diffusers pipeline class a checkpoint's model_index.json names. farm renders
the families its tests compare with diffusers' own pipelines; a checkpoint of any other is
refused at plan (run.check_family), never rendered with samplers that are not its own.
Flux.1-dev and -schnell share a pipeline class; schnell's transformer has no guidance input.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rules:
    name: str  # as messages and the README say it
    # flow matching (SD3, Flux): rendered with the checkpoint's own scheduler, as diffusers'
    # pipeline is; SD's sampler table would give it an SD noise schedule (wrong images)
    flow: bool = False
    multiple: int = 8  # width and height: the VAE's 8, times the transformer's 2x2 patches
    t5_tokens: int | None = None  # max_sequence_length's default (diffusers'); None: no T5
    t5_folder: str = "tokenizer_3"  # where its T5 tokenizer is
    # cfg when a recipe leaves it unset: classifier-free guidance's scale; on Flux.1, true CFG
    # (a second, negative pass), off at 1
    cfg: float = 7.0
    guidance: float | None = None  # distilled guidance's default (Flux.1-dev); None: none
    steps: int = 20  # when a recipe leaves them unset (schnell is distilled for 1 to 4)
    # prompts read as AUTOMATIC1111 reads them (emphasis, embeddings, chunks: farm's CLIP
    # encoder, encode.py); else the text goes to the pipeline as it is
    a1111_prompts: bool = True
    clip_skip: bool = True
    stages: bool = True  # img2img and the hires pass
    inpainting: bool = False  # an inpainting checkpoint (a 9-channel UNet): it needs masks


RULES: dict[str, Rules] = {
    "StableDiffusionPipeline": Rules("Stable Diffusion 1.x/2.x"),
    "StableDiffusionXLPipeline": Rules("SDXL"),
    # an SD 1.x/2.x inpainting checkpoint: its UNet also reads the mask and the masked image
    "StableDiffusionInpaintPipeline": Rules("Stable Diffusion 1.x/2.x inpainting",
                                            inpainting=True),
    "StableDiffusionXLInpaintPipeline": Rules("SDXL inpainting", inpainting=True),
    "StableDiffusion3Pipeline": Rules("SD3", flow=True, multiple=16, t5_tokens=256,
                                      a1111_prompts=False, clip_skip=False, stages=False),
    "FluxPipeline": Rules("Flux.1", flow=True, multiple=16, t5_tokens=512,
                          t5_folder="tokenizer_2", cfg=1.0, guidance=3.5,
                          a1111_prompts=False, clip_skip=False, stages=False),
    # Flux.1-schnell: the same pipeline, its transformer without the guidance input
    "FluxPipeline/schnell": Rules("Flux.1-schnell", flow=True, multiple=16, t5_tokens=256,
                                  t5_folder="tokenizer_2", cfg=1.0, steps=4,
                                  a1111_prompts=False, clip_skip=False, stages=False),
    # farm's measuring pipeline (instant.py): noise at once, prompts as plain text
    "InstantPipeline": Rules("instant (farm's measuring pipeline)", steps=1,
                             a1111_prompts=False, clip_skip=False, stages=False),
}
# A flow family's samplers and schedules: Euler is its own scheduler, on its own sigmas or
# spaced karras, beta or exponential (its config's flags); DPM++ 2M and UniPC run on the same
# flow-matching sigmas (diffusers' use_flow_sigmas, the checkpoint's shift or, on Flux.1-dev,
# its dynamic shift) but not respaced: with those flags diffusers gives them an SD noise schedule
# (a first sigma of 157, not 1). No ancestral or SDE sampler: their step noise would not come
# from the job's own generator.
# ComfyUI's "simple" (its default for Flux) is the model's own sigmas here: the same as normal.
FLOW_SAMPLERS = (("euler", "normal"), ("euler", "simple"), ("euler", "karras"), ("euler", "beta"),
                 ("euler", "exponential"), ("dpmpp_2m", "normal"), ("dpmpp_2m", "simple"),
                 ("uni_pc_bh2", "normal"), ("uni_pc_bh2", "simple"))


# samplers a family takes only from a diffusers version on: FluxPipeline hands its flow sigmas
# to DPM++ 2M and UniPC (use_flow_sigmas) from diffusers 0.35; before, every job fails
NEEDS_DIFFUSERS = {("FluxPipeline", "dpmpp_2m"): (0, 35), ("FluxPipeline", "uni_pc_bh2"): (0, 35)}


def diffusers_version() -> tuple[int, ...]:
    """The installed diffusers' version (read from its metadata: diffusers is not imported)."""
    from importlib.metadata import version

    return tuple(int(part) for part in version("diffusers").split(".")[:2] if part.isdigit())


def rules(family) -> Rules | None:
    """The rules of a checkpoint's family (models.Family), or None: not one farm renders."""
    if family.pipeline == "FluxPipeline" and not family.guidance_embeds:
        return RULES["FluxPipeline/schnell"]
    return RULES.get(family.pipeline)


def tested() -> str:
    """The families farm renders, as a message lists them."""
    return ", ".join(f"{r.name} ({cls.partition('/')[0]})" for cls, r in RULES.items())
