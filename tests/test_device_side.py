"""The device side runs with TensorFlow made unimportable: what a Raspberry Pi or a phone has."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import cxr_edge

WORKSTATION = {"training"}        # the layer that imports TensorFlow (inside its own modules)
UI = {"app"}                       # the Kivy app (Kivy is the [app] extra; tested in test_app_*.py)
ANDROID_ONLY = {"android_tflite"}  # imports pyjnius: fails off Android by design (backend selection skips it)

BLOCKER = """
import sys, importlib.abc
BLOCKED = ('tensorflow', 'tf_keras', 'tensorflow_model_optimization', 'keras', 'sklearn', 'scipy', 'skimage')
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{name} is blocked: the device side must not need it')
sys.meta_path.insert(0, Block())
"""


def device_modules() -> list[str]:
    """Every module of the package but the workstation layer, the UI and the Android-only backend: the
    shared core, runtime (with photo/), data, tools (with bench/) and the CLI's command modules."""
    root = Path(cxr_edge.__file__).parent
    names = [m.name for m in pkgutil.walk_packages([str(root)], prefix="cxr_edge.")]
    skip = WORKSTATION | UI | ANDROID_ONLY
    return sorted(n for n in names if not skip & set(n.split(".")[1:]))


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True)


def test_blocker_really_blocks():
    res = _run("import tensorflow")
    assert res.returncode != 0 and "blocked" in res.stderr


def test_every_device_module_imports_without_tensorflow():
    modules = device_modules()
    assert "cxr_edge.runtime.pipeline" in modules and "cxr_edge.runtime.interpreter" in modules
    assert "cxr_edge.tools.evaluate" in modules and "cxr_edge.cli.predict" in modules
    res = _run(f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\nprint('ok')")
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_predict_on_a_pack_without_tensorflow(tiny_pack, shared_data):
    image = shared_data / "cxr4" / "images"
    first = sorted(image.glob("*.png"))[0]
    code = (f"from cxr_edge.cli import main\n"
            f"main(['predict', '--json', '--pack', {str(tiny_pack)!r}, {str(first)!r}])")
    res = _run(code)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.splitlines()[0])
    assert out["status"] == "ok" and out["cxr4"]["task"] == "cxr4"
