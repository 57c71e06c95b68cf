"""``edgel2 serve``: options in, :func:`edgel2.serve.run` called until SIGTERM."""
from __future__ import annotations

import click

from edgel2.cli.base import checked_name, cli, default_of
from edgel2.config import MAX_BODY_MB
from edgel2.runtime.auto import ENGINES
from edgel2.runtime.batcher import MAX_DELAY_MS
from edgel2.runtime.probe import WORKLOADS
from edgel2.serve import run as serve_run
from edgel2.serve.config import ServeConfig

SERVE = ServeConfig()  # the defaults


@cli.command()
@click.option("--model", type=click.Path(), default=None,
              help="As for edgel2 infer: a file, or a folder holding one model's pair "
                   "(default: the int8 pair shipped with edgel2).")
@click.option("--engine", type=click.Choice(ENGINES), default=SERVE.engine, show_default=True,
              help="As for edgel2 infer.")
@click.option("--workload", type=click.Choice(WORKLOADS), default=SERVE.workload, show_default=True,
              help="What auto measures: the time for one image (latency: an interactive "
                   "app's requests), or images per second (throughput: clients that send "
                   "batches).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Engine threads (default: the engine's choice).")
@click.option("--host", default=default_of(serve_run, "host"), show_default=True,
              help="Address to listen on (0.0.0.0: every interface; think before you do).")
@click.option("--port", type=click.IntRange(0, 65535), default=default_of(serve_run, "port"),
              show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=SERVE.max_batch, show_default=True,
              help="Most images in one model call.")
@click.option("--max-delay-ms", type=click.FloatRange(0, MAX_DELAY_MS), default=SERVE.max_delay_ms,
              show_default=True, help="How long the first image of a batch waits for others.")
@click.option("--max-queue", type=click.IntRange(min=1), default=SERVE.max_queue, show_default=True,
              help="Images waiting for the model before requests get 503 (Retry-After).")
@click.option("--max-body-mb", type=click.FloatRange(0, MAX_BODY_MB, min_open=True),
              default=SERVE.max_body_mb,
              show_default=True, help="Largest request body, however it is sent; larger gets 413.")
@click.option("--max-images", type=click.IntRange(min=1), default=SERVE.max_images, show_default=True,
              help="Most images in one request (files, or a v2 tensor's batch); more gets 413.")
@click.option("--max-request-mpx", type=click.FloatRange(0, min_open=True),
              default=SERVE.max_request_mpx,
              show_default=True,
              help="Most decoded megapixels in one request, read from the files' headers "
                   "before decoding; more gets 413.")
@click.option("--client-timeout-s", type=click.FloatRange(0.01, 3600),
              default=SERVE.client_timeout_s,
              show_default=True,
              help="A client silent this long in the middle of a request is disconnected.")
@click.option("--grace-s", type=click.FloatRange(0, 3600), default=SERVE.grace_s, show_default=True,
              help="After SIGTERM, how long requests in flight may finish; then they get 503.")
@click.option("--top-k", type=click.IntRange(min=1), default=SERVE.top_k, show_default=True,
              help="Labels per image from /v1/classify (a request may ask ?top_k=N).")
@click.option("--workers", type=click.IntRange(min=1), default=default_of(serve_run, "workers"),
              show_default=True,
              help="Server processes, each with its own model, behind one port.")
@click.option("--unknown/--no-unknown", default=SERVE.unknown, show_default=True,
              help="Answers say which images are none of the classes (unknown, and the score; "
                   "a v2 answer adds the unknown_score and unknown outputs), by the unknown "
                   "score inside the model file; /metrics counts them.")
@click.option("--name", default=None, callback=checked_name,
              help="The served model's name in the URLs and the page (default: the run's name "
                   "and precision from the file's metadata, e.g. photos-int8; else the file's "
                   "name without suffix).")
def serve(model, engine, workload, threads, host, port, max_batch, max_delay_ms, max_queue, max_body_mb,
          max_images, max_request_mpx, client_timeout_s, grace_s, top_k, workers, unknown,
          name) -> None:
    """Serve the model over HTTP until SIGTERM or Ctrl-C (then finish what is in flight and
    exit 0). Needs the serve extra: pip install "edgel2[serve]".

    \b
    GET  /                          a page: drop an image, see the top-k
    POST /v1/classify               image files (multipart) or one image (raw body) -> top-k JSON
    GET  /v2/health/live, /v2/health/ready, /v2/models/NAME    KServe v2 (Open Inference Protocol)
    POST /v2/models/NAME/infer      uint8 NHWC tensors in JSON -> logits (and unknown_score)
    GET  /metrics                   Prometheus: requests, latency, batch sizes, queue depth

    \b
    Facing clients you do not control (behind a proxy): headers are bounded (64 KiB, 100
    lines: 431), a client silent mid-request is disconnected (--client-timeout-s), requests
    take turns for decoding and for the model, and a request whose client has gone costs no
    model work. A port in use is one line and exit 1; with --port 0 the system chooses and
    the first lines printed say which.
    """
    import edgel2.serve.app  # noqa: F401 - a missing [serve] extra is one line before any work
    from edgel2.serve import ServeConfig, open_model, run

    config = ServeConfig(model=model, name=name, engine=engine, workload=workload,
                         threads=threads, max_batch=max_batch,
                         max_delay_ms=max_delay_ms, max_queue=max_queue,
                         max_body_mb=max_body_mb, max_images=max_images,
                         max_request_mpx=max_request_mpx, client_timeout_s=client_timeout_s,
                         grace_s=grace_s, top_k=top_k, unknown=unknown)
    # opened here (once, even for several workers, whose own opens find the choice it
    # measured), so that a bad file is one line before anything listens
    classifier = open_model(config)
    served = name or classifier.name

    def listening(url: str) -> None:
        click.echo(f"edgel2 serve: {served} ({classifier.describe(why=True)}) at "
                   f"{url}/v2/models/{served}", err=True)
        click.echo(f"edgel2 serve: {url}/ (Ctrl-C or SIGTERM to stop)", err=True)

    run(config, host=host, port=port, workers=workers,
        classifier=classifier if workers == 1 else None, on_listening=listening,
        check_model=False)

