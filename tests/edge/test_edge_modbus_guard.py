"""No blind spots in Modbus (issue 27 point 4): 'stopped' is observable before the server closes, and a bad request
(bytes that are not Modbus, an unknown function, a wrong unit id) is answered and logged as one line naming the
client, with no traffic dump or traceback. A real pymodbus client and raw sockets over 127.0.0.1."""

import json
import os
import re
import shutil
import socket
import threading
import time

import pytest
from pymodbus.client import ModbusTcpClient

from edge.drivers.modbus_server import STATE, STOPPED, ModbusBoard
from edge.timing import Clock
from test_edge_modbus import free_port

SECRET = 0xBEEF  # a register value another client reads: it must never reach the log


def _dumped(text):
    """pymodbus's frame dump ("0x0 0x1 ..."), its markers or a traceback in `text`."""
    return re.search(r"0x[0-9a-f]{1,2} 0x[0-9a-f]{1,2}", text) or ">>>>>" in text or "Traceback" in text


def _answer(port, payload):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(payload)
        try:
            return raw.recv(256)
        except (ConnectionResetError, socket.timeout):
            return b""


@pytest.fixture
def served():
    """An open board (unit 1) and a PLC client that has read SECRET from it: traffic a dump would show."""
    port = free_port()
    board = ModbusBoard("127.0.0.1", port, 1, 4, ["recheck", "bin_a"], ["a"], Clock())
    board.open()
    try:
        board.registers[50] = SECRET
        client = ModbusTcpClient("127.0.0.1", port=port)
        assert client.connect() and client.read_holding_registers(50, count=1, device_id=1).registers == [SECRET]
        yield port, client
        client.close()
    finally:
        board.close()


def test_bad_requests_are_answered_in_one_line_each_without_a_dump(served, capfd, caplog):
    port, client = served
    wrong = [client.read_holding_registers(0, count=8, device_id=7) for _ in range(3)]
    # An unknown function code (0x99) in a valid frame, then bytes that are not Modbus TCP at all.
    unknown = _answer(port, bytes.fromhex("0005 0000 0003 01 99 00"))
    garbage = _answer(port, b"GET /metrics HTTP/1.1\r\nHost: plc\r\n\r\n" + b"\xff" * 40)
    after = client.read_holding_registers(50, count=1, device_id=1).registers  # the server still answers
    assert all(r.isError() and r.exception_code == 0x0B for r in wrong)  # gateway target failed to respond
    assert unknown == bytes.fromhex("0005 0000 0003 01 99 01")  # exception 0x01, illegal function
    assert garbage == b"" and after == [SECRET]  # that connection closed, the others unharmed
    err = capfd.readouterr().err
    logged = err + "\n".join(r.getMessage() for r in caplog.records)
    lines = [line for line in logged.splitlines() if line.strip()]
    assert not _dumped(logged) and f"{SECRET:x}" not in logged.lower() and str(SECRET) not in logged, logged
    peer = re.compile(r"modbus client 127\.0\.0\.1:\d+ ")
    assert len([line for line in lines if "unit 7" in line]) == 1  # three wrong requests, one line
    assert len([line for line in lines if "function code 153" in line]) == 1
    assert len([line for line in lines if "not Modbus TCP" in line]) == 1
    assert len(lines) == 3 and all(peer.search(line) for line in lines), lines


def test_pymodbus_error_lines_lose_the_frame_dump(served, capfd, caplog):
    """pymodbus's own error lines (here a frame too short for function 3) are cut to one line naming the client."""
    from pymodbus.logging import Log

    port, _ = served
    short = _answer(port, bytes.fromhex("0007 0000 0003 01 03 00"))
    Log.error("a pymodbus error {}", "after traffic")  # pymodbus appends its last frames to every error
    assert short[7:8] == b"\x80"  # pymodbus's own exception answer
    logged = capfd.readouterr().err + "\n".join(r.getMessage() for r in caplog.records)
    assert not _dumped(logged), logged
    assert re.search(r"Unable to decode frame .*\(modbus client 127\.0\.0\.1:\d+\)", logged)
    assert "a pymodbus error after traffic" in logged


def test_a_plc_reads_stopped_after_the_run_ends(tmp_path, tiny_export, write_config, make_runner):
    """The run ends (summary written, stop event): the state register still answers 3 for stop_grace_s (default
    2 s), then the server closes."""
    from edge.sources import Capture, FolderSource

    folder = tmp_path / "belt"
    folder.mkdir()
    for row in tiny_export["test_rows"][:2]:
        shutil.copy(row["file"], folder / os.path.basename(row["file"]))
    port = free_port()
    runner, events_path = make_runner(write_config(actuator={"type": "modbus", "port": port}),  # the default 2 s
                                      tiny_export["int8"])
    sorting = threading.Thread(target=runner.run, args=(Capture(FolderSource(str(folder), runner.clock),
                                                                runner.clock, runner.events),))
    sorting.start()
    try:
        deadline = time.monotonic() + 30
        while not any(json.loads(line)["type"] == "stop" for line in open(events_path)):
            assert time.monotonic() < deadline, "the run never ended"
            time.sleep(0.01)
        client = ModbusTcpClient("127.0.0.1", port=port)
        assert client.connect()
        state = client.read_holding_registers(STATE, count=1, device_id=1).registers[0]
        client.close()
    finally:
        sorting.join(30)
    assert state == STOPPED and (tmp_path / "summary.json").exists()
    assert not ModbusTcpClient("127.0.0.1", port=port).connect()  # closed after the grace


def test_the_grace_is_for_the_end_of_a_run_not_for_a_fault(tmp_path, fake_clock):
    """A record the board cannot publish closes it at once (the sorting loop goes on); only the run's end waits
    stop_grace_s (on the runner's clock, here driven by the test)."""
    from edge.actuate import SupervisedActuator
    from edge.records import EventSink, LineWriter

    def board():
        return ModbusBoard("127.0.0.1", free_port(), 1, 4, ["recheck", "bin_a"], ["a"], fake_clock, stop_grace_s=30.0)

    actuator = SupervisedActuator(board, fake_clock, EventSink(LineWriter(str(tmp_path / "e.jsonl")), fake_clock))
    start = fake_clock.now()
    assert actuator.open()
    actuator.record({"seq": 1, "bin": "no such bin", "top3": [], "class": None}, start)  # KeyError: a fault
    assert actuator.errors == 1 and not actuator.up and fake_clock.now() == start
    fake_clock.advance(1.0)  # past the retry backoff
    assert actuator.open()
    actuator.close()
    assert fake_clock.now() == start + 1.0 + 30.0
