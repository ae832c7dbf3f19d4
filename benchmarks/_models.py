"""The models the benchmarks measure: the real runs and pack when they exist, else stand-ins.

Real: ``--runs DIR`` holding ``gate/``, ``cxr4/``, ``nih14/`` training runs (their ``float.h5``
gives the Keras float rows; TFLite float32/float16/dynamic are converted from it) and
``--pack DIR`` (its int8 models are the int8 rows: exactly what ships).

Stand-in, for any task whose run or pack model is missing: the same architecture and size,
MobileNetV2 1.0 at the task's input size with one grey input channel, ImageNet backbone weights
from ``../shared/weights`` and a seeded random head, built with
:func:`cxr_edge.training.model.build_model` and converted with
:func:`cxr_edge.training.convert.convert` (int8 calibrated on 64 real CXRs). Speed and size
do not depend on the head's weights; the answers are meaningless. Every table names which
source each row used.

Conversions take ~20-60 s each on the shared 2-core machine, so everything is cached under
``$CXR_EDGE_BENCH_CACHE`` (default ``/tmp/cxr-edge-bench-cache``), keyed by the source (a
run's float.h5 size and mtime, or the stand-in recipe). Needs TensorFlow (workstation side).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _timing import shared_dir  # noqa: E402

log = logging.getLogger("benchmarks.models")

CACHE = Path(os.environ.get("CXR_EDGE_BENCH_CACHE", "/tmp/cxr-edge-bench-cache"))
TASKS = ("gate", "cxr4", "nih14")
MODES = ("float32", "float16", "dynamic", "int8")
IMAGENET_H5 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
IMAGENET_INT8 = "mobilenet_v2_1.0_224_quant.tflite"
CALIBRATION_N = 64


@dataclass(frozen=True)
class Source:
    """Where one task's models come from: a training run, or the stand-in recipe."""

    task: str
    kind: str            # "run" or "stand-in"
    path: Path | None    # the run directory (run) or the ImageNet weights file (stand-in)
    size: int
    key: str             # cache key

    @property
    def label(self) -> str:
        if self.kind == "run":
            return f"run {self.path}"
        return f"stand-in: MobileNetV2 1.0 @{self.size}, ImageNet backbone + random head"


def source(task: str, runs: Path | None = None) -> Source:
    """The run for ``task`` under ``runs`` when it has a float model, else the stand-in."""
    from cxr_edge.tasks import get_task

    run = runs / task if runs else None
    if run is not None and (run / "float.h5").is_file() and (run / "run.json").is_file():
        info = json.loads((run / "run.json").read_text())
        size = int(info.get("input", {}).get("size") or get_task(task).input.size)
        st = (run / "float.h5").stat()
        return Source(task, "run", run, size, f"run-{task}-{st.st_size}-{int(st.st_mtime)}")
    size = get_task(task).input.size
    return Source(task, "stand-in", shared_dir() / "weights" / IMAGENET_H5, size, f"standin-{task}-a1.0-{size}")


# --------------------------------------------------------------------------- Keras


def keras_model(src: Source):
    """The float tf-keras model with outputs [probs, features] (what the pack's models compute)."""
    from cxr_edge.training.model import build_model, with_feature_output
    from cxr_edge.training.tf_env import load

    _, keras = load()
    if src.kind == "run":
        from cxr_edge.training.runs import load_run

        return with_feature_output(load_run(src.path).float_model())
    cached = CACHE / f"{src.key}.h5"
    if cached.is_file():
        return keras.models.load_model(cached, compile=False)
    from cxr_edge.tasks import get_task

    keras.utils.set_random_seed(0)
    model = with_feature_output(build_model(get_task(src.task), alpha=1.0, input_size=src.size, weights=src.path))
    _atomic_save(cached, lambda tmp: model.save(tmp, save_format="h5", include_optimizer=False), ".h5")
    return model


def keras_bytes(src: Source) -> int:
    """Size of the float model file (float.h5 of the run, or the cached stand-in .h5)."""
    path = src.path / "float.h5" if src.kind == "run" else CACHE / f"{src.key}.h5"
    if not path.is_file():
        keras_model(src)
    return path.stat().st_size


# --------------------------------------------------------------------------- TFLite


def tflite(src: Source, mode: str) -> bytes:
    """The model converted to ``mode`` (cached)."""
    cached = CACHE / f"{src.key}.{mode}.tflite"
    if cached.is_file():
        return cached.read_bytes()
    from cxr_edge.training.convert import convert

    model = keras_model(src)
    rep = calibration_images(src.size) if mode == "int8" else None
    log.info("converting %s to %s (cached at %s)", src.label, mode, cached)
    content = convert(model, mode, rep)
    _atomic_save(cached, lambda tmp: Path(tmp).write_bytes(content), ".tflite")
    return content


def calibration_images(size: int, n: int = CALIBRATION_N) -> np.ndarray:
    """``n`` real NIH CXRs preprocessed for a ``size``-px model: (n, size, size, 1) float32 in [-1, 1]."""
    from cxr_edge.runtime.preprocess import preprocess
    from cxr_edge.tasks import get_task

    spec = get_task("cxr4").with_input(size=size)
    return np.stack([preprocess(p, spec) for p in real_cxrs(n)])


def real_cxrs(n: int) -> list[Path]:
    """The first ``n`` NIH images of ../shared/data, sorted (deterministic)."""
    files = sorted((shared_dir() / "data" / "nih_cxr14" / "images").glob("*.png"))
    if len(files) < n:
        raise SystemExit(f"needs {n} NIH PNGs in ../shared/data/nih_cxr14/images, found {len(files)}")
    return files[:n]


# --------------------------------------------------------------------------- pack


def bench_pack(pack: Path | None, runs: Path | None = None) -> tuple[Path, dict[str, str]]:
    """A pack to run: ``pack`` when given and loadable; else a stand-in int8 pack (cached).

    Returns the path and, per slot, what its model is.
    """
    from cxr_edge.runtime.pack import load_pack

    if pack is not None and Path(pack).exists():
        loaded = load_pack(pack)
        missing = [t for t in TASKS if t not in loaded.models]
        if not missing:
            return Path(pack), {slot: f"pack {pack} ({m.metadata.quantization.get('source', '?')} int8)"
                                for slot, m in loaded.models.items()}
        log.warning("%s lacks %s: measuring the stand-in pack instead", pack, ", ".join(missing))
    srcs = {t: source(t, runs) for t in TASKS}
    key = hashlib.sha256("|".join(s.key for s in srcs.values()).encode()).hexdigest()[:12]
    out = CACHE / f"pack-{key}"
    if not (out / "manifest.json").is_file():
        _write_standin_pack(out, srcs)
    return out, {t: f"{s.label} (int8 PTQ)" for t, s in srcs.items()}


def pack_arguments(doc: str) -> argparse.ArgumentParser:
    """An argument parser with ``--pack`` and ``--runs-dir``, described by the script's docstring."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--pack", type=Path, default=None, help="the int8 pack to measure (default: a stand-in pack)")
    ap.add_argument("--runs-dir", type=Path, default=None, help="folder with gate/ cxr4/ nih14/ training runs")
    return ap


def pack_lines(path: Path, what: dict[str, str]) -> str:
    """Which pack was measured and what each of its models is, for the printed header."""
    return "\n".join([f"pack: {path}", *(f"- {slot}: {desc}" for slot, desc in what.items())]) + "\n"


def _write_standin_pack(out: Path, srcs: dict[str, Source]) -> None:
    from cxr_edge.runtime import metadata as md
    from cxr_edge.runtime.interpreter import TFLiteModel
    from cxr_edge.tools.pack_writer import write_pack
    from cxr_edge.tasks import get_task
    from cxr_edge.training.convert import roles_from_shapes
    from cxr_edge.training.model import head_weights

    models = {}
    for task, src in srcs.items():
        spec = get_task(task).with_input(size=src.size)
        content = tflite(src, "int8")
        roles = roles_from_shapes([o.shape for o in TFLiteModel(content).outputs], spec.num_labels)
        kernel, bias = head_weights(keras_model(src))
        buf = io.BytesIO()
        np.savez(buf, kernel=kernel.astype(np.float32), bias=bias.astype(np.float32))
        # profiles: 'default' (the task's thresholds) plus 'accept-all' / 'reject-all' for the gate, so the
        # end-to-end benchmark can time both branches of gate-first with a gate that has random weights
        thresholds = {"default": {lbl: spec.default_threshold for lbl in spec.labels}}
        if task == "gate":
            thresholds.update({"accept-all": {spec.labels[0]: 0.0}, "reject-all": {spec.labels[0]: 1.01}})
        meta = md.ModelMetadata.for_task(
            spec, roles, thresholds=thresholds,
            quantization={"mode": "int8", "io_dtype": "uint8", "source": "ptq"},
            training={"note": f"benchmark {src.label}; answers are meaningless", "alpha": 1.0},
            extras={"head": {"file": "head.npz", "kernel_shape": list(kernel.shape), "features_output": "features"}})
        models[task] = (md.embed(content, meta, files={"head.npz": buf.getvalue()}), meta)
    write_pack(out, models, name="benchmark-stand-in", license="benchmark only",
               description="stand-in int8 MobileNetV2 1.0 models (ImageNet backbone, random heads) for timing",
               overwrite=True)


def _atomic_save(path: Path, write, suffix: str) -> None:
    from cxr_edge.runtime.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=suffix) as tmp:
        write(tmp)


if __name__ == "__main__":  # fill the cache ahead of a benchmark run: python benchmarks/_models.py [RUNS_DIR]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runs_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    for t in TASKS:
        s = source(t, runs_dir)
        for m in MODES:
            log.info("%s %s: %d bytes", t, m, len(tflite(s, m)))
    print(bench_pack(None, runs_dir))
