"""Images in, images out: img2img, the hires fix and the SDXL refiner, as multi-stage jobs."""

from __future__ import annotations

import dataclasses
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from farm import inputs, models, outputs, samplers
from farm import recipe as recipes
from farm.jobs import Batch, Hires, Model
from farm.render import cover, hires_schedule, img2img_strength
from farm.worker import Device, Worker
from tests.helpers import (GOLDEN_CHECKPOINT, GOLDEN_IDS, make_job, planned, rendered_images,
                           run_farm)


def noise_image(path: Path, width: int, height: int, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three inputs of other sizes than the renders: one in a subfolder, one hidden."""
    folder = tmp_path_factory.mktemp("photos")
    noise_image(folder / "b.png", 80, 48, 1)
    noise_image(folder / "a.png", 48, 80, 2)
    noise_image(folder / "deeper" / "c.png", 64, 64, 3)
    noise_image(folder / ".thumbs" / "d.png", 64, 64, 4)
    return folder


# 1. where inputs come from, and what they are --------------------------------------------------

def test_inputs_are_listed_from_folders_globs_lists_and_shards(photos, tmp_path):
    found = inputs.listed(str(photos), Path("."))
    assert [Path(p).relative_to(photos).as_posix() for p in found] == \
        ["a.png", "b.png", "deeper/c.png"]  # sorted, recursive, hidden folders left out
    assert inputs.listed("*.png", photos) == [str(photos / "a.png"), str(photos / "b.png")]
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(photos / "b.png", "0001.png")
        tar.add(photos / "a.png", "0000.png")
    members = inputs.listed(str(shard), Path("."))
    assert members == [f"{shard}/0000.png", f"{shard}/0001.png"]
    # a shard member is the same input as the file it came from
    (from_shard, from_file), = [tuple(inputs.identify([members[0], str(photos / "a.png")]))]
    assert from_shard.identity == from_file.identity


def test_an_input_is_its_pixels_not_its_path_or_bytes(photos, tmp_path):
    original = photos / "a.png"
    copy = tmp_path / "elsewhere" / "renamed.png"
    copy.parent.mkdir()
    with Image.open(original) as image:  # the same pixels, other bytes
        image.save(copy, compress_level=0)
    assert copy.read_bytes() != original.read_bytes()
    a, b = inputs.identify([str(original), str(copy)])
    assert a.identity == b.identity
    with Image.open(original) as image:
        assert a.identity == outputs.pixel_hash(image)  # a farm image feeds the next run


def test_each_resize_mode_fits_an_input_as_a1111_does():
    wide = Image.new("RGB", (80, 40), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 20, 40))  # a blue left quarter
    assert inputs.fit(wide, 64, 64, "stretch").size == (64, 64)
    cropped = np.asarray(inputs.fit(wide, 40, 40, "crop"))
    assert cropped.shape == (40, 40, 3)
    assert tuple(cropped[20, 0]) == (255, 0, 0)  # the blue quarter was cut off
    filled = np.asarray(inputs.fit(wide, 40, 40, "fill"))
    assert filled.shape == (40, 40, 3)
    # the image scaled to fit in the middle; the bands above and below repeat its edge rows
    assert (filled[0] == filled[9]).all() and (filled[-1] == filled[30]).all()
    assert tuple(filled[20, 0]) == (0, 0, 255) and tuple(filled[20, 39]) == (255, 0, 0)


def a1111_resized(image, width, height, mode):
    """AUTOMATIC1111's images.resize_image for "Crop and resize" (1) and "Resize and fill" (2)
    with no upscaler, written out from its source as the reference."""
    ratio, src_ratio = width / height, image.width / image.height
    if mode == "crop":
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
    else:
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=Image.LANCZOS)
    res = Image.new("RGB", (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == "fill" and ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            res.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            res.paste(resized.resize((width, fill), box=(0, resized.height, width,
                                                         resized.height)), box=(0, fill + src_h))
    elif mode == "fill" and ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            res.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            res.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width,
                                                          height)), box=(fill + src_w, 0))
    return res


@pytest.mark.parametrize("mode", ["crop", "fill"])
def test_crop_and_fill_give_a1111s_pixels_for_common_size_pairs(mode):
    """84 pairs of input and render sizes (photo, phone, square and odd aspect ratios): the
    same pixels as A1111's "Crop and resize" and "Resize and fill", row for row."""
    sources = [(96, 64), (64, 96), (80, 60), (60, 80), (75, 50), (67, 100), (99, 66),
               (100, 75), (64, 64), (90, 51), (51, 90), (121, 80)]
    targets = [(64, 64), (64, 48), (48, 64), (72, 56), (56, 72), (64, 40), (40, 64)]
    for w, h in sources:
        image = Image.fromarray(np.random.default_rng(w * h).integers(0, 256, (h, w, 3),
                                                                      dtype=np.uint8))
        for width, height in targets:
            ours = np.asarray(inputs.fit(image, width, height, mode))
            theirs = np.asarray(a1111_resized(image, width, height, mode))
            assert np.array_equal(ours, theirs), (mode, (w, h), (width, height))


def test_crop_and_fill_jobs_have_new_ids_and_stretch_keeps_its_own():
    """Crop and fill images made before farm used A1111's arithmetic were fitted otherwise:
    their jobs' ids changed (the old run folder renders them again); stretch's did not."""
    image = Model("in.png", "/nowhere/in.png", "ab" * 32)
    before = {"stretch": "69c007c122d2b02458b03244", "crop": "c8931063731997910af0b9c4",
              "fill": "7ab64b74a175f688350b8d53"}  # as farm gave them before
    now = {mode: make_job(GOLDEN_CHECKPOINT, negative="blurry", seed=1, steps=4, init=image,
                          denoise=0.5, resize=mode) for mode in before}
    assert now["stretch"].id == before["stretch"]
    assert now["crop"].id != before["crop"] and now["fill"].id != before["fill"]
    assert now["crop"].to_dict()["resize"] == "crop"  # recorded as the recipe says it


def test_transparent_and_16_bit_inputs_read_as_a1111_reads_them(tmp_path):
    """Transparency is flattened on white (A1111's img2img background colour), not the colour
    stored under it; a 16-bit grey image is scaled to 8 bits, not clipped to white."""
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere, hidden where transparent
    rgba[:, :4, 3] = 0  # left half fully transparent
    rgba[:, 4:6, 3] = 128  # then half transparent, then opaque
    rgba[:, 6:, 3] = 255
    image = Image.fromarray(rgba, "RGBA")
    reference = Image.new("RGBA", image.size, "#ffffff")  # A1111's images.flatten
    reference.paste(image, mask=image)
    for name, kind in [("rgba.png", image), ("la.png", image.convert("LA")),
                       ("palette.png", image.quantize(4, dither=Image.Dither.NONE))]:
        kind.save(tmp_path / name)
        model, = inputs.identify([str(tmp_path / name)])
        ours = np.asarray(inputs.decoded((tmp_path / name).read_bytes(), name))
        assert tuple(ours[0, 0]) == (255, 255, 255), name  # white, not the hidden red
        assert model.identity == outputs.pixel_hash(Image.fromarray(ours))
    ours = np.asarray(inputs.decoded((tmp_path / "rgba.png").read_bytes(), "rgba.png"))
    assert np.array_equal(ours, np.asarray(reference.convert("RGB")))
    grey = np.full((4, 4), 128 * 257, dtype=np.uint16)
    grey[0, 0] = 65535
    Image.fromarray(grey).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as stored:
        assert stored.mode.startswith("I")  # a 16-bit PNG, as Pillow reads it
    ours = np.asarray(inputs.decoded((tmp_path / "deep.png").read_bytes(), "deep.png"))
    assert ours[1, 1].tolist() == [128] * 3 and ours[0, 0].tolist() == [255] * 3


RECIPE = """\
name: variations
prompt: [a fox, a lighthouse]
init: photos
denoise: [0.5, 0.9]
resize: crop
seeds: 0
size: 64x64
steps: 4
batch_size: 3
"""


@pytest.fixture
def project(tmp_path, photos, monkeypatch):
    shutil.copytree(photos, tmp_path / "photos")
    (tmp_path / "variations.yaml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_plan_multiplies_inputs_and_denoise(project, capsys):
    r = recipes.parse(yaml.safe_load(RECIPE), "variations", project)
    jobs = list(planned(r, {"tiny": models.resolve("tiny")}))
    assert len(jobs) == r.job_count == 2 * 3 * 2
    assert {job.denoise for job in jobs} == {0.5, 0.9}
    assert {job.resize for job in jobs} == {"crop"}
    assert len({job.init.identity for job in jobs}) == 3
    assert run_farm("plan", "recipe=variations.yaml", "runtime=inline") == 0
    shown = capsys.readouterr().out
    assert "  init              3  3 image(s)" in shown
    assert "  denoise           2  0.5, 0.9" in shown
    assert "  hires " not in shown  # unused stages are not listed


def test_zip_pairs_image_i_with_prompt_i(project):
    data = {"prompt": ["a fox", "a lighthouse", "a cat"], "init": "photos", "zip": [["init",
            "prompt"]], "size": "64x64"}
    r = recipes.parse(data, "zipped", project)
    jobs = list(planned(r, {"tiny": models.resolve("tiny")}))
    assert [(Path(j.init.path).name, j.prompt) for j in jobs] == [
        ("a.png", "a fox"), ("b.png", "a lighthouse"), ("c.png", "a cat")]


# 2. rendering, reproducibly ------------------------------------------------------------------

# one sampler of each diffusers scheduler class
FAMILIES = sorted({s.scheduler_class: s.name for s in samplers.SAMPLERS}.values())


@pytest.mark.parametrize("sampler", FAMILIES)
def test_img2img_is_batch_invariant_for_every_sampler_family(worker, tiny, photos, sampler):
    """A job alone and inside a batch of 3 (other inputs, prompts and seeds) gives the same
    image: each input is encoded, and noised, with its own generator."""
    found = list(inputs.identify(inputs.listed(str(photos), Path("."))))
    jobs = [make_job(tiny, seed=s, prompt=f"prompt {s}", sampler=sampler, steps=6,
                     init=found[s], denoise=0.6, resize="crop") for s in range(3)]
    together = rendered_images(worker, jobs, f"i2i-{sampler}")
    alone, = rendered_images(worker, [jobs[1]], f"i2i-{sampler}-alone")
    assert np.abs(alone.astype(int) - together[1].astype(int)).max() <= 1


def test_each_img2img_and_hires_pass_runs_its_own_sampler(tiny, photos, tmp_path):
    """The img2img pipeline shares the loaded model, not an earlier batch's scheduler: a job
    gives the same pixels after other samplers' batches as on a fresh worker."""
    image, = inputs.identify([str(photos / "a.png")])
    jobs = [make_job(tiny, sampler=s, init=image, denoise=0.7, resize="stretch")
            for s in ("euler", "dpmpp_2m", "ddim")]
    hires = [make_job(tiny, width=96, height=96, sampler=s, hires=Hires(64, 64, 1.5, "latent",
                                                                       2, 0.5, h, h and "normal"))
             for s, h in (("euler", "ddim"), ("dpmpp_2m", None))]
    busy = Worker(tmp_path / "busy", device=Device("cpu", "float32"))
    after_others = [image for group, tag in ((jobs[:1], "e"), (jobs[1:2], "d"), (jobs[2:], "i"),
                                             (hires[:1], "h1"), (hires[1:], "h2"))
                    for image in rendered_images(busy, group, tag)]
    for i, job in enumerate(jobs + hires):
        fresh = Worker(tmp_path / f"fresh{i}", device=Device("cpu", "float32"))
        alone, = rendered_images(fresh, [job], f"f{i}")
        assert np.array_equal(alone, after_others[i]), job.sampler
    assert not np.array_equal(after_others[0], after_others[1])


def test_the_input_and_denoise_change_the_image(worker, tiny, photos):
    a, b, _ = inputs.identify(inputs.listed(str(photos), Path(".")))
    base = make_job(tiny, init=a, denoise=0.5, resize="stretch")
    images = rendered_images(worker, [base, make_job(tiny, init=b, denoise=0.5, resize="stretch")],
                    "change") + rendered_images(worker, [make_job(tiny, init=a, denoise=0.9,
                                                         resize="stretch")], "change-more")
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(images[0], images[2])
    assert len({base.id, make_job(tiny).id, make_job(tiny, init=a, denoise=0.9,
                                                     resize="stretch").id}) == 3


def test_an_input_travels_with_its_batch(worker, tiny, photos, tmp_path):
    """A worker on another node cannot read the input where the driver found it: the batch
    carries its bytes, and the worker checks them against the planned pixels."""
    copy = shutil.copy(photos / "a.png", tmp_path / "a.png")
    image, = inputs.identify([str(copy)])
    job = make_job(tiny, init=image, denoise=0.7, resize="stretch")
    carried = inputs.carried(Batch((job,), ("images/00000/carried.png",)))
    Path(copy).unlink()  # not on this "node"
    result, = worker.render(carried)
    assert result.ok, result.error
    lost, = worker.render(Batch((job,), ("images/00000/lost.png",)))
    assert not lost.ok and "cannot be read on" in lost.error


def test_a_changed_input_fails_its_jobs(worker, tiny, photos, tmp_path):
    copy = Path(shutil.copy(photos / "a.png", tmp_path / "a.png"))
    image, = inputs.identify([str(copy)])
    noise_image(copy, 48, 80, 99)
    result, = worker.render(Batch((make_job(tiny, init=image, denoise=0.7, resize="stretch"),),
                                  ("images/00000/changed.png",)))
    assert not result.ok and "its pixels changed since the plan" in result.error


def test_img2img_run_resumes_verifies_and_replays_from_a_folder_named(project, capsys):
    assert run_farm("render", "recipe=variations.yaml", "runtime=inline") == 0
    folder = project / "outputs" / "variations"
    images = sorted(folder.glob("images/*/*.png"))
    assert len(images) == 12
    infotext, meta = outputs.read_metadata(images[0])
    assert "Denoising strength: " in infotext and "Init image hash: " in infotext
    assert meta["init_identity"] and meta["resize"] == "crop" and meta["denoise"] in (0.5, 0.9)
    # a deleted image comes back with the same pixels; nothing else is rendered
    with Image.open(images[4]) as image:
        before = outputs.pixel_hash(image)
    images[4].unlink()
    capsys.readouterr()
    assert run_farm("render", "recipe=variations.yaml", "runtime=inline") == 0
    assert "Rendered 1 of 1" in capsys.readouterr().out
    with Image.open(images[4]) as image:
        assert outputs.pixel_hash(image) == before
    assert run_farm("verify", str(folder), "--sample", "3") == 0
    capsys.readouterr()  # status counts from the run's record: the input hashes it kept
    assert run_farm("status", str(folder)) == 0
    assert "12 done, 0 pending" in capsys.readouterr().out
    # the inputs moved: replay finds them by their pixels in a folder the user names (an
    # unreadable file there is passed over)
    shutil.move(project / "photos", project / "moved")
    (project / "moved" / "broken.png").write_bytes(b"not a png")
    assert run_farm("replay", str(images[0]), "--to", str(project / "again")) == 2
    assert "is not there, and no other folder was named to look in (--inputs DIR)" in \
        capsys.readouterr().err
    assert run_farm("replay", str(images[0]), "--to", str(project / "again"), "--inputs",
                    str(project / "moved")) == 0
    assert "the same pixels as" in capsys.readouterr().out
    # verify with one input gone: that image is named, every other is still checked
    first = next(p for p in (project / "moved").glob("*.png") if p.name != "broken.png")
    first.unlink()
    capsys.readouterr()
    assert run_farm("verify", str(folder), "--all", "--inputs", str(project / "moved")) == 1
    out = capsys.readouterr().out
    assert "not rendered again" in out and out.count("identical") == 8, out


def test_a_run_feeds_the_next_and_its_exports_name_the_inputs(project, capsys):
    (project / "next.yaml").write_text("name: next\nprompt: a fox\ninit: outputs/small/images\n"
                                       "size: 64x64\nsteps: 3\ndenoise: 0.4\n")
    (project / "small.yaml").write_text("name: small\nprompt: a cat\nseeds: 0-1\n"
                                        "size: 64x64\nsteps: 3\n")
    assert run_farm("render", "recipe=small.yaml", "runtime=inline") == 0
    assert run_farm("render", "recipe=next.yaml", "runtime=inline") == 0
    made = {outputs.read_metadata(p)[1]["init_identity"]
            for p in (project / "outputs" / "next").glob("images/*/*.png")}
    with Image.open(next((project / "outputs" / "small").glob("images/*/*.png"))) as first:
        assert outputs.pixel_hash(first) in made
    import pyarrow.parquet as pq

    assert run_farm("export", str(project / "outputs" / "next"), "--format", "parquet", "--to",
                    str(project / "export")) == 0
    table = pq.read_table(next((project / "export").glob("*.parquet"))).to_pylist()
    assert {row["denoise"] for row in table} == {0.4}
    assert all(row["init"].startswith(str(project)) and row["init_identity"] for row in table)


@pytest.mark.parametrize("recipe, words", [
    ("init: nowhere", "init: got 'nowhere'; no such file or folder"),
    ("init: empty", "the folder has no images"),
    ("init: [photos/a.png, broken.png]", "broken.png: cannot be read as an image"),
    ("init: photos\ndenoise: 0", "denoise: got 0; expected a denoising strength above 0"),
    ("init: photos\ndenoise: 1.5", "denoise: got 1.5"),
    ("denoise: 0.5", "set init too"),
    ("hires: {upscaler: latent}", "needs a scale (2) or a final size"),
    ("hires: {scale: 2, upscaler: esrgan}", "hires.upscaler: got 'esrgan'; allowed: latent"),
    ("hires: {scale: 1}", "hires.scale: got 1; expected a scale above 1"),
    ("hires: {scale: 0.5}", "hires.scale: got 0.5; expected a scale above 1"),
    ("hires: {size: 64x64}", "hires.size: got '64x64'; a hires pass makes the image larger"),
    ("hires: {size: 48x32}", "hires.size: got '48x32'; a hires pass makes the image larger"),
    ("hires: {scale: 2}\ninit: photos", "cannot be combined with init images"),
    ("refiner: {checkpoint: tiny-xl-refiner}", "a refiner finishes an SDXL base model"),
    ("checkpoint: tiny-xl\nrefiner: {checkpoint: tiny}", "a refiner is an SDXL checkpoint"),
    ("checkpoint: tiny-xl\nrefiner: {checkpoint: tiny-xl-refiner, switch_at: 1}",
     "refiner.switch_at: got 1"),
    ("init: [photos/a.png, twin.png]", "have the same pixels"),
    ("init: [photos/a.png, photos]", "this image is listed twice"),
])
def test_bad_stage_input_exits_2_before_anything_is_written(project, capsys, recipe, words):
    (project / "empty").mkdir()
    (project / "broken.png").write_bytes(b"not a png")
    shutil.copy(project / "photos" / "a.png", project / "twin.png")
    (project / "bad.yaml").write_text(f"name: bad\nprompt: a fox\nsize: 64x64\n{recipe}\n")
    assert run_farm("render", "recipe=bad.yaml", "runtime=inline") == 2
    err = capsys.readouterr().err
    assert words in err and "BytesIO" not in err and "(set)" not in err
    assert not (project / "outputs" / "bad").exists()


# 3. hires fix ----------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 4, 20, 30, 50, 150])
@pytest.mark.parametrize("denoise", [0.05, 0.3, 0.5, 0.75, 0.999, 1.0])
def test_img2img_steps_a1111_runs_a1111s_timesteps(img2img_pipe, steps, denoise):
    """A1111's img2img: t_enc = int(min(d, 0.999) x steps), sigmas[steps - t_enc - 1:], so
    t_enc + 1 steps (16 at 20 steps, 0.75); diffusers' own: int(steps x d), the last ones."""
    image = Model("in.png", "/nowhere/in.png", "ab" * 32)
    job = make_job(GOLDEN_CHECKPOINT, init=image, denoise=denoise, resize="stretch",
                   steps=steps, img2img_steps="a1111")
    pipe = img2img_pipe
    pipe.scheduler.set_timesteps(steps)
    everything = pipe.scheduler.timesteps.tolist()
    t_enc = int(min(denoise, 0.999) * steps)
    run, count = pipe.get_timesteps(steps, img2img_strength(job), "cpu")
    assert count == t_enc + 1 and run.tolist() == everything[steps - t_enc - 1:]
    own = dataclasses.replace(job, img2img_steps="diffusers")
    run, count = pipe.get_timesteps(steps, img2img_strength(own), "cpu")
    assert count == min(int(steps * denoise), steps)


def test_img2img_steps_enter_the_id_only_when_a1111(project):
    found = {"tiny": models.resolve("tiny")}
    default = list(planned(recipes.parse(yaml.safe_load(RECIPE), "v", project), found))
    theirs = list(planned(recipes.parse(yaml.safe_load(RECIPE + "img2img_steps: a1111\n"),
                                        "v", project), found))
    assert {j.img2img_steps for j in default} == {"diffusers"}
    assert {j.img2img_steps for j in theirs} == {"a1111"}
    assert not {j.id for j in default} & {j.id for j in theirs}
    same = [dataclasses.replace(j, img2img_steps=None) for j in default]  # before the key
    assert [j.id for j in same] == [j.id for j in default]


@pytest.mark.parametrize("first, final", [((64, 48), (96, 96)), ((48, 64), (96, 96)),
                                          ((64, 64), (128, 64)), ((64, 64), (64, 128)),
                                          ((72, 56), (104, 80)), ((64, 48), (128, 96))])
def test_a_hires_size_of_another_aspect_is_covered_and_cut_as_a1111_does(first, final):
    """A1111's hires resize to a width and height: upscale, aspect kept, to cover them (the
    other side floored), then cut the overflow from the latents: half before, the rest after."""
    (w, h), (width, height) = first, final
    if w / h < width / height:
        up = (width, width * h // w)
    else:
        up = (height * w // h, height)
    ours = cover(w, h, width, height)
    assert ours == (*up, (up[0] - width) // 8, (up[1] - height) // 8)
    assert ours[0] // 8 - ours[2] == width // 8 and ours[1] // 8 - ours[3] == height // 8


@pytest.fixture(scope="module")
def img2img_pipe(farm_cache):
    from diffusers import StableDiffusionImg2ImgPipeline

    from farm import tiny
    return StableDiffusionImg2ImgPipeline.from_pretrained(tiny.ensure("tiny"))


@pytest.mark.parametrize("steps", [1, 2, 7, 10, 20, 30])
@pytest.mark.parametrize("denoise", [0.05, 0.3, 0.5, 0.7, 0.75, 0.999, 1.0])
def test_a_hires_pass_runs_a1111s_schedule(img2img_pipe, steps, denoise):
    """A1111's hires pass (setup_img2img_steps with its steps given): a schedule of
    int(steps / min(denoise, 0.999)), of which the last `steps` run: 28 and 20 at 20 steps,
    denoise 0.7. diffusers' img2img, given farm's length and strength, runs exactly those."""
    length, strength = hires_schedule(steps, denoise)
    assert length == int(steps / min(denoise, 0.999))
    pipe = img2img_pipe
    pipe.scheduler.set_timesteps(length)
    everything = pipe.scheduler.timesteps.tolist()
    run, count = pipe.get_timesteps(length, strength, "cpu")
    # A1111 starts at sigma index length - (steps - 1) - 1 and runs to the end
    assert count == steps and run.tolist() == everything[length - steps:]


HIRES = """\
name: hires
prompt: [a fox, "a (red:1.2) fox"]
seeds: 0-1
size: 64x48
steps: 4
hires: {scale: [1.5, 2], upscaler: [latent, lanczos], steps: 2, denoise: 0.6}
batch_size: 2
grids: [{x: hires.scale, y: hires.upscaler}]
"""


def test_hires_renders_the_final_size_and_records_both(tmp_path, capsys, worker, tiny):
    (tmp_path / "hires.yaml").write_text(HIRES)
    assert run_farm("render", f"recipe={tmp_path / 'hires.yaml'}", "runtime=inline",
                    f"outputs={tmp_path / 'out'}") == 0
    folder = tmp_path / "out" / "hires"
    found = {}
    for path in folder.glob("images/*/*.png"):
        infotext, meta = outputs.read_metadata(path)
        with Image.open(path) as image:
            assert image.size == (meta["width"], meta["height"])
        found[(meta["hires"]["scale"], meta["hires"]["upscaler"])] = (meta, infotext)
    assert len(list(folder.glob("images/*/*.png"))) == 16
    meta, infotext = found[(1.5, "lanczos")]
    assert (meta["width"], meta["height"]) == (96, 72)
    assert (meta["hires"]["width"], meta["hires"]["height"]) == (64, 48)  # the first pass
    for words in ("Size: 64x48", "Denoising strength: 0.6", "Hires upscale: 1.5",
                  "Hires steps: 2", "Hires upscaler: Lanczos"):
        assert words in infotext
    assert (found[(2.0, "latent")][0]["width"], found[(2.0, "latent")][0]["height"]) == (128, 96)
    assert "Hires upscaler: Latent" in found[(2.0, "latent")][1]
    assert len(list((folder / "grids").glob("*.png"))) >= 1  # the grid by hires.scale
    import pyarrow.parquet as pq

    assert run_farm("export", str(folder), "--format", "parquet", "--where",
                    "hires.upscaler=lanczos", "--to", str(tmp_path / "table")) == 0
    rows = pq.read_table(next((tmp_path / "table").glob("*.parquet"))).to_pylist()
    assert {row["hires"] for row in rows} == {"1.5x lanczos, 2 steps, denoise 0.6",
                                              "2x lanczos, 2 steps, denoise 0.6"}
    assert run_farm("verify", str(folder), "--sample", "2") == 0


def test_hires_reuses_the_loaded_model_and_its_own_sampler_changes_pixels(worker, tiny):
    first = Hires(64, 64, 1.5, "latent", 2, 0.5)
    plain = make_job(tiny, width=96, height=96, hires=first)
    other = make_job(tiny, width=96, height=96, hires=Hires(64, 64, 1.5, "latent", 2, 0.5,
                                                            "dpmpp_2m", "karras"))
    loads = worker.loads[tiny.identity]
    a, b = rendered_images(worker, [plain], "hr-a") + rendered_images(worker, [other], "hr-b")
    assert a.shape == (96, 96, 3) and not np.array_equal(a, b) and plain.id != other.id
    pipe = worker.pipeline(plain.loadout)
    assert worker.img2img(pipe).unet is pipe.unet  # no second copy of the model
    assert worker.loads[tiny.identity] == max(loads, 1)


def test_hires_is_batch_invariant(worker, tiny):
    jobs = [make_job(tiny, seed=s, prompt=f"prompt {s}", width=96, height=96,
                     hires=Hires(64, 64, 1.5, "lanczos", 2, 0.5)) for s in range(3)]
    together = rendered_images(worker, jobs, "hr-inv")
    alone, = rendered_images(worker, [jobs[2]], "hr-inv-alone")
    assert np.abs(alone.astype(int) - together[2].astype(int)).max() <= 1


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_a_hires_size_of_another_aspect_renders_at_that_size(worker, tiny, upscaler):
    wide = Hires(64, 48, None, upscaler, 2, 0.5)
    image, = rendered_images(worker, [make_job(tiny, width=96, height=96, hires=wide)],
                             f"cover-{upscaler}")
    assert image.shape == (96, 96, 3)


# 4. SDXL refiner -------------------------------------------------------------------------------

def test_the_refiner_finishes_the_schedule_and_shares_what_it_can(worker):
    base, refiner = models.resolve("tiny-xl"), models.resolve("tiny-xl-refiner")
    jobs = [make_job(base, seed=s, prompt=f"prompt {s}", steps=5, refiner=refiner,
                     switch_at=0.6) for s in range(3)]
    together = rendered_images(worker, jobs, "rf")
    alone, = rendered_images(worker, [jobs[0]], "rf-alone")
    assert np.abs(alone.astype(int) - together[0].astype(int)).max() <= 1
    later, = rendered_images(worker, [make_job(base, seed=0, prompt="prompt 0", steps=5,
                                      refiner=refiner, switch_at=0.8)], "rf-later")
    unrefined, = rendered_images(worker, [make_job(base, seed=0, prompt="prompt 0", steps=5)],
                                 "rf-no")
    assert not np.array_equal(alone, later) and not np.array_equal(alone, unrefined)
    assert len({jobs[0].id, make_job(base, seed=0, prompt="prompt 0", steps=5).id,
                make_job(base, seed=0, prompt="prompt 0", steps=5, refiner=refiner,
                         switch_at=0.8).id}) == 3
    pipe = worker.pipeline(jobs[0].loadout)
    loaded, _, _ = worker.refiner(jobs[0].loadout, "auto", pipe)
    assert loaded.vae is pipe.vae and loaded.text_encoder_2 is pipe.text_encoder_2
    assert loaded.unet is not pipe.unet


def test_a_refiner_recipe_writes_a1111_keys_and_plans_by_switch(tmp_path, capsys):
    (tmp_path / "xl.yaml").write_text(
        "name: xl\ncheckpoint: tiny-xl\nprompt: [a fox, 'a (red:1.2) fox']\nsize: 64x64\n"
        "steps: 5\nrefiner: {checkpoint: tiny-xl-refiner, switch_at: [0.6, 0.8]}\n"
        "batch_size: 2\n")
    assert run_farm("plan", f"recipe={tmp_path / 'xl.yaml'}", "runtime=inline",
                    f"outputs={tmp_path / 'out'}") == 0
    assert "tiny-xl-refiner at 0.6, tiny-xl-refiner at 0.8" in capsys.readouterr().out
    assert run_farm("render", f"recipe={tmp_path / 'xl.yaml'}", "runtime=inline",
                    f"outputs={tmp_path / 'out'}") == 0
    found = [outputs.read_metadata(p) for p in (tmp_path / "out" / "xl").glob("images/*/*.png")]
    assert len(found) == 4 and {meta["switch_at"] for _, meta in found} == {0.6, 0.8}
    infotext, meta = found[0]
    assert "Refiner: tiny-xl-refiner [" in infotext and "Refiner switch at: 0." in infotext
    assert meta["refiner"] == "tiny-xl-refiner" and meta["refiner_identity"]
    assert run_farm("verify", str(tmp_path / "out" / "xl"), "--sample", "2") == 0


def test_stage_fields_leave_old_ids_alone_and_enter_the_id_when_set():
    """A text-to-image job keeps the id farm gave it before stages existed (tests/test_fields.py
    holds those ids); each stage field, once set, makes another job."""
    def job(**fields):
        return make_job(GOLDEN_CHECKPOINT, negative="blurry", seed=1, steps=4, **fields)

    assert job().id == GOLDEN_IDS[0][1]
    image = Model("in.png", "/nowhere/in.png", "ab" * 32)
    refiner = Model("tiny-xl-refiner", "/nowhere", "cd" * 32)
    staged = [job(init=image, denoise=0.5, resize="crop"),
              job(init=image, denoise=0.6, resize="crop"),
              job(init=image, denoise=0.5, resize="fill"),
              job(width=96, height=96, hires=Hires(64, 64, 1.5, "latent", 0, 0.7)),
              job(width=96, height=96, hires=Hires(64, 64, 1.5, "lanczos", 0, 0.7)),
              job(refiner=refiner, switch_at=0.8), job(refiner=refiner, switch_at=0.7)]
    assert len({j.id for j in staged} | {job().id}) == len(staged) + 1


def test_an_input_is_read_upright_by_its_exif_orientation(tmp_path):
    upright = Image.fromarray(np.arange(48 * 32 * 3, dtype=np.uint8).reshape(48, 32, 3))
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: a viewer rotates it 90 degrees clockwise
    upright.transpose(Image.ROTATE_90).save(tmp_path / "turned.jpg", exif=exif, quality=100,
                                            subsampling=0)
    turned = inputs.decoded((tmp_path / "turned.jpg").read_bytes(), "turned.jpg")
    assert turned.size == (32, 48)
    assert np.abs(np.asarray(turned, int) - np.asarray(upright, int)).mean() < 4


def test_sdxl_img2img_and_the_refiner_take_a_recipe_vae(worker, photos, tiny_vae):
    base, refiner = models.resolve("tiny-xl"), models.resolve("tiny-xl-refiner")
    image, = inputs.identify([str(photos / "a.png")])
    own, swapped = (rendered_images(worker, [make_job(base, vae=vae, init=image, denoise=0.6,
                                             resize="fill")], f"xl-i2i-{i}")[0]
                    for i, vae in enumerate((None, tiny_vae)))
    assert not np.array_equal(own, swapped)
    own, swapped = (rendered_images(worker, [make_job(base, vae=vae, steps=4, refiner=refiner,
                                             switch_at=0.5)], f"xl-rf-{i}")[0]
                    for i, vae in enumerate((None, tiny_vae)))
    assert not np.array_equal(own, swapped)


def test_an_input_replaced_with_the_same_size_and_time_is_identified_again(tmp_path, capsys,
                                                                            monkeypatch):
    """`cp -p` or `rsync -t` of other pixels over an input: the same byte size and modification
    time; the cached hash must not be trusted, and the new pixels are a new job."""
    import os

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(5)
    first, second = (Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
                     for _ in range(2))
    first.save(tmp_path / "in.png", compress_level=0)
    stat = (tmp_path / "in.png").stat()
    (tmp_path / "r.yaml").write_text("prompt: a fox\ninit: in.png\nsize: 64x64\nsteps: 2\n")
    assert run_farm("render", "recipe=r.yaml", "runtime=inline") == 0
    second.save(tmp_path / "in.png", compress_level=0)
    os.utime(tmp_path / "in.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (tmp_path / "in.png").stat().st_size == stat.st_size
    capsys.readouterr()
    assert run_farm("render", "recipe=r.yaml", "runtime=inline") == 0
    assert "Rendered 1 of 1" in capsys.readouterr().out
    made = {outputs.read_metadata(p)[1]["init_identity"]
            for p in (tmp_path / "outputs" / "r").glob("images/*/*.png")}
    assert outputs.pixel_hash(second) in made and len(made) == 2


def test_a_cover_that_is_no_multiple_of_8_still_renders_the_final_size(worker, tiny):
    """72x56 covered to 96x96 overflows to 123x96 (not a multiple of 8): cut to 96x96 all the
    same, in latents and in pixels."""
    assert cover(72, 56, 96, 96)[:2] == (123, 96)
    for upscaler in ("latent", "lanczos"):
        image, = rendered_images(worker, [make_job(tiny, width=96, height=96, hires=Hires(
            72, 56, None, upscaler, 2, 0.5))], f"odd-{upscaler}")
        assert image.shape == (96, 96, 3), upscaler
