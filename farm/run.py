"""A render run as numbered steps: what `farm render` does, and the counts `farm plan` and
`farm status` show. The command line, the benchmarks and the tests call these; nothing here
prints."""

from __future__ import annotations

import json
import shutil
import signal
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from farm import (adapters, catalog, emphasis, families, gallery, grid, inputs, models, plan,
                  samplers, schedule, scorers, seals)
from farm import recipe as recipes
from farm.fields import BY_NAME, VAE
from farm.keys import BY_KEY, DEFAULTS, INPUT_KEYS, effective_pair, input_paths
from farm.plan import Resolved
from farm.compose import BadInput, Settings
from farm.finished import CHUNK, Finished, paused_gc
from farm.jobs import Job, Loadout, Lora, Model, Slot
from farm.manifest import Manifest, ManifestDamaged, ManifestUnwritable
from farm.outputs import RunFolder
from farm.schedule import Backend, Runtime, RuntimeUnavailable, Summary


# 1. models ---------------------------------------------------------------------------------------

def resolve_models(recipe: recipes.Recipe, half: bool | None = None) -> Resolved:
    """Every model the recipe's loaded axes name (checkpoints, VAEs, refiners), checked and
    identified; its input images, identified by their pixels; then every LoRA and embedding its
    sets and prompts name, and every prompt's emphasis, checked against each checkpoint: bad
    input is refused here, before a run folder is touched. `half`: the jobs render in float16
    (default: when the recipe says so), so a hub pipeline's fp16 weight files are fetched
    instead of its full ones where the repository has them."""
    variant = "fp16" if (recipe["dtype"] == "float16" if half is None else half) else None
    found: dict[str, Model] = {}
    sources: dict[str, str] = {}  # what each reference was resolved as
    loaded = recipes.loaded_refs(recipe)
    for key, refs in loaded.items():
        source = BY_NAME[BY_KEY[key].sets[0]].source
        label = BY_KEY[key].loads_from or key
        seen: dict[str, str] = {}
        for ref in (r for value in refs for r in (value if isinstance(value, tuple) else (value,))
                    if r is not None):
            if sources.setdefault(ref, source) != source or ref not in found:  # (refused)
                found[ref] = models.resolve(ref, source, label,
                                            variant=None if source == VAE else variant)
            twin = seen.setdefault(found[ref].identity, ref)
            if twin != ref:  # two spellings of one model would plan every job twice
                raise BadInput(f"recipe {recipe.name}: {label}: {twin!r} and {ref!r} are the "
                               f"same model (identity {found[ref].identity[:16]}...); list it "
                               "once")
    weights: dict[str, str] = {}
    for ref in (r for r in recipe["vae"] if r is not None):
        twin = weights.setdefault(models.vae_weights(found[ref]), ref)
        if twin != ref:  # a checkpoint folder and its vae/: one VAE, two identities
            raise BadInput(f"recipe {recipe.name}: vae: {twin!r} and {ref!r} are the same VAE "
                           "weights (a checkpoint folder and its vae/ folder), which would "
                           "render the same images under two ids; list it once")
    controlnets = {r for units in loaded["control"] for r in units}
    for ref in recipe["checkpoint"]:
        check_family(recipe, ref, models.family(found[ref]))
        for unit in controlnets:
            problem = models.controlnet_fits(found[unit], found[ref])
            if problem:
                raise BadInput(f"recipe {recipe.name}: control.model: {unit!r} cannot steer "
                               f"checkpoint {ref!r}: {problem}")
    check_control_modes(recipe, found)
    for ref in (r for r in loaded["refiner"] if r is not None):
        pipeline = models.family(found[ref]).pipeline
        if pipeline not in SDXL_PIPELINES:
            raise BadInput(f"recipe {recipe.name}: refiner.checkpoint: {ref!r} is a {pipeline}; "
                           "a refiner is an SDXL checkpoint (StableDiffusionXLImg2ImgPipeline, "
                           "e.g. stabilityai/stable-diffusion-xl-refiner-1.0)")
    reader = adapters.Reader(recipe.base)
    for ref in recipe["checkpoint"]:
        checkpoint = found[ref]
        sets = [tuple(Lora(reader.lora(lora, checkpoint, f"loras[{i}]" if len(recipe["loras"]) > 1
                                       else "loras"), weight) for lora, weight in lora_set)
                for i, lora_set in enumerate(recipe["loras"])]
        for row in recipe.prompt_rows():
            negative = recipe["negative"] if row.negative is None else row.negative
            for mode in recipe["emphasis"]:
                tagged = reader.read(row.text, negative, checkpoint, mode).loras
                for lora_set in sets if tagged else ():  # the same LoRA twice: refused now
                    adapters.joined(lora_set, tagged, f"prompt {row.text[:60]!r}")
    try:
        scoring = scorers.resolve_all(recipe["score"])
    except scorers.ScorerError as e:
        raise BadInput(f"recipe {recipe.name}: {e}") from None
    return Resolved(found, identified_inputs(recipe), reader, scoring)


def check_control_modes(recipe: recipes.Recipe, found: Mapping[str, Model]) -> None:
    """A union ControlNet's units name their control type (control_mode, below its count) and
    are alone in their set (one diffusers union call); an ordinary one takes no mode."""
    for units in (u for u in recipe["control"] if u):
        for ref, unit in units:
            types = models.control_types(found[ref])
            where = f"recipe {recipe.name}: control.control_mode: {ref!r} is "
            if types is None and unit.mode is not None:
                raise BadInput(where + "an ordinary ControlNet, which takes no control_mode "
                               "(a union ControlNet does); leave it out")
            if types is not None and (unit.mode is None or unit.mode >= types):
                raise BadInput(where + f"a union ControlNet of {types} control types: give "
                               f"each unit control_mode 0 to {types - 1} (got {unit.mode})")
            if types is not None and recipe.uses("mask"):
                raise BadInput(where + "a union ControlNet: farm does not inpaint with one yet "
                               "(an ordinary ControlNet steers inpainting)")
            if types is not None and len(units) > 1:
                raise BadInput(where + "a union ControlNet: farm runs it as the only unit of "
                               "its set")


SDXL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")


def identified_inputs(recipe: recipes.Recipe) -> dict[str, Model]:
    """The recipe's input images by path, each read and identified by its pixels; an unreadable
    one, or two files of the same pixels, is refused (their jobs would be the same)."""
    found: dict[str, Model] = {}
    for key in INPUT_KEYS:
        paths = input_paths(key, recipe[key.name])
        seen: dict[str, str] = {}
        try:
            for model in inputs.identify(dict.fromkeys(paths)):
                twin = seen.setdefault(model.identity, model.path)
                if twin != model.path and key.axis and not recipe.zipped(key.name, "prompt"):
                    raise BadInput(f"recipe {recipe.name}: {key.name}: {twin} and {model.path} "
                                   "have the same pixels, so their jobs would be the same; "
                                   "remove one")
                found[model.path] = model
        except inputs.InputError as e:
            raise BadInput(f"recipe {recipe.name}: {key.name}: {e.given}: {e.problem}") from None
    for image, mask in (recipe["mask"] or {}).items():
        try:
            sizes = inputs.size_of(image), inputs.size_of(mask)
        except (OSError, KeyError, ValueError) as e:
            raise BadInput(f"recipe {recipe.name}: mask: {mask}: cannot be read ({e})") from None
        if sizes[0] != sizes[1]:
            raise BadInput(f"recipe {recipe.name}: mask: {mask} is {sizes[1][0]}x{sizes[1][1]}, "
                           f"but its image {image} is {sizes[0][0]}x{sizes[0][1]}; a mask is "
                           "the size of its image")
    return found


def check_family(recipe: recipes.Recipe, ref: str, family: models.Family) -> None:
    """Refuse a checkpoint of a family farm does not test (families.py: others, rendered with
    an SD sampler, would give wrong images with exit 0), and what its family does not take."""
    rules = families.rules(family)
    if rules is None:
        raise BadInput(f"recipe {recipe.name}: checkpoint: {ref!r} is a {family.pipeline}; "
                       f"farm renders the families it tests: {families.tested()}")
    where = f"recipe {recipe.name}: {{}}: checkpoint {ref!r} is {rules.name}"
    if rules.flow:
        for sampler in recipe["sampler"]:
            for spacing in recipe["scheduler"]:
                if effective_pair(sampler, spacing) not in families.FLOW_SAMPLERS:
                    raise BadInput(where.format("sampler") + f", a flow-matching model, which "
                                   "farm renders with euler (its own scheduler; scheduler "
                                   "automatic or simple, karras, beta, exponential), dpmpp_2m "
                                   "or uni_pc_bh2 (scheduler automatic or simple: its own "
                                   f"shift): got {sampler!r} with {spacing!r}")
                since = families.NEEDS_DIFFUSERS.get(
                    (family.pipeline, effective_pair(sampler, spacing)[0]))
                if since and families.diffusers_version() < since:
                    raise BadInput(where.format("sampler") + f": {sampler!r} needs diffusers "
                                   f"{'.'.join(map(str, since))} or later on it (installed: "
                                   f"{'.'.join(map(str, families.diffusers_version()))}); "
                                   "use euler, or upgrade diffusers")
    for width, height in recipe["size"]:
        if width % rules.multiple or height % rules.multiple:
            raise BadInput(where.format("size") + f", which takes sizes in multiples of "
                           f"{rules.multiple} (got {width}x{height})")
    if recipe["guidance"] != (None,) and rules.guidance is None:
        raise BadInput(where.format("guidance") + ", which takes no distilled guidance (only "
                       "Flux.1-dev does); leave guidance unset, and use cfg")
    cfgs = [rules.cfg if cfg is None else cfg for cfg in recipe["cfg"]]
    if rules.guidance is not None or rules.cfg == 1:  # Flux.1: cfg is true CFG, 1 is off
        if recipe.uses_negative() and min(cfgs) <= 1:
            raise BadInput(where.format("negative") + ", whose negative prompt works only "
                           "with true CFG: set cfg above 1 (about 2 to 4; each step then runs "
                           "twice), or leave negative empty")
        if max(cfgs) > 1 and not recipe.uses_negative():
            raise BadInput(where.format("cfg") + ", on which cfg is true CFG: it needs a "
                           "negative prompt, and without one changes nothing; leave cfg unset "
                           + ("(guidance is Flux.1-dev's distilled guidance)"
                              if rules.guidance is not None else "(1)"))
    if recipe["max_sequence_length"] is not None and rules.t5_tokens is None:
        raise BadInput(where.format("max_sequence_length") + ", which has no T5 text encoder; "
                       "leave max_sequence_length unset")
    if rules.flow and recipe["vae"] != (None,):  # an SD VAE (4 channels) would not fit
        raise BadInput(where.format("vae") + ", on which farm does not test VAE swaps yet; "
                       "leave vae unset (the checkpoint's own)")
    if not rules.clip_skip and recipe["clip_skip"] != (DEFAULTS["clip_skip"],):
        raise BadInput(where.format("clip_skip") + ", on which farm does not test clip skip; "
                       "leave clip_skip at 1")
    for name in (*(k.name for k in INPUT_KEYS), "hires"):
        if recipe.uses(name) and not rules.stages:
            raise BadInput(where.format(name) + f"; farm renders {name} with Stable Diffusion "
                           "1.x/2.x and SDXL checkpoints")
    if rules.inpainting and not recipe.uses("mask"):
        raise BadInput(where.format("mask") + ", which repaints the masked part of an input "
                       "image: set init and mask (or use an ordinary checkpoint)")
    if rules.inpainting and recipe.uses("control"):
        raise BadInput(where.format("control") + "; farm runs ControlNets on ordinary "
                       "checkpoints")
    if recipe.uses("refiner") and family.pipeline != "StableDiffusionXLPipeline":
        raise BadInput(f"recipe {recipe.name}: refiner: checkpoint {ref!r} is a "
                       f"{family.pipeline}; a refiner finishes an SDXL base model's render")


def saved_models(found: Mapping[str, Model]) -> dict[str, dict[str, Any]]:
    """The resolved models as a run record keeps them, so that the run folder's own tools
    (status) need no model files."""
    return {ref: {"identity": m.identity, "path": m.path, "config": m.config,
                  **({"variant": m.variant} if m.variant else {})} for ref, m in found.items()}


# 2. counting ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Counts:
    planned: int  # distinct jobs
    done: int
    failed: int
    repeats: int = 0  # jobs the plan reaches a second time (rendered once)

    @property
    def pending(self) -> int:
        return self.planned - self.done


def schedulers(recipe: recipes.Recipe, found: Resolved) -> list[str]:
    """Which diffusers scheduler each checkpoint's jobs run with, per sampler and schedule:
    `CHECKPOINT, SAMPLER + SCHEDULE: CLASS (...)`."""
    lines = []
    for ref in recipe["checkpoint"]:
        checkpoint = found.models[ref]
        file = Path(checkpoint.config or checkpoint.path) / "scheduler" / "scheduler_config.json"
        if not file.is_file():  # the built-in instant checkpoint's pipeline returns noise
            lines.append(f"{ref}: none (its pipeline has no scheduler)")
            continue
        config = json.loads(file.read_text())
        for sampler in recipe["sampler"]:
            for spacing in recipe["scheduler"]:
                pair = effective_pair(sampler, spacing)
                lines.append(f"{ref}, {' + '.join(pair)}: "
                             f"{samplers.described(config, *pair)}")
    return lines


def cut_prompts(recipe: recipes.Recipe, found: Resolved) -> list[str]:
    """The recipe's prompts (and negatives) that a text encoder will cut: past 75 tokens under
    `emphasis: none`, past max_sequence_length T5 tokens. Their images record it (truncated);
    `farm plan` says so first. At most 100 are reported."""
    cut: dict[str, None] = {}
    reader = found.reader
    for ref in recipe["checkpoint"]:
        checkpoint = found.models[ref]
        rules = families.rules(reader.family(checkpoint))
        length = None if rules is None or rules.t5_tokens is None else \
            recipe["max_sequence_length"] or rules.t5_tokens
        for row in recipe.prompt_rows():
            negative = recipe["negative"] if row.negative is None else row.negative
            text = emphasis.loras(row.text)[0]
            if any(reader.read(row.text, negative, checkpoint, mode).truncated
                   for mode in recipe["emphasis"]) or (length is not None and max(
                       reader.t5_tokens(t, checkpoint) for t in (text, negative)) > length):
                cut[row.text] = None
                if len(cut) >= 100:
                    return list(cut)
    return list(cut)


def count(recipe: recipes.Recipe, folder: RunFolder, found: Resolved) -> Counts:
    """How many distinct jobs of the plan are done, and how many failed last time they were
    tried."""
    if not folder.manifest.exists() and not plan.repeated_prompts(recipe):
        return Counts(recipe.job_count, 0, 0)  # nothing done, nothing reached twice
    manifest = Manifest(folder.manifest, readonly=True) if folder.manifest.exists() else None
    try:
        held = seals.sealed(folder, manifest, recipe, found) if manifest else None
        if held is not None:  # a plan sealed all done, untouched since: nothing to stream
            return Counts(**held)
        return survey(recipe, folder, found, manifest, refresh=False, keep=0).counts
    finally:
        if manifest:
            manifest.close()


KEEP_PENDING = 100_000  # pending jobs a resume keeps from its one pass over the plan (~100 MB)


@dataclass
class Survey:
    """One pass over the plan against the run folder, before a render: the counts, how many
    finished jobs' records were brought up to date, and the jobs left to render by loadout,
    kept when there are at most KEEP_PENDING of them (else streamed again, once)."""

    counts: Counts
    refreshed: int
    left: dict[Loadout, int]  # pending jobs per loadout (a job the plan reaches twice included)
    kept: dict[Loadout, list[tuple[Job, Slot | None]]] | None

    def work(self, recipe: recipes.Recipe, found: Resolved,
             finished: Finished) -> list[schedule.Work]:
        """The pending batches of each loadout, with their job counts."""
        work = []
        for loadout, left in self.left.items():
            pending = iter(self.kept[loadout]) if self.kept is not None else \
                finished.pending(plan.jobs(recipe, found, loadout))
            work.append(schedule.Work(loadout, plan.batches(pending, recipe["batch_size"]), left))
        return work


def survey(recipe: recipes.Recipe, folder: RunFolder, found: Resolved,
           manifest: Manifest | None, refresh: bool = True,
           keep: int = KEEP_PENDING) -> Survey:
    """Stream the plan once: each job's state in the manifest (done, failed, pending), the
    finished jobs' recorded prompt context refreshed (the same ids: templates, prompt-file
    columns and captions may have been edited; `refresh` False: left alone), and what is left,
    by loadout (up to `keep` pending jobs kept)."""
    repeated = plan.repeated_prompts(recipe)
    refresh = refresh and manifest is not None and (recipe.has_context()
                                                    or manifest.has_context())
    states: Counter[str] = Counter()
    left: dict[Loadout, int] = {}
    kept: dict[Loadout, list] | None = {} if keep else None
    ids: set[str] = set()  # of repeated prompts' jobs: only they can be reached twice
    chunk: list[Job] = []
    refreshed = 0
    pending = 0
    with paused_gc():
        for job, state, row in Finished(folder, manifest).mark(plan.jobs(recipe, found)):
            # a job the plan reaches again: handed out all the same (if not done), skipped by
            # the claim
            repeat = False
            if repeated and hash((job.prompt, job.negative)) in repeated:
                repeat = job.id in ids
                ids.add(job.id)
            if not repeat:
                states[state] += 1
                if refresh:
                    chunk.append(job)
                    if len(chunk) >= CHUNK:
                        refreshed, chunk = refreshed + manifest.refresh(chunk), []
            if state != "done":
                loadout, pending = job.loadout, pending + 1
                left[loadout] = left.get(loadout, 0) + 1
                if kept is not None:
                    kept.setdefault(loadout, []).append(
                        (job, row.slot if row is not None and row.status == "done" else None))
                    if pending > keep:
                        kept = None
    if chunk:
        refreshed += manifest.refresh(chunk)
    planned = sum(states.values())
    counts = Counts(planned, states["done"], states["failed"], recipe.job_count - planned)
    return Survey(counts, refreshed, left, kept)


def sealing_survey(recipe: recipes.Recipe, folder: RunFolder, found: Resolved,
                   manifest: Manifest, **options) -> Survey:
    """survey(), and the plan sealed if it found every job done (the image folders' times
    taken before the pass: a file deleted while it went on unseals it)."""
    before = seals.folders(folder)
    seen = survey(recipe, folder, found, manifest, **options)
    if seen.counts.pending == 0:
        seals.seal(manifest, recipe, found, asdict(seen.counts), before)
    return seen


# 3. the render run ------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What a render did: its summary (rendered, skipped, failed, timings), the sheets drawn."""

    folder: RunFolder
    summary: Summary
    sheets: list[grid.Sheet] = field(default_factory=list)
    grid_errors: list[str] = field(default_factory=list)
    refreshed: int = 0  # finished images whose recorded prompt context was brought up to date
    interrupted: str | None = None  # "interrupt" (Ctrl-C) or "terminate" (SIGTERM): stopped
    gallery: Path | None = None  # the gallery refreshed after it (a recipe's gallery: true)

    @property
    def ok(self) -> bool:
        return not (self.summary.failed or self.summary.unfinished or self.interrupted)


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm, Kubernetes, spot instances, docker stop): stop as on Ctrl-C."""


@dataclass
class Received:
    """The stopping signal this process received last. What was received decides the exit
    code, not the exception's type: a signal that lands inside Ray's `ray.wait` comes out of it
    as a plain KeyboardInterrupt whatever it was."""

    terminated: bool = False


RECEIVED = Received()


def terminate(number, frame) -> None:
    """The SIGTERM handler: say so, then raise Terminated where the program is."""
    RECEIVED.terminated = True
    raise Terminated()


def stopped_by(error: KeyboardInterrupt) -> str:
    """"terminate" (SIGTERM) or "interrupt" (Ctrl-C): what stopped the program."""
    return "terminate" if isinstance(error, Terminated) or RECEIVED.terminated else "interrupt"


@contextmanager
def terminations_as_interrupts() -> Iterator[None]:
    """While rendering, SIGTERM raises Terminated, as Ctrl-C raises KeyboardInterrupt (set
    again after the workers start: Ray installs its own handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    previous = signal.signal(signal.SIGTERM, terminate)
    RECEIVED.terminated = False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_backend(runtime: Runtime, folder: RunFolder, label: str) -> Backend:
    """Start the workers of a runtime, or fail fast with RuntimeUnavailable."""
    root = folder.root.resolve()  # workers run elsewhere (another cwd, another node)
    if runtime.kind == "inline":
        return schedule.InlineBackend(runtime, root)
    if runtime.kind == "ray":
        from farm.cluster import RayBackend

        return RayBackend(runtime, root, label)
    raise RuntimeUnavailable(f"runtime: got {runtime.kind!r}; allowed: ray, inline")


def render(settings: Settings) -> Outcome:
    """Render what the recipe asks for and the run folder does not hold yet."""
    recipe, folder = settings.recipe, settings.folder
    # 1. check the runtime, the models and the folder before anything is written
    schedule.check_runtime(settings.runtime)
    found = resolve_models(recipe, half=recipe["dtype"] == "float16" or (
        recipe["dtype"] == "auto" and (settings.runtime.device or "").startswith("cuda")))
    if settings.runtime.fuse_qkv:  # a UNet's projections; not tested on a transformer yet
        for ref in recipe["checkpoint"]:
            rules = families.rules(models.family(found.models[ref]))
            if rules.flow:
                raise BadInput(f"runtime.fuse_qkv: checkpoint {ref!r} is {rules.name}, on "
                               "which farm does not fuse projections yet; leave it off")
    stored = folder.stored_suffix()
    if stored not in (None, recipe.image.suffix):
        raise BadInput(f"recipe {recipe.name}: format: got {recipe.image.kind!r}, but "
                       f"{folder.root} holds {stored} images; a run folder keeps one format "
                       "(render into another name=..., or farm export to convert)")
    # 2. take the folder's lock first: a busy folder is refused before any worker starts
    root = folder.root.resolve()
    created = None if root.exists() else root  # the outermost folder the lock creates
    while created is not None and not created.parent.exists():
        created = created.parent
    try:
        with folder.locked(), sole_writer(folder):
            outcome = _render_locked(settings, found)
    except Exception:
        # a render refused before it made an image leaves no folder it created behind
        if created is not None and not any((root / "images").glob("*/*")):
            shutil.rmtree(created, ignore_errors=True)
        raise
    # 3. the contact sheets and the gallery the recipe asks for, from every finished image
    if not outcome.interrupted:
        outcome.sheets, outcome.grid_errors = draw_recipe_grids(recipe, folder)
        if recipe["gallery"]:
            outcome.gallery = gallery.build(folder.root).folder
    return outcome


@contextmanager
def sole_writer(folder: RunFolder) -> Iterator[None]:
    """The manifest's own guard against a second render writing the folder, for filesystems
    where the file lock does not reach other machines (some NFS setups): a claim renewed while
    the render runs, released when it ends."""
    with Manifest(folder.manifest) as manifest:
        manifest.claim_writer()
    try:
        with Manifest.heartbeats(folder.manifest):
            yield
    finally:
        try:
            with Manifest(folder.manifest) as manifest:
                manifest.release_writer()
        except (ManifestUnwritable, ManifestDamaged):  # the claim goes stale on its own
            pass


def _render_locked(settings: Settings, found: Resolved) -> Outcome:
    recipe, folder = settings.recipe, settings.folder
    # 1. one pass over the plan: how much is done, what is left, finished records brought up
    #    to date; with everything done, that is all
    #    (a plan sealed all done, untouched since: nothing to stream)
    with Manifest(folder.manifest) as manifest:
        held = seals.sealed(folder, manifest, recipe, found)
        seen = Survey(Counts(**held), 0, {}, {}) if held is not None else \
            sealing_survey(recipe, folder, found, manifest)
        last = manifest.last_run()
    counts = seen.counts
    if counts.pending == 0:  # report.json keeps what the last render that did something did
        summary = Summary(planned=counts.planned, skipped=counts.done)
        if folder.read_report() is None:
            folder.write_report(report(recipe, summary, last, folder))
        return Outcome(folder, summary, refreshed=seen.refreshed)
    # 2. start the workers (fails fast with RuntimeUnavailable; nothing written yet)
    backend = start_backend(settings.runtime, folder, recipe.name)
    interrupted = None
    try:
        with Manifest(folder.manifest) as manifest:
            # 3. begin a run: clear half-written files, record the recipe and its models
            folder.remove_partial_files()
            record = run_record(settings, found)
            run_id = manifest.begin_run(record, counts.planned,
                                        max(folder.recorded_runs(), default=0))
            manifest.add_scorers(found.scorers)
            folder.save_recipe(run_id, record)
            # 4. the pending batches of each loadout (the folder was ours since the survey)
            work = seen.work(recipe, found, Finished(folder, manifest, run_id))
            summary = Summary(planned=counts.planned, skipped=counts.done)
            # 5. render, recording each result as it comes; SIGTERM and Ctrl-C let the batches in
            #    flight finish for runtime.grace seconds and record them
            try:
                with terminations_as_interrupts():
                    schedule.run(backend, work, folder, manifest, run_id, settings.runtime,
                                 summary, label=recipe.name, scorers=found.scorers)
            except KeyboardInterrupt as e:
                interrupted = stopped_by(e)
            finally:
                try:
                    manifest.end_run(run_id, summary.rendered, summary.skipped, summary.failed,
                                     summary.seconds)
                    if interrupted is None and not (summary.failed or summary.unfinished
                                                    or summary.stopped) \
                            and summary.rendered == counts.pending:
                        # all rendered: one more pass (a file may have gone since the first)
                        # and the plan is sealed if it finds everything done
                        sealing_survey(recipe, folder, found, manifest, refresh=False, keep=0)
                except ManifestUnwritable:  # summary.stopped says so; the next run resumes
                    pass
                try:
                    folder.write_report(report(recipe, summary, manifest.last_run(), folder))
                except OSError:  # the same full disk: the summary printed is the report
                    pass
    finally:
        backend.close()
    return Outcome(folder, summary, refreshed=seen.refreshed, interrupted=interrupted)


def report(recipe: recipes.Recipe, summary: Summary, last: dict | None,
           folder: RunFolder | None = None) -> dict[str, Any]:
    """What a render did, for report.json and `farm status`: counts, failures by error type,
    speed overall and per worker, time to the first image, model loads, software versions;
    with the `folder`, the distribution of its scores (curation.distribution)."""
    from importlib.metadata import PackageNotFoundError, version

    failures: dict[str, dict[str, Any]] = {}
    for r in summary.failures:
        kind = (r.error or "").split(":")[0].strip() or "error"
        group = failures.setdefault(kind, {"count": 0, "examples": []})
        group["count"] += 1
        if len(group["examples"]) < 5:
            group["examples"].append({"id": r.job_id, "path": r.path, "error": r.error})
    versions = {}
    for package in ("farm", "torch", "diffusers", "transformers", "ray"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    seconds = summary.seconds
    return {
        "recipe": recipe.name,
        "run": last["id"] if last else None,
        "started_at": last["started_at"] if last else None,
        "ended_at": last["ended_at"] if last else None,
        "jobs": {"planned": summary.planned, "done": summary.skipped + summary.rendered,
                 "rendered": summary.rendered, "skipped": summary.skipped,
                 "failed": summary.failed, "unfinished": summary.unfinished,
                 "repeats": summary.duplicates},
        "workers_problem": summary.problem or None,
        "hung_workers": summary.hung,
        "wall_seconds": round(seconds, 3),
        "images_per_second": round(summary.images_per_second, 3),
        "first_image_seconds": None if summary.first_image_seconds is None
        else round(summary.first_image_seconds, 3),
        "per_worker": {w: {"images": n, "images_per_second": round(n / seconds, 3)
                           if seconds else 0.0} for w, n in sorted(summary.per_worker.items())},
        "failures": failures,
        "loads": {model: {"count": len(times), "seconds": round(sum(times), 3)}
                  for model, times in summary.loads.items()},
        "versions": versions,
        "scores": catalog.distribution(folder.root) if folder is not None
        and folder.manifest.exists() else None,
    }


def run_record(settings: Settings, found: Resolved) -> str:
    """The run's record (runs/run-NNNN.yaml and the manifest's runs table): the composed
    recipe, where it was found, and its resolved models."""
    record = yaml.safe_load(settings.resolved)
    record["models"] = saved_models(found.models)
    if found.inputs:  # input images by path: their pixels' hashes
        record["inputs"] = {path: m.identity for path, m in found.inputs.items()}
    return yaml.safe_dump(record, sort_keys=False, allow_unicode=True)


def draw_recipe_grids(recipe: recipes.Recipe,
                      folder: RunFolder) -> tuple[list[grid.Sheet], list[str]]:
    """The contact sheets a recipe asks for, from every finished image that matches; a sheet
    that cannot be drawn is reported, never fatal."""
    sheets, errors = [], []
    for index, spec in enumerate(recipe["grids"]):
        try:
            sheets += grid.draw(folder.root, folder.root / "grids", spec.x, spec.y,
                                catalog.Where.parse(spec.where),
                                prefix=f"grid{index + 1}" if len(recipe["grids"]) > 1 else "grid")
        except (grid.GridError, catalog.CatalogError) as e:
            errors.append(str(e))
    return sheets, errors


# 4. the state of a run folder ---------------------------------------------------------------------

def status(folder: RunFolder, settings: Settings | None) -> dict[str, Any]:
    """A run folder's progress. With `settings`, counted against that recipe; without, against
    the recipe the folder's last run recorded (no recipe file or model needed)."""
    last, failures = None, []
    if folder.manifest.exists():
        with Manifest(folder.manifest, readonly=True) as manifest:
            last = manifest.last_run()
            failures = [{"id": i, "path": p, "error": e} for i, p, e in manifest.failures()]
    if settings is not None:
        recipe, found = settings.recipe, resolve_models(settings.recipe)
    elif last is None:
        raise BadInput(f"{folder.root}: has no recorded run")
    else:
        recipe, found = recorded_recipe(folder, last["recipe"])
    counts = count(recipe, folder, found)
    report: dict[str, Any] = {
        "folder": str(folder.root), "recipe": recipe.name, "planned": counts.planned,
        "done": counts.done, "pending": counts.pending, "failed": counts.failed,
        "last_run": None, "failures": failures}
    if last:
        report["last_run"] = {k: last[k] for k in ("id", "started_at", "ended_at", "rendered",
                                                   "failed", "seconds")}
    report["report"] = folder.read_report()
    report["scores"] = catalog.distribution(folder.root) if folder.manifest.exists() else None
    return report


def recorded_recipe(folder: RunFolder, text: str) -> tuple[recipes.Recipe, Resolved]:
    """The recipe and models a run recorded, read back from the record alone: its composed
    fields, the folder its prompt files were read from, and its models by identity (a record
    made by an older farm has no models: they are resolved again)."""
    record = yaml.safe_load(text)
    fields = {k: v for k, v in record.items() if k in DEFAULTS}
    base = Path(record.get("base") or Path(record["recipe"]).parent)
    try:
        recipe = recipes.parse(fields, source=str(record.get("name")), base=base)
    except recipes.RecipeError as e:
        raise BadInput(f"{folder.root}: its recorded recipe no longer reads ({e}); give the "
                       "recipe instead: farm status recipe=NAME") from None
    if "models" not in record:
        return recipe, resolve_models(recipe)
    found = {ref: Model(ref=ref, path=m["path"], identity=m["identity"], config=m["config"],
                        variant=m.get("variant")) for ref, m in record["models"].items()}
    images = {path: Model(ref=path, path=path, identity=identity)
              for path, identity in record.get("inputs", {}).items()}
    return recipe, Resolved(found, images, adapters.Reader(recipe.base))
