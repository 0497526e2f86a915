"""The recipe-key table: what derives from it, and one check per value whatever its route."""

from __future__ import annotations

import pytest
from PIL import Image

from farm import keys, plan, run
from farm.compose import compose
from farm.fields import BY_NAME
from farm.jobs import Job
from farm.recipe import RecipeError
from tests.helpers import recipe_folder

BASE = "prompt: [a fox, a hare]\nsize: 64x64\nsteps: 2\n"


def test_what_lists_keys_derives_from_the_rows():
    assert {k.name for k in keys.LOADED} == {"checkpoint", "vae", "refiner", "control"}
    assert {k.name for k in keys.STAGES} == {"refiner", "control", "hires", "denoise", "init",
                                              "control.image"}
    assert {k.name for k in keys.INPUT_KEYS} == {"init", "control.image", "mask"}
    assert "control.image" not in keys.DEFAULTS  # written inside control
    assert keys.COLUMN_AXES == {"steps": "steps", "cfg": "cfg", "clip_skip": "clip_skip",
                                "seed": "seeds"}
    job_fields = set(BY_NAME)
    for k in keys.KEYS:  # every Job field a row sets exists; every Job field is set by a row
        assert set(k.sets) <= job_fields, k.name
    assert set().union(*(k.sets for k in keys.KEYS)) == job_fields
    assert {f.name for f in Job.__dataclass_fields__.values()} == job_fields | {"context"}


# (key, refused, accepted): each key's values just past and just at its limits
BOUNDARIES = [
    ("steps", 0, 1), ("steps", 1001, 1000),
    ("cfg", -0.5, 0), ("cfg", 100.5, 100),
    ("clip_skip", 0, 1), ("clip_skip", 13, 12),
    ("seeds", -1, 0), ("seeds", 2**64, 2**64 - 1),
    ("size", "500x512", "504x512"), ("size", 0, 8),
    ("sampler", "euler_x", "Euler a"), ("scheduler", "karras_x", "karras"),
    ("emphasis", "A1111 ", "none"),
    ("batch_size", 0, 1), ("batch_size", 257, 256),
    ("quality", 0, 1), ("png_compression", 10, 9),
    ("dtype", "half", "float16"),
    ("hires.scale", 1, 1.05), ("hires.scale", 8.5, 8),
    ("hires.denoise", 0, 0.01), ("hires.denoise", 1.01, 1),
    ("hires.steps", -1, 0),
    ("refiner.switch_at", 0, 0.01), ("refiner.switch_at", 1, 0.99),
    ("denoise", 0, 0.01), ("denoise", 1.01, 1),
    ("resize", "cropped", "crop"), ("format", "gif", "jpg"), ("name", "a name", "a-name"),
    ("checkpoint", "", "tiny"), ("expand", "random", "combinatorial"),
    ("control.weight", 2.5, 2), ("control.weight", -0.1, 0),
    ("control.start", 1.5, 0.5), ("control.low_threshold", 0, 1),
    ("control.high_threshold", 256, 255), ("control.guess_mode", "maybe", True),
]


def _refusal(args: list[str]) -> str | None:
    """What compose refuses (the allowed part of the message), or None."""
    try:
        compose(args)
    except RecipeError as e:
        return e.allowed
    return None


def _yaml(key: str, value) -> str:
    parent, _, member = key.partition(".")
    if member:
        rest = {"hires": "{scale: 2, %s: %r}", "refiner": "{checkpoint: tiny-xl-refiner, %s: %r}",
                "control": "{model: tiny-controlnet, image: in.png, preprocessor: canny, %s: %r}"}
        extra = "checkpoint: tiny-xl\n" if parent == "refiner" else ""
        if member == "scale":
            return f"{extra}{parent}: {{scale: {value!r}}}\n"
        return f"{extra}{parent}: {rest[parent] % (member, value)}\n"
    return f"{key}: {value!r}\n"


@pytest.mark.parametrize("key, refused, accepted", BOUNDARIES,
                         ids=[f"{k}={r}" for k, r, _ in BOUNDARIES])
def test_a_value_is_refused_alike_from_a_file_an_override_and_a_prompt_file(
        tmp_path, monkeypatch, key, refused, accepted):
    common = BASE + ("init: in.png\n" if key == "denoise" else "")
    base = common + ("checkpoint: tiny-xl\n" if key.startswith("refiner") else "")
    recipe_folder(tmp_path, monkeypatch, base=base,
                  refused=common + _yaml(key, refused), accepted=common + _yaml(key, accepted))
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "recipes" / "in.png")
    from_file = _refusal(["recipe=refused"])
    assert from_file is not None, f"{key}: {refused!r} was taken"
    assert _refusal(["recipe=accepted"]) is None
    if "." in key:  # a member of a mapping: the override replaces the whole key
        parent = key.partition(".")[0]
        value = _yaml(key, refused).splitlines()[-1].partition(": ")[2]
        assert _refusal(["recipe=base", f"{parent}={value}"]) == from_file
        return
    assert _refusal(["recipe=base", f"{key}={refused!r}"]) == from_file
    assert _refusal(["recipe=base", f"{key}={accepted!r}"]) is None
    column = next((k.column for k in keys.AXES if k.name == key and k.column), None)
    if column:  # a prompt-file cell of the key's column, as a CSV holds it
        (tmp_path / "recipes" / "rows.csv").write_text(f"prompt,{column}\nan owl,{refused}\n")
        (tmp_path / "recipes" / "cells.yaml").write_text("prompt: {file: rows.csv}\n")
        with pytest.raises(RecipeError) as refusal:
            compose(["recipe=cells"])
        assert f"column {column}: got '{refused}'; {from_file}" in str(refusal.value)
        (tmp_path / "recipes" / "rows.csv").write_text(f"prompt,{column}\nan owl,{accepted}\n")
        assert _refusal(["recipe=cells"]) is None


def test_stricter_rules_hold_for_denoise_and_switch_at():
    """The table and the parser once disagreed (0 <= d <= 1 against 0 < d <= 1): the stricter
    rule, which the docs give, holds everywhere."""
    from farm import checks

    for check, value in ((checks.strength, 0), (checks.switch_at, 0), (checks.switch_at, 1)):
        with pytest.raises(checks.FieldError):
            check(value)
    assert checks.strength(1) == 1.0 and checks.switch_at(0.5) == 0.5


def test_a_prompt_file_column_sets_any_key_marked_for_it(tmp_path, monkeypatch):
    """clip_skip is not one of the first three columns (seed, steps, cfg): a row that sets it
    takes part at one value of the clip_skip axis, and its jobs carry it."""
    recipe_folder(tmp_path, monkeypatch, skip="prompt: {file: rows.csv}\nclip_skip: [1, 3]\n"
                  "seeds: 0-1\nsize: 64x64\n")
    (tmp_path / "recipes" / "rows.csv").write_text("prompt,clip_skip\nan owl,2\na crow,\n")
    settings = compose(["recipe=skip"])
    jobs = list(plan.jobs(settings.recipe, run.resolve_models(settings.recipe)))
    assert settings.recipe.job_count == len(jobs) == 2 + 2 * 2
    owl = {j.clip_skip for j in jobs if j.prompt == "an owl"}
    crow = {j.clip_skip for j in jobs if j.prompt == "a crow"}
    assert owl == {2} and crow == {1, 3}
