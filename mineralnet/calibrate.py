"""Calibrate an exported model's reject rule with split conformal prediction and store it in the sidecar.

    python -m mineralnet.calibrate --run RUN --model RUN/export/model_int8.tflite --alpha 0.05

Runs the .tflite model itself (so quantisation error is calibrated too) on the `val` rows of RUN/split.csv.
Score = 1 - p_true; qhat = the ceil((n + 1)(1 - alpha))-th smallest score (1.0 when that rank exceeds n). The
edge runner's prediction set {classes with p >= 1 - qhat} then holds the true class with probability >= 1 - alpha
on data like the validation set; a set that is empty or holds several classes sends the item to recheck.
Only the sidecar's "reject" entry changes, written atomically.
"""

import argparse
import hashlib
import math
import os
import sys

import numpy as np

from mineralnet import rundir
from mineralnet.data import DataError, load_image
from mineralnet.export.verify import make_interpreter, predict
from mineralnet.utils import read_json, write_json

METHOD = "split_conformal"


class CalibrationError(ValueError):
    """A problem with the run, the model or the sidecar; one line naming the file and the fix."""


def conformal_qhat(scores, alpha):
    """The split-conformal threshold: the ceil((n+1)(1-alpha))-th smallest score, or 1.0 if that rank exceeds n."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha}.")
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(scores)
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)  # tolerance: (n+1)(1-alpha) is often a whole number
    return 1.0 if rank > n else float(scores[rank - 1])


def tflite_probabilities(model_path, files):
    """Class probabilities of the .tflite model for image files, preprocessed by the training contract."""
    with open(model_path, "rb") as handle:
        interpreter = make_interpreter(handle.read(), threads=None)
    size = int(interpreter.get_input_details()[0]["shape"][1])
    return predict(interpreter, np.stack([load_image(path, size) for path in files]))


def calibrate(run_dir, model_path, alpha, sidecar_path=None):
    """Compute the reject rule on the run's validation rows and write it into the sidecar; returns it."""
    sidecar_path = sidecar_path or os.path.splitext(model_path)[0] + ".json"
    for path, fix in (
        (model_path, "pass --model with an exported .tflite file"),
        (sidecar_path, "export the model with its sidecar first, or pass --sidecar"),
    ):
        if not os.path.isfile(path):
            raise CalibrationError(f"'{path}' does not exist: {fix}.")
    try:
        run = rundir.Run(run_dir, required=(rundir.CONFIG, rundir.LABELS, rundir.SPLIT))
    except rundir.RunError as error:
        raise CalibrationError(str(error)) from None
    sidecar = read_json(sidecar_path)
    with open(model_path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    if sidecar.get("sha256") != digest:
        raise CalibrationError(
            f"sidecar '{sidecar_path}' was written for another model than '{model_path}' (sha256 differs): pass the "
            "--sidecar exported with this model."
        )
    labels = run.labels
    if sidecar.get("labels") != labels:
        raise CalibrationError(
            f"sidecar '{sidecar_path}' lists labels {sidecar.get('labels')} but run '{run_dir}' has {labels}: "
            "calibrate a model exported from this run."
        )
    rows = run.rows("val")
    if not rows:
        raise CalibrationError(f"split '{run.file(rundir.SPLIT)}' has no val rows: re-split with a val share.")
    probabilities = tflite_probabilities(model_path, [r["file"] for r in rows])
    truth = np.array([labels.index(r["label"]) for r in rows])
    scores = 1.0 - probabilities[np.arange(len(rows)), truth]
    reject = {
        "method": METHOD, "alpha": alpha, "qhat": conformal_qhat(scores, alpha), "n": len(rows), "score": "1 - p_true",
    }
    write_json(sidecar_path, {**sidecar, "reject": reject})
    return reject


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="training run directory (config.json, labels.json, split.csv)")
    parser.add_argument("--model", required=True, help="exported .tflite model to calibrate")
    parser.add_argument("--sidecar", help="its sidecar JSON (default: the model path with .json)")
    parser.add_argument("--alpha", type=float, default=0.05, help="allowed miss rate of the prediction set")
    args = parser.parse_args(argv)
    if not 0.0 < args.alpha < 1.0:
        parser.error(f"--alpha must be between 0 and 1 (exclusive), got {args.alpha}.")
    try:
        reject = calibrate(args.run, args.model, args.alpha, args.sidecar)
    except (CalibrationError, DataError) as error:
        print(f"calibrate: {error}", file=sys.stderr)
        return 2
    print(
        f"calibrate: qhat={reject['qhat']:.4f} from {reject['n']} val images (alpha={args.alpha}); an item is sorted "
        f"only when exactly one class has p >= {1 - reject['qhat']:.4f}."
    )
    if reject["qhat"] >= 1.0:
        print(
            f"calibrate: warning: {reject['n']} val images are too few for alpha={args.alpha} (needs at least "
            f"{math.ceil(1 / args.alpha) - 1}); every item will go to recheck. Add val images or raise --alpha.",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
