"""Hostile images (causes 2, 3, 4 of issue 16): bombs, DICOM, special files, odd files -- each one gets its own
result, in bounded memory, and never stops the batch or blocks it."""

from __future__ import annotations

import io
import os
import socket
import threading

import numpy as np
import pytest
from conftest import assert_clean_failure, json_rows, run_cli, unprivileged_prefix
from hostile_corpus import dicom_bytes, gif_bomb, jpeg_header_bomb, make_fifo, png_bytes, tiff_bytes
from PIL import Image

from cxr_edge.errors import ImageError
from cxr_edge.runtime.images import MAX_DECODED_BYTES, _minmax_uint8, check_budget, load_image


def _kind(pipeline, path) -> str:
    pred = pipeline.predict(path)
    return pred.error["kind"] if pred.status == "error" else pred.status


# --------------------------------------------------------------------------- cause 2: bombs by decoded bytes

BOMB_KINDS = {"png16_110mp": "too_large", "rgb_36mp": "too_large", "grey_121mp": "too_large",
              "rgba16_36mp": "too_large", "palette_200mp": "too_large", "deflated_dicom": "too_large",
              "frames_dicom_big": "too_large"}


@pytest.mark.parametrize("name", sorted(BOMB_KINDS))
def test_cause02_each_bomb_is_refused_before_decoding(pipeline, bombs, name):
    pred = pipeline.predict(bombs[name])
    assert pred.status == "error" and pred.error["kind"] == BOMB_KINDS[name], pred.error
    assert "MiB" in pred.error["message"] or "MP" in pred.error["message"]


def test_cause02_a_batch_of_bombs_stays_under_600_mb(bombs, images):
    """All the bombs and two good images in one batch with two workers: every file gets its result, and the
    process's peak RSS (before: 2.7 GB for one 16-bit PNG, 5.9 GB for four) stays under 600 MB."""
    files = [*bombs.values(), images / "a.png", bombs["png16_110mp"], images / "b.png", bombs["png16_110mp"]]
    res, peak = run_cli("predict", *files, "--json", "--workers", "2")
    rows = json_rows(res.stdout)
    assert len(rows) == len(files) and res.returncode == 1, res.stderr[-2000:]
    assert [r["status"] for r in rows[-4:]] != ["error"] * 4          # the good images were analysed
    assert sum(r["status"] == "error" and r["error"]["kind"] == "too_large" for r in rows) == len(bombs) + 2
    assert 0 < peak < 600, f"peak RSS {peak:.0f} MB"


@pytest.mark.parametrize("maker, kind", [
    (lambda: gif_bomb(), "too_large"),
    (lambda: tiff_bytes(9000, 9000, bits=16), "too_large"),      # 162 MB decoded
    (lambda: tiff_bytes(30000, 30000), "too_large"),              # 900 MP
    (lambda: jpeg_header_bomb(), "too_large"),
    (lambda: png_bytes(100, 100)[:-40], "truncated"),
    (lambda: png_bytes(8000, 8000)[:5000], "truncated"),           # 64 MB: within the budget, then cut short
], ids=["gif-65535", "tiff16-81mp", "tiff-900mp", "jpeg-65500", "png-truncated", "png-64mp-truncated"])
def test_cause02_header_bombs_of_every_format(pipeline, tmp_path, maker, kind):
    path = tmp_path / "bomb"
    path.write_bytes(maker())
    assert _kind(pipeline, path) in ({kind} if kind != "truncated" else {"truncated", "corrupt"})


def test_cause02_the_budget_counts_bytes_not_pixels():
    # 60 MP of 8-bit grey fits; the same pixels at 16 bits, or in colour, do not
    check_budget("grey", (8500, 8500), 1)
    for bpp in (2, 4):
        with pytest.raises(ImageError) as err:
            check_budget("x", (8500, 8500), bpp)
        assert err.value.kind == "too_large" and f"{MAX_DECODED_BYTES / 2**20:.0f} MiB" in str(err.value)
    with pytest.raises(ImageError, match="frames"):
        check_budget("multi", (4000, 4000), 2, frames=10)


def test_cause02_the_budget_is_shared_by_threads(tmp_path):
    """Two threads decoding images that together exceed the budget run one after the other, not at once."""
    from cxr_edge.runtime import images

    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(6000, 3000, color_type=2))   # 72 MB decoded: two do not fit in 128 MiB
    peak_used, errors = [], []
    original = images._DecodeBudget.reserve

    def spy(self, nbytes, limit):
        original(self, nbytes, limit)
        peak_used.append(self.used)

    images._DecodeBudget.reserve = spy
    try:
        threads = [threading.Thread(target=lambda: errors.append(_safe_load(path))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        images._DecodeBudget.reserve = original
    assert errors == [None] * 3 and max(peak_used) <= MAX_DECODED_BYTES and images._BUDGET.used == 0


def _safe_load(path):
    try:
        load_image(path, mode="L")
    except ImageError as exc:
        return exc.kind
    return None


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32])
@pytest.mark.parametrize("invert", [False, True])
def test_cause02_minmax_scaling_without_float64_copies_is_unchanged(dtype, invert):
    """The min-max scaling of 16-bit, float and DICOM images no longer makes float64 copies (8 bytes a pixel,
    three times over); its result is bit-identical to the float64 recipe."""
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    a = (rng.integers(max(info.min, -30000), min(info.max, 60000), (70, 50)) if info else rng.normal(size=(70, 50)) * 900)
    a = a.astype(dtype)
    x = a.astype(np.float64)
    x = x.max() - x if invert else x
    lo, hi = x.min(), x.max()
    want = np.round((x - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    assert np.array_equal(_minmax_uint8(a, invert=invert), want)


# --------------------------------------------------------------------------- cause 3: DICOM


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory):
    pytest.importorskip("pydicom", reason="DICOM needs pydicom (pip install 'cxr-edge[dicom]')")
    d = tmp_path_factory.mktemp("dicom")
    made = {
        "tiny_1x1": dicom_bytes(1, 1),
        "tiny_8x300": dicom_bytes(8, 300),
        "ok_256": dicom_bytes(256, 256),
        "ok_mono1": dicom_bytes(256, 256, photometric="MONOCHROME1"),
        "ok_8bit": dicom_bytes(300, 200, bits=8),
        "rle_400_frames": dicom_bytes(1024, 1024, frames=400, bits=8, rle_frames=True),
        "frames_over_budget": dicom_bytes(2048, 2048, frames=40, bits=16, deflate=True),
        "one_frame_over_budget": dicom_bytes(9000, 9000, bits=16, deflate=True),
        "no_pixels": dicom_bytes(256, 256, pixels=False),
        "deflated_ok": dicom_bytes(256, 256, deflate=True),
        "rgb": dicom_bytes(128, 128, bits=8, samples=3, photometric="RGB"),
    }
    for name, data in made.items():
        (d / f"{name}.dcm").write_bytes(data)
    (d / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(2000))
    (d / "deflated_garbage.dcm").write_bytes(dicom_bytes(64, 64, deflate=True)[:400] + os.urandom(300))
    return d


DICOM_KINDS = {"tiny_1x1": {"too_small"}, "tiny_8x300": {"too_small"}, "ok_256": {"ok", "rejected"},
               "ok_mono1": {"ok", "rejected"}, "ok_8bit": {"ok", "rejected"}, "rle_400_frames": {"ok", "rejected"},
               "frames_over_budget": {"too_large"}, "one_frame_over_budget": {"too_large"},
               "no_pixels": {"corrupt"}, "deflated_ok": {"ok", "rejected"}, "rgb": {"ok", "rejected"},
               "garbage": {"corrupt"}, "deflated_garbage": {"corrupt"}}


@pytest.mark.parametrize("name", sorted(DICOM_KINDS))
def test_cause03_dicom_limits(pipeline, dicoms, name):
    """Tiny DICOM is too_small (it was classified); a multi-frame file decodes its first frame only (400 frames
    decoded every frame, 2.6 GB); one frame over the budget is refused before decoding; damage is 'corrupt'."""
    assert _kind(pipeline, dicoms / f"{name}.dcm") in DICOM_KINDS[name]


def test_cause03_multi_frame_dicom_decodes_only_the_first_frame(dicoms):
    # 400 RLE frames of 1024 x 1024 = 400 MiB decoded: over the budget as a whole, fine as one frame
    img = load_image(dicoms / "rle_400_frames.dcm")
    assert img.size == (1024, 1024) and img.mode == "L"


def test_cause03_monochrome1_is_inverted_by_the_lookup_table(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
    arr = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 64, 64, 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME1"
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    img = np.asarray(load_image(buf.getvalue()))
    assert img[0, 0] == 255 and img[-1, -1] == 0      # bright bone stored low


# --------------------------------------------------------------------------- cause 4: special and odd files


@pytest.fixture
def special(tmp_path):
    d = tmp_path / "special"
    d.mkdir()
    make_fifo(d / "fifo.png")
    (d / "dir.png").mkdir()
    os.symlink(d / "fifo.png", d / "link-to-fifo.png")
    os.symlink(d / "nowhere.png", d / "dangling.png")
    os.symlink("/dev/zero", d / "zero.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.png"))
    yield d
    sock.close()


@pytest.mark.parametrize("name, kind", [
    ("fifo.png", "not_a_file"), ("link-to-fifo.png", "not_a_file"), ("zero.png", "not_a_file"),
    ("sock.png", "not_a_file"), ("dir.png", "is_directory"), ("dangling.png", "not_found"),
    ("/dev/zero", "not_a_file"), ("/dev/null", "not_a_file"), ("/dev/urandom", "not_a_file"),
])
def test_cause04_special_files_are_refused_without_blocking(pipeline, special, name, kind):
    path = name if name.startswith("/") else special / name
    for rectify in (True, False):
        pred = pipeline.predict(path, rectify=rectify)
        assert pred.status == "error" and pred.error["kind"] == kind, pred.error
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert err.value.kind == kind


def test_cause04_a_batch_with_special_files_finishes(special, images):
    files = [special / "fifo.png", "/dev/zero", images / "a.png", special / "sock.png", images / "empty.png"]
    res, _ = run_cli("predict", *files, "--workers", "2", timeout=90)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Decision support only" in res.stderr and "4 of 5 image(s) could not be analysed" in res.stderr
    assert res.stdout.count("ERROR") == 4 and "not an image file" in res.stdout
    assert "Internal error" not in res.stderr and "bug" not in res.stdout


def test_cause04_one_unreadable_file_does_not_abort_the_batch(tmp_path, images):
    secret = tmp_path / "secret.png"
    secret.write_bytes((images / "a.png").read_bytes())
    secret.chmod(0)
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "inside.png").write_bytes((images / "a.png").read_bytes())
    locked.chmod(0)
    try:
        res, _ = run_cli("predict", images / "a.png", secret, locked / "inside.png", images / "b.png", "--json",
                         "--workers", "2", prefix=unprivileged_prefix())
    finally:
        locked.chmod(0o755)
    rows = json_rows(res.stdout)
    assert res.returncode == 1 and len(rows) == 4, res.stderr[-2000:]   # click's check exited 2 with no rows
    assert rows[1]["error"]["kind"] == "unreadable" and "Permission denied" in rows[1]["error"]["message"]
    assert rows[2]["status"] == "error" and rows[0]["status"] != "error" and rows[3]["status"] != "error"


@pytest.mark.parametrize("content, kind", [
    (b"", "empty"), (b"\x89", "not_an_image"), (b"hello, not an image\n" * 10, "not_an_image"),
    (b"\x89PNG\r\n\x1a\n", "corrupt"), (b"\xff\xd8\xff\xe0" + b"\0" * 20, "corrupt"), (b"BM" + b"\xff" * 60, "corrupt"),
    (b"GIF89a" + b"\xff" * 20, "corrupt"), (b"II*\0" + b"\xff" * 40, "corrupt"), (b"RIFF\0\0\0\0WEBPVP8 ", "corrupt"),
], ids=["empty", "one-byte", "text", "png-magic-only", "jpeg-magic-only", "bmp-garbage", "gif-garbage",
        "tiff-garbage", "webp-garbage"])
def test_cause04_odd_files_get_a_typed_error(pipeline, tmp_path, content, kind):
    path = tmp_path / "odd.png"
    path.write_bytes(content)
    got = _kind(pipeline, path)
    assert got == kind or (kind == "corrupt" and got in ("not_an_image", "truncated", "too_small")), got


@pytest.mark.parametrize("name", ["-dash.png", "sp ace.png", "new\nline.png", "car\rriage.png", "tab\t.png",
                                  "ünïcödé.png", "x" * 250 + ".png", b"\xff\xfe-latin1.png"])
def test_cause04_odd_file_names_are_predicted(pipeline, tmp_path, images, name):
    raw = os.fsencode(tmp_path) + b"/" + (name if isinstance(name, bytes) else os.fsencode(name))
    with open(raw, "wb") as fh:
        fh.write((images / "a.png").read_bytes())
    pred = pipeline.predict(os.fsdecode(raw))
    assert pred.status in ("ok", "rejected"), pred.error


def test_cause04_symlinked_and_huge_files(pipeline, tmp_path, images, monkeypatch):
    from cxr_edge.runtime import images as images_mod

    link = tmp_path / "link.png"
    os.symlink(images / "a.png", link)
    assert pipeline.predict(link).status in ("ok", "rejected")           # a link to an image is an image
    monkeypatch.setattr(images_mod, "MAX_FILE_BYTES", 1000)
    assert _kind(pipeline, images / "b.png") == "too_large"               # the file size is checked before reading


@pytest.mark.parametrize("mode", ["CMYK", "LA", "PA", "I;16B", "F", "1", "P", "RGBA", "YCbCr", "I"])
def test_cause04_every_pixel_format_is_handled(pipeline, tmp_path, mode):
    rng = np.random.default_rng(2)
    base = Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8), "RGB")
    img = base.convert("L").convert(mode) if mode in ("I;16B", "F", "I", "1") else base.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16B", "F", "I", "YCbCr", "LA") else "x.png")
    if mode == "PA":   # a palette with transparency: composited onto black like the training data
        img = base.convert("P")
        img.info["transparency"] = 0
        path = tmp_path / "x.png"
    try:
        img.save(path)
    except (OSError, ValueError, KeyError):
        pytest.skip(f"Pillow cannot save mode {mode} here")
    assert pipeline.predict(path).status in ("ok", "rejected", "error")
    assert pipeline.predict(path).error is None or pipeline.predict(path).error["kind"] != "internal"


def test_cause04_nan_and_infinite_float_tiff_is_scaled(tmp_path):
    arr = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    arr[0, 0], arr[1, 1], arr[2, 2] = np.nan, np.inf, -np.inf
    Image.fromarray(arr, "F").save(tmp_path / "f.tif")
    img = load_image(tmp_path / "f.tif")
    assert img.mode == "L" and img.size == (64, 64)


def test_cause04_stdin_and_pipes_are_refused_not_read(pipeline):
    r, w = os.pipe()
    try:
        os.write(w, b"\x89PNG")
        pred = pipeline.predict(f"/proc/self/fd/{r}")
        assert pred.status == "error" and pred.error["kind"] == "not_a_file"
    finally:
        os.close(r)
        os.close(w)


def test_cause04_cli_refuses_a_fifo_cleanly(tmp_path):
    fifo = make_fifo(tmp_path / "x.png")
    res, _ = run_cli("predict", fifo, "--json", timeout=60)
    rows = json_rows(res.stdout)
    assert res.returncode == 1 and rows[0]["error"]["kind"] == "not_a_file"
    res, _ = run_cli("rectify", fifo, "--out", tmp_path / "o.png", timeout=60)
    assert_clean_failure(res, text="FIFO")
