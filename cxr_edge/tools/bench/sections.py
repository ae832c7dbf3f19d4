"""Speed, memory and size of a model pack on the machine this runs on (``cxr-edge bench``).

Device side: numpy, Pillow and the LiteRT interpreter only. The Keras float
rows need TensorFlow: they come from :mod:`cxr_edge.training.keras_bench`, which
``cxr-edge bench`` hands to :func:`run_bench`; without TensorFlow they are
skipped with a note. Nothing here needs data: the inputs are a synthetic film
(or ``image=``) and a 12-MP phone JPEG rendered from it with
:func:`cxr_edge.tools.photosim.simulate_photo` (:mod:`.inputs`).

The parts: :mod:`.harness` (timing, interleaved rounds, child processes),
:mod:`.machine` (what the machine is), :mod:`.memory` (peak RSS), :mod:`.inputs`
(the synthetic film and photo), this module (the sections and :func:`run_bench`)
and :mod:`.formatting` (the tables).

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
* ``batch``: images/s of a folder of 256-px PNGs through ``predict`` in a plain
  loop and through ``predict_many`` (worker threads with interpreters of
  their own, their loading included).
* ``mixed_batch``: the same for a folder of 1024-px PNGs and 12-MP phone JPEGs
  (the photo stage is most of the work): how ``predict_many(workers=2)``
  scales against the plain loop.
* ``memory``: peak memory of ``cxr-edge predict`` (one image, a batch, the mixed
  batch) in a child process, with any processes it starts: the largest process's
  RSS and the sums over all of them (:mod:`.memory`), beside bare Python and
  Python with numpy + Pillow + the interpreter.
* ``startup``: ``cxr-edge --help`` and a first prediction, against ``python -c pass``.
* ``sizes``: the pack's models and total.
* ``targets``: the issue's targets, each with the measured value and whether it was met.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .harness import Measure, child_env, cli_command, default_threads, interleave, run_child, stat_rows, timed
from .inputs import mixed_batch, phone_jpeg, synthetic_film, write_batch
from .machine import installed_backends, machine_info
from .memory import peak_rss

__all__ = ['SCHEMA', 'SECTIONS', 'TARGETS', 'accepting_profile', 'batch', 'count_macs', 'end_to_end', 'model_measures', 'model_rows', 'pack_summary', 'run_bench', 'startup', 'targets', 'workers_row_name']


log = logging.getLogger(__name__)


SCHEMA = "cxr-edge-bench/1"
NO_KERAS_SECTION = ("skipped: run_bench was given no Keras section (cxr-edge bench passes "
                    "cxr_edge.training.keras_bench.keras_rows)")


#: The issue's targets, on a 2-core machine; latency targets apply to MobileNetV2 1.0 at 224 px.
TARGETS = {"int8_ms": 5.0, "int8_vs_keras": 10.0, "end_to_end_ms": 60.0, "batch_per_s": 100.0,
           "batch_scaling": 1.7, "peak_rss_mb": 150.0, "pack_mb": 9.0, "help_s": 0.3}


def count_macs(model) -> int | None:
    """Multiply-accumulates of one inference, from the model's conv / depthwise / fully-connected ops.

    Uses the interpreter's op list (a private LiteRT API); None where it is unavailable.
    """
    try:
        interp = model.interpreter
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
    interp, inp = model.interpreter, model.inputs[0]
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


def startup(pack: Path, image: Path, *, rounds: int) -> list[dict]:
    """Wall time of ``python -c pass``, ``cxr-edge --help`` and one first prediction, interleaved."""
    cmd, env = cli_command(), child_env()
    commands = {"python -c pass": [sys.executable, "-c", "pass"],
                "cxr-edge --help": cmd + ["--help"],
                "cxr-edge predict (1 image, first prediction)": cmd + ["predict", "--json", "--all-models",
                                                                        "--pack", str(pack), str(image)]}

    def measure(args):
        return lambda runs: [run_child(args, env)[0] * 1e3 for _ in range(runs)]


    stats = interleave({k: measure(a) for k, a in commands.items()}, rounds=rounds, runs=1)
    return stat_rows(stats, "python -c pass")


def _gate_only(pack):
    """The pack with only its gate: what an image the gate rejects costs (classifiers never run)."""
    from ...runtime.pack import ModelPack

    return ModelPack(path=pack.path, manifest=pack.manifest, models={"gate": pack.models["gate"]})


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
    pipeline's own ``timings_ms``.
    """
    from ...runtime.images import load_image
    from ...runtime.pipeline import Pipeline

    everything = Pipeline(pack, threads=threads, profile=profile, gate_first=False, rectify=True)
    variants = {
        "predict(photo): reduced decode + rectify + quality + all models": _PhotoRuns(everything.predict,
                                                                                      lambda: photo),
        "full decode, then predict(decoded photo)": _PhotoRuns(everything.predict,
                                                               lambda: load_image(photo, mode="RGB")),
    }
    if "gate" in pack.models:
        gate = Pipeline(_gate_only(pack), threads=threads, rectify=True)
        variants["predict(photo), gate rejects: classifiers skipped"] = _PhotoRuns(gate.predict, lambda: photo)
    notes = []
    heads = [s for s, m in pack.models.items() if s != "gate" and "head.npz" in m.files]
    if heads:
        maps = Pipeline(pack, threads=threads, profile=profile, gate_first=False, heatmaps=True, rectify=True)
        variants["predict(photo) + heatmaps"] = _PhotoRuns(maps.predict, lambda: photo)
    else:
        notes.append("no heatmap row: the pack's classifiers embed no head.npz")
    stats = interleave(variants, rounds=rounds, runs=runs)
    main = next(iter(variants.values()))
    pred = main.last
    decoded = load_image(photo, mode="RGB")
    return {
        "threads": threads,
        "rows": stat_rows(stats, next(iter(variants))),
        "stages": main.stages(),
        "stages_full_decode": variants["full decode, then predict(decoded photo)"].stages(),
        "facts": {"photo_bytes": len(photo) if isinstance(photo, bytes) else os.path.getsize(photo),
                  "photo_size": list(decoded.size),
                  "rectify": pred.to_dict().get("rectify"), "status": pred.status,
                  "gate_score": round(pred.gate.score, 4) if pred.gate else None},
        "notes": notes,
    }


def workers_row_name(workers: int, threads: int = 1) -> str:
    """The name of a ``predict_many`` row of :func:`batch`."""
    return (f"predict_many(workers={workers}): {workers} worker threads, {threads} interpreter thread"
            f"{'s' if threads > 1 else ''} each")


def batch(pack, files: list, *, thread_counts=(1,), workers: int = 2, rounds: int = 1,
          profile: str | None = None) -> dict:
    """Images/s of ``files`` through the plain ``predict`` loop and ``predict_many``, all models on every image.

    Each ``predict_many`` call loads its workers' interpreters and starts its threads, as ``cxr-edge
    predict`` does: their start-up is in its time."""
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

    variants = {"plain loop: predict() per image, 1 thread": loop, workers_row_name(workers): many(1, workers)}
    for t in thread_counts:
        if t != 1:
            variants[workers_row_name(workers, t)] = many(t, workers)
    stats = interleave({k: timed(f) for k, f in variants.items()}, rounds=rounds, runs=1, warmup=0)
    rows = stat_rows(stats, next(iter(variants)))
    for r in rows:
        r["per_s"] = round(n / (r["median_ms"] / 1e3), 1)
        r["ratio"] = round(rows[0]["median_ms"] / r["median_ms"], 2)  # speed-up: higher is better
    statuses: dict[str, int] = {}
    classified = 0
    for p in pipes[1].predict_many(files[: min(n, 50)], workers=workers):
        statuses[p.status] = statuses.get(p.status, 0) + 1
        classified += bool(p.results)
    return {"images": n, "workers": workers, "rows": rows, "status_of_first_50": statuses,
            "classifiers_ran_on_first_50": classified}


def run_bench(pack=None, *, threads: int | None = None, image=None, quick: bool = False, keras: bool = True,
              batch_images: int | None = None, sections=None, backend: str | None = None,
              command: str = "cxr-edge bench", keras_rows: Callable | None = None) -> dict:
    """Measure a pack here; returns the report (see the module docstring for its keys).

    ``threads``: the second thread count besides 1 (default: the usable CPUs, at most 4).
    ``image``: a film to use instead of the synthetic one. ``quick``: few samples (a smoke run).
    ``sections``: a subset of SECTIONS to run. ``keras_rows``: the Keras float section
    (:func:`cxr_edge.training.keras_bench.keras_rows`, which ``cxr-edge bench`` passes; this module
    knows nothing of TensorFlow); without it that section is skipped with a note. ``keras=False``
    skips it too.
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
              "pack": pack_summary(loaded, origin), "settings": {"threads": list(counts), "rounds": rounds,
                                                                 "runs": runs, "quick": quick,
                                                                 "image": str(image) if image else "synthetic film"},
              "notes": []}
    if "models" in todo:
        rows, facts = model_rows(loaded, inputs, counts, rounds=rounds, runs=runs, backend=backend)
        report["models"] = rows
        first = next(iter(facts.values()))
        report["backend"] = {k: first[k] for k in ("backend", "backend_version", "delegate")}
        report["backend"]["installed"] = installed_backends()
    if "keras" in todo and keras_rows is None:
        report["keras"] = {"rows": [], "note": "skipped (--no-keras)" if not keras else NO_KERAS_SECTION}
    elif "keras" in todo:
        report["keras"] = keras_rows(loaded, inputs, counts, rounds=max(1, rounds // 2), runs=max(2, runs // 5),
                                     enabled=keras, int8_rows=report.get("models"))
    with tempfile.TemporaryDirectory(prefix="cxr-edge-bench-") as tmp:
        tmp = Path(tmp)
        one = tmp / "one.png"
        film.save(one)
        photo = phone_jpeg(film) if todo & {"end_to_end", "mixed_batch", "memory"} else None
        if "end_to_end" in todo:
            report["end_to_end"] = end_to_end(loaded, photo, threads=1, rounds=rounds, runs=max(1, runs // 5),
                                              profile=accepting_profile(loaded))
        n = batch_images or (16 if quick else 200)
        if todo & {"batch", "memory"}:
            files = write_batch(tmp / "batch", [film.resize((256, 256), Image.LANCZOS)], n)
        if "batch" in todo:
            report["batch"] = batch(loaded, files, thread_counts=counts, rounds=1 if quick else 3,
                                    profile=accepting_profile(loaded))
        if "mixed_batch" in todo:
            mixed = mixed_batch(tmp / "mixed", film, photo, n)
            report["mixed_batch"] = batch(loaded, mixed, rounds=1 if quick else 3, profile=accepting_profile(loaded))
        if "memory" in todo:
            # 20 large images: enough work for the workers to start and reach their peak (at most
            # 2 x workers images are in flight), and quick on a Pi
            mixed_batch(tmp / "mixed_memory", film, photo, 20)
            report["memory"] = peak_rss(loaded.path, one, tmp / "batch", n, mixed_dir=tmp / "mixed_memory")
        if "startup" in todo:
            report["startup"] = startup(loaded.path, one, rounds=2 if quick else 5)
    report["sizes"] = report["pack"]["models"] | {"total_bytes": report["pack"]["total_bytes"]}
    report["targets"] = targets(report)
    return report


def _memory_of(row: dict) -> float:
    """What a command costs the machine: its peak RSS, or its processes' summed PSS where that is more
    (a command that starts other processes)."""
    return max(row["peak_rss_mb"], row.get("total_pss_mb") or 0.0)


SECTIONS = ("models", "keras", "end_to_end", "batch", "mixed_batch", "memory", "startup")


def accepting_profile(pack) -> str | None:
    """'accept-all' where the gate has it (benchmark stand-in packs), so every model runs on every image."""
    gate = pack.models.get("gate")
    return "accept-all" if gate is not None and "accept-all" in gate.metadata.thresholds else None


def pack_summary(pack, origin: str) -> dict:
    return {"path": str(pack.path), "origin": origin, "name": pack.name, "total_bytes": pack.total_bytes(),
            "models": {slot: {"task": m.metadata.task, "bytes": len(m.content), "input": m.metadata.input.size,
                              "quantization": m.metadata.quantization.get("mode"),
                              "alpha": (m.metadata.training or {}).get("alpha")}
                       for slot, m in pack.models.items()}}


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
    mixed = report.get("mixed_batch", {})
    scale = next((r["ratio"] for r in mixed.get("rows", []) if r["name"] == workers_row_name(mixed.get("workers", 2))),
                 None)
    add("batch scaling, 1024-px PNGs + 12-MP JPEGs: predict_many(workers=2) / plain loop",
        f">= {TARGETS['batch_scaling']}x", scale, scale is not None and scale >= TARGETS["batch_scaling"])
    rss = max((_memory_of(r) for r in report.get("memory", []) if r["name"].startswith("cxr-edge")), default=None)
    add("peak memory of predict: RSS (summed PSS where more processes cost more): MB",
        f"<= {TARGETS['peak_rss_mb']}", rss, rss is not None and rss <= TARGETS["peak_rss_mb"])
    mb = round(report["pack"]["total_bytes"] / 1e6, 2)
    add("pack size: MB", f"<= {TARGETS['pack_mb']}", mb, mb <= TARGETS["pack_mb"])
    h = next((r["median_ms"] / 1e3 for r in report.get("startup", []) if r["name"] == "cxr-edge --help"), None)
    add("cxr-edge --help: s", f"<= {TARGETS['help_s']}", None if h is None else round(h, 3),
        h is not None and h <= TARGETS["help_s"])
    return out

