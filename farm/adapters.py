"""LoRAs and textual-inversion embeddings: finding their files, identifying them, checking
that they fit the checkpoint, reading a prompt's `<lora:...>` tags, embedding words and
emphasis into its job's fields (driver side, no torch), and applying LoRAs on a worker.

Where a name is looked for, in order:
    LoRA       a path to a .safetensors file (from the recipe's folder, then the current one);
               NAME -> loras/NAME.safetensors next to the recipe, then $FARM_LORA_DIR/NAME...;
               a Hugging Face repo id org/name[@revision] holding one .safetensors file
    embedding  a prompt word NAME -> embeddings/NAME.safetensors next to the recipe, then
               $FARM_EMBEDDINGS_DIR/NAME.safetensors

A file's identity is the sha256 of its tensor data (after the safetensors header), the hash
AUTOMATIC1111 and CivitAI show for a LoRA ("Lora hashes"); an embedding's "TI hashes" is the
whole file's, as A1111 writes it (fields.py).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from farm import emphasis, families, hub, models
from farm.emphasis import CHUNK_TOKENS
from farm.jobs import Lora, Model
from farm.values import HUB_ID, PICKLE_SUFFIXES

LORA_DIR_ENV, EMBEDDINGS_DIR_ENV = "FARM_LORA_DIR", "FARM_EMBEDDINGS_DIR"
MAX_LORAS_LOADED = 8  # adapters a worker keeps loaded per pipeline; the least recent go


class AdapterError(models.ModelError):
    """A LoRA, an embedding or a prompt's tags that cannot be used: which, and why."""


def safetensors_header(path: Path, field: str, ref: str) -> dict[str, Any]:
    """The tensor names, shapes and dtypes of a .safetensors file, read without loading it, and
    checked against the file's size: a damaged file or one cut short is refused here, before
    anything renders, not job by job."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < 100 * 2**20:
                raise ValueError("no safetensors header")
            header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError("its header is not a table of tensors")
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        ends = [v["data_offsets"][1] for v in tensors.values()]
        expected = 8 + size + max(ends, default=0)
        actual = path.stat().st_size
        if actual < expected:
            raise ValueError(f"it is cut short: {actual:,} bytes of the {expected:,} its header "
                             "describes (an interrupted download or copy?)")
    except (OSError, ValueError, TypeError, KeyError, IndexError) as e:
        raise AdapterError(field, ref, f"not a readable .safetensors file ({e})") from None
    return tensors


def _identified(path: Path, ref: str, field: str) -> Model:
    """A LoRA or embedding file, checked to be whole, identified by its tensor data's hash."""
    safetensors_header(path, field, ref)
    return Model(ref=ref, path=str(path.resolve()),
                 identity=models.file_hash(path, after_header=True))


def _refuse_pickle(path: Path, field: str, ref: str) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise AdapterError(field, ref, "pickle files can run arbitrary code when loaded, so "
                           "farm never loads them; convert it to .safetensors first (e.g. "
                           "safetensors.torch.save_file)")


def find_lora(ref: str, base: Path, field: str = "loras") -> Model:
    """A LoRA reference -> its file and identity (see the module's search order)."""
    path = Path(ref).expanduser()
    _refuse_pickle(path, field, ref)
    if path.suffix.lower() == ".safetensors" or "/" in ref and not HUB_ID.fullmatch(ref):
        looked = [base / path, path] if not path.is_absolute() else [path]
    else:
        folders = [base / "loras"] + ([Path(os.environ[LORA_DIR_ENV])]
                                      if os.environ.get(LORA_DIR_ENV) else [])
        # each folder, then its subfolders (as AUTOMATIC1111 looks), the first found wins
        looked = [found for folder in folders for found in
                  [folder / f"{ref}.safetensors",
                   *sorted(folder.rglob(f"*/{_glob_quote(ref)}.safetensors"))]]
        pickles = [p for folder in folders for p in folder.glob(f"{_glob_quote(ref)}.*")
                   if p.suffix.lower() in PICKLE_SUFFIXES]
        if not any(p.is_file() for p in looked) and pickles:
            _refuse_pickle(pickles[0], field, ref)
    for candidate in looked:
        if candidate.is_file():
            return _identified(candidate, ref, field)
    match = HUB_ID.fullmatch(ref)
    if match:
        return _hub_lora(ref, match["repo"], match["revision"], field, looked)
    raise AdapterError(field, ref, "no such LoRA; looked at " + ", ".join(
        str(p) for p in looked) + f" (a LoRA is a .safetensors file; set ${LORA_DIR_ENV} for a "
        "shared folder of them, or give a path or a Hugging Face repo id)")


def _glob_quote(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _hub_lora(ref: str, repo: str, revision: str | None, field: str,
              looked: list[Path]) -> Model:
    try:
        folder = hub.fetch(repo, revision, ["*.safetensors"])
    except Exception as e:  # offline and not cached, missing, gated: say which
        raise AdapterError(field, ref, "no such LoRA here (looked at " + ", ".join(
            str(p) for p in looked) + "), nor in the Hugging Face cache or hub "
            f"({type(e).__name__}); if it is a hub repo, download it first: "
            f"huggingface-cli download {repo}") from None
    files = sorted(folder.rglob("*.safetensors"))
    if len(files) != 1:
        raise AdapterError(field, ref, f"the repo holds {len(files)} .safetensors files; "
                           "download the one you mean and give its path")
    return _identified(files[0], ref, field)


# checking that a file fits the checkpoint -------------------------------------------------------

def _config(checkpoint: Model, part: str) -> dict[str, Any] | None:
    file = Path(checkpoint.config or checkpoint.path) / part / "config.json"
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


def check_lora(lora: Model, checkpoint: Model, field: str = "loras") -> None:
    """Refuse a LoRA made for another base model (an SD 1.x LoRA on SDXL, or the reverse),
    or a file that is no LoRA, before anything renders."""
    header = safetensors_header(Path(lora.path), field, lora.ref)
    keys = list(header)
    if not any(re.search(r"lora_(down|A)|lora\.down|lora_unet_|lora_te", k) for k in keys):
        raise AdapterError(field, lora.ref, "has no LoRA weights (keys like lora_unet_..."
                           "lora_down.weight or unet....lora_A.weight): is it a checkpoint?")
    transformer = _config(checkpoint, "transformer")
    unet_keys = [k for k in keys if k.startswith("unet.") or (
        k.startswith("lora_unet_") and not re.search(r"(double|single|joint)_blocks", k))]
    if transformer is None and any(k.startswith("transformer.") for k in keys):
        raise AdapterError(field, lora.ref, f"made for a transformer model (SD3, Flux.1), but "
                           f"checkpoint {checkpoint.ref!r} has a UNet")
    if transformer is not None:
        _check_transformer_lora(lora, checkpoint, header, transformer, unet_keys, field)
    unet = _config(checkpoint, "unet") or {}
    width = unet.get("cross_attention_dim")
    width = width[0] if isinstance(width, list) else width
    for key in keys:  # the cross-attention keys' input is the text encoders' width
        if re.search(r"attn2[._]to_k.*(lora_down|lora_A|lora\.down)", key) and width:
            found = header[key]["shape"][-1]
            if found != width:
                raise AdapterError(field, lora.ref, f"made for another base model: its "
                                   f"cross-attention takes {found}-wide text, checkpoint "
                                   f"{checkpoint.ref!r} gives {width} (an SD 1.x LoRA on SDXL, "
                                   "or the reverse?)")
            break
    second = any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys)
    if second and _config(checkpoint, "text_encoder_2") is None:
        raise AdapterError(field, lora.ref, f"made for SDXL (it has weights for a second text "
                           f"encoder), but checkpoint {checkpoint.ref!r} has one text encoder")


def _check_transformer_lora(lora: Model, checkpoint: Model, header: dict, transformer: dict,
                            unet_keys: list[str], field: str) -> None:
    """A LoRA for an SD3 or Flux.1 checkpoint: diffusers' (PEFT) layout, its attention as wide
    as the checkpoint's transformer's."""
    if unet_keys:
        raise AdapterError(field, lora.ref, f"made for a UNet (Stable Diffusion 1.x/2.x or "
                           f"SDXL), but checkpoint {checkpoint.ref!r} has a transformer")
    flux = transformer.get("_class_name") == "FluxTransformer2DModel"
    kohya = [k for k in header if re.match(r"lora_unet_(double|single)_blocks_", k)]
    keys = [k for k in header if k.startswith("transformer.")] + (kohya if flux else [])
    if not keys:
        raise AdapterError(field, lora.ref, "not in a layout farm tests for this model: "
                           "diffusers' (PEFT) transformer.<module>.lora_A.weight, or on Flux.1 "
                           "kohya's lora_unet_double_blocks_...")
    inner = transformer.get("num_attention_heads", 0) * transformer.get("attention_head_dim", 0)
    for key in keys:
        if re.search(r"attn\.to_q\.lora_A|img_attn_qkv\.lora_down", key) \
                and header[key]["shape"][-1] != inner:
            raise AdapterError(field, lora.ref, f"made for another model: its attention is "
                               f"{header[key]['shape'][-1]} wide, checkpoint "
                               f"{checkpoint.ref!r}'s {inner} (an SD3 LoRA on Flux.1, or the "
                               "reverse?)")


def embedding_vectors(header: dict[str, Any]) -> dict[str, list[int]]:
    """An embedding file's vectors by text encoder: clip_l (SD 1.x, SDXL's first) and clip_g
    (SDXL's second), each [vectors, width]. A1111's files hold `emb_params`, SDXL's `clip_l`
    and `clip_g`, diffusers' one tensor named after its token."""
    if "clip_l" in header or "clip_g" in header:
        return {k: header[k]["shape"] for k in ("clip_l", "clip_g") if k in header}
    if "emb_params" in header:
        return {"clip_l": header["emb_params"]["shape"]}
    if len(header) == 1:
        return {"clip_l": next(iter(header.values()))["shape"]}
    return {}


def check_embedding(embedding: Model, checkpoint: Model, field: str) -> None:
    """Refuse a file that is no embedding, or one whose vectors do not fit the checkpoint's
    text encoders (an SD 1.x embedding on SDXL, or the reverse)."""
    shapes = embedding_vectors(safetensors_header(Path(embedding.path), field, embedding.ref))
    if not shapes:
        raise AdapterError(field, embedding.ref, f"{embedding.path} is not a textual-inversion "
                           "embedding (expected emb_params, clip_l/clip_g, or one tensor)")
    for part, key in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):
        config = _config(checkpoint, part)
        if config is None:
            continue
        shape = shapes.get(key)
        if shape is None or shape[-1] != config.get("hidden_size"):
            have = ", ".join(f"{k} {v[-1]}-wide" for k, v in shapes.items())
            raise AdapterError(field, embedding.ref, f"made for another base model: it has "
                               f"{have}, checkpoint {checkpoint.ref!r} needs {key} "
                               f"{config.get('hidden_size')}-wide (an SD 1.x embedding on "
                               "SDXL, or the reverse?)")


# reading prompts into job fields (the driver) ----------------------------------------------------

@dataclass(frozen=True)
class Reading:
    """What a job's prompt and negative add to it."""

    loras: tuple[Lora, ...]  # from <lora:...> tags
    embeddings: tuple[Model, ...]
    emphasis: str  # "a1111" where A1111's reading changes what CLIP sees, else "none"
    zero_negative: bool = False  # the negative is empty and the checkpoint zeros it (SDXL)
    pad_conds: bool = False  # the a1111 reading pads prompt and negative to one length
    truncated: bool = False  # emphasis none: a text past 75 tokens is cut there


class Reader:
    """Reads prompts for one recipe: tags resolved, embeddings found, emphasis decided; each
    file found, hashed and checked against a checkpoint once."""

    def __init__(self, base: Path):
        self.base = base
        self._loras: dict[str, Model] = {}
        self._checked: set[tuple[str, str]] = set()
        self._readings: dict[tuple, Reading] = {}
        self._tokenizers: dict[Any, Any] = {}
        self._t5_counts: dict[tuple[str, str], int] = {}
        self._t5_present: dict[str, bool] = {}
        self._families: dict[str, models.Family] = {}

    @cached_property
    def embedding_files(self) -> dict[str, Path]:
        """Every embedding's word (lower case, as CLIP reads it) -> its file; the recipe's
        folder wins over the shared one."""
        found: dict[str, Path] = {}
        folders = [self.base / "embeddings"] + ([Path(os.environ[EMBEDDINGS_DIR_ENV])]
                                                if os.environ.get(EMBEDDINGS_DIR_ENV) else [])
        for folder in reversed(folders):
            if folder.is_dir():  # subfolders too, as AUTOMATIC1111 looks (sorted: one winner)
                for file in sorted(folder.rglob("*"), reverse=True):
                    if file.is_file() and file.suffix.lower() in (".safetensors",
                                                                  *PICKLE_SUFFIXES):
                        found[file.stem.lower()] = file
        return found

    @cached_property
    def _embedding_words(self) -> re.Pattern | None:
        if not self.embedding_files:
            return None
        names = sorted(self.embedding_files, key=len, reverse=True)
        return re.compile(r"(?<![^\W\d_])(" + "|".join(map(re.escape, names))
                          + r")(?![^\W\d_])", re.I)

    def lora(self, ref: str, checkpoint: Model, field: str = "loras") -> Model:
        if ref not in self._loras:
            self._loras[ref] = find_lora(ref, self.base, field)
        found = self._loras[ref]
        if (found.identity, checkpoint.identity) not in self._checked:
            check_lora(found, checkpoint, field)
            self._checked.add((found.identity, checkpoint.identity))
        return found

    def loras(self) -> dict[str, Model]:
        """Every LoRA found so far, by reference."""
        return dict(self._loras)

    def read(self, prompt: str, negative: str, checkpoint: Model, mode: str) -> Reading:
        key = (prompt, negative, checkpoint.identity, mode)
        reading = self._readings.get(key)
        if reading is None:
            if len(self._readings) > 100_000:
                self._readings.clear()
            reading = self._readings[key] = self._read(prompt, negative, checkpoint, mode)
        return reading

    def family(self, checkpoint: Model) -> models.Family:
        """The checkpoint's family. A checkpoint whose files are not here to say (a record
        read back elsewhere) counts as the common kind."""
        if checkpoint.identity not in self._families:
            try:
                found = models.family(checkpoint)
            except (OSError, ValueError):
                found = models.Family("StableDiffusionPipeline")
            self._families[checkpoint.identity] = found
        return self._families[checkpoint.identity]

    def _clip_pipeline(self, checkpoint: Model) -> bool:
        """Whether farm encodes this checkpoint's prompts itself where A1111 would (SD 1.x/2.x
        and SDXL: CLIP text encoders); other pipelines (SD3, Flux, ...) get the text as it
        is, and their prompts no emphasis or embeddings."""
        rules = families.rules(self.family(checkpoint))
        return rules is not None and rules.a1111_prompts

    def _read(self, prompt: str, negative: str, checkpoint: Model, mode: str) -> Reading:
        field = "prompt"
        try:
            text, tags = emphasis.loras(prompt)
        except emphasis.EmphasisError as e:
            raise AdapterError(field, prompt, str(e)) from None
        texts = (text, negative)
        affected, problem = False, None
        for t in texts if mode == "a1111" else ():
            used = emphasis.unsupported(t)
            if used:  # never rendered as literal text without a word
                raise AdapterError(field, t, f"farm does not render AUTOMATIC1111's {used}; "
                                   "write it as plain text and set emphasis: none to have the "
                                   "characters encoded as they are")
        if mode == "a1111":
            try:
                affected = not all(emphasis.plain(t) for t in texts)
            except emphasis.EmphasisError as e:
                affected, problem = True, e
            if affected and not self._clip_pipeline(checkpoint):  # read as plain text there
                affected, problem = False, None
            if problem is not None:
                raise AdapterError(field, prompt, str(problem)) from None
        loras = {}
        for name, weight in tags:
            found = self.lora(name, checkpoint, field)
            if found.identity in loras:
                raise AdapterError(field, prompt, f"LoRA {name!r} is tagged twice")
            loras[found.identity] = Lora(found, weight)
        used: dict[str, Model] = {}
        words = self._embedding_words
        for t in texts:
            found = words.findall(t) if words else ()
            if found and not self._clip_pipeline(checkpoint):
                continue
            for word in found:
                file = self.embedding_files[word.lower()]
                _refuse_pickle(file, field, word)
                if word.lower() not in used:
                    model = _identified(file, word.lower(), field)
                    if (model.identity, checkpoint.identity) not in self._checked:
                        check_embedding(model, checkpoint, f"embedding {word!r}")
                        self._checked.add((model.identity, checkpoint.identity))
                    used[word.lower()] = model
        counts = (1, 1)  # chunks of 75 tokens the prompt and the negative fill
        if self._clip_pipeline(checkpoint):
            counts = tuple(self._chunk_count(t, mode == "a1111", used, checkpoint)
                           for t in texts)
        if mode == "a1111":  # a prompt longer than a chunk (its embeddings' vectors counted)
            affected = affected or max(counts) > 1
        return Reading(tuple(loras[k] for k in sorted(loras)),
                       tuple(used[k] for k in sorted(used)), "a1111" if affected else "none",
                       negative == "" and self.family(checkpoint).zero_negative,
                       pad_conds=affected and counts[0] != counts[1],
                       truncated=mode == "none" and max(counts) > 1)

    def _chunk_count(self, text: str, weighted: bool, used: dict[str, Model],
                     checkpoint: Model) -> int:
        """How many chunks of 75 tokens A1111 makes of the text (emphasis.chunked), each
        embedding word taking as many places as its file has vectors."""
        words = self._embedding_words
        found = {w.lower() for w in words.findall(text)} if words else set()
        if len(text.encode()) <= CHUNK_TOKENS and not found and emphasis.BREAK not in text:
            return 1  # a token is at least a byte: surely one chunk, nothing to read
        vectors = {}
        for word in found:
            shapes = embedding_vectors(safetensors_header(Path(used[word].path), "prompt", word))
            vectors[word] = max(math.prod(shape[:-1]) for shape in shapes.values())
        return len(emphasis.chunked(text, weighted, self._tokenizer(checkpoint), vectors))

    def has_t5(self, checkpoint: Model) -> bool:
        """Whether the checkpoint has its T5 tokenizer (SD3 folders may be saved without);
        asked for each job planned, so looked at once per checkpoint."""
        if checkpoint.identity not in self._t5_present:
            rules = families.rules(self.family(checkpoint))
            self._t5_present[checkpoint.identity] = rules is not None and \
                rules.t5_tokens is not None and \
                (Path(checkpoint.config or checkpoint.path) / rules.t5_folder).is_dir()
        return self._t5_present[checkpoint.identity]

    def t5_tokens(self, text: str, checkpoint: Model) -> int:
        """How many tokens the checkpoint's T5 tokenizer makes of the text, its end included
        (what max_sequence_length counts); 0 for a checkpoint saved without its T5 encoder
        (SD3's usual memory saving: the pipeline gives T5's place zeros)."""
        key = (text, checkpoint.identity)
        if key not in self._t5_counts:
            tokenizer = self._tokenizers.get(("t5", checkpoint.identity))
            if tokenizer is None:
                from transformers import T5TokenizerFast
                from transformers.utils import logging

                logging.set_verbosity_error()  # a long prompt is no mistake here: it is counted
                rules = families.rules(self.family(checkpoint))
                folder = Path(checkpoint.config or checkpoint.path) / rules.t5_folder
                tokenizer = self._tokenizers[("t5", checkpoint.identity)] = \
                    T5TokenizerFast.from_pretrained(folder, local_files_only=True) \
                    if self.has_t5(checkpoint) else None
            if len(self._t5_counts) > 100_000:
                self._t5_counts.clear()
            self._t5_counts[key] = len(tokenizer(text).input_ids) if tokenizer else 0
        return self._t5_counts[key]

    def _tokenizer(self, checkpoint: Model):
        """The checkpoint's (first) CLIP tokenizer, loaded once."""
        tokenizer = self._tokenizers.get(checkpoint.identity)
        if tokenizer is None:
            from transformers import CLIPTokenizer
            from transformers.utils import logging

            logging.set_verbosity_error()  # a long prompt is no mistake here: it is counted

            folder = Path(checkpoint.config or checkpoint.path) / "tokenizer"
            tokenizer = self._tokenizers[checkpoint.identity] = CLIPTokenizer.from_pretrained(
                folder, local_files_only=True)
        return tokenizer


# applying LoRAs on a worker ----------------------------------------------------------------------

class Adapters:
    """The LoRAs loaded into one pipeline's UNet and text encoders, unfused (switching back and
    forth gives the same pixels, bit for bit), at most MAX_LORAS_LOADED, the least recently
    used deleted first."""

    def __init__(self) -> None:
        self.loaded: OrderedDict[str, str] = OrderedDict()  # adapter name -> identity
        self.active: tuple[tuple[str, float], ...] | None = None  # (name, weight) set; None: off

    @staticmethod
    def name(lora: Lora) -> str:
        return "farm_" + lora.model.identity[:16]

    def release(self, pipe) -> None:
        """Delete every LoRA loaded into the pipeline (its worker moved to another group)."""
        if self.loaded:
            pipe.delete_adapters(list(self.loaded))
            self.loaded.clear()
        self.active = None

    def apply(self, pipe, loras: tuple[Lora, ...]) -> bool:
        """Make exactly `loras` active; whether a file had to be loaded."""
        if not loras:
            if self.active is not None:
                pipe.disable_lora()
                self.active = None
            return False
        loaded = False
        names = [self.name(lora) for lora in loras]
        for lora, name in zip(loras, names):
            if name in self.loaded:
                self.loaded.move_to_end(name)
                continue
            while len(self.loaded) >= MAX_LORAS_LOADED:
                old = next(n for n in self.loaded if n not in names)
                pipe.delete_adapters(old)
                del self.loaded[old]
            try:
                with models.without_text_model_view(pipe):
                    file = Path(lora.model.path)  # folder and name: diffusers 0.32 offline
                    pipe.load_lora_weights(str(file.parent), weight_name=file.name,
                                           adapter_name=name)
            except Exception:  # a half-loaded adapter would block the name for good
                try:
                    pipe.delete_adapters(name)
                except Exception:
                    pass
                raise
            self.loaded[name] = lora.model.identity
            loaded = True
        wanted = tuple((name, float(lora.weight)) for name, lora in zip(names, loras))
        if loaded or wanted != self.active:  # the same set as the last batch: nothing to do
            if self.active is None:
                pipe.enable_lora()
            pipe.set_adapters(names, [weight for _, weight in wanted])
            self.active = wanted
        return loaded


def joined(recipe_set: tuple[Lora, ...], added: tuple[Lora, ...], where: str
           ) -> tuple[Lora, ...]:
    """A LoRA set with more LoRAs (a prompt's tags), ordered by identity: the order they are
    applied in, so that the same set always gives the same pixels."""
    found = {lora.model.identity: lora for lora in recipe_set}
    for lora in added:
        if lora.model.identity in found:
            raise AdapterError(where, lora.model.ref, "this LoRA file is in the set twice (the "
                               "recipe's loras and the prompt's tags, or two names for one "
                               "file); give it once")
        found[lora.model.identity] = lora
    return tuple(found[k] for k in sorted(found))
