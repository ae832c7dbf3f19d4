"""Screen pixel grids and moiré: found on photos of monitors, not on radiographs or JPEG blocks; taken out by
``finish_film``, whose contract the training engineer relies on."""

import io

import numpy as np
import pytest
from PIL import Image

from cxr_edge.runtime.photo.film import finish_film, level_film
from cxr_edge.runtime.photo.moire import REDUCTION_METHODS, detect_moire, reduce_moire
from cxr_edge.tools.photosim import simulate_photo, simulate_screen_photo
from cxr_edge.runtime.photo.rectify import warp_film

CXR = "nih_cxr14/images/00000061_012.png"


@pytest.fixture(scope="module")
def film(shared_data):
    return Image.open(shared_data / CXR).convert("L")


@pytest.fixture(scope="module")
def screen(film):
    """A monitor photo with a plainly visible grid (mild: little noise and JPEG), grey, 1024 px."""
    sim = simulate_screen_photo(film, "mild", 2, period=6.0, long_side=1024)
    return Image.fromarray(sim.photo).convert("L")


def test_a_screen_grid_is_found_with_its_period(screen):
    d = detect_moire(screen)
    assert d.found and d.prominence > 100 and d.size == screen.size
    assert any(abs(1 / np.hypot(*p) - 6.0) < 0.5 for p in d.peaks)          # the screen's pixel pitch
    assert d.to_dict()["found"] and d.to_dict()["peaks"] == len(d.peaks)


def test_radiographs_photos_without_screens_and_jpeg_blocks_are_not_moire(film):
    big = film.resize((1024, 1024), Image.BILINEAR)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=40)                                         # strong 8x8 blocking
    lightbox = simulate_photo(film, "moderate", 1, background="lightbox", long_side=1024)
    straightened = warp_film(lightbox.to_image(), lightbox.corners)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 600), dtype=np.uint8))
    for img in (film, big, Image.open(buf), straightened, noise, Image.new("L", (500, 400), 128)):
        assert not detect_moire(img).found
    assert not detect_moire(Image.new("L", (40, 40))).found                   # too small to judge


def test_reduction_takes_the_pattern_out(screen):
    d = detect_moire(screen)
    assert reduce_moire(screen, d, "none") is screen
    for method in REDUCTION_METHODS[1:]:
        out = reduce_moire(screen, d, method)
        assert out.mode == "L" and out.size == screen.size
    notched = detect_moire(reduce_moire(screen, d, "notch"))
    assert notched.prominence < d.prominence / 10                             # at least 10x weaker
    with pytest.raises(ValueError, match="valid: none"):
        reduce_moire(screen, d, "wavelets")


def test_finish_film_contract(screen, film):
    """What training relies on: 'L' out, the input's size, a new image, deterministic, arrays = PIL images."""
    rgb = Image.merge("RGB", (screen, screen, screen))
    out = finish_film(rgb)
    assert out.mode == "L" and out.size == screen.size and out is not rgb
    assert np.array_equal(np.asarray(out), np.asarray(finish_film(rgb)))
    assert np.array_equal(np.asarray(out), np.asarray(finish_film(np.asarray(rgb))))
    assert np.array_equal(np.asarray(out), np.asarray(finish_film(screen)))          # grey in, same result
    lo, hi = np.percentile(np.asarray(out), [0.5, 99.5])
    assert lo <= 3 and hi >= 250                                                     # levels stretched
    plain = finish_film(screen, moire=False)                                         # levels only
    assert np.array_equal(np.asarray(plain), np.asarray(level_film(screen)))
    assert not np.array_equal(np.asarray(plain), np.asarray(out))                    # the grid came out
    # a film without a screen pattern: exactly the level stretch; a flat one is returned as a copy
    assert np.array_equal(np.asarray(finish_film(film)), np.asarray(level_film(film)))
    flat = Image.new("L", (300, 200), 90)
    assert finish_film(flat) is not flat and np.array_equal(np.asarray(finish_film(flat)), np.asarray(flat))
    with pytest.raises(ValueError, match="uint8"):
        finish_film(np.zeros((64, 64), np.float32))
