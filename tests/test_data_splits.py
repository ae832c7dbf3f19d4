"""Patient-level iterative stratification: synthetic checks and the real NIH / 4-class manifests."""

import numpy as np
import pytest

from cxr_edge.data.sources import SourceSpec, load_sources, read_duplicate_groups
from cxr_edge.data.splits import (SplitConfig, assign_splits, connected_groups, iterative_stratification,
                                  sample_groups)
from cxr_edge.errors import DataError
from cxr_edge.tasks import get_task


def test_iterative_stratification_spreads_rare_labels():
    rng = np.random.default_rng(0)
    y = (rng.random((600, 5)) < [0.4, 0.2, 0.1, 0.05, 0.01]).astype(int)
    y[:3, 4] = 1  # at least three groups carry the rarest label
    assign = iterative_stratification(y, (0.8, 0.1, 0.1), np.random.default_rng(1))
    assert set(assign) == {0, 1, 2}
    for k, frac in enumerate((0.8, 0.1, 0.1)):
        assert abs((assign == k).mean() - frac) < 0.02
        assert (y[assign == k].sum(0) > 0).all()  # every label in every subset
    share = y[assign == 0].sum(0) / y.sum(0)
    assert np.all(np.abs(share - 0.8) < 0.12)


def test_iterative_stratification_is_seeded():
    y = (np.random.default_rng(0).random((200, 4)) < 0.2).astype(int)
    a = iterative_stratification(y, (0.7, 0.15, 0.15), np.random.default_rng(5))
    b = iterative_stratification(y, (0.7, 0.15, 0.15), np.random.default_rng(5))
    c = iterative_stratification(y, (0.7, 0.15, 0.15), np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_connected_groups_merge_patients_and_duplicates_order_free():
    keys = ["p2", "p1", "p2", "p3", "p4"]
    g = connected_groups(keys, [[1, 3]])  # p1 and p3 share a duplicate image
    assert g[0] == g[2] and g[1] == g[3] and len(set(g)) == 3
    assert g[1] == 0  # numbered by the group's smallest key ("p1")


def test_split_config_rejects_bad_fractions():
    with pytest.raises(DataError, match="fractions"):
        SplitConfig(fractions=(0.5, 0.2, 0.2))
    with pytest.raises(DataError, match="fraction"):
        SplitConfig(sample_fraction=0)


@pytest.fixture(scope="module")
def nih(shared_data):
    loaded = load_sources(get_task("nih14"), [SourceSpec(str(shared_data / "nih_cxr14/manifest.csv"))])
    recs = loaded.records
    pos = {r.path: i for i, r in enumerate(recs)}
    links = [[pos[p] for p in g if p in pos] for g in read_duplicate_groups(shared_data / "duplicates.csv")]
    links = [link for link in links if len(link) > 1]
    assert links, "the NIH duplicate pair should be among the records"
    groups = connected_groups([r.patient_id for r in recs], links)
    return recs, np.array([r.labels for r in recs]), groups, links


def _patients_cross(recs, split):
    by = {}
    for r, s in zip(recs, split):
        by.setdefault(r.patient_id, set()).add(int(s))
    return [p for p, s in by.items() if len(s) > 1]


@pytest.mark.parametrize("official", [False, True])
def test_nih_splits_patient_disjoint_with_hernia_everywhere(nih, official):
    recs, y, groups, links = nih
    official_col = np.array([r.official_split for r in recs])
    split, info = assign_splits(groups, y, SplitConfig(official_test=official), official_col)
    assert not _patients_cross(recs, split)
    for link in links:
        assert len({int(split[i]) for i in link}) == 1  # duplicates stay together
    hernia = get_task("nih14").labels.index("Hernia")
    for k in range(3):
        assert y[split == k, hernia].sum() > 0, f"no Hernia in split {k}"
    if official:
        assert np.all((official_col == "test") == (split == 2))
    else:
        assert abs((split == 0).mean() - 0.8) < 0.02


def test_nih_sampling_keeps_label_distribution(nih):
    recs, y, groups, _ = nih
    keep = sample_groups(groups, y, 0.25, seed=0)
    assert abs(keep.mean() - 0.25) < 0.02
    kept_patients = {r.patient_id for r, k in zip(recs, keep) if k}
    dropped_patients = {r.patient_id for r, k in zip(recs, keep) if not k}
    assert not kept_patients & dropped_patients  # whole patients only
    share = y[keep].sum(0) / y.sum(0)
    assert np.all(np.abs(share - 0.25) < 0.1)
    assert np.array_equal(keep, sample_groups(groups, y, 0.25, seed=0))


def test_cxr4_splits_stratified_and_disjoint(shared_data):
    loaded = load_sources(get_task("cxr4"), [SourceSpec(str(shared_data / "cxr4/manifest.csv"))])
    recs = loaded.records
    y = np.array([r.labels for r in recs])
    split, _ = assign_splits(connected_groups([r.patient_id for r in recs], []), y, SplitConfig(seed=3))
    assert not _patients_cross(recs, split)
    for k, frac in enumerate((0.8, 0.1, 0.1)):
        share = y[split == k].sum(0) / y.sum(0)
        assert np.all(np.abs(share - frac) < 0.03), share
