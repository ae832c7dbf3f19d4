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


class _KillsItsWorker:
    """A source that kills the worker process that unpickles it, as a crash in a native decoder would."""

    def __reduce__(self):
        import signal

        return signal.raise_signal, (signal.SIGKILL,)


def _worker_pids() -> set[int]:
    """Live worker processes started by this process (children running cxr_edge.runtime.workers)."""
    import os

    pids = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
            pids |= {int(p) for p in f.read().split()}
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"cxr_edge.runtime.workers" in f.read():
                    found.add(pid)
        except OSError:
            pass
    return found


@pytest.fixture
def at_once(monkeypatch):
    """Workers from the first image: this process does not predict alone first (a tiny-model batch
    would be over before they started)."""
    from cxr_edge.runtime import workers

    monkeypatch.setattr(workers, "PAYS_OFF_S", 0.0)


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


def test_bad_file_in_a_batch_does_not_stop_it(pipeline, cxr, tmp_path, at_once):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    preds = list(pipeline.predict_many([cxr, bad, cxr], workers=2))
    assert [p.status for p in preds] == ["ok", "error", "ok"]
    assert preds[1].error["kind"] == "empty" and preds[1].file == str(bad)
    assert preds[0].results["cxr4"].probabilities == preds[2].results["cxr4"].probabilities  # deterministic


def test_pipelined_and_plain_loops_agree(pipeline, shared_data, at_once):
    files = sorted((shared_data / "cxr4" / "images").glob("*.png"))[:6]
    a = [p.to_dict()["cxr4"] for p in pipeline.predict_many(files, workers=2)]
    b = [p.to_dict()["cxr4"] for p in pipeline.predict_many(files, workers=0)]
    c = [pipeline.predict(f).to_dict()["cxr4"] for f in files]
    assert a == b == c


def test_batch_reads_ahead_a_bounded_window(pipeline, cxr, at_once):
    """predict_many must not pull the whole list into memory: a 1,000-image batch held 480 MB that way."""
    pulled = []

    def sources():
        for i in range(40):
            pulled.append(i)
            yield cxr

    stream = pipeline.predict_many(sources(), workers=2)
    first = next(stream)
    assert first.status == "ok"
    assert len(pulled) <= 2 * 2 + 1   # the window (2 x workers) plus the one being submitted
    assert sum(1 for _ in stream) == 39 and len(pulled) == 40


def test_a_short_batch_is_predicted_without_starting_workers(pipeline, cxr):
    preds = pipeline.predict_many([cxr] * 3, workers=2)
    assert next(preds).status == "ok" and not _worker_pids()
    assert [p.status for p in preds] == ["ok", "ok"]


def test_batch_runs_in_worker_processes_whose_logs_reach_the_parent(pipeline, cxr, caplog, at_once):
    """Two workers are two processes with interpreters of their own; what they log arrives here."""
    import logging
    import os

    caplog.set_level(logging.DEBUG, logger="cxr_edge")
    preds = list(pipeline.predict_many([cxr] * 6, workers=2))
    assert [p.status for p in preds] == ["ok"] * 6
    assert len({p.results["nih14"].probabilities["Effusion"] for p in preds}) == 1
    from_workers = [r for r in caplog.records if r.process != os.getpid()]
    assert from_workers and all(r.processName.startswith("cxr-edge worker") for r in from_workers)
    assert {r.process for r in from_workers} - {os.getpid()}   # a worker loaded its models and said so
    assert not _worker_pids()                                # and both are gone


def test_a_worker_crash_is_that_images_error_and_the_batch_goes_on(pipeline, cxr, caplog, at_once):
    from cxr_edge.runtime.workers import CRASH_KIND

    preds = list(pipeline.predict_many([cxr, cxr, _KillsItsWorker(), cxr, cxr, cxr], workers=2))
    assert [p.status for p in preds] == ["ok", "ok", "error", "ok", "ok", "ok"]
    assert preds[2].error["kind"] == CRASH_KIND and "killed by SIGKILL" in preds[2].error["message"]
    assert preds[2].file == "<image>"
    assert "starting another" in caplog.text and not _worker_pids()


def test_a_worker_killed_from_outside_costs_at_most_its_image(pipeline, cxr, at_once):
    """The OOM killer picks a worker, busy or idle: the batch still gets one row per image."""
    import os
    import signal

    from cxr_edge.runtime.workers import CRASH_KIND

    stream = pipeline.predict_many([cxr] * 30, workers=2)
    preds = [next(stream)]
    os.kill(min(_worker_pids()), signal.SIGKILL)
    preds += list(stream)
    assert len(preds) == 30 and not _worker_pids()
    kinds = [p.error["kind"] if p.error else p.status for p in preds]
    assert set(kinds) <= {"ok", CRASH_KIND} and kinds.count(CRASH_KIND) <= 1


def test_every_kind_of_source_gives_the_same_result_in_workers(pipeline, cxr, at_once):
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


def test_stopping_a_batch_early_stops_its_workers(pipeline, cxr, at_once):
    stream = pipeline.predict_many([cxr] * 20, workers=2)
    assert next(stream).status == "ok"
    assert len(_worker_pids()) == 2
    stream.close()           # what a consumer's break, exception or Ctrl-C does to the generator
    assert not _worker_pids()


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
                       "rectify", "quality", "ood", "tta"]
    assert d["rectify"] == {"path": "digital", "photo": False, "passthrough": True, "searched": False}
    assert d["quality"] is None and d["tta"] is None
    assert json.loads(json.dumps(d)) == d
