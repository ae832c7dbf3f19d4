"""The command line: fast lazy help, predict and info, clean errors and exit codes."""

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cxr_edge.cli import COMMANDS, EXIT_INTERNAL, main


@pytest.fixture
def run(monkeypatch, tmp_path):
    monkeypatch.delenv("CXR_EDGE_PACK", raising=False)
    monkeypatch.setenv("CXR_EDGE_CONFIG", str(tmp_path / "no-config.json"))

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_help_lists_every_command(run):
    res = run("--help")
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(run, name):
    res = run(name, "--help")
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output and len(res.output) > 200  # it explains, not just lists


def test_help_imports_no_tensorflow_numpy_or_pillow():
    code = ("import sys\nfrom cxr_edge.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('tensorflow', 'tf_keras', 'numpy', 'PIL') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stderr


def test_predict_prints_a_table_and_json(run, tiny_pack, shared_data):
    cxr = shared_data / "nih_cxr14" / "images" / "00000061_012.png"
    res = run("predict", "--pack", tiny_pack, cxr)
    assert res.exit_code == 0, res.output
    header, rule, row = res.stdout.splitlines()[:3]
    assert header.split()[:6] == ["file", "status", "gate", "cxr4", "nih14", "findings"] and set(rule) == {"-"}
    assert cxr.name in row.split()[0] and row.split()[1] == "ok" and "not a diagnosis" in res.output
    top = max(("COVID-19", "Normal", "Pneumonia", "Tuberculosis"), key=row.find)
    assert top in row   # the 4-class answer is in the row
    res = run("predict", "--pack", tiny_pack, "--json", cxr, cxr)
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 2 and all({"file", "gate", "cxr4", "nih14", "error"} <= set(d) for d in lines)


def test_ctrl_c_stops_a_predict_batch_at_once(tiny_pack, shared_data, tmp_path):
    """Ctrl-C (SIGINT to the command) in the middle of a --workers 2 batch ends it with "Interrupted." and
    exit 130, without predicting the rest."""
    import os
    import signal

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(2000):
        os.symlink(shared_data / "nih_cxr14" / "images" / "00000061_012.png", folder / f"{i:04d}.png")
    # a test run in the background inherits SIGINT ignored, and Python keeps it so: give the command the default
    p = subprocess.Popen([sys.executable, "-m", "cxr_edge", "predict", "--json", "--workers", "2", "--pack",
                          str(tiny_pack), str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for _ in range(5):
        assert json.loads(p.stdout.readline())["status"] == "ok"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.rstrip().endswith("Interrupted."), err
    assert 5 + len(out.splitlines()) < 2000


def test_predict_folder_with_bad_files_reports_each_and_exits_1(run, tiny_pack, shared_data, tmp_path):
    from test_images import bad_inputs

    folder = tmp_path / "batch"
    folder.mkdir()
    shutil.copy(shared_data / "nih_cxr14" / "images" / "00000061_012.png", folder / "good.png")
    expected = {}
    for kind, path in bad_inputs(tmp_path):
        if path.is_file():
            dest = folder / path.name
            shutil.copy(path, dest)
            expected[str(dest)] = kind
    res = run("predict", "--pack", tiny_pack, "--json", folder, tmp_path / "missing.jpg", tmp_path / "folder.png")
    assert res.exit_code == 1
    rows = {d["file"]: d for d in map(json.loads, res.stdout.splitlines())}
    assert rows[str(folder / "good.png")]["status"] == "ok"
    for f, kind in expected.items():
        assert rows[f]["status"] == "error" and rows[f]["error"]["kind"] == kind
    assert rows[str(tmp_path / "missing.jpg")]["error"]["kind"] == "not_found"
    assert "Traceback" not in res.output


def test_tampered_pack_is_a_clean_error(run, tiny_pack, tmp_path, shared_data):
    pack = shutil.copytree(tiny_pack, tmp_path / "p")
    data = bytearray((pack / "nih14.tflite").read_bytes())
    data[200] ^= 1
    (pack / "nih14.tflite").write_bytes(bytes(data))
    for args in (("predict", "--pack", pack, shared_data / "nih_cxr14" / "images" / "00000061_012.png"),
                 ("info", pack)):
        res = run(*args)
        assert res.exit_code == 2 and "nih14.tflite" in res.output and "Traceback" not in res.output


def test_no_pack_anywhere_says_how_to_get_one(run, monkeypatch, tmp_path):
    monkeypatch.setattr("cxr_edge.config.BUNDLED_PACK", tmp_path / "absent")
    res = run("predict", tmp_path)
    assert res.exit_code == 2 and "--pack" in res.output and "CXR_EDGE_PACK" in res.output


def test_pack_from_env_and_config_file(run, monkeypatch, tiny_pack, tmp_path):
    monkeypatch.setenv("CXR_EDGE_PACK", str(tiny_pack))
    assert "CXR_EDGE_PACK" in run("info").output
    monkeypatch.delenv("CXR_EDGE_PACK")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"pack": str(tiny_pack)}))
    monkeypatch.setenv("CXR_EDGE_CONFIG", str(cfg))
    res = run("info", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["name"] == "tiny-test-pack"
    cfg.write_text("{broken")
    res = run("info")
    assert res.exit_code == 2 and "not valid JSON" in res.output


def test_info_shows_what_the_pack_is(run, tiny_pack):
    res = run("info", tiny_pack)
    assert res.exit_code == 0
    for text in ("checksums OK", "COVID-19", "quantization int8", "profiles: default", "[gate]"):
        assert text in res.output


def test_unexpected_errors_are_reported_as_bugs_without_traceback(run, tiny_pack, monkeypatch, shared_data):
    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr("cxr_edge.runtime.pipeline.Pipeline.describe", boom)
    res = CliRunner().invoke(main, ["predict", "--pack", str(tiny_pack),
                                    str(shared_data / "nih_cxr14" / "images" / "00000061_012.png")])
    assert res.exit_code == EXIT_INTERNAL and "bug in cxr-edge" in res.output and "kaboom" in res.output
    assert "Traceback" not in res.output


def test_an_unexpected_error_on_one_image_does_not_stop_the_batch(run, tiny_pack, monkeypatch, shared_data,
                                                                  tmp_path):
    from cxr_edge.runtime.pipeline import Pipeline

    real = Pipeline.classify

    def classify(self, inputs, pred, **kw):
        if pred.file.endswith("first.png"):
            raise TypeError("kaboom")
        return real(self, inputs, pred, **kw)

    monkeypatch.setattr("cxr_edge.runtime.pipeline.Pipeline.classify", classify)
    src = shared_data / "nih_cxr14" / "images" / "00000061_012.png"
    for name in ("first.png", "second.png"):
        shutil.copy(src, tmp_path / name)
    res = run("predict", "--pack", tiny_pack, "--json", tmp_path / "first.png", tmp_path / "second.png")
    assert res.exit_code == 1 and "Traceback" not in res.output
    first, second = map(json.loads, res.stdout.splitlines())
    assert first["status"] == "error" and first["error"]["kind"] == "internal"
    assert "kaboom" in first["error"]["message"] and "bug in cxr-edge" in first["error"]["message"]
    assert second["status"] == "ok" and second["cxr4"]


def test_a_damaged_tiff_in_a_batch_is_its_own_error(run, tiny_pack, shared_data, tmp_path):
    from test_images import _fuzzed

    from cxr_edge.errors import ImageError
    from cxr_edge.runtime.images import load_image

    for i, data in enumerate(_fuzzed("TIFF", 300)):   # the first damaged TIFF that does not decode
        try:
            load_image(data)
        except ImageError:
            (tmp_path / "bad.tif").write_bytes(data)
            break
    shutil.copy(shared_data / "nih_cxr14" / "images" / "00000061_012.png", tmp_path / "good.png")
    res = run("predict", "--pack", tiny_pack, "--json", tmp_path / "bad.tif", tmp_path / "good.png")
    assert res.exit_code == 1 and "Traceback" not in res.output and "UserWarning" not in res.output
    bad, good = map(json.loads, res.stdout.splitlines())
    assert bad["status"] == "error" and bad["error"]["kind"] in ("corrupt", "truncated")
    assert good["status"] == "ok"


def test_usage_errors(run, tiny_pack, tmp_path):
    assert run("predict").exit_code == 2
    res = run("predict", "--pack", tiny_pack, "--threads", "0", tmp_path)
    assert res.exit_code == 2 and "threads" in res.output
    (tmp_path / "empty_dir").mkdir()
    res = run("predict", "--pack", tiny_pack, tmp_path / "empty_dir")
    assert res.exit_code == 2 and "no image files" in res.output


def test_closed_pipe_ends_quietly():
    """`cxr-edge predict dir/ --json | head -1`: the reader goes away mid-output; no 'Internal error', and
    exit 141 (128 + SIGPIPE) as other Unix tools report it."""
    code = ("from cxr_edge.cli import main\n"
            "@main.command()\n"
            "def flood():\n"
            "    import click\n"
            "    while True:\n"
            "        click.echo('x' * 1000)\n"
            "main(['flood'])\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(5000)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert b"Internal error" not in err and b"Traceback" not in err, err
    assert proc.returncode == 141


def test_hidden_all_models_runs_the_classifiers_on_an_image_the_gate_rejects(run, tiny_pack, shared_data, tmp_path):
    # the benchmarks' switch: cxr-edge bench measures memory and start-up on a stand-in film with every model
    pack = shutil.copytree(tiny_pack, tmp_path / "p")
    from cxr_edge.runtime.pack import load_pack
    from cxr_edge.tools.pack_writer import rewrite_metadata

    meta = load_pack(pack)["gate"].metadata
    meta.thresholds = {"default": {"chest_xray": 1.0}}   # this gate rejects everything
    rewrite_metadata(pack, {"gate": meta})
    image = shared_data / "nih_cxr14" / "images" / "00000061_012.png"
    gated = json.loads(run("predict", "--pack", pack, "--json", image).stdout)
    forced = json.loads(run("predict", "--pack", pack, "--json", "--all-models", image).stdout)
    assert gated["status"] == "rejected" and gated["cxr4"] is None
    assert forced["gate"]["accepted"] is False and forced["cxr4"] and forced["nih14"]
    assert "--all-models" not in run("predict", "--help").output


def test_info_says_which_int8_check_passed_only_as_chance():
    from cxr_edge.cli.info import _check_lines

    checks = [{"metric": "agreement", "label": None, "value": 0.9626, "allowed_min": 0.9744, "tolerance": 0.98,
               "passed": True, "p_value": 0.31, "films": 273, "chance": True},
              {"metric": "accuracy", "label": None, "drop": 0.001, "allowed": 0.005, "passed": True}]
    lines = _check_lines({"checks": checks})
    assert any("chance" in ln and "agreement passed past its bar as chance (p 0.31 over 273 films" in ln
               for ln in lines)
    assert not any("accuracy passed past" in ln for ln in lines)      # a check within its allowance is not chance
