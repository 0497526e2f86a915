"""Prompts as AUTOMATIC1111 reads them: emphasis, BREAK and `<lora:...>` tags. Pure Python.

    a (red:1.3) fox, ((snow)), [blur] BREAK forest <lora:ink:0.8>

- `(text)` multiplies the weight of its tokens by 1.1, `((text))` by 1.21, `(text:1.5)` by
  1.5, `[text]` divides by 1.1; `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters;
- `BREAK` (the word, in capitals) ends a 75-token chunk early;
- `<lora:NAME>` or `<lora:NAME:WEIGHT>` adds a LoRA to the job and is removed from the text
  the text encoder sees (the prompt as recorded keeps it).

Unlike AUTOMATIC1111, which quietly closes an unclosed `(` at the end of the prompt, farm
refuses it (a typo there changes every token after it); a `)` or `]` with nothing open is
literal text, as there ("smile :)").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from farm import checks

ROUND, SQUARE = 1.1, 1 / 1.1
BREAK = "BREAK"
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
LORA_TAG = re.compile(r"<lora:([^>]*)>")
CHUNK_TOKENS = 75  # what A1111 encodes at a time: CLIP's 77 less its start and end tokens


class EmphasisError(ValueError):
    """A prompt whose emphasis or tags cannot be read; the message says where and why."""


def is_break(piece: str, weight: float) -> bool:
    """Whether a run is a BREAK (the run (BREAK, -1)); a word weighted -1, `(word:-1)`, is not:
    it is encoded at weight -1, as AUTOMATIC1111 encodes it."""
    return weight == -1 and piece == BREAK


def parse(text: str) -> list[tuple[str, float]]:
    """The prompt as (text, weight) runs, neighbours of equal weight merged; a BREAK is the
    run (BREAK, -1) (is_break). A prompt with no emphasis is [(text, 1.0)]. A BREAK inside
    brackets still breaks (AUTOMATIC1111 weights it with the brackets' text and then encodes
    the word BREAK instead)."""
    runs: list[list] = []
    open_round: list[int] = []  # where each open bracket's runs start
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            if not is_break(*run):
                run[1] *= factor

    for match in _TOKEN.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):  # an escape; a lone backslash is dropped, as in A1111
            runs.append([piece[1:], 1.0])
        elif piece == "(":
            open_round.append(len(runs))
        elif piece == "[":
            open_square.append(len(runs))
        elif weight is not None and open_round:
            try:
                factor = float(weight)
            except ValueError:
                raise EmphasisError(f"the weight {weight!r} is not a number: write "
                                    "(word:1.2)") from None
            scale(open_round.pop(), factor)
        elif piece == ")" and open_round:
            scale(open_round.pop(), ROUND)
        elif piece == "]" and open_square:
            scale(open_square.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(piece)):
                if i:
                    runs.append([BREAK, -1])
                runs.append([part, 1.0])
    if open_round or open_square:
        where = min(open_round + open_square)
        shown = "".join(run[0] for run in runs[where:] if not is_break(*run))[:40]
        bracket = "(" if open_round and where in open_round else "["
        raise EmphasisError(f"an unclosed {bracket!r} before {shown!r}: close it, or write "
                            f"\\{bracket} for the literal character")
    merged: list[list] = []
    for run in runs:
        if merged and merged[-1][1] == run[1] and not is_break(*run) \
                and not is_break(*merged[-1]):
            merged[-1][0] += run[0]
        elif run[0] or is_break(*run):
            merged.append(run)
    return [(piece, weight) for piece, weight in merged] or [("", 1.0)]


_SQUARE_GROUP = re.compile(r"(?<!\\)\[((?:\\.|[^\[\]\\])*)(?<!\\)\]")
_EDIT = re.compile(r"^(?:[^:]*:){1,2}\s*[+-]?[\d.]+\s*$", re.S)  # [to:when], [from:to:when]
_AND = re.compile(r"\bAND\b")


def unsupported(text: str) -> str | None:
    """What of AUTOMATIC1111's per-step syntax the text uses, which farm does not render yet:
    prompt editing `[from:to:when]`, alternation `[a|b]`, composable `AND`; None if nothing."""
    for match in _SQUARE_GROUP.finditer(text):
        inside = match.group(1)
        if "|" in inside:
            return f"alternation {match.group(0)!r} (a different prompt each step)"
        if _EDIT.match(inside):
            return f"prompt editing {match.group(0)!r} (the prompt changes at a step)"
    if _AND.search(text):
        return "AND (prompts composed at each step)"
    return None


def plain(text: str) -> bool:
    """Whether A1111's reading of the text is the text itself at weight 1: no emphasis, no
    escapes, no BREAK (its length aside, it encodes as diffusers encodes it)."""
    return parse(text) == [(text, 1.0)] or text == ""


def loras(text: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its `<lora:NAME[:WEIGHT]>` tags, and each tag's (name, weight)."""
    found = []
    for match in LORA_TAG.finditer(text):
        parts = match.group(1).split(":")
        name = parts[0].strip()
        if not name:
            raise EmphasisError(f"{match.group(0)!r} names no LoRA: write <lora:NAME:WEIGHT>")
        if len(parts) > 2:
            raise EmphasisError(f"{match.group(0)!r}: farm takes <lora:NAME> or "
                                "<lora:NAME:WEIGHT> (one weight for the text encoder and "
                                "the UNet alike)")
        weight = 1.0
        if len(parts) == 2:
            try:
                weight = checks.lora_weight(float(parts[1]))
            except ValueError:
                raise EmphasisError(f"{match.group(0)!r}: the weight {parts[1]!r} is not a "
                                    "number from -10 to 10 (as the recipe's LoRA weights)"
                                    ) from None
        found.append((name, weight))
    return LORA_TAG.sub("", text), found


# chunks of tokens, as A1111 fills them (encode.py encodes them) --------------------------------

COMMA_BACKTRACK = 20  # A1111's "Prompt word wrap length limit"


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)  # at most CHUNK_TOKENS, without start/end
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, str]] = field(default_factory=list)  # (offset, embedding word)


def chunks(runs: list[tuple[list[int], float]], comma: int | None,
           words: dict[tuple[int, ...], tuple[str, int]], end: int) -> list[Chunk]:
    """Tokenized runs (tokens, weight; a BREAK is weight None) -> chunks, padded with `end`.
    `words` maps an embedding's word (as tokens) to (word, vectors)."""
    done: list[Chunk] = []
    current = Chunk()
    last_comma = -1

    def close() -> None:
        nonlocal current, last_comma
        missing = CHUNK_TOKENS - len(current.tokens)
        current.tokens += [end] * missing
        current.weights += [1.0] * missing
        done.append(current)
        current, last_comma = Chunk(), -1

    longest = sorted(words, key=len, reverse=True)
    for tokens, weight in runs:
        if weight is None:
            close()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                last_comma = len(current.tokens)
            elif len(current.tokens) == CHUNK_TOKENS and last_comma != -1 \
                    and len(current.tokens) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1  # the words after the comma go on to the next chunk
                moved = Chunk(current.tokens[cut:], current.weights[cut:],
                              [(o - cut, w) for o, w in current.fixes if o >= cut])
                current.tokens, current.weights = current.tokens[:cut], current.weights[:cut]
                current.fixes = [(o, w) for o, w in current.fixes if o < cut]
                close()
                current = moved
            if len(current.tokens) == CHUNK_TOKENS:
                close()
            match = next((k for k in longest if tuple(tokens[position:position + len(k)]) == k),
                         None)
            if match is None:
                current.tokens.append(token)
                current.weights.append(weight)
                position += 1
                continue
            word, vectors = words[match]
            if len(current.tokens) + vectors > CHUNK_TOKENS:
                close()
            current.fixes.append((len(current.tokens), word))
            current.tokens += [0] * vectors
            current.weights += [weight] * vectors
            position += len(match)
    if current.tokens or not done:
        close()
    return done


def chunked(text: str, weighted: bool, tokenizer, vectors: dict[str, int]) -> list[Chunk]:
    """The text's chunks for one CLIP tokenizer: read with emphasis (`weighted`) or as it
    is; `vectors`: how many places each embedding word takes."""
    runs = parse(text) if weighted else [(text, 1.0)]
    words = {tuple(tokenizer(word, add_special_tokens=False).input_ids): (word, count)
             for word, count in vectors.items()}
    tokenized = [([], None) if is_break(piece, weight) else
                 (tokenizer(piece, add_special_tokens=False, truncation=False).input_ids, weight)
                 for piece, weight in runs]
    return chunks(tokenized, tokenizer.get_vocab().get(",</w>"), words, tokenizer.eos_token_id)
