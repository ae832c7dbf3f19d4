"""The ``tflite-java`` backend: TensorFlow Lite's Java API on Android, through pyjnius.

python-for-android's tflite-runtime recipe does not build, but an APK can
carry the TFLite AAR (``org.tensorflow:tensorflow-lite``, via buildozer's
``android.gradle_dependencies``) and Python can drive it with pyjnius. This
module gives :class:`Interpreter`, the subset of the Python TFLite
``Interpreter`` API that :class:`cxr_edge.runtime.interpreter.TFLiteModel` uses, so
the rest of cxr-edge does not know it runs on Java.

Off Android (no pyjnius, or no TFLite classes on the Java class path) importing
this module raises ImportError at once, so backend selection moves on.

How data crosses the boundary: an input array becomes a Java ``byte[]``
wrapped in a native-order ``ByteBuffer`` (one copy); outputs are copied into
heap ``ByteBuffer``\\ s whose backing ``byte[]`` comes back as Python bytes
(one copy) and is viewed with the tensor's dtype and shape. Tensor indices
are ordinals: inputs ``0..n-1``, outputs ``OUTPUT_BASE + j``.

This file is not exercised on a real device in CI; tests drive it through a
fake ``jnius`` whose "Java" interpreter is LiteRT.
"""

from __future__ import annotations

import numpy as np

try:
    from jnius import autoclass
except ImportError as exc:  # not Android (or pyjnius missing): the backend is simply not available
    raise ImportError(f"the tflite-java backend needs pyjnius on Android ({exc})") from exc

__all__ = ["dtype_of", "DTYPES", "from_java_bytes", "Interpreter", "OUTPUT_BASE", "to_java_buffer"]

try:
    _JInterpreter = autoclass("org.tensorflow.lite.Interpreter")
    _JOptions = autoclass("org.tensorflow.lite.Interpreter$Options")
    _ByteBuffer = autoclass("java.nio.ByteBuffer")
    _ByteOrder = autoclass("java.nio.ByteOrder")
    _HashMap = autoclass("java.util.HashMap")
    _Integer = autoclass("java.lang.Integer")
except Exception as exc:  # jnius.JavaException: the TFLite AAR is not in this app
    raise ImportError("org.tensorflow.lite.Interpreter is not on the Java class path; add "
                      "org.tensorflow:tensorflow-lite to android.gradle_dependencies in buildozer.spec") from exc

OUTPUT_BASE = 1_000_000

#: TFLite Java DataType names -> numpy dtypes
DTYPES = {"FLOAT32": np.float32, "INT32": np.int32, "UINT8": np.uint8, "INT64": np.int64, "INT8": np.int8,
          "INT16": np.int16, "BOOL": np.bool_}


def to_java_buffer(array: np.ndarray):
    """A native-order java.nio.ByteBuffer holding a copy of ``array``'s bytes (C order, native endianness)."""
    data = np.ascontiguousarray(array).tobytes()
    return _ByteBuffer.wrap(data).order(_ByteOrder.nativeOrder())


def from_java_bytes(data, dtype, shape) -> np.ndarray:
    """A numpy array from what pyjnius returns for a Java ``byte[]`` (its ByteArray, bytes, or a list of ints)."""
    if hasattr(data, "tostring"):  # pyjnius ByteArray: one memcpy
        raw = data.tostring()
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:  # a list of signed Java bytes
        raw = bytes(int(b) & 0xFF for b in data)
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape)).copy()


def dtype_of(tensor) -> np.dtype:
    name = str(tensor.dataType().name())
    if name not in DTYPES:
        raise ValueError(f"tensor type {name} is not supported by the tflite-java backend")
    return np.dtype(DTYPES[name])


def _details(tensor, index: int, name: str) -> dict:
    q = tensor.quantizationParams()
    return {"index": index, "name": name, "shape": np.array(list(tensor.shape()), dtype=np.int32),
            "dtype": dtype_of(tensor).type, "quantization": (float(q.getScale()), int(q.getZeroPoint()))}


class Interpreter:
    """``org.tensorflow.lite.Interpreter`` behind the Python TFLite Interpreter API (the part cxr-edge uses)."""

    def __init__(self, model_path=None, model_content=None, num_threads: int | None = None):
        if (model_path is None) == (model_content is None):
            raise ValueError("give exactly one of model_path or model_content")
        if model_content is None:
            with open(model_path, "rb") as fh:
                model_content = fh.read()
        options = _JOptions()
        if num_threads:
            options.setNumThreads(int(num_threads))
        # The Java interpreter reads the model from a direct, native-order buffer that must outlive it.
        self._model = _ByteBuffer.allocateDirect(len(model_content)).order(_ByteOrder.nativeOrder())
        self._model.put(bytes(model_content))
        self._model.rewind()
        try:
            self._j = _JInterpreter(self._model, options)
        except Exception as exc:  # jnius.JavaException (IllegalArgumentException: not a valid model)
            raise ValueError(f"TFLite (Java) cannot load this model: {exc}") from exc
        self._inputs: dict[int, object] = {}
        self._outputs: dict[int, np.ndarray] = {}

    def allocate_tensors(self) -> None:
        self._call(self._j.allocateTensors)

    def get_input_details(self) -> list[dict]:
        return [_details(self._j.getInputTensor(i), i, f"input_{i}") for i in range(self._j.getInputTensorCount())]

    def get_output_details(self) -> list[dict]:
        return [_details(self._j.getOutputTensor(j), OUTPUT_BASE + j, f"output_{j}")
                for j in range(self._j.getOutputTensorCount())]

    def resize_tensor_input(self, input_index: int, tensor_size, strict: bool = False) -> None:
        self._call(self._j.resizeInput, int(input_index), [int(s) for s in tensor_size])

    def set_tensor(self, tensor_index: int, value: np.ndarray) -> None:
        tensor = self._j.getInputTensor(int(tensor_index))
        value = np.asarray(value)
        want_dtype, want_shape = dtype_of(tensor), tuple(tensor.shape())
        if value.dtype != want_dtype or value.shape != want_shape:
            raise ValueError(f"input {tensor_index} wants {want_dtype} {want_shape}, got {value.dtype} {value.shape}")
        self._inputs[int(tensor_index)] = to_java_buffer(value)

    def invoke(self) -> None:
        count = self._j.getInputTensorCount()
        missing = [i for i in range(count) if i not in self._inputs]
        if missing:
            raise ValueError(f"set_tensor was not called for input(s) {missing}")
        outputs = _HashMap()
        buffers = []
        for j in range(self._j.getOutputTensorCount()):
            tensor = self._j.getOutputTensor(j)
            buf = _ByteBuffer.allocate(int(tensor.numBytes())).order(_ByteOrder.nativeOrder())
            outputs.put(_Integer.valueOf(j), buf)
            buffers.append((j, buf, dtype_of(tensor), tuple(tensor.shape())))
        self._call(self._j.runForMultipleInputsOutputs, [self._inputs[i] for i in range(count)], outputs)
        self._outputs = {OUTPUT_BASE + j: from_java_bytes(buf.array(), dtype, shape)
                         for j, buf, dtype, shape in buffers}

    def get_tensor(self, tensor_index: int) -> np.ndarray:
        if tensor_index not in self._outputs:
            raise ValueError(f"tensor {tensor_index} is not an output read after invoke() "
                             f"(outputs: {sorted(self._outputs)})")
        return self._outputs[tensor_index]

    def close(self) -> None:
        if getattr(self, "_j", None) is not None:
            self._j.close()
            self._j = None

    @staticmethod
    def _call(method, *args):
        try:
            return method(*args)
        except Exception as exc:  # Java exceptions become the RuntimeError the Python API raises
            raise RuntimeError(f"TFLite (Java): {exc}") from exc
