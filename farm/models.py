"""Model references -> local files, content hashes, loaded pipelines.

A reference is one of (DESIGN.md): a built-in tiny model, a local diffusers folder, a local
single-file `.safetensors`, or a Hugging Face repo id `org/name[@revision]`. Resolving one
checks it and gives a Model with its identity; loading it gives diffusers objects. Weights
are only ever read from safetensors, and remote code is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from farm import hub, instant, tiny
from farm.hashes import file_hash, folder_hash
from farm.fields import CHECKPOINT, CONTROLNET, VAE
from farm.values import CONFIG_MARK, HUB_ID, PICKLE_SUFFIXES
from farm.jobs import Model



class ModelError(ValueError):
    """A model reference that cannot be used, with what to do about it."""

    def __init__(self, field: str, ref: str, problem: str):
        self.field, self.ref = field, ref
        super().__init__(f"{field}: {ref!r}: {problem}")


def resolve(ref: str, source: str = CHECKPOINT, field: str | None = None, *,
            variant: str | None = None) -> Model:
    """Check a reference and find its files and identity. `source`: what it must be, a
    CHECKPOINT, REFINER (a checkpoint) or VAE (farm/fields.py); `field` names it in errors
    (default: the source). `variant` ("fp16"): a hub pipeline's weights in that variant, where
    it has them all."""
    role = {VAE: "vae", CONTROLNET: "controlnet"}.get(source, "checkpoint")
    field = field or source
    if CONFIG_MARK in ref:
        return _resolve_single_file(ref, field, role)
    if ref in tiny.BUILDERS:
        if tiny.ROLES[ref] != role:
            raise ModelError(field, ref, f"built-in {tiny.ROLES[ref]}, not a {role}; "
                             f"built-in {role}s: "
                             + ", ".join(n for n, r in tiny.ROLES.items() if r == role))
        path = tiny.ensure(ref)
        return Model(ref=ref, path=str(path), identity=folder_hash(path))
    path = Path(ref).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(field, ref, "pickle files can run arbitrary code when loaded, so farm "
                         "never loads them; convert it to .safetensors first (e.g. with "
                         "diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py "
                         "--to_safetensors, or safetensors.torch.save_file)")
    if path.exists() or _looks_like_path(ref):
        return _resolve_local(ref, path, field, role)
    match = HUB_ID.fullmatch(ref)
    if match:
        return _resolve_hub(ref, match["repo"], match["revision"], field, variant)
    raise ModelError(field, ref, "not a model reference: expected "
                     + ", ".join(n for n, r in tiny.ROLES.items() if r == role)
                     + ", a Hugging Face repo id (org/name[@revision]), a local diffusers "
                     "folder or a local .safetensors file")


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or ref.endswith(".safetensors") \
        or os.sep in ref and not HUB_ID.fullmatch(ref)


def _resolve_local(ref: str, path: Path, field: str, role: str) -> Model:
    if not path.exists():
        raise ModelError(field, ref, f"no such file or folder (looked at {path.resolve()})")
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise ModelError(field, ref, "a single-file model must be a .safetensors file")
        raise ModelError(field, ref, "a single .safetensors file needs the diffusers config of "
                         "its architecture, so that it loads offline: write "
                         f"{{path: {ref}, config: REFERENCE}} (e.g. config: "
                         "stable-diffusion-v1-5/stable-diffusion-v1-5 from the Hugging Face "
                         "cache, or a local diffusers folder)")
    marker = "model_index.json" if role == "checkpoint" else "config.json"
    if not (path / marker).exists() and not (role == "vae" and (path / "vae/config.json").exists()):
        raise ModelError(field, ref, f"not a diffusers {role} folder: it has no {marker}")
    if role == "checkpoint":
        check_components(path, field, ref)
    if role == "controlnet":
        check_controlnet_folder(path, field, ref)
    return Model(ref=ref, path=str(path.resolve()), identity=folder_hash(path))


WEIGHTLESS = ("Tokenizer", "Scheduler", "FeatureExtractor", "ImageProcessor")


def check_components(folder: Path, field: str, ref: str) -> None:
    """Every component model_index.json names is there, its weights as safetensors: refused up
    front, naming the component, rather than failing every job at load."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(field, ref, f"model_index.json cannot be read: {e}") from None
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        part = folder / name
        if not part.is_dir():
            raise ModelError(field, ref, f"model_index.json names a {name} ({spec[-1]}), but the "
                             f"folder has no {name}/ (an incomplete download or copy?)")
        if any(word in str(spec[-1]) for word in WEIGHTLESS):
            continue
        if not any(part.glob("*.safetensors")):
            pickles = sorted(p.name for p in part.iterdir() if p.suffix in PICKLE_SUFFIXES)
            raise ModelError(field, ref, f"{name}/ has no .safetensors weights" + (
                f" ({', '.join(pickles)} is a pickle, which can run arbitrary code when loaded, "
                "so farm never loads it; convert it to .safetensors first, e.g. with "
                "safetensors.torch.save_file)" if pickles else ""))


CONTROLNET_CLASSES = ("ControlNetModel", "ControlNetUnionModel")


def check_controlnet_folder(folder: Path, field: str, ref: str) -> None:
    """A diffusers ControlNet folder: its config names a ControlNet, its weights safetensors."""
    try:
        kind = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError) as e:
        raise ModelError(field, ref, f"config.json cannot be read: {e}") from None
    if kind not in CONTROLNET_CLASSES:
        raise ModelError(field, ref, f"its config.json is a {kind}, not a ControlNet "
                         f"({', '.join(CONTROLNET_CLASSES)})")
    if not any(folder.glob("*.safetensors")):
        raise ModelError(field, ref, "it has no .safetensors weights (farm never loads pickles)")


def controlnet_config(controlnet: Model) -> dict:
    return json.loads((Path(controlnet.config or controlnet.path) / "config.json").read_text())


def denoiser_config(checkpoint: Model) -> dict:
    folder = Path(checkpoint.config or checkpoint.path) / "unet"
    return json.loads((folder / "config.json").read_text()) if folder.is_dir() else {}


def controlnet_fits(controlnet: Model, checkpoint: Model) -> str | None:
    """Why a ControlNet cannot steer a checkpoint's UNet (None: it can): its text width and its
    SDXL-ness (added time embeddings) must be the UNet's."""
    mine, theirs = controlnet_config(controlnet), denoiser_config(checkpoint)
    if not theirs:
        return "it has no UNet (farm runs ControlNets on Stable Diffusion 1.x/2.x and SDXL)"
    kinds = {None: "Stable Diffusion 1.x/2.x", "text_time": "SDXL"}
    for key, what in (("addition_embed_type", "family"), ("cross_attention_dim", "text width")):
        if mine.get(key) != theirs.get(key):
            shown = (kinds.get(mine.get(key), mine.get(key)), kinds.get(theirs.get(key),
                                                                        theirs.get(key))) \
                if key == "addition_embed_type" else (mine.get(key), theirs.get(key))
            return f"a ControlNet for another architecture ({what} {shown[0]}; the " \
                   f"checkpoint's is {shown[1]})"
    return None


def control_types(controlnet: Model) -> int | None:
    """How many control types a union ControlNet takes (its control_mode is below); None for
    an ordinary ControlNet."""
    config = controlnet_config(controlnet)
    return config.get("num_control_type", 6) if config.get("_class_name") == \
        "ControlNetUnionModel" else None


def load_controlnet(controlnet: Model, device: str, dtype):
    """A ControlNetModel (or ControlNetUnionModel) from its folder, or a single .safetensors
    file with its config."""
    import diffusers

    kind = getattr(diffusers, controlnet_config(controlnet).get("_class_name",
                                                                "ControlNetModel"))
    if controlnet.config:
        model = kind.from_single_file(controlnet.path, config=controlnet.config,
                                      torch_dtype=dtype, local_files_only=True)
    else:
        model = kind.from_pretrained(controlnet.path, torch_dtype=dtype, use_safetensors=True,
                                     local_files_only=True)
    return model.to(device)


def _resolve_single_file(ref: str, field: str, role: str) -> Model:
    """A single .safetensors file (the checkpoints people share) with its architecture."""
    weights, config_ref = ref.split(CONFIG_MARK, 1)
    path = Path(weights).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES or path.suffix.lower() != ".safetensors":
        raise ModelError(field, ref, "a single-file model must be a .safetensors file")
    if not path.is_file():
        raise ModelError(field, ref, f"no such file (looked at {path.resolve()})")
    config = resolve(config_ref, {"vae": VAE, "controlnet": CONTROLNET}.get(role, CHECKPOINT),
                     f"{field}.config")
    digest = file_hash(path)
    # the file's sha256 leads, so that its first 10 digits are AUTOMATIC1111's "Model hash"
    identity = digest + "+" + hashlib.sha256(config.identity.encode()).hexdigest()[:16]
    return Model(ref=ref, path=str(path.resolve()), identity=identity, config=config.path)


def _resolve_hub(ref: str, repo: str, revision: str | None, field: str,
                 variant: str | None = None) -> Model:
    """A repo from the local Hugging Face cache (or downloaded when online): only the files its
    pipeline loads (hub_patterns), so that a node never fetches a repository's alternatives;
    in `variant` where every weighted component has it, else the default weights."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    def fetch(allow: list[str], ignore: list[str] | None = None) -> Path:
        return hub.fetch(repo, revision, allow, ignore)

    try:
        folder = fetch(["model_index.json", "config.json"])  # what the repo holds
        index = json.loads((folder / "model_index.json").read_text()) \
            if (folder / "model_index.json").exists() else None
        if variant and index is not None:
            try:
                folder = fetch(*hub_patterns(index, variant))
            except LocalEntryNotFoundError:
                pass  # not cached offline: the default weights, if they are
            if has_variant(folder, index, variant):
                return Model(ref=ref, path=str(folder), identity=f"hub:{repo}@{folder.name}",
                             variant=variant)
        folder = fetch(*hub_patterns(index))
        if index is not None and not has_default_weights(folder, index) \
                and has_variant(folder, index, "fp16"):  # fetched for half-precision jobs only
            return Model(ref=ref, path=str(folder), identity=f"hub:{repo}@{folder.name}",
                         variant="fp16")
    except LocalEntryNotFoundError as e:
        raise ModelError(field, ref, hub.missing(repo, revision, e)) from None
    except Exception as e:  # missing repos, gated repos, a broken index: say which
        raise ModelError(field, ref, f"could not fetch it from the Hugging Face hub: {e}") from None
    return Model(ref=ref, path=str(folder), identity=f"hub:{repo}@{folder.name}")


# what diffusers' from_pretrained reads of a one-model repository (a VAE, a ControlNet)
MODEL_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model-*.safetensors")
# weight files a repository may hold besides the ones a pipeline loads by default
VARIANTS = ("fp16", "bf16", "fp32", "non_ema", "ema")
CONFIG_SUFFIXES = ("json", "txt", "model")  # configs, tokenizer vocabularies and merges


def hub_patterns(index: dict | None, variant: str | None = None) -> tuple[list[str], list[str]]:
    """(allow, ignore) patterns for what a diffusers repository's pipeline loads: model_index.json
    and the folders of the components it names (configs, tokenizer files, the default weights,
    or with `variant` that variant's weights instead), never the single-file checkpoints at the
    top or the other weight variants (fp16, EMA, ...). A repository without model_index.json is
    one model (a VAE, a ControlNet): its top-level configs and the weights from_pretrained
    reads (diffusion_pytorch_model.safetensors, or its shards), never the other single files
    such repositories hold beside them (a "promax" ControlNet, a single-file VAE)."""
    ignore = [p for v in VARIANTS if v != variant
              for p in (f"*.{v}.safetensors", f"*.{v}-*.safetensors",
                        f"*.safetensors.index.{v}.json")]
    if variant and index is not None:
        parts = _weighted_parts(index)
        allow = ["model_index.json"] + [f"{part}/*.{suffix}" for part in _parts(index)
                                        for suffix in CONFIG_SUFFIXES]
        allow += [f"{part}/*.{variant}{tail}" for part in parts
                  for tail in (".safetensors", "-*.safetensors")]
        return allow, ignore
    if index is None:
        return [*MODEL_WEIGHTS, *(f"*.{suffix}" for suffix in CONFIG_SUFFIXES)], \
            ignore + ["*/*"]
    allow = ["model_index.json"] + [f"{part}/*.{suffix}" for part in _parts(index)
                                    for suffix in ("safetensors", *CONFIG_SUFFIXES)]
    return allow, ignore


# Components farm never loads (nor fetches): a checkpoint's safety checker replaces every image
# it flags with black pixels, silently (AUTOMATIC1111, ComfyUI and InvokeAI run without it too)
NEVER_LOADED = ("safety_checker",)


def _parts(index: dict) -> list[str]:
    """The components model_index.json names that farm loads."""
    return [name for name, spec in index.items() if not name.startswith("_")
            and isinstance(spec, list) and spec[0] is not None and name not in NEVER_LOADED]


def _left_out(checkpoint: Model) -> dict:
    """from_pretrained's arguments leaving out the components farm never loads, and those
    the folder was saved without (an SD3 without its T5 encoder: `[null, null]`), which
    diffusers wants named."""
    index = json.loads((Path(checkpoint.config or checkpoint.path) / "model_index.json")
                       .read_text())
    found = {name: None for name, spec in index.items() if not name.startswith("_")
             and isinstance(spec, list) and spec[0] is None}
    if "safety_checker" in index:
        found.update(safety_checker=None, requires_safety_checker=False)
    return found


def _weighted_parts(index: dict) -> list[str]:
    """The components with weights (not tokenizers, schedulers, feature extractors)."""
    return [name for name in _parts(index)
            if not any(word in str(index[name][-1]) for word in WEIGHTLESS)]


def has_default_weights(folder: Path, index: dict) -> bool:
    """Whether every weighted component of a snapshot has its default (not variant) weights."""
    def default(file: Path) -> bool:
        return not any(f".{v}." in file.name or f".{v}-" in file.name for v in VARIANTS)

    return all(any(default(f) for f in (folder / part).glob("*.safetensors"))
               for part in _weighted_parts(index))


def has_variant(folder: Path, index: dict, variant: str) -> bool:
    """Whether every weighted component of a snapshot has weights in `variant`."""
    return all(any((folder / part).glob(f"*.{variant}.safetensors"))
               or any((folder / part).glob(f"*.{variant}-*.safetensors"))
               for part in _weighted_parts(index))


@dataclass(frozen=True)
class Family:
    """What kind of pipeline a checkpoint is (what farm renders of it: families.py)."""

    pipeline: str  # diffusers pipeline class, from model_index.json
    # an empty negative prompt conditions with zeros, not with the encoding of "" (SDXL's
    # `force_zeros_for_empty_prompt`, on in SDXL base checkpoints, as A1111 does there)
    zero_negative: bool = False
    # its transformer takes a distilled guidance input (Flux.1-dev; schnell's does not)
    guidance_embeds: bool = False


def family(checkpoint: Model) -> Family:
    """The pipeline family of a resolved checkpoint (its folder, or its config's), read from
    its configs without importing diffusers."""
    index = json.loads((Path(checkpoint.config or checkpoint.path) / "model_index.json")
                       .read_text())
    name = index.get("_class_name", "")
    zeros = bool(index.get("force_zeros_for_empty_prompt",
                           name == "StableDiffusionXLPipeline"))  # diffusers' default there
    transformer = Path(checkpoint.config or checkpoint.path) / "transformer" / "config.json"
    guidance = transformer.is_file() and bool(json.loads(transformer.read_text()).get(
        "guidance_embeds", False))
    return Family(name, zeros, guidance)


def load_pipeline(checkpoint: Model, device: str, dtype):
    """A text-to-image pipeline for a resolved checkpoint, on `device`, without progress bars."""
    import diffusers

    if family(checkpoint).pipeline == instant.PIPELINE:  # farm's measuring pipeline
        return instant.InstantPipeline()
    if checkpoint.config:  # one file: the pipeline class its config folder names reads it
        cls = getattr(diffusers, family(checkpoint).pipeline)
        pipe = cls.from_single_file(checkpoint.path, config=checkpoint.config, torch_dtype=dtype,
                                    local_files_only=True, **_left_out(checkpoint))
    else:
        pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
            checkpoint.path, torch_dtype=dtype, use_safetensors=True, local_files_only=True,
            **_left_out(checkpoint),
            **({"variant": checkpoint.variant} if checkpoint.variant else {}))
    pipe.set_progress_bar_config(disable=True)
    for name in ("text_encoder", "text_encoder_2"):
        _expose_text_model(getattr(pipe, name, None))
    pipe = pipe.to(device)
    if device.startswith("cuda") and getattr(pipe, "unet", None) is not None:
        import torch  # channels-last convolutions: faster on tensor cores, same precision

        pipe.unet.to(memory_format=torch.channels_last)
    return pipe


REFINER_SHARES = ("vae", "text_encoder_2")  # what an SDXL refiner may share with its base


def load_refiner(refiner: Model, device: str, dtype, base: Model, base_pipe):
    """An SDXL refiner's img2img pipeline on `device`, taking the base pipeline's VAE and
    second text encoder where its own are the same weights (as SDXL's published refiner's
    are), so that they are in memory once."""
    import diffusers

    cls = diffusers.StableDiffusionXLImg2ImgPipeline
    if refiner.config:
        pipe = cls.from_single_file(refiner.path, config=refiner.config, torch_dtype=dtype,
                                    local_files_only=True)
    else:
        shared = {}
        for name in REFINER_SHARES:
            mine, theirs = Path(refiner.path) / name, Path(base.config or base.path) / name
            if not base.config and mine.is_dir() and theirs.is_dir() \
                    and folder_hash(mine) == folder_hash(theirs) \
                    and getattr(base_pipe, name, None) is not None:
                shared[name] = getattr(base_pipe, name)
        pipe = cls.from_pretrained(refiner.path, torch_dtype=dtype, use_safetensors=True,
                                   local_files_only=True, **shared,
                                   **({"variant": refiner.variant} if refiner.variant else {}))
    pipe.set_progress_bar_config(disable=True)
    _expose_text_model(getattr(pipe, "text_encoder_2", None))
    return pipe.to(device)


def _expose_text_model(encoder) -> None:
    """transformers 5 flattened CLIPTextModel (no `.text_model`), but diffusers' SD pipelines
    still reach `text_encoder.text_model.final_layer_norm` for clip skip: give it a view (not a
    registered submodule, so nothing is counted or moved twice; holding the encoder weakly, so
    that an evicted pipeline is freed at once, not when the cycle collector runs)."""
    if encoder is not None and not hasattr(encoder, "text_model") \
            and hasattr(encoder, "final_layer_norm"):
        object.__setattr__(encoder, "text_model", _TextModelView(encoder))


class _TextModelView:
    def __init__(self, encoder) -> None:
        self._encoder = weakref.ref(encoder)

    def __getattr__(self, name: str):
        return getattr(self._encoder(), name)


@contextmanager
def without_text_model_view(pipe) -> Iterator[None]:
    """The view out of the way while LoRAs load: diffusers reads a `text_model` attribute as
    transformers 4's layout and would look for LoRA layers under it."""
    views = {}
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        if encoder is not None and isinstance(encoder.__dict__.get("text_model"),
                                              _TextModelView):
            views[name] = encoder.__dict__.pop("text_model")
    try:
        yield
    finally:
        for name, view in views.items():
            object.__setattr__(getattr(pipe, name), "text_model", view)


def vae_weights(vae: Model) -> str:
    """What a VAE computes, whichever way it was given: a checkpoint folder's vae/ and that
    folder given as the VAE are the same weights, though their identities (part of existing
    job ids, so never changed) differ."""
    folder = Path(vae.path)
    if vae.config or vae.identity.startswith("hub:") or not folder.is_dir():
        return vae.identity
    return folder_hash(folder if (folder / "config.json").exists() else folder / "vae")


def load_vae(vae: Model, device: str, dtype):
    """An AutoencoderKL from a VAE folder, or from the vae/ part of a checkpoint folder."""
    from diffusers import AutoencoderKL

    folder = Path(vae.config or vae.path)
    subfolder = "vae" if not (folder / "config.json").exists() else None
    if vae.config:
        model = AutoencoderKL.from_single_file(vae.path, config=str(folder), subfolder=subfolder,
                                               torch_dtype=dtype, local_files_only=True)
    else:
        model = AutoencoderKL.from_pretrained(folder, subfolder=subfolder, torch_dtype=dtype,
                                              use_safetensors=True, local_files_only=True)
    return model.to(device)
