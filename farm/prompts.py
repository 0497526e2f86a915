"""Prompt expansion: templates, variables, wildcards, inline alternatives, prompt files.

    "a photo of a {animal} in {place}, {red|green|blue} light, __style__"

- `{name}` is a variable from the recipe's `vars` (a list, or {file: values.txt});
- `__name__` is a wildcard: one value per line of `wildcards/name.txt` next to the recipe;
- `{a|b|c}` are inline alternatives; `{{` and `}}` are literal braces.

A variable or wildcard used twice in an item (its prompt and negative included) takes one value
per row. Rows come out `combinatorial` (every combination, in order) or `random` (`count` rows
per item, each choice drawn from a generator seeded by the recipe's seed and the row's number,
so the same recipe always gives the same prompts). Everything streams: nothing holds the rows.
Pure Python, no torch.
"""

from __future__ import annotations

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

SLOT = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|__([A-Za-z0-9_\-/]+?)__")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# prompt-file columns that set a recipe field for their row, and how to read them
ROW_FIELDS = {"seed": int, "steps": int, "cfg": float}


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
    key: str  # "animal" (variable), "__style__" (wildcard), "{red|green}#1" (alternatives)
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
    counter = itertools.count(1)

    def replace(m: re.Match) -> str:
        if m[0] in ("{{", "}}"):
            return m[0][0]
        return chosen[_key(m, counter)]

    return SLOT.sub(replace, template)


def _key(m: re.Match, counter) -> str:
    if m[2] is not None:
        return f"__{m[2]}__"
    inner = m[1].strip()
    return inner if "|" not in inner else f"{{{inner}}}#{next(counter)}"


def item(text: str, negative: str | None, variables: Mapping[str, tuple[str, ...]],
         base: Path, field: str) -> Item:
    """A prompt item with its slots found and their options checked."""
    slots: dict[str, Slot] = {}
    for part, label in ((text, field), (negative, f"{field}.negative")):
        if part is None:
            continue
        counter = itertools.count(1)
        for m in SLOT.finditer(part):
            if m[0] in ("{{", "}}"):
                continue
            key = _key(m, counter)
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


def read_values(path: Path, field: str) -> tuple[str, ...]:
    """One value per line; blank lines and lines starting with # are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PromptError(field, str(path), f"cannot read {path}: {e.strerror}") from None
    values = tuple(line.strip() for line in lines if line.strip() and not
                   line.strip().startswith("#"))
    if not values:
        raise PromptError(field, str(path), f"{path} has no values")
    if len(set(values)) != len(values):
        raise PromptError(field, str(path), f"{path} lists a value twice")
    return values


def file_rows(path: Path, field: str) -> Iterator[Row]:
    """Rows of a prompt file: .txt (one prompt a line), .csv or .jsonl (prompt or text column,
    optional negative, any other column kept; seed, steps and cfg columns set that field)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        for text in read_values(path, field):
            yield Row(text, None)
        return
    if suffix not in (".csv", ".jsonl"):
        raise PromptError(field, str(path), "a prompt file is .txt, .csv or .jsonl")
    try:
        handle = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise PromptError(field, str(path), f"cannot read {path}: {e.strerror}") from None
    with handle:
        records = (csv.DictReader(handle) if suffix == ".csv"
                   else (json.loads(line) for line in handle if line.strip()))
        for number, record in enumerate(records, start=2 if suffix == ".csv" else 1):
            yield _record_row(record, f"{path.name} line {number}", field)


def _record_row(record: dict, where: str, field: str) -> Row:
    text = record.get("prompt", record.get("text"))
    if not isinstance(text, str) or not text.strip():
        raise PromptError(field, record, f"{where}: needs a non-empty prompt (or text) column")
    negative = record.get("negative") or None
    fields, overrides = [], []
    for key, value in record.items():
        if key in ("prompt", "text", "negative") or value in (None, ""):
            continue
        if key in ROW_FIELDS:
            try:
                overrides.append((key, ROW_FIELDS[key](value)))
            except (TypeError, ValueError):
                raise PromptError(field, record, f"{where}: {key} is {value!r}, not a "
                                  f"{ROW_FIELDS[key].__name__}") from None
        else:
            fields.append((key, value))
    return Row(text, negative, fields=tuple(fields), overrides=tuple(overrides))
