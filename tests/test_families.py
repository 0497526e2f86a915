"""Model families: SD3 rendered as diffusers' own pipeline renders it (its flow-matching
scheduler, T5 prompts), what a family does not take refused at plan, ids of the others kept."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from farm import families, models, outputs, tiny
from tests.helpers import manifest_rows, planned, recipe, rendered_images, run_farm

SD3 = dict(checkpoint="tiny-sd3", size="64x64", steps=4, negative="blurry")


@pytest.fixture(scope="module")
def sd3(farm_cache):
    return models.resolve("tiny-sd3", "checkpoint")


@pytest.fixture(scope="module")
def diffusers_sd3(sd3):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny.ensure("tiny-sd3"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def theirs(pipe, prompts: list[str], seeds: list[int]) -> np.ndarray:
    """diffusers' own call: its own scheduler, one CPU generator per image, as 8-bit pixels."""
    out = pipe(prompts, negative_prompt=["blurry"] * len(prompts), num_inference_steps=4,
               width=64, height=64, guidance_scale=7.0, max_sequence_length=256,
               generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
               output_type="np").images
    return (out * 255).round().astype(int)


def own_image(pipe, job, seed: int) -> np.ndarray:
    """diffusers' own call for a job on SD3 or Flux.1, as 8-bit pixels: its guidance as the
    family takes it, one CPU generator."""
    call = {"guidance_scale": job.guidance, "true_cfg_scale": job.cfg} \
        if job.guidance is not None else {"guidance_scale": job.cfg, "negative_prompt": [""]}
    out = pipe([job.prompt], num_inference_steps=job.steps, width=job.width, height=job.height,
               generator=[torch.Generator("cpu").manual_seed(seed)], output_type="np",
               max_sequence_length=job.max_sequence_length, **call).images[0]
    return (out * 255).round().astype(int)


def test_an_sd3_job_is_diffusers_own_pipeline_at_batch_1_and_2(sd3, worker, diffusers_sd3):
    jobs = list(planned(recipe(prompt=["a fox", "a red fox in the snow"], seeds=3, **SD3),
                        {"tiny-sd3": sd3}))
    assert [(j.sampler, j.scheduler, j.max_sequence_length) for j in jobs] == \
        [("euler", "normal", 256)] * 2
    alone = [rendered_images(worker, [job], f"alone-{i}")[0] for i, job in enumerate(jobs)]
    together = rendered_images(worker, jobs, "together")
    for i, job in enumerate(jobs):
        expected = theirs(diffusers_sd3, [job.prompt], [3])[0]
        assert np.abs(alone[i].astype(int) - expected).max() <= 1, i  # within 1/255
        assert np.abs(together[i].astype(int) - expected).max() <= 1, i
    both = theirs(diffusers_sd3, [j.prompt for j in jobs], [3, 3])  # diffusers' batch of 2
    assert np.abs(together[1].astype(int) - both[1]).max() <= 1


@pytest.mark.parametrize("extra, words", [
    ({"sampler": "dpmpp_2m_sde"}, "sampler: checkpoint 'tiny-sd3' is SD3, a flow-matching "
                                  "model, which farm renders with euler (its own scheduler; "
                                  "scheduler automatic or simple, karras, beta, exponential), "
                                  "dpmpp_2m or uni_pc_bh2"),
    ({"sampler": "Euler a"}, "got 'euler_ancestral' with 'automatic'"),
    ({"sampler": "dpmpp_2m", "scheduler": "karras"}, "got 'dpmpp_2m' with 'karras'"),
    ({"size": "72x56"}, "size: checkpoint 'tiny-sd3' is SD3, which takes sizes in multiples "
                        "of 16 (got 72x56)"),
    ({"clip_skip": 2}, "on which farm does not test clip skip"),
    ({"hires": {"scale": 2}}, "hires: checkpoint 'tiny-sd3' is SD3; farm renders hires with"),
    ({"loras": ["ink"]}, "made for a UNet (Stable Diffusion 1.x/2.x or SDXL), but checkpoint "
                         "'tiny-sd3' has a transformer"),
    ({"checkpoint": "tiny", "max_sequence_length": 77},
     "max_sequence_length: checkpoint 'tiny' is Stable Diffusion 1.x/2.x, which has no T5"),
    ({"max_sequence_length": 513}, "max_sequence_length: got 513; expected a number of T5 "
                                   "tokens from 1 to 512"),
])
def test_what_a_family_does_not_take_is_refused_at_plan(tmp_path, capsys, extra, words):
    import yaml

    tiny.write_lora("tiny", tmp_path / "loras" / "ink.safetensors", "kohya")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"prompt": "a fox", **SD3, **extra}))
    for command in ("plan", "render"):
        assert run_farm(command, f"recipe={tmp_path / 'r.yaml'}", "runtime=inline",
                        f"outputs={tmp_path / 'out'}") == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()


def test_sd3_runs_resume_verify_and_say_where_t5_cut_a_prompt(tmp_path, capsys):
    import yaml

    long = "a fox " * 20  # 100 T5 tokens here: past 8, not past 256
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "prompt": ["a fox", long], **SD3, "seeds": "0-1", "max_sequence_length": 8}))
    args = (f"recipe={tmp_path / 'r.yaml'}", "runtime=inline", f"outputs={tmp_path / 'out'}")
    assert run_farm("render", *args) == 0
    folder = tmp_path / "out" / "r"
    rows = manifest_rows(folder)
    assert {r["params"]["max_sequence_length"] for r in rows} == {8}
    # its own flow-matching scheduler ran (an SD one would start from sigma 157, not 1)
    assert {json.loads(r["scheduler"])["class"] for r in rows} == \
        {"FlowMatchEulerDiscreteScheduler"}
    cut = [r for r in rows if r["params"]["prompt"] == long]
    assert cut and all(r["params"]["truncated"] for r in cut)
    assert not any(r["params"]["truncated"] for r in rows if r["params"]["prompt"] == "a fox")
    infotext, _ = outputs.read_metadata(folder / cut[0]["path"])
    assert "Prompt truncated: 8 tokens" in infotext
    assert run_farm("render", *args) == 0
    assert "already done" in capsys.readouterr().out
    assert run_farm("verify", str(folder), "--all") == 0
    assert "4 fine, 0 not" in capsys.readouterr().out


def test_the_t5_length_enters_the_id_and_sd_ids_stay(sd3, tiny):
    short, = planned(recipe(prompt="a fox", max_sequence_length=64, **SD3), {"tiny-sd3": sd3})
    default, = planned(recipe(prompt="a fox", **SD3), {"tiny-sd3": sd3})
    assert short.id != default.id and default.max_sequence_length == 256
    assert not default.without_t5
    sd, = planned(recipe(prompt="a fox", checkpoint="tiny"), {"tiny": tiny})
    assert sd.max_sequence_length is None
    assert sd.to_dict()["max_sequence_length"] is None


@pytest.fixture(scope="module")
def diffusers_flux(farm_cache):
    from diffusers import FluxPipeline

    found = {}
    for name in ("tiny-flux", "tiny-flux-schnell"):
        found[name] = FluxPipeline.from_pretrained(tiny.ensure(name))
        found[name].set_progress_bar_config(disable=True)
    return found


@pytest.mark.parametrize("name, extra, call", [
    # Flux.1-dev's defaults: distilled guidance 3.5, true CFG off, T5 prompts of 512 tokens
    ("tiny-flux", {}, dict(guidance_scale=3.5, true_cfg_scale=1.0, max_sequence_length=512)),
    ("tiny-flux", {"guidance": 2.5, "cfg": 3, "negative": "blurry"},
     dict(guidance_scale=2.5, true_cfg_scale=3.0, negative_prompt="blurry",
          max_sequence_length=512)),
    # schnell: no guidance input, T5 prompts of 256 tokens, 4 steps
    ("tiny-flux-schnell", {"steps": None}, dict(true_cfg_scale=1.0, max_sequence_length=256)),
])
def test_a_flux_job_is_diffusers_own_pipeline_at_batch_1_and_2(worker, diffusers_flux, name,
                                                                extra, call):
    checkpoint = models.resolve(name, "checkpoint")
    fields = {"checkpoint": name, "size": "64x64", "steps": 4, "seeds": 5, **extra}
    jobs = list(planned(recipe(prompt=["a fox", "a red fox in the snow"], **fields),
                        {name: checkpoint}))
    assert {job.steps for job in jobs} == {4}
    alone = rendered_images(worker, jobs[:1], f"{name}-alone")[0]
    together = rendered_images(worker, jobs, f"{name}-together")
    if "negative_prompt" in call:
        call = {**call, "negative_prompt": [call["negative_prompt"]]}
    for i, job in enumerate(jobs):
        out = diffusers_flux[name]([job.prompt], num_inference_steps=4, width=64, height=64,
                                   generator=[torch.Generator("cpu").manual_seed(5)],
                                   output_type="np", **call).images[0]
        expected = (out * 255).round().astype(int)
        assert np.abs(together[i].astype(int) - expected).max() <= 1, i  # within 1/255
        if i == 0:
            assert np.abs(alone.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("extra, words", [
    ({"checkpoint": "tiny", "guidance": 3}, "guidance: checkpoint 'tiny' is Stable Diffusion "
                                            "1.x/2.x, which takes no distilled guidance"),
    ({"checkpoint": "tiny-flux-schnell", "guidance": 3}, "is Flux.1-schnell, which takes no "
                                                         "distilled guidance"),
    ({"negative": "blurry"}, "negative: checkpoint 'tiny-flux' is Flux.1, whose negative prompt "
                             "works only with true CFG: set cfg above 1"),
    ({"cfg": 3.5}, "cfg: checkpoint 'tiny-flux' is Flux.1, on which cfg is true CFG: it needs a "
                   "negative prompt"),
    ({"sampler": "heun"}, "is Flux.1, a flow-matching model, which farm renders with euler"),
    ({"size": "72x56"}, "is Flux.1, which takes sizes in multiples of 16 (got 72x56)"),
    ({"loras": ["ink"]}, "made for a UNet (Stable Diffusion 1.x/2.x or SDXL), but checkpoint "
                         "'tiny-flux' has a transformer"),
    ({"vae": "tiny-vae"}, "vae: checkpoint 'tiny-flux' is Flux.1, on which farm does not test "
                          "VAE swaps yet"),
])
def test_what_flux_does_not_take_is_refused_at_plan(tmp_path, capsys, extra, words):
    import yaml

    tiny.write_lora("tiny", tmp_path / "loras" / "ink.safetensors", "kohya")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "prompt": "a fox", "checkpoint": "tiny-flux", "size": "64x64", "steps": 2, **extra}))
    assert run_farm("plan", f"recipe={tmp_path / 'r.yaml'}", f"outputs={tmp_path / 'out'}") == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_flux_infotext_writes_guidance_as_forge_does_and_ids_keep(tmp_path, capsys, tiny):
    (tmp_path / "r.yaml").write_text("checkpoint: tiny-flux\nprompt: a fox\nsize: 64x64\n"
                                     "steps: 2\n")
    assert run_farm("render", f"recipe={tmp_path / 'r.yaml'}", "runtime=inline",
                    f"outputs={tmp_path / 'out'}") == 0
    row, = manifest_rows(tmp_path / "out" / "r")
    infotext, meta = outputs.read_metadata(tmp_path / "out" / "r" / row["path"])
    assert "CFG scale: 1, Distilled CFG Scale: 3.5" in infotext
    assert (meta["cfg"], meta["guidance"], meta["max_sequence_length"]) == (1.0, 3.5, 512)
    sd, = planned(recipe(prompt="a fox", checkpoint="tiny"), {"tiny": tiny})
    # unset cfg and steps are 7 and 20 there, as they always were
    assert (sd.cfg, sd.guidance, sd.steps) == (7.0, None, 20)


def test_plan_says_which_scheduler_each_checkpoint_runs(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("checkpoint: [tiny, tiny-sd3, tiny-flux]\nprompt: a fox\n"
                                     "size: 64x64\n")
    assert run_farm("plan", f"recipe={tmp_path / 'r.yaml'}", f"outputs={tmp_path / 'out'}") == 0
    out = capsys.readouterr().out
    assert "  tiny, euler + normal: EulerDiscreteScheduler (the checkpoint's config)" in out
    assert "  tiny-sd3, euler + normal: FlowMatchEulerDiscreteScheduler (the checkpoint's own, " \
           "shift 3)" in out
    assert "  tiny-flux, euler + normal: FlowMatchEulerDiscreteScheduler (the checkpoint's " \
           "own, dynamic shift)" in out


def test_an_sd3_folder_saved_without_t5_renders_as_diffusers_renders_it(tmp_path, worker):
    """SD3's usual memory saving: no T5 encoder; the pipeline gives its place zeros (of
    max_sequence_length tokens, so that length still decides the pixels)."""
    import json
    import shutil

    from diffusers import StableDiffusion3Pipeline

    folder = tmp_path / "sd3-no-t5"
    shutil.copytree(tiny.ensure("tiny-sd3"), folder)
    for part in ("text_encoder_3", "tokenizer_3"):
        shutil.rmtree(folder / part)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(text_encoder_3=[None, None], tokenizer_3=[None, None])
    (folder / "model_index.json").write_text(json.dumps(index))
    checkpoint = models.resolve(str(folder), "checkpoint")
    job, = planned(recipe(prompt="a fox", **{**SD3, "checkpoint": str(folder)}),
                   {str(folder): checkpoint})
    assert job.max_sequence_length == 256 and not job.truncated
    assert job.without_t5 and job.to_dict()["without_t5"] is True  # its record says so
    ours, = rendered_images(worker, [job], "no-t5")
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    assert np.abs(ours.astype(int) - theirs(pipe, ["a fox"], [0])[0]).max() <= 1


@pytest.mark.parametrize("name, layout", [("tiny-flux", "peft"), ("tiny-flux", "kohya"),
                                          ("tiny-sd3", "peft")])
def test_a_lora_on_a_transformer_is_diffusers_own(tmp_path, worker, name, layout):
    """LoRAs on SD3 and Flux.1 as people share them: diffusers' (PEFT) layout
    (transformer.<module>.lora_A/B and the CLIP encoder's), and on Flux.1 kohya's (Black Forest
    Labs' block names, q, k and v in one matrix): the pixels of diffusers' own pipeline with the
    LoRA loaded at that weight; weight 0 is exactly no LoRA."""
    from diffusers import DiffusionPipeline

    from farm import adapters
    from farm.jobs import Lora

    file = tiny.write_lora(name, tmp_path / f"{name}-{layout}.safetensors", layout)
    checkpoint = models.resolve(name, "checkpoint")
    fields = {"checkpoint": name, "size": "64x64", "steps": 3, "seeds": 2}
    job, = planned(recipe(prompt="a fox", **fields), {name: checkpoint})
    lora = adapters.find_lora(str(file), tmp_path)
    styled = dataclasses.replace(job, loras=(Lora(lora, 0.8),))
    off = dataclasses.replace(job, loras=(Lora(lora, 0.0),))
    plain, with_lora, zero = rendered_images(worker, [job], f"{name}-plain")[0], \
        rendered_images(worker, [styled], f"{name}-lora")[0], \
        rendered_images(worker, [off], f"{name}-zero")[0]
    assert np.array_equal(plain, zero) and np.abs(plain.astype(int) - with_lora).max() > 1
    pipe = DiffusionPipeline.from_pretrained(tiny.ensure(name))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name="style")
    pipe.set_adapters(["style"], [0.8])
    assert np.abs(with_lora.astype(int) - own_image(pipe, job, 2)).max() <= 1


def test_a_transformer_lora_on_a_unet_checkpoint_is_refused(tmp_path, capsys):
    tiny.write_lora("tiny-flux", tmp_path / "loras" / "flux.safetensors", "peft")
    (tmp_path / "r.yaml").write_text("prompt: a fox\nloras: [flux]\nsize: 64x64\n")
    assert run_farm("plan", f"recipe={tmp_path / 'r.yaml'}", f"outputs={tmp_path / 'o'}") == 2
    assert "made for a transformer model (SD3, Flux.1), but checkpoint 'tiny' has a UNet" in \
        capsys.readouterr().err


def test_plan_says_which_prompts_will_be_cut(tmp_path, capsys):
    for long, extra in (("a fox " * 20, "checkpoint: tiny-sd3\nmax_sequence_length: 8\n"),
                        ("a " * 80, "emphasis: none\n")):  # T5 cuts at 8 tokens, CLIP at 75
        (tmp_path / "r.yaml").write_text(f"prompt: ['{long}', a fox]\nsize: 64x64\n" + extra)
        assert run_farm("plan", f"recipe={tmp_path / 'r.yaml'}",
                        f"outputs={tmp_path / 'o'}") == 0
        out = capsys.readouterr().out
        assert "note: 1 prompt(s) are longer than their text encoder takes and will be cut" in out
    (tmp_path / "r.yaml").write_text("prompt: a fox\nsize: 64x64\n")
    assert run_farm("plan", f"recipe={tmp_path / 'r.yaml'}", f"outputs={tmp_path / 'o'}") == 0
    assert "note:" not in capsys.readouterr().out


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
@pytest.mark.parametrize("sampler, cls, options", [
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++",
                                                 "solver_order": 2}),
    ("uni_pc_bh2", "UniPCMultistepScheduler", {"solver_type": "bh2"}),
])
def test_flow_solvers_are_diffusers_own_on_the_flow_sigmas(worker, name, sampler, cls, options):
    """DPM++ 2M and UniPC on a flow family: diffusers' pipeline with that scheduler built from
    the checkpoint's config on its flow sigmas (its shift; Flux.1-dev's dynamic shift), alone
    and in a batch of 2."""
    import diffusers

    if name == "tiny-flux" and families.diffusers_version() < (0, 35):
        pytest.skip("FluxPipeline takes these solvers from diffusers 0.35 (refused at plan "
                    "before: test_flow_solvers_on_an_older_diffusers_are_refused_at_plan)")

    checkpoint = models.resolve(name, "checkpoint")
    jobs = list(planned(recipe(prompt=["a fox", "a red fox in the snow"], checkpoint=name,
                               size="64x64", steps=4, seeds=1, sampler=sampler),
                        {name: checkpoint}))
    together = rendered_images(worker, jobs, f"{name}-{sampler}")
    alone, = rendered_images(worker, jobs[1:], f"{name}-{sampler}-alone")
    pipe = diffusers.DiffusionPipeline.from_pretrained(tiny.ensure(name))
    pipe.set_progress_bar_config(disable=True)
    config = pipe.scheduler.config
    pipe.scheduler = getattr(diffusers, cls).from_config(
        config, use_flow_sigmas=True, flow_shift=config.shift, prediction_type="flow_prediction",
        **options)
    expected = own_image(pipe, jobs[1], 1)
    assert np.abs(alone.astype(int) - expected).max() <= 1
    assert np.abs(together[1].astype(int) - expected).max() <= 1


@pytest.mark.skipif(families.diffusers_version() < (0, 35),
                    reason="FluxPipeline takes DPM++ 2M and UniPC from diffusers 0.35")
def test_a_flow_solver_run_verifies(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("checkpoint: tiny-flux\nprompt: [a fox, an owl]\n"
                                     "sampler: [dpmpp_2m, uni_pc_bh2]\nsize: 64x64\nsteps: 3\n"
                                     "batch_size: 2\n")
    assert run_farm("render", f"recipe={tmp_path / 'r.yaml'}", "runtime=inline",
                    f"outputs={tmp_path / 'out'}") == 0
    assert run_farm("verify", str(tmp_path / "out" / "r"), "--all") == 0
    assert "4 fine, 0 not" in capsys.readouterr().out


def test_flow_solvers_on_an_older_diffusers_are_refused_at_plan(tmp_path, capsys, monkeypatch):
    """Before diffusers 0.35 FluxPipeline gives DPM++ 2M and UniPC sigmas they do not take, and
    every job would fail: the recipe is refused before anything is written."""
    monkeypatch.setattr(families, "diffusers_version", lambda: (0, 34))
    (tmp_path / "r.yaml").write_text("checkpoint: tiny-flux\nprompt: a fox\nsampler: dpmpp_2m\n"
                                     "size: 64x64\nsteps: 2\n")
    assert run_farm("render", f"recipe={tmp_path / 'r.yaml'}", "runtime=inline",
                    f"outputs={tmp_path / 'out'}") == 2
    assert "'dpmpp_2m' needs diffusers 0.35 or later on it (installed: 0.34)" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (tmp_path / "r.yaml").write_text("checkpoint: tiny-sd3\nprompt: a fox\nsampler: dpmpp_2m\n"
                                     "size: 64x64\nsteps: 2\n")  # SD3's pipeline takes them
    assert run_farm("plan", f"recipe={tmp_path / 'r.yaml'}", f"outputs={tmp_path / 'out'}") == 0


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
@pytest.mark.parametrize("schedule, flag", [("karras", "use_karras_sigmas"),
                                            ("beta", "use_beta_sigmas"),
                                            ("exponential", "use_exponential_sigmas")])
def test_euler_on_a_flow_family_takes_karras_beta_and_exponential_sigmas(worker, name, schedule,
                                                                         flag):
    """Its own flow-matching Euler with the schedule's flag: diffusers' pipeline with that
    scheduler, its sigmas flow matching's (from 1), not SD's (from about 157)."""
    import diffusers

    checkpoint = models.resolve(name, "checkpoint")
    job, = planned(recipe(prompt="a fox", checkpoint=name, size="64x64", steps=4, seeds=1,
                          scheduler=schedule), {name: checkpoint})
    ours, = rendered_images(worker, [job], f"{name}-{schedule}")
    pipe = diffusers.DiffusionPipeline.from_pretrained(tiny.ensure(name))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **{flag: True})
    assert np.abs(ours.astype(int) - own_image(pipe, job, 1)).max() <= 1
    assert float(pipe.scheduler.sigmas.max()) <= 1.0


def test_simple_is_the_flow_models_own_sigmas_as_in_comfyui(worker):
    flux = models.resolve("tiny-flux", "checkpoint")
    jobs = [job for schedule in ("automatic", "simple") for job in planned(recipe(
        prompt="a fox", checkpoint="tiny-flux", size="64x64", steps=3, scheduler=schedule),
        {"tiny-flux": flux})]
    assert [job.scheduler for job in jobs] == ["normal", "simple"]
    normal, simple = (rendered_images(worker, [job], f"simple-{i}")[0]
                      for i, job in enumerate(jobs))
    assert np.array_equal(normal, simple)
