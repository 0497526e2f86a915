"""Scoring images: each scorer's model loaded once, run on batches of images.

A plain class kept by the render worker (worker.py), which scores a recipe's `score:` images
after rendering them and `farm score`'s batches, inline or as a Ray actor. Every scorer takes
the images (and their captions) of a batch and returns one Score per image.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from farm.scorers import Score, Scorer, mlp_layers, text_hash


Run = Callable[[Sequence[Image.Image], Sequence[str]], list[dict]]


class Scoring:
    """Scorers' models, each loaded on first use and kept (by identity)."""

    def __init__(self, device: str = "cpu"):
        from farm import libraries

        libraries.quiet()
        self.device = device
        self._runs: dict[str, Run] = {}

    def score(self, scorers: Sequence[Scorer], images: Sequence[Image.Image],
              texts: Sequence[str]) -> list[list[Score]]:
        """Every scorer's Score for each image (in order): one model call per scorer."""
        images = [image.convert("RGB") for image in images]
        found: list[list[Score]] = [[] for _ in images]
        for scorer in scorers:
            if scorer.identity not in self._runs:
                self._runs[scorer.identity] = LOADERS[scorer.name](scorer, self.device)
            columns = self._runs[scorer.identity](images, texts)
            for i, values in enumerate(columns):
                subject = text_hash(texts[i]) if scorer.kind.text else ""
                found[i].append(Score(scorer.name, scorer.identity, subject,
                                      json.dumps(values)))
        return found


def _phash(scorer: Scorer, device: str) -> Run:
    """A 64-bit DCT perceptual hash (imagehash.phash), as 16 hex digits."""
    import imagehash

    return lambda images, texts: [{"phash": str(imagehash.phash(image))} for image in images]


def _clip(scorer: Scorer, device: str) -> Run:
    """Cosine similarity of the image's and its caption's CLIP embeddings (raw, -1 to 1)."""
    import torch
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(scorer.path, use_safetensors=True).to(device).eval()
    processor = CLIPImageProcessor.from_pretrained(scorer.path)
    tokenizer = AutoTokenizer.from_pretrained(scorer.path)
    length = model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def run(images, texts):
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        seen = model.visual_projection(model.vision_model(pixel_values=pixels.to(device))
                                       .pooler_output)  # (B, projection)
        tokens = tokenizer(list(texts), padding="max_length", truncation=True,
                           max_length=length, return_tensors="pt").to(device)
        read = model.text_projection(model.text_model(**tokens).pooler_output)
        cosine = torch.nn.functional.cosine_similarity(seen, read, dim=-1)
        return [{"clip_score": round(float(c), 6)} for c in cosine.cpu()]

    return run


def _aesthetic(scorer: Scorer, device: str) -> Run:
    """LAION's aesthetic predictor v2: the MLP on the L2-normalised CLIP image embedding."""
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    with open(f"{scorer.clip}/config.json") as f:  # a CLIPModel's: its projection is on top
        projection = json.load(f)["projection_dim"]
    vision = CLIPVisionModelWithProjection.from_pretrained(  # the text tower is not loaded
        scorer.clip, use_safetensors=True, projection_dim=projection).to(device).eval()
    processor = CLIPImageProcessor.from_pretrained(scorer.clip)
    tensors = load_file(scorer.path, device=device)
    layers = [(tensors[f"{name}.weight"], tensors.get(f"{name}.bias"))
              for name in mlp_layers({k: {"shape": list(v.shape)} for k, v in tensors.items()})]

    @torch.no_grad()
    def run(images, texts):
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        embedding = vision(pixel_values=pixels.to(device)).image_embeds  # (B, 768)
        x = embedding / embedding.norm(dim=-1, keepdim=True)
        for weight, bias in layers:  # linear layers, dropout between them (off at inference)
            x = torch.nn.functional.linear(x, weight, bias)
        return [{"aesthetic": round(float(v), 6)} for v in x[:, 0].cpu()]

    return run


def _nsfw(scorer: Scorer, device: str) -> Run:
    """Stable Diffusion's safety checker, without touching the image: its flag, and the largest
    of its concept scores (cosine to a concept minus that concept's threshold, as it rounds
    them; above 0 is what makes it flag)."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker, cosine_distance)

    checker = StableDiffusionSafetyChecker.from_pretrained(
        scorer.path, use_safetensors=True).to(device).eval()
    processor = _processor(Path(scorer.path), checker.config.vision_config.image_size)
    special_weights = checker.special_care_embeds_weights.float().cpu().tolist()
    concept_weights = checker.concept_embeds_weights.float().cpu().tolist()

    @torch.no_grad()
    def run(images, texts):
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        embeds = checker.visual_projection(checker.vision_model(pixels.to(device))[1])
        # float32 numpy values, rounded as the checker rounds them, so the flag is its flag
        special = cosine_distance(embeds, checker.special_care_embeds).float().cpu().numpy()
        concepts = cosine_distance(embeds, checker.concept_embeds).float().cpu().numpy()
        found = []
        for i in range(len(images)):
            adjustment = 0.0  # raised once a special-care concept is seen, as the checker does
            for j, threshold in enumerate(special_weights):
                if round(special[i][j] - threshold + adjustment, 3) > 0:
                    adjustment = 0.01
            scores = [round(concepts[i][j] - threshold + adjustment, 3)
                      for j, threshold in enumerate(concept_weights)]
            found.append({"nsfw": bool(max(scores) > 0),
                          "nsfw_score": round(float(max(scores)), 3)})
        return found

    return run


def _processor(folder: Path, side: int):
    """A checker's image processor: its own, or its checkpoint's feature_extractor/ beside it
    (SD 1.5's layout), else CLIP's standard one at the model's image size."""
    from transformers import CLIPImageProcessor

    for place in (folder, folder.parent / "feature_extractor"):
        if (place / "preprocessor_config.json").is_file():
            return CLIPImageProcessor.from_pretrained(place)
    return CLIPImageProcessor(size={"shortest_edge": side},
                              crop_size={"height": side, "width": side})


LOADERS: dict[str, Callable[[Scorer, str], Run]] = {
    "aesthetic": _aesthetic, "clip": _clip, "nsfw": _nsfw, "phash": _phash}
