"""Patient-level, label-stratified, seeded splits (numpy only).

The unit of splitting is a *group*: all images of one patient, merged with
every other patient that shares a duplicate image (known duplicates from
``duplicates.csv`` and exact duplicates found while caching), so no patient
and no duplicated image is in two splits.

Groups are assigned with iterative stratification (Sechidis, Tsoumakas &
Vlahavas, "On the stratification of multi-label data", ECML PKDD 2011),
generalized to groups: each group carries its positive-image count per label
and its image count, and the desired counts are in images. Labels are taken
rarest first, so a label with 12 patients (Hernia) still reaches every split
when there are at least as many groups as splits. An extra "no label"
column keeps the share of label-free images (No Finding, gate negatives)
even too. Every tie is broken by a seeded generator over groups sorted by
id, so the same inputs and seed give the same split, byte for byte.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import DataError

__all__ = ["assign_splits", "connected_groups", "group_matrix", "iterative_stratification", "sample_groups",
           "SplitConfig", "SPLITS"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    """How to split: fractions (train, val, test), seed, official test list, patient sampling."""

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    official_test: bool = False    # test = the official test list; train/val split the rest in the ratio given
    sample_fraction: float = 1.0   # keep this fraction of patients (label distribution preserved)

    def __post_init__(self):
        f = tuple(float(x) for x in self.fractions)
        if len(f) != 3 or any(x < 0 for x in f) or abs(sum(f) - 1) > 1e-6 or f[0] <= 0:
            raise DataError(f"split fractions must be three non-negative numbers (train, val, test) summing to 1 "
                            f"with train > 0, e.g. 0.8,0.1,0.1; got {','.join(map(str, self.fractions))}.")
        if not self.official_test and f[2] == 0:
            raise DataError("the test fraction is 0: give a test fraction > 0, or --official-test.")
        if not 0 < self.sample_fraction <= 1:
            raise DataError(f"--fraction must be in (0, 1], got {self.sample_fraction}.")
        object.__setattr__(self, "fractions", f)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        return d


# --------------------------------------------------------------------------- stratification


def iterative_stratification(counts: np.ndarray, fractions, rng: np.random.Generator,
                             weights: np.ndarray | None = None) -> np.ndarray:
    """Assign each row (a group) to a subset so every label's share follows ``fractions``.

    ``counts`` (n, L): positives per label in each group (0/1 rows for single
    images). ``weights`` (n,): images per group (default 1). Returns (n,) subset
    indices. Sechidis et al. 2011, Algorithm 1, with desired counts in images.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n, n_labels = counts.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    r = np.asarray(fractions, dtype=np.float64)
    desired_total = w.sum() * r                                  # (K,)
    desired = r[:, None] * counts.sum(0)[None, :]                # (K, L)
    assign = np.full(n, -1, dtype=np.int64)
    has = counts > 0
    open_rows = np.ones(n, dtype=bool)
    active = r > 0
    while True:
        remaining = has[open_rows].sum(0)
        if not remaining.any():
            break
        # the label with the fewest open groups first (ties: lowest label index, deterministic)
        label = int(np.argmin(np.where(remaining > 0, remaining, np.iinfo(np.int64).max)))
        rows = np.flatnonzero(open_rows & has[:, label])
        for i in rows[rng.permutation(len(rows))]:
            k = _pick(desired[:, label], desired_total, active, rng)
            assign[i] = k
            desired[k] -= counts[i]
            desired_total[k] -= w[i]
        open_rows[rows] = False
    for i in np.flatnonzero(open_rows)[rng.permutation(int(open_rows.sum()))]:  # groups with no label at all
        k = _pick(desired_total, desired_total, active, rng)
        assign[i] = k
        desired_total[k] -= w[i]
    return assign


def _pick(primary: np.ndarray, secondary: np.ndarray, active: np.ndarray, rng) -> int:
    """The subset with the largest desired count; ties by the larger total, then at random."""
    p = np.where(active, primary, -np.inf)
    cands = np.flatnonzero(p == p.max())
    if len(cands) > 1:
        s = secondary[cands]
        cands = cands[s == s.max()]
    return int(cands[0] if len(cands) == 1 else cands[rng.integers(len(cands))])


# --------------------------------------------------------------------------- groups


def connected_groups(keys: list[str], links: list[list[int]]) -> np.ndarray:
    """Group id per item: items with the same key, or listed together in ``links``, share a group.

    Group ids are numbered by each group's smallest key, so they do not depend on input order.
    """
    n = len(keys)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k in first:
            union(first[k], i)
        else:
            first[k] = i
    for link in links:
        for j in link[1:]:
            union(link[0], j)
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    smallest: dict[int, str] = {}
    for i, root in enumerate(roots):
        if root not in smallest or keys[i] < smallest[root]:
            smallest[root] = keys[i]
    order = sorted(smallest, key=lambda root: smallest[root])
    renum = {root: g for g, root in enumerate(order)}
    return np.array([renum[root] for root in roots], dtype=np.int64)


def group_matrix(groups: np.ndarray, labels: np.ndarray, extra: np.ndarray | None = None):
    """Per-group positive counts (labels + a 'no label' column + extra columns) and image counts."""
    labels = np.asarray(labels, dtype=np.float64)
    cols = [labels, (labels.sum(1) == 0)[:, None].astype(np.float64)]
    if extra is not None:
        cols.append(np.asarray(extra, dtype=np.float64).reshape(len(labels), -1))
    m = np.concatenate(cols, axis=1)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    counts = np.zeros((n_groups, m.shape[1]))
    np.add.at(counts, groups, m)
    sizes = np.bincount(groups, minlength=n_groups).astype(np.float64)
    return counts, sizes


# --------------------------------------------------------------------------- sampling and splitting


def sample_groups(groups: np.ndarray, labels: np.ndarray, fraction: float, seed: int,
                  extra: np.ndarray | None = None) -> np.ndarray:
    """A boolean mask keeping ``fraction`` of the groups (whole patients), label distribution preserved."""
    if fraction >= 1:
        return np.ones(len(groups), dtype=bool)
    counts, sizes = group_matrix(groups, labels, extra)
    keep = iterative_stratification(counts, (fraction, 1 - fraction), np.random.default_rng([seed, 1]), sizes) == 0
    return keep[groups]


def assign_splits(groups: np.ndarray, labels: np.ndarray, config: SplitConfig,
                  official: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Split index (0 train, 1 val, 2 test) per image, and a description of how.

    ``official`` (n,) holds 'test' / 'train_val' / '' per image; with
    ``config.official_test`` a group with an official test image goes to
    test, a group with only train_val images to train/val, and groups with no
    official assignment are split three ways by the fractions.
    """
    n = len(groups)
    counts, sizes = group_matrix(groups, labels)
    n_groups = len(sizes)
    rng = np.random.default_rng([config.seed, 2])
    out = np.full(n_groups, -1, dtype=np.int64)
    info: dict = {"groups": n_groups, "method": "iterative stratification (Sechidis et al. 2011) over patient groups"}
    free = np.ones(n_groups, dtype=bool)
    if config.official_test:
        if official is None or not any(official):
            raise DataError("--official-test was given, but no source has an official split (an official_split "
                            "column, NIH's test_list.txt next to the Data_Entry table, --test-list, or test/ folders).")
        off = np.asarray(official)
        g_test = np.zeros(n_groups, dtype=bool)
        g_tv = np.zeros(n_groups, dtype=bool)
        np.logical_or.at(g_test, groups, off == "test")
        np.logical_or.at(g_tv, groups, off == "train_val")
        straddle = int((g_test & g_tv).sum())
        if straddle:
            log.warning("%d patient group(s) have images in both official splits (linked by duplicates); "
                        "they go to test", straddle)
        info["groups_in_both_official_splits"] = straddle
        out[g_test] = 2
        tv = g_tv & ~g_test
        tr, va, _ = config.fractions
        ratio = (tr / (tr + va), va / (tr + va), 0.0)
        idx = np.flatnonzero(tv)
        out[idx] = iterative_stratification(counts[idx], ratio, rng, sizes[idx])
        free = ~(g_test | g_tv)
        info["official_test"] = True
        info["train_val_ratio"] = list(ratio[:2])
    idx = np.flatnonzero(free)
    if len(idx):
        out[idx] = iterative_stratification(counts[idx], config.fractions, rng, sizes[idx])
    info["groups_per_split"] = {s: int((out == k).sum()) for k, s in enumerate(SPLITS)}
    return out[groups], info
