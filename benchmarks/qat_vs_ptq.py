#!/usr/bin/env python
"""Post-training int8 vs quantization-aware int8_qat vs float32 on a trained run: accuracy on the run's test
subset, agreement with the Keras model, size, XNNPACK partitions and latency. Prints a Markdown table.

The three models come from `mineralnet.export` (the same conversion, gate and verification as export.py); the
latency is then measured again with the three files timed in interleaved rounds, so load from other processes
on a shared machine lands on all of them rather than on whichever was being timed.

    python benchmarks/qat_vs_ptq.py --run RUN [--qat-epochs 3] [--qat-lr 1e-5] [--calibration-samples 1000]
                                    [--runs 50] [--rounds 5] [--out DIR] [--max-accuracy-drop 100]
                                    [--also LABEL=FILE ...]   (more .tflite files timed in the same rounds)
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mineralnet.export import export_run  # noqa: E402
from mineralnet.export.representative import CALIBRATION_SAMPLES, load_images  # noqa: E402
from mineralnet.export.qat.process import QatOptions  # noqa: E402
from mineralnet.export.preflight import load_run  # noqa: E402
from mineralnet.export.delegation import delegation, describe  # noqa: E402
from mineralnet.export.verify import invocation_times, make_interpreter, percentiles  # noqa: E402
from mineralnet.rundir import tflite_name  # noqa: E402
from machine import commit, cpu_name  # noqa: E402

FORMATS = ("float32", "int8", "int8_qat")
THREADS = (1, 2)


def interleaved_latency(files, image, runs, rounds):
    """{(label, threads): {"p50", "p90"}} of the .tflite `files` ({label: path}) over `runs` timed invocations
    each, in `rounds` interleaved rounds."""
    interpreters = {}
    for label, path in files.items():
        with open(path, "rb") as handle:
            model_bytes = handle.read()
        for threads in THREADS:
            interpreters[label, threads] = make_interpreter(model_bytes, threads)
    times = {key: [] for key in interpreters}
    per_round = -(-runs // rounds)
    for _ in range(rounds):
        for key, interpreter in interpreters.items():
            times[key] += invocation_times(interpreter, image, per_round)
    return {key: percentiles(values) for key, values in times.items()}


def table(report, latency, also):
    float32_accuracy = report["formats"]["float32"]["accuracy"]
    lines = ["| format | accuracy | Δ vs float32 (points) | macro P | macro R | agree w/ Keras | max abs Δp | "
             "size MB | XNNPACK | 1 thread p50 / p90 ms | 2 threads p50 / p90 ms |", "|" + "---|" * 11]

    def timing(label):
        return [f"{latency[label, t]['p50']:.1f} / {latency[label, t]['p90']:.1f}" for t in THREADS]

    for fmt in FORMATS:
        result = report["formats"][fmt]
        lines.append(
            f"| {fmt} | {result['accuracy']:.2%} | {100 * (result['accuracy'] - float32_accuracy):+.1f} | "
            f"{result['macro_precision']:.2%} | {result['macro_recall']:.2%} | {result['agreement_with_keras']:.2%} | "
            f"{result['max_abs_prob_diff']:.2e} | {result['size_bytes'] / 1e6:.1f} | {describe(result['xnnpack'])} | "
            f"{' | '.join(timing(fmt))} |")
    for label, path in also.items():
        with open(path, "rb") as handle:
            partitions = describe(delegation(handle.read()))
        lines.append(f"| {label} | – | – | – | – | – | – | {os.path.getsize(path) / 1e6:.1f} | {partitions} | "
                     f"{' | '.join(timing(label))} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished train.py run directory")
    parser.add_argument("--qat-epochs", type=int, default=QatOptions.epochs)
    parser.add_argument("--qat-lr", type=float, default=QatOptions.lr)
    parser.add_argument("--calibration-samples", type=int, default=CALIBRATION_SAMPLES)
    parser.add_argument("--runs", type=int, default=50, help="timed invocations per format and thread count")
    parser.add_argument("--rounds", type=int, default=5, help="the runs are spread over this many rounds")
    parser.add_argument("--out", default=None, help="keep the exported models here (default: a temporary folder)")
    parser.add_argument("--max-accuracy-drop", type=float, default=100.0,
                        help="the export's gate, lifted by default: a benchmark reports the loss instead")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=FILE",
                        help="another .tflite file to time in the same rounds (e.g. an earlier conversion)")
    args = parser.parse_args(argv)
    also = dict(item.split("=", 1) for item in args.also)

    with tempfile.TemporaryDirectory() as scratch:
        out_dir = args.out or os.path.join(scratch, "export")
        load_before = os.getloadavg()[0]
        run = load_run(args.run)
        report = export_run(run, ",".join(FORMATS), args.calibration_samples, out_dir,
                            QatOptions(args.qat_epochs, args.qat_lr), args.max_accuracy_drop)
        image = load_images(run.rows("test")[:1], run.image_size)[0]  # the first test image, as the device gets it
        files = {fmt: os.path.join(out_dir, tflite_name(fmt)) for fmt in FORMATS}
        latency = interleaved_latency({**files, **also}, image, args.runs, args.rounds)
        load_after = os.getloadavg()[0]

    config = run.train_config
    qat = report["qat"]
    print(f"Run `{os.path.abspath(args.run)}`: {config.model}, {run.image_size} px, {len(run.labels)} classes, "
          f"{config.epochs} training epochs; Keras accuracy {report['keras']['accuracy']:.2%} on "
          f"{report['test_images']} test images (one image = {100 / report['test_images']:.1f} points).")
    print(f"int8 calibrated on {report['calibration_images']} training images; int8_qat: {qat['epochs']} QAT "
          f"epoch(s) at lr {qat['lr']:g} on {qat['train_images']} training images ({qat['fine_tune_seconds']:.0f} s), "
          f"tf_keras twin max abs Δp {report['tf_keras_twin']['max_abs_prob_diff']:.1e}.")
    print(f"Commit {commit()}; {cpu_name()}, {os.cpu_count()} cores; load average {load_before:.2f} before, "
          f"{load_after:.2f} after. Latency: {args.runs} timed invocations per format and thread count in "
          f"{args.rounds} interleaved rounds, batch 1, LiteRT interpreter (XNNPACK).\n")
    print(table(report, latency, also))


if __name__ == "__main__":
    main()
