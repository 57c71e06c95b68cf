"""``edgel2 eval`` and ``edgel2 calibrate``: options in, :func:`edgel2.evaluate.evaluate_path`
or :func:`edgel2.calibration.files.calibrate_file` called, the report out."""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgel2 import evaluate as evaluation
from edgel2.cli.base import (
    RECORDED_DATA,
    ProgressBars,
    backend_option,
    cli,
    data_options,
    default_of,
    plural,
)
from edgel2.runtime.auto import ENGINES


@cli.command(name="eval")
@click.argument("model", type=click.Path(dir_okay=False))
@data_options(training=False)
@backend_option
@click.option("--engine", type=click.Choice(ENGINES), default=default_of(evaluation.evaluate_path, "engine"),
              show_default=True, help="Engine for an exported file (as edgel2 infer); ignored for .keras.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Engine threads for an exported file (default: the engine's choice).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per batch (default: 256 for .keras, 64 for an exported file).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where eval.json and confusion.png go (default: beside MODEL, in eval/ "
                   "for .keras and eval/FILE-NAME/ for an exported file).")
@click.option("--ood", multiple=True, type=click.Path(file_okay=False),
              help="A folder of images of none of the classes (repeatable; a folder of "
                   "folders is one set each): the report adds how well the unknown score (the "
                   "file's own; for .keras, the one export would write) tells them from the "
                   "test images: AUROC, FPR95, share flagged.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def evaluate(model, data, test_split, image_size, backend, engine, threads, batch_size, out,
             ood, as_json) -> None:
    """Top-1 and per-class accuracy of MODEL on the test split, and a confusion matrix (PNG
    and JSON). MODEL is a trained .keras file or an exported .onnx/.tflite file (run by the
    runtime, as edgel2 infer runs it; its report adds the calibration, ECE and NLL, and for a
    file with the unknown score the share of test images it keeps); with --ood, AUROC and
    FPR95 per out-of-distribution folder."""
    from edgel2.evaluate import default_report_folder, evaluate_path, format_unknown, save_report

    report = evaluate_path(model, data=data, test_split=test_split, image_size=image_size,
                           engine=engine, threads=threads, batch_size=batch_size,
                           backend=backend, on_batch=ProgressBars(f"evaluating {Path(model).name}"),
                           ood=ood)
    paths = save_report(report, out or default_report_folder(model))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{'class':<14}{'top-1':>8}")
    for name, acc in report["per_class"].items():
        click.echo(f"{name:<14}{100 * acc:>7.2f}%")
    click.echo(f"{'all':<14}{100 * report['accuracy']:>7.2f}%  ({plural(report['images'], 'test image')} "
               f"of {report['data']['name']}, from {report['data']['source']})")
    if "model" in report:
        calibration = report.get("calibration")
        click.echo(f"{Path(model).name} on {report['model']['engine']}" + (
            f"; calibration: mean confidence {calibration['mean_confidence']:.3f}, "
            f"ECE {calibration['ece']:.4f}, NLL {calibration['nll']:.4f}" if calibration else ""))
    if report.get("unknown"):
        click.echo(format_unknown(report["unknown"]))
    click.echo(f"report: {paths['json']}  confusion matrix: "
               + (str(paths["png"]) if paths["png"] else 'none (pip install "edgel2[train]" '
                  "for the PNG)"))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=str, default=None,
              help="Labelled images to fit on (the validation split, else half of the test "
                   "split) and report on (the test split, or its other half). " + RECORDED_DATA)
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Reliability diagram PNG (default: beside MODEL, e.g. "
                   "model-int8-onnx-reliability.png).")
@click.option("--dry-run", is_flag=True, help="Measure and plot; leave the file as it is.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout.")
def calibrate(model, data, plot, dry_run, as_json) -> None:
    """Make MODEL's (.onnx or .tflite) probabilities match its accuracy: fit a one-parameter
    calibration (a temperature, or the inverse of label smoothing, whichever fits better) to
    its logits on the validation split (else one half of the test split), report top-1, ECE
    and NLL before and after on the test split (or its other half), and record it in the
    file's metadata. A fit on fewer than 100 images, at the end of its search range, sharper
    than 4x or that does not lower the held-out NLL is refused: the file keeps plain softmax.

    \b
    The graph is not touched: the edgel2 runtime applies the calibration to the logits,
    and it never changes the order of the classes. `edgel2 export` does this by default.
    """
    from edgel2.calibration.files import calibrate_file, describe, format_calibration

    path = Path(model)
    plot = plot or path.with_name(f"{path.stem}-{path.suffix.lstrip('.')}-reliability.png")
    result = calibrate_file(path, data=data, write=not dry_run, plot=plot,
                            on_batch=ProgressBars(f"logits of {path.name}"))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(format_calibration(result))
    if "plot" in result:
        click.echo(f"reliability diagram: {result['plot']}")
    if not dry_run:
        click.echo(f"{describe(result)} written into {path}")

