"""farm gallery at scale: writing it, its data file, and the page in a real browser.

    python bench/gallery.py [--images 100000] [--chromium /usr/bin/chromium]

Builds a synthetic run folder (bench/export_scale.py's: a manifest of done rows and an 8x8 PNG
each; here 100 prompts x 2 cfg x N/200 seeds, so that the facets are what a sweep has), then
prints:
  - the baseline: one pass over the finished images as exports read them (catalog.entries);
  - `farm gallery` the first time (thumbnails made) and refreshed (thumbnails kept), in
    seconds, and the size of data.js and of all details/*.js;
  - in headless Chromium (Playwright), opened from disk: seconds until the count shows, a facet
    click until the count changes, and scrolling to the middle of the grid until its
    thumbnails are in the page (skipped without Chromium and Playwright).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from export_scale import started  # bench/ is on the path when a script in it runs

from farm import catalog, gallery


def build(root: Path, count: int) -> None:
    png, db = started(root)
    rows = []
    seeds = max(1, count // 200)
    for seq in range(count):
        prompt, cfg, seed = seq // (2 * seeds), 5.0 + 2 * ((seq // seeds) % 2), seq % seeds
        path = f"images/{seq // 10_000:05d}/{seq:08d}-prompt-{prompt}-{seed}.png"
        if seq % 10_000 == 0:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(png)
        params = {"id": f"{seq:024x}", "checkpoint": "tiny", "checkpoint_identity": "a" * 64,
                  "vae": None, "vae_identity": None, "prompt": f"a cat, study number {prompt}",
                  "negative": "blurry", "seed": seed, "sampler": "euler",
                  "scheduler": "normal", "steps": 20, "cfg": cfg, "width": 8, "height": 8,
                  "clip_skip": 1, "dtype": "auto"}
        rows.append((f"{seq:024x}", seq, path, "done", "f" * 64, json.dumps(params), 1, 0.1,
                     4, seq % 4, f"gpu-{seq % 4}", None, None, 1, 1,
                     f"2026-12-04T10:{(seq * 60 // count):02d}:00+00:00"))
        if len(rows) == 10_000 or seq == count - 1:
            db.executemany("INSERT INTO jobs (id, seq, path, status, pixel_hash, params, "
                           "attempts, seconds, batch_size, position, worker, scheduler, "
                           "provenance, run_id, claimed_run, updated_at) VALUES "
                           "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            rows = []
    db.commit()
    db.close()


def in_browser(index: Path, chromium: str) -> dict[str, float] | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        started = time.perf_counter()
        page.goto(index.as_uri())
        page.wait_for_function("() => document.getElementById('count').textContent !== '0'",
                               timeout=120_000)
        loaded = time.perf_counter() - started
        total = page.text_content("#count")
        started = time.perf_counter()
        page.locator("[data-field='cfg']").first.click()
        page.wait_for_function(
            f"() => document.getElementById('count').textContent !== '{total}'")
        clicked = time.perf_counter() - started
        page.click("#clear")
        started = time.perf_counter()
        page.locator("#grid").evaluate("g => { g.scrollTop = g.scrollHeight / 2; }")
        page.wait_for_function("() => [...document.querySelectorAll('#grid .cell')].some(c => "
                               "c.getBoundingClientRect().top >= 0 && "
                               "c.getBoundingClientRect().top < innerHeight)")
        scrolled = time.perf_counter() - started
        browser.close()
    return {"load_seconds": loaded, "facet_click_seconds": clicked,
            "scroll_seconds": scrolled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="farm-bench-gallery-"))
    try:
        run = root / "run"
        run.mkdir()
        build(run, args.images)
        started = time.perf_counter()
        read = sum(1 for _ in catalog.entries(run))
        baseline = time.perf_counter() - started
        print(f"{read} images; reading them as exports do (baseline): {baseline:.1f} s")
        for label in ("first time", "refreshed"):
            started = time.perf_counter()
            made = gallery.build(run)
            print(f"farm gallery, {label}: {time.perf_counter() - started:.1f} s "
                  f"({made.thumbs_made} thumbnails made; facets: {', '.join(made.fields)})")
        data = (run / "gallery" / "data.js").stat().st_size
        details = sum(f.stat().st_size for f in (run / "gallery" / "details").glob("*.js"))
        print(f"data.js {data / 2**20:.1f} MiB; details/*.js {details / 2**20:.1f} MiB in all "
              f"(loaded {gallery.CHUNK} images at a time)")
        if Path(args.chromium).exists():
            timings = in_browser(run / "gallery" / "index.html", args.chromium)
            if timings:
                print("in headless Chromium: " + ", ".join(f"{k} {v:.2f}"
                                                           for k, v in timings.items()))
        else:
            print(f"no Chromium at {args.chromium}: the page's timings are not measured",
                  file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
