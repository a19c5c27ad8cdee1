"""Fixtures for the edge runner tests: one real tiny exported model (float32 and int8), built once per session,
a driven clock, and helpers to write configs and assemble a Runner in-process."""

import datetime
import hashlib
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


def _sidecar(tflite_path, fmt, labels, run_dir):
    """The export contract's sidecar for a .tflite file, read from the converted model itself."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=tflite_path)
    interpreter.allocate_tensors()

    def tensor(details):
        scale, zero_point = details["quantization"]
        return {
            "shape": [int(d) for d in details["shape"]], "dtype": np.dtype(details["dtype"]).name,
            "scale": float(scale), "zero_point": int(zero_point),
        }

    def sha256(path):
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()

    return {
        "format": fmt,
        "labels": labels,
        "input": tensor(interpreter.get_input_details()[0]),
        "output": tensor(interpreter.get_output_details()[0]),
        "preprocessing": {
            "pixels": "raw RGB 0-255", "color": "RGB", "input_size": SIZE, "resize_method": "pillow-bilinear",
        },
        "sha256": sha256(tflite_path),
        "source_model_sha256": sha256(os.path.join(run_dir, "model.keras")),
        "run": run_dir,
        "versions": {},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }


def build_tiny_export(root):
    """STAND-IN for a train.py run + `mineralnet.export.export_run`: the lead replaces this body with those once
    they land; the tests only rely on the returned keys.

    Demo data (4 classes x 16 images), split, simple_cnn at 32 px trained briefly with model.fit, the run
    directory (model.keras, labels.json, config.json, split.csv), model_float32.tflite and model_int8.tflite
    (uint8 in/out, representative data from the train rows) with contract sidecars, and the Keras model's
    probabilities on the test rows for the parity test.
    """
    import keras
    import tensorflow as tf

    import mineralnet
    from mineralnet.data import load_image, make_demo_dataset, make_split, read_split, scan_dataset, write_split
    from mineralnet.utils import write_json

    data = make_demo_dataset(os.path.join(root, "data"), num_classes=4, images_per_class=16, image_size=48)
    classes, samples, _ = scan_dataset(data)
    run = os.path.join(root, "run")
    os.makedirs(run)
    write_split(make_split(samples), os.path.join(run, "split.csv"))
    rows = read_split(os.path.join(run, "split.csv"), data)

    def subset(name):
        chosen = [r for r in rows if r["subset"] == name]
        pixels = np.stack([load_image(r["file"], SIZE) for r in chosen]).astype(np.float32)
        return chosen, pixels, np.array([classes.index(r["label"]) for r in chosen])

    _, x_train, y_train = subset("train")
    test_rows, x_test, _ = subset("test")
    keras.utils.set_random_seed(0)
    model = mineralnet.build_model("simple_cnn", len(classes), (SIZE, SIZE, 3))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=20, batch_size=8, verbose=0)
    model.save(os.path.join(run, "model.keras"))
    write_json(os.path.join(run, "labels.json"), classes)
    write_json(
        os.path.join(run, "config.json"), {"data": os.path.abspath(data), "image_size": SIZE, "model": "simple_cnn"}
    )

    image = keras.Input(batch_shape=(1, SIZE, SIZE, 3), name="image")
    batch_of_one = keras.Model(image, model(image))  # the edge invokes one frame at a time

    def convert(fmt, converter):
        path = os.path.join(run, f"model_{fmt}.tflite")
        with open(path, "wb") as handle:
            handle.write(converter.convert())
        write_json(os.path.splitext(path)[0] + ".json", _sidecar(path, fmt, classes, run))
        return path

    float32 = convert("float32", tf.lite.TFLiteConverter.from_keras_model(batch_of_one))
    converter = tf.lite.TFLiteConverter.from_keras_model(batch_of_one)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in x_train)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": the sidecar records them
        warnings.simplefilter("ignore", UserWarning)
        int8 = convert("int8", converter)
    return {
        "data": data, "run": run, "labels": classes, "float32": float32, "int8": int8,
        "test_rows": test_rows, "keras_test_probabilities": model.predict(x_test, verbose=0),
    }


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    return build_tiny_export(str(tmp_path_factory.mktemp("tiny_export")))


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

    def make(config_path, model_path, clock=None, actuator_factory=None):
        clock = clock or Clock()
        config = load_config(config_path)
        model = Model(model_path)
        config.check_labels(model.labels)
        events_path = str(tmp_path / "events.jsonl")
        events = EventSink(LineWriter(events_path), clock)
        actuator = SupervisedActuator(
            actuator_factory or (lambda: make_actuator(config.actuator, clock)), clock, events,
            config.actuator.retry_initial_s, config.actuator.retry_max_s,
        )
        review = None
        if config.review.dir:
            review = ReviewQueue(config.review.dir, config.review.max_items, config.review.max_mb)
        return Runner(config, model, actuator, events, clock, review), events_path

    return make
