"""``train(recipe, run_dir)``: staged MobileNetV2 transfer learning into a run directory.

What a run does, in order:

1. prepares the data if the recipe names sources (:func:`cxr_edge.data.prepare.prepare` is
   idempotent: the same parameters reuse the prepared folder, an interrupted one resumes), else
   opens ``data.dir``; checks task and input size;
2. builds the flat MobileNetV2 (:func:`~cxr_edge.training.model.build_model`) from the local
   weights file, inside the tf.distribute strategy's scope, mixed precision when a GPU is there;
3. runs the stages. A stage whose backbone is frozen (``trainable = "head"``, ``cache_features``)
   computes the pooled backbone features of the train and val splits **once** -- train as the
   digital films plus ``views - 1`` passes with the recipe's augmentation (photo simulation
   included) -- then fits the head on them: epochs of the optimizer, each a few matrix products
   instead of a MobileNetV2 forward pass per image, or (``fit = "probe"``) one L2 logistic
   regression (:mod:`cxr_edge.training.probe`). The other stages fine-tune through the full model
   with the recipe's augmentation. Each stage starts from the best checkpoint so far
   (``train.restore_best``);
4. after every epoch: validation metrics, LR schedule, best checkpoint on the task's primary
   metric, early stopping, history.csv/json, and resumable state (see
   :mod:`cxr_edge.training.callbacks`);
5. at the end: the best float model's validation metrics with bootstrap CIs (metrics.json),
   curves.png, run.json ``status: complete``.

``resume=True`` continues an interrupted run (Ctrl-C, a kill, a crash) from its last completed
epoch with the same best value, counters, learning rate and optimizer slots.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import DataError, RecipeError
from ..runtime.atomic import atomic_path, write_atomic
from .callbacks import STATE_JSON, RunState, epoch_callbacks, finite, write_history
from .recipe import STRATEGIES, Recipe, describe
from .runs import (CURVES_PNG, FLOAT_MODEL, METRICS_JSON, RECIPE_JSON, RUN_FORMAT, RUN_FORMAT_VERSION, RUN_JSON,
                   STATE_DIR, load_run, save_model_atomic, sha256_file, write_json_atomic)
from .tf_env import load

__all__ = ["check_prepared", "Distribution", "ensure_data", "OPTIMIZER_SUFFIX", "plot_curves", "Predictor", "train",
           "Trainer", "use_mixed_precision", "VAL_IN_MEMORY", "val_labels", "validation_set", "ValInputs",
           "WEIGHTS_SUFFIX"]

log = logging.getLogger(__name__)

# Not "*.weights.h5": tf-keras saves and loads that suffix in the Keras-3 object layout, which does not
# match between two separately built QAT models; a plain .h5 uses the by-layer-name HDF5 layout.
#: A val split larger than this keeps its inputs in a memory-mapped file (state/val-inputs.npy), not in memory.
VAL_IN_MEMORY = 4096
WEIGHTS_SUFFIX = "-weights.h5"
OPTIMIZER_SUFFIX = "-optimizer.npz"


# --------------------------------------------------------------------------- data


def ensure_data(recipe: Recipe, progress=None):
    """The recipe's prepared data: prepared (or reused, or resumed) from its sources, else opened."""
    from ..data.prepared import open_prepared

    if recipe.data.prepares:
        from ..data.prepare import prepare

        out = Path(recipe.data.dir)
        log.info("data: preparing %s from the recipe's sources (reused as is when already prepared with the "
                 "same parameters)", out)
        prepared = prepare(recipe.data.prepare_config(recipe.task), out, progress=progress)
    else:
        prepared = open_prepared(recipe.data.dir)
    check_prepared(recipe, prepared)
    return prepared


def check_prepared(recipe: Recipe, prepared) -> None:
    """The prepared data must be for the recipe's task, at its input size, with train and val images."""
    if prepared.task.name != recipe.task:
        raise RecipeError(f"data.dir {prepared.path} was prepared for task {prepared.task.name!r}, the recipe "
                          f"trains {recipe.task!r}; point data.dir (or --data-dir) at {recipe.task} data")
    if recipe.data.size and prepared.task.input.size != recipe.data.size:
        raise RecipeError(f"data.size is {recipe.data.size} but {prepared.path} holds "
                          f"{prepared.task.input.size} px images; prepare at that size or change data.size")
    for split in ("train", "val"):
        if split not in prepared.splits:
            raise DataError(f"{prepared.path} has no {split} images; training needs train and val splits "
                            "(data.split)")


# --------------------------------------------------------------------------- distribution


class Distribution:
    """The tf.distribute strategy for ``--strategy``, and whether this process writes the run."""

    def __init__(self, name: str):
        if name not in STRATEGIES:
            raise RecipeError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
        tf, _ = load()
        self.name = name
        self.is_chief = True
        if name == "multiworker":
            config = _tf_config()
            self.is_chief = _is_chief(config)
            # created before any other TF work: the collective ops are set up at creation
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
        elif name == "mirrored":
            self.strategy = tf.distribute.MirroredStrategy()
        else:
            self.strategy = tf.distribute.get_strategy()
        self.replicas = int(self.strategy.num_replicas_in_sync)
        log.info("strategy %s: %d replica(s) in sync%s", name, self.replicas,
                 "" if self.is_chief else " (this worker is not the chief: it writes no run files)")

    @property
    def distributed(self) -> bool:
        return self.name != "default"

    def shard(self, ds):
        """Shard a training dataset by batch (DATA): every worker sees its own part of each epoch."""
        tf, _ = load()
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return ds.with_options(options)


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise RecipeError("--strategy multiworker needs TF_CONFIG in the environment of every worker, e.g. "
                          "TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, "
                          "\"task\": {\"type\": \"worker\", \"index\": 0}}' (index 1 on the second machine); "
                          "see train/README.md")
    try:
        config = json.loads(raw)
        config["cluster"], config["task"]["type"], config["task"]["index"]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as exc:
        raise RecipeError(f"TF_CONFIG is not valid ({exc!r}): it needs cluster and task.type/task.index") from None
    return config


def _is_chief(config: dict) -> bool:
    task = config["task"]
    if task["type"] == "chief":
        return True
    return task["type"] == "worker" and int(task["index"]) == 0 and "chief" not in config["cluster"]


def use_mixed_precision(setting: str) -> bool:
    """``auto``: float16 compute only when a GPU is present (on CPU it is slower, not faster)."""
    tf, keras = load()
    on = setting == "on" or (setting == "auto" and bool(tf.config.list_physical_devices("GPU")))
    keras.mixed_precision.set_global_policy("mixed_float16" if on else "float32")
    return on


# --------------------------------------------------------------------------- inference helpers


class ValInputs:
    """The val split's model inputs, held as uint8 pixels and normalized batch by batch.

    Behaves like the float32 (N, S, S, C) array it stands for where training reads it: ``len``,
    ``shape`` and slices (``x[i:j]`` is normalized on the fly). Holding the pixels costs a quarter
    of the float32 array (full NIH val, ~11k images at 224 px: 0.55 GB instead of 2.2 GB), and with
    ``path`` they live in a memory-mapped file and cost no resident memory at all.
    """

    def __init__(self, pixels, spec):
        self.pixels, self.spec = pixels, spec

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def shape(self) -> tuple:
        return (len(self.pixels), self.spec.input.size, self.spec.input.size, self.spec.input.channels)

    def __getitem__(self, index):
        from ..runtime.preprocess import normalize

        return normalize(np.asarray(self.pixels[index]), self.spec)

    def __array__(self, dtype=None, copy=None):
        x = self[:]
        return x if dtype is None else x.astype(dtype)


def validation_set(prepared, recipe: Recipe, path: Path | None = None, chunk: int = 256) -> ValInputs:
    """The val split's model inputs, computed once (see :class:`ValInputs`).

    Exactly the device preprocessing (:func:`cxr_edge.runtime.preprocess.normalize` of the cached pixels),
    except that a ``train.val_photo_prob`` share of the images is turned into simulated phone photos
    (the recipe's ``augment.photo_severity``, and ``train.val_photo_scene`` or else ``augment.photo_scene``:
    the share rendered as whole photos straightened as the device does) with a numpy generator seeded from
    ``train.seed`` alone, so the same images are the same photos in every epoch, process and resume. Checkpoint selection
    then rewards robustness to photos as well as accuracy on digital films (the gate's clean
    validation set saturates at AUROC 1.0 in its first epoch: without photos nothing after it could
    be chosen). The images are read and simulated ``chunk`` at a time with one generator, which
    draws exactly as one pass over the whole split would. ``train.val_photo_copies`` appends that many
    more copies of the whole split, every image a simulated photo (each copy its own seeded generator):
    the val set is then the films *and* their photos, scored together, a steadier selection metric than a
    photo share of a few hundred images. ``path``: keep the pixels in this memory-mapped ``.npy``
    (written atomically) instead of in memory. :func:`val_labels` gives the matching labels.
    """
    from .augment import AugmentConfig, photo_batch

    t = recipe.train
    images = prepared.images("val")
    n, size = len(images), prepared.task.input.size
    shape = (n * (1 + t.val_photo_copies), size, size)
    config = rng = None
    scene = recipe.augment.photo_scene if t.val_photo_scene is None else t.val_photo_scene
    if t.val_photo_prob > 0:
        a = recipe.augment
        config = replace(AugmentConfig.off(), photo_prob=t.val_photo_prob, photo_severity=a.photo_severity,
                         photo_effects=a.photo_effects, photo_scene=scene, photo_median=a.photo_median)
        rng = np.random.default_rng([t.seed, 2 ** 20])
    every = replace(AugmentConfig.off(), photo_prob=1.0, photo_severity=recipe.augment.photo_severity,
                    photo_effects=recipe.augment.photo_effects, photo_scene=scene,
                    photo_median=recipe.augment.photo_median)

    def blocks():
        for start in range(0, n, chunk):
            yield start, np.asarray(images.take(np.arange(start, min(n, start + chunk))))

    def fill(out):
        for start, block in blocks():
            out[start:start + len(block)] = photo_batch(block, config, rng) if config is not None else block
        for copy in range(1, 1 + t.val_photo_copies):   # the films again, every one a photo
            copy_rng = np.random.default_rng([t.seed, 2 ** 20 + copy])
            for start, block in blocks():
                out[copy * n + start:copy * n + start + len(block)] = photo_batch(block, every, copy_rng)

    if path is None:
        out = np.empty(shape, np.uint8)
        fill(out)
        return ValInputs(out, prepared.task)
    with atomic_path(path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        fill(out)
        out.flush()
        del out
    return ValInputs(np.load(path, mmap_mode="r"), prepared.task)


def val_labels(prepared, recipe: Recipe, what: str = "labels") -> np.ndarray:
    """The labels (or ``what="patients"``: patient ids) of :func:`validation_set`'s images, in its order."""
    one = prepared.labels("val") if what == "labels" else prepared.patients("val")
    copies = 1 + recipe.train.val_photo_copies
    return np.tile(one, (copies, 1)) if one.ndim == 2 else np.tile(one, copies)


class Predictor:
    """Probabilities (or features) of a model over a dataset, through one cached tf.function.

    Runs outside the strategy's replica context (each worker predicts the whole split), so every
    worker computes the same validation metrics and takes the same decisions.
    """

    def __init__(self, model, *, eager: bool = False):
        tf, _ = load()
        self.model = model

        def fn(x):
            return tf.cast(model(x, training=False), tf.float32)

        self._fn = fn if eager else tf.function(fn, reduce_retracing=True)

    def __call__(self, data, batch_size: int = 64) -> np.ndarray:
        if isinstance(data, (np.ndarray, ValInputs)):
            outs = [self._fn(data[i:i + batch_size]).numpy() for i in range(0, len(data), batch_size)]
        else:
            outs = [self._fn(x).numpy() for x, _ in data]
        return np.concatenate(outs) if outs else np.zeros((0,) + tuple(self.model.output_shape[1:]), np.float32)


# --------------------------------------------------------------------------- the run


class Trainer:
    """One training run (see the module docstring); :func:`train` is the entry point."""

    MODEL_FILE = FLOAT_MODEL
    STATE_SUBDIR = STATE_DIR
    HISTORY = "history"
    METRICS = METRICS_JSON
    CURVES = CURVES_PNG
    SEED_OFFSET = 0

    def __init__(self, recipe: Recipe, run_dir: Path, *, resume: bool, strategy: str, verbose: int,
                 on_epoch=None, data_progress=None, prepared=None, run_eagerly: bool = False):
        self.recipe, self.run_dir, self.resume, self.verbose = recipe, Path(run_dir), resume, verbose
        self.on_epoch, self.run_eagerly = on_epoch, run_eagerly or recipe.train.run_eagerly
        self.stages = recipe.stages
        self.started = time.time()
        self.dist = Distribution(strategy)  # first: MultiWorkerMirroredStrategy must precede other TF work
        self.prepared = prepared if prepared is not None else ensure_data(recipe, data_progress)
        self.spec = self.prepared.task
        self.write_dir = self.run_dir if self.dist.is_chief else Path(tempfile.mkdtemp(prefix="cxr_edge_worker_"))
        self.state_dir = self.write_dir / self.STATE_SUBDIR      # where this process writes its state
        self.read_state_dir = self.run_dir / self.STATE_SUBDIR   # where a resume reads it (the chief's)
        self.state = RunState()
        self.info: dict = {}
        self.float32_twin = None

    # -- setup ---------------------------------------------------------------------------------

    def setup(self) -> bool:
        """Create or reopen the run directory. Returns False when a resumed run is already complete."""
        from .losses import make_loss, resolve_weights

        _, keras = load()
        resumed = self._open_run_dir()
        if resumed is False:
            return False
        self.state_dir.mkdir(parents=True, exist_ok=True)
        keras.utils.set_random_seed(self.recipe.train.seed + self.SEED_OFFSET + self.state.epoch)
        self.mixed = use_mixed_precision(self.recipe.train.mixed_precision)
        self.loss_weights = self._loss_weights(resolve_weights(self.spec, self.recipe.loss, self.prepared))
        self.loss_fn = make_loss(self.spec, self.loss_weights)
        self.model = self._build_model(resumed)
        self.x_val = validation_set(self.prepared, self.recipe, self._val_file())
        self.y_val = val_labels(self.prepared, self.recipe)
        self.predict = Predictor(self.model, eager=self.run_eagerly)
        if resumed:
            self._restore()
        else:
            self._start()
        self._write_run_info("running")
        return True

    def _val_file(self) -> Path | None:
        """Large val splits keep their inputs in a memory-mapped file in this worker's state folder."""
        n = len(self.prepared.table("val"))
        return self.state_dir / "val-inputs.npy" if n > VAL_IN_MEMORY else None

    def _loss_weights(self, weights):
        """The loss weights training uses (the QAT trainer's distillation swaps them)."""
        return weights

    def _build_model(self, resumed: bool):
        """The float model from the recipe, in the strategy's scope (BN statistics set when from scratch)."""
        from .model import build_model, calibrate_batchnorm

        m = self.recipe.model
        with self.dist.strategy.scope():
            model = build_model(self.spec, alpha=m.alpha, weights=m.weights, dropout=m.dropout)
        if m.weights is None and not resumed:
            x, _ = next(iter(self._dataset("train", augment=False, shuffle=True, batch_size=64)))
            calibrate_batchnorm(model, x)  # fresh BN statistics (mean 0, var 1) make activations vanish
        return model

    def _start(self) -> None:
        """Anything a fresh (not resumed) run does before its first epoch."""

    def _open_run_dir(self):
        """None for a new run, True for a resumed one, False when the resumed run has nothing left to do."""
        run_json = self.run_dir / RUN_JSON
        resolved = self.recipe.to_dict()
        if run_json.is_file():
            if not self.resume:
                raise RecipeError(f"{self.run_dir} already holds a run. Continue it with --resume, or choose "
                                  "another --out")
            stored = json.loads((self.run_dir / RECIPE_JSON).read_text())
            # [qat] is read by `cxr-edge qat`, not by training: changing it does not make a trained run stale
            changed = [k for k in _changed_keys(stored, resolved) if not k.startswith("qat.")]
            if changed:
                raise RecipeError(f"--resume: the recipe differs from the one {self.run_dir} was started with "
                                  f"(changed: {', '.join(changed[:8])}). Resume with "
                                  f"{self.run_dir / RECIPE_JSON}, or train into another --out")
            self.info = json.loads(run_json.read_text())
            state_file = self.read_state_dir / STATE_JSON
            if self.info.get("status") == "complete":
                log.info("%s is already complete; nothing to resume", self.run_dir)
                return False
            if state_file.is_file():
                self.state = RunState.from_dict(json.loads(state_file.read_text()))
                log.info("resuming %s after epoch %d (stage %d, %d epoch(s) into it)", self.run_dir,
                         self.state.epoch, self.state.stage + 1, self.state.stage_epoch)
                return True
            log.warning("%s has no resume state (killed before its first epoch ended): starting over", self.run_dir)
            self.info.pop("best", None)
            return None
        if not self.dist.is_chief:  # a worker's files go to its own temp folder; it resumes from the chief's state
            self.write_dir.mkdir(parents=True, exist_ok=True)
            state_file = self.read_state_dir / STATE_JSON
            if self.resume and state_file.is_file():
                self.state = RunState.from_dict(json.loads(state_file.read_text()))
                return True
            return None
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise RecipeError(f"--out {self.run_dir} exists and is not a run directory; choose an empty or new folder")
        if self.resume:
            log.warning("--resume: %s holds no run yet; starting a new one", self.run_dir)
        self.write_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.write_dir / RECIPE_JSON, resolved)
        self.info = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        return None

    def _dataset(self, split, *, augment: bool, shuffle: bool, batch_size: int, seed: int = 0, repeat=False):
        from .dataset import make_dataset

        return make_dataset(self.prepared, split, batch_size=batch_size, shuffle=shuffle,
                            augment=self.recipe.augment if augment else None, seed=seed, repeat=repeat,
                            drop_remainder=False)

    # -- checkpoints and state -------------------------------------------------------------------

    def _model_to_save(self):
        """The float32 model to write: under mixed precision a float32 copy of the weights."""
        if not self.mixed:
            return self.model
        from .model import build_model

        _, keras = load()
        if self.float32_twin is None:
            keras.mixed_precision.set_global_policy("float32")
            try:
                m = self.recipe.model
                self.float32_twin = build_model(self.spec, alpha=m.alpha, weights=None, dropout=m.dropout)
            finally:
                keras.mixed_precision.set_global_policy("mixed_float16")
        self.float32_twin.set_weights(self.model.get_weights())
        return self.float32_twin

    def save_best(self, entry: dict) -> str:
        path = self.write_dir / self.MODEL_FILE
        save_model_atomic(self._model_to_save(), path)
        sha = sha256_file(path)
        self.state.best = self.info["best"] = {**entry, "sha256": sha}  # run.json records the file just written
        self._write_run_info("running")
        return sha

    def save_state(self, state: RunState, optimizer=None) -> None:
        """Last-epoch weights + optimizer slots, then state.json (the commit point), then old files go."""
        stem = f"epoch-{state.epoch:04d}"
        if optimizer is not None:
            _save_weights_atomic(self.model, self.state_dir / f"{stem}{WEIGHTS_SUFFIX}")
            _save_optimizer(optimizer, self.state_dir / f"{stem}{OPTIMIZER_SUFFIX}")
            state.checkpoint = stem
        write_json_atomic(self.state_dir / STATE_JSON, state.to_dict())
        for p in self.state_dir.glob("epoch-*"):
            if not p.name.startswith(f"{state.checkpoint}-"):
                p.unlink(missing_ok=True)

    def _restore(self) -> None:
        """Weights of the last completed epoch; the best entry reconciled with float.h5 on disk."""
        stem = self.state.checkpoint
        if stem:
            self.model.load_weights(str(self.read_state_dir / f"{stem}{WEIGHTS_SUFFIX}"))
        best_file = self.run_dir / self.MODEL_FILE
        recorded = self._recorded_best()
        if best_file.is_file() and self.dist.is_chief:
            sha = sha256_file(best_file)
            if recorded.get("sha256") == sha and recorded != self.state.best:
                # float.h5 and run.json were updated after the last state commit (killed in between)
                self.state.best = dict(recorded)
            elif sha != self.state.best.get("sha256") and sha != recorded.get("sha256"):
                self.state.best = self._rescore_best(best_file, sha)
        self._set_recorded_best(self.state.best)

    def _recorded_best(self) -> dict:
        return self.info.get("best") or {}

    def _set_recorded_best(self, best: dict) -> None:
        self.info["best"] = best

    def _rescore_best(self, path: Path, sha: str) -> dict:
        """float.h5 matches no record (killed while its run.json entry was being written): measure it."""
        from ..tools.metrics import task_metrics
        from .runs import load_keras_model

        model = load_keras_model(path, qat=self.MODEL_FILE != FLOAT_MODEL)
        probs = Predictor(model)(self.x_val)
        value = task_metrics(self.spec, self.y_val, probs, n_resamples=0)["primary"]["value"]
        log.warning("float.h5 was written but not recorded before the run stopped; re-scored it: %s %.4f",
                    self.spec.primary_metric, value)
        return {"metric": self.spec.primary_metric, "value": value, "epoch": None, "stage": "recovered",
                "sha256": sha}

    def _restore_optimizer(self, optimizer, variables) -> None:
        stem = self.state.checkpoint
        path = self.read_state_dir / f"{stem}{OPTIMIZER_SUFFIX}" if stem else None
        if path is None or not path.is_file():
            return
        with self.dist.strategy.scope():
            optimizer.build(variables)
        _load_optimizer(optimizer, path)

    # -- stages --------------------------------------------------------------------------------

    def run(self):
        started_epoch = self.state.epoch
        for index, stage in enumerate(self.stages):
            if index < self.state.stage or (index == self.state.stage and self.state.stage_done):
                continue
            self.stage_info = None
            mid_stage = index == self.state.stage and self.state.stage_epoch > 0
            if not mid_stage:
                self.state.start_stage(index)
                if index > 0 and self.recipe.train.restore_best:
                    self._load_best()
            if stage.epochs > 0 and self.state.stage_epoch < stage.epochs:
                self._run_stage(index, stage)
            self._finish_stage(index, stage)
        self._finish(started_epoch)

    def _load_best(self):
        best = self.write_dir / self.MODEL_FILE
        if not best.is_file():
            best = self.run_dir / self.MODEL_FILE  # a worker resumed before its own first new best
        if best.is_file():
            self.model.load_weights(str(best))
            log.info("stage starts from the best checkpoint so far (%s %.4f, epoch %s)",
                     self.state.best.get("metric"), self.state.best.get("value") or float("nan"),
                     self.state.best.get("epoch"))

    def _optimizer(self, lr: float):
        _, keras = load()
        t = self.recipe.train
        wd = t.weight_decay or None
        if t.optimizer == "sgd":
            return keras.optimizers.SGD(learning_rate=lr, momentum=t.momentum, nesterov=True, weight_decay=wd)
        return keras.optimizers.Adam(learning_rate=lr, weight_decay=wd)

    def _run_stage(self, index: int, stage) -> None:
        from .model import set_trainable

        info = set_trainable(self.model, stage.trainable, train_bn=stage.train_bn)
        log.info("stage %d/%d %s: trainable %s, %d epoch(s) at lr %g%s", index + 1, len(self.stages),
                 stage.name, stage.trainable, stage.epochs, stage.lr,
                 " on cached features" if stage.cache_features else "")
        self.stage_info = {"name": stage.name, "trainable": stage.trainable, "cached": stage.cache_features,
                           "trainable_params": info["trainable_params"]}
        if stage.cache_features:
            self._run_cached(index, stage)
        else:
            self._run_full(index, stage)

    def _callbacks(self, stage, optimizer, predict, images_per_epoch):
        return epoch_callbacks(
            state=self.state, spec=self.spec, y_val=self.y_val, predict=predict, loss_fn=self.loss_fn,
            optimizer=optimizer, stage=stage, train_cfg=self.recipe.train,
            run_dir=self.write_dir, save_best=self.save_best,
            save_state=lambda s: self.save_state(s, optimizer), images_per_epoch=images_per_epoch,
            epochs=stage.epochs, on_epoch=self.on_epoch, history_name=self.HISTORY, **self._selection())

    def _selection(self) -> dict:
        """Extra ``epoch_callbacks`` arguments choosing what the best checkpoint follows (QAT overrides)."""
        return {}

    def _run_full(self, index: int, stage) -> None:
        from .dataset import steps_per_epoch

        t = self.recipe.train
        with self.dist.strategy.scope():
            optimizer = self._optimizer(stage.lr)
            self.model.compile(optimizer=optimizer, loss=self.loss_fn, run_eagerly=self.run_eagerly)
        if self.state.stage_epoch:
            self._restore_optimizer(optimizer, self.model.trainable_variables)
        steps = t.steps_per_epoch or steps_per_epoch(self.prepared, "train", t.batch_size)
        # seed from the stage and the epoch it starts at: a resumed stage does not replay epoch 1's order
        seed = t.seed + 7919 * index + self.state.stage_epoch
        ds = self._dataset("train", augment=True, shuffle=True, batch_size=t.batch_size, seed=seed, repeat=True)
        if self.dist.distributed:
            ds = self.dist.shard(ds)
        callback, stopper, _ = self._callbacks(stage, optimizer, lambda: self.predict(self.x_val),
                                               steps * t.batch_size)
        self.model.fit(ds, epochs=stage.epochs, initial_epoch=self.state.stage_epoch, steps_per_epoch=steps,
                       callbacks=[callback], verbose=self.verbose)

    def _run_cached(self, index: int, stage) -> None:
        from .model import head_only_model

        t = self.recipe.train
        train_x, val_x, extract = self._features(stage)
        views = len(train_x) // len(self.prepared.table("train"))
        train_y = np.tile(self.prepared.labels("train"), (views, 1))
        with self.dist.strategy.scope():
            head = head_only_model(self.model)
            optimizer = self._optimizer(stage.lr)
            head.compile(optimizer=optimizer, loss=self.loss_fn)
        if self.state.stage_epoch:
            self._restore_optimizer(optimizer, head.trainable_variables)
        head_predict = Predictor(head, eager=self.run_eagerly)
        self.stage_info["feature_extraction"] = extract
        callback, stopper, _ = self._callbacks(stage, optimizer, lambda: head_predict(val_x), len(train_x))
        if stage.fit == "probe":
            self._fit_probe(head, callback, train_x, train_y, views)
            return
        head.fit(train_x, train_y, batch_size=t.batch_size, epochs=stage.epochs,
                 initial_epoch=self.state.stage_epoch, shuffle=True, callbacks=[callback], verbose=self.verbose)

    def _fit_probe(self, head, callback, train_x, train_y, views: int) -> None:
        """``fit = "probe"``: the head becomes the L2 logistic regression on the cached features
        (:mod:`cxr_edge.training.probe`, C by patient-grouped cross-validation on train), recorded as the
        stage's one epoch, so validation, the best checkpoint and the resume state treat it as any epoch."""
        from .losses import loss_value
        from .model import HEAD, find_layer
        from .probe import fit_probe

        _, keras = load()
        callback.set_model(head)
        logs: dict = {}
        callback.on_epoch_begin(0, logs)
        groups = np.tile(self.prepared.patients("train"), views)
        probe = fit_probe(train_x, train_y, self.spec.activation, groups=groups, seed=self.recipe.train.seed)
        find_layer(self.model, HEAD).set_weights([probe.kernel, probe.bias])
        self.stage_info["probe"] = probe.describe()
        logs["loss"] = loss_value(self.loss_fn, train_y, probe.predict(train_x))
        callback.on_epoch_end(0, logs)

    def _features(self, stage):
        """Pooled features of train (``stage.views`` passes: the digital films, then augmented ones) and val,
        computed once per stage (kept in state/ for a resume)."""
        from .model import feature_extractor

        cache = self.state_dir / f"features-{stage.name}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                log.info("stage %s: pooled features reloaded from %s", stage.name, cache)
                return z["train"], z["val"], json.loads(str(z["timing"]))
        log.info("stage %s: computing the frozen backbone's pooled features of train (%d view(s): the digital films%s) "
                 "and val once", stage.name, stage.views,
                 " + augmented ones with the recipe's augmentation and photo simulation" if stage.views > 1 else "")
        extractor = Predictor(feature_extractor(self.model))
        started = time.perf_counter()
        bs = self.recipe.train.val_batch_size
        seed = self.recipe.train.seed + 7919 * self.stages.index(stage)
        train_x = np.concatenate([extractor(self._dataset("train", augment=view > 0, shuffle=False, batch_size=bs,
                                                          seed=seed + view))
                                  for view in range(stage.views)])
        val_x = extractor(self.x_val)
        seconds = time.perf_counter() - started
        timing = {"images": int(len(train_x) + len(val_x)), "views": stage.views, "seconds": round(seconds, 2),
                  "images_per_s": round((len(train_x) + len(val_x)) / max(seconds, 1e-9), 1)}
        log.info("features: %d images in %.1f s (%.1f img/s)", timing["images"], seconds, timing["images_per_s"])
        if self.dist.is_chief:
            with atomic_path(cache, suffix=".npz") as tmp:
                np.savez(tmp, train=train_x, val=val_x, timing=json.dumps(timing))
        return train_x, val_x, timing

    def _finish_stage(self, index: int, stage) -> None:
        rows = [r for r in self.state.history if r["stage"] == stage.name]
        summary = {**(self.stage_info or {"name": stage.name, "trainable": stage.trainable,
                                          "cached": stage.cache_features}),
                   "epochs_run": len(rows), "epochs_planned": stage.epochs, "lr": stage.lr,
                   "best": self.state.stage_best or None,
                   "seconds": round(sum(r.get("seconds") or 0 for r in rows), 1),
                   "train_images_per_s": _median([r.get("images_per_s") for r in rows]),
                   "early_stopped": 0 < len(rows) < stage.epochs}
        if self.dist.is_chief and self.MODEL_FILE == FLOAT_MODEL and (self.run_dir / FLOAT_MODEL).is_file():
            # the best model as it stands after this stage: after the first stage, the "frozen backbone
            # + head" baseline the later stages are measured against
            keep = self.state_dir / f"after-{stage.name}.h5"
            shutil.copyfile(self.run_dir / FLOAT_MODEL, keep)
            summary["checkpoint"] = str(keep.relative_to(self.run_dir))
        self.state.stages = [s for s in self.state.stages if s.get("name") != stage.name] + [summary]
        self.state.stage_done = True
        self.save_state(self.state)
        (self.state_dir / f"features-{stage.name}.npz").unlink(missing_ok=True)

    # -- the end -------------------------------------------------------------------------------

    def _finish(self, started_epoch: int) -> None:
        from ..tools.metrics import task_metrics

        if not (self.write_dir / self.MODEL_FILE).is_file():
            raise RecipeError("no epoch produced a usable validation metric (NaN); nothing was saved. Check the "
                              "data (both classes in val?) and the learning rates")
        self.model.load_weights(str(self.write_dir / self.MODEL_FILE))
        probs = self.predict(self.x_val)
        t = self.recipe.train
        metrics = task_metrics(self.spec, self.y_val, probs, groups=val_labels(self.prepared, self.recipe, "patients"),
                               n_resamples=1000)
        metrics.update(split="val", model=self.MODEL_FILE, best=self.state.best, val_photo_prob=t.val_photo_prob,
                       val_photo_copies=t.val_photo_copies)
        if t.val_photo_prob > 0 or t.val_photo_copies:  # the same model on the digital films alone
            clean = replace(self.recipe, train=replace(t, val_photo_prob=0.0, val_photo_copies=0))
            path = self._val_file()
            digital = self.predict(validation_set(self.prepared, clean,
                                                  path.with_name("val-digital.npy") if path else None))
            metrics["digital_only"] = task_metrics(self.spec, self.prepared.labels("val"), digital,
                                                   groups=self.prepared.patients("val"), n_resamples=1000)
        self.final_metrics = metrics
        self.x_val = None
        for name in ("val-inputs.npy", "val-digital.npy"):   # large, and rebuilt on demand: not kept with the run
            (self.state_dir / name).unlink(missing_ok=True)
        if self.dist.is_chief:
            write_json_atomic(self.run_dir / self.METRICS, metrics)
            write_history(self.run_dir, self.state.history, self.HISTORY)
            try:
                plot_curves(self.state.history, self.run_dir / self.CURVES, self.spec.primary_metric)
            except Exception as exc:  # noqa: BLE001 - a plot must never fail a finished run
                log.warning("curves.png not written: %s", exc)
        self._record_final({"primary": metrics["primary"], "accuracy": metrics["accuracy"]["value"]})
        self._write_run_info("complete")
        log.info("run complete: best %s %.4f (epoch %s, stage %s); %s", self.spec.primary_metric,
                 self.state.best.get("value") or float("nan"), self.state.best.get("epoch"),
                 self.state.best.get("stage"), self.run_dir)
        if not self.dist.is_chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)

    def _record_final(self, summary: dict) -> None:
        self.info["final_val"] = summary

    def _write_run_info(self, status: str) -> None:
        tf, _ = load()
        info = self.info
        info.update({
            "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "task": self.spec.name,
            "recipe": self.recipe.name, "input": self.spec.input.to_dict(), "alpha": self.recipe.model.alpha,
            "weights": self.recipe.model.weights, "prepared": str(self.prepared.path),
            "data_sha256": self.prepared.data_sha256,
            "split": {s: self.prepared.info["counts"][s]["images"] for s in self.prepared.splits},
            "split_params": self.prepared.info["split"].get("fractions"), "status": status,
            "best": self.state.best or info.get("best"), "epochs_done": self.state.epoch,
            "stages": self.state.stages, "loss": self.loss_weights.to_dict() if hasattr(self, "loss_weights") else None,
            "strategy": self.dist.name, "replicas": self.dist.replicas,
            "mixed_precision": getattr(self, "mixed", False),
            "wall_time_s": round(self.state.wall_time_s, 1), "toolkit_version": __version__,
            "tensorflow_version": tf.__version__, "host": socket.gethostname(),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        if status == "complete":
            info["elapsed_s"] = round(time.time() - self.started, 1)
        if self.dist.is_chief:
            write_json_atomic(self.run_dir / RUN_JSON, info)

    def interrupted(self) -> None:
        if self.info and (self.run_dir / RUN_JSON).is_file():
            self._write_run_info("interrupted")

    def execute(self, resume_command: str) -> None:
        """setup() then run(); on Ctrl-C the run is marked interrupted and says how to continue."""
        if self.setup() is False:
            return
        try:
            self.run()
        except KeyboardInterrupt:
            self.interrupted()
            log.warning("interrupted: continue with %s", resume_command)
            raise


def train(recipe: Recipe, run_dir, *, resume: bool = False, strategy: str = "default", verbose: int = 1,
          on_epoch=None, data_progress=None):
    """Train ``recipe`` into ``run_dir`` (or continue it with ``resume``); returns the :class:`~.runs.Run`.

    ``on_epoch(row)`` is called with each epoch's history row (the CLI prints it); ``verbose`` is
    Keras' progress bar setting; ``data_progress(done, total)`` reports data preparation.
    """
    log.info("%s", describe(recipe))
    trainer = Trainer(recipe, Path(run_dir), resume=resume, strategy=strategy, verbose=verbose,
                      on_epoch=on_epoch, data_progress=data_progress)
    trainer.execute(f"cxr-edge train {Path(run_dir) / RECIPE_JSON} --resume")
    return load_run(run_dir) if trainer.dist.is_chief else None


# --------------------------------------------------------------------------- helpers


def _changed_keys(a, b, prefix="") -> list[str]:
    """Dotted keys whose values differ between two resolved recipes (``source_file`` ignored)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k == "source_file" and not prefix:
                continue
            out += _changed_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(isinstance(x, dict) for x in a):
        return [k for i, (x, y) in enumerate(zip(a, b)) for k in _changed_keys(x, y, f"{prefix[:-1]}[{i}].")]
    return [] if a == b else [prefix[:-1]]


def _median(values) -> float | None:
    v = [x for x in values if finite(x) is not None]
    return round(float(np.median(v)), 1) if v else None


def _save_weights_atomic(model, path: Path) -> None:
    with atomic_path(path, suffix=".h5") as tmp:
        model.save_weights(tmp, save_format="h5")


def _optimizer_variables(optimizer) -> list:
    variables = optimizer.variables
    return list(variables() if callable(variables) else variables)


def _save_optimizer(optimizer, path: Path) -> None:
    values = {f"v{i:05d}": v.numpy() for i, v in enumerate(_optimizer_variables(optimizer))}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **values)


def _load_optimizer(optimizer, path: Path) -> None:
    variables = _optimizer_variables(optimizer)
    with np.load(path) as z:
        values = [z[k] for k in sorted(z.files)]
    if len(values) != len(variables) or any(tuple(v.shape) != a.shape for v, a in zip(variables, values)):
        log.warning("optimizer state in %s does not fit this stage's optimizer; its slots start fresh", path)
        return
    for v, a in zip(variables, values):
        v.assign(a)


def plot_curves(history: list, path: Path, primary: str) -> None:
    """Loss and the primary validation metric per epoch, stage boundaries marked (PNG, atomically)."""
    from ..errors import require

    matplotlib = require("matplotlib", "train", "the training curves plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "train loss"), ("val_loss", "val loss")):
        ax1.plot(epochs, [r.get(key) for r in history], marker=".", label=label)
    ax2.plot(epochs, [r.get("val_" + primary) for r in history], marker=".", color="C2", label=f"val {primary}")
    best = [r for r in history if r.get("best")]
    if best:
        ax2.scatter([r["epoch"] for r in best], [r.get("val_" + primary) for r in best], color="C3", zorder=3,
                    label="new best")
    for ax in (ax1, ax2):
        for i in range(1, len(history)):
            if history[i]["stage"] != history[i - 1]["stage"]:
                ax.axvline(history[i]["epoch"] - 0.5, color="grey", linestyle=":")
                ax.text(history[i]["epoch"] - 0.4, 0.02, history[i]["stage"], transform=ax.get_xaxis_transform(),
                        fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_title("loss")
    ax2.set_title(f"validation {primary}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
