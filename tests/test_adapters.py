"""LoRAs and embeddings: the layouts people share, exact switching, sweeps, tags, identity,
and bad input refused before anything renders."""

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from farm import adapters, models, outputs, tiny
from farm.jobs import Lora
from farm.worker import Device, Worker
from tests.helpers import make_job, manifest_rows, rendered_images, run_farm


def a1111_hash(path) -> str:
    """AUTOMATIC1111's LoRA hash, by hand: sha256 of what follows the safetensors header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory, farm_cache):
    folder = tmp_path_factory.mktemp("loras")
    made = {}
    for checkpoint in ("tiny", "tiny-xl"):
        for layout in ("kohya", "peft"):
            name = f"{checkpoint}-{layout}"
            made[name] = tiny.write_lora(checkpoint, folder / f"{name}.safetensors", layout,
                                         seed=len(made) + 1)
    return made


def pixels(worker, job, tag):
    return rendered_images(worker, [job], tag)[0]


def lora(path, weight=1.0):
    return Lora(adapters.find_lora(str(path), path.parent), weight)


@pytest.mark.parametrize("checkpoint, layout", [("tiny", "kohya"), ("tiny", "peft"),
                                                ("tiny-xl", "kohya"), ("tiny-xl", "peft")])
def test_each_shared_layout_loads_into_unet_and_text_encoders(worker, lora_files, checkpoint,
                                                              layout):
    model = models.resolve(checkpoint)
    plain = pixels(worker, make_job(model), f"{checkpoint}-plain")
    job = make_job(model, loras=(lora(lora_files[f"{checkpoint}-{layout}"]),))
    with_lora = pixels(worker, job, f"{checkpoint}-{layout}")
    assert np.abs(with_lora.astype(int) - plain).max() > 0
    pipe = worker.pipeline(job.loadout)
    name = adapters.Adapters.name(job.loras[0])
    parts = {part for part, names in pipe.get_list_adapters().items() if name in names}
    expected = {"unet", "text_encoder"} | ({"text_encoder_2"} if checkpoint == "tiny-xl" else set())
    assert parts == expected


def test_switching_loras_is_exact_and_weight_zero_is_no_lora(tmp_path, lora_files, tiny):
    worker = Worker(tmp_path, device=Device("cpu", "float32"))
    never = pixels(worker, make_job(tiny), "never")  # before any LoRA was loaded
    a, b = lora(lora_files["tiny-kohya"]), lora(lora_files["tiny-peft"], 0.7)
    first_a = pixels(worker, make_job(tiny, loras=(a,)), "a1")
    first_b = pixels(worker, make_job(tiny, loras=(b,)), "b1")
    both = pixels(worker, make_job(tiny, loras=tuple(sorted(
        (a, b), key=lambda x: x.model.identity))), "ab")
    again_a = pixels(worker, make_job(tiny, loras=(a,)), "a2")
    none = pixels(worker, make_job(tiny), "none")
    zero = pixels(worker, make_job(tiny, loras=(Lora(a.model, 0.0),)), "a0")
    assert np.array_equal(first_a, again_a)
    assert not np.array_equal(first_a, first_b) and not np.array_equal(first_a, both)
    assert np.array_equal(none, never) and np.array_equal(zero, never)


def test_adapters_loaded_are_bounded(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(adapters, "MAX_LORAS_LOADED", 2)
    worker = Worker(tmp_path / "run", device=Device("cpu", "float32"))
    files = [tiny_lora(tmp_path / f"l{i}.safetensors", seed=10 + i) for i in range(3)]
    for i, file in enumerate(files):
        pixels(worker, make_job(tiny, loras=(lora(file),)), f"l{i}")
    pipe = worker.pipeline(make_job(tiny).loadout)
    assert len(pipe.get_list_adapters()["unet"]) == 2


def test_a_worker_that_leaves_a_group_releases_its_loras(tmp_path, lora_files, tiny):
    worker = Worker(tmp_path / "run", device=Device("cpu", "float32"), max_pipelines=2)
    job = make_job(tiny, loras=(lora(lora_files["tiny-kohya"]),))
    pixels(worker, job, "with")
    pipe = worker.pipeline(job.loadout)
    assert pipe.get_list_adapters()
    pixels(worker, make_job(models.resolve("tiny-xl")), "other-group")
    assert worker.pipeline(job.loadout) is pipe  # still loaded, its LoRAs gone
    assert not any(pipe.get_list_adapters().values())
    pixels(worker, job, "back")  # and loaded again when needed


def test_a_shared_lora_folder_is_searched_after_the_recipes(tmp_path, monkeypatch,
                                                            lora_files):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "ink.safetensors").write_bytes(lora_files["tiny-kohya"].read_bytes())
    with pytest.raises(models.ModelError, match="no such LoRA"):
        adapters.find_lora("ink", tmp_path)
    monkeypatch.setenv(adapters.LORA_DIR_ENV, str(shared))
    assert adapters.find_lora("ink", tmp_path).path == str((shared / "ink.safetensors"))
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "ink.safetensors").write_bytes(lora_files["tiny-peft"].read_bytes())
    assert adapters.find_lora("ink", tmp_path).path == str(tmp_path / "loras" / "ink.safetensors")


def tiny_lora(path, seed=1):
    return tiny.write_lora("tiny", path, "kohya", seed=seed)


RECIPE = """\
name: styled
prompt:
  - a fox in snow <lora:ink:0.5>
  - a lighthouse
loras: [[], [{ref: style, weight: [0.5, 1]}]]
size: 64x64
steps: 3
seeds: 0-1
batch_size: 2
"""


@pytest.fixture(scope="module")
def styled(tmp_path_factory, farm_cache):
    root = tmp_path_factory.mktemp("styled")
    tiny.write_lora("tiny", root / "loras" / "ink.safetensors", "kohya", seed=5)
    tiny.write_lora("tiny", root / "loras" / "style.safetensors", "peft", seed=6)
    (root / "styled.yaml").write_text(RECIPE)
    assert run_farm("render", f"recipe={root / 'styled.yaml'}", "runtime=inline",
                    f"outputs={root / 'out'}") == 0
    return root


def records(folder):
    return [r["params"] for r in manifest_rows(folder) if r["status"] == "done"]


def test_a_lora_sweep_and_prompt_tags_render_every_set(styled, capsys):
    folder = styled / "out" / "styled"
    done = records(folder)
    assert len(done) == 3 * 2 * 2
    sets = {(r["prompt"], tuple((adapters.Path(x["ref"]).name, x["weight"]) for x in r["loras"]))
            for r in done}
    assert ("a lighthouse", ()) in sets and ("a lighthouse", (("style", 0.5),)) in sets
    assert ("a fox in snow <lora:ink:0.5>", (("ink", 0.5), ("style", 1.0))) in {
        (p, tuple(sorted(s))) for p, s in sets}
    # the recipe's LoRA sets loop just inside the checkpoint: each set's jobs come together
    in_order = [[x["weight"] for x in r["params"]["loras"] if "style" in x["ref"]]
                for r in manifest_rows(folder)]
    runs = [w for i, w in enumerate(in_order) if i == 0 or w != in_order[i - 1]]
    assert runs == [[], [0.5], [1.0]]
    # the infotext: the prompt as written, a tag for each of the recipe's LoRAs (so that A1111
    # applies them when it is pasted there), A1111's hashes of each LoRA
    foxes = {len(meta["loras"]): (text, meta) for text, meta in (
        outputs.read_metadata(p) for p in folder.glob("images/*/*.png") if "fox" in p.name)}
    text, meta = foxes[1]  # the prompt's tag alone
    assert text.startswith("a fox in snow <lora:ink:0.5>\n")
    ink = a1111_hash(styled / "loras" / "ink.safetensors")[:12]
    assert f'Lora hashes: "ink: {ink}' in text
    text, meta = foxes[2]  # and the recipe's LoRA, as a tag in the infotext only
    assert text.split("\n")[0].replace("<lora:style:1>", "<lora:style:0.5>") == \
        "a fox in snow <lora:ink:0.5> <lora:style:0.5>"
    assert meta["prompt"] == "a fox in snow <lora:ink:0.5>"
    # a second render finds everything done
    capsys.readouterr()
    assert run_farm("render", f"recipe={styled / 'styled.yaml'}", "runtime=inline",
                    f"outputs={styled / 'out'}") == 0
    assert "all 12 images are already done" in capsys.readouterr().out
    # filters, exports and grids know the LoRA sets
    import pyarrow.parquet as pq

    assert run_farm("export", str(folder), "--format", "parquet", "--to",
                    str(styled / "pq"), "--where", "loras~style:0.5") == 0
    table = pq.read_table(next((styled / "pq").glob("*.parquet")))
    assert table.num_rows == 4 and set(table.column("loras").to_pylist()) == {
        "style:0.5", "ink:0.5, style:0.5"}
    assert run_farm("grid", str(folder), "--x", "loras", "--where", "prompt~lighthouse",
                    "--where", "seed=0") == 0


def test_a_tag_renders_as_the_same_lora_in_the_recipe(styled, tmp_path):
    """`<lora:ink:0.5>` in the prompt and `loras: [{ref: ink, weight: 0.5}]` are the same
    LoRA at the same weight: the same pixels (their ids differ: the prompts do)."""
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "ink.safetensors").write_bytes(
        (styled / "loras" / "ink.safetensors").read_bytes())
    (tmp_path / "r.yaml").write_text("prompt: a fox in snow\nloras: [{ref: ink, weight: 0.5}]\n"
                                     "size: 64x64\nsteps: 3\nseeds: 0-1\nbatch_size: 2\n")
    assert run_farm("render", f"recipe={tmp_path / 'r.yaml'}", "runtime=inline",
                    f"outputs={tmp_path / 'out'}") == 0
    ours = {r["seed"]: r for r in records(tmp_path / "out" / "r")}
    theirs = {r["params"]["seed"]: r["pixel_hash"] for r in manifest_rows(styled / "out" / "styled")
              if "<lora:ink" in r["params"]["prompt"] and len(r["params"]["loras"]) == 1}
    mine = {r["params"]["seed"]: r["pixel_hash"] for r in manifest_rows(tmp_path / "out" / "r")}
    assert mine == theirs and len(mine) == 2 and ours[0]["loras"][0]["weight"] == 0.5


def test_an_embedding_word_uses_its_file(tmp_path, tiny, capsys):
    (tmp_path / "embeddings").mkdir()
    generator = torch.Generator().manual_seed(0)
    save_file({"emb_params": torch.randn(2, 32, generator=generator)},
              str(tmp_path / "embeddings" / "BadHands.safetensors"))
    (tmp_path / "r.yaml").write_text("prompt: [a fox with badhands, a fox with bad hands]\n"
                                     "size: 64x64\nsteps: 3\n")
    assert run_farm("render", f"recipe={tmp_path / 'r.yaml'}", "runtime=inline",
                    f"outputs={tmp_path / 'out'}") == 0
    done = {r["prompt"]: r for r in records(tmp_path / "out" / "r")}
    used = done["a fox with badhands"]["embeddings"]
    file = tmp_path / "embeddings" / "BadHands.safetensors"
    expected = a1111_hash(file)
    assert [(e["name"], e["identity"]) for e in used] == [("badhands", expected)]
    assert done["a fox with bad hands"]["embeddings"] == []
    image = next(p for p in (tmp_path / "out" / "r").glob("images/*/*.png") if "badhands" in p.name)
    # A1111's TI hash is the whole file's (a LoRA's skips the header), named as the file is
    whole = hashlib.sha256(file.read_bytes()).hexdigest()
    assert whole != expected
    assert f'TI hashes: "BadHands: {whole[:12]}"' in outputs.read_metadata(image)[0]


def test_an_embedding_that_pushes_a_prompt_past_75_tokens_moves_to_a_second_chunk(
        tmp_path, tiny, capsys):
    """As A1111 does: 70 tokens and an embedding of 10 vectors make two chunks; the
    embedding is encoded there, not cut off with the first chunk's end."""
    prompt = "a " * 70 + "shiny"  # 70 tokens (tiny's tokenizer spells "shiny" in 5), then
    # the embedding's word, which its 10 vectors replace
    hashes = []
    for seed in (0, 1):  # two files of the same name: if their vectors count, images differ
        folder = tmp_path / str(seed)
        (folder / "embeddings").mkdir(parents=True)
        vectors = torch.randn(10, 32, generator=torch.Generator().manual_seed(seed))
        save_file({"emb_params": vectors},
                  str(folder / "embeddings" / "shiny.safetensors"))
        (folder / "r.yaml").write_text(f"prompt: {prompt}\nsize: 64x64\nsteps: 3\n")
        assert run_farm("render", f"recipe={folder / 'r.yaml'}", "runtime=inline",
                        f"outputs={folder / 'out'}") == 0
        row, = manifest_rows(folder / "out" / "r")
        assert row["params"]["emphasis"] == "a1111"  # read in chunks, as A1111 reads it
        hashes.append(row["pixel_hash"])
    assert hashes[0] != hashes[1]


def test_emphasis_enters_the_id_only_where_it_changes_the_prompt(tmp_path, tiny, capsys):
    (tmp_path / "r.yaml").write_text("prompt: [a (red:1.5) fox, a plain fox]\n"
                                     "emphasis: [a1111, none]\nsize: 64x64\nsteps: 3\n")
    assert run_farm("render", f"recipe={tmp_path / 'r.yaml'}", "runtime=inline",
                    f"outputs={tmp_path / 'out'}") == 0
    folder = tmp_path / "out" / "r"
    rows = [(r["params"], r["pixel_hash"]) for r in manifest_rows(folder)]
    # the plain prompt reads the same either way: one job; the weighted one: two, two images
    assert sorted((r["prompt"], r["emphasis"]) for r, _ in rows) == [
        ("a (red:1.5) fox", "a1111"), ("a (red:1.5) fox", "none"), ("a plain fox", "none")]
    weighted = {r["emphasis"]: h for r, h in rows if "red" in r["prompt"]}
    assert weighted["a1111"] != weighted["none"]
    literal = next(p for p in folder.glob("images/*/*.png") if "red" in p.name
                   and outputs.read_metadata(p)[1]["emphasis"] == "none")
    assert "Emphasis: None" in outputs.read_metadata(literal)[0]


@pytest.mark.parametrize("recipe, expected", [
    ("prompt: a fox <lora:missing:0.5>", "'missing': no such LoRA; looked at"),
    ("prompt: a fox <lora:ink:lots>", "the weight 'lots' is not a number"),
    ("prompt: a fox <lora:ink:nan>", "the weight 'nan' is not a number from -10 to 10"),
    ("prompt: a fox <lora:ink:inf>", "the weight 'inf' is not a number from -10 to 10"),
    ("prompt: a fox <lora:ink:1e30>", "the weight '1e30' is not a number from -10 to 10"),
    ("prompt: a (red fox", "prompt: 'a (red fox': an unclosed '('"),
    ("prompt: a fox <lora:ink:0.5>\nloras: [ink]", "this LoRA file is in the set twice"),
    ("prompt: a fox\nloras: [garbage]", "garbage': not a readable .safetensors file"),
    ("prompt: a fox\nloras: [short]", "it is cut short"),
    ("prompt: 'a [cat:dog:0.5]'", "does not render AUTOMATIC1111's prompt editing '[cat:dog:0.5]'"),
    ("prompt: 'a [cat|dog]'", "does not render AUTOMATIC1111's alternation '[cat|dog]'"),
    ("prompt: a cat AND a dog", "does not render AUTOMATIC1111's AND"),
    ("prompt: a cat\nnegative: '[blurry:0.3]'", "prompt editing '[blurry:0.3]'"),
    ("prompt: a fox\nloras: [{ref: ink, weight: strong}]", "loras[0].weight: got 'strong'"),
    ("prompt: a fox\ncheckpoint: tiny-xl\nloras: [ink]", "made for another base model"),
    ("prompt: a fox\nloras: [old]", "pickle files can run arbitrary code"),
    ("prompt: a fox <lora:ink> <lora:ink:0.3>", "tagged twice"),
])
def test_bad_loras_and_prompts_exit_2_before_rendering(tmp_path, farm_cache, capsys, recipe,
                                                       expected):
    tiny.write_lora("tiny", tmp_path / "loras" / "ink.safetensors", "kohya")
    (tmp_path / "loras" / "old.pt").write_bytes(b"not really a pickle")
    (tmp_path / "loras" / "garbage.safetensors").write_bytes(b"\xff" * 64)
    whole = (tmp_path / "loras" / "ink.safetensors").read_bytes()
    (tmp_path / "loras" / "short.safetensors").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "r.yaml").write_text(recipe + "\nsize: 64x64\nsteps: 2\n")
    for command in ("plan", "render"):  # what render refuses, plan refuses
        assert run_farm(command, f"recipe={tmp_path / 'r.yaml'}", "runtime=inline",
                        f"outputs={tmp_path / 'out'}") == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()  # not even a lock or an empty manifest


def test_loras_and_embeddings_are_found_in_subfolders(tmp_path, farm_cache):
    """As AUTOMATIC1111 looks for them: loras/styles/ink.safetensors is <lora:ink>."""
    tiny.write_lora("tiny", tmp_path / "loras" / "styles" / "ink.safetensors", "kohya")
    (tmp_path / "embeddings" / "hands").mkdir(parents=True)
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))},
              str(tmp_path / "embeddings" / "hands" / "badhands.safetensors"))
    (tmp_path / "r.yaml").write_text("prompt: a fox with badhands <lora:ink:0.5>\n"
                                     "size: 64x64\nsteps: 2\n")
    assert run_farm("render", f"recipe={tmp_path / 'r.yaml'}", "runtime=inline",
                    f"outputs={tmp_path / 'out'}") == 0
    done, = records(tmp_path / "out" / "r")
    assert [lora["path"] for lora in done["loras"]] == [
        str(tmp_path / "loras" / "styles" / "ink.safetensors")]
    assert [e["name"] for e in done["embeddings"]] == ["badhands"]


def test_a_lora_from_the_hub_cache_resolves_offline(tmp_path, monkeypatch, lora_files):
    from huggingface_hub import constants

    from tests.helpers import fake_hub_cache

    source = tmp_path / "repo"
    source.mkdir()
    (source / "pytorch_lora_weights.safetensors").write_bytes(lora_files["tiny-peft"].read_bytes())
    cache, _ = fake_hub_cache(tmp_path, source, repo="org/ink-lora")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    found = adapters.find_lora("org/ink-lora", tmp_path)
    assert found.identity == a1111_hash(lora_files["tiny-peft"])
    with pytest.raises(models.ModelError, match="huggingface-cli download org/absent"):
        adapters.find_lora("org/absent", tmp_path)


def test_replay_and_verify_render_a_lora_image_again(styled, tmp_path, monkeypatch, capsys):
    folder = styled / "out" / "styled"
    image = next(p for p in folder.glob("images/*/*.png") if "fox" in p.name)
    monkeypatch.chdir(tmp_path)
    assert run_farm("replay", str(image), "--to", str(tmp_path / "again")) == 0
    assert "the same pixels" in capsys.readouterr().out
    assert run_farm("verify", str(folder), "--sample", "3") == 0


def test_infotext_says_where_prompts_were_padded_or_cut(tmp_path, tiny, capsys):
    """A1111 writes `Pad conds: True` where it padded prompt and negative to one length (farm
    always does); `emphasis: none` cuts a prompt at 75 tokens, which infotext says. Neither
    enters the id: both follow from the prompt."""
    long = "a " * 80  # 80 tokens: two chunks
    (tmp_path / "r.yaml").write_text(
        f"prompt: ['{long}', a (red:1.2) fox]\nnegative: blurry\nemphasis: [a1111, none]\n"
        "size: 64x64\nsteps: 2\n")
    assert run_farm("render", f"recipe={tmp_path / 'r.yaml'}", "runtime=inline",
                    f"outputs={tmp_path / 'out'}") == 0
    found = {}
    for image in (tmp_path / "out" / "r").glob("images/*/*.png"):
        infotext, meta = outputs.read_metadata(image)
        found[(meta["prompt"][:3], meta["emphasis"])] = (infotext, meta)
    infotext, meta = found[("a a", "a1111")]
    assert "Pad conds: True" in infotext and meta["pad_conds"] and not meta["truncated"]
    infotext, meta = found[("a a", "none")]
    assert "Prompt truncated: 75 tokens" in infotext and meta["truncated"]
    assert "Pad conds" not in infotext
    for key in [("a (", "a1111"), ("a (", "none")]:
        infotext, meta = found[key]
        assert "Pad conds" not in infotext and "truncated" not in infotext
    padded = found[("a a", "a1111")][1]
    assert make_job(tiny, prompt=padded["prompt"], pad_conds=True).id == \
        make_job(tiny, prompt=padded["prompt"]).id
