"""The command line.

    farm render [recipe=NAME|PATH] [field=value ...]   render what is not done yet
    farm plan   [recipe=NAME|PATH] [field=value ...]   count jobs; render and write nothing
    farm status [recipe=NAME|PATH | RUN_FOLDER] [--json]
    farm replay IMAGE.png [--to DIR]                   render one image again from its metadata
    farm verify RUN_FOLDER|recipe=NAME [--sample N]   check files; render jobs again, compare
    farm export RUN_FOLDER --format F --to DIR         the finished images as a dataset
    farm grid   RUN_FOLDER [--x F] [--y F]             labelled contact sheets
    farm rebuild RUN_FOLDER                            the manifest again, from the images
    farm score  RUN_FOLDER --with aesthetic,clip,nsfw,phash [runtime=ray ...]   score columns
    farm dedup  RUN_FOLDER [--max-distance 4]          group near-duplicate images
    farm gallery RUN_FOLDER [--to DIR] [--where ...]   a static page to browse the run

Exit codes: 0 all jobs done; 1 some jobs failed or the run stopped early; 2 bad input (nothing
written); 130 Ctrl-C; 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

from farm import __version__, catalog, export, grid, models, run
from farm import recipe as recipes
from farm.compose import BadInput, Settings, compose
from farm.export import ExportError
from farm.gallery import GalleryError
from farm.grid import GridError
from farm.keys import AXES
from farm.manifest import ManifestDamaged, ManifestUnwritable, SecondWriter
from farm.outputs import FolderBusy, RunFolder
from farm.replay import ReplayError
from farm.scorers import ScorerError
from farm.schedule import Runtime, RuntimeUnavailable, Summary, check_runtime

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


# 1. the recipe commands ------------------------------------------------------------------------

def command_plan(settings: Settings) -> int:
    found = run.resolve_models(settings.recipe)
    r = settings.recipe
    print(f"recipe {r.name} -> {settings.folder.root}")
    lengths = r.axis_lengths()
    for key in (k for k in AXES if r.uses(k.name)):
        print(f"  {key.name:<11}{lengths[key.name]:>8}  {key.shown(r.values)}")
    print(f"  {'dtype':<11}{1:>8}  {r['dtype']}")
    print("schedulers that run:")
    for line in run.schedulers(r, found):
        print(f"  {line}")
    combined = r.combined_axes()
    for group in (a for a in combined if len(a) > 1):
        print(f"  {'+'.join(group)} zipped: {lengths[group[0]]} together")
    counts = run.count(r, settings.folder, found)
    product = " x ".join(f"{lengths[a[0]]} {'+'.join(a)}" for a in combined
                         if r.uses(a[0]))
    repeats = (f"; {counts.repeats} more are reached twice (two prompt rows give the same "
               "prompt) and rendered once" if counts.repeats else "")
    print(f"jobs: {counts.planned} ({product}, outermost first{repeats}); done {counts.done}, "
          f"pending {counts.pending} "
          f"(of which {counts.failed} failed before); batch size {r['batch_size']}")
    cut = run.cut_prompts(r, found)
    if cut:
        print(f"note: {len(cut)}{'+' if len(cut) >= 100 else ''} prompt(s) are longer than "
              f"their text encoder takes and will be cut there (emphasis: none cuts at 75 "
              f"tokens; T5 at max_sequence_length); their images record it. First: "
              f"{cut[0][:80]!r}")
    return EXIT_OK


def command_render(settings: Settings) -> int:
    outcome = run.render(settings)
    summary, folder = outcome.summary, outcome.folder
    if summary.rendered == summary.failed == summary.unfinished == 0 \
            and summary.skipped == summary.planned:
        print(f"{settings.recipe.name}: all {summary.planned} images are already done in "
              f"{folder.root}; nothing to render")
    else:
        print(describe(summary, folder, outcome.interrupted))
    if outcome.interrupted:
        print(f"farm: {'terminated' if outcome.interrupted == 'terminate' else 'interrupted'}; "
              "what finished is recorded; run the same command again to resume",
              file=sys.stderr)
        return EXIT_TERMINATED if outcome.interrupted == "terminate" else EXIT_INTERRUPTED
    if outcome.refreshed:
        print(f"Updated the recorded prompt details (template, values, file columns) of "
              f"{outcome.refreshed} finished images to what the recipe now says.")
    for error in outcome.grid_errors:
        print(f"farm: grid not drawn: {error}", file=sys.stderr)
    if outcome.sheets:
        print(f"Drew {len(outcome.sheets)} contact sheet(s): "
              + ", ".join(str(s.path) for s in outcome.sheets))
    if outcome.gallery:
        print(f"Gallery: {outcome.gallery / 'index.html'}")
    return EXIT_OK if outcome.ok else EXIT_FAILED


def describe(summary: Summary, folder: RunFolder, interrupted: str | None = None) -> str:
    """The one-paragraph summary at the end of a render (`interrupted`: what stopped it)."""
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
    if summary.hung:
        text += (f" Replaced {len(summary.hung)} hung worker(s) ({', '.join(summary.hung)}): a "
                 "batch took far longer than its group's usual time (runtime.hang_after).")
    if summary.stopped:
        text += (f" The run stopped: {summary.stopped}. What finished is recorded; make room "
                 "(or make the folder writable) and run the same command again to resume.")
    elif summary.unfinished and interrupted:
        text += (f" {summary.unfinished} were not rendered: the render was "
                 f"{'terminated' if interrupted == 'terminate' else 'interrupted'}; run the same "
                 "command again to resume.")
    elif summary.unfinished:
        text += (f" {summary.unfinished} were not rendered because no worker was left"
                 + (f" ({summary.problem})" if summary.problem else "")
                 + "; run the same command again to resume.")
    if summary.failures:
        shown = summary.failures[:20]
        text += " Failed:\n" + "\n".join(f"  {r.path} ({r.job_id}): {r.error}" for r in shown)
        if len(summary.failures) > len(shown):
            text += f"\n  ... and {len(summary.failures) - len(shown)} more (farm status --json)"
        text += "\nRun the same command again to retry them."
    return text


def command_status(args: list[str], as_json: bool, config_dir: str | None = None) -> int:
    if all(a.startswith("outputs=") for a in args):  # no run folder, no recipe: list them
        return list_run_folders(Path(args[-1].split("=", 1)[1] if args else "outputs"), as_json)
    named = [a for a in args if "=" not in a]
    if named:  # a run folder: counted against the recipe its last run recorded
        fields = [a for a in args if "=" in a and not a.startswith(("runtime", "outputs="))]
        if len(named) > 1 or fields:
            raise BadInput(f"{' '.join(args)}: give one run folder (counted against the recipe "
                           "its last run recorded), or recipe=NAME and overrides")
        folder = RunFolder(Path(named[0]))
        if not folder.manifest.exists():
            raise BadInput(f"{named[0]!r} is not a run folder (it has no manifest.sqlite)")
        report = run.status(folder, None)
    else:
        settings = compose(args, config_dir)
        report = run.status(settings.folder, settings)
    if as_json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    last = report["last_run"]
    state = ("never run" if last is None else
             f"run {last['id']} started {last['started_at']}, "
             + (f"ended {last['ended_at']}" if last["ended_at"] else "still running (or killed)"))
    print(f"{report['folder']}: {report['done']} done, {report['pending']} pending, "
          f"{report['failed']} failed, of {report['planned']} planned; {state}")
    if report["report"]:
        print(describe_report(report["report"]))
    if report["scores"]:
        print(describe_scores(report["scores"]))
    return EXIT_OK


def describe_scores(scores: dict) -> str:
    """The score columns' distribution, a line each."""
    lines = ["Scores (min / q1 / median / q3 / max):"]
    for column, found in scores.items():
        if "median" in found:
            lines.append(f"  {column:<11} {found['min']:g} / {found['q1']:g} / "
                         f"{found['median']:g} / {found['q3']:g} / {found['max']:g} "
                         f"({found['count']} images)")
    if "nsfw" in scores:
        lines.append(f"  {'nsfw':<11} {scores['nsfw']['flagged']} of {scores['nsfw']['count']} "
                     "flagged")
    if "phash" in scores:
        lines.append(f"  {'phash':<11} {scores['phash']['count']} images hashed")
    if "duplicates" in scores:
        found = scores["duplicates"]
        lines.append(f"  {'dup_group':<11} {found['groups']} groups of near-duplicates, "
                     f"{found['beyond_first']} images beyond each group's first "
                     "(farm export --unique leaves them out)")
    return "\n".join(lines)


def list_run_folders(outputs: Path, as_json: bool) -> int:
    """`farm status` alone: every run folder under outputs/, one line each."""
    folders = sorted(p.parent for p in outputs.glob("*/manifest.sqlite"))
    if not folders:
        raise BadInput(f"{outputs}/ holds no run folder; give one (farm status outputs/NAME) or "
                       "a recipe (farm status recipe=NAME)")
    reports = []
    for root in folders:
        try:
            reports.append(run.status(RunFolder(root), None))
        except (BadInput, ManifestDamaged) as e:
            reports.append({"folder": str(root), "error": str(e)})
    if as_json:
        print(json.dumps(reports, indent=2))
        return EXIT_OK
    for report in reports:
        print(f"{report['folder']}: {report['error']}" if "error" in report else
              f"{report['folder']}: {report['done']} done, {report['pending']} pending, "
              f"{report['failed']} failed, of {report['planned']} planned")
    return EXIT_OK


def describe_report(report: dict) -> str:
    """report.json in a few lines."""
    jobs = report["jobs"]
    lines = [f"Last render: {jobs['rendered']} rendered, {jobs['skipped']} already done, "
             f"{jobs['failed']} failed, {jobs['unfinished']} left, in {report['wall_seconds']} s "
             f"({report['images_per_second']} images/s"
             + (f", first image after {report['first_image_seconds']} s"
                if report["first_image_seconds"] is not None else "") + ")."]
    if len(report["per_worker"]) > 1:
        lines.append("Per worker: " + ", ".join(f"{w} {v['images']} ({v['images_per_second']}/s)"
                                                for w, v in report["per_worker"].items()))
    if report["loads"]:
        lines.append("Model loads: " + ", ".join(f"{m} {v['count']}x, {v['seconds']} s"
                                                 for m, v in report["loads"].items()))
    for kind, group in report["failures"].items():
        lines.append(f"Failed with {kind}: {group['count']} (e.g. {group['examples'][0]['path']}:"
                     f" {group['examples'][0]['error']})")
    return "\n".join(lines)


# 2. entry point and the run-folder commands -----------------------------------------------------

EXIT_CODES = ("exit codes: 0 every job done; 1 some jobs failed (listed; the next run retries "
              "them); 2 bad input, nothing written; 130 interrupted (Ctrl-C), 143 stopped by "
              "SIGTERM: what finished is recorded, run the same command again to resume")


def runtime_settings() -> str:
    """Every runtime.NAME setting with its default, for --help."""
    from dataclasses import fields

    return ", ".join(f"runtime.{f.name}={f.default}" for f in fields(Runtime))


def parser() -> argparse.ArgumentParser:
    fields = ", ".join(recipes.DEFAULTS)
    top = argparse.ArgumentParser(
        prog="farm", description="A declarative batch render farm for diffusion models.",
        epilog=f"Recipe fields (override as field=value): {fields}. Settings: "
               "runtime=inline, runtime.workers=N, outputs=DIR. Config groups (conf/GROUP/"
               "OPTION.yaml): GROUP=OPTION, +GROUP=OPTION.")
    top.add_argument("--version", action="version", version=f"farm {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    for name, text in (("render", "render what is not done yet"),
                       ("plan", "count jobs, done and pending; render nothing"),
                       ("status", "progress of a run folder")):
        epilog = (f"Runtime settings (runtime=ray|inline|OPTION, then runtime.NAME=VALUE): "
                  f"{runtime_settings()}; outputs=DIR. {EXIT_CODES}."
                  if name == "render" else None)
        cmd = sub.add_parser(name, help=text, description=text, epilog=epilog)
        cmd.add_argument("args", nargs="*", metavar="recipe=NAME|field=value|group=option",
                         help="the recipe (name or path) and Hydra-style overrides: fields, "
                         "config group choices (quality=final), +group=option to add one"
                         + (", or a run folder" if name == "status" else ""))
        cmd.add_argument("--config-dir", metavar="DIR", help="a folder of config groups, "
                         "looked up before ./conf and farm's own (or $FARM_CONFIG_DIR)")
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "plan":
            cmd.add_argument("--cfg", action="store_true", help="print the composed recipe "
                             "(its fields, runtime and group choices) and stop")
    text = "check a run folder's files, and render finished jobs again to compare"
    cmd = sub.add_parser("verify", help=text, description=text)
    cmd.add_argument("target", nargs="+", metavar="RUN_FOLDER | recipe=NAME [field=value ...]",
                     help="a run folder (outputs/NAME), or a recipe and its overrides")
    cmd.add_argument("--sample", type=count_of("--sample"), default=8,
                     help="jobs to render again (default 8)")
    cmd.add_argument("--all", action="store_true", help="render every finished job again")
    cmd.add_argument("--config-dir", metavar="DIR", help="config groups, with recipe=NAME")
    cmd.add_argument("--model", action="append", default=[], metavar="REF=PLACE",
                     help="a model that moved: the reference the run recorded, and where it is "
                     "now (repeat for more)")
    cmd.add_argument("--inputs", action="append", default=[], type=Path, metavar="DIR",
                     help="a folder to find input images in (by their pixels) where they are "
                     "not where the run read them (repeat for more)")
    cmd.add_argument("--device", choices=("cpu", "cuda"), help="default: a GPU if there is one")
    cmd.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                     help="render again only images that match (as farm export takes it)")
    selecting(cmd)
    text = "render one image again from the metadata it carries"
    cmd = sub.add_parser("replay", help=text, description=text)
    cmd.add_argument("image", type=Path, help="a PNG that farm wrote")
    cmd.add_argument("--to", type=Path, default=Path("replay"), help="folder for the new image")
    cmd.add_argument("--device", choices=("cpu", "cuda"), help="default: a GPU if there is one")
    cmd.add_argument("--model", action="append", default=[], metavar="REF=PLACE",
                     help="a model that moved: the reference the image recorded, and where it "
                     "is now (repeat for more)")
    cmd.add_argument("--inputs", action="append", default=[], type=Path, metavar="DIR",
                     help="a folder to find its input image in (by its pixels), where it is not "
                     "where the image recorded it (repeat for more)")
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
    cmd.add_argument("--max-shard-size", default="500MB", metavar="SIZE",
                     help="parquet and hub: bytes of images per shard (default 500MB; "
                     "e.g. 200MB, 1GB)")
    cmd.add_argument("--captions", choices=("txt",), help="imagefolder: NAME.txt beside each "
                     "image; webdataset: a .txt member per sample (the caption: the recipe's, "
                     "else the prompt)")
    cmd.add_argument("--link", action="store_true",
                     help="imagefolder: hard-link the images instead of copying them (same "
                     "filesystem; no extra space; then never edit exported images in place)")
    selecting(cmd)
    text = "rebuild a run folder's manifest from its images (after it was damaged or deleted)"
    cmd = sub.add_parser("rebuild", help=text, description=text)
    cmd.add_argument("folder", type=Path, help="a run folder (outputs/NAME)")
    text = "draw labelled contact sheets of a run folder's images (an X/Y plot)"
    cmd = sub.add_parser("grid", help=text, description=text)
    cmd.add_argument("folder", type=Path, help="a run folder (outputs/NAME)")
    cmd.add_argument("--x", metavar="FIELD", help="field across (default: the first that varies of "
                     f"{', '.join(n for n in grid.PREFERENCE if not n.endswith('_identity'))})")
    cmd.add_argument("--y", metavar="FIELD", help="field down (default: the next that varies)")
    cmd.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE", help=where)
    cmd.add_argument("--to", type=Path, metavar="DIR",
                     help="folder for the sheets (default: RUN/grids)")
    cmd.add_argument("--cell", type=int, default=512, metavar="PX",
                     help="largest cell side in pixels (default 512)")
    selecting(cmd)
    text = "score a run folder's images: columns for filters, exports and status"
    cmd = sub.add_parser("score", help=text, description=text, epilog=(
        "Scorers: aesthetic (LAION aesthetic predictor v2, 1-10), clip (cosine of image and "
        "caption), nsfw (the SD safety checker's flag and score), phash (perceptual hash); each "
        "as NAME or NAME:REF (a hub id, a folder, a .safetensors file; tiny: built-in random "
        "weights). Scores belong to pixels and scorer: scoring again does only what is new."))
    cmd.add_argument("args", nargs="+", metavar="RUN_FOLDER [runtime=ray|inline|runtime.NAME=V]",
                     help="a run folder (outputs/NAME), and where to score, as farm render "
                     "takes it (default: ray)")
    cmd.add_argument("--with", dest="scorers", required=True, metavar="NAME[:REF],...",
                     help="the scorers, comma-separated, e.g. aesthetic,clip:tiny,phash")
    text = "group a run folder's near-duplicate images (perceptual hashes)"
    cmd = sub.add_parser("dedup", help=text, description=text)
    cmd.add_argument("folder", type=Path, help="a run folder (outputs/NAME)")
    cmd.add_argument("--max-distance", type=count_of("--max-distance"), default=4,
                     metavar="BITS", help="phash bits two images may differ in and still be "
                     "one group (default 4; exact duplicates always group)")
    text = "write a static gallery of a run folder (index.html; opens from disk, offline)"
    cmd = sub.add_parser("gallery", help=text, description=text)
    cmd.add_argument("folder", type=Path, help="a run folder (outputs/NAME)")
    cmd.add_argument("--to", type=Path, metavar="DIR",
                     help="the gallery's folder (default: RUN/gallery)")
    cmd.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE", help=where)
    selecting(cmd)
    return top


def selecting(cmd: argparse.ArgumentParser) -> None:
    """--top, --per and --unique: which of the images that match --where to keep."""
    cmd.add_argument("--top", metavar="COLUMN:N|COLUMN:P%", help="keep the N (or P%%) with the "
                     "highest COLUMN (a score, cfg, steps, seed), e.g. aesthetic:30%%")
    cmd.add_argument("--per", metavar="FIELD", help="--top per group of this field (e.g. "
                     "prompt: the best of each prompt)")
    cmd.add_argument("--unique", action="store_true", help="one image of each group of "
                     "near-duplicates (the first rendered; after farm dedup)")


def where_of(options: argparse.Namespace) -> catalog.Where:
    return catalog.Where.parse(options.where, top=options.top, per=options.per,
                               unique=options.unique)


def size_in_bytes(text: str) -> int:
    """"500MB", "1.5GB", "20KB" or a number of bytes."""
    units = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
    found = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?B?)\s*", text.upper())
    if not found or found[2] not in units:
        raise BadInput(f"--max-shard-size: got {text!r}; expected a size such as 500MB or 2GB")
    try:
        return int(float(found[1]) * units[found[2]])
    except ValueError:
        raise BadInput(f"--max-shard-size: got {text!r}; expected a size such as 500MB") \
            from None


def command_export(options: argparse.Namespace) -> int:
    chosen = export.Options(options.format, where_of(options),
                            options.shard_size, options.with_images, options.link,
                            options.captions, size_in_bytes(options.max_shard_size))
    report = export.export(options.folder, options.to, chosen)
    files = report.files if len(report.files) <= 4 else \
        [report.files[0], "...", f"{report.files[-1]} ({len(report.files)} files)"]
    print(f"Exported {report.written + report.kept} images of {options.folder} matching "
          f"{chosen.where} to {options.to} as {options.format} ({report.written} written, "
          f"{report.kept} already there): {', '.join(files)}")
    if report.missing:
        print(f"Left out, recorded as done but missing from {options.folder}: "
              f"{report.missing} (farm render renders them again)")
    for note in report.notes:
        print(f"Note: {note}")
    return EXIT_OK


def command_rebuild(folder: Path) -> int:
    from farm.rebuild import rebuild

    try:
        done = rebuild(folder)
    except FileNotFoundError as e:
        raise BadInput(str(e)) from None
    print(f"Rebuilt {folder / 'manifest.sqlite'} from {done.images} images"
          + (f"; the old one is kept as {done.kept}" if done.kept else "") + ".")
    for line in done.skipped[:20]:
        print(f"  skipped {line}")
    if len(done.skipped) > 20:
        print(f"  ... and {len(done.skipped) - 20} more")
    return EXIT_OK


def command_grid(options: argparse.Namespace) -> int:
    if options.cell < 16:
        raise BadInput(f"--cell: got {options.cell}; expected 16 pixels or more")
    sheets = grid.draw(options.folder, options.to or options.folder / "grids", options.x,
                       options.y, where_of(options), options.cell)
    for sheet in sheets:
        print(f"{sheet.path}: {len(sheet.columns)} x {max(1, len(sheet.rows))} cells "
              f"({sheet.x}" + (f" by {sheet.y}" if sheet.y else "") + f"), "
              f"{sheet.width}x{sheet.height} px")
    return EXIT_OK


def command_score(options: argparse.Namespace) -> int:
    from farm import curation
    from farm.compose import runtime_of

    folders = [a for a in options.args if "=" not in a]
    if len(folders) != 1:
        raise BadInput(f"{' '.join(options.args)}: give one run folder (and runtime settings)")
    folder = Path(folders[0])
    runtime = runtime_of([a for a in options.args if "=" in a])
    check_runtime(runtime)
    done = curation.score(folder, options.scorers.split(","), runtime)
    names = ", ".join(s.name for s in done.scorers)
    if not (done.scored or done.failed or done.missing):
        print(f"{folder}: all {done.already} images are already scored with {names}; nothing "
              "to score")
        return EXIT_OK
    print(f"Scored {done.scored} images of {folder} with {names} in {done.seconds:.1f} s "
          f"({done.images_per_second:.1f} images/s); {done.already} were already scored"
          + (f"; {done.missing} are recorded as done but missing (farm render renders them "
             "again)" if done.missing else "")
          + (f"; {done.failed} failed: {done.problem} (run the same command again to retry)"
             if done.failed else "") + ".")
    return EXIT_FAILED if done.failed else EXIT_OK


def command_gallery(options: argparse.Namespace) -> int:
    from farm import gallery

    made = gallery.build(options.folder, options.to, where_of(options))
    print(f"Gallery of {made.images} images ({made.thumbs_made} new thumbnails; facets: "
          f"{', '.join(made.fields) or 'none, nothing varies'}): {made.folder / 'index.html'}")
    return EXIT_OK


def command_dedup(folder: Path, distance: int) -> int:
    from farm import curation

    found = curation.dedup(folder, distance)
    print(f"{folder}: {found.images} images, {len(found.groups)} groups of near-duplicates "
          f"(phash within {distance} bits, or the same pixels) holding {found.duplicates} "
          f"images beyond each group's first; grouped in {found.seconds:.1f} s")
    for group in found.groups[:20]:
        print("  " + ", ".join(path for _, path in group))
    if len(found.groups) > 20:
        print(f"  ... and {len(found.groups) - 20} more groups (farm export --where dup_group=N)")
    print("Recorded: exports have a dup_group column; farm export --unique keeps the first "
          "image of each group.")
    return EXIT_OK


def run_folder(target: list[str], config_dir: str | None = None) -> Path:
    """A run folder named directly, or the one a recipe (with its overrides) renders into."""
    if "=" in target[0]:
        return compose(target, config_dir).folder.root
    if len(target) > 1:
        raise BadInput(f"{' '.join(target)}: give one run folder, or recipe=NAME and overrides")
    return Path(target[0])


def moved_models(given: list[str]) -> dict[str, str]:
    """--model REF=PLACE options."""
    moved = {}
    for text in given:
        ref, sep, place = text.partition("=")
        if not sep or not ref or not place:
            raise BadInput(f"--model: got {text!r}; expected REF=PLACE, e.g. "
                           "models/sd15=/data/models/sd15")
        moved[ref] = place
    return moved


def command_verify(folder_path: Path, sample: int | None, device: str | None,
                   moved: dict[str, str], found_in: list[Path] = (),
                   where: catalog.Where = catalog.Where()) -> int:
    from farm import verify

    folder = RunFolder(folder_path)
    if not folder.manifest.exists():
        raise BadInput(f"{folder_path}: not a run folder (it has no manifest.sqlite)")
    findings = verify.check_files(folder) + verify.rerender(folder, sample, device, moved,
                                                                 found_in, where)
    for f in findings:
        print(f"{f.verdict:<17} {f.path}" + (f"  ({f.detail})" if f.detail else ""))
    bad = [f for f in findings if f.bad]
    print(f"{len(findings) - len(bad)} fine, {len(bad)} not" + (":" if bad else "."))
    for f in bad:
        print(f"  {f.verdict}: {f.path}")
    return EXIT_FAILED if bad else EXIT_OK


def command_replay(image: Path, folder: Path, device: str | None,
                   moved: dict[str, str], found_in: list[Path] = ()) -> int:
    from farm.replay import replay

    path, same = replay(image, folder, device, moved, found_in)
    print(f"{path}: " + ("the same pixels as " if same else "other pixels than ") + str(image)
          + ("" if same else " (other hardware or software versions change the last bits)"))
    return EXIT_OK


def entry() -> None:
    """The `farm` command: main(); after an interrupted render that used Ray, an exit that skips
    the interpreter's teardown, where Ray's C++ threads, stopped half-way through starting
    workers, can crash it (a segmentation fault after farm has recorded and said everything)."""
    try:
        main()
        code = EXIT_OK
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt as e:  # the stop delivered again (a signal that landed inside
        code = EXIT_TERMINATED if run.stopped_by(e) == "terminate" else EXIT_INTERRUPTED  # Ray)
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED) and "ray" in sys.modules:
        for number in (signal.SIGINT, signal.SIGTERM):  # one stop was enough
            signal.signal(number, signal.SIG_IGN)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
        finally:
            os._exit(code)
    sys.exit(code)


def count_of(option: str):
    """An argparse type: a whole number, 0 or more."""
    def read(text: str) -> int:
        if not text.isdigit():
            raise argparse.ArgumentTypeError(f"{option}: got {text!r}; expected a whole number, "
                                             "0 or more")
        return int(text)
    return read


def parsed(argv: list[str] | None) -> argparse.Namespace:
    """The command line; overrides may come before or after options (`farm plan recipe=zoo
    --cfg steps=3`), as Hydra users write them."""
    top = parser()
    options, extra = top.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-")]
    if {"-m", "--multirun"} & set(stray):
        top.error("-m/--multirun: farm renders one run in which a list is an axis, not one run "
                  "per combination: write steps='[2,4]' (quoted for your shell)")
    positional = getattr(options, "args", getattr(options, "target", None))
    if stray or (extra and positional is None):
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        positional += extra
    return options


def main(argv: list[str] | None = None) -> None:
    options = parsed(argv)
    run.RECEIVED.terminated = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, run.terminate)  # SIGTERM stops farm as Ctrl-C does
    try:
        if options.command == "status":
            code = command_status(options.args, options.json, options.config_dir)
        elif options.command == "verify":
            code = command_verify(run_folder(options.target, options.config_dir),
                                  None if options.all else options.sample, options.device,
                                  moved_models(options.model), options.inputs,
                                  where_of(options))
        elif options.command == "replay":
            code = command_replay(options.image, options.to, options.device,
                                  moved_models(options.model), options.inputs)
        elif options.command == "export":
            code = command_export(options)
        elif options.command == "grid":
            code = command_grid(options)
        elif options.command == "rebuild":
            code = command_rebuild(options.folder)
        elif options.command == "score":
            code = command_score(options)
        elif options.command == "dedup":
            code = command_dedup(options.folder, options.max_distance)
        elif options.command == "gallery":
            code = command_gallery(options)
        elif options.command == "plan" and options.cfg:
            print(compose(options.args, options.config_dir).resolved, end="")
            code = EXIT_OK
        else:
            settings = compose(options.args, options.config_dir)
            code = (command_render if options.command == "render" else command_plan)(settings)
    except (BadInput, recipes.RecipeError, models.ModelError, FolderBusy,
            RuntimeUnavailable, ReplayError, catalog.CatalogError, ExportError,
            GridError, ManifestDamaged, SecondWriter, ScorerError, GalleryError) as e:
        print(f"farm: error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except ManifestUnwritable as e:  # a full or read-only disk before rendering began
        print(f"farm: error: {e}; make room (or make the folder writable) and run the same "
              "command again", file=sys.stderr)
        code = EXIT_FAILED
    except KeyboardInterrupt as e:
        terminated = run.stopped_by(e) == "terminate"
        resumes = options.command == "render"  # the others write nothing to resume
        print(f"farm: {'terminated' if terminated else 'interrupted'}"
              + ("; run the same command again to resume" if resumes else ""), file=sys.stderr)
        code = EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except BrokenPipeError:  # `farm status --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    sys.exit(code)
