"""Training on several devices and hosts: Keras' distribution API (``DataParallel``) on JAX.

The choices, and why:

- **Keras' own API, not a home-made one.** ``keras.distribution.DataParallel`` replicates the
  variables over a device mesh and shards each batch along it; JAX compiles the train step
  once for the mesh (SPMD) and inserts the all-reduces itself. ``keras.distribution.initialize``
  joins several processes through ``jax.distributed`` (on CPUs its collectives run over Gloo).
- **The global batch is what ``--batch-size`` says**, whatever the device count: each of N
  devices gets ``batch_size / N`` images, and the learning rate is the one for that global
  batch. The same config on 1 or 8 devices is the same run, up to the order of floating-point
  sums; to train a bigger batch on more devices, raise ``--batch-size`` (and ``--lr``) yourself.
- **Batch norm is global (synchronised).** Under SPMD a batch-norm layer's mean and variance
  are reductions over the whole global batch axis, so XLA all-reduces them across devices and
  processes: the statistics are those one device would compute on the whole batch, not a
  per-device average (``tests/test_distribute.py`` pins this).
- **Each process feeds its own shard of every global batch** (the ``shard`` of
  :class:`~edgel2.train.batches.ShuffledBatches`): process ``p`` of ``P`` gives the ``p``-th
  slice, and ``jax.make_array_from_process_local_data`` puts the slices together in process
  order, so the global batch is the one a single process would have drawn. Every process
  decodes the (cached) image set; it is the batches that are sharded.
- **Only process 0 writes** the run directory, checkpoints and plots; resuming reads the run
  directory on every process (so on several hosts it must be on a shared filesystem).

The TensorFlow backend trains on one device: Keras' distribution API is JAX-only here, and
``--devices`` above 1 there is one line saying so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from edgel2.backend import native_output_without
from edgel2.config import parse_devices
from edgel2.errors import OptionError, TrainingError, first_line

# The environment variables keras.distribution.initialize reads when it is given no arguments
KERAS_ENVIRONMENT = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                     "KERAS_DISTRIBUTION_PROCESS_ID")


@dataclass(frozen=True)
class Placement:
    """Where a run trains: ``devices`` in all (every process's together) over which each
    global batch is split, and which of ``num_processes`` processes this one is.

    Examples:
        >>> Placement(8, process_id=1, num_processes=2).shard, Placement(1).chief
        ((1, 2), True)
    """

    devices: int = 1
    process_id: int = 0
    num_processes: int = 1

    @property
    def chief(self) -> bool:
        """Process 0: the one that writes the run directory."""
        return self.process_id == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(this process, of how many): the slice of each global batch this process feeds."""
        return self.process_id, self.num_processes

    def describe(self) -> dict:
        return {"devices": self.devices, "processes": self.num_processes,
                "strategy": "keras.distribution.DataParallel" if self.devices > 1 else None}


ONE_DEVICE = Placement()


def multi_process_requested(num_processes: int | None) -> bool:
    """Whether this run joins others: ``--num-processes`` above 1, or Keras' environment
    variables set."""
    return (num_processes or 1) > 1 or any(os.environ.get(name) for name in KERAS_ENVIRONMENT)


def place(devices: str | int = 1, num_processes: int | None = None,
          process_id: int | None = None, coordinator: str | None = None) -> Placement:
    """Set up Keras' distribution for this process and say where the run trains.

    ``devices``: ``all`` or how many of this process's local devices to use. With several
    processes (``num_processes``/``process_id``/``coordinator``, or Keras'
    ``KERAS_DISTRIBUTION_*`` variables), every process calls this with the same ``devices``
    and the mesh spans them all. One device in all: nothing is set, the run is the plain one.

    Examples:
        >>> place("1")
        Placement(devices=1, process_id=0, num_processes=1)
    """
    wanted = parse_devices(devices)
    multi = multi_process_requested(num_processes)
    if not multi and (process_id is not None or coordinator):
        raise OptionError("`process_id` and `coordinator` go with `num_processes` N (N > 1)")
    import keras

    if keras.backend.backend() != "jax":
        if wanted == 1 and not multi:
            return ONE_DEVICE
        raise OptionError("training on several devices or processes needs the JAX backend "
                          "(`backend` jax or KERAS_BACKEND=jax; Keras' distribution API is "
                          "JAX-only); the TensorFlow backend trains on one device")
    import jax

    if multi:
        _join(keras, num_processes, process_id, coordinator)
    local = jax.local_devices()
    count = len(local) if wanted is None else wanted
    if count > len(local):
        raise OptionError(f"`devices` {count}: this process sees {len(local)} "
                          f"{local[0].platform.upper()} device{'s' * (len(local) > 1)}")
    # The same first `count` local devices of every process, in process order: the mesh's
    # batch axis then follows the process order the data shards are put together in.
    chosen = [d for p in range(jax.process_count())
              for d in sorted((d for d in jax.devices() if d.process_index == p),
                              key=lambda d: d.id)[:count]]
    placement = Placement(len(chosen), jax.process_index(), jax.process_count())
    if placement.devices > 1:
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=False))
    return placement


def _join(keras, num_processes: int | None, process_id: int | None,
          coordinator: str | None) -> None:
    """``keras.distribution.initialize`` (``jax.distributed``), with edgel2's options over Keras'
    environment variables; a missing one is one line, as is a coordinator that cannot be
    reached."""
    if num_processes and num_processes > 1:
        if process_id is None or not coordinator:
            raise OptionError("`num_processes` needs `process_id` and `coordinator` "
                              "HOST:PORT (the address of process 0) on every process")
        if not 0 <= process_id < num_processes:
            raise OptionError(f"`process_id` must be in [0, {num_processes}), got {process_id}")
    try:
        # Gloo (JAX's CPU collectives) announces each connection on stdout
        with native_output_without(("[Gloo] Rank",), fd=1):
            keras.distribution.initialize(coordinator, num_processes, process_id)
    except (ValueError, RuntimeError) as e:
        where = coordinator or "the coordinator in $KERAS_DISTRIBUTION_JOB_ADDRESSES"
        raise TrainingError(f"cannot join the other processes through {where}: "
                            f"{first_line(e)}") from None


def check_batch_size(wanted: int, placement: Placement) -> None:
    """Refuse a global batch that does not split evenly over the devices, naming the two
    nearest that do.

    Examples:
        >>> check_batch_size(63, Placement(2))
        Traceback (most recent call last):
        ...
        edgel2.errors.OptionError: `batch_size` 63 does not split over 2 devices: pass a multiple of 2 (e.g. 62 or 64)
    """
    if wanted % placement.devices:
        lower = wanted - wanted % placement.devices
        raise OptionError(f"`batch_size` {wanted} does not split over {placement.devices} "
                          f"devices: pass a multiple of {placement.devices} (e.g. "
                          f"{lower or placement.devices} or {lower + placement.devices})")


def global_batch_size(wanted: int, images: int, placement: Placement) -> int:
    """The batch a run trains with: ``wanted``, at most the training images, and a multiple
    of the device count (each device must get the same share). A ``--batch-size`` that does
    not split is refused; one cut down to a small image set is rounded down to split.

    Examples:
        >>> global_batch_size(512, 50_000, Placement(8)), global_batch_size(512, 100, Placement(8))
        (512, 96)
    """
    check_batch_size(wanted, placement)
    batch = min(wanted, images)
    batch -= batch % placement.devices
    if batch < 1:
        raise OptionError(f"{images} training images cannot fill a batch of one image per "
                          f"device on {placement.devices} devices")
    return batch
