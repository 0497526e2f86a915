"""File and folder hashes, cached: a model's weights are read once, whatever asks (identities,
infotext)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

from farm import tiny

# Files that decide what a model folder computes; configs are hashed without the keys that
# only say which library version wrote them.
HASHED_SUFFIXES = (".safetensors", ".json", ".txt", ".model")
VOLATILE_KEYS = ("_diffusers_version", "transformers_version", "_name_or_path")


def file_hash(file: Path, after_header: bool = False) -> str:
    """sha256 of a file, cached by (path, size, mtime) so multi-GB weights are read once.
    `after_header`: of a .safetensors file's tensor data only, after its JSON header, as
    AUTOMATIC1111 and CivitAI hash LoRAs and embeddings (metadata edits leave it as it is)."""
    stat = file.stat()
    key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}" + ("|data" if after_header else "")
    cache_file = tiny.cache_dir() / "hashes.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        if after_header:
            f.seek(8 + int.from_bytes(f.read(8), "little"))
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    cache[key] = digest.hexdigest()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=cache_file.parent, delete=False) as tmp:
        json.dump(cache, tmp)
    os.replace(tmp.name, cache_file)
    return cache[key]


def legacy_hash(model) -> str:
    """AUTOMATIC1111's old 8-digit model hash (sha256 of 64 KiB at 1 MiB into the weights file),
    which sd-webui-controlnet shows beside a ControlNet's name: of the file, or of a diffusers
    folder's weights file."""
    path = Path(model.path)
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if not found:
            return model.identity.split("@")[-1][:8]
        path = found[0]
    return _legacy(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _legacy(path: str, size: int, mtime: int) -> str:
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def folder_hash(folder: Path) -> str:
    """sha256 over a diffusers folder's weights and configs (relative path + file hash)."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in HASHED_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for file in files:
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(_config_hash(file) if file.suffix == ".json" else file_hash(file).encode())
    return digest.hexdigest()


def _config_hash(file: Path) -> bytes:
    config = json.loads(file.read_text())
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in VOLATILE_KEYS}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest().encode()
