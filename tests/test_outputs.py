
import numpy as np
import pytest
from PIL import Image

from farm import outputs
from farm.outputs import RunFolder
from tests.helpers import make_job


def noise(seed=0, size=(64, 64)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def test_png_carries_a1111_parameters_and_farm_json(tmp_path, tiny):
    job = make_job(tiny, prompt="a red fox", negative="cartoon", seed=3, sampler="dpmpp_2m",
                   scheduler="karras", steps=20, cfg=7.0, width=64, height=64)
    path = tmp_path / "x.png"
    outputs.write_image(noise(), path, job)
    parameters, farm = outputs.read_metadata(path)
    prompt, negative, settings = parameters.split("\n")
    assert prompt == "a red fox"
    assert negative == "Negative prompt: cartoon"
    assert settings.startswith("Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, "
                               "CFG scale: 7, Seed: 3, Size: 64x64, "
                               f"Model hash: {tiny.identity[:10]}, Model: tiny")
    for key in ("id", "checkpoint", "vae", "prompt", "negative", "seed", "sampler", "scheduler",
                "steps", "cfg", "width", "height"):
        assert key in farm
    assert farm["id"] == job.id and farm["seed"] == 3 and farm["checkpoint"] == "tiny"
    assert farm["checkpoint_identity"] == tiny.identity


def test_empty_negative_prompt_line_is_left_out(tmp_path, tiny):
    path = tmp_path / "x.png"
    outputs.write_image(noise(), path, make_job(tiny, negative=""))
    parameters, _ = outputs.read_metadata(path)
    assert "Negative prompt" not in parameters
    assert parameters.split("\n")[1].startswith("Steps: 4")


def test_vae_is_named_in_the_infotext(tmp_path, tiny, tiny_vae):
    path = tmp_path / "x.png"
    outputs.write_image(noise(), path, make_job(tiny, vae=tiny_vae))
    parameters, farm = outputs.read_metadata(path)
    assert f"VAE hash: {tiny_vae.identity[:10]}, VAE: tiny-vae" in parameters
    assert farm["vae"] == "tiny-vae"


def test_pixel_hash_ignores_png_encoding(tmp_path):
    image = noise()
    image.save(tmp_path / "a.png", compress_level=0)
    image.save(tmp_path / "b.png", compress_level=9)
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    hashes = {outputs.pixel_hash(Image.open(tmp_path / name)) for name in ("a.png", "b.png")}
    assert hashes == {outputs.pixel_hash(image)}
    assert outputs.pixel_hash(noise(1)) != outputs.pixel_hash(image)


@pytest.mark.parametrize("kind, quality", [("jpeg", 85), ("webp", 80), ("webp", 100)])
def test_jpeg_and_webp_carry_infotext_in_exif_and_farm_json_beside(tmp_path, tiny, kind,
                                                                    quality):
    from farm.jobs import ImageFormat

    fmt = ImageFormat(kind, quality)
    job = make_job(tiny, prompt="a fox, ünïcode", negative="cartoon")
    path = tmp_path / f"x{fmt.suffix}"
    stored = outputs.write_image(noise(), path, job, fmt)
    with Image.open(path) as image:
        assert image.format == kind.upper()
        assert stored == outputs.pixel_hash(image)  # the hash of what the file decodes to
    assert (stored == outputs.pixel_hash(noise())) == fmt.lossless  # webp 100 is lossless
    parameters, farm = outputs.read_metadata(path)
    assert parameters.split("\n")[:2] == ["a fox, ünïcode", "Negative prompt: cartoon"]
    assert farm["id"] == job.id and (farm["format"], farm["quality"]) == (kind, quality)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.json", path.name])


def test_png_compression_changes_size_not_pixels(tmp_path, tiny):
    from farm.jobs import ImageFormat

    flat = Image.new("RGB", (64, 64), "gray")
    fast = outputs.write_image(flat, tmp_path / "a.png", make_job(tiny), ImageFormat(
        png_compression=0))
    small = outputs.write_image(flat, tmp_path / "b.png", make_job(tiny), ImageFormat(
        png_compression=9))
    assert fast == small
    assert (tmp_path / "a.png").stat().st_size > 2 * (tmp_path / "b.png").stat().st_size


def test_write_leaves_no_partial_file_and_replaces_atomically(tmp_path, tiny):
    path = tmp_path / "images" / "00000" / "x.png"
    outputs.write_image(noise(0), path, make_job(tiny))
    outputs.write_image(noise(1), path, make_job(tiny))
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]
    assert outputs.pixel_hash(Image.open(path)) == outputs.pixel_hash(noise(1))


@pytest.mark.parametrize("prompt", [
    "../../etc/passwd", "/absolute/path", "a\\b\\..\\c", "...", "", "   ",
    "名前 ☃ emoji 🦊", "a" * 500, "CON", "x/../../../y",
])
def test_names_built_from_prompts_stay_inside_the_run_folder(tmp_path, tiny, prompt):
    folder = RunFolder(tmp_path / "run")
    relative = folder.image_path(12345, make_job(tiny, prompt=prompt or "x"))
    name = relative.split("/")[-1]
    assert relative.startswith("images/00001/") and relative.count("/") == 2
    assert ".." not in name.removesuffix(".png") and len(name) < 80
    assert folder.absolute(relative).is_relative_to((tmp_path / "run").resolve())


def test_slug_is_lowercase_ascii():
    assert outputs.slug("A Red Fox, in SNOW!") == "a-red-fox-in-snow"
    assert outputs.slug("☃☃☃") == "image"


def test_images_are_sharded_by_ten_thousand(tmp_path, tiny):
    folder = RunFolder(tmp_path)
    job = make_job(tiny)
    assert folder.image_path(9_999, job).startswith("images/00000/")
    assert folder.image_path(10_000, job).startswith("images/00001/")
    assert folder.image_path(123_456_789, job).startswith("images/12345/")


def test_absolute_refuses_paths_outside(tmp_path):
    with pytest.raises(ValueError, match="outside the run folder"):
        RunFolder(tmp_path / "run").absolute("../other/x.png")


def test_partial_files_are_removed(tmp_path):
    folder = RunFolder(tmp_path)
    shard = tmp_path / "images" / "00000"
    shard.mkdir(parents=True)
    (shard / "a.png.partial").write_bytes(b"half")
    (shard / "b.png").write_bytes(b"whole")
    assert folder.remove_partial_files() == 1
    assert [p.name for p in shard.iterdir()] == ["b.png"]


def test_only_one_writer_holds_a_run_folder(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.locked(), pytest.raises(outputs.FolderBusy, match="another farm render"):
        with RunFolder(tmp_path / "run").locked():
            pass
    with folder.locked():
        pass


def test_lora_names_lose_separators_in_the_hash_list_and_recipe_loras_become_tags(tiny):
    """AUTOMATIC1111 drops ':' and ',' from the names of its `Lora hashes` list (its paste
    handler splits on them); a LoRA the recipe set (no tag in the prompt) is written as a tag."""
    from farm.jobs import Lora, Model

    odd = Lora(Model("loras/my,lo:ra.safetensors", "/nowhere", "ab" * 32), 0.5)
    ink = Lora(Model("ink", "/nowhere/ink.safetensors", "cd" * 32), 0.8)
    text = outputs.infotext(make_job(tiny, loras=(odd, ink), prompt="a fox"))
    assert 'Lora hashes: "mylora: abababababab, ink: cdcdcdcdcdcd"' in text
    assert text.startswith("a fox <lora:ink:0.8>\n")  # (a name with ':' cannot be a tag)
