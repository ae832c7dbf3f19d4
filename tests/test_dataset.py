"""The tf.data pipeline: device-identical normalization, labels aligned through augmentation, seeded batches."""

import numpy as np
import pytest
from PIL import Image

from cxr_edge.data.prepare import PrepareConfig, prepare
from cxr_edge.data.sources import SourceSpec
from cxr_edge.data.splits import SplitConfig
from cxr_edge.errors import RecipeError
from cxr_edge.runtime.preprocess import normalize
from cxr_edge.training.augment import AugmentConfig

pytest.importorskip("tensorflow", reason="the input pipeline needs TensorFlow (pip install -e '.[train]')")

SIZE = 64
CLASSES = ("COVID19", "NORMAL", "PNEUMONIA", "TB")  # folder names, mapped by alias onto cxr4's labels


def _marker_image(k: int, i: int) -> np.ndarray:
    """A dark noisy film with a bright block in quadrant k: the label is readable from the pixels."""
    rng = np.random.default_rng(i)
    img = rng.integers(20, 60, (96, 80), dtype=np.uint8)
    h, w = img.shape
    r, c = divmod(k, 2)
    img[r * h // 2 + 10: (r + 1) * h // 2 - 10, c * w // 2 + 8: (c + 1) * w // 2 - 8] = 235
    return img


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    root = tmp_path_factory.mktemp("marked")
    src = root / "src"
    for k, name in enumerate(CLASSES):
        (src / name).mkdir(parents=True)
        for i in range(24):
            Image.fromarray(_marker_image(k, 100 * k + i)).save(src / name / f"img{k}_{i:02d}.png")
    return prepare(PrepareConfig(task="cxr4", sources=(SourceSpec(str(src)),), size=SIZE,
                                 split=SplitConfig(fractions=(0.5, 0.25, 0.25))), root / "prepared")


def _quadrant(x: np.ndarray) -> np.ndarray:
    """Index of the brightest quadrant of each (B, S, S, 1) image."""
    h = x.shape[1] // 2
    q = [x[:, r * h:(r + 1) * h, c * h:(c + 1) * h, 0].mean(axis=(1, 2)) for r in (0, 1) for c in (0, 1)]
    return np.argmax(np.stack(q, 1), 1)


def _collect(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_no_augmentation_equals_device_normalize(marked):
    from cxr_edge.training.dataset import make_dataset

    x, y = _collect(make_dataset(marked, "train", batch_size=10, shuffle=False))
    assert x.dtype == np.float32 and x.shape == (len(marked.table("train")), SIZE, SIZE, 1)
    assert np.array_equal(x, normalize(marked.images("train")[:], marked.task))  # bit for bit
    assert np.array_equal(y, marked.labels("train"))


# glare would add a second bright blob; every other photo effect is on
_PHOTO = ("corner_error", "film_contrast", "defocus", "motion_blur", "vignetting", "color_cast", "exposure", "noise",
          "jpeg")


@pytest.mark.parametrize("augment", [AugmentConfig(), AugmentConfig(rotation=10, crop_prob=1.0, photo_prob=1.0,
                                                                    photo_severity="moderate", photo_effects=_PHOTO)])
def test_augmented_batches_keep_labels_aligned(marked, augment):
    from cxr_edge.training.dataset import make_dataset

    x, y = _collect(make_dataset(marked, "train", batch_size=8, shuffle=True, augment=augment, seed=4))
    assert len(x) == len(marked.table("train"))
    assert np.array_equal(_quadrant(x), np.argmax(y, 1))  # the marker followed its label through the shuffle
    assert not np.array_equal(x, normalize(marked.images("train")[:], marked.task)[: len(x)])
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_batches_are_seeded_and_reshuffled_each_epoch(marked):
    from cxr_edge.training.dataset import make_dataset

    def make(seed):
        return make_dataset(marked, "train", batch_size=8, shuffle=True, augment=AugmentConfig(), seed=seed)

    a1, b1 = _collect(make(1)), _collect(make(1))
    assert np.array_equal(a1[0], b1[0]) and np.array_equal(a1[1], b1[1])
    ds = make(1)
    e1, e2 = _collect(ds), _collect(ds)
    assert not np.array_equal(e1[1], e2[1]) or not np.array_equal(e1[0], e2[0])
    assert not np.array_equal(_collect(make(2))[0], a1[0])


def test_mixup_mixes_labels_like_images(marked):
    from cxr_edge.training.dataset import make_dataset

    aug = AugmentConfig.off()
    aug = AugmentConfig(**{**aug.to_dict(), "mixup_alpha": 0.4, "mixup_prob": 1.0})
    x, y = _collect(make_dataset(marked, "train", batch_size=16, shuffle=True, augment=aug, seed=0))
    assert np.allclose(y.sum(1), 1.0, atol=1e-6) and (y.max(1) < 1).any()


def test_repeat_streams_past_one_epoch(marked):
    from cxr_edge.training.dataset import make_dataset, steps_per_epoch

    n = len(marked.table("train"))
    ds = make_dataset(marked, "train", batch_size=16, shuffle=True, repeat=True, drop_remainder=True)
    batches = list(ds.take(steps_per_epoch(marked, "train", 16) + 2))
    assert all(b[0].shape == (16, SIZE, SIZE, 1) for b in batches) and n < 16 * len(batches)


def test_augment_config_from_dict_names_unknown_keys():
    cfg = AugmentConfig.from_dict({"rotation": 5, "crop_area": [0.8, 1.0], "photo_prob": 0.3})
    assert cfg.rotation == 5 and cfg.crop_area == (0.8, 1.0) and not cfg.hflip  # flip is off by default
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(RecipeError, match="unknown augment key.*rotate.*valid: rotation"):
        AugmentConfig.from_dict({"rotate": 5})
    with pytest.raises(RecipeError, match="probability"):
        AugmentConfig(photo_prob=2)
    with pytest.raises(RecipeError, match="photo_severity"):
        AugmentConfig(photo_severity="extreme")
    # a recipe's TOML can hold nan and inf: they are refused, not passed on to every training image
    for key in ("photo_noise", "rotation"):
        for bad in (float("nan"), float("inf"), -1.0):
            with pytest.raises(RecipeError, match=f"augment.{key} must be a finite number"):
                AugmentConfig(**{key: bad})
    with pytest.raises(RecipeError, match="photo_scene is a probability"):
        AugmentConfig(photo_scene=float("nan"))
