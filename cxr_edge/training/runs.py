"""Run directories: what training leaves behind and every later step reads by path alone.

Layout of ``RUN_DIR``::

    run.json          what the run is and where it stands (rewritten atomically after each epoch)
    recipe.json       the recipe as resolved: every default filled in
    float.h5          the best float model so far (tf-keras HDF5, the format tfmot models also load from)
    qat.h5            the best QAT model (after ``cxr-edge qat``)
    history.csv / history.json / curves.png   per-epoch logs and plots
    metrics.json      validation metrics of the best float model (``metrics.task_metrics`` output, CIs)
    qat_history.* / qat_metrics.json / qat_curves.png   the same for the QAT fine-tune
    state/            resume state (last-epoch weights and optimizer), private to the trainer;
                      state/after-<stage>.h5: the best model when that stage ended (after the first
                      stage: the frozen-backbone + head baseline); state/qat/: the QAT resume state

``run.json`` keys: ``format`` ("cxr-edge-run"), ``format_version``, ``task``,
``input`` (InputSpec dict), ``alpha``, ``prepared`` (absolute path of the
prepared data), ``data_sha256``, ``status`` ("running", "interrupted",
"complete"), ``best`` ({metric, value, epoch, stage, val_loss, sha256}), ``qat`` (same
shape, once QAT has run, plus status, float_value, calibrated_value, epochs, lr, ...),
``wall_time_s``, ``toolkit_version``, ``created``; also ``recipe``, ``weights``, ``split``
(images per split), ``stages`` (per stage: epochs run, best, seconds, images/s, feature
extraction), ``loss`` (the resolved per-label weights), ``strategy``, ``replicas``,
``mixed_precision``, ``final_val``, ``epochs_done``.

HDF5 is used rather than ``.keras`` because tfmot's quantize wrappers do not
reload from ``.keras`` in tf-keras 2.21 (their variables are dropped), while
HDF5 round-trips both float and QAT models.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..data.sources import sha256_file  # noqa: F401 - run.json records the sha256 of float.h5 and qat.h5
from ..errors import DataError, RecipeError
from ..runtime.atomic import atomic_path, write_atomic
from ..tasks import InputSpec, TaskSpec, get_task

__all__ = ["CURVES_PNG", "FLOAT_MODEL", "HISTORY_JSON", "load_keras_model", "load_run", "METRICS_JSON", "QAT_MODEL",
           "RECIPE_JSON", "Run", "RUN_FORMAT", "RUN_FORMAT_VERSION", "RUN_JSON", "save_model_atomic", "STATE_DIR",
           "write_json_atomic"]

RUN_FORMAT = "cxr-edge-run"
RUN_FORMAT_VERSION = 1
RUN_JSON = "run.json"
FLOAT_MODEL = "float.h5"
QAT_MODEL = "qat.h5"
RECIPE_JSON = "recipe.json"
METRICS_JSON = "metrics.json"
HISTORY_JSON = "history.json"
CURVES_PNG = "curves.png"
STATE_DIR = "state"


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON (indented, keys sorted) with :func:`~cxr_edge.runtime.atomic.write_atomic`."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def save_model_atomic(model, path: Path) -> None:
    """Save a tf-keras model to HDF5 through :func:`~cxr_edge.runtime.atomic.atomic_path`, so the previous
    checkpoint survives a crash."""
    with atomic_path(path, suffix=".h5") as tmp:
        with warnings.catch_warnings():  # "HDF5 is legacy": chosen on purpose, see the module docstring
            warnings.simplefilter("ignore", UserWarning)
            model.save(tmp, save_format="h5", include_optimizer=False)


@dataclass
class Run:
    """A run directory opened for reading."""

    path: Path
    info: dict

    @property
    def task(self) -> TaskSpec:
        """The task spec with the input the run trained at."""
        spec = get_task(self.info["task"])
        inp = InputSpec.from_dict(self.info["input"])
        return spec if spec.input == inp else spec.with_input(**inp.to_dict())

    @property
    def complete(self) -> bool:
        return self.info.get("status") == "complete"

    @property
    def has_qat(self) -> bool:
        return (self.path / QAT_MODEL).is_file()

    def prepared(self):
        """The prepared data set the run trained on (verified against the recorded hash)."""
        from ..data.prepared import open_prepared

        prepared = open_prepared(self.info["prepared"])
        if self.info.get("data_sha256") and prepared.data_sha256 != self.info["data_sha256"]:
            raise DataError(
                f"{self.info['prepared']} changed since run {self.path} trained on it (data hash "
                f"{prepared.data_sha256[:12]}… vs {self.info['data_sha256'][:12]}…). Use the data the run was "
                "trained on, or train again."
            )
        return prepared

    def recipe(self):
        """The resolved recipe the run trained with (``recipe.json``), as a :class:`.recipe.Recipe`."""
        from .recipe import load_recipe

        return load_recipe(self.path / RECIPE_JSON)

    def float_model(self):
        """The best float tf-keras model (not compiled)."""
        return load_keras_model(self.path / FLOAT_MODEL, qat=False)

    def qat_model(self):
        """The QAT tf-keras model (not compiled); an error saying to run `cxr-edge qat` when it is absent."""
        if not self.has_qat:
            raise RecipeError(f"{self.path} has no QAT model yet; run: cxr-edge qat {self.path}")
        return load_keras_model(self.path / QAT_MODEL, qat=True)


def load_run(path) -> Run:
    """Open a run directory; refuses anything that is not one, with what to do."""
    path = Path(path)
    meta = path / RUN_JSON
    if not meta.is_file():
        raise RecipeError(f"{path} is not a training run (no {RUN_JSON}). Train one with: cxr-edge train RECIPE")
    try:
        info = json.loads(meta.read_text())
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{meta} is damaged ({exc}); re-run training with --resume") from exc
    if info.get("format") != RUN_FORMAT or info.get("format_version", 0) > RUN_FORMAT_VERSION:
        raise RecipeError(f"{meta} is not a run this cxr-edge understands (format {info.get('format')!r} "
                          f"v{info.get('format_version')}); upgrade cxr-edge")
    if not (path / FLOAT_MODEL).is_file():
        raise RecipeError(f"{path} has no {FLOAT_MODEL}: training has not finished an epoch. "
                          f"Continue it with: cxr-edge train {path / 'recipe.json'} --resume")
    return Run(path=path, info=info)


def load_keras_model(path: Path, *, qat: bool):
    """A tf-keras model saved by a run (``qat``: inside the QAT scopes its quantize configs need)."""
    from .tf_env import load, load_tfmot

    _, keras = load()
    try:
        if qat:
            from .qat_depthwise import custom_objects  # the per-channel depthwise QAT configs

            with load_tfmot().quantization.keras.quantize_scope(custom_objects()):
                return keras.models.load_model(path, compile=False)
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{path} cannot be loaded ({exc}); the file is damaged. Re-train or --resume.") from exc
