"""The simulators of what real field photos showed: a monitor's pixel grid and moiré, a paper print, a photo
cropped to the film. Deterministic, with true corners that map the photo back onto the film."""

import numpy as np
import pytest
from PIL import Image

from cxr_edge.tools.photosim import (SCREEN_TINTS, simulate_cropped_photo, simulate_print_photo,
                               simulate_screen_photo)
from cxr_edge.runtime.photo.rectify import warp_film

CXR = "nih_cxr14/images/00000061_012.png"


@pytest.fixture(scope="module")
def film(shared_data):
    return Image.open(shared_data / CXR).convert("L")


def _back_on_the_film(sim, film) -> float:
    """Correlation of the photo mapped back through its true corners with the film, where the photo shows it."""
    photo = sim.to_image().convert("L")
    back = np.asarray(warp_film(photo, sim.corners, size=(128, 128)), np.float64)
    seen = np.asarray(warp_film(Image.new("L", photo.size, 255), sim.corners, size=(128, 128))) > 250
    ref = np.asarray(film.resize((128, 128)), np.float64)
    return float(np.corrcoef(back[seen], ref[seen])[0, 1])


@pytest.mark.parametrize("simulate", [simulate_screen_photo, simulate_print_photo, simulate_cropped_photo])
def test_tight_photos_are_deterministic_and_their_corners_are_true(film, simulate):
    a = simulate(film, "mild", 7, long_side=640)
    b = simulate(film, "mild", 7, long_side=640)
    assert np.array_equal(a.photo, b.photo) and np.allclose(a.corners, b.corners)
    assert a.photo.dtype == np.uint8 and a.photo.ndim == 3 and max(a.photo.shape[:2]) <= 640
    assert _back_on_the_film(a, film) > 0.8
    assert not np.array_equal(a.photo, simulate(film, "mild", 8, long_side=640).photo)


def test_a_cropped_photo_shows_no_film_edge(film):
    sim = simulate_cropped_photo(film, "mild", 3, long_side=640)
    h, w = sim.photo.shape[:2]
    c = sim.corners                                   # every corner of the film lies outside the photo
    assert (c[0] <= 0).all() and c[1, 0] >= w and c[1, 1] <= 0 and (c[2] >= [w, h]).all() and c[3, 0] <= 0


def test_the_screen_grid_has_the_pitch_asked_for(film):
    sim = simulate_screen_photo(film, "mild", 1, period=5.0, tint="teal", crop=0.0, long_side=800)
    assert sim.background == "screen" and sim.effects["period"] == 5.0
    grey = np.asarray(sim.to_image().convert("L"), np.float64)
    row = grey[grey.shape[0] // 2] - np.convolve(grey[grey.shape[0] // 2], np.ones(15) / 15, "same")
    spectrum = np.abs(np.fft.rfft(row[50:-50] * np.hanning(len(row) - 100)))
    freq = np.fft.rfftfreq(len(row) - 100)
    peak = freq[np.argmax(spectrum * (freq > 0.05))]
    assert abs(1 / peak - 5.0) < 0.3                  # the sub-pixel stripes repeat every screen pixel
    r, g, b = (np.asarray(sim.to_image(), np.float64).reshape(-1, 3).mean(0))
    assert b > r and g > r                            # teal
    with pytest.raises(ValueError, match="valid: neutral"):
        simulate_screen_photo(film, "mild", 1, tint="sepia")
    assert set(SCREEN_TINTS) >= {"teal", "violet", "warm"}
