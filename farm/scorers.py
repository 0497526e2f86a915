"""Scorers: what each one measures, the columns it writes, the model it runs, and its identity.

A score belongs to an image's pixels and to the scorer that made it, never to the job: it is
keyed by (pixel hash, scorer identity), so a re-render that gives the same pixels keeps its
scores, and a scorer with other weights scores again. Scorers are named as `NAME` or
`NAME:REF` (`aesthetic:ORG/REPO`, `clip:PATH`, `nsfw:tiny`); REF resolves as a model does (a hub
id from the local cache, a folder, a .safetensors file), from safetensors only.

    aesthetic  LAION's aesthetic predictor v2: an MLP on L2-normalised CLIP ViT-L/14 image
               embeddings, 1-10                                             column: aesthetic
    clip       cosine similarity of the image and its caption under a CLIP model (raw cosine,
               as DataComp stores it)                                       column: clip_score
    nsfw       the Stable Diffusion safety checker's flag, and its margin (above 0: flagged)
                                                                  columns: nsfw, nsfw_score
    phash      a 64-bit perceptual hash (imagehash), 16 hex digits          column: phash

Pure Python: resolving a scorer reads file headers and configs, never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from farm import hub, tiny
from farm.values import HUB_ID, PICKLE_SUFFIXES

VERSION = 1  # of farm's scoring code: part of every identity, so a fix scores again


class ScorerError(ValueError):
    """A scorer that cannot be used, with what to do about it."""


@dataclass(frozen=True)
class Kind:
    """One kind of scorer (the table below)."""

    name: str
    # what it writes, as exports name them, with its type (a pyarrow alias): the float64 ones
    # are what --where compares as numbers and --top ranks
    columns: dict[str, str]
    default: str | None  # the model it runs when none is named (None: it runs no model)
    tiny: str | None  # the built-in random-weight model `NAME:tiny` runs
    text: bool = False  # whether it reads the image's caption as well as its pixels


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("aesthetic", {"aesthetic": "float64"}, "ttj/sac-logos-ava1-l14-linearMSE",
         "tiny-aesthetic"),
    Kind("clip", {"clip_score": "float64"}, "openai/clip-vit-large-patch14", "tiny-clip",
         text=True),
    Kind("nsfw", {"nsfw": "bool", "nsfw_score": "float64"},
         "CompVis/stable-diffusion-safety-checker", "tiny-nsfw"),
    Kind("phash", {"phash": "string"}, None, None),
)}
TYPES = {c: kind for k in KINDS.values() for c, kind in k.columns.items()}  # every column
COLUMNS = tuple(TYPES)
NUMERIC = tuple(c for c, kind in TYPES.items() if kind == "float64")
BY_COLUMN = {c: k for k in KINDS.values() for c in k.columns}
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"  # what LAION's predictor was trained on
CONVERT = ("convert it to .safetensors first: python -c \"import torch, safetensors.torch as st; "
           "st.save_file(torch.load('IN.pth', weights_only=True), 'OUT.safetensors')\"")


@dataclass(frozen=True)
class Scorer:
    """A scorer as a run uses it: its kind, the model reference given, where the files are,
    and its identity (the model files' hashes and farm's scoring version)."""

    name: str
    ref: str | None  # as given (or the default); None for phash
    path: str | None  # the model's local folder or file
    identity: str
    clip: str | None = None  # aesthetic: the local folder of the CLIP model it runs on

    @property
    def kind(self) -> Kind:
        return KINDS[self.name]

    def describe(self) -> dict:
        """What a dataset card and report.json say about it."""
        return {"scorer": self.name, "model": self.ref, "identity": self.identity,
                "columns": list(self.kind.columns)}


@dataclass(frozen=True)
class Score:
    """One scorer's columns for one image: small, it travels to the driver's manifest."""

    scorer: str  # aesthetic | clip | nsfw | phash
    identity: str  # Scorer.identity
    subject: str  # what it read besides the pixels: the caption's hash (clip), else ""
    values: str  # JSON: the scorer's columns, e.g. {"nsfw": false, "nsfw_score": -0.21}

    @property
    def columns(self) -> dict:
        return json.loads(self.values)


@dataclass(frozen=True)
class Work:
    """Images to score, sent to a worker: their encoded files (a worker may run on a node that
    cannot read the run folder) and captions, and the scorers to run."""

    scorers: tuple[Scorer, ...]
    images: tuple[bytes, ...]
    texts: tuple[str, ...]


def parse(given: str | Iterable[str] | None, field: str = "score") -> tuple[str, ...]:
    """`aesthetic,clip:PATH` or a list of such: each item checked for a known name, the list
    without repeats (one model per scorer)."""
    if given is None:
        return ()
    items = given.split(",") if isinstance(given, str) else list(given)
    chosen: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ScorerError(f"{field}: got {item!r}; expected a scorer NAME or NAME:REF, "
                              f"NAME one of {', '.join(KINDS)}")
        name, _, ref = item.strip().partition(":")
        if name not in KINDS:
            raise ScorerError(f"{field}: unknown scorer {name!r}; allowed: {', '.join(KINDS)} "
                              "(each as NAME or NAME:REF, e.g. aesthetic:tiny)")
        if name == "phash" and ref:
            raise ScorerError(f"{field}: {item!r}: phash runs no model; write phash")
        if name in chosen and chosen[name] != item.strip():
            raise ScorerError(f"{field}: {name} is given twice ({chosen[name]!r}, {item!r}); "
                              "one model per scorer")
        chosen[name] = item.strip()
    return tuple(chosen.values())


def resolve(item: str, field: str = "score") -> Scorer:
    """A scorer (NAME or NAME:REF, checked by parse) with its files found and identified."""
    name, _, ref = item.partition(":")
    kind = KINDS[name]
    if name == "phash":
        import imagehash

        return Scorer(name, None, None, f"phash/imagehash-{imagehash.__version__}/8/v{VERSION}")
    ref = ref or kind.default
    where = f"{field}: {name}:{ref}"
    if ref == "tiny":
        folder = tiny.ensure(kind.tiny)
    else:
        folder = _files(ref, where)
    if name == "aesthetic":
        mlp = _mlp_file(folder, where)
        clip = folder if (folder / "config.json").is_file() else _files(AESTHETIC_CLIP, where)
        _check_clip(clip, where, want_text=False)
        width = _mlp_width(mlp, where)
        projection = _config(clip, where).get("projection_dim")
        if projection != width:
            raise ScorerError(f"{where}: the MLP takes {width}-wide embeddings, but its CLIP "
                              f"model ({clip}) makes {projection}-wide ones: not the "
                              "architecture it was trained on")
        identity = _identity(name, _hash(mlp) + _hash(clip))
        return Scorer(name, ref, str(mlp), identity, clip=str(clip))
    if name == "clip":
        _check_clip(folder, where, want_text=True)
    else:
        _check_safety_checker(folder, where)
    return Scorer(name, ref, str(folder), _identity(name, _hash(folder)))


def resolve_all(items: Iterable[str], field: str = "score") -> tuple[Scorer, ...]:
    return tuple(resolve(item, field) for item in parse(list(items), field))


def _identity(name: str, hashed: str) -> str:
    return f"{name}/{hashlib.sha256(hashed.encode()).hexdigest()[:32]}/v{VERSION}"


def _hash(path: Path) -> str:
    from farm.hashes import file_hash, folder_hash

    return file_hash(path) if path.is_file() else folder_hash(path)


def _files(ref: str, where: str) -> Path:
    """A scorer model's local file or folder: a path, or a hub repo from the local cache (or
    fetched when online: its configs and safetensors weights only). Pickles are refused."""

    path = Path(ref).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ScorerError(f"{where}: pickle files can run arbitrary code when loaded, so farm "
                          f"never loads them; {CONVERT}")
    if path.exists():
        if path.is_file() and path.suffix.lower() != ".safetensors":
            raise ScorerError(f"{where}: a scorer model file must be .safetensors")
        if path.is_dir():
            _check_weights(path, where)
        return path.resolve()
    match = HUB_ID.fullmatch(ref)
    if not match or ref.startswith(("/", "./", "../", "~")):
        raise ScorerError(f"{where}: no such file or folder, and not a Hugging Face repo id "
                          f"(org/name[@revision])")
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # its configs and safetensors weights only
        folder = hub.fetch(match["repo"], match["revision"], ["*.json", "*.txt", "*.safetensors"],
                           ["*/*"])
    except LocalEntryNotFoundError as e:
        raise ScorerError(f"{where}: {hub.missing(match['repo'], match['revision'], e)}") from None
    except Exception as e:
        raise ScorerError(f"{where}: could not fetch it from the Hugging Face hub: {e}") from None
    _check_weights(folder, where)
    return folder


def _check_weights(folder: Path, where: str) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    raise ScorerError(f"{where}: {folder} has no .safetensors weights" + (
        f" ({', '.join(pickles)} is a pickle, which can run arbitrary code when loaded, so farm "
        f"never loads it; {CONVERT})" if pickles else ""))


def _config(folder: Path, where: str) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ScorerError(f"{where}: {folder} has no readable config.json ({e})") from None


def _check_clip(folder: Path, where: str, want_text: bool) -> None:
    if folder.is_file():
        raise ScorerError(f"{where}: expected a CLIP model folder (config.json and weights), "
                          "got a single file")
    config = _config(folder, where)
    kinds = config.get("architectures") or []
    if config.get("model_type") != "clip" or "StableDiffusionSafetyChecker" in kinds:
        raise ScorerError(f"{where}: not a CLIP model (its config says model_type "
                          f"{config.get('model_type')!r}, architectures {kinds}); expected "
                          "a transformers CLIPModel such as openai/clip-vit-large-patch14")
    if want_text and not any((folder / name).is_file() for name in
                             ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        raise ScorerError(f"{where}: the CLIP model has no tokenizer files")


def _check_safety_checker(folder: Path, where: str) -> None:
    if folder.is_file():
        raise ScorerError(f"{where}: expected a safety checker folder (config.json, weights)")
    kinds = _config(folder, where).get("architectures") or []
    if "StableDiffusionSafetyChecker" not in kinds:
        raise ScorerError(f"{where}: not a Stable Diffusion safety checker (its config names "
                          f"{kinds}); expected e.g. CompVis/stable-diffusion-safety-checker or a "
                          "checkpoint's safety_checker/ folder")


def _mlp_file(folder: Path, where: str) -> Path:
    """The aesthetic MLP's weights: the file given, or the one file of a folder whose tensors
    are `layers.N.weight` (the predictor's own names)."""
    if folder.is_file():
        return folder
    found = [f for f in sorted(folder.glob("*.safetensors"))
             if any(k.startswith("layers.") for k in _header(f, where))]
    if len(found) != 1:
        raise ScorerError(f"{where}: expected one .safetensors file of the aesthetic MLP "
                          f"(tensors layers.N.weight) in {folder}; found {len(found)}")
    return found[0]


def mlp_layers(header: dict) -> list[str]:
    """The MLP's linear layers, in order: `layers.N` with a weight matrix, by N."""
    names = {k.rsplit(".", 1)[0] for k in header if k.startswith("layers.")
             and k.endswith(".weight") and len(header[k]["shape"]) == 2}
    return sorted(names, key=lambda n: int(n.split(".")[1]))


def _mlp_width(mlp: Path, where: str) -> int:
    """The embedding width the MLP takes, after checking that its layers chain to one score."""
    header = _header(mlp, where)
    layers = mlp_layers(header)
    shapes = [header[f"{n}.weight"]["shape"] for n in layers]  # (out, in) each
    chained = all(a[0] == b[1] for a, b in zip(shapes, shapes[1:]))
    if not layers or not chained or shapes[-1][0] != 1:
        raise ScorerError(f"{where}: {mlp.name} is not an aesthetic MLP (linear layers "
                          "layers.N.weight that chain to one output)")
    return shapes[0][1]


def _header(file: Path, where: str) -> dict:
    """A .safetensors file's header: tensor names, dtypes and shapes (no tensor is read)."""
    try:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as e:
        raise ScorerError(f"{where}: {file} is not a readable .safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return header


def text_hash(text: str) -> str:
    """What a text-reading score is keyed by besides the pixels: the caption's sha256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
