"""The comparison behind benchmarks/aarch64_emulated.sh, on real `cxr-edge predict --json` output.

The emulated run itself needs root, QEMU and a 600 MB arm64 root, so it is not a test; what decides its
verdict is this comparison, checked here on two native runs of the bundled pack over shared images.
"""

import copy
import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cxr_edge.cli import main

REPO = Path(__file__).resolve().parents[1]
IMAGES = ["nih_cxr14/images/00000150_002.png", "cxr4/images/tbx11k_tb0005.png", "noncxr/images/skimage_moon.png"]


def _load_helper():
    spec = importlib.util.spec_from_file_location("aarch64_parity", REPO / "benchmarks" / "aarch64_parity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


parity = _load_helper()


@pytest.fixture(scope="module")
def two_runs(shared_data, tmp_path_factory):
    """Two native runs over the same images (one image at a time, then two workers), as the script makes them."""
    out = tmp_path_factory.mktemp("parity")
    paths = [str(shared_data / p) for p in IMAGES]
    with pytest.MonkeyPatch.context() as mp:   # the bundled pack, whatever this machine's configuration says
        mp.delenv("CXR_EDGE_PACK", raising=False)
        mp.setenv("CXR_EDGE_CONFIG", str(out / "no-config.json"))
        for name, workers in (("a", "0"), ("b", "2")):
            res = CliRunner().invoke(main, ["predict", "--json", "--workers", workers, *paths],
                                     catch_exceptions=False)
            assert res.exit_code == 0, res.output
            (out / f"{name}.out").write_text("".join(line + "\n" for line in res.output.splitlines()
                                                     if line.startswith("{")))
    return out


def test_two_native_runs_are_bit_identical(two_runs):
    a, b = parity.load_predictions(two_runs / "a.out"), parity.load_predictions(two_runs / "b.out")
    assert len(a) == len(IMAGES)
    assert {r["status"] for r in a.values()} == {"ok", "rejected"}
    result = parity.compare_runs(a, {"b": b}, tol=0.0)["b"]
    for f, r in result.items():
        assert r["bad"] == [], f
        assert r["max_diff"] == 0
    ok = next(f for f, row in a.items() if row["status"] == "ok")
    # every probability of both classifiers, the gate, the OOD scores and the verdicts are compared
    assert result[ok]["numeric"] >= 1 + 4 + 14 + 3
    assert "timings_ms.total" not in parity.flatten(a[ok])


def test_a_changed_probability_fails_unless_within_the_tolerance(two_runs):
    a = parity.load_predictions(two_runs / "a.out")
    ok = next(f for f, row in a.items() if row["status"] == "ok")
    changed = copy.deepcopy(a)
    probs = changed[ok]["nih14"]["probabilities"]
    label = next(iter(probs))
    probs[label] = round(probs[label] + 2e-4, 4)
    strict = parity.compare_runs(a, {"x": changed}, tol=0.0)["x"][ok]
    assert len(strict["bad"]) == 1 and strict["bad"][0].startswith(f"nih14.probabilities.{label} ")
    loose = parity.compare_runs(a, {"x": changed}, tol=1e-3)["x"][ok]
    assert loose["bad"] == [] and loose["max_diff"] == pytest.approx(2e-4, abs=1e-9)


def test_a_changed_verdict_or_a_missing_image_fails_whatever_the_tolerance(two_runs):
    a = parity.load_predictions(two_runs / "a.out")
    ok = next(f for f, row in a.items() if row["status"] == "ok")
    changed = copy.deepcopy(a)
    changed[ok]["gate"]["accepted"] = False
    changed[ok]["cxr4"]["top"] = "Normal" if changed[ok]["cxr4"]["top"] != "Normal" else "COVID-19"
    r = parity.compare_runs(a, {"x": changed}, tol=1.0)["x"][ok]
    assert {b.split()[0] for b in r["bad"]} == {"gate.accepted", "cxr4.top"}
    del changed[ok]
    assert parity.compare_runs(a, {"x": changed}, tol=1.0)["x"][ok]["bad"] == ["missing from this run"]


def test_compare_command_exit_codes_and_table(two_runs, tmp_path, capsys):
    a = parity.load_predictions(two_runs / "a.out")
    ok = next(f for f, row in a.items() if row["status"] == "ok")
    changed = copy.deepcopy(a)
    changed[ok]["gate"]["score"] = 0.5
    (two_runs / "wrong.out").write_text("".join(json.dumps(r) + "\n" for r in changed.values()))
    assert parity.main(["compare", "--out", str(two_runs), "--base", "a", "b"]) == 0
    assert "Parity holds" in capsys.readouterr().out
    assert parity.main(["compare", "--out", str(two_runs), "--base", "a", "b", "wrong"]) == 1
    text = capsys.readouterr().out
    assert "MISMATCH" in text and "gate.score" in text
    # the QEMU 'max' pitfall is reported, not failed
    assert parity.main(["compare", "--out", str(two_runs), "--base", "a", "--expect-differ", "wrong"]) == 0
    assert "1 of 3 images differ" in capsys.readouterr().out
