"""tf.distribute: --strategy mirrored on this machine's CPU, and two MultiWorkerMirroredStrategy workers on
localhost (TF_CONFIG, CPU) training the tiny recipe together; the chief writes the run, the other nothing."""

import json
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("tf_keras", reason="needs the [train] extra (TensorFlow, tf-keras)")

from cxr_edge.errors import RecipeError  # noqa: E402
from cxr_edge.training.runs import load_run  # noqa: E402
from test_train import TINY, tiny_recipe  # noqa: E402

# the shortest run that still exercises both kinds of stage: cached head, then one full-model stage
SHORT = {"stages[0].epochs": 1, "stages[1].epochs": 1, "stages[2].epochs": 0, "train.steps_per_epoch": 2,
         "train.run_eagerly": False}


@pytest.fixture(scope="module")
def prepared_dir(shared_dir, tmp_path_factory):
    from cxr_edge.training.trainer import ensure_data

    path = tmp_path_factory.getbasetemp() / "tiny_prepared"
    ensure_data(tiny_recipe(path))
    return path


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multiworker_needs_tf_config(monkeypatch):
    from cxr_edge.training.trainer import Distribution

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(RecipeError, match="TF_CONFIG.*train/README.md"):
        Distribution("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(RecipeError, match="TF_CONFIG is not valid"):
        Distribution("multiworker")


@pytest.mark.slow
@pytest.mark.shared
def test_mirrored_strategy_trains(prepared_dir, tmp_path):
    from cxr_edge.training.trainer import train

    run = train(tiny_recipe(prepared_dir, **SHORT), tmp_path / "mirrored", strategy="mirrored", verbose=0)
    assert run.info["strategy"] == "mirrored" and run.info["replicas"] >= 1 and run.info["status"] == "complete"
    assert run.info["epochs_done"] == 2
    run.float_model()


@pytest.mark.slow
@pytest.mark.shared
def test_two_workers_on_localhost_train_together(prepared_dir, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    out = tmp_path / "mw"
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        args = [sys.executable, "-m", "cxr_edge", "train", str(TINY), "--strategy", "multiworker",
                "--out", str(out), "--data-dir", str(prepared_dir)]
        for k, v in SHORT.items():
            args += ["--set", f"{k}={json.dumps(v)}"]
        log = open(tmp_path / f"worker{index}.log", "w")  # files, not pipes: a full pipe would stall a
        procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))  # worker mid-collective
    try:
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    assert "worker finished (the chief writes the run directory)" in outputs[1]
    run = load_run(out)
    assert run.info["status"] == "complete" and run.info["strategy"] == "multiworker"
    assert run.info["replicas"] == 2  # one CPU replica per worker, in sync
    hist = json.loads((out / "history.json").read_text())["epochs"]
    assert [r["stage"] for r in hist] == ["head", "top"]
    run.float_model()
