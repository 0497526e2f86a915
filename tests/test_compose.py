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
        "defaults: [{models: small}, {quality: draft}, _self_]\n"
        "name: foxes-${size}\nprompt: a red fox\nseeds: 0-1\n"))
    write(tmp_path, {
        "conf/models/small.yaml": "checkpoint: tiny\nsize: 64x64\nclip_skip: 2\n",
        "conf/models/wide.yaml": "checkpoint: tiny\nsize: 128x64\n",
        "conf/quality/draft.yaml": "steps: 2\ncfg: 5\n",
        "conf/quality/final.yaml": "steps: 6\n",
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
    assert record["choices"] == {"models": "small", "quality": "draft", "runtime": "ray"}


def test_the_recipe_wins_after_self_and_groups_win_before_it(team):
    write(team, {"recipes/mine.yaml": "defaults: [{quality: draft}, _self_]\nprompt: a\n"
                                      "steps: 9\n",
                 "recipes/theirs.yaml": "defaults: [_self_, {quality: draft}]\nprompt: a\n"
                                        "steps: 9\n"})
    assert compose(["recipe=mine"]).recipe["steps"] == (9,)
    assert compose(["recipe=theirs"]).recipe["steps"] == (2,)


def test_group_choices_from_the_command_line(team):
    r = compose(["recipe=foxes", "quality=final", "models=wide"]).recipe
    assert (r["steps"], r["size"], r.name) == ((6,), ((128, 64),), "foxes-128x64")
    r = compose(["recipe=foxes", "+prompts=owls", "steps=3"]).recipe
    assert r["negative"] == "blurry" and r["steps"] == (3,)
    # Hydra appends a group added from the command line after _self_: it wins
    assert r["prompt"][0].text == "an owl at {time}"


def test_a_field_named_like_a_group_is_still_a_field(team):
    """`quality` is JPEG quality and a config group: a group option is the group, a number
    the field."""
    s = compose(["recipe=foxes", "format=jpeg", "quality=95"])
    assert s.recipe.image.quality == 95 and s.recipe["steps"] == (2,)
    assert compose(["recipe=foxes", "quality=final"]).recipe["steps"] == (6,)


def test_a_group_file_may_pull_in_other_groups(team):
    write(team, {"conf/quality/print.yaml": "defaults: [{models: wide}]\nsteps: 7\n",
                 "recipes/poster.yaml": "defaults: [{quality: print}]\nprompt: a\n"})
    r = compose(["recipe=poster"]).recipe
    assert (r["steps"], r["size"]) == ((7,), ((128, 64),))


def test_config_dir_comes_first_then_conf_then_farms_own(team, tmp_path_factory):
    other = tmp_path_factory.mktemp("shared")
    write(other, {"quality/draft.yaml": "steps: 11\n"})
    assert compose(["recipe=foxes"], config_dir=other).recipe["steps"] == (11,)
    assert compose(["recipe=foxes"]).recipe["steps"] == (2,)
    # farm's own groups are there too, last
    animals = compose(["recipe=foxes", "+prompts=animals"]).recipe
    assert animals["negative"] == "blurry, lowres, text"
    assert {p.name for p in (examples("conf") / "models").glob("*.yaml")} >= {"sd15.yaml",
                                                                               "sdxl.yaml"}


@pytest.mark.parametrize("files, args, words", [
    ({"recipes/x.yaml": "defaults: [{colors: red}]\nprompt: a\n"}, ["recipe=x"],
     "no config group 'colors'; groups: models, prompts, quality, runtime"),
    ({"recipes/x.yaml": "defaults: [{models: huge}]\nprompt: a\n"}, ["recipe=x"],
     "config group 'models' has no option 'huge'; options: sd15, sdxl, small, tiny, wide"),
    ({}, ["recipe=foxes", "quality=finall"],
     "config group 'quality' has no option 'finall'; options: draft, final"),
    ({"conf/quality/bad.yaml": "steps: 2\ncfg_scale: 7\n"}, ["recipe=foxes"],
     "conf/quality/bad.yaml: cfg_scale: not a recipe field"),
    ({"conf/quality/loop.yaml": "defaults: [{models: round}]\n",
      "conf/models/round.yaml": "defaults: [{quality: loop}]\n"},
     ["recipe=foxes", "quality=loop"], "cycle: quality/loop -> models/round -> quality/loop"),
    ({"conf/quality/draft.yaml": "steps: 0\n"}, ["recipe=foxes"],
     "steps: got 0; expected a whole number from 1 to 1000"),
    ({"recipes/x.yaml": "defaults: [{models: small}]\nprompt: a\nname: x-${sizes}\n"},
     ["recipe=x"], "${sizes} names no recipe field"),
])
def test_composition_errors_name_what_is_wrong(team, capsys, files, args, words):
    write(team, files)
    assert run_farm("plan", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("farm: error: ") and words in err, err
    assert not (team / "outputs").exists()


def test_plan_cfg_prints_the_composed_recipe_and_the_runs_record_its_choices(team, capsys):
    assert run_farm("plan", "recipe=foxes", "quality=final", "--cfg") == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["steps"] == 6 and printed["choices"]["quality"] == "final"
    assert run_farm("render", "recipe=foxes", "quality=final", "runtime=inline") == 0
    saved = yaml.safe_load((team / "outputs" / "foxes-64x64" / "runs" / "run-0001.yaml")
                           .read_text())
    assert saved["choices"] == {"models": "small", "quality": "final", "runtime": "inline"}


def test_farms_composed_example_renders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no recipes/ or conf/ here: farm's own are found
    assert run_farm("render", "recipe=zoo", "runtime=inline", "size=64x64", "steps=2") == 0
    assert "Rendered 8 of 8 images" in capsys.readouterr().out
    with pytest.raises(BadInput, match="no such folder"):
        compose(["recipe=zoo"], config_dir=tmp_path / "missing")
