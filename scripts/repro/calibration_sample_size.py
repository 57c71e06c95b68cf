"""How many images a one-parameter calibration needs before it can be trusted: fit it
(edgel2.calibration.fit_calibration) on n random CIFAR-10-JPEG test images of a model file's
logits, judge it on 5,000 other test images, and count the fits that make the held-out NLL
worse than plain softmax. The figures behind edgel2.calibration.MIN_CALIBRATION_IMAGES.

    python scripts/repro/calibration_sample_size.py                      # the shipped int8 ONNX
    python scripts/repro/calibration_sample_size.py --model FILE --data PATH --draws 100
"""
from __future__ import annotations

import argparse

import numpy as np

from edgel2.calibration import calibration_figures, fit_calibration
from edgel2.data import load_model_data
from edgel2.runtime.auto import open_engine
from edgel2.runtime.formats import REFERENCE_ENGINE
from edgel2.runtime.modelfile import sniff_format
from edgel2.runtime.shipped import shipped_model
from edgel2.utils import run_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="exported file (default: shipped int8 ONNX)")
    parser.add_argument("--data", default=None, help="labelled images (default: the model's)")
    parser.add_argument("--sizes", default="10,20,30,50,100,200,500")
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = args.model or shipped_model()
    engine = open_engine(path, engine=REFERENCE_ENGINE[sniff_format(path)])
    ds = load_model_data(path, engine.input_shape[1:3], data=args.data)
    logits = run_batches(engine.run, ds.x_test, 500).astype(np.float64)
    labels = ds.y_test
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(labels))
    pool, held = order[:len(order) // 2], order[len(order) // 2:]
    plain = calibration_figures(logits[held], labels[held])
    print(f"{path}: plain softmax on {len(held)} held-out {ds.name} test images: "
          f"NLL {plain['nll']:.4f}, ECE {plain['ece']:.4f}")
    print(f"{'fit on':>7} {'NLL worse':>10} {'ECE worse':>10} {'median dNLL':>12} {'worst dNLL':>11}")
    for n in (int(v) for v in args.sizes.split(",")):
        changes, ece_worse = [], 0
        for _ in range(args.draws):
            fit = rng.choice(pool, n, replace=False)
            fitted = fit_calibration(logits[fit], labels[fit])
            after = calibration_figures(logits[held], labels[held], fitted["temperature"],
                                        fitted["unsmooth"])
            changes.append(after["nll"] - plain["nll"])
            ece_worse += after["ece"] > plain["ece"]
        worse = sum(c > 0 for c in changes)
        print(f"{n:>7} {100 * worse / args.draws:>9.0f}% {100 * ece_worse / args.draws:>9.0f}% "
              f"{np.median(changes):>+12.4f} {max(changes):>+11.4f}")


if __name__ == "__main__":
    main()
