"""The ``features`` output: the last feature map every cxr-edge model returns beside its probabilities,
and its global average (the pooled feature vector the OOD guard scores and the source probe reads).
numpy only."""

from __future__ import annotations

import numpy as np

__all__ = ["FEATURES_ROLE", "pooled"]

#: the output role of the feature map in a model's metadata (``ModelMetadata.outputs``)
FEATURES_ROLE = "features"


def pooled(features: np.ndarray | None) -> np.ndarray | None:
    """Global average of a (h, w, F) or (N, h, w, F) feature map; (F,) or (N, F) vectors pass through,
    None (a model without a ``features`` output) stays None."""
    if features is None:
        return None
    f = np.asarray(features, np.float32)
    return f.mean(axis=(-3, -2)) if f.ndim >= 3 else f
