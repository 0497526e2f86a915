"""Prompt expansion: templates, wildcards, alternatives, random mode, prompt files."""

import json

import pytest

from tests.helpers import planned
from farm.recipe import RecipeError
from tests.helpers import CKPT, recipe


def rows(r):
    return list(r.prompt_rows())


def test_a_template_expands_to_every_combination():
    r = recipe(prompt="a photo of a {animal} in {place}, {style}",
               vars={"animal": ["cat", "dog", "owl"], "place": ["a forest", "the city"],
                     "style": ["film", "watercolor"]})
    expanded = rows(r)
    assert len(expanded) == r.axis_lengths()["prompt"] == r.job_count == 12
    assert expanded[0].text == "a photo of a cat in a forest, film"
    assert expanded[-1].text == "a photo of a owl in the city, watercolor"
    assert len({row.text for row in expanded}) == 12
    assert dict(expanded[1].values) == {"animal": "cat", "place": "a forest",
                                        "style": "watercolor"}
    assert expanded[1].template == "a photo of a {animal} in {place}, {style}"


def test_wildcards_alternatives_and_negatives(tmp_path):
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "animal.txt").write_text("# animals\ncat\n\ndog\n")
    r = recipe(tmp_path, prompt={"text": "a __animal__, {red|green|blue} light",
                                 "negative": "no {red|green|blue}, no __animal__"})
    expanded = rows(r)
    assert len(expanded) == 6
    assert expanded[0].text == "a cat, red light"
    assert expanded[0].negative == "no red, no cat"  # one value per slot, negative included
    assert dict(expanded[5].values) == {"__animal__": "dog", "{red|green|blue}": "blue"}


def test_literal_braces_and_plain_prompts_pass_through():
    (row,) = rows(recipe(prompt="a {{curly}} cat"))
    assert row.text == "a {curly} cat" and row.template is None
    (plain,) = rows(recipe(prompt="a cat"))
    assert plain.text == "a cat" and plain.template is None and plain.context == ()


def test_random_mode_is_deterministic_per_seed():
    fields = {"prompt": "a {animal} {red|green|blue|white}",
              "vars": {"animal": [f"animal{i}" for i in range(50)]}}
    first = [r.text for r in rows(recipe(**fields, expand={"mode": "random", "count": 20,
                                                           "seed": 1}))]
    again = [r.text for r in rows(recipe(**fields, expand={"mode": "random", "count": 20,
                                                           "seed": 1}))]
    other = [r.text for r in rows(recipe(**fields, expand={"mode": "random", "count": 20,
                                                           "seed": 2}))]
    assert len(first) == 20 and first == again and first != other
    assert recipe(**fields, expand={"mode": "random", "count": 20}).job_count == 20


def test_the_same_job_by_two_routes_has_one_id():
    templated = next(planned(recipe(prompt="a {animal}", vars={"animal": ["cat"]}),
                               {"tiny": CKPT}))
    plain = next(planned(recipe(prompt="a cat"), {"tiny": CKPT}))
    assert templated.id == plain.id
    assert templated.to_dict()["template"] == "a {animal}" and "template" not in plain.to_dict()


def test_prompt_files_in_three_formats(tmp_path):
    (tmp_path / "a.txt").write_text("# comment\na cat\n\na dog\n")
    (tmp_path / "b.csv").write_text("prompt,negative,style,seed,cfg\n"
                                    "a fox,blurry,film,7,4.5\n"
                                    "an owl,,ink,,\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "a bee", "steps": 3, "mood": "calm"})
                                      + "\n")
    r = recipe(tmp_path, prompt=[{"file": "a.txt"}, {"file": "b.csv"}, {"file": "c.jsonl"}],
               seeds="0-1", cfg=[7, 8], steps=[10, 20], negative="ugly")
    jobs = list(planned(r, {"tiny": CKPT}))
    assert len(jobs) == r.job_count
    by_prompt: dict[str, list] = {}
    for job in jobs:
        by_prompt.setdefault(job.prompt, []).append(job)
    assert sorted(by_prompt) == ["a bee", "a cat", "a dog", "a fox", "an owl"]
    assert len(by_prompt["a cat"]) == 2 * 2 * 2  # seeds x cfg x steps
    fox = by_prompt["a fox"]  # seed and cfg come from its row: only the steps axis is left
    assert {(j.seed, j.cfg, j.steps) for j in fox} == {(7, 4.5, 10), (7, 4.5, 20)}
    assert fox[0].negative == "blurry" and by_prompt["an owl"][0].negative == "ugly"
    assert fox[0].to_dict()["fields"] == {"style": "film"}
    assert {j.steps for j in by_prompt["a bee"]} == {3}
    assert by_prompt["a bee"][0].to_dict()["fields"] == {"mood": "calm"}
    assert len({j.id for j in jobs}) == len(jobs)


@pytest.mark.parametrize("fields, field, words", [
    ({"prompt": "a {animal}"}, "prompt", "{animal} is not in vars"),
    ({"prompt": "a {animal}", "vars": {"animal": ["cat", "cat"]}}, "vars.animal", "twice"),
    ({"prompt": "a {animal}", "vars": {"animal": []}}, "vars.animal", "non-empty list"),
    ({"prompt": "a {red|red}"}, "prompt", "lists an alternative twice"),
    ({"prompt": "a __missing__"}, "prompt", "cannot read"),
    ({"prompt": "a { }"}, "prompt", "neither {name} nor {a|b}"),
    ({"prompt": {"file": "missing.csv"}}, "prompt", "cannot read"),
    ({"prompt": {"file": "prompts.xlsx"}}, "prompt", ".txt, .csv or .jsonl"),
    ({"prompt": "a", "expand": "shuffled"}, "expand", "combinatorial, or {mode: random"),
    ({"prompt": "a", "expand": {"mode": "random"}}, "expand", "count at least 1"),
])
def test_expansion_errors(tmp_path, fields, field, words):
    with pytest.raises(RecipeError) as error:
        recipe(tmp_path, **fields)
    assert error.value.field.startswith(field) and words in str(error.value)


def test_a_bad_prompt_file_row_is_named(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,seed\na cat,1\na dog,soon\n")
    with pytest.raises(RecipeError, match="p.csv line 3: column seed: got 'soon'; expected a "
                       "whole number"):
        recipe(tmp_path, prompt={"file": "p.csv"})
    (tmp_path / "q.csv").write_text("caption\na cat\n")
    with pytest.raises(RecipeError, match="needs a non-empty prompt"):
        recipe(tmp_path, prompt={"file": "q.csv"})


PLAN_A_MILLION = """
import resource, sys
from farm import adapters, plan
from farm.jobs import Model
from farm.recipe import parse
r = parse({"prompt": "a {a} and a {b}", "vars": {"a": [f"a{i}" for i in range(1000)],
                                                "b": [f"b{i}" for i in range(1000)]}},
          source="million")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
models = {"tiny": Model("tiny", "/nowhere", "a" * 64)}
resolved = plan.Resolved(models, {}, adapters.Reader(r.base))
count = sum(1 for job in plan.jobs(r, resolved) if job.id)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(r.job_count, count, (after - before) // 1024, "torch" in sys.modules)
"""


@pytest.mark.slow
def test_a_million_jobs_plan_in_bounded_memory():
    """Measured in a fresh process: peak resident memory grows by less than 32 MiB while a
    million jobs (with their ids) are planned; a list of them would take about a GiB."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PLAN_A_MILLION], capture_output=True,
                          text=True, check=True, timeout=300)
    planned, counted, grown_mib, torch_loaded = done.stdout.split()
    assert planned == counted == "1000000"
    assert int(grown_mib) < 32, f"planning grew the process by {grown_mib} MiB"
    assert torch_loaded == "False"


def test_zip_pairs_axes_instead_of_multiplying():
    r = recipe(prompt=["a cat", "a dog", "an owl"], seeds=[10, 20, 30], steps=[4, 8],
               zip=[["seeds", "prompt"]])
    jobs = list(planned(r, {"tiny": CKPT}))
    assert len(jobs) == r.job_count == 3 * 2
    assert {(j.prompt, j.seed) for j in jobs} == {("a cat", 10), ("a dog", 20), ("an owl", 30)}
    assert r.combined_axes()[-1] == ("prompt", "seeds")


def test_zip_of_outer_axes_keeps_the_cost_order():
    r = recipe(prompt=["a cat", "a dog"], seeds="0-1", steps=[4, 8], cfg=[5, 7],
               size=["64x64", "128x128"], zip=[["cfg", "steps"]])
    jobs = list(planned(r, {"tiny": CKPT}))
    assert len(jobs) == r.job_count == 2 * 2 * 2 * 2
    assert {(j.steps, j.cfg) for j in jobs} == {(4, 5.0), (8, 7.0)}
    sizes = [j.width for j in jobs]
    assert sizes == sorted(sizes)  # size is still the outer loop


@pytest.mark.parametrize("zipped, words", [
    ([["prompt", "seeds"]], "zipped axes must have the same length; got prompt 2, seeds 3"),
    ([["checkpoint", "prompt"]], "checkpoint, vae, refiner and control decide what"),
    ([["prompt"]], "each of 2 or more"),
    ([["prompt", "seeds"], ["seeds", "cfg"]], "in one zip group only"),
    ("prompt,seeds", "a list of axis groups"),
])
def test_zip_errors(zipped, words):
    with pytest.raises(RecipeError) as error:
        recipe(prompt=["a", "b"], seeds="0-2", zip=zipped)
    assert error.value.field == "zip" and words in str(error.value)


def test_recipe_key_order_does_not_change_the_plan():
    fields = {"prompt": ["a", "b"], "seeds": "0-1", "steps": [4, 8], "size": ["64x64", "72x72"]}
    shuffled = dict(reversed(list(fields.items())))
    a = [j.id for j in planned(recipe(**fields), {"tiny": CKPT})]
    b = [j.id for j in planned(recipe(**shuffled), {"tiny": CKPT})]
    assert a == b
