#!/usr/bin/env python3
"""Which unknown score to put in the graph: every candidate measured on one network, fitted on
training images and compared on held-out test images against each out-of-distribution set.

Prints a Markdown table of AUROC / FPR95 (the share of a set kept at the threshold that keeps
95 % of the test images) per score and set. Scores (higher is more unknown): max softmax,
energy, the feature norm both ways, Mahalanobis (shared covariance) on the last stage's pooled
features and on each stage's, the sum of the per-stage distances (standardized), one
Mahalanobis on all stages' pooled features concatenated (what export writes), 10-NN cosine,
ViM. The network is the float32 Keras network (the shipped int8 ONNX rebuilt, by default).

    python scripts/tools/make_ood_probe.py .data/ood
    python scripts/repro/unknown_scores.py --ood .data/ood            # about 3 minutes on 2 cores
    python scripts/repro/unknown_scores.py --model runs/train/exp/model.keras --ood .data/ood
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np


def features(network, images: np.ndarray) -> list[np.ndarray]:
    """[pooled stage 1, ..., pooled last stage, logits] of ``images``."""
    import keras

    from edgel2.unknown.head import stage_features
    from edgel2.utils import run_batches

    taps = keras.Model(network.input, [*stage_features(network), network.output])
    count = len(taps.outputs)
    joined = run_batches(lambda b: np.concatenate(taps.predict_on_batch(b), axis=1), images, 250)
    sizes = np.cumsum([0] + [o.shape[-1] for o in taps.outputs])
    return [joined[:, sizes[i]:sizes[i + 1]].astype(np.float64) for i in range(count)]


def _on_stage(fit, stage: int, features: list[np.ndarray]) -> np.ndarray:
    return fit(features[stage])


def candidates(train: list[np.ndarray], labels: np.ndarray, kernel, bias) -> dict:
    """Each score as a function of the feature list, fitted on ``train``."""
    from edgel2.unknown import scores as s

    stages = len(train) - 1
    per_stage = [s.fit_mahalanobis(train[i], labels) for i in range(stages)]
    summed = s.fit_multi_mahalanobis(train[:stages], labels)
    joined = s.fit_mahalanobis(np.concatenate(train[:stages], axis=1), labels)
    knn = s.fit_knn(train[stages - 1])
    vim = s.fit_vim(train[stages - 1], train[-1], kernel, bias)
    table = {"max softmax": lambda f: s.max_softmax(f[-1]),
             "energy": lambda f: s.energy(f[-1]),
             "feature norm ‖u‖ (large: unknown)": lambda f: s.feature_norm(f[stages - 1]),
             "feature norm ‖u‖ (small: unknown)": lambda f: -s.feature_norm(f[stages - 1])}
    for i, fit in enumerate(per_stage):
        table[f"Mahalanobis, stage {i + 1}"] = partial(_on_stage, fit, i)
    table["Mahalanobis, sum over stages"] = lambda f: summed(f[:stages])
    table["Mahalanobis, all stages joined (exported)"] = \
        lambda f: joined(np.concatenate(f[:stages], axis=1))
    table["10-NN cosine, last stage"] = lambda f: knn(f[stages - 1])
    table["ViM"] = lambda f: vim(f[stages - 1], f[-1])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pretrained",
                        help="an edgel2 .keras or ResNet-18 .onnx (default: the shipped int8 ONNX)")
    parser.add_argument("--ood", type=Path, required=True,
                        help="the probe: a folder of out-of-distribution folders")
    parser.add_argument("--data", default=None, help="the known classes' data (default: as usual)")
    parser.add_argument("--fit-images", type=int, default=10_000)
    parser.add_argument("--test-images", type=int, default=2_500)
    args = parser.parse_args()

    from edgel2.data import balanced_subset, load_dataset
    from edgel2.evaluate import load_ood_sets
    from edgel2.pretrained import load_backbone
    from edgel2.unknown.scores import auroc, fpr_at

    network, _ = load_backbone(args.model)
    ds = load_dataset(args.data)
    x_fit, y_fit = balanced_subset(ds.x_train, ds.y_train, args.fit_images, seed=0)
    x_test, y_test = balanced_subset(ds.x_test, ds.y_test, args.test_images, seed=0)
    size = tuple(network.input.shape[1:3])[::-1]
    ood = load_ood_sets(sorted(p for p in args.ood.iterdir() if p.is_dir()), size)
    fit, test = features(network, x_fit), features(network, x_test)
    kernel, bias = network.get_layer("logits").get_weights()
    table = candidates(fit, y_fit, kernel, bias)
    ood_features = {name: features(network, images) for name, images in ood.items()}
    print(f"{args.model}: top-1 {100 * np.mean(test[-1].argmax(1) == y_test):.2f} % on "
          f"{len(y_test)} {ds.name} test images; fitted on {len(y_fit)} training images\n")
    print("| score | " + " | ".join(f"{n} ({len(v)})" for n, v in ood.items()) + " | mean AUROC |")
    print("| --- " * (len(ood) + 2) + "|")
    for name, score in table.items():
        known = score(test)
        cells, aurocs = [], []
        for feats in ood_features.values():
            unknown = score(feats)
            aurocs.append(auroc(known, unknown))
            cells.append(f"{aurocs[-1]:.3f} / {fpr_at(known, unknown):.2f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean(aurocs):.3f} |")


if __name__ == "__main__":
    main()
