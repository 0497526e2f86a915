"""The command line; the only module that touches Hydra.

    farm render [recipe=NAME|PATH] [field=value ...]   render what is not done yet
    farm plan   [recipe=NAME|PATH] [field=value ...]   count jobs; render and write nothing
    farm status [recipe=NAME|PATH | RUN_FOLDER] [--json]
    farm replay IMAGE.png [--to DIR]                   render one image again from its metadata
    farm verify RUN_FOLDER [--sample N | --all]        check files; render jobs again, compare

Exit codes: 0 all jobs done; 1 some jobs failed; 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from farm import models, plan, schedule
from farm import recipe as recipes
from farm.jobs import Model
from farm.manifest import Manifest
from farm.outputs import FolderBusy, RunFolder
from farm.replay import ReplayError
from farm.schedule import Runtime, RuntimeUnavailable, Summary

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_RECIPE = "demo"
SETTINGS = ("runtime", "outputs")  # config keys that are not recipe fields


class BadInput(Exception):
    """Anything wrong with what the user asked for; reported before anything is written."""


@dataclass(frozen=True)
class Settings:
    recipe: recipes.Recipe
    runtime: Runtime
    outputs: Path  # the folder that holds run folders
    resolved: str  # the composed config as YAML, saved with each run

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.outputs / self.recipe.name)


# 1. find and compose the recipe ---------------------------------------------------------------

def find_recipe(ref: str) -> Path:
    """recipes/NAME.yaml in the working directory, then the packaged examples; or a path."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise BadInput(f"recipe: {ref!r}: no such file")
        return path
    local = Path("recipes") / f"{ref}.yaml"
    if local.is_file():
        return local
    packaged = resources.files("farm") / "recipes" / f"{ref}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    known = sorted({p.stem for p in Path("recipes").glob("*.yaml")}
                   | {Path(p.name).stem for p in (resources.files("farm") / "recipes").iterdir()
                      if p.name.endswith(".yaml")})
    raise BadInput(f"recipe: {ref!r}: not found in ./recipes or farm's examples; "
                   f"known recipes: {', '.join(known)}; or give a path to a .yaml file")


def load_recipe_file(path: Path) -> dict[str, Any]:
    """A recipe file as plain data (safe YAML: no tags, no code)."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BadInput(f"recipe {path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInput(f"recipe {path}: expected a mapping of recipe fields, got {data!r}")
    unknown = sorted(set(data) - set(recipes.DEFAULTS))
    if unknown:
        raise BadInput(f"recipe {path}: {unknown[0]}: unknown field; allowed: "
                       f"{', '.join(recipes.DEFAULTS)}")
    return data


def check_overrides(overrides: list[str]) -> None:
    """Name the field when an override is not one (Hydra's own message suggests '+key')."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    allowed = [*recipes.DEFAULTS, *SETTINGS]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise BadInput(f"command line: {e}") from None
    for override in parsed:
        root = override.key_or_group.split(".")[0]
        if root not in allowed or override.package is not None:
            raise BadInput(f"command line: {override.input_line!r}: unknown field {root!r}; "
                           f"allowed: {', '.join(allowed)}")
        if root in recipes.DEFAULTS and "." in override.key_or_group:
            raise BadInput(f"command line: {override.input_line!r}: {root} has no sub-fields; "
                           f"set it whole, e.g. {root}=...")


def compose(args: list[str]) -> Settings:
    """Recipe file + command-line overrides + runtime group, composed by Hydra, then checked."""
    from hydra import compose as hydra_compose
    from hydra import initialize
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    recipe_ref = DEFAULT_RECIPE
    overrides = []
    for arg in args:
        if arg.startswith("recipe="):
            recipe_ref = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    path = find_recipe(recipe_ref)
    data = load_recipe_file(path)
    check_overrides(overrides)

    store = ConfigStore.instance()
    store.store(group="runtime", name="ray", node=Runtime(kind="ray"))
    store.store(group="runtime", name="inline", node=Runtime(kind="inline"))
    store.store(name="farm", node={
        "defaults": [{"runtime": "ray"}, "_self_"],
        **recipes.DEFAULTS, "name": path.stem, **data, "outputs": "outputs",
    })
    try:
        with initialize(version_base=None, config_path=None):
            cfg = hydra_compose("farm", overrides=overrides)
        runtime = OmegaConf.to_object(cfg.runtime)
        config = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise BadInput(f"command line: {e}".strip()) from None
    del config["runtime"]
    outputs = Path(str(config.pop("outputs")))
    recipe = recipes.parse(config, source=path.stem, base=path.parent)
    resolved = yaml.safe_dump({"recipe": str(path), "overrides": overrides, **config,
                               "runtime": OmegaConf.to_container(cfg.runtime)}, sort_keys=False)
    return Settings(recipe=recipe, runtime=runtime, outputs=outputs, resolved=resolved)


def resolve_models(recipe: recipes.Recipe) -> dict[str, Model]:
    """Every checkpoint and VAE of the recipe, checked and identified."""
    found: dict[str, Model] = {}
    for field, refs in (("checkpoint", recipe.checkpoint), ("vae", recipe.vae)):
        seen: dict[str, str] = {}
        for ref in refs:
            if ref is None:
                continue
            if ref not in found:
                found[ref] = models.resolve(ref, field)
            twin = seen.setdefault(found[ref].identity, ref)
            if twin != ref:  # two spellings of one model would plan every job twice
                raise BadInput(f"recipe {recipe.name}: {field}: {twin!r} and {ref!r} are the same "
                               f"model (identity {found[ref].identity[:16]}...); list it once")
    for ref in recipe.checkpoint:
        check_family(recipe, ref, models.family(found[ref]))
    return found


def check_family(recipe: recipes.Recipe, ref: str, family: models.Family) -> None:
    """Refuse recipe fields that this checkpoint's pipeline does not take."""
    problems = {
        "negative": ("negative_prompt", recipe.uses_negative(), "leave negative and "
                     "per-prompt negatives empty"),
        "cfg": ("guidance_scale", recipe.cfg != (recipes.DEFAULTS["cfg"],), "leave cfg unset"),
        "clip_skip": ("clip_skip", recipe.clip_skip != (1,), "leave clip_skip at 1"),
    }
    for field, (needs, used, fix) in problems.items():
        if used and needs not in family.takes:
            raise BadInput(f"recipe {recipe.name}: {field}: checkpoint {ref!r} is a "
                           f"{family.pipeline}, which takes no {needs}; {fix}")


# 2. the commands --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Counts:
    planned: int
    done: int
    failed: int

    @property
    def pending(self) -> int:
        return self.planned - self.done


def done_check(folder: RunFolder, done_paths: dict[str, str]) -> Callable[[str], bool]:
    """Whether a job is done: its manifest row says so and its file is there."""
    root, listings = str(folder.root), {}

    def present(path: str) -> bool:  # one directory listing per shard, not a stat per file
        shard, _, name = path.rpartition("/")
        if shard not in listings:
            try:
                listings[shard] = {e.name for e in os.scandir(os.path.join(root, shard))
                                   if e.is_file()}
            except FileNotFoundError:
                listings[shard] = set()
        return name in listings[shard]

    def is_done(job_id: str) -> bool:
        path = done_paths.get(job_id)
        return path is not None and present(path)

    return is_done


def count(settings: Settings, found: dict[str, Model]) -> Counts:
    """How many jobs of the plan are done, and how many failed last time they were tried."""
    folder = settings.folder
    if not folder.manifest.exists():
        return Counts(settings.recipe.job_count, 0, 0)
    with Manifest(folder.manifest, readonly=True) as manifest:
        is_done, failed_ids = done_check(folder, manifest.done_paths()), manifest.failed_ids()
    done = failed = 0
    for job in plan.jobs(settings.recipe, found):
        if is_done(job.id):
            done += 1
        elif job.id in failed_ids:
            failed += 1
    return Counts(settings.recipe.job_count, done, failed)


def command_plan(settings: Settings) -> int:
    found = resolve_models(settings.recipe)
    r = settings.recipe
    print(f"recipe {r.name} -> {settings.folder.root}")
    shown = {
        "checkpoint": ", ".join(r.checkpoint),
        "vae": ", ".join(v or "(checkpoint's own)" for v in r.vae),
        "prompt": f"{len(r.prompt)} item(s)" + ("" if r.expansion.mode == "combinatorial"
                                                  else f", random x {r.expansion.count}"),
        "sampler": ", ".join(r.sampler),
        "scheduler": ", ".join(r.scheduler),
        "steps": ", ".join(map(str, r.steps)),
        "cfg": ", ".join(f"{c:g}" for c in r.cfg),
        "size": ", ".join(f"{w}x{h}" for w, h in r.size),
        "clip_skip": ", ".join(map(str, r.clip_skip)),
        "seeds": ", ".join(f"{s.start}-{s.stop - 1}" if len(s) > 1 else str(s.start)
                           for s in r.seeds),
    }
    lengths = r.axis_lengths()
    for axis in recipes.AXES:
        print(f"  {axis:<11}{lengths[axis]:>8}  {shown[axis]}")
    combined = r.combined_axes()
    for group in (a for a in combined if len(a) > 1):
        print(f"  {'+'.join(group)} zipped: {lengths[group[0]]} together")
    counts = count(settings, found)
    product = " x ".join(f"{lengths[a[0]]} {'+'.join(a)}" for a in combined)
    print(f"jobs: {counts.planned} ({product}, outermost first); done {counts.done}, "
          f"pending {counts.pending} "
          f"(of which {counts.failed} failed before); batch size {r.batch_size}")
    return EXIT_OK


def pending_work(settings: Settings, found: dict[str, Model],
                 is_done: Callable[[str], bool]) -> list[schedule.Work]:
    """The pending batches of each model group, streamed, with their job counts."""
    recipe = settings.recipe
    work = []
    for group in plan.groups(recipe):
        left = sum(1 for job in plan.jobs(recipe, found, group) if not is_done(job.id))
        if left:
            ckpt, vae = group
            key = (found[ckpt].identity, found[vae].identity if vae else None)
            stream = plan.batches(plan.pending(plan.jobs(recipe, found, group), is_done),
                                  recipe.batch_size)
            work.append(schedule.Work(key, stream, left))
    return work


def command_render(settings: Settings) -> int:
    found = resolve_models(settings.recipe)
    folder, recipe = settings.folder, settings.recipe
    done_paths = {}
    if folder.manifest.exists():
        with Manifest(folder.manifest, readonly=True) as manifest:
            done_paths = manifest.done_paths()
    is_done = done_check(folder, done_paths)
    if all(is_done(job.id) for job in plan.jobs(recipe, found)):  # stops at the first pending
        print(f"{recipe.name}: all {recipe.job_count} images are already done in "
              f"{folder.root}; nothing to render")
        return EXIT_OK
    backend = schedule.start(settings.runtime, folder, recipe.name)  # fails fast, writes nothing
    try:
        with folder.locked(), Manifest(folder.manifest) as manifest:
            folder.remove_partial_files()
            # again, under the lock: another render may have finished some in the meantime
            work = pending_work(settings, found, done_check(folder, manifest.done_paths()))
            pending = sum(w.left for w in work)
            summary = Summary(planned=recipe.job_count, skipped=recipe.job_count - pending)
            run_id = manifest.begin_run(settings.resolved, recipe.job_count)
            folder.save_recipe(run_id, settings.resolved)
            try:
                schedule.run(backend, work, recipe.batch_size, folder, manifest, run_id,
                             settings.runtime, summary, label=recipe.name)
            finally:
                manifest.end_run(run_id, summary.rendered, summary.skipped, summary.failed,
                                 summary.seconds)
    finally:
        backend.close()
    print(describe(summary, folder))
    return EXIT_FAILED if summary.failed or summary.unfinished else EXIT_OK


def describe(summary: Summary, folder: RunFolder) -> str:
    """The one-paragraph summary at the end of a render."""
    text = (f"Rendered {summary.rendered} of {summary.planned} images into {folder.root} in "
            f"{summary.seconds:.1f} s ({summary.images_per_second:.2f} images/s"
            + (f", first image after {summary.first_image_seconds:.1f} s"
               if summary.first_image_seconds is not None else "")
            + f"); {summary.skipped} were already done, {summary.failed} failed.")
    if len(summary.per_worker) > 1:
        text += " Per worker: " + ", ".join(f"{w} {n}" for w, n in
                                            sorted(summary.per_worker.items())) + "."
    if summary.duplicates:
        text += (f" {summary.duplicates} jobs were reached twice by the plan (the same prompt "
                 "from two templates or file rows) and rendered once.")
    if summary.unfinished:
        text += (f" {summary.unfinished} were not rendered because no worker was left; "
                 "run the same command again to resume.")
    if summary.failures:
        shown = summary.failures[:20]
        text += " Failed:\n" + "\n".join(f"  {r.path} ({r.job_id}): {r.error}" for r in shown)
        if len(summary.failures) > len(shown):
            text += f"\n  ... and {len(summary.failures) - len(shown)} more (farm status --json)"
        text += "\nRun the same command again to retry them."
    return text


def command_status(args: list[str], as_json: bool) -> int:
    folder_arg = next((a for a in args if "=" not in a), None)
    if folder_arg is not None:
        folder = RunFolder(Path(folder_arg))
        if not folder.manifest.exists():
            raise BadInput(f"{folder_arg!r} is not a run folder (it has no manifest.sqlite)")
        with Manifest(folder.manifest, readonly=True) as manifest:
            last = manifest.last_run()
        if last is None:
            raise BadInput(f"{folder_arg!r} has no recorded run")
        saved = yaml.safe_load(last["recipe"])
        kept = [o for o in saved["overrides"] if not o.startswith("outputs=")]
        rebuilt = [f"recipe={saved['recipe']}", *kept,
                   f"outputs={folder.root.parent}"]
        settings = compose(rebuilt + [a for a in args if "=" in a])
    else:
        settings = compose(args)
        folder = settings.folder
    counts = count(settings, resolve_models(settings.recipe))
    report: dict[str, Any] = {
        "folder": str(folder.root), "recipe": settings.recipe.name,
        "planned": counts.planned, "done": counts.done,
        "pending": counts.pending, "failed": counts.failed, "last_run": None,
    }
    if folder.manifest.exists():
        with Manifest(folder.manifest, readonly=True) as manifest:
            last = manifest.last_run()
            report["failures"] = [{"id": i, "path": p, "error": e}
                                  for i, p, e in manifest.failures()]
        if last:
            report["last_run"] = {k: last[k] for k in ("id", "started_at", "ended_at",
                                                       "rendered", "failed", "seconds")}
    if as_json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    run = report["last_run"]
    state = ("never run" if run is None else
             f"run {run['id']} started {run['started_at']}, "
             + (f"ended {run['ended_at']}" if run["ended_at"] else "still running (or killed)"))
    print(f"{report['folder']}: {counts.done} done, {counts.pending} pending, "
          f"{counts.failed} failed, of {counts.planned} planned; {state}")
    return EXIT_OK


# 3. entry point ---------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    fields = ", ".join(recipes.DEFAULTS)
    top = argparse.ArgumentParser(
        prog="farm", description="A declarative batch render farm for diffusion models.",
        epilog=f"Recipe fields (override as field=value): {fields}. Settings: "
               "runtime=inline, runtime.workers=N, outputs=DIR.")
    sub = top.add_subparsers(dest="command", required=True)
    for name, text in (("render", "render what is not done yet"),
                       ("plan", "count jobs, done and pending; render nothing"),
                       ("status", "progress of a run folder")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("args", nargs="*", metavar="recipe=NAME|field=value",
                         help="the recipe (name or path) and Hydra-style overrides"
                         + (", or a run folder" if name == "status" else ""))
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
    text = "check a run folder's files, and render finished jobs again to compare"
    cmd = sub.add_parser("verify", help=text, description=text)
    cmd.add_argument("folder", type=Path, help="a run folder (outputs/NAME)")
    cmd.add_argument("--sample", type=int, default=8, help="jobs to render again (default 8)")
    cmd.add_argument("--all", action="store_true", help="render every finished job again")
    cmd.add_argument("--device", choices=("cpu", "cuda"), help="default: a GPU if there is one")
    text = "render one image again from the metadata it carries"
    cmd = sub.add_parser("replay", help=text, description=text)
    cmd.add_argument("image", type=Path, help="a PNG that farm wrote")
    cmd.add_argument("--to", type=Path, default=Path("replay"), help="folder for the new image")
    cmd.add_argument("--device", choices=("cpu", "cuda"), help="default: a GPU if there is one")
    return top


def command_verify(folder_path: Path, sample: int | None, device: str | None) -> int:
    from farm import verify

    folder = RunFolder(folder_path)
    if not folder.manifest.exists():
        raise BadInput(f"{folder_path}: not a run folder (it has no manifest.sqlite)")
    findings = verify.check_files(folder) + verify.rerender(folder, sample, device)
    for f in findings:
        print(f"{f.verdict:<17} {f.path}" + (f"  ({f.detail})" if f.detail else ""))
    bad = [f for f in findings if f.bad]
    print(f"{len(findings) - len(bad)} fine, {len(bad)} not" + (":" if bad else "."))
    for f in bad:
        print(f"  {f.verdict}: {f.path}")
    return EXIT_FAILED if bad else EXIT_OK


def command_replay(image: Path, folder: Path, device: str | None) -> int:
    from farm.replay import replay

    path, same = replay(image, folder, device)
    print(f"{path}: " + ("the same pixels as " if same else "other pixels than ") + str(image)
          + ("" if same else " (other hardware or software versions change the last bits)"))
    return EXIT_OK


def main(argv: list[str] | None = None) -> None:
    options = parser().parse_args(argv)
    try:
        if options.command == "status":
            code = command_status(options.args, options.json)
        elif options.command == "verify":
            code = command_verify(options.folder, None if options.all else options.sample,
                                  options.device)
        elif options.command == "replay":
            code = command_replay(options.image, options.to, options.device)
        else:
            settings = compose(options.args)
            code = (command_render if options.command == "render" else command_plan)(settings)
    except (BadInput, recipes.RecipeError, models.ModelError, FolderBusy,
            RuntimeUnavailable, ReplayError) as e:
        print(f"farm: error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("farm: interrupted; run the same command again to resume", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)
