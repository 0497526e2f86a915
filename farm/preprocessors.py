"""ControlNet preprocessors: an input image, fitted to the job's size, -> the map its ControlNet
takes (sd-webui-controlnet's "modules"). `none` takes a ready-made map as it is; `canny` finds
edges with OpenCV's Canny, as sd-webui-controlnet and diffusers' examples do, on the RGB image
at its own size (that extension's "pixel perfect")."""

from __future__ import annotations

import numpy as np
from PIL import Image

from farm.values import Control


def detect(image: Image.Image, unit: Control) -> Image.Image:
    """The detected map of an RGB image for one unit, as an RGB image of its size."""
    rgb = image.convert("RGB")
    if unit.preprocessor == "none":
        return rgb
    if unit.preprocessor == "canny":
        import cv2

        edges = cv2.Canny(np.asarray(rgb), unit.low, unit.high)
        return Image.fromarray(edges).convert("RGB")
    raise ValueError(f"unknown preprocessor {unit.preprocessor!r}")
