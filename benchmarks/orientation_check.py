"""The orientation check on films it never saw: how often it turns upright films, and turned ones right.

Every film of a prepared split (default: test, which neither fitting nor the threshold used) is shown to
the pack's gate model as it is and turned by 90, 180 and 270 degrees, and the pack's orientation head
judges each at its stored threshold (:func:`cxr_edge.tools.orientation_fit.rates`). Also timed, in the same
run: the head's judgement of one film against the gate model's own run on it (the check reuses that run,
so the head is all an upright film costs).

    .venv/bin/python benchmarks/orientation_check.py --pack cxr_edge/packs/default --data prepared/cxr4 [--split test]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_edge.data.prepared import open_prepared  # noqa: E402
from cxr_edge.runtime.features import pooled  # noqa: E402
from cxr_edge.runtime.orientation import SLOT, TURNS  # noqa: E402
from cxr_edge.runtime.pipeline import Pipeline  # noqa: E402
from cxr_edge.tools.orientation_fit import rates, turned_features  # noqa: E402
from cxr_edge.tools.split_runner import cache_usable, inputs_at  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default=str(REPO / "cxr_edge" / "packs" / "default"))
    ap.add_argument("--data", required=True, help="prepared chest X-rays, e.g. prepared/cxr4")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    pipe = Pipeline(args.pack)
    if pipe.orientation is None:
        ap.error(f"{args.pack} has no orientation check; fit one with cxr-edge orientation fit")
    prepared = open_prepared(args.data)
    gate = pipe.models[SLOT]
    use_cache, _ = cache_usable(prepared, args.split, gate.spec, [])
    rows = np.arange(len(prepared.table(args.split)))
    x = inputs_at(prepared, args.split, gate.spec, use_cache, rows)
    feats, turns = turned_features(gate, x, "films")
    head = pipe.orientation
    r = rates(head, feats, turns)
    print(f"pack {args.pack}; {len(x)} {args.split} films of {args.data} x {len(TURNS)} turns; "
          f"threshold {r['threshold']:.2f}\n")
    print("| films | n | turned by mistake | turned back right | the wrong way | left as they are |")
    print("|---|---:|---:|---:|---:|---:|")
    pct = (lambda v: "-" if v is None else f"{100 * v:.1f}%")
    print(f"| upright | {r['upright']} | {pct(r['upright_turned_by_mistake'])} | | | |")
    for k, turn in enumerate(TURNS[1:], 1):
        rk = rates(head, feats[(turns == 0) | (turns == k)], turns[(turns == 0) | (turns == k)])
        print(f"| turned {turn} | {int((turns == k).sum())} | | {pct(rk['turned_corrected'])} | "
              f"{pct(rk['turned_wrong_way'])} | {pct(rk['turned_left_as_is'])} |")
    one = x[0]
    t_gate, t_head = [], []
    for _ in range(200):           # interleaved: the gate's run, then the head on its features
        t0 = time.perf_counter()
        out = gate.infer(one)
        t1 = time.perf_counter()
        head.judge(pooled(out["features"]))
        t_head.append(time.perf_counter() - t1)
        t_gate.append(t1 - t0)
    g, h = np.median(t_gate) * 1e3, np.median(t_head) * 1e3
    print(f"\nmedian of 200, 1 thread: gate model {g:.3f} ms, orientation head {h:.3f} ms "
          f"({100 * h / g:.1f}% of the gate's run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
