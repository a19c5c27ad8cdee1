#!/usr/bin/env python
"""Single-layer k-means features (Coates, Ng & Lee, AISTATS 2011) on a run's split: a from-scratch model that
needs no gradient training, measured for issue 16 beside the small CNNs.

Per-patch normalised, ZCA-whitened P x P colour patches of every pixel position are clustered by k-means on the
training images; each patch is encoded by the "triangle" activation max(0, mean_k(d) - d_k) of its distances d to
the K centroids, summed over a grid x grid of image regions, and a logistic regression on the standardised sums
classifies. Training images enter in their 8 quarter-turn/mirror views (minerals have no up); at test the 8 views'
probabilities are averaged ("TTA x8") beside the single view.

    python benchmarks/kmeans_features.py --run RUN [--size 64 --k 800 --grid 2 --C 0.01] [--save-probabilities F]

RUN is any train.py run: only its split.csv, labels and data folder are read. Prints a Markdown row per C;
`--save-probabilities` writes the TTA test probabilities of the last C (with the file order) for
`ensemble_runs.py --probabilities`.
"""

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mineralnet.evaluate import TTA_VIEWS, dihedral_view  # noqa: E402
from mineralnet.export.representative import load_images  # noqa: E402
from mineralnet.rundir import Run  # noqa: E402
from machine import commit  # noqa: E402

PATCH_SAMPLES = 200_000  # random training patches k-means and the whitening are fitted on
NORMALISE_EPS = 0.01  # added to a patch's variance (pixels 0-1): flat patches are not blown up to noise
WHITEN_EPS = 0.1  # added to the eigenvalues of the normalised patches' covariance (Coates & Ng's value)


def views(images):
    """The evaluation's 8 test-time-augmentation views (quarter turns, mirrored) of the images."""
    return [dihedral_view(images, view).numpy() for view in range(TTA_VIEWS)]


class KMeansFeatures:
    def __init__(self, patch, k, grid, seed=0):
        self.patch, self.k, self.grid, self.seed = patch, k, grid, seed

    def _patches(self, images):
        """(n, h, w, patch * patch * 3) every patch of the (n, size, size, 3) 0-1 images."""
        p = self.patch
        windows = np.lib.stride_tricks.sliding_window_view(images, (p, p), axis=(1, 2))  # n, h, w, 3, p, p
        n, h, w = windows.shape[:3]
        return windows.transpose(0, 1, 2, 4, 5, 3).reshape(n, h, w, -1)

    @staticmethod
    def _normalise(patches):
        centred = patches - patches.mean(-1, keepdims=True)
        return centred / np.sqrt(centred.var(-1, keepdims=True) + NORMALISE_EPS)

    def fit(self, images):
        from sklearn.cluster import MiniBatchKMeans

        patches = self._patches(images)
        n, h, w, _ = patches.shape
        where = np.random.default_rng(self.seed).integers(0, [n, h, w], size=(PATCH_SAMPLES, 3))
        sample = self._normalise(patches[where[:, 0], where[:, 1], where[:, 2]])
        self.mean = sample.mean(0)
        values, vectors = np.linalg.eigh(np.cov(sample, rowvar=False))
        self.whiten = (vectors @ np.diag(1 / np.sqrt(values + WHITEN_EPS)) @ vectors.T).astype(np.float32)
        kmeans = MiniBatchKMeans(self.k, batch_size=4096, n_init=1, max_iter=30, random_state=self.seed)
        self.centroids = kmeans.fit((sample - self.mean) @ self.whiten).cluster_centers_.astype(np.float32)
        return self

    def transform(self, images, batch=16):
        """(n, grid * grid * k) region sums of the triangle activations."""
        squared = (self.centroids ** 2).sum(1)
        out = []
        for start in range(0, len(images), batch):
            patches = self._patches(images[start:start + batch])
            n, h, w, d = patches.shape
            z = ((self._normalise(patches.reshape(-1, d)) - self.mean) @ self.whiten).astype(np.float32)
            distance = np.sqrt(np.maximum((z ** 2).sum(1, keepdims=True) - 2 * z @ self.centroids.T + squared, 0))
            active = np.maximum(0, distance.mean(1, keepdims=True) - distance).reshape(n, h, w, -1)
            rows = [round(h * i / self.grid) for i in range(self.grid + 1)]
            cols = [round(w * i / self.grid) for i in range(self.grid + 1)]
            out.append(np.concatenate([active[:, rows[i]:rows[i + 1], cols[j]:cols[j + 1]].sum((1, 2))
                                       for i in range(self.grid) for j in range(self.grid)], 1))
        return np.concatenate(out)


def main(argv=None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a train.py run whose split.csv and labels are used")
    parser.add_argument("--size", type=int, default=64, help="image side in px")
    parser.add_argument("--patch", type=int, default=6, help="patch side in px (Coates & Ng: 6)")
    parser.add_argument("--k", type=int, default=800, help="k-means centroids")
    parser.add_argument("--grid", type=int, default=2, help="the activations are summed over grid x grid regions")
    parser.add_argument("--C", default="0.01", help="logistic regression inverse regularisation, comma-separated")
    parser.add_argument("--save-probabilities", metavar="FILE", help=".npz of the TTA test probabilities")
    args = parser.parse_args(argv)
    run = Run(args.run)
    start = time.time()
    subsets = {}
    for subset in ("train", "val", "test"):
        rows = run.rows(subset)
        subsets[subset] = (load_images(rows, args.size).astype(np.float32) / 255.0,
                           np.array([run.labels.index(row["label"]) for row in rows]), rows)
    model = KMeansFeatures(args.patch, args.k, args.grid).fit(subsets["train"][0])
    features = {name: [model.transform(v) for v in views(images)] for name, (images, _, _) in subsets.items()}
    train_x = np.concatenate(features["train"])
    train_y = np.tile(subsets["train"][1], TTA_VIEWS)
    scaler = StandardScaler().fit(train_x)
    encoded = time.time() - start
    print(f"Commit {commit()}; {args.size} px, {args.patch} px patches, k={args.k}, grid {args.grid}; "
          f"{len(subsets['train'][1])} training images x {TTA_VIEWS} views; features in {encoded:.0f} s.\n")
    print("| C | val acc | val acc, TTA x8 | test acc | test acc, TTA x8 | fit time |\n|---:|---:|---:|---:|---:|---:|")
    for c in [float(value) for value in args.C.split(",")]:
        begin = time.time()
        classifier = LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(train_x), train_y)
        cells = []
        for subset in ("val", "test"):
            probabilities = [classifier.predict_proba(scaler.transform(f)) for f in features[subset]]
            averaged, truth = np.mean(probabilities, 0), subsets[subset][1]
            cells += [np.mean(probabilities[0].argmax(1) == truth), np.mean(averaged.argmax(1) == truth)]
        print(f"| {c:g} | " + " | ".join(f"{value:.2%}" for value in cells) + f" | {time.time() - begin:.0f} s |")
        if args.save_probabilities:
            np.savez(args.save_probabilities, probabilities=averaged,  # test, the last C's
                     files=np.array([row["path"] for row in subsets["test"][2]]))


if __name__ == "__main__":
    main()
