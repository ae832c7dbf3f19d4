"""Inputs without data: a synthetic film, a simulated 12-MP phone JPEG of it, folders of copies."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ['mixed_batch', 'phone_jpeg', 'synthetic_film', 'write_batch']


def synthetic_film(size: int = 1024, seed: int = 0) -> Image.Image:
    """A grey, film-like chest image (body, two lung fields, spine, ribs, grain) for timing only."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j].astype(np.float32)
    body = np.exp(-((x / 0.85) ** 4 + (y / 1.05) ** 4))
    lungs = sum(np.exp(-(((x - cx) / 0.28) ** 2 + ((y + 0.05) / 0.55) ** 2)) for cx in (-0.38, 0.38))
    spine = np.exp(-(x / 0.07) ** 2) * (y > -0.7)
    ribs = 0.08 * np.sin(18 * (y + 0.15 * x ** 2)) * lungs
    a = 0.15 + 0.6 * body - 0.35 * lungs + 0.3 * spine + ribs + rng.normal(0, 0.02, (size, size))
    return Image.fromarray(np.clip(a * 255, 0, 255).astype(np.uint8), "L")


def phone_jpeg(film: Image.Image, *, long_side: int = 4000, quality: int = 90, seed: int = 0,
               render_side: int | None = None) -> bytes:
    """A phone photo of ``film`` (simulated: perspective, light, noise...), ``long_side`` px, as JPEG bytes.

    The scene is rendered at ``render_side`` px (default half of ``long_side``), enlarged, and given
    sensor grain at full size: rendering 12 MP directly peaked at 0.7 GB (a 1 GB Pi must run bench),
    this at about 0.2 GB over the caller. The pipeline decodes a 12-MP JPEG at 1/4 scale, so it sees
    the same scene; the grain keeps the JPEG as dense as a full render's (same decode work).
    """
    from ..photosim import simulate_photo

    sim = simulate_photo(film, "moderate", seed, background="desk", fill=0.8,
                         long_side=render_side or max(1, long_side // 2))
    size = (round(long_side * 3 / 4), long_side)      # portrait 4:3, as simulate_photo draws it
    pixels = np.array(Image.fromarray(sim.photo, "RGB").resize(size, Image.BICUBIC))
    del sim
    rng = np.random.default_rng(seed)
    for y in range(0, pixels.shape[0], 256):      # in strips: no full-size float or int16 copy
        strip = pixels[y:y + 256].astype(np.int16)
        grain = rng.normal(0, _GRAIN, strip.shape[:2] + (1,)) + rng.normal(0, _GRAIN / 2, strip.shape)
        pixels[y:y + 256] = np.clip(strip + np.rint(grain).astype(np.int16), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


#: Sensor grain added at full size (grey levels, per pixel; half of it per channel): with it the 12-MP JPEG
#: of the synthetic film takes as long to decode as a full-size render's did (see benchmarks/RESULTS.md).
_GRAIN = 2.5


def write_batch(folder: Path, sources: list, n: int) -> list[Path]:
    """``n`` PNG files in ``folder``, cycling through ``sources`` (paths or PIL images)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        dst = folder / f"img_{i:05d}.png"
        if isinstance(src, Image.Image):
            src.save(dst)
        else:
            shutil.copyfile(src, dst)
        out.append(dst)
    return out



def mixed_batch(folder: Path, film: Image.Image, photo: bytes, n: int) -> list[Path]:
    """``n`` files in ``folder`` alternating a 1024-px PNG of ``film`` and the JPEG ``photo``: the two kinds
    of large input a batch gets (a scanned film, a phone photo). The first two are the files, the rest
    symbolic links to them (copies where links cannot be made)."""
    folder.mkdir(parents=True, exist_ok=True)
    big = film if max(film.size) == 1024 else film.resize(
        tuple(round(v * 1024 / max(film.size)) for v in film.size), Image.LANCZOS)
    out = []
    for i in range(n):
        dst = folder / (f"{i:05d}_film_1024.png" if i % 2 == 0 else f"{i:05d}_photo_12mp.jpg")
        if i == 0:
            big.save(dst)
        elif i == 1:
            dst.write_bytes(photo)
        else:
            try:
                dst.symlink_to(out[i % 2].name)
            except OSError:
                shutil.copyfile(out[i % 2], dst)
        out.append(dst)
    return out
