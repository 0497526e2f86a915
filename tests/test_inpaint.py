"""Inpainting: masks paired with input images, A1111's mask handling around diffusers'
inpainting pipelines, for inpainting checkpoints (9-channel UNets) and ordinary ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from farm import inpaint, inputs, models, outputs
from farm.jobs import Batch
from tests.helpers import (make_job, manifest_rows, recipe_folder, replayed_after_moving, run_farm,
                           run_inline)


def photo(path: Path, seed: int, size=(96, 72)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def mask_file(path: Path, box, size=(96, 72)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.new("L", size)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    mask.save(path)
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Three photos and their masks (a different box each), identified."""
    root = tmp_path_factory.mktemp("pairs")
    found = []
    for i in range(3):
        image = photo(root / "in" / f"{i}.png", i)
        mask = mask_file(root / "masks" / f"{i}.png", (8 + 12 * i, 10, 48 + 12 * i, 44))
        found.append(tuple(inputs.identify([str(image), str(mask)])))
    return found


def masked_job(checkpoint, pair, **fields):
    image, mask = pair
    values = dict(init=image, mask=mask, denoise=0.75, resize="stretch", mask_blur=4,
                  inpaint_full_res=False, inpaint_full_res_padding=None,
                  inpainting_fill="original")
    return make_job(checkpoint, **{**values, **fields})


def rendered(worker, jobs, tag):
    paths = tuple(f"images/00000/{tag}-{i}.png" for i in range(len(jobs)))
    results = worker.render(Batch(tuple(jobs), paths))
    assert all(r.ok for r in results), [r.error for r in results]
    return [np.asarray(Image.open(worker.folder.root / p)).astype(int) for p in paths], results


def diffusers_inpainted(checkpoint, jobs, images, masks, scheduler):
    """diffusers' inpainting pipeline on the same fitted images and masks and seeds."""
    import diffusers
    import torch

    pipe = diffusers.AutoPipelineForInpainting.from_pretrained(checkpoint.path,
                                                               safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, scheduler["class"]).from_config(scheduler["config"])
    first = jobs[0]
    out = pipe(prompt=[j.prompt for j in jobs], negative_prompt=[j.negative for j in jobs],
               image=images, mask_image=masks, strength=first.denoise,
               num_inference_steps=first.steps, guidance_scale=first.cfg, width=first.width,
               height=first.height, output_type="np",
               generator=[torch.Generator("cpu").manual_seed(j.seed) for j in jobs]).images
    return [(np.clip(i, 0, 1) * 255).round().astype(int) for i in out]


def a1111_blur(mask: Image.Image, radius: int) -> np.ndarray:
    """A1111's mask blur, as its processing.py writes it (OpenCV, across then down)."""
    import cv2

    size = 2 * int(2.5 * radius + 0.5) + 1
    pixels = cv2.GaussianBlur(np.array(mask), (size, 1), radius)
    return cv2.GaussianBlur(pixels, (1, size), radius)


# 1. pixels: diffusers inside the mask, the input outside it -------------------------------------

@pytest.mark.parametrize("checkpoint", ["tiny", "tiny-inpaint", "tiny-xl", "tiny-xl-inpaint"])
def test_each_image_keeps_its_own_mask_and_the_input_outside_it(worker, pairs, checkpoint):
    """Three jobs with three masks in one call: inside each (blurred) mask the pixels are
    diffusers' inpainting pipeline's for that image; where the blurred mask is black, the
    input's own (A1111 pastes the original back); between, a blend of the two."""
    model = models.resolve(checkpoint)
    jobs = [masked_job(model, pair, seed=s, prompt=f"a fox {s}") for s, pair in enumerate(pairs)]
    mine, results = rendered(worker, jobs, f"three-{checkpoint}")
    fitted = [inputs.fit(inputs.decoded(inputs.read(i.path), ""), 64, 64, "stretch")
              for i, _ in pairs]
    masks = [inputs.fit(Image.fromarray(a1111_blur(Image.open(m.path).convert("L"), 4)), 64, 64,
                        "stretch") for _, m in pairs]
    theirs = diffusers_inpainted(model, jobs, fitted, masks, json.loads(results[0].scheduler))
    for image, ours, reference, mask in zip(fitted, mine, theirs, masks):
        weight = np.clip(np.asarray(mask, np.float32) * 2, 0, 255)  # A1111's overlay mask
        kept, repainted = weight == 0, weight == 255
        assert kept.sum() > 500 and repainted.sum() > 300
        assert np.array_equal(ours[kept], np.asarray(image).astype(int)[kept])
        assert np.abs(ours[repainted] - reference[repainted]).max() <= 1
        between = ~kept & ~repainted
        blend = (np.asarray(image) * (1 - weight / 255)[..., None]
                 + reference * (weight / 255)[..., None])
        assert np.abs(ours[between] - blend[between]).max() <= 2
    # the middle job alone, at its slot of a padded call: the same pixels
    alone, = worker.render(Batch((jobs[1],), ("images/00000/alone.png",), pad_to=3,
                                 positions=(1,)))
    assert alone.pixel_hash == results[1].pixel_hash
    assert not np.array_equal(mine[0], mine[1])


def test_controlnet_units_steer_an_inpainting_as_diffusers_does(worker, tiny, pairs):
    """ControlNet and mask together: diffusers' StableDiffusionControlNetInpaintPipeline inside
    each mask, the input outside it."""
    import cv2
    import diffusers
    import torch

    from farm.values import Control

    net = models.resolve("tiny-controlnet", "controlnet")
    unit = Control("canny", 100, 200, 0.9)
    jobs = [masked_job(tiny, pair, seed=s, controlnets=(net,), control=(unit,),
                       control_images=(pairs[2 - s][0],)) for s, pair in enumerate(pairs[:2])]
    mine, results = rendered(worker, jobs, "steered")
    fitted = [inputs.fit(inputs.decoded(inputs.read(i.path), ""), 64, 64, "stretch")
              for i, _ in pairs]
    masks = [inputs.fit(Image.fromarray(a1111_blur(Image.open(m.path).convert("L"), 4)), 64, 64,
                        "stretch") for _, m in pairs]
    maps = [Image.fromarray(np.stack([cv2.Canny(np.asarray(fitted[2 - s]), 100, 200)] * 3, -1))
            for s in range(2)]
    pipe = diffusers.AutoPipelineForInpainting.from_pretrained(
        tiny.path, controlnet=diffusers.ControlNetModel.from_pretrained(net.path))
    pipe.set_progress_bar_config(disable=True)
    scheduler = json.loads(results[0].scheduler)
    pipe.scheduler = getattr(diffusers, scheduler["class"]).from_config(scheduler["config"])
    theirs = pipe(prompt=[j.prompt for j in jobs], negative_prompt=[j.negative for j in jobs],
                  image=fitted[:2], mask_image=masks[:2], control_image=maps,
                  controlnet_conditioning_scale=0.9, strength=0.75, num_inference_steps=4,
                  guidance_scale=7.0, width=64, height=64, output_type="np",
                  generator=[torch.Generator().manual_seed(j.seed) for j in jobs]).images
    plain, _ = rendered(worker, [masked_job(tiny, pairs[0])], "unsteered")
    for image, ours, reference, mask in zip(fitted, mine, theirs, masks):
        weight = np.clip(np.asarray(mask, np.float32) * 2, 0, 255)
        kept, repainted = weight == 0, weight == 255
        reference = (np.clip(reference, 0, 1) * 255).round()
        assert np.abs(ours[repainted] - reference[repainted]).max() <= 1
        assert np.array_equal(ours[kept], np.asarray(image).astype(int)[kept])
    repainted = np.clip(np.asarray(masks[0], np.float32) * 2, 0, 255) == 255
    assert np.abs(mine[0][repainted] - plain[0][repainted]).mean() > 1  # it steered


def test_only_masked_renders_the_crop_and_puts_it_back(worker, tiny, pairs):
    job = masked_job(tiny, pairs[0], inpaint_full_res=True, inpaint_full_res_padding=8)
    (image,), _ = rendered(worker, [job], "only")
    original = np.asarray(Image.open(pairs[0][0].path)).astype(int)
    assert image.shape == original.shape  # the input's size, as A1111 gives it back
    blurred = a1111_blur(Image.open(pairs[0][1].path).convert("L"), 4)
    kept = blurred == 0
    assert np.array_equal(image[kept], original[kept])
    assert np.abs(image[blurred == 255] - original[blurred == 255]).mean() > 5  # repainted
    whole, = rendered(worker, [masked_job(tiny, pairs[0])], "whole")[0]
    assert whole.shape == (64, 64, 3)


@pytest.mark.parametrize("region, size, image, expected", [
    # computed by hand from A1111's expand_crop_region
    ((10, 10, 30, 20), (64, 64), (96, 72), (10, 5, 30, 25)),  # too wide: taller, centred
    ((40, 30, 50, 70), (64, 32), (96, 72), (5, 30, 85, 70)),  # too tall: wider, centred
    ((80, 0, 96, 8), (32, 32), (96, 72), (80, 0, 96, 16)),
    ((0, 60, 40, 72), (32, 32), (96, 72), (0, 32, 40, 72)),  # kept inside at the bottom
    ((90, 10, 96, 50), (64, 64), (96, 72), (56, 10, 96, 50)),  # kept inside at the right
])
def test_the_only_masked_crop_is_widened_as_a1111_widens_it(region, size, image, expected):
    assert inpaint.expand_region(region, *size, *image) == expected


def test_fill_paints_the_masked_area_from_its_surroundings(pairs):
    image = Image.open(pairs[0][0].path).convert("RGB")
    mask = Image.open(pairs[0][1].path).convert("L")
    plain = inpaint.prepare(image, mask, 64, 64, "stretch", 4, False, 32, "original")
    filled = inpaint.prepare(image, mask, 64, 64, "stretch", 4, False, 32, "fill")
    inside = np.asarray(plain.mask) > 200
    before, after = (np.asarray(p.image).astype(int) for p in (plain, filled))
    assert np.abs(before[inside] - after[inside]).mean() > 20
    assert after[inside].std() < before[inside].std() / 2  # smooth colours, not the noise


def test_what_enters_the_id(tiny, pairs):
    base = masked_job(tiny, pairs[0])
    others = [masked_job(tiny, (pairs[0][0], pairs[1][1])), masked_job(tiny, pairs[0], mask_blur=8),
              masked_job(tiny, pairs[0], inpaint_full_res=True, inpaint_full_res_padding=32),
              masked_job(tiny, pairs[0], inpainting_fill="fill")]
    plain = make_job(tiny, init=pairs[0][0], denoise=0.75, resize="stretch")
    assert len({base.id, plain.id, *(j.id for j in others)}) == 2 + len(others)
    assert base.batch_key == others[0].batch_key  # masks differ within a call
    assert plain.id == make_job(tiny, init=pairs[0][0], denoise=0.75, resize="stretch",
                                mask=None).id  # img2img jobs keep their ids


def test_a_mask_travels_with_its_batch(worker, tiny, pairs, tmp_path):
    image = shutil.copy(pairs[0][0].path, tmp_path / "a.png")
    mask = shutil.copy(pairs[0][1].path, tmp_path / "a-mask.png")
    found = tuple(inputs.identify([str(image), str(mask)]))
    job = masked_job(tiny, found)
    carried = inputs.carried(Batch((job,), ("images/00000/carried.png",)))
    Path(mask).unlink()
    Path(image).unlink()
    result, = worker.render(carried)
    assert result.ok, result.error


# 2. recipes ---------------------------------------------------------------------------------

RECIPE = """\
checkpoint: [tiny, tiny-inpaint]
prompt: a red fox
init: in
mask: masks
size: 64x64
steps: 3
batch_size: 2
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    folder = recipe_folder(tmp_path, monkeypatch, repaint=RECIPE)
    base = folder / "recipes"
    for i, name in enumerate(["a", "b", "deeper/c"]):
        photo(base / "in" / f"{name}.png", i)
        mask = mask_file(base / "masks" / f"{name}.png", (10, 10 + 5 * i, 50, 50))
        if name == "b":  # a mask may be of another format: paired by its stem
            Image.open(mask).save(mask.with_suffix(".jpg"), quality=100)
            mask.unlink()
    return folder


def test_masks_pair_by_path_and_a_run_records_resumes_verifies_and_replays(project, capsys,
                                                                           tmp_path):
    assert run_inline("render", "recipe=repaint", "inpaint_full_res=true",
                      "inpainting_fill=fill") == 0
    folder = project / "outputs" / "repaint"
    rows = [r for r in manifest_rows(folder) if r["status"] == "done"]
    assert len(rows) == 6
    by_image = {Path(r["params"]["init"]).stem: Path(r["params"]["mask"]) for r in rows}
    assert by_image == {"a": project / "recipes" / "masks" / "a.png",
                        "b": project / "recipes" / "masks" / "b.jpg",
                        "c": project / "recipes" / "masks" / "deeper" / "c.png"}
    image = folder / rows[0]["path"]
    infotext, meta = outputs.read_metadata(image)
    for words in ("Denoising strength: 0.75", "Mask blur: 4", "Inpaint area: Only masked",
                  "Masked area padding: 32", "Masked content: fill"):
        assert words in infotext
    assert meta["mask_identity"] == next(inputs.identify([meta["mask"]])).identity
    capsys.readouterr()
    assert run_inline("render", "recipe=repaint", "inpaint_full_res=true",
                      "inpainting_fill=fill") == 0
    assert "all 6 images are already done" in capsys.readouterr().out
    assert run_farm("verify", str(folder), "--sample", "2") == 0
    assert run_farm("replay", str(image), "--to", str(tmp_path / "again")) == 0
    assert outputs.pixel_hash(Image.open(tmp_path / "again" / image.name)) == \
        rows[0]["pixel_hash"]
    # masks that moved are found by their pixels in a folder named
    assert replayed_after_moving(image, project / "recipes" / "masks",
                                 tmp_path / "moved") == rows[0]["pixel_hash"]


def test_init_items_may_carry_their_masks(project):
    assert run_inline("render", "recipe=repaint", "checkpoint=tiny", "~mask",
                      "init=[{image: in/a.png, mask: masks/a.png}, "
                      "{image: in/deeper, mask: masks/deeper}]") == 0
    rows = manifest_rows(project / "outputs" / "repaint")
    assert sorted(Path(r["params"]["mask"]).name for r in rows) == ["a.png", "c.png"]


@pytest.mark.parametrize("change, words", [
    ("mask=nowhere", "mask: got 'nowhere'; no such file or folder"),
    ("init=in/a.png", None),  # a single image: fine
    ("mask=masks/deeper", "init image"),  # a, b have none there
    ("inpainting_fill=latent_noise", "cannot render A1111's latent noise"),
    ("inpaint_full_res_padding=-1", "inpaint_full_res_padding"),
])
def test_bad_masks_exit_2_before_anything_is_written(project, capsys, change, words):
    code = run_inline("plan", "recipe=repaint", change)
    if words is None:
        assert code == 0
        return
    assert code == 2
    assert words in capsys.readouterr().err
    assert not (project / "outputs").exists()


def test_a_mask_of_another_size_or_no_mask_is_refused(project, capsys):
    mask_file(project / "recipes" / "masks" / "a.png", (0, 0, 9, 9), size=(64, 64))
    assert run_inline("render", "recipe=repaint") == 2
    assert "masks/a.png is 64x64, but its image" in capsys.readouterr().err
    assert run_inline("render", "recipe=repaint", "~mask") == 2
    assert "checkpoint 'tiny-inpaint' is Stable Diffusion 1.x/2.x inpainting" in \
        capsys.readouterr().err
    assert run_inline("render", "recipe=repaint", "checkpoint=tiny", "~init", "~mask",
                      "mask_blur=8") == 2
    assert "mask_blur: got 8; an inpainting setting: set init and mask too" in \
        capsys.readouterr().err
    assert not (project / "outputs").exists()
