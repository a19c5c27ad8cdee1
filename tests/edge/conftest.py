"""Fixtures for the edge runner tests: a driven clock. The tiny exported model (`tiny_export`), `write_config` and
`make_runner` are in tests/conftest.py, shared with the calibration tests (tests/test_conformal.py)."""

import json
import os
import shutil
import threading
import warnings

import pytest


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


@pytest.fixture
def uncertain_model(tmp_path, tiny_export):
    """The tiny float32 model with q-hat 1 in its sidecar: every class is plausible, so every item is uncertain
    (recheck bin, review queue)."""
    model = tmp_path / "model.tflite"
    with open(tiny_export["float32"][: -len(".tflite")] + ".json") as handle:
        sidecar = json.load(handle)
    sidecar["reject"] = {"method": "split_conformal", "alpha": 0.05, "qhat": 1.0, "n": 13, "score": "1 - p_true"}
    shutil.copy(tiny_export["float32"], model)
    (tmp_path / "model.json").write_text(json.dumps(sidecar))
    return str(model)


def read_events(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


