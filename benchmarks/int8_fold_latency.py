#!/usr/bin/env python
"""Latency of the int8 export with the LayerNorm affine folded into the next layer (mineralnet.export.equalize,
issue 25 point 2) against the int8 export before the fold and float32, all three converted by the export's own
clones (mineralnet.export.pipeline._ExportModels) and timed interleaved at 1 and 2 threads, ratio to float32.
eca_convnext_tiny with random weights (latency does not depend on them), 224 px by default. Prints Markdown.

    python benchmarks/int8_fold_latency.py [--image-size 224] [--runs 40] [--rounds 8] [--batch 1|dynamic]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mineralnet._tf import import_tensorflow  # noqa: E402

import_tensorflow()  # its start-up lines hidden, as in the package's own tools
import keras  # noqa: E402
import numpy as np  # noqa: E402

from mineralnet.export import convert  # noqa: E402
from mineralnet.export.delegation import delegation, describe  # noqa: E402
from mineralnet.export.pipeline import _ExportModels, _int8_float_layers  # noqa: E402
from mineralnet.export.rewrite import INTEGER_GELU, rewrite_for_export  # noqa: E402
from mineralnet.export.verify import invocation_times, make_interpreter, percentiles  # noqa: E402
from mineralnet.models import build_model  # noqa: E402
from machine import commit, cpu_name  # noqa: E402

THREADS = (1, 2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", choices=("1", "dynamic"), default="1")
    args = parser.parse_args(argv)
    size, batch = args.image_size, (1 if args.batch == "1" else None)
    keras.utils.set_random_seed(0)
    model = build_model("eca_convnext_tiny", 7, (size, size, 3))
    calibration = np.random.RandomState(0).randint(0, 256, (8, size, size, 3)).astype(np.uint8)
    clones = _ExportModels(model, free_batch=batch is None)
    unfolded, _ = rewrite_for_export(model, gelu=INTEGER_GELU, free_batch=batch is None)
    stem = _int8_float_layers(model)
    models = {
        "float32": convert(clones.get("float32"), "float32", size, batch=batch),
        "int8, LayerNorm affine unfolded (before)": convert(unfolded, "int8", size, calibration, batch,
                                                            float_layers=stem),
        "int8, LayerNorm affine folded (exported)": convert(clones.get("int8"), "int8", size, calibration, batch,
                                                            float_layers=stem),
    }
    load_before = os.getloadavg()
    interpreters = {(label, t): make_interpreter(b, t) for label, b in models.items() for t in THREADS}
    image = np.zeros((size, size, 3), np.uint8)
    times = {key: [] for key in interpreters}
    per_round = -(-args.runs // args.rounds)
    for round_index in range(args.rounds):  # interleaved: shared-machine load lands on every variant alike
        for key, interpreter in interpreters.items():
            times[key] += invocation_times(interpreter, image, per_round, warmup=3 if round_index == 0 else 1)
    p = {key: percentiles(values) for key, values in times.items()}
    print(f"eca_convnext_tiny, 7 classes, {size} px, random weights, batch {args.batch}; {cpu_name()}, "
          f"{os.cpu_count()} cores; commit {commit()}; load average {'/'.join(f'{v:.2f}' for v in load_before)} "
          f"before, {'/'.join(f'{v:.2f}' for v in os.getloadavg())} after; {per_round * args.rounds} invocations "
          f"per variant and thread count in {args.rounds} interleaved rounds.\n")
    print("| variant | 1 thread p50 / p90 ms | 2 threads p50 / p90 ms | ratio to float32 (1 / 2 threads) | XNNPACK |")
    print("|---|---|---|---|---|")
    for label, model_bytes in models.items():
        ratio = [p[label, t]["p50"] / p["float32", t]["p50"] for t in THREADS]
        print(f"| {label} | {p[label, 1]['p50']:.1f} / {p[label, 1]['p90']:.1f} | {p[label, 2]['p50']:.1f} / "
              f"{p[label, 2]['p90']:.1f} | {ratio[0]:.2f}x / {ratio[1]:.2f}x | {describe(delegation(model_bytes))} |")


if __name__ == "__main__":
    main()
