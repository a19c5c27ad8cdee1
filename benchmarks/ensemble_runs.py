#!/usr/bin/env python
"""Test accuracy of finished train.py runs that share one split, alone and as a probability-averaged ensemble
(issue 16: how far several cheap from-scratch models get together). Each run's model sees the test images at its
own image size; `--probabilities` adds the saved test probabilities of a model that is not a run (e.g.
kmeans_features.py). Prints Markdown. (For one deployable model of same-size runs: python -m mineralnet.ensemble.)

    python benchmarks/ensemble_runs.py RUN RUN [RUN ...] [--probabilities FILE.npz ...]
"""

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mineralnet.export.representative import load_images  # noqa: E402
from mineralnet.rundir import Run  # noqa: E402
from machine import commit  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run directories with the same split.csv and labels")
    parser.add_argument("--probabilities", nargs="*", default=[], metavar="FILE",
                        help=".npz files of test probabilities (keys probabilities, files) in the runs' split order")
    args = parser.parse_args(argv)
    runs = [Run(path) for path in args.runs]
    rows, labels = runs[0].rows("test"), runs[0].labels
    for run in runs[1:]:
        if [row["file"] for row in run.rows("test")] != [row["file"] for row in rows] or run.labels != labels:
            sys.exit(f"error: '{run.path}' has another test split or other labels than '{runs[0].path}': "
                     "ensemble runs trained with the same --split.")
    truth = np.array([labels.index(row["label"]) for row in rows])
    print(f"Commit {commit()}; {len(rows)} test images of {len(labels)} classes.\n")
    print("| run | image size | test accuracy |\n|---|---:|---:|")
    probabilities = []
    for run in runs:
        images = load_images(rows, run.image_size).astype(np.float32)
        probabilities.append(run.load_model().predict(images, batch_size=32, verbose=0))
        accuracy = float(np.mean(probabilities[-1].argmax(1) == truth))
        print(f"| {os.path.basename(run.path.rstrip('/'))} | {run.image_size} | {accuracy:.2%} |")
    for path in args.probabilities:
        saved = np.load(path)
        if list(saved["files"]) != [row["path"] for row in rows]:
            sys.exit(f"error: '{path}' holds probabilities of other test images than the runs' split.")
        probabilities.append(saved["probabilities"])
        print(f"| {os.path.basename(path)} | – | {np.mean(probabilities[-1].argmax(1) == truth):.2%} |")
    ensemble = float(np.mean(np.mean(probabilities, axis=0).argmax(1) == truth))
    print(f"| **mean of the {len(probabilities)} models' probabilities** | – | **{ensemble:.2%}** |")


if __name__ == "__main__":
    main()
