"""The finished images of a run folder, read from its manifest as a stream, and filtered.

Exports and contact sheets read what a run made through this module: one SQLite cursor in
file order, so a run of millions of images is never held in memory. Nothing here writes.

Filters (`--where`), repeated as needed; the same field given twice matches either value:

    checkpoint=tiny    equal (numbers compare as numbers: cfg=7 matches 7.0)
    sampler!=euler     not equal
    prompt~fox         contains, ignoring case
    values.animal=cat  a template's chosen value; fields.NAME for a prompt-file column
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.fields import COLUMNS, column_value
from farm.manifest import Manifest

# what a filter or a grid axis may name, besides values.NAME and fields.NAME: every job column
# (farm/fields.py) and size (WxH)
# and what exports write beside them: the caption (`text`) and the pixels' hash
FIELDS = (*COLUMNS, "size", "text", "pixel_hash")
FREE = ("values", "fields")  # template choices, prompt-file columns: any keys (export structs)
NESTED = (*FREE, "hires")  # what NAME.KEY may name: those, and a hires pass's members
# a nested name may hold anything but the operators: values.{red|green}=red
CONDITION = re.compile(rf"(?P<field>(?:{'|'.join(NESTED)})\.[^=!~<>]+?|[A-Za-z_]\w*)\s*"
                       r"(?P<op>!=|>=|<=|=|~|>|<)(?P<value>.*)", re.S)
COMPARISONS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
NUMERIC = {"int64", "uint64", "float64"}  # the job columns comparisons apply to


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

    def get(self, field: str) -> Any:
        """A field's value as filters and grids see it; None when the image has none."""
        if field == "size":
            return f"{self.params['width']}x{self.params['height']}"
        if field == "text":  # what exports write as the caption
            return self.params.get("caption") or self.params["prompt"]
        if field == "pixel_hash":
            return self.pixel_hash
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


@dataclass(frozen=True)
class Where:
    """All of the fields must match; any of the values given for one field may."""

    conditions: tuple[Condition, ...] = ()

    @staticmethod
    def parse(texts: list[str] | tuple[str, ...], what: str = "--where") -> Where:
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
                if "." not in field and COLUMNS.get(field) not in NUMERIC:
                    numeric = ", ".join(n for n, kind in COLUMNS.items() if kind in NUMERIC)
                    raise CatalogError(f"{what} {text!r}: {field} is not a number; compare "
                                       f"numbers: {numeric}, or values./fields. columns")
            conditions.append(Condition(field, op, value))
        return Where(tuple(conditions))

    def matches(self, entry: Entry) -> bool:
        fields: dict[str, bool] = {}
        for c in self.conditions:
            if c.op == "!=" or c.op in COMPARISONS:  # exclusions and bounds all hold
                key = f"{c.op}{c.field}"
                fields[key] = fields.get(key, True) and c.matches(entry)
            else:
                fields[c.field] = fields.get(c.field, False) or c.matches(entry)
        return all(fields.values())

    def __str__(self) -> str:
        return " ".join(map(str, self.conditions)) or "(everything)"


def manifest_of(folder: Path) -> Path:
    """A run folder's manifest, or an error saying the folder is not one."""
    manifest = Path(folder) / "manifest.sqlite"
    if not manifest.is_file():
        raise CatalogError(f"{folder}: not a run folder (it has no manifest.sqlite)")
    return manifest


def entries(folder: Path, where: Where = Where(), order: str = "file") -> Iterator[Entry]:
    """Every image the manifest records as done and that matches, streamed, in file order or in
    the order of the runs that finished them. Whether its file is still there is the caller's
    to check (exports count the missing)."""
    with Manifest(manifest_of(folder), readonly=True) as manifest:
        for row in manifest.done(order):
            entry = Entry(seq=row.pop("seq"), id=row.pop("id"), path=row.pop("path"),
                          pixel_hash=row.pop("pixel_hash"), params=json.loads(row.pop("params")),
                          row=row)
            if where.matches(entry):
                yield entry
