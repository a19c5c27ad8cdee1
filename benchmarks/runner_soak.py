"""Soak the edge runner: N frames (default 10,000) from a folder through each exported model, one fresh process
per model so that resident memory is measured per model, and a Markdown table for benchmarks/RESULTS.md.

    python benchmarks/runner_soak.py --folder demo_data --frames 10000 --threads 4 \\
        --models runs/RUN/export/model_int8.tflite runs/RUN/export/model_float32.tflite

Reported per model: items/s, end-to-end latency p50/p95 (capture to decision), invoke() p50, the runner's
overhead over invoke() (target <= 5 % for eca_convnext_tiny at 224 px) and RSS after warm-up and at the end
(target: flat; a leak shows as growth). The models come from `python -m mineralnet.export` with their sidecars.
Uses only the edge runner's dependencies (no TensorFlow).
"""

import argparse
import multiprocessing
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SOAK_CONFIG = """
[bins]
default = "product"
recheck = "recheck"
[belt]
speed_mm_s = 1
camera_to_ejector_mm = 1000000   # commands are always on time: the soak measures the runner, not the belt
[actuator]
path = "{devnull}"
[records]
summary = "{summary}"
stats_interval_s = 3600
"""


def rss_mb():
    """Resident memory of this process in MiB (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def soak(model_path, folder, frames, threads, config_path):
    """Run the real runner loop over `frames` items of a looping folder; returns the figures as a dict."""
    import numpy as np

    from edge.actuators import SupervisedActuator, make_actuator
    from edge.config import load_config, parse_config
    from edge.model import Model
    from edge.preprocess import quantize
    from edge.records import EventSink, LineWriter
    from edge.runner import Runner, benchmark_figures
    from edge.sources import Capture, FolderSource
    from edge.timing import Clock

    clock = Clock()
    with tempfile.TemporaryDirectory() as scratch:
        summary_path = os.path.join(scratch, "summary.json")
        if config_path:
            config = load_config(config_path)
        else:
            config = parse_config(SOAK_CONFIG.format(devnull=os.devnull, summary=summary_path), "<soak config>")
        model = Model(model_path, threads=threads)
        blank = np.zeros((model.input_size, model.input_size, 3), np.uint8)
        model.classify(quantize(blank, model.input_dtype, model.input_scale, model.input_zero_point))
        events = EventSink(LineWriter(os.devnull), clock)
        actuator = SupervisedActuator(
            lambda: make_actuator(config.actuator, clock, config=config, labels=model.labels), clock, events
        )
        runner = Runner(config, model, actuator, events, clock)
        capture = Capture(FolderSource(folder, clock, loop=True), clock, events, config.source.queue_size)
        rss_start = rss_mb()
        summary = runner.run(capture, max_items=frames)
        figures = benchmark_figures(runner, summary)
    return {"model": os.path.basename(model_path), **figures, "rss_start_mb": rss_start, "rss_end_mb": rss_mb()}


def _worker(arguments, results):
    results.put(soak(*arguments))


def _cell(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="exported .tflite files (sidecars beside them)")
    parser.add_argument("--folder", required=True, help="folder of images, read in a loop")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--threads", type=int, help="interpreter threads")
    parser.add_argument("--config", help="runner TOML config (default: a belt on which nothing is ever late)")
    args = parser.parse_args(argv)

    context = multiprocessing.get_context("spawn")  # a fresh interpreter per model: RSS is that model's alone
    rows = []
    for model_path in args.models:
        results = context.Queue()
        worker = context.Process(
            target=_worker, args=((model_path, args.folder, args.frames, args.threads, args.config), results)
        )
        worker.start()
        rows.append(results.get())
        worker.join()
        print(f"done: {model_path}", file=sys.stderr)

    print(f"{args.frames} frames from {args.folder}, threads={args.threads or 'default'}\n")
    print(
        "| model | items/s | latency p50 ms | latency p95 ms | invoke p50 ms | overhead % | RSS start MiB "
        "| RSS end MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {_cell(row['items_per_s'], 1)} | {_cell(row['latency_p50_ms'], 2)} | "
            f"{_cell(row['latency_p95_ms'], 2)} | {_cell(row['invoke_p50_ms'], 2)} | {_cell(row['overhead_pct'], 1)} | "
            f"{_cell(row['rss_start_mb'], 1)} | {_cell(row['rss_end_mb'], 1)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
