"""What scoring costs: images/s of each scorer, and `score:` in a recipe against the render.

    python bench/scoring.py [--images 64] [--real 8] [--size 512] [--rounds 3] [--quick]

On this machine's device, prints:
  - the baseline: images/s of reading and decoding the PNGs alone (what any scorer pays);
  - images/s of each built-in tiny scorer and of all four together (what `farm score` runs in
    the tests), in batches of 16 as `farm score` sends them;
  - images/s of the real scorers' architectures with random weights (CLIP ViT-L/14 for
    aesthetic and clip, the safety checker on ViT-L/14), --real images each: the cost a run
    with the real models pays (`--real 0` skips them: building ViT-L/14 takes a minute);
  - the tiny model rendering batches on one worker at 64x64 and 512x512, with and without
    the four tiny scorers on the batch (what `score:` in a recipe does), so that the share of
    render time scoring takes is measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from farm import scorers
from farm.scoring import Scoring


def pngs(count: int, side: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    return encoded


def rate(images: list[bytes], scorer_list, scoring: Scoring, batch: int = 16) -> float:
    """Images/s of decoding and scoring `images` in batches (models loaded before the clock)."""
    scoring.score(scorer_list, [Image.open(io.BytesIO(images[0]))], ["warm up"])
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        chunk = [Image.open(io.BytesIO(b)) for b in images[i:i + batch]]
        scoring.score(scorer_list, chunk, ["a red fox in fresh snow"] * len(chunk))
    return len(images) / (time.perf_counter() - started)


def real_models(root: Path) -> dict[str, str]:
    """The real scorers' architectures with random weights, saved as their models are shared:
    CLIP ViT-L/14 (openai/clip-vit-large-patch14's config), the LAION MLP beside it, the SD
    safety checker on the same vision tower."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from farm import tiny

    def config():  # one each: a model sets its attention implementation on its config
        return CLIPConfig(
            text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                             num_hidden_layers=12, vocab_size=tiny.CLIP_VOCAB,
                             **{k: v for k, v in tiny._text_config().to_dict().items()
                                if k.endswith("token_id")}),
            vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                               num_hidden_layers=24, patch_size=14, image_size=224),
            projection_dim=768)

    processor = CLIPImageProcessor()  # CLIP's own: 224, OpenAI's mean and std
    clip = root / "clip-vit-large-patch14"
    CLIPModel(config()).save_pretrained(clip, safe_serialization=True)
    tiny._tokenizer().save_pretrained(clip)
    processor.save_pretrained(clip)
    widths = (768, 1024, 128, 64, 16, 1)
    save_file({f"layers.{2 * i}.{part}": torch.randn(o, n) * 0.02 if part == "weight"
               else torch.zeros(o) for i, (n, o) in enumerate(zip(widths, widths[1:]))
               for part in ("weight", "bias")}, str(clip / "aesthetic.safetensors"))
    checker = root / "safety-checker"
    StableDiffusionSafetyChecker(config()).save_pretrained(checker, safe_serialization=True)
    processor.save_pretrained(checker)
    return {"aesthetic": f"aesthetic:{clip}", "clip": f"clip:{clip}", "nsfw": f"nsfw:{checker}"}


def render_seconds(worker, checkpoint, side: int, scoring: tuple, batches: int,
                   counter) -> float:
    """Seconds per image of rendering `batches` batches of 8 (20 steps) on one worker, each
    scored on the worker as a recipe's score: does (`scoring`), or not."""
    from farm.jobs import Batch, Job

    started = time.perf_counter()
    for _ in range(batches):
        jobs = tuple(Job(checkpoint, None, prompt="a red fox in fresh snow", negative="",
                         seed=next(counter), sampler="euler", scheduler="normal", steps=20,
                         cfg=7.0, width=side, height=side) for _ in range(8))
        results = worker.render(Batch(jobs, tuple(f"images/00000/{j.seed}.png" for j in jobs),
                                      scorers=scoring))
        assert all(r.ok and len(r.scores) == len(scoring) for r in results)
    return (time.perf_counter() - started) / (8 * batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--real", type=int, default=8, help="images per real architecture")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="renders of each kind")
    parser.add_argument("--quick", action="store_true", help="16 images, 2 real ones")
    args = parser.parse_args()
    if args.quick:
        args.images, args.real, args.rounds = 16, 2, 1
    root = Path(tempfile.mkdtemp(prefix="farm-bench-scoring-"))
    try:
        images = pngs(args.images, args.size)
        scoring = Scoring()
        started = time.perf_counter()
        for data in images:
            Image.open(io.BytesIO(data)).convert("RGB")
        figures = {"decode only (baseline)": args.images / (time.perf_counter() - started)}
        tiny = {name: scorers.resolve(f"{name}:tiny" if name != "phash" else name)
                for name in scorers.KINDS}
        for name, scorer in tiny.items():
            figures[f"{name} (tiny)"] = rate(images, [scorer], scoring)
        figures["all four tiny"] = rate(images, list(tiny.values()), scoring)
        if args.real:
            for name, ref in real_models(root).items():
                figures[f"{name} (real architecture, random weights)"] = rate(
                    images[:args.real], [scorers.resolve(ref)], scoring, batch=args.real)
        print(f"scoring {args.size}x{args.size} PNGs, images/s:")
        for name, value in figures.items():
            print(f"  {name:<52} {value:8.2f}")
        from itertools import count

        from farm import models
        from farm.worker import Worker

        worker, checkpoint, counter = Worker(root / "run"), models.resolve("tiny"), count()
        four = tuple(tiny.values())
        render_seconds(worker, checkpoint, 64, four, 1, counter)  # loaded and warm, once
        seconds = {}
        for side, batches in ((64, 4), (512, 1)):
            rounds = {"plain": [], "scored": []}
            for _ in range(args.rounds):  # in turn, so that drift hits both alike
                rounds["plain"].append(render_seconds(worker, checkpoint, side, (), batches,
                                                      counter))
                rounds["scored"].append(render_seconds(worker, checkpoint, side, four, batches,
                                                       counter))
            plain, scored = (statistics.median(rounds[k]) for k in ("plain", "scored"))
            seconds[side] = {"plain": round(plain, 4), "with_score": round(scored, 4)}
            print(f"tiny at {side}x{side}, 20 steps, {batches} batch(es) of 8 (median of "
                  f"{args.rounds}): "
                  f"{plain:.3f} s/image rendered, {scored:.3f} s/image rendered and scored by "
                  f"the four tiny scorers -> scoring adds {(scored - plain) / plain:.1%}")
        # the whole command: farm score on a run folder (files read, batches dispatched inline,
        # each batch recorded, models loaded included), against the Scoring rate above
        from farm import compose, curation, run
        from farm.schedule import Runtime

        recipe = root / "scored.yaml"
        recipe.write_text(f"prompt: a red fox\nseeds: 0-{args.images - 1}\nsize: 64x64\n"
                          "steps: 2\nbatch_size: 8\n")
        run.render(compose.compose([f"recipe={recipe}", "runtime=inline",
                                    f"outputs={root / 'out'}"]))
        done = curation.score(root / "out" / "scored", ["aesthetic:tiny", "clip:tiny",
                                                        "nsfw:tiny", "phash"],
                              Runtime(kind="inline"))
        figures["farm score, 64x64 run, four tiny, inline"] = done.images_per_second
        print(f"farm score of a run of {done.scored} 64x64 images with the four tiny scorers, "
              f"inline (models loaded included): {done.images_per_second:.1f} images/s")
        print(json.dumps({"images_per_second": {k: round(v, 2) for k, v in figures.items()},
                          "render_seconds_per_image": seconds}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
