#!/usr/bin/env python
"""How faithful int8 is to the Keras model, per conversion variant (issue 25 point 2): the agreement of each int8
file's top class with the Keras model's (the run's exact-GELU model, not the rewritten clone) and the mean absolute
probability error on the run's val+calib rows (what a variant is CHOSEN on), then the test agreement and accuracy
(reported, never chosen on), the test images whose two best uint8 probabilities tie, and the XNNPACK partitions.
Prints Markdown.

    python benchmarks/int8_fidelity.py --run RUN [--model PATH] [--image-size 224] [--variants a,b]
        [--worst 4,8,16] [--calibration-samples 1000]

--image-size other than the run's builds the run's registry model at that size and loads the same weights (the
"same weights at 224 px" of the issue). The variants (VARIANTS) are: the exported conversion; the GELU forms;
per-tensor weight scales; augmented calibration views (flips and a rotation of every calibration image);
operator types kept in float (the residual ADDs, depthwise convolutions, GELU's ops); float output probabilities
(a diagnostic: the device contract is uint8); the k tensors TensorFlow's QuantizationDebugger finds worst
(relative RMS error of each quantized tensor against its float value, on the calibration images) kept in float;
the export before it folded the LayerNorm affine into the next layer (affine-unfolded); SmoothQuant equalization
of LayerNorm into the next layer (mineralnet.export.equalize, on the unfolded clone); empirical bias correction
(mineralnet.export.bias_correction); percentile activation ranges (mineralnet.export.ranges); and, beside the
full-integer variants, the export's `dynamic` format (int8 weights, each input row quantized at run time).
"""

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mineralnet._tf import import_tensorflow  # noqa: E402

import_tensorflow()  # its start-up lines hidden, as in the package's own tools
import tensorflow as tf  # noqa: E402

from mineralnet.export.bias_correction import correct_biases  # noqa: E402
from mineralnet.export.convert import convert, make_converter, quantize_calibrated  # noqa: E402
from mineralnet.export.equalize import equalize as equalize_layernorms, fold_layernorm_affine  # noqa: E402
from mineralnet.export.delegation import delegation, describe  # noqa: E402
from mineralnet.export.ranges import percentile_ranges  # noqa: E402
from mineralnet.export.representative import CALIBRATION_SAMPLES, load_images, representative_rows  # noqa: E402
from mineralnet.export.rewrite import FLOAT_MARKER, INTEGER_GELU, rewrite_for_export  # noqa: E402
from mineralnet.export.verify import make_interpreter, predict  # noqa: E402
from mineralnet.models import build_model  # noqa: E402
from mineralnet.models.registry import registered_info  # noqa: E402
from mineralnet.rundir import Run  # noqa: E402
from machine import commit, cpu_name  # noqa: E402

# name -> options of int8_variant (gelu None keeps the exact GELU, a float op: it is then listed in float_ops)
VARIANTS = {
    "exported": {},  # the registry stem float, GELU sigmoid form, LayerNorm affine folded into the next layer
    "affine-unfolded": {"fold": False},  # the export before the affine was folded (issue 25 point 2, second part)
    "gelu-tanh": {"gelu": "tanh"},
    "gelu-exact-float": {"gelu": None, "float_ops": ("GELU",)},
    "gelu-ops-float": {"float_ops": ("MUL", "LOGISTIC")},
    "per-tensor": {"per_channel": False},
    "augmented-calibration": {"augment": True},
    "add-float": {"float_ops": ("ADD",)},
    "depthwise-float": {"float_ops": ("DEPTHWISE_CONV_2D",)},
    "float-output": {"output_type": tf.float32},  # a diagnostic: the device contract is uint8
    "classifier-float": {"classifier": True},  # the final Dense (logits) float: int8 logits tie
    "classifier-float-output": {"classifier": True, "output_type": tf.float32},
    "add-classifier-float": {"float_ops": ("ADD",), "classifier": True},
    "add-gelu-classifier-float": {"float_ops": ("ADD", "MUL", "LOGISTIC"), "classifier": True},
    "add-depthwise-classifier-float": {"float_ops": ("ADD", "DEPTHWISE_CONV_2D"), "classifier": True},
    "add-mul-float": {"float_ops": ("ADD", "MUL")},
    "add-float-gelu-tanh": {"float_ops": ("ADD",), "gelu": "tanh"},
    "add-classifier-float-augmented": {"float_ops": ("ADD",), "classifier": True, "augment": True},
    # SmoothQuant equalization of LayerNorm -> pointwise/downsampling/classifier (mineralnet.export.equalize)
    # (on the unfolded clone: after the fold, gamma is 1 and there is nothing left to equalize)
    "equalize-0.5": {"equalize": 0.5, "fold": False},
    "equalize-0.3": {"equalize": 0.3, "fold": False},
    "equalize-0.7": {"equalize": 0.7, "fold": False},
    "equalize-0.5-add-float": {"equalize": 0.5, "float_ops": ("ADD",), "fold": False},
    # empirical bias correction (mineralnet.export.bias_correction), layer by layer on N calibration images
    "bias-64": {"bias_images": 64},
    "bias-128": {"bias_images": 128},
    "equalize-0.7-bias-64": {"equalize": 0.7, "bias_images": 64, "fold": False},
    # percentile activation ranges (mineralnet.export.ranges) instead of min/max
    "percentile-99.99": {"percentile": 99.99},
    "percentile-99.999": {"percentile": 99.999},
    "percentile-99.99-bias-64": {"percentile": 99.99, "bias_images": 64},
    # not full-integer: the export's dynamic format (int8 weights; XNNPACK quantizes each input row at run time)
    "dynamic": {"dynamic": True},
}


def augmented(images):
    """Every calibration image as itself, mirrored left-right, mirrored top-bottom and turned 90 degrees."""
    return np.concatenate([images, images[:, :, ::-1], images[:, ::-1], np.rot90(images, 1, axes=(1, 2))])


# (model, gelu, augment, equalize, fold) -> (converter, calibrate-only bytes): calibration is the slow part
CALIBRATED = {}
EQUALIZED_FLOAT = {}  # alpha -> max |p(equalized clone) - p(clone)| on the held images (the rewrite is exact)
RANGE_IMAGES = 256  # the calibration images the percentiles are taken over
NARROWED = {}  # (calibration key, percentile) -> (calibrate-only bytes with narrowed ranges, tensors narrowed)
BIAS_HISTORY = {}  # (images, equalize, float_ops) -> mean |shift| removed per layer, in graph order


def int8_variant(model, size, calibration, stem, gelu=INTEGER_GELU, float_ops=(), per_channel=True,
                 augment=False, output_type=None, float_tensors=(), classifier=False, equalize=None, check=None,
                 bias_images=0, percentile=None, fold=True, dynamic=False):
    """The int8 bytes of `model` converted as the export does, changed by the given options. `equalize`: the
    SmoothQuant alpha of mineralnet.export.equalize (None: no equalization); `check` (images) records the
    equalized float clone's max probability difference to the plain clone in EQUALIZED_FLOAT. `bias_images`: the
    number of calibration images mineralnet.export.bias_correction measures on (0: no bias correction);
    `percentile`: activation ranges narrowed to that percentile of the calibration images' values
    (mineralnet.export.ranges), None keeps the converter's min/max; `fold` False leaves the LayerNorm gamma and
    beta in place (the export before it folded them, equalize.fold_layernorm_affine). `dynamic`: the export's
    dynamic format instead (the exact clone, no calibration; mineralnet.export.dynamic), the other options unused."""
    if dynamic:
        return convert(rewrite_for_export(model)[0], "dynamic", size)
    key = (id(model), gelu, augment, equalize, fold)
    if key not in CALIBRATED:
        clone, _ = rewrite_for_export(model, gelu=gelu)
        if fold:
            fold_layernorm_affine(clone)
        if equalize is not None:
            before = clone.predict(check.astype(np.float32), verbose=0) if check is not None else None
            equalize_layernorms(clone, calibration, alpha=equalize)
            if before is not None:
                EQUALIZED_FLOAT[equalize] = float(np.abs(clone.predict(check.astype(np.float32), verbose=0)
                                                         - before).max())
        converter = make_converter(clone, "int8", size, augmented(calibration) if augment else calibration)
        converter._experimental_calibrate_only = True
        CALIBRATED[key] = converter, converter.convert()
    converter, calibrated = CALIBRATED[key]
    head = (registered_info(model).classifier,) if classifier else ()
    if percentile is not None:
        if (key, percentile) not in NARROWED:
            NARROWED[key, percentile] = percentile_ranges(calibrated, calibration[:RANGE_IMAGES], percentile)
        calibrated, _ = NARROWED[key, percentile]
    model_bytes = quantize_calibrated(converter, calibrated, tuple(stem) + tuple(float_tensors) + head, float_ops,
                                      per_channel, output_type)
    if bias_images:
        model_bytes, removed = correct_biases(model_bytes, calibrated, calibration[:bias_images])
        BIAS_HISTORY[bias_images, equalize, float_ops] = list(removed.values())
    return model_bytes



DEBUG_CALIBRATION = 128  # the debugger calibrates again: on the first 128 calibration images, to save minutes


def relative_rms(float_values, quantized, scale, zero_point):
    """RMS of (float - dequantized) over RMS of the float values of one tensor (the debugger's direct compare).
    Measured on the 64-px run: tensors whose float values are ~0 (ECA's, the first residual ADD) make this ratio
    1e11 and the ranking useless; `--rank steps` (RMS error in quantization steps, int8_debug.py's) is the default."""
    dequantized = (quantized.astype(np.float64) - zero_point) * scale
    return float(np.sqrt(np.mean((float_values - dequantized) ** 2)) / (np.sqrt(np.mean(float_values ** 2)) + 1e-12))


def error_in_steps(values):
    """RMS error of a quantized tensor in units of its quantization step."""
    scale = float(values["scale"])
    return np.sqrt(float(values["mean_squared_error"])) / scale if scale else float("nan")


def worst_tensors(model, size, calibration, stem, debug_images, rank="steps"):
    """[(relative RMS error, op, tensor name)] of every quantized tensor, worst first, by TensorFlow's
    QuantizationDebugger on `debug_images` (the LayerNorm statistics and the stem, float in the export, left out)."""
    import io

    clone, _ = rewrite_for_export(model, gelu=INTEGER_GELU)
    converter = make_converter(clone, "int8", size, calibration[:DEBUG_CALIBRATION])
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"relative_rms": relative_rms}, fully_quantize=True)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([image[None].astype(np.float32)] for image in debug_images),
        debug_options=options)
    debugger.run()
    table = io.StringIO()
    debugger.layer_statistics_dump(table)
    lines = table.getvalue().splitlines()
    header = lines[0].split(",")
    found = []
    for line in lines[1:]:
        values = dict(zip(header, line.split(",")))
        name = values["tensor_name"]
        error = error_in_steps(values) if rank == "steps" else float(values["relative_rms"])
        if FLOAT_MARKER in name or any(layer in name for layer in stem) or not np.isfinite(error):
            continue  # float in the export already, or a tensor the debugger could not compare
        found.append((error, values["op_name"], name))
    return sorted(found, reverse=True)


def cached_images(run, held, calibration_samples, size):
    """(held images, calibration images), loaded once per split, count and size into /tmp (loading 500 photos is
    minutes on a loaded machine; the variants and re-runs share it)."""
    import hashlib

    key = hashlib.sha256(open(run.split_file, "rb").read()).hexdigest()[:12]
    path = f"/tmp/int8_fidelity_{key}_{calibration_samples}_{size}.npz"
    if os.path.exists(path):
        with np.load(path) as saved:
            return saved["held"], saved["calibration"]
    held_images = load_images(held, size)
    calibration = load_images(representative_rows(run.rows(), calibration_samples), size)
    np.savez(path + ".tmp.npz", held=held_images, calibration=calibration)
    os.replace(path + ".tmp.npz", path)
    return held_images, calibration


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--model", default=None, help="a checkpoint instead of the run's model.keras")
    parser.add_argument("--image-size", type=int, default=None, help="default: the run's")
    parser.add_argument("--variants", default=None, help="comma-separated VARIANTS names (default all)")
    parser.add_argument("--worst", default="4,8,16", help="debugger variants: keep the k worst tensors float")
    parser.add_argument("--debug-samples", type=int, default=16)
    parser.add_argument("--rank", choices=("steps", "relative"), default="steps",
                        help="debugger ranking: RMS error in quantization steps, or relative to the float values")
    parser.add_argument("--calibration-samples", type=int, default=CALIBRATION_SAMPLES)
    args = parser.parse_args(argv)

    started = time.time()
    run = Run(args.run)
    model = run.load_model(args.model)
    size = args.image_size or run.image_size
    if size != run.image_size:  # the same weights in the same registry model built at another input size
        resized = build_model(run.train_config.model, len(run.labels), (size, size, 3))
        resized.set_weights(model.get_weights())
        model = resized
    info = registered_info(model)
    stem = (info.stem,) if info else ()
    held = [r for r in run.rows() if r["subset"] != "train"]
    is_test = np.array([r["subset"] == "test" for r in held])
    chosen = ~is_test
    truth = np.array([run.labels.index(r["label"]) for r in held])
    images, calibration = cached_images(run, held, args.calibration_samples, size)
    reference = model.predict(images.astype(np.float32), verbose=0)
    top = reference.argmax(1)
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"Run `{args.run}` ({args.model or 'model.keras'}), {size} px; {len(calibration)} calibration images; "
          f"{chosen.sum()} val+calib rows (choice), {is_test.sum()} test rows (report). Commit {commit()}; "
          f"{cpu_name()}; load average {load} at start.\n")
    print(f"Keras model: val+calib accuracy {np.mean(top[chosen] == truth[chosen]):.2%}, test accuracy "
          f"{np.mean(top[is_test] == truth[is_test]):.2%}.")
    for form in ("sigmoid", "tanh"):
        approx = rewrite_for_export(model, gelu=form)[0].predict(images.astype(np.float32), verbose=0).argmax(1)
        print(f"Float model with GELU in the {form} form: agreement with Keras val+calib "
              f"{np.mean(approx[chosen] == top[chosen]):.2%}, test {np.mean(approx[is_test] == top[is_test]):.2%}.")
    margin = np.sort(reference, 1)[:, -1] - np.sort(reference, 1)[:, -2]
    print(f"Keras top-2 probability margin: median {np.median(margin):.3f}; below 0.02 on "
          f"{np.mean(margin < 0.02):.1%} of the held rows, below 0.05 on {np.mean(margin < 0.05):.1%}.\n")

    variants = dict(VARIANTS)
    if args.variants:
        variants = {name: variants[name] for name in args.variants.split(",")}
    if args.worst:
        ranked = worst_tensors(model, size, calibration, stem, calibration[:args.debug_samples], args.rank)
        print(f"Worst tensors (QuantizationDebugger, ranked by --rank {args.rank}):",
              "; ".join(f"{e:.3f} {op} `{name[:60]}`" for e, op, name in ranked[:8]), "\n")
        for k in (int(k) for k in args.worst.split(",")):
            variants[f"worst-{k}-float"] = {"float_tensors": tuple(n for _, _, n in ranked[:k])}

    print("| int8 variant | val+calib agreement | val+calib mean abs Δp | test agreement | test accuracy | test uint8 "
          "top-2 ties | held disagreements at Keras margin < 0.05 | XNNPACK | convert s |\n"
          "|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, options in variants.items():
        start = time.time()
        model_bytes = int8_variant(model, size, calibration, stem, check=images, **options)
        seconds = time.time() - start
        interpreter = make_interpreter(model_bytes, 2)
        probabilities = predict(interpreter, images)
        predicted = probabilities.argmax(1)
        ordered = np.sort(probabilities, 1)
        ties = np.sum((ordered[:, -1] == ordered[:, -2]) & is_test)
        error = np.abs(probabilities - reference).mean(1)
        print(f"| {name} | {np.mean(predicted[chosen] == top[chosen]):.2%} | {error[chosen].mean():.4f} | "
              f"{np.mean(predicted[is_test] == top[is_test]):.2%} | "
              f"{np.mean(predicted[is_test] == truth[is_test]):.2%} "
              f"| {ties} | {np.sum((predicted != top) & (margin < 0.05))} of {np.sum(predicted != top)} "
              f"| {describe(delegation(model_bytes))} | {seconds:.0f} |", flush=True)
    for (count, alpha, ops), removed in BIAS_HISTORY.items():
        print(f"\nBias correction on {count} images (equalize {alpha}, float ops {ops or 'none'}): {len(removed)} "
              f"layers, mean |shift| removed {np.mean(removed):.2e} (largest {max(removed):.2e}).")
    for (_, percentile), (_, narrowed) in NARROWED.items():
        print(f"\nPercentile {percentile}: {narrowed} activation ranges narrowed.")
    for alpha, difference in EQUALIZED_FLOAT.items():
        print(f"\nEqualized float clone (alpha {alpha}) against the plain clone: max |Δp| {difference:.2e} on the "
              "held images.")
    print(f"\n{time.time() - started:.0f} s; load average {'/'.join(f'{v:.1f}' for v in os.getloadavg())} at end.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
