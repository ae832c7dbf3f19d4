"""Test-time augmentation: the same film seen a few slightly different ways, the answers averaged.

The views are made from the model's own square input (after ``normalize``),
so they cost no extra decoding:

* the input itself (view 0: heatmaps and the OOD score use this one);
* a centre zoom-in (the middle ``zoom`` of the canvas, scaled back up);
* two diagonal shifts of ``shift`` of the side, the uncovered strip black,
  as the letterbox bars are.

These stay within what training augmentation showed the models (zoom ±8 %,
shift ±4 % in the default recipes). A horizontal flip is added only when the
model was trained with flips (``hflip`` in the model metadata's ``training``
record): laterality matters on a chest film (heart, aortic knob, stomach
bubble), and the default recipes train without flips, so by default there is
no flip view.

The views run as one batch through the interpreter and their probabilities
(after the pack's temperature) are averaged. numpy + Pillow only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["trained_with_flips", "TTAConfig", "uses_flip", "views"]


@dataclass(frozen=True)
class TTAConfig:
    """Which views: ``zoom`` (the kept fraction of the canvas, 1 = none), ``shift`` (fraction of the side,
    0 = none) and ``flip`` (True: a flip view for models trained with flips, and only for them;
    False: never)."""

    zoom: float = 0.92
    shift: float = 0.03
    flip: bool = True

    def view_names(self, flip: bool) -> list[str]:
        names = ["identity"]
        if self.zoom < 1:
            names.append(f"zoom {self.zoom:g}")
        if self.shift > 0:
            names += [f"shift +{self.shift:g}", f"shift -{self.shift:g}"]
        if flip:
            names.append("hflip")
        return names


def trained_with_flips(training: dict) -> bool:
    """Whether a model's ``training`` metadata says it was trained with horizontal flips (default: no)."""
    training = training or {}
    augment = training.get("augment") or {}
    return bool(augment.get("hflip", training.get("hflip", False)))


def _zoom(x: np.ndarray, keep: float) -> np.ndarray:
    """The middle ``keep`` of a (S, S, C) float image, scaled back to (S, S, C) bilinearly."""
    size = x.shape[0]
    crop = max(1, round(size * keep))
    a = (size - crop) // 2
    chans = [Image.fromarray(np.ascontiguousarray(x[a:a + crop, a:a + crop, c]), "F").resize((size, size),
                                                                                           Image.BILINEAR)
             for c in range(x.shape[2])]
    return np.stack([np.asarray(c, np.float32) for c in chans], -1)


def _shift(x: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
    out = np.full_like(x, fill)
    h, w = x.shape[:2]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def views(x: np.ndarray, config: TTAConfig = TTAConfig(), *, fill: float = -1.0, flip: bool = False) -> np.ndarray:
    """The views (V, S, S, C) float32 of one model input (S, S, C); view 0 is the input itself.

    ``fill`` is the input value of a black pixel (the spec's ``offset``), used
    for the strips a shift uncovers.
    """
    x = np.asarray(x, np.float32)
    if x.ndim == 2:
        x = x[..., None]
    out = [x]
    if config.zoom < 1:
        out.append(_zoom(x, config.zoom))
    if config.shift > 0:
        d = max(1, round(x.shape[0] * config.shift))
        out += [_shift(x, d, d, fill), _shift(x, -d, -d, fill)]
    if flip:
        out.append(x[:, ::-1])
    return np.stack(out)


def uses_flip(config: TTAConfig, training: dict) -> bool:
    """Whether a model gets the flip view: allowed by ``config`` and trained with flips."""
    return bool(config.flip) and trained_with_flips(training)
