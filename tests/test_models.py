import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from farm import hashes, models
from farm.models import ModelError
from tests.helpers import fake_hub_cache, run_farm


def test_tiny_resolves_to_its_folder_and_content_hash(tiny):
    assert tiny.ref == "tiny"
    assert tiny.identity == hashes.folder_hash(Path(tiny.path))
    assert len(tiny.identity) == 64 and tiny.short_hash == tiny.identity[:10]


def test_a_copied_folder_has_the_same_identity(tiny, tmp_path):
    copy = shutil.copytree(tiny.path, tmp_path / "my-model")
    model = models.resolve(str(copy), "checkpoint")
    assert model.identity == tiny.identity and model.path == str(copy)


@pytest.mark.parametrize("ref, field, words", [
    ("tiny-vae", "checkpoint", "built-in vae, not a checkpoint"),
    ("tiny", "vae", "built-in checkpoint, not a vae"),
    ("models/sd15.ckpt", "checkpoint", "pickle files can run arbitrary code"),
    ("./vae.pt", "vae", "never loads them; convert it to .safetensors"),
    ("./missing-folder", "checkpoint", "no such file or folder"),
    ("/no/such/model.safetensors", "checkpoint", "no such file or folder"),
    ("just words", "checkpoint", "not a model reference"),
])
def test_bad_references_are_refused_with_a_reason(ref, field, words):
    with pytest.raises(ModelError) as error:
        models.resolve(ref, field)
    assert str(error.value).startswith(f"{field}: {ref!r}: ")
    assert words in str(error.value)


def test_a_folder_that_is_not_a_diffusers_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="not a diffusers checkpoint folder: it has no "
                                         "model_index.json"):
        models.resolve(str(tmp_path), "checkpoint")


def test_a_checkpoint_folder_can_serve_as_vae(tiny):
    vae = models.resolve(tiny.path, "vae")
    assert vae.identity == tiny.identity


def test_hub_ids_load_offline_from_the_local_cache(tiny, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache, commit = fake_hub_cache(tmp_path, tiny.path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = models.resolve("org/tiny-sd", "checkpoint")
    assert model.identity == f"hub:org/tiny-sd@{commit}"
    assert model.short_hash == commit[:10]
    assert (models.Path(model.path) / "model_index.json").is_file()
    pinned = models.resolve(f"org/tiny-sd@{commit}", "checkpoint")
    assert pinned.identity == model.identity


def test_a_hub_id_that_is_not_cached_says_how_to_download(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="huggingface-cli download org/absent --revision v2"):
        models.resolve("org/absent@v2", "checkpoint")


def test_file_hashes_are_cached_by_path_size_and_mtime(tmp_path):
    import hashlib
    import json

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x" * 1000)
    assert models.file_hash(weights) == hashlib.sha256(b"x" * 1000).hexdigest()
    cache_file = models.tiny.cache_dir() / "hashes.json"
    cache = json.loads(cache_file.read_text())
    (key,) = [k for k in cache if k.startswith(str(weights.resolve()))]
    cache[key] = "cached"
    cache_file.write_text(json.dumps(cache))
    assert models.file_hash(weights) == "cached"  # not read again
    weights.write_bytes(b"y" * 1001)  # new size: hashed again
    assert models.file_hash(weights) == hashlib.sha256(b"y" * 1001).hexdigest()


def test_families_of_the_built_in_checkpoints(tiny):
    assert models.family(tiny) == models.Family("StableDiffusionPipeline")
    xl = models.resolve("tiny-xl", "checkpoint")
    assert models.family(xl) == models.Family("StableDiffusionXLPipeline", zero_negative=True)
    flux, schnell = models.resolve("tiny-flux"), models.resolve("tiny-flux-schnell")
    assert models.family(flux) == models.Family("FluxPipeline", guidance_embeds=True)
    assert models.family(schnell) == models.Family("FluxPipeline")


@pytest.fixture(scope="module")
def single_files(tiny, tiny_vae, tmp_path_factory):
    """tiny as one original-layout checkpoint file, and tiny-vae as one VAE file in each
    layout: diffusers' own (its folder's weights) and the original one shared VAEs have."""
    import json

    from safetensors.torch import load_file, save_file

    from tests.ldm import vae_to_ldm, write_single_file

    folder = tmp_path_factory.mktemp("single")
    write_single_file(models.Path(tiny.path), folder / "tiny.safetensors")
    weights = models.Path(tiny_vae.path) / "diffusion_pytorch_model.safetensors"
    shutil.copy(weights, folder / "vae.safetensors")
    config = json.loads((models.Path(tiny_vae.path) / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in vae_to_ldm(load_file(weights), config).items()},
              folder / "vae-original.safetensors")
    return folder


def test_a_single_file_checkpoint_resolves_with_its_config(single_files, tiny):
    import hashlib

    ref = f"{single_files / 'tiny.safetensors'}?config=tiny"
    model = models.resolve(ref, "checkpoint")
    sha = hashlib.sha256((single_files / "tiny.safetensors").read_bytes()).hexdigest()
    assert model.short_hash == sha[:10]  # AUTOMATIC1111's "Model hash"
    assert model.config == tiny.path and model.name == "tiny"
    assert models.family(model).pipeline == "StableDiffusionPipeline"


@pytest.mark.parametrize("ref, words", [
    ("{dir}/tiny.safetensors", "needs the diffusers config of its architecture"),
    ("{dir}/missing.safetensors?config=tiny", "no such file"),
    ("{dir}/tiny.safetensors?config=./no-such-config", "checkpoint.config: './no-such-config'"),
    ("{dir}/tiny.ckpt?config=tiny", "must be a .safetensors file"),
])
def test_single_file_errors(single_files, ref, words):
    with pytest.raises(ModelError, match=re.escape(words)):
        models.resolve(ref.format(dir=single_files), "checkpoint")


def test_single_files_render_the_same_pixels_as_their_folders(single_files, tiny, tiny_vae,
                                                               tmp_path):
    from farm.jobs import Batch
    from farm.worker import Device, Worker
    from tests.helpers import make_job

    import diffusers

    checkpoint = models.resolve(f"{single_files / 'tiny.safetensors'}?config=tiny")
    original = models.resolve(f"{single_files / 'vae-original.safetensors'}?config=tiny-vae",
                              "vae")
    worker = Worker(tmp_path, device=Device("cpu", "float32"))
    pairs = [((tiny, None), (checkpoint, None)), ((tiny, tiny_vae), (tiny, original))]
    if tuple(map(int, diffusers.__version__.split(".")[:2])) >= (0, 42):  # older: LDM only
        vae = models.resolve(f"{single_files / 'vae.safetensors'}?config=tiny-vae", "vae")
        pairs.append(((tiny, tiny_vae), (tiny, vae)))
    for n, (folder_form, file_form) in enumerate(pairs):
        a, = worker.render(Batch((make_job(*folder_form[:1], vae=folder_form[1]),),
                                 (f"images/{n}-folder.png",)))
        b, = worker.render(Batch((make_job(*file_form[:1], vae=file_form[1]),),
                                 (f"images/{n}-file.png",)))
        assert a.ok and b.ok, (a.error, b.error)
        assert a.pixel_hash == b.pixel_hash


def test_a_checkpoint_folder_missing_a_component_is_refused(tmp_path, tiny):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny.path, incomplete)
    shutil.rmtree(incomplete / "text_encoder")
    with pytest.raises(models.ModelError, match="names a text_encoder .* has no text_encoder/"):
        models.resolve(str(incomplete))
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny.path, pickled)
    weights = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(models.ModelError, match="unet/ has no .safetensors weights .*"
                       "diffusion_pytorch_model.bin is a pickle"):
        models.resolve(str(pickled))


SD15_REPO = [  # what stable-diffusion-v1-5 holds: 20 GB, of which a pipeline loads about 5
    "model_index.json", "README.md", "v1-5-pruned.safetensors", "v1-5-pruned-emaonly.safetensors",
    "v1-5-pruned.ckpt", "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json", "safety_checker/model.safetensors",
    "safety_checker/model.fp16.safetensors", "safety_checker/pytorch_model.bin",
    "scheduler/scheduler_config.json", "text_encoder/config.json",
    "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors"]
SD15_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
              "feature_extractor": ["transformers", "CLIPImageProcessor"],
              "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
              "scheduler": ["diffusers", "PNDMScheduler"],
              "text_encoder": ["transformers", "CLIPTextModel"],
              "tokenizer": ["transformers", "CLIPTokenizer"],
              "unet": ["diffusers", "UNet2DConditionModel"],
              "vae": ["diffusers", "AutoencoderKL"], "requires_safety_checker": True}


def test_half_precision_jobs_fetch_the_fp16_variant_only():
    from huggingface_hub.utils import filter_repo_objects

    allow, ignore = models.hub_patterns(SD15_INDEX, "fp16")
    assert set(filter_repo_objects(SD15_REPO, allow_patterns=allow, ignore_patterns=ignore)) == {
        "model_index.json", "feature_extractor/preprocessor_config.json",
        "scheduler/scheduler_config.json", "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors", "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json", "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors"}


def test_a_cached_fp16_variant_loads_under_the_same_identity(tiny, tmp_path, monkeypatch):
    """A repository with fp16 files for every component: a half-precision recipe takes them
    (same commit, same identity); one without them keeps the default weights."""
    import torch
    from huggingface_hub import constants
    from safetensors.torch import load_file, save_file

    source = tmp_path / "source"
    shutil.copytree(tiny.path, source)
    for weights in source.glob("*/*.safetensors"):
        pt = {"format": "pt"}  # as published files say (transformers 4 reads it)
        save_file({k: v.half().contiguous() for k, v in load_file(weights).items()},
                  weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")),
                  metadata=pt)
        save_file({k: torch.zeros_like(v) for k, v in load_file(weights).items()}, weights,
                  metadata=pt)
    cache, commit = fake_hub_cache(tmp_path, source)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    half = models.resolve("org/tiny-sd", "checkpoint", variant="fp16")
    full = models.resolve("org/tiny-sd", "checkpoint")
    assert half.variant == "fp16" and full.variant is None
    assert half.identity == full.identity == f"hub:org/tiny-sd@{commit}"
    unet = models.load_pipeline(half, "cpu", torch.float32).unet
    original = models.load_pipeline(tiny, "cpu", torch.float32).unet
    weight = next(iter(original.state_dict()))
    assert torch.equal(unet.state_dict()[weight], original.state_dict()[weight].half().float())
    only_half = tmp_path / "only-half"  # a cache a half-precision render filled: verify and
    shutil.copytree(cache, only_half)  # replay (which ask for no variant) still load it
    for weights in only_half.rglob("*.safetensors"):
        if ".fp16." not in weights.name:
            weights.unlink()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(only_half))
    assert models.resolve("org/tiny-sd", "checkpoint").variant == "fp16"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    for weights in source.glob("unet/*.fp16.safetensors"):  # one component lacks the variant
        (cache / f"models--org--tiny-sd/snapshots/{commit}" / weights.relative_to(source)
         ).unlink()
    assert models.resolve("org/tiny-sd", "checkpoint", variant="fp16").variant is None


def test_a_hub_pipeline_fetches_only_what_it_loads():
    """The patterns go to huggingface_hub's own filter (what snapshot_download applies)."""
    from huggingface_hub.utils import filter_repo_objects

    def fetched(files, index):
        allow, ignore = models.hub_patterns(index)
        return set(filter_repo_objects(files, allow_patterns=allow, ignore_patterns=ignore))

    assert fetched(SD15_REPO, SD15_INDEX) == {  # never the safety checker's 1.2 GB
        "model_index.json", "feature_extractor/preprocessor_config.json",
        "scheduler/scheduler_config.json", "text_encoder/config.json",
        "text_encoder/model.safetensors", "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors"}
    vae_repo = ["config.json", "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin",
                "README.md", "extra/other.safetensors"]
    assert fetched(vae_repo, None) == {
        "config.json", "diffusion_pytorch_model.safetensors"}
    union_repo = ["config.json", "config_promax.json", "diffusion_pytorch_model.safetensors",
                  "diffusion_pytorch_model_promax.safetensors", "sdxl_vae.safetensors",
                  "images/000.png"]
    assert fetched(union_repo, None) == {  # one ControlNet, not its 2.5 GB sibling
        "config.json", "config_promax.json", "diffusion_pytorch_model.safetensors"}
    sharded = ["config.json", "diffusion_pytorch_model.safetensors.index.json",
               "diffusion_pytorch_model-00001-of-00002.safetensors",
               "diffusion_pytorch_model-00002-of-00002.safetensors"]
    assert fetched(sharded, None) == set(sharded)


def test_a_checkpoints_safety_checker_never_blacks_out_an_image(tiny, tmp_path):
    """SD 1.5's repository ships a safety checker, which replaces each image it flags with black
    pixels. farm renders without it, as A1111, ComfyUI and InvokeAI do: with a tiny checker
    that flags everything, diffusers' own call gives black images, farm's do not."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=2,
                 num_hidden_layers=1)
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(CLIPConfig(
        text_config=small, vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=16))
    with torch.no_grad():  # every concept's threshold below any similarity: all flagged
        checker.concept_embeds_weights.fill_(-10.0)
    base = StableDiffusionPipeline.from_pretrained(tiny.path)
    components = {**base.components, "safety_checker": checker,
                  "feature_extractor": CLIPImageProcessor(size=32, crop_size=32)}
    flagged = StableDiffusionPipeline(**components, requires_safety_checker=True)
    flagged.save_pretrained(tmp_path / "sd15-like", safe_serialization=True)
    flagged.set_progress_bar_config(disable=True)
    theirs = flagged("a fox", num_inference_steps=2, width=64, height=64, output_type="np",
                     generator=torch.Generator().manual_seed(0))
    assert theirs.nsfw_content_detected == [True] and not theirs.images.any()
    common = f"checkpoint: {tmp_path / 'sd15-like'}\nprompt: a fox\nsize: 64x64\nsteps: 2\n"
    stages = {"r": "seeds: 0-1\n",  # text to image, then hires and img2img from its images
              "hires": "hires: {scale: 1.5, steps: 1}\n",
              "again": f"init: {tmp_path / 'out' / 'r' / 'images'}\ndenoise: 0.5\n"}
    for name, extra in stages.items():
        (tmp_path / f"{name}.yaml").write_text(common + extra)
        assert run_farm("render", f"recipe={tmp_path / name}.yaml", "runtime=inline",
                        f"outputs={tmp_path / 'out'}") == 0
        images = sorted((tmp_path / "out" / name).glob("images/*/*.png"))
        assert images, name
        for image in images:  # a picture, not a black square
            assert np.asarray(Image.open(image)).std() > 0, name


def test_the_instant_checkpoint_renders_noise_of_each_jobs_size_the_same_every_time(tmp_path):
    """farm's measuring pipeline: its images cost nothing, have the job's size, differ by seed
    and are the same for the same job (so resume and verify hold for it too)."""
    import numpy as np

    for name in ("a", "b"):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text("checkpoint: instant\nprompt: a fox\nseeds: 0-3\nsize: 48x32\n"
                          "batch_size: 2\n")
        assert run_farm("render", f"recipe={recipe}", "runtime=inline",
                        f"outputs={tmp_path / 'out'}") == 0
    from tests.helpers import manifest_rows

    first, second = (manifest_rows(tmp_path / "out" / n) for n in ("a", "b"))
    assert [r["pixel_hash"] for r in first] == [r["pixel_hash"] for r in second]
    assert len({r["pixel_hash"] for r in first}) == 4
    image = np.asarray(Image.open(tmp_path / "out" / "a" / first[0]["path"]))
    assert image.shape == (32, 48, 3) and image.std() > 50  # noise
    assert first[0]["params"]["steps"] == 1  # its family's default
    assert run_farm("verify", str(tmp_path / "out" / "a"), "--all") == 0
