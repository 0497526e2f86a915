"""Opt-in speed-ups (torch.compile, fused QKV) and big-image decoding: recorded per image, and
`farm verify` renders like with like."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from farm import adapters, tiny as builtins, worker as workers
from farm.jobs import Batch, Lora
from farm.worker import Device, Worker
from tests.helpers import make_job, run_farm


@pytest.fixture
def eager(monkeypatch):
    """torch.compile's tracing without code generation: what compile changes, minus minutes of
    C++ compilation on this CPU."""
    monkeypatch.setattr(workers, "COMPILE_BACKEND", "eager")


def rendered(worker: Worker, jobs, tag: str):
    results = worker.render(Batch(tuple(jobs), tuple(f"images/00000/{tag}-{i}.png"
                                                     for i in range(len(jobs)))))
    assert all(r.ok for r in results), [r.error for r in results]
    return [(np.asarray(Image.open(worker.folder.root / r.path)).astype(int),
             json.loads(r.provenance)) for r in results]


def test_compile_and_fused_qkv_are_recorded_and_change_at_most_the_last_bits(
        tmp_path, tiny, eager):
    plain = Worker(tmp_path / "plain", device=Device("cpu", "float32"))
    compiled = Worker(tmp_path / "compiled", device=Device("cpu", "float32"), compile=True)
    fused = Worker(tmp_path / "fused", device=Device("cpu", "float32"), fuse_qkv=True)
    job = make_job(tiny)
    (base, made), = rendered(plain, [job], "a")
    assert "compile" not in made and "fused_qkv" not in made
    (image, made), = rendered(compiled, [job], "a")
    assert made["compile"] is True and np.abs(image - base).max() <= 1
    assert hasattr(compiled.pipeline(job.loadout).unet, "_compiled_call_impl")
    (image, made), = rendered(fused, [job], "a")
    assert made["fused_qkv"] is True and np.abs(image - base).max() <= 1


def test_a_lora_batch_on_fused_projections_unfuses_them_first(tmp_path, tiny):
    """LoRAs patch the separate q, k, v layers: on fused ones they would do nothing."""
    lora = Lora(adapters.find_lora(str(builtins.write_lora("tiny", tmp_path / "ink.safetensors",
                                                            "kohya")), tmp_path), 1.0)
    plain = Worker(tmp_path / "plain", device=Device("cpu", "float32"))
    fused = Worker(tmp_path / "fused", device=Device("cpu", "float32"), fuse_qkv=True)
    job = make_job(tiny, loras=(lora,))
    (expected, _), = rendered(plain, [job], "lora")
    (image, made), = rendered(fused, [job], "lora")
    assert "fused_qkv" not in made
    assert np.abs(image - expected).max() <= 1
    (without, _), = rendered(plain, [make_job(tiny)], "none")
    assert np.abs(without - expected).max() > 1  # the LoRA does change the image


def test_vae_tiling_and_slicing_follow_the_job_size_and_are_recorded(tmp_path, tiny,
                                                                     monkeypatch):
    worker = Worker(tmp_path, device=Device("cpu", "float32"))
    monkeypatch.setattr(workers, "TILE_ABOVE", 64 * 64 - 1)
    monkeypatch.setattr(workers, "SLICE_ABOVE", 2 * 64 * 64 - 1)
    (_, alone), = rendered(worker, [make_job(tiny)], "one")
    assert alone["vae_tiling"] is True and "vae_slicing" not in alone
    pair = rendered(worker, [make_job(tiny, seed=s) for s in (1, 2)], "two")
    assert all(made["vae_slicing"] is True for _, made in pair)
    (_, small), = rendered(worker, [make_job(tiny, width=32, height=32)], "small")
    assert "vae_tiling" not in small and "vae_slicing" not in small
    vae = worker.pipeline(make_job(tiny).loadout).vae
    assert not vae.use_tiling and not vae.use_slicing


def test_verify_renders_with_the_speedups_that_made_each_image(tmp_path, monkeypatch, eager,
                                                              capsys):
    (tmp_path / "fast.yaml").write_text("name: fast\nprompt: a fox\nseeds: 0-1\nsize: 64x64\n"
                                        "steps: 3\n")
    assert run_farm("render", f"recipe={tmp_path / 'fast.yaml'}", "runtime=inline",
                    "runtime.compile=true", f"outputs={tmp_path / 'out'}") == 0
    made = []

    class Spy(Worker):
        def __init__(self, *args, **kwargs):
            made.append((kwargs.get("compile"), kwargs.get("fuse_qkv")))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(workers, "Worker", Spy)
    capsys.readouterr()
    assert run_farm("verify", str(tmp_path / "out" / "fast"), "--all") == 0
    assert made == [(True, False)]
    assert capsys.readouterr().out.count("identical") == 2
    assert run_farm("render", f"recipe={tmp_path / 'fast.yaml'}", "runtime=inline",
                    "runtime.compile=maybe", f"outputs={tmp_path / 'out'}") == 2
    assert "runtime.compile" in capsys.readouterr().err


def test_compile_reaches_a_transformer_and_fused_qkv_is_refused_there(tmp_path, eager,
                                                                      monkeypatch, capsys):
    """SD3's and Flux's denoiser is a transformer: compiled like a UNet, not silently skipped;
    fused projections are not tested there, so a run that asks for them is refused."""
    from farm import models

    flux = models.resolve("tiny-flux", "checkpoint")
    job = make_job(flux, width=64, height=64, negative="", cfg=1.0, guidance=3.5,
                   max_sequence_length=512)
    compiled = Worker(tmp_path / "compiled", device=Device("cpu", "float32"), compile=True)
    (_, made), = rendered(compiled, [job], "flux")
    assert made["compile"] is True
    assert hasattr(compiled.pipeline(job.loadout).transformer, "_compiled_call_impl")
    (tmp_path / "r.yaml").write_text("checkpoint: tiny-flux\nprompt: a fox\nsize: 64x64\n")
    assert run_farm("render", f"recipe={tmp_path / 'r.yaml'}", "runtime=inline",
                    "runtime.fuse_qkv=true", f"outputs={tmp_path / 'out'}") == 2
    assert "runtime.fuse_qkv: checkpoint 'tiny-flux' is Flux.1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
