"""A learned contact line for touching pairs (issue 29 point 2): how many of the simulator's pairs a small network,
trained on the simulator's own frames, lets the segmenter split. A route measured, not shipped: edge/ does not use
it (what shipping would need: benchmarks/RESULTS.md, "A learned contact line").

    PYTHONPATH=. python benchmarks/contact_net.py --split runs/sim_cnn/split.csv,runs/sim_cnn_belt/split.csv \
        --out runs/contact_net [--epochs 12] [--thresholds 0.3,0.5]

- Data: the blobs of the segmenter's mask (edge/particles.py, the same frames as benchmarks/touching_pairs.py) that
  are whole in their frame, from 50 feeds of the photos every run *trained* on. Input: the blob's square crop at
  96 x 96, RGB under the blob and the blob mask (4 channels); target: the blob's pixels within 2 px of another
  particle's (the contact line; none in a single particle).
- Model: a U-Net of 16-32-48-64 channels (0.23 M weights), Adam with cosine decay, Dice + cross-entropy.
- Evaluation: touching_pairs.py's measure on the feeds of the photos no run trained on. The network is asked only
  about blobs the segmenter leaves whole that hold at least two smallest particles: blob pixels under the threshold
  form seeds (components of at least a quarter of the smallest particle's area), a watershed on their distance map
  gives the parts.
- Cost: the network converted to TFLite (float32 and dynamic-range int8) and timed with LiteRT on one thread.

Resumable: the data (`OUT/blobs.npz`) and the trained network (`OUT/contact.keras`) are kept and reused.
"""

import argparse
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import belt_sim  # noqa: E402  (its imports set the repository's paths)
import touching_pairs  # noqa: E402
from belt_sim import HEIGHT, WIDTH, scenes  # noqa: E402
from benchmarks.machine import commit, cpu_name  # noqa: E402
from edge.config import parse_config  # noqa: E402
from edge.particles import BackgroundModel, Segmenter  # noqa: E402

SIDE = 96
PAD = 3
MINET = scenes.MINET


def specimens_of(split_csvs, subsets):
    scenes.MINET = MINET  # unseen_specimens points it at a folder of its choice
    return belt_sim.unseen_specimens(split_csvs, None, subsets)


def segmenter(empty):
    config = parse_config(scenes.BASE_CONFIG + "[particles]\nmm_per_px = 0.5\nmin_mm = 8\nmax_mm = 80\n"
                          "threshold = \"auto\"\n" + scenes.VALVES)
    return Segmenter(config.particles, BackgroundModel(empty, config.particles.background_rate), config.valves)


def network_input(pixels, blob):
    """((SIDE, SIDE, 4) float32, the square's side in px) of a blob (uint8 mask) and its pixels, both padded."""
    height, width = blob.shape
    side = max(height, width)
    image, mask = np.zeros((side, side, 3), np.uint8), np.zeros((side, side), np.uint8)
    image[:height, :width], mask[:height, :width] = pixels, blob
    image = cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    mask = cv2.resize(mask, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return np.concatenate([image * mask[..., None], mask[..., None]], -1), side


def contact_target(labels, blob):
    """(SIDE, SIDE) 0/1: the blob's pixels within 2 px of another particle's (`labels`: true particle ids)."""
    height, width = blob.shape
    ids = [i for i in np.unique(labels[blob > 0]) if i]
    contact = np.zeros((height, width), bool)
    grown = [cv2.dilate((labels == i).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for i in ids]
    for a in range(len(grown)):
        for b in range(a + 1, len(grown)):
            contact |= grown[a] & grown[b]
    square = np.zeros((max(height, width),) * 2, np.uint8)
    square[:height, :width] = (contact & (blob > 0)) * 255
    return (cv2.resize(square, (SIDE, SIDE), interpolation=cv2.INTER_AREA) > 40).astype(np.uint8)


def blobs(specimens, seeds):
    """(inputs, targets) of the whole blobs of the feeds `seeds`."""
    inputs, targets = [], []
    for seed in seeds:
        _, views, empty = touching_pairs.feed(specimens, seed)
        finder = segmenter(empty)
        for frame, truth in views:
            frame = np.asarray(frame)
            mask = finder.segment(frame, learn=False).mask
            count, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
            for k in range(1, count):
                x, y, w, h, area = stats[k]
                if area < finder.min_area_px or x == 0 or y == 0 or x + w >= WIDTH or y + h >= HEIGHT:
                    continue
                x0, y0, x1, y1 = max(x - PAD, 0), max(y - PAD, 0), min(x + w + PAD, WIDTH), min(y + h + PAD, HEIGHT)
                blob = (labels[y0:y1, x0:x1] == k).astype(np.uint8) * 255
                inputs.append(network_input(frame[y0:y1, x0:x1], blob)[0])
                targets.append(contact_target(truth[y0:y1, x0:x1] * (blob > 0), blob))
        print(f"feed {seed}: {len(inputs)} blobs", file=sys.stderr, flush=True)
    return np.array(inputs, np.float16), np.array(targets, np.uint8)


def build():
    import keras
    from keras import layers

    def block(t, channels):
        t = layers.Conv2D(channels, 3, padding="same", activation="relu")(t)
        return layers.Conv2D(channels, 3, padding="same", activation="relu")(t)

    inputs = keras.Input((SIDE, SIDE, 4))
    a = block(inputs, 16)
    b = block(layers.MaxPool2D()(a), 32)
    c = block(layers.MaxPool2D()(b), 48)
    t = block(layers.MaxPool2D()(c), 64)
    for skip, channels in ((c, 48), (b, 32), (a, 16)):
        t = block(layers.Concatenate()([layers.UpSampling2D()(t), skip]), channels)
    return keras.Model(inputs, layers.Conv2D(1, 1, activation="sigmoid")(t))


def train(x, y, epochs, path):
    import keras

    def loss(target, p):
        overlap = keras.ops.sum(target * p)
        dice = 1 - (2 * overlap + 1) / (keras.ops.sum(target) + keras.ops.sum(p) + 1)
        return keras.ops.mean(keras.losses.binary_crossentropy(target, p)) + dice

    x, y = x.astype(np.float32), y.astype(np.float32)[..., None]
    flip = np.random.default_rng(0).random(len(x)) < 0.5
    x[flip], y[flip] = x[flip, :, ::-1], y[flip, :, ::-1]
    model = build()
    steps = epochs * (len(x) // 32)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)), loss)
    model.fit(x, y, batch_size=32, epochs=epochs, validation_split=0.1, verbose=2)
    model.save(path + ".partial.keras")
    os.replace(path + ".partial.keras", path)
    return model


def contact_split(model, threshold):
    """A Segmenter._split that asks `model` about the blobs the segmenter's own split leaves whole."""
    own = Segmenter._split

    def split(self, blob, contour, opened, pixels):
        parts = own(self, blob, contour, opened, pixels)
        if len(parts) > 1 or cv2.countNonZero(blob) < 2 * self.min_area_px:
            return parts
        split.asked += 1
        padded = np.pad(blob, PAD)
        x, side = network_input(np.pad(pixels, ((PAD, PAD), (PAD, PAD), (0, 0))), padded)
        contact = np.asarray(model(x[None], training=False))[0, ..., 0]
        height, width = padded.shape
        contact = cv2.resize(contact, (side, side), interpolation=cv2.INTER_LINEAR)[:height, :width]
        inner = ((padded > 0) & (contact < threshold)).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(inner, connectivity=4)
        seeds = [k for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] >= self.min_area_px / 4]
        if len(seeds) < 2:
            return parts
        markers = np.ones(padded.shape, np.int32)
        markers[padded > 0] = 0
        for number, k in enumerate(seeds, start=2):
            markers[labels == k] = number
        dist = cv2.distanceTransform(inner, cv2.DIST_L2, 5)
        shade = cv2.normalize(dist, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        cv2.watershed(cv2.cvtColor(255 - shade, cv2.COLOR_GRAY2BGR), markers)
        return [(((markers == n) & (padded > 0)).astype(np.uint8) * 255)[PAD:-PAD, PAD:-PAD]
                for n in range(2, len(seeds) + 2)]

    split.asked = 0  # blobs the network was asked about
    return split


def latency(model, repeats=50):
    """{format: ms per blob} at batch 1, one thread, LiteRT."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    holder = tf.Module()
    holder.weights = [v.value for v in model.variables]
    function = tf.function(lambda x: model(x, training=False),
                           input_signature=[tf.TensorSpec((1, SIDE, SIDE, 4), tf.float32)]).get_concrete_function()
    times = {}
    for fmt in ("float32", "dynamic"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)
        if fmt == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        interpreter = Interpreter(model_content=converter.convert(), num_threads=1)
        interpreter.allocate_tensors()
        index = interpreter.get_input_details()[0]["index"]
        interpreter.set_tensor(index, np.zeros((1, SIDE, SIDE, 4), np.float32))
        interpreter.invoke()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                interpreter.invoke()
            best = min(best, (time.perf_counter() - start) / repeats)
        times[fmt] = round(best * 1000, 2)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", required=True, help="comma-separated split.csv files (train: their train rows; "
                        "evaluate: the photos none trained on)")
    parser.add_argument("--out", required=True, help="folder for the blobs and the network (reused when there)")
    parser.add_argument("--train-seeds", default="100-149", help="feeds to learn from, FIRST-LAST")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--thresholds", default="0.3,0.5", help="contact probability above which a pixel is line")
    parser.add_argument("--seeds", default="5-10;11-18;19-28", help="';'-separated feed ranges to evaluate on")
    args = parser.parse_args(argv)
    import keras

    csvs = args.split.split(",")
    os.makedirs(args.out, exist_ok=True)
    data, path = os.path.join(args.out, "blobs.npz"), os.path.join(args.out, "contact.keras")
    if not os.path.exists(data):
        first, last = (int(v) for v in args.train_seeds.split("-"))
        x, y = blobs(specimens_of(csvs, ("train",)), range(first, last + 1))
        np.savez_compressed(data + ".partial.npz", x=x, y=y)
        os.replace(data + ".partial.npz", data)
    if os.path.exists(path):
        model = keras.models.load_model(path, compile=False)
    else:
        stored = np.load(data)
        model = train(stored["x"], stored["y"], args.epochs, path)
    specimens = specimens_of(csvs, ("test", "val", "calib"))
    print(f"Commit {commit()}; {cpu_name()}; network {path} ({model.count_params()} weights)\n")
    print("| feeds | threshold | pairs split | single particles fragmented | blobs asked per frame |\n"
          "|---|---|---:|---:|---:|")
    for feeds in args.seeds.split(";"):
        first, last = (int(v) for v in feeds.split("-"))
        for threshold in ["segmenter alone"] + [float(t) for t in args.thresholds.split(",")]:
            own, asked = Segmenter._split, "-"
            if threshold != "segmenter alone":
                Segmenter._split = contact_split(model, threshold)
            totals, frames = np.zeros(4, int), 0
            try:
                for seed in range(first, last + 1):
                    by_id, views, empty = touching_pairs.feed(specimens, seed)
                    totals += touching_pairs.measure(by_id, views, empty, "")
                    frames += len(views)
            finally:
                if threshold != "segmenter alone":
                    asked = f"{Segmenter._split.asked / frames:.1f}"
                Segmenter._split = own
            print(f"| {feeds} | {threshold} | {totals[0]} / {totals[1]} ({totals[0] / totals[1]:.1%}) | "
                  f"{totals[2]} / {totals[3]} ({totals[2] / totals[3]:.2%}) | {asked} |", flush=True)
    print(f"\nLiteRT, one thread, batch 1, ms per blob: {latency(model)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
