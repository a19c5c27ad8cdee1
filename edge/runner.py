"""Sort items on a conveyor: camera -> TFLite model -> bin decision -> ejector, without TensorFlow.

    python edge/runner.py --model model_dynamic.tflite --source camera:0 --config belt.toml [--events events.jsonl]
                          [--sidecar model_dynamic.json] [--threads 4] [--benchmark 1000]
    python edge/runner.py --init-config belt.toml --model model_dynamic.tflite   # a config for this model's labels

Each frame is classified, given a bin (or the recheck bin when the model is unsure, the decision is late or the
ejector fails) and recorded as one JSON line; a summary.json is written when the source ends or on SIGINT/SIGTERM,
whenever it comes (edge/stopping.py: during start-up too; exit status 0). See edge/README.md.
"""

import argparse
import dataclasses
import json
import os
import re
import sys
import time

if not __package__:  # run as a script (python edge/runner.py): make the `edge` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge.stopping import StopSignals, Stopped  # noqa: E402

if __name__ == "__main__":  # the script: SIGINT/SIGTERM only set a flag from here on, through the ~1 s of imports
    STOPS = StopSignals().install()

import numpy as np  # noqa: E402

from edge import drivers, served  # noqa: E402
from edge.actuate import SupervisedActuator  # noqa: E402
from edge.config import ConfigError, load_config, parse_config  # noqa: E402
from edge.contact import ContactLine  # noqa: E402
from edge.deps import MissingLibrary, require  # noqa: E402
from edge.encoder import EncoderBelt, EncoderError  # noqa: E402
from edge.model import Model, ModelError  # noqa: E402
from edge.preprocess import quantize  # noqa: E402
from edge.promotion import install_model_signals  # noqa: E402
from edge.records import (  # noqa: E402
    EventSink, LineWriter, atomic_write_bytes, check_writable, percentile, remove_leftovers,
)
from edge.review import ReviewQueue  # noqa: E402
from edge.shadow import add_shadow_options, open_shadow  # noqa: E402
from edge.sorter import Sorter  # noqa: E402
from edge.sources import Capture, SourceSpecError, parse_source, redact  # noqa: E402
from edge.timing import Clock  # noqa: E402


def build_runner(config, model, clock, events, review=None, belt=None, driver_factory=None, contact=None):
    """The sorting pipeline (edge/sorter.py Sorter) for a checked `config` and loaded `model`: what main() runs, and
    what the tests and benchmarks run.

    `driver_factory` makes a fresh, unopened actuator driver (default: the config's, edge/drivers/); `belt` is the
    encoder (edge/encoder.py EncoderBelt; made from the config when it says position = "modbus"); `contact` the
    `[particles] contact_model` already loaded (edge/contact.py ContactLine; loaded from the config when None).
    """
    factory = driver_factory or (lambda: drivers.make_driver(config, clock, model.labels))
    actuator = SupervisedActuator(factory, clock, events, config.actuator.retry_initial_s,
                                  config.actuator.retry_max_s)
    if belt is None and config.belt.position == "modbus":
        belt = EncoderBelt(config.encoder, config.belt, clock, events)
    return Sorter(config, model, actuator, events, clock, review, belt,
                  plc_fires=drivers.DRIVERS[config.actuator.type].plc_fires, contact=contact)


def open_review(config):
    """The review queue of `[review] dir`, or None when unset."""
    if not config.review.dir:
        return None
    try:
        return ReviewQueue(config.review.dir, config.review.max_items, config.review.max_mb, config.review.jpeg_quality)
    except OSError as error:
        raise config.error("review.dir", f"cannot be used ({error.strerror})") from None


def benchmark_figures(runner, summary):
    """End-to-end latency, throughput and the runner's cost on top of the interpreter's own invoke() time.

    Overhead = (busy time per item / mean invoke time) - 1, busy time running from the first item's start to the
    last item's end: everything the runner adds (decode, resize, decision, records) beyond invoke() itself.
    """
    items = summary["items"]
    span = (runner.busy[1] - runner.busy[0]) if items else 0.0
    invoke = list(runner.invoke_s)
    mean_invoke = sum(invoke) / len(invoke) if invoke else 0.0
    return {
        "items": items,
        "items_per_s": items / span if span else None,
        "latency_p50_ms": summary["latency_ms"]["p50"],
        "latency_p95_ms": summary["latency_ms"]["p95"],
        "invoke_p50_ms": percentile(invoke, 50),
        "invoke_p95_ms": percentile(invoke, 95),
        "invoke_mean_ms": mean_invoke * 1000.0,
        "overhead_pct": (span / items / mean_invoke - 1) * 100 if items and mean_invoke else None,
    }


def benchmark_table(figures):
    rows = [
        ("items", f"{figures['items']}"),
        ("items/s", _fixed(figures["items_per_s"], 1)),
        ("latency p50 (ms)", _fixed(figures["latency_p50_ms"], 2)),
        ("latency p95 (ms)", _fixed(figures["latency_p95_ms"], 2)),
        ("invoke p50 (ms)", _fixed(figures["invoke_p50_ms"], 2)),
        ("invoke p95 (ms)", _fixed(figures["invoke_p95_ms"], 2)),
        ("overhead over invoke() (%)", _fixed(figures["overhead_pct"], 1)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:>10}" for name, value in rows)


def _fixed(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="exported .tflite model")
    parser.add_argument("--sidecar", help="its sidecar JSON (default: the model path with .json)")
    parser.add_argument(
        "--source",
        help="folder:DIR, video:FILE, camera:INDEX, camera:/dev/videoN, stream:URL or genicam:[DEVICE][?...]",
    )
    parser.add_argument("--config", help="TOML config (see edge/example_config.toml)")
    parser.add_argument("--events", help="JSON-lines event file (default: stdout)")
    parser.add_argument("--threads", type=int, help="interpreter threads (default: the interpreter's choice)")
    parser.add_argument("--benchmark", type=int, metavar="N", help="sort N items, print a latency table and stop")
    served.add_options(parser)
    add_shadow_options(parser)
    parser.add_argument(
        "--init-config", metavar="FILE.toml", help="write a commented config listing --model's labels, then stop"
    )
    args = parser.parse_args(argv)
    if not args.init_config:
        missing = [f"--{name}" for name in ("source", "config") if getattr(args, name) is None]
        if missing:
            parser.error(f"{' and '.join(missing)} required (or --init-config FILE.toml to write a config).")
    for name in ("threads", "benchmark"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1.")
    for name, _, _, port in served.asked(args):
        if not 0 <= port < 65536:
            parser.error(f"--{name}-port must be a TCP port number 0-65535.")
    return args


EXAMPLE_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "example_config.toml")
_CLASSES_TABLE = re.compile(r"^\[bins\.classes\]\n(?:#.*\n|\".*\n)*", re.MULTILINE)


def init_config(path, model):
    """Write the example config with [bins.classes] listing `model`'s own labels (each to a bin of its name).

    A config naming classes the model does not have is refused at start, so a config made from the model's
    sidecar is the only kind that runs at once. An existing file is never overwritten.
    """
    if os.path.exists(path):
        raise ConfigError(f"--init-config '{path}' already exists: pass a new file name (it is never overwritten).")
    with open(EXAMPLE_CONFIG) as handle:
        template = handle.read()
    lines = [
        "[bins.classes]",
        f"# class = \"bin\" for every class of {os.path.basename(model.path)} (sha256 {model.sha256[:12]}..., labels",
        "# from its sidecar). Rename the bins to your ejectors; several classes may share one; an unlisted class goes",
        "# to bins.default.",
    ]
    lines += [f"{json.dumps(label)} = \"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}\"" for label in model.labels]
    text = _CLASSES_TABLE.sub(lambda _: "\n".join(lines) + "\n", template, count=1)
    parse_config(text, path).check_labels(model.labels)  # what is written must be what the runner accepts
    remove_leftovers(path)
    try:
        atomic_write_bytes(path, text.encode())
    except OSError as error:
        raise ConfigError(f"--init-config '{path}' cannot be written ({error.strerror}): pass a writable path.") from None


def check_outputs(args, config):
    """Every file the runner will write, tried now: a bad path stops it with one line instead of a later loss.
    Temporary files a SIGKILL left beside them are removed there too (edge/records.py check_writable)."""
    outputs = [("records.summary", config.records.summary, False)]
    if config.review.dir:
        outputs.append(("review.dir", config.review.dir, True))
    outputs += drivers.outputs(config)
    for key, path, directory in outputs:
        try:
            check_writable(path, directory)
        except OSError as error:
            raise config.error(key, f"'{path}' cannot be written ({error.strerror})") from None
    if args.events and args.events != "-":
        try:
            check_writable(args.events)
        except OSError as error:
            raise ConfigError(
                f"--events '{args.events}' cannot be written ({error.strerror}): pass a writable file path."
            ) from None


def main(argv=None, stops=None):
    """`stops`: SIGINT/SIGTERM handlers the caller installed and keeps until the process ends (the script: a signal
    after the summary must not kill it either); without, they are installed here and restored on return."""
    owned = stops is None
    stops = stops or StopSignals().install()  # first: a stop during start-up ends with a summary, never a kill
    try:
        return _start_and_sort(parse_args(argv), stops)
    finally:
        if owned:
            stops.restore()


def _start_and_sort(args, stops):
    clock = Clock()
    config = model = belt = None
    try:
        if args.init_config:
            init_config(args.init_config, Model(args.model, args.sidecar, args.threads))
            print(f"runner: wrote '{args.init_config}' for the labels of '{args.model}'.", file=sys.stderr)
            return 0
        stops.step("reading the config")
        config = load_config(args.config)
        if args.benchmark:  # folders loop to reach N items; stdout is kept for the table
            config = dataclasses.replace(
                config,
                source=dataclasses.replace(config.source, loop=True),
                actuator=dataclasses.replace(
                    config.actuator, path=os.devnull if config.actuator.path == "-" else config.actuator.path
                ),
            )
        drivers.require_library(config)
        for name, row, _, _ in served.asked(args):
            for module, package in row.libraries:
                require(module, package, f"--{name}-port")
        stops.step("loading the model")
        model = Model(args.model, args.sidecar, args.threads)
        contact = None  # one that cannot be used stops the runner here (exit 2), before sorting
        if config.particles is not None and config.particles.contact_model:
            contact = ContactLine(config.particles.contact_model, args.threads)
        config.check_labels(model.labels)
        stops.step("opening the source and outputs")
        source = parse_source(args.source, config.source, clock)
        if config.belt.position == "modbus":
            require("pymodbus", "pymodbus", '[belt] position = "modbus"')
        check_outputs(args, config)
        review = open_review(config)
        events = EventSink(LineWriter(args.events or (os.devnull if args.benchmark else "-")), clock)
        candidate = open_shadow(args, config, model, events)  # --shadow: checked like a promotion, or None
        if config.belt.position == "modbus":  # an unreachable encoder stops the runner before anything is sorted
            stops.step("connecting to the encoder")
            belt = EncoderBelt(config.encoder, config.belt, clock, events)
            belt.open()
        stops.step("building the sorter")
    except (ConfigError, ModelError, SourceSpecError, MissingLibrary, EncoderError) as error:
        print(f"runner: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the events file went away between the check and the open
        print(f"runner: --events '{args.events}' cannot be opened ({error.strerror}).", file=sys.stderr)
        return 2
    except Stopped:
        if belt is not None:
            belt.close()
        if config is None and args.config:  # a signal during the imports: the config still says where the summary goes
            try:
                config = load_config(args.config)
            except ConfigError:
                pass
        if config is None:
            print(f"runner: stopped by {stops.reason} before the config was read; no summary.", file=sys.stderr)
            return 0
        _, written = stops.summary(config, model)
        print(f"runner: stopped by {stops.reason} while {stops.during}, before sorting; summary "
              f"{repr(config.records.summary) if written else 'on stderr'}.", file=sys.stderr)
        return 0
    capture = Capture(
        source, clock, events, config.source.queue_size, config.source.fps,
        config.source.retry_initial_s, config.source.retry_max_s,
    )
    runner = build_runner(config, model, clock, events, review, belt, contact=contact)
    runner.switch.threads = args.threads  # a promoted model gets the live one's interpreter threads
    if candidate is not None:
        runner.attach_shadow(candidate)
    install_model_signals(runner)  # SIGUSR1 promotes the candidate, SIGUSR2 rolls back (edge/promotion.py)
    stops.attach(runner)  # a signal now stops the sorter: the current frame finished, the full summary written
    serving = []  # edge/served.py: each in its own thread
    for name, row, host, port in served.asked(args):
        publisher = row.start(runner, args)
        try:
            runner.listening.append(publisher.serve(host, port))
        except OSError as error:
            print(f"runner: --{name}-port {port} cannot be served on {host} ({error.strerror or error}): pass a "
                  "free port.", file=sys.stderr)
            for started in serving:
                started.close()
            return 2
        serving.append(publisher)
    if args.benchmark:  # the first invoke() sets up kernels; keep it out of the figures
        blank = np.zeros((model.input_size, model.input_size, 3), np.uint8)
        model.classify(quantize(blank, model.input_dtype, model.input_scale, model.input_zero_point))
    runner.actuator.open()
    runner.listening += runner.actuator.listening
    print(
        f"runner: config '{config.path}', model '{model.path}' sha256 {model.sha256}, source {redact(args.source)}, "
        f"actuator {config.actuator.type}, belt position {belt.endpoint if belt else 'clock'}, "
        f"listening: {', '.join(runner.listening) or 'none'}",
        file=sys.stderr, flush=True,
    )
    started = time.perf_counter()
    try:
        summary = runner.run(capture, max_items=args.benchmark)
    finally:
        for publisher in serving:
            publisher.close()
    if args.benchmark:
        print(f"benchmark: {args.model}, {summary['items']} items in {time.perf_counter() - started:.1f} s")
        print(benchmark_table(benchmark_figures(runner, summary)))
    return 0


if __name__ == "__main__":
    STATUS = main(stops=STOPS)
    STOPS.hold()
    sys.exit(STATUS)
