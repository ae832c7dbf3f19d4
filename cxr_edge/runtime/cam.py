"""Class activation maps (CAM) from the int8 model's last feature map, in numpy, on the device.

Every cxr-edge model ends in global average pooling and one Dense layer, so
its logit for label *j* is the image-wide mean of a per-location score::

    logit_j = mean_xy( features[y, x, :] @ kernel[:, j] ) + bias[j]

The map of *j* is that per-location score, ``features @ kernel[:, j]``: where
on the film the evidence that raised (or lowered) the logit came from. The
exported model returns ``features`` (the last convolution, e.g. 7 x 7 x 1280
at 224 px) as a second output; ``kernel`` and ``bias`` travel inside the model
as the embedded member ``head.npz`` (keys ``kernel`` (F, L) and ``bias``
(L,), written by ``cxr-edge export``). For a softmax head (cxr4) the map is
contrastive: ``features @ (kernel[:, j] - sum_k p_k kernel[:, k])``, the
evidence for *j* over the classes the model weighed against it (the gradient
of log p_j); otherwise every class map would light up the same lungs.

A map is shown as its positive part scaled by its own maximum (255 = the
strongest evidence for that label in this image), upsampled from the feature
grid to the model's square input, cut back to the film (the letterbox bars
removed) and stretched over the film.

What a CAM can tell a clinician
  * which broad region of the film drove this label's score up: a sanity
    check that the model looked at the lungs and not at a marker, a tube, a
    text label, the letterbox edge or a glare spot;
  * for an unexpected result, whether the evidence sits where the finding
    would be.

What it cannot tell
  * it is not a segmentation or an outline of a lesion: at 224 px one feature
    cell covers 32 x 32 input pixels (about a seventh of the film), so the map
    is coarse and blurred by upsampling;
  * it does not show that a finding is present: a map exists for any label,
    and each map is scaled to its own maximum, so a weak result looks as
    "hot" as a strong one. Read the probability, not the colour;
  * a hot spot is a correlation the model learned, which may be a shortcut
    (a hospital's marker, a pacemaker, the film's edge), not the pathology;
  * a cold region is not proof of normal tissue, and the int8 features are
    quantized, so small differences within a map are noise.
The film itself is what the clinician reads.

numpy + Pillow only.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import PackError
from ..tasks import InputSpec
from .features import FEATURES_ROLE
from .safezip import open_npz

__all__ = ["class_maps", "colormap", "film_box", "Head", "HEAD_MEMBER", "head_of", "heatmaps", "MAX_SIDE", "overlay",
           "OVERLAY_MAX_SIDE", "to_display", "to_film", "write_overlays"]

log = logging.getLogger(__name__)

HEAD_MEMBER = "head.npz"
MAX_SIDE = 512           # heatmaps are made at the film's size, but no larger (the map is 7 x 7 cells)
OVERLAY_MAX_SIDE = 1024  # overlay PNGs are drawn at the film's size, but no larger


@dataclass(frozen=True)
class Head:
    """The classifier head: ``kernel`` (F, L) float32, ``bias`` (L,) float32 and the activation."""

    kernel: np.ndarray
    bias: np.ndarray
    activation: str = "sigmoid"

    @classmethod
    def from_npz(cls, data: bytes, *, activation: str, num_labels: int, source: str = HEAD_MEMBER) -> "Head":
        try:
            with open_npz(data, source=source) as z:
                kernel, bias = np.asarray(z["kernel"], np.float32), np.asarray(z["bias"], np.float32)
        except (KeyError, ValueError, TypeError, OSError, zipfile.BadZipFile) as exc:
            raise PackError(f"{source}: the head weights are unreadable or lack 'kernel'/'bias' ({exc}); "
                            "re-export the model with cxr-edge export") from exc
        if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
            raise PackError(f"{source}: the head weights hold NaN or infinite values; re-export the model with "
                            "cxr-edge export")
        if kernel.ndim != 2 or kernel.shape[1] != num_labels or bias.shape != (num_labels,):
            raise PackError(f"{source}: head kernel {kernel.shape} / bias {bias.shape} do not fit {num_labels} "
                            "labels; re-export the model with cxr-edge export")
        return cls(kernel, bias, activation)

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, kernel=self.kernel.astype(np.float32), bias=self.bias.astype(np.float32))
        return buf.getvalue()


def head_of(model) -> Head | None:
    """The head of a :class:`~cxr_edge.runtime.pipeline.LoadedModel` (or a PackModel), or None when the model
    carries no ``head.npz`` or has no ``features`` output (then it can give no heatmaps)."""
    meta = model.metadata
    member = (meta.extras.get("head") or {}).get("file", HEAD_MEMBER)
    if member not in model.files or FEATURES_ROLE not in meta.outputs:
        return None
    return Head.from_npz(model.files[member], activation=meta.activation, num_labels=len(meta.labels),
                         source=f"{meta.task} model: {member}")


def class_maps(features: np.ndarray, head: Head, labels: list[int], probs: np.ndarray | None = None) -> np.ndarray:
    """Per-location evidence maps (K, h, w) float32 for the label indices ``labels``.

    ``features`` is the (h, w, F) feature map of one image. For a softmax head
    ``probs`` (L,) makes the maps contrastive (see the module docstring).
    """
    f = np.asarray(features, np.float32)
    if f.ndim != 3 or f.shape[-1] != head.kernel.shape[0]:
        raise ValueError(f"features {f.shape} do not fit a head with {head.kernel.shape[0]} inputs")
    w = head.kernel[:, labels]
    if head.activation == "softmax" and probs is not None:
        p = np.asarray(probs, np.float32)
        w = w - (head.kernel @ (p / max(float(p.sum()), 1e-12)))[:, None]
    return np.moveaxis(f @ w, -1, 0)


def film_box(spec: InputSpec, film_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Where the film lies on the model's square input (x0, y0, x1, y1), as ``fit_to_square`` put it."""
    size = spec.size
    w, h = film_size
    if spec.resize == "stretch" or w == h:
        return 0.0, 0.0, float(size), float(size)
    s = size / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    x0, y0 = (size - nw) // 2, (size - nh) // 2
    return float(x0), float(y0), float(x0 + nw), float(y0 + nh)


def to_film(cam: np.ndarray, spec: InputSpec, film_size: tuple[int, int], max_side: int = MAX_SIDE) -> np.ndarray:
    """A feature-grid map (h, w) resampled onto the film: float32 (H, W), the film's size capped at ``max_side``.

    The film's box on the square input (the letterbox undone) is mapped onto
    the feature grid, whose cells cover ``spec.size / w`` input pixels each,
    and that part of the map is upsampled bilinearly (Pillow, one C call).
    """
    cam = np.asarray(cam, np.float32)
    gh, gw = cam.shape
    fw, fh = film_size
    k = min(1.0, max_side / max(fw, fh))
    size = (max(1, round(fw * k)), max(1, round(fh * k)))
    x0, y0, x1, y1 = film_box(spec, film_size)
    box = (x0 * gw / spec.size, y0 * gh / spec.size, x1 * gw / spec.size, y1 * gh / spec.size)
    out = Image.fromarray(np.ascontiguousarray(cam), "F").resize(size, Image.BILINEAR, box=box)
    return np.asarray(out, np.float32)


def to_display(cam: np.ndarray) -> np.ndarray:
    """uint8 map for display: the positive evidence scaled to this map's maximum (255); all 0 when none."""
    pos = np.maximum(np.asarray(cam, np.float32), 0)
    top = float(pos.max()) if pos.size else 0.0
    if top <= 0:
        return np.zeros(pos.shape, np.uint8)
    return np.round(pos * (255.0 / top)).astype(np.uint8)


def heatmaps(features: np.ndarray, head: Head, spec: InputSpec, labels: dict[str, int], film_size,
             probs: np.ndarray | None = None, max_side: int = MAX_SIDE) -> dict[str, np.ndarray]:
    """{name: uint8 (H, W) display map over the film} for ``labels`` ({name: label index})."""
    if not labels:
        return {}
    maps = class_maps(features, head, list(labels.values()), probs)
    return {name: to_display(to_film(m, spec, film_size, max_side)) for name, m in zip(labels, maps)}


# --------------------------------------------------------------------------- drawing


def colormap(v: np.ndarray) -> np.ndarray:
    """A blue→cyan→yellow→red ramp (float RGB in 0..1) for values in 0..1, without matplotlib."""
    r = np.clip(4 * v - 1.5, 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.stack([r, g, b], -1)


def overlay(film: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``heatmap`` (uint8 HxW, 255 = strongest) stretched over ``film`` and blended in where it is strong:
    cold regions keep the film's own pixels."""
    heat = Image.fromarray(np.asarray(heatmap, dtype=np.uint8))
    if heat.size != film.size:
        heat = heat.resize(film.size, Image.BILINEAR)
    v = np.asarray(heat, np.float32)[..., None] / 255.0
    base = np.asarray(film.convert("RGB"), np.float32) / 255.0
    mixed = base * (1 - alpha * v) + colormap(v[..., 0]) * (alpha * v)
    return Image.fromarray(np.round(mixed * 255).astype(np.uint8), "RGB")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "x"


def write_overlays(film: Image.Image, maps: dict[str, np.ndarray], out_dir, stem: str,
                   taken: set | None = None, *, overwrite: bool = False) -> dict[str, str]:
    """Write one overlay PNG per map as ``OUT_DIR/<stem>_<label>.png`` (atomically); returns {label: path}.

    ``taken`` (a set shared over a batch) makes names unique when two inputs
    have the same stem: the later one gets ``-2``, ``-3``... An existing file
    is replaced only with ``overwrite``. Raises
    :class:`~cxr_edge.errors.OutputError` when a file cannot be written.
    """
    from .atomic import write_atomic
    from ..errors import OutputError

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the heatmap folder {out_dir} ({exc.strerror or exc}); choose a folder "
                          "you may write to.", path=out_dir) from exc
    taken = set() if taken is None else taken
    base, n = _safe(stem), 1
    while any(f"{base}{'' if n == 1 else f'-{n}'}_{_safe(lbl)}" in taken for lbl in maps):
        n += 1
    base = base if n == 1 else f"{base}-{n}"
    shown = film
    if max(film.size) > OVERLAY_MAX_SIDE:
        k = OVERLAY_MAX_SIDE / max(film.size)
        shown = film.resize((max(1, round(film.size[0] * k)), max(1, round(film.size[1] * k))), Image.BILINEAR)
    written = {}
    for label, heat in maps.items():
        name = f"{base}_{_safe(label)}"
        taken.add(name)
        buf = io.BytesIO()
        overlay(shown, heat).save(buf, format="PNG")
        path = out_dir / f"{name}.png"
        write_atomic(path, buf.getvalue(), overwrite=overwrite)
        written[label] = str(path)
    return written
