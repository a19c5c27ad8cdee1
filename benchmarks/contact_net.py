"""A learned contact line for touching pairs (issue 29 point 2): train the network edge/contact.py runs, on the belt
simulator's frames, and measure what it adds to the segmenter on the simulator's pairs (as touching_pairs.py
measures the segmenter).

    PYTHONPATH=. python benchmarks/contact_net.py --split runs/sim_cnn/split.csv,runs/sim_cnn_belt/split.csv \
        --out runs/contact_net [--epochs 12] [--stem 2]

- Data: the blobs of the segmenter's mask (edge/particles.py, the same frames as benchmarks/touching_pairs.py) that
  are whole in their frame, from 50 feeds of the photos every run *trained* on. Input: edge/contact.py's
  network_input (96 x 96); target: the blob's pixels within 2 px of another particle's (the contact line; none in a
  single particle).
- Model: a U-Net of 16-32-48-64 channels (0.23 M weights), Adam with cosine decay, Dice + cross-entropy; written as
  `OUT/contact.tflite`, int8 with float input and output (1.06 ms a blob on 2 threads; dynamic range 1.33, float32
  3.5). `--stem 2` works at half the resolution after the first convolution: 0.37 ms, more pairs split and more
  single particles cut (benchmarks/RESULTS.md, "The contact line asked less").
- Evaluation: touching_pairs.py's measure on the feeds of the photos no run trained on, without and with
  `[particles] contact_model = "OUT/contact.tflite"`: the real edge path.

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
from edge.contact import PAD, network_input  # noqa: E402

SIDE = 96
MINET = scenes.MINET


def specimens_of(split_csvs, subsets):
    scenes.MINET = MINET  # unseen_specimens points it at a folder of its choice
    return belt_sim.unseen_specimens(split_csvs, None, subsets)


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


def blobs(specimens, seeds, target=contact_target):
    """(inputs, targets) of the whole blobs of the feeds `seeds`; `target` of (true labels under the blob, blob)."""
    inputs, targets = [], []
    for seed in seeds:
        _, views, empty = touching_pairs.feed(specimens, seed)
        finder = touching_pairs.make_segmenter(empty)
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
                inputs.append(network_input(frame[y0:y1, x0:x1], blob, SIDE)[0])
                targets.append(target(truth[y0:y1, x0:x1] * (blob > 0), blob))
        print(f"feed {seed}: {len(inputs)} blobs", file=sys.stderr, flush=True)
    return np.array(inputs, np.float16), np.array(targets)  # contact_target's dtype, uint8


def build(stem=1):
    """The U-Net; `stem` 2: after its first convolution it works at half the resolution and its map is scaled back
    up (bilinear), a quarter of the work."""
    import keras
    from keras import layers

    def block(t, channels):
        t = layers.Conv2D(channels, 3, padding="same", activation="relu")(t)
        return layers.Conv2D(channels, 3, padding="same", activation="relu")(t)

    inputs = keras.Input((SIDE, SIDE, 4))
    a = block(inputs, 16) if stem == 1 else layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    a = a if stem == 1 else block(layers.MaxPool2D()(a), 16)
    b = block(layers.MaxPool2D()(a), 32)
    c = block(layers.MaxPool2D()(b), 48)
    t = block(layers.MaxPool2D()(c), 64)
    for skip, channels in ((c, 48), (b, 32), (a, 16)):
        t = block(layers.Concatenate()([layers.UpSampling2D()(t), skip]), channels)
    t = layers.Conv2D(1, 1, activation="sigmoid")(t)
    return keras.Model(inputs, t if stem == 1 else layers.UpSampling2D(stem, interpolation="bilinear")(t))


def train(x, y, epochs, path, stem=1):
    import keras

    def loss(target, p):
        overlap = keras.ops.sum(target * p)
        dice = 1 - (2 * overlap + 1) / (keras.ops.sum(target) + keras.ops.sum(p) + 1)
        return keras.ops.mean(keras.losses.binary_crossentropy(target, p)) + dice

    x, y = x.astype(np.float32), y.astype(np.float32)[..., None]
    flip = np.random.default_rng(0).random(len(x)) < 0.5
    x[flip], y[flip] = x[flip, :, ::-1], y[flip, :, ::-1]
    model = build(stem)
    learner = model  # stem 2 learns its half-resolution map (targets max-pooled): the upscaled one did not learn
    if stem == 2:
        learner = keras.Model(model.input, model.layers[-2].output)
        y = y.reshape(len(y), SIDE // 2, 2, SIDE // 2, 2, 1).max(axis=(2, 4))
    steps = epochs * (len(x) // 32)
    learner.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)), loss)
    learner.fit(x, y, batch_size=32, epochs=epochs, validation_split=0.1, verbose=2)
    model.save(path + ".partial.keras")
    os.replace(path + ".partial.keras", path)
    return model


def export(model, path, calibration):
    """Write `model` as a .tflite for edge/contact.py (int8, scaled on `calibration`: network inputs; batch 1);
    {format: (ms per blob on 1 thread, on 2)} of float32, dynamic and int8 (LiteRT, best of 3 x 50 calls)."""
    from ai_edge_litert.interpreter import Interpreter
    from mineralnet.export.convert import convert_network

    times, files = {}, {}
    for fmt in ("float32", "dynamic", "int8"):
        content = files[fmt] = convert_network(model, (1, SIDE, SIDE, 4), fmt, calibration)
        times[fmt] = []
        for threads in (1, 2):
            interpreter = Interpreter(model_content=content, num_threads=threads)
            interpreter.allocate_tensors()
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], calibration[:1].astype(np.float32))
            interpreter.invoke()
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(50):
                    interpreter.invoke()
                best = min(best, (time.perf_counter() - start) / 50)
            times[fmt].append(round(best * 1000, 2))
    with open(path + ".partial", "wb") as handle:
        handle.write(files["int8"])
    os.replace(path + ".partial", path)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", required=True, help="comma-separated split.csv files (train: their train rows; "
                        "evaluate: the photos none trained on)")
    parser.add_argument("--out", required=True, help="folder for the blobs and the network (reused when there)")
    parser.add_argument("--train-seeds", default="100-149", help="feeds to learn from, FIRST-LAST")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--stem", type=int, choices=(1, 2), default=1, help="2: half resolution after the first "
                        "convolution, a quarter of the work (see build)")
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
    stored = np.load(data)
    if os.path.exists(path):
        model = keras.models.load_model(path, compile=False)
    else:
        model = train(stored["x"], stored["y"], args.epochs, path, args.stem)
    tflite = os.path.join(args.out, "contact.tflite")
    times = export(model, tflite, stored["x"][::80])
    specimens = specimens_of(csvs, ("test", "val", "calib"))
    print(f"Commit {commit()}; {cpu_name()}; {tflite} ({model.count_params()} weights); LiteRT, ms per blob on "
          f"(1, 2) threads: {times}\n")
    print("| feeds | contact_model | pairs split | single particles fragmented | blobs asked per frame |\n"
          "|---|---|---:|---:|---:|")
    for feeds in args.seeds.split(";"):
        first, last = (int(v) for v in feeds.split("-"))
        for extra in ("", f'contact_model = "{tflite}"'):
            totals, frames = np.zeros(5, int), 0
            for seed in range(first, last + 1):
                by_id, views, empty = touching_pairs.feed(specimens, seed)
                totals += touching_pairs.measure(by_id, views, empty, extra)
                frames += len(views)
            print(f"| {feeds} | {'set' if extra else 'none'} | {totals[0]} / {totals[1]} ({totals[0] / totals[1]:.1%})"
                  f" | {totals[2]} / {totals[3]} ({totals[2] / totals[3]:.2%}) | {totals[4] / frames:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
