import itertools

import pytest

from farm.recipe import Prompt, RecipeError, parse
from tests.helpers import recipe


def test_defaults_and_scalars_become_one_value_axes():
    r = recipe()
    assert r.name == "test"
    assert r["checkpoint"] == ("tiny",) and r["vae"] == (None,)
    assert r["prompt"] == (Prompt("a cat"),)
    assert r["sampler"] == ("euler",) and r["scheduler"] == ("automatic",)
    assert r["clip_skip"] == (1,) and r["dtype"] == "auto"
    assert r["size"] == ((512, 512),) and r["steps"] == (None,)
    assert r["cfg"] == (None,) and r["guidance"] == (None,)  # unset: the model's default
    assert r.job_count == 1


def test_lists_multiply_into_the_plan():
    r = recipe(prompt=["a", {"text": "b", "negative": "c"}], seeds="0-3", steps=[10, 20],
               cfg=[5, 7.5], size=["64x64", "128x64"], sampler=["euler", "ddim"])
    assert r.axis_lengths() == {"checkpoint": 1, "vae": 1, "prompt": 2, "sampler": 2,
                                "scheduler": 1, "steps": 2, "cfg": 2, "size": 2,
                                "clip_skip": 1, "seeds": 4, "loras": 1, "emphasis": 1,
                                "init": 1, "denoise": 1, "hires": 1, "refiner": 1,
                                "guidance": 1, "control": 1, "control.image": 1}
    assert r.job_count == 2 * 2 * 2 * 2 * 2 * 4
    assert r["prompt"][1] == Prompt("b", "c")
    assert r["size"][1] == (128, 64)


@pytest.mark.parametrize("seeds, expected", [
    ("0-3", [0, 1, 2, 3]),
    (7, [7]),
    ([3, 1, "10-11"], [3, 1, 10, 11]),
    ({"start": 100, "count": 3}, [100, 101, 102]),
    ("5 - 5", [5]),
])
def test_seed_forms(seeds, expected):
    assert list(itertools.chain(*recipe(seeds=seeds)["seeds"])) == expected


def test_sampler_names_are_canonicalised():
    r = recipe(sampler=["Euler", "DPM++ 2M"], scheduler="Karras")
    assert r["sampler"] == ("euler", "dpmpp_2m")
    assert r["scheduler"] == ("karras",)


def test_a1111_names_with_a_schedule_keep_it():
    r = recipe(sampler=["DPM++ 2M Karras", "dpmpp_2m"])
    assert r["sampler"] == ("dpmpp_2m karras", "dpmpp_2m")


def test_a_million_seeds_are_a_range_not_a_list():
    r = recipe(seeds={"start": 0, "count": 10_000_000})
    assert r.job_count == 10_000_000
    assert r["seeds"] == (range(10_000_000),)


@pytest.mark.parametrize("fields, field, words", [
    ({"step": 20}, "step", "unknown field"),
    ({"steps": "20"}, "steps", "whole number"),
    ({"steps": 0}, "steps", "from 1 to"),
    ({"steps": True}, "steps", "whole number"),
    ({"cfg": "high"}, "cfg", "number from 0 to 100"),
    ({"size": "500x512"}, "size", "multiples of 8"),
    ({"size": "512"}, "size", "WxH"),
    ({"size": "0x512"}, "size", "multiples of 8"),
    ({"size": []}, "size", "at least one value"),
    ({"prompt": []}, "prompt", "at least one value"),
    ({"prompt": None}, "prompt", "at least one prompt"),
    ({"prompt": [""]}, "prompt", "non-empty string"),
    ({"prompt": [{"negative": "x"}]}, "prompt", "needs 'text'"),
    ({"prompt": [{"text": "a", "neg": "x"}]}, "prompt.neg", "only 'text' and 'negative'"),
    ({"prompt": ["a", "a"]}, "prompt", "listed twice"),
    ({"seeds": "5-2"}, "seeds", "before its start"),
    ({"seeds": "a-b"}, "seeds", "'A-B'"),
    ({"seeds": -1}, "seeds", "from 0 to"),
    ({"seeds": [1, "0-3"]}, "seeds", "listed twice"),
    ({"seeds": {"start": 0}}, "seeds", "count"),
    ({"seeds": []}, "seeds", "at least one value"),
    ({"sampler": "dpm_fast_typo"}, "sampler", "euler, euler_ancestral"),
    ({"sampler": "DPM fast"}, "sampler", "no equivalent among diffusers"),
    ({"sampler": "DPM++ 2M Karras", "scheduler": "normal"}, "scheduler", "implies the 'karras'"),
    ({"clip_skip": 0}, "clip_skip", "from 1 to 12"),
    ({"dtype": "fp16"}, "dtype", "allowed: auto, float32, float16, bfloat16"),
    ({"scheduler": "fancy"}, "scheduler", "normal, karras"),
    ({"sampler": "ddim", "scheduler": "karras"}, "scheduler", "no 'karras' schedule"),
    ({"name": "../escape"}, "name", "run folder name"),
    ({"name": "a/b"}, "name", "run folder name"),
    ({"batch_size": 0}, "batch_size", "from 1 to 256"),
    ({"checkpoint": ""}, "checkpoint", "model reference"),
    ({"checkpoint": 5}, "checkpoint", "model reference"),
    ({"negative": 3}, "negative", "string"),
    ({"format": "gif"}, "format", "allowed: png, jpeg, webp"),
    ({"format": ["png"]}, "format", "allowed: png, jpeg, webp"),
    ({"quality": 0}, "quality", "from 1 to 100"),
    ({"png_compression": 10}, "png_compression", "from 0 to 9"),
    ({"grids": "yes"}, "grids", "expected auto, or a list"),
    ({"grids": [{"x": "colour"}]}, "grids[0]", "unknown field 'colour'"),
    ({"grids": [{"x": "cfg", "where": "cfg 5"}]}, "grids[0]", "expected FIELD=VALUE"),
])
def test_each_bad_field_gets_one_clear_error(fields, field, words):
    with pytest.raises(RecipeError) as error:
        recipe(**fields)
    message = str(error.value)
    assert error.value.field.startswith(field)
    assert message.startswith("recipe ")
    assert words in message


def test_error_names_the_recipe_the_field_and_the_value():
    with pytest.raises(RecipeError) as error:
        parse({"name": "birds", "prompt": "a", "size": ["64x64", "65x64"]}, source="file")
    assert str(error.value).startswith("recipe birds: size[1]: got '65x64'; expected")


def test_recipe_module_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, farm.fields, farm.recipe, farm.plan, farm.jobs, farm.manifest, "
            "farm.samplers, "
            "farm.prompts, farm.catalog, farm.finished; "
            "print(any(m in sys.modules for m in ('torch', 'diffusers', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # the command line, dispatch, exports and grids leave Ray to cluster.py (and torch to workers)
    code = ("import sys, farm.cli, farm.run, farm.schedule, farm.export, farm.grid; "
            "print(sorted(m for m in ('torch', 'diffusers', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_single_file_model_is_a_path_with_a_config():
    r = recipe(checkpoint={"path": "models/sd15.safetensors", "config": "org/sd15"},
               vae=[None, {"path": "vae.safetensors", "config": "org/vae"}])
    assert r["checkpoint"] == ("models/sd15.safetensors?config=org/sd15",)
    assert r["vae"] == (None, "vae.safetensors?config=org/vae")
    with pytest.raises(RecipeError, match="a single-file model is {path: FILE.safetensors"):
        recipe(checkpoint={"path": "models/sd15.safetensors"})


def test_output_format_and_grids():
    r = recipe(format="jpg", quality=70, grids=[{"x": "cfg", "y": "values.animal",
                                                 "where": "seed=0"}])
    assert (r.image.kind, r.image.quality, r.image.suffix) == ("jpeg", 70, ".jpg")
    assert r["grids"][0].x == "cfg" and r["grids"][0].where == ("seed=0",)
    assert recipe(grids="auto")["grids"][0].x is None
    assert recipe().image.kind == "png" and recipe()["grids"] == ()
