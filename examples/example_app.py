#!/usr/bin/env python3
"""An app that embeds the edgel2 runtime: numpy, pillow and onnxruntime only, no TensorFlow.

    python examples/example_app.py MODEL.onnx IMAGE [IMAGE ...]

It classifies the images in one call, then serves them as if they were requests arriving
one at a time from many threads (a web handler, a camera loop), through the micro-batcher.
"""
import sys
from concurrent.futures import ThreadPoolExecutor

from edgel2.runtime import Batcher, Classifier

model, images = sys.argv[1], sys.argv[2:]

classifier = Classifier(model)  # class names, input size and layout come from the file
print(f"{model}: {len(classifier.class_names)} classes, running on {classifier.providers[0]}")

for path, top in zip(images, classifier.predict(images, top_k=3)):
    print(path, " ".join(f"{label}={p:.2f}" for label, p in top))

with Batcher(classifier, max_batch=32, max_delay_ms=2) as batcher:
    def handle_request(path):             # what a web handler would do per request
        return batcher.submit(path).result()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(handle_request, images))
print(f"served {len(answers)} single-image requests in {batcher.batches_run} model calls")
