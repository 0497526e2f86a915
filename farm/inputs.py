"""Input images (img2img): where they are, what they are, how they fit. No torch, Ray or Hydra.

An input's identity is the hash of its decoded pixels (outputs.pixel_hash, after its EXIF
orientation is applied), never its path or bytes: a moved, renamed or losslessly re-encoded
input keeps its jobs, and an image farm made feeds the next run under the hash it recorded.
Inputs are files, folders (searched recursively, in sorted order), glob patterns, and .tar
shards (a webdataset export: every image member is an input, named `SHARD.tar/MEMBER`).
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from farm import outputs, tiny
from farm.fields import input_images
from farm.jobs import Batch, Model

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
GLOB_CHARACTERS = "*?["
MAX_PIXELS = 8192 * 8192  # an input larger than the largest size a recipe may ask for


class InputError(ValueError):
    """An input image that cannot be used: which one, and why."""

    def __init__(self, given: str, problem: str):
        self.given, self.problem = given, problem
        super().__init__(f"{given}: {problem}")


# 1. where they are -------------------------------------------------------------------------------

def listed(value: str, base: Path) -> list[str]:
    """The input images one recipe entry names, as absolute paths in sorted order: a file, a
    folder (recursively), a glob pattern, or a .tar shard; relative to the recipe's folder."""
    given = Path(value).expanduser()
    path = given if given.is_absolute() else base / given
    if any(c in value for c in GLOB_CHARACTERS):
        found = sorted(p for p in (Path(m) for m in glob.glob(str(path), recursive=True))
                       if p.is_file())
        images = [str(p.resolve()) for p in found if p.suffix.lower() in SUFFIXES]
        for shard in (p for p in found if p.suffix.lower() == ".tar"):
            images += _members(shard)
        if not images:
            raise InputError(value, "no image matches this pattern")
        return images
    if not path.exists():
        raise InputError(value, f"no such file or folder ({path})")
    if path.is_dir():
        images = []
        for p in sorted(path.rglob("*")):
            relative = p.relative_to(path).parts
            if any(part.startswith(".") for part in relative) or not p.is_file():
                continue  # hidden files and folders
            if p.suffix.lower() in SUFFIXES:
                images.append(str(p.resolve()))
            elif p.suffix.lower() == ".tar":
                images += _members(p)
        if not images:
            raise InputError(value, f"the folder has no images ({', '.join(SUFFIXES)} or .tar "
                             "shards of them)")
        return images
    if path.suffix.lower() == ".tar":
        images = _members(path)
        if not images:
            raise InputError(value, "the shard has no images")
        return images
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(value, f"not an image file; allowed: {', '.join(SUFFIXES)}, .tar")
    return [str(path.resolve())]


def _root(value: str, base: Path) -> Path:
    """Where an entry's paths are relative from: a folder or shard itself, a file's folder,
    a glob's part before its first wildcard."""
    given = Path(value).expanduser()
    path = given if given.is_absolute() else base / given
    if any(c in value for c in GLOB_CHARACTERS):
        parts = []
        for part in path.parts:
            if any(c in part for c in GLOB_CHARACTERS):
                break
            parts.append(part)
        return Path(*parts).resolve()
    return path.resolve() if path.is_dir() or path.suffix.lower() == ".tar" else \
        path.resolve().parent


def paired(images: str, masks: str, base: Path) -> dict[str, str]:
    """Each image an entry names, with its mask: a single image with a single mask file, else
    the mask of the same path relative to its entry, without the suffix (in/a.png with
    masks/a.png or masks/a.jpg)."""
    found, shapes = listed(images, base), listed(masks, base)
    if len(found) == 1 and len(shapes) == 1:
        return {found[0]: shapes[0]}
    image_root, mask_root = _root(images, base), _root(masks, base)

    def stem(path: str, root: Path) -> str:
        return Path(path).relative_to(root).with_suffix("").as_posix()

    by_stem: dict[str, str] = {}
    for mask in shapes:
        twin = by_stem.setdefault(stem(mask, mask_root), mask)
        if twin != mask:
            raise InputError(masks, f"{twin} and {mask} are masks of the same name; keep one")
    return {image: by_stem[stem(image, image_root)] for image in found
            if stem(image, image_root) in by_stem}


def size_of(path: str) -> tuple[int, int]:
    """An image's width and height (upright, as decoded), from its header."""
    with Image.open(io.BytesIO(read(path))) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _members(shard: Path) -> list[str]:
    try:
        with tarfile.open(shard) as tar:
            names = sorted(m.name for m in tar.getmembers()
                           if m.isfile() and Path(m.name).suffix.lower() in SUFFIXES)
    except (OSError, tarfile.TarError) as e:
        raise InputError(str(shard), f"cannot be read as a tar shard ({e})") from None
    return [f"{shard.resolve()}/{name}" for name in names]


def _split(path: str) -> tuple[Path, str | None]:
    """(file, member): a tar member's shard and name, or the file itself."""
    candidate = Path(path)
    for parent in candidate.parents:
        if parent.suffix.lower() == ".tar" and parent.is_file():
            return parent, candidate.relative_to(parent).as_posix()
    return candidate, None


def read(path: str) -> bytes:
    """An input's file as it is stored (a tar member's bytes from its shard, kept open: a shard
    of thousands of images is indexed once, not once per image)."""
    file, member = _split(path)
    if member is None:
        return file.read_bytes()
    with _SHARD_LOCK:  # a TarFile reads through one file position
        extracted = _shard(file).extractfile(member)
        if extracted is None:
            raise OSError(f"{member} is not a file in {file}")
        return extracted.read()


_SHARDS: OrderedDict[tuple[Path, int], tarfile.TarFile] = OrderedDict()
_SHARD_LOCK = threading.Lock()


def _shard(file: Path) -> tarfile.TarFile:
    """An open shard, indexed (a few are kept open, the least recently used closed)."""
    key = (file, file.stat().st_mtime_ns)
    tar = _SHARDS.get(key)
    if tar is None:
        tar = _SHARDS[key] = tarfile.open(file)
        tar.getmembers()  # the index, read once
        while len(_SHARDS) > 4:
            _SHARDS.popitem(last=False)[1].close()
    _SHARDS.move_to_end(key)
    return tar


# 2. what they are --------------------------------------------------------------------------------

def decoded(data: bytes, given: str) -> Image.Image:
    """An input's pixels: decoded, turned upright by its EXIF orientation, as 8-bit RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise InputError(given, f"{image.width}x{image.height} is larger than farm "
                                 "reads (8192x8192)")
            return _rgb(ImageOps.exif_transpose(image), given)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, InputError):
            raise
        said = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the file", str(e))
        raise InputError(given, f"cannot be read as an image ({type(e).__name__}: {said})") \
            from None


BACKGROUND = (255, 255, 255)  # under transparent pixels: A1111's img2img_background_color


def _rgb(image: Image.Image, given: str) -> Image.Image:
    """8-bit RGB as AUTOMATIC1111 reads an input: transparency (RGBA, LA, a palette's
    transparent colour) flattened on white, not the colour stored under it; 16-bit grey
    scaled to 8 bits (Pillow's RGB conversion clips it, nearly white)."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit PNG or TIFF grey
        grey = np.asarray(image, dtype=np.float64) / 257  # 65535 -> 255
        return Image.fromarray(np.clip(grey.round(), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        raise InputError(given, "a floating-point image (mode F): farm reads 8- and 16-bit "
                         "images; save it as an 8- or 16-bit PNG")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", image.size, BACKGROUND)
        flat.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def identify(paths: Iterable[str]) -> Iterator[Model]:
    """Each input as a Model: ref and path its absolute path, identity its pixels' hash.
    Hashes are cached by (path, size, modification time), so a resumed run decodes nothing
    again; the others are decoded by a few threads at once (Pillow lets go of Python's lock)."""
    cache = _Cache()
    try:
        with ThreadPoolExecutor(THREADS, thread_name_prefix="farm-inputs") as pool:
            for chunk in _chunks(paths, 256):
                keyed = [(path, _key(path)) for path in chunk]
                missing = [(path, key) for path, key in keyed if cache.get(key) is None]
                for (_, key), identity in zip(missing, pool.map(_pixel_hash,
                                                                 [p for p, _ in missing])):
                    cache.put(key, identity)
                for path, key in keyed:
                    yield Model(ref=path, path=path, identity=cache.get(key))
    finally:
        cache.close()


THREADS = max(1, min(8, os.cpu_count() or 1))  # decoding inputs for their hashes


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# How inputs are decoded (_rgb): a new reading (transparency flattened on white, 16-bit grey
# scaled) files hashes under new keys, so none made the old way is taken for a new one.
READING = 2


def _key(path: str) -> str:
    """What an input's cached hash is filed under: how it is read, its path, size,
    modification time, and the time its inode last changed, which no tool sets back (a file
    replaced by `cp -p` or `rsync -t`, the same size and modification time, is another key)."""
    file, _ = _split(path)
    try:
        stat = file.stat()
    except OSError as e:
        raise InputError(path, f"cannot be read ({e.strerror or e})") from None
    return f"{READING}|{path}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}"


def _pixel_hash(path: str) -> str:
    try:
        data = read(path)
    except (OSError, tarfile.TarError, KeyError) as e:
        raise InputError(path, f"cannot be read ({e})") from None
    return outputs.pixel_hash(decoded(data, path))


class _Cache:
    """Pixel hashes of input files, appended as JSON lines to $FARM_CACHE/input-hashes.jsonl.
    The file is read once per process and then only what other processes appended since (it
    only grows), so that identifying one input at a time (verify, replay) stays cheap; any
    failure: no cache."""

    known: dict[Path, dict[str, str]] = {}  # the file -> what this process has read of it
    read_to: dict[Path, int] = {}  # the file -> how far this process has read it
    lock = threading.Lock()

    def __init__(self) -> None:
        self.file = tiny.cache_dir() / "input-hashes.jsonl"
        self.added: list[str] = []
        with self.lock:
            self.mine = self.known.setdefault(self.file, {})
            try:
                with open(self.file, "rb") as f:
                    f.seek(self.read_to.get(self.file, 0))
                    for line in f:
                        if not line.endswith(b"\n"):
                            break  # being written: read it next time
                        self.read_to[self.file] = self.read_to.get(self.file, 0) + len(line)
                        try:
                            key, identity = json.loads(line)
                        except ValueError:
                            continue  # a line cut short by a crash
                        self.mine[key] = identity
            except OSError:
                pass

    def get(self, key: str) -> str | None:
        return self.mine.get(key)

    def put(self, key: str, identity: str) -> None:
        self.mine[key] = identity
        self.added.append(json.dumps([key, identity]) + "\n")
        if len(self.added) >= 1000:
            self._flush()

    def _flush(self) -> None:
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.file, "a", encoding="utf-8") as f:
                f.write("".join(self.added))
        except OSError:
            pass
        self.added = []

    def close(self) -> None:
        if self.added:
            self._flush()


def find(identity: str, folders: Iterable[Path]) -> Model | None:
    """An input with these pixels in one of `folders` (searched recursively), or None. Each
    folder is listed and identified once per process (verify asks for one input per job)."""
    for folder in folders:
        index = _FOLDERS.get(Path(folder).resolve())
        if index is None:
            try:
                paths = listed(str(folder), Path("."))
            except InputError:
                continue
            index = _FOLDERS[Path(folder).resolve()] = {}
            for path in paths:  # one at a time: an unreadable file there is not the one sought
                try:
                    model, = identify([path])
                except InputError:
                    continue
                index.setdefault(model.identity, model)
        found = index.get(identity)
        if found is not None and Path(_split(found.path)[0]).exists():  # (gone since: not it)
            return found
    return None


_FOLDERS: dict[Path, dict[str, Model]] = {}  # folder -> its inputs by identity (find)


# 3. how they fit ---------------------------------------------------------------------------------

def fit(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """The image at width x height, as AUTOMATIC1111 fits an input (Lanczos, its arithmetic):

    - `stretch` ("Just resize"): resized to width x height;
    - `crop` ("Crop and resize"): scaled to cover, its side along the overflow floored
      (w * height // h), placed at (width // 2 - w // 2, height // 2 - h // 2), the
      overflow cut;
    - `fill` ("Resize and fill"): scaled to fit, placed the same way, each band beside it
      filled with the image's edge row (or column) stretched; both bands take the first
      band's size (the second may overhang the canvas, which clips it).
    """
    if image.size == (width, height):
        return image
    if mode == "stretch":
        return image.resize((width, height), Image.LANCZOS)
    target, source = width / height, image.width / image.height  # aspect ratios
    full_width = target > source if mode == "crop" else target < source
    if full_width:
        w, h = width, image.height * width // image.width
    else:
        w, h = image.width * height // image.height, height
    resized = image.resize((w, h), Image.LANCZOS)
    canvas = Image.new("RGB", (width, height))
    left, top = width // 2 - w // 2, height // 2 - h // 2
    canvas.paste(resized, (left, top))
    if mode == "crop" or target == source:
        return canvas
    if full_width and top > 0:  # bands above and below, from the edge rows (a 0-high box)
        canvas.paste(resized.resize((width, top), box=(0, 0, width, 0)), (0, 0))
        canvas.paste(resized.resize((width, top), box=(0, h, width, h)), (0, top + h))
    elif not full_width and left > 0:  # bands left and right, from the edge columns
        canvas.paste(resized.resize((left, height), box=(0, 0, 0, height)), (0, 0))
        canvas.paste(resized.resize((left, height), box=(w, 0, w, height)), (left + w, 0))
    return canvas


def carried(batch: Batch) -> Batch:
    """The batch with its input images' files in it, for a worker on another node."""
    needed = {image.identity: image.path for job in batch.jobs
              for image in input_images(job)}
    if not needed or batch.inputs:
        return batch
    files = []
    for identity, path in needed.items():
        try:
            files.append((identity, read(path)))
        except (OSError, tarfile.TarError, KeyError):
            continue  # gone since the plan: the worker says so for its jobs
    return replace(batch, inputs=tuple(files))
