"""Training recipes: one TOML (or resolved JSON) file per model, loaded, validated and resolved.

A recipe is data, not code: the task, where the data comes from and how it is split, the model
(alpha, local weights, dropout), augmentation, the loss, the optimiser and schedule, the training
stages and the QAT fine-tune. ``train/README.md`` documents every key; ``train/*.toml`` are the
shipped recipes.

:func:`load_recipe` reads and checks everything before any training starts:

* an unknown key, a value of the wrong type or an impossible value is a :class:`RecipeError`
  that names the key by its full path (``stages[1].lr``, ``data.sources[0]``, ``loss.kind``) and
  says what is valid;
* paths are relative to the recipe file (``~`` and ``$VARS`` are expanded) and must exist;
* the loss must match the task's head activation (sigmoid: ``bce``/``focal``; softmax: ``ce``).

:meth:`Recipe.to_dict` is the *resolved* recipe (every default filled in, absolute paths) that a
run stores as ``recipe.json``; it loads back through :func:`load_recipe` unchanged, so
``cxr-edge train RUN/recipe.json --resume`` works. This module imports no TensorFlow.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

from ..errors import RecipeError, UnknownTaskError
from ..tasks import TaskSpec, get_task, task_names
from .augment import AugmentConfig

__all__ = ["ALPHAS", "check_scope", "DataConfig", "describe", "HEAD_FITS", "load_recipe", "loss_defaults",
           "LOSS_KINDS", "LossConfig", "MIXED_PRECISION", "ModelConfig", "NUM_BLOCKS", "OPTIMIZERS", "parse_recipe",
           "parse_value", "QAT_SELECT", "QatConfig", "read_recipe_file", "Recipe", "RECIPE_FORMAT",
           "RECIPE_FORMAT_VERSION", "read_settings", "recipe_path", "SCHEDULES", "set_key", "setting",
           "StageConfig", "STRATEGIES", "TOP_KEYS", "TrainConfig", "with_qat"]

RECIPE_FORMAT = "cxr-edge-recipe"
RECIPE_FORMAT_VERSION = 1
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # the widths keras.applications.MobileNetV2 builds
NUM_BLOCKS = 16                            # MobileNetV2 blocks block_1 .. block_16 (model.NUM_BLOCKS)
LOSS_KINDS = {"bce": "sigmoid", "focal": "sigmoid", "ce": "softmax"}
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("plateau", "cosine", "constant")
MIXED_PRECISION = ("auto", "on", "off")
STRATEGIES = ("default", "mirrored", "multiworker")
_REQUIRED = object()


def setting(default=MISSING, *, check=None, rule: str = "", choices=None):
    """A recipe key's default and what a value must be, defined once, on the config field itself.

    :func:`read_settings` reads every such field of a section with it; ``rule`` words ``check`` in
    the error ("must be in 1..4096, got 0"). No ``default``: the key is required.
    """
    meta = {"check": check, "rule": rule, "choices": choices}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


_LR = {"check": lambda v: 0 < v <= 1, "rule": "a learning rate in (0, 1]"}


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: the prepared folder and, optionally, the ``prepare`` arguments that build it."""

    dir: str
    sources: tuple[str, ...] = ()
    positives: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    metadata: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    root: str | None = None
    test_list: str | None = None
    official_test: bool = setting(False)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = setting(0)
    fraction: float = setting(1.0, check=lambda v: 0 < v <= 1, rule="in (0, 1]")
    size: int | None = setting(None, check=lambda v: 32 <= v <= 1024, rule="a pixel size in 32..1024")
    clahe: bool = setting(False)
    clahe_clip: float = setting(0.01, check=lambda v: 0 < v <= 1, rule="in (0, 1]")
    clahe_tiles: int = setting(8, check=lambda v: 1 <= v <= 64, rule="in 1..64")
    no_finding: bool = setting(False)
    permissive_only: bool = setting(False)
    redistributable_only: bool = setting(False)
    aliases: tuple[tuple[str, str], ...] = ()
    patient_pattern: str | None = setting(None)
    license: str | None = setting(None)
    shard_size: int = setting(1024, check=lambda v: v >= 1, rule=">= 1")

    @property
    def prepares(self) -> bool:
        """True when the recipe names sources, i.e. ``train`` builds (or reuses) the prepared set."""
        return bool(self.sources or self.positives or self.negatives)

    def prepare_config(self, task: str):
        """The :class:`cxr_edge.data.prepare.PrepareConfig` these arguments describe."""
        from ..data.prepare import PrepareConfig
        from ..data.sources import SourceOptions, SourceSpec
        from ..data.splits import SplitConfig

        specs = tuple([SourceSpec(p) for p in self.sources] + [SourceSpec(p, "positive") for p in self.positives]
                      + [SourceSpec(p, "negative") for p in self.negatives])
        return PrepareConfig(
            task=task, sources=specs,
            source_options=SourceOptions(images=self.images, root=self.root, test_list=self.test_list,
                                         metadata=self.metadata, patient_pattern=self.patient_pattern,
                                         license=self.license, aliases=self.aliases),
            split=SplitConfig(fractions=self.split, seed=self.seed, official_test=self.official_test,
                              sample_fraction=self.fraction),
            size=self.size, clahe=self.clahe, clahe_clip=self.clahe_clip, clahe_tiles=self.clahe_tiles,
            no_finding=self.no_finding, duplicates=self.duplicates,
            permissive_only=self.permissive_only, redistributable_only=self.redistributable_only,
            shard_size=self.shard_size)


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: MobileNetV2 width, backbone weights (a local file or None = from scratch), dropout."""

    alpha: float = setting(1.0, check=lambda a: any(abs(a - x) < 1e-9 for x in ALPHAS),
                           rule=f"one of {', '.join(map(str, ALPHAS))} (MobileNetV2 widths)")
    weights: str | None = None
    dropout: float = setting(0.2, check=lambda v: 0 <= v < 1, rule="in [0, 1)")


@dataclass(frozen=True)
class LossConfig:
    """``[loss]``. Weights are ``"auto"`` (from the prepared train split), ``"none"`` or one number per label."""

    kind: str
    label_smoothing: float = 0.0
    class_weights: str | tuple[float, ...] = "none"
    pos_weights: str | tuple[float, ...] = "none"
    focal_gamma: float = setting(2.0, check=lambda v: 0 <= v <= 10, rule="in [0, 10]")
    weight_cap: float = setting(0.0, check=lambda v: v == 0 or v >= 1, rule="0 (no cap) or >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: what every stage shares (a stage may override schedule, early_stopping, min_lr)."""

    batch_size: int = setting(32, check=lambda v: 1 <= v <= 4096, rule="in 1..4096")
    seed: int = setting(0)
    optimizer: str = setting("adam", choices=OPTIMIZERS)
    momentum: float = setting(0.9, check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    weight_decay: float = setting(0.0, check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    schedule: str = setting("plateau", choices=SCHEDULES)
    plateau_factor: float = setting(0.3, check=lambda v: 0 < v < 1, rule="in (0, 1)")
    plateau_patience: int = setting(2, check=lambda v: v >= 0, rule=">= 0")
    min_lr: float = setting(1e-7, check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    early_stopping: int = setting(3, check=lambda v: v >= 0, rule=">= 0 (0 = off)")
    min_delta: float = setting(0.0, check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    mixed_precision: str = setting("auto", choices=MIXED_PRECISION)
    restore_best: bool = setting(True)
    steps_per_epoch: int = setting(0, check=lambda v: v >= 0, rule=">= 0 (0 = the whole split)")
    val_batch_size: int = setting(64, check=lambda v: v >= 1, rule=">= 1")
    val_photo_prob: float = setting(0.0, check=lambda v: 0 <= v <= 1, rule="a share in [0, 1]")
    # val = the films + this many seeded photo copies of each, scored together
    val_photo_copies: int = setting(0, check=lambda v: 0 <= v <= 8, rule="in 0..8")
    # the share of those val photos rendered whole and straightened (augment.photo_scene's look); None = the
    # augment section's photo_scene, so that training and selection see the same photos
    val_photo_scene: float | None = setting(None, check=lambda v: 0 <= v <= 1, rule="a share in [0, 1]")
    run_eagerly: bool = setting(False)


#: how a cached head stage fits the head: epochs of the optimizer, or the linear probe (cxr_edge.training.probe)
HEAD_FITS = ("adam", "probe")


@dataclass(frozen=True)
class StageConfig:
    """One ``[[stages]]`` entry: what trains, for how long, at which learning rate."""

    name: str
    trainable: str
    epochs: int = setting(check=lambda v: 0 <= v <= 10000, rule=">= 0")
    lr: float = setting(**_LR)
    train_bn: bool = False
    cache_features: bool = False
    # cached head stage: the digital films + (views - 1) augmented passes
    views: int = setting(1, check=lambda v: 1 <= v <= 64, rule="in 1..64")
    # cached head stage: "adam" epochs, or "probe" (one L2 logistic regression)
    fit: str = setting("adam", choices=HEAD_FITS)
    schedule: str | None = setting(None, choices=SCHEDULES)
    early_stopping: int | None = setting(None, check=lambda v: v >= 0, rule=">= 0 (0 = off)")
    min_lr: float | None = setting(None, check=lambda v: 0 <= v < 1, rule="in [0, 1)")


#: how ``cxr-edge qat`` picks the epoch that becomes qat.h5: the task's primary validation metric, or the
#: decision agreement with the float model on val (what the export check measures of the int8 model), either of
#: the QAT Keras model or of its int8 conversion (converted and run as export does, at every epoch's end)
QAT_SELECT = ("primary", "float_agreement", "int8_agreement")


@dataclass(frozen=True)
class QatConfig:
    """``[qat]``: the quantization-aware fine-tune ``cxr-edge qat`` runs on the best float model."""

    # 0: range calibration only (the calibrated QAT model is qat.h5), for a model whose PTQ already passes
    epochs: int = setting(3, check=lambda v: 0 <= v <= 1000, rule="in 0..1000 (0 = calibrate only)")
    lr: float = setting(1e-5, **_LR)
    batch_size: int | None = setting(None, check=lambda v: 1 <= v <= 4096, rule="in 1..4096")
    schedule: str = setting("cosine", choices=SCHEDULES)
    early_stopping: int = setting(0, check=lambda v: v >= 0, rule=">= 0 (0 = off)")
    calibrate_batches: int = setting(8, check=lambda v: 0 <= v <= 1000, rule="in 0..1000")
    depthwise_per_channel: bool = setting(True)
    # share of each training target taken from the float model's output
    distill: float = setting(0.0, check=lambda v: 0.0 <= v <= 1.0, rule="a share in [0, 1]")
    # distillation temperature T: teacher and student outputs softened by T (logits / T), loss times T^2
    temperature: float = setting(1.0, check=lambda v: 1.0 <= v <= 20.0, rule="in [1, 20] (1 = no softening)")
    # qat.h5 = the epoch best on: "primary" metric, "float_agreement" (QAT Keras) or "int8_agreement" (converted)
    select: str = setting("primary", choices=QAT_SELECT)


@dataclass(frozen=True)
class Recipe:
    """A validated, resolved recipe (see the module docstring)."""

    name: str
    task: str
    path: str
    data: DataConfig
    model: ModelConfig
    augment: AugmentConfig
    loss: LossConfig
    train: TrainConfig
    stages: tuple[StageConfig, ...]
    qat: QatConfig = field(default_factory=QatConfig)

    @property
    def spec(self) -> TaskSpec:
        """The task spec at the recipe's input size."""
        spec = get_task(self.task)
        return spec.with_input(size=self.data.size) if self.data.size else spec

    def to_dict(self) -> dict:
        """The resolved recipe as JSON-able data (what ``recipe.json`` holds; loads back unchanged)."""
        data = asdict(self.data)
        data["aliases"] = {k: v for k, v in self.data.aliases}
        data["split"] = list(self.data.split)
        for key in ("sources", "positives", "negatives", "images", "metadata", "duplicates"):
            data[key] = list(data[key])
        if not self.data.clahe:   # as in InputSpec: no CLAHE parameters without CLAHE (older recipe.json had none)
            for key in ("clahe", "clahe_clip", "clahe_tiles"):
                data.pop(key)
        if not self.data.prepares:  # the prepared folder is used as it is: no prepare arguments apply
            data = {"dir": self.data.dir, "size": self.data.size}
        loss = asdict(self.loss)
        for key in ("class_weights", "pos_weights"):
            loss[key] = loss[key] if isinstance(loss[key], str) else list(loss[key])
        model = asdict(self.model)
        model["weights"] = self.model.weights or "none"
        return {
            "format": RECIPE_FORMAT, "format_version": RECIPE_FORMAT_VERSION,
            "name": self.name, "task": self.task, "source_file": self.path,
            "data": _drop_none(data), "model": model, "augment": self.augment.to_dict(),
            "loss": loss, "train": _drop_none(asdict(self.train)),
            "stages": [_drop_none(asdict(s)) for s in self.stages], "qat": _drop_none(asdict(self.qat)),
        }


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


# --------------------------------------------------------------------------- reading


def read_recipe_file(path) -> dict:
    """Parse a ``.toml`` or ``.json`` recipe into a dict (no validation)."""
    path = Path(path)
    if path.is_dir() and (path / "recipe.json").is_file():
        path = path / "recipe.json"  # a run directory: its resolved recipe
    if not path.is_file():
        raise RecipeError(f"recipe {str(path)!r} does not exist. Give a recipe file such as train/cxr4.toml "
                          "(or a run directory / its recipe.json to resume)")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{path}: not valid JSON ({exc})") from exc
    toml = _toml()
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc})") from exc


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib
        return tomllib
    from ..errors import require
    return require("tomli", "train", "reading TOML recipes on Python < 3.11")


def recipe_path(path) -> Path:
    """The file :func:`load_recipe` reads for ``path`` (a run directory means its recipe.json)."""
    path = Path(path)
    return path / "recipe.json" if path.is_dir() else path


def load_recipe(path, *, overrides: dict | None = None, weights=None, data_dir=None) -> Recipe:
    """Read, validate and resolve a recipe file.

    ``overrides`` maps dotted keys (``"stages[1].epochs"``, ``"qat.lr"``) to values, applied before
    validation (as if written in the file). ``weights`` (a path or ``"none"``) and ``data_dir``
    replace ``model.weights`` / ``data.dir``; they are relative to the current directory.
    """
    path = recipe_path(path)
    raw = read_recipe_file(path)
    for key, value in (overrides or {}).items():
        set_key(raw, key, value)
    cwd = Path.cwd()
    if weights is not None:
        raw.setdefault("model", {})["weights"] = _abs_or_none(weights, cwd)
    if data_dir is not None:
        raw.setdefault("data", {})["dir"] = str((cwd / Path(data_dir).expanduser()).resolve())
    return parse_recipe(raw, path)


def _abs_or_none(value, base: Path) -> str:
    s = str(value)
    if s.strip().lower() in ("none", "imagenet"):
        return s.strip().lower()
    return str((base / Path(os.path.expandvars(s)).expanduser()).resolve())


def set_key(raw: dict, dotted: str, value) -> None:
    """Set ``a.b``, ``stages[1].lr`` or ``augment.photo_prob`` in a raw recipe dict (CLI ``--set``)."""
    node = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        name, _, index = part.partition("[")
        if index:
            try:
                k = int(index.rstrip("]"))
                seq = node[name]
                if last:
                    seq[k] = value
                    return
                node = seq[k]
            except (KeyError, ValueError, IndexError, TypeError):
                raise RecipeError(f"--set {dotted}: the recipe has no {'.'.join(parts[:i + 1])}") from None
        elif last:
            node[name] = value
        else:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {dotted}: {'.'.join(parts[:i + 1])} is not a table")


def parse_value(text: str):
    """A ``--set`` value: TOML syntax (``3``, ``1e-5``, ``true``, ``[0.8, 0.1, 0.1]``), else the plain string."""
    try:
        return _toml().loads(f"v = {text}")["v"]
    except Exception:  # noqa: BLE001 - anything that is not TOML is a string
        return text


# --------------------------------------------------------------------------- validation


class _Table:
    """One table of a recipe; every value is read through it so errors name the full key."""

    def __init__(self, raw, where: str, file: Path):
        self.where, self.file = where, file
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.fail(None, f"must be a table ([{where}]), got {type(raw).__name__}")
        self.raw = raw
        self.read: set[str] = set()

    def key(self, name) -> str:
        return f"{self.where}.{name}" if self.where else str(name)

    def fail(self, name, problem: str):
        label = self.key(name) if name is not None else self.where
        raise RecipeError(f"{self.file}: {label} {problem}")

    def has(self, name) -> bool:
        return name in self.raw

    def get(self, name, kind, default=_REQUIRED, *, check=None, rule: str = "", choices=None):
        self.read.add(name)
        if name not in self.raw:
            if default is _REQUIRED:
                self.fail(name, f"is required{': ' + rule if rule else ''}")
            return default
        value = self.raw[name]
        value = _coerce(value, kind, lambda p: self.fail(name, p))
        if choices is not None and value not in choices:
            self.fail(name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        if check is not None and not check(value):
            self.fail(name, f"must be {rule}, got {value!r}")
        return value

    def path(self, name, base: Path, *, required_file: bool = False, required_dir: bool = False,
             default=None, value=None):
        """A path relative to ``base``; checked to exist when asked."""
        raw = value if value is not None else self.get(name, str, default)
        if raw is None:
            return None
        resolved = (base / Path(os.path.expandvars(raw)).expanduser()).resolve()
        if required_file and not resolved.is_file():
            self.fail(name, f"{raw!r} does not exist (resolved to {resolved}; paths are relative to the recipe file)")
        if required_dir and not resolved.is_dir():
            self.fail(name, f"{raw!r} is not a folder (resolved to {resolved}; paths are relative to the recipe file)")
        return str(resolved)

    def paths(self, name, base: Path, *, dirs: bool = False) -> tuple[str, ...]:
        values = self.get(name, list, [])
        out = []
        for i, v in enumerate(values):
            if not isinstance(v, str):
                self.fail(f"{name}[{i}]", f"must be a path string, got {v!r}")
            resolved = (base / Path(os.path.expandvars(v)).expanduser()).resolve()
            if not (resolved.is_dir() if dirs else resolved.exists()):
                self.fail(f"{name}[{i}]", f"{v!r} does not exist (resolved to {resolved}; paths are relative "
                                          "to the recipe file)")
            out.append(str(resolved))
        return tuple(out)

    def finish(self, valid=None):
        valid = sorted(valid if valid is not None else self.read)
        unknown = sorted(set(self.raw) - set(valid))
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(str(name), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"[{self.where}]" if self.where else "the top level"
            self.fail(name, f"is not a recipe key{hint}; valid keys in {where}: {', '.join(valid)}")


def _coerce(value, kind, fail):
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(f"must be a number, got {value!r}")
        if not math.isfinite(value):
            fail(f"must be a finite number, got {value!r}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            fail(f"must be a whole number, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            fail(f"must be true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            fail(f"must be a string, got {value!r}")
        return value
    if kind is list:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, (list, tuple)):
            fail(f"must be a list, got {value!r}")
        return list(value)
    if kind is dict:
        if not isinstance(value, dict):
            fail(f"must be a table, got {value!r}")
        return value
    return value


_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def read_settings(t: _Table, cls, *names: str) -> dict:
    """``{name: value}`` of ``cls``'s fields ``names`` (all its :func:`setting` fields when none are named)
    from table ``t``: each read with the default, check, rule and choices its field carries."""
    out = {}
    for f in fields(cls):
        if "check" not in f.metadata or (names and f.name not in names):
            continue
        kind = _KINDS[str(f.type).replace(" | None", "")]
        default = _REQUIRED if f.default is MISSING else f.default
        m = f.metadata
        out[f.name] = t.get(f.name, kind, default, check=m["check"], rule=m["rule"], choices=m["choices"])
    return out


TOP_KEYS = ("format", "format_version", "name", "task", "source_file", "data", "model", "augment", "loss",
            "train", "stages", "qat")


def parse_recipe(raw: dict, path) -> Recipe:
    """Validate a raw recipe dict read from ``path`` (relative paths are relative to its folder)."""
    path = Path(path).resolve()
    base = path.parent
    top = _Table(raw, "", path)
    fmt = top.get("format", str, RECIPE_FORMAT)
    if fmt != RECIPE_FORMAT or top.get("format_version", int, 1) > RECIPE_FORMAT_VERSION:
        top.fail("format", f"is not a recipe this cxr-edge reads (format {fmt!r}); upgrade cxr-edge")
    task = top.get("task", str, rule=f"one of {', '.join(task_names())}")
    try:
        spec = get_task(task)
    except UnknownTaskError as exc:
        top.fail("task", f"{task!r} is unknown: {exc}")
    name = top.get("name", str, path.stem if path.name != "recipe.json" else task)
    if not name or "/" in name:
        top.fail("name", f"must be a non-empty name without '/', got {name!r}")
    top.get("source_file", str, None)
    data = _data(_Table(top.get("data", dict, {}), "data", path), base, name)
    model = _model(_Table(top.get("model", dict, {}), "model", path), base)
    augment = _augment(_Table(top.get("augment", dict, {}), "augment", path))
    loss = _loss(_Table(top.get("loss", dict, {}), "loss", path), spec)
    train = _train(_Table(top.get("train", dict, {}), "train", path))
    stages = _stages(top.get("stages", list, rule="a list of [[stages]] tables"), path, train, model)
    qat = _qat(_Table(top.get("qat", dict, {}), "qat", path))
    top.finish(TOP_KEYS)
    return Recipe(name=name, task=task, path=str(path), data=data, model=model, augment=augment, loss=loss,
                  train=train, stages=stages, qat=qat)


def _data(t: _Table, base: Path, name: str) -> DataConfig:
    sources = t.paths("sources", base)
    positives = t.paths("positives", base)
    negatives = t.paths("negatives", base)
    default_dir = str((base.parent / "prepared" / name).resolve())
    folder = t.path("dir", base, default=None) or default_dir
    prepares = bool(sources or positives or negatives)
    if not prepares and not (Path(folder) / "prepared.json").is_file():
        t.fail("dir", f"{folder} is not a prepared data folder, and the recipe names no data.sources / "
                      "data.positives / data.negatives to prepare it from. Give the sources (train prepares "
                      "the data there) or point data.dir (or --data-dir) at a prepared folder")
    split = t.get("split", list, [0.8, 0.1, 0.1])
    if len(split) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in split) \
            or abs(sum(split) - 1) > 1e-6 or split[0] <= 0:
        t.fail("split", f"must be [train, val, test] fractions >= 0 summing to 1 with train > 0, got {split!r}")
    if split[1] <= 0:
        t.fail("split", f"needs a validation fraction > 0 (the best checkpoint is chosen on val), got {split!r}")
    aliases = t.get("aliases", dict, {})
    for k, v in aliases.items():
        if not isinstance(v, str):
            t.fail(f"aliases.{k}", f"must be a task label string, got {v!r}")
    cfg = DataConfig(
        dir=folder, sources=sources, positives=positives, negatives=negatives,
        images=t.paths("images", base, dirs=True), metadata=t.paths("metadata", base),
        duplicates=t.paths("duplicates", base),
        root=t.path("root", base, required_dir=True) if t.has("root") else None,
        test_list=t.path("test_list", base, required_file=True) if t.has("test_list") else None,
        split=tuple(float(v) for v in split),
        aliases=tuple(sorted(aliases.items())),
        **read_settings(t, DataConfig),
    )
    t.finish([f.name for f in DataConfig.__dataclass_fields__.values()])
    if not prepares:
        _check_prepared(t, cfg)
    return cfg


def _check_prepared(t: _Table, cfg: DataConfig) -> None:
    """Without sources the data comes from data.dir as it is: the prepare arguments would be ignored."""
    ignored = [k for k in ("images", "metadata", "duplicates", "root", "test_list", "official_test",
                           "no_finding", "clahe", "clahe_clip", "clahe_tiles", "permissive_only", "redistributable_only", "aliases", "patient_pattern", "license") if t.has(k)]
    if ignored:
        t.fail(ignored[0], "is a prepare argument, but the recipe names no data.sources/positives/negatives, "
                           "so the prepared data in data.dir is used as it is. Remove it or add the sources")


def _model(t: _Table, base: Path) -> ModelConfig:
    settings = read_settings(t, ModelConfig)
    raw = t.get("weights", str, rule="a local MobileNetV2 no-top .h5 file for this alpha (the ImageNet file "
                                    "is ../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224"
                                    "_no_top.h5, alpha 1.0), or \"none\" to train from scratch (--weights none)")
    low = raw.strip().lower()
    if low == "imagenet":
        t.fail("weights", "= 'imagenet' would download from the internet, which cxr-edge never does; give a "
                          "local .h5 file or \"none\"")
    weights = None if low == "none" else t.path("weights", base, required_file=True, value=raw)
    t.finish(list(ModelConfig.__dataclass_fields__))
    return ModelConfig(weights=weights, **settings)


def _augment(t: _Table) -> AugmentConfig:
    valid = list(AugmentConfig.__dataclass_fields__)
    t.finish(valid)
    try:
        return AugmentConfig.from_dict(t.raw)
    except RecipeError as exc:
        raise RecipeError(f"{t.file}: {exc}") from None
    except TypeError as exc:
        raise RecipeError(f"{t.file}: augment: {exc}") from None


def loss_defaults(spec: TaskSpec) -> dict:
    """What the ``[loss]`` table means when a key is left out, per task (see train/README.md)."""
    if spec.activation == "softmax":
        return {"kind": "ce", "label_smoothing": 0.1, "class_weights": "auto", "pos_weights": "none"}
    if spec.family == "nih14":
        return {"kind": "bce", "label_smoothing": 0.0, "class_weights": "none", "pos_weights": "auto"}
    return {"kind": "bce", "label_smoothing": 0.0, "class_weights": "auto", "pos_weights": "none"}


def _weights_value(t: _Table, name: str, default, n: int):
    value = t.get(name, object, default)
    if isinstance(value, str):
        if value not in ("auto", "none"):
            t.fail(name, f"must be \"auto\" (from the prepared train split), \"none\" or a list of {n} numbers, "
                         f"got {value!r}")
        return value
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
        t.fail(name, f"must be \"auto\", \"none\" or a list of {n} positive numbers (one per label), got {value!r}")
    return tuple(float(v) for v in value)


def _loss(t: _Table, spec: TaskSpec) -> LossConfig:
    d = loss_defaults(spec)
    kind = t.get("kind", str, d["kind"], choices=tuple(LOSS_KINDS))
    if LOSS_KINDS[kind] != spec.activation:
        ok = [k for k, act in LOSS_KINDS.items() if act == spec.activation]
        t.fail("kind", f"= {kind!r} needs a {LOSS_KINDS[kind]} head, but task {spec.name} has a {spec.activation} "
                       f"head; use {' or '.join(map(repr, ok))}")
    smoothing = t.get("label_smoothing", float, d["label_smoothing"], check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    # a recipe that sets one of the two weightings turns the other's task default off
    class_w = _weights_value(t, "class_weights", "none" if t.has("pos_weights") else d["class_weights"],
                             spec.num_labels)
    pos_w = _weights_value(t, "pos_weights", "none" if t.has("class_weights") else d["pos_weights"],
                           spec.num_labels)
    if spec.activation == "softmax" and pos_w != "none":
        t.fail("pos_weights", "applies to sigmoid heads only; task "
                              f"{spec.name} is softmax: use loss.class_weights")
    if class_w != "none" and pos_w != "none":
        t.fail("pos_weights", "and loss.class_weights both weight the positives; set one of them to \"none\"")
    t.finish(list(LossConfig.__dataclass_fields__))
    return LossConfig(kind=kind, label_smoothing=smoothing, class_weights=class_w, pos_weights=pos_w,
                      **read_settings(t, LossConfig))


def _train(t: _Table) -> TrainConfig:
    c = TrainConfig(**read_settings(t, TrainConfig))
    t.finish(list(TrainConfig.__dataclass_fields__))
    return c


def check_scope(scope: str) -> bool:
    """True for a trainable scope :func:`cxr_edge.training.model.set_trainable` accepts."""
    if scope in ("head", "all"):
        return True
    return scope.startswith("block_") and scope[6:].isdigit() and 1 <= int(scope[6:]) <= NUM_BLOCKS


def _stages(raw: list, file: Path, train: TrainConfig, model: ModelConfig) -> tuple[StageConfig, ...]:
    if not raw:
        raise RecipeError(f"{file}: stages must list at least one [[stages]] table (epochs, lr, trainable)")
    out, names = [], set()
    for i, item in enumerate(raw):
        t = _Table(item, f"stages[{i}]", file)
        name = t.get("name", str, f"stage{i + 1}")
        if not name or name in names or "/" in name:
            t.fail("name", f"must be a unique name without '/', got {name!r}")
        names.add(name)
        trainable = t.get("trainable", str, rule="'head', 'block_N' (N in 1..16) or 'all'")
        if not check_scope(trainable):
            t.fail("trainable", f"= {trainable!r} is not a scope; valid: 'head' (backbone frozen), 'block_N' with N "
                                f"in 1..{NUM_BLOCKS} (block N onwards, e.g. 'block_13'), or 'all'")
        cache = t.get("cache_features", bool, trainable == "head")
        if cache and trainable != "head":
            t.fail("cache_features", f"= true needs trainable = 'head' (a frozen backbone); this stage trains "
                                     f"{trainable!r}")
        stage = StageConfig(
            name=name, trainable=trainable,
            # from scratch BN statistics must be learnt, except on a frozen (cached) backbone
            train_bn=t.get("train_bn", bool, model.weights is None and not cache),
            cache_features=cache,
            **read_settings(t, StageConfig),
        )
        if stage.cache_features and stage.train_bn:
            t.fail("train_bn", "= true cannot go with cache_features = true: cached features need the backbone, "
                               "BatchNormalization included, frozen")
        if not cache and (stage.views != 1 or stage.fit != "adam"):
            t.fail("views" if stage.views != 1 else "fit", "applies to a stage on cached features only "
                   "(trainable = 'head' with cache_features = true)")
        if stage.fit == "probe" and stage.epochs > 1:
            t.fail("epochs", f"= {stage.epochs}: fit = 'probe' is one closed-form fit; set epochs = 1 (0 skips "
                             "the stage)")
        if stage.min_lr is not None and stage.min_lr >= stage.lr:
            t.fail("min_lr", f"({stage.min_lr}) must be below stages[{i}].lr ({stage.lr})")
        t.finish(list(StageConfig.__dataclass_fields__))
        out.append(stage)
    if sum(s.epochs for s in out) == 0:
        raise RecipeError(f"{file}: every stage has epochs = 0; nothing would train (stages[0].epochs)")
    return tuple(out)


def _qat(t: _Table) -> QatConfig:
    c = QatConfig(**read_settings(t, QatConfig))
    t.finish(list(QatConfig.__dataclass_fields__))
    return c


def with_qat(recipe: Recipe, **changes) -> Recipe:
    """A copy with ``[qat]`` values replaced (CLI ``--epochs`` / ``--lr``), checked like the file."""
    merged = {**asdict(recipe.qat), **{k: v for k, v in changes.items() if v is not None}}
    qat = _qat(_Table(_drop_none(merged), "qat", Path(recipe.path)))
    return replace(recipe, qat=qat)


def describe(recipe: Recipe) -> str:
    """A few lines: task, data, model and the stages (for logs and the CLI)."""
    lines = [f"recipe {recipe.name} (task {recipe.task}, {recipe.spec.input.size} px, MobileNetV2 alpha "
             f"{recipe.model.alpha:g}, weights {recipe.model.weights or 'none (from scratch)'})",
             f"  data {recipe.data.dir}" + (" (prepared from the recipe's sources if needed)"
                                            if recipe.data.prepares else ""),
             f"  loss {recipe.loss.kind}, batch {recipe.train.batch_size}, {recipe.train.optimizer}, "
             f"schedule {recipe.train.schedule}, early stopping {recipe.train.early_stopping or 'off'}"]
    for i, s in enumerate(recipe.stages):
        lines.append(f"  stage {i + 1} {s.name}: {s.trainable}, {s.epochs} epoch(s) at lr {s.lr:g}"
                     + (f", cached features ({s.views} view(s), fit {s.fit})" if s.cache_features else ""))
    return "\n".join(lines)
