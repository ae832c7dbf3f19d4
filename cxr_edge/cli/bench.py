"""``cxr-edge bench``: speed, memory and size of a model pack on this machine."""

from __future__ import annotations

import click

from . import json_text
from .options import backend_option

__all__ = ["bench"]


@click.command()
@click.option("--pack", "pack", type=click.Path(path_type=str), default=None,
              help="Model pack directory or .zip (default: $CXR_EDGE_PACK, the config file, or the bundled pack).")
@click.option("--threads", default=None, type=click.IntRange(1, 64),
              help="Thread count to measure besides 1 [default: the usable CPUs, at most 4].")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON instead of tables.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
              help="A film image to use instead of the synthetic one (the phone photo is simulated from it).")
@click.option("--quick", is_flag=True, help="A few samples only: checks that everything runs (~1 min), "
                                            "numbers are rough.")
@click.option("--only", "sections", multiple=True,
              type=click.Choice(["models", "keras", "end_to_end", "batch", "mixed_batch", "memory", "startup"]),
              help="Run only these sections (repeat the option for several).")
@click.option("--no-keras", "no_keras", is_flag=True, help="Skip the Keras float rows even when TensorFlow is here.")
@click.option("--batch-images", type=click.IntRange(1, 100000), default=None,
              help="Images in each batch (256-px; mixed 1024-px and 12-MP) and in the memory run "
                   "[default: 200; 16 with --quick].")
@backend_option
def bench(pack, threads, as_json, image, quick, sections, no_keras, batch_images, backend):
    """Measure a model pack on this machine: latency, throughput, memory, start-up and size.

    Every number is measured beside a baseline in the same run (variants in
    interleaved rounds, medians), so ratios hold on a busy machine. Needs no
    data and no TensorFlow: the film is synthetic unless --image is given, and
    the Keras float comparison is skipped with a note when TensorFlow is absent.
    A full run took about 5 minutes on a busy 2-core workstation (longer on a
    Pi); --quick about one.

    \b
    Examples:
      cxr-edge bench
      cxr-edge bench --pack my_pack --threads 4 --json > bench.json
      cxr-edge bench --only models --only end_to_end
    """
    from ..tools.bench.formatting import format_report
    from ..tools.bench.sections import run_bench
    from ..training.keras_bench import keras_rows   # TensorFlow only in its child processes, when it is installed

    report = run_bench(pack, threads=threads, image=image, quick=quick, keras=not no_keras,
                       batch_images=batch_images, sections=sections or None, backend=backend,
                       command=_command_line(click.get_current_context()), keras_rows=keras_rows)
    click.echo(json_text(report, indent=2) if as_json else format_report(report))


def _command_line(ctx) -> str:
    """The options this run was given, as a command line to repeat it."""
    words = ["cxr-edge", "bench"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        flag = param.opts[0]
        if value in (None, False, ()):
            continue
        if value is True:
            words.append(flag)
        else:
            words += [w for v in (value if isinstance(value, tuple) else (value,)) for w in (flag, str(v))]
    return " ".join(words)
