"""Quality checks: each one fails an image made to fail it, passes a clean one, and says what to do."""

import numpy as np
import pytest
from PIL import Image

from cxr_edge.runtime.photo.blur import gaussian_blur
from cxr_edge.runtime.photo.quality import (QualitySpec, check_blur, check_color_cast, check_exposure, check_glare,
                              check_quality, check_resolution, check_tilt, overall_verdict)

BIG_SQUARE = np.array([[100, 100], [1100, 100], [1100, 1100], [100, 1100]], float)


@pytest.fixture(scope="module")
def cxr(shared_data):
    return np.asarray(Image.open(shared_data / "nih_cxr14" / "images" / "00000061_012.png").convert("L"))


def test_clean_film_in_a_good_photo_passes_everything(cxr):
    photo = np.repeat(np.asarray(Image.fromarray(cxr).resize((1200, 1200)))[..., None], 3, axis=-1)
    checks = check_quality(cxr, photo, BIG_SQUARE)
    assert {c.name for c in checks} == {"blur", "glare", "underexposure", "overexposure", "resolution",
                                        "tilt", "color_cast"}
    assert all(c.verdict == "pass" for c in checks), [c for c in checks if c.verdict != "pass"]
    assert overall_verdict(checks) == "pass"


def test_blur(cxr):
    assert check_blur(cxr).verdict == "pass"
    mild = np.clip(gaussian_blur(cxr.astype(np.float32), 1.5), 0, 255).astype(np.uint8)
    strong = np.clip(gaussian_blur(cxr.astype(np.float32), 2.5), 0, 255).astype(np.uint8)
    assert check_blur(mild).verdict in ("warn", "fail")
    res = check_blur(strong)
    assert res.verdict == "fail" and "steady" in res.message and res.score < check_blur(cxr).score


def test_glare_says_where(cxr):
    assert check_glare(cxr).verdict == "pass"
    img = cxr.copy()
    yy, xx = np.mgrid[0:256, 0:256]
    img[(xx - 45) ** 2 + (yy - 128) ** 2 < 40 ** 2] = 255      # a hot spot on the left
    res = check_glare(img)
    assert res.verdict == "fail" and "left" in res.message and "tilt" in res.message
    # thin white text and lines are not glare
    text = cxr.copy()
    text[20:22, 20:200] = 255
    text[30:60, 230:232] = 255
    assert check_glare(text).verdict == "pass"


def test_under_and_over_exposure(cxr):
    under, over = check_exposure(cxr)
    assert under.verdict == over.verdict == "pass"
    dark = (cxr * 0.25).astype(np.uint8)
    res = {c.name: c for c in check_exposure(dark)}
    assert res["underexposure"].verdict == "fail" and "lightbox" in res["underexposure"].message
    washed = (160 + cxr * 0.35).astype(np.uint8)
    res = {c.name: c for c in check_exposure(washed)}
    assert res["overexposure"].verdict == "fail" and "exposure" in res["overexposure"].message


def test_resolution_from_corners_or_size(cxr):
    small_quad = BIG_SQUARE / 6
    res = check_resolution(corners=small_quad)
    assert res.verdict == "fail" and "closer" in res.message
    assert check_resolution(corners=BIG_SQUARE).verdict == "pass"
    thumb = check_resolution(np.zeros((150, 120), np.uint8))
    assert thumb.verdict == "fail" and "full-size" in thumb.message


def test_tilt_from_corners():
    assert check_tilt(BIG_SQUARE).verdict == "pass"
    assert check_tilt(np.array([[300, 100], [900, 100], [1150, 1100], [50, 1100]], float)).verdict == "warn"
    keystone = np.array([[550, 100], [650, 100], [1150, 1100], [50, 1100]], float)
    res = check_tilt(keystone)
    assert res.verdict == "fail" and "parallel" in res.message and res.score > 25


def test_color_cast_names_the_colour(cxr):
    grey = np.repeat(cxr[..., None], 3, axis=-1).astype(np.float64)
    assert check_color_cast(grey.astype(np.uint8)).verdict == "pass"
    warm = np.clip(grey * [1.35, 1.0, 0.6], 0, 255).astype(np.uint8)            # ln(B/G) = -0.51
    res = check_color_cast(warm)
    assert res.verdict == "warn" and "yellow" in res.message and "white light" in res.message
    assert "hide details" not in res.message       # a cast this strong costs the models nothing (photo_cast.py)
    orange = np.clip(grey * [1.6, 1.0, 0.4], 0, 255).astype(np.uint8)           # ln(B/G) = -0.92
    res = check_color_cast(orange)
    assert res.verdict == "fail" and "yellow" in res.message and "hide details" in res.message
    blue = np.clip(grey * [0.85, 1.0, 1.25], 0, 255).astype(np.uint8)
    assert "blue" in check_color_cast(blue).message


def test_overall_verdict_is_the_worst(cxr):
    checks = check_quality((cxr * 0.25).astype(np.uint8))
    assert overall_verdict(checks) == "fail"
    assert overall_verdict([c for c in checks if c.verdict == "pass"]) == "pass"


def test_spec_is_data():
    spec = QualitySpec(blur_warn=0.55)
    assert QualitySpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="valid"):
        QualitySpec.from_dict({"blurr_warn": 0.3})
    with pytest.raises(ValueError, match="must not exceed"):
        QualitySpec(glare_warn=0.5, glare_fail=0.1)
    strict = QualitySpec(min_side_warn=2000, min_side_fail=1500)
    assert check_resolution(corners=BIG_SQUARE, spec=strict).verdict == "fail"


def test_blur_score_is_the_direct_blurs_score(cxr):
    """The blur check filters in the frequency domain; its score must stay the one the direct blurs give
    (fine = blur 0.7 - blur 1.5, coarse = blur 1.5 - blur 3.0, at the 256-px analysis size)."""
    for img in (cxr, np.clip(gaussian_blur(cxr.astype(np.float32), 1.2), 0, 255).astype(np.uint8)):
        a = np.asarray(Image.fromarray(img).resize((256, 256), Image.BOX), np.float32)
        g07, g15, g30 = (gaussian_blur(a, s) for s in (0.7, 1.5, 3.0))
        direct = float(np.abs(g07 - g15).mean() / (np.abs(g15 - g30).mean() + 1e-3))
        assert check_blur(img).score == pytest.approx(direct, rel=0.05)   # edges: up to ~4 %


def test_exposure_percentiles_match_numpy(cxr):
    """The exposure check's percentiles come from a histogram: the same numbers as np.percentile."""
    from cxr_edge.runtime.photo.film import grey_percentiles

    rng = np.random.default_rng(0)
    for a in (cxr, rng.integers(0, 256, (37, 53), dtype=np.uint8), np.full((9, 9), 7, np.uint8)):
        qs = (0.5, 2, 50, 98, 99.5)
        assert np.allclose(grey_percentiles(a, qs), np.percentile(a, qs), atol=1e-9)
