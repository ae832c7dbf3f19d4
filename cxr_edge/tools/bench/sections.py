"""Speed, memory and size of a model pack on the machine this runs on (``cxr-edge bench``).

Device side: numpy, Pillow and the LiteRT interpreter only. The Keras float
rows need TensorFlow; without it they are skipped with a note. Nothing here
needs data: the inputs are a synthetic film (or ``image=``) and a 12-MP phone
JPEG rendered from it with :func:`cxr_edge.photosim.simulate_photo`.

Shared machines are noisy, so every number comes with a baseline measured in
the same run, variants run in interleaved rounds (round-robin, the order
rotated each round) and medians are reported. Thread counts are set
explicitly: the interpreter's ``num_threads``; TensorFlow's intra-op pool (in
a child process per thread count, because TensorFlow fixes it at start-up).

What it measures (the keys of :func:`run_bench`'s report, all JSON-ready):

* ``models``: per pack model and thread count, ``TFLiteModel.run`` (quantize,
  invoke, dequantize) and the bare ``invoke``: median/p90 ms, images/s, and
  GMAC/s from the multiply-accumulates counted in the model's own ops.
* ``keras``: the same architecture in Keras float through TensorFlow
  (MobileNetV2 of the alpha recorded in the pack; random weights, same speed).
* ``end_to_end``: a 12-MP phone JPEG through ``Pipeline.predict``: decode ->
  rectify -> quality -> gate -> classifiers (-> heatmaps); reduced-size JPEG
  decoding against a full decode first, all models against a gate that
  rejects, with heatmaps; stage medians from the pipeline's own timings.
* ``batch``: images/s of a folder through ``predict`` in a plain loop and
  through ``predict_many`` (worker threads with interpreters of their own).
* ``memory``: peak RSS of ``cxr-edge predict`` (one image, a batch) in a child
  process, beside bare Python and Python with numpy + Pillow + the interpreter.
* ``startup``: ``cxr-edge --help`` and a first prediction, against ``python -c pass``.
* ``sizes``: the pack's models and total.
* ``targets``: the issue's targets, each with the measured value and whether it was met.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PIL import Image

from ... import __version__

log = logging.getLogger(__name__)

SCHEMA = "cxr-edge-bench/1"
Measure = Callable[[int], list]  # measure(runs) -> that many samples in milliseconds

#: The issue's targets, on a 2-core machine; latency targets apply to MobileNetV2 1.0 at 224 px.
TARGETS = {"int8_ms": 5.0, "int8_vs_keras": 10.0, "end_to_end_ms": 60.0, "batch_per_s": 100.0,
           "peak_rss_mb": 150.0, "pack_mb": 9.0, "help_s": 0.3}

# --------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 0) -> list[float]:
    """Milliseconds of ``runs`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def timed(fn: Callable[[], object]) -> Measure:
    """A measure (runs -> samples) timing ``fn`` in this process."""
    return lambda runs: time_calls(fn, runs)


@dataclass(frozen=True)
class Stats:
    """Summary of samples in milliseconds."""

    median: float
    p90: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples) -> "Stats":
        a = np.asarray(samples, dtype=float)
        return cls(float(np.median(a)), float(np.percentile(a, 90)), float(a.min()), float(a.max()), int(a.size))

    def to_dict(self, digits: int = 3) -> dict:
        return {k: round(v, digits) if isinstance(v, float) else v for k, v in asdict(self).items()}


def interleave(measures: Mapping[str, Measure], *, rounds: int, runs: int | Mapping[str, int],
               warmup: int = 1) -> dict[str, Stats]:
    """Run every measure in ``rounds`` round-robin rounds (order rotated each round); Stats per name.

    ``runs``: samples per measure per round (one number, or per name). Each measure first runs
    ``warmup`` untimed samples. Interleaving spreads a shared machine's changing load over all
    variants alike, so their ratios hold even when absolute times drift.
    """
    names = list(measures)
    per = {n: (runs[n] if isinstance(runs, Mapping) else runs) for n in names}
    for n in names:
        if warmup:
            measures[n](warmup)
    samples: dict[str, list] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names) if names else 0
        for n in names[k:] + names[:k]:
            samples[n].extend(measures[n](per[n]))
    return {n: Stats.of(s) for n, s in samples.items()}


# --------------------------------------------------------------------------- the machine


def machine_info() -> dict:
    """CPU, cores, memory, OS, Python and library versions, load: the line every table carries."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    import PIL

    return {"cpu": cpu, "machine": platform.machine(), "cpus": os.cpu_count(), "usable_cpus": usable,
            "memory_gb": mem, "os": platform.platform(terse=True), "python": platform.python_version(),
            "numpy": np.__version__, "pillow": PIL.__version__, "cxr_edge": __version__,
            "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def describe_machine(m: dict) -> str:
    return (f"{m['cpu']} ({m['machine']}), {m['usable_cpus']} of {m['cpus']} CPUs usable, "
            f"{m['memory_gb']} GB, {m['os']}, Python {m['python']}, numpy {m['numpy']}, Pillow {m['pillow']}; "
            f"load average {m['load_avg']} at start")


# --------------------------------------------------------------------------- child processes


def run_child(args: list[str], env: dict | None = None) -> tuple[float, int]:
    """Run a command with its output discarded; returns (wall seconds, exit code)."""
    t0 = time.perf_counter()
    rc = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env).returncode
    return time.perf_counter() - t0, rc


# Run in a small fresh Python: Linux folds the address space a child was forked from into its
# ru_maxrss, so measuring straight from a big benchmark process would report that process's size.
_RSS_HELPER = """
import os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(time.perf_counter() - t0, usage.ru_maxrss * (1 if sys.platform == 'darwin' else 1024),
      os.waitstatus_to_exitcode(status))
"""


def peak_rss_of(args: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """Run a command; returns (wall seconds, peak RSS in MB, exit code). Needs ``os.wait4`` (Linux, macOS)."""
    if not hasattr(os, "wait4"):
        wall, rc = run_child(args, env)
        return wall, float("nan"), rc
    out = subprocess.run([sys.executable, "-c", _RSS_HELPER, *args], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    return float(out[0]), int(out[1]) / 2**20, int(out[2])


def cli_command() -> list[str]:
    """How users start cxr-edge here: the console script beside this Python, else ``python -m cxr_edge``."""
    script = Path(sys.executable).parent / "cxr-edge"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cxr_edge"]


def _child_env() -> dict:
    env = dict(os.environ)
    env.pop("CXR_EDGE_PACK", None)  # every command here names its pack
    return env


def startup(pack: Path, image: Path, *, rounds: int) -> list[dict]:
    """Wall time of ``python -c pass``, ``cxr-edge --help`` and one first prediction, interleaved."""
    cmd, env = cli_command(), _child_env()
    commands = {"python -c pass": [sys.executable, "-c", "pass"],
                "cxr-edge --help": cmd + ["--help"],
                "cxr-edge predict (1 image, first prediction)": cmd + ["predict", "--json", "--all-models",
                                                                        "--pack", str(pack), str(image)]}

    def measure(args):
        return lambda runs: [run_child(args, env)[0] * 1e3 for _ in range(runs)]


    stats = interleave({k: measure(a) for k, a in commands.items()}, rounds=rounds, runs=1)
    return _rows(stats, "python -c pass")


def peak_rss(pack: Path, image: Path, batch_dir: Path, batch_n: int, *, workers: int = 2) -> list[dict]:
    """Peak RSS (MB) of ``cxr-edge predict`` on one image and on a folder, beside two baselines."""
    cmd, env = cli_command(), _child_env()
    runs = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python + numpy + Pillow + interpreter import": [sys.executable, "-c", _IMPORTS],
        # --all-models: every model runs on the stand-in film, which a real gate rejects (then only the gate
        # would run, and the classifiers' memory would not be counted)
        "cxr-edge predict, 1 image": cmd + ["predict", "--json", "--all-models", "--pack", str(pack), str(image)],
        f"cxr-edge predict, {batch_n} images (--workers {workers})":
            cmd + ["predict", "--json", "--all-models", "--workers", str(workers), "--pack", str(pack),
                   str(batch_dir)],
    }
    rows = []
    for name, args in runs.items():
        wall, rss, rc = peak_rss_of(args, env)
        rows.append({"name": name, "peak_rss_mb": round(rss, 1), "seconds": round(wall, 2), "exit_code": rc})
    base = rows[0]["peak_rss_mb"]
    for r in rows:
        r["ratio"] = round(r["peak_rss_mb"] / base, 2) if base else None
    return rows


_IMPORTS = ("import numpy, PIL.Image\n"
            "from cxr_edge.runtime.interpreter import _pick_backend\n"
            "_pick_backend(None)")  # imports the first backend that works, as predict does


# --------------------------------------------------------------------------- inputs without data


def synthetic_film(size: int = 1024, seed: int = 0) -> Image.Image:
    """A grey, film-like chest image (body, two lung fields, spine, ribs, grain) for timing only."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j].astype(np.float32)
    body = np.exp(-((x / 0.85) ** 4 + (y / 1.05) ** 4))
    lungs = sum(np.exp(-(((x - cx) / 0.28) ** 2 + ((y + 0.05) / 0.55) ** 2)) for cx in (-0.38, 0.38))
    spine = np.exp(-(x / 0.07) ** 2) * (y > -0.7)
    ribs = 0.08 * np.sin(18 * (y + 0.15 * x ** 2)) * lungs
    a = 0.15 + 0.6 * body - 0.35 * lungs + 0.3 * spine + ribs + rng.normal(0, 0.02, (size, size))
    return Image.fromarray(np.clip(a * 255, 0, 255).astype(np.uint8), "L")


def phone_jpeg(film: Image.Image, *, long_side: int = 4000, quality: int = 90, seed: int = 0) -> bytes:
    """A phone photo of ``film`` (simulated: perspective, light, noise...), ``long_side`` px, as JPEG bytes."""
    from ..photosim import simulate_photo

    sim = simulate_photo(film, "moderate", seed, background="desk", fill=0.8, long_side=long_side)
    buf = io.BytesIO()
    Image.fromarray(sim.photo, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_batch(folder: Path, sources: list, n: int) -> list[Path]:
    """``n`` PNG files in ``folder``, cycling through ``sources`` (paths or PIL images)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        dst = folder / f"img_{i:05d}.png"
        if isinstance(src, Image.Image):
            src.save(dst)
        else:
            shutil.copyfile(src, dst)
        out.append(dst)
    return out


# --------------------------------------------------------------------------- models


def count_macs(model) -> int | None:
    """Multiply-accumulates of one inference, from the model's conv / depthwise / fully-connected ops.

    Uses the interpreter's op list (a private LiteRT API); None where it is unavailable.
    """
    try:
        interp = model._interp
        ops = interp._get_ops_details()
        shape = {t["index"]: tuple(int(d) for d in t["shape"]) for t in interp.get_tensor_details()}
    except Exception:  # another backend, or the private API changed
        return None
    total = 0
    for op in ops:
        name, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(ins) < 2:
            continue
        out_elems = int(np.prod(shape[outs[0]]))
        w = shape[ins[1]]
        per_output = int(np.prod(w[1:])) if name == "CONV_2D" else (
            w[1] * w[2] if name == "DEPTHWISE_CONV_2D" else w[-1])
        total += out_elems * per_output
    return total


def _invoke_measure(model, x: np.ndarray) -> Measure:
    """Bare ``set_tensor`` + ``invoke`` on the wrapper's interpreter: the compute without Python I/O work."""
    interp, inp = model._interp, model.inputs[0]
    q = model.quantize(np.asarray(x, np.float32)[None], inp)

    def call():
        interp.set_tensor(inp.index, q)
        interp.invoke()

    return timed(call)


def model_measures(name: str, content: bytes, x: np.ndarray, *, threads: int, backend: str | None = None,
                   invoke: bool = True) -> tuple[dict[str, Measure], dict]:
    """Measures for one .tflite at one thread count: ``run`` (and bare ``invoke``), and facts about it."""
    from ...runtime.interpreter import TFLiteModel

    model = TFLiteModel(content, threads=threads, backend=backend, name=name)
    measures = {f"{name} | {threads}t | run": timed(lambda: model.run(x))}
    if invoke:
        measures[f"{name} | {threads}t | invoke"] = _invoke_measure(model, x)
    macs = count_macs(model)
    facts = {"backend": model.backend, "backend_version": model.backend_version, "delegate": model.delegate,
             "input": list(model.input_shape), "input_dtype": model.input_dtype.name, "bytes": len(content),
             "macs": macs}
    return measures, facts


def model_rows(pack, inputs: dict[str, np.ndarray], thread_counts, *, rounds: int, runs: int,
               backend: str | None = None) -> tuple[list[dict], dict]:
    """Per pack model and thread count: run and invoke latency, images/s and GMAC/s."""
    measures, facts = {}, {}
    for slot, pm in pack.models.items():
        for t in thread_counts:
            m, f = model_measures(slot, pm.content, inputs[slot], threads=t, backend=backend)
            measures.update(m)
            facts[slot] = f
    stats = interleave(measures, rounds=rounds, runs=runs)
    rows = []
    for slot, pm in pack.models.items():
        for t in thread_counts:
            run, inv = stats[f"{slot} | {t}t | run"], stats[f"{slot} | {t}t | invoke"]
            macs = facts[slot]["macs"]
            rows.append({"slot": slot, "task": pm.metadata.task, "input": facts[slot]["input"], "threads": t,
                         "run": run.to_dict(), "invoke": inv.to_dict(), "per_s": round(1e3 / run.median, 1),
                         "gmac_per_s": round(macs / inv.median / 1e6, 1) if macs else None,
                         "macs_m": round(macs / 1e6, 1) if macs else None})
    return rows, facts


# --------------------------------------------------------------------------- Keras float (TensorFlow)


class KerasWorker:
    """A child process running one Keras model with TensorFlow pinned to ``threads`` threads.

    TensorFlow fixes its thread pools when it starts, so each thread count gets its own process;
    the parent asks for samples round by round, interleaved with its other variants. ``model_file``
    is a Keras .h5 file; or ``build`` = {task, alpha, size} builds MobileNetV2 with random weights
    (the same architecture, so the same speed). Calling the worker returns milliseconds per call
    of ``call``: ``'function'``, a ``tf.function`` over the model (graph mode, the fastest plain
    Keras path), or ``'predict'``, ``model.predict(x)`` (what most scripts do; it pays Keras'
    per-call set-up every time).
    """

    def __init__(self, x: np.ndarray, *, threads: int, model_file: str | None = None, build: dict | None = None,
                 call: str = "function"):
        if call not in KERAS_CALLS:
            raise ValueError(f"call must be one of {KERAS_CALLS}, got {call!r}")
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_keras_worker, args=(child, x, threads, model_file, build, call), daemon=True)
        self._proc.start()
        child.close()
        self.cpu_s = self.wall_s = 0.0
        status, self.info = self._recv()
        if status != "ready":
            self.close()
            raise RuntimeError(self.info)

    def _recv(self):
        if not self._conn.poll(900):
            raise RuntimeError("the Keras worker did not answer in 15 minutes")
        return self._conn.recv()

    def __call__(self, runs: int) -> list[float]:
        self._conn.send(runs)
        status, samples, *cpu = self._recv()
        if status != "ok":
            raise RuntimeError(samples)
        self.cpu_s += cpu[0]
        self.wall_s += sum(samples) / 1e3
        return samples

    @property
    def cpu_per_wall(self) -> float | None:
        """CPU seconds of the worker per second of timed calls: ~= threads when the pinning holds."""
        return round(self.cpu_s / self.wall_s, 2) if self.wall_s else None

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.terminate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


KERAS_CALLS = ("function", "predict")


def _keras_worker(conn, x, threads, model_file, build, how):  # runs in the child process
    try:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from ...training.tf_env import load

        tf, keras = load()
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        if model_file:
            model = keras.models.load_model(model_file, compile=False)
        else:
            from ...tasks import get_task
            from ...training.model import build_model, with_feature_output

            spec = get_task(build["task"]).with_input(size=int(build["size"]))
            model = with_feature_output(build_model(spec, alpha=float(build["alpha"]), weights=None))
        xt = tf.constant(np.asarray(x, np.float32)[None])
        fn = tf.function(lambda t: model(t, training=False), input_signature=[tf.TensorSpec(xt.shape, tf.float32)])

        def call():
            if how == "predict":
                return model.predict(xt, verbose=0)
            out = fn(xt)
            return [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]

        call()
        conn.send(("ready", {"tensorflow": tf.__version__, "threads": threads}))
        while True:
            runs = conn.recv()
            if runs is None:
                return
            cpu = time.process_time()
            samples = time_calls(call, runs)
            conn.send(("ok", samples, time.process_time() - cpu))
    except Exception as exc:  # reported to the parent, which raises it there
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass


def _importable(name: str) -> bool:
    """Whether ``name`` could be imported, without importing it (TensorFlow takes seconds)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or an import blocker
        return False


def tensorflow_available() -> bool:
    return _importable("tensorflow") and _importable("tf_keras")


# --------------------------------------------------------------------------- end to end


def _gate_only(pack):
    """The pack with only its gate: what an image the gate rejects costs (classifiers never run)."""
    from ...runtime.pack import ModelPack

    return ModelPack(path=pack.path, manifest=pack.manifest, models={"gate": pack.models["gate"]})


def _pipeline_takes_photos() -> bool:
    """True when ``Pipeline.predict`` finds, straightens and checks the film itself (``rectify=``)."""
    import inspect

    from ...runtime.pipeline import Pipeline

    return "rectify" in inspect.signature(Pipeline.predict).parameters


def _predict_photo_by_steps(pipeline, source):
    """For a Pipeline that takes no photos: decode (reduced) -> rectify -> quality -> predict the film."""
    from ...runtime.images import load_image
    from ...runtime.photo.quality import check_quality
    from ...runtime.photo.rectify import rectify

    times = {}
    t0 = time.perf_counter()
    photo = load_image(source, mode="RGB", min_size=PHOTO_MIN_SIDE)
    t1 = time.perf_counter()
    r = rectify(photo)
    judged = r.image if r.ok else photo.convert("L")
    film = r.film if r.ok else judged    # the models see the film with its levels stretched, as predict does
    t2 = time.perf_counter()
    check_quality(judged, photo=None if r.passthrough else photo, corners=r.corners)
    t3 = time.perf_counter()
    pred = pipeline.predict(film)
    times.update(decode=(t1 - t0) * 1e3, rectify=(t2 - t1) * 1e3, quality=(t3 - t2) * 1e3)
    pred.timings_ms = {**times, **{k: v for k, v in pred.timings_ms.items() if k != "decode"}}
    return pred


#: Reduced-size decoding for photos: both sides at least this (a 4000x3000 JPEG decodes at 1/4).
PHOTO_MIN_SIDE = 720


class _PhotoRuns:
    """A measure: ``prepare()`` (timed: e.g. a full decode before predict) then ``predict``; keeps timings_ms."""

    def __init__(self, predict, prepare):
        self.predict, self.prepare = predict, prepare
        self.timings: list[dict] = []
        self.last = None

    def __call__(self, runs: int) -> list[float]:
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            source = self.prepare()
            t1 = time.perf_counter()
            self.last = self.predict(source)
            out.append((time.perf_counter() - t0) * 1e3)
            extra = {"full decode (before predict)": (t1 - t0) * 1e3} if t1 - t0 > 1e-3 else {}
            self.timings.append({**extra, **self.last.timings_ms})
        return out

    def stages(self) -> list[dict]:
        keys = dict.fromkeys(k for t in self.timings for k in t)
        return [{"name": k, "median_ms": round(statistics.median(t[k] for t in self.timings if k in t), 3),
                 "n": sum(k in t for t in self.timings)} for k in keys]


def end_to_end(pack, photo, *, threads: int = 1, rounds: int, runs: int, profile: str | None = None) -> dict:
    """One phone JPEG (bytes or a path) to all results through ``Pipeline.predict``, per variant and stage.

    Variants, interleaved: the pipeline as it runs (reduced-size JPEG decoding, rectify, quality
    checks, gate, classifiers); the same after a full-size decode; a gate that rejects (the
    classifiers skipped: the pack's gate alone); with heatmaps. Stages are the medians of the
    pipeline's own ``timings_ms``. Where ``Pipeline.predict`` does not take photos (older
    cxr-edge), the photo steps run before it, one by one.
    """
    from ...runtime.images import load_image
    from ...runtime.pipeline import Pipeline

    inside = _pipeline_takes_photos()
    kw = {"rectify": True} if inside else {}

    def predictor(p):
        return p.predict if inside else (lambda src: _predict_photo_by_steps(p, src))

    everything = Pipeline(pack, threads=threads, profile=profile, gate_first=False, **kw)
    variants = {
        "predict(photo): reduced decode + rectify + quality + all models": _PhotoRuns(predictor(everything),
                                                                                      lambda: photo),
        "full decode, then predict(decoded photo)": _PhotoRuns(predictor(everything),
                                                               lambda: load_image(photo, mode="RGB")),
    }
    if "gate" in pack.models:
        gate = Pipeline(_gate_only(pack), threads=threads, **kw)
        variants["predict(photo), gate rejects: classifiers skipped"] = _PhotoRuns(predictor(gate), lambda: photo)
    notes = []
    heads = [s for s, m in pack.models.items() if s != "gate" and "head.npz" in m.files]
    if inside and heads:
        maps = Pipeline(pack, threads=threads, profile=profile, gate_first=False, heatmaps=True, rectify=True)
        variants["predict(photo) + heatmaps"] = _PhotoRuns(maps.predict, lambda: photo)
    else:
        notes.append("no heatmap row: " + ("this cxr-edge's Pipeline makes no heatmaps" if not inside else
                                           "the pack's classifiers embed no head.npz"))
    if not inside:
        notes.append("this cxr-edge's Pipeline.predict takes no photos: decode, rectify and quality ran before it")
    stats = interleave(variants, rounds=rounds, runs=runs)
    main = next(iter(variants.values()))
    pred = main.last
    decoded = load_image(photo, mode="RGB")
    return {
        "threads": threads,
        "rows": _rows(stats, next(iter(variants))),
        "stages": main.stages(),
        "stages_full_decode": variants["full decode, then predict(decoded photo)"].stages(),
        "facts": {"photo_bytes": len(photo) if isinstance(photo, bytes) else os.path.getsize(photo),
                  "photo_size": list(decoded.size), "pipeline_takes_photos": inside,
                  "rectify": pred.to_dict().get("rectify"), "status": pred.status,
                  "gate_score": round(pred.gate.score, 4) if pred.gate else None},
        "notes": notes,
    }


# --------------------------------------------------------------------------- batch


def batch(pack, files: list, *, thread_counts=(1,), workers: int = 2, rounds: int = 1,
          profile: str | None = None) -> dict:
    """Images/s of ``files`` through the plain ``predict`` loop and ``predict_many``, all models on every image."""
    from ...runtime.pipeline import Pipeline

    # gate_first=False: every image runs all three models, whatever the gate says of it (the synthetic film of
    # `cxr-edge bench` is rejected by a real gate, which would time the gate alone)
    pipes = {t: Pipeline(pack, threads=t, profile=profile, gate_first=False) for t in sorted({1, *thread_counts})}
    n = len(files)

    def loop():
        for f in files:
            pipes[1].predict(f)

    def many(t, w):
        return lambda: [None for _ in pipes[t].predict_many(files, workers=w)]

    variants = {"plain loop: predict() per image, 1 thread": loop,
                f"predict_many(workers={workers}), 1 interpreter thread": many(1, workers)}
    for t in thread_counts:
        if t != 1:
            variants[f"predict_many(workers={workers}), {t} interpreter threads"] = many(t, workers)
    stats = interleave({k: timed(f) for k, f in variants.items()}, rounds=rounds, runs=1, warmup=0)
    rows = _rows(stats, next(iter(variants)))
    for r in rows:
        r["per_s"] = round(n / (r["median_ms"] / 1e3), 1)
        r["ratio"] = round(rows[0]["median_ms"] / r["median_ms"], 2)  # speed-up: higher is better
    statuses: dict[str, int] = {}
    classified = 0
    for p in pipes[1].predict_many(files[: min(n, 50)], workers=workers):
        statuses[p.status] = statuses.get(p.status, 0) + 1
        classified += p.cxr4 is not None or p.nih14 is not None
    return {"images": n, "workers": workers, "rows": rows, "status_of_first_50": statuses,
            "classifiers_ran_on_first_50": classified}


# --------------------------------------------------------------------------- report


def _rows(stats: Mapping[str, Stats], base: str | None) -> list[dict]:
    rows = []
    for name, s in stats.items():
        row = {"name": name, "median_ms": round(s.median, 3), "p90_ms": round(s.p90, 3), "n": s.n}
        if base is not None:
            row["ratio"] = round(s.median / stats[base].median, 2)
        rows.append(row)
    return rows


def default_threads() -> tuple[int, ...]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return tuple(sorted({1, min(usable, 4)}))


def run_bench(pack=None, *, threads: int | None = None, image=None, quick: bool = False, keras: bool = True,
              batch_images: int | None = None, sections=None, backend: str | None = None,
              command: str = "cxr-edge bench") -> dict:
    """Measure a pack here; returns the report (see the module docstring for its keys).

    ``threads``: the second thread count besides 1 (default: the usable CPUs, at most 4).
    ``image``: a film to use instead of the synthetic one. ``quick``: few samples (a smoke run).
    ``sections``: a subset of SECTIONS to run.
    """
    from ...config import resolve_pack
    from ...runtime.images import load_image
    from ...runtime.pack import load_pack
    from ...runtime.preprocess import preprocess

    if hasattr(pack, "models"):  # an already loaded ModelPack
        loaded, origin = pack, "given"
    else:
        path, origin = resolve_pack(pack)
        loaded = load_pack(path)
    counts = tuple(sorted({1, threads})) if threads else default_threads()
    rounds, runs = (1, 3) if quick else (8, 25)
    todo = set(sections or SECTIONS)
    film = load_image(image, mode="L") if image is not None else synthetic_film()
    inputs = {slot: preprocess(film, pm.spec) for slot, pm in loaded.models.items()}
    report = {"schema": SCHEMA, "machine": machine_info(), "command": command,
              "pack": _pack_summary(loaded, origin), "settings": {"threads": list(counts), "rounds": rounds,
                                                                 "runs": runs, "quick": quick,
                                                                 "image": str(image) if image else "synthetic film"},
              "notes": []}
    if "models" in todo:
        rows, facts = model_rows(loaded, inputs, counts, rounds=rounds, runs=runs, backend=backend)
        report["models"] = rows
        first = next(iter(facts.values()))
        report["backend"] = {k: first[k] for k in ("backend", "backend_version", "delegate")}
        report["backend"]["installed"] = _installed_backends()
    if "keras" in todo:
        report["keras"] = keras_rows(loaded, inputs, counts, rounds=max(1, rounds // 2), runs=max(2, runs // 5),
                                     enabled=keras, int8_rows=report.get("models"))
    with tempfile.TemporaryDirectory(prefix="cxr-edge-bench-") as tmp:
        tmp = Path(tmp)
        one = tmp / "one.png"
        film.save(one)
        if "end_to_end" in todo:
            photo = phone_jpeg(film)
            report["end_to_end"] = end_to_end(loaded, photo, threads=1, rounds=rounds, runs=max(1, runs // 5),
                                              profile=_accepting_profile(loaded))
        n = batch_images or (16 if quick else 200)
        if todo & {"batch", "memory"}:
            files = write_batch(tmp / "batch", [film.resize((256, 256), Image.LANCZOS)], n)
        if "batch" in todo:
            report["batch"] = batch(loaded, files, thread_counts=counts, rounds=1 if quick else 3,
                                    profile=_accepting_profile(loaded))
        if "memory" in todo:
            report["memory"] = peak_rss(loaded.path, one, tmp / "batch", n)
        if "startup" in todo:
            report["startup"] = startup(loaded.path, one, rounds=2 if quick else 5)
    report["sizes"] = report["pack"]["models"] | {"total_bytes": report["pack"]["total_bytes"]}
    report["targets"] = targets(report)
    return report


SECTIONS = ("models", "keras", "end_to_end", "batch", "memory", "startup")


def _accepting_profile(pack) -> str | None:
    """'accept-all' where the gate has it (benchmark stand-in packs), so every model runs on every image."""
    gate = pack.models.get("gate")
    return "accept-all" if gate is not None and "accept-all" in gate.metadata.thresholds else None


def _installed_backends() -> list[str]:
    """The interpreter backends that work here (TensorFlow's only looked up: importing it costs seconds)."""
    from ...errors import BackendError
    from ...runtime.interpreter import BACKENDS, _interpreter_class

    def usable(name):
        if name == "tf.lite":
            return _importable("tensorflow")
        try:
            return _interpreter_class(name) is not None
        except BackendError:
            return False

    return [name for name in BACKENDS if usable(name)]


def _pack_summary(pack, origin: str) -> dict:
    return {"path": str(pack.path), "origin": origin, "name": pack.name, "total_bytes": pack.total_bytes(),
            "models": {slot: {"task": m.metadata.task, "bytes": len(m.content), "input": m.metadata.input.size,
                              "quantization": m.metadata.quantization.get("mode"),
                              "alpha": (m.metadata.training or {}).get("alpha")}
                       for slot, m in pack.models.items()}}


def keras_rows(pack, inputs, counts, *, rounds: int, runs: int, enabled: bool = True,
               int8_rows: list | None = None) -> dict:
    """Keras float rows (MobileNetV2 of the pack's recorded alpha, random weights), or a note why not."""
    if not enabled:
        return {"rows": [], "note": "skipped (--no-keras)"}
    if not tensorflow_available():
        return {"rows": [], "note": "skipped: TensorFlow is not installed here (the device side does not need it); "
                                    "install cxr-edge[train] to compare with Keras float"}
    builds = {}
    for slot, m in pack.models.items():
        alpha = (m.metadata.training or {}).get("alpha")
        if alpha is None:
            continue
        builds[slot] = {"task": m.metadata.task, "alpha": alpha, "size": m.metadata.input.size}
    if not builds:
        return {"rows": [], "note": "skipped: the pack's models record no MobileNetV2 alpha (not trained with "
                                    "cxr-edge train), so the Keras architecture to compare with is unknown"}
    rows = []
    int8 = {(r["slot"], r["threads"]): r["run"]["median"] for r in int8_rows or []}
    for slot, build in builds.items():
        workers = {t: KerasWorker(inputs[slot], threads=t, build=build) for t in counts}
        try:
            stats = interleave({t: w for t, w in workers.items()}, rounds=rounds, runs=runs)
        finally:
            for w in workers.values():
                w.close()
        for t, s in stats.items():
            q = int8.get((slot, t))
            rows.append({"slot": slot, "threads": t, "alpha": build["alpha"], "size": build["size"],
                         "keras": s.to_dict(), "int8_speedup": round(s.median / q, 1) if q else None,
                         "cpu_per_wall": workers[t].cpu_per_wall,
                         "tensorflow": workers[t].info.get("tensorflow")})
    return {"rows": rows, "note": "Keras float through TensorFlow (tf.function, graph mode) on the same input; "
                                  "random weights of the same architecture (speed does not depend on them)"}


def targets(report: dict) -> list[dict]:
    """The issue's targets against this run's numbers (None where the section did not run)."""
    out = []

    def add(name, target, value, ok):
        out.append({"name": name, "target": target, "value": value, "met": None if value is None else bool(ok)})

    rows224 = [r for r in report.get("models", []) if r["threads"] == 1 and r["input"][0] == 224]
    worst = max((r["run"]["median"] for r in rows224), default=None)
    add("int8 @224, 1 thread: median ms", f"<= {TARGETS['int8_ms']}", worst,
        worst is not None and worst <= TARGETS["int8_ms"])
    speed = [r["int8_speedup"] for r in (report.get("keras") or {}).get("rows", []) if r["threads"] == 1
             and r["int8_speedup"]]
    add("int8 vs Keras float, 1 thread: speed-up", f">= {TARGETS['int8_vs_keras']}x", min(speed) if speed else None,
        speed and min(speed) >= TARGETS["int8_vs_keras"])
    e2e = report.get("end_to_end", {}).get("rows", [])
    first = e2e[0]["median_ms"] if e2e else None  # predict(photo) as the pipeline runs it
    add("12-MP phone JPEG to all results, 1 thread: ms", f"<= {TARGETS['end_to_end_ms']}", first,
        first is not None and first <= TARGETS["end_to_end_ms"])
    b = max((r["per_s"] for r in report.get("batch", {}).get("rows", [])), default=None)
    add("batch: images/s", f">= {TARGETS['batch_per_s']}", b, b is not None and b >= TARGETS["batch_per_s"])
    rss = max((r["peak_rss_mb"] for r in report.get("memory", []) if r["name"].startswith("cxr-edge")), default=None)
    add("peak RSS of predict: MB", f"<= {TARGETS['peak_rss_mb']}", rss, rss is not None and rss <= TARGETS["peak_rss_mb"])
    mb = round(report["pack"]["total_bytes"] / 1e6, 2)
    add("pack size: MB", f"<= {TARGETS['pack_mb']}", mb, mb <= TARGETS["pack_mb"])
    h = next((r["median_ms"] / 1e3 for r in report.get("startup", []) if r["name"] == "cxr-edge --help"), None)
    add("cxr-edge --help: s", f"<= {TARGETS['help_s']}", None if h is None else round(h, 3),
        h is not None and h <= TARGETS["help_s"])
    return out


def format_report(report: dict) -> str:
    """The report as Markdown tables, with the machine line and the targets."""
    p = report["pack"]
    lines = [f"# cxr-edge bench ({report['machine']['date']})", "",
             f"machine: {describe_machine(report['machine'])}",
             f"pack: {p['path']} ({p['origin']}), {p['total_bytes'] / 1e6:.2f} MB",
             f"settings: threads {report['settings']['threads']}, {report['settings']['rounds']} interleaved "
             f"round(s), input: {report['settings']['image']}"]
    if "backend" in report:
        b = report["backend"]
        lines.append(f"interpreter: {b['backend']} {b['backend_version']}, {b['delegate']}; installed: "
                     f"{', '.join(b['installed'])}")
    for key in SECTIONS:
        if report.get(key) is not None:
            lines += ["", *FORMATTERS[key](report[key])]
    lines += ["", *format_sizes(p), "", "## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    lines += [f"| {t['name']} | {t['target']} | {t['value'] if t['value'] is not None else '-'} | "
              f"{'-' if t['met'] is None else 'yes' if t['met'] else 'NO'} |" for t in report["targets"]]
    lines += [f"\nnote: {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


def format_models(rows: list[dict]) -> list[str]:
    out = ["## int8 models (TFLiteModel.run = quantize + invoke + dequantize)", "",
           "| model | input | threads | median ms | p90 ms | images/s | bare invoke ms | GMAC/s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['slot']} | {'x'.join(map(str, r['input']))} | {r['threads']} | {r['run']['median']:.2f} "
                   f"| {r['run']['p90']:.2f} | {r['per_s']:.0f} | {r['invoke']['median']:.2f} | "
                   f"{r['gmac_per_s'] if r['gmac_per_s'] is not None else '-'} |")
    return out


def format_keras(k: dict) -> list[str]:
    out = ["## Keras float vs int8", "", k["note"]]
    if k["rows"]:
        out += ["", "| model | threads | Keras median ms | p90 ms | int8 speed-up | TF CPU s per s |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['slot']} | {r['threads']} | {r['keras']['median']:.1f} | {r['keras']['p90']:.1f} | "
                f"{r['int8_speedup']}x | {r['cpu_per_wall']} |" for r in k["rows"]]
    return out


def format_end_to_end(e: dict) -> list[str]:
    f = e["facts"]
    out = [f"## End to end: {f['photo_size'][0]}x{f['photo_size'][1]} phone JPEG ({f['photo_bytes'] / 1e6:.1f} MB) "
           f"to all results, {e['threads']} interpreter thread", ""]
    out += _table(e["rows"], "ratio to the first")
    full = {r["name"]: r["median_ms"] for r in e.get("stages_full_decode", [])}
    out += ["", "Stages (medians of the pipeline's own timings_ms):", "",
            "| stage | predict(photo) ms | full decode, then predict ms |", "|---|---|---|"]
    names = list(dict.fromkeys([r["name"] for r in e["stages"]] + list(full)))
    main = {r["name"]: r["median_ms"] for r in e["stages"]}
    out += [f"| {k} | {_fmt(main.get(k))} | {_fmt(full.get(k))} |" for k in names]
    rect = f.get("rectify") or {}
    out += ["", f"Film found: {rect.get('found')}, searched at {rect.get('searched_at')}; status {f['status']}; "
                f"gate score {f['gate_score']}."]
    return out + [f"Note: {n}." for n in e["notes"]]


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_batch(bt: dict) -> list[str]:
    out = [f"## Batch: {bt['images']} images through predict", "",
           "| variant | seconds | images/s | speed-up |", "|---|---|---|---|"]
    out += [f"| {r['name']} | {r['median_ms'] / 1e3:.2f} | {r['per_s']:.0f} | {r['ratio']}x |" for r in bt["rows"]]
    return out + ["", f"Status of the first 50: {bt['status_of_first_50']}."]


def format_memory(rows: list[dict]) -> list[str]:
    out = ["## Peak RSS (a fresh child process)", "", "| command | peak RSS MB | ratio to python -c pass | exit |",
           "|---|---|---|---|"]
    return out + [f"| {r['name']} | {r['peak_rss_mb']:.0f} | {r['ratio']}x | {r['exit_code']} |" for r in rows]


def format_startup(rows: list[dict]) -> list[str]:
    return ["## Start-up (wall time of a fresh process)", "", *_table(rows, "ratio to python -c pass")]


def format_sizes(p: dict) -> list[str]:
    out = ["## Sizes", "", "| model | bytes |", "|---|---|"]
    out += [f"| {slot} ({m['task']}, {m['input']} px) | {m['bytes']:,} |" for slot, m in p["models"].items()]
    return out + [f"| pack total | {p['total_bytes']:,} |"]


FORMATTERS = {"models": format_models, "keras": format_keras, "end_to_end": format_end_to_end,
              "batch": format_batch, "memory": format_memory, "startup": format_startup}


def _table(rows: list[dict], ratio_title: str | None) -> list[str]:
    head = "| step | median ms | p90 ms |" + (f" {ratio_title} |" if ratio_title else "")
    sep = "|---|---|---|" + ("---|" if ratio_title else "")
    body = [f"| {r['name']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |" + (f" {r['ratio']:.2f}x |" if ratio_title else "")
            for r in rows]
    return [head, sep, *body]
