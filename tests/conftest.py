"""Shared fixtures: one tiny-model cache per test session, quiet progress bars, offline hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Ray's single-machine mode: every Ray process of the test session listens on loopback only.
# Set before anything imports ray, which reads it once.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from farm import models
from farm.jobs import Model


REPOSITORY = Path(__file__).resolve().parent.parent


def _tree() -> set[str]:
    """The files of the repository that git would see (tracked or not ignored)."""
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                                cwd=REPOSITORY, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(listed.stdout.splitlines()) if listed.returncode == 0 else set()


@pytest.fixture(scope="session", autouse=True)
def nothing_written_outside_temporary_folders():
    """Tests write only under their temporary folders: the checkout is the same afterwards."""
    before = _tree()
    yield
    added = sorted(_tree() - before)
    assert not added, f"tests wrote into the checkout: {added[:10]}"


@pytest.fixture(scope="session", autouse=True)
def farm_cache(tmp_path_factory) -> Path:
    """Tiny models are built once per session into a private cache (never the user's)."""
    cache = tmp_path_factory.mktemp("farm-cache")
    os.environ["FARM_CACHE"] = str(cache)
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    return cache


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A CPU worker in float32 that keeps its pipelines for a test module."""
    from farm.worker import Device, Worker

    return Worker(tmp_path_factory.mktemp("worker"), device=Device("cpu", "float32"))


@pytest.fixture(scope="session")
def tiny() -> Model:
    return models.resolve("tiny", "checkpoint")


@pytest.fixture(scope="session")
def tiny_vae() -> Model:
    return models.resolve("tiny-vae", "vae")


@pytest.fixture(scope="session")
def ray_cluster(farm_cache):
    """One Ray cluster for the whole session: two nodes with one logical GPU each, on the CPU."""
    from ray.cluster_utils import Cluster

    import ray

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=1)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


FINISHED = """\
name: sheet
prompt: ["a {animal} at dusk", {file: rows.csv}]
vars: {animal: [cat, dog]}
cfg: [5, 7]
seeds: 0-1
steps: 2
size: 64x64
batch_size: 4
"""


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, farm_cache) -> Path:
    """A finished run folder shared by the export and grid tests (which must not change it):
    a template (values) and a prompt file with an extra column (fields), 2 cfgs, 2 seeds."""
    from tests.helpers import run_inline

    root = tmp_path_factory.mktemp("finished")
    (root / "rows.csv").write_text("prompt,mood\nan owl in the rain,calm\n")
    (root / "sheet.yaml").write_text(FINISHED)
    assert run_inline("render", f"recipe={root / 'sheet.yaml'}", f"outputs={root / 'outputs'}") == 0
    return root / "outputs" / "sheet"
