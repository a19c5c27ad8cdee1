"""Modbus TCP with the runner as server (issue 13, point 1): a real pymodbus client over 127.0.0.1 plays the PLC."""

import json
import os
import shutil
import socket
import threading
import time

from pymodbus.client import ModbusTcpClient

from edge.drivers.modbus_server import (
    BIN_COUNTERS, HEARTBEAT, LAST_SEQ, MAP_VERSION, RING, SLOT, VALVE_CLOCK, VALVE_COUNT, VALVE_LAST_SEQ, VALVE_RING,
    VALVE_RING_SIZE, VALVE_UNIT,
)
from edge.preprocess import open_rgb
from edge.sources import Capture, FolderSource, Frame


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _long(high, low):
    return high << 16 | low


class HeldOpenFolder(FolderSource):
    """A folder whose end is held back until the PLC has read everything: the server stops with the runner."""

    def __init__(self, directory, clock, release):
        super().__init__(directory, clock)
        self.release = release

    def read(self):
        frame = super().read()
        if frame is None:
            self.release.wait(60)
        return frame


def _plc_reads_every_decision(client, unit, ring_size, expected, heartbeats):
    """Poll like a PLC: the last sequence number, then each new slot; returns the decoded ring entries in order."""
    seen, deadline = [], time.monotonic() + 60
    while len(seen) < expected and time.monotonic() < deadline:
        header = client.read_holding_registers(0, count=8, device_id=unit).registers
        heartbeats.add(header[HEARTBEAT])
        last = _long(*header[LAST_SEQ:LAST_SEQ + 2])
        for sequence in range(len(seen) + 1, last + 1):
            slot = RING + SLOT * ((sequence - 1) % ring_size)
            entry = client.read_holding_registers(slot, count=SLOT, device_id=unit).registers
            seen.append({"seq": _long(*entry[0:2]), "bin": entry[2], "position": _long(*entry[3:5]),
                         "lane": entry[5], "class": entry[6], "confidence": entry[7]})
        time.sleep(0.002)
    return seen


def test_a_plc_reads_every_decision_of_a_folder_run_from_the_ring(tmp_path, tiny_export, write_config, make_runner):
    folder = tmp_path / "belt"
    folder.mkdir()
    rows = tiny_export["test_rows"]
    for row in rows:
        shutil.copy(row["file"], folder / f"{row['label']}_{os.path.basename(row['file'])}")
    port, unit = free_port(), 3
    config = write_config(actuator={"type": "modbus", "port": port, "unit_id": unit, "ring_size": 64,
                                    "stop_grace_s": 0})  # 'stopped' is tested in test_edge_modbus_guard.py
    runner, events_path = make_runner(config, tiny_export["int8"])
    release = threading.Event()
    capture = Capture(HeldOpenFolder(str(folder), runner.clock, release), runner.clock, runner.events)
    results = {}
    sorting = threading.Thread(target=lambda: results.update(summary=runner.run(capture)))
    sorting.start()
    try:
        client = ModbusTcpClient("127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while not client.connect():  # the server starts with run()
            assert time.monotonic() < deadline, "the runner's Modbus server never listened"
            time.sleep(0.05)
        heartbeats = set()
        seen = _plc_reads_every_decision(client, unit, 64, len(rows), heartbeats)
        deadline = time.monotonic() + 10
        while len(heartbeats) < 2 and time.monotonic() < deadline:  # idle, it still beats at least 4 times a second
            heartbeats.add(client.read_holding_registers(HEARTBEAT, count=1, device_id=unit).registers[0])
            time.sleep(0.02)
        header = client.read_holding_registers(0, count=8, device_id=unit).registers
        counters = client.read_holding_registers(BIN_COUNTERS, count=32, device_id=unit).registers
        assert client.write_register(LAST_SEQ, 0, device_id=unit).isError()  # the PLC cannot write the map
        client.close()
    finally:
        release.set()
        sorting.join(60)
    summary = results["summary"]
    with open(events_path) as handle:
        items = [e for e in map(json.loads, handle) if e["type"] == "item"]
    codes = runner.config.bin_codes()
    assert codes[0] == "recheck"
    assert [e["seq"] for e in seen] == [i["seq"] for i in items] == list(range(1, len(rows) + 1))
    assert [codes[e["bin"]] for e in seen] == [i["bin"] for i in items]
    assert [tiny_export["labels"][e["class"] - 1] for e in seen] == [i["class"] for i in items]
    assert [e["confidence"] for e in seen] == [round(i["top3"][0]["p"] * 1000) for i in items]
    assert {e["lane"] for e in seen} == {0}
    assert header[1] == 1 and header[2] == 1 and header[3] == 64 and header[6] == len(codes) and header[7] == 1
    assert len(heartbeats) > 1  # the heartbeat moves while the runner runs
    per_bin = {codes[b]: _long(*counters[2 * b:2 * b + 2]) for b in range(len(codes))}
    assert {b: n for b, n in per_bin.items() if n} == summary["per_bin"]
    assert summary["items"] == len(rows) and summary["failed"] == 0


def test_the_ring_keeps_the_newest_items_and_a_silent_plc_changes_nothing(
    tiny_export, write_config, make_runner, fake_clock
):
    port = free_port()
    config = write_config(actuator={"type": "modbus", "port": port, "ring_size": 4})
    runner, _ = make_runner(config, tiny_export["float32"], clock=fake_clock)
    assert runner.actuator.open() and runner.actuator.listening == [f"modbus 127.0.0.1:{port} unit 1"]
    image = open_rgb(tiny_export["test_rows"][0]["file"])
    try:
        for number in range(10):  # nobody polls: sorting goes on, the ring is overwritten
            fake_clock.advance(0.5)
            runner.process(Frame(str(number), fake_clock.now(), image))
        client = ModbusTcpClient("127.0.0.1", port=port)
        assert client.connect()
        registers = client.read_holding_registers(RING, count=4 * SLOT, device_id=1).registers
        client.close()
    finally:
        runner.actuator.close()
    slots = [registers[k * SLOT:(k + 1) * SLOT] for k in range(4)]
    assert sorted(_long(*s[0:2]) for s in slots) == [7, 8, 9, 10]
    for slot in slots:  # capture time in ms on a clock-timed belt: 0.5 s per item from 1000 s
        assert _long(*slot[3:5]) == int((1000.0 + 0.5 * _long(*slot[0:2])) * 1000)
    assert runner.tally.items == 10 and runner.tally.per_reason["error"] == 0


def _read_valve_block(port, unit=1):
    """What a PLC polls: the header, the valve header and every valve slot written so far."""
    client = ModbusTcpClient("127.0.0.1", port=port)
    assert client.connect()
    try:
        header = client.read_holding_registers(0, count=VALVE_CLOCK + 2, device_id=unit).registers
        last, size = _long(*header[VALVE_LAST_SEQ:VALVE_LAST_SEQ + 2]), header[VALVE_RING_SIZE]
        slots = []
        for sequence in range(max(1, last - size + 1), last + 1):
            slot = VALVE_RING + SLOT * ((sequence - 1) % size)
            entry = client.read_holding_registers(slot, count=SLOT, device_id=unit).registers
            slots.append({"seq": _long(*entry[0:2]), "first": entry[2], "count": entry[3],
                          "open": _long(*entry[4:6]), "pulse": entry[6], "bin": entry[7]})
    finally:
        client.close()
    return header, slots


def test_a_plc_reads_the_valve_commands_of_a_belt_frame(tiny_export, write_config, make_runner, fake_clock):
    """[particles] with `type = "modbus"`: each ejected particle's lanes, opening time (ms of the runner's clock,
    which the block publishes too) and pulse are in the valve ring, read with a real client over 127.0.0.1."""
    import cv2
    import numpy as np
    from PIL import Image

    from edge.decision import Decider
    from test_edge_particles import HEIGHT, MM_PER_PX, WIDTH

    port = free_port()
    path = write_config(particles={"mm_per_px": MM_PER_PX, "background_frames": 1},
                        valves={"count": 32, "lane_mm": 20.0, "bin": "bin_a"},
                        bins={"classes": {label: "bin_a" for label in tiny_export["labels"]}},
                        actuator={"type": "modbus", "port": port, "ring_size": 4})
    runner, events_path = make_runner(path, tiny_export["float32"], clock=fake_clock)
    belt = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    frame = belt.copy()
    for x, y, radius in ((200, 300, 30), (600, 360, 20), (1000, 420, 40)):
        cv2.circle(frame, (x, y), radius, (200, 180, 160), -1)
    assert runner.actuator.open()
    try:
        runner.process(Frame("empty", fake_clock.now(), Image.fromarray(belt)))
        # The tiny model never saw discs: a cutoff between its two best probabilities makes them confident.
        probabilities = runner.classifier.classify([p.crop for p in runner.segmenter.segmenter.segment(frame, learn=False)
                                                    .particles])
        best, second = np.sort(probabilities[0])[::-1][:2]
        runner.decider = Decider(runner.model.labels, runner.config.bins, None, (best + second) / 2)
        capture = fake_clock.now()
        runner.process(Frame("A", capture, Image.fromarray(frame)))
        fake_clock.advance(0.25)
        runner.actuator.heartbeat(1, True)
        header, slots = _read_valve_block(port)
        read_at = fake_clock.now()  # closing waits stop_grace_s on this clock
    finally:
        runner.actuator.close()
    particles = {p["seq"]: p for p in map(json.loads, open(events_path)) if p["type"] == "particle"}
    ejected = [p for p in particles.values() if p["bin"] == "bin_a"]
    assert header[MAP_VERSION] == 2 and header[VALVE_RING_SIZE] == 4 and header[VALVE_COUNT] == 32
    assert header[VALVE_UNIT] == 0 and _long(*header[VALVE_CLOCK:VALVE_CLOCK + 2]) == int(read_at * 1000)
    assert ejected and [s["seq"] for s in slots] == list(range(1, len(ejected) + 1))
    by_lanes = {(s["first"], s["count"]): s for s in slots}
    for particle in ejected:
        slot = by_lanes[(particle["lanes"][0], len(particle["lanes"]))]
        x, y, w, h = particle["bbox"]
        travel_mm = 1000.0 - (y + h - HEIGHT / 2) * MM_PER_PX - 2.0  # speed 10 mm/s, 1000 mm, margin 2 mm
        assert abs(slot["open"] - int((capture + travel_mm / 10.0 - 0.020) * 1000)) <= 1  # valve_lead_ms 20
        assert slot["pulse"] == round((h * MM_PER_PX + 4.0) / 10.0 * 1000.0)
        assert runner.config.bin_codes()[slot["bin"]] == "bin_a"


def test_the_valve_block_in_encoder_counts_wraps_with_the_counter(write_config, fake_clock):
    """On an encoder-timed belt the opening is an encoder count and the pulse a count too, across the wrap."""
    from edge.config import load_config
    from edge.drivers.modbus_server import ModbusBoard
    from edge.valves import Command

    port = free_port()
    config = load_config(write_config(particles={"mm_per_px": 0.5}, valves={"count": 16, "lane_mm": 20.0,
                                                                            "bin": "bin_a"}))
    board = ModbusBoard("127.0.0.1", port, 1, 2, config.bin_codes(), ["a"], fake_clock, valves=config.valves,
                        modulus=1 << 16)
    board.open()
    try:
        for lanes, opening, closing in (((3, 4, 5), 65_530, 70), ((0,), 100, 180), ((7, 8), 500, 620)):
            board.send(Command(lanes, opening, closing, (1,)), None, "A")
        header, slots = _read_valve_block(port)
    finally:
        board.close()
    assert header[VALVE_UNIT] == 1 and header[VALVE_COUNT] == 16
    assert [(s["seq"], s["first"], s["count"], s["open"], s["pulse"]) for s in slots] == [
        (2, 0, 1, 100, 80), (3, 7, 2, 500, 120)]  # a ring of 2: the oldest command overwritten
    board = ModbusBoard("127.0.0.1", free_port(), 1, 2, config.bin_codes(), ["a"], fake_clock, valves=config.valves,
                        modulus=1 << 16)
    board.send(Command((3, 4, 5), 65_530, 70, (1,)), None, "A")  # not open: the registers alone
    assert board.registers[VALVE_RING:VALVE_RING + SLOT][2:7] == [3, 3, 0, 65_530, 76]
