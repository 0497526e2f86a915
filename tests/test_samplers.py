import pytest

from farm import samplers


@pytest.mark.parametrize("name, canonical", [
    ("euler", "euler"), ("EULER", "euler"), ("Euler a", "euler_ancestral"),
    ("euler_ancestral", "euler_ancestral"), ("DDIM", "ddim"), ("DPM++ 2M", "dpmpp_2m"),
    ("dpmpp_2m", "dpmpp_2m"), (" uni_pc ", "uni_pc"),
])
def test_comfyui_and_a1111_names(name, canonical):
    assert samplers.sampler(name).name == canonical


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(samplers.UnknownName, match="unknown sampler 'nope'; allowed: euler, "):
        samplers.sampler("nope")
    with pytest.raises(samplers.UnknownName, match="allowed: automatic, normal, karras"):
        samplers.schedule("nope")


def test_options_set_every_sigma_flag():
    assert samplers.options("euler", "karras") == {
        "use_karras_sigmas": True, "use_exponential_sigmas": False, "use_beta_sigmas": False}
    assert samplers.options("euler", "normal") == {
        "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
    assert samplers.options("ddim", "sgm_uniform") == {"timestep_spacing": "trailing"}
    assert samplers.options("dpmpp_2m", "normal")["algorithm_type"] == "dpmsolver++"


@pytest.mark.parametrize("name, schedule, expected", [
    ("DPM++ 2M Karras", "automatic", ("dpmpp_2m", "karras")),
    ("dpm++ 2m sde exponential", "automatic", ("dpmpp_2m_sde", "exponential")),
    ("DPM++ 2M SDE Karras", "Karras", ("dpmpp_2m_sde", "karras")),
    ("LMS Karras", "automatic", ("lms", "karras")),
    ("DPM2 a Karras", "automatic", ("dpm_2_ancestral", "karras")),
    ("DPM++ 2M", "automatic", ("dpmpp_2m", "normal")),
    ("Euler a", "SGM Uniform", ("euler_ancestral", "sgm_uniform")),
    ("PLMS", "automatic", ("pndm", "normal")),
    ("UniPC", "beta", ("uni_pc", "beta")),
    ("euler", "DDIM", ("euler", "ddim_uniform")),
])
def test_a1111_names_old_and_new_style(name, schedule, expected):
    assert samplers.effective_schedule(name, schedule) == expected


def test_an_implied_schedule_cannot_be_contradicted():
    with pytest.raises(samplers.UnknownName, match="implies the 'karras' schedule"):
        samplers.effective_schedule("DPM++ 2M Karras", "exponential")


@pytest.mark.parametrize("name", ["DPM fast", "dpm_adaptive", "DPM++ 2S a Karras", "Restart"])
def test_names_without_a_diffusers_equivalent_say_so(name):
    with pytest.raises(samplers.UnknownName, match="has no equivalent among diffusers"):
        samplers.resolve_sampler(name)


def test_a_pair_diffusers_cannot_run_is_refused():
    with pytest.raises(samplers.UnknownName, match="'euler_ancestral' has no 'karras'"):
        samplers.check_pair("euler_ancestral", "karras")


@pytest.mark.parametrize("sampler", [s.name for s in samplers.SAMPLERS])
def test_every_sampler_builds_its_diffusers_scheduler(sampler, tiny):
    import json
    from pathlib import Path

    base = json.loads((Path(tiny.path) / "scheduler" / "scheduler_config.json").read_text())
    for schedule in samplers.SCHEDULES:
        try:
            samplers.check_pair(sampler, schedule.name)
        except samplers.UnknownName:
            continue
        built = samplers.make_scheduler(base, sampler, schedule.name)
        assert type(built).__name__ == samplers.sampler(sampler).scheduler_class
        for key, value in samplers.options(sampler, schedule.name).items():
            assert built.config[key] == value
