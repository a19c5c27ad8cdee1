"""Actuators through real transports: a pseudo-terminal for serial, gpiozero's mock pins for GPIO."""

import json
import os
import select

from gpiozero.pins.mock import MockFactory

from edge.actuate import SupervisedActuator
from edge.drivers.gpio_pins import GpioActuator
from edge.drivers.serial_port import SerialActuator
from edge.preprocess import open_rgb
from edge.records import EventSink, LineWriter
from edge.sources import Frame


def _read_lines(fd, count):
    data = b""
    while data.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], 10)
        assert ready, f"serial lines missing, got {data!r}"
        data += os.read(fd, 1024)
    return data


def test_serial_lines_through_a_pseudo_terminal(fake_clock):
    controller, device = os.openpty()
    try:
        actuator = SerialActuator(os.ttyname(device), 115200, fake_clock)
        actuator.open()
        now = fake_clock.now()
        actuator.send("bin_a", now + 0.25, "f1")
        actuator.send("recheck", now + 1.5, "f2")
        actuator.send("bin_c", now - 0.01, "f3")  # overdue commands say 0, never a negative delay
        actuator.close()
        assert _read_lines(controller, 3) == b"EJECT bin_a 250\nEJECT recheck 1500\nEJECT bin_c 0\n"
    finally:
        os.close(controller)
        os.close(device)


def test_runner_drives_a_serial_ejector(tiny_export, write_config, make_runner, fake_clock, tmp_path):
    controller, device = os.openpty()
    try:
        config = write_config(actuator={"type": "serial", "port": os.ttyname(device)})
        runner, events_path = make_runner(config, tiny_export["float32"], clock=fake_clock)
        for row in tiny_export["test_rows"][:4]:
            runner.process(Frame(row["path"], fake_clock.now(), open_rgb(row["file"])))
        runner.actuator.close()
        with open(events_path) as handle:
            items = [e for e in map(json.loads, handle) if e["type"] == "item"]
        ejected = [item for item in items if item["bin"] != "recheck"]  # recheck: no valve, no command
        expected = "".join(f"EJECT {item['bin']} 99980\n" for item in ejected)  # 1000 mm / 10 mm/s - 20 ms lead
        assert _read_lines(controller, len(ejected)).decode() == expected
    finally:
        os.close(controller)
        os.close(device)


def test_gpio_pulses_one_pin_per_bin_on_mock_pins(fake_clock):
    factory = MockFactory()
    actuator = GpioActuator({"bin_a": 17, "bin_c": 27}, 0.03, fake_clock, pin_factory=factory, background=False)
    actuator.open()
    pin_a, pin_c = factory.pin(17), factory.pin(27)
    start = fake_clock.now()
    actuator.send("bin_a", start + 1.0, "f1")
    actuator.send("recheck", start + 1.0, "f2")  # no pin: the item rides on to the end of the belt
    actuator.send("bin_a", start + 1.02, "f3")  # overlaps the first pulse: the valve stays open
    actuator.fire_due()
    assert not pin_a.state and not pin_c.state
    fake_clock.advance(1.0)
    actuator.fire_due()
    assert pin_a.state and not pin_c.state
    fake_clock.advance(0.03)
    actuator.fire_due()
    assert pin_a.state
    fake_clock.advance(0.02)
    assert actuator.fire_due() is None
    assert not pin_a.state and not pin_c.state
    actuator.close()


def test_actuator_errors_are_reported_and_reopened_with_backoff(fake_clock, tmp_path):
    opened, sent = [], []

    class FlakyValve:
        def open(self):
            opened.append(fake_clock.now())
            if len(opened) == 1:
                raise OSError("port busy")

        def send(self, bin_name, due, frame_id):
            sent.append(frame_id)
            if len(sent) == 2:
                raise OSError("write failed")

        def close(self):
            pass

    events = EventSink(LineWriter(str(tmp_path / "events.jsonl")), fake_clock)
    supervisor = SupervisedActuator(FlakyValve, fake_clock, events, retry_initial_s=0.5, retry_max_s=4.0)
    results = [supervisor.send("a", 0.0, "1"), supervisor.send("a", 0.0, "2")]  # open failed, then backing off
    fake_clock.advance(0.5)
    results += [supervisor.send("a", 0.0, "3"), supervisor.send("a", 0.0, "4")]  # reopened; second send fails
    fake_clock.advance(0.5)
    results += [supervisor.send("a", 0.0, "5")]
    assert results == [False, False, True, False, True]
    assert len(opened) == 3 and supervisor.errors == 2
    with open(tmp_path / "events.jsonl") as handle:
        errors = [json.loads(line) for line in handle]
    assert [(e["stage"], e["retry_in_s"]) for e in errors] == [("open", 0.5), ("send", 0.5)]
    assert "port busy" in errors[0]["error"]
