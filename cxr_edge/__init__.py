"""cxr-edge: chest X-ray data sets to int8 models that run offline on the edge.

The public Python API is what this package exports (the README's "Python" section)::

    from cxr_edge import Pipeline
    pipeline = Pipeline.from_pack("default", profile="screening")   # or a pack folder / .zip
    pred = pipeline.predict("film.jpg")      # a path, bytes, a PIL image, a numpy array, or a Film
    pred.status, pred.gate.accepted, pred.results["cxr4"].top, pred.to_dict()

``Pipeline``, ``Prediction`` and ``load_pack`` are imported on first use, so ``import cxr_edge``
(and ``cxr-edge --help``) stays cheap. The code is layered by dependency, each layer importing
only those below it (an import-linter contract checks it): ``runtime`` (the device side: numpy,
Pillow, LiteRT), ``data``, ``tools`` (offline numpy), ``training`` (TensorFlow) and ``app`` (Kivy),
``cli``; the shared core under them all is :mod:`cxr_edge.errors`, :mod:`cxr_edge.tasks` and
:mod:`cxr_edge.config`.
"""

__version__ = "0.1.0"

from .errors import (BackendError, CxrEdgeError, DataError, DependencyError, ExportCheckError,  # noqa: E402
                     ImageError, PackError, RecipeError, UnknownTaskError)

#: name -> the module it comes from, imported when the name is first used
_LAZY = {
    "Pipeline": "cxr_edge.runtime.pipeline",
    "Film": "cxr_edge.runtime.pipeline",
    "Prediction": "cxr_edge.runtime.prediction",
    "GateResult": "cxr_edge.runtime.prediction",
    "TaskResult": "cxr_edge.runtime.prediction",
    "load_pack": "cxr_edge.runtime.pack",
    "ModelPack": "cxr_edge.runtime.pack",
}

__all__ = ["__version__", "Pipeline", "Film", "Prediction", "GateResult", "TaskResult", "load_pack", "ModelPack",
           "CxrEdgeError", "ImageError", "PackError", "BackendError", "DataError", "RecipeError", "ExportCheckError",
           "DependencyError", "UnknownTaskError"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cxr_edge' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
