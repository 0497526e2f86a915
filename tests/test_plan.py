import dataclasses

import pytest

from tests.helpers import planned
from farm import plan
from farm.jobs import Batch, Model, Slot
from tests.helpers import CKPT
from tests.helpers import recipe

OTHER = Model(ref="other", path="/elsewhere", identity="b" * 64)
MODELS = {"tiny": CKPT, "other": OTHER}


def two_prompts(**fields):
    """Two prompts (one with its own negative) and three seeds, and these fields."""
    return recipe(**{"prompt": ["a cat", {"text": "a dog", "negative": "ugly"}],
                         "seeds": "0-2", "negative": "blurry", **fields})


def test_job_count_is_the_product_of_axes():
    r = two_prompts(checkpoint=["tiny", "other"], steps=[4, 8], size=["64x64", "128x128"])
    jobs = list(planned(r, MODELS))
    assert len(jobs) == r.job_count == 2 * 2 * 2 * 2 * 3
    assert len({job.id for job in jobs}) == len(jobs)


def test_negative_defaults_and_per_prompt_overrides():
    jobs = list(planned(two_prompts(), MODELS))
    assert {(j.prompt, j.negative) for j in jobs} == {("a cat", "blurry"), ("a dog", "ugly")}


def test_same_recipe_same_ids_in_the_same_order():
    first = [j.id for j in planned(two_prompts(), MODELS)]
    again = [j.id for j in planned(two_prompts(), MODELS)]
    assert first == again


def test_batch_size_does_not_change_ids():
    one = {j.id for j in planned(two_prompts(batch_size=1), MODELS)}
    four = {j.id for j in planned(two_prompts(batch_size=4), MODELS)}
    assert one == four


def test_model_path_and_spelling_do_not_change_ids():
    moved = {"tiny": dataclasses.replace(CKPT, path="/moved", ref="./tiny")}
    ids = [j.id for j in planned(two_prompts(), MODELS)]
    assert ids == [j.id for j in planned(two_prompts(), moved)]


@pytest.mark.parametrize("field, value", [
    ("checkpoint", OTHER), ("vae", OTHER), ("prompt", "a cat."), ("negative", "blurry."),
    ("seed", 99), ("sampler", "ddim"), ("scheduler", "karras"), ("steps", 21), ("cfg", 7.5),
    ("width", 72), ("height", 72),
])
def test_every_pixel_affecting_field_changes_the_id(field, value):
    job = next(planned(two_prompts(), MODELS))
    assert dataclasses.replace(job, **{field: value}).id != job.id


def test_alias_spellings_give_the_same_ids():
    a = [j.id for j in planned(two_prompts(sampler="Euler a", cfg=7), MODELS)]
    b = [j.id for j in planned(two_prompts(sampler="euler_ancestral", cfg=7.0), MODELS)]
    assert a == b


def test_batches_share_one_pipeline_call_and_respect_the_size():
    r = two_prompts(steps=[4, 8], batch_size=4)  # 6 jobs per steps value
    batches = list(plan.batches(((j, None) for j in planned(r, MODELS)), r["batch_size"]))
    assert [len(b.jobs) for b in batches] == [4, 2, 4, 2]
    assert all(len(b.shape) == 4 for b in batches)  # every call padded to the batch size
    for batch in batches:
        assert len({j.steps for j in batch.jobs}) == 1
    assert sum(len(b.jobs) for b in batches) == r.job_count


def test_batches_mix_prompts_and_seeds():
    r = two_prompts(batch_size=6)
    (batch,) = list(plan.batches(((j, None) for j in planned(r, MODELS)), r["batch_size"]))
    assert {j.prompt for j in batch.jobs} == {"a cat", "a dog"}
    assert {j.seed for j in batch.jobs} == {0, 1, 2}


def test_expensive_switches_change_least_often():
    r = two_prompts(checkpoint=["tiny", "other"], size=["64x64", "128x128"], steps=[4, 8])
    keys = [j.checkpoint.ref for j in planned(r, MODELS)]
    assert keys == ["tiny"] * (len(keys) // 2) + ["other"] * (len(keys) // 2)


def test_batches_of_what_is_left_keep_the_plan_order():
    r = two_prompts(batch_size=4)
    jobs = list(planned(r, MODELS))
    done = {jobs[0].id, jobs[3].id}
    groups = list(plan.batches(((j, None) for j in planned(r, MODELS) if j.id not in done), 4))
    assert [j.id for b in groups for j in b.jobs] == [j.id for j in jobs if j.id not in done]
    assert all(len(b.jobs) <= 4 for b in groups)


def test_jobs_rendered_before_go_back_to_their_slots():
    r = two_prompts(batch_size=4)
    jobs = list(planned(r, MODELS))
    slots = {jobs[1].id: Slot(4, 1), jobs[2].id: Slot(4, 3), jobs[4].id: Slot(4, 1),
             jobs[5].id: Slot(2, 0)}
    batches = list(plan.batches(((j, slots.get(j.id)) for j in jobs), 4))
    placed = [(b.pad_to, [(j.id, p) for j, p in zip(b.jobs, b.slots)]) for b in batches
              if b.positions]
    # two jobs of one position never share a call; another batch size gets its own call
    assert placed == [(4, [(jobs[1].id, 1), (jobs[2].id, 3)]), (4, [(jobs[4].id, 1)]),
                      (2, [(jobs[5].id, 0)])]
    fresh = [j.id for b in batches if not b.positions for j in b.jobs]
    assert fresh == [j.id for j in jobs if j.id not in slots]


def test_a_batch_refuses_jobs_that_cannot_share_a_call():
    a, b = list(planned(two_prompts(steps=[4, 8]), MODELS))[::6][:2]
    with pytest.raises(ValueError, match="cannot share"):
        Batch((a, b))


def test_planning_streams():
    r = two_prompts(seeds={"start": 0, "count": 10**9})
    stream = planned(r, MODELS)
    first = [next(stream) for _ in range(3)]
    assert [j.seed for j in first] == [0, 1, 2]


def test_a_job_whose_seed_alone_changed_is_the_job_planned_on_its_own(tmp_path):
    """The plan makes a job whose seed alone changed from the job before (no other row reads
    the seed): every field, record and id equals the job of a recipe of that one seed."""
    from PIL import Image, ImageDraw

    (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (40, 32), "teal" if name == "a" else "tan").save(tmp_path / f"{name}.png")
        mask = Image.new("L", (40, 32))
        ImageDraw.Draw(mask).rectangle((4, 4, 20, 20 if name == "a" else 12), fill=255)
        mask.save(tmp_path / "masks" / f"{name}.png")
    fields = dict(prompt=["a cat", {"text": "a dog", "negative": "ugly"}], negative="blurry",
                  init=[{"image": str(tmp_path / n), "mask": str(tmp_path / "masks" / n)}
                        for n in ("a.png", "b.png")], denoise=[0.5, 0.8],
                  mask_blur=6, inpaint_full_res=True, inpaint_full_res_padding=8,
                  inpainting_fill="fill", resize="crop", img2img_steps="a1111", dtype="float32",
                  cfg=[5, 7], steps=[3], clip_skip=[1, 2], size="64x48",
                  caption="{prompt} at {seed}")
    everything = list(planned(recipe(seeds="3-6", **fields), MODELS))
    assert len(everything) == 2 * 2 * 2 * 2 * 2 * 4
    alone = {(j.prompt, j.init.path, j.denoise, j.cfg, j.clip_skip, j.seed): j
             for seed in range(3, 7) for j in planned(recipe(seeds=seed, **fields), MODELS)}
    for job in everything:
        twin = alone[(job.prompt, job.init.path, job.denoise, job.cfg, job.clip_skip, job.seed)]
        assert job == twin and job.id == twin.id and job.to_dict() == twin.to_dict()
        assert job.mask is not None and job.inpaint_full_res_padding == 8
