"""Hostile configuration (cause 8 of issue 16): every broken config is a clear ConfigError with exit 2, never 70,
and an unsearchable XDG_CONFIG_HOME does not break every command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import assert_clean_failure, cli_env, run_cli, unprivileged_prefix
from hostile_corpus import make_fifo

from cxr_edge.cli import main
from cxr_edge.config import read_config, resolve_pack
from cxr_edge.errors import ConfigError

CONFIGS = [
    ("pack-int", b'{"pack": 5}', "'pack'"), ("pack-list", b'{"pack": ["a"]}', "'pack'"),
    ("pack-empty", b'{"pack": ""}', "'pack' is empty"), ("binary", bytes(range(256)) * 4, "not valid JSON"),
    ("utf16", '{"pack": "x"}'.encode("utf-16"), "not valid JSON"), ("list", b"[]", "JSON object"),
    ("string", b'"pack"', "JSON object"), ("null", b"null", "JSON object"), ("truncated", b'{"pack": "/x', "not valid"),
    ("deep", b"[" * 100000, "not valid JSON"), ("unknown-key", b'{"pakc": "/x"}', "unknown key 'pakc'"),
    ("require-str", b'{"require_signed": "yes"}', "'require_signed'"),
    ("require-int", b'{"require_signed": 1}', "'require_signed'"),
    ("keys-list", b'{"trusted_keys": ["ed25519:x"]}', "'trusted_keys'"),
    ("keys-bogus", b'{"trusted_keys": {"a": "rsa:AAAA"}}', "not an Ed25519 public key"),
    ("keys-short", b'{"trusted_keys": {"a": "ed25519:AAAA"}}', "not a valid Ed25519"),
    ("keys-int", b'{"trusted_keys": {"a": 5}}', "not an Ed25519"),
    ("nan", b'{"pack": NaN}', "'pack'"),
]


@pytest.mark.parametrize("name, content, text", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_cause08_broken_config_files_are_config_errors(tmp_path, monkeypatch, name, content, text):
    cfg = tmp_path / "config.json"
    cfg.write_bytes(content)
    monkeypatch.setenv("CXR_EDGE_CONFIG", str(cfg))
    monkeypatch.delenv("CXR_EDGE_PACK", raising=False)
    with pytest.raises(ConfigError) as err:
        resolve_pack(None)
    assert text in str(err.value) and str(cfg) in str(err.value)
    res = CliRunner().invoke(main, ["info"])
    assert res.exit_code == 2 and "Error:" in res.output and "Internal" not in res.output, res.output


@pytest.mark.parametrize("kind", ["folder", "fifo", "dev-zero", "huge"])
def test_cause08_config_that_is_not_a_file(tmp_path, monkeypatch, kind):
    if kind == "folder":
        path = tmp_path / "cfg"
        path.mkdir()
    elif kind == "fifo":
        path = make_fifo(tmp_path / "cfg.json")
    elif kind == "dev-zero":
        path = "/dev/zero"
    else:
        path = tmp_path / "big.json"
        path.write_bytes(b" " * (2 << 20) + b"{}")
    monkeypatch.setenv("CXR_EDGE_CONFIG", str(path))
    with pytest.raises(ConfigError):
        read_config()     # a FIFO would block a reader: it is refused from its stat, never opened


def test_cause08_dev_null_means_no_config(monkeypatch):
    monkeypatch.setenv("CXR_EDGE_CONFIG", "/dev/null")
    assert read_config() == {}


def test_cause08_config_folder_through_the_cli(tmp_path):
    res, _ = run_cli("info", env=cli_env(CXR_EDGE_CONFIG=tmp_path))
    assert_clean_failure(res, text="is a folder")


def test_cause08_unsearchable_xdg_config_home_does_not_break_commands(tmp_path):
    """XDG_CONFIG_HOME that cannot be searched (a normal user, a folder without x permission): a warning, and
    the command runs with no config file (every command exited 70 before)."""
    locked = tmp_path / "xdg"
    (locked / "cxr-edge").mkdir(parents=True)
    locked.chmod(0o600)
    env = cli_env(XDG_CONFIG_HOME=locked)
    env.pop("CXR_EDGE_CONFIG")
    try:
        res, _ = run_cli("info", env=env, prefix=unprivileged_prefix())
    finally:
        locked.chmod(0o755)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "cannot look for a config file" in res.stderr and "checksums OK" in res.stdout


def test_cause08_xdg_config_home_that_is_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("CXR_EDGE_CONFIG", raising=False)
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "file"))
    assert read_config() == {}


def test_cause08_unreadable_config_file_is_an_error_not_skipped(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"require_signed": True}))
    cfg.chmod(0)
    res, _ = run_cli("info", env=cli_env(CXR_EDGE_CONFIG=cfg), prefix=unprivileged_prefix())
    assert_clean_failure(res, text="cannot be read")


@pytest.mark.parametrize("value", ["/dev/null", "/dev/zero", "fifo", "/nonexistent/pack", "", "relative/none"])
def test_cause08_pack_env_values(tmp_path, value):
    if value == "fifo":
        value = str(make_fifo(tmp_path / "fifo"))
    res, _ = run_cli("info", env=cli_env(CXR_EDGE_PACK=value), timeout=60)
    if value == "":
        assert res.returncode == 0          # empty means unset: the bundled pack
    else:
        assert_clean_failure(res)


def test_cause08_a_good_config_is_used(tmp_path, bundled, monkeypatch):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"pack": str(bundled), "require_signed": False, "trusted_keys": {}}))
    monkeypatch.setenv("CXR_EDGE_CONFIG", str(cfg))
    monkeypatch.delenv("CXR_EDGE_PACK", raising=False)
    path, origin = resolve_pack(None)
    assert path == bundled and str(cfg) in origin
