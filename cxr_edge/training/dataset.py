"""The tf.data input pipeline: prepared cache → (augmented) normalized batches.

It never decodes an image file: it streams the uint8 ``fit_to_square``
pixels from the prepared cache's memory-mapped shards, so an epoch costs a
gather and the augmentations, not a PNG decode and a resize per image.

Pipeline (per epoch)::

    indices ─shuffle (seeded, reshuffled each epoch)─▶ batch ─▶ gather from the
    memmapped shards + phone-photo simulation (numpy, parallel) ─▶ affine /
    crop / brightness / contrast / mixup (TF, batched) ─▶ x = pixels·scale +
    offset ─▶ prefetch

Normalization is the same arithmetic as :func:`cxr_edge.runtime.preprocess.normalize`
(float32 ``pixels * scale + offset``), so without augmentation the batches
equal what the device feeds the model, value for value.

Everything random is derived from ``seed`` (the shuffle, one random stream
per batch for the TF ops and for the numpy photo simulation), so the same
seed gives the same batches.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import DataError
from .augment import AugmentConfig, augment_batch, photo_batch
from .tf_env import load

__all__ = ["make_dataset", "steps_per_epoch"]

log = logging.getLogger(__name__)


def make_dataset(prepared, split: str, *, batch_size: int, shuffle: bool, augment: AugmentConfig | None = None,
                 seed: int = 0, repeat: bool = False, drop_remainder: bool = False):
    """A ``tf.data.Dataset`` of ``(x, y)``: x float32 (B, S, S, C) model inputs, y float32 (B, L).

    ``prepared`` is a :class:`cxr_edge.data.prepared.Prepared`. ``shuffle``
    reshuffles every epoch; ``repeat`` makes it infinite (use
    ``steps_per_epoch``); ``augment`` None means exactly the device
    preprocessing.
    """
    tf, _ = load()
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    images = prepared.images(split)
    labels = prepared.labels(split)
    n = len(images)
    if n == 0:
        raise DataError(f"split {split!r} of {prepared.path} is empty; prepared splits: {', '.join(prepared.splits)}")
    spec = prepared.task.input
    pixel_shape = tuple(images.shape[1:])

    def gather(ix, batch_seed):
        x = images.take(ix)
        if augment is not None and augment.photo_prob > 0:
            x = photo_batch(x, augment, np.random.default_rng([seed, int(batch_seed) & (2 ** 63 - 1)]))
        return x, labels[ix]

    def load_batch(ix, batch_seed):
        x, y = tf.numpy_function(gather, [ix, batch_seed], [tf.uint8, tf.float32], stateful=False)
        x.set_shape((None,) + pixel_shape)
        y.set_shape((None, labels.shape[1]))
        return x, y, batch_seed

    scale, offset = np.float32(spec.scale), np.float32(spec.offset)

    def finish(x, y, batch_seed):
        x = tf.cast(x, tf.float32)
        if len(pixel_shape) == 2:
            x = x[..., None]
        if augment is not None:
            x, y = augment_batch(x, y, augment, tf.stack([tf.constant(seed, tf.int64), batch_seed]))
        return x * scale + offset, y  # the device's normalize(): float32 pixels * scale + offset

    idx = tf.data.Dataset.range(n)
    if shuffle:
        idx = idx.shuffle(n, seed=seed, reshuffle_each_iteration=True)  # indices only: cheap at any n
    if repeat:
        idx = idx.repeat()
    idx = idx.batch(batch_size, drop_remainder=drop_remainder)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((idx, seeds))
    ds = ds.map(load_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(prepared, split: str, batch_size: int) -> int:
    """Batches in one pass over ``split`` (for ``repeat=True`` datasets)."""
    return max(1, -(-len(prepared.table(split)) // batch_size))
