#!/usr/bin/env python
"""Size, latency (p50/p90 at 1 and 2 threads) and top-1 agreement with float32 of every TFLite format of
eca_convnext_tiny, as `mineralnet.export` converts it. Prints a Markdown table.

The model has RANDOM weights (the machine is offline, and size and latency do not depend on the weights). With
random weights the softmax is nearly flat and few classes win (the header says how many distinct top-1 classes
float32 gives): read the agreement column as a check that each format computes the same function, not as the
accuracy a trained model keeps. Images are synthetic demo specimens: `--images` for agreement, as many others
(seeded, never the same files) for int8 calibration.

    python benchmarks/tflite_latency.py [--image-size 224] [--images 20] [--runs 50] [--rounds 5]
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mineralnet import build_model  # noqa: E402
from mineralnet.data import load_image, make_demo_dataset  # noqa: E402
from mineralnet.export import FORMATS, convert, list_operators  # noqa: E402
from mineralnet.export.verify import invocation_times, make_interpreter, percentiles, predict  # noqa: E402
from machine import cpu_name  # noqa: E402

NUM_CLASSES = 6
THREADS = (1, 2)


def demo_images(count, size, seed):
    """`count` synthetic specimens spread over the classes, as (count, size, size, 3) uint8."""
    with tempfile.TemporaryDirectory() as directory:
        make_demo_dataset(directory, NUM_CLASSES, -(-count // NUM_CLASSES), size, seed=seed)
        files = sorted(os.path.join(root, name) for root, _, names in os.walk(directory)
                       for name in names if name.endswith(".jpg"))
        by_number = sorted(files, key=lambda path: (os.path.basename(path), path))  # round-robin over classes
        return np.stack([load_image(path, size) for path in by_number[:count]])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=20, help="images for the agreement column (and calibration)")
    parser.add_argument("--runs", type=int, default=50, help="timed invocations per format and thread count")
    parser.add_argument("--rounds", type=int, default=5, help="the runs are spread over this many rounds")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    size = args.image_size
    model = build_model("eca_convnext_tiny", NUM_CLASSES, (size, size, 3))
    images = demo_images(args.images, size, seed=1)
    calibration = demo_images(args.images, size, seed=2)
    load_before = os.getloadavg()[0]

    models, interpreters, conversion_s = {}, {}, {}
    for fmt in FORMATS:
        start = time.perf_counter()
        models[fmt] = convert(model, fmt, size, calibration)
        conversion_s[fmt] = time.perf_counter() - start
        for threads in THREADS:
            interpreters[fmt, threads] = make_interpreter(models[fmt], threads)
        print(f"converted {fmt}", file=sys.stderr, flush=True)

    # Time in rounds, every format and thread count in turn, so a burst of load from other processes on a shared
    # machine lands on all of them rather than on whichever was being timed.
    times = {key: [] for key in interpreters}
    per_round = -(-args.runs // args.rounds)
    for round_index in range(args.rounds):
        for key, interpreter in interpreters.items():
            times[key] += invocation_times(interpreter, images[0], per_round, warmup=5 if round_index == 0 else 1)

    reference = predict(interpreters["float32", 2], images)
    rows = []
    for fmt in FORMATS:
        probabilities = predict(interpreters[fmt, 2], images)
        agreement = np.mean(probabilities.argmax(1) == reference.argmax(1))
        dtypes = [detail[0]["dtype"].__name__ for detail in (interpreters[fmt, 2].get_input_details(),
                                                             interpreters[fmt, 2].get_output_details())]
        latency = {threads: percentiles(times[fmt, threads]) for threads in THREADS}
        rows.append(
            f"| {fmt} | {len(models[fmt]) / 1e6:.1f} | {latency[1]['p50']:.1f} / {latency[1]['p90']:.1f} | "
            f"{latency[2]['p50']:.1f} / {latency[2]['p90']:.1f} | {agreement:.0%} "
            f"({int(round(agreement * len(images)))}/{len(images)}) | "
            f"{np.abs(probabilities - reference).max():.1e} | {sum(list_operators(models[fmt]).values())} | "
            f"{dtypes[0]} → {dtypes[1]} | {conversion_s[fmt]:.0f} |"
        )

    print(f"eca_convnext_tiny, {NUM_CLASSES} classes, {size} px, random weights, batch 1; LiteRT interpreter "
          f"(XNNPACK) with tensorflow {tf.__version__}, keras {keras.__version__}; {cpu_name()}, "
          f"{os.cpu_count()} cores; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after.")
    print(f"Latency: {per_round * args.rounds} timed invocations on one image per format and thread count, in "
          f"{args.rounds} interleaved rounds after 5 warm-up ones. Agreement: top-1 vs float32 "
          f"on {len(images)} synthetic demo images, over which float32 predicts "
          f"{len(np.unique(reference.argmax(1)))} distinct classes (max probability {reference.max():.2f}); int8 "
          f"calibrated on {len(calibration)} other ones.\n")
    print("| format | size MB | 1 thread p50 / p90 ms | 2 threads p50 / p90 ms | top-1 agreement with float32 | "
          "max abs prob diff vs float32 | operators | input → output | conversion s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
