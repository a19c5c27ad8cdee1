"""Encoder-tracked ejection (issue 13, point 2): a real pymodbus server on 127.0.0.1 plays the PLC that owns the belt
encoder; the test sets its count (advances, stops, wraps it) and polls the runner's encoder itself (driven polling,
no sleeps), and checks that the valve command goes out at the right count and not before."""

import asyncio
import json
import os
import shutil
import threading
import time
from types import SimpleNamespace

import pytest
from pymodbus.constants import ExcCodes

from edge.encoder import EncoderBelt
from edge.runner import main
from edge.sources import Capture, Frame
from test_edge_modbus import HeldOpenFolder, free_port
from test_edge_runner import _surest_image

ADDRESS = 40


class EncoderPLC:
    """A pymodbus TCP server whose holding registers ADDRESS.. hold `count` (1 or 2 registers); `fail` makes every
    read answer an exception (a PLC fault); `step` advances the count by that much at each read (a moving belt)."""

    def __init__(self, port, registers=2, word_order="high_first", unit_id=1):
        self.port, self.registers, self.word_order, self.unit_id = port, registers, word_order, unit_id
        self.count, self.fail, self.step, self.reads = 0, False, 0, 0
        self._loop = asyncio.new_event_loop()
        self._server = None

    async def _action(self, function_code, start_address, address, count, current_registers, set_values):
        if self.fail:
            return ExcCodes.DEVICE_FAILURE
        self.reads += 1
        value = self.count % (1 << (16 * self.registers))
        self.count += self.step
        words = [value & 0xFFFF] if self.registers == 1 else [value >> 16, value & 0xFFFF]
        if self.word_order == "low_first":
            words.reverse()
        registers = [0] * ADDRESS + words
        offset = address - start_address
        current_registers[offset:offset + count] = registers[address:address + count]
        return None

    def start(self):
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        started = threading.Event()

        async def serve():
            device = SimDevice(id=self.unit_id, action=self._action,
                               simdata=[SimData(0, count=ADDRESS + 2, values=0, datatype=DataType.REGISTERS)])
            self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
            await self._server.serve_forever(background=True)
            started.set()

        self._thread = threading.Thread(target=lambda: (self._loop.run_until_complete(serve()), self._loop.run_forever()),
                                        daemon=True)
        self._thread.start()
        assert started.wait(10), "the PLC server did not start"
        return self

    def stop(self):
        asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def plc():
    servers = []

    def make(**options):
        servers.append(EncoderPLC(free_port(), **options).start())
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def _belt(registers=2, word_order="high_first", counts_per_mm=2.0, port=None, **extra):
    """Config sections: 500 mm to the valve, 100 ms lead at a nominal 1000 mm/s: the valve opens 400 mm (800 counts)
    after the capture count; on the clock that would be 0.4 s."""
    return {
        "belt": {"speed_mm_s": 1000.0, "camera_to_ejector_mm": 500.0, "valve_lead_ms": 100.0, "position": "modbus"},
        "encoder": {"port": port, "address": ADDRESS, "registers": registers, "word_order": word_order,
                    "counts_per_mm": counts_per_mm, "timeout_s": 0.5, **extra},
    }


def _driven(config, clock, events):
    return EncoderBelt(config.encoder, config.belt, clock, events, background=False)


def _lines(path):
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def _captured(runner, plc, count, frame_id, image):
    """A frame captured when the PLC's count is `count` (stamped as the capture thread does)."""
    plc.count = count
    frame = Frame(frame_id, runner.clock.now(), image)
    frame.position = runner.belt.read()
    return frame


@pytest.mark.parametrize("registers, word_order, capture", [
    (2, "high_first", 1000), (1, "high_first", 65_000), (2, "low_first", (1 << 32) - 300),
], ids=["32bit", "16bit-wraps", "32bit-low-first-wraps"])
def test_the_eject_fires_at_its_count_not_before_and_waits_for_a_stopped_belt(
    tmp_path, tiny_export, write_config, make_runner, fake_clock, plc, registers, word_order, capture
):
    image, decision = _surest_image(tiny_export)
    encoder = plc(registers=registers, word_order=word_order)
    config = write_config(decision=decision, **_belt(registers, word_order, port=encoder.port))
    runner, events_path = make_runner(config, tiny_export["float32"], clock=fake_clock, belt=_driven)
    modulus = 1 << (16 * registers)
    target = (capture + 800) % modulus
    commands = tmp_path / "commands.jsonl"

    runner.process(_captured(runner, encoder, capture, "item", image))
    item = [e for e in _lines(events_path) if e["type"] == "item"][0]
    assert item["reason"] == "confident" and item["position"] == capture and runner.belt.waiting == 1
    for count in (capture + 1, capture + 400, target - 1):  # the belt moves, the valve waits (across the wrap)
        encoder.count = count % modulus
        assert runner.belt.poll() == count % modulus
        assert _lines(commands) == []
    fake_clock.advance(60.0)  # the belt stops for a minute: on the clock the item would be long gone
    assert runner.belt.poll() == (target - 1) % modulus and _lines(commands) == []
    encoder.count = target
    runner.belt.poll()
    assert [(c["bin"], c["frame"], c["due_in_ms"]) for c in _lines(commands)] == [(item["bin"], "item", 0)]
    encoder.count = (target + 50) % modulus
    runner.belt.poll()
    assert len(_lines(commands)) == 1 and runner.belt.counts() == {"read_errors": 0, "fired": 1, "missed": 0}


def test_late_items_and_unreadable_counts_go_to_recheck(
    tmp_path, tiny_export, write_config, make_runner, fake_clock, plc
):
    image, decision = _surest_image(tiny_export)
    encoder = plc(registers=1)
    config = write_config(decision=decision, **_belt(1, port=encoder.port))
    runner, events_path = make_runner(config, tiny_export["float32"], clock=fake_clock, belt=_driven)

    frame = _captured(runner, encoder, 65_500, "late", image)  # valve count 764 after the wrap
    encoder.count = 764  # ...already reached when the decision is ready
    runner.process(frame)
    frame = _captured(runner, encoder, 65_400, "just_in_time", image)  # valve count 664
    encoder.count = 663
    runner.process(frame)
    encoder.count = 664
    runner.belt.poll()
    encoder.fail = True  # a PLC fault while a frame is captured...
    frame = _captured(runner, encoder, 0, "no_count_at_capture", image)
    runner.process(frame)
    encoder.fail = False
    frame = _captured(runner, encoder, 1000, "no_count_at_decision", image)
    encoder.fail = True  # ...or when its decision is ready
    runner.process(frame)
    encoder.fail = False
    frame = _captured(runner, encoder, 2000, "fired", image)  # the runner keeps sorting
    runner.process(frame)
    encoder.count = 2800
    runner.belt.poll()

    events = _lines(events_path)
    items = {e["frame"]: e for e in events if e["type"] == "item"}
    assert {f: (e["bin"], e["reason"]) for f, e in items.items() if e["bin"] == "recheck"} == {
        "late": ("recheck", "late"), "no_count_at_capture": ("recheck", "no_position"),
        "no_count_at_decision": ("recheck", "no_position"),
    }
    assert items["no_count_at_capture"]["position"] is None
    assert [c["frame"] for c in _lines(tmp_path / "commands.jsonl")] == ["just_in_time", "fired"]
    assert [e["type"] for e in events if e["type"].startswith("encoder_")] == [
        "encoder_error", "encoder_recovered", "encoder_error", "encoder_recovered",
    ]
    assert runner.tally.per_reason["late"] == 1 and runner.tally.per_reason["no_position"] == 2
    assert runner.belt.counts() == {"read_errors": 2, "fired": 2, "missed": 0}


def test_an_ejection_that_fell_due_while_the_encoder_was_unreadable_is_not_fired(
    tmp_path, tiny_export, write_config, make_runner, fake_clock, plc
):
    image, decision = _surest_image(tiny_export)
    encoder = plc()
    config = write_config(decision=decision, **_belt(port=encoder.port, fire_window_mm=10.0))
    runner, events_path = make_runner(config, tiny_export["float32"], clock=fake_clock, belt=_driven)
    runner.process(_captured(runner, encoder, 0, "blind", image))  # valve at 800
    runner.process(_captured(runner, encoder, 100, "starved", image))  # valve at 900
    runner.process(_captured(runner, encoder, 200, "on_time", image))  # valve at 1000
    encoder.fail = True
    assert runner.belt.poll() is None
    encoder.fail, encoder.count = False, 850  # the count moved past 800 unseen
    runner.belt.poll()
    encoder.count = 921  # a poll that comes 21 counts (10.5 mm) late: more than fire_window_mm
    runner.belt.poll()
    encoder.count = 1015
    runner.belt.poll()
    assert [c["frame"] for c in _lines(tmp_path / "commands.jsonl")] == ["on_time"]
    missed = [(e["frame"], e["why"]) for e in _lines(events_path) if e["type"] == "eject_missed"]
    assert missed == [("blind", "encoder unreadable when it fell due"), ("starved", "found passed by more than "
                                                                           "fire_window_mm")]
    assert runner.belt.counts() == {"read_errors": 1, "fired": 1, "missed": 2}


def test_a_folder_run_stamps_each_capture_and_the_poll_thread_fires(tmp_path, tiny_export, write_config, make_runner,
                                                                     plc):
    """The whole loop with real threads: the capture thread stamps frames, the poll thread fires them as the PLC's
    belt moves (one count per read), and the summary counts them."""
    folder = tmp_path / "belt"
    folder.mkdir()
    for row in tiny_export["test_rows"][:6]:
        shutil.copy(row["file"], folder / f"{row['label']}_{os.path.basename(row['file'])}")
    encoder = plc()
    encoder.step = 1
    config = write_config(decision={"confidence_threshold": 0.3}, **_belt(port=encoder.port, counts_per_mm=0.05,
                                                                          fire_window_mm=1000.0, poll_ms=0.5))
    runner, events_path = make_runner(config, tiny_export["float32"])
    release = threading.Event()
    capture = Capture(HeldOpenFolder(str(folder), runner.clock, release), runner.clock, runner.events)
    result = {}
    sorting = threading.Thread(target=lambda: result.update(summary=runner.run(capture)))
    sorting.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until every item is decided and nothing waits for its count
        items = [e for e in _lines(events_path) if e["type"] == "item"]
        if len(items) == 6 and runner.belt.waiting == 0:
            break
        time.sleep(0.005)
    release.set()
    sorting.join(60)
    summary = result["summary"]
    sorted_items = [e for e in items if e["bin"] != "recheck"]
    assert all(isinstance(e["position"], int) for e in items)
    assert sorted_items and summary["encoder"] == {"read_errors": 0, "fired": len(sorted_items), "missed": 0}
    assert sorted(c["frame"] for c in _lines(tmp_path / "commands.jsonl")) == sorted(e["frame"] for e in sorted_items)


def test_an_unreachable_encoder_stops_the_runner_at_start(tmp_path, tiny_export, write_config, capsys):
    folder = tmp_path / "belt"
    folder.mkdir()
    config = write_config(**_belt(port=free_port()))  # nothing listens there
    argv = ["--model", tiny_export["float32"], "--source", f"folder:{folder}", "--config", config,
            "--events", str(tmp_path / "events.jsonl")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "encoder 127.0.0.1" in error and "cannot be read" in error
    assert not (tmp_path / "summary.json").exists()


def test_the_modbus_ring_carries_the_encoder_count_at_capture(tiny_export, write_config, make_runner, fake_clock, plc):
    from pymodbus.client import ModbusTcpClient

    from edge.drivers.modbus_server import RING, SLOT

    image, decision = _surest_image(tiny_export)
    encoder, port = plc(), free_port()
    config = write_config(decision=decision, actuator={"type": "modbus", "port": port},
                          **_belt(port=encoder.port))
    runner, events_path = make_runner(config, tiny_export["float32"], clock=fake_clock, belt=_driven)
    assert runner.actuator.open()
    try:
        runner.process(_captured(runner, encoder, 123_456_789, "counted", image))
        encoder.fail = True
        runner.process(_captured(runner, encoder, 5, "unreadable", image))
        client = ModbusTcpClient("127.0.0.1", port=port)
        assert client.connect()
        registers = client.read_holding_registers(RING, count=2 * SLOT, device_id=1).registers
        client.close()
    finally:
        runner.actuator.close()
    positions = [registers[k * SLOT + 3] << 16 | registers[k * SLOT + 4] for k in range(2)]
    bins = [registers[k * SLOT + 2] for k in range(2)]
    assert positions == [123_456_789, 0] and bins[0] != 0 and bins[1] == 0  # 0: recheck, no valve for it
    assert runner.belt.waiting == 0  # the PLC fires from the ring: nothing is scheduled in the runner


def test_a_stopped_belt_is_not_new_material(tmp_path, tiny_export, write_config, make_runner, fake_clock, plc):
    """Single items on an encoder-timed belt: frames captured while the count stands still (within still_mm) show the
    item already decided; it is decided once, the stop and the restart are events, the frames are counted."""
    image, decision = _surest_image(tiny_export)
    encoder = plc()
    config = write_config(decision=decision, **_belt(port=encoder.port))  # 2 counts per mm; still_mm 1 = 2 counts
    runner, events_path = make_runner(config, tiny_export["float32"], clock=fake_clock, belt=_driven)
    for number, count in enumerate((1000, 1000, 1001, 999, 1000, 1300)):  # stopped (jitter of a count), then moves
        runner.process(_captured(runner, encoder, count, str(number), image))
        fake_clock.advance(1.0)
    events = _lines(events_path)
    assert [e["frame"] for e in events if e["type"] == "item"] == ["0", "5"]
    assert [(e["type"], e.get("frames")) for e in events if e["type"].startswith("belt_")] == [
        ("belt_stopped", None), ("belt_moving", 4)]
    summary = runner.summary(SimpleNamespace(dropped=0, source_errors=0), "end of source")
    assert summary["frames_unmoved"] == 4 and summary["items"] == 2
