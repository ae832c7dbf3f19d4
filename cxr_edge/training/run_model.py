"""A training run's float Keras model as a model under test: ``cxr-edge evaluate RUN_DIR``.

The offline tools (:mod:`cxr_edge.tools`) never import TensorFlow; they take this opener as
``run_opener`` (:func:`cxr_edge.tools.split_runner.open_model`), which the CLI passes. TensorFlow is
imported when a run is opened, not when this module is.
"""

from __future__ import annotations

import logging

import numpy as np

from ..data.prepared import Prepared
from ..errors import CxrEdgeError
from ..runtime.features import pooled
from ..tools.split_runner import ModelUnderTest, check_task
from .runs import load_run

__all__ = ["open_run_model"]

log = logging.getLogger(__name__)


def open_run_model(path, prepared: Prepared, *, profile: str | None = None) -> ModelUnderTest:
    """A training run's float Keras model behind the :class:`~cxr_edge.tools.split_runner.ModelUnderTest`
    interface (TensorFlow is imported here, not at module import)."""
    run = load_run(path)
    spec = run.task
    check_task(spec.name, f"run {run.path}", prepared)
    if profile:
        raise CxrEdgeError(f"--profile {profile}: threshold profiles live in model packs; run {run.path} has none "
                           "(it is evaluated at the task's default thresholds). Drop --profile, or evaluate "
                           "the exported pack.")
    model = run.float_model()
    try:
        from .model import with_feature_output

        model = with_feature_output(model)
    except (CxrEdgeError, ValueError, KeyError) as exc:  # a model without the standard layer names
        log.warning("run %s: no feature map output (%s); the source probe is skipped", run.path, exc)
    two = len(model.outputs) == 2

    def infer(x):
        outs = model(np.asarray(x, np.float32), training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return np.asarray(outs[0], np.float64), pooled(np.asarray(outs[1])) if two else None

    describe = {"kind": "run", "path": str(run.path), "slot": spec.family, "task": spec.name,
                "input": spec.input.to_dict(), "backend": "tf-keras (float)", "temperature": 1.0,
                "profile": None, "status": run.info.get("status"), "best": run.info.get("best")}
    training = {k: run.info.get(k) for k in ("data_sha256", "prepared")}
    return ModelUnderTest("run", run.path, spec, spec.family, 1.0, None,
                          {lbl: spec.default_threshold for lbl in spec.labels}, training, {}, describe, infer,
                          lambda raw: np.asarray(raw, np.float64))
