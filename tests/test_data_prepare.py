"""prepare on real images: reproducible bytes, corrupt files counted, resume/refuse/force, the reader API, the CLI."""

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cxr_edge.cli import main
from cxr_edge.data.prepare import PrepareConfig, prepare
from cxr_edge.data.prepared import open_prepared
from cxr_edge.data.sources import SourceSpec
from cxr_edge.data.splits import SplitConfig
from cxr_edge.errors import DataError
from cxr_edge.runtime.preprocess import fit_to_square


def _nih_config(shared_data, **kw):
    base = dict(task="nih14", sources=(SourceSpec(str(shared_data / "nih_cxr14/manifest.csv")),),
                split=SplitConfig(official_test=True, sample_fraction=0.12, seed=1), size=32,
                duplicates=(str(shared_data / "duplicates.csv"),), shard_size=64)
    base.update(kw)
    return PrepareConfig(**base)


@pytest.fixture(scope="module")
def nih_small(shared_data, tmp_path_factory):
    return prepare(_nih_config(shared_data), tmp_path_factory.mktemp("prep") / "nih14")


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.parent.name in ("splits", "cache")}


def test_reader_api_and_contract(nih_small, shared_data):
    p = nih_small
    assert p.task.name == "nih14" and p.task.input.size == 32 and p.splits == ("train", "val", "test")
    info = p.info
    assert info["complete"] is True and info["labels"] == list(p.task.labels)
    assert info["split"]["official_test"] and info["split"]["sampled_out_images"] > 0
    for split in p.splits:
        t = p.table(split)
        assert t.column_names[:2] == ["path", "patient_id"] and t.column_names[2:16] == list(p.task.labels)
        for col in ("sex", "age", "view", "dataset", "license", "permissive", "sha256"):
            assert col in t
        x, y = p.images(split), p.labels(split)
        assert x.shape == (len(t), 32, 32) and x.dtype == np.uint8 and y.shape == (len(t), 14) and y.dtype == np.float32
        assert len(p.patients(split)) == len(t)
        assert info["counts"][split]["images"] == len(t)
        assert info["counts"][split]["labels"]["Hernia"] == int(y[:, 13].sum())
    # the cache holds exactly fit_to_square of the original file
    row = p.table("test").rows()[3]
    assert np.array_equal(p.images("test")[3], fit_to_square(row["path"], p.task))
    # every test image is on the official test list
    official = {r["file"].split("/")[-1] for r in csv.DictReader(open(shared_data / "nih_cxr14/manifest.csv"))
                if r["official_split"] == "test"}
    assert {path.split("/")[-1] for path in p.table("test")["path"]} <= official
    # no patient in two splits
    sets = [set(p.patients(s)) for s in p.splits]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert info["split"]["patients_in_two_splits"] == 0
    assert p.pos_weights.shape == (14,) and p.class_weights.shape == (14,) and np.all(p.pos_weights > 0)
    for kind in ("unknown_labels", "missing_files", "duplicate_rows", "corrupt_images"):
        assert kind in info["warnings"]
    assert info["licenses"]["permissive_only"] and info["permissive_only"]
    p.verify()


def test_rerun_is_byte_identical(nih_small, shared_data, tmp_path):
    again = prepare(_nih_config(shared_data), tmp_path / "again")
    assert again.data_sha256 == nih_small.data_sha256
    assert _files(again.path) == _files(nih_small.path)


def test_same_parameters_are_up_to_date_other_parameters_refused(nih_small, shared_data):
    before = (nih_small.path / "prepared.json").read_bytes()
    assert prepare(_nih_config(shared_data), nih_small.path).data_sha256 == nih_small.data_sha256
    assert (nih_small.path / "prepared.json").read_bytes() == before  # nothing rewritten
    with pytest.raises(DataError, match="different parameters.*split"):
        prepare(_nih_config(shared_data, split=SplitConfig(official_test=True, sample_fraction=0.12, seed=2)),
                nih_small.path)


def test_force_rebuilds_and_swaps(shared_data, tmp_path):
    out = tmp_path / "p"
    prepare(_nih_config(shared_data, split=SplitConfig(sample_fraction=0.05)), out)
    rebuilt = prepare(_nih_config(shared_data, split=SplitConfig(sample_fraction=0.05, seed=9)), out, force=True)
    assert rebuilt.info["split"]["seed"] == 9 and rebuilt.path == out
    assert sorted(x.name for x in tmp_path.iterdir()) == ["p"]  # temp and old folders gone


def test_interrupted_prepare_resumes(shared_data, tmp_path):
    config = _nih_config(shared_data, split=SplitConfig(sample_fraction=0.1), shard_size=32)
    out = tmp_path / "p"

    class Stop(Exception):
        pass

    def stop_after_two_shards(done, total):
        if done >= 64:
            raise Stop

    with pytest.raises(Stop):
        prepare(config, out, progress=stop_after_two_shards)
    with pytest.raises(DataError, match="did not finish"):
        open_prepared(out)
    p = prepare(config, out)
    assert p.info["build"]["mode"] == "resume" and p.info["build"]["resumed_shards"] == 2
    assert p.info["build"]["built_shards"] == len(p.info["cache"]["shards"]) - 2
    fresh = prepare(config, tmp_path / "fresh")
    assert fresh.data_sha256 == p.data_sha256


def test_corrupt_images_are_reported_and_skipped(shared_data, tmp_path):
    src = sorted((shared_data / "nih_cxr14/images").glob("*.png"))[:12]
    rows = []
    for i, f in enumerate(src):
        dst = tmp_path / f.name
        shutil.copy(f, dst)
        rows.append([str(dst), "Normal" if i % 2 else "Pneumonia", f"p{i}"])
    data = (tmp_path / src[0].name).read_bytes()
    (tmp_path / src[0].name).write_bytes(data[: len(data) // 2])   # truncated
    (tmp_path / src[1].name).write_bytes(b"this is not a png at all")  # not an image
    (tmp_path / src[2].name).write_bytes(b"")                        # empty
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "label", "patient_id"], *rows])
    p = prepare(PrepareConfig(task="cxr4", sources=(SourceSpec(str(tmp_path / "m.csv")),), size=32,
                              split=SplitConfig(fractions=(0.5, 0.25, 0.25))), tmp_path / "out")
    w = p.info["warnings"]["corrupt_images"]
    assert w["count"] == 3 and set(w["by"]) == {"truncated", "not_an_image", "empty"}
    assert sum(p.info["counts"][s]["images"] for s in ("train", "val", "test")) == 9
    used = {path for s in p.splits for path in p.table(s)["path"]}
    assert str(tmp_path / src[0].name) not in used
    excluded = list(csv.DictReader(open(p.path / "excluded.csv")))
    assert sum(r["reason"] == "corrupt_images" for r in excluded) == 3


def test_cli_prepare_and_report(shared_data, tmp_path):
    out = tmp_path / "cxr4"
    r = CliRunner().invoke(main, ["data", "prepare", "cxr4", "--source", str(shared_data / "cxr4/manifest.csv"),
                                  "--duplicates", str(shared_data / "duplicates.csv"), "--fraction", "0.06",
                                  "--size", "32", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "Tuberculosis" in r.output and "patients" in r.output
    info = json.loads((out / "prepared.json").read_text())
    assert not info["permissive_only"] and "NC" in info["licenses"]["most_restrictive"]
    r = CliRunner().invoke(main, ["data", "report", str(out)])
    assert r.exit_code == 0, r.output
    pngs = sorted(x.name for x in (out / "report").glob("*.png"))
    assert {"label_distribution.png", "cooccurrence.png", "patients.png", "demographics.png",
            "labels_by_dataset.png", "class_weights.png", "samples.png"} <= set(pngs)
    for name in pngs:
        assert (out / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report" / "index.html").read_text()
    assert "cooccurrence.png" in html and "Tuberculosis" in html


@pytest.mark.parametrize("args, message", [
    (["--source", "/no/such/manifest.csv"], "no such file"),
    (["--positives", "/tmp"], "for the gate task"),
    (["--source", "{bad}"], "no label column"),
    (["--source", "{bad}", "--split", "0.5,0.5"], "three numbers"),
])
def test_cli_bad_source_is_a_clean_error(tmp_path, args, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,comment\na.png,x\n")
    args = [a.replace("{bad}", str(bad)) for a in args]
    r = CliRunner().invoke(main, ["data", "prepare", "cxr4", *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_redistributable_only_leaves_out_research_only_images_and_says_so(shared_data, tmp_path):
    rows = list(csv.DictReader(open(shared_data / "gate" / "manifest.csv")))
    restricted = [r for r in rows if "challenge data terms" in r["license"] or "Montgomery" in r["license"]]
    assert len(restricted) == 2
    keep = restricted + [r for r in rows if r["is_cxr"] == "1"][:24] + [r for r in rows if r["is_cxr"] == "0"][:12]
    manifest = tmp_path / "gate.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "file": str(shared_data / r["file"])} for r in keep)
    config = PrepareConfig(task="gate", sources=(SourceSpec(str(manifest)),), size=32, redistributable_only=True,
                           split=SplitConfig(fractions=(0.6, 0.2, 0.2)))
    p = prepare(config, tmp_path / "out")
    used = {path for s in p.splits for path in p.table(s)["path"]}
    assert not any(r["file"].split("/")[-1] in " ".join(used) for r in restricted)
    assert len(used) == len(keep) - 2
    excluded = list(csv.DictReader(open(p.path / "excluded.csv")))
    assert sum(r["reason"] == "not_redistributable" for r in excluded) == 2
    assert p.info["redistributable_filter"] is True


def test_nih15_trains_no_finding_as_its_15th_label(shared_data, tmp_path):
    p = prepare(_nih_config(shared_data, task="nih15"), tmp_path / "nih15")
    assert p.task.labels[-1] == "No Finding" and p.labels("train").shape[1] == 15
    rows = {r["file"].split("/")[-1]: r for r in csv.DictReader(open(shared_data / "nih_cxr14/manifest.csv"))}
    for split in p.splits:
        names = [str(f).split("/")[-1] for f in p.table(split)["path"]]
        y = p.labels(split)
        expected = np.array([rows[n]["No Finding"] == "1" for n in names])
        np.testing.assert_array_equal(y[:, -1] == 1, expected)
        assert not (y[:, -1] == 1)[y[:, :-1].sum(1) > 0].any()     # never beside a finding
    with pytest.raises(DataError, match="has 'No Finding' as a label already"):
        prepare(_nih_config(shared_data, task="nih15", no_finding=True), tmp_path / "again")
