"""Training augmentations for chest X-rays, applied per batch in TensorFlow (plus phone-photo simulation).

:class:`AugmentConfig` is plain data (a recipe's ``augment`` block); it does
not import TensorFlow. :func:`augment_batch` applies it to a uint8-valued
float batch with stateless random ops, so a seed reproduces every batch:

* one random affine per image (rotation, shear, zoom, shift), optionally a
  random resized crop, composed into a single projective resample (black
  fill, as the letterbox canvas);
* brightness and contrast;
* optional mixup (labels mixed with the same weights as the images).

Horizontal flip is **off by default**: laterality matters clinically. The
heart, aortic knob and stomach bubble are on the left; a flipped film shows
dextrocardia/situs inversus, and findings named by side (a left-sided
effusion, a right upper lobe mass) would move. Turn it on only for a task
where side carries no meaning, and say so in the recipe.

Phone-photo simulation (``photo_prob`` > 0) runs before these, in numpy, via
:func:`cxr_edge.tools.photosim.simulate_rectified`: what a field photo of the film
looks like after the app has found and rectified the film (glare, moiré,
blur, JPEG, colour cast turned grey, vignetting, a sliver of lightbox/desk at
the edge, tight crops, washed-out levels, a film lying on a desk), with a
severity. :mod:`cxr_edge.training.dataset` calls it through ``tf.numpy_function``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import RecipeError

__all__ = ["augment_batch", "AugmentConfig", "finish_film", "photo_batch", "photo_view"]

_SEVERITY_NAMES = ("none", "mild", "moderate", "severe")


@dataclass(frozen=True)
class AugmentConfig:
    """What to randomize during training, and how much. Every default is mild: a CXR has a standard pose."""

    rotation: float = 7.0                        # degrees, ± uniform
    shear: float = 3.0                           # degrees, ± uniform
    zoom: float = 0.08                           # scale 1 ± zoom
    shift: float = 0.04                          # fraction of the side, ± uniform in x and y
    crop_prob: float = 0.3                       # chance of a random resized crop
    crop_area: tuple[float, float] = (0.75, 1.0)  # crop area as a fraction of the image
    crop_ratio: tuple[float, float] = (0.85, 1.18)  # crop aspect ratio (w/h) range
    hflip: bool = False                          # OFF by default: laterality matters (see the module doc)
    brightness: float = 0.08                     # ± fraction of full scale
    contrast: float = 0.15                       # factor 1 ± contrast around the image mean
    mixup_alpha: float = 0.0                     # Beta(α, α) mixing weight; 0 = no mixup
    mixup_prob: float = 0.5                      # chance an image is mixed (when mixup_alpha > 0)
    photo_prob: float = 0.0                      # chance an image becomes a simulated phone photo
    photo_severity: float | str = "moderate"     # 0..1 or none/mild/moderate/severe
    photo_effects: tuple[str, ...] | dict | None = None  # photosim FILM_EFFECTS: names (always on), name ->
                                                          # probability, or None (the simulator's defaults)
    photo_finish: bool = True                    # finish each simulated photo as the device finishes a found film
    photo_scene: float = 0.0                     # share of the photos rendered whole and straightened (see photo_view)
    photo_noise: float = 1.0                     # gain on the rectified views' sensor noise (simulate_rectified)
    photo_median: bool = False                   # end each photo view with a 3x3 median (see photo_view)

    def __post_init__(self):
        for name in ("rotation", "shear", "zoom", "shift", "brightness", "contrast", "mixup_alpha", "photo_noise"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):       # NaN and infinity too
                raise RecipeError(f"augment.{name} must be a finite number >= 0, got {value}")
        for name in ("crop_prob", "mixup_prob", "photo_prob", "photo_scene"):
            if not 0 <= getattr(self, name) <= 1:
                raise RecipeError(f"augment.{name} is a probability in [0, 1], got {getattr(self, name)}")
        if not isinstance(self.photo_median, bool):
            raise RecipeError(f"augment.photo_median is true or false, got {self.photo_median!r}")
        if self.zoom >= 1 or self.shift >= 0.5 or self.rotation > 45 or self.contrast >= 1:
            raise RecipeError("augment: zoom < 1, shift < 0.5, rotation <= 45 and contrast < 1 are required "
                              f"(got zoom {self.zoom}, shift {self.shift}, rotation {self.rotation}, "
                              f"contrast {self.contrast})")
        for name, lo, hi in (("crop_area", 0.05, 1.0), ("crop_ratio", 0.2, 5.0)):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) != 2 or not lo <= v[0] <= v[1] <= hi:
                raise RecipeError(f"augment.{name} must be [min, max] within [{lo}, {hi}], got {list(v)}")
            object.__setattr__(self, name, v)
        sev = self.photo_severity
        if isinstance(sev, str) and sev not in _SEVERITY_NAMES or \
                not isinstance(sev, str) and not 0 <= float(sev) <= 1:
            raise RecipeError(f"augment.photo_severity must be 0..1 or one of {', '.join(_SEVERITY_NAMES)}, "
                              f"got {sev!r}")
        if isinstance(self.photo_effects, dict):
            object.__setattr__(self, "photo_effects", {str(k): float(v) for k, v in self.photo_effects.items()})
        elif self.photo_effects is not None:
            object.__setattr__(self, "photo_effects", tuple(self.photo_effects))

    @classmethod
    def from_dict(cls, d: dict | None) -> "AugmentConfig":
        """Build from a recipe block; an unknown key is an error that lists the valid ones."""
        d = dict(d or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise RecipeError(f"unknown augment key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**d)

    @classmethod
    def off(cls) -> "AugmentConfig":
        """A config that changes nothing (every augmentation disabled)."""
        return cls(rotation=0, shear=0, zoom=0, shift=0, crop_prob=0, brightness=0, contrast=0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["crop_area"], d["crop_ratio"] = list(self.crop_area), list(self.crop_ratio)
        if self.photo_effects is not None and not isinstance(self.photo_effects, dict):
            d["photo_effects"] = list(self.photo_effects)
        if not self.photo_median:   # runs recorded before the key existed resume unchanged (recipe.json)
            del d["photo_median"]
        return d

    @property
    def geometric(self) -> bool:
        return bool(self.rotation or self.shear or self.zoom or self.shift or self.crop_prob or self.hflip)

    @property
    def photometric(self) -> bool:
        return bool(self.brightness or self.contrast)

    @property
    def mixup(self) -> bool:
        return self.mixup_alpha > 0 and self.mixup_prob > 0


def augment_batch(x, y, config: AugmentConfig, seed):
    """Augment a batch: ``x`` float32 (B, S, S, C) with values 0..255, ``y`` float32 (B, L).

    ``seed`` is a stateless seed (int64 tensor of shape [2]). Returns (x, y),
    x still on the 0..255 scale (normalization comes after).
    """
    from .tf_env import load

    tf, _ = load()
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    if config.geometric:
        x = _geometric(tf, x, config, seeds[0])
    if config.photometric:
        x = _photometric(tf, x, config, seeds[1])
    if config.mixup:
        x, y = _mixup(tf, x, y, config, seeds[2])
    return x, y


def _uniform(tf, seed, b, lo, hi):
    return tf.random.stateless_uniform([b], seed=seed, minval=lo, maxval=hi)


def _geometric(tf, x, cfg: AugmentConfig, seed):
    """One output->input projective matrix per image: crop ∘ (centre·rotate·shear·zoom·centre⁻¹) ∘ shift ∘ flip."""
    b = tf.shape(x)[0]
    size = tf.cast(tf.shape(x)[1], tf.float32)
    s = tf.random.experimental.stateless_split(seed, num=10)
    rot = _uniform(tf, s[0], b, -cfg.rotation, cfg.rotation) * (math.pi / 180)
    shear = _uniform(tf, s[1], b, -cfg.shear, cfg.shear) * (math.pi / 180)
    zoom = _uniform(tf, s[2], b, 1 - cfg.zoom, 1 + cfg.zoom)
    tx = _uniform(tf, s[3], b, -cfg.shift, cfg.shift) * size
    ty = _uniform(tf, s[4], b, -cfg.shift, cfg.shift) * size
    one, zero = tf.ones([b]), tf.zeros([b])
    c = (size - 1) / 2

    def mat(r0, r1):
        return tf.stack([tf.stack(r0, -1), tf.stack(r1, -1), tf.stack([zero, zero, one], -1)], 1)

    cos, sin = tf.cos(rot) / zoom, tf.sin(rot) / zoom
    # output -> input: p_in = A (p_out - c) + c + t, A = rotation·shear / zoom
    a00, a01 = cos, -sin + cos * tf.tan(shear)
    a10, a11 = sin, cos + sin * tf.tan(shear)
    m = mat([a00, a01, c - a00 * c - a01 * c + tx], [a10, a11, c - a10 * c - a11 * c + ty])
    if cfg.hflip:
        flip = _uniform(tf, s[5], b, 0, 1) < 0.5
        fx = tf.where(flip, -one, one)
        m = m @ mat([fx, zero, tf.where(flip, size - 1, zero)], [zero, one, zero])
    if cfg.crop_prob > 0:
        area = _uniform(tf, s[6], b, *cfg.crop_area)
        log_ratio = _uniform(tf, s[7], b, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
        ratio = tf.exp(log_ratio)
        cw = tf.minimum(tf.sqrt(area * ratio), 1.0)
        ch = tf.minimum(tf.sqrt(area / ratio), 1.0)
        use = _uniform(tf, s[8], b, 0, 1) < cfg.crop_prob
        cw, ch = tf.where(use, cw, one), tf.where(use, ch, one)
        pos = tf.random.stateless_uniform([b, 2], seed=s[9])
        ox, oy = pos[:, 0] * (1 - cw) * size, pos[:, 1] * (1 - ch) * size
        m = m @ mat([cw, zero, ox], [zero, ch, oy])  # output pixel -> its place in the crop -> affine -> input
    m = m / m[:, 2:3, 2:3]
    transforms = tf.reshape(m, [-1, 9])[:, :8]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=transforms, output_shape=tf.shape(x)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def _photometric(tf, x, cfg: AugmentConfig, seed):
    b = tf.shape(x)[0]
    s = tf.random.experimental.stateless_split(seed, num=2)
    delta = tf.reshape(_uniform(tf, s[0], b, -cfg.brightness, cfg.brightness) * 255.0, [-1, 1, 1, 1])
    factor = tf.reshape(_uniform(tf, s[1], b, 1 - cfg.contrast, 1 + cfg.contrast), [-1, 1, 1, 1])
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value((x - mean) * factor + mean + delta, 0.0, 255.0)


def _mixup(tf, x, y, cfg: AugmentConfig, seed):
    """Mix each image with its partner in the reversed batch; labels get the same weights."""
    b = tf.shape(x)[0]
    s = tf.random.experimental.stateless_split(seed, num=3)
    g1 = tf.random.stateless_gamma([b], seed=s[0], alpha=cfg.mixup_alpha)
    g2 = tf.random.stateless_gamma([b], seed=s[1], alpha=cfg.mixup_alpha)
    lam = g1 / tf.maximum(g1 + g2, 1e-12)
    lam = tf.where(_uniform(tf, s[2], b, 0, 1) < cfg.mixup_prob, lam, tf.ones_like(lam))
    lx = tf.reshape(lam, [-1, 1, 1, 1])
    ly = tf.reshape(lam, [-1, 1])
    return lx * x + (1 - lx) * tf.reverse(x, [0]), ly * y + (1 - ly) * tf.reverse(y, [0])


def photo_batch(pixels, config: AugmentConfig, rng):
    """Phone-photo simulation on a uint8 batch (N, S, S[, 3]) in numpy: each image with ``photo_prob``."""
    import numpy as np

    out = np.array(pixels, copy=True)
    for i in range(len(out)):
        if rng.random() < config.photo_prob:
            child = int(rng.integers(2 ** 63 - 1))
            img = out[i] if out[i].ndim == 2 else out[i][..., 0]
            sim = photo_view(img, config, child)
            out[i] = sim if out[i].ndim == 2 else sim[..., None]
    return out


def photo_view(film, config: AugmentConfig, seed):
    """One film as a model sees it on the device after a phone photo of it: the rectified-photo simulation
    (:func:`cxr_edge.tools.photosim.simulate_rectified`), then -- with ``photo_finish`` -- the device's own film
    finishing (:func:`finish_film`: moiré out when found, levels stretched), the function ``predict`` applies
    to every film it finds in a photo.
    Training and device then share one preprocessing path (tests/test_photo_parity.py). uint8 (S, S) in
    and out.

    With ``photo_scene`` > 0, that share of the views is instead a whole simulated photo straightened with
    the film's true corners at the photo's resolution (:func:`cxr_edge.tools.photosim.simulate_straightened`),
    finished there and then fitted to the film's size (:func:`~cxr_edge.runtime.preprocess.fit_to_square`):
    the device's own path for a film it found, the camera's blur, noise, glare and JPEG made at the photo's
    scale, and the photo's backgrounds (lightbox, desk, dark room, monitor). ``photo_scene = 0`` draws exactly
    as before.

    With ``photo_median``, every view ends with a 3x3 median at the view's size (the model input's): an experiment
    on the photo noise (benchmarks/RESULTS.md, "A 3x3 median in training's photo views"); the device does not apply it, so a
    model trained with it is not shipped."""
    import numpy as np

    try:
        from ..tools.photosim import simulate_rectified, simulate_straightened
    except ImportError as exc:  # the simulator is a separate device-side module
        raise RecipeError(f"augment.photo_prob > 0 needs cxr_edge.tools.photosim, which cannot be imported ({exc}). "
                          "Set photo_prob to 0 or install a cxr-edge that ships it.") from exc
    film = np.asarray(film)
    if config.photo_scene and np.random.default_rng([seed, 5]).random() < config.photo_scene:
        from ..runtime.preprocess import fit_to_square
        from ..tasks import InputSpec

        straight = simulate_straightened(film, config.photo_severity, seed)
        view = fit_to_square(finish_film(straight) if config.photo_finish else straight,
                             InputSpec(size=max(film.shape[:2])))
    else:
        sim = simulate_rectified(film, config.photo_severity, seed, effects=config.photo_effects,
                                 noise_gain=config.photo_noise)
        view = np.asarray(finish_film(sim)) if config.photo_finish else sim
    if config.photo_median:
        from PIL import Image, ImageFilter

        view = np.asarray(Image.fromarray(np.asarray(view, np.uint8)).filter(ImageFilter.MedianFilter(3)))
    return view


def finish_film(pixels):
    """The device's finishing of a film from a photo (:func:`cxr_edge.runtime.photo.film.finish_film`: grey,
    a screen's pixel grid / moiré taken out when found, levels stretched), called -- never copied -- on
    uint8 grey pixels; training's one way to it.

    Until this switch training finished with the level stretch alone (``rectify.level_film``), without the
    moiré step; the bundled pack's models were trained before either (no finishing at all)."""
    import numpy as np

    from ..runtime.photo.film import finish_film as device_finish

    return np.asarray(device_finish(np.asarray(pixels, np.uint8)))
