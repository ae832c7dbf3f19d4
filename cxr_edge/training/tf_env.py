"""The one place the workstation side imports TensorFlow, tf-keras and tfmot.

tfmot 0.8.1 supports only Keras 2 (tf-keras), so ``TF_USE_LEGACY_KERAS=1``
must be in the environment *before* TensorFlow is first imported; every
module in :mod:`cxr_edge.training` calls :func:`load` inside its functions
(never at import time), so ``import cxr_edge.training`` stays cheap and the
device side never pulls TensorFlow in.
"""

from __future__ import annotations

import logging
import os

from ..errors import DependencyError

__all__ = ["load", "load_tfmot"]

log = logging.getLogger(__name__)

_INSTALL = 'pip install "cxr-edge[train]"'


def load():
    """Import and return ``(tf, keras)`` where ``keras`` is tf-keras (Keras 2).

    Sets ``TF_USE_LEGACY_KERAS=1`` and quiets TensorFlow's C++ and Python
    logging (an explicit ``TF_CPP_MIN_LOG_LEVEL`` is respected). Raises
    :class:`DependencyError` when TensorFlow or tf-keras is not installed.
    """
    current = os.environ.get("TF_USE_LEGACY_KERAS")
    if current not in (None, "1"):
        log.warning("TF_USE_LEGACY_KERAS=%s overridden to 1: tfmot needs tf-keras (Keras 2)", current)
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tf_keras as keras
    except ImportError as exc:
        raise DependencyError(
            f"training, QAT and conversion need TensorFlow and tf-keras, which are not installed "
            f"({exc}). Install them with: {_INSTALL}"
        ) from exc
    tf.get_logger().setLevel(logging.ERROR)
    return tf, keras


def load_tfmot():
    """Import and return ``tensorflow_model_optimization`` (after :func:`load`)."""
    load()
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as exc:
        raise DependencyError(
            f"quantization-aware training needs tensorflow-model-optimization, which is not "
            f"installed ({exc}). Install it with: {_INSTALL}"
        ) from exc
    return tfmot
