"""Contact sheets: a run's images laid out by two fields and labelled, like AUTOMATIC1111's
X/Y plot. Fields that vary besides the two axes give one sheet each of their combinations;
fields with one value go into the title.

Each sheet is a PNG (a JPEG above JPEG_ABOVE pixels) carrying a `farm-grid` JSON: the axes,
their values, the title fields and the image in every cell.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from farm import catalog
from farm.catalog import Entry, Where
from farm.fields import BATCH, FIELDS, IMAGE, LOAD
from farm.outputs import write_atomic



def _preference() -> tuple[str, ...]:
    """The job fields a sheet may lay out, in the order default axes are chosen: batch settings
    (cfg and steps first, width and height as one size), then models (a model whose file
    changed under the same name by its identity), then seed and prompt."""
    names: list[str] = []
    for role in (BATCH, LOAD, IMAGE):
        for f in FIELDS:
            if f.role == role and f.name not in ("height", "negative"):
                names.append("size" if f.name == "width" else f.name)
                names += [f"{f.name}_identity"] if f.model else []
    first, last = ("cfg", "steps"), ("seed", "prompt")
    return tuple(sorted(names, key=lambda n: (first.index(n) - 9 if n in first else
                                              last.index(n) + 9 if n in last else 0)))


# axes chosen when none are given: the first that vary, settings before prompts and seeds
PREFERENCE = _preference()
MAX_IMAGES = 10_000  # a contact sheet is for eyes: more needs --where
MAX_SHEETS = 200
MAX_SHEET_PIXELS = 100_000_000  # cells shrink to stay under this
MIN_WIDTH = 480  # pixels: a sheet of one or two small cells still has room for its title
MIN_CELL = 32  # pixels: cells are not shrunk below this
MAX_CELLS_SIDE = 60_000  # pixels of cells along one side: JPEG's limit is 65,500 in all
JPEG_ABOVE = 25_000_000  # pixels; a PNG of this many pixels of noise is ~75 MB
BACKGROUND, INK, EMPTY = (255, 255, 255), (0, 0, 0), (200, 200, 200)


class GridError(ValueError):
    """A grid that cannot be drawn: unknown fields, nothing selected, too much selected."""


@dataclass(frozen=True)
class Sheet:
    path: Path
    x: str
    y: str | None
    columns: tuple[str, ...]  # x labels, left to right
    rows: tuple[str, ...]  # y labels, top to bottom
    title: dict[str, str]  # fields with one value on this sheet
    labels: dict[str, tuple[str, ...]]  # the text over each column and beside each row
    cells: tuple[tuple[str | None, ...], ...]  # the image path in each cell, by row
    origin: tuple[int, int]  # pixel where the first cell starts (after the labels)
    cell: int  # cell side in pixels; images are centred in their cell
    width: int
    height: int


def label(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "(none)" if value is None else str(value)


def _order(values: Iterable[Any]) -> list[Any]:
    """Numbers ascending; anything else in the order the run made it."""
    values = list(dict.fromkeys(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return values


def varying(entries: list[Entry], fields: Iterable[str]) -> list[str]:
    return [f for f in fields if len({json.dumps(e.get(f), default=str) for e in entries}) > 1]


def candidates(entries: list[Entry]) -> list[str]:
    """Every field a grid may show: the settings, then template values and file columns."""
    nested = sorted({f"{name}.{key}" for e in entries for name in catalog.NESTED
                     for key in (e.params.get(name) or {})})
    return [*PREFERENCE, "negative", "template", *nested]


def plan_axes(entries: list[Entry], x: str | None, y: str | None) -> tuple[str, str | None,
                                                                          list[str]]:
    """The x and y fields (defaults: what varies, in PREFERENCE order) and the page fields:
    those that still vary once the axes and the page fields before them are fixed (a negative
    prompt that follows its prompt, or a prompt that follows the template values on an axis,
    gives no pages of its own)."""
    for axis in (x, y):
        if axis is not None:
            catalog.check_field(axis, "grid axis")
    if x is not None and x == y:
        raise GridError(f"--x and --y are both {x!r}; choose two fields")
    moving = varying(entries, candidates(entries))
    free = [f for f in moving if f in PREFERENCE and f not in (x, y)]
    x = x or (free.pop(0) if free else None)
    y = y or (free.pop(0) if free else None)
    if x is None:
        raise GridError("every selected image has the same settings; give --x FIELD")
    if any(a and (a.partition(".")[0] in catalog.NESTED or a == "template") for a in (x, y)):
        moving.sort(key=lambda f: f.partition(".")[0] not in catalog.NESTED)  # values first
    pages: list[str] = []
    for f in moving:
        if f not in (x, y) and not determined(entries, f, [x, *([y] if y else []), *pages]):
            pages.append(f)
    return x, y, pages


def determined(entries: list[Entry], field: str, by: list[str]) -> bool:
    """Whether `field` has one value for each combination of the `by` fields."""
    seen: dict[str, str] = {}
    for e in entries:
        key = json.dumps([e.get(f) for f in by], default=str)
        value = json.dumps(e.get(field), default=str)
        if seen.setdefault(key, value) != value:
            return False
    return True


def draw(run: Path, to: Path, x: str | None = None, y: str | None = None,
         where: Where = Where(), cell: int = 512, prefix: str = "grid") -> list[Sheet]:
    """Draw the contact sheets of a run folder's finished images into `to`, named
    PREFIX-X-Y[-NNN]."""
    entries = []
    for entry in catalog.entries(run, where):
        entries.append(entry)
        if len(entries) > MAX_IMAGES:
            raise GridError(f"more than {MAX_IMAGES} images match ({where}); narrow them with "
                            "--where, e.g. seed=0")
    if not entries:
        raise GridError(f"{run}: no finished images match {where}")
    x, y, pages = plan_axes(entries, x, y)
    groups: dict[tuple, list[Entry]] = {}
    for e in entries:
        groups.setdefault(tuple(label(e.get(f)) for f in pages), []).append(e)
    if len(groups) > MAX_SHEETS:
        raise GridError(f"these images make {len(groups)} sheets (one per combination of "
                        f"{', '.join(pages)}); narrow them with --where or put one on an axis")
    for members in groups.values():  # before anything is drawn
        shape = [len({json.dumps(e.get(a), default=str) for e in members}) if a else 1
                 for a in (x, y)]
        if (shape[0] * shape[1] * MIN_CELL**2 > MAX_SHEET_PIXELS
                or max(shape) * MIN_CELL > MAX_CELLS_SIDE):
            raise GridError(f"{x} by {y} makes {shape[0]} x {shape[1]} cells, more than a "
                            f"sheet holds at {MIN_CELL} px a cell; narrow with --where or "
                            "choose other axes")
    sheets = []
    for number, (key, members) in enumerate(groups.items()):
        fixed = [f for f in candidates(members) if f not in (x, y) and f not in pages
                 and f not in varying(members, [f])]
        title = {f: label(members[0].get(f)) for f in fixed
                 if f.partition(".")[0] not in catalog.NESTED and f != "template"
                 and not f.endswith("_identity")}
        title.update(zip(pages, key))
        name = f"{prefix}-{x}" + (f"-{y}" if y else "") + (f"-{number:03d}" if len(groups) > 1
                                                        else "")
        sheets.append(_sheet(run, Path(to) / name.replace(".", "_"), members, x, y, title, cell))
    return sheets


def _sheet(run: Path, stem: Path, members: list[Entry], x: str, y: str | None,
           title: dict[str, str], cell: int) -> Sheet:
    columns = _order(e.get(x) for e in members)
    rows = _order(e.get(y) for e in members) if y else [None]
    placed: dict[tuple[int, int], Entry] = {}
    for e in members:  # the first image of a cell wins
        placed.setdefault((rows.index(e.get(y)) if y else 0, columns.index(e.get(x))), e)
    # 1. sizes: cells fit the largest image, capped, and shrunk to keep the sheet bounded
    side = min(cell, max(max(e.params["width"], e.params["height"]) for e in members))
    while side > MIN_CELL and (side * side * len(columns) * len(rows) > MAX_SHEET_PIXELS
                               or side * max(len(columns), len(rows)) > MAX_CELLS_SIDE):
        side = max(MIN_CELL, side * 3 // 4)
    font = ImageFont.load_default(size=max(12, side // 14))
    line = font.getbbox("Ag")[3] + 4
    texts = {"columns": _axis_labels(members, x, columns, y),
             "rows": _axis_labels(members, y, rows, x) if y else ()}
    col_labels = [_wrap(t, font, side) for t in texts["columns"]]
    row_labels = [_wrap(t, font, side) for t in texts["rows"]] or [[]]
    left = (max(max((font.getlength(t) for t in lines), default=0) for lines in row_labels)
            + 16 if y else 0)
    width = max(MIN_WIDTH, int(left) + side * len(columns))  # room for the title
    title_lines = _wrap(f"x: {x}" + (f", y: {y}" if y else "") + "; " + ", ".join(
        f"{k}: {v}" for k, v in title.items()), font, width - 8, most=8)
    header = line * (len(title_lines) + max(len(c) for c in col_labels)) + 16
    height = header + side * len(rows)
    # 2. paint: title, column labels, row labels, then each cell
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    pen = ImageDraw.Draw(sheet)
    for i, text in enumerate(title_lines):
        pen.text((4, 4 + i * line), text, fill=INK, font=font)
    top = 8 + line * len(title_lines)
    for c, lines in enumerate(col_labels):
        for i, text in enumerate(lines):
            pen.text((left + c * side + 4, top + i * line), text, fill=INK, font=font)
    cells = []
    for r, lines in enumerate(row_labels):
        for i, text in enumerate(lines):
            pen.text((4, header + r * side + 4 + i * line), text, fill=INK, font=font)
        row = []
        for c in range(len(columns)):
            entry, box = placed.get((r, c)), (int(left) + c * side, header + r * side)
            row.append(entry.path if entry else None)
            _paste(sheet, pen, run / entry.path if entry else None, box, side)
        cells.append(tuple(row))
    # 3. save, with what the sheet shows
    record = Sheet(stem, x, y, tuple(label(v) for v in columns),
                   tuple(label(v) for v in rows) if y else (), title, texts, tuple(cells),
                   (int(left), header), side, width, height)
    return _save(sheet, record)


def _axis_labels(members: list[Entry], axis: str, values: list[Any],
                 other: str | None) -> tuple[str, ...]:
    """"sampler: dpmpp_2m" for each value, with the settings that change along with the axis on
    this sheet ("scheduler: karras"), so that a label says all that differs."""
    moving = varying(members, [f for f in (*PREFERENCE, "negative") if f not in (axis, other)
                               and not f.endswith("_identity")])
    companions = [f for f in moving if determined(members, f, [axis])]
    first: dict[str, Entry] = {}
    for e in members:
        first.setdefault(json.dumps(e.get(axis), default=str), e)
    labels = []
    for value in values:
        entry = first[json.dumps(value, default=str)]
        labels.append(", ".join([f"{axis}: {label(value)}",
                                 *(f"{f}: {label(entry.get(f))}" for f in companions)]))
    return tuple(labels)


def _paste(sheet: Image.Image, pen: ImageDraw.ImageDraw, source: Path | None,
           box: tuple[int, int], side: int) -> None:
    try:
        if source is None:
            raise FileNotFoundError
        with Image.open(source) as image:
            image = image.convert("RGB")
            image.thumbnail((side, side))
            sheet.paste(image, (box[0] + (side - image.width) // 2,
                                box[1] + (side - image.height) // 2))
    except (OSError, ValueError):  # no image for this cell, or its file is gone
        pen.rectangle((box[0] + 2, box[1] + 2, box[0] + side - 3, box[1] + side - 3),
                      outline=EMPTY, width=2)


def _wrap(text: str, font, width: int, most: int = 4) -> list[str]:
    """Lines of at most `width` pixels, at most `most` of them (the last one cut with ...)."""
    chars = max(8, int(width / max(1.0, font.getlength("n"))))
    lines = textwrap.wrap(text, chars) or [""]
    if len(lines) > most:
        lines = lines[:most]
        lines[-1] = lines[-1][: max(0, chars - 3)] + "..."
    return lines


def _save(image: Image.Image, sheet: Sheet) -> Sheet:
    record = json.dumps({"x": sheet.x, "y": sheet.y, "columns": sheet.columns,
                         "rows": sheet.rows, "title": sheet.title, "labels": sheet.labels,
                         "cells": sheet.cells, "origin": sheet.origin, "cell": sheet.cell},
                        ensure_ascii=False)
    buffer = io.BytesIO()
    if image.width * image.height > JPEG_ABOVE:
        path = sheet.path.with_suffix(".jpg")
        image.save(buffer, format="JPEG", quality=90)
        write_atomic(path.with_suffix(".json"), record.encode())
    else:
        path = sheet.path.with_suffix(".png")
        info = PngImagePlugin.PngInfo()
        info.add_text("farm-grid", record)
        image.save(buffer, format="PNG", pnginfo=info)
    write_atomic(path, buffer.getvalue())
    return replace(sheet, path=path)
