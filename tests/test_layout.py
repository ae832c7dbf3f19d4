"""The package's shape: the layer contract, __all__ in every module, no private names across modules,
and the public API at the top of the package."""

import ast
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cxr_edge

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(cxr_edge.__file__).resolve().parent
#: code outside the package that must use only public names too
USERS = [REPO / "benchmarks", REPO / "release", REPO / "mobile_app"]


def _modules(root: Path):
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_layer_contract_holds():
    """import-linter (the [test] extra): layers, the app above the device side only, no cycles."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    res = subprocess.run([exe], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_every_module_declares_its_public_names():
    missing, wrong = [], []
    for path, tree in _modules(PACKAGE):
        if path.name == "__main__.py":
            continue
        declared = [n for n in tree.body if isinstance(n, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]
        if not declared:
            if path.name != "__init__.py" or len(tree.body) > 1:   # a package that is only a docstring exports nothing
                missing.append(str(path.relative_to(REPO)))
            continue
        # read, not imported: the app's modules import Kivy, which must not share a process with TensorFlow
        names = ast.literal_eval(declared[0].value)
        defined = _top_level_names(tree)
        if path == PACKAGE / "__init__.py":   # the public API, imported on first use
            defined |= set(cxr_edge._LAZY)
        wrong += [f"{_module_name(path)}.{name}" for name in names if name not in defined]
    assert not missing, f"modules without __all__: {missing}"
    assert not wrong, f"__all__ names that do not exist: {wrong}"


def _is_module(name: str) -> bool:
    where = PACKAGE.parent.joinpath(*name.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                names |= {e.id for e in ast.walk(t) if isinstance(e, ast.Name)}
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in n.names}
        elif isinstance(n, ast.Try):
            names |= _top_level_names(ast.Module(body=n.body, type_ignores=[]))
    return names


def _private_uses(path: Path, tree: ast.Module) -> list[str]:
    """`from cxr_edge.x import _name` and `module._name` on an imported cxr_edge module, in one file."""
    found, modules = [], set()
    own = _module_name(path) if PACKAGE in path.parents else None
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: inside the package
                pkg = own.split(".")[: -node.level + (1 if path.name == "__init__.py" else 0) or None]
                base = ".".join(pkg + ([node.module] if node.module else []))
            if not base.startswith("cxr_edge"):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.name}:{node.lineno} imports {base}.{alias.name}")
                elif _is_module(f"{base}.{alias.name}"):
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cxr_edge"):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_private_name_is_used_across_modules():
    found = []
    for root in [PACKAGE, *USERS]:
        for path, tree in _modules(root):
            if path.name != "android_tflite.py":
                found += _private_uses(path, tree)
    assert not found, "private names used from another module: " + "; ".join(found)


def test_the_public_api_is_at_the_top_and_cheap_to_import():
    code = ("import sys, cxr_edge\n"
            "heavy = sorted(m for m in ('numpy', 'PIL', 'tensorflow') if m in sys.modules)\n"
            "from cxr_edge import Pipeline, Prediction, load_pack, Film, CxrEdgeError, ImageError, PackError\n"
            "import json; print(json.dumps({'heavy': heavy, 'all': cxr_edge.__all__,"
            " 'pipeline': Pipeline.__module__, 'prediction': Prediction.__module__, 'load_pack': load_pack.__module__}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["heavy"] == []      # `import cxr_edge` imports neither numpy nor Pillow: cxr-edge --help stays fast
    assert {"Pipeline", "Prediction", "load_pack", "CxrEdgeError", "ImageError", "PackError"} <= set(out["all"])
    assert out["pipeline"] == "cxr_edge.runtime.pipeline" and out["load_pack"] == "cxr_edge.runtime.pack"
    with pytest.raises(AttributeError, match="no attribute 'Pipline'"):
        cxr_edge.Pipline  # noqa: B018


def test_pipeline_from_pack_default_predicts_a_path_an_array_a_pil_image_and_a_film(shared_data):
    import numpy as np
    from PIL import Image

    from cxr_edge import Film, Pipeline

    cxr = shared_data / "nih_cxr14" / "images" / "00000061_012.png"
    p = Pipeline.from_pack("default", profile="screening")
    by_path = p.predict(cxr)
    assert by_path.status == "ok" and set(by_path.results) == {"cxr4", "nih14"}
    assert by_path.results["cxr4"].profile == "screening" and by_path.to_dict()["cxr4"]["task"] == "cxr4"
    image = Image.open(cxr)
    for other in (p.predict(np.asarray(image)), p.predict(image)):
        assert other.results["cxr4"].probabilities == by_path.results["cxr4"].probabilities
    film = p.film(cxr)
    assert isinstance(film, Film) and p.predict(film).to_dict()["nih14"] == by_path.to_dict()["nih14"]
    assert [r.status for r in p.predict_many([cxr, film], workers=1)] == ["ok", "ok"]


def test_the_readme_python_example_runs(shared_data):
    """The README's "Python" section is code that runs (from the clone's root, with ../shared beside it)."""
    readme = (REPO / "README.md").read_text()
    code = readme.split("## Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    if (REPO.parent / "shared" / "data").resolve() != shared_data.resolve():
        pytest.skip("the README example names ../shared beside the clone; $CXR_EDGE_SHARED points elsewhere")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.splitlines()[0] == "ok True" and "a.png error" in res.stdout
