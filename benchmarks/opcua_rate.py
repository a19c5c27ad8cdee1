"""Results per second from the OPC UA server (edge/opcua.py) to a subscribed client, and how many were lost.

    python benchmarks/opcua_rate.py --model runs/RUN/export/model_int8.tflite --folder demo_data --items 10000

The real runner sorts `--items` items of a looping folder as fast as it can (the runner_soak.py config: every
command on time, commands to /dev/null) with the OPC UA server subscribed to its decisions; an asyncua client in
its own process (as a SCADA would be) subscribes to the VisionSystem's ResultReady events before the run and
collects them until all have come or none came for 10 s. Reported: the runner's items/s alone (a first run without
the server) and with the server, results
received, lost (sequence numbers never received), duplicates, out of order, and results/s at the client (received
over the span from the first to the last event) and the server thread's CPU time per result sent (encoding and
sending included: its cost to the runner's process, whatever the machine's load). The runner offers decisions faster than the server can send them,
so that rate is the server's ceiling on this machine; the target is >= 200 results/s with none lost (issue 27).
"""

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from runner_soak import SOAK_CONFIG  # noqa: E402

IDLE_S = 10.0


def client(url, items, ready, results):
    """The subscribed client (its own process): (received seqs in order, first and last receive time)."""
    import logging

    from asyncua import Client, ua

    from edge.opcua import MV_URI, RESULT_READY_TYPE, URI

    logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # a lost connection is reported below, once

    class Handler:
        def __init__(self):
            self.seqs, self.times = [], []

        def status_change_notification(self, status):
            print(f"opcua_rate: the client's subscription ended ({status.Status.name}) after {len(self.seqs)} "
                  "results", file=sys.stderr, flush=True)

        def event_notification(self, event):
            self.seqs.append(event.Seq)
            self.times.append(time.monotonic())

    async def collect():
        async with Client(url, timeout=30) as connection:
            mv = await connection.get_namespace_index(MV_URI)
            idx = await connection.get_namespace_index(URI)
            system = await connection.nodes.objects.get_child(f"{idx}:VisionSystem")
            etype = await connection.get_node(ua.NodeId(RESULT_READY_TYPE, mv)).get_child(
                f"{idx}:SortResultReadyEventType")
            handler = Handler()
            subscription = await connection.create_subscription(50, handler)
            await subscription.subscribe_events(system, etype)
            ready.set()
            last, count = time.monotonic(), 0
            while len(handler.seqs) < items and time.monotonic() - last < IDLE_S:
                await asyncio.sleep(0.1)
                if len(handler.seqs) != count:
                    last, count = time.monotonic(), len(handler.seqs)
            return handler.seqs, handler.times

    seqs, times = asyncio.run(collect())
    results.put((seqs, times[0] if times else None, times[-1] if times else None))


def measure(model_path, folder, items, threads, serve=True, fps=0.0):
    """One run of `items` items; with `serve`, the OPC UA server and a subscribed client beside it."""
    from edge.config import parse_config
    from edge.model import Model
    from edge.opcua import VisionServer
    from edge.opcua_access import Access
    from edge.records import EventSink, LineWriter
    from edge.runner import benchmark_figures, build_runner
    from edge.sources import Capture, FolderSource
    from edge.timing import Clock

    clock = Clock()
    with tempfile.TemporaryDirectory() as scratch:
        config = parse_config(SOAK_CONFIG.format(actuator=f'path = "{os.devnull}"', fps=fps,
                                                 summary=os.path.join(scratch, "summary.json")), "<rate config>")
        model = Model(model_path, threads=threads)
        runner = build_runner(config, model, clock, EventSink(LineWriter(os.devnull), clock))
        capture = Capture(FolderSource(folder, clock, loop=True), clock, runner.events, config.source.queue_size,
                          config.source.fps)
        if not serve:
            return {"runner_items_per_s": benchmark_figures(runner, runner.run(capture, max_items=items))[
                "items_per_s"]}
        server = VisionServer(runner, Access(), grace_s=0.0)
        runner.publishers.append(server)
        url = server.serve("127.0.0.1", 0).split(" ", 1)[1]
        context = multiprocessing.get_context("spawn")
        ready, results = context.Event(), context.Queue()
        process = context.Process(target=client, args=(url, items, ready, results))
        process.start()
        if not ready.wait(120):
            raise SystemExit("opcua_rate: the client did not subscribe within 120 s")
        cpu_start = server.cpu_s()  # the server's start-up and the client's browsing are not a result's cost
        summary = runner.run(capture, max_items=items)
        seqs, first, last = results.get(timeout=600)
        server_cpu_s = server.cpu_s() - cpu_start
        process.join(30)
        server.close()
    figures = benchmark_figures(runner, summary)
    unique = set(seqs)
    return {
        "items": summary["items"], "runner_items_per_s": figures["items_per_s"], "received": len(seqs),
        "lost": len(set(range(1, summary["items"] + 1)) - unique), "duplicates": len(seqs) - len(unique),
        "out_of_order": sum(1 for a, b in zip(seqs, seqs[1:]) if b < a),
        "results_per_s": (len(seqs) - 1) / (last - first) if seqs and last > first else None,
        "server_dropped": server.dropped,
        "server_cpu_ms_per_result": server_cpu_s * 1000 / max(server.sent, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="exported .tflite model (its sidecar beside it)")
    parser.add_argument("--folder", required=True, help="folder of pictures, looped")
    parser.add_argument("--items", type=int, default=10_000, help="items to sort (default 10000)")
    parser.add_argument("--threads", type=int, default=None, help="interpreter threads")
    parser.add_argument("--fps", type=float, default=0.0, help="pace the folder at this many items/s, as a camera "
                        "would (default 0: as fast as the runner sorts)")
    args = parser.parse_args(argv)
    alone = measure(args.model, args.folder, args.items, args.threads, False, args.fps)["runner_items_per_s"]
    figures = measure(args.model, args.folder, args.items, args.threads, True, args.fps)
    rate = figures["results_per_s"]
    print("| items | offered (fps) | runner items/s alone | runner items/s serving | received | lost | duplicates | out of order "
          "| results/s at the client | server CPU ms per result |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {figures['items']} | {args.fps or 'flat out'} | {alone:.0f} | {figures['runner_items_per_s']:.0f} | {figures['received']} "
          f"| {figures['lost']} | {figures['duplicates']} | {figures['out_of_order']} "
          f"| {'-' if rate is None else f'{rate:.0f}'} | {figures['server_cpu_ms_per_result']:.2f} |")
    return 0 if figures["lost"] == 0 and rate is not None and rate >= 200 else 1


if __name__ == "__main__":
    sys.exit(main())
