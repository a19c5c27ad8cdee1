"""Soak the edge runner: N frames (default 10,000) from a folder through each exported model, one fresh process
per model so that resident memory is measured per model, and a Markdown table for benchmarks/RESULTS.md.

    python benchmarks/runner_soak.py --folder demo_data --frames 10000 --threads 4 \\
        --models runs/RUN/export/model_int8.tflite runs/RUN/export/model_float32.tflite

Reported per model: items/s, end-to-end latency p50/p95 (capture to decision), invoke() p50, the runner's
overhead over invoke() (target <= 5 % for eca_convnext_tiny at 224 px) and RSS after warm-up and at the end
(target: flat; a leak shows as growth). The models come from `python -m mineralnet.export` with their sidecars.
Uses only the edge runner's dependencies (no TensorFlow).

`--actuator modbus` serves the decisions as the runner's Modbus TCP server (edge/drivers/modbus_server.py) and runs a real
pymodbus client in a thread that polls it like a PLC every `--poll-ms` (10), reading each new ring slot; it adds
capture-to-register (the slot written) and capture-to-PLC (the slot first read by the poller) latencies, each also
"beyond inference" (minus that item's invoke time). `--fps` paces the folder like a camera, so those latencies are
not dominated by frames queuing behind each other (a folder read as fast as possible keeps the queue full).

`--ui page` serves the operator's line page (edge/ui.py) during the soak, `--ui polled` also runs a client that
fetches /api/status once a second as an open page does, and `--ui ab` runs off, page and polled in turn,
`--rounds` times (each a fresh process; each round starts with the next mode), then prints per mode the median
items/s, the median process CPU time per item (all threads; on a loaded machine a steadier cost than items/s) and
the page thread's own CPU time per second of run, each against off. RSS "mid" is at the first sample after half
the frames.
"""

import argparse
import logging
import multiprocessing
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SOAK_CONFIG = """
[source]
fps = {fps}
[bins]
default = "product"
recheck = "recheck"
[belt]
speed_mm_s = 1
camera_to_ejector_mm = 1000000   # commands are always on time: the soak measures the runner, not the belt
[actuator]
{actuator}
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


def _free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PlcPoller:
    """A pymodbus client polling the runner's register map every `poll_s`, as a PLC would: the last sequence number,
    then every new ring slot. `seen[seq]` is the monotonic time the slot was first read (same clock as capture)."""

    def __init__(self, port, unit_id, ring_size, poll_s, frames):
        import threading

        import numpy as np

        self.port, self.unit_id, self.ring_size, self.poll_s = port, unit_id, ring_size, poll_s
        self.seen = np.full(frames + 1, np.nan)  # allocated up front: bookkeeping must not look like a leak
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plc", daemon=True)

    def start(self):
        import pymodbus.client  # noqa: F401  imported here: two threads importing pymodbus at once can deadlock it

        self._thread.start()

    def _run(self):
        import time

        from pymodbus.client import ModbusTcpClient

        from edge.drivers.modbus_server import LAST_SEQ, RING, SLOT

        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # "connection refused" until the server is up
        client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=1)
        last_read = 0
        next_poll = time.monotonic()
        while not self._stop.is_set():
            try:
                header = client.read_holding_registers(LAST_SEQ, count=2, device_id=self.unit_id).registers
                last = header[0] << 16 | header[1]
                for sequence in range(max(last_read + 1, last - self.ring_size + 1), last + 1):
                    slot = RING + SLOT * ((sequence - 1) % self.ring_size)
                    entry = client.read_holding_registers(slot, count=2, device_id=self.unit_id).registers
                    if (entry[0] << 16 | entry[1]) == sequence and sequence < len(self.seen):
                        self.seen[sequence] = time.monotonic()
                last_read = max(last_read, last)
                self.polls += 1
            except Exception:  # the server is not up yet, or has stopped
                client.close()
            next_poll += self.poll_s
            self._stop.wait(max(0.0, next_poll - time.monotonic()))
        client.close()

    def stop(self):
        self._stop.set()
        self._thread.join(5)


def _percentiles(values):
    from edge.records import percentile

    # percentile() takes seconds and returns milliseconds
    return percentile(values, 50), percentile(values, 95)


class StatusPoller:
    """GET /api/status every `period_s`, as the line page's script does while the page is open."""

    def __init__(self, address, period_s=1.0):
        import threading

        self.address, self.period_s, self.polls = address, period_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="page-poller", daemon=True)
        self._thread.start()

    def _run(self):
        import urllib.request

        while not self._stop.wait(self.period_s):
            with urllib.request.urlopen(self.address + "api/status", timeout=10) as response:
                response.read()
            self.polls += 1

    def stop(self):
        self._stop.set()
        self._thread.join(15)


def soak(model_path, folder, frames, threads, config_path, actuator="jsonl", fps=0.0, poll_ms=10.0, ui="off",
         ui_port=0):
    """Run the real runner loop over `frames` items of a looping folder; returns the figures as a dict."""
    import threading
    import time

    import numpy as np

    from edge.config import load_config, parse_config
    from edge.model import Model
    from edge.preprocess import quantize
    from edge.records import EventSink, LineWriter
    from edge.drivers import modbus_server
    from edge.runner import benchmark_figures, build_runner
    from edge.sources import Capture, FolderSource
    from edge.timing import Clock

    clock = Clock()
    with tempfile.TemporaryDirectory() as scratch:
        summary_path = os.path.join(scratch, "summary.json")
        port, ring_size = _free_port(), 1000
        if config_path:
            config = load_config(config_path)
        else:
            section = f'type = "modbus"\nport = {port}\nring_size = {ring_size}' if actuator == "modbus" else (
                f'path = "{os.devnull}"'
            )
            config = parse_config(
                SOAK_CONFIG.format(actuator=section, summary=summary_path, fps=fps), "<soak config>"
            )
        model = Model(model_path, threads=threads)
        blank = np.zeros((model.input_size, model.input_size, 3), np.uint8)
        model.classify(quantize(blank, model.input_dtype, model.input_scale, model.input_zero_point))
        events = EventSink(LineWriter(os.devnull), clock)
        written = np.full((frames + 1, 3), np.nan)  # seq -> capture time, slot written, that item's inference s

        class SlotWritten:
            """A publisher after the Modbus ring (edge/publish.py DecisionRing): when each item's slot was written."""

            def publish(self, item):
                if item.seq <= frames:
                    written[item.seq] = (item.frame.capture_time, clock.now(), item.latency.get("inference", 0))

        runner = build_runner(config, model, clock, events)
        if config.actuator.type == "modbus":
            runner.publishers.append(SlotWritten())
        capture = Capture(
            FolderSource(folder, clock, loop=True), clock, events, config.source.queue_size, config.source.fps
        )
        poller = None
        if config.actuator.type == "modbus":
            poller = PlcPoller(
                modbus_server.port(config), config.actuator.unit_id, config.actuator.ring_size, poll_ms / 1e3, frames
            )
            poller.start()
        page = status_poller = None
        if ui != "off":
            from edge.ui import LineUI

            page = LineUI(runner)
            address = page.serve("127.0.0.1", ui_port).split(" ", 1)[1]
            if ui == "polled":
                status_poller = StatusPoller(address)
            ui_cpu_start = page.cpu_s()  # the server's start-up is not the page's running cost
        rss = [rss_mb()]
        rss_items = [0]
        sampling = threading.Event()

        def sample():
            while not sampling.wait(0.5):
                rss_items.append(runner.tally.items)
                rss.append(rss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu_start = time.process_time()
        summary = runner.run(capture, max_items=frames)
        cpu_s = time.process_time() - cpu_start  # all threads of this process: the load of other processes is not in it
        sampling.set()
        sampler.join()
        rss.append(rss_mb())
        rss_items.append(runner.tally.items)
        polls = status_poller.polls if status_poller is not None else 0
        if status_poller is not None:
            status_poller.stop()
        ui_cpu_s = None
        if page is not None:
            ui_cpu_s = page.cpu_s() - ui_cpu_start  # the page's own thread: what it took from the loop, load or not
            page.close()
        figures = benchmark_figures(runner, summary)
        if poller is not None:
            poller.stop()
            done = ~np.isnan(written[:, 0])
            seen = done & ~np.isnan(poller.seen)
            capture_s, written_s, inference_s = written.T
            register = list(written_s[done] - capture_s[done])
            register_beyond = list(written_s[done] - capture_s[done] - inference_s[done])
            plc = list(poller.seen[seen] - capture_s[seen])
            plc_beyond = list(poller.seen[seen] - capture_s[seen] - inference_s[seen])
            figures.update({
                "register_p50_ms": _percentiles(register)[0], "register_p95_ms": _percentiles(register)[1],
                "register_beyond_p50_ms": _percentiles(register_beyond)[0],
                "register_beyond_p95_ms": _percentiles(register_beyond)[1],
                "plc_p50_ms": _percentiles(plc)[0], "plc_p95_ms": _percentiles(plc)[1],
                "plc_beyond_p50_ms": _percentiles(plc_beyond)[0], "plc_beyond_p95_ms": _percentiles(plc_beyond)[1],
                "plc_seen": len(plc), "plc_polls": poller.polls,
            })
    middle = next(mb for mb, items in zip(rss, rss_items) if items >= frames // 2)
    return {
        "model": os.path.basename(model_path), "actuator": config.actuator.type, "ui": ui, "status_polls": polls,
        "ui_cpu_s": ui_cpu_s, "uptime_s": summary["uptime_s"],
        "cpu_ms_per_item": cpu_s * 1000 / max(1, summary["items"]),
        **figures,
        "rss_start_mb": rss[0], "rss_mid_mb": middle, "rss_end_mb": rss[-1], "rss_max_mb": max(rss),
    }


def _worker(arguments, results):
    results.put(soak(*arguments))


def _mode(row):
    return f"{row['ui']} ({row['status_polls']} polls)" if row["status_polls"] else row["ui"]


def _cell(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="exported .tflite files (sidecars beside them)")
    parser.add_argument("--folder", required=True, help="folder of images, read in a loop")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--threads", type=int, help="interpreter threads")
    parser.add_argument("--config", help="runner TOML config (default: a belt on which nothing is ever late)")
    parser.add_argument("--actuator", choices=("jsonl", "modbus"), default="jsonl",
                        help="jsonl to /dev/null, or the Modbus server polled by a PLC-like client (default jsonl)")
    parser.add_argument("--fps", type=float, default=0.0, help="pace the folder like a camera (0: as fast as it can)")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="the PLC client's polling period (modbus)")
    parser.add_argument("--ui", choices=("off", "page", "polled", "ab"), default="off",
                        help="operator page: off, served (page), served and polled once a second (polled), or ab: "
                             "all three in turn, --rounds times")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of off/page/polled for --ui ab")
    parser.add_argument("--ui-port", type=int, default=0, help="port of the page (default: any free one)")
    args = parser.parse_args(argv)
    modes = ("off", "page", "polled") if args.ui == "ab" else (args.ui,)

    context = multiprocessing.get_context("spawn")  # a fresh interpreter per model: RSS is that model's alone
    rows = []
    for round_number in range(args.rounds if args.ui == "ab" else 1):
        for model_path in args.models:
            shift = round_number % len(modes)  # each round starts with another mode: no mode always goes first
            for mode in modes[shift:] + modes[:shift]:  # interleaved: a change in the load hits every mode alike
                results = context.Queue()
                worker = context.Process(
                    target=_worker,
                    args=((model_path, args.folder, args.frames, args.threads, args.config, args.actuator, args.fps,
                           args.poll_ms, mode, args.ui_port), results),
                )
                worker.start()
                rows.append(results.get())
                worker.join()
                print(f"done: {model_path} ui={mode} round {round_number + 1}: {rows[-1]['items_per_s']:.1f} items/s",
                      file=sys.stderr)

    print(f"{args.frames} frames from {args.folder}, threads={args.threads or 'default'}, actuator={args.actuator}, "
          f"fps={args.fps or 'unpaced'}\n")
    print(
        "| model | ui | items/s | latency p50 ms | latency p95 ms | invoke p50 ms | overhead % | runner ms/item "
        "| process CPU ms/item | RSS start / mid / end / max MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        per_item = (1000.0 / row["items_per_s"] - row["invoke_mean_ms"]) if row["items_per_s"] else None
        print(
            f"| {row['model']} | {_mode(row)} | {_cell(row['items_per_s'], 1)} | "
            f"{_cell(row['latency_p50_ms'], 2)} | "
            f"{_cell(row['latency_p95_ms'], 2)} | {_cell(row['invoke_p50_ms'], 2)} | {_cell(row['overhead_pct'], 1)} | "
            f"{_cell(per_item, 3)} | {_cell(row['cpu_ms_per_item'], 3)} | {_cell(row['rss_start_mb'], 1)} / {_cell(row['rss_mid_mb'], 1)} / "
            f"{_cell(row['rss_end_mb'], 1)} / {_cell(row['rss_max_mb'], 1)} |"
        )
    if args.ui == "ab":
        import statistics

        print(f"\n| model | ui | median items/s of {args.rounds} | cost against off | median process CPU ms/item "
              f"| cost against off | page thread CPU per run second (median) |\n|---|---|---|---|---|---|---|")
        for model in dict.fromkeys(row["model"] for row in rows):
            median = {mode: statistics.median(r["items_per_s"] for r in rows if r["model"] == model and r["ui"] == mode)
                      for mode in modes}
            per_item = {mode: statistics.median(r["cpu_ms_per_item"] for r in rows
                                                if r["model"] == model and r["ui"] == mode) for mode in modes}
            for mode in modes:
                cost = (1 - median[mode] / median["off"]) * 100
                cpu_cost = (per_item[mode] / per_item["off"] - 1) * 100
                cpu = [r["ui_cpu_s"] / r["uptime_s"] * 100 for r in rows
                       if r["model"] == model and r["ui"] == mode and r["ui_cpu_s"] is not None]
                print(f"| {model} | {mode} | {median[mode]:.1f} | {'-' if mode == 'off' else f'{cost:+.1f} %'} | "
                      f"{per_item[mode]:.3f} | {'-' if mode == 'off' else f'{cpu_cost:+.1f} %'} | "
                      f"{f'{statistics.median(cpu):.2f} %' if cpu else '-'} |")
    if args.actuator == "modbus":
        print(f"\n| model | capture-to-register p50 / p95 ms | beyond inference p50 / p95 ms | capture-to-PLC "
              f"({args.poll_ms:g} ms polls) p50 / p95 ms | beyond inference p50 / p95 ms | items seen by the PLC |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            print(
                f"| {row['model']} | {_cell(row['register_p50_ms'], 2)} / {_cell(row['register_p95_ms'], 2)} | "
                f"{_cell(row['register_beyond_p50_ms'], 2)} / {_cell(row['register_beyond_p95_ms'], 2)} | "
                f"{_cell(row['plc_p50_ms'], 2)} / {_cell(row['plc_p95_ms'], 2)} | "
                f"{_cell(row['plc_beyond_p50_ms'], 2)} / {_cell(row['plc_beyond_p95_ms'], 2)} | "
                f"{row['plc_seen']} of {row['items']} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
