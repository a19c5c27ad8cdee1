"""Training throughput of eca_convnext_tiny vs convnext_tiny (same batch, same process), and the tf.data input
pipeline alone, in images/s. Targets: ECA costs <= 3 % of training throughput; the pipeline delivers >= 5x what
the model consumes.

    python benchmarks/train_throughput.py [--data DIR] [--image-size 224] [--batch-size 32] [--steps 3] [--rounds 4]
"""

import argparse
import os
import platform
import subprocess
import tempfile
import time

from mineralnet._tf import import_tensorflow

import_tensorflow()  # its start-up lines hidden, as in the package's own tools
import keras  # noqa: E402
import numpy as np  # noqa: E402

from mineralnet.data import make_demo_dataset, make_split, scan_dataset
from mineralnet.data.pipeline import AugmentConfig, make_dataset
from mineralnet.models import build_model


def training_rates(names, dataset, num_classes, size, steps, warmup, rounds):
    """images/s per model, `rounds` alternating timings of `steps` steps each on the same pre-decoded batches
    (measures the models, not the loader; alternation spreads the shared machine's noise over both)."""
    batches = iter(dataset.repeat())
    fixed = [next(batches) for _ in range(2)]
    models = {}
    for name in names:
        model = build_model(name, num_classes, (size, size, 3))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
        for i in range(warmup):
            model.train_on_batch(*fixed[i % 2])
        models[name] = model
    rates = {name: [] for name in names}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for i in range(steps):
                model.train_on_batch(*fixed[i % 2])
            rates[name].append(steps * len(fixed[0][0]) / (time.perf_counter() - start))
    return rates


def pipeline_rate(dataset, batches):
    iterator = iter(dataset.repeat())
    for _ in range(3):  # first pass decodes and fills the cache
        next(iterator)
    start = time.perf_counter()
    images = sum(len(next(iterator)[0]) for _ in range(batches))
    return images / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="class-folder dataset (default: synthetic demo data)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    data = args.data or make_demo_dataset(tempfile.mkdtemp(), 4, 64, image_size=max(256, args.image_size))
    classes, samples, _ = scan_dataset(data)
    rows = [r for r in make_split(samples) if r["subset"] == "train"]
    files = [os.path.join(data, r["path"]) for r in rows]
    labels = [classes.index(r["label"]) for r in rows]
    dataset = make_dataset(files, labels, len(classes), args.image_size, args.batch_size, training=True,
                           augment=AugmentConfig())
    results = training_rates(("convnext_tiny", "eca_convnext_tiny"), dataset, len(classes), args.image_size,
                             args.steps, args.warmup, args.rounds)
    pipe = pipeline_rate(dataset, max(20, 2 * args.steps))
    plain, eca = np.median(results["convnext_tiny"]), np.median(results["eca_convnext_tiny"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; keras {keras.__version__} "
          f"({keras.backend.backend()}); commit {commit}")
    print(f"image size {args.image_size}, batch {args.batch_size}; median of {args.rounds} alternating rounds of "
          f"{args.steps} steps per model; load average {os.getloadavg()[0]:.1f}\n")
    print("| measure | images/s |\n|---|---:|")
    for name, rates in results.items():
        print(f"| {name} training (rounds: {', '.join(f'{r:.2f}' for r in rates)}) | {np.median(rates):.2f} |")
    print(f"| input pipeline alone (decode, cache, augment) | {pipe:.1f} |")
    print(f"\nECA cost: {100 * (1 - eca / plain):.1f} % of training throughput (target <= 3 %)")
    print(f"pipeline / model: {pipe / eca:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
