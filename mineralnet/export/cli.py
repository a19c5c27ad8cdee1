"""Command line of the exporter (`python export.py`, console script entry point `mineralnet.export.cli:main`).

The parser takes its defaults from light modules (options.py, representative.py): TensorFlow starts only once the
arguments are parsed, so --help and argument errors answer at once.
"""

import argparse
import logging
import sys

from mineralnet.errors import cli
from mineralnet.export.options import ALL_FORMATS, BATCHES, FORMATS, MAX_ACCURACY_DROP, QatOptions
from mineralnet.export.representative import CALIBRATION_SAMPLES


def build_parser():
    parser = argparse.ArgumentParser(
        prog="export.py",
        description="Export a trained run to TFLite models, each verified with the LiteRT interpreter on the run's "
        "test images before anything is written.",
    )
    parser.add_argument("--run", required=True, help="run directory (holds model.keras, labels.json, split.csv)")
    parser.add_argument(
        "--formats", default=",".join(FORMATS),
        help=f"comma-separated subset of {','.join(ALL_FORMATS)} (default: {','.join(FORMATS)}); float32 is always "
        "exported, it is the reference the verification gate checks; int8_qat (quantization-aware training) needs "
        "the qat extra and is slow: see docs/qat.md",
    )
    parser.add_argument("--calibration-samples", type=int, default=CALIBRATION_SAMPLES,
                        help=f"training images used to calibrate int8, class-balanced (default: all, up to "
                             f"{CALIBRATION_SAMPLES})")
    parser.add_argument("--qat-epochs", type=int, default=QatOptions.epochs,
                        help=f"fine-tuning epochs of int8_qat and of the pruned model (default: {QatOptions.epochs})")
    parser.add_argument("--qat-lr", type=float, default=QatOptions.lr,
                        help=f"their constant Adam learning rate (default: {QatOptions.lr:g})")
    parser.add_argument("--prune-sparsity", type=float, default=None,
                        help="also export float32_pruned: this fraction of the weights (e.g. 0.5) pruned to zero "
                        "with tfmot and fine-tuned; smaller gzip download, no speed-up (see report.md)")
    parser.add_argument("--max-accuracy-drop", type=float, default=MAX_ACCURACY_DROP,
                        help=f"fail the export (exit 2, nothing written) if a quantized format's test accuracy is "
                             f"more than this many percentage points below float32's (default "
                             f"{MAX_ACCURACY_DROP:g}); raise it only knowingly, e.g. for a tiny test subset")
    parser.add_argument("--batch", choices=BATCHES, default="1",
                        help="the input's batch dimension: 1 (default) or dynamic, for the edge runner's [particles] "
                        "mode, which then classifies all crops of a frame in one call (see edge/README.md)")
    parser.add_argument("--out", default=None, help="output directory (default: RUN/export)")
    return parser


@cli
def main(argv=None):
    """Run the export; returns the exit status (0 ok, 2 an ExportError, printed as one line by @cli; 130
    interrupted)."""
    args = build_parser().parse_args(argv)
    from mineralnet.export.pipeline import export_run  # TensorFlow starts here (quietly: convert.py imports it first)
    from mineralnet.export.report import markdown_table

    log = logging.getLogger("mineralnet.export")
    handler = logging.StreamHandler(sys.stderr)  # progress: conversion and verification take minutes
    handler.setFormatter(logging.Formatter("export: %(message)s"))
    log.handlers = [handler]  # one handler however often main() runs in a process
    log.propagate = False  # TensorFlow's converter installs a root handler that would print every line twice
    log.setLevel(logging.INFO)
    try:
        qat = QatOptions(args.qat_epochs, args.qat_lr, args.prune_sparsity)
        report = export_run(args.run, args.formats, args.calibration_samples, args.out, qat, args.max_accuracy_drop,
                            args.batch)
    except KeyboardInterrupt:
        print("error: interrupted; no partial model or sidecar was left behind.", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
    print(markdown_table(report))
    print(f"\nwrote {len(report['formats'])} model(s), their sidecars, labels.txt and report.md/.json to "
          f"{report['out_dir']}")
