"""Prompt text -> text-encoder output, as AUTOMATIC1111 makes it (its default, "Original").

1. The prompt is read into (text, weight) runs (emphasis.py); `<lora:...>` tags are gone.
2. Each run is tokenized; tokens fill chunks of 75. A BREAK ends a chunk; a chunk that fills up
   within 20 tokens after a comma moves those tokens to the next chunk. A word that names an
   embedding takes as many places as the embedding has vectors.
3. Each chunk is encoded on its own as start + 75 + end tokens (padding after the end token is
   the tokenizer's pad token), the embedding vectors written over their token embeddings.
4. Each token's output is multiplied by its weight, then the whole chunk is scaled back to the
   mean it had before ("Original" emphasis). A1111 takes that mean over the whole batch; farm
   takes it per image, so that an image never depends on what it was rendered with.
5. The chunks are concatenated. An empty negative on SDXL is zeros (A1111's and diffusers'
   reading; job.zero_negative). Prompt and negative are padded to the same number of chunks
   with the encoding of the empty prompt (A1111's "Pad conds"). SDXL: both encoders,
   concatenated per token (the penultimate layer, as diffusers), and the pooled embedding of
   the second encoder's first chunk.

`emphasis: none` with an embedding in the prompt goes the same way without weights, in one
chunk cut at 75 tokens (what diffusers does with text).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from farm import emphasis
from farm.emphasis import CHUNK_TOKENS, Chunk
from farm.jobs import Job, Model

@dataclass(frozen=True)
class Encoder:
    """One text encoder of a pipeline and what A1111 reads from it."""

    tokenizer: object
    model: object
    key: str  # clip_l | clip_g: which vectors of an embedding file it takes
    xl: bool  # SDXL: the penultimate layer, no final norm; SD 1.x: the last (or clip skip)


def encoders(pipe) -> list[Encoder]:
    """The pipeline's CLIP text encoders, in order (an SDXL refiner has only the second)."""
    xl = getattr(pipe, "text_encoder_2", None) is not None
    found = []
    if getattr(pipe, "text_encoder", None) is not None:
        found.append(Encoder(pipe.tokenizer, pipe.text_encoder, "clip_l", xl))
    if xl:
        found.append(Encoder(pipe.tokenizer_2, pipe.text_encoder_2, "clip_g", xl))
    return found


@contextmanager
def _written_over(model, fixes: list[tuple[int, torch.Tensor]]) -> Iterator[None]:
    """The token embeddings at each (position, vectors) replaced by the vectors."""
    if not fixes:
        yield
        return

    def hook(module, inputs, output):
        output = output.clone()
        for position, vectors in fixes:
            output[0, position:position + len(vectors)] = vectors.to(output)
        return output

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class TextEncoding:
    """Encodes the prompts of jobs on one pipeline; embedding files are read once."""

    def __init__(self, pipe, load_embedding: Callable[[Model], dict[str, torch.Tensor]]):
        self.pipe = pipe
        self.encoders = encoders(pipe)
        # whether this pipeline conditions an empty negative with zeros: an SDXL base does,
        # its refiner does not (diffusers' configs), so a job's empty negative is zeros in
        # the base's steps and "" encoded in the refiner's, as diffusers renders them
        self.zeros_empty = bool(getattr(pipe, "config", {}).get("force_zeros_for_empty_prompt",
                                                                False))
        self.load_embedding = load_embedding

    def job(self, job: Job) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                     torch.Tensor | None]:
        """(prompt embeds, negative embeds, pooled, negative pooled) of one image, each with
        a batch dimension of 1; the pooled ones None for SD 1.x."""
        weighted = job.emphasis == "a1111"
        text = emphasis.loras(job.prompt)[0]
        vectors = {e.ref: self.load_embedding(e) for e in job.embeddings}
        cond, pooled = self.text(text, weighted, job.clip_skip, vectors)
        uncond, negative_pooled = self.text(job.negative, weighted, job.clip_skip, vectors)
        if job.zero_negative and self.zeros_empty:  # as A1111 and diffusers do on SDXL
            uncond = torch.zeros_like(uncond)
            negative_pooled = None if negative_pooled is None else \
                torch.zeros_like(negative_pooled)
        if cond.shape[1] != uncond.shape[1]:  # pad the shorter with empty-prompt chunks
            empty, _ = self.text("", weighted, job.clip_skip, {})
            longest = max(cond.shape[1], uncond.shape[1])
            cond, uncond = (torch.cat([z] + [empty] * ((longest - z.shape[1]) // empty.shape[1]),
                                      dim=1) for z in (cond, uncond))
        return cond, uncond, pooled, negative_pooled

    @torch.no_grad()
    def text(self, text: str, weighted: bool, clip_skip: int,
             vectors: dict[str, dict[str, torch.Tensor]]) -> tuple[torch.Tensor,
                                                                   torch.Tensor | None]:
        per_encoder, pooled = [], None
        for encoder in self.encoders:
            found = emphasis.chunked(text, weighted, encoder.tokenizer, {
                word: len(by_key[encoder.key]) for word, by_key in vectors.items()
                if encoder.key in by_key})
            if not weighted:  # diffusers' reading: one chunk, cut at 75 tokens
                found = found[:1]
            outputs = []
            for chunk in found:
                z, chunk_pooled = self._chunk(encoder, chunk, clip_skip, vectors)
                if weighted:
                    z = _emphasised(z, chunk.weights)
                outputs.append(z)
                if pooled is None and chunk_pooled is not None:
                    pooled = chunk_pooled
            per_encoder.append(torch.cat(outputs, dim=1))
        return torch.cat(per_encoder, dim=-1), pooled

    def _chunk(self, encoder: Encoder, chunk: Chunk, clip_skip: int,
               vectors: dict[str, dict[str, torch.Tensor]]):
        tokenizer, model = encoder.tokenizer, encoder.model
        ids = [tokenizer.bos_token_id] + chunk.tokens
        first_end = next((i for i, t in enumerate(ids) if t == tokenizer.eos_token_id
                          and i > 0), len(ids))
        ids = ids[:first_end] + [tokenizer.eos_token_id]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
        ids += [pad] * (CHUNK_TOKENS + 2 - len(ids))
        fixes = [(1 + offset, vectors[word][encoder.key]) for offset, word in chunk.fixes]
        device = model.device
        with _written_over(model, fixes):
            out = model(torch.tensor([ids], device=device), output_hidden_states=True)
        pooled = out[0] if out[0].ndim == 2 else None
        if encoder.xl:
            z = out.hidden_states[-(clip_skip + 1)]
        elif clip_skip > 1:  # transformers 5's flat CLIPTextModel, or 4's .text_model under it
            norm = getattr(model, "final_layer_norm", None) or model.text_model.final_layer_norm
            z = norm(out.hidden_states[-clip_skip])
        else:
            z = out[0]
        return z, pooled


def _emphasised(z: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """A1111's "Original": each token's output times its weight, then the chunk scaled back to
    its mean before. A chunk whose mean is zero (a final layer norm without bias, which only
    random-weight models have) has no mean to restore: it keeps its weights as they are,
    where A1111 would divide by zero."""
    multipliers = torch.tensor([1.0] + weights + [1.0], dtype=z.dtype, device=z.device)
    before = z.mean()
    weighted = z * multipliers.reshape(1, -1, 1)
    after = weighted.mean()
    if abs(float(before)) <= 1e-6 * float(z.abs().mean()) or float(after) == 0:
        return weighted
    return weighted * (before / after)


def load_embedding(embedding: Model) -> dict[str, torch.Tensor]:
    """An embedding file's vectors by text encoder (adapters.embedding_vectors)."""
    from safetensors.torch import load_file

    tensors = load_file(Path(embedding.path))
    if "clip_l" in tensors or "clip_g" in tensors:
        found = {k: tensors[k] for k in ("clip_l", "clip_g") if k in tensors}
    else:
        found = {"clip_l": tensors.get("emb_params", next(iter(tensors.values())))}
    return {k: v.reshape(-1, v.shape[-1]) for k, v in found.items()}
