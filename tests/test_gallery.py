"""farm gallery: a static folder that opens from disk, checked as files and in a real browser
(headless Chromium driven by Playwright; skipped, saying how to install it, where there is none)."""

import json
import os
import shutil
from pathlib import Path

import pytest

from farm import catalog, gallery
from farm.catalog import Where
from tests.helpers import manifest_rows, run_farm, run_inline

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
RECIPE = f"""\
name: shown
prompt: ["a red fox", "a lighthouse", "{HOSTILE}"]
cfg: [5, 7]
seeds: 0-1
size: 64x64
steps: 2
"""


@pytest.fixture(scope="module")
def shown(tmp_path_factory, farm_cache):
    """A finished run of 12 images (3 prompts, one of them hostile, x 2 cfg x 2 seeds) with its
    gallery, shared by the browser tests (which only read it)."""
    root = tmp_path_factory.mktemp("gallery")
    (root / "shown.yaml").write_text(RECIPE)
    assert run_inline("render", f"recipe={root / 'shown.yaml'}", f"outputs={root / 'outputs'}") == 0
    run = root / "outputs" / "shown"
    assert run_farm("gallery", str(run)) == 0
    return run


def data_of(folder: Path) -> dict:
    text = (folder / "data.js").read_text(encoding="utf-8")
    return json.loads(text.removeprefix("window.FARM_GALLERY = ").rstrip().rstrip(";"))


def test_the_gallery_folder_holds_the_page_its_data_and_thumbnails(shown):
    folder = shown / "gallery"
    data = data_of(folder)
    # emphasis follows the prompt: the hostile one has parentheses, which A1111 reads as weights
    assert [f["name"] for f in data["fields"]] == ["cfg", "emphasis", "seed", "prompt"]
    assert data["constant"]["steps"] == "2" and data["constant"]["size"] == "64x64"
    rows = {r["id"]: r for r in manifest_rows(shown)}
    assert sorted(image[0] for image in data["images"]) == sorted(rows)
    for image_id, seq, path, _ in data["images"]:
        assert (folder / "thumbs" / f"{seq // 10_000:05d}" / f"{image_id}.webp").is_file()
        assert (folder / data["run_folder"] / path).resolve() == \
            (shown / rows[image_id]["path"]).resolve()
    assert (folder / "details" / "00000.js").is_file()
    assert HOSTILE not in (folder / "data.js").read_text()  # `<` is escaped in scripts
    assert "<script>alert" not in (folder / "details" / "00000.js").read_text()


def test_a_refresh_keeps_the_thumbnails_it_has_and_adds_the_new(shown, tmp_path):
    run = tmp_path / "shown"
    shutil.copytree(shown, run)
    thumbs = sorted((run / "gallery" / "thumbs").rglob("*.webp"))
    before = {t: t.stat().st_mtime_ns for t in thumbs}
    again = gallery.build(run)
    assert again.thumbs_made == 0 and again.images == 12
    assert {t: t.stat().st_mtime_ns for t in thumbs} == before
    (run / "gallery" / thumbs[0].relative_to(run / "gallery")).unlink()
    assert gallery.build(run).thumbs_made == 1


def test_the_gallery_takes_filters_and_writes_only_where_it_is_told(shown, tmp_path, capsys):
    target = tmp_path / "elsewhere"
    made = gallery.build(shown, target, Where.parse(["cfg=7"]))
    assert made.images == 6 and "cfg" not in made.fields
    data = data_of(target)
    for _, _, path, _ in data["images"]:  # the images stay in the run folder
        assert (target / data["run_folder"] / path).resolve().is_file()
        assert (target / data["run_folder"]).resolve() == shown.resolve()
    assert run_farm("gallery", str(shown), "--to", str(shown / "images" / "g")) == 2
    assert "never the run folder or its images" in capsys.readouterr().err
    assert run_farm("gallery", str(tmp_path / "nothing")) == 2


def test_gallery_true_in_a_recipe_refreshes_it_after_each_render(tmp_path, capsys):
    recipe = tmp_path / "kept.yaml"
    recipe.write_text("prompt: a red fox\nseeds: 0-1\nsize: 64x64\nsteps: 2\ngallery: true\n")
    assert run_inline("render", f"recipe={recipe}", f"outputs={tmp_path}") == 0
    assert "Gallery: " in capsys.readouterr().out
    assert len(data_of(tmp_path / "kept" / "gallery")["images"]) == 2
    assert run_inline("render", f"recipe={recipe}", "seeds=0-3", f"outputs={tmp_path}") == 0
    assert len(data_of(tmp_path / "kept" / "gallery")["images"]) == 4
    assert run_inline("render", f"recipe={recipe}", "gallery=yes", f"outputs={tmp_path}") == 2


# in a real browser -------------------------------------------------------------------------------

CHROMIUM = next((p for p in (os.environ.get("FARM_CHROMIUM"), "/usr/bin/chromium",
                             "/usr/bin/chromium-headless-shell", shutil.which("chromium"),
                             shutil.which("chromium-headless-shell")) if p and Path(p).exists()),
                None)
INSTALL = ("no browser here: the gallery's browser tests need Chromium and Playwright "
           "(apt-get install chromium; pip install playwright; or FARM_CHROMIUM=PATH)")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip(INSTALL)
    playwright = pytest.importorskip("playwright.sync_api", reason=INSTALL)
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, shown):
    """The gallery opened from disk (file://), with every console error and dialog kept."""
    opened = browser.new_page(viewport={"width": 1280, "height": 900})
    opened.errors, opened.dialogs = [], []
    opened.on("console", lambda m: m.type == "error" and opened.errors.append(m.text))
    opened.on("pageerror", lambda e: opened.errors.append(str(e)))
    opened.on("dialog", lambda d: (opened.dialogs.append(d.message), d.dismiss()))
    opened.goto((shown / "gallery" / "index.html").as_uri())
    opened.wait_for_selector("[data-id]")
    yield opened
    assert opened.errors == [] and opened.dialogs == []
    opened.close()


def facet(page, field: str, value: str):
    return page.locator(f'[data-field="{field}"][data-value="{value}"]')


def test_the_page_counts_and_filters_like_the_manifest(page, shown):
    entries = list(catalog.entries(shown))
    assert page.text_content("#count") == "12"
    assert facet(page, "cfg", "7").locator(".n").text_content() == "6"
    facet(page, "cfg", "7").click()
    assert page.text_content("#count") == "6"
    shown_ids = set(page.locator("#grid [data-id]").evaluate_all("l => l.map(e => e.dataset.id)"))
    assert shown_ids == {e.id for e in entries if e.params["cfg"] == 7}
    facet(page, "seed", "1").click()
    assert page.text_content("#count") == "3"
    assert facet(page, "seed", "0").locator(".n").text_content() == "3"  # of those cfg 7 allows
    facet(page, "cfg", "5").click()  # two values of one field: either
    assert page.text_content("#count") == "6"
    page.click("#clear")
    assert page.text_content("#count") == "12"


def test_the_xy_view_puts_each_image_in_its_cell(page, shown):
    entries = list(catalog.entries(shown))
    page.click("#show-xy")
    page.select_option("#x", label="cfg")
    page.select_option("#y", label="seed")
    facet(page, "prompt", "a red fox").click()
    cells = page.locator("#xyview td").evaluate_all(
        "l => l.map(td => [td.dataset.x, td.dataset.y, td.dataset.count, "
        "(td.querySelector('[data-id]') || {dataset: {}}).dataset.id])")
    expected = {(str(int(e.params["cfg"])), str(e.params["seed"])): e.id for e in entries
                if e.params["prompt"] == "a red fox"}
    assert {(x, y): i for x, y, n, i in cells} == expected
    assert all(n == "1" for _, _, n, _ in cells) and len(cells) == 4


def test_an_images_overlay_shows_its_prompt_seed_and_replay_command(page, shown):
    first = next(e for e in catalog.entries(shown) if e.params["prompt"] == "a lighthouse")
    page.click(f'#grid [data-id="{first.id}"]')
    page.wait_for_function("() => document.getElementById('prompt').textContent !== '…'")
    assert page.text_content("#prompt") == "a lighthouse"
    assert page.text_content('#fields [data-field="seed"]') == str(first.params["seed"])
    assert page.text_content("#replay") == f"farm replay {shown}/{first.path}"
    assert "Seed: " in page.text_content("#infotext")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#overlay", "data-id") != first.id
    page.keyboard.press("Escape")
    assert not page.is_visible("#overlay")


def test_a_hostile_prompt_is_text_and_never_runs(page, shown, tmp_path):
    hostile = next(e for e in catalog.entries(shown) if e.params["prompt"] == HOSTILE)
    assert facet(page, "prompt", HOSTILE).count() == 1
    facet(page, "prompt", HOSTILE).click()
    assert page.text_content("#count") == "4"
    page.click(f'#grid [data-id="{hostile.id}"]')
    page.wait_for_function("() => document.getElementById('prompt').textContent !== '…'")
    assert page.text_content("#prompt") == HOSTILE
    assert page.locator("#overlay script, #overlay img[src=x]").count() == 0
    page.screenshot(path=str(tmp_path / "overlay.png"))
    assert (tmp_path / "overlay.png").stat().st_size > 0


def test_the_health_view_shows_counts_and_throughput(page, shown, tmp_path):
    page.click("#show-health")
    assert page.text_content('#counts [data-count="done"]') == "12"
    assert page.locator("#throughput polyline").count() >= 1
    page.screenshot(path=str(tmp_path / "health.png"))
