"""Metrics: agreement with scikit-learn (ties included), ECE, bootstrap CIs, task-level reports."""

import json
import math
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_edge.tools import metrics as m
from cxr_edge.errors import DataError
from cxr_edge.tasks import get_task


def _scores(kind, y, rng):
    """Scores that separate the classes a little, continuous or tied like real model outputs."""
    s = np.clip(rng.random(y.size) * 0.8 + 0.2 * y, 0, 1)
    if kind == "rounded":
        return np.round(s, 1)
    if kind == "uint8":  # what a uint8-output int8 model emits: k / 256, k <= 255
        return np.minimum(np.round(s * 256), 255) / 256
    return s


@pytest.mark.parametrize("kind", ["continuous", "rounded", "uint8"])
def test_ranking_metrics_match_sklearn(kind):
    rng = np.random.default_rng(1)
    for n in (7, 60, 400):
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = _scores(kind, y, rng)
        assert m.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        assert m.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
        for drop in (True, False):
            for ours, ref in zip(m.roc_curve(y, s, drop), skm.roc_curve(y, s, drop_intermediate=drop)):
                np.testing.assert_allclose(ours, ref)
        for ours, ref in zip(m.pr_curve(y, s), skm.precision_recall_curve(y, s)):
            np.testing.assert_allclose(ours, ref)


def test_ties_collapse_to_one_roc_point_and_count_half():
    fpr, tpr, thr = m.roc_curve([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5])
    assert thr.tolist() == [np.inf, 0.5]
    assert m.auroc([0, 1, 0, 1], [0.5] * 4) == 0.5
    assert m.auroc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)


def test_one_class_is_nan_not_an_error():
    assert math.isnan(m.auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(m.average_precision([0, 0], [0.1, 0.2]))
    assert np.isnan(m.roc_curve([1, 1], [0.2, 0.3])[0]).all()


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(DataError, match="0/1"):
        m.auroc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="non-finite"):
        m.auroc([0, 1], [0.1, np.nan])
    with pytest.raises(DataError, match="pair"):
        m.auroc([0, 1, 1], [0.1, 0.2])


def test_confusion_accuracy_macro_f1_match_sklearn():
    rng = np.random.default_rng(2)
    k = 4
    y = rng.integers(0, k, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, k, 300))
    np.testing.assert_array_equal(m.confusion_matrix(y, p, k), skm.confusion_matrix(y, p, labels=range(k)))
    assert m.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    assert m.macro_f1(y, p, k) == pytest.approx(skm.f1_score(y, p, average="macro"))
    # class 3 never true and never predicted, class 2 predicted but never true: zero-division -> 0
    y2, p2 = np.array([0, 1, 1, 0, 1]), np.array([0, 1, 2, 2, 1])
    ref = skm.f1_score(y2, p2, labels=range(k), average="macro", zero_division=0)
    assert m.macro_f1(y2, p2, k) == pytest.approx(ref)
    with pytest.raises(DataError, match="0..3"):
        m.confusion_matrix([0, 4], [0, 1], k)


def test_binary_stats_match_sklearn_and_zero_division():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)
    st = m.binary_stats(y, s, 0.5)
    pred = (s >= 0.5).astype(int)  # the threshold itself counts as positive
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert (st["tp"], st["fp"], st["tn"], st["fn"]) == (tp, fp, tn, fn)
    assert st["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert st["specificity"] == pytest.approx(tn / (tn + fp))
    assert st["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert st["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert st["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    none = m.binary_stats(y, s, 2.0)
    assert none["precision"] == 0.0 and none["f1"] == 0.0 and none["specificity"] == 1.0


def _ece_reference(conf, outcome, n_bins):
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        inside = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(conf[inside].mean() - outcome[inside].mean())
    return total


def test_ece_matches_reference_binary_and_top_label():
    rng = np.random.default_rng(4)
    p = np.minimum(np.round(rng.random((500, 3)) * 256), 255) / 256  # uint8 outputs, with 0
    edges = np.r_[np.linspace(0, 1, 11), np.linspace(0, 1, 16)]
    p[:30] = np.resize(edges, (30, 3))  # values exactly on bin edges fall in the lower bin (lo, hi]
    y = (rng.random((500, 3)) < p ** 1.5).astype(int)
    for n_bins in (1, 10, 15):
        ref = _ece_reference(p.ravel(), y.ravel().astype(float), n_bins)
        assert m.expected_calibration_error(y, p, n_bins) == pytest.approx(ref, abs=1e-12)
    probs = rng.dirichlet(np.ones(4), 500)
    cls = rng.integers(0, 4, 500)
    ref = _ece_reference(probs.max(1), (probs.argmax(1) == cls).astype(float), 15)
    assert m.expected_calibration_error(cls, probs, multiclass=True) == pytest.approx(ref, abs=1e-12)
    assert m.expected_calibration_error(np.eye(4)[cls], probs, multiclass=True) == pytest.approx(ref, abs=1e-12)
    curve = m.reliability_curve(cls, probs, 15, multiclass=True)
    assert curve["count"].sum() == 500 and curve["bin_edges"].size == 16
    full = curve["count"] > 0
    assert np.isnan(curve["confidence"][~full]).all() and np.isfinite(curve["frequency"][full]).all()


def test_overconfident_model_has_higher_ece():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.5, 5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-z))).astype(int)
    calibrated = m.expected_calibration_error(y, 1 / (1 + np.exp(-z)))
    assert m.expected_calibration_error(y, 1 / (1 + np.exp(-3 * z))) > calibrated + 0.05


# --------------------------------------------------------------------------- bootstrap

def test_bootstrap_fast_path_equals_per_resample_path_and_is_seeded():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 120)
    s = np.round(rng.random(120) + 0.4 * y, 1)
    fast = m.bootstrap_ci(m.auroc, y, s, n_resamples=200, seed=3)
    slow = m.bootstrap_ci(lambda a, b: m.auroc(a, b), y, s, n_resamples=200, seed=3)
    np.testing.assert_allclose(fast, slow, rtol=1e-12)
    groups = rng.integers(0, 40, 120)
    fast = m.bootstrap_ci(m.accuracy, y, s >= 0.5, groups=groups, n_resamples=200, seed=3)
    slow = m.bootstrap_ci(lambda a, b: m.accuracy(a, b), y, s >= 0.5, groups=groups, n_resamples=200, seed=3)
    np.testing.assert_allclose(fast, slow, rtol=1e-12)
    assert m.bootstrap_ci(m.auroc, y, s, seed=3) == m.bootstrap_ci(m.auroc, y, s, seed=3)
    assert m.bootstrap_ci(m.auroc, y, s, seed=3) != m.bootstrap_ci(m.auroc, y, s, seed=4)
    point, low, high = m.bootstrap_ci(m.auroc, y, s, n_resamples=0)
    assert point == m.auroc(y, s) and math.isnan(low) and math.isnan(high)


def test_bootstrap_drops_resamples_where_metric_is_undefined():
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0])  # most resamples miss the one positive
    s = np.linspace(1, 0, 8)
    point, low, high = m.bootstrap_ci(m.auroc, y, s, n_resamples=300)
    assert point == 1.0 and low == 1.0 and high == 1.0


def test_bootstrap_ci_covers_true_auroc_at_nominal_rate():
    rng = np.random.default_rng(7)
    d = 1.0
    true_auc = 0.5 * (1 + math.erf(d / 2))  # binormal: Phi(d / sqrt 2)
    y = np.r_[np.ones(60), np.zeros(90)].astype(int)
    hits = 0
    for rep in range(200):
        s = rng.normal(d * y, 1.0)
        _, low, high = m.bootstrap_ci(m.auroc, y, s, n_resamples=400, seed=rep)
        hits += low <= true_auc <= high
    assert 0.88 <= hits / 200 <= 0.99


def test_patient_bootstrap_is_wider_when_images_of_a_patient_correlate():
    rng = np.random.default_rng(8)
    patients, per = 60, 5
    y_patient = rng.integers(0, 2, patients)
    latent = rng.normal(y_patient, 1.0)
    groups = np.repeat(np.arange(patients), per)
    y = y_patient[groups]
    s = latent[groups] + rng.normal(0, 0.2, groups.size)
    _, lo_i, hi_i = m.bootstrap_ci(m.auroc, y, s)
    _, lo_p, hi_p = m.bootstrap_ci(m.auroc, y, s, groups=groups.astype(str))
    assert hi_p - lo_p > 1.5 * (hi_i - lo_i)


# --------------------------------------------------------------------------- task level

def _task_data(spec, n, rng):
    if spec.multilabel:
        y = (rng.random((n, spec.num_labels)) < 0.25).astype(int)
        return y, np.clip(rng.random(y.shape) * 0.7 + 0.3 * y, 0, 1)
    y = rng.integers(0, spec.num_labels, n)
    logits = rng.normal(0, 1, (n, spec.num_labels)) + 1.5 * np.eye(spec.num_labels)[y]
    e = np.exp(logits)
    return y, e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("name", ["gate", "cxr4", "nih14"])
def test_task_metrics_report_is_plain_json(name):
    spec = get_task(name)
    rng = np.random.default_rng(9)
    y, p = _task_data(spec, 300, rng)
    groups = rng.integers(0, 120, 300)
    report = m.task_metrics(spec, y, p, groups=groups, n_resamples=200)
    text = json.dumps(report, allow_nan=False)  # no numpy types, no NaN
    assert json.loads(text) == report
    assert report["primary"]["name"] == spec.primary_metric
    low, high = report["primary"]["ci"]
    assert low <= report["primary"]["value"] <= high
    assert set(report["per_label"]) == set(spec.labels)
    assert report["bootstrap"]["unit"] == "patient"
    assert 0 <= report["ece"]["value"] <= 1
    if name == "gate":
        assert report["primary"]["value"] == pytest.approx(m.auroc(y, p))
        assert report["accuracy"]["value"] == pytest.approx(np.mean((p >= 0.5) == y))
    if name == "cxr4":
        assert report["primary"]["value"] == pytest.approx(m.macro_f1(y, p.argmax(1), 4))
        assert np.sum(report["confusion_matrix"]["counts"]) == 300
        ovr = report["per_label"]["Normal"]["auroc"]
        assert ovr == pytest.approx(skm.roc_auc_score(y == 1, p[:, 1]))
        prec, rec, f1, support = skm.precision_recall_fscore_support(y, p.argmax(1), labels=range(4))
        for j, label in enumerate(spec.labels):
            row = report["per_label"][label]
            assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
                (prec[j], rec[j], f1[j], support[j]))
    if name == "nih14":
        aucs = [skm.roc_auc_score(y[:, j], p[:, j]) for j in range(14)]
        assert report["primary"]["value"] == pytest.approx(np.mean(aucs))
        assert report["per_label"]["Hernia"]["threshold"] == spec.default_threshold


def test_task_metrics_one_class_label_is_none_and_skipped_in_mean():
    spec = get_task("nih14")
    rng = np.random.default_rng(10)
    y, p = _task_data(spec, 200, rng)
    y[:, 13] = 0  # no Hernia in this set
    thresholds = {lbl: 0.3 for lbl in spec.labels}
    report = m.task_metrics(spec, y, p, thresholds=thresholds, n_resamples=0)
    assert report["per_label"]["Hernia"]["auroc"] is None
    assert report["mean_auroc"]["n_labels"] == 13 and report["mean_auroc"]["ci"] is None
    assert report["mean_auroc"]["value"] == pytest.approx(np.mean([m.auroc(y[:, j], p[:, j]) for j in range(13)]))
    assert report["per_label"]["Mass"]["threshold"] == 0.3
    json.dumps(report, allow_nan=False)
    y[:, 12] = 0
    y[0, 12] = 1  # one Pleural_Thickening case: most resamples miss it and are dropped for its CI
    report = m.task_metrics(spec, y, p, n_resamples=100)
    assert report["mean_auroc"]["ci_resamples"] == 100
    assert 0 < report["per_label"]["Pleural_Thickening"]["auroc_ci_resamples"] < 80
    assert report["per_label"]["Hernia"]["auroc_ci"] == [None, None]


def test_task_metrics_rejects_mismatched_inputs():
    spec = get_task("nih14")
    with pytest.raises(DataError, match=r"\(N, 14\)"):
        m.task_metrics(spec, np.zeros((5, 13)), np.zeros((5, 13)))
    with pytest.raises(DataError, match="missing"):
        m.task_metrics(spec, np.zeros((5, 14)), np.zeros((5, 14)), thresholds={"Mass": 0.5})
    with pytest.raises(DataError, match="one-hot"):
        m.task_metrics(get_task("cxr4"), np.ones((5, 4)), np.full((5, 4), 0.25))


def test_bootstrap_of_fourteen_labels_is_fast():
    spec = get_task("nih14")
    y, p = _task_data(spec, 500, np.random.default_rng(11))
    start = time.perf_counter()
    report = m.task_metrics(spec, y, p, n_resamples=1000)
    assert time.perf_counter() - start < 8.0  # ~0.7 s on the 2-core workstation
    assert all(v["auroc_ci"][0] < v["auroc"] < v["auroc_ci"][1] for v in report["per_label"].values())


def test_agreement_sigmoid_and_softmax():
    nih, cxr4 = get_task("nih14"), get_task("cxr4")
    rng = np.random.default_rng(12)
    p = rng.random((50, 14))
    same = m.agreement(nih, p, p)
    assert same["agreement"] == 1.0 and same["max_abs_diff"] == 0.0 and same["kind"] == "decision"
    q = p.copy()
    q[0, 0], p[0, 0] = 0.49, 0.51  # one decision of 700 flips at 0.5
    res = m.agreement(nih, p, q)
    assert res["agreement"] == pytest.approx(1 - 1 / 700)
    assert res["max_abs_diff"] == pytest.approx(0.02)
    assert res["per_label"]["Atelectasis"] == pytest.approx(49 / 50)
    soft = rng.dirichlet(np.ones(4), 40)
    flipped = soft[:, [1, 0, 2, 3]]
    res = m.agreement(cxr4, soft, flipped)
    assert res["kind"] == "top1"
    assert res["agreement"] == pytest.approx(np.mean(soft.argmax(1) == flipped.argmax(1)))
    json.dumps(res, allow_nan=False)
