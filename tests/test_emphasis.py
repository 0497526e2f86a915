"""A1111's reading of prompts: emphasis, BREAK, 75-token chunks, embeddings.

The expected encodings are worked out here by hand from A1111's method, on the tiny text
encoder (token ids from its byte vocabulary, weights, chunk boundaries, mean restoration),
never taken from farm's own output.
"""

import re
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from farm import emphasis, tiny
from farm.encode import TextEncoding, load_embedding
from farm.jobs import Model
from tests.helpers import make_job

R, S = 1.1, 1 / 1.1


@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", R), (" word", 1.0)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", R)]),
    ("a ((house:1.3)) [on] (hill:0.5), (((sky)))",
     [("a ", 1.0), ("house", 1.3 * R), (" ", 1.0), ("on", S), (" ", 1.0), ("hill", 0.5),
      (", ", 1.0), ("sky", R * R * R)]),
    ("[[x]] y", [("x", S * S), (" y", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1), ("b", 1.0)]),
    ("(word:-1) more", [("word", -1.0), (" more", 1.0)]),  # a weight, not a BREAK
    ("(fox:-1)BREAK b", [("fox", -1.0), ("BREAK", -1), ("b", 1.0)]),
    ("smile :) (x:2)", [("smile :) ", 1.0), ("x", 2.0)]),
])
def test_emphasis_reads_as_a1111(text, expected):
    found = emphasis.parse(text)
    assert [t for t, _ in found] == [t for t, _ in expected]
    assert [w for _, w in found] == pytest.approx([w for _, w in expected], abs=1e-12)


@pytest.mark.parametrize("text, problem", [
    ("a (red fox", "unclosed '('"),
    ("a [red fox", "unclosed '['"),
    ("a (red:1.2.3) fox", "'1.2.3' is not a number"),
])
def test_unreadable_emphasis_is_refused(text, problem):
    with pytest.raises(emphasis.EmphasisError, match=re.escape(problem)):
        emphasis.parse(text)


def test_lora_tags_are_read_and_removed():
    text, found = emphasis.loras("a fox <lora:ink:0.8>, snow <lora:style>")
    assert text == "a fox , snow " and found == [("ink", 0.8), ("style", 1.0)]
    for bad, problem in [("<lora:ink:lots>", "not a number"), ("<lora::1>", "names no LoRA"),
                         ("<lora:ink:1:0.5>", "one weight")]:
        with pytest.raises(emphasis.EmphasisError, match=problem):
            emphasis.loras(bad)


# the encodings, by hand ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd(farm_cache):
    """The tiny SD 1.x tokenizer and text encoder, its final layer norm given a bias as real
    CLIP has (random weights have none, and a zero mean leaves nothing to restore)."""
    from transformers import CLIPTextModel

    from farm.tiny import _tokenizer

    folder = tiny.ensure("tiny")
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    with torch.no_grad():
        final_norm(encoder).bias.copy_(torch.linspace(-0.5, 1.0, 32))
    return SimpleNamespace(tokenizer=_tokenizer(), text_encoder=encoder)


def final_norm(encoder):
    """CLIP's final layer norm: on the model (transformers 5) or its .text_model (4.x)."""
    return getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm


def ids(sd, *tokens: str, end: bool = True) -> list[int]:
    """[start] + the tokens + [end], padded to 77 with the end token (SD 1.x's pad)."""
    vocab = sd.tokenizer.get_vocab()
    start, stop = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    found = [start] + [vocab[t] for t in tokens] + [stop]
    return found + [stop] * (77 - len(found))


def last(sd, token_ids: list[int], clip_skip: int = 1) -> torch.Tensor:
    with torch.no_grad():
        out = sd.text_encoder(torch.tensor([token_ids]), output_hidden_states=True)
        if clip_skip == 1:
            return out.last_hidden_state
        return final_norm(sd.text_encoder)(out.hidden_states[-clip_skip])


def encoded(sd, text: str, weighted: bool = True, clip_skip: int = 1, vectors=None):
    return TextEncoding(sd, load_embedding).text(text, weighted, clip_skip, vectors or {})[0]


def test_weights_multiply_each_token_then_the_mean_is_restored(sd):
    z = last(sd, ids(sd, "a</w>", "b</w>", "c</w>", "d</w>"))
    weights = torch.ones(77)
    weights[2], weights[3], weights[4] = 1.5, R * R, S
    weighted = z * weights.reshape(1, 77, 1)
    expected = weighted * (z.mean() / weighted.mean())
    found = encoded(sd, "a (b:1.5) ((c)) [d]")
    assert found.shape == (1, 77, 32)
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(found, z, atol=1e-3)  # the weights did something
    # emphasis none: the text as diffusers reads it, brackets and all
    # (CLIP splits letters, each digit and each run of other characters into words)
    plain = ids(sd, *(f"{c}</w>" for c in "a(b:1.5)"))
    torch.testing.assert_close(encoded(sd, "a (b:1.5)", weighted=False), last(sd, plain),
                               rtol=0, atol=0)


def test_long_prompts_are_encoded_in_chunks_of_75(sd):
    found = encoded(sd, " ".join(["a"] * 80))
    first = last(sd, ids(sd, *["a</w>"] * 75))
    second = last(sd, ids(sd, *["a</w>"] * 5))
    assert found.shape == (1, 154, 32)
    torch.testing.assert_close(found, torch.cat([first, second], dim=1), rtol=0, atol=1e-6)
    # emphasis none: cut at 75 tokens, as diffusers does
    assert encoded(sd, " ".join(["a"] * 80), weighted=False).shape == (1, 77, 32)


def test_a_full_chunk_moves_the_words_after_its_last_comma_on(sd):
    found = encoded(sd, " ".join(["a"] * 70) + ", " + " ".join(["b"] * 10))
    first = last(sd, ids(sd, *["a</w>"] * 70, ",</w>"))
    second = last(sd, ids(sd, *["b</w>"] * 10))
    torch.testing.assert_close(found, torch.cat([first, second], dim=1), rtol=0, atol=1e-6)


def test_break_starts_a_new_chunk(sd):
    found = encoded(sd, "a BREAK b")
    expected = torch.cat([last(sd, ids(sd, "a</w>")), last(sd, ids(sd, "b</w>"))], dim=1)
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("text, found", [
    ("a [cat:dog:0.5]", "prompt editing"), ("a [cat:0.5]", "prompt editing"),
    ("a [cat::10]", "prompt editing"), ("a [cat|dog|owl]", "alternation"),
    ("a cat AND a dog", "AND"), ("a [blur] (sharp:1.2)", None), (r"a \[cat:0.5\]", None),
    ("ANDROID", None), ("a [x:y]", None),
])
def test_per_step_syntax_is_found_so_it_is_never_rendered_as_text(text, found):
    used = emphasis.unsupported(text)
    assert (used is None) if found is None else found in used


def test_a_word_weighted_minus_one_is_encoded_not_dropped(sd):
    """(word:-1) is the word at weight -1 (AUTOMATIC1111 breaks only on the word BREAK at its
    marker weight): one chunk, the word in it, never a new chunk without it."""
    tokens = [sd.tokenizer.get_vocab()["b</w>"]]
    chunks = emphasis.chunks([(tokens, -1.0), ([7], 1.0)], None, {}, 0)
    assert len(chunks) == 1 and chunks[0].tokens[:len(tokens) + 1] == tokens + [7]
    assert chunks[0].weights[:len(tokens)] == [-1.0] * len(tokens)
    assert len(emphasis.chunks([([5], 1.0), ([], None), ([6], 1.0)], None, {}, 0)) == 2
    assert not torch.equal(encoded(sd, "a (b:-1)"), encoded(sd, "a"))


def test_clip_skip_takes_an_earlier_layer_through_the_final_norm(sd):
    torch.testing.assert_close(encoded(sd, "a b", clip_skip=2),
                               last(sd, ids(sd, "a</w>", "b</w>"), clip_skip=2), rtol=0, atol=1e-6)


def test_the_negative_is_padded_to_the_prompts_chunks_with_the_empty_prompt(sd, tiny):
    job = make_job(tiny, prompt=" ".join(["a"] * 80), negative="c", emphasis="a1111")
    cond, uncond, pooled, _ = TextEncoding(sd, load_embedding).job(job)
    assert cond.shape == uncond.shape == (1, 154, 32) and pooled is None
    expected = torch.cat([last(sd, ids(sd, "c</w>")), last(sd, ids(sd))], dim=1)
    torch.testing.assert_close(uncond, expected, rtol=0, atol=1e-6)


def test_an_embedding_takes_its_vectors_places(sd, tmp_path):
    """An embedding whose two vectors are the token embeddings of "x" and "y</w>" must encode
    exactly as those two tokens."""
    vocab = sd.tokenizer.get_vocab()
    table = sd.text_encoder.get_input_embeddings().weight.detach()
    file = tmp_path / "mything.safetensors"
    save_file({"emb_params": table[[vocab["x"], vocab["y</w>"]]].clone()}, str(file))
    vectors = {"mything": load_embedding(Model("mything", str(file), "e" * 64))}
    found = encoded(sd, "a (mything:1.0) b", vectors=vectors)
    expected = last(sd, ids(sd, "a</w>", "x", "y</w>", "b</w>"))
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-5)


def test_sdxl_concatenates_both_encoders_and_pools_the_second(farm_cache):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny.ensure("tiny-xl"))
    token_ids = torch.tensor([ids(SimpleNamespace(tokenizer=pipe.tokenizer), "a</w>", "b</w>")])
    with torch.no_grad():
        one = pipe.text_encoder(token_ids, output_hidden_states=True).hidden_states[-2]
        two = pipe.text_encoder_2(token_ids, output_hidden_states=True)
    weights = torch.ones(77)
    weights[2] = 1.5
    expected = []
    for z in (one, two.hidden_states[-2]):
        weighted = z * weights.reshape(1, 77, 1)
        expected.append(weighted * (z.mean() / weighted.mean()))
    found, pooled = TextEncoding(pipe, load_embedding).text("a (b:1.5)", True, 1, {})
    assert found.shape == (1, 77, 64)
    torch.testing.assert_close(found, torch.cat(expected, dim=-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, two.text_embeds, rtol=0, atol=1e-6)
    # a plain prompt encodes exactly as diffusers encodes it
    plain, _, plain_pooled, _ = pipe.encode_prompt("a b", negative_prompt="", device="cpu")
    found, pooled = TextEncoding(pipe, load_embedding).text("a b", True, 1, {})
    torch.testing.assert_close(found, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, plain_pooled, rtol=0, atol=1e-6)


def test_sdxl_clip_skip_skips_layers_of_both_encoders_as_diffusers_does(farm_cache):
    """farm's clip_skip N on SDXL is diffusers' clip_skip N - 1 (both text encoders)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny.ensure("tiny-xl"))
    theirs, _, _, _ = pipe.encode_prompt("a b", negative_prompt="", device="cpu", clip_skip=1)
    ours, _ = TextEncoding(pipe, load_embedding).text("a b", True, 2, {})
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    plain, _ = TextEncoding(pipe, load_embedding).text("a b", True, 1, {})
    assert not torch.equal(ours, plain)
