"""One wrapper around the TFLite interpreters, with quantization at one boundary.

Backends, in order of preference (override with ``backend=`` or the
``CXR_EDGE_BACKEND`` environment variable):

* ``ai-edge-litert`` – LiteRT, numpy 2, XNNPACK for float and int8 (fast).
* ``tflite-runtime`` – the legacy runtime; needs numpy<2 and runs int8
  without XNNPACK (measured ~14x slower here).
* ``tf.lite`` – TensorFlow's own interpreter (deprecated, heavy; last resort).
* ``tflite-java`` – on Android, the TFLite Java API through pyjnius
  (``cxr_edge.runtime.android_tflite``), where no Python runtime can be packaged.

Callers pass and receive float32: :meth:`TFLiteModel.run` quantizes inputs
and dequantizes outputs with the tensors' own scale and zero point, so no
other code deals with uint8/int8 tensors.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import BackendError
from .backends import BACKENDS, DISTRIBUTIONS, MODULES

__all__ = ["available_backends", "interpreter_class", "pick_backend", "TensorInfo", "TFLiteModel"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor: where it is and how to (de)quantize it."""

    index: int
    name: str
    shape: tuple
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.issubdtype(self.dtype, np.integer)


def available_backends() -> list[str]:
    """The backends that import on this machine, in preference order."""
    found = []
    for name in BACKENDS:
        try:
            interpreter_class(name)
            found.append(name)
        except BackendError:
            pass
    return found


def interpreter_class(name: str):
    """The ``Interpreter`` class of backend ``name`` (raises BackendError when it is unknown or not usable here)."""
    if name not in MODULES:
        raise BackendError(f"unknown interpreter backend {name!r}; valid: {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(MODULES[name])
    except Exception as exc:  # ImportError, or a numpy ABI error from tflite-runtime under numpy 2
        raise BackendError(f"backend {name} is not usable here: {exc}") from exc
    return module.lite.Interpreter if name == "tf.lite" else module.Interpreter


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTIONS[name])
    except PackageNotFoundError:
        return "unknown"


def pick_backend(requested: str | None) -> tuple[str, type]:
    """(name, Interpreter class) of the backend to use: ``requested``, else ``$CXR_EDGE_BACKEND``, else the first
    of :data:`BACKENDS` that imports here."""
    requested = requested or os.environ.get("CXR_EDGE_BACKEND") or None
    if requested:
        return requested, interpreter_class(requested)
    errors = []
    for name in BACKENDS:
        try:
            return name, interpreter_class(name)
        except BackendError as exc:
            errors.append(str(exc))
    raise BackendError(
        "no TFLite interpreter is installed. Install LiteRT with: pip install ai-edge-litert "
        "(aarch64 and x86_64 wheels exist for Python 3.10-3.14). Tried: " + "; ".join(errors)
    )


class _NativeStderr:
    """The process's one redirection of file descriptor 2, for the C++ runtime's log lines.

    LiteRT logs from C++ straight to fd 2 ("INFO: Created ... XNNPACK delegate"), which Python logging
    cannot filter. While any thread loads a model, fd 2 points at a temporary file; the first thread in
    redirects it and the last one out restores it and logs what was caught. The count and the dup2 calls
    are under one lock: threads that each saved and restored fd 2 themselves raced, and the process
    was left writing its stderr (the safety line, the failure count, "Interrupted.") into a deleted file.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: int | None = None
        self._sink = None

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                self._redirect()
            self._depth += 1
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._restore()

    def _redirect(self) -> None:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no real stderr (embedded interpreters): nothing to quiet
            return
        sink = tempfile.TemporaryFile()
        try:
            os.dup2(sink.fileno(), 2)
        except OSError:
            os.close(saved)
            sink.close()
            return
        self._saved, self._sink = saved, sink

    def _restore(self) -> None:
        if self._saved is None:
            return
        saved, sink, self._saved, self._sink = self._saved, self._sink, None, None
        try:
            os.dup2(saved, 2)
        finally:
            os.close(saved)
        with sink:
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
        if text:
            log.debug("interpreter: %s", text)


_NATIVE_STDERR = _NativeStderr()


def _native_stderr_to_log():
    """Route what the C++ runtime prints on stderr while loading to the log (see :class:`_NativeStderr`)."""
    return _NATIVE_STDERR


def _delegate_of(backend: str, version: str) -> str:
    if backend == "tflite-runtime":
        major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) or (0, 0)
        if major_minor < (2, 15):
            return "XNNPACK for float ops only (int8 on built-in kernels)"
    return "XNNPACK (default CPU delegate)"


class TFLiteModel:
    """A loaded .tflite model. ``run`` takes and returns float32 arrays.

    ``model`` is a path or the model's bytes. ``threads`` sets the
    interpreter's CPU threads. An instance is not re-entrant: a lock
    serialises :meth:`run` so a model can be shared between threads safely.
    """

    def __init__(self, model, *, threads: int = 1, backend: str | None = None, name: str | None = None):
        if threads < 1:
            raise BackendError(f"threads must be >= 1, got {threads}")
        self.name = name or (os.fspath(model) if isinstance(model, (str, os.PathLike)) else "<model bytes>")
        self.backend, cls = pick_backend(backend)
        self.backend_version = _version(self.backend)
        self.delegate = _delegate_of(self.backend, self.backend_version)
        self.threads = threads
        content = model if isinstance(model, (bytes, bytearray)) else None
        try:
            with _native_stderr_to_log():
                if content is not None:
                    self._interp = cls(model_content=bytes(content), num_threads=threads)
                else:
                    self._interp = cls(model_path=os.fspath(model), num_threads=threads)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BackendError(
                f"{self.name}: the {self.backend} interpreter refused this model ({exc}). The file is not a valid "
                "TFLite model, or it needs ops this runtime lacks; re-export it with cxr-edge export."
            ) from exc
        self.inputs = [self._info(d) for d in self._interp.get_input_details()]
        self.outputs = [self._info(d) for d in self._interp.get_output_details()]
        self._batch = self.inputs[0].shape[0] if self.inputs else 1
        self._resizable = True
        self._lock = threading.Lock()

    @staticmethod
    def _info(d: dict) -> TensorInfo:
        scale, zero_point = d.get("quantization", (0.0, 0))
        return TensorInfo(int(d["index"]), d["name"], tuple(int(s) for s in d["shape"]),
                          np.dtype(d["dtype"]), float(scale), int(zero_point))

    @property
    def interpreter(self):
        """The backend's own interpreter object, for tools that time a bare ``invoke`` or read its op list."""
        return self._interp

    @property
    def input_shape(self) -> tuple:
        """The input's shape without the batch axis, e.g. (224, 224, 1)."""
        return self.inputs[0].shape[1:]

    @property
    def input_dtype(self) -> np.dtype:
        return self.inputs[0].dtype

    def describe(self) -> dict:
        return {"backend": self.backend, "backend_version": self.backend_version, "delegate": self.delegate,
                "threads": self.threads, "input_shape": list(self.input_shape),
                "input_dtype": self.input_dtype.name}

    # ----------------------------------------------------------------- (de)quantization boundary

    @staticmethod
    def quantize(x: np.ndarray, info: TensorInfo) -> np.ndarray:
        """float32 -> the tensor's integer type, rounding half away from zero like TFLite does."""
        if not info.quantized:
            return np.asarray(x, dtype=info.dtype)
        q = np.asarray(x, dtype=np.float32) / np.float32(info.scale) + np.float32(info.zero_point)
        q = np.sign(q) * np.floor(np.abs(q) + 0.5)
        limits = np.iinfo(info.dtype)
        return np.clip(q, limits.min, limits.max).astype(info.dtype)

    @staticmethod
    def dequantize(q: np.ndarray, info: TensorInfo) -> np.ndarray:
        if not info.quantized:
            return np.asarray(q, dtype=np.float32)
        return (q.astype(np.float32) - np.float32(info.zero_point)) * np.float32(info.scale)

    # ----------------------------------------------------------------- running

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run one input batch (N, *input_shape) or one sample (*input_shape); returns dequantized outputs.

        Outputs come in the interpreter's output order, each with a batch axis.
        """
        x = np.asarray(x, dtype=np.float32)
        if x.shape == self.input_shape:
            x = x[None]
        if x.shape[1:] != self.input_shape:
            raise BackendError(
                f"{self.name}: input of shape {x.shape[1:]} does not fit the model's {self.input_shape}; "
                "preprocess images with the model's own input spec."
            )
        if x.shape[0] != 1 and not self._resizable:
            outs = [self.run(sample[None]) for sample in x]
            return [np.concatenate(parts) for parts in zip(*outs)]
        inp = self.inputs[0]
        with self._lock:
            if x.shape[0] != self._batch:
                try:
                    self._resize(x.shape[0])
                except RuntimeError:  # a graph with a fixed batch inside (e.g. a Reshape to [1, ...])
                    log.debug("%s: batch resize failed; running samples one by one", self.name)
                    self._resizable = False
                    self._resize(1)
            if x.shape[0] == self._batch:
                self._interp.set_tensor(inp.index, self.quantize(x, inp))
                self._interp.invoke()
                return [self.dequantize(self._interp.get_tensor(o.index), o) for o in self.outputs]
        return self.run(x)  # the resize failed: _resizable is now False, so this runs sample by sample

    def _resize(self, batch: int) -> None:
        self._interp.resize_tensor_input(self.inputs[0].index, [batch, *self.input_shape])
        self._interp.allocate_tensors()
        self._batch = batch
