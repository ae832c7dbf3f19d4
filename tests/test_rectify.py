"""Finding and straightening the film: simulated photos of real CXRs, digital passthrough,
"no film found", and the ``rectify`` command."""

import json

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cxr_edge.cli import LazyGroup
from cxr_edge.cli.rectify import rectify as rectify_command
from cxr_edge.tools.photosim import BACKGROUNDS, simulate_photo
from cxr_edge.runtime.photo.rectify import find_film, homography, perspective_coeffs, rectify, warp_film

# Stated accuracy on simulated phone photos (960 px long side) of real CXRs, mild and moderate:
# per background the median of the worst corner's error is under 2 % of the film's diagonal, and
# on a lightbox, a desk and in a dark room at least 5 of 6 photos have every corner within 2 %.
# (benchmarks/photo_rectify_accuracy.py measures the full distribution.)
MEDIAN_TOL = 0.02
FILMS = ["nih_cxr14/images/00000061_012.png", "cxr4/images/covid19_mhh_fff13f3a.png",
         "cxr4/images/kermany_test_normal_IM-0046-0001.png"]


def worst_corner_error(found, truth):
    diag = 0.5 * (np.linalg.norm(truth[2] - truth[0]) + np.linalg.norm(truth[3] - truth[1]))
    return float(np.linalg.norm(found - truth, axis=1).max() / diag)


@pytest.fixture(scope="module")
def films(shared_data):
    return [Image.open(shared_data / f).convert("L") for f in FILMS]


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_corners_found_on_simulated_photos(films, background):
    errors = []
    for i, film in enumerate(films):
        for severity in ("mild", "moderate"):
            sim = simulate_photo(film, severity, 100 + i, background=background, long_side=960)
            det = find_film(sim.photo)
            errors.append(worst_corner_error(det.corners, sim.corners) if det.found else np.inf)
            if det.found:
                assert 0.0 < det.confidence <= 1.0 and det.method
    errors = np.array(errors)
    assert np.median(errors) < MEDIAN_TOL, errors
    if background != "monitor":
        assert (errors < MEDIAN_TOL).sum() >= 5, errors


def test_rectified_film_is_the_film_upright(films):
    film = films[0]
    sim = simulate_photo(film, "mild", 5, background="lightbox", long_side=960)
    res = rectify(sim.photo)
    assert res.found and not res.passthrough and res.image.mode == "L"
    w, h = res.image.size
    assert abs(w / h - film.size[0] / film.size[1]) < 0.05          # the film's own proportions
    ours = np.asarray(res.image.resize((128, 128)), np.float64)
    ref = np.asarray(film.resize((128, 128)), np.float64)
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.9


def test_full_resolution_photo_gives_full_resolution_corners(films):
    sim = simulate_photo(films[0], "mild", 8, background="dark", long_side=960)
    big = sim.to_image().resize((2880, 3840), Image.BICUBIC)          # an 11-MP photo
    det = find_film(big)
    assert det.found and worst_corner_error(det.corners / 4.0, sim.corners) < 0.01


def test_digital_cxrs_pass_through_untouched(shared_data):
    # square NIH, a letterboxed (black bars) MHH image and a Kermany image
    for f in FILMS + ["cxr4/images/covid19_mhh_9f3f2d91.png", "cxr4/images/covid19_mhh_b0500187.png"]:
        img = Image.open(shared_data / f)
        res = rectify(img)
        assert res.passthrough and not res.found and res.image is img, f
        arr = np.asarray(img)
        assert np.array_equal(np.asarray(rectify(arr).image), arr)     # arrays too, pixel for pixel


def test_grey_photo_of_a_film_is_still_rectified(films):
    """A grey photo is treated as a photo when the film sits clearly inside it."""
    sim = simulate_photo(films[0], "mild", 2, background="lightbox", long_side=960, fill=0.7)
    grey = sim.to_image().convert("L")
    res = rectify(grey)
    assert res.found and not res.passthrough


def test_no_film_in_a_photo_is_said_not_guessed(shared_data):
    """No corners are ever guessed: a colour photo without a four-sided film is taken as cropped to the film
    (the whole photo, less flat borders), or with cropping off, nothing."""
    rng = np.random.default_rng(0)
    scene = Image.open(shared_data / "noncxr" / "images" / "skimage_coffee.png").convert("L")
    box = Image.eval(scene, lambda v: 255 if v > 8 else 0).getbbox()          # drop letterbox bars
    grey = np.asarray(scene.crop(box).resize((768, 1024)), np.float64)
    natural = np.clip(grey[..., None] * [1.05, 1.0, 0.9] + rng.normal(0, 3, grey.shape + (3,)), 0, 255)
    plain = np.full((1024, 768, 3), (200, 185, 160), np.uint8)           # a beige wall
    noise = rng.integers(0, 256, (1024, 768, 3), dtype=np.uint8)
    for photo in (natural.astype(np.uint8), plain, noise):
        res = rectify(photo)
        assert res.path == "cropped" and not res.found and not res.passthrough and res.ok
        assert res.box == (0, 0, 768, 1024) and res.image.size == (768, 1024)   # nothing flat to trim here
        assert res.detection.reason                                   # says why no edges were found
        off = rectify(photo, allow_crop=False)
        assert off.path == "none" and off.image is None and off.corners is None and not off.ok


def test_homography_and_warp_geometry():
    src = np.array([[10, 20], [200, 30], [190, 220], [5, 210]], float)
    dst = np.array([[0, 0], [100, 0], [100, 100], [0, 100]], float)
    h = homography(src, dst)
    p = np.c_[src, np.ones(4)] @ h.T
    assert np.allclose(p[:, :2] / p[:, 2:], dst)
    # a warped checkerboard square comes back square
    board = (np.indices((240, 240)).sum(0) // 30 % 2 * 255).astype(np.uint8)
    img = Image.fromarray(board)
    quad = np.array([[30, 20], [220, 40], [200, 230], [10, 200]], float)
    skewed = img.transform((240, 240), Image.PERSPECTIVE,
                           perspective_coeffs(quad, np.array([[0, 0], [240, 0], [240, 240], [0, 240]], float)),
                           Image.BILINEAR)
    back = np.asarray(warp_film(skewed, quad, size=(240, 240)), np.float64)
    assert np.abs(back[10:-10, 10:-10] - board[10:-10, 10:-10]).mean() < 25


# --------------------------------------------------------------------------- the command


@pytest.fixture
def cli():
    """The rectify command inside the toolkit's lazy group (which turns errors into one line)."""
    @click.group(cls=LazyGroup)
    def group():
        pass

    group.add_command(rectify_command, "rectify")
    return lambda *args: CliRunner().invoke(group, [str(a) for a in args])


def test_cli_writes_the_rectified_png(cli, films, tmp_path):
    sim = simulate_photo(films[0], "mild", 5, background="lightbox", long_side=960)
    photo = tmp_path / "IMG_0001.jpg"
    sim.to_image().save(photo, quality=92)
    out = tmp_path / "film.png"
    res = cli("rectify", photo, "--out", out)
    assert res.exit_code == 0, res.output
    assert "film found" in res.output and "TL" in res.output
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "L" and min(img.size) > 300
    assert cli("rectify", photo, "--out", out).exit_code == 2     # an existing output needs --force
    res = cli("rectify", photo, "--out", out, "--json", "--force")
    data = json.loads(res.output)
    assert data["found"] and len(data["corners"]) == 4 and data["out"] == str(out)
    assert not list(tmp_path.glob(".*"))                                 # no temp files left behind


def test_cli_passes_a_digital_image_through(cli, shared_data, tmp_path):
    src = shared_data / FILMS[0]
    out = tmp_path / "same.png"
    res = cli("rectify", src, "--out", out)
    assert res.exit_code == 0 and "a digital image with no film border" in res.output
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(src)))


def test_cli_bad_input_is_a_clean_error(cli, tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_text("not a photo")
    out = tmp_path / "film.png"
    res = cli("rectify", bad, "--out", out)
    assert res.exit_code == 2 and "Error:" in res.output and "Traceback" not in res.output
    assert not out.exists()
    blank = tmp_path / "wall.jpg"
    Image.new("RGB", (800, 600), (180, 170, 150)).save(blank)
    res = cli("rectify", blank, "--out", tmp_path / "missing" / "film.png")
    assert res.exit_code == 2 and "Error:" in res.output


def test_a_film_that_fills_the_frame_to_its_edges_is_found(films):
    # fill 0.98: the film's edges lie a few pixels inside the photo's. (A film cut off by the frame has no
    # edges to find: that photo is taken as cropped to the film, with the advice to get its edges in view.)
    errors = []
    for i, film in enumerate(films):
        for seed in range(2):
            photo = simulate_photo(np.asarray(film), "mild", 7 * seed + i, fill=0.98, long_side=960)
            res = rectify(photo.to_image())
            assert res.found, res.detection.reason
            errors.append(worst_corner_error(res.corners, photo.corners))
    assert np.median(errors) < MEDIAN_TOL and max(errors) < 2 * MEDIAN_TOL, errors


def test_photographed_film_reaches_the_models_with_its_levels_stretched(films):
    """A film lying on a desk photographs dark and flat; what the models see (``film``) spans the grey
    range again and still is the same film. ``image`` keeps the warp's levels for the quality checks."""
    from cxr_edge.runtime.photo.rectify import level_film

    sim = simulate_photo(films[0], "mild", 3, background="desk", long_side=960)
    res = rectify(sim.photo)
    assert res.found and not res.passthrough
    raw, seen = np.asarray(res.image), np.asarray(res.film)
    lo, hi = np.percentile(raw, [0.5, 99.5])
    assert hi - lo < 200                                    # the photo did compress the film's levels
    slo, shi = np.percentile(seen, [0.5, 99.5])
    assert slo <= 3 and shi >= 250 and res.film.mode == "L" and res.film.size == res.image.size
    assert np.corrcoef(raw.ravel(), seen.ravel())[0, 1] > 0.99    # a monotone map: the same picture
    # a digital image is what the models see, untouched; a flat (blank) film is not blown up into noise
    digital = rectify(films[1])
    assert digital.passthrough and digital.film is digital.image
    flat = Image.fromarray(np.random.default_rng(0).integers(120, 128, (200, 160), dtype=np.uint8))
    assert level_film(flat) is flat


# --------------------------------------------------------------------------- photos without film edges


def _framed(film: Image.Image, bands) -> Image.Image:
    """``film`` inside nested uniform bands, outermost first: (grey level, width in px) each."""
    img = film
    for level, width in reversed(bands):
        canvas = Image.new("L", (img.size[0] + 2 * width, img.size[1] + 2 * width), level)
        canvas.paste(img, (width, width))
        img = canvas
    return img


def test_uniform_borders_are_trimmed_one_band_after_another(films):
    from cxr_edge.runtime.photo.rectify import trim_borders

    film = films[0].resize((400, 400))
    framed = _framed(film, [(235, 40), (12, 24)])          # a white page margin, then a black bezel
    x0, y0, x1, y1 = trim_borders(framed)
    assert abs(x0 - 64) <= 3 and abs(y0 - 64) <= 3 and abs(x1 - 464) <= 3 and abs(y1 - 464) <= 3
    assert trim_borders(film) == (0, 0, 400, 400)          # a film cut to its own content: nothing to trim
    # one side only (a letterbox bar at the top), and a flat image is never trimmed to nothing
    bar = Image.new("L", (400, 460), 0)
    bar.paste(film, (0, 60))
    assert abs(trim_borders(bar)[1] - 60) <= 3 and trim_borders(bar)[3] == 460
    assert trim_borders(Image.new("L", (300, 200), 77)) == (0, 0, 300, 200)


def test_a_flat_region_that_fades_into_the_film_is_kept():
    """A burnt-out (saturated) abdomen is part of the film: no step to the film, so no trim."""
    rng = np.random.default_rng(0)
    rows = np.linspace(0, 1, 400)[:, None]
    texture = 110 + 100 * gaussian_rows(rng, (400, 300))
    fade = np.clip((rows - 0.65) / 0.25, 0, 1)               # the bottom third fades to white ...
    img = np.clip(texture * (1 - fade) + 255 * fade, 0, 255).astype(np.uint8)   # ... saturated below 90 %
    from cxr_edge.runtime.photo.rectify import trim_borders

    assert trim_borders(Image.fromarray(img))[3] == 400


def gaussian_rows(rng, shape):
    from cxr_edge.tools.photosim import gaussian_blur

    a = gaussian_blur(rng.standard_normal(shape).astype(np.float32), 6.0)
    return a / (np.abs(a).max() + 1e-6)


def test_a_tightly_cropped_photo_takes_the_cropped_path(films):
    """A film photographed so that it fills the frame past its edges: no corners to find, so the photo is the
    film, and what the models see is that photo with its levels stretched."""
    from cxr_edge.tools.photosim import simulate_cropped_photo

    sim = simulate_cropped_photo(films[0], "mild", 1, background="lightbox", long_side=960)
    res = rectify(sim.photo)
    assert res.path == "cropped" and not res.found and res.ok and res.film.mode == "L"
    assert res.to_dict()["path"] == "cropped" and res.to_dict()["box"] == list(res.box)
    assert res.film.size == res.image.size and max(res.image.size) <= 1024
    # the film mapped back onto its own frame (true corners) is the film, where the photo shows it
    corners = sim.corners - res.box[:2]
    back = np.asarray(warp_film(res.film, corners, size=(128, 128)), np.float64)
    seen = np.asarray(warp_film(Image.new("L", res.film.size, 255), corners, size=(128, 128))) > 250
    ref = np.asarray(films[0].resize((128, 128)), np.float64)
    assert seen.mean() > 0.7 and np.corrcoef(back[seen], ref[seen])[0, 1] > 0.9


def test_a_grey_screen_photo_is_not_taken_for_a_digital_image(films):
    """A grey photo of a monitor (a near-grey JPEG, as the Figure1 app saves them) shows the screen's grid:
    it is a photo (cropped path, moiré taken out), not a digital image to pass through untouched."""
    from cxr_edge.tools.photosim import simulate_screen_photo

    sim = simulate_screen_photo(films[0], "mild", 3, period=5.0, tint="neutral", long_side=1024)
    grey = sim.to_image().convert("L")
    res = rectify(grey)
    assert res.path == "cropped" and not res.passthrough and res.moire.found
    assert res.screen is not None and res.moire is res.screen             # detected once, reused
    digital = rectify(films[0].resize((1024, 1024)))                     # a large digital CXR
    assert digital.path == "digital" and digital.passthrough


# ---------------------------------------------------------------- the film search's batched helpers
# (speed, issue 18): each must give what the one-at-a-time computation it replaced gives

def test_batched_quantiles_are_numpys_percentiles_of_each_row():
    from cxr_edge.runtime.photo.rectify import _quantiles

    rng = np.random.default_rng(0)
    v = rng.normal(size=(7, 40))
    counts = np.array([40, 1, 2, 7, 13, 39, 25])
    padded = np.where(np.arange(40)[None, :] < counts[:, None], v, np.nan)
    got = _quantiles(padded, (2, 25, 50, 75, 90), counts)
    want = np.array([np.percentile(v[i, :n], (2, 25, 50, 75, 90)) for i, n in enumerate(counts)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_side_lines_fitted_together_equal_one_at_a_time():
    from cxr_edge.runtime.photo.rectify import _fit_lines

    rng = np.random.default_rng(1)
    pts, valid, want = np.zeros((4, 50, 2)), np.zeros((4, 50), bool), []
    for s, (angle, rho, m) in enumerate([(0.1, 20.0, 50), (1.6, 300.0, 31), (3.0, -80.0, 12), (4.7, 5.0, 40)]):
        t = np.linspace(-100, 100, m)
        n, d = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
        p = rho * n + t[:, None] * d + rng.normal(0, 0.3, (m, 1)) * n
        p[::7] += 15 * n                                  # outliers the fit must reject
        pts[s, :m], valid[s, :m] = p, True
        keep = np.ones(m, bool)                           # the plain per-side fit (three rounds)
        for _ in range(3):
            c = p[keep].mean(0)
            _, _, vt = np.linalg.svd(p[keep] - c)
            nn = vt[1]
            r = nn @ c
            res = np.abs(p @ nn - r)
            keep = res <= max(1.0, 3.0 * 1.4826 * np.median(res[keep]))
        want.append((nn * np.sign(nn @ n), r * np.sign(nn @ n)))
    for (n_got, r_got), (n_want, r_want) in zip(_fit_lines(pts, valid), want):
        sign = np.sign(n_got @ n_want)
        np.testing.assert_allclose(n_got * sign, n_want, atol=1e-9)
        assert abs(r_got * sign - r_want) < 1e-7
    valid[2, 6:] = False                                  # a side with too few points: no fit
    valid[2, :6] = [True, True, True, False, False, False]
    assert _fit_lines(pts, valid) is None


def test_duplicate_hough_peaks_table_matches_the_pairwise_test():
    from cxr_edge.runtime.photo.rectify import _DuplicatePeaks

    rng = np.random.default_rng(2)
    w, h = 320, 240
    theta = np.concatenate([rng.uniform(0, np.pi, 90), np.full(60, 0.5) + rng.normal(0, 0.02, 60)])
    normals = np.stack([np.cos(theta), np.sin(theta)], -1)
    rhos = np.concatenate([rng.uniform(-50, 350, 90), 150 + rng.normal(0, 1.5, 60)])
    same = _DuplicatePeaks(normals, rhos, w, h)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    hits = 0
    for i in range(len(rhos)):
        for j in range(i):
            d = np.array([-normals[i, 1], normals[i, 0]])
            ts = corners @ d
            ends = rhos[i] * normals[i] + np.array([ts.min(), ts.max()])[:, None] * d
            sign = -1.0 if normals[j] @ normals[i] < 0 else 1.0
            want = (abs(normals[j] @ normals[i]) >= np.cos(np.radians(6))
                    and bool(np.all(np.abs(ends @ normals[j] * sign - rhos[j] * sign) <= 2.0)))
            assert same(i, [j]) == want, (i, j)
            hits += want
    assert hits > 50                                      # the near-identical lines were duplicates


def test_band_kinds_judged_together_equal_one_at_a_time(films):
    from PIL import ImageFilter

    from cxr_edge.runtime.photo.rectify import _band_kinds

    smooth = np.asarray(films[0].convert("L").resize((240, 320)).filter(ImageFilter.GaussianBlur(2.0)), np.float32)
    outer = np.array([[10, 10], [230, 10], [230, 310], [10, 310]], float)
    rng = np.random.default_rng(3)
    inner = outer + rng.uniform(-6, 40, (12, 4, 2)) * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    inner[3] = outer + [[0, 30], [0, 30], [0, -30], [0, -30]]   # bars top and bottom only
    together = _band_kinds(outer, inner, lambda: smooth)
    assert together == [_band_kinds(outer, q, lambda: smooth)[0] for q in inner]
    assert together == _band_kinds(np.broadcast_to(outer, inner.shape), inner, lambda: smooth)
    assert _band_kinds(outer, inner[:0], lambda: smooth) == []
