"""Image loading: every format users have, and every kind of bad input, with a specific error."""

import io
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from cxr_edge.errors import ImageError
from cxr_edge.runtime.images import iter_image_files, load_image, scan_image_files, sniff_format


def _gradient(w=64, h=48):
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    return x.astype(np.uint8)


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


# ----------------------------------------------------------------------------- good inputs


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("BMP", ".bmp"), ("TIFF", ".tif"),
                                        ("WEBP", ".webp")])
def test_common_formats_load_as_grey(tmp_path, fmt, suffix):
    path = _save(Image.fromarray(_gradient()).convert("RGB"), tmp_path / f"a{suffix}", format=fmt)
    img = load_image(path)
    assert img.mode == "L" and img.size == (64, 48)
    assert abs(int(np.asarray(img)[10, 63]) - 255) <= 6  # the bright end stays bright


@pytest.mark.parametrize("name", ["IMG_0042.jfif", "IMG_0042.jpe", "IMG_0042", "IMG_0042.png", "photo.JFIF"])
def test_a_jpeg_is_read_whatever_its_name(tmp_path, name):
    """The content decides, never the suffix: .jfif (Windows saves web JPEGs so), .jpe, none, even a wrong one."""
    path = _save(Image.fromarray(_gradient()).convert("RGB"), tmp_path / name, format="JPEG")
    img = load_image(path, mode="RGB")
    assert img.size == (64, 48) and img.mode == "RGB"
    assert sniff_format(path.read_bytes()[:132]) == "jpeg"
    assert scan_image_files([tmp_path]).files == [path]                    # a folder run takes it too


def _heif_writer():
    try:
        import pillow_heif
    except ImportError:
        pytest.skip("pillow-heif is not installed (the [heic] extra): no HEIC file can be made or read")
    pillow_heif.register_heif_opener()
    if not pillow_heif.libheif_info().get("HEIF"):
        pytest.skip("this pillow-heif build has no HEVC encoder: no HEIC file can be made here")


def test_a_real_heic_photo_is_read(tmp_path):
    _heif_writer()
    arr = np.stack([_gradient(96, 64)] * 3, -1)
    path = tmp_path / "IMG_1234.HEIC"
    Image.fromarray(arr).save(path, format="HEIF", quality=95)
    assert sniff_format(path.read_bytes()[:132]) == "heif"
    img = load_image(path)
    assert img.mode == "L" and img.size == (96, 64)
    assert abs(int(np.asarray(img)[32, 95]) - 255) <= 10 and int(np.asarray(img)[32, 0]) <= 10
    copy = tmp_path / "no_suffix"
    copy.write_bytes(path.read_bytes())
    assert scan_image_files([tmp_path]).files == [path, copy]


def test_heic_without_pillow_heif_says_which_extra(tmp_path, monkeypatch):
    import cxr_edge.runtime.images as images

    monkeypatch.setitem(sys.modules, "pillow_heif", None)              # makes `import pillow_heif` fail
    monkeypatch.setattr(images, "_HEIF_READY", False)
    # a HEIC file's first box: 'ftyp' with the 'heic' brand (what an iPhone writes)
    path = tmp_path / "IMG_1234.HEIC"
    path.write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 200)
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert err.value.kind == "heic_unavailable"
    assert "cxr-edge[heic]" in str(err.value) and "pillow-heif" in str(err.value) and "JPEG" in str(err.value)


def test_a_folder_scan_says_why_it_skipped_each_file(tmp_path):
    jpeg = io.BytesIO()
    Image.fromarray(_gradient()).save(jpeg, "JPEG")
    (tmp_path / "a.jfif").write_bytes(jpeg.getvalue())
    (tmp_path / "scan_0001").write_bytes(jpeg.getvalue())               # no suffix at all
    (tmp_path / "notes.txt").write_text("film of Mr X, taken on the ward\n")
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.7\n...")
    (tmp_path / "empty.dat").write_bytes(b"")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "broken.jpg").write_bytes(b"not really")               # named as an image: its own error later
    scan = scan_image_files([tmp_path])
    assert [p.name for p in scan.files] == ["a.jfif", "broken.jpg", "scan_0001"]
    why = {s.path.name: (s.kind, s.reason) for s in scan.skipped}
    assert why == {".DS_Store": ("hidden", "a hidden file (its name starts with '.')"),
                   "empty.dat": ("empty", "an empty file (0 bytes)"),
                   "notes.txt": ("not_an_image", "not an image (text)"),
                   "report.pdf": ("not_an_image", "not an image (a PDF document)")}


def test_16bit_png_is_minmax_scaled(tmp_path):
    arr = (np.linspace(1000, 4000, 64 * 48).reshape(48, 64)).astype(np.uint16)  # 12-bit content in 16 bits
    path = _save(Image.fromarray(arr), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    assert out.min() == 0 and out.max() == 255


def test_16bit_tiff_and_float_tiff(tmp_path):
    arr = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20
    out = np.asarray(load_image(_save(Image.fromarray(arr), tmp_path / "a.tif")))
    assert out.max() == 255 and out.min() == 0
    f = Image.fromarray(arr.astype(np.float32) / 7.0, mode="F")
    assert np.asarray(load_image(_save(f, tmp_path / "f.tif"))).max() == 255


def test_palette_rgba_la_and_cmyk(tmp_path):
    rgb = Image.fromarray(np.stack([_gradient()] * 3, -1))
    assert load_image(_save(rgb.convert("P"), tmp_path / "p.png")).mode == "L"
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited onto black, as the training data was
    assert np.asarray(load_image(_save(rgba, tmp_path / "t.png"))).max() == 0
    la = Image.fromarray(_gradient()).convert("LA")
    assert load_image(_save(la, tmp_path / "la.png")).mode == "L"
    cmyk = rgb.convert("CMYK")
    out = load_image(_save(cmyk, tmp_path / "c.jpg", format="JPEG"), mode="RGB")
    assert out.mode == "RGB" and out.size == (64, 48)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((40, 80), np.uint8)
    arr[:, :10] = 255  # bright stripe on the left of a landscape image
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the phone held upright
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif, quality=95)
    out = np.asarray(load_image(path))
    assert out.shape == (80, 40)                     # upright: portrait
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # the stripe is now at the top


def test_large_jpeg_decodes_at_reduced_size(tmp_path):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000), dtype=np.uint8)).convert("RGB")
    path = _save(big, tmp_path / "12mp.jpg", quality=80)
    small = load_image(path, min_size=224)
    assert min(small.size) >= 224 and small.size[0] <= 4000 // 8 + 1  # draft picked the 1/8 scale
    assert load_image(path).size == (4000, 3000)


def test_multiframe_gif_uses_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (10, 200)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(path)).mean() == pytest.approx(10, abs=2)


def test_arrays_and_pil_images_are_accepted():
    assert load_image(_gradient()).size == (64, 48)
    assert load_image(np.zeros((20, 20, 1), np.float32)).mode == "L"
    assert load_image(Image.fromarray(_gradient()), mode="RGB").mode == "RGB"


def test_dicom_monochrome1_is_inverted(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    arr = np.zeros((32, 32), np.uint16)
    arr[:, :16] = 4000  # left half high values
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1"  # high values display dark
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    out = np.asarray(load_image(tmp_path / "x.dcm"))
    assert out[:, :16].mean() == 0 and out[:, 16:].mean() == 255


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` fail
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert err.value.kind == "dicom_unavailable" and "pip install pydicom" in str(err.value)


# ----------------------------------------------------------------------------- bad inputs


def _png_header_only(w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def bad_inputs(tmp_path):
    """(kind, path) for every kind of bad input a user can hand us."""
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200), dtype=np.uint8)).save(good, "JPEG")
    good_png = io.BytesIO()
    Image.fromarray(_gradient(200, 200)).save(good_png, "PNG")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("this is not an image\n")
    (tmp_path / "cut.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "cut.png").write_bytes(good_png.getvalue()[: len(good_png.getvalue()) // 2])
    (tmp_path / "bomb.png").write_bytes(_png_header_only(40000, 40000))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "tiny.png")
    (tmp_path / "folder.png").mkdir()
    return [("empty", tmp_path / "empty.png"), ("not_an_image", tmp_path / "notes.png"),
            ("truncated", tmp_path / "cut.jpg"), ("truncated", tmp_path / "cut.png"),
            ("too_large", tmp_path / "bomb.png"), ("too_small", tmp_path / "tiny.png"),
            ("is_directory", tmp_path / "folder.png"), ("not_found", tmp_path / "missing.png")]


def test_every_bad_input_gets_its_own_error(tmp_path):
    for kind, path in bad_inputs(tmp_path):
        with pytest.raises(ImageError) as err:
            load_image(path)
        assert err.value.kind == kind, (path, str(err.value))
        assert str(path) in str(err.value)
        assert len(str(err.value)) > len(str(path)) + 20  # says more than the name: what to do


def test_pixel_limit_is_configurable(tmp_path):
    path = _save(Image.fromarray(_gradient(100, 100)), tmp_path / "a.png")
    with pytest.raises(ImageError, match="too large") as err:
        load_image(path, max_pixels=5000)
    assert err.value.kind == "too_large"


def test_bytes_input_and_empty_bytes():
    buf = io.BytesIO()
    Image.fromarray(_gradient()).save(buf, "PNG")
    assert load_image(buf.getvalue()).size == (64, 48)
    with pytest.raises(ImageError) as err:
        load_image(b"")
    assert err.value.kind == "empty"


def test_directory_expansion_is_sorted_and_filtered(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.png", "1.jpg", "notes.txt", ".hidden.png", "b/3.DCM"):
        (tmp_path / name).write_bytes(b"x")
    files = [p.relative_to(tmp_path).as_posix() for p in iter_image_files([tmp_path])]
    assert files == ["1.jpg", "b/2.png", "b/3.DCM"]
    assert list(iter_image_files([tmp_path / "notes.txt"])) == [tmp_path / "notes.txt"]  # explicit files kept


def _fuzzed(fmt: str, n: int, seed: int = 0):
    """``n`` copies of a small ``fmt`` image with 1-6 random bytes overwritten (deterministic)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, fmt)
    data = buf.getvalue()
    for _ in range(n):
        d = bytearray(data)
        for pos in rng.integers(0, len(d), rng.integers(1, 7)):
            d[pos] = int(rng.integers(0, 256))
        yield bytes(d)


@pytest.mark.parametrize("fmt", ["TIFF", "PNG", "JPEG", "BMP", "GIF"])
def test_damaged_files_give_an_image_or_an_image_error_never_anything_else(fmt, recwarn):
    # Pillow's TIFF reader raises TypeError ("Missing dimensions") on some damaged headers; that used to
    # escape load_image and stop a whole predict batch with "Internal error".
    kinds = set()
    for data in _fuzzed(fmt, 300):
        try:
            load_image(data)
        except ImageError as exc:
            kinds.add(exc.kind)
    assert kinds <= {"corrupt", "truncated", "not_an_image", "too_large", "too_small", "unsupported"}
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)], "decoder warnings reach the user"
