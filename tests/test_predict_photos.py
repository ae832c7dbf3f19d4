"""Phone photos through ``cxr-edge predict``: film found and straightened, quality warnings, no-film errors,
digital images kept on the fast path, heatmap files."""

import json

import numpy as np
import pytest
from PIL import Image
from test_evaluate import cli  # noqa: F401 (fixture)

from cxr_edge.runtime.images import load_image
from cxr_edge.tools.photosim import simulate_photo
from cxr_edge.runtime.pipeline import GREY_SEARCH_MIN_SIDE, POOR_PHOTO, Pipeline

CXR = "nih_cxr14/images/00000061_012.png"


def _diag(corners):
    c = np.asarray(corners)
    return float(np.linalg.norm(c[2] - c[0]))


@pytest.fixture(scope="module")
def photos(shared_data, tmp_path_factory):
    """JPEG files: a clean photo of a real CXR (+ its true corners), a glare photo, a colour photo with no
    film, the same film photographed in grey, and a 12-MP photo."""
    root = tmp_path_factory.mktemp("photos")
    film = load_image(shared_data / CXR)
    out = {}
    clean = simulate_photo(film, "mild", 0, effects=("perspective", "rotation"), background="lightbox", long_side=1024)
    clean.to_image().save(root / "clean.jpg", quality=92)
    out["clean"], out["clean_corners"] = root / "clean.jpg", clean.corners
    glare = simulate_photo(film, "severe", 1, effects={"glare": 1.0, "perspective": 1.0, "rotation": 1.0},
                           background="desk", long_side=1024)
    glare.to_image().save(root / "glare.jpg", quality=92)
    out["glare"] = root / "glare.jpg"
    rng = np.random.default_rng(0)
    coffee = load_image(shared_data / "noncxr/images/skimage_coffee.png", mode="RGB").resize((768, 1024))
    arr = np.asarray(coffee, np.float32) * [1.05, 1.0, 0.85] + rng.normal(0, 3, (1024, 768, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / "no_film.jpg", quality=92)
    out["no_film"] = root / "no_film.jpg"
    clean.to_image().convert("L").save(root / "grey.jpg", quality=92)
    out["grey"] = root / "grey.jpg"
    big = simulate_photo(film, "mild", 2, effects=("perspective", "rotation"), background="lightbox", long_side=1344)
    big.to_image().resize((3024, 4032), Image.BICUBIC).save(root / "12mp.jpg", quality=90)
    out["12mp"], out["12mp_corners"] = root / "12mp.jpg", big.corners * 3.0
    return out


@pytest.fixture(scope="module")
def pipe(tiny_pack):
    return Pipeline(tiny_pack)


def _run(cli, *args):
    result = cli("predict", *[str(a) for a in args], "--json")
    return result, [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_a_photo_of_a_film_goes_end_to_end(cli, tiny_pack, photos):
    result, (d,) = _run(cli, photos["clean"], "--pack", tiny_pack)
    assert result.exit_code == 0 and d["status"] == "ok" and d["cxr4"] and d["nih14"]
    r = d["rectify"]
    assert r["photo"] and r["found"] and not r["passthrough"]
    err = np.linalg.norm(np.array(r["corners"]) - photos["clean_corners"], axis=1)
    assert err.max() < 0.01 * _diag(photos["clean_corners"]), err       # within 1 % of the film's diagonal
    assert d["quality"]["verdict"] == "pass" and d["warnings"] == []
    assert {c["name"] for c in d["quality"]["checks"]} >= {"blur", "glare", "resolution", "tilt", "color_cast"}
    assert {"decode", "rectify", "quality", "finish", "gate", "cxr4", "nih14"} <= set(d["timings_ms"])
    assert r["path"] == "quadrilateral" and not r["moire"]["found"]
    checks = {c["name"]: c["verdict"] for c in d["quality"]["checks"]}
    assert checks["framing"] == "pass" and checks["moire"] == "pass"


def test_a_photo_without_film_edges_is_taken_as_cropped_not_refused(cli, tiny_pack, photos, shared_data):
    """No four-sided film in view: the photo is used as cropped to the film, the gate decides, and a warning
    says what happened and what to do."""
    result, preds = _run(cli, photos["no_film"], shared_data / CXR, "--pack", tiny_pack, "--all-models")
    assert result.exit_code == 0 and [p["status"] for p in preds] == ["ok", "ok"]
    r = preds[0]["rectify"]
    assert r["path"] == "cropped" and not r["found"] and r["photo"] and r["reason"]
    # the coffee picture's own black letterbox bars (about 170 px at the top and bottom) are trimmed off
    x0, y0, x1, y1 = r["box"]
    assert (x0, x1) == (0, 768) and 160 <= y0 <= 180 and 844 <= y1 <= 864, r["box"]
    assert r["corners"] == [[x0, y0], [x1, y0], [x1, y1], [x0, y1]] and r["size"] == [768, y1 - y0]
    framing = next(c for c in preds[0]["quality"]["checks"] if c["name"] == "framing")
    assert framing["verdict"] == "warn" and framing["message"] in preds[0]["warnings"]
    assert "No film edges" in framing["message"] and "whole film" in framing["message"]
    assert "tilt" not in {c["name"] for c in preds[0]["quality"]["checks"]}     # no corners: no tilt to judge
    human = cli("predict", photos["no_film"], "--pack", tiny_pack, "--all-models")
    assert "warning: No film edges in the photo" in human.output and "ERROR" not in human.output


def test_glare_gives_actionable_warnings(pipe, photos):
    pred = pipe.predict(photos["glare"])
    assert pred.status == "ok" and pred.results.get("cxr4") is not None                  # a failed check still predicts ...
    glare = next(c for c in pred.quality if c.name == "glare")
    assert glare.verdict == "fail"
    assert pred.warnings[0] == POOR_PHOTO and glare.message in pred.warnings   # ... flagged, with what to do
    assert "tilt the phone" in glare.message


def test_poor_photos_can_be_skipped(tiny_pack, photos):
    pred = Pipeline(tiny_pack, on_poor_photo="skip").predict(photos["glare"])
    assert pred.status == "error" and pred.error["kind"] == "poor_photo" and pred.results.get("cxr4") is None
    assert pred.to_dict()["quality"]["verdict"] == "fail"


def test_digital_images_skip_the_photo_path(pipe, shared_data, monkeypatch):
    import cxr_edge.runtime.photo.rectify

    def no_search(*a, **k):
        raise AssertionError("a small digital image must not be searched for a film")

    monkeypatch.setattr(cxr_edge.runtime.photo.rectify, "find_film", no_search)
    grey = pipe.predict(shared_data / CXR)
    as_rgb = pipe.predict(load_image(shared_data / CXR, mode="RGB"))     # grey pixels stored as RGB
    for pred in (grey, as_rgb):
        assert pred.status == "ok" and pred.quality is None and "quality" not in pred.timings_ms
        assert pred.rectify == {"path": "digital", "photo": False, "passthrough": True, "searched": False}
    assert grey.results["cxr4"].probabilities == as_rgb.results["cxr4"].probabilities
    assert max(Image.open(shared_data / CXR).size) < GREY_SEARCH_MIN_SIDE


def test_a_large_digital_image_passes_through_untouched(pipe, shared_data, tmp_path):
    big = tmp_path / "big.png"
    load_image(shared_data / CXR).resize((1024, 1024)).save(big)
    pred = pipe.predict(big)
    assert pred.rectify == {"path": "digital", "photo": False, "passthrough": True, "searched": True}
    assert pred.quality is None


def test_a_grey_photo_with_the_film_inside_is_straightened(pipe, photos):
    pred = pipe.predict(photos["grey"])
    assert pred.rectify["found"] and pred.rectify["photo"]
    assert "color_cast" not in {c.name for c in pred.quality}             # no colour to judge


def test_no_rectify_uses_the_photo_as_it_is(cli, tiny_pack, photos):
    _, (d,) = _run(cli, photos["clean"], "--pack", tiny_pack, "--no-rectify")
    assert d["status"] == "ok" and d["rectify"] is None and d["quality"] is None


def test_a_12_megapixel_photo_decodes_small_and_reports_photo_pixels(pipe, photos):
    pred = pipe.predict(photos["12mp"])
    r = pred.rectify
    assert r["photo_size"] == [3024, 4032] and max(r["searched_at"]) <= 2016    # JPEG draft: reduced decode
    truth = photos["12mp_corners"]
    err = np.linalg.norm(np.array(r["corners"]) - truth, axis=1)
    assert err.max() < 0.01 * _diag(truth), err
    resolution = next(c for c in pred.quality if c.name == "resolution")
    short = min(np.linalg.norm(truth[1] - truth[0]), np.linalg.norm(truth[3] - truth[0]))
    assert resolution.score == pytest.approx(short, rel=0.03)             # the photo's pixels, not the decode's


def test_heatmap_files_are_listed_in_the_json(cli, tiny_pack, photos, shared_data, tmp_path):
    maps = tmp_path / "maps"
    result, preds = _run(cli, photos["clean"], shared_data / CXR, "--pack", tiny_pack, "--heatmap", maps)
    assert result.exit_code == 0
    for d in preds:
        assert d["heatmaps"] and d["cxr4"]["top"] in d["heatmaps"]
        for path in d["heatmaps"].values():
            assert Image.open(path).mode == "RGB"
    film = preds[0]["rectify"]["size"]
    assert Image.open(preds[0]["heatmaps"][preds[0]["cxr4"]["top"]]).size == tuple(film)   # drawn over the film
    assert len(list(maps.iterdir())) == sum(len(d["heatmaps"]) for d in preds)
    human = cli("predict", shared_data / CXR, "--pack", tiny_pack, "--heatmap", maps, "--force")
    assert f"heatmap {preds[1]['cxr4']['top']}: {maps}" in human.output


def test_the_app_film_is_not_rectified_twice(pipe, photos, monkeypatch):
    import cxr_edge.runtime.photo.rectify

    film = pipe.predict(photos["clean"], heatmaps=True).film
    monkeypatch.setattr(cxr_edge.runtime.photo.rectify, "find_film", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    pred = pipe.predict(film, rectify=False)
    assert pred.status == "ok" and pred.rectify is None


def test_dicom_is_never_searched_for_a_film(tmp_path):
    from cxr_edge.runtime.pipeline import _peek

    dicom = b"\0" * 128 + b"DICM" + b"\0" * 64
    (tmp_path / "scan.dcm").write_bytes(dicom)
    assert _peek(dicom) == (False, None) and _peek(tmp_path / "scan.dcm") == (False, None)
    assert _peek(b"not an image") == (True, None)      # unknown: decoded in colour and judged by its pixels


def test_quality_thresholds_come_from_the_pack(tiny_pack, photos, tmp_path):
    from cxr_edge.errors import PackError
    from cxr_edge.runtime.pack import load_pack
    from cxr_edge.tools.pack_writer import write_pack

    models = {s: (m.content, m.metadata) for s, m in load_pack(tiny_pack).models.items()}
    strict = write_pack(tmp_path / "strict", models, extra={"quality_spec": {"tilt_warn_deg": 0.01}})
    pred = Pipeline(strict).predict(photos["clean"])
    tilt = next(c for c in pred.quality if c.name == "tilt")
    assert tilt.verdict == "warn" and tilt.message in pred.warnings          # a clean photo, a stricter pack
    broken = write_pack(tmp_path / "broken", models, extra={"quality_spec": {"tilt_warn_deg": 40.0}})
    with pytest.raises(PackError, match="quality_spec is invalid"):
        Pipeline(broken)


def test_a_folder_run_reports_every_file_it_skipped(cli, tiny_pack, shared_data, tmp_path):
    folder = tmp_path / "phone"
    folder.mkdir()
    cxr = load_image(shared_data / CXR)
    cxr.save(folder / "IMG_0001.jfif", format="JPEG")                     # what a browser download is called
    cxr.save(folder / "IMG_0002", format="JPEG")                          # no suffix at all
    (folder / "notes.txt").write_text("ward 3\n")
    result, preds = _run(cli, folder, "--pack", tiny_pack)
    assert result.exit_code == 0
    assert [(p["file"].split("/")[-1], p["status"]) for p in preds] == [
        ("IMG_0001.jfif", "ok"), ("IMG_0002", "ok"), ("notes.txt", "skipped")]
    assert preds[2]["error"] == {"kind": "not_an_image", "message": f"{folder / 'notes.txt'}: skipped: not an image (text)"}
    assert set(preds[2]) == set(preds[0]) - {"heatmaps"}                  # the same keys as an image's result
    assert "1 file(s) in the folders were skipped (not an image)" in result.output
    human = cli("predict", folder, "--pack", tiny_pack)
    row = next(line for line in human.output.splitlines() if "notes.txt" in line)
    assert "skipped" in row and "not an image (text)" in row


@pytest.fixture(scope="module")
def bundled():
    from cxr_edge.config import BUNDLED_PACK

    if not (BUNDLED_PACK / "manifest.json").is_file():
        pytest.skip("the bundled pack is not in this checkout")
    return Pipeline(BUNDLED_PACK)


def test_a_tight_monitor_photo_is_answered_with_a_moire_warning(bundled, shared_data, tmp_path):
    """A digital film shown on a monitor, photographed with its pixel grid visible, a violet cast, cropped
    tightly (no film edge, no bezel): answered by the real pack, with the moiré and framing warnings."""
    from cxr_edge.tools.photosim import simulate_screen_photo

    sim = simulate_screen_photo(load_image(shared_data / CXR), "mild", 4, period=5.0, tint="violet",
                                crop=(-0.02, -0.03, -0.02, -0.01), long_side=1024)
    path = tmp_path / "monitor.jpg"
    sim.to_image().save(path, quality=90)
    pred = bundled.predict(path)
    assert pred.status == "ok" and pred.gate.accepted and pred.results.get("cxr4") is not None
    assert pred.rectify["path"] == "cropped" and pred.rectify["moire"]["found"]
    checks = {c.name: c for c in pred.quality}
    assert checks["moire"].verdict == "warn" and "Photo of a monitor" in checks["moire"].message
    assert checks["moire"].message in pred.warnings and checks["framing"].message in pred.warnings
    assert checks["color_cast"].verdict != "pass"                          # the violet cast is named
