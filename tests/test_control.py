"""ControlNet units: recipes, identity, infotext, and pixels equal to diffusers' own ControlNet
pipelines called with the same inputs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from farm import inputs, models, outputs, preprocessors
from farm import recipe as recipes
from farm.fields import BY_NAME
from farm.jobs import Batch
from farm.values import Control
from tests.helpers import (make_job, manifest_rows, planned, recipe_folder, replayed_after_moving,
                           run_farm, run_inline)


def drawing(path: Path, kind: int, size: tuple[int, int] = (64, 64)) -> Path:
    """A control image people would give: shapes on a plain ground."""
    image = Image.new("RGB", size, (230, 220, 200))
    draw = ImageDraw.Draw(image)
    w, h = size
    if kind % 3 == 0:
        draw.ellipse((w // 6, h // 6, w * 5 // 6, h * 5 // 6), outline=(20, 20, 20), width=3)
    elif kind % 3 == 1:
        draw.rectangle((w // 10, h // 3, w * 9 // 10, h * 2 // 3), fill=(40, 60, 200))
    else:
        draw.line((0, 0, w, h), fill=(0, 0, 0), width=4)
        draw.line((0, h, w, 0), fill=(200, 30, 30), width=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def drawings(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("drawings")
    for i in range(3):
        drawing(folder / f"{i}.png", i, (64, 64) if i else (96, 80))
    return folder


@pytest.fixture(scope="module")
def controlnet(farm_cache):
    return models.resolve("tiny-controlnet", "controlnet")


@pytest.fixture(scope="module")
def images_in(drawings):
    return list(inputs.identify(inputs.listed(str(drawings), Path("."))))


def control_job(tiny, controlnet, images, units, **fields):
    return make_job(tiny, controlnets=(controlnet,) * len(units), control=tuple(units),
                    control_images=tuple(images), resize=fields.pop("resize", "stretch"),
                    **fields)


def rendered(worker, jobs, tag):
    """(images, results) of one batch on the worker."""
    paths = tuple(f"images/00000/{tag}-{i}.png" for i in range(len(jobs)))
    results = worker.render(Batch(tuple(jobs), paths))
    assert all(r.ok for r in results), [r.error for r in results]
    return [np.asarray(Image.open(worker.folder.root / p)).astype(int) for p in paths], results


def diffusers_images(checkpoint: str, nets: list[str], jobs, maps, scheduler: dict, xl=False,
                     init=None):
    """diffusers' own ControlNet pipeline on the same inputs, as a user would call it."""
    import diffusers
    import torch

    base = (diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
            ).from_pretrained(checkpoint, torch_dtype=torch.float32)
    loaded = [diffusers.ControlNetModel.from_pretrained(n) for n in nets]
    kind = {(False, False): diffusers.StableDiffusionControlNetPipeline,
            (False, True): diffusers.StableDiffusionControlNetImg2ImgPipeline,
            (True, False): diffusers.StableDiffusionXLControlNetPipeline}[(xl, init is not None)]
    pipe = kind.from_pipe(base, controlnet=loaded if len(loaded) > 1 else loaded[0])
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, scheduler["class"]).from_config(scheduler["config"])
    first, units = jobs[0], jobs[0].control
    several = len(units) > 1
    steer = {"controlnet_conditioning_scale": [u.weight for u in units] if several
             else units[0].weight,
             "control_guidance_start": [u.start for u in units] if several else units[0].start,
             "control_guidance_end": [u.end for u in units] if several else units[0].end,
             "guess_mode": units[0].guess_mode}
    control = [list(m) for m in maps] if several else [m[0] for m in maps]
    images = {"image": init, "control_image": control, "strength": first.denoise} \
        if init is not None else {"image": control, "width": first.width,
                                  "height": first.height}
    out = pipe(prompt=[j.prompt for j in jobs], negative_prompt=[j.negative for j in jobs],
               num_inference_steps=first.steps, guidance_scale=first.cfg,
               generator=[torch.Generator("cpu").manual_seed(j.seed) for j in jobs],
               output_type="np", **images, **steer).images
    return [(np.clip(i, 0, 1) * 255).round().astype(int) for i in out]


def maps_of(job):
    """Each unit's map as a user makes it: the image fitted to the size, then OpenCV's Canny."""
    import cv2

    found = []
    for unit, image in zip(job.control, job.control_images):
        fitted = inputs.fit(inputs.decoded(inputs.read(image.path), image.path), job.width,
                            job.height, job.resize).convert("RGB")
        if unit.preprocessor == "canny":
            edges = cv2.Canny(np.asarray(fitted), unit.low, unit.high)
            fitted = Image.fromarray(np.stack([edges] * 3, axis=-1))
        found.append(fitted)
    return found


# 1. the preprocessor --------------------------------------------------------------------------

def test_canny_is_opencvs_and_none_is_the_image_itself(drawings):
    import cv2

    image = Image.open(drawings / "0.png").convert("RGB")
    edges = preprocessors.detect(image, Control("canny", 100, 200))
    expected = cv2.Canny(np.asarray(image), 100, 200)
    assert np.array_equal(np.asarray(edges), np.stack([expected] * 3, axis=-1))
    assert np.asarray(edges).any()
    looser = preprocessors.detect(image, Control("canny", 5, 10))
    assert np.asarray(looser).sum() >= np.asarray(edges).sum()
    assert np.array_equal(np.asarray(preprocessors.detect(image, Control("none"))),
                          np.asarray(image))


# 2. pixels, against diffusers ------------------------------------------------------------------

def test_a_unit_gives_diffusers_controlnet_pixels_alone_and_in_a_padded_batch(
        worker, tiny, controlnet, images_in):
    """Three jobs with three control images (one of another size, fitted) in one call, and
    one alone in a padded call: each equals diffusers' StableDiffusionControlNetPipeline."""
    unit = Control("canny", 100, 200, 0.8, 0.0, 0.9)
    jobs = [control_job(tiny, controlnet, [image], [unit], seed=s, prompt=f"a fox {s}")
            for s, image in enumerate(images_in)]
    together, results = rendered(worker, jobs, "three")
    scheduler = {"class": json.loads(results[0].scheduler)["class"],
                 "config": json.loads(results[0].scheduler)["config"]}
    reference = diffusers_images(tiny.path, [controlnet.path], jobs,
                                 [maps_of(j) for j in jobs], scheduler)
    for mine, theirs in zip(together, reference):
        assert np.abs(mine - theirs).max() <= 1
    # the middle job again, alone at its slot of a padded call of 3: the same pixels
    paths = ("images/00000/alone.png",)
    alone, = worker.render(Batch((jobs[1],), paths, pad_to=3, positions=(1,)))
    assert alone.pixel_hash == results[1].pixel_hash
    # each image was steered by its own map
    assert not np.array_equal(together[1], together[2])


def test_several_units_give_diffusers_multicontrolnet_pixels(worker, tiny, controlnet,
                                                             images_in):
    units = [Control("canny", 50, 150, 0.7, 0.0, 1.0), Control("none", None, None, 0.4, 0.2, 0.8)]
    jobs = [control_job(tiny, controlnet, [images_in[i], images_in[2 - i]], units, seed=i)
            for i in range(2)]
    mine, results = rendered(worker, jobs, "multi")
    scheduler = json.loads(results[0].scheduler)
    theirs = diffusers_images(tiny.path, [controlnet.path] * 2, jobs, [maps_of(j) for j in jobs],
                              scheduler)
    for a, b in zip(mine, theirs):
        assert np.abs(a - b).max() <= 1


def test_guess_mode_gives_diffusers_pixels(worker, tiny, controlnet, images_in):
    job = control_job(tiny, controlnet, [images_in[0]], [Control("canny", 100, 200, 1.0, 0.0,
                                                                 1.0, True)], cfg=4.0)
    mine, results = rendered(worker, [job], "guess")
    theirs = diffusers_images(tiny.path, [controlnet.path], [job], [maps_of(job)],
                              json.loads(results[0].scheduler))
    assert np.abs(mine[0] - theirs[0]).max() <= 1
    plain, _ = rendered(worker, [dataclasses.replace(job, control=(Control("canny", 100, 200),))],
                        "balanced")
    assert not np.array_equal(mine[0], plain[0])


def test_a_union_controlnet_gives_diffusers_pixels_for_its_control_type(worker, images_in):
    """SDXL's union ControlNet (one model, a control type per unit): diffusers'
    StableDiffusionXLControlNetUnionPipeline with the same maps and control_mode."""
    import diffusers
    import torch

    xl = models.resolve("tiny-xl")
    union = models.resolve("tiny-xl-controlnet-union", "controlnet")
    jobs = [control_job(xl, union, [images_in[i]], [Control("canny", 100, 200, 0.8, 0.0, 0.9,
                                                            False, 3)], seed=i, negative="")
            for i in range(2)]
    mine, results = rendered(worker, jobs, "union")
    scheduler = json.loads(results[0].scheduler)
    base = diffusers.StableDiffusionXLPipeline.from_pretrained(xl.path)
    pipe = diffusers.StableDiffusionXLControlNetUnionPipeline.from_pipe(
        base, controlnet=diffusers.ControlNetUnionModel.from_pretrained(union.path))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, scheduler["class"]).from_config(scheduler["config"])
    theirs = pipe(prompt=[j.prompt for j in jobs], negative_prompt=["", ""],
                  control_image=[[maps_of(j)[0] for j in jobs]], control_mode=[3],
                  controlnet_conditioning_scale=0.8, control_guidance_start=0.0,
                  control_guidance_end=0.9, num_inference_steps=4, guidance_scale=7.0,
                  width=64, height=64, output_type="np",
                  generator=[torch.Generator().manual_seed(j.seed) for j in jobs]).images
    for a, b in zip(mine, theirs):
        assert np.abs(a - (np.clip(b, 0, 1) * 255).round()).max() <= 1
    other, _ = rendered(worker, [dataclasses.replace(jobs[0], control=(
        dataclasses.replace(jobs[0].control[0], mode=1),))], "union-depth")
    assert not np.array_equal(other[0], mine[0])  # the control type steers too


def test_sdxl_and_img2img_give_diffusers_pixels(worker, controlnet, images_in, farm_cache):
    xl = models.resolve("tiny-xl")
    xl_net = models.resolve("tiny-xl-controlnet", "controlnet")
    unit = Control("canny", 100, 200, 1.0, 0.0, 1.0)
    job = control_job(xl, xl_net, [images_in[0]], [unit], negative="")
    mine, results = rendered(worker, [job], "xl")
    theirs = diffusers_images(xl.path, [xl_net.path], [job], [maps_of(job)],
                              json.loads(results[0].scheduler), xl=True)
    assert np.abs(mine[0] - theirs[0]).max() <= 1
    tiny = models.resolve("tiny")
    job = control_job(tiny, controlnet, [images_in[1]], [unit], init=images_in[2], denoise=0.7)
    mine, results = rendered(worker, [job], "i2i")
    init = inputs.fit(inputs.decoded(inputs.read(images_in[2].path), ""), 64, 64, "stretch")
    theirs = diffusers_images(tiny.path, [controlnet.path], [job], [maps_of(job)],
                              json.loads(results[0].scheduler), init=[init])
    assert np.abs(mine[0] - theirs[0]).max() <= 1


def test_weight_0_gives_the_pixels_of_the_job_without_control(worker, tiny, controlnet,
                                                               images_in):
    plain = [make_job(tiny, seed=s) for s in range(2)]
    off = [control_job(tiny, controlnet, [images_in[s]], [Control("canny", 100, 200, 0.0)],
                       seed=s) for s in range(2)]
    on = [control_job(tiny, controlnet, [images_in[s]], [Control("canny", 100, 200, 1.0)],
                      seed=s) for s in range(2)]
    without, _ = rendered(worker, plain, "plain")
    zero, _ = rendered(worker, off, "zero")
    steered, _ = rendered(worker, on, "one")
    for a, b, c in zip(without, zero, steered):
        assert np.array_equal(a, b)
        assert np.abs(a - c).mean() > 1  # a weight of 1 steers visibly
    assert len({plain[0].id, off[0].id, on[0].id}) == 3


# 3. identity ------------------------------------------------------------------------------------

def test_what_enters_the_id_and_what_does_not(tiny, controlnet, images_in):
    unit = Control("canny", 100, 200)
    base = control_job(tiny, controlnet, [images_in[0]], [unit])
    assert base.id != make_job(tiny).id
    changed = [control_job(tiny, controlnet, [images_in[1]], [unit]),
               control_job(tiny, controlnet, [images_in[0]], [Control("canny", 90, 200)]),
               control_job(tiny, controlnet, [images_in[0]], [Control("canny", 100, 200, 0.9)]),
               control_job(tiny, controlnet, [images_in[0]], [Control("canny", 100, 200, 1, .1)]),
               control_job(tiny, controlnet, [images_in[0]], [Control("canny", 100, 200, 1, 0,
                                                                      .9)]),
               control_job(tiny, controlnet, [images_in[0]], [Control("canny", 100, 200, 1, 0, 1,
                                                                      True)]),
               control_job(tiny, controlnet, [images_in[0]], [Control("none")])]
    assert len({base.id, *(j.id for j in changed)}) == 1 + len(changed)
    # the image is an image field: jobs differing only by it share a call
    assert base.batch_key == changed[0].batch_key
    assert all(base.batch_key != j.batch_key for j in changed[1:])
    # the ControlNet is part of what a worker loads
    assert base.loadout.controlnets == (controlnet,)
    assert BY_NAME["controlnets"].role == "load"
    # a job without control keeps the id it always had
    assert make_job(tiny).id == make_job(tiny, controlnets=(), control=(),
                                         control_images=()).id


# 4. recipes --------------------------------------------------------------------------------------

RECIPE = """\
prompt: [a fox, a hare]
seeds: 0-1
size: 64x64
steps: 3
batch_size: 2
control:
  - {model: tiny-controlnet, image: drawings, preprocessor: canny, weight: [0.5, 1.0]}
"""


@pytest.fixture
def project(tmp_path, monkeypatch, drawings):
    folder = recipe_folder(tmp_path, monkeypatch, steer=RECIPE)
    shutil.copytree(drawings, folder / "recipes" / "drawings")  # beside the recipe
    return folder


def test_a_plan_multiplies_units_weights_and_images(project, capsys):
    r = recipes.parse({"prompt": ["a fox", "a hare"], "seeds": "0-1", "size": "64x64",
                       "control": {"model": "tiny-controlnet", "image": "drawings",
                                   "preprocessor": "canny", "weight": [0.5, 1.0],
                                   "end": [0.8, 1.0]}}, "steer", project / "recipes")
    found = {"tiny": models.resolve("tiny"), "tiny-controlnet": models.resolve(
        "tiny-controlnet", "controlnet")}
    jobs = list(planned(r, found))
    assert len(jobs) == r.job_count == 4 * 3 * 2 * 2
    assert {(j.control[0].weight, j.control[0].end) for j in jobs} == {
        (0.5, 0.8), (0.5, 1.0), (1.0, 0.8), (1.0, 1.0)}
    assert len({j.control_images for j in jobs}) == 3
    assert len({j.id for j in jobs}) == len(jobs)
    assert run_inline("plan", "recipe=steer") == 0
    shown = capsys.readouterr().out
    assert "control           2  tiny-controlnet canny x0.5 0-1, tiny-controlnet canny x1 0-1" \
        in shown
    assert "  control.image       3  3 image(s)" in shown
    assert "jobs: 24 " in shown


def test_zip_pairs_each_control_image_with_its_caption(project):
    r = recipes.parse({"prompt": ["a circle", "a bar", "a cross"], "size": "64x64",
                       "control": {"model": "tiny-controlnet", "image": "drawings"},
                       "zip": [["control.image", "prompt"]]}, "zipped", project / "recipes")
    jobs = list(planned(r, {"tiny": models.resolve("tiny"), "tiny-controlnet": models.resolve(
        "tiny-controlnet", "controlnet")}))
    assert [(Path(j.control_images[0].path).name, j.prompt) for j in jobs] == [
        ("0.png", "a circle"), ("1.png", "a bar"), ("2.png", "a cross")]


def test_a_control_run_records_resumes_verifies_replays_and_exports(project, capsys, tmp_path):
    assert run_inline("render", "recipe=steer", "save_detected_map=true") == 0
    folder = project / "outputs" / "steer"
    rows = [r for r in manifest_rows(folder) if r["status"] == "done"]
    assert len(rows) == 24
    image = folder / rows[0]["path"]
    infotext, meta = outputs.read_metadata(image)
    # sd-webui-controlnet's keys, quoted as A1111 quotes a value with commas
    net = models.resolve("tiny-controlnet", "controlnet")
    from farm.hashes import legacy_hash

    expected = (f'ControlNet 0: "Module: canny, Model: tiny-controlnet [{legacy_hash(net)}], '
                f'Weight: {meta["control"][0]["weight"]}, Resize Mode: Just Resize, '
                'Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: '
                '1.0, Pixel Perfect: True, Control Mode: Balanced"')
    assert expected in infotext
    assert meta["controlnets"][0]["identity"] == net.identity
    assert meta["control_images"][0]["identity"] == inputs.identify(
        [meta["control_images"][0]["ref"]]).__next__().identity
    # the detected map beside the image, identified by its pixels in the record
    saved = image.with_suffix(".control0.png")
    assert outputs.pixel_hash(Image.open(saved)) == meta["control_maps"][0]
    # a second render does nothing; verify renders a sample again and finds the same pixels
    capsys.readouterr()
    assert run_inline("render", "recipe=steer") == 0
    assert "all 24 images are already done" in capsys.readouterr().out
    assert run_farm("verify", str(folder), "--sample", "3") == 0
    again = tmp_path / "again"
    assert run_farm("replay", str(image), "--to", str(again)) == 0
    assert outputs.pixel_hash(Image.open(again / image.name)) == rows[0]["pixel_hash"]
    # exports name the units; --where selects by them
    import pyarrow.parquet as pq

    assert run_farm("export", str(folder), "--format", "parquet", "--to", str(tmp_path / "ex"),
                    "--where", "control~x0.5") == 0
    table = pq.read_table(tmp_path / "ex" / "manifest-00000-of-00001.parquet").to_pylist()
    assert len(table) == 12
    assert {row["control"] for row in table} == {"canny 100/200 x0.5 0-1"}
    assert {row["controlnets"] for row in table} == {"tiny-controlnet"}
    assert {row["control_images"] for row in table} == {"0.png", "1.png", "2.png"}
    # and one set of typed columns per unit
    assert {(row["control_0_model"], row["control_0_preprocessor"], row["control_0_weight"],
             row["control_0_start"], row["control_0_end"]) for row in table} == {
        ("tiny-controlnet", "canny", 0.5, 0.0, 1.0)}
    assert {Path(row["control_0_image"]).name for row in table} == {"0.png", "1.png", "2.png"}
    # a contact sheet of weight by control image
    capsys.readouterr()
    assert run_farm("grid", str(folder), "--x", "control", "--y", "control_images",
                    "--where", "prompt=a fox", "--where", "seed=0") == 0
    assert "2 x 3 cells (control by control_images)" in capsys.readouterr().out
    # control images that moved are found by their pixels in a folder named
    assert replayed_after_moving(image, project / "recipes" / "drawings",
                                 tmp_path / "moved") == rows[0]["pixel_hash"]


@pytest.mark.parametrize("change, words", [
    ("control=[{model: tiny-controlnet, image: nowhere.png}]",
     "control[0].image: got 'nowhere.png'; no such file or folder"),
    ("control=[{model: tiny-xl-controlnet, image: drawings}]",
     "cannot steer checkpoint 'tiny': a ControlNet for another architecture (family SDXL"),
    ("control=[{model: tiny-controlnet, image: drawings, preprocessor: depth_anything}]",
     "control[0].preprocessor: got 'depth_anything'"),
    ("control=[{model: tiny-controlnet, image: drawings, start: 0.5, end: 0.5}]",
     "start must be below end"),
    ("control=[{model: tiny-controlnet, image: drawings, wieght: 2}]", "control[0].wieght"),
    ("control=[{model: tiny-controlnet}]", "control[0].image: got None"),
    ("control=[{model: tiny, image: drawings}]", "built-in checkpoint, not a controlnet"),
    ("control=[{model: tiny-controlnet, image: drawings, preprocessor: none, low_threshold: 3}]",
     "thresholds are canny's"),
    ("hires={scale: 1.5}", "cannot be combined with control.image images"),
    ("control=[{model: tiny-controlnet, image: drawings, control_mode: 3}]",
     "an ordinary ControlNet, which takes no control_mode"),
    ("init=drawings/1.png mask=drawings/2.png inpaint_full_res=true",
     "ControlNet units steer the whole picture"),
    ("checkpoint=tiny-xl control=[{model: tiny-xl-controlnet-union, image: drawings}]",
     "give each unit control_mode 0 to 5 (got None)"),
    ("checkpoint=tiny-xl control=[{model: tiny-xl-controlnet-union, image: drawings, "
     "control_mode: 6}]", "control_mode 0 to 5 (got 6)"),
    ("control=[[{model: tiny-controlnet, image: drawings}],"
     "[{model: tiny-controlnet, image: drawings/0.png, weight: 0.5}]]", "takes the same images"),
])
def test_bad_control_input_exits_2_before_anything_is_written(project, capsys, change, words):
    args = change.split(" ") if change.startswith("init=") else change.split(
        " ", 1 if change.startswith("checkpoint=") else 0)
    assert run_inline("render", "recipe=steer", *args) == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert not (project / "outputs").exists()


def test_a_controlnet_from_the_hub_cache_or_a_folder(project, monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    from tests.helpers import fake_hub_cache

    source = models.resolve("tiny-controlnet", "controlnet").path
    cache, commit = fake_hub_cache(tmp_path, source, repo="org/tiny-cn")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub = models.resolve("org/tiny-cn", "controlnet")
    assert hub.identity == f"hub:org/tiny-cn@{commit}"
    shutil.copytree(source, project / "my-cn")  # (models: from the working folder)
    folder = models.resolve(str(project / "my-cn"), "controlnet")
    assert folder.identity == models.resolve("tiny-controlnet", "controlnet").identity
    one = "control=[{model: org/tiny-cn, image: drawings/1.png, weight: 1.0}]"
    assert run_inline("render", "recipe=steer", one, "seeds=0", "prompt=a fox") == 0
    other = "control=[{model: ./my-cn, image: drawings/1.png, weight: 1.0}]"
    assert run_inline("render", "recipe=steer", other, "seeds=0", "prompt=a fox") == 0
    # one .safetensors file (diffusers' layout) with the folder that gives its architecture
    shutil.copy(Path(source) / "diffusion_pytorch_model.safetensors", project / "cn.safetensors")
    single = "control=[{model: {path: cn.safetensors, config: tiny-controlnet}, image: " \
             "drawings/1.png, weight: 1.0}]"
    assert run_inline("render", "recipe=steer", single, "seeds=0", "prompt=a fox") == 0
    hashes = [r["pixel_hash"] for r in manifest_rows(project / "outputs" / "steer")]
    assert len(hashes) == 3 and len(set(hashes)) == 1  # the same weights, the same pixels
    # a VAE or a checkpoint folder is not a ControlNet
    with pytest.raises(models.ModelError, match="not a ControlNet|no config.json"):
        models.resolve(str(Path(models.resolve("tiny").path) / "unet"), "controlnet")
