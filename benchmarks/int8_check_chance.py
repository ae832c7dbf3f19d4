"""How often the float-vs-int8 check refuses an int8 model for chance, and how often it catches a real loss.

Run (workstation, numpy only; ~1 minute):

    python benchmarks/int8_check_chance.py [--films 273] [--views 5] [--changed 11] [--trials 400]

The export check compares float and int8 on a few hundred val films. When int8 changes the decision on
``--changed`` of them, each change goes one of two ways: int8 right where float was wrong, or the other
way round. If quantization costs nothing, the direction is a coin (``worse`` share 0.5); a real loss tips
it. Simulated here: ``--films`` films (the cxr4 val split's 273 by default) seen in ``--views`` views (the
shipped check's film and its four one-pixel shifts; a changed film changes in every view, the hardest
case for the test), float wrong on 14% of them (cxr4's val error), and int8 changing ``--changed`` films
with the stated share going against it. Every trial runs the real ``cxr_edge.training.export_check.compare``
twice with the shipped cxr4 policy: once without ``check.significance`` (tolerance, envelope limit) and once
with it (a drop past the tolerance fails only when the paired permutation test gives p < alpha, and always
past the limit). Printed: the share of trials each rule refuses, by ``worse`` share, with the mean drop in
points. Seeded: the same arguments print the same table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_edge.tasks import get_task  # noqa: E402
from cxr_edge.training.export_check import compare, default_policy_path, load_policy  # noqa: E402


def trial(rng, films: int, views: int, changed: int, worse_share: float):
    """(labels, float outputs, int8 outputs) of one simulated check."""
    label = rng.integers(0, 4, films)
    p = np.full((films, 4), 0.1)
    p[np.arange(films), label] = 0.7
    missed = rng.random(films) < 0.14
    p[missed] = np.roll(p[missed], 1, axis=1)
    q = p.copy()
    n_worse = rng.binomial(changed, worse_share)
    worse = rng.choice(np.flatnonzero(~missed), n_worse, replace=False)
    better = rng.choice(np.flatnonzero(missed), min(changed - n_worse, int(missed.sum())), replace=False)
    q[worse] = np.roll(p[worse], 1, axis=1)             # right answer -> a wrong one
    q[better] = np.roll(p[better], -1, axis=1)          # wrong answer -> the right one
    y = np.eye(4)[np.tile(label, views)]
    return y, np.tile(p, (views, 1)), np.tile(q, (views, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--films", type=int, default=273)
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--changed", type=int, default=11, help="films whose decision int8 changes (cxr4: 10-11)")
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    spec = get_task("cxr4")
    pol = load_policy(default_policy_path(spec))
    print(f"# The int8 check against chance: {args.films} films x {args.views} views, int8 changes "
          f"{args.changed} films, {args.trials} trials per row (seed {args.seed})\n")
    print(f"Policy {pol.path.name}: accuracy tolerance {pol.tolerance.accuracy}, limit {pol.envelope_limit.accuracy}, "
          f"macro-F1 tolerance {pol.tolerance.macro_f1}, significance alpha {pol.significance.alpha}, "
          f"{pol.significance.permutations} permutations. Agreement is left out (it does not compare two scores).\n")
    print("| changes against int8 | mean accuracy drop (points) | refused: tolerance only | "
          "refused: with significance |")
    print("|---:|---:|---:|---:|")
    for share in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        rng = np.random.default_rng([args.seed, int(share * 100)])
        drops, strict, chance = [], 0, 0
        for _ in range(args.trials):
            y, p, q = trial(rng, args.films, args.views, args.changed, share)
            a = compare(spec, y, p, q, pol.tolerance, limit=pol.envelope_limit)
            b = compare(spec, y, p, q, pol.tolerance, limit=pol.envelope_limit, films=args.films,
                        significance=pol.significance)
            drop_checks = [c for c in a["checks"] if c["metric"] != "agreement"]
            drops.append(100 * next(c["drop"] for c in drop_checks if c["metric"] == "accuracy"))
            strict += not all(c["passed"] for c in drop_checks)
            chance += not all(c["passed"] for c in b["checks"] if c["metric"] != "agreement")
        print(f"| {share:.0%} | {np.mean(drops):.2f} | {strict / args.trials:.0%} | {chance / args.trials:.0%} |")


if __name__ == "__main__":
    main()
