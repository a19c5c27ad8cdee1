#!/usr/bin/env python
"""Latency (p50/p90 at 1 and 2 threads) of every TFLite format of eca_convnext_tiny, before and after the export
rewrites (mineralnet.export.rewrite), with XNNPACK partitions, ratios to float32 and distance to the GEMM floors
measured on the same run; with --run, the test accuracy of each variant on a trained run. Prints Markdown.

Latency does not depend on the weights, so the 224 px model has RANDOM weights (the machine is offline). The
GEMM floors: a 1x1 convolution big enough to be pure GEMM (56x56x256 -> 1024, 0.82 GMAC), float32 and int8,
gives XNNPACK's MAC rate on this CPU; the floor of a format is ConvNeXt-T's MACs at that rate.

    python benchmarks/tflite_latency.py [--image-size 224] [--runs 30] [--rounds 3] [--run RUN]
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
import tensorflow as tf  # noqa: E402

from mineralnet.models import build_model, model_info  # noqa: E402
from mineralnet.export import convert  # noqa: E402
from mineralnet.export.representative import load_images, representative_rows  # noqa: E402
from mineralnet.export.delegation import delegation, describe  # noqa: E402
from mineralnet.export.rewrite import rewrite_for_export  # noqa: E402
from mineralnet.export.verify import invocation_times, make_interpreter, percentiles, predict  # noqa: E402
from mineralnet.rundir import Run  # noqa: E402
from machine import commit, cpu_name  # noqa: E402

NUM_CLASSES = 7
THREADS = (1, 2)
CONVNEXT_T_GMAC_224 = 4.46  # multiply-accumulates of ConvNeXt-T at 224 px (ECA adds ~0)
# (label, format, rewrites: None = as exported before issue 11, "exact", or a GELU form for int8)
VARIANTS = (
    ("float32 before", "float32", None), ("int8 before", "int8", None),
    ("float32", "float32", "exact"), ("float16", "float16", "exact"), ("dynamic", "dynamic", "exact"),
    ("int8 (GELU sigmoid)", "int8", "sigmoid"), ("int8 (GELU tanh)", "int8", "tanh"),
    ("int8 (GELU sigmoid, stem float: exported)", "int8", "sigmoid"),
    ("int8 (stem, ADDs float)", "int8", "sigmoid"),
    ("int8 (stem, ADDs, classifier float)", "int8", "sigmoid"),
)
# int8 keeping the registry's stem float, as exported
STEM_FLOAT = {"int8 (GELU sigmoid, stem float: exported)", "int8 (stem, ADDs float)",
              "int8 (stem, ADDs, classifier float)"}
# what benchmarks/int8_fidelity.py measured besides: operator types and layers kept float
FLOAT_OPS = {"int8 (stem, ADDs float)": ("ADD",), "int8 (stem, ADDs, classifier float)": ("ADD",)}
CLASSIFIER_FLOAT = {"int8 (stem, ADDs, classifier float)"}


def convert_variant(model, label, fmt, rewrites, size, calibration):
    info = model_info("eca_convnext_tiny")
    float_layers = ((info.stem,) if label in STEM_FLOAT else ()) + (
        (info.classifier,) if label in CLASSIFIER_FLOAT else ())
    return convert(variant_model(model, rewrites), fmt, size, calibration, float_layers=float_layers,
                   float_ops=FLOAT_OPS.get(label, ()))


def variant_model(model, rewrites):
    if rewrites is None:
        return model
    if rewrites == "exact":  # what mineralnet.export.pipeline converts the float and dynamic formats from
        return rewrite_for_export(model)[0]
    return rewrite_for_export(model, gelu=rewrites)[0]


def gemm_models(calibration_count=8):
    """(GMAC, {fmt: bytes}) of a 1x1 convolution that is one big GEMM."""
    inputs = keras.Input((56, 56, 256))
    model = keras.Model(inputs, keras.layers.Conv2D(1024, 1)(inputs))
    gmac = 56 * 56 * 256 * 1024 / 1e9
    rng = np.random.RandomState(0)
    holder = tf.Module()
    holder.weights = [v.value for v in model.variables]
    function = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([1, 56, 56, 256], tf.float32)])
    out = {}
    for fmt in ("float32", "int8"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], holder)
        if fmt == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = lambda: (
                [rng.uniform(-1, 1, (1, 56, 56, 256)).astype(np.float32)] for _ in range(calibration_count))
        out[fmt] = converter.convert()
    return gmac, out


def accuracies(run_dir):
    """{label: test accuracy} of every variant converted from the trained run (at its own image size)."""
    run = Run(run_dir)
    model, rows = run.load_model(), run.rows()
    test = [row for row in rows if row["subset"] == "test"]
    images = load_images(test, run.image_size)
    truth = np.array([run.labels.index(row["label"]) for row in test])
    calibration = load_images(representative_rows(rows, 1000), run.image_size)
    keras_accuracy = float(np.mean(model.predict(images.astype(np.float32), verbose=0).argmax(1) == truth))
    result = {"keras": keras_accuracy}
    for label, fmt, rewrites in VARIANTS:
        model_bytes = convert_variant(model, label, fmt, rewrites, run.image_size, calibration)
        result[label] = float(np.mean(predict(make_interpreter(model_bytes, 2), images).argmax(1) == truth))
        print(f"accuracy {label}: {result[label]:.2%}", file=sys.stderr, flush=True)
    return result, len(test), len(calibration), run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=30, help="timed invocations per variant and thread count")
    parser.add_argument("--rounds", type=int, default=3, help="the runs are spread over this many rounds")
    parser.add_argument("--run", default=None, help="a trained eca_convnext_tiny run: test accuracy per variant")
    parser.add_argument("--only", default=None,
                        help="semicolon-separated variant labels to time (default all; 'float32 before' always)")
    args = parser.parse_args(argv)
    global VARIANTS
    if args.only:
        wanted = {"float32 before", *(label.strip() for label in args.only.split(";"))}
        VARIANTS = tuple(v for v in VARIANTS if v[0] in wanted)

    keras.utils.set_random_seed(0)
    size = args.image_size
    load_before = os.getloadavg()
    model = build_model("eca_convnext_tiny", NUM_CLASSES, (size, size, 3))
    calibration = np.random.RandomState(0).randint(0, 256, (8, size, size, 3)).astype(np.uint8)
    models = {}
    for label, fmt, rewrites in VARIANTS:
        models[label] = convert_variant(model, label, fmt, rewrites, size, calibration)
        print(f"converted {label}", file=sys.stderr, flush=True)
    gmac, gemm = gemm_models()
    for fmt, model_bytes in gemm.items():
        models[f"GEMM {fmt}"] = model_bytes

    interpreters = {(label, t): make_interpreter(b, t) for label, b in models.items() for t in THREADS}
    images = {key: np.zeros(it.get_input_details()[0]["shape"][1:], np.uint8) for key, it in interpreters.items()}
    # Every variant and thread count in turn, round after round: load from other processes on a shared machine
    # lands on all of them rather than on whichever was being timed.
    times = {key: [] for key in interpreters}
    per_round = -(-args.runs // args.rounds)
    for round_index in range(args.rounds):
        for key, interpreter in interpreters.items():
            times[key] += invocation_times(interpreter, images[key], per_round, warmup=3 if round_index == 0 else 1)
    p = {key: percentiles(values) for key, values in times.items()}
    rate = {(fmt, t): gmac / (p[f"GEMM {fmt}", t]["p50"] / 1000) for fmt in gemm for t in THREADS}
    network_gmac = CONVNEXT_T_GMAC_224 * (size / 224) ** 2

    acc = None
    if args.run:
        acc, test_count, calibration_count, run = accuracies(args.run)

    print(f"eca_convnext_tiny, {NUM_CLASSES} classes, {size} px, random weights, batch 1; LiteRT interpreter "
          f"(XNNPACK) with tensorflow {tf.__version__}, keras {keras.__version__}; {cpu_name()}, {os.cpu_count()} "
          f"cores; commit {commit()}; load average (1/5/15 min) {'/'.join(f'{v:.2f}' for v in load_before)} "
          f"before, {'/'.join(f'{v:.2f}' for v in os.getloadavg())} after.")
    print(f"Latency: {per_round * args.rounds} timed invocations per variant and thread count in {args.rounds} "
          f"interleaved rounds. GEMM rates (1x1 conv 56x56x256->1024): float32 "
          f"{rate['float32', 1]:.0f} / {rate['float32', 2]:.0f} GMAC/s, int8 {rate['int8', 1]:.0f} / "
          f"{rate['int8', 2]:.0f} GMAC/s (1 / 2 threads); floor = {network_gmac:.2f} GMAC at that rate.\n")
    print("| variant | size MB | 1 thread p50 / p90 ms | 2 threads p50 / p90 ms | ratio to float32 before (1 / 2 "
          "threads) | floor 1 thread ms (p50 / floor) | XNNPACK |" + (" test accuracy |" if acc else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if acc else ""))
    for label, fmt, _ in VARIANTS:
        ratio = [p[label, t]["p50"] / p["float32 before", t]["p50"] for t in THREADS]
        gemm_fmt = "int8" if fmt == "int8" else "float32"
        floor = network_gmac / rate[gemm_fmt, 1] * 1000
        row = (f"| {label} | {len(models[label]) / 1e6:.1f} | {p[label, 1]['p50']:.1f} / {p[label, 1]['p90']:.1f} | "
               f"{p[label, 2]['p50']:.1f} / {p[label, 2]['p90']:.1f} | {ratio[0]:.2f}x / {ratio[1]:.2f}x | "
               f"{floor:.0f} ({p[label, 1]['p50'] / floor:.1f}x) | {describe(delegation(models[label]))} |")
        print(row + (f" {acc[label]:.2%} |" if acc else ""))
    if acc:
        print(f"\nTest accuracy: run `{os.path.abspath(args.run)}` ({run.image_size} px), {test_count} test images, "
              f"int8 calibrated on {calibration_count} training images; Keras model {acc['keras']:.2%}.")


if __name__ == "__main__":
    main()
