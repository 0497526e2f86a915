"""A plain worker: keeps pipelines loaded, renders batches, writes files, returns small records.

It knows nothing of Ray: the inline runtime calls it directly, and a Ray actor is a thin
shell around it.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import threading
import time
import traceback
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from weakref import WeakKeyDictionary

from PIL import Image

from farm import (adapters, encode, families, inputs, libraries, models, outputs,
                  preprocessors, render)
from farm.fields import CONTROLNET
from farm.jobs import Batch, Job, Loadout, Model, Result, WorkerSettings
from farm.scorers import Score, Work


@dataclass(frozen=True)
class Device:
    """Where a worker renders, and in which precision."""

    name: str  # "cpu", "cuda", "cuda:1"
    dtype: str  # "float32", "float16", "bfloat16"

    @staticmethod
    def detect() -> Device:
        """The first GPU in half precision, else the CPU in full precision."""
        import torch

        return Device.named("cuda" if torch.cuda.is_available() else "cpu")

    @staticmethod
    def named(name: str) -> "Device":
        """Half precision on a GPU, full precision on the CPU (where half is slow or missing)."""
        return Device(name, "float32" if name == "cpu" else "float16")


# torch.compile's backend for runtime.compile (tests use "eager": the same tracing, no codegen)
COMPILE_BACKEND = "inductor"
# The VAE decodes in tiles above this many pixels per image, and one image at a time above this
# many per call: a decision made from the job alone (so the same job decodes the same way
# everywhere), recorded in the image's provenance. Below them nothing changes.
TILE_ABOVE = 2048 * 2048
SLICE_ABOVE = 16 * 1024 * 1024
MAX_CONTROLNETS = 4  # ControlNets (and ControlNet pipelines) kept per pipeline
MAX_MAPS = 256  # detected maps kept, the least recently used out
# the pipeline of each kind of call, made from a loaded pipeline (the auto pipelines choose the
# ControlNet one when given a ControlNet, but not for a union ControlNet)
AUTO_PIPELINES = {"text2image": "AutoPipelineForText2Image",
                  "img2img": "AutoPipelineForImage2Image",
                  "inpainting": "AutoPipelineForInpainting"}
UNION_PIPELINES = {"text2image": "StableDiffusionXLControlNetUnionPipeline",
                   "img2img": "StableDiffusionXLControlNetUnionImg2ImgPipeline",
                   "inpainting": "StableDiffusionXLControlNetUnionInpaintPipeline"}


@dataclass
class SpeedUps:
    """What a loaded checkpoint's pipeline runs with beyond its weights, for the provenance."""

    compiled: bool = False  # its UNet is torch.compile'd
    fused: bool = False  # its UNet's attention runs fused QKV projections (until a LoRA)


class Worker:
    """A render worker: keeps pipelines loaded (least recently used out), renders batches, writes
    each image's files (or sends them back) and returns one small Result per job.

    Loads what a batch's Loadout names, applies its LoRAs, and renders it through render.py's
    stages. All torch work runs on one compute thread; images are encoded by a small pool.
    Tests and the inline runtime call it directly; a Ray actor (cluster.py) is a thin shell.
    """

    def __init__(self, run_root: str | Path | None, name: str = "worker-0",
                 device: Device | None = None, max_pipelines: int = 2,
                 threads: int | None = None, encode_threads: int | None = None,
                 compile: bool = False, fuse_qkv: bool = False):
        import torch

        libraries.quiet()
        # None: the run folder is not visible here; images go back to the driver as bytes
        self.folder = outputs.RunFolder(Path(run_root)) if run_root is not None else None
        self.name = name
        self.device = device or Device.detect()
        self.max_pipelines = max_pipelines
        # opt-in speed-ups that change the last bits of an image (recorded in its provenance):
        # torch.compile of the UNet, fused QKV projections in its attention
        self.compile, self.fuse_qkv = compile, fuse_qkv
        self.loads: Counter[str] = Counter()  # model identity -> times loaded, for tests and logs
        self._checkpoints: OrderedDict[str, object] = OrderedDict()
        self._vaes: OrderedDict[str, object] = OrderedDict()
        self._refiners: OrderedDict[str, object] = OrderedDict()
        self._controlnets: OrderedDict[str, object] = OrderedDict()
        # pipeline -> {(ControlNet identities, dtype, kind of call): its ControlNet pipeline}
        self._controlled: WeakKeyDictionary = WeakKeyDictionary()
        # (image identity, preprocessor settings, width, height, fit) -> (map, its pixel hash)
        self._maps: OrderedDict[tuple, tuple] = OrderedDict()
        self._img2img: WeakKeyDictionary = WeakKeyDictionary()  # pipeline -> its img2img twin
        self._inpainting: WeakKeyDictionary = WeakKeyDictionary()  # and its inpainting one
        # a pipeline with another VAE swapped in -> the checkpoint's pipeline whose UNet and
        # text encoders (and so LoRAs) it shares; a checkpoint's pipeline -> its speed-ups
        self._base_of: WeakKeyDictionary = WeakKeyDictionary()
        self._speedups: WeakKeyDictionary = WeakKeyDictionary()
        self._scheduler_configs: dict[str, dict] = {}
        self._flows: dict[str, bool] = {}  # checkpoint identity -> a flow-matching family
        self._loaded: list[tuple[str, float]] = []  # (model, seconds) loaded since last batch
        self._adapters: WeakKeyDictionary = WeakKeyDictionary()  # base pipeline -> its LoRAs
        self._embeddings: dict[str, dict] = {}  # embedding identity -> its vectors
        self._compute = ThreadPoolExecutor(1, thread_name_prefix=f"farm-{name}")  # all torch work
        self._compute_thread = self._compute.submit(threading.get_ident).result()
        self._scoring = None  # scoring.Scoring, made when a batch first asks for scores
        if threads:  # OpenMP's thread count is per calling thread: set it where torch runs
            self._compute.submit(torch.set_num_threads, threads).result()
        # images encoded and written at once (zlib lets go of the GIL): on a GPU the host's
        # cores are free for it; on the CPU they render, so one at a time unless told
        if encode_threads is None:
            encode_threads = 1 if self.device.name == "cpu" else max(1, (os.cpu_count() or 2) - 1)
        self._encoders = ThreadPoolExecutor(encode_threads, thread_name_prefix="farm-encode") \
            if encode_threads > 1 else None

    @staticmethod
    def built(settings: WorkerSettings) -> Worker:
        """A worker as a runtime describes it."""
        return Worker(settings.root, name=settings.name,
                      device=Device.named(settings.device) if settings.device else None,
                      max_pipelines=settings.max_pipelines, threads=settings.threads,
                      encode_threads=settings.encode_threads, compile=settings.compile,
                      fuse_qkv=settings.fuse_qkv)

    def dtype(self, requested: str, checkpoint: Model | None = None):
        """The torch dtype for a job's `dtype` field. "auto": the device's own (float32 on the
        CPU, float16 on a GPU), except bfloat16 on a GPU for the flow-matching families (SD3,
        Flux.1), which their makers release and run in bfloat16."""
        import torch

        name = requested
        if requested == "auto":
            name = self.device.dtype
            if name == "float16" and checkpoint is not None and self._flow(checkpoint):
                name = "bfloat16"
        return getattr(torch, name)

    def _flow(self, checkpoint: Model) -> bool:
        if checkpoint.identity not in self._flows:
            rules = families.rules(models.family(checkpoint))
            self._flows[checkpoint.identity] = rules is not None and rules.flow
        return self._flows[checkpoint.identity]

    def _cached(self, cache: OrderedDict, model: Model, field: str, dtype, load,
                limit: int | None = None):
        """Least-recently-used cache of loaded models, at most max_pipelines of each kind (or
        `limit`); what is loaded is checked to be the model planned first."""
        key = (model.identity, str(dtype))
        limit = limit or self.max_pipelines
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        if len(cache) >= limit:
            while len(cache) >= limit:
                cache.popitem(last=False)
            self._release()
        started = time.perf_counter()
        cache[key] = loaded = load(self.local(model, field), self.device.name, dtype)
        self.loads[model.identity] += 1
        self._loaded.append((model.ref, time.perf_counter() - started))
        return loaded

    def _release(self) -> None:
        """Give back what an evicted model held now, before the next one loads: the cycle
        collector (a model can sit in a reference cycle) and CUDA's cached blocks."""
        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def local(self, model: Model, field: str) -> Model:
        """The model as found on this machine (another node may keep its files elsewhere),
        checked to be what the driver planned: weights replaced since would give other pixels
        under the planned identity. The check costs a stat per file (hashes are cached by size
        and modification time)."""
        here = Path(model.path).exists()
        if model.identity.startswith("hub:") and here:  # a snapshot folder is its commit
            return model
        spec = model.ref if not here or model.identity.startswith("hub:") else model.path if \
            not model.config else f"{model.path}{models.CONFIG_MARK}{model.config}"
        found = replace(models.resolve(spec, field, variant=model.variant), ref=model.ref)
        if found.identity != model.identity:
            raise models.ModelError(field, model.ref, f"on {self.name} it is {found.identity[:16]}"
                                    f"..., not {model.identity[:16]}... as planned (its files "
                                    "changed since the plan, or differ on this node); render "
                                    "again to plan with what is there now")
        return found

    def pipeline(self, loadout: Loadout, dtype: str = "auto"):
        """The loadout's pipeline: its checkpoint's, with its VAE swapped in when it has one
        (nothing reloaded)."""
        checkpoint = loadout.checkpoint
        torch_dtype = self.dtype(dtype, checkpoint)
        base = self._cached(self._checkpoints, checkpoint, "checkpoint", torch_dtype,
                            self._load_checkpoint)
        self._scheduler_configs.setdefault(checkpoint.identity, dict(base.scheduler.config))
        if loadout.vae is None:
            return base
        swapped = self._cached(self._vaes, loadout.vae, "vae", torch_dtype, models.load_vae)
        pipe = type(base)(**{**base.components, "vae": swapped})
        pipe.set_progress_bar_config(disable=True)
        self._base_of[pipe] = base
        return pipe

    def _base(self, pipe):
        """The checkpoint's own pipeline of a (maybe VAE-swapped) pipeline."""
        return self._base_of.get(pipe, pipe)

    def _load_checkpoint(self, checkpoint: Model, device: str, dtype):
        """A checkpoint's pipeline with the runtime's opt-in speed-ups."""
        pipe = models.load_pipeline(checkpoint, device, dtype)
        unet = getattr(pipe, "unet", None)
        speedups = self._speedups[pipe] = SpeedUps()
        if self.fuse_qkv and unet is not None and hasattr(pipe, "fuse_qkv_projections"):
            pipe.fuse_qkv_projections(unet=True, vae=False)
            speedups.fused = True
        denoiser = unet if unet is not None else getattr(pipe, "transformer", None)  # SD3, Flux
        if self.compile and denoiser is not None:
            denoiser.compile(backend=COMPILE_BACKEND)  # in place: LoRAs still reach its layers
            speedups.compiled = True
        return pipe

    def img2img(self, pipe):
        """The img2img pipeline of a loaded pipeline: the same components (nothing loaded
        again, LoRAs included), made once."""
        return self._sibling(pipe, self._img2img, "img2img")

    def inpainting(self, pipe):
        """The inpainting pipeline of a loaded pipeline (an inpainting checkpoint's own class,
        or diffusers' inpainting pipeline for an ordinary one), made once likewise."""
        return self._sibling(pipe, self._inpainting, "inpainting")

    def _sibling(self, pipe, made: WeakKeyDictionary, kind: str):
        found = made.get(pipe)
        if found is None:
            found = made[pipe] = _made_from(pipe, AUTO_PIPELINES[kind])
        return found

    def refiner(self, loadout: Loadout, dtype: str, pipe) -> tuple[object, dict,
                                                                    encode.TextEncoding]:
        """The loadout's refiner pipeline, sharing the base's components whose weights are the
        same (SDXL's VAE and second text encoder), with the loadout's VAE when it has one;
        its scheduler config; its text encoding."""
        refiner = self._refiner(loadout, dtype, pipe)
        config = self._scheduler_configs.setdefault(loadout.refiner.identity,
                                                    dict(refiner.scheduler.config))
        if loadout.vae is not None:  # from_pipe keeps its config (the aesthetic score)
            refiner = type(refiner).from_pipe(refiner, vae=pipe.vae, scheduler=type(
                refiner.scheduler).from_config(refiner.scheduler.config))
            refiner.set_progress_bar_config(disable=True)
        return refiner, config, encode.TextEncoding(refiner, self.embedding)

    def _refiner(self, loadout: Loadout, dtype: str, pipe):
        """The loadout's refiner as loaded (the checkpoint's own VAE, or the base's)."""
        base = self._base(pipe)
        return self._cached(self._refiners, loadout.refiner, "refiner", self.dtype(dtype),
                            lambda model, device, torch_dtype: models.load_refiner(
                                model, device, torch_dtype,
                                self.local(loadout.checkpoint, "checkpoint"), base))

    def controlled(self, pipe, loadout: Loadout, dtype: str, kind: str):
        """The ControlNet pipeline of a loaded pipeline and the loadout's ControlNets (a
        MultiControlNet for several): the same components, nothing loaded again but the
        ControlNets, which are kept (MAX_CONTROLNETS per pipeline kept loaded)."""
        torch_dtype = self.dtype(dtype, loadout.checkpoint)
        nets = [self._cached(self._controlnets, model, CONTROLNET, torch_dtype,
                             models.load_controlnet, limit=self.max_pipelines * MAX_CONTROLNETS)
                for model in loadout.controlnets]
        key = (tuple(m.identity for m in loadout.controlnets), str(torch_dtype), kind)
        made = self._controlled.setdefault(pipe, {})
        found = made.get(key)
        if found is None:
            import diffusers

            if len(made) >= MAX_CONTROLNETS:  # let go of ControlNets no longer cached
                made.clear()
            union = isinstance(nets[0], diffusers.ControlNetUnionModel)
            found = made[key] = _made_from(pipe, (UNION_PIPELINES if union else
                                                  AUTO_PIPELINES)[kind],
                                           controlnet=nets if len(nets) > 1 else nets[0])
        return found

    def control_maps(self, job: Job, batch: Batch) -> list[tuple[Image.Image, str]]:
        """A job's detected maps, one per ControlNet unit, with their pixel hashes: its control
        image fitted to its size and run through the unit's preprocessor, made once per
        (pixels, preprocessor settings, size, fit)."""
        found = []
        for unit, image in zip(job.control, job.control_images):
            key = (image.identity, unit.settings, job.width, job.height, job.resize)
            if key not in self._maps:
                fitted = inputs.fit(self.input_image(image, batch), job.width, job.height,
                                    job.resize)
                detected = preprocessors.detect(fitted, unit)
                self._maps[key] = (detected, outputs.pixel_hash(detected))
                while len(self._maps) > MAX_MAPS:
                    self._maps.popitem(last=False)
            self._maps.move_to_end(key)
            found.append(self._maps[key])
        return found

    def input_image(self, image: Model, batch: Batch):
        """An input image of a job (any image field): sent with the batch, or read where it
        is; checked to be the pixels planned."""
        data = dict(batch.inputs).get(image.identity)
        if data is None:
            try:
                data = inputs.read(image.path)
            except (OSError, KeyError) as e:
                raise inputs.InputError(image.path, f"cannot be read on {self.name} ({e}); a "
                                        "worker on another node gets its inputs with the "
                                        "batch") from None
        decoded = inputs.decoded(data, image.path)
        if outputs.pixel_hash(decoded) != image.identity:
            raise inputs.InputError(image.path, "its pixels changed since the plan; render "
                                    "again to plan with what is there now")
        return decoded

    def with_loras(self, pipe, loras) -> None:
        """The job's LoRAs active on the pipeline's UNet and text encoders, and no others
        (loaded once, kept unfused; see adapters.Adapters)."""
        base = self._base(pipe)
        for other, loaded in list(self._adapters.items()):  # a group left: its LoRAs go
            if other is not base:
                loaded.release(other)
                del self._adapters[other]
        state = self._adapters.get(base)
        if state is None:
            if not loras:
                return
            state = self._adapters[base] = adapters.Adapters()
        for lora in loras:
            if not Path(lora.model.path).is_file():
                raise models.ModelError("loras", lora.model.ref, f"no file at {lora.model.path} "
                                        f"on {self.name}: give every node the same LoRA folder")
        speedups = self._speedups.get(base)
        if loras and speedups and speedups.fused:  # LoRAs patch the unfused layers
            base.unfuse_qkv_projections(unet=True, vae=False)
            speedups.fused = False
        started = time.perf_counter()
        if state.apply(pipe, loras):
            self._loaded.append(("LoRA " + "+".join(lora.name for lora in loras),
                                 time.perf_counter() - started))

    def embedding(self, embedding: Model) -> dict:
        """An embedding file's vectors, read once."""
        if embedding.identity not in self._embeddings:
            if len(self._embeddings) >= 64:
                self._embeddings.clear()
            self._embeddings[embedding.identity] = encode.load_embedding(embedding)
        return self._embeddings[embedding.identity]

    def render(self, batch: Batch) -> list[Result]:
        """Render a batch, write its images into the run folder, and say what happened.

        Callers may be several threads (inline runtime, Ray actor concurrency); all torch work
        runs on this worker's one compute thread, since OpenMP keeps a spinning thread team per
        calling thread and two teams fight over the cores. On a GPU the caller writes the PNGs
        while the next batch renders; on the CPU the compute thread writes them too, since PNG
        encoding would steal cores from torch.
        """
        if self.device.name == "cpu":
            return self._compute.submit(lambda: self._write(batch, *self._images(batch))).result()
        return self._write(batch, *self._compute.submit(self._images, batch).result())

    def _images(self, batch: Batch) -> tuple[list[render.Rendered], dict | None, float,
                                              tuple[tuple[str, float], ...], dict, dict]:
        """The batch's images (or errors), the scheduler that ran, the seconds it took, the
        models it loaded first (with their seconds), what else made them (provenance), and
        each job's detected maps with their hashes (ControlNet units)."""
        started, first = time.perf_counter(), batch.first
        try:
            pipe = self.pipeline(first.loadout, first.dtype)
            self.with_loras(pipe, first.loras)
            config = self._scheduler_configs[first.checkpoint.identity]
            stages = render.Stages(
                img2img=self.img2img, init=lambda job: self.input_image(job.init, batch),
                refiner=lambda: self.refiner(first.loadout, first.dtype, pipe),
                controlled=lambda base, kind: self.controlled(base, first.loadout,
                                                              first.dtype, kind),
                control=lambda job: [m for m, _ in self.control_maps(job, batch)],
                inpainting=self.inpainting,
                mask=lambda job: self.input_image(job.mask, batch))
            made = self._decoding(pipe, batch)
            if first.checkpoint.variant:  # its weights came from the repository's variant files
                made["weights_variant"] = first.checkpoint.variant
            speedups = self._speedups.get(self._base(pipe), SpeedUps())
            made.update({k: True for k, on in (("compile", speedups.compiled),
                                               ("fused_qkv", speedups.fused)) if on})
            images, scheduler = render.render(pipe, batch, config,
                                              encode.TextEncoding(pipe, self.embedding), stages)
            maps = {job.id: self.control_maps(job, batch) for job in batch.jobs if job.control}
        except Exception as e:  # one bad batch must not end the run: report it per job
            logging.getLogger(__name__).debug("batch failed:\n%s", traceback.format_exc())
            error = f"{type(e).__name__}: {e}"
            if _out_of_memory(e):  # the call was too big: the dispatcher splits it
                error = OutOfMemory(error)
                self._release()
            images, scheduler, made, maps = [error] * len(batch.jobs), None, {}, {}
        loaded, self._loaded = tuple(self._loaded), []
        return images, scheduler, time.perf_counter() - started, loaded, made, maps

    def score(self, work: Work) -> list[list[Score]]:
        """Score images (a farm score batch): each scorer's model is loaded once and kept."""
        images = [Image.open(io.BytesIO(data)) for data in work.images]
        return self._on_compute(self._scores, work.scorers, images, work.texts)

    def _scores(self, scorers, images, texts) -> list[list[Score]]:
        from farm.scoring import Scoring

        if self._scoring is None:
            self._scoring = Scoring(self.device.name)
        return self._scoring.score(scorers, images, texts)

    def _on_compute(self, call, *args):
        """Run `call` on the compute thread (directly, when this is it)."""
        if threading.get_ident() == self._compute_thread:
            return call(*args)
        return self._compute.submit(call, *args).result()

    def _scored(self, batch: Batch, images: list[render.Rendered]) -> list[tuple[Score, ...]]:
        """The scores a recipe's `score:` asks for, of each image that rendered; none when
        scoring fails (the image stays: farm score fills them in later)."""
        made = [(i, image) for i, image in enumerate(images) if not isinstance(image, str)]
        found: list[tuple[Score, ...]] = [() for _ in images]
        if not batch.scorers or not made:
            return found
        texts = [dict(batch.jobs[i].context).get("caption") or batch.jobs[i].prompt
                 for i, _ in made]
        try:
            scores = self._on_compute(self._scores, batch.scorers, [im for _, im in made], texts)
        except Exception:
            logging.getLogger(__name__).warning("scoring failed (farm score can score these "
                                                "images later):\n%s", traceback.format_exc())
            return found
        for (i, _), score in zip(made, scores):
            found[i] = tuple(score)
        return found

    def _decoding(self, pipe, batch: Batch) -> dict:
        """VAE tiling and slicing for this batch's size (TILE_ABOVE, SLICE_ABOVE), on every VAE
        the batch may decode with; what is on, for the provenance."""
        first = batch.first
        tiled = first.width * first.height > TILE_ABOVE
        sliced = len(batch.shape) * first.width * first.height > SLICE_ABOVE
        vaes = [pipe.vae]  # a recipe VAE is the refiner's too; else it may have its own
        if first.refiner is not None and first.vae is None:
            vaes.append(self._refiner(first.loadout, first.dtype, pipe).vae)
        for vae in vaes:
            if hasattr(vae, "enable_tiling"):
                vae.enable_tiling() if tiled else vae.disable_tiling()
            if hasattr(vae, "enable_slicing"):
                vae.enable_slicing() if sliced else vae.disable_slicing()
        return {k: True for k, on in (("vae_tiling", tiled), ("vae_slicing", sliced)) if on}

    def provenance(self, dtype: str, checkpoint: Model | None = None,
                   made: dict | None = None) -> str:
        """What made an image besides its job: the device, precision and software versions,
        and the speed-ups and decoding that were on (`made`)."""
        import diffusers
        import torch
        import transformers

        from farm import __version__

        device = self.device.name
        if device.startswith("cuda"):
            device = torch.cuda.get_device_name(torch.device(device))
        precision = str(self.dtype(dtype, checkpoint)).removeprefix("torch.")
        return json.dumps({
            "device": device, "dtype": precision, "farm": __version__,
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            **({"unet_memory_format": "channels_last"} if device != "cpu" else {}),
            **(made or {})})

    def _write(self, batch: Batch, images: list[render.Rendered], scheduler: dict | None,
               seconds: float, loaded: tuple[tuple[str, float], ...] = (),
               made: dict | None = None, maps: dict | None = None) -> list[Result]:
        record = json.dumps(scheduler, default=str) if scheduler else None
        made_by = self.provenance(batch.first.dtype, batch.first.checkpoint, made)
        def stored(job: Job, path: str, image: render.Rendered, position: int):
            """(files left for the driver, pixel hash, error, why the run must stop)."""
            if isinstance(image, str):
                return (), None, image, None
            detected = (maps or {}).get(job.id, ())
            files, pixel_hash = outputs.encode_image(image, job, batch.image, scheduler,
                                                     len(batch.shape), position,
                                                     [digest for _, digest in detected])
            if batch.image.detected_maps:  # beside the image: NAME.control0.png, ...
                files += tuple((f".control{i}.png", outputs.png_bytes(detected_map))
                               for i, (detected_map, _) in enumerate(detected))
            if self.folder is None:  # the driver writes them (runtime.outputs)
                return files, pixel_hash, None, None
            error, stop = self.folder.write(path, files)
            return (), pixel_hash, error, stop

        scores = self._scored(batch, images)
        items = list(zip(batch.jobs, batch.paths, images, batch.slots))
        done = list(self._encoders.map(lambda item: stored(*item), items)) \
            if self._encoders and len(items) > 1 else [stored(*item) for item in items]
        results = []
        for (job, path, image, position), (files, pixel_hash, error, stop) in zip(items, done):
            oom = isinstance(image, OutOfMemory)
            results.append(Result(job_id=job.id, path=path, pixel_hash=pixel_hash, stop=stop,
                                  files=files if error is None else (),
                                  seconds=seconds / len(batch.jobs),
                                  batch_size=len(batch.shape), position=position,
                                  worker=self.name, error=error, scheduler=record, oom=oom,
                                  provenance=made_by, loads=() if results else loaded,
                                  scores=scores[len(results)] if error is None else ()))
        return results



def _made_from(pipe, kind: str, **components):
    """A pipeline of diffusers class `kind` made from a loaded one (its components shared,
    nothing loaded again) with `components` added, and a scheduler of its own: a pipeline's
    constructor rewrites some schedulers' configs (DDIM's clip_sample), and the batch's one
    must stay as it was made."""
    import diffusers

    spare = type(pipe.scheduler).from_config(pipe.scheduler.config)
    made = getattr(diffusers, kind).from_pipe(pipe, scheduler=spare, **components)
    made.set_progress_bar_config(disable=True)
    return made


class OutOfMemory(str):
    """The error of a batch that ran out of (GPU) memory: a smaller call may fit."""


def _out_of_memory(error: Exception) -> bool:
    import torch

    kind = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(error, kind) or "out of memory" in str(error).lower()
