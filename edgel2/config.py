"""Every knob of a training run, importable without Keras (the CLI builds its --help from it)."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from edgel2.data import DEFAULT_TEST_SPLIT
from edgel2.errors import OptionError

# L2 on conv/dense kernels: the loss gains weight_l2 * sum(w**2), whose gradient 2 * weight_l2 * w
# makes 2.5e-4 the same as the usual SGD weight decay of 5e-4.
DEFAULT_WEIGHT_L2 = 2.5e-4
# The penalty feature_l2 * mean_batch ||u||^2 on the pooled 512-d features u.
DEFAULT_FEATURE_L2 = 1e-4
# Fine-tuning from pretrained weights (--pretrained, --weights): a tenth of the peak learning
# rate and a short warm-up, so the first steps do not wash out what the backbone learned.
FINETUNE_LR = 0.04
FINETUNE_WARMUP = 0.1
# and small batches: a few hundred images at batch 512 would be one step an epoch
FINETUNE_BATCH_SIZE = 32
# A photo folder is not CIFAR: objects at any scale and under any light, tens of images a
# class. Fine-tuning adds colour jitter (brightness, contrast, saturation each by a random
# factor in [1 - j, 1 + j]) and a random crop keeping 60-100 % of the image's area, scaled
# back up; CIFAR's recipe (training from scratch) has neither unless asked.
FINETUNE_COLOR_JITTER = 0.2
FINETUNE_CROP_SCALE = 0.6
# The side a folder of mixed image sizes is resized to (also the shipped pretrained model's
# input): the CIFAR ResNet-18's design size (3x3 stem, no max-pool). --image-size 64 keeps
# more detail at 4x the compute per image.
DEFAULT_IMAGE_SIZE = 32
# edgel2 serve: the largest --max-body-mb (bodies are held in memory; more is a typo)
MAX_BODY_MB = 1024.0
# The learning-rate schedules and compute dtypes `edgel2 train` offers (auto: mixed bf16 on a
# GPU, fp32 on the CPU).
SCHEDULES = ("onecycle", "cosine")
TRAIN_COMPUTE_DTYPES = ("auto", "fp32", "bf16")
# Training against unknown images (edgel2.train.outliers): the logit-norm temperature of its
# paper for CIFAR-10 (Wei et al., 2022), what --logit-norm suggests
LOGIT_NORM_TEMPERATURE = 0.04


@dataclass(frozen=True)
class Architecture:
    """One network ``edgel2 train --arch`` builds (:func:`edgel2.model.build_network`).

    ``stages`` lists, per stage, its channels as a multiple of ``width`` (the channels of the
    stem and first stage), the stride of its first block, and its number of basic blocks.
    """

    width: int                                # the standard width (--width's default)
    stages: tuple[tuple[int, int, int], ...]  # (channel multiple, first stride, blocks)
    pretrained: str                           # the shipped int8 ONNX --pretrained starts from,
                                              # relative to models/
    summary: str                              # for --help and the docs


# The networks edgel2 trains, first the default. Multiply-adds are per 32x32 image, counted by
# edgel2.model.count_multiply_adds. A CIFAR ResNet-20 (He et al., 2016, with 1x1 projection
# shortcuts) keeps most of the ResNet-18's accuracy at a fourteenth of its compute.
ARCHITECTURES = {
    "resnet18": Architecture(64, ((1, 1, 2), (2, 2, 2), (4, 2, 2), (8, 2, 2)),
                             "resnet18-int8.onnx",
                             "CIFAR ResNet-18: 11.2M parameters, 0.56G multiply-adds"),
    "resnet20": Architecture(16, ((1, 1, 3), (2, 2, 3), (4, 2, 3)),
                             "resnet20/resnet20-int8.onnx",
                             "CIFAR ResNet-20: 0.27M parameters, 41M multiply-adds"),
}
DEFAULT_ARCH = "resnet18"
# The width of the shipped pretrained ResNet-18 (models/resnet18-int8.onnx; a test checks it)
PRETRAINED_WIDTH = ARCHITECTURES[DEFAULT_ARCH].width
# Distillation (--teacher): Hinton et al.'s loss, weight * T^2 * KL(teacher || student at
# temperature T) + (1 - weight) * cross-entropy. CIFAR studies use T = 4 with weight 0.9, for
# teachers trained without label smoothing; edgel2's teachers are trained with it, so their
# logits are already soft (a spread of about 4 on the shipped ResNet-18), and T = 4 gave
# near-uniform targets and a first epoch that diverged (measured; T^2 = 16 scales the
# gradients up), while T = 2 trained as well as no teacher over the first epochs.
DISTILL_TEMPERATURE = 2.0
DISTILL_WEIGHT = 0.9


@dataclass
class TrainConfig:
    """Every knob of a training run; saved to ``config.json``.

    Defaults are the reference CIFAR-10 recipe (SGD Nesterov, weight decay 5e-4, one-cycle
    LR peaking at 0.4, label smoothing 0.1, crop+flip, batch 512, 30 epochs).

    Examples:
        >>> TrainConfig(width=16, epochs=2, subset=2000).batch_size
        512
    """

    data: str | None = None
    test_split: float = DEFAULT_TEST_SPLIT  # test fraction of a folder of bare class subfolders
    image_size: int | None = None
    subset: int | None = None          # class-balanced training subset
    val_split: float = 0.0             # held out of the training images to choose best.keras
    test_subset: int | None = None     # class-balanced test subset (quick runs)
    arch: str = DEFAULT_ARCH           # see ARCHITECTURES
    width: int | None = None           # channels of the first stage; None: the arch's standard
    epochs: int = 30
    batch_size: int = 512
    lr: float = 0.4
    schedule: str = SCHEDULES[0]       # see SCHEDULES
    warmup: float = 0.25               # fraction of all steps spent warming up
    momentum: float = 0.9
    nesterov: bool = True
    label_smoothing: float = 0.1
    weight_l2: float = DEFAULT_WEIGHT_L2
    feature_l2: float = DEFAULT_FEATURE_L2
    l1: float = 0.0
    bn_l2: float = 0.0                 # L2 on batch-norm scales/offsets and the classifier bias
    dropout: float = 0.0
    augment: bool = True
    color_jitter: float = 0.0          # brightness/contrast/saturation factors in [1-j, 1+j]
    crop_scale: float = 1.0            # smallest share of the area a random zoom crop keeps
    cutout: int = 0                    # side of the square cut out of each training image
    ema: float = 0.0                   # momentum of an EMA of the weights (0: off)
    compute_dtype: str = TRAIN_COMPUTE_DTYPES[0]  # auto: mixed bf16 on a GPU, fp32 on the CPU
    seed: int = 0
    weights: str | None = None         # start from: "pretrained" (shipped) or a .keras/.onnx
    freeze: int = 0                    # stages kept frozen with the stem (0 to all), when fine-tuning
    patience: int = 0                  # stop after this many epochs without a better val top-1
    outliers: float = 0.0              # synthetic outliers (uniform targets) per batch, a share of it
    logit_norm: float = 0.0            # logit-norm temperature (0: plain cross-entropy)
    teacher: str | None = None         # distil from this edgel2 model (.keras, .onnx, .tflite)
    distill_temperature: float = DISTILL_TEMPERATURE
    distill_weight: float = DISTILL_WEIGHT  # of the distillation term; the rest: cross-entropy

    @property
    def network_width(self) -> int:
        """``width``, or the architecture's standard width when it is None.

        Examples:
            >>> TrainConfig(arch="resnet20").network_width, TrainConfig(width=8).network_width
            (16, 8)
        """
        return self.width if self.width is not None else ARCHITECTURES[self.arch].width

    @classmethod
    def finetune(cls, weights: str = "pretrained", **overrides) -> TrainConfig:
        """The fine-tuning recipe: start from ``weights`` (``"pretrained"``: the shipped
        ResNet-18; or an edgel2 ``.keras``/``.onnx`` file) with a tenth of the learning
        rate, a short warm-up, small batches and the augmentation a photo folder needs
        (what ``edgel2 train --pretrained`` uses). ``overrides`` set any other field.

        Examples:
            >>> c = TrainConfig.finetune(epochs=5)
            >>> c.weights, c.lr, c.batch_size, c.warmup, c.color_jitter, c.crop_scale, c.epochs
            ('pretrained', 0.04, 32, 0.1, 0.2, 0.6, 5)
        """
        recipe = {"lr": FINETUNE_LR, "batch_size": FINETUNE_BATCH_SIZE,
                  "warmup": FINETUNE_WARMUP, "color_jitter": FINETUNE_COLOR_JITTER,
                  "crop_scale": FINETUNE_CROP_SCALE}
        return cls(weights=weights, **{**recipe, **overrides})

    def validate(self) -> None:
        """Raise :class:`OptionError` naming the first option that makes no sense.

        Examples:
            >>> TrainConfig(lr=float("inf")).validate()
            Traceback (most recent call last):
            ...
            edgel2.errors.OptionError: lr must be a finite number, got inf
        """
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise OptionError(f"{field.name.replace('_', ' ')} must be a finite number, "
                                  f"got {value}")
        if self.arch not in ARCHITECTURES:  # before the checks that read its table row
            raise OptionError(f"unknown arch {self.arch!r} (choose from "
                              f"{', '.join(ARCHITECTURES)})")
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.width is None or self.width >= 1, f"width must be >= 1, got {self.width}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup}"),
            (0 <= self.momentum <= 1, f"momentum must be in [0, 1], got {self.momentum}"),
            (0 <= self.label_smoothing < 1,
             f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.weight_l2 >= 0, f"weight L2 must be >= 0, got {self.weight_l2}"),
            (self.feature_l2 >= 0, f"feature L2 must be >= 0, got {self.feature_l2}"),
            (self.l1 >= 0, f"L1 must be >= 0, got {self.l1}"),
            (self.bn_l2 >= 0, f"BN L2 must be >= 0, got {self.bn_l2}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.cutout >= 0, f"cutout must be >= 0, got {self.cutout}"),
            (0 <= self.color_jitter < 1, f"color jitter must be in [0, 1), got {self.color_jitter}"),
            (0 < self.crop_scale <= 1, f"crop scale must be in (0, 1], got {self.crop_scale}"),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (0 <= self.outliers <= 1, f"outliers must be in [0, 1], got {self.outliers}"),
            (self.logit_norm >= 0, f"logit norm must be >= 0, got {self.logit_norm}"),
            (self.image_size is None or self.image_size >= 1,
             f"image size must be >= 1, got {self.image_size}"),
            (0 <= self.ema < 1, f"EMA momentum must be in [0, 1), got {self.ema}"),
            (0 < self.test_split < 1, f"test split must be in (0, 1), got {self.test_split}"),
            (0 <= self.val_split < 1, f"val split must be in [0, 1), got {self.val_split}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}"),
            (self.compute_dtype in TRAIN_COMPUTE_DTYPES,
             f"unknown compute_dtype {self.compute_dtype!r}"),
            (self.subset is None or self.subset >= 1, f"subset must be >= 1, got {self.subset}"),
            (self.test_subset is None or self.test_subset >= 1,
             f"test subset must be >= 1, got {self.test_subset}"),
            (0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}"),
            (0 <= self.freeze <= self._stages,
             f"freeze takes 0 to {self._stages} stages, got {self.freeze}"),
            (not self.freeze or self.weights,
             "`freeze` keeps pretrained stages: it needs `weights` (or `pretrained`)"),
            (self.weights != "pretrained" or self.network_width == self._standard_width,
             f"the shipped pretrained {self.arch} is width {self._standard_width}: "
             f"pass `width` {self._standard_width} (got {self.width})"),
            (self.distill_temperature > 0,
             f"distill temperature must be > 0, got {self.distill_temperature}"),
            (0 <= self.distill_weight <= 1,
             f"distill weight must be in [0, 1], got {self.distill_weight}"),
        ]
        for ok, message in checks:
            if not ok:
                raise OptionError(message)

    @property
    def _stages(self) -> int:
        return len(ARCHITECTURES[self.arch].stages)

    @property
    def _standard_width(self) -> int:
        return ARCHITECTURES[self.arch].width

    @classmethod
    def from_saved(cls, saved: dict) -> TrainConfig:
        """The config a run directory's ``config.json`` recorded. Older runs named the
        test fraction of a bare class folder ``val_split`` (before the validation split), and
        the compute dtype ``precision``.

        Examples:
            >>> old = TrainConfig.from_saved({"val_split": 0.2, "epochs": 3, "precision": "fp32"})
            >>> old.test_split, old.val_split, old.epochs, old.compute_dtype
            (0.2, 0.0, 3, 'fp32')
        """
        saved = dict(saved)
        if "test_split" not in saved and "val_split" in saved:
            saved["test_split"] = saved.pop("val_split")
        if "compute_dtype" not in saved and "precision" in saved:
            saved["compute_dtype"] = saved.pop("precision")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(saved) - known)
        if unknown:
            raise OptionError(f"config.json has options this edgel2 does not know: "
                              f"{', '.join(unknown)}")
        return cls(**saved)


# A run's name becomes part of file names (NAME-int8.onnx) and of URLs (/v2/models/NAME-int8)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name: str) -> str:
    """``name`` if it can name a run, its files and its served model: letters, digits, ``.``,
    ``_`` and ``-``, starting with a letter or digit, at most 100 characters.

    Examples:
        >>> check_name("photos-v2")
        'photos-v2'
        >>> check_name("my photos")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        edgel2.errors.OptionError: name 'my photos' may hold only letters, digits, '.', '_' ...
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise OptionError(f"name {name!r} may hold only letters, digits, '.', '_' and '-' "
                          "(it names files and URLs)")
    return name


def parse_devices(text: str | int) -> int | None:
    """``--devices``: ``all`` (None: every local device) or a count >= 1. Not part of
    :class:`TrainConfig`: the same config trains the same run on any number of devices (see
    :mod:`edgel2.train.distribute`).

    Examples:
        >>> parse_devices("all"), parse_devices("2")
        (None, 2)
    """
    if str(text).strip().lower() == "all":
        return None
    try:
        count = int(str(text))
    except ValueError:
        count = 0
    if count < 1:
        raise OptionError(f"`devices` takes 'all' or a count >= 1, got {text!r}")
    return count
