"""From class probabilities to a bin, never sending an uncertain item to a product bin.

With a calibrated sidecar (conformal prediction, written by `python -m mineralnet.conformal`) the prediction set
is {classes c with p_c >= cutoff_c}. For `split_conformal` every class has the cutoff 1 - qhat and the set holds
the true class with probability >= 1 - alpha (over all items); for `mondrian_conformal` (`--per-class`) class c
has its own cutoff 1 - qhat_per_class[c] and the set holds the true class with probability >= 1 - alpha for
items of every class, rare ones included. Both hold only while items resemble the calibration photos. Exactly one
class in the set means the model is sure enough: that class's bin. An empty set (nothing plausible) or several
classes (ambiguous) send the item to the recheck bin. A class whose qhat is 1 (too few calibration items) is in
every set, so its items never reach a product bin, not even when it is alone in the set. With per-class cutoffs
the one class in the set need not be the most probable one: the item goes to that class's bin all the same.
Without calibration the same rule runs with the config's confidence threshold as the cutoff of every class.

A grade target (`python -m mineralnet.conformal --target-grade malachite=0.95`, Learn-then-Test) adds
`"grade_targets": {label: {"target", "delta", "threshold", ...}}` to the reject block: an item the rule above would
send to that class's bin goes to recheck instead when its probability of that class is below the threshold, so
the bin's grade is >= target with probability >= 1 - delta (exchangeable items, counted by images). Such an item
is "uncertain" like any other sent to recheck (tallied, and copied to the review queue, as those are).

`class_cutoffs` and `sorted_mask` are that rule for a whole batch: mineralnet.conformal imports them to measure,
at calibration, the share of items the runner will sort, so the figure it prints is the runner's own rule.
"""

from dataclasses import dataclass

import numpy as np

SPLIT_CONFORMAL, MONDRIAN_CONFORMAL = "split_conformal", "mondrian_conformal"


def class_cutoffs(reject, labels, threshold=None):
    """Per-class probability cutoffs (label order): 1 - qhat for every class (split conformal), 1 - qhat_c for
    class c (Mondrian), or `threshold` for every class when there is no calibration (`reject` None)."""
    if reject is None:
        return np.full(len(labels), float(threshold))
    if reject.get("method") == MONDRIAN_CONFORMAL:
        return np.array([1.0 - float(reject["qhat_per_class"][label]) for label in labels])
    return np.full(len(labels), 1.0 - float(reject["qhat"]))


def sorted_mask(probabilities, cutoffs):
    """For (n, classes) probabilities: which items go to a product bin. Their prediction set {c : p_c >= cutoff_c}
    holds exactly one class, and not one whose cutoff is 0 (qhat 1, too few calibration items: in every set on no
    evidence)."""
    cutoffs = np.asarray(cutoffs)
    in_set = np.asarray(probabilities) >= cutoffs[None, :]
    return (in_set.sum(axis=1) == 1) & (in_set @ (cutoffs > 0))


@dataclass(frozen=True)
class Decision:
    label: str  # the most probable class
    top3: tuple  # ((label, probability), ...) best first
    prediction_set: tuple  # labels whose probability reaches their cutoff
    bin: str
    reason: str  # "confident" or "uncertain"


class Decider:
    def __init__(self, labels, bins, reject=None, threshold=0.8):
        """`bins`: the config's BinsConfig; `reject`: the sidecar's calibration or None; `threshold`: fallback."""
        self.labels = list(labels)
        self.bins = bins
        self.alpha = None if reject is None else reject.get("alpha")
        self.cutoffs = class_cutoffs(reject, self.labels, threshold)
        if reject is None:
            self.method, self.cutoff = "threshold", float(threshold)
        elif reject.get("method") == MONDRIAN_CONFORMAL:
            self.method, self.cutoff = MONDRIAN_CONFORMAL, None  # no single cutoff: see self.cutoffs
        else:
            self.method, self.cutoff = SPLIT_CONFORMAL, 1.0 - float(reject["qhat"])
        targets = (reject or {}).get("grade_targets") or {}
        self.grade_targets = {label: (float(rule["target"]), float(rule["threshold"]))
                              for label, rule in targets.items()}

    def describe(self):
        """The rule for records: method, alpha when calibrated, and `cutoff` (one for all) or `cutoffs` per class."""
        described = {"method": self.method}
        if self.alpha is not None:
            described["alpha"] = self.alpha
        if self.cutoff is None:
            described["cutoffs"] = {label: round(float(c), 6) for label, c in zip(self.labels, self.cutoffs)}
        else:
            described["cutoff"] = round(self.cutoff, 6)
        if self.grade_targets:
            described["grade_targets"] = {label: {"target": target, "threshold": round(threshold, 6)}
                                          for label, (target, threshold) in self.grade_targets.items()}
        return described

    def bin_of(self, label):
        return self.bins.classes.get(label, self.bins.default)

    def decide(self, probabilities):
        order = np.argsort(-probabilities, kind="stable")
        top3 = tuple((self.labels[i], float(probabilities[i])) for i in order[:3])
        members = [i for i in order if probabilities[i] >= self.cutoffs[i]]
        prediction_set = tuple(self.labels[i] for i in members)
        if sorted_mask(np.asarray(probabilities)[None], self.cutoffs)[0]:  # one class in the set, on evidence
            label = prediction_set[0]
            grade = self.grade_targets.get(label)
            if grade is not None and probabilities[self.labels.index(label)] < grade[1]:
                return Decision(top3[0][0], top3, prediction_set, self.bins.recheck, "uncertain")
            return Decision(top3[0][0], top3, prediction_set, self.bin_of(label), "confident")
        return Decision(top3[0][0], top3, prediction_set, self.bins.recheck, "uncertain")
