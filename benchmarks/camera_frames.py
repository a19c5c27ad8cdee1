"""What a camera frame costs before it is segmented: OpenCV's BGR array to the RGB pixels the segmenter reads.

    PYTHONPATH=. python benchmarks/camera_frames.py [--size 1280x720] [--frames 200]

Before (085c3b9 and earlier) a camera frame became a Pillow image in the capture thread (numpy's reversed copy of
the BGR array, then Pillow's own copy) and an array again in the sorting thread (edge/segment.py BeltSegments,
np.asarray of the image). Now edge/preprocess.py from_bgr hands the RGB array cv2.cvtColor makes, and the
segmenter reads it as it is. Both paths are timed interleaved, frame by frame, over a few random frames reused
(as a camera's buffers are); each checks that the pixels are the same. Results: benchmarks/RESULTS.md, "Camera
frames as arrays".
"""

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.machine import commit, cpu_name  # noqa: E402
from edge.preprocess import from_bgr  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    took = np.zeros(4)  # capture then sorting thread: before, now
    for number in range(args.frames):
        bgr = frames[number % 4]
        start = time.perf_counter()
        image = Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]))
        captured = time.perf_counter()
        before = np.asarray(image)
        read = time.perf_counter()
        now = from_bgr(bgr)
        converted = time.perf_counter()
        pixels = np.asarray(now)
        done = time.perf_counter()
        took += (captured - start, read - captured, converted - read, done - converted)
        assert np.array_equal(before, pixels)
    capture_before, sorting_before, capture_now, sorting_now = took / args.frames * 1000
    print(f"Commit {commit()}; {cpu_name()}; {width}x{height}, {args.frames} frames\n")
    print("| path | capture thread ms | sorting thread ms |\n|---|---:|---:|")
    print(f"| through a Pillow image (before) | {capture_before:.2f} | {sorting_before:.2f} |")
    print(f"| an RGB array (from_bgr now) | {capture_now:.2f} | {sorting_now:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
