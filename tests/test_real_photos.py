"""Real phone photos of chest X-rays (``../shared/data/real_photos_dev``) and photographed non-CXR images,
through the bundled pack as a user runs it: no photo refused for missing film edges, every file accounted
for, evaluation of a photo folder with a manifest, and documents still rejected."""

import csv
import io
import json

import pytest
from click.testing import CliRunner

from cxr_edge.cli import main
from cxr_edge.config import BUNDLED_PACK
from cxr_edge.runtime.images import load_image
from cxr_edge.tools.photosim import simulate_print_photo, simulate_screen_photo
from cxr_edge.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def dev(shared_data):
    folder = shared_data / "real_photos_dev"
    if not (folder / "manifest.csv").is_file():
        pytest.skip(f"needs the real photos in {folder} (../shared/data/real_photos_dev)")
    return folder


@pytest.fixture(scope="module")
def bundled():
    if not (BUNDLED_PACK / "manifest.json").is_file():
        pytest.skip("the bundled pack is not in this checkout")
    return Pipeline(BUNDLED_PACK)


@pytest.fixture(scope="module")
def predicted(dev, bundled):
    """`cxr-edge predict DEV --json` with the bundled pack: (exit code, one dict per line)."""
    res = CliRunner().invoke(main, ["predict", str(dev), "--json", "--pack", str(BUNDLED_PACK)],
                             catch_exceptions=False)
    return res.exit_code, [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def test_no_real_photo_is_refused_for_missing_film_edges(dev, predicted):
    code, rows = predicted
    with open(dev / "manifest.csv", newline="") as f:
        listed = {r["file"] for r in csv.DictReader(f)}
    photos = {r["file"].split("/")[-1]: r for r in rows if r["status"] != "skipped"}
    assert code == 0 and set(photos) == listed                              # every photo gets a row ...
    skipped = {r["file"].split("/")[-1]: r["error"]["kind"] for r in rows if r["status"] == "skipped"}
    assert skipped == {"README.md": "not_an_image", "manifest.csv": "not_an_image"}   # ... and every other file
    for name, r in photos.items():
        assert r["status"] in ("ok", "rejected"), (name, r["error"])         # never "no film found"
        assert r["rectify"]["path"] in ("quadrilateral", "cropped", "digital"), name
        if r["rectify"]["path"] == "cropped":
            assert any("No film edges in the photo" in w for w in r["warnings"]), name


def test_the_gate_accepts_the_real_photos_despite_casts_and_overlays(predicted):
    """Teal, violet and warm casts, panel letters, overlay text, a cursor: the gate still sees a chest X-ray."""
    _, rows = predicted
    photos = [r for r in rows if r["status"] != "skipped"]
    assert sum(r["gate"]["accepted"] for r in photos) >= 16, [(r["file"], r["gate"]) for r in photos]


def test_evaluate_a_folder_of_real_photos(dev, tmp_path):
    res = CliRunner().invoke(main, ["evaluate", str(BUNDLED_PACK), "--real-photos", str(dev), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    s = r["summary"]
    assert s["n"] == 17 and s["answered"] == s["n"] - s["rejected"] and s["errors"] == {}
    assert sum(s["paths"].values()) == 17 and set(s["paths"]) <= {"quadrilateral", "cropped", "digital"}
    assert set(r["by_kind"]) == {"film_photo", "screen_photo"}
    assert sum(k["n"] for k in r["by_kind"].values()) == 17
    covid = r["by_label"]["COVID-19"]
    assert covid["labelled"] and covid["n"] == 15 and 0 <= covid["hits"] <= 15 and s["labelled"] == 15
    assert not r["by_label"]["unknown (finding blank)"]["labelled"]       # not a class of the model: no hits
    assert r["unlisted"] == [] and r["missing"] == [] and len(r["photos"]) == 17
    text = CliRunner().invoke(main, ["evaluate", str(BUNDLED_PACK), "--real-photos", str(dev)]).output
    assert "answered" in text and "screen_photo" in text and "cxr4 hits" in text

    from cxr_edge.tools.evaluate_photos import card_section

    card = card_section(r)
    assert card.startswith("## Real photos") and "| screen_photo | 12 |" in card and "| all | 17 |" in card


def test_evaluate_real_photos_bad_input_is_a_clean_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    res = CliRunner().invoke(main, ["evaluate", str(BUNDLED_PACK), "--real-photos", str(tmp_path)])
    assert res.exit_code == 2 and "manifest.csv" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["evaluate", str(BUNDLED_PACK)])
    assert res.exit_code == 2 and "exactly one of --data" in res.output
    (tmp_path / "taken").write_text("a file, not a folder")
    for where in (tmp_path / "taken", tmp_path / "taken" / "report"):
        res = CliRunner().invoke(main, ["evaluate", str(BUNDLED_PACK), "--real-photos", str(tmp_path), "--report",
                                        str(where)])
        assert res.exit_code == 2 and "--report" in res.output and "Traceback" not in res.output, res.output
    for extra in (["--photos", "moderate"], ["--split", "val", "--n-boot", "0"]):
        res = CliRunner().invoke(main, ["evaluate", str(BUNDLED_PACK), "--real-photos", str(tmp_path), *extra,
                                        "--report", str(tmp_path / "never")])
        assert res.exit_code == 2 and "with --data" in res.output and extra[0] in res.output, res.output
        assert not (tmp_path / "never").exists()            # a refused run leaves no report folder behind


def test_evaluate_real_photos_report_shows_every_photo_beside_its_film(dev, tmp_path, monkeypatch):
    """--report: index.html and report.md with a row per photo, and contact sheets with one tile per photo --
    the photo beside the film the models saw, framed green for a hit, red for a miss or an unanswered photo.
    An unreadable photo gets its red tile too, and a report written again into the same folder leaves none of
    the earlier one's sheets behind."""
    import numpy as np
    from PIL import Image

    from cxr_edge.tools import photo_report

    folder = tmp_path / "photos"
    folder.mkdir()
    with open(dev / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        (folder / row["file"]).write_bytes((dev / row["file"]).read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off here")
    rows.append(dict(rows[0], file="broken.jpg"))
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    monkeypatch.setattr(photo_report, "TILES_PER_SHEET", 6)
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["evaluate", str(BUNDLED_PACK), "--real-photos", str(folder), "--report",
                                    str(out), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["report"]["path"] == str(out) and len(r["photos"]) == 18
    sheets = sorted(out.glob("contact_sheet_*.png"))
    assert [s.name for s in sheets] == ["contact_sheet_01.png", "contact_sheet_02.png", "contact_sheet_03.png"]
    assert r["report"]["files"] == [s.name for s in sheets] + ["index.html", "report.md"]
    md, page = (out / "report.md").read_text(), (out / "index.html").read_text()
    assert all(p["file"] in md and p["file"] in page for p in r["photos"])
    assert all(s.name in md and s.name in page for s in sheets)
    outcomes = []
    for i, p in enumerate(r["photos"]):
        sheet = np.asarray(Image.open(sheets[i // 6]).convert("RGB"))
        x0, y0, x1, y1 = photo_report.tile_box(i % 6)
        expected = ("miss" if p["status"] != "ok" or (p["label"] == "COVID-19" and p["cxr4_top"] != "COVID-19")
                    else "hit" if p["label"] == "COVID-19" else "unlabelled")
        assert tuple(sheet[y0 + 1, x0 + 1]) == photo_report.COLOURS[expected], p["file"]
        film = sheet[y0 + 20:y0 + 200, (x0 + x1) // 2 + 20:x1 - 20]         # the right-hand thumbnail
        outcomes.append(expected)
        if p["status"] == "ok":
            assert film.std() > 20, p["file"]          # a film, not the empty placeholder
    broken = r["photos"][-1]
    assert broken["status"] == "error" and outcomes[-1] == "miss"
    assert {"hit", "miss"} <= set(outcomes)            # the dev photos have both

    monkeypatch.setattr(photo_report, "TILES_PER_SHEET", 30)
    res = CliRunner().invoke(main, ["evaluate", str(BUNDLED_PACK), "--real-photos", str(folder), "--report",
                                    str(out)], catch_exceptions=False)
    assert res.exit_code == 0 and f"report: {out}/index.html" in res.output
    assert [s.name for s in out.glob("contact_sheet_*.png")] == ["contact_sheet_01.png"]


@pytest.mark.parametrize("category", ["document_page", "screenshot"])
def test_photographed_documents_are_still_rejected(shared_data, bundled, category):
    """A page or a screenshot photographed on a monitor or on paper, tightly: no film edges, so it takes the
    cropped path -- and the bundled gate must still reject it (benchmarks/photo_noncxr.py measures all)."""
    with open(shared_data / "noncxr" / "manifest.csv", newline="") as f:
        files = [r["file"] for r in csv.DictReader(f) if r["category"] == category][:6]
    for i, name in enumerate(files):
        image = load_image(shared_data / name)
        for sim in (simulate_screen_photo(image, "mild", i, long_side=1024),
                    simulate_print_photo(image, "mild", i, long_side=1024)):
            buf = io.BytesIO()
            sim.to_image().save(buf, "JPEG", quality=90)
            pred = bundled.predict(buf.getvalue(), f"{name} ({sim.background})")
            assert pred.rectify["path"] in ("cropped", "quadrilateral"), name
            assert pred.status == "rejected", (name, sim.background, pred.gate)


@pytest.mark.parametrize("variant", ["desk_frame", "small256", "jpeg_q30", "tilt7"])
def test_real_photos_varied_as_other_photos_vary_are_still_answered(dev, bundled, variant, tmp_path):
    """The same films photographed with their surroundings, sent small, recompressed or tilted (what
    benchmarks/real_photo_variants.py measures on all 17 photos and 13 variations): still answered."""
    import importlib.util

    from cxr_edge.tools.evaluate_photos import evaluate_photos, read_photo_manifest

    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "real_photo_variants.py"
    spec = importlib.util.spec_from_file_location("real_photo_variants", path)
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    rows = [r for r in read_photo_manifest(dev) if r["label"] == "COVID-19"][::3]   # films and screens
    variants.make_variant(variant, dev, rows, tmp_path / variant)
    r = evaluate_photos(bundled, tmp_path / variant)
    assert r["summary"]["n"] == len(rows) >= 4
    assert r["summary"]["answered"] == len(rows), [(p["file"], p["status"], p["gate_score"]) for p in r["photos"]]
    if variant == "desk_frame":    # the film's edges are now in view: the film finder straightens it
        assert r["summary"]["paths"].get("quadrilateral", 0) >= len(rows) - 1, r["summary"]["paths"]


def test_a_photo_that_breaks_the_photo_stage_is_an_error_row_not_a_lost_report(dev, bundled, tmp_path, monkeypatch):
    """Keeping the films for a report must not change what happens to a photo that fails unexpectedly: it gets
    its error row, as in a run without a report, and the other photos are answered."""
    from cxr_edge.tools.evaluate_photos import evaluate_photos

    with open(dev / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:2]
    folder = tmp_path / "two"
    folder.mkdir()
    for row in rows:
        (folder / row["file"]).write_bytes((dev / row["file"]).read_bytes())
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    real_film = Pipeline.film

    def film(self, source, name=None, **kw):       # a bug in the photo stage, for the first photo only
        if str(source).endswith(rows[0]["file"]):
            raise ValueError("a bug in the photo stage")
        return real_film(self, source, name, **kw)

    monkeypatch.setattr(Pipeline, "film", film)
    films = {}
    r = evaluate_photos(bundled, folder, films=films)
    first, second = r["photos"]
    assert first["status"] == "error" and first["error"] == "internal"
    assert second["status"] == "ok" and set(films) == {rows[1]["file"]}
