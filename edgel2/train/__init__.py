"""Training: fit the L2-regularized ResNet-18 into a run directory that survives any kill.

A run directory holds::

    config.json    every hyper-parameter, the data source and its hash, versions, device
    metrics.csv    per epoch: train and held-out (validation, else test) loss and top-1, lr,
                   seconds, images/s
    curves.png     loss, top-1 and learning-rate curves
    last.keras     the checkpoint --resume reads: the training model with its optimizer
                   state and the run's state (epoch, step, random generators), one atomic
                   file (edgel2.checkpoint)
    best.keras     with --val-split: the model of the epoch with the best validation top-1
    model.keras    the final model (uint8 images in, logits out; no optimizer)
    summary.json   the test top-1 of model.keras (and best.keras), measured after training

The pieces, each with one job: :mod:`~edgel2.train.fit` (the loop),
:mod:`~edgel2.train.schedule` (the learning rate), :mod:`~edgel2.train.batches` (the data
order) and :mod:`~edgel2.train.callbacks` (what happens at each epoch's end). Keras 3 only
(no tf.data, no ``import tensorflow`` unless it is the backend), so the same code trains on
TensorFlow and on JAX.
"""
from edgel2.train.callbacks import read_metrics
from edgel2.train.fit import TrainResult, build_trainer, prepare_data, train

__all__ = ["TrainResult", "build_trainer", "prepare_data", "read_metrics", "train"]
