"""Shared fixtures: one tiny-model cache per test session, quiet progress bars, offline hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm import models
from farm.jobs import Model


@pytest.fixture(scope="session", autouse=True)
def farm_cache(tmp_path_factory) -> Path:
    """Tiny models are built once per session into a private cache (never the user's)."""
    cache = tmp_path_factory.mktemp("farm-cache")
    os.environ["FARM_CACHE"] = str(cache)
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    return cache


@pytest.fixture(scope="session")
def tiny() -> Model:
    return models.resolve("tiny", "checkpoint")


@pytest.fixture(scope="session")
def tiny_vae() -> Model:
    return models.resolve("tiny-vae", "vae")
