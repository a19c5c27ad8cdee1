"""The edge package's shape (issue 26): small files, and a new actuator is one file and one row of the driver table
(edge/drivers/__init__.py DRIVERS), taken by the config check and the pipeline without any other change."""

import json
import os
import types

from edge import drivers
from edge.config import ConfigError, load_config
from edge.sources import Frame
from helpers import REPO
from test_edge_runner import _surest_image

EDGE = os.path.join(REPO, "edge")


def test_no_edge_file_is_over_450_lines():
    sizes = {}
    for folder, _, files in os.walk(EDGE):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as handle:
                    sizes[os.path.relpath(os.path.join(folder, name), REPO)] = sum(1 for _ in handle)
    assert sizes and {path: n for path, n in sizes.items() if n > 450} == {}


def test_every_driver_row_names_its_constructors():
    for name, driver in drivers.DRIVERS.items():
        module = driver.module
        assert callable(module.check) and (module.bin_driver or module.valve_driver), name
        assert driver.library is None or len(driver.library) == 2, name


class RecordingDriver:
    """A bin driver that keeps what it is sent (an actuator a test can read), written as a driver file would be."""

    sent = []

    def __init__(self, config, clock, labels):
        pass

    def open(self):
        pass

    def send(self, bin_name, due, frame_id):
        RecordingDriver.sent.append((bin_name, frame_id))

    def close(self):
        pass


def test_a_new_driver_is_one_module_and_one_row(monkeypatch, tiny_export, write_config, make_runner, fake_clock,
                                                tmp_path):
    checked = []
    module = types.ModuleType("recorder")
    module.check = lambda config: checked.append(config.actuator.type)
    module.bin_driver, module.valve_driver = RecordingDriver, None
    image, decision = _surest_image(tiny_export)  # sorted confidently to a product bin: the driver is sent to
    config = write_config(actuator={"type": "recorder", "path": "-"}, decision=decision,
                          bins={"classes": {label: "bin_a" for label in tiny_export["labels"]}})
    try:
        load_config(config)
        raise AssertionError("an unknown driver type was accepted")
    except ConfigError as error:
        assert "actuator.type" in str(error) and '"jsonl"' in str(error)
    monkeypatch.setitem(drivers.DRIVERS, "recorder", drivers.Driver(module))
    runner, events = make_runner(config, tiny_export["float32"], clock=fake_clock)
    for number in range(3):
        runner.process(Frame(str(number), fake_clock.now(), image))
    items = [e for e in map(json.loads, open(events)) if e["type"] == "item"]
    assert checked == ["recorder"] and [item["bin"] for item in items] == ["bin_a"] * 3
    assert RecordingDriver.sent == [("bin_a", str(number)) for number in range(3)]
