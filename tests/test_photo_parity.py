"""One preprocessing path: a film that training shows as a phone photo becomes the same model input as the same
film found in a photo on the device (the film finishing predict applies -- grey, moiré out, levels -- then
fit_to_square and normalize)."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from cxr_edge.data.prepare import PrepareConfig, prepare
from cxr_edge.data.sources import SourceSpec
from cxr_edge.data.splits import SplitConfig
from cxr_edge.runtime.photo.film import finish_film
from cxr_edge.runtime.photo.moire import detect_moire
from cxr_edge.runtime.photo.rectify import FilmDetection, RectifyResult
from cxr_edge.runtime.preprocess import fit_to_square, normalize
from cxr_edge.training.augment import AugmentConfig, photo_batch, photo_view

SIZE = 64


def _film(i: int) -> np.ndarray:
    """A film-like grey image: a smooth chest-shaped gradient with noise, not using the full grey range."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img = 60 + 120 * np.exp(-((xx - 0.5) ** 2 * 6 + (yy - 0.55) ** 2 * 4)) + rng.normal(0, 6, (SIZE, SIZE))
    return np.clip(img, 0, 255).astype(np.uint8)


def device_input(photo_film: np.ndarray, spec) -> np.ndarray:
    """What predict feeds a model for a film it found in a photo: RectifyResult.film (the device's finishing),
    then Pipeline.prepare's fit_to_square + normalize."""
    found = RectifyResult(image=Image.fromarray(photo_film, "L"), found=True, passthrough=False, corners=None,
                          detection=FilmDetection(True, None, 1.0, "test"))
    return normalize(fit_to_square(found.film, spec), spec)


def _washed_out(film, severity, seed, effects=None, noise_gain=1.0):
    """A deterministic stand-in for the photo simulator: the levels a lightbox photo leaves (black lifted,
    white greyed), which the device's finishing stretches back."""
    return (40 + np.asarray(film, np.float32) * 0.55).astype(np.uint8)


def _off_a_screen(film, severity=None, seed=None, effects=None, noise_gain=1.0):
    """A deterministic stand-in for a photo of the film on a monitor: the screen's pixel grid (period 4 px)
    over washed-out levels."""
    yy, xx = np.mgrid[0:film.shape[0], 0:film.shape[1]]
    grid = 0.8 + 0.2 * np.cos(np.pi * xx / 2) * np.cos(np.pi * yy / 2)
    return np.clip(40 + np.asarray(film, np.float32) * 0.55 * grid, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    for k, name in enumerate(("COVID19", "NORMAL", "PNEUMONIA", "TB")):
        (root / "src" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(_film(10 * k + i)).save(root / "src" / name / f"f{k}_{i}.png")
    return prepare(PrepareConfig(task="cxr4", sources=(SourceSpec(str(root / "src")),), size=SIZE,
                                 split=SplitConfig(fractions=(0.5, 0.25, 0.25))), root / "prepared")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_photo_view_equals_the_device_input_of_the_same_photographed_film(prepared, seed):
    from cxr_edge.tools.photosim import simulate_rectified

    spec = prepared.task
    film = _film(seed)
    config = replace(AugmentConfig.off(), photo_prob=1.0, photo_severity="moderate")
    photographed = simulate_rectified(film, "moderate", seed)           # what the camera and rectifier leave
    training = normalize(photo_view(film, config, seed)[None], spec)[0]
    assert np.array_equal(training, device_input(photographed, spec))   # bit for bit
    unfinished = normalize(photographed[None], spec)[0]
    assert not np.array_equal(training, unfinished)                     # the finishing did something


def test_photo_view_takes_a_screen_grid_out_as_the_device_does(prepared, monkeypatch):
    """The moiré step of the finishing: a film photographed off a monitor shows its pixel grid; training and
    device both find it and take it out, bit for bit."""
    import cxr_edge.tools.photosim

    monkeypatch.setattr(cxr_edge.tools.photosim, "simulate_rectified", _off_a_screen)
    spec = prepared.task
    film = _film(3)
    photographed = _off_a_screen(film)
    assert detect_moire(photographed).found                              # the device sees a screen here
    config = replace(AugmentConfig.off(), photo_prob=1.0)
    training = normalize(photo_view(film, config, 0)[None], spec)[0]
    assert np.array_equal(training, device_input(photographed, spec))
    levels_only = normalize(np.asarray(finish_film(photographed, moire=False))[None], spec)[0]
    assert not np.array_equal(training, levels_only)                     # the moiré step did something


def test_training_batches_equal_device_inputs(prepared, monkeypatch):
    """Through the whole tf.data pipeline (photo_prob 1, every other augmentation off)."""
    pytest.importorskip("tensorflow", reason="the input pipeline needs TensorFlow (pip install -e '.[train]')")
    import cxr_edge.tools.photosim
    from cxr_edge.training.dataset import make_dataset

    monkeypatch.setattr(cxr_edge.tools.photosim, "simulate_rectified", _washed_out)
    spec = prepared.task
    config = replace(AugmentConfig.off(), photo_prob=1.0)
    x = np.concatenate([b.numpy() for b, _ in make_dataset(prepared, "train", batch_size=3, shuffle=False,
                                                            augment=config, seed=5)])
    pixels = np.asarray(prepared.images("train"))
    expected = np.stack([device_input(_washed_out(p, None, None), spec) for p in pixels])
    assert np.array_equal(x, expected)
    off = np.concatenate([b.numpy() for b, _ in make_dataset(
        prepared, "train", batch_size=3, shuffle=False, augment=replace(config, photo_finish=False), seed=5)])
    assert not np.array_equal(off, expected)                            # finishing off: the washed-out levels


def test_photo_batch_finishes_only_the_photographed_films(prepared):
    pixels = np.asarray(prepared.images("train"))
    config = replace(AugmentConfig.off(), photo_prob=0.0)
    assert np.array_equal(photo_batch(pixels, config, np.random.default_rng(0)), pixels)   # digital: untouched


def test_photo_scene_views_are_straightened_whole_photos_finished_as_the_device_finishes_them(prepared):
    """augment.photo_scene: that share of the photo views is a whole simulated photo straightened with its
    true corners, then finished and fitted exactly as predict does with a film it found; photo_scene 0 draws
    as before."""
    from cxr_edge.tools.photosim import simulate_rectified, simulate_straightened

    spec = prepared.task
    film = _film(5)
    scene = replace(AugmentConfig.off(), photo_prob=1.0, photo_scene=1.0)
    photographed = simulate_straightened(film, "moderate", 11)      # at the photo's resolution
    assert max(photographed.shape) > 2 * SIZE
    assert np.array_equal(normalize(photo_view(film, scene, 11)[None], spec)[0], device_input(photographed, spec))
    plain = replace(scene, photo_scene=0.0)
    assert np.array_equal(normalize(photo_view(film, plain, 11)[None], spec)[0],
                          device_input(simulate_rectified(film, "moderate", 11), spec))
    half = replace(scene, photo_scene=0.5)
    kinds = {photo_view(film, half, s).tobytes() == photo_view(film, scene, s).tobytes() for s in range(12)}
    assert kinds == {True, False}                                        # some views of each kind
    with pytest.raises(Exception, match="photo_scene"):
        replace(scene, photo_scene=1.5)


def test_photo_median_ends_every_kind_of_photo_view_with_a_3x3_median():
    """augment.photo_median (an experiment on the photo noise): the same view, then a 3x3 median at its size, for
    training's 224-px views and for straightened whole photos alike; anything but true / false is refused."""
    from PIL import ImageFilter

    film = _film(7)
    for scene in (0.0, 1.0):
        plain = replace(AugmentConfig.off(), photo_prob=1.0, photo_scene=scene)
        view = photo_view(film, plain, 3)
        smoothed = photo_view(film, replace(plain, photo_median=True), 3)
        assert smoothed.shape == view.shape == film.shape and smoothed.dtype == np.uint8
        assert np.array_equal(smoothed, np.asarray(Image.fromarray(view).filter(ImageFilter.MedianFilter(3))))
        assert not np.array_equal(smoothed, view)
    with pytest.raises(Exception, match="photo_median is true or false"):
        AugmentConfig(photo_median="yes")
    # a run's recipe.json written before the key existed still matches the recipe it was started with (--resume)
    assert "photo_median" not in AugmentConfig().to_dict()
    on = AugmentConfig(photo_median=True)
    assert on.to_dict()["photo_median"] is True and AugmentConfig.from_dict(on.to_dict()) == on
