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
    assert {"decode", "rectify", "quality", "levels", "gate", "cxr4", "nih14"} <= set(d["timings_ms"])


def test_no_film_is_an_error_entry_and_the_batch_goes_on(cli, tiny_pack, photos, shared_data):
    result, preds = _run(cli, photos["no_film"], shared_data / CXR, "--pack", tiny_pack)
    assert result.exit_code == 1
    assert preds[0]["status"] == "error" and preds[0]["error"]["kind"] == "no_film"
    assert "no X-ray film found" in preds[0]["error"]["message"] and "four corners" in preds[0]["error"]["message"]
    assert preds[1]["status"] == "ok"
    human = cli("predict", photos["no_film"], "--pack", tiny_pack)
    assert "ERROR" in human.output and "could not be analysed" in human.output


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
        assert pred.rectify == {"photo": False, "passthrough": True, "searched": False}
    assert grey.results["cxr4"].probabilities == as_rgb.results["cxr4"].probabilities
    assert max(Image.open(shared_data / CXR).size) < GREY_SEARCH_MIN_SIDE


def test_a_large_digital_image_passes_through_untouched(pipe, shared_data, tmp_path):
    big = tmp_path / "big.png"
    load_image(shared_data / CXR).resize((1024, 1024)).save(big)
    pred = pipe.predict(big)
    assert pred.rectify == {"photo": False, "passthrough": True, "searched": True} and pred.quality is None


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
