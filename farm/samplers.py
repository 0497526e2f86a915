"""Sampler and schedule names -> a diffusers scheduler class and its options.

One table for each. Names are ComfyUI's (canonical, recorded in job ids) with AUTOMATIC1111's
display names accepted as aliases, case-insensitively. This module does not import diffusers
until a scheduler is actually built, so that recipes can be validated without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class UnknownName(ValueError):
    """A sampler or schedule name that is not in the table, or a pair that does not combine."""


@dataclass(frozen=True)
class Sampler:
    name: str  # ComfyUI name; canonical
    a1111: str  # AUTOMATIC1111 display name, written to the `parameters` infotext
    scheduler_class: str  # diffusers class name
    options: tuple[tuple[str, Any], ...] = ()  # fixed constructor options
    sigmas: bool = False  # accepts use_karras_sigmas / use_exponential_sigmas


@dataclass(frozen=True)
class Schedule:
    name: str  # ComfyUI name; canonical
    a1111: str  # AUTOMATIC1111 "Schedule type"
    sigma_flag: str | None = None  # the diffusers flag that selects this sigma spacing
    options: tuple[tuple[str, Any], ...] = ()


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("euler", "Euler", "EulerDiscreteScheduler", sigmas=True),
    Sampler("euler_ancestral", "Euler a", "EulerAncestralDiscreteScheduler"),
    Sampler("heun", "Heun", "HeunDiscreteScheduler", sigmas=True),
    Sampler("dpm_2", "DPM2", "KDPM2DiscreteScheduler", sigmas=True),
    Sampler("dpm_2_ancestral", "DPM2 a", "KDPM2AncestralDiscreteScheduler", sigmas=True),
    Sampler("lms", "LMS", "LMSDiscreteScheduler"),
    Sampler("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler",
            (("algorithm_type", "dpmsolver++"), ("solver_order", 2)), sigmas=True),
    Sampler("dpmpp_2m_sde", "DPM++ 2M SDE", "DPMSolverMultistepScheduler",
            (("algorithm_type", "sde-dpmsolver++"), ("solver_order", 2)), sigmas=True),
    Sampler("ddim", "DDIM", "DDIMScheduler"),
    Sampler("ddpm", "DDPM", "DDPMScheduler"),
    Sampler("uni_pc", "UniPC", "UniPCMultistepScheduler", sigmas=True),
    Sampler("uni_pc_bh2", "UniPC BH2", "UniPCMultistepScheduler", (("solver_type", "bh2"),),
            sigmas=True),
    Sampler("deis", "DEIS", "DEISMultistepScheduler", sigmas=True),
    Sampler("lcm", "LCM", "LCMScheduler"),
)

SCHEDULES: tuple[Schedule, ...] = (
    Schedule("normal", "Normal"),
    Schedule("karras", "Karras", sigma_flag="use_karras_sigmas"),
    Schedule("exponential", "Exponential", sigma_flag="use_exponential_sigmas"),
    Schedule("sgm_uniform", "SGM Uniform", options=(("timestep_spacing", "trailing"),)),
)

SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas")


def _index(items: tuple, *names: str) -> dict[str, Any]:
    return {getattr(item, n).casefold(): item for item in items for n in names}


_SAMPLERS = _index(SAMPLERS, "name", "a1111")
_SCHEDULES = _index(SCHEDULES, "name", "a1111")


def sampler(name: str) -> Sampler:
    """The sampler called `name` (ComfyUI or AUTOMATIC1111 spelling, any case)."""
    found = _SAMPLERS.get(str(name).strip().casefold())
    if found is None:
        allowed = ", ".join(s.name for s in SAMPLERS)
        raise UnknownName(f"unknown sampler {name!r}; allowed: {allowed}")
    return found


def schedule(name: str) -> Schedule:
    """The noise schedule called `name` (ComfyUI or AUTOMATIC1111 spelling, any case)."""
    found = _SCHEDULES.get(str(name).strip().casefold())
    if found is None:
        allowed = ", ".join(s.name for s in SCHEDULES)
        raise UnknownName(f"unknown scheduler {name!r}; allowed: {allowed}")
    return found


def check_pair(sampler_name: str, schedule_name: str) -> None:
    """Raise UnknownName when diffusers cannot run this sampler with this schedule."""
    s, sch = sampler(sampler_name), schedule(schedule_name)
    if sch.sigma_flag and not s.sigmas:
        takes = ", ".join(x.name for x in SCHEDULES if not x.sigma_flag)
        raise UnknownName(
            f"sampler {s.name!r} has no {sch.name!r} schedule in diffusers; use one of: {takes}"
        )


def options(sampler_name: str, schedule_name: str) -> dict[str, Any]:
    """Constructor options for the diffusers scheduler of this sampler and schedule."""
    check_pair(sampler_name, schedule_name)
    s, sch = sampler(sampler_name), schedule(schedule_name)
    opts: dict[str, Any] = dict(s.options)
    if s.sigmas:  # set every flag, so a model config's own choice cannot leak in
        opts.update({flag: flag == sch.sigma_flag for flag in SIGMA_FLAGS})
    opts.update(sch.options)
    return opts


def make_scheduler(base_config: dict, sampler_name: str, schedule_name: str):
    """A fresh diffusers scheduler built from a checkpoint's own scheduler config."""
    import diffusers

    cls = getattr(diffusers, sampler(sampler_name).scheduler_class)
    return cls.from_config(base_config, **options(sampler_name, schedule_name))
