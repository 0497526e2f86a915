"""A finished plan, remembered: a resume or `farm status` of a run folder whose every job is
done, and that nothing has touched since, answers without planning again (ten million jobs:
seconds, where the plan alone takes minutes).

A render that finds every job of its plan done (its first pass, or one more after it rendered
what was left) seals the plan in the manifest (table `seals`): the
plan's key (the recipe as parsed, with its variables and wildcards read; the models' and input
images' identities; farm's version), the files the plan reads beside them (prompt files,
LoRAs, embeddings: where each was found, its size and modification time), the manifest's write
generation (every change to its jobs counts one) and each image folder's modification time
(a file deleted or added there changes it), and the counts. The seal holds while all of these
are as they were; otherwise the plan is streamed and diffed as always. So the seal can only
skip work that a diff would find done: it never renders less than a full diff would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from farm import adapters, jobs
from farm.manifest import Manifest
from farm.outputs import RunFolder
from farm.plan import Resolved
from farm.recipe import PromptFile, Recipe
from farm.values import Model

VERSION = 1  # of what a seal holds: a farm that reads it otherwise bumps it


def key(recipe: Recipe, found: Resolved) -> str:
    """What decides the plan's jobs and their records, hashed."""
    from farm import __version__

    values = {k: _canonical(v) for k, v in recipe.values.items() if k != "name"}
    described = repr((VERSION, __version__, jobs.ID_VERSION, _canonical(recipe.base), values,
                      sorted((ref, m.identity, m.variant) for ref, m in found.models.items()),
                      sorted((path, m.identity) for path, m in found.inputs.items())))
    return hashlib.sha256(described.encode()).hexdigest()


def sources(recipe: Recipe, loras: Mapping[str, Model],
            embeddings: Mapping[str, Path]) -> dict[str, Any]:
    """The files the plan read besides the recipe and models (its prompt files, the LoRAs it
    found by reference, the embedding files by word): each as (path, size, mtime)."""
    return {"prompt_files": sorted(_stat(Path(p.path)) for p in recipe["prompt"]
                                   if isinstance(p, PromptFile)),
            "loras": {ref: _stat(Path(m.path)) for ref, m in sorted(loras.items())},
            "embeddings": {word: _stat(path) for word, path in sorted(embeddings.items())}}


def folders(folder: RunFolder) -> dict[str, int]:
    """The modification time (ns) of the images folder and of each folder in it."""
    images = folder.root / "images"
    found = {"images": _mtime(images)}
    try:
        with os.scandir(images) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    found[f"images/{entry.name}"] = entry.stat(follow_symlinks=False).st_mtime_ns
    except FileNotFoundError:
        pass
    return dict(sorted(found.items()))


def sealed(folder: RunFolder, manifest: Manifest, recipe: Recipe,
           found: Resolved) -> dict[str, int] | None:
    """The counts the seal holds (planned, done, failed, repeats) if it holds, else None."""
    row = manifest.seal(key(recipe, found))
    if row is None or row["generation"] != manifest.generation():
        return None
    if json.loads(row["folders"]) != folders(folder):
        return None
    held = json.loads(row["sources"])
    try:  # the LoRAs the plan found, looked for again (another file may be found first now)
        loras = {ref: adapters.find_lora(ref, recipe.base) for ref in held["loras"]}
    except adapters.AdapterError:  # gone: the plan says so, as it would have
        return None
    now = sources(recipe, loras, adapters.Reader(recipe.base).embedding_files)
    if json.loads(json.dumps(now)) != held:  # (as JSON reads it back: lists, not tuples)
        return None
    return json.loads(row["counts"])


def seal(manifest: Manifest, recipe: Recipe, found: Resolved, counts: dict[str, int],
         before: dict[str, int]) -> None:
    """Remember that the plan is all done, as the pass that found it so saw the image folders
    (`before`: their modification times when it began; a file deleted while it went on
    changes its folder's, and the seal does not hold)."""
    reader = found.reader
    manifest.write_seal(key(recipe, found), json.dumps(sources(recipe, reader.loras(),
                                                               reader.embedding_files)),
                        json.dumps(before), json.dumps(counts))


def _canonical(value: Any) -> Any:
    """A parsed value as plain data, its paths absolute (a recipe read from its file and one
    read back from a run's record name the same files differently)."""
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, PromptFile):
        return ("file", str(Path(value.path).resolve()), value.rows, value.negatives)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, *(_canonical(getattr(value, f.name))
                                        for f in dataclasses.fields(value)))
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple((repr(k), _canonical(v)) for k, v in value.items())
    return value


def _stat(path: Path) -> tuple[str, int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (str(path.absolute()), -1, -1)
    return (str(path.absolute()), stat.st_size, stat.st_mtime_ns)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1
