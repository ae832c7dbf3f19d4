"""Fixtures of the hostile-input suite: the bundled pack, a pipeline on it, bombs, and CLI runs in a subprocess.

The suite needs neither TensorFlow nor ../shared: its packs are the bundled
pack and crafted copies of it, its images are made here.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hostile_corpus import BUNDLED, REPO, dicom_bytes, png_bytes
from PIL import Image

#: Memory cap of every subprocess the suite starts, so that a bomb that got through cannot take the machine down.
CHILD_AS_LIMIT = 3 << 30


@pytest.fixture(scope="session")
def bundled() -> Path:
    if not (BUNDLED / "manifest.json").is_file():
        pytest.skip("the bundled pack is not installed (cxr_edge/packs/default)")
    return BUNDLED


@pytest.fixture(scope="session")
def pipeline(bundled):
    from cxr_edge.runtime.pipeline import Pipeline

    return Pipeline(bundled)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    """Two ordinary images (a grey film-like gradient and a noisy one) and an empty file."""
    d = tmp_path_factory.mktemp("images")
    yy, xx = np.mgrid[0:256, 0:256]
    film = (128 + 80 * np.sin(xx / 30.0) * np.cos(yy / 40.0)).astype(np.uint8)
    Image.fromarray(film).save(d / "a.png")
    noise = np.random.default_rng(0).integers(0, 255, (300, 240), dtype=np.uint8)
    Image.fromarray(noise).save(d / "b.png")
    (d / "empty.png").write_bytes(b"")
    return d


@pytest.fixture(scope="session")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """Decompression bombs, built once per session in bounded memory."""
    d = tmp_path_factory.mktemp("bombs")
    made = {
        "png16_110mp": png_bytes(10500, 10500, bit_depth=16),        # 214 KB -> 2.7 GB before the budget
        "rgb_36mp": png_bytes(6000, 6000, color_type=2),              # 144 MB decoded: over the budget
        "grey_121mp": png_bytes(11000, 11000),                        # over the pixel limit
        "rgba16_36mp": png_bytes(6000, 6000, bit_depth=16, color_type=6),
        "palette_200mp": png_bytes(14142, 14142, color_type=3, rows=10),
        "deflated_dicom": dicom_bytes(15000, 15000, deflate=True),    # 438 KB -> 7.8 GB before
        "frames_dicom_big": dicom_bytes(8000, 8000, frames=2, bits=16, deflate=True),
    }
    paths = {}
    for name, data in made.items():
        suffix = ".dcm" if "dicom" in name else ".png"
        paths[name] = d / f"{name}{suffix}"
        paths[name].write_bytes(data)
    return paths


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_EDGE_", "PYTEST"))}
    env.update(PYTHONPATH=str(REPO), CXR_EDGE_CONFIG=os.devnull + ".none", PYTHONDONTWRITEBYTECODE="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(*args, env: dict | None = None, prefix: tuple = (), timeout: float = 120, stdin=None, preexec=None):
    """``cxr-edge ARGS`` in a subprocess under a memory cap; returns (CompletedProcess, peak RSS in MB)."""
    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_AS_LIMIT, CHILD_AS_LIMIT))
        if preexec:
            preexec()

    cmd = [*prefix, sys.executable, "-c", _WRAPPER, *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin or subprocess.DEVNULL,
                            env=env or cli_env(), cwd=REPO, preexec_fn=limits, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"cxr-edge {' '.join(map(str, args))} did not finish in {timeout} s (it blocked)\n{err[-2000:]}")
    peak = 0.0
    lines = []
    for line in err.splitlines(keepends=True):
        if line.startswith(_PEAK):
            peak = int(line[len(_PEAK):]) / 1024
        else:
            lines.append(line)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "".join(lines)), peak


_PEAK = "HOSTILE_PEAK_RSS_KB="
#: Runs the CLI as `cxr-edge` does and reports the process's own peak RSS on stderr as it exits. VmHWM, not
#: getrusage: after fork + exec, ru_maxrss also counts the forked copy of the parent (pytest, ~400 MB).
_WRAPPER = f"""
import atexit, sys
def _peak():
    with open("/proc/self/status") as fh:
        kb = next((line.split()[1] for line in fh if line.startswith("VmHWM:")), "0")
    sys.stderr.write("\\n{_PEAK}" + kb + "\\n")
atexit.register(_peak)
from cxr_edge.cli import main
sys.argv[0] = "cxr-edge"
main()
"""


def json_rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def unprivileged_prefix() -> tuple:
    """A command prefix under which file permissions apply (root normally bypasses them)."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv"):
        return ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
    pytest.skip("running as root without setpriv: an unreadable file cannot be made")


def assert_clean_failure(res, *, code: int = 2, text: str | None = None):
    """A handled error: the expected exit code, one 'Error:' line, no traceback, no 'Internal error'."""
    both = res.stdout + res.stderr
    assert res.returncode == code, both[-3000:]
    assert "Traceback" not in both and "Internal error" not in both, both[-3000:]
    if text is not None:
        assert text in both, both[-3000:]
