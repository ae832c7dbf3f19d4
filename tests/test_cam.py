"""Class activation maps: the math on planted signals, the letterbox undone, a real int8 model, overlays."""

import json

import numpy as np
import pytest
from PIL import Image

from cxr_edge.runtime import cam
from cxr_edge.tasks import InputSpec

SPEC = InputSpec(size=224)


def _planted(cells, channel=3, grid=7, width=16):
    """Features (grid, grid, width): zero except ``channel`` = 5 at the given (row, col) cells."""
    f = np.zeros((grid, grid, width), np.float32)
    for r, c in cells:
        f[r, c, channel] = 5.0
    return f


def _head(width=16, labels=3, activation="sigmoid", hot=None):
    rng = np.random.default_rng(0)
    k = rng.normal(0, 0.01, (width, labels)).astype(np.float32)
    for channel, label in (hot or {}).items():
        k[channel, label] = 2.0
    return cam.Head(k, np.zeros(labels, np.float32), activation)


def test_map_peaks_at_the_planted_cell():
    maps = cam.class_maps(_planted([(2, 5)]), _head(hot={3: 1}), [0, 1])
    assert maps.shape == (2, 7, 7)
    assert np.unravel_index(np.argmax(maps[1]), (7, 7)) == (2, 5)
    assert maps[1].max() > 50 * np.abs(maps[0]).max()   # label 0 does not read channel 3


def test_peak_lands_on_the_same_spot_of_a_letterboxed_film():
    # a wide film (2:1) sits in the middle rows of the square input; cell (3, 5) is right of centre
    film_size = (400, 200)
    heat = cam.heatmaps(_planted([(3, 5)]), _head(hot={3: 0}), SPEC, {"Effusion": 0}, film_size)["Effusion"]
    assert heat.shape == (200, 400) and heat.dtype == np.uint8 and heat.max() == 255
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert abs(x - 5.5 / 7 * 400) <= 400 / 7 / 2 and abs(y - 100) <= 200 / 7
    assert heat[:, :100].max() == 0                               # nothing where nothing was planted


def test_box_of_a_letterboxed_film_matches_fit_to_square():
    from cxr_edge.runtime.preprocess import fit_to_square

    film = Image.new("L", (300, 120), 200)
    px = fit_to_square(film, SPEC)
    rows, cols = np.nonzero(px)
    assert cam.film_box(SPEC, film.size) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


def test_softmax_maps_are_contrastive():
    # class 0 reads channel 1 (planted left), class 1 reads channel 2 (planted right)
    f = np.zeros((7, 7, 16), np.float32)
    f[3, 1, 1], f[3, 5, 2] = 5.0, 5.0
    f[:, :, 0] = 3.0                                  # a channel every class reads alike: shared "lungs"
    head = _head(labels=2, activation="softmax", hot={1: 0, 2: 1})
    head.kernel[0, :] = 1.0
    maps = cam.class_maps(f, head, [0, 1], probs=np.array([0.5, 0.5]))
    assert np.unravel_index(np.argmax(maps[0]), (7, 7)) == (3, 1)
    assert np.unravel_index(np.argmax(maps[1]), (7, 7)) == (3, 5)
    assert np.allclose(maps[0] + maps[1], 0, atol=1e-5)   # the shared channel cancels; the classes oppose


def test_no_positive_evidence_gives_an_empty_map():
    assert not cam.to_display(-np.ones((7, 7))).any()


def test_head_from_npz_checks_its_shape():
    from cxr_edge.errors import PackError

    head = _head(labels=4)
    again = cam.Head.from_npz(head.to_npz(), activation="softmax", num_labels=4)
    assert np.array_equal(again.kernel, head.kernel)
    with pytest.raises(PackError, match="do not fit 14 labels"):
        cam.Head.from_npz(head.to_npz(), activation="sigmoid", num_labels=14)
    with pytest.raises(PackError, match="unreadable"):
        cam.Head.from_npz(b"not an npz", activation="sigmoid", num_labels=4)


def test_overlay_colours_only_where_the_map_is_hot():
    film = Image.new("L", (40, 20), 128)
    heat = np.zeros((2, 4), np.uint8)
    heat[:, 3] = 255  # the right quarter is hot
    out = np.asarray(cam.overlay(film, heat)).astype(int)
    assert out.shape == (20, 40, 3)
    assert np.all(out[:, :10] == 128)  # cold: the film unchanged
    assert out[10, 39, 0] > 128 + 40 and out[10, 39, 2] < 128  # hot: red


def test_overlays_are_written_with_unique_names(tmp_path):
    film = Image.new("L", (64, 32), 100)
    maps = {"Pneumonia": np.full((32, 64), 255, np.uint8), "Pneumonia (nih14)": np.zeros((32, 64), np.uint8)}
    taken = set()
    a = cam.write_overlays(film, maps, tmp_path / "maps", "a/film", taken)
    b = cam.write_overlays(film, maps, tmp_path / "maps", "a/film", taken)     # same stem again: -2
    assert set(a) == set(maps) and set(a.values()).isdisjoint(b.values())
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(
        [p.split("/")[-1] for p in (*a.values(), *b.values())])                # no temp files left
    assert Image.open(a["Pneumonia"]).size == (64, 32)


# --------------------------------------------------------------------------- a real int8 model


def test_real_int8_features_peak_on_a_bright_patch(tiny_pack):
    """The tiny int8 model's own features, read through the pack's CAM path: a head that reads the channel
    responding most to a bright patch puts the map's peak on the patch, on a letterboxed film."""
    from cxr_edge.runtime.pack import load_pack
    from cxr_edge.runtime.pipeline import LoadedModel
    from cxr_edge.runtime.preprocess import preprocess

    lm = LoadedModel.from_pack(load_pack(tiny_pack)["cxr4"], threads=1, backend=None)
    film = np.full((120, 240), 30, np.uint8)
    film[40:80, 170:210] = 250                                       # the signal: right half, middle
    feats = lm.infer(preprocess(Image.fromarray(film), lm.spec))["features"]
    blank = lm.infer(preprocess(Image.fromarray(np.full_like(film, 30)), lm.spec))["features"]
    channel = int(np.argmax((feats - blank).max(axis=(0, 1))))      # the channel the patch excites most
    kernel = np.zeros((feats.shape[-1], 4), np.float32)
    kernel[channel, 2] = 1.0
    heat = cam.heatmaps(feats - blank, cam.Head(kernel, np.zeros(4, np.float32), "softmax"), lm.spec.input,
                        {"Pneumonia": 2}, (240, 120))["Pneumonia"]
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 150 <= x <= 230 and 20 <= y <= 100, (x, y)


def test_pipeline_heatmaps_stay_out_of_the_json(tiny_pack, shared_data):
    from cxr_edge.runtime.pipeline import Pipeline

    pred = Pipeline(tiny_pack, heatmaps=True).predict(shared_data / "nih_cxr14" / "images" / "00000061_012.png")
    reported = [pred.results["cxr4"].top] + [lbl if lbl != pred.results["cxr4"].top else f"{lbl} (nih14)" for lbl in pred.results["nih14"].positive]
    assert sorted(pred.heatmaps) == sorted(reported)
    assert all(h.shape == (256, 256) and h.dtype == np.uint8 for h in pred.heatmaps.values())
    assert pred.film.size == (256, 256)
    d = pred.to_dict()
    assert "heatmaps" not in d and json.loads(json.dumps(d))["status"] == "ok"
    plain = Pipeline(tiny_pack).predict(shared_data / "nih_cxr14" / "images" / "00000061_012.png")
    assert plain.heatmaps == {} and plain.film is None                # nothing kept unless asked for


def test_heatmaps_need_head_weights(tmp_path, tiny_pack):
    import shutil

    from cxr_edge.runtime import metadata as md
    from cxr_edge.errors import PackError
    from cxr_edge.runtime.pack import load_pack
    from cxr_edge.tools.pack_writer import write_pack
    from cxr_edge.runtime.pipeline import Pipeline

    pack = load_pack(tiny_pack)
    bare = {s: (md.embed(m.content, m.metadata, {}), m.metadata) for s, m in pack.models.items()}
    out = write_pack(tmp_path / "no-heads", bare, name="no-heads")
    with pytest.raises(PackError, match="no head weights"):
        Pipeline(out, heatmaps=True)
    assert Pipeline(out).predict(np.zeros((64, 64), np.uint8), heatmaps=True).heatmaps == {}
    shutil.rmtree(out)



def test_maps_average_back_to_the_models_own_probabilities(tiny_pack, shared_data):
    """head.npz and the 'features' output agree with the int8 model: each label's map, averaged over the
    grid, plus its bias, is the logit the model turned into its probability (up to int8 steps)."""
    from cxr_edge.runtime.pack import load_pack
    from cxr_edge.runtime.pipeline import LoadedModel
    from cxr_edge.runtime.preprocess import preprocess

    for slot in ("cxr4", "nih14"):
        lm = LoadedModel.from_pack(load_pack(tiny_pack)[slot], threads=1, backend=None)
        out = lm.infer(preprocess(shared_data / "nih_cxr14" / "images" / "00000061_012.png", lm.spec))
        logits = cam.class_maps(out["features"], lm.head, list(range(len(lm.spec.labels)))).mean(axis=(1, 2))
        logits += lm.head.bias
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum() if slot == "cxr4" else \
            1 / (1 + np.exp(-logits))
        assert np.allclose(probs, out["probs"], atol=0.02), (slot, probs, out["probs"])
