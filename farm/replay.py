"""Render one image again from the `farm` metadata it carries, without its recipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from farm import adapters, inputs, models, outputs
from farm.fields import BY_NAME, INPUT
from farm.jobs import ImageFormat, Job, Model, Slot


class ReplayError(ValueError):
    """An image that cannot be rendered again here: no farm metadata, or other models."""


def job_of(image: Path, moved: Mapping[str, str] | None = None,
           found_in: Sequence[Path] = ()) -> tuple[Job, Slot, ImageFormat]:
    """The job an image was made from, with its models resolved here (`moved`: a model's new
    place, by the reference it was recorded with), where it sat in its pipeline call, and the
    format it was stored in."""
    try:
        _, meta = outputs.read_metadata(image)
    except (OSError, KeyError, ValueError) as e:
        raise ReplayError(f"{image}: no farm metadata to replay ({type(e).__name__}: {e})") \
            from None
    return job_from(meta, str(image), moved, found_in), Slot.of(meta), stored_format(meta)


def stored_format(meta: dict) -> ImageFormat:
    """The format an image's metadata says it was written in (png when it says nothing)."""
    return ImageFormat(meta.get("format", "png"), meta.get("quality", ImageFormat.quality))


def job_from(meta: dict, where: str, moved: Mapping[str, str] | None = None,
             found_in: Sequence[Path] = ()) -> Job:
    """A job from its recorded fields (the `farm` chunk, a manifest row's params); its input
    image where it was, else in one of the folders `found_in`, by its pixels."""
    def model(field: str, ref: str, identity: str, path: str | None = None) -> Model:
        if BY_NAME[field].source == INPUT:
            return same_input(field, ref, identity, found_in)
        return same_model(field, ref, identity, (moved or {}).get(ref), path)

    try:
        job = Job.from_dict(meta, model)
    except (KeyError, TypeError) as e:
        raise ReplayError(f"{where}: its metadata lacks a job field ({type(e).__name__}: {e})") \
            from None
    if job.id != meta["id"]:
        raise ReplayError(f"{where}: its metadata describes job {job.id}, not {meta['id']} "
                          "(made by another farm version?)")
    return job


def same_model(field: str, ref: str, identity: str, moved_to: str | None = None,
               path: str | None = None) -> Model:
    """The model (or LoRA or embedding file, read from `path`) a job was made with, found
    here: where it was, or where it moved to."""
    try:
        model = _found(field, ref, moved_to, path)
    except models.ModelError as e:
        raise ReplayError(f"{field} {ref!r} is not found here ({e}); if it moved, say where: "
                          f"--model {ref}=NEW_PLACE") from None
    if model.identity != identity:
        raise ReplayError(f"{field} {ref!r} is {model.identity[:16]}... here, but the image was "
                          f"made with {identity[:16]}...; the same pixels need the same model")
    return model


def same_input(field: str, path: str, identity: str, found_in: Sequence[Path]) -> Model:
    """The input image of these pixels (of job field `field`): at its recorded path, else in
    one of `found_in`."""
    there = "is not there"
    try:
        here, = inputs.identify([path])
        if here.identity == identity:
            return here
        there = "has other pixels now"
    except inputs.InputError:
        pass
    found = inputs.find(identity, found_in)
    if found is None:
        looked = (f"it is not in {', '.join(map(str, found_in))}" if found_in else
                  "no other folder was named to look in (--inputs DIR)")
        raise ReplayError(f"{field} image {path} (pixels {identity[:16]}...) {there}, and "
                          f"{looked}")
    return found


def _found(field: str, ref: str, moved_to: str | None, path: str | None) -> Model:
    if BY_NAME[field].source is not None:  # a checkpoint, VAE or refiner
        return models.resolve(moved_to or ref, BY_NAME[field].source, field)
    where = moved_to or path  # the file it was read from, else a LoRA by its reference
    if where and Path(where).is_file():
        return Model(ref=ref, path=where, identity=models.file_hash(Path(where), True))
    if field == "loras":
        return adapters.find_lora(ref, Path.cwd())
    raise models.ModelError(field, ref, f"no file at {where}")


def replay(image: Path, folder: Path, device: str | None = None,
           moved: Mapping[str, str] | None = None,
           found_in: Sequence[Path] = ()) -> tuple[Path, bool]:
    """Render the image again into `folder`; say where, and whether the pixels are the same."""
    from PIL import Image

    from farm.worker import Device, Worker

    job, slot, fmt = job_of(image, moved, found_in)
    worker = Worker(folder, name="replay", device=Device.named(device) if device else None)
    result, = worker.render(slot.batch(job, image.name, fmt))
    if not result.ok:
        raise ReplayError(f"{image}: rendering it again failed: {result.error}")
    with Image.open(image) as original:
        same = outputs.pixel_hash(original) == result.pixel_hash
    return folder / image.name, same
