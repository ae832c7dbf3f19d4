"""The TFLite interpreter backends cxr-edge can use, in order of preference: the one list.

:mod:`cxr_edge.runtime.interpreter` picks from it, and every command's ``--backend`` option offers it.
Standard library only, so a command module can name the choices without importing numpy.
"""

from __future__ import annotations

__all__ = ["BACKENDS", "DISTRIBUTIONS", "MODULES"]

#: backend name -> the module that provides its ``Interpreter`` (``tf.lite``: TensorFlow's ``lite``)
MODULES = {
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
    "tf.lite": "tensorflow",
    "tflite-java": "cxr_edge.runtime.android_tflite",
}
#: the preference order: LiteRT (fast, numpy 2), the legacy runtime, TensorFlow's own, Android's Java API
BACKENDS = tuple(MODULES)
#: backend name -> the distribution whose version a report names
DISTRIBUTIONS = {"ai-edge-litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime", "tf.lite": "tensorflow",
                 "tflite-java": "pyjnius"}
