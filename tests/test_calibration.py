"""Calibration: temperature scaling from probabilities, threshold rules."""

import logging

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_edge.runtime import posthoc
from cxr_edge.tools import posthoc_fit as cal
from cxr_edge.tools import metrics as m
from cxr_edge.errors import CxrEdgeError, DataError
from cxr_edge.tasks import get_task


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _uint8(p):
    """What an int8 model with a uint8-scaled output emits: k / 256, k <= 255."""
    return np.minimum(np.round(p * 256), 255) / 256


@pytest.fixture(scope="module")
def sigmoid_data():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 3))
    y = (rng.random(z.shape) < _sigmoid(z)).astype(int)
    return z, y


@pytest.fixture(scope="module")
def softmax_data():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (6000, 4))
    y = (_softmax(z).cumsum(1) > rng.random((6000, 1))).argmax(1)
    return z, y


@pytest.mark.parametrize("quantize", [False, True])
def test_temperature_recovers_overconfidence_sigmoid(sigmoid_data, quantize):
    z, y = sigmoid_data
    p = _sigmoid(3 * z)  # logits scaled by 3: over-confident
    p = _uint8(p) if quantize else p
    t = cal.fit_temperature(p, y, "sigmoid")
    assert 2.55 < t < 3.45
    before = m.expected_calibration_error(y, p)
    after = m.expected_calibration_error(y, posthoc.apply_temperature(p, t, "sigmoid"))
    assert before > m.expected_calibration_error(y, _sigmoid(z)) + 0.05
    assert after < before / 4


@pytest.mark.parametrize("quantize", [False, True])
def test_temperature_recovers_overconfidence_softmax(softmax_data, quantize):
    z, y = softmax_data
    p = _softmax(3 * z)
    p = _uint8(p) if quantize else p
    t = cal.fit_temperature(p, y, "softmax")
    assert 2.55 < t < 3.45
    before = m.expected_calibration_error(y, p, multiclass=True)
    calibrated = posthoc.apply_temperature(p, t, "softmax")
    after = m.expected_calibration_error(y, calibrated, multiclass=True)
    assert after < before / 4
    np.testing.assert_allclose(calibrated.sum(1), 1.0)
    np.testing.assert_array_equal(calibrated.argmax(1), p.argmax(1))
    # one-hot targets give the same fit as class indices
    assert cal.fit_temperature(p, np.eye(4)[y], "softmax") == pytest.approx(t)


def test_calibrated_model_keeps_temperature_near_one(sigmoid_data):
    z, y = sigmoid_data
    assert 0.9 < cal.fit_temperature(_sigmoid(z), y, "sigmoid") < 1.1


def test_apply_temperature_identity_and_direction():
    p = np.array([[0.0, 0.2, 0.9, 1.0]])
    np.testing.assert_array_equal(posthoc.apply_temperature(p, 1.0, "sigmoid"), p)
    soft = posthoc.apply_temperature(p, 2.0, "sigmoid")
    assert np.all(np.abs(soft - 0.5) <= np.abs(p - 0.5)) and np.isfinite(soft).all()
    np.testing.assert_array_equal(np.argsort(soft), np.argsort(p))  # ranking (AUROC) unchanged
    with pytest.raises(DataError, match="> 0"):
        posthoc.apply_temperature(p, 0.0, "sigmoid")


def test_temperature_at_bound_is_logged(caplog):
    y = np.ones(50, dtype=int)  # one class: NLL keeps falling as T shrinks
    with caplog.at_level(logging.WARNING, logger="cxr_edge.tools.posthoc_fit"):
        t = cal.fit_temperature(np.full(50, 0.8), y, "sigmoid")
    assert t == pytest.approx(cal.T_MIN, rel=0.01)
    assert "bound" in caplog.text


# --------------------------------------------------------------------------- rules

@pytest.mark.parametrize("text, kind, target", [
    ("max-f1", "max-f1", None), (" Youden ", "youden", None),
    ("sensitivity:0.90", "sensitivity", 0.9), ("specificity:0.8", "specificity", 0.8),
    ("sensitivity:1", "sensitivity", 1.0),
])
def test_parse_rule(text, kind, target):
    rule = cal.parse_rule(text)
    assert (rule.kind, rule.target) == (kind, target)
    assert cal.parse_rule(str(rule)) == rule


@pytest.mark.parametrize("text", ["max_f1", "f1", "sensitivity", "sensitivity:1.5", "specificity:0",
                                  "sensitivity:abc", "", "precision:0.9"])
def test_bad_rule_lists_the_valid_ones(text):
    with pytest.raises(CxrEdgeError) as info:
        cal.parse_rule(text)
    for name in ("max-f1", "youden", "sensitivity:X", "specificity:X"):
        assert name in str(info.value)


def _tied_problem(seed, n=300):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = _uint8(np.clip(rng.random(n) * 0.7 + 0.25 * y, 0, 1))
    return y, np.round(s, 2)


@pytest.mark.parametrize("seed", range(4))
def test_sensitivity_and_specificity_rules(seed):
    y, s = _tied_problem(seed)
    distinct = np.unique(s)
    thr, stats = cal.choose_threshold(y, s, "sensitivity:0.9")
    assert stats["sensitivity"] >= 0.9
    chosen = distinct[distinct >= thr][0]   # the lowest score still called positive
    higher = distinct[distinct > chosen]
    if higher.size:  # the next higher threshold would miss the target: it is the highest that works
        assert m.binary_stats(y, s, higher[0])["sensitivity"] < 0.9
    thr, stats = cal.choose_threshold(y, s, "specificity:0.8")
    assert stats["specificity"] >= 0.8
    lower = distinct[distinct < thr]
    if lower.size:
        assert m.binary_stats(y, s, lower[-1])["specificity"] < 0.8


@pytest.mark.parametrize("seed", range(4))
def test_max_f1_matches_brute_force(seed):
    y, s = _tied_problem(seed)
    distinct = np.unique(s)
    best = max(distinct[::-1], key=lambda t: m.binary_stats(y, s, t)["f1"])  # first max = highest t
    thr, stats = cal.choose_threshold(y, s, "max-f1")
    below = distinct[distinct < best]
    # the same decisions as the best score, with a margin: strictly between it and the next lower score
    assert (below.size == 0 and thr == best) or below[-1] < thr < best
    np.testing.assert_array_equal(s >= thr, s >= best)
    assert stats["f1"] == pytest.approx(skm.f1_score(y, s >= best))


def test_threshold_keeps_a_margin_between_separated_scores():
    # A perfectly separated validation set (the gate): the threshold goes halfway between the classes
    # in logit space, not onto the lowest positive score (where every slightly weaker photo is rejected).
    y = np.r_[np.zeros(20, int), np.ones(200, int)]
    s = np.r_[np.full(20, 0.005), np.linspace(0.99, 0.9999, 200)]
    for rule in ("max-f1", "youden"):
        thr, stats = cal.choose_threshold(y, s, rule)
        assert 0.005 < thr < 0.99
        assert stats["sensitivity"] == 1.0 and stats["specificity"] == 1.0
    thr, _ = cal.choose_threshold(y, s, "max-f1")
    assert thr == pytest.approx(1 / (1 + np.exp(-0.5 * (np.log(0.99 / 0.01) + np.log(0.005 / 0.995)))))


@pytest.mark.parametrize("seed", range(4))
def test_youden_maximizes_tpr_minus_fpr(seed):
    y, s = _tied_problem(seed)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    thr, stats = cal.choose_threshold(y, s, "youden")
    assert stats["sensitivity"] + stats["specificity"] - 1 == pytest.approx(np.max(tpr - fpr))


def test_choose_threshold_needs_both_classes():
    with pytest.raises(DataError, match="both classes"):
        cal.choose_threshold([1, 1, 1], [0.2, 0.5, 0.9], "youden")


def test_choose_thresholds_per_label_with_one_class_fallback(caplog):
    spec = get_task("nih14")
    rng = np.random.default_rng(5)
    y = (rng.random((200, 14)) < 0.3).astype(int)
    p = np.clip(rng.random(y.shape) * 0.7 + 0.25 * y, 0, 1)
    y[:, 13] = 0  # no Hernia in the fit data
    with caplog.at_level(logging.WARNING, logger="cxr_edge.tools.posthoc_fit"):
        thresholds = cal.choose_thresholds(spec, y, p, "sensitivity:0.9")
    assert list(thresholds) == list(spec.labels)
    assert thresholds["Hernia"] == spec.default_threshold
    assert "Hernia" in caplog.text and "default threshold" in caplog.text
    for j, label in enumerate(spec.labels[:13]):
        assert m.binary_stats(y[:, j], p[:, j], thresholds[label])["sensitivity"] >= 0.9
    report = m.task_metrics(spec, y, p, thresholds=thresholds, n_resamples=0)
    assert report["per_label"]["Mass"]["sensitivity"] >= 0.9


def test_choose_thresholds_softmax_one_vs_rest():
    spec = get_task("cxr4")
    rng = np.random.default_rng(6)
    y = rng.integers(0, 4, 300)
    p = _softmax(rng.normal(0, 1, (300, 4)) + 2 * np.eye(4)[y])
    thresholds = cal.choose_thresholds(spec, y, p, "youden")
    assert list(thresholds) == list(spec.labels)
    for j, label in enumerate(spec.labels):
        assert thresholds[label] == cal.choose_threshold(y == j, p[:, j], "youden")[0]


def test_a_separable_split_keeps_the_calibration_the_model_has():
    """A gate that gets every val image right (a clean val set) would be 'calibrated' to T = 0.05: every
    probability 0 or 1. The fit keeps the model's calibration instead, and says why."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200, int), np.zeros(20, int)]
    p = np.where(y == 1, rng.uniform(0.6, 0.99, y.size), rng.uniform(0.01, 0.4, y.size))   # every image right
    t, b, warning = cal.fit_calibration(p, y, "sigmoid", bias=True, keep=(1.3, np.array([1.9])))
    assert t == 1.3 and b.tolist() == [1.9]
    assert "separates this split perfectly" in warning and "kept 1.3" in warning
    # one image on the wrong side is enough to identify a temperature, which is then fitted
    p[0] = 0.2
    t, b, warning = cal.fit_calibration(p, y, "sigmoid", bias=True, keep=(1.3, np.array([1.9])))
    assert warning is None and cal.T_MIN * 1.01 < t < cal.T_MAX and t != 1.3
    # softmax, no offsets: the same rule
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    t, b, warning = cal.fit_calibration(probs, np.array([0, 1, 0, 1]), "softmax", bias=False, keep=(1.0, np.zeros(2)))
    assert t == 1.0 and warning
