"""The pack shipped inside the package: intact, measured within tolerance, described, and what predict uses."""

import csv
import hashlib
import importlib.util
import json
import subprocess
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
                assert check["drop"] <= check["allowed"] + 1e-12, (slot, check)
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


def test_release_zip_holds_the_pack_that_load_pack_reads(manifest, tmp_path):
    """The permissive variant ships as a release .zip (release_zip): every file of the pack folder, read by
    load_pack as the folder is."""
    spec = importlib.util.spec_from_file_location("build_default_pack", REPO / "release" / "build_default_pack.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    archive = build.release_zip(BUNDLED_PACK, tmp_path / "cxr-edge-default.zip")
    pack = load_pack(archive)
    assert pack.manifest == manifest and sorted(pack.models) == sorted(manifest["models"])
    folder = sorted(f.name for f in BUNDLED_PACK.iterdir() if f.is_file())
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == folder
