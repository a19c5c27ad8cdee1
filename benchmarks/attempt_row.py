#!/usr/bin/env python
"""One Markdown row of `benchmarks/results/minet/attempts.md` per finished train.py run: image size, epochs and
every recipe option that differs from train.py's defaults, best validation accuracy, test accuracy (single view,
and with TTA when the run asked for it), and training time. Reads only the run directory, so it is exact about
what ran.

    python benchmarks/attempt_row.py runs/moonshot/a02 runs/moonshot/a03 ...
"""

import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mineralnet.training.config import DEFAULTS  # noqa: E402

RECIPE_KEYS = ("image_size", "epochs", "batch_size", "lr", "warmup_epochs", "label_smoothing", "dropout", "mixup",
               "cutmix", "ema", "progressive_sizes", "freeze_epochs", "weights", "class_weights", "augment")
HEADER = ("| attempt | model | recipe | best val acc (epoch) | test acc | test acc, TTA x8 | macro P / R | "
          "training time |\n|---|---|---|---:|---:|---:|---|---:|")


def row(run):
    def load(name):
        with open(os.path.join(run, name)) as handle:
            return json.load(handle)

    config, report = load("config.json"), load(os.path.join("eval", "report.json"))
    with open(os.path.join(run, "history.csv")) as handle:
        history = list(csv.DictReader(handle))
    best = max(history, key=lambda r: float(r["val_accuracy"]))
    shown = [k for k in RECIPE_KEYS if k in ("image_size", "epochs") or config.get(k, DEFAULTS[k]) != DEFAULTS[k]]
    recipe = ", ".join(f"{k}={json.dumps(config[k]) if isinstance(config[k], (dict, list)) else config[k]}"
                       for k in shown)
    tta = report.get("tta", {}).get("accuracy")
    minutes = sum(float(r["seconds"]) for r in history) / 60
    return (f"| {os.path.basename(os.path.normpath(run))} | {config['model']} | {recipe} | "
            f"{float(best['val_accuracy']):.2%} ({best['epoch']}) | {report['accuracy']:.2%} | "
            f"{'—' if tta is None else f'{tta:.2%}'} | "
            f"{report['precision_macro']:.2%} / {report['recall_macro']:.2%} | {minutes:.0f} min |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished train.py run directories")
    args = parser.parse_args(argv)
    print(HEADER)
    for run in args.runs:
        print(row(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
