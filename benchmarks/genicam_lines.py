"""What a line-scan genicam: source costs (issue 27 point 3): buffers and lines a second read and stitched, and the
reader's CPU, against Aravis's simulated camera on 127.0.0.1 (`arv-fake-gv-camera-0.8`, at most 1000 buffers/s).

    PYTHONPATH=. python benchmarks/genicam_lines.py [--seconds 5] [--width 2048] [--heights 1 8 64]
        [--lines-per-frame 512]

For each buffer height (lines per buffer) the camera runs at its top rate; the edge source (edge/genicam.py
LineScanSource, stamped by a counter as an encoder would be) reads and stitches for `--seconds`. Reported: buffers/s
and lines/s delivered, frames/s out, buffers that failed (lost packets), and the CPU seconds per second of this
process (Aravis's receiving thread and the stitching; also per buffer) and of the simulator. The doc's advice to
keep `Height` at tens of lines or more comes from the per-buffer cost.
"""

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO]

from benchmarks.machine import commit, cpu_name  # noqa: E402
from edge.config import SourceConfig  # noqa: E402
from edge.sources import parse_source  # noqa: E402
from edge.timing import Clock  # noqa: E402

FAKE = "arv-fake-gv-camera-0.8"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(width, height, lines_per_frame, seconds, simulator):
    spec = (f"genicam:127.0.0.1?Width={width}&Height={height}&AcquisitionFrameRate=1000"
            f"&lines_per_frame={lines_per_frame}")
    source = parse_source(spec, SourceConfig(), Clock())
    counts = iter(range(10**9))
    source.stamp = lambda: next(counts)
    source.open()
    try:
        for _ in range(3):  # the first frames fill the stitcher
            source.read()
        start, own, fake = time.perf_counter(), time.process_time(), cpu_seconds(simulator.pid)
        failed, frames, lost = source.failed_buffers, 0, 0
        while time.perf_counter() - start < seconds:
            frame = source.read()
            frames += 1
            lost += frame.error is not None
        elapsed = time.perf_counter() - start
        own, fake = time.process_time() - own, cpu_seconds(simulator.pid) - fake
        failed = source.failed_buffers - failed
    finally:
        source.close()
    lines = frames * lines_per_frame
    return {"height": height, "buffers_s": lines / height / elapsed, "lines_s": lines / elapsed,
            "frames_s": frames / elapsed, "failed_buffers": failed, "frames_lost": lost,
            "reader_cpu": own / elapsed, "simulator_cpu": fake / elapsed}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--heights", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--lines-per-frame", type=int, default=512)
    args = parser.parse_args(argv)
    if shutil.which(FAKE) is None:
        sys.exit(f"{FAKE} is not installed: apt-get install aravis-tools gir1.2-aravis-0.8")
    with open(os.path.join(tempfile.gettempdir(), "mineralnet-arv-fake-gv-camera.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the tests' simulator holds 127.0.0.1's GigE Vision port under this lock
        simulator = subprocess.Popen([FAKE, "-i", "127.0.0.1", "-s", "BENCH"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            rows = [measure(args.width, height, args.lines_per_frame, args.seconds, simulator)
                    for height in args.heights]
        finally:
            simulator.terminate()
            simulator.wait(10)
    print(f"commit {commit()}, {cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"width {args.width}, {args.lines_per_frame} lines a frame, {args.seconds:g} s each")
    print("| lines/buffer | buffers/s | lines/s | frames/s | failed buffers | frames lost | reader CPU s/s | "
          "reader CPU µs/buffer | simulator CPU s/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['height']} | {row['buffers_s']:.0f} | {row['lines_s']:.0f} | {row['frames_s']:.1f} | "
              f"{row['failed_buffers']} | {row['frames_lost']} | {row['reader_cpu']:.2f} | "
              f"{row['reader_cpu'] / row['buffers_s'] * 1e6:.0f} | "
              f"{row['simulator_cpu']:.2f} |")


if __name__ == "__main__":
    main()
