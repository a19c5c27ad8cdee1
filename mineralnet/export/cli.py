"""Command line of the exporter (`python export.py`, console script entry point `mineralnet.export.cli:main`).

The parser takes its defaults from light modules (options.py, representative.py): TensorFlow starts only once the
arguments are parsed, so --help and argument errors answer at once.
"""

import argparse
import logging
import os
import sys

from mineralnet.errors import cli
from mineralnet.export.options import (
    ALL_FORMATS, BATCHES, EXIT_SOME_FORMATS_FAILED, FORMATS, MAX_ACCURACY_DROP, QatOptions,
)
from mineralnet.export.representative import CALIBRATION_SAMPLES
from mineralnet.rundir import EXPORT_DIR
from mineralnet.training.filesystem import check_writable


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
                        help=f"leave out a quantized format whose test accuracy is more than this many percentage "
                             f"points below float32's on the same images (default {MAX_ACCURACY_DROP:g}) when the "
                             f"loss is also credible by McNemar's exact one-sided test (p < 0.05; one or two flipped "
                             f"images never are): the other formats are written, exit status "
                             f"{EXIT_SOME_FORMATS_FAILED}. See docs/export.md")
    parser.add_argument("--all-or-nothing", action="store_true",
                        help="write nothing (exit 2) if any format fails, instead of writing the formats that pass")
    parser.add_argument("--batch", choices=BATCHES, default="1",
                        help="the input's batch dimension: 1 (default) or dynamic, for the edge runner's [particles] "
                        "mode, which then classifies all crops of a frame in one call (see edge/README.md)")
    parser.add_argument("--allow-weak", action="store_true",
                        help="export a model that does not beat always answering the most frequent training class on "
                        "the test images (refused by default, exit 2); its warnings go into report.md either way")
    parser.add_argument("--out", default=None, help="output directory (default: RUN/export)")
    return parser


@cli
def main(argv=None):
    """Run the export; returns the exit status: 0 every format written; 3 (EXIT_SOME_FORMATS_FAILED) the formats
    that passed written, one or more failed ones named and left out; 2 an ExportError, nothing written (printed as
    one line by @cli: bad input, float32 unfaithful, or any failure with --all-or-nothing); 130 interrupted."""
    args = build_parser().parse_args(argv)
    check_writable(args.out or os.path.join(args.run, EXPORT_DIR))  # a read-only --out: one line, before any work
    from mineralnet.export.pipeline import export_run  # TensorFlow starts here (quietly: convert.py imports it first)
    from mineralnet.export.gate import describe
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
                            args.batch, args.all_or_nothing, args.allow_weak)
    except KeyboardInterrupt:
        print("error: interrupted; the output folder holds the previous export (or the new one if it was "
              "already published), never a mix.", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
    print(markdown_table(report))
    for warning in report["warnings"]:  # the evaluation's, on the same test rows: also at the top of report.md
        print(f"warning: {warning}", file=sys.stderr)
    for fmt, gate in report["gate"]["quantized"].items():
        print(f"gate: {describe(fmt, gate)}")
    for fmt, reason in report["failed"].items():
        print(f"not written: {fmt}: {reason}")
    print(f"\nwrote {len(report['formats'])} model(s) ({', '.join(report['formats'])}), their sidecars, labels.txt "
          f"and report.md/.json to {report['out_dir']}")
    if report["failed"]:
        print(f"warning: not written: {', '.join(report['failed'])} (failed; see above and report.md); exit status "
              f"{EXIT_SOME_FORMATS_FAILED}", file=sys.stderr)
        return EXIT_SOME_FORMATS_FAILED
