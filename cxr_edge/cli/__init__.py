"""The ``cxr-edge`` command line: a thin, lazy click group.

Each subcommand lives in its own module and is imported only when it runs,
so ``cxr-edge --help`` stays fast and never imports TensorFlow. Command
modules import nothing heavy at module level either: numpy, Pillow and the
library are imported inside the command function.

Expected errors (:class:`~cxr_edge.errors.CxrEdgeError`) become one line on
stderr and a non-zero exit code; anything else is reported as a bug in one
line too (set ``CXR_EDGE_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import signal
import sys
import threading

import click

from .. import __version__

__all__ = ["COMMANDS", "EXIT_BROKEN_PIPE", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "LazyGroup", "exit_interrupted", "main",
           "run"]

# name -> (module, attribute, one-line help). The help is here so listing commands imports nothing.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "predict": ("cxr_edge.cli.predict", "predict", "Run the gate and classifiers on images (files or folders)."),
    "info": ("cxr_edge.cli.info", "info", "Show what a model pack is and how it was measured."),
    "data": ("cxr_edge.cli.data", "data", "Prepare a data set (patient-level splits + cache) and report on it."),
    "evaluate": ("cxr_edge.cli.evaluate", "evaluate",
                 "Metrics with CIs, subgroups, sources and phone photos for a pack or run on a prepared split."),
    "calibrate": ("cxr_edge.cli.calibrate", "calibrate",
                  "Fit temperature and choose per-label thresholds (a named profile) into a pack."),
    "export": ("cxr_edge.cli.export", "export",
               "Convert a run to int8, check it against the float model, write it into a model pack."),
    "calibration": ("cxr_edge.cli.calibration", "calibration",
                    "Build/verify calibration-set manifests (the representative images int8 export uses)."),
    "train": ("cxr_edge.cli.train", "train",
              "Train a model from a recipe (staged MobileNetV2 transfer learning; resumable)."),
    "qat": ("cxr_edge.cli.qat", "qat", "Quantization-aware fine-tuning of a trained run (writes qat.h5)."),
    "bench": ("cxr_edge.cli.bench", "bench", "Measure a pack here: latency, throughput, peak memory, start-up, size."),
    "app": ("cxr_edge.cli.app", "app", "Start the Kivy field app (photo or file -> check -> result -> history)."),
    "rectify": ("cxr_edge.cli.rectify", "rectify", "Find the X-ray film in a phone photo and save it upright."),
    "ood": ("cxr_edge.cli.ood", "ood", "Fit the out-of-distribution guard (unusual-image statistics) into a pack."),
    "orientation": ("cxr_edge.cli.orientation", "orientation",
                    "Fit the orientation check (turns sideways and upside-down films upright) into a pack."),
    "pack": ("cxr_edge.cli.pack", "pack", "Sign model packs and check their signatures (Ed25519 keys)."),
}

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141   # 128 + SIGPIPE, what a shell reports for a writer whose reader closed


def json_text(obj, **kwargs) -> str:
    """Strict JSON for --json output: NaN and infinities become null (bare ``NaN`` is not JSON, and a
    reader that accepts it computes with it), numpy scalars become numbers, and anything else left
    over is refused rather than printed half-valid."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "item"):
        return _finite(obj.item() if getattr(obj, "ndim", 0) == 0 else obj.tolist())
    return obj


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx, name):
        if name in COMMANDS:
            module, attr, _ = COMMANDS[name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in sorted(COMMANDS)]
        rows += [(name, cmd.get_short_help_str(70)) for name, cmd in sorted(self.commands.items())]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))

    def invoke(self, ctx):
        from ..errors import CxrEdgeError

        try:
            return super().invoke(ctx)
        except CxrEdgeError as exc:
            click.secho(f"Error: {exc}", err=True, fg="red")
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except BrokenPipeError:
            # `cxr-edge predict dir/ --json | head`: the reader has gone; stop quietly like other Unix tools.
            # Point stdout at /dev/null so the interpreter's final flush does not raise again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)
        except Exception as exc:  # a bug: say so plainly, keep the traceback for those who ask
            if os.environ.get("CXR_EDGE_DEBUG"):
                raise
            click.secho(
                f"Internal error: {type(exc).__name__}: {exc}\nThis is a bug in cxr-edge {__version__}. "
                "Re-run with CXR_EDGE_DEBUG=1 to see the traceback and report it.", err=True, fg="red")
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cxr-edge")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
def main(verbose: int, quiet: bool):
    """cxr-edge: chest X-ray models that run offline on phones, Raspberry Pi and Jetson.

    \b
    Typical use:
      cxr-edge predict film.jpg               gate + 4-class + NIH findings for one image
      cxr-edge predict scans/ --json          one JSON object per image, for scripts
      cxr-edge info PACK                      what a model pack is and how it was measured

    Every command has --help. Results are decision support, not a diagnosis.
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run() -> None:
    """The ``cxr-edge`` program (console script and ``python -m cxr_edge``): :func:`main`, after which a
    Ctrl-C is ignored. The command's work is done and its output written by then; a Ctrl-C during the
    interpreter's teardown would only turn a finished run into one killed by SIGINT.

    An interrupted command leaves with exit code 130 through :func:`exit_interrupted`, not through the
    interpreter's own exit: CPython can turn a clean exit into death by SIGINT when it counts a KeyboardInterrupt
    as unhandled. Measured with ``python -m cxr_edge predict DIR --workers 2`` and a Ctrl-C 0.1-0.4 s in: 4 of 30
    runs printed "Interrupted." and then ended killed by the signal; with this exit, 30 of 30 exit with 130."""
    try:
        try:
            main(prog_name="cxr-edge")
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:    # between the command's own handler and the line above: nothing is running
        click.echo("Interrupted.", err=True)
        exit_interrupted()
    except SystemExit as exc:    # click ends every command with one
        if exc.code == EXIT_INTERRUPTED:
            exit_interrupted()
        raise


def exit_interrupted() -> None:
    """Flush what was written and leave with exit code 130 at once (see :func:`run`); used only once the
    interrupted command has unwound (its temporary files removed, its state saved)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe or a closed stream: nothing left to lose
            pass
    os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":  # pragma: no cover
    run()
