"""Sampler and schedule names -> a diffusers scheduler class and its options.

One table of samplers and one of schedules. Canonical names are ComfyUI's (they go into job
ids); AUTOMATIC1111's display names are accepted too, old style included ("DPM++ 2M Karras" is
the dpmpp_2m sampler with the karras schedule), in any case. The mapping follows diffusers'
scheduler overview. This module imports diffusers only to build a scheduler, so that recipes
can be validated without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class UnknownName(ValueError):
    """A sampler or schedule name that is not in the tables, or a pair that does not combine."""


@dataclass(frozen=True)
class Sampler:
    name: str  # ComfyUI name; canonical
    a1111: str  # AUTOMATIC1111 display name, written to the `parameters` infotext
    scheduler_class: str  # diffusers class name
    options: tuple[tuple[str, Any], ...] = ()  # fixed constructor options
    sigmas: bool = True  # takes use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas
    spacing: bool = True  # takes timestep_spacing


@dataclass(frozen=True)
class Schedule:
    name: str  # ComfyUI name; canonical
    a1111: str  # AUTOMATIC1111 "Schedule type"
    sigma_flag: str | None = None  # the diffusers flag that selects this sigma spacing
    spacing: str | None = None  # the diffusers timestep_spacing it asks for


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("euler", "Euler", "EulerDiscreteScheduler"),
    Sampler("euler_ancestral", "Euler a", "EulerAncestralDiscreteScheduler", sigmas=False),
    Sampler("heun", "Heun", "HeunDiscreteScheduler"),
    Sampler("dpm_2", "DPM2", "KDPM2DiscreteScheduler"),
    Sampler("dpm_2_ancestral", "DPM2 a", "KDPM2AncestralDiscreteScheduler"),
    Sampler("lms", "LMS", "LMSDiscreteScheduler"),
    Sampler("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler",
            (("algorithm_type", "dpmsolver++"), ("solver_order", 2))),
    Sampler("dpmpp_2m_sde", "DPM++ 2M SDE", "DPMSolverMultistepScheduler",
            (("algorithm_type", "sde-dpmsolver++"), ("solver_order", 2))),
    Sampler("dpmpp_sde", "DPM++ SDE", "DPMSolverSinglestepScheduler", spacing=False),
    Sampler("ddim", "DDIM", "DDIMScheduler", sigmas=False),
    Sampler("ddpm", "DDPM", "DDPMScheduler", sigmas=False),
    Sampler("pndm", "PLMS", "PNDMScheduler", (("skip_prk_steps", True),), sigmas=False),
    # bh1 divides by the last sigma: with diffusers' default final sigma of zero it gives NaN
    Sampler("uni_pc", "UniPC", "UniPCMultistepScheduler",
            (("solver_type", "bh1"), ("final_sigmas_type", "sigma_min"))),
    Sampler("uni_pc_bh2", "UniPC BH2", "UniPCMultistepScheduler", (("solver_type", "bh2"),)),
    Sampler("deis", "DEIS", "DEISMultistepScheduler"),
    Sampler("lcm", "LCM", "LCMScheduler", sigmas=False),
)

SCHEDULES: tuple[Schedule, ...] = (
    Schedule("normal", "Normal"),  # the checkpoint's own scheduler config
    Schedule("karras", "Karras", sigma_flag="use_karras_sigmas"),
    Schedule("exponential", "Exponential", sigma_flag="use_exponential_sigmas"),
    Schedule("beta", "Beta", sigma_flag="use_beta_sigmas"),
    Schedule("sgm_uniform", "SGM Uniform", spacing="trailing"),
    Schedule("simple", "Simple", spacing="trailing"),
    Schedule("ddim_uniform", "DDIM", spacing="leading"),
)

AUTOMATIC = "automatic"  # the schedule an old-style A1111 name implies, else normal
SIGMA_FLAGS = tuple(s.sigma_flag for s in SCHEDULES if s.sigma_flag)

# Names users know that diffusers has no scheduler for: refused with a reason, not "unknown".
NO_EQUIVALENT = {
    name.casefold(): name for name in (
        "DPM fast", "dpm_fast", "DPM adaptive", "dpm_adaptive", "DPM++ 2S a",
        "dpmpp_2s_ancestral", "DPM++ 3M SDE", "dpmpp_3m_sde", "Restart", "ipndm", "ipndm_v",
        "heunpp2", "euler_cfg_pp", "euler_ancestral_cfg_pp", "res_multistep", "er_sde",
        "seeds_2", "seeds_3", "sa_solver", "gradient_estimation", "lcm_upscale",
    )
}


def _index(items: tuple, *names: str) -> dict[str, Any]:
    return {getattr(item, n).casefold(): item for item in items for n in names}


_SAMPLERS = _index(SAMPLERS, "name", "a1111")
_SCHEDULES = _index(SCHEDULES, "name", "a1111")


def resolve_sampler(name: str) -> tuple[Sampler, str | None]:
    """The sampler called `name`, and the schedule its name implies (old A1111 style) if any."""
    key = str(name).strip().casefold()
    if key in _SAMPLERS:
        return _SAMPLERS[key], None
    base, _, suffix = key.rpartition(" ")
    if base in _SAMPLERS and suffix in ("karras", "exponential"):
        return _SAMPLERS[base], suffix
    if key in NO_EQUIVALENT or base in NO_EQUIVALENT:
        raise UnknownName(f"sampler {name!r} has no equivalent among diffusers' schedulers, so "
                          "farm cannot render it; close ones: dpmpp_2m, dpmpp_2m_sde, "
                          "euler_ancestral")
    allowed = ", ".join(s.name for s in SAMPLERS)
    raise UnknownName(f"unknown sampler {name!r}; allowed: {allowed} (or their "
                      "AUTOMATIC1111 names, e.g. 'DPM++ 2M Karras')")


def sampler(name: str) -> Sampler:
    """The sampler called `name` (ComfyUI or AUTOMATIC1111 spelling, any case)."""
    return resolve_sampler(name)[0]


def schedule(name: str) -> Schedule:
    """The noise schedule called `name` (ComfyUI or AUTOMATIC1111 spelling, any case)."""
    found = _SCHEDULES.get(str(name).strip().casefold())
    if found is None:
        allowed = ", ".join([AUTOMATIC, *(s.name for s in SCHEDULES)])
        raise UnknownName(f"unknown scheduler {name!r}; allowed: {allowed}")
    return found


def effective_schedule(sampler_name: str, schedule_name: str) -> tuple[str, str]:
    """(canonical sampler, canonical schedule) for a recipe's sampler and scheduler values.

    `automatic` takes the schedule an old-style name implies ("DPM++ 2M Karras"), else normal;
    an explicit schedule that contradicts the name is refused.
    """
    found, implied = resolve_sampler(sampler_name)
    if str(schedule_name).strip().casefold() == AUTOMATIC:
        chosen = implied or "normal"
    else:
        chosen = schedule(schedule_name).name
        if implied and implied != chosen:
            raise UnknownName(f"sampler {sampler_name!r} implies the {implied!r} schedule, "
                              f"but scheduler is {schedule_name!r}; use {found.a1111!r} or "
                              f"scheduler={AUTOMATIC}")
    check_pair(found.name, chosen)
    return found.name, chosen


def check_pair(sampler_name: str, schedule_name: str) -> None:
    """Raise UnknownName when diffusers cannot run this sampler with this schedule."""
    s, sch = sampler(sampler_name), schedule(schedule_name)
    if (sch.sigma_flag and not s.sigmas) or (sch.spacing and not s.spacing):
        takes = ", ".join(x.name for x in SCHEDULES
                          if not (x.sigma_flag and not s.sigmas or x.spacing and not s.spacing))
        raise UnknownName(f"sampler {s.name!r} has no {sch.name!r} schedule in diffusers "
                          f"({s.scheduler_class}); use one of: {takes}")


def options(sampler_name: str, schedule_name: str) -> dict[str, Any]:
    """Constructor options for the diffusers scheduler of this sampler and schedule."""
    check_pair(sampler_name, schedule_name)
    s, sch = sampler(sampler_name), schedule(schedule_name)
    opts: dict[str, Any] = dict(s.options)
    if s.sigmas:  # set every flag, so that a model config's own choice cannot leak in
        opts.update({flag: flag == sch.sigma_flag for flag in SIGMA_FLAGS})
    if sch.spacing:
        opts["timestep_spacing"] = sch.spacing
    return opts


def described(base_config: dict, sampler_name: str, schedule_name: str) -> str:
    """The scheduler make_scheduler builds, as `farm plan` shows it: its class and what it
    takes besides the checkpoint's own config (a flow-matching one: its shift)."""
    if str(base_config.get("_class_name", "")).startswith("FlowMatch"):
        shift = "dynamic shift" if base_config.get("use_dynamic_shifting") else \
            f"shift {base_config.get('shift', 1.0):g}"
        if sampler(sampler_name).name != "euler":
            return f"{sampler(sampler_name).scheduler_class} (on the checkpoint's flow " \
                   f"sigmas, {shift})"
        flag = schedule(schedule_name).sigma_flag
        return f"{base_config['_class_name']} (the checkpoint's own, {shift}" + (
            f", {flag}=True)" if flag else ")")
    given = ", ".join(f"{k}={v}" for k, v in options(sampler_name, schedule_name).items() if v)
    return f"{sampler(sampler_name).scheduler_class} (the checkpoint's config" + (
        f"; {given})" if given else ")")


def flow_options(base_config: dict, sampler_name: str) -> dict[str, Any]:
    """A solver's options on a flow-matching checkpoint's sigmas: its own shift (or dynamic
    shift, which the pipeline gives as mu), flow prediction."""
    return {**dict(sampler(sampler_name).options), "use_flow_sigmas": True,
            "flow_shift": base_config.get("shift", 1.0), "prediction_type": "flow_prediction"}


def make_scheduler(base_config: dict, sampler_name: str, schedule_name: str):
    """A fresh diffusers scheduler built from a checkpoint's own scheduler config. On a
    flow-matching checkpoint (SD3, Flux.1; the samplers checked at plan) euler is its own
    scheduler as it is, so that its pixels are its diffusers pipeline's; dpmpp_2m and
    uni_pc_bh2 run on its flow sigmas (flow_options)."""
    import diffusers

    cls = getattr(diffusers, sampler(sampler_name).scheduler_class)
    if str(base_config.get("_class_name", "")).startswith("FlowMatch"):
        if sampler(sampler_name).name == "euler":  # its own, its sigmas respaced on request
            flag = schedule(schedule_name).sigma_flag  # (simple, as normal: its own sigmas)
            return getattr(diffusers, base_config["_class_name"]).from_config(
                base_config, **({flag: True} if flag else {}))
        return cls.from_config(base_config, **flow_options(base_config, sampler_name))
    return cls.from_config(base_config, **options(sampler_name, schedule_name))
