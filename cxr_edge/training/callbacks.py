"""Keras callbacks for a training run: validation metrics, LR schedule, best checkpoint, early
stopping, CSV/JSON logs and resumable state.

Every callback keeps what it must remember in one :class:`RunState` (plain JSON data), which
:class:`ResumeState` writes atomically at the end of every epoch together with the weights and
optimizer slots. A killed run restarts from that state and continues with the next epoch, with
the same best value, patience counters and learning rate it had.

Order matters; :func:`epoch_callbacks` builds the list in this order::

    Validation      predicts the val split, metrics.task_metrics -> logs["val_<primary>"], val_loss
    LearningRate    plateau (on the primary metric) or cosine or constant
    BestCheckpoint  float.h5 (atomically) when the primary metric improved, then run.json
    EarlyStopping   stops the stage after `patience` epochs without improvement
    HistoryLog      history.csv + history.json (atomically)
    ResumeState     state/ weights + optimizer, then state/state.json (the commit point)
    (report)        on_epoch(row): the CLI's epoch line, once the epoch is committed

The best checkpoint is written before the state that refers to it, each through a temp file
and a rename, so a kill at any moment leaves a loadable float.h5 and a consistent state.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..tools.metrics import task_metrics
from .runs import write_json_atomic
from .tf_env import load

__all__ = ["BestCheckpoint", "EarlyStopping", "epoch_callbacks", "finite", "HISTORY_FIELDS", "HistoryLog",
           "improved", "keras_callback", "LearningRate", "ResumeState", "RunState", "STATE_JSON", "Timer",
           "Validation", "write_history"]

log = logging.getLogger(__name__)

STATE_JSON = "state.json"


@dataclass
class RunState:
    """Everything a run must remember between epochs (JSON data; see :class:`ResumeState`)."""

    epoch: int = 0                      # epochs completed over all stages
    stage: int = 0                      # index of the stage in progress
    stage_epoch: int = 0                # epochs completed in that stage
    stage_done: bool = False            # that stage finished (early stop or all epochs)
    best: dict = field(default_factory=dict)       # {metric, value, epoch, stage, sha256}
    stage_best: dict = field(default_factory=dict)  # best of the stage in progress
    lr: float | None = None
    plateau: dict = field(default_factory=dict)     # {best, wait}
    stopping: dict = field(default_factory=dict)    # {best, wait}
    history: list = field(default_factory=list)
    stages: list = field(default_factory=list)      # one summary per finished stage
    wall_time_s: float = 0.0
    checkpoint: str | None = None       # state/ file stem of the last epoch's weights

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def start_stage(self, index: int) -> None:
        self.stage, self.stage_epoch, self.stage_done = index, 0, False
        self.stage_best, self.plateau, self.stopping, self.lr = {}, {}, {}, None


def improved(value, best, min_delta: float = 0.0, loss=None, best_loss=None) -> bool:
    """Higher is better for every primary metric (AUROC, macro-F1); NaN never improves.

    A tie on the metric is broken by the validation loss: a metric that saturates (the gate's
    AUROC reaches 1.0 in its first epoch) would otherwise freeze the best checkpoint, the LR
    schedule and early stopping on the first epoch that reached it.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None or value > best + min_delta:
        return True
    tie = abs(value - best) <= 1e-12
    return bool(tie and loss is not None and best_loss is not None and loss < best_loss)


class Validation:
    """Scores the model on the validation split after each epoch.

    ``predict()`` returns (N, L) probabilities for the val split; ``task_metrics`` gives the
    task's metrics (no bootstrap). Puts ``val_loss``, ``val_<primary>`` and the other headline
    metrics into the epoch logs and keeps the full metrics dict in ``self.metrics``.
    """

    def __init__(self, spec, y_val, predict, loss_fn, reference=None, reference_key="val_float_agreement"):
        self.spec, self.y_val, self.predict, self.loss_fn = spec, y_val, predict, loss_fn
        # the float model's val outputs (QAT): logs ``reference_key`` = the agreement with them; or a callable
        # that returns the agreement itself, measured on other images (or on the model's int8 conversion)
        self.reference, self.reference_key = reference, reference_key
        self.metrics: dict = {}
        self.monitor = "val_" + spec.primary_metric

    def on_epoch_end(self, epoch, logs):
        from .losses import loss_value

        probs = self.predict()
        self.metrics = task_metrics(self.spec, self.y_val, probs, n_resamples=0)
        logs["val_loss"] = loss_value(self.loss_fn, self.y_val, probs)
        for key in ("mean_auroc", "accuracy", "auroc", "macro_f1"):
            if key in self.metrics:
                value = self.metrics[key]["value"]
                logs["val_" + key] = float("nan") if value is None else float(value)
        if callable(self.reference):    # scored on other images than the val metrics (QAT: the export check's)
            logs[self.reference_key] = float(self.reference())
        elif self.reference is not None:
            from ..tools.metrics import agreement

            logs[self.reference_key] = float(agreement(self.spec, probs, self.reference)["agreement"])


class LearningRate:
    """Sets the optimizer's learning rate: ``plateau`` (x factor once ``patience`` epochs in a row did
    not improve the monitored metric, as Keras' ReduceLROnPlateau; not below ``min_lr``),
    ``cosine`` (from ``lr`` to ``min_lr``
    over the stage's epochs) or ``constant``."""

    def __init__(self, optimizer, state: RunState, *, kind: str, lr: float, epochs: int, min_lr: float,
                 factor: float, patience: int, monitor: str):
        self.optimizer, self.state, self.kind = optimizer, state, kind
        self.lr0, self.epochs, self.min_lr = lr, max(1, epochs), min(min_lr, lr)
        self.factor, self.patience, self.monitor = factor, patience, monitor

    def value_for(self, epoch: int) -> float:
        if self.kind == "cosine":
            return self.min_lr + 0.5 * (self.lr0 - self.min_lr) * (1 + math.cos(math.pi * epoch / self.epochs))
        if self.kind == "plateau" and self.state.lr is not None:
            return self.state.lr
        return self.lr0

    def on_epoch_begin(self, epoch, logs):
        lr = self.value_for(epoch)
        self.optimizer.learning_rate.assign(lr)
        self.state.lr = lr

    def on_epoch_end(self, epoch, logs):
        logs["lr"] = float(self.state.lr)
        if self.kind != "plateau":
            return
        p = self.state.plateau
        value, loss = logs.get(self.monitor), logs.get("val_loss")
        if improved(value, p.get("best"), 0.0, loss, p.get("loss")):
            p["best"], p["loss"], p["wait"] = value, loss, 0
            return
        p["wait"] = p.get("wait", 0) + 1
        if p["wait"] >= max(self.patience, 1):
            new = max(self.state.lr * self.factor, self.min_lr)
            if new < self.state.lr:
                log.info("%s did not improve for %d epoch(s): learning rate %.3g -> %.3g",
                         self.monitor, p["wait"], self.state.lr, new)
            self.state.lr, p["wait"] = new, 0


class BestCheckpoint:
    """Saves the model (``save()``) when the monitored metric beats the run's best, then records it."""

    def __init__(self, state: RunState, monitor: str, stage_name: str, save, *, min_delta: float = 0.0):
        self.state, self.monitor, self.stage_name, self.save = state, monitor, stage_name, save
        self.min_delta = min_delta

    def on_epoch_end(self, epoch, logs):
        value, loss = logs.get(self.monitor), logs.get("val_loss")
        entry = {"metric": self.monitor[4:], "value": value, "val_loss": loss, "epoch": self.state.epoch + 1,
                 "stage": self.stage_name}
        stage_best, best = self.state.stage_best, self.state.best
        if improved(value, stage_best.get("value"), 0.0, loss, stage_best.get("val_loss")):
            self.state.stage_best = dict(entry)
        if improved(value, best.get("value"), self.min_delta, loss, best.get("val_loss")):
            entry["sha256"] = self.save(entry)
            self.state.best = entry
            logs["best"] = True
            log.info("new best %s %.4f at epoch %d (%s)", entry["metric"], value, entry["epoch"], self.stage_name)


class EarlyStopping:
    """Stops the stage after ``patience`` epochs without improving the stage's best (0 = never)."""

    def __init__(self, state: RunState, monitor: str, patience: int, min_delta: float = 0.0):
        self.state, self.monitor, self.patience, self.min_delta = state, monitor, patience, min_delta
        self.model = None
        self.stopped = False

    def on_epoch_end(self, epoch, logs):
        s = self.state.stopping
        value, loss = logs.get(self.monitor), logs.get("val_loss")
        if improved(value, s.get("best"), self.min_delta, loss, s.get("loss")):
            s["best"], s["loss"], s["wait"] = value, loss, 0
            return
        s["wait"] = s.get("wait", 0) + 1
        if self.patience and s["wait"] >= self.patience:
            self.stopped = True
            if self.model is not None:
                self.model.stop_training = True
            log.info("early stopping: %s did not improve for %d epoch(s)", self.monitor, s["wait"])


HISTORY_FIELDS = ("epoch", "stage", "stage_epoch", "trainable", "cached", "lr", "loss", "val_loss",
                  "val_mean_auroc", "val_auroc", "val_macro_f1", "val_accuracy", "val_float_agreement",
                  "val_int8_agreement", "best", "seconds", "images_per_s")


class HistoryLog:
    """Appends one row per epoch to the state and rewrites history.csv / history.json atomically."""

    def __init__(self, state: RunState, run_dir: Path | None, stage_name: str, trainable: str, cached: bool,
                 on_epoch=None, name: str = "history"):
        self.state, self.run_dir, self.stage_name, self.name = state, run_dir, stage_name, name
        self.trainable, self.cached, self.on_epoch = trainable, cached, on_epoch

    def on_epoch_end(self, epoch, logs):
        self.state.epoch += 1
        self.state.stage_epoch += 1
        row = {"epoch": self.state.epoch, "stage": self.stage_name, "stage_epoch": self.state.stage_epoch,
               "trainable": self.trainable, "cached": self.cached}
        for key in HISTORY_FIELDS[5:]:
            if key in logs:
                v = logs[key]
                row[key] = bool(v) if key == "best" else round(float(v), 6) if v is not None else None
        row.setdefault("best", False)
        self.state.history.append(row)
        if self.run_dir is not None:
            write_history(self.run_dir, self.state.history, self.name)

    def report(self):
        """A part placed after :class:`ResumeState`: ``on_epoch(row)`` sees only committed epochs (a
        Ctrl-C raised from it, or while it prints, loses nothing)."""
        log_part = self

        class _Report:
            def on_epoch_end(self, epoch, logs):
                if log_part.on_epoch is not None and log_part.state.history:
                    log_part.on_epoch(log_part.state.history[-1])

        return _Report()


def write_history(run_dir: Path, history: list, name: str = "history") -> None:
    """``<name>.json`` and ``<name>.csv`` (atomically)."""
    from ..runtime.atomic import write_atomic

    write_json_atomic(run_dir / f"{name}.json", {"epochs": history})
    buf = io.StringIO()
    keys = [k for k in HISTORY_FIELDS if any(k in row for row in history)]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    write_atomic(run_dir / f"{name}.csv", buf.getvalue())


class Timer:
    """Wall time and images/s of each epoch's training part (validation excluded)."""

    def __init__(self, state: RunState, images_per_epoch: int):
        self.state, self.images = state, images_per_epoch
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs):
        seconds = time.perf_counter() - self.started
        logs["seconds"] = seconds
        logs["images_per_s"] = self.images / seconds if seconds > 0 else float("nan")

    @property
    def total(self):
        """A part placed after validation and checkpointing: the epoch's whole time goes to the logs."""
        timer = self

        class _Total:
            def on_epoch_end(self, epoch, logs):
                total = time.perf_counter() - timer.started
                timer.state.wall_time_s += total
                logs["seconds"] = total

        return _Total()


class ResumeState:
    """Saves the last epoch (``save_state()`` writes weights + optimizer) and commits state.json."""

    def __init__(self, state: RunState, save_state):
        self.state, self.save_state = state, save_state

    def on_epoch_end(self, epoch, logs):
        self.save_state(self.state)


def keras_callback(parts):
    """One tf-keras Callback that calls ``parts`` in order (the order in the module docstring)."""
    _, keras = load()

    class _Epoch(keras.callbacks.Callback):
        def set_model(self, model):
            super().set_model(model)
            for p in parts:
                if hasattr(p, "model"):
                    p.model = model

        def on_epoch_begin(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            for p in parts:
                if hasattr(p, "on_epoch_begin"):
                    p.on_epoch_begin(epoch, logs)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            for p in parts:
                if hasattr(p, "on_epoch_end"):
                    p.on_epoch_end(epoch, logs)

    return _Epoch()


def epoch_callbacks(*, state: RunState, spec, y_val, predict, loss_fn, optimizer, stage, train_cfg, run_dir,
                    save_best, save_state, images_per_epoch, epochs, on_epoch=None, history_name="history",
                    reference=None, monitor=None, reference_key="val_float_agreement"):
    """The callback chain for one stage (see the module docstring), as one Keras callback plus parts.

    ``reference``: the float model's val outputs, or a callable returning the agreement, logged as
    ``reference_key`` (QAT: ``val_float_agreement``; ``val_int8_agreement`` for the int8 conversion's);
    ``monitor``: the logged metric the best checkpoint, the plateau schedule and early stopping follow
    (default: the primary)."""
    monitor = monitor or "val_" + spec.primary_metric
    timer = Timer(state, images_per_epoch)
    stopper = EarlyStopping(state, monitor, stage.early_stopping if stage.early_stopping is not None
                            else train_cfg.early_stopping, train_cfg.min_delta)
    history = HistoryLog(state, run_dir, stage.name, stage.trainable, stage.cache_features, on_epoch, history_name)
    parts = [
        timer,
        Validation(spec, y_val, predict, loss_fn, reference, reference_key),
        LearningRate(optimizer, state, kind=stage.schedule or train_cfg.schedule, lr=stage.lr, epochs=epochs,
                     min_lr=stage.min_lr if stage.min_lr is not None else train_cfg.min_lr,
                     factor=train_cfg.plateau_factor, patience=train_cfg.plateau_patience, monitor=monitor),
        BestCheckpoint(state, monitor, stage.name, save_best, min_delta=train_cfg.min_delta),
        stopper,
        timer.total,
        history,
        ResumeState(state, save_state),
        history.report(),
    ]
    return keras_callback(parts), stopper, parts[1]


def finite(x) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None
