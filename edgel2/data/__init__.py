"""Data sources -> uint8 NHWC arrays, integer labels and class names.

A source is detected from what the path is:

1. an image folder, ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (``val`` is accepted
   for ``test``; with ``train``, ``val`` and ``test`` all there, ``val`` is a validation
   split); a folder holding only class subfolders is split with ``test_split``;
2. the original CIFAR-10 python batches (``cifar-10-batches-py/``);
3. nothing: CIFAR-10 (:func:`default_cifar10`): ``$EDGEL2_DATA`` if set, else the
   CIFAR-10-JPEG copy ``scripts/setup.sh`` unpacks into a source checkout's ``.data/``, else
   the original CIFAR-10, downloaded once into the cache.

A model remembers its data: :func:`data_record` reads what its run recorded (``config.json``
beside a ``.keras`` file, the ``data`` entry of an exported file's metadata, or the run an
``export_report.json`` beside it names), and :func:`load_model_data` loads it again, split
the way the run split it, for every later command on that model.

Decoded image folders are cached as ``.npz`` under ``$EDGEL2_CACHE`` (default
``~/.cache/edgel2``), keyed by a hash of every file's path and bytes and the size decoded to,
so a changed folder is decoded again and an unchanged one loads in a fraction of a second.

Numpy and pillow only (the standard library downloads CIFAR-10).
"""
from __future__ import annotations

from edgel2.data.cifar import download_cifar10
from edgel2.data.dataset import (
                                 CIFAR10_CLASSES,
                                 DATA_ENV,
                                 DEFAULT_TEST_SPLIT,
                                 Dataset,
                                 balanced_subset,
                                 carve,
                                 held_out_images,
                                 split_stratified,
                                 summary_lines,
)
from edgel2.data.record import DataRecord, data_record, load_model_data
from edgel2.data.sources import default_cifar10, load_dataset, load_dataset_for

__all__ = ["CIFAR10_CLASSES", "DATA_ENV", "DEFAULT_TEST_SPLIT", "DataRecord", "Dataset",
           "balanced_subset", "carve", "data_record", "default_cifar10", "download_cifar10",
           "held_out_images", "load_dataset", "load_dataset_for", "load_model_data",
           "split_stratified", "summary_lines"]
