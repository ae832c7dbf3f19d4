"""Task specs: the single source of truth for labels, heads, inputs and tolerances.

Training, export, evaluation, the CLI and the app all read a :class:`TaskSpec`
from here; nothing else in the code types a label list. The slot table
(:data:`SLOTS`: gate, cxr4, nih14, and which tasks fill each) is here too, so
nothing else types the list of slots.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from .errors import UnknownTaskError

__all__ = ["CLASSIFIER_SLOTS", "get_slot", "get_task", "InputSpec", "Int8Tolerance", "NIH14_LABELS", "register",
           "Slot", "SLOT_NAMES", "SLOTS", "task_names", "TaskSpec"]

NIH14_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
    "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
    "Pleural_Thickening", "Hernia",
)


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes a model input: ``x = pixel * scale + offset`` on a square canvas.

    ``channels=1`` means the model takes the grayscale film directly; the
    ImageNet backbone's first convolution is collapsed over RGB, which is
    exactly equivalent to feeding the grey image replicated to three channels.
    """

    size: int = 224
    channels: int = 1
    scale: float = 1 / 127.5
    offset: float = -1.0
    resize: str = "letterbox"  # "letterbox" keeps the aspect ratio on a black canvas; "stretch" does not
    clahe: bool = False        # contrast-limited histogram equalisation before scaling (only if trained with it)
    clahe_clip: float = 0.01   # CLAHE clip limit: the share of a tile's pixels one histogram bin may hold
    clahe_tiles: int = 8       # CLAHE tiles per side

    def __post_init__(self):
        if self.size < 16 or self.size > 2048:
            raise ValueError(f"input size {self.size} is outside 16..2048")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.resize not in ("letterbox", "stretch"):
            raise ValueError(f"resize must be 'letterbox' or 'stretch', got {self.resize!r}")
        if not 0 < self.clahe_clip <= 1:
            raise ValueError(f"clahe_clip must be in (0, 1], got {self.clahe_clip}")
        if not 1 <= self.clahe_tiles <= 64:
            raise ValueError(f"clahe_tiles must be in 1..64, got {self.clahe_tiles}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.clahe:   # the CLAHE parameters mean nothing without CLAHE; older artifacts never had them
            del d["clahe_clip"], d["clahe_tiles"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass(frozen=True)
class Int8Tolerance:
    """The largest float→int8 loss export accepts. AUROC and accuracy deltas are drops (float − int8)."""

    mean_auroc: float = 0.005
    label_auroc: float = 0.02
    accuracy: float = 0.005
    macro_f1: float = 0.02
    agreement: float = 0.98

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Int8Tolerance":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown tolerance key(s) {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**d)


@dataclass(frozen=True)
class TaskSpec:
    """Everything the toolkit needs to know about one model's task."""

    name: str
    question: str
    labels: tuple[str, ...]
    activation: str            # "sigmoid" (independent labels) or "softmax" (one of N)
    primary_metric: str        # "auroc", "macro_f1" or "mean_auroc"
    metrics: tuple[str, ...]
    input: InputSpec = field(default_factory=InputSpec)
    tolerance: Int8Tolerance = field(default_factory=Int8Tolerance)
    default_threshold: float = 0.5

    def __post_init__(self):
        if self.activation not in ("sigmoid", "softmax"):
            raise ValueError(f"{self.name}: activation must be sigmoid or softmax")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"{self.name}: duplicate labels")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def multilabel(self) -> bool:
        """True when each label is an independent yes/no (sigmoid head)."""
        return self.activation == "sigmoid"

    @property
    def loss(self) -> str:
        """The loss that matches the head activation (training may weight it)."""
        return "binary_crossentropy" if self.activation == "sigmoid" else "categorical_crossentropy"

    @property
    def family(self) -> str:
        """The pipeline slot this task fills (:data:`SLOTS`): 'gate', 'cxr4' or 'nih14'.

        Variants fill their family's slot: nih13 and nih15 the 'nih14' slot, cxr3 (no Tuberculosis, for packs
        trained on permissively licensed images only) the 'cxr4' slot. A task no slot lists is its own slot.
        """
        return next((s.name for s in SLOTS if self.name in s.tasks), self.name)

    def with_input(self, **changes) -> "TaskSpec":
        """A copy with a different input spec (a recipe may train at another size)."""
        return replace(self, input=replace(self.input, **changes))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["metrics"] = list(self.metrics)
        return d


@dataclass(frozen=True)
class Slot:
    """A place in the pipeline that at most one model of a pack fills.

    ``name`` is its key in a pack's manifest, in ``Prediction.results`` and in a prediction's JSON. The
    model in it may be any of ``tasks`` (the ``cxr4`` slot holds a cxr4 model, or the cxr3 model of a
    permissive pack: its result's ``task`` says which). ``answer`` is what the slot's result means:
    ``"gate"`` accept or reject, ``"class"`` one class of N (the top class is the answer), ``"findings"``
    independent labels (those at or above their thresholds).
    """

    name: str
    answer: str
    tasks: tuple[str, ...]


#: The one slot table, in the order the pipeline runs them: the gate first, then the classifiers.
SLOTS = (
    Slot("gate", "gate", ("gate",)),
    Slot("cxr4", "class", ("cxr4", "cxr3")),
    Slot("nih14", "findings", ("nih14", "nih13", "nih15")),
)
SLOT_NAMES = tuple(s.name for s in SLOTS)
#: the slots whose models run on an image the gate accepted
CLASSIFIER_SLOTS = tuple(s.name for s in SLOTS if s.answer != "gate")


def get_slot(name: str) -> Slot:
    """The slot called ``name``; an unknown name raises an error that lists the valid ones."""
    for s in SLOTS:
        if s.name == name:
            return s
    raise UnknownTaskError(f"unknown slot {name!r}; valid slots: {', '.join(SLOT_NAMES)}")


_REGISTRY: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add a spec to the registry (a name can be registered once)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"task {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The spec for ``name``; an unknown name raises an error that lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTaskError(
            f"unknown task {name!r}; valid tasks: {', '.join(sorted(_REGISTRY))}"
        ) from None


def task_names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(_REGISTRY)


register(TaskSpec(
    name="gate",
    question="Is this a frontal chest X-ray at all?",
    labels=("chest_xray",),
    activation="sigmoid",
    primary_metric="auroc",
    metrics=("auroc", "accuracy"),
    input=InputSpec(size=160),
))

register(TaskSpec(
    name="cxr4",
    question="COVID-19, Normal, Pneumonia or Tuberculosis?",
    labels=("COVID-19", "Normal", "Pneumonia", "Tuberculosis"),
    activation="softmax",
    primary_metric="macro_f1",
    metrics=("macro_f1", "accuracy", "auroc"),
))

register(TaskSpec(
    name="cxr3",
    question="COVID-19, Normal or Pneumonia? (no Tuberculosis: no permissively licensed TB images exist here)",
    labels=("COVID-19", "Normal", "Pneumonia"),
    activation="softmax",
    primary_metric="macro_f1",
    metrics=("macro_f1", "accuracy", "auroc"),
))

register(TaskSpec(
    name="nih14",
    question="Which of the 14 NIH ChestX-ray14 findings are present?",
    labels=NIH14_LABELS,
    activation="sigmoid",
    primary_metric="mean_auroc",
    metrics=("mean_auroc", "auroc", "f1"),
))

register(TaskSpec(
    name="nih13",
    question="Which of the 13 NIH ChestX-ray14 findings (no Pleural_Thickening) are present?",
    labels=tuple(lbl for lbl in NIH14_LABELS if lbl != "Pleural_Thickening"),
    activation="sigmoid",
    primary_metric="mean_auroc",
    metrics=("mean_auroc", "auroc", "f1"),
))

register(TaskSpec(
    name="nih15",
    question="Which of the 14 NIH ChestX-ray14 findings are present, and is there no finding at all?",
    labels=(*NIH14_LABELS, "No Finding"),   # the NIH notebooks' 15-output variant: No Finding as a 15th sigmoid
    activation="sigmoid",
    primary_metric="mean_auroc",
    metrics=("mean_auroc", "auroc", "f1"),
))
