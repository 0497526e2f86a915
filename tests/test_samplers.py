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
    with pytest.raises(samplers.UnknownName, match="allowed: normal, karras"):
        samplers.schedule("nope")


def test_options_set_every_sigma_flag():
    assert samplers.options("euler", "karras") == {
        "use_karras_sigmas": True, "use_exponential_sigmas": False}
    assert samplers.options("euler", "normal") == {
        "use_karras_sigmas": False, "use_exponential_sigmas": False}
    assert samplers.options("dpmpp_2m", "normal")["algorithm_type"] == "dpmsolver++"


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
