"""The command line.

    farm render [recipe=NAME|PATH] [field=value ...]   render what is not done yet
    farm plan   [recipe=NAME|PATH] [field=value ...]   count jobs; render and write nothing
    farm status [recipe=NAME|PATH | RUN_FOLDER] [--json]
    farm replay IMAGE.png [--to DIR]                   render one image again from its metadata
    farm verify RUN_FOLDER|recipe=NAME [--sample N]   check files; render jobs again, compare
    farm export RUN_FOLDER --format F --to DIR         the finished images as a dataset
    farm grid   RUN_FOLDER [--x F] [--y F]             labelled contact sheets

Exit codes: 0 all jobs done; 1 some jobs failed; 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from farm import catalog, export, grid, models, plan, schedule
from farm import recipe as recipes
from farm.compose import BadInput, Settings, compose, resolve_models
from farm.export import ExportError
from farm.finished import Finished
from farm.grid import GridError
from farm.jobs import Model
from farm.manifest import Manifest
from farm.outputs import FolderBusy, RunFolder
from farm.replay import ReplayError
from farm.schedule import RuntimeUnavailable, Summary

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


# 1. the recipe commands ------------------------------------------------------------------------

@dataclass(frozen=True)
class Counts:
    planned: int  # distinct jobs
    done: int
    failed: int
    repeats: int = 0  # jobs the plan reaches a second time (rendered once)

    @property
    def pending(self) -> int:
        return self.planned - self.done


def count(settings: Settings, found: dict[str, Model]) -> Counts:
    """How many jobs of the plan are done, and how many failed last time they were tried."""
    folder, recipe = settings.folder, settings.recipe
    repeated = plan.repeated_prompts(recipe)
    if not folder.manifest.exists() and not repeated:
        return Counts(recipe.job_count, 0, 0)
    states: Counter[str] = Counter()
    manifest = Manifest(folder.manifest, readonly=True) if folder.manifest.exists() else None
    try:
        stream = plan.distinct(plan.jobs(recipe, found), repeated)
        for _, state in Finished(folder, manifest).mark(stream):
            states[state] += 1
    finally:
        if manifest:
            manifest.close()
    planned = sum(states.values())
    return Counts(planned, states["done"], states["failed"], recipe.job_count - planned)


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
    repeats = (f"; {counts.repeats} more are reached twice (two prompt rows give the same "
               "prompt) and rendered once" if counts.repeats else "")
    print(f"jobs: {counts.planned} ({product}, outermost first{repeats}); done {counts.done}, "
          f"pending {counts.pending} "
          f"(of which {counts.failed} failed before); batch size {r.batch_size}")
    return EXIT_OK


def pending_work(settings: Settings, found: dict[str, Model],
                 finished: Finished) -> list[schedule.Work]:
    """The pending batches of each model group, streamed, with their job counts."""
    recipe = settings.recipe
    work = []
    for group in plan.groups(recipe):
        left = sum(1 for _ in finished.pending(plan.jobs(recipe, found, group)))
        if left:
            ckpt, vae = group
            key = (found[ckpt].identity, found[vae].identity if vae else None)
            stream = plan.batches(finished.pending(plan.jobs(recipe, found, group)),
                                  recipe.batch_size)
            work.append(schedule.Work(key, stream, left))
    return work


def command_render(settings: Settings) -> int:
    found = resolve_models(settings.recipe)
    folder, recipe = settings.folder, settings.recipe
    stored = folder.stored_suffix()
    if stored not in (None, recipe.image.suffix):
        raise BadInput(f"recipe {recipe.name}: format: got {recipe.image.kind!r}, but "
                       f"{folder.root} holds {stored} images; a run folder keeps one format "
                       "(render into another name=..., or farm export to convert)")
    if folder.manifest.exists():
        with Manifest(folder.manifest, readonly=True) as manifest:
            all_done = Finished(folder, manifest).all_done(plan.jobs(recipe, found))
    else:
        all_done = False
    if all_done:
        print(f"{recipe.name}: all {recipe.job_count} images are already done in "
              f"{folder.root}; nothing to render")
        draw_recipe_grids(recipe, folder)
        return EXIT_OK
    backend = schedule.start(settings.runtime, folder, recipe.name)  # fails fast, writes nothing
    try:
        with folder.locked(), Manifest(folder.manifest) as manifest:
            folder.remove_partial_files()
            run_id = manifest.begin_run(settings.resolved, recipe.job_count)
            # again, under the lock: another render may have finished some in the meantime
            work = pending_work(settings, found, Finished(folder, manifest, run_id))
            pending = sum(w.left for w in work)
            summary = Summary(planned=recipe.job_count, skipped=recipe.job_count - pending)
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
    draw_recipe_grids(recipe, folder)
    return EXIT_FAILED if summary.failed or summary.unfinished else EXIT_OK


def draw_recipe_grids(recipe: recipes.Recipe, folder: RunFolder) -> None:
    """The contact sheets a recipe asks for, from every finished image that matches."""
    for spec in recipe.grids:
        try:
            sheets = grid.draw(folder.root, folder.root / "grids", spec.x, spec.y,
                               catalog.Where.parse(spec.where))
        except (grid.GridError, catalog.CatalogError) as e:
            print(f"farm: grid not drawn: {e}", file=sys.stderr)
            continue
        print(f"Drew {len(sheets)} contact sheet(s): " + ", ".join(str(s.path) for s in sheets))


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


# 2. entry point and the run-folder commands -----------------------------------------------------

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
    cmd.add_argument("target", nargs="+", metavar="RUN_FOLDER | recipe=NAME [field=value ...]",
                     help="a run folder (outputs/NAME), or a recipe and its overrides")
    cmd.add_argument("--sample", type=int, default=8, help="jobs to render again (default 8)")
    cmd.add_argument("--all", action="store_true", help="render every finished job again")
    cmd.add_argument("--device", choices=("cpu", "cuda"), help="default: a GPU if there is one")
    text = "render one image again from the metadata it carries"
    cmd = sub.add_parser("replay", help=text, description=text)
    cmd.add_argument("image", type=Path, help="a PNG that farm wrote")
    cmd.add_argument("--to", type=Path, default=Path("replay"), help="folder for the new image")
    cmd.add_argument("--device", choices=("cpu", "cuda"), help="default: a GPU if there is one")
    where = ("keep images whose FIELD equals (=), differs from (!=) or contains (~) a value; "
             "repeat for more (one field given twice: either value); fields: "
             f"{', '.join(catalog.FIELDS)}, values.NAME, fields.NAME")
    text = "write a run folder's finished images as a dataset (re-runnable)"
    cmd = sub.add_parser("export", help=text, description=text)
    cmd.add_argument("folder", type=Path, help="a run folder (outputs/NAME)")
    cmd.add_argument("--format", required=True, choices=export.FORMATS)
    cmd.add_argument("--to", type=Path, required=True, metavar="DIR", help="the export folder")
    cmd.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE", help=where)
    cmd.add_argument("--shard-size", type=int, default=1000, metavar="N",
                     help="webdataset: images per tar shard (default 1000)")
    cmd.add_argument("--with-images", action="store_true",
                     help="parquet: embed the image bytes (default: paths only)")
    cmd.add_argument("--link", action="store_true",
                     help="imagefolder: hard-link the images instead of copying them (same "
                     "filesystem; no extra space; then never edit exported images in place)")
    text = "draw labelled contact sheets of a run folder's images (an X/Y plot)"
    cmd = sub.add_parser("grid", help=text, description=text)
    cmd.add_argument("folder", type=Path, help="a run folder (outputs/NAME)")
    cmd.add_argument("--x", metavar="FIELD", help="field across (default: the first that varies of "
                     "cfg, steps, sampler, scheduler, clip_skip, size, vae, checkpoint, seed, "
                     "prompt)")
    cmd.add_argument("--y", metavar="FIELD", help="field down (default: the next that varies)")
    cmd.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE", help=where)
    cmd.add_argument("--to", type=Path, metavar="DIR",
                     help="folder for the sheets (default: RUN/grids)")
    cmd.add_argument("--cell", type=int, default=512, metavar="PX",
                     help="largest cell side in pixels (default 512)")
    return top


def command_export(options: argparse.Namespace) -> int:
    chosen = export.Options(options.format, catalog.Where.parse(options.where),
                            options.shard_size, options.with_images, options.link)
    report = export.export(options.folder, options.to, chosen)
    files = report.files if len(report.files) <= 4 else \
        [report.files[0], "...", f"{report.files[-1]} ({len(report.files)} files)"]
    print(f"Exported {report.written + report.kept} images of {options.folder} matching "
          f"{chosen.where} to {options.to} as {options.format} ({report.written} written, "
          f"{report.kept} already there): {', '.join(files)}")
    if report.missing:
        print(f"Left out, recorded as done but missing from {options.folder}: "
              f"{report.missing} (farm render renders them again)")
    return EXIT_OK


def command_grid(options: argparse.Namespace) -> int:
    if options.cell < 16:
        raise BadInput(f"--cell: got {options.cell}; expected 16 pixels or more")
    sheets = grid.draw(options.folder, options.to or options.folder / "grids", options.x,
                       options.y, catalog.Where.parse(options.where), options.cell)
    for sheet in sheets:
        print(f"{sheet.path}: {len(sheet.columns)} x {max(1, len(sheet.rows))} cells "
              f"({sheet.x}" + (f" by {sheet.y}" if sheet.y else "") + f"), "
              f"{sheet.width}x{sheet.height} px")
    return EXIT_OK


def run_folder(target: list[str]) -> Path:
    """A run folder named directly, or the one a recipe (with its overrides) renders into."""
    if "=" in target[0]:
        return compose(target).folder.root
    if len(target) > 1:
        raise BadInput(f"{' '.join(target)}: give one run folder, or recipe=NAME and overrides")
    return Path(target[0])


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
            code = command_verify(run_folder(options.target),
                                  None if options.all else options.sample, options.device)
        elif options.command == "replay":
            code = command_replay(options.image, options.to, options.device)
        elif options.command == "export":
            code = command_export(options)
        elif options.command == "grid":
            code = command_grid(options)
        else:
            settings = compose(options.args)
            code = (command_render if options.command == "render" else command_plan)(settings)
    except (BadInput, recipes.RecipeError, models.ModelError, FolderBusy,
            RuntimeUnavailable, ReplayError, catalog.CatalogError, ExportError,
            GridError) as e:
        print(f"farm: error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("farm: interrupted; run the same command again to resume", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)
