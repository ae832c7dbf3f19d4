"""Single-image predict latency and CLI start-up, with same-run baselines.

Run:  .venv/bin/python benchmarks/device_latency.py [--model M.tflite] [--image IMG] [--runs 200]

Defaults use ../shared: the real int8 ImageNet MobileNetV2 1.0 224 (the same
architecture as the cxr-edge models) and a 256-px NIH PNG. Prints medians and
ratios against baselines measured in this run (`python -c pass` for start-up;
the bare interpreter invoke for predict), because absolute times drift on
shared machines.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def timeit(fn, runs: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(ms: list[float]) -> tuple[float, float]:
    return statistics.median(ms), float(np.percentile(ms, 90))


def startup(runs: int) -> dict:
    def cmd(args):
        return lambda: subprocess.run(args, capture_output=True, check=True)

    base = timeit(cmd([sys.executable, "-c", "pass"]), runs, warmup=2)
    helpt = timeit(cmd([sys.executable, "-m", "cxr_edge", "--help"]), runs, warmup=2)
    return {"python -c pass": summary(base), "cxr-edge --help": summary(helpt)}


def latency(model_path: Path, image: Path, runs: int) -> dict:
    from cxr_edge.interpreter import TFLiteModel
    from cxr_edge.preprocess import preprocess
    from cxr_edge.tasks import InputSpec

    model = TFLiteModel(model_path, threads=1)
    size, _, channels = model.input_shape
    spec = InputSpec(size=size, channels=channels, scale=model.inputs[0].scale or 1 / 127.5,
                     offset=-(model.inputs[0].zero_point * (model.inputs[0].scale or 1 / 127.5)))
    x = preprocess(image, spec)
    q = model.quantize(x[None], model.inputs[0])
    interp = model._interp

    def bare():
        interp.set_tensor(model.inputs[0].index, q)
        interp.invoke()

    return {"bare invoke": summary(timeit(bare, runs)),
            "wrapper run (quantize+invoke+dequantize)": summary(timeit(lambda: model.run(x), runs)),
            "decode+preprocess+run": summary(timeit(lambda: model.run(preprocess(image, spec)), runs)),
            "backend": f"{model.backend} {model.backend_version}, {model.delegate}, 1 thread"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SHARED / "weights" / "mobilenet_v2_1.0_224_quant.tflite")
    ap.add_argument("--image", type=Path, default=SHARED / "data" / "nih_cxr14" / "images" / "00000061_012.png")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    print(f"# device latency ({time.strftime('%Y-%m-%d %H:%M')}, {args.model.name})")
    s = startup(max(5, args.runs // 20))
    base = s["python -c pass"][0]
    print("\n| start-up | median ms | p90 ms | ratio to python -c pass |\n|---|---|---|---|")
    for k, (med, p90) in s.items():
        print(f"| {k} | {med:.1f} | {p90:.1f} | {med / base:.2f}x |")
    lat = latency(args.model, args.image, args.runs)
    backend = lat.pop("backend")
    base = lat["bare invoke"][0]
    print(f"\n| predict ({backend}) | median ms | p90 ms | ratio to bare invoke |\n|---|---|---|---|")
    for k, (med, p90) in lat.items():
        print(f"| {k} | {med:.2f} | {p90:.2f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
