"""The Ray backend (cluster.py): fan-out on a shared two-node cluster with logical GPUs (the
actors compute on the CPU)."""

import json
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from farm import cli, compose, run, schedule
from farm.finished import Finished
from farm.manifest import Manifest
from tests.helpers import farm_command, recipe_folder, run_farm

RECIPE = """\
name: fleet
prompt: [a lighthouse on a cliff, a red fox in snow]
seeds: 0-5
steps: 4
size: 64x64
batch_size: 2
"""

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    return recipe_folder(tmp_path, monkeypatch, fleet=RECIPE)


@pytest.fixture(scope="module")
def second_checkpoint(tiny, tiny_vae, tmp_path_factory) -> str:
    """Another checkpoint: tiny with the tiny-vae weights in place of its own VAE."""
    folder = tmp_path_factory.mktemp("models") / "tiny-b"
    shutil.copytree(tiny.path, folder)
    shutil.copy(Path(tiny_vae.path) / "diffusion_pytorch_model.safetensors",
                folder / "vae" / "diffusion_pytorch_model.safetensors")
    return str(folder)


def done_hashes(folder: Path) -> dict[str, str]:
    with sqlite3.connect(folder / "manifest.sqlite") as db:
        return dict(db.execute("SELECT id, pixel_hash FROM jobs WHERE status = 'done'"))


def test_one_actor_per_gpu_across_both_nodes(tmp_path):
    from farm.outputs import RunFolder

    backend = run.start_backend(schedule.Runtime(), RunFolder(tmp_path), "placement")
    try:
        backend.settle(timeout=120)
        assert sorted(backend.ready()) == ["gpu-0", "gpu-1"]
        assert len({info["node"] for info in backend.placed.values()}) == 2
        assert {info["device"] for info in backend.placed.values()} == {"cpu"}  # no real GPU
    finally:
        backend.close()


def test_ray_gives_the_same_pixels_as_inline(workdir, capsys):
    # On the CPU the torch thread count is part of the hardware (it changes how sums are split)
    threads = "runtime.threads=1"
    assert run_farm("render", "recipe=fleet", "runtime=inline", threads, "outputs=inline") == 0
    assert run_farm("render", "recipe=fleet", threads, "outputs=ray") == 0
    out = capsys.readouterr().out
    assert "Per worker: gpu-0 " in out and ", gpu-1 " in out
    inline, ray = done_hashes(workdir / "inline" / "fleet"), done_hashes(workdir / "ray" / "fleet")
    assert len(inline) == 12 and inline == ray


def test_a_killed_worker_is_replaced_and_every_job_is_done_once(workdir, capsys):
    import ray

    exit_code = []

    def render():
        try:
            cli.main(["render", "recipe=fleet", "seeds=0-11", "steps=8"])
        except SystemExit as e:
            exit_code.append(e.code)

    thread = threading.Thread(target=render)
    thread.start()
    manifest = workdir / "outputs" / "fleet" / "manifest.sqlite"
    deadline = time.monotonic() + 180
    killed = None
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.1)
        try:
            with sqlite3.connect(manifest) as db:
                (done,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'done'").fetchone()
        except sqlite3.OperationalError:
            continue
        if done >= 2:
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if a["name"].startswith("farm-fleet-gpu-0-")]
            namespace = ray.get_runtime_context().namespace
            ray.kill(ray.get_actor(names[0], namespace=namespace), no_restart=True)
            killed = names[0]
    # progress can be read from another process while the run goes on
    status = subprocess.run(farm_command() + ["status", "outputs/fleet", "--json"],
                            capture_output=True, text=True, timeout=120)
    report = json.loads(status.stdout)
    assert report["planned"] == 24 and report["done"] + report["pending"] == 24
    thread.join(timeout=300)
    assert killed, "the run ended before a worker could be killed"
    assert exit_code == [0]
    folder = workdir / "outputs" / "fleet"
    with sqlite3.connect(manifest) as db:
        rows = db.execute("SELECT path, status FROM jobs").fetchall()
    files = sorted(p.relative_to(folder).as_posix() for p in folder.glob("images/*/*"))
    assert len(rows) == 24 and {status for _, status in rows} == {"done"}
    assert files == sorted(path for path, _ in rows)  # each once, nothing half-written
    assert "Rendered 24 of 24" in capsys.readouterr().out


def test_a_job_that_always_fails_is_recorded_and_the_run_goes_on(workdir, tiny, capsys):
    broken = workdir / "broken"
    shutil.copytree(tiny.path, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    code = run_farm("render", "recipe=fleet", f"checkpoint=[tiny,{broken}]", "seeds=0-1",
                    "runtime.max_attempts=2")
    assert code == 1
    out = capsys.readouterr().out
    assert "Rendered 4 of 8" in out and "4 failed" in out
    with Manifest(workdir / "outputs" / "fleet" / "manifest.sqlite", readonly=True) as m:
        failures = list(m.failures())
        assert len(failures) == 4
        assert all(m.job(job_id)["attempts"] == 2 for job_id, _, _ in failures)
    assert all("broken" not in path and error for _, path, error in failures)
    images = list((workdir / "outputs" / "fleet").glob("images/*/*.png"))
    assert len(images) == 4


def test_each_checkpoint_is_loaded_once_per_worker(workdir, second_checkpoint):
    settings = compose.compose(["recipe=fleet", f"checkpoint=[tiny,{second_checkpoint}]",
                            "seeds=0-7", "runtime.max_pipelines=1"])
    found = run.resolve_models(settings.recipe)
    work = run.pending_work(settings.recipe, found, Finished(settings.folder, None))
    backend = run.start_backend(settings.runtime, settings.folder, "affinity")
    try:
        with settings.folder.locked(), Manifest(settings.folder.manifest) as manifest:
            summary = schedule.Summary(planned=32, skipped=0)
            schedule.run(backend, work, settings.folder, manifest, 1, settings.runtime,
                         summary, "affinity")
        loads = backend.loads()
    finally:
        backend.close()
    assert summary.rendered == 32
    assert all(count == 1 for worker in loads.values() for count in worker.values()), loads
    # each worker starts on its own checkpoint; at most one joins the other's when it is done
    assert sum(len(worker) for worker in loads.values()) <= 3, loads


@pytest.mark.parametrize("args, words", [
    (["runtime.workers=3"], "runtime.workers: got 3, but each GPU worker needs a GPU and the "
                            "Ray cluster has 2"),
    (["runtime.device=cpu", "runtime.workers=3", "runtime.threads=2"],
     "3 CPU workers x 2 threads need 6 CPUs, but the Ray cluster has 4"),
    (["runtime.device=tpu"], "runtime.device: got 'tpu'; allowed: cpu, cuda"),
])
def test_an_impossible_request_fails_fast_and_writes_nothing(workdir, capsys, args, words):
    started = time.monotonic()
    assert run_farm("render", "recipe=fleet", *args) == 2
    assert words in capsys.readouterr().err
    assert not (workdir / "outputs").exists()
    assert time.monotonic() - started < 30
