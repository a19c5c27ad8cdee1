#!/usr/bin/env python
"""Which layers int8 should keep in float: for each candidate set (besides the LayerNorm statistics and SOFTMAX the
export always keeps float), the int8 model's agreement with the rewritten float model and its mean absolute
probability error on the run's held-out NON-test rows (val + calib: what the choice is made on), then its test
accuracy (reported, not chosen on) and its XNNPACK partitions. Prints Markdown.

    python benchmarks/int8_float_layers.py --run RUN [--gelu sigmoid] [--calibration-samples 1000]

The candidates are layer-name fragments: a tensor of the converted model stays float when its name contains one.
"""

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mineralnet.export.convert import convert  # noqa: E402
from mineralnet.export.delegation import delegation, describe  # noqa: E402
from mineralnet.export.representative import CALIBRATION_SAMPLES, load_images, representative_rows  # noqa: E402
from mineralnet.export.rewrite import INTEGER_GELU, rewrite_for_export  # noqa: E402
from mineralnet.export.verify import make_interpreter, predict  # noqa: E402
from mineralnet.models.registry import registered_info  # noqa: E402
from mineralnet.rundir import Run  # noqa: E402
from machine import commit, cpu_name  # noqa: E402


def candidates(model):
    info = registered_info(model)
    stem = (info.stem,) if info else ()
    return {"nothing more": (), "stem (the export's choice)": stem, "input normalisation": ("prestem",),
            "stem + head": stem + ("predictions", "layer_normalization", "avg_pool")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--gelu", default=INTEGER_GELU)
    parser.add_argument("--calibration-samples", type=int, default=CALIBRATION_SAMPLES)
    args = parser.parse_args(argv)

    run = Run(args.run)
    model = run.load_model()
    held = [r for r in run.rows() if r["subset"] != "train"]
    is_test = np.array([r["subset"] == "test" for r in held])
    truth = np.array([run.labels.index(r["label"]) for r in held])
    images = load_images(held, run.image_size)
    calibration = load_images(representative_rows(run.rows(), args.calibration_samples), run.image_size)
    clone, _ = rewrite_for_export(model, gelu=args.gelu)
    reference = clone.predict(images.astype(np.float32), verbose=0)
    top = reference.argmax(1)
    chosen = ~is_test
    print(f"Run `{os.path.abspath(args.run)}`, {run.image_size} px, GELU {args.gelu} form; {len(calibration)} "
          f"calibration images; {chosen.sum()} val+calib rows, {is_test.sum()} test rows. Commit {commit()}; "
          f"{cpu_name()}.\n")
    print(f"Float (rewritten) model: val+calib accuracy {np.mean(top[chosen] == truth[chosen]):.2%}, test accuracy "
          f"{np.mean(top[is_test] == truth[is_test]):.2%}.\n")
    print("| kept float besides LayerNorm statistics | val+calib agreement | val+calib mean abs prob error | "
          "test accuracy | test agreement | XNNPACK |\n|---|---:|---:|---:|---:|---|")
    for name, layers in candidates(model).items():
        model_bytes = convert(clone, "int8", run.image_size, calibration, float_layers=layers)
        probabilities = predict(make_interpreter(model_bytes, 2), images)
        predicted = probabilities.argmax(1)
        error = np.abs(probabilities - reference).mean(axis=1)
        print(f"| {name} | {np.mean(predicted[chosen] == top[chosen]):.2%} | {error[chosen].mean():.4f} | "
              f"{np.mean(predicted[is_test] == truth[is_test]):.2%} | {np.mean(predicted[is_test] == top[is_test]):.2%}"
              f" | {describe(delegation(model_bytes))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
