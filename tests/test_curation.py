"""Curating a run: farm score (columns keyed by pixels and scorer, resumable), the columns in
every export, status and report.json, filters on them, --top, farm dedup and --unique."""

import json
import random
import shutil
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from farm import catalog, curation, scorers
from farm.catalog import Where
from farm.manifest import Manifest
from farm.schedule import Runtime
from tests.helpers import manifest_rows, run_farm, run_inline

TINY = "aesthetic:tiny,clip:tiny,nsfw:tiny,phash"
RECIPE = """\
name: curated
prompt: [a red fox, a lighthouse on a cliff]
seeds: 0-3
size: 64x64
steps: 2
"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, farm_cache):
    """A finished run of 8 images, never scored: tests copy it before changing it."""
    root = tmp_path_factory.mktemp("curated")
    (root / "curated.yaml").write_text(RECIPE)
    assert run_inline("render", f"recipe={root / 'curated.yaml'}",
                      f"outputs={root / 'outputs'}") == 0
    return root / "outputs" / "curated"


@pytest.fixture
def run(rendered, tmp_path):
    shutil.copytree(rendered, tmp_path / "curated")
    return tmp_path / "curated"


def score(run, scorers_given=TINY, **settings):
    return curation.score(run, scorers_given.split(","), Runtime(kind="inline", **settings))


def score_rows(run) -> list[tuple]:
    with Manifest(run / "manifest.sqlite", readonly=True) as manifest:
        return manifest.db.execute("SELECT pixel_hash, scorer, identity, subject, value "
                                   "FROM scores ORDER BY pixel_hash, scorer").fetchall()


def test_farm_score_fills_every_column_and_a_second_run_does_nothing(run, capsys):
    assert run_inline("score", str(run), "--with", TINY) == 0
    assert "Scored 8 images" in capsys.readouterr().out
    entries = list(catalog.entries(run))
    assert len(entries) == 8
    for entry in entries:
        assert set(entry.scores) == {"aesthetic", "clip_score", "nsfw", "nsfw_score", "phash"}
        assert 1 < entry.scores["aesthetic"] < 10 and -1 <= entry.scores["clip_score"] <= 1
        assert isinstance(entry.scores["nsfw"], bool) and len(entry.scores["phash"]) == 16
    before = score_rows(run)
    assert len(before) == 8 * 4
    again = score(run)
    assert (again.scored, again.already) == (0, 8)
    assert score_rows(run) == before


def test_a_new_scorer_or_another_model_scores_again_and_the_latest_is_the_column(run, tmp_path):
    from safetensors.torch import load_file, save_file

    assert score(run, "aesthetic:tiny").scored == 8
    assert score(run, "aesthetic:tiny,phash").scored == 8  # phash is new: every image again
    other = tmp_path / "other-aesthetic"
    shutil.copytree(scorers.resolve("aesthetic:tiny").clip, other)
    mlp = load_file(str(other / "aesthetic.safetensors"))
    mlp["layers.4.bias"] += 2.0  # every score 2 higher
    save_file(mlp, str(other / "aesthetic.safetensors"))
    first = {e.id: e.scores["aesthetic"] for e in catalog.entries(run)}
    assert score(run, f"aesthetic:{other}").scored == 8
    latest = {e.id: e.scores["aesthetic"] for e in catalog.entries(run)}
    assert latest == pytest.approx({k: v + 2.0 for k, v in first.items()}, abs=1e-4)
    with Manifest(run / "manifest.sqlite", readonly=True) as manifest:
        used = {(u["scorer"], u["model"], u["images"]) for u in manifest.scorers()}
    assert used == {("aesthetic", "tiny", 8), ("aesthetic", str(other), 8), ("phash", None, 8)}


def test_scores_belong_to_pixels_not_to_the_job(run):
    """A job rendered again (its image deleted, then resumed) gets the same pixels, and keeps
    its scores: nothing is scored twice."""
    assert score(run, "phash").scored == 8
    victim = manifest_rows(run)[0]
    (run / victim["path"]).unlink()
    recipe = run.parent / "curated.yaml"
    recipe.write_text(RECIPE)
    assert run_inline("render", f"recipe={recipe}", f"outputs={run.parent}") == 0
    assert (run / victim["path"]).is_file()
    assert score(run, "phash").scored == 0


def test_a_killed_scoring_run_resumes_where_it_stopped(run, monkeypatch):
    """Killed after two batches were recorded (the third never is): scoring again scores only
    what is left."""
    recorded = []
    original = Manifest.record_scores

    def killed_at_the_third_batch(self, scores):
        recorded.append(1)
        if len(recorded) == 3:
            raise KeyboardInterrupt
        original(self, scores)

    monkeypatch.setattr(Manifest, "record_scores", killed_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        curation.score(run, ["phash"], Runtime(kind="inline", queue_depth=1), batch=2)
    assert len(score_rows(run)) == 4  # two batches of two
    monkeypatch.setattr(Manifest, "record_scores", original)
    resumed = score(run, "phash")
    assert (resumed.scored, resumed.already) == (4, 4)


def test_every_export_format_has_the_score_columns(run, tmp_path):
    score(run)
    assert run_farm("dedup", str(run)) == 0
    expected = {e.id: e for e in catalog.entries(run)}
    columns = ("aesthetic", "clip_score", "nsfw", "nsfw_score", "phash", "dup_group")
    for name in ("imagefolder", "parquet", "hub", "webdataset"):
        assert run_farm("export", str(run), "--format", name, "--to", str(tmp_path / name)) == 0
    tables = {"imagefolder": pq.read_table(tmp_path / "imagefolder" / "metadata.parquet"),
              "parquet": pq.read_table(next((tmp_path / "parquet").glob("*.parquet"))),
              "hub": pq.read_table(next((tmp_path / "hub" / "data").glob("*.parquet")))}
    rows = {name: table.to_pylist() for name, table in tables.items()}
    with tarfile.open(next((tmp_path / "webdataset").glob("*.tar"))) as tar:
        rows["webdataset"] = [json.load(tar.extractfile(m)) for m in tar.getmembers()
                              if m.name.endswith(".json")]
    for name, found in rows.items():
        assert len(found) == 8, name
        for row in found:
            entry = expected[row["id"]]
            assert {c: row[c] for c in columns} == {**entry.scores,
                                                    "dup_group": entry.dup_group}, name
    assert str(tables["hub"].schema.field("nsfw").type) == "bool"
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "## Scores" in card and "`aesthetic` (aesthetic): model `tiny`" in card
    assert "dup_group" in card


def test_filters_on_scores_and_the_best_of_each_prompt(run, tmp_path):
    score(run)
    entries = list(catalog.entries(run))
    median = sorted(e.scores["aesthetic"] for e in entries)[4]
    high = list(catalog.entries(run, Where.parse([f"aesthetic>={median}"])))
    assert {e.id for e in high} == {e.id for e in entries if e.scores["aesthetic"] >= median}
    flagged = [e.id for e in catalog.entries(run, Where.parse(["nsfw=true"]))]
    assert flagged == [e.id for e in entries if e.scores["nsfw"]]
    best = {}
    for e in entries:
        if e.params["prompt"] not in best or e.scores["aesthetic"] > best[e.params["prompt"]][0]:
            best[e.params["prompt"]] = (e.scores["aesthetic"], e.id)
    picked = list(catalog.entries(run, Where.parse([], top="aesthetic:1", per="prompt")))
    assert sorted(e.id for e in picked) == sorted(i for _, i in best.values())
    half = list(catalog.entries(run, Where.parse([], top="aesthetic:50%")))
    assert sorted(e.scores["aesthetic"] for e in half) == \
        sorted(e.scores["aesthetic"] for e in entries)[4:]
    assert run_farm("export", str(run), "--format", "imagefolder", "--to", str(tmp_path / "x"),
                    "--top", "aesthetic:1", "--per", "prompt") == 0
    exported = pq.read_table(tmp_path / "x" / "metadata.parquet").column("id").to_pylist()
    assert sorted(exported) == sorted(i for _, i in best.values())


def test_a_filter_on_a_column_the_run_lacks_is_refused_and_nothing_is_written(run, tmp_path,
                                                                              capsys):
    target = tmp_path / "export"
    assert run_farm("export", str(run), "--format", "parquet", "--to", str(target),
                    "--where", "aesthetic>=5") == 2
    error = capsys.readouterr().err
    assert "has no aesthetic column" in error and f"farm score {run} --with aesthetic" in error
    assert not target.exists()
    assert run_farm("export", str(run), "--format", "parquet", "--to", str(target),
                    "--unique") == 2
    assert f"run farm dedup {run} first" in capsys.readouterr().err
    assert run_farm("grid", str(run), "--where", "clip_score<0.2", "--to",
                    str(tmp_path / "grids")) == 2
    assert not (tmp_path / "grids").exists()
    for bad in (["--top", "aesthetic"], ["--top", "prompt:3"], ["--per", "prompt"],
                ["--top", "aesthetic:0"]):
        assert run_farm("export", str(run), "--format", "parquet", "--to", str(target),
                        *bad) == 2, bad
    assert not target.exists()


@pytest.mark.parametrize("given, problem", [
    ("beauty", "unknown scorer 'beauty'"),
    ("aesthetic:weights.pth", "pickle files can run arbitrary code"),
    ("clip:NSFW", "not a CLIP model"),
])
def test_bad_scorers_exit_2_and_write_nothing(run, capsys, given, problem):
    before = score_rows(run)
    given = given.replace("NSFW", str(scorers.resolve("nsfw:tiny").path))
    assert run_inline("score", str(run), "--with", given) == 2
    assert problem in capsys.readouterr().err
    assert score_rows(run) == before


def test_score_in_a_recipe_scores_each_image_on_its_worker(tmp_path, capsys):
    recipe = tmp_path / "scored.yaml"
    recipe.write_text(RECIPE.replace("curated", "scored") + f"score: [{TINY}]\n")
    assert run_inline("render", f"recipe={recipe}", f"outputs={tmp_path}") == 0
    run = tmp_path / "scored"
    rows = score_rows(run)
    assert len(rows) == 8 * 4
    again = score(run)  # what the worker recorded is what farm score would: nothing to do
    assert (again.scored, again.already) == (0, 8)
    fresh = tmp_path / "fresh"
    shutil.copytree(run, fresh)
    with Manifest(fresh / "manifest.sqlite") as manifest:
        manifest.db.execute("DELETE FROM scores")
        manifest.db.commit()
    score(fresh)
    assert _close(score_rows(fresh), rows)
    report = json.loads((run / "report.json").read_text())
    assert report["scores"]["aesthetic"]["count"] == 8
    assert run_farm("status", str(run)) == 0
    assert "aesthetic" in capsys.readouterr().out.split("Scores")[1]


def _close(left, right) -> bool:
    """The same rows, numbers within float32 rounding (a batch of another size)."""
    if [r[:4] for r in left] != [r[:4] for r in right]:
        return False
    for a, b in zip(left, right):
        a, b = json.loads(a[4]), json.loads(b[4])
        if a.keys() != b.keys() or any(a[k] != pytest.approx(b[k], abs=1e-4) for k in a):
            return False
    return True


def test_a_bad_score_key_stops_the_render_before_anything_is_written(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(RECIPE + "score: [aesthetic, beauty]\n")
    assert run_inline("render", f"recipe={recipe}", f"outputs={tmp_path / 'out'}") == 2
    assert "score" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_status_json_and_report_show_the_distribution(run, capsys):
    score(run, "aesthetic:tiny,nsfw:tiny")
    assert run_farm("status", str(run), "--json") == 0
    found = json.loads(capsys.readouterr().out)["scores"]
    values = sorted(e.scores["aesthetic"] for e in catalog.entries(run))
    assert found["aesthetic"]["min"] == pytest.approx(values[0], abs=1e-4)
    assert found["aesthetic"]["max"] == pytest.approx(values[-1], abs=1e-4)
    assert found["aesthetic"]["median"] == pytest.approx(np.median(values), abs=1e-4)
    assert found["nsfw"]["flagged"] == sum(e.scores["nsfw"] for e in catalog.entries(run))
    assert json.loads((run / "report.json").read_text())["scores"] == found


def test_the_safety_checker_of_a_checkpoint_is_a_score_never_black_pixels(tmp_path, tiny):
    """A checker that flags everything, as SD 1.5 ships one: farm's images keep their pixels,
    and `farm score --with nsfw:CHECKPOINT/safety_checker` records the flag."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    from farm import tiny as builtins

    checker = StableDiffusionSafetyChecker.from_pretrained(builtins.ensure("tiny-nsfw"))
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-10.0)
    base = StableDiffusionPipeline.from_pretrained(tiny.path)
    from transformers import CLIPImageProcessor

    pipe = StableDiffusionPipeline(**{**base.components, "safety_checker": checker,
                                      "feature_extractor": CLIPImageProcessor(
                                          size=32, crop_size=32)}, requires_safety_checker=True)
    pipe.save_pretrained(tmp_path / "sd15-like", safe_serialization=True)
    recipe = tmp_path / "flagged.yaml"
    recipe.write_text(f"checkpoint: {tmp_path / 'sd15-like'}\nprompt: a fox\nsize: 64x64\n"
                      "steps: 2\nseeds: 0-1\n")
    assert run_inline("render", f"recipe={recipe}", f"outputs={tmp_path}") == 0
    run = tmp_path / "flagged"
    for row in manifest_rows(run):
        assert np.asarray(Image.open(run / row["path"])).std() > 0
    assert score(run, f"nsfw:{tmp_path / 'sd15-like' / 'safety_checker'}").scored == 2
    assert [e.scores["nsfw"] for e in catalog.entries(run)] == [True, True]


# near-duplicates ---------------------------------------------------------------------------------

def brute_force(pixel_hashes, phashes, distance):
    """Every pair compared: the partition farm dedup must find without comparing them all."""
    parent = list(range(len(phashes)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(phashes)):
        for j in range(i):
            if pixel_hashes[i] == pixel_hashes[j] or bin(phashes[i] ^ phashes[j]).count("1") \
                    <= distance:
                parent[find(i)] = find(j)
    return partition([find(i) for i in range(len(phashes))])


def partition(roots) -> set[frozenset[int]]:
    groups = {}
    for i, root in enumerate(roots):
        groups.setdefault(root, set()).add(i)
    return {frozenset(g) for g in groups.values()}


@pytest.mark.parametrize("distance", [0, 2, 4, 7])
def test_grouping_finds_what_comparing_every_pair_finds(distance):
    rng = random.Random(distance)
    hashes = [rng.getrandbits(64) for _ in range(300)]
    for i in range(150):  # near copies, some chained, at 0 to 9 bits
        value = hashes[rng.randrange(len(hashes))]
        for bit in rng.sample(range(64), rng.randrange(10)):
            value ^= 1 << bit
        hashes.append(value)
    pixels = [str(i) for i in range(len(hashes))]
    pixels[5] = pixels[7]  # the same pixels: one group whatever their phash
    found = partition(curation.groups(pixels, hashes, distance))
    assert found == brute_force(pixels, hashes, distance)
    assert any(5 in g and 7 in g for g in found)


def test_farm_dedup_records_groups_and_unique_keeps_the_first_of_each(run, tmp_path, capsys):
    assert run_farm("dedup", str(run), "--max-distance", "6") == 0
    said = capsys.readouterr().out
    entries = list(catalog.entries(run))
    found = partition([e.dup_group for e in entries])
    hashes = [int(e.scores["phash"], 16) for e in entries]
    assert found == brute_force([e.pixel_hash for e in entries], hashes, 6)
    assert f"{len([g for g in found if len(g) > 1])} groups of near-duplicates" in said
    for group in found:  # a group is named by its first image's file number
        assert {entries[i].dup_group for i in group} == {min(entries[i].seq for i in group)}
    assert run_farm("export", str(run), "--format", "parquet", "--to", str(tmp_path / "u"),
                    "--unique") == 0
    table = pq.read_table(next((tmp_path / "u").glob("*.parquet")))
    assert sorted(table.column("seq").to_pylist()) == sorted(
        min(entries[i].seq for i in g) for g in found)
    assert run_farm("dedup", str(run), "--max-distance", "99") == 2


def test_unique_refuses_images_rendered_after_the_last_dedup(run, capsys):
    assert run_farm("dedup", str(run)) == 0
    with Manifest(run / "manifest.sqlite") as manifest:
        manifest.db.execute("DELETE FROM duplicates WHERE id IN (SELECT id FROM duplicates "
                            "LIMIT 2)")
        manifest.db.commit()
    with pytest.raises(catalog.CatalogError, match="2 of the selected images were rendered "
                       "after the last farm dedup"):
        list(catalog.entries(run, Where(unique=True)))
