"""The images int8 calibration sees (the converter's representative dataset, hence the names): a class-balanced
sample of the training rows, never the test rows the gate measures on, loaded with the evaluation preprocessing
(no augmentation). Not to be confused with the calib subset of the split, which only the conformal reject
threshold uses (mineralnet.conformal.calibration_rows)."""

import random
from collections import defaultdict

import numpy as np

from mineralnet.data import load_image

# Every training image up to this many. Measured on two MINET-7 eca_convnext_tiny runs (benchmarks/RESULTS.md):
# calibrating on all 565 training images instead of 300 moved int8 from -2.7 to -1.1 and from -1.1 to -0.5
# points of float32 accuracy; each calibration image costs one float forward pass at export time.
CALIBRATION_SAMPLES = 1000


def representative_rows(rows, count, seed=0):
    """The representative rows of int8 calibration: up to `count` training rows, taken round-robin across classes
    (each class shuffled by `seed`), so every class shapes the activation ranges even when the classes are
    unbalanced."""
    by_class = defaultdict(list)
    for row in rows:
        if row["subset"] == "train":
            by_class[row["label"]].append(row)
    queues = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda row: row["path"])
        random.Random(f"{seed}/{label}").shuffle(members)
        queues.append(members)
    chosen = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def load_images(rows, size):
    """(N, size, size, 3) uint8 array of the rows' images, preprocessed as at evaluation."""
    return np.stack([load_image(row["file"], size) for row in rows])
