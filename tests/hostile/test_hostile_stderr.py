"""The safety line is never lost (cause 1 of issue 16): one stderr redirection per process, under a lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from conftest import REPO, cli_env, run_cli

from cxr_edge.runtime.interpreter import _NATIVE_STDERR

RUNS = 10


def test_cause01_the_safety_line_and_failure_count_appear_on_every_run(images):
    """`predict a.png b.png empty.png --workers 2` lost the "Decision support only" line and the failure count
    in 7 of 8 runs (2 of 8 on this machine): worker threads raced on dup2 and left fd 2 on a deleted file."""
    missing = []
    for i in range(RUNS):
        res, _ = run_cli("predict", images / "a.png", images / "b.png", images / "empty.png", "--workers", "2")
        if "Decision support only" not in res.stderr or "1 of 3 image(s) could not be analysed" not in res.stderr:
            missing.append((i, res.returncode, res.stderr[-500:]))
    assert not missing, f"{len(missing)} of {RUNS} runs lost stderr lines: {missing[:2]}"


def test_cause01_concurrent_redirections_always_restore_stderr():
    """Many threads in and out of the native-log redirection at once: fd 2 is the same file afterwards."""
    before = os.fstat(2)
    barrier = threading.Barrier(16)

    def enter_and_leave():
        barrier.wait()
        for _ in range(50):
            with _NATIVE_STDERR:
                os.write(2, b"")     # what a native library does meanwhile
    threads = [threading.Thread(target=enter_and_leave) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino) and _NATIVE_STDERR._depth == 0


def test_cause01_native_lines_go_to_the_log_not_the_terminal():
    code = ("import os, logging; logging.basicConfig(level=logging.DEBUG)\n"
            "from cxr_edge.runtime.interpreter import _NATIVE_STDERR\n"
            "with _NATIVE_STDERR:\n    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
            "os.write(2, b'after\\n')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=REPO)
    assert "DEBUG cxr_edge.runtime.interpreter" in res.stderr or "DEBUG:cxr_edge.runtime.interpreter" in res.stderr
    assert res.stderr.rstrip().endswith("after")


def test_cause01_interrupted_appears_whenever_ctrl_c_comes(images, tmp_path):
    """Ctrl-C at different moments of a --workers 2 batch (while interpreters load, while images run, after
    the last one): the run either finishes with the safety line or says "Interrupted." and exits 130 --
    never silently, and never killed by the signal once the run is done."""
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes((images / name).read_bytes())
    batch = tmp_path / "batch"      # 400 images: ~2-4 s here, so most delays land while images run
    batch.mkdir()
    for i in range(400):
        os.symlink(tmp_path / ("a.png" if i % 2 else "b.png"), batch / f"img{i:03d}.png")
    outcomes = []
    for delay in (0.3, 0.6, 0.9, 1.2, 1.6, 2.2, 6.0):
        proc = subprocess.Popen([sys.executable, "-m", "cxr_edge", "predict", str(batch), "--workers", "2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=REPO,
                                # a background job (CI, nohup) inherits SIGINT ignored: restore it
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        outcomes.append((delay, proc.returncode))
        ok = (proc.returncode == 130 and "Interrupted." in err) or (proc.returncode == 0 and "Decision support" in err)
        # On a loaded machine the signal can come while Python itself is still starting, before any cxr-edge
        # code runs: Python then dies of SIGINT as every program does, with no output and nothing begun.
        ok = ok or (proc.returncode == -signal.SIGINT and not err.strip())
        assert ok, (delay, proc.returncode, err[-800:])
    assert any(code == 130 for _, code in outcomes), outcomes
