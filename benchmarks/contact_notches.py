"""Which blobs the contact network splits: the depth of their outline's deepest notch, against the blobs it is shown.

    PYTHONPATH=. python benchmarks/contact_notches.py --split runs/sim_cnn/split.csv,runs/sim_cnn_belt/split.csv \
        --contact-model runs/contact_net/contact.tflite [--seeds "5-10;11-18;19-28"]

touching_pairs.py's feeds (frames of 20, half of them in touching pairs), every whole blob the outline rules leave
whole shown to the network (`contact_notch = 0`). Per blob: its notch (edge/cut.py deepest_notch over the square root
of its area), whether the network split it, and whether two particles lie under it in truth (each holding at least
a quarter of the smallest particle's area of the blob). It measures the `[particles] contact_notch` gate: the
share of blobs a notch of at least N shows to the network, and the splits of true pairs it keeps. Results:
benchmarks/RESULTS.md, "Asked only where the outline has a notch".
"""

import argparse
import math
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import belt_sim  # noqa: E402  (its imports set the repository's paths)
import touching_pairs  # noqa: E402
from benchmarks.machine import commit, cpu_name  # noqa: E402
from edge.cut import deepest_notch  # noqa: E402
from edge.particles import Segmenter  # noqa: E402

GATES = (0.06, 0.08, 0.10, 0.12, 0.14)


class _Recorded(Segmenter):
    """The segmenter, noting each blob it shows the network: (notch, split, pair in truth) into `rows`, the truth
    labels of the frame being segmented in `truth`."""

    rows, truth = None, None

    def _split(self, blob, contour, opened, pixels, whole):
        asked = self.contact.asked
        parts = super()._split(blob, contour, opened, pixels, whole)
        if self.contact.asked > asked:
            x, y, w, h = cv2.boundingRect(contour)
            under = self.truth[y:y + h, x:x + w][blob > 0]
            _, counts = np.unique(under[under > 0], return_counts=True)
            pair = int((counts >= self.min_area_px / 4).sum()) >= 2
            self.rows.append((deepest_notch(contour) / math.sqrt(cv2.countNonZero(blob)), len(parts) > 1, pair))
        return parts


def shown(specimens, seeds, model):
    """[(notch, split, pair in truth)] of every blob shown to the network over the feeds `seeds`."""
    rows = []
    for seed in seeds:
        by_id, views, empty = touching_pairs.feed(specimens, seed)
        segmenter = touching_pairs.make_segmenter(empty, f'contact_model = "{model}"\ncontact_notch = 0', _Recorded)
        segmenter.rows = rows
        for frame, truth in views:
            segmenter.truth = truth
            segmenter.segment(frame, learn=False)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", required=True, help="comma-separated split.csv files (the unseen photos)")
    parser.add_argument("--contact-model", required=True, help="the contact network (.tflite)")
    parser.add_argument("--seeds", default="5-10;11-18;19-28", help="';'-separated feed ranges, FIRST-LAST")
    args = parser.parse_args(argv)
    specimens = belt_sim.unseen_specimens(args.split.split(","), None)
    print(f"Commit {commit()}; {cpu_name()}; {args.contact_model}\n")
    print("| feeds | blobs shown | split, a pair in truth | split, one particle | shallowest notch of the pairs "
          "split | " + " | ".join(f"notch >= {g}: shown, pairs split kept" for g in GATES) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(GATES))
    for feeds in args.seeds.split(";"):
        first, last = (int(v) for v in feeds.split("-"))
        rows = shown(specimens, range(first, last + 1), args.contact_model)
        good = [notch for notch, split, pair in rows if split and pair]
        gates = [(sum(n >= g for n, _, _ in rows), sum(n >= g for n in good)) for g in GATES]
        print(f"| {feeds} | {len(rows)} | {len(good)} | {sum(s and not p for _, s, p in rows)} | "
              f"{min(good, default=math.nan):.3f} | " +
              " | ".join(f"{n} ({n / max(len(rows), 1):.0%}), {k}" for n, k in gates) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
