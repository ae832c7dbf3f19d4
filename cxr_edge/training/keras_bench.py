"""The Keras float rows of ``cxr-edge bench``: the same architecture through TensorFlow, in child processes.

TensorFlow fixes its thread pools when it starts, so each thread count runs in its own child process
(:class:`KerasWorker`); the parent never imports TensorFlow. ``cxr-edge bench`` passes
:func:`keras_rows` to :func:`cxr_edge.tools.bench.sections.run_bench` as its Keras section: the
offline bench (``tools``) knows nothing of training, the CLI puts the two together.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np

from ..tools.bench.harness import interleave, time_calls
from ..tools.bench.machine import tensorflow_available

__all__ = ['KERAS_CALLS', 'KerasUnavailable', 'KerasWorker', 'keras_rows']


class KerasUnavailable(RuntimeError):
    """The Keras worker could not run: TensorFlow failed to import or to build the model, or its process died.

    The Keras rows are an optional comparison: :func:`keras_rows` turns this into a note, never a failed bench.
    """


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
        try:
            status, self.info = self._recv()
        except KerasUnavailable:
            self.close()
            raise
        if status != "ready":
            self.close()
            raise KerasUnavailable(self.info)

    def _recv(self):
        try:
            if not self._conn.poll(900):
                raise KerasUnavailable("the TensorFlow process did not answer in 15 minutes")
            return self._conn.recv()
        except (EOFError, OSError):   # it died: a TensorFlow built for other CPUs, a crash in its native code
            self._proc.join(5)
            raise KerasUnavailable(f"the TensorFlow process died (exit code {self._proc.exitcode}) "
                                   "before it answered") from None

    def __call__(self, runs: int) -> list[float]:
        self._conn.send(runs)
        status, samples, *cpu = self._recv()
        if status != "ok":
            raise KerasUnavailable(samples)
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
        from .tf_env import load

        tf, keras = load()
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        if model_file:
            model = keras.models.load_model(model_file, compile=False)
        else:
            from ..tasks import get_task
            from .model import build_model, with_feature_output

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
        try:
            stats, workers = _keras_stats(inputs[slot], build, counts, rounds=rounds, runs=runs)
        except KerasUnavailable as exc:
            # TensorFlow is installed but cannot run here (a broken install, a wheel built for other CPUs):
            # an optional comparison, so the bench goes on without it and says why
            return {"rows": rows, "note": f"skipped: TensorFlow is installed but the Keras float model could "
                                          f"not run ({exc}); the int8 rows do not need it"}
        for t, s in stats.items():
            q = int8.get((slot, t))
            rows.append({"slot": slot, "threads": t, "alpha": build["alpha"], "size": build["size"],
                         "keras": s.to_dict(), "int8_speedup": round(s.median / q, 1) if q else None,
                         "cpu_per_wall": workers[t].cpu_per_wall,
                         "tensorflow": workers[t].info.get("tensorflow")})
    return {"rows": rows, "note": "Keras float through TensorFlow (tf.function, graph mode) on the same input; "
                                  "random weights of the same architecture (speed does not depend on them)"}


def _keras_stats(x, build: dict, counts, *, rounds: int, runs: int) -> tuple[dict, dict]:
    """Stats per thread count of one Keras model, and its (closed) workers; raises KerasUnavailable."""
    workers: dict = {}
    try:
        for t in counts:
            workers[t] = KerasWorker(x, threads=t, build=build)
        return interleave(workers, rounds=rounds, runs=runs), workers
    finally:
        for w in workers.values():
            w.close()

