"""``edgel2 infer``: options in, :func:`edgel2.runtime.io.classify_paths` (or, with ``--ray``,
:func:`edgel2.cluster.classify_on_ray`) called, the results out."""
from __future__ import annotations

import sys
import time

import click

from edgel2.cli.base import ChoiceList, ProgressBars, cli, default_of, plural
from edgel2.cluster import OUTPUT_FORMATS as RAY_FORMATS
from edgel2.cluster import is_ray_address
from edgel2.runtime.auto import COMPUTE_DTYPE_ALIASES, COMPUTE_DTYPES, ENGINES
from edgel2.runtime.classifier import Classifier
from edgel2.runtime.engines import PROVIDER_CHOICES
from edgel2.runtime.io import OUTPUT_FORMATS as LOCAL_FORMATS
from edgel2.runtime.io import classify_paths
from edgel2.runtime.probe import THROUGHPUT, WORKLOADS

SOME_IMAGES_FAILED = 3  # the exit code when some images could not be classified
# what a Classifier is opened with by default, which infer's options show and pass
OPENED = {name: default_of(Classifier, name)
          for name in ("batch_size", "providers", "engine", "compute_dtype")}


def _infer_on_ray(paths, model, top_k, batch_size, engine, workload, fmt, output, address,
                  actors, cpus_per_actor, unknown) -> None:
    """``edgel2 infer --ray``: edgel2.cluster.classify_on_ray, and its one-line summary."""
    if fmt not in RAY_FORMATS:
        raise click.UsageError(f"with --ray, --out-format is one of {', '.join(RAY_FORMATS)}")
    if not output:
        raise click.UsageError("--ray writes a folder of part files: pass --out FOLDER")
    from edgel2.cluster import classify_on_ray

    report = classify_on_ray(paths, output, model=model, output_format=fmt,
                             address=None if address == "local" else address, top_k=top_k,
                             batch_size=batch_size, actors=actors, cpus_per_actor=cpus_per_actor,
                             engine=engine, workload=workload, unknown=unknown,
                             progress=sys.stderr.isatty())
    click.echo(f"edgel2: {plural(report.images, 'image')} in {report.seconds:.2f} s "
               f"({report.images / max(report.seconds, 1e-9):.1f} img/s) on Ray, "
               f"{report.actors} actor{'s' * (report.actors != 1)} x {report.cpus_per_actor} "
               f"CPU{'s' * (report.cpus_per_actor != 1)}; {fmt} in {report.output}", err=True)
    if report.failed:
        click.echo(f"edgel2: {report.failed} of {plural(report.images, 'image')} failed", err=True)
        sys.exit(SOME_IMAGES_FAILED)


@cli.command()
@click.argument("paths", nargs=-1)
@click.option("--model", type=click.Path(), default=None,
              help="Exported .onnx or .tflite, or a folder holding one model's ONNX and "
                   "TFLite files (default: the int8 pair shipped with edgel2).")
@click.option("--top-k", type=click.IntRange(min=1), default=default_of(classify_paths, "top_k"),
              show_default=True,
              help="Labels per image (at most the model's class count).")
@click.option("--batch-size", type=click.IntRange(min=1), default=OPENED["batch_size"],
              show_default=True)
@click.option("--provider", type=click.Choice(PROVIDER_CHOICES), default=OPENED["providers"],
              show_default=True, help="auto: TensorRT, then CUDA, then CPU.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads (default: all cores).")
@click.option("--engine", type=click.Choice(ENGINES), default=OPENED["engine"], show_default=True,
              help="auto: on a CPU, the engine and settings measured fastest here for "
                   "--workload (measured once per machine and model, then remembered; "
                   "EDGEL2_ENGINE_PROBE=0 turns that off); on a GPU, ONNX Runtime.")
@click.option("--workload", type=click.Choice(WORKLOADS), default=THROUGHPUT, show_default=True,
              help="What auto measures: images per second at --batch-size (throughput), or "
                   "the time for one image (latency).")
@click.option("--compute-dtype", type=ChoiceList(COMPUTE_DTYPES, COMPUTE_DTYPE_ALIASES,
                                                  single=True),
              default=OPENED["compute_dtype"], show_default=True,
              help="OpenVINO: compute floating-point layers in bfloat16 (CPUs with AVX512_BF16/AMX).")
@click.option("--out-format", "fmt", type=click.Choice([*LOCAL_FORMATS, *RAY_FORMATS]),
              default=None,
              help=f"{', '.join(LOCAL_FORMATS)} (default table); with --ray "
                   f"{', '.join(RAY_FORMATS)} (default parquet).")
@click.option("--out", "output", type=click.Path(), default=None,
              help="Write the results here (atomically) instead of stdout; with --ray, a new "
                   "folder of part files (required).")
@click.option("--save", "save_dir", type=click.Path(file_okay=False), default=None,
              help="Also write a copy of each image with its top label and probability drawn "
                   "on into this folder.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]",
              help="Run on Ray (pip install \"edgel2[ray]\"): a local Ray on this machine, or "
                   "the cluster at ADDRESS (auto, ray://HOST:10001). PATHS may also be "
                   "filesystem URIs pyarrow reads (s3://, gs://, hdfs://, file://).")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="With --ray: Classifier actors (default: the cluster's CPUs / "
                   "--cpus-per-actor).")
@click.option("--cpus-per-actor", type=click.IntRange(min=1), default=None,
              help="With --ray: CPUs (engine and decoding threads) of each actor (default 2, "
                   "or 1 on nodes of 1 CPU).")
@click.option("--unknown/--no-unknown", default=default_of(Classifier, "unknown"),
              show_default=True,
              help="Say which images are none of the classes (unknown: true, and the score), "
                   "by the unknown score and threshold inside the model file; the label is "
                   "still given. Files exported without the score are unaffected.")
@click.option("-v", "--verbose", is_flag=True,
              help="Say which engine auto chose and the figures behind the choice.")
def infer(paths, model, top_k, batch_size, provider, threads, engine, workload, compute_dtype, fmt,
          output, save_dir, ray_address, actors, cpus_per_actor, unknown, verbose) -> None:
    """Classify images: files, folders (recursive) and globs.

    \b
    Bad files (empty, truncated, not an image, too large, not a regular file, unreadable)
    and folders that cannot be read are reported in the output with a reason; every other
    file is still classified. Exit code 0 when all succeeded, 3 when some images failed,
    1 for a missing or non-edgel2 model, 2 for bad options, 4 when --out could not be
    written at the end (the results went to stdout).

    \b
    On Ray (one Classifier per actor; Parquet or JSON lines, the fields of --out-format json):
      edgel2 infer --ray photos/ --out results/
      edgel2 infer --ray auto s3://bucket/photos/ --out s3://bucket/results/ --out-format jsonl

    \b
    Copies with the top label drawn on, to look at:
      edgel2 infer photos/ --model runs/train/photos/export/photos-int8.onnx --save annotated/
    """
    if ray_address is not None and not is_ray_address(ray_address):
        # `--ray photos/`: the optional value was the first path
        paths, ray_address = (ray_address, *paths), "local"
    if not paths:
        raise click.UsageError("Missing argument 'PATHS...'.")
    if ray_address is not None:
        if save_dir:
            raise click.UsageError("--save draws on local copies: it does not go with --ray")
        _infer_on_ray(paths, model, top_k, batch_size, engine, workload, fmt or "parquet",
                      output, ray_address, actors, cpus_per_actor, unknown)
        return
    if fmt in RAY_FORMATS:
        raise click.UsageError(f"--out-format {fmt} is written by --ray; without it use one of "
                               f"{', '.join(LOCAL_FORMATS)}")
    if actors is not None or cpus_per_actor is not None:
        raise click.UsageError("--actors and --cpus-per-actor go with --ray")
    fmt = fmt or LOCAL_FORMATS[0]
    import warnings

    from edgel2.runtime import Classifier, ProviderFallbackWarning
    from edgel2.runtime.io import classify_paths, render
    from edgel2.utils import check_output, deliver_text

    if output:
        check_output(output)  # before the work: the results must have somewhere to go
    # Pillow warns about odd files it still decodes (bad TIFF tags, ICO sizes): the results
    # report real failures, so these would only be noise between them
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    if save_dir:
        from edgel2.runtime.annotate import prepare_folder, save_annotated

        prepare_folder(save_dir)  # before the work: an unwritable folder is one line at once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProviderFallbackWarning)
        classifier = Classifier(model, providers=provider, threads=threads,
                                batch_size=batch_size, engine=engine, compute_dtype=compute_dtype,
                                workload=workload, unknown=unknown)
    for w in caught:
        if issubclass(w.category, ProviderFallbackWarning):
            click.echo(f"edgel2: warning: {w.message}", err=True)
    for line in classifier.reasons() if verbose else []:
        click.echo(f"edgel2: {line}", err=True)
    top_k = min(top_k, len(classifier.class_names))
    start = time.perf_counter()
    progress = ProgressBars("classifying")
    results = classify_paths(classifier, paths, top_k, progress=progress)
    images = progress.total  # the image files found (not the folders that could not be read)
    deliver_text(render(results, fmt, top_k), output, echo=lambda t: click.echo(t, nl=False))
    seconds = time.perf_counter() - start
    click.echo(f"edgel2: {plural(images, 'image')} in {seconds:.2f} s "
               f"({images / max(seconds, 1e-9):.1f} img/s): {classifier.describe()}", err=True)
    if save_dir:
        saved = save_annotated(results, save_dir)
        click.echo(f"edgel2: {plural(len(saved), 'annotated copy', 'annotated copies')} in "
                   f"{save_dir}", err=True)
    failed = sum(r.error is not None for r in results)
    if failed:
        click.echo(f"edgel2: {failed} of {plural(len(results), 'image')} failed", err=True)
        sys.exit(SOME_IMAGES_FAILED)

