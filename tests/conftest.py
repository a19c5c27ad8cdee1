"""Shared fixtures: the synthetic demo dataset, one tiny trained run, the tiny exported model of the edge and
calibration tests (with `write_config` and `make_runner` for the edge runner), and the real MINET-7 photos when
present."""

import json
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SIZE = 32  # the tiny export's input size


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """4 synthetic classes x 16 images of 48 px."""
    from mineralnet.data import make_demo_dataset

    return make_demo_dataset(str(tmp_path_factory.mktemp("demo")), num_classes=4, images_per_class=16,
                             image_size=48)


@pytest.fixture(scope="session")
def tiny_run(demo_data, tmp_path_factory):
    """A finished eca_convnext_tiny run at 32 px (2 epochs) on the demo data: every run-directory artefact."""
    from mineralnet.training import resolve_config, train

    config = resolve_config(overrides={"weights": "none", "data": demo_data, "out": str(tmp_path_factory.mktemp("run") / "tiny"),
                                       "image_size": 32, "epochs": 2, "batch_size": 16})
    return train(config)


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


@pytest.fixture
def make_runner(tmp_path):
    """Assemble the runner in-process as edge/runner.py does (build_runner) from a config path: (runner,
    events_path). Uses the real Clock unless given; `actuator_factory` replaces the config's driver, `belt` is a
    factory (config, clock, events) -> EncoderBelt, e.g. one the test polls itself."""
    from edge.config import load_config
    from edge.model import Model
    from edge.records import EventSink, LineWriter
    from edge.runner import build_runner, open_review
    from edge.timing import Clock

    def make(config_path, model_path, clock=None, actuator_factory=None, belt=None):
        clock = clock or Clock()
        config = load_config(config_path)
        model = Model(model_path)
        config.check_labels(model.labels)
        events_path = str(tmp_path / "events.jsonl")
        events = EventSink(LineWriter(events_path), clock)
        if belt is not None:
            belt = belt(config, clock, events)
        return build_runner(config, model, clock, events, open_review(config), belt, actuator_factory), events_path

    return make
