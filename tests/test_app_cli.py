"""``cxr-edge app``: registered, documented, refuses a missing pack, and really starts the app (in a subprocess)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from cxr_edge.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_app_is_a_lazy_command_with_help():
    assert COMMANDS["app"][:2] == ("cxr_edge.cli.app", "app")
    runner = CliRunner()
    listing = runner.invoke(main, ["--help"])
    assert listing.exit_code == 0 and "app" in listing.output
    result = runner.invoke(main, ["app", "--help"])
    assert result.exit_code == 0
    assert "--pack" in result.output and "--threads" in result.output and "not a diagnosis" in result.output


def test_a_missing_pack_is_refused_before_anything_starts(tmp_path):
    result = CliRunner().invoke(main, ["app", "--pack", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert CliRunner().invoke(main, ["app", "--threads", "0"]).exit_code == 2


def test_cxr_edge_app_starts_the_app_and_loads_the_pack(tiny_pack, tmp_path):
    """A real launch, headless; Ctrl-C ends it the way the CLI ends any command (exit 130)."""
    env = dict(os.environ, SDL_VIDEODRIVER="offscreen", KIVY_HOME=str(tmp_path / "kivy"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), HOME=str(tmp_path / "home"))
    env.pop("KIVY_GL_BACKEND", None)
    (tmp_path / "home").mkdir()
    (tmp_path / "config").mkdir()  # as ~/.config exists on a desktop
    proc = subprocess.Popen([sys.executable, "-m", "cxr_edge", "-v", "app", "--pack", str(tiny_pack), "--threads", "1"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "model pack tiny-test-pack loaded" in line:
                break
        assert any("Start application main loop" in x for x in lines), "".join(lines[-40:])
        assert any("model pack tiny-test-pack loaded" in x for x in lines), "".join(lines[-40:])
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and "Interrupted." in rest, "".join(lines[-20:]) + rest
    assert (tmp_path / "config" / "cxredge" / "cases.sqlite").is_file()  # the case store, in the app's data folder
