"""``edgel2 export``: options in, :func:`edgel2.export.export_model` called, its report out."""
from __future__ import annotations

from pathlib import Path

import click

from edgel2.backend import use_backend
from edgel2.cli.base import RECORDED_DATA, CheckCount, ChoiceList, ProgressBars, cli, flat
from edgel2.errors import EdgeL2Error
from edgel2.export.config import ExportConfig
from edgel2.export.onnx import INT8_METHODS, MAX_OPSET, MIN_OPSET
from edgel2.variants import FORMATS, PRECISION_ALIASES, PRECISIONS

DEFAULTS = ExportConfig()


@cli.command(name="export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--format", "formats", type=ChoiceList([*FORMATS, "all"]), multiple=True,
              default=list(DEFAULTS.formats), show_default=True, callback=flat,
              help="Several comma-separated or repeated, or 'all'.")
@click.option("--precision", "precisions",
              type=ChoiceList([*PRECISIONS, "all"], aliases=PRECISION_ALIASES),
              multiple=True, default=list(DEFAULTS.precisions), show_default=True, callback=flat,
              help="fp32 (full precision; 'none' is read as fp32), fp16, dynamic (int8 weights), "
                   "int8 (full integer, calibrated); several comma-separated or repeated, "
                   "or 'all'.")
@click.option("--data", type=str, default=None,
              help="Images to quantize, calibrate and check on. " + RECORDED_DATA)
@click.option("--int8-images", type=click.IntRange(min=1), default=DEFAULTS.int8_images,
              show_default=True,
              help="Class-balanced training images int8 quantization picks its ranges on (the "
                   "representative images).")
@click.option("--int8-method", type=click.Choice(INT8_METHODS),
              default=DEFAULTS.int8_method, show_default=True,
              help="How ONNX int8 quantization picks its ranges on them.")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=DEFAULTS.opset,
              show_default=True, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: export/ beside MODEL).")
@click.option("--check", type=CheckCount(), default=str(DEFAULTS.check), show_default=True,
              help="Held-out test images to compare each file with Keras on; 'all' or 0.")
@click.option("--allow-drop", is_flag=True,
              help=f"Keep quantized files that lose more than {DEFAULTS.max_drop:g} points of "
                   "top-1.")
@click.option("--calibrate/--no-calibrate", default=DEFAULTS.calibrate, show_default=True,
              help="Fit a calibration on the run's validation split (else half of the test "
                   "split) and record it in every file when it lowers the held-out NLL, so "
                   "that probabilities match accuracy (see `edgel2 calibrate`).")
@click.option("--flip-average", is_flag=True,
              help="Put the left-right mirror image into the graph and average the two logits "
                   "(test-time augmentation: more accurate, twice the compute). Files go to "
                   "export-flip/ unless --out.")
@click.option("--fixed-batch", "batch", type=click.IntRange(min=1), default=None,
              help="Fix the batch dimension at N images (NPUs, NNAPI and delegates want static "
                   "shapes); the file refuses other batches, edgel2's runtime pads to it. "
                   "Files go to export-bN/ unless --out. Default: any batch.")
@click.option("--unknown/--no-unknown", default=DEFAULTS.unknown, show_default=True,
              help="Add the unknown score as a second output (unknown_score) with a threshold "
                   "in the metadata, so that every engine and client can tell an image of none "
                   "of the classes (see the guide \"Unknown images\").")
@click.option("--keep", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=DEFAULTS.keep, show_default=True,
              help="The share of known images the unknown threshold keeps; the rest of them "
                   "are flagged unknown (0.95: 5 %).")
@click.option("--unknown-images", type=click.IntRange(min=1), default=DEFAULTS.unknown_images,
              show_default=True,
              help="Class-balanced training images the unknown score is fitted on.")
@click.option("--c-array", is_flag=True,
              help="Also write each int8 TFLite file as C source (NAME-int8.cc/.h: the bytes, "
                   "class names and the tensor arena it needs) for TensorFlow Lite Micro "
                   "firmware.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def export(model, formats, precisions, data, int8_images, int8_method, opset, out, check, allow_drop,
           calibrate, flip_average, batch, unknown, keep, unknown_images, c_array,
           force) -> None:
    """Export MODEL (.keras, trained on any backend) to ONNX and/or TFLite, in fp32, fp16,
    dynamic-range or int8, and check every file against the Keras model.

    \b
    Every file takes uint8 NHWC pixels, returns float32 logits (and the unknown score), and
    carries its metadata (class names, input layout, normalization, precision, measured
    accuracy, the unknown threshold, the network's parameters and multiply-adds). Int8
    TFLite files get the tensor arena TensorFlow Lite Micro needs, measured with its
    interpreter (edgel2[micro]). Writes export_report.json beside the files and exits 1
    if any file failed its check.
    """
    use_backend("tensorflow")  # tf2onnx and the TFLite converter need TensorFlow
    from edgel2.export import export_model, format_table

    config = ExportConfig(formats=tuple(formats), precisions=tuple(precisions), data=data,
                          int8_images=int8_images, int8_method=int8_method, opset=opset,
                          out=out, check=check, force=force, allow_drop=allow_drop,
                          calibrate=calibrate, flip_average=flip_average, batch=batch,
                          unknown=unknown, keep=keep, unknown_images=unknown_images,
                          c_array=c_array)
    report = export_model(model, config=config,
                          progress=lambda line: click.echo(f"export: {line}", err=True),
                          check_progress=ProgressBars("running the check images"))
    click.echo(format_table(report))
    click.echo(f"report: {Path(report['out']) / 'export_report.json'}")
    failed = [r for r in report["rows"] if r["status"] != "ok"]
    if failed:
        raise EdgeL2Error(f"{len(failed)} of {len(report['rows'])} exports failed: "
                          + "; ".join(f"{r['file']}: {r['reason']}" for r in failed))

