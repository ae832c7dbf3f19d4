"""The float-vs-int8 check's one-pixel envelope (numpy only: no TensorFlow needed)."""

import json
from pathlib import Path

import numpy as np
import pytest

from cxr_edge.tasks import get_task
from cxr_edge.tools.metrics import agreement
from cxr_edge.training.export_check import (ONE_PIXEL_SHIFTS, by_view, check_views, compare, failures,
                                           one_pixel_envelope, shift_images)


def test_shift_images_moves_content_and_repeats_the_edge():
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1)
    right = shift_images(x, 0, 1)
    np.testing.assert_array_equal(right[:, :, 1:], x[:, :, :-1])
    np.testing.assert_array_equal(right[:, :, 0], x[:, :, 0])          # the edge column repeated into the gap
    up = shift_images(x, -1, 0)
    np.testing.assert_array_equal(up[:, :-1], x[:, 1:])
    assert right.shape == x.shape and up.dtype == x.dtype


def _problem(n=400, seed=0):
    """Images whose class a 'model' reads from one pixel, so a one-pixel shift changes some decisions."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 1)).astype(np.float32)
    y = np.eye(4)[rng.integers(0, 4, n)]
    w = rng.normal(size=(64, 4))

    def predict(images):
        logits = images.reshape(len(images), -1) @ w + 3 * y   # informative, but pixel-position sensitive
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return x, y, predict


def test_envelope_measures_the_float_models_own_one_pixel_noise():
    spec = get_task("cxr4")
    x, y, predict = _problem()
    env = one_pixel_envelope(spec, y, x, predict(x), predict)
    assert env["kind"] == "one-pixel-shift" and len(env["shifts"]) == 4
    assert 0.5 < env["agreement"] < 1.0                             # some decisions flip under a 1-px shift
    assert env["agreement"] == min(s["agreement"] for s in env["shifts"])
    assert env["drop"]["accuracy"] == max(max(0.0, s["drop"]["accuracy"]) for s in env["shifts"])


def test_envelope_widens_a_check_only_to_the_measured_noise():
    spec = get_task("cxr4")
    x, y, predict = _problem()
    p_float = predict(x)
    env = one_pixel_envelope(spec, y, x, p_float, predict)
    # int8 stand-in: the float outputs with the decisions of a 1-px-shifted copy on some images
    p_shift = predict(shift_images(x, 0, 1))
    p_int8 = p_float.copy()
    flip = np.flatnonzero(p_float.argmax(1) != p_shift.argmax(1))[: max(1, int(0.5 * (1 - env["agreement"]) * len(x)))]
    p_int8[flip] = p_shift[flip]
    strict = compare(spec, y, p_float, p_int8, spec.tolerance)
    widened = compare(spec, y, p_float, p_int8, spec.tolerance, envelope=env)
    assert not strict["passed"]                                      # 98% agreement: below this model's noise
    assert widened["passed"], failures(widened)
    agree = next(c for c in widened["checks"] if c["metric"] == "agreement")
    assert agree["allowed_min"] == env["agreement"] and agree["tolerance"] == spec.tolerance.agreement
    # an int8 model far worse than any 1-px shift still fails
    p_bad = np.roll(p_float, 1, axis=1)
    assert not compare(spec, y, p_float, p_bad, spec.tolerance, envelope=env)["passed"]


def test_check_views_are_the_films_and_their_four_one_pixel_shifts():
    x = np.arange(3 * 6 * 6, dtype=np.float32).reshape(3, 6, 6, 1)
    (only,) = check_views(x, "original")
    assert only[0] == (0, 0) and only[1] is not None and np.array_equal(only[1], x)
    views = check_views(x, "one-pixel-shifts")
    assert [s for s, _ in views] == [(0, 0), *ONE_PIXEL_SHIFTS]
    for (down, right), images in views[1:]:
        np.testing.assert_array_equal(images, shift_images(x, down, right))
    with pytest.raises(ValueError, match="views"):
        check_views(x, "rotations")


def test_a_loss_that_shows_only_on_shifted_copies_fails_the_pooled_check():
    """int8 matches float on the films as they are but gets shifted copies wrong: checking the films alone
    passes it; checking the five views, each int8 output against float's on the same view, does not."""
    spec = get_task("cxr4")
    x, y, predict = _problem()
    views = check_views(x, "one-pixel-shifts")
    p_float = [predict(images) for _, images in views]
    p_int8 = [p.copy() for p in p_float]
    right = np.flatnonzero(p_float[1].argmax(1) == y.argmax(1))[:60]
    p_int8[1][right] = np.roll(p_float[1][right], 1, axis=1)           # wrong on one shifted copy only
    assert compare(spec, y, p_float[0], p_int8[0], spec.tolerance)["passed"]
    pooled = compare(spec, np.concatenate([y] * 5), np.concatenate(p_float), np.concatenate(p_int8),
                     spec.tolerance)
    assert not pooled["passed"] and pooled["n"] == 5 * len(x)
    assert pooled["agreement"] == pytest.approx(1 - 60 / (5 * len(x)))
    views_apart = by_view(spec, np.concatenate([y] * 5), np.concatenate(p_float), np.concatenate(p_int8),
                          [s for s, _ in views])
    assert [v["agreement"] for v in views_apart] == pytest.approx([1.0, 1 - 60 / len(x), 1.0, 1.0, 1.0])
    assert views_apart[1]["float"]["accuracy"] - views_apart[1]["int8"]["accuracy"] == pytest.approx(60 / len(x))


def test_unknown_views_are_refused(tmp_path):
    from cxr_edge.errors import RecipeError
    from cxr_edge.training.export_check import load_policy

    policy = json.loads((Path(__file__).resolve().parents[1] / "cxr_edge" / "resources" / "export" / "cxr4.json").read_text())
    policy["check"]["views"] = "rotations"
    (tmp_path / "p.json").write_text(json.dumps(policy))
    with pytest.raises(RecipeError, match="check.views 'rotations'"):
        load_policy(tmp_path / "p.json")


def test_a_stable_model_is_checked_as_strictly_as_the_policy_says():
    spec = get_task("cxr4")
    rng = np.random.default_rng(1)
    y = np.eye(4)[rng.integers(0, 4, 300)]
    p_float = rng.dirichlet([1, 1, 1, 1], 300)
    p_int8 = np.clip(p_float + rng.normal(0, 0.05, p_float.shape), 0, 1)
    stable = {"kind": "one-pixel-shift", "agreement": 1.0, "drop": {"accuracy": 0.0, "macro_f1": 0.0,
                                                                   "mean_auroc": 0.0}, "shifts": []}
    strict = compare(spec, y, p_float, p_int8, spec.tolerance)
    with_env = compare(spec, y, p_float, p_int8, spec.tolerance, envelope=stable)
    assert [c["passed"] for c in strict["checks"]] == [c["passed"] for c in with_env["checks"]]
    assert all(c.get("allowed", c.get("allowed_min")) == c["tolerance"] for c in with_env["checks"])


@pytest.mark.parametrize("envelope", ["sometimes", 1])
def test_unknown_envelope_is_refused(envelope, tmp_path):
    from cxr_edge.errors import RecipeError
    from cxr_edge.training.export_check import load_policy

    policy = json.loads((Path(__file__).resolve().parents[1] / "cxr_edge" / "resources" / "export" / "cxr4.json").read_text())
    policy["check"]["envelope"] = envelope
    (tmp_path / "p.json").write_text(json.dumps(policy))
    with pytest.raises(RecipeError, match="check.envelope"):
        load_policy(tmp_path / "p.json")


def test_envelope_limit_caps_how_far_an_erratic_float_model_widens_a_check():
    from cxr_edge.tasks import Int8Tolerance

    spec = get_task("cxr4")
    x, y, predict = _problem()
    p_float = predict(x)
    erratic = {"kind": "one-pixel-shift", "agreement": 0.80, "drop": {"accuracy": 0.15, "macro_f1": 0.15},
               "shifts": []}
    p_int8 = p_float.copy()
    worse = np.flatnonzero(p_float.argmax(1) == y.argmax(1))[:20]     # int8 gets 20 right answers wrong: -5 points
    p_int8[worse] = np.roll(p_float[worse], 1, axis=1)
    assert compare(spec, y, p_float, p_int8, spec.tolerance, envelope=erratic)["passed"]   # unlimited: waved through
    limit = Int8Tolerance(accuracy=0.02, macro_f1=0.03, agreement=0.96)
    capped = compare(spec, y, p_float, p_int8, spec.tolerance, envelope=erratic, limit=limit)
    assert not capped["passed"]
    by = {c["metric"]: c for c in capped["checks"]}
    assert by["accuracy"]["allowed"] == 0.02 and by["agreement"]["allowed_min"] == 0.96
    assert any("at most 0.0200" in f for f in failures(capped))


def test_shipped_policies_cap_their_envelopes_and_a_stricter_limit_is_refused(tmp_path):
    from cxr_edge.errors import RecipeError
    from cxr_edge.training.export_check import load_policy

    root = Path(__file__).resolve().parents[1] / "cxr_edge" / "resources" / "export"
    for task in ("gate", "cxr4", "nih14"):
        pol = load_policy(root / f"{task}.json")
        assert pol.envelope == "one-pixel-shift" and pol.envelope_limit is not None
        assert pol.views == "one-pixel-shifts" and pol.to_dict()["views"] == "one-pixel-shifts"
    policy = json.loads((root / "cxr4.json").read_text())
    policy["check"]["envelope_limit"]["accuracy"] = 0.001    # below the tolerance it is meant to cap
    (tmp_path / "p.json").write_text(json.dumps(policy))
    with pytest.raises(RecipeError, match="envelope_limit.*stricter"):
        load_policy(tmp_path / "p.json")


# --------------------------------------------------------------------------- chance (check.significance)


def _films(n=273, views=5, wrong=0.14, seed=0):
    """Float outputs of ``n`` films x ``views`` stacked views (row i is film i % n), about ``wrong`` of them wrong."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, n)
    p = np.full((n, 4), 0.1)
    p[np.arange(n), label] = 0.7
    missed = rng.random(n) < wrong
    p[missed] = np.roll(p[missed], 1, axis=1)
    return np.eye(4)[np.tile(label, views)], np.tile(p, (views, 1)), missed


def _int8(p_float, films, worse, better, missed):
    """int8 stand-in: wrong on ``worse`` films float gets right, right on ``better`` films float gets wrong."""
    q = p_float.copy()
    views = len(p_float) // films
    rows = [f + v * films for f in np.flatnonzero(~missed)[:worse] for v in range(views)]
    q[rows] = np.roll(q[rows], 1, axis=1)
    rows = [f + v * films for f in np.flatnonzero(missed)[:better] for v in range(views)]
    q[rows] = np.roll(q[rows], -1, axis=1)
    return q


def _policy_limits():
    from cxr_edge.tasks import Int8Tolerance
    from cxr_edge.training.export_check import Significance

    return Int8Tolerance(accuracy=0.02, macro_f1=0.03, agreement=0.96), Significance(alpha=0.05, permutations=499)


def test_a_loss_the_films_cannot_tell_from_chance_passes_and_says_so():
    spec = get_task("cxr4")
    y, p_float, missed = _films()
    p_int8 = _int8(p_float, 273, worse=7, better=4, missed=missed)      # 11 films changed, 3 net: a 1.1-point drop
    limit, sig = _policy_limits()
    strict = compare(spec, y, p_float, p_int8, spec.tolerance, limit=limit)
    assert not strict["passed"]                                          # the 0.5-point tolerance refuses it
    chance = compare(spec, y, p_float, p_int8, spec.tolerance, limit=limit, films=273, significance=sig)
    acc = {c["metric"]: c for c in chance["checks"]}["accuracy"]
    assert acc["drop"] == pytest.approx(3 / 273)
    assert acc["chance"] and acc["passed"] and 0.2 < acc["p_value"] < 0.4   # exact sign test: P(>=7 of 11) = 0.27
    assert acc["films"] == 273 and chance["significance"]["alpha"] == 0.05


def test_a_consistent_loss_is_not_chance_and_fails_with_its_p_value():
    spec = get_task("cxr4")
    y, p_float, missed = _films()
    p_int8 = _int8(p_float, 273, worse=5, better=0, missed=missed)      # 5 films, every one worse: p = 1/32
    limit, sig = _policy_limits()
    result = compare(spec, y, p_float, p_int8, spec.tolerance, limit=limit, films=273, significance=sig)
    acc = {c["metric"]: c for c in result["checks"]}["accuracy"]
    assert not acc["passed"] and not acc["chance"] and acc["p_value"] < 0.05
    assert any("not chance" in f and "273 films" in f for f in failures(result))


def test_chance_never_passes_a_drop_beyond_the_limit():
    spec = get_task("cxr4")
    y, p_float, missed = _films(n=60, wrong=0.4, seed=3)
    p_int8 = _int8(p_float, 60, worse=4, better=2, missed=missed)       # 2 films net of 60: a 3.3-point drop
    limit, sig = _policy_limits()
    result = compare(spec, y, p_float, p_int8, spec.tolerance, limit=limit, films=60, significance=sig)
    acc = {c["metric"]: c for c in result["checks"]}["accuracy"]
    assert acc["chance"] and not acc["passed"]                           # chance, but past the 2-point ceiling
    assert any("beyond the limit 0.0200" in f for f in failures(result))


def test_views_of_one_film_are_swapped_together():
    """Five views of one film are one piece of evidence: the same films give the same p with 1 or 5 views."""
    from cxr_edge.training.export_check import paired_permutation

    spec = get_task("cxr4")
    p = {}
    for views in (1, 5):
        y, p_float, missed = _films(views=views)
        p_int8 = _int8(p_float, 273, worse=6, better=1, missed=missed)
        p[views] = paired_permutation(spec, y, p_float, p_int8, 273, [("accuracy", None)], permutations=499)
    assert p[1] == p[5]                                                  # not 5x the evidence
    assert 0.03 < p[1][("accuracy", None)] < 0.1                         # exact: P(>=6 of 7) = 0.0625


def _shifted_films(n=273, shift_flips=6, int8_flips=6, seed=0):
    """Float outputs of ``n`` films x 5 views where the views of ``shift_flips`` near-boundary films change the
    float model's decision (each in one shifted view), and int8 outputs that change ``int8_flips`` other films'
    decisions in one view each: a shift and int8 disturbing the same number of decisions."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, n)
    p = np.full((n, 4), 0.1)
    p[np.arange(n), label] = 0.7
    p_float = np.tile(p, (5, 1))
    films = rng.permutation(n)
    for i, f in enumerate(films[:shift_flips]):
        row = f + (1 + i % 4) * n
        p_float[row] = np.roll(p_float[row], 1)
    p_int8 = p_float.copy()
    for i, f in enumerate(films[shift_flips:shift_flips + int8_flips]):
        row = f + (i % 5) * n
        p_int8[row] = np.roll(p_int8[row], 1)
    return np.eye(4)[np.tile(label, 5)], p_float, p_int8


def _agreement_check(result):
    return next(c for c in result["checks"] if c["metric"] == "agreement")


def test_int8_changing_no_more_decisions_than_a_shift_passes_the_agreement_check_as_chance():
    from cxr_edge.training.export_check import one_pixel_envelope

    spec = get_task("cxr4")
    y, p_float, p_int8 = _shifted_films(shift_flips=24, int8_flips=24)
    n = 273
    env = one_pixel_envelope(spec, y[:n], None, p_float[:n], None,
                             shifted={s: p_float[(i + 1) * n:(i + 2) * n] for i, s in enumerate(ONE_PIXEL_SHIFTS)})
    assert env["agreement"] == pytest.approx(267 / 273)                  # each shift changes 6 films: 0.978
    limit, sig = _policy_limits()
    # int8 changes 24 of 1365 decisions (0.982), as many as the shifts (24 of 1092): passes without any test
    assert _agreement_check(compare(spec, y, p_float, p_int8, spec.tolerance, envelope=env, limit=limit))["passed"]
    # 36 int8 changes: 0.974, below the worst shift's 0.978 -- refused without the test ...
    y, p_float, p_int8 = _shifted_films(shift_flips=24, int8_flips=36)
    strict = _agreement_check(compare(spec, y, p_float, p_int8, spec.tolerance, envelope=env, limit=limit))
    assert not strict["passed"] and strict["allowed_min"] == pytest.approx(267 / 273)
    # ... and within chance with it: 2.6% of int8's decisions changed against 2.2% of a shift's, 36 films and 24
    check = _agreement_check(compare(spec, y, p_float, p_int8, spec.tolerance, envelope=env, limit=limit,
                                     films=n, significance=sig))
    assert check["passed"] and check["chance"] and 0.1 < check["p_value"] < 0.5
    assert check["int8_changes"] == pytest.approx(36 / 1365) and check["shift_changes"] == pytest.approx(24 / 1092)


def test_int8_changing_many_more_decisions_than_a_shift_fails_as_not_chance():
    spec = get_task("cxr4")
    y, p_float, p_int8 = _shifted_films(shift_flips=4, int8_flips=40)   # 40 films against 1 in a view: 0.971
    limit, sig = _policy_limits()
    result = compare(spec, y, p_float, p_int8, spec.tolerance, limit=limit, films=273, significance=sig)
    check = _agreement_check(result)
    assert check["value"] > 0.96 and not check["passed"] and not check["chance"] and check["p_value"] < 0.01
    assert any("not chance: int8 changes 2.9% of decisions, a one-pixel shift 0.4%" in f and "273 films" in f
               for f in failures(result))


def test_the_agreement_floor_holds_whatever_the_test_says():
    spec = get_task("cxr4")
    y, p_float, p_int8 = _shifted_films(n=60, shift_flips=40, int8_flips=20)   # many shift changes: chance
    limit, sig = _policy_limits()
    result = compare(spec, y, p_float, p_int8, spec.tolerance, limit=limit, films=60, significance=sig)
    check = _agreement_check(result)
    assert check["value"] < 0.96 and check["chance"] and not check["passed"]
    assert any("below the floor 0.9600" in f for f in failures(result))


def test_the_agreement_test_needs_the_shifted_views():
    from cxr_edge.training.export_check import agreement_permutation

    spec = get_task("cxr4")
    y, p_float, p_int8 = _shifted_films(shift_flips=0, int8_flips=40)   # 8 changes in the unshifted view: 0.971
    limit, sig = _policy_limits()
    one_view = compare(spec, y[:273], p_float[:273], p_int8[:273], spec.tolerance, limit=limit, films=273,
                       significance=sig)
    assert not _agreement_check(one_view)["passed"] and "p_value" not in _agreement_check(one_view)
    with pytest.raises(ValueError, match="shifted views"):
        agreement_permutation(spec, p_float[:273], p_int8[:273], 273)
    # sigmoid tasks compare every label decision at 0.5; the same outputs give the same p (seeded)
    nih = get_task("nih14")
    rng = np.random.default_rng(1)
    pf = np.tile(rng.random((50, nih.num_labels)), (5, 1))
    pq = pf.copy()
    pq[:10, 0] = 1 - pq[:10, 0]
    first = agreement_permutation(nih, pf, pq, 50, permutations=199)
    assert first["p_value"] < 0.05 and first["shift_changes"] == 0
    assert 1 - first["int8_changes"] == pytest.approx(agreement(nih, pf, pq)["agreement"])   # decided at 0.5
    # the gate: one sigmoid output, 7 films changed and no shift changes anything
    gate = get_task("gate")
    g = np.tile(rng.random(60), 5)
    gq = g.copy()
    gq[:7] = 1 - gq[:7]
    r = agreement_permutation(gate, g, gq, 60, permutations=999)
    assert r["int8_changes"] == pytest.approx(1 - agreement(gate, g, gq)["agreement"])
    assert r["p_value"] == pytest.approx(1 / 128, abs=0.01)               # exact sign test: 7 films, all one way


def test_the_agreement_test_never_passes_below_the_policy_without_a_limit():
    from cxr_edge.training.export_check import Significance

    spec = get_task("cxr4")
    y, p_float, p_int8 = _shifted_films(n=60, shift_flips=40, int8_flips=20)   # chance, at agreement 0.933
    sig = Significance(alpha=0.05, permutations=199)
    check = _agreement_check(compare(spec, y, p_float, p_int8, spec.tolerance, films=60, significance=sig))
    assert check["chance"] and not check["passed"] and check["cap"] == spec.tolerance.agreement


def test_significance_is_parsed_and_needs_a_limit(tmp_path):
    from cxr_edge.errors import RecipeError
    from cxr_edge.training.export_check import load_policy

    root = Path(__file__).resolve().parents[1] / "cxr_edge" / "resources" / "export"
    for task in ("gate", "cxr4", "nih14"):
        assert load_policy(root / f"{task}.json").significance.alpha == 0.05
    policy = json.loads((root / "cxr4.json").read_text())
    for bad, message in (({"alpha": 0.5}, "0 < alpha < 0.5"), ({"alpha": "x"}, "significance"),
                         ({"alfa": 0.05}, "must be an object with alpha"),
                         ({"alpha": 0.05, "permutations": float("inf")}, "significance"),
                         ({"alpha": float("nan")}, "0 < alpha < 0.5")):
        policy["check"]["significance"] = bad
        (tmp_path / "p.json").write_text(json.dumps(policy))
        with pytest.raises(RecipeError, match=message):
            load_policy(tmp_path / "p.json")
    policy["check"]["significance"] = {"alpha": 0.05}
    del policy["check"]["envelope_limit"]
    (tmp_path / "p.json").write_text(json.dumps(policy))
    with pytest.raises(RecipeError, match="needs check.envelope_limit"):
        load_policy(tmp_path / "p.json")


def test_the_fast_softmax_permutation_scores_each_swap_as_the_check_does():
    from cxr_edge.training.export_check import _softmax_drops, summarize

    spec = get_task("cxr4")
    y, p_float, missed = _films(n=50, views=3, wrong=0.3, seed=5)
    p_int8 = _int8(p_float, 50, worse=6, better=3, missed=missed)
    swaps = np.random.default_rng(0).random((5, 50)) < 0.5
    fast = _softmax_drops(spec, y, p_float, p_int8, 50, swaps)
    for i, swap in enumerate(swaps):
        s = np.tile(swap, 3)[:, None]
        a, b = summarize(spec, y, np.where(s, p_int8, p_float)), summarize(spec, y, np.where(s, p_float, p_int8))
        assert fast[("accuracy", None)][i] == pytest.approx(a["accuracy"] - b["accuracy"])
        assert fast[("macro_f1", None)][i] == pytest.approx(a["macro_f1"] - b["macro_f1"])


def test_permutations_are_bounded_and_drawn_in_blocks_with_the_same_p(tmp_path):
    """The p of 2,500 permutations drawn a block at a time is the p of the same seeded stream drawn at once; a policy
    asking for more than the bound is refused before anything runs."""
    from cxr_edge.errors import RecipeError
    from cxr_edge.training import export_check
    from cxr_edge.training.export_check import load_policy, paired_permutation

    spec = get_task("cxr4")
    y, p_float, missed = _films(n=80, views=2, wrong=0.3, seed=7)
    p_int8 = _int8(p_float, 80, worse=5, better=2, missed=missed)
    keys = [("accuracy", None), ("macro_f1", None)]
    blocks = paired_permutation(spec, y, p_float, p_int8, 80, keys, permutations=2500, seed=3)
    one = export_check.PERMUTATION_BLOCK
    try:
        export_check.PERMUTATION_BLOCK = 10_000
        at_once = paired_permutation(spec, y, p_float, p_int8, 80, keys, permutations=2500, seed=3)
    finally:
        export_check.PERMUTATION_BLOCK = one
    assert blocks == at_once
    policy = json.loads((Path(__file__).resolve().parents[1] / "cxr_edge" / "resources" / "export" / "cxr4.json").read_text())
    policy["check"]["significance"] = {"alpha": 0.05, "permutations": 10_000_000}
    (tmp_path / "p.json").write_text(json.dumps(policy))
    with pytest.raises(RecipeError, match="permutations <= 10000"):
        load_policy(tmp_path / "p.json")
