"""Prompt expansion: templates, variables, wildcards, inline alternatives, prompt files.

    "a photo of a {animal} in {place}, {red|green|blue} light, __style__"

- `{name}` is a variable from the recipe's `vars` (a list, or {file: values.txt});
- `__name__` is a wildcard: one value per line of `wildcards/name.txt` next to the recipe;
- `{a|b|c}` are inline alternatives; `{{` and `}}` are literal braces.

A slot used twice in an item (its prompt and negative included) takes one value per row: the
same variable, the same wildcard, or the same alternatives (`{red|green}` in the prompt and in
the negative pick the same colour). Rows come out `combinatorial` (every combination, in order)
or `random` (`count` rows per item, each choice drawn from a generator seeded by the recipe's
seed and the row's number, so the same recipe always gives the same prompts). Everything
streams: nothing holds the rows. Pure Python, no torch.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from farm.checks import Check, FieldError

SLOT = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|__([A-Za-z0-9_\-/]+?)__")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class PromptError(ValueError):
    """A template, variable, wildcard or prompt file that cannot be expanded."""

    def __init__(self, field: str, given: Any, problem: str):
        self.field, self.given = field, given
        super().__init__(problem)


@dataclass(frozen=True)
class Row:
    """One expanded prompt: what is rendered, and what it was made from (not in the job id)."""

    text: str
    negative: str | None  # None: the recipe's default negative
    template: str | None = None  # the item it was expanded from, when it had slots
    values: tuple[tuple[str, str], ...] = ()  # (slot, chosen value), in slot order
    fields: tuple[tuple[str, Any], ...] = ()  # extra columns of a prompt file
    overrides: tuple[tuple[str, Any], ...] = ()  # recipe fields the row sets (seed, steps, cfg)

    @cached_property
    def context(self) -> tuple[tuple[str, Any], ...]:
        """What the row adds to an image's metadata, as (key, value) pairs."""
        extra: list[tuple[str, Any]] = []
        if self.template is not None:
            extra += [("template", self.template), ("values", dict(self.values))]
        if self.fields:
            extra.append(("fields", dict(self.fields)))
        return tuple(extra)


@dataclass(frozen=True)
class Expansion:
    """How templates become rows: the recipe's `expand` field."""

    mode: str = "combinatorial"  # or "random"
    count: int = 1  # random: rows per item
    seed: int = 0  # random: the choices' seed


@dataclass(frozen=True)
class Slot:
    key: str  # "animal" (variable), "__style__" (wildcard), "{red|green}" (alternatives)
    options: tuple[str, ...]


@dataclass(frozen=True)
class Item:
    """A prompt item of a recipe: a text (maybe a template) and its negative."""

    text: str
    negative: str | None = None
    slots: tuple[Slot, ...] = field(default=(), compare=False)

    def rows(self, expansion: Expansion, index: int) -> Iterator[Row]:
        if not self.slots:
            yield Row(fill(self.text, {}), None if self.negative is None
                      else fill(self.negative, {}))
            return
        if expansion.mode == "random":
            for n in range(expansion.count):
                rng = random.Random(f"{expansion.seed}:{index}:{n}")
                yield self._row(tuple(rng.choice(s.options) for s in self.slots))
        else:
            for choice in itertools.product(*(s.options for s in self.slots)):
                yield self._row(choice)

    def count(self, expansion: Expansion) -> int:
        if not self.slots:
            return 1
        if expansion.mode == "random":
            return expansion.count
        total = 1
        for s in self.slots:
            total *= len(s.options)
        return total

    def _row(self, choice: tuple[str, ...]) -> Row:
        chosen = dict(zip((s.key for s in self.slots), choice))
        return Row(text=fill(self.text, chosen), negative=None if self.negative is None
                   else fill(self.negative, chosen), template=self.text,
                   values=tuple(chosen.items()))


def fill(template: str, chosen: Mapping[str, str]) -> str:
    """The template with every slot replaced by its chosen value."""

    def replace(m: re.Match) -> str:
        if m[0] in ("{{", "}}"):
            return m[0][0]
        return chosen[_key(m)]

    return SLOT.sub(replace, template)


def _key(m: re.Match) -> str:
    """A slot's name: the same name in prompt and negative is one choice."""
    if m[2] is not None:
        return f"__{m[2]}__"
    inner = m[1].strip()
    if "|" not in inner:
        return inner
    return "{" + "|".join(option.strip() for option in inner.split("|")) + "}"


PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]+)\}")


def caption_names(template: str) -> list[str]:
    """The `{name}`s a caption template uses."""
    return [m[1].strip() for m in PLACEHOLDER.finditer(template) if m[1] is not None]


def caption(template: str, known: Mapping[str, Any]) -> str:
    """A caption from its template: `{name}` is a template value, a prompt-file column or a job
    field; `{{` and `}}` are literal braces; a name this image lacks gives an empty text."""
    def replace(m: re.Match) -> str:
        if m[1] is None:
            return m[0][0]
        value = known.get(m[1].strip())
        return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    return PLACEHOLDER.sub(replace, template)


def item(text: str, negative: str | None, variables: Mapping[str, tuple[str, ...]],
         base: Path, field: str, negative_field: str | None = None) -> Item:
    """A prompt item with its slots found and their options checked."""
    slots: dict[str, Slot] = {}
    for part, label in ((text, field), (negative, negative_field or f"{field}.negative")):
        if part is None:
            continue
        for m in SLOT.finditer(part):
            if m[0] in ("{{", "}}"):
                continue
            key = _key(m)
            if key in slots:
                continue
            if m[2] is not None:
                options = read_values(base / "wildcards" / f"{m[2]}.txt", label)
            elif "|" in m[1]:
                options = tuple(o.strip() for o in m[1].split("|"))
                if len(set(options)) != len(options):
                    raise PromptError(label, part, f"{m[0]} lists an alternative twice")
            elif NAME.fullmatch(m[1].strip()):
                if m[1].strip() not in variables:
                    raise PromptError(label, part, f"{{{m[1].strip()}}} is not in vars; "
                                      f"vars: {', '.join(variables) or '(none)'} (write {{{{ "
                                      "and }} for literal braces)")
                options = variables[m[1].strip()]
            else:
                raise PromptError(label, part, f"{m[0]} is neither {{name}} nor {{a|b}}")
            slots[key] = Slot(key, options)
    return Item(text, negative, tuple(slots.values()))


def read_values(path: Path, field: str, unique: bool = True) -> tuple[str, ...]:
    """One value per line; blank lines and lines starting with # are skipped. Values (of a
    variable, a wildcard) must differ unless `unique` is False (prompts of a .txt file, where a
    repeat is rendered once, as in a CSV)."""
    lines = [line for _, line in _lines(path, field)]
    values = tuple(line.strip() for line in lines if line.strip() and not
                   line.strip().startswith("#"))
    if not values:
        raise PromptError(field, str(path), f"{path} has no values")
    if unique and len(set(values)) != len(values):
        repeated = next(v for v in values if values.count(v) > 1)
        raise PromptError(field, str(path), f"{path} lists {repeated!r} twice")
    return values


def _lines(path: Path, field: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, with or without a byte-order mark (Excel's
    "CSV UTF-8"); a byte that is not UTF-8 is an error naming its line, not a traceback."""
    try:
        handle = open(path, "rb")
    except OSError as e:
        raise PromptError(field, str(path), f"cannot read {path}: {e.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PromptError(field, str(path), f"{path.name} line {number}: not UTF-8 "
                                  f"text (byte 0x{raw[e.start]:02x}); save it as UTF-8") \
                    from None


def file_rows(path: Path, field: str, columns: Mapping[str, Check]) -> Iterator[Row]:
    """Rows of a prompt file: .txt (one prompt a line), .csv or .jsonl (prompt or text column,
    optional negative, any other column kept; a column of `columns` (keys.COLUMNS: seed, steps,
    cfg, ...) sets that recipe key for its row, its cells read by the check given)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        for text in read_values(path, field, unique=False):
            yield Row(text, None)
        return
    if suffix not in (".csv", ".jsonl"):
        raise PromptError(field, str(path), "a prompt file is .txt, .csv or .jsonl")
    lines = _lines(path, field)
    if suffix == ".csv":
        yield from _csv_rows(lines, path, field, columns)
        return
    for number, line in lines:
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptError(field, str(path), f"{where}: not valid JSON ({e.msg} at "
                              f"column {e.colno})") from None
        if not isinstance(record, dict):
            raise PromptError(field, str(path), f"{where}: expected a JSON object such as "
                              f'{{"prompt": "..."}}, got {type(record).__name__}')
        yield _record_row(record, where, field, columns)


def _csv_rows(lines: Iterator[tuple[int, str]], path: Path, field: str,
              columns: Mapping[str, Check]) -> Iterator[Row]:
    """CSV records with their first line's number; header names are stripped of spaces."""
    reader = csv.reader((line for _, line in lines), skipinitialspace=True)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise PromptError(field, str(path), f"{path.name} is empty") from None
    for name in header:
        if not name:
            raise PromptError(field, str(path), f"{path.name} line 1: a column has no name")
        if header.count(name) > 1:
            raise PromptError(field, str(path), f"{path.name} line 1: column {name!r} twice")
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise PromptError(field, str(path), f"{path.name} line {start}: {e}") from None
        if not any(cell.strip() for cell in cells):
            continue
        where = f"{path.name} line {start}"
        if len(cells) > len(header):
            raise PromptError(field, str(path), f"{where}: {len(cells)} cells for "
                              f"{len(header)} columns (quote cells that hold commas)")
        yield _record_row(dict(zip(header, cells)), where, field, columns)


def _record_row(record: dict, where: str, field: str, columns: Mapping[str, Check]) -> Row:
    text = record.get("prompt", record.get("text"))
    if not isinstance(text, str) or not text.strip():
        raise PromptError(field, record, f"{where}: needs a non-empty prompt (or text) column")
    negative = record.get("negative") or None
    if negative is not None and not isinstance(negative, str):
        raise PromptError(field, record, f"{where}: column negative: got {negative!r}; "
                          "expected text")
    fields, overrides = [], []
    for key, value in record.items():
        if key in ("prompt", "text", "negative") or value in (None, ""):
            continue
        if key in columns:
            try:
                overrides.append((key, columns[key](value)))
            except FieldError as e:
                raise PromptError(field, record, f"{where}: column {key}: got {value!r}; "
                                  f"{e}") from None
        else:
            fields.append((key, value))
    return Row(text, negative, fields=tuple(fields), overrides=tuple(overrides))
