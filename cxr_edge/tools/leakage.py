"""Leakage: refuse (or, when allowed, flag) scoring a model on images it trained or was calibrated on.

A model's provenance (pack metadata ``training`` and the post-hoc calibration records, see
:mod:`cxr_edge.runtime.posthoc`) names the prepared data it used: by ``data_sha256``, by a split
fingerprint (:func:`split_fingerprint`: the same images give the same value wherever they are), or
by the prepared folder, whose image hashes are then compared. numpy only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..data.prepared import Prepared, open_prepared
from ..errors import DataError
from .split_runner import ModelUnderTest

__all__ = ["check_leakage", "split_fingerprint"]


def split_fingerprint(prepared: Prepared, split: str) -> str:
    """sha256 over the sorted file hashes of a split's images: the same images give the same value."""
    t = prepared.table(split)
    keys = sorted(t["sha256"] if "sha256" in t else t["path"])
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def _overlap(prepared: Prepared, split: str, record: dict, their_split: str) -> tuple[int | None, str]:
    """How many of ``split``'s images are in ``their_split`` of the data a record names, and how we know."""
    if record.get("data_sha256") and record["data_sha256"] == prepared.data_sha256:
        n = len(prepared.table(split)) if split == their_split else 0
        return n, "same prepared data (data_sha256)"
    if record.get("images_sha256") and their_split == record.get("split"):
        if record["images_sha256"] == split_fingerprint(prepared, split):
            return len(prepared.table(split)), "same images (split fingerprint)"
    other = record.get("prepared")
    if other and Path(other).is_dir():
        try:
            theirs = open_prepared(other).table(their_split)
        except (DataError, OSError):
            return None, f"recorded data {other} cannot be read"
        if "sha256" in theirs and "sha256" in prepared.table(split):
            mine = prepared.table(split)["sha256"]
            return int(np.isin(mine, theirs["sha256"]).sum()), f"image hashes compared with {other}"
    known = record.get("data_sha256") or record.get("prepared") or record.get("images_sha256")
    return None, "recorded data not available here" if known else "not recorded"


def check_leakage(model: ModelUnderTest, prepared: Prepared, split: str, *, allow_train_split: bool = False,
                  allow_calibration_split: bool = False, purpose: str = "evaluate") -> dict:
    """Refuse (or, when allowed, flag) a split the model trained on or was calibrated on.

    ``purpose`` ('evaluate' or 'calibrate') words the refusal.
    """
    n = len(prepared.table(split))
    out: dict = {"flags": [], "notes": []}
    train_n, how = _overlap(prepared, split, model.training, "train")
    out["training"] = {"overlap": train_n, "n": n, "how": how}
    if train_n is None:
        out["notes"].append(f"the model does not say which data it trained on ({how}; pack metadata "
                            "training.data_sha256 / training.prepared): it cannot be checked that these images "
                            "were not training images.")
    elif train_n:
        msg = (f"{train_n} of the {n} images of split {split!r} were in the model's training split ({how})")
        if not allow_train_split:
            raise DataError(f"refusing to {purpose} on training images: {msg}. The model's outputs on them are "
                            f"over-confident. Use --split val{' (or test)' if purpose == 'evaluate' else ''}; to "
                            f"{purpose} on training data anyway, pass --allow-train-split.")
        out["flags"].append(f"TRAINING DATA: {msg}; metrics are optimistic (--allow-train-split).")
    if model.training.get("data_sha256") == prepared.data_sha256 and split == "val":
        out["notes"].append("split 'val' of the training data chose the best epoch: slightly optimistic.")
    out["calibration"] = {}
    for what, record in _calibration_records(model):
        cal_n, how = _overlap(prepared, split, record.get("data", {}), record.get("data", {}).get("split", ""))
        out["calibration"][what] = {"overlap": cal_n, "n": n, "how": how, "split": record.get("data", {}).get("split")}
        if cal_n:
            msg = f"the pack's {what} was fitted on {cal_n} of these {n} images ({how})"
            if not allow_calibration_split:
                raise DataError(f"refusing to evaluate on calibration data: {msg}; its ECE and the metrics at its "
                                "thresholds would be optimistic. Calibrate on val and evaluate on test, or pass "
                                "--allow-calibration-split to evaluate anyway (the result is flagged).")
            out["flags"].append(f"CALIBRATION DATA: {msg}; ECE and thresholded metrics are optimistic "
                                "(--allow-calibration-split).")
    return out


def _calibration_records(model: ModelUnderTest):
    post = model.posthoc
    if post.get("temperature"):
        yield "temperature", post["temperature"]
    profile = (post.get("profiles") or {}).get(model.profile or "")
    if profile:
        yield f"threshold profile {model.profile!r}", profile
