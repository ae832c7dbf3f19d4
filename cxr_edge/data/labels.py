"""Label names as data sets spell them → a task's label vector.

Folder names and manifest cells spell classes many ways (``COVID19``,
``covid``, ``COVID-19``; ``TB``, ``Tuberculosis``; ``NORMAL``). A
:class:`LabelMapper` maps them onto ``get_task(task).labels`` through a
normalized key (lower case, letters and digits only) and a built-in alias
table that users extend with ``--alias NAME=LABEL``. Names it cannot map are
returned, never dropped silently: the caller counts them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import DataError
from ..tasks import NIH14_LABELS, TaskSpec

__all__ = ["LabelMapper", "Mapped", "NEGATIVE", "NO_FINDING", "norm_key", "split_names"]

#: The NIH "no finding" label: an extra reported column for nih13/nih14 (``--no-finding``), the 15th
#: output of nih15.
NO_FINDING = "No Finding"
#: What an alias may point at besides a task label: the gate's negative class.
NEGATIVE = "negative"

# Synonyms per canonical label (normalized keys). Only the entries for the task's own labels are used.
_SYNONYMS = {
    "COVID-19": ("covid19", "covid", "covid2019", "sarscov2", "covid19pneumonia", "coronavirus"),
    "Normal": ("normal", "healthy", "nofinding", "nofindings"),
    "Pneumonia": ("pneumonia", "bacterial", "viral", "bacterialpneumonia", "viralpneumonia",
                  "pneumoniabacterial", "pneumoniaviral", "noncovidpneumonia"),
    "Tuberculosis": ("tuberculosis", "tb", "turberculosis", "ptb"),
    "chest_xray": ("chestxray", "cxr", "xray", "positive", "positives", "pos", "1", "true", "yes"),
    NEGATIVE: ("negative", "negatives", "neg", "noncxr", "notcxr", "nonchestxray", "other", "0", "false", "no"),
    "Pleural_Thickening": ("pleuralthickening",),
    "Effusion": ("effusion", "pleuraleffusion"),
}


def norm_key(name: str) -> str:
    """The key names are compared by: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


@dataclass(frozen=True)
class Mapped:
    """One row's labels: a 0/1 tuple in task order, plus what did not map."""

    labels: tuple[int, ...]
    no_finding: bool
    unknown: tuple[str, ...]
    dropped: tuple[str, ...]  # known names that this task leaves out (Pleural_Thickening for nih13)
    negative: bool


class LabelMapper:
    """Maps label names onto a task's labels (built-in aliases + user aliases)."""

    def __init__(self, task: TaskSpec, aliases: dict[str, str] | None = None):
        self.task = task
        self.labels = task.labels
        self._index = {lbl: i for i, lbl in enumerate(task.labels)}
        table: dict[str, str] = {}
        for label in task.labels:
            table[norm_key(label)] = label
            for syn in _SYNONYMS.get(label, ()):
                table.setdefault(syn, label)
        if task.family == "nih14":
            table[norm_key(NO_FINDING)] = NO_FINDING
            for label in NIH14_LABELS:  # labels this variant drops are known, not unknown
                table.setdefault(norm_key(label), label)
        if task.name == "gate":
            for syn in _SYNONYMS[NEGATIVE]:
                table.setdefault(syn, NEGATIVE)
        valid_targets = set(task.labels) | ({NO_FINDING} if task.family == "nih14" else set()) \
            | ({NEGATIVE} if task.name == "gate" else set())
        for name, target in (aliases or {}).items():
            if target not in valid_targets:
                raise DataError(
                    f"alias {name}={target}: {target!r} is not a label of task {task.name}. "
                    f"Valid targets: {', '.join(sorted(valid_targets))}.")
            table[norm_key(name)] = target
        self._table = table

    def lookup(self, name: str) -> str | None:
        """The canonical label (or ``No Finding`` / ``negative``) for a name, or None."""
        return self._table.get(norm_key(name))

    def map_names(self, names) -> Mapped:
        """Map label names (e.g. the parts of ``Effusion|Mass``) to a 0/1 vector."""
        vec = [0] * len(self.labels)
        unknown, dropped = [], []
        no_finding = negative = False
        for raw in names:
            raw = str(raw).strip()
            if not raw:
                continue
            target = self.lookup(raw)
            if target is None:
                unknown.append(raw)
            elif target in self._index:   # a task label (No Finding is one for nih15)
                vec[self._index[target]] = 1
                no_finding = no_finding or target == NO_FINDING
            elif target == NO_FINDING:
                no_finding = True
            elif target == NEGATIVE:
                negative = True
            else:
                dropped.append(target)
        return Mapped(tuple(vec), no_finding, tuple(unknown), tuple(dropped), negative)

    def from_columns(self, row: dict, columns: dict[str, str]) -> Mapped:
        """Labels from one-hot/multi-hot columns; ``columns`` maps canonical label -> CSV column."""
        names = [label for label, col in columns.items() if _truthy(row.get(col, ""))]
        return self.map_names(names)


def split_names(cell: str) -> list[str]:
    """``Effusion|Mass`` / ``Effusion;Mass`` / ``Effusion, Mass`` → names."""
    return [p for p in re.split(r"[|;,]", cell or "") if p.strip()]


def _truthy(value) -> bool:
    v = str(value).strip().lower()
    if v in ("", "0", "0.0", "false", "no", "nan", "-1", "-1.0"):  # -1 = uncertain (CheXpert style): not positive
        return False
    return True
