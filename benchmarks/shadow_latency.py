"""Does a shadow model delay live decisions? The edge runner sorts the same paced frames without and with
`--shadow` on every frame, rounds interleaved (off, on, off, on, ...: the machine's load drifts alike for both),
and prints the live decision latency p50/p95/p99 per mode (capture to decision, and the live model's own
preprocess + inference), the CPU time per item (the runner and its children: the shadow's process, reaped when
the shadow closes), and the shadow's compared / dropped counts.

    PYTHONPATH=. python benchmarks/shadow_latency.py --folder /work/shared/data/minet_512 \\
        --model runs/sim_cnn/export/model_int8.tflite --shadow runs/sim_cnn_belt/export/model_float32.tflite \\
        --frames 400 --fps 20 --rounds 3

Frames are paced like a camera (`--fps`, below what the runner can do) so the latency is the runner's, not frames
queueing. The live model runs with `--threads` (default 1), the shadow with 1 thread, as the runner's defaults.
The runner in this process (edge/runner.py build_runner, a jsonl actuator to /dev/null), the candidate in the
shadow's child process (edge/shadow_worker.py); no TensorFlow.
"""

import argparse
import os
import resource
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = """
[source]
fps = {fps}
loop = true
[bins]
default = "product"
recheck = "recheck"
[belt]
speed_mm_s = 1
camera_to_ejector_mm = 1000000   # commands always on time: the latency measured is the runner's
[actuator]
type = "jsonl"
path = "{devnull}"
[records]
summary = "{summary}"
stats_interval_s = 3600
"""


class Stages:
    """A publisher keeping each item's latencies (seconds): total (capture to decision) and model (preprocess +
    inference of the live model)."""

    def __init__(self):
        self.total, self.model = [], []

    def publish(self, item):
        self.total.append(item.latency["total"])
        self.model.append(item.latency.get("preprocess", 0.0) + item.latency.get("inference", 0.0))


def _cpu_s():
    """CPU seconds of this process and its ended children (the shadow's process, joined when run() ends)."""
    return sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def one_round(args, shadow_on, out):
    from edge.config import load_config
    from edge.model import Model
    from edge.records import EventSink, LineWriter
    from edge.runner import build_runner
    from edge.shadow import Shadow
    from edge.sources import Capture, FolderSource
    from edge.timing import Clock

    config_path = os.path.join(out, "config.toml")
    with open(config_path, "w") as handle:
        handle.write(CONFIG.format(fps=args.fps, devnull=os.devnull, summary=os.path.join(out, "summary.json")))
    config, clock = load_config(config_path), Clock()
    model = Model(args.model, threads=args.threads)
    events = EventSink(LineWriter(os.devnull), clock)
    runner = build_runner(config, model, clock, events)
    stages = Stages()
    runner.publishers.append(stages)
    if shadow_on:
        runner.attach_shadow(Shadow(Model(args.shadow, threads=1), config, events, every=args.every,
                                    report_path=None))
    capture = Capture(FolderSource(args.folder, clock, loop=True), clock, events, config.source.queue_size,
                      config.source.fps)
    cpu = _cpu_s()
    summary = runner.run(capture, max_items=args.frames + args.warmup)
    cpu_s = _cpu_s() - cpu
    shadow = summary.get("shadow") or {}
    return {"total": stages.total[args.warmup:], "model": stages.model[args.warmup:], "items": summary["items"],
            "cpu_ms_per_item": cpu_s / summary["items"] * 1000.0, "compared": shadow.get("compared"),
            "dropped": shadow.get("dropped"), "shadow_p99_ms": (shadow.get("latency_ms") or {}).get("p99"),
            "frames_dropped": summary["frames_dropped"]}


def main(argv=None):
    from benchmarks.machine import commit, cpu_name
    from edge.records import percentile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, help="pictures, read recursively and looped")
    parser.add_argument("--model", required=True, help="the live .tflite (sidecar beside it)")
    parser.add_argument("--shadow", required=True, help="the candidate .tflite (same labels)")
    parser.add_argument("--every", type=int, default=1, help="offer the shadow every Nth frame (--shadow-every)")
    parser.add_argument("--frames", type=int, default=400, help="timed items per round (default 400)")
    parser.add_argument("--warmup", type=int, default=20, help="items per round left out of the figures")
    parser.add_argument("--fps", type=float, default=20.0, help="camera pace (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, interleaved (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="live interpreter threads (default 1)")
    args = parser.parse_args(argv)

    results = {False: [], True: []}
    with tempfile.TemporaryDirectory() as out:
        for number in range(args.rounds * 2):
            shadow_on = bool(number % 2)
            result = one_round(args, shadow_on, out)
            results[shadow_on].append(result)
            print(f"round {number + 1}: shadow {'on ' if shadow_on else 'off'} total p99 "
                  f"{percentile(result['total'], 99):.2f} ms, model p99 {percentile(result['model'], 99):.2f} ms, "
                  f"cpu {result['cpu_ms_per_item']:.2f} ms/item, compared {result['compared']}, dropped "
                  f"{result['dropped']}", file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"commit {commit()}, {cpu_name()}, {os.cpu_count()} CPUs, load average at the end "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; live {args.model}, shadow {args.shadow}; {args.rounds} "
          f"rounds per mode of {args.frames} items at {args.fps:g} fps (+{args.warmup} warm-up)")
    print("\n| shadow | live capture-to-decision p50 / p95 / p99 (ms) | live model p50 / p99 (ms) | CPU ms per item "
          "| compared / dropped by the shadow | frames dropped by the source |")
    print("|---|---|---|---|---|---|")
    for shadow_on in (False, True):
        rounds = results[shadow_on]
        total = [v for r in rounds for v in r["total"]]
        model = [v for r in rounds for v in r["model"]]
        cpu = sorted(r["cpu_ms_per_item"] for r in rounds)[len(rounds) // 2]
        shadow = (f"{sum(r['compared'] for r in rounds)} / {sum(r['dropped'] for r in rounds)}" if shadow_on
                  else "-")
        mode = ("every frame" if args.every == 1 else f"every {args.every} frames") if shadow_on else "off"
        print(f"| {mode} | {percentile(total, 50):.2f} / {percentile(total, 95):.2f}"
              f" / {percentile(total, 99):.2f} | {percentile(model, 50):.2f} / {percentile(model, 99):.2f} | "
              f"{cpu:.2f} (median round) | {shadow} | {sum(r['frames_dropped'] for r in rounds)} |")
    per_round = " ".join(f"{percentile(r['total'], 99):.1f}" for pair in zip(results[False], results[True])
                         for r in pair)
    print(f"\nper-round live p99 (ms), off/on alternating: {per_round}")


if __name__ == "__main__":
    main()
