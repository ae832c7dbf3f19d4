"""Test-time augmentation: the views, flips only for models trained with flips, averaging in the pipeline."""

import shutil

import numpy as np
import pytest

from cxr_edge.runtime.tta import TTAConfig, trained_with_flips, uses_flip, views


@pytest.fixture
def ramp():
    x = np.tile(np.linspace(-1, 1, 20, dtype=np.float32), (20, 1))[..., None]
    x[:, :2] = -1.0    # letterbox-like black strip on the left
    return x


def test_views_start_with_the_input_and_fill_shifts_with_black(ramp):
    v = views(ramp, TTAConfig(zoom=0.9, shift=0.1), fill=-1.0)
    assert v.shape == (4, 20, 20, 1) and v.dtype == np.float32
    assert np.array_equal(v[0], ramp)
    shifted = v[2]                                                  # +2 px down and right
    assert np.all(shifted[:2] == -1) and np.all(shifted[:, :2] == -1)
    assert np.array_equal(shifted[2:, 2:], ramp[:-2, :-2])
    assert np.array_equal(v[3][:-2, :-2], ramp[2:, 2:]) and np.all(v[3][-2:] == -1)
    zoom = v[1][..., 0]      # the middle 18 columns stretched to 20: the edge column is no longer the edge value
    assert ramp[0, -2, 0] - 0.01 <= zoom[0, -1] < ramp[0, -1, 0] and abs(zoom[0, 10] - ramp[0, 10, 0]) < 0.1


def test_a_flip_view_only_when_trained_with_flips(ramp):
    assert not trained_with_flips({}) and not trained_with_flips({"recipe": "cxr4"})
    assert trained_with_flips({"augment": {"hflip": True}}) and trained_with_flips({"hflip": True})
    assert not uses_flip(TTAConfig(), {"augment": {"hflip": False}})
    assert uses_flip(TTAConfig(), {"augment": {"hflip": True}})
    assert not uses_flip(TTAConfig(flip=False), {"augment": {"hflip": True}})
    v = views(ramp, TTAConfig(), flip=True)
    assert len(v) == 5 and np.array_equal(v[-1], ramp[:, ::-1])
    assert TTAConfig().view_names(True)[-1] == "hflip" and "hflip" not in TTAConfig().view_names(False)


def test_pipeline_averages_the_views(tiny_pack, shared_data):
    from cxr_edge.runtime.pipeline import Pipeline

    cxr = shared_data / "nih_cxr14" / "images" / "00000061_012.png"
    pipe = Pipeline(tiny_pack, tta=True)
    pred = pipe.predict(cxr)
    assert pred.tta["cxr4"] == ["identity", "zoom 0.92", "shift +0.03", "shift -0.03"]   # no flips: not trained so
    m = pipe.models["cxr4"]
    x = pipe.prepare(pipe.load(cxr))["cxr4"]
    by_view = m.infer_batch(views(x, TTAConfig(), fill=m.spec.input.offset))["probs"]
    assert len(by_view) == 4 and not np.allclose(by_view, by_view[0])               # the views differ
    assert np.allclose([pred.results["cxr4"].probabilities[k] for k in m.spec.labels], by_view.mean(0), atol=1e-6)
    single = Pipeline(tiny_pack).predict(cxr)
    assert np.allclose([single.results["cxr4"].probabilities[k] for k in m.spec.labels], by_view[0], atol=1e-6)
    assert single.tta is None and single.to_dict()["tta"] is None


def test_a_model_trained_with_flips_gets_the_flip_view(tiny_pack, tmp_path, shared_data):
    from cxr_edge.runtime.pack import load_pack
    from cxr_edge.tools.pack_writer import rewrite_metadata
    from cxr_edge.runtime.pipeline import Pipeline

    pack = shutil.copytree(tiny_pack, tmp_path / "flips")
    meta = load_pack(pack)["nih14"].metadata
    meta.training = dict(meta.training, augment={"hflip": True})
    rewrite_metadata(pack, {"nih14": meta})
    pred = Pipeline(pack, tta=True).predict(shared_data / "nih_cxr14" / "images" / "00000061_012.png")
    assert pred.tta["nih14"][-1] == "hflip" and "hflip" not in pred.tta["cxr4"]
