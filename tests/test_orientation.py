"""The orientation check: a film turned sideways or upside down is turned upright before the models answer."""

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from test_evaluate import cli, cxr4_48  # noqa: F401 (fixtures)

from cxr_edge.config import BUNDLED_PACK
from cxr_edge.errors import PackError
from cxr_edge.runtime import orientation
from cxr_edge.runtime.images import load_image
from cxr_edge.runtime.pack import load_pack
from cxr_edge.runtime.pipeline import Pipeline
from cxr_edge.tools import orientation_fit


def _turn_features(rng, n, width=24):
    """Features whose first dimensions say the turn (a stand-in for the gate's pooled features)."""
    turns = rng.integers(0, 4, n)
    x = rng.normal(0, 1, (n, width))
    x[:, :4] += 5 * np.eye(4)[turns]
    return x.astype(np.float32), turns


def test_fit_learns_the_turn_and_the_threshold_keeps_upright_films_as_they_are():
    rng = np.random.default_rng(0)
    x, t = _turn_features(rng, 2000)
    head = orientation_fit.fit(x, t)
    hx, ht = _turn_features(rng, 2000)
    threshold = orientation_fit.choose_threshold(head, hx, ht, max_turned_upright=0.005)
    r = orientation_fit.rates(head, hx, ht, threshold)
    assert r["upright_turned_by_mistake"] <= 0.005
    assert r["turned_corrected"] > 0.85 and r["turned_wrong_way"] < 0.05
    assert r["upright"] + r["turned"] == 2000
    strict = orientation_fit.choose_threshold(head, hx, ht, max_turned_upright=0.0)
    assert strict >= threshold                          # fewer mistakes allowed: a higher bar


def test_head_round_trips_and_judges_one_film():
    rng = np.random.default_rng(1)
    x, t = _turn_features(rng, 800)
    head = orientation_fit.fit(x, t)
    head = orientation.OrientationHead(head.mean, head.scale, head.weights, head.bias, 0.7)
    again = orientation.OrientationHead.from_npz(head.to_npz())
    assert again.threshold == pytest.approx(0.7)
    np.testing.assert_allclose(again.probabilities(x[:10]), head.probabilities(x[:10]), rtol=1e-5)
    turned = x[np.flatnonzero(t == 2)[0]]
    verdict = again.judge(turned)
    assert verdict.turned_by == 180 and verdict.corrected and verdict.probability >= 0.7
    assert "upside down" in verdict.warning() and verdict.to_dict()["corrected"] is True
    upright = again.judge(x[np.flatnonzero(t == 0)[0]])
    assert upright.turned_by == 0 and not upright.corrected
    with pytest.raises(ValueError, match="width 3"):
        again.probabilities(np.zeros(3))


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _good(**change):
    arrays = dict(mean=np.zeros(8, np.float32), scale=np.ones(8, np.float32), weights=np.zeros((8, 4), np.float32),
                  bias=np.zeros(4, np.float32), threshold=np.float32(0.6), turns=np.array([0, 90, 180, 270]))
    arrays.update(change)
    return _npz(**arrays)


@pytest.mark.parametrize("change, message", [
    ({"weights": np.full((8, 4), np.nan, np.float32)}, "NaN"),
    ({"scale": np.zeros(8, np.float32)}, "scale is not > 0"),
    ({"weights": np.zeros((8, 3), np.float32)}, "do not fit together"),
    ({"threshold": np.float32(0.2)}, "threshold"),
    ({"threshold": np.float32(np.nan)}, "threshold"),
    ({"turns": np.array([0, 90, 180, 45])}, "turns"),
])
def test_a_tampered_head_is_refused_with_what_to_do(change, message):
    orientation.OrientationHead.from_npz(_good())         # the untampered one loads
    with pytest.raises(PackError, match=message) as err:
        orientation.OrientationHead.from_npz(_good(**change))
    assert "cxr-edge orientation fit" in str(err.value)


def test_pickles_and_garbage_are_refused():
    buf = io.BytesIO()
    np.savez(buf, mean=np.array([{"a": 1}], dtype=object))
    for data in (buf.getvalue(), b"not a zip", b""):
        with pytest.raises(PackError, match="unreadable"):
            orientation.OrientationHead.from_npz(data)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("mean.npy", b"\0" * (64 * 2**20))      # 64 MB of zeros in a few KB
    with pytest.raises(PackError):
        orientation.OrientationHead.from_npz(bomb.getvalue())


# --------------------------------------------------------------------------- the bundled pack


@pytest.fixture(scope="module")
def bundled():
    pack = load_pack(BUNDLED_PACK)
    if orientation.MEMBER not in pack["gate"].files:
        pytest.skip("the bundled pack carries no orientation check")
    return Pipeline(pack)


@pytest.fixture(scope="module")
def film(shared_data):
    return load_image(shared_data / "nih_cxr14" / "images" / "00000061_012.png", mode="L")


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_a_turned_film_is_answered_as_the_upright_film(bundled, film, turn):
    upright = bundled.predict(film)
    turned = bundled.predict(film.rotate(turn, expand=True))           # PIL turns counter-clockwise
    assert upright.orientation["turned_by"] == 0 and not upright.orientation["corrected"]
    assert not any("turned" in w for w in upright.warnings)
    assert turned.orientation["turned_by"] == turn and turned.orientation["corrected"]
    assert any(f"turned by {turn} degrees" in w for w in turned.warnings)
    for slot in ("cxr4", "nih14"):
        a, b = upright.results[slot], turned.results[slot]
        assert a.top == b.top and a.positive == b.positive
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 1e-6
    assert turned.to_dict()["orientation"]["probabilities"].keys() == {"0", "90", "180", "270"}


def test_no_upright_answers_the_turned_film_as_it_is_and_says_so(film):
    pipe = Pipeline(BUNDLED_PACK, upright=False)
    if pipe.orientation is None:
        pytest.skip("the bundled pack carries no orientation check")
    r = pipe.predict(film.rotate(90, expand=True))
    assert r.orientation["turned_by"] == 90 and r.orientation["corrected"] is False
    assert any("answered as it is (--no-upright)" in w for w in r.warnings)


def test_upright_real_photos_are_left_as_they_are(bundled, shared_data):
    folder = shared_data / "real_photos_dev"
    if not folder.is_dir():
        pytest.skip(f"needs the real photos in {folder}")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert len(photos) >= 15
    turned = [p.name for p in photos if (bundled.predict(p).orientation or {}).get("corrected")]
    assert turned == []


def test_cli_predict_json_reports_the_orientation(cli, film, tmp_path, bundled):  # noqa: F811
    path = tmp_path / "sideways.png"
    film.rotate(270, expand=True).save(path)
    res = cli("predict", path, "--json", "--pack", BUNDLED_PACK)
    row = json.loads(res.stdout.splitlines()[0])
    assert res.exit_code == 0 and row["orientation"]["turned_by"] == 270 and row["orientation"]["corrected"]
    assert any("head to the right" in w for w in row["warnings"])


# --------------------------------------------------------------------------- fitting


def test_fit_writes_the_check_into_a_copy_and_leaves_the_pack(cli, cxr4_48, tmp_path):  # noqa: F811
    import shutil

    src = tmp_path / "pack"
    shutil.copytree(BUNDLED_PACK, src)
    before = {f.name: f.read_bytes() for f in src.iterdir()}
    res = cli("orientation", "fit", src, "--data", cxr4_48.path, "--n", 60, "--out", tmp_path / "fitted", "--json")
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["n_fit"] == 60 and record["fit_split"] == "train" and record["threshold_split"] == "val"
    assert 0.5 <= record["threshold"] <= 0.99 and record["held_out"]["upright"] > 0
    assert {f.name: f.read_bytes() for f in src.iterdir()} == before           # --out: the pack untouched
    fitted = Pipeline(tmp_path / "fitted")
    assert fitted.orientation is not None and fitted.orientation.threshold == pytest.approx(record["threshold"])
    assert load_pack(tmp_path / "fitted")["gate"].metadata.extras["orientation"]["data_sha256"]
    # rewriting the pack keeps the files that are not models: its model card is not lost
    assert (tmp_path / "fitted" / "MODEL_CARD.md").read_bytes() == (BUNDLED_PACK / "MODEL_CARD.md").read_bytes()
    # what a user gets wrong: an existing --out, the same split twice
    again = cli("orientation", "fit", src, "--data", cxr4_48.path, "--out", tmp_path / "fitted")
    assert again.exit_code != 0 and "already exists" in again.output
    same = cli("orientation", "fit", src, "--data", cxr4_48.path, "--split", "val", "--out", tmp_path / "x")
    assert same.exit_code != 0 and "threshold needs films" in same.output
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")                    # a dangling symlink at the output
    linked = cli("orientation", "fit", src, "--data", cxr4_48.path, "--out", link)
    assert linked.exit_code != 0 and "already exists" in linked.output and "Traceback" not in linked.output
    assert link.is_symlink() and not (tmp_path / "elsewhere").exists()
    test_split = cli("orientation", "fit", src, "--data", cxr4_48.path, "--split", "test")
    assert test_split.exit_code == 2 and "test" in test_split.output
    assert {f.name: f.read_bytes() for f in src.iterdir()} == before


def test_the_pipeline_image_turn_is_exact():
    img = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    for turn in orientation.TURNS:
        back = orientation.upright(img.rotate(turn, expand=True), turn)
        np.testing.assert_array_equal(np.asarray(back), np.asarray(img))
    with pytest.raises(ValueError):
        orientation.upright(img, 45)


def test_an_image_the_gate_rejects_is_never_turned_for_a_second_chance(bundled, shared_data):
    """The check has only seen chest X-rays: on a desktop wallpaper it may 'see' a turn, and the gate scores the
    turned picture higher (0.005 -> 0.75 measured). Such an image is reported, not turned, and stays rejected."""
    path = shared_data / "noncxr" / "images" / "mate_abstract_Silk.png"
    if not path.is_file():
        pytest.skip(f"needs {path}")
    r = bundled.predict(path)
    assert r.status == "rejected" and r.gate.score < 0.1
    assert r.orientation["turned_by"] != 0 and r.orientation["corrected"] is False
    assert "gate does not accept the image as given" in r.orientation["note"]
    assert not any("turned upright" in w for w in r.warnings)
    as_is = Pipeline(BUNDLED_PACK, upright=False).predict(path)        # --no-upright: nothing to warn about either
    assert as_is.status == "rejected" and not any("turned by" in w for w in as_is.warnings)


def test_info_says_the_pack_turns_films_upright(cli, bundled):  # noqa: F811
    res = cli("info", BUNDLED_PACK)
    assert res.exit_code == 0
    line = next(x for x in res.output.splitlines() if x.strip().startswith("orientation"))
    rec = load_pack(BUNDLED_PACK)["gate"].metadata.extras["orientation"]
    assert f"p >= {rec['threshold']}" in line and "upright turned by mistake" in line
    assert sum(x.strip().startswith("ood guard") for x in res.output.splitlines()) == 3   # each model's guard
