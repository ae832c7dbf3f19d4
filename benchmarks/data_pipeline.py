"""Training-batch throughput: the cached tf.data pipeline against decoding the original files every epoch.

Run (2 shared cores: be nice):

    TF_USE_LEGACY_KERAS=1 nice -n 10 .venv/bin/python benchmarks/data_pipeline.py \
        [--prepared DIR] [--size 224] [--batch-size 32] [--batches 20] [--rounds 3]

Without ``--prepared`` it prepares the NIH subset of ``../shared/data`` at
``--size`` into a temporary folder first (that one-time cost is printed
too). Then, in the same run, it measures images/s of training batches
(shuffled, ``--batch-size`` images, float32 (B, S, S, 1) + labels) for:

* ``naive``: every step decodes the original PNGs and runs ``preprocess``
  on each image in a Python loop: what training without a cache does every
  epoch (the baseline, ratio 1.0);
* ``naive, 2 threads``: the same with a 2-thread decode pool;
* ``naive, 1024-px PNGs``: the naive loop on 1024x1024 PNGs (the real NIH
  resolution; made here by upsampling shared images, whose copies are 256 px);
* ``naive + augmentation``: the naive loop followed by the same TF
  augmentation the pipeline applies (the like-for-like baseline for the
  augmented pipeline rows);
* ``pipeline``: :func:`cxr_edge.training.dataset.make_dataset` from the
  memory-mapped cache, no augmentation, then with the default
  augmentation, then with phone-photo simulation on 30% of images.

The variants run in interleaved rounds and the median per variant is
reported (with min-max), because the load of a shared machine moves during a
run; the ratios, measured in the same run, are the result.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXR_EDGE_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def prepared_set(args, tmp: Path):
    from cxr_edge.data.prepare import PrepareConfig, prepare
    from cxr_edge.data.prepared import open_prepared
    from cxr_edge.data.sources import SourceSpec

    if args.prepared:
        return open_prepared(args.prepared), None
    t0 = time.perf_counter()
    p = prepare(PrepareConfig(task="nih14", sources=(SourceSpec(str(SHARED / "data/nih_cxr14/manifest.csv")),),
                              size=args.size), tmp / "nih14")
    return p, time.perf_counter() - t0


def naive_batches(paths, labels, spec, batch_size, threads=1, augment=None):
    """A batch function 'decode + preprocess every image every step' (+ the same TF augmentation)."""
    from cxr_edge.runtime.preprocess import fit_to_square, normalize

    def preprocess(path):
        return fit_to_square(path, spec) if augment else normalize(fit_to_square(path, spec), spec)

    aug = _tf_augment(augment, spec) if augment else None
    if aug:  # trace the tf.function before anything is timed
        aug(np.zeros((batch_size, spec.size, spec.size), np.uint8), labels[:batch_size], np.array([0, 0], np.int64))
    rng = np.random.default_rng(0)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    step = [0]

    def batch():
        idx = rng.choice(len(paths), batch_size, replace=False)
        chosen = [paths[i] for i in idx]
        x = np.stack(list(pool.map(preprocess, chosen)) if pool else [preprocess(q) for q in chosen])
        y = labels[idx]
        if aug:
            step[0] += 1
            x, y = (t.numpy() for t in aug(x, y, np.array([0, step[0]], np.int64)))
        assert x.shape[0] == y.shape[0]

    return batch


def _tf_augment(augment, spec):
    """augment_batch + normalize as one tf.function, as the pipeline runs them."""
    from cxr_edge.training.augment import augment_batch
    from cxr_edge.training.tf_env import load

    tf, _ = load()

    @tf.function
    def run(x, y, seed):
        x, y = augment_batch(tf.cast(x, tf.float32)[..., None], y, augment, seed)
        return x * np.float32(spec.scale) + np.float32(spec.offset), y

    return run


class PipelineBatches:
    """Batches from make_dataset; a fresh iterator per round, closed after it.

    A tf.data iterator keeps prefetching in background threads while it is
    alive, which would steal CPU from whatever is timed next: each round
    opens an iterator, warms it up, is timed, and deletes it.
    """

    def __init__(self, prepared, batch_size, augment=None, warmup=3):
        from cxr_edge.training.dataset import make_dataset

        self.ds = make_dataset(prepared, "train", batch_size=batch_size, shuffle=True, augment=augment, seed=0,
                               repeat=True, drop_remainder=True)
        self.warmup = warmup
        self.it = None

    def start(self):
        self.it = iter(self.ds)
        for _ in range(self.warmup):
            next(self.it)

    def __call__(self):
        x, y = next(self.it)
        _ = x.numpy(), y.numpy()

    def stop(self):
        self.it = None
        gc.collect()
        time.sleep(0.5)  # let cancelled prefetch threads wind down


def rate(batch_fn, batches: int, batch_size: int) -> float:
    if hasattr(batch_fn, "start"):
        batch_fn.start()
    t0 = time.perf_counter()
    for _ in range(batches):
        batch_fn()
    seconds = time.perf_counter() - t0
    if hasattr(batch_fn, "stop"):
        batch_fn.stop()
    return batches * batch_size / seconds


def fullres_copies(paths, tmp: Path, n: int) -> list[str]:
    """n 1024x1024 PNGs (upsampled shared images): the size of the original NIH files."""
    from PIL import Image

    out = []
    for i, p in enumerate(paths[:n]):
        dst = tmp / f"full_{i:03d}.png"
        Image.open(p).convert("L").resize((1024, 1024), Image.Resampling.BICUBIC).save(dst)
        out.append(str(dst))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", help="a prepared folder (default: prepare the shared NIH subset now)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=20, help="batches per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from cxr_edge.training.augment import AugmentConfig

    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmpdir:
        tmp = Path(tmpdir)
        prepared, prep_s = prepared_set(args, tmp)
        spec = prepared.task.input
        paths = list(prepared.table("train")["path"])
        labels = prepared.labels("train")
        print(f"data: {prepared.path} train split, {len(paths)} images, {spec.size} px, batch {args.batch_size}, "
              f"{args.batches} batches per variant per round, {os.cpu_count()} CPU(s), load average "
              f"{os.getloadavg()[0]:.1f}")
        if prep_s is not None:
            print(f"one-time prepare (decode + resize {prepared.info['cache']['shape'][0]} images into the cache): "
                  f"{prep_s:.1f} s")
        b, n = args.batch_size, args.batches
        full = fullres_copies(paths, tmp, max(b, 64))
        variants = [  # (name, batch function, batches per round)
            ("naive: decode PNG + preprocess every step (1 thread)", naive_batches(paths, labels, spec, b), n),
            ("naive, 2 decode threads", naive_batches(paths, labels, spec, b, threads=2), n),
            ("naive on 1024-px PNGs (the original NIH size)",
             naive_batches(full, labels[: len(full)], spec, b), max(2, n // 8)),
            ("naive + default augmentation (same TF ops)",
             naive_batches(paths, labels, spec, b, augment=AugmentConfig()), n),
            ("pipeline: cache + tf.data, no augmentation", PipelineBatches(prepared, b), 4 * n),
            ("pipeline + default augmentation", PipelineBatches(prepared, b, AugmentConfig()), n),
            ("pipeline + augmentation + photo simulation (p=0.3)",
             PipelineBatches(prepared, b, AugmentConfig(photo_prob=0.3)), n),
        ]
        # Interleaved rounds, median per variant: the load of a shared machine moves during a run.
        rates = {name: [] for name, _, _ in variants}
        for _ in range(args.rounds):
            for name, fn, k in variants:
                rates[name].append(rate(fn, k, b))
    rows = [(name, statistics.median(r), min(r), max(r)) for name, r in rates.items()]
    base, base_aug = rows[0][1], rows[3][1]
    width = max(len(r[0]) for r in rows)
    print(f"\nmedian of {args.rounds} interleaved rounds")
    print(f"{'variant':<{width}}  {'images/s':>9}  {'(min-max)':>13}  {'vs naive':>8}  {'vs naive+aug':>12}")
    for name, med, lo, hi in rows:
        print(f"{name:<{width}}  {med:9.1f}  {f'({lo:.0f}-{hi:.0f})':>13}  {med / base:7.2f}x  {med / base_aug:11.2f}x")

if __name__ == "__main__":
    main()
