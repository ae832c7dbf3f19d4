"""Runs the Kivy app tests (tests/test_app_flow.py, tests/test_app_parts.py) in their own process.

Kivy's GL window (SDL + Mesa) and TensorFlow segfault when they share a
process, whichever comes first. The app never imports TensorFlow, but the test
pack is built with it; so this test builds the pack here and runs the app tests
in a child pytest that never imports TensorFlow.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUI_TESTS = ["tests/test_app_flow.py", "tests/test_app_parts.py"]

if os.environ.get("CXR_EDGE_APP_GUI_CHILD") == "1":
    pytest.skip("this is the launcher; the child runs the app tests themselves", allow_module_level=True)


@pytest.fixture(scope="module")
def strict_pack(tiny_pack, tmp_path_factory):
    """The tiny pack plus a gate profile 'strict' that rejects everything (its random gate accepts all)."""
    from cxr_edge.runtime.pack import load_pack
    from cxr_edge.tools.pack_writer import rewrite_metadata

    pack = shutil.copytree(tiny_pack, tmp_path_factory.mktemp("packs") / "strict")
    meta = load_pack(pack)["gate"].metadata
    meta.thresholds["strict"] = {"chest_xray": 1.0}
    rewrite_metadata(pack, {"gate": meta})
    return pack


def test_app_tests_pass_in_a_kivy_process_without_tensorflow(strict_pack, shared_data):
    env = dict(os.environ, CXR_EDGE_APP_GUI_CHILD="1", CXR_EDGE_APP_TEST_PACK=str(strict_pack),
               CXR_EDGE_SHARED=str(shared_data.parent), SDL_VIDEODRIVER="offscreen", KIVY_NO_ARGS="1")
    env.pop("KIVY_GL_BACKEND", None)  # the mock backend would silently skip every graphics test
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *GUI_TESTS],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the app tests failed (exit {proc.returncode}):\n{out[-12000:]}"
    summary = [line for line in proc.stdout.splitlines() if " passed" in line]
    assert summary and "skipped" not in summary[-1], out[-4000:]
