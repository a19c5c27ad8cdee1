"""A network that learns each particle's own distance map (issue 29 point 2; an experiment, not an edge path yet).

    PYTHONPATH=. python benchmarks/distance_net.py runs/sim_cnn/split.csv,runs/sim_cnn_belt/split.csv
    LEVEL=0.3 SEEDS=29,30,...,40 PYTHONPATH=. python benchmarks/distance_net.py ...   # evaluate other feeds

contact_net.py's U-Net, blobs and training; the target is each particle's distance transform within the blob over
its own largest distance (0 at every contact, neck or not: the deep-watershed idea). Seeds: the map's components
above LEVEL (default 0.5) of at least an eighth of the smallest particle's area, grown back by a watershed. Asked
alone on every whole blob of at least two smallest particles (the outline rules only for blobs the frame's edge
cuts), the Keras model, through touching_pairs.py's measure. The data and network are kept in runs/distnet and
reused. Results: benchmarks/RESULTS.md, "A fresh machine, a retrained contact network, and five ways...", item 5.
"""
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import belt_sim  # noqa: E402  (its imports set the repository's paths)
import contact_net  # noqa: E402
import touching_pairs  # noqa: E402
from contact_net import SIDE  # noqa: E402
from edge.contact import grow_seeds, padded_input  # noqa: E402
from edge.particles import Segmenter  # noqa: E402

OUT = "runs/distnet"


def dist_target(labels, blob):
    """(SIDE, SIDE) float32: each true particle's distance transform within the blob over its own largest distance."""
    height, width = blob.shape
    target = np.zeros((height, width), np.float32)
    for i in [i for i in np.unique(labels[blob > 0]) if i]:
        d = cv2.distanceTransform((labels == i).astype(np.uint8), cv2.DIST_L2, 5)
        if d.max() > 0:
            target = np.maximum(target, d / d.max())
    square = np.zeros((max(height, width),) * 2, np.float32)
    square[:height, :width] = target * (blob > 0)
    return cv2.resize(square, (SIDE, SIDE), interpolation=cv2.INTER_AREA)


LEVEL = float(os.environ.get("LEVEL", "0.5"))


class DistSeg(Segmenter):
    """The segmenter with the distance-map network (`net`, a Keras model) as the only splitter of whole blobs."""

    net = None

    def _split(self, blob, contour, opened, pixels, whole):
        area = cv2.countNonZero(blob)
        if not whole or area < 2 * self.min_area_px:
            return self._outline_split(blob, contour, opened, pixels) if not whole else [blob]
        padded, tensor, to_blob = padded_input(blob, pixels, SIDE)
        pred = to_blob(np.asarray(self.net(tensor[None], training=False))[0, ..., 0])
        inner = ((padded > 0) & (pred > LEVEL)).astype(np.uint8)
        shade = 255 - np.clip(pred * 255, 0, 255).astype(np.uint8)
        return grow_seeds(padded, inner, self.min_area_px / 8, shade) or [blob]


def main():
    import keras

    csvs = sys.argv[1].split(",")
    os.makedirs(OUT, exist_ok=True)
    data, path = os.path.join(OUT, "blobs.npz"), os.path.join(OUT, "dist.keras")
    if not os.path.exists(data):
        x, y = contact_net.blobs(contact_net.specimens_of(csvs, ("train",)), range(100, 150), dist_target)
        np.savez_compressed(data + ".partial.npz", x=x, y=y)
        os.replace(data + ".partial.npz", data)
    if not os.path.exists(path):
        d = np.load(data)
        contact_net.train(d["x"], d["y"], int(os.environ.get("EPOCHS", "12")), path)
    DistSeg.net = keras.models.load_model(path, compile=False)
    seeds = os.environ.get("SEEDS", ",".join(str(s) for s in range(5, 29)))
    belt_sim.scenes.MINET = contact_net.MINET  # specimens_of pointed it at the photos it trained on
    touching_pairs.main(["--split", sys.argv[1], "--seeds", seeds], DistSeg)


if __name__ == "__main__":
    main()
