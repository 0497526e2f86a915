"""Scorers: names and references checked before anything runs, and each score equal to what its
reference computes (transformers' CLIP, diffusers' safety checker, LAION's MLP, imagehash)."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from farm import scorers, tiny
from farm.scorers import ScorerError
from farm.scoring import Scoring
from tests.helpers import fake_hub_cache


def noise_images(count: int, side: int = 64, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
            for _ in range(count)]


@pytest.mark.parametrize("given, problem", [
    ("beauty", "unknown scorer 'beauty'; allowed: aesthetic, clip, nsfw, phash"),
    ("phash:tiny", "phash runs no model"),
    ("aesthetic:tiny,aesthetic:other", "aesthetic is given twice"),
    ([""], "expected a scorer NAME or NAME:REF"),
])
def test_bad_scorer_names_say_what_is_allowed(given, problem):
    with pytest.raises(ScorerError, match=problem):
        scorers.parse(given, "--with")


def test_scorers_are_named_as_a_list_or_comma_separated():
    assert scorers.parse("aesthetic:tiny, phash") == ("aesthetic:tiny", "phash")
    assert scorers.parse(["clip", "clip"]) == ("clip",)


def test_a_pickled_scorer_model_is_refused_with_the_conversion_command(tmp_path):
    weights = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save({"layers.0.weight": torch.zeros(1, 768)}, weights)
    with pytest.raises(ScorerError, match="pickle files can run arbitrary code.*weights_only"):
        scorers.resolve(f"aesthetic:{weights}")
    folder = tmp_path / "checker"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    torch.save({}, folder / "pytorch_model.bin")  # a hub repo as many are: a pickle only
    with pytest.raises(ScorerError, match="pytorch_model.bin is a pickle"):
        scorers.resolve(f"nsfw:{folder}")


def test_a_scorer_model_of_another_architecture_is_refused(tmp_path):
    clip, nsfw = tiny.ensure("tiny-clip"), tiny.ensure("tiny-nsfw")
    with pytest.raises(ScorerError, match="not a CLIP model"):
        scorers.resolve(f"clip:{nsfw}")
    with pytest.raises(ScorerError, match="not a Stable Diffusion safety checker"):
        scorers.resolve(f"nsfw:{clip}")
    from safetensors.torch import save_file

    wide = tmp_path / "wide"  # an MLP for 8-wide embeddings beside a 16-wide CLIP
    shutil.copytree(clip, wide)
    save_file({"layers.0.weight": torch.zeros(1, 8), "layers.0.bias": torch.zeros(1)},
              str(wide / "mlp.safetensors"))
    with pytest.raises(ScorerError, match="the MLP takes 8-wide embeddings, but its CLIP"):
        scorers.resolve(f"aesthetic:{wide}")


def test_a_scorer_from_the_hub_cache_is_the_same_scorer_as_its_folder(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache, _ = fake_hub_cache(tmp_path, tiny.ensure("tiny-clip"), repo="org/tiny-clip")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from_hub = scorers.resolve("clip:org/tiny-clip")
    assert from_hub.identity == scorers.resolve(f"clip:{tiny.ensure('tiny-clip')}").identity
    with pytest.raises(ScorerError, match="not in the local Hugging Face cache"):
        scorers.resolve("clip:org/elsewhere")


def test_clip_score_is_the_cosine_of_transformers_clip_embeddings():
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    scorer = scorers.resolve("clip:tiny")
    images, texts = noise_images(3), ["a red fox", "a lighthouse", "(a cat:1.2)"]
    found = Scoring().score([scorer], images, texts)
    model = CLIPModel.from_pretrained(scorer.path).eval()
    inputs = AutoTokenizer.from_pretrained(scorer.path)(texts, padding="max_length",
                                                        return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(scorer.path)(images=images, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, **pixels)
    cosine = (out.logits_per_image / model.logit_scale.exp()).diagonal()
    assert [f[0].columns["clip_score"] for f in found] == pytest.approx(cosine.tolist(), abs=1e-5)
    assert [f[0].subject for f in found] == [scorers.text_hash(t) for t in texts]


def test_aesthetic_is_laions_mlp_on_the_normalised_clip_embedding():
    """The predictor as its authors wrote it: Linear, Dropout, ... on the L2-normalised
    embedding; the MLP's weights loaded into it by their own names."""
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPModel

    scorer = scorers.resolve("aesthetic:tiny")
    images = noise_images(4, seed=1)
    found = [f[0].columns["aesthetic"] for f in Scoring().score([scorer], images, [""] * 4)]
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Dropout(0.2),
                              torch.nn.Linear(12, 8), torch.nn.Dropout(0.1),
                              torch.nn.Linear(8, 1))
    mlp.load_state_dict({k.removeprefix("layers."): v
                         for k, v in load_file(scorer.path).items()})
    clip = CLIPModel.from_pretrained(scorer.clip).eval()
    pixels = CLIPImageProcessor.from_pretrained(scorer.clip)(images=images, return_tensors="pt")
    with torch.no_grad():
        embedding = clip.visual_projection(clip.vision_model(**pixels).pooler_output)
        expected = mlp.eval()(embedding / embedding.norm(dim=-1, keepdim=True))[:, 0]
    assert found == pytest.approx(expected.tolist(), abs=1e-5)
    assert len(set(found)) == 4  # the images differ, so do their scores


def test_nsfw_flags_what_diffusers_safety_checker_flags_and_never_touches_pixels(tmp_path):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance

    folder = tmp_path / "checker"
    shutil.copytree(tiny.ensure("tiny-nsfw"), folder)
    checker = StableDiffusionSafetyChecker.from_pretrained(folder).eval()
    images = noise_images(12, seed=2)
    pixels = CLIPImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")
    with torch.no_grad():  # thresholds at the median image's closest concept: both verdicts
        embeds = checker.visual_projection(checker.vision_model(pixels["pixel_values"])[1])
        closest = cosine_distance(embeds, checker.concept_embeds).max(dim=1).values
        checker.concept_embeds_weights.fill_(float(closest.median()))
        checker.special_care_embeds_weights.fill_(1.0)
    checker.save_pretrained(folder, safe_serialization=True)
    _, flags = checker(pixels["pixel_values"], [np.zeros((4, 4, 3))] * 12)
    assert 0 < sum(flags) < 12  # both verdicts occur, so the comparison means something
    before = [np.asarray(image).copy() for image in images]
    found = Scoring().score([scorers.resolve(f"nsfw:{folder}")], images, [""] * 12)
    assert [f[0].columns["nsfw"] for f in found] == flags
    assert all((f[0].columns["nsfw_score"] > 0) == flag for f, flag in zip(found, flags))
    assert all((np.asarray(i) == b).all() for i, b in zip(images, before))


def test_phash_is_imagehash_phash_in_16_hex_digits():
    import imagehash

    images = noise_images(3, seed=3)
    found = Scoring().score([scorers.resolve("phash")], images, [""] * 3)
    assert [f[0].columns["phash"] for f in found] == [str(imagehash.phash(i)) for i in images]
    assert all(len(f[0].columns["phash"]) == 16 for f in found)


def test_a_scorer_identity_is_its_models_hashes_and_changes_with_them(tmp_path):
    from safetensors.torch import load_file, save_file

    first = scorers.resolve("aesthetic:tiny")
    assert scorers.resolve("aesthetic:tiny") == first
    other = tmp_path / "other"
    shutil.copytree(tiny.ensure("tiny-aesthetic"), other)
    mlp = load_file(str(other / "aesthetic.safetensors"))
    mlp["layers.4.bias"] += 1.0
    save_file(mlp, str(other / "aesthetic.safetensors"))
    changed = scorers.resolve(f"aesthetic:{other}")
    assert changed.identity != first.identity
    assert json.loads(json.dumps(changed.describe()))["model"] == str(other)
