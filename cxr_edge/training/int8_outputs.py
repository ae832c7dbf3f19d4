"""What a converted int8 model outputs, run as a pack model is run: export's check and QAT's selection share it.

:func:`device_model` wraps TFLite bytes exactly as predict wraps a pack model (``LoadedModel``: the
uint8 input quantization, the output roles, the probabilities from the stored logits or scores), and
:func:`device_outputs` runs it one image at a time, as predict does. Export compares these outputs with
the float model's; QAT (``qat.select = "int8_agreement"``) converts each epoch's model and scores the
same comparison, so the epoch it keeps is chosen on the model export will actually ship.
"""

from __future__ import annotations

import numpy as np

from ..runtime import metadata as md
from ..runtime.features import pooled
from ..tasks import TaskSpec

__all__ = ["device_model", "device_outputs"]


def device_model(content: bytes, spec: TaskSpec, roles: dict, threads: int = 1):
    """The converted model wrapped exactly as a pack model is for predict (LoadedModel)."""
    from ..runtime.interpreter import TFLiteModel
    from ..runtime.pipeline import LoadedModel

    meta = md.ModelMetadata.for_task(spec, roles)
    return LoadedModel(spec.family, spec, meta, TFLiteModel(content, threads=threads, name=f"{spec.name} int8"), {})


def device_outputs(lm, x) -> tuple[np.ndarray, np.ndarray | None]:
    """(probs, pooled features or None) through LoadedModel.infer, one image at a time as predict runs.

    ``x``: model inputs, an array (N, S, S, C) or any sequence of them (the trainers' ``ValInputs``)."""
    outs = [lm.infer(sample) for sample in _samples(x)]
    probs = np.stack([lm.probabilities(o["probs"]) for o in outs]).astype(np.float64)
    feats = np.stack([pooled(o["features"]) for o in outs]) if "features" in outs[0] else None
    return probs, feats


def _samples(x):
    if isinstance(x, np.ndarray):
        yield from x
        return
    for start in range(0, len(x), 64):
        yield from np.asarray(x[start:start + 64])
