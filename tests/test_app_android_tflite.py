"""The Android ``tflite-java`` backend, driven through a fake ``jnius`` (no Android device or JVM here).

The fake's "Java" classes mimic the parts of ``org.tensorflow.lite.Interpreter``,
``Tensor``, ``java.nio.ByteBuffer`` and pyjnius' ``ByteArray`` that the backend
uses, and run the model with LiteRT underneath. They check the backend's
translation (dtypes, shapes, quantization, buffers, indices, resizing); they
cannot prove the real Java API behaves as modelled. That needs a device.
"""

import importlib
import sys
import time
import types

import numpy as np
import pytest

from cxr_edge.errors import BackendError
from cxr_edge.runtime.interpreter import TFLiteModel

MODULE = "cxr_edge.runtime.android_tflite"


# --------------------------------------------------------------------------- the fake Java side


class FakeByteArray:
    """What pyjnius returns for a Java byte[]: has tostring() -> bytes."""

    def __init__(self, data):
        self._data = bytes(data)

    def tostring(self):
        return self._data


class FakeByteBuffer:
    def __init__(self, capacity, data=None, direct=False):
        self.data = bytearray(data if data is not None else capacity)
        self.direct = direct
        self.position = 0

    @classmethod
    def wrap(cls, data):
        assert isinstance(data, bytes), "pyjnius converts bytes to byte[]"
        return cls(len(data), data)

    @classmethod
    def allocate(cls, n):
        return cls(n)

    @classmethod
    def allocateDirect(cls, n):
        return cls(n, direct=True)

    def order(self, order):
        assert order == "nativeOrder"
        return self

    def put(self, src):
        src = src.data if isinstance(src, FakeByteBuffer) else src
        self.data[self.position:self.position + len(src)] = src
        self.position += len(src)
        return self

    def rewind(self):
        self.position = 0
        return self

    def capacity(self):
        return len(self.data)

    def array(self):
        assert not self.direct, "direct buffers have no accessible array"
        return FakeByteArray(self.data)


class FakeTensor:
    def __init__(self, detail, interp):
        self.detail, self.interp = detail, interp

    def dataType(self):
        name = {np.uint8: "UINT8", np.int8: "INT8", np.float32: "FLOAT32", np.int32: "INT32"}[self.detail["dtype"]]
        return types.SimpleNamespace(name=lambda: name)

    def shape(self):
        return [int(s) for s in self.detail["shape"]]

    def numBytes(self):
        return int(np.prod(self.shape())) * np.dtype(self.detail["dtype"]).itemsize

    def quantizationParams(self):
        s, z = self.detail["quantization"]
        return types.SimpleNamespace(getScale=lambda: s, getZeroPoint=lambda: z)


class JavaException(Exception):
    pass


class FakeJavaInterpreter:
    """org.tensorflow.lite.Interpreter(ByteBuffer, Options) with LiteRT inside."""

    instances = []

    def __init__(self, model, options):
        from ai_edge_litert.interpreter import Interpreter

        assert model.direct, "the Java API wants a direct ByteBuffer for model bytes"
        try:
            self.lite = Interpreter(model_content=bytes(model.data), num_threads=options.threads)
        except ValueError as exc:
            raise JavaException(f"java.lang.IllegalArgumentException: {exc}") from None
        self.lite.allocate_tensors()
        self.options = options
        self.closed = False
        self.runs = 0
        FakeJavaInterpreter.instances.append(self)

    def _in(self):
        return self.lite.get_input_details()

    def _out(self):
        return self.lite.get_output_details()

    def getInputTensorCount(self):
        return len(self._in())

    def getOutputTensorCount(self):
        return len(self._out())

    def getInputTensor(self, i):
        return FakeTensor(self._in()[i], self)

    def getOutputTensor(self, j):
        return FakeTensor(self._out()[j], self)

    def resizeInput(self, i, dims):
        assert isinstance(dims, list) and all(isinstance(d, int) for d in dims)
        self.lite.resize_tensor_input(self._in()[i]["index"], dims)

    def allocateTensors(self):
        self.lite.allocate_tensors()

    def runForMultipleInputsOutputs(self, inputs, outputs):
        assert isinstance(inputs, list) and isinstance(outputs, dict) and outputs
        for i, buf in enumerate(inputs):
            t = self.getInputTensor(i)
            if buf.capacity() != t.numBytes():
                raise JavaException("IllegalArgumentException: input buffer size mismatch")
            arr = np.frombuffer(bytes(buf.data), dtype=t.detail["dtype"]).reshape(t.shape())
            self.lite.set_tensor(t.detail["index"], arr)
        self.lite.invoke()
        for j, dst in outputs.items():
            t = self.getOutputTensor(j)
            if dst.capacity() < t.numBytes():
                raise JavaException("IllegalArgumentException: output buffer too small")
            dst.put(self.lite.get_tensor(t.detail["index"]).tobytes())
        self.runs += 1

    def close(self):
        self.closed = True


class FakeOptions:
    def __init__(self):
        self.threads = None

    def setNumThreads(self, n):
        assert isinstance(n, int)
        self.threads = n
        return self


FAKE_CLASSES = {
    "org.tensorflow.lite.Interpreter": FakeJavaInterpreter,
    "org.tensorflow.lite.Interpreter$Options": FakeOptions,
    "java.nio.ByteBuffer": FakeByteBuffer,
    "java.nio.ByteOrder": types.SimpleNamespace(nativeOrder=lambda: "nativeOrder"),
    "java.util.HashMap": type("HashMap", (dict,), {"put": lambda self, k, v: self.__setitem__(k, v)}),
    "java.lang.Integer": types.SimpleNamespace(valueOf=int),
}


def fake_jnius(classes=FAKE_CLASSES):
    mod = types.ModuleType("jnius")

    def autoclass(name):
        if name not in classes:
            raise JavaException(f"java.lang.ClassNotFoundException: {name}")
        return classes[name]

    mod.autoclass = autoclass
    return mod


@pytest.fixture
def java_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "jnius", fake_jnius())
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    module = importlib.import_module(MODULE)
    yield module
    sys.modules.pop(MODULE, None)  # later imports see the real (absent) jnius again


# --------------------------------------------------------------------------- tests


def test_import_fails_fast_without_jnius_so_backend_selection_skips_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "jnius", None)  # as on a desktop without pyjnius
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    t0 = time.perf_counter()
    with pytest.raises(ImportError, match="needs pyjnius"):
        importlib.import_module(MODULE)
    assert time.perf_counter() - t0 < 0.5
    with pytest.raises(BackendError, match="tflite-java is not usable here"):
        TFLiteModel(b"model bytes", backend="tflite-java")


def test_import_fails_when_the_tflite_aar_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "jnius", fake_jnius({}))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    with pytest.raises(ImportError, match="android.gradle_dependencies"):
        importlib.import_module(MODULE)
    sys.modules.pop(MODULE, None)


def test_buffer_conversion_round_trips(java_backend):
    for dtype in (np.uint8, np.int8, np.float32, np.int32):
        a = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
        buf = java_backend.to_java_buffer(a[:, ::-1])  # non-contiguous input is copied in C order
        back = java_backend.from_java_bytes(buf.array(), dtype, (2, 3, 4))
        assert back.dtype == dtype and np.array_equal(back, np.ascontiguousarray(a[:, ::-1]))
    signed_list = [-1, 0, 127, -128]  # pyjnius may hand back a list of signed Java bytes
    assert java_backend.from_java_bytes(signed_list, np.uint8, (4,)).tolist() == [255, 0, 127, 128]
    assert java_backend.from_java_bytes(b"\x01\x02", np.uint8, (2,)).flags.writeable


def test_same_outputs_as_litert_through_tfliteModel(java_backend, tiny_pack):
    from cxr_edge.runtime.pack import load_pack

    content = load_pack(tiny_pack)["nih14"].content
    ref = TFLiteModel(content, backend="ai-edge-litert")
    java = TFLiteModel(content, backend="tflite-java", threads=2)
    assert java.backend == "tflite-java" and FakeJavaInterpreter.instances[-1].options.threads == 2
    assert [(o.shape, o.dtype, o.scale, o.zero_point) for o in java.outputs] == \
           [(o.shape, o.dtype, o.scale, o.zero_point) for o in ref.outputs]
    assert java.inputs[0].quantized and java.input_dtype == np.uint8
    x = np.random.default_rng(0).uniform(-1, 1, (3, *ref.input_shape)).astype(np.float32)
    for got, want in zip(java.run(x), ref.run(x)):  # batch 3: resizeInput + allocateTensors on the Java side
        assert got.shape[0] == 3 and np.array_equal(got, want)
    for got, want in zip(java.run(x[0]), ref.run(x[0])):
        assert np.array_equal(got, want)


def test_whole_pipeline_agrees(java_backend, tiny_pack, shared_data):
    from cxr_edge.runtime.pipeline import Pipeline

    cxr = shared_data / "nih_cxr14" / "images" / "00000061_012.png"
    a = Pipeline(tiny_pack, backend="tflite-java").predict(cxr).to_dict()
    b = Pipeline(tiny_pack, backend="ai-edge-litert").predict(cxr).to_dict()
    for d in (a, b):
        d.pop("timings_ms")
    assert a == b


def test_errors_are_python_errors(java_backend, tiny_pack):
    with pytest.raises(BackendError, match="tflite-java interpreter refused"):
        TFLiteModel(b"not a model" * 10, backend="tflite-java")
    interp = java_backend.Interpreter(model_content=(tiny_pack / "gate.tflite").read_bytes())
    interp.allocate_tensors()
    with pytest.raises(ValueError, match="set_tensor was not called"):
        interp.invoke()
    with pytest.raises(ValueError, match="wants uint8"):
        interp.set_tensor(0, np.zeros(interp.get_input_details()[0]["shape"], np.float32))
    with pytest.raises(ValueError, match="not an output"):
        interp.get_tensor(0)
    interp.close()
    assert FakeJavaInterpreter.instances[-1].closed
