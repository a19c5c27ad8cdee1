"""Modbus TCP with the runner as server (issue 13, point 1): a real pymodbus client over 127.0.0.1 plays the PLC."""

import json
import os
import shutil
import socket
import threading
import time

from pymodbus.client import ModbusTcpClient

from edge.modbus import BIN_COUNTERS, HEARTBEAT, LAST_SEQ, RING, SLOT
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
    config = write_config(actuator={"type": "modbus", "port": port, "unit_id": unit, "ring_size": 64})
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
