"""Worker processes for :meth:`~cxr_edge.runtime.pipeline.Pipeline.predict_many`: N images on N cores.

Each worker is a Python process of its own with the pipeline's settings, the pack's verified bytes
and interpreters it builds itself (a :class:`~cxr_edge.runtime.pipeline.Pipeline` pickles without
its interpreters and rebuilds them when unpickled). It predicts one image at a time; the parent
hands the next image to whichever worker is free and yields the results in input order.

Why processes and not threads: the photo stage (film search, quality checks) is numpy called from
Python, and a thread holds the GIL for a quarter of a prediction. Two threads on two cores reached
1.62x the plain loop on a mixed batch of 1024-px PNGs and 12-MP JPEGs (each waited ~30 % of the time
for the GIL); two worker processes reached 1.81x (benchmarks/batch_workers.py; RESULTS.md). The cost
is memory: each worker holds its own Python, numpy, LiteRT and models (~80 MB PSS).

* **Small batches.** The calling process predicts the first image(s) itself and starts the workers
  only when the work ahead is worth it (``PAYS_OFF_S``): starting two takes about 0.3 s of both cores
  here, more than a handful of images take.
* **Order and memory.** Results come back in input order; at most ``2 * workers`` images are between
  the one the caller waits for and the newest one taken from ``sources``, however long the list.
* **Crashes.** A worker that dies (a native crash in a decoder, the kernel's OOM killer) turns the
  one image it was predicting into an ``error`` result of kind ``worker_crash``; a new worker takes
  its place and the batch goes on.
* **Logs.** A worker's log records are sent to the parent and handled by the parent's loggers
  (with the worker's process id), so ``-v`` shows them where the parent's go. What LiteRT prints
  from C++ while a worker loads its models is caught there once per model load and logged, as in
  the parent (:mod:`cxr_edge.runtime.interpreter`).
* **Ctrl-C and early exits.** Workers start in a session of their own (the terminal's Ctrl-C goes
  to the parent only); when the caller stops, is interrupted or fails, the workers are killed. A
  worker whose parent is gone sees its request pipe close and exits.
* **Where it cannot run** (not a POSIX system, a frozen or embedded Python, the Android Java
  backend) or when no worker starts, the images are predicted in the calling process, with a warning.

A worker is a fresh Python running :func:`main` of this module, started with :mod:`subprocess`, not
:mod:`multiprocessing`: multiprocessing's spawn re-imports the caller's main script in every child,
so a script calling ``predict_many`` at its top level (as the README's example does) would run
again in each worker.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import weakref
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import CxrEdgeError
from .prediction import Prediction, error_result

__all__ = ["BOOT_TIMEOUT_S", "CRASH_KIND", "PAYS_OFF_S", "predict_in_workers", "supported"]

log = logging.getLogger(__name__)

#: Workers start once the images ahead are expected to take at least this long in the calling process
#: (the time per image so far times the images left; for a stream of unknown length, the time spent so
#: far). Two workers take ~0.3 s of both cores to start here (Python, numpy, LiteRT, the models), so
#: starting them pays off from ~0.45 s of work ahead (two 12-MP photos: 0.2 s alone, 0.4 s with workers).
PAYS_OFF_S = 0.5
#: A worker that has not loaded its models after this long is given up on (a slow Pi takes ~2 s).
BOOT_TIMEOUT_S = 120.0
#: The error kind of an image whose worker died while predicting it.
CRASH_KIND = "worker_crash"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])    # the folder that holds this cxr_edge
# A worker runs this very cxr_edge: its folder goes on the path only where the parent found it some other
# way (an editable install's finder); prepending site-packages could shadow the standard library.
_BOOT = ("import sys\n"
         "if sys.argv[1] not in sys.path: sys.path.insert(0, sys.argv[1])\n"
         "from cxr_edge.runtime.workers import main\n"
         "main(sys.argv[2:])\n")


def supported(pipeline) -> str | None:
    """None when worker processes can run ``pipeline`` here, else why not."""
    if os.name != "posix":
        return f"worker processes need a POSIX system (this is {os.name!r})"
    if getattr(sys, "frozen", False) or not sys.executable:
        return "this Python is embedded or frozen: it cannot start another Python"
    if pipeline.backend == "tflite-java":
        return "the Android Java interpreter lives in this process only"
    return None


def predict_in_workers(pipeline, items: Iterable[tuple[object, str | None]], workers: int,
                       total: int | None = None) -> Iterator[Prediction]:
    """``pipeline.predict(source, name)`` for each ``(source, name)`` of ``items`` in ``workers`` worker
    processes, yielded in input order (see the module docstring). ``total``: how many items there are,
    where known (it tells whether starting workers pays off)."""
    pool = _Pool(pipeline, workers)
    _POOLS.add(pool)
    try:
        yield from pool.run(iter(items), total)
    finally:
        pool.close()       # done, interrupted, or the caller stopped early: nothing is worth waiting for


class _Worker:
    """One worker process and its two pipes (requests in, messages out)."""

    def __init__(self, number: int):
        self.number = number
        self.item: tuple[int, str | None] | None = None     # (index, name) of the image it is predicting
        self.ready = False
        self.started = time.monotonic()
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _PACKAGE_ROOT, str(req_r), str(res_w)], pass_fds=(req_r, res_w),
                stdin=subprocess.DEVNULL, stdout=2,      # a stray print must not land in `predict --json`
                start_new_session=True)
        finally:
            os.close(req_r)
            os.close(res_w)
        self.requests = Connection(req_w, readable=False)
        self.messages = Connection(res_r, writable=False)

    def hand(self, blob: bytes, levels: tuple[int, int]) -> None:
        """Give the worker its log levels and pipeline (blocks until it has read them: it reads nothing else
        first)."""
        try:
            self.requests.send(levels)
            self.requests.send_bytes(blob)
        except OSError:          # it died before reading it (a broken environment)
            self.stop()
            raise

    def send(self, index: int, source, name: str | None) -> None:
        self.requests.send((index, source, name))
        self.item = (index, name)

    def death(self) -> str:
        """How the process ended, in words (it is reaped here)."""
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def stop(self) -> None:
        """Close the pipes and kill the process (if it still runs), and reap it."""
        for conn in (self.requests, self.messages):
            conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class _Pool:
    def __init__(self, pipeline, workers: int):
        self.pipeline = pipeline
        self.size = workers
        self.levels = (logging.getLogger().getEffectiveLevel(), logging.getLogger("cxr_edge").getEffectiveLevel())
        self.workers: list[_Worker] = []
        self.started = 0
        self.ever_ready = False

    def _start(self, n: int) -> None:
        """Start ``n`` workers: all processes first, so that they import in parallel, then their pipelines."""
        new = []
        for _ in range(n):
            self.started += 1
            try:
                new.append(_Worker(self.started))
            except OSError as exc:
                log.warning("could not start worker process %d: %s", self.started, exc)
        blob = pickle.dumps(self.pipeline)     # settings + the pack's bytes (~9 MB), no interpreters; not kept
        for w in new:
            try:
                w.hand(blob, self.levels)
                self.workers.append(w)
            except OSError as exc:
                log.warning("worker process %d stopped before it started (%s)", w.number, exc)

    def run(self, items: Iterator, total: int | None) -> Iterator[Prediction]:
        taken = 0
        spent = 0.0          # this process's time on the images so far
        while not _pays_off(spent, taken, total):     # a short batch is over before workers would be up
            item = next(items, None)
            if item is None:
                return
            t0 = time.perf_counter()
            pred = self.pipeline.predict(*item)
            spent += time.perf_counter() - t0
            taken += 1
            yield pred
        self._start(self.size)
        done: dict[int, Prediction] = {}
        next_out = taken
        exhausted = False
        window = 2 * self.size
        while True:
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            if not self.workers:          # none started or all gave up: the rest in this process
                yield from self._here(items, done, next_out)
                return
            for w in list(self.workers):        # the next images to the free workers, within the window
                if exhausted or not w.ready or w.item is not None or taken >= next_out + window:
                    continue
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                source, name = item
                try:
                    w.send(taken, source, name)
                except (pickle.PicklingError, TypeError, AttributeError):   # not picklable: predict it here
                    done[taken] = self.pipeline.predict(source, name)
                except OSError:               # it died since its last answer: the image goes to another
                    items = itertools.chain([item], items)
                    self._lost(w, done, w.death())
                    continue
                taken += 1
            if exhausted and next_out == taken:
                return
            if next_out in done:
                continue
            self._receive(done)

    def _here(self, items, done: dict, next_out: int) -> Iterator[Prediction]:
        """Predict in this process: what is left of ``items`` (after any results already in ``done``)."""
        while next_out in done:
            yield done.pop(next_out)
            next_out += 1
        for source, name in items:
            yield self.pipeline.predict(source, name)

    def _receive(self, done: dict) -> None:
        """Wait for the workers' next messages and handle them."""
        booting = [w for w in self.workers if not w.ready]
        timeout = None
        if booting:
            timeout = max(0.0, min(w.started for w in booting) + BOOT_TIMEOUT_S - time.monotonic())
        ready = wait([w.messages for w in self.workers], timeout)
        if not ready:
            for w in booting:
                if time.monotonic() - w.started >= BOOT_TIMEOUT_S:
                    self._lost(w, done, f"it did not load its models in {BOOT_TIMEOUT_S:.0f} s")
            return
        for w in [w for w in self.workers if w.messages in ready]:
            try:
                message = w.messages.recv()
            except (EOFError, OSError):
                self._lost(w, done, w.death())
                continue
            kind = message[0]
            if kind == "log":
                _log_from(w, message[1])
            elif kind == "ready":
                w.ready = self.ever_ready = True
            elif kind == "result":
                done[message[1]] = message[2]
                w.item = None
            elif kind == "failed":       # it could not build the pipeline: the others will not either
                self._lost(w, done, message[1])

    def _lost(self, w: _Worker, done: dict, how: str) -> None:
        """A worker that died or failed: its image becomes an error result; a new worker replaces it
        if workers have run here before (one that never started would fail again)."""
        w.stop()
        self.workers.remove(w)
        if w.item is not None:
            index, name = w.item
            shown = name or "<image>"
            done[index] = error_result(shown, CxrEdgeError(
                f"{shown}: the worker process predicting it stopped ({how}). The image may be damaged or made to "
                "crash image decoders, or the machine ran out of memory. The other images are not affected."),
                kind=CRASH_KIND)
            log.warning("worker process %d (pid %d) stopped (%s) while predicting %s; starting another",
                        w.number, w.proc.pid, how, shown)
        elif not w.ready:
            log.warning("worker process %d could not start (%s)%s", w.number, how,
                        "" if self.workers else "; predicting in this process instead")
        if self.ever_ready and w.ready:
            self._start(1)

    def close(self) -> None:
        """Stop the workers. They are idle (all results are in), or what they do is no longer wanted:
        killing them is as safe as letting them read end-of-file, and 60 ms sooner."""
        for w in self.workers:
            w.stop()
        self.workers = []


#: Pools with workers, so that none outlives the interpreter (a generator abandoned by an exception
#: is not always closed before exit).
_POOLS: "weakref.WeakSet[_Pool]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for pool in list(_POOLS):
        pool.close()


def _pays_off(spent: float, taken: int, total: int | None) -> bool:
    """Whether the images ahead are worth starting workers for (see PAYS_OFF_S)."""
    if PAYS_OFF_S <= 0:
        return True
    if total is None:
        return spent >= PAYS_OFF_S
    return taken > 0 and (total - taken) * spent / taken >= PAYS_OFF_S


def _log_from(w: _Worker, fields: dict) -> None:
    record = logging.makeLogRecord(fields)
    record.processName = f"cxr-edge worker {w.number}"
    logging.getLogger(record.name).handle(record)


# ---------------------------------------------------------------- the worker process


class _SendLogs(logging.Handler):
    """Sends each record, formatted, to the parent."""

    def __init__(self, out: Connection):
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__, msg=record.getMessage(), args=None, exc_info=None,
                          exc_text=logging.Formatter().formatException(record.exc_info) if record.exc_info
                          else record.exc_text)
            self.out.send(("log", {k: v for k, v in fields.items() if _plain(v)}))
        except Exception:  # a log line must never stop a prediction
            self.handleError(record)


def _plain(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, tuple))


def _serve(requests: Connection, out: Connection) -> None:
    root_level, own_level = requests.recv()
    blob = requests.recv_bytes()
    logging.getLogger().addHandler(_SendLogs(out))
    logging.getLogger().setLevel(root_level)
    logging.getLogger("cxr_edge").setLevel(own_level)
    try:
        pipeline = pickle.loads(blob)        # builds this process's own interpreters
    except Exception as exc:
        out.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    del blob
    out.send(("ready", os.getpid()))
    while True:
        try:
            index, source, name = requests.recv()
        except EOFError:                  # the parent closed the pipe, or is gone
            return
        pred = pipeline.predict(source, name)
        try:
            out.send(("result", index, pred))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:   # never seen; not a crash either
            out.send(("result", index, error_result(pred.file, CxrEdgeError(
                f"{pred.file}: the result could not be sent back from the worker process ({exc}). This is a bug "
                "in cxr-edge: please report it."), kind="internal")))


def main(argv: list[str]) -> None:
    """Entry point of a worker: ``main([REQUEST_FD, MESSAGE_FD])`` (see ``_BOOT``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent decides when to stop
    requests = Connection(int(argv[0]), writable=False)
    out = Connection(int(argv[1]), readable=False)
    try:
        _serve(requests, out)
    except (BrokenPipeError, EOFError):      # the parent is gone
        pass

