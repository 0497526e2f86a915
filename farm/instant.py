"""`instant`: a built-in checkpoint whose pipeline costs nothing, to measure farm's own path.

Its call returns ready-made noise of the job's size at once (shifted by each image's seed, so
that a job's image is its own and the same every time), through everything else farm does:
planning, dispatch, the Ray actors, PNG encoding with metadata, the atomic write, the pixel
hash and the manifest. `bench/driver.py` runs many simulated workers with it to find the
driver's ceiling. Its pictures are noise: it is a measuring instrument, not a model.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

PIPELINE = "InstantPipeline"  # the class its model_index.json names


class InstantPipeline:
    """What render.render calls: a scheduler to configure, and a call that returns images."""

    def __init__(self) -> None:
        from diffusers import EulerDiscreteScheduler

        self.scheduler = EulerDiscreteScheduler()  # configured per batch, as any pipeline's
        self.config = {}
        self.vae = None  # nothing to tile or slice
        self._noise: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, prompt: list[str], width: int, height: int, generator: list,
                 num_inference_steps: int = 1, output_type: str = "np",
                 negative_prompt: list[str] | None = None, guidance_scale: float = 1.0):
        """(B, H, W, 3) floats in [0, 1]: the size's noise, rolled by each image's seed."""
        noise = self._noise.get((height, width))
        if noise is None:
            noise = self._noise[(height, width)] = np.random.default_rng(0).random(
                (height, width, 3), dtype=np.float32)
        images = np.stack([np.roll(noise, g.initial_seed() % (height * width * 3))
                           for g in generator])
        return SimpleNamespace(images=images)
