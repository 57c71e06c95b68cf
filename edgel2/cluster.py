"""Batch inference on a Ray cluster: ``edgel2 infer --ray`` and :func:`classify_on_ray`.

The same runtime as ``edgel2 infer`` (:class:`~edgel2.runtime.Classifier`), run by Ray Data
(``pip install "edgel2[ray]"``) as a ``map_batches`` callable class, :class:`ClassifyBatch`:

- **One Classifier per actor**, its engine's threads sized to the CPUs Ray gave the actor
  (Ray sets ``OMP_NUM_THREADS=1`` in workers, which would otherwise leave one thread busy).
- **The model travels through Ray's object store**, so worker nodes need no copy of it.
- **The driver lists the files, the actors read them**: local folders are walked as
  ``edgel2 infer`` walks them (:func:`~edgel2.runtime.io.expand_paths`: hostile trees, FIFOs and
  unreadable folders included), and ``s3://``, ``gs://``, ``hdfs://`` or ``file://`` URIs
  through any filesystem pyarrow reads. On a cluster, local paths must be visible to every
  node (a shared filesystem); URIs are read by each actor.
- **Bad files are rows**, with the reason ``edgel2 infer`` gives, never a failed job.
- **Results are Parquet or JSON lines** with ``edgel2 infer --format json``'s fields
  (``path``, ``predictions`` = [{``label``, ``probability``}] best first, ``error``), written by
  Ray's own writers as part files into one folder: on a local filesystem into a temporary
  folder renamed into place at the end, so a failed job leaves nothing half-written.
- **A killed worker costs a retry, not the job**: Ray Data restarts a dead actor and runs its
  batches again.

Ray 2.60's C++ core prints one error-level line per actor pool, "... has constructor arguments
in the object store and max_restarts > 0": a known false alarm for any Ray Data actor
(ray-project/ray#57733); it is left alone, since silencing Ray's C++ log would hide real errors.

Rows come out in no fixed order (Ray Data's streaming default, which keeps every actor busy):
join on ``path``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from edgel2.errors import EdgeL2Error, OptionError, first_line
from edgel2.runtime.classifier import Classifier, FileResult
from edgel2.runtime.io import expand_paths, record
from edgel2.runtime.probe import THROUGHPUT
from edgel2.utils import atomic_path, check_output

OUTPUT_FORMATS = ("parquet", "jsonl")
# Files per call of an actor: several of the classifier's batches, so that decoding the next
# overlaps the model running on this one (predict_files' pipeline); measured here with
# OpenVINO on 2 threads: 600 img/s in calls of 256 files, 676 in calls of 1,024, 360 in
# calls of 64 (one batch, nothing to overlap)
ROWS_PER_BLOCK = 1024
# CPUs per actor by default: an actor decodes the next batch while the engine runs this one,
# so 2 keep its pipeline busy (measured on 2 cores, 10,000 files: 1 actor x 2 CPUs 528 img/s,
# 2 actors x 1 CPU 322, the two actors' threads fighting over the cores)
CPUS_PER_ACTOR = 2
# A file read from a URI is held in memory whole: far above any photo edgel2 classifies
MAX_URI_BYTES = 256 << 20


@dataclass
class RayReport:
    """What a Ray job did: ``images`` rows written (``failed`` of them with an error) into
    the folder ``output``, in ``seconds`` from the first file read to the last row written."""

    images: int
    failed: int
    seconds: float
    output: str
    actors: int
    cpus_per_actor: int


def result_schema():
    """The Arrow schema of a result row: ``edgel2 infer --format json``'s record."""
    import pyarrow as pa

    prediction = pa.struct([("label", pa.string()), ("probability", pa.float64())])
    return pa.schema([("path", pa.string()), ("predictions", pa.list_(prediction)),
                      ("unknown", pa.bool_()), ("unknown_score", pa.float64()),
                      ("error", pa.string())])


def results_table(results: Iterable[FileResult]):
    """FileResults as an Arrow table of :func:`result_schema`: the records ``edgel2 infer
    --format json`` writes (:func:`~edgel2.runtime.io.record`).

    Examples:
        >>> table = results_table([FileResult("a.png", [("cat", 0.9123456)]), FileResult("b", error="empty file")])
        >>> table.to_pylist()[0]["predictions"], table.to_pylist()[1]["error"]
        ([{'label': 'cat', 'probability': 0.912346}], 'empty file')
    """
    import pyarrow as pa

    return pa.Table.from_pylist([record(r) for r in results], schema=result_schema())


class ClassifyBatch:
    """A Ray Data ``map_batches`` callable class: a batch of ``path`` rows in, result rows
    (:func:`result_schema`) out. One :class:`~edgel2.runtime.Classifier` per actor.

    ``model`` is the model file's bytes, or ``{file name: bytes}`` for a pair of files that
    are one model (or a list holding an object reference to either, which the actor
    fetches); ``threads`` defaults to the CPUs Ray assigned the actor. With ``engine="auto"``
    each node measures its engines for ``workload`` once (the actors of a node share the
    measurement through the cache; see :mod:`edgel2.runtime.choices`).

    Examples:
        >>> import ray                                                       # doctest: +SKIP
        >>> ds = ray.data.from_items([{"path": "cat.png"}])                   # doctest: +SKIP
        >>> ds.map_batches(ClassifyBatch, fn_constructor_kwargs={"model": model_bytes},
        ...                batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=2)
        ...                ).take_all()                                       # doctest: +SKIP
        [{'path': 'cat.png', 'predictions': [{'label': 'cat', 'probability': 0.93}],
          'unknown': False, 'unknown_score': 0.91, 'error': None}]
    """

    def __init__(self, model, top_k: int = 1, batch_size: int = 64, engine: str = "auto",
                 threads: int | None = None, workload: str = THROUGHPUT, unknown: bool = True):
        import ray

        if isinstance(model, list):  # [ObjectRef]: fetched here, not pinned as an argument
            model = ray.get(model[0])
        self.threads = threads or _assigned_cpus()
        # the engines read a path: a private copy of the model for this actor
        self._model_dir = tempfile.TemporaryDirectory(prefix="edgel2-model-")
        folder = Path(self._model_dir.name)
        files = model if isinstance(model, dict) else {"model": model}
        for name, content in files.items():
            (folder / Path(name).name).write_bytes(content)
        path = folder if isinstance(model, dict) else folder / "model"
        self.classifier = Classifier(path, providers="cpu", threads=self.threads,
                                     batch_size=batch_size, engine=engine, workload=workload,
                                     unknown=unknown)
        self.top_k = min(top_k, len(self.classifier.class_names))

    def __call__(self, batch):
        paths = batch.column("path").to_pylist()
        # classify_on_ray's listing adds the folders it could not read as rows with an error
        listed = batch.column("error").to_pylist() if "error" in batch.column_names else \
            [None] * len(paths)
        rows = _sources(paths, listed, self.threads)
        readable = [i for i, row in enumerate(rows) if not isinstance(row, FileResult)]
        classified = self.classifier.predict_files([rows[i] for i in readable], self.top_k,
                                                   workers=self.threads)
        for i, result in zip(readable, classified):
            rows[i] = FileResult(paths[i], result.prediction, result.error)
        return results_table(rows)


def _assigned_cpus() -> int:
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(1, int(cpus))


def _sources(paths: list[str], errors: list[str | None], threads: int) -> list:
    """What the classifier reads for each row: the path itself for a local file (opened by
    the runtime, which refuses FIFOs and devices), the bytes for a URI (read through pyarrow's
    filesystem for it), or a FileResult saying why there is nothing to read."""
    def read(path: str, error: str | None):
        if error is not None:
            return FileResult(path, error=error)
        if not _is_uri(path):
            return path
        try:
            filesystem, inner = _filesystem(path)
            with filesystem.open_input_stream(inner) as f:
                data = f.read(MAX_URI_BYTES + 1)
        except (OSError, ValueError) as e:  # pyarrow's errors are OSError subclasses
            return FileResult(path, error=f"cannot read: {first_line(e, 160)}")
        if len(data) > MAX_URI_BYTES:
            return FileResult(path, error=f"file too large (over {MAX_URI_BYTES >> 20} MiB)")
        return data or FileResult(path, error="empty file")

    if not any(_is_uri(p) for p in paths):  # local files: decoded by the classifier's pool
        return [read(p, e) for p, e in zip(paths, errors)]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(read, paths, errors))


def _is_uri(path: str) -> bool:
    return "://" in path


def _filesystem(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def list_images(patterns: Sequence[str]) -> list[FileResult | str]:
    """The files to classify: local folders, globs and files as ``edgel2 infer`` expands them
    (an unreadable folder is a FileResult), and every image file under a filesystem URI.

    Examples:
        >>> list_images(["no/such/file.png"])
        ['no/such/file.png']
    """
    from edgel2.runtime.preprocess import IMAGE_SUFFIXES

    local = [p for p in patterns if not _is_uri(p)]
    entries: list[FileResult | str] = list(expand_paths(local)) if local else []
    uris = [p for p in patterns if _is_uri(p)]
    if uris:
        import pyarrow.fs
    for uri in uris:
        try:
            filesystem, inner = _filesystem(uri)
            info = filesystem.get_file_info(inner)
            if info.type == pyarrow.fs.FileType.File:
                entries.append(uri)
                continue
            if info.type != pyarrow.fs.FileType.Directory:
                entries.append(FileResult(uri, error="no such file or folder"))
                continue
            found = filesystem.get_file_info(pyarrow.fs.FileSelector(inner, recursive=True))
        except (OSError, ValueError) as e:
            entries.append(FileResult(uri, error=f"cannot list: {first_line(e, 160)}"))
            continue
        scheme = uri.split("://", 1)[0]
        entries += sorted(f"{scheme}://{f.path}" for f in found
                          if f.type == pyarrow.fs.FileType.File
                          and Path(f.path).suffix.lower() in IMAGE_SUFFIXES
                          and not any(part.startswith(".") for part in Path(f.path).parts))
    return entries


def is_ray_address(text: str) -> bool:
    """Whether ``text`` is a Ray address (``auto``, ``local``, ``ray://HOST:PORT``,
    ``HOST:PORT``) rather than a path to classify (``edgel2 infer --ray photos/``).

    Examples:
        >>> [is_ray_address(t) for t in ("auto", "ray://head:10001", "10.0.0.1:6379", "photos/")]
        [True, True, True, False]
    """
    import re

    return text in ("auto", "local") or "://" in text or bool(re.fullmatch(r"[\w.-]+:\d+", text))


def classify_on_ray(paths: Sequence[str], output: str | os.PathLike, *,
                    model: str | os.PathLike | None = None, output_format: str = "parquet",
                    address: str | None = None, top_k: int = 1, batch_size: int = 64,
                    actors: int | None = None, cpus_per_actor: int | None = None,
                    engine: str = "auto", workload: str = THROUGHPUT, unknown: bool = True,
                    progress: bool = False, classify: type = ClassifyBatch) -> RayReport:
    """Classify every image under ``paths`` on Ray into a folder of part files.

    Each actor opens the model once and measures its own engines; results are Parquet or JSON
    lines with ``edgel2 infer --out-format json``'s fields (see the module's notes).

    Args:
        paths: Files, folders and globs, or filesystem URIs pyarrow reads (``s3://``, ...).
        output: The folder of part files; it must not exist yet.
        model: A file or a folder holding one model's pair; None for the shipped pair.
        output_format: ``parquet`` or ``jsonl``.
        address: A running cluster (``auto``, ``ray://host:10001``); None for a local Ray on
            this machine's CPUs.
        top_k: Labels per image.
        batch_size: Images per engine call.
        actors: Classifier actors; None for every CPU of the cluster over ``cpus_per_actor``.
        cpus_per_actor: CPUs of each actor; None for :data:`CPUS_PER_ACTOR` (1 on a cluster
            whose nodes have 1 CPU).
        engine: As for :class:`~edgel2.runtime.Classifier`.
        workload: As for :class:`~edgel2.runtime.Classifier`.
        unknown: As for :class:`~edgel2.runtime.Classifier`: the rows' ``unknown`` and
            ``unknown_score``.
        progress: Show Ray's progress bars.
        classify: The callable class each actor runs: :class:`ClassifyBatch`, or a subclass
            that does more per batch.

    Returns:
        A :class:`RayReport`: images, failures, seconds, actors and CPUs per actor, the folder.

    Examples:
        >>> report = classify_on_ray(["photos/"], "results/", output_format="jsonl")  # doctest: +SKIP
        >>> report.images, report.failed                                                # doctest: +SKIP
        (10000, 3)
    """
    import ray
    import ray.data

    from edgel2.runtime.modelfile import model_files
    from edgel2.runtime.shipped import shipped_models

    if output_format not in OUTPUT_FORMATS:
        raise OptionError(f"`output_format` must be one of {', '.join(OUTPUT_FORMATS)} on Ray, "
                          f"got {output_format!r}")
    if (cpus_per_actor is not None and cpus_per_actor < 1) or (actors is not None and actors < 1):
        raise OptionError("actors and CPUs per actor must be >= 1")
    output = str(output)
    if not _is_uri(output):  # before the work: a place it could not go is one line now
        check_output(output, "`out` (Ray writes a folder of part files)", folder=True)
    model_path = Path(model) if model else shipped_models()
    # a bad model is one line, before Ray; each node measures its own engines
    Classifier(model_path, providers="cpu", threads=1, engine=engine, probe=False)
    files = model_files(model_path)
    shipped = {f.name: f.read_bytes() for f in files} if model_path.is_dir() \
        else files[0].read_bytes()
    entries = list_images(paths)
    if not entries:
        raise EdgeL2Error("no image files found under " + ", ".join(paths))

    _start(address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    rows = [{"path": e.source if isinstance(e, FileResult) else e,
             "error": e.error if isinstance(e, FileResult) else None} for e in entries]
    actors, cpus_per_actor = _layout(actors, cpus_per_actor)
    # a block per ROWS_PER_BLOCK files, and at least one per actor while there are batches
    # enough; never more actors than blocks (an idle actor costs a model load and a warning)
    blocks = min(max(-(-len(rows) // ROWS_PER_BLOCK), actors), -(-len(rows) // batch_size))
    actors = min(actors, blocks)
    start = time.perf_counter()
    results = ray.data.from_items(rows, override_num_blocks=blocks)
    results = results.map_batches(
        classify, batch_size=None, batch_format="pyarrow", num_cpus=cpus_per_actor,  # a block a call
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"model": [ray.put(shipped)], "top_k": top_k,
                               "batch_size": batch_size, "engine": engine,
                               "workload": workload, "unknown": unknown}).materialize()
    # a local folder is written under a temporary name and renamed into place; a URI in
    # place (object stores have no rename). Another job that took the name meanwhile does
    # not cost these results: they keep a name of their own.
    kept = f"{output.rstrip(os.sep)}-{os.getpid()}"
    with contextlib.nullcontext(output) if _is_uri(output) else \
            atomic_path(output, fallback=kept) as folder:
        if output_format == "parquet":
            results.write_parquet(str(folder))
        else:
            results.write_json(str(folder))  # one JSON object per line, in .json part files
    failed = sum(batch.num_rows for batch in _error_rows(results))
    return RayReport(results.count(), failed, time.perf_counter() - start, output, actors,
                     cpus_per_actor)


def _layout(actors: int | None, cpus_per_actor: int | None) -> tuple[int, int]:
    """(actors, CPUs each) for the cluster Ray is connected to. An actor that asks for more
    CPUs than any node has would wait forever: that is one line instead."""
    import ray

    node_cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    largest = max(node_cpus, default=0)
    cpus = cpus_per_actor or max(1, min(CPUS_PER_ACTOR, largest))
    if cpus > largest:
        raise EdgeL2Error(f"`cpus_per_actor` {cpus}: no node of this Ray cluster has more than "
                          f"{largest} CPU{'s' * (largest != 1)}")
    return actors or max(1, sum(n // cpus for n in node_cpus)), cpus


def _error_rows(results):
    import pyarrow.compute as pc

    for batch in results.select_columns(["error"]).iter_batches(batch_format="pyarrow"):
        yield batch.filter(pc.is_valid(batch.column("error")))


def _start(address: str | None) -> None:
    """Connect to ``address`` or start a local Ray, quietly."""
    import logging

    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EdgeL2Error(f"cannot connect to Ray at {address}: {first_line(e)}") from None
    for name in ("ray", "ray.data"):  # their INFO and WARNING lines would bury edgel2's one
        logging.getLogger(name).setLevel(logging.ERROR)
