"""``qat(run_dir)``: quantization-aware fine-tuning of a run's best float model into ``qat.h5``.

The float model (``float.h5``) is wrapped with tfmot's default 8-bit scheme (a layer it cannot
wrap is named in the error, as by :func:`cxr_edge.training.qat.quantize_for_training`) and
fine-tuned on the train split with the recipe's data pipeline (augmentation and photo simulation
included), every layer trainable and BatchNormalization frozen, at a low learning rate.
Depthwise kernels are fake-quantized per channel, as the converter quantizes them
(:mod:`cxr_edge.training.qat_depthwise`; ``qat.depthwise_per_channel = false`` keeps tfmot's
per-tensor scheme). The best QAT checkpoint on the task's primary validation metric is ``qat.h5``
(``qat.select = "float_agreement"``: the checkpoint whose val decisions agree most with the float
model's -- what the export check asks of int8, and with distillation the quantity being trained;
``"int8_agreement"``: the checkpoint whose int8 conversion, converted and run as export does at each
epoch's end, agrees most -- tfmot's fake quantization does not compute exactly what the converter's
integer kernels do, so the two agreements can rank the epochs differently);
run.json gets a ``qat`` entry. Resumable like training (state in ``state/qat/``).

Range calibration before fine-tuning (``qat.calibrate_batches``): tfmot starts every activation
range at [-6, 6] and moves it by an exponential moving average with decay 0.999 per training
step, so after the few hundred steps a short QAT fine-tune makes on these data sets the ranges
are still mostly the initial guess: activations larger than 6 (residual sums, logits) are
clipped, small ones get a few of the 256 levels. The QAT model then trains and is evaluated on
a model that is not what its int8 conversion will be. Before the first step, a few
training batches are run forward with the decay lowered (0 for the first batch: the ranges
become that batch's min/max; then 0.9), so fine-tuning starts from measured ranges. The
calibrated model is scored as "epoch 0" and is kept when no fine-tuning epoch beats it.

Distillation from the float model (``qat.distill``, a share in [0, 1]): each training target becomes
``(1 - distill) * label + distill * float_model(image)``, on the same augmented image, and the loss
is the plain (unweighted, unsmoothed) cross-entropy of the head. Its minimum is the float model's own
output, so the QAT model learns to decide as the validated float model does *under quantization*
rather than to fit the labels again: what the export check asks of the int8 model. (The recipe's
positive/class weights are left out on purpose: with them the minimum would sit away from the
teacher's output.) ``distill = 0`` is plain QAT on the labels with the recipe's loss.

Distillation temperature (``qat.temperature``, T >= 1; Hinton et al. 2015): the teacher's and the
student's outputs are both softened, their logits divided by T, and the loss is scaled by T^2. At
T = 1 a film the float model calls with 0.99 asks the student for little more than the right class:
most training films are such films (the float model was fitted on them), so the student learns the
float model's decisions but not how far each film is from the boundary. Softened, every film asks
the student to reproduce the float model's logit gaps, which is what keeps the val films near the
boundary on the same side.
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from ..errors import RecipeError
from .callbacks import RunState
from .recipe import StageConfig, with_qat
from .runs import QAT_MODEL, RUN_JSON, STATE_DIR, load_run, save_model_atomic, sha256_file, write_json_atomic
from .tf_env import load
from .trainer import Predictor, Trainer, ValInputs

__all__ = ["calibrate_ranges", "freeze_wrapped_batchnorm", "qat", "QAT_STATE", "QatTrainer"]

log = logging.getLogger(__name__)

QAT_STATE = f"{STATE_DIR}/qat"


@contextmanager
def _ema_decay(holder: list):
    """Make tfmot's MovingAverageQuantizer use ``holder[0]`` as EMA decay (eager calls only).

    tfmot 0.8.1 hard-codes 0.999 in ``MovingAverageQuantizer.__call__``; it calls
    ``quant_ops.MovingAvgQuantize`` through the module, so that function is swapped for the
    duration (eager execution re-runs the Python on every call, so the value applies at once).
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quantizers

    original = quantizers.quant_ops.MovingAvgQuantize

    def patched(*args, ema_decay=0.999, **kwargs):
        return original(*args, ema_decay=holder[0], **kwargs)

    quantizers.quant_ops.MovingAvgQuantize = patched
    try:
        yield
    finally:
        quantizers.quant_ops.MovingAvgQuantize = original


def calibrate_ranges(qat_model, batches, *, decay: float = 0.9) -> int:
    """Set the QAT model's activation ranges from ``batches`` (iterable of (x, y)); returns the count.

    Forward passes in training mode (BN stays in inference mode when frozen); decay 0 for the
    first batch, ``decay`` after. Weights are not changed.
    """
    holder = [0.0]
    n = 0
    try:
        context = _ema_decay(holder)
        context.__enter__()
    except (ImportError, AttributeError) as exc:  # another tfmot layout: fine-tuning alone sets the ranges
        log.warning("QAT range calibration skipped (tfmot internals changed: %s)", exc)
        return 0
    try:
        for x, _ in batches:
            qat_model(x, training=True)
            n += 1
            holder[0] = decay
    finally:
        context.__exit__(None, None, None)
    log.info("QAT activation ranges calibrated on %d batch(es)", n)
    return n


def freeze_wrapped_batchnorm(qat_model) -> int:
    """Really freeze the BatchNormalization layers tfmot wrapped; returns how many.

    ``set_trainable(..., train_bn=False)`` sets the wrapped BN layer's ``trainable`` (so it
    normalises with its moving statistics), but tfmot's QuantizeWrapperV2 copied the layer's
    gamma and beta into its own trainable list when it was built: they would still train, and
    the wrapper would list them twice (once as its own, once as the frozen layer's), which HDF5
    saving refuses ("name already exists"). Dropping them from the wrapper's own list leaves
    each weight listed once, as the frozen layer's, in the order a reloaded model expects
    (gamma, beta, moving mean, moving variance).
    """
    _, keras = load()
    n = 0
    for layer in qat_model.layers:
        inner = getattr(layer, "layer", None)
        if isinstance(inner, keras.layers.BatchNormalization) and not inner.trainable:
            own = [w for w in layer._trainable_weights if not any(w is v for v in inner.weights)]
            if len(own) != len(layer._trainable_weights):
                layer._trainable_weights = own
                n += 1
    return n


class QatTrainer(Trainer):
    """A one-stage :class:`Trainer` on the QAT-wrapped best float model (see the module docstring)."""

    MODEL_FILE = QAT_MODEL
    STATE_SUBDIR = QAT_STATE
    HISTORY = "qat_history"
    METRICS = "qat_metrics.json"
    CURVES = "qat_curves.png"
    SEED_OFFSET = 104729

    def __init__(self, run, recipe, *, resume: bool, restart: bool, strategy: str, verbose: int,
                 on_epoch=None, run_eagerly: bool = False):
        self.run_obj, self.restart = run, restart
        super().__init__(recipe, run.path, resume=resume, strategy=strategy, verbose=verbose, on_epoch=on_epoch,
                         prepared=run.prepared(), run_eagerly=run_eagerly)
        q = recipe.qat
        self.stages = (StageConfig(name="qat", trainable="all", epochs=q.epochs, lr=q.lr, train_bn=False,
                                   schedule=q.schedule, early_stopping=q.early_stopping),)
        self.recipe = replace(recipe, train=replace(recipe.train, batch_size=q.batch_size or recipe.train.batch_size,
                                                    restore_best=False, mixed_precision="off"))

    def _open_run_dir(self):
        self.info = dict(self.run_obj.info)
        entry = self.info.get("qat") or {}
        state_file = self.read_state_dir / "state.json"
        if self.restart:
            shutil.rmtree(self.run_dir / QAT_STATE, ignore_errors=True)
            (self.run_dir / QAT_MODEL).unlink(missing_ok=True)
            self.info.pop("qat", None)
            return None
        if entry.get("status") == "complete" and not self.resume:
            raise RecipeError(f"{self.run_dir} already has a QAT model (qat.h5, {entry.get('metric')} "
                              f"{entry.get('value')}); pass --restart to fine-tune again from float.h5")
        if state_file.is_file() or entry:
            if not self.resume:
                raise RecipeError(f"{self.run_dir} has an unfinished QAT fine-tune; continue it with --resume, or "
                                  "start again with --restart")
            if entry.get("status") == "complete":
                return False
            if state_file.is_file():
                self.state = RunState.from_dict(json.loads(state_file.read_text()))
                log.info("resuming QAT after epoch %d", self.state.epoch)
                return True
        return None

    def _loss_weights(self, weights):
        """Distillation trains on the float model's outputs with the plain cross-entropy (see the module doc)."""
        if not self.recipe.qat.distill:
            return weights
        n = self.spec.num_labels
        kind = "ce" if self.spec.activation == "softmax" else "bce"
        return replace(weights, kind=kind, w_pos=(1.0,) * n, w_neg=(1.0,) * n, label_smoothing=0.0, focal_gamma=0.0,
                       temperature=float(self.recipe.qat.temperature))

    def _dataset(self, split, *, augment: bool, shuffle: bool, batch_size: int, seed: int = 0, repeat=False):
        ds = super()._dataset(split, augment=augment, shuffle=shuffle, batch_size=batch_size, seed=seed,
                              repeat=repeat)
        share = float(self.recipe.qat.distill)
        if not share or split != "train":
            return ds
        from .losses import soften

        tf, _ = load()
        teacher = self.float_model
        activation, temperature = self.spec.activation, float(self.recipe.qat.temperature)

        def distilled(x, y):
            soft = soften(tf, teacher(x, training=False), activation, temperature)
            return x, (1.0 - share) * tf.cast(y, tf.float32) + share * soft

        return ds.map(distilled, num_parallel_calls=1)

    def _build_model(self, resumed: bool):
        """The best float model wrapped for QAT, every layer trainable, BatchNormalization frozen."""
        from .model import set_trainable
        from .qat_depthwise import quantize_for_qat

        with self.dist.strategy.scope():
            self.float_model = self.run_obj.float_model()
            model = quantize_for_qat(self.float_model, depthwise_per_channel=self.recipe.qat.depthwise_per_channel)
        set_trainable(model, "all", train_bn=False)
        freeze_wrapped_batchnorm(model)
        return model

    def _float_val_probs(self):
        """The float model's outputs on the val split as training scores it (photo share included)."""
        if getattr(self, "_float_probs", None) is None:
            self._float_probs = Predictor(self.float_model, eager=self.run_eagerly)(self.x_val)
        return self._float_probs

    def _check_inputs(self):
        """The val split's digital films through the device preprocessing: the images the export check compares
        int8 with float on (``check.split = "val"``), without the photo share of ``train.val_photo_prob``."""
        if getattr(self, "_x_check", None) is None:
            # uint8 pixels normalized batch by batch, as the val set is: the full NIH val as float32 is 2.2 GB
            self._x_check = ValInputs(self.prepared.images("val"), self.spec)
            self._float_check = Predictor(self.float_model, eager=self.run_eagerly)(self._x_check)
        return self._x_check, self._float_check

    def check_agreement(self) -> float:
        """Decision agreement of the model being fine-tuned with the float model on the export check's images."""
        from ..tools.metrics import agreement

        x, reference = self._check_inputs()
        return float(agreement(self.spec, self.predict(x), reference)["agreement"])

    def int8_check_agreement(self) -> float:
        """Decision agreement with the float model, on the export check's images, of the model being fine-tuned
        converted to int8 and run as export runs it (the policy's io dtype and per-channel setting, one image at
        a time through the pack runtime): the number the export check holds the QAT candidate to."""
        from ..tools.metrics import agreement
        from .convert import convert, output_roles
        from .export_check import default_policy_path, load_policy
        from .int8_outputs import device_model, device_outputs
        from .model import with_feature_output

        x, reference = self._check_inputs()
        pol = load_policy(default_policy_path(self.spec))
        content = convert(with_feature_output(self.model), "int8", io_dtype=pol.io_dtype, per_channel=pol.per_channel)
        probs, _ = device_outputs(device_model(content, self.spec, output_roles(content, self.spec.num_labels)), x)
        return float(agreement(self.spec, probs, reference)["agreement"])

    def _selection(self) -> dict:
        """``qat.select = "float_agreement"``: qat.h5 is the epoch whose decisions agree most with the float
        model's (ties: lower val loss) on the images the export check holds the int8 model to: the val split's
        digital films (the photo share the val metrics include is not what export checks).
        ``"int8_agreement"``: the same agreement of each epoch's int8 conversion (:meth:`int8_check_agreement`)."""
        select = self.recipe.qat.select
        if select == "float_agreement":
            return {"reference": self.check_agreement, "monitor": "val_float_agreement"}
        if select == "int8_agreement":
            return {"reference": self.int8_check_agreement, "monitor": "val_int8_agreement",
                    "reference_key": "val_int8_agreement"}
        return {}

    def _start(self) -> None:
        """Float and calibrated-QAT scores, and the calibrated model as the first candidate ("epoch 0")."""
        from ..tools.metrics import task_metrics
        from .losses import loss_value

        q = self.recipe.qat
        float_probs = self._float_val_probs()
        float_value = task_metrics(self.spec, self.y_val, float_probs, n_resamples=0)["primary"]["value"]
        n = 0
        if q.calibrate_batches:
            batches = self._dataset("train", augment=True, shuffle=True, batch_size=self.recipe.train.batch_size,
                                    seed=self.recipe.train.seed + 1, repeat=True).take(q.calibrate_batches)
            n = calibrate_ranges(self.model, batches)
        probs = self.predict(self.x_val)
        value = task_metrics(self.spec, self.y_val, probs, n_resamples=0)["primary"]["value"]
        log.info("QAT start: float %s %.4f; QAT model %s %.4f", self.spec.primary_metric, float_value,
                 "after range calibration" if n else "before fine-tuning", value)
        self.info["qat"] = {"status": "running", "float_value": float_value, "calibrated_value": value,
                            "calibrate_batches": n, "epochs": q.epochs, "lr": q.lr, "schedule": q.schedule,
                            "distill": q.distill, "temperature": q.temperature, "select": q.select,
                            "batch_size": self.recipe.train.batch_size,
                            "depthwise_per_channel": q.depthwise_per_channel}
        if q.select in ("float_agreement", "int8_agreement"):
            converted = q.select == "int8_agreement"
            agree = self.int8_check_agreement() if converted else self.check_agreement()
            log.info("QAT start: decision agreement with float on the val films %.4f%s (qat.h5 follows it)", agree,
                     " (int8 conversion)" if converted else "")
            entry = {"metric": q.select, "value": agree}
        else:
            entry = {"metric": self.spec.primary_metric, "value": value}
        entry.update(epoch=0, stage="calibrated", val_loss=loss_value(self.loss_fn, self.y_val, probs))
        entry["sha256"] = self.save_best(entry)
        self.state.best = entry

    def save_best(self, entry: dict) -> str:
        path = self.write_dir / QAT_MODEL
        save_model_atomic(self.model, path)
        sha = sha256_file(path)
        self._set_recorded_best({**entry, "sha256": sha})
        self._write_run_info("running")
        return sha

    def _recorded_best(self) -> dict:
        q = self.info.get("qat") or {}
        return {k: q[k] for k in ("metric", "value", "epoch", "stage", "sha256") if k in q}

    def _set_recorded_best(self, best: dict) -> None:
        self.info.setdefault("qat", {}).update(best)

    def _record_final(self, summary: dict) -> None:
        self.info.setdefault("qat", {})["final_val"] = summary

    def _write_run_info(self, status: str) -> None:
        q = self.info.setdefault("qat", {})
        q.update(status=status, wall_time_s=round(self.state.wall_time_s, 1), epochs_done=self.state.epoch,
                 history="qat_history.csv", model=QAT_MODEL)
        rows = self.state.history
        if rows:
            q["train_images_per_s"] = rows[-1].get("images_per_s")
        if self.dist.is_chief:
            write_json_atomic(self.run_dir / RUN_JSON, self.info)


def qat(run_dir, *, epochs: int | None = None, lr: float | None = None, batch_size: int | None = None,
        calibrate_batches: int | None = None, distill: float | None = None, temperature: float | None = None,
        select: str | None = None, resume: bool = False,
        restart: bool = False,
        strategy: str = "default", verbose: int = 1, on_epoch=None,
        run_eagerly: bool = False):
    """QAT fine-tune ``run_dir``'s best float model (see the module docstring); returns the :class:`~.runs.Run`.

    ``epochs``/``lr``/``batch_size``/``calibrate_batches``/``distill``/``temperature``/``select`` override the
    recipe's ``[qat]`` values.
    ``run_eagerly`` skips graph tracing (tests: tracing a QAT MobileNetV2 takes ~25 s, longer than a
    tiny epoch).
    """
    run = load_run(run_dir)
    if run.info.get("status") != "complete":
        raise RecipeError(f"{run.path} has not finished training (status {run.info.get('status')!r}); finish it "
                          f"with: cxr-edge train {Path(run.path) / 'recipe.json'} --resume")
    recipe = with_qat(run.recipe(), epochs=epochs, lr=lr, batch_size=batch_size, calibrate_batches=calibrate_batches,
                      distill=distill, temperature=temperature, select=select)
    trainer = QatTrainer(run, recipe, resume=resume, restart=restart, strategy=strategy, verbose=verbose,
                         on_epoch=on_epoch, run_eagerly=run_eagerly)
    trainer.execute(f"cxr-edge qat {run.path} --resume")
    return load_run(run_dir)
