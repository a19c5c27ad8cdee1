#!/usr/bin/env python
"""Where post-training int8 loses precision in a run's model, and whether keeping LayerNorm in float helps.

TensorFlow's QuantizationDebugger runs the int8 model beside the float one and gives, per quantized tensor, the
RMS error in units of that tensor's quantization step. This prints the error per operator type and the worst
tensors, then measures test accuracy of two selective-quantization variants (LayerNorm statistics, then every
LayerNorm op, left in float; builtin ops only) against full int8 and the Keras model.

    python benchmarks/int8_debug.py --run RUN [--calibration-samples 1000] [--debug-samples 32]
"""

import argparse
import io
import os
import sys
from collections import defaultdict

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mineralnet._tf import import_tensorflow  # noqa: E402

import_tensorflow()  # its start-up lines hidden, as in the package's own tools
import tensorflow as tf  # noqa: E402

from mineralnet.export.representative import CALIBRATION_SAMPLES, load_images, representative_rows  # noqa: E402
from mineralnet.export.convert import make_converter  # noqa: E402
from mineralnet.export.verify import make_interpreter  # noqa: E402
from mineralnet.rundir import Run  # noqa: E402
from machine import commit, cpu_name  # noqa: E402

VARIANTS = {  # tensor-name fragments left in float
    "LayerNorm statistics float": ("moments/variance", "Rsqrt"),
    "every LayerNorm op float": ("layernorm", "layer_normalization"),
}


def debugger(model, image_size, calibration, debug_images, denylisted_nodes=None):
    converter = make_converter(model, "int8", image_size, calibration)  # exactly what export.py converts
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylisted_nodes, fully_quantize=True)
    return tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([image[None].astype(np.float32)] for image in debug_images),
        debug_options=options)


def accuracy(model_bytes, images, truth):
    interpreter = make_interpreter(model_bytes, 2)
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = given["quantization"]
    predictions = []
    for image in images:
        x = np.round(image[None] / scale + zero_point) if scale else image[None]
        interpreter.set_tensor(given["index"], x.astype(given["dtype"]))
        interpreter.invoke()
        predictions.append(interpreter.get_tensor(taken["index"])[0].argmax())
    return float(np.mean(np.array(predictions) == truth))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--calibration-samples", type=int, default=CALIBRATION_SAMPLES)
    parser.add_argument("--debug-samples", type=int, default=32, help="images the per-tensor errors average over")
    parser.add_argument("--worst", type=int, default=10)
    args = parser.parse_args(argv)

    run = Run(args.run)
    model = run.load_model()
    rows = run.rows()
    calibration = load_images(representative_rows(rows, args.calibration_samples), run.image_size)
    test = [r for r in rows if r["subset"] == "test"]
    images = load_images(test, run.image_size).astype(np.float32)
    truth = np.array([run.labels.index(r["label"]) for r in test])

    full = debugger(model, run.image_size, calibration, calibration[:args.debug_samples])
    full.run()
    table = io.StringIO()
    full.layer_statistics_dump(table)
    lines = table.getvalue().splitlines()
    header = lines[0].split(",")
    errors = []
    for line in lines[1:]:
        values = dict(zip(header, line.split(",")))
        scale = float(values["scale"])
        if scale:
            errors.append((np.sqrt(float(values["mean_squared_error"])) / scale, values["op_name"],
                           values["tensor_name"]))
    print(f"Run `{os.path.abspath(args.run)}`, {run.image_size} px; {len(calibration)} calibration images, "
          f"errors over {args.debug_samples}; {len(test)} test images. Commit {commit()}; {cpu_name()}.\n")
    print("RMS error of each quantized tensor in quantization steps, by operator:\n")
    print("| operator | tensors | mean | max |\n|---|---:|---:|---:|")
    by_op = defaultdict(list)
    for error, op, _ in errors:
        by_op[op].append(error)
    for op, values in sorted(by_op.items(), key=lambda item: -np.mean(item[1])):
        print(f"| {op} | {len(values)} | {np.mean(values):.2f} | {np.max(values):.2f} |")
    print(f"\nWorst {args.worst} tensors:\n")
    for error, op, name in sorted(errors, reverse=True)[:args.worst]:
        print(f"- {error:.1f} steps: {op} `{name}`")

    keras_accuracy = float(np.mean(model.predict(images, verbose=0).argmax(1) == truth))
    print("\n| model | test accuracy | Δ vs Keras (points) |\n|---|---:|---:|")
    print(f"| Keras float32 | {keras_accuracy:.2%} | 0 |")
    results = {"full int8": full.get_nondebug_quantized_model()}
    for name, fragments in VARIANTS.items():
        denied = [t for _, _, t in errors if any(f in t for f in fragments)]
        results[f"{name} ({len(denied)} tensors)"] = debugger(
            model, run.image_size, calibration, calibration[:2], denied).get_nondebug_quantized_model()
    for name, model_bytes in results.items():
        value = accuracy(model_bytes, images, truth)
        print(f"| {name} | {value:.2%} | {100 * (value - keras_accuracy):+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
