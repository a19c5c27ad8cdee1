"""Drift alarm: does the stream the model sees still look like the images its reject rule was calibrated on?

The conformal promise of edge/decision.py holds only while the items on the belt are exchangeable with the
calibration images. This module watches for the two ways that stops being true and that the operator can act on:
the **predicted-class mix** changes (another ore body, a feed change, a class the model keeps confusing), or the
**confidence** changes (dirty lens, new lighting, camera moved: the top probability sinks before any class mix
does). Numpy only; it reads the reference from the model's sidecar:

    "reference": {"subset": "calib", "n": N,
                  "class_counts": [items per label (label order) whose most probable class it is],
                  "top_edges": [inner cut points of the top probability, rising],
                  "top_counts": [items per top-probability bin (len(top_edges) + 1 of them)]}

`python -m mineralnet.conformal` writes it from the exported model's own probabilities on the calib rows. An item
is in top-probability bin i = the number of edges <= its top probability (numpy searchsorted, side "right"); the
edges are the reference's quantiles, so every reference bin holds about n / bins items.

**Test: the population stability index** PSI = sum_i (p_i - q_i) ln(p_i / q_i) between the last `window` items
(p) and the reference (q), on each histogram; the alarm trips when either exceeds its threshold. Why PSI rather
than a significance test or a conformal test martingale:

* PSI measures how *large* the shift is, not how *certain*: over weeks every tiny, harmless difference becomes
  statistically significant, while PSI > 0.25 is the long-standing rule of thumb for a shift big enough to act on
  (< 0.1 stable, 0.1-0.25 moderate). Its value is the same at any stream length, so one threshold fits every line.
* A conformal test martingale (Vovk's plug-in or simple jumper) bounds false alarms by Ville's inequality only
  when every new item joins the calibration set (online conformal); against the sidecar's fixed calib set the
  p-values share that set's luck and the bound is lost. And it tests exchangeability itself: a belt fed lot after
  lot of different ore is never exchangeable, so it would grow on every lot change and never come back down.
* The sliding window re-arms by itself when the stream returns to normal, like the recheck alarm.

Sampling noise: with no drift at all, PSI ~ (1/window + 1/n) x chi-square with bins - 1 degrees of freedom, for
a histogram of `bins` bins and n reference items (both sides are samples; PSI is twice the symmetric KL, close to
the chi-square divergence). The top-probability histogram therefore gets at most n // 20 bins (2 to 5). Each
histogram's threshold in force is the configured one, raised to the PSI that noise alone exceeds with probability
1e-4 (`noise_threshold`) where the calib set is small: with n = 100, 7 classes and window 500 the class mix needs
0.34 and the confidence 0.29; with n = 500, 0.25 stands for both. Half an item is added to every bin of both
histograms, so a class absent from either side gives a finite PSI. No verdict
before the window is full. The alarm trips once when the statistic exceeds the threshold and re-arms when it
falls to REARM x threshold: a sliding window moves one item at a time, so a statistic at the threshold would
otherwise cross it back and forth and give an alarm per item.
"""

import math
from collections import deque

import numpy as np

DEFAULT_WINDOW = 500
DEFAULT_THRESHOLD = 0.25  # the usual "significant shift" of PSI
REARM = 0.8  # re-arm below this share of the threshold (hysteresis)
PSEUDO_COUNT = 0.5  # added to every bin of both histograms (an empty bin would make PSI infinite)
MIN_PER_BIN = 20  # reference items per top-probability bin
MAX_TOP_BINS = 5
NOISE_Z = 3.719  # one-sided normal quantile of 1e-4: the chance that pure sampling noise reaches the threshold


def noise_threshold(bins, window, n, z=NOISE_Z):
    """The PSI that sampling noise alone exceeds with probability ~1e-4: under no drift PSI ~ (1/window + 1/n) x
    chi-square with bins - 1 degrees of freedom (Wilson-Hilferty quantile, no scipy on the device)."""
    df = bins - 1
    if df < 1:
        return 0.0
    return (1.0 / window + 1.0 / n) * df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def top_probability_edges(top, max_bins=MAX_TOP_BINS, min_per_bin=MIN_PER_BIN):
    """Inner cut points for binning top probabilities: the quantiles of `top` (the reference's), at most
    len(top) // min_per_bin bins (2 to max_bins), repeated values dropped."""
    top = np.asarray(top, dtype=np.float64)
    bins = int(np.clip(len(top) // min_per_bin, 2, max_bins))
    return [float(e) for e in np.unique(np.quantile(top, np.arange(1, bins) / bins))]


def top_bins(top, edges):
    """Bin index of each top probability: the number of edges <= it."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(top, dtype=np.float64), side="right")


def make_reference(probabilities, subset):
    """The sidecar's "reference" block from (n, classes) probabilities (what mineralnet.conformal calls)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    top = probabilities.max(axis=1)
    edges = top_probability_edges(top)
    return {
        "subset": subset,
        "n": int(len(probabilities)),
        "class_counts": np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1]).tolist(),
        "top_edges": edges,
        "top_counts": np.bincount(top_bins(top, edges), minlength=len(edges) + 1).tolist(),
    }


def reference_problem(reference, labels):
    """What is wrong with a sidecar's "reference" block (None if absent or fine)."""
    if reference is None:
        return None
    if not isinstance(reference, dict):
        return "that is not a JSON object"

    def counts(key, length):
        value = reference.get(key)
        return (isinstance(value, list) and len(value) == length
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value))

    edges = reference.get("top_edges")
    if not isinstance(edges, list) or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in edges) \
            or edges != sorted(edges):
        return "whose top_edges are not a rising list of numbers"
    if not counts("class_counts", len(labels)):
        return f"whose class_counts are not {len(labels)} counts (one per label)"
    if not counts("top_counts", len(edges) + 1) or sum(reference["top_counts"]) != sum(reference["class_counts"]):
        return f"whose top_counts are not {len(edges) + 1} counts (one per bin) of as many items as class_counts"
    if sum(reference["class_counts"]) < 1:
        return "of no items"
    return None


def psi(current, reference):
    """Population stability index between two histograms of counts (PSEUDO_COUNT added to every bin)."""
    p = np.asarray(current, dtype=np.float64) + PSEUDO_COUNT
    q = np.asarray(reference, dtype=np.float64) + PSEUDO_COUNT
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((p - q) * np.log(p / q)))


class DriftMonitor:
    """PSI of the last `window` items against the reference; `update` per item, `status` for records and pages."""

    def __init__(self, labels, reference, window=DEFAULT_WINDOW, threshold=DEFAULT_THRESHOLD):
        problem = reference_problem(reference, labels)
        if problem or reference is None:
            raise ValueError(f"drift reference {problem or 'missing'}")
        self.labels = list(labels)
        self.window = int(window)
        self.threshold = float(threshold)
        self._edges = np.asarray(reference["top_edges"], dtype=np.float64)
        self._reference = (np.asarray(reference["class_counts"]), np.asarray(reference["top_counts"]))
        self._counts = (np.zeros(len(self.labels), np.int64), np.zeros(len(self._edges) + 1, np.int64))
        self._recent = deque()
        self._psi = (0.0, 0.0)
        n = int(self._reference[0].sum())
        # Per histogram: the configured threshold, raised where a small calib set makes noise reach it.
        self._thresholds = tuple(max(self.threshold, noise_threshold(len(r), self.window, n)) for r in self._reference)
        self.tripped = False

    @property
    def _worst(self):
        """The histogram (0 class mix, 1 confidence) nearest to or furthest beyond its threshold."""
        return int(np.argmax([p / t for p, t in zip(self._psi, self._thresholds)]))

    @property
    def statistic(self):
        return self._psi[self._worst]

    @property
    def threshold_in_force(self):
        return self._thresholds[self._worst]

    def update(self, probabilities):
        """Record one item's class probabilities; returns the status when the alarm trips, else None."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        label = int(np.argmax(probabilities))
        item = (label, int(np.searchsorted(self._edges, probabilities[label], side="right")))
        if len(self._recent) == self.window:
            for counts, index in zip(self._counts, self._recent.popleft()):
                counts[index] -= 1
        self._recent.append(item)
        for counts, index in zip(self._counts, item):
            counts[index] += 1
        if len(self._recent) < self.window:
            return None
        self._psi = tuple(psi(c, r) for c, r in zip(self._counts, self._reference))
        if self.statistic > self.threshold_in_force and not self.tripped:
            self.tripped = True
            return self.status()
        if self.tripped and self.statistic <= REARM * self.threshold_in_force:
            self.tripped = False
        return None

    def _shares(self, which):
        counts, reference = self._counts[which], self._reference[which]
        return counts / max(1, counts.sum()), reference / reference.sum()

    def _message(self):
        if len(self._recent) < self.window:
            return f"no verdict yet: {len(self._recent)} of {self.window} items seen"
        limit = self.threshold_in_force
        if not self.tripped and self.statistic <= limit:
            return f"stream like the calibration images (PSI {self.statistic:.3f} <= {limit:.3g})"
        if self._worst == 0:
            now, then = self._shares(0)
            c = int(np.argmax(np.abs(now - then)))
            return (f"predicted class mix has shifted (PSI {self._psi[0]:.3f}, threshold {limit:.3g}, last "
                    f"{self.window} items): '{self.labels[c]}' {100 * now[c]:.0f} % of items vs {100 * then[c]:.0f} % "
                    "at calibration; check the feed, then relabel the review queue and retrain if it is the model")
        now, then = self._shares(1)
        below = f"below {self._edges[0]:.3f}" if len(self._edges) else "in the lowest bin"
        return (f"model confidence has shifted (PSI {self._psi[1]:.3f}, threshold {limit:.3g}, last "
                f"{self.window} items): {100 * now[0]:.0f} % of items have top probability {below} vs "
                f"{100 * then[0]:.0f} % at calibration; check the lens, the light and the camera position")

    def status(self):
        """{"alarm", "message", "statistic", "threshold", "window", "items", "psi": {"class_mix", "confidence"}}:
        `statistic` and `threshold` of the histogram nearest its threshold (alarm iff statistic > threshold)."""
        return {
            "alarm": self.tripped,
            "message": self._message(),
            "statistic": round(self.statistic, 6),
            "threshold": round(self.threshold_in_force, 6),
            "window": self.window,
            "items": len(self._recent),
            "psi": {"class_mix": round(self._psi[0], 6), "confidence": round(self._psi[1], 6)},
        }
