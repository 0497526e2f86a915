"""Inpainting's image work, as AUTOMATIC1111 does it around the sampler: the mask blurred, the
input (and mask) fitted or, for "only masked", the masked area cropped with its padding and
scaled to the render size; after the render, the result put back into the input and the input's
own pixels pasted over everything the blurred mask keeps. The denoising between is diffusers'
inpainting pipeline's (render.py). White in a mask repaints, black keeps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from farm import inputs


@dataclass
class Prepared:
    """One job's inpainting inputs: what the pipeline takes, and how its result goes back."""

    image: Image.Image  # RGB at the render size (cropped and scaled for "only masked")
    mask: Image.Image  # L at the render size
    overlay: Image.Image  # RGBA at the output size: the input where the blurred mask keeps it
    paste: tuple[int, int, int, int] | None  # (x, y, w, h) of the crop in the input, or None


def blurred(mask: Image.Image, radius: int) -> Image.Image:
    """A1111's mask blur: OpenCV's Gaussian blur across, then down, its kernel 2 x int(2.5 r +
    0.5) + 1 wide."""
    if radius <= 0:
        return mask
    import cv2

    size = 2 * int(2.5 * radius + 0.5) + 1
    pixels = np.array(mask)
    pixels = cv2.GaussianBlur(pixels, (size, 1), radius)
    pixels = cv2.GaussianBlur(pixels, (1, size), radius)
    return Image.fromarray(pixels)


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The box around everything the mask paints, widened by `padding` within the image
    (None for an all-black mask)."""
    box = mask.getbbox()
    if not box:
        return None
    x1, y1, x2, y2 = box
    return (max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width),
            min(y2 + padding, mask.height))


def expand_region(region: tuple[int, int, int, int], width: int, height: int,
                  image_width: int, image_height: int) -> tuple[int, int, int, int]:
    """The crop widened (or heightened) to the render size's aspect ratio, moved back inside
    the image, as A1111's expand_crop_region does."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grown(y1, y2, (x2 - x1) / (width / height), image_height)
    else:
        x1, x2 = _grown(x1, x2, (y2 - y1) * (width / height), image_width)
    return x1, y1, x2, y2


def _grown(low: int, high: int, length: float, limit: int) -> tuple[int, int]:
    """A side of the crop grown to `length`, half before and half after, then moved back
    within 0..limit."""
    grow = int(length - (high - low))
    low, high = low - grow // 2, high + grow - grow // 2
    if high >= limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, high - low
    return low, min(high, limit)


def filled(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's masked content "fill": the masked area painted with ever less blurred copies of
    the colours around it."""
    layers = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blur = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            layers.alpha_composite(blur)
    return layers.convert("RGB")


def prepare(image: Image.Image, mask: Image.Image, width: int, height: int, resize: str,
            blur: int, only_masked: bool, padding: int, fill: str) -> Prepared:
    """An input image and its mask (of the same size) made ready for the inpainting call."""
    mask = blurred(mask.convert("L"), blur)
    paste = None
    region = crop_region(mask, padding) if only_masked else None
    if region is not None:  # "only masked": the crop, scaled to the render size
        x1, y1, x2, y2 = expand_region(region, width, height, mask.width, mask.height)
        overlay_mask, paste = mask, (x1, y1, x2 - x1, y2 - y1)
        mask = inputs.fit(mask.crop((x1, y1, x2, y2)), width, height, "fill")
        base = image
        image = inputs.fit(image.crop((x1, y1, x2, y2)), width, height, "fill")
    else:  # the whole picture, fitted; the overlay keeps only what the mask is black at
        mask = inputs.fit(mask, width, height, resize)
        overlay_mask = Image.fromarray(np.clip(np.asarray(mask, np.float32) * 2, 0, 255)
                                       .astype(np.uint8))
        image = base = inputs.fit(image, width, height, resize)
    kept = Image.new("RGBa", base.size)
    kept.paste(base.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(overlay_mask))
    if fill == "fill":
        image = filled(image, mask)
    return Prepared(image.convert("RGB"), mask, kept.convert("RGBA"), paste)


def finished(rendered: Image.Image, prepared: Prepared) -> Image.Image:
    """The render put back: into the input at the crop ("only masked"), then the input's own
    pixels over what the mask keeps."""
    if prepared.paste is not None:
        x, y, w, h = prepared.paste
        canvas = Image.new("RGBA", prepared.overlay.size)
        canvas.paste(inputs.fit(rendered, w, h, "crop"), (x, y))
        rendered = canvas
    result = rendered.convert("RGBA")
    result.alpha_composite(prepared.overlay)
    return result.convert("RGB")
