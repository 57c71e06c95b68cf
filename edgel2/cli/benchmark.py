"""``edgel2 benchmark``: options in, :func:`edgel2.benchmark.benchmark` called, the table,
JSON and chart out."""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgel2.benchmark.run import benchmark as measure
from edgel2.cli.base import RECORDED_DATA, CheckCount, ChoiceList, IntList, cli, default_of, flat
from edgel2.errors import EdgeL2Error
from edgel2.runtime.auto import ENGINES
from edgel2.runtime.engines import PROVIDER_CHOICES
from edgel2.variants import BENCHMARK_FORMATS


@cli.command()
@click.argument("sources", metavar="SOURCE...", nargs=-1, required=True,
                type=click.Path(exists=False))
@click.option("--data", type=str, default=None, help="Test images for top-1. " + RECORDED_DATA)
@click.option("--format", "formats", type=ChoiceList(BENCHMARK_FORMATS), multiple=True,
              default=None, callback=flat,
              help="Runtimes to measure, comma-separated or repeated (default: all "
                   "installed; openvino runs the ONNX files).")
@click.option("--engine", type=click.Choice(ENGINES), default=default_of(measure, "engine"),
              show_default=True, help="Measure the exported files on this engine only, beside Keras "
                   "(auto: every installed engine).")
@click.option("--batch-sizes", type=IntList(), multiple=True,
              default=[",".join(map(str, default_of(measure, "batch_sizes")))],
              show_default=True, callback=flat, help="Comma-separated or repeated.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads per runtime (default: all cores).")
@click.option("--provider", type=click.Choice(PROVIDER_CHOICES),
              default=default_of(measure, "provider"), show_default=True,
              help="ONNX Runtime provider.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True),
              default=default_of(measure, "seconds"),
              show_default=True, help="Time per cell (latency, each batch size).")
@click.option("--check", type=CheckCount(), default=str(default_of(measure, "check")),
              show_default=True,
              help="Test images for top-1; 'all' for the whole split.")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=None,
              help="Exit 1 if any row's top-1 (a fraction, e.g. 0.9) is below: a CI gate.")
@click.option("--repeat", type=click.IntRange(min=1), default=default_of(measure, "repeat"),
              show_default=True,
              help="Rounds over all rows, interleaved; each cell is the median (steadier "
                   "ratios on a machine whose speed drifts).")
@click.option("--export-missing/--no-export-missing", default=None,
              help="Export the files a row needs that are not there (default: only when "
                   "SOURCE is a .keras model; an export folder is measured as it is).")
@click.option("--unknown-cost", is_flag=True,
              help="Also time each file that has the unknown score as a copy without it (its "
                   "ops pruned), in the same rounds, and print what the score costs.")
@click.option("--out", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Where the JSON report goes (default: benchmark.json in the export folder); "
                   "the chart goes beside it as .png.")
def benchmark(sources, data, formats, engine, batch_sizes, threads, provider, seconds, check,
              min_accuracy, repeat, export_missing, unknown_cost, json_path) -> None:
    """Size, top-1, batch-1 latency and throughput of every format and precision of SOURCE
    (a .keras model, exporting what is missing, or an export folder, measured as it is) on
    this machine.

    \b
    Each runtime runs in its own process; speed-ups are against Keras fp32 in the same run.
    Several SOURCEs, or a folder of several models' files, are a family: measured
    in the same interleaved rounds, each model's cost against the costliest's, and the chart
    draws top-1 against batch-1 latency and against multiply-adds:
      edgel2 benchmark models/ models/resnet20/ --format onnx,tflite --repeat 5
    """
    from edgel2.benchmark import benchmark as run_benchmark
    from edgel2.benchmark import format_table, plot_report
    from edgel2.utils import check_output, deliver_text

    if json_path:
        check_output(json_path)
    report = run_benchmark(list(sources), data=data, formats=formats or None, engine=engine,
                           batch_sizes=batch_sizes,
                           threads=threads, provider=provider, seconds=seconds, check=check,
                           min_accuracy=min_accuracy, repeat=repeat,
                           export_missing=export_missing, unknown_cost=unknown_cost,
                           progress=lambda line: click.echo(f"benchmark: {line}", err=True))
    click.echo(format_table(report))
    json_path = Path(json_path) if json_path else Path(report["export_dir"]) / "benchmark.json"
    deliver_text(json.dumps(report, indent=2) + "\n", json_path, echo=click.echo)
    plot_report(report, json_path.with_suffix(".png"))
    click.echo(f"report: {json_path}  chart: {json_path.with_suffix('.png')}")
    bad = [r for r in report["rows"] if r["status"] not in ("ok", "skipped")]
    if bad:
        raise EdgeL2Error(f"{len(bad)} of {len(report['rows'])} rows failed: " + "; ".join(
            f"{r['format']} {r['precision']}: {r['reason']}" for r in bad))

