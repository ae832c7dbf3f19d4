"""CLAHE in numpy: the same pixels as scikit-image's equalize_adapthist on real CXRs."""

import numpy as np
import pytest
from PIL import Image

from cxr_edge.runtime.enhance import clahe

# Stated tolerance against skimage.exposure.equalize_adapthist (x 255): mean abs diff < 0.5 grey
# levels and max <= 1. The implementation follows scikit-image step by step, so in practice the
# only difference is rounding scikit-image's float result to 8 bits.
MEAN_TOL, MAX_TOL = 0.5, 1.0

FILES = ["nih_cxr14/images/00000061_012.png", "cxr4/images/covid19_mhh_fff13f3a.png",
         "cxr4/images/tbx11k_tb0005.png"]


@pytest.fixture(scope="module")
def cxrs(shared_data):
    out = []
    for f in FILES:
        path = shared_data / f
        if path.exists():
            out.append(np.asarray(Image.open(path).convert("L")))
    assert out, "none of the test CXRs is in the shared data"
    return out


@pytest.mark.parametrize("size", [(256, 256), (224, 224), (300, 217)])
@pytest.mark.parametrize("clip", [0.01, 0.03])
def test_matches_scikit_image_on_real_cxrs(cxrs, size, clip):
    exposure = pytest.importorskip("skimage.exposure")
    for cxr in cxrs:
        img = np.asarray(Image.fromarray(cxr).resize(size, Image.BILINEAR))
        ours = clahe(img, clip_limit=clip).astype(np.float64)
        ref = exposure.equalize_adapthist(img, clip_limit=clip) * 255
        diff = np.abs(ours - ref)
        assert diff.mean() < MEAN_TOL and diff.max() <= MAX_TOL, (size, clip, diff.mean(), diff.max())


def test_other_tile_and_bin_counts_match_too(cxrs):
    exposure = pytest.importorskip("skimage.exposure")
    img = cxrs[0]
    for tiles, nbins in ((4, 256), (16, 128)):
        ref = exposure.equalize_adapthist(img, kernel_size=[s // tiles for s in img.shape], nbins=nbins) * 255
        assert np.abs(clahe(img, tiles=tiles, nbins=nbins) - ref).max() <= MAX_TOL


def test_raises_local_contrast_in_flat_regions(cxrs):
    """What a user sees: low-contrast lung detail is stretched."""
    img = (cxrs[0].astype(np.float64) * 0.4 + 60).astype(np.uint8)   # a dull, low-contrast film
    out = clahe(img)
    def local_std(a):
        a = a.astype(np.float64)
        return np.mean([a[y:y + 16, x:x + 16].std() for y in range(64, 192, 16) for x in range(64, 192, 16)])
    assert local_std(out) > 1.5 * local_std(img)
    assert out.dtype == np.uint8 and out.shape == img.shape


def test_constant_image_and_bad_input():
    flat = np.full((64, 64), 77, np.uint8)
    assert np.array_equal(clahe(flat), flat)
    with pytest.raises(ValueError, match="uint8"):
        clahe(flat.astype(np.float32))
    with pytest.raises(ValueError, match="2-D"):
        clahe(np.zeros((8, 8, 3), np.uint8))


def test_clahe_in_the_input_spec_reaches_the_cache_and_every_later_reader(shared_data, tmp_path):
    """prepare --clahe: the cached pixels are fit_to_square with CLAHE (what predict computes from the pack's
    input spec), the prepared input spec says so, and a spec without CLAHE serialises as before."""
    from cxr_edge.data.prepare import PrepareConfig, prepare
    from cxr_edge.data.sources import SourceSpec
    from cxr_edge.data.splits import SplitConfig
    from cxr_edge.runtime.preprocess import fit_to_square
    from cxr_edge.tasks import InputSpec, get_task

    config = PrepareConfig(task="nih14", sources=(SourceSpec(str(shared_data / "nih_cxr14/manifest.csv")),),
                           split=SplitConfig(official_test=True, sample_fraction=0.05, seed=1), size=64,
                           clahe=True, clahe_clip=0.02, clahe_tiles=4)
    p = prepare(config, tmp_path / "clahe")
    spec = p.task.input
    assert spec.clahe and spec.clahe_clip == 0.02 and spec.clahe_tiles == 4
    assert InputSpec.from_dict(spec.to_dict()) == spec
    path = p.table("train")["path"][0]
    cached = np.asarray(p.images("train").take([0]))[0]
    np.testing.assert_array_equal(cached, fit_to_square(path, spec))
    plain = fit_to_square(path, get_task("nih14").with_input(size=64))
    assert np.abs(cached.astype(int) - plain).mean() > 5                       # CLAHE changed the film
    assert "clahe_clip" not in get_task("nih14").input.to_dict()               # no CLAHE: the old form
