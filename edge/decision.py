"""From class probabilities to a bin, never sending an uncertain item to a product bin.

With a calibrated sidecar (split conformal prediction, written by `python -m mineralnet.calibrate`) the
prediction set is {classes with p >= 1 - qhat}, which holds the true class with probability >= 1 - alpha. Exactly
one class in the set means the model is sure enough: that class's bin. An empty set (nothing plausible) or
several classes (ambiguous) send the item to the recheck bin. Without calibration the same rule runs with the
config's confidence threshold as the cutoff.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Decision:
    label: str  # the most probable class
    top3: tuple  # ((label, probability), ...) best first
    prediction_set: tuple  # labels whose probability reaches the cutoff
    bin: str
    reason: str  # "confident" or "uncertain"


class Decider:
    def __init__(self, labels, bins, reject=None, threshold=0.8):
        """`bins`: the config's BinsConfig; `reject`: the sidecar's calibration or None; `threshold`: fallback."""
        self.labels = list(labels)
        self.bins = bins
        if reject is not None:
            self.method = "split_conformal"
            self.cutoff = 1.0 - float(reject["qhat"])
        else:
            self.method = "threshold"
            self.cutoff = float(threshold)

    def bin_of(self, label):
        return self.bins.classes.get(label, self.bins.default)

    def decide(self, probabilities):
        order = np.argsort(-probabilities, kind="stable")
        top3 = tuple((self.labels[i], float(probabilities[i])) for i in order[:3])
        prediction_set = tuple(self.labels[i] for i in order if probabilities[i] >= self.cutoff)
        if len(prediction_set) == 1:
            return Decision(top3[0][0], top3, prediction_set, self.bin_of(prediction_set[0]), "confident")
        return Decision(top3[0][0], top3, prediction_set, self.bins.recheck, "uncertain")
