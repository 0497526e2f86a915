"""Recipes composed the Hydra way: config groups, defaults lists, overrides, the error cases.
Every test composes real files in its own temporary working directory."""

from __future__ import annotations

import pytest
import yaml

from farm.compose import BadInput, compose, examples
from tests.helpers import recipe_folder, run_farm


def write(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture
def team(tmp_path, monkeypatch):
    """A team's working directory: recipes/ and conf/ with three groups."""
    recipe_folder(tmp_path, monkeypatch, foxes=(
        "defaults: [{models: small}, {preset: draft}, _self_]\n"
        "name: foxes-${size}\nprompt: a red fox\nseeds: 0-1\n"))
    write(tmp_path, {
        "conf/models/small.yaml": "checkpoint: tiny\nsize: 64x64\nclip_skip: 2\n",
        "conf/models/wide.yaml": "checkpoint: tiny\nsize: 128x64\n",
        "conf/preset/draft.yaml": "steps: 2\ncfg: 5\n",
        "conf/preset/final.yaml": "steps: 6\n",
        "conf/prompts/owls.yaml": "prompt: 'an owl at {time}'\nvars: {time: [dusk, dawn]}\n"
                                  "negative: blurry\n",
    })
    return tmp_path


def test_groups_merge_at_the_top_level_in_order(team):
    s = compose(["recipe=foxes"])
    r = s.recipe
    assert (r.name, r["size"], r["clip_skip"], r["steps"], r["cfg"]) == (
        "foxes-64x64", ((64, 64),), (2,), (2,), (5.0,))
    record = yaml.safe_load(s.resolved)
    assert record["choices"] == {"models": "small", "preset": "draft", "runtime": "ray"}


def test_the_recipe_wins_after_self_and_groups_win_before_it(team):
    write(team, {"recipes/mine.yaml": "defaults: [{preset: draft}, _self_]\nprompt: a\n"
                                      "steps: 9\n",
                 "recipes/theirs.yaml": "defaults: [_self_, {preset: draft}]\nprompt: a\n"
                                        "steps: 9\n"})
    assert compose(["recipe=mine"]).recipe["steps"] == (9,)
    assert compose(["recipe=theirs"]).recipe["steps"] == (2,)


def test_group_choices_from_the_command_line(team):
    r = compose(["recipe=foxes", "preset=final", "models=wide"]).recipe
    assert (r["steps"], r["size"], r.name) == ((6,), ((128, 64),), "foxes-128x64")
    r = compose(["recipe=foxes", "+prompts=owls", "steps=3"]).recipe
    assert r["negative"] == "blurry" and r["steps"] == (3,)
    # Hydra appends a group added from the command line after _self_: it wins
    assert r["prompt"][0].text == "an owl at {time}"


def test_a_group_named_like_a_field_is_refused(team):
    """`quality` is JPEG quality: a conf/quality/ folder would make quality=VALUE mean two
    things, so it is refused (farm's presets are the group `preset`); the field is a field."""
    s = compose(["recipe=foxes", "format=jpeg", "quality=95"])
    assert s.recipe.image.quality == 95 and s.recipe["steps"] == (2,)
    write(team, {"conf/quality/final.yaml": "steps: 6\n"})
    with pytest.raises(BadInput, match="'quality' is a recipe field"):
        compose(["recipe=foxes"])


def test_a_command_line_field_wins_over_an_added_group(team):
    write(team, {"conf/prompts/print.yaml": "steps: 7\nquality: 50\n"})
    s = compose(["recipe=foxes", "+prompts=print", "quality=95"])
    assert s.recipe.image.quality == 95 and s.recipe["steps"] == (7,)


def test_every_runtime_option_takes_every_runtime_setting(team):
    for option in ("local", "cluster", "inline", "ray"):
        s = compose(["recipe=foxes", f"runtime={option}", "runtime.threads=2",
                     "runtime.max_attempts=5"])
        assert (s.runtime.threads, s.runtime.max_attempts) == (2, 5), option
    assert compose(["recipe=foxes", "runtime=local"]).runtime.kind == "inline"


def test_a_group_files_own_self_position_holds(team):
    """Hydra: what comes after _self_ in a defaults list wins over the file's own fields."""
    write(team, {"conf/preset/first.yaml": "defaults: [_self_, {models: wide}]\nsize: 32x32\n",
                 "conf/preset/last.yaml": "defaults: [{models: wide}]\nsize: 32x32\n",
                 "recipes/a.yaml": "defaults: [{preset: first}]\nprompt: a\n",
                 "recipes/b.yaml": "defaults: [{preset: last}]\nprompt: a\n"})
    assert compose(["recipe=a"]).recipe["size"] == ((128, 64),)
    assert compose(["recipe=b"]).recipe["size"] == ((32, 32),)


def test_dropping_a_group_and_nested_overrides(team):
    assert compose(["recipe=foxes", "~preset"]).recipe["steps"] == (None,)  # the default again
    write(team, {"recipes/hi.yaml": "prompt: a\nhires: {scale: 2}\nvars: {animal: [cat]}\n",
                 "recipes/xl.yaml": "prompt: a\ncheckpoint: tiny-xl\n"
                                    "refiner: {checkpoint: tiny-xl-refiner}\n"})
    # a key the recipe gives is set, one it does not is added with +, as Hydra does it
    r = compose(["recipe=hi", "hires.scale=3", "+hires.steps=5", "vars.animal=[dog,owl]"]).recipe
    assert (r["hires"][0].scale, r["hires"][0].steps) == (3, 5)
    r = compose(["recipe=xl", "+refiner.switch_at=0.7"]).recipe
    assert r["refiner"] == (("tiny-xl-refiner", 0.7),)
    assert compose(["recipe=hi", "prompt='a {animal}'", "vars.animal=[dog,owl]"]
                   ).recipe.job_count == 2


def test_a_group_file_may_pull_in_other_groups(team):
    write(team, {"conf/preset/print.yaml": "defaults: [{models: wide}]\nsteps: 7\n",
                 "recipes/poster.yaml": "defaults: [{preset: print}]\nprompt: a\n"})
    r = compose(["recipe=poster"]).recipe
    assert (r["steps"], r["size"]) == ((7,), ((128, 64),))


def test_config_dir_comes_first_then_conf_then_farms_own(team, tmp_path_factory):
    other = tmp_path_factory.mktemp("shared")
    write(other, {"preset/draft.yaml": "steps: 11\n"})
    assert compose(["recipe=foxes"], config_dir=other).recipe["steps"] == (11,)
    assert compose(["recipe=foxes"]).recipe["steps"] == (2,)
    # farm's own groups are there too, last
    animals = compose(["recipe=foxes", "+prompts=animals"]).recipe
    assert animals["negative"] == "blurry, lowres, text"
    assert {p.name for p in (examples("conf") / "models").glob("*.yaml")} >= {"sd15.yaml",
                                                                               "sdxl.yaml"}


@pytest.mark.parametrize("files, args, words", [
    ({"recipes/x.yaml": "defaults: [{colors: red}]\nprompt: a\n"}, ["recipe=x"],
     "no config group 'colors'; groups: models, preset, prompts, runtime"),
    ({"recipes/x.yaml": "defaults: [{models: huge}]\nprompt: a\n"}, ["recipe=x"],
     "config group 'models' has no option 'huge'; options: sd15, sdxl, small, tiny, wide"),
    ({}, ["recipe=foxes", "preset=finall"],
     "config group 'preset' has no option 'finall'; options: draft, final"),
    ({"conf/preset/bad.yaml": "steps: 2\ncfg_scale: 7\n"}, ["recipe=foxes"],
     "conf/preset/bad.yaml: cfg_scale: not a recipe field"),
    ({"conf/preset/loop.yaml": "defaults: [{models: round}]\n",
      "conf/models/round.yaml": "defaults: [{preset: loop}]\n"},
     ["recipe=foxes", "preset=loop"], "cycle: preset/loop -> models/round -> preset/loop"),
    ({"conf/preset/draft.yaml": "steps: 0\n"}, ["recipe=foxes"],
     "steps: got 0; expected a whole number from 1 to 1000"),
    ({"recipes/x.yaml": "defaults: [{models: small}]\nprompt: a\nname: x-${sizes}\n"},
     ["recipe=x"], "${sizes} names no recipe field"),
    ({"recipes/x.yaml": "prompt: 'a ${size fox'\n"}, ["recipe=x"],
     "recipe x: prompt: got 'a ${size fox'; the ${ at character 3 is never closed"),
    ({"recipes/x.yaml": "defaults: [{models: small}, {models: wide}]\nprompt: a\n"},
     ["recipe=x"], "defaults: the group 'models' is listed twice"),
    ({}, ["recipe=foxes", "steps=2,4"], "farm renders one run in which a list is an axis"),
    ({}, ["recipe=foxes", "~runtime"], "a render needs a runtime; options: "),
    ({}, ["recipe=foxes", "runtime=null"], "a render needs a runtime; options: "),
    ({}, ["recipe=foxes", "~outputs"], "outputs cannot be dropped"),
    ({}, ["recipe=foxes", "stpes=5"], "unknown field 'stpes'; did you mean 'steps'?"),
    ({"recipes/x.yaml": "prompt: a\nsetps: 3\n"}, ["recipe=x"],
     "setps: unknown field; did you mean 'steps'?"),
])
def test_composition_errors_name_what_is_wrong(team, capsys, files, args, words):
    write(team, files)
    assert run_farm("plan", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("farm: error: ") and words in err, err
    assert not (team / "outputs").exists()


def test_plan_cfg_prints_the_composed_recipe_and_the_runs_record_its_choices(team, capsys):
    assert run_farm("plan", "recipe=foxes", "preset=final", "--cfg") == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["steps"] == 6 and printed["choices"]["preset"] == "final"
    assert run_farm("render", "recipe=foxes", "preset=final", "runtime=inline") == 0
    saved = yaml.safe_load((team / "outputs" / "foxes-64x64" / "runs" / "run-0001.yaml")
                           .read_text())
    assert saved["choices"] == {"models": "small", "preset": "final", "runtime": "inline"}


def test_farms_composed_example_renders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no recipes/ or conf/ here: farm's own are found
    assert run_farm("render", "recipe=zoo", "runtime=inline", "size=64x64", "steps=2") == 0
    assert "Rendered 8 of 8 images" in capsys.readouterr().out
    with pytest.raises(BadInput, match="no such folder"):
        compose(["recipe=zoo"], config_dir=tmp_path / "missing")
