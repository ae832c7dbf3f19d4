"""cxr-edge bench: it runs on a pack and reports what it documents. Correctness only: no timed assertions."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cxr_edge.tools.bench.harness import Stats, interleave
from cxr_edge.tools.bench.inputs import phone_jpeg, synthetic_film
from cxr_edge.tools.bench.memory import peak_rss_of
from cxr_edge.tools.bench.sections import count_macs
from cxr_edge.training.keras_bench import KerasWorker, keras_rows
from cxr_edge.cli import main

REPORT_KEYS = {"schema", "machine", "command", "pack", "settings", "notes", "backend", "models", "keras",
               "end_to_end", "batch", "mixed_batch", "memory", "startup", "sizes", "targets"}
TARGETS = {"int8 @224, 1 thread: median ms", "int8 vs Keras float, 1 thread: speed-up",
           "12-MP phone JPEG to all results, 1 thread: ms", "batch: images/s",
           "batch scaling, 1024-px PNGs + 12-MP JPEGs: predict_many(workers=2) / plain loop",
           "peak memory of predict: RSS (summed PSS where more processes cost more): MB",
           "pack size: MB", "cxr-edge --help: s"}


def test_interleave_rotates_the_order_and_keeps_every_sample():
    calls = []

    def measure(name):
        def run(n):
            calls.append(name)
            return [float(len(calls))] * n
        return run

    stats = interleave({k: measure(k) for k in "abc"}, rounds=3, runs={"a": 2, "b": 1, "c": 1}, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # one warm-up each, not counted
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert (stats["a"].n, stats["b"].n, stats["c"].n) == (6, 3, 3)


def test_stats_of_samples():
    s = Stats.of([1, 2, 3, 4, 100])
    assert (s.median, s.min, s.max, s.n) == (3, 1, 100, 5) and 4 < s.p90 <= 100
    assert set(s.to_dict()) == {"median", "p90", "min", "max", "n"}


def test_counted_macs_of_mobilenet_v2_match_the_published_300_million(shared_weights):
    from cxr_edge.runtime.interpreter import TFLiteModel

    macs = count_macs(TFLiteModel(shared_weights / "mobilenet_v2_1.0_224_quant.tflite"))
    assert 290e6 < macs < 315e6


def test_peak_rss_is_the_childs_own_not_the_parents():
    ballast = np.ones(300 * 2**20 // 8)  # 300 MB here must not show up in the child's peak
    _, small, rc = peak_rss_of([sys.executable, "-c", "pass"])
    _, big, _ = peak_rss_of([sys.executable, "-c", "import numpy; a = numpy.ones(200 * 2**20 // 8); a += 1"])
    assert rc == 0 and 1 < small < 100
    assert big > small + 150
    del ballast


def test_phone_jpeg_is_a_12_megapixel_jpeg():
    img = Image.open(io.BytesIO(phone_jpeg(synthetic_film(256))))
    assert img.format == "JPEG" and img.size == (3000, 4000) and img.mode == "RGB"


def test_bench_json_has_the_documented_keys(tiny_pack):
    res = CliRunner().invoke(main, ["bench", "--pack", str(tiny_pack), "--quick", "--json", "--no-keras",
                                    "--batch-images", "4", "--threads", "2"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert REPORT_KEYS <= set(report) and report["schema"] == "cxr-edge-bench/1"
    assert report["command"].startswith("cxr-edge bench --pack") and "--no-keras" in report["command"]
    assert report["settings"]["threads"] == [1, 2]
    assert {(r["slot"], r["threads"]) for r in report["models"]} == {(s, t) for s in ("gate", "cxr4", "nih14")
                                                                     for t in (1, 2)}
    for r in report["models"]:
        assert r["run"]["median"] > 0 and r["invoke"]["median"] > 0 and r["per_s"] > 0 and r["macs_m"] > 0
    assert report["backend"]["backend"] in report["backend"]["installed"]
    assert report["keras"] == {"rows": [], "note": "skipped (--no-keras)"}
    e2e = report["end_to_end"]
    assert e2e["facts"]["photo_size"] == [3000, 4000] and e2e["rows"][0]["ratio"] == 1.0
    assert all(r["median_ms"] > 0 for r in e2e["rows"]) and e2e["stages"]
    assert {"decode", "gate", "cxr4", "nih14"} <= {r["name"] for r in e2e["stages"]}
    assert any("gate rejects" in r["name"] for r in e2e["rows"])
    assert report["batch"]["images"] == 4 and all(r["per_s"] > 0 for r in report["batch"]["rows"])
    mixed = report["mixed_batch"]
    assert mixed["images"] == 4 and [r["name"] for r in mixed["rows"]] == [
        "plain loop: predict() per image, 1 thread", "predict_many(workers=2): 2 worker threads, 1 interpreter "
        "thread each"] and mixed["status_of_first_50"] == {"ok": 4}
    scaling = next(t for t in report["targets"] if t["name"].startswith("batch scaling"))
    assert scaling["value"] == mixed["rows"][1]["ratio"] > 0
    assert [r["exit_code"] for r in report["memory"]] == [0] * 6
    assert all(r["peak_rss_mb"] > 0 for r in report["memory"])
    workers = report["memory"][4]      # the mixed batch with --workers 2: one process, two threads
    assert "12-MP JPEGs (--workers 2)" in workers["name"] and workers["processes"] == 1
    assert 0 < workers["total_pss_mb"] <= workers["peak_rss_mb"]
    memory = next(t for t in report["targets"] if t["name"].startswith("peak memory"))
    assert memory["value"] == max(r["peak_rss_mb"] for r in report["memory"][2:])
    assert [r["name"] for r in report["startup"]][:2] == ["python -c pass", "cxr-edge --help"]
    assert report["sizes"]["total_bytes"] == report["pack"]["total_bytes"] > 0
    assert {t["name"] for t in report["targets"]} == TARGETS
    speed = next(t for t in report["targets"] if t["name"].startswith("int8 @224"))
    assert speed["value"] is None and speed["met"] is None  # no 224-px model in the tiny pack


def test_batch_times_every_model_even_when_the_gate_rejects(tiny_pack, tmp_path):
    """The synthetic film of `cxr-edge bench` is no real CXR: a real gate rejects it, and a batch that then
    timed the gate alone reported 376 images/s for a pack that runs 140."""
    import shutil

    from PIL import Image

    from cxr_edge.tools.bench.inputs import write_batch
    from cxr_edge.tools.bench.sections import batch
    from cxr_edge.runtime.pack import load_pack
    from cxr_edge.tools.pack_writer import rewrite_metadata

    pack = shutil.copytree(tiny_pack, tmp_path / "strict")
    meta = load_pack(pack)["gate"].metadata
    meta.thresholds["strict"] = {"chest_xray": 1.0}   # the gate rejects everything
    rewrite_metadata(pack, {"gate": meta})
    files = write_batch(tmp_path / "b", [Image.new("L", (64, 64), 128)], 3)
    out = batch(load_pack(pack), files, rounds=1, profile="strict")
    assert out["classifiers_ran_on_first_50"] == 3 and out["status_of_first_50"] == {"ok": 3}


def test_bench_prints_tables_for_the_sections_asked(tiny_pack):
    res = CliRunner().invoke(main, ["bench", "--pack", str(tiny_pack), "--quick", "--only", "models",
                                    "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "## int8 models" in res.stdout and "## Targets" in res.stdout and "## Batch" not in res.stdout


def test_keras_rows_are_skipped_with_a_note_without_tensorflow(tiny_pack):
    from test_device_side import BLOCKER

    code = BLOCKER + ("from cxr_edge.cli import main\n"
                      f"main(['bench', '--pack', {str(tiny_pack)!r}, '--only', 'keras', '--json'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    keras = json.loads(res.stdout)["keras"]
    assert keras["rows"] == [] and "TensorFlow is not installed" in keras["note"]


@pytest.mark.parametrize("broken", ["raise ImportError('libtensorflow_framework.so.2: cannot open shared object file')",
                                    "import os; os.abort()"], ids=["import-error", "process-dies"])
def test_keras_rows_are_skipped_with_the_reason_when_tensorflow_is_broken(tmp_path, broken):
    """TensorFlow installed but unusable (a broken install; a wheel built for other CPUs, which kills the
    process): bench goes on without the optional Keras rows and says why, instead of "Internal error"."""
    import os

    from cxr_edge.config import BUNDLED_PACK

    for name in ("tensorflow", "tf_keras"):     # both found, so bench believes TensorFlow is there
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(broken + "\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    res = subprocess.run([sys.executable, "-m", "cxr_edge", "bench", "--pack", str(BUNDLED_PACK), "--only", "keras",
                          "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    keras = json.loads(res.stdout)["keras"]
    assert keras["rows"] == [] and keras["note"].startswith("skipped: TensorFlow is installed but")
    assert ("libtensorflow_framework" in keras["note"]) if "ImportError" in broken else ("died" in keras["note"])


def test_keras_rows_need_the_alpha_the_pack_records(tiny_pack):
    from cxr_edge.runtime.pack import load_pack

    out = keras_rows(load_pack(tiny_pack), {}, (1,), rounds=1, runs=1)
    assert out["rows"] == [] and "alpha" in out["note"]


@pytest.mark.slow  # a TensorFlow child process: 10-40 s depending on the machine's load
def test_keras_worker_times_a_small_mobilenet_with_pinned_threads():
    pytest.importorskip("tensorflow")
    with KerasWorker(np.zeros((32, 32, 1), np.float32), threads=1,
                     build={"task": "gate", "alpha": 0.35, "size": 32}) as worker:
        samples = worker(3)
    assert len(samples) == 3 and all(s > 0 for s in samples)
    assert worker.info["threads"] == 1 and worker.cpu_per_wall is not None
