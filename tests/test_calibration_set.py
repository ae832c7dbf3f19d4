"""Calibration sets: stratified, seeded, reproducible manifests relative to the data root, verified at load."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_evaluate import _root, cxr4_48, small_prepared  # noqa: F401 (fixture)

from cxr_edge.tools.ptq_set import (NONE_STRATUM, ROOT_ENV, _allocate, build_calibration_set,
                                      load_calibration_set, resolve_data_root, set_sha256, write_calibration_set)
from cxr_edge.cli import main
from cxr_edge.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cxr4_small(cxr4_48):
    return cxr4_48


@pytest.fixture(scope="module")
def nih_small(shared_data, tmp_path_factory):
    return small_prepared(shared_data, _root(tmp_path_factory), "nih14", 48, 0.3)


@pytest.fixture(autouse=True)
def _no_root_env(monkeypatch):
    monkeypatch.delenv(ROOT_ENV, raising=False)
    monkeypatch.delenv("CXR_EDGE_SHARED", raising=False)


def test_allocation_is_proportional_with_one_per_stratum():
    share = _allocate({"a": 259, "b": 731, "c": 742, "d": 493}, 300)
    assert sum(share.values()) == 300 and share == {"a": 35, "b": 99, "c": 100, "d": 66}
    assert _allocate({"rare": 2, "big": 1000, "odd": 3}, 10) == {"rare": 1, "big": 8, "odd": 1}
    assert _allocate({"a": 3, "b": 4}, 50) == {"a": 3, "b": 4}          # fewer images than asked: all of them
    assert sum(_allocate({f"x{i}": i + 1 for i in range(15)}, 50).values()) == 50


def test_build_is_stratified_seeded_and_reproducible(cxr4_small, shared_data, tmp_path):
    a = build_calibration_set(cxr4_small, split="train", n=40, seed=3, data_root=shared_data)
    b = build_calibration_set(cxr4_small, split="train", n=40, seed=3, data_root=shared_data)
    c = build_calibration_set(cxr4_small, split="train", n=40, seed=4, data_root=shared_data)
    assert a.n == 40 and a.files == b.files and a.sha256 == b.sha256 and a.sha256 != c.sha256
    assert all(not f.startswith("/") and (shared_data / f).is_file() for f in a.files)
    counts = a.labels.sum(axis=0)
    available = cxr4_small.labels("train").sum(axis=0)
    expected = 40 * available / available.sum()
    assert (counts >= 1).all() and np.all(np.abs(counts - expected) <= 1.5)
    first = write_calibration_set(a, tmp_path / "one" / "cxr4.csv")
    second = write_calibration_set(b, tmp_path / "two" / "cxr4.csv")
    for suffix in (".csv", ".json"):   # rebuilding gives byte-identical files (no timestamps)
        assert first.with_suffix(suffix).read_bytes() == second.with_suffix(suffix).read_bytes()
    loaded = load_calibration_set(first)
    assert loaded.sha256 == a.sha256 and loaded.files == a.files and (loaded.labels == a.labels).all()
    assert loaded.record()["split"] == "train" and loaded.record()["n"] == 40


def test_multilabel_strata_use_the_rarest_positive_label(nih_small, shared_data):
    cs = build_calibration_set(nih_small, split="train", n=60, seed=0, data_root=shared_data)
    strata = cs.info["strata"]
    assert NONE_STRATUM in strata and set(strata) <= set(cs.spec.labels) | {NONE_STRATUM}
    assert all(1 <= s["chosen"] <= s["available"] for s in strata.values())
    assert sum(s["chosen"] for s in strata.values()) == cs.n == 60


def test_test_split_and_bad_arguments_are_refused(cxr4_small, shared_data, tmp_path):
    with pytest.raises(DataError, match="not 'test'"):
        build_calibration_set(cxr4_small, split="test", data_root=shared_data)
    with pytest.raises(DataError, match="at least 1"):
        build_calibration_set(cxr4_small, n=0, data_root=shared_data)
    with pytest.raises(DataError, match="not under the data root"):
        build_calibration_set(cxr4_small, n=5, data_root=tmp_path)
    everything = build_calibration_set(cxr4_small, split="val", n=10_000, data_root=shared_data)
    assert everything.n == len(cxr4_small.table("val"))


def test_set_hash_ignores_order_and_paths():
    assert set_sha256(["b" * 64, "a" * 64]) == set_sha256(["a" * 64, "b" * 64]) != set_sha256(["a" * 64])


def test_load_refuses_edited_manifests_and_changed_or_missing_files(cxr4_small, shared_data, tmp_path):
    cs = build_calibration_set(cxr4_small, n=12, seed=0, data_root=shared_data)
    path = write_calibration_set(cs, tmp_path / "cal" / "cxr4.csv")
    # a copy of the data root with one image changed and one missing
    root = tmp_path / "root"
    for f in cs.files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / f, root / f)
    x = load_calibration_set(path).inputs(cxr4_small.task, root)
    assert x.shape == (12, 48, 48, 1) and x.dtype == np.float32 and -1 <= x.min() < x.max() <= 1
    (root / cs.files[0]).write_bytes((root / cs.files[0]).read_bytes() + b"\0")
    (root / cs.files[1]).unlink()
    with pytest.raises(DataError) as err:
        load_calibration_set(path).read(root)
    msg = str(err.value)
    assert "1 file(s) missing" in msg and cs.files[1] in msg and "sha256 differs" in msg and cs.files[0] in msg
    assert "--data-root" in msg and "calibration build" in msg
    # hand-editing the manifest is caught by the sidecar's hash
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="edited after it was built"):
        load_calibration_set(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(DataError, match="no sidecar"):
        load_calibration_set(path)
    with pytest.raises(DataError, match="does not exist"):
        load_calibration_set(tmp_path / "nope.csv")


def test_data_root_resolution(tmp_path, monkeypatch, shared_data):
    assert resolve_data_root(shared_data) == shared_data.resolve()
    with pytest.raises(DataError, match="--data-root"):
        resolve_data_root(tmp_path / "missing")
    monkeypatch.setenv(ROOT_ENV, str(shared_data))
    assert resolve_data_root() == shared_data.resolve()
    monkeypatch.delenv(ROOT_ENV)
    # a manifest in <repo>/calibration_data/ finds <repo>/../shared/data
    repo = tmp_path / "parent" / "repo"
    (repo / "calibration_data").mkdir(parents=True)
    (tmp_path / "parent" / "shared" / "data").mkdir(parents=True)
    found = resolve_data_root(None, repo / "calibration_data" / "x.csv")
    assert found == (tmp_path / "parent" / "shared" / "data").resolve()
    with pytest.raises(DataError, match=ROOT_ENV):
        resolve_data_root(None, tmp_path / "elsewhere" / "x.csv")


def test_cli_build_and_verify(cxr4_small, shared_data, tmp_path):
    out = tmp_path / "cxr4.csv"
    args = ["calibration", "build", str(cxr4_small.path), "--n", "20", "--seed", "1", "--out", str(out),
            "--data-root", str(shared_data)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "20 images from train" in res.output and "set sha256" in res.output and out.is_file()
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "--force" in res.output
    res = CliRunner().invoke(main, ["calibration", "verify", str(out), "--data-root", str(shared_data)])
    assert res.exit_code == 0 and "all present with matching sha256" in res.output
    res = CliRunner().invoke(main, ["calibration", "build", str(cxr4_small.path), "--split", "test", "--out",
                                    str(tmp_path / "t.csv")])
    assert res.exit_code == 2 and not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("task", ["gate", "cxr4", "nih14"])
def test_committed_manifests_are_valid_and_their_files_exist(task, shared_data):
    path = REPO / "cxr_edge" / "resources" / "calibration_data" / f"{task}.csv"
    if not path.is_file():
        pytest.skip(f"{path} not built yet")
    cs = load_calibration_set(path)
    info = json.loads(path.with_suffix(".json").read_text())
    assert cs.task == task and cs.n >= 300 and info["source"]["split"] != "test"
    assert all(not f.startswith("/") for f in cs.files)   # nothing machine-specific
    cs.read(shared_data)                                  # every file present with its sha256
