"""The Hugging Face hub, as every kind of reference uses it (checkpoints, VAEs, LoRAs, scorers):
only the files asked for, from the local cache alone when HF_HUB_OFFLINE is set, and one
message for a repository that is not there."""

from __future__ import annotations

import os
from pathlib import Path


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


def fetch(repo: str, revision: str | None, allow: list[str],
          ignore: list[str] | None = None) -> Path:
    """The repository's snapshot folder holding the `allow` files (huggingface_hub's
    LocalEntryNotFoundError when they are not cached and cannot be fetched)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, revision=revision, allow_patterns=allow,
                                  ignore_patterns=ignore, local_files_only=offline()))


def missing(repo: str, revision: str | None, error: Exception) -> str:
    """What to say of a repository that is not in the cache and could not be fetched."""
    rev = f" --revision {revision}" if revision else ""
    where = ("not in the local Hugging Face cache, and HF_HUB_OFFLINE is set" if offline()
             else f"not in the local Hugging Face cache, and the hub cannot be reached ({error})")
    return (f"{where}; download it first on a machine with network access: "
            f"huggingface-cli download {repo}{rev}")
