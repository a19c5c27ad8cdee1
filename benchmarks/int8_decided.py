#!/usr/bin/env python
"""Where the exported int8 file and the Keras model disagree (issue 25 point 2): are int8's flips near-ties of the
float model, or decisions a sorter acts on? Per run, on the held rows (val, calib and test): int8's top-1 agreement
with Keras by the Keras model's top-2 margin, and at a confidence threshold (the runner decides a class only at or
above it, else recheck) the agreement on the rows Keras decides and on the decision itself (class or recheck).
Needs each run's export/model_int8.tflite (`export.py --run RUN`). Prints Markdown.

    python benchmarks/int8_decided.py runs/e64_s0 runs/e64_s1 runs/e64_s2
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from int8_fidelity import cached_images  # noqa: E402  (its imports set the repository's path)
from machine import commit  # noqa: E402
from mineralnet.export.representative import CALIBRATION_SAMPLES  # noqa: E402
from mineralnet.export.verify import make_interpreter, predict  # noqa: E402
from mineralnet.rundir import Run  # noqa: E402

MARGINS = (0.0, 0.02, 0.05, 0.1)
CONFIDENCES = (0.5, 0.6)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args(argv)
    print(f"Commit {commit()}.\n")
    print("| run | rows | " + " | ".join(f"agree at margin >= {m}" for m in MARGINS) + " | "
          + " | ".join(f"confidence {c}: Keras decides / int8 same class there / same decision" for c in CONFIDENCES)
          + " |\n|---|" + "---:|" * (1 + len(MARGINS) + len(CONFIDENCES)))
    for path in args.runs:
        run = Run(path)
        held = [r for r in run.rows() if r["subset"] != "train"]
        images, _ = cached_images(run, held, CALIBRATION_SAMPLES, run.image_size)
        reference = run.load_model(None).predict(images.astype(np.float32), verbose=0)
        with open(os.path.join(path, "export", "model_int8.tflite"), "rb") as file:
            int8 = predict(make_interpreter(file.read(), 2), images)
        top = reference.argmax(1)
        ordered = np.sort(reference, 1)
        margin = ordered[:, -1] - ordered[:, -2]
        agree = int8.argmax(1) == top
        cells = [f"{agree[margin >= m].mean():.2%} ({(~agree[margin >= m]).sum()} of {(margin >= m).sum()} differ)"
                 for m in MARGINS]
        for c in CONFIDENCES:
            decided = reference.max(1) >= c
            same = np.where(decided, top, -1) == np.where(int8.max(1) >= c, int8.argmax(1), -1)
            cells.append(f"{decided.mean():.1%} / {agree[decided].mean():.2%} ({(~agree[decided]).sum()} differ) / "
                         f"{same.mean():.2%} ({(~same).sum()} differ)")
        print(f"| {path} | {len(held)} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
