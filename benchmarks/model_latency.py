"""Per model (gate, cxr4, nih14): Keras float vs TFLite float32 / float16 / dynamic / int8, 1 and 2 threads.

Run (TensorFlow needed for the Keras rows and the conversions; be nice on shared machines):

    TF_USE_LEGACY_KERAS=1 nice -n 10 .venv/bin/python benchmarks/model_latency.py \
        [--runs-dir runs] [--pack cxr_edge/packs/default] [--threads 1 2] [--rounds 8] \
        [--tflite-runtime-python /tmp/tflrt-venv/bin/python]

Models: the int8 rows are the pack's models (exactly what ships) when ``--pack`` has the slot;
Keras float is the run's ``float.h5`` and TFLite float32/float16/dynamic are converted from it
when ``--runs-dir`` has the run; anything missing is a stand-in of the same architecture and
size (see ``benchmarks/_models.py``), and every table says which. Conversions are cached
under ``$CXR_EDGE_BENCH_CACHE`` (first run: ~1 min per model and format).

All variants of a model run in interleaved rounds (the order rotated each round) on the same
preprocessed real CXR; the table gives medians and p90 over all rounds and ratios against
Keras float and TFLite float32 at the same thread count, measured in the same run. Keras runs
in one child process per thread count (TensorFlow fixes its thread pool at start-up), as a
``tf.function`` (graph mode: the fastest plain Keras path). TFLite goes through
``TFLiteModel.run`` (quantize + invoke + dequantize, what ``predict`` pays); for int8 the bare
``invoke`` is timed too and gives GMAC/s against the compute floor.

A second table compares interpreter backends on the int8 model and on the ImageNet int8
MobileNetV2 from ../shared/weights: ai-edge-litert and tf.lite in this process, and
tflite-runtime 2.14 in a separate Python with numpy<2 when ``--tflite-runtime-python`` is
given (it cannot be installed beside numpy 2), e.g. made with
``python -m venv /tmp/tflrt-venv && /tmp/tflrt-venv/bin/pip install "numpy<2" tflite-runtime==2.14.0``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models  # noqa: E402
from _timing import header, interleave, shared_dir, table  # noqa: E402

from cxr_edge.tools.bench.sections import model_measures  # noqa: E402
from cxr_edge.training.keras_bench import KerasWorker  # noqa: E402

FORMATS = ("float32", "float16", "dynamic", "int8")


def task_input(size: int) -> np.ndarray:
    """One real NIH CXR preprocessed for a ``size``-px grey model."""
    from cxr_edge.runtime.preprocess import preprocess
    from cxr_edge.tasks import get_task

    return preprocess(_models.real_cxrs(1)[0], get_task("cxr4").with_input(size=size))


def int8_model(task: str, src, pack) -> tuple[bytes, str]:
    if pack is not None and task in pack.models and pack.models[task].metadata.input.size == src.size:
        return pack.models[task].content, f"pack {pack.path}"
    return _models.tflite(src, "int8"), f"{src.label} (PTQ here, {_models.CALIBRATION_N} NIH calibration images)"


def measure_task(task: str, args, pack) -> dict:
    src = _models.source(task, args.runs_dir)
    x = task_input(src.size)
    contents = {m: (_models.tflite(src, m), src.label) for m in FORMATS[:-1]}
    contents["int8"] = int8_model(task, src, pack)
    keras_file = str(src.path / "float.h5") if src.kind == "run" else str(_models.CACHE / f"{src.key}.h5")
    _models.keras_bytes(src)  # makes the stand-in .h5 when it is not cached yet
    measures, facts, workers = {}, {}, []
    try:
        for t in args.threads:
            if not args.no_keras:
                for call, key in (("function", "keras"), ("predict", "keras predict")):
                    w = KerasWorker(x, threads=t, model_file=keras_file, call=call)
                    workers.append(w)
                    measures[(key, t)] = w
            for fmt, (content, _) in contents.items():
                m, f = model_measures(f"{task} {fmt}", content, x, threads=t, invoke=fmt == "int8")
                for name, fn in m.items():
                    measures[(fmt + (" invoke" if name.endswith("invoke") else ""), t)] = fn
                facts[fmt] = f
        runs = {k: (args.keras_runs if k[0].startswith("keras") else args.runs) for k in measures}
        stats = interleave(measures, rounds=args.rounds, runs=runs)
    finally:
        for w in workers:
            w.close()
    cpu = {f"{k[0]} {k[1]}t": measures[k].cpu_per_wall for k in measures if k[0].startswith("keras")}
    return {"task": task, "size": src.size, "keras_cpu": cpu, "source": src.label, "contents": contents, "stats": stats,
            "facts": facts, "keras_bytes": _models.keras_bytes(src), "keras_source": keras_file}


def print_task(r: dict, threads) -> None:
    st = r["stats"]
    rows = []
    for t in threads:
        keras = st.get(("keras", t))
        f32 = st[("float32", t)]
        if keras:
            rows.append(["Keras float (TensorFlow, tf.function)", "-", t, f"{keras.median:.1f}", f"{keras.p90:.1f}",
                         f"{1e3 / keras.median:.0f}", "1.0x", f"{f32.median / keras.median:.2f}x"])
        predict = st.get(("keras predict", t))
        if predict:
            rows.append(["Keras float, model.predict(x) per image", "-", t, f"{predict.median:.1f}",
                         f"{predict.p90:.1f}", f"{1e3 / predict.median:.0f}", f"{keras.median / predict.median:.2f}x",
                         f"{f32.median / predict.median:.2f}x"])
        for fmt in FORMATS:
            s = st[(fmt, t)]
            rows.append([f"TFLite {fmt}", f"{len(r['contents'][fmt][0]) / 1e6:.2f}", t, f"{s.median:.2f}",
                         f"{s.p90:.2f}", f"{1e3 / s.median:.0f}",
                         f"{keras.median / s.median:.1f}x" if keras else "-", f"{f32.median / s.median:.2f}x"])
    print(f"\n### {r['task']} ({r['size']} px)\n")
    print("int8 from: " + r["contents"]["int8"][1] + "; Keras and float formats from: " + r["source"] + "\n")
    print(table(["variant", "MB", "threads", "median ms", "p90 ms", "images/s", "speed-up vs Keras float",
                 "speed-up vs TFLite float32"], rows))
    if r["keras_cpu"]:
        print("\nTensorFlow CPU seconds per second of timed calls (the thread pinning holding): "
              + ", ".join(f"{k} {v}" for k, v in r["keras_cpu"].items()))


def print_floor(results: list[dict], threads) -> None:
    rows = []
    for r in results:
        f = r["facts"]["int8"]
        if not f["macs"]:
            continue
        for t in threads:
            inv = r["stats"][("int8 invoke", t)]
            keras = r["stats"].get(("keras", t))
            rows.append([r["task"], r["size"], t, f"{f['macs'] / 1e6:.0f}", f"{inv.median:.2f}",
                         f"{f['macs'] / inv.median / 1e6:.0f}",
                         f"{f['macs'] / keras.median / 1e6:.1f}" if keras else "-"])
    print("\n### Against the compute floor (multiply-accumulates counted from the int8 model's conv, depthwise "
          "and fully-connected ops)\n")
    print(table(["model", "px", "threads", "M MACs", "int8 bare invoke ms", "int8 GMAC/s", "Keras float GMAC/s"],
                rows))


def print_sizes(results: list[dict], pack) -> None:
    rows = [[r["task"], f"{r['keras_bytes'] / 1e6:.2f}",
             *(f"{len(r['contents'][m][0]) / 1e6:.2f}" for m in FORMATS),
             f"{r['keras_bytes'] / len(r['contents']['int8'][0]):.1f}x"] for r in results]
    print("\n### Model sizes (MB; int8 = the pack's file with its embedded metadata when from a pack)\n")
    print(table(["model", "Keras .h5 (float32)", "TFLite float32", "float16", "dynamic", "int8",
                 "h5 / int8"], rows))
    if pack is not None:
        print(f"\npack total ({pack.path}): {pack.total_bytes() / 1e6:.2f} MB in {len(pack.models)} models")


# --------------------------------------------------------------------------- backends


_CHILD = r"""
import json, sys, time
import numpy as np
from tflite_runtime.interpreter import Interpreter
model, xfile, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
interp = Interpreter(model_path=model, num_threads=threads)
interp.allocate_tensors()
index, q = interp.get_input_details()[0]['index'], np.load(xfile)
print(json.dumps({'ready': True}), flush=True)
for line in sys.stdin:
    out = []
    for _ in range(int(line)):
        t0 = time.perf_counter()
        interp.set_tensor(index, q)
        interp.invoke()
        out.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps(out), flush=True)
"""


class ChildInvoke:
    """Bare invoke timed in another Python (tflite-runtime needs numpy<2), round by round over a pipe."""

    def __init__(self, python: str, model: Path, q: np.ndarray, threads: int, tmp: Path):
        xfile = tmp / f"{model.stem}.npy"
        np.save(xfile, q)
        self.proc = subprocess.Popen([python, "-c", _CHILD, str(model), str(xfile), str(threads)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        json.loads(self.proc.stdout.readline())

    def __call__(self, runs: int) -> list[float]:
        self.proc.stdin.write(f"{runs}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def backends(args, results: list[dict]) -> None:
    from cxr_edge.runtime.interpreter import TFLiteModel, available_backends

    imagenet = (shared_dir() / "weights" / _models.IMAGENET_INT8).read_bytes()
    ours = next((r for r in results if r["size"] == 224), results[0])
    models = {f"{ours['task']} int8 ({ours['size']} px, 1 channel)": (ours["contents"]["int8"][0], ours["size"]),
              "ImageNet MobileNetV2 1.0 int8 (224 px, 3 channels, shared/weights)": (imagenet, 224)}
    found = [b for b in available_backends() if b in ("ai-edge-litert", "tf.lite")]
    measures, children = {}, []
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        for label, (content, size) in models.items():
            probe = TFLiteModel(content)
            x = np.random.default_rng(0).uniform(-1, 1, (1, *probe.input_shape)).astype(np.float32)
            q = probe.quantize(x, probe.inputs[0])
            for b in found:
                m = TFLiteModel(content, threads=1, backend=b)
                interp, idx = m.interpreter, m.inputs[0].index
                measures[(label, b)] = _invoke(interp, idx, q)
            if args.tflite_runtime_python:
                path = Path(tmp) / f"m{len(children)}.tflite"
                from cxr_edge.runtime.metadata import split_model

                path.write_bytes(split_model(content)[0])
                child = ChildInvoke(args.tflite_runtime_python, path, q, 1, Path(tmp))
                children.append(child)
                measures[(label, "tflite-runtime 2.14 (numpy<2 venv)")] = child
        try:
            stats = interleave(measures, rounds=args.rounds, runs=max(5, args.runs // 2))
        finally:
            for c in children:
                c.close()
    rows = []
    for label in models:
        base = stats[(label, found[0])].median
        for (lab, b), s in stats.items():
            if lab == label:
                rows.append([label, b, f"{s.median:.2f}", f"{s.p90:.2f}", f"{s.median / base:.2f}x"])
    print("\n### Interpreter backends (bare invoke, 1 thread; ratio to the first)\n")
    print(table(["model", "backend", "median ms", "p90 ms", f"ratio to {found[0]}"], rows))


def _invoke(interp, index, q):
    from cxr_edge.tools.bench.harness import timed

    def call():
        interp.set_tensor(index, q)
        interp.invoke()

    return timed(call)


def main():
    ap = _models.pack_arguments(__doc__)
    ap.add_argument("--tasks", nargs="+", default=list(_models.TASKS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=20, help="TFLite samples per variant per round")
    ap.add_argument("--keras-runs", type=int, default=3, help="Keras samples per thread count per round")
    ap.add_argument("--no-keras", action="store_true")
    ap.add_argument("--tflite-runtime-python", default=None,
                    help="a Python with tflite-runtime and numpy<2, for the backend table")
    args = ap.parse_args()
    from cxr_edge.runtime.pack import load_pack

    pack = load_pack(args.pack) if args.pack and args.pack.exists() else None
    print(header("Per-model latency: Keras float vs TFLite float32 / float16 / dynamic / int8"))
    results = []
    for task in args.tasks:
        r = measure_task(task, args, pack)
        print_task(r, args.threads)
        results.append(r)
        sys.stdout.flush()
    f = results[0]["facts"]["int8"]
    print(f"\ninterpreter: {f['backend']} {f['backend_version']}, {f['delegate']}")
    print_floor(results, args.threads)
    print_sizes(results, pack)
    backends(args, results)


if __name__ == "__main__":
    main()
