"""Model families: SD3 rendered as diffusers' own pipeline renders it (its flow-matching
scheduler, T5 prompts), what a family does not take refused at plan, ids of the others kept."""

import json

import numpy as np
import pytest
import torch

from farm import models, outputs, tiny
from farm.worker import Device, Worker
from tests.helpers import manifest_rows, planned, recipe, rendered_images, run_farm

SD3 = dict(checkpoint="tiny-sd3", size="64x64", steps=4, negative="blurry")


@pytest.fixture(scope="module")
def sd3(farm_cache):
    return models.resolve("tiny-sd3", "checkpoint")


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    return Worker(tmp_path_factory.mktemp("families"), device=Device("cpu", "float32"))


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
    ({"sampler": "dpmpp_2m"}, "sampler: checkpoint 'tiny-sd3' is SD3, which farm renders "
                              "with its own flow-matching Euler scheduler"),
    ({"sampler": "Euler a"}, "sampler euler, scheduler automatic (got 'euler_ancestral'"),
    ({"scheduler": "karras"}, "(got 'euler' with 'karras')"),
    ({"size": "72x56"}, "size: checkpoint 'tiny-sd3' is SD3, which takes sizes in multiples "
                        "of 16 (got 72x56)"),
    ({"clip_skip": 2}, "on which farm does not test clip skip"),
    ({"hires": {"scale": 2}}, "hires: checkpoint 'tiny-sd3' is SD3; farm renders hires with"),
    ({"loras": ["ink"]}, "is SD3, on which farm does not test LoRAs yet"),
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
    sd, = planned(recipe(prompt="a fox", checkpoint="tiny"), {"tiny": tiny})
    assert sd.max_sequence_length is None
    assert sd.to_dict()["max_sequence_length"] is None
