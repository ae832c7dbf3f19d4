"""Phone-photo simulator: what a field worker's photo of an X-ray film looks like.

No real phone photographs of films exist in the project's data, so photo
robustness is trained and measured on simulated ones. Two entry points:

* :func:`simulate_photo` renders a whole photo: the film on a lightbox, a
  desk/wall, in a dark room or on a monitor, seen in perspective, with glare,
  moiré, blur, vignetting, colour cast, sensor noise and JPEG. It returns the
  photo and the film's true corners, so the rectifier can be measured.
* :func:`simulate_rectified` is the training augmentation. The device
  pipeline detects and rectifies the film *before* any model runs, so a model
  never sees the background or the perspective; it sees the upright film with
  what rectification cannot undo: glare, moiré, blur, noise, vignetting, JPEG,
  a colour cast turned back to grey, the film's contrast on a lightbox, and a
  small residual corner error (a sliver of background or a slightly cut edge).
  Training on that, at the film's size, matches what the model sees in the
  field and costs a few milliseconds instead of rendering a 1-megapixel photo.

Every effect has its own strength, scaled by ``severity`` (0..1 or a name in
:data:`SEVERITY_LEVELS`), and can be switched on or off with ``effects``. Each
effect draws from its own random stream, so switching one effect off leaves
every other effect of the same seed exactly as it was. numpy + Pillow only.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..runtime.photo.blur import gaussian_blur
from ..runtime.photo.rectify import apply_homography, homography, warp_film

__all__ = ["BACKGROUNDS", "FILM_EFFECT_PROBS", "FILM_EFFECTS", "MONITOR_MOIRE_PROB", "motion_blur",
           "PHOTO_EFFECT_PROBS", "PHOTO_EFFECTS", "resolve_severity", "SEVERITY_LEVELS", "simulate_photo",
           "SCREEN_TINTS", "simulate_cropped_photo", "simulate_print_photo", "simulate_rectified",
           "simulate_screen_photo", "simulate_straightened", "SimulatedPhoto"]


SEVERITY_LEVELS = {"none": 0.0, "mild": 0.25, "moderate": 0.5, "severe": 0.85}
BACKGROUNDS = ("lightbox", "desk", "dark", "monitor")

PHOTO_EFFECTS = ("rotation", "perspective", "glare", "moire", "defocus", "motion_blur",
                 "vignetting", "color_cast", "exposure", "noise", "jpeg")
FILM_EFFECTS = ("corner_error", "film_contrast", "glare", "moire", "defocus", "motion_blur",
                "vignetting", "color_cast", "exposure", "noise", "jpeg",
                # what real photos showed beyond the above (../shared/data/real_photos_dev, issue 15); appended,
                # so every older effect keeps its random stream and draws
                "tight_crop", "pixel_grid", "low_contrast", "recompress",
                # a film lying on a desk or table, lit from the room: the surface shows through it
                "surface")

# Chance that an effect occurs in one draw when ``effects`` is not given.
# Moiré comes from photographing a screen: it is on for the monitor background only.
PHOTO_EFFECT_PROBS = {
    "rotation": 1.0, "perspective": 1.0, "glare": 0.4, "moire": 0.0, "defocus": 0.5,
    "motion_blur": 0.25, "vignetting": 0.7, "color_cast": 0.8, "exposure": 0.5,
    "noise": 1.0, "jpeg": 1.0,
}
MONITOR_MOIRE_PROB = 0.8
FILM_EFFECT_PROBS = {
    "corner_error": 1.0, "film_contrast": 0.8, "glare": 0.35, "moire": 0.3, "defocus": 0.5,
    "motion_blur": 0.25, "vignetting": 0.6, "color_cast": 0.6, "exposure": 0.5,
    "noise": 1.0, "jpeg": 0.9,
    # 12 of the 17 real dev photos are of monitors, most cropped tightly to the image, several low-res reposts
    "tight_crop": 0.4, "pixel_grid": 0.2, "low_contrast": 0.4, "recompress": 0.35,
    # the desk scene of simulate_photo: its films lost the most accuracy (benchmarks/photo_accuracy_loss.py)
    "surface": 0.2,
}
#: A film lying on a desk (simulate_photo's desk scene and the 'surface' film effect share these ranges): the
#: surface's brightness, the film's transmission where its image is black and where it is white, the wood grain's
#: amplitude, and the sheen off the film's surface.
DESK_LEVEL, DESK_FILM, DESK_GRAIN, DESK_SHEEN = (0.35, 0.7), ((0.15, 0.3), (0.6, 0.8)), (0.03, 0.1), 0.03
#: Hues of the colour casts real photos of films and monitors show (R, G, B gains at full strength).
CAST_HUES = {"teal": (0.62, 1.0, 1.12), "violet": (1.08, 0.66, 1.25), "warm": (1.22, 1.0, 0.68)}

# Random streams, one per component; a stream's index here seeds its generator.
_STREAMS = ("geometry", "background", "plan") + tuple(dict.fromkeys(PHOTO_EFFECTS + FILM_EFFECTS))

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)   # ITU-R 601, as Pillow's convert('L')


@dataclass(frozen=True)
class SimulatedPhoto:
    """A simulated phone photo and the film's true corners in it.

    ``corners`` are (x, y) in continuous pixel coordinates of ``photo``
    (pixel (0, 0) covers [0, 1) x [0, 1)), ordered TL, TR, BR, BL of the film
    as it lies upright. ``effects`` maps each effect to the strength used
    (0 = not applied).
    """

    photo: np.ndarray
    corners: np.ndarray
    background: str
    severity: float
    effects: dict = field(default_factory=dict)

    def to_image(self) -> Image.Image:
        return Image.fromarray(self.photo, "RGB")


def resolve_severity(severity) -> float:
    """A severity name (``mild``/``moderate``/``severe``/``none``) or a number in [0, 1] (also as text, as a
    command line gives it: ``"0.3"``), as a float. NaN and anything outside [0, 1] are refused."""
    if isinstance(severity, str):
        if severity in SEVERITY_LEVELS:
            return SEVERITY_LEVELS[severity]
        try:
            severity = float(severity)
        except ValueError:
            raise ValueError(
                f"unknown severity {severity!r}; use a number in [0, 1] or one of "
                f"{', '.join(SEVERITY_LEVELS)}") from None
    value = float(severity)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {value}")
    return value


def _as_rng(seed_or_rng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


class _Streams:
    """Independent generators per component, made on first use from one draw of the caller's
    seed or generator, so switching one effect off leaves every other effect unchanged."""

    def __init__(self, seed_or_rng):
        self._entropy = int(_as_rng(seed_or_rng).integers(2 ** 63))
        self._made: dict[str, np.random.Generator] = {}

    def __getitem__(self, name: str) -> np.random.Generator:
        if name not in self._made:
            self._made[name] = np.random.default_rng([self._entropy, _STREAMS.index(name)])
        return self._made[name]


def _plan(effects, defaults: Mapping[str, float], names: tuple, severity: float,
          rng: np.random.Generator) -> dict[str, float]:
    """Strength per effect: severity x a per-draw jitter in [0.5, 1], or 0 when the effect is off.

    ``effects`` None = ``defaults`` probabilities; a collection of names = exactly
    those, always; a mapping = name -> probability (unlisted names are off).
    """
    if effects is None:
        probs = dict(defaults)
    elif isinstance(effects, Mapping):
        probs = {k: float(v) for k, v in effects.items()}
    elif isinstance(effects, Iterable) and not isinstance(effects, str):
        probs = {k: 1.0 for k in effects}
    else:
        raise ValueError(f"effects must be None, names or a name->probability mapping, got {effects!r}")
    unknown = set(probs) - set(names)
    if unknown:
        raise ValueError(f"unknown effect(s) {sorted(unknown)}; valid: {', '.join(names)}")
    draws = rng.random((len(names), 2))   # always drawn in full, so the plan of one effect
    plan = {}                             # does not depend on the others
    for (occur, jitter), name in zip(draws, names):
        on = occur < probs.get(name, 0.0)
        plan[name] = float(severity * (0.5 + 0.5 * jitter)) if on and severity > 0 else 0.0
    return plan


def _film_u8(image) -> np.ndarray:
    """The film as a 2-D uint8 grey array (RGB is turned to grey with Pillow's luma weights)."""
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "L" else image.convert("L"))
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float32) @ _LUMA
    if arr.ndim != 2:
        raise ValueError(f"film must be a 2-D grey image or (H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.asarray(arr, np.float32) + 0.5, 0, 255).astype(np.uint8)
    return arr


def _film_array(image) -> np.ndarray:
    """The film as a float32 array in [0, 1] (grey)."""
    return _film_u8(image).astype(np.float32) * np.float32(1 / 255)


# --------------------------------------------------------------------------- filters (float32; the box and
# Gaussian blurs the quality checks share are in runtime/photo/blur.py)


def motion_blur(a: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Average of the image shifted along a straight path of ``length`` px at ``angle`` radians."""
    if length < 1:
        return a
    n = int(math.ceil(length)) + 1
    offsets = np.linspace(-length / 2, length / 2, n)
    pad = int(math.ceil(length / 2)) + 1
    padded = np.pad(a, [(pad, pad), (pad, pad)] + [(0, 0)] * (a.ndim - 2), mode="edge")
    h, w = a.shape[:2]
    out = np.zeros(a.shape, np.float32)
    for t in offsets:
        dx, dy = int(round(t * math.cos(angle))), int(round(t * math.sin(angle)))
        out += padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return out * np.float32(1.0 / n)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled bicubically."""
    h, w = shape
    gh = max(2, int(round(cells * h / max(h, w))) + 1)
    gw = max(2, int(round(cells * w / max(h, w))) + 1)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.BICUBIC))


# --------------------------------------------------------------------------- effects (shared)

def _glare(shape, centers, size_px, strength, rng) -> np.ndarray:
    """Additive specular blobs (elliptical Gaussians) whose peak saturates the sensor, plus a faint
    broad veil around each (reflections wash out contrast around the hot spot)."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    xs = np.arange(w, dtype=np.float32) + np.float32(0.5)
    ys = np.arange(h, dtype=np.float32) + np.float32(0.5)
    for cx, cy in centers:
        sigma = size_px * rng.uniform(0.04, 0.11) * (0.6 + 0.8 * strength)
        aspect = rng.uniform(1.0, 2.5)
        theta = rng.uniform(0, math.pi)
        peak = np.float32(0.6 + 2.2 * strength)
        # the veil is isotropic, so separable: an outer product of two 1-D Gaussians
        vs = 4.0 * sigma * aspect
        gx = np.exp(-0.5 * ((xs - cx) / vs) ** 2).astype(np.float32)
        gy = np.exp(-0.5 * ((ys - cy) / vs) ** 2).astype(np.float32)
        out += np.float32(0.12 * strength) * gy[:, None] * gx[None, :]
        reach = 4.0 * sigma * aspect                   # the blob is ~0 beyond 4 sigma of its long axis
        x0, x1 = int(max(0, cx - reach)), int(min(w, cx + reach + 1))
        y0, y1 = int(max(0, cy - reach)), int(min(h, cy + reach + 1))
        if x0 >= x1 or y0 >= y1:
            continue
        dx = (xs[x0:x1] - cx)[None, :]
        dy = (ys[y0:y1] - cy)[:, None]
        c, s = math.cos(theta), math.sin(theta)
        u = (dx * c + dy * s) * np.float32(1 / (sigma * aspect))
        v = (dy * c - dx * s) * np.float32(1 / sigma)
        out[y0:y1, x0:x1] += peak * np.exp(-0.5 * (u * u + v * v))
    return out


def _moire_pattern(shape, period_px, rng) -> np.ndarray:
    """An interference pattern: slightly curved bands, as a screen's pixel grid beats with the sensor's."""
    h, w = shape
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    theta = rng.uniform(0, math.pi)
    k = 2 * math.pi / period_px
    curv = rng.uniform(-1, 1) * k / max(h, w) * 0.5
    cx, cy = w * rng.uniform(0.2, 0.8), h * rng.uniform(0.2, 0.8)
    dx, dy = xx - cx, yy - cy
    phase = k * (dx * math.cos(theta) + dy * math.sin(theta)) + curv * (dx * dx + dy * dy)
    # a second, weaker beat at another angle gives the familiar crossed look
    theta2 = theta + rng.uniform(0.3, 1.2)
    phase2 = 1.7 * k * (dx * math.cos(theta2) + dy * math.sin(theta2))
    return (0.75 * np.cos(phase) + 0.25 * np.cos(phase2)).astype(np.float32)


def _vignette(shape, strength, rng) -> np.ndarray:
    h, w = shape
    cx = w * (0.5 + rng.uniform(-0.1, 0.1))
    cy = h * (0.5 + rng.uniform(-0.1, 0.1))
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) * np.float32(1.0 / (0.25 * (w * w + h * h)))
    return (1.0 - 0.5 * strength * r2).astype(np.float32)


def _cast_gains(strength, rng) -> np.ndarray:
    """Per-channel white-balance gains (warm/cool and green/magenta), normalised to keep luma."""
    temp = rng.uniform(-1, 1)
    tint = rng.uniform(-1, 1)
    g = np.array([1 + 0.35 * strength * temp, 1 + 0.15 * strength * tint,
                  1 - 0.35 * strength * temp], np.float32)
    return g / float(g @ _LUMA)


def _noise(rng, shape, signal, read, shot) -> np.ndarray:
    """Signal-dependent grey sensor noise, generated at half resolution (phone noise is correlated)."""
    h, w = shape
    n = rng.standard_normal((max(1, (h + 1) // 2), max(1, (w + 1) // 2)), dtype=np.float32)
    # bilinear upsampling lowers the std; 1.6 brings it back to about 1
    n = np.asarray(Image.fromarray(n, "F").resize((w, h), Image.BILINEAR)) * np.float32(1.6)
    return n * np.sqrt(read * read + shot * np.clip(signal, 0, None))


def _sensor_noise(rng, lum, read, shot) -> np.ndarray:
    """RGB noise: a luminance part plus coarser chroma blotches, as a phone's denoiser leaves them."""
    h, w = lum.shape
    grey = _noise(rng, (h, w), lum, read, shot)
    ch, cw = -(-h // 4), -(-w // 4)
    chroma = rng.standard_normal((ch, cw, 3), dtype=np.float32) * np.float32(0.6 * read)
    chroma = np.repeat(np.repeat(chroma, 4, axis=0), 4, axis=1)[:h, :w]
    return grey[..., None] + chroma


def _jpeg(arr_u8: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    mode = "RGB" if arr_u8.ndim == 3 else "L"
    Image.fromarray(arr_u8, mode).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert(mode))


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- the photo

@dataclass
class _Scene:
    """Film-plane description of what is photographed, in film pixel units."""

    kind: str
    bg_level: float            # room / wall / desk brightness
    bg_tint: np.ndarray
    film_lo: float             # film brightness where the film image is black ...
    film_hi: float             # ... and where it is white
    film_tint: np.ndarray
    frame: tuple | None = None  # (left, top, right, bottom) margins of a lightbox panel / screen
    frame_level: float = 0.0
    bezel: float = 0.0         # monitor bezel width beyond the screen
    bezel_level: float = 0.0
    grain: float = 0.0         # desk wood-grain amplitude
    on_surface: bool = False   # film lies on the background: film_lo/hi are its transmission
    banding: float = 0.0       # lightbox tube banding amplitude


def _scene(kind: str, fw: int, fh: int, rng: np.random.Generator) -> _Scene:
    u = rng.uniform
    size = max(fw, fh)
    if kind == "lightbox":
        panel = u(0.95, 1.12)
        margins = tuple(u(0.03, 0.3) * size for _ in range(4))
        return _Scene(kind, bg_level=u(0.12, 0.4), bg_tint=np.array([1.05, 1.0, 0.92], np.float32),
                      film_lo=panel * u(0.01, 0.06), film_hi=panel * u(0.55, 0.8),
                      film_tint=np.array([0.97, 1.0, 1.06], np.float32),
                      frame=margins, frame_level=panel, banding=u(0.0, 0.08))
    if kind == "dark":
        light = u(0.7, 1.0)
        return _Scene(kind, bg_level=u(0.01, 0.06), bg_tint=np.array([1.05, 1.0, 0.95], np.float32),
                      film_lo=light * u(0.12, 0.25), film_hi=light * u(0.8, 0.95),
                      film_tint=np.array([1.0, 1.0, 1.02], np.float32))
    if kind == "desk":
        lo, hi = DESK_FILM
        palette = [np.array([1.15, 0.97, 0.78], np.float32),   # wood
                   np.array([1.0, 1.0, 1.0], np.float32),      # grey wall
                   np.array([1.03, 1.0, 0.95], np.float32)]    # off-white
        tint = palette[int(rng.integers(len(palette)))]
        # film lying on the surface: the surface is seen through it (transmission squared)
        return _Scene(kind, bg_level=u(*DESK_LEVEL), bg_tint=tint,
                      film_lo=u(*lo), film_hi=u(*hi), film_tint=tint,
                      grain=u(*DESK_GRAIN), on_surface=True)
    if kind == "monitor":
        white = u(0.8, 1.0)
        margins = tuple(u(0.03, 0.25) * size for _ in range(4))
        return _Scene(kind, bg_level=u(0.1, 0.4), bg_tint=np.array([1.05, 1.0, 0.93], np.float32),
                      film_lo=u(0.02, 0.05), film_hi=white,
                      film_tint=np.array([0.95, 1.0, 1.08], np.float32),
                      frame=margins, frame_level=u(0.12, 0.3),
                      bezel=u(0.02, 0.05) * size, bezel_level=u(0.02, 0.06))
    raise ValueError(f"unknown background {kind!r}; valid: {', '.join(BACKGROUNDS)}")


def _place_film(fw, fh, W, H, rot, tilt, fill, rng) -> np.ndarray:
    """Photo corners (TL, TR, BR, BL) of the film: 3-D tilt + roll, pinhole projection, fitted to the frame."""
    roll = math.radians(12.0) * rot * rng.uniform(-1, 1)
    pitch = math.radians(30.0) * tilt * rng.uniform(-1, 1)
    yaw = math.radians(30.0) * tilt * rng.uniform(-1, 1)
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    pts = np.array([[-fw / 2, -fh / 2, 0], [fw / 2, -fh / 2, 0], [fw / 2, fh / 2, 0],
                    [-fw / 2, fh / 2, 0]], float)
    p = pts @ (rz @ ry @ rx).T
    dist = 1.6 * max(fw, fh)        # camera distance ~ a phone's field of view around the film
    p[:, 2] += dist
    proj = dist * p[:, :2] / p[:, 2:3]
    lo, hi = proj.min(0), proj.max(0)
    scale = fill * min(W / (hi[0] - lo[0]), H / (hi[1] - lo[1]))
    proj = (proj - lo) * scale
    span = proj.max(0)
    margin = 0.01 * min(W, H)
    slack = np.maximum(np.array([W, H]) - span - 2 * margin, 0)
    return proj + margin + rng.uniform(0, 1, 2) * slack


def _film_plane_coords(h_pf: np.ndarray, W: int, H: int):
    """Film-plane coordinates (u, v) of every photo pixel centre, through ``h_pf`` (photo -> film)."""
    m = (h_pf / h_pf[2, 2]).astype(np.float32)
    x = np.arange(W, dtype=np.float32)[None, :] + np.float32(0.5)
    y = np.arange(H, dtype=np.float32)[:, None] + np.float32(0.5)
    den = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    u = (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / den
    v = (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / den
    return u, v


def _rect_mask(u, v, rect, px_per_unit) -> np.ndarray:
    """Anti-aliased mask of a film-plane rectangle (x0, y0, x1, y1) from film-plane coords u, v."""
    x0, y0, x1, y1 = rect
    d = np.minimum(np.minimum(u - x0, x1 - u), np.minimum(v - y0, y1 - v))
    return np.clip(d * px_per_unit + 0.5, 0.0, 1.0)


def simulate_photo(image, severity="moderate", seed_or_rng=None, *, effects=None, background=None,
                   fill=None, long_side: int = 1280, aspect: float = 4 / 3,
                   portrait: bool = True) -> SimulatedPhoto:
    """Render a phone photo of ``image`` (a grey film) and return it with the film's true corners.

    ``severity``: 0..1 or 'mild'/'moderate'/'severe'. ``seed_or_rng``: an int seed
    (deterministic) or a ``numpy.random.Generator``. ``effects``: None (the
    default mix, :data:`PHOTO_EFFECT_PROBS`), a collection of effect names to
    apply always, or a name -> probability mapping; names in
    :data:`PHOTO_EFFECTS`. ``background``: one of :data:`BACKGROUNDS` or None
    (drawn). ``fill``: fraction of the frame the film spans, a number or a
    (lo, hi) range; None draws "film smaller than the frame" (0.45-0.8) or
    "nearly fills it" (0.85-0.97) with equal odds. The photo is RGB uint8 with
    its longer side ``long_side`` px (``aspect`` = long/short).
    """
    sev = resolve_severity(severity)
    film = _film_array(image)
    fh, fw = film.shape
    st = _Streams(seed_or_rng)
    g = st["geometry"]
    kind = background or BACKGROUNDS[int(st["background"].integers(len(BACKGROUNDS)))]
    if kind not in BACKGROUNDS:
        raise ValueError(f"unknown background {kind!r}; valid: {', '.join(BACKGROUNDS)}")
    defaults = dict(PHOTO_EFFECT_PROBS, moire=MONITOR_MOIRE_PROB if kind == "monitor" else 0.0)
    plan = _plan(effects, defaults, PHOTO_EFFECTS, sev, st["plan"])

    W, H = int(round(long_side / aspect)), int(long_side)
    if not portrait:
        W, H = H, W
    if fill is None:
        fill = g.uniform(0.45, 0.8) if g.random() < 0.5 else g.uniform(0.85, 0.97)
    elif isinstance(fill, (tuple, list)):
        fill = g.uniform(*fill)
    corners = _place_film(fw, fh, W, H, plan["rotation"], plan["perspective"], float(fill), g)

    # film plane -> photo, and every photo pixel centre back onto the film plane
    film_rect = np.array([[0, 0], [fw, 0], [fw, fh], [0, fh]], float)
    h_fp = homography(film_rect, corners)
    u, v = _film_plane_coords(np.linalg.inv(h_fp), W, H)
    px_per_unit = float(np.mean(np.linalg.norm(np.diff(np.vstack([corners, corners[:1]]), axis=0), axis=1))
                        / np.mean([fw, fh, fw, fh]))

    scene = _scene(kind, fw, fh, st["background"])
    lum, lit, film_mask, screen_mask = _render_scene(scene, film, fw, fh, u, v, h_fp, px_per_unit,
                                                     (H, W), st["background"])
    film_px = float(np.linalg.norm(corners[2] - corners[0]) / math.sqrt(2))  # ~ film side in photo px

    if plan["glare"]:
        r = st["glare"]
        n = 1 if plan["glare"] < 0.6 else 2
        uv_c = np.column_stack([r.uniform(0.1, 0.9, n) * fw, r.uniform(0.1, 0.9, n) * fh])
        centres = apply_homography(h_fp, uv_c)
        lum = lum + _glare((H, W), centres, film_px, plan["glare"], r) * scene.film_hi * film_mask
    if plan["exposure"]:
        lum = lum * np.float32(2.0 ** (plan["exposure"] * st["exposure"].uniform(-1, 1)))
    scale = long_side / 1280.0
    if plan["defocus"]:
        lum = gaussian_blur(lum, 4.5 * plan["defocus"] * scale)
    if plan["motion_blur"]:
        lum = motion_blur(lum, 16.0 * plan["motion_blur"] * scale, st["motion_blur"].uniform(0, math.pi))
    if plan["vignetting"]:
        lum = lum * _vignette((H, W), plan["vignetting"], st["vignetting"])
    gains = _cast_gains(plan["color_cast"], st["color_cast"]) if plan["color_cast"] else 1.0
    bg_tint = (scene.bg_tint * gains).astype(np.float32)
    rgb = lum[..., None] * bg_tint + (lum * lit)[..., None] * ((scene.film_tint * gains) - bg_tint)
    if plan["moire"]:
        r = st["moire"]
        pattern = _moire_pattern((H, W), r.uniform(5, 25) * scale, r) * screen_mask
        amp = 0.3 * plan["moire"] * (1 + 0.5 * r.uniform(-1, 1, 3)).astype(np.float32)
        rgb = rgb * (1 + pattern[..., None] * amp)
    if plan["noise"]:
        s = plan["noise"]
        rgb = rgb + _sensor_noise(st["noise"], lum, (0.5 + 7 * s) / 255, 0.004 * s)
    out = _to_u8(rgb)
    if plan["jpeg"]:
        out = _jpeg(out, round(95 - 65 * plan["jpeg"]))
    return SimulatedPhoto(photo=out, corners=corners, background=kind, severity=sev, effects=plan)


def _render_scene(scene: _Scene, film, fw, fh, u, v, h_fp, px_per_unit, shape, rng):
    """The scene before camera effects: brightness, where the light's colour applies (film and
    panel), the film's mask and the screen's mask (moiré lives there)."""
    H, W = shape
    size = max(fw, fh)
    # room / wall / desk behind everything
    bg = _surface(shape, scene.bg_level, scene.grain, rng)
    lum = bg.astype(np.float32)
    lit = np.zeros((H, W), np.float32)          # 1 where the light colour is the panel's/film's
    screen = None
    light = 1.0
    if scene.frame is not None:
        ml, mt, mr, mb = scene.frame
        panel = (-ml, -mt, fw + mr, fh + mb)
        if scene.bezel:
            b = scene.bezel
            bezel_mask = _rect_mask(u, v, (panel[0] - b, panel[1] - b, panel[2] + b, panel[3] + b),
                                    px_per_unit)
            lum = lum + (scene.bezel_level - lum) * bezel_mask
        screen = _rect_mask(u, v, panel, px_per_unit)
        level = np.full((H, W), scene.frame_level, np.float32)
        if scene.banding:
            period = size * rng.uniform(0.3, 0.6)
            level = level * (1 - scene.banding * np.cos(2 * math.pi * u / period) ** 2)
        lum = lum + (level - lum) * screen
        lit = screen
        if scene.kind == "lightbox":
            light = level / scene.frame_level
    # the film: its grey value p becomes film_lo .. film_hi, lit by the panel behind it
    t = Image.fromarray(film, "F").transform((W, H), Image.PERSPECTIVE, _coeffs(np.linalg.inv(h_fp)),
                                             Image.BILINEAR)
    film_lum = (scene.film_lo + (scene.film_hi - scene.film_lo) * np.asarray(t)) * light
    m = _rect_mask(u, v, (0, 0, fw, fh), px_per_unit)
    if scene.on_surface:
        # light crosses the film twice (down and back up), plus a faint sheen off its surface
        film_lum = lum * film_lum * film_lum + DESK_SHEEN
    else:
        lit = np.maximum(lit, m)
    lum = lum + (film_lum - lum) * m
    return lum.astype(np.float32), lit, m, (screen if scene.kind == "monitor" else m)


def _surface(shape, level: float, grain: float, rng: np.random.Generator) -> np.ndarray:
    """A room's wall or a desk: ``level`` with slow unevenness and, when ``grain`` > 0, wood grain of that
    amplitude along a random direction."""
    H, W = shape
    bg = level * (1 + 0.25 * _smooth_noise(rng, shape, 6))
    if grain:
        ang = rng.uniform(0, math.pi)
        ys = np.arange(H, dtype=np.float32)[:, None]
        xs = np.arange(W, dtype=np.float32)[None, :]
        across = xs * math.cos(ang) + ys * math.sin(ang) + 25 * _smooth_noise(rng, shape, 5)
        n = int(np.ceil(np.hypot(H, W))) + 200
        profile = gaussian_blur(rng.standard_normal((1, n)).astype(np.float32), 4.0)[0]
        profile = profile / (profile.std() + 1e-6)
        bg = bg * (1 + grain * np.interp(across + 100, np.arange(n), profile).astype(np.float32))
    return bg


def _coeffs(h_out_to_in: np.ndarray) -> tuple:
    """Pillow PERSPECTIVE coefficients from a 3x3 matrix mapping output to input coordinates."""
    m = h_out_to_in / h_out_to_in[2, 2]
    return tuple(float(x) for x in m.reshape(-1)[:8])


# --------------------------------------------------------------------------- rectified film (training)

def simulate_rectified(image, severity="moderate", rng=None, out_size=None, *,
                       effects=None, noise_gain: float = 1.0) -> np.ndarray:
    """What a model sees after a field photo of ``image`` was detected and rectified: grey uint8.

    The training augmentation. The device pipeline rectifies every photo
    before the models run, so the model's input is the upright film carrying
    only what rectification cannot remove: a residual corner error (a sliver
    of lightbox/background or a slightly cut edge), the film's compressed
    contrast, glare, moiré, defocus/motion blur, vignetting, a colour cast
    turned back to grey, exposure, noise and JPEG. Simulating those at the
    film's size keeps training matched to the field at a few ms per image.

    ``out_size``: None (the film's size), an int (square) or (width, height). ``noise_gain`` scales the sensor
    noise's read- and shot-noise strengths (its draws stay the same; the std grows between sqrt(gain) and gain
    times): at 1 the views carry about a quarter of the noise a straightened 1280-px photo carries at the model
    input (``benchmarks/photo_noise.py``).
    ``effects``: as in :func:`simulate_photo`, names from :data:`FILM_EFFECTS`.
    Severity 0 returns the film unchanged (byte-identical when ``out_size``
    is the film's size).
    """
    sev = resolve_severity(severity)
    film = _film_u8(image)
    fh, fw = film.shape
    if out_size is None:
        ow, oh = fw, fh
    elif isinstance(out_size, (int, np.integer)):
        ow = oh = int(out_size)
    else:
        ow, oh = (int(x) for x in out_size)
    st = _Streams(rng)
    plan = _plan(effects, FILM_EFFECT_PROBS, FILM_EFFECTS, sev, st["plan"])
    if not any(plan.values()) and (ow, oh) == (fw, fh):
        return film.copy()
    if plan["tight_crop"]:    # cropped to the image: no edge, no background, part of the film cut off
        a = _tight_crop(film, (ow, oh), plan["tight_crop"], st["tight_crop"])
    else:
        a = _residual_warp(film, (ow, oh), plan["corner_error"], st["corner_error"])
    side = math.sqrt(ow * oh)

    if plan["film_contrast"]:
        r = st["film_contrast"]
        lo = 0.15 * plan["film_contrast"] * r.random()
        hi = 1.0 - 0.25 * plan["film_contrast"] * r.random()
        a = lo + (hi - lo) * a
    if plan["low_contrast"]:
        a = _low_contrast(a, plan["low_contrast"], st["low_contrast"])
    if plan["surface"]:
        a = _on_surface(a, plan["surface"], st["surface"])
    if plan["glare"]:
        r = st["glare"]
        n = 1 if plan["glare"] < 0.6 else 2
        centres = np.column_stack([r.uniform(0.1, 0.9, n) * ow, r.uniform(0.1, 0.9, n) * oh])
        a = a + _glare((oh, ow), centres, side, plan["glare"], r)
    if plan["exposure"]:
        a = a * np.float32(2.0 ** (0.7 * plan["exposure"] * st["exposure"].uniform(-1, 1)))
    if plan["defocus"]:
        a = gaussian_blur(a, 2.0 * plan["defocus"] * side / 256)
    if plan["motion_blur"]:
        a = motion_blur(a, 6.0 * plan["motion_blur"] * side / 256, st["motion_blur"].uniform(0, math.pi))
    if plan["moire"]:
        a = a * _screen_moire((oh, ow), plan["moire"], side, st["moire"])
    if plan["pixel_grid"]:
        a = a * _pixel_grid((oh, ow), plan["pixel_grid"], st["pixel_grid"])
    if plan["vignetting"]:
        a = a * _vignette((oh, ow), plan["vignetting"], st["vignetting"])
    if plan["color_cast"]:
        # a white-balance error or a tinted screen on a grey film only shows where a channel clips
        a = np.clip(a[..., None] * _film_cast((oh, ow), plan["color_cast"], st["color_cast"]), 0, 1) @ _LUMA
    if plan["noise"]:
        s = plan["noise"]
        a = a + _noise(st["noise"], (oh, ow), a, noise_gain * (0.3 + 4 * s) / 255, noise_gain * 0.0015 * s)
    out = _to_u8(a)
    if plan["recompress"]:
        out = _recompress(out, plan["recompress"], st["recompress"])
    if plan["jpeg"]:
        out = _jpeg(out, round(95 - 55 * plan["jpeg"]))
    return out


def simulate_straightened(image, severity="moderate", seed_or_rng=None, *, long_side: int = 640,
                          max_side: int = 1024) -> np.ndarray:
    """A whole phone photo of ``image`` (:func:`simulate_photo`, ``long_side`` px, every default effect and
    background) warped back upright with the film's true corners, at the photo's own resolution (at most
    ``max_side``, as the device straightens a film it found): grey uint8.

    What the device's film finder hands the finishing and the models when it finds the film exactly -- the
    effects made at the photo's scale and then straightened, not made on the film itself as in
    :func:`simulate_rectified`. A training augmentation (``augment.photo_scene``): ~45 ms at 640 px against
    ~6 ms for :func:`simulate_rectified`.
    """
    sim = simulate_photo(_film_u8(image), severity, seed_or_rng, long_side=long_side)
    grey = Image.fromarray(sim.photo).convert("L")
    return np.asarray(warp_film(grey, sim.corners, max_side=max_side, mode="L"))


# --------------------------------------------------------------------------- real-photo looks (training)
# What ../shared/data/real_photos_dev shows and the effects above did not: films and screens cropped tightly
# to the image, screen moire at several scales and angles and the pixel grid itself, strong teal / violet /
# warm casts, washed-out levels (black up to ~0.25 of the range, white down to ~0.55) and low-res reposts
# compressed twice. Each takes the effect's strength (severity x jitter, 0.25-0.5 at "moderate") and a
# generator of its own; float32 images in [0, 1] unless stated.

def _tight_crop(film_u8: np.ndarray, out_size, strength: float, rng) -> np.ndarray:
    """A crop inside the film (each side moved in by up to ~30% x strength of the side, a slight tilt),
    resampled to ``out_size``: what a photo cropped to the radiograph leaves, no edge or background."""
    fh, fw = film_u8.shape
    ow, oh = out_size
    size = math.sqrt(fw * fh)
    cut = rng.uniform(0.02, 0.6 * strength, 4) * np.array([fw, fh, fw, fh])   # left, top, right, bottom
    base = np.array([[cut[0], cut[1]], [fw - cut[2], cut[1]], [fw - cut[2], fh - cut[3]], [cut[0], fh - cut[3]]])
    inner = np.minimum(cut.min(), 0.01 * size)
    src = base + rng.uniform(-1, 1, (4, 2)) * inner          # a tilt that stays inside the film
    dst = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], float)
    img = Image.fromarray(film_u8, "L").transform((ow, oh), Image.PERSPECTIVE, _coeffs(homography(dst, src)),
                                                  Image.BILINEAR)
    return np.asarray(img, np.float32) * np.float32(1 / 255)


def _low_contrast(a: np.ndarray, strength: float, rng) -> np.ndarray:
    """Washed-out levels: black lifted to up to 0.5 x strength of the range, white down to 1 - 0.9 x strength
    (at strength 0.5: black up to 0.25, white down to 0.55, the range the real dev photos span)."""
    lo = 0.5 * strength * rng.random()
    hi = 1.0 - 0.9 * strength * rng.random()
    return lo + (hi - lo) * a


def _on_surface(a: np.ndarray, strength: float, rng) -> np.ndarray:
    """A film lying on a desk, wall or table in room light, as :func:`simulate_photo`'s desk scene renders it:
    the light crosses the film twice (its transmission squared, a tone curve no lightbox gives), the surface's
    unevenness and wood grain show through, and a faint sheen lifts the blacks. The grain grows with
    ``strength``; the tone curve is the scene's."""
    lo, hi = rng.uniform(*DESK_FILM[0]), rng.uniform(*DESK_FILM[1])
    t = lo + (hi - lo) * a
    grain = rng.uniform(*DESK_GRAIN) * min(1.0, 2 * strength)
    bg = _surface(a.shape, rng.uniform(*DESK_LEVEL), grain, rng)
    return (bg * t * t + DESK_SHEEN).astype(np.float32)


def _screen_moire(shape, strength: float, side: float, rng) -> np.ndarray:
    """Multiplicative moire of one to three interference patterns, each at its own scale (period 3-40 px
    per 256) and angle, as a screen's pixel grid beats with the sensor's at the distance it was taken."""
    out = np.ones(shape, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        period = math.exp(rng.uniform(math.log(3), math.log(40))) * side / 256
        out *= 1 + np.float32(0.25 * strength * rng.uniform(0.4, 1.0)) * _moire_pattern(shape, period, rng)
    return out


def _pixel_grid(shape, strength: float, rng) -> np.ndarray:
    """A screen's pixel grid still resolved in the image (low-res photos of monitors): dark lines every 2-5
    px, nearly axis-aligned."""
    h, w = shape
    period = rng.uniform(2.0, 5.0)
    theta = math.radians(rng.uniform(-4, 4))
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = yy * math.cos(theta) - xx * math.sin(theta)
    lines = np.maximum(np.cos(np.pi * u / period) ** 8, np.cos(np.pi * v / period) ** 8)
    return (1 - 0.6 * strength * lines).astype(np.float32)


def _film_cast(shape, strength: float, rng) -> np.ndarray:
    """Per-pixel RGB gains (H, W, 3): a white-balance error (warm/cool, green/magenta) or, half the time, one of
    :data:`CAST_HUES` at up to twice the strength, uneven across the image (a left-right or top-bottom
    gradient), normalised to keep the luma of grey."""
    if rng.random() < 0.5:
        gains = _cast_gains(strength, rng)
    else:
        hue = np.array(CAST_HUES[list(CAST_HUES)[int(rng.integers(len(CAST_HUES)))]], np.float32)
        gains = 1 + (hue - 1) * np.float32(min(1.0, 2 * strength) * rng.uniform(0.5, 1.0))
        gains = gains / float(gains @ _LUMA)
    h, w = shape
    ramp = np.linspace(-1, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
    ramp = ramp[None, :] if len(ramp) == w else ramp[:, None]
    uneven = 1 + np.float32(0.3 * strength * rng.uniform(-1, 1)) * ramp[..., None]
    return ((gains - 1) * uneven + 1).astype(np.float32)


def _recompress(u8: np.ndarray, strength: float, rng) -> np.ndarray:
    """A low-res repost: shrunk to 35-80% of its size, JPEG-compressed hard, scaled back up (uint8 in/out)."""
    h, w = u8.shape[:2]
    k = rng.uniform(0.35, 0.8)
    small = Image.fromarray(u8).resize((max(8, round(w * k)), max(8, round(h * k))), Image.BILINEAR)
    small = _jpeg(np.asarray(small), round(80 - 80 * strength * rng.uniform(0.5, 1.0)))
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def _residual_warp(film_u8: np.ndarray, out_size, strength: float, rng) -> np.ndarray:
    """Resample the film through slightly wrong corners, as a detector a few pixels off would.
    Returns float32 in [0, 1]."""
    fh, fw = film_u8.shape
    ow, oh = out_size
    img = Image.fromarray(film_u8, "L")
    if strength <= 0:
        if (ow, oh) != (fw, fh):
            img = img.resize((ow, oh), Image.BILINEAR)
        return np.asarray(img, np.float32) * np.float32(1 / 255)
    size = math.sqrt(fw * fh)
    jitter = np.clip(rng.normal(0, 0.012 * size * strength, (4, 2)), -0.03 * size, 0.03 * size)
    grow = rng.uniform(-0.015, 0.015) * size * strength   # a consistently loose or tight crop
    base = np.array([[0, 0], [fw, 0], [fw, fh], [0, fh]], float)
    outward = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    src = base + jitter + grow * outward
    dst = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], float)
    fill = int(rng.choice([242, 10, 90], p=[0.4, 0.4, 0.2]))      # lightbox, dark room, desk
    img = img.transform((ow, oh), Image.PERSPECTIVE, _coeffs(homography(dst, src)), Image.BILINEAR,
                        fillcolor=fill)
    return np.asarray(img, np.float32) * np.float32(1 / 255)


# --------------------------------------------------------------------------- screens and tight crops
#
# What real field photos showed that the scenes above miss (``../shared/data/real_photos_dev``): the
# photo cropped to the film or the screen (no edge in view), a monitor's pixel grid and the moiré it
# beats into against the camera's sensor, strong teal / violet / warm casts, washed-out screens.

SCREEN_TINTS = {"neutral": (1.0, 1.0, 1.0), "teal": (0.8, 1.0, 1.08), "violet": (1.12, 0.78, 1.3),
                "warm": (1.12, 1.0, 0.82), "blue": (0.85, 0.97, 1.2)}


def simulate_screen_photo(image, severity="moderate", seed_or_rng=None, *, long_side: int = 1280,
                          period=None, crop=None, tint=None) -> SimulatedPhoto:
    """A phone photo of ``image`` shown on a monitor, cropped tightly to the image, as field photos are.

    The screen is modelled pixel by pixel: every screen pixel has three vertical sub-pixel stripes
    (R, G, B) with dark gaps between them and between rows. The camera integrates each of its pixels
    over its own footprint on that grid, seen slightly rotated and in a little perspective, so the grid
    shows as a fine pattern where the camera resolves it and beats into moiré bands where it does not,
    as on a real photo. Then: lens blur, the screen's contrast, a colour cast,
    uneven brightness, sensor noise and JPEG.

    ``period``: screen pixels' pitch in photo pixels (None: drawn in 1.3-6); ``crop``: how far the
    frame reaches beyond the image on each side as a fraction of its size, negative = cut into it
    (None: drawn in -0.06..0.03 per side, so a sliver of the viewer's dark background may show);
    ``tint``: a name in :data:`SCREEN_TINTS`, (r, g, b) gains or None (drawn). Returns a
    :class:`SimulatedPhoto` whose ``corners`` are the image's true corners in the photo (they may lie
    outside it) and whose ``background`` is 'screen'.
    """
    return _flat_photo(image, severity, seed_or_rng, long_side, crop, tint, screen=True, period=period)


def simulate_print_photo(image, severity="moderate", seed_or_rng=None, *, long_side: int = 1280,
                         crop=None, tint=None) -> SimulatedPhoto:
    """A phone photo of ``image`` printed on paper (a document, a report with a figure), cropped tightly.

    Paper reflects: the page is the image between the ink's black (0.04-0.15) and the paper's white
    (0.7-0.95), lit unevenly by a lamp or a window (a brightness gradient, vignetting), seen slightly
    rotated and in a little perspective, with a warm or neutral cast, noise and JPEG. ``crop`` and
    ``tint`` as in :func:`simulate_screen_photo` (outside the page: a dark desk); ``background`` 'paper'.
    """
    return _flat_photo(image, severity, seed_or_rng, long_side, crop, tint, screen=False)


def _flat_photo(image, severity, seed_or_rng, long_side, crop, tint, *, screen: bool,
                period=None) -> SimulatedPhoto:
    """A tight photo of a flat image (a screen or a page), the shared part of the two simulators above."""
    sev = resolve_severity(severity)
    film = _film_array(image)
    fh, fw = film.shape
    st = _Streams(seed_or_rng)
    g = st["geometry"]
    p = float(period) if period is not None else float(g.uniform(1.3, 6.0))
    margins = (np.asarray(crop, float) * np.ones(4) if crop is not None
               else g.uniform(-0.06, 0.03, 4))                       # left, top, right, bottom
    # the camera's view in image units, then the photo's size from the long side
    vx0, vy0 = -margins[0] * fw, -margins[1] * fh
    vx1, vy1 = fw + margins[2] * fw, fh + margins[3] * fh
    vw, vh = vx1 - vx0, vy1 - vy0
    s = long_side / max(vw, vh)                                      # photo px per image px
    W, H = max(8, int(round(vw * s))), max(8, int(round(vh * s)))
    # photo -> image plane: a small roll and keystone around the view's centre
    roll = math.radians(3.0) * sev * g.uniform(-1, 1)
    keystone = 0.04 * sev * g.uniform(-1, 1, 2)
    ctr = np.array([W / 2, H / 2])
    photo_rect = np.array([[0, 0], [W, 0], [W, H], [0, H]], float)
    local = photo_rect - ctr
    c, sn = math.cos(roll), math.sin(roll)
    local = local @ np.array([[c, -sn], [sn, c]]).T
    local[:, 0] *= 1 + keystone[0] * np.sign(local[:, 1])
    local[:, 1] *= 1 + keystone[1] * np.sign(local[:, 0])
    view = local / s + np.array([(vx0 + vx1) / 2, (vy0 + vy1) / 2])
    h_pi = homography(photo_rect, view)                              # photo -> image
    corners = apply_homography(np.linalg.inv(h_pi), np.array([[0, 0], [fw, 0], [fw, fh], [0, fh]], float))

    # the content as the camera sees it (smooth: no supersampling needed)
    t = Image.fromarray(film, "F").transform((W, H), Image.PERSPECTIVE, _coeffs(h_pi), Image.BILINEAR,
                                             fillcolor=-1.0)
    content = np.asarray(t, np.float32)
    outside = content < -0.5                                          # a viewer's background / the desk
    if screen:
        lo, hi = g.uniform(0.0, 0.08 + 0.15 * sev), g.uniform(0.75, 1.0)
    else:
        lo, hi = g.uniform(0.04, 0.15), g.uniform(0.7, 0.95)           # ink on paper
    lum = np.where(outside, g.uniform(0.02, 0.1), lo + (hi - lo) * np.clip(content, 0, 1)).astype(np.float32)
    effects = {"crop": [float(v) for v in margins], "roll_deg": math.degrees(roll)}
    if screen:
        mask, grid = _screen_grid(h_pi, (H, W), s / p, sev, g)
        rgb = lum[..., None] * mask
        effects.update(period=p, **grid)
    else:
        r = st["exposure"]                                             # a lamp or a window to one side
        ang = r.uniform(0, 2 * math.pi)
        ramp = (np.cos(ang) * (np.arange(W, dtype=np.float32)[None, :] / W - 0.5)
                + np.sin(ang) * (np.arange(H, dtype=np.float32)[:, None] / H - 0.5))
        rgb = (lum * (1 + (0.15 + 0.5 * sev) * r.random() * ramp))[..., None] * np.ones(3, np.float32)
    cast = _screen_tint(tint, sev, st["color_cast"]) if screen or tint is not None else \
        _cast_gains(0.5 * max(sev, 0.1), st["color_cast"])
    rgb = rgb * cast
    if sev > 0:
        r = st["vignetting"]
        rgb = rgb * (1 + 0.25 * sev * _smooth_noise(r, (H, W), 3))[..., None]
        rgb = rgb * _vignette((H, W), 0.6 * sev * r.random(), r)[..., None]
        rgb = rgb + _sensor_noise(st["noise"], lum, (0.5 + 6 * sev) / 255, 0.003 * sev)
    out = _to_u8(rgb)
    if sev > 0:
        out = _jpeg(out, round(95 - 55 * sev * st["jpeg"].uniform(0.5, 1.0)))
    effects["tint"] = [float(v) for v in cast]
    return SimulatedPhoto(photo=out, corners=corners, background="screen" if screen else "paper", severity=sev,
                          effects=effects)


def _screen_grid(h_pi: np.ndarray, shape, screen_per_image: float, sev: float, g) -> tuple[np.ndarray, dict]:
    """(H, W, 3) gains of a screen's sub-pixel grid as the camera's pixels integrate it, and its parameters.

    Each camera pixel integrates the stripes over its own footprint (box integration along each axis of
    the grid: exact for an upright grid, close for a small roll); then lens blur, and only part of the
    grid's contrast survives focus."""
    H, W = shape
    fill_x = g.uniform(0.7, 0.95) - 0.25 * sev * g.random()        # lit share of a sub-pixel stripe's width
    fill_y = g.uniform(0.8, 0.97) - 0.2 * sev * g.random()         # ... and of a pixel row's height
    m = (h_pi / h_pi[2, 2]).astype(np.float32)
    x = np.arange(W, dtype=np.float32)[None, :] + np.float32(0.5)
    y = np.arange(H, dtype=np.float32)[:, None] + np.float32(0.5)
    den = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    u = (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / den * np.float32(screen_per_image)
    v = (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / den * np.float32(screen_per_image)
    jac = np.abs(m[:2, :2]) * screen_per_image                     # screen px per photo px, near the centre
    wu, wv = float(jac[0].sum()), float(jac[1].sum())
    rows = _grid_average(v, 0.5, fill_y, wv)
    mask = np.stack([rows * _grid_average(u, (ch + 0.5) / 3, fill_x / 3, wu) for ch in range(3)], -1)
    optics = g.uniform(0.5, 1.3)
    amp = np.float32(0.35 + 0.65 * sev * g.uniform(0.5, 1.0))         # how much of the grid survives focus
    mask = np.stack([1 + amp * (gaussian_blur(mask[..., ch], optics) - 1) for ch in range(3)], -1)
    return mask, {"fill": [float(fill_x), float(fill_y)], "optics": float(optics), "grid_amplitude": float(amp)}


def _grid_average(u: np.ndarray, centre: float, fill: float, width: float) -> np.ndarray:
    """The mean of a period-1 stripe pattern (lit on ``centre`` +- ``fill``/2, dark elsewhere) over
    windows ``width`` wide centred at ``u``, divided by ``fill`` (so its mean is 1)."""
    a = centre - fill / 2

    def cumulative(t):
        return np.floor(t) * fill + np.clip(t - np.floor(t) - a, 0, fill)

    w = max(width, 1e-3)
    return ((cumulative(u + w / 2) - cumulative(u - w / 2)) * np.float32(1 / (w * fill))).astype(np.float32)


def _screen_tint(tint, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Per-channel gains of a screen photo's colour cast (a name, gains, or drawn), keeping luma."""
    if tint is None:
        names = list(SCREEN_TINTS)
        base = np.array(SCREEN_TINTS[names[int(rng.integers(len(names)))]], np.float32)
        gains = 1 + (base - 1) * np.float32(min(1.0, 0.4 + severity))
    elif isinstance(tint, str):
        if tint not in SCREEN_TINTS:
            raise ValueError(f"unknown tint {tint!r}; valid: {', '.join(SCREEN_TINTS)}")
        gains = np.array(SCREEN_TINTS[tint], np.float32)
    else:
        gains = np.asarray(tint, np.float32)
    return (gains / float(gains @ _LUMA)).astype(np.float32)


def simulate_cropped_photo(image, severity="moderate", seed_or_rng=None, *, background=None,
                           long_side: int = 1280, inset=(0.0, 0.08)) -> SimulatedPhoto:
    """A phone photo of ``image`` cropped to the film: no film edge in view.

    :func:`simulate_photo` renders the film filling most of the frame (lightbox, desk or dark room
    unless ``background`` says), then the photo is cut to the largest upright rectangle inside the film
    and shrunk further by a fraction drawn from ``inset`` on each side. ``corners``: the film's true
    corners in the cropped photo (outside it).
    """
    st = _Streams(seed_or_rng)
    kind = background or ("lightbox", "desk", "dark")[int(st["background"].integers(3))]
    sim = simulate_photo(image, severity, st["geometry"], background=kind, fill=(0.85, 0.95),
                         long_side=long_side)
    q = sim.corners
    x0, y0 = max(q[0, 0], q[3, 0]), max(q[0, 1], q[1, 1])
    x1, y1 = min(q[1, 0], q[2, 0]), min(q[2, 1], q[3, 1])
    cut = st["plan"].uniform(*inset, 4) * np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
    box = (int(math.ceil(x0 + cut[0])), int(math.ceil(y0 + cut[1])),
           int(math.floor(x1 - cut[2])), int(math.floor(y1 - cut[3])))
    photo = np.ascontiguousarray(sim.photo[box[1]:box[3], box[0]:box[2]])
    return SimulatedPhoto(photo=photo, corners=q - [box[0], box[1]], background=kind, severity=sim.severity,
                          effects=dict(sim.effects, crop_box=list(box)))
