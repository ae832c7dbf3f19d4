"""The second OOD guard: the PPCA Mahalanobis math on Gaussians, fitting a pack, the warning in predict."""

import json
import shutil

import numpy as np
import pytest
from test_evaluate import cli, cxr4_48  # noqa: F401 (fixtures)

from cxr_edge.runtime import ood
from cxr_edge.tools import ood_fit
from cxr_edge.tools.metrics import auroc
from cxr_edge.tasks import get_task


def _gaussians(rng, n, width=40, shift=0.0, scale=1.0):
    """Two classes in a low-rank subspace plus small isotropic noise; ``shift``/``scale`` move them away."""
    basis = np.linspace(0.2, 1.0, width)[:, None] * np.eye(width)[:, :8]    # fixed 8-d signal subspace
    z = rng.normal(0, 1, (n, 8)) * scale
    classes = rng.integers(0, 2, n)
    means = np.stack([np.full(width, 0.5), np.full(width, -0.5)])
    return means[classes] + z @ basis.T + rng.normal(0, 0.05 * scale, (n, width)) + shift, classes


def test_scores_rank_out_of_distribution_features_higher():
    rng = np.random.default_rng(0)
    x, c = _gaussians(rng, 2000)
    stats = ood_fit.fit(x, c, components=8)
    held, _ = _gaussians(rng, 1000)
    stats = ood_fit.with_threshold(stats, stats.score(held), 0.99)
    fresh, _ = _gaussians(rng, 2000)
    moved, _ = _gaussians(rng, 500, shift=0.3)         # off the class means
    wide, _ = _gaussians(rng, 500, scale=2.0)          # the right means, the wrong spread
    s_in, s_moved, s_wide = stats.score(fresh), stats.score(moved), stats.score(wide)
    assert 0.6 < np.median(s_in) < 1.5                  # about 1 for typical in-distribution features
    assert 0.003 < np.mean(s_in > stats.threshold) < 0.025
    for s_out in (s_moved, s_wide):
        y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
        assert auroc(y, np.r_[s_in, s_out]) > 0.97


def test_residual_directions_count():
    """A feature that never varied in training (outside the principal subspace) raises the score."""
    rng = np.random.default_rng(1)
    x, c = _gaussians(rng, 500)
    stats = ood_fit.fit(x, c, components=8)
    probe = x[:50].copy()
    probe[:, -1] += 1.0
    assert np.all(stats.score(probe) > 5 * stats.score(x[:50]))


def test_stats_survive_the_npz_round_trip():
    rng = np.random.default_rng(2)
    x, c = _gaussians(rng, 300)
    stats = ood_fit.with_threshold(ood_fit.fit(x, c, components=8), ood_fit.fit(x, c, components=8).score(x))
    again = ood.OODStats.from_npz(stats.to_npz())
    assert again.threshold == pytest.approx(stats.threshold, rel=1e-6)
    assert np.allclose(again.score(x[:20]), stats.score(x[:20]), rtol=1e-2)   # float16 directions
    assert isinstance(stats.score(x[0]), np.floating)
    with pytest.raises(ValueError, match="width 3"):
        stats.score(np.zeros(3))


def test_classes_per_task():
    keep, cls = ood_fit.task_classes(get_task("cxr4"), np.eye(4)[[0, 3, 3, 1]])
    assert keep.all() and list(cls) == [0, 3, 3, 1]
    keep, cls = ood_fit.task_classes(get_task("gate"), np.array([[1.0], [0.0], [1.0]]))   # the gate: its CXRs only
    assert list(keep) == [True, False, True] and list(cls) == [0, 0]
    keep, cls = ood_fit.task_classes(get_task("nih14"), np.zeros((3, 14)))
    assert keep.all() and set(cls) == {0}


# --------------------------------------------------------------------------- a pack


@pytest.fixture(scope="module")
def fitted(tiny_pack, cxr4_48, tmp_path_factory):
    out = tmp_path_factory.mktemp("ood") / "pack"
    record = ood_fit.fit_pack(tiny_pack, cxr4_48.path, out=out)
    return out, record


def test_fit_writes_a_valid_copy_and_leaves_the_original(fitted, tiny_pack):
    from cxr_edge.runtime.pack import load_pack

    out, record = fitted
    pack = load_pack(out)                                   # verifies checksums and embedded metadata
    pm = pack["cxr4"]
    assert ood.OOD_MEMBER in pm.files and "head.npz" in pm.files         # the other member is kept
    assert pm.metadata.extras["ood"]["threshold"] == record["threshold"] and "head" in pm.metadata.extras
    assert record["slot"] == "cxr4" and record["fit_split"] == "train" and record["threshold_split"] == "val"
    assert record["classes"] == 4 and record["pack_bytes"] == pack.total_bytes() <= ood_fit.PACK_BUDGET_BYTES
    assert ood.OOD_MEMBER not in load_pack(tiny_pack)["cxr4"].files       # the original is untouched
    assert {s: m.sha256 for s, m in pack.models.items() if s != "cxr4"} == \
        {s: m.sha256 for s, m in load_pack(tiny_pack).models.items() if s != "cxr4"}


def test_score_ranks_non_cxr_above_cxr(fitted, cxr4_48, shared_data):
    """Even the tiny random-weight model's features tell CT/MRI/photos/documents from CXRs."""
    from cxr_edge.runtime.pipeline import Pipeline

    pipe = Pipeline(fitted[0])
    cxrs = list(cxr4_48.table("test")["path"])[:60]
    others = sorted((shared_data / "noncxr" / "images").glob("*.png"))[::4]
    scores = [pipe.predict(f).ood["cxr4"]["score"] for f in cxrs + others]
    y = np.r_[np.zeros(len(cxrs)), np.ones(len(others))]
    assert auroc(y, np.array(scores)) > 0.85


def test_unusual_images_are_flagged_even_when_the_gate_accepts(fitted, shared_data):
    from cxr_edge.runtime.pipeline import Pipeline

    pipe = Pipeline(fitted[0])
    preds = [pipe.predict(f) for f in sorted((shared_data / "noncxr" / "images").glob("*.png"))[:40]]
    flagged = [p for p in preds if p.ood["cxr4"]["unusual"]]
    assert flagged and all(p.status == "ok" and p.gate.accepted for p in flagged)   # the tiny gate accepts all
    assert all(any(w.startswith("Unusual image for this model (cxr4 OOD score") for w in p.warnings) for p in flagged)
    d = json.loads(json.dumps(flagged[0].to_dict()))
    assert d["ood"]["cxr4"]["score"] > d["ood"]["cxr4"]["threshold"]
    assert Pipeline(fitted[0], ood=False).predict(preds[0].file).ood is None


def test_ood_fit_command(cli, tiny_pack, cxr4_48, tmp_path):
    pack = shutil.copytree(tiny_pack, tmp_path / "in-place")
    result = cli("ood", "fit", pack, "--data", cxr4_48.path, "--json", "--components", "4", "--quantile", "0.95")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    assert record["components"] == 4 and record["quantile"] == 0.95 and record["pack"] == str(pack)
    again = cli("ood", "fit", pack, "--data", cxr4_48.path, "--out", pack)
    assert again.exit_code == 2 and "already exists" in again.output
    assert cli("ood", "fit", "--help").exit_code == 0
