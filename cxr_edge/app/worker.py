"""One background thread for everything slow (decoding, rectifying, the models, saving).

Jobs run in submission order on a single thread, so the models and the case
store are never used concurrently. Results come back on the Kivy main thread
through ``Clock.schedule_once``. A job submitted under a ``key`` supersedes
earlier jobs with that key: their results are dropped when they arrive (the
user has moved on), but the jobs themselves still run to the end, so a save
is never cut short.
"""

from __future__ import annotations

import itertools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from kivy.clock import Clock

__all__ = ["Worker"]

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, name: str = "cxr-app-worker"):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._tokens = itertools.count(1)
        self._latest: dict[str, int] = {}
        self._running = 0
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        """True while a job is queued, running, or its result is not yet delivered."""
        return self._running > 0

    def submit(self, fn, on_done, on_error, *, key: str | None = None):
        token = next(self._tokens)
        if key is not None:
            self._latest[key] = token
        with self._lock:
            self._running += 1
        future = self._pool.submit(fn)
        future.add_done_callback(
            lambda f: Clock.schedule_once(partial(self._deliver, f, token, key, on_done, on_error), 0))
        return future

    def drop(self, key: str) -> None:
        """Forget the result of the running job under ``key`` (the user left that screen)."""
        self._latest[key] = next(self._tokens)

    def _deliver(self, future, token, key, on_done, on_error, _dt):
        with self._lock:
            self._running -= 1
        if key is not None and self._latest.get(key) != token:
            log.debug("dropping a superseded %s result", key)
            return
        exc = future.exception()
        if exc is not None:
            if not isinstance(exc, Exception):
                raise exc
            on_error(exc)
        else:
            on_done(future.result())

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
