"""The finished images of a run folder, read from its manifest as a stream, and filtered.

Exports and contact sheets read what a run made through this module: one SQLite cursor in
file order, so a run of millions of images is never held in memory. Nothing here writes.

Filters (`--where`), repeated as needed; the same field given twice matches either value:

    checkpoint=tiny    equal (numbers compare as numbers: cfg=7 matches 7.0)
    sampler!=euler     not equal
    prompt~fox         contains, ignoring case
    values.animal=cat  a template's chosen value; fields.NAME for a prompt-file column
    aesthetic>=5.5     a comparison of numbers (>=, <=, >, <): cfg, steps, seed, scores

Besides filters, a selection may keep the best images (`--top aesthetic:30%` or `:1000`, per
group with `--per prompt`) and one image per group of near-duplicates (`--unique`, after farm
dedup). Score columns (farm/scorers.py) and `dup_group` are read from the manifest's own tables.
"""

from __future__ import annotations

import json
import operator
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from farm import scorers
from farm.fields import COLUMNS, column_value
from farm.manifest import Manifest

NUMERIC_KINDS = {"int64", "uint64", "float64"}  # the job columns comparisons apply to
# what a filter or a grid axis may name, besides values.NAME and fields.NAME: every job column
# (farm/fields.py) and size (WxH)
# and what exports write beside them: the caption (`text`) and the pixels' hash
# and, once a run is scored (farm score) or grouped (farm dedup), its score columns and dup_group
FIELDS = (*COLUMNS, "size", "text", "pixel_hash", *scorers.COLUMNS, "dup_group")
NUMBERS = (*(n for n, kind in COLUMNS.items() if kind in NUMERIC_KINDS), *scorers.NUMERIC,
           "dup_group")  # what comparisons and --top take
FREE = ("values", "fields")  # template choices, prompt-file columns: any keys (export structs)
NESTED = (*FREE, "hires")  # what NAME.KEY may name: those, and a hires pass's members
# a nested name may hold anything but the operators: values.{red|green}=red
CONDITION = re.compile(rf"(?P<field>(?:{'|'.join(NESTED)})\.[^=!~<>]+?|[A-Za-z_]\w*)\s*"
                       r"(?P<op>!=|>=|<=|=|~|>|<)(?P<value>.*)", re.S)
COMPARISONS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


class CatalogError(ValueError):
    """A run folder or a filter that cannot be read."""


@dataclass(frozen=True)
class Entry:
    """A finished image: where it is, its pixels' hash, and the manifest row it came from."""

    seq: int
    id: str
    path: str  # relative to the run folder
    pixel_hash: str
    params: dict[str, Any]  # the job's fields (Job.to_dict), template values included
    row: dict[str, Any]  # the rest of its manifest row (timings, worker, provenance, ...)
    scores: dict[str, Any] = field(default_factory=dict)  # score column -> value
    dup_group: int | None = None  # its group of near-duplicates (farm dedup)

    def get(self, field: str) -> Any:
        """A field's value as filters and grids see it; None when the image has none."""
        if field == "size":
            return f"{self.params['width']}x{self.params['height']}"
        if field == "text":  # what exports write as the caption
            return self.params.get("caption") or self.params["prompt"]
        if field == "pixel_hash":
            return self.pixel_hash
        if field in scorers.BY_COLUMN:
            return self.scores.get(field)
        if field == "dup_group":
            return self.dup_group
        head, _, name = field.partition(".")
        if name:
            return (self.params.get(head) or {}).get(name)
        return column_value(self.params, field)


def check_field(field: str, what: str) -> str:
    """A known field name, or an error that lists them."""
    head, dot, name = field.partition(".")
    if field in FIELDS or (dot and head in NESTED and name):
        return field
    raise CatalogError(f"{what}: unknown field {field!r}; allowed: {', '.join(FIELDS)}, "
                       "values.NAME (a template's variable), fields.NAME (a prompt-file column), "
                       "hires.NAME (scale, upscaler, steps, denoise, sampler of a hires pass)")


@dataclass(frozen=True)
class Condition:
    field: str
    op: str  # "=", "!=", "~", or a comparison: ">=", "<=", ">", "<"
    value: str

    def matches(self, entry: Entry) -> bool:
        actual = entry.get(self.field)
        if self.op in COMPARISONS:  # numbers only: an image without one does not match
            number = _number(actual)
            return number is not None and COMPARISONS[self.op](number, _number(self.value))
        if self.op == "~":
            return actual is not None and self.value.casefold() in str(actual).casefold()
        return _equal(actual, self.value) == (self.op == "=")

    def __str__(self) -> str:
        return f"{self.field}{self.op}{self.value}"


def _equal(actual: Any, given: str) -> bool:
    """Whether a recorded value equals a filter's text: null as none/null/empty, booleans in
    any case (JSON's false, Python's False), numbers as numbers whether recorded as numbers or
    as text (a CSV's "1.0" is 1), whole numbers exactly (seeds run to 2**64)."""
    if actual is None:
        return given.strip().lower() in ("", "none", "null")
    if isinstance(actual, bool):
        return given.strip().lower() == str(actual).lower()
    left, right = _number(actual), _number(given)
    if left is not None and right is not None:
        return left == right
    return str(actual) == given


def _number(value: Any) -> int | float | None:
    """A value as a number (an int when it is whole: exact beyond 2**53), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


TOP = re.compile(r"(?P<column>[A-Za-z_]\w*):(?P<count>\d+)(?P<percent>%?)")


@dataclass(frozen=True)
class Top:
    """Keep the images with the highest `column` of each group (`per` a field; None: all):
    `count` of them, or with `percent` that share of each group (rounded up)."""

    column: str
    count: int
    percent: bool = False
    per: str | None = None

    @staticmethod
    def parse(text: str, per: str | None = None, what: str = "--top") -> Top:
        found = TOP.fullmatch(str(text).strip())
        if not found or int(found["count"]) < 1 or (found["percent"] and
                                                    int(found["count"]) > 100):
            raise CatalogError(f"{what}: got {text!r}; expected COLUMN:N or COLUMN:P% (N a "
                               "whole number from 1, P from 1 to 100), e.g. aesthetic:1000 or "
                               "aesthetic:30%")
        if found["column"] not in NUMBERS:
            raise CatalogError(f"{what} {text!r}: {found['column']} is not a number; rank "
                               f"by one of {', '.join(NUMBERS)}")
        if per is not None:
            check_field(per, "--per")
        return Top(found["column"], int(found["count"]), bool(found["percent"]), per)

    def kept(self, size: int) -> int:
        """How many of a group of `size` images it keeps."""
        return min(size, -(-size * self.count // 100) if self.percent else self.count)

    def __str__(self) -> str:
        return f"top {self.column}:{self.count}{'%' if self.percent else ''}" + (
            f" per {self.per}" if self.per else "")


@dataclass(frozen=True)
class Where:
    """All of the fields must match; any of the values given for one field may. Then, of what
    matches: one image per group of near-duplicates (`unique`), and the best (`top`)."""

    conditions: tuple[Condition, ...] = ()
    top: Top | None = None
    unique: bool = False

    @staticmethod
    def parse(texts: list[str] | tuple[str, ...], what: str = "--where", top: str | None = None,
              per: str | None = None, unique: bool = False) -> Where:
        conditions = []
        for text in texts:
            found = CONDITION.fullmatch(str(text).strip())
            if not found:
                raise CatalogError(f"{what}: {text!r}: expected FIELD=VALUE, FIELD!=VALUE, "
                                   "FIELD~TEXT or a comparison of numbers (FIELD>=N, <=, >, "
                                   "<), e.g. checkpoint=tiny, prompt~fox or cfg>=5")
            field = check_field(found["field"], f"{what} {text!r}")
            op, value = found["op"], found["value"].strip()
            if op in COMPARISONS:
                if _number(value) is None:
                    raise CatalogError(f"{what} {text!r}: {value!r} is not a number")
                if "." not in field and field not in NUMBERS:
                    raise CatalogError(f"{what} {text!r}: {field} is not a number; compare "
                                       f"numbers: {', '.join(NUMBERS)}, or values./fields. "
                                       "columns")
            conditions.append(Condition(field, op, value))
        if per is not None and top is None:
            raise CatalogError(f"--per {per}: it says how --top groups images; give --top too")
        return Where(tuple(conditions), Top.parse(top, per) if top else None, unique)

    def matches(self, entry: Entry) -> bool:
        fields: dict[str, bool] = {}
        for c in self.conditions:
            if c.op == "!=" or c.op in COMPARISONS:  # exclusions and bounds all hold
                key = f"{c.op}{c.field}"
                fields[key] = fields.get(key, True) and c.matches(entry)
            else:
                fields[c.field] = fields.get(c.field, False) or c.matches(entry)
        return all(fields.values())

    @property
    def named(self) -> set[str]:
        """Every field it reads."""
        return {c.field for c in self.conditions} | (
            {self.top.column, self.top.per} - {None} if self.top else set()) | (
            {"dup_group"} if self.unique else set())

    def __str__(self) -> str:
        return " ".join([*map(str, self.conditions), *([str(self.top)] if self.top else []),
                         *(["unique"] if self.unique else [])]) or "(everything)"


def manifest_of(folder: Path) -> Path:
    """A run folder's manifest, or an error saying the folder is not one."""
    manifest = Path(folder) / "manifest.sqlite"
    if not manifest.is_file():
        raise CatalogError(f"{folder}: not a run folder (it has no manifest.sqlite)")
    return manifest


def entries(folder: Path, where: Where = Where(), order: str = "file") -> Iterator[Entry]:
    """Every image the manifest records as done and that matches, streamed, in file order or in
    the order of the runs that finished them. Whether its file is still there is the caller's
    to check (exports count the missing). `top` and `unique` read the matches once first."""
    with Manifest(manifest_of(folder), readonly=True) as manifest:
        check_columns(manifest, where, folder)
        kept = _picked(_stream(manifest, where, "file"), where) \
            if where.top or where.unique else None
        for entry in _stream(manifest, where, order):
            if kept is None or entry.seq in kept:
                yield entry


def sample(folder: Path, where: Where, count: int) -> list[Entry]:
    """`count` of the images `where` selects, chosen at random but always the same ones for the
    same folder, in file order; in memory for the sample alone (a run of ten million: the file
    numbers, 8 bytes each, when nothing filters; else one pass keeping `count`)."""
    rng = random.Random(0)
    with Manifest(manifest_of(folder), readonly=True) as manifest:
        if where == Where():
            seqs = manifest.done_seqs()
            chosen = sorted(seqs[i] for i in rng.sample(range(len(seqs)), min(count, len(seqs))))
            return list(_entries(manifest, manifest.done_at(chosen), where))
    kept: list[Entry] = []
    for n, entry in enumerate(entries(folder, where)):  # reservoir sampling
        if n < count:
            kept.append(entry)
        elif (i := rng.randrange(n + 1)) < count:
            kept[i] = entry
    return sorted(kept, key=lambda entry: entry.seq)


def check_columns(manifest: Manifest, where: Where, folder: Path) -> None:
    """A filter on a score column the run has no score for, or on dup_group before farm dedup,
    is an error that says what to run (not an empty selection)."""
    named = where.named
    have = manifest.scorer_names()
    for column in sorted(named & set(scorers.BY_COLUMN)):
        kind = scorers.BY_COLUMN[column].name
        if kind not in have:
            raise CatalogError(f"{folder} has no {column} column: no image of it was scored "
                               f"with {kind}; run farm score {folder} --with {kind} first")
    if "dup_group" in named and not manifest.grouped():
        raise CatalogError(f"{folder} has no dup_group column: its images were never grouped; "
                           f"run farm dedup {folder} first")


def _stream(manifest: Manifest, where: Where, order: str) -> Iterator[Entry]:
    """The done rows that match, with their scores and duplicate groups, read in chunks."""
    return _entries(manifest, manifest.done(order), where)


def _entries(manifest: Manifest, rows: Iterator[dict], where: Where) -> Iterator[Entry]:
    scored, grouped = bool(manifest.scorer_names()), bool(manifest.grouped())
    while chunk := list(islice(rows, CHUNK)):
        found = manifest.scores_for([r["pixel_hash"] for r in chunk]) if scored else {}
        groups = manifest.duplicates_for([r["id"] for r in chunk]) if grouped else {}
        for row in chunk:
            params = json.loads(row.pop("params"))
            image, pixels = row.pop("id"), row.pop("pixel_hash")
            scores = _columns(found.get(pixels, ()), params.get("caption") or params["prompt"]) \
                if scored else {}
            entry = Entry(seq=row.pop("seq"), id=image, path=row.pop("path"), pixel_hash=pixels,
                          params=params, row=row, scores=scores, dup_group=groups.get(image))
            if where.matches(entry):
                yield entry


CHUNK = 1000  # rows whose scores are read at once


def _columns(found, text: str) -> dict[str, Any]:
    """An image's score columns: the latest score of each scorer, of its caption `text` where
    the scorer reads one (clip)."""
    caption = None
    columns: dict[str, Any] = {}
    for scorer, subject, value in found:  # oldest first: the latest wins
        if subject:
            caption = caption or scorers.text_hash(text)
            if subject != caption:
                continue
        columns.update(json.loads(value))
    return columns


def _picked(matching: Iterator[Entry], where: Where) -> set[int]:
    """The file numbers (seq) to keep of what matches: the first of each duplicate group
    (`unique`), then the best `top` of each group."""
    firsts: set[int] = set()
    ungrouped = 0
    ranked: dict[str, list[tuple[float, int]]] = {}
    for entry in matching:  # in file order: the first of a group was rendered first
        if where.unique:
            if entry.dup_group is None:
                ungrouped += 1
                continue
            if entry.dup_group in firsts:
                continue
            firsts.add(entry.dup_group)
        if where.top:
            value = _number(entry.get(where.top.column))
            if value is not None:
                group = json.dumps(entry.get(where.top.per), sort_keys=True, default=str) \
                    if where.top.per else ""
                ranked.setdefault(group, []).append((-value, entry.seq))
        else:
            ranked.setdefault("", []).append((0, entry.seq))
    if ungrouped:
        raise CatalogError(f"--unique: {ungrouped} of the selected images were rendered after "
                           "the last farm dedup and belong to no group; run farm dedup again")
    kept: set[int] = set()
    for group in ranked.values():
        if where.top:
            group.sort()  # highest first; ties: the first rendered
            group = group[:where.top.kept(len(group))]
        kept.update(seq for _, seq in group)
    return kept


def distribution(folder: Path) -> dict | None:
    """The run's score columns as `farm status` and report.json show them: for each number its
    count, min, quartiles and max; how many images are flagged nsfw; the near-duplicate groups.
    None when nothing was scored or grouped."""
    import numpy as np

    with Manifest(manifest_of(folder), readonly=True) as manifest:
        if not manifest.scorer_names() and not manifest.grouped():
            return None
    numbers: dict[str, list[float]] = {}
    flagged = hashed = 0
    groups: Counter[int] = Counter()
    for entry in entries(folder):
        for column, value in entry.scores.items():
            if column in scorers.NUMERIC and value is not None:
                numbers.setdefault(column, []).append(float(value))
        flagged += bool(entry.scores.get("nsfw"))
        hashed += "phash" in entry.scores
        if entry.dup_group is not None:
            groups[entry.dup_group] += 1
    found: dict = {}
    for column in (c for c in scorers.NUMERIC if c in numbers):
        values = np.array(numbers[column])
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        found[column] = {"count": len(values), "min": _round(values.min()), "q1": _round(q1),
                         "median": _round(median), "q3": _round(q3), "max": _round(values.max())}
    if "nsfw_score" in found:
        found["nsfw"] = {"count": found["nsfw_score"]["count"], "flagged": flagged}
    if hashed:
        found["phash"] = {"count": hashed}
    if groups:
        found["duplicates"] = {"grouped": sum(groups.values()),
                               "groups": sum(1 for n in groups.values() if n > 1),
                               "beyond_first": sum(n - 1 for n in groups.values())}
    return found


def _round(value) -> float:
    return round(float(value), 4)
