"""Soak test of many-particle sorting (issue 15): 1280x720 belt frames with 5, 20 and 50 MINET-7 particles.

    PYTHONPATH=. python benchmarks/belt_soak.py [--frames 60] [--model model_int8.tflite --threads 2] [--json out.json]

Frames are composed as in tests/edge/test_edge_particles.py (real specimens cut out of their white photos, pasted
on a textured belt with sensor noise). Reports edge/particles.py's segmentation time per frame (p50/p95, target
<= 10 ms), particles per second through segmentation, and detection recall/precision on the composed frames.
With --model, each frame's crops are also classified (edge/classify.py CropClassifier: one interpreter call per frame
with a `--batch dynamic` export, else crop by crop) and the classifier's time, its interpreter calls per frame and
segmentation's share of the frame are reported.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]  # the frames come from the test module, which imports helpers

from edge.records import percentile  # noqa: E402
from tests.edge.test_edge_particles import (  # noqa: E402
    belt_frame, compose_scene, load_specimens, make_belt, match, segmenter,
)


def soak(specimens, belt, count, frames, seed, model=None):
    rng = np.random.default_rng(seed)
    seg, _ = segmenter(frames=[belt_frame(belt, rng) for _ in range(5)])
    scenes = [compose_scene(specimens, belt, rng, count=count) for _ in range(frames)]
    seg.segment(scenes[0][0], learn=False)  # first call: OpenCV's lazy set-up out of the figures
    if model is not None:  # and the interpreter's first invoke()
        model.classify([p.crop for p in seg.segment(scenes[0][0], learn=False).particles])
    seg_s, cls_s, truths, hits, detections, false = [], [], 0, 0, 0, 0
    invocations = model.model.invocations if model is not None else 0
    for frame, truth, info in scenes:
        start = time.perf_counter()
        result = seg.segment(frame)
        seg_s.append(time.perf_counter() - start)
        if model is not None:
            start = time.perf_counter()
            model.classify([p.crop for p in result.particles])
            cls_s.append(time.perf_counter() - start)
        found, wrong = match(result.particles, truth, info)
        truths, hits, detections, false = truths + len(info), hits + len(found), detections + len(result.particles), \
            false + wrong
    total_s = sum(seg_s) + sum(cls_s)  # seconds (percentile() reports ms)
    row = {
        "particles_per_frame": count, "frames": frames, "placed": truths / frames,
        "segment_ms_p50": round(percentile(seg_s, 50), 2), "segment_ms_p95": round(percentile(seg_s, 95), 2),
        "particles_per_s": round(detections / total_s, 1),
        "recall": round(hits / truths, 4), "precision": round((detections - false) / max(detections, 1), 4),
    }
    if cls_s:
        row.update({
            "classify_ms_p50": round(percentile(cls_s, 50), 2), "classify_ms_p95": round(percentile(cls_s, 95), 2),
            "frame_ms_p50": round(percentile([a + b for a, b in zip(seg_s, cls_s)], 50), 2),
            "frame_ms_p95": round(percentile([a + b for a, b in zip(seg_s, cls_s)], 95), 2),
            "segment_share": round(sum(seg_s) / (sum(seg_s) + sum(cls_s)), 3),
            "invokes_per_frame": round((model.model.invocations - invocations) / frames, 2),
        })
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--counts", default="5,20,50")
    parser.add_argument("--model", help="a .tflite export (with its sidecar) to classify the crops too")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    model = None
    if args.model:
        from edge.model import Model
        from edge.classify import CropClassifier

        model = CropClassifier(Model(args.model, threads=args.threads))
    specimens, belt = load_specimens(), make_belt()
    rows = [soak(specimens, belt, int(c), args.frames, seed=int(c), model=model) for c in args.counts.split(",")]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"model": args.model, "batched": getattr(model, "batched", None), "threads": args.threads,
                       "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
