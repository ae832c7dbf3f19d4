"""Single-image predict latency and CLI start-up, with same-run baselines.

Run:  .venv/bin/python benchmarks/device_latency.py [--model M.tflite] [--image IMG] [--runs 200] \
          [--pack PACK]

Defaults use ../shared: the real int8 ImageNet MobileNetV2 1.0 224 (the same
architecture as the cxr-edge models) and a 256-px NIH PNG. Prints medians and
ratios against baselines measured in this run (`python -c pass` for start-up;
the bare interpreter invoke for predict), because absolute times drift on
shared machines. Both tables run their rows in interleaved rounds. Start-up runs `python -c pass`, `cxr-edge --help` and, with
``--pack``, a first prediction (`cxr-edge predict IMAGE`) in interleaved rounds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import REPO, header, interleave, timed  # noqa: E402

SHARED = REPO.parent / "shared"


def startup(runs: int, pack: Path | None = None, image: Path | None = None) -> dict:
    """{command: (median ms, p90 ms)}: python -c pass, cxr-edge --help (and a first prediction), interleaved."""
    from cxr_edge.tools.bench.harness import cli_command, run_child

    cmd = cli_command()
    commands = {"python -c pass": [sys.executable, "-c", "pass"], "cxr-edge --help": cmd + ["--help"]}
    if pack is not None:
        commands["cxr-edge predict (first prediction)"] = cmd + ["predict", "--json", "--pack", str(pack), str(image)]

    def measure(args):
        return lambda n: [run_child(args)[0] * 1e3 for _ in range(n)]

    stats = interleave({k: measure(a) for k, a in commands.items()}, rounds=runs, runs=1)
    return {k: (s.median, s.p90) for k, s in stats.items()}


def latency(model_path: Path, image: Path, runs: int) -> dict:
    from cxr_edge.runtime.interpreter import TFLiteModel
    from cxr_edge.runtime.preprocess import preprocess
    from cxr_edge.tasks import InputSpec

    model = TFLiteModel(model_path, threads=1)
    size, _, channels = model.input_shape
    spec = InputSpec(size=size, channels=channels, scale=model.inputs[0].scale or 1 / 127.5,
                     offset=-(model.inputs[0].zero_point * (model.inputs[0].scale or 1 / 127.5)))
    x = preprocess(image, spec)
    q = model.quantize(x[None], model.inputs[0])
    interp = model.interpreter

    def bare():
        interp.set_tensor(model.inputs[0].index, q)
        interp.invoke()

    stats = interleave({"bare invoke": timed(bare),
                        "wrapper run (quantize+invoke+dequantize)": timed(lambda: model.run(x)),
                        "decode+preprocess+run": timed(lambda: model.run(preprocess(image, spec)))},
                       rounds=10, runs=max(1, runs // 10), warmup=10)
    out = {k: (s.median, s.p90) for k, s in stats.items()}
    out["backend"] = f"{model.backend} {model.backend_version}, {model.delegate}, 1 thread"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SHARED / "weights" / "mobilenet_v2_1.0_224_quant.tflite")
    ap.add_argument("--image", type=Path, default=SHARED / "data" / "nih_cxr14" / "images" / "00000061_012.png")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--pack", type=Path, default=None, help="a pack, to time a first prediction too")
    args = ap.parse_args()
    print(header(f"Device latency: start-up and one image ({args.model.name})"))
    s = startup(max(5, args.runs // 20), args.pack, args.image)
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
