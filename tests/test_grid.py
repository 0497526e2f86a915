"""farm grid: contact sheets laid out by two fields, with labels and a title."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_farm


def sheet_record(path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["farm-grid"])


def test_default_axes_are_the_settings_that_vary(finished_run, tmp_path, capsys):
    assert run_farm("grid", str(finished_run), "--to", str(tmp_path)) == 0
    sheets = sorted(tmp_path.glob("grid-*.png"))
    # cfg across, seed down; one sheet per prompt (cat, dog, owl)
    assert [s.name for s in sheets] == ["grid-cfg-seed-000.png", "grid-cfg-seed-001.png",
                                        "grid-cfg-seed-002.png"]
    record = sheet_record(sheets[0])
    assert (record["x"], record["y"]) == ("cfg", "seed")
    assert record["columns"] == ["5", "7"] and record["rows"] == ["0", "1"]
    assert record["title"]["prompt"] == "a cat at dusk"
    assert record["title"]["checkpoint"] == "tiny" and record["title"]["steps"] == "2"
    assert capsys.readouterr().out.count("2 x 2 cells (cfg by seed)") == 3
    with Image.open(sheets[0]) as image:
        sheet = np.asarray(image.convert("RGB"))
    # every cell is its image, unscaled, after the labels
    (left, top), height = record["origin"], sheet.shape[0]
    assert record["cell"] == 64 and top + 2 * 64 == height
    for r, row in enumerate(record["cells"]):
        for c, path in enumerate(row):
            cell = sheet[top + 64 * r: top + 64 * (r + 1), left + 64 * c: left + 64 * (c + 1)]
            assert (cell == np.asarray(Image.open(finished_run / path).convert("RGB"))).all()
    # labels: ink above the cells and left of them, on a white background
    assert (sheet[:top, left:left + 128] < 128).any() and (sheet[top:, :left] < 128).any()
    assert (sheet[:top, :left] == 255).mean() > 0.5


def test_axes_on_template_values_and_filters(finished_run, tmp_path):
    assert run_farm("grid", str(finished_run), "--to", str(tmp_path), "--x", "values.animal",
                    "--y", "cfg", "--where", "seed=1", "--where", "prompt!=an owl in the rain",
                    "--cell", "32") == 0
    sheet, = tmp_path.glob("grid-*.png")
    assert sheet.name == "grid-values_animal-cfg.png"
    record = sheet_record(sheet)
    assert record["columns"] == ["cat", "dog"] and record["rows"] == ["5", "7"]
    assert record["title"]["seed"] == "1" and "prompt" not in record["title"]
    with Image.open(sheet) as image:
        assert image.height > 2 * 32 and image.width > 2 * 32  # cells shrunk to 32 px


def test_bad_grids_are_refused(finished_run, tmp_path, capsys):
    assert run_farm("grid", str(finished_run), "--x", "colour") == 2
    assert "unknown field 'colour'" in capsys.readouterr().err
    assert run_farm("grid", str(finished_run), "--x", "cfg", "--y", "cfg") == 2
    assert "choose two fields" in capsys.readouterr().err
    assert run_farm("grid", str(finished_run), "--where", "seed=99") == 2
    assert "no finished images match seed=99" in capsys.readouterr().err
    assert not (finished_run / "grids").exists()


def test_a_sheet_too_large_to_draw_is_refused(finished_run, tmp_path, monkeypatch):
    from farm import grid

    monkeypatch.setattr(grid, "MAX_SHEET_PIXELS", 3 * 32 * 32)  # fewer than 2 x 2 small cells
    with pytest.raises(grid.GridError, match="cfg by seed makes 2 x 2 cells"):
        grid.draw(finished_run, tmp_path, "cfg", "seed", grid.Where.parse(["prompt~owl"]))
    assert not list(tmp_path.iterdir())


def test_a_recipe_draws_its_grids_after_rendering(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_farm("render", "runtime=inline", "steps=2", "size=64x64", "seeds=0-1",
                    "cfg=[4,8]", "sampler=[euler,DPM++ 2M Karras]", "scheduler=automatic",
                    "grids=auto", "name=auto") == 0
    assert "Drew 4 contact sheet(s)" in capsys.readouterr().out
    sheets = sorted((tmp_path / "outputs" / "auto" / "grids").glob("*.png"))
    assert len(sheets) == 4  # cfg by sampler, for each of the demo's 2 prompts x 2 seeds
    record = sheet_record(sheets[0])
    assert record["columns"] == ["4", "8"] and record["rows"] == ["euler", "dpmpp_2m"]
    # the schedule changes with the sampler: its label says so
    assert record["labels"]["rows"] == ["sampler: euler, scheduler: normal",
                                        "sampler: dpmpp_2m, scheduler: karras"]


def test_very_large_sheets_are_saved_as_jpeg_with_their_record_beside(finished_run, tmp_path,
                                                                     monkeypatch):
    from farm import grid

    monkeypatch.setattr(grid, "JPEG_ABOVE", 10_000)  # pixels: every sheet here is larger
    sheets = grid.draw(finished_run, tmp_path, "cfg", "seed", grid.Where.parse(["prompt~owl"]))
    assert [s.path.name for s in sheets] == ["grid-cfg-seed.jpg"]
    with Image.open(sheets[0].path) as image:
        assert image.format == "JPEG" and image.size == (sheets[0].width, sheets[0].height)
    record = json.loads((tmp_path / "grid-cfg-seed.json").read_text())
    assert record["columns"] == ["5", "7"] and record["title"]["prompt"] == "an owl in the rain"
