"""``cxr-edge qat RUN_DIR``: quantization-aware fine-tuning of a trained run (writes RUN_DIR/qat.h5)."""

from __future__ import annotations

import sys

import click

__all__ = ["qat"]


@click.command()
@click.argument("run_dir", type=click.Path(path_type=str))
@click.option("--epochs", type=int, help="QAT epochs (default: the recipe's qat.epochs).")
@click.option("--lr", type=float, help="QAT learning rate (default: the recipe's qat.lr).")
@click.option("--batch-size", type=int, help="Batch size (default: qat.batch_size, else train.batch_size).")
@click.option("--calibrate-batches", type=int,
              help="Training batches that set the activation ranges before fine-tuning (default: "
                   "qat.calibrate_batches; 0 = tfmot's initial [-6, 6] ranges).")
@click.option("--distill", type=click.FloatRange(0.0, 1.0),
              help="Share of each training target taken from the float model's output (default: qat.distill; "
                   "1 = learn to decide as the float model does under quantization, 0 = the labels only).")
@click.option("--temperature", type=click.FloatRange(1.0, 20.0),
              help="Distillation temperature (default: qat.temperature): the float model's and the QAT model's "
                   "outputs are softened (logits / T) so that every film teaches its logit gaps, not only its "
                   "class; 1 = no softening.")
@click.option("--select", type=click.Choice(["primary", "float_agreement", "int8_agreement"]),
              help="Which epoch becomes qat.h5 (default: qat.select): the best on the task's primary validation "
                   "metric; float_agreement, the one whose decisions on the val films agree most with the float "
                   "model's (what the export check asks of int8); or int8_agreement, the same agreement measured "
                   "on each epoch's int8 conversion, run as export runs it (adds a conversion, ~30 s at 224 px, "
                   "per epoch).")
@click.option("--resume", is_flag=True, help="Continue an interrupted QAT fine-tune from its last epoch.")
@click.option("--restart", is_flag=True, help="Discard an earlier QAT result and fine-tune again from float.h5.")
@click.option("--strategy", type=click.Choice(["default", "mirrored", "multiworker"]), default="default",
              show_default=True, help="tf.distribute strategy, as for cxr-edge train.")
@click.option("--eager", is_flag=True, hidden=True, help="Run eagerly (tests: skips ~25 s of graph tracing).")
def qat(run_dir, epochs, lr, batch_size, calibrate_batches, distill, temperature, select, resume, restart, strategy,
        eager):
    """Fine-tune RUN_DIR's best float model with quantization-aware training.

    The model is wrapped with tensorflow-model-optimization's 8-bit scheme, its activation ranges
    are measured on a few training batches, and it is fine-tuned on the train split with the
    recipe's augmentation at a low learning rate. The best epoch on the task's primary validation
    metric (with --select float_agreement / int8_agreement: the epoch whose QAT model / int8
    conversion agrees most with the float model) is written to RUN_DIR/qat.h5 and recorded in
    run.json ("qat"). A layer that cannot be quantized is named in the error.

    \b
    Examples:
      cxr-edge qat runs/cxr4
      cxr-edge qat runs/cxr4 --epochs 4 --lr 3e-5 --restart
      cxr-edge qat runs/nih14 --distill 1 --restart    learn the float model's decisions, not the labels
      cxr-edge qat runs/cxr4 --distill 1 --temperature 4 --restart    ... and its logit gaps
      cxr-edge qat runs/cxr4 --resume

    Next: cxr-edge export RUN_DIR --int8 --from qat.
    """
    from ..training.qat_trainer import qat as run_qat
    from .train import epoch_line

    if resume and restart:
        raise click.UsageError("--resume and --restart exclude each other")
    run = run_qat(run_dir, epochs=epochs, lr=lr, batch_size=batch_size, calibrate_batches=calibrate_batches,
                  distill=distill, temperature=temperature, select=select, resume=resume, restart=restart,
                  strategy=strategy, verbose=1 if sys.stdout.isatty() else 0, run_eagerly=eager,
                  on_epoch=lambda row: click.echo(epoch_line(row), err=True))
    q = run.info.get("qat") or {}
    primary = run.recipe().spec.primary_metric
    click.echo(f"{run.path}/qat.h5: {q.get('status')}; best {q.get('metric')} {q.get('value', float('nan')):.4f} "
               f"(epoch {q.get('epoch')}; {primary}: float {q.get('float_value', float('nan')):.4f}, after range "
               f"calibration {q.get('calibrated_value', float('nan')):.4f}); {q.get('wall_time_s')} s")
    click.echo(f"next: cxr-edge export {run.path} --int8")
