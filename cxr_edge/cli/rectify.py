"""``cxr-edge rectify``: find the film in a phone photo and save it upright."""

from __future__ import annotations

import click

from . import json_text

__all__ = ["rectify"]


@click.command()
@click.argument("photo", type=click.Path(path_type=str, readable=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the upright film (PNG): a new file, or an existing one with --force.")
@click.option("--force", is_flag=True, help="Replace --out when it exists (never a link, device or FIFO).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def rectify(photo, out, force, as_json):
    """Find the X-ray film in PHOTO, straighten it and write it to --out as PNG.

    PHOTO is a phone photo of a film on a lightbox, a window, a desk or a
    monitor. The film's four corners are found, the film is warped to an
    upright rectangle with its own proportions, a monitor's pixel grid or
    moiré is filtered out, and its grey levels are stretched to the full
    range (a photographed film rarely spans it): what the models see. A photo
    with no film edges in view is taken as cropped to the film or screen: its
    flat borders (a bezel, a margin) are trimmed and it is finished the same
    way. A grey digital image (a scan, a DICOM export) has no film border to
    find: it is written as the 8-bit grey image the models see (16-bit and
    DICOM images scaled to 0-255).

    \b
    Examples:
      cxr-edge rectify IMG_2041.jpg --out film.png
      cxr-edge rectify IMG_2041.jpg --out film.png --json
    """
    from ..runtime.atomic import check_target
    from ..runtime.images import load_image
    from ..runtime.photo.rectify import rectify as rectify_film

    check_target(out, overwrite=force)   # refuse before the work, not after it
    image = load_image(photo, mode="RGB")
    result = rectify_film(image)
    film = result.image.convert("L") if result.passthrough else result.film
    _save_png(film, out, overwrite=force)
    moire = result.moire is not None and result.moire.found
    if as_json:
        click.echo(json_text(dict(result.to_dict(), photo=photo, out=out)))
    elif result.passthrough:
        click.echo(f"{photo}: a digital image with no film border; written as the 8-bit grey image the models "
                   f"see to {out} ({film.size[0]} x {film.size[1]}).")
    elif result.path == "cropped":
        x0, y0, x1, y1 = result.box
        click.echo(f"{photo}: no film edges in view ({result.detection.reason}); taken as cropped to the film, "
                   f"flat borders trimmed: kept x {x0}-{x1}, y {y0}-{y1}"
                   + ("; a screen's pixel grid / moiré filtered out" if moire else ""))
        click.echo(f"wrote {out} ({film.size[0]} x {film.size[1]})")
    else:
        corners = "  ".join(f"{name} ({x:.1f}, {y:.1f})"
                            for name, (x, y) in zip(("TL", "TR", "BR", "BL"), result.corners))
        click.echo(f"{photo}: film found (confidence {result.detection.confidence:.2f}); corners {corners}"
                   + ("; a screen's pixel grid / moiré filtered out" if moire else ""))
        click.echo(f"wrote {out} ({film.size[0]} x {film.size[1]})")


def _save_png(image, path: str, *, overwrite: bool) -> None:
    """Write a PNG atomically (:func:`~cxr_edge.runtime.atomic.write_atomic`: a regular file, never half-written)."""
    import io

    from ..runtime.atomic import write_atomic

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_atomic(path, buf.getvalue(), overwrite=overwrite)
