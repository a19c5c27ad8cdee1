"""Fixtures for the edge runner tests: one real tiny trained and exported model (float32 and int8), built once per session,
a driven clock, and helpers to write configs and assemble a Runner in-process."""

import json
import os
import sys
import threading
import warnings

import numpy as np
import pytest

SIZE = 32
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # `edge` is a folder of the repo, not an installed package


def build_tiny_export(root):
    """A real train.py run (simple_cnn at 32 px on 4 synthetic classes) exported by mineralnet.export to float32
    and int8, plus the Keras model's probabilities on the test rows for the parity test."""
    from mineralnet import rundir
    from mineralnet.data import load_image, make_demo_dataset
    from mineralnet.export import export_run
    from mineralnet.training import resolve_config, train

    data = make_demo_dataset(os.path.join(root, "data"), num_classes=4, images_per_class=16, image_size=48)
    config = resolve_config(overrides={
        "weights": "none", "data": data, "out": os.path.join(root, "run"), "model": "simple_cnn", "image_size": SIZE,
        "epochs": 20, "batch_size": 8, "evaluate": False, "augment": {"rotation": 0, "noise": 0},
    })
    run = rundir.Run(train(config))
    export = os.path.join(run.path, "export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_run(run.path, formats=("float32", "int8"), calibration_samples=32, out_dir=export)
    test_rows = run.rows("test")
    pixels = np.stack([load_image(r["file"], SIZE) for r in test_rows]).astype(np.float32)
    return {
        "data": data, "run": run.path, "labels": run.labels, "test_rows": test_rows,
        "float32": os.path.join(export, "model_float32.tflite"), "int8": os.path.join(export, "model_int8.tflite"),
        "keras_test_probabilities": run.load_model().predict(pixels, verbose=0),
    }


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    return build_tiny_export(str(tmp_path_factory.mktemp("tiny_export")))


@pytest.fixture(scope="session")
def tiny_export_dynamic(tiny_export, tmp_path_factory):
    """The same tiny run exported with a free batch dimension (`--batch dynamic`): {"float32": path, "int8": path}."""
    from mineralnet.export import export_run

    out = str(tmp_path_factory.mktemp("tiny_export_dynamic"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_run(tiny_export["run"], formats=("float32", "int8"), calibration_samples=32, out_dir=out,
                   batch="dynamic")
    return {fmt: os.path.join(out, f"model_{fmt}.tflite") for fmt in ("float32", "int8")}


class FakeClock:
    """A clock the test drives: `advance` moves time; `wait` returns at once, having moved time by the wait."""

    def __init__(self, start=1000.0):
        self.t = start
        self._lock = threading.Lock()

    def now(self):
        return self.t

    def wall(self):
        return 1_700_000_000.0 + self.t

    def advance(self, seconds):
        with self._lock:
            self.t += seconds

    def wait(self, event, seconds):
        if not event.is_set():
            self.advance(max(0.0, seconds))
        return event.is_set()


@pytest.fixture
def fake_clock():
    return FakeClock()


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def toml_text(sections):
    return "".join(
        f"[{name}]\n" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in body.items()) + "\n"
        for name, body in sections.items()
    )


@pytest.fixture
def write_config(tmp_path, tiny_export):
    """Write a valid test config (changes merged per section) and return its path.

    Defaults: three classes mapped onto two bins (the fourth goes to the default bin), a belt so slow that
    nothing is late unless a test moves the clock, jsonl commands and events in tmp_path.
    """

    def write(**changes):
        labels = tiny_export["labels"]
        sections = {
            "bins": {"default": "mixed", "recheck": "recheck",
                     "classes": {labels[0]: "bin_a", labels[1]: "bin_a", labels[2]: "bin_c"}},
            "belt": {"speed_mm_s": 10.0, "camera_to_ejector_mm": 1000.0, "valve_lead_ms": 20.0},
            "actuator": {"type": "jsonl", "path": str(tmp_path / "commands.jsonl")},
            "review": {"dir": str(tmp_path / "review"), "max_items": 50, "max_mb": 5.0},
            "records": {"summary": str(tmp_path / "summary.json"), "stats_interval_s": 3600.0},
        }
        for name, body in changes.items():
            sections[name] = {**sections.get(name, {}), **body}
        path = tmp_path / "config.toml"
        path.write_text(toml_text(sections))
        return str(path)

    return write


def read_events(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture
def make_runner(tmp_path):
    """Assemble a Runner in-process from a config path: (runner, events_path). Uses the real Clock unless given."""
    from edge.actuators import SupervisedActuator, make_actuator
    from edge.config import load_config
    from edge.model import Model
    from edge.records import EventSink, LineWriter
    from edge.review import ReviewQueue
    from edge.runner import Runner
    from edge.timing import Clock

    def make(config_path, model_path, clock=None, actuator_factory=None, belt=None):
        clock = clock or Clock()
        config = load_config(config_path)
        model = Model(model_path)
        config.check_labels(model.labels)
        events_path = str(tmp_path / "events.jsonl")
        events = EventSink(LineWriter(events_path), clock)
        actuator = SupervisedActuator(
            actuator_factory or (lambda: make_actuator(config.actuator, clock, config=config, labels=model.labels)),
            clock, events,
            config.actuator.retry_initial_s, config.actuator.retry_max_s,
        )
        review = None
        if config.review.dir:
            review = ReviewQueue(config.review.dir, config.review.max_items, config.review.max_mb)
        if belt is not None:  # a factory (config, clock, events) -> EncoderBelt, e.g. one the test polls itself
            belt = belt(config, clock, events)
        return Runner(config, model, actuator, events, clock, review, belt=belt), events_path

    return make
