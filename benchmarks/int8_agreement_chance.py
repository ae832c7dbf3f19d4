"""How often the agreement check refuses an int8 model that disturbs decisions no more than a one-pixel shift does,
and how often it catches one that disturbs them more.

Run (workstation, numpy only; about a minute, `--task nih14` about two):

    python benchmarks/int8_agreement_chance.py [--films 273] [--shift-rate 0.02] [--trials 400]

The export check asks int8 to agree with float at least as well as the float model agrees with itself when the
check films move by one pixel (the worst of four shifts, floored by the policy's limit). Both sides of that
comparison are counts of a few borderline films, so the bar and the measurement are noisy. Simulated here: each
film has a float decision margin (a logit gap, exponentially distributed: most films are clear, a few are near
the boundary); each of its five views (as it is and four one-pixel shifts) moves the margin by Gaussian noise whose
size is set so that a shift changes ``--shift-rate`` of the decisions; int8 adds its own Gaussian noise on every
view, sized so that it changes ``k`` times as many decisions as a shift (k = 1: int8 is no worse than a shift, the
hypothesis the test takes as chance). Every trial builds float and int8 outputs shaped as export's check stacks
them (``--films`` x 5 views, 4 classes) and applies, with the shipped cxr4 policy:

* today's rule: agreement >= the smaller of the policy's 0.98 and the worst shift's self-agreement, never below the
  limit's floor (``cxr_edge.training.export_check.compare`` with the envelope of ``one_pixel_envelope``);
* with the test (``check.significance``, the same ``compare``): below that bar, refuse only when
  ``agreement_permutation`` gives p < alpha, and always below the floor.

Printed: the mean agreements and the share of trials each rule refuses, by k. Seeded: the same arguments print
the same table. The margin distribution is an assumption; ``--margins halfnormal`` repeats it with another shape.

``--task nih14`` simulates the 14-label check instead (sigmoid outputs, every label decided at 0.5; default 135
films and a shift changing 3.4% of decisions, margins of mean 1.5 logits so that about a quarter of the decisions
sit within 0.1 of the boundary, as in nih14's export reports): a shift or int8 moves all 14 logits of a film view
together in part (``--correlation``, default 0.5, of the noise shared by the labels), so a film's decisions are
not independent -- what the sign-flip test, which flips a film's decisions together, has to get right.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_edge.tasks import get_task  # noqa: E402
from cxr_edge.training.export_check import (ONE_PIXEL_SHIFTS, compare, default_policy_path,  # noqa: E402
                                             load_policy, one_pixel_envelope)

VIEWS = 1 + len(ONE_PIXEL_SHIFTS)


def margins(rng, n: int, shape: str, scale: float = 3.0, labels: int = 1) -> np.ndarray:
    """(n, labels) decision margins in logits; with several labels, each decided either way."""
    size = (n, labels)
    m = rng.exponential(scale, size) if shape == "exponential" else np.abs(rng.normal(0.0, scale, size))
    return m if labels == 1 else m * rng.choice((-1.0, 1.0), size)


def noise(rng, shape, correlation: float) -> np.ndarray:
    """Gaussian noise over (..., labels): ``correlation`` of its variance shared by a film view's labels."""
    if shape[-1] == 1 or correlation <= 0:
        return rng.normal(size=shape)
    common = rng.normal(size=(*shape[:-1], 1))
    return np.sqrt(correlation) * common + np.sqrt(1 - correlation) * rng.normal(size=shape)


def flip_rate(m, sigma_view, sigma_int8, rng, pairs: str, correlation: float = 0.0) -> float:
    """Monte Carlo share of changed decisions: two views of a film ("shift"), or a view and its int8 ("int8")."""
    view = m + sigma_view * noise(rng, m.shape, correlation)
    other = (m + sigma_view * noise(rng, m.shape, correlation) if pairs == "shift"
             else view + sigma_int8 * noise(rng, m.shape, correlation))
    return float(np.mean((view > 0) != (other > 0)))


def solve(target: float, rate) -> float:
    """The noise size whose flip rate is ``target`` (bisection on a monotone rate)."""
    lo, hi = 1e-4, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) < target else (lo, mid)
    return (lo + hi) / 2


def outputs(m, sigma_view, sigma_int8, rng, correlation: float = 0.0):
    """(float, int8) outputs, views stacked view by view: softmax (VIEWS * films, 4) for one margin per film,
    sigmoid (VIEWS * films, labels) for several."""
    films, labels = m.shape
    view = m[None] + sigma_view * noise(rng, (VIEWS, films, labels), correlation)
    q = view + sigma_int8 * noise(rng, (VIEWS, films, labels), correlation)
    if labels > 1:
        return 1 / (1 + np.exp(-view.reshape(-1, labels))), 1 / (1 + np.exp(-q.reshape(-1, labels)))

    def probs(gap):
        logits = np.full((gap.size, 4), -5.0)
        logits[:, 0], logits[:, 1] = gap.ravel() / 2, -gap.ravel() / 2
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    return probs(view), probs(q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("cxr4", "nih14"), default="cxr4")
    ap.add_argument("--films", type=int, help="check films (default: cxr4 273, nih14 135)")
    ap.add_argument("--shift-rate", type=float, help="share of decisions a one-pixel shift changes (default: cxr4 "
                    "0.02, nih14 0.034)")
    ap.add_argument("--correlation", type=float, default=0.5, help="nih14: share of the noise a film view's labels share")
    ap.add_argument("--ratios", default="1,1.25,1.5,2,3", help="int8's changes as multiples of a shift's")
    ap.add_argument("--margins", choices=("exponential", "halfnormal"), default="exponential")
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    spec = get_task(args.task)
    multi = spec.multilabel
    labels, scale = (spec.num_labels, 1.5) if multi else (1, 3.0)
    corr = args.correlation if multi else 0.0
    args.films = args.films or (135 if multi else 273)
    args.shift_rate = args.shift_rate or (0.034 if multi else 0.02)
    pol = load_policy(default_policy_path(spec))
    sig = pol.significance
    big = margins(np.random.default_rng(12345), 200_000 // labels, args.margins, scale, labels)
    sigma_view = solve(args.shift_rate, lambda s: flip_rate(big, s, 0, np.random.default_rng(1), "shift", corr))
    print(f"# The agreement check against chance ({spec.name}): {args.films} films x {VIEWS} views"
          + (f" x {labels} labels (noise correlation {corr:g})" if multi else "")
          + f", a shift changes {args.shift_rate:.1%} of decisions, {args.margins} margins, {args.trials} trials "
          f"per row (seed {args.seed})\n")
    print(f"Policy {pol.path.name}: agreement tolerance {pol.tolerance.agreement}, floor "
          f"{min(pol.envelope_limit.agreement, pol.tolerance.agreement)}, test alpha {sig.alpha}, "
          f"{sig.permutations} sign flips.\n")
    print("| int8 changes (x a shift's) | mean int8 agreement | mean bar (worst shift) | refused: today's rule "
          "| refused: with the test |")
    print("|---:|---:|---:|---:|---:|")
    for k in (float(v) for v in args.ratios.split(",")):
        sigma_int8 = solve(k * args.shift_rate,
                           lambda s: flip_rate(big, sigma_view, s, np.random.default_rng(2), "int8", corr))
        rng = np.random.default_rng([args.seed, int(k * 100)])
        agree, bars, today, tested = [], [], 0, 0
        for _ in range(args.trials):
            m = margins(rng, args.films, args.margins, scale, labels)
            pf, pq = outputs(m, sigma_view, sigma_int8, rng, corr)
            y = (np.tile(rng.random((args.films, labels)) < 0.3, (VIEWS, 1)).astype(float) if multi
                 else np.eye(4)[np.zeros(VIEWS * args.films, int)])
            n = args.films
            env = one_pixel_envelope(spec, y[:n], None, pf[:n], None,
                                     shifted={s: pf[(i + 1) * n:(i + 2) * n] for i, s in enumerate(ONE_PIXEL_SHIFTS)})
            res = compare(spec, y, pf, pq, pol.tolerance, envelope=env, limit=pol.envelope_limit)
            check = next(c for c in res["checks"] if c["metric"] == "agreement")
            agree.append(check["value"])
            bars.append(env["agreement"])
            today += not check["passed"]
            if not check["passed"]:
                res = compare(spec, y, pf, pq, pol.tolerance, envelope=env, limit=pol.envelope_limit, films=n,
                              significance=sig)
                tested += not next(c for c in res["checks"] if c["metric"] == "agreement")["passed"]
        print(f"| {k:g} | {np.mean(agree):.4f} | {np.mean(bars):.4f} | {today / args.trials:.0%} "
              f"| {tested / args.trials:.0%} |")


if __name__ == "__main__":
    main()
