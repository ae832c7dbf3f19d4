"""The phone-photo simulator: deterministic, true corners, and every effect does what it says."""

import math

import numpy as np
import pytest
from PIL import Image

from cxr_edge.tools.photosim import (BACKGROUNDS, FILM_EFFECTS, PHOTO_EFFECTS, resolve_severity, simulate_photo,
                               simulate_rectified)

SIDE = 480  # small photos keep these tests fast; the effects scale with the photo size


@pytest.fixture(scope="module")
def cxr(shared_data):
    return np.asarray(Image.open(shared_data / "nih_cxr14" / "images" / "00000061_012.png").convert("L"))


def smooth_film(size=256):
    """A synthetic film without fine detail: soft blobs, so noise/blur/moiré effects stand out."""
    y, x = np.mgrid[0:size, 0:size] / size
    a = 90 + 60 * np.sin(3 * x) * np.cos(2 * y) + 40 * np.exp(-((x - 0.4) ** 2 + (y - 0.5) ** 2) * 8)
    return np.clip(a, 0, 255).astype(np.uint8)


def hf_energy(a):
    """Mean absolute difference between neighbours (fine detail and noise)."""
    a = np.asarray(a, np.float64)
    if a.ndim == 3:
        a = a.mean(-1)
    return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


def photo(film, effects, seed=7, **kw):
    kw.setdefault("background", "dark")
    return simulate_photo(film, 1.0, seed, effects=effects, long_side=SIDE, **kw)


def test_same_seed_same_photo_other_seed_other_photo():
    film = smooth_film()
    a, b = simulate_photo(film, "moderate", 3, long_side=SIDE), simulate_photo(film, "moderate", 3, long_side=SIDE)
    assert np.array_equal(a.photo, b.photo) and np.array_equal(a.corners, b.corners)
    c = simulate_photo(film, "moderate", 4, long_side=SIDE)
    assert not np.array_equal(a.photo, c.photo)
    # a Generator is accepted too and advances: two draws differ
    rng = np.random.default_rng(0)
    assert not np.array_equal(simulate_rectified(film, 0.6, rng), simulate_rectified(film, 0.6, rng))


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_corners_lie_on_the_film(background):
    """Just inside each returned corner is film, just outside is background."""
    film = np.full((256, 200), 128, np.uint8)   # uniform mid-grey film: brighter than a dark room
    res = photo(film, ["rotation", "perspective"], background="dark", seed=11, fill=0.6)
    h, w, _ = res.photo.shape
    assert res.photo.shape == (SIDE, round(SIDE * 3 / 4), 3) and res.photo.dtype == np.uint8
    q = res.corners
    assert np.all((q[:, 0] > 0) & (q[:, 0] < w) & (q[:, 1] > 0) & (q[:, 1] < h))
    centre = q.mean(0)
    grey = res.photo.mean(-1)
    for c in q:
        inside = c + 0.04 * (centre - c)
        outside = c - 0.04 * (centre - c)
        assert grey[int(inside[1]), int(inside[0])] > grey[int(outside[1]), int(outside[0])] + 40
    # every background renders, with the film where the corners say
    other = photo(film, [], background=background, seed=11)
    assert other.background == background and other.photo.shape == res.photo.shape


def test_perspective_and_rotation_change_the_corner_geometry():
    film = smooth_film()
    flat = photo(film, [], seed=5).corners
    e = np.roll(flat, -1, 0) - flat
    assert abs(math.degrees(math.atan2(e[0, 1], e[0, 0]))) < 0.01          # upright rectangle
    rotated = photo(film, ["rotation"], seed=5).corners
    e = np.roll(rotated, -1, 0) - rotated
    assert abs(math.degrees(math.atan2(e[0, 1], e[0, 0]))) > 1.0
    tilted = photo(film, ["perspective"], seed=5).corners
    lens = np.linalg.norm(np.roll(tilted, -1, 0) - tilted, axis=1)
    assert max(abs(lens[0] / lens[2] - 1), abs(lens[1] / lens[3] - 1)) > 0.03   # keystone


def test_glare_saturates_part_of_the_film(cxr):
    base, glare = photo(cxr, [], seed=2), photo(cxr, ["glare"], seed=2)
    sat = lambda p: float((p.photo.min(-1) >= 250).mean())
    assert sat(glare) > sat(base) + 0.003
    film_base = simulate_rectified(cxr, 1.0, 2, effects=[])
    film_glare = simulate_rectified(cxr, 1.0, 2, effects=["glare"])
    assert (film_glare >= 250).mean() > (film_base >= 250).mean() + 0.01


@pytest.mark.parametrize("effect", ["defocus", "motion_blur"])
def test_blur_lowers_fine_detail(cxr, effect):
    assert hf_energy(photo(cxr, [effect]).photo) < 0.9 * hf_energy(photo(cxr, []).photo)
    assert hf_energy(simulate_rectified(cxr, 1.0, 1, effects=[effect])) < 0.8 * hf_energy(cxr)


def test_noise_adds_fine_detail():
    film = smooth_film()
    assert hf_energy(photo(film, ["noise"]).photo) > 1.5 * hf_energy(photo(film, []).photo)
    assert hf_energy(simulate_rectified(film, 1.0, 1, effects=["noise"])) > 1.5 * hf_energy(film)


def test_moire_adds_a_pattern_on_a_screen():
    film = smooth_film()
    plain = photo(film, [], background="monitor")
    moire = photo(film, ["moire"], background="monitor")
    assert hf_energy(moire.photo) > 1.2 * hf_energy(plain.photo)
    assert hf_energy(simulate_rectified(film, 1.0, 1, effects=["moire"])) > 1.2 * hf_energy(film)


def test_vignetting_darkens_the_corners_more_than_the_middle():
    film = np.full((256, 256), 160, np.uint8)
    plain, vign = photo(film, [], background="lightbox"), photo(film, ["vignetting"], background="lightbox")
    ratio = vign.photo.astype(float).mean(-1) / np.maximum(plain.photo.astype(float).mean(-1), 1)
    h, w = ratio.shape
    assert ratio[h // 2 - 5:h // 2 + 5, w // 2 - 5:w // 2 + 5].mean() > ratio[:20, :20].mean() + 0.1


def test_colour_cast_tints_the_photo_and_turns_back_to_grey():
    film = smooth_film()
    def cast(p):
        m = p.reshape(-1, 3).astype(float).mean(0) + 1
        return max(abs(math.log(m[0] / m[1])), abs(math.log(m[2] / m[1])))
    assert cast(photo(film, ["color_cast"]).photo) > cast(photo(film, []).photo) + 0.05
    out = simulate_rectified(film, 1.0, 1, effects=["color_cast"])
    assert out.ndim == 2 and out.dtype == np.uint8                 # the model's input stays grey


def test_jpeg_adds_block_artefacts():
    film = smooth_film()
    def blockiness(p):
        g = p.astype(float).mean(-1)
        d = np.abs(np.diff(g, axis=1))
        return d[:, 7::8].mean() / d.mean()          # steps across 8x8 block borders vs everywhere
    plain, jpeg = photo(film, ["noise"], seed=3), photo(film, ["noise", "jpeg"], seed=3)
    assert blockiness(jpeg.photo) > blockiness(plain.photo) + 0.05


def test_exposure_and_film_contrast_change_the_levels():
    film = smooth_film()
    shifts = [abs(math.log(simulate_rectified(film, 1.0, seed, effects=["exposure"]).mean() / film.mean()))
              for seed in range(5)]
    assert max(shifts) > 0.15                                   # brighter or darker by up to 0.7 EV
    cxr_like = np.tile(np.linspace(0, 255, 256).astype(np.uint8), (256, 1))
    flat = simulate_rectified(cxr_like, 1.0, 9, effects=["film_contrast"]).astype(float)
    assert np.ptp(flat) < 0.97 * 255                             # a film on a lightbox never spans 0-255


def test_residual_corner_error_moves_the_film_edges(cxr):
    out = simulate_rectified(cxr, 1.0, 4, effects=["corner_error"]).astype(float)
    assert out.shape == cxr.shape
    assert np.abs(out - cxr).mean() > 1.0
    # the middle of the film is still the film (a small error, not a different picture)
    c = slice(96, 160)
    assert np.corrcoef(out[c, c].ravel(), cxr[c, c].astype(float).ravel())[0, 1] > 0.8


def test_switching_one_effect_off_leaves_the_others_unchanged(cxr):
    a = photo(cxr, ["rotation", "perspective", "noise"], seed=6)
    b = photo(cxr, ["rotation", "perspective", "noise", "glare"], seed=6)
    assert np.array_equal(a.corners, b.corners)
    assert {k: v for k, v in b.effects.items() if k != "glare"} == {k: v for k, v in a.effects.items()
                                                                    if k != "glare"}
    assert a.effects["glare"] == 0 and b.effects["glare"] > 0


def test_severity_zero_leaves_the_film_unchanged(cxr):
    assert np.array_equal(simulate_rectified(cxr, 0.0, 1), cxr)
    assert np.array_equal(simulate_rectified(Image.fromarray(cxr), "none", 1), cxr)
    resized = simulate_rectified(cxr, 0, 1, out_size=128)
    assert resized.shape == (128, 128)


def test_severity_scales_the_damage(cxr):
    diffs = [np.abs(simulate_rectified(cxr, s, 3).astype(float) - cxr).mean() for s in ("mild", "severe")]
    assert diffs[1] > diffs[0] > 0


def test_out_size_and_names():
    film = smooth_film()
    assert simulate_rectified(film, 0.5, 1, out_size=(96, 64)).shape == (64, 96)
    assert resolve_severity("moderate") == 0.5 and resolve_severity(0.3) == 0.3
    assert resolve_severity("0.3") == 0.3   # the command line's --photos 0..1
    for bad in ("nan", "-0.1", "1e9", "inf"):
        with pytest.raises(ValueError, match="severity must be in"):
            resolve_severity(bad)
    with pytest.raises(ValueError, match="mild"):
        resolve_severity("terrible")
    with pytest.raises(ValueError):
        resolve_severity(1.5)
    with pytest.raises(ValueError, match="valid"):
        simulate_rectified(film, 0.5, 1, effects=["sparkles"])
    with pytest.raises(ValueError, match="lightbox"):
        simulate_photo(film, 0.5, 1, background="beach")
    assert set(FILM_EFFECTS) & set(PHOTO_EFFECTS) >= {"glare", "moire", "noise", "jpeg"}


def test_a_film_on_a_surface_is_dark_bent_and_shows_the_desk_through_it():
    ramp = np.tile(np.linspace(0, 255, 256).astype(np.uint8), (256, 1))
    out = simulate_rectified(ramp, 1.0, 5, effects=["surface"]).astype(float)
    cols = out.mean(0)
    assert out.max() < 0.75 * 255                     # room light through the film twice: never a lightbox white
    assert cols[-8:].mean() > cols[:8].mean() + 20     # still the film: white stays whiter than black
    # transmission squared: the middle of the ramp sits below the straight line between its ends
    assert cols[120:136].mean() < 0.5 * (cols[:8].mean() + cols[-8:].mean()) - 2
    flat = simulate_rectified(np.full((256, 256), 200, np.uint8), 1.0, 5, effects=["surface"]).astype(float)
    assert flat.std() > 2                             # the desk's unevenness and grain show through a flat film


def test_a_straightened_photo_is_the_film_upright_with_the_photos_effects():
    """simulate_straightened: the whole photo (background, perspective, camera effects) warped back with the
    film's true corners at the photo's resolution -- the film comes back upright, the same for the same seed,
    and not the film itself (the photo's effects stay)."""
    from cxr_edge.runtime.photo.rectify import warp_film
    from cxr_edge.tools.photosim import simulate_straightened

    film = smooth_film(224)
    a = simulate_straightened(film, "moderate", 3, long_side=SIDE)
    assert a.dtype == np.uint8 and abs(a.shape[0] - a.shape[1]) <= 0.1 * a.shape[0]   # the square film
    assert np.array_equal(a, simulate_straightened(film, "moderate", 3, long_side=SIDE))
    # it is exactly the true-corner warp of the photo simulate_photo makes for that seed
    sim = simulate_photo(film, "moderate", 3, long_side=SIDE)
    grey = Image.fromarray(sim.photo).convert("L")
    assert np.array_equal(a, np.asarray(warp_film(grey, sim.corners, mode="L")))

    # upright: it follows the film pixel for pixel (glare and vignetting blur that on some draws), and
    # always better than the film turned on its side
    def corr(x, y):
        return np.corrcoef(x.ravel().astype(float), y.ravel().astype(float))[0, 1]

    views = [np.asarray(Image.fromarray(simulate_straightened(film, "moderate", s, long_side=SIDE)).resize((224, 224)))
             for s in range(6)]
    assert np.median([corr(v, film) for v in views]) > 0.8
    assert all(corr(v, film) > corr(v, np.rot90(film)) + 0.2 for v in views)
    assert not np.array_equal(views[0], film)


def test_noise_gain_scales_the_rectified_views_noise_and_keeps_its_draws():
    """simulate_rectified(noise_gain=G): the same noise pattern with its read- and shot-noise strengths times G
    (training's augment.photo_noise), so its std grows between sqrt(G) and G times; G = 1 is the default, byte for
    byte."""
    film = smooth_film(128)
    base = simulate_rectified(film, 0.5, 3, effects=["noise"]).astype(float)
    assert np.array_equal(base, simulate_rectified(film, 0.5, 3, effects=["noise"], noise_gain=1.0))
    strong = simulate_rectified(film, 0.5, 3, effects=["noise"], noise_gain=3.0).astype(float)
    clean = simulate_rectified(film, 0.5, 3, effects=["noise"], noise_gain=0.0).astype(float)
    n1, n3 = base - clean, strong - clean
    assert math.sqrt(3) < n3.std() / n1.std() < 3
    assert np.corrcoef(n1.ravel(), n3.ravel())[0, 1] > 0.9          # the same draws, scaled
