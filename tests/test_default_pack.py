"""The pack shipped inside the package: intact, measured within tolerance, described, and what predict uses."""

import csv
import hashlib
import importlib.util
import json
import shutil
import subprocess
import types
import sys
import zipfile
from pathlib import Path

import pytest

from cxr_edge.config import BUNDLED_PACK, resolve_pack
from cxr_edge.runtime.pack import SLOTS, load_pack

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "release" / "default-pack"


@pytest.fixture(scope="module")
def manifest() -> dict:
    assert (BUNDLED_PACK / "manifest.json").is_file(), (
        f"no bundled pack in {BUNDLED_PACK}: rebuild it with release/build_default_pack.py --install")
    return json.loads((BUNDLED_PACK / "manifest.json").read_text())


def test_bundled_pack_files_match_their_manifest(manifest):
    assert set(manifest["models"]) == set(SLOTS)
    for slot, entry in manifest["models"].items():
        data = (BUNDLED_PACK / entry["file"]).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"], slot
    pack = load_pack(BUNDLED_PACK)  # also checks the embedded metadata against the manifest and the registry
    assert pack.total_bytes() <= 9_000_000  # the size budget of an edge pack (issue 10): 9 MB


def test_recorded_int8_metrics_are_within_the_shipped_tolerances(manifest):
    for slot, entry in manifest["models"].items():
        metrics = entry["metadata"]["metrics"]
        policy = json.loads((REPO / "cxr_edge" / "resources" / "export" / f"{slot}.json").read_text())
        assert metrics["passed"] is True, slot
        stated = policy["check"]["tolerance"]
        assert {k: metrics["tolerance"][k] for k in stated} == stated, f"{slot}: exported under another tolerance"
        assert (metrics.get("envelope") or {}).get("kind", "none") == policy["check"].get("envelope", "none")
        for check in metrics["checks"]:
            assert check["passed"], (slot, check)
            if "allowed" in check:
                if check["drop"] > check["allowed"] + 1e-12:   # passed only as chance, and never past the limit
                    significance = policy["check"]["significance"]
                    assert check["chance"] and check["p_value"] >= significance["alpha"] == check["alpha"], (slot, check)
                    key = {"auroc": "label_auroc" if check["label"] else "mean_auroc"}.get(check["metric"], check["metric"])
                    assert check["drop"] <= check["cap"] + 1e-12 and check["cap"] <= max(
                        policy["check"]["envelope_limit"][key], check["tolerance"]), (slot, check)
                assert check["float"] - check["int8"] == pytest.approx(check["drop"], abs=1e-9)
            else:
                assert check["value"] >= check["allowed_min"], (slot, check)


def test_bundled_pack_is_calibrated_and_carries_its_guards(manifest):
    for slot, entry in manifest["models"].items():
        md = entry["metadata"]
        assert {"balanced", "screening"} <= set(md["thresholds"]) and md["default_profile"] == "balanced", slot
        assert md["temperature"] > 0 and md["temperature"] != 1.0, f"{slot}: no temperature was fitted"
        assert "ood" in md["extras"], f"{slot}: no OOD statistics"
        labels = md["labels"]
        for profile in ("balanced", "screening"):
            assert set(md["thresholds"][profile]) == set(labels)
            assert all(0.0 < t < 1.0 for t in md["thresholds"][profile].values()), (slot, profile)


def test_predict_uses_the_bundled_pack_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("CXR_EDGE_PACK", raising=False)
    monkeypatch.setenv("CXR_EDGE_CONFIG", str(tmp_path / "none.json"))
    assert resolve_pack() == (BUNDLED_PACK, "bundled default")


@pytest.mark.shared
def test_bundled_pack_predicts_a_real_cxr_and_rejects_a_photo(shared_data, tmp_path):
    cxr = shared_data / "nih_cxr14" / "images" / "00000061_012.png"
    negatives = list(csv.DictReader(open(shared_data / "noncxr" / "manifest.csv")))
    photo = shared_data / next(r["file"] for r in negatives if r["category"] == "document_page")
    env = {"CXR_EDGE_CONFIG": str(tmp_path / "none.json"), "PATH": str(Path(sys.executable).parent)}
    out = subprocess.run([sys.executable, "-m", "cxr_edge", "predict", "--json", str(cxr), str(photo)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    first, second = (json.loads(line) for line in out.stdout.splitlines())
    assert first["status"] == "ok" and first["gate"]["accepted"]
    assert set(first["cxr4"]["probabilities"]) == {"COVID-19", "Normal", "Pneumonia", "Tuberculosis"}
    assert len(first["nih14"]["probabilities"]) == 14
    assert abs(sum(first["cxr4"]["probabilities"].values()) - 1) < 1e-3
    assert second["status"] == "rejected" and second["cxr4"] is None and second["nih14"] is None


def test_model_card_says_what_the_models_are_and_are_not(manifest):
    card = (BUNDLED_PACK / "MODEL_CARD.md").read_text()
    for phrase in ("not clinical devices", "different hospitals", "The data is small", "Intended use",
                   "Out of scope", "Known failure modes", "Subgroups", "Phone photos", "95%"):
        assert phrase in card, phrase
    if any("non-commercial" in (e["metadata"]["training"]["license"].get("most_restrictive_level") or "")
           for e in manifest["models"].values()):
        assert "non-commercial use only" in card and "non-commercial" in manifest["license"]


def test_model_card_renders_from_the_committed_record(manifest, tmp_path):
    """Every number in the card comes from release/default-pack/: re-rendering gives the same card."""
    out = tmp_path / "MODEL_CARD.md"
    subprocess.run([sys.executable, str(REPO / "release" / "model_card.py"), str(RECORD), "--pack",
                    str(BUNDLED_PACK), "--out", str(out)], check=True, capture_output=True)
    assert out.read_text() == (BUNDLED_PACK / "MODEL_CARD.md").read_text()


def test_training_image_list_matches_the_models_records(manifest):
    rows = list(csv.DictReader(open(RECORD / "training_images.csv")))
    for slot, entry in manifest["models"].items():
        task = entry["metadata"]["task"]
        counts = {s: sum(1 for r in rows if r["task"] == task and r["split"] == s) for s in ("train", "val", "test")}
        assert counts == entry["metadata"]["training"]["images"], slot
    assert all(len(r["sha256"]) == 64 for r in rows)


def _build_script():
    spec = importlib.util.spec_from_file_location("build_default_pack", REPO / "release" / "build_default_pack.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def test_release_zip_holds_the_pack_that_load_pack_reads(manifest, tmp_path):
    """The permissive variant ships as a release .zip (release_zip): every file of the pack folder, read by
    load_pack as the folder is."""
    build = _build_script()
    archive = build.release_zip(BUNDLED_PACK, tmp_path / "cxr-edge-default.zip")
    again = build.release_zip(BUNDLED_PACK, tmp_path / "again.zip")
    assert again.read_bytes() == archive.read_bytes()   # the same pack, the same file: nothing new to ship
    pack = load_pack(archive)
    assert pack.manifest == manifest and sorted(pack.models) == sorted(manifest["models"])
    folder = sorted(f.name for f in BUNDLED_PACK.iterdir() if f.is_file())
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == folder


def test_reuse_takes_the_bundled_model_as_it_is_with_its_record(manifest, tmp_path):
    """--reuse nih14 (the permissive build's nih14): the very file, calibrated and guarded, in the new pack, with
    the evaluations and data record the bundled card was made from; the step is recorded and not run twice."""
    build = _build_script()
    b = build.Build(tmp_path / "b", tmp_path / "runs", "permissive", set(), 1)
    build_step = lambda: build.reuse_bundled(b, "nih14", "nih14", "cxr-edge-permissive")
    b.call("nih14-reuse", build_step)
    pack = load_pack(b.pack)
    assert pack.name == "cxr-edge-permissive" and sorted(pack.models) == ["nih14"]
    assert pack["nih14"].content == (BUNDLED_PACK / "nih14.tflite").read_bytes()
    assert pack["nih14"].metadata.thresholds.keys() == load_pack(BUNDLED_PACK)["nih14"].metadata.thresholds.keys()
    for f in ("eval/nih14-int8.json", "eval/nih14-float.json", "prepared/nih14.json"):
        assert (b.dir / f).read_bytes() == (RECORD / f).read_bytes(), f
    r = json.loads((b.dir / "build.json").read_text())
    assert r["reused"]["nih14"]["sha256"] == manifest["models"]["nih14"]["sha256"]
    assert r["reused"]["nih14"]["built_seconds"] > 0 and "nih14-reuse" in r["steps"]
    assert r["reused"]["nih14"]["evaluated_again"] is False
    b.call("nih14-reuse", lambda: pytest.fail("a finished step ran again"))


@pytest.mark.parametrize("slot, recipe, why", [
    ("gate", "gate", "not permissively licensed"),          # the default gate saw CC BY-NC-SA images
    ("cxr4", "cxr3-permissive", "trained by recipe 'cxr4'"),  # another recipe's model never stands in
])
def test_reuse_refuses_a_model_the_variant_cannot_hold(manifest, tmp_path, slot, recipe, why):
    build = _build_script()
    b = build.Build(tmp_path / "b", tmp_path / "runs", "permissive", set(), 1)
    with pytest.raises(SystemExit, match=why):
        build.reuse_bundled(b, slot, recipe, "cxr-edge-permissive")
    assert not b.pack.exists()


def test_reuse_evaluates_again_a_model_whose_record_is_of_another_file(manifest, tmp_path, monkeypatch):
    """The int8 evaluation copied with a reused model must be of that very file. One of another file (the bundled
    gate got its orientation head after it was evaluated) is not copied, and the build is told to evaluate the
    model again; the record of its training (float evaluation, data) still comes along."""
    build = _build_script()
    record = tmp_path / "record"
    shutil.copytree(RECORD, record)
    ev = json.loads((record / "eval" / "nih14-int8.json").read_text())
    ev["model"]["sha256"] = "0" * 64
    (record / "eval" / "nih14-int8.json").write_text(json.dumps(ev))
    monkeypatch.setattr(build, "RECORD_OF_BUNDLED", record)
    b = build.Build(tmp_path / "b", tmp_path / "runs", "permissive", set(), 1)
    build.reuse_bundled(b, "nih14", "nih14", "cxr-edge-permissive")
    assert not (b.dir / "eval" / "nih14-int8.json").exists()
    assert (b.dir / "eval" / "nih14-float.json").read_bytes() == (record / "eval" / "nih14-float.json").read_bytes()
    assert b.info["reused"]["nih14"]["evaluated_again"] is True
    assert load_pack(b.pack)["nih14"].content == (BUNDLED_PACK / "nih14.tflite").read_bytes()


def test_a_refused_export_stops_the_build_and_says_how_to_finish_it(tmp_path, capsys):
    """cxr-edge export exits 3 when the int8 check refuses (a retrained cxr4 did on 2026-12-07): the build stops at
    that step, does not mark it done, and says the bundled pack is untouched and how to finish with --reuse."""
    build = _build_script()
    b = build.Build(tmp_path / "b", tmp_path / "runs", "default", set(), 1)
    refuse = [sys.executable, "-c", "import sys; print('int8 check FAILED: agreement 0.9626 < 0.9744'); sys.exit(3)"]
    with pytest.raises(SystemExit) as stop:
        b.step("cxr4-export", refuse, advice={3: build.refused_advice("cxr4", "cxr4")})   # as main() calls it
    assert stop.value.code == 3
    out = capsys.readouterr().out
    assert "agreement 0.9626 < 0.9744" in out                      # the export's own reason, from its log
    assert "bundled pack is as it was" in out and "--reuse cxr4" in out
    assert not (b.dir / "steps" / "cxr4-export.done").exists()
    assert json.loads((b.dir / "build.json").read_text())["steps"]["cxr4-export"]["returncode"] == 3
    with pytest.raises(SystemExit):
        b.step("cxr4-train", [sys.executable, "-c", "import sys; sys.exit(1)"])
    assert "--reuse" not in capsys.readouterr().out                # only a refused int8 check gets that advice
    with pytest.raises(SystemExit):                                 # the advice names the slot, not the recipe
        b.step("cxr3-permissive-export", refuse, advice={3: build.refused_advice("cxr4", "cxr3-permissive")})
    out = capsys.readouterr().out
    assert "--reuse cxr4" in out and "recipe 'cxr3-permissive'" in out and "--reuse cxr3" not in out


def test_training_image_list_keeps_a_reused_models_rows(tmp_path):
    out = tmp_path / "images.csv"
    subprocess.run([sys.executable, str(REPO / "release" / "training_images.py"), "--out", str(out), "--keep",
                    f"nih14={RECORD / 'training_images.csv'}"], check=True, capture_output=True)
    rows = list(csv.reader(open(out)))
    record = [r for r in csv.reader(open(RECORD / "training_images.csv")) if r[0] == "nih14"]
    assert rows[1:] == sorted(record) and len(record) > 1000
    bad = subprocess.run([sys.executable, str(REPO / "release" / "training_images.py"), "--out", str(out),
                          "--keep", "nih14"], capture_output=True, text=True)
    assert bad.returncode != 0 and "expected TASK=CSV" in bad.stderr


def test_model_card_says_which_model_a_build_reused(manifest, tmp_path):
    """A card of a build that took a model from the bundled pack says so, and names the command that built it."""
    record = tmp_path / "record"
    shutil.copytree(RECORD, record)
    info = json.loads((record / "build.json").read_text())
    info["command"] = ["release/build_default_pack.py", "--variant", "permissive", "--reuse", "nih14"]
    info["reused"] = {"nih14": {"sha256": manifest["models"]["nih14"]["sha256"], "recipe": "nih14",
                                "record": "release/default-pack", "built_seconds": 3390.7}}
    (record / "build.json").write_text(json.dumps(info))
    out = tmp_path / "MODEL_CARD.md"
    subprocess.run([sys.executable, str(REPO / "release" / "model_card.py"), str(record), "--pack",
                    str(BUNDLED_PACK), "--out", str(out)], check=True, capture_output=True)
    card = out.read_text()
    assert "release/build_default_pack.py --variant permissive --reuse nih14" in card
    assert "The nih14 model was not trained by this build" in card and "took 57 minutes" in card


def test_model_card_names_a_model_the_int8_check_refused(manifest, tmp_path):
    """A build whose 3-class model failed its int8 check ships a pack without it; the card says so, with the
    numbers, instead of describing a model that is not there."""
    record, pack = tmp_path / "record", tmp_path / "pack"
    shutil.copytree(RECORD, record)
    pack.mkdir()
    slim = {**manifest, "models": {k: v for k, v in manifest["models"].items() if k != "cxr4"}}
    (pack / "manifest.json").write_text(json.dumps(slim))
    report = {"task": "cxr3", "passed": False, "data": {"n": 204},
              "check_views": {"films": 204, "shifts": [[0, 0], [0, 1], [0, -1], [1, 0], [-1, 0]]},
              "candidates": {"qat": {"checks": [
                  {"metric": "accuracy", "passed": False, "float": 0.8314, "int8": 0.8216, "drop": 0.0098,
                   "allowed": 0.005},
                  {"metric": "macro_f1", "passed": True, "float": 0.85, "int8": 0.84, "drop": 0.01, "allowed": 0.02},
                  {"metric": "agreement", "passed": False, "value": 0.9461, "allowed_min": 0.9608}]},
                  "ptq": {"checks": [
                  {"metric": "agreement", "passed": False, "value": 0.9656, "allowed_min": 0.9744, "p_value": 0.027,
                   "chance": False, "cap": 0.96, "int8_changes": 0.0344, "shift_changes": 0.0191}]}}}
    (record / "eval" / "cxr4-export.json").write_text(json.dumps(report))
    out = tmp_path / "MODEL_CARD.md"
    subprocess.run([sys.executable, str(REPO / "release" / "model_card.py"), str(record), "--pack", str(pack),
                    "--out", str(out)], check=True, capture_output=True)
    card = out.read_text()
    assert "## Trained but not shipped" in card
    assert "| cxr4 | `cxr3` | QAT | 204 films x 5 views | accuracy 0.831 -> 0.822 (drop 0.010 > 0.005); " \
           "agreement 0.946 < 0.961 |" in card
    assert "| cxr4 | `cxr3` | PTQ | 204 films x 5 views | agreement 0.966 < 0.974, not chance: int8 changed 3.4% of " \
           "decisions, a one-pixel shift 1.9%, p 0.027 |" in card
    assert "two int8 MobileNetV2" in card and "4-class model (COVID-19" not in card.split("## Out of scope")[0]


def test_permissive_pack_is_published_with_the_card_its_record_renders(tmp_path):
    """release/permissive-pack/: the commercial-use pack as one .zip that load_pack reads, trained only on
    permissively licensed images, and its model card, which re-renders from the committed record."""
    folder = REPO / "release" / "permissive-pack"
    pack = load_pack(folder / "cxr-edge-permissive.zip")
    assert pack.name == "cxr-edge-permissive" and sorted(pack.models) == ["gate", "nih14"]
    for slot, m in pack.models.items():
        assert m.metadata.training["license"]["permissive_only"] is True, slot
    assert "non-commercial" not in pack.manifest["license"]
    unpacked = tmp_path / "pack"
    unpacked.mkdir()
    (unpacked / "manifest.json").write_text(json.dumps(pack.manifest))
    out = tmp_path / "MODEL_CARD.md"
    subprocess.run([sys.executable, str(REPO / "release" / "model_card.py"), str(folder), "--pack", str(unpacked),
                    "--out", str(out)], check=True, capture_output=True)
    card = (folder / "MODEL_CARD.md").read_text()
    assert out.read_text() == card
    with zipfile.ZipFile(folder / "cxr-edge-permissive.zip") as zf:
        assert zf.read("MODEL_CARD.md").decode() == card
    assert "permissive (every training image allows commercial use)" in card and "## Trained but not shipped" in card


def test_a_reused_model_is_evaluated_again_only_on_its_own_data(tmp_path):
    build = _build_script()
    (tmp_path / "prepared.json").write_text(json.dumps({"data_sha256": "a" * 64}))
    build.same_data(tmp_path, "a" * 64, "gate")
    with pytest.raises(SystemExit, match="other data .* its test split would not be its own"):
        build.same_data(tmp_path, "b" * 64, "gate")


def test_a_build_that_reused_models_keeps_their_staged_rows(tmp_path):
    """The card's staged-vs-head-only table still lists a reused model: its row comes from the bundled record."""
    build = _build_script()
    path = tmp_path / "staged.json"
    path.write_text(json.dumps([{"run": "/x/runs/cxr4", "task": "cxr4", "results": {}}]))
    build.keep_staged_rows(path, ["gate", "nih14"])
    rows = json.loads(path.read_text())
    assert [Path(r["run"]).name for r in rows] == ["gate", "cxr4", "nih14"]
    bundled = {Path(r["run"]).name: r for r in json.loads((RECORD / "eval" / "staged_vs_head_only.json").read_text())}
    assert rows[0] == bundled["gate"] and rows[2] == bundled["nih14"]
    build.keep_staged_rows(path, ["gate", "nih14"])                      # run again: nothing doubled
    assert len(json.loads(path.read_text())) == 3


def test_model_card_says_which_check_passed_as_chance():
    """A model whose agreement (or a drop) passed only as chance says so in the card, with both change rates."""
    spec = importlib.util.spec_from_file_location("model_card_under_test", REPO / "release" / "model_card.py")
    card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card)
    agreement = {"metric": "agreement", "label": None, "value": 0.9626, "allowed_min": 0.9744, "passed": True,
                 "p_value": 0.31, "films": 273, "chance": True, "int8_changes": 0.0374, "shift_changes": 0.018}
    drop = {"metric": "accuracy", "label": None, "drop": 0.0103, "allowed": 0.005, "passed": True, "p_value": 0.106,
            "films": 273, "chance": True}
    verdict = card.check_verdict({"passed": True, "checks": [agreement, drop]})
    assert verdict.startswith("passed (agreement 0.9626 below its 0.9744, within chance: int8 changed 3.7% of "
                              "decisions, a one-pixel shift 1.8%, p 0.31 over 273 films")
    assert "accuracy drop 0.0103 past its 0.0050, within chance: p 0.11 over 273 films" in verdict
    assert card.check_verdict({"passed": False, "checks": [dict(agreement, passed=False, chance=False)]}) == "FAILED"


def test_model_card_says_how_the_gate_threshold_was_chosen():
    """A gate calibrated on photos (calibrate --photos) is described from its record; the bundled one's wording stays."""
    spec = importlib.util.spec_from_file_location("model_card_under_test", REPO / "release" / "model_card.py")
    card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card)

    def build(profile):
        meta = {"extras": {"posthoc_calibration": {"profiles": {"balanced": profile}}}}
        return types.SimpleNamespace(models={"gate": {}}, meta=lambda slot: meta)

    photos = build({"rule": "sensitivity:0.99", "data": {"photos": {"severity": "moderate", "n": 347}}})
    text = card.gate_rule(photos)
    assert "chosen by `sensitivity:0.99`" in text and "simulated moderate phone photo" in text
    assert "Youden" not in text
    assert "keeps its Youden threshold" in card.gate_rule(build({"rule": "youden", "data": {}}))
