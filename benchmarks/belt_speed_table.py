#!/usr/bin/env python
"""Particles per second against model and crop size on the simulated belt (issue 29's table), so a user can choose.

Each model runs the same feed through benchmarks/belt_sim.py (the real runner end to end: segmentation, tracking,
classification, decision, valves over the encoder), in rounds that alternate the models so the machine's load falls
on all of them alike. Particles/s = true particles / time in Sorter.process(); the accuracy columns are the model
alone on the same ground-truth crops (its most central whole view), which means something only for a trained model.

    PYTHONPATH=. python benchmarks/belt_speed_table.py --split runs/sim_cnn/split.csv \\
        --models simple_cnn:64=runs/sim_cnn/export/model_int8.tflite,eca_resnet18:96=runs/speed/.../model_int8.tflite
        [--count 30] [--feed-frames 30] [--rounds 2] [--json out.json]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import belt_sim  # noqa: E402
from benchmarks.machine import commit, cpu_name  # noqa: E402


def load_average():
    return round(os.getloadavg()[0], 1)


def parse_models(text):
    """'name:size=path,...' -> [(label, path)]."""
    models = []
    for item in filter(None, text.split(",")):
        label, _, path = item.partition("=")
        if not path or not os.path.exists(path):
            raise SystemExit(f"belt_speed_table: --models item {item!r}: give NAME:SIZE=PATH of an existing .tflite")
        models.append((label, path))
    return models


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="NAME:SIZE=model.tflite,... (free-batch exports)")
    parser.add_argument("--split", help="split.csv of the runs: specimens none of them trained on")
    parser.add_argument("--count", type=int, default=30, help="particles per frame")
    parser.add_argument("--feed-frames", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    models = parse_models(args.models)
    specimens = (belt_sim.unseen_specimens(args.split.split(","), 100) if args.split
                 else belt_sim.scenes.load_specimens(limit=100))
    measured = {"commit": commit(), "cpu": cpu_name(), "load_before": load_average(), "rows": []}
    for round_number in range(args.rounds):
        order = models if round_number % 2 == 0 else models[::-1]
        for label, path in order:
            report = belt_sim.simulate(path, specimens, args.count, args.feed_frames, threads=args.threads)
            measured["rows"].append({"model": label, "round": round_number, "speed": report["speed"],
                                     "alone_accuracy": report["alone_accuracy"],
                                     "alone": report["bins"]["classifier_alone"]})
            print(f"{label} round {round_number}: {report['speed']['particles_per_s']} particles/s", file=sys.stderr)
    measured["load_after"] = load_average()
    print(f"commit {measured['commit']}, {measured['cpu']}, load {measured['load_before']} -> "
          f"{measured['load_after']}, {args.count} particles/frame, {args.feed_frames} feed frames, "
          f"{args.threads} threads\n")
    print("| model:crop px | particles/s per round | frame ms p50 / p95 (last round) | 7-class accuracy alone | "
          "product grade / recovery alone |")
    print("|---|---|---|---|---|")
    for label, _ in models:
        rows = [r for r in measured["rows"] if r["model"] == label]
        speed = rows[-1]["speed"]
        print(f"| {label} | {' / '.join(str(r['speed']['particles_per_s']) for r in rows)} | "
              f"{speed['frame_ms_p50']} / {speed['frame_ms_p95']} | {rows[-1]['alone_accuracy']} | "
              f"{rows[-1]['alone']['grade']} / {rows[-1]['alone']['recovery']} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(measured, handle, indent=1)


if __name__ == "__main__":
    main()
