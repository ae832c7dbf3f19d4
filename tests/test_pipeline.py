"""The gate-first pipeline on real images with a real (tiny, random-weight) int8 pack."""

import shutil

import numpy as np
import pytest

from cxr_edge.errors import PackError
from cxr_edge.runtime.pack import load_pack
from cxr_edge.tools.pack_writer import rewrite_metadata
from cxr_edge.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipeline(tiny_pack):
    return Pipeline(tiny_pack)


@pytest.fixture
def cxr(shared_data):
    return shared_data / "nih_cxr14" / "images" / "00000061_012.png"


def _counted(source, n: int):
    """A generator of ``n`` times ``source`` and the list of indices it has handed out so far."""
    pulled = []

    def sources():
        for i in range(n):
            pulled.append(i)
            yield source

    return pulled, sources()


def _predict_threads() -> set[str]:
    """Live worker threads of predict_many."""
    import threading

    return {t.name for t in threading.enumerate() if t.name.startswith("cxr-edge-predict")}


def test_accepted_image_gets_all_three_results(pipeline, cxr):
    pred = pipeline.predict(cxr)
    assert pred.status == "ok" and pred.gate.accepted
    assert set(pred.results["cxr4"].probabilities) == {"COVID-19", "Normal", "Pneumonia", "Tuberculosis"}
    assert abs(sum(pred.results["cxr4"].probabilities.values()) - 1) < 0.03  # softmax (int8 output steps)
    flagged = {k for k, p in pred.results["cxr4"].probabilities.items() if p >= pred.results["cxr4"].thresholds[k]}
    assert set(pred.results["cxr4"].positive) == flagged   # one-vs-rest thresholds flag classes; top is the answer
    assert len(pred.results["nih14"].probabilities) == 14
    assert all((pred.results["nih14"].probabilities[k] >= pred.results["nih14"].thresholds[k]) for k in pred.results["nih14"].positive)
    d = pred.to_dict()
    assert {"file", "gate", "cxr4", "nih14", "error"} <= d.keys() and d["error"] is None


def test_rejected_image_skips_the_classifiers(tiny_pack, tmp_path, shared_data):
    pack = shutil.copytree(tiny_pack, tmp_path / "strict")
    meta = load_pack(pack)["gate"].metadata
    meta.thresholds["strict"] = {"chest_xray": 1.0}  # nothing can pass
    rewrite_metadata(pack, {"gate": meta})
    pred = Pipeline(pack, profile="strict").predict(shared_data / "noncxr" / "images" / "skimage_coffee.png")
    assert pred.status == "rejected" and pred.results.get("cxr4") is None and pred.results.get("nih14") is None
    assert pred.message.startswith("rejected: not a chest X-ray (score")
    assert "cxr4" not in pred.timings_ms  # the classifiers really did not run


def test_a_pack_without_a_gate_is_refused_unless_gating_is_turned_off(tiny_pack, tmp_path, cxr):
    from cxr_edge.tools.pack_writer import write_pack

    pack = load_pack(tiny_pack)
    write_pack(tmp_path / "no-gate", {s: (pack[s].content, pack[s].metadata) for s in ("cxr4", "nih14")})
    with pytest.raises(PackError, match="no gate model"):
        Pipeline(tmp_path / "no-gate")
    pred = Pipeline(tmp_path / "no-gate", gate_first=False).predict(cxr)
    assert pred.status == "ok" and pred.gate is None and pred.results.get("cxr4") is not None


def test_unknown_profile_fails_at_start(tiny_pack):
    with pytest.raises(PackError, match="threshold profile 'screening'"):
        Pipeline(tiny_pack, profile="screening")


def test_bad_file_in_a_batch_does_not_stop_it(pipeline, cxr, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    preds = list(pipeline.predict_many([cxr, bad, cxr], workers=2))
    assert [p.status for p in preds] == ["ok", "error", "ok"]
    assert preds[1].error["kind"] == "empty" and preds[1].file == str(bad)
    assert preds[0].results["cxr4"].probabilities == preds[2].results["cxr4"].probabilities  # deterministic


def test_pipelined_and_plain_loops_agree(pipeline, shared_data):
    files = sorted((shared_data / "cxr4" / "images").glob("*.png"))[:6]
    a = [p.to_dict()["cxr4"] for p in pipeline.predict_many(files, workers=2)]
    b = [p.to_dict()["cxr4"] for p in pipeline.predict_many(files, workers=0)]
    c = [pipeline.predict(f).to_dict()["cxr4"] for f in files]
    assert a == b == c


def test_batch_reads_ahead_a_bounded_window(pipeline, cxr):
    """predict_many must not pull the whole list into memory: a 1,000-image batch held 480 MB that way."""
    pulled, sources = _counted(cxr, 40)
    stream = pipeline.predict_many(sources, workers=2)
    first = next(stream)
    assert first.status == "ok"
    assert len(pulled) <= 2 * 2 + 1   # the window (2 x workers) plus the one being submitted
    assert sum(1 for _ in stream) == 39 and len(pulled) == 40


def test_a_single_image_is_predicted_without_starting_workers(pipeline, cxr, monkeypatch):
    import threading

    before = set(threading.enumerate())
    monkeypatch.setattr(Pipeline, "_replica", lambda self: pytest.fail("loaded a second set of interpreters"))
    preds = pipeline.predict_many([cxr], workers=2)
    assert next(preds).status == "ok"
    assert not {t.name for t in set(threading.enumerate()) - before if t.name.startswith("cxr-edge-predict")}
    assert list(preds) == []


def test_a_finished_batch_leaves_no_thread_behind(pipeline, cxr):
    assert [p.status for p in pipeline.predict_many([cxr] * 5, workers=2)] == ["ok"] * 5
    assert not _predict_threads()


def test_batch_runs_on_two_threads_with_interpreters_of_their_own(pipeline, cxr, monkeypatch):
    """Each worker thread predicts with its own interpreters (one interpreter runs one image at a time):
    the calling pipeline's and one copy loaded up front, never one per image."""
    import threading

    from cxr_edge.runtime import pipeline as pipeline_module

    seen, lock = [], threading.Lock()
    real = pipeline_module.Pipeline.predict

    def spy(self, src, name=None, **kw):
        with lock:
            seen.append((threading.current_thread().name, id(self.models["cxr4"])))
        return real(self, src, name, **kw)

    loads = []
    real_replica = pipeline_module.Pipeline._replica
    monkeypatch.setattr(pipeline_module.Pipeline, "predict", spy)
    monkeypatch.setattr(pipeline_module.Pipeline, "_replica", lambda self: loads.append(1) or real_replica(self))
    preds = list(pipeline.predict_many([cxr] * 8, workers=2))
    assert [p.status for p in preds] == ["ok"] * 8
    assert len({p.results["nih14"].probabilities["Effusion"] for p in preds}) == 1
    assert all(name.startswith("cxr-edge-predict") for name, _ in seen)
    assert len({models for _, models in seen}) == 2 and len(loads) == 1


def test_every_kind_of_source_gives_the_same_result_in_workers(pipeline, cxr):
    import io

    from PIL import Image

    image = Image.open(cxr)
    sources = lambda: [cxr, str(cxr), cxr.read_bytes(), image, np.asarray(image), io.BytesIO(cxr.read_bytes()),
                       lambda: "not an image, and not picklable"]
    here = [p.to_dict() for p in pipeline.predict_many(sources(), workers=0)]
    there = [p.to_dict() for p in pipeline.predict_many(sources(), workers=2)]
    strip = [{k: v for k, v in d.items() if k != "timings_ms"} for d in here]
    assert strip == [{k: v for k, v in d.items() if k != "timings_ms"} for d in there]
    assert [d["status"] for d in there] == ["ok"] * 6 + ["error"]
    assert [d["file"] for d in there][:2] == [str(cxr)] * 2


def test_stopping_a_batch_early_drops_the_images_not_started(pipeline, cxr):
    pulled, sources = _counted(cxr, 40)
    stream = pipeline.predict_many(sources, workers=2)
    assert next(stream).status == "ok"
    stream.close()           # what a consumer's break, exception or Ctrl-C does to the generator
    assert len(pulled) <= 2 * 2 + 1
    import time

    for _ in range(100):     # the (at most two) images already running finish; nothing else starts
        if not _predict_threads():
            break
        time.sleep(0.05)
    assert not _predict_threads() and len(pulled) <= 2 * 2 + 1


def test_same_answer_from_path_bytes_and_array(pipeline, cxr):
    from PIL import Image

    by_path = pipeline.predict(cxr).results["nih14"].probabilities
    by_bytes = pipeline.predict(cxr.read_bytes()).results["nih14"].probabilities
    by_array = pipeline.predict(np.asarray(Image.open(cxr))).results["nih14"].probabilities
    assert by_path == by_bytes == by_array


def test_temperature_from_the_pack_is_applied(tiny_pack, tmp_path, cxr):
    pack = shutil.copytree(tiny_pack, tmp_path / "warm")
    before = Pipeline(pack).predict(cxr).results["cxr4"].probabilities
    meta = load_pack(pack)["cxr4"].metadata
    meta.temperature = 4.0
    rewrite_metadata(pack, {"cxr4": meta})
    after = Pipeline(pack).predict(cxr).results["cxr4"].probabilities
    assert np.std(list(after.values())) < np.std(list(before.values()))  # softer, same ranking
    assert max(after, key=after.get) == max(before, key=before.get)


def test_label_offsets_from_the_pack_are_applied(tiny_pack, tmp_path, cxr):
    pack = shutil.copytree(tiny_pack, tmp_path / "offsets")
    before = Pipeline(pack).predict(cxr).results["nih14"].probabilities
    meta = load_pack(pack)["nih14"].metadata
    meta.bias = {"Hernia": -3.0, "Effusion": 2.0}
    rewrite_metadata(pack, {"nih14": meta})
    after = Pipeline(pack).predict(cxr).results["nih14"].probabilities
    assert after["Hernia"] < 0.25 * before["Hernia"] and after["Effusion"] > before["Effusion"]
    assert after["Mass"] == pytest.approx(before["Mass"])


def test_a_softmax_profile_flags_classes_beside_the_top_answer(tiny_pack, tmp_path, cxr):
    from click.testing import CliRunner

    from cxr_edge.cli import main

    pack = shutil.copytree(tiny_pack, tmp_path / "screening")
    plain = Pipeline(pack).predict(cxr).results["cxr4"]
    low = min(plain.probabilities, key=plain.probabilities.get)   # the least likely class ...
    meta = load_pack(pack)["cxr4"].metadata
    meta.thresholds["screening"] = {lbl: (0.0 if lbl == low else 1.0) for lbl in meta.labels}
    rewrite_metadata(pack, {"cxr4": meta})
    pred = Pipeline(pack, profile="screening").predict(cxr).results["cxr4"]
    assert pred.top == plain.top != low and pred.positive == [low]   # ... is flagged, the answer unchanged
    res = CliRunner().invoke(main, ["predict", "--pack", str(pack), "--profile", "screening", str(cxr)])
    assert f"+{low}" in res.stdout.splitlines()[2]


def test_json_keys_are_stable_and_carry_no_arrays(pipeline, cxr):
    import json

    d = pipeline.predict(cxr).to_dict()
    assert list(d) == ["file", "status", "gate", "cxr4", "nih14", "error", "message", "warnings", "timings_ms",
                       "rectify", "quality", "ood", "tta", "orientation"]
    assert d["rectify"] == {"path": "digital", "photo": False, "passthrough": True, "searched": False}
    assert d["quality"] is None and d["tta"] is None
    assert json.loads(json.dumps(d)) == d
